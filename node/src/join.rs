//! Joining: the `maki/join/1` server (redeem an invite at its issuer) and
//! the client side `makiatto join` uses.
//!
//! Only the issuing node redeems its invites, so single use holds even
//! while the network is partitioned. The new member then introduces itself
//! to every member through `sync`; with the mesh on, first over this
//! protocol ([`introduce`]), since a member's WireGuard carries nobody
//! whose record it lacks.

use std::{path::Path, sync::Arc, time::Duration};

use iroh::{
    Endpoint, EndpointAddr,
    endpoint::Connection,
    protocol::{AcceptError, ProtocolHandler},
};
use maki_protocol::{
    Admission, Claim, Genesis, Hash, InviteTicket, PublicKey, Record, SecretKey, Signed,
    invite_key,
    rpc::{self, JoinError, JoinRequest, JoinResponse},
};
use tracing::{info, warn};

use tokio_util::sync::CancellationToken;

use crate::{
    frame::{self, FrameError},
    members::Members,
    state::State,
};

const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The `maki/join/1` protocol handler: the network's id and genesis, the
/// invites this node issued, and the records a joiner starts from; and
/// the introductions of members that talk over the mesh.
#[derive(Debug, Clone)]
pub struct JoinProtocol {
    network: Hash,
    genesis: Signed<Genesis>,
    state: Arc<State>,
    members: Arc<Members>,
    /// This node's key: it signs the admissions of the nodes it lets in,
    /// and nothing else here.
    key: SecretKey,
}

impl JoinProtocol {
    pub fn new(
        network: Hash,
        genesis: Signed<Genesis>,
        state: Arc<State>,
        members: Arc<Members>,
        key: SecretKey,
    ) -> Self {
        Self {
            network,
            genesis,
            state,
            members,
            key,
        }
    }

    fn answer(&self, node: PublicKey, req: JoinRequest, now: u64) -> JoinResponse {
        match req {
            JoinRequest::Redeem { network, claim } => self.redeem(node, network, claim, now),
            JoinRequest::Introduce {
                network,
                record,
                invite,
            } => self.introduce(network, record, invite),
            _ => JoinResponse::Refused(JoinError::Internal("unknown request".into())),
        }
    }

    /// Takes a member's record, as sync would: checked and authorised like
    /// any record (it is valid only signed by that node, with its
    /// admission). Whoever sends it (the node introduces itself from a key
    /// of the moment) could have had it reach this node by sync as well.
    fn introduce(&self, network: Hash, record: Record, invite: Option<Record>) -> JoinResponse {
        if network != self.network {
            return JoinResponse::Refused(JoinError::WrongNetwork);
        }
        if !matches!(record, Record::Node(_)) || !matches!(invite, None | Some(Record::Invite(_))) {
            return JoinResponse::Refused(JoinError::NotIntroduced(
                "only a node record and its invite".into(),
            ));
        }
        let batch: Vec<Record> = invite.into_iter().chain([record]).collect();
        match self.members.apply_batch(&batch) {
            Ok(verdicts) => match verdicts.into_iter().last() {
                Some(Ok(_)) => JoinResponse::Introduced,
                Some(Err(refused)) => {
                    JoinResponse::Refused(JoinError::NotIntroduced(refused.to_string()))
                }
                None => JoinResponse::Refused(JoinError::NotIntroduced("nothing sent".into())),
            },
            Err(e) => JoinResponse::Refused(JoinError::Internal(e.to_string())),
        }
    }

    fn redeem(
        &self,
        node: PublicKey,
        network: Hash,
        claim: Signed<Claim>,
        now: u64,
    ) -> JoinResponse {
        if network != self.network {
            return JoinResponse::Refused(JoinError::WrongNetwork);
        }
        match self.state.redeem_invite(&claim, node, now) {
            Ok(Ok(invite)) => {
                // The claim named this invite and proved the ticket.
                let Ok(claimed) = claim.verify() else {
                    return JoinResponse::Refused(JoinError::BadAdmission);
                };
                let admission = Signed::sign(
                    &self.key,
                    &Admission {
                        invite: claimed.invite,
                        node,
                    },
                );
                info!(node = %node.fmt_short(), "invite redeemed; a node joined");
                // The snapshot, not the watch's lock, while copying it.
                let directory = self.members.directory();
                JoinResponse::Welcome {
                    genesis: self.genesis.clone(),
                    invite,
                    admission,
                    // Who the members are, so the joiner knows whom to
                    // sync with; the rest (sites, heads, pins) comes by
                    // sync, in frames of bounded size however many sites.
                    records: directory
                        .all()
                        .filter(|h| {
                            matches!(
                                h.record,
                                Record::Invite(_) | Record::Node(_) | Record::Revocation(_)
                            )
                        })
                        .map(|h| h.record.clone())
                        .collect(),
                }
            }
            Ok(Err(e)) => {
                warn!(node = %node.fmt_short(), error = %e, "join refused");
                JoinResponse::Refused(e)
            }
            Err(e) => JoinResponse::Refused(JoinError::Internal(e.to_string())),
        }
    }
}

