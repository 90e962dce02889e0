//! The admin protocol server (`maki/admin/1`) and the blob gate.
//!
//! Any caller may connect; the TLS handshake proves the caller's key and
//! every request is authorised against it. A publish opens a session that
//! names the blobs this node lacks; the push gate lets exactly those blobs
//! in, from exactly that caller, while the session lives. Nothing becomes
//! visible until the commit swaps the head.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use iroh::{
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler},
};
use iroh_blobs::provider::events::{AbortReason, ProviderMessage};
use maki_protocol::{
    Domain, Hash, Head, Invite, MAX_MANIFEST_BYTES, Manifest, PublicKey, Record, Signable, Signed,
    SiteRecord,
    rpc::{self, HeadInfo, Request, Response, RpcError, SiteInfo, VersionInfo},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    content::{temp_tag, to_iroh, version_tag},
    live::LiveSite,
    node::Shared,
    state::Applied,
};

/// Admin connections served at once; more are refused until one closes.
const MAX_CONNECTIONS: usize = 64;
/// Frames above this size are read only from admins and publishers: only
/// a manifest is ever that large, and strangers may not publish.
const SMALL_FRAME: usize = 1 << 20;
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

/// Which pushes are allowed: per caller, the hashes its sessions asked for.
#[derive(Debug, Default)]
pub struct PushGate {
    inner: Mutex<GateInner>,
}

#[derive(Debug, Default)]
struct GateInner {
    /// iroh-blobs connection id → the caller's key.
    conns: HashMap<u64, PublicKey>,
    /// caller → session → hashes it may push.
    wanted: HashMap<PublicKey, HashMap<u64, HashSet<Hash>>>,
}

impl PushGate {
    fn allow(&self, caller: PublicKey, session: u64, hashes: &[Hash]) {
        if let Ok(mut g) = self.inner.lock() {
            g.wanted
                .entry(caller)
                .or_default()
                .insert(session, hashes.iter().copied().collect());
        }
    }

    fn revoke(&self, caller: &PublicKey, session: u64) {
        if let Ok(mut g) = self.inner.lock()
            && let Some(s) = g.wanted.get_mut(caller)
        {
            s.remove(&session);
            if s.is_empty() {
                g.wanted.remove(caller);
            }
        }
    }

    fn check_member(&self, conn: u64, peers: &crate::peers::Peers) -> Result<(), AbortReason> {
        let g = self.inner.lock().map_err(|_| AbortReason::Permission)?;
        match g.conns.get(&conn) {
            Some(caller) if peers.is_member(caller) => Ok(()),
            _ => Err(AbortReason::Permission),
        }
    }

    fn check_push(&self, conn: u64, hash: Hash) -> Result<(), AbortReason> {
        let g = self.inner.lock().map_err(|_| AbortReason::Permission)?;
        let caller = g.conns.get(&conn).ok_or(AbortReason::Permission)?;
        let wanted = g.wanted.get(caller).ok_or(AbortReason::Permission)?;
        if wanted.values().any(|set| set.contains(&hash)) {
            Ok(())
        } else {
            Err(AbortReason::Permission)
        }
    }
}

/// Answers iroh-blobs provider events: remembers who is on each
/// connection, serves reads to members only, admits pushes the gate
/// allows, refuses all others.
pub async fn run_gate(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<ProviderMessage>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        match msg {
            ProviderMessage::ClientConnected(msg) => {
                let key = msg
                    .endpoint_id
                    .and_then(|id| PublicKey::from_bytes(*id.as_bytes()).ok());
                let res = match key {
                    Some(key) => {
                        if let Ok(mut g) = shared.gate.inner.lock() {
                            g.conns.insert(msg.connection_id, key);
                        }
                        Ok(())
                    }
                    None => Err(AbortReason::Permission),
                };
                msg.tx.send(res).await.ok();
            }
            ProviderMessage::ConnectionClosed(msg) => {
                if let Ok(mut g) = shared.gate.inner.lock() {
                    g.conns.remove(&msg.connection_id);
                }
            }
            // Members fetch content from each other; nobody else reads.
            ProviderMessage::GetRequestReceived(msg) => {
                let res = shared.gate.check_member(msg.connection_id, &shared.peers);
                msg.tx.send(res).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(msg) => {
                let res = shared.gate.check_member(msg.connection_id, &shared.peers);
                msg.tx.send(res).await.ok();
            }
            ProviderMessage::PushRequestReceived(msg) => {
                let hash = crate::content::from_iroh(msg.request.hash);
                let res = if !msg.request.ranges.is_blob() {
                    Err(AbortReason::Permission)
                } else {
                    shared.gate.check_push(msg.connection_id, hash)
                };
                if res.is_err() {
                    warn!(%hash, "refused a push nobody asked for");
                }
                msg.tx.send(res).await.ok();
            }
            _ => {}
        }
    }
}

