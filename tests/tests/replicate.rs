//! Many nodes: records and content replicate; every node serves every site.

use std::time::Duration;

use anyhow::{Result, ensure};
use maki_e2e::{Maki, Network, NodeProc, body_of, copy_dir, example_site, network, wait_for};

const CONVERGE: Duration = Duration::from_secs(20);

/// Waits until every node serves `path` of `host` with exactly `want`.
async fn all_serve(net: &Network, host: &str, path: &str, want: &[u8]) -> Result<Duration> {
    let addrs: Vec<_> = net.nodes.iter().map(|n| n.http).collect();
    wait_for(
        CONVERGE,
        &format!("every node to serve {host}{path}"),
        || {
            let addrs = addrs.clone();
            async move {
                for a in addrs {
                    if body_of(a, host, path).await.as_deref() != Some(want) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        },
    )
    .await
}

#[tokio::test]
async fn three_nodes_serve_what_one_was_sent() -> Result<()> {
    let net = network(3)?;
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    // The site is added at one node and published at another: both the
    // site record and the head replicate.
    net.admin.ok(&["site", "add", "r.test"])?;
    let at1 = net.admin_at(1);
    wait_for(CONVERGE, "the site record to reach node 1", || async {
        Ok(at1.ok(&["sites"])?.contains("r.test"))
    })
    .await?;
    at1.ok(&[
        "publish",
        site.to_str().unwrap_or_default(),
        "--site",
        "r.test",
    ])?;

    let index = std::fs::read(site.join("index.html"))?;
    all_serve(&net, "r.test", "/", &index).await?;
    let css = std::fs::read(site.join("css/style.css"))?;
    all_serve(&net, "r.test", "/css/style.css", &css).await?;

    // A one-file change reaches every node; --wait reports each, and the
    // change is visible everywhere within a second of the publish.
    std::fs::write(site.join("index.html"), b"<h1>second</h1>\n")?;
    let started = std::time::Instant::now();
    let out = publish(&at1, &site, &["--wait"])?;
    let took = started.elapsed();
    ensure!(out.contains("all 3 nodes serve r.test"), "{out}");
    ensure!(out.matches("serves it after").count() == 3, "{out}");
    all_serve(&net, "r.test", "/", b"<h1>second</h1>\n").await?;
    eprintln!("publish --wait of a one-file change returned after {took:?}\n{out}");

    // Every node lists all three members.
    for i in 0..3 {
        let at = net.admin_at(i);
        wait_for(CONVERGE, "every node to know all members", || async {
            Ok(at.ok(&["nodes"])?.lines().count() == 3)
        })
        .await?;
    }

    // Removal replicates too.
    net.admin.ok(&["site", "remove", "r.test"])?;
    for n in &net.nodes {
        let a = n.http;
        wait_for(CONVERGE, "the site to be gone everywhere", || async move {
            Ok(body_of(a, "r.test", "/").await.is_none())
        })
        .await?;
    }
    ensure!(net.nodes[2].log().contains("replicated"));
    Ok(())
}

fn publish(at: &Maki, site: &std::path::Path, extra: &[&str]) -> Result<String> {
    let mut args = vec![
        "publish",
        site.to_str().unwrap_or_default(),
        "--site",
        "r.test",
    ];
    args.extend_from_slice(extra);
    at.ok(&args)
}

/// A network of `n` with r.test published (its index reads `v1`).
async fn published(n: usize) -> Result<(Network, std::path::PathBuf)> {
    let net = network(n)?;
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    std::fs::write(site.join("index.html"), b"v1")?;
    net.admin.ok(&["site", "add", "r.test"])?;
    publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    Ok((net, site))
}

#[tokio::test]
async fn a_stopped_node_catches_up_after_restart() -> Result<()> {
    let (mut net, site) = published(3).await?;
    let down = net.nodes.remove(2);
    let id = down.id()?;
    let data = down.dir.clone();
    down.stop()?;

    std::fs::write(site.join("index.html"), b"v2")?;
    // --wait names the node that is not there.
    let err = net.admin.fails(&[
        "publish",
        site.to_str().unwrap_or_default(),
        "--site",
        "r.test",
        "--wait",
        "--timeout",
        "2s",
    ])?;
    let short = &id[..10];
    ensure!(
        err.contains("1 of 3 nodes do not serve head 2") && err.contains(short),
        "{err}"
    );
    all_serve(&net, "r.test", "/", b"v2").await?;

    net.nodes.push(NodeProc::start(&data)?);
    all_serve(&net, "r.test", "/", b"v2").await?;
    Ok(())
}

#[tokio::test]
async fn a_frozen_node_holds_nobody_up_and_converges_after() -> Result<()> {
    let (net, site) = published(3).await?;
    net.nodes[2].pause()?;

    // The others carry on: several publishes while it is frozen, each
    // visible on the live nodes quickly.
    for v in 2..=4 {
        let body = format!("v{v}");
        std::fs::write(site.join("index.html"), &body)?;
        publish(&net.admin, &site, &[])?;
        for n in &net.nodes[..2] {
            let a = n.http;
            let want = body.clone();
            let took =
                wait_for(CONVERGE, "live nodes to serve it", || {
                    let want = want.clone();
                    async move {
                        Ok(body_of(a, "r.test", "/").await.as_deref() == Some(want.as_bytes()))
                    }
                })
                .await?;
            ensure!(took < Duration::from_secs(5), "a live node took {took:?}");
        }
    }
    // Longer than the sync timeout.
    tokio::time::sleep(Duration::from_secs(11)).await;
    net.nodes[2].resume()?;
    all_serve(&net, "r.test", "/", b"v4").await?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_node_is_cut_off() -> Result<()> {
    let (net, site) = published(3).await?;
    let gone = net.nodes[2].id()?;
    let out = net.admin.ok(&["nodes", "remove", &gone])?;
    ensure!(out.contains("removed node"), "{out}");
    // Not an admin: refused.
    let home = net.tmp.path().join("stranger");
    std::fs::create_dir_all(&home)?;
    let stranger = Maki::new(&home, Some(&net.nodes[0].ticket));
    ensure!(
        stranger
            .fails(&["nodes", "remove", &net.nodes[1].id()?])?
            .contains("is not an admin")
    );

    std::fs::write(site.join("index.html"), b"v2")?;
    let out = publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    ensure!(out.contains("all 2 nodes serve"), "{out}");
    // The revoked node never hears of it, and is listed nowhere.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(body_of(net.nodes[2].http, "r.test", "/").await.as_deref() == Some(&b"v1"[..]));
    for i in 0..2 {
        let at = net.admin_at(i);
        wait_for(CONVERGE, "the revocation to reach every member", || async {
            Ok(!at.ok(&["nodes"])?.contains(&gone))
        })
        .await?;
    }
    ensure!(
        net.nodes[0].log().contains("not a member") || net.nodes[1].log().contains("not a member"),
        "nobody logged the refusal"
    );
    Ok(())
}

#[tokio::test]
async fn five_nodes_serve_one_publish() -> Result<()> {
    let (net, site) = published(5).await?;
    all_serve(&net, "r.test", "/", b"v1").await?;
    std::fs::write(site.join("index.html"), b"v2")?;
    // Published at the last node to join.
    let out = publish(&net.admin_at(4), &site, &["--wait", "--timeout", "20s"])?;
    ensure!(out.contains("all 5 nodes serve"), "{out}");
    all_serve(&net, "r.test", "/", b"v2").await?;
    Ok(())
}
