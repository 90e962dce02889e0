//! The membership handle: the records and the members they make, what
//! this node serves, and how a change is announced. All that sync and
//! gossip get; replication and admin get it inside [`crate::shared::Shared`].
//! No secret key, no content store, no say over what is served.

use std::sync::Arc;

use maki_protocol::{Hash, Invite, NodeRecord, PublicKey, Record, Signed};
use tokio::sync::watch;

use crate::{
    directory::{Applied, Directory, Refused},
    live::Live,
    outbox::Outbox,
    peers::Peers,
    records::{ApplyError, Records},
    state::StateError,
};

/// See the module docs.
#[derive(Debug)]
pub struct Members {
    /// This node's id (its key).
    pub id: PublicKey,
    pub network: Hash,
    /// The replicated records: the one writer, and the directory readers see.
    pub records: Records,
    /// The members, and how to reach them.
    pub peers: Arc<Peers>,
    /// What this node serves (read only here: its holdings).
    pub live: Arc<Live>,
    /// Bumped whenever what a member serves changes (replication may then
    /// drop a site pinned elsewhere). Record changes come from the
    /// directory's own watch (`records.subscribe()`).
    pub served_elsewhere: watch::Sender<u64>,
    /// Woken to sync with a few members now, not at the next round: after
    /// a change made here, or when gossip lagged.
    pub sync_soon: tokio::sync::Notify,
    /// What this node tells the network over gossip (it alone holds the
    /// node's key, and signs only holdings with it).
    pub outbox: Outbox,
    /// What the members' probes find of each other's public services.
    pub health: crate::health::verdict::Health,
}

impl Members {
    /// The records now.
    pub fn directory(&self) -> Arc<Directory> {
        self.records.directory()
    }

    /// The members of `dir` whose HTTP the observers' quorum finds down.
    pub fn http_down(&self, dir: &Directory) -> std::collections::HashSet<PublicKey> {
        let ids: Vec<PublicKey> = dir.members().map(|(n, _)| n.id).collect();
        self.health
            .down(crate::health::verdict::Service::Http, &ids)
    }

    /// Verifies, authorises and merges a record (from anywhere); on a
    /// change of membership, refreshes the members.
    pub fn apply_record(&self, record: &Record) -> Result<Applied, ApplyError> {
        let applied = self.records.apply_one(record)?;
        if applied != Applied::Stale && changes_members(record) {
            self.refresh_peers();
        }
        Ok(applied)
    }

    /// Merges a batch from a peer, in order, in one transaction.
    pub fn apply_batch(
        &self,
        batch: &[Record],
    ) -> Result<Vec<Result<Applied, Refused>>, StateError> {
        let verdicts = self.records.apply(batch)?;
        let members = batch
            .iter()
            .zip(&verdicts)
            .any(|(r, v)| matches!(v, Ok(Applied::New | Applied::Replaced)) && changes_members(r));
        if members {
            self.refresh_peers();
        }
        Ok(verdicts)
    }

    /// [`Self::apply_record`] for a change made here: also broadcast over
    /// gossip and pushed to a few members by sync at once.
    pub fn apply_local(&self, record: Record) -> Result<Applied, ApplyError> {
        let applied = self.apply_record(&record)?;
        if applied != Applied::Stale {
            self.outbox.record(record);
            self.sync_soon.notify_one();
        }
        Ok(applied)
    }

    /// What a member serves changed: replication may now drop a site
    /// pinned elsewhere.
    pub fn holdings_changed(&self) {
        self.served_elsewhere.send_modify(|g| *g += 1);
    }

    pub fn refresh_peers(&self) {
        self.peers.refresh(&self.directory());
    }

    /// This node's own record and the invite behind it: how it introduces
    /// itself to peers.
    pub fn introduction(&self) -> Option<(Signed<NodeRecord>, Option<Signed<Invite>>)> {
        self.directory().introduction(&self.id)
    }
}

/// Whether `record` changes who is in the mesh: a member, or an external
/// WireGuard peer.
fn changes_members(record: &Record) -> bool {
    matches!(
        record,
        Record::Node(_) | Record::Revocation(_) | Record::Peer(_)
    )
}
