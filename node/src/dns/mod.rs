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
    collections::HashMap,
    io::{self, IoSliceMut},
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
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

/// A worker's recent replies by what was asked: the same query from the
/// same address, while the zones stay the same, gets the same reply (its
/// id aside), as a packet cache in PowerDNS or Knot gives it. Keys are
/// the asker's address then the query after its id; entries live
/// [`CACHE_FOR`], so geo answers still take turns among equal nodes.
struct ReplyCache {
    map: HashMap<Box<[u8]>, (Vec<u8>, Instant)>,
    generation: u64,
    key: Vec<u8>,
}

/// How long a cached reply is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);
/// The most replies a worker keeps; past it the cache starts over.
const CACHE_ENTRIES: usize = 8192;
/// Queries longer than this are answered afresh.
const CACHE_QUERY_MAX: usize = 512;

impl ReplyCache {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            generation: u64::MAX,
            key: Vec::with_capacity(16 + CACHE_QUERY_MAX),
        }
    }

    /// Sets the key for `query` from `ip`; false if it is not cacheable.
    fn keyed(&mut self, ip: std::net::IpAddr, query: &[u8]) -> bool {
        if query.len() < 12 || query.len() > CACHE_QUERY_MAX {
            return false;
        }
        self.key.clear();
        match ip {
            std::net::IpAddr::V4(v4) => self.key.extend_from_slice(&v4.octets()),
            std::net::IpAddr::V6(v6) => self.key.extend_from_slice(&v6.octets()),
        }
        self.key.extend_from_slice(&query[2..]);
        true
    }

    /// The cached reply for the keyed query, with `id` put in.
    fn get(&mut self, generation: u64, id: [u8; 2], now: Instant) -> Option<&[u8]> {
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
            return None;
        }
        let (reply, until) = self.map.get_mut(self.key.as_slice())?;
        if now >= *until {
            return None;
        }
        reply[..2].copy_from_slice(&id);
        Some(reply)
    }

    fn put(&mut self, reply: &[u8], now: Instant) {
        if self.map.len() >= CACHE_ENTRIES {
            self.map.clear();
        }
        self.map.insert(
            self.key.as_slice().into(),
            (reply.to_vec(), now + CACHE_FOR),
        );
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
    let mut cache = ReplyCache::new();
    // Bound to one address, replies leave from it whatever the route:
    // they go out in batches (`sendmmsg`). Bound to every address, each
    // reply names the address its query came to (IP_PKTINFO), one
    // `sendmsg` each, so a host with several addresses answers from the
    // one asked.
    let batched = !socket.local_addr()?.ip().is_unspecified();
    let mut out: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            ready = socket.readable() => ready?,
        }
        let now = Instant::now();
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
            let current = zones.generation();
            if current != generation {
                generation = current;
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
                    now: crate::now(),
                };
                let stride = meta.stride.max(1);
                for query in buf[..meta.len.min(buf.len())].chunks(stride) {
                    turn = turn.wrapping_add(1);
                    let fresh;
                    let cacheable = cache.keyed(from.ip, query);
                    let id = [query[0], query.get(1).copied().unwrap_or(0)];
                    let reply = match cacheable.then(|| cache.get(generation, id, now)).flatten() {
                        Some(hit) => {
                            Stats::count(&stats.queries);
                            hit
                        }
                        None => {
                            let Some(reply) = respond(&snap, query, from, turn, stats) else {
                                continue;
                            };
                            if cacheable {
                                cache.put(&reply, now);
                            }
                            fresh = reply;
                            &fresh
                        }
                    };
                    if batched {
                        out.push((reply.to_vec(), meta.addr));
                        continue;
                    }
                    let transmit = noq_udp::Transmit {
                        destination: meta.addr,
                        ecn: None,
                        contents: reply,
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
            if !out.is_empty() {
                send_batch(&socket, &out);
                out.clear();
            }
        }
    }
}

/// Sends `replies` with as few `sendmmsg` calls as the kernel takes them
/// in; what a full send buffer refuses is dropped, as a lost datagram.
fn send_batch(socket: &tokio::net::UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
    let addrs: Vec<SocketAddrAny> = replies
        .iter()
        .map(|(_, a)| SocketAddrAny::from(*a))
        .collect();
    let iovs: Vec<[std::io::IoSlice<'_>; 1]> = replies
        .iter()
        .map(|(r, _)| [std::io::IoSlice::new(r)])
        .collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = replies
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
        .collect();
    let mut sent = 0;
    while sent < msgs.len() {
        match sendmmsg(socket, &mut msgs[sent..], SendFlags::DONTWAIT) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => {
                debug!(%error, dropped = msgs.len() - sent, "DNS replies not sent");
                // Skip the one that failed (a bad address) and go on.
                sent += 1;
            }
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
    let ids: Vec<_> = dir.members().map(|(n, _)| n.id).collect();
    let down = members
        .health
        .down(crate::health::verdict::Service::Http, &ids);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_replies_take_the_new_id_and_go_with_the_zones_or_time() {
        let mut c = ReplyCache::new();
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        let query = [1, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
        let now = Instant::now();
        assert!(c.keyed(ip, &query));
        assert!(c.get(5, [1, 2], now).is_none());
        c.put(&[1, 2, 0x84, 0, 9, 9, 9, 9, 9, 9, 9, 9], now);
        assert_eq!(
            c.get(5, [7, 7], now).map(|r| r[..3].to_vec()),
            Some(vec![7, 7, 0x84])
        );
        // Another asker, or the same after the time, or new zones: afresh.
        assert!(c.keyed(std::net::IpAddr::from([10, 0, 0, 2]), &query));
        assert!(c.get(5, [7, 7], now).is_none());
        assert!(c.keyed(ip, &query));
        assert!(c.get(5, [7, 7], now + CACHE_FOR).is_none());
        assert!(c.get(6, [7, 7], now).is_none());
        assert!(c.get(6, [7, 7], now).is_none(), "cleared with the zones");
        // Too short or too long to be a query worth keeping.
        assert!(!c.keyed(ip, &query[..11]));
        assert!(!c.keyed(ip, &[0; CACHE_QUERY_MAX + 1]));
    }
}
