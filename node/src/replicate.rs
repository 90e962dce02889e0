//! Replication: makes what this node serves follow the records.
//!
//! Whenever the records change, each site's newest head is compared with
//! the head this node serves. A newer one is fetched from the other
//! members: the manifest, then every piece it lacks (a blob, or 1 MiB of a
//! large one: `maki_protocol::pieces`), `PARALLEL` at once (and
//! `SITES_AT_ONCE` sites). A piece is taken from the members known to hold
//! it (serving the version, or saying so in their progress while they
//! fetch it too), the least busy first, else from the nearest `SPREAD`
//! providers in turn, the rest being failover; a node fetching a version
//! tells the members which pieces it holds and is getting, so they take
//! different ones and then take them from each other (a swarm). A
//! provider that cannot be reached within `CONNECT`, or sends nothing for
//! `STALL`, is dropped for the rest of the fetch and the piece goes on
//! from the next one — from where the first stopped: iroh-blobs verifies
//! every chunk against the BLAKE3 tree and keeps what arrived. Only when
//! the whole version is here does the node switch to it; until then it
//! keeps serving the previous one. A removed site is cleared.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use iroh::endpoint::Connection;
use iroh_blobs::{
    api::{Store, remote::GetProgressItem},
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
};
use maki_protocol::{BlobSet, Domain, Hash, Head, Manifest, Piece, PublicKey, Signed};
use n0_future::{BufferedStreamExt, StreamExt};
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    content::{ContentError, to_iroh},
    directory::Directory,
    endpoint::Endpoints,
    live::Live,
    peers::Peers,
    serving::Kind,
    shared::Shared,
};

/// How long to wait before retrying a fetch that found no provider.
const RETRY: Duration = Duration::from_secs(2);
/// How many of the nearest providers share the blobs of one version.
const SPREAD: usize = 3;
/// Sites fetched at once.
const SITES_AT_ONCE: usize = 4;
/// Blobs fetched at once, per site.
const PARALLEL: usize = 16;
/// A provider that takes longer to connect is passed over.
const CONNECT: Duration = Duration::from_secs(1);
/// A provider that sends nothing for this long, on any stream of a fetch,
/// is taken for dead.
const STALL: Duration = Duration::from_secs(1);

/// The providers of one fetch and their connections, opened on first use;
/// a provider that fails once is skipped for the rest of the fetch.
#[derive(Debug)]
struct Providers {
    endpoints: Endpoints,
    order: Vec<PublicKey>,
    conns: std::sync::Mutex<HashMap<PublicKey, Arc<OnceCell<Option<Connection>>>>>,
    dead: std::sync::Mutex<HashSet<PublicKey>>,
    /// Who holds what, as the members said (whole versions, and progress).
    peers: Arc<Peers>,
    /// The version's manifest, once it is here: progress names its pieces.
    manifest: std::sync::OnceLock<Hash>,
    /// Blobs being fetched from each provider now.
    busy: std::sync::Mutex<HashMap<PublicKey, usize>>,
    /// When each provider last sent anything, on any of its streams.
    heard: std::sync::Mutex<HashMap<PublicKey, std::time::Instant>>,
    /// Pieces each provider said it held and could not send.
    failures: std::sync::Mutex<HashMap<PublicKey, u32>>,
}

/// A provider that fails this many pieces it said it held is dropped for
/// the fetch: a member announcing pieces it lacks would otherwise be the
/// first tried for each.
const FAILURES_TO_DROP: u32 = 3;

impl Providers {
    fn new(endpoints: Endpoints, order: Vec<PublicKey>, peers: Arc<Peers>) -> Self {
        Self {
            endpoints,
            order,
            conns: Default::default(),
            dead: Default::default(),
            peers,
            manifest: Default::default(),
            busy: Default::default(),
            heard: Default::default(),
            failures: Default::default(),
        }
    }

