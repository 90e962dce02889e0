//! Walking and hashing a site folder into manifest entries.
//!
//! Dot-files and dot-folders are skipped (`.git`, `.DS_Store`) except
//! `.well-known`; symlinks are followed only while they stay inside the
//! folder. Files are hashed in parallel; compressible ones get br and gzip
//! variants when those are smaller. A cache keyed by (path, size, mtime,
//! inode) makes re-scanning an unchanged tree cost only `stat` calls.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
};

use maki_protocol::{
    Encoding, Entry, Hash, SitePath, Variant,
    rules::{self, HeaderRule, RedirectRule},
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Files larger than this are not precompressed (they are rarely text).
const MAX_COMPRESS: u64 = 32 << 20;
/// Files smaller than this gain nothing from compression.
const MIN_COMPRESS: u64 = 256;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the file name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: {message}")]
    BadPath { path: PathBuf, message: String },
    #[error(transparent)]
    Rule(#[from] rules::RuleError),
    #[error("{0} is not a folder")]
    NotADir(PathBuf),
    #[error("{a} and {b} are both {path:?} once Unicode-normalised (NFC); rename one of them")]
    SameName {
        a: PathBuf,
        b: PathBuf,
        path: String,
    },
    #[error("the site cannot be published: {0}")]
    Manifest(maki_protocol::ManifestError),
    #[error(
        "the manifest of {files} files is {bytes} bytes; one publish can carry at most {limit}: publish fewer files (or shorter paths) per site"
    )]
    TooLarge {
        files: usize,
        bytes: u64,
        limit: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A scanned site: entries, rules, and where each blob's bytes come from.
#[derive(Debug, Default)]
pub struct Scanned {
    pub entries: BTreeMap<SitePath, Entry>,
    pub headers: Vec<HeaderRule>,
    pub redirects: Vec<RedirectRule>,
    /// For each blob: the file it comes from and the coding applied.
    pub sources: HashMap<Hash, (PathBuf, Option<Encoding>)>,
    /// Symlinks skipped because they point outside the folder.
    pub skipped_links: Vec<PathBuf>,
}

/// What `stat` says of a file. ctime is in the key because a user can set
/// mtime (`touch -d`, `cp -p`, `rsync -t`) but not ctime: a changed file
/// with its old size and mtime still misses the cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CacheKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached {
    key: CacheKey,
    hash: Hash,
    encodings: BTreeMap<Encoding, Variant>,
    /// The wall clock when the file was hashed. A file changed within the
    /// same clock tick as that (a "racily clean" entry, as git calls it)
    /// can keep its mtime and size: such entries are hashed again.
    hashed_ns: i128,
}

/// A file changed this close to when it was hashed is not trusted from
/// the cache (coarse file system timestamps).
const RACY_NS: i128 = 2_000_000_000;

/// What starts a cache file: a format tag, then the BLAKE3 of the rest.
const CACHE_MAGIC: &[u8] = b"makicache2";

/// Stat results → hashes, persisted between runs.
///
/// Only an optimisation, so it is never trusted blindly: a file whose bytes
/// fail their checksum is ignored whole, an entry is used only while size,
/// mtime, ctime and inode all match and it is not racily clean, and a scan
/// whose entries contradict each other (one hash with two sizes) is redone
/// without it (see [`crate::publish::build`]).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    files: HashMap<String, Cached>,
}

impl HashCache {
    /// Loads a cache file; a missing, unreadable or corrupted one is just
    /// empty.
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| Self::decode(&b))
            .unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(CACHE_MAGIC)?;
        let (sum, body) = rest.split_at_checked(32)?;
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        postcard::from_bytes(body).ok()
    }

    fn encode(&self) -> Option<Vec<u8>> {
        let body = postcard::to_stdvec(self).ok()?;
        let mut out = Vec::with_capacity(CACHE_MAGIC.len() + 32 + body.len());
        out.extend_from_slice(CACHE_MAGIC);
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Forgets every entry: the next scan hashes every file.
    pub fn clear(&mut self) {
        self.files.clear();
    }

    /// Writes the cache atomically (temp file + rename). Best effort.
    pub fn save(&self, path: &Path) {
        let Some(bytes) = self.encode() else {
            return;
        };
        let Some(parent) = path.parent() else {
            return;
        };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = path.with_extension("tmp");
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|_| std::fs::rename(&tmp, path));
        if ok.is_err() {
            std::fs::remove_file(&tmp).ok();
        }
    }
}

