//! The HTTP edge under hostile clients.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use maki_e2e::{Maki, NodeProc, closes, fresh_network, http_get, one_site, read_raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn slow_request_heads_are_cut_off() -> Result<()> {
    let fresh = fresh_network()?;
    let data = fresh.data.clone();
    set_header_timeout(&data, "1s")?;
    let node = NodeProc::start(&data)?;

    // A slowloris: half a request head, then silence.
    let mut conn = tokio::net::TcpStream::connect(node.http).await?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
        .await?;
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await??;
    let waited = start.elapsed();
    ensure!(
        n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Not before the deadline; after it, within the read's own timeout.
    ensure!(waited >= Duration::from_millis(900), "{waited:?}");

    // A connection that says nothing at all is closed too.
    let mut idle = tokio::net::TcpStream::connect(node.http).await?;
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await??;
    ensure!(n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"));

    // Meanwhile, honest clients are served.
    let r = http_get(node.http, "a.test", "/", &[]).await?;
    ensure!(r.status == 404);
    Ok(())
}

#[tokio::test]
async fn http1_pipelining_keepalive_and_handoff_to_hyper() -> Result<()> {
    let (net, site_dir) = one_site("wire.test")?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "wire.test",
    ])?;
    let index = std::fs::read(site_dir.join("index.html"))?;
    let not_found = std::fs::read(site_dir.join("404.html"))?;
    let addr = net.node.http;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\n\r\n");

    // Three requests in one write: three answers, in order, on one connection.
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let batch = format!(
        "{}HEAD / HTTP/1.1\r\nHost: wire.test\r\n\r\n{}",
        get("/"),
        get("/nope")
    );
    conn.write_all(batch.as_bytes()).await?;
    let mut buf = Vec::new();
    let a = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(a.status == 200 && a.body == index, "{a:?}");
    ensure!(a.header("date").is_some_and(|d| d.ends_with(" GMT")));
    let b = read_raw(&mut conn, &mut buf, true).await?;
    ensure!(b.status == 200 && b.body.is_empty(), "{b:?}");
    ensure!(b.header("content-length") == a.header("content-length"));
    ensure!(b.header("etag") == a.header("etag"));
    let c = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(c.status == 404 && c.body == not_found, "{c:?}");

    // A request dribbled a few bytes at a time on the same connection.
    for piece in get("/").as_bytes().chunks(3) {
        conn.write_all(piece).await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let d = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(d.status == 200 && d.body == index, "{d:?}");

    // A request with a body is hyper's; the connection goes on with hyper.
    let mixed = format!(
        "{}POST / HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 5\r\n\r\nhello{}",
        get("/"),
        get("/")
    );
    conn.write_all(mixed.as_bytes()).await?;
    let e = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(e.status == 200 && e.body == index, "{e:?}");
    let f = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(
        f.status == 405 && f.header("allow") == Some("GET, HEAD"),
        "{f:?}"
    );
    let g = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(g.status == 200 && g.body == index, "{g:?}");

    // Connection: close is honoured: the answer, then the end.
    conn.write_all(b"GET / HTTP/1.1\r\nHost: wire.test\r\nConnection: close\r\n\r\n")
        .await?;
    let h = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(
        h.status == 200 && h.header("connection") == Some("close"),
        "{h:?}"
    );
    ensure!(
        closes(&mut conn).await,
        "still open after Connection: close"
    );

    // HTTP/1.0, a malformed head and an oversized head all reach hyper.
    let mut old = tokio::net::TcpStream::connect(addr).await?;
    old.write_all(b"GET / HTTP/1.0\r\nHost: wire.test\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let i = read_raw(&mut old, &mut buf, false).await?;
    ensure!(i.status == 200 && i.body == index, "{i:?}");

    let mut bad = tokio::net::TcpStream::connect(addr).await?;
    bad.write_all(b"GET / HTTP/1.1\r\nHost: wire.test\r\nno colon here\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let j = read_raw(&mut bad, &mut buf, false).await?;
    ensure!(j.status == 400, "{j:?}");
    ensure!(closes(&mut bad).await);

    let mut huge = tokio::net::TcpStream::connect(addr).await?;
    let filler = "x".repeat(70 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: wire.test\r\nX-Filler: {filler}\r\n\r\n");
    // The node may stop reading (and answer) before the whole head is sent.
    let _ = huge.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let k = read_raw(&mut huge, &mut buf, false).await?;
    ensure!(k.status == 431, "{k:?}");

    // A request the lean path cannot answer from memory: a Range of the identity bytes.
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: wire.test\r\nRange: bytes=0-9\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let l = read_raw(&mut conn, &mut buf, false).await?;
    ensure!(l.status == 206 && l.body == index[..10], "{l:?}");
    Ok(())
}

#[tokio::test]
async fn pipelined_requests_cut_anywhere_are_all_answered_in_order() -> Result<()> {
    let (net, site_dir) = one_site("cut.test")?;
    net.admin
        .ok(&["publish", &site_dir.to_string_lossy(), "--site", "cut.test"])?;
    let index = std::fs::read(site_dir.join("index.html"))?;
    let about = std::fs::read(site_dir.join("about.html"))?;
    // xorshift: reproducible without a dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut conn = tokio::net::TcpStream::connect(net.node.http).await?;
    let mut buf = Vec::new();
    for round in 0..20 {
        // Up to 6 requests, some with heads larger than the first read buffer.
        let mut batch = Vec::new();
        let mut expect = Vec::new();
        for _ in 0..1 + rand(6) {
            let pad = if rand(4) == 0 { rand(20_000) } else { 0 };
            let (method, path, body) = match rand(3) {
                0 => ("GET", "/", &index),
                1 => ("HEAD", "/", &index),
                _ => ("GET", "/about", &about),
            };
            batch.extend_from_slice(
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: cut.test\r\nX-Pad: {}\r\n\r\n",
                    "p".repeat(pad)
                )
                .as_bytes(),
            );
            expect.push((method == "HEAD", body.clone()));
        }
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let n = 1 + rand(rest.len().min(9_000));
            conn.write_all(&rest[..n]).await?;
            rest = &rest[n..];
            if rand(3) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for (i, (head, body)) in expect.iter().enumerate() {
            let r = read_raw(&mut conn, &mut buf, *head).await?;
            let want: &[u8] = if *head { &[] } else { body };
            ensure!(
                r.status == 200 && r.body == want,
                "round {round}, response {i}: {} {:?}",
                r.status,
                r.headers
            );
        }
    }
    ensure!(buf.is_empty(), "unexpected bytes after the last response");
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() -> Result<()> {
    let fresh = fresh_network()?;
    maki_e2e::set_config(&fresh.data, "http_send_timeout", "\"1s\"")?;
    let node = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&node.ticket));
    admin.ok(&["site", "add", "slow.test"])?;
    // More than the loopback socket buffers hold, so the node's writes stall.
    let size = 48 << 20;
    let mut big = vec![0u8; size];
    blake3::Hasher::new().finalize_xof().fill(&mut big);
    let dir = fresh.tmp.path().join("slow");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("big.bin"), &big)?;
    admin.ok(&["publish", &dir.to_string_lossy(), "--site", "slow.test"])?;
    let request = b"GET /big.bin HTTP/1.1\r\nHost: slow.test\r\n\r\n";

    // Control: a client that reads gets every byte (and the head).
    let mut reader = tokio::net::TcpStream::connect(node.http).await?;
    reader.write_all(request).await?;
    let got = read_until_end(&mut reader, size + 1024).await;
    ensure!(got > size, "a reading client got only {got} bytes");

    // A client that stops reading for 3 s: the node gave up after 1 s, so
    // reading now yields what was already in flight, then the end.
    let mut stalled = tokio::net::TcpStream::connect(node.http).await?;
    stalled.write_all(request).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = read_until_end(&mut stalled, size + 1024).await;
    ensure!(got < size, "a stalled client still got all {got} bytes");
    Ok(())
}

