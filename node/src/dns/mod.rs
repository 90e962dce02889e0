//! Authoritative DNS for the sites (the `dns` role): every site domain
//! and alias is a zone, and its name answers with the nodes nearest the
//! visitor that serve the site's current version.
//!
//! The wire format is hickory-proto's; the server loops are ours. UDP is
//! served by one thread per core, each with its own `SO_REUSEPORT` socket
//! and single-threaded runtime: it takes queries in batches (`recvmmsg`)
//! and answers each inline from its copy of the zones' snapshot (no task,
//! no channel, no lock per query). TCP is a task per connection on the
//! node's runtime.
//! See docs/dns.md.

use std::{
    io::{self, IoSliceMut},
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
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let (first, tcp) = bind_both(addr).map_err(err)?;
        let bound = first.local_addr().map_err(err)?;
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(reuseport_udp(bound).map_err(err)?);
        }
        let stats = Arc::new(Stats::default());
        let mut handles = Vec::with_capacity(threads);
        for (i, socket) in sockets.into_iter().enumerate() {
            let (zones, stats, cancel) = (zones.clone(), stats.clone(), cancel.clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(err)?;
            let handle = std::thread::Builder::new()
                .name(format!("dns-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        if let Err(error) = serve_udp(socket, i, &zones, &stats, &cancel).await {
                            warn!(%error, "a DNS worker stopped");
                        }
                    })
                })
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

/// A UDP socket at `addr` that other workers' sockets may share
/// (`SO_REUSEPORT`: the kernel spreads the clients over them).
fn reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` takes IPv4 too, as a plain bind would on Linux.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The first worker's UDP socket and the TCP listener at one address.
/// With port 0, the port the UDP socket got may be taken for TCP:
/// another is tried.
fn bind_both(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = reuseport_udp(addr)?;
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

/// Datagrams taken per receive (one `recvmmsg`).
const BATCH: usize = 32;
/// Room per datagram; a GRO-coalesced run of queries from one client
/// arrives in one buffer, cut at `stride`.
const DATAGRAM_ROOM: usize = 16 << 10;

/// One worker: takes queries in batches while they come, answers each
/// inline, replies from the address each was sent to.
async fn serve_udp(
    socket: UdpSocket,
    worker: usize,
    zones: &Zones,
    stats: &Stats,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let state = noq_udp::UdpSocketState::new((&socket).into())?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let mut bufs = vec![vec![0u8; DATAGRAM_ROOM]; BATCH];
    let mut metas = [noq_udp::RecvMeta::default(); BATCH];
    let mut generation = zones.generation();
    let mut snap = zones.get();
    let mut turn = worker;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            ready = socket.readable() => ready?,
        }
        loop {
            let got = socket.try_io(tokio::io::Interest::READABLE, || {
                let mut slices: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                state.recv((&socket).into(), &mut slices, &mut metas)
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    debug!(%error, "DNS receive failed");
                    break;
                }
            };
            let now = zones.generation();
            if now != generation {
                generation = now;
                snap = zones.get();
            }
            for (buf, meta) in bufs.iter().zip(&metas).take(n) {
                // Port 0 cannot be answered; it is only ever forged.
                if meta.addr.port() == 0 {
                    continue;
                }
                let from = From {
                    ip: meta.addr.ip().to_canonical(),
                    tcp: false,
                };
                let stride = meta.stride.max(1);
                for query in buf[..meta.len.min(buf.len())].chunks(stride) {
                    turn = turn.wrapping_add(1);
                    let Some(reply) = respond(&snap, query, from, turn, stats) else {
                        continue;
                    };
                    let transmit = noq_udp::Transmit {
                        destination: meta.addr,
                        ecn: None,
                        contents: &reply,
                        segment_size: None,
                        src_ip: meta.dst_ip,
                    };
                    // A full send buffer drops the reply, as a lost
                    // datagram would: the client asks again.
                    if let Err(error) = state.try_send((&socket).into(), &transmit) {
                        debug!(%error, to = %meta.addr, "DNS reply not sent");
                    }
                }
            }
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
