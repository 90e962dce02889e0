//! A site's DNSSEC keys as they replicate: the public halves in the
//! clear, the private halves sealed (HPKE, [`crate::seal`]) to each
//! nameserver that signs and to each admin (who reseals them for new
//! nameservers and rolls them). Signed by an admin: only admins create
//! secrets.
//!
//! Each key is ECDSA P-256 with SHA-256 (DNSSEC algorithm 13), a
//! combined signing key (DNSKEY flags 257): the registrar's DS names it,
//! and it signs every answer. After a roll the old key stays, retiring,
//! only to sign the DNSKEY set, until the registrar has the new DS.

use serde::{Deserialize, Serialize};

use crate::{
    Domain, Signable,
    seal::{self, Sealed},
};

/// The kind number of [`ZoneKeys`] (see [`crate::kind_context`]).
pub const KEYS_KIND: u32 = 8;

/// The most keys a record holds: the signing one and a few retiring.
pub const MAX_KEYS: usize = 4;
/// The most recipients of the sealed private keys.
pub const MAX_RECIPIENTS: usize = 512;
/// The largest sealed copy (the PKCS#8 documents of [`MAX_KEYS`] keys).
pub const MAX_SEALED: usize = 2048;

/// The HPKE `info` of zone keys: sealed secrets of other purposes never
/// open as zone keys.
pub const SEAL_INFO: &[u8] = b"makiatto/dnssec-keys/v1";

/// A site's DNSSEC keys. No keys: the site's zones are not signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneKeys {
    pub format: u16,
    pub site: Domain,
    /// The site's `heads_after` when signed (as in a ZoneRecord): keys of
    /// a site removed and added again never come back.
    pub incarnation: u64,
    /// The public keys (P-256, x then y, 64 bytes each). The first signs
    /// every answer; the others only the DNSKEY set.
    pub keys: Vec<Vec<u8>>,
    /// The private keys (a postcard `Vec` of PKCS#8 documents, in the
    /// order of `keys`), one copy per recipient.
    pub sealed: Vec<Sealed>,
    pub version: u64,
}

impl Signable for ZoneKeys {
    const CONTEXT: &'static [u8] = b"makiatto/record/8";
}

/// Why a set of zone keys was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    #[error("{0} keys; at most {MAX_KEYS}")]
    TooManyKeys(usize),
    #[error("a public key of {0} bytes; P-256 keys are 64")]
    BadKey(usize),
    #[error("keys without a recipient, or recipients without keys")]
    Unsealed,
    #[error("{0} recipients; at most {MAX_RECIPIENTS}")]
    TooManyRecipients(usize),
    #[error("a sealed copy of {0} bytes; at most {MAX_SEALED}")]
    TooLarge(usize),
    #[error("two copies for one recipient")]
    TwoCopies,
    #[error("made for the site before it was removed and added again")]
    OtherIncarnation,
    #[error("no copy of the private keys is sealed to this key")]
    NoCopy,
    #[error("the private keys do not open: {0}")]
    Open(#[from] crate::seal::SealError),
    #[error("the private keys opened but cannot be read")]
    Unreadable,
}

impl ZoneKeys {
    /// The checks that need nothing but the record.
    pub fn check(&self) -> Result<(), KeysError> {
        if self.keys.len() > MAX_KEYS {
            return Err(KeysError::TooManyKeys(self.keys.len()));
        }
        if let Some(k) = self.keys.iter().find(|k| k.len() != 64) {
            return Err(KeysError::BadKey(k.len()));
        }
        if self.keys.is_empty() != self.sealed.is_empty() {
            return Err(KeysError::Unsealed);
        }
        if self.sealed.len() > MAX_RECIPIENTS {
            return Err(KeysError::TooManyRecipients(self.sealed.len()));
        }
        if let Some(s) = self.sealed.iter().find(|s| s.ct.len() > MAX_SEALED) {
            return Err(KeysError::TooLarge(s.ct.len()));
        }
        if seal::repeats(&self.sealed) {
            return Err(KeysError::TwoCopies);
        }
        Ok(())
    }

    /// What each sealed copy is bound to: the site and its public keys.
    /// A copy moved into another site's record, or next to other public
    /// keys, does not open.
    pub fn aad(&self) -> Vec<u8> {
        let mut aad = self.site.as_str().as_bytes().to_vec();
        aad.push(0);
        for k in &self.keys {
            aad.extend_from_slice(k);
        }
        aad
    }
}

impl ZoneKeys {
    /// The private keys (PKCS#8 documents, in the order of `keys`) from
    /// the copy sealed to `secret`'s public key.
    pub fn open(&self, secret: &[u8; 32]) -> Result<Vec<Vec<u8>>, KeysError> {
        let plain = seal::open_own(secret, &self.sealed, SEAL_INFO, &self.aad())
            .ok_or(KeysError::NoCopy)??;
        let private: Vec<Vec<u8>> =
            postcard::from_bytes(&plain).map_err(|_| KeysError::Unreadable)?;
        if private.len() != self.keys.len() {
            return Err(KeysError::Unreadable);
        }
        Ok(private)
    }

    /// Seals `private` (in the order of `keys`) to each of `recipients`;
    /// `fresh` gives new random bytes for each copy.
    pub fn seal_to(
        &mut self,
        private: &[Vec<u8>],
        recipients: &[[u8; 32]],
        mut fresh: impl FnMut() -> [u8; 32],
    ) -> Result<(), KeysError> {
        let plain = postcard::to_allocvec(private).map_err(|_| KeysError::Unreadable)?;
        self.sealed = seal::seal_each(recipients, &mut fresh, SEAL_INFO, &self.aad(), &plain)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ZoneKeys {
        ZoneKeys {
            format: 1,
            site: Domain::new("a.test").expect("domain"),
            incarnation: 0,
            keys: vec![vec![1; 64]],
            sealed: vec![],
            version: 1,
        }
    }

    #[test]
    fn each_recipient_opens_its_copy_and_nobody_else_does() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let mut k = keys();
        let mut n = 10u8;
        k.seal_to(
            &[b"pkcs8".to_vec()],
            &[seal::public_key(&a), seal::public_key(&b)],
            || {
                n += 1;
                [n; 32]
            },
        )
        .expect("seal");
        assert_eq!(k.check(), Ok(()));
        assert_eq!(k.open(&a).expect("a"), vec![b"pkcs8".to_vec()]);
        assert_eq!(k.open(&b).expect("b"), vec![b"pkcs8".to_vec()]);
        assert_eq!(k.open(&c), Err(KeysError::NoCopy));
        // The copies are bound to the public keys next to them.
        let mut swapped = k.clone();
        swapped.keys = vec![vec![2; 64]];
        assert!(matches!(swapped.open(&a), Err(KeysError::Open(_))));
        let mut moved = k.clone();
        moved.site = Domain::new("b.test").expect("domain");
        assert!(matches!(moved.open(&a), Err(KeysError::Open(_))));
        // One recipient named twice is refused.
        let mut twice = k;
        twice.sealed.push(twice.sealed[0].clone());
        assert_eq!(twice.check(), Err(KeysError::TwoCopies));
    }
}
