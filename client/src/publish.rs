//! Publishing: scan → manifest → signed head → push the manifest → ask the
//! node what it lacks → push only that → commit. Also rollback.

use std::{path::Path, time::SystemTime};

use n0_future::{BufferedStreamExt, StreamExt};

use iroh_blobs::{
    protocol::{ChunkRanges, ChunkRangesExt, ChunkRangesSeq, PushRequest},
    store::mem::MemStore,
};
use maki_protocol::{
    Domain, Hash, Head, MANIFEST_FORMAT, Manifest, ManifestError, SecretKey, Signed,
    rpc::{Request, Response, VersionInfo},
};

use crate::{
    net::{Client, NetError},
    scan::{self, HashCache, ScanError, Scanned},
};

/// Bytes held in memory at once while uploading.
const BATCH_BYTES: u64 = 64 << 20;
/// Blob pushes running at once on the connection.
const PUSHES_IN_FLIGHT: usize = 16;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the node asked for blob {0}, which this folder does not have")]
    UnknownBlob(Hash),
    #[error("{path} changed while publishing; publish again")]
    Changed { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("upload of {hash} failed: {message}")]
    Push { hash: Hash, message: String },
    #[error("the node answered {0:?} where it should not")]
    Unexpected(String),
    #[error("{0} has never been published: there is nothing to roll back")]
    NeverPublished(Domain),
    #[error("{what} of {site} is not kept; see `maki versions {site}`")]
    NotKept { what: String, site: Domain },
}

/// What `maki.toml` adds to the manifest besides the folder.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// `hsts = true`: every path gets `Strict-Transport-Security:
    /// max-age=31536000` (one year). The site's `_headers` may still set
    /// its own value. The nodes send it only over HTTPS with a
    /// certificate of the network's (docs/https.md).
    pub hsts: bool,
}

/// The HSTS value `hsts = true` asks for.
pub const HSTS: &str = "max-age=31536000";

/// Scans `dir` and builds the manifest that would be published, checked
/// as every node will check it.
pub fn build(
    dir: &Path,
    site: &Domain,
    cache: &mut HashCache,
    parent: Option<Hash>,
    version: u64,
    extras: &Extras,
) -> Result<(Manifest, Scanned), ScanError> {
    let mut built = assemble(dir, site, cache, parent, version, extras)?;
    // Entries that contradict each other (one hash, two sizes) can only
    // come from a stale or corrupted hash cache, or a file changing
    // mid-scan: hash everything again, once.
    if let Err(ManifestError::SizeConflict { .. }) = Manifest::decode(&built.0.to_bytes()) {
        cache.clear();
        built = assemble(dir, site, cache, parent, version, extras)?;
    }
    check(&built.0)?;
    Ok(built)
}

fn assemble(
    dir: &Path,
    site: &Domain,
    cache: &mut HashCache,
    parent: Option<Hash>,
    version: u64,
    extras: &Extras,
) -> Result<(Manifest, Scanned), ScanError> {
    let mut scanned = scan::scan(dir, cache)?;
    // First, so a rule of `_headers` may override it. ("/*" is a valid
    // pattern: `new` cannot refuse it.)
    if extras.hsts
        && let Ok(pattern) = maki_protocol::rules::Pattern::new("/*")
    {
        let rule = maki_protocol::rules::HeaderRule {
            pattern,
            set: vec![("strict-transport-security".into(), HSTS.into())],
            unset: Vec::new(),
        };
        scanned.headers.insert(0, rule);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        site: site.clone(),
        version,
        parent,
        created: now(),
        entries: std::mem::take(&mut scanned.entries),
        headers: std::mem::take(&mut scanned.headers),
        redirects: std::mem::take(&mut scanned.redirects),
    };
    Ok((manifest, scanned))
}

