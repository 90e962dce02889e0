//! What each edge worker keeps to itself: its handles on the live sites and
//! a cache of small blobs. A request writes only memory of its own core
//! (it reads the shared, immutable site versions), so two cores serving the
//! same hot file never bounce a cache line (an `Arc` count, a lock word, a
//! `Bytes` refcount) between them.
//!
//! Lives in a thread local of the worker's single-threaded runtime; it is
//! borrowed only in short synchronous sections, never across an await.

use std::{cell::RefCell, collections::HashMap, future::Future, sync::Arc};

use bytes::Bytes;
use maki_protocol::{Domain, Hash};
use tokio::sync::OnceCell;

use crate::{
    content::ContentError,
    live::{Live, LiveSite},
};

type Loaded = Result<Bytes, Arc<ContentError>>;

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::new(0, 0));
}

/// Sets this thread's cache budget; call once when a worker starts.
pub fn init(budget: u64, max_blob: u64) {
    LOCAL.with(|l| *l.borrow_mut() = Local::new(budget, max_blob));
}

/// This worker's handle on a site's live version. The version itself is
/// one immutable copy shared by every worker; the handle is this worker's
/// own, so taking it per request counts on memory no other core writes.
#[derive(Debug)]
pub struct Mine(Arc<LiveSite>);

impl std::ops::Deref for Mine {
    type Target = LiveSite;

    fn deref(&self) -> &LiveSite {
        &self.0
    }
}

/// This worker's handle on a site's live version.
pub fn site(live: &Live, host: &str) -> Option<Arc<Mine>> {
    LOCAL.with(|l| l.borrow_mut().site(live, host))
}

/// Takes up the live view's changes even while no request comes, so a
/// replaced version is not kept alive by an idle worker's handle.
pub fn catch_up(live: &Live) {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        let generation = live.generation();
        if generation != l.generation {
            l.refresh(live, generation);
        }
    });
}

/// A cached small blob, if this worker has it.
fn blob(hash: &Hash) -> Option<Bytes> {
    LOCAL.with(|l| l.borrow_mut().blobs.get(hash))
}

/// True when a blob of `size` bytes should be cached (and read whole).
pub fn cacheable(size: u64) -> bool {
    LOCAL.with(|l| size <= l.borrow().max_blob)
}

/// A blob from this worker's cache, or read by `load` and kept. A burst of
/// requests for a blob not cached yet waits for one read instead of each
/// making its own; if that request goes away, a waiting one reads.
pub async fn blob_or_load(
    hash: Hash,
    load: impl Future<Output = Result<Bytes, ContentError>>,
) -> Loaded {
    if let Some(b) = blob(&hash) {
        return Ok(b);
    }
    let cell = LOCAL.with(|l| l.borrow_mut().loading.entry(hash).or_default().clone());
    let waiting = Waiting { hash, cell };
    waiting
        .cell
        .get_or_init(|| async {
            let loaded = load.await.map_err(Arc::new);
            if let Ok(b) = &loaded {
                insert_blob(hash, b);
            }
            loaded
        })
        .await
        .clone()
}

/// One request waiting on a read; the last to go takes the read off the
/// table, so a failed read is tried again by the next request.
struct Waiting {
    hash: Hash,
    cell: Arc<OnceCell<Loaded>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // The table's reference and this one: nobody else waits.
        if Arc::strong_count(&self.cell) > 2 {
            return;
        }
        // try_with: a runtime dropped at thread exit may drop a waiting
        // request after the thread local is gone.
        let _ = LOCAL.try_with(|l| {
            let mut l = l.borrow_mut();
            if l.loading
                .get(&self.hash)
                .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
            {
                l.loading.remove(&self.hash);
            }
        });
    }
}

/// Keeps a private copy of `bytes`.
fn insert_blob(hash: Hash, bytes: &Bytes) {
    // A private copy, so this worker's refcount traffic stays local.
    let own = Bytes::copy_from_slice(bytes);
    LOCAL.with(|l| l.borrow_mut().blobs.insert(hash, own));
}

#[derive(Debug)]
struct Local {
    generation: u64,
    sites: HashMap<Domain, Arc<Mine>>,
    blobs: BlobCache,
    max_blob: u64,
    loading: HashMap<Hash, Arc<OnceCell<Loaded>>>,
}

impl Local {
    fn new(budget: u64, max_blob: u64) -> Self {
        Self {
            generation: u64::MAX,
            sites: HashMap::new(),
            blobs: BlobCache::new(budget),
            max_blob,
            loading: HashMap::new(),
        }
    }

    fn site(&mut self, live: &Live, host: &str) -> Option<Arc<Mine>> {
        let generation = live.generation();
        if generation != self.generation {
            self.refresh(live, generation);
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.sites.get(host.to_ascii_lowercase().as_str()).cloned();
        }
        self.sites.get(host).cloned()
    }

    fn refresh(&mut self, live: &Live, generation: u64) {
        let mut next = HashMap::new();
        for (domain, shared) in live.snapshot() {
            let same = self
                .sites
                .get(&domain)
                .filter(|mine| Arc::ptr_eq(&mine.0, &shared));
            let mine = match same {
                Some(mine) => mine.clone(),
                None => Arc::new(Mine(shared)),
            };
            next.insert(domain, mine);
        }
        for (alias, domain) in live.aliases() {
            if let Some(mine) = next.get(&domain).cloned() {
                next.insert(alias, mine);
            }
        }
        // What this drops is at most an outer handle: the live view's
        // graveyard holds every replaced version until no worker does, so a
        // large version is never freed on a serving thread.
        self.sites = next;
        self.generation = generation;
    }
}

/// Immutable blobs by hash within a byte budget, least recently used out.
/// A scan on eviction is fine: evictions are rare next to hits.
#[derive(Debug)]
struct BlobCache {
    budget: u64,
    used: u64,
    clock: u64,
    map: HashMap<Hash, (Bytes, u64)>,
}

impl BlobCache {
    fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            map: HashMap::new(),
        }
    }

    fn get(&mut self, hash: &Hash) -> Option<Bytes> {
        self.clock += 1;
        let (b, used) = self.map.get_mut(hash)?;
        *used = self.clock;
        Some(b.clone())
    }

    fn insert(&mut self, hash: Hash, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.budget || self.map.contains_key(&hash) {
            return;
        }
        while self.used + len > self.budget {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some((b, _)) = self.map.remove(&oldest) {
                self.used -= b.len() as u64;
            }
        }
        self.clock += 1;
        self.map.insert(hash, (bytes, self.clock));
        self.used += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_stays_within_budget_and_evicts_the_oldest() {
        let mut c = BlobCache::new(10);
        for i in 0..5u8 {
            c.insert(Hash::of(&[i]), Bytes::from(vec![i; 4]));
            assert!(c.used <= 10);
        }
        assert!(c.get(&Hash::of(&[4])).is_some());
        assert!(c.get(&Hash::of(&[0])).is_none());
        // 3 was used more recently than 4's neighbour: it survives the next insert.
        assert!(c.get(&Hash::of(&[3])).is_some());
        c.insert(Hash::of(b"new"), Bytes::from(vec![9; 4]));
        assert!(c.get(&Hash::of(&[3])).is_some());
        c.insert(Hash::of(b"big"), Bytes::from(vec![0; 11]));
        assert!(c.get(&Hash::of(b"big")).is_none());
    }
}