/// Reads until EOF, an error, `limit` bytes or 20 s; how many bytes came.
async fn read_until_end(conn: &mut tokio::net::TcpStream, limit: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut total = 0;
    while total < limit {
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
    total
}

/// h2c prefaces left hanging (16 bytes of `PRI * HTTP/2.0`, or the whole
/// preface and SETTINGS) were never closed: 20,400 of them exhausted the
/// node's descriptors. Now they get the same deadline as a request head.
#[tokio::test]
async fn hanging_http2_prefaces_are_cut_off() -> Result<()> {
    let fresh = fresh_network()?;
    let data = fresh.data.clone();
    set_header_timeout(&data, "1s")?;
    let node = NodeProc::start(&data)?;
    let settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let mut full = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    full.extend_from_slice(settings);
    for opening in [
        &b"PRI * HTTP/2.0\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &full,
    ] {
        let mut conn = tokio::net::TcpStream::connect(node.http).await?;
        conn.write_all(opening).await?;
        let start = Instant::now();
        ensure!(
            ends_within(&mut conn, Duration::from_secs(6)).await,
            "{:?} was never closed",
            String::from_utf8_lossy(opening)
        );
        ensure!(
            start.elapsed() >= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
    }
    // An h2c client that makes a request and then goes quiet is closed too,
    // after its request was answered.
    let r = maki_e2e::request(node.http, "GET", "a.test", "/", &[], true).await?;
    ensure!(r.status == 404);
    Ok(())
}

/// More idle connections than the node has descriptors for: it sheds the
/// oldest idle ones and keeps serving new clients, never hitting EMFILE.
#[tokio::test]
async fn a_connection_flood_never_locks_out_new_clients() -> Result<()> {
    let fresh = fresh_network()?;
    let data = fresh.data.clone();
    // Long deadlines: only shedding can free a descriptor in this test.
    set_header_timeout(&data, "60s")?;
    let node = NodeProc::start_with_fd_limit(&data, 256)?;
    let mut held = Vec::new();
    for i in 0..600 {
        // A third slowloris heads, a third hanging h2c prefaces, a third
        // TLS handshakes begun and never finished (half a ClientHello).
        let (at, opening): (_, &[u8]) = match i % 3 {
            0 => (node.http, b"GET / HTTP/1.1\r\nHost: a.test\r\n"),
            1 => (node.http, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            _ => (node.https, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        };
        let mut conn = tokio::net::TcpStream::connect(at).await?;
        conn.write_all(opening).await?;
        held.push(conn);
    }
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http_get(node.http, "a.test", "/", &[]),
        )
        .await
        .context("a new client waited more than 5 s")??;
        ensure!(r.status == 404);
    }
    // The oldest were shed; the newest are still open.
    ensure!(
        closes(&mut held[0]).await,
        "the oldest connection was not shed"
    );
    let log = node.log();
    ensure!(!log.contains("accept failed"), "{log}");
    Ok(())
}

fn set_header_timeout(data: &std::path::Path, value: &str) -> Result<()> {
    maki_e2e::set_config(data, "http_header_timeout", &format!("\"{value}\""))
}

/// True when the server closes `conn` within `limit` (whatever it sends first).
async fn ends_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut b = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// RFC 9112/9110 corners the red team found, each asked of the lean path
/// (HTTP/1.1) and of hyper's (the same request as HTTP/1.0): both answer
/// alike.
#[tokio::test]
async fn request_corners_are_answered_alike_on_both_paths() -> Result<()> {
    let (net, site_dir) = one_site("rfc.test")?;
    net.admin
        .ok(&["publish", &site_dir.to_string_lossy(), "--site", "rfc.test"])?;
    let index = std::fs::read(site_dir.join("index.html"))?;
    let size = index.len();
    let ask = |raw: String| async move {
        let mut conn = tokio::net::TcpStream::connect(net.node.http).await?;
        conn.write_all(raw.as_bytes()).await?;
        let mut buf = Vec::new();
        let head = raw.starts_with("HEAD");
        read_raw(&mut conn, &mut buf, head).await
    };
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        // Two Host headers: 400.
        let r = ask(format!(
            "GET / {version}\r\nHost: rfc.test\r\nHost: other.test\r\n\r\n"
        ))
        .await?;
        ensure!(r.status == 400, "{version} two hosts: {}", r.status);
        // An absolute-form target's host wins over Host.
        let r = ask(format!(
            "GET http://rfc.test/ {version}\r\nHost: other.test\r\n\r\n"
        ))
        .await?;
        ensure!(
            r.status == 200 && r.body == index,
            "{version} absolute: {}",
            r.status
        );
        // A repeated Range is ignored: the whole body.
        let r = ask(format!(
            "GET / {version}\r\nHost: rfc.test\r\nRange: bytes=0-0\r\nRange: bytes=1-1\r\n\r\n"
        ))
        .await?;
        ensure!(
            r.status == 200 && r.body == index,
            "{version} two ranges: {}",
            r.status
        );
        // A sign is not a digit.
        let r = ask(format!(
            "GET / {version}\r\nHost: rfc.test\r\nRange: bytes=+1-2\r\n\r\n"
        ))
        .await?;
        ensure!(r.status == 200, "{version} +1-2: {}", r.status);
        // A last position past the end (however long) is clamped: 206.
        let r = ask(format!(
            "GET / {version}\r\nHost: rfc.test\r\nRange: bytes=1-99999999999999999999999\r\n\r\n"
        ))
        .await?;
        ensure!(
            r.status == 206 && r.body == index[1..],
            "{version} long last-byte-pos: {}",
            r.status
        );
        let want = format!("bytes 1-{}/{size}", size - 1);
        ensure!(r.header("content-range") == Some(want.as_str()));
        // HEAD carries GET's Content-Length, for errors and redirects too.
        for path in ["/", "/nope", "/blog", "/%zz"] {
            let get = ask(format!("GET {path} {version}\r\nHost: rfc.test\r\n\r\n")).await?;
            let head = ask(format!("HEAD {path} {version}\r\nHost: rfc.test\r\n\r\n")).await?;
            ensure!(
                get.status == head.status
                    && head.header("content-length") == Some(get.body.len().to_string().as_str()),
                "{version} HEAD {path}: {} {:?} vs GET {} {}",
                head.status,
                head.header("content-length"),
                get.status,
                get.body.len()
            );
        }
    }
    // HTTP/1.1 without Host: 400.
    let r = ask("GET / HTTP/1.1\r\n\r\n".into()).await?;
    ensure!(r.status == 400, "no host: {}", r.status);
    Ok(())
}

/// SIGTERM while a large download is in flight: the download completes,
/// byte for byte, and the node then exits 0.
#[tokio::test]
async fn a_download_in_flight_completes_across_sigterm() -> Result<()> {
    let (net, site_dir) = one_site("drain.test")?;
    let mut big = vec![0u8; 24 << 20];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(site_dir.join("big.bin"), &big)?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "drain.test",
    ])?;
    let mut conn = tokio::net::TcpStream::connect(net.node.http).await?;
    conn.write_all(b"GET /big.bin HTTP/1.1\r\nHost: drain.test\r\nConnection: close\r\n\r\n")
        .await?;
    // Read slowly: ~8 MiB/s, so the response takes about 3 s.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    let n = conn.read(&mut chunk).await?;
    got.extend_from_slice(&chunk[..n]);
    let node = net.node;
    let stopping = tokio::task::spawn_blocking(move || node.stop());
    loop {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await??;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    let status = stopping.await??;
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?
        + 4;
    ensure!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..head_end])
    );
    ensure!(
        got[head_end..] == big[..],
        "got {} of {} body bytes",
        got.len() - head_end,
        big.len()
    );
    ensure!(status.success(), "the node exited with {status}");
    drop(net.tmp);
    Ok(())
}

