//! Bad input gets a clear, typed refusal and changes nothing: unauthorised
//! callers, forged signatures, traversal paths, stale parents, unrequested
//! pushes, and a publish whose client dies mid-upload.

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result, ensure};
use maki::{
    net::{Client, NetError},
    publish::{PublishError, offer, push},
};
use maki_e2e::{Maki, NodeProc, OneNode, copy_dir, http_get, one_site};
use maki_protocol::{
    Domain, Hash, Head, Manifest, NodeTicket, Signed,
    rpc::{Request, Response, RpcError},
};

const SITE: &str = "example.test";

struct Setup {
    tmp: tempfile::TempDir,
    node: NodeProc,
    admin: Maki,
    site_dir: std::path::PathBuf,
}

fn setup() -> Result<Setup> {
    let (OneNode { tmp, node, admin }, site_dir) = one_site(SITE)?;
    admin.ok(&["publish", &site_dir.to_string_lossy(), "--site", SITE])?;
    Ok(Setup {
        tmp,
        node,
        admin,
        site_dir,
    })
}

fn refused<E: Into<PublishError>>(r: Result<Response, E>) -> Result<RpcError> {
    match r.map_err(Into::into) {
        Err(PublishError::Net(NetError::Refused(e))) => Ok(e),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn unauthorised_callers_are_refused() -> Result<()> {
    let s = setup()?;
    let home = s.tmp.path().join("stranger");
    std::fs::create_dir_all(&home)?;
    let stranger = Maki::new(&home, Some(&s.node.ticket));
    let key = stranger.key()?;

    let err = stranger.fails(&["publish", &s.site_dir.to_string_lossy(), "--site", SITE])?;
    ensure!(
        err.contains("may not publish example.test") && err.contains("--publisher"),
        "{err}"
    );
    let err = stranger.fails(&["site", "add", "other.test"])?;
    ensure!(err.contains("is not an admin"), "{err}");
    let err = stranger.fails(&["rollback", SITE])?;
    ensure!(err.contains("may not publish"), "{err}");
    let sites = stranger.ok(&["sites"])?;
    ensure!(sites.trim().is_empty(), "a stranger sees no sites: {sites}");

    // A stranger's huge frame is refused before the node buffers it.
    let (skey, _) = maki::keys::load_or_create(&home)?;
    let client = Client::connect(&skey, &s.node.ticket.parse::<NodeTicket>()?).await?;
    let record = maki_protocol::SiteRecord {
        format: maki_protocol::RECORD_FORMAT,
        domain: Domain::new("huge.test")?,
        aliases: vec![],
        publishers: vec![skey.public(); 70_000],
        version: 1,
        removed: false,
        heads_after: 0,
    };
    let e = refused(
        client
            .call(&Request::SiteAdd {
                record: Signed::sign(&skey, &record),
            })
            .await,
    )?;
    ensure!(matches!(e, RpcError::NotAdmin { .. }), "{e}");
    // The connection still answers afterwards.
    ensure!(matches!(client.call(&Request::Sites).await?, Response::Sites(v) if v.is_empty()));
    client.close().await;

    // Once an admin names them publisher, the same command works.
    s.admin
        .ok(&["site", "add", "theirs.test", "--publisher", &key])?;
    let mut changed = s.tmp.path().join("theirs");
    copy_dir(&s.site_dir, &changed)?;
    let out = stranger.ok(&[
        "publish",
        &changed.to_string_lossy(),
        "--site",
        "theirs.test",
    ])?;
    ensure!(out.contains("published version 1"), "{out}");
    // Every blob was already on the node: nothing uploaded twice.
    ensure!(out.contains("uploaded 0 blobs"), "{out}");
    changed.push("index.html");
    ensure!(http_get(s.node.http, "theirs.test", "/", &[]).await?.status == 200);
    ensure!(
        s.admin
            .fails(&["site", "add", SITE])?
            .contains("already exists")
    );
    Ok(())
}

#[tokio::test]
async fn forged_and_malformed_publishes_change_nothing() -> Result<()> {
    let s = setup()?;
    let before = http_get(s.node.http, SITE, "/", &[]).await?;
    let (key, _) = maki::keys::load_or_create(&s.admin.home)?;
    let ticket: NodeTicket = s.node.ticket.parse()?;
    let client = Client::connect(&key, &ticket).await?;
    let site = Domain::new(SITE)?;
    let Response::Sites(sites) = client.call(&Request::Sites).await? else {
        anyhow::bail!("no sites");
    };
    let head = sites[0].head.clone().context("published")?;

    // A manifest for version 2 that removes everything.
    let mut m = Manifest {
        format: maki_protocol::MANIFEST_FORMAT,
        site: site.clone(),
        version: 2,
        parent: Some(head.manifest),
        created: 0,
        entries: Default::default(),
        headers: vec![],
        redirects: vec![],
    };
    let next = |manifest: Hash| Head {
        site: site.clone(),
        seq: head.seq + 1,
        manifest,
    };

    // Forged signature: flip one bit of the signature bytes.
    let signed = Signed::sign(&key, &next(m.hash()));
    let mut wire = postcard::to_stdvec(&signed)?;
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let forged: Signed<Head> = postcard::from_bytes(&wire)?;
    let e = refused(offer(&client, &mut None, forged, m.to_bytes()).await)?;
    ensure!(e == RpcError::BadSignature, "{e}");

    // Signed by someone other than the caller.
    let other = maki_protocol::SecretKey::from_bytes(&[42; 32]);
    let e = refused(
        offer(
            &client,
            &mut None,
            Signed::sign(&other, &next(m.hash())),
            m.to_bytes(),
        )
        .await,
    )?;
    ensure!(e == RpcError::SignerMismatch, "{e}");

    // Manifest bytes that do not match the signed hash: the node takes
    // no other push than the blob the head names, so it never arrives.
    let x = Hash::of(b"x");
    let Response::SendManifest { session } = client
        .call(&Request::PublishBegin {
            head: Signed::sign(&key, &next(x)),
            manifest_size: m.to_bytes().len() as u64,
        })
        .await?
    else {
        anyhow::bail!("the node should ask for the manifest");
    };
    let conn = client.blobs_connection().await?;
    // The node refuses the push; whether the client hears of it before the
    // stream ends is a race, so its own result is not the point.
    let _ = push(&conn, vec![m.to_bytes()], &mut ()).await;
    let e = refused(client.call(&Request::PublishManifest { session }).await)?;
    conn.close(0u32.into(), b"done");
    ensure!(e == RpcError::MissingBlobs { count: 1, first: x }, "{e}");

    // A manifest announced above the limit is refused before it is sent.
    let e = refused(
        client
            .call(&Request::PublishBegin {
                head: Signed::sign(&key, &next(m.hash())),
                manifest_size: maki_protocol::MAX_MANIFEST_BYTES + 1,
            })
            .await,
    )?;
    ensure!(
        matches!(&e, RpcError::InvalidManifest(msg) if msg.contains("limit")),
        "{e}"
    );

    // A manifest larger than announced (a dodge of the upload budget).
    let Response::SendManifest { session } = client
        .call(&Request::PublishBegin {
            head: Signed::sign(&key, &next(m.hash())),
            manifest_size: 1,
        })
        .await?
    else {
        anyhow::bail!("the node should ask for the manifest");
    };
    let conn = client.blobs_connection().await?;
    push(&conn, vec![m.to_bytes()], &mut ()).await?;
    let e = refused(client.call(&Request::PublishManifest { session }).await)?;
    conn.close(0u32.into(), b"done");
    ensure!(
        matches!(&e, RpcError::InvalidManifest(msg) if msg.contains("announced a manifest of 1 bytes")),
        "{e}"
    );

    // A traversal path smuggled into the manifest bytes.
    let mut entries = std::collections::BTreeMap::new();
    entries.insert(
        maki_protocol::SitePath::new("aa/passwd")?,
        maki_protocol::Entry {
            hash: Hash::of(b"p"),
            size: 1,
            content_type: "text/plain".into(),
            encodings: Default::default(),
        },
    );
    m.entries = entries;
    let mut bytes = m.to_bytes();
    let at = bytes
        .windows(9)
        .position(|w| w == b"aa/passwd")
        .context("path")?;
    bytes[at..at + 3].copy_from_slice(b"../");
    let e = refused(
        offer(
            &client,
            &mut None,
            Signed::sign(&key, &next(Hash::of(&bytes))),
            bytes,
        )
        .await,
    )?;
    ensure!(
        matches!(&e, RpcError::InvalidManifest(msg) if msg.contains("'..'")),
        "{e}"
    );

    // A stale parent: built on nothing, though version 1 is live.
    m.entries.clear();
    m.parent = None;
    let e = refused(
        offer(
            &client,
            &mut None,
            Signed::sign(&key, &next(m.hash())),
            m.to_bytes(),
        )
        .await,
    )?;
    ensure!(
        matches!(e, RpcError::StaleParent { current: Some(h) } if h == head.manifest),
        "{e}"
    );
    ensure!(e.to_string().contains("publish again"));

    // A head that skips sequence numbers.
    m.parent = Some(head.manifest);
    let mut skip = next(m.hash());
    skip.seq += 5;
    let e = refused(offer(&client, &mut None, Signed::sign(&key, &skip), m.to_bytes()).await)?;
    ensure!(matches!(e, RpcError::StaleSeq { .. }), "{e}");

    // Committing a session that does not exist.
    let e = refused(client.call(&Request::PublishCommit { session: 7 }).await)?;
    ensure!(e == RpcError::UnknownSession(7), "{e}");

    // Garbage instead of a request: a clear error, and the connection lives on.
    client.close().await;

    let after = http_get(s.node.http, SITE, "/", &[]).await?;
    ensure!(after.body == before.body && after.header("etag") == before.header("etag"));
    let versions = s.admin.ok(&["versions", SITE])?;
    ensure!(versions.lines().count() == 1, "{versions}");
    Ok(())
}

#[tokio::test]
async fn a_publish_killed_mid_upload_leaves_the_old_version_serving() -> Result<()> {
    let s = setup()?;
    let before = http_get(s.node.http, SITE, "/", &[]).await?;
    let mut child = big_publish(&s, b"killed", "<h1>version 2</h1>")?;
    // Kill the client once the node holds the first new blob.
    let killed = first_blob_landed(&s, &mut child).await?;
    if killed {
        child.kill()?;
    }
    child.wait()?;
    ensure!(
        killed,
        "the upload finished before it could be interrupted; make the test site bigger"
    );

    let after = http_get(s.node.http, SITE, "/", &[]).await?;
    ensure!(
        after.body == before.body,
        "a half-published version became visible"
    );
    let versions = s.admin.ok(&["versions", SITE])?;
    ensure!(versions.lines().count() == 1, "{versions}");

    // The node notices the abandoned publish, and a restart sweeps leftovers.
    let mut abandoned = false;
    for _ in 0..600 {
        if s.node.log().contains("publish abandoned") {
            abandoned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        abandoned,
        "node never noticed the dead client:\n{}",
        s.node.log()
    );
    let data = s.node.dir.clone();
    s.node.stop()?;
    let node = NodeProc::start(&data)?;
    let after = http_get(node.http, SITE, "/", &[]).await?;
    ensure!(after.body == before.body);

    // Publishing again completes, and what already arrived is not sent twice.
    let admin = Maki::new(&s.admin.home, Some(&node.ticket));
    let out = admin.ok(&["publish", &s.site_dir.to_string_lossy(), "--site", SITE])?;
    ensure!(out.contains("published version 2"), "{out}");
    let r = http_get(node.http, SITE, "/", &[]).await?;
    ensure!(&r.body[..] == b"<h1>version 2</h1>");
    let r = http_get(node.http, SITE, "/big/47.bin", &[]).await?;
    ensure!(r.status == 200 && r.body.len() == 4 << 20);
    drop(s.tmp);
    Ok(())
}

#[tokio::test]
async fn a_node_crashing_mid_publish_restarts_on_the_old_version() -> Result<()> {
    let s = setup()?;
    let before = http_get(s.node.http, SITE, "/", &[]).await?;
    let mut child = big_publish(&s, b"crash", "<h1>never seen</h1>")?;
    ensure!(
        first_blob_landed(&s, &mut child).await?,
        "the first blob never arrived"
    );
    // The store commits its metadata (the publish's temporary tag) within
    // 500 ms: crash after that, so there is a leftover tag to sweep.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let data = s.node.dir.clone();
    s.node.crash()?;
    let status = child.wait()?;
    ensure!(!status.success(), "publish must fail when its node dies");

    let node = NodeProc::start(&data)?;
    ensure!(
        node.log()
            .contains("removed leftovers of interrupted publishes"),
        "{}",
        node.log()
    );
    let after = http_get(node.http, SITE, "/", &[]).await?;
    ensure!(
        after.body == before.body,
        "a crash made a half-published version visible"
    );
    drop(s.tmp);
    Ok(())
}

/// Adds 48 files of 4 MiB (seeded by `seed`) and a new index page, and starts
/// `maki publish` of it: an upload that takes a while.
fn big_publish(s: &Setup, seed: &[u8], index: &str) -> Result<std::process::Child> {
    let big = s.site_dir.join("big");
    std::fs::create_dir_all(&big)?;
    for i in 0..48u32 {
        std::fs::write(big.join(format!("{i}.bin")), big_file(seed, i))?;
    }
    std::fs::write(s.site_dir.join("index.html"), index)?;
    Ok(s.admin
        .command(&["publish", &s.site_dir.to_string_lossy(), "--site", SITE])?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

fn big_file(seed: &[u8], i: u32) -> Vec<u8> {
    let mut data = vec![0u8; 4 << 20];
    blake3::Hasher::new()
        .update(seed)
        .update(&i.to_le_bytes())
        .finalize_xof()
        .fill(&mut data);
    data
}

/// Waits until the node holds at least one big file (its store grew by
/// 4 MiB on disk) while the publish still runs; false if the publish ended
/// first. (Uncommitted uploads are not readable over HTTP, so the disk is
/// where to look.)
async fn first_blob_landed(s: &Setup, child: &mut std::process::Child) -> Result<bool> {
    let blobs = makiatto::node::blobs_dir(&s.node.dir);
    let before = makiatto::content::Content::disk_usage(&blobs);
    for _ in 0..4000 {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if makiatto::content::Content::disk_usage(&blobs) >= before + (4 << 20) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(false)
}

/// A request frame announced larger than the limit is answered with a
/// typed refusal (its body never read), and the connection serves the
/// caller's next request.
#[tokio::test]
async fn an_oversized_request_gets_a_refusal_not_a_dropped_connection() -> Result<()> {
    let s = setup()?;
    let (key, _) = maki::keys::load_or_create(&s.admin.home)?;
    let ticket: NodeTicket = s.node.ticket.parse()?;
    let mut addr = iroh::EndpointAddr::new(iroh::PublicKey::from_bytes(ticket.id.as_bytes())?);
    for a in &ticket.addrs {
        addr = addr.with_ip_addr(*a);
    }
    let ep = makiatto::endpoint::bind(&key, "127.0.0.1:0".parse()?, Default::default()).await?;
    let conn = ep.connect(addr, maki_protocol::rpc::ADMIN_ALPN).await?;
    let ask = |frame: Vec<u8>| {
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&frame).await?;
            send.finish()?;
            let mut prefix = [0u8; 4];
            recv.read_exact(&mut prefix).await?;
            let mut body = vec![0u8; maki_protocol::rpc::frame_len(prefix)?];
            recv.read_exact(&mut body).await?;
            anyhow::Ok(maki_protocol::rpc::decode_body::<Response>(&body)?)
        }
    };
    let huge = (maki_protocol::rpc::MAX_FRAME as u32 + 1)
        .to_le_bytes()
        .to_vec();
    let answer = tokio::time::timeout(Duration::from_secs(10), ask(huge)).await??;
    ensure!(
        matches!(&answer, Response::Error(RpcError::BadRequest(m)) if m.contains("exceeds the limit")),
        "{answer:?}"
    );
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        ask(maki_protocol::rpc::encode_frame(&Request::Sites)),
    )
    .await??;
    ensure!(matches!(next, Response::Sites(_)), "{next:?}");
    ep.close().await;
    Ok(())
}

/// `maki … | head`: when the reader goes away, maki ends as a process
/// killed by SIGPIPE would (exit 141), without a panic or a word.
#[test]
fn a_reader_that_goes_away_ends_maki_quietly() -> Result<()> {
    let home = tempfile::tempdir()?;
    let maki = Maki::new(home.path(), None);
    maki.ok(&["keys"])?;
    let mut child = maki
        .command(&["keys"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    ensure!(
        out.status.code() == Some(141) && out.stderr.is_empty(),
        "{out:?}"
    );
    Ok(())
}
