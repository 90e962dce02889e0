//! How `maki` shows things to a person: sizes, durations, one line per
//! node, site and version, a manifest listing, and upload progress.
//! (`--json` prints the protocol's own types instead.)

use std::{fmt::Write as _, io::IsTerminal};

use maki_protocol::{
    Domain, Manifest,
    rpc::{NodeInfo, SiteInfo, VersionInfo},
};

use crate::publish::Progress;

/// `30s`, `15m`, `24h`, `7d` → seconds (a bare number is hours).
pub fn parse_duration(s: &str) -> Result<u64, String> {
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

/// Seconds in the largest unit that divides them: `86400` → `1d`.
pub fn human_secs(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Bytes in binary units: `1536` → `1.5 KiB`.
pub fn human(bytes: u64) -> String {
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

/// A line of `maki nodes`.
pub fn node_line(n: &NodeInfo) -> String {
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
    let mut mesh = match &n.mesh {
        Some(m) => format!("  mesh {} ({})", m.addr, m.backend),
        None => String::new(),
    };
    // What the members' probes find: "http down (2/3 see it down)".
    for c in &n.checks {
        let verdict = if c.down { "down" } else { "up" };
        mesh.push_str(&format!(
            "  {} {verdict} ({}/{} see it down)",
            c.role, c.down_votes, c.voters
        ));
    }
    format!(
        "{}  {}{}  {}{mesh}  {}  {}{}  serves [{}]",
        n.id,
        n.region.as_deref().unwrap_or("-"),
        place,
        addrs.join(","),
        roles,
        n.health,
        rtt,
        holds.join(", ")
    )
}

/// A line of `maki peer list`.
pub fn peer_line(p: &maki_protocol::rpc::PeerInfo) -> String {
    let endpoint = p
        .endpoint
        .map_or_else(|| "no endpoint".to_owned(), |e| e.to_string());
    format!("{}  {}  {}  {endpoint}", p.name, p.addr, p.key)
}

/// The network's ACME settings, as `maki acme show` and `set` print them.
pub fn acme(c: &maki_protocol::acme::AcmeConfig) -> String {
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let challenge = match c.challenge {
        maki_protocol::acme::ChallengeKind::Http01 => "http-01",
        maki_protocol::acme::ChallengeKind::Dns01 => "dns-01",
    };
    format!(
        "directory  {}\ncontact    {}\nroots      {} extra\ncaa        {}\nchallenge  {challenge}",
        c.directory,
        list(c.contact.clone()),
        c.roots.len(),
        list(c.caa.iter().map(|d| d.as_str().to_owned()).collect()),
    )
}

/// A line of `maki sites`.
pub fn site_line(s: &SiteInfo) -> String {
    let mut pinned = if s.regions.is_empty() {
        String::new()
    } else {
        format!("  pinned to {}", s.regions.join(","))
    };
    if !s.aliases.is_empty() {
        let names: Vec<&str> = s.aliases.iter().map(|a| a.as_str()).collect();
        pinned.push_str(&format!("  aliases {}", names.join(",")));
    }
    let cert = match &s.cert {
        None => "  certificate self-signed (none from a CA yet)".to_owned(),
        Some(c) => {
            let origin = match c.origin {
                maki_protocol::cert::Origin::Acme => "ACME",
                maki_protocol::cert::Origin::Upload => "uploaded",
            };
            let expires = httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.not_after),
            );
            let issuer = c
                .issuer
                .as_deref()
                .map_or_else(String::new, |i| format!(" from {i}"));
            let mut line = format!(
                "  certificate {origin}{issuer} for {} until {expires}",
                c.names.join(",")
            );
            if let Some(problem) = &c.problem {
                line.push_str(&format!(" NOT SERVED: {problem}"));
            }
            line
        }
    };
    let mut cert = cert;
    if let Some(o) = &s.order {
        if o.ordering {
            cert.push_str(&format!("  ordering (node {})", o.holder.fmt_short()));
        }
        match o.error.as_deref().filter(|_| o.failures > 0) {
            Some(error) if o.ordering => {
                cert.push_str(&format!("  (the attempt before failed: {error})"));
            }
            Some(error) => {
                let next = if o.retry_at == 0 {
                    String::new()
                } else {
                    let at = httpdate::fmt_http_date(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(o.retry_at),
                    );
                    format!(", next try after {at}")
                };
                cert.push_str(&format!(
                    "  ORDER FAILED ({} in a row{next}): {error}",
                    o.failures
                ));
            }
            None => {}
        }
    }
    match &s.head {
        Some(h) => format!(
            "{}  version {}  {} files  {}  manifest {}{pinned}{cert}",
            s.domain,
            h.version,
            h.files,
            human(h.bytes),
            h.manifest.fmt_short()
        ),
        None => format!("{}  (never published){pinned}{cert}", s.domain),
    }
}

/// A line of `maki versions`; `*` marks the one served.
pub fn version_line(v: &VersionInfo) -> String {
    format!(
        "{} {:>5}  {} files  {}  manifest {}",
        if v.current { "*" } else { " " },
        v.version,
        v.files,
        human(v.bytes),
        v.manifest
    )
}

/// `maki publish --dry-run`: every file, then the totals.
pub fn manifest_text(m: &Manifest) -> String {
    let mut out = String::new();
    for (p, e) in &m.entries {
        let encs: Vec<&str> = e.encodings.keys().map(|k| k.token()).collect();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{}  {:>10}  {}  {}  {}",
            e.hash,
            e.size,
            e.content_type,
            encs.join(","),
            p
        );
    }
    let _ = writeln!(
        out,
        "{} rules, {} redirects",
        m.headers.len(),
        m.redirects.len()
    );
    let _ = writeln!(
        out,
        "{} files, {}; manifest {} (unsigned, dry run)",
        m.entries.len(),
        human(m.total_size()),
        m.hash()
    );
    out
}

/// `maki publish --dry-run --json`.
pub fn manifest_json(m: &Manifest) -> serde_json::Result<String> {
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
    serde_json::to_string_pretty(&Out {
        manifest: m.hash().to_string(),
        site: &m.site,
        files: m.entries.len(),
        bytes: m.total_size(),
        entries,
    })
}

/// Upload progress: a bar on a terminal, plain lines otherwise.
#[derive(Debug, Default)]
pub struct Bar {
    bar: Option<indicatif::ProgressBar>,
    done: u64,
    total: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("24"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(human_secs(86_400), "1d");
        assert_eq!(human_secs(90), "90s");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
