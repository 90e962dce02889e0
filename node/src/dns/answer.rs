//! One query in, one reply out: no I/O, so the fuzzer and the tests call
//! exactly what the sockets call.

use std::{
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{
            A, AAAA, NS, SOA,
            opt::{ClientSubnet, EdnsCode, EdnsOption},
        },
    },
};

use super::{
    geo,
    geoip::Place,
    sign::{self, Dnssec, Signer},
    zones::{NEGATIVE_TTL, Snapshot, Zone},
};

/// The largest UDP reply we send, whatever a client offers: the DNS
/// flag day 2020 size, which no path fragments.
pub const UDP_MAX: u16 = 1232;

/// TTL of the SOA and NS records.
const ZONE_TTL: u32 = 3600;

/// Counters of what the server saw, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub queries: AtomicU64,
    /// Not a query we could read: FORMERR when the header was readable.
    pub malformed: AtomicU64,
    /// Dropped without a reply (responses, runts).
    pub dropped: AtomicU64,
    /// Names outside every zone, classes other than IN.
    pub refused: AtomicU64,
    pub truncated: AtomicU64,
}

impl Stats {
    pub fn count(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a query came from.
#[derive(Debug, Clone, Copy)]
pub struct From {
    pub ip: IpAddr,
    pub tcp: bool,
    /// When, in seconds since the Unix epoch: what signatures are dated.
    pub now: u64,
}

/// What a signed negative answer (or one from a wildcard) must prove,
/// besides the records it has (RFC 5155 §7.2).
enum Denial {
    None,
    /// The name exists without the type asked.
    NoData,
    /// The name does not exist: its closest encloser does.
    NxDomain {
        encloser: Name,
    },
    /// Answered from `*.encloser`.
    Wildcard {
        encloser: Name,
    },
    /// `*.encloser` exists without the type asked.
    WildcardNoData {
        encloser: Name,
    },
    /// A zone below, without a DS: an insecure delegation.
    Cut,
}

/// The reply to `query`, or `None` to drop it. `turn` varies per query
/// so nodes that rank the same share the visitors.
pub fn respond(
    snap: &Snapshot,
    query: &[u8],
    from: From,
    turn: usize,
    stats: &Stats,
) -> Option<Vec<u8>> {
    Stats::count(&stats.queries);
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            Stats::count(&stats.malformed);
            return formerr(query);
        }
    };
    if request.metadata.message_type != MessageType::Query {
        // Never answer a response: that would make us a reflector.
        Stats::count(&stats.dropped);
        return None;
    }
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.checking_disabled = request.metadata.checking_disabled;
    // At most the one question we answer: a query with many (FORMERR) must
    // not get them all echoed, which could be larger than it was.
    reply.add_queries(request.queries.iter().take(1).cloned());
    let client_edns = request.edns.as_ref();
    if let Some(e) = client_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_MAX);
        reply.set_edns(edns);
        if e.version() > 0 {
            reply.metadata.response_code = ResponseCode::BADVERS;
            return finish(reply, client_edns, from, stats);
        }
    }
    if request.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return finish(reply, client_edns, from, stats);
    }
    let [query] = request.queries.as_slice() else {
        Stats::count(&stats.malformed);
        reply.metadata.response_code = ResponseCode::FormErr;
        return finish(reply, client_edns, from, stats);
    };
    let zone = match snap.zone_of(query.name()) {
        Some(z) if query.query_class() == DNSClass::IN => z,
        _ => {
            Stats::count(&stats.refused);
            reply.metadata.response_code = ResponseCode::Refused;
            return finish(reply, client_edns, from, stats);
        }
    };
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        // Every nameserver builds every zone itself: there is nothing to
        // transfer.
        Stats::count(&stats.refused);
        reply.metadata.response_code = ResponseCode::Refused;
        return finish(reply, client_edns, from, stats);
    }
    // A DS at the apex of a zone inside another of ours is the zone
    // above's to answer (and sign).
    let delegation = match query.query_type() {
        RecordType::DS => snap.delegation(query.name()),
        _ => None,
    };
    let zone = delegation.map_or(zone, |(parent, _)| parent);
    if query.query_type() == RecordType::RRSIG && !matches!(zone.dnssec, Dnssec::Off) {
        // Signatures come with the sets they sign; a query for them alone
        // would need a NODATA that contradicts its own proof.
        reply.metadata.response_code = ResponseCode::NotImp;
        return finish(reply, client_edns, from, stats);
    }
    reply.metadata.authoritative = true;
    let dnssec_ok = client_edns.is_some_and(|e| e.flags().dnssec_ok);
    let signer: Option<&Signer> = match (&zone.dnssec, dnssec_ok) {
        (Dnssec::On(s), true) => Some(s),
        (Dnssec::NoKey, true) => {
            // Unsigned answers would be bogus to this resolver: send it
            // to a nameserver that holds the keys.
            reply.metadata.response_code = ResponseCode::ServFail;
            return finish(reply, client_edns, from, stats);
        }
        _ => None,
    };
    if let (Some(_), Some(edns)) = (signer, reply.edns.as_mut()) {
        edns.set_dnssec_ok(true);
    }
    let mut denial = Denial::None;
    let subnet = client_edns.and_then(|e| match e.option(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => Some(*s),
        _ => None,
    });
    // The visitor: the subnet a resolver passed on (only the bits it
    // gave), else the resolver. A source prefix of 0 means "do not tailor
    // the answer to me": the resolver's own address then, and scope 0.
    let visitor = match &subnet {
        Some(s) if s.source_prefix() > 0 => masked(s.addr(), s.source_prefix()),
        _ => from.ip,
    };
    let tailored = subnet.as_ref().is_none_or(|s| s.source_prefix() > 0);
    let mut scope = 0;
    let name = query.name();
    let qtype = query.query_type();
    if let Some((_, child)) = delegation {
        reply.add_answers(child.ds.iter().cloned());
        if child.ds.is_empty() {
            denial = Denial::Cut;
        }
    } else if *name == zone.apex {
        match qtype {
            RecordType::SOA | RecordType::ANY => reply.add_answer(soa(zone)),
            RecordType::NS => {
                reply.add_answers(ns(zone));
                reply.add_additionals(glue(zone));
                &mut reply
            }
            RecordType::DNSKEY if matches!(zone.dnssec, Dnssec::On(_)) => {
                if let Dnssec::On(s) = &zone.dnssec {
                    reply.add_answers(s.dnskeys(&zone.apex));
                }
                &mut reply
            }
            RecordType::NSEC3PARAM if matches!(zone.dnssec, Dnssec::On(_)) => {
                reply.add_answer(sign::nsec3param(&zone.apex, ZONE_TTL))
            }
            RecordType::A | RecordType::AAAA => {
                let place: Option<Place> = snap.geo.as_ref().and_then(|g| g.locate(visitor));
                scope = if tailored {
                    place.map_or(0, |p| p.prefix)
                } else {
                    0
                };
                let from = place.and_then(|p| p.at);
                reply.add_answers(geo_answer(snap, zone, name, qtype, from, turn));
                &mut reply
            }
            _ => {
                if let Some(own) = zone.records.get(name) {
                    reply.add_answers(own_answer(own, name, qtype));
                }
                &mut reply
            }
        };
    } else if let Some(ips) = zone.nameserver(name) {
        reply.add_answers(addresses(name, ips, qtype, ZONE_TTL));
    } else if let Some(own) = zone.records.get(name) {
        reply.add_answers(own_answer(own, name, qtype));
    } else if zone.between.contains(name) {
        // A name that exists for the names below it: NODATA.
    } else {
        let (encloser, star) = wildcard(zone, name);
        match star.filter(|_| !acme_challenge(zone, name)) {
            Some(own) => {
                reply.add_answers(own_answer(own, name, qtype));
                denial = if reply.answers.is_empty() {
                    Denial::WildcardNoData { encloser }
                } else {
                    Denial::Wildcard { encloser }
                };
            }
            None => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                denial = Denial::NxDomain { encloser };
            }
        }
    }
    if reply.answers.is_empty() {
        if matches!(denial, Denial::None) {
            denial = Denial::NoData;
        }
        // Signed, it comes with the proofs (see `secure`).
        if signer.is_none() {
            reply.add_authority(soa_negative(zone));
        }
    }
    if let Some(signer) = signer {
        secure(&mut reply, signer, zone, name, denial, from.now);
    }
    if let (Some(s), Some(edns)) = (subnet, reply.edns.as_mut()) {
        // RFC 7871 §7.2.1: echo the family, source prefix and address,
        // with the scope our answer depended on.
        let mut echoed = ClientSubnet::new(s.addr(), s.source_prefix(), 0);
        echoed.set_scope_prefix(scope.min(max_prefix(s.addr())));
        edns.options_mut().insert(EdnsOption::Subnet(echoed));
    }
    finish(reply, client_edns, from, stats)
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Encodes `reply`; over UDP, one too large for the client gets only
/// the question with TC set, which sends the client to TCP.
fn finish(reply: Message, client: Option<&Edns>, from: From, stats: &Stats) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    let limit = if from.tcp {
        usize::from(u16::MAX)
    } else {
        usize::from(client.map_or(512, |e| e.max_payload().clamp(512, UDP_MAX)))
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    Stats::count(&stats.truncated);
    let mut cut = reply.truncate();
    cut.metadata.authoritative = reply.metadata.authoritative;
    let bytes = cut.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    // The question alone does not fit (a huge EDNS echo): the header.
    cut.queries.clear();
    cut.edns = None;
    cut.to_vec().ok()
}

