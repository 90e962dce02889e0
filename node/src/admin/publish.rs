//! A publish: the session from `PublishBegin` to `PublishCommit` (manifest
//! stage, then blob stage), and rollback.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use maki_protocol::{
    Hash, Head, MAX_MANIFEST_BYTES, Manifest, PublicKey, Record, Signed,
    rpc::{BlobSet, Response, RpcError},
};
use tracing::{info, warn};

use super::{AdminProtocol, internal};
use crate::{
    content::{temp_tag, to_iroh},
    serving::Kind,
};

/// Publishes one caller may have open at once.
const MAX_SESSIONS_PER_CALLER: usize = 4;

/// How long a commit waits, in all, for pushed blobs to finish landing.
const LANDING_TIMEOUT: Duration = Duration::from_secs(30);

/// A publish between `PublishBegin` and `PublishCommit`.
#[derive(Debug)]
struct Session {
    caller: PublicKey,
    head: Head,
    signed: Signed<Head>,
    stage: Stage,
    /// Bytes still to be pushed: this session's share of its key's upload
    /// budget.
    bytes: u64,
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the manifest blob, announced as `size` bytes.
    Manifest { size: u64 },
    /// Waiting for the blobs the manifest names that this node lacks.
    Blobs {
        manifest: Manifest,
        missing: Vec<Hash>,
    },
}

/// Open publish sessions by id.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<u64, Session>>,
}

impl Sessions {
    /// Whether the session is open (between two of its requests).
    pub(super) fn contains(&self, id: u64) -> bool {
        self.inner.lock().is_ok_and(|s| s.contains_key(&id))
    }

    /// Puts a session (back) in the table, at its next stage.
    fn put(&self, id: u64, session: Session) {
        if let Ok(mut s) = self.inner.lock() {
            s.insert(id, session);
        }
    }
}

impl AdminProtocol {
    pub(super) async fn publish_begin(
        &self,
        caller: PublicKey,
        signed: Signed<Head>,
        manifest_size: u64,
    ) -> Result<Response, RpcError> {
        let head = self.check_head(caller, &signed)?;
        if manifest_size > MAX_MANIFEST_BYTES {
            return Err(RpcError::InvalidManifest(
                maki_protocol::ManifestError::TooLarge(manifest_size).to_string(),
            ));
        }
        let (open, in_flight) = self.load_of(&caller);
        if open >= MAX_SESSIONS_PER_CALLER {
            return Err(RpcError::BadRequest(format!(
                "{open} publishes are already in progress for this key; finish or cancel them"
            )));
        }
        let limit = self.shared.config.max_upload_bytes;
        if in_flight.saturating_add(manifest_size) > limit {
            return Err(RpcError::UploadBudget {
                in_flight: in_flight.saturating_add(manifest_size),
                limit,
            });
        }
        let content = &self.shared.content;
        // Protected before anything is asked of the store, so garbage
        // collection cannot take a blob between the answer and the commit.
        let session = random_u64()?;
        content
            .protect(&temp_tag(session), head.manifest, [])
            .await
            .map_err(internal)?;
        let held = content.complete_size(head.manifest).await;
        let response = match held {
            Ok(Some(_)) => self.open_blobs(caller, session, head, signed).await,
            Ok(None) => {
                self.gate
                    .allow(caller, session, [(head.manifest, manifest_size)]);
                self.sessions.put(
                    session,
                    Session {
                        caller,
                        head,
                        signed,
                        stage: Stage::Manifest {
                            size: manifest_size,
                        },
                        bytes: manifest_size,
                    },
                );
                Ok(Response::SendManifest { session })
            }
            Err(e) => Err(internal(e)),
        };
        self.settle(session, response).await
    }

    /// The manifest of a session has been pushed: read and check it, then
    /// ask for the blobs it names.
    pub(super) async fn publish_manifest(
        &self,
        caller: PublicKey,
        id: u64,
    ) -> Result<Response, RpcError> {
        let session = self.take_session(caller, id, |s| matches!(s, Stage::Manifest { .. }))?;
        let Stage::Manifest { size } = session.stage else {
            return Err(RpcError::UnknownSession(id));
        };
        let manifest = session.head.manifest;
        let response = async {
            let landing = self.await_landing(&[manifest]).await;
            // Only now: the push may still be arriving.
            self.gate.revoke(&caller, id);
            let absent = landing?;
            if let Some(first) = absent.first() {
                return Err(RpcError::MissingBlobs {
                    count: absent.len(),
                    first: *first,
                });
            }
            // The hash fixes the bytes, not the size a caller announced: a
            // larger manifest than declared would dodge the upload budget.
            let stored = self
                .shared
                .content
                .complete_size(manifest)
                .await
                .map_err(internal)?
                .unwrap_or(0);
            if stored != size {
                return Err(RpcError::InvalidManifest(format!(
                    "the publish announced a manifest of {size} bytes, but {stored} bytes were pushed"
                )));
            }
            self.open_blobs(caller, id, session.head, session.signed)
                .await
        }
        .await;
        self.settle(id, response).await
    }

