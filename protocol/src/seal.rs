//! Secrets sealed to one recipient's X25519 key: HPKE (RFC 9180) in
//! base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20-Poly1305, one message per encapsulation.
//!
//! The replicated state carries secrets (DNSSEC zone keys, later TLS
//! keys) that only some nodes may read: an admin seals a copy to each
//! of them, and the copies travel in a signed record anyone may hold.
//!
//! Pure: the caller brings the ephemeral secret (fresh randomness, every
//! time), so the tests can check RFC 9180's own vectors.

use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey},
    hmac,
};
use serde::{Deserialize, Serialize};

use crate::{PublicKey, SecretKey};

/// A secret sealed to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The recipient's X25519 public key: which copy is whose.
    pub to: [u8; 32],
    /// The encapsulated key (the sender's ephemeral public key).
    pub enc: [u8; 32],
    /// The secret, encrypted, with its 16-byte tag.
    pub ct: Vec<u8>,
}

/// Why a sealed secret could not be opened or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("the key agreement gave all zeros (a low-order public key)")]
    LowOrder,
    #[error("sealed to another key")]
    NotOurs,
    #[error("the sealed secret does not open (altered, or made for another context)")]
    Open,
    #[error("the secret is too large to seal")]
    TooLarge,
}

/// The X25519 public key of `secret`.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*secret, x25519_dalek::X25519_BASEPOINT_BYTES)
}

/// The X25519 public key an admin's identity (Ed25519) is sealed to, by
/// the birational map between the curves, as `age` does with ssh-ed25519
/// keys: admins have no record to announce a second key in.
pub fn admin_public(key: &PublicKey) -> Option<[u8; 32]> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()).ok()?;
    Some(key.to_montgomery().to_bytes())
}

/// The X25519 secret that opens what was sealed to [`admin_public`].
pub fn admin_secret(key: &SecretKey) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&key.to_bytes()).to_scalar_bytes()
}

/// A node's X25519 secret, derived from its identity key under its own
/// context (never the same scalar as its signatures); its public half is
/// announced in its node record.
pub fn node_secret(key: &SecretKey) -> [u8; 32] {
    blake3::derive_key("makiatto 2026 node sealing key v1", &key.to_bytes())
}

/// Seals `pt` to `recipient`. `ephemeral` must be fresh random bytes;
/// `info` names what the secret is for and `aad` binds it to its record:
/// a copy moved to another context does not open.
pub fn seal(
    recipient: &[u8; 32],
    ephemeral: [u8; 32],
    info: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> Result<Sealed, SealError> {
    let enc = public_key(&ephemeral);
    let dh = agree(ephemeral, *recipient)?;
    let (key, nonce) = schedule(&dh, &enc, recipient, info);
    let key =
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| SealError::Open)?);
    let mut ct = pt.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut ct)
        .map_err(|_| SealError::TooLarge)?;
    Ok(Sealed {
        to: *recipient,
        enc,
        ct,
    })
}

/// Opens `sealed` with the recipient's `secret`.
pub fn open(
    secret: &[u8; 32],
    sealed: &Sealed,
    info: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SealError> {
    let own = public_key(secret);
    if own != sealed.to {
        return Err(SealError::NotOurs);
    }
    let dh = agree(*secret, sealed.enc)?;
    let (key, nonce) = schedule(&dh, &sealed.enc, &own, info);
    let key =
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| SealError::Open)?);
    let mut buf = sealed.ct.clone();
    let pt = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| SealError::Open)?;
    Ok(pt.to_vec())
}

