//! The anti-entropy protocol (`maki/sync/1`) between member nodes.
//!
//! One bidirectional stream per sync, frames as in [`crate::rpc`]. The
//! initiator introduces itself (its own node record and the invite behind
//! it, so a node that just joined is recognised by peers that have not yet
//! heard of it), then both sides run range-based set reconciliation
//! (negentropy) over the ids of the records they hold: a sync costs
//! O(differences), not O(records). Finally each side sends the records the
//! other lacks. Every record is verified and authorised on arrival, as if
//! it came from a stranger.
//!
//! ```text
//! initiator                         responder
//!   Hello{format, network, me, invite} ─▶   checks network, membership
//!   Reconcile(initial)       ─▶
//!                            ◀─ Reconcile(answer)      (repeat)
//!   Records(they lack) + Want(ids)   ─▶
//!                            ◀─ Records(wanted)
//! ```

use serde::{Deserialize, Serialize};

use crate::{Domain, Hash, Invite, NodeRecord, Record, Signed};

/// ALPN of the sync protocol.
pub const SYNC_ALPN: &[u8] = b"maki/sync/1";

/// The sync message format this code speaks and the newest it reads.
pub const SYNC_FORMAT: u16 = 2;

/// Largest sync frame: a batch of records or a reconciliation message.
pub const MAX_SYNC_FRAME: usize = 16 * 1024 * 1024;

/// Records a sender puts in one frame, by their size on the wire: well
/// under [`MAX_SYNC_FRAME`], so a first sync with a large network (or a
/// batch of the largest records) travels as several frames, never as one
/// the receiver must refuse.
pub const RECORDS_PER_FRAME: usize = 4 * 1024 * 1024;

/// Largest reconciliation message a node sends (negentropy splits its
/// work into rounds to stay under it).
pub const RECONCILE_FRAME: u64 = 4 * 1024 * 1024;

/// One frame of a sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
// Sent a few times per sync; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum SyncMsg {
    /// First frame of the initiator.
    Hello {
        format: u16,
        network: Hash,
        /// The initiator's own record: it proves membership by itself.
        me: Signed<NodeRecord>,
        /// The invite `me` names (none for the founding node).
        invite: Option<Signed<Invite>>,
        /// [`holdings_digest`] of what the initiator last heard the
        /// responder serves (none: nothing yet).
        holds_seen: Option<Hash>,
    },
    /// The responder's answer to a hello it accepts: the same digest, of
    /// what it last heard the initiator serves.
    Welcome { holds_seen: Option<Hash> },
    /// A negentropy message.
    Reconcile(Vec<u8>),
    /// Records the receiver lacks, the ids the sender wants, and the
    /// versions the sender serves (so peers know whom to fetch from and
    /// `maki publish --wait` knows who is done), unless the receiver's
    /// digest says it has them already: a sync of two nodes that agree
    /// costs a few hundred bytes whatever the number of sites.
    Records {
        records: Vec<Record>,
        want: Vec<Hash>,
        holds: Option<Vec<Holding>>,
    },
    /// The sync cannot go on; nothing was changed by it.
    Refused(SyncError),
    /// Part of the records the receiver lacks, ahead of the `Records`
    /// frame that ends them: what does not fit one frame (see
    /// [`split_records`]). Last among the variants, so the messages of
    /// nodes that predate it keep their encoding.
    More(Vec<Record>),
}

/// Puts `records` in apply order (see [`apply_rank`]), so a receiver can
/// apply each part as it arrives, and splits them into parts of about
/// `max_bytes` on the wire (a record larger than that is a part alone).
/// Never empty: the last part ends the records, empty or not.
pub fn split_records(mut records: Vec<Record>, max_bytes: usize) -> Vec<Vec<Record>> {
    records.sort_by_key(apply_rank);
    let mut parts = vec![Vec::new()];
    let mut size = 0;
    for r in records {
        let len = r.wire_len();
        if size + len > max_bytes && size > 0 {
            parts.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(part) = parts.last_mut() {
            part.push(r);
        }
    }
    parts
}

/// What a sync compares instead of sending a node's whole holdings.
pub fn holdings_digest(holds: &[Holding]) -> Hash {
    Hash::of(&crate::codec::encode(&holds))
}

/// A site version a node holds completely and serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub site: Domain,
    pub seq: u64,
    pub manifest: Hash,
}

/// What a node serves, signed by it: spread over gossip so members know
/// whom to fetch from and `maki publish --wait` knows who is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    pub format: u16,
    pub node: crate::PublicKey,
    pub holds: Vec<Holding>,
    /// The node's clock in milliseconds: a newer announcement replaces an
    /// older one that arrives late.
    pub at: u64,
}

impl crate::Signable for Holdings {
    const CONTEXT: &'static [u8] = b"makiatto/holdings/v1";
}

/// What a node holds so far of a version it is still fetching, signed by
/// it: spread over gossip while it fetches, so the members fetching the
/// same version take blobs from each other (a swarm) instead of all from
/// the few that held it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub format: u16,
    pub node: crate::PublicKey,
    /// The version's manifest.
    pub manifest: crate::Hash,
    /// The version's pieces ([`crate::pieces`] of the manifest's blobs)
    /// it holds whole.
    pub have: crate::BlobSet,
    /// The pieces it is fetching now: the others had better take
    /// different ones from the members that hold the version whole, and
    /// these from it once it has them.
    pub getting: crate::BlobSet,
    /// The node's clock in milliseconds: a newer announcement replaces an
    /// older one that arrives late.
    pub at: u64,
}

