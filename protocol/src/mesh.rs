//! Mesh addresses: where a member (or an external WireGuard peer) is
//! reached inside the network's WireGuard mesh.
//!
//! Each network owns one IPv6 unique local prefix (RFC 4193, `fd00::/8`):
//! its 40-bit global id is derived from the network id, so two networks
//! (two sets of nodes that may one day share a host) do not collide. Inside
//! it, subnet 0 holds the members and subnet 1 the external peers an admin
//! adds; the interface id (64 bits) is derived from the member's node id or
//! the peer's WireGuard key. Every node computes every address from the
//! records it holds: no allocator, no coordination, nothing to lease.
//!
//! Two members collide only if two derived 64-bit interface ids meet: with
//! 10,000 members that happens with odds of about 3 in 10^12.

use std::net::Ipv6Addr;

use crate::{Hash, PublicKey};

/// The length of the network's prefix: `fdXX:XXXX:XXXX::/48`.
pub const NETWORK_PREFIX_LEN: u8 = 48;

/// The length of each subnet (members, external peers): a /64.
pub const SUBNET_PREFIX_LEN: u8 = 64;

/// Which subnet of the network's prefix an address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Subnet {
    /// The network's nodes.
    Members = 0,
    /// Laptops, database hosts and other machines an admin adds.
    External = 1,
}

/// BLAKE3 in derive-key mode: the inputs of one purpose never give the
/// bytes of another.
fn derive(context: &str, input: &[u8]) -> [u8; 32] {
    blake3::derive_key(context, input)
}

/// The network's /48: `fd` followed by 40 bits derived from its id.
pub fn network_prefix(network: &Hash) -> Ipv6Addr {
    let id = derive("makiatto 2026 mesh network prefix", network.as_bytes());
    let mut bytes = [0u8; 16];
    bytes[0] = 0xfd;
    bytes[1..6].copy_from_slice(&id[..5]);
    Ipv6Addr::from(bytes)
}

/// The first address of a subnet of the network's prefix (its /64).
pub fn subnet(network: &Hash, subnet: Subnet) -> Ipv6Addr {
    let mut bytes = network_prefix(network).octets();
    bytes[6..8].copy_from_slice(&(subnet as u16).to_be_bytes());
    Ipv6Addr::from(bytes)
}

fn in_subnet(network: &Hash, which: Subnet, context: &str, key: &[u8; 32]) -> Ipv6Addr {
    let mut bytes = subnet(network, which).octets();
    let iid = derive(context, key);
    bytes[8..].copy_from_slice(&iid[..8]);
    Ipv6Addr::from(bytes)
}

/// A member's mesh address (a /128 in the members' subnet), from its node id.
pub fn member_addr(network: &Hash, node: &PublicKey) -> Ipv6Addr {
    in_subnet(
        network,
        Subnet::Members,
        "makiatto 2026 mesh member address",
        node.as_bytes(),
    )
}

/// An external peer's mesh address, from its WireGuard public key.
pub fn external_addr(network: &Hash, wireguard_key: &[u8; 32]) -> Ipv6Addr {
    in_subnet(
        network,
        Subnet::External,
        "makiatto 2026 mesh external address",
        wireguard_key,
    )
}

/// Which subnet of this network `addr` is in, if any.
pub fn subnet_of(network: &Hash, addr: &Ipv6Addr) -> Option<Subnet> {
    let o = addr.octets();
    if o[..6] != network_prefix(network).octets()[..6] {
        return None;
    }
    match u16::from_be_bytes([o[6], o[7]]) {
        0 => Some(Subnet::Members),
        1 => Some(Subnet::External),
        _ => None,
    }
}

/// A WireGuard key as `wg` shows it: standard base64 of its 32 bytes.
pub fn key_text(key: &[u8; 32]) -> String {
    data_encoding::BASE64.encode(key)
}

/// A WireGuard key that is not 32 bytes of base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WireGuard key (44 characters of base64, as `wg pubkey` prints)")]
pub struct KeyTextError(pub String);

/// Reads a key as `wg` shows it.
pub fn parse_key(text: &str) -> Result<[u8; 32], KeyTextError> {
    let err = || KeyTextError(text.chars().take(60).collect());
    let bytes = data_encoding::BASE64
        .decode(text.trim().as_bytes())
        .map_err(|_| err())?;
    bytes.try_into().map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    #[test]
    fn addresses_are_unique_local_and_in_their_network_s_subnets() {
        let net = Hash::of(b"network a");
        let other = Hash::of(b"network b");
        let node = SecretKey::from_bytes(&[1; 32]).public();

        let prefix = network_prefix(&net);
        assert_eq!(prefix.octets()[0], 0xfd, "RFC 4193 locally assigned");
        assert_ne!(prefix, network_prefix(&other));
        assert!(prefix.octets()[6..].iter().all(|b| *b == 0));

        let m = member_addr(&net, &node);
        assert!(m.is_unique_local());
        assert_eq!(m, member_addr(&net, &node), "derived, not allocated");
        assert_eq!(subnet_of(&net, &m), Some(Subnet::Members));
        assert_eq!(subnet_of(&other, &m), None);
        assert_ne!(m, member_addr(&other, &node));

        // The same 32 bytes as a node id and as a WireGuard key give
        // addresses in different subnets with different interface ids.
        let e = external_addr(&net, node.as_bytes());
        assert_eq!(subnet_of(&net, &e), Some(Subnet::External));
        assert_ne!(m.octets()[8..], e.octets()[8..]);

        let outside: Ipv6Addr = "fd00::1".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        assert_eq!(subnet_of(&net, &outside), None);
    }

    #[test]
    fn wireguard_keys_read_as_wg_prints_them() {
        let key = [7u8; 32];
        let text = key_text(&key);
        assert_eq!(text.len(), 44);
        assert_eq!(parse_key(&text), Ok(key));
        assert_eq!(parse_key(&format!(" {text}\n")), Ok(key));
        assert!(parse_key("not a key").is_err());
        assert!(parse_key(&data_encoding::BASE64.encode(&[1u8; 31])).is_err());
    }

    #[test]
    fn members_of_one_network_get_distinct_addresses() {
        let net = Hash::of(b"network");
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000u32 {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let node = SecretKey::from_bytes(&seed).public();
            assert!(seen.insert(member_addr(&net, &node)));
        }
    }
}
