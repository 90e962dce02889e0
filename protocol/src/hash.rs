//! BLAKE3 content hashes. People and URLs see 64 lowercase hex characters.

use std::{fmt, str::FromStr};

/// A BLAKE3 hash: the name of a blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash([u8; 32]);

/// 32-byte values travel as raw bytes (postcard) and read as 64 hex
/// characters in human-readable formats (`--json`), both ways.
macro_rules! hex32_serde {
    ($ty:ty, $bytes:expr, $new:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    serde::Serialize::serialize(&$bytes(self), s)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32] as serde::Deserialize>::deserialize(d).map($new)
                }
            }
        }
    };
}
pub(crate) use hex32_serde;

hex32_serde!(Hash, |h: &Hash| h.0, Hash);

/// A hash in text form that is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a BLAKE3 hash: expected 64 hex characters")]
pub struct HashError;

impl Hash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 10 hex characters, for logs and tables.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(10);
        s
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// Lowercase hex, the text form of hashes and keys.
pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl FromStr for Hash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(Self).ok_or(HashError)
    }
}

/// Parses exactly 64 hex characters (either case) into 32 bytes.
pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_on_the_wire_hex_in_json() {
        let h = Hash::of(b"hello");
        let wire = postcard::to_stdvec(&h).expect("encode");
        assert_eq!(wire, h.as_bytes().to_vec(), "32 raw bytes, as before");
        assert_eq!(postcard::from_bytes::<Hash>(&wire).expect("decode"), h);
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(json, format!("\"{h}\""));
        assert_eq!(serde_json::from_str::<Hash>(&json).expect("from json"), h);
        assert!(serde_json::from_str::<Hash>("\"xyz\"").is_err());
        let k = crate::SecretKey::from_bytes(&[3; 32]).public();
        let json = serde_json::to_string(&k).expect("json");
        assert_eq!(
            serde_json::from_str::<crate::PublicKey>(&json).expect("key"),
            k
        );
    }

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"hello");
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, s.to_lowercase());
        assert_eq!(s.parse::<Hash>(), Ok(h));
        assert_eq!(s.to_uppercase().parse::<Hash>(), Ok(h));
        assert_eq!(h.to_string(), blake3::hash(b"hello").to_hex().as_str());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            "ä",
        ] {
            assert_eq!(bad.parse::<Hash>(), Err(HashError), "{bad:?}");
        }
    }
}
