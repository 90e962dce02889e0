//! Publishing to one node and serving over HTTP, with the real binaries.

use std::{io::Read, path::Path};

use anyhow::{Context, Result, ensure};
use maki_e2e::{Maki, NodeProc, OneNode, example_site, http_get, one_site, request};

const SITE: &str = "example.test";

/// A node with one site, an admin CLI and a private copy of the example site.
struct Setup {
    _tmp: tempfile::TempDir,
    node: NodeProc,
    maki: Maki,
    site_dir: std::path::PathBuf,
}

fn setup() -> Result<Setup> {
    let (OneNode { tmp, node, admin }, site_dir) = one_site(SITE)?;
    Ok(Setup {
        _tmp: tmp,
        node,
        maki: admin,
        site_dir,
    })
}

fn publish(s: &Setup) -> Result<String> {
    s.maki
        .ok(&["publish", &s.site_dir.to_string_lossy(), "--site", SITE])
}

/// "uploaded N blobs" from publish's summary.
fn uploaded_blobs(out: &str) -> Result<u64> {
    let rest = out
        .split("uploaded ")
        .nth(1)
        .context("no 'uploaded' in output")?;
    Ok(rest
        .split_whitespace()
        .next()
        .context("no count")?
        .parse()?)
}

fn files(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

#[tokio::test]
async fn publish_then_every_file_is_served_byte_for_byte() -> Result<()> {
    let s = setup()?;
    let out = publish(&s)?;
    ensure!(out.contains("published version 1"), "{out}");
    let mut served = 0;
    for (rel, bytes) in files(&s.site_dir)? {
        let r = http_get(s.node.http, SITE, &format!("/{rel}"), &[]).await?;
        if rel == "_headers" || rel == "_redirects" {
            ensure!(
                r.status == 404,
                "{rel} must not be served, got {}",
                r.status
            );
            continue;
        }
        ensure!(r.status == 200, "{rel}: {}", r.status);
        ensure!(r.body == bytes, "{rel}: body differs");
        let etag = format!("\"{}\"", blake3::hash(&bytes).to_hex());
        ensure!(
            r.header("etag") == Some(etag.as_str()),
            "{rel}: etag {:?}",
            r.header("etag")
        );
        served += 1;
    }
    ensure!(served >= 8);
    // HTTP/2 (h2c) serves the same bytes.
    let r = request(s.node.http, "GET", SITE, "/about", &[], true).await?;
    ensure!(r.status == 200 && r.body == std::fs::read(s.site_dir.join("about.html"))?);
    Ok(())
}

#[tokio::test]
async fn republish_uploads_only_what_changed_and_rollback_restores() -> Result<()> {
    let s = setup()?;
    let first = publish(&s)?;
    ensure!(uploaded_blobs(&first)? > 10, "{first}");

    let again = publish(&s)?;
    ensure!(again.contains("files unchanged since version 1"), "{again}");

    let css = s.site_dir.join("css/style.css");
    let old_css = std::fs::read(&css)?;
    let mut new_css = old_css.clone();
    new_css.extend_from_slice(b"\nmain { padding: 1rem; }\n");
    std::fs::write(&css, &new_css)?;
    let second = publish(&s)?;
    ensure!(second.contains("published version 2"), "{second}");
    // The file plus its br and gzip variants, nothing else.
    ensure!(uploaded_blobs(&second)? == 3, "{second}");
    let r = http_get(s.node.http, SITE, "/css/style.css", &[]).await?;
    ensure!(r.body == new_css);

    let versions = s.maki.ok(&["versions", SITE])?;
    ensure!(versions.lines().count() == 2, "{versions}");
    ensure!(
        versions
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("*     2")),
        "{versions}"
    );

    let rb = s.maki.ok(&["rollback", SITE])?;
    ensure!(rb.contains("now serving version 1 (head 3)"), "{rb}");
    let r = http_get(s.node.http, SITE, "/css/style.css", &[]).await?;
    ensure!(r.body == old_css, "rollback did not restore the old file");

    // After a rollback the next publish builds on the rolled-back head.
    let third = publish(&s)?;
    ensure!(third.contains("published version 3"), "{third}");
    let rb = s.maki.ok(&["rollback", SITE, "--to", "2"])?;
    ensure!(rb.contains("now serving version 2"), "{rb}");
    let err = s.maki.fails(&["rollback", SITE, "--to", "99"])?;
    ensure!(
        err.contains("version 99") && err.contains("not kept"),
        "{err}"
    );

    // A restart serves the same head.
    let data = s.node.dir.clone();
    s.node.stop()?;
    let node = NodeProc::start(&data)?;
    let r = http_get(node.http, SITE, "/css/style.css", &[]).await?;
    ensure!(r.body == new_css, "restart lost the head");
    Ok(())
}

