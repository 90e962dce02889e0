//! A site's own DNS records: `[[dns]]` entries in `maki.toml`, written
//! as in a zone file, checked here and again by every node.

use maki_protocol::{
    Domain, RECORD_FORMAT, SecretKey, Signed,
    rpc::{Request, Response},
    zone::{Data, UserRecord, ZoneError, ZoneRecord, refused_type},
};
use serde::{Deserialize, Serialize};

use crate::net::{Client, NetError, unexpected};

/// The TTL of a record that names none, in seconds.
pub const DEFAULT_TTL: u32 = 300;

/// One `[[dns]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative to the site's domain: `www`, `_dmarc`, `*.api`; `@` is
    /// the domain itself.
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    /// As in a zone file: `192.0.2.1`, `10 mx.example.com.`,
    /// `0 issue "letsencrypt.org"`, `1 1 5060 sip.example.com.`. A TXT
    /// value may be a list of strings; a long string is cut into 255-byte
    /// pieces.
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("[[dns]] {name} {rtype}: {why}")]
    Bad {
        name: String,
        rtype: String,
        why: String,
    },
    #[error(transparent)]
    Zone(#[from] ZoneError),
}

impl Entry {
    fn parse(&self) -> Result<UserRecord, EntryError> {
        let rtype = self.rtype.to_ascii_uppercase();
        let bad = |why: String| EntryError::Bad {
            name: self.name.clone(),
            rtype: rtype.clone(),
            why,
        };
        if refused_type(&rtype) {
            return Err(
                if ["NS", "DS", "DNSKEY", "SOA", "RRSIG", "NSEC", "NSEC3"].contains(&rtype.as_str())
                {
                    EntryError::Zone(ZoneError::RefusedType {
                        name: self.name.clone(),
                        rtype,
                    })
                } else {
                    bad("not a type a site may set (A, AAAA, CNAME, MX, TXT, SRV, CAA)".into())
                },
            );
        }
        if maki_protocol::zone::nameserver_name(&self.name) {
            return Err(bad(
                "a nameserver's name (ns- and 10 hex digits): the network answers there".into(),
            ));
        }
        let one = || match &self.value {
            Value::One(v) => Ok(v.trim().to_owned()),
            Value::Many(_) => Err(bad("takes one value, not a list".into())),
        };
        let fields = |n: usize| -> Result<Vec<String>, EntryError> {
            let v = one()?;
            let parts: Vec<String> = v
                .splitn(n, char::is_whitespace)
                .map(str::to_owned)
                .collect();
            if parts.len() == n {
                Ok(parts)
            } else {
                Err(bad(format!("{v:?} should have {n} fields")))
            }
        };
        let number = |s: &str| -> Result<u16, EntryError> {
            s.trim()
                .parse()
                .map_err(|_| bad(format!("{s:?} is not a number up to 65535")))
        };
        let data = match rtype.as_str() {
            "A" => Data::A(
                one()?
                    .parse()
                    .map_err(|_| bad("not an IPv4 address".into()))?,
            ),
            "AAAA" => Data::Aaaa(
                one()?
                    .parse()
                    .map_err(|_| bad("not an IPv6 address".into()))?,
            ),
            "CNAME" => Data::Cname(one()?),
            "MX" => {
                let f = fields(2)?;
                Data::Mx {
                    preference: number(&f[0])?,
                    exchange: f[1].trim().to_owned(),
                }
            }
            "SRV" => {
                let f = fields(4)?;
                Data::Srv {
                    priority: number(&f[0])?,
                    weight: number(&f[1])?,
                    port: number(&f[2])?,
                    target: f[3].trim().to_owned(),
                }
            }
            "CAA" => {
                let f = fields(3)?;
                let flags: u8 = f[0]
                    .parse()
                    .map_err(|_| bad("CAA flags are 0 or 128".into()))?;
                Data::Caa {
                    critical: flags & 128 != 0,
                    tag: f[1].clone(),
                    value: f[2].trim().trim_matches('"').to_owned(),
                }
            }
            "TXT" => Data::Txt(match &self.value {
                Value::One(v) => v
                    .as_bytes()
                    .chunks(255)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect(),
                Value::Many(v) => v.clone(),
            }),
            _ => return Err(bad("not a type a site may set".into())),
        };
        Ok(UserRecord {
            name: self.name.clone(),
            ttl: self.ttl.unwrap_or(DEFAULT_TTL),
            data,
        })
    }
}

/// The signed record of `site`'s DNS entries, checked as nodes check it.
pub fn record(
    key: &SecretKey,
    site: &Domain,
    incarnation: u64,
    entries: &[Entry],
    version: u64,
) -> Result<Signed<ZoneRecord>, EntryError> {
    let records = entries
        .iter()
        .map(Entry::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let zone = ZoneRecord {
        format: RECORD_FORMAT,
        site: site.clone(),
        incarnation,
        records,
        version,
    };
    zone.check()?;
    Ok(Signed::sign(key, &zone))
}

/// Sends a site's DNS records; they replace the ones it had.
pub async fn set(client: &Client, record: Signed<ZoneRecord>) -> Result<(), NetError> {
    match client.call(&Request::ZoneSet { record }).await? {
        Response::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, rtype: &str, value: &str) -> Entry {
        Entry {
            name: name.into(),
            rtype: rtype.into(),
            value: Value::One(value.into()),
            ttl: None,
        }
    }

    #[test]
    fn zone_file_values_parse() {
        let r = entry("@", "mx", "10 mx.example.com.").parse().expect("mx");
        assert_eq!(
            r.data,
            Data::Mx {
                preference: 10,
                exchange: "mx.example.com.".into()
            }
        );
        let r = entry("@", "CAA", "0 issue \"letsencrypt.org\"")
            .parse()
            .expect("caa");
        assert_eq!(
            r.data,
            Data::Caa {
                critical: false,
                tag: "issue".into(),
                value: "letsencrypt.org".into()
            }
        );
        let r = entry("_sip._tcp", "SRV", "1 2 5060 sip.example.com.")
            .parse()
            .expect("srv");
        assert!(matches!(r.data, Data::Srv { port: 5060, .. }));
        let long = "k".repeat(600);
        let r = entry("@", "TXT", &long).parse().expect("txt");
        assert!(matches!(&r.data, Data::Txt(p) if p.len() == 3 && p[0].len() == 255));
        assert_eq!(r.ttl, DEFAULT_TTL);
    }

    #[test]
    fn refused_types_and_bad_values_say_why() {
        let err = entry("sub", "NS", "ns.elsewhere.example.")
            .parse()
            .expect_err("NS");
        assert!(err.to_string().contains("not for tenants"), "{err}");
        let err = entry("x", "HINFO", "a b").parse().expect_err("HINFO");
        assert!(
            err.to_string().contains("not a type a site may set"),
            "{err}"
        );
        let err = entry("x", "A", "not-an-ip").parse().expect_err("A");
        assert!(err.to_string().contains("not an IPv4 address"), "{err}");
        let err = entry("x", "MX", "mx.example.com").parse().expect_err("MX");
        assert!(err.to_string().contains("should have 2 fields"), "{err}");
    }
}
