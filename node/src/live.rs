//! The live view: for each site, the version the edge serves now, with
//! everything a response needs precomputed (ETags, content types), so a
//! request costs a hash lookup. Swapped whole per site on publish and
//! rollback: a reader sees the old version or the new one, never a mix.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use http::HeaderValue;
use maki_protocol::{Domain, Encoding, Entry, Hash, Manifest, SitePath, Variant};

/// A file ready to serve.
#[derive(Debug)]
pub struct Served {
    pub entry: Entry,
    pub content_type: Option<HeaderValue>,
    pub etag: HeaderValue,
    /// Variants in preference order (br before gzip), each with its ETag.
    pub variants: Vec<(Encoding, Variant, HeaderValue)>,
}

// A deep copy: `HeaderValue`s share a refcount when cloned, and each edge
// worker must own its copies outright (see `edge/local.rs`).
impl Clone for Served {
    fn clone(&self) -> Self {
        let own =
            |v: &HeaderValue| HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
        Self {
            entry: self.entry.clone(),
            content_type: self.content_type.as_ref().map(own),
            etag: own(&self.etag),
            variants: self
                .variants
                .iter()
                .map(|(e, v, t)| (*e, *v, own(t)))
                .collect(),
        }
    }
}

/// A site version being served.
#[derive(Debug, Clone)]
pub struct LiveSite {
    pub seq: u64,
    pub manifest_hash: Hash,
    pub manifest: Manifest,
    files: HashMap<Box<str>, Served>,
}

pub fn etag(hash: &Hash) -> HeaderValue {
    // 64 hex characters in quotes: always a valid header value.
    HeaderValue::try_from(format!("\"{hash}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

impl LiveSite {
    pub fn new(seq: u64, manifest_hash: Hash, manifest: Manifest) -> Self {
        let files = manifest
            .entries
            .iter()
            .map(|(path, entry)| {
                let served = Served {
                    entry: entry.clone(),
                    content_type: HeaderValue::try_from(entry.content_type.as_str()).ok(),
                    etag: etag(&entry.hash),
                    variants: entry
                        .encodings
                        .iter()
                        .map(|(enc, v)| (*enc, *v, etag(&v.hash)))
                        .collect(),
                };
                (Box::from(path.as_str()), served)
            })
            .collect();
        Self {
            seq,
            manifest_hash,
            manifest,
            files,
        }
    }

    /// The file at a site-relative path (`a/b.html`), NFC-normalising it
    /// only when the fast exact lookup misses.
    pub fn file(&self, rel: &str) -> Option<&Served> {
        if let Some(s) = self.files.get(rel) {
            return Some(s);
        }
        let p = SitePath::new(rel).ok()?;
        if p.as_str() == rel {
            return None;
        }
        self.files.get(p.as_str())
    }
}

/// What the edge serves, per site. Edge workers keep private copies and
/// refresh them when [`Live::generation`] moves, so serving a request
/// touches no memory another core writes.
#[derive(Debug, Default)]
pub struct Live {
    sites: RwLock<HashMap<Domain, Arc<LiveSite>>>,
    generation: AtomicU64,
}

impl Live {
    pub fn get(&self, domain: &str) -> Option<Arc<LiveSite>> {
        let sites = self.sites.read().ok()?;
        // Host headers are case-insensitive; our domains are lowercase.
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            return sites.get(domain.to_ascii_lowercase().as_str()).cloned();
        }
        sites.get(domain).cloned()
    }

    /// Bumped after every change; cheap to read from any thread.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every site, for a worker refreshing its copy.
    pub fn snapshot(&self) -> Vec<(Domain, Arc<LiveSite>)> {
        self.sites
            .read()
            .map(|s| s.iter().map(|(d, l)| (d.clone(), l.clone())).collect())
            .unwrap_or_default()
    }

    pub fn set(&self, domain: Domain, site: LiveSite) {
        if let Ok(mut sites) = self.sites.write() {
            sites.insert(domain, Arc::new(site));
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn remove(&self, domain: &Domain) {
        if let Ok(mut sites) = self.sites.write() {
            sites.remove(domain);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }
}
