//! Many nodes: records and content replicate; every node serves every site.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use maki_e2e::{
    Maki, Network, NodeProc, body_of, copy_dir, example_site, lab::random_file, network, wait_for,
};

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

    // A rollback made at a third node reaches every node.
    let at2 = net.admin_at(2);
    let out = at2.ok(&["rollback", "r.test"])?;
    ensure!(out.contains("version 1"), "{out}");
    all_serve(&net, "r.test", "/", &index).await?;

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
    let site = publish_v1(&net)?;
    Ok((net, site))
}

/// `r.test` added and published (`v1` at `/`) to every node of `net`.
fn publish_v1(net: &Network) -> Result<std::path::PathBuf> {
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    std::fs::write(site.join("index.html"), b"v1")?;
    net.admin.ok(&["site", "add", "r.test"])?;
    publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    Ok(site)
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
        // Under load a live node may be late too; the stopped one is named.
        err.contains("of 3 nodes do not serve head 2") && err.contains(short),
        "{err}"
    );
    all_serve(&net, "r.test", "/", b"v2").await?;

    net.nodes.push(NodeProc::start(&data)?);
    all_serve(&net, "r.test", "/", b"v2").await?;
    Ok(())
}

#[tokio::test]
async fn a_frozen_node_holds_nobody_up_and_converges_after() -> Result<()> {
    // Syncs give up on a silent member only after an hour: if anything
    // waited for the frozen node, the live nodes would not converge within
    // CONVERGE below. A condition, not a stopwatch.
    let net = maki_e2e::network_with(3, &[("sync_timeout", "\"1h\"")])?;
    let site = publish_v1(&net)?;
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
            wait_for(CONVERGE, "live nodes to serve it", || {
                let want = want.clone();
                async move {
                    Ok(body_of(a, "r.test", "/").await.as_deref() == Some(want.as_bytes()))
                }
            })
            .await?;
        }
    }
    // Frozen a while (longer than QUIC's idle timeout), then back.
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

    for i in 0..2 {
        let at = net.admin_at(i);
        wait_for(CONVERGE, "the revocation to reach every member", || async {
            Ok(!at.ok(&["nodes"])?.contains(&gone))
        })
        .await?;
    }

    std::fs::write(site.join("index.html"), b"v2")?;
    let out = publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    ensure!(out.contains("all 2 nodes serve"), "{out}");
    // The revoked node never hears of it: not by sync, and not over the
    // gossip links it had open (they were closed), so it neither serves
    // the new version nor knows its record.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(body_of(net.nodes[2].http, "r.test", "/").await.as_deref() == Some(&b"v1"[..]));
    // Had it heard, it would try to fetch seq 2 and log that it could not.
    let log = net.nodes[2].log();
    ensure!(
        !log.contains("seq=2"),
        "the revoked node heard of v2:\n{log}"
    );
    // Its next syncs are refused, and said so. Or it heard of its own
    // removal (the revocation may reach it before its links close) and
    // stopped syncing, and said that.
    wait_for(CONVERGE, "a member to refuse the revoked node", || async {
        Ok(net.nodes[..2]
            .iter()
            .any(|n| n.log().contains("not a member"))
            || net.nodes[2].log().contains("an admin removed this node"))
    })
    .await
    .with_context(|| format!("the revoked node's log:\n{}", net.nodes[2].log()))?;
    Ok(())
}

