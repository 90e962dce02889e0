//! The lab distribution benchmark (`bench/lab-distribute.sh` runs it, root
//! only): N hosts in network namespaces, every link limited to one rate
//! each way, the WireGuard mesh on. For each N, the time from the end of a
//! publish at host 0 until all N serve: a site of many files, and a single
//! large file. Beside it, in the same run: the physical limit (one host's
//! transfer of the same bytes at that rate, over HTTP from host 0), and
//! rsync pushing the same content from host 0 to each host in turn
//! (Makiatto 0.6's way), at the N asked for. CPU use (of the whole
//! machine) is printed next to each result: the cores must not be what
//! limits it. Last, the throughput of one transfer over the overlay
//! against the underlay, links unlimited, with the CPU each used.
//!
//! Every host delays what it sends by half the round trip asked for
//! (`maki-lab-delay`), so any two hosts are that round trip apart.
//!
//! usage: maki-lab-distribute [--rate MBIT] [--rtt MS] [--site-mb MB]
//!        [--files N] [--big-mb MB] [--repeat R] [--nodes 2,4,6,8]
//!        [--rsync 2,6]
//!
//! With `--repeat R`, the site is published R times per N (R sites of
//! their own bytes) and the median time is what is printed.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail, ensure};
use maki_e2e::lab::{MeshNet, random_file};

struct Args {
    rate: u32,
    rtt: u32,
    site_mb: usize,
    files: usize,
    big_mb: usize,
    /// Site runs per N (the median is printed).
    repeat: usize,
    nodes: Vec<usize>,
    rsync: Vec<usize>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        rate: 20,
        rtt: 20,
        site_mb: 50,
        files: 500,
        big_mb: 200,
        repeat: 1,
        nodes: vec![2, 4, 6, 8],
        rsync: vec![2, 6],
    };
    let list = |v: &str| -> Result<Vec<usize>> {
        v.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| Ok(s.parse()?))
            .collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rate" => a.rate = v.parse()?,
            "--rtt" => a.rtt = v.parse()?,
            "--site-mb" => a.site_mb = v.parse()?,
            "--files" => a.files = v.parse()?,
            "--big-mb" => a.big_mb = v.parse()?,
            "--repeat" => a.repeat = v.parse()?,
            "--nodes" => a.nodes = list(&v)?,
            "--rsync" => a.rsync = list(&v)?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// Busy and total jiffies of the whole machine.
fn cpu() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("no cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Runs `f`, returning its result, the seconds it took and the share of
/// the machine's CPU used meanwhile (percent of all cores).
fn measured<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    let (b0, t0) = cpu()?;
    let start = Instant::now();
    let out = f()?;
    let secs = start.elapsed().as_secs_f64();
    let (b1, t1) = cpu()?;
    let share = 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
    Ok((out, secs, share))
}

/// Publishes `dir` as `site` at host 0, from inside it, and returns when
/// every node serves it: the slowest node's time after the publish.
fn publish(net: &MeshNet, dir: &Path, site: &str) -> Result<f64> {
    let mut admin = net.admin_in(0);
    admin.timeout = std::time::Duration::from_secs(900);
    admin.ok(&["site", "add", site])?;
    let out = admin.ok(&[
        "publish",
        dir.to_str().context("path")?,
        "--site",
        site,
        "--wait",
        "--timeout",
        "900s",
    ])?;
    ensure!(
        out.contains(&format!("all {} nodes serve", net.nodes.len())),
        "{out}"
    );
    // "  ID (REGION) serves it after 12.3s"
    let slowest = out
        .lines()
        .filter_map(|l| l.split("serves it after ").nth(1))
        .filter_map(|t| t.trim().trim_end_matches('s').parse::<f64>().ok())
        .fold(0.0, f64::max);
    Ok(slowest)
}

