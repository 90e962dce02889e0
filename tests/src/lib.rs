//! A harness that runs the real `makiatto` and `maki` binaries: nodes on
//! loopback with port 0, the CLI with its own `MAKI_HOME`, and a plain
//! HTTP client. Used by the tests in `tests/` and by the quick start.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

pub mod dns;
pub mod lab;
pub mod pebble;

/// Paths of the built binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub makiatto: PathBuf,
    pub maki: PathBuf,
}

/// Locates both binaries next to the running executable (`target/<profile>`).
///
/// `cargo test --workspace` builds them in the same invocation as the tests
/// (the node and client crates have integration tests, which makes cargo
/// build their binaries), so they share one feature set and nothing is
/// compiled twice. A binary older than the sources is refused rather than
/// silently tested.
pub fn bins() -> Result<Bins> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no folder")?.to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bins = Bins {
        makiatto: dir.join("makiatto"),
        maki: dir.join("maki"),
    };
    let build = "cargo test --workspace (or cargo build --workspace --bins)";
    fresh(&bins.makiatto, "node/src", build)?;
    fresh(&bins.maki, "client/src", build)?;
    Ok(bins)
}

/// `makiatto-next`: the node built with the test-only `next-format`
/// feature, which plays a newer release (tests/tests/upgrade.rs).
pub fn next_bin() -> Result<PathBuf> {
    let bin = bins()?
        .makiatto
        .with_file_name(format!("makiatto-next{}", std::env::consts::EXE_SUFFIX));
    fresh(
        &bin,
        "node/src",
        "cargo build -p makiatto --features next-format --bin makiatto-next",
    )?;
    Ok(bin)
}

/// Fails unless `bin` exists and is newer than its crate's sources and
/// protocol's: a stale binary is never silently tested.
fn fresh(bin: &Path, krate: &str, build: &str) -> Result<()> {
    let root = workspace_root();
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .map_err(|_| anyhow::anyhow!("{} is not built; run `{build}`", bin.display()))?;
    let newest_source =
        newest_mtime(&root.join("protocol/src"))?.max(newest_mtime(&root.join(krate))?);
    ensure!(
        built >= newest_source,
        "{} is older than its sources; run `{build}`",
        bin.display()
    );
    Ok(())
}

/// Builds both binaries with `cargo build --workspace --bins` (the quick
/// start's path: it runs from `cargo run`, which sets `CARGO`).
pub fn build_bins() -> Result<Bins> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--workspace", "--bins"])
        .current_dir(workspace_root())
        .status()?;
    ensure!(status.success(), "cargo build failed");
    bins()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_owned)
}

fn newest_mtime(dir: &Path) -> Result<std::time::SystemTime> {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        let t = if m.is_dir() {
            newest_mtime(&e.path())?
        } else {
            m.modified()?
        };
        newest = newest.max(t);
    }
    Ok(newest)
}

/// `makiatto join TICKET` on loopback with OS-chosen ports.
fn join_args(ticket: &str) -> [&str; 8] {
    [
        "join",
        ticket,
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--p2p",
        "127.0.0.1:0",
    ]
}

/// A running node, stopped (SIGTERM, then wait) when dropped.
#[derive(Debug)]
pub struct NodeProc {
    pub dir: PathBuf,
    /// The HTTP edge (`0.0.0.0:0` for a node without the http role).
    pub http: SocketAddr,
    /// HTTPS (`0.0.0.0:0` for a node without the http role).
    pub https: SocketAddr,
    /// The nameserver, with the dns role.
    pub dns: Option<SocketAddr>,
    /// DNS over TLS, with the dns role.
    pub dot: Option<SocketAddr>,
    pub ticket: String,
    child: Child,
    stderr_log: PathBuf,
}

