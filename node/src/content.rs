//! Content: the iroh-blobs store under `DATA/blobs`, the tags that keep site
//! versions alive, and a memory cache of hot blobs for the edge.
//!
//! A site version is protected by one tag `v/<domain>/<manifest hash>`
//! naming a hash sequence of the manifest and every blob it needs. A
//! publish in progress holds `tmp/<session>`; leftovers from a crash are
//! swept at startup. This module never decides *what* to keep — `admin`
//! and `state` do.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use iroh_blobs::{BlobFormat, api::blobs::BlobReader, hashseq::HashSeq, store::fs::FsStore};
use maki_protocol::{Domain, Hash};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    #[error("blob store: {0}")]
    Store(String),
}

fn store_err(e: impl std::fmt::Display) -> ContentError {
    ContentError::Store(e.to_string())
}

pub(crate) fn to_iroh(h: Hash) -> iroh_blobs::Hash {
    iroh_blobs::Hash::from_bytes(*h.as_bytes())
}

pub(crate) fn from_iroh(h: iroh_blobs::Hash) -> Hash {
    Hash::from_bytes(*h.as_bytes())
}

#[derive(Debug)]
pub struct Content {
    store: FsStore,
    cache: BlobCache,
    max_cached_blob: u64,
}

impl Content {
    pub async fn load(
        dir: &Path,
        cache_bytes: u64,
        max_cached_blob: u64,
    ) -> Result<Self, ContentError> {
        let store = FsStore::load(dir).await.map_err(store_err)?;
        Ok(Self {
            store,
            cache: BlobCache::new(cache_bytes),
            max_cached_blob,
        })
    }

    pub fn store(&self) -> &iroh_blobs::api::Store {
        &self.store
    }

    /// The size of a complete blob, or `None` when absent or partial.
    pub async fn complete_size(&self, hash: Hash) -> Result<Option<u64>, ContentError> {
        use iroh_blobs::api::proto::BlobStatus;
        match self
            .store
            .blobs()
            .status(to_iroh(hash))
            .await
            .map_err(store_err)?
        {
            BlobStatus::Complete { size } => Ok(Some(size)),
            _ => Ok(None),
        }
    }

    pub async fn add_bytes(&self, bytes: Bytes) -> Result<Hash, ContentError> {
        let tag = self
            .store
            .add_bytes(bytes)
            .temp_tag()
            .await
            .map_err(store_err)?;
        let hash = from_iroh(tag.hash());
        // The caller protects it with a named tag right after; the temp tag
        // only has to bridge that gap.
        drop(tag);
        Ok(hash)
    }

    pub async fn get_bytes(&self, hash: Hash) -> Result<Bytes, ContentError> {
        self.store.get_bytes(to_iroh(hash)).await.map_err(store_err)
    }

    /// A blob for the edge: from memory when small enough, otherwise a reader.
    pub async fn open(&self, hash: Hash, size: u64) -> Result<Blob, ContentError> {
        if size <= self.max_cached_blob {
            if let Some(b) = self.cache.get(&hash) {
                return Ok(Blob::Memory(b));
            }
            let b = self.get_bytes(hash).await?;
            self.cache.insert(hash, b.clone());
            return Ok(Blob::Memory(b));
        }
        Ok(Blob::Reader(self.store.blobs().reader(to_iroh(hash))))
    }

    /// Protects `manifest` and `blobs` under `name` (replacing what it held).
    pub async fn protect(
        &self,
        name: &str,
        manifest: Hash,
        blobs: impl IntoIterator<Item = Hash>,
    ) -> Result<(), ContentError> {
        let seq: HashSeq = std::iter::once(manifest)
            .chain(blobs)
            .map(to_iroh)
            .collect();
        let tag = self
            .store
            .add_bytes_with_opts((seq.into_inner(), BlobFormat::HashSeq))
            .temp_tag()
            .await
            .map_err(store_err)?;
        self.store
            .tags()
            .set(name, tag.hash_and_format())
            .await
            .map_err(store_err)?;
        Ok(())
    }

    pub async fn unprotect(&self, name: &str) -> Result<(), ContentError> {
        self.store.tags().delete(name).await.map_err(store_err)?;
        Ok(())
    }

    /// Removes every `tmp/` tag: publishes a crash interrupted.
    pub async fn sweep_temp(&self) -> Result<u64, ContentError> {
        self.store
            .tags()
            .delete_prefix("tmp/")
            .await
            .map_err(store_err)
    }

    pub async fn shutdown(&self) {
        if let Err(error) = self.store.shutdown().await {
            tracing::warn!(%error, "blob store did not shut down cleanly");
        }
    }
}

pub fn version_tag(domain: &Domain, manifest: Hash) -> String {
    format!("v/{domain}/{manifest}")
}

pub fn temp_tag(session: u64) -> String {
    format!("tmp/{session}")
}

/// A blob ready to send.
#[derive(Debug)]
pub enum Blob {
    Memory(Bytes),
    Reader(BlobReader),
}

/// Immutable blobs by hash, within a byte budget. Eviction drops the least
/// recently used entry; a scan is fine because eviction is rare next to hits.
#[derive(Debug)]
struct BlobCache {
    budget: u64,
    clock: AtomicU64,
    inner: RwLock<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    used: u64,
    map: HashMap<Hash, (Bytes, AtomicU64)>,
}

impl BlobCache {
    fn new(budget: u64) -> Self {
        Self {
            budget,
            clock: AtomicU64::new(0),
            inner: RwLock::new(CacheInner::default()),
        }
    }

    fn get(&self, hash: &Hash) -> Option<Bytes> {
        // Hits take the read lock only; recency is an atomic stamp.
        let inner = self.inner.read().ok()?;
        let (b, used) = inner.map.get(hash)?;
        used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Some(b.clone())
    }

    fn insert(&self, hash: Hash, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.budget {
            return;
        }
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        while inner.used + len > self.budget {
            let Some(oldest) = inner
                .map
                .iter()
                .min_by_key(|(_, (_, t))| t.load(Ordering::Relaxed))
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some((b, _)) = inner.map.remove(&oldest) {
                inner.used -= b.len() as u64;
            }
        }
        let now = AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed));
        if inner.map.insert(hash, (bytes, now)).is_none() {
            inner.used += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_stays_within_budget() {
        let c = BlobCache::new(10);
        for i in 0..5u8 {
            c.insert(Hash::of(&[i]), Bytes::from(vec![i; 4]));
            assert!(c.inner.read().map(|i| i.used).unwrap_or(0) <= 10);
        }
        assert!(c.get(&Hash::of(&[4])).is_some());
        assert!(c.get(&Hash::of(&[0])).is_none());
        c.insert(Hash::of(b"big"), Bytes::from(vec![0; 11]));
        assert!(c.get(&Hash::of(b"big")).is_none());
    }
}