    /// The order in which to try providers for `unit`, live ones only:
    /// first the members known to hold it, those still fetching the
    /// version before those that hold it whole, then the least busy with
    /// this fetch, ties split by the unit so the load spreads. Then the
    /// rest, starting at one of the nearest few picked by the unit.
    ///
    /// Partial holders first whatever their load: every fetcher has the
    /// origin as a holder of everything, and the origin's uplink is what
    /// the swarm is to spare. A piece another fetcher has already is not
    /// taken from the origin while that fetcher is busy (the swarm waits
    /// for room there); the origin sends the pieces only it has.
    fn order_for(&self, unit: &Unit) -> Vec<PublicKey> {
        let dead = self.dead.lock().map(|d| d.clone()).unwrap_or_default();
        let mut holders: Vec<(PublicKey, bool)> = self
            .place(unit)
            .map(|(manifest, i)| self.peers.holders(manifest, i))
            .unwrap_or_default();
        holders.retain(|(p, _)| !dead.contains(p));
        let busy = self.busy.lock().map(|b| b.clone()).unwrap_or_default();
        let key = unit.key();
        holders.sort_by_cached_key(|(p, whole)| {
            let mix = Hash::of(&[key.as_bytes().as_slice(), p.as_bytes()].concat());
            (*whole, busy.get(p).copied().unwrap_or(0), mix)
        });
        let mut holders: Vec<PublicKey> = holders.into_iter().map(|(p, _)| p).collect();
        let mut rest: Vec<PublicKey> = self
            .order
            .iter()
            .filter(|p| !dead.contains(p) && !holders.contains(p))
            .copied()
            .collect();
        // The manifest (no index) is asked of the members that serve the
        // version first, in their order: its holders are not in `place`.
        let spread = if unit.index.is_some() {
            rest.len().min(SPREAD)
        } else {
            0
        };
        if spread > 1 {
            rest[..spread].rotate_left(usize::from(key.as_bytes()[0]) % spread);
        }
        holders.extend(rest);
        holders
    }

    /// Whether another member fetching this version said it is getting
    /// `unit` now.
    fn claimed(&self, unit: &Unit) -> bool {
        self.place(unit)
            .is_some_and(|(manifest, i)| self.peers.claimed(manifest, i))
    }

    /// Where progress names `unit`: the version's manifest and the piece's
    /// index (none for the manifest itself, or before it is here).
    fn place(&self, unit: &Unit) -> Option<(&Hash, usize)> {
        Some((self.manifest.get()?, unit.index?))
    }

    /// `p` sent something just now.
    fn heard_from(&self, p: PublicKey) {
        if let Ok(mut h) = self.heard.lock() {
            h.insert(p, std::time::Instant::now());
        }
    }

    /// Whether `p` sent anything, on any stream, within `STALL`: a stream
    /// of a provider busy with this fetch's other streams waits its turn;
    /// only a provider silent on all of them is taken for dead.
    fn lately_heard(&self, p: &PublicKey) -> bool {
        self.heard
            .lock()
            .is_ok_and(|h| h.get(p).is_some_and(|t| t.elapsed() < STALL))
    }

