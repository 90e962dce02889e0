//! Anti-entropy: the `maki/sync/1` server and client, and the task that
//! decides when to sync (see `maki_protocol::sync` for the exchange).
//!
//! A node syncs with every member at start and with each member it learns
//! of later, with a few random members
//! right after a change made here (beside gossiping it), and every
//! `sync_interval` with a few random members, which repairs whatever a
//! partition, a restart or a lost gossip message left behind.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use iroh::{
    endpoint::{Connection, RecvStream, SendStream},
    protocol::{AcceptError, ProtocolHandler},
};
use maki_protocol::{
    Hash, PublicKey, Record,
    sync::{
        Holding, MAX_SYNC_FRAME, RECONCILE_FRAME, RECORDS_PER_FRAME, SYNC_ALPN, SYNC_FORMAT,
        SyncError, SyncMsg, apply_rank, holdings_digest, split_records,
    },
};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{directory::Directory, endpoint::Endpoints, frame, members::Members};

/// Peers picked at random on each periodic round.
const FANOUT: usize = 3;

/// The most records a sync pushes to the peer it called: what that peer
/// lacks beyond this, it pulls in its own syncs. A change made here is a
/// few records; only a peer far behind (new, or back after long) lacks
/// more, and when every member learns of a new one at once, each pushing
/// it all of the records would send it the whole state once per member.
pub const PUSH_AT_MOST: usize = 1000;