    /// Drops a session's temporary tag unless the answer leaves it open.
    async fn settle(
        &self,
        session: u64,
        response: Result<Response, RpcError>,
    ) -> Result<Response, RpcError> {
        if !matches!(
            response,
            Ok(Response::SendManifest { .. } | Response::Missing { .. })
        ) && let Err(error) = self.shared.content.unprotect(&temp_tag(session)).await
        {
            warn!(%error, "could not drop a publish's temporary tag");
        }
        response
    }

    /// How many publishes `caller` has open, and their upload bytes.
    fn load_of(&self, caller: &PublicKey) -> (usize, u64) {
        self.sessions
            .inner
            .lock()
            .map(|s| {
                let mine = s.values().filter(|s| s.caller == *caller);
                mine.fold((0, 0u64), |(n, b), s| (n + 1, b.saturating_add(s.bytes)))
            })
            .unwrap_or((0, 0))
    }

    /// Removes `caller`'s session `id` if it is at the stage `at` accepts.
    fn take_session(
        &self,
        caller: PublicKey,
        id: u64,
        at: impl Fn(&Stage) -> bool,
    ) -> Result<Session, RpcError> {
        let mut sessions = self
            .sessions
            .inner
            .lock()
            .map_err(|_| RpcError::Internal("session table poisoned".into()))?;
        match sessions.get(&id) {
            Some(s) if s.caller == caller && at(&s.stage) => sessions.remove(&id),
            _ => None,
        }
        .ok_or(RpcError::UnknownSession(id))
    }

    /// Checks a held manifest against the site and the store, and opens the
    /// session's blob stage (or finds the content unchanged).
    async fn open_blobs(
        &self,
        caller: PublicKey,
        session: u64,
        head: Head,
        signed: Signed<Head>,
    ) -> Result<Response, RpcError> {
        let content = &self.shared.content;
        let manifest_bytes = content.get_bytes(head.manifest).await.map_err(internal)?;
        let manifest = Manifest::decode(&manifest_bytes)
            .map_err(|e| RpcError::InvalidManifest(e.to_string()))?;
        drop(manifest_bytes);
        manifest
            .check_publishable()
            .map_err(|e| RpcError::InvalidManifest(e.to_string()))?;
        if manifest.site != head.site {
            return Err(RpcError::InvalidManifest(format!(
                "the manifest is for {}, the head for {}",
                manifest.site, head.site
            )));
        }
        let current_hash = self.shared.newest_head(&head.site).map(|(_, m)| m);
        if manifest.parent != current_hash {
            return Err(RpcError::StaleParent {
                current: current_hash,
            });
        }
        let current = self.shared.members.live.get(head.site.as_str());
        if let Some(c) = &current
            && Some(c.manifest_hash) == current_hash
            && c.summary.content == manifest.content_hash()
        {
            return Ok(Response::Unchanged {
                version: c.summary.version,
            });
        }
        let latest = self
            .shared
            .state
            .versions(&head.site)
            .map_err(internal)?
            .first()
            .map_or(0, |v| v.0);
        if manifest.version <= latest {
            return Err(RpcError::InvalidManifest(format!(
                "version {} is not newer than the latest kept version {latest}; publish again",
                manifest.version
            )));
        }
        let size = manifest.total_size();
        if size > self.shared.config.max_site_bytes {
            return Err(RpcError::TooLarge {
                size,
                limit: self.shared.config.max_site_bytes,
            });
        }
        let blobs = manifest.blobs();
        content
            .protect(&temp_tag(session), head.manifest, blobs.keys().copied())
            .await
            .map_err(internal)?;
        let missing = content.check_manifest(&manifest).await.map_err(refusal)?;
        let bytes = missing
            .iter()
            .filter_map(|h| blobs.get(h))
            .fold(0u64, |sum, b| sum.saturating_add(*b));
        let (_, in_flight) = self.load_of(&caller);
        let limit = self.shared.config.max_upload_bytes;
        if in_flight.saturating_add(bytes) > limit {
            return Err(RpcError::UploadBudget {
                in_flight: in_flight.saturating_add(bytes),
                limit,
            });
        }
        self.gate.allow(
            caller,
            session,
            missing
                .iter()
                .filter_map(|h| blobs.get(h).map(|size| (*h, *size))),
        );
        info!(site = %head.site, version = manifest.version, missing = missing.len(), bytes, "publish started");
        let lacks = BlobSet::new(blobs.keys(), &missing.iter().copied().collect());
        self.sessions.put(
            session,
            Session {
                caller,
                head,
                signed,
                stage: Stage::Blobs { manifest, missing },
                bytes,
            },
        );
        Ok(Response::Missing {
            session,
            lacks,
            bytes,
        })
    }