/// The red team's HTTP/2 hold: a client that sets its flow-control window
/// to 0, asks for a large file and answers every PING keeps a response "in
/// progress" that never moves. A response that makes no progress for
/// `http_send_timeout` is cut.
#[tokio::test]
async fn an_http2_response_that_never_moves_is_cut() -> Result<()> {
    let (net, site_dir) = one_site("win.test")?;
    std::fs::write(site_dir.join("big.bin"), vec![7u8; 6 << 20])?;
    net.admin
        .ok(&["publish", &site_dir.to_string_lossy(), "--site", "win.test"])?;
    let data = net.node.dir.clone();
    net.node.stop()?;
    set_header_timeout(&data, "60s")?;
    maki_e2e::set_config(&data, "http_send_timeout", "\"2s\"")?;
    let node = NodeProc::start(&data)?;

    let mut conn = tokio::net::TcpStream::connect(node.http).await?;
    conn.write_all(&h2c_gets("win.test", "/big.bin", 1, 0))
        .await?;
    let start = Instant::now();
    // Answer every PING and SETTINGS, never open the window.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut head = [0u8; 9];
            if conn.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if conn.read_exact(&mut payload).await.is_err() {
                return;
            }
            let (kind, flags) = (head[3], head[4]);
            let reply: Option<Vec<u8>> = match (kind, flags & 1) {
                (6, 0) => Some([&[0, 0, 8, 6, 1, 0, 0, 0, 0][..], &payload].concat()),
                (4, 0) => Some(vec![0, 0, 0, 4, 1, 0, 0, 0, 0]),
                _ => None,
            };
            if let Some(r) = reply
                && conn.write_all(&r).await.is_err()
            {
                return;
            }
        }
    })
    .await;
    ensure!(
        closed.is_ok(),
        "the stalled HTTP/2 connection was held for 30 s"
    );
    ensure!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    // Others are served.
    let r = http_get(node.http, "win.test", "/index.html", &[]).await?;
    ensure!(r.status == 200);
    Ok(())
}

