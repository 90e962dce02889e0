//! TLS session tickets every `http` node can open: sealed with a key
//! derived, per six-hour window, from the secret the nodes share
//! (`TicketKeys`), so a visitor whom GeoDNS sends to another node resumes
//! there. Until this node has the secret, its own random keys (rustls's
//! ticketer) stand in.
//!
//! A ticket: the secret's id (8 bytes), the window (8), a random nonce
//! (12), then the session state under ChaCha20-Poly1305 with the first
//! 16 bytes as associated data. A ticket opens in its window and the one
//! after; the secret itself is replaced daily and when a node is removed,
//! which erases every key derived from the old one.

use std::sync::{Arc, RwLock};

use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hkdf,
    rand::{SecureRandom, SystemRandom},
};
use rustls::server::ProducesTickets;

/// How long one derived key seals tickets (seconds).
pub const WINDOW_SECS: u64 = 6 * 3600;

const ID_LEN: usize = 8;
const HEADER: usize = ID_LEN + 8;

/// The tickets of this node's HTTPS listener.
#[derive(Debug)]
pub struct SharedTicketer {
    shared: RwLock<Option<Arc<Shared>>>,
    own: Arc<dyn ProducesTickets>,
    rng: SystemRandom,
}

/// The network's secret, and the keys of the windows in use.
struct Shared {
    id: [u8; ID_LEN],
    prk: hkdf::Prk,
    /// The window and key last derived (the current one, nearly always).
    current: RwLock<Option<(u64, Arc<LessSafeKey>)>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl SharedTicketer {
    /// `own` seals tickets until the shared secret arrives.
    pub fn new(own: Arc<dyn ProducesTickets>) -> Self {
        Self {
            shared: RwLock::new(None),
            own,
            rng: SystemRandom::new(),
        }
    }

    /// Uses `secret` from now on (None: this node's own keys again).
    pub fn set_secret(&self, secret: Option<&[u8; 32]>) {
        let shared = secret.map(|s| {
            let mut id = [0u8; ID_LEN];
            id.copy_from_slice(
                &blake3::derive_key("makiatto 2026 ticket secret id v1", s)[..ID_LEN],
            );
            Arc::new(Shared {
                id,
                prk: hkdf::Salt::new(hkdf::HKDF_SHA256, b"makiatto tickets v1").extract(s),
                current: RwLock::new(None),
            })
        });
        match self.shared.write() {
            Ok(mut now) => *now = shared,
            Err(poisoned) => *poisoned.into_inner() = shared,
        }
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.read().ok()?.clone()
    }
}

impl Shared {
    fn key(&self, window: u64) -> Option<Arc<LessSafeKey>> {
        if let Ok(current) = self.current.read()
            && let Some((w, key)) = current.as_ref()
            && *w == window
        {
            return Some(key.clone());
        }
        let info = window.to_be_bytes();
        let info = [&info[..]];
        let okm = self.prk.expand(&info, &CHACHA20_POLY1305).ok()?;
        let mut bytes = [0u8; 32];
        okm.fill(&mut bytes).ok()?;
        let key = Arc::new(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?,
        ));
        if let Ok(mut current) = self.current.write()
            && current.as_ref().is_none_or(|(w, _)| *w < window)
        {
            *current = Some((window, key.clone()));
        }
        Some(key)
    }
}

fn window_now() -> u64 {
    crate::now_millis() / 1000 / WINDOW_SECS
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // A ticket opens in its window and the next: at least this long.
        WINDOW_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let Some(shared) = self.shared() else {
            return self.own.encrypt(plain);
        };
        let window = window_now();
        let key = shared.key(window)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&shared.id);
        out.extend_from_slice(&window.to_be_bytes());
        let header: [u8; HEADER] = out.as_slice().try_into().ok()?;
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut sealed,
        )
        .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let Some(shared) = self.shared() else {
            return self.own.decrypt(cipher);
        };
        let header: [u8; HEADER] = cipher.get(..HEADER)?.try_into().ok()?;
        if header[..ID_LEN] != shared.id {
            // Sealed before the secret came (or by an old one).
            return self.own.decrypt(cipher);
        }
        let window = u64::from_be_bytes(header[ID_LEN..].try_into().ok()?);
        // Its window or the one before; one ahead too, for a node whose
        // clock runs a little ahead at the turn of a window.
        let now = window_now();
        if window > now + 1 || now.saturating_sub(window) > 1 {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = cipher.get(HEADER..HEADER + NONCE_LEN)?.try_into().ok()?;
        let mut body = cipher.get(HEADER + NONCE_LEN..)?.to_vec();
        let key = shared.key(window)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticketer() -> SharedTicketer {
        SharedTicketer::new(rustls::crypto::ring::Ticketer::new().expect("ticketer"))
    }

    #[test]
    fn a_ticket_one_node_seals_opens_at_another_with_the_secret() {
        let (a, b) = (ticketer(), ticketer());
        // Each with its own keys: no.
        let own = a.encrypt(b"state").expect("sealed");
        assert_eq!(a.decrypt(&own).as_deref(), Some(&b"state"[..]));
        assert_eq!(b.decrypt(&own), None);
        a.set_secret(Some(&[7; 32]));
        b.set_secret(Some(&[7; 32]));
        let shared = a.encrypt(b"state").expect("sealed");
        assert_eq!(b.decrypt(&shared).as_deref(), Some(&b"state"[..]));
        // One made before the secret still opens where it was made.
        assert_eq!(a.decrypt(&own).as_deref(), Some(&b"state"[..]));
        // Another secret (a node was removed): the old tickets are void.
        b.set_secret(Some(&[8; 32]));
        assert_eq!(b.decrypt(&shared), None);
    }

    #[test]
    fn altered_truncated_or_stale_tickets_do_not_open() {
        let t = ticketer();
        t.set_secret(Some(&[7; 32]));
        let ticket = t.encrypt(b"state").expect("sealed");
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "byte {i} flipped");
            assert_eq!(t.decrypt(&ticket[..i]), None, "cut at {i}");
        }
        // The same ticket claiming an older window.
        let mut stale = ticket.clone();
        let old = (window_now() - 2).to_be_bytes();
        stale[ID_LEN..HEADER].copy_from_slice(&old);
        assert_eq!(t.decrypt(&stale), None);
    }
}
