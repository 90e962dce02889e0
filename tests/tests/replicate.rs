//! Many nodes: records and content replicate; every node serves every site.

use std::time::Duration;

use anyhow::{Result, ensure};
use maki_e2e::{Network, body_of, copy_dir, example_site, network, wait_for};

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

    // A one-file change reaches every node.
    std::fs::write(site.join("index.html"), b"<h1>second</h1>\n")?;
    at1.ok(&[
        "publish",
        site.to_str().unwrap_or_default(),
        "--site",
        "r.test",
    ])?;
    let took = all_serve(&net, "r.test", "/", b"<h1>second</h1>\n").await?;
    eprintln!("a one-file change was visible on all 3 nodes after {took:?}");

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