/// FORMERR for a message we could not read, when its header says it is
/// a query: the id and opcode echoed, nothing else.
fn formerr(query: &[u8]) -> Option<Vec<u8>> {
    let header: &[u8; 12] = query.get(..12)?.try_into().ok()?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0; 12];
    out[..2].copy_from_slice(&header[..2]);
    // QR, the opcode, RD as asked; RCODE 1.
    out[2] = 0x80 | (header[2] & 0x79);
    out[3] = ResponseCode::FormErr.low();
    Some(out)
}

fn soa_rdata(zone: &Zone) -> SOA {
    let mname = zone
        .nameservers
        .first()
        .map_or_else(|| zone.apex.clone(), |(n, _)| n.clone());
    let rname = zone
        .apex
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| zone.apex.clone());
    SOA::new(
        mname,
        rname,
        zone.serial,
        3600,
        600,
        1_209_600,
        NEGATIVE_TTL,
    )
}

fn soa(zone: &Zone) -> Record {
    Record::from_rdata(zone.apex.clone(), ZONE_TTL, RData::SOA(soa_rdata(zone)))
}

/// The SOA in the authority section of a negative answer: its TTL is
/// how long the "no" is cached (RFC 2308 §5).
fn soa_negative(zone: &Zone) -> Record {
    Record::from_rdata(zone.apex.clone(), NEGATIVE_TTL, RData::SOA(soa_rdata(zone)))
}

