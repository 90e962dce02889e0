//! The node's configuration file, `makiatto.toml` in the data directory.
//!
//! Unknown fields are refused so a typo never silently falls back to a
//! default. Every field is documented here and in `docs/config.md`.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use serde::{Deserialize, Serialize};

/// The file name inside the data directory.
pub const CONFIG_FILE: &str = "makiatto.toml";

/// `makiatto.toml`.
///
/// Adding a setting is one field here and its default in `Default` below;
/// the file `makiatto init` writes is serialised from the struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A region name for pinning and DNS (e.g. `eu`); unset by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where this node is, in degrees `[latitude, longitude]`, for GeoDNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<[f64; 2]>,
    /// What this node offers the public: `"http"` serves sites, `"dns"`
    /// makes it a nameserver of every site. The default is `["http"]`;
    /// `[]` makes a node that only holds and forwards content.
    pub roles: Vec<String>,
    /// Where the HTTP edge listens (TCP). Default `0.0.0.0:80`.
    pub http: SocketAddr,
    /// Where the edge listens for HTTPS (TCP). Default `0.0.0.0:443`.
    pub https: SocketAddr,
    /// Whether TLS sessions resume (by ticket). Default true; off, every
    /// connection makes a full handshake (for benchmarks, or operators who
    /// want no ticket keys at all).
    pub tls_resumption: bool,
    /// Whether HTTP/3 (QUIC) answers on the HTTPS port's UDP side, and
    /// HTTPS responses advertise it (Alt-Svc). Default false.
    pub http3: bool,
    /// Where the nameserver listens (UDP and TCP), with the `dns` role.
    /// Default `0.0.0.0:53`.
    pub dns: SocketAddr,
    /// Where the nameserver answers DNS over TLS, with the `dns` role.
    /// Default: `dns`'s address at port 853 (at port 0 too when `dns` has
    /// port 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dot: Option<SocketAddr>,
    /// TTL of the geo answers (a site's A and AAAA records), in seconds:
    /// how long a resolver keeps sending visitors to a node that died.
    pub dns_ttl: u32,
    /// How many nodes a geo answer names (the nearest ones).
    pub dns_answers: usize,
    /// DNS worker threads for UDP; 0 means one per core.
    pub dns_threads: usize,
    /// Where the node's iroh endpoint listens (UDP, QUIC). Default `0.0.0.0:51821`.
    pub p2p: SocketAddr,
    /// Addresses put into this node's ticket, for nodes behind NAT or bound
    /// to an unspecified address. Default: the addresses actually bound.
    pub public_addrs: Vec<SocketAddr>,
    /// This node's public IP addresses: what DNS answers with, and where
    /// the other members' WireGuard sends. Default: the IPs of
    /// `public_addrs`, else of the addresses bound.
    pub public_ips: Vec<IpAddr>,
    /// The WireGuard mesh between members: `off`, `auto`, `kernel` or
    /// `userspace` (see [`MeshMode`]).
    pub mesh: MeshMode,
    /// The UDP port WireGuard listens on (with the mesh on). Default 51820.
    pub wireguard_port: u16,
    /// How many versions of each site to keep for rollback (at least 1).
    pub keep_versions: u32,
    /// The largest site (sum of file sizes) a publish may bring, in bytes.
    pub max_site_bytes: u64,
    /// How long a client may take to send a request's head; also how long
    /// an idle keep-alive connection stays open. Guards against slowloris.
    #[serde(with = "humantime_serde")]
    pub http_header_timeout: std::time::Duration,
    /// How long a response may wait for the client to take more of it; a
    /// client that stops reading longer is cut off (a slow-read guard).
    #[serde(with = "humantime_serde")]
    pub http_send_timeout: std::time::Duration,
    /// How often a node syncs its records with a few random members (it
    /// also syncs with all of them at start and after each local change).
    #[serde(with = "humantime_serde")]
    pub sync_interval: std::time::Duration,
    /// How long any step of a sync with a member may wait before the sync
    /// counts as failed (a member that is down, frozen or cut off); a sync
    /// that keeps moving may take `sync::LONGEST_SYNC` of these. Each
    /// member is synced by its own task, so a slow one holds up nobody else.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: std::time::Duration,
    /// HTTP worker threads (each with its own listener); 0 means one per core.
    pub http_threads: usize,
    /// Memory for hot blobs on the HTTP edge, in bytes. Blobs are immutable
    /// by hash, so this cache never needs invalidating.
    pub memory_cache_bytes: u64,
    /// Blobs up to this size are eligible for the memory cache; larger ones
    /// stream from disk.
    pub memory_cache_max_blob: u64,
    /// Bytes one key may have in uploads not yet committed, over all its
    /// publishes in progress at this node.
    pub max_upload_bytes: u64,
    /// How often blobs that no kept version references (abandoned
    /// uploads, pruned versions, removed sites) are deleted from disk.
    #[serde(with = "humantime_serde")]
    pub gc_interval: std::time::Duration,
}

