//! The quick start: builds both binaries, starts a network of three nodes
//! on loopback (no root; the second and third join with invites from the
//! first), publishes `examples/site` at the first, waits until all three
//! serve it and prints what to open. Ctrl-C stops them.

use anyhow::Result;
use maki_e2e::{Maki, NodeProc, example_site};

const SITE: &str = "example.localhost";

fn main() -> Result<()> {
    eprintln!("building makiatto and maki…");
    let bins = maki_e2e::build_bins()?;
    let work = tempfile::Builder::new()
        .prefix("makiatto-quickstart-")
        .tempdir()?;
    let home = work.path().join("maki-home");
    std::fs::create_dir_all(&home)?;
    let maki = Maki::new(&home, None);
    let admin = maki.key()?;
    let data = work.path().join("node1");
    NodeProc::init(&data, std::slice::from_ref(&admin))?;
    // The first node is a nameserver too (the dns role, at a free port).
    maki_e2e::set_config(&data, "roles", r#"["http", "dns"]"#)?;
    maki_e2e::set_config(&data, "dns", r#""127.0.0.1:0""#)?;
    let mut nodes = vec![NodeProc::start(&data)?];
    let maki = Maki::new(&home, Some(&nodes[0].ticket));
    for i in 2..=3 {
        let invite = maki.ok(&["invite", "--expires", "10m"])?;
        nodes.push(NodeProc::join(
            &work.path().join(format!("node{i}")),
            invite.trim(),
        )?);
    }
    eprintln!("three nodes are up; publishing examples/site at the first…");
    maki.ok(&["site", "add", SITE])?;
    let site = example_site().canonicalize()?;
    let out = maki.ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    print!("{out}");
    println!();
    for n in &nodes {
        println!("Open  http://{SITE}:{}/", n.http.port());
    }
    println!("(*.localhost resolves to this machine; any node serves the site)");
    println!("or    curl -H 'Host: {SITE}' http://{}/", nodes[0].http);
    if let Some(dns) = nodes[0].dns {
        println!(
            "Ask its nameserver which nodes serve it:  dig @{} -p {} {SITE} A",
            dns.ip(),
            dns.port()
        );
    }
    println!();
    println!("Publish again after editing the site (a copy, say), at any node:");
    println!(
        "      MAKI_HOME={} {} publish <dir> --site {SITE} --wait --node {}",
        home.display(),
        bins.maki.display(),
        nodes[2].ticket
    );
    println!(
        "See the members:  MAKI_HOME={} {} nodes --node {}",
        home.display(),
        bins.maki.display(),
        nodes[1].ticket
    );
    println!(
        "Node data: {}   Press Ctrl-C to stop.",
        work.path().display()
    );
    wait_for_ctrl_c()?;
    for n in nodes {
        n.stop()?;
    }
    Ok(())
}

fn wait_for_ctrl_c() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}
