//! The p2p endpoint: one iroh QUIC socket that carries every protocol a
//! node speaks with members, admins and joiners (each by its ALPN).

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use iroh::{
    Endpoint, RelayMode,
    address_lookup::MemoryLookup,
    endpoint::{
        BindOpts, IdleTimeout, PortmapperConfig, QuicTransportConfig, presets,
        transports::{FourTuple, PathSelection, PathSelectionContext, PathSelector},
    },
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
/// (the lookup is filled from the node records). With the mesh on, it also
/// listens at the node's mesh address (`mesh`, on `addr`'s port), and
/// prefers paths inside the mesh.
pub async fn bind_node(
    key: &SecretKey,
    addr: SocketAddr,
    mesh: Option<Ipv6Addr>,
    lookup: MemoryLookup,
    members: MembersOnly,
) -> Result<Endpoint, BindError> {
    bind_with(key, addr, lookup, Some((members, mesh))).await
}

async fn bind_with(
    key: &SecretKey,
    addr: SocketAddr,
    lookup: MemoryLookup,
    node: Option<(MembersOnly, Option<Ipv6Addr>)>,
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
        .clear_ip_transports();
    let builder = match node {
        Some((members, None)) => builder.hooks(members),
        // The mesh socket before the public one: iroh refuses a second
        // IPv6 socket after an unspecified one (`p2p = "[::]:…"`).
        Some((members, Some(mesh))) => builder
            .hooks(members)
            .bind_addr_with_opts(
                SocketAddr::new(mesh.into(), addr.port()),
                BindOpts::default()
                    .set_prefix_len(maki_protocol::mesh::NETWORK_PREFIX_LEN)
                    .set_is_default_route(false),
            )
            .map_err(|e| err(e.to_string()))?
            .path_selector(Arc::new(MeshFirst::new(mesh))),
        None => builder,
    };
    builder
        .bind_addr(addr)
        .map_err(|e| err(e.to_string()))?
        .bind()
        .await
        .map_err(|e| err(e.to_string()))
}

/// The mesh address the endpoint listens at, if any.
pub fn mesh_port(endpoint: &Endpoint, mesh: Ipv6Addr) -> Option<u16> {
    endpoint
        .bound_sockets()
        .into_iter()
        .find(|a| a.ip() == IpAddr::V6(mesh))
        .map(|a| a.port())
}

/// Path choice with the mesh on: a path inside the mesh beats any other,
/// whatever the round trips (iroh's own choice goes by round trip alone,
/// so it would as soon carry member traffic over the public addresses it
/// learns while punching holes). Among paths of one kind, the lowest round
/// trip, kept until another is clearly lower, so the choice does not flap.
#[derive(Debug)]
struct MeshFirst {
    /// The network's /48.
    prefix: [u8; 6],
}

/// How much lower another path's round trip must be to switch to it.
const SWITCH_AFTER: Duration = Duration::from_millis(5);

impl MeshFirst {
    fn new(mesh: Ipv6Addr) -> Self {
        let mut prefix = [0; 6];
        prefix.copy_from_slice(&mesh.octets()[..6]);
        Self { prefix }
    }

    /// 0: inside the mesh, 1: another IP path, 2: anything else.
    fn tier(&self, path: &FourTuple) -> u8 {
        match path {
            FourTuple::Ip { remote, .. } => match remote.ip() {
                IpAddr::V6(ip) if ip.octets()[..6] == self.prefix => 0,
                _ => 1,
            },
            _ => 2,
        }
    }
}

impl PathSelector for MeshFirst {
    fn select(&self, ctx: &PathSelectionContext<'_>) -> PathSelection {
        let current = ctx.current();
        let mut best = None;
        let mut current_key: Option<(u8, Duration)> = None;
        for path in ctx.paths() {
            let Some(stats) = path.stats() else {
                continue;
            };
            let key = (self.tier(path.network_path()), stats.rtt);
            if Some(path.network_path()) == current && current_key.is_none_or(|c| key < c) {
                current_key = Some(key);
            }
            if best.as_ref().is_none_or(|(_, b)| key < *b) {
                best = Some((path, key));
            }
        }
        let mut selection = PathSelection::none();
        if let Some((path, (tier, rtt))) = best {
            let keep = current_key.is_some_and(|(t, r)| t == tier && r < rtt + SWITCH_AFTER);
            if !keep {
                selection.set(&path);
            }
        }
        selection
    }
}
