//! What the p2p subsystems (admin, join, sync, gossip, replication) share:
//! the node's identity and settings, the records, the members, what it
//! serves and how to announce a change. Built by `node.rs`, the
//! composition root; the edge gets a narrower handle (`edge::Sites`).

use std::sync::Arc;

use maki_protocol::{Domain, Genesis, Hash, Invite, NodeRecord, PublicKey, Record, Signed};
use tokio::sync::watch;

use crate::{
    config::Config,
    content::Content,
    directory::{Applied, Directory},
    live::Live,
    outbox::Outbox,
    peers::Peers,
    records::{ApplyError, Records},
    serving::Serving,
    state::State,
};

/// Shared by the subsystems; each uses only its part.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// This node's id (its key).
    pub id: PublicKey,
    pub genesis: Genesis,
    pub signed_genesis: Signed<Genesis>,
    pub network: Hash,
    pub state: Arc<State>,
    /// The replicated records: the one writer, and the directory readers see.
    pub records: Records,
    pub content: Arc<Content>,
    pub live: Arc<Live>,
    /// The one way the served head of a site changes (holds the head lock).
    pub serving: Serving,
    /// The members, and how to reach them.
    pub peers: Arc<Peers>,
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
}

impl Shared {
    pub fn is_admin(&self, key: &PublicKey) -> bool {
        self.genesis.admins.contains(key)
    }

    /// The records now.
    pub fn directory(&self) -> Arc<Directory> {
        self.records.directory()
    }

    /// Verifies, authorises and merges a record (from anywhere); on a
    /// change, refreshes the members and wakes replication.
    pub fn apply_record(&self, record: &Record) -> Result<Applied, ApplyError> {
        let applied = self.records.apply_one(record)?;
        if applied != Applied::Stale {
            self.after_change(matches!(record, Record::Node(_) | Record::Revocation(_)));
        }
        Ok(applied)
    }

    /// Merges a batch from a peer, in order, in one transaction.
    pub fn apply_batch(
        &self,
        batch: &[Record],
    ) -> Result<Vec<Result<Applied, crate::directory::Refused>>, crate::state::StateError> {
        let verdicts = self.records.apply(batch)?;
        let taken = |(_, v): &(&Record, &Result<Applied, _>)| {
            matches!(v, Ok(Applied::New | Applied::Replaced))
        };
        let mut changed = batch.iter().zip(&verdicts).filter(taken).peekable();
        if changed.peek().is_some() {
            let members =
                changed.any(|(r, _)| matches!(r, Record::Node(_) | Record::Revocation(_)));
            self.after_change(members);
        }
        Ok(verdicts)
    }

    fn after_change(&self, members: bool) {
        if members {
            self.refresh_peers();
        }
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

    /// The site's newest head: (seq, manifest). The record, or what this
    /// node serves when that is newer (a head committed before records).
    pub fn newest_head(&self, domain: &Domain) -> Option<(u64, Hash)> {
        let dir = self.directory();
        let record = dir.head(domain).map(|(h, _)| (h.seq, h.manifest));
        // What this node serves counts only if it is of the site as it is
        // now (not from before it was removed and added again).
        let after = dir.site(domain).map_or(0, |s| s.heads_after);
        let live = self
            .live
            .get(domain.as_str())
            .map(|l| (l.seq, l.manifest_hash))
            .filter(|(seq, _)| *seq > after);
        match (record, live) {
            (Some(r), Some(l)) => Some(if l.0 > r.0 { l } else { r }),
            (r, l) => r.or(l),
        }
    }

    /// This node's own record and the invite behind it: how it introduces
    /// itself to peers.
    pub fn introduction(&self) -> Option<(Signed<NodeRecord>, Option<Signed<Invite>>)> {
        self.directory().introduction(&self.id)
    }
}