    /// Waits (in all at most [`LANDING_TIMEOUT`]) until pushed blobs have
    /// landed; pushes are acknowledged when sent. Returns those that have not.
    async fn await_landing(&self, hashes: &[Hash]) -> Result<Vec<Hash>, RpcError> {
        let content = &self.shared.content;
        let deadline = tokio::time::Instant::now() + LANDING_TIMEOUT;
        let mut absent = Vec::new();
        for hash in hashes {
            if content
                .complete_size(*hash)
                .await
                .map_err(internal)?
                .is_some()
            {
                continue;
            }
            let landed = content
                .store()
                .blobs()
                .observe(to_iroh(*hash))
                .await_completion();
            if tokio::time::timeout_at(deadline, landed).await.is_err() {
                absent.push(*hash);
            }
        }
        Ok(absent)
    }

    pub(super) async fn publish_commit(
        &self,
        caller: PublicKey,
        id: u64,
    ) -> Result<Response, RpcError> {
        let session = self.take_session(caller, id, |s| matches!(s, Stage::Blobs { .. }))?;
        let result = match &session.stage {
            Stage::Blobs { manifest, missing } => self.finish(&session, manifest, missing).await,
            Stage::Manifest { .. } => Err(RpcError::UnknownSession(id)),
        };
        self.gate.revoke(&caller, id);
        if let Err(error) = self.shared.content.unprotect(&temp_tag(id)).await {
            warn!(%error, "could not drop a publish's temporary tag");
        }
        result
    }

    async fn finish(
        &self,
        s: &Session,
        manifest: &Manifest,
        missing: &[Hash],
    ) -> Result<Response, RpcError> {
        let content = &self.shared.content;
        self.await_landing(missing).await?;
        // A pushed blob was verified against its hash, so its size is the
        // truth: one that landed with another size than declared is the
        // manifest's lie, refused by path.
        let absent = content.check_manifest(manifest).await.map_err(refusal)?;
        if let Some(first) = absent.first() {
            return Err(RpcError::MissingBlobs {
                count: absent.len(),
                first: *first,
            });
        }

        let guard = self.shared.serving.lock().await;
        // The site may have been removed or handed to another publisher,
        // and someone may have published, while we were receiving.
        self.may_commit(s.caller, &s.head)?;
        let current = self.shared.newest_head(&s.head.site);
        let current_hash = current.map(|(_, m)| m);
        if manifest.parent != current_hash {
            return Err(RpcError::StaleParent {
                current: current_hash,
            });
        }
        guard
            .commit(
                &s.head,
                &s.signed,
                manifest.clone(),
                Kind::New {
                    version: manifest.version,
                },
            )
            .await
            .map_err(internal)?;
        self.announce_head(s.signed.clone());
        info!(site = %s.head.site, version = manifest.version, seq = s.head.seq, "published");
        Ok(Response::Published {
            version: manifest.version,
            seq: s.head.seq,
        })
    }

    /// The head is live here: make it the network's (it replicates).
    /// What this node holds goes out first: the members that fetch the
    /// version start with this node as the one that holds it whole, not
    /// a sync round later (until then they knew of no holder, and asked
    /// every member in turn).
    fn announce_head(&self, signed: Signed<Head>) {
        self.shared.members.outbox.holdings();
        if let Err(error) = self.shared.members.apply_local(Record::Head(signed)) {
            warn!(%error, "a committed head was not taken into the records");
        }
    }

    pub(super) async fn abandon(&self, id: u64) {
        let session = self
            .sessions
            .inner
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&id));
        if let Some(s) = session {
            self.gate.revoke(&s.caller, id);
            info!(site = %s.head.site, "publish abandoned; the previous version keeps serving");
        }
        if let Err(error) = self.shared.content.unprotect(&temp_tag(id)).await {
            warn!(%error, "could not drop a publish's temporary tag");
        }
    }

    pub(super) async fn rollback(
        &self,
        caller: PublicKey,
        signed: Signed<Head>,
    ) -> Result<Response, RpcError> {
        let head = self.check_head(caller, &signed)?;
        let kept = self.shared.state.versions(&head.site).map_err(internal)?;
        if !kept.iter().any(|(_, h)| *h == head.manifest) {
            return Err(RpcError::UnknownVersion(head.manifest));
        }
        let manifest = self.load_manifest(head.manifest).await?;
        let version = manifest.version;
        let guard = self.shared.serving.lock().await;
        self.may_commit(caller, &head)?;
        guard
            .commit(&head, &signed, manifest, Kind::Rollback)
            .await
            .map_err(internal)?;
        self.announce_head(signed);
        info!(site = %head.site, version, seq = head.seq, "rolled back");
        Ok(Response::Published {
            version,
            seq: head.seq,
        })
    }
}

/// A content check's verdict as the publisher should read it.
fn refusal(e: crate::content::ContentError) -> RpcError {
    match e {
        crate::content::ContentError::SizeMismatch {
            path,
            declared,
            stored,
        } => RpcError::SizeMismatch {
            path,
            declared,
            stored,
        },
        other => internal(other),
    }
}

/// Session ids are unguessable so one caller cannot commit another's
/// publish (they are also checked against the caller).
fn random_u64() -> Result<u64, RpcError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(internal)?;
    Ok(u64::from_le_bytes(b))
}
