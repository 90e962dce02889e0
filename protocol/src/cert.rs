//! A site's TLS certificate as it replicates: the chain in the clear, the
//! private key sealed (HPKE, [`crate::seal`]) to each node that serves
//! HTTPS and to each admin.
//!
//! Signed by an admin, by a publisher of the site (who uploaded it), or
//! by a member node (one that ordered it from the network's ACME CA, or
//! resealed it for nodes that joined since). What the chain claims is
//! checked by each node that serves it: that it chains to a root the node
//! trusts, names only the site's own names, and matches the key sealed to
//! it (X.509 is the node's to parse; this crate does no I/O and knows no
//! roots). A certificate for another site's name is never served for it.

use serde::{Deserialize, Serialize};

use crate::{
    Domain, Signable,
    seal::{self, Sealed},
};

/// The kind number of [`CertRecord`] (see [`crate::kind_context`]).
pub const CERT_KIND: u32 = 9;

/// The most certificates in a chain (the leaf and its intermediates).
pub const MAX_CHAIN: usize = 8;
/// The largest certificate of a chain (DER).
pub const MAX_CERT: usize = 16 << 10;
/// The most recipients of the sealed key.
pub const MAX_RECIPIENTS: usize = 512;
/// The largest sealed key (a PKCS#8 document of an RSA-4096 key fits).
pub const MAX_SEALED: usize = 4096;
/// The most names a certificate may be for.
pub const MAX_NAMES: usize = 100;

/// The HPKE `info` of TLS keys: sealed secrets of other purposes never
/// open as TLS keys.
pub const SEAL_INFO: &[u8] = b"makiatto/tls-key/v1";

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Ordered by a node from the network's ACME CA.
    Acme,
    /// Uploaded with `maki cert set`.
    Upload,
}

/// A site's certificate. No chain: the site has none (the nodes serve a
/// self-signed one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub format: u16,
    pub site: Domain,
    /// The site's `heads_after` when made (as in a ZoneRecord): a site
    /// removed and added again does not get the old certificate back.
    pub incarnation: u64,
    pub origin: Origin,
    /// The names it is for, as the leaf names them (a wildcard as
    /// `*.parent`): each is the site's domain or one of its aliases, or a
    /// wildcard under one.
    pub names: Vec<String>,
    /// The leaf first, then its intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// When the leaf expires (seconds since the epoch), as it says; for
    /// `maki sites` and renewal, checked against the leaf where served.
    pub not_after: u64,
    /// The private key (PKCS#8 DER), one copy per recipient.
    pub sealed: Vec<Sealed>,
    pub version: u64,
}

impl Signable for CertRecord {
    const CONTEXT: &'static [u8] = b"makiatto/record/9";
}

/// Why a certificate record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("no certificate, or a key sealed without one")]
    Empty,
    #[error("a chain of {0} certificates; at most {MAX_CHAIN}")]
    LongChain(usize),
    #[error("a certificate of {0} bytes; at most {MAX_CERT}")]
    LargeCert(usize),
    #[error("{0} names; at most {MAX_NAMES}")]
    TooManyNames(usize),
    #[error("{name} is not a name of {site}")]
    NotTheSites { name: String, site: Domain },
    #[error("{0} recipients; at most {MAX_RECIPIENTS}")]
    TooManyRecipients(usize),
    #[error("a sealed key of {0} bytes; at most {MAX_SEALED}")]
    TooLarge(usize),
    #[error("two copies for one recipient")]
    TwoCopies,
    #[error("made for the site before it was removed and added again")]
    OtherIncarnation,
    #[error("no copy of the key is sealed to this key")]
    NoCopy,
    #[error("the key does not open: {0}")]
    Open(#[from] crate::seal::SealError),
}

