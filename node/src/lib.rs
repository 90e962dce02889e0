//! The Makiatto node daemon as a library: `main.rs` parses arguments and
//! calls into here, and tests drive the same code.

pub mod acme;
pub mod admin;
pub mod certs;
pub mod config;
pub mod content;
pub mod directory;
pub mod dns;
pub mod download;
pub mod edge;
pub mod endpoint;
pub mod frame;
pub mod gate;
pub mod gossip;
pub mod health;
pub mod identity;
pub mod join;
pub mod live;
pub mod members;
pub mod mesh;
#[cfg(feature = "next-format")]
mod next;
pub mod node;
pub mod outbox;
pub mod peers;
pub mod records;
pub mod replicate;
pub mod secrets;
pub mod serving;
pub mod setup;
pub mod shared;
pub mod state;
pub mod sync;
pub mod tickets;

pub use config::Config;
pub use node::{Node, NodeError};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
