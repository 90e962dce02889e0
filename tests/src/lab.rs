//! A lab of hosts on one machine, for the tests in `tests/lab/` (root
//! only): each host is a network namespace with an `eth0` on one bridge,
//! and every command run in it (`ip netns exec`) also gets a mount
//! namespace of its own. The bridge carries the lab's own /24 in the
//! benchmarking range (198.18.0.0/15, RFC 2544) and the test process
//! reaches every host through it; no host has a route anywhere else, so
//! no traffic leaves what the lab made.
//!
//! A link can be cut and restored. [`Lab`] removes everything it made
//! when dropped, even after a failed test; a lab left behind by a killed
//! test run is removed by the next one.

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

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