/// One host's transfer of `path` on `site` from host 0 over HTTP, at the
/// limited rate: seconds.
fn single_transfer(net: &MeshNet, site: &str, path: &str) -> Result<f64> {
    fetch_seconds(net, site, &net.lab.hosts[0].ip.to_string(), path)
}

/// Host 1 fetches `path` of `site` from host 0 over HTTP at `host`
/// (an address of host 0): MB/s.
fn transfer_rate(net: &MeshNet, site: &str, host: &str, path: &str, bytes: u64) -> Result<f64> {
    let secs = fetch_seconds(net, site, host, path)?;
    Ok(bytes as f64 / 1e6 / secs)
}

/// Seconds host 1 takes to fetch `path` of `site` over HTTP from `host`
/// (an address of host 0; an IPv6 one in brackets).
fn fetch_seconds(net: &MeshNet, site: &str, host: &str, path: &str) -> Result<f64> {
    let url = format!("http://{host}:80{path}");
    let out = net.lab.exec(
        1,
        "curl",
        &[
            "-gsf",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            "-H",
            &format!("Host: {site}"),
            &url,
        ],
    )?;
    Ok(out.trim().parse()?)
}

/// Throughput of one transfer over the overlay (WireGuard, userspace)
/// and over the underlay, links unlimited, with the CPU each used.
fn overlay_vs_underlay(big: &Path, big_mb: usize) -> Result<()> {
    let net = MeshNet::build(2, 0, "userspace")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(net.meshed())?;
    publish(&net, big, "big.test")?;
    let bytes = (big_mb as u64) << 20;
    let under = net.lab.hosts[0].ip.to_string();
    let over = format!("[{}]", net.mesh_addr(0)?);
    for (what, host) in [("underlay", &under), ("overlay", &over)] {
        let (rate, _, cpu) = measured(|| transfer_rate(&net, "big.test", host, "/big.bin", bytes))?;
        println!("HTTP over the {what}, unlimited\t2\t{rate:.0} MB/s\t\t{cpu:.0}");
    }
    Ok(())
}

