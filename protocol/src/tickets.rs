//! The TLS session-ticket secret every `http` node shares, so a visitor
//! who resumes at another node than the one that gave the ticket resumes
//! rather than paying a full handshake.
//!
//! One per network: 32 random bytes sealed (HPKE, [`crate::seal`]) to
//! each `http` node. Made, resealed to nodes that join, and replaced (a
//! node was removed, or a day passed) by a member node. Each node derives
//! the key of each ticket window from it; what a ticket looks like is the
//! node's (`edge::tickets`).

use serde::{Deserialize, Serialize};

use crate::{
    Signable,
    seal::{self, Sealed},
};

/// The kind number of [`TicketKeys`] (see [`crate::kind_context`]).
pub const TICKETS_KIND: u32 = 13;

/// The HPKE `info` of the ticket secret.
pub const SEAL_INFO: &[u8] = b"makiatto/tls-tickets/v1";

/// The length of the secret.
pub const SECRET_LEN: usize = 32;

/// The shared session-ticket secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKeys {
    pub format: u16,
    /// When this secret was made (milliseconds since the epoch): a reseal
    /// keeps it, a new secret sets it anew.
    pub made: u64,
    /// The secret, one copy per `http` node.
    pub sealed: Vec<Sealed>,
    pub version: u64,
}

impl Signable for TicketKeys {
    const CONTEXT: &'static [u8] = b"makiatto/record/13";
}

/// Why a ticket-key record was refused, or its secret not had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketKeysError {
    #[error(
        "no copy of the secret, more than {} copies, or one that is not {SECRET_LEN} bytes sealed",
        crate::cert::MAX_RECIPIENTS
    )]
    Copies,
    #[error("two copies for one recipient")]
    TwoCopies,
    #[error("no copy of the secret is sealed to this key")]
    NoCopy,
    #[error("the secret does not open: {0}")]
    Open(#[from] seal::SealError),
}

impl TicketKeys {
    /// The checks that need nothing but the record.
    pub fn check(&self) -> Result<(), TicketKeysError> {
        // The secret and the AEAD tag.
        let sealed_len = SECRET_LEN + 16;
        if self.sealed.is_empty()
            || self.sealed.len() > crate::cert::MAX_RECIPIENTS
            || self.sealed.iter().any(|s| s.ct.len() != sealed_len)
        {
            return Err(TicketKeysError::Copies);
        }
        if seal::repeats(&self.sealed) {
            return Err(TicketKeysError::TwoCopies);
        }
        Ok(())
    }

    fn aad(&self) -> [u8; 8] {
        self.made.to_be_bytes()
    }

    /// The secret, from the copy sealed to `secret`'s public key.
    pub fn open(&self, secret: &[u8; 32]) -> Result<[u8; SECRET_LEN], TicketKeysError> {
        let plain = seal::open_own(secret, &self.sealed, SEAL_INFO, &self.aad())
            .ok_or(TicketKeysError::NoCopy)??;
        plain.try_into().map_err(|_| TicketKeysError::Copies)
    }

    /// Seals `shared` to each of `recipients`; `fresh` gives new random
    /// bytes for each copy.
    pub fn seal_to(
        &mut self,
        shared: &[u8; SECRET_LEN],
        recipients: &[[u8; 32]],
        fresh: impl FnMut() -> [u8; 32],
    ) -> Result<(), TicketKeysError> {
        self.sealed = seal::seal_each(recipients, fresh, SEAL_INFO, &self.aad(), shared)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_opens_for_its_recipients_only() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut keys = TicketKeys {
            format: 1,
            made: 5,
            sealed: vec![],
            version: 5,
        };
        assert_eq!(keys.check(), Err(TicketKeysError::Copies));
        let mut n = 0u8;
        keys.seal_to(&[9; 32], &[seal::public_key(&a)], || {
            n += 1;
            [n; 32]
        })
        .expect("seal");
        assert_eq!(keys.check(), Ok(()));
        assert_eq!(keys.open(&a), Ok([9; 32]));
        assert_eq!(keys.open(&b), Err(TicketKeysError::NoCopy));
        // A copy carried into a record of another secret does not open.
        let moved = TicketKeys { made: 6, ..keys };
        assert!(matches!(moved.open(&a), Err(TicketKeysError::Open(_))));
    }
}
