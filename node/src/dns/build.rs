//! The zones' snapshot from the replicated records and what each member
//! holds (see `zones` for what it is).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use hickory_proto::rr::{
    Name, RData, Record, RecordType,
    rdata::{CAA, TXT},
};
use maki_protocol::{PublicKey, ROLE_HTTP, sync::Holding};

use super::{
    geoip::GeoDb,
    sign::Keyring,
    zones::{Nameserver, ROLE_DNS, Server, Settings, Snapshot, Zone, user_records},
};
use crate::directory::Directory;

/// What the snapshot is built from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub dir: &'a Directory,
    /// What each member (this node included) serves now.
    pub holds: &'a HashMap<PublicKey, Vec<Holding>>,
    /// Members whose HTTP edge a majority of the members see down.
    pub down: &'a HashSet<PublicKey>,
    /// This node's zone signers.
    pub keyring: &'a Keyring,
}

/// Builds every zone from `inputs`; serials are left at 0 for
/// [`Zones::update`] to set. A node whose record gives no location is
/// placed by `geo`, at its first public IP the database places.
pub fn build(inputs: &Inputs<'_>, settings: Settings, geo: Option<Arc<GeoDb>>) -> Snapshot {
    let dir = inputs.dir;
    let mut nameservers: Vec<Nameserver> = Vec::new();
    // Per site: (servers holding its current head, servers holding any).
    let mut http: Vec<(Server, &[Holding])> = Vec::new();
    for (node, _) in dir.members() {
        let roles = |r: &str| node.roles.iter().any(|x| x == r);
        if roles(ROLE_DNS) && !node.ips.is_empty() {
            nameservers.push(Nameserver {
                label: format!("ns-{}", node.id.fmt_short()),
                ips: node.ips.clone(),
            });
        }
        if roles(ROLE_HTTP) && !node.ips.is_empty() {
            let holds = inputs.holds.get(&node.id).map_or(&[][..], Vec::as_slice);
            http.push((
                Server {
                    id: node.id,
                    ips: node.ips.clone(),
                    location: node.location.or_else(|| {
                        let geo = geo.as_ref()?;
                        node.ips.iter().find_map(|ip| geo.locate(*ip)?.at)
                    }),
                    region: node.region.clone(),
                },
                holds,
            ));
        }
    }
    nameservers.sort_by(|a, b| a.label.cmp(&b.label));
    let aliases = crate::live::aliases_of(dir);
    let caa: Vec<Name> = dir
        .acme()
        .map(|a| {
            a.caa
                .iter()
                .filter_map(|d| Name::from_ascii(d.as_str()).ok())
                .collect()
        })
        .unwrap_or_default();
    // By apex: a name two sites claim is settled below, one zone each.
    let mut zones: HashMap<Name, Zone> = HashMap::new();
    for view in dir.per_site() {
        if view.site.removed {
            continue;
        }
        let domain = &view.site.domain;
        let current = view.head.map(|(h, _)| h.seq);
        let admitted = |s: &Server| view.pin.is_none_or(|p| p.admits(s.region.as_deref()));
        let holding = |seq: Option<u64>| -> Vec<Server> {
            http.iter()
                .filter(|(s, holds)| {
                    admitted(s)
                        && holds
                            .iter()
                            .any(|h| &h.site == domain && seq.is_none_or(|q| h.seq == q))
                })
                .map(|(s, _)| s.clone())
                .collect()
        };
        let mut servers = current.map(|q| holding(Some(q))).unwrap_or_default();
        if servers.is_empty() {
            servers = holding(None);
        }
        // Nodes seen down leave the answer; if every one is, the answer
        // keeps them all (a visitor may still get through, and the
        // verdict may be wrong).
        if servers.iter().any(|s| !inputs.down.contains(&s.id)) {
            servers.retain(|s| !inputs.down.contains(&s.id));
        }
        let servers: Arc<[Server]> = servers.into();
        let own = dir.zone(domain).map(|z| z.normalised()).unwrap_or_default();
        let keys = dir.zone_keys(domain);
        let dnssec = inputs.keyring.dnssec(domain, keys);
        let public = keys.map_or(&[][..], |k| k.keys.as_slice());
        for name in std::iter::once(domain).chain(&view.site.aliases) {
            let Ok(apex) = Name::from_ascii(format!("{name}.")) else {
                continue;
            };
            let ns = nameservers
                .iter()
                .filter_map(|n| Some((apex.prepend_label(n.label.as_str()).ok()?, n.ips.clone())))
                .collect();
            // A name two sites claim is settled as the edge settles it.
            if name != domain && aliases.get(name) != Some(domain) {
                continue;
            }
            // The records are the site's domain's; an alias zone has none.
            let (mut records, between) = if name == domain {
                user_records(&apex, &own)
            } else {
                Default::default()
            };
            network_caa(&apex, &mut records, &caa);
            if let Some(order) = dir.acme_order(domain) {
                acme_txt(&apex, name, &mut records, order);
            }
            let mut between = between;
            // A tenant's wildcard never answers `_acme-challenge` (the
            // network's), so with one at the apex that name is made to
            // exist (NODATA): denying it would contradict the wildcard's
            // NSEC3 proof, and validators would call the answer bogus.
            if let (Ok(star), Ok(acme)) = (
                apex.prepend_label("*"),
                apex.prepend_label("_acme-challenge"),
            ) && records.contains_key(&star)
                && !records.contains_key(&acme)
            {
                between.insert(acme);
            }
            let zone = Zone {
                apex: apex.clone(),
                site: domain.clone(),
                serial: 0,
                nameservers: ns,
                servers: servers.clone(),
                records: Arc::new(records),
                between: Arc::new(between),
                dnssec: dnssec.clone(),
                ds: super::sign::ds_records(&apex, public, super::sign::DNSKEY_TTL).into(),
                chain: Arc::default(),
            };
            zones.insert(apex, zone);
        }
    }
    link_nested(&mut zones);
    Snapshot::new(zones.into_values().collect(), geo, settings)
}

