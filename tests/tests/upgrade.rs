//! A rolling upgrade: nodes of a newer release (`makiatto-next`, built
//! with the test-only `next-format` feature: a node record of a newer format
//! and a record kind 999) in one network with today's nodes. Today's
//! nodes carry what they cannot read; the newer nodes read it, even when
//! it reached them only through today's; both keep syncing; and a node
//! upgraded in place reads what it carried.

use std::{path::Path, time::Duration};

use anyhow::{Result, ensure};
use maki_e2e::{
    Maki, NodeProc, body_of, copy_dir, example_site, network_with, next_bin, set_config, wait_for,
};

const CONVERGE: Duration = Duration::from_secs(30);
const SETTINGS: [(&str, &str); 1] = [("sync_interval", "\"1s\"")];

/// A newer node in `dir` from an invite of `admin`'s node, with
/// [`SETTINGS`], running.
fn join_next(next: &Path, admin: &Maki, dir: &Path) -> Result<NodeProc> {
    let ticket = admin.ok(&["invite"])?.trim().to_owned();
    NodeProc::join_as(next, dir, &ticket, &[])?.stop()?;
    for (key, value) in SETTINGS {
        set_config(dir, key, value)?;
    }
    NodeProc::start_as(next, dir)
}

async fn log_says(node: &NodeProc, what: &str, parts: &[&str]) -> Result<()> {
    wait_for(CONVERGE, what, || async {
        let log = node.log();
        Ok(log.lines().any(|l| parts.iter().all(|p| l.contains(p))))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs makiatto-next: cargo build -p makiatto --features next-format --bin makiatto-next (.ci/run builds it)"]
async fn a_newer_release_s_records_cross_today_s_nodes() -> Result<()> {
    let next = next_bin()?;
    // Today's node founds the network.
    let mut net = network_with(1, &SETTINGS)?;
    let old_dir = net.nodes[0].dir.clone();

    // A newer node that will be away while another one speaks.
    let later = join_next(&next, &net.admin, &net.tmp.path().join("later"))?;
    later.pause()?;

    // A newer node joins: its newer-format node record and its note (kind 999)
    // reach today's node, which takes the first by the fields it knows
    // and carries the second unread.
    let speaker = join_next(&next, &net.admin, &net.tmp.path().join("speaker"))?;
    let speaker_id = speaker.id()?;
    let old = &net.nodes[0];
    log_says(
        old,
        "today's node to carry the unknown kind",
        &[
            "carrying records of a kind this build cannot read",
            "kind=999",
        ],
    )
    .await?;
    let admin = net.admin.clone();
    wait_for(
        CONVERGE,
        "today's node to list the newer member",
        || async { Ok(admin.ok(&["nodes"])?.contains(&speaker_id)) },
    )
    .await?;
    ensure!(
        !old.log().contains("dropped a record from a peer"),
        "today's node refused a record of the newer one:\n{}",
        old.log()
    );

    // The speaker leaves; the one that was away comes back and can hear
    // it only through today's node.
    speaker.stop()?;
    later.resume()?;
    let speaker_field = format!("node={speaker_id}");
    let next_format = format!("format={}", maki_protocol::NODE_FORMAT + 1);
    log_says(
        &later,
        "the note to reach the newer node through today's",
        &["read a note record", &speaker_field],
    )
    .await?;
    log_says(
        &later,
        "the newer-format node record to arrive whole",
        &["read a node record's note", &speaker_field, &next_format],
    )
    .await?;

    // Both releases keep syncing, both ways: a site added and published
    // at today's node is served by the newer one, and a version published
    // at the newer node is served by today's.
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    let site_arg = site.to_str().unwrap_or_default();
    net.admin.ok(&["site", "add", "mixed.test"])?;
    net.admin
        .ok(&["publish", site_arg, "--site", "mixed.test"])?;
    let index = std::fs::read(site.join("index.html"))?;
    let at_later = later.http;
    wait_for(
        CONVERGE,
        "the newer node to serve today's publish",
        || async { Ok(body_of(at_later, "mixed.test", "/").await.as_deref() == Some(&index[..])) },
    )
    .await?;
    std::fs::write(site.join("index.html"), b"<h1>from the newer node</h1>\n")?;
    Maki::new(&net.admin.home, Some(&later.ticket)).ok(&[
        "publish",
        site_arg,
        "--site",
        "mixed.test",
    ])?;
    let at_old = net.nodes[0].http;
    wait_for(
        CONVERGE,
        "today's node to serve the newer node's publish",
        || async {
            Ok(body_of(at_old, "mixed.test", "/").await.as_deref()
                == Some(&b"<h1>from the newer node</h1>\n"[..]))
        },
    )
    .await?;

    // Upgraded in place, today's node reads the records it carried.
    net.nodes.remove(0).stop()?;
    let upgraded = NodeProc::start_as(&next, &old_dir)?;
    log_says(
        &upgraded,
        "the upgraded node to read the note it carried",
        &["read a note record", &speaker_field],
    )
    .await?;
    let at_upgraded = upgraded.http;
    wait_for(CONVERGE, "the upgraded node to serve the site", || async {
        Ok(body_of(at_upgraded, "mixed.test", "/").await.as_deref()
            == Some(&b"<h1>from the newer node</h1>\n"[..]))
    })
    .await?;
    Ok(())
}
