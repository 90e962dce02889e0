//! What this node tells the network over gossip: records made here, and
//! its holdings, fetch progress and health reports, signed. The only holder of the node's
//! key after start, and it signs nothing but those.

use std::sync::Arc;

use maki_protocol::{
    Hash, PublicKey, RECORD_FORMAT, Record, SecretKey, Signed,
    rpc::BlobSet,
    sync::{GossipMsg, Holdings, MAX_PROGRESS_BYTES, Progress},
};
use tokio::sync::mpsc;
use tracing::debug;

use crate::live::Live;

/// See the module docs. The gossip task drains the other end.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<GossipMsg>,
    key: SecretKey,
    live: Arc<Live>,
}

impl Outbox {
    pub fn new(tx: mpsc::Sender<GossipMsg>, key: SecretKey, live: Arc<Live>) -> Self {
        Self { tx, key, live }
    }

    pub fn id(&self) -> PublicKey {
        self.key.public()
    }

    /// Broadcasts a record made here.
    pub fn record(&self, record: Record) {
        self.send(GossipMsg::Record(record));
    }

    /// Broadcasts what this node serves now.
    pub fn holdings(&self) {
        self.send(self.signed_holdings());
    }

    /// Broadcasts what this node holds so far of the version `manifest`
    /// it fetches, and what it is fetching now; nothing for a version of
    /// too many blobs to say so in one message.
    pub fn progress(&self, manifest: Hash, have: BlobSet, getting: BlobSet) {
        if have.len_bytes() > MAX_PROGRESS_BYTES {
            return;
        }
        let body = Progress {
            format: maki_protocol::sync::PROGRESS_FORMAT,
            node: self.id(),
            manifest,
            have,
            getting,
            at: crate::now_millis(),
        };
        self.send(GossipMsg::Progress(Signed::sign(&self.key, &body)));
    }

    /// This node's holdings, signed, as a gossip message.
    pub fn signed_holdings(&self) -> GossipMsg {
        let body = Holdings {
            format: RECORD_FORMAT,
            node: self.id(),
            holds: self.live.holdings(),
            at: crate::now_millis(),
        };
        GossipMsg::Holdings(Signed::sign(&self.key, &body))
    }

    /// Broadcasts what this node's probes find of the others.
    pub fn health(&self, seen: &crate::health::verdict::Seen) {
        let body = maki_protocol::sync::Health {
            format: 1,
            node: self.id(),
            http_down: seen.http_down.clone(),
            dns_down: seen.dns_down.clone(),
            at: crate::now_millis(),
        };
        self.send(GossipMsg::Health(Signed::sign(&self.key, &body)));
    }

    /// When the queue is full the message is dropped: anti-entropy
    /// carries it instead.
    fn send(&self, msg: GossipMsg) {
        if self.tx.try_send(msg).is_err() {
            debug!("gossip queue full; leaving this one to sync");
        }
    }
}
