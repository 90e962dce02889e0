//! HTTPS: rustls (ring, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`) in
//! front of the same request handler as plain HTTP.
//!
//! The certificate of each handshake is chosen by its SNI: the one the
//! network holds for the name (or for `*.` its parent), else, for a name
//! the node serves, a self-signed one made here and kept, so a site is
//! reachable over HTTPS (with a warning) before its certificate exists. A
//! name no site has gets no certificate: the handshake fails, and the
//! node says nothing about which sites it serves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use maki_protocol::{
    Domain,
    cert::{CertError, CertRecord},
};
use rustls::{
    RootCertStore, ServerConfig,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::ring as provider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{directory::Directory, live::Live, members::Members};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The most self-signed certificates kept: one per name served, made on
/// the first handshake that asks for it.
const SELF_SIGNED_MAX: usize = 4096;

/// What a handshake may be given.
pub struct Certs {
    live: Arc<Live>,
    /// Certificates of the network's sites, by name (`*.parent` for a
    /// wildcard), with the site each is for: replaced whole when one
    /// changes.
    issued: RwLock<Arc<Issued>>,
    /// Made here for names served without one of those.
    self_signed: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

impl Certs {
    pub fn new(live: Arc<Live>) -> Self {
        Self {
            live,
            issued: RwLock::new(Arc::default()),
            self_signed: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the certificates of the network's sites.
    pub fn set_issued(&self, issued: Issued) {
        let issued = Arc::new(issued);
        match self.issued.write() {
            Ok(mut now) => *now = issued,
            Err(poisoned) => *poisoned.into_inner() = issued,
        }
    }

    /// Whether a certificate of the network's is served for `name` (a
    /// site's domain or alias, lowercase): HTTP then redirects there.
    pub fn issued_for(&self, name: &str) -> bool {
        let Ok(issued) = self.issued.read() else {
            return false;
        };
        if issued.is_empty() {
            return false;
        }
        let name = name.to_ascii_lowercase();
        if issued.contains_key(&name) {
            return true;
        }
        let Some((_, parent)) = name.split_once('.') else {
            return false;
        };
        issued
            .get(&format!("*.{parent}"))
            .is_some_and(|(site, _)| self.live.site_of(&name).as_ref() == Some(site))
    }

    /// The certificate for `name`, if the node serves it.
    pub fn for_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let issued = self.issued.read().ok().map(|i| i.clone())?;
        if let Some((_, cert)) = issued.get(&name) {
            return Some(cert.clone());
        }
        // A wildcard only for a name its own site serves: never for
        // another tenant's site below it.
        if let Some((_, parent)) = name.split_once('.')
            && let Some((site, cert)) = issued.get(&format!("*.{parent}"))
            && self.live.site_of(&name).as_ref() == Some(site)
        {
            return Some(cert.clone());
        }
        self.live.get(&name)?;
        let mut made = self.self_signed.lock().ok()?;
        if let Some(cert) = made.get(&name) {
            return Some(cert.clone());
        }
        let cert = match self_signed(&name) {
            Ok(c) => Arc::new(c),
            Err(error) => {
                tracing::warn!(%name, %error, "no certificate to offer");
                return None;
            }
        };
        if made.len() >= SELF_SIGNED_MAX {
            made.clear();
        }
        made.insert(name, cert.clone());
        Some(cert)
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.for_name(hello.server_name()?)
    }
}

/// Certificates by name, with the site each is for.
pub type Issued = HashMap<String, (Domain, Arc<CertifiedKey>)>;

/// Why a site's certificate is not served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertCheckError {
    #[error("{0}")]
    Record(#[from] CertError),
    #[error("the key cannot be used: {0}")]
    Key(rustls::Error),
    #[error("the key is not the certificate's")]
    KeyMismatch,
    #[error("no root to check it against: {0}")]
    NoRoots(String),
    #[error("not valid for {name}: {error}")]
    Chain { name: String, error: rustls::Error },
}

/// The roots a certificate of the network must chain to: the system's
/// (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured).
pub fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        warn!(%error, "reading the system's root certificates");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    roots
}

/// Checks that `record`'s chain leads to one of `roots` and is valid now
/// for each of its names (a wildcard for a name under it).
pub fn verify_chain(
    record: &CertRecord,
    roots: Arc<RootCertStore>,
    now: UnixTime,
) -> Result<(), CertCheckError> {
    let chain = der_chain(record);
    let (leaf, intermediates) = chain.split_first().ok_or(CertError::Empty)?;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots, Arc::new(provider::default_provider()))
            .build()
            .map_err(|e| CertCheckError::NoRoots(e.to_string()))?;
    for name in &record.names {
        let probe = match name.strip_prefix("*.") {
            Some(parent) => format!("any.{parent}"),
            None => name.clone(),
        };
        let chain_error = |error| CertCheckError::Chain {
            name: name.clone(),
            error,
        };
        let server = ServerName::try_from(probe)
            .map_err(|_| chain_error(rustls::Error::General("not a DNS name".into())))?;
        verifier
            .verify_server_cert(leaf, intermediates, &server, &[], now)
            .map_err(chain_error)?;
    }
    Ok(())
}

/// `record`'s chain with its key, from this node's sealed copy; the key
/// must be the leaf's.
pub fn open(record: &CertRecord, secret: &[u8; 32]) -> Result<CertifiedKey, CertCheckError> {
    let key = record.open(secret)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let signing = provider::sign::any_supported_type(&key).map_err(CertCheckError::Key)?;
    let certified = CertifiedKey::new(der_chain(record), signing);
    certified
        .keys_match()
        .map_err(|_| CertCheckError::KeyMismatch)?;
    Ok(certified)
}

fn der_chain(record: &CertRecord) -> Vec<CertificateDer<'static>> {
    record
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect()
}

