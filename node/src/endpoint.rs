//! The p2p endpoint: one iroh QUIC socket that carries every protocol a
//! node speaks with members, admins and joiners (each by its ALPN).

use std::{net::SocketAddr, time::Duration};

use iroh::{
    Endpoint, RelayMode,
    address_lookup::MemoryLookup,
    endpoint::{IdleTimeout, PortmapperConfig, QuicTransportConfig, presets},
};
use maki_protocol::{
    SecretKey,
    rpc::{ADMIN_ALPN, JOIN_ALPN},
    sync::{GOSSIP_ALPN, SYNC_ALPN},
};

use crate::peers::MembersOnly;

const KEEP_ALIVE: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot bind the p2p endpoint on {addr}: {message}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub message: String,
}

/// An endpoint on `addr` with `key` as its identity, finding peers only
/// through `lookup`: for a node's short talks before it runs (a join), and
/// for tests that play a stranger.
pub async fn bind(
    key: &SecretKey,
    addr: SocketAddr,
    lookup: MemoryLookup,
) -> Result<Endpoint, BindError> {
    bind_with(key, addr, lookup, None).await
}

/// A running node's endpoint: [`bind`], with gossip kept among `members`
/// (the lookup is filled from the node records).
pub async fn bind_node(
    key: &SecretKey,
    addr: SocketAddr,
    lookup: MemoryLookup,
    members: MembersOnly,
) -> Result<Endpoint, BindError> {
    bind_with(key, addr, lookup, Some(members)).await
}

async fn bind_with(
    key: &SecretKey,
    addr: SocketAddr,
    lookup: MemoryLookup,
    members: Option<MembersOnly>,
) -> Result<Endpoint, BindError> {
    let err = |message: String| BindError { addr, message };
    // No relays, no n0 discovery, no UPnP: peers come from our own records.
    // A peer that vanishes (a killed CLI mid-publish) is noticed within
    // the idle timeout, so its abandoned publish is cleaned up promptly.
    let transport = QuicTransportConfig::builder()
        .keep_alive_interval(KEEP_ALIVE)
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .build();
    let builder = Endpoint::builder(presets::Minimal)
        .transport_config(transport)
        .secret_key(iroh::SecretKey::from_bytes(&key.to_bytes()))
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .alpns(vec![
            ADMIN_ALPN.to_vec(),
            JOIN_ALPN.to_vec(),
            SYNC_ALPN.to_vec(),
            GOSSIP_ALPN.to_vec(),
            iroh_blobs::ALPN.to_vec(),
        ])
        .address_lookup(lookup)
        .clear_ip_transports()
        .bind_addr(addr)
        .map_err(|e| err(e.to_string()))?;
    let builder = match members {
        Some(m) => builder.hooks(m),
        None => builder,
    };
    builder.bind().await.map_err(|e| err(e.to_string()))
}