/// Syncs served at once; more are refused until one ends.
const MAX_INBOUND: usize = 32;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncFailure {
    #[error("cannot reach the peer: {0}")]
    Connect(String),
    #[error("the peer refused: {0}")]
    Refused(#[from] SyncError),
    #[error("frame: {0}")]
    Frame(#[from] crate::frame::FrameError),
    #[error("stream: {0}")]
    Stream(String),
    #[error("reconciliation: {0}")]
    Reconcile(String),
    #[error("the peer sent an unexpected message")]
    Unexpected,
    #[error("the peer made no progress within sync_timeout")]
    Stalled,
    #[error("took longer than {LONGEST_SYNC} × sync_timeout")]
    Timeout,
    #[error("this node has no record of itself yet")]
    NoSelf,
    #[error("no longer a member (removed by an admin)")]
    Removed,
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

fn stream_err(e: impl std::fmt::Display) -> SyncFailure {
    SyncFailure::Stream(e.to_string())
}

fn neg_err(e: negentropy::Error) -> SyncFailure {
    SyncFailure::Reconcile(format!("{e:?}"))
}

/// A sync may take this many `sync_timeout`s in all, as long as no step
/// of it (a connect, a frame each way) waits longer than one. A new
/// member's first sync in a large network carries every record, in many
/// parts that each take a while to check and store: it must not be cut
/// off while it moves. A peer that stalls is still given up within one
/// `sync_timeout`, and one that drips is bounded by this.
pub const LONGEST_SYNC: u32 = 12;

/// What this node serves, unless the peer's digest says it knows already.
fn unless_seen(holds: Vec<Holding>, seen: Option<Hash>) -> Option<Vec<Holding>> {
    (seen != Some(holdings_digest(&holds))).then_some(holds)
}

/// One side of a sync's frames: each must move within `step`
/// (`sync_timeout`); counts the bytes each way (prefix included) for the
/// log.
#[derive(Debug)]
struct Wire {
    step: Duration,
    out: usize,
    back: usize,
}

impl Wire {
    fn new(step: Duration) -> Self {
        Self {
            step,
            out: 0,
            back: 0,
        }
    }

    async fn write(&mut self, send: &mut SendStream, msg: &SyncMsg) -> Result<(), SyncFailure> {
        self.out += tokio::time::timeout(self.step, frame::write(send, msg))
            .await
            .map_err(|_| SyncFailure::Stalled)??;
        Ok(())
    }

    /// The records a peer lacks: all but the last part as `More`, the last
    /// with `want` and `holds` as `Records`.
    async fn write_records(
        &mut self,
        send: &mut SendStream,
        records: Vec<Record>,
        want: Vec<Hash>,
        holds: Option<Vec<Holding>>,
    ) -> Result<(), SyncFailure> {
        let mut parts = split_records(records, RECORDS_PER_FRAME);
        let last = parts.pop().unwrap_or_default();
        for part in parts {
            self.write(send, &SyncMsg::More(part)).await?;
        }
        self.write(
            send,
            &SyncMsg::Records {
                records: last,
                want,
                holds,
            },
        )
        .await
    }

    async fn read(&mut self, recv: &mut RecvStream) -> Result<SyncMsg, SyncFailure> {
        let read = async {
            let len = frame::read_len(recv, MAX_SYNC_FRAME).await?;
            self.back += 4 + len;
            Ok::<_, SyncFailure>(frame::read_body(recv, len).await?)
        };
        tokio::time::timeout(self.step, read)
            .await
            .map_err(|_| SyncFailure::Stalled)?
    }
}

/// What one side holds, ready to reconcile and to answer wants.
struct RecordSet {
    by_id: HashMap<Hash, Record>,
    storage: NegentropyStorageVector,
}

/// The record set of the directory as it is now, built once per directory
/// (each applied batch makes a new one): with tens of thousands of records,
/// building it is most of what a sync of two agreeing nodes would cost.
///
/// Also the records peers offered that this node refused: a record one
/// peer holds and this node refuses (its signer's unknown-kind allowance
/// is full here, or it lost a race elsewhere) is offered again at every
/// sync, and is worth one warning, not one per sync.
#[derive(Debug, Default)]
pub struct RecordSets {
    current: std::sync::Mutex<Option<(Arc<Directory>, Arc<RecordSet>)>>,
    refused: std::sync::Mutex<std::collections::HashSet<Hash>>,
    /// The records syncs in flight asked their peers for.
    pulling: std::sync::Mutex<HashSet<Hash>>,
}

/// The records one sync asks its peer for, claimed so that no other sync
/// running at the same time asks for them too: a node far behind syncs
/// with every member at start, and would otherwise take the same records
/// from each. Released when the sync ends; what it did not get is asked
/// for again by the next.
struct Pulling {
    sets: Arc<RecordSets>,
    ids: Vec<Hash>,
}

impl Pulling {
    fn claim(sets: &Arc<RecordSets>, need: impl Iterator<Item = Hash>) -> Self {
        let ids = match sets.pulling.lock() {
            Ok(mut pulling) => need.filter(|id| pulling.insert(*id)).collect(),
            Err(_) => need.collect(),
        };
        Self {
            sets: sets.clone(),
            ids,
        }
    }
}

impl Drop for Pulling {
    fn drop(&mut self) {
        if let Ok(mut pulling) = self.sets.pulling.lock() {
            for id in &self.ids {
                pulling.remove(id);
            }
        }
    }
}

/// How many refused records [`RecordSets`] remembers before it forgets
/// them all (and warns about each once more).
const REFUSED_REMEMBERED: usize = 4096;

impl std::fmt::Debug for RecordSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSet")
            .field("records", &self.by_id.len())
            .finish()
    }
}

impl RecordSets {
    /// True the first time (lately) this record was refused.
    fn first_refusal(&self, record: &Record) -> bool {
        let id = Hash::of(&postcard::to_stdvec(record).unwrap_or_default());
        let Ok(mut refused) = self.refused.lock() else {
            return true;
        };
        if refused.len() >= REFUSED_REMEMBERED {
            refused.clear();
        }
        refused.insert(id)
    }

    /// The set of the records now; built (off the async workers: it is
    /// every record, sorted) only when they changed since the last sync.
    async fn get(&self, members: &Members) -> Result<Arc<RecordSet>, SyncFailure> {
        let dir = members.directory();
        if let Ok(cached) = self.current.lock()
            && let Some((of, set)) = cached.as_ref()
            && Arc::ptr_eq(of, &dir)
        {
            return Ok(set.clone());
        }
        let of = dir.clone();
        let set = tokio::task::spawn_blocking(move || RecordSet::build(&of))
            .await
            .map_err(|e| SyncFailure::Reconcile(e.to_string()))??;
        let set = Arc::new(set);
        if let Ok(mut cached) = self.current.lock() {
            *cached = Some((dir, set.clone()));
        }
        Ok(set)
    }
}

impl RecordSet {
    fn build(dir: &Directory) -> Result<Self, SyncFailure> {
        let mut storage = NegentropyStorageVector::with_capacity(dir.len());
        let mut by_id = HashMap::with_capacity(dir.len());
        for held in dir.all() {
            let (id, r) = (held.verified.hash, held.record.clone());
            // Timestamps only order the items; ids alone are enough here.
            storage
                .insert(0, Id::from_byte_array(*id.as_bytes()))
                .map_err(neg_err)?;
            by_id.insert(id, r);
        }
        storage.seal().map_err(neg_err)?;
        Ok(Self { by_id, storage })
    }

    fn pick(&self, ids: &[Hash]) -> Vec<Record> {
        ids.iter()
            .filter_map(|id| self.by_id.get(id).cloned())
            .collect()
    }
}

/// Applies a batch from a peer, off the async workers (a part of a first
/// sync is thousands of signatures to check and one large transaction);
/// returns how many records were new.
async fn take_in(
    members: &Arc<Members>,
    sets: &Arc<RecordSets>,
    peer: &PublicKey,
    records: Vec<Record>,
) -> usize {
    if records.is_empty() {
        return 0;
    }
    let (members, sets, peer) = (members.clone(), sets.clone(), *peer);
    tokio::task::spawn_blocking(move || take_in_now(&members, &sets, &peer, records))
        .await
        .unwrap_or(0)
}

/// [`take_in`], on this thread: authorises records before what they admit.
fn take_in_now(
    members: &Members,
    sets: &RecordSets,
    peer: &PublicKey,
    mut records: Vec<Record>,
) -> usize {
    let began = Instant::now();
    records.sort_by_key(apply_rank);
    let verdicts = match members.apply_batch(&records) {
        Ok(v) => v,
        Err(error) => {
            warn!(peer = %peer.fmt_short(), %error, "could not store records from a peer");
            return 0;
        }
    };
    let mut taken = 0;
    for (record, verdict) in records.iter().zip(verdicts) {
        match verdict {
            Ok(crate::directory::Applied::Stale) => {}
            Ok(_) => taken += 1,
            Err(error) => {
                if sets.first_refusal(record) {
                    warn!(peer = %peer.fmt_short(), %error, "dropped a record from a peer");
                } else {
                    debug!(peer = %peer.fmt_short(), %error, "dropped a record from a peer again");
                }
            }
        }
    }
    debug!(peer = %peer.fmt_short(), records = records.len(), taken, elapsed_ms = began.elapsed().as_millis() as u64, "took in records");
    taken
}

/// Syncs with `peer` as the initiator; returns (records taken, records sent).
pub async fn sync_with(
    members: &Arc<Members>,
    sets: &Arc<RecordSets>,
    endpoints: &Endpoints,
    peer: PublicKey,
    timeout: Duration,
) -> Result<(usize, usize), SyncFailure> {
    let result = tokio::time::timeout(
        timeout.saturating_mul(LONGEST_SYNC),
        initiate(members, sets, endpoints, peer, timeout),
    )
    .await;
    let result = result.unwrap_or(Err(SyncFailure::Timeout));
    if result.is_err() {
        members.peers.failed(&peer);
        // It may have refused this node at a door it does not use for it,
        // or not know this node's mesh key: its record may be what it lacks.
        members.peers.introduce_to(&peer);
    }
    result
}

async fn initiate(
    members: &Arc<Members>,
    sets: &Arc<RecordSets>,
    endpoints: &Endpoints,
    peer: PublicKey,
    step: Duration,
) -> Result<(usize, usize), SyncFailure> {
    let (me, invite) = members.introduction().ok_or(SyncFailure::NoSelf)?;
    if !members.peers.is_member(&peer) {
        return Err(SyncFailure::Removed);
    }
    let id = iroh::PublicKey::from_bytes(peer.as_bytes())
        .map_err(|e| SyncFailure::Connect(e.to_string()))?;
    let conn = tokio::time::timeout(step, endpoints.to(&peer).connect(id, SYNC_ALPN))
        .await
        .map_err(|_| SyncFailure::Stalled)?
        .map_err(|e| SyncFailure::Connect(e.to_string()))?;
    let began = Instant::now();
    let mut wire = Wire::new(step);
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(stream_err)?;
        let set = sets.get(members).await?;
        let mut neg = Negentropy::borrowed(&set.storage, RECONCILE_FRAME).map_err(neg_err)?;
        let first = neg.initiate().map_err(neg_err)?;
        wire.write(
            &mut send,
            &SyncMsg::Hello {
                format: SYNC_FORMAT,
                network: members.network,
                me,
                invite,
                holds_seen: members.peers.holds_digest(&peer),
            },
        )
        .await?;
        let started = Instant::now();
        wire.write(&mut send, &SyncMsg::Reconcile(first)).await?;
        let mut rtt = None;
        let (mut have, mut need) = (Vec::new(), Vec::new());
        let mut theirs_of_mine = None;
        loop {
            let answer = match wire.read(&mut recv).await? {
                SyncMsg::Reconcile(a) => a,
                SyncMsg::Welcome { holds_seen } => {
                    theirs_of_mine = holds_seen;
                    continue;
                }
                SyncMsg::Refused(e) => return Err(e.into()),
                _ => return Err(SyncFailure::Unexpected),
            };
            rtt.get_or_insert_with(|| started.elapsed());
            match neg
                .reconcile_with_ids(&answer, &mut have, &mut need)
                .map_err(neg_err)?
            {
                Some(next) => wire.write(&mut send, &SyncMsg::Reconcile(next)).await?,
                None => break,
            }
        }
        let to_id = |id: &Id| Hash::from_bytes(**id);
        have.truncate(PUSH_AT_MOST);
        let give = set.pick(&have.iter().map(to_id).collect::<Vec<_>>());
        let sent = give.len();
        // Removed while this sync waited on it (a peer paused, or down
        // and retried): it gets nothing more.
        if !members.peers.is_member(&peer) {
            return Err(SyncFailure::Removed);
        }
        // What another sync is already pulling is not asked for twice.
        let pulling = Pulling::claim(sets, need.iter().map(to_id));
        wire.write_records(
            &mut send,
            give,
            pulling.ids.clone(),
            unless_seen(members.live.holdings(), theirs_of_mine),
        )
        .await?;
        send.finish().map_err(stream_err)?;
        let mut taken = 0;
        loop {
            match wire.read(&mut recv).await? {
                // Each part is in apply order: taken in as it arrives.
                SyncMsg::More(records) => taken += take_in(members, sets, &peer, records).await,
                SyncMsg::Records { records, holds, .. } => {
                    if let Some(holds) = holds
                        && members.peers.set_holds(&peer, holds)
                    {
                        members.holdings_changed();
                    }
                    taken += take_in(members, sets, &peer, records).await;
                    break;
                }
                SyncMsg::Refused(e) => return Err(e.into()),
                _ => return Err(SyncFailure::Unexpected),
            }
        }
        members.peers.seen(&peer, rtt);
        Ok((taken, sent))
    }
    .await;
    conn.close(0u32.into(), b"done");
    if let Ok((taken, sent)) = &result {
        debug!(
            peer = %peer.fmt_short(),
            taken,
            sent,
            bytes_out = wire.out,
            bytes_in = wire.back,
            elapsed_us = began.elapsed().as_micros() as u64,
            "sync done"
        );
    }
    result
}

