//! The Makiatto CLI as a library. Depends on `maki-protocol` and iroh only —
//! never on the node — so it stays small and builds on macOS.

pub mod cert;
pub mod delegation;
pub mod dnssec;
pub mod keys;
pub mod net;
pub mod nodes;
pub mod peers;
pub mod project;
pub mod publish;
pub mod render;
pub mod scan;
pub mod sites;
pub mod zone;

/// Milliseconds since the Unix epoch: the version of a record an admin
/// signs, so a later change carries a higher one without asking.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
