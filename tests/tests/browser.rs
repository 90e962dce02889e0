//! A real browser (headless Chromium) against a node: compression negotiated
//! by the browser itself, redirects, clean URLs, folder indexes, the 404 page.
//! Needs Chromium, so it is ignored by a plain `cargo test` (the reason is
//! printed); `.ci/run` installs Chromium and runs it with `--include-ignored`.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, ensure};
use maki_e2e::{OneNode, example_site, one_node};

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The DOM Chromium builds for `url`, after redirects.
fn dump_dom(browser: &PathBuf, profile: &std::path::Path, url: &str) -> Result<String> {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()?;
    ensure!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
#[ignore = "needs Chromium (apt-get install chromium); .ci/run installs it and runs this"]
fn chromium_renders_the_example_site() -> Result<()> {
    let browser = chromium()
        .ok_or_else(|| anyhow::anyhow!("Chromium is not installed (apt-get install chromium)"))?;
    let OneNode {
        tmp,
        node,
        admin: maki,
    } = one_node()?;
    // *.localhost resolves to loopback in Chromium without any DNS.
    let site = "example.localhost";
    maki.ok(&["site", "add", site])?;
    maki.ok(&["publish", &example_site().to_string_lossy(), "--site", site])?;
    let base = format!("http://{site}:{}", node.http.port());
    let profile = tmp.path().join("chromium");

    let dom = dump_dom(&browser, &profile, &format!("{base}/"))?;
    ensure!(dom.contains("Hello from the edge"), "{dom}");
    // Through the _redirects rule, then a clean URL.
    let dom = dump_dom(&browser, &profile, &format!("{base}/old-blog/first-post"))?;
    ensure!(dom.contains("Versions switch atomically"), "{dom}");
    // /docs → /docs/ → docs/index.html
    let dom = dump_dom(&browser, &profile, &format!("{base}/docs"))?;
    ensure!(dom.contains("<h1>Documentation</h1>"), "{dom}");
    let dom = dump_dom(&browser, &profile, &format!("{base}/nowhere"))?;
    ensure!(dom.contains("There is nothing at this address"), "{dom}");
    Ok(())
}
