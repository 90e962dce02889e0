//! The live view: for each site, the version the edge serves now, laid
//! out for a request to cost one hash lookup. Swapped whole per site on
//! publish and rollback: a reader sees the old version or the new one,
//! never a mix.
//!
//! One immutable copy per version, shared by every edge worker: a site of
//! a million files costs its memory once, not once per core, and a new
//! version goes live without any worker copying it. The index of blobs the
//! served versions reference (what `/.maki/blob/<hash>` may serve) lives
//! here too. Dropping a large version is itself slow, so it never happens
//! on an edge worker: replaced versions wait in a graveyard until no worker
//! holds them, and are dropped off the serving threads ([`Live::sweep`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use http::HeaderValue;
use maki_protocol::{
    Domain, Encoding, Hash, Manifest, SitePath, Variant,
    rules::{HeaderRule, RedirectRule},
};

/// A file ready to serve: what a response needs, in 64 bytes plus its
/// variants (header values are built per request, so no two cores ever
/// write one shared reference count).
#[derive(Debug)]
pub struct Served {
    pub hash: Hash,
    pub size: u64,
    /// Index into [`LiveSite::content_type`]; `u16::MAX` when none is valid.
    content_type: u16,
    /// Variants in preference order (br before gzip).
    pub variants: Box<[(Encoding, Variant)]>,
}

/// What a publish or a listing needs to know of the version, without its
/// entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub version: u64,
    pub created: u64,
    pub files: u64,
    pub bytes: u64,
    /// The hash of what the version serves (entries and rules; not its
    /// version number or parent): equal for an unchanged republish.
    pub content: Hash,
}

/// A site version being served.
#[derive(Debug)]
pub struct LiveSite {
    pub seq: u64,
    pub manifest_hash: Hash,
    pub summary: Summary,
    pub headers: Vec<HeaderRule>,
    pub redirects: Vec<RedirectRule>,
    files: HashMap<Box<str>, Served>,
    /// The distinct content types of the site's files.
    content_types: Vec<HeaderValue>,
}