fn ns(zone: &Zone) -> impl Iterator<Item = Record> + '_ {
    zone.nameservers
        .iter()
        .map(|(n, _)| Record::from_rdata(zone.apex.clone(), ZONE_TTL, RData::NS(NS(n.clone()))))
}

fn glue(zone: &Zone) -> impl Iterator<Item = Record> + '_ {
    zone.nameservers.iter().flat_map(|(n, ips)| {
        ips.iter()
            .map(|ip| Record::from_rdata(n.clone(), ZONE_TTL, rdata(*ip)))
    })
}

fn rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

fn wanted(qtype: RecordType) -> impl Fn(&IpAddr) -> bool {
    move |ip| match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        _ => false,
    }
}

fn addresses(name: &Name, ips: &[IpAddr], qtype: RecordType, ttl: u32) -> Vec<Record> {
    let keep = wanted(qtype);
    ips.iter()
        .filter(|ip| keep(ip))
        .map(|ip| Record::from_rdata(name.clone(), ttl, rdata(*ip)))
        .collect()
}

/// The records at a name that answer `qtype`, owned by `name` (which a
/// wildcard's are not yet). A CNAME answers every type but its own
/// target's: the resolver follows it. ANY gets one type (RFC 8482).
fn own_answer(own: &[Record], name: &Name, qtype: RecordType) -> Vec<Record> {
    let cname = own.iter().any(|r| r.record_type() == RecordType::CNAME);
    let want = match qtype {
        _ if cname => RecordType::CNAME,
        RecordType::ANY => match own.first() {
            Some(r) => r.record_type(),
            None => return Vec::new(),
        },
        t => t,
    };
    own.iter()
        .filter(|r| r.record_type() == want)
        .map(|r| {
            let mut r = r.clone();
            r.name = name.clone();
            r
        })
        .collect()
}

