//! A hostile publisher, written as the attack: a valid key and a signed
//! manifest that lies. Signed is not honest — every claim a manifest makes
//! is checked against what is stored, and no lie reaches a visitor or
//! takes the node down.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use maki::{
    net::{Client, NetError},
    publish::{PublishError, offer, push},
};
use maki_e2e::{NodeProc, OneNode, http_get, one_site};
use maki_protocol::{
    Domain, Entry, Hash, Head, MANIFEST_FORMAT, Manifest, NodeTicket, SecretKey, Signed, SitePath,
    rpc::{Request, Response, RpcError},
};

const SITE: &str = "lie.test";

/// A node with `SITE` published from `examples/site`, and a library client
/// holding the admin's key (a publisher that does not use the CLI).
struct Attack {
    net: OneNode,
    key: SecretKey,
    client: Client,
    site: Domain,
    /// The head now served.
    head: maki_protocol::rpc::HeadInfo,
    /// The manifest now served.
    current: Manifest,
}

async fn attack() -> Result<Attack> {
    let (net, site_dir) = one_site(SITE)?;
    net.admin
        .ok(&["publish", &site_dir.to_string_lossy(), "--site", SITE])?;
    let (key, _) = maki::keys::load_or_create(&net.admin.home)?;
    let ticket: NodeTicket = net.node.ticket.parse()?;
    let client = Client::connect(&key, &ticket).await?;
    let site = Domain::new(SITE)?;
    let Response::Sites(sites) = client.call(&Request::Sites).await? else {
        anyhow::bail!("no sites");
    };
    let head = sites[0].head.clone().context("published")?;
    let (current, _) = maki::publish::build(
        &site_dir,
        &site,
        &mut maki::scan::HashCache::default(),
        None,
        1,
        &Default::default(),
    )?;
    Ok(Attack {
        net,
        key,
        client,
        site,
        head,
        current,
    })
}

impl Attack {
    /// The next version: the current entries plus `extra`.
    fn next(&self, extra: &[(&str, Hash, u64)]) -> Result<Manifest> {
        let mut entries = self.current.entries.clone();
        for (path, hash, size) in extra {
            entries.insert(
                SitePath::new(path)?,
                Entry {
                    hash: *hash,
                    size: *size,
                    content_type: "text/html; charset=utf-8".into(),
                    encodings: BTreeMap::new(),
                },
            );
        }
        Ok(Manifest {
            format: MANIFEST_FORMAT,
            site: self.site.clone(),
            version: self.head.version + 1,
            parent: Some(self.head.manifest),
            created: 0,
            entries,
            headers: vec![],
            redirects: vec![],
        })
    }

    async fn begin(&self, m: &Manifest) -> Result<Response, PublishError> {
        let head = Head {
            site: self.site.clone(),
            seq: self.head.seq + 1,
            manifest: m.hash(),
        };
        offer(
            &self.client,
            &mut None,
            Signed::sign(&self.key, &head),
            m.to_bytes(),
        )
        .await
    }

    /// Pushes `data` in the session that asked for it.
    async fn push(&self, data: &[u8]) -> Result<iroh::endpoint::Connection> {
        let conn = self.client.blobs_connection().await?;
        push(&conn, vec![data.to_vec()], &mut ()).await?;
        Ok(conn)
    }

    /// The node still serves exactly what it served before the attack.
    async fn unharmed(&self) -> Result<()> {
        let r = http_get(self.net.node.http, SITE, "/", &[]).await?;
        ensure!(r.status == 200, "the site went away: {}", r.status);
        let index = &self.current.entries[&SitePath::new("index.html")?];
        ensure!(Hash::of(&r.body) == index.hash, "index.html changed");
        let versions = self.net.admin.ok(&["versions", SITE])?;
        ensure!(versions.lines().count() == 1, "{versions}");
        Ok(())
    }
}