    /// Blobs being fetched from `p` now.
    fn busy(&self, p: &PublicKey) -> usize {
        self.busy
            .lock()
            .map(|b| b.get(p).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Counts a blob being fetched from `p` until the guard drops.
    fn busy_with(&self, p: PublicKey) -> Busy<'_> {
        if let Ok(mut b) = self.busy.lock() {
            *b.entry(p).or_default() += 1;
        }
        Busy { of: self, p }
    }

    /// Whether `p` said it holds `unit` (it serves the version, or its
    /// progress says so).
    fn said_it_holds(&self, unit: &Unit, p: &PublicKey) -> bool {
        self.place(unit).is_some_and(|(manifest, i)| {
            self.peers.holders(manifest, i).iter().any(|(k, _)| k == p)
        })
    }

    /// Counts a piece `p` said it held and could not send; at
    /// `FAILURES_TO_DROP`, marks it dead (true the first time).
    fn failed(&self, p: PublicKey) -> bool {
        let n = self.failures.lock().map_or(0, |mut f| {
            let n = f.entry(p).or_insert(0);
            *n += 1;
            *n
        });
        n >= FAILURES_TO_DROP && self.mark_dead(p)
    }

    /// True the first time `p` is marked.
    fn mark_dead(&self, p: PublicKey) -> bool {
        self.dead.lock().is_ok_and(|mut d| d.insert(p))
    }

    /// One connection per provider, shared by the blobs fetched at once
    /// (they would otherwise each dial it).
    async fn conn(&self, p: PublicKey) -> Option<Connection> {
        for _ in 0..2 {
            let cell = self.conns.lock().ok()?.entry(p).or_default().clone();
            let conn = cell
                .get_or_init(|| async {
                    let id = iroh::PublicKey::from_bytes(p.as_bytes()).ok()?;
                    let dial = self.endpoints.to(&p).connect(id, iroh_blobs::ALPN);
                    tokio::time::timeout(CONNECT, dial).await.ok()?.ok()
                })
                .await
                .clone()?;
            if conn.close_reason().is_none() {
                return Some(conn);
            }
            // Closed since (idle, or the provider restarted): dial again.
            if let Ok(mut conns) = self.conns.lock() {
                conns.remove(&p);
            }
        }
        None
    }

    fn close(&self) {
        let cells: Vec<_> = match self.conns.lock() {
            Ok(mut conns) => conns.drain().map(|(_, c)| c).collect(),
            Err(_) => return,
        };
        for c in cells.iter().filter_map(|c| c.get().cloned().flatten()) {
            c.close(0u32.into(), b"done");
        }
    }
}

/// See [`Providers::busy_with`].
struct Busy<'a> {
    of: &'a Providers,
    p: PublicKey,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.of.busy.lock()
            && let Some(n) = b.get_mut(&self.p)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// What one fetch stream gets: a whole blob (the manifest), or a piece
/// of the version ([`maki_protocol::pieces`]) and its index there.
#[derive(Debug, Clone, Copy)]
struct Unit {
    piece: Piece,
    index: Option<usize>,
    /// The most its blob may hold: the declared size.
    limit: u64,
}

impl Unit {
    /// A whole blob of at most `limit` bytes.
    fn whole(hash: Hash, limit: u64) -> Self {
        Self {
            piece: Piece {
                hash,
                start: 0,
                end: None,
            },
            index: None,
            limit,
        }
    }

    /// The request for all of it: chunk ranges of its blob, verified
    /// against the blob's BLAKE3 tree as they arrive. The last piece asks
    /// up to the declared size and for the blob's last chunk: that chunk's
    /// proof fixes the real size, so a blob larger than declared is found
    /// out (`Content::check_manifest`) with no more taken in than declared.
    fn request(&self) -> Arc<GetRequest> {
        let Piece { hash, start, end } = self.piece;
        let ranges = match end {
            Some(end) => ChunkRanges::bytes(start..end),
            None => {
                let mut r = ChunkRanges::bytes(start..self.limit.max(start));
                r |= ChunkRanges::last_chunk();
                r
            }
        };
        Arc::new(GetRequest::blob_ranges(to_iroh(hash), ranges))
    }

    /// Names it, to spread units over providers and orders.
    fn key(&self) -> Hash {
        let Piece { hash, start, .. } = self.piece;
        Hash::of(&[hash.as_bytes().as_slice(), &start.to_le_bytes()].concat())
    }
}

/// How a unit's fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    /// It is complete here.
    Done,
    /// No provider had it to give.
    Failed,
    /// The providers it was not tried at had no room: schedule it again.
    Later,
}

