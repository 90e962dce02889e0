//! Joining a network with invite tickets: one-time, expiring, admin-made.

use anyhow::{Result, ensure};
use std::time::Duration;

use maki_e2e::{Maki, NodeProc, OneNode, one_node, wait_for};
use maki_protocol::InviteTicket;

struct Net {
    tmp: tempfile::TempDir,
    first: NodeProc,
    admin: Maki,
}

fn network() -> Result<Net> {
    let OneNode { tmp, node, admin } = one_node()?;
    Ok(Net {
        tmp,
        first: node,
        admin,
    })
}

#[tokio::test]
async fn an_invite_admits_exactly_one_node() -> Result<()> {
    let net = network()?;
    let ticket = net
        .admin
        .ok(&["invite", "--expires", "1h"])?
        .trim()
        .to_owned();
    ensure!(ticket.starts_with("makinvite1"), "{ticket}");

    let n2 = net.tmp.path().join("n2");
    let second = NodeProc::join_with(
        &n2,
        &ticket,
        &["--region", "eu", "--lat", "50.11", "--lon", "8.68"],
    )?;
    ensure!(second.ticket != net.first.ticket);
    // Same network: the joined node holds the very same genesis record.
    ensure!(
        std::fs::read(n2.join("genesis.bin"))? == std::fs::read(net.first.dir.join("genesis.bin"))?
    );
    ensure!(net.first.log().contains("invite redeemed"));

    // Replayed: refused, and nothing is written.
    let n3 = net.tmp.path().join("n3");
    let err = NodeProc::join_fails(&n3, &ticket)?;
    ensure!(err.contains("already used"), "{err}");
    ensure!(!n3.exists(), "a refused join must write nothing");

    // The joiner introduces itself: the issuer soon lists both, and the
    // joiner's record carries its location.
    wait_for(
        Duration::from_secs(15),
        "the issuer to list the joiner",
        || async { Ok(net.admin.ok(&["nodes"])?.lines().count() == 2) },
    )
    .await?;
    let at_second = Maki::new(&net.admin.home, Some(&second.ticket));
    let nodes = at_second.ok(&["nodes", "--json"])?;
    ensure!(
        nodes.contains("\"region\": \"eu\"") && nodes.contains("50.11"),
        "{nodes}"
    );
    // …and it started from the issuer's records: it knows the founder too.
    let listed = at_second.ok(&["nodes"])?;
    ensure!(listed.lines().count() == 2, "{listed}");

    // The joined node restarts with `run` as a node of the network.
    let data = second.dir.clone();
    second.stop()?;
    let again = NodeProc::start(&data)?;
    ensure!(
        std::fs::read(data.join("genesis.bin"))?
            == std::fs::read(net.first.dir.join("genesis.bin"))?
    );
    drop(again);
    Ok(())
}

#[tokio::test]
async fn bad_invites_are_refused_with_reasons() -> Result<()> {
    let net = network()?;

    // Expired: valid for two seconds (whole seconds, so at least one), used after.
    let short = net
        .admin
        .ok(&["invite", "--expires", "2s"])?
        .trim()
        .to_owned();
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let dir = net.tmp.path().join("late");
    let err = NodeProc::join_fails(&dir, &short)?;
    ensure!(err.contains("expired"), "{err}");
    ensure!(!dir.exists());

    // A secret the issuer never made.
    let good: InviteTicket = net.admin.ok(&["invite"])?.trim().parse()?;
    let mut forged = good.clone();
    forged.secret[0] ^= 1;
    let err = NodeProc::join_fails(&net.tmp.path().join("forged"), &forged.to_string())?;
    ensure!(err.contains("does not know that invite"), "{err}");

    // Another network's ticket.
    let mut other = good.clone();
    other.network = maki_protocol::Hash::of(b"elsewhere");
    let err = NodeProc::join_fails(&net.tmp.path().join("other"), &other.to_string())?;
    ensure!(err.contains("another network"), "{err}");

    // Garbage. A malformed ticket is a secret cut short: never echoed.
    let err = NodeProc::join_fails(&net.tmp.path().join("junk"), "makinvite1zzzz")?;
    ensure!(err.contains("ticket"), "{err}");
    let cut = &good.to_string()[..40];
    let err = NodeProc::join_fails(&net.tmp.path().join("cut"), cut)?;
    ensure!(
        err.contains("not valid") && !err.contains(&cut[10..]),
        "{err}"
    );
    let home = net.tmp.path().join("cli");
    std::fs::create_dir_all(&home)?;
    let cut_node = &net.first.ticket[..40];
    let err = Maki::new(&home, Some(cut_node)).fails(&["nodes"])?;
    ensure!(
        err.contains("not valid") && !err.contains(&cut_node[9..]),
        "{err}"
    );

    // Only admins make invites.
    let home = net.tmp.path().join("stranger");
    std::fs::create_dir_all(&home)?;
    let stranger = Maki::new(&home, Some(&net.first.ticket));
    let err = stranger.fails(&["invite"])?;
    ensure!(err.contains("is not an admin"), "{err}");
    ensure!(
        net.admin
            .fails(&["invite", "--expires", "soon"])?
            .contains("duration")
    );

    // The untouched invite still works after all that.
    let n2 = net.tmp.path().join("n2");
    let _second = NodeProc::join(&n2, &good.to_string())?;
    Ok(())
}

/// A joined node that lost the file proving its membership does not start
/// as a stranger: it says what is missing and how to recover.
#[tokio::test]
async fn a_joined_node_without_its_invite_file_says_what_is_missing() -> Result<()> {
    let mut net = maki_e2e::network(2)?;
    let second = net.nodes.remove(1);
    let dir = second.dir.clone();
    second.stop()?;
    std::fs::remove_file(dir.join("invite.bin"))?;
    let Err(e) = NodeProc::start(&dir) else {
        anyhow::bail!("the node started without its membership");
    };
    ensure!(e.to_string().contains("lacks invite.bin"), "{e}");
    Ok(())
}
