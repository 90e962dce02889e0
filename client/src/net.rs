//! Talking to a node: one iroh endpoint with the user's key, the admin RPC
//! over `maki/admin/1`, and blob pushes over iroh-blobs.

use std::time::Duration;

use iroh::{
    Endpoint, EndpointAddr, RelayMode,
    endpoint::{Connection, PortmapperConfig, presets},
};
use maki_protocol::{
    NodeTicket, SecretKey,
    rpc::{self, ADMIN_ALPN, Request, Response, RpcError},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("cannot open a network endpoint: {0}")]
    Bind(String),
    #[error("node {node} is unreachable at {addrs}: {message}; is it running, and is UDP open?")]
    Unreachable {
        node: String,
        addrs: String,
        message: String,
    },
    #[error("the connection to the node failed: {0}")]
    Io(String),
    #[error("the node sent an answer this maki does not understand: {0}; upgrade maki?")]
    BadResponse(String),
    #[error(transparent)]
    Refused(#[from] RpcError),
}

/// An answer that does not fit the request.
pub fn unexpected(answer: Response) -> NetError {
    let mut text = format!("{answer:?}");
    if let Some((cut, _)) = text.char_indices().nth(200) {
        text.truncate(cut);
        text.push('…');
    }
    NetError::BadResponse(text)
}

fn io_err(e: impl std::fmt::Display) -> NetError {
    NetError::Io(e.to_string())
}

/// A connection to one node.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    addr: EndpointAddr,
    ticket: NodeTicket,
    admin: Connection,
}

impl Client {
    pub async fn connect(key: &SecretKey, ticket: &NodeTicket) -> Result<Self, NetError> {
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(iroh::SecretKey::from_bytes(&key.to_bytes()))
            .relay_mode(RelayMode::Disabled)
            .portmapper_config(PortmapperConfig::Disabled)
            .bind()
            .await
            .map_err(|e| NetError::Bind(e.to_string()))?;
        let id = iroh::PublicKey::from_bytes(ticket.id.as_bytes())
            .map_err(|e| NetError::Bind(e.to_string()))?;
        let mut addr = EndpointAddr::new(id);
        for a in &ticket.addrs {
            addr = addr.with_ip_addr(*a);
        }
        let admin = dial(&endpoint, &addr, ticket, ADMIN_ALPN).await?;
        Ok(Self {
            endpoint,
            addr,
            ticket: ticket.clone(),
            admin,
        })
    }

    /// Sends one request and waits for its answer; a refusal is an error.
    pub async fn call(&self, req: &Request) -> Result<Response, NetError> {
        let (mut send, mut recv) = self.admin.open_bi().await.map_err(io_err)?;
        // The node may refuse a request before reading all of it (and stop
        // our stream): its answer is still worth more than our write error.
        let sent = match send.write_all(&rpc::encode_frame(req)).await {
            Ok(()) => send.finish().map_err(io_err),
            Err(e) => Err(io_err(e)),
        };
        let mut prefix = [0u8; 4];
        if let Err(e) = recv.read_exact(&mut prefix).await {
            return Err(sent.err().unwrap_or_else(|| io_err(e)));
        }
        let len = rpc::frame_len(prefix).map_err(|e| NetError::BadResponse(e.to_string()))?;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(io_err)?;
        match rpc::decode_body::<Response>(&body)
            .map_err(|e| NetError::BadResponse(e.to_string()))?
        {
            Response::Error(e) => Err(NetError::Refused(e)),
            r => Ok(r),
        }
    }

    /// A second connection, for iroh-blobs pushes.
    pub async fn blobs_connection(&self) -> Result<Connection, NetError> {
        dial(&self.endpoint, &self.addr, &self.ticket, iroh_blobs::ALPN).await
    }

    pub async fn close(self) {
        self.admin.close(0u32.into(), b"bye");
        self.endpoint.close().await;
    }
}

async fn dial(
    endpoint: &Endpoint,
    addr: &EndpointAddr,
    ticket: &NodeTicket,
    alpn: &[u8],
) -> Result<Connection, NetError> {
    let unreachable = |message: String| NetError::Unreachable {
        node: ticket.id.fmt_short(),
        addrs: ticket
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        message,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(addr.clone(), alpn)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
}