/// Whether `name` has an `_acme-challenge` label below the apex: the
/// network proves domains for certificates there (DNS-01), so no
/// tenant's wildcard answers for it.
fn acme_challenge(zone: &Zone, name: &Name) -> bool {
    let below = name.iter().count().saturating_sub(zone.apex.iter().count());
    name.iter()
        .take(below)
        .any(|l| l.eq_ignore_ascii_case(b"_acme-challenge"))
}

/// `ip` with only its first `prefix` bits.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::from((bits & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::from((bits & mask).to_be_bytes())
        }
    }
}

/// The closest encloser of `name` (the nearest name above it that
/// exists) and the wildcard there that covers `name`, if any (RFC 4592).
fn wildcard<'z>(zone: &'z Zone, name: &Name) -> (Name, Option<&'z [Record]>) {
    let mut up = name.base_name();
    loop {
        let exists = up == zone.apex
            || zone.records.contains_key(&up)
            || zone.between.contains(&up)
            || zone.nameserver(&up).is_some();
        if exists || up.num_labels() <= zone.apex.num_labels() {
            let star = up
                .prepend_label("*")
                .ok()
                .and_then(|star| zone.records.get(&star))
                .map(Vec::as_slice);
            return (up, star);
        }
        up = up.base_name();
    }
}

/// Adds what a validating resolver needs to `reply`: the NSEC3 records
/// its denial calls for, then a signature over every record set.
fn secure(
    reply: &mut Message,
    signer: &Signer,
    zone: &Zone,
    name: &Name,
    denial: Denial,
    now: u64,
) {
    let apex = &zone.apex;
    let chain = &zone.chain;
    let matching = |n: &Name| chain.matching(n);
    let covering = |n: &Name| chain.covering(n);
    // The name one label below the encloser on the way to `name`.
    // Labels counted raw: an encloser may be a wildcard's owner (`a.*.x`
    // is below `*.x`), and `num_labels` leaves a leading `*` out.
    let labels = |n: &Name| n.iter().count();
    let next_closer = |encloser: &Name| name.trim_to(labels(encloser) + 1);
    let star = |encloser: &Name| encloser.prepend_label("*").ok();
    let proofs: [Option<usize>; 3] = match &denial {
        Denial::None => [None; 3],
        Denial::NoData | Denial::Cut => [matching(name), None, None],
        Denial::NxDomain { encloser } => [
            matching(encloser),
            covering(&next_closer(encloser)),
            star(encloser).and_then(|s| covering(&s)),
        ],
        Denial::Wildcard { encloser } => [covering(&next_closer(encloser)), None, None],
        Denial::WildcardNoData { encloser } => [
            matching(encloser),
            covering(&next_closer(encloser)),
            star(encloser).and_then(|s| matching(&s)),
        ],
    };
    let expanded = match &denial {
        Denial::Wildcard { encloser } => {
            Some((name, u8::try_from(labels(encloser)).unwrap_or(u8::MAX)))
        }
        _ => None,
    };
    signer.sign_section(apex, &mut reply.answers, expanded, now);
    signer.sign_section(apex, &mut reply.authorities, None, now);
    signer.sign_section(apex, &mut reply.additionals, None, now);
    // The SOA of a denial and the chain's records come signed: the same
    // few serve every denial.
    if reply.answers.is_empty() {
        reply.authorities.extend(
            chain
                .signed_soa(soa_negative(zone), signer, apex, now)
                .iter()
                .cloned(),
        );
    }
    for (i, link) in proofs.iter().enumerate() {
        if let Some(link) = *link
            && !proofs[..i].contains(&Some(link))
        {
            reply
                .authorities
                .extend(chain.signed(link, signer, apex, now).iter().cloned());
        }
    }
}

