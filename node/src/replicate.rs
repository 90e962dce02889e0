//! Replication: makes what this node serves follow the records.
//!
//! Whenever the records change, each site's newest head is compared with
//! the head this node serves. A newer one is fetched from the other members,
//! nearest first: the manifest, then every blob it lacks, several blobs at
//! once from different providers (each blob tries the providers in its own
//! rotation of the RTT order, so the nearest few share the load and the
//! rest are failover). iroh-blobs verifies every byte against its BLAKE3
//! hash and resumes a blob from where a failed provider stopped. Only when
//! the whole version is here does the node switch to it; until then it
//! keeps serving the previous one. A removed site is cleared.

use std::{sync::Arc, time::Duration};

use iroh::EndpointId;
use iroh_blobs::{
    HashAndFormat,
    api::downloader::{ContentDiscovery, DownloadOptions, Downloader, SplitStrategy},
};
use maki_protocol::{Domain, Hash, Head, Manifest, Signed};
use n0_future::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    content::{to_iroh, version_tag},
    live::LiveSite,
    node::Shared,
};

/// How long to wait before retrying a fetch that found no provider.
const RETRY: Duration = Duration::from_secs(2);
/// How many of the nearest providers share the blobs of one version.
const SPREAD: usize = 3;

/// Providers for one fetch: the members nearest first; each blob starts at
/// a different one of the nearest `SPREAD` and falls back to the rest.
#[derive(Debug, Clone)]
struct Nearest(Arc<Vec<EndpointId>>);

impl ContentDiscovery for Nearest {
    fn find_providers(&self, hash: HashAndFormat) -> n0_future::stream::Boxed<EndpointId> {
        let mut order = self.0.as_ref().clone();
        let spread = order.len().min(SPREAD);
        if spread > 1 {
            let start = usize::from(hash.hash.as_bytes()[0]) % spread;
            order[..spread].rotate_left(start);
        }
        n0_future::stream::iter(order).boxed()
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("no member could provide {what}")]
    Unavailable { what: &'static str },
    #[error("the manifest is invalid: {0}")]
    Manifest(String),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error("state: {0}")]
    State(#[from] crate::state::StateError),
}

/// Runs until cancelled: one pass at start and after every change of the
/// records; passes that could not finish are retried.
pub async fn run(
    shared: Arc<Shared>,
    downloader: Downloader,
    mut changes: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    loop {
        changes.borrow_and_update();
        let pending = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            pending = pass(&shared, &downloader) => pending,
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            res = changes.changed() => if res.is_err() { break },
            _ = tokio::time::sleep(RETRY), if pending => {},
        }
    }
}

/// One pass over every site; true if something is still to be fetched.
async fn pass(shared: &Arc<Shared>, downloader: &Downloader) -> bool {
    let sites = match shared.state.site_records() {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "cannot read the site records");
            return true;
        }
    };
    let mut pending = false;
    for (site, _) in sites {
        if site.removed {
            if shared.live.get(site.domain.as_str()).is_some() {
                let _guard = shared.head_lock.lock().await;
                clear_site(shared, &site.domain).await;
                info!(site = %site.domain, "site removed");
            }
            continue;
        }
        let Ok(Some(signed)) = shared.state.head_record(&site.domain) else {
            continue;
        };
        let Ok(head) = signed.verify() else { continue };
        let serving = shared.live.get(site.domain.as_str()).map(|l| l.seq);
        if serving.is_some_and(|seq| seq >= head.seq) {
            continue;
        }
        if let Err(error) = fetch(shared, downloader, &head, &signed).await {
            warn!(site = %head.site, seq = head.seq, %error, "fetch failed; retrying");
            pending = true;
        }
    }
    pending
}