/// Slow readers (a few hundred bytes a second: never stalled for the send
/// timeout) fill every slot with "busy" connections. At the bound, the
/// slowest is shed for each new client, so new clients are still served.
#[tokio::test]
async fn slow_readers_at_the_bound_are_shed_for_new_clients() -> Result<()> {
    let (net, site_dir) = one_site("slow.test")?;
    std::fs::write(site_dir.join("big.bin"), vec![9u8; 8 << 20])?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "slow.test",
    ])?;
    let data = net.node.dir.clone();
    net.node.stop()?;
    set_header_timeout(&data, "60s")?;
    let node = NodeProc::start_with_fd_limit(&data, 256)?;
    let mut held = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let Ok(mut conn) = socket.connect(node.http).await else {
            continue;
        };
        if conn
            .write_all(b"GET /big.bin HTTP/1.1\r\nHost: slow.test\r\n\r\n")
            .await
            .is_ok()
        {
            held.push(conn);
        }
    }
    // Each reads a little now and then: progress, at a trickle.
    let trickle = tokio::spawn(async move {
        let mut buf = [0u8; 256];
        for _ in 0..40 {
            for c in held.iter_mut() {
                let _ = tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    // Once they have been slow for long enough to judge (2 s), new clients
    // get through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http_get(node.http, "slow.test", "/index.html", &[]),
        )
        .await
        .context("a new client waited more than 5 s")?
        .with_context(|| node.log())?;
        ensure!(r.status == 200);
    }
    // The red team's burst on top: a crowd of new downloads of the large
    // file at once. Each is served or refused; none may take the node past
    // its descriptors (a blob read failing mid-body with EMFILE).
    let mut crowd = tokio::task::JoinSet::new();
    for _ in 0..150 {
        let http = node.http;
        crowd.spawn(async move { http_get(http, "slow.test", "/big.bin", &[]).await });
    }
    while crowd.join_next().await.is_some() {}
    trickle.abort();
    let log = node.log();
    ensure!(!log.contains("accept failed"), "{log}");
    ensure!(!log.contains("Too many open files"), "{log}");
    Ok(())
}

/// The red team's slow HTTP/2 reader: hyper takes a cached file's whole
/// body at once, so the request "ends" while h2 still holds most of it.
/// A client that keeps reading (here: 16 KiB of window every 100 ms, a
/// 1 MiB file over ~6 s) must get all of it, though that is longer than
/// the idle timeout (2 s) after the request ended.
#[tokio::test]
async fn a_slow_http2_reader_gets_the_whole_file() -> Result<()> {
    let (net, site_dir) = one_site("trickle.test")?;
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(site_dir.join("big.bin"), &body)?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "trickle.test",
    ])?;
    let data = net.node.dir.clone();
    net.node.stop()?;
    set_header_timeout(&data, "2s")?;
    maki_e2e::set_config(&data, "http_send_timeout", "\"2s\"")?;
    let node = NodeProc::start(&data)?;

    let conn = tokio::net::TcpStream::connect(node.http).await?;
    let (mut rd, mut wr) = conn.into_split();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: INITIAL_WINDOW_SIZE = 16384.
    out.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0x40, 0]);
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (index, value) in [(4u8, "/big.bin"), (1, "trickle.test")] {
        block.push(index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    wr.write_all(&out).await?;
    // 16 KiB more window for the stream and the connection every 100 ms,
    // and every PING answered (as a live client does).
    let (pings, mut to_answer) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let pace = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.tick().await;
        for _ in 0..200 {
            let out = tokio::select! {
                _ = every.tick() => {
                    let mut update = Vec::new();
                    for stream in [0u8, 1] {
                        update.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, stream, 0, 0, 0x40, 0]);
                    }
                    update
                }
                Some(ping) = to_answer.recv() => [&[0, 0, 8, 6, 1, 0, 0, 0, 0][..], &ping].concat(),
            };
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        let mut got = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if rd.read_exact(&mut head).await.is_err() {
                return (got, false);
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                return (got, false);
            }
            let (kind, flags, stream) = (head[3], head[4], head[8]);
            if kind == 6 && flags & 1 == 0 {
                pings.send(payload).await.ok();
                continue;
            }
            if kind == 0 && stream == 1 {
                got.extend_from_slice(&payload);
                if flags & 1 == 1 {
                    return (got, true);
                }
            }
        }
    })
    .await;
    pace.abort();
    let (got, ended) = got.map_err(|_| anyhow::anyhow!("no end in 30 s"))?;
    ensure!(
        ended && got == body,
        "{} of {} bytes after {:?}, ended: {ended}; the node's log:\n{}",
        got.len(),
        body.len(),
        start.elapsed(),
        node.log()
    );
    ensure!(start.elapsed() > Duration::from_secs(3), "it was slow");
    Ok(())
}

