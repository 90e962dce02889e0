//! The HTTP edge: Host → the site's live manifest → rules → a blob.
//!
//! Serves HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one listener, and
//! both over TLS on another (`tls`: ALPN picks the protocol). Responses are built
//! from immutable blobs, so the strong ETag is the BLAKE3 hash of the bytes
//! sent and hot blobs are served from memory. This module reads the live
//! view and the blob store; it never changes either.
//!
//! Two parsers feed one handler: bodyless GET and HEAD over HTTP/1.1 — what
//! an edge mostly sees — take a lean path (`h1`); everything else (h2c,
//! other methods, bodies, HTTP/1.0, upgrades, malformed or oversized heads)
//! is handed to hyper with the bytes read so far. Both describe the request
//! to [`handle`] as a [`Req`].

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

mod conns;
mod h1;
mod h3;
pub mod head;
mod local;
mod site;
pub mod tickets;
mod timer;
pub mod tls;

use conns::Activity;
use h1::Stream;
pub use head::Req;
use head::View;
pub use site::handle;
use site::plain;
use tokio_rustls::TlsAcceptor;

use crate::{config::Config, content::Content, live::Live};

/// What the edge needs of the node, and nothing more: the sites served
/// now, the blob store to read them from, and its settings.
#[derive(Debug)]
pub struct Sites {
    pub live: Arc<Live>,
    pub content: Arc<Content>,
    pub config: Config,
    /// The certificates HTTPS offers; `None` without HTTPS.
    pub certs: Option<Arc<tls::Certs>>,
    /// Where HTTPS listens, once bound: what plain HTTP redirects to.
    pub https_port: std::sync::OnceLock<u16>,
    /// The Alt-Svc value HTTPS responses carry, once HTTP/3 listens.
    pub alt_svc: std::sync::OnceLock<HeaderValue>,
}

/// A response body: bytes in memory, or a blob streamed from the store.
#[derive(Debug)]
pub enum Body {
    Bytes(Bytes),
    Stream(UnsyncBoxBody<Bytes, io::Error>),
}

impl Body {
    fn empty() -> Self {
        Self::Bytes(Bytes::new())
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Bytes(b) if b.is_empty() => Poll::Ready(None),
            Body::Bytes(b) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(b))))),
            Body::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Bytes(b) => b.is_empty(),
            Body::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Bytes(b) => SizeHint::with_exact(b.len() as u64),
            Body::Stream(s) => s.size_hint(),
        }
    }
}

/// How long a new connection waits at the bound for the one shed for it.
const SHED_WAIT: Duration = Duration::from_millis(100);

