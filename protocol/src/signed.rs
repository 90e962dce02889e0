//! `Signed<T>`: a value's canonical bytes, the signer and an ed25519
//! signature over a per-type context plus those bytes.
//!
//! The signed bytes travel as they were signed; verification decodes them,
//! so no re-encoding can ever change what a signature covers.

use std::{fmt, marker::PhantomData};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::SecretKey;
use crate::keys::{PublicKey, Signature};

/// A type that can be signed. The context separates signatures of
/// different types: a signed `Head` can never pass as another record.
pub trait Signable: Serialize + DeserializeOwned {
    const CONTEXT: &'static [u8];
}

/// `T`, signed by `signer`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    bytes: Vec<u8>,
    signer: PublicKey,
    signature: Signature,
    #[serde(skip)]
    _t: PhantomData<fn() -> T>,
}

/// The most signed bytes a record may carry. Every node carries every
/// record and a sync sends many in one frame, so one record is kept far
/// below a frame (a zone of 64 KiB, the largest planned, fits).
pub const MAX_SIGNED_BYTES: usize = 96 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    #[error("the signature does not match the signer and content")]
    BadSignature,
    #[error("the signed content is {len} bytes; the limit is {MAX_SIGNED_BYTES}")]
    TooLarge { len: usize },
    #[error("the signed content does not decode: {0}")]
    Decode(String),
}

impl<T: Signable> Signed<T> {
    /// [`Self::sign_bytes_under`] with `T`'s own context.
    #[cfg(test)]
    pub(crate) fn sign_bytes(key: &SecretKey, bytes: Vec<u8>) -> Self {
        Self::sign_bytes_under(key, T::CONTEXT, bytes)
    }

    pub fn sign(key: &SecretKey, value: &T) -> Self {
        let bytes = crate::codec::encode(value);
        let signature = key.sign(&message::<T>(&bytes));
        Self {
            bytes,
            signer: key.public(),
            signature,
            _t: PhantomData,
        }
    }

    /// Checks the size and the signature, then decodes the value.
    pub fn verify(&self) -> Result<T, SignedError> {
        self.check_size()?;
        if !self
            .signer
            .verify(&message::<T>(&self.bytes), &self.signature)
        {
            return Err(SignedError::BadSignature);
        }
        postcard::from_bytes(&self.bytes).map_err(|e| SignedError::Decode(e.to_string()))
    }

    /// Decodes the value without checking the signature: only for bytes
    /// this process verified before it stored them (a node's own records,
    /// read back at start, where checking every signature again would cost
    /// seconds for nothing).
    pub fn decode_trusted(&self) -> Result<T, SignedError> {
        postcard::from_bytes(&self.bytes).map_err(|e| SignedError::Decode(e.to_string()))
    }
}

impl<T> Signed<T> {
    /// Signs `bytes` as they are, under `context`: content this build does
    /// not model (tests build the records a newer node would make).
    pub fn sign_bytes_under(key: &SecretKey, context: &[u8], bytes: Vec<u8>) -> Self {
        let signature = key.sign(&message_in(context, &bytes));
        Self {
            bytes,
            signer: key.public(),
            signature,
            _t: PhantomData,
        }
    }

    /// Who claims to have signed this; trust it only after [`Self::verify`].
    pub fn signer(&self) -> PublicKey {
        self.signer
    }

    /// The canonical bytes that were signed.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the signature holds for these bytes under `context`: for
    /// content this build cannot decode (a record kind made by a newer
    /// node), whose context follows a fixed rule.
    pub fn holds_under(&self, context: &[u8]) -> Result<(), SignedError> {
        self.check_size()?;
        if self
            .signer
            .verify(&message_in(context, &self.bytes), &self.signature)
        {
            Ok(())
        } else {
            Err(SignedError::BadSignature)
        }
    }

    fn check_size(&self) -> Result<(), SignedError> {
        if self.bytes.len() > MAX_SIGNED_BYTES {
            return Err(SignedError::TooLarge {
                len: self.bytes.len(),
            });
        }
        Ok(())
    }

    /// The same signed bytes, read as another type.
    pub(crate) fn retag<U>(self) -> Signed<U> {
        Signed {
            bytes: self.bytes,
            signer: self.signer,
            signature: self.signature,
            _t: PhantomData,
        }
    }
}

fn message<T: Signable>(bytes: &[u8]) -> Vec<u8> {
    message_in(T::CONTEXT, bytes)
}

fn message_in(context: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + 1 + bytes.len());
    m.extend_from_slice(context);
    m.push(0);
    m.extend_from_slice(bytes);
    m
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            signer: self.signer,
            signature: self.signature,
            _t: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
            && self.signer == other.signer
            && self.signature == other.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("signer", &self.signer)
            .field("len", &self.bytes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Domain, Hash, Head};

    fn head() -> Head {
        Head {
            site: Domain::new("example.com").expect("domain"),
            seq: 3,
            manifest: Hash::of(b"m"),
        }
    }

    #[test]
    fn round_trip_and_forgery() {
        let sk = SecretKey::from_bytes(&[1; 32]);
        let signed = Signed::sign(&sk, &head());
        assert_eq!(signed.verify(), Ok(head()));
        let wire = postcard::to_stdvec(&signed).expect("encode");
        let back: Signed<Head> = postcard::from_bytes(&wire).expect("decode");
        assert_eq!(back.verify(), Ok(head()));

        // Flip one byte of the signed content: the signature no longer holds.
        let mut forged = signed.clone();
        forged.bytes[2] ^= 1;
        assert_eq!(forged.verify(), Err(SignedError::BadSignature));

        // Padded past the limit (postcard would read the prefix and ignore
        // the rest): refused whatever the signature, for every kind.
        let mut padded = crate::codec::encode(&head());
        padded.resize(MAX_SIGNED_BYTES + 1, 0);
        let big = Signed::<Head>::sign_bytes(&sk, padded.clone());
        assert_eq!(
            big.verify(),
            Err(SignedError::TooLarge {
                len: MAX_SIGNED_BYTES + 1
            })
        );
        let unread = Signed::<Head>::sign_bytes_under(&sk, b"makiatto/record/9", padded);
        assert!(unread.holds_under(b"makiatto/record/9").is_err());

        // Claim another signer.
        let mut forged = signed;
        forged.signer = SecretKey::from_bytes(&[2; 32]).public();
        assert_eq!(forged.verify(), Err(SignedError::BadSignature));
    }
}
