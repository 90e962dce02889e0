//! The quick start: builds both binaries, starts a node on loopback (no
//! root), publishes `examples/site` and prints what to open. Ctrl-C stops it.

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
    let data = work.path().join("node");
    NodeProc::init(&data, std::slice::from_ref(&admin))?;
    let node = NodeProc::start(&data)?;
    let maki = Maki::new(&home, Some(&node.ticket));
    maki.ok(&["site", "add", SITE])?;
    let site = example_site().canonicalize()?;
    let out = maki.ok(&["publish", &site.to_string_lossy(), "--site", SITE])?;
    print!("{out}");
    let port = node.http.port();
    println!();
    println!("Open  http://{SITE}:{port}/   (*.localhost resolves to this machine)");
    println!("or    curl -H 'Host: {SITE}' http://{}/", node.http);
    println!();
    println!("Publish again after editing the site (a copy, say):");
    println!(
        "      MAKI_HOME={} {} publish <dir> --site {SITE} --node {}",
        home.display(),
        bins.maki.display(),
        node.ticket
    );
    println!("Node data: {}   Press Ctrl-C to stop.", data.display());
    wait_for_ctrl_c()?;
    node.stop()?;
    Ok(())
}

fn wait_for_ctrl_c() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}
