//! `maki`: publish sites to a Makiatto network and manage it.
//! Exit codes: 0 success, 1 error (the message names the fix), 2 usage.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use maki::{
    keys,
    net::{Client, NetError},
    project::{PROJECT_FILE, Project, SiteSection},
    publish::{self, Outcome, Progress},
    scan::HashCache,
};
use maki_protocol::{
    Domain, Hash, Invite, InviteTicket, NodeTicket, PublicKey, RECORD_FORMAT, Revocation,
    SecretKey, Signed, SiteRecord,
    rpc::{Request, Response, RpcError},
};

#[derive(Debug, Parser)]
#[command(name = "maki", version, about = "Publish sites to a Makiatto network")]
struct Cli {
    /// The node to talk to (a `makinode1…` ticket). Default: MAKI_NODE, then maki.toml.
    #[arg(long, global = true, env = "MAKI_NODE")]
    node: Option<String>,
    /// Print lists as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create (once) and print your public key.
    Keys,
    /// Write a maki.toml in the current folder.
    Init {
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Add or remove sites (admins).
    #[command(subcommand)]
    Site(SiteCommand),
    /// Publish a folder as a new version of a site.
    Publish {
        /// The folder (default: maki.toml's dir, then the current folder).
        dir: Option<PathBuf>,
        #[arg(long)]
        site: Option<String>,
        /// Scan, hash and build the manifest, print it, and stop.
        #[arg(long)]
        dry_run: bool,
        /// Then wait until every member node serves the new version,
        /// showing each as it does.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits before naming the laggards: 30s, 5m…
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: u64,
    },
    /// Make a one-time invite for a new node (admins). Prints a ticket for
    /// `makiatto join` on the new machine.
    Invite {
        /// How long the invite stays valid: 30m, 24h, 7d…
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires: u64,
    },
    /// List the member nodes (health, round trip, what they serve), or
    /// remove one.
    Nodes {
        #[command(subcommand)]
        action: Option<NodesCommand>,
    },
    /// Pin a site to regions (admins): only nodes there hold and serve it.
    /// Without --region, every node holds it again.
    Pin {
        domain: String,
        #[arg(long = "region")]
        regions: Vec<String>,
    },
    /// List sites and what they serve.
    Sites,
    /// List a site's kept versions.
    Versions { domain: String },
    /// Serve an older version again.
    Rollback {
        domain: String,
        /// The version to serve (default: the one before the current).
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// Revoke a node (admins): every member refuses its records and
    /// connections from then on.
    Remove { id: PublicKey },
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
    /// Create a site; its publishers default to you.
    Add {
        domain: String,
        #[arg(long = "publisher")]
        publishers: Vec<PublicKey>,
    },
    /// Remove a site; it stops being served.
    Remove { domain: String },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn key() -> Result<SecretKey> {
    Ok(keys::load_or_create(&keys::home()?)?.0)
}

fn domain(s: &str) -> Result<Domain> {
    Domain::new(s).with_context(|| format!("{s:?} is not a domain name"))
}

fn ticket(cli_node: &Option<String>, project: &Project) -> Result<NodeTicket> {
    let text = cli_node
        .clone()
        .or_else(|| project.site.node.clone())
        .ok_or_else(|| {
            anyhow!(
                "no node given: pass --node TICKET, set MAKI_NODE, or add `node` to {PROJECT_FILE}"
            )
        })?;
    text.parse::<NodeTicket>()
        .context("the node ticket is not valid")
}

/// Polls the node for its members' holdings until each serves `seq` of
/// `site`; prints each as it gets there, names the laggards on timeout.
async fn wait_for_nodes(client: &Client, site: &Domain, seq: u64, timeout: u64) -> Result<()> {
    use std::collections::BTreeSet;
    let start = std::time::Instant::now();
    let mut done = BTreeSet::new();
    // Only the nodes the site's pin admits should hold it.
    let regions = publish::site_info(client, site).await?.regions;
    loop {
        let Response::Nodes(nodes) = client.call(&Request::Nodes).await? else {
            bail!("unexpected answer");
        };
        let nodes: Vec<_> = nodes
            .into_iter()
            .filter(|n| {
                regions.is_empty() || n.region.as_ref().is_some_and(|r| regions.contains(r))
            })
            .collect();
        let mut waiting = Vec::new();
        for n in &nodes {
            let holds = n.holds.iter().any(|h| &h.site == site && h.seq >= seq);
            if holds && done.insert(n.id) {
                println!(
                    "  {} ({}) serves it after {:.1}s",
                    n.id.fmt_short(),
                    n.region.as_deref().unwrap_or("-"),
                    start.elapsed().as_secs_f64()
                );
            } else if !holds {
                waiting.push(n);
            }
        }
        if waiting.is_empty() {
            println!("all {} nodes serve {site} head {seq}", nodes.len());
            return Ok(());
        }
        if start.elapsed().as_secs() >= timeout {
            let names: Vec<String> = waiting
                .iter()
                .map(|n| {
                    format!(
                        "{} ({}, {})",
                        n.id.fmt_short(),
                        n.region.as_deref().unwrap_or("-"),
                        n.health
                    )
                })
                .collect();
            bail!(
                "after {timeout}s, {} of {} nodes do not serve head {seq} yet: {}",
                waiting.len(),
                nodes.len(),
                names.join(", ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn connect(cli: &Cli, project: &Project) -> Result<(Client, SecretKey)> {
    let key = key()?;
    let client = Client::connect(&key, &ticket(&cli.node, project)?).await?;
    Ok((client, key))
}

async fn run(cli: Cli) -> Result<()> {
    let cwd = std::env::current_dir()?;
    let project = Project::load(&cwd)?;
    match &cli.command {
        Command::Keys => {
            let home = keys::home()?;
            let (k, new) = keys::load_or_create(&home)?;
            if new {
                eprintln!("created a new key in {}", home.display());
            }
            println!("{}", k.public());
        }
        Command::Init { site, dir } => {
            if cwd.join(PROJECT_FILE).exists() {
                bail!("{PROJECT_FILE} already exists here");
            }
            if let Some(s) = site {
                domain(s)?;
            }
            if let Some(n) = &cli.node {
                n.parse::<NodeTicket>()
                    .context("the node ticket is not valid")?;
            }
            Project {
                site: SiteSection {
                    domain: site.clone(),
                    dir: dir.clone(),
                    node: cli.node.clone(),
                },
            }
            .save(&cwd)?;
            println!("wrote {PROJECT_FILE}");
        }
        Command::Site(SiteCommand::Add {
            domain: d,
            publishers,
        }) => {
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let mut publishers = publishers.clone();
            if publishers.is_empty() {
                publishers.push(key.public());
            }
            publishers.sort();
            publishers.dedup();
            // Heads of this site start above any the network had for the
            // domain before (a removed site's), so nothing old comes back.
            let heads_after = match client.call(&Request::HeadFloor { domain: d.clone() }).await {
                Ok(Response::HeadFloor { seq }) => seq,
                Ok(other) => bail!("the node answered {other:?}"),
                Err(e) => return Err(e.into()),
            };
            let record = SiteRecord {
                format: RECORD_FORMAT,
                domain: d.clone(),
                aliases: Vec::new(),
                publishers,
                // Later changes of the site must carry a higher version;
                // the clock in milliseconds gives that without asking.
                version: now_millis(),
                removed: false,
                heads_after,
            };
            client
                .call(&Request::SiteAdd {
                    record: Signed::sign(&key, &record),
                })
                .await?;
            println!("added {d}");
            client.close().await;
        }
        Command::Site(SiteCommand::Remove { domain: d }) => {
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let current = publish::site_info(&client, &d).await?;
            let record = SiteRecord {
                format: RECORD_FORMAT,
                domain: d.clone(),
                aliases: Vec::new(),
                publishers: current.publishers,
                version: now_millis().max(current.record_version + 1),
                removed: true,
                heads_after: current.heads_after,
            };
            client
                .call(&Request::SiteRemove {
                    record: Signed::sign(&key, &record),
                })
                .await?;
            println!("removed {d}");
            client.close().await;
        }
        Command::Publish {
            dir,
            site,
            dry_run,
            wait,
            timeout,
        } => {
            let site = site
                .clone()
                .or_else(|| project.site.domain.clone())
                .ok_or_else(|| {
                    anyhow!("which site? pass --site DOMAIN or set `domain` in {PROJECT_FILE}")
                })?;
            let site = domain(&site)?;
            let dir = dir
                .clone()
                .or_else(|| project.site.dir.clone())
                .unwrap_or_else(|| PathBuf::from("."));
            let dir = if dir.is_absolute() {
                dir
            } else {
                cwd.join(dir)
            };
            let cache_path = cache_path(&dir)?;
            let mut cache = HashCache::load(&cache_path);
            if *dry_run {
                let (manifest, scanned) = publish::build(&dir, &site, &mut cache, None, 0)?;
                cache.save(&cache_path);
                warn_links(&scanned.skipped_links);
                print_manifest(&manifest, cli.json)?;
                return Ok(());
            }
            let (client, key) = connect(&cli, &project).await?;
            let mut progress = Bar::new();
            let outcome =
                publish::publish(&client, &key, &dir, &site, &mut cache, &mut progress).await;
            if let Err(publish::PublishError::Net(NetError::Refused(RpcError::SizeMismatch {
                ..
            }))) = &outcome
            {
                // The node found our manifest lying about a file: the hash
                // cache is not to be trusted; the next run hashes everything.
                cache.clear();
            }
            cache.save(&cache_path);
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    client.close().await;
                    return Err(e.into());
                }
            };
            let waiting = match (&outcome, *wait) {
                (Outcome::Published { seq, .. }, true) => Some(*seq),
                _ => None,
            };
            match outcome {
                Outcome::Unchanged { version } => {
                    println!("{site}: unchanged since version {version}; nothing published");
                }
                Outcome::Published {
                    version,
                    seq,
                    manifest,
                    files,
                    uploaded_blobs,
                    uploaded_bytes,
                    skipped_blobs,
                    skipped_bytes,
                } => {
                    println!("{site}: published version {version} (head {seq})");
                    println!("manifest {manifest}");
                    println!(
                        "{files} files; uploaded {uploaded_blobs} blobs ({}), skipped {skipped_blobs} blobs ({}) already on the node",
                        human(uploaded_bytes),
                        human(skipped_bytes)
                    );
                }
            }
            let waited = match waiting {
                Some(seq) => wait_for_nodes(&client, &site, seq, *timeout).await,
                None => Ok(()),
            };
            client.close().await;
            waited?;
        }
        Command::Invite { expires } => {
            let ticket = ticket(&cli.node, &project)?;
            let (client, key) = connect(&cli, &project).await?;
            let Response::Network { network, node } = client.call(&Request::Network).await? else {
                bail!("unexpected answer");
            };
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| anyhow!("no randomness: {e}"))?;
            let invite = Invite {
                format: RECORD_FORMAT,
                network,
                secret_hash: Hash::of(&secret),
                expires: publish::now() + *expires,
                issuer: node,
            };
            client
                .call(&Request::Invite {
                    invite: Signed::sign(&key, &invite),
                })
                .await?;
            client.close().await;
            eprintln!(
                "one-time invite, valid for {}; on the new machine run:\n  makiatto join <ticket> --data-dir /var/lib/makiatto",
                human_secs(*expires)
            );
            println!(
                "{}",
                InviteTicket {
                    network,
                    secret,
                    issuer: ticket,
                }
            );
        }
        Command::Pin { domain: d, regions } => {
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let mut regions = regions.clone();
            regions.sort();
            regions.dedup();
            let record = maki_protocol::Pin {
                format: RECORD_FORMAT,
                site: d.clone(),
                regions: regions.clone(),
                version: now_millis(),
            };
            client
                .call(&Request::Pin {
                    record: Signed::sign(&key, &record),
                })
                .await?;
            client.close().await;
            if regions.is_empty() {
                println!("{d}: held by every node");
            } else {
                println!("{d}: held by nodes in {}", regions.join(", "));
            }
        }
        Command::Nodes {
            action: Some(NodesCommand::Remove { id }),
        } => {
            let (client, key) = connect(&cli, &project).await?;
            let record = Revocation {
                format: RECORD_FORMAT,
                node: *id,
                version: now_millis(),
            };
            client
                .call(&Request::NodeRemove {
                    record: Signed::sign(&key, &record),
                })
                .await?;
            client.close().await;
            println!("removed node {id}; every member refuses it from now on");
        }
        Command::Nodes { action: None } => {
            let (client, _) = connect(&cli, &project).await?;
            let Response::Nodes(nodes) = client.call(&Request::Nodes).await? else {
                bail!("unexpected answer");
            };
            client.close().await;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                for n in nodes {
                    let addrs: Vec<String> = n.addrs.iter().map(|a| a.to_string()).collect();
                    let place = match n.location {
                        Some((lat, lon)) => format!(" ({lat:.2}, {lon:.2})"),
                        None => String::new(),
                    };
                    let rtt = n
                        .rtt_us
                        .map(|us| format!("  rtt {:.1} ms", us as f64 / 1000.0))
                        .unwrap_or_default();
                    let holds: Vec<String> = n
                        .holds
                        .iter()
                        .map(|h| format!("{}@{}", h.site, h.seq))
                        .collect();
                    let roles = if n.roles.is_empty() {
                        "no public roles".to_owned()
                    } else {
                        n.roles.join(",")
                    };
                    println!(
                        "{}  {}{}  {}  {}  {}{}  serves [{}]",
                        n.id,
                        n.region.as_deref().unwrap_or("-"),
                        place,
                        addrs.join(","),
                        roles,
                        n.health,
                        rtt,
                        holds.join(", ")
                    );
                }
            }
        }
        Command::Sites => {
            let (client, _) = connect(&cli, &project).await?;
            let Response::Sites(sites) = client.call(&Request::Sites).await? else {
                bail!("unexpected answer");
            };
            client.close().await;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&sites)?);
            } else {
                for s in sites {
                    let pinned = if s.regions.is_empty() {
                        String::new()
                    } else {
                        format!("  pinned to {}", s.regions.join(","))
                    };
                    match s.head {
                        Some(h) => println!(
                            "{}  version {}  {} files  {}  manifest {}{pinned}",
                            s.domain,
                            h.version,
                            h.files,
                            human(h.bytes),
                            h.manifest.fmt_short()
                        ),
                        None => println!("{}  (never published){pinned}", s.domain),
                    }
                }
            }
        }
        Command::Versions { domain: d } => {
            let d = domain(d)?;
            let (client, _) = connect(&cli, &project).await?;
            let versions = publish::versions(&client, &d).await?;
            client.close().await;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                for v in versions {
                    println!(
                        "{} {:>5}  {} files  {}  manifest {}",
                        if v.current { "*" } else { " " },
                        v.version,
                        v.files,
                        human(v.bytes),
                        v.manifest
                    );
                }
            }
        }
        Command::Rollback { domain: d, to } => {
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let (version, seq) = publish::rollback(&client, &key, &d, *to).await?;
            client.close().await;
            println!("{d}: now serving version {version} (head {seq})");
        }
    }
    Ok(())
}

