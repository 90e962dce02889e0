//! Push: records and holdings spread over iroh-gossip (a HyParView swarm
//! with Plumtree broadcast), one topic per network, members only.
//!
//! A change made at a node is broadcast once and reaches every member in a
//! few hops, so its origin pays O(1) instead of a sync with every member.
//! Gossip is best effort: a message can be lost (a node down, the swarm
//! still forming, a lagging receiver). Anti-entropy (`sync`) repairs that,
//! so nothing here needs to be reliable, only fast.

use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use iroh::{
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_gossip::{
    api::{Event, GossipReceiver, GossipSender},
    net::Gossip,
    proto::TopicId,
};
use maki_protocol::{PublicKey, sync::GossipMsg};
use n0_future::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::members::Members;

/// Messages waiting to be broadcast; more are dropped (sync repairs).
pub const OUTBOX: usize = 64;

/// The gossip protocol handler, refusing connections from non-members.
#[derive(Debug, Clone)]
pub struct MemberGossip {
    pub gossip: Gossip,
    pub members: Arc<Members>,
}

impl ProtocolHandler for MemberGossip {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        // Kept, so it is closed if the member is removed.
        let member = PublicKey::from_bytes(*conn.remote_id().as_bytes())
            .is_ok_and(|k| self.members.peers.hold_link(&k, &conn));
        if !member {
            conn.close(1u32.into(), b"not a member");
            return Ok(());
        }
        self.gossip
            .handle_connection(conn)
            .await
            .map_err(AcceptError::from_err)
    }

    async fn shutdown(&self) {
        if let Err(error) = self.gossip.shutdown().await {
            debug!(%error, "gossip did not shut down cleanly");
        }
    }
}

fn iroh_ids(keys: impl IntoIterator<Item = PublicKey>) -> Vec<iroh::EndpointId> {
    keys.into_iter()
        .filter_map(|k| iroh::PublicKey::from_bytes(k.as_bytes()).ok())
        .collect()
}

/// Runs until cancelled: joins the network's topic through the known
/// members, broadcasts what `outbox` brings, applies what arrives.
pub async fn run(
    members: Arc<Members>,
    gossip: Gossip,
    mut outbox: mpsc::Receiver<GossipMsg>,
    mut records: watch::Receiver<Arc<crate::directory::Directory>>,
    cancel: CancellationToken,
) {
    let topic = TopicId::from_bytes(*members.network.as_bytes());
    let mut known: HashSet<PublicKey> = members.peers.others().into_iter().collect();
    let sub = match gossip
        .subscribe(topic, iroh_ids(known.iter().copied()))
        .await
    {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "cannot join the gossip topic; relying on sync alone");
            return;
        }
    };
    let (sender, mut receiver): (GossipSender, GossipReceiver) = sub.split();
    let limit = gossip.max_message_size();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            msg = outbox.recv() => {
                let Some(msg) = msg else { break };
                let body = Bytes::from(maki_protocol::rpc::encode_body(&msg));
                if body.len() > limit {
                    debug!(len = body.len(), "too big to gossip; sync will carry it");
                    continue;
                }
                if let Err(error) = sender.broadcast(body).await {
                    debug!(%error, "gossip broadcast failed");
                }
            }
            event = receiver.next() => match event {
                Some(Ok(Event::Received(m))) => {
                    // A connection opened before its peer was revoked may
                    // still deliver: only members' deliveries count.
                    let from = PublicKey::from_bytes(*m.delivered_from.as_bytes());
                    if let Ok(k) = from && members.peers.is_member(&k) {
                        // A delivery is a sign of life, as a sync is.
                        members.peers.seen(&k, None);
                        receive(&members, &m.content);
                    }
                }
                Some(Ok(Event::Lagged)) => {
                    // We missed messages: a sync round fetches them.
                    members.sync_soon.notify_one();
                }
                Some(Ok(Event::NeighborUp(id))) => debug!(peer = %id.fmt_short(), "gossip neighbour up"),
                Some(Ok(Event::NeighborDown(id))) => debug!(peer = %id.fmt_short(), "gossip neighbour down"),
                Some(Err(error)) => debug!(%error, "gossip receive error"),
                None => break,
            },
            res = records.changed() => {
                if res.is_err() { break }
                // New members: tell the swarm about them.
                let now: HashSet<PublicKey> = members.peers.others().into_iter().collect();
                let new: Vec<PublicKey> = now.difference(&known).copied().collect();
                known = now;
                if !new.is_empty() && let Err(error) = sender.join_peers(iroh_ids(new)).await {
                    debug!(%error, "could not add peers to gossip");
                }
            }
        }
    }
}

fn receive(members: &Members, content: &[u8]) {
    let msg = match maki_protocol::rpc::decode_body::<GossipMsg>(content) {
        Ok(m) => m,
        Err(error) => {
            debug!(%error, "undecodable gossip (a newer node?)");
            return;
        }
    };
    match msg {
        GossipMsg::Record(record) => {
            if let Err(error) = members.apply_record(&record) {
                warn!(%error, "dropped a gossiped record");
            }
        }
        GossipMsg::Holdings(signed) => {
            let Ok(h) = signed.verify() else {
                debug!("gossiped holdings with a bad signature");
                return;
            };
            if signed.signer() == h.node
                && members.peers.is_member(&h.node)
                && members.peers.set_holds_at(&h.node, h.holds, h.at)
            {
                members.holdings_changed();
            }
        }
        GossipMsg::Progress(signed) => {
            let Ok(p) = signed.verify() else {
                debug!("gossiped progress with a bad signature");
                return;
            };
            if signed.signer() == p.node && p.format == maki_protocol::sync::PROGRESS_FORMAT {
                let node = p.node;
                members.peers.set_progress(&node, p);
            }
        }
        _ => {}
    }
}
