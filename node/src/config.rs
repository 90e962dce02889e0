//! The node's configuration file, `makiatto.toml` in the data directory.
//!
//! Unknown fields are refused so a typo never silently falls back to a
//! default. Every field is documented here and in `docs/config.md`.

use std::{net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

/// The file name inside the data directory.
pub const CONFIG_FILE: &str = "makiatto.toml";

/// `makiatto.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A region name for pinning and DNS (e.g. `eu`); unset by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where this node is, in degrees `[latitude, longitude]`, for GeoDNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<[f64; 2]>,
    /// What this node offers the public: `["http"]` (the default) serves
    /// sites; `[]` makes a node that only holds and forwards content.
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// Where the HTTP edge listens (TCP). Default `0.0.0.0:80`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// Where the node's iroh endpoint listens (UDP, QUIC). Default `0.0.0.0:51821`.
    #[serde(default = "default_p2p")]
    pub p2p: SocketAddr,
    /// Addresses put into this node's ticket, for nodes behind NAT or bound
    /// to an unspecified address. Default: the addresses actually bound.
    #[serde(default)]
    pub public_addrs: Vec<SocketAddr>,
    /// How many versions of each site to keep for rollback (at least 1).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u32,
    /// The largest site (sum of file sizes) a publish may bring, in bytes.
    #[serde(default = "default_max_site_bytes")]
    pub max_site_bytes: u64,
    /// How long a client may take to send a request's head; also how long
    /// an idle keep-alive connection stays open. Guards against slowloris.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub http_header_timeout: std::time::Duration,
    /// How long a response may wait for the client to take more of it; a
    /// client that stops reading longer is cut off (a slow-read guard).
    #[serde(default = "default_send_timeout", with = "humantime_serde")]
    pub http_send_timeout: std::time::Duration,
    /// How often a node syncs its records with a few random members (it
    /// also syncs with all of them at start and after each local change).
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: std::time::Duration,
    /// How long one sync with a member may take before it counts as failed
    /// (a member that is down, frozen or cut off). Each member is synced by
    /// its own task, so a slow one holds up nobody else.
    #[serde(default = "default_sync_timeout", with = "humantime_serde")]
    pub sync_timeout: std::time::Duration,
    /// HTTP worker threads (each with its own listener); 0 means one per core.
    #[serde(default)]
    pub http_threads: usize,
    /// Memory for hot blobs on the HTTP edge, in bytes. Blobs are immutable
    /// by hash, so this cache never needs invalidating.
    #[serde(default = "default_memory_cache_bytes")]
    pub memory_cache_bytes: u64,
    /// Blobs up to this size are eligible for the memory cache; larger ones
    /// stream from disk.
    #[serde(default = "default_memory_cache_max_blob")]
    pub memory_cache_max_blob: u64,
    /// Bytes one key may have in uploads not yet committed, over all its
    /// publishes in progress at this node.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// How often blobs that no kept version references (abandoned
    /// uploads, pruned versions, removed sites) are deleted from disk.
    #[serde(default = "default_gc_interval", with = "humantime_serde")]
    pub gc_interval: std::time::Duration,
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 80))
}
fn default_p2p() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 51821))
}
fn default_roles() -> Vec<String> {
    vec![maki_protocol::ROLE_HTTP.to_owned()]
}

/// The roles this version knows.
const KNOWN_ROLES: &[&str] = &[maki_protocol::ROLE_HTTP];

fn default_sync_interval() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

