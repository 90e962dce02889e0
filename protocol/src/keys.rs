//! ed25519 keys. The key `maki keys` makes is both the CLI's iroh identity
//! and its signing key, so these are byte-compatible with iroh's keys.

use std::{fmt, str::FromStr};

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

use crate::hash::{parse_hex32, write_hex};

/// A public key, shown as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

crate::hash::hex32_serde!(PublicKey, |k: &PublicKey| k.0, PublicKey);

/// A secret signing key. Never printed.
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("not a public key: expected 64 hex characters")]
    Malformed,
    #[error("not a valid ed25519 public key")]
    NotOnCurve,
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotOnCurve)?;
        Ok(Self(bytes))
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `signature` over `message`; strict verification (no
    /// malleability). `verify_strict` is the plain check plus refusing
    /// small-order keys and R: checking with both, as before, did the same
    /// curve arithmetic twice, most of what taking in a record costs.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).is_ok()
    }

    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(10);
        s
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fmt_short())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(parse_hex32(s.trim()).ok_or(KeyError::Malformed)?)
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.0.sign(message).to_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public={})", self.public().fmt_short())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(..)")
    }
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: &[u8] = serde::de::Deserialize::deserialize(d)?;
        let arr: [u8; 64] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"64 bytes"))?;
        Ok(Signature(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signatures a plain check would take: a small-order key signing
    /// every message at once, and a second encoding of a valid signature.
    #[test]
    fn weak_keys_and_malleated_signatures_are_refused() {
        // The identity point as key, R = identity, s = 0: [s]B = R + [k]A
        // holds for any message.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = PublicKey::from_bytes(identity).expect("on the curve");
        let mut forged = [0u8; 64];
        forged[..32].copy_from_slice(&identity);
        assert!(!weak.verify(b"anything", &Signature(forged)));

        // s + L: the same signature, encoded again.
        let sk = SecretKey::from_bytes(&[9; 32]);
        let mut sig = sk.sign(b"msg").0;
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (s, l) in sig[32..].iter_mut().zip(l) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert!(!sk.public().verify(b"msg", &Signature(sig)));
    }

    #[test]
    fn sign_verify() {
        let sk = SecretKey::from_bytes(&[7; 32]);
        let pk = sk.public();
        let sig = sk.sign(b"msg");
        assert!(pk.verify(b"msg", &sig));
        assert!(!pk.verify(b"msh", &sig));
        let s = pk.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<PublicKey>(), Ok(pk));
        assert_eq!("xyz".parse::<PublicKey>(), Err(KeyError::Malformed));
    }
}
