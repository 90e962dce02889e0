//! A DNS client for the tests: hickory-proto's messages over real UDP
//! and TCP sockets, and `dig` where it is installed.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hickory_proto::{
    op::{Edns, Message, Query},
    rr::{
        Name, RecordType,
        rdata::opt::{ClientSubnet, EdnsOption},
    },
};

/// How to ask.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The EDNS Client Subnet option to send: (address, source prefix).
    pub subnet: Option<(IpAddr, u8)>,
    /// Over TCP instead of UDP.
    pub tcp: bool,
    /// Without EDNS (a plain 512-byte client).
    pub no_edns: bool,
    /// With the DO bit: DNSSEC records wanted.
    pub dnssec: bool,
}

/// One query for `name` `qtype` at `server`; UDP is retried twice.
pub fn ask(server: SocketAddr, name: &str, qtype: RecordType, how: &Ask) -> Result<Message> {
    let mut q = Message::query();
    q.metadata.recursion_desired = false;
    q.add_query(Query::query(Name::from_ascii(name)?, qtype));
    if !how.no_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(how.dnssec);
        if let Some((ip, prefix)) = how.subnet {
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(ip, prefix, 0)));
        }
        q.set_edns(edns);
    }
    let bytes = q.to_vec()?;
    let reply = if how.tcp {
        exchange_tcp(server, &bytes)?
    } else {
        exchange_udp(server, &bytes)?.context("no reply over UDP")?
    };
    let m = Message::from_vec(&reply)?;
    if m.metadata.id != q.metadata.id {
        bail!("reply id {} for query id {}", m.metadata.id, q.metadata.id);
    }
    Ok(m)
}

/// Sends raw bytes over UDP; `None` when no reply came within a second
/// (three tries).
pub fn exchange_udp(server: SocketAddr, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse()?
    } else {
        "[::1]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_millis(330)))?;
    let mut buf = vec![0u8; 65535];
    for _ in 0..3 {
        sock.send_to(bytes, server)?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => return Ok(Some(buf[..n].to_vec())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// One length-prefixed exchange on a new TCP connection.
pub fn exchange_tcp(server: SocketAddr, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut conn = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    conn.write_all(&out)?;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut reply)?;
    Ok(reply)
}

/// One length-prefixed exchange over TLS (DNS over TLS, ALPN `dot`),
/// with SNI `sni`, checking no certificate (as resolvers do with
/// authoritative servers, RFC 9539); the reply and the certificates the
/// server sent.
pub async fn exchange_tls(
    server: SocketAddr,
    sni: &str,
    bytes: &[u8],
) -> Result<(Vec<u8>, Vec<rustls::pki_types::CertificateDer<'static>>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = crate::client_config(&[], &crate::Trust::Any, rustls::DEFAULT_VERSIONS)?;
    std::sync::Arc::make_mut(&mut config).alpn_protocols = vec![b"dot".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(server).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned())?;
    let mut tls = connector.connect(name, tcp).await?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    tls.write_all(&out).await?;
    let len = tls.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    tls.read_exact(&mut reply).await?;
    Ok((reply, chain))
}

/// A query for `name` `qtype`, as bytes.
pub fn query(name: &str, qtype: RecordType) -> Result<Vec<u8>> {
    let mut q = Message::query();
    q.metadata.recursion_desired = false;
    q.add_query(Query::query(Name::from_ascii(name)?, qtype));
    Ok(q.to_vec()?)
}

/// The addresses in a reply's answer section, sorted.
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = m.answers.iter().filter_map(|r| r.data.ip_addr()).collect();
    out.sort();
    out
}

/// `dig @server -p PORT ARGS…`, its standard output (`dig` from
/// Debian's dnsutils).
pub fn dig(server: SocketAddr, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+time=2", "+tries=2"])
        .args(args)
        .output()
        .context("running dig (Debian package dnsutils)")?;
    if !out.status.success() {
        bail!("dig failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}
