//! Content: the iroh-blobs store under `DATA/blobs` and the tags that keep
//! site versions alive.
//!
//! A site version is protected by one tag `v/<domain>/<manifest hash>`
//! naming a hash sequence of the manifest and every blob it needs. A
//! publish in progress holds `tmp/<session>`; leftovers from a crash are
//! swept at startup. This module never decides *what* to keep — `admin`
//! and `state` do — nor caches bytes: the edge's workers do that.

use std::path::Path;

use bytes::Bytes;
use iroh_blobs::{BlobFormat, api::blobs::BlobReader, hashseq::HashSeq, store::fs::FsStore};
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
}

impl Content {
    pub async fn load(dir: &Path) -> Result<Self, ContentError> {
        let store = FsStore::load(dir).await.map_err(store_err)?;
        Ok(Self { store })
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

    /// Checks every blob `manifest` names against the store: the ones
    /// absent (or partial) are returned; one present with another size than
    /// the manifest declares is a lie, refused by path. Signed is not
    /// honest: this is what keeps a declared size from ever reaching the
    /// edge unchecked.
    pub async fn check_manifest(&self, manifest: &Manifest) -> Result<Vec<Hash>, ContentError> {
        let mut missing = Vec::new();
        let checks = n0_future::stream::iter(manifest.blobs())
            .map(|(hash, declared)| async move {
                self.complete_size(hash).await.map(|s| (hash, declared, s))
            })
            .buffered_ordered(32)
            .collect::<Vec<_>>()
            .await;
        for check in checks {
            match check? {
                (_, declared, Some(stored)) if stored == declared => {}
                (hash, declared, Some(stored)) => {
                    return Err(ContentError::SizeMismatch {
                        path: manifest
                            .path_of(&hash)
                            .map_or_else(|| hash.to_string(), |p| p.as_str().to_owned()),
                        declared,
                        stored,
                    });
                }
                (hash, _, None) => missing.push(hash),
            }
        }
        Ok(missing)
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

    /// A reader for a blob: what the edge streams large files from.
    pub fn reader(&self, hash: Hash) -> BlobReader {
        self.store.blobs().reader(to_iroh(hash))
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
