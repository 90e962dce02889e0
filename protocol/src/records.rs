//! Network records beyond heads.

use serde::{Deserialize, Serialize};

use crate::{PublicKey, signed::Signable};

/// The record format this code writes.
pub const GENESIS_FORMAT: u16 = 1;

/// The first record of a network: its admin keys. Signed by the node that
/// created the network; the BLAKE3 of the signed record is the network id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub format: u16,
    pub admins: Vec<PublicKey>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl Signable for Genesis {
    const CONTEXT: &'static [u8] = b"makiatto/genesis/v1";
}
