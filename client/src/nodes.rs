//! Member nodes: `maki nodes` (list, remove), `maki invite`, and waiting
//! until the members serve a new version (`maki publish --wait`).

use std::time::{Duration, Instant};

use maki_protocol::{
    Domain, Hash, Invite, InviteTicket, NodeTicket, PublicKey, RECORD_FORMAT, Revocation,
    SecretKey, Signed,
    rpc::{NodeInfo, Request, Response},
};

use crate::net::{Client, NetError, unexpected};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodesError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("no randomness for the invite's secret: {0}")]
    NoRandomness(String),
    #[error(
        "after {}s, {} of {total} nodes do not serve head {seq} yet: {}",
        waited.as_secs(), laggards.len(), laggards.join(", ")
    )]
    NotServed {
        waited: Duration,
        seq: u64,
        total: usize,
        /// Each as "id (region, health)".
        laggards: Vec<String>,
    },
}

/// The members, as the node asked sees them.
pub async fn list(client: &Client) -> Result<Vec<NodeInfo>, NetError> {
    match client.call(&Request::Nodes).await? {
        Response::Nodes(nodes) => Ok(nodes),
        other => Err(unexpected(other)),
    }
}

/// Revokes node `id`: every member refuses it from then on.
pub async fn remove(client: &Client, key: &SecretKey, id: PublicKey) -> Result<(), NetError> {
    let record = Revocation {
        format: RECORD_FORMAT,
        node: id,
        version: crate::now_millis(),
    };
    client
        .call(&Request::NodeRemove {
            record: Signed::sign(key, &record),
        })
        .await?;
    Ok(())
}

/// A one-time invite, redeemable at the node `issuer` names for
/// `expires` seconds.
pub async fn invite(
    client: &Client,
    key: &SecretKey,
    issuer: NodeTicket,
    expires: u64,
) -> Result<InviteTicket, NodesError> {
    let Response::Network { network, node } = client.call(&Request::Network).await? else {
        return Err(NetError::BadResponse("not the network's id".into()).into());
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| NodesError::NoRandomness(e.to_string()))?;
    let invite = Invite {
        format: RECORD_FORMAT,
        network,
        secret_hash: Hash::of(&secret),
        expires: crate::publish::now() + expires,
        issuer: node,
        key: maki_protocol::invite_key(&secret).public(),
    };
    client
        .call(&Request::Invite {
            invite: Signed::sign(key, &invite),
        })
        .await?;
    Ok(InviteTicket {
        network,
        secret,
        issuer,
    })
}

/// Polls the node for its members' holdings until each that should hold
/// `site` (its pin admits it) serves head `seq`; calls `served` for each
/// as it gets there, with the time since the start. Returns how many
/// nodes serve it; names the laggards after `timeout`.
pub async fn wait_until_served(
    client: &Client,
    site: &Domain,
    seq: u64,
    timeout: Duration,
    mut served: impl FnMut(&NodeInfo, Duration),
) -> Result<usize, NodesError> {
    use std::collections::BTreeSet;
    let start = Instant::now();
    let mut done = BTreeSet::new();
    let regions = crate::sites::info(client, site).await?.regions;
    loop {
        let nodes: Vec<_> = list(client)
            .await?
            .into_iter()
            .filter(|n| {
                regions.is_empty() || n.region.as_ref().is_some_and(|r| regions.contains(r))
            })
            .collect();
        let mut waiting = Vec::new();
        for n in &nodes {
            let holds = n.holds.iter().any(|h| &h.site == site && h.seq >= seq);
            if holds && done.insert(n.id) {
                served(n, start.elapsed());
            } else if !holds {
                waiting.push(n);
            }
        }
        if waiting.is_empty() {
            return Ok(nodes.len());
        }
        if start.elapsed() >= timeout {
            return Err(NodesError::NotServed {
                waited: timeout,
                seq,
                total: nodes.len(),
                laggards: waiting
                    .iter()
                    .map(|n| {
                        format!(
                            "{} ({}, {})",
                            n.id.fmt_short(),
                            n.region.as_deref().unwrap_or("-"),
                            n.health
                        )
                    })
                    .collect(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
