//! The HTTP edge: Host → the site's live manifest → rules → a blob.
//!
//! Serves HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on one listener. Responses are built
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
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use maki_protocol::{
    Encoding, Hash,
    rules::{HeaderRule, is_reserved_header},
};
use n0_future::StreamExt;
use tokio::{io::AsyncSeekExt, net::TcpListener, task::JoinSet};
use tokio_util::{io::ReaderStream, sync::CancellationToken};
use tracing::{debug, warn};

mod conns;
mod h1;
pub mod head;
mod local;
mod timer;

use conns::Activity;
pub use head::Req;
use head::View;

use crate::{
    config::Config,
    content::Content,
    live::{Live, LiveSite, Served},
};

/// What the edge needs of the node, and nothing more: the sites served
/// now, the blob store to read them from, and its settings.
#[derive(Debug)]
pub struct Sites {
    pub live: Arc<Live>,
    pub content: Arc<Content>,
    pub config: Config,
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

/// How long open connections get to finish when the node stops.
const DRAIN: Duration = Duration::from_secs(5);
const BLOB_PREFIX: &str = "/.maki/blob/";
const DEFAULT_CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";
const BLOB_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The running edge: one thread per core, each with its own single-threaded
/// runtime and its own `SO_REUSEPORT` listener on the same address, like
/// nginx's workers. A connection never leaves the thread that accepted it,
/// so serving a request wakes no other thread (the multi-threaded runtime
/// spent a fifth of its time in cross-thread wakeups here).
#[derive(Debug)]
pub struct Edge {
    addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {source}")]
pub struct EdgeError {
    addr: SocketAddr,
    source: io::Error,
}

impl Edge {
    /// Binds `addr` (port 0 picks one port shared by all threads) and starts
    /// `threads` workers (0: one per core) that serve until `cancel`.
    pub fn spawn(
        addr: SocketAddr,
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
        // Past its share of the descriptors a worker sheds connections.
        let fd_limit = conns::raise_fd_limit();
        let max_conns = conns::bound(fd_limit, threads);
        debug!(fd_limit, per_worker = max_conns, "connection bound");
        // Each worker caches its own copies, so the budget is split.
        let budget = sites.config.memory_cache_bytes / threads as u64;
        let max_blob = sites.config.memory_cache_max_blob;
        let mut handles = Vec::with_capacity(threads);
        for (i, std_listener) in listeners.into_iter().enumerate() {
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
                        match TcpListener::from_std(std_listener) {
                            Ok(listener) => serve(listener, max_conns, sites, cancel).await,
                            Err(error) => warn!(%error, "edge worker could not start"),
                        }
                    });
                })
                .map_err(err)?;
            handles.push(handle);
        }
        Ok(Self {
            addr: bound,
            threads: handles,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if conns::count() >= max_conns {
            if !conns::shed_one() {
                debug!(%peer, "every connection is busy and fast; refusing a new one");
                drop(stream);
                continue;
            }
            // Let the shed connection close (and free its descriptor)
            // before the next accept: a burst must not outrun the sheds.
            tokio::task::yield_now().await;
        }
        stream.set_nodelay(true).ok();
        let registration = conns::open();
        let sites = sites.clone();
        let cancel = cancel.clone();
        conns.spawn(async move {
            serve_conn(stream, peer, registration, sites, cancel).await;
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

async fn serve_conn(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    registration: conns::Registration,
    sites: Arc<Sites>,
    cancel: CancellationToken,
) {
    let id = registration.id();
    let header_timeout = sites.config.http_header_timeout;
    let send_timeout = sites.config.http_send_timeout;
    let mut conn = h1::Conn::new(stream, send_timeout, id);
    let read = match h1::serve(&mut conn, &sites, header_timeout, id).await {
        Ok(h1::Ended::Closed) => return,
        Ok(h1::Ended::HandOff(read)) => read,
        Err(error) => {
            debug!(%peer, %error, "http connection ended with an error");
            return;
        }
    };
    // The lean path stops at HTTP/2's preface (its version is not 1.x), so
    // what it read is the preface or a part of it.
    let h2 = read.starts_with(H2_PREFACE) || H2_PREFACE.starts_with(&read);
    conn.rewind(read);
    id.rest();
    let io = TokioIo::new(conn);
    let svc = hyper::service::service_fn(move |req| {
        let sites = sites.clone();
        // Counts the request until its response body is sent or dropped.
        let active = conns::Active::new(id);
        async move {
            let response = handle_hyper(&sites, req).await;
            Ok::<_, Infallible>(response.map(|body| Counted { body, active }))
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
            .keep_alive_timeout(idle_limit);
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
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
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
async fn handle_hyper<B>(sites: &Sites, req: Request<B>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    match head::from_hyper(req.method(), req.uri(), req.version(), req.headers()) {
        View::Req(view) => head_like(handle(sites, &view).await, head),
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

/// Answers one GET or HEAD. Never fails: every problem is a status code.
/// The body is the GET body even for HEAD; the caller drops it after
/// taking its length.
pub async fn handle(sites: &Sites, req: &Req<'_>) -> Response<Body> {
    let Some(path) = decode_path(req.path) else {
        return plain(StatusCode::BAD_REQUEST, "malformed path\n");
    };
    if let Some(hash) = path.strip_prefix(BLOB_PREFIX) {
        return serve_blob(sites, hash, req).await;
    }
    match req
        .host
        .map(bare_host)
        .and_then(|h| local::site(&sites.live, h))
    {
        Some(site) => serve_site(sites, &site, &path, req).await,
        None => plain(
            StatusCode::NOT_FOUND,
            "no site is published at this address\n",
        ),
    }
}

/// A Host value without its port and trailing dot; IPv6 literals intact.
fn bare_host(h: &str) -> &str {
    let h = if h.starts_with('[') {
        h.split_once(']').map_or(h, |(a, _)| &a[1..])
    } else {
        h.rsplit_once(':').map_or(h, |(a, _)| a)
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// Percent-decodes a request path into NFC-normalisable UTF-8.
fn decode_path(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !raw.starts_with('/') {
        return None;
    }
    if !raw.contains('%') {
        // hyper hands us valid UTF-8 without NUL: nothing to decode.
        return Some(std::borrow::Cow::Borrowed(raw));
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    // Control characters (NUL, CR, LF…) have no business in a path and
    // could otherwise reach a Location header through a redirect splat.
    if s.chars().any(char::is_control) {
        return None;
    }
    Some(std::borrow::Cow::Owned(s))
}

async fn serve_blob(sites: &Sites, text: &str, req: &Req<'_>) -> Response<Body> {
    let Ok(hash) = text.parse::<Hash>() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "not a BLAKE3 hash (64 hex characters)\n",
        );
    };
    // Only what a served version references: never a manifest, an older
    // kept version, an upload in progress, or anything taken down. The
    // same answer whether or not the bytes are on disk.
    if !sites.live.references(&hash) {
        return plain(StatusCode::NOT_FOUND, "no such blob on this node\n");
    }
    let size = match sites.content.complete_size(hash).await {
        Ok(Some(size)) => size,
        Ok(None) => return plain(StatusCode::NOT_FOUND, "no such blob on this node\n"),
        Err(error) => {
            warn!(%error, "blob store failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
        }
    };
    let mut extra = HeaderMap::new();
    extra.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    extra.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    extra.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    extra.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(BLOB_CACHE_CONTROL),
    );
    send(
        sites,
        hash,
        size,
        crate::live::etag(&hash),
        None,
        StatusCode::OK,
        req,
        extra,
    )
    .await
}

enum Resolved<'a> {
    File(&'a Served),
    Redirect(u16, String),
    NotFound,
}

/// Rules first (first match wins), then the file, `dir/index.html`,
/// `/dir` → `/dir/`, and clean URLs (`/about` → `about.html`).
fn resolve<'a>(site: &'a LiveSite, path: &str, query: Option<&str>) -> Resolved<'a> {
    let with_query = |target: String| match query {
        Some(q) if !target.contains('?') => format!("{target}?{q}"),
        _ => target,
    };
    let mut path = std::borrow::Cow::Borrowed(path);
    for rule in &site.redirects {
        if let Some(caps) = rule.from.matches(&path) {
            if rule.status != 200 {
                return Resolved::Redirect(rule.status, with_query(rule.target(&caps)));
            }
            let target = rule
                .rewrite(&caps)
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_owned();
            path = std::borrow::Cow::Owned(target);
            break;
        }
    }
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.ends_with('/') {
        return site
            .file(&format!("{rel}index.html"))
            .map_or(Resolved::NotFound, Resolved::File);
    }
    if let Some(e) = site.file(rel) {
        return Resolved::File(e);
    }
    if site.file(&format!("{rel}/index.html")).is_some() {
        let mut location = String::with_capacity(rel.len() + 2);
        location.push('/');
        maki_protocol::rules::encode_into(rel, &mut location);
        location.push('/');
        return Resolved::Redirect(301, with_query(location));
    }
    site.file(&format!("{rel}.html"))
        .map_or(Resolved::NotFound, Resolved::File)
}

async fn serve_site(sites: &Sites, site: &LiveSite, path: &str, req: &Req<'_>) -> Response<Body> {
    let (file, status) = match resolve(site, path, req.query) {
        Resolved::File(f) => (f, StatusCode::OK),
        Resolved::Redirect(status, location) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let mut r = plain(status, "");
            if let Ok(v) = HeaderValue::try_from(location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        Resolved::NotFound => match site.file("404.html") {
            Some(f) => (f, StatusCode::NOT_FOUND),
            None => return plain(StatusCode::NOT_FOUND, "not found\n"),
        },
    };

    let mut extra = HeaderMap::with_capacity(8);
    if let Some(ct) = site.content_type(file) {
        extra.insert(header::CONTENT_TYPE, ct);
    }
    extra.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(DEFAULT_CACHE_CONTROL),
    );
    if !site.headers.is_empty() {
        apply_rules(&site.headers, path, &mut extra);
    }

    // Ranges address the identity representation; compression is for whole bodies.
    let wants_range = req.range.is_some() && status == StatusCode::OK;
    if !file.variants.is_empty() {
        extra.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    let chosen = if wants_range || file.variants.is_empty() {
        None
    } else {
        pick_encoding(req.accept_encoding, file)
    };
    let (hash, size, encoding) = match chosen {
        Some((enc, v)) => (v.hash, v.size, Some(*enc)),
        None => (file.hash, file.size, None),
    };
    send(
        sites,
        hash,
        size,
        crate::live::etag(&hash),
        encoding,
        status,
        req,
        extra,
    )
    .await
}

fn apply_rules(rules: &[HeaderRule], path: &str, out: &mut HeaderMap) {
    let mut set: Vec<(&str, String)> = Vec::new();
    for rule in rules {
        if rule.pattern.matches(path).is_none() {
            continue;
        }
        // Refused at publish; filtered here too, for versions published
        // before that check (framing headers would desynchronise clients).
        for (name, value) in rule.set.iter().filter(|(n, _)| !is_reserved_header(n)) {
            match set.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => {
                    v.push_str(", ");
                    v.push_str(value);
                }
                None => set.push((name, value.clone())),
            }
        }
        for name in rule.unset.iter().filter(|n| !is_reserved_header(n)) {
            set.retain(|(n, _)| n != name);
            if let Ok(name) = header::HeaderName::try_from(name.as_str()) {
                out.remove(name);
            }
        }
    }
    for (name, value) in set {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            out.insert(n, v);
        }
    }
}

/// The best encoding the client accepts (br before gzip), honouring q=0.
fn pick_encoding<'a>(
    accept: Option<&str>,
    file: &'a Served,
) -> Option<&'a (Encoding, maki_protocol::Variant)> {
    let accept = accept?;
    let mut best: Option<(&(Encoding, maki_protocol::Variant), f32)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or_default().trim();
        let enc = if token.eq_ignore_ascii_case("br") {
            Encoding::Br
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Encoding::Gzip
        } else {
            continue;
        };
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let Some(v) = file.variants.iter().find(|v| v.0 == enc) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((b, bq)) => q > bq || (q == bq && enc < b.0),
        };
        if better {
            best = Some((v, q));
        }
    }
    best.map(|(v, _)| v)
}

/// A byte range of a body of `size` bytes: inclusive start, exclusive end.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range; anything else means the whole body.
fn parse_range(value: &str, size: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = if a.is_empty() {
        match digits(b) {
            Some(0) => return RangeReq::Unsatisfiable,
            Some(n) => Some((size.saturating_sub(n), size)),
            None => None,
        }
    } else {
        match (digits(a), digits(b)) {
            (Some(start), _) if start >= size => return RangeReq::Unsatisfiable,
            (Some(start), Some(end)) if end >= start => {
                Some((start, end.saturating_add(1).min(size)))
            }
            (Some(start), None) if b.is_empty() => Some((start, size)),
            _ => None,
        }
    };
    match parsed {
        Some((s, e)) if s < e => RangeReq::Part(s, e),
        Some(_) => RangeReq::Unsatisfiable,
        None => RangeReq::Full,
    }
}

/// A run of ASCII digits (RFC 9110's `1*DIGIT`: no sign, no spaces), as a
/// number; one past `u64::MAX` is as good as `u64::MAX` for a byte position.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    })
}

/// Sends blob `hash` with conditional GET and Range handled.
#[allow(clippy::too_many_arguments)]
async fn send(
    sites: &Sites,
    hash: Hash,
    size: u64,
    etag_value: HeaderValue,
    encoding: Option<Encoding>,
    status: StatusCode,
    req: &Req<'_>,
    mut headers: HeaderMap,
) -> Response<Body> {
    headers.insert(header::ETAG, etag_value.clone());
    let etag = etag_value.to_str().unwrap_or_default();
    if let Some(enc) = encoding {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.token()),
        );
    }
    if status == StatusCode::OK {
        if let Some(inm) = req.if_none_match
            && etag_matches(inm, etag)
        {
            headers.remove(header::CONTENT_TYPE);
            return build(StatusCode::NOT_MODIFIED, headers, Body::empty());
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let if_range_ok = req.if_range.is_none_or(|v| v.trim() == etag);
    let range = match req.range {
        Some(r) if status == StatusCode::OK && encoding.is_none() && if_range_ok => {
            parse_range(r, size)
        }
        _ => RangeReq::Full,
    };
    let (status, start, end) = match range {
        RangeReq::Full => (status, 0, size),
        RangeReq::Part(s, e) => {
            if let Ok(v) = HeaderValue::try_from(format!("bytes {s}-{}/{size}", e - 1)) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
        RangeReq::Unsatisfiable => {
            if let Ok(v) = HeaderValue::try_from(format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            headers.remove(header::CONTENT_TYPE);
            return build(StatusCode::RANGE_NOT_SATISFIABLE, headers, Body::empty());
        }
    };
    // Lengths and slices come from the blob itself, never from a size a
    // manifest declared: the two are checked equal before a version goes
    // live, and a mismatch here (a disk that lost data) is an error
    // response, never a short body behind a long Content-Length.
    let body = if local::cacheable(size) {
        let bytes = match local::blob(&hash) {
            Some(b) => b,
            None => match sites.content.get_bytes(hash).await {
                Ok(b) => {
                    local::insert_blob(hash, &b);
                    b
                }
                Err(error) => {
                    warn!(%error, %hash, "blob read failed");
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
                }
            },
        };
        match bytes.get(start as usize..end as usize) {
            Some(_) if bytes.len() as u64 == size => {
                Body::Bytes(bytes.slice(start as usize..end as usize))
            }
            _ => return size_mismatch(hash, size, bytes.len() as u64),
        }
    } else {
        match sites.content.complete_size(hash).await {
            Ok(Some(stored)) if stored == size => {}
            Ok(stored) => return size_mismatch(hash, size, stored.unwrap_or(0)),
            Err(error) => {
                warn!(%error, %hash, "blob store failed");
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
            }
        }
        let mut r = sites.content.reader(hash);
        if let Err(error) = r.seek(io::SeekFrom::Start(start)).await {
            warn!(%error, %hash, "blob seek failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
        }
        let stream =
            ReaderStream::with_capacity(tokio::io::AsyncReadExt::take(r, end - start), 256 * 1024)
                .map(|chunk| chunk.map(Frame::data));
        Body::Stream(StreamBody::new(stream).boxed_unsync())
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    build(status, headers, body)
}

fn size_mismatch(hash: Hash, declared: u64, stored: u64) -> Response<Body> {
    warn!(%hash, declared, stored, "a served blob is not the size its manifest declares");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n")
}

fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    build(
        status,
        headers,
        Body::Bytes(Bytes::from_static(text.as_bytes())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0, 100));
        assert_eq!(parse_range("bytes=50-1000", 100), Part(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=9-1", 100), Full);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        // Signs are not digits; a last position past the end is clamped,
        // however many digits it has.
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(parse_range("bytes=1-+2", 100), Full);
        assert_eq!(parse_range("bytes=-+2", 100), Full);
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            Part(0, 100)
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", 100),
            Part(0, 100)
        );
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
    }

    #[test]
    fn paths() {
        assert_eq!(decode_path("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(decode_path("/caf%C3%A9").as_deref(), Some("/café"));
        assert_eq!(decode_path("/%zz"), None);
        assert_eq!(decode_path("/%ff"), None);
        assert_eq!(decode_path("/a%00"), None);
        assert_eq!(decode_path("/a%0d%0aSet-Cookie:x"), None);
        assert_eq!(decode_path("/%2"), None);
    }

    /// A version published before reserved headers were refused still
    /// loads; the edge drops what it must not send.
    #[test]
    fn rules_never_set_framing_headers() {
        use maki_protocol::rules::Pattern;
        let rules = vec![HeaderRule {
            pattern: Pattern::new("/*").expect("pattern"),
            set: vec![
                ("transfer-encoding".into(), "chunked".into()),
                ("content-length".into(), "1".into()),
                ("connection".into(), "close".into()),
                ("x-ok".into(), "yes".into()),
            ],
            unset: vec!["etag".into(), "date".into()],
        }];
        let mut out = HeaderMap::new();
        out.insert(header::ETAG, HeaderValue::from_static("\"e\""));
        apply_rules(&rules, "/a", &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out.get("x-ok").map(HeaderValue::as_bytes),
            Some(&b"yes"[..])
        );
        assert!(out.contains_key(header::ETAG));
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(!etag_matches("\"c\"", "\"b\""));
    }
}