/// The k nearest nodes' addresses of the family asked for.
fn geo_answer(
    snap: &Snapshot,
    zone: &Zone,
    name: &Name,
    qtype: RecordType,
    from: Option<(f64, f64)>,
    turn: usize,
) -> Vec<Record> {
    let keep = wanted(qtype);
    let chosen = geo::nearest(
        &zone.servers,
        from,
        &snap.settings,
        &keep,
        snap.settings.answers,
        turn,
    );
    chosen
        .into_iter()
        .flat_map(|s| addresses(name, &s.ips, qtype, snap.settings.ttl))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_proto::op::Query;
    use maki_protocol::{Domain, SecretKey};

    use super::*;
    use crate::dns::zones::{Server, Settings};

    /// What the tests date their signatures.
    const NOW: u64 = 1_800_000_000;

    fn snapshot(servers: usize, answers: usize) -> Snapshot {
        let servers: Vec<Server> = (0..servers)
            .map(|i| Server {
                id: SecretKey::from_bytes(&[i as u8 + 1; 32]).public(),
                ips: vec![IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16])],
                location: None,
                region: None,
            })
            .collect();
        let zone = Zone {
            apex: Name::from_ascii("big.test.").expect("name"),
            site: Domain::new("big.test").expect("domain"),
            serial: 1,
            nameservers: vec![],
            servers: servers.into(),
            records: Arc::default(),
            between: Arc::default(),
            dnssec: Default::default(),
            ds: Arc::default(),
            chain: Arc::default(),
        };
        Snapshot::new(
            vec![zone],
            None,
            Settings {
                ttl: 60,
                answers,
                region: None,
                location: None,
            },
        )
    }

    fn query(edns: Option<u16>) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("big.test.").expect("name"),
            RecordType::AAAA,
        ));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            q.set_edns(e);
        }
        q.to_vec().expect("query")
    }

    fn ask(snap: &Snapshot, q: &[u8], tcp: bool) -> Message {
        let from = From {
            ip: IpAddr::from([192, 0, 2, 1]),
            tcp,
            now: NOW,
        };
        let reply = respond(snap, q, from, 0, &Stats::default()).expect("a reply");
        Message::from_vec(&reply).expect("readable")
    }

    #[test]
    fn too_large_for_udp_sends_the_client_to_tcp() {
        // 60 AAAA records: about 1.7 KB.
        let snap = snapshot(60, 60);
        for (edns, udp_limit) in [(None, 512), (Some(4096), usize::from(UDP_MAX))] {
            let q = query(edns);
            let from = From {
                ip: IpAddr::from([192, 0, 2, 1]),
                tcp: false,
                now: NOW,
            };
            let stats = Stats::default();
            let raw = respond(&snap, &q, from, 0, &stats).expect("a reply");
            assert!(raw.len() <= udp_limit, "{} bytes", raw.len());
            let m = Message::from_vec(&raw).expect("readable");
            assert!(m.metadata.truncation && m.answers.is_empty(), "{m:?}");
            assert_eq!(m.queries.len(), 1);
            assert_eq!(stats.truncated.load(Ordering::Relaxed), 1);
            // The same over TCP comes whole.
            let whole = ask(&snap, &q, true);
            assert!(!whole.metadata.truncation && whole.answers.len() == 60);
        }
        // What fits is sent whole over UDP.
        let small = snapshot(60, 2);
        let m = ask(&small, &query(None), false);
        assert!(!m.metadata.truncation && m.answers.len() == 2);
    }

    #[test]
    fn a_tenants_wildcard_never_answers_for_acme_challenge_names() {
        use maki_protocol::zone::{Data, UserRecord};
        let mut snap = snapshot(1, 1);
        let apex = Name::from_ascii("big.test.").expect("name");
        let rec = |name: &str, data: Data| UserRecord {
            name: name.into(),
            ttl: 300,
            data,
        };
        let (records, between) = crate::dns::zones::user_records(
            &apex,
            &[
                rec("*", Data::Txt(vec!["wild".into()])),
                rec("*.acme", Data::Cname("attacker.example.".into())),
            ],
        );
        let zone = Zone {
            records: Arc::new(records),
            between: Arc::new(between),
            dnssec: Default::default(),
            ds: Arc::default(),
            chain: Arc::default(),
            ..(**snap.zone_of(&apex).expect("zone")).clone()
        };
        snap = Snapshot::new(vec![zone], None, snap.settings.clone());
        let ask_name = |name: &str, t: RecordType| {
            let mut q = Message::query();
            q.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
            ask(&snap, &q.to_vec().expect("q"), false)
        };
        assert_eq!(ask_name("x.big.test.", RecordType::TXT).answers.len(), 1);
        for name in [
            "_acme-challenge.big.test.",
            "_acme-challenge.acme.big.test.",
        ] {
            let m = ask_name(name, RecordType::TXT);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}: {m:?}"
            );
        }
        // A literal `*` name is in its own zone, not refused.
        let m = ask_name("*.big.test.", RecordType::TXT);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert!(m.metadata.authoritative);
        // Nothing to transfer.
        let m = ask_name("big.test.", RecordType::AXFR);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }

    #[test]
    fn subnets_are_cut_to_their_prefix() {
        assert_eq!(
            masked(IpAddr::from([10, 255, 7, 9]), 4),
            IpAddr::from([0, 0, 0, 0])
        );
        assert_eq!(
            masked(IpAddr::from([10, 255, 7, 9]), 16),
            IpAddr::from([10, 255, 0, 0])
        );
        assert_eq!(
            masked(IpAddr::from([10, 255, 7, 9]), 32),
            IpAddr::from([10, 255, 7, 9])
        );
        assert_eq!(
            masked(IpAddr::from([10, 255, 7, 9]), 0),
            IpAddr::from([0, 0, 0, 0])
        );
        let v6: IpAddr = "2001:db8:ffff::1".parse().expect("ip");
        assert_eq!(masked(v6, 32), "2001:db8::".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn opcodes_classes_and_edns_versions_we_do_not_serve() {
        let snap = snapshot(2, 2);
        let mut q = Message::from_vec(&query(Some(1232))).expect("q");
        q.metadata.op_code = OpCode::Update;
        let m = ask(&snap, &q.to_vec().expect("q"), false);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        let mut q = Message::from_vec(&query(Some(1232))).expect("q");
        q.queries[0].set_query_class(DNSClass::CH);
        let m = ask(&snap, &q.to_vec().expect("q"), false);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let mut q = Message::from_vec(&query(Some(1232))).expect("q");
        if let Some(e) = q.edns.as_mut() {
            e.set_version(1);
        }
        let m = ask(&snap, &q.to_vec().expect("q"), false);
        // 16: BADVERS (hickory reads 16 back as BADSIG, which shares it).
        assert_eq!(u16::from(m.metadata.response_code), 16);
        // Many long questions (found by the fuzzer): FORMERR, and a reply
        // no larger than a UDP client takes.
        let mut q = Message::from_vec(&query(None)).expect("q");
        let long = Name::from_ascii(format!("{}.big.test.", vec!["a".repeat(60); 3].join(".")))
            .expect("name");
        for _ in 0..40 {
            q.add_query(Query::query(long.clone(), RecordType::A));
        }
        let raw = respond(
            &snap,
            &q.to_vec().expect("q"),
            From {
                ip: IpAddr::from([192, 0, 2, 1]),
                tcp: false,
                now: NOW,
            },
            0,
            &Stats::default(),
        )
        .expect("a reply");
        assert!(raw.len() <= 512, "{} bytes", raw.len());
        // Two questions: FORMERR.
        let mut q = Message::from_vec(&query(None)).expect("q");
        let again = q.queries[0].clone();
        q.add_query(again);
        let m = ask(&snap, &q.to_vec().expect("q"), false);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    fn signed(dnssec: Dnssec) -> Snapshot {
        let mut snap = snapshot(2, 2);
        let zone = snap.zones().next().expect("a zone").as_ref().clone();
        snap = Snapshot::new(vec![Zone { dnssec, ..zone }], None, snap.settings.clone());
        snap
    }

    fn dnssec_query(name: &str, qtype: RecordType, dnssec_ok: bool) -> Vec<u8> {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(dnssec_ok);
        q.set_edns(e);
        q.to_vec().expect("query")
    }

    /// Whether every RRSIG in `records` holds over its set, under `public`.
    fn signatures_hold(records: &[Record], public: &[u8]) -> usize {
        use hickory_proto::dnssec::{TBS, rdata::DNSSECRData};
        let mut key = vec![4];
        key.extend_from_slice(public);
        let key =
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key);
        let mut checked = 0;
        for r in records {
            let RData::DNSSEC(DNSSECRData::RRSIG(sig)) = &r.data else {
                continue;
            };
            let set: Vec<&Record> = records
                .iter()
                .filter(|x| x.name == r.name && x.record_type() == sig.input().type_covered)
                .collect();
            let tbs =
                TBS::from_input(&r.name, DNSClass::IN, sig.input(), set.into_iter()).expect("tbs");
            key.verify(tbs.as_ref(), sig.sig())
                .expect("the signature holds");
            checked += 1;
        }
        checked
    }

    #[test]
    fn signed_answers_go_to_resolvers_that_ask_for_them() {
        let (public, private) = sign::key_pair();
        let signer =
            Arc::new(sign::Signer::new(std::slice::from_ref(&public), &[private]).expect("signer"));
        let snap = signed(Dnssec::On(signer));
        // Without DO: the same answer as unsigned.
        let plain = ask(
            &snap,
            &dnssec_query("big.test.", RecordType::AAAA, false),
            false,
        );
        assert_eq!(plain.answers.len(), 2);
        assert!(
            plain
                .answers
                .iter()
                .all(|r| r.record_type() == RecordType::AAAA)
        );
        // With DO: the set and its signature, which holds.
        let secure = ask(
            &snap,
            &dnssec_query("big.test.", RecordType::AAAA, true),
            false,
        );
        assert!(secure.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
        assert_eq!(secure.answers.len(), 3);
        assert_eq!(signatures_hold(&secure.answers, &public), 1);
        // The DNSKEY set, signed by itself.
        let keys = ask(
            &snap,
            &dnssec_query("big.test.", RecordType::DNSKEY, true),
            false,
        );
        assert_eq!(signatures_hold(&keys.answers, &public), 1);
        // NXDOMAIN: the SOA and the NSEC3 of the chain that prove it
        // (the apex's alone here: its range is the whole ring), each
        // signed.
        let nx = ask(
            &snap,
            &dnssec_query("a.b.big.test.", RecordType::A, true),
            false,
        );
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        let nsec3 = nx
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::NSEC3)
            .count();
        assert_eq!(nsec3, 1);
        assert_eq!(signatures_hold(&nx.authorities, &public), 2);
        // A flood of made-up names reuses the chain's signatures.
        let Dnssec::On(signer) = &snap.zones().next().expect("zone").dnssec else {
            panic!("signed")
        };
        let before = signer.cached();
        for i in 0..200 {
            let nx = ask(
                &snap,
                &dnssec_query(&format!("made-up-{i}.big.test."), RecordType::A, true),
                false,
            );
            assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        }
        assert_eq!(signer.cached(), before, "no new signature per name");
    }

    #[test]
    fn a_signed_zone_without_its_keys_here_sends_validators_elsewhere() {
        let snap = signed(Dnssec::NoKey);
        let validating = ask(
            &snap,
            &dnssec_query("big.test.", RecordType::AAAA, true),
            false,
        );
        assert_eq!(validating.metadata.response_code, ResponseCode::ServFail);
        let plain = ask(
            &snap,
            &dnssec_query("big.test.", RecordType::AAAA, false),
            false,
        );
        assert_eq!(plain.answers.len(), 2);
    }

    #[test]
    fn a_keys_record_that_lies_signs_nothing() {
        use maki_protocol::dnssec::ZoneKeys;
        let node = [7u8; 32];
        let site = Domain::new("big.test").expect("domain");
        let (public, _) = sign::key_pair();
        let (_, other_private) = sign::key_pair();
        let mut keys = ZoneKeys {
            format: 1,
            site: site.clone(),
            incarnation: 0,
            keys: vec![public],
            sealed: vec![],
            version: 1,
        };
        keys.seal_to(
            &[other_private],
            &[maki_protocol::seal::public_key(&node)],
            || [9; 32],
        )
        .expect("seal");
        let ring = sign::Keyring::new(node);
        assert!(ring.check(&keys).is_err());
        assert_eq!(ring.dnssec(&site, Some(&keys)), Dnssec::NoKey);
        assert_eq!(ring.dnssec(&site, None), Dnssec::Off);
    }
}
