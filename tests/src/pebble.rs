//! Pebble, Let's Encrypt's ACME test server (Debian's `pebble`), started
//! for a test: its directory served with a certificate from a CA made
//! here, its challenges checked against the network's own nameserver and
//! HTTP port, and the root it issues under fetched from its management
//! port.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rustls::pki_types::CertificateDer;

use crate::{Trust, https_get, wait_for};

/// A running Pebble, killed when dropped.
#[derive(Debug)]
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// A PEM file of the roots to trust: the one its directory's
    /// certificate chains to, and the one it issues under.
    pub roots: PathBuf,
    /// The root it issues under (DER).
    pub issuing_root: CertificateDer<'static>,
    /// A PEM file of its directory's root alone (a wrong `--root`: the
    /// certificates it issues do not chain to it).
    pub directory_root: PathBuf,
    pub management: SocketAddr,
    tls_root: CertificateDer<'static>,
    child: Child,
    log: PathBuf,
}

/// How Pebble is started.
#[derive(Debug, Clone)]
pub struct PebbleSettings {
    /// The port of HTTP-01 checks (on whatever address the name resolves to).
    pub http_port: u16,
    /// The nameserver it resolves names with (DNS-01, and the addresses of
    /// HTTP-01).
    pub dns: SocketAddr,
    /// How long its certificates last (seconds); its default otherwise.
    pub validity: Option<u64>,
}

impl Pebble {
    /// Starts Pebble in `dir` and waits for its directory.
    pub async fn start(dir: &Path, settings: &PebbleSettings) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Its own TLS: a CA made here, and a leaf for 127.0.0.1 and localhost.
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble directory test CA");
        let tls_root = ca_params.self_signed(&ca_key)?.der().clone();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
            .signed_by(&leaf_key, &issuer)?;
        let cert_file = dir.join("pebble-cert.pem");
        let key_file = dir.join("pebble-key.pem");
        std::fs::write(&cert_file, leaf.pem())?;
        std::fs::write(&key_file, leaf_key.serialize_pem())?;
        let [listen, management, tls_port] = free_ports()?;
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": cert_file,
                "privateKey": key_file,
                "httpPort": settings.http_port,
                "tlsPort": tls_port.port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(secs) = settings.validity {
            config["pebble"]["certificateValidityPeriod"] = secs.into();
        }
        let config_file = dir.join("pebble-config.json");
        std::fs::write(&config_file, serde_json::to_vec_pretty(&config)?)?;
        let log = dir.join("pebble.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .arg("-dnsserver")
            .arg(settings.dns.to_string())
            .arg("-strict=false")
            // No artificial sleeps before checking a challenge.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .context("starting pebble (Debian package pebble)")?;
        let mut pebble = Self {
            directory: format!("https://{listen}/dir"),
            roots: dir.join("roots.pem"),
            issuing_root: CertificateDer::from(Vec::new()),
            directory_root: dir.join("directory-root.pem"),
            management,
            tls_root: tls_root.clone(),
            child,
            log,
        };
        let trust = Trust::Roots(vec![tls_root.clone()]);
        let dir_addr = listen;
        let waited = wait_for(Duration::from_secs(20), "pebble's directory", || {
            let trust = trust.clone();
            async move {
                Ok(
                    https_get(dir_addr, "localhost", "/dir", &["http/1.1"], &trust)
                        .await
                        .is_ok_and(|r| r.reply.status == 200),
                )
            }
        })
        .await;
        if let Err(e) = waited {
            bail!("{e}\npebble's log:\n{}", pebble.log());
        }
        pebble.issuing_root = pebble.root_at("/roots/0").await?;
        let pem = format!(
            "{}{}",
            pem("CERTIFICATE", &tls_root),
            pem("CERTIFICATE", &pebble.issuing_root)
        );
        std::fs::write(&pebble.roots, pem)?;
        std::fs::write(&pebble.directory_root, self::pem("CERTIFICATE", &tls_root))?;
        Ok(pebble)
    }

    /// A certificate from the management port, PEM there, DER here.
    async fn root_at(&self, path: &str) -> Result<CertificateDer<'static>> {
        let trust = Trust::Roots(vec![self.tls_root.clone()]);
        let got = https_get(self.management, "localhost", path, &["http/1.1"], &trust).await?;
        let text = String::from_utf8(got.reply.body.to_vec())?;
        use rustls::pki_types::pem::PemObject;
        Ok(CertificateDer::from_pem_slice(text.as_bytes())
            .with_context(|| format!("pebble's {path}: {text}"))?
            .into_owned())
    }

    /// The status of the certificate with `serial` (hex), as Pebble's
    /// management port tells it: "Valid" or "Revoked".
    pub async fn status(&self, serial_hex: &str) -> Result<String> {
        let trust = Trust::Roots(vec![self.tls_root.clone()]);
        let path = format!("/cert-status-by-serial/{serial_hex}");
        let got = https_get(self.management, "localhost", &path, &["http/1.1"], &trust).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&got.reply.body).with_context(|| format!("pebble's {path}"))?;
        Ok(v["Status"].as_str().unwrap_or_default().to_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `N` distinct loopback ports nothing listens on now (each held open
/// until all are found, so none is handed out twice).
pub fn free_ports<const N: usize>() -> Result<[SocketAddr; N]> {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let addrs: Vec<SocketAddr> = held
        .iter()
        .map(|l| l.local_addr())
        .collect::<std::io::Result<_>>()?;
    addrs.try_into().map_err(|_| anyhow::anyhow!("{N} ports"))
}

/// `der` as a PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