/// The `maki/sync/1` protocol handler.
#[derive(Debug, Clone)]
pub struct SyncProtocol {
    members: Arc<Members>,
    sets: Arc<RecordSets>,
    limit: Arc<tokio::sync::Semaphore>,
    /// The longest wait for any step of an inbound sync (`sync_timeout`);
    /// it may take [`LONGEST_SYNC`] of them in all.
    timeout: Duration,
    /// Callers refused as non-members, warned about once each: a removed
    /// node that keeps running retries every second or so.
    refused: Arc<std::sync::Mutex<HashSet<PublicKey>>>,
}

impl SyncProtocol {
    pub fn new(members: Arc<Members>, sets: Arc<RecordSets>, timeout: Duration) -> Self {
        Self {
            members,
            sets,
            limit: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND)),
            timeout,
            refused: Arc::default(),
        }
    }

    /// Checks the initiator's introduction; a node that joined moments ago
    /// becomes a member here by it.
    fn admit(&self, peer: &PublicKey, hello: SyncMsg) -> Result<(), SyncError> {
        let SyncMsg::Hello {
            format,
            network,
            me,
            invite,
            ..
        } = hello
        else {
            return Err(SyncError::Protocol("expected a hello".into()));
        };
        if format > SYNC_FORMAT {
            return Err(SyncError::NewerFormat { found: format });
        }
        if network != self.members.network {
            return Err(SyncError::WrongNetwork);
        }
        if self.members.peers.is_member(peer) {
            return Ok(());
        }
        if self.members.directory().is_revoked(peer) {
            return Err(SyncError::NotMember("revoked by an admin".into()));
        }
        if me.signer() != *peer {
            return Err(SyncError::NotMember(
                "the node record is not the caller's".into(),
            ));
        }
        if let Some(invite) = invite {
            self.members
                .apply_record(&Record::Invite(invite))
                .map_err(|e| SyncError::NotMember(e.to_string()))?;
        }
        self.members
            .apply_record(&Record::Node(me))
            .map_err(|e| SyncError::NotMember(e.to_string()))?;
        if self.members.peers.is_member(peer) {
            info!(peer = %peer.fmt_short(), "a new member introduced itself");
            Ok(())
        } else {
            Err(SyncError::NotMember("no valid node record".into()))
        }
    }

    async fn respond(&self, conn: &Connection, peer: PublicKey) -> Result<usize, SyncFailure> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(stream_err)?;
        let mut wire = Wire::new(self.timeout);
        let hello = wire.read(&mut recv).await?;
        let mine_seen = match &hello {
            SyncMsg::Hello { holds_seen, .. } => *holds_seen,
            _ => None,
        };
        if let Err(e) = self.admit(&peer, hello) {
            wire.write(&mut send, &SyncMsg::Refused(e.clone())).await?;
            send.finish().map_err(stream_err)?;
            return Err(e.into());
        }
        wire.write(
            &mut send,
            &SyncMsg::Welcome {
                holds_seen: self.members.peers.holds_digest(&peer),
            },
        )
        .await?;
        let set = self.sets.get(&self.members).await?;
        let mut neg = Negentropy::borrowed(&set.storage, RECONCILE_FRAME).map_err(neg_err)?;
        let mut taken = 0;
        loop {
            match wire.read(&mut recv).await? {
                SyncMsg::Reconcile(q) => {
                    let answer = neg.reconcile(&q).map_err(neg_err)?;
                    wire.write(&mut send, &SyncMsg::Reconcile(answer)).await?;
                }
                SyncMsg::More(records) => {
                    taken += take_in(&self.members, &self.sets, &peer, records).await
                }
                SyncMsg::Records {
                    records,
                    want,
                    holds,
                } => {
                    // Removed since it said hello: it gets nothing.
                    if !self.members.peers.is_member(&peer) {
                        return Err(SyncFailure::Removed);
                    }
                    wire.write_records(
                        &mut send,
                        set.pick(&want),
                        Vec::new(),
                        unless_seen(self.members.live.holdings(), mine_seen),
                    )
                    .await?;
                    send.finish().map_err(stream_err)?;
                    if let Some(holds) = holds
                        && self.members.peers.set_holds(&peer, holds)
                    {
                        self.members.holdings_changed();
                    }
                    taken += take_in(&self.members, &self.sets, &peer, records).await;
                    self.members.peers.seen(&peer, None);
                    return Ok(taken);
                }
                _ => return Err(SyncFailure::Unexpected),
            }
        }
    }
}