/// Seals `pt` to each of `recipients` (once each, in key order); `fresh`
/// gives new random bytes for each copy.
pub fn seal_each(
    recipients: &[[u8; 32]],
    mut fresh: impl FnMut() -> [u8; 32],
    info: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> Result<Vec<Sealed>, SealError> {
    let mut to = recipients.to_vec();
    to.sort_unstable();
    to.dedup();
    to.iter().map(|r| seal(r, fresh(), info, aad, pt)).collect()
}

/// Opens the copy among `copies` sealed to `secret`'s public key; None
/// when there is none.
pub fn open_own(
    secret: &[u8; 32],
    copies: &[Sealed],
    info: &[u8],
    aad: &[u8],
) -> Option<Result<Vec<u8>, SealError>> {
    let own = public_key(secret);
    let copy = copies.iter().find(|s| s.to == own)?;
    Some(open(secret, copy, info, aad))
}

/// Whether any recipient has two copies among `copies`.
pub fn repeats(copies: &[Sealed]) -> bool {
    let mut to: Vec<_> = copies.iter().map(|s| s.to).collect();
    to.sort_unstable();
    to.windows(2).any(|w| w[0] == w[1])
}

fn agree(secret: [u8; 32], public: [u8; 32]) -> Result<[u8; 32], SealError> {
    let dh = x25519_dalek::x25519(secret, public);
    // RFC 9180 §7.1.4: an all-zero result means a low-order point.
    if dh == [0; 32] {
        return Err(SealError::LowOrder);
    }
    Ok(dh)
}

const KEM_SUITE: &[u8] = b"KEM\x00\x20";
const HPKE_SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";

/// DHKEM's ExtractAndExpand, then the base-mode key schedule: the AEAD
/// key and the nonce of the first (only) message.
fn schedule(
    dh: &[u8; 32],
    enc: &[u8; 32],
    recipient: &[u8; 32],
    info: &[u8],
) -> ([u8; 32], [u8; 12]) {
    let eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh);
    let mut kem_context = [0u8; 64];
    kem_context[..32].copy_from_slice(enc);
    kem_context[32..].copy_from_slice(recipient);
    let mut shared = [0u8; 32];
    labeled_expand(
        KEM_SUITE,
        &eae_prk,
        b"shared_secret",
        &kem_context,
        &mut shared,
    );

    let psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info);
    let mut context = Vec::with_capacity(65);
    context.push(0); // mode_base
    context.extend_from_slice(&psk_id_hash);
    context.extend_from_slice(&info_hash);
    let secret = labeled_extract(HPKE_SUITE, &shared, b"secret", b"");
    let mut key = [0u8; 32];
    labeled_expand(HPKE_SUITE, &secret, b"key", &context, &mut key);
    let mut nonce = [0u8; 12];
    labeled_expand(HPKE_SUITE, &secret, b"base_nonce", &context, &mut nonce);
    (key, nonce)
}

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> [u8; 32] {
    // HKDF-Extract with an empty salt uses a zero-filled key (RFC 5869).
    let salt = if salt.is_empty() {
        &[0u8; 32][..]
    } else {
        salt
    };
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, salt));
    for part in [b"HPKE-v1".as_slice(), suite, label, ikm] {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// HKDF-Expand of at most one block (every length here is ≤ 32).
fn labeled_expand(suite: &[u8], prk: &[u8; 32], label: &[u8], info: &[u8], out: &mut [u8]) {
    debug_assert!(out.len() <= 32);
    let len = (out.len() as u16).to_be_bytes();
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, prk));
    for part in [len.as_slice(), b"HPKE-v1", suite, label, info, &[1]] {
        ctx.update(part);
    }
    let block = ctx.sign();
    out.copy_from_slice(&block.as_ref()[..out.len()]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let v = data_encoding::HEXLOWER.decode(s.as_bytes()).expect("hex");
        v.try_into().expect("length")
    }

    fn hexv(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).expect("hex")
    }

    /// RFC 9180 A.2.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    /// ChaCha20Poly1305, base mode, sequence number 0.
    #[test]
    fn rfc_9180_vector() {
        let sk_e: [u8; 32] =
            hex("f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600");
        let sk_r: [u8; 32] =
            hex("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb");
        let pk_r: [u8; 32] =
            hex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        assert_eq!(public_key(&sk_r), pk_r);
        let info = hexv("4f6465206f6e2061204772656369616e2055726e");
        let aad = hexv("436f756e742d30");
        let pt = hexv("4265617574792069732074727574682c20747275746820626561757479");
        let sealed = seal(&pk_r, sk_e, &info, &aad, &pt).expect("seal");
        assert_eq!(
            sealed.enc,
            hex::<32>("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")
        );
        assert_eq!(
            sealed.ct,
            hexv(
                "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"
            )
        );
        assert_eq!(open(&sk_r, &sealed, &info, &aad).expect("open"), pt);
    }

    #[test]
    fn a_copy_opens_only_for_its_recipient_in_its_context() {
        let alice = [7u8; 32];
        let bob = [9u8; 32];
        let sealed = seal(
            &public_key(&alice),
            [3; 32],
            b"zone keys",
            b"a.test",
            b"secret",
        )
        .expect("seal");
        assert_eq!(
            open(&alice, &sealed, b"zone keys", b"a.test").expect("open"),
            b"secret"
        );
        assert_eq!(
            open(&bob, &sealed, b"zone keys", b"a.test"),
            Err(SealError::NotOurs)
        );
        // Relabelled to bob: still his key cannot open it.
        let mut stolen = sealed.clone();
        stolen.to = public_key(&bob);
        assert_eq!(
            open(&bob, &stolen, b"zone keys", b"a.test"),
            Err(SealError::Open)
        );
        // Moved to another site's record, or another purpose.
        assert_eq!(
            open(&alice, &sealed, b"zone keys", b"b.test"),
            Err(SealError::Open)
        );
        assert_eq!(
            open(&alice, &sealed, b"tls keys", b"a.test"),
            Err(SealError::Open)
        );
        let mut flipped = sealed.clone();
        flipped.ct[0] ^= 1;
        assert_eq!(
            open(&alice, &flipped, b"zone keys", b"a.test"),
            Err(SealError::Open)
        );
        // A low-order point as the encapsulated key.
        let mut low = sealed;
        low.enc = [0; 32];
        assert_eq!(
            open(&alice, &low, b"zone keys", b"a.test"),
            Err(SealError::LowOrder)
        );
    }

    #[test]
    fn an_admins_ed25519_key_opens_what_was_sealed_to_it() {
        let admin = SecretKey::from_bytes(&[5; 32]);
        let to = admin_public(&admin.public()).expect("a valid key");
        assert_eq!(public_key(&admin_secret(&admin)), to);
        let sealed = seal(&to, [1; 32], b"i", b"a", b"x").expect("seal");
        assert_eq!(
            open(&admin_secret(&admin), &sealed, b"i", b"a").expect("open"),
            b"x"
        );
        // A node's sealing key is not its identity's.
        assert_ne!(public_key(&node_secret(&admin)), to);
    }
}