impl ProtocolHandler for JoinProtocol {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let Ok(node) = PublicKey::from_bytes(*conn.remote_id().as_bytes()) else {
            return Ok(());
        };
        let served = tokio::time::timeout(JOIN_TIMEOUT, async {
            let (mut send, mut recv) = conn.accept_bi().await.ok()?;
            // A join request is a few dozen bytes; anything large is not one.
            let len = frame::read_len(&mut recv, 4096).await.ok()?;
            let response = match frame::read_body::<JoinRequest>(&mut recv, len).await {
                Ok(req) => self.answer(node, req, crate::now()),
                Err(FrameError::Decode(e)) => JoinResponse::Refused(JoinError::Internal(format!(
                    "the join request does not decode ({e}); is the joining makiatto newer than this node? upgrade this node"
                ))),
                Err(_) => return None,
            };
            frame::write(&mut send, &response).await.ok()?;
            send.finish().ok()?;
            // Wait for the joiner to read the answer before the connection drops.
            conn.closed().await;
            Some(())
        })
        .await;
        if served.is_err() {
            conn.close(1u32.into(), b"timeout");
        }
        Ok(())
    }
}

/// What a successful join brings home.
#[derive(Debug)]
pub struct Welcome {
    pub genesis: Signed<Genesis>,
    /// The invite redeemed, and this node's admission through it.
    pub membership: crate::identity::Membership,
    /// The issuer's membership records, unchecked: apply them through
    /// `Records::apply`.
    pub records: Vec<maki_protocol::Record>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedeemError {
    #[error("the issuing node {node} is unreachable: {message}")]
    Unreachable { node: String, message: String },
    #[error("the issuing node refused")]
    Refused(#[from] JoinError),
    #[error("the join failed: {0}")]
    Protocol(String),
}

/// Redeems `ticket` at its issuer through `endpoint` (bound with the new
/// node's key). Writes nothing.
pub async fn redeem(endpoint: &Endpoint, ticket: &InviteTicket) -> Result<Welcome, RedeemError> {
    let proto = |e: &dyn std::fmt::Display| RedeemError::Protocol(e.to_string());
    let id = iroh::PublicKey::from_bytes(ticket.issuer.id.as_bytes()).map_err(|e| proto(&e))?;
    let mut addr = EndpointAddr::new(id);
    for a in &ticket.issuer.addrs {
        addr = addr.with_ip_addr(*a);
    }
    let conn =
        match tokio::time::timeout(JOIN_TIMEOUT, endpoint.connect(addr, rpc::JOIN_ALPN)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(RedeemError::Unreachable {
                    node: ticket.issuer.id.fmt_short(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(RedeemError::Unreachable {
                    node: ticket.issuer.id.fmt_short(),
                    message: format!("no answer within {JOIN_TIMEOUT:?}"),
                });
            }
        };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| proto(&e))?;
    // The secret stays here: what it signs proves it.
    let me = PublicKey::from_bytes(*endpoint.id().as_bytes()).map_err(|e| proto(&e))?;
    let claim = Signed::sign(
        &invite_key(&ticket.secret),
        &Claim {
            invite: Hash::of(&ticket.secret),
            node: me,
        },
    );
    let req = JoinRequest::Redeem {
        network: ticket.network,
        claim,
    };
    frame::write(&mut send, &req).await.map_err(|e| proto(&e))?;
    send.finish().map_err(|e| proto(&e))?;
    let answer = frame::read::<JoinResponse>(&mut recv, rpc::MAX_FRAME).await;
    conn.close(0u32.into(), b"thanks");
    match answer.map_err(|e| proto(&e))? {
        JoinResponse::Welcome {
            genesis,
            invite,
            admission,
            records,
        } => {
            // Trust, but verify: the genesis must be the network the ticket names.
            let bytes = postcard::to_stdvec(&genesis).map_err(|e| proto(&e))?;
            if Hash::of(&bytes) != ticket.network || genesis.verify().is_err() {
                return Err(RedeemError::Protocol(
                    "the issuer sent a genesis of another network".into(),
                ));
            }
            let i = invite.verify().map_err(|e| proto(&e))?;
            if i.secret_hash != Hash::of(&ticket.secret) {
                return Err(RedeemError::Protocol(
                    "the issuer sent another invite".into(),
                ));
            }
            if i.issuer != ticket.issuer.id
                || !Admission::admits(&admission, &i, &i.secret_hash, &me)
            {
                return Err(RedeemError::Protocol(
                    "the issuer's admission does not admit this node".into(),
                ));
            }
            Ok(Welcome {
                genesis,
                membership: crate::identity::Membership { invite, admission },
                records,
            })
        }
        JoinResponse::Refused(e) => Err(e.into()),
        other => Err(RedeemError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// How many members are introduced to at once.
const INTRODUCE_AT_ONCE: usize = 8;

/// How soon the same member is introduced to again.
const INTRODUCE_AGAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How many asks wait for a free slot; more are dropped (a member that
/// still disagrees fails again, and asks again).
const INTRODUCTIONS_WAITING: usize = 64;

/// Sends this node's own record to members over the join protocol, at
/// their public addresses: at start, to every member whose record has a
/// mesh, so each makes this node a mesh peer (or stops taking it for one)
/// before anything is sent over the mesh; later, to each member named in
/// `asks`: one that refused this node at its public door, or with which a
/// sync failed (`Peers::introduce_to`). Two members that disagree about
/// which of them runs the mesh would otherwise call each other at doors
/// the other keeps shut, and never sync again. A member that cannot be
/// reached now learns the record later, by sync through the others.
///
/// From an endpoint of its own, with a key of the moment: a member's
/// endpoint remembers where a node id last called from and may dial it
/// there again, and this node is to be reached only over the mesh.
pub async fn introduce(
    bind: std::net::SocketAddr,
    members: Arc<Members>,
    mut asks: tokio::sync::mpsc::Receiver<PublicKey>,
    cancel: CancellationToken,
) {
    let any = std::net::SocketAddr::new(bind.ip(), 0);
    let key = match crate::identity::generate_key(Path::new("(introduction)")) {
        Ok(k) => k,
        Err(error) => {
            warn!(%error, "cannot introduce this node to the members");
            return;
        }
    };
    let endpoint =
        match crate::endpoint::bind(&key, any, iroh::address_lookup::MemoryLookup::new()).await {
            Ok(e) => e,
            Err(error) => {
                warn!(%error, "cannot introduce this node to the members");
                return;
            }
        };
    let mut waiting: std::collections::VecDeque<PublicKey> = members
        .directory()
        .members()
        .filter(|(n, _)| n.id != members.id && n.mesh.is_some())
        .map(|(n, _)| n.id)
        .collect();
    let mut last: std::collections::HashMap<PublicKey, tokio::time::Instant> = Default::default();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < INTRODUCE_AT_ONCE
            && let Some(peer) = waiting.pop_front()
        {
            if last
                .get(&peer)
                .is_some_and(|t| t.elapsed() < INTRODUCE_AGAIN)
            {
                continue;
            }
            let Some(req) = introduction(&members) else {
                continue;
            };
            let Some(addr) = public_addr(&members, &peer) else {
                continue;
            };
            last.insert(peer, tokio::time::Instant::now());
            running.spawn(introduce_once(endpoint.clone(), addr, req));
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(peer) = asks.recv() => {
                if waiting.len() < INTRODUCTIONS_WAITING && !waiting.contains(&peer) {
                    waiting.push_back(peer);
                }
            }
            Some(_) = running.join_next() => {}
        }
    }
    running.shutdown().await;
    endpoint.close().await;
}

/// This node's introduction, as it stands now.
fn introduction(members: &Members) -> Option<JoinRequest> {
    let (record, invite) = members.introduction()?;
    Some(JoinRequest::Introduce {
        network: members.network,
        record: Record::Node(record),
        invite: invite.map(Record::Invite),
    })
}

/// Where member `peer` answers the join protocol: its public addresses.
fn public_addr(members: &Members, peer: &PublicKey) -> Option<EndpointAddr> {
    let dir = members.directory();
    let (n, _) = dir.node(peer)?;
    let id = iroh::PublicKey::from_bytes(peer.as_bytes()).ok()?;
    Some(
        n.addrs
            .iter()
            .fold(EndpointAddr::new(id), |a, s| a.with_ip_addr(*s)),
    )
}

async fn introduce_once(endpoint: Endpoint, addr: EndpointAddr, req: JoinRequest) {
    let peer = addr.id.fmt_short().to_string();
    match tokio::time::timeout(JOIN_TIMEOUT, ask(&endpoint, addr, &req)).await {
        Ok(Ok(JoinResponse::Introduced)) => {
            tracing::debug!(%peer, "introduced to a member");
        }
        Ok(Ok(other)) => {
            warn!(%peer, answer = ?other, "a member refused this node's introduction")
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "could not introduce this node"),
        Err(_) => tracing::debug!(%peer, "no answer to an introduction"),
    }
}

/// One request and its answer over `maki/join/1`.
async fn ask(
    endpoint: &Endpoint,
    addr: EndpointAddr,
    req: &JoinRequest,
) -> Result<JoinResponse, String> {
    let conn = endpoint
        .connect(addr, rpc::JOIN_ALPN)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    frame::write(&mut send, req)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = frame::read::<JoinResponse>(&mut recv, rpc::MAX_FRAME).await;
    conn.close(0u32.into(), b"thanks");
    answer.map_err(|e| e.to_string())
}
