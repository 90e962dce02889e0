//! DNS over QUIC (RFC 9250) for the nameservers: UDP on the DoT port
//! (853 by default), ALPN `doq`, one query per bidirectional stream with
//! its two-byte length, the reply the same way on the same stream, and
//! the same certificates as DoT (`dns/dot.rs`).
//!
//! Runs on the node's runtime beside DNS over TCP. Connections are
//! bounded, so are streams per connection; a stream gets the idle
//! allowance of a TCP query to deliver its query, and a connection is
//! closed by QUIC after 30 s with nothing in flight.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{From, Stats, TCP_IDLE, Zones, respond};

/// QUIC connections served at once; more are refused.
const MAX_CONNS: usize = 1024;
/// Queries in flight on one connection.
const MAX_STREAMS: u32 = 64;
const IDLE: Duration = Duration::from_secs(30);

/// The QUIC endpoint of DoQ at `socket`, with `tls` (ALPN `doq`, TLS 1.3).
pub fn endpoint(
    socket: std::net::UdpSocket,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(IDLE.try_into().ok())
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        // DoQ uses no unidirectional streams.
        .max_concurrent_uni_streams(0u32.into());
    server.transport_config(Arc::new(transport));
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Serves DoQ on `endpoint` until `cancel`.
pub async fn serve(
    endpoint: quinn::Endpoint,
    zones: Arc<Zones>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let room = Arc::new(Semaphore::new(MAX_CONNS));
    let mut conns = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let Ok(permit) = room.clone().try_acquire_owned() else {
            debug!("too many DNS over QUIC connections; refusing one");
            incoming.refuse();
            continue;
        };
        let (zones, stats) = (zones.clone(), stats.clone());
        conns.spawn(async move {
            let _permit = permit;
            if let Err(error) = connection(incoming, zones, stats).await {
                debug!(%error, "DNS over QUIC connection ended");
            }
        });
    }
    // No error code for going away: DOQ_NO_ERROR (RFC 9250 §4.3).
    endpoint.close(0u32.into(), b"");
    conns.shutdown().await;
}

async fn connection(
    incoming: quinn::Incoming,
    zones: Arc<Zones>,
    stats: Arc<Stats>,
) -> Result<(), quinn::ConnectionError> {
    let conn = incoming.await?;
    let src = conn.remote_address();
    let mut queries = JoinSet::new();
    let mut turn = 0usize;
    loop {
        let (send, recv) = tokio::select! {
            Some(_) = queries.join_next(), if !queries.is_empty() => continue,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(quinn::ConnectionError::ApplicationClosed(_))
                | Err(quinn::ConnectionError::LocallyClosed)
                | Err(quinn::ConnectionError::TimedOut) => break,
                Err(e) => return Err(e),
            },
        };
        turn = turn.wrapping_add(1);
        let (zones, stats) = (zones.clone(), stats.clone());
        queries.spawn(async move {
            if let Err(error) = query(send, recv, src, &zones, &stats, turn).await {
                debug!(%error, %src, "DNS over QUIC query dropped");
            }
        });
    }
    while queries.join_next().await.is_some() {}
    Ok(())
}

/// Why one DoQ query got no reply.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error("the query did not come in time")]
    Slow,
    #[error("reading the query: {0}")]
    Read(#[from] quinn::ReadToEndError),
    #[error("the query's length is not what came")]
    Length,
    #[error("sending the reply: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("the stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

async fn query(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    src: SocketAddr,
    zones: &Zones,
    stats: &Stats,
    turn: usize,
) -> Result<(), QueryError> {
    // The client ends its side after the query (RFC 9250 §4.2).
    let bytes = tokio::time::timeout(TCP_IDLE, recv.read_to_end(2 + usize::from(u16::MAX)))
        .await
        .map_err(|_| QueryError::Slow)??;
    let (len, query) = bytes.split_at_checked(2).ok_or(QueryError::Length)?;
    if usize::from(u16::from_be_bytes([len[0], len[1]])) != query.len() {
        return Err(QueryError::Length);
    }
    let from = From {
        ip: src.ip().to_canonical(),
        // A stream carries a whole reply: never truncated.
        tcp: true,
        now: crate::now(),
    };
    let Some(reply) = respond(&zones.get(), query, from, turn, stats) else {
        // Nothing to say (a response sent to us): the stream is reset.
        let _ = send.reset(0u32.into());
        return Ok(());
    };
    let mut out = Vec::with_capacity(reply.len() + 2);
    out.extend_from_slice(&(reply.len() as u16).to_be_bytes());
    out.extend_from_slice(&reply);
    tokio::time::timeout(TCP_IDLE, send.write_all(&out))
        .await
        .map_err(|_| QueryError::Slow)??;
    send.finish()?;
    Ok(())
}
