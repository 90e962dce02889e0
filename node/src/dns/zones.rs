//! What the nameservers answer: one immutable snapshot of every zone,
//! swapped whole when a zone changes (`build` makes it from the records).
//! The request path only reads it. No I/O and nothing of the node here:
//! the fuzz target compiles this module by path.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{A, AAAA, CAA, CNAME, MX, SRV, TXT},
};
use maki_protocol::zone::{Data, UserRecord};
use maki_protocol::{Domain, PublicKey};

use super::{
    geoip::GeoDb,
    sign::{Chain, Dnssec},
};

pub use maki_protocol::ROLE_DNS;

/// TTL of negative answers: the SOA's minimum, its own TTL there, and the
/// NSEC3 records' (RFC 9077).
pub const NEGATIVE_TTL: u32 = 60;

/// A node geo answers may send visitors to.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub id: PublicKey,
    pub ips: Vec<IpAddr>,
    pub location: Option<(f64, f64)>,
    pub region: Option<String>,
}

/// A nameserver of every zone: `ns-<id>.<zone>` and its addresses (the
/// glue the registrar publishes).
#[derive(Debug, Clone, PartialEq)]
pub struct Nameserver {
    /// The first characters of its node id: the label under each zone.
    pub label: String,
    pub ips: Vec<IpAddr>,
}

/// One zone: a site's domain or one of its aliases.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub apex: Name,
    /// The site the zone answers for.
    pub site: Domain,
    /// Follows this node's view of the zone: see [`Zones::update`].
    pub serial: u32,
    /// The NS set, sorted by name, with their names under this zone.
    pub nameservers: Vec<(Name, Vec<IpAddr>)>,
    /// The nodes its geo names answer with: `http` nodes that hold the
    /// site's current head and that its pin admits. While none does yet
    /// (a publish in flight), those holding any version of it. Nodes
    /// whose edge is down are left out, unless all are.
    pub servers: Arc<[Server]>,
    /// The site's own records (`[[dns]]` in its `maki.toml`) by owner
    /// name; a wildcard's owner is `*.<parent>`.
    pub records: Arc<HashMap<Name, Vec<Record>>>,
    /// Names that exist only because names below them do (empty
    /// non-terminals): NODATA there, not NXDOMAIN (RFC 8020).
    pub between: Arc<HashSet<Name>>,
    /// Whether and how its answers are signed.
    pub dnssec: Dnssec,
    /// Its DS records (empty unless signed): what a zone of the network
    /// above it answers for it (a site inside another site).
    pub ds: Arc<[Record]>,
    /// Its NSEC3 chain when signed: [`Snapshot::new`] builds it, since a
    /// zone inside this one is a delegation in it.
    pub chain: Arc<Chain>,
}

impl Zone {
    /// Whether two versions of a zone answer the same (serial aside).
    fn same_answers(&self, other: &Zone) -> bool {
        self.apex == other.apex
            && self.nameservers == other.nameservers
            && self.servers == other.servers
            && self.records == other.records
            && self.dnssec == other.dnssec
            && self.ds == other.ds
    }

    /// The types `name` has (in a signed zone: the bitmap of its NSEC3).
    pub fn types_at(&self, name: &Name) -> Vec<RecordType> {
        let mut types = Vec::new();
        let family = |ips: &mut dyn Iterator<Item = &IpAddr>, types: &mut Vec<RecordType>| {
            for ip in ips {
                types.push(if ip.is_ipv4() {
                    RecordType::A
                } else {
                    RecordType::AAAA
                });
            }
        };
        if *name == self.apex {
            types.extend([RecordType::SOA, RecordType::NS]);
            family(&mut self.servers.iter().flat_map(|s| &s.ips), &mut types);
            if matches!(self.dnssec, Dnssec::On(_)) {
                types.extend([RecordType::DNSKEY, RecordType::NSEC3PARAM]);
            }
        } else if let Some(ips) = self.nameserver(name) {
            // A tenant's records there are never served: not in the set.
            family(&mut ips.iter(), &mut types);
        }
        if let Some(own) = self
            .records
            .get(name)
            .filter(|_| self.nameserver(name).is_none())
        {
            types.extend(own.iter().map(|r| r.record_type()));
        }
        if !types.is_empty() && !matches!(self.dnssec, Dnssec::Off) {
            types.push(RecordType::RRSIG);
        }
        types.sort_unstable_by_key(|t| u16::from(*t));
        types.dedup();
        types
    }

