//! Differential: the lean HTTP/1.1 path and hyper must agree on whether a
//! request is one the lean path may answer and which request it is, and on
//! where it ends (so the next pipelined request is the same for both: no
//! desynchronisation). The lean side is the node's own reading
//! (`node/src/edge/head.rs`, compiled here by path); the hyper side is
//! hyper's HTTP/1.1 server, configured as the edge configures it, fed the
//! same bytes over an in-memory connection.
#![no_main]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../../node/src/edge/head.rs"]
#[allow(dead_code)]
mod head;

/// The largest head either path reads (`h1::MAX_HEAD` in the node).
const MAX_HEAD: usize = 64 * 1024;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| check(data));

/// What the lean path makes of the request at the start of `bytes`: its
/// reading and its length, when it would answer it itself.
fn lean(bytes: &[u8]) -> Option<(String, usize, bool)> {
    let mut slots = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(bytes) else {
        return None;
    };
    let (req, close) = head::from_httparse(&parsed)?;
    Some((format!("{req:?}"), len, close))
}

fn check(data: &[u8]) {
    let Some((first, len, close)) = lean(data) else {
        // The lean path hands this connection to hyper: nothing to compare.
        return;
    };
    let seen = RT.with(|rt| rt.block_on(hyper_reads(data)));
    let Some(hyper_first) = seen.first() else {
        panic!("hyper refused a request the lean path answers: {first}");
    };
    assert_eq!(hyper_first, &first, "the two paths read different requests");
    // Where the first request ends: the lean path answers the next one from
    // `len`; hyper must have read the same next request from there.
    if close {
        return;
    }
    if let Some((second, _, _)) = lean(&data[len..]) {
        match seen.get(1) {
            Some(h) => assert_eq!(h, &second, "the paths disagree on where a request ends"),
            None => panic!("hyper did not see the second request the lean path reads: {second}"),
        }
    }
}

/// Serves `data` with hyper and returns each request's reading, as the
/// edge's hyper side makes it.
async fn hyper_reads(data: &[u8]) -> Vec<String> {
    let (client, server) = tokio::io::duplex(MAX_HEAD * 2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let view = head::from_hyper(req.method(), req.uri(), req.version(), req.headers());
        if let Ok(mut s) = record.lock() {
            s.push(match view {
                head::View::Req(r) => format!("{r:?}"),
                other => format!("{other:?}"),
            });
        }
        async { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new()))) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD);
    let conn = builder.serve_connection(hyper_util_io::Io(server), svc);
    let (mut rd, mut wr) = tokio::io::split(client);
    let bytes = data.to_vec();
    let drive = async {
        let _ = conn.await;
    };
    let feed = async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.shutdown().await;
    };
    let drain = async move {
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
    };
    tokio::join!(drive, feed, drain);
    let out = seen.lock().map(|s| s.clone()).unwrap_or_default();
    out
}

/// hyper's I/O traits over a tokio stream (what hyper-util's `TokioIo`
/// does, without the dependency).
mod hyper_util_io {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    pub struct Io<T>(pub T);

    impl<T: tokio::io::AsyncRead + Unpin> hyper::rt::Read for Io<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            mut buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            // Read into a scratch buffer, then copy: no unsafe needed.
            let mut scratch = [0u8; 8192];
            let mut rb = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.0).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    buf.put_slice(rb.filled());
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        }
    }

    impl<T: tokio::io::AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