#[tokio::test]
async fn http_semantics() -> Result<()> {
    let s = setup()?;
    publish(&s)?;
    let a = s.node.http;
    let index = std::fs::read(s.site_dir.join("index.html"))?;

    // Conditional GET.
    let r = http_get(a, SITE, "/", &[]).await?;
    let etag = r.header("etag").context("etag")?.to_owned();
    ensure!(r.header("cache-control") == Some("public, max-age=0, must-revalidate"));
    ensure!(r.header("content-type") == Some("text/html; charset=utf-8"));
    let r = http_get(a, SITE, "/", &[("if-none-match", &etag)]).await?;
    ensure!(r.status == 304 && r.body.is_empty(), "{}", r.status);
    let r = http_get(a, SITE, "/", &[("if-none-match", "\"nope\"")]).await?;
    ensure!(r.status == 200);

    // Range.
    let r = http_get(a, SITE, "/", &[("range", "bytes=0-9")]).await?;
    ensure!(r.status == 206 && r.body[..] == index[..10]);
    ensure!(r.header("content-range") == Some(&*format!("bytes 0-9/{}", index.len())));
    let r = http_get(a, SITE, "/", &[("range", "bytes=-5")]).await?;
    ensure!(r.status == 206 && r.body[..] == index[index.len() - 5..]);
    let r = http_get(a, SITE, "/", &[("range", "bytes=999999-")]).await?;
    ensure!(r.status == 416, "{}", r.status);
    ensure!(r.header("content-range") == Some(&*format!("bytes */{}", index.len())));

    // HEAD: headers, no body.
    let r = request(a, "HEAD", SITE, "/", &[], false).await?;
    ensure!(r.status == 200 && r.body.is_empty());
    ensure!(r.header("content-length") == Some(&*index.len().to_string()));
    let r = request(a, "POST", SITE, "/", &[], false).await?;
    ensure!(r.status == 405 && r.header("allow") == Some("GET, HEAD"));

    // 404 with the site's page; unknown host; folders; clean URLs.
    let r = http_get(a, SITE, "/nowhere", &[]).await?;
    ensure!(r.status == 404 && r.body == std::fs::read(s.site_dir.join("404.html"))?);
    let r = http_get(a, "unknown.test", "/", &[]).await?;
    ensure!(r.status == 404 && r.header("content-type") == Some("text/plain; charset=utf-8"));
    let r = http_get(a, "EXAMPLE.test:8080", "/", &[]).await?;
    ensure!(r.status == 200, "host match must ignore case and port");
    let r = http_get(a, SITE, "/docs", &[]).await?;
    ensure!(r.status == 301 && r.header("location") == Some("/docs/"));
    let r = http_get(a, SITE, "/docs/", &[]).await?;
    ensure!(r.body == std::fs::read(s.site_dir.join("docs/index.html"))?);
    let r = http_get(a, SITE, "/about", &[]).await?;
    ensure!(r.status == 200 && r.body == std::fs::read(s.site_dir.join("about.html"))?);

    // _redirects and _headers.
    let r = http_get(a, SITE, "/old-blog/first-post", &[]).await?;
    ensure!(r.status == 301 && r.header("location") == Some("/blog/first-post"));
    let r = http_get(a, SITE, "/home?utm=x", &[]).await?;
    ensure!(r.status == 302 && r.header("location") == Some("/?utm=x"));
    let r = http_get(a, SITE, "/css/style.css", &[]).await?;
    ensure!(r.header("cache-control") == Some("public, max-age=31536000, immutable"));
    ensure!(r.header("x-frame-options") == Some("DENY"));

    // Compression: br preferred, gzip when asked, identity otherwise.
    let css = std::fs::read(s.site_dir.join("css/style.css"))?;
    let r = http_get(
        a,
        SITE,
        "/css/style.css",
        &[("accept-encoding", "gzip, br")],
    )
    .await?;
    ensure!(
        r.header("content-encoding") == Some("br") && r.header("vary") == Some("Accept-Encoding")
    );
    let mut plain = Vec::new();
    brotli::Decompressor::new(&r.body[..], 4096).read_to_end(&mut plain)?;
    ensure!(plain == css);
    ensure!(r.header("etag") == Some(&*format!("\"{}\"", blake3::hash(&r.body).to_hex())));
    let r = http_get(
        a,
        SITE,
        "/css/style.css",
        &[("accept-encoding", "gzip, br;q=0")],
    )
    .await?;
    ensure!(r.header("content-encoding") == Some("gzip"));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&r.body[..]).read_to_end(&mut plain)?;
    ensure!(plain == css);
    let r = http_get(a, SITE, "/img/favicon.png", &[("accept-encoding", "br")]).await?;
    ensure!(
        r.header("content-encoding").is_none(),
        "PNG must not be recompressed"
    );

    // Blobs by hash, on any host.
    let hash = blake3::hash(&index).to_hex().to_string();
    let r = http_get(a, "anything.test", &format!("/.maki/blob/{hash}"), &[]).await?;
    ensure!(r.status == 200 && r.body == index);
    ensure!(r.header("content-type") == Some("application/octet-stream"));
    ensure!(r.header("x-content-type-options") == Some("nosniff"));
    ensure!(r.header("content-security-policy") == Some("sandbox"));
    ensure!(r.header("cache-control") == Some("public, max-age=31536000, immutable"));
    let r = http_get(a, SITE, &format!("/.maki/blob/{}", "0".repeat(64)), &[]).await?;
    ensure!(r.status == 404);
    let r = http_get(a, SITE, "/.maki/blob/xyz", &[]).await?;
    ensure!(r.status == 400);

    // Malformed paths are refused, not resolved.
    let r = http_get(a, SITE, "/%ff%fe", &[]).await?;
    ensure!(r.status == 400);
    let r = http_get(a, SITE, "/..%2f..%2fetc%2fpasswd", &[]).await?;
    ensure!(r.status == 404);
    Ok(())
}

