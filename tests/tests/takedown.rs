//! What was never published, or was taken down, is not public and does not
//! stay on disk: `/.maki/blob/<hash>` serves only what a served version
//! references, and garbage collection gives the disk back.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Result, ensure};
use maki_e2e::{Maki, NodeProc, OneNode, fresh_network, http_get, wait_for};
use makiatto::{content::Content, node::blobs_dir};

const SITE: &str = "down.test";

fn blob_path(data: &[u8]) -> String {
    format!("/.maki/blob/{}", blake3::hash(data).to_hex())
}

async fn status(node: &NodeProc, path: &str) -> Result<u16> {
    Ok(http_get(node.http, SITE, path, &[]).await?.status)
}

fn disk(node: &NodeProc) -> u64 {
    Content::disk_usage(&blobs_dir(&node.dir))
}

/// A node with a fast collector, and `SITE` added.
fn node_with_gc() -> Result<OneNode> {
    let fresh = fresh_network()?;
    maki_e2e::set_config(&fresh.data, "gc_interval", "\"1s\"")?;
    let node = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&node.ticket));
    admin.ok(&["site", "add", SITE])?;
    Ok(OneNode {
        tmp: fresh.tmp,
        node,
        admin,
    })
}

/// Starts `maki publish DIR` and waits until the node's store grew by
/// 4 MiB over `base`; the caller kills the client (or the node) then.
async fn publish_until_some_landed(
    net: &OneNode,
    dir: &str,
    base: u64,
) -> Result<(std::process::Child, Result<Duration>)> {
    let child = net
        .admin
        .command(&["publish", dir, "--site", SITE])?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let landed = wait_for(Duration::from_secs(30), "some blobs to land", || async {
        Ok(disk(&net.node) >= base + (4 << 20))
    })
    .await;
    Ok((child, landed))
}

/// Files of `n` × 1 MiB seeded by `seed`.
fn write_files(dir: &Path, seed: &str, n: u32) -> Result<Vec<Vec<u8>>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for i in 0..n {
        let mut data = vec![0u8; 1 << 20];
        blake3::Hasher::new()
            .update(seed.as_bytes())
            .update(&i.to_le_bytes())
            .finalize_xof()
            .fill(&mut data);
        std::fs::write(dir.join(format!("{i}.bin")), &data)?;
        out.push(data);
    }
    Ok(out)
}

