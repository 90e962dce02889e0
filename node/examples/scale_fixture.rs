//! Builds the state `bench/scale.sh` measures, in a data directory made by
//! `makiatto init` whose genesis names the admin key in ADMIN_KEY_FILE:
//! SITES sites, each with a head whose one-file manifest the node holds (so
//! replication is idle), and NODES member node records, each with the
//! invite behind it. Every record is signed and taken in through the normal
//! record path (`Records::apply`); each version is committed as a publish
//! commits it (version tag, then head and version in one transaction).
//!
//!   scale_fixture DATA_DIR ADMIN_KEY_FILE SITES NODES [FIRST_SITE]
//!     (FIRST_SITE: number the sites from there, to add more later)
//!   scale_fixture --member DATA_DIR ADMIN_KEY_FILE INDEX
//!     (turns a copy of a fixture's data dir into member INDEX of its
//!      NODES: that node's key and the invite it redeemed)

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result, bail};
use maki_protocol::{
    Admission, Domain, Entry, Hash, Head, Invite, MANIFEST_FORMAT, Manifest, NODE_FORMAT,
    NodeRecord, RECORD_FORMAT, Record, SecretKey, Signed, SitePath, SiteRecord, invite_key,
    sync::apply_rank,
};
use makiatto::{
    content::{Content, version_tag},
    directory::Authority,
    identity,
    node::blobs_dir,
    records::Records,
    state::State,
};

/// Records taken in per transaction.
const BATCH: usize = 1000;

fn member_key(i: usize) -> SecretKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    seed[31] = 0x5c;
    SecretKey::from_bytes(&seed)
}

/// The secret of member `i`'s invite.
fn secret(i: usize) -> [u8; 32] {
    *Hash::of(format!("scale invite {i}").as_bytes()).as_bytes()
}

fn invite(
    admin: &SecretKey,
    network: Hash,
    issuer: maki_protocol::PublicKey,
    i: usize,
) -> Signed<Invite> {
    Signed::sign(
        admin,
        &Invite {
            format: RECORD_FORMAT,
            network,
            secret_hash: Hash::of(&secret(i)),
            expires: u64::MAX,
            issuer,
            key: invite_key(&secret(i)).public(),
        },
    )
}

/// Member `i`'s admission through its invite, signed by its issuer.
fn admission(issuer: &SecretKey, i: usize) -> Signed<Admission> {
    Signed::sign(
        issuer,
        &Admission {
            invite: Hash::of(&secret(i)),
            node: member_key(i).public(),
        },
    )
}

fn admin_key(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let hash: Hash = text.trim().parse().context("the admin key file")?;
    Ok(SecretKey::from_bytes(hash.as_bytes()))
}

fn apply(records: &Records, batch: &mut Vec<Record>) -> Result<()> {
    batch.sort_by_key(apply_rank);
    for verdict in records.apply(batch)? {
        verdict.context("a fixture record was refused")?;
    }
    batch.clear();
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--member") {
        let [_, dir, key_file, index] = args.as_slice() else {
            bail!("usage: scale_fixture --member DATA_DIR ADMIN_KEY_FILE INDEX");
        };
        let dir = Path::new(dir);
        let admin = admin_key(Path::new(key_file))?;
        let network = identity::load_genesis(dir)?.id;
        let founder_key = identity::load_key(dir)?;
        let founder = founder_key.public();
        let i: usize = index.parse()?;
        // A copy of the founder's directory: it becomes another node.
        std::fs::remove_file(dir.join("node.key"))?;
        identity::write_key(dir, &member_key(i))?;
        identity::write_membership(
            dir,
            &identity::Membership {
                invite: invite(&admin, network, founder, i),
                admission: admission(&founder_key, i),
            },
        )?;
        return Ok(());
    }
    let [dir, key_file, sites, nodes, rest @ ..] = args.as_slice() else {
        bail!("usage: scale_fixture DATA_DIR ADMIN_KEY_FILE SITES NODES [FIRST_SITE]");
    };
    let dir = Path::new(dir);
    let admin = admin_key(Path::new(key_file))?;
    let (sites, nodes): (usize, usize) = (sites.parse()?, nodes.parse()?);
    let first: usize = rest.first().map_or(Ok(0), |s| s.parse())?;
    let key = identity::load_key(dir)?;
    let network = identity::load_genesis(dir)?;
    let genesis = network.signed.verify()?;
    if !genesis.admins.contains(&admin.public()) {
        bail!(
            "the admin key is not an admin of the network in {}",
            dir.display()
        );
    }
    let state = Arc::new(State::open(&dir.join("state.redb"))?);
    let records = Records::load(
        state.clone(),
        Authority {
            network: network.id,
            admins: genesis.admins,
            founder: network.signed.signer(),
        },
    )?;
    let content = Content::load(&blobs_dir(dir), None).await?;
    let mut batch = Vec::with_capacity(BATCH);

    if first == 0 {
        for i in 0..nodes {
            let node = member_key(i);
            let invite = invite(&admin, network.id, key.public(), i);
            let secret_hash = invite.verify()?.secret_hash;
            batch.push(Record::Invite(invite));
            batch.push(Record::Node(Signed::sign(
                &node,
                &NodeRecord {
                    format: NODE_FORMAT,
                    id: node.public(),
                    // Unreachable by design: members that never answer.
                    addrs: vec![format!("127.0.0.1:{}", 1 + i % 1000).parse()?],
                    region: None,
                    location: None,
                    version: 1,
                    invite: Some(secret_hash),
                    roles: vec![],
                    admission: Some(admission(&key, i)),
                    ips: vec![],
                    mesh: None,
                    ports: vec![],
                    seal: None,
                    #[cfg(feature = "next-format")]
                    note: None,
                },
            )));
            if batch.len() >= BATCH {
                apply(&records, &mut batch)?;
            }
        }
        apply(&records, &mut batch)?;
    }

    for i in first..first + sites {
        let domain = Domain::new(&format!("s{i}.scale.test"))?;
        let body = format!("<p>site {i}</p>\n").into_bytes();
        let (blob, _blob_tag) = content.add_bytes(body.clone().into()).await?;
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            site: domain.clone(),
            version: 1,
            parent: None,
            created: 0,
            entries: Default::default(),
            headers: vec![],
            redirects: vec![],
        };
        manifest.entries.insert(
            SitePath::new("index.html")?,
            Entry {
                hash: blob,
                size: body.len() as u64,
                content_type: "text/html; charset=utf-8".into(),
                encodings: Default::default(),
            },
        );
        let (hash, _manifest_tag) = content.add_bytes(manifest.to_bytes().into()).await?;
        content
            .protect(&version_tag(&domain, hash), hash, [blob])
            .await?;
        let head = Head {
            site: domain.clone(),
            seq: 1,
            manifest: hash,
        };
        let signed = Signed::sign(&admin, &head);
        state.commit_head(&head, &signed, Some(1), 10)?;
        batch.push(Record::Site(Signed::sign(
            &admin,
            &SiteRecord {
                format: RECORD_FORMAT,
                domain,
                aliases: vec![],
                publishers: vec![admin.public()],
                version: 1,
                removed: false,
                heads_after: 0,
            },
        )));
        batch.push(Record::Head(signed));
        if batch.len() >= BATCH {
            apply(&records, &mut batch)?;
        }
    }
    apply(&records, &mut batch)?;
    content.sync().await?;
    content.shutdown().await;
    let dir_now = records.directory();
    println!(
        "{} records: {} sites, {} members",
        dir_now.len(),
        dir_now.sites().count(),
        dir_now.members().count()
    );
    Ok(())
}
