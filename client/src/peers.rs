//! External WireGuard peers: `maki peer add` lets a laptop or a database
//! host into the mesh and prints its wg-quick configuration; `maki peer
//! remove` takes it out.

use std::{fmt::Write, net::SocketAddr};

use maki_protocol::{
    PeerRecord, RECORD_FORMAT, SecretKey, Signed, mesh,
    rpc::{NodeInfo, PeerInfo, Request, Response},
};

use crate::net::{Client, NetError, unexpected};

/// Adds (or changes) the external peer `name` with WireGuard public key
/// `key`; returns its wg-quick configuration, to fill in with its private
/// key.
pub async fn add(
    client: &Client,
    admin: &SecretKey,
    name: &str,
    key: [u8; 32],
    endpoint: Option<SocketAddr>,
) -> Result<String, NetError> {
    let record = PeerRecord {
        format: RECORD_FORMAT,
        name: name.to_owned(),
        key,
        endpoint,
        version: crate::now_millis(),
        removed: false,
    };
    set(client, admin, record).await?;
    let Response::Network { network, .. } = client.call(&Request::Network).await? else {
        return Err(NetError::BadResponse("not the network's id".into()));
    };
    let nodes = crate::nodes::list(client).await?;
    Ok(wg_quick(
        name,
        &mesh::external_addr(&network, &key),
        endpoint,
        &nodes,
    ))
}

/// The external peers.
pub async fn list(client: &Client) -> Result<Vec<PeerInfo>, NetError> {
    match client.call(&Request::Peers).await? {
        Response::Peers(peers) => Ok(peers),
        other => Err(unexpected(other)),
    }
}

/// Removes the external peer `name` from every member's mesh.
pub async fn remove(client: &Client, admin: &SecretKey, name: &str) -> Result<(), NetError> {
    let record = PeerRecord {
        format: RECORD_FORMAT,
        name: name.to_owned(),
        key: [0; 32],
        endpoint: None,
        version: crate::now_millis(),
        removed: true,
    };
    set(client, admin, record).await
}

async fn set(client: &Client, admin: &SecretKey, record: PeerRecord) -> Result<(), NetError> {
    match client
        .call(&Request::PeerSet {
            record: Signed::sign(admin, &record),
        })
        .await?
    {
        Response::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// The wg-quick file for an external peer at `addr`: one `[Peer]` per
/// member that runs the mesh.
pub fn wg_quick(
    name: &str,
    addr: &std::net::Ipv6Addr,
    endpoint: Option<SocketAddr>,
    nodes: &[NodeInfo],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# wg-quick configuration for {name}: save it as /etc/wireguard/maki.conf,\n\
         # put this machine's private key in, then: wg-quick up maki"
    );
    let _ = writeln!(out, "[Interface]");
    let _ = writeln!(out, "PrivateKey = <the private key of the key you added>");
    let _ = writeln!(out, "Address = {addr}/128");
    if let Some(e) = endpoint {
        let _ = writeln!(out, "ListenPort = {}", e.port());
    }
    let mut meshed = 0;
    for n in nodes {
        let Some(m) = &n.mesh else {
            continue;
        };
        meshed += 1;
        let _ = writeln!(out, "\n[Peer]\n# node {}", n.id.fmt_short());
        let _ = writeln!(out, "PublicKey = {}", m.key);
        if let Some(e) = m.endpoint {
            let _ = writeln!(out, "Endpoint = {e}");
        }
        let _ = writeln!(out, "AllowedIPs = {}/128", m.addr);
        let _ = writeln!(out, "PersistentKeepalive = 25");
    }
    if meshed == 0 {
        let _ = writeln!(
            out,
            "\n# No member runs the mesh yet (mesh = \"off\" everywhere): nothing to reach."
        );
    }
    out
}