/// Whether members talk over a WireGuard mesh, and which WireGuard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshMode {
    /// No mesh: members talk over their public addresses (QUIC, which is
    /// encrypted and authenticated by node key either way).
    #[default]
    Off,
    /// Kernel WireGuard where the kernel has it, else userspace.
    Auto,
    /// Kernel WireGuard only.
    Kernel,
    /// The in-process userspace WireGuard only.
    Userspace,
}

impl std::str::FromStr for MeshMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "auto" => Ok(Self::Auto),
            "kernel" => Ok(Self::Kernel),
            "userspace" => Ok(Self::Userspace),
            other => Err(format!(
                "{other:?} is not a mesh mode (off, auto, kernel, userspace)"
            )),
        }
    }
}

/// The roles this version knows.
const KNOWN_ROLES: &[&str] = &[maki_protocol::ROLE_HTTP, maki_protocol::ROLE_DNS];

impl Default for Config {
    fn default() -> Self {
        use std::time::Duration;
        Self {
            region: None,
            location: None,
            roles: vec![maki_protocol::ROLE_HTTP.to_owned()],
            http: SocketAddr::from(([0, 0, 0, 0], 80)),
            https: SocketAddr::from(([0, 0, 0, 0], 443)),
            tls_resumption: true,
            http3: false,
            dns: SocketAddr::from(([0, 0, 0, 0], 53)),
            dot: None,
            dns_ttl: 60,
            dns_answers: 2,
            dns_threads: 0,
            p2p: SocketAddr::from(([0, 0, 0, 0], 51821)),
            public_addrs: Vec::new(),
            public_ips: Vec::new(),
            mesh: MeshMode::Off,
            wireguard_port: 51820,
            keep_versions: 10,
            max_site_bytes: 10 << 30,
            http_header_timeout: Duration::from_secs(10),
            // nginx's send_timeout.
            http_send_timeout: Duration::from_secs(60),
            sync_interval: Duration::from_secs(5),
            sync_timeout: Duration::from_secs(10),
            http_threads: 0,
            memory_cache_bytes: 256 << 20,
            memory_cache_max_blob: 4 << 20,
            max_upload_bytes: 10 << 30,
            gc_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid configuration: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads and checks `DIR/makiatto.toml`.
    /// Where DNS over TLS listens (see [`Config::dot`]).
    pub fn dot_addr(&self) -> SocketAddr {
        self.dot.unwrap_or_else(|| {
            let port = if self.dns.port() == 0 { 0 } else { 853 };
            SocketAddr::new(self.dns.ip(), port)
        })
    }

    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: shown,
            message,
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some([lat, lon]) = self.location
            && !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
        {
            return Err(format!(
                "location [{lat}, {lon}] is not [latitude, longitude] in degrees"
            ));
        }
        if self.http_header_timeout < std::time::Duration::from_millis(500) {
            return Err("http_header_timeout must be at least 500ms".into());
        }
        if self.http_send_timeout < std::time::Duration::from_millis(500) {
            return Err("http_send_timeout must be at least 500ms".into());
        }
        if let Some(r) = self
            .roles
            .iter()
            .find(|r| !KNOWN_ROLES.contains(&r.as_str()))
        {
            return Err(format!(
                "unknown role {r:?} (known: {})",
                KNOWN_ROLES.join(", ")
            ));
        }
        if self.sync_interval < std::time::Duration::from_millis(100) {
            return Err("sync_interval must be at least 100ms".into());
        }
        if self.sync_timeout < std::time::Duration::from_secs(1) {
            return Err("sync_timeout must be at least 1s".into());
        }
        if self.keep_versions == 0 {
            return Err("keep_versions must be at least 1".into());
        }
        if self.gc_interval < std::time::Duration::from_secs(1) {
            return Err("gc_interval must be at least 1s".into());
        }
        if self.mesh != MeshMode::Off && self.wireguard_port == 0 {
            // Members send to the port the node record names, so it must
            // stay the same across restarts.
            return Err("wireguard_port must be a fixed port (not 0) with the mesh on".into());
        }
        if self.mesh != MeshMode::Off && self.wireguard_port == self.p2p.port() {
            return Err(format!(
                "wireguard_port {} is the p2p port too: both are UDP, give them different ports",
                self.wireguard_port
            ));
        }
        if let Some(ip) = self
            .public_ips
            .iter()
            .find(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(format!(
                "public_ips: {ip} is not an address members or visitors can reach"
            ));
        }
        if self.dns_answers == 0 {
            return Err("dns_answers must be at least 1".into());
        }
        if self.dns_ttl == 0 || self.dns_ttl > 86_400 {
            return Err("dns_ttl must be from 1 to 86400 seconds".into());
        }
        if self.max_upload_bytes == 0 {
            return Err("max_upload_bytes must be at least 1".into());
        }
        Ok(())
    }

    /// The file text: every setting, as `makiatto run` will read it.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(self).map_err(|e| ConfigError::Invalid {
            path: CONFIG_FILE.to_owned(),
            message: e.to_string(),
        })?;
        Ok(format!(
            "# Makiatto node configuration; each setting is explained in docs/config.md.\n\n{body}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut c = Config::default();
        c.public_addrs.push("192.0.2.1:51821".parse()?);
        c.region = Some("eu".into());
        c.location = Some([50.0, -8.25]);
        std::fs::write(dir.path().join(CONFIG_FILE), c.to_toml()?)?;
        assert_eq!(Config::load(dir.path())?, c);
        Ok(())
    }

    #[test]
    fn committed_examples_are_valid() -> Result<(), Box<dyn std::error::Error>> {
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
        for name in ["makiatto.dev.toml", "makiatto.prod.toml"] {
            let dir = tempfile::tempdir()?;
            std::fs::copy(examples.join(name), dir.path().join(CONFIG_FILE))?;
            Config::load(dir.path()).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    #[test]
    fn unknown_roles_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(CONFIG_FILE), "roles = [\"smtp\"]\n")?;
        let err = Config::load(dir.path()).expect_err("no smtp role");
        assert!(err.to_string().contains("unknown role \"smtp\""), "{err}");
        std::fs::write(dir.path().join(CONFIG_FILE), "roles = [\"dns\"]\n")?;
        assert_eq!(Config::load(dir.path())?.roles, ["dns"]);
        std::fs::write(dir.path().join(CONFIG_FILE), "roles = []\n")?;
        assert!(Config::load(dir.path())?.roles.is_empty());
        Ok(())
    }

    #[test]
    fn unknown_fields_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(CONFIG_FILE), "htp = \"1.2.3.4:80\"\n")?;
        let err = Config::load(dir.path()).expect_err("typo must fail");
        assert!(err.to_string().contains("htp"), "{err}");
        Ok(())
    }
}