impl NodeProc {
    /// `makiatto init` in `dir` with `admins`, on loopback ports 0.
    pub fn init(dir: &Path, admins: &[String]) -> Result<()> {
        let bins = bins()?;
        let mut cmd = Command::new(&bins.makiatto);
        cmd.arg("init").arg("--data-dir").arg(dir).args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--p2p",
            "127.0.0.1:0",
        ]);
        for a in admins {
            cmd.args(["--admin", a]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "makiatto init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `makiatto run`, waiting for its `ready` line.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::spawn(dir, &["run"], dir.join("node.log"))
    }

    /// Like [`Self::start`] with the process allowed only `n` open files
    /// (soft and hard), through util-linux's `prlimit`.
    pub fn start_with_fd_limit(dir: &Path, n: u64) -> Result<Self> {
        let limit = format!("--nofile={n}:{n}");
        let makiatto = bins()?.makiatto;
        let makiatto = makiatto.to_str().context("binary path is not UTF-8")?;
        Self::spawn_with(
            "prlimit",
            dir,
            &[&limit, "--", makiatto, "run"],
            dir.join("node.log"),
        )
    }

    /// `makiatto join TICKET` into `dir`, then running: waits for `ready`.
    pub fn join(dir: &Path, ticket: &str) -> Result<Self> {
        Self::join_with(dir, ticket, &[])
    }

    /// Like [`Self::join`] with extra arguments (`--region`, …).
    pub fn join_with(dir: &Path, ticket: &str, extra: &[&str]) -> Result<Self> {
        let log = dir.with_extension("log");
        let mut args = join_args(ticket).to_vec();
        args.extend_from_slice(extra);
        Self::spawn(dir, &args, log)
    }

    /// `makiatto join TICKET` that must fail: returns its stderr.
    pub fn join_fails(dir: &Path, ticket: &str) -> Result<String> {
        let out = Command::new(bins()?.makiatto)
            .args(join_args(ticket))
            .arg("--data-dir")
            .arg(dir)
            .env("MAKIATTO_LOG", "error")
            .output()?;
        ensure!(
            !out.status.success(),
            "join succeeded but should have failed"
        );
        Ok(String::from_utf8(out.stderr)?)
    }

    /// [`Self::join_with`] with another build of the node (`program`).
    pub fn join_as(program: &Path, dir: &Path, ticket: &str, extra: &[&str]) -> Result<Self> {
        let mut args = join_args(ticket).to_vec();
        args.extend_from_slice(extra);
        Self::spawn_with(program, dir, &args, dir.with_extension("log"))
    }

    /// [`Self::start`] with another build of the node (`program`): the
    /// same data directory, as after an upgrade in place.
    pub fn start_as(program: &Path, dir: &Path) -> Result<Self> {
        Self::spawn_with(program, dir, &["run"], dir.join("node.log"))
    }

    /// `makiatto ARGS` run through `wrap` (a lab host's `ip netns exec
    /// NS`), waiting for its `ready` line; stderr goes to `log`.
    pub fn spawn_in(wrap: &[String], dir: &Path, args: &[&str], log: PathBuf) -> Result<Self> {
        let makiatto = bins()?.makiatto;
        let makiatto = makiatto.to_str().context("binary path is not UTF-8")?;
        let (program, before) = wrap.split_first().context("an empty wrapper")?;
        let mut all: Vec<&str> = before.iter().map(String::as_str).collect();
        all.push(makiatto);
        all.extend_from_slice(args);
        Self::spawn_with(program, dir, &all, log)
    }

    fn spawn(dir: &Path, args: &[&str], stderr_log: PathBuf) -> Result<Self> {
        let bins = bins()?;
        Self::spawn_with(&bins.makiatto, dir, args, stderr_log)
    }

    fn spawn_with(
        program: impl AsRef<std::ffi::OsStr>,
        dir: &Path,
        args: &[&str],
        stderr_log: PathBuf,
    ) -> Result<Self> {
        Self::spawn_env(program, dir, args, stderr_log, &[])
    }

    /// [`Self::start`] with these variables in the node's environment
    /// (`SSL_CERT_FILE`: the roots it trusts).
    pub fn start_with_env(dir: &Path, env: &[(&str, &Path)]) -> Result<Self> {
        let bins = bins()?;
        Self::spawn_env(&bins.makiatto, dir, &["run"], dir.join("node.log"), env)
    }

    fn spawn_env(
        program: impl AsRef<std::ffi::OsStr>,
        dir: &Path,
        args: &[&str],
        stderr_log: PathBuf,
        env: &[(&str, &Path)],
    ) -> Result<Self> {
        if let Some(parent) = stderr_log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_log)?;
        let mut child = Command::new(program)
            .envs(env.iter().copied())
            .args(args)
            .arg("--data-dir")
            .arg(dir)
            // MAKI_TEST_LOG: another filter for the nodes of a test run.
            .env(
                "MAKIATTO_LOG",
                std::env::var("MAKI_TEST_LOG")
                    .unwrap_or_else(|_| "info,iroh=warn,iroh_blobs=warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let ok = BufReader::new(stdout).read_line(&mut line).is_ok();
            tx.send(ok.then_some(line)).ok();
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(line)) if line.starts_with("ready ") => line,
            other => {
                child.kill().ok();
                child.wait().ok();
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                bail!("node did not get ready ({other:?}); its log:\n{log}");
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        // `http=off`: a node without the http role (no edge to reach).
        let http = match field("http").context("no http= in ready line")?.as_str() {
            "off" => SocketAddr::from(([0, 0, 0, 0], 0)),
            addr => addr.parse()?,
        };
        let https = match field("https").context("no https= in ready line")?.as_str() {
            "off" => SocketAddr::from(([0, 0, 0, 0], 0)),
            addr => addr.parse()?,
        };
        let dns = match field("dns").context("no dns= in ready line")?.as_str() {
            "off" => None,
            addr => Some(addr.parse()?),
        };
        let dot = match field("dot").as_deref() {
            None | Some("off") => None,
            Some(addr) => Some(addr.parse()?),
        };
        let ticket = field("ticket").context("no ticket= in ready line")?;
        Ok(Self {
            dir: dir.to_owned(),
            http,
            https,
            dns,
            dot,
            ticket,
            child,
            stderr_log,
        })
    }

    /// The node's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// SIGKILL: a crash, no cleanup.
    pub fn crash(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// SIGSTOP: frozen, its sockets open but silent.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()?;
        ensure!(status.success(), "kill {sig} failed");
        Ok(())
    }

    /// The node's resident memory, in bytes (VmRSS).
    pub fn rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .context("no VmRSS line")?
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }

    /// The node's id (from its ticket).
    pub fn id(&self) -> Result<String> {
        let t: maki_protocol::NodeTicket = self.ticket.parse()?;
        Ok(t.id.to_string())
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // A paused node would hold the TERM until continued.
        self.signal("-CONT").ok();
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().ok();
        Ok(self.child.wait()?)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.terminate().ok();
    }
}