/// Fetches one unit, trying providers until it is complete here. A piece
/// comes from any member that holds it, even one still fetching the rest
/// of its blob: iroh-blobs serves ranges of a partial blob.
///
/// The provider it was scheduled for goes first; after it, only those with
/// room (`PER_PROVIDER`): a unit that fell through to the origin whatever
/// its load piled every slot there, where round-robin sending finished
/// none of them for seconds.
async fn fetch_unit(
    store: &Store,
    providers: &Providers,
    unit: Unit,
    mut reserved: Option<Busy<'_>>,
) -> Got {
    let remote = store.remote();
    let request = unit.request();
    let mut order = providers.order_for(&unit);
    // The provider this unit was scheduled for goes first (its own
    // reservation may have pushed it down the order).
    if let Some(r) = &reserved
        && let Some(pos) = order.iter().position(|p| *p == r.p)
    {
        let p = order.remove(pos);
        order.insert(0, p);
    }
    let mut skipped = false;
    for (i, p) in order.into_iter().enumerate() {
        let Ok(local) = remote.local_for_request(request.clone()).await else {
            return Got::Failed;
        };
        if local.is_complete() {
            return Got::Done;
        }
        let scheduled = i == 0 && reserved.as_ref().is_some_and(|r| r.p == p);
        if !scheduled && unit.index.is_some() && providers.busy(&p) >= PER_PROVIDER {
            // Worth waiting for only if it has the piece.
            skipped |= providers.said_it_holds(&unit, &p);
            continue;
        }
        let Some(conn) = providers.conn(p).await else {
            if providers.mark_dead(p) {
                info!(provider = %p.fmt_short(), "provider unreachable; trying the next");
            }
            continue;
        };
        let _busy = match reserved.take() {
            Some(r) if r.p == p => r,
            other => {
                drop(other);
                providers.busy_with(p)
            }
        };
        let mut progress = std::pin::pin!(remote.execute_get(conn, local.missing()).stream());
        // STALLs in a row this stream waited while its provider sent others.
        let mut waited = 0;
        loop {
            match tokio::time::timeout(STALL, progress.next()).await {
                Ok(Some(GetProgressItem::Progress(_))) => {
                    providers.heard_from(p);
                    waited = 0;
                    continue;
                }
                Ok(Some(GetProgressItem::Done(_))) => {
                    debug!(provider = %p.fmt_short(), piece = ?unit.index, "got a piece");
                    break;
                }
                Ok(Some(GetProgressItem::Error(error))) => {
                    // It may simply not hold this piece (yet): not dead,
                    // unless it keeps saying it has pieces it cannot send.
                    debug!(provider = %p.fmt_short(), %error, "provider could not send a piece");
                    if providers.said_it_holds(&unit, &p) && providers.failed(p) {
                        info!(provider = %p.fmt_short(), "provider failed pieces it said it held; dropped for this fetch");
                    }
                    break;
                }
                Ok(None) => break,
                // Alive, but not sending this blob: after a while, the next.
                Err(_) if providers.lately_heard(&p) && waited < 10 => waited += 1,
                Err(_) if providers.lately_heard(&p) => break,
                Err(_) => {
                    if providers.mark_dead(p) {
                        info!(provider = %p.fmt_short(), "provider stalled; trying the next");
                    }
                    break;
                }
            }
        }
    }
    match remote.local_for_request(request).await {
        Ok(l) if l.is_complete() => Got::Done,
        _ if skipped => Got::Later,
        _ => Got::Failed,
    }
}

/// Pieces of one fetch taken from one provider at once: a member that
/// holds a version whole serves each fetcher a share, and the fetchers'
/// other slots go to pieces the members fetching beside them have
/// already. (8 made no difference in the lab: docs/benchmarks.md.)
const PER_PROVIDER: usize = 4;

/// How long a fetch with nothing to do waits for the members getting the
/// pieces it lacks before it takes one of them itself.
const IDLE_GRACE: Duration = Duration::from_millis(500);

/// How many times a piece is put back for want of room at its holders
/// before the fetch gives up on it for this pass (a holder that keeps its
/// slots full, or holders that keep failing fast, must not keep a piece
/// circling for ever).
const LATER_AT_MOST: u32 = 64;

/// How many pending blobs each free slot looks through for one to take.
const LOOK_AHEAD: usize = 512;

/// What a fetch holds and is getting of its version's pieces (by index):
/// what its progress says.
#[derive(Debug, Default)]
struct Held {
    have: HashSet<usize>,
    getting: HashSet<usize>,
}