fn refused<E: Into<PublishError>>(r: Result<Response, E>) -> Result<RpcError> {
    match r.map_err(Into::into) {
        Err(PublishError::Net(NetError::Refused(e))) => Ok(e),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
}

/// The red team's crash: `a.html` declares 1,000,000 bytes and `z.html` 10,
/// both naming z's hash. Today a GET of a.html sliced 10 bytes to a million
/// and the abort took every site down, on every node, at every restart.
#[tokio::test]
async fn one_hash_with_two_sizes_is_refused_by_path() -> Result<()> {
    let a = attack().await?;
    let z = Hash::of(b"0123456789");
    let m = a.next(&[("a.html", z, 1_000_000), ("z.html", z, 10)])?;
    let e = refused(a.begin(&m).await)?;
    let text = e.to_string();
    ensure!(
        matches!(e, RpcError::InvalidManifest(_))
            && text.contains("\"a.html\"")
            && text.contains("\"z.html\"")
            && text.contains("1000000 bytes"),
        "{text}"
    );
    a.unharmed().await
}

/// One lie alone: a blob the node already holds, declared one byte longer.
#[tokio::test]
async fn a_wrong_size_for_a_stored_blob_is_refused_by_path() -> Result<()> {
    let a = attack().await?;
    let index = a.current.entries[&SitePath::new("index.html")?].clone();
    let m = a.next(&[("copy.html", index.hash, index.size + 1)])?;
    // Both entries name the hash: that is a conflict inside the manifest.
    ensure!(matches!(
        refused(a.begin(&m).await)?,
        RpcError::InvalidManifest(_)
    ));
    // Alone (index.html dropped), it is a lie only the store can reveal.
    let mut m = m;
    m.entries.remove(&SitePath::new("index.html")?);
    let e = refused(a.begin(&m).await)?;
    ensure!(
        e == RpcError::SizeMismatch {
            path: "copy.html".into(),
            declared: index.size + 1,
            stored: index.size,
        },
        "{e}"
    );
    ensure!(e.to_string().contains("copy.html"), "{e}");
    a.unharmed().await
}

/// The streaming variant: 10 bytes uploaded, 4 GiB declared (over the
/// memory-cache limit, so it would have been streamed behind
/// `Content-Length: 4294967296`, and the next pipelined response read as
/// body). The push lands, verified against its hash, and the commit
/// compares: refused by path.
#[tokio::test]
async fn a_wrong_size_for_an_uploaded_blob_is_refused_at_commit() -> Result<()> {
    let a = attack().await?;
    let data = b"ten bytes!";
    let m = a.next(&[("huge.bin", Hash::of(data), 4 << 30)])?;
    let Response::Missing { session, lacks, .. } = a.begin(&m).await? else {
        anyhow::bail!("expected the node to ask for the blob");
    };
    let hashes = lacks.hashes(m.blobs().keys());
    ensure!(hashes == vec![Hash::of(data)], "{hashes:?}");
    let conn = a.push(data).await?;
    let e = refused(a.client.call(&Request::PublishCommit { session }).await)?;
    conn.close(0u32.into(), b"done");
    ensure!(
        e == RpcError::SizeMismatch {
            path: "huge.bin".into(),
            declared: 4 << 30,
            stored: 10,
        },
        "{e}"
    );
    a.unharmed().await?;
    let r = http_get(a.net.node.http, SITE, "/huge.bin", &[]).await?;
    ensure!(r.status == 404, "{}", r.status);
    Ok(())
}

/// A lying version already on disk (committed by an older node, before
/// these checks): at start the node checks each served version against
/// its blobs, refuses that one by path, and keeps running.
#[tokio::test]
async fn a_lying_version_on_disk_is_not_served_after_a_restart() -> Result<()> {
    let a = attack().await?;
    let index = a.current.entries[&SitePath::new("index.html")?].clone();
    let mut m = a.next(&[])?;
    m.entries
        .get_mut(&SitePath::new("index.html")?)
        .context("index")?
        .size = 1 << 40;
    let head = Head {
        site: a.site.clone(),
        seq: a.head.seq + 1,
        manifest: m.hash(),
    };
    let signed = Signed::sign(&a.key, &head);
    let Attack { net, client, .. } = a;
    client.close().await;
    let OneNode { tmp, node, admin } = net;
    let data = node.dir.clone();
    node.stop()?;
    {
        let content =
            makiatto::content::Content::load(&makiatto::node::blobs_dir(&data), None).await?;
        let (stored, _tag) = content.add_bytes(m.to_bytes().into()).await?;
        ensure!(stored == head.manifest);
        content
            .protect(
                &makiatto::content::version_tag(&head.site, head.manifest),
                head.manifest,
                m.blobs().keys().copied(),
            )
            .await?;
        content.sync().await?;
        content.shutdown().await;
        let state = makiatto::state::State::open(&data.join("state.redb"))?;
        state.commit_head(&head, &signed, Some(m.version), 5)?;
    }
    let node = NodeProc::start(&data)?;
    maki_e2e::wait_for(
        std::time::Duration::from_secs(10),
        "the refusal in the log",
        || async { Ok(node.log().contains("stored version declares a wrong size")) },
    )
    .await?;
    let log = node.log();
    ensure!(log.contains("index.html"), "{log}");
    // Not served with a length it does not have; the node lives on.
    let r = http_get(node.http, SITE, "/index.html", &[]).await?;
    ensure!(
        r.header("content-length") != Some("1099511627776"),
        "{:?}",
        r.headers
    );
    ensure!(r.status == 404 || Hash::of(&r.body) == index.hash);
    let admin = maki_e2e::Maki::new(&admin.home, Some(&node.ticket));
    let sites = admin.ok(&["sites"])?;
    ensure!(sites.contains(SITE), "{sites}");
    drop(tmp);
    Ok(())
}

/// The red team's open redirects: a common `_redirects` rule, fed a path
/// that makes its target look like another host to a browser.
#[tokio::test]
async fn redirect_targets_stay_on_the_site() -> Result<()> {
    let (net, site_dir) = one_site("redir.test")?;
    std::fs::write(
        site_dir.join("_redirects"),
        "/go/* /:splat 301\n/r/:x /:x 302\n/lit/* //evil.example/:splat 301\n/ext/* https://cdn.example/:splat 301\n",
    )?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "redir.test",
    ])?;
    for (path, want) in [
        ("/go//evil.example", "/evil.example"),
        ("/go/%2fevil.example", "/evil.example"),
        ("/go/%2F%2Fevil.example", "/evil.example"),
        ("/go/%5cevil.example", "/%5Cevil.example"),
        ("/go/%5C%5Cevil.example", "/%5C%5Cevil.example"),
        ("/go/%09/evil.example", "malformed"),
        ("/r/%5cevil.example", "/%5Cevil.example"),
        ("/lit/x", "/evil.example/x"),
        ("/go/a%20b?q=1", "/a%20b?q=1"),
        ("/ext/a%3fb", "https://cdn.example/a%3Fb"),
    ] {
        let r = http_get(net.node.http, "redir.test", path, &[]).await?;
        if want == "malformed" {
            ensure!(r.status == 400, "{path}: {}", r.status);
            continue;
        }
        ensure!(
            r.header("location") == Some(want),
            "{path}: {} {:?}",
            r.status,
            r.header("location")
        );
    }
    Ok(())
}

