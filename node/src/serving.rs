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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use maki_protocol::{Entry, MANIFEST_FORMAT, SecretKey, SitePath};

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        serving: Serving,
        state: Arc<State>,
        content: Arc<Content>,
        live: Arc<Live>,
        key: SecretKey,
        site: Domain,
    }

    /// One published version: its head, signed, and its manifest.
    struct Version {
        head: Head,
        signed: Signed<Head>,
        manifest: Manifest,
    }

    impl Fixture {
        async fn new(keep: u32) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let state = Arc::new(State::open(&dir.path().join("state.redb")).expect("state"));
            let content = Arc::new(
                Content::load(&dir.path().join("blobs"), None)
                    .await
                    .expect("content"),
            );
            let live = Arc::new(Live::default());
            Self {
                serving: Serving::new(state.clone(), content.clone(), live.clone(), keep),
                _dir: dir,
                state,
                content,
                live,
                key: SecretKey::from_bytes(&[1; 32]),
                site: Domain::new("a.test").expect("domain"),
            }
        }

        /// Version `n` of the site (one file saying so), its blobs stored,
        /// as head `seq`.
        async fn version(&self, n: u64, seq: u64) -> Version {
            let body = Bytes::from(format!("version {n}"));
            let (hash, _tag) = self.content.add_bytes(body.clone()).await.expect("blob");
            let manifest = Manifest {
                format: MANIFEST_FORMAT,
                site: self.site.clone(),
                version: n,
                parent: None,
                created: 0,
                entries: BTreeMap::from([(
                    SitePath::new("index.html").expect("path"),
                    Entry {
                        hash,
                        size: body.len() as u64,
                        content_type: "text/html".into(),
                        encodings: BTreeMap::new(),
                    },
                )]),
                headers: vec![],
                redirects: vec![],
            };
            let head = Head {
                site: self.site.clone(),
                seq,
                manifest: manifest.hash(),
            };
            Version {
                signed: Signed::sign(&self.key, &head),
                head,
                manifest,
            }
        }

        async fn commit(&self, v: &Version, kind: Kind) {
            self.serving
                .lock()
                .await
                .commit(&v.head, &v.signed, v.manifest.clone(), kind)
                .await
                .expect("commit");
        }

        /// (seq, manifest) served now.
        fn served(&self) -> Option<(u64, Hash)> {
            let live = self.live.get(self.site.as_str())?;
            let stored = self
                .state
                .served_head(&self.site)
                .expect("state")
                .and_then(|s| s.verify().ok())
                .map(|h| (h.seq, h.manifest));
            assert_eq!(
                stored,
                Some((live.seq, live.manifest_hash)),
                "store and live agree"
            );
            Some((live.seq, live.manifest_hash))
        }

        fn kept(&self) -> Vec<u64> {
            let mut v: Vec<u64> = self
                .state
                .versions(&self.site)
                .expect("versions")
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            v.sort();
            v
        }

        async fn tags(&self) -> Vec<String> {
            let mut names = Vec::new();
            let mut tags = self
                .content
                .store()
                .tags()
                .list_prefix("v/")
                .await
                .expect("tags");
            while let Some(tag) = n0_future::StreamExt::next(&mut tags).await {
                let tag = tag.expect("tag");
                names.push(String::from_utf8_lossy(tag.name.as_ref()).into_owned());
            }
            names.sort();
            names
        }

        fn tag(&self, v: &Version) -> String {
            version_tag(&self.site, v.head.manifest)
        }
    }

    #[tokio::test]
    async fn a_new_version_is_kept_served_and_the_oldest_pruned() {
        let f = Fixture::new(2).await;
        let v: Vec<Version> = vec![
            f.version(1, 1).await,
            f.version(2, 2).await,
            f.version(3, 3).await,
        ];
        f.commit(&v[0], Kind::New { version: 1 }).await;
        assert_eq!(f.served(), Some((1, v[0].head.manifest)));
        f.commit(&v[1], Kind::New { version: 2 }).await;
        f.commit(&v[2], Kind::New { version: 3 }).await;
        assert_eq!(f.served(), Some((3, v[2].head.manifest)));
        // Two kept; the first lost its version and its tag.
        assert_eq!(f.kept(), vec![2, 3]);
        let mut want = vec![f.tag(&v[1]), f.tag(&v[2])];
        want.sort();
        assert_eq!(f.tags().await, want);
    }

    #[tokio::test]
    async fn a_rollback_serves_a_kept_version_and_prunes_nothing() {
        let f = Fixture::new(2).await;
        let one = f.version(1, 1).await;
        let two = f.version(2, 2).await;
        f.commit(&one, Kind::New { version: 1 }).await;
        f.commit(&two, Kind::New { version: 2 }).await;
        // Version 1 again, as head 3.
        let back = Version {
            head: Head {
                seq: 3,
                ..one.head.clone()
            },
            signed: Signed::sign(
                &f.key,
                &Head {
                    seq: 3,
                    ..one.head.clone()
                },
            ),
            manifest: one.manifest.clone(),
        };
        f.commit(&back, Kind::Rollback).await;
        assert_eq!(f.served(), Some((3, one.head.manifest)));
        assert_eq!(f.kept(), vec![1, 2]);
        assert_eq!(f.tags().await.len(), 2);
    }

    #[tokio::test]
    async fn clearing_a_site_stops_serving_it_and_releases_every_version() {
        let f = Fixture::new(3).await;
        for n in 1..=2 {
            let v = f.version(n, n).await;
            f.commit(&v, Kind::New { version: n }).await;
        }
        f.serving.lock().await.clear(&f.site).await;
        assert!(f.live.get(f.site.as_str()).is_none());
        assert_eq!(f.state.served_head(&f.site).expect("state"), None);
        assert!(f.kept().is_empty());
        assert!(f.tags().await.is_empty());
    }

    #[tokio::test]
    async fn one_head_change_at_a_time() {
        let f = Fixture::new(2).await;
        let guard = f.serving.lock().await;
        // While one change holds the lock, another waits for it.
        let second =
            tokio::time::timeout(std::time::Duration::from_millis(50), f.serving.lock()).await;
        assert!(second.is_err(), "a second guard while the first is held");
        drop(guard);
        let _ = f.serving.lock().await;
    }
}
