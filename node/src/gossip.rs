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

/// The gossip a node takes part in: over the public endpoint, with the
/// members it does not reach over the mesh, and with the mesh on, over the
/// mesh endpoint with the others. A node broadcasts in both. Where some
/// members run no mesh, every node is in the public swarm (the meshed ones
/// through their links to those members), so it alone reaches everyone;
/// the mesh swarm carries the same among the meshed members. No node
/// passes messages on from one swarm to the other.
#[derive(Debug, Clone)]
pub struct Swarms {
    pub public: Gossip,
    pub mesh: Option<Gossip>,
}

/// One swarm's side of the loop.
struct Swarm {
    sender: GossipSender,
    receiver: GossipReceiver,
    /// The members it was told about.
    known: HashSet<PublicKey>,
}

impl Swarm {
    async fn join(gossip: &Gossip, topic: TopicId, known: HashSet<PublicKey>) -> Option<Self> {
        match gossip
            .subscribe(topic, iroh_ids(known.iter().copied()))
            .await
        {
            Ok(sub) => {
                let (sender, receiver) = sub.split();
                Some(Self {
                    sender,
                    receiver,
                    known,
                })
            }
            Err(error) => {
                warn!(%error, "cannot join the gossip topic; relying on sync alone");
                None
            }
        }
    }

    /// New members: tell the swarm about them.
    async fn meet(&mut self, now: HashSet<PublicKey>) {
        let new: Vec<PublicKey> = now.difference(&self.known).copied().collect();
        self.known = now;
        if !new.is_empty()
            && let Err(error) = self.sender.join_peers(iroh_ids(new)).await
        {
            debug!(%error, "could not add peers to gossip");
        }
    }

    async fn broadcast(&self, body: Bytes) {
        if let Err(error) = self.sender.broadcast(body).await {
            debug!(%error, "gossip broadcast failed");
        }
    }
}

/// The other members, split by the endpoint that reaches them: (public,
/// mesh).
fn split(members: &Members, meshed: bool) -> (HashSet<PublicKey>, HashSet<PublicKey>) {
    members
        .peers
        .others()
        .into_iter()
        .partition(|k| !meshed || members.peers.mesh_addr(k).is_none())
}

async fn next(swarm: &mut Option<Swarm>) -> Option<Result<Event, iroh_gossip::api::ApiError>> {
    match swarm {
        Some(s) => s.receiver.next().await,
        None => std::future::pending().await,
    }
}

/// Runs until cancelled: joins the network's topic through the known
/// members, broadcasts what `outbox` brings, applies what arrives.
pub async fn run(
    members: Arc<Members>,
    swarms: Swarms,
    mut outbox: mpsc::Receiver<GossipMsg>,
    mut records: watch::Receiver<Arc<crate::directory::Directory>>,
    cancel: CancellationToken,
) {
    let topic = TopicId::from_bytes(*members.network.as_bytes());
    let (public_peers, mesh_peers) = split(&members, swarms.mesh.is_some());
    let mut public = Swarm::join(&swarms.public, topic, public_peers).await;
    let mut mesh = match &swarms.mesh {
        Some(g) => Swarm::join(g, topic, mesh_peers).await,
        None => None,
    };
    if public.is_none() && mesh.is_none() {
        return;
    }
    let limit = swarms.public.max_message_size();
    loop {
        let (event, from_mesh) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            msg = outbox.recv() => {
                let Some(msg) = msg else { break };
                let body = Bytes::from(maki_protocol::rpc::encode_body(&msg));
                if body.len() > limit {
                    debug!(len = body.len(), "too big to gossip; sync will carry it");
                    continue;
                }
                for s in [&public, &mesh].into_iter().flatten() {
                    s.broadcast(body.clone()).await;
                }
                continue;
            }
            event = next(&mut public) => (event, false),
            event = next(&mut mesh) => (event, true),
            res = records.changed() => {
                if res.is_err() { break }
                let (public_peers, mesh_peers) = split(&members, swarms.mesh.is_some());
                if let Some(s) = &mut public { s.meet(public_peers).await }
                if let Some(s) = &mut mesh { s.meet(mesh_peers).await }
                continue;
            }
        };
        match event {
            Some(Ok(Event::Received(m))) => {
                // A connection opened before its peer was revoked may
                // still deliver: only members' deliveries count.
                let from = PublicKey::from_bytes(*m.delivered_from.as_bytes());
                let Ok(k) = from else { continue };
                if !members.peers.is_member(&k) {
                    continue;
                }
                // A delivery is a sign of life, as a sync is.
                members.peers.seen(&k, None);
                receive(&members, &m.content);
            }
            Some(Ok(Event::Lagged)) => {
                // We missed messages: a sync round fetches them.
                members.sync_soon.notify_one();
            }
            Some(Ok(Event::NeighborUp(id))) => {
                debug!(peer = %id.fmt_short(), mesh = from_mesh, "gossip neighbour up")
            }
            Some(Ok(Event::NeighborDown(id))) => {
                debug!(peer = %id.fmt_short(), mesh = from_mesh, "gossip neighbour down")
            }
            Some(Err(error)) => debug!(%error, "gossip receive error"),
            None => break,
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
        GossipMsg::Health(signed) => {
            let Ok(h) = signed.verify() else {
                debug!("gossiped health with a bad signature");
                return;
            };
            if signed.signer() == h.node && h.format == 1 && members.peers.is_member(&h.node) {
                members.health.received(h);
            }
        }
        _ => {}
    }
}