/// The red team's crowd: 40 visitors streaming one file too large for the
/// memory cache at once, then 200 asking for a small file no worker has
/// cached yet. iroh-blobs fails a command to a blob whose actor already
/// has 32 waiting, and 8 of 40 downloads were cut mid-body; the edge now
/// reads large files from their own files, and a burst of cache misses
/// makes one read per worker.
#[tokio::test]
async fn forty_visitors_download_one_large_file_at_once() -> Result<()> {
    let (net, site_dir) = one_site("crowd.test")?;
    let body: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(site_dir.join("big.bin"), &body)?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "crowd.test",
        "--wait",
    ])?;
    let http = net.node.http;
    let mut all = tokio::task::JoinSet::new();
    for i in 0..40u64 {
        // Every fourth asks for a range, as a download manager does.
        let range = (i % 4 == 0).then(|| format!("bytes={}-{}", i * 1000, 5_000_000 + i));
        all.spawn(async move {
            let headers: Vec<(&str, &str)> = match &range {
                Some(r) => vec![("range", r.as_str())],
                None => vec![],
            };
            http_get(http, "crowd.test", "/big.bin", &headers)
                .await
                .map(|r| (range.is_some(), i, r))
        });
    }
    let mut whole = 0;
    while let Some(got) = all.join_next().await {
        let (ranged, i, r) = got??;
        if ranged {
            ensure!(r.status == 206, "{}", r.status);
            let from = (i * 1000) as usize;
            ensure!(
                r.body == body[from..=5_000_000 + i as usize],
                "range {i} differs"
            );
        } else {
            ensure!(r.status == 200, "{}", r.status);
            ensure!(r.body == body, "a body of {} bytes differs", r.body.len());
        }
        whole += 1;
    }
    ensure!(whole == 40, "{whole} of 40 downloads whole");
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..200 {
        all.spawn(async move { http_get(http, "crowd.test", "/index.html", &[]).await });
    }
    while let Some(got) = all.join_next().await {
        let r = got??;
        ensure!(r.status == 200, "{}", r.status);
    }
    let log = net.node.log();
    ensure!(!log.contains("inbox is full"), "{log}");
    ensure!(!log.contains("blob read failed"), "{log}");
    Ok(())
}

