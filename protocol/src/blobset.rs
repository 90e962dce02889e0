//! A set of a manifest's blobs, one bit each: what a publish lacks; and a
//! set of a version's pieces, one bit each: what a fetch holds and is
//! getting.

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

    /// The set of `indices`, each below `len` (those that are not are
    /// left out): pieces, say.
    pub fn of_indices(len: usize, indices: impl IntoIterator<Item = usize>) -> Self {
        let mut bits = vec![0u8; len.div_ceil(8)];
        for i in indices {
            if let Some(byte) = bits.get_mut(i / 8)
                && i < len
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

/// Blobs larger than this are fetched in pieces of this size (a multiple
/// of BLAKE3's 1 KiB chunks, and of iroh-blobs' 16 KiB chunk groups), each
/// from whichever member has it: a large file is fetched from several
/// members at once, and served on while it is still arriving.
pub const PIECE_BYTES: u64 = 1 << 20;

/// A piece of a version: a blob, or `PIECE_BYTES` of a large one. The
/// last piece of a blob runs to its end, whatever its size turns out to
/// be (the manifest's size is a claim; the BLAKE3 tree is the truth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub hash: Hash,
    /// Its first byte.
    pub start: u64,
    /// Where it ends; `None`: at the blob's end.
    pub end: Option<u64>,
}

/// The pieces of a version, from its manifest's blobs and their sizes:
/// every node derives the same list, so a piece's index names it in
/// progress messages ([`crate::sync::Progress`]).
pub fn pieces(blobs: &std::collections::BTreeMap<Hash, u64>) -> Vec<Piece> {
    let mut out = Vec::new();
    for (hash, size) in blobs {
        let parts = size.div_ceil(PIECE_BYTES).max(1);
        for k in 0..parts {
            let start = k * PIECE_BYTES;
            let end = (k + 1 < parts).then(|| start + PIECE_BYTES);
            out.push(Piece {
                hash: *hash,
                start,
                end,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_large_blob_is_cut_into_pieces_the_last_running_to_its_end() {
        let (small, large, empty) = (Hash::of(b"s"), Hash::of(b"l"), Hash::of(b""));
        let blobs = BTreeMap::from([(small, 10), (large, 2 * PIECE_BYTES + 1), (empty, 0)]);
        let p = pieces(&blobs);
        let of = |h| {
            p.iter()
                .filter(|x| x.hash == h)
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of(small),
            vec![Piece {
                hash: small,
                start: 0,
                end: None
            }]
        );
        assert_eq!(of(empty).len(), 1);
        let l = of(large);
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].start, l[0].end), (0, Some(PIECE_BYTES)));
        assert_eq!((l[2].start, l[2].end), (2 * PIECE_BYTES, None));
        // The same list on every node: the manifest's blob order.
        assert_eq!(p, pieces(&blobs.clone()));
    }

    #[test]
    fn a_set_of_indices_keeps_those_in_range_only() {
        let s = BlobSet::of_indices(10, [0, 9, 10, 99]);
        assert!(s.contains(0) && s.contains(9));
        assert!(!s.contains(10) && !s.contains(99) && !s.contains(1));
        assert_eq!(s.len_bytes(), 2);
    }
}
