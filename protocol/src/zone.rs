//! A site's own DNS records (`[[dns]]` in `maki.toml`): what its zone
//! answers besides the geo names, signed by a publisher of the site and
//! replicated to every nameserver.
//!
//! A tenant may answer only for names of its own zone, and never in a
//! way that could take traffic or certificates from another: no
//! delegation (NS, DS, DNSKEY), no `_acme-challenge` names (DNS-01 is
//! the network's), no records at the apex where the geo answers live,
//! and nothing at or below another site's domain (checked where the
//! other sites are known: `authorize`, and at answer time, where the
//! longest zone wins).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::{Domain, Signable};

/// The kind number of [`ZoneRecord`] (see [`crate::kind_context`]).
pub const ZONE_KIND: u32 = 7;

/// The largest [`ZoneRecord`], encoded.
pub const MAX_ZONE_BYTES: usize = 64 << 10;
/// The most records one zone may declare.
pub const MAX_ZONE_RECORDS: usize = 1000;
/// The TTLs a record may ask for, in seconds.
pub const TTL_RANGE: std::ops::RangeInclusive<u32> = 30..=86_400;

/// A site's records. Signed by a publisher of the site or an admin; the
/// newest version replaces the whole set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneRecord {
    pub format: u16,
    pub site: Domain,
    /// The site's `heads_after` when signed: records of a site removed
    /// and added again (perhaps for a new owner) never come back, since a
    /// site added again gets a higher one.
    pub incarnation: u64,
    pub records: Vec<UserRecord>,
    pub version: u64,
}

impl Signable for ZoneRecord {
    const CONTEXT: &'static [u8] = b"makiatto/record/7";
}

/// One record: `name` relative to the site's domain (`www`, `*.api`,
/// `_dmarc`; `@` for the apex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

/// What a record says. Types a tenant may not set have no variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// A fully qualified target.
    Cname(String),
    Mx {
        preference: u16,
        exchange: String,
    },
    /// Strings of at most 255 bytes each.
    Txt(Vec<String>),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Caa {
        critical: bool,
        tag: String,
        value: String,
    },
}

impl Data {
    pub fn type_name(&self) -> &'static str {
        match self {
            Data::A(_) => "A",
            Data::Aaaa(_) => "AAAA",
            Data::Cname(_) => "CNAME",
            Data::Mx { .. } => "MX",
            Data::Txt(_) => "TXT",
            Data::Srv { .. } => "SRV",
            Data::Caa { .. } => "CAA",
        }
    }
}

/// Why a zone's records were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZoneError {
    #[error("the records take {0} bytes; at most {MAX_ZONE_BYTES}")]
    TooLarge(usize),
    #[error("{0} records; at most {MAX_ZONE_RECORDS}")]
    TooMany(usize),
    #[error("{name:?} is not a name in the zone (labels of a-z, 0-9, - and _, or * first): {why}")]
    BadName { name: String, why: &'static str },
    #[error(
        "{name}: {rtype} records are not for tenants (delegation and DNSSEC keys are the network's)"
    )]
    RefusedType { name: String, rtype: String },
    #[error("{0}: _acme-challenge names are the network's (it proves domains for certificates)")]
    AcmeChallenge(String),
    #[error("{name}: the apex answers with the nodes (geo); {rtype} cannot be set there")]
    AtGeoName { name: String, rtype: &'static str },
    #[error("{0}: a CNAME must be the only record at its name")]
    CnameAndOther(String),
    #[error("{name}: TTL {ttl} is outside 30..=86400 seconds")]
    BadTtl { name: String, ttl: u32 },
    #[error("{name}: {why}")]
    BadData { name: String, why: String },
    #[error("made for the site before it was removed and added again")]
    OtherIncarnation,
}

/// The types a tenant may name in `maki.toml`; the client refuses the
/// others with [`ZoneError::RefusedType`].
pub const ALLOWED_TYPES: &[&str] = &["A", "AAAA", "CNAME", "MX", "TXT", "SRV", "CAA"];

/// Whether the relative `name` is, or is under, a nameserver's name
/// (`ns-` and 10 hex digits, right under the apex): the network answers
/// there, so a tenant's record would never be served. Refused where
/// records are taken from a tenant (the CLI, the node taking a publish),
/// not in [`ZoneRecord::check`]: records already replicated stay valid.
pub fn nameserver_name(name: &str) -> bool {
    let top = name.trim_end_matches('.').rsplit('.').next().unwrap_or("");
    top.len() == 13
        && top[..3].eq_ignore_ascii_case("ns-")
        && top[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `rtype` (upper case) is one a tenant may never set.
pub fn refused_type(rtype: &str) -> bool {
    !ALLOWED_TYPES.contains(&rtype)
}

/// `name` as a relative owner name, lowercase; `@` for the apex.
fn normalise(name: &str) -> Result<String, ZoneError> {
    let bad = |why| ZoneError::BadName {
        name: name.to_owned(),
        why,
    };
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if n == "@" || n.is_empty() {
        return Ok("@".into());
    }
    if n.len() > 200 {
        return Err(bad("longer than 200 characters"));
    }
    for (i, label) in n.split('.').enumerate() {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("a label is empty or longer than 63"));
        }
        if label == "*" {
            if i != 0 {
                return Err(bad("* may only be the first label"));
            }
            continue;
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad("a label has a character other than a-z, 0-9, - and _"));
        }
    }
    Ok(n)
}

