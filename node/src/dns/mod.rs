//! Authoritative DNS for the sites (the `dns` role): every site domain
//! and alias is a zone, and its name answers with the nodes nearest the
//! visitor that serve the site's current version.
//!
//! The wire format is hickory-proto's; the server loops are ours. UDP is
//! served by one blocking thread per core (`udp`). TCP, DNS over TLS and
//! DNS over QUIC are a task per connection on the node's runtime.
//! See docs/dns.md.

use std::{
    collections::HashMap,
    io,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub mod answer;
pub mod build;
pub mod doq;
pub mod dot;
pub mod geo;
pub mod geoip;
pub mod sign;
mod udp;
pub mod zones;

pub use answer::{From, Stats, respond};
pub use geoip::GeoDb;
pub use zones::{ROLE_DNS, Settings, Snapshot, Zones};

use crate::members::Members;

/// How long a TCP connection may sit idle between queries (RFC 7766 asks
/// servers to let go of idle clients; unbound uses 10 s too).
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; more wait in the backlog.
const TCP_CONNS: usize = 256;
/// TCP connections one address may hold: one client cannot take them all.
const TCP_CONNS_PER_IP: usize = 16;
/// How often the zones are rebuilt from the records and holdings.
const REBUILD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for DNS on {addr}: {source}")]
pub struct DnsError {
    addr: SocketAddr,
    source: io::Error,
}

/// DNS over TLS and over QUIC: where (TCP and UDP, one port), and the
/// TLS of each.
#[derive(Debug)]
pub struct Encrypted {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
    pub quic: Arc<rustls::ServerConfig>,
}

/// The running nameserver.
#[derive(Debug)]
pub struct Dns {
    addr: SocketAddr,
    dot: Option<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: JoinSet<()>,
    pub stats: Arc<Stats>,
}

impl Dns {
    /// Binds UDP and TCP at `addr` (port 0 picks one port free for both),
    /// and DNS over TLS at `dot` when given, and serves `zones` until
    /// `cancel`.
    pub fn spawn(
        addr: SocketAddr,
        threads: usize,
        zones: Arc<Zones>,
        dot: Option<Encrypted>,
        cancel: CancellationToken,
    ) -> Result<Self, DnsError> {
        let err = |source| DnsError { addr, source };
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let (first, tcp) = bind_both(addr).map_err(err)?;
        let bound = first.local_addr().map_err(err)?;
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(udp::reuseport(bound).map_err(err)?);
        }
        let stats = Arc::new(Stats::default());
        let mut handles = Vec::with_capacity(threads);
        for (i, socket) in sockets.into_iter().enumerate() {
            let (zones, stats, cancel) = (zones.clone(), stats.clone(), cancel.clone());
            let handle = std::thread::Builder::new()
                .name(format!("dns-{i}"))
                .spawn(move || {
                    if let Err(error) = udp::serve(socket, i, &zones, &stats, &cancel) {
                        warn!(%error, "a DNS worker stopped");
                    }
                })
                .map_err(err)?;
            handles.push(handle);
        }
        let mut tasks = JoinSet::new();
        let dot = match dot {
            Some(Encrypted {
                addr: at,
                tls: config,
                quic,
            }) => {
                let err = |source| DnsError { addr: at, source };
                let listener = std::net::TcpListener::bind(at).map_err(err)?;
                listener.set_nonblocking(true).map_err(err)?;
                let bound = listener.local_addr().map_err(err)?;
                let listener = TcpListener::from_std(listener).map_err(err)?;
                // DoQ on the same port, over UDP.
                let err = |source| DnsError {
                    addr: bound,
                    source,
                };
                let socket = std::net::UdpSocket::bind(bound).map_err(err)?;
                let endpoint = doq::endpoint(socket, quic).map_err(err)?;
                tasks.spawn(doq::serve(
                    endpoint,
                    zones.clone(),
                    stats.clone(),
                    cancel.clone(),
                ));
                let tls = tokio_rustls::TlsAcceptor::from(config);
                tasks.spawn(serve_tcp(
                    listener,
                    Some(tls),
                    zones.clone(),
                    stats.clone(),
                    cancel.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        tasks.spawn(serve_tcp(tcp, None, zones, stats.clone(), cancel));
        Ok(Self {
            addr: bound,
            dot,
            threads: handles,
            tasks,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where DNS over TLS listens, if it does.
    pub fn dot_addr(&self) -> Option<SocketAddr> {
        self.dot
    }

    /// Waits for the workers to stop (after the token was cancelled).
    pub async fn join(mut self) {
        let threads = std::mem::take(&mut self.threads);
        let joined =
            tokio::task::spawn_blocking(move || threads.into_iter().all(|t| t.join().is_ok()))
                .await;
        if !matches!(joined, Ok(true)) {
            warn!("a DNS worker panicked");
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The first worker's UDP socket and the TCP listener at one address.
/// With port 0, the port the UDP socket got may be taken for TCP:
/// another is tried.
fn bind_both(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = udp::reuseport(addr)?;
        let at = udp.local_addr()?;
        match std::net::TcpListener::bind(at) {
            Ok(tcp) => {
                tcp.set_nonblocking(true)?;
                return Ok((udp, TcpListener::from_std(tcp)?));
            }
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && tries < 16 => {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    zones: Arc<Zones>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let room = Arc::new(Semaphore::new(TCP_CONNS));
    let per_ip: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            p = room.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, src) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(%error, "DNS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = src.ip().to_canonical();
        {
            let mut held = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = held.entry(ip).or_default();
            if *n >= TCP_CONNS_PER_IP {
                debug!(%src, "too many DNS TCP connections from one address");
                continue;
            }
            *n += 1;
        }
        let (zones, stats, cancel, per_ip, tls) = (
            zones.clone(),
            stats.clone(),
            cancel.clone(),
            per_ip.clone(),
            tls.clone(),
        );
        conns.spawn(async move {
            let _permit = permit;
            let served = async {
                match tls {
                    None => serve_conn(stream, src, &zones, &stats).await,
                    Some(tls) => {
                        // The handshake gets the idle allowance of a query.
                        let stream = tokio::time::timeout(TCP_IDLE, tls.accept(stream))
                            .await
                            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                        serve_conn(stream, src, &zones, &stats).await
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = served => if let Err(error) = r {
                    debug!(%error, %src, "DNS TCP connection ended");
                },
            }
            let mut held = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = held.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&ip);
                }
            }
        });
    }
    conns.shutdown().await;
}

/// Length-prefixed queries, answered in order, until the client closes
/// or idles past [`TCP_IDLE`].
async fn serve_conn<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    src: SocketAddr,
    zones: &Zones,
    stats: &Stats,
) -> io::Result<()> {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    let mut turn = 0usize;
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let query = &mut buf[..len];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(query)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        turn = turn.wrapping_add(1);
        let from = From {
            ip: src.ip().to_canonical(),
            tcp: true,
            now: crate::now(),
        };
        let Some(reply) = respond(&zones.get(), query, from, turn, stats) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        // A client that does not read its replies is let go, as an idle one.
        match tokio::time::timeout(TCP_IDLE, stream.write_all(&out)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        }
    }
}

/// Rebuilds the zones from the records and what every member holds,
/// every [`REBUILD`], until `cancel`; reads the geo database in
/// `data_dir` again when its files change (`makiatto geoip install`).
pub async fn keep_current(
    members: Arc<Members>,
    zones: Arc<Zones>,
    settings: Settings,
    keyring: Arc<sign::Keyring>,
    data_dir: PathBuf,
    cancel: CancellationToken,
) {
    let mut every = tokio::time::interval(REBUILD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut geo = zones.get().geo.clone();
    let mut stamp = geo
        .as_ref()
        .map_or_else(|| GeoDb::stamp(&data_dir), |g| g.stamp.clone());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        let now = GeoDb::stamp(&data_dir);
        if now != stamp {
            stamp = now;
            let dir = data_dir.clone();
            match tokio::task::spawn_blocking(move || GeoDb::load(&dir)).await {
                Ok(Ok(db)) => {
                    info!(installed = db.is_some(), "read the geo database again");
                    geo = db.map(Arc::new);
                }
                Ok(Err(error)) => {
                    warn!(%error, "the geo database changed and cannot be read; keeping the one in use")
                }
                Err(error) => warn!(%error, "reading the geo database failed"),
            }
        }
        let snap = current(&members, settings.clone(), geo.clone(), &keyring);
        if zones.update(snap, crate::now()) {
            debug!(zones = zones.get().zones().count(), "DNS zones changed");
        }
    }
}

/// The zones as they are now.
pub fn current(
    members: &Members,
    settings: Settings,
    geo: Option<Arc<GeoDb>>,
    keyring: &sign::Keyring,
) -> Snapshot {
    let dir = members.directory();
    let holds = build::holdings(
        members.id,
        members.live.holdings(),
        members
            .peers
            .all()
            .into_iter()
            .filter(|(_, p)| p.holds_known)
            .map(|(k, p)| (k, p.holds)),
    );
    let down = members.http_down(&dir);
    build::build(
        &build::Inputs {
            dir: &dir,
            holds: &holds,
            down: &down,
            keyring,
        },
        settings,
        geo,
    )
}
