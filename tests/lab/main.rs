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
        Self::with_mode(n, "userspace")
    }

    /// [`Self::new`] with `mesh = MODE` on every node.
    fn with_mode(n: usize, mode: &str) -> Result<Self> {
        Self::build(n, 0, mode)
    }

    /// `n` nodes with `mesh = MODE`, and `spare` more hosts after them
    /// that run no node.
    fn build(n: usize, spare: usize, mode: &str) -> Result<Self> {
        let lab = Lab::new(n + spare)?;
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
            let mut args = vec!["--http", &http, "--p2p", &p2p, "--mesh", mode];
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
            let meshed = out
                .lines()
                .filter(|l| l.contains("(userspace)") || l.contains("(kernel)"))
                .count();
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
    // No member tried a members-only protocol from outside the mesh (the
    // endpoint would have refused it at the handshake).
    for (i, n) in net.nodes.iter().enumerate() {
        ensure!(
            !n.log().contains("rejected locally"),
            "node {i} refused a connection:\n{}",
            n.log()
        );
    }
    Ok(())
}

impl MeshNet {
    /// The admin's CLI run inside host `i`, pointed at its node.
    fn admin_in(&self, i: usize) -> Maki {
        let mut m = Maki::new(&self.admin.home, Some(&self.nodes[i].ticket));
        m.wrap = self.lab.wrap(i);
        m
    }

    /// Publishes `site` (its index.html saying `body`) through `admin`
    /// without waiting for other nodes.
    fn publish(&self, admin: &Maki, site: &Path, body: &str) -> Result<()> {
        std::fs::write(site.join("index.html"), body)?;
        admin.ok(&[
            "publish",
            site.to_str().context("path")?,
            "--site",
            "lab.test",
        ])?;
        Ok(())
    }

    /// What host `i` serves at / of lab.test, asked from inside it (a
    /// host cut off is out of the test's reach), by curl.
    fn served(&self, i: usize) -> Option<String> {
        let url = format!("http://{}:80/", self.lab.hosts[i].ip);
        self.lab
            .exec(
                i,
                "curl",
                &["-sf", "--max-time", "2", "-H", "Host: lab.test", &url],
            )
            .ok()
    }

    /// Waits until host `i` serves `body` at /.
    async fn serves(&self, i: usize, body: &str) -> Result<()> {
        wait_for(CONVERGE, &format!("host {i} to serve {body:?}"), || async {
            Ok(self.served(i).as_deref() == Some(body))
        })
        .await
        .with_context(|| self.logs())?;
        Ok(())
    }

    /// A site added and published once (v1), served by every host.
    async fn with_site(&self) -> Result<std::path::PathBuf> {
        self.admin.ok(&["site", "add", "lab.test"])?;
        let site = self.tmp.path().join("site");
        copy_dir(&example_site(), &site)?;
        self.publish(&self.admin, &site, "v1")?;
        for i in 0..self.nodes.len() {
            self.serves(i, "v1").await?;
        }
        Ok(site)
    }
}