/// A fully qualified host name a record points at.
fn check_target(owner: &str, target: &str) -> Result<(), ZoneError> {
    let t = target.trim_end_matches('.');
    let ok = !t.is_empty()
        && t.len() <= 253
        && t.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(ZoneError::BadData {
            name: owner.to_owned(),
            why: format!("{target:?} is not a host name"),
        })
    }
}

impl ZoneRecord {
    /// Checks what the records may say on their own (the other sites are
    /// the caller's: see the module docs). Names come back normalised
    /// in [`ZoneRecord::normalised`].
    pub fn check(&self) -> Result<(), ZoneError> {
        let len = crate::codec::encode(self).len();
        if len > MAX_ZONE_BYTES {
            return Err(ZoneError::TooLarge(len));
        }
        if self.records.len() > MAX_ZONE_RECORDS {
            return Err(ZoneError::TooMany(self.records.len()));
        }
        let mut cnames = std::collections::HashSet::new();
        let mut others = std::collections::HashSet::new();
        for r in &self.records {
            let name = normalise(&r.name)?;
            if name.split('.').any(|l| l == "_acme-challenge") {
                return Err(ZoneError::AcmeChallenge(name));
            }
            if !TTL_RANGE.contains(&r.ttl) {
                return Err(ZoneError::BadTtl { name, ttl: r.ttl });
            }
            let rtype = r.data.type_name();
            if name == "@" && matches!(r.data, Data::A(_) | Data::Aaaa(_) | Data::Cname(_)) {
                return Err(ZoneError::AtGeoName { name, rtype });
            }
            let bad = |why: String| ZoneError::BadData {
                name: name.clone(),
                why,
            };
            match &r.data {
                Data::A(_) | Data::Aaaa(_) => {}
                Data::Cname(t) => check_target(&name, t)?,
                Data::Mx { exchange, .. } => check_target(&name, exchange)?,
                Data::Srv { target, .. } => check_target(&name, target)?,
                Data::Txt(parts) => {
                    if parts.is_empty() {
                        return Err(bad("a TXT record needs at least one string".into()));
                    }
                    if let Some(p) = parts.iter().find(|p| p.len() > 255) {
                        return Err(bad(format!(
                            "a TXT string of {} bytes; at most 255 each",
                            p.len()
                        )));
                    }
                }
                Data::Caa { tag, value, .. } => {
                    let tag_ok = !tag.is_empty()
                        && tag.len() <= 15
                        && tag.bytes().all(|b| b.is_ascii_alphanumeric());
                    if !tag_ok {
                        return Err(bad(format!("{tag:?} is not a CAA tag")));
                    }
                    if value.len() > 255 {
                        return Err(bad("a CAA value over 255 bytes".into()));
                    }
                }
            }
            if matches!(r.data, Data::Cname(_)) {
                if others.contains(&name) || !cnames.insert(name.clone()) {
                    return Err(ZoneError::CnameAndOther(name));
                }
            } else if cnames.contains(&name) {
                return Err(ZoneError::CnameAndOther(name));
            } else {
                others.insert(name);
            }
        }
        Ok(())
    }

    /// The records with their names normalised (lowercase, `@` for the
    /// apex); records whose name does not normalise are left out (a
    /// checked record has none).
    pub fn normalised(&self) -> Vec<UserRecord> {
        self.records
            .iter()
            .filter_map(|r| {
                Some(UserRecord {
                    name: normalise(&r.name).ok()?,
                    ttl: r.ttl,
                    data: r.data.clone(),
                })
            })
            .collect()
    }

    /// The fully qualified names of the records that fall at or below
    /// `other` (another site's domain or alias): what a tenant may not
    /// claim.
    pub fn names_under(&self, other: &Domain) -> Vec<String> {
        self.normalised()
            .into_iter()
            .map(|r| fqdn(&r.name, &self.site))
            .filter(|n| {
                let o = other.as_str();
                n == o
                    || n.ends_with(&format!(".{o}"))
                    // A wildcard covers names below its parent.
                    || n.strip_prefix("*.").is_some_and(|p| o.ends_with(&format!(".{p}")) || p == o)
            })
            .collect()
    }
}