impl ProtocolHandler for SyncProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let Ok(peer) = PublicKey::from_bytes(*conn.remote_id().as_bytes()) else {
            return Ok(());
        };
        let Ok(_permit) = self.limit.clone().try_acquire_owned() else {
            conn.close(1u32.into(), b"busy");
            return Ok(());
        };
        match tokio::time::timeout(
            self.timeout.saturating_mul(LONGEST_SYNC),
            self.respond(&conn, peer),
        )
        .await
        {
            Ok(Ok(taken)) => {
                if taken > 0 {
                    debug!(peer = %peer.fmt_short(), taken, "synced (inbound)");
                }
                // Let the initiator read the last frame before we go.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            }
            Ok(Err(error)) => {
                if matches!(error, SyncFailure::Refused(SyncError::NotMember(_))) {
                    let first = self.refused.lock().is_ok_and(|mut r| {
                        if r.len() >= REFUSED_REMEMBERED {
                            r.clear();
                        }
                        r.insert(peer)
                    });
                    if first {
                        warn!(peer = %peer.fmt_short(), %error, "refused a sync (said once per caller)");
                    } else {
                        debug!(peer = %peer.fmt_short(), %error, "refused a sync");
                    }
                } else {
                    debug!(peer = %peer.fmt_short(), %error, "inbound sync failed");
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            }
            Err(_) => conn.close(1u32.into(), b"timeout"),
        }
        Ok(())
    }
}