/// The `maki/admin/1` protocol handler.
#[derive(Debug, Clone)]
pub struct AdminProtocol {
    shared: Arc<Shared>,
    limit: Arc<tokio::sync::Semaphore>,
}

impl AdminProtocol {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            limit: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    /// Admins and the publishers of any site: callers trusted with large frames.
    fn is_known(&self, caller: &PublicKey) -> bool {
        self.shared.is_admin(caller)
            || self
                .shared
                .state
                .sites()
                .is_ok_and(|sites| sites.iter().any(|(_, rec)| rec.publishers.contains(caller)))
    }
}

impl ProtocolHandler for AdminProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let Ok(caller) = PublicKey::from_bytes(*conn.remote_id().as_bytes()) else {
            return Ok(());
        };
        let Ok(_permit) = self.limit.clone().try_acquire_owned() else {
            conn.close(1u32.into(), b"busy");
            return Ok(());
        };
        let mut opened = Vec::new();
        let res = self.serve(&conn, caller, &mut opened).await;
        // The connection is gone: publishes it left open are abandoned.
        for session in opened {
            self.abandon(session).await;
        }
        if let Err(error) = res {
            debug!(%error, caller = %caller.fmt_short(), "admin connection ended");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connection: {0}")]
    Conn(#[from] iroh::endpoint::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] iroh::endpoint::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] iroh::endpoint::WriteError),
    #[error("frame: {0}")]
    Frame(#[from] rpc::FrameError),
    #[error("stream closed: {0}")]
    Closed(#[from] iroh::endpoint::ClosedStream),
}

impl AdminProtocol {
    async fn serve(
        &self,
        conn: &Connection,
        caller: PublicKey,
        opened: &mut Vec<u64>,
    ) -> Result<(), StreamError> {
        loop {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let mut prefix = [0u8; 4];
            recv.read_exact(&mut prefix).await?;
            let len = match rpc::frame_len(prefix) {
                Ok(len) => len,
                // Too large to read: say so (the body is never read), and
                // keep the connection for the caller's next request.
                Err(error) => {
                    let refusal = Response::Error(RpcError::BadRequest(error.to_string()));
                    send.write_all(&rpc::encode_frame(&refusal)).await?;
                    send.finish()?;
                    recv.stop(0u32.into()).ok();
                    continue;
                }
            };
            if len > SMALL_FRAME && !self.is_known(&caller) {
                let refusal = Response::Error(RpcError::NotAdmin { key: caller });
                send.write_all(&rpc::encode_frame(&refusal)).await?;
                send.finish()?;
                continue;
            }
            let mut body = vec![0u8; len];
            recv.read_exact(&mut body).await?;
            let response = match rpc::decode_body::<Request>(&body) {
                Ok(req) => match self.handle(caller, req, opened).await {
                    Ok(r) => r,
                    Err(e) => Response::Error(e),
                },
                Err(e) => Response::Error(RpcError::BadRequest(e.to_string())),
            };
            if let Response::Error(error) = &response {
                info!(caller = %caller.fmt_short(), %error, "admin request refused");
            }
            send.write_all(&rpc::encode_frame(&response)).await?;
            send.finish()?;
        }
    }

    async fn handle(
        &self,
        caller: PublicKey,
        req: Request,
        opened: &mut Vec<u64>,
    ) -> Result<Response, RpcError> {
        match req {
            Request::SiteAdd { record } => self.site_add(caller, record).await,
            Request::SiteRemove { record } => self.site_remove(caller, record).await,
            Request::Sites => self.sites(caller).await,
            Request::Versions { domain } => self.versions(caller, domain).await,
            Request::PublishBegin {
                head,
                manifest_size,
            } => {
                let r = self.publish_begin(caller, head, manifest_size).await?;
                if let Response::Missing { session, .. } | Response::SendManifest { session } = &r {
                    opened.push(*session);
                }
                Ok(r)
            }
            Request::PublishManifest { session } => {
                let r = self.publish_manifest(caller, session).await;
                if !matches!(r, Ok(Response::Missing { .. })) {
                    opened.retain(|s| *s != session);
                }
                r
            }
            Request::PublishCommit { session } => {
                let r = self.publish_commit(caller, session).await;
                opened.retain(|s| *s != session);
                r
            }
            Request::Rollback { head } => self.rollback(caller, head).await,
            Request::Network => Ok(Response::Network {
                network: self.shared.network,
                node: self.shared.id,
            }),
            Request::Invite { invite } => self.invite(caller, invite),
            Request::Nodes => self.nodes(caller),
            Request::NodeRemove { record } => self.node_remove(caller, record),
            Request::Pin { record } => self.pin(caller, record),
            Request::HeadFloor { domain } => self.head_floor(caller, &domain),
            _ => Err(RpcError::BadRequest("unknown request".into())),
        }
    }

    fn invite(&self, caller: PublicKey, signed: Signed<Invite>) -> Result<Response, RpcError> {
        let invite = self.admin_signed(caller, &signed)?;
        let bad = |m: &str| Err(RpcError::InvalidInvite(m.to_owned()));
        if invite.format > maki_protocol::RECORD_FORMAT {
            return bad("made by a newer maki; upgrade this node");
        }
        if invite.network != self.shared.network {
            return bad("it names another network");
        }
        if invite.issuer != self.shared.id {
            return bad("it names another issuing node; only the issuer can redeem it");
        }
        if invite.is_expired(crate::now()) {
            return bad("it has already expired");
        }
        self.shared
            .state
            .add_invite(invite.secret_hash, &signed)
            .map_err(internal)?;
        // Also a replicated record: other members check joiners against it.
        self.shared
            .apply_local(Record::Invite(signed))
            .map_err(|e| RpcError::InvalidInvite(e.to_string()))?;
        info!(expires = invite.expires, "invite stored");
        Ok(Response::Done)
    }

    fn nodes(&self, caller: PublicKey) -> Result<Response, RpcError> {
        use maki_protocol::rpc::{Health, NodeInfo};
        if !self.is_known(&caller) {
            return Err(RpcError::NotAdmin { key: caller });
        }
        // A publisher sees where its own sites are, not where others' are.
        let visible: Option<Vec<Domain>> = if self.shared.is_admin(&caller) {
            None
        } else {
            Some(
                self.shared
                    .state
                    .sites()
                    .map_err(internal)?
                    .into_iter()
                    .filter(|(_, s)| s.may_publish(&caller, &self.shared.genesis.admins))
                    .map(|(d, _)| d)
                    .collect(),
            )
        };
        let shown = |holds: Vec<maki_protocol::sync::Holding>| match &visible {
            None => holds,
            Some(mine) => holds
                .into_iter()
                .filter(|h| mine.contains(&h.site))
                .collect(),
        };
        // A peer counts as up if we exchanged with it within a few rounds.
        let fresh = (self.shared.config.sync_interval * 3).max(Duration::from_secs(15));
        let nodes = self
            .shared
            .peers
            .all()
            .into_iter()
            .map(|(id, p)| {
                let me = id == self.shared.id;
                let health = if me {
                    Health::Me
                } else if p.failing {
                    Health::Down
                } else if p.seen.is_some_and(|t| t.elapsed() < fresh) {
                    Health::Up
                } else {
                    Health::Unknown
                };
                NodeInfo {
                    id,
                    addrs: p.addrs,
                    region: p.region,
                    location: p.location,
                    version: p.version,
                    health,
                    rtt_us: p.rtt.map(|d| d.as_micros() as u64),
                    holds: shown(if me { self.shared.holdings() } else { p.holds }),
                    roles: p.roles,
                }
            })
            .collect();
        Ok(Response::Nodes(nodes))
    }

    fn pin(
        &self,
        caller: PublicKey,
        signed: Signed<maki_protocol::Pin>,
    ) -> Result<Response, RpcError> {
        let pin = self.admin_signed(caller, &signed)?;
        if self
            .shared
            .state
            .site(&pin.site)
            .map_err(internal)?
            .is_none()
        {
            return Err(RpcError::UnknownSite(pin.site));
        }
        self.apply_admin(Record::Pin(signed), "pin of the site")?;
        info!(site = %pin.site, regions = ?pin.regions, "site pinned");
        Ok(Response::Done)
    }

    fn node_remove(
        &self,
        caller: PublicKey,
        signed: Signed<maki_protocol::Revocation>,
    ) -> Result<Response, RpcError> {
        let revocation = self.admin_signed(caller, &signed)?;
        if !self.shared.peers.is_member(&revocation.node) {
            return Err(RpcError::UnknownNode(revocation.node));
        }
        if revocation.node == self.shared.id {
            return Err(RpcError::InvalidRecord(
                "a node cannot revoke itself; ask another member".into(),
            ));
        }
        self.apply_admin(Record::Revocation(signed), "revocation of that node")?;
        info!(node = %revocation.node.fmt_short(), "node revoked");
        Ok(Response::Done)
    }

    fn require_admin(&self, caller: PublicKey) -> Result<(), RpcError> {
        if self.shared.is_admin(&caller) {
            Ok(())
        } else {
            Err(RpcError::NotAdmin { key: caller })
        }
    }

    /// The site's record if `caller` may publish it (its publishers, and admins).
    fn require_publisher(
        &self,
        caller: PublicKey,
        domain: &Domain,
    ) -> Result<SiteRecord, RpcError> {
        let rec = self
            .shared
            .state
            .site(domain)
            .map_err(internal)?
            .ok_or_else(|| RpcError::UnknownSite(domain.clone()))?;
        if rec.may_publish(&caller, &self.shared.genesis.admins) {
            Ok(rec)
        } else {
            Err(RpcError::NotPublisher {
                key: caller,
                domain: domain.clone(),
            })
        }
    }

    /// Checks a site record from `caller` and takes it in (it replicates).
    /// An admin's signed record: the caller is an admin and signed it.
    fn admin_signed<T: Signable>(
        &self,
        caller: PublicKey,
        signed: &Signed<T>,
    ) -> Result<T, RpcError> {
        self.require_admin(caller)?;
        let record = signed.verify().map_err(|_| RpcError::BadSignature)?;
        if signed.signer() != caller {
            return Err(RpcError::SignerMismatch);
        }
        Ok(record)
    }

    /// Takes in a record made here; an older one than held is refused.
    fn apply_admin(&self, record: Record, what: &str) -> Result<(), RpcError> {
        match self.shared.apply_local(record) {
            Ok(Applied::New | Applied::Replaced) => Ok(()),
            Ok(Applied::Stale) => Err(RpcError::InvalidRecord(format!(
                "this node holds a newer {what}; list and try again"
            ))),
            Err(e) => Err(RpcError::InvalidRecord(e.to_string())),
        }
    }

    async fn site_add(
        &self,
        caller: PublicKey,
        signed: Signed<SiteRecord>,
    ) -> Result<Response, RpcError> {
        let record = self.admin_signed(caller, &signed)?;
        if record.removed || record.publishers.is_empty() {
            return Err(RpcError::InvalidRecord(
                "a new site needs publishers and must not be marked removed".into(),
            ));
        }
        let _guard = self.shared.head_lock.lock().await;
        if self
            .shared
            .state
            .site(&record.domain)
            .map_err(internal)?
            .is_some()
        {
            return Err(RpcError::SiteExists(record.domain));
        }
        self.apply_admin(Record::Site(signed), "record of the site")?;
        info!(site = %record.domain, "site added");
        Ok(Response::Done)
    }

    async fn site_remove(
        &self,
        caller: PublicKey,
        signed: Signed<SiteRecord>,
    ) -> Result<Response, RpcError> {
        let record = self.admin_signed(caller, &signed)?;
        if !record.removed {
            return Err(RpcError::InvalidRecord(
                "a removal must be marked removed".into(),
            ));
        }
        let domain = record.domain;
        let _guard = self.shared.head_lock.lock().await;
        if self.shared.state.site(&domain).map_err(internal)?.is_none() {
            return Err(RpcError::UnknownSite(domain));
        }
        self.apply_admin(Record::Site(signed), "record of the site")?;
        crate::replicate::clear_site(&self.shared, &domain).await;
        info!(site = %domain, "site removed");
        Ok(Response::Done)
    }

    async fn sites(&self, caller: PublicKey) -> Result<Response, RpcError> {
        let admin = self.shared.is_admin(&caller);
        let mut out = Vec::new();
        for (record, record_version) in self.shared.state.site_records().map_err(internal)? {
            if record.removed || (!admin && !record.publishers.contains(&caller)) {
                continue;
            }
            let domain = record.domain;
            let domain_for_pin = domain.clone();
            let latest_version = self
                .shared
                .state
                .versions(&domain)
                .map_err(internal)?
                .first()
                .map_or(0, |v| v.0);
            let info = |seq: u64, manifest: Hash, m: &Manifest| HeadInfo {
                seq,
                version: m.version,
                manifest,
                files: m.entries.len() as u64,
                bytes: m.total_size(),
                created: m.created,
            };
            let live = self.shared.live.get(domain.as_str());
            // The network's head, which may be ahead of what this node serves
            // while it downloads; a publish must build on it.
            let head = match (self.shared.current_head(&domain), &live) {
                (Some((seq, m)), Some(l)) if l.manifest_hash == m => Some(HeadInfo {
                    seq,
                    version: l.summary.version,
                    manifest: m,
                    files: l.summary.files,
                    bytes: l.summary.bytes,
                    created: l.summary.created,
                }),
                (Some((seq, m)), _) => match self.load_manifest(m).await {
                    Ok(manifest) => Some(info(seq, m, &manifest)),
                    // Not here yet: the head is still what a publish builds
                    // on; the rest is what this node knows best.
                    Err(_) => Some(HeadInfo {
                        seq,
                        manifest: m,
                        version: live.as_ref().map_or(0, |l| l.summary.version),
                        files: 0,
                        bytes: 0,
                        created: 0,
                    }),
                },
                (None, _) => None,
            };
            out.push(SiteInfo {
                domain,
                heads_after: record.heads_after,
                publishers: record.publishers,
                head,
                latest_version,
                record_version,
                regions: self
                    .shared
                    .state
                    .pin(&domain_for_pin)
                    .map_err(internal)?
                    .map(|p| p.regions)
                    .unwrap_or_default(),
            });
        }
        Ok(Response::Sites(out))
    }

    async fn versions(&self, caller: PublicKey, domain: Domain) -> Result<Response, RpcError> {
        self.require_publisher(caller, &domain)?;
        let current = self
            .shared
            .live
            .get(domain.as_str())
            .map(|s| s.manifest_hash);
        let mut out = Vec::new();
        for (version, hash) in self.shared.state.versions(&domain).map_err(internal)? {
            let m = self.load_manifest(hash).await?;
            out.push(VersionInfo {
                version,
                manifest: hash,
                files: m.entries.len() as u64,
                bytes: m.total_size(),
                created: m.created,
                current: current == Some(hash),
            });
        }
        Ok(Response::Versions(out))
    }

    async fn load_manifest(&self, hash: Hash) -> Result<Manifest, RpcError> {
        let bytes = self
            .shared
            .content
            .get_bytes(hash)
            .await
            .map_err(|_| RpcError::UnknownVersion(hash))?;
        Manifest::decode(&bytes).map_err(|e| RpcError::Internal(e.to_string()))
    }

    /// Checks a signed head from `caller`: signature, signer, rights, order.
    fn check_head(&self, caller: PublicKey, signed: &Signed<Head>) -> Result<Head, RpcError> {
        let head = signed.verify().map_err(|_| RpcError::BadSignature)?;
        if signed.signer() != caller {
            return Err(RpcError::SignerMismatch);
        }
        self.require_publisher(caller, &head.site)?;
        let expected = self.current_seq(&head.site) + 1;
        if head.seq != expected {
            return Err(RpcError::StaleSeq {
                expected,
                offered: head.seq,
            });
        }
        Ok(head)
    }

    /// The sequence number a new head must follow: the current head's, or
    /// where a site added again starts its heads.
    fn current_seq(&self, domain: &Domain) -> u64 {
        let after = self
            .shared
            .state
            .site(domain)
            .ok()
            .flatten()
            .map_or(0, |s| s.heads_after);
        self.shared
            .current_head(domain)
            .map_or(0, |(seq, _)| seq)
            .max(after)
    }

    /// Where a site added again (or anew) starts its heads: above every
    /// head this node has seen for the domain.
    fn head_floor(&self, caller: PublicKey, domain: &Domain) -> Result<Response, RpcError> {
        self.require_admin(caller)?;
        let seen = self.shared.state.head_floor(domain).map_err(internal)?;
        let current = self.shared.current_head(domain).map_or(0, |(seq, _)| seq);
        Ok(Response::HeadFloor {
            seq: seen.max(current),
        })
    }

    async fn publish_begin(
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
                self.shared.gate.allow(caller, session, &[head.manifest]);
                if let Ok(mut s) = self.shared.sessions.inner.lock() {
                    s.insert(
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
                }
                Ok(Response::SendManifest { session })
            }
            Err(e) => Err(internal(e)),
        };
        self.settle(session, response).await
    }

    /// The manifest of a session has been pushed: read and check it, then
    /// ask for the blobs it names.
    async fn publish_manifest(&self, caller: PublicKey, id: u64) -> Result<Response, RpcError> {
        let session = self.take_session(caller, id, |s| matches!(s, Stage::Manifest { .. }))?;
        let Stage::Manifest { size } = session.stage else {
            return Err(RpcError::UnknownSession(id));
        };
        let manifest = session.head.manifest;
        let response = async {
            let landing = self.await_landing(&[manifest]).await;
            // Only now: the push may still be arriving.
            self.shared.gate.revoke(&caller, id);
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
        self.shared
            .sessions
            .inner
            .lock()
            .map(|s| {
                let mine = s.values().filter(|s| s.caller == *caller);
                mine.fold((0, 0), |(n, b), s| (n + 1, b + s.bytes))
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
            .shared
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
        let current_hash = self.shared.current_head(&head.site).map(|(_, m)| m);
        if manifest.parent != current_hash {
            return Err(RpcError::StaleParent {
                current: current_hash,
            });
        }
        let current = self.shared.live.get(head.site.as_str());
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
        let bytes = missing.iter().filter_map(|h| blobs.get(h)).sum::<u64>();
        let (_, in_flight) = self.load_of(&caller);
        let limit = self.shared.config.max_upload_bytes;
        if in_flight.saturating_add(bytes) > limit {
            return Err(RpcError::UploadBudget {
                in_flight: in_flight.saturating_add(bytes),
                limit,
            });
        }
        self.shared.gate.allow(caller, session, &missing);
        info!(site = %head.site, version = manifest.version, missing = missing.len(), bytes, "publish started");
        let hashes = missing.clone();
        if let Ok(mut s) = self.shared.sessions.inner.lock() {
            s.insert(
                session,
                Session {
                    caller,
                    head,
                    signed,
                    stage: Stage::Blobs { manifest, missing },
                    bytes,
                },
            );
        }
        Ok(Response::Missing {
            session,
            hashes,
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

    async fn publish_commit(&self, caller: PublicKey, id: u64) -> Result<Response, RpcError> {
        let session = self.take_session(caller, id, |s| matches!(s, Stage::Blobs { .. }))?;
        let result = match &session.stage {
            Stage::Blobs { manifest, missing } => self.finish(&session, manifest, missing).await,
            Stage::Manifest { .. } => Err(RpcError::UnknownSession(id)),
        };
        self.shared.gate.revoke(&caller, id);
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
        let blobs = manifest.blobs();
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

        let _guard = self.shared.head_lock.lock().await;
        // Someone may have published while we were receiving.
        let current = self.shared.current_head(&s.head.site);
        let current_hash = current.map(|(_, m)| m);
        if manifest.parent != current_hash {
            return Err(RpcError::StaleParent {
                current: current_hash,
            });
        }
        let expected = self.current_seq(&s.head.site) + 1;
        if s.head.seq != expected {
            return Err(RpcError::StaleSeq {
                expected,
                offered: s.head.seq,
            });
        }
        content
            .protect(
                &version_tag(&s.head.site, s.head.manifest),
                s.head.manifest,
                blobs.keys().copied(),
            )
            .await
            .map_err(internal)?;
        let site = LiveSite::prepare(s.head.seq, s.head.manifest, manifest.clone())
            .await
            .map_err(internal)?;
        // The blob store batches its own commits: make the version durable
        // there before the head that names it is.
        content.sync().await.map_err(internal)?;
        let committed = self
            .shared
            .state
            .commit_head(
                &s.head,
                &s.signed,
                Some(manifest.version),
                self.shared.config.keep_versions,
            )
            .map_err(internal)?;
        self.shared.live.set(s.head.site.clone(), site);
        self.drop_versions(&s.head.site, committed.pruned).await;
        self.announce_head(s.signed.clone());
        info!(site = %s.head.site, version = manifest.version, seq = s.head.seq, "published");
        Ok(Response::Published {
            version: manifest.version,
            seq: s.head.seq,
        })
    }

    /// The head is live here: make it the network's (it replicates).
    fn announce_head(&self, signed: Signed<Head>) {
        if let Err(error) = self.shared.apply_local(Record::Head(signed)) {
            warn!(%error, "a committed head was not taken into the records");
        }
    }

    async fn drop_versions(&self, domain: &Domain, manifests: Vec<Hash>) {
        for m in manifests {
            if let Err(error) = self.shared.content.unprotect(&version_tag(domain, m)).await {
                warn!(%error, "could not drop an old version's tag");
            }
        }
    }

    async fn abandon(&self, id: u64) {
        let session = self
            .shared
            .sessions
            .inner
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&id));
        if let Some(s) = session {
            self.shared.gate.revoke(&s.caller, id);
            info!(site = %s.head.site, "publish abandoned; the previous version keeps serving");
        }
        if let Err(error) = self.shared.content.unprotect(&temp_tag(id)).await {
            warn!(%error, "could not drop a publish's temporary tag");
        }
    }

    async fn rollback(
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
        let _guard = self.shared.head_lock.lock().await;
        let expected = self.current_seq(&head.site) + 1;
        if head.seq != expected {
            return Err(RpcError::StaleSeq {
                expected,
                offered: head.seq,
            });
        }
        let version = manifest.version;
        let site = LiveSite::prepare(head.seq, head.manifest, manifest)
            .await
            .map_err(internal)?;
        let committed = self
            .shared
            .state
            .commit_head(&head, &signed, None, self.shared.config.keep_versions)
            .map_err(internal)?;
        self.shared.live.set(head.site.clone(), site);
        self.drop_versions(&head.site, committed.pruned).await;
        self.announce_head(signed);
        info!(site = %head.site, version, seq = head.seq, "rolled back");
        Ok(Response::Published {
            version,
            seq: head.seq,
        })
    }
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::Internal(e.to_string())
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
