//! Dials a node as another node would (`tests/lab/`; root only): from
//! inside a lab host, with the key of the node whose data directory is
//! given, so a test can knock at each of a node's doors as a member.
//! Prints what became of the connection:
//!   `open`                 it was accepted and stayed open
//!   `closed CODE REASON`   the node closed it (a hook's refusal)
//!   `failed ERROR`         it never opened
//!
//! usage: maki-lab-dial DATA_DIR NODE_ID ADDR ALPN

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use iroh::{EndpointAddr, address_lookup::MemoryLookup, endpoint::ConnectionError};

/// How long an accepted connection is watched for a refusal.
const WATCH: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, id, addr, alpn] = args.as_slice() else {
        bail!("usage: maki-lab-dial DATA_DIR NODE_ID ADDR ALPN");
    };
    let key = makiatto::identity::load_key(std::path::Path::new(dir))?;
    let id: iroh::PublicKey = id.parse().context("NODE_ID")?;
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let endpoint = makiatto::endpoint::bind(&key, any, MemoryLookup::new()).await?;
    let to = EndpointAddr::new(id).with_ip_addr(addr);
    let said = match tokio::time::timeout(WATCH, endpoint.connect(to, alpn.as_bytes())).await {
        Err(_) => "failed timed out".to_owned(),
        Ok(Err(error)) => format!("failed {error}"),
        Ok(Ok(conn)) => match tokio::time::timeout(WATCH, conn.closed()).await {
            Err(_) => "open".to_owned(),
            Ok(ConnectionError::ApplicationClosed(close)) => format!(
                "closed {} {}",
                close.error_code,
                String::from_utf8_lossy(&close.reason)
            ),
            Ok(error) => format!("failed {error}"),
        },
    };
    println!("{said}");
    endpoint.close().await;
    Ok(())
}