/// Runs until cancelled: sync with everyone at start, with a few random
/// members after local changes and every `interval`.
///
/// Each sync runs as its own task, at most one per peer: a peer that
/// hangs (frozen, or gone without a word) costs its own timeout and holds
/// up nobody else. A push that finds a sync with that peer already running
/// queues exactly one more after it.
pub async fn run(
    members: Arc<Members>,
    sets: Arc<RecordSets>,
    endpoints: Endpoints,
    interval: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut running: JoinSet<PublicKey> = JoinSet::new();
    let mut busy: HashSet<PublicKey> = HashSet::new();
    let mut again: HashSet<PublicKey> = HashSet::new();
    let told_removed = std::sync::atomic::AtomicBool::new(false);
    let start = |peers: Vec<PublicKey>,
                 running: &mut JoinSet<PublicKey>,
                 busy: &mut HashSet<PublicKey>,
                 again: &mut HashSet<PublicKey>| {
        if members.directory().is_revoked(&members.id) {
            if !told_removed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(
                    "an admin removed this node from the network: it no longer syncs; stop it, or join again with a new invite"
                );
            }
            return;
        }
        for peer in peers {
            if !busy.insert(peer) {
                again.insert(peer);
                continue;
            }
            let members = members.clone();
            let sets = sets.clone();
            let endpoints = endpoints.clone();
            running.spawn(async move {
                // A failed sync is tried twice more, soon: with a long
                // sync_interval, a transient failure (a peer restarting, a
                // busy machine) must not wait for the next round.
                for retry in [Some(1), Some(3), None] {
                    match sync_with(&members, &sets, &endpoints, peer, timeout).await {
                        Ok((taken, sent)) => {
                            if taken + sent > 0 {
                                debug!(peer = %peer.fmt_short(), taken, sent, "synced");
                            }
                            break;
                        }
                        Err(SyncFailure::Removed) => break,
                        Err(error) => {
                            debug!(peer = %peer.fmt_short(), %error, "sync failed");
                            match retry {
                                Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                                None => break,
                            }
                        }
                    }
                }
                peer
            });
        }
    };
    // Every member this node has synced with (or tried to) since it
    // started. One learned of later (from a sync, as a node that just
    // joined learns of all but its issuer) is synced with at once: with a
    // long sync_interval it would otherwise neither hear of this node nor
    // be heard of for a whole round.
    let mut met: HashSet<PublicKey> = members.peers.others().into_iter().collect();
    start(
        met.iter().copied().collect(),
        &mut running,
        &mut busy,
        &mut again,
    );
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(done) = running.join_next() => {
                if let Ok(peer) = done {
                    busy.remove(&peer);
                    if again.remove(&peer) {
                        start(vec![peer], &mut running, &mut busy, &mut again);
                    }
                }
                let new: Vec<PublicKey> = members
                    .peers
                    .others()
                    .into_iter()
                    .filter(|p| met.insert(*p))
                    .collect();
                if !new.is_empty() {
                    debug!(count = new.len(), "syncing with newly learned members");
                    start(new, &mut running, &mut busy, &mut again);
                }
            }
            _ = members.sync_soon.notified() => {
                let peers = random_subset(members.peers.others(), FANOUT);
                start(peers, &mut running, &mut busy, &mut again);
            }
            _ = tick.tick() => {
                let peers = random_subset(members.peers.others(), FANOUT);
                start(peers, &mut running, &mut busy, &mut again);
            }
        }
    }
    running.shutdown().await;
}

