//! Content: the iroh-blobs store under `DATA/blobs` and the tags that keep
//! site versions alive.
//!
//! A site version is protected by one tag `v/<domain>/<manifest hash>`
//! naming a hash sequence of the manifest and every blob it needs. A
//! publish in progress holds `tmp/<session>`, a fetch `tmp/fetch/<site>`;
//! leftovers from a crash are swept at startup. Whatever no tag protects
//! (an abandoned upload, a pruned version, a removed site) is deleted by
//! the store's garbage collection every `gc_interval`. This module never
//! decides *what* to keep — `admin` and `state` do — nor caches bytes: the
//! edge's workers do that.
//!
//! Room for a cache class (transformer output, fetch-on-miss): such blobs
//! will be protected from collection by `GcConfig::add_protected` while
//! an LRU under a byte limit holds them, and evicted by that LRU, not by
//! the collector.

use std::{fs::File, io, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use iroh_blobs::{
    BlobFormat,
    api::TempTag,
    hashseq::HashSeq,
    store::{
        GcConfig,
        fs::{
            FsStore,
            options::{Options, PathOptions},
        },
    },
};
use maki_protocol::{Domain, Hash, Manifest};
use n0_future::{BufferedStreamExt, StreamExt};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    #[error("blob store: {0}")]
    Store(String),
    #[error("{path}: the manifest says {declared} bytes, the stored blob is {stored}")]
    SizeMismatch {
        path: String,
        declared: u64,
        stored: u64,
    },
    #[error("blob {hash}: the store says {size} bytes, its file holds {file}")]
    Damaged { hash: Hash, size: u64, file: u64 },
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

/// Store commands for one hash in flight at once, per stripe. The store
/// hands every command for a hash to one actor whose inbox holds 32; past
/// that it fails them ("inbox is full") rather than wait. Waiting here
/// instead keeps a crowd asking for one blob from turning into errors.
/// Every permit is held only while the store answers, never while a
/// visitor reads, so a slow visitor cannot keep others waiting.
const PER_HASH: usize = 16;
const STRIPES: usize = 64;

/// A complete blob, as the edge reads it.
#[derive(Debug)]
pub enum Complete {
    /// In its own file.
    File(BlobFile),
    /// Kept inside the store's database (blobs of up to 16 KiB): read
    /// with [`Content::get_bytes`].
    Inline { size: u64 },
}

impl Complete {
    pub fn size(&self) -> u64 {
        match self {
            Self::File(file) => file.size(),
            Self::Inline { size } => *size,
        }
    }
}

/// Reads of blob files in flight at once, node-wide. Each holds a file
/// descriptor only while it reads, so a download costs its connection's
/// descriptor and no more, and this many stay within the descriptors the
/// edge keeps back from its connections (see `edge::conns::bound`).
pub const FILE_READS: usize = 16;
static FILE_READ_TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(FILE_READS);

/// A complete blob's file, found complete. It is opened again for each
/// read and must still be the same file (device, inode, length): the
/// store never rewrites a complete blob in place, so the same file holds
/// the same bytes; a file deleted and replaced under the path (collected,
/// then fetched again) fails the read instead of serving a partial one.
#[derive(Debug, Clone)]
pub struct BlobFile {
    path: Arc<std::path::PathBuf>,
    dev: u64,
    ino: u64,
    len: u64,
}

impl BlobFile {
    /// The blob's size (its file's length).
    pub fn size(&self) -> u64 {
        self.len
    }

    /// `len` bytes at `at`.
    pub async fn read_at(&self, at: u64, len: usize) -> Result<Bytes, ContentError> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let _turn = FILE_READ_TURNS.acquire().await.map_err(store_err)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let file = File::open(this.path.as_path())?;
            let m = file.metadata()?;
            if (m.dev(), m.ino(), m.len()) != (this.dev, this.ino, this.len) {
                return Err(io::Error::other("the blob's file was replaced"));
            }
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, at)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(store_err)?
        .map_err(|e| ContentError::Store(format!("reading {len} bytes at {at}: {e}")))
    }
}

#[derive(Debug)]
pub struct Content {
    store: FsStore,
    paths: PathOptions,
    stripes: Arc<[tokio::sync::Semaphore]>,
}

impl Content {
    /// Opens the store under `dir`. Every `gc_interval` (None: never) the
    /// store deletes what no tag protects: blobs of abandoned uploads,
    /// pruned versions and removed sites.
    pub async fn load(dir: &Path, gc_interval: Option<Duration>) -> Result<Self, ContentError> {
        let mut options = Options::new(dir);
        let paths = options.path.clone();
        options.gc = gc_interval.map(|interval| GcConfig {
            interval,
            add_protected: None,
        });
        let store = FsStore::load_with_opts(dir.join("blobs.db"), options)
            .await
            .map_err(store_err)?;
        let stripes = (0..STRIPES)
            .map(|_| tokio::sync::Semaphore::new(PER_HASH))
            .collect();
        Ok(Self {
            store,
            paths,
            stripes,
        })
    }

