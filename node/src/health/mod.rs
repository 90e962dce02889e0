//! Health: every node probes the other members' public services (the
//! HTTP edge, the nameserver) once a second, at the addresses visitors
//! use, and gossips what it finds. A node leaves the DNS answers when a
//! majority of the other members see its edge down, so a node that is
//! cut off itself (a partition, a broken uplink) never drops the others:
//! it is one vote, whatever it sees.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use maki_protocol::PublicKey;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::members::Members;

pub mod verdict;
pub use verdict::{Health, Seen, Service};

/// How often each member is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(900);
/// A report is sent at every change, and at least this often.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Probes in flight at once.
const PROBES_AT_ONCE: usize = 64;

/// Where to probe each member's services, this node's own among them:
/// its public addresses (those of its ticket: where it is reached from
/// outside), at the service's port.
pub(crate) fn targets(members: &Members) -> Vec<(PublicKey, Service, SocketAddr)> {
    let dir = members.directory();
    let mut out = Vec::new();
    for (node, _) in dir.members() {
        for service in Service::ALL {
            if !node.roles.iter().any(|r| r == service.role()) {
                continue;
            }
            let Some(port) = node
                .ports
                .iter()
                .find(|(r, _)| r == service.role())
                .map(|(_, p)| *p)
            else {
                continue;
            };
            let ip: Option<IpAddr> = node
                .addrs
                .iter()
                .map(|a| a.ip())
                .find(|ip| !ip.is_unspecified());
            if let Some(ip) = ip {
                out.push((node.id, service, SocketAddr::new(ip, port)));
            }
        }
    }
    out
}

/// One HTTP probe: a HEAD request on a new connection; any HTTP/1.1
/// status line is a live edge.
async fn probe_http(at: SocketAddr) -> bool {
    let attempt = async {
        let mut conn = tokio::net::TcpStream::connect(at).await.ok()?;
        conn.write_all(
            b"HEAD / HTTP/1.1\r\nHost: health.makiatto.invalid\r\nUser-Agent: makiatto-health\r\nConnection: close\r\n\r\n",
        )
        .await
        .ok()?;
        let mut head = [0u8; 9];
        conn.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/1.1 ")
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

/// One DNS probe: a query for the root's SOA, which a nameserver of ours
/// refuses at once; any reply with the query's id is a live nameserver.
async fn probe_dns(at: SocketAddr) -> bool {
    let attempt = async {
        let bind: SocketAddr = if at.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
        let id: [u8; 2] = rand_id();
        // Header (id, RD=0, one question), then `.` SOA IN.
        let mut q = vec![id[0], id[1], 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0, 0, 6, 0, 1]);
        sock.send_to(&q, at).await.ok()?;
        let mut buf = [0u8; 512];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await.ok()?;
            if from == at && n >= 12 && buf[..2] == id {
                return Some(true);
            }
        }
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, attempt).await,
        Ok(Some(true))
    )
}

pub(crate) fn rand_id() -> [u8; 2] {
    let mut id = [0u8; 2];
    if getrandom::fill(&mut id).is_err() {
        id = (crate::now_millis() as u16).to_be_bytes();
    }
    id
}

/// Probes every member's services each [`PROBE_EVERY`] and gossips this
/// node's report at every change and every [`REPORT_EVERY`], until
/// `cancel`.
pub async fn run(members: Arc<Members>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_report = Instant::now();
    let mut last_sent: Option<Seen> = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        let mut targets = targets(&members);
        targets.retain(|(node, _, _)| *node != members.id);
        let ids: HashSet<PublicKey> = members.directory().members().map(|(n, _)| n.id).collect();
        members.health.retain(&ids);
        let mut probes = JoinSet::new();
        let mut changed = false;
        for (node, service, at) in targets {
            if probes.len() >= PROBES_AT_ONCE
                && let Some(Ok((node, service, ok))) = probes.join_next().await
            {
                changed |= members.health.probed(node, service, ok);
            }
            probes.spawn(async move {
                let ok = match service {
                    Service::Http => probe_http(at).await,
                    Service::Dns => probe_dns(at).await,
                };
                (node, service, ok)
            });
        }
        let collect = async {
            let mut changed = false;
            while let Some(done) = probes.join_next().await {
                if let Ok((node, service, ok)) = done
                    && members.health.probed(node, service, ok)
                {
                    info!(node = %node.fmt_short(), ?service, up = ok, "a member's service changed");
                    changed = true;
                }
            }
            changed
        };
        changed |= tokio::select! {
            _ = cancel.cancelled() => break,
            c = collect => c,
        };
        let report = members.health.report();
        if changed || last_report.elapsed() >= REPORT_EVERY || last_sent.as_ref() != Some(&report) {
            last_report = Instant::now();
            debug!(
                http_down = report.http_down.len(),
                dns_down = report.dns_down.len(),
                "health report"
            );
            members.outbox.health(&report);
            last_sent = Some(report);
        }
    }
}
