//! `maki dns setup DOMAIN`: the NS and glue records to set at the
//! registrar for a site's domain, and whether the world already sees them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use maki_protocol::{Domain, rpc::NodeInfo};

pub use maki_protocol::ROLE_DNS;
/// How many nameservers the FAQ promises a network runs.
pub const AT_LEAST: usize = 3;

/// One nameserver of the network: its name under the domain and its IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nameserver {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// The nameservers for `domain`, as every one of them names them
/// (`ns-<first 10 hex digits of the node id>.<domain>`).
pub fn nameservers(domain: &Domain, nodes: &[NodeInfo]) -> Vec<Nameserver> {
    let mut out: Vec<Nameserver> = nodes
        .iter()
        .filter(|n| n.roles.iter().any(|r| r == ROLE_DNS) && !n.ips.is_empty())
        .map(|n| Nameserver {
            name: format!("ns-{}.{domain}", n.id.fmt_short()),
            ips: n.ips.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The lines to enter at the registrar, zone-file style.
pub fn registrar_lines(domain: &Domain, ns: &[Nameserver]) -> Vec<String> {
    let mut lines: Vec<String> = ns
        .iter()
        .map(|n| format!("{domain}.  NS  {}.", n.name))
        .collect();
    for n in ns {
        for ip in &n.ips {
            let t = if ip.is_ipv4() { "A" } else { "AAAA" };
            lines.push(format!("{}.  {t}  {ip}   (glue)", n.name));
        }
    }
    lines
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A nameserver answered for the domain with authority.
    Answers { name: String, ip: IpAddr },
    /// A nameserver did not (down, unreachable, or the site unknown to it).
    Silent {
        name: String,
        ip: IpAddr,
        why: String,
    },
    /// The world's resolver names exactly our nameservers.
    Delegated,
    /// It names others (or some of ours and others).
    DelegatedElsewhere(Vec<String>),
    /// It knows no NS for the domain yet.
    NotDelegated(String),
}

/// Asks each nameserver for the domain's SOA, then the system's resolver
/// (the first `nameserver` of /etc/resolv.conf) for its NS set.
pub fn check(domain: &Domain, ns: &[Nameserver]) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in ns {
        for ip in &n.ips {
            let finding = match ask(SocketAddr::new(*ip, 53), domain, RecordType::SOA, false) {
                Ok(m) if m.metadata.authoritative && !m.answers.is_empty() => Finding::Answers {
                    name: n.name.clone(),
                    ip: *ip,
                },
                Ok(m) => Finding::Silent {
                    name: n.name.clone(),
                    ip: *ip,
                    why: format!("answered {} without authority", m.metadata.response_code),
                },
                Err(why) => Finding::Silent {
                    name: n.name.clone(),
                    ip: *ip,
                    why,
                },
            };
            out.push(finding);
        }
    }
    let Some(resolver) = system_resolver() else {
        out.push(Finding::NotDelegated(
            "no nameserver in /etc/resolv.conf to ask".into(),
        ));
        return out;
    };
    match ask(resolver, domain, RecordType::NS, true) {
        Ok(m) if m.metadata.response_code == ResponseCode::NoError => {
            let seen: BTreeSet<String> = m
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::NS(n) => Some(n.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                    _ => None,
                })
                .collect();
            let ours: BTreeSet<String> = ns.iter().map(|n| n.name.clone()).collect();
            out.push(if seen.is_empty() {
                Finding::NotDelegated(format!("{resolver} knows no NS for {domain} yet"))
            } else if seen == ours {
                Finding::Delegated
            } else {
                Finding::DelegatedElsewhere(seen.into_iter().collect())
            });
        }
        Ok(m) => out.push(Finding::NotDelegated(format!(
            "{resolver} answered {} for {domain} NS",
            m.metadata.response_code
        ))),
        Err(why) => out.push(Finding::NotDelegated(format!("asking {resolver}: {why}"))),
    }
    out
}

fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let ip: IpAddr = l.strip_prefix("nameserver")?.trim().parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// One query over UDP, two tries of 2 s.
fn ask(
    server: SocketAddr,
    domain: &Domain,
    qtype: RecordType,
    recurse: bool,
) -> Result<Message, String> {
    let name = Name::from_ascii(format!("{domain}.")).map_err(|e| e.to_string())?;
    let mut q = Message::query();
    q.metadata.recursion_desired = recurse;
    q.add_query(Query::query(name, qtype));
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    for _ in 0..2 {
        sock.send_to(&bytes, server).map_err(|e| e.to_string())?;
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from != server {
                continue;
            }
            match Message::from_vec(&buf[..n]) {
                Ok(m) if m.metadata.id == q.metadata.id => return Ok(m),
                _ => continue,
            }
        }
    }
    Err("no answer".into())
}

#[cfg(test)]
mod tests {
    use maki_protocol::SecretKey;

    use super::*;

    fn node(seed: u8, roles: &[&str], ips: &[&str]) -> NodeInfo {
        NodeInfo {
            id: SecretKey::from_bytes(&[seed; 32]).public(),
            addrs: vec![],
            region: None,
            location: None,
            version: 1,
            health: maki_protocol::rpc::Health::Up,
            rtt_us: None,
            holds: vec![],
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            mesh: None,
            checks: vec![],
            ips: ips.iter().map(|i| i.parse().expect("ip")).collect(),
        }
    }

    #[test]
    fn registrar_lines_name_every_nameserver_with_glue() {
        let domain = Domain::new("shop.example").expect("domain");
        let nodes = [
            node(1, &["http", "dns"], &["192.0.2.1", "2001:db8::1"]),
            node(2, &["http"], &["192.0.2.2"]),
            node(3, &["dns"], &["192.0.2.3"]),
            node(4, &["dns"], &[]),
        ];
        let ns = nameservers(&domain, &nodes);
        assert_eq!(ns.len(), 2, "only dns nodes with public IPs: {ns:?}");
        let lines = registrar_lines(&domain, &ns);
        assert_eq!(lines.iter().filter(|l| l.contains("  NS  ns-")).count(), 2);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("  AAAA  2001:db8::1   (glue)")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("shop.example.") || l.starts_with("ns-"))
        );
    }
}
