//! Authoritative DNS for the sites (the `dns` role): every site domain
//! and alias is a zone, and its name answers with the nodes nearest the
//! visitor that serve the site's current version.
//!
//! The wire format is hickory-proto's; the server loops are ours. UDP is
//! served by one blocking thread per core on one socket, each answering
//! inline from its copy of the zones' snapshot (no task, no channel, no
//! lock per query); TCP by a task per connection on the node's runtime.
//! See docs/dns.md.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub mod answer;
pub mod geo;
pub mod geoip;
pub mod zones;

pub use answer::{From, Stats, respond};
pub use geoip::GeoDb;
pub use zones::{ROLE_DNS, Settings, Snapshot, Zones};

use crate::members::Members;

/// How long a TCP connection may sit idle between queries (RFC 7766 asks
/// servers to let go of idle clients; unbound uses 10 s too).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once; more wait in the backlog.
const TCP_CONNS: usize = 256;
/// How often a UDP worker looks at the stop token while no query comes.
const UDP_WAKE: Duration = Duration::from_millis(200);
/// How often the zones are rebuilt from the records and holdings.
const REBUILD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for DNS on {addr}: {source}")]
pub struct DnsError {
    addr: SocketAddr,
    source: io::Error,
}

/// The running nameserver.
#[derive(Debug)]
pub struct Dns {
    addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: JoinSet<()>,
    pub stats: Arc<Stats>,
}

impl Dns {
    /// Binds UDP and TCP at `addr` (port 0 picks one port free for both)
    /// and serves `zones` until `cancel`.
    pub fn spawn(
        addr: SocketAddr,
        threads: usize,
        zones: Arc<Zones>,
        cancel: CancellationToken,
    ) -> Result<Self, DnsError> {
        let err = |source| DnsError { addr, source };
        let (udp, tcp) = bind_both(addr).map_err(err)?;
        let bound = udp.local_addr().map_err(err)?;
        udp.set_read_timeout(Some(UDP_WAKE)).map_err(err)?;
        let stats = Arc::new(Stats::default());
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let socket = udp.try_clone().map_err(err)?;
            let (zones, stats, cancel) = (zones.clone(), stats.clone(), cancel.clone());
            let handle = std::thread::Builder::new()
                .name(format!("dns-{i}"))
                .spawn(move || serve_udp(socket, i, &zones, &stats, &cancel))
                .map_err(err)?;
            handles.push(handle);
        }
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_tcp(tcp, zones, stats.clone(), cancel));
        Ok(Self {
            addr: bound,
            threads: handles,
            tasks,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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

/// A UDP socket and a TCP listener at one address. With port 0, the
/// port the UDP socket got may be taken for TCP: another is tried.
fn bind_both(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(addr)?;
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

fn serve_udp(
    socket: UdpSocket,
    worker: usize,
    zones: &Zones,
    stats: &Stats,
    cancel: &CancellationToken,
) {
    // Big enough for any query with EDNS; a longer datagram is cut by the
    // kernel, and the cut message fails to parse (FORMERR).
    let mut buf = [0u8; 4096];
    let mut generation = zones.generation();
    let mut snap = zones.get();
    let mut turn = worker;
    while !cancel.is_cancelled() {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                warn!(%error, "DNS receive failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Port 0 cannot be answered; it is only ever forged.
        if src.port() == 0 {
            continue;
        }
        let now = zones.generation();
        if now != generation {
            generation = now;
            snap = zones.get();
        }
        turn = turn.wrapping_add(1);
        let from = From {
            ip: src.ip().to_canonical(),
            tcp: false,
        };
        if let Some(reply) = respond(&snap, &buf[..n], from, turn, stats)
            && let Err(error) = socket.send_to(&reply, src)
        {
            debug!(%error, %src, "DNS reply not sent");
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    zones: Arc<Zones>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let room = Arc::new(Semaphore::new(TCP_CONNS));
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
        let (zones, stats, cancel) = (zones.clone(), stats.clone(), cancel.clone());
        conns.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = serve_conn(stream, src, &zones, &stats) => if let Err(error) = r {
                    debug!(%error, %src, "DNS TCP connection ended");
                },
            }
        });
    }
    conns.shutdown().await;
}

/// Length-prefixed queries, answered in order, until the client closes
/// or idles past [`TCP_IDLE`].
async fn serve_conn(
    mut stream: TcpStream,
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
        };
        let Some(reply) = respond(&zones.get(), query, from, turn, stats) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        stream.write_all(&out).await?;
    }
}

/// Rebuilds the zones from the records and what every member holds,
/// every [`REBUILD`], until `cancel`; reads the geo database in
/// `data_dir` again when its files change (`makiatto geoip install`).
pub async fn keep_current(
    members: Arc<Members>,
    zones: Arc<Zones>,
    settings: Settings,
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
        let snap = current(&members, settings.clone(), geo.clone());
        if zones.update(snap, crate::now()) {
            debug!(zones = zones.get().zones().count(), "DNS zones changed");
        }
    }
}

/// The zones as they are now.
pub fn current(members: &Members, settings: Settings, geo: Option<Arc<GeoDb>>) -> Snapshot {
    let dir = members.directory();
    let holds = zones::holdings(
        members.id,
        members.live.holdings(),
        members
            .peers
            .all()
            .into_iter()
            .filter(|(_, p)| p.holds_known)
            .map(|(k, p)| (k, p.holds)),
    );
    let ids: Vec<_> = dir.members().map(|(n, _)| n.id).collect();
    let down = members.health.down(crate::health::Service::Http, &ids);
    zones::build(
        &zones::Inputs {
            dir: &dir,
            holds: &holds,
            down: &down,
        },
        settings,
        geo,
    )
}