/// What [`Progress::format`] is: 2, its bits index pieces
/// ([`crate::pieces`]); under 1 (never released) they indexed blobs. A
/// node reads only its own format: progress is a hint, and a misread one
/// would send fetches to the wrong members.
pub const PROGRESS_FORMAT: u16 = 2;

impl crate::Signable for Progress {
    const CONTEXT: &'static [u8] = b"makiatto/progress/v1";
}

/// The largest [`Progress::have`] (and `getting`) a gossip message carries
/// (bytes, one bit per piece): a version of more pieces is fetched
/// without it, from the members that hold it whole.
pub const MAX_PROGRESS_BYTES: usize = 3 << 9;

/// What a node's probes find of the other members' public services,
/// signed by it: spread over gossip, so each nameserver counts how many
/// members see a node down before it leaves the answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub format: u16,
    pub node: crate::PublicKey,
    /// Members whose HTTP edge failed its last probes from this node.
    pub http_down: Vec<crate::PublicKey>,
    /// Members whose nameserver failed its last probes from this node.
    pub dns_down: Vec<crate::PublicKey>,
    /// The node's clock in milliseconds: a newer report replaces an older
    /// one that arrives late.
    pub at: u64,
}

impl crate::Signable for Health {
    const CONTEXT: &'static [u8] = b"makiatto/health/v1";
}

/// The most members one [`Health`] report names per service: it must fit
/// a gossip message (4 KiB).
pub const MAX_HEALTH_DOWN: usize = 48;

/// ALPN of the members' gossip (iroh-gossip on our own name, so only
/// this protocol's handler, which checks membership, accepts it).
pub const GOSSIP_ALPN: &[u8] = b"maki/gossip/1";

/// One gossip message: a record, or a node's holdings. Bigger than the
/// gossip limit (4 KiB) is never sent: anti-entropy carries those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GossipMsg {
    Record(Record),
    Holdings(Signed<Holdings>),
    /// Added after the first release: an older node cannot decode it, and
    /// drops it.
    Progress(Signed<Progress>),
    Health(Signed<Health>),
}

/// Why a peer refused to sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    #[error("sync format {found} is newer than this node speaks (up to {SYNC_FORMAT}); upgrade it")]
    NewerFormat { found: u16 },
    #[error("the peer belongs to another network")]
    WrongNetwork,
    #[error("not a member of this network: {0}")]
    NotMember(String),
    #[error("the sync broke off: {0}")]
    Protocol(String),
}

/// The order in which a batch of records is applied: what authorises
/// others first (invites and sites before the nodes and heads they admit).
pub fn apply_rank(record: &Record) -> u8 {
    match record {
        Record::Invite(_) => 0,
        Record::Site(_) => 1,
        Record::Pin(_) | Record::Peer(_) | Record::Zone(_) | Record::Keys(_) | Record::Acme(_) => 2,
        Record::Revocation(_) => 3,
        Record::Node(_) => 4,
        // Signed by member nodes: after the node records that admit them.
        Record::Head(_)
        | Record::Cert(_)
        | Record::Account(_)
        | Record::Order(_)
        | Record::Tickets(_) => 5,
        #[cfg(feature = "next-format")]
        Record::Note(_) => 5,
        // Judged against nothing this node can read: after all the rest.
        Record::Unknown { .. } => 6,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn records_split_in_apply_order_under_the_limit() {
        use crate::{Head, SecretKey};
        let key = SecretKey::from_bytes(&[1; 32]);
        let head = |n: u64| {
            Record::Head(Signed::sign(
                &key,
                &Head {
                    site: Domain::new(&format!("s{n}.test")).expect("domain"),
                    seq: n,
                    manifest: Hash::of(&n.to_le_bytes()),
                },
            ))
        };
        let site = Record::Site(Signed::sign(
            &key,
            &crate::SiteRecord {
                format: 1,
                domain: Domain::new("a.test").expect("domain"),
                aliases: vec![],
                publishers: vec![],
                version: 1,
                removed: false,
                heads_after: 0,
            },
        ));
        let mut records: Vec<Record> = (0..100).map(head).collect();
        records.push(site.clone());
        let limit = head(0).wire_len() * 10;
        let parts = split_records(records, limit);
        assert!((10..=12).contains(&parts.len()), "{} parts", parts.len());
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 101);
        assert_eq!(parts[0][0], site, "what authorises first");
        for p in &parts {
            let bytes: usize = p.iter().map(Record::wire_len).sum();
            assert!(bytes <= limit);
            let wire = crate::codec::encode(p);
            assert!(wire.len() <= bytes + 8, "the estimate covers the encoding");
        }
        assert_eq!(split_records(Vec::new(), 10), vec![Vec::<Record>::new()]);
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = crate::rpc::decode_body::<SyncMsg>(&bytes);
            let _ = crate::rpc::decode_body::<GossipMsg>(&bytes);
        }
    }
}
