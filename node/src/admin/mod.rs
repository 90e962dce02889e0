//! The admin protocol server (`maki/admin/1`).
//!
//! Any caller may connect; the TLS handshake proves the caller's key and
//! every request is authorised against it (`auth`). A publish opens a
//! session (`publish`) that names the blobs this node lacks; the push gate
//! (`crate::gate`) lets exactly those blobs in, from exactly that caller,
//! while the session lives. Nothing becomes visible until the commit swaps
//! the head. `sites` changes records; `listings` answers questions.

mod auth;
mod cert;
mod dnssec;
mod listings;
mod publish;
mod sites;

use std::sync::Arc;

use iroh::{
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler},
};
use maki_protocol::{
    PublicKey,
    rpc::{self, Request, Response, RpcError},
};
use tracing::{debug, info};

use crate::{
    frame::{self, FrameError},
    gate::PushGate,
    shared::Shared,
};
use publish::Sessions;

/// Admin connections served at once; more are refused until one closes.
const MAX_CONNECTIONS: usize = 64;
/// Frames above this size are read only from admins and publishers: only
/// a manifest is ever that large, and strangers may not publish.
const SMALL_FRAME: usize = 1 << 20;

/// The `maki/admin/1` protocol handler.
#[derive(Debug, Clone)]
pub struct AdminProtocol {
    shared: Arc<Shared>,
    limit: Arc<tokio::sync::Semaphore>,
    sessions: Arc<Sessions>,
    gate: Arc<PushGate>,
}

impl AdminProtocol {
    pub fn new(shared: Arc<Shared>, gate: Arc<PushGate>) -> Self {
        Self {
            shared,
            limit: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            sessions: Arc::default(),
            gate,
        }
    }

    /// Admins and the publishers of any site: callers trusted with large frames.
    fn is_known(&self, caller: &PublicKey) -> bool {
        self.shared.members.directory().is_known(caller)
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
    #[error(transparent)]
    Frame(#[from] FrameError),
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
            let len = match frame::read_len(&mut recv, rpc::MAX_FRAME).await {
                Ok(len) => len,
                // Too large to read: say so (the body is never read), and
                // keep the connection for the caller's next request.
                Err(error @ FrameError::TooLarge { .. }) => {
                    let refusal = Response::Error(RpcError::BadRequest(error.to_string()));
                    frame::write(&mut send, &refusal).await?;
                    send.finish()?;
                    recv.stop(0u32.into()).ok();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if len > SMALL_FRAME && !self.is_known(&caller) {
                let refusal = Response::Error(RpcError::NotAdmin { key: caller });
                frame::write(&mut send, &refusal).await?;
                send.finish()?;
                continue;
            }
            let response = match frame::read_body::<Request>(&mut recv, len).await {
                Ok(req) => match self.handle(caller, req, opened).await {
                    Ok(r) => r,
                    Err(e) => Response::Error(e),
                },
                Err(FrameError::Decode(e)) => Response::Error(RpcError::BadRequest(e.to_string())),
                Err(e) => return Err(e.into()),
            };
            if let Response::Error(error) = &response {
                info!(caller = %caller.fmt_short(), %error, "admin request refused");
            }
            frame::write(&mut send, &response).await?;
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
            Request::SiteUpdate { record } => self.site_update(caller, record).await,
            Request::ZoneSet { record } => self.zone_set(caller, record),
            Request::Keys { domain } => self.keys(caller, domain),
            Request::KeysSet { record } => self.keys_set(caller, record),
            Request::CertInfo { domain } => self.cert_info(caller, domain),
            Request::CertSet { record } => self.cert_set(caller, record),
            Request::AcmeSet { record } => self.acme_set(caller, record),
            Request::Acme => {
                self.require_admin(caller)?;
                Ok(Response::Acme(
                    self.shared.members.directory().acme().cloned(),
                ))
            }
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
            // A session belongs to the connection that opened it: only it
            // continues the session, and its end abandons what is left.
            Request::PublishManifest { session } if opened.contains(&session) => {
                let r = self.publish_manifest(caller, session).await;
                opened.retain(|s| self.sessions.contains(*s));
                r
            }
            Request::PublishCommit { session } if opened.contains(&session) => {
                let r = self.publish_commit(caller, session).await;
                opened.retain(|s| self.sessions.contains(*s));
                r
            }
            Request::PublishManifest { session } | Request::PublishCommit { session } => {
                Err(RpcError::UnknownSession(session))
            }
            Request::Rollback { head } => self.rollback(caller, head).await,
            Request::Network => Ok(Response::Network {
                network: self.shared.members.network,
                node: self.shared.members.id,
            }),
            Request::Invite { invite } => self.invite(caller, invite),
            Request::Nodes => self.nodes(caller),
            Request::NodeRemove { record } => self.node_remove(caller, record),
            Request::Pin { record } => self.pin(caller, record),
            Request::HeadFloor { domain } => self.head_floor(caller, &domain),
            Request::PeerSet { record } => self.peer_set(caller, record),
            Request::Peers => self.peers(caller),
            _ => Err(RpcError::BadRequest("unknown request".into())),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::Internal(e.to_string())
}