/// A strong ETag: the hash in quotes. Built per response (66 bytes on the
/// stack, one small allocation).
pub fn etag(hash: &Hash) -> HeaderValue {
    let mut buf = [b'"'; 66];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in hash.as_bytes().iter().enumerate() {
        buf[1 + 2 * i] = HEX[usize::from(b >> 4)];
        buf[2 + 2 * i] = HEX[usize::from(b & 15)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("\"\""))
}

impl LiveSite {
    pub fn new(seq: u64, manifest_hash: Hash, manifest: Manifest) -> Self {
        let summary = Summary {
            version: manifest.version,
            created: manifest.created,
            files: manifest.entries.len() as u64,
            bytes: manifest.total_size(),
            content: manifest.content_hash(),
        };
        let mut content_types: Vec<HeaderValue> = Vec::new();
        let mut type_index: HashMap<String, u16> = HashMap::new();
        let mut files = HashMap::with_capacity(manifest.entries.len());
        for (path, entry) in manifest.entries {
            let content_type = match type_index.get(&entry.content_type) {
                Some(i) => *i,
                None => {
                    let i = match HeaderValue::try_from(entry.content_type.as_str()) {
                        Ok(v) if content_types.len() < usize::from(u16::MAX) => {
                            content_types.push(v);
                            (content_types.len() - 1) as u16
                        }
                        _ => u16::MAX,
                    };
                    type_index.insert(entry.content_type, i);
                    i
                }
            };
            let served = Served {
                hash: entry.hash,
                size: entry.size,
                content_type,
                variants: entry.encodings.into_iter().collect(),
            };
            files.insert(path.into_string().into_boxed_str(), served);
        }
        Self {
            seq,
            manifest_hash,
            summary,
            headers: manifest.headers,
            redirects: manifest.redirects,
            files,
            content_types,
        }
    }

    /// [`LiveSite::new`] off the async threads: a version of a million
    /// files takes a while to lay out, and nothing else should wait for it.
    pub async fn prepare(
        seq: u64,
        manifest_hash: Hash,
        manifest: Manifest,
    ) -> Result<Self, tokio::task::JoinError> {
        if manifest.entries.len() < 4096 {
            return Ok(Self::new(seq, manifest_hash, manifest));
        }
        tokio::task::spawn_blocking(move || Self::new(seq, manifest_hash, manifest)).await
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

    /// A file's Content-Type, as a header value of this response's own.
    pub fn content_type(&self, file: &Served) -> Option<HeaderValue> {
        let shared = self.content_types.get(usize::from(file.content_type))?;
        HeaderValue::from_bytes(shared.as_bytes()).ok()
    }

    /// Every blob this version serves (files and variants).
    fn blobs(&self) -> impl Iterator<Item = Hash> + '_ {
        self.files
            .values()
            .flat_map(|s| std::iter::once(s.hash).chain(s.variants.iter().map(|(_, v)| v.hash)))
    }
}

/// What the edge serves, per site.
#[derive(Debug, Default)]
pub struct Live {
    sites: RwLock<HashMap<Domain, Arc<LiveSite>>>,
    /// Other names of sites: alias → the site's domain.
    aliases: RwLock<HashMap<Domain, Domain>>,
    /// How many served versions reference each blob.
    referenced: RwLock<HashMap<Hash, u32>>,
    generation: AtomicU64,
    /// Replaced versions, until no worker holds them (see [`Live::sweep`]).
    graveyard: Mutex<Vec<Arc<LiveSite>>>,
}

impl Live {
    /// The site served at `domain`, its own or one it is an alias of.
    pub fn get(&self, domain: &str) -> Option<Arc<LiveSite>> {
        // Host headers are case-insensitive; our domains are lowercase.
        let lower;
        let domain = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = domain.to_ascii_lowercase();
            lower.as_str()
        } else {
            domain
        };
        let sites = self.sites.read().ok()?;
        if let Some(site) = sites.get(domain) {
            return Some(site.clone());
        }
        let aliases = self.aliases.read().ok()?;
        sites.get(aliases.get(domain)?).cloned()
    }

    /// The domain of the site served at `name` (its own or one it is an
    /// alias of).
    pub fn site_of(&self, name: &str) -> Option<Domain> {
        let name = name.to_ascii_lowercase();
        if self.sites.read().ok()?.contains_key(name.as_str()) {
            return Domain::new(&name).ok();
        }
        let aliases = self.aliases.read().ok()?;
        aliases.get(name.as_str()).cloned()
    }

    /// Alias → site domain, as the records say now (see [`aliases_of`]).
    pub fn aliases(&self) -> HashMap<Domain, Domain> {
        self.aliases.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Takes the aliases the records give now; true if they changed.
    pub fn set_aliases(&self, next: HashMap<Domain, Domain>) -> bool {
        let Ok(mut aliases) = self.aliases.write() else {
            return false;
        };
        if *aliases == next {
            return false;
        }
        *aliases = next;
        drop(aliases);
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Bumped after every change; cheap to read from any thread.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every site, for a worker refreshing its map.
    /// Reads every served version under one lock: for a pass over all
    /// sites, one lookup each instead of one lock each.
    pub fn with_all<R>(&self, f: impl FnOnce(&HashMap<Domain, Arc<LiveSite>>) -> R) -> Option<R> {
        self.sites.read().ok().map(|s| f(&s))
    }

    /// The site versions served now, as members tell each other.
    pub fn holdings(&self) -> Vec<maki_protocol::sync::Holding> {
        self.snapshot()
            .into_iter()
            .map(|(site, l)| maki_protocol::sync::Holding {
                site,
                seq: l.seq,
                manifest: l.manifest_hash,
            })
            .collect()
    }

    pub fn snapshot(&self) -> Vec<(Domain, Arc<LiveSite>)> {
        self.sites
            .read()
            .map(|s| s.iter().map(|(d, l)| (d.clone(), l.clone())).collect())
            .unwrap_or_default()
    }

    /// True when a served version references `hash`: the only blobs the
    /// public may fetch by hash. Manifests, older kept versions, uploads
    /// in progress and what was taken down are not among them.
    pub fn references(&self, hash: &Hash) -> bool {
        self.referenced
            .read()
            .is_ok_and(|r| r.get(hash).is_some_and(|n| *n > 0))
    }

    /// How many sites are served.
    pub fn len(&self) -> usize {
        self.sites.read().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn set(&self, domain: Domain, site: LiveSite) {
        let site = Arc::new(site);
        self.count(&site, true);
        let old = match self.sites.write() {
            Ok(mut sites) => sites.insert(domain, site),
            Err(_) => None,
        };
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(old) = old {
            self.retire(old);
        }
    }

    pub fn remove(&self, domain: &Domain) {
        let old = match self.sites.write() {
            Ok(mut sites) => sites.remove(domain),
            Err(_) => None,
        };
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(old) = old {
            self.retire(old);
        }
    }

    /// Takes the versions no worker holds any more out of the graveyard;
    /// the caller drops them where a slow drop harms nobody.
    pub fn sweep(&self) -> Vec<Arc<LiveSite>> {
        let Ok(mut graveyard) = self.graveyard.lock() else {
            return Vec::new();
        };
        let (dead, alive) = std::mem::take(&mut *graveyard)
            .into_iter()
            .partition(|s| Arc::strong_count(s) == 1);
        *graveyard = alive;
        dead
    }

    fn retire(&self, old: Arc<LiveSite>) {
        // Its blobs stop being served at once, on every worker.
        self.count(&old, false);
        if let Ok(mut graveyard) = self.graveyard.lock() {
            graveyard.push(old);
        }
    }

    fn count(&self, site: &LiveSite, add: bool) {
        let Ok(mut referenced) = self.referenced.write() else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        for hash in site.blobs().filter(|h| seen.insert(*h)) {
            if add {
                *referenced.entry(hash).or_insert(0) += 1;
            } else if let Some(n) = referenced.get_mut(&hash) {
                *n -= 1;
                if *n == 0 {
                    referenced.remove(&hash);
                }
            }
        }
    }
}

/// Alias → site domain for every site in `dir`. The admin RPC refuses a
/// clash, but records from two admins racing can still claim one name
/// twice: a site's own domain then wins over any alias, and among sites
/// the one whose domain sorts first, so every node settles it alike.
pub fn aliases_of(dir: &crate::directory::Directory) -> HashMap<Domain, Domain> {
    let mut sites: Vec<_> = dir.sites().collect();
    sites.sort_by(|a, b| a.domain.cmp(&b.domain));
    let mut out = HashMap::new();
    for site in &sites {
        for alias in &site.aliases {
            if dir.site(alias).is_none() {
                out.entry(alias.clone())
                    .or_insert_with(|| site.domain.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use maki_protocol::{Entry, MANIFEST_FORMAT};

    use super::*;

    fn site(files: &[(&str, &[u8])]) -> Manifest {
        let mut entries = BTreeMap::new();
        for (path, body) in files {
            entries.insert(
                SitePath::new(path).expect("path"),
                Entry {
                    hash: Hash::of(body),
                    size: body.len() as u64,
                    content_type: "text/html".into(),
                    encodings: BTreeMap::new(),
                },
            );
        }
        Manifest {
            format: MANIFEST_FORMAT,
            site: Domain::new("a.test").expect("domain"),
            version: 1,
            parent: None,
            created: 0,
            entries,
            headers: vec![],
            redirects: vec![],
        }
    }

    #[test]
    fn only_served_blobs_are_referenced_and_takedowns_are_immediate() {
        let live = Live::default();
        let d = Domain::new("a.test").expect("domain");
        let v1 = site(&[("a.html", b"a"), ("b.html", b"b")]);
        live.set(d.clone(), LiveSite::new(1, v1.hash(), v1.clone()));
        assert!(live.references(&Hash::of(b"a")));
        assert!(!live.references(&v1.hash()), "manifests are never served");
        // A republish without b.html takes it down.
        let v2 = site(&[("a.html", b"a")]);
        live.set(d.clone(), LiveSite::new(2, v2.hash(), v2));
        assert!(live.references(&Hash::of(b"a")));
        assert!(!live.references(&Hash::of(b"b")));
        // The replaced version is dropped only once nobody holds it.
        let held = live.get("a.test").expect("served");
        live.remove(&d);
        assert!(!live.references(&Hash::of(b"a")));
        assert_eq!(live.sweep().len(), 1, "v1: nobody holds it");
        assert!(live.sweep().is_empty(), "v2 is still held");
        drop(held);
        assert_eq!(live.sweep().len(), 1);
    }

    #[test]
    fn etags_are_the_quoted_hex_hash() {
        let h = Hash::of(b"x");
        assert_eq!(etag(&h).as_bytes(), format!("\"{h}\"").as_bytes());
    }
}
