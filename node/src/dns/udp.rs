//! The nameserver's UDP workers: one thread per core, each with its own
//! `SO_REUSEPORT` socket. A worker sleeps in `recvmmsg` with
//! `MSG_WAITFORONE` (woken by the first query, it takes whatever else has
//! arrived, up to [`BATCH`]), answers each query inline from its copy of
//! the zones' snapshot, and sends the replies back in one `sendmmsg`. So
//! a busy worker makes two system calls per batch, with no poller, task,
//! channel or lock per query; gdnsd's loop has the same shape.

use std::{
    collections::HashMap,
    io::{self, IoSlice, IoSliceMut},
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmsg, setsockopt, sockopt,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{From, Stats, Zones, respond};

/// Datagrams taken per receive.
const BATCH: usize = 32;
/// Room per datagram: a query longer than this is cut (`MSG_TRUNC`) and
/// dropped. Queries are a name and an OPT record, far below it.
const ROOM: usize = 4096;
/// How often an idle worker looks whether it should stop.
const WAKE: Duration = Duration::from_millis(200);

/// A UDP socket at `addr` that other workers' sockets may share
/// (`SO_REUSEPORT`: the kernel spreads the clients over them). Blocking,
/// with a receive timeout of [`WAKE`].
pub(super) fn reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` takes IPv4 too, as a plain bind would on Linux.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_read_timeout(Some(WAKE))?;
    socket.bind(&addr.into())?;
    if every_address(addr) {
        // Bound to every address, each reply must leave from the one its
        // query came to: the kernel says which with each datagram.
        let err = |e: nix::Error| io::Error::from_raw_os_error(e as i32);
        if addr.is_ipv6() {
            setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true).map_err(err)?;
        }
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true).map_err(err)?;
    }
    Ok(socket.into())
}

/// Whether a socket at `addr` takes datagrams to every local address
/// (`0.0.0.0`, `[::]`, and `[::ffff:0.0.0.0]`, which is the first).
fn every_address(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_unspecified()
}

/// The address a query came to, as the kernel gave it, to send the reply
/// from.
#[derive(Clone, Copy)]
enum Local {
    Bound,
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

/// One worker's loop, until `cancel`.
pub(super) fn serve(
    socket: UdpSocket,
    worker: usize,
    zones: &Zones,
    stats: &Stats,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    // Bound to one address, replies leave from it whatever the route, so
    // they go out together (`sendmmsg`). Bound to every address, each
    // names its source (IP_PKTINFO), one `sendmsg` each.
    let batched = !every_address(socket.local_addr()?);
    // Room for both: a dual-stack socket gives IPv4 queries both.
    let control = (!batched).then(|| nix::cmsg_space!(libc::in_pktinfo, libc::in6_pktinfo));
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, control.clone());
    let mut bufs = vec![[0u8; ROOM]; BATCH];
    let mut got: Vec<(usize, SocketAddr, Local)> = Vec::with_capacity(BATCH);
    let mut out: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut generation = zones.generation();
    let mut snap = zones.get();
    let mut turn = worker;
    let mut cache = ReplyCache::new();
    while !cancel.is_cancelled() {
        got.clear();
        if control.is_some() {
            // nix leaves each header's control length at what the last
            // datagram used; the kernel would take it as the room left.
            headers = MultiHeaders::preallocate(BATCH, control.clone());
        }
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let received = match recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(r) => r,
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => continue,
                Err(error) => {
                    debug!(%error, "DNS receive failed");
                    // Not a busy loop if the error persists.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            for msg in received {
                let Some(addr) = msg.address.as_ref().and_then(socket_addr) else {
                    got.push((0, SocketAddr::from(([0, 0, 0, 0], 0)), Local::Bound));
                    continue;
                };
                let mut local = Local::Bound;
                // A dual-stack socket gives an IPv4 query both kinds of
                // info: either may show a broadcast.
                let mut refuse = false;
                // A link-local sender is answered on the link it is on.
                let link_local = matches!(addr, SocketAddr::V6(a) if a.scope_id() != 0);
                match msg.cmsgs() {
                    // Cut control messages (they do not fit): where the
                    // query came to is not known, so it is not answered.
                    Err(_) => refuse = true,
                    Ok(cmsgs) => {
                        for c in cmsgs {
                            match c {
                                ControlMessageOwned::Ipv4PacketInfo(mut info) => {
                                    info.ipi_ifindex = 0;
                                    local = Local::V4(info);
                                    refuse |= not_unicast(&local);
                                }
                                ControlMessageOwned::Ipv6PacketInfo(mut info) => {
                                    if !link_local {
                                        info.ipi6_ifindex = 0;
                                    }
                                    local = Local::V6(info);
                                    refuse |= not_unicast(&local);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                // A cut datagram is not a query we can read whole; one to
                // a broadcast or multicast address is not answered.
                let len = if msg.flags.contains(MsgFlags::MSG_TRUNC) || refuse {
                    0
                } else {
                    msg.bytes
                };
                got.push((len, addr, local));
            }
        }
        let current = zones.generation();
        if current != generation {
            generation = current;
            snap = zones.get();
        }
        let now = Instant::now();
        let secs = crate::now();
        for (buf, &(len, addr, local)) in bufs.iter().zip(&got) {
            // Port 0 cannot be answered; it is only ever forged.
            if addr.port() == 0 || len == 0 {
                Stats::count(&stats.dropped);
                continue;
            }
            let query = &buf[..len];
            let from = From {
                ip: addr.ip().to_canonical(),
                tcp: false,
                now: secs,
            };
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
            match local {
                Local::Bound => out.push((reply.to_vec(), addr)),
                Local::V4(info) => {
                    send_from(fd, reply, addr, ControlMessage::Ipv4PacketInfo(&info))
                }
                Local::V6(info) => {
                    send_from(fd, reply, addr, ControlMessage::Ipv6PacketInfo(&info))
                }
            }
        }
        if !out.is_empty() {
            send_batch(&socket, &out);
            out.clear();
        }
    }
    Ok(())
}

/// The sender's address, with its scope (a link-local IPv6 sender can
/// only be answered on its link).
fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    s.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(std::net::SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))
    })
}

/// Whether a query taken at `local` was sent to a broadcast or
/// multicast address. Every worker's socket gets a copy of those, and
/// each reply (from the interface's own address, `ipi_spec_dst`) would
/// multiply the asker's bytes: a reflector. They are not answered.
fn not_unicast(local: &Local) -> bool {
    match local {
        Local::Bound => false,
        // For a datagram to one of this host's addresses, the address in
        // its header is the one it was taken at; a broadcast's is not.
        Local::V4(info) => info.ipi_addr.s_addr != info.ipi_spec_dst.s_addr,
        Local::V6(info) => std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr).is_multicast(),
    }
}

/// One reply, from the address named in `local`. A full send buffer
/// drops it, as a lost datagram would: the client asks again.
fn send_from(fd: i32, reply: &[u8], to: SocketAddr, local: ControlMessage<'_>) {
    let dest = SockaddrStorage::from(to);
    if let Err(error) = sendmsg(
        fd,
        &[IoSlice::new(reply)],
        &[local],
        MsgFlags::MSG_DONTWAIT,
        Some(&dest),
    ) {
        debug!(%error, %to, "DNS reply not sent");
    }
}

/// Sends `replies` with as few `sendmmsg` calls as the kernel takes them
/// in; what a full send buffer refuses is dropped, as a lost datagram.
fn send_batch(socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
    let addrs: Vec<SocketAddrAny> = replies
        .iter()
        .map(|(_, a)| SocketAddrAny::from(*a))
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = replies.iter().map(|(r, _)| [IoSlice::new(r)]).collect();
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
                debug!(%error, to = %replies[sent].1, "DNS reply not sent");
                // Skip the one that failed (a bad address) and go on.
                sent += 1;
            }
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
    /// What the keys and replies take, roughly.
    bytes: usize,
    generation: u64,
    key: Vec<u8>,
}

/// How long a cached reply is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);
/// The most replies a worker keeps, and the most bytes they may take;
/// past either the cache starts over. A flood of made-up names fills it
/// in well under a second and gains nothing from it, so it stays small:
/// a worker per core must not make a large host hold gigabytes.
const CACHE_ENTRIES: usize = 8192;
const CACHE_BYTES: usize = 1 << 20;
/// Queries longer than this are answered afresh.
const CACHE_QUERY_MAX: usize = 512;

impl ReplyCache {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
            generation: u64::MAX,
            key: Vec::with_capacity(16 + CACHE_QUERY_MAX),
        }
    }

    /// Sets the key for `query` from `ip`; false if it is not cacheable.
    fn keyed(&mut self, ip: IpAddr, query: &[u8]) -> bool {
        if query.len() < 12 || query.len() > CACHE_QUERY_MAX {
            return false;
        }
        self.key.clear();
        match ip {
            IpAddr::V4(v4) => self.key.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => self.key.extend_from_slice(&v6.octets()),
        }
        self.key.extend_from_slice(&query[2..]);
        true
    }

    /// The cached reply for the keyed query, with `id` put in.
    fn get(&mut self, generation: u64, id: [u8; 2], now: Instant) -> Option<&[u8]> {
        if generation != self.generation {
            self.map.clear();
            self.bytes = 0;
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
        let size = self.key.len() + reply.len();
        if self.map.len() >= CACHE_ENTRIES || self.bytes + size > CACHE_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.map.insert(
            self.key.as_slice().into(),
            (reply.to_vec(), now + CACHE_FOR),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::dns::{Settings, Snapshot};

    #[test]
    fn cached_replies_take_the_new_id_and_go_with_the_zones_or_time() {
        let mut c = ReplyCache::new();
        let ip = IpAddr::from([10, 0, 0, 1]);
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
        assert!(c.keyed(IpAddr::from([10, 0, 0, 2]), &query));
        assert!(c.get(5, [7, 7], now).is_none());
        assert!(c.keyed(ip, &query));
        assert!(c.get(5, [7, 7], now + CACHE_FOR).is_none());
        assert!(c.get(6, [7, 7], now).is_none());
        assert!(c.get(6, [7, 7], now).is_none(), "cleared with the zones");
        // Too short or too long to be a query worth keeping.
        assert!(!c.keyed(ip, &query[..11]));
        assert!(!c.keyed(ip, &[0; CACHE_QUERY_MAX + 1]));
    }

    /// Sends one query for `example.com.` to `to` from a socket bound at
    /// `from` and connected to `to`: a reply from any other address is
    /// not taken, so one arriving proves where it came from.
    fn ask(from: SocketAddr, to: SocketAddr) -> io::Result<Vec<u8>> {
        let s = UdpSocket::bind(from)?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut q = vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        s.send(&q)?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    }

    /// Bound to every address (each way of writing it), a worker answers
    /// from the address it was asked at, for IPv4 and IPv6; a datagram
    /// too long for its room is dropped, and the worker goes on.
    #[test]
    fn replies_leave_from_the_address_asked() -> anyhow::Result<()> {
        for bind in ["[::]:0", "0.0.0.0:0", "[::ffff:0.0.0.0]:0"] {
            let bind: SocketAddr = bind.parse()?;
            assert!(every_address(bind));
            let zones = Zones::new(Snapshot::empty(Settings {
                ttl: 60,
                answers: 2,
                region: None,
                location: None,
            }));
            let stats = Stats::default();
            let cancel = CancellationToken::new();
            let socket = reuseport(bind)?;
            let port = socket.local_addr()?.port();
            std::thread::scope(|s| -> anyhow::Result<()> {
                let worker = s.spawn(|| serve(socket, 0, &zones, &stats, &cancel));
                let asked = (|| -> anyhow::Result<()> {
                    for to in ["127.0.0.1", "127.0.0.2"] {
                        let to = SocketAddr::new(to.parse()?, port);
                        let reply = ask("127.0.0.1:0".parse()?, to)?;
                        // REFUSED: no zone is served.
                        assert_eq!((reply[..2].to_vec(), reply[3] & 0xf), (vec![0xab, 0xcd], 5));
                    }
                    if bind.ip().to_canonical().is_ipv6() && UdpSocket::bind("[::1]:0").is_ok() {
                        let to = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port));
                        let reply = ask("[::1]:0".parse()?, to)?;
                        assert_eq!(reply[3] & 0xf, 5);
                    }
                    let big = UdpSocket::bind("127.0.0.1:0")?;
                    big.send_to(&[0; ROOM + 1], ("127.0.0.1", port))?;
                    ask(
                        "127.0.0.1:0".parse()?,
                        SocketAddr::from(([127, 0, 0, 1], port)),
                    )?;
                    Ok(())
                })();
                cancel.cancel();
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("worker panicked"))??;
                asked
            })
            .map_err(|e| e.context(format!("bound at {bind}")))?;
            assert!(stats.queries.load(Ordering::Relaxed) >= 3);
            assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        }
        assert!(!every_address("127.0.0.1:53".parse()?));
        Ok(())
    }

    /// Queries to a broadcast or multicast address are not answered (a
    /// broadcast reaches every worker: each reply would multiply what
    /// the asker sent). Loopback has no broadcast address, so this is
    /// what the kernel reports for one.
    #[test]
    fn broadcast_and_multicast_queries_are_not_answered() {
        let v4 = |addr: [u8; 4], spec_dst: [u8; 4]| {
            Local::V4(libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(spec_dst),
                },
                ipi_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(addr),
                },
            })
        };
        let v6 = |addr: std::net::Ipv6Addr| {
            Local::V6(libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: addr.octets(),
                },
                ipi6_ifindex: 0,
            })
        };
        assert!(!not_unicast(&Local::Bound));
        assert!(!not_unicast(&v4([192, 0, 2, 2], [192, 0, 2, 2])));
        assert!(not_unicast(&v4([255, 255, 255, 255], [192, 0, 2, 2])));
        assert!(not_unicast(&v4([192, 0, 2, 255], [192, 0, 2, 2])));
        assert!(!not_unicast(&v6("fd00::2"
            .parse()
            .unwrap_or(std::net::Ipv6Addr::LOCALHOST))));
        assert!(not_unicast(&v6("ff02::1"
            .parse()
            .unwrap_or(std::net::Ipv6Addr::LOCALHOST))));
    }

    /// A link-local sender keeps its scope, or the reply cannot be sent.
    #[test]
    fn a_link_local_sender_keeps_its_scope() {
        let from = SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::1".parse().unwrap_or(std::net::Ipv6Addr::LOCALHOST),
            5353,
            0,
            4,
        ));
        assert_eq!(socket_addr(&SockaddrStorage::from(from)), Some(from));
    }

    #[test]
    fn the_reply_cache_stays_within_its_bytes() {
        let mut c = ReplyCache::new();
        let now = Instant::now();
        c.get(1, [0, 0], now);
        for i in 0..5000u32 {
            let mut q = vec![0u8; 40];
            q[2..6].copy_from_slice(&i.to_be_bytes());
            assert!(c.keyed(IpAddr::from([10, 0, 0, 1]), &q));
            c.put(&[0; 1232], now);
            assert!(c.bytes <= CACHE_BYTES);
        }
    }
}
