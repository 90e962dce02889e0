//! The limits a node enforces: versions kept, site size, and the bounds
//! its configuration accepts.

use anyhow::{Result, ensure};
use maki_e2e::{Maki, NodeProc, bins, fresh_network};

const SITE: &str = "limits.test";

/// `line` (`key = value`) into the node's config.
fn set(data: &std::path::Path, key: &str, line: &str) -> Result<()> {
    let value = line.split_once('=').map_or("", |(_, v)| v.trim());
    maki_e2e::set_config(data, key, value)
}

#[tokio::test]
async fn only_keep_versions_are_kept_and_a_pruned_one_cannot_be_rolled_back_to() -> Result<()> {
    let fresh = fresh_network()?;
    set(&fresh.data, "keep_versions", "keep_versions = 2")?;
    let node = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&node.ticket));
    admin.ok(&["site", "add", SITE])?;
    let site = fresh.tmp.path().join("site");
    std::fs::create_dir_all(&site)?;
    for v in 1..=3 {
        std::fs::write(site.join("index.html"), format!("v{v}"))?;
        admin.ok(&["publish", &site.to_string_lossy(), "--site", SITE])?;
    }
    let versions = admin.ok(&["versions", SITE])?;
    ensure!(versions.lines().count() == 2, "{versions}");
    let err = admin.fails(&["rollback", SITE, "--to", "1"])?;
    ensure!(
        err.contains("version 1 of limits.test is not kept") && !err.contains("malformed"),
        "{err}"
    );
    admin.ok(&["rollback", SITE, "--to", "2"])?;
    let body = maki_e2e::body_of(node.http, SITE, "/").await;
    ensure!(body.as_deref() == Some(&b"v2"[..]), "{body:?}");
    Ok(())
}

#[tokio::test]
async fn a_site_over_max_site_bytes_is_refused() -> Result<()> {
    let fresh = fresh_network()?;
    set(&fresh.data, "max_site_bytes", "max_site_bytes = 1000")?;
    let node = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&node.ticket));
    admin.ok(&["site", "add", SITE])?;
    let site = fresh.tmp.path().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("big.bin"), [0u8; 1001])?;
    let err = admin.fails(&["publish", &site.to_string_lossy(), "--site", SITE])?;
    ensure!(
        err.contains("the site is 1001 bytes; this node accepts at most 1000"),
        "{err}"
    );
    std::fs::write(site.join("big.bin"), [0u8; 1000])?;
    admin.ok(&["publish", &site.to_string_lossy(), "--site", SITE])?;
    Ok(())
}

/// Every bound `makiatto validate` enforces, each refused by name.
#[test]
fn config_bounds_are_refused_by_name() -> Result<()> {
    let fresh = fresh_network()?;
    let cases = [
        (
            "keep_versions",
            "keep_versions = 0",
            "keep_versions must be at least 1",
        ),
        (
            "http_header_timeout",
            "http_header_timeout = \"100ms\"",
            "http_header_timeout must be at least 500ms",
        ),
        (
            "http_send_timeout",
            "http_send_timeout = \"1ms\"",
            "http_send_timeout must be at least 500ms",
        ),
        (
            "sync_interval",
            "sync_interval = \"10ms\"",
            "sync_interval must be at least 100ms",
        ),
        (
            "gc_interval",
            "gc_interval = \"10ms\"",
            "gc_interval must be at least 1s",
        ),
        (
            "sync_timeout",
            "sync_timeout = \"10ms\"",
            "sync_timeout must be at least 1s",
        ),
        (
            "max_upload_bytes",
            "max_upload_bytes = 0",
            "max_upload_bytes must be at least 1",
        ),
        ("roles", "roles = [\"smtp\"]", "unknown role \"smtp\""),
        (
            "http",
            "http = \"not an address\"",
            "invalid socket address",
        ),
        ("keep_versions", "keep_versions = -1", "invalid value"),
    ];
    let original = std::fs::read_to_string(fresh.data.join("makiatto.toml"))?;
    for (key, line, message) in cases {
        std::fs::write(fresh.data.join("makiatto.toml"), &original)?;
        set(&fresh.data, key, line)?;
        let out = std::process::Command::new(bins()?.makiatto)
            .args(["validate", "--data-dir"])
            .arg(&fresh.data)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{line} was accepted");
        ensure!(err.contains(message), "{line}: {err}");
    }
    // A location outside the globe, and a typo'd key.
    std::fs::write(
        fresh.data.join("makiatto.toml"),
        format!("{original}\nlocation = [91.0, 0.0]\n"),
    )?;
    let out = std::process::Command::new(bins()?.makiatto)
        .args(["validate", "--data-dir"])
        .arg(&fresh.data)
        .output()?;
    ensure!(String::from_utf8_lossy(&out.stderr).contains("is not [latitude, longitude]"));
    std::fs::write(
        fresh.data.join("makiatto.toml"),
        format!("{original}\nkeep_version = 3\n"),
    )?;
    let out = std::process::Command::new(bins()?.makiatto)
        .args(["validate", "--data-dir"])
        .arg(&fresh.data)
        .output()?;
    ensure!(String::from_utf8_lossy(&out.stderr).contains("keep_version"));
    Ok(())
}
