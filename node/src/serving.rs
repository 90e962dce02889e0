//! Serving a version: the one place a site's served head changes.
//!
//! Publish, rollback, replication and removal all go through
//! [`Serving::lock`]: the guard is the head lock, held while the caller
//! checks what it is about to change (parent, sequence) and while the
//! change is made, so two changes to heads never interleave.

use std::sync::Arc;

use maki_protocol::{Domain, Hash, Head, Manifest, Signed};
use tokio::sync::{Mutex, MutexGuard};
use tracing::warn;

use crate::{
    content::{Content, ContentError, version_tag},
    live::{Live, LiveSite},
    state::{State, StateError},
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("could not lay the version out: {0}")]
    Layout(String),
}

/// How a version comes to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A version new to this node (published here, or fetched): it is kept
    /// from now on, under its version number.
    New { version: u64 },
    /// A kept version served again.
    Rollback,
}

/// See the module docs.
#[derive(Debug)]
pub struct Serving {
    state: Arc<State>,
    content: Arc<Content>,
    live: Arc<Live>,
    /// Versions kept per site (`keep_versions`).
    keep: u32,
    lock: Mutex<()>,
}

/// The head lock: while it is held, no other head changes.
#[derive(Debug)]
pub struct Guard<'a> {
    serving: &'a Serving,
    _lock: MutexGuard<'a, ()>,
}

impl Serving {
    pub fn new(state: Arc<State>, content: Arc<Content>, live: Arc<Live>, keep: u32) -> Self {
        Self {
            state,
            content,
            live,
            keep,
            lock: Mutex::new(()),
        }
    }

    pub async fn lock(&self) -> Guard<'_> {
        Guard {
            serving: self,
            _lock: self.lock.lock().await,
        }
    }
}

impl Guard<'_> {
    /// Makes `head` (whose manifest is `manifest`, every blob present) the
    /// version served: keep its blobs, make them durable, then in one
    /// transaction the head and the version, then the live swap; versions
    /// pruned beyond `keep_versions` are released.
    pub async fn commit(
        &self,
        head: &Head,
        signed: &Signed<Head>,
        manifest: Manifest,
        kind: Kind,
    ) -> Result<(), ServeError> {
        let s = self.serving;
        let version = match kind {
            Kind::New { version } => {
                s.content
                    .protect(
                        &version_tag(&head.site, head.manifest),
                        head.manifest,
                        manifest.blobs().keys().copied(),
                    )
                    .await?;
                Some(version)
            }
            Kind::Rollback => None,
        };
        let site = LiveSite::prepare(head.seq, head.manifest, manifest)
            .await
            .map_err(|e| ServeError::Layout(e.to_string()))?;
        if version.is_some() {
            // The blob store batches its own commits: make the version
            // durable there before the head that names it is.
            s.content.sync().await?;
        }
        let committed = s.state.commit_head(head, signed, version, s.keep)?;
        s.live.set(head.site.clone(), site);
        self.release(&head.site, committed.pruned).await;
        Ok(())
    }

    /// Stops serving a site here and releases every version kept of it.
    pub async fn clear(&self, domain: &Domain) {
        let s = self.serving;
        s.live.remove(domain);
        match s.state.clear_site(domain) {
            Ok(kept) => self.release(domain, kept.unwrap_or_default()).await,
            Err(error) => warn!(site = %domain, %error, "could not clear the site's versions"),
        }
    }

    /// Versions no longer kept lose their tags; garbage collection takes
    /// the blobs no other version keeps.
    async fn release(&self, domain: &Domain, manifests: Vec<Hash>) {
        for m in manifests {
            if let Err(error) = self
                .serving
                .content
                .unprotect(&version_tag(domain, m))
                .await
            {
                warn!(%error, "could not drop an old version's tag");
            }
        }
    }
}