/// An HTTP/2 client's first bytes, by hand (prior knowledge): the
/// preface, SETTINGS with INITIAL_WINDOW_SIZE = `window`, and `streams`
/// GETs of `path` at `host` (streams 1, 3, 5, ...).
fn h2c_gets(host: &str, path: &str, streams: u32, window: u32) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4]);
    out.extend_from_slice(&window.to_be_bytes());
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (index, value) in [(4u8, path), (1, host)] {
        block.push(index); // literal without indexing, indexed name
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    for i in 0..streams {
        // HEADERS (END_STREAM | END_HEADERS).
        out.extend_from_slice(&[0, 0, block.len() as u8, 1, 5]);
        out.extend_from_slice(&(2 * i + 1).to_be_bytes());
        out.extend_from_slice(&block);
    }
    out
}

/// The red team's memory attack: HTTP/2 streams that never take a byte
/// of a file read from disk (a window of one byte), by the hundred. Each
/// holds what the edge read for it until the client takes it: that must
/// be one small first read, not a 256 KiB one (400 streams held 100 MiB).
#[tokio::test]
async fn http2_streams_that_take_nothing_hold_little_memory() -> Result<()> {
    let (net, site_dir) = one_site("hold.test")?;
    std::fs::write(site_dir.join("big.bin"), vec![3u8; 16 << 20])?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "hold.test",
    ])?;
    // Warm: the first download's allocations are not the attack's.
    let r = http_get(net.node.http, "hold.test", "/big.bin", &[]).await?;
    ensure!(r.body.len() == 16 << 20);
    let before = net.node.rss()?;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = tokio::net::TcpStream::connect(net.node.http).await?;
        conn.write_all(&h2c_gets("hold.test", "/big.bin", 100, 1))
            .await?;
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = net.node.rss()?.saturating_sub(before);
    ensure!(
        grown < 40 << 20,
        "400 streams that take nothing grew the node by {} MiB",
        grown >> 20
    );
    // Others are served.
    let r = http_get(net.node.http, "hold.test", "/index.html", &[]).await?;
    ensure!(r.status == 200);
    drop(held);
    Ok(())
}