impl CertRecord {
    /// The checks that need nothing but the record and the names of its
    /// site (its domain and aliases).
    pub fn check(&self, site_names: &[&str]) -> Result<(), CertError> {
        if self.chain.is_empty() != self.sealed.is_empty()
            || self.chain.is_empty() != self.names.is_empty()
        {
            return Err(CertError::Empty);
        }
        if self.chain.len() > MAX_CHAIN {
            return Err(CertError::LongChain(self.chain.len()));
        }
        if let Some(c) = self.chain.iter().find(|c| c.len() > MAX_CERT) {
            return Err(CertError::LargeCert(c.len()));
        }
        if self.names.len() > MAX_NAMES {
            return Err(CertError::TooManyNames(self.names.len()));
        }
        if let Some(name) = self.names.iter().find(|n| !covers_own(n, site_names)) {
            return Err(CertError::NotTheSites {
                name: name.clone(),
                site: self.site.clone(),
            });
        }
        if self.sealed.len() > MAX_RECIPIENTS {
            return Err(CertError::TooManyRecipients(self.sealed.len()));
        }
        if let Some(s) = self.sealed.iter().find(|s| s.ct.len() > MAX_SEALED) {
            return Err(CertError::TooLarge(s.ct.len()));
        }
        if seal::repeats(&self.sealed) {
            return Err(CertError::TwoCopies);
        }
        Ok(())
    }

    /// What each sealed copy is bound to: the site and the leaf. A copy
    /// moved into another site's record, or next to another certificate,
    /// does not open.
    pub fn aad(&self) -> Vec<u8> {
        let mut aad = self.site.as_str().as_bytes().to_vec();
        aad.push(0);
        if let Some(leaf) = self.chain.first() {
            aad.extend_from_slice(blake3::hash(leaf).as_bytes());
        }
        aad
    }

    /// The private key (PKCS#8 DER) from the copy sealed to `secret`'s
    /// public key.
    pub fn open(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CertError> {
        Ok(seal::open_own(secret, &self.sealed, SEAL_INFO, &self.aad())
            .ok_or(CertError::NoCopy)??)
    }

    /// Seals `key` (PKCS#8 DER) to each of `recipients`; `fresh` gives
    /// new random bytes for each copy.
    pub fn seal_to(
        &mut self,
        key: &[u8],
        recipients: &[[u8; 32]],
        fresh: impl FnMut() -> [u8; 32],
    ) -> Result<(), CertError> {
        self.sealed = seal::seal_each(recipients, fresh, SEAL_INFO, &self.aad(), key)?;
        Ok(())
    }
}

/// Whether `name` (maybe `*.parent`) is one of `own` or a wildcard
/// directly under one. A wildcard under a site's domain covers names no
/// other tenant can hold as their own site there only if the edge serves
/// them for this site: the node checks, per name served, that the site
/// serving it is the certificate's.
fn covers_own(name: &str, own: &[&str]) -> bool {
    let name = name.to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    own.iter().any(|o| o.eq_ignore_ascii_case(bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> CertRecord {
        CertRecord {
            format: 1,
            site: Domain::new("a.test").expect("domain"),
            incarnation: 0,
            origin: Origin::Upload,
            names: vec!["a.test".into(), "*.a.test".into()],
            chain: vec![b"leaf".to_vec()],
            not_after: 0,
            sealed: vec![],
            version: 1,
        }
    }

    #[test]
    fn a_key_opens_for_its_recipients_only_and_only_beside_its_certificate() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut c = cert();
        let mut n = 10u8;
        c.seal_to(b"pkcs8", &[seal::public_key(&a)], || {
            n += 1;
            [n; 32]
        })
        .expect("seal");
        assert_eq!(c.check(&["a.test"]), Ok(()));
        assert_eq!(c.open(&a).expect("a"), b"pkcs8".to_vec());
        assert_eq!(c.open(&b), Err(CertError::NoCopy));
        let mut other_leaf = c.clone();
        other_leaf.chain = vec![b"another leaf".to_vec()];
        assert!(matches!(other_leaf.open(&a), Err(CertError::Open(_))));
        let mut moved = c.clone();
        moved.site = Domain::new("b.test").expect("domain");
        assert!(matches!(moved.open(&a), Err(CertError::Open(_))));
    }

    #[test]
    fn names_of_another_site_are_refused() {
        let mut c = cert();
        c.sealed = vec![Sealed {
            to: [1; 32],
            enc: [2; 32],
            ct: vec![0; 32],
        }];
        assert_eq!(c.check(&["a.test", "www.a.test"]), Ok(()));
        for name in ["b.test", "*.test", "x.a.test", "*.*.a.test", "a.test.evil"] {
            let mut bad = c.clone();
            bad.names.push(name.into());
            assert!(
                matches!(bad.check(&["a.test"]), Err(CertError::NotTheSites { .. })),
                "{name}"
            );
        }
        let mut empty = c.clone();
        empty.chain.clear();
        assert_eq!(empty.check(&["a.test"]), Err(CertError::Empty));
    }
}
