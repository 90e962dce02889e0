//! Members only: a stranger with a valid iroh key but no place in the
//! network cannot sync, gossip or read blobs, however it introduces
//! itself; a newer sync format is refused by name.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use iroh::{EndpointAddr, endpoint::Connection};
use maki_e2e::one_site;
use maki_protocol::{
    Hash, NodeRecord, NodeTicket, RECORD_FORMAT, SecretKey, Signed,
    rpc::{self},
    sync::{GOSSIP_ALPN, SYNC_ALPN, SYNC_FORMAT, SyncError, SyncMsg},
};

async fn hello(conn: &Connection, msg: &SyncMsg) -> Result<SyncMsg> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&rpc::encode_frame(msg)).await?;
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let mut body = vec![0u8; rpc::frame_len(prefix)?];
    recv.read_exact(&mut body).await?;
    Ok(rpc::decode_body(&body)?)
}

#[tokio::test]
async fn strangers_cannot_sync_gossip_or_read_blobs() -> Result<()> {
    let (net, site) = one_site("m.test")?;
    net.admin.ok(&[
        "publish",
        site.to_str().unwrap_or_default(),
        "--site",
        "m.test",
    ])?;
    let sites: serde_json::Value = serde_json::from_str(&net.admin.ok(&["sites", "--json"])?)?;
    // `--json` shows hashes as hex, like everything people read.
    let manifest: Hash = sites[0]["head"]["manifest"]
        .as_str()
        .context("manifest as hex")?
        .parse()?;
    let network = makiatto::identity::load_genesis(&net.node.dir)?.id;

    let ticket: NodeTicket = net.node.ticket.parse()?;
    let mut addr = EndpointAddr::new(iroh::PublicKey::from_bytes(ticket.id.as_bytes())?);
    for a in &ticket.addrs {
        addr = addr.with_ip_addr(*a);
    }
    let key = SecretKey::from_bytes(&[42; 32]);
    let ep = makiatto::endpoint::bind(&key, "127.0.0.1:0".parse()?, Default::default()).await?;
    let me = |invite| {
        Signed::sign(
            &key,
            &NodeRecord {
                format: RECORD_FORMAT,
                id: key.public(),
                addrs: vec![],
                region: None,
                location: None,
                version: 1,
                invite,
                roles: vec![],
                admission: None,
                ips: vec![],
                mesh: None,
                ports: vec![],
                seal: None,
            },
        )
    };
    let hello_with = |format, network, invite| SyncMsg::Hello {
        format,
        network,
        me: me(invite),
        invite: None,
        holds_seen: None,
    };

    // A self-signed record naming an invite nobody issued: not a member.
    let conn = ep.connect(addr.clone(), SYNC_ALPN).await?;
    let answer = hello(
        &conn,
        &hello_with(SYNC_FORMAT, network, Some(Hash::of(b"no such invite"))),
    )
    .await?;
    ensure!(
        matches!(answer, SyncMsg::Refused(SyncError::NotMember(_))),
        "{answer:?}"
    );
    // Claiming to be the founder (no invite) does not work either.
    let conn = ep.connect(addr.clone(), SYNC_ALPN).await?;
    let answer = hello(&conn, &hello_with(SYNC_FORMAT, network, None)).await?;
    ensure!(
        matches!(answer, SyncMsg::Refused(SyncError::NotMember(_))),
        "{answer:?}"
    );
    // Another network, and a newer format: refused, and said why.
    let conn = ep.connect(addr.clone(), SYNC_ALPN).await?;
    let answer = hello(
        &conn,
        &hello_with(SYNC_FORMAT, Hash::of(b"elsewhere"), None),
    )
    .await?;
    ensure!(
        answer == SyncMsg::Refused(SyncError::WrongNetwork),
        "{answer:?}"
    );
    let conn = ep.connect(addr.clone(), SYNC_ALPN).await?;
    let answer = hello(&conn, &hello_with(SYNC_FORMAT + 1, network, None)).await?;
    ensure!(
        answer
            == SyncMsg::Refused(SyncError::NewerFormat {
                found: SYNC_FORMAT + 1
            }),
        "{answer:?}"
    );
    ensure!(
        answer.to_string_lossy().contains("upgrade"),
        "the refusal must say what to do"
    );

    // Gossip: the connection is closed at once.
    let conn = ep.connect(addr.clone(), GOSSIP_ALPN).await?;
    let reason = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .context("the gossip connection was never closed")?;
    ensure!(reason.to_string().contains("not a member"), "{reason}");

    // Blobs: the manifest exists, yet a stranger cannot read it.
    let store = iroh_blobs::store::mem::MemStore::new();
    let conn = ep.connect(addr, iroh_blobs::ALPN).await?;
    let got = store
        .remote()
        .fetch(
            conn,
            iroh_blobs::HashAndFormat::raw(iroh_blobs::Hash::from_bytes(*manifest.as_bytes())),
        )
        .await;
    ensure!(got.is_err(), "a stranger read a blob");
    ensure!(
        !store
            .has(iroh_blobs::Hash::from_bytes(*manifest.as_bytes()))
            .await?,
        "a stranger holds the manifest"
    );
    ep.close().await;
    Ok(())
}