async fn fetch(
    shared: &Arc<Shared>,
    downloader: &Downloader,
    head: &Head,
    signed: &Signed<Head>,
) -> Result<(), FetchError> {
    let content = &shared.content;
    let providers = Nearest(Arc::new(
        shared
            .peers
            .others()
            .iter()
            .filter_map(|k| iroh::PublicKey::from_bytes(k.as_bytes()).ok())
            .collect(),
    ));
    let started = std::time::Instant::now();
    download(
        downloader,
        HashAndFormat::raw(to_iroh(head.manifest)),
        &providers,
    )
    .await;
    let bytes = content
        .get_bytes(head.manifest)
        .await
        .map_err(|_| FetchError::Unavailable {
            what: "the manifest",
        })?;
    if Hash::of(&bytes) != head.manifest {
        return Err(FetchError::Manifest("hash mismatch".into()));
    }
    let manifest = Manifest::decode(&bytes).map_err(|e| FetchError::Manifest(e.to_string()))?;
    if manifest.site != head.site {
        return Err(FetchError::Manifest(format!(
            "it is for {}, the head for {}",
            manifest.site, head.site
        )));
    }
    let size = manifest.total_size();
    if size > shared.config.max_site_bytes {
        return Err(FetchError::Manifest(format!(
            "{size} bytes is above this node's max_site_bytes"
        )));
    }
    // The hash sequence protects what arrives from the start, and it is
    // what peers ask for: the same list in the same order gives the same
    // hash on every node.
    // Until it is complete, a temporary tag (swept at restart) holds it.
    let blobs = manifest.blobs();
    let temp = format!("tmp/fetch/{}", head.site);
    let seq = content
        .protect(&temp, head.manifest, blobs.keys().copied())
        .await?;
    download(downloader, HashAndFormat::hash_seq(seq), &providers).await;
    for (hash, size) in &blobs {
        if content.complete_size(*hash).await? != Some(*size) {
            return Err(FetchError::Unavailable { what: "every blob" });
        }
    }
    let _guard = shared.head_lock.lock().await;
    let result = commit(shared, head, signed, manifest).await;
    if let Err(error) = content.unprotect(&temp).await {
        warn!(%error, "could not drop a fetch's temporary tag");
    }
    if result.is_ok() {
        info!(site = %head.site, seq = head.seq, elapsed = ?started.elapsed(), "replicated");
    }
    result
}

/// Makes a fetched version the one served here. The caller holds the head
/// lock.
async fn commit(
    shared: &Shared,
    head: &Head,
    signed: &Signed<Head>,
    manifest: Manifest,
) -> Result<(), FetchError> {
    let content = &shared.content;
    if shared
        .live
        .get(head.site.as_str())
        .is_some_and(|l| l.seq >= head.seq)
    {
        return Ok(());
    }
    content
        .protect(
            &version_tag(&head.site, head.manifest),
            head.manifest,
            manifest.blobs().keys().copied(),
        )
        .await?;
    let committed = shared.state.commit_head(
        head,
        signed,
        Some(manifest.version),
        shared.config.keep_versions,
    )?;
    shared.live.set(
        head.site.clone(),
        LiveSite::new(head.seq, head.manifest, manifest),
    );
    for m in committed.pruned {
        if let Err(error) = content.unprotect(&version_tag(&head.site, m)).await {
            warn!(%error, "could not drop an old version's tag");
        }
    }
    Ok(())
}

async fn download(downloader: &Downloader, what: HashAndFormat, providers: &Nearest) {
    let progress = downloader.download_with_opts(DownloadOptions::new(
        what,
        providers.clone(),
        SplitStrategy::Split,
    ));
    match progress.stream().await {
        Ok(mut stream) => {
            while let Some(item) = stream.next().await {
                if let iroh_blobs::api::downloader::DownloadProgressItem::ProviderFailed {
                    id,
                    ..
                } = item
                {
                    debug!(provider = %id.fmt_short(), "provider failed; trying the next");
                }
            }
        }
        Err(error) => debug!(%error, "download did not start"),
    }
}

/// Stops serving a site here and drops the tags of its versions. The
/// caller holds the head lock.
pub async fn clear_site(shared: &Shared, domain: &Domain) {
    shared.live.remove(domain);
    let manifests = match shared.state.clear_site(domain) {
        Ok(m) => m.unwrap_or_default(),
        Err(error) => {
            warn!(site = %domain, %error, "could not clear the site's versions");
            return;
        }
    };
    for m in manifests {
        if let Err(error) = shared.content.unprotect(&version_tag(domain, m)).await {
            warn!(%error, "could not drop a version tag");
        }
    }
}
