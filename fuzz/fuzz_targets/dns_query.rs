//! The nameserver's request path (`node/src/dns/answer.rs`, compiled here
//! by path with the zones it answers from) on any bytes: it never panics;
//! what it sends back is a DNS message a client can read, a reply to the
//! query's id, and within the size the client can take over UDP.
#![no_main]

use std::{
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use hickory_proto::{
    op::{Message, MessageType},
    rr::Name,
};
use libfuzzer_sys::fuzz_target;
use maki_protocol::{
    Domain, SecretKey,
    zone::{Data, UserRecord},
};

// At the crate root, as siblings: the modules name each other `super::`.
#[allow(dead_code)]
#[path = "../../node/src/dns/answer.rs"]
mod answer;
#[allow(dead_code)]
#[path = "../../node/src/dns/geo.rs"]
mod geo;
#[allow(dead_code)]
#[path = "../../node/src/dns/geoip.rs"]
mod geoip;
#[allow(dead_code)]
#[path = "../../node/src/dns/sign.rs"]
mod sign;
#[allow(dead_code)]
#[path = "../../node/src/dns/zones.rs"]
mod zones;

use crate::{
    answer::{From, Stats, UDP_MAX, respond},
    zones::{Server, Settings, Snapshot, Zone, user_records},
};

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let site = Domain::new("shop.test").expect("domain");
        let apex = Name::from_ascii("shop.test.").expect("name");
        let rec = |name: &str, data: Data| UserRecord { name: name.into(), ttl: 300, data };
        let (records, between) = user_records(
            &apex,
            &[
                rec("www", Data::Cname("shop.test.".into())),
                rec("@", Data::Mx { preference: 10, exchange: "mx.example.".into() }),
                rec("@", Data::Txt(vec!["v=spf1 -all".into(); 3])),
                rec("*.api", Data::Aaaa("2001:db8::1".parse().expect("ip"))),
                rec("a.b.c", Data::A("192.0.2.9".parse().expect("ip"))),
                rec("@", Data::Caa { critical: false, tag: "issue".into(), value: "ca.example".into() }),
            ],
        );
        let servers: Vec<Server> = (1..=40u8)
            .map(|i| Server {
                id: SecretKey::from_bytes(&[i; 32]).public(),
                ips: vec![IpAddr::from([192, 0, 2, i]), IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)])],
                location: Some((f64::from(i) - 20.0, f64::from(i) * 4.0)),
                region: Some(if i % 2 == 0 { "eu".into() } else { "us".into() }),
            })
            .collect();
        let ns = Name::from_ascii("ns-0123456789.shop.test.").expect("name");
        // Signed, so the fuzzer walks the DNSSEC paths too (DO set).
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).expect("pair");
        let public = ring::signature::KeyPair::public_key(&pair).as_ref()[1..].to_vec();
        let signer = sign::Signer::new(&[public], &[doc.as_ref().to_vec()]).expect("signer");
        let zone = Zone {
            apex,
            site: site.clone(),
            serial: 7,
            nameservers: vec![(ns, vec![IpAddr::from([198, 51, 100, 1])])],
            servers: servers.into(),
            records: Arc::new(records),
            between: Arc::new(between),
            dnssec: sign::Dnssec::On(Arc::new(signer)),
            ds: Arc::default(),
            chain: Arc::default(),
        };
        let alias = Zone {
            apex: Name::from_ascii("shop.example.").expect("name"),
            records: Arc::default(),
            between: Arc::default(),
            dnssec: sign::Dnssec::NoKey,
            ..zone.clone()
        };
        Snapshot::new(
            vec![zone, alias],
            None,
            Settings { ttl: 60, answers: 40, region: Some("eu".into()), location: None },
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, query)) = data.split_first() else {
        return;
    };
    let from = From { ip: IpAddr::from([10, 0, 0, first]), tcp: first & 1 == 1, now: 1_800_000_000 };
    let stats = Stats::default();
    let Some(reply) = respond(snapshot(), query, from, usize::from(first), &stats) else {
        return;
    };
    // A reply always echoes the id, and is never sent for a response.
    assert!(query.len() >= 12 && reply.len() >= 12, "a reply to {query:?}");
    assert_eq!(reply[..2], query[..2]);
    assert_eq!(query[2] & 0x80, 0, "answered a response");
    if !from.tcp {
        assert!(reply.len() <= usize::from(UDP_MAX), "{} bytes over UDP", reply.len());
    }
    let m = Message::from_vec(&reply).expect("our reply reads back");
    assert_eq!(m.metadata.message_type, MessageType::Response);
});
