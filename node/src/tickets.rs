//! The session-ticket secret the `http` nodes share (`TicketKeys`): made
//! by the lowest-id live `http` node when there is none, replaced by it
//! daily and when a node that held it is no longer a member, and resealed
//! by the lowest-id holder to `http` nodes that join. Each node hands its
//! own copy to the edge's ticketer (`edge::tickets`).

use std::time::Duration;

use maki_protocol::{
    Record, SecretKey, Signed,
    tickets::{SECRET_LEN, TicketKeys},
};
use tracing::{info, warn};

use crate::{
    directory::Directory,
    edge::tickets::SharedTicketer,
    members::Members,
    secrets::{http_seals, with_randomness},
};

/// How long one secret is used before the next replaces it.
const SECRET_LIFE: Duration = Duration::from_secs(24 * 3600);

/// What [`keep`] remembers between rounds.
#[derive(Debug, Default)]
pub struct Kept {
    /// The record version whose secret the ticketer has.
    installed: Option<u64>,
}

/// One round: gives the ticketer this node's copy of the secret, and
/// makes, replaces or reseals the secret when it is this node's turn.
pub fn keep(
    members: &Members,
    key: &SecretKey,
    secret: &[u8; 32],
    ticketer: &SharedTicketer,
    kept: &mut Kept,
) {
    let dir = members.directory();
    let record = dir.ticket_keys();
    let version = record.map(|r| r.version);
    if kept.installed != version {
        kept.installed = version;
        match record.map(|r| r.open(secret)) {
            Some(Ok(shared)) => ticketer.set_secret(Some(&shared)),
            // Not sealed to this node (yet): its own keys meanwhile.
            _ => ticketer.set_secret(None),
        }
    }
    if let Some(next) = duty(&dir, members, key, secret, record)
        && let Err(error) = members.apply_local(Record::Tickets(Signed::sign(key, &next)))
    {
        warn!(%error, "could not write the session-ticket keys");
    }
}

/// The record this node should write now, if any.
fn duty(
    dir: &Directory,
    members: &Members,
    key: &SecretKey,
    secret: &[u8; 32],
    record: Option<&TicketKeys>,
) -> Option<TicketKeys> {
    let me = key.public();
    let http = http_seals(dir);
    if http.is_empty() {
        return None;
    }
    let down = members.http_down(dir);
    let first_live = http
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !down.contains(id))
        .min();
    let now = crate::now_millis();
    let stale = record.is_none_or(|r| {
        let left = r
            .sealed
            .iter()
            .any(|s| !http.iter().any(|(_, k)| *k == s.to));
        left || now.saturating_sub(r.made) >= SECRET_LIFE.as_millis() as u64
    });
    let recipients: Vec<[u8; 32]> = http.iter().map(|(_, k)| *k).collect();
    if stale {
        if first_live != Some(me) {
            return None;
        }
        let (fresh, failed) = with_randomness(|fresh| fresh());
        let mut next = TicketKeys {
            format: 1,
            made: now,
            sealed: Vec::new(),
            version: now.max(record.map_or(0, |r| r.version.saturating_add(1))),
        };
        let shared: [u8; SECRET_LEN] = fresh;
        let (sealed, failed_too) =
            with_randomness(|fresh| next.seal_to(&shared, &recipients, fresh).is_ok());
        if failed || failed_too || !sealed {
            warn!("no randomness for the session-ticket keys");
            return None;
        }
        info!(
            recipients = recipients.len(),
            "new session-ticket keys for the http nodes"
        );
        return Some(next);
    }
    let record = record?;
    let holds = |seal: &[u8; 32]| record.sealed.iter().any(|s| s.to == *seal);
    let first_holder = http
        .iter()
        .filter(|(id, seal)| holds(seal) && !down.contains(id))
        .map(|(id, _)| *id)
        .min();
    if first_holder != Some(me) || http.iter().all(|(_, seal)| holds(seal)) {
        return None;
    }
    let shared = record.open(secret).ok()?;
    let mut next = TicketKeys {
        version: now.max(record.version.saturating_add(1)),
        ..record.clone()
    };
    let (sealed, failed) =
        with_randomness(|fresh| next.seal_to(&shared, &recipients, fresh).is_ok());
    if failed || !sealed {
        return None;
    }
    info!(
        recipients = recipients.len(),
        "resealing the session-ticket keys to the http nodes that joined"
    );
    Some(next)
}