/// `_headers` cannot set what frames a response: refused by the CLI with
/// the line, and refused by the node when a client skips the parser.
#[tokio::test]
async fn headers_rules_cannot_touch_framing() -> Result<()> {
    let a = attack().await?;
    let site_dir = a.net.tmp.path().join("site");
    std::fs::write(
        site_dir.join("_headers"),
        "/*\n  X-Frame-Options: DENY\n  Transfer-Encoding: chunked\n",
    )?;
    let err = a
        .net
        .admin
        .fails(&["publish", &site_dir.to_string_lossy(), "--site", SITE])?;
    ensure!(
        err.contains("_headers:3: Transfer-Encoding is set by the server"),
        "{err}"
    );
    for name in maki_protocol::rules::RESERVED_HEADERS {
        let mut m = a.next(&[])?;
        m.headers.push(maki_protocol::rules::HeaderRule {
            pattern: maki_protocol::rules::Pattern::new("/*").map_err(anyhow::Error::msg)?,
            set: vec![(name.to_string(), "1".into())],
            unset: vec![],
        });
        let e = refused(a.begin(&m).await)?;
        ensure!(
            matches!(&e, RpcError::InvalidManifest(msg) if msg.contains(name)),
            "{name}: {e}"
        );
    }
    a.unharmed().await
}

