//! The network's certificates as the edge serves them: each site's
//! `CertRecord` from the replicated state, checked here before any
//! handshake gets it (the chain leads to a root this node trusts and is
//! valid for every name it claims; this node's sealed copy of the key is
//! the leaf's), and kept current as records change and certificates
//! expire. What the edge offers per handshake is `edge::tls`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use maki_protocol::{
    Domain, PublicKey, SecretKey,
    acme::{AcmeConfig, ChallengeKind},
    cert::{CertError, CertRecord},
};
use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::ring as provider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    directory::Directory,
    edge::{
        tickets::SharedTicketer,
        tls::{Certs, Challenges, Issued, IssuedCert},
    },
    members::Members,
    secrets::{http_seals, recipients, with_randomness},
};

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
/// (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured), and the extra roots of
/// the network's ACME settings.
pub fn roots(acme: Option<&AcmeConfig>) -> RootCertStore {
    let mut roots = system_roots();
    for root in acme.iter().flat_map(|a| &a.roots) {
        if let Err(error) = roots.add(CertificateDer::from(root.clone())) {
            warn!(%error, "an extra root of the ACME settings cannot be used");
        }
    }
    roots
}

fn system_roots() -> RootCertStore {
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

/// What `maki sites` shows of `record`: what the record says, and why
/// this node does not serve it, if it does not.
pub fn summary(
    record: &CertRecord,
    roots: &Arc<RootCertStore>,
    secret: &[u8; 32],
) -> maki_protocol::rpc::CertSummary {
    let checked = verify_chain(record, roots.clone(), UnixTime::now()).and_then(|()| {
        // A node without a copy (no `http` role, or joined since) can
        // still vouch for the chain.
        let own = maki_protocol::seal::public_key(secret);
        if record.sealed.iter().any(|s| s.to == own) {
            open(record, secret).map(|_| ())
        } else {
            Ok(())
        }
    });
    maki_protocol::rpc::CertSummary {
        origin: record.origin,
        issuer: record
            .chain
            .first()
            .and_then(|leaf| maki_protocol::cert::issuer_name(leaf)),
        names: record.names.clone(),
        not_after: record.not_after,
        problem: checked.err().map(|e| e.to_string()),
    }
}

/// How often every certificate in use is checked again (expiry).
const RECHECK: Duration = Duration::from_secs(600);

/// Keeps `certs` to the certificates of the network's sites this node
/// can serve, checked, until `cancel`.
pub async fn keep_issued(
    members: Arc<Members>,
    certs: Arc<Certs>,
    tickets: Arc<SharedTicketer>,
    key: SecretKey,
    cancel: CancellationToken,
) {
    let mut kept_tickets = crate::tickets::Kept::default();
    let secret = maki_protocol::seal::node_secret(&key);
    // What this node resealed, by site and the version it resealed.
    let mut resealed: HashMap<Domain, u64> = HashMap::new();
    let mut acme_version = None;
    let mut roots = Arc::new(roots(None));
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
        // New ACME settings may bring another root: check everything again.
        let acme = dir.acme();
        if acme.map(|a| a.version) != acme_version {
            acme_version = acme.map(|a| a.version);
            roots = Arc::new(self::roots(acme));
            checked.clear();
        }
        let issued = issued(&dir, &mut checked, &roots, &secret, UnixTime::now());
        certs.set_issued(issued);
        certs.set_challenges(challenges(&dir, crate::now_millis() / 1000));
        crate::tickets::keep(&members, &key, &secret, &tickets, &mut kept_tickets);
        let down = members.http_down(&dir);
        for record in reseal(&dir, &key, &secret, &checked, &down, &mut resealed) {
            if let Err(error) = members.apply_local(record) {
                warn!(%error, "could not reseal a certificate's key");
            }
        }
    }
}

/// Records that seal a site's certificate key to the `http` nodes that
/// joined since it was made: made by one holder of a copy (the lowest
/// node id among the live `http` nodes that hold one, so they do not all
/// do it, and one that is down holds nobody back), signed as a member
/// node. Until then the newcomers serve the
/// self-signed certificate and no node redirects to HTTPS.
fn reseal(
    dir: &Directory,
    key: &SecretKey,
    secret: &[u8; 32],
    checked: &HashMap<Domain, (u64, Option<Arc<CertifiedKey>>)>,
    down: &std::collections::HashSet<PublicKey>,
    resealed: &mut HashMap<Domain, u64>,
) -> Vec<maki_protocol::Record> {
    let me = key.public();
    let http = http_seals(dir);
    let mut out = Vec::new();
    for site in dir.sites() {
        let Some(record) = dir.cert(&site.domain) else {
            continue;
        };
        // Only a certificate this node serves, checked, once per version.
        if !matches!(checked.get(&site.domain), Some((v, Some(_))) if *v == record.version)
            || resealed.get(&site.domain) == Some(&record.version)
        {
            continue;
        }
        let holds = |seal: &[u8; 32]| record.sealed.iter().any(|s| s.to == *seal);
        let lacking = http.iter().any(|(_, seal)| !holds(seal));
        let first_holder = http
            .iter()
            .filter(|(id, seal)| holds(seal) && !down.contains(id))
            .map(|(id, _)| *id)
            .min();
        if !lacking || first_holder != Some(me) {
            continue;
        }
        resealed.insert(site.domain.clone(), record.version);
        let Ok(private) = record.open(secret) else {
            continue;
        };
        let recipients = recipients(dir);
        let mut next = CertRecord {
            version: crate::now_millis().max(record.version.saturating_add(1)),
            ..record.clone()
        };
        let (sealed, failed) =
            with_randomness(|fresh| next.seal_to(&private, &recipients, fresh).is_ok());
        if !sealed || failed {
            warn!(site = %site.domain, "could not reseal the certificate's key");
            continue;
        }
        info!(site = %site.domain, recipients = recipients.len(), "resealing the certificate's key to the nodes that joined");
        out.push(maki_protocol::Record::Cert(maki_protocol::Signed::sign(
            key, &next,
        )));
    }
    out
}

/// The HTTP-01 challenges of the orders in flight at `now` (seconds), for
/// names that are still their site's.
fn challenges(dir: &Directory, now: u64) -> Challenges {
    let mut out = Challenges::new();
    for site in dir.sites() {
        let Some(order) = dir.acme_order(&site.domain).filter(|o| o.until > now) else {
            continue;
        };
        let own: Vec<&str> = site.names().map(Domain::as_str).collect();
        for c in &order.challenges {
            if c.kind == ChallengeKind::Http01
                && own.iter().any(|o| o.eq_ignore_ascii_case(&c.name))
            {
                out.insert(
                    c.token.clone(),
                    (c.name.to_ascii_lowercase(), c.proof.clone()),
                );
            }
        }
    }
    out
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
        let everywhere = dir.members().all(|(n, _)| {
            !n.roles.iter().any(|r| r == maki_protocol::ROLE_HTTP)
                || n.seal
                    .is_some_and(|k| record.sealed.iter().any(|s| s.to == k))
        });
        // Only the names that are the site's now (its aliases may have
        // changed since), and wildcards under them.
        let own: Vec<&str> = site.names().map(Domain::as_str).collect();
        for name in &record.names {
            if maki_protocol::cert::covers_own(name, &own) {
                out.insert(
                    name.to_ascii_lowercase(),
                    IssuedCert {
                        site: site.domain.clone(),
                        cert: cert.clone(),
                        everywhere,
                    },
                );
            }
        }
    }
    checked.retain(|d, _| seen.contains(d));
    out
}
