//! The blob gate: who may read and push blobs over iroh-blobs. Members
//! read from each other; a push is admitted only while an open publish of
//! the pushing key asked for that very blob.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use iroh_blobs::{
    protocol::{ChunkRanges, ChunkRangesExt, ChunkRangesSeq},
    provider::events::{AbortReason, ProviderMessage},
};
use maki_protocol::{Hash, PublicKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::peers::Peers;

/// Which pushes are allowed: per caller, the hashes its sessions asked for.
#[derive(Debug, Default)]
pub struct PushGate {
    inner: Mutex<GateInner>,
}

#[derive(Debug, Default)]
struct GateInner {
    /// iroh-blobs connection id → the caller's key.
    conns: HashMap<u64, PublicKey>,
    /// caller → session → hashes it may push, with the size announced.
    wanted: HashMap<PublicKey, HashMap<u64, HashMap<Hash, u64>>>,
}

impl PushGate {
    /// Lets `caller` push these blobs, each at most its announced size.
    pub(crate) fn allow(
        &self,
        caller: PublicKey,
        session: u64,
        blobs: impl IntoIterator<Item = (Hash, u64)>,
    ) {
        if let Ok(mut g) = self.inner.lock() {
            g.wanted
                .entry(caller)
                .or_default()
                .insert(session, blobs.into_iter().collect());
        }
    }

    pub(crate) fn revoke(&self, caller: &PublicKey, session: u64) {
        if let Ok(mut g) = self.inner.lock()
            && let Some(s) = g.wanted.get_mut(caller)
        {
            s.remove(&session);
            if s.is_empty() {
                g.wanted.remove(caller);
            }
        }
    }

    fn check_member(&self, conn: u64, peers: &Peers) -> Result<(), AbortReason> {
        let g = self.inner.lock().map_err(|_| AbortReason::Permission)?;
        match g.conns.get(&conn) {
            Some(caller) if peers.is_member(caller) => Ok(()),
            _ => Err(AbortReason::Permission),
        }
    }

    /// A push is admitted for a blob an open session of the pusher asked
    /// for, and only for the chunks its announced size covers: the hash
    /// fixes the content, not its length, so a blob larger than announced
    /// never lands more than that on disk (it stays partial, and the
    /// commit finds it missing).
    fn check_push(
        &self,
        conn: u64,
        hash: Hash,
        ranges: &ChunkRangesSeq,
    ) -> Result<(), AbortReason> {
        let g = self.inner.lock().map_err(|_| AbortReason::Permission)?;
        let caller = g.conns.get(&conn).ok_or(AbortReason::Permission)?;
        let wanted = g.wanted.get(caller).ok_or(AbortReason::Permission)?;
        let Some((0, asked)) = ranges.as_single() else {
            return Err(AbortReason::Permission);
        };
        let fits = |size: u64| asked.is_subset(&ChunkRanges::bytes(..size.max(1)));
        if wanted
            .values()
            .any(|blobs| blobs.get(&hash).is_some_and(|size| fits(*size)))
        {
            Ok(())
        } else {
            Err(AbortReason::Permission)
        }
    }
}

/// Answers iroh-blobs provider events: remembers who is on each
/// connection, serves reads to members only, admits pushes the gate
/// allows, refuses all others.
pub async fn run(
    gate: Arc<PushGate>,
    peers: Arc<Peers>,
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
                        if let Ok(mut g) = gate.inner.lock() {
                            g.conns.insert(msg.connection_id, key);
                        }
                        Ok(())
                    }
                    None => Err(AbortReason::Permission),
                };
                msg.tx.send(res).await.ok();
            }
            ProviderMessage::ConnectionClosed(msg) => {
                if let Ok(mut g) = gate.inner.lock() {
                    g.conns.remove(&msg.connection_id);
                }
            }
            // Members fetch content from each other; nobody else reads.
            ProviderMessage::GetRequestReceived(msg) => {
                let res = gate.check_member(msg.connection_id, &peers);
                msg.tx.send(res).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(msg) => {
                let res = gate.check_member(msg.connection_id, &peers);
                msg.tx.send(res).await.ok();
            }
            ProviderMessage::PushRequestReceived(msg) => {
                let hash = crate::content::from_iroh(msg.request.hash);
                let res = gate.check_push(msg.connection_id, hash, &msg.request.ranges);
                if res.is_err() {
                    warn!(%hash, "refused a push nobody asked for");
                }
                msg.tx.send(res).await.ok();
            }
            _ => {}
        }
    }
}
