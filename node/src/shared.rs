//! What replication and admin share: the membership handle, the node's
//! settings and genesis, the store of what it serves, and the one way to
//! change what is served. Built by `node.rs`, the composition root; sync
//! and gossip get only [`Members`], join and the edge narrower handles
//! still.

use std::sync::Arc;

use maki_protocol::{Domain, Genesis, Hash, PublicKey, Signed};

use crate::{config::Config, content::Content, members::Members, serving::Serving, state::State};

/// See the module docs.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub genesis: Genesis,
    pub signed_genesis: Signed<Genesis>,
    pub state: Arc<State>,
    pub content: Arc<Content>,
    /// The one way the served head of a site changes (holds the head lock).
    pub serving: Serving,
    pub members: Arc<Members>,
    /// The zone signers of this node, and its sealing secret with them.
    pub keyring: Arc<crate::dns::sign::Keyring>,
}

impl Shared {
    pub fn is_admin(&self, key: &PublicKey) -> bool {
        self.genesis.admins.contains(key)
    }

    /// The site's newest head: (seq, manifest). The record, or what this
    /// node serves when that is newer (a head committed before records).
    pub fn newest_head(&self, domain: &Domain) -> Option<(u64, Hash)> {
        let dir = self.members.directory();
        let record = dir.head(domain).map(|(h, _)| (h.seq, h.manifest));
        // What this node serves counts only if it is of the site as it is
        // now (not from before it was removed and added again).
        let after = dir.site(domain).map_or(0, |s| s.heads_after);
        let live = self
            .members
            .live
            .get(domain.as_str())
            .map(|l| (l.seq, l.manifest_hash))
            .filter(|(seq, _)| *seq > after);
        match (record, live) {
            (Some(r), Some(l)) => Some(if l.0 > r.0 { l } else { r }),
            (r, l) => r.or(l),
        }
    }
}
