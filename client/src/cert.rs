//! `maki cert set`: a site's own certificate, uploaded. The key is sealed
//! here to each node that serves HTTPS (and to the admins) and never
//! leaves this machine in the clear.

use maki_protocol::{
    Domain, SecretKey, Signed,
    acme::{AcmeConfig, AcmeError},
    cert::{CertError, CertRecord, Origin},
    rpc::{CertInfo, Request, Response},
};
use ring::rand::SecureRandom;
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, UnixTime,
    pem::{self, PemObject},
};

use crate::net::{Client, NetError, unexpected};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertSetError {
    #[error("{path}: {error}")]
    Pem { path: String, error: pem::Error },
    #[error("{0} holds no certificate (a PEM `CERTIFICATE` block)")]
    NoCertificate(String),
    #[error(
        "{0} is not a PKCS#8 key (`PRIVATE KEY`); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
    )]
    NotPkcs8(String),
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the certificate is for none of {site}'s names ({names})")]
    NoNames { site: Domain, names: String },
    #[error("the certificate expired")]
    Expired,
    #[error("the system's random source failed")]
    NoRandomness,
    #[error(transparent)]
    Record(#[from] CertError),
    #[error(transparent)]
    Acme(#[from] AcmeError),
    #[error("the network has no ACME settings yet: --directory is needed")]
    NoDirectory,
}

/// A certificate chain and its key, read from PEM files.
pub struct Upload {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Upload")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Upload {
    pub fn read(cert: &str, key: &str) -> Result<Self, CertSetError> {
        let pem_error = |path: &str| {
            let path = path.to_owned();
            move |error| CertSetError::Pem { path, error }
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(pem_error(cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error(cert))?;
        if chain.is_empty() {
            return Err(CertSetError::NoCertificate(cert.to_owned()));
        }
        let key = match PrivateKeyDer::from_pem_file(key).map_err(pem_error(key))? {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            _ => return Err(CertSetError::NotPkcs8(key.to_owned())),
        };
        Ok(Self { chain, key })
    }

    /// Which of `names` (a site's) the leaf is valid for, each as itself
    /// or as a wildcard under it.
    pub fn names(&self, names: &[Domain]) -> Result<Vec<String>, CertSetError> {
        let leaf = self
            .chain
            .first()
            .ok_or(CertSetError::Unreadable("empty".into()))?;
        let leaf = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| CertSetError::Unreadable(e.to_string()))?;
        let valid = |name: &str| {
            ServerName::try_from(name)
                .is_ok_and(|n| leaf.verify_is_valid_for_subject_name(&n).is_ok())
        };
        let mut out = Vec::new();
        for n in names {
            if valid(n.as_str()) {
                out.push(n.as_str().to_owned());
            }
            // A label no one would name a host: only a wildcard covers it.
            if valid(&format!("maki-wildcard-probe.{n}")) {
                out.push(format!("*.{n}"));
            }
        }
        Ok(out)
    }
}

pub async fn info(client: &Client, domain: &Domain) -> Result<CertInfo, NetError> {
    match client
        .call(&Request::CertInfo {
            domain: domain.clone(),
        })
        .await?
    {
        Response::CertInfo(info) => Ok(info),
        other => Err(unexpected(other)),
    }
}

pub async fn set(client: &Client, record: Signed<CertRecord>) -> Result<(), NetError> {
    match client.call(&Request::CertSet { record }).await? {
        Response::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// The record of `upload` for `site`, sealed to `info`'s recipients and
/// signed by `key` at `version`.
pub fn record(
    key: &SecretKey,
    site: &Domain,
    info: &CertInfo,
    upload: &Upload,
    version: u64,
) -> Result<Signed<CertRecord>, CertSetError> {
    let names = upload.names(&info.names)?;
    if names.is_empty() {
        return Err(CertSetError::NoNames {
            site: site.clone(),
            names: info
                .names
                .iter()
                .map(Domain::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let leaf = upload
        .chain
        .first()
        .ok_or(CertSetError::Unreadable("empty".into()))?;
    let not_after = maki_protocol::cert::not_after(leaf)
        .ok_or_else(|| CertSetError::Unreadable("its expiry".into()))?;
    if not_after <= UnixTime::now().as_secs() {
        return Err(CertSetError::Expired);
    }
    let mut record = CertRecord {
        format: 1,
        site: site.clone(),
        incarnation: info.incarnation,
        origin: Origin::Upload,
        names,
        chain: upload.chain.iter().map(|c| c.to_vec()).collect(),
        not_after,
        sealed: Vec::new(),
        version,
    };
    let rng = ring::rand::SystemRandom::new();
    let mut failed = false;
    record.seal_to(&upload.key, &info.recipients, || {
        let mut b = [0u8; 32];
        failed |= rng.fill(&mut b).is_err();
        b
    })?;
    if failed {
        return Err(CertSetError::NoRandomness);
    }
    Ok(Signed::sign(key, &record))
}

/// What `maki acme set` was given; what it was not given is kept from
/// the settings now.
#[derive(Debug, Default)]
pub struct AcmeChange<'a> {
    pub directory: Option<&'a str>,
    pub contact: &'a [String],
    /// PEM files of extra root certificates.
    pub roots: &'a [String],
    pub caa: &'a [Domain],
    pub challenge: Option<maki_protocol::acme::ChallengeKind>,
}

/// The network's ACME settings: `current` (none: nothing yet) with
/// `change` made, signed by `key` (an admin) at `version`.
pub fn acme(
    key: &SecretKey,
    current: Option<&AcmeConfig>,
    change: &AcmeChange<'_>,
    version: u64,
) -> Result<Signed<AcmeConfig>, CertSetError> {
    let directory = change
        .directory
        .map(str::to_owned)
        .or_else(|| current.map(|c| c.directory.clone()))
        .ok_or(CertSetError::NoDirectory)?;
    let mut extra = Vec::new();
    for path in change.roots {
        let pem = |error| CertSetError::Pem {
            path: path.to_owned(),
            error,
        };
        let before = extra.len();
        for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
            extra.push(cert.map_err(pem)?.to_vec());
        }
        if extra.len() == before {
            return Err(CertSetError::NoCertificate(path.to_owned()));
        }
    }
    if change.roots.is_empty()
        && let Some(c) = current
    {
        extra = c.roots.clone();
    }
    let mut contact: Vec<String> = change
        .contact
        .iter()
        .map(|c| {
            if c.starts_with("mailto:") {
                c.clone()
            } else {
                format!("mailto:{c}")
            }
        })
        .collect();
    if contact.is_empty()
        && let Some(c) = current
    {
        contact = c.contact.clone();
    }
    let caa = match (change.caa, current) {
        ([], Some(c)) => c.caa.clone(),
        (given, _) => given.to_vec(),
    };
    let challenge = change
        .challenge
        .or(current.map(|c| c.challenge))
        .unwrap_or(maki_protocol::acme::ChallengeKind::Http01);
    let record = AcmeConfig {
        format: 1,
        directory,
        contact,
        roots: extra,
        caa,
        challenge,
        version,
    };
    record.check()?;
    Ok(Signed::sign(key, &record))
}

/// The network's ACME settings now (an admin); None before any.
pub async fn acme_get(client: &Client) -> Result<Option<AcmeConfig>, NetError> {
    match client.call(&Request::Acme).await? {
        Response::Acme(current) => Ok(current),
        other => Err(unexpected(other)),
    }
}

pub async fn acme_set(client: &Client, record: Signed<AcmeConfig>) -> Result<(), NetError> {
    match client.call(&Request::AcmeSet { record }).await? {
        Response::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}
