//! The lean HTTP/1.1 path: bodyless GET and HEAD, keep-alive, pipelining.
//!
//! An edge mostly answers `GET /file` with a handful of headers. hyper does
//! that correctly but generally: a `HeaderMap` and a `Uri` per request, a
//! boxed service future, a timer per head. This path parses in place with
//! httparse (the parser inside hyper), describes the request as a [`Req`]
//! of slices of the read buffer, and writes each response with one `write`
//! (the responses to pipelined requests together).
//!
//! It answers only what it fully understands. At the first request it does
//! not — another method, a body (`Content-Length`, `Transfer-Encoding`),
//! HTTP/1.0, `Expect`, `Upgrade`, a repeated `Host`, an unusual target,
//! h2c's preface, a malformed or oversized head — it hands the connection
//! and every byte read but not answered to hyper, which serves the rest of
//! the connection. So every request with a body, and every error status for
//! a malformed request, is hyper's.

use std::{
    io::{self, IoSlice},
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Sites;
use super::{
    Body,
    conns::ConnId,
    handle,
    head::{MAX_HEADERS, from_httparse},
    timer::{self, CoarseSleep},
};

/// The largest request head either path reads (hyper answers 431 beyond).
pub const MAX_HEAD: usize = 64 * 1024;
const FIRST_BUF: usize = 8 * 1024;
/// Bodies up to this size are copied next to their head, so a response (or
/// a batch of pipelined ones) leaves in one `write`; larger ones go by
/// `writev` straight from the blob cache.
const INLINE_BODY: usize = 16 * 1024;
/// Queued pipelined responses are written out at this size.
const FLUSH_AT: usize = 64 * 1024;

/// How the lean path left a connection.
#[derive(Debug)]
pub enum Ended {
    /// Closed by the client, timed out, `Connection: close`, or draining.
    Closed,
    /// hyper takes over; these bytes were read and not answered.
    HandOff(Bytes),
}

/// Serves requests on `conn` until it ends or needs hyper.
pub async fn serve<S: Stream>(
    conn: &mut Conn<S>,
    sites: &Sites,
    header_timeout: Duration,
    id: ConnId,
    secure: bool,
) -> io::Result<Ended> {
    let mut buf = vec![0u8; FIRST_BUF];
    // buf[start..end] is read and not yet answered.
    let (mut start, mut end) = (0, 0);
    let mut out = Vec::with_capacity(FIRST_BUF);
    // When the head being waited for must be complete; None between requests.
    let mut deadline: Option<Instant> = None;
    loop {
        let mut close = false;
        while start < end && !close {
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut parser = httparse::Request::new(&mut []);
            let len = match parser.parse_with_uninit_headers(&buf[start..end], &mut slots) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return hand_off(conn, &mut out, &buf[start..end]).await,
            };
            let Some((mut req, wants_close)) = from_httparse(&parser) else {
                return hand_off(conn, &mut out, &buf[start..end]).await;
            };
            req.secure = secure;
            // Shed while its request waited (an idle connection is the
            // first to go): closed before answering, which a client retries
            // as it would any closed keep-alive connection, rather than cut
            // mid-body at its first slow write.
            if id.is_shed() {
                flush(conn, &mut out).await.ok();
                return Ok(Ended::Closed);
            }
            let response = handle(sites, &req).await;
            let wants_close = wants_close || timer::draining();
            close = write_response(conn, &mut out, response, req.head, wants_close).await?;
            start += len;
            deadline = None;
        }
        flush(conn, &mut out).await?;
        if close {
            conn.shutdown().await.ok();
            return Ok(Ended::Closed);
        }
        if start == end {
            (start, end) = (0, 0);
            if timer::draining() {
                return Ok(Ended::Closed);
            }
        } else if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                (start, end) = (0, end - start);
            } else if buf.len() < MAX_HEAD {
                buf.resize((buf.len() * 2).min(MAX_HEAD), 0);
            } else {
                // A head this large: hyper refuses it properly (431).
                return hand_off(conn, &mut out, &buf[start..end]).await;
            }
        }
        let due = *deadline.get_or_insert_with(|| Instant::now() + header_timeout);
        // Biased: when bytes are already there the sleep is never polled,
        // so it never registers with the timer.
        // Waiting for the client: idle, so this connection may be shed
        // (oldest first) when the worker is at its bound.
        id.busy(false);
        let n = tokio::select! {
            biased;
            n = conn.read(&mut buf[end..]) => n?,
            () = timer::sleep_or_drain(due) => return Ok(Ended::Closed),
            () = id.shed() => return Ok(Ended::Closed),
        };
        if n == 0 {
            return Ok(Ended::Closed);
        }
        id.busy(true);
        end += n;
    }
}