/// `name` (relative, `@` for the apex) under `site`, without a final dot.
pub fn fqdn(name: &str, site: &Domain) -> String {
    if name == "@" {
        site.as_str().to_owned()
    } else {
        format!("{name}.{}", site.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(records: Vec<(&str, Data)>) -> ZoneRecord {
        ZoneRecord {
            format: 1,
            site: Domain::new("shop.test").expect("domain"),
            incarnation: 0,
            records: records
                .into_iter()
                .map(|(name, data)| UserRecord {
                    name: name.into(),
                    ttl: 300,
                    data,
                })
                .collect(),
            version: 1,
        }
    }

    #[test]
    fn ordinary_records_pass() {
        let z = zone(vec![
            ("www", Data::Cname("shop.test.".into())),
            (
                "@",
                Data::Mx {
                    preference: 10,
                    exchange: "mx.mail.example".into(),
                },
            ),
            ("@", Data::Txt(vec!["v=spf1 -all".into()])),
            ("_dmarc", Data::Txt(vec!["v=DMARC1; p=none".into()])),
            ("api", Data::A("192.0.2.10".parse().expect("ip"))),
            ("*.api", Data::Aaaa("2001:db8::10".parse().expect("ip"))),
            (
                "_sip._tcp",
                Data::Srv {
                    priority: 1,
                    weight: 1,
                    port: 5060,
                    target: "sip.example".into(),
                },
            ),
            (
                "@",
                Data::Caa {
                    critical: false,
                    tag: "issue".into(),
                    value: "letsencrypt.org".into(),
                },
            ),
            ("API.", Data::Txt(vec!["case does not matter".into()])),
        ]);
        assert_eq!(z.check(), Ok(()));
        assert!(
            z.normalised()
                .iter()
                .any(|r| r.name == "api" && matches!(r.data, Data::Txt(_)))
        );
    }

    #[test]
    fn what_could_hurt_others_is_refused() {
        let txt = || Data::Txt(vec!["x".into()]);
        type Case = (ZoneRecord, fn(&ZoneError) -> bool);
        let cases: Vec<Case> = vec![
            (zone(vec![("_acme-challenge", txt())]), |e| {
                matches!(e, ZoneError::AcmeChallenge(_))
            }),
            (zone(vec![("_acme-challenge.www", txt())]), |e| {
                matches!(e, ZoneError::AcmeChallenge(_))
            }),
            (
                zone(vec![("@", Data::A("192.0.2.1".parse().expect("ip")))]),
                |e| matches!(e, ZoneError::AtGeoName { .. }),
            ),
            (
                zone(vec![("@", Data::Cname("elsewhere.example".into()))]),
                |e| matches!(e, ZoneError::AtGeoName { .. }),
            ),
            (
                zone(vec![
                    ("www", Data::Cname("a.example".into())),
                    ("www", txt()),
                ]),
                |e| matches!(e, ZoneError::CnameAndOther(_)),
            ),
            (
                zone(vec![
                    ("www", txt()),
                    ("www", Data::Cname("a.example".into())),
                ]),
                |e| matches!(e, ZoneError::CnameAndOther(_)),
            ),
            (zone(vec![("a.*", txt())]), |e| {
                matches!(e, ZoneError::BadName { .. })
            }),
            (zone(vec![("a b", txt())]), |e| {
                matches!(e, ZoneError::BadName { .. })
            }),
            (zone(vec![("a..b", txt())]), |e| {
                matches!(e, ZoneError::BadName { .. })
            }),
            (zone(vec![("t", Data::Txt(vec!["x".repeat(256)]))]), |e| {
                matches!(e, ZoneError::BadData { .. })
            }),
            (zone(vec![("t", Data::Txt(vec![]))]), |e| {
                matches!(e, ZoneError::BadData { .. })
            }),
            (
                zone(vec![(
                    "m",
                    Data::Mx {
                        preference: 1,
                        exchange: "bad host!".into(),
                    },
                )]),
                |e| matches!(e, ZoneError::BadData { .. }),
            ),
        ];
        for (z, want) in cases {
            let err = z.check().expect_err("refused");
            assert!(want(&err), "{err}");
        }
        let mut z = zone(vec![("t", txt())]);
        z.records[0].ttl = 5;
        assert!(matches!(z.check(), Err(ZoneError::BadTtl { .. })));
        for rtype in ["NS", "DS", "DNSKEY", "SOA", "RRSIG"] {
            assert!(refused_type(rtype), "{rtype}");
        }
    }

    #[test]
    fn size_limits_hold() {
        let big = Data::Txt(vec!["y".repeat(255); 4]);
        let z = zone((0..80).map(|_| ("t", big.clone())).collect());
        assert!(matches!(z.check(), Err(ZoneError::TooLarge(_))));
        let z = zone(
            (0..1001)
                .map(|_| ("t", Data::Txt(vec!["y".into()])))
                .collect(),
        );
        assert!(matches!(z.check(), Err(ZoneError::TooMany(_))));
    }

    #[test]
    fn names_at_or_below_another_site_are_found() {
        let z = zone(vec![
            ("blog", Data::Txt(vec!["x".into()])),
            ("a.blog", Data::Txt(vec!["x".into()])),
            ("*.other", Data::Txt(vec!["x".into()])),
            ("www", Data::Txt(vec!["x".into()])),
        ]);
        let blog = Domain::new("blog.shop.test").expect("d");
        assert_eq!(z.names_under(&blog), ["blog.shop.test", "a.blog.shop.test"]);
        let deep = Domain::new("x.other.shop.test").expect("d");
        assert_eq!(z.names_under(&deep), ["*.other.shop.test"]);
    }
}