fn default_sync_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_header_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_send_timeout() -> std::time::Duration {
    // nginx's send_timeout.
    std::time::Duration::from_secs(60)
}
fn default_keep_versions() -> u32 {
    10
}
fn default_max_site_bytes() -> u64 {
    10 << 30
}
fn default_memory_cache_bytes() -> u64 {
    256 << 20
}
fn default_memory_cache_max_blob() -> u64 {
    4 << 20
}
fn default_max_upload_bytes() -> u64 {
    default_max_site_bytes()
}
fn default_gc_interval() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: None,
            roles: default_roles(),
            location: None,
            http: default_http(),
            p2p: default_p2p(),
            public_addrs: Vec::new(),
            http_header_timeout: default_header_timeout(),
            http_send_timeout: default_send_timeout(),
            sync_interval: default_sync_interval(),
            sync_timeout: default_sync_timeout(),
            http_threads: 0,
            keep_versions: default_keep_versions(),
            max_site_bytes: default_max_site_bytes(),
            memory_cache_bytes: default_memory_cache_bytes(),
            memory_cache_max_blob: default_memory_cache_max_blob(),
            max_upload_bytes: default_max_upload_bytes(),
            gc_interval: default_gc_interval(),
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
        if self.max_upload_bytes == 0 {
            return Err("max_upload_bytes must be at least 1".into());
        }
        Ok(())
    }

    /// The file text, with a comment per field.
    pub fn to_toml(&self) -> String {
        let addrs: Vec<String> = self
            .public_addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        let roles: Vec<String> = self.roles.iter().map(|r| format!("{r:?}")).collect();
        let region = match &self.region {
            Some(r) => format!("region = \"{}\"\n", r.escape_default()),
            None => "# region = \"eu\"\n".into(),
        };
        let location = match self.location {
            // `{:?}` keeps a decimal point (50.0, not 50): TOML floats.
            Some([lat, lon]) => format!("location = [{lat:?}, {lon:?}]\n"),
            None => "# location = [50.11, 8.68]\n".into(),
        };
        format!(
            "# Makiatto node configuration. Reference: docs/config.md\n\
             \n\
             # Region name and [latitude, longitude], for pinning and GeoDNS.\n\
             {region}{location}\
             # What this node offers: [\"http\"] serves sites; [] only holds content.\n\
             roles = [{}]\n\
             # HTTP edge (TCP).\n\
             http = \"{}\"\n\
             # iroh endpoint for peers and the CLI (UDP, QUIC).\n\
             p2p = \"{}\"\n\
             # Addresses to put in tickets (default: the bound ones).\n\
             public_addrs = [{}]\n\
             # Time for a client to send a request head (and keep-alive idle time).\n\
             http_header_timeout = \"{}\"\n\
             # Time a client may stop reading a response before it is cut off.\n\
             http_send_timeout = \"{}\"\n\
             # Anti-entropy: how often to sync records with a few random members.\n\
             sync_interval = \"{}\"\n\
             # How long one sync may take before that member counts as failing.\n\
             sync_timeout = \"{}\"\n\
             # HTTP worker threads; 0 = one per core.\n\
             http_threads = {}\n\
             # Versions kept per site for rollback.\n\
             keep_versions = {}\n\
             # Largest site a publish may bring, in bytes.\n\
             max_site_bytes = {}\n\
             # Memory for hot blobs on the edge, in bytes.\n\
             memory_cache_bytes = {}\n\
             # Largest blob kept in that memory, in bytes.\n\
             memory_cache_max_blob = {}\n\
             # Bytes one key may have in uploads not yet committed.\n\
             max_upload_bytes = {}\n\
             # How often unreferenced blobs are deleted from disk.\n\
             gc_interval = \"{}\"\n",
            roles.join(", "),
            self.http,
            self.p2p,
            addrs.join(", "),
            humantime_serde::re::humantime::format_duration(self.http_header_timeout),
            humantime_serde::re::humantime::format_duration(self.http_send_timeout),
            humantime_serde::re::humantime::format_duration(self.sync_interval),
            humantime_serde::re::humantime::format_duration(self.sync_timeout),
            self.http_threads,
            self.keep_versions,
            self.max_site_bytes,
            self.memory_cache_bytes,
            self.memory_cache_max_blob,
            self.max_upload_bytes,
            humantime_serde::re::humantime::format_duration(self.gc_interval),
        )
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
        std::fs::write(dir.path().join(CONFIG_FILE), c.to_toml())?;
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
        std::fs::write(dir.path().join(CONFIG_FILE), "roles = [\"dns\"]\n")?;
        let err = Config::load(dir.path()).expect_err("no dns role yet");
        assert!(err.to_string().contains("unknown role \"dns\""), "{err}");
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