async fn hand_off<S: Stream>(
    conn: &mut Conn<S>,
    out: &mut Vec<u8>,
    unread: &[u8],
) -> io::Result<Ended> {
    // Answers to the requests before this one go first.
    flush(conn, out).await?;
    Ok(Ended::HandOff(Bytes::copy_from_slice(unread)))
}

/// Writes out the queued responses.
async fn flush<S: Stream>(conn: &mut Conn<S>, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        conn.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Queues (or writes) one response; true when the connection must close
/// after it (a body of unknown length ends with the connection).
async fn write_response<S: Stream>(
    conn: &mut Conn<S>,
    out: &mut Vec<u8>,
    response: Response<Body>,
    head: bool,
    close: bool,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut close = close;
    if !bodiless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => close = true,
        }
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&timer::date());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if head || bodiless {
        return Ok(close);
    }
    match body {
        Body::Bytes(b) if b.len() <= INLINE_BODY => {
            out.extend_from_slice(&b);
            if out.len() >= FLUSH_AT {
                flush(conn, out).await?;
            }
        }
        Body::Bytes(b) => {
            write_both(conn, out, &b).await?;
            out.clear();
        }
        Body::Stream(mut s) => {
            flush(conn, out).await?;
            let id = conn.id;
            loop {
                // A body may wait for its next piece (a file read's turn):
                // a connection shed meanwhile goes then, not at its next
                // slow write.
                let frame = tokio::select! {
                    biased;
                    () = id.shed() => return Err(shed()),
                    frame = s.frame() => frame,
                };
                let Some(frame) = frame else { break };
                if let Ok(data) = frame?.into_data() {
                    conn.write_all(&data).await?;
                }
            }
        }
    }
    Ok(close)
}

fn shed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "shed to make room for new connections",
    )
}

/// Writes `a` then `b` with as few `writev` calls as the socket allows.
async fn write_both<S: Stream>(conn: &mut Conn<S>, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() {
        let n = conn
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    conn.write_all(b).await
}

/// A client connection. Reads first yield bytes put back with
/// [`Conn::rewind`] (how hyper gets a connection the lean path started),
/// then the socket's. A write that makes no progress for `send_timeout`
/// fails, so a client that stops reading cannot hold a connection, and the
/// response queued for it, forever.
#[derive(Debug)]
pub struct Conn<S> {
    read: Bytes,
    inner: S,
    send_timeout: Duration,
    stalled: Option<CoarseSleep>,
    id: ConnId,
    /// Still on the lean path, whose writes are response bytes (hyper's
    /// include HTTP/2 pings: its progress is counted per body chunk).
    lean: bool,
}

/// What a connection runs over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

impl<S: Stream> Conn<S> {
    pub fn new(inner: S, send_timeout: Duration, id: ConnId) -> Self {
        Self {
            read: Bytes::new(),
            inner,
            send_timeout,
            stalled: None,
            id,
            lean: true,
        }
    }

    /// Puts bytes read but not answered in front of the socket's; hyper
    /// serves the rest of the connection.
    pub fn rewind(&mut self, read: Bytes) {
        self.read = read;
        self.lean = false;
    }

    /// Counts what a write sent, for the registry's rates.
    fn count(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &polled {
            // Hyper's writes include HTTP/2's PING, SETTINGS and
            // WINDOW_UPDATE frames (at most 17 bytes each, and a stalled
            // client answers pings too): only a larger write carries
            // response bytes.
            self.id.wrote(*n, self.lean || *n > CONTROL_WRITE);
        }
        polled
    }

    /// A write's outcome, or an error when it has been pending too long or
    /// the worker shed this connection to make room.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        if self.id.shed_requested(cx) {
            return Poll::Ready(Err(shed()));
        }
        let timeout = self.send_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| timer::sleep_until(Instant::now() + timeout));
        match Pin::new(stalled).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The largest write that is only HTTP/2 connection control: a GOAWAY
/// with debug data, or a few control frames flushed together.
const CONTROL_WRITE: usize = 64;

impl<S: Stream> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: Stream> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        let polled = self.written(cx, polled);
        self.count(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let polled = self.written(cx, polled);
        self.count(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.written(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.written(cx, polled)
    }
}
