//! Certificates from a real ACME CA (Debian's `pebble`), ordered by the
//! nodes: challenges answered by every node, the certificate served by
//! all of them. `.ci/run` installs pebble and runs these.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use maki_e2e::{
    Maki, Network, NodeProc, Trust, copy_dir, example_site, fresh_network, https_get,
    pebble::{Pebble, PebbleSettings},
    set_config, wait_for,
};

const SITE: &str = "shop.test";
const ALIAS: &str = "www.shop.test";

/// `n` nodes that serve HTTP and DNS, node `i` at 127.0.0.(i+1) with one
/// HTTP port for all (the port Pebble checks HTTP-01 on, at whichever
/// address the name resolves to).
fn acme_network(n: usize) -> Result<(Network, u16)> {
    let port = {
        // The port must be free on every one of the addresses.
        let mut tries = 0;
        loop {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            let p = probe.local_addr()?.port();
            drop(probe);
            let free = (1..=n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::TcpListener::bind((format!("127.0.0.{i}").as_str(), p)).is_ok());
            tries += 1;
            if free || tries > 20 {
                break p;
            }
        }
    };
    let fresh = fresh_network()?;
    let configure = |dir: &std::path::Path, i: usize| -> Result<()> {
        let ip = format!("127.0.0.{}", i + 1);
        set_config(dir, "roles", r#"["http", "dns"]"#)?;
        set_config(dir, "http", &format!(r#""{ip}:{port}""#))?;
        set_config(dir, "dns", &format!(r#""{ip}:0""#))?;
        set_config(dir, "public_ips", &format!(r#"["{ip}"]"#))?;
        Ok(())
    };
    configure(&fresh.data, 0)?;
    let first = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&first.ticket));
    let mut net = Network {
        tmp: fresh.tmp,
        nodes: vec![first],
        admin,
    };
    for i in 1..n {
        let ticket = net.admin.ok(&["invite"])?.trim().to_owned();
        let dir = net.tmp.path().join(format!("n{i}"));
        NodeProc::join(&dir, &ticket)?.stop()?;
        configure(&dir, i)?;
        net.nodes.push(NodeProc::start(&dir)?);
    }
    Ok((net, port))
}

/// Adds SITE with ALIAS, publishes the example site and waits until
/// every node serves it.
fn publish(net: &Network) -> Result<()> {
    net.admin.ok(&["site", "add", SITE])?;
    net.admin.ok(&["site", "alias", "add", SITE, ALIAS])?;
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    net.admin
        .ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    Ok(())
}

async fn pebble(net: &Network, port: u16, validity: Option<u64>) -> Result<Pebble> {
    let dns = net.nodes[0].dns.context("node 0 answers DNS")?;
    Pebble::start(
        &net.tmp.path().join("pebble"),
        &PebbleSettings {
            http_port: port,
            dns,
            validity,
        },
    )
    .await
}

/// Waits until every node serves `host` with a certificate that verifies
/// under `root`; the leaf.
async fn served_everywhere(
    net: &Network,
    host: &str,
    root: &rustls::pki_types::CertificateDer<'static>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let trust = Trust::Roots(vec![root.clone()]);
    let mut leaf = Vec::new();
    for node in &net.nodes {
        let https = node.https;
        let host = host.to_owned();
        wait_for(timeout, &format!("{host} from the CA on {https}"), || {
            let (trust, host) = (trust.clone(), host.clone());
            async move {
                Ok(https_get(https, &host, "/", &["h2"], &trust)
                    .await
                    .is_ok_and(|r| r.reply.status == 200))
            }
        })
        .await?;
        let got = https_get(https, host.as_str(), "/", &["h2"], &trust).await?;
        leaf = got.chain.first().context("a leaf")?.to_vec();
    }
    Ok(leaf)
}

#[tokio::test]
#[ignore = "needs pebble (Debian package pebble); .ci/run installs it"]
async fn a_certificate_one_node_orders_is_served_by_all_three() -> Result<()> {
    let (net, port) = acme_network(3)?;
    publish(&net)?;
    let pebble = pebble(&net, port, None).await?;
    let roots = pebble.roots.to_string_lossy().into_owned();
    net.admin.ok(&[
        "acme",
        "set",
        "--directory",
        &pebble.directory,
        "--root",
        &roots,
        "--contact",
        "ops@shop.test",
    ])?;
    let timeout = Duration::from_secs(60);
    let leaf = served_everywhere(&net, SITE, &pebble.issuing_root, timeout)
        .await
        .with_context(|| format!("pebble's log:\n{}", pebble.log()))?;
    let alias_leaf = served_everywhere(&net, ALIAS, &pebble.issuing_root, timeout).await?;
    ensure!(leaf == alias_leaf, "one certificate for the site and its alias");
    // Now plain HTTP sends visitors to HTTPS, on every node.
    for node in &net.nodes {
        let http = node.http;
        wait_for(Duration::from_secs(10), "the redirect to https", || async move {
            Ok(maki_e2e::http_get(http, SITE, "/", &[])
                .await
                .is_ok_and(|r| r.status == 301))
        })
        .await?;
    }
    let sites = net.admin.ok(&["sites"])?;
    ensure!(
        sites.contains("certificate ACME from Pebble") && sites.contains(ALIAS),
        "{sites}"
    );
    ensure!(!sites.contains("ORDER FAILED"), "{sites}");
    Ok(())
}