/// Request smuggling, as the red team tried it (44 cases held; these are
/// the classic shapes): each case hides `GET /smuggled` inside what the
/// first request's framing says is body, then sends `GET /after`. Whatever
/// the node makes of the framing — a 400 and close, or a request with a
/// body — it must never answer the hidden request, and what it answers
/// comes in order.
#[tokio::test]
async fn smuggled_requests_are_never_answered() -> Result<()> {
    let (net, site_dir) = one_site("smuggle.test")?;
    std::fs::write(site_dir.join("after.html"), b"after")?;
    std::fs::write(site_dir.join("_redirects"), "/smuggled /gotcha 302\n")?;
    net.admin.ok(&[
        "publish",
        &site_dir.to_string_lossy(),
        "--site",
        "smuggle.test",
    ])?;
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: smuggle.test\r\n\r\n";
    let n = hidden.len();
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
                5 + n
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{hidden}\r\n0\r\n\r\n"
            ),
        ),
        (
            "two CL",
            format!(
                "GET / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{hidden}"
            ),
        ),
        (
            "CL list",
            format!(
                "GET / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: {n}, 0\r\n\r\n{hidden}"
            ),
        ),
        (
            "TE obs-fold",
            format!(
                "POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: {n}\r\n\r\n{hidden}"
            ),
        ),
        (
            "TE space before colon",
            format!(
                "POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding : chunked\r\nContent-Length: {n}\r\n\r\n{hidden}"
            ),
        ),
        (
            "TE xchunked",
            format!(
                "POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: {n}\r\n\r\n{hidden}"
            ),
        ),
        (
            "TE chunked, identity",
            format!(
                "POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: {n}\r\n\r\n{hidden}"
            ),
        ),
        (
            "CL on GET",
            format!("GET / HTTP/1.1\r\nHost: smuggle.test\r\nContent-Length: {n}\r\n\r\n{hidden}"),
        ),
        (
            "bare LF",
            format!("GET / HTTP/1.1\nHost: smuggle.test\nContent-Length: {n}\n\n{hidden}"),
        ),
        (
            "NUL in a header",
            format!(
                "GET / HTTP/1.1\r\nHost: smuggle.test\r\nX: a\0b\r\nContent-Length: {n}\r\n\r\n{hidden}"
            ),
        ),
        (
            "chunk extension",
            format!(
                "POST / HTTP/1.1\r\nHost: smuggle.test\r\nTransfer-Encoding: chunked\r\n\r\n{n:x};ext=\"a\r\n{hidden}\"\r\n0\r\n\r\n"
            ),
        ),
        (
            "HTTP/1.0 keep-alive with CL",
            format!(
                "GET / HTTP/1.0\r\nHost: smuggle.test\r\nConnection: keep-alive\r\nContent-Length: {n}\r\n\r\n{hidden}"
            ),
        ),
    ];
    for (name, case) in cases {
        let mut conn = tokio::net::TcpStream::connect(net.node.http).await?;
        let raw = format!(
            "{case}GET /after.html HTTP/1.1\r\nHost: smuggle.test\r\nConnection: close\r\n\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut conn, raw.as_bytes()).await?;
        let mut all = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut all),
        )
        .await;
        let text = String::from_utf8_lossy(&all);
        ensure!(
            !text.contains("/gotcha"),
            "{name}: the hidden request was answered:\n{text}"
        );
        // Every status line is a plain 1.1 response (no body read as a head).
        for line in text.lines().filter(|l| l.starts_with("HTTP/")) {
            ensure!(
                line.starts_with("HTTP/1.1 ") || line.starts_with("HTTP/1.0 "),
                "{name}: {line}"
            );
        }
    }
    // Positive control: the same request not hidden is answered, and seen.
    let mut conn = tokio::net::TcpStream::connect(net.node.http).await?;
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: smuggle.test\r\n\r\n{hidden}GET /after.html HTTP/1.1\r\nHost: smuggle.test\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, raw.as_bytes()).await?;
    let mut all = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut all),
    )
    .await??;
    ensure!(
        String::from_utf8_lossy(&all).contains("/gotcha"),
        "the control was not seen"
    );
    // And the node is still there for everyone.
    let r = http_get(net.node.http, "smuggle.test", "/after.html", &[]).await?;
    ensure!(r.status == 200);
    Ok(())
}

