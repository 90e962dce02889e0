//! The p2p endpoints. The public one, an iroh QUIC socket, carries every
//! protocol a node speaks with admins, joiners and members (each by its
//! ALPN); with the mesh on, a second one bound to the node's mesh address
//! carries the members-only protocols with the members reached over it.

use std::{
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use iroh::{
    Endpoint, RelayMode,
    address_lookup::MemoryLookup,
    endpoint::{
        BindOpts, IdleTimeout, MtuDiscoveryConfig, PortmapperConfig, QuicTransportConfig, presets,
    },
};
use maki_protocol::{
    PublicKey, SecretKey,
    rpc::{ADMIN_ALPN, JOIN_ALPN},
    sync::{GOSSIP_ALPN, SYNC_ALPN},
};

use tracing::{debug, warn};

use crate::peers::{MembersOnly, Peers};

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
    bind_with(key, Socket::Public(addr), lookup, None).await
}

/// A running node's public endpoint: [`bind`], with the members-only
/// protocols guarded by `members` (the lookup is filled from the node
/// records).
pub async fn bind_node(
    key: &SecretKey,
    addr: SocketAddr,
    lookup: MemoryLookup,
    members: MembersOnly,
) -> Result<Endpoint, BindError> {
    bind_with(key, Socket::Public(addr), lookup, Some(members)).await
}

/// A running node's mesh endpoint: bound to its mesh address alone, it
/// can send only inside the network's /48, so it learns no address outside
/// the mesh and tells none. It speaks the members-only protocols, with the
/// members this node reaches over the mesh, and admin, with the mesh's
/// external peers.
///
/// At `port` (the p2p port) if that is free there, else at `port + 1` (a
/// public endpoint bound to `[::]` holds the p2p port at every address),
/// else anywhere, with a warning. Members learn it from the node record;
/// a person writing a ticket for the mesh address needs it predictable.
pub async fn bind_mesh(
    key: &SecretKey,
    mesh: Ipv6Addr,
    port: u16,
    lookup: MemoryLookup,
    members: MembersOnly,
) -> Result<Endpoint, BindError> {
    let at = |port| Socket::Mesh(SocketAddr::new(mesh.into(), port));
    let mut tries = vec![port];
    if port != 0 {
        tries.extend(port.checked_add(1));
        tries.push(0);
    }
    let mut last = None;
    for p in tries {
        match bind_with(key, at(p), lookup.clone(), Some(members.clone())).await {
            Ok(endpoint) => {
                if p == 0 && port != 0 {
                    warn!(
                        p2p = port,
                        at = ?endpoint.bound_sockets(),
                        "the p2p port and the one after it are taken at the mesh address; members find this one in the node record, a ticket for the mesh address must name it"
                    );
                }
                return Ok(endpoint);
            }
            Err(error) => {
                debug!(%error, "cannot bind the mesh endpoint there");
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or(BindError {
        addr: SocketAddr::new(mesh.into(), port),
        message: "no port to try".into(),
    }))
}

/// The largest UDP payload inside the mesh: maki0's MTU less the IPv6
/// and UDP headers.
const MESH_UDP_PAYLOAD: u16 = crate::mesh::MTU as u16 - 40 - 8;

/// Where an endpoint listens.
#[derive(Debug, Clone, Copy)]
enum Socket {
    /// Anywhere: it sends wherever the host routes.
    Public(SocketAddr),
    /// At a mesh address: it sends inside the network's /48 only.
    Mesh(SocketAddr),
}

async fn bind_with(
    key: &SecretKey,
    socket: Socket,
    lookup: MemoryLookup,
    members: Option<MembersOnly>,
) -> Result<Endpoint, BindError> {
    let (Socket::Public(addr) | Socket::Mesh(addr)) = socket;
    let err = |message: String| BindError { addr, message };
    // No relays, no n0 discovery, no UPnP: peers come from our own records.
    // A peer that vanishes (a killed CLI mid-publish) is noticed within
    // the idle timeout, so its abandoned publish is cleaned up promptly.
    let mut transport = QuicTransportConfig::builder()
        .keep_alive_interval(KEEP_ALIVE)
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    // No QUIC ACK-frequency extension: with it, noq-proto 1.4.0 panicked
    // encoding an ACK_FREQUENCY frame into a packet without room
    // (`bytes` "advance out of bounds", in a_wireguard_outage_heals), and
    // the node's connections with it.
    if let Socket::Mesh(_) = socket {
        // The path's MTU is maki0's: start there rather than at 1200 and
        // probe up (black-hole detection still backs off if it is wrong).
        transport = transport
            .initial_mtu(MESH_UDP_PAYLOAD)
            .mtu_discovery_config(Some({
                // Nothing larger passes maki0: no probes above it.
                let mut mtu = MtuDiscoveryConfig::default();
                mtu.upper_bound(MESH_UDP_PAYLOAD);
                mtu
            }));
    }
    let transport = transport.build();
    let mut alpns = vec![
        ADMIN_ALPN.to_vec(),
        SYNC_ALPN.to_vec(),
        GOSSIP_ALPN.to_vec(),
        iroh_blobs::ALPN.to_vec(),
    ];
    // Joiners are not in the mesh yet.
    if let Socket::Public(_) = socket {
        alpns.push(JOIN_ALPN.to_vec());
    }
    let mut builder = Endpoint::builder(presets::Minimal)
        .transport_config(transport)
        .secret_key(iroh::SecretKey::from_bytes(&key.to_bytes()))
        .relay_mode(RelayMode::Disabled)
        .portmapper_config(PortmapperConfig::Disabled)
        .alpns(alpns)
        .address_lookup(lookup)
        .clear_ip_transports();
    if let Some(members) = members {
        builder = builder.hooks(members);
    }
    let builder = match socket {
        Socket::Public(addr) => builder.bind_addr(addr),
        Socket::Mesh(addr) => builder.bind_addr_with_opts(
            addr,
            BindOpts::default()
                .set_prefix_len(maki_protocol::mesh::NETWORK_PREFIX_LEN)
                .set_is_default_route(false),
        ),
    };
    builder
        .map_err(|e| err(e.to_string()))?
        .bind()
        .await
        .map_err(|e| err(e.to_string()))
}

/// Where a node meets its members: the public endpoint, and the mesh
/// endpoint when it runs the mesh. A member is reached through one of
/// them, never both.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub public: Endpoint,
    pub mesh: Option<Endpoint>,
    peers: Arc<Peers>,
}

impl Endpoints {
    pub fn new(public: Endpoint, mesh: Option<Endpoint>, peers: Arc<Peers>) -> Self {
        Self {
            public,
            mesh,
            peers,
        }
    }

    /// The endpoint that talks with member `key`.
    pub fn to(&self, key: &PublicKey) -> &Endpoint {
        match &self.mesh {
            Some(mesh) if self.peers.mesh_addr(key).is_some() => mesh,
            _ => &self.public,
        }
    }
}

/// The port the mesh endpoint listens at.
pub fn mesh_port(endpoint: &Endpoint) -> Option<u16> {
    endpoint.bound_sockets().first().map(|a| a.port())
}