struct Found {
    site_path: SitePath,
    fs_path: PathBuf,
    key: CacheKey,
}

/// Scans `root`.
pub fn scan(root: &Path, cache: &mut HashCache) -> Result<Scanned, ScanError> {
    let canon = root.canonicalize().map_err(io(root))?;
    if !canon.is_dir() {
        return Err(ScanError::NotADir(root.to_owned()));
    }
    let mut out = Scanned::default();
    let mut found = Vec::new();
    let mut visited = HashSet::new();
    walk(&canon, &canon, "", &mut found, &mut out, &mut visited)?;
    // Two names that differ only in Unicode normalisation (NFC and NFD, as
    // macOS and Linux may each write) are one site path: say so rather than
    // let one silently replace the other.
    found.sort_by(|a, b| a.site_path.cmp(&b.site_path));
    if let Some(w) = found.windows(2).find(|w| w[0].site_path == w[1].site_path) {
        return Err(ScanError::SameName {
            a: w[0].fs_path.clone(),
            b: w[1].fs_path.clone(),
            path: w[0].site_path.as_str().to_owned(),
        });
    }

    for (name, parse) in [("_headers", true), ("_redirects", false)] {
        let p = canon.join(name);
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(io(&p))?;
            if parse {
                out.headers = rules::parse_headers(&text)?;
            } else {
                out.redirects = rules::parse_redirects(&text)?;
            }
        }
    }

    let results: Vec<Result<(Found, Cached), ScanError>> = found
        .into_par_iter()
        .map(|f| {
            if let Some(c) = cache.files.get(f.site_path.as_str())
                && c.key == f.key
                && c.key.mtime_ns.max(c.key.ctime_ns) + RACY_NS < c.hashed_ns
            {
                let c = c.clone();
                return Ok((f, c));
            }
            let c = hash_file(&f)?;
            Ok((f, c))
        })
        .collect();

    cache.files.clear();
    for r in results {
        let (f, c) = r?;
        let content_type = content_type(f.site_path.as_str());
        out.sources.insert(c.hash, (f.fs_path.clone(), None));
        for (enc, v) in &c.encodings {
            out.sources
                .entry(v.hash)
                .or_insert((f.fs_path.clone(), Some(*enc)));
        }
        out.entries.insert(
            f.site_path.clone(),
            Entry {
                hash: c.hash,
                size: f.key.size,
                content_type,
                encodings: c.encodings.clone(),
            },
        );
        cache.files.insert(f.site_path.as_str().to_owned(), c);
    }
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    prefix: &str,
    found: &mut Vec<Found>,
    out: &mut Scanned,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), ScanError> {
    let canon_dir = dir.canonicalize().map_err(io(dir))?;
    if !visited.insert(canon_dir) {
        return Ok(()); // a symlink loop inside the folder
    }
    let mut items: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    items.sort_by_key(|e| e.file_name());
    for item in items {
        let path = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|_| ScanError::NotUtf8 { path: path.clone() })?;
        if name.starts_with('.') && name != ".well-known" {
            continue;
        }
        if prefix.is_empty() && (name == "_headers" || name == "_redirects") {
            continue;
        }
        let mut meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let mut real = path.clone();
        if meta.file_type().is_symlink() {
            match path.canonicalize() {
                Ok(target) if target.starts_with(root) => {
                    meta = std::fs::metadata(&target).map_err(io(&target))?;
                    real = target;
                }
                _ => {
                    out.skipped_links.push(path);
                    continue;
                }
            }
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if meta.is_dir() {
            walk(root, &real, &rel, found, out, visited)?;
        } else if meta.is_file() {
            let site_path = SitePath::new(&rel).map_err(|e| ScanError::BadPath {
                path: path.clone(),
                message: e.to_string(),
            })?;
            found.push(Found {
                site_path,
                fs_path: real,
                key: cache_key(&meta),
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn cache_key(meta: &std::fs::Metadata) -> CacheKey {
    use std::os::unix::fs::MetadataExt;
    CacheKey {
        size: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        ino: meta.ino(),
    }
}

#[cfg(not(unix))]
fn cache_key(meta: &std::fs::Metadata) -> CacheKey {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    CacheKey {
        size: meta.len(),
        mtime_ns,
        ctime_ns: 0,
        ino: 0,
    }
}

fn hash_file(f: &Found) -> Result<Cached, ScanError> {
    let hashed_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let mut hasher = blake3::Hasher::new();
    // Big files are hashed with all cores; small ones are already spread
    // across cores one file each.
    if f.key.size > (16 << 20) {
        hasher
            .update_mmap_rayon(&f.fs_path)
            .map_err(io(&f.fs_path))?;
    } else {
        hasher.update_mmap(&f.fs_path).map_err(io(&f.fs_path))?;
    }
    let hash = Hash::from(hasher.finalize());
    let mut encodings = BTreeMap::new();
    let size = f.key.size;
    if compressible(&content_type(f.site_path.as_str()))
        && (MIN_COMPRESS..=MAX_COMPRESS).contains(&size)
    {
        let data = std::fs::read(&f.fs_path).map_err(io(&f.fs_path))?;
        for enc in [Encoding::Br, Encoding::Gzip] {
            let packed = compress(&data, enc);
            if (packed.len() as u64) < size {
                encodings.insert(
                    enc,
                    Variant {
                        hash: Hash::of(&packed),
                        size: packed.len() as u64,
                    },
                );
            }
        }
    }
    Ok(Cached {
        key: f.key.clone(),
        hash,
        encodings,
        hashed_ns,
    })
}

/// Deterministic compression: the same input always gives the same bytes,
/// so a variant's hash can be recomputed when it must be uploaded.
pub fn compress(data: &[u8], enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Br => {
            let mut out = Vec::with_capacity(data.len() / 3);
            let params = brotli::enc::BrotliEncoderParams {
                quality: 9,
                lgwin: 22,
                ..Default::default()
            };
            let mut input = data;
            if brotli::BrotliCompress(&mut input, &mut out, &params).is_err() {
                return data.to_vec();
            }
            out
        }
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(data.len() / 3),
                flate2::Compression::best(),
            );
            if e.write_all(data).is_err() {
                return data.to_vec();
            }
            e.finish().unwrap_or_else(|_| data.to_vec())
        }
    }
}

/// The Content-Type for a path, with a charset for text.
pub fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let t = mime.essence_str();
    let texty = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            t,
            "application/javascript" | "application/json" | "image/svg+xml" | "application/xml"
        );
    if texty {
        format!("{t}; charset=utf-8")
    } else {
        t.to_owned()
    }
}