fn random_subset(mut peers: Vec<PublicKey>, n: usize) -> Vec<PublicKey> {
    // Fisher–Yates on a few draws; getrandom failing only means "in order".
    for i in 0..peers.len().min(n) {
        let mut b = [0u8; 8];
        if getrandom::fill(&mut b).is_err() {
            break;
        }
        let j = i + (u64::from_le_bytes(b) % (peers.len() - i) as u64) as usize;
        peers.swap(i, j);
    }
    peers.truncate(n);
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u8>) -> Vec<Hash> {
        range.map(|i| Hash::from_bytes([i; 32])).collect()
    }

    #[test]
    fn concurrent_syncs_ask_for_a_record_once_and_release_it_when_done() {
        let sets = Arc::new(RecordSets::default());
        let first = Pulling::claim(&sets, ids(0..10).into_iter());
        assert_eq!(first.ids, ids(0..10));
        // A second sync at the same time asks only for what the first does not.
        let second = Pulling::claim(&sets, ids(5..15).into_iter());
        assert_eq!(second.ids, ids(10..15));
        // The first ended (whatever it got): a later sync may ask again.
        drop(first);
        let third = Pulling::claim(&sets, ids(0..15).into_iter());
        assert_eq!(third.ids, ids(0..10));
        drop((second, third));
        assert!(sets.pulling.lock().is_ok_and(|p| p.is_empty()));
    }
}