#[tokio::test]
async fn removed_files_and_sites_stop_being_served_by_hash_at_once() -> Result<()> {
    let net = node_with_gc()?;
    let site = net.tmp.path().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), b"home")?;
    std::fs::write(site.join("secret.html"), b"published by mistake")?;
    let dir = site.to_string_lossy().to_string();
    net.admin.ok(&["publish", &dir, "--site", SITE])?;
    let secret = blob_path(b"published by mistake");
    ensure!(status(&net.node, &secret).await? == 200);

    // The manifest names the version; it is not a file of the site.
    let sites = net.admin.ok(&["sites", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&sites)?;
    let manifest = v[0]["head"]["manifest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(manifest.len() == 64, "{sites}");
    ensure!(status(&net.node, &format!("/.maki/blob/{manifest}")).await? == 404);

    // Takedown by republishing without the file: gone at once, though the
    // old version is kept for rollback.
    std::fs::remove_file(site.join("secret.html"))?;
    net.admin.ok(&["publish", &dir, "--site", SITE])?;
    ensure!(status(&net.node, &secret).await? == 404);
    ensure!(status(&net.node, &blob_path(b"home")).await? == 200);
    ensure!(status(&net.node, "/secret.html").await? == 404);
    // A rollback brings it back, as it should.
    net.admin.ok(&["rollback", SITE])?;
    ensure!(status(&net.node, &secret).await? == 200);
    net.admin.ok(&["rollback", SITE, "--to", "2"])?;
    ensure!(status(&net.node, &secret).await? == 404);

    // Takedown of the whole site, also after a restart.
    net.admin.ok(&["site", "remove", SITE])?;
    ensure!(status(&net.node, &blob_path(b"home")).await? == 404);
    let data = net.node.dir.clone();
    net.node.stop()?;
    let node = NodeProc::start(&data)?;
    ensure!(status(&node, &blob_path(b"home")).await? == 404);
    ensure!(status(&node, &secret).await? == 404);
    Ok(())
}

#[tokio::test]
async fn pruned_versions_and_removed_sites_give_their_disk_back() -> Result<()> {
    let net = node_with_gc()?;
    let empty = disk(&net.node);
    let site = net.tmp.path().join("site");
    write_files(&site, "one", 8)?;
    let dir = site.to_string_lossy().to_string();
    net.admin.ok(&["publish", &dir, "--site", SITE])?;
    let one = disk(&net.node);
    ensure!(one >= empty + (8 << 20), "{empty} → {one}");

    // Two more versions with other files; keep_versions = 10 keeps all.
    for seed in ["two", "three"] {
        std::fs::remove_dir_all(&site)?;
        write_files(&site, seed, 8)?;
        net.admin.ok(&["publish", &dir, "--site", SITE])?;
    }
    let three = disk(&net.node);
    ensure!(three >= empty + (24 << 20), "{three}");

    // Removing the site frees everything within a few collections.
    net.admin.ok(&["site", "remove", SITE])?;
    wait_for(
        Duration::from_secs(20),
        "the disk to be given back",
        || async { Ok(disk(&net.node) < empty + (1 << 20)) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_abandoned_upload_is_never_readable_and_is_collected() -> Result<()> {
    let net = node_with_gc()?;
    let site = net.tmp.path().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), b"v1")?;
    let dir = site.to_string_lossy().to_string();
    net.admin.ok(&["publish", &dir, "--site", SITE])?;
    let base = disk(&net.node);

    // A draft of 40 files of 1 MiB: kill the client once some landed.
    let drafts = write_files(&site.join("draft"), "draft", 40)?;
    let (mut child, landed) = publish_until_some_landed(&net, &dir, base).await?;
    child.kill().ok();
    child.wait()?;
    landed?;
    // Not one draft file is readable, by hash or by path.
    for d in &drafts {
        ensure!(status(&net.node, &blob_path(d)).await? == 404);
    }
    ensure!(status(&net.node, "/draft/0.bin").await? == 404);

    // The node notices the dead client (QUIC idle timeout) and collects.
    wait_for(
        Duration::from_secs(40),
        "the draft to be collected",
        || async { Ok(disk(&net.node) < base + (1 << 20)) },
    )
    .await?;
    Ok(())
}

/// A crash mid-upload leaves blobs and a temporary tag; the restart sweeps
/// the tag and the collector takes the blobs.
#[tokio::test]
async fn blobs_of_a_publish_interrupted_by_a_crash_are_collected_after_restart() -> Result<()> {
    let net = node_with_gc()?;
    let base = disk(&net.node);
    let site = net.tmp.path().join("site");
    write_files(&site, "crash", 40)?;
    let dir = site.to_string_lossy().to_string();
    let (mut child, landed) = publish_until_some_landed(&net, &dir, base).await?;
    let data = net.node.dir.clone();
    net.node.crash()?;
    child.kill().ok();
    child.wait()?;
    landed?;
    let node = NodeProc::start(&data)?;
    wait_for(
        Duration::from_secs(20),
        "the leftovers to be collected",
        || async { Ok(disk(&node) < base + (1 << 20)) },
    )
    .await?;
    Ok(())
}

/// One key's uploads in flight are capped: a publish that would exceed the
/// cap is refused before a byte is sent.
#[tokio::test]
async fn a_keys_uploads_in_flight_are_capped() -> Result<()> {
    let fresh = fresh_network()?;
    maki_e2e::set_config(&fresh.data, "max_upload_bytes", "3000000")?;
    let node = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&node.ticket));
    admin.ok(&["site", "add", SITE])?;
    let site = fresh.tmp.path().join("site");
    write_files(&site, "big", 4)?;
    let err = admin.fails(&["publish", &site.to_string_lossy(), "--site", SITE])?;
    ensure!(err.contains("this node allows 3000000 at once"), "{err}");
    let before = Content::disk_usage(&blobs_dir(&node.dir));
    ensure!(before < 1 << 20, "nothing was uploaded: {before}");
    // Within the cap it goes through.
    std::fs::remove_file(site.join("3.bin"))?;
    std::fs::remove_file(site.join("2.bin"))?;
    admin.ok(&["publish", &site.to_string_lossy(), "--site", SITE])?;
    Ok(())
}

/// A removed site added again (say, for a new owner of the domain) starts
/// empty: the old owner's content is not served, not listed, not fetched.
#[tokio::test]
async fn a_site_added_again_after_removal_starts_empty() -> Result<()> {
    let net = node_with_gc()?;
    let site = net.tmp.path().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), b"OLD OWNER SECRET PAGE")?;
    let dir = site.to_string_lossy().to_string();
    net.admin.ok(&["publish", &dir, "--site", SITE])?;
    net.admin.ok(&["site", "remove", SITE])?;

    let home = net.tmp.path().join("new-owner");
    std::fs::create_dir_all(&home)?;
    let owner = Maki::new(&home, Some(&net.node.ticket));
    let key = owner.key()?;
    net.admin.ok(&["site", "add", SITE, "--publisher", &key])?;
    ensure!(status(&net.node, "/").await? == 404);
    ensure!(status(&net.node, &blob_path(b"OLD OWNER SECRET PAGE")).await? == 404);
    let sites = owner.ok(&["sites", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&sites)?;
    ensure!(
        v[0]["head"].is_null(),
        "the new owner sees an old head: {sites}"
    );

    // The new owner publishes from scratch, and only that is served, also
    // after a restart (and nothing keeps trying to fetch the old version).
    std::fs::write(site.join("index.html"), b"new owner")?;
    owner.ok(&["publish", &dir, "--site", SITE])?;
    let r = http_get(net.node.http, SITE, "/", &[]).await?;
    ensure!(r.status == 200 && &r.body[..] == b"new owner");
    let data = net.node.dir.clone();
    net.node.stop()?;
    let node = NodeProc::start(&data)?;
    let r = http_get(node.http, SITE, "/", &[]).await?;
    ensure!(r.status == 200 && &r.body[..] == b"new owner");
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(!node.log().contains("fetch failed"), "{}", node.log());
    Ok(())
}
