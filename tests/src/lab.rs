//! A lab of hosts on one machine, for the tests in `tests/lab/` (root
//! only): each host is a network namespace with an `eth0` on one bridge,
//! and every command run in it (`ip netns exec`) also gets a mount
//! namespace of its own. The bridge carries the lab's own /24 in the
//! benchmarking range (198.18.0.0/15, RFC 2544) and the test process
//! reaches every host through it; no host has a route anywhere else, so
//! no traffic leaves what the lab made.
//!
//! A host's link can be limited (tbf), delayed (this kernel has no
//! netem: `maki-lab-delay`, a TUN device the host's outgoing lab traffic
//! is routed through), made lossy (nftables), cut and restored. [`Lab`]
//! removes everything it made when dropped, even after a failed test; a
//! lab left behind by a killed test run is removed by the next one.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use std::{path::Path, time::Duration};

use anyhow::{Context, Result, bail, ensure};

use crate::{Maki, NodeProc, copy_dir, example_site, wait_for};

/// How long a lab test waits for the network to get somewhere.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// The names of everything a lab makes start with this.
const PREFIX: &str = "mklab";

/// A lab host.
#[derive(Debug)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Its underlay address, on `eth0`.
    pub ip: Ipv4Addr,
    /// The bridge side of its link, in the root namespace.
    veth: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct Lab {
    bridge: String,
    /// The bridge's own address: where the test process is seen from.
    pub gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
    /// The lab's /24.
    net: [u8; 3],
    /// The `maki-lab-delay` processes, killed on drop.
    delays: Mutex<Vec<Child>>,
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A lab of `n` hosts.
    pub fn new(n: usize) -> Result<Self> {
        anyhow::ensure!(n < 200, "a lab has at most 199 hosts");
        sweep();
        let pid = std::process::id();
        let k = LABS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:06x}", (pid << 8 | (k & 0xff)) & 0xff_ffff);
        // One /24 per lab of this process, spread over the /15 by pid.
        let slot = (pid.wrapping_mul(7).wrapping_add(k)) % 512;
        let net = [198, 18 + (slot / 256) as u8, (slot % 256) as u8];
        let gateway = Ipv4Addr::new(net[0], net[1], net[2], 1);
        let bridge = format!("{PREFIX}{tag}");
        let mut lab = Self {
            bridge: bridge.clone(),
            gateway,
            hosts: Vec::new(),
            net,
            delays: Mutex::new(Vec::new()),
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..n {
            let ns = format!("{PREFIX}-{pid}-{k}-h{i}");
            let veth = format!("{PREFIX}{tag}{i}");
            let host_ip = Ipv4Addr::new(net[0], net[1], net[2], 10 + i as u8);
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(Host {
                ns: ns.clone(),
                ip: host_ip,
                veth: veth.clone(),
            });
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// The words that run a program in host `i`: `ip netns exec NS`.
    pub fn wrap(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.hosts[i].ns.clone(),
        ]
    }

    /// Runs `program ARGS` in host `i` and returns its stdout.
    pub fn exec(&self, i: usize, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, program])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{program} {} in host {i} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// A counter of interface `dev` in host `i`
    /// (`/sys/class/net/DEV/statistics/NAME`).
    pub fn counter(&self, i: usize, dev: &str, name: &str) -> Result<u64> {
        let path = format!("/sys/class/net/{dev}/statistics/{name}");
        Ok(self.exec(i, "cat", &[&path])?.trim().parse()?)
    }

    /// Limits host `i`'s link to `mbit` Mbit/s each way (tbf: on its
    /// `eth0` for what it sends, on the bridge's side for what it gets).
    pub fn limit(&self, i: usize, mbit: u32) -> Result<()> {
        let rate = format!("{mbit}mbit");
        // A burst of a few packets, a queue of ~100 ms at the rate.
        let burst = format!("{}", (mbit as u64 * 1_000_000 / 8 / 100).max(16 * 1024));
        let tbf = [
            "root", "tbf", "rate", &rate, "burst", &burst, "latency", "100ms",
        ];
        let mut inside = vec!["-n", &self.hosts[i].ns, "qdisc", "replace", "dev", "eth0"];
        inside.extend_from_slice(&tbf);
        run("tc", &inside)?;
        let mut outside = vec!["qdisc", "replace", "dev", &self.hosts[i].veth];
        outside.extend_from_slice(&tbf);
        run("tc", &outside)
    }

    /// Delays what host `i` sends into the lab by `ms` milliseconds: the
    /// round trip between two hosts is the sum of their delays. Once per
    /// host.
    pub fn delay(&self, i: usize, ms: u32) -> Result<()> {
        let ns = self.hosts[i].ns.as_str();
        let bin = crate::bins()?.makiatto.with_file_name("maki-lab-delay");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&bin)
            .args(["dly0", &ms.to_string()])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        self.delays
            .lock()
            .map_err(|_| anyhow::anyhow!("lab poisoned"))?
            .push(child);
        ensure!(line.trim() == "ready", "maki-lab-delay in host {i} failed");
        // What the host itself sends to the lab (`iif lo`) goes to the
        // device; what comes back out of it is forwarded to eth0 like any
        // routed packet, which needs forwarding on and the host's own
        // source address accepted on the device.
        let [a, b, c] = self.net;
        let sysctl = "echo 1 > /proc/sys/net/ipv4/ip_forward && \
            echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter && \
            echo 0 > /proc/sys/net/ipv4/conf/dly0/rp_filter && \
            echo 0 > /proc/sys/net/ipv4/conf/all/send_redirects && \
            echo 1 > /proc/sys/net/ipv4/conf/dly0/accept_local";
        self.exec(i, "sh", &["-c", sysctl])?;
        let host = self.hosts[i].ip.to_string();
        ip(&["-n", ns, "link", "set", "dly0", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{a}.{b}.{c}.0/24"),
            "dev",
            "dly0",
            "src",
            &host,
            "table",
            "100",
        ])?;
        ip(&[
            "-n", ns, "rule", "add", "iif", "lo", "priority", "100", "lookup", "100",
        ])
    }

    /// Drops `percent` % of what host `i` sends, at random (nftables).
    pub fn lose(&self, i: usize, percent: u32) -> Result<()> {
        ensure!(percent <= 100, "{percent} is not a percentage");
        let nft = |args: &[&str]| self.exec(i, "nft", args).map(|_| ());
        nft(&["add", "table", "inet", PREFIX])?;
        nft(&[
            "add",
            "chain",
            "inet",
            PREFIX,
            "out",
            "{ type filter hook postrouting priority 0; }",
        ])?;
        nft(&["flush", "chain", "inet", PREFIX, "out"])?;
        let pct = percent.to_string();
        let mut rule = vec!["add", "rule", "inet", PREFIX, "out", "oifname", "eth0"];
        match percent {
            0 => return Ok(()),
            100 => {}
            _ => rule.extend(["numgen", "random", "mod", "100", "<", &pct]),
        }
        rule.push("drop");
        nft(&rule)?;
        Ok(())
    }

    /// Starts counting the UDP packets of `port` (either end) that cross
    /// host `i`'s `eth0`, both ways, with `peer` only if given (nftables);
    /// [`Self::udp_bytes`] reads the count.
    pub fn count_udp(&self, i: usize, port: u16, peer: Option<Ipv4Addr>) -> Result<()> {
        let nft = |args: &[&str]| self.exec(i, "nft", args).map(|_| ());
        let table = format!("{PREFIX}_count");
        let port = port.to_string();
        let peer = peer.map(|p| p.to_string());
        nft(&["add", "table", "inet", &table])?;
        for (chain, hook, dev, end) in [
            ("in", "input", "iifname", "saddr"),
            ("out", "output", "oifname", "daddr"),
        ] {
            let spec = format!("{{ type filter hook {hook} priority 0; }}");
            nft(&["add", "chain", "inet", &table, chain, &spec])?;
            nft(&["flush", "chain", "inet", &table, chain])?;
            for port_end in ["sport", "dport"] {
                let mut rule = vec!["add", "rule", "inet", &table, chain, dev, "eth0"];
                if let Some(peer) = &peer {
                    rule.extend(["ip", end, peer.as_str()]);
                }
                rule.extend(["udp", port_end, &port, "counter"]);
                nft(&rule)?;
            }
        }
        Ok(())
    }

    /// The bytes counted since [`Self::count_udp`].
    pub fn udp_bytes(&self, i: usize) -> Result<u64> {
        let listing = self.exec(
            i,
            "nft",
            &["list", "table", "inet", &format!("{PREFIX}_count")],
        )?;
        let mut total = 0;
        let mut words = listing.split_whitespace();
        while let Some(w) = words.next() {
            if w == "bytes" {
                total += words.next().context("a byte count")?.parse::<u64>()?;
            }
        }
        Ok(total)
    }

    /// Drops every UDP packet host `i` sends from `port` (a WireGuard
    /// outage, say), until [`Self::undrop`].
    pub fn drop_udp_from(&self, i: usize, port: u16) -> Result<()> {
        let ns = self.hosts[i].ns.as_str();
        let port = port.to_string();
        let tc = |args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            run("tc", &all)
        };
        // This kernel has neither prio nor netem: htb, with the matched
        // packets sent to a class of 8 bit/s and a queue of one.
        tc(&[
            "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10",
        ])?;
        tc(&[
            "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb", "rate",
            "10gbit",
        ])?;
        tc(&[
            "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:20", "htb", "rate",
            "8bit", "ceil", "8bit", "burst", "1", "cburst", "1",
        ])?;
        tc(&[
            "qdisc", "add", "dev", "eth0", "parent", "1:20", "handle", "20:", "pfifo", "limit", "1",
        ])?;
        tc(&[
            "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", "protocol", "17", "0xff", "match", "ip", "sport", &port, "0xffff",
            "flowid", "1:20",
        ])
    }

    /// Ends what [`Self::drop_udp_from`] began.
    pub fn undrop(&self, i: usize) -> Result<()> {
        run(
            "tc",
            &[
                "-n",
                &self.hosts[i].ns,
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ],
        )
    }

    /// Cuts host `i` off: its link to the bridge goes down.
    pub fn cut(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.hosts[i].veth, "down"])
    }

    /// Restores what [`Self::cut`] cut.
    pub fn restore(&self, i: usize) -> Result<()> {
        ip(&["link", "set", &self.hosts[i].veth, "up"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(delays) = self.delays.get_mut() {
            for child in delays.iter_mut() {
                child.kill().ok();
                child.wait().ok();
            }
        }
        for h in &self.hosts {
            ip(&["netns", "del", &h.ns]).ok();
            ip(&["link", "del", &h.veth]).ok();
        }
        ip(&["link", "del", &self.bridge]).ok();
    }
}

/// Removes what labs of test runs no longer alive left behind (a run
/// killed before its labs were dropped).
fn sweep() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let mut dead = std::collections::HashSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Its processes first (nodes, delays): a namespace lives on
            // while any process is in it.
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    Command::new("kill").args(["-9", p]).status().ok();
                }
            }
            ip(&["netns", "del", name]).ok();
            dead.insert(pid);
        }
    }
    if dead.is_empty() {
        return;
    }
    // Their bridges and links: named by the same tag.
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line
            .split(':')
            .nth(1)
            .map(|s| s.trim().split('@').next().unwrap_or(""))
        else {
            continue;
        };
        let Some(tag) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner = u32::from_str_radix(tag.get(..6).unwrap_or(tag), 16)
            .ok()
            .map(|t| t >> 8);
        if owner.is_some_and(|o| dead.iter().any(|pid| pid & 0xffff == o)) {
            ip(&["link", "del", name]).ok();
        }
    }
}