/// Fetches `pending` (in this node's order), `PARALLEL` at once. Each free
/// slot takes, among the next `LOOK_AHEAD` pending pieces, the first whose
/// best provider has room (`PER_PROVIDER`) and that no other member is
/// fetching already; with none such, one another member is fetching too,
/// but only when nothing else has run for `IDLE_GRACE`. Otherwise it
/// waits for a fetch to end or for news of who holds what: a piece another
/// member is getting is taken from that member once it has it. Returns
/// whether every piece arrived.
async fn swarm(
    store: &Store,
    providers: &Providers,
    pending: Vec<Unit>,
    held: &std::sync::Mutex<Held>,
) -> bool {
    let mut pending: std::collections::VecDeque<Unit> = pending.into();
    let mut running = n0_future::FuturesUnordered::new();
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut all = true;
    // Since when nothing ran and every piece left was another member's.
    let mut idle: Option<tokio::time::Instant> = None;
    // How often each piece was put back for want of room.
    let mut later: HashMap<Option<usize>, u32> = HashMap::new();
    loop {
        while running.len() < PARALLEL {
            let room = |h: &Unit| {
                providers
                    .order_for(h)
                    .first()
                    .is_none_or(|p| providers.busy(p) < PER_PROVIDER)
            };
            let free = pending
                .iter()
                .take(LOOK_AHEAD)
                .position(|h| room(h) && !providers.claimed(h));
            let free = match free {
                Some(pos) => Some(pos),
                // Nothing runs, and every piece left is another member's:
                // it will have them soon. Take one anyway after a grace,
                // not at once: that copy would be a second one, from the
                // origin's uplink, which the swarm is to spare.
                None if running.is_empty() && !pending.is_empty() => {
                    let since = *idle.get_or_insert_with(tokio::time::Instant::now);
                    (since.elapsed() >= IDLE_GRACE)
                        .then(|| pending.iter().take(LOOK_AHEAD).position(room).unwrap_or(0))
                }
                None => None,
            };
            let Some(unit) = free.and_then(|pos| pending.remove(pos)) else {
                break;
            };
            idle = None;
            // Counted against its provider now, not once its future first
            // runs: the slots filled in this loop would all pick the same
            // provider.
            let reserved = providers
                .order_for(&unit)
                .first()
                .map(|p| providers.busy_with(*p));
            running.push(fetch_counted(store, providers, held, unit, reserved));
        }
        if running.is_empty() && pending.is_empty() {
            return all;
        }
        tokio::select! {
            Some((got, unit)) = running.next() => match got {
                Got::Done => {}
                Got::Failed => all = false,
                Got::Later => {
                    let n = later.entry(unit.index).or_insert(0);
                    *n += 1;
                    if *n <= LATER_AT_MOST {
                        pending.push_back(unit);
                    } else {
                        // The fetch ends without it; the next pass tries
                        // again with the members as they are then.
                        all = false;
                    }
                }
            },
            // New holders may have spoken: look again.
            _ = every.tick() => {}
        }
    }
}

/// [`fetch_unit`], counted as getting while it runs and as held if it
/// arrived.
async fn fetch_counted(
    store: &Store,
    providers: &Providers,
    held: &std::sync::Mutex<Held>,
    unit: Unit,
    reserved: Option<Busy<'_>>,
) -> (Got, Unit) {
    if let (Ok(mut held), Some(i)) = (held.lock(), unit.index) {
        held.getting.insert(i);
    }
    let got = fetch_unit(store, providers, unit, reserved).await;
    if let (Ok(mut held), Some(i)) = (held.lock(), unit.index) {
        held.getting.remove(&i);
        if got == Got::Done {
            held.have.insert(i);
        }
    }
    (got, unit)
}

/// How often a node fetching a version tells the members what it holds
/// and gets (at least: with many members, less often, so the messages of
/// all of them stay a few hundred a second).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A fetch repeats its progress this often even when it has not changed:
/// its claims lapse after `peers::CLAIM_LAPSES` without word.
const PROGRESS_REPEAT: Duration = Duration::from_secs(2);