/// The checks a node makes on a manifest, made before anything is sent.
fn check(manifest: &Manifest) -> Result<(), ScanError> {
    let bytes = manifest.to_bytes();
    let limit = maki_protocol::MAX_MANIFEST_BYTES;
    if bytes.len() as u64 > limit {
        return Err(ScanError::TooLarge {
            files: manifest.entries.len(),
            bytes: bytes.len() as u64,
            limit,
        });
    }
    Manifest::decode(&bytes)
        .and_then(|_| manifest.check_publishable())
        .map_err(ScanError::Manifest)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a publish did.
#[derive(Debug)]
pub enum Outcome {
    Unchanged {
        version: u64,
    },
    Published {
        version: u64,
        seq: u64,
        manifest: Hash,
        files: usize,
        uploaded_blobs: usize,
        uploaded_bytes: u64,
        skipped_blobs: usize,
        skipped_bytes: u64,
    },
}

/// Progress callbacks: bytes uploaded so far of a total.
pub trait Progress {
    fn start(&mut self, total_bytes: u64, blobs: usize);
    fn advance(&mut self, bytes: u64);
    fn finish(&mut self);
}

/// No progress to show (the manifest's own push).
impl Progress for () {
    fn start(&mut self, _: u64, _: usize) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

pub async fn publish(
    client: &Client,
    key: &SecretKey,
    dir: &Path,
    site: &Domain,
    cache: &mut HashCache,
    extras: &Extras,
    progress: &mut dyn Progress,
) -> Result<Outcome, PublishError> {
    let info = crate::sites::info(client, site).await?;
    let parent = info.head.as_ref().map(|h| h.manifest);
    // Above the current head, and above every head from before the site
    // was (re-)added.
    let seq = info
        .head
        .as_ref()
        .map_or(0, |h| h.seq)
        .max(info.heads_after)
        + 1;
    let (manifest, scanned) = build(dir, site, cache, parent, info.latest_version + 1, extras)?;
    let bytes = manifest.to_bytes();
    let hash = Hash::of(&bytes);
    let head = Head {
        site: site.clone(),
        seq,
        manifest: hash,
    };
    let signed = Signed::sign(key, &head);
    let mut conn = None;
    let (session, missing) = match offer(client, &mut conn, signed, bytes).await? {
        Response::Unchanged { version } => return Ok(Outcome::Unchanged { version }),
        Response::Missing { session, lacks, .. } => (session, lacks),
        other => return Err(PublishError::Unexpected(format!("{other:?}"))),
    };
    let all = manifest.blobs();
    let missing = missing.hashes(all.keys());
    let total = missing
        .iter()
        .filter_map(|h| all.get(h))
        .fold(0u64, |sum, b| sum.saturating_add(*b));
    progress.start(total, missing.len());
    if !missing.is_empty() {
        let c = connect(client, &mut conn).await?;
        upload(c, &scanned, &missing, &all, progress).await?;
    }
    progress.finish();
    let committed = client.call(&Request::PublishCommit { session }).await;
    // Only now: closing earlier could cut pushes the node is still reading.
    if let Some(conn) = conn {
        conn.close(0u32.into(), b"done");
    }
    match committed? {
        Response::Published { version, seq } => Ok(Outcome::Published {
            version,
            seq,
            manifest: hash,
            files: manifest.entries.len(),
            uploaded_blobs: missing.len(),
            uploaded_bytes: total,
            skipped_blobs: all.len() - missing.len(),
            skipped_bytes: manifest.blobs_size().saturating_sub(total),
        }),
        other => Err(PublishError::Unexpected(format!("{other:?}"))),
    }
}

/// Offers a new version: sends the signed head, pushes the manifest if the
/// node asks for it, and returns the node's answer (`Missing` or
/// `Unchanged`). `conn` is the blobs connection, opened here if needed and
/// kept open for the pushes that follow.
pub async fn offer(
    client: &Client,
    conn: &mut Option<iroh::endpoint::Connection>,
    head: Signed<Head>,
    manifest: Vec<u8>,
) -> Result<Response, PublishError> {
    let answer = client
        .call(&Request::PublishBegin {
            head,
            manifest_size: manifest.len() as u64,
        })
        .await?;
    let Response::SendManifest { session } = answer else {
        return Ok(answer);
    };
    push(connect(client, conn).await?, vec![manifest], &mut ()).await?;
    Ok(client.call(&Request::PublishManifest { session }).await?)
}

/// The blobs connection to the node, opened on first use.
async fn connect<'a>(
    client: &Client,
    conn: &'a mut Option<iroh::endpoint::Connection>,
) -> Result<&'a iroh::endpoint::Connection, PublishError> {
    if conn.is_none() {
        *conn = Some(client.blobs_connection().await?);
    }
    conn.as_ref()
        .ok_or_else(|| PublishError::Unexpected("no blobs connection".into()))
}