/// A sync that was under way when the node was removed (the node paused,
/// or down and retried) must not go on to hand it what came after.
#[tokio::test]
async fn a_node_removed_while_paused_hears_nothing_after() -> Result<()> {
    let (net, _site) = published(3).await?;
    let gone = net.nodes[2].id()?;
    net.nodes[2].pause()?;
    // Long enough that both members start a sync with it (every 5 s each
    // syncs with its two peers), short of the 10 s one step may wait.
    tokio::time::sleep(Duration::from_secs(6)).await;
    net.admin.ok(&["nodes", "remove", &gone])?;
    net.admin.ok(&["site", "add", "after.test"])?;
    let at1 = net.admin_at(1);
    wait_for(
        CONVERGE,
        "the new site to reach the other member",
        || async { Ok(at1.ok(&["sites"])?.contains("after.test")) },
    )
    .await?;
    net.nodes[2].resume()?;
    // The syncs it was part of wake up now; give them time to finish.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sites = net.admin_at(2).ok(&["sites"])?;
    ensure!(
        !sites.contains("after.test"),
        "the removed node heard of a later site:\n{sites}"
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

    // A second site replicates beside the first.
    net.admin.ok(&["site", "add", "s.test"])?;
    std::fs::write(site.join("index.html"), b"second site")?;
    let out = net.admin.ok(&[
        "publish",
        site.to_str().unwrap_or_default(),
        "--site",
        "s.test",
        "--wait",
        "--timeout",
        "20s",
    ])?;
    ensure!(out.contains("all 5 nodes serve s.test"), "{out}");
    all_serve(&net, "s.test", "/", b"second site").await?;
    all_serve(&net, "r.test", "/", b"v2").await?;
    Ok(())
}

#[tokio::test]
async fn a_provider_killed_mid_transfer_is_replaced() -> Result<()> {
    let (mut net, site) = published(3).await?;
    let big = site.join("big");
    std::fs::create_dir_all(&big)?;
    for i in 0..40 {
        random_file(&big, &format!("blob{i}.bin"), 2 << 20)?;
    }
    std::fs::write(site.join("index.html"), b"v2")?;
    publish(&net.admin, &site, &["--wait", "--timeout", "60s"])?;

    // A new node fetches 80 MiB from the three holders at once; one of
    // them dies while it does.
    net.add_node()?;
    let blobs = net.nodes[3].dir.join("blobs");
    wait_for(
        Duration::from_secs(30),
        "the new node to be mid-transfer",
        || {
            let blobs = blobs.clone();
            async move { Ok(dir_size(&blobs) > 8 << 20) }
        },
    )
    .await?;
    let victim = net.nodes.remove(1);
    let victim_id = victim.id()?;
    victim.crash()?;
    let want = std::fs::read(site.join("big/blob39.bin"))?;
    let newcomer = net.nodes[2].http;
    wait_for(
        Duration::from_secs(60),
        "the new node to serve everything",
        || {
            let want = &want;
            async move {
                Ok(body_of(newcomer, "r.test", "/big/blob39.bin")
                    .await
                    .as_deref()
                    == Some(&want[..]))
            }
        },
    )
    .await?;
    for i in 0..40 {
        let path = format!("/big/blob{i}.bin");
        let body = body_of(newcomer, "r.test", &path).await;
        ensure!(
            body.as_deref() == Some(&std::fs::read(site.join(&path[1..]))?[..]),
            "{path} differs"
        );
    }
    // It noticed the dead provider and went on from the others.
    let log = net.nodes[2].log();
    ensure!(
        log.contains("trying the next") && log.contains(&victim_id[..10]),
        "{log}"
    );
    Ok(())
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A small deterministic generator for the random sequences below.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[tokio::test]
async fn random_publish_kill_restart_sequences_converge() -> Result<()> {
    let seed: u64 = std::env::var("MAKI_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    eprintln!("seed {seed} (set MAKI_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let (net, site) = published(3).await?;
    let Network {
        tmp: _tmp,
        nodes,
        admin,
    } = net;
    let dirs: Vec<_> = nodes.iter().map(|n| n.dir.clone()).collect();
    let mut nodes: Vec<Option<NodeProc>> = nodes.into_iter().map(Some).collect();
    let mut published = 1;
    // What the last publish the CLI reported as done put at `/`.
    let mut acknowledged = b"v1".to_vec();
    for step in 0..10 {
        let live: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].is_some()).collect();
        let dead: Vec<usize> = (0..nodes.len()).filter(|i| nodes[*i].is_none()).collect();
        match rng.below(3) {
            0 | 1 if !live.is_empty() => {
                let at = live[rng.below(live.len())];
                let Some(node) = &nodes[at] else { continue };
                let body = format!("step {step}");
                std::fs::write(site.join("index.html"), &body)?;
                let cli = Maki::new(&admin.home, Some(&node.ticket));
                // A publish may meet a stale head (its node missed one):
                // that is a refusal, not a failure of the network.
                let out = cli.output(&[
                    "publish",
                    site.to_str().unwrap_or_default(),
                    "--site",
                    "r.test",
                ])?;
                let said = if out.status.success() {
                    "ok".to_owned()
                } else {
                    String::from_utf8_lossy(&out.stderr)
                        .trim()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .to_owned()
                };
                eprintln!("step {step}: publish at {at}: {said}");
                published += usize::from(out.status.success());
                if out.status.success() {
                    acknowledged = body.into_bytes();
                }
            }
            _ if live.len() > 1 && (dead.is_empty() || rng.below(2) == 0) => {
                let victim = live[rng.below(live.len())];
                eprintln!("step {step}: kill {victim}");
                if let Some(n) = nodes[victim].take() {
                    n.crash()?;
                }
            }
            _ if !dead.is_empty() => {
                let back = dead[rng.below(dead.len())];
                eprintln!("step {step}: restart {back}");
                nodes[back] = Some(NodeProc::start(&dirs[back])?);
            }
            _ => {}
        }
    }
    for (i, slot) in nodes.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(NodeProc::start(&dirs[i])?);
        }
    }
    let nodes: Vec<NodeProc> = nodes.into_iter().flatten().collect();
    eprintln!("{published} publishes went through");
    // Every node ends on the same head — the last acknowledged publish, not
    // merely any one: the same bytes at `/` and the same manifest in `maki
    // sites`.
    let heads = |nodes: &[NodeProc]| -> Result<Vec<String>> {
        nodes
            .iter()
            .map(|n| {
                let out = Maki::new(&admin.home, Some(&n.ticket)).ok(&["sites", "--json"])?;
                let v: serde_json::Value = serde_json::from_str(&out)?;
                Ok(v[0]["head"]["manifest"].to_string())
            })
            .collect()
    };
    let mut last = Vec::new();
    let converged = wait_for(Duration::from_secs(30), "every node on one head", || {
        let h = heads(&nodes);
        let bodies = nodes.iter().map(|n| n.http).collect::<Vec<_>>();
        let same = match &h {
            Ok(h) => h.windows(2).all(|w| w[0] == w[1]),
            Err(_) => false,
        };
        if let Ok(h) = h {
            last = h;
        }
        let acknowledged = acknowledged.clone();
        async move {
            if !same {
                return Ok(false);
            }
            let mut seen = Vec::new();
            for a in bodies {
                seen.push(body_of(a, "r.test", "/").await);
            }
            Ok(seen.iter().all(|b| b.as_deref() == Some(&acknowledged[..])))
        }
    })
    .await;
    if converged.is_err() {
        for (i, n) in nodes.iter().enumerate() {
            let log = n.log();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!(
                "--- node {i}:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    ensure!(
        converged.is_ok(),
        "did not converge on the last acknowledged publish {:?} (seed {seed}): heads {last:?}",
        String::from_utf8_lossy(&acknowledged)
    );
    Ok(())
}

#[tokio::test]
async fn a_forged_head_from_a_member_is_dropped() -> Result<()> {
    use maki_protocol::{Domain, Hash, Head, Record, RecordKey, SecretKey, Signed};
    let (mut net, _site) = published(3).await?;
    // Node 2 turns bad: a head for r.test signed by a key that may not
    // publish it appears in its records (written straight into its
    // database, as a compromised node could).
    let bad = net.nodes.remove(2);
    let data = bad.dir.clone();
    bad.stop()?;
    let head = Head {
        site: Domain::new("r.test")?,
        seq: 99,
        manifest: Hash::of(b"not a manifest"),
    };
    let forged = Record::Head(Signed::sign(&SecretKey::from_bytes(&[7; 32]), &head));
    {
        let db = redb::Database::open(data.join("state.redb"))?;
        let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");
        let tx = db.begin_write()?;
        tx.open_table(table)?.insert(
            postcard::to_stdvec(&RecordKey::Head(head.site.clone()))?.as_slice(),
            postcard::to_stdvec(&forged)?.as_slice(),
        )?;
        tx.commit()?;
    }
    // It pushes its records to everyone as it starts.
    net.nodes.push(NodeProc::start(&data)?);
    wait_for(CONVERGE, "the forged head to be dropped", || async {
        Ok(net.nodes[..2]
            .iter()
            .all(|n| n.log().contains("dropped a record from a peer")))
    })
    .await?;
    for i in 0..2 {
        let sites = net.admin_at(i).ok(&["sites", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&sites)?;
        ensure!(v[0]["head"]["seq"] == 1, "node {i}: {sites}");
        ensure!(body_of(net.nodes[i].http, "r.test", "/").await.as_deref() == Some(&b"v1"[..]));
    }
    let log = net.nodes[0].log();
    ensure!(
        log.contains("neither one of its publishers nor an admin"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_pinned_site_lives_only_in_its_regions() -> Result<()> {
    let mut net = network(1)?;
    for region in ["eu", "us"] {
        let ticket = net.admin.ok(&["invite"])?.trim().to_owned();
        let dir = net.tmp.path().join(region);
        net.nodes
            .push(NodeProc::join_with(&dir, &ticket, &["--region", region])?);
    }
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    std::fs::write(site.join("index.html"), b"pinned")?;
    net.admin.ok(&["site", "add", "r.test"])?;
    let out = net.admin.ok(&["pin", "r.test", "--region", "us"])?;
    ensure!(out.contains("held by nodes in us"), "{out}");
    // Published at the unpinned first node: --wait waits for "us" only.
    let out = publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    ensure!(out.contains("all 1 nodes serve"), "{out}");
    let us = net.nodes[2].http;
    ensure!(body_of(us, "r.test", "/").await.as_deref() == Some(&b"pinned"[..]));
    // The publishing node lets go once "us" holds it; "eu" never fetches.
    let first = net.nodes[0].http;
    wait_for(
        CONVERGE,
        "the first node to drop the pinned site",
        || async move { Ok(body_of(first, "r.test", "/").await.is_none()) },
    )
    .await?;
    ensure!(body_of(net.nodes[1].http, "r.test", "/").await.is_none());
    ensure!(net.admin.ok(&["sites"])?.contains("pinned to us"));

    // Unpinned: every node holds it again.
    let out = net.admin.ok(&["pin", "r.test"])?;
    ensure!(out.contains("held by every node"), "{out}");
    all_serve(&net, "r.test", "/", b"pinned").await?;
    Ok(())
}

#[tokio::test]
async fn a_node_without_the_http_role_holds_content_but_serves_no_visitors() -> Result<()> {
    let mut net = network(3)?;
    let quiet = net.nodes.remove(2);
    let dir = quiet.dir.clone();
    let id = quiet.id()?;
    quiet.stop()?;
    maki_e2e::set_config(&dir, "roles", "[]")?;
    let quiet = NodeProc::start(&dir)?;
    ensure!(quiet.http.port() == 0, "it must not listen for visitors");
    net.nodes.push(quiet);

    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    net.admin.ok(&["site", "add", "r.test"])?;
    let out = publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    // It holds the version like every node (others may fetch from it).
    ensure!(out.contains("all 3 nodes serve"), "{out}");
    let nodes: serde_json::Value = serde_json::from_str(&net.admin.ok(&["nodes", "--json"])?)?;
    let roles: Vec<String> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["id"] == serde_json::json!(id))
        .map(|n| n["roles"].to_string())
        .collect();
    ensure!(roles == vec!["[]".to_owned()], "{roles:?} in {nodes}");
    Ok(())
}

/// An admin may publish any site through the admin RPC; every node must take
/// that head too (it used to be served only where it was published, and
/// the nodes disagreed for good).
#[tokio::test]
async fn an_admins_publish_of_someone_elses_site_replicates() -> Result<()> {
    let net = network(2)?;
    let publisher = maki_protocol::SecretKey::from_bytes(&[5; 32]).public();
    net.admin.ok(&[
        "site",
        "add",
        "r.test",
        "--publisher",
        &publisher.to_string(),
    ])?;
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    std::fs::write(site.join("index.html"), b"by the admin")?;
    publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    all_serve(&net, "r.test", "/", b"by the admin").await?;
    Ok(())
}

/// With anti-entropy slowed to once an hour, gossip alone carries a
/// publish: the publishing node pushes by sync to 3 random members only,
/// so in a network of 5 at least one node can learn of it by gossip alone.
#[tokio::test]
async fn gossip_alone_carries_a_publish() -> Result<()> {
    let net = maki_e2e::network_with(5, &[("sync_interval", "\"1h\"")])?;
    // No rounds for an hour: members meet only through the syncs at start
    // and with each member learned of since (a joiner learns of all but
    // its issuer from its first sync).
    for i in 0..5 {
        let at = net.admin_at(i);
        wait_for(CONVERGE, "every node to know all members", || async {
            Ok(at.ok(&["nodes"])?.lines().count() == 5)
        })
        .await?;
    }
    net.admin.ok(&["site", "add", "r.test"])?;
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    std::fs::write(site.join("index.html"), b"by gossip")?;
    publish(&net.admin, &site, &["--wait", "--timeout", "30s"])?;
    all_serve(&net, "r.test", "/", b"by gossip").await?;
    Ok(())
}

/// The partition case of a domain changing hands: a member that was down
/// while the site was removed and added again for a new owner still holds
/// and serves the old owner's version, and offers its old head when it
/// comes back. The new incarnation's heads start above every old one, so
/// the old head is refused everywhere and the member drops what it served.
#[tokio::test]
async fn a_member_that_missed_a_domain_changing_hands_cannot_bring_the_old_site_back() -> Result<()>
{
    let (mut net, site) = published(2).await?;
    std::fs::write(site.join("index.html"), b"OLD OWNER")?;
    publish(&net.admin, &site, &["--wait", "--timeout", "20s"])?;
    all_serve(&net, "r.test", "/", b"OLD OWNER").await?;

    let away = net.nodes.remove(1);
    let dir = away.dir.clone();
    away.stop()?;
    net.admin.ok(&["site", "remove", "r.test"])?;
    let home = net.tmp.path().join("new-owner");
    std::fs::create_dir_all(&home)?;
    let owner = Maki::new(&home, Some(&net.nodes[0].ticket));
    let key = owner.key()?;
    net.admin
        .ok(&["site", "add", "r.test", "--publisher", &key])?;
    std::fs::write(site.join("index.html"), b"NEW OWNER")?;
    owner.ok(&[
        "publish",
        site.to_str().unwrap_or_default(),
        "--site",
        "r.test",
    ])?;

    // It comes back with the old site, the old head and the old version.
    net.nodes.push(NodeProc::start(&dir)?);
    all_serve(&net, "r.test", "/", b"NEW OWNER").await?;
    let old = format!("/.maki/blob/{}", blake3::hash(b"OLD OWNER").to_hex());
    for n in &net.nodes {
        let r = maki_e2e::http_get(n.http, "r.test", &old, &[]).await?;
        ensure!(
            r.status == 404,
            "the old owner's page is still served by hash"
        );
    }
    // A while later, still the new owner's everywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    all_serve(&net, "r.test", "/", b"NEW OWNER").await?;
    Ok(())
}
