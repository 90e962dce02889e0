//! `maki`: publish sites to a Makiatto network and manage it.
//! Exit codes: 0 success, 1 error (the message names the fix), 2 usage.

//! Each command group is a module of the library (`sites`, `nodes`,
//! `publish`, `project`); this file parses arguments and prints.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use maki::{
    keys,
    net::{Client, NetError},
    nodes, peers,
    project::{PROJECT_FILE, Project, SiteSection},
    publish::{self, Outcome},
    render::{self, Bar, human, parse_duration},
    scan::HashCache,
    sites,
};
use maki_protocol::{Domain, NodeTicket, PublicKey, SecretKey, rpc::RpcError};

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
    Publish(PublishArgs),
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
    /// Let a machine outside the network (a laptop, a database host) into
    /// the WireGuard mesh, or take it out (admins).
    Peer {
        #[command(subcommand)]
        action: PeerCommand,
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
    /// The network's nameservers for your domains.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// A site's TLS certificate.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The network's ACME CA (admins).
    #[command(subcommand)]
    Acme(AcmeCommand),
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

#[derive(Debug, clap::Args)]
struct PublishArgs {
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
}

#[derive(Debug, Subcommand)]
enum NodesCommand {
    /// Revoke a node (admins): every member refuses its records and
    /// connections from then on.
    Remove { id: PublicKey },
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Add (or change) a peer; prints its wg-quick configuration.
    Add {
        /// 1 to 32 of a-z, 0-9 and -.
        name: String,
        /// Its WireGuard public key (`wg pubkey` prints it).
        #[arg(long)]
        key: String,
        /// Where it listens, if members can reach it (a server); a laptop
        /// behind NAT has none.
        #[arg(long)]
        endpoint: Option<std::net::SocketAddr>,
    },
    /// Remove a peer from every member's mesh.
    Remove { name: String },
    /// List the peers: name, mesh address, key, endpoint.
    List,
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
    /// Create a site; its publishers default to you.
    Add {
        domain: String,
        #[arg(long = "publisher")]
        publishers: Vec<PublicKey>,
        /// Another domain that serves the same site (and is a DNS zone
        /// of its own). Repeat for more.
        #[arg(long = "alias")]
        aliases: Vec<String>,
    },
    /// Remove a site; it stops being served.
    Remove { domain: String },
    /// Change a site's aliases.
    #[command(subcommand)]
    Alias(AliasCommand),
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Print the NS and glue records to set at DOMAIN's registrar, then
    /// check whether the nameservers answer for it and the world already
    /// sees the delegation.
    Setup { domain: String },
    /// Sign DOMAIN's zones with DNSSEC, or hand its keys to nameservers
    /// added since; prints the DS records for the registrar.
    Sign { domain: String },
    /// Print the DS records of DOMAIN (and its aliases) for the registrar.
    Ds { domain: String },
    /// A new signing key (after a nameserver was removed, or on a
    /// schedule); the old one stays until `maki dns retire`.
    Roll { domain: String },
    /// Drop the keys a roll left, once the registrar has the new DS.
    Retire { domain: String },
    /// Stop signing DOMAIN (remove its DS at the registrar first, and
    /// wait a day for the world to forget it).
    Unsign { domain: String },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Serve DOMAIN (and those of its aliases the certificate names) with
    /// your own certificate. Its key is sealed to the nodes that serve
    /// HTTPS and never travels in the clear. A site's publishers and
    /// admins may do this.
    Set {
        domain: String,
        /// The certificate chain, PEM: the site's certificate first, then
        /// its intermediates.
        #[arg(long)]
        cert: String,
        /// Its private key, PEM, PKCS#8 (`PRIVATE KEY`).
        #[arg(long)]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum AcmeCommand {
    /// Which CA the nodes order certificates from, and the CAA records
    /// every zone gets (those without CAA records of their own). What is
    /// not given is kept from the settings now (--reset: not).
    Set {
        /// The CA's ACME directory URL (https://).
        #[arg(long)]
        directory: Option<String>,
        /// Who the CA writes to (an email address). Repeat for more.
        #[arg(long)]
        contact: Vec<String>,
        /// A PEM file of root certificates the nodes trust besides the
        /// system's (a private CA). Repeat for more.
        #[arg(long)]
        root: Vec<String>,
        /// The CA's CAA identifier (e.g. letsencrypt.org). Repeat for more.
        #[arg(long)]
        caa: Vec<String>,
        /// How the nodes prove a name to the CA: http-01 (the name points
        /// at the network) or dns-01 (its zone is delegated to the
        /// network's nameservers). Wildcards always use dns-01.
        #[arg(long, value_parser = ["http-01", "dns-01"])]
        challenge: Option<String>,
        /// Start from nothing: what is not given is left out.
        #[arg(long)]
        reset: bool,
    },
    /// The network's ACME settings now.
    Show,
}

#[derive(Debug, Subcommand)]
enum AliasCommand {
    /// Make ALIAS… serve DOMAIN's site too.
    Add {
        domain: String,
        #[arg(required = true)]
        aliases: Vec<String>,
    },
    /// Stop ALIAS… serving DOMAIN's site.
    Remove {
        domain: String,
        #[arg(required = true)]
        aliases: Vec<String>,
    },
}

/// `println!` that hands the write error back instead of panicking: a
/// reader that goes away (`maki … | head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
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
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            // As a process killed by SIGPIPE ends: without a word.
            std::process::exit(141);
        }
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

async fn connect(cli: &Cli, project: &Project) -> Result<(Client, SecretKey)> {
    let key = key()?;
    let client = Client::connect(&key, &ticket(&cli.node, project)?).await?;
    Ok((client, key))
}

/// The site domain or alias of the network that `zone` is inside, if
/// any: its DS is served there, not set at a registrar.
fn served_above(zone: &Domain, known: &[maki_protocol::rpc::SiteInfo]) -> Option<Domain> {
    known
        .iter()
        .flat_map(|s| std::iter::once(&s.domain).chain(&s.aliases))
        .filter(|above| zone.as_str().ends_with(&format!(".{}", above.as_str())))
        .max_by_key(|above| above.as_str().len())
        .cloned()
}

/// The DS records of a site's zones: those inside another zone of the
/// network are published there; the others are for the registrar.
fn ds_report(
    json: bool,
    site: &Domain,
    keys: &maki_protocol::dnssec::ZoneKeys,
    known: &[maki_protocol::rpc::SiteInfo],
) -> Result<()> {
    let zones = zones_of(site, known);
    let (inside, own): (Vec<_>, Vec<_>) = zones
        .into_iter()
        .partition(|z| served_above(z, known).is_some());
    if json {
        return print_ds(json, &maki::dnssec::ds(&own, keys));
    }
    for z in &inside {
        if let Some(above) = served_above(z, known) {
            out!(
                "{z} is inside {above}, which these nameservers serve: its DS is published there, nothing to set at a registrar (it validates once {above} is signed too)."
            );
        }
    }
    if !own.is_empty() {
        out!("Set these DS records at the registrar of each zone:");
        print_ds(json, &maki::dnssec::ds(&own, keys))?;
        if keys.keys.len() > 1 {
            out!(
                "Keep the retiring DS until the new one is published and its TTL (often a day) has passed, then `maki dns retire {site}`."
            );
        }
    }
    Ok(())
}

/// A site's zones: its domain and its aliases.
fn zones_of(site: &Domain, known: &[maki_protocol::rpc::SiteInfo]) -> Vec<Domain> {
    let mut zones = vec![site.clone()];
    if let Some(s) = known.iter().find(|s| &s.domain == site) {
        zones.extend(s.aliases.iter().cloned());
    }
    zones
}

fn print_ds(json: bool, ds: &[maki::dnssec::Ds]) -> Result<()> {
    list(json, ds, |d| {
        if d.signing {
            d.to_string()
        } else {
            format!("{d}    ; retiring")
        }
    })
}

/// Prints `items` as JSON with `--json`, else one `line` each.
fn list<T: serde::Serialize>(json: bool, items: &[T], line: fn(&T) -> String) -> Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(items)?);
    } else {
        for i in items {
            out!("{}", line(i));
        }
    }
    Ok(())
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
            out!("{}", k.public());
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
                    hsts: false,
                },
                dns: None,
            }
            .save(&cwd)?;
            out!("wrote {PROJECT_FILE}");
        }
        Command::Site(SiteCommand::Add {
            domain: d,
            publishers,
            aliases,
        }) => {
            let d = domain(d)?;
            let aliases = aliases
                .iter()
                .map(|a| domain(a))
                .collect::<Result<Vec<_>>>()?;
            let (client, key) = connect(&cli, &project).await?;
            let added = sites::add(&client, &key, &d, publishers.clone(), aliases).await;
            client.close().await;
            added?;
            out!("added {d}");
        }
        Command::Site(SiteCommand::Alias(change)) => {
            let (d, add, remove) = match change {
                AliasCommand::Add { domain, aliases } => (domain, aliases, &Vec::new()),
                AliasCommand::Remove { domain, aliases } => (domain, &Vec::new(), aliases),
            };
            let d = domain(d)?;
            let add = add.iter().map(|a| domain(a)).collect::<Result<Vec<_>>>()?;
            let remove = remove
                .iter()
                .map(|a| domain(a))
                .collect::<Result<Vec<_>>>()?;
            let (client, key) = connect(&cli, &project).await?;
            let set = sites::set_aliases(&client, &key, &d, &add, &remove).await;
            client.close().await;
            let set = set?;
            let names: Vec<&str> = set.iter().map(|a| a.as_str()).collect();
            out!(
                "{d}: aliases {}",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            );
        }
        Command::Site(SiteCommand::Remove { domain: d }) => {
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let removed = sites::remove(&client, &key, &d).await;
            client.close().await;
            removed?;
            out!("removed {d}");
        }
        Command::Publish(args) => publish_command(&cli, &project, &cwd, args).await?,
        Command::Invite { expires } => {
            let issuer = ticket(&cli.node, &project)?;
            let (client, key) = connect(&cli, &project).await?;
            let invite = nodes::invite(&client, &key, issuer, *expires).await;
            client.close().await;
            let invite = invite?;
            eprintln!(
                "one-time invite, valid for {}; on the new machine run:\n  makiatto join <ticket> --data-dir /var/lib/makiatto",
                render::human_secs(*expires)
            );
            out!("{invite}");
        }
        Command::Pin { domain: d, regions } => {
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let pinned = sites::pin(&client, &key, &d, regions.clone()).await;
            client.close().await;
            let regions = pinned?;
            if regions.is_empty() {
                out!("{d}: held by every node");
            } else {
                out!("{d}: held by nodes in {}", regions.join(", "));
            }
        }
        Command::Nodes {
            action: Some(NodesCommand::Remove { id }),
        } => {
            let (client, key) = connect(&cli, &project).await?;
            let done = async {
                let known = sites::list(&client).await?;
                let nameserver = nodes::list(&client)
                    .await?
                    .iter()
                    .any(|n| n.id == *id && n.roles.iter().any(|r| r == maki_protocol::ROLE_DNS));
                // The signed sites whose keys it holds a copy of: each gets
                // a new key, which it never sees.
                let mut held = Vec::new();
                if nameserver {
                    for site in &known {
                        let info = maki::dnssec::info(&client, &site.domain).await?;
                        if maki::dnssec::holds_keys(&info, id) {
                            held.push(site.clone());
                        }
                    }
                }
                nodes::remove(&client, &key, *id).await?;
                let mut rolled = Vec::new();
                for site in held {
                    let info = maki::dnssec::info(&client, &site.domain).await?;
                    let outcome = maki::dnssec::change(
                        &key,
                        &site.domain,
                        &info,
                        maki::dnssec::Change::ForcedRoll,
                        maki::now_millis(),
                    )?;
                    maki::dnssec::set(&client, outcome.record.clone()).await?;
                    rolled.push((site, outcome.record.verify()?));
                }
                anyhow::Ok((nameserver, rolled, known))
            }
            .await;
            client.close().await;
            let (nameserver, rolled, known) = done?;
            out!("removed node {id}; every member refuses it from now on");
            if nameserver {
                out!(
                    "It was a nameserver: remove its NS and glue records at each registrar too (`maki dns setup DOMAIN` prints the set of today)."
                );
            }
            for (site, keys) in rolled {
                out!(
                    "\n{}: the removed nameserver held its DNSSEC key, so it has a new one, which signs now.",
                    site.domain
                );
                ds_report(cli.json, &site.domain, &keys, &known)?;
            }
        }
        Command::Peer {
            action:
                PeerCommand::Add {
                    name,
                    key: wg_key,
                    endpoint,
                },
        } => {
            if !maki_protocol::valid_peer_name(name) {
                anyhow::bail!("{name:?} is not a peer name (1 to 32 of a-z, 0-9 and -)");
            }
            let wg_key = maki_protocol::mesh::parse_key(wg_key)?;
            let (client, key) = connect(&cli, &project).await?;
            let added = peers::add(&client, &key, name, wg_key, *endpoint).await;
            client.close().await;
            print!("{}", added?);
        }
        Command::Peer {
            action: PeerCommand::Remove { name },
        } => {
            let (client, key) = connect(&cli, &project).await?;
            let removed = peers::remove(&client, &key, name).await;
            client.close().await;
            removed?;
            out!("removed peer {name} from the mesh");
        }
        Command::Peer {
            action: PeerCommand::List,
        } => {
            let (client, _) = connect(&cli, &project).await?;
            let listed = peers::list(&client).await;
            client.close().await;
            list(cli.json, &listed?, render::peer_line)?;
        }
        Command::Nodes { action: None } => {
            let (client, _) = connect(&cli, &project).await?;
            let listed = nodes::list(&client).await;
            client.close().await;
            list(cli.json, &listed?, render::node_line)?;
        }
        Command::Dns(DnsCommand::Ds { domain: d }) => {
            let d = domain(d)?;
            let (client, _) = connect(&cli, &project).await?;
            let info = maki::dnssec::info(&client, &d).await;
            let known = sites::list(&client).await;
            client.close().await;
            let info = info?;
            let lacking = maki::dnssec::without_keys(&info);
            let keys = info
                .keys
                .filter(|k| !k.keys.is_empty())
                .with_context(|| format!("{d} is not signed: `maki dns sign {d}` first"))?;
            ds_report(cli.json, &d, &keys, &known?)?;
            for node in lacking {
                eprintln!(
                    "warning: nameserver {} holds no copy of the keys of {d} (it joined since they were made): it answers SERVFAIL to validating resolvers until `maki dns sign {d}` runs again",
                    node.fmt_short()
                );
            }
        }
        Command::Dns(
            DnsCommand::Sign { domain: d }
            | DnsCommand::Roll { domain: d }
            | DnsCommand::Retire { domain: d }
            | DnsCommand::Unsign { domain: d },
        ) => {
            use maki::dnssec::Change;
            let change = match &cli.command {
                Command::Dns(DnsCommand::Roll { .. }) => Change::Roll,
                Command::Dns(DnsCommand::Retire { .. }) => Change::Retire,
                Command::Dns(DnsCommand::Unsign { .. }) => Change::Unsign,
                _ => Change::Sign,
            };
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let done = async {
                let known = sites::list(&client).await?;
                if let Some(site) = known.iter().find(|s| s.aliases.contains(&d)) {
                    anyhow::bail!(
                        "{d} is an alias of {}: sign {} (its aliases are signed with it)",
                        site.domain,
                        site.domain
                    );
                }
                let info = maki::dnssec::info(&client, &d).await?;
                let outcome = maki::dnssec::change(&key, &d, &info, change, maki::now_millis())?;
                maki::dnssec::set(&client, outcome.record.clone()).await?;
                let known = sites::list(&client).await?;
                anyhow::Ok((outcome, known))
            }
            .await;
            client.close().await;
            let (outcome, known) = done?;
            for node in &outcome.skipped {
                eprintln!(
                    "warning: nameserver {} announces no sealing key (an older makiatto): it gets no copy and answers SERVFAIL to validating resolvers until it is upgraded and `maki dns sign {d}` runs again",
                    node.fmt_short()
                );
            }
            let keys = outcome.record.verify()?;
            if keys.keys.is_empty() {
                match served_above(&d, &known) {
                    Some(above) => out!(
                        "{d} is no longer signed. {above} stops publishing its DS now; resolvers that hold it (5 minutes at most) fail on {d} until they forget it."
                    ),
                    None => out!(
                        "{d} is no longer signed. If its DS is still at the registrar, validating resolvers fail on it (SERVFAIL) until the DS is removed and its TTL has passed: remove the DS first, or `maki dns sign {d}` again."
                    ),
                }
            } else {
                out!(
                    "{d} is signed; its keys are sealed to {} nameserver(s).",
                    outcome.sealed_to
                );
                ds_report(cli.json, &d, &keys, &known)?;
            }
        }
        Command::Cert(CertCommand::Set {
            domain: d,
            cert,
            key: key_file,
        }) => {
            let d = domain(d)?;
            let upload = maki::cert::Upload::read(cert, key_file)?;
            let (client, key) = connect(&cli, &project).await?;
            let done = async {
                let info = maki::cert::info(&client, &d).await?;
                let record = maki::cert::record(&key, &d, &info, &upload, maki::now_millis())?;
                maki::cert::set(&client, record.clone()).await?;
                anyhow::Ok((info, record.verify()?))
            }
            .await;
            client.close().await;
            let (info, record) = done?;
            for node in &info.unsealable {
                eprintln!(
                    "warning: node {} announces no sealing key (an older makiatto): it gets no copy of the key and serves a self-signed certificate until it is upgraded and `maki cert set` runs again",
                    node.fmt_short()
                );
            }
            out!(
                "certificate set for {}; it expires {}",
                record.names.join(", "),
                httpdate::fmt_http_date(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.not_after)
                )
            );
        }
        Command::Acme(AcmeCommand::Set {
            directory,
            contact,
            root,
            caa,
            challenge,
            reset,
        }) => {
            let challenge = challenge.as_deref().map(|c| match c {
                "dns-01" => maki_protocol::acme::ChallengeKind::Dns01,
                _ => maki_protocol::acme::ChallengeKind::Http01,
            });
            let caa = caa.iter().map(|c| domain(c)).collect::<Result<Vec<_>>>()?;
            let (client, key) = connect(&cli, &project).await?;
            let done = async {
                let current = if *reset {
                    None
                } else {
                    maki::cert::acme_get(&client).await?
                };
                let change = maki::cert::AcmeChange {
                    directory: directory.as_deref(),
                    contact,
                    roots: root,
                    caa: &caa,
                    challenge,
                };
                let record = maki::cert::acme(&key, current.as_ref(), &change, maki::now_millis())?;
                let set = record.decode_trusted()?;
                maki::cert::acme_set(&client, record).await?;
                anyhow::Ok(set)
            }
            .await;
            client.close().await;
            let set = done?;
            out!("ACME settings set:\n{}", render::acme(&set));
        }
        Command::Acme(AcmeCommand::Show) => {
            let (client, _) = connect(&cli, &project).await?;
            let current = maki::cert::acme_get(&client).await;
            client.close().await;
            match current? {
                Some(c) => out!("{}", render::acme(&c)),
                None => out!("no ACME settings: maki acme set --directory URL"),
            }
        }
        Command::Dns(DnsCommand::Setup { domain: d }) => {
            let d = domain(d)?;
            let (client, _) = connect(&cli, &project).await?;
            let listed = nodes::list(&client).await;
            let known = sites::list(&client).await;
            // Nameservers added since the site was signed lack its keys.
            let lacking = match known.as_ref().ok().and_then(|k| {
                k.iter()
                    .find(|s| s.domain == d || s.aliases.contains(&d))
                    .map(|s| s.domain.clone())
            }) {
                Some(site) => maki::dnssec::info(&client, &site)
                    .await
                    .map(|i| (site, maki::dnssec::without_keys(&i)))
                    .ok(),
                None => None,
            };
            client.close().await;
            if let Some((site, lacking)) = &lacking
                && !lacking.is_empty()
            {
                out!(
                    "note: {} nameserver(s) hold no copy of {site}'s DNSSEC keys; run `maki dns sign {site}` before delegating to them\n",
                    lacking.len()
                );
            }
            let ns = maki::delegation::nameservers(&d, &listed?);
            if ns.is_empty() {
                bail!(
                    "no node has the dns role and a public IP: start nodes with `makiatto join … --dns 0.0.0.0:53 --public-ip IP`"
                );
            }
            // Delegating a name no zone serves would be a lame delegation.
            if let Ok(known) = known
                && !known
                    .iter()
                    .any(|s| s.domain == d || s.aliases.contains(&d))
            {
                out!(
                    "note: {d} is not among the sites and aliases you can see here; the nameservers answer only for those (`maki site add {d}`)\n"
                );
            }
            out!("At the registrar of {d}, set these nameservers and their glue:\n");
            for line in maki::delegation::registrar_lines(&d, &ns) {
                out!("  {line}");
            }
            if ns.len() < maki::delegation::AT_LEAST {
                out!(
                    "\nwarning: only {} nameserver(s); registrars and resolvers expect at least {} (one per provider is best)",
                    ns.len(),
                    maki::delegation::AT_LEAST
                );
            }
            out!("\nChecking:");
            let findings = tokio::task::spawn_blocking({
                let (d, ns) = (d.clone(), ns.clone());
                move || maki::delegation::check(&d, &ns)
            })
            .await?;
            for f in findings {
                use maki::delegation::Finding;
                match f {
                    Finding::Answers { name, ip } => {
                        out!("  ok    {name} ({ip}) answers for {d}")
                    }
                    Finding::Silent { name, ip, why } => out!("  FAIL  {name} ({ip}): {why}"),
                    Finding::Delegated => out!("  ok    {d} is delegated to these nameservers"),
                    Finding::DelegatedElsewhere(seen) => out!(
                        "  FAIL  {d} is delegated to {} instead; change it at the registrar",
                        seen.join(", ")
                    ),
                    Finding::NotDelegated(why) => out!(
                        "  wait  not delegated yet ({why}); run this again once the registrar has it"
                    ),
                }
            }
        }
        Command::Sites => {
            let (client, _) = connect(&cli, &project).await?;
            let listed = sites::list(&client).await;
            client.close().await;
            list(cli.json, &listed?, render::site_line)?;
        }
        Command::Versions { domain: d } => {
            let d = domain(d)?;
            let (client, _) = connect(&cli, &project).await?;
            let listed = publish::versions(&client, &d).await;
            client.close().await;
            list(cli.json, &listed?, render::version_line)?;
        }
        Command::Rollback { domain: d, to } => {
            let d = domain(d)?;
            let (client, key) = connect(&cli, &project).await?;
            let rolled = publish::rollback(&client, &key, &d, *to).await;
            client.close().await;
            let (version, seq) = rolled?;
            out!("{d}: now serving version {version} (head {seq})");
        }
    }
    Ok(())
}

