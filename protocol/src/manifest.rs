//! Manifests (what a site version contains) and heads (which version a
//! site serves now).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Domain, Hash, SitePath,
    codec::encode,
    rules::{HeaderRule, RedirectRule},
    signed::Signable,
};

/// The manifest format this code writes and the newest it reads.
pub const MANIFEST_FORMAT: u16 = 1;

/// The most entries one manifest may hold.
pub const MAX_ENTRIES: usize = 1_000_000;

/// The most bytes one canonical manifest may have: a million files with
/// paths of ~200 bytes. Nodes refuse a larger one before receiving it.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024 * 1024;

/// The most header plus redirect rules one manifest may hold.
pub const MAX_RULES: usize = 10_000;

/// One version of a site. Its canonical (postcard) bytes are a blob; the
/// BLAKE3 of those bytes names the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always first, so any reader can tell a newer format before decoding.
    pub format: u16,
    pub site: Domain,
    /// 1 for the first publish, +1 for each publish after it.
    pub version: u64,
    /// The manifest this one was built on; `None` for the first.
    pub parent: Option<Hash>,
    /// Seconds since the Unix epoch, as the publisher's clock saw it.
    pub created: u64,
    pub entries: BTreeMap<SitePath, Entry>,
    pub headers: Vec<HeaderRule>,
    pub redirects: Vec<RedirectRule>,
}

/// The wire layout of [`Manifest`] with unvalidated strings.
#[derive(Deserialize)]
struct RawManifest {
    format: u16,
    site: String,
    version: u64,
    parent: Option<Hash>,
    created: u64,
    entries: BTreeMap<String, Entry>,
    headers: Vec<HeaderRule>,
    redirects: Vec<RedirectRule>,
}

/// One file of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub hash: Hash,
    pub size: u64,
    pub content_type: String,
    /// Precompressed variants, present only where smaller than the original.
    pub encodings: BTreeMap<Encoding, Variant>,
}

/// A content-coding of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Encoding {
    Br,
    Gzip,
}

impl Encoding {
    /// The token in `Content-Encoding` / `Accept-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// A compressed copy of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub hash: Hash,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error(
        "manifest format {found} is newer than this build understands (up to {MANIFEST_FORMAT}); upgrade"
    )]
    NewerFormat { found: u16 },
    #[error("manifest does not decode: {0}")]
    Decode(String),
    #[error("manifest has an invalid path {path:?}: {error}")]
    BadPath {
        path: String,
        error: crate::SitePathError,
    },
    #[error("manifest names an invalid site: {0}")]
    BadSite(String),
    #[error("manifest has trailing bytes after its end")]
    TrailingBytes,
    #[error("manifest is {0} bytes; the limit is {MAX_MANIFEST_BYTES}")]
    TooLarge(u64),
    #[error("manifest has {0} entries; the limit is {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("manifest has {0} rules; the limit is {MAX_RULES}")]
    TooManyRules(usize),
    #[error("manifest is for {found}, expected {expected}")]
    WrongSite { expected: Domain, found: Domain },
    #[error("manifest names {path:?} twice (once in another Unicode normalisation form)")]
    DuplicatePath { path: String },
    #[error(
        "manifest declares blob {hash} as {size} bytes at {path:?} and as {other_size} bytes at {other_path:?}; one blob has one size"
    )]
    SizeConflict {
        hash: Hash,
        path: String,
        size: u64,
        other_path: String,
        other_size: u64,
    },
    #[error("manifest declares sizes that add up to more than 2^64 bytes")]
    SizesOverflow,
    #[error(
        "manifest declares the {encoding} variant of {path:?} as {size} bytes, larger than the file's {file_size}; a variant is only ever kept when smaller"
    )]
    VariantTooLarge {
        path: String,
        encoding: &'static str,
        size: u64,
        file_size: u64,
    },
    #[error("manifest rule {index} is invalid: {message}")]
    BadRule { index: usize, message: String },
    #[error("_headers may not set or remove {name} (the server owns it)")]
    ReservedHeader { name: String },
}