/// How long open connections get to finish when the node stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The running edge: one thread per core, each with its own single-threaded
/// runtime and its own `SO_REUSEPORT` listener on the same address, like
/// nginx's workers. A connection never leaves the thread that accepted it,
/// so serving a request wakes no other thread (the multi-threaded runtime
/// spent a fifth of its time in cross-thread wakeups here).
#[derive(Debug)]
pub struct Edge {
    addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Where HTTPS listens, and with what.
#[derive(Debug)]
pub struct Https {
    pub addr: SocketAddr,
    pub config: Arc<rustls::ServerConfig>,
    /// HTTP/3 on the same port (UDP), with this QUIC TLS config.
    pub h3: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {source}")]
pub struct EdgeError {
    addr: SocketAddr,
    source: io::Error,
}

impl Edge {
    /// Binds `addr` (port 0 picks one port shared by all threads), and
    /// `https` if given, and starts `threads` workers (0: one per core)
    /// that serve until `cancel`.
    pub fn spawn(
        addr: SocketAddr,
        https: Option<Https>,
        threads: usize,
        sites: Arc<Sites>,
        cancel: CancellationToken,
    ) -> Result<Self, EdgeError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let err = |source| EdgeError { addr, source };
        let first = reuseport_listener(addr).map_err(err)?;
        let bound = first.local_addr().map_err(err)?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(reuseport_listener(bound).map_err(err)?);
        }
        let mut tls_listeners: Vec<Option<(std::net::TcpListener, TlsAcceptor)>> = Vec::new();
        let mut https_addr = None;
        let mut h3_thread = None;
        if let Some(https) = https {
            let err = |source| EdgeError {
                addr: https.addr,
                source,
            };
            let first = reuseport_listener(https.addr).map_err(err)?;
            let bound = first.local_addr().map_err(err)?;
            https_addr = Some(bound);
            sites.https_port.set(bound.port()).ok();
            if let Some(quic) = https.h3 {
                let share = (
                    sites.config.memory_cache_bytes / (threads as u64 + 1),
                    sites.config.memory_cache_max_blob,
                );
                let h3 =
                    h3::spawn(bound, quic, sites.clone(), share, cancel.clone()).map_err(err)?;
                let alt = format!("h3=\":{}\"; ma=86400", h3.addr.port());
                if let Ok(v) = HeaderValue::from_str(&alt) {
                    sites.alt_svc.set(v).ok();
                }
                h3_thread = Some(h3.thread);
            }
            let acceptor = TlsAcceptor::from(https.config);
            tls_listeners.push(Some((first, acceptor.clone())));
            for _ in 1..threads {
                tls_listeners.push(Some((
                    reuseport_listener(bound).map_err(err)?,
                    acceptor.clone(),
                )));
            }
        }
        tls_listeners.resize_with(threads, || None);
        // Past its share of the descriptors a worker sheds connections.
        let fd_limit = conns::raise_fd_limit();
        let max_conns = conns::bound(fd_limit, threads);
        debug!(fd_limit, per_worker = max_conns, "connection bound");
        // Each worker caches its own copies, so the budget is split.
        let budget = sites.config.memory_cache_bytes / threads as u64;
        let max_blob = sites.config.memory_cache_max_blob;
        let mut handles = Vec::with_capacity(threads);
        for (i, (std_listener, tls)) in listeners.into_iter().zip(tls_listeners).enumerate() {
            let sites = sites.clone();
            let cancel = cancel.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(err)?;
            let handle = std::thread::Builder::new()
                .name(format!("edge-{i}"))
                .spawn(move || {
                    local::init(budget, max_blob);
                    rt.block_on(async move {
                        let tls = match tls.map(|(l, a)| TcpListener::from_std(l).map(|l| (l, a))) {
                            Some(Err(error)) => {
                                warn!(%error, "edge worker could not start");
                                return;
                            }
                            Some(Ok(tls)) => Some(tls),
                            None => None,
                        };
                        match TcpListener::from_std(std_listener) {
                            Ok(listener) => serve(listener, tls, max_conns, sites, cancel).await,
                            Err(error) => warn!(%error, "edge worker could not start"),
                        }
                    });
                })
                .map_err(err)?;
            handles.push(handle);
        }
        handles.extend(h3_thread);
        Ok(Self {
            addr: bound,
            https_addr,
            threads: handles,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where HTTPS listens, if it does.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Waits for every worker to drain (after the token was cancelled).
    pub async fn join(self) {
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if let Err(panic) = t.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        })
        .await;
        if let Err(e) = joined
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    listener.into_std()
}

/// Accepts connections until `cancel`, then drains them. Holds at most
/// `max_conns`: past that, each new one sheds another (`conns::shed_one`:
/// the oldest idle, else the slowest busy one under its minimum rate), or
/// is closed at once when none qualifies. The node keeps accepting either
/// way, and never runs out of descriptors.
async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    max_conns: usize,
    sites: Arc<Sites>,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    // The ticker outlives the accept loop: draining connections still time out.
    let ticker_stop = CancellationToken::new();
    let ticker = tokio::spawn(timer::tick(cancel.clone(), ticker_stop.clone()));
    // An idle worker still lets go of replaced site versions.
    let catching_up = tokio::spawn({
        let (sites, stop) = (sites.clone(), ticker_stop.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => local::catch_up(&sites.live),
                }
            }
        }
    });
    let accept_tls = async || match &tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    };
    loop {
        let (accepted, secure) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => (accepted, false),
            accepted = accept_tls() => (accepted, true),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if conns::count() >= max_conns {
            if !conns::shed_one() {
                debug!(%peer, "every connection is busy and fast; refusing a new one");
                drop(stream);
                continue;
            }
            // Wait for the shed connection to close (and free its
            // descriptor) before taking this one: a burst must not
            // outrun the sheds, or the descriptors blob reads open for
            // a moment run out. A connection ends with its task.
            let _ = tokio::time::timeout(SHED_WAIT, async {
                while conns::count() >= max_conns && conns.join_next().await.is_some() {}
            })
            .await;
            // Still no room (the shed one is busy finishing a read): this
            // one is refused rather than taken past the bound.
            if conns::count() >= max_conns {
                debug!(%peer, "no room made in time; refusing a new connection");
                drop(stream);
                continue;
            }
        }
        stream.set_nodelay(true).ok();
        let registration = conns::open();
        let sites = sites.clone();
        let cancel = cancel.clone();
        let acceptor = tls.as_ref().filter(|_| secure).map(|(_, a)| a.clone());
        conns.spawn(async move {
            match acceptor {
                None => serve_conn(stream, peer, registration, sites, cancel).await,
                Some(acceptor) => {
                    // The handshake gets the time a request head does, and
                    // a connection still shaking hands is idle: the first
                    // to go when the worker needs room (a flood of
                    // handshakes never finished must not use up the
                    // descriptors).
                    let timeout = sites.config.http_header_timeout;
                    let id = registration.id();
                    let shaken = tokio::select! {
                        r = tokio::time::timeout(timeout, acceptor.accept(stream)) => r,
                        () = id.shed() => return,
                    };
                    let stream = match shaken {
                        Ok(Ok(s)) => s,
                        Ok(Err(error)) => {
                            debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    serve_conn(stream, peer, registration, sites, cancel).await
                }
            }
        });
    }
    // Idle connections close at once; one still sending a response gets
    // DRAIN (hyper's graceful shutdown uses the same), then is cut.
    let drained = tokio::time::timeout(DRAIN + Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.shutdown().await;
    }
    ticker_stop.cancel();
    ticker.await.ok();
    catching_up.await.ok();
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's transport settled: whether it is TLS, and
/// whether it agreed on HTTP/2 before its first byte (ALPN).
trait Negotiated {
    fn secure(&self) -> bool;
    fn h2(&self) -> bool;
}

impl Negotiated for tokio::net::TcpStream {
    fn secure(&self) -> bool {
        false
    }
    fn h2(&self) -> bool {
        false
    }
}

impl Negotiated for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn secure(&self) -> bool {
        true
    }
    fn h2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

async fn serve_conn<S: Stream + Negotiated>(
    stream: S,
    peer: SocketAddr,
    registration: conns::Registration,
    sites: Arc<Sites>,
    cancel: CancellationToken,
) {
    let id = registration.id();
    let header_timeout = sites.config.http_header_timeout;
    let send_timeout = sites.config.http_send_timeout;
    let alpn_h2 = stream.h2();
    let secure = stream.secure();
    let mut conn = h1::Conn::new(stream, send_timeout, id);
    let h2 = if alpn_h2 {
        conn.rewind(Bytes::new());
        true
    } else {
        let read = match h1::serve(&mut conn, &sites, header_timeout, id, secure).await {
            Ok(h1::Ended::Closed) => return,
            Ok(h1::Ended::HandOff(read)) => read,
            Err(error) => {
                debug!(%peer, %error, "http connection ended with an error");
                return;
            }
        };
        // The lean path stops at HTTP/2's preface (its version is not
        // 1.x), so what it read is the preface or a part of it.
        let h2 = read.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(&read);
        conn.rewind(read);
        h2
    };
    id.rest();
    let io = TokioIo::new(conn);
    let svc = hyper::service::service_fn(move |req| {
        let sites = sites.clone();
        // Counts the request until its response body is sent or dropped.
        let active = conns::Active::new(id);
        async move {
            let response = handle_hyper(&sites, req, secure).await;
            Ok::<_, Infallible>(response.map(|body| Counted {
                body,
                active,
                small: h2,
            }))
        }
    });
    // A connection with no request in progress for this long is closed:
    // an HTTP/2 preface (or SETTINGS) with nothing after it, an idle h2c
    // connection, an idle keep-alive one. The same deadline as a request
    // head on the lean path.
    let idle_limit = header_timeout;
    // hyper's h1 and h2 connections share no trait for graceful shutdown.
    macro_rules! drive {
        ($conn:expr) => {{
            let mut conn = pin!($conn);
            let mut shed = pin!(id.shed());
            loop {
                // Nothing wakes this loop when a request starts, so it looks
                // again at least every send timeout: a stall is caught
                // within twice that.
                let due = match id.activity() {
                    Activity::Idle(since) => since + idle_limit,
                    Activity::Busy(progress) => progress + send_timeout,
                }
                .min(std::time::Instant::now() + send_timeout);
                let grace = tokio::select! {
                    res = conn.as_mut() => break res,
                    _ = cancel.cancelled() => DRAIN,
                    // Room is needed now: no goodbye.
                    () = shed.as_mut() => break Ok(()),
                    () = timer::sleep_until(due) => match id.activity() {
                        Activity::Idle(since) if since.elapsed() >= idle_limit => CLOSE_GRACE,
                        // A response that took no step for the send
                        // timeout (a client that stopped reading, or an
                        // HTTP/2 flow-control window left shut) is cut.
                        Activity::Busy(progress) if progress.elapsed() >= send_timeout => {
                            debug!(%peer, "a response made no progress; closing");
                            break Ok(());
                        }
                        _ => continue,
                    },
                };
                conn.as_mut().graceful_shutdown();
                break tokio::time::timeout(grace, conn).await.unwrap_or(Ok(()));
            }
        }};
    }
    let res = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // Pings find a peer that vanished while a stream is open.
        builder
            .timer(timer::CoarseTimer)
            .keep_alive_interval(Some(idle_limit))
            // As long as a write gets to make progress: the ping waits in
            // line behind what the client has not read yet, which at a
            // slow client's pace with a large window takes many seconds.
            .keep_alive_timeout(send_timeout.max(idle_limit));
        drive!(builder.serve_connection(io, svc))
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(timer::CoarseTimer)
            .header_read_timeout(header_timeout)
            .max_buf_size(h1::MAX_HEAD);
        drive!(builder.serve_connection(io, svc))
    };
    if let Err(error) = res {
        debug!(%peer, %error, "http connection ended with an error");
    }
}

/// How long a connection closed for being idle (or shed) gets to say
/// goodbye (HTTP/2's GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A response body that keeps its request counted as in progress until it
/// is sent (or dropped), so a long download is never taken for idleness.
#[derive(Debug)]
struct Counted {
    body: Body,
    active: conns::Active,
    /// Over HTTP/2, a small body goes in pieces below h2's chaining
    /// threshold (see [`H2_PIECE`]).
    small: bool,
}

/// h2 writes a DATA payload of 256 bytes or more by reference, and must
/// flush (a `writev`, so a TLS record and a system call) before it takes
/// another frame: each 1 KiB response cost a system call of its own
/// (nginx writes ~7 responses per call). Payloads below it are copied
/// into h2's 16 KiB buffer, which goes out in one write with its
/// neighbours'. So bodies up to [`H2_SMALL`] go in pieces of this size.
/// At 4 KiB (17 frames) the pieces cost more than the write they save
/// (the red team measured 9–16 % fewer requests/s than a 4097-byte
/// body); the cut at 2 KiB is a guess between that and 1 KiB's gain, not
/// yet measured.
const H2_PIECE: usize = 255;
const H2_SMALL: usize = 2048;

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.small
            && let Body::Bytes(b) = &mut this.body
            && b.len() > H2_PIECE
            && b.len() <= H2_SMALL
        {
            this.active.id().progressed();
            return Poll::Ready(Some(Ok(Frame::data(b.split_to(H2_PIECE)))));
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.active.id().progressed();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// hyper's side of [`handle`]: other methods get 405, HEAD an empty body.
async fn handle_hyper<B>(sites: &Sites, req: Request<B>, secure: bool) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    match head::from_hyper(req.method(), req.uri(), req.version(), req.headers()) {
        View::Req(mut view) => {
            view.secure = secure;
            head_like(handle(sites, &view).await, head)
        }
        View::MethodNotAllowed => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        View::BadRequest => head_like(
            plain(StatusCode::BAD_REQUEST, "exactly one Host header, please\n"),
            head,
        ),
    }
}

/// For HEAD: the GET response's headers, Content-Length included, and no
/// body (RFC 9110 §9.3.2).
fn head_like(mut response: Response<Body>, head: bool) -> Response<Body> {
    if head {
        if !response.headers().contains_key(header::CONTENT_LENGTH)
            && let Some(n) = hyper::body::Body::size_hint(response.body()).exact()
        {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        *response.body_mut() = Body::empty();
    }
    response
}
