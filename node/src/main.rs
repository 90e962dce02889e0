//! `makiatto`: the node daemon. Exit codes: 0 clean stop, 1 error, 2 usage.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use maki_protocol::{InviteTicket, PublicKey};
use makiatto::{
    Config, Node,
    config::{CONFIG_FILE, MeshMode},
    setup,
};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "makiatto",
    version,
    about = "Makiatto node: stores, replicates and serves sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node and a new network in DATA_DIR.
    Init {
        #[arg(long, env = "MAKIATTO_DATA_DIR")]
        data_dir: PathBuf,
        /// An admin's public key (`maki keys` prints it). Repeat for more.
        #[arg(long = "admin", required = true)]
        admins: Vec<PublicKey>,
        /// HTTP listen address.
        #[arg(long, default_value = "0.0.0.0:80")]
        http: SocketAddr,
        /// HTTPS listen address.
        #[arg(long, default_value = "0.0.0.0:443")]
        https: SocketAddr,
        /// p2p (iroh QUIC, UDP) listen address.
        #[arg(long, default_value = "0.0.0.0:51821")]
        p2p: SocketAddr,
        #[command(flatten)]
        dns: DnsArgs,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Join a network with an invite ticket (from `maki invite`), write
    /// DATA_DIR, then run like `run`. Later starts use `run`.
    Join {
        /// The `makinvite1…` ticket. Parsed by us, not by clap: clap would
        /// echo a malformed one (a secret) into the error.
        ticket: String,
        #[arg(long, env = "MAKIATTO_DATA_DIR")]
        data_dir: PathBuf,
        /// A region name for pinning and DNS (e.g. `eu`).
        #[arg(long)]
        region: Option<String>,
        /// Latitude in degrees, for GeoDNS.
        #[arg(long, requires = "lon", allow_hyphen_values = true)]
        lat: Option<f64>,
        /// Longitude in degrees, for GeoDNS.
        #[arg(long, requires = "lat", allow_hyphen_values = true)]
        lon: Option<f64>,
        #[arg(long, default_value = "0.0.0.0:80")]
        http: SocketAddr,
        #[arg(long, default_value = "0.0.0.0:443")]
        https: SocketAddr,
        #[arg(long, default_value = "0.0.0.0:51821")]
        p2p: SocketAddr,
        #[command(flatten)]
        dns: DnsArgs,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Run the node in DATA_DIR until SIGINT or SIGTERM.
    Run {
        #[arg(long, env = "MAKIATTO_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Check DATA_DIR/makiatto.toml and exit.
    Validate {
        #[arg(long, env = "MAKIATTO_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// The geo database the nameserver places visitors with.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
}

#[derive(Debug, Subcommand)]
enum GeoipCommand {
    /// Check MaxMind-format city databases (the standard layout of DB-IP
    /// City Lite or GeoLite2, or the flat one of ip-location-db, whose
    /// IPv4 and IPv6 files are installed one after the other) and install
    /// them into DATA_DIR/geoip/. A running node reads them within a
    /// second. See docs/dns.md for free sources and their attribution.
    ///
    /// Each FILE may be an https:// URL (a `.gz` is unpacked).
    Install {
        #[arg(long, env = "MAKIATTO_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(required = true)]
        files: Vec<String>,
    },
}

/// Whether the node is a nameserver, and where.
#[derive(Debug, clap::Args)]
struct DnsArgs {
    /// Answer DNS for the sites at ADDR (UDP and TCP): adds the `dns`
    /// role. Nameservers listen at port 53 in production.
    #[arg(long, value_name = "ADDR")]
    dns: Option<SocketAddr>,
}

impl DnsArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(addr) = self.dns {
            config.dns = addr;
            config.roles.push(makiatto::dns::ROLE_DNS.to_owned());
        }
    }
}

/// The WireGuard mesh settings `init` and `join` write.
#[derive(Debug, clap::Args)]
struct MeshArgs {
    /// The WireGuard mesh between members: off, auto, kernel or userspace.
    #[arg(long, default_value = "off")]
    mesh: MeshMode,
    /// The UDP port WireGuard listens on.
    #[arg(long, default_value_t = 51820)]
    wireguard_port: u16,
    /// This node's public IP (repeat for more): what DNS answers with and
    /// where members' WireGuard sends. Default: the p2p addresses' IPs.
    #[arg(long = "public-ip")]
    public_ips: Vec<std::net::IpAddr>,
}

// `pub(crate)`: `makiatto-next` (src/bin) is this same program, built with
// a test-only feature.
pub(crate) fn main() {
    // The release build aborts on any panic (`panic = "abort"`: the
    // userspace WireGuard device needs it). Make every build do so, so a
    // panic a visitor or publisher can trigger ends a test's node exactly
    // as it would end a production node, instead of vanishing into a
    // join set that swallows it.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    // The test-only feature makes a node carry a record kind and format no
    // release has: only the `makiatto-next` test binary may be built so.
    if cfg!(feature = "next-format") && env!("CARGO_BIN_NAME") != "makiatto-next" {
        eprintln!("error: this makiatto was built with the test-only `next-format` feature");
        std::process::exit(2);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap quotes what it could not place; an invite ticket there
            // (a stray argument, a misplaced flag) is a secret.
            let text = redact(&e.render().to_string());
            if e.use_stderr() {
                eprint!("{text}");
            } else {
                print!("{text}");
            }
            std::process::exit(e.exit_code());
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            // The userspace WireGuard warns, unattributed, at every failed
            // handshake with a peer that is offline: a line a second per
            // such peer. hickory-proto warns at odd EDNS options in a query:
            // a line per forged packet. Their errors stay.
            EnvFilter::try_from_env("MAKIATTO_LOG").unwrap_or_else(|_| {
                EnvFilter::new("info,defguard_boringtun=error,hickory_proto=error")
            }),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        eprintln!("error: {}", redact(&format!("{e:#}")));
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            admins,
            http,
            https,
            p2p,
            dns,
            mesh,
        } => {
            let mut config = Config {
                http,
                https,
                p2p,
                mesh: mesh.mesh,
                wireguard_port: mesh.wireguard_port,
                public_ips: mesh.public_ips,
                ..Config::default()
            };
            dns.apply(&mut config);
            config.validate().map_err(anyhow::Error::msg)?;
            let created = setup::init(&data_dir, admins, &config)?;
            println!("node {}", created.node);
            println!("network {}", created.network);
            println!(
                "start it with: makiatto run --data-dir {}",
                data_dir.display()
            );
            Ok(())
        }
        Command::Validate { data_dir } => {
            Config::load(&data_dir)?;
            println!("{} is valid", data_dir.join(CONFIG_FILE).display());
            Ok(())
        }
        Command::Run { data_dir } => run_node(&data_dir).await,
        Command::Geoip {
            command: GeoipCommand::Install { data_dir, files },
        } => {
            for file in files {
                let got = if file.contains("://") {
                    let bytes = makiatto::download::fetch(&file).await?;
                    makiatto::dns::geoip::install_bytes(&data_dir, Path::new(&file), bytes)?
                } else {
                    makiatto::dns::geoip::install(&data_dir, Path::new(&file))?
                };
                println!(
                    "installed {} ({}, {} layout) as {}",
                    file,
                    got.kind,
                    got.layout,
                    got.path.display()
                );
            }
            Ok(())
        }
        Command::Join {
            ticket,
            data_dir,
            region,
            lat,
            lon,
            http,
            https,
            p2p,
            dns,
            mesh,
        } => {
            let mut config = Config {
                region,
                location: lat.zip(lon).map(|(lat, lon)| [lat, lon]),
                http,
                https,
                p2p,
                mesh: mesh.mesh,
                wireguard_port: mesh.wireguard_port,
                public_ips: mesh.public_ips,
                ..Config::default()
            };
            dns.apply(&mut config);
            let ticket: InviteTicket = ticket
                .parse()
                .map_err(|e| anyhow::anyhow!("the invite ticket is not valid: {e}"))?;
            config.validate().map_err(anyhow::Error::msg)?;
            let node = setup::join(&ticket, &data_dir, &config).await?;
            eprintln!("joined network {} as node {node}", ticket.network);
            run_node(&data_dir).await
        }
    }
}

async fn run_node(data_dir: &std::path::Path) -> Result<()> {
    let node = Node::spawn(data_dir).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ready http={} https={} dns={} dot={} ticket={}",
        node.http_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        node.https_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        node.dns_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        node.dot_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        node.ticket()
    )?;
    out.flush()?;
    drop(out);
    wait_for_signal().await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// `text` with every invite ticket in it cut to its prefix: a ticket holds
/// the secret that lets a machine join.
fn redact(text: &str) -> String {
    const PREFIX: &str = "makinvite1";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at + PREFIX.len()]);
        out.push('…');
        rest = &rest[at + PREFIX.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tickets_are_cut_from_messages() {
        assert_eq!(
            super::redact("unexpected argument 'makinvite1abc234xyz' found"),
            "unexpected argument 'makinvite1…' found"
        );
        assert_eq!(super::redact("no ticket here"), "no ticket here");
        assert_eq!(
            super::redact("makinvite1a makinvite1b"),
            "makinvite1… makinvite1…"
        );
    }
}
