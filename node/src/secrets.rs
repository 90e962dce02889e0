//! Who the network's TLS and ACME secrets are sealed to, and the fresh
//! randomness each sealed copy needs: shared by the certificates
//! (`certs`), the ACME account (`acme`) and the ticket secret (`tickets`).

use maki_protocol::{PublicKey, View};

use crate::directory::Directory;

/// The `http` members' ids and sealing keys.
pub fn http_seals(dir: &Directory) -> Vec<(PublicKey, [u8; 32])> {
    dir.members()
        .filter(|(n, _)| n.roles.iter().any(|r| r == maki_protocol::ROLE_HTTP))
        .filter_map(|(n, _)| Some((n.id, n.seal?)))
        .collect()
}

/// Who a TLS or account key is sealed to: the `http` nodes and admins.
pub fn recipients(dir: &Directory) -> Vec<[u8; 32]> {
    let mut out: Vec<[u8; 32]> = http_seals(dir).into_iter().map(|(_, s)| s).collect();
    out.extend(
        dir.admins()
            .iter()
            .filter_map(maki_protocol::seal::admin_public),
    );
    out
}

/// Runs `f` with a source of fresh random bytes; also says whether the
/// source ever failed (the bytes are then not to be used).
pub fn with_randomness<R>(f: impl FnOnce(&mut dyn FnMut() -> [u8; 32]) -> R) -> (R, bool) {
    let rng = ring::rand::SystemRandom::new();
    let mut failed = false;
    let mut fresh = || {
        let mut b = [0u8; 32];
        failed |= ring::rand::SecureRandom::fill(&rng, &mut b).is_err();
        b
    };
    let out = f(&mut fresh);
    (out, failed)
}