#[tokio::test]
async fn dry_run_prints_the_manifest_without_a_node() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let maki = Maki::new(tmp.path(), None);
    let site = example_site();
    let out = maki.ok(&[
        "publish",
        &site.to_string_lossy(),
        "--site",
        SITE,
        "--dry-run",
    ])?;
    ensure!(
        out.contains("index.html") && out.contains("(unsigned, dry run)"),
        "{out}"
    );
    ensure!(!out.contains("_redirects"), "{out}");
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad)?;
    std::fs::write(bad.join("_redirects"), "/a /b 301\n/c\n")?;
    let err = maki.fails(&[
        "publish",
        &bad.to_string_lossy(),
        "--site",
        SITE,
        "--dry-run",
    ])?;
    ensure!(err.contains("_redirects:2:"), "{err}");
    Ok(())
}

#[tokio::test]
async fn large_files_stream_and_removed_sites_stop_serving() -> Result<()> {
    let s = setup()?;
    // Larger than memory_cache_max_blob (4 MiB): served by streaming.
    let mut big = vec![0u8; 9 << 20];
    blake3::Hasher::new()
        .update(b"big")
        .finalize_xof()
        .fill(&mut big);
    std::fs::write(s.site_dir.join("big.bin"), &big)?;
    publish(&s)?;
    let r = http_get(s.node.http, SITE, "/big.bin", &[]).await?;
    ensure!(r.status == 200 && r.body == big, "streamed body differs");
    ensure!(r.header("content-type") == Some("application/octet-stream"));
    let r = http_get(
        s.node.http,
        SITE,
        "/big.bin",
        &[("range", "bytes=5000000-5000099")],
    )
    .await?;
    ensure!(r.status == 206 && r.body[..] == big[5_000_000..5_000_100]);
    let r = request(s.node.http, "GET", SITE, "/big.bin", &[], true).await?;
    ensure!(r.body == big, "HTTP/2 streamed body differs");

    let out = s.maki.ok(&["site", "remove", SITE])?;
    ensure!(out.contains("removed example.test"), "{out}");
    let r = http_get(s.node.http, SITE, "/", &[]).await?;
    ensure!(r.status == 404, "a removed site must stop serving");
    ensure!(s.maki.ok(&["sites"])?.trim().is_empty());
    ensure!(s.maki.fails(&["versions", SITE])?.contains("unknown site"));
    Ok(())
}

#[tokio::test]
async fn maki_toml_unicode_paths_and_well_known() -> Result<()> {
    let s = setup()?;
    // A file with a decomposed (NFD) name on disk; requested in NFC and NFD.
    let nfd = "cafe\u{301}.html";
    std::fs::write(s.site_dir.join(nfd), "<p>café</p>")?;
    std::fs::create_dir_all(s.site_dir.join(".well-known"))?;
    std::fs::write(
        s.site_dir.join(".well-known/security.txt"),
        "Contact: mailto:x@example.test\n",
    )?;
    std::fs::write(s.site_dir.join(".env"), "SECRET=1")?;

    // Publish through maki.toml instead of flags.
    let project = s._tmp.path().join("project");
    std::fs::create_dir_all(&project)?;
    let mut maki = s.maki.clone();
    maki.cwd = project.clone();
    maki.node = None;
    maki.ok(&[
        "init",
        "--site",
        SITE,
        "--dir",
        &s.site_dir.to_string_lossy(),
        "--node",
        &s.node.ticket,
    ])?;
    let out = maki.ok(&["publish"])?;
    ensure!(out.contains("published version 1"), "{out}");

    for path in ["/caf%C3%A9.html", "/cafe%CC%81.html", "/caf%C3%A9"] {
        let r = http_get(s.node.http, SITE, path, &[]).await?;
        ensure!(
            r.status == 200 && &r.body[..] == "<p>café</p>".as_bytes(),
            "{path}: {}",
            r.status
        );
    }
    let r = http_get(s.node.http, SITE, "/.well-known/security.txt", &[]).await?;
    ensure!(r.status == 200 && r.header("content-type") == Some("text/plain; charset=utf-8"));
    let r = http_get(s.node.http, SITE, "/.env", &[]).await?;
    ensure!(r.status == 404, "dot-files are not published");
    let r = request(
        s.node.http,
        "HEAD",
        SITE,
        "/css/style.css",
        &[("accept-encoding", "br")],
        true,
    )
    .await?;
    ensure!(r.status == 200 && r.body.is_empty() && r.header("content-encoding") == Some("br"));
    Ok(())
}