    /// Waits for a turn to send the store a command about `hash`.
    async fn turn(&self, hash: Hash) -> Result<tokio::sync::SemaphorePermit<'_>, ContentError> {
        let stripe = usize::from(hash.as_bytes()[0]) % STRIPES;
        self.stripes[stripe].acquire().await.map_err(store_err)
    }

    pub fn store(&self) -> &iroh_blobs::api::Store {
        &self.store
    }

    /// The size of a complete blob, or `None` when absent or partial.
    pub async fn complete_size(&self, hash: Hash) -> Result<Option<u64>, ContentError> {
        let (size, complete) = self.proven_size(hash).await?;
        Ok(size.filter(|_| complete))
    }

    /// A blob's size as far as the store has proven it, and whether it is
    /// complete: a partial blob's size is proven once its last chunk is
    /// verified (the BLAKE3 tree's proof of the last chunk fixes it).
    pub async fn proven_size(&self, hash: Hash) -> Result<(Option<u64>, bool), ContentError> {
        use iroh_blobs::api::proto::BlobStatus;
        match self
            .store
            .blobs()
            .status(to_iroh(hash))
            .await
            .map_err(store_err)?
        {
            BlobStatus::Complete { size } => Ok((Some(size), true)),
            BlobStatus::Partial { size } => Ok((size, false)),
            BlobStatus::NotFound => Ok((None, false)),
        }
    }

    /// Checks every blob `manifest` names against the store: the ones
    /// absent (or partial) are returned; one whose proven size (whole, or
    /// from its last chunk alone) differs from what the manifest declares
    /// is a lie, refused by path. Signed is not honest: this is what keeps
    /// a declared size from ever reaching the edge unchecked, and a fetch
    /// asks for the last chunk with the rest, so a blob larger than
    /// declared is found out without taking in more than was declared.
    pub async fn check_manifest(&self, manifest: &Manifest) -> Result<Vec<Hash>, ContentError> {
        let mut missing = Vec::new();
        let checks = n0_future::stream::iter(manifest.blobs())
            .map(|(hash, declared)| async move {
                self.proven_size(hash).await.map(|s| (hash, declared, s))
            })
            .buffered_ordered(32)
            .collect::<Vec<_>>()
            .await;
        for check in checks {
            match check? {
                (_, declared, (Some(stored), true)) if stored == declared => {}
                (hash, declared, (Some(stored), _)) if stored != declared => {
                    return Err(ContentError::SizeMismatch {
                        path: manifest
                            .path_of(&hash)
                            .map_or_else(|| hash.to_string(), |p| p.as_str().to_owned()),
                        declared,
                        stored,
                    });
                }
                (hash, _, _) => missing.push(hash),
            }
        }
        Ok(missing)
    }

    /// Stores `bytes`; the returned temporary tag keeps them from garbage
    /// collection until the caller protects them under a name.
    pub async fn add_bytes(&self, bytes: Bytes) -> Result<(Hash, TempTag), ContentError> {
        let tag = self
            .store
            .add_bytes(bytes)
            .temp_tag()
            .await
            .map_err(store_err)?;
        Ok((from_iroh(tag.hash()), tag))
    }

    pub async fn get_bytes(&self, hash: Hash) -> Result<Bytes, ContentError> {
        let _turn = self.turn(hash).await?;
        self.store.get_bytes(to_iroh(hash)).await.map_err(store_err)
    }

    /// A complete blob, found for reading; `None` when absent or partial.
    ///
    /// The edge reads a blob's file itself rather than through the store:
    /// the store serves all readers of one hash from one task, in 1 KiB
    /// pieces, and refuses the 33rd command queued for it, so a crowd on
    /// one large file was cut off. A complete blob's file is immutable,
    /// and the file system serves it to every core in parallel.
    pub async fn complete(&self, hash: Hash) -> Result<Option<Complete>, ContentError> {
        use std::os::unix::fs::MetadataExt;
        let path = Arc::new(self.paths.data_path(&to_iroh(hash)));
        let found = {
            let path = path.clone();
            // A blocking thread each, so under the same bound as reads.
            let _turn = FILE_READ_TURNS.acquire().await.map_err(store_err)?;
            tokio::task::spawn_blocking(move || match std::fs::metadata(path.as_path()) {
                Ok(m) => Ok(Some((m.dev(), m.ino(), m.len()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .await
            .map_err(store_err)?
            .map_err(store_err)?
        };
        // Asked after the file was found: complete now means that file
        // holds the complete bytes (a partial fetch of the same hash,
        // after a deletion, would not be complete).
        let Some(size) = self.complete_size(hash).await? else {
            return Ok(None);
        };
        match found {
            Some((dev, ino, len)) if len == size => Ok(Some(Complete::File(BlobFile {
                path,
                dev,
                ino,
                len,
            }))),
            Some((_, _, file)) => Err(ContentError::Damaged { hash, size, file }),
            None => Ok(Some(Complete::Inline { size })),
        }
    }

    /// Protects `manifest` and `blobs` under `name` (replacing what it
    /// held); returns the hash of the hash sequence the tag names.
    pub async fn protect(
        &self,
        name: &str,
        manifest: Hash,
        blobs: impl IntoIterator<Item = Hash>,
    ) -> Result<iroh_blobs::Hash, ContentError> {
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
        Ok(tag.hash())
    }

    /// Commits the store's pending metadata (completed blobs, tags): after
    /// this, a crash keeps them.
    pub async fn sync(&self) -> Result<(), ContentError> {
        self.store.sync_db().await.map_err(store_err)
    }

    pub async fn unprotect(&self, name: &str) -> Result<(), ContentError> {
        self.store.tags().delete(name).await.map_err(store_err)?;
        Ok(())
    }

    /// Drops every version tag (`v/<domain>/<manifest>`) that `kept` does
    /// not name: left behind when a crash came between a prune or a site's
    /// removal and the tag's deletion. Returns how many went.
    pub async fn drop_unkept_versions(
        &self,
        kept: &std::collections::HashSet<String>,
    ) -> Result<usize, ContentError> {
        let mut tags = self
            .store
            .tags()
            .list_prefix("v/")
            .await
            .map_err(store_err)?;
        let mut stale = Vec::new();
        while let Some(tag) = tags.next().await {
            let tag = tag.map_err(store_err)?;
            let name = String::from_utf8_lossy(tag.name.as_ref()).into_owned();
            if !kept.contains(&name) {
                stale.push(name);
            }
        }
        for name in &stale {
            self.unprotect(name).await?;
        }
        Ok(stale.len())
    }

    /// Deletes files under `DIR/data` that the store does not know: blobs a
    /// crash caught in flight, after the store's metadata for them was lost
    /// (it commits in batches). Its collector cannot see them, so they would
    /// stay forever. Call at start, before anything writes to the store.
    /// Returns the bytes freed.
    pub async fn remove_orphans(&self, dir: &Path) -> Result<u64, ContentError> {
        use iroh_blobs::api::proto::BlobStatus;
        let Ok(entries) = std::fs::read_dir(dir.join("data")) else {
            return Ok(0);
        };
        let mut freed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Ok(hash) = stem.parse::<Hash>() else {
                continue;
            };
            let status = self
                .store
                .blobs()
                .status(to_iroh(hash))
                .await
                .map_err(store_err)?;
            if matches!(status, BlobStatus::NotFound) {
                let len = entry.metadata().map_or(0, |m| m.len());
                if std::fs::remove_file(&path).is_ok() {
                    freed += len;
                }
            }
        }
        Ok(freed)
    }

    /// Bytes the store's files take on disk (data and outboards; small
    /// blobs live inline in its database, counted with it).
    pub fn disk_usage(dir: &Path) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        walk(dir)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt};
    use maki_protocol::{Domain, Entry, MANIFEST_FORMAT, SitePath};

    use super::*;

    fn declaring(hash: Hash, size: u64) -> Manifest {
        let entry = Entry {
            hash,
            size,
            content_type: "application/octet-stream".into(),
            encodings: BTreeMap::new(),
        };
        Manifest {
            format: MANIFEST_FORMAT,
            site: Domain::new("example.com").expect("domain"),
            version: 1,
            parent: None,
            created: 1_700_000_000,
            entries: BTreeMap::from([(SitePath::new("big.bin").expect("path"), entry)]),
            headers: vec![],
            redirects: vec![],
        }
    }

    /// A colluding member serves a blob larger than the manifest declares:
    /// a fetch takes in the declared bytes and the last chunk, whose proof
    /// gives the real size, and the lie is refused by path.
    #[tokio::test]
    async fn a_blob_larger_than_declared_is_found_out_by_its_last_chunk() {
        let dir = tempfile::tempdir().expect("dir");
        let origin = Content::load(&dir.path().join("a"), None).await.expect("a");
        let fetcher = Content::load(&dir.path().join("b"), None).await.expect("b");
        let (hash, _tag) = origin
            .add_bytes(vec![7u8; 200_000].into())
            .await
            .expect("add");
        let mut ranges = ChunkRanges::bytes(0..65_536);
        ranges |= ChunkRanges::last_chunk();
        let bao = origin
            .store()
            .export_bao(to_iroh(hash), ranges.clone())
            .bao_to_vec()
            .await
            .expect("export");
        fetcher
            .store()
            .import_bao_bytes(to_iroh(hash), ranges, bao)
            .await
            .expect("import");
        let lie = fetcher.check_manifest(&declaring(hash, 65_536)).await;
        assert!(
            matches!(
                &lie,
                Err(ContentError::SizeMismatch { path, declared: 65_536, stored: 200_000 })
                    if path == "big.bin"
            ),
            "{lie:?}"
        );
        // Declared right, it is simply not all here yet.
        let truth = fetcher.check_manifest(&declaring(hash, 200_000)).await;
        assert_eq!(truth.expect("no lie"), vec![hash]);
        origin.shutdown().await;
        fetcher.shutdown().await;
    }
}
