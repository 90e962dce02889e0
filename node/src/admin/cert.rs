//! A site's certificate uploaded by a publisher (`maki cert set`): the
//! CLI seals the key to the nodes that serve HTTPS; this node checks what
//! the record claims before it takes it in, so the publisher hears why.

use std::sync::Arc;

use maki_protocol::{
    Domain, PublicKey, ROLE_HTTP, Record, Signed, View,
    acme::AcmeConfig,
    cert::CertRecord,
    rpc::{CertInfo, Response, RpcError},
    seal,
};
use tracing::info;

use super::{AdminProtocol, sites::CLOCK_SKEW_MS};
use crate::certs as tls;

impl AdminProtocol {
    pub(super) fn cert_info(
        &self,
        caller: PublicKey,
        domain: Domain,
    ) -> Result<Response, RpcError> {
        let site = self.require_publisher(caller, &domain)?;
        let dir = self.shared.members.directory();
        let mut recipients = Vec::new();
        let mut unsealable = Vec::new();
        for (node, _) in dir.members() {
            if !node.roles.iter().any(|r| r == ROLE_HTTP) {
                continue;
            }
            match node.seal {
                Some(key) => recipients.push(key),
                None => unsealable.push(node.id),
            }
        }
        recipients.extend(dir.admins().iter().filter_map(seal::admin_public));
        Ok(Response::CertInfo(CertInfo {
            incarnation: site.heads_after,
            names: site.names().cloned().collect(),
            recipients,
            unsealable,
        }))
    }

    pub(super) fn cert_set(
        &self,
        caller: PublicKey,
        signed: Signed<CertRecord>,
    ) -> Result<Response, RpcError> {
        let cert = signed.verify().map_err(|_| RpcError::BadSignature)?;
        if signed.signer() != caller {
            return Err(RpcError::SignerMismatch);
        }
        let site = self.require_publisher(caller, &cert.site)?;
        if cert.incarnation != site.heads_after {
            return Err(RpcError::InvalidRecord(
                "made for the site before it was removed and added again; try again".into(),
            ));
        }
        let names: Vec<&str> = site.names().map(Domain::as_str).collect();
        let invalid =
            |e: &dyn std::fmt::Display| RpcError::InvalidRecord(format!("certificate: {e}"));
        cert.check(&names).map_err(|e| invalid(&e))?;
        if cert.version > crate::now_millis().saturating_add(CLOCK_SKEW_MS) {
            return Err(RpcError::InvalidRecord(
                "certificate dated in the future: check this machine's clock".into(),
            ));
        }
        // Signed is not honest: the chain must lead to a root the nodes
        // trust and be valid for every name it claims, and, where this
        // node holds a copy of the key, be that key's.
        let roots = Arc::new(tls::roots(self.shared.members.directory().acme()));
        tls::verify_chain(&cert, roots, rustls::pki_types::UnixTime::now())
            .map_err(|e| invalid(&e))?;
        let secret = self.shared.keyring.secret();
        if cert.sealed.iter().any(|s| s.to == seal::public_key(secret)) {
            tls::open(&cert, secret).map_err(|e| invalid(&e))?;
        }
        let site_name = cert.site.clone();
        let count = cert.names.len();
        self.apply_admin(Record::Cert(signed), "certificate")?;
        info!(site = %site_name, names = count, "certificate set");
        Ok(Response::Done)
    }

    /// The network's ACME settings (an admin).
    pub(super) fn acme_set(
        &self,
        caller: PublicKey,
        signed: Signed<AcmeConfig>,
    ) -> Result<Response, RpcError> {
        let acme = self.admin_signed(caller, &signed)?;
        acme.check()
            .map_err(|e| RpcError::InvalidRecord(format!("ACME settings: {e}")))?;
        for root in &acme.roots {
            let mut store = rustls::RootCertStore::empty();
            store
                .add(rustls::pki_types::CertificateDer::from(root.as_slice()))
                .map_err(|e| {
                    RpcError::InvalidRecord(format!(
                        "ACME settings: an extra root is not a certificate the nodes can use ({e})"
                    ))
                })?;
        }
        if acme.version > crate::now_millis().saturating_add(CLOCK_SKEW_MS) {
            return Err(RpcError::InvalidRecord(
                "ACME settings dated in the future: check this machine's clock".into(),
            ));
        }
        let directory = acme.directory.clone();
        self.apply_admin(Record::Acme(signed), "set of ACME settings")?;
        info!(%directory, "ACME settings set");
        Ok(Response::Done)
    }
}