#[tokio::test]
#[ignore = "needs root: network namespaces and /dev/net/tun (.ci/run runs it)"]
async fn a_host_cut_off_leaves_the_others_serving_and_converges_when_back() -> Result<()> {
    let net = MeshNet::new(3)?;
    net.meshed().await.with_context(|| net.logs())?;
    let site = net.with_site().await?;

    net.lab.cut(2)?;
    net.publish(&net.admin, &site, "v2")?;
    net.serves(0, "v2").await?;
    net.serves(1, "v2").await?;
    // Cut off, it keeps what it had (its own visitors still get v1).
    let inside = net.lab.exec(2, "sh", &["-c", "true"]);
    ensure!(inside.is_ok(), "the host itself is still there");

    net.lab.restore(2)?;
    net.serves(2, "v2").await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs root: network namespaces and /dev/net/tun (.ci/run runs it)"]
async fn a_partition_with_a_publish_on_each_side_heals_to_one_head() -> Result<()> {
    let net = MeshNet::new(3)?;
    net.meshed().await.with_context(|| net.logs())?;
    let site = net.with_site().await?;

    // 2 + 1: host 2 alone, its admin inside it.
    net.lab.cut(2)?;
    let alone = net.admin_in(2);
    net.publish(&net.admin, &site, "left")?;
    net.publish(&alone, &site, "right")?;
    net.serves(0, "left").await?;
    net.serves(1, "left").await?;
    net.serves(2, "right").await?;

    // Healed: both sides now hold two heads of the same sequence number;
    // last-writer-wins keeps the same one everywhere.
    net.lab.restore(2)?;
    wait_for(CONVERGE, "one head everywhere", || async {
        let seen: Vec<_> = (0..3).map(|i| net.served(i)).collect();
        Ok(seen[0].is_some() && seen.iter().all(|b| b == &seen[0]))
    })
    .await
    .with_context(|| net.logs())?;
    let winner = net.served(0).context("served")?;
    ensure!(winner == "left" || winner == "right", "{winner:?}");
    // Every node names the same manifest as current.
    let sites: Vec<String> = (0..3)
        .map(|i| {
            let line = net
                .admin_in(i)
                .ok(&["sites"])?
                .lines()
                .find(|l| l.starts_with("lab.test"))
                .map(str::to_owned)
                .context("lab.test listed")?;
            Ok(line)
        })
        .collect::<Result<_>>()?;
    ensure!(sites.iter().all(|s| s == &sites[0]), "{sites:#?}");
    Ok(())
}

/// A member's own key, used from outside the mesh (the test process, on
/// the bridge), is refused every members-only protocol at the handshake,
/// though the same member inside the mesh is served: members talk over
/// the mesh only. The public doors (admin here) stay open.
#[tokio::test]
#[ignore = "needs root: network namespaces and /dev/net/tun (.ci/run runs it)"]
async fn members_only_protocols_refuse_a_member_from_outside_the_mesh() -> Result<()> {
    use maki_protocol::{
        NodeTicket,
        rpc::ADMIN_ALPN,
        sync::{GOSSIP_ALPN, SYNC_ALPN},
    };
    let mut net = MeshNet::new(2)?;
    net.meshed().await.with_context(|| net.logs())?;
    // Node 1's key, used from the bridge after it stops.
    let second = net.nodes.remove(1);
    let key = makiatto::identity::load_key(&second.dir)?;
    second.stop()?;
    let ticket: NodeTicket = net.nodes[0].ticket.parse()?;
    let mut addr = iroh::EndpointAddr::new(iroh::PublicKey::from_bytes(ticket.id.as_bytes())?);
    for a in &ticket.addrs {
        addr = addr.with_ip_addr(*a);
    }
    let bind = format!("{}:0", net.lab.gateway).parse()?;
    let ep = makiatto::endpoint::bind(&key, bind, Default::default()).await?;
    for alpn in [SYNC_ALPN, GOSSIP_ALPN, iroh_blobs::ALPN] {
        let conn = ep.connect(addr.clone(), alpn).await?;
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        let reason = format!("{closed:?}");
        ensure!(
            reason.contains("421") || reason.contains("over the mesh"),
            "{}: not refused: {reason}",
            String::from_utf8_lossy(alpn)
        );
    }
    // A public door: the handshake is kept.
    let conn = ep.connect(addr, ADMIN_ALPN).await?;
    ensure!(
        tokio::time::timeout(Duration::from_millis(500), conn.closed())
            .await
            .is_err(),
        "admin was closed from outside the mesh"
    );
    Ok(())
}

/// `auto` picks kernel WireGuard where the kernel has it, else the
/// userspace device, and says which and why.
#[tokio::test]
#[ignore = "needs root: network namespaces and /dev/net/tun (.ci/run runs it)"]
async fn auto_picks_a_backend_and_says_why() -> Result<()> {
    let net = MeshNet::with_mode(2, "auto")?;
    net.meshed().await.with_context(|| net.logs())?;
    let kernel = Path::new("/sys/module/wireguard").exists()
        || std::process::Command::new("modprobe")
            .arg("wireguard")
            .status()
            .is_ok_and(|s| s.success());
    let (backend, why) = if kernel {
        ("(kernel)", "the kernel has WireGuard")
    } else {
        ("(userspace)", "the kernel has no WireGuard")
    };
    let nodes = net.admin.ok(&["nodes"])?;
    ensure!(nodes.lines().all(|l| l.contains(backend)), "{nodes}");
    for n in &net.nodes {
        ensure!(n.log().contains(why), "{}", n.log());
    }
    Ok(())
}

/// The kernel backend end to end. `.ci/run` skips it where the module is
/// missing (as on the machines this was written on).
#[tokio::test]
#[ignore = "needs the wireguard kernel module (and root)"]
async fn with_kernel_wireguard_three_hosts_mesh_and_serve() -> Result<()> {
    let net = MeshNet::with_mode(3, "kernel")?;
    net.meshed().await.with_context(|| net.logs())?;
    let _site = net.with_site().await?;
    Ok(())
}

/// `maki peer add` lets a machine outside the network into the mesh: the
/// wg-quick file it prints, run by Debian's own `wg-quick` with
/// `wireguard-go`, reaches a node's mesh address with a real client (the
/// admin CLI, over the mesh). `maki peer remove` shuts it out again.
#[tokio::test]
#[ignore = "needs root, wireguard-tools and wireguard-go (.ci/run installs them)"]
async fn an_external_peer_joins_the_mesh_with_the_printed_wg_quick_file() -> Result<()> {
    use maki_protocol::NodeTicket;
    let net = MeshNet::build(2, 1, "userspace")?;
    net.meshed().await.with_context(|| net.logs())?;
    let outside = 2;
    let private = net.lab.exec(outside, "wg", &["genkey"])?;
    let public = {
        let mut child = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, private.as_bytes())?;
        String::from_utf8(child.wait_with_output()?.stdout)?
    };
    let conf = net
        .admin
        .ok(&["peer", "add", "laptop", "--key", public.trim()])?;
    ensure!(conf.matches("[Peer]").count() == 2, "{conf}");
    let conf = conf.replace("<the private key of the key you added>", private.trim());
    // wg-quick names the interface after the file; wireguard-go's socket
    // sits in the host's /var/run/wireguard, so the name is this run's.
    let ifname = format!("mkx{}", std::process::id() % 100_000);
    let file = net.tmp.path().join(format!("{ifname}.conf"));
    std::fs::write(&file, conf)?;
    let up = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.lab.hosts[outside].ns,
            "wg-quick",
            "up",
        ])
        .arg(&file)
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .output()?;
    ensure!(
        up.status.success(),
        "wg-quick up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let down = || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.lab.hosts[outside].ns,
                "wg-quick",
                "down",
            ])
            .arg(&file)
            .output()
    };

    // The admin CLI inside the outside host, pointed at node 0's mesh
    // address only.
    let first: NodeTicket = net.nodes[0].ticket.parse()?;
    let network = makiatto::identity::load_genesis(&net.nodes[0].dir)?.id;
    let mesh_addr = maki_protocol::mesh::member_addr(&network, &first.id);
    let over_mesh = NodeTicket {
        id: first.id,
        addrs: vec![std::net::SocketAddr::new(mesh_addr.into(), 51821)],
    };
    let mut laptop = Maki::new(&net.admin.home, Some(&over_mesh.to_string()));
    laptop.wrap = net.lab.wrap(outside);
    let result = async {
        let nodes = laptop.ok(&["nodes"])?;
        ensure!(nodes.lines().count() == 2, "{nodes}");

        net.admin.ok(&["peer", "remove", "laptop"])?;
        wait_for(CONVERGE, "the peer to be shut out", || async {
            Ok(!laptop.output(&["nodes"])?.status.success())
        })
        .await?;
        Ok(())
    }
    .await;
    let _ = down();
    result.with_context(|| net.logs())
}