/// The CLI with its own home (key) and a default node.
#[derive(Debug, Clone)]
pub struct Maki {
    pub home: PathBuf,
    pub node: Option<String>,
    pub cwd: PathBuf,
    /// What runs it (a lab host's `ip netns exec NS`); empty: directly.
    pub wrap: Vec<String>,
    /// A command still running after this long is killed and reported.
    pub timeout: Duration,
}

impl Maki {
    pub fn new(home: &Path, node: Option<&str>) -> Self {
        Self {
            home: home.to_owned(),
            node: node.map(str::to_owned),
            cwd: home.to_owned(),
            wrap: Vec::new(),
            timeout: CLI_TIMEOUT,
        }
    }

    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let maki = bins()?.maki;
        let mut cmd = match self.wrap.split_first() {
            Some((program, before)) => {
                let mut c = Command::new(program);
                c.args(before).arg(maki);
                c
            }
            None => Command::new(maki),
        };
        cmd.args(args)
            .current_dir(&self.cwd)
            .env("MAKI_HOME", &self.home)
            .env_remove("MAKI_NODE");
        if let Some(n) = &self.node {
            cmd.env("MAKI_NODE", n);
        }
        Ok(cmd)
    }

    /// Runs and returns the output, whatever the exit status. A command
    /// still running after its timeout ([`CLI_TIMEOUT`] unless changed) is
    /// killed and reported, so a regression fails the test instead of
    /// hanging it.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let mut child = self
            .command(args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    std::io::Read::read_to_end(&mut p, &mut buf).ok();
                }
                buf
            })
        };
        let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "maki {args:?} still ran after {:?}; killed it",
                    self.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    /// Runs, fails unless it succeeded, and returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "maki {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs, fails unless it FAILED, and returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if out.status.success() {
            bail!("maki {args:?} succeeded but should have failed");
        }
        Ok(String::from_utf8(out.stderr)?)
    }

    /// `maki keys`: the public key (created on first use).
    pub fn key(&self) -> Result<String> {
        Ok(self.ok(&["keys"])?.trim().to_owned())
    }
}