async fn publish_command(
    cli: &Cli,
    project: &Project,
    cwd: &Path,
    args: &PublishArgs,
) -> Result<()> {
    let site = args
        .site
        .clone()
        .or_else(|| project.site.domain.clone())
        .ok_or_else(|| {
            anyhow!("which site? pass --site DOMAIN or set `domain` in {PROJECT_FILE}")
        })?;
    let site = domain(&site)?;
    let dir = args
        .dir
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
    // maki.toml's settings are its own site's only.
    let own_site = project
        .site
        .domain
        .as_deref()
        .and_then(|d| Domain::new(d).ok())
        .is_some_and(|d| d == site);
    let extras = publish::Extras {
        hsts: own_site && project.site.hsts,
    };
    if args.dry_run {
        let (manifest, scanned) = publish::build(&dir, &site, &mut cache, None, 0, &extras)?;
        cache.save(&cache_path);
        warn_links(&scanned.skipped_links);
        if cli.json {
            out!("{}", render::manifest_json(&manifest)?);
        } else {
            print!("{}", render::manifest_text(&manifest));
        }
        return Ok(());
    }
    let (client, key) = connect(cli, project).await?;
    let outcome = publish::publish(
        &client,
        &key,
        &dir,
        &site,
        &mut cache,
        &extras,
        &mut Bar::default(),
    )
    .await;
    if let Err(publish::PublishError::Net(NetError::Refused(RpcError::SizeMismatch { .. }))) =
        &outcome
    {
        // The node found our manifest lying about a file: the hash cache
        // is not to be trusted; the next run hashes everything.
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
    // The records of maki.toml belong to its own site only.
    if let (Some(entries), true) = (&project.dns, own_site) {
        let sent = async {
            let info = maki::sites::info(&client, &site).await?;
            let record =
                maki::zone::record(&key, &site, info.heads_after, entries, maki::now_millis())?;
            maki::zone::set(&client, record).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = sent {
            client.close().await;
            return Err(e.context(format!("the [[dns]] records of {PROJECT_FILE}")));
        }
        out!("{site}: {} DNS records set", entries.len());
    }
    let waiting = match (&outcome, args.wait) {
        (Outcome::Published { seq, .. }, true) => Some(*seq),
        _ => None,
    };
    match outcome {
        Outcome::Unchanged { version } => {
            out!("{site}: files unchanged since version {version}; no new version");
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
            out!("{site}: published version {version} (head {seq})");
            out!("manifest {manifest}");
            out!(
                "{files} files; uploaded {uploaded_blobs} blobs ({}), skipped {skipped_blobs} blobs ({}) already on the node",
                human(uploaded_bytes),
                human(skipped_bytes)
            );
        }
    }
    let waited = match waiting {
        Some(seq) => nodes::wait_until_served(
            &client,
            &site,
            seq,
            Duration::from_secs(args.timeout),
            |n, after| {
                // Progress: a reader gone by now is told at the end.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stdout(),
                    "  {} ({}) serves it after {:.1}s",
                    n.id.fmt_short(),
                    n.region.as_deref().unwrap_or("-"),
                    after.as_secs_f64()
                );
            },
        )
        .await
        .map(|count| Some((count, seq))),
        None => Ok(None),
    };
    client.close().await;
    if let Some((count, seq)) = waited? {
        out!("all {count} nodes serve {site} head {seq}");
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