/// How often every certificate in use is checked again (expiry).
const RECHECK: Duration = Duration::from_secs(600);

/// Keeps `certs` to the certificates of the network's sites this node
/// can serve, checked, until `cancel`.
pub async fn keep_issued(
    members: Arc<Members>,
    certs: Arc<Certs>,
    secret: [u8; 32],
    cancel: CancellationToken,
) {
    let roots = Arc::new(system_roots());
    // By site: the record's version and what came of it.
    let mut checked: HashMap<Domain, (u64, Option<Arc<CertifiedKey>>)> = HashMap::new();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        if last_full.elapsed() >= RECHECK {
            checked.clear();
            last_full = tokio::time::Instant::now();
        }
        let dir = members.directory();
        let issued = issued(&dir, &mut checked, &roots, &secret, UnixTime::now());
        certs.set_issued(issued);
    }
}

/// The certificates of `dir`'s sites, reusing what `checked` holds for
/// records already checked.
fn issued(
    dir: &Directory,
    checked: &mut HashMap<Domain, (u64, Option<Arc<CertifiedKey>>)>,
    roots: &Arc<RootCertStore>,
    secret: &[u8; 32],
    now: UnixTime,
) -> Issued {
    let mut out = Issued::new();
    let mut seen = Vec::new();
    for site in dir.sites() {
        let Some(record) = dir.cert(&site.domain) else {
            continue;
        };
        seen.push(site.domain.clone());
        let usable = match checked.get(&site.domain) {
            Some((version, usable)) if *version == record.version => usable.clone(),
            _ => {
                let usable = match verify_chain(record, roots.clone(), now)
                    .and_then(|()| open(record, secret))
                {
                    Ok(c) => {
                        info!(site = %site.domain, names = ?record.names, "serving the site's certificate");
                        Some(Arc::new(c))
                    }
                    Err(error) => {
                        warn!(site = %site.domain, %error, "not serving the site's certificate");
                        None
                    }
                };
                checked.insert(site.domain.clone(), (record.version, usable.clone()));
                usable
            }
        };
        let Some(cert) = usable else { continue };
        // Only the names that are the site's now (its aliases may have
        // changed since), and wildcards under them.
        let own: Vec<&str> = std::iter::once(site.domain.as_str())
            .chain(site.aliases.iter().map(|a| a.as_str()))
            .collect();
        for name in &record.names {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            if own.iter().any(|o| o.eq_ignore_ascii_case(bare)) {
                out.insert(
                    name.to_ascii_lowercase(),
                    (site.domain.clone(), cert.clone()),
                );
            }
        }
    }
    checked.retain(|d, _| seen.contains(d));
    out
}

/// A self-signed ECDSA P-256 certificate for `name`.
pub fn self_signed(name: &str) -> Result<CertifiedKey, TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key)?;
    certified(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A chain and its key, ready to sign handshakes.
pub fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    let signing = provider::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The server side of every HTTPS connection of this node.
pub fn server_config(certs: Arc<Certs>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption by ticket: the state travels with the client, so the
    // node keeps nothing per visitor.
    config.ticketer = provider::Ticketer::new()?;
    Ok(Arc::new(config))
}