/// A fresh network of one node: its admin's CLI (own `MAKI_HOME`) and the
/// node's data directory, initialised but not started.
#[derive(Debug)]
pub struct Fresh {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub admin: Maki,
}

/// `maki keys` for a new admin, then `makiatto init` with that admin.
pub fn fresh_network() -> Result<Fresh> {
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().join("admin");
    std::fs::create_dir_all(&home)?;
    let admin = Maki::new(&home, None);
    let key = admin.key()?;
    let data = tmp.path().join("node");
    NodeProc::init(&data, &[key])?;
    Ok(Fresh { tmp, data, admin })
}

/// A running node of a fresh network, and its admin pointed at it.
#[derive(Debug)]
pub struct OneNode {
    pub tmp: tempfile::TempDir,
    pub node: NodeProc,
    pub admin: Maki,
}

pub fn one_node() -> Result<OneNode> {
    let Fresh { tmp, data, admin } = fresh_network()?;
    let node = NodeProc::start(&data)?;
    let admin = Maki::new(&admin.home, Some(&node.ticket));
    Ok(OneNode { tmp, node, admin })
}

/// A running node with `domain` added, and a private copy of
/// `examples/site` under the test's temp dir.
pub fn one_site(domain: &str) -> Result<(OneNode, PathBuf)> {
    let net = one_node()?;
    net.admin.ok(&["site", "add", domain])?;
    let site_dir = net.tmp.path().join("site");
    copy_dir(&example_site(), &site_dir)?;
    Ok((net, site_dir))
}

/// Several nodes of one network, each after the first joined by an invite
/// from the first, and the admin pointed at the first.
#[derive(Debug)]
pub struct Network {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<NodeProc>,
    pub admin: Maki,
}

impl Network {
    /// The admin's CLI pointed at node `i`.
    pub fn admin_at(&self, i: usize) -> Maki {
        Maki::new(&self.admin.home, Some(&self.nodes[i].ticket))
    }

    /// `maki invite` at node 0, redeemed by a new node in `tmp/n<k>`.
    pub fn add_node(&mut self) -> Result<()> {
        let ticket = self.admin.ok(&["invite"])?.trim().to_owned();
        let dir = self.tmp.path().join(format!("n{}", self.nodes.len()));
        self.nodes.push(NodeProc::join(&dir, &ticket)?);
        Ok(())
    }
}

/// Like [`network`], with `settings` (`key`, `value`) in every node's
/// `makiatto.toml` from its first start on (a joined node is restarted
/// once to take them; its start sync tells the others its new address).
pub fn network_with(n: usize, settings: &[(&str, &str)]) -> Result<Network> {
    let fresh = fresh_network()?;
    for (key, value) in settings {
        set_config(&fresh.data, key, value)?;
    }
    let first = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&first.ticket));
    let mut net = Network {
        tmp: fresh.tmp,
        nodes: vec![first],
        admin,
    };
    for i in 1..n {
        let ticket = net.admin.ok(&["invite"])?.trim().to_owned();
        let dir = net.tmp.path().join(format!("n{i}"));
        NodeProc::join(&dir, &ticket)?.stop()?;
        for (key, value) in settings {
            set_config(&dir, key, value)?;
        }
        net.nodes.push(NodeProc::start(&dir)?);
    }
    Ok(net)
}