    /// Every name that exists in this zone, the names down to a zone
    /// inside it included.
    fn names(&self) -> impl Iterator<Item = &Name> {
        std::iter::once(&self.apex)
            .chain(self.nameservers.iter().map(|(n, _)| n))
            .chain(self.records.keys())
            .chain(self.between.iter())
    }

    /// The chain over [`Zone::names`]. A name that is the apex of another
    /// of `apexes` is a delegation here: NS, and DS when that zone has one.
    fn chain(&self, apexes: &HashMap<Name, bool>) -> Chain {
        let names = self.names().map(|n| {
            let types = match apexes.get(n) {
                Some(&signed) if *n != self.apex => {
                    if signed {
                        vec![RecordType::NS, RecordType::DS, RecordType::RRSIG]
                    } else {
                        vec![RecordType::NS]
                    }
                }
                _ => self.types_at(n),
            };
            (n.clone(), types)
        });
        Chain::new(&self.apex, names, NEGATIVE_TTL)
    }

    /// The nameserver at `name`, if `name` is one.
    pub fn nameserver(&self, name: &Name) -> Option<&[IpAddr]> {
        self.nameservers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ips)| ips.as_slice())
    }
}

/// Answer settings from the node's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// TTL of geo answers, in seconds.
    pub ttl: u32,
    /// How many nodes a geo answer names.
    pub answers: usize,
    /// This node's region and location: an address the geo database does
    /// not place gets the nodes nearest to the node answering.
    pub region: Option<String>,
    pub location: Option<(f64, f64)>,
}

/// Every zone at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    zones: HashMap<Name, Arc<Zone>>,
    /// The geo database, if one is installed.
    pub geo: Option<Arc<GeoDb>>,
    /// The most labels any zone apex has: longer names are cut to it
    /// before the walk towards the root.
    most_labels: u8,
    pub settings: Settings,
}

impl Snapshot {
    /// The snapshot of `zones` (serials as given), with the NSEC3 chain
    /// of each signed one.
    pub fn new(mut zones: Vec<Zone>, geo: Option<Arc<GeoDb>>, settings: Settings) -> Self {
        let most_labels = zones.iter().map(|z| z.apex.num_labels()).max().unwrap_or(0);
        let apexes: HashMap<Name, bool> = zones
            .iter()
            .map(|z| (z.apex.clone(), !z.ds.is_empty()))
            .collect();
        for z in zones.iter_mut() {
            if matches!(z.dnssec, Dnssec::On(_)) {
                z.chain = Arc::new(z.chain(&apexes));
            }
        }
        Self {
            zones: zones
                .into_iter()
                .map(|z| (z.apex.clone(), Arc::new(z)))
                .collect(),
            geo,
            most_labels,
            settings,
        }
    }

    pub fn empty(settings: Settings) -> Self {
        Self {
            zones: HashMap::new(),
            geo: None,
            most_labels: 0,
            settings,
        }
    }

    /// The zone a DS query for `name` is answered from: the one above
    /// `name`, with `name`'s own zone, when `name` is the apex of a zone
    /// inside another of the network's (RFC 4035 §3.1.4.1: the DS is
    /// the parent's).
    pub fn delegation(&self, name: &Name) -> Option<(&Arc<Zone>, &Arc<Zone>)> {
        let child = self.zones.get(name)?;
        if name.num_labels() == 0 {
            return None;
        }
        let parent = self.zone_of(&name.base_name())?;
        Some((parent, child))
    }

    /// The zone `name` is in: the one with the longest apex it ends with.
    pub fn zone_of(&self, name: &Name) -> Option<&Arc<Zone>> {
        // Every label, a leading `*` too (`num_labels` leaves it out, and
        // `trim_to` counts it): `*.blog.x` must find the zone `blog.x`.
        let labels = u8::try_from(name.iter().count()).unwrap_or(u8::MAX);
        let mut n = labels.min(self.most_labels);
        while n > 0 {
            let suffix = if n == labels {
                name.clone()
            } else {
                name.trim_to(n as usize)
            };
            if let Some(z) = self.zones.get(&suffix) {
                return Some(z);
            }
            n -= 1;
        }
        None
    }

    pub fn zones(&self) -> impl Iterator<Item = &Arc<Zone>> {
        self.zones.values()
    }
}

