//! A set of a manifest's blobs, one bit each: what a publish lacks, what
//! a fetch holds and is getting.

use serde::{Deserialize, Serialize};

use crate::Hash;

/// A set of a manifest's blobs (in [`crate::Manifest::blobs`] order, by
/// hash): which a node lacks (a publish), or holds (a fetch in progress).
/// One bit each, so the set for a million-file site with its compressed
/// variants stays under half a MiB, well inside a frame.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BlobSet(Vec<u8>);

impl BlobSet {
    /// The set of `missing` among `all` (a manifest's blobs, in order).
    pub fn new<'a>(
        all: impl IntoIterator<Item = &'a Hash>,
        missing: &std::collections::HashSet<Hash>,
    ) -> Self {
        let mut bits = Vec::new();
        for (i, hash) in all.into_iter().enumerate() {
            if i % 8 == 0 {
                bits.push(0u8);
            }
            if missing.contains(hash)
                && let Some(byte) = bits.last_mut()
            {
                *byte |= 1 << (i % 8);
            }
        }
        Self(bits)
    }

    /// Whether the blob at `index` (in the manifest's order) is in the set.
    pub fn contains(&self, index: usize) -> bool {
        self.0
            .get(index / 8)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    /// How many bytes the set takes.
    pub fn len_bytes(&self) -> usize {
        self.0.len()
    }

    /// The hashes of `all` (the same manifest's blobs, in order) in the set.
    pub fn hashes<'a>(&self, all: impl IntoIterator<Item = &'a Hash>) -> Vec<Hash> {
        all.into_iter()
            .enumerate()
            .filter(|(i, _)| self.contains(*i))
            .map(|(_, h)| *h)
            .collect()
    }
}