/// A publish open when its site was removed cannot bring the site back at
/// commit (and, had the domain changed hands, could not serve the old
/// owner's files under the new owner's name).
#[tokio::test]
async fn a_publish_open_across_a_removal_is_refused_at_commit() -> Result<()> {
    let a = attack().await?;
    let data = b"late content";
    let m = a.next(&[("late.html", Hash::of(data), data.len() as u64)])?;
    let Response::Missing { session, .. } = a.begin(&m).await? else {
        anyhow::bail!("expected the node to ask for the blob");
    };
    a.net.admin.ok(&["site", "remove", SITE])?;
    let conn = a.push(data).await?;
    let e = refused(a.client.call(&Request::PublishCommit { session }).await)?;
    conn.close(0u32.into(), b"done");
    ensure!(matches!(e, RpcError::UnknownSite(_)), "{e}");
    let r = http_get(a.net.node.http, SITE, "/late.html", &[]).await?;
    ensure!(r.status == 404, "the removed site answered {}", r.status);
    Ok(())
}

/// Sizes that add up past 2^64 would overflow every sum a node takes
/// (site size, upload budget, replication): refused at decode, by name.
#[tokio::test]
async fn sizes_that_overflow_are_refused() -> Result<()> {
    let a = attack().await?;
    let half = u64::MAX / 2 + 1;
    let m = a.next(&[
        ("a.bin", Hash::of(b"a"), half),
        ("b.bin", Hash::of(b"b"), half),
    ])?;
    let e = refused(a.begin(&m).await)?;
    ensure!(
        matches!(&e, RpcError::InvalidManifest(msg) if msg.contains("2^64")),
        "{e}"
    );
    a.unharmed().await
}

/// The hash fixes a blob's content, not its length: a publisher that
/// declares 10 bytes for a 4 MiB blob gets no more than those 10 bytes'
/// chunk onto the node's disk, whichever ranges it asks to push.
#[tokio::test]
async fn a_blob_larger_than_declared_never_lands() -> Result<()> {
    use iroh_blobs::protocol::{ChunkRangesSeq, PushRequest};
    let a = attack().await?;
    let data = vec![7u8; 4 << 20];
    let m = a.next(&[("big.bin", Hash::of(&data), 10)])?;
    let Response::Missing { session, .. } = a.begin(&m).await? else {
        anyhow::bail!("expected the node to ask for the blob");
    };
    let blobs = makiatto::node::blobs_dir(&a.net.node.dir);
    let before = makiatto::content::Content::disk_usage(&blobs);
    let conn = a.client.blobs_connection().await?;
    // The whole blob, as a plain push asks for it: refused outright.
    let store = iroh_blobs::store::mem::MemStore::new();
    let tag = store.add_bytes(data.clone()).temp_tag().await?;
    let whole = store
        .remote()
        .execute_push(
            conn.clone(),
            PushRequest::new(tag.hash(), ChunkRangesSeq::root()),
        )
        .await;
    // Exactly its chunks, as our client asks: refused too (more than 10 bytes).
    let bounded = push(&conn, vec![data], &mut ()).await;
    let e = refused(a.client.call(&Request::PublishCommit { session }).await)?;
    conn.close(0u32.into(), b"done");
    ensure!(matches!(e, RpcError::MissingBlobs { .. }), "{e}");
    let after = makiatto::content::Content::disk_usage(&blobs);
    ensure!(
        after < before + (1 << 20),
        "{} bytes landed (pushes: {whole:?}, {bounded:?})",
        after.saturating_sub(before)
    );
    a.unharmed().await
}