impl Manifest {
    /// The canonical bytes of this manifest.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// The hash that names this version.
    pub fn hash(&self) -> Hash {
        Hash::of(&self.to_bytes())
    }

    /// Decodes and checks the limits. Total: any input gives a value or an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len() as u64));
        }
        let (format, _) = postcard::take_from_bytes::<u16>(bytes)
            .map_err(|e| ManifestError::Decode(e.to_string()))?;
        if format > MANIFEST_FORMAT {
            return Err(ManifestError::NewerFormat { found: format });
        }
        // Decode paths and the domain as plain strings first, so a bad one
        // is reported as itself rather than as an opaque serde error.
        // The number of entries first: a map far over the limit is refused
        // before it is decoded into memory.
        if let Ok(((_, _, _, _, _, n), _)) =
            postcard::take_from_bytes::<(u16, String, u64, Option<Hash>, u64, u64)>(bytes)
            && n > MAX_ENTRIES as u64
        {
            return Err(ManifestError::TooManyEntries(
                usize::try_from(n).unwrap_or(usize::MAX),
            ));
        }
        let (raw, rest) = postcard::take_from_bytes::<RawManifest>(bytes)
            .map_err(|e| ManifestError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ManifestError::TrailingBytes);
        }
        let site = Domain::new(&raw.site).map_err(|e| ManifestError::BadSite(e.to_string()))?;
        if raw.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(raw.entries.len()));
        }
        let mut entries = BTreeMap::new();
        for (path, entry) in raw.entries {
            let p = SitePath::new(&path).map_err(|error| ManifestError::BadPath {
                path: path.escape_debug().to_string(),
                error,
            })?;
            // Two raw names with one NFC form would silently shadow each other.
            if entries.insert(p, entry).is_some() {
                return Err(ManifestError::DuplicatePath {
                    path: path.escape_debug().to_string(),
                });
            }
        }
        let m = Manifest {
            format: raw.format,
            site,
            version: raw.version,
            parent: raw.parent,
            created: raw.created,
            entries,
            headers: raw.headers,
            redirects: raw.redirects,
        };
        let rules = m.headers.len() + m.redirects.len();
        if rules > MAX_RULES {
            return Err(ManifestError::TooManyRules(rules));
        }
        // A hostile publisher need not use our rules parser: check what it
        // would have checked (a bad status or pattern must never reach the
        // edge).
        for (index, rule) in m.redirects.iter().enumerate() {
            rule.validate()
                .map_err(|message| ManifestError::BadRule { index, message })?;
        }
        for (index, rule) in m.headers.iter().enumerate() {
            rule.validate().map_err(|message| ManifestError::BadRule {
                index: m.redirects.len() + index,
                message,
            })?;
        }
        m.check_sizes()?;
        // So the bytes of all blobs are at most three times the files' (what
        // max_site_bytes limits): a fetch makes its pieces from them.
        for (path, e) in &m.entries {
            if let Some((encoding, v)) = e.encodings.iter().find(|(_, v)| v.size > e.size) {
                return Err(ManifestError::VariantTooLarge {
                    path: path.as_str().to_owned(),
                    encoding: encoding.token(),
                    size: v.size,
                    file_size: e.size,
                });
            }
        }
        // Every sum of declared sizes a reader may take must fit.
        m.entries
            .values()
            .flat_map(|e| std::iter::once(e.size).chain(e.encodings.values().map(|v| v.size)))
            .try_fold(0u64, u64::checked_add)
            .ok_or(ManifestError::SizesOverflow)?;
        Ok(m)
    }

    /// One blob has one size: two entries (or variants) that name the same
    /// hash with different sizes are a lie that would make a server cut or
    /// pad a body. Checked at decode, so no manifest that passes can carry it.
    fn check_sizes(&self) -> Result<(), ManifestError> {
        let mut seen: std::collections::HashMap<Hash, (u64, &SitePath)> =
            std::collections::HashMap::with_capacity(self.entries.len());
        for (path, e) in &self.entries {
            let blobs = std::iter::once((e.hash, e.size))
                .chain(e.encodings.values().map(|v| (v.hash, v.size)));
            for (hash, size) in blobs {
                match seen.entry(hash) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert((size, path));
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let (other_size, other_path) = *o.get();
                        if other_size != size {
                            return Err(ManifestError::SizeConflict {
                                hash,
                                path: path.as_str().to_owned(),
                                size,
                                other_path: other_path.as_str().to_owned(),
                                other_size,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// What a node checks before it takes a publish, beyond what decoding
    /// checks: rules the server refuses to apply. (Older manifests that
    /// break these still load; the edge filters them.)
    pub fn check_publishable(&self) -> Result<(), ManifestError> {
        if let Some(name) = self.headers.iter().find_map(|r| r.reserved()) {
            return Err(ManifestError::ReservedHeader {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Every blob this version needs: each entry and each variant,
    /// deduplicated, with its size (one per blob: see [`Manifest::decode`]).
    pub fn blobs(&self) -> BTreeMap<Hash, u64> {
        let mut out = BTreeMap::new();
        for e in self.entries.values() {
            out.insert(e.hash, e.size);
            for v in e.encodings.values() {
                out.insert(v.hash, v.size);
            }
        }
        out
    }

    /// The first path that names `hash` (as a file or a variant): what an
    /// error about that blob should name.
    pub fn path_of(&self, hash: &Hash) -> Option<&SitePath> {
        self.entries.iter().find_map(|(p, e)| {
            (e.hash == *hash || e.encodings.values().any(|v| v.hash == *hash)).then_some(p)
        })
    }

    /// The hash of what this version serves (entries and rules), leaving
    /// out its version number, parent and time: two manifests with the same
    /// content hash serve the same bytes the same way.
    pub fn content_hash(&self) -> Hash {
        Hash::of(&encode(&(
            &self.site,
            &self.entries,
            &self.headers,
            &self.redirects,
        )))
    }

    /// The bytes of every distinct blob (files and variants).
    pub fn blobs_size(&self) -> u64 {
        self.blobs()
            .values()
            .fold(0u64, |sum, b| sum.saturating_add(*b))
    }

    /// The sum of all entry sizes (without variants).
    pub fn total_size(&self) -> u64 {
        // Cannot overflow for a decoded manifest; saturates for any other.
        self.entries
            .values()
            .fold(0u64, |sum, e| sum.saturating_add(e.size))
    }
}

/// What a site serves now. Signed by one of the site's publishers. `seq`
/// only grows; a rollback is a new head (seq + 1) naming an older manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub site: Domain,
    pub seq: u64,
    pub manifest: Hash,
}

impl Signable for Head {
    const CONTEXT: &'static [u8] = b"makiatto/head/v1";
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn sample() -> Manifest {
        let mut entries = BTreeMap::new();
        let mut encodings = BTreeMap::new();
        encodings.insert(
            Encoding::Gzip,
            Variant {
                hash: Hash::of(b"gz"),
                size: 3,
            },
        );
        entries.insert(
            SitePath::new("index.html").expect("path"),
            Entry {
                hash: Hash::of(b"<h1>hi</h1>"),
                size: 11,
                content_type: "text/html; charset=utf-8".into(),
                encodings,
            },
        );
        Manifest {
            format: MANIFEST_FORMAT,
            site: Domain::new("example.com").expect("domain"),
            version: 1,
            parent: None,
            created: 1_700_000_000,
            entries,
            headers: vec![],
            redirects: vec![],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::decode(&bytes), Ok(m.clone()));
        assert_eq!(m.hash(), Hash::of(&bytes));
        assert_eq!(m.blobs().len(), 2);
    }

    #[test]
    fn newer_format_is_named() {
        let mut m = sample();
        m.format = MANIFEST_FORMAT + 1;
        assert_eq!(
            Manifest::decode(&m.to_bytes()),
            Err(ManifestError::NewerFormat {
                found: MANIFEST_FORMAT + 1
            })
        );
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut bytes = sample().to_bytes();
        bytes.push(0);
        assert_eq!(Manifest::decode(&bytes), Err(ManifestError::TrailingBytes));
    }

    #[test]
    fn traversal_path_in_manifest_rejected() {
        // Hand-craft a manifest whose path is "../x": replace the path bytes.
        let mut bytes = sample().to_bytes();
        let at = bytes
            .windows(10)
            .position(|w| w == b"index.html")
            .expect("path in bytes");
        bytes[at..at + 10].copy_from_slice(b"../../etcx");
        assert_eq!(
            Manifest::decode(&bytes),
            Err(ManifestError::BadPath {
                path: "../../etcx".into(),
                error: crate::SitePathError::DotSegment
            })
        );
    }

    /// The red team's crash: two paths name one hash with different sizes.
    #[test]
    fn one_blob_has_one_size() {
        let mut m = sample();
        let small = m.entries.values().next().expect("entry").clone();
        let mut liar = small.clone();
        liar.size = 1_000_000;
        liar.encodings.clear();
        m.entries
            .insert(SitePath::new("a.html").expect("path"), liar);
        assert_eq!(
            Manifest::decode(&m.to_bytes()),
            Err(ManifestError::SizeConflict {
                hash: small.hash,
                path: "index.html".into(),
                size: 11,
                other_path: "a.html".into(),
                other_size: 1_000_000,
            })
        );
        // A variant that names a file's blob with another size, too.
        let mut m = sample();
        let mut e = m.entries.values().next().expect("entry").clone();
        let gz = e.encodings.get(&Encoding::Gzip).expect("gzip").hash;
        e.hash = gz;
        e.size = 99;
        e.encodings.clear();
        m.entries.insert(SitePath::new("b.gz").expect("path"), e);
        assert!(matches!(
            Manifest::decode(&m.to_bytes()),
            Err(ManifestError::SizeConflict { path, .. }) if path == "index.html"
        ));
        // The same blob under two names with one size is fine.
        let mut m = sample();
        let e = m.entries.values().next().expect("entry").clone();
        m.entries
            .insert(SitePath::new("copy.html").expect("path"), e);
        assert!(Manifest::decode(&m.to_bytes()).is_ok());
    }

    /// A fetch cuts blobs into pieces by their declared sizes: a variant
    /// declared at 2^60 bytes beside an 11-byte file would be 2^40 pieces.
    #[test]
    fn a_variant_larger_than_its_file_is_refused() {
        let mut m = sample();
        let e = m.entries.values_mut().next().expect("entry");
        let file_size = e.size;
        e.encodings.get_mut(&Encoding::Gzip).expect("gzip").size = 1 << 60;
        assert_eq!(
            Manifest::decode(&m.to_bytes()),
            Err(ManifestError::VariantTooLarge {
                path: "index.html".into(),
                encoding: "gzip",
                size: 1 << 60,
                file_size,
            })
        );
    }

    #[test]
    fn two_normalisation_forms_of_one_name_are_refused() {
        let e = sample().entries.values().next().expect("entry").clone();
        let mut raw = BTreeMap::new();
        raw.insert("caf\u{e9}.html".to_owned(), e.clone());
        raw.insert("cafe\u{301}.html".to_owned(), e);
        #[derive(Serialize)]
        struct Wire<'a> {
            format: u16,
            site: &'a str,
            version: u64,
            parent: Option<Hash>,
            created: u64,
            entries: BTreeMap<String, Entry>,
            headers: Vec<HeaderRule>,
            redirects: Vec<RedirectRule>,
        }
        let bytes = encode(&Wire {
            format: MANIFEST_FORMAT,
            site: "example.com",
            version: 1,
            parent: None,
            created: 0,
            entries: raw,
            headers: vec![],
            redirects: vec![],
        });
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::DuplicatePath { .. })
        ));
    }

    #[test]
    fn rules_inside_a_manifest_are_checked_like_parsed_ones() {
        let pattern = crate::rules::Pattern::new("/a").expect("pattern");
        let mut m = sample();
        m.redirects.push(RedirectRule {
            from: pattern.clone(),
            to: "/b".into(),
            status: 100,
        });
        assert!(matches!(
            Manifest::decode(&m.to_bytes()),
            Err(ManifestError::BadRule { index: 0, .. })
        ));
        let mut m = sample();
        m.redirects.push(RedirectRule {
            from: pattern.clone(),
            to: "/b\r\nSet-Cookie: x".into(),
            status: 301,
        });
        assert!(Manifest::decode(&m.to_bytes()).is_err());
        // A pattern the parser refuses (two splats: quadratic matching).
        let mut m = sample();
        m.headers.push(HeaderRule {
            pattern: unchecked_pattern("/*/*"),
            set: vec![("x-a".into(), "b".into())],
            unset: vec![],
        });
        assert!(matches!(
            Manifest::decode(&m.to_bytes()),
            Err(ManifestError::BadRule { index: 0, .. })
        ));
        // Reserved headers load (old manifests keep serving, filtered) but
        // are not publishable.
        let mut m = sample();
        m.headers.push(HeaderRule {
            pattern,
            set: vec![("content-length".into(), "1".into())],
            unset: vec![],
        });
        let m = Manifest::decode(&m.to_bytes()).expect("decodes");
        assert_eq!(
            m.check_publishable(),
            Err(ManifestError::ReservedHeader {
                name: "content-length".into()
            })
        );
    }

    /// A pattern built without `Pattern::new`'s checks, as a hostile
    /// client's encoder would.
    fn unchecked_pattern(s: &str) -> crate::rules::Pattern {
        let bytes = encode(&s.to_owned());
        postcard::from_bytes(&bytes).expect("pattern from bytes")
    }

    #[test]
    fn sizes_past_2_64_and_too_many_entries_are_refused() {
        let mut m = sample();
        let big = u64::MAX / 2 + 1;
        let first = m.entries.values().next().cloned().expect("an entry");
        for (i, name) in ["a.bin", "b.bin"].into_iter().enumerate() {
            let mut e = first.clone();
            e.size = big;
            e.hash = Hash::of(&[i as u8]);
            e.encodings.clear();
            m.entries.insert(SitePath::new(name).expect("path"), e);
        }
        assert_eq!(
            Manifest::decode(&m.to_bytes()),
            Err(ManifestError::SizesOverflow)
        );

        // A map that claims more entries than allowed is refused from its
        // length alone, before any entry is read.
        let mut bytes = Vec::new();
        let head = (1u16, "a.test".to_owned(), 1u64, None::<Hash>, 0u64);
        bytes.extend(postcard::to_stdvec(&head).expect("encode"));
        bytes.extend(postcard::to_stdvec(&(MAX_ENTRIES as u64 + 1)).expect("encode"));
        assert_eq!(
            Manifest::decode(&bytes),
            Err(ManifestError::TooManyEntries(MAX_ENTRIES + 1))
        );
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&bytes);
        }

        #[test]
        fn mutated_manifests_never_panic(pos in 0usize..200, byte in any::<u8>()) {
            let mut bytes = sample().to_bytes();
            let i = pos % bytes.len();
            bytes[i] = byte;
            if let Ok(m) = Manifest::decode(&bytes) {
                prop_assert_eq!(Manifest::decode(&m.to_bytes()), Ok(m));
            }
        }
    }
}