/// A network of `n` lab hosts, the mesh on in each: host 0 made it, the
/// others joined by invites from it. The admin's CLI runs outside, on the
/// bridge.
#[derive(Debug)]
pub struct MeshNet {
    // Dropped in this order: the nodes stop, the lab goes, then the
    // directories they ran in.
    pub nodes: Vec<NodeProc>,
    pub admin: Maki,
    pub lab: Lab,
    pub tmp: tempfile::TempDir,
}

impl MeshNet {
    pub fn new(n: usize) -> Result<Self> {
        Self::with_mode(n, "userspace")
    }

    /// [`Self::new`] with `mesh = MODE` on every node.
    pub fn with_mode(n: usize, mode: &str) -> Result<Self> {
        Self::build(n, 0, mode)
    }

    /// `n` nodes with `mesh = MODE`, and `spare` more hosts after them
    /// that run no node.
    pub fn build(n: usize, spare: usize, mode: &str) -> Result<Self> {
        Self::with_modes(&vec![mode; n], spare)
    }

    /// A node per entry of `modes`, with `mesh = MODE`, and `spare` more
    /// hosts after them that run no node.
    pub fn with_modes(modes: &[&str], spare: usize) -> Result<Self> {
        let n = modes.len();
        let lab = Lab::new(n + spare)?;
        let tmp = tempfile::tempdir()?;
        let home = tmp.path().join("admin");
        std::fs::create_dir_all(&home)?;
        let admin = Maki::new(&home, None);
        let key = admin.key()?;
        let mut nodes = Vec::new();
        for (i, mode) in modes.iter().enumerate() {
            let dir = tmp.path().join(format!("n{i}"));
            let at = lab.hosts[i].ip;
            // Every address, the mesh's too: the benchmark compares a
            // transfer over the overlay with one over the underlay.
            let http = "[::]:80".to_string();
            let p2p = format!("{at}:51821");
            let mut args = vec!["--http", &http, "--p2p", &p2p, "--mesh", mode];
            let node = if i == 0 {
                let mut init = vec!["init", "--admin", &key];
                init.extend_from_slice(&args);
                let out = Command::new(crate::bins()?.makiatto)
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
    pub async fn meshed(&self) -> Result<()> {
        self.settled(self.nodes.len()).await
    }

    /// Waits until the first node sees every other node up, and `meshed`
    /// of them (itself included) on the mesh.
    pub async fn settled(&self, meshed: usize) -> Result<()> {
        let n = self.nodes.len();
        wait_for(
            CONVERGE,
            &format!("{n} nodes up, {meshed} on the mesh"),
            || async {
                let out = self.admin.ok(&["nodes"])?;
                let on_mesh = out
                    .lines()
                    .filter(|l| l.contains("(userspace)") || l.contains("(kernel)"))
                    .count();
                let up = out.lines().filter(|l| l.contains("  up")).count();
                Ok(on_mesh == meshed && up == n - 1)
            },
        )
        .await
        .with_context(|| format!("nodes:\n{}", self.admin.ok(&["nodes"]).unwrap_or_default()))?;
        Ok(())
    }

    /// Host `i`'s mesh address (on `maki0`).
    pub fn mesh_addr(&self, i: usize) -> Result<std::net::Ipv6Addr> {
        let out = self
            .lab
            .exec(i, "ip", &["-6", "-o", "addr", "show", "dev", "maki0"])?;
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no mesh address in {out:?}"))
    }

    /// Node `to`'s p2p port, at its public address or, with `mesh`, at its
    /// mesh address.
    pub fn p2p_addr(&self, to: usize, mesh: bool) -> Result<SocketAddr> {
        let ip: std::net::IpAddr = if mesh {
            self.mesh_addr(to)?.into()
        } else {
            self.lab.hosts[to].ip.into()
        };
        Ok(SocketAddr::new(ip, 51821))
    }

    /// Dials `to` with `alpn` from host `from`, with node `from`'s key
    /// (`maki-lab-dial`): `open`, `closed CODE REASON` or `failed ERROR`.
    pub fn dial(&self, from: usize, to: SocketAddr, node: usize, alpn: &[u8]) -> Result<String> {
        let bin = crate::bins()?.makiatto.with_file_name("maki-lab-dial");
        let id = self.nodes[node]
            .ticket
            .parse::<maki_protocol::NodeTicket>()?
            .id
            .to_string();
        let out = self.lab.exec(
            from,
            bin.to_str().context("path")?,
            &[
                self.nodes[from].dir.to_str().context("path")?,
                &id,
                &to.to_string(),
                std::str::from_utf8(alpn)?,
            ],
        )?;
        Ok(out.trim().to_owned())
    }

    pub fn logs(&self) -> String {
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
pub fn random_file(dir: &Path, name: &str, size: usize) -> Result<()> {
    // Seeded by the name: files of one size must still differ (a site of
    // equal files would be a few blobs, deduplicated).
    let seed = blake3::hash(name.as_bytes());
    let mut x = u64::from_le_bytes(seed.as_bytes()[..8].try_into()?) | 1;
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

impl MeshNet {
    /// The admin's CLI run inside host `i`, pointed at its node.
    pub fn admin_in(&self, i: usize) -> Maki {
        let mut m = Maki::new(&self.admin.home, Some(&self.nodes[i].ticket));
        m.wrap = self.lab.wrap(i);
        m
    }

    /// Publishes `site` (its index.html saying `body`) through `admin`
    /// without waiting for other nodes.
    pub fn publish(&self, admin: &Maki, site: &Path, body: &str) -> Result<()> {
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
    pub fn served(&self, i: usize) -> Option<String> {
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
    pub async fn serves(&self, i: usize, body: &str) -> Result<()> {
        wait_for(CONVERGE, &format!("host {i} to serve {body:?}"), || async {
            Ok(self.served(i).as_deref() == Some(body))
        })
        .await
        .with_context(|| self.logs())?;
        Ok(())
    }

    /// A site added and published once (v1), served by every host.
    pub async fn with_site(&self) -> Result<std::path::PathBuf> {
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
