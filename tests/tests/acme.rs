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
    acme_network_from(n, 0, &[])
}

/// [`acme_network`] where the nodes before `http_from` answer DNS only,
/// with `settings` (key, value) in every node's makiatto.toml.
fn acme_network_from(
    n: usize,
    http_from: usize,
    settings: &[(&str, &str)],
) -> Result<(Network, u16)> {
    let port = {
        // The port must be free on every one of the addresses.
        let mut tries = 0;
        loop {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            let p = probe.local_addr()?.port();
            drop(probe);
            let free = (1..=n).all(|i| {
                std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                    && std::net::TcpListener::bind((format!("127.0.0.{i}").as_str(), p)).is_ok()
            });
            tries += 1;
            if free || tries > 20 {
                break p;
            }
        }
    };
    let fresh = fresh_network()?;
    let configure = |dir: &std::path::Path, i: usize| -> Result<()> {
        let ip = format!("127.0.0.{}", i + 1);
        let roles = if i < http_from {
            r#"["dns"]"#
        } else {
            r#"["http", "dns"]"#
        };
        set_config(dir, "roles", roles)?;
        set_config(dir, "http", &format!(r#""{ip}:{port}""#))?;
        set_config(dir, "dns", &format!(r#""{ip}:0""#))?;
        // Members probe each other's edge at their p2p address.
        set_config(dir, "p2p", &format!(r#""{ip}:0""#))?;
        for (k, v) in settings {
            set_config(dir, k, v)?;
        }
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
    for node in net.nodes.iter().filter(|n| n.https.port() != 0) {
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
        .await
        .with_context(|| {
            // What the nodes said of their orders.
            let said: Vec<String> = net
                .nodes
                .iter()
                .flat_map(|n| {
                    n.log()
                        .lines()
                        .filter(|l| l.contains("acme"))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            format!("the nodes' ACME lines:\n{}", said.join("\n"))
        })?;
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
    acme_set(&net, &pebble, &["--contact", "ops@shop.test"]).await?;
    let timeout = Duration::from_secs(60);
    let leaf = served_everywhere(&net, SITE, &pebble.issuing_root, timeout)
        .await
        .with_context(|| format!("pebble's log:\n{}", pebble.log()))?;
    let alias_leaf = served_everywhere(&net, ALIAS, &pebble.issuing_root, timeout).await?;
    ensure!(
        leaf == alias_leaf,
        "one certificate for the site and its alias"
    );
    // curl (OpenSSL's verifier) trusts it too, on every node, with
    // Pebble's roots and nothing else.
    let index = std::fs::read(example_site().join("index.html"))?;
    for node in &net.nodes {
        let port = node.https.port();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--http2", "--cacert"])
            .arg(&pebble.roots)
            .arg("--capath")
            .arg("/nonexistent")
            .arg("--resolve")
            .arg(format!("{SITE}:{port}:{}", node.https.ip()))
            .arg(format!("https://{SITE}:{port}/"))
            .output()
            .context("curl (Debian package curl)")?;
        ensure!(
            out.status.success() && out.stdout == index,
            "curl on :{port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Now plain HTTP sends visitors to HTTPS, on every node.
    for node in &net.nodes {
        let http = node.http;
        wait_for(
            Duration::from_secs(10),
            "the redirect to https",
            || async move {
                Ok(maki_e2e::http_get(http, SITE, "/", &[])
                    .await
                    .is_ok_and(|r| r.status == 301))
            },
        )
        .await?;
    }
    let sites = net.admin.ok(&["sites"])?;
    ensure!(
        sites.contains("certificate ACME from Pebble") && sites.contains(ALIAS),
        "{sites}"
    );
    ensure!(!sites.contains("ORDER FAILED"), "{sites}");
    // One node ordered, once: the others left the site to it.
    let log = pebble.log();
    ensure!(log.matches("Added order").count() == 1, "{log}");
    // The orderer asked every edge for the challenges, as the CA would,
    // before telling the CA to look, and every edge answered.
    let logs: String = net.nodes.iter().map(|n| n.log()).collect();
    ensure!(logs.contains("every node answers the challenges"), "{logs}");
    ensure!(!logs.contains("do not answer the challenges yet"), "{logs}");
    // Changing one setting keeps the others (the roots above all: without
    // them no certificate of Pebble's would be served).
    net.admin
        .ok(&["acme", "set", "--contact", "ops2@shop.test"])?;
    let shown = net.admin.ok(&["acme", "show"])?;
    ensure!(
        shown.contains("mailto:ops2@shop.test")
            && shown.contains("roots      2 extra")
            && shown.contains(&pebble.directory),
        "{shown}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sites = net.admin.ok(&["sites"])?;
    ensure!(!sites.contains("NOT SERVED"), "{sites}");
    // --reset starts from nothing: no directory, no settings.
    let err = net.admin.fails(&["acme", "set", "--reset"])?;
    ensure!(err.contains("--directory is needed"), "{err}");
    Ok(())
}

async fn acme_set(net: &Network, pebble: &Pebble, extra: &[&str]) -> Result<()> {
    let roots = pebble.roots.to_string_lossy().into_owned();
    let mut args = vec![
        "acme",
        "set",
        "--directory",
        &pebble.directory,
        "--root",
        &roots,
    ];
    args.extend_from_slice(extra);
    net.admin.ok(&args)?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs pebble (Debian package pebble); .ci/run installs it"]
async fn dns01_proves_the_names_and_a_wildcard_through_the_networks_own_nameservers() -> Result<()>
{
    let (net, _) = acme_network(2)?;
    publish(&net)?;
    // Pebble's HTTP-01 checks go to a port nothing listens on: only
    // DNS-01 can succeed.
    let [nowhere] = maki_e2e::pebble::free_ports()?;
    let pebble = pebble(&net, nowhere.port(), None).await?;
    acme_set(&net, &pebble, &["--challenge", "dns-01"]).await?;
    let timeout = Duration::from_secs(60);
    let leaf = served_everywhere(&net, SITE, &pebble.issuing_root, timeout)
        .await
        .with_context(|| format!("pebble's log:\n{}", pebble.log()))?;
    // One certificate for the domain and the wildcard under it (as a CDN
    // orders with DNS-01): an alias added under the domain later is
    // served with it at once, without a new order.
    ensure!(served_everywhere(&net, ALIAS, &pebble.issuing_root, timeout).await? == leaf);
    net.admin
        .ok(&["site", "alias", "add", SITE, "new.shop.test"])?;
    let later = served_everywhere(&net, "new.shop.test", &pebble.issuing_root, timeout).await?;
    ensure!(later == leaf, "the wildcard covers the new alias");
    let log = pebble.log();
    ensure!(log.matches("Added order").count() == 1, "{log}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs pebble (Debian package pebble); .ci/run installs it"]
async fn a_certificate_is_renewed_when_a_third_of_its_life_is_left() -> Result<()> {
    let (net, port) = acme_network(2)?;
    publish(&net)?;
    // Certificates of 30 s: renewed from 20 s on.
    let pebble = pebble(&net, port, Some(30)).await?;
    acme_set(&net, &pebble, &[]).await?;
    let first = served_everywhere(&net, SITE, &pebble.issuing_root, Duration::from_secs(60))
        .await
        .with_context(|| format!("pebble's log:\n{}", pebble.log()))?;
    served_anew(&net, &first, &pebble.issuing_root, Duration::from_secs(45)).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs pebble (Debian package pebble); .ci/run installs it"]
async fn another_node_takes_over_when_the_ordering_node_dies_mid_order() -> Result<()> {
    // Node 0 only answers DNS (Pebble asks it), so the one killed is
    // never the nameserver.
    let (mut net, port) = acme_network_from(4, 1, &[])?;
    publish(&net)?;
    let pebble = pebble(&net, port, None).await?;
    // Each order waits a moment after writing its challenges: the node
    // is killed then, before the CA was told to look.
    acme_set(&net, &pebble, &[]).await?;
    let mut holder = None;
    wait_for(Duration::from_secs(30), "an order in flight", || {
        let sites = net.admin.ok(&["sites"]);
        let found = sites.ok().and_then(|s| {
            let (_, after) = s.split_once("ordering (node ")?;
            Some(after.split(')').next()?.to_owned())
        });
        holder = found.clone();
        async move { Ok(found.is_some()) }
    })
    .await?;
    let short = holder.context("the ordering node")?;
    let i = (0..net.nodes.len())
        .find(|&i| net.nodes[i].id().is_ok_and(|id| id.starts_with(&short)))
        .context("the ordering node among ours")?;
    ensure!(i != 0, "node 0 has no http role");
    let dead = net.nodes.remove(i);
    dead.crash()?;
    let served = served_everywhere(&net, SITE, &pebble.issuing_root, Duration::from_secs(90)).await;
    served.with_context(|| format!("pebble's log:\n{}\n{}", pebble.log(), node_logs(&net)))?;
    // The dead node's order, then the one that took over.
    let log = pebble.log();
    ensure!(log.matches("Added order").count() == 2, "{log}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs pebble (Debian package pebble); .ci/run installs it"]
async fn removing_a_node_reorders_the_certificates_it_could_read_and_revokes_them() -> Result<()> {
    let (mut net, port) = acme_network(3)?;
    publish(&net)?;
    let pebble = pebble(&net, port, None).await?;
    acme_set(&net, &pebble, &[]).await?;
    let old = served_everywhere(&net, SITE, &pebble.issuing_root, Duration::from_secs(60))
        .await
        .with_context(|| node_logs(&net))?;
    let serial = serial_hex(&old).context("the old leaf's serial")?;
    ensure!(pebble.status(&serial).await? == "Valid");
    let gone = net.nodes.pop().context("a node")?;
    let id = gone.id()?;
    gone.stop()?;
    net.admin.ok(&["nodes", "remove", &id])?;
    // A new key, which the removed node never saw, on the nodes left.
    served_anew(&net, &old, &pebble.issuing_root, Duration::from_secs(60))
        .await
        .with_context(|| node_logs(&net))?;
    wait_for(
        Duration::from_secs(20),
        "the old certificate revoked",
        || {
            let status = pebble.status(&serial);
            async move { Ok(status.await? == "Revoked") }
        },
    )
    .await
    .with_context(|| node_logs(&net))?;
    // The account key it held was changed too.
    let logs = node_logs(&net);
    ensure!(logs.contains("rolled the ACME account key"), "{logs}");
    Ok(())
}

/// Waits until every node serves SITE with a certificate other than
/// `old` that verifies under `root`.
async fn served_anew(
    net: &Network,
    old: &[u8],
    root: &rustls::pki_types::CertificateDer<'static>,
    timeout: Duration,
) -> Result<()> {
    let trust = Trust::Roots(vec![root.clone()]);
    for node in &net.nodes {
        let https = node.https;
        wait_for(timeout, "a new certificate", || {
            let trust = trust.clone();
            async move {
                Ok(https_get(https, SITE, "/", &["h2"], &trust)
                    .await
                    .is_ok_and(|r| r.chain.first().is_some_and(|l| l.as_ref() != old)))
            }
        })
        .await?;
    }
    Ok(())
}

/// Every node's log so far, for a failure's context.
fn node_logs(net: &Network) -> String {
    let logs: Vec<String> = net.nodes.iter().map(|n| n.log()).collect();
    format!("node logs:\n{}", logs.join("\n----\n"))
}

/// The serial number of the certificate `der`, in lowercase hex without
/// leading zeros (as Pebble names it).
fn serial_hex(der: &[u8]) -> Option<String> {
    fn item(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        if *b.first()? != tag {
            return None;
        }
        let first = *b.get(1)?;
        let (len, start) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            let mut len = 0usize;
            for &byte in b.get(2..2 + n)? {
                len = (len << 8) | usize::from(byte);
            }
            (len, 2 + n)
        };
        Some((b.get(start..start + len)?, b.get(start + len..)?))
    }
    let (cert, _) = item(der, 0x30)?;
    let (mut tbs, _) = item(cert, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = item(tbs, 0xa0)?.1;
    }
    let (serial, _) = item(tbs, 0x02)?;
    let hex = data_encoding::HEXLOWER.encode(serial);
    Some(hex.trim_start_matches('0').to_owned())
}

#[tokio::test]
#[ignore = "needs pebble (Debian package pebble); .ci/run installs it"]
async fn a_failed_order_is_shown_backs_off_and_is_tried_again_after_new_settings() -> Result<()> {
    let (net, _) = acme_network(2)?;
    publish(&net)?;
    // HTTP-01 checks go nowhere: the order fails.
    let [nowhere] = maki_e2e::pebble::free_ports()?;
    let pebble = pebble(&net, nowhere.port(), None).await?;
    acme_set(&net, &pebble, &[]).await?;
    let mut shown = String::new();
    wait_for(Duration::from_secs(60), "the failure in maki sites", || {
        shown = net.admin.ok(&["sites"]).unwrap_or_default();
        let failed = shown.contains("ORDER FAILED (1 in a row");
        async move { Ok(failed) }
    })
    .await?;
    ensure!(
        shown.contains("connection refused") || shown.contains("Connection refused"),
        "{shown}"
    );
    // Backing off: no second order while the settings stay.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = pebble.log();
    ensure!(log.matches("Added order").count() == 1, "{log}");
    // An admin switches to DNS-01: tried again at once, and it works.
    acme_set(&net, &pebble, &["--challenge", "dns-01"]).await?;
    served_everywhere(&net, SITE, &pebble.issuing_root, Duration::from_secs(60)).await?;
    let sites = net.admin.ok(&["sites"])?;
    ensure!(!sites.contains("ORDER FAILED"), "{sites}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs pebble (Debian package pebble); .ci/run installs it"]
async fn wrong_settings_cost_one_order_and_the_fix_is_tried_at_once() -> Result<()> {
    let (net, port) = acme_network(2)?;
    publish(&net)?;
    let pebble = pebble(&net, port, None).await?;
    let sites = || net.admin.ok(&["sites"]).unwrap_or_default();
    // A directory URL with a typo: no account, shown as such.
    let typo = pebble.directory.replace("/dir", "/dirr");
    let roots = pebble.roots.to_string_lossy().into_owned();
    net.admin
        .ok(&["acme", "set", "--directory", &typo, "--root", &roots])?;
    wait_for(Duration::from_secs(30), "no account, in maki sites", || {
        let s = sites();
        async move { Ok(s.contains("ORDER FAILED (1 in a row") && s.contains("no account")) }
    })
    .await?;
    // A root that the CA's certificates do not chain to: the one order
    // issued is thrown away, and no other is made under these settings.
    let wrong = pebble.directory_root.to_string_lossy().into_owned();
    net.admin.ok(&[
        "acme",
        "set",
        "--directory",
        &pebble.directory,
        "--root",
        &wrong,
    ])?;
    wait_for(
        Duration::from_secs(30),
        "the unusable certificate shown",
        || {
            let s = sites();
            async move { Ok(s.contains("ORDER FAILED") && s.contains("not usable")) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let log = pebble.log();
    ensure!(log.matches("Issued certificate").count() == 1, "{log}");
    // The right settings: ordered at once, whatever the back-off said.
    acme_set(&net, &pebble, &[]).await?;
    served_everywhere(&net, SITE, &pebble.issuing_root, Duration::from_secs(30)).await?;
    let s = sites();
    ensure!(!s.contains("ORDER FAILED"), "{s}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs pebble, chromium and certutil (libnss3-tools); .ci/run installs them"]
async fn chromium_trusts_the_certificate_over_tcp_and_over_http3() -> Result<()> {
    let (net, port) = acme_network_from(2, 0, &[("http3", "true")])?;
    publish(&net)?;
    let pebble = pebble(&net, port, None).await?;
    acme_set(&net, &pebble, &[]).await?;
    served_everywhere(&net, SITE, &pebble.issuing_root, Duration::from_secs(60)).await?;
    // A browser whose only added root is Pebble's, in its own NSS store.
    let home = net.tmp.path().join("browser");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb)?;
    let db = format!("sql:{}", nssdb.display());
    let root = home.join("pebble-root.pem");
    std::fs::write(
        &root,
        maki_e2e::pebble::pem("CERTIFICATE", &pebble.issuing_root),
    )?;
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "pebble",
            "-i",
            root.to_str().unwrap_or_default(),
        ],
    ] {
        let out = std::process::Command::new("certutil")
            .args(&args)
            .output()
            .context("running certutil (Debian package libnss3-tools)")?;
        ensure!(
            out.status.success(),
            "certutil: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let https = net.nodes[0].https;
    let url = format!("https://{SITE}:{}/", https.port());
    let browse = |extra: &[String], netlog: &std::path::Path| -> Result<String> {
        let out = std::process::Command::new("chromium")
            .env("HOME", &home)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!(
                "--user-data-dir={}",
                home.join("profile").display()
            ))
            .arg(format!("--host-resolver-rules=MAP {SITE} 127.0.0.1"))
            .arg(format!("--log-net-log={}", netlog.display()))
            .args(extra)
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .context("running chromium")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // Over TCP: the certificate verifies, the page renders.
    let tcp_log = home.join("tcp.json");
    let dom = browse(&["--disable-quic".to_owned()], &tcp_log)?;
    ensure!(dom.contains("Hello from the edge"), "over TLS: {dom}");
    // Forced onto QUIC: the same page, over HTTP/3.
    let quic_log = home.join("quic.json");
    let force = format!("--origin-to-force-quic-on={SITE}:{}", https.port());
    let dom = browse(&["--enable-quic".to_owned(), force], &quic_log)?;
    ensure!(dom.contains("Hello from the edge"), "over HTTP/3: {dom}");
    let log = std::fs::read_to_string(&quic_log)?;
    ensure!(
        log.contains("QUIC_SESSION") && log.contains("\"h3\""),
        "Chromium's net log shows no HTTP/3 session"
    );
    Ok(())
}