/// Drives `fetching` to its end, telling the members which of the
/// version's `pieces` this node holds and is getting (`held`) whenever
/// that changed, at most every `PROGRESS_EVERY` (or 10 ms per member):
/// they may fetch those from here already, and leave these to it.
async fn announce_progress<F: std::future::Future>(
    shared: &Shared,
    manifest: Hash,
    pieces: usize,
    held: &std::sync::Mutex<Held>,
    fetching: F,
) -> F::Output {
    if pieces > maki_protocol::sync::MAX_PROGRESS_BYTES * 8 {
        return fetching.await;
    }
    let members = u32::try_from(shared.members.peers.others().len()).unwrap_or(u32::MAX);
    let period = PROGRESS_EVERY.max(Duration::from_millis(10).saturating_mul(members));
    let mut fetching = std::pin::pin!(fetching);
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told: Option<((usize, HashSet<usize>), tokio::time::Instant)> = None;
    loop {
        let done = tokio::select! {
            out = &mut fetching => Some(out),
            _ = every.tick() => None,
        };
        // One lock: what is held and got is read at one moment.
        let Ok((now, have)) = held.lock().map(|h| {
            let now = (h.have.len(), h.getting.clone());
            let fresh = told
                .as_ref()
                .is_some_and(|(t, at)| *t == now && at.elapsed() < PROGRESS_REPEAT);
            if fresh && done.is_none() {
                return (now, None);
            }
            (
                now,
                Some(BlobSet::of_indices(pieces, h.have.iter().copied())),
            )
        }) else {
            if let Some(out) = done {
                return out;
            }
            continue;
        };
        if let Some(have) = have {
            // The last word of a fetch gets nothing: its claims end.
            let getting = match done {
                Some(_) => BlobSet::of_indices(pieces, []),
                None => BlobSet::of_indices(pieces, now.1.iter().copied()),
            };
            shared.members.outbox.progress(manifest, have, getting);
            told = Some((now, tokio::time::Instant::now()));
        }
        if let Some(out) = done {
            return out;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("no member could provide {what}")]
    Unavailable { what: &'static str },
    #[error("the manifest is invalid: {0}")]
    Manifest(String),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Serve(#[from] crate::serving::ServeError),
}

/// Runs until cancelled: one pass at start, after every change of the
/// records and of what members serve; passes that could not finish are
/// retried.
pub async fn run(
    shared: Arc<Shared>,
    endpoints: Endpoints,
    mut records: watch::Receiver<Arc<Directory>>,
    mut served_elsewhere: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    // Retries of a fetch nobody can serve back off (2 s, 4 s, … 64 s); any
    // change of records or holdings tries again at once.
    let mut failures = 0u32;
    loop {
        records.borrow_and_update();
        served_elsewhere.borrow_and_update();
        let began = std::time::Instant::now();
        let pending = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            pending = pass(&shared, &endpoints) => pending,
        };
        debug!(
            elapsed_us = began.elapsed().as_micros() as u64,
            pending, "replication pass"
        );
        failures = if pending {
            failures.saturating_add(1)
        } else {
            0
        };
        let wait = RETRY * 2u32.pow(failures.saturating_sub(1).min(5));
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            res = records.changed() => if res.is_err() { break },
            res = served_elsewhere.changed() => if res.is_err() { break },
            _ = tokio::time::sleep(wait), if pending => {},
        }
    }
}

/// What a pass found to do for one site.
enum Step {
    /// Stop serving it: removed, or what is served predates the site.
    Clear(Domain, &'static str),
    /// Pinned elsewhere: drop it once a node there serves it.
    Release(Domain),
    /// Fetch and serve this head.
    Fetch(Head, Signed<Head>),
}

/// Decides, from the records and what is served (read under one lock, no
/// await), what each site needs; nothing for the common case of a site
/// served as its head record says.
fn plan(dir: &Directory, live: &Live, region: Option<&str>) -> Vec<Step> {
    live.with_all(|served| {
        let mut steps = Vec::new();
        for view in dir.per_site() {
            let site = view.site;
            let now = served.get(&site.domain);
            if site.removed {
                if now.is_some() {
                    steps.push(Step::Clear(site.domain.clone(), "site removed"));
                }
                continue;
            }
            // Serving a version from before the site was added again (a
            // node that missed the removal): let it go at once.
            if now.is_some_and(|l| !site.current(l.seq)) {
                steps.push(Step::Clear(
                    site.domain.clone(),
                    "the site was added again; dropped what this node served of it before",
                ));
            }
            if view.pin.is_some_and(|p| !p.admits(region)) {
                steps.push(Step::Release(site.domain.clone()));
                continue;
            }
            let Some((head, signed)) = view.head else {
                continue;
            };
            let held = now.is_some_and(|l| {
                l.seq > head.seq || (l.seq == head.seq && l.manifest_hash == head.manifest)
            });
            if !held {
                steps.push(Step::Fetch(head.clone(), signed.clone()));
            }
        }
        steps
    })
    .unwrap_or_default()
}

/// One pass over every site; true if something is still to be fetched.
async fn pass(shared: &Arc<Shared>, endpoints: &Endpoints) -> bool {
    let dir = shared.members.directory();
    let steps = plan(&dir, &shared.members.live, shared.config.region.as_deref());
    let mut wanted = Vec::new();
    for step in steps {
        match step {
            Step::Clear(domain, why) => {
                shared.serving.lock().await.clear(&domain).await;
                info!(site = %domain, "{why}");
            }
            Step::Release(domain) => release_if_held_elsewhere(shared, &domain).await,
            Step::Fetch(head, signed) => wanted.push((head, signed)),
        }
    }
    // A few sites at once, so a large one does not hold up the rest.
    let failed = n0_future::stream::iter(wanted)
        .map(|(head, signed)| async move {
            let res = fetch(shared, endpoints, &head, &signed).await;
            if let Err(error) = &res {
                warn!(site = %head.site, seq = head.seq, %error, "fetch failed; retrying");
            }
            res.is_err()
        })
        .buffered_unordered(SITES_AT_ONCE)
        .filter(|failed| *failed)
        .count()
        .await;
    failed > 0
}

async fn fetch(
    shared: &Arc<Shared>,
    endpoints: &Endpoints,
    head: &Head,
    signed: &Signed<Head>,
) -> Result<(), FetchError> {
    let providers = Providers::new(
        endpoints.clone(),
        shared.members.peers.providers(&head.manifest),
        shared.members.peers.clone(),
    );
    let result = fetch_with(shared, &providers, head, signed).await;
    providers.close();
    result
}

async fn fetch_with(
    shared: &Arc<Shared>,
    providers: &Providers,
    head: &Head,
    signed: &Signed<Head>,
) -> Result<(), FetchError> {
    let content = &shared.content;
    let store = content.store();
    let started = std::time::Instant::now();
    // Until the version is complete, a temporary tag (swept at restart)
    // keeps what arrives from garbage collection: the manifest first.
    let temp = format!("tmp/fetch/{}", head.site);
    content.protect(&temp, head.manifest, []).await?;
    let fetched = async {
        let manifest_limit = maki_protocol::MAX_MANIFEST_BYTES;
        fetch_unit(
            store,
            providers,
            Unit::whole(head.manifest, manifest_limit),
            None,
        )
        .await;
        // Read whole below: bounded first, whatever a peer sent (a larger
        // one stops at the bound, its last chunk proving its size).
        if let Ok((Some(size), _)) = content.proven_size(head.manifest).await
            && size > maki_protocol::MAX_MANIFEST_BYTES
        {
            return Err(FetchError::Manifest(
                maki_protocol::ManifestError::TooLarge(size).to_string(),
            ));
        }
        let bytes =
            content
                .get_bytes(head.manifest)
                .await
                .map_err(|_| FetchError::Unavailable {
                    what: "the manifest",
                })?;
        if Hash::of(&bytes) != head.manifest {
            return Err(FetchError::Manifest("hash mismatch".into()));
        }
        let manifest = Manifest::decode(&bytes).map_err(|e| FetchError::Manifest(e.to_string()))?;
        if manifest.site != head.site {
            return Err(FetchError::Manifest(format!(
                "it is for {}, the head for {}",
                manifest.site, head.site
            )));
        }
        let size = manifest.total_size();
        if size > shared.config.max_site_bytes {
            return Err(FetchError::Manifest(format!(
                "{size} bytes is above this node's max_site_bytes"
            )));
        }
        // The hash sequence protects what arrives from the start, and it is
        // what peers ask for: the same list in the same order gives the same
        // hash on every node.
        let blobs = manifest.blobs();
        content
            .protect(&temp, head.manifest, blobs.keys().copied())
            .await?;
        // Each fetched blob is verified against its hash, so its size is the
        // truth; a manifest that declares another one is refused by path.
        let lacking: HashSet<Hash> = content
            .check_manifest(&manifest)
            .await?
            .into_iter()
            .collect();
        let _ = providers.manifest.set(head.manifest);
        let pieces = maki_protocol::pieces(&blobs);
        let (mut missing, have): (Vec<Unit>, Vec<Unit>) = pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| Unit {
                piece: *piece,
                index: Some(i),
                limit: blobs.get(&piece.hash).copied().unwrap_or(0),
            })
            .partition(|u| lacking.contains(&u.piece.hash));
        // Each node takes the pieces in an order of its own, so the members
        // fetching at once start with different ones and soon have
        // something to give each other.
        let me = shared.members.id;
        missing.sort_by_cached_key(|u| {
            Hash::of(&[me.as_bytes().as_slice(), u.key().as_bytes()].concat())
        });
        let held = std::sync::Mutex::new(Held {
            have: have.iter().filter_map(|u| u.index).collect(),
            getting: HashSet::new(),
        });
        let fetching = swarm(store, providers, missing, &held);
        let fetched = announce_progress(shared, head.manifest, pieces.len(), &held, fetching).await;
        debug!(site = %head.site, all = fetched, "fetched");
        if !content.check_manifest(&manifest).await?.is_empty() {
            return Err(FetchError::Unavailable { what: "every blob" });
        }
        Ok(manifest)
    }
    .await;
    let manifest = match fetched {
        Ok(m) => m,
        // A dishonest version is never worth keeping; an unreachable one
        // keeps what arrived, so the next try resumes.
        Err(
            e @ (FetchError::Manifest(_) | FetchError::Content(ContentError::SizeMismatch { .. })),
        ) => {
            if let Err(error) = content.unprotect(&temp).await {
                warn!(%error, "could not drop a fetch's temporary tag");
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let result = async {
        let guard = shared.serving.lock().await;
        if serves(shared, head) {
            return Ok(());
        }
        let version = manifest.version;
        guard
            .commit(head, signed, manifest, Kind::New { version })
            .await
            .map_err(FetchError::from)
    }
    .await;
    if let Err(error) = content.unprotect(&temp).await {
        warn!(%error, "could not drop a fetch's temporary tag");
    }
    if result.is_ok() {
        // Tell the members at once: they may fetch from here, and a
        // publisher waiting with `--wait` learns this node is done.
        shared.members.outbox.holdings();
        info!(site = %head.site, seq = head.seq, elapsed = ?started.elapsed(), "replicated");
    }
    result
}

/// A site pinned away from this node: keep what it serves (it may be the
/// only copy, e.g. just published here) until a node the pin admits serves
/// that version or a newer one, then drop it.
async fn release_if_held_elsewhere(shared: &Shared, domain: &Domain) {
    let Some(live) = shared.members.live.get(domain.as_str()) else {
        return;
    };
    let dir = shared.members.directory();
    let Some(pin) = dir.pin(domain) else {
        return;
    };
    let covered = shared.members.peers.all().into_iter().any(|(_, p)| {
        pin.admits(p.region.as_deref())
            && p.holds
                .iter()
                .any(|h| &h.site == domain && h.seq >= live.seq)
    });
    if covered {
        shared.serving.lock().await.clear(domain).await;
        info!(site = %domain, "pinned to other regions; dropped here");
        shared.members.outbox.holdings();
    }
}

/// Whether what this node serves is already `head` or newer. Two heads of
/// one seq (publishes on both sides of a partition) differ in manifest: the
/// records pick one winner, and every node must switch to it.
fn serves(shared: &Shared, head: &Head) -> bool {
    shared
        .members
        .live
        .get(head.site.as_str())
        .is_some_and(|l| {
            l.seq > head.seq || (l.seq == head.seq && l.manifest_hash == head.manifest)
        })
}