/// The site's records as DNS records under `apex`, and the empty
/// non-terminals they make. A record that does not convert (none does
/// once checked) is left out.
pub fn user_records(
    apex: &Name,
    own: &[UserRecord],
) -> (HashMap<Name, Vec<Record>>, HashSet<Name>) {
    let mut records: HashMap<Name, Vec<Record>> = HashMap::new();
    let mut between = HashSet::new();
    for r in own {
        let owner = if r.name == "@" {
            apex.clone()
        } else {
            match Name::from_ascii(&r.name).and_then(|n| n.append_domain(apex)) {
                Ok(n) => n,
                Err(_) => continue,
            }
        };
        let host = |t: &str| Name::from_ascii(format!("{}.", t.trim_end_matches('.')));
        let data = match &r.data {
            Data::A(ip) => RData::A(A(*ip)),
            Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Data::Cname(t) => match host(t) {
                Ok(n) => RData::CNAME(CNAME(n)),
                Err(_) => continue,
            },
            Data::Mx {
                preference,
                exchange,
            } => match host(exchange) {
                Ok(n) => RData::MX(MX::new(*preference, n)),
                Err(_) => continue,
            },
            Data::Txt(parts) => RData::TXT(TXT::new(parts.clone())),
            Data::Srv {
                priority,
                weight,
                port,
                target,
            } => match host(target) {
                Ok(n) => RData::SRV(SRV::new(*priority, *weight, *port, n)),
                Err(_) => continue,
            },
            Data::Caa {
                critical,
                tag,
                value,
            } => {
                let mut caa = CAA::new_issue(*critical, None, Vec::new());
                caa.tag = tag.clone();
                caa.value = value.clone().into_bytes();
                RData::CAA(caa)
            }
        };
        // Every name between the owner and the apex exists too.
        let mut up = owner.base_name();
        while up.num_labels() > apex.num_labels() {
            between.insert(up.clone());
            up = up.base_name();
        }
        records
            .entry(owner.clone())
            .or_default()
            .push(Record::from_rdata(owner, r.ttl, data));
    }
    between.retain(|n| !records.contains_key(n));
    // One TTL per set (RFC 2181 §5.2; a signature covers one): the lowest.
    for set in records.values_mut() {
        let mut lowest: HashMap<RecordType, u32> = HashMap::new();
        for r in set.iter() {
            let t = lowest.entry(r.record_type()).or_insert(r.ttl);
            *t = (*t).min(r.ttl);
        }
        for r in set.iter_mut() {
            r.ttl = lowest[&r.record_type()];
        }
    }
    (records, between)
}

/// The current snapshot, for every DNS worker.
#[derive(Debug)]
pub struct Zones {
    now: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
}

impl Zones {
    pub fn new(first: Snapshot) -> Self {
        Self {
            now: RwLock::new(Arc::new(first)),
            generation: AtomicU64::new(0),
        }
    }

    pub fn get(&self) -> Arc<Snapshot> {
        match self.now.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Bumped at every swap: a worker re-reads the snapshot only then.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Swaps in `next`, giving each zone its serial: the previous one when
    /// it answers the same, else `now` (seconds since the epoch; one past
    /// the previous serial if that is not later). Serial arithmetic (RFC
    /// 1982) makes the wrap in 2106 harmless. Returns whether anything
    /// changed.
    pub fn update(&self, mut next: Snapshot, now: u64) -> bool {
        let prev = self.get();
        let same_geo = match (&prev.geo, &next.geo) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut changed =
            prev.zones.len() != next.zones.len() || prev.settings != next.settings || !same_geo;
        for (apex, zone) in next.zones.iter_mut() {
            let serial = match prev.zones.get(apex) {
                Some(old) if old.same_answers(zone) => old.serial,
                old => {
                    changed = true;
                    let now = now as u32;
                    match old {
                        Some(o) if now.wrapping_sub(o.serial) as i32 <= 0 => {
                            o.serial.wrapping_add(1)
                        }
                        _ => now,
                    }
                }
            };
            if let Some(z) = Arc::get_mut(zone) {
                z.serial = serial;
            }
        }
        if changed {
            match self.now.write() {
                Ok(mut s) => *s = Arc::new(next),
                Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
            }
            self.generation.fetch_add(1, Ordering::Release);
        }
        changed
    }
}