/// Pushes `missing` in batches, each through a fresh in-memory store so the
/// client's memory stays bounded by [`BATCH_BYTES`] whatever the site size.
async fn upload(
    conn: &iroh::endpoint::Connection,
    scanned: &Scanned,
    missing: &[Hash],
    sizes: &std::collections::BTreeMap<Hash, u64>,
    progress: &mut dyn Progress,
) -> Result<(), PublishError> {
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for (i, hash) in missing.iter().enumerate() {
        batch.push(read_blob(scanned, hash)?);
        batch_bytes += sizes.get(hash).copied().unwrap_or(0);
        if batch_bytes >= BATCH_BYTES || i + 1 == missing.len() {
            push(conn, std::mem::take(&mut batch), progress).await?;
            batch_bytes = 0;
        }
    }
    Ok(())
}

/// The bytes of a blob as the scan saw it (compressed for a variant).
fn read_blob(scanned: &Scanned, hash: &Hash) -> Result<Vec<u8>, PublishError> {
    let (path, enc) = scanned
        .sources
        .get(hash)
        .ok_or(PublishError::UnknownBlob(*hash))?;
    let data = std::fs::read(path).map_err(|source| PublishError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let data = match enc {
        Some(e) => scan::compress(&data, *e),
        None => data,
    };
    if Hash::of(&data) != *hash {
        return Err(PublishError::Changed {
            path: path.display().to_string(),
        });
    }
    Ok(data)
}

/// Pushes blobs to the node through a fresh in-memory store. The node takes
/// only blobs an open publish of this key asked for.
pub async fn push(
    conn: &iroh::endpoint::Connection,
    blobs: Vec<Vec<u8>>,
    progress: &mut dyn Progress,
) -> Result<(), PublishError> {
    let store = MemStore::new();
    let mut tags = Vec::with_capacity(blobs.len());
    for data in blobs {
        let hash = Hash::of(&data);
        let len = data.len() as u64;
        let tag = store
            .add_bytes(data)
            .temp_tag()
            .await
            .map_err(|e| PublishError::Push {
                hash,
                message: e.to_string(),
            })?;
        tags.push((tag, len));
    }
    // Several pushes in flight, each on its own stream: one round trip per
    // file would make a site of many small files crawl over a long link.
    let mut pushes = n0_future::stream::iter(tags.iter().map(|(tag, len)| {
        let hash = tag.hash();
        // Exactly the blob's chunks: the node admits no more than the size
        // it was told.
        let ranges = ChunkRangesSeq::from_ranges([ChunkRanges::bytes(..(*len).max(1))]);
        let push = store
            .remote()
            .execute_push(conn.clone(), PushRequest::new(hash, ranges));
        async move {
            push.await.map(|_| *len).map_err(|e| PublishError::Push {
                hash: Hash::from_bytes(*hash.as_bytes()),
                message: e.to_string(),
            })
        }
    }))
    .buffered_unordered(PUSHES_IN_FLIGHT);
    while let Some(done) = pushes.next().await {
        progress.advance(done?);
    }
    drop(pushes);
    drop(tags);
    store.shutdown().await.ok();
    Ok(())
}

/// Versions of a site, newest first.
pub async fn versions(client: &Client, site: &Domain) -> Result<Vec<VersionInfo>, PublishError> {
    match client
        .call(&Request::Versions {
            domain: site.clone(),
        })
        .await?
    {
        Response::Versions(v) => Ok(v),
        other => Err(PublishError::Unexpected(format!("{other:?}"))),
    }
}

/// Makes `to` (default: the kept version just before the current one) live.
pub async fn rollback(
    client: &Client,
    key: &SecretKey,
    site: &Domain,
    to: Option<u64>,
) -> Result<(u64, u64), PublishError> {
    let info = crate::sites::info(client, site).await?;
    let kept = versions(client, site).await?;
    let current = info
        .head
        .as_ref()
        .ok_or_else(|| PublishError::NeverPublished(site.clone()))?;
    let target = match to {
        Some(v) => kept.iter().find(|k| k.version == v),
        None => kept.iter().find(|k| k.version < current.version),
    }
    .ok_or_else(|| PublishError::NotKept {
        what: to.map_or("an older version".to_owned(), |v| format!("version {v}")),
        site: site.clone(),
    })?;
    let head = Head {
        site: site.clone(),
        seq: current.seq + 1,
        manifest: target.manifest,
    };
    match client
        .call(&Request::Rollback {
            head: Signed::sign(key, &head),
        })
        .await?
    {
        Response::Published { version, seq } => Ok((version, seq)),
        other => Err(PublishError::Unexpected(format!("{other:?}"))),
    }
}
