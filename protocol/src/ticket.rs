//! Tickets: a prefix plus RFC 4648 lowercase, unpadded base32 of postcard
//! bytes. Short enough to paste, self-describing by prefix.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::PublicKey;

const NODE_PREFIX: &str = "makinode1";

/// How to reach a node: its id (an ed25519 public key) and direct addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTicket {
    pub id: PublicKey,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    #[error(
        "wrong kind of ticket: node tickets start with \"makinode1\", invites with \"makinvite1\""
    )]
    WrongPrefix,
    #[error("the ticket is not valid base32; was it cut off when pasting?")]
    Base32,
    #[error("the ticket does not decode: {0}")]
    Decode(String),
}

pub(crate) fn encode_b32(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

pub(crate) fn decode_b32(s: &str) -> Result<Vec<u8>, TicketError> {
    data_encoding::BASE32_NOPAD
        .decode(s.to_ascii_uppercase().as_bytes())
        .map_err(|_| TicketError::Base32)
}

impl fmt::Display for NodeTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = crate::codec::encode(self);
        write!(f, "{NODE_PREFIX}{}", encode_b32(&bytes))
    }
}

impl FromStr for NodeTicket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(NODE_PREFIX)
            .ok_or(TicketError::WrongPrefix)?;
        let bytes = decode_b32(body)?;
        let (ticket, rest) = postcard::take_from_bytes::<NodeTicket>(&bytes)
            .map_err(|e| TicketError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TicketError::Decode("trailing bytes".into()));
        }
        PublicKey::from_bytes(*ticket.id.as_bytes())
            .map_err(|e| TicketError::Decode(e.to_string()))?;
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::SecretKey;

    #[test]
    fn round_trip() {
        let t = NodeTicket {
            id: SecretKey::from_bytes(&[3; 32]).public(),
            addrs: vec![
                "127.0.0.1:4433".parse().expect("addr"),
                "[::1]:1".parse().expect("addr"),
            ],
        };
        let s = t.to_string();
        assert!(s.starts_with("makinode1"));
        assert_eq!(s, s.to_lowercase());
        assert!(!s.contains('='));
        assert_eq!(s.parse::<NodeTicket>(), Ok(t));
        assert_eq!(
            "makinvite1aaaa".parse::<NodeTicket>(),
            Err(TicketError::WrongPrefix)
        );
        assert_eq!(
            "makinode1!!".parse::<NodeTicket>(),
            Err(TicketError::Base32)
        );
    }

    proptest! {
        #[test]
        fn decode_is_total(s in "makinode1[a-z2-7]{0,120}") {
            let _ = s.parse::<NodeTicket>();
        }
    }
}