trait Lossy {
    fn to_string_lossy(&self) -> String;
}

impl Lossy for SyncMsg {
    fn to_string_lossy(&self) -> String {
        match self {
            SyncMsg::Refused(e) => e.to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// A publisher of one site sees where its own site is held, not where
/// other tenants' sites are.
#[tokio::test]
async fn a_publisher_sees_only_its_own_sites_in_nodes() -> Result<()> {
    let net = maki_e2e::network(1)?;
    let home = net.tmp.path().join("tenant");
    std::fs::create_dir_all(&home)?;
    let tenant = maki_e2e::Maki::new(&home, Some(&net.nodes[0].ticket));
    let key = tenant.key()?;
    net.admin
        .ok(&["site", "add", "mine.test", "--publisher", &key])?;
    net.admin.ok(&["site", "add", "theirs.test"])?;
    let site = net.tmp.path().join("site");
    maki_e2e::copy_dir(&maki_e2e::example_site(), &site)?;
    let dir = site.to_string_lossy();
    tenant.ok(&["publish", &dir, "--site", "mine.test"])?;
    net.admin.ok(&["publish", &dir, "--site", "theirs.test"])?;
    let admin_view = net.admin.ok(&["nodes", "--json"])?;
    ensure!(
        admin_view.contains("mine.test") && admin_view.contains("theirs.test"),
        "{admin_view}"
    );
    let tenant_view = tenant.ok(&["nodes", "--json"])?;
    ensure!(
        tenant_view.contains("mine.test") && !tenant_view.contains("theirs.test"),
        "{tenant_view}"
    );
    Ok(())
}

/// A member may read blobs from another member, but not push one nobody
/// asked for; once revoked it cannot read either.
#[tokio::test]
async fn a_member_cannot_push_unasked_blobs_and_a_revoked_one_cannot_read() -> Result<()> {
    use iroh_blobs::{
        HashAndFormat,
        protocol::{ChunkRangesSeq, PushRequest},
        store::mem::MemStore,
    };
    let net = maki_e2e::network(2)?;
    net.admin.ok(&["site", "add", "m.test"])?;
    let site = net.tmp.path().join("site");
    maki_e2e::copy_dir(&maki_e2e::example_site(), &site)?;
    net.admin.ok(&[
        "publish",
        &site.to_string_lossy(),
        "--site",
        "m.test",
        "--wait",
    ])?;
    let index = iroh_blobs::Hash::from_bytes(
        *blake3::hash(&std::fs::read(site.join("index.html"))?).as_bytes(),
    );

    // Node 1's key, used from outside its process (stopped first).
    let mut nodes = net.nodes;
    let second = nodes.remove(1);
    let key = makiatto::identity::load_key(&second.dir)?;
    let member_id = second.id()?;
    second.stop()?;
    let ticket: NodeTicket = nodes[0].ticket.parse()?;
    let mut addr = EndpointAddr::new(iroh::PublicKey::from_bytes(ticket.id.as_bytes())?);
    for a in &ticket.addrs {
        addr = addr.with_ip_addr(*a);
    }
    let ep = makiatto::endpoint::bind(&key, "127.0.0.1:0".parse()?, Default::default()).await?;

    // Positive control: as a member it reads a blob.
    let store = MemStore::new();
    let conn = ep.connect(addr.clone(), iroh_blobs::ALPN).await?;
    store
        .remote()
        .fetch(conn.clone(), HashAndFormat::raw(index))
        .await?;
    ensure!(store.has(index).await?, "a member could not read a blob");

    // A push nobody asked for is refused and lands nowhere.
    let junk = b"pushed without a publish".to_vec();
    let tag = store.add_bytes(junk.clone()).temp_tag().await?;
    // The pusher may not hear of the refusal (a push is sent, then judged);
    // what matters is that nothing lands, and the node says why.
    let _ = store
        .remote()
        .execute_push(conn, PushRequest::new(tag.hash(), ChunkRangesSeq::root()))
        .await;
    maki_e2e::wait_for(
        Duration::from_secs(10),
        "the refusal in the log",
        || async { Ok(nodes[0].log().contains("refused a push nobody asked for")) },
    )
    .await?;
    let probe = MemStore::new();
    let conn = ep.connect(addr.clone(), iroh_blobs::ALPN).await?;
    let got = probe
        .remote()
        .fetch(conn, HashAndFormat::raw(tag.hash()))
        .await;
    ensure!(got.is_err(), "the unasked blob landed on the node");

    // Revoked: its reads are refused.
    net.admin.ok(&["nodes", "remove", &member_id])?;
    let fresh = MemStore::new();
    let conn = ep.connect(addr, iroh_blobs::ALPN).await?;
    let got = fresh.remote().fetch(conn, HashAndFormat::raw(index)).await;
    ensure!(got.is_err(), "a revoked node read a blob");
    ensure!(!fresh.has(index).await?, "a revoked node holds the blob");
    ep.close().await;
    Ok(())
}

/// Revocation holds: a revoked node cannot come back as a member under a
/// new key, with or without the ticket it joined with, and no member can
/// become another node by naming an invite it did not redeem.
#[tokio::test]
async fn a_revoked_node_cannot_return_under_a_new_key() -> Result<()> {
    use maki_protocol::{Admission, InviteTicket, NODE_FORMAT, invite_key};
    let net = maki_e2e::one_node()?;
    let ticket_text = net.admin.ok(&["invite"])?.trim().to_owned();
    let ticket: InviteTicket = ticket_text.parse()?;
    let joiner_dir = net.tmp.path().join("joiner");
    let joiner = maki_e2e::NodeProc::join(&joiner_dir, &ticket_text)?;
    let joiner_id = joiner.id()?;
    let admin = net.admin.clone();
    maki_e2e::wait_for(
        Duration::from_secs(20),
        "the joiner to be a member",
        || async { Ok(admin.ok(&["nodes"])?.contains(&joiner_id)) },
    )
    .await?;
    joiner.stop()?;
    net.admin.ok(&["nodes", "remove", &joiner_id])?;

    let issuer: NodeTicket = net.node.ticket.parse()?;
    let mut addr = EndpointAddr::new(iroh::PublicKey::from_bytes(issuer.id.as_bytes())?);
    for a in &issuer.addrs {
        addr = addr.with_ip_addr(*a);
    }
    let network = makiatto::identity::load_genesis(&net.node.dir)?.id;
    // What the revoked machine still has: its invite, and the ticket.
    let membership =
        makiatto::identity::load_membership(&joiner_dir)?.context("the joiner's membership")?;
    let invite = membership.invite.verify()?;
    let key = SecretKey::from_bytes(&[43; 32]);
    let ep = makiatto::endpoint::bind(&key, "127.0.0.1:0".parse()?, Default::default()).await?;
    let record = |admission| {
        Signed::sign(
            &key,
            &NodeRecord {
                format: NODE_FORMAT,
                id: key.public(),
                addrs: vec![],
                region: None,
                location: None,
                version: 1,
                invite: Some(invite.secret_hash),
                roles: vec![],
                admission,
                ips: vec![],
                mesh: None,
                ports: vec![],
                seal: None,
            },
        )
    };
    let attempts = [
        // The invite's name alone (every member knows it).
        ("no admission", None),
        // The old admission: it names the revoked node, not this key.
        (
            "the revoked node's admission",
            Some(membership.admission.clone()),
        ),
        // Signed with the ticket's key: a ticket admits nobody by itself
        // (only the issuer, after its checks, does).
        (
            "an admission from the kept ticket",
            Some(Signed::sign(
                &invite_key(&ticket.secret),
                &Admission {
                    invite: invite.secret_hash,
                    node: key.public(),
                },
            )),
        ),
        // Signed by the issuer itself (as a compromised issuer could): the
        // invite already admitted a node, and admits nobody else.
        (
            "a second admission from the issuer",
            Some(Signed::sign(
                &makiatto::identity::load_key(&net.node.dir)?,
                &Admission {
                    invite: invite.secret_hash,
                    node: key.public(),
                },
            )),
        ),
    ];
    for (what, admission) in attempts {
        let conn = ep.connect(addr.clone(), SYNC_ALPN).await?;
        let answer = hello(
            &conn,
            &SyncMsg::Hello {
                format: SYNC_FORMAT,
                network,
                me: record(admission),
                invite: Some(membership.invite.clone()),
                holds_seen: None,
            },
        )
        .await?;
        ensure!(
            matches!(answer, SyncMsg::Refused(SyncError::NotMember(_))),
            "{what}: {answer:?}"
        );
    }
    let listed = net.admin.ok(&["nodes"])?;
    ensure!(
        !listed.contains(&key.public().to_string()) && !listed.contains(&joiner_id),
        "{listed}"
    );
    Ok(())
}