/// Where the stat → hash cache of a folder lives: outside the folder.
fn cache_path(dir: &Path) -> Result<PathBuf> {
    let canon = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let id = blake3::hash(canon.as_os_str().as_encoded_bytes()).to_hex();
    Ok(keys::home()?.join("cache").join(&id[..32]))
}

fn warn_links(links: &[PathBuf]) {
    for l in links {
        eprintln!(
            "warning: skipped {} (a symlink out of the folder)",
            l.display()
        );
    }
}

fn print_manifest(m: &maki_protocol::Manifest, json: bool) -> Result<()> {
    let hash = m.hash();
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            manifest: String,
            site: &'a Domain,
            files: usize,
            bytes: u64,
            entries: Vec<serde_json::Value>,
        }
        let entries = m
            .entries
            .iter()
            .map(|(p, e)| {
                serde_json::json!({
                    "path": p.as_str(), "hash": e.hash.to_string(), "size": e.size,
                    "content_type": e.content_type,
                    "encodings": e.encodings.iter().map(|(k, v)| (k.token(), v.hash.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
                })
            })
            .collect();
        let out = Out {
            manifest: hash.to_string(),
            site: &m.site,
            files: m.entries.len(),
            bytes: m.total_size(),
            entries,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (p, e) in &m.entries {
        let encs: Vec<&str> = e.encodings.keys().map(|k| k.token()).collect();
        writeln!(
            out,
            "{}  {:>10}  {}  {}  {}",
            e.hash,
            e.size,
            e.content_type,
            encs.join(","),
            p
        )?;
    }
    writeln!(
        out,
        "{} rules, {} redirects",
        m.headers.len(),
        m.redirects.len()
    )?;
    writeln!(
        out,
        "{} files, {}; manifest {hash} (unsigned, dry run)",
        m.entries.len(),
        human(m.total_size())
    )?;
    Ok(())
}

/// `30s`, `15m`, `24h`, `7d` → seconds.
fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 24h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

fn human_secs(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress bar on a terminal, plain lines otherwise.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    done: u64,
    total: u64,
}

impl Bar {
    fn new() -> Self {
        Self {
            bar: None,
            done: 0,
            total: 0,
        }
    }
}

impl Progress for Bar {
    fn start(&mut self, total: u64, blobs: usize) {
        self.total = total;
        if blobs == 0 {
            return;
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            ) {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        } else {
            eprintln!("uploading {blobs} blobs ({})", human(total));
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        } else if self.total > 0 {
            eprintln!("uploaded {}", human(self.done));
        }
    }
}