/// rsync pushing `dir` from host 0 to every other host in turn, each
/// running an rsync daemon: seconds.
fn rsync_push(net: &MeshNet, dir: &Path, work: &Path) -> Result<f64> {
    let mut daemons = Vec::new();
    for i in 1..net.nodes.len() {
        let dest = work.join(format!("rsync-dest-{i}"));
        std::fs::create_dir_all(&dest)?;
        let conf = work.join(format!("rsyncd-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\n[maki]\npath = {}\nread only = no\nuid = root\ngid = root\n",
                dest.display()
            ),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", &net.lab.hosts[i].ns, "rsync", "--daemon"])
            .args(["--no-detach", "--port", "873", "--config"])
            .arg(&conf)
            .spawn()?;
        daemons.push(child);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let start = Instant::now();
    let mut result = Ok(());
    for i in 1..net.nodes.len() {
        let src = format!("{}/", dir.display());
        let dst = format!("rsync://{}/maki/", net.lab.hosts[i].ip);
        if let Err(e) = net
            .lab
            .exec(0, "rsync", &["-a", "--whole-file", &src, &dst])
        {
            result = Err(e);
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    for mut d in daemons {
        d.kill().ok();
        d.wait().ok();
    }
    result.map(|()| secs)
}

fn main() -> Result<()> {
    let a = args()?;
    let work = tempfile::tempdir()?;
    // One site per repeat, each of its own bytes (the same twice would
    // be there already).
    let per_file = a.site_mb * (1 << 20) / a.files.max(1);
    let mut sites = Vec::new();
    for r in 0..a.repeat.max(1) {
        let site = work.path().join(format!("site{r}"));
        std::fs::create_dir_all(&site)?;
        for f in 0..a.files {
            random_file(&site, &format!("r{r}f{f:05}.bin"), per_file + f % 97)?;
        }
        sites.push(site);
    }
    let site = sites[0].clone();
    let big = work.path().join("big");
    std::fs::create_dir_all(&big)?;
    random_file(&big, "big.bin", a.big_mb << 20)?;

    println!(
        "rate {} Mbit/s each way per host, {} ms between hosts; site {} MB in {} files; one file of {} MB",
        a.rate, a.rtt, a.site_mb, a.files, a.big_mb
    );
    println!("what\tN\tseconds\t× single\tCPU %");
    let mut single_site = 0.0;
    let mut single_big = 0.0;
    for &n in &a.nodes {
        let net = MeshNet::build(n, 0, "userspace")?;
        for i in 0..n {
            net.lab.limit(i, a.rate)?;
            if a.rtt > 0 {
                net.lab.delay(i, a.rtt / 2)?;
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(net.meshed())?;
        let rx = |i| net.lab.counter(i, "eth0", "rx_bytes");
        let rx_before: Vec<u64> = (1..n).map(rx).collect::<Result<_>>()?;
        let origin_tx = || net.lab.counter(0, "eth0", "tx_bytes");
        let tx_before = origin_tx()?;
        let (t, wall, cpu_site) = measured(|| publish(&net, &site, "site0.test"))?;
        let rx_site: Vec<String> = (1..n)
            .map(|i| Ok(format!("{:.0}", (rx(i)? - rx_before[i - 1]) as f64 / 1e6)))
            .collect::<Result<_>>()?;
        let sent = (origin_tx()? - tx_before) as f64 / 1e6;
        eprintln!(
            "site at N={n}: publish + wait took {wall:.1} s; MB received on each host's underlay: {rx_site:?}; the origin sent {sent:.0} MB ({:.2} sites)",
            sent / (a.site_mb as f64 * 1.048_576)
        );
        // More runs of the same, each a new site: the median of all.
        let mut times = vec![(t, cpu_site)];
        for (r, dir) in sites.iter().enumerate().skip(1) {
            let (t, _, cpu) = measured(|| publish(&net, dir, &format!("site{r}.test")))?;
            times.push((t, cpu));
        }
        times.sort_by(|x, y| x.0.total_cmp(&y.0));
        let all: Vec<String> = times.iter().map(|(t, _)| format!("{t:.1}")).collect();
        if times.len() > 1 {
            eprintln!("site at N={n}, {} runs: {all:?} s", times.len());
        }
        let (t, cpu_site) = times[times.len() / 2];
        // For a look at how the fetches went (with MAKI_TEST_LOG set, say
        // `makiatto::replicate=debug`): each node's log so far.
        if let Some(dir) = std::env::var_os("MAKI_LAB_LOGS") {
            let dir = Path::new(&dir).join(format!("n{n}"));
            std::fs::create_dir_all(&dir)?;
            for (i, node) in net.nodes.iter().enumerate() {
                std::fs::write(dir.join(format!("node{i}.log")), node.log())?;
            }
        }
        let (tb, _, cpu_big) = measured(|| publish(&net, &big, "big.test"))?;
        if single_big == 0.0 {
            // The physical limit, measured once on this lab's links.
            let (t1, _, c1) = measured(|| single_transfer(&net, "big.test", "/big.bin"))?;
            single_big = t1;
            single_site = t1 * a.site_mb as f64 / a.big_mb as f64;
            println!("single transfer (HTTP, one host)\t1\t{t1:.1}\t1.00\t{c1:.0}");
        }
        println!(
            "makiatto site\t{n}\t{t:.1}\t{:.2}\t{cpu_site:.0}",
            t / single_site
        );
        println!(
            "makiatto one file\t{n}\t{tb:.1}\t{:.2}\t{cpu_big:.0}",
            tb / single_big
        );
        if a.rsync.contains(&n) {
            let (r, _, cr) = measured(|| rsync_push(&net, &site, work.path()))?;
            println!("rsync site\t{n}\t{r:.1}\t{:.2}\t{cr:.0}", r / single_site);
        }
        drop(net);
    }
    overlay_vs_underlay(&big, a.big_mb)?;
    Ok(())
}
