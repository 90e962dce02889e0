//! The HTTP edge under hostile clients.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use maki_e2e::{NodeProc, fresh_network, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn slow_request_heads_are_cut_off() -> Result<()> {
    let fresh = fresh_network()?;
    let data = fresh.data.clone();
    let config = data.join("makiatto.toml");
    let text = std::fs::read_to_string(&config)?.replace(
        "http_header_timeout = \"10s\"",
        "http_header_timeout = \"1s\"",
    );
    std::fs::write(&config, text)?;
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
    ensure!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A connection that says nothing at all is closed too.
    let mut idle = tokio::net::TcpStream::connect(node.http).await?;
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await??;
    ensure!(n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"));

    // Meanwhile, honest clients are served.
    let r = http_get(node.http, "a.test", "/", &[]).await?;
    ensure!(r.status == 404);
    Ok(())
}