pub fn network(n: usize) -> Result<Network> {
    let OneNode { tmp, node, admin } = one_node()?;
    let mut net = Network {
        tmp,
        nodes: vec![node],
        admin,
    };
    for _ in 1..n {
        net.add_node()?;
    }
    Ok(net)
}

/// Polls `check` every 50 ms until it returns `Ok(true)` or `timeout`
/// passes; returns how long it took.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of `path` on `host` at `addr` if it answers 200.
pub async fn body_of(addr: SocketAddr, host: &str, path: &str) -> Option<Bytes> {
    match http_get(addr, host, path, &[]).await {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

/// An HTTP response, body collected.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sets `key = value` in a node's `makiatto.toml` (replacing the line the
/// written config has for it; the node reads it at its next start).
pub fn set_config(data: &Path, key: &str, value: &str) -> Result<()> {
    let path = data.join("makiatto.toml");
    let text = std::fs::read_to_string(&path)?;
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.split('=').next().is_some_and(|k| k.trim() == key) {
                found = true;
                format!("{key} = {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !found {
        lines.push(format!("{key} = {value}"));
    }
    std::fs::write(&path, lines.join("\n") + "\n")?;
    Ok(())
}

/// The longest any one `maki` command may run in a test.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest one HTTP request (connect to last body byte) may take in a test.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request on a fresh connection.
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    request(addr, "GET", host, path, headers, false).await
}

/// Like [`http_get`] with any method, over HTTP/1.1 or HTTP/2 (h2c prior knowledge).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    h2: bool,
) -> Result<Reply> {
    tokio::time::timeout(
        HTTP_TIMEOUT,
        request_inner(addr, method, host, path, headers, h2),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{method} {host}{path} took more than {HTTP_TIMEOUT:?}"))?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    h2: bool,
) -> Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    request_over(stream, method, host, path, headers, h2).await
}

/// One request over `stream`, which is connected.
async fn request_over<S>(
    stream: S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    h2: bool,
) -> Result<Reply>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let mut req = http::Request::builder().method(method);
    req = if h2 {
        req.uri(format!("http://{host}{path}"))
    } else {
        req.uri(path).header(http::header::HOST, host)
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        let task = tokio::spawn(conn);
        let r = send.send_request(req).await?;
        let (parts, body) = r.into_parts();
        let body = body.collect().await?.to_bytes();
        task.abort();
        (parts, body)
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        let task = tokio::spawn(conn);
        let r = send.send_request(req).await?;
        let (parts, body) = r.into_parts();
        let body = body.collect().await?.to_bytes();
        task.abort();
        (parts, body)
    };
    Ok(Reply {
        status: resp.0.status.as_u16(),
        headers: resp.0.headers,
        body: resp.1,
    })
}

/// Which certificates an HTTPS client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any (the chain is recorded, for the test to look at).
    Any,
    /// Those that chain to one of these roots and name the host.
    Roots(Vec<rustls::pki_types::CertificateDer<'static>>),
}

/// What an HTTPS request got, besides the reply.
#[derive(Debug)]
pub struct TlsReply {
    pub reply: Reply,
    /// The protocol ALPN chose (`h2`, `http/1.1`).
    pub alpn: Option<String>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The certificates the server sent, its own first.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

/// GET `path` from `addr` over TLS with SNI `host`, offering the `alpn`
/// protocols (HTTP/2 when the server picks `h2`).
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    alpn: &[&str],
    trust: &Trust,
) -> Result<TlsReply> {
    https_get_with(addr, host, path, alpn, trust, rustls::DEFAULT_VERSIONS).await
}

