//! Before the CA is told to look: every node it may ask answers the
//! challenges.
//!
//! The challenges reach the other nodes in the order record, by gossip and
//! sync: within a second on a healthy mesh, later across a slow or lossy
//! one, and even this node's own edge and nameservers take them up a
//! moment after the record is written. A CA that asks a node the record has not reached yet fails the
//! order, and the site then waits a minute, doubling. So the orderer asks
//! each node itself, the way the CA will: HTTP-01 at every live edge's
//! public address, DNS-01 at every nameserver. When all answer, or after
//! [`MAX_WAIT`], the CA is told to look; the nodes that lagged are logged.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, Query},
    rr::{Name, RData, RecordType},
};
use maki_protocol::{
    PublicKey,
    acme::{Challenge, ChallengeKind},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinSet,
};
use tracing::{info, warn};

use crate::{
    health::{Service, targets},
    members::Members,
};

/// How long the challenges get to reach every node.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often the nodes that lag are asked again.
const AGAIN: Duration = Duration::from_millis(250);
/// How long one question may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Questions in flight at once.
const AT_ONCE: usize = 32;
/// The most of an HTTP answer read: the proof is under 100 bytes.
const HTTP_ANSWER_MAX: u64 = 8 * 1024;

/// Waits until every node the CA may ask answers `challenges`, or
/// [`MAX_WAIT`]; returns how many nodes still lagged.
pub async fn until_answered(members: &Members, challenges: &[Challenge]) -> usize {
    let started = Instant::now();
    loop {
        let lagging = lagging(members, challenges).await;
        if lagging.is_empty() {
            info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "every node answers the challenges"
            );
            return 0;
        }
        if started.elapsed() >= MAX_WAIT {
            let nodes: Vec<String> = lagging.iter().map(|n| n.fmt_short().to_string()).collect();
            warn!(
                ?nodes,
                "telling the CA to look, though these nodes do not answer the challenges yet"
            );
            return lagging.len();
        }
        tokio::time::sleep(AGAIN).await;
    }
}

/// The nodes, this one among them, that do not answer one of
/// `challenges` yet. Edges the health quorum finds down are left out: DNS
/// does not send the CA there.
async fn lagging(members: &Members, challenges: &[Challenge]) -> Vec<PublicKey> {
    let dir = members.directory();
    let down = members.http_down(&dir);
    let mut questions = Vec::new();
    for (node, service, at) in targets(members) {
        for c in challenges {
            let asks = match (service, c.kind) {
                (Service::Http, ChallengeKind::Http01) => !down.contains(&node),
                (Service::Dns, ChallengeKind::Dns01) => true,
                _ => false,
            };
            if asks {
                questions.push((node, at, c));
            }
        }
    }
    let mut lagging = Vec::new();
    for batch in questions.chunks(AT_ONCE) {
        let mut asking = JoinSet::new();
        for (node, at, c) in batch {
            let (node, at, c) = (*node, *at, (*c).clone());
            asking.spawn(async move {
                let answered = tokio::time::timeout(ASK_TIMEOUT, answers(at, &c))
                    .await
                    .unwrap_or(false);
                (!answered).then_some(node)
            });
        }
        while let Some(asked) = asking.join_next().await {
            lagging.extend(asked.ok().flatten());
        }
    }
    lagging.sort();
    lagging.dedup();
    lagging
}

async fn answers(at: SocketAddr, c: &Challenge) -> bool {
    match c.kind {
        ChallengeKind::Http01 => http_answers(at, c).await.unwrap_or(false),
        ChallengeKind::Dns01 => dns_answers(at, c).await.unwrap_or(false),
    }
}

/// The CA's own request: `GET /.well-known/acme-challenge/TOKEN` with
/// the name as Host, over plain HTTP.
async fn http_answers(at: SocketAddr, c: &Challenge) -> Option<bool> {
    // Both come from the CA: nothing but what they may hold goes into
    // the request line and Host.
    let token_ok = c
        .token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let name_ok = c
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !token_ok || !name_ok {
        return None;
    }
    let mut conn = tokio::net::TcpStream::connect(at).await.ok()?;
    let request = format!(
        "GET /.well-known/acme-challenge/{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: makiatto-acme-settle\r\nConnection: close\r\n\r\n",
        c.token, c.name
    );
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    conn.take(HTTP_ANSWER_MAX)
        .read_to_end(&mut answer)
        .await
        .ok()?;
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(answer.starts_with(b"HTTP/1.1 200 ") && answer[head_end + 4..] == *c.proof.as_bytes())
}

/// A TXT query for the challenge's name, as a resolver would send it.
async fn dns_answers(at: SocketAddr, c: &Challenge) -> Option<bool> {
    let name = Name::from_ascii(format!("{}.", c.txt_name())).ok()?;
    let mut query = Message::query();
    let id = u16::from_be_bytes(crate::health::rand_id());
    query.metadata.id = id;
    query.add_query(Query::query(name, RecordType::TXT));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    query.set_edns(edns);
    let bytes = query.to_vec().ok()?;
    let bind: SocketAddr = if at.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    sock.send_to(&bytes, at).await.ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await.ok()?;
        if from != at {
            continue;
        }
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if reply.metadata.id != id {
            continue;
        }
        // Too large for UDP: the CA's resolver goes to TCP, and the
        // answer is there; nothing here tells which, so it counts.
        if reply.metadata.truncation {
            return Some(true);
        }
        return Some(reply.answers.iter().any(|r| match &r.data {
            RData::TXT(txt) => txt.txt_data.concat() == c.proof.as_bytes(),
            _ => false,
        }));
    }
}