/// The network's CAA records at `apex` (RFC 8659: only the network's CA
/// may issue there, for names and wildcards), unless the site declared
/// CAA records of its own there: a site that brings its own certificate
/// may name its own CA.
fn network_caa(apex: &Name, records: &mut HashMap<Name, Vec<Record>>, caa: &[Name]) {
    if caa.is_empty() {
        return;
    }
    let at_apex = records.entry(apex.clone()).or_default();
    if at_apex.iter().any(|r| r.record_type() == RecordType::CAA) {
        return;
    }
    for issuer in caa {
        for rdata in [
            CAA::new_issue(false, Some(issuer.clone()), Vec::new()),
            CAA::new_issuewild(false, Some(issuer.clone()), Vec::new()),
        ] {
            at_apex.push(Record::from_rdata(apex.clone(), CAA_TTL, RData::CAA(rdata)));
        }
    }
}

/// The DNS-01 proofs of `order` for names of the zone `name` (at
/// `apex`): the name itself and the wildcard under it share
/// `_acme-challenge.NAME`. Tenants cannot set `_acme-challenge` names, so
/// these are the only records there.
fn acme_txt(
    apex: &Name,
    name: &maki_protocol::Domain,
    records: &mut HashMap<Name, Vec<Record>>,
    order: &maki_protocol::acme::AcmeOrder,
) {
    for c in &order.challenges {
        let bare = c.name.strip_prefix("*.").unwrap_or(&c.name);
        if c.kind != maki_protocol::acme::ChallengeKind::Dns01
            || !bare.eq_ignore_ascii_case(name.as_str())
        {
            continue;
        }
        let Ok(owner) = apex.prepend_label("_acme-challenge") else {
            continue;
        };
        let txt = RData::TXT(TXT::new(vec![c.proof.clone()]));
        records
            .entry(owner.clone())
            .or_default()
            .push(Record::from_rdata(owner, ACME_TXT_TTL, txt));
    }
}

/// TTL of DNS-01 proofs: short, as a retried order brings new ones.
const ACME_TXT_TTL: u32 = 10;

/// TTL of the network's CAA records.
const CAA_TTL: u32 = 3600;

/// A zone inside another (`blog.shop.example` and `shop.example`, two
/// sites): the names from the outer apex down to the inner one exist in
/// the outer zone, which must not deny them (NXDOMAIN there would deny
/// the inner zone to resolvers that trust it: RFC 8020).
fn link_nested(zones: &mut HashMap<Name, Zone>) {
    let apexes: Vec<Name> = zones.keys().cloned().collect();
    for inner in &apexes {
        let mut up = inner.clone();
        let mut path = Vec::new();
        while up.num_labels() > 1 {
            path.push(up.clone());
            up = up.base_name();
            if let Some(outer) = zones.get_mut(&up) {
                Arc::make_mut(&mut outer.between).extend(path.iter().cloned());
                break;
            }
        }
    }
}

/// Holdings by member, this node's own included.
pub fn holdings(
    me: PublicKey,
    own: Vec<Holding>,
    peers: impl IntoIterator<Item = (PublicKey, Vec<Holding>)>,
) -> HashMap<PublicKey, Vec<Holding>> {
    let mut out: HashMap<_, _> = peers.into_iter().collect();
    out.insert(me, own);
    out
}
