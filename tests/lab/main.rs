//! Tests on a lab of hosts (network namespaces on one bridge, see
//! `maki_e2e::lab`), each running the real `makiatto`, with the WireGuard
//! mesh on. Root only: `.ci/run` runs them (`--include-ignored`).

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, ensure};
use maki_e2e::{Maki, NodeProc, body_of, copy_dir, example_site, lab::Lab, wait_for};

const CONVERGE: Duration = Duration::from_secs(30);

/// A network of `n` lab hosts, the mesh on in each: host 0 made it, the
/// others joined by invites from it. The admin's CLI runs outside, on the
/// bridge.
struct MeshNet {
    tmp: tempfile::TempDir,
    lab: Lab,
    nodes: Vec<NodeProc>,
    admin: Maki,
}

impl MeshNet {
    fn new(n: usize) -> Result<Self> {
        let lab = Lab::new(n)?;
        let tmp = tempfile::tempdir()?;
        let home = tmp.path().join("admin");
        std::fs::create_dir_all(&home)?;
        let admin = Maki::new(&home, None);
        let key = admin.key()?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = tmp.path().join(format!("n{i}"));
            let at = lab.hosts[i].ip;
            let http = format!("{at}:80");
            let p2p = format!("{at}:51821");
            let mut args = vec!["--http", &http, "--p2p", &p2p, "--mesh", "userspace"];
            let node = if i == 0 {
                let mut init = vec!["init", "--admin", &key];
                init.extend_from_slice(&args);
                let out = std::process::Command::new(maki_e2e::bins()?.makiatto)
                    .args(&init)
                    .arg("--data-dir")
                    .arg(&dir)
                    .output()?;
                ensure!(
                    out.status.success(),
                    "init: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                NodeProc::spawn_in(&lab.wrap(i), &dir, &["run"], dir.join("node.log"))?
            } else {
                let admin = Maki::new(&home, Some(&nodes_ticket(&nodes)?));
                let ticket = admin.ok(&["invite"])?.trim().to_owned();
                let mut join = vec!["join", ticket.as_str()];
                join.append(&mut args);
                NodeProc::spawn_in(&lab.wrap(i), &dir, &join, dir.with_extension("log"))?
            };
            nodes.push(node);
        }
        let admin = Maki::new(&home, Some(&nodes_ticket(&nodes)?));
        Ok(Self {
            tmp,
            lab,
            nodes,
            admin,
        })
    }

    /// Waits until the first node sees every node up, each on the mesh.
    async fn meshed(&self) -> Result<()> {
        let n = self.nodes.len();
        wait_for(CONVERGE, "every node up on the mesh", || async {
            let out = self.admin.ok(&["nodes"])?;
            let meshed = out.lines().filter(|l| l.contains("(userspace)")).count();
            let up = out.lines().filter(|l| l.contains("  up")).count();
            Ok(meshed == n && up == n - 1)
        })
        .await
        .with_context(|| format!("nodes:\n{}", self.admin.ok(&["nodes"]).unwrap_or_default()))?;
        Ok(())
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- node {i}\n{}", n.log()))
            .collect()
    }
}

fn nodes_ticket(nodes: &[NodeProc]) -> Result<String> {
    Ok(nodes.first().context("no node yet")?.ticket.clone())
}

/// Fills `dir` with one incompressible file of `size` bytes.
fn random_file(dir: &Path, name: &str, size: usize) -> Result<()> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = Vec::with_capacity(size);
    while buf.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(size);
    std::fs::write(dir.join(name), buf)?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs root: network namespaces and /dev/net/tun (.ci/run runs it)"]
async fn three_hosts_form_a_mesh_by_invite_publish_and_serve_over_it() -> Result<()> {
    let net = MeshNet::new(3)?;
    net.meshed().await.with_context(|| net.logs())?;
    // Before the publish: what the joins and introductions cost.
    let before: Vec<(u64, u64)> = (0..3)
        .map(|i| {
            Ok((
                net.lab.counter(i, "eth0", "rx_bytes")?,
                net.lab.counter(i, "maki0", "rx_bytes")?,
            ))
        })
        .collect::<Result<_>>()?;

    net.admin.ok(&["site", "add", "lab.test"])?;
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    const BIG: usize = 4 << 20;
    random_file(&site, "big.bin", BIG)?;
    let out = net.admin.ok(&[
        "publish",
        site.to_str().context("path")?,
        "--site",
        "lab.test",
        "--wait",
        "--timeout",
        "30s",
    ])?;
    ensure!(out.contains("all 3 nodes serve"), "{out}");
    for (i, h) in net.lab.hosts.iter().enumerate() {
        let body = body_of(format!("{}:80", h.ip).parse()?, "lab.test", "/big.bin").await;
        ensure!(
            body.map(|b| b.len()) == Some(BIG),
            "host {i} does not serve big.bin"
        );
    }

    // The content crossed the mesh: each node that fetched it took in
    // at least its size on maki0, and its underlay carried little more
    // than that (WireGuard's overhead), not a second copy beside it.
    for (i, (eth0, maki0)) in before.iter().enumerate().skip(1) {
        let eth = net.lab.counter(i, "eth0", "rx_bytes")? - eth0;
        let mesh = net.lab.counter(i, "maki0", "rx_bytes")? - maki0;
        ensure!(
            mesh >= BIG as u64,
            "host {i}: only {mesh} bytes came over maki0"
        );
        ensure!(
            eth < mesh + mesh / 5 + (256 << 10),
            "host {i}: {eth} bytes on eth0 for {mesh} on maki0: member traffic went around the mesh"
        );
    }
    Ok(())
}
