//! HTTP/3 (`http3 = true`): QUIC (quinn, rustls on ring, TLS 1.3, ALPN
//! `h3`) on the HTTPS port's UDP side, feeding the same request handler
//! as HTTP/1.1 and HTTP/2; HTTPS responses advertise it with Alt-Svc.
//!
//! One thread with its own runtime serves every QUIC connection (its
//! worker-local state is set up as an edge worker's). Connections are
//! bounded; a connection idle for 30 s is closed by QUIC itself; each
//! request is a task of its connection, and both end with it.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Sites, local};

/// QUIC connections served at once; more are refused.
const MAX_CONNS: usize = 4096;
/// Requests in flight on one connection (QUIC streams).
const MAX_STREAMS: u32 = 100;
/// A connection with nothing sent or received for this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// The largest request head.
const MAX_HEAD: u64 = 16 << 10;

/// The running HTTP/3 server.
#[derive(Debug)]
pub struct H3 {
    pub addr: SocketAddr,
    pub thread: std::thread::JoinHandle<()>,
}

/// Binds UDP at `addr` and serves HTTP/3 with `tls` until `cancel`.
pub fn spawn(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    sites: Arc<Sites>,
    cache: (u64, u64),
    cancel: CancellationToken,
) -> io::Result<H3> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(IDLE.try_into().ok())
        .max_concurrent_bidi_streams(MAX_STREAMS.into());
    server.transport_config(Arc::new(transport));
    let socket = UdpSocket::bind(addr)?;
    let bound = socket.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("edge-h3".into())
        .spawn(move || {
            local::init(cache.0, cache.1);
            rt.block_on(async move {
                let endpoint = match quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                ) {
                    Ok(e) => e,
                    Err(error) => {
                        warn!(%error, "HTTP/3 could not start");
                        return;
                    }
                };
                serve(&endpoint, sites, cancel).await;
                endpoint.close(0u32.into(), b"shutting down");
                let _ = tokio::time::timeout(super::DRAIN, endpoint.wait_idle()).await;
            });
        })?;
    Ok(H3 {
        addr: bound,
        thread,
    })
}

async fn serve(endpoint: &quinn::Endpoint, sites: Arc<Sites>, cancel: CancellationToken) {
    let room = Arc::new(Semaphore::new(MAX_CONNS));
    let mut conns = JoinSet::new();
    let mut tidy = tokio::time::interval(Duration::from_secs(1));
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = tidy.tick() => {
                // Let go of replaced site versions while no request comes.
                local::catch_up(&sites.live);
                continue;
            }
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            debug!("too many HTTP/3 connections; refusing one");
            incoming.refuse();
            continue;
        };
        let (sites, cancel) = (sites.clone(), cancel.clone());
        conns.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = connection(incoming, sites) => if let Err(error) = r {
                    debug!(%error, "HTTP/3 connection ended");
                },
            }
        });
    }
    conns.shutdown().await;
}

/// Why an HTTP/3 connection or request ended early.
#[derive(Debug, thiserror::Error)]
enum H3Error {
    #[error("QUIC: {0}")]
    Quic(#[from] quinn::ConnectionError),
    #[error("HTTP/3: {0}")]
    Connection(#[from] h3::error::ConnectionError),
    #[error("HTTP/3 stream: {0}")]
    Stream(#[from] h3::error::StreamError),
    #[error("the response body: {0}")]
    Body(#[from] io::Error),
}

async fn connection(incoming: quinn::Incoming, sites: Arc<Sites>) -> Result<(), H3Error> {
    let conn = incoming.await?;
    let mut h3: h3::server::Connection<h3_quinn::Connection, Bytes> = h3::server::builder()
        .max_field_section_size(MAX_HEAD)
        .build(h3_quinn::Connection::new(conn))
        .await?;
    let mut requests = JoinSet::new();
    loop {
        let resolver = tokio::select! {
            Some(_) = requests.join_next(), if !requests.is_empty() => continue,
            r = h3.accept() => match r? {
                Some(r) => r,
                None => break,
            },
        };
        let sites = sites.clone();
        requests.spawn(async move {
            if let Err(error) = request(resolver, &sites).await {
                debug!(%error, "HTTP/3 request ended");
            }
        });
    }
    // The peer said goodbye: what it asked before is still answered.
    while requests.join_next().await.is_some() {}
    Ok(())
}

async fn request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    sites: &Sites,
) -> Result<(), H3Error> {
    let (req, mut stream) = resolver.resolve_request().await?;
    let response = super::handle_hyper(sites, req, true).await;
    let (parts, mut body) = response.into_parts();
    stream
        .send_response(Response::from_parts(parts, ()))
        .await?;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data()
            && !data.is_empty()
        {
            stream.send_data(data).await?;
        }
    }
    stream.finish().await?;
    Ok(())
}
