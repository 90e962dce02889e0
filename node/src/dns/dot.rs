//! DNS over TLS (RFC 7858) for the nameservers: the same length-prefixed
//! queries as DNS over TCP, inside TLS (rustls on ring, TLS 1.3 and 1.2,
//! ALPN `dot`).
//!
//! Resolvers that talk TLS to authoritative servers do so
//! opportunistically and check no certificate (RFC 9539), so any
//! certificate serves them; a node that holds the network's certificate
//! for the name asked in SNI (a site's nameserver `ns-….SITE` is covered
//! by the site's wildcard) offers that one, and otherwise a self-signed
//! one of its own.

use std::sync::Arc;

use rustls::{
    ServerConfig,
    crypto::ring as provider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::edge::tls::{Certs, TlsError};

/// The certificates DoT offers.
#[derive(Debug)]
struct DotCerts {
    /// The network's, with the `http` role.
    certs: Option<Arc<Certs>>,
    own: Arc<CertifiedKey>,
}

impl ResolvesServerCert for DotCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let (Some(certs), Some(name)) = (&self.certs, hello.server_name())
            && let Some(cert) = certs.for_nameserver(name)
        {
            return Some(cert);
        }
        Some(self.own.clone())
    }
}

/// The TLS of DoT and of DoQ (TLS 1.3 only, ALPN `doq`); `name` names
/// this nameserver in its own certificate.
pub fn server_configs(
    certs: Option<Arc<Certs>>,
    name: &str,
) -> Result<(Arc<ServerConfig>, Arc<ServerConfig>), TlsError> {
    let own = Arc::new(crate::edge::tls::self_signed(name)?);
    let resolver = Arc::new(DotCerts { certs, own });
    let provider = Arc::new(provider::default_provider());
    let mut dot = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    dot.alpn_protocols = vec![b"dot".to_vec()];
    let mut doq = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    doq.alpn_protocols = vec![b"doq".to_vec()];
    Ok((Arc::new(dot), Arc::new(doq)))
}
