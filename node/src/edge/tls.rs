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
};

use maki_protocol::Domain;
use rustls::{
    ServerConfig,
    crypto::ring as provider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::live::Live;

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
    /// The ACME HTTP-01 challenges the network is answering now.
    challenges: RwLock<Arc<Challenges>>,
}

/// HTTP-01 challenges by token: the name asked about (lowercase) and the
/// proof to answer.
pub type Challenges = HashMap<String, (String, String)>;

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
            challenges: RwLock::new(Arc::default()),
        }
    }

    /// Replaces the HTTP-01 challenges answered.
    pub fn set_challenges(&self, challenges: Challenges) {
        let challenges = Arc::new(challenges);
        match self.challenges.write() {
            Ok(mut now) => *now = challenges,
            Err(poisoned) => *poisoned.into_inner() = challenges,
        }
    }

    /// The proof for the HTTP-01 challenge `token` about `host`.
    pub fn challenge(&self, host: &str, token: &str) -> Option<String> {
        let challenges = self.challenges.read().ok()?;
        let (name, proof) = challenges.get(token)?;
        name.eq_ignore_ascii_case(host.trim_end_matches('.'))
            .then(|| proof.clone())
    }

    /// Replaces the certificates of the network's sites.
    pub fn set_issued(&self, issued: Issued) {
        let issued = Arc::new(issued);
        match self.issued.write() {
            Ok(mut now) => *now = issued,
            Err(poisoned) => *poisoned.into_inner() = issued,
        }
    }

    /// Whether every HTTPS node serves `name` (a site's domain or alias)
    /// with a certificate of the network's: only then does plain HTTP
    /// redirect there, and HSTS go out. A visitor sent to a node that
    /// offers the self-signed one would otherwise be stuck.
    pub fn everywhere(&self, name: &str) -> bool {
        self.issued(name).is_some_and(|i| i.everywhere)
    }

    /// The network's certificate this node serves for `name`. A wildcard
    /// only for a name its own site serves: never for another tenant's
    /// site below it.
    fn issued(&self, name: &str) -> Option<IssuedCert> {
        let issued = self.issued.read().ok()?;
        if issued.is_empty() {
            return None;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(i) = issued.get(&name) {
            return Some(i.clone());
        }
        let (_, parent) = name.split_once('.')?;
        issued
            .get(&format!("*.{parent}"))
            .filter(|i| self.live.site_of(&name).as_ref() == Some(&i.site))
            .cloned()
    }

    /// The network's certificate for a nameserver name of a site's zone
    /// (`ns-….SITE`): the site's wildcard, when the zone's apex is a name
    /// of that same site.
    pub fn for_nameserver(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let issued = self.issued.read().ok()?;
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(i) = issued.get(&name) {
            return Some(i.cert.clone());
        }
        let (_, parent) = name.split_once('.')?;
        let wildcard = issued.get(&format!("*.{parent}"))?;
        (issued.get(parent)?.site == wildcard.site).then(|| wildcard.cert.clone())
    }

    /// The certificate for `name`, if the node serves it.
    pub fn for_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(i) = self.issued(name) {
            return Some(i.cert);
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
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

/// Certificates by name (`*.parent` for a wildcard).
pub type Issued = HashMap<String, IssuedCert>;

/// A site's certificate from the network, as this node serves it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The site it is for.
    pub site: Domain,
    pub cert: Arc<CertifiedKey>,
    /// Every node with the `http` role holds a copy of its key.
    pub everywhere: bool,
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

/// The TLS side of HTTP/3: the same certificates and tickets, TLS 1.3
/// only (QUIC has no other), ALPN `h3`.
pub fn quic_config(
    certs: Arc<Certs>,
    tickets: Option<Arc<super::tickets::SharedTicketer>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    match tickets {
        Some(t) => config.ticketer = t,
        None => config.send_tls13_tickets = 0,
    }
    Ok(Arc::new(config))
}

/// The server side of every HTTPS connection of this node.
pub fn server_config(
    certs: Arc<Certs>,
    tickets: Option<Arc<super::tickets::SharedTicketer>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption by ticket: the state travels with the client, so the
    // node keeps nothing per visitor, and any node can open it. Without,
    // no resumption at all (no session cache either).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    match tickets {
        Some(t) => config.ticketer = t,
        None => config.send_tls13_tickets = 0,
    }
    Ok(Arc::new(config))
}