fn compressible(content_type: &str) -> bool {
    let t = content_type.split(';').next().unwrap_or_default();
    t.starts_with("text/")
        || matches!(
            t,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "image/svg+xml"
                | "image/x-icon"
                | "image/vnd.microsoft.icon"
                | "font/ttf"
                | "font/otf"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_skips_and_hashes() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("blog"))?;
        std::fs::create_dir_all(root.join(".git"))?;
        std::fs::create_dir_all(root.join(".well-known"))?;
        std::fs::write(root.join("index.html"), "<h1>hello</h1>".repeat(100))?;
        std::fs::write(root.join("blog/post.html"), "post")?;
        std::fs::write(root.join(".git/HEAD"), "x")?;
        std::fs::write(root.join(".DS_Store"), "x")?;
        std::fs::write(root.join(".well-known/security.txt"), "Contact: x")?;
        std::fs::write(root.join("_redirects"), "/old /new 302\n")?;
        std::fs::write(dir.path().join("secret"), "outside")?;
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak"))?;
        std::os::unix::fs::symlink(root.join("blog/post.html"), root.join("alias.html"))?;

        let mut cache = HashCache::default();
        let s = scan(&root, &mut cache)?;
        let paths: Vec<&str> = s.entries.keys().map(|p| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".well-known/security.txt",
                "alias.html",
                "blog/post.html",
                "index.html"
            ]
        );
        assert_eq!(s.skipped_links.len(), 1);
        assert_eq!(s.redirects.len(), 1);
        let index = &s.entries[&SitePath::new("index.html")?];
        assert_eq!(
            index.hash,
            Hash::of("<h1>hello</h1>".repeat(100).as_bytes())
        );
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        assert!(index.encodings.contains_key(&Encoding::Br));
        assert!(index.encodings.contains_key(&Encoding::Gzip));
        // Variants are reproducible from their source.
        let br = index.encodings[&Encoding::Br];
        assert_eq!(
            Hash::of(&compress(
                "<h1>hello</h1>".repeat(100).as_bytes(),
                Encoding::Br
            )),
            br.hash
        );

        // A second scan is served from the cache and gives the same result.
        let again = scan(&root, &mut cache)?;
        assert_eq!(again.entries, s.entries);
        Ok(())
    }

    #[test]
    fn hsts_in_maki_toml_is_a_header_rule_the_sites_own_may_override()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::write(root.join("index.html"), b"hi")?;
        std::fs::write(
            root.join("_headers"),
            "/*\n  Strict-Transport-Security: max-age=60\n",
        )?;
        let site = maki_protocol::Domain::new("a.test")?;
        let extras = crate::publish::Extras { hsts: true };
        let (m, _) =
            crate::publish::build(root, &site, &mut HashCache::default(), None, 1, &extras)?;
        let sts = |r: &rules::HeaderRule| {
            r.set
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("strict-transport-security"))
                .map(|(_, v)| v.clone())
        };
        let values: Vec<_> = m.headers.iter().filter_map(sts).collect();
        // maki.toml's first, the site's own after it (the later wins).
        assert_eq!(values, [crate::publish::HSTS, "max-age=60"]);
        let (m, _) = crate::publish::build(
            root,
            &site,
            &mut HashCache::default(),
            None,
            1,
            &Default::default(),
        )?;
        assert_eq!(m.headers.iter().filter_map(sts).count(), 1);
        Ok(())
    }

    /// The red team planted a lie through this cache: a.html's entry named
    /// z.html's hash. The manifest must come out honest anyway.
    #[test]
    fn a_lying_cache_entry_never_reaches_the_manifest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = &dir.path().join("site");
        std::fs::create_dir(root)?;
        std::fs::write(root.join("a.html"), vec![b'a'; 1000])?;
        std::fs::write(root.join("z.html"), b"0123456789")?;
        let site = maki_protocol::Domain::new("a.test")?;
        let mut cache = HashCache::default();
        let (honest, _) =
            crate::publish::build(root, &site, &mut cache, None, 1, &Default::default())?;
        // Make every entry old enough to be trusted, then plant the lie.
        for c in cache.files.values_mut() {
            c.hashed_ns += 10 * RACY_NS;
        }
        let z = cache.files["z.html"].hash;
        cache.files.get_mut("a.html").ok_or("entry")?.hash = z;
        // Round trip through the file: the checksum covers the planted
        // bytes (the attacker wrote a valid file).
        let file = dir.path().join("cache");
        cache.save(&file);
        let mut cache = HashCache::load(&file);
        assert_eq!(cache.files["a.html"].hash, z);
        let (built, _) =
            crate::publish::build(root, &site, &mut cache, None, 1, &Default::default())?;
        assert_eq!(built.entries, honest.entries);

        // A corrupted file (one flipped byte) is ignored whole.
        let mut bytes = std::fs::read(&file)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, &bytes)?;
        assert!(HashCache::load(&file).files.is_empty());
        Ok(())
    }

    /// Same size, same mtime (restored by `touch -d` or `cp -p`), other
    /// bytes: ctime tells, and the file is hashed again.
    #[test]
    fn a_changed_file_with_its_old_mtime_is_hashed_again() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.html");
        std::fs::write(&path, b"aaaa")?;
        let mtime = std::fs::metadata(&path)?.modified()?;
        let mut cache = HashCache::default();
        scan(dir.path(), &mut cache)?;
        for c in cache.files.values_mut() {
            c.hashed_ns += 10 * RACY_NS;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"bbbb")?;
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(mtime)?;
        let s = scan(dir.path(), &mut cache)?;
        assert_eq!(s.entries[&SitePath::new("a.html")?].hash, Hash::of(b"bbbb"));

        // And a file changed right after it was hashed is not trusted.
        let mut cache = HashCache::default();
        scan(dir.path(), &mut cache)?;
        let c = &cache.files["a.html"];
        assert!(c.key.mtime_ns.max(c.key.ctime_ns) + RACY_NS >= c.hashed_ns);
        Ok(())
    }

    #[test]
    fn two_normalisation_forms_of_one_name_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("caf\u{e9}.html"), b"nfc")?;
        std::fs::write(dir.path().join("cafe\u{301}.html"), b"nfd")?;
        let err = scan(dir.path(), &mut HashCache::default()).expect_err("same name");
        assert!(matches!(err, ScanError::SameName { .. }), "{err}");
        assert!(err.to_string().contains("rename one"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_rules_fail_the_scan() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("_headers"), "/a\n  Bad Header: x\n")?;
        let err = scan(dir.path(), &mut HashCache::default()).expect_err("bad rule");
        assert_eq!(
            err.to_string(),
            "_headers:2: \"Bad Header\" is not a valid header name"
        );
        Ok(())
    }
}