/// [`https_get`] offering only the TLS `versions` given.
pub async fn https_get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    alpn: &[&str],
    trust: &Trust,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<TlsReply> {
    let inner = https_inner(addr, host, path, alpn, trust, versions);
    tokio::time::timeout(HTTP_TIMEOUT, inner)
        .await
        .map_err(|_| anyhow::anyhow!("GET https://{host}{path} took more than {HTTP_TIMEOUT:?}"))?
}

async fn https_inner(
    addr: SocketAddr,
    host: &str,
    path: &str,
    alpn: &[&str],
    trust: &Trust,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<TlsReply> {
    let config = client_config(alpn, trust, versions)?;
    https_get_on(&config, addr, host, path).await
}

/// A TLS client offering `alpn`, trusting per `trust`, speaking
/// `versions`; its sessions are kept for resumption by whoever shares it.
pub fn client_config(
    alpn: &[&str],
    trust: &Trust,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let mut config = match trust {
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
        Trust::Roots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                store.add(r.clone())?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

/// GET `path` from `addr` over TLS with SNI `host`, with `config` (HTTP/2
/// when the server picks `h2`).
pub async fn https_get_on(
    config: &std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<TlsReply> {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let negotiated = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let version = conn.protocol_version();
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let h2 = negotiated.as_deref() == Some("h2");
    let reply = request_over(tls, "GET", host, path, &[], h2).await?;
    Ok(TlsReply {
        reply,
        alpn: negotiated,
        version,
        chain,
        resumed,
    })
}

/// GET `path` from `addr` over HTTP/3 (QUIC) with SNI `host`.
pub async fn h3_get(addr: SocketAddr, host: &str, path: &str, trust: &Trust) -> Result<Reply> {
    let inner = async {
        let tls = client_config(&["h3"], trust, &[&rustls::version::TLS13])?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
        let conn = endpoint.connect(addr, host)?.await?;
        let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        let drive = tokio::spawn(async move {
            std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let req = http::Request::get(format!("https://{host}{path}")).body(())?;
        let mut stream = send.send_request(req).await?;
        stream.finish().await?;
        let response = stream.recv_response().await?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            use bytes::Buf;
            while chunk.has_remaining() {
                let part = chunk.chunk();
                body.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        drop(send);
        drive.abort();
        endpoint.close(0u32.into(), b"done");
        anyhow::Ok(Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: Bytes::from(body),
        })
    };
    tokio::time::timeout(HTTP_TIMEOUT, inner)
        .await
        .map_err(|_| {
            anyhow::anyhow!("HTTP/3 GET https://{host}{path} took more than {HTTP_TIMEOUT:?}")
        })?
}

/// Accepts any certificate whose signatures hold.
#[derive(Debug)]
struct AnyCert(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Copies a folder tree (files and folders only).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// The workspace's `examples/site`.
pub fn example_site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/site")
}

/// One response read off a raw connection.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from `conn`, keeping what follows it in `buf`.
/// `head`: the request was HEAD, so a Content-Length announces no body.
pub async fn read_raw(
    conn: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    head: bool,
) -> Result<Raw> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(conn, buf, deadline).await?;
    };
    let text = String::from_utf8(buf[..end].to_vec())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(Ok(0), |(_, v)| v.parse())?;
    let len = if head || status == 304 { 0 } else { len };
    while buf.len() < end + len {
        fill(conn, buf, deadline).await?;
    }
    let body = buf[end..end + len].to_vec();
    buf.drain(..end + len);
    Ok(Raw {
        status,
        headers,
        body,
    })
}

async fn fill(
    conn: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout_at(deadline.into(), conn.read(&mut chunk)).await??;
    ensure!(
        n > 0,
        "connection closed mid-response: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// True when the server closes `conn` (within 5 s) without sending more.
pub async fn closes(conn: &mut tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}
