//! The nameservers, asked by a real DNS client over UDP and TCP (and by
//! `dig`, in the tier `.ci/run` runs): zones for every site, answers with
//! the nodes that hold the site, the negative answers and refusals.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context, Result, ensure};
use hickory_proto::{
    op::ResponseCode,
    rr::{RData, RecordType},
};
use maki_e2e::{
    Maki, Network, NodeProc, copy_dir,
    dns::{Ask, addresses, ask, dig, exchange_tcp, exchange_udp},
    example_site, fresh_network, set_config, wait_for,
};

const SITE: &str = "geo.test";

/// `n` nodes that serve HTTP and answer DNS; node `i` says its public IP
/// is 192.0.2.(i+1).
fn dns_network(n: usize, settings: &[(&str, &str)]) -> Result<Network> {
    dns_network_with(n, settings, |_| Vec::new())
}

/// [`dns_network`] with settings of node `i` from `each(i)`.
fn dns_network_with(
    n: usize,
    settings: &[(&str, &str)],
    each: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Result<Network> {
    let fresh = fresh_network()?;
    let configure = |dir: &std::path::Path, i: usize| -> Result<()> {
        set_config(dir, "roles", r#"["http", "dns"]"#)?;
        set_config(dir, "dns", r#""127.0.0.1:0""#)?;
        set_config(dir, "public_ips", &format!(r#"["192.0.2.{}"]"#, i + 1))?;
        for (k, v) in settings {
            set_config(dir, k, v)?;
        }
        for (k, v) in each(i) {
            set_config(dir, k, &v)?;
        }
        Ok(())
    };
    configure(&fresh.data, 0)?;
    let first = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&first.ticket));
    let mut net = Network {
        tmp: fresh.tmp,
        nodes: vec![first],
        admin,
    };
    for i in 1..n {
        let ticket = net.admin.ok(&["invite"])?.trim().to_owned();
        let dir = net.tmp.path().join(format!("n{i}"));
        NodeProc::join(&dir, &ticket)?.stop()?;
        configure(&dir, i)?;
        net.nodes.push(NodeProc::start(&dir)?);
    }
    Ok(net)
}

/// Publishes the example site as SITE (added already) and waits until
/// every node serves it; its directory.
fn publish_example(net: &Network) -> Result<std::path::PathBuf> {
    let site = net.tmp.path().join("site");
    copy_dir(&example_site(), &site)?;
    net.admin
        .ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    Ok(site)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a test address")
}

#[tokio::test]
async fn sites_are_zones_answered_with_the_nodes_that_hold_them() -> Result<()> {
    let net = dns_network(3, &[("dns_answers", "3")])?;
    let dns = net.nodes[0].dns.context("node 0 answers DNS")?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;

    // Every node holds the head: the answer names all three.
    let all = vec![ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")];
    wait_for(
        Duration::from_secs(20),
        "all three nodes in the answer",
        || {
            let got = ask(dns, SITE, RecordType::A, &Ask::default()).map(|m| addresses(&m));
            let want = all.clone();
            async move { Ok(got? == want) }
        },
    )
    .await?;
    let a = ask(dns, SITE, RecordType::A, &Ask::default())?;
    ensure!(a.metadata.authoritative, "answers are authoritative");
    ensure!(a.metadata.response_code == ResponseCode::NoError);
    ensure!(a.answers.iter().all(|r| r.ttl == 60), "geo TTL 60: {a:?}");
    // Any of the three nameservers says the same.
    for n in &net.nodes[1..] {
        let other = n.dns.context("every node answers DNS")?;
        wait_for(Duration::from_secs(10), "the same answer elsewhere", || {
            let got = ask(other, SITE, RecordType::A, &Ask::default()).map(|m| addresses(&m));
            let want = all.clone();
            async move { Ok(got? == want) }
        })
        .await?;
    }
    // Over TCP too, and for a client without EDNS.
    let tcp = ask(
        dns,
        SITE,
        RecordType::A,
        &Ask {
            tcp: true,
            ..Ask::default()
        },
    )?;
    ensure!(addresses(&tcp) == all, "TCP: {tcp:?}");
    let plain = ask(
        dns,
        SITE,
        RecordType::A,
        &Ask {
            no_edns: true,
            ..Ask::default()
        },
    )?;
    ensure!(
        addresses(&plain) == all && plain.edns.is_none(),
        "no EDNS: {plain:?}"
    );

    // SOA and NS, with glue for each nameserver.
    let soa = ask(dns, SITE, RecordType::SOA, &Ask::default())?;
    let serial = match soa.answers.first().map(|r| &r.data) {
        Some(RData::SOA(s)) => s.serial,
        other => anyhow::bail!("no SOA: {other:?}"),
    };
    ensure!(serial > 1_700_000_000, "the serial is a time: {serial}");
    let ns = ask(dns, SITE, RecordType::NS, &Ask::default())?;
    ensure!(ns.answers.len() == 3, "three nameservers: {ns:?}");
    let mut glue: Vec<IpAddr> = ns
        .additionals
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .collect();
    glue.sort();
    ensure!(glue == all, "glue: {ns:?}");
    let ns_name = match &ns.answers[0].data {
        RData::NS(n) => n.0.to_ascii(),
        other => anyhow::bail!("not an NS record: {other:?}"),
    };
    ensure!(
        ns_name.starts_with("ns-") && ns_name.ends_with(".geo.test."),
        "{ns_name}"
    );
    let ns_a = ask(dns, &ns_name, RecordType::A, &Ask::default())?;
    ensure!(
        addresses(&ns_a).len() == 1,
        "the nameserver's own A: {ns_a:?}"
    );

    // No AAAA: NODATA with the SOA.
    let aaaa = ask(dns, SITE, RecordType::AAAA, &Ask::default())?;
    ensure!(aaaa.metadata.response_code == ResponseCode::NoError && aaaa.answers.is_empty());
    ensure!(
        aaaa.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    );
    // A name in the zone that does not exist: NXDOMAIN with the SOA,
    // whose TTL is how long it is cached.
    let nx = ask(dns, "nope.geo.test", RecordType::A, &Ask::default())?;
    ensure!(
        nx.metadata.response_code == ResponseCode::NXDomain,
        "{nx:?}"
    );
    ensure!(nx.metadata.authoritative);
    ensure!(
        nx.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA && r.ttl == 60)
    );
    // A zone we do not serve: REFUSED, not authoritative.
    let other = ask(dns, "example.org", RecordType::A, &Ask::default())?;
    ensure!(
        other.metadata.response_code == ResponseCode::Refused,
        "{other:?}"
    );
    ensure!(!other.metadata.authoritative && other.answers.is_empty());
    // Names are case-insensitive.
    let upper = ask(dns, "GEO.Test", RecordType::A, &Ask::default())?;
    ensure!(addresses(&upper) == all);
    Ok(())
}

#[tokio::test]
async fn garbage_gets_formerr_or_nothing_and_the_server_goes_on() -> Result<()> {
    let net = dns_network(1, &[])?;
    let dns = net.nodes[0].dns.context("dns")?;
    net.admin.ok(&["site", "add", SITE])?;
    // Shorter than a header: dropped.
    ensure!(exchange_udp(dns, &[1, 2, 3])?.is_none());
    // A header, then rubbish: FORMERR echoing the id.
    let mut bad = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[0xff; 40]);
    let reply = exchange_udp(dns, &bad)?.context("a FORMERR")?;
    ensure!(
        reply[..2] == [0xab, 0xcd] && reply[3] & 0x0f == 1,
        "{reply:?}"
    );
    // A compression pointer to itself in the question.
    let mut looped = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let reply = exchange_udp(dns, &looped)?.context("a FORMERR")?;
    ensure!(reply[3] & 0x0f == 1, "{reply:?}");
    // A response sent to us: never answered (no reflection).
    let mut response = vec![0x55, 0x55, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0];
    response.extend_from_slice(&[0; 4]);
    ensure!(exchange_udp(dns, &response)?.is_none());
    // Over TCP, a garbage frame is answered and the server stays up.
    let reply = exchange_tcp(dns, &bad)?;
    ensure!(reply[3] & 0x0f == 1);
    // Still answering.
    let soa = ask(dns, SITE, RecordType::SOA, &Ask::default())?;
    ensure!(soa.metadata.response_code == ResponseCode::NoError && !soa.answers.is_empty());
    Ok(())
}

#[tokio::test]
#[ignore = "needs dig (Debian package dnsutils); .ci/run installs it"]
async fn dig_reads_the_answers() -> Result<()> {
    let net = dns_network(1, &[])?;
    let dns = net.nodes[0].dns.context("dns")?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    wait_for(Duration::from_secs(10), "an A answer", || {
        let out = dig(dns, &["+short", SITE, "A"]);
        async move { Ok(out?.trim() == "192.0.2.1") }
    })
    .await?;
    let out = dig(dns, &["+norec", SITE, "SOA"])?;
    ensure!(
        out.contains("flags: qr aa;") && out.contains("status: NOERROR"),
        "{out}"
    );
    let out = dig(dns, &["+tcp", "+short", SITE, "A"])?;
    ensure!(out.trim() == "192.0.2.1", "{out}");
    let out = dig(dns, &["nope.geo.test", "A"])?;
    ensure!(
        out.contains("status: NXDOMAIN") && out.contains("SOA"),
        "{out}"
    );
    let out = dig(dns, &["example.org", "A"])?;
    ensure!(out.contains("status: REFUSED"), "{out}");
    // An EDNS version we do not speak.
    let out = dig(dns, &["+edns=1", "+noednsneg", SITE, "A"])?;
    ensure!(out.contains("status: BADVERS"), "{out}");
    Ok(())
}

#[tokio::test]
async fn the_nameservers_answer_dns_over_tls() -> Result<()> {
    let net = dns_network(1, &[])?;
    let dot = net.nodes[0].dot.context("dot")?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    let query = maki_e2e::dns::query(SITE, RecordType::A)?;
    wait_for(Duration::from_secs(10), "an A answer over TLS", || {
        let query = query.clone();
        async move {
            let (reply, _) = maki_e2e::dns::exchange_tls(dot, "ns.geo.test", &query).await?;
            let m = hickory_proto::op::Message::from_vec(&reply)?;
            Ok(addresses(&m) == vec![ip("192.0.2.1")])
        }
    })
    .await?;
    // No SNI (an address), or a name of no site: the node's own
    // certificate still comes.
    let (reply, chain) = maki_e2e::dns::exchange_tls(dot, "127.0.0.1", &query).await?;
    ensure!(!reply.is_empty() && !chain.is_empty());
    // A handshake that never ends ties nothing up for long: queries go on.
    let mut stalled = tokio::net::TcpStream::connect(dot).await?;
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03, 0x01]).await?;
    let (reply, _) = maki_e2e::dns::exchange_tls(dot, "ns.geo.test", &query).await?;
    ensure!(!reply.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_nameservers_answer_dns_over_quic_to_hickorys_client() -> Result<()> {
    use hickory_net::xfer::DnsRequestSender;
    use n0_future::StreamExt;
    let net = dns_network(1, &[])?;
    // DoQ shares DoT's port, over UDP.
    let doq = net.nodes[0].dot.context("dot")?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    let tls = maki_e2e::client_config(&["doq"], &maki_e2e::Trust::Any, &[&rustls::version::TLS13])?;
    let mut client = hickory_net::quic::QuicClientStream::builder()
        .crypto_config((*tls).clone())
        .build(doq, std::sync::Arc::from("ns.geo.test"))
        .await?;
    let ask = |client: &mut hickory_net::quic::QuicClientStream| {
        let mut m = hickory_proto::op::Message::query();
        m.metadata.recursion_desired = false;
        m.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii(SITE).expect("name"),
            RecordType::A,
        ));
        // DoQ queries carry id 0 (RFC 9250 §4.2.1).
        m.metadata.id = 0;
        client.send_message(m.into())
    };
    wait_for(Duration::from_secs(10), "an A answer over QUIC", || {
        let mut replies = ask(&mut client);
        async move {
            let reply = replies.next().await.context("no reply")??;
            Ok(addresses(&reply) == vec![ip("192.0.2.1")])
        }
    })
    .await?;
    // Several queries on one connection, each on its own stream.
    for _ in 0..5 {
        let reply = ask(&mut client).next().await.context("no reply")??;
        ensure!(addresses(&reply) == vec![ip("192.0.2.1")]);
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs kdig (Debian package knot-dnsutils); .ci/run installs it"]
async fn kdig_asks_over_tls() -> Result<()> {
    let net = dns_network(1, &[])?;
    let dot = net.nodes[0].dot.context("dot")?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    let kdig = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("kdig")
            .arg(format!("@{}", dot.ip()))
            .args(["-p", &dot.port().to_string(), "+tls"])
            .args(args)
            .output()
            .context("running kdig (Debian package knot-dnsutils)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_for(
        Duration::from_secs(10),
        "an A answer from kdig +tls",
        || {
            let out = kdig(&["+short", SITE, "A"]);
            async move { Ok(out?.trim() == "192.0.2.1") }
        },
    )
    .await?;
    let out = kdig(&[SITE, "SOA"])?;
    ensure!(
        out.contains("TLS session") && out.contains("NOERROR"),
        "{out}"
    );
    Ok(())
}

/// A geo database placing 10.1.0.0/16 in Frankfurt, 10.2.0.0/16 in New
/// York and 2001:db8:3::/48 in Sydney, in the flat layout (f32).
fn geo_database(path: &std::path::Path) -> Result<()> {
    use mmdb_writer::{Value, Writer};
    let mut w = Writer::new("Test-City");
    for (net, lat, lon) in [
        ("10.1.0.0/16", 50.11, 8.68),
        ("10.2.0.0/16", 40.71, -74.01),
        ("2001:db8:3::/48", -33.87, 151.21),
    ] {
        w.insert_value(
            net.parse::<ipnet::IpNet>()?,
            Value::map([
                ("latitude", Value::Float(lat as f32)),
                ("longitude", Value::Float(lon as f32)),
            ]),
        )?;
    }
    std::fs::write(path, w.to_bytes()?)?;
    Ok(())
}

#[tokio::test]
async fn the_answer_follows_the_visitors_subnet() -> Result<()> {
    // Node 0 in Frankfurt, 1 in New York, 2 in Sydney; one node per answer.
    let Network { tmp, nodes, .. } = three_places()?;
    let dns = nodes[0].dns.context("dns")?;
    let with = |subnet: &str, prefix: u8| Ask {
        subnet: Some((ip(subnet), prefix)),
        ..Ask::default()
    };
    // No database yet: nothing is placed, the scope is 0, and the
    // answering node's own region comes first.
    wait_for(Duration::from_secs(20), "every node in the zone", || {
        let got = ask(dns, SITE, RecordType::A, &Ask { ..Ask::default() })
            .map(|m| addresses(&m) == [ip("192.0.2.1")]);
        async move { got }
    })
    .await?;
    let m = ask(dns, SITE, RecordType::A, &with("10.2.0.0", 24))?;
    ensure!(addresses(&m) == [ip("192.0.2.1")], "{m:?}");
    ensure!(subnet_scope(&m) == Some(0), "{m:?}");

    // A database installed into the running node is read within seconds.
    let db = tmp.path().join("city.mmdb");
    geo_database(&db)?;
    let out = geoip_install(&nodes[0].dir, &db)?;
    ensure!(out.contains("flat layout"), "{out}");
    wait_for(
        Duration::from_secs(10),
        "New York for a New York subnet",
        || {
            let got = ask(dns, SITE, RecordType::A, &with("10.2.0.0", 24));
            async move {
                let m = got?;
                Ok(addresses(&m) == [ip("192.0.2.2")] && subnet_scope(&m) == Some(16))
            }
        },
    )
    .await?;
    for (subnet, want) in [
        ("10.1.7.0", "192.0.2.1"),
        ("10.2.0.0", "192.0.2.2"),
        ("2001:db8:3::", "192.0.2.3"),
    ] {
        let prefix = if subnet.contains(':') { 56 } else { 24 };
        let m = ask(dns, SITE, RecordType::A, &with(subnet, prefix))?;
        ensure!(addresses(&m) == [ip(want)], "{subnet}: {m:?}");
        // The scope is the database's network: /16 for IPv4, /48 for IPv6.
        let scope = if subnet.contains(':') { 48 } else { 16 };
        ensure!(subnet_scope(&m) == Some(scope), "{subnet}: {m:?}");
    }
    // Without ECS, the resolver's own address decides (127.0.0.1 is not
    // placed: the answering node's region).
    let m = ask(dns, SITE, RecordType::A, &Ask::default())?;
    ensure!(addresses(&m) == [ip("192.0.2.1")], "{m:?}");
    // Another nameserver without a database answers alike for the
    // unplaced; its own region first.
    // Waited for: under load a probe of node 1 may time out, and node 1
    // hears that it is back a moment after node 0 does.
    let other = nodes[1].dns.context("dns")?;
    wait_for(Duration::from_secs(10), "node 1's own region first", || {
        let got = ask(other, SITE, RecordType::A, &with("10.1.7.0", 24));
        async move {
            let m = got?;
            Ok(addresses(&m) == [ip("192.0.2.2")] && subnet_scope(&m) == Some(0))
        }
    })
    .await?;
    Ok(())
}

/// Node 0 in Frankfurt, 1 in New York, 2 in Sydney, one node per answer,
/// with the site published to all three.
fn three_places() -> Result<Network> {
    let places = [
        ("eu", 50.11, 8.68),
        ("us", 40.71, -74.01),
        ("ap", -33.87, 151.21),
    ];
    let net = dns_network_with(3, &[("dns_answers", "1")], |i| {
        let (region, lat, lon) = places[i];
        vec![
            ("region", format!("{region:?}")),
            ("location", format!("[{lat}, {lon}]")),
        ]
    })?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    Ok(net)
}

/// `makiatto geoip install` into a node's data directory; its output.
fn geoip_install(data: &std::path::Path, db: &std::path::Path) -> Result<String> {
    let out = std::process::Command::new(maki_e2e::bins()?.makiatto)
        .args(["geoip", "install", "--data-dir"])
        .arg(data)
        .arg(db)
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The scope prefix of the ECS option in a reply.
fn subnet_scope(m: &hickory_proto::op::Message) -> Option<u8> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some(s.scope_prefix()),
        _ => None,
    }
}

#[tokio::test]
async fn aliases_serve_the_site_over_http_and_dns() -> Result<()> {
    let net = dns_network(1, &[])?;
    let node = &net.nodes[0];
    let dns = node.dns.context("dns")?;
    net.admin.ok(&[
        "site",
        "add",
        SITE,
        "--alias",
        "www.geo.test",
        "--alias",
        "geo.example",
    ])?;
    let site = publish_example(&net)?;
    let index = std::fs::read(site.join("index.html"))?;
    for host in [SITE, "www.geo.test", "GEO.example"] {
        wait_for(Duration::from_secs(10), "the site at its alias", || {
            let (addr, host) = (node.http, host.to_owned());
            async move { Ok(maki_e2e::body_of(addr, &host, "/").await.is_some()) }
        })
        .await?;
        let body = maki_e2e::body_of(node.http, host, "/")
            .await
            .context("served")?;
        ensure!(body == index, "{host} serves the site");
        // Each alias is a zone of its own, answered like the site.
        wait_for(Duration::from_secs(10), "the alias's zone", || {
            let got = ask(dns, host, RecordType::A, &Ask::default());
            async move { Ok(addresses(&got?) == [ip("192.0.2.1")]) }
        })
        .await?;
        let soa = ask(dns, host, RecordType::SOA, &Ask::default())?;
        ensure!(
            soa.metadata.authoritative && soa.answers.len() == 1,
            "{host}: {soa:?}"
        );
    }
    let listed = net.admin.ok(&["sites"])?;
    ensure!(
        listed.contains("aliases www.geo.test,geo.example"),
        "{listed}"
    );

    // Ambiguous names are refused, with the reason.
    let err = net
        .admin
        .fails(&["site", "add", "second.test", "--alias", "www.geo.test"])?;
    ensure!(
        err.contains("www.geo.test is already an alias of geo.test"),
        "{err}"
    );
    let err = net.admin.fails(&["site", "add", "geo.example"])?;
    ensure!(err.contains("geo.example is an alias of geo.test"), "{err}");
    net.admin.ok(&["site", "add", "second.test"])?;
    let err = net
        .admin
        .fails(&["site", "alias", "add", SITE, "second.test"])?;
    ensure!(err.contains("second.test is a site of its own"), "{err}");
    let err = net.admin.fails(&["site", "alias", "add", SITE, SITE])?;
    ensure!(err.contains("the site's own domain"), "{err}");
    let err = net
        .admin
        .fails(&["site", "alias", "remove", SITE, "nope.test"])?;
    ensure!(
        err.contains("nope.test is not an alias of geo.test"),
        "{err}"
    );

    // Removing an alias: no longer served, no longer a zone.
    let out = net
        .admin
        .ok(&["site", "alias", "remove", SITE, "geo.example"])?;
    ensure!(out.contains("aliases www.geo.test"), "{out}");
    wait_for(Duration::from_secs(10), "the alias gone from DNS", || {
        let got = ask(dns, "geo.example", RecordType::A, &Ask::default());
        async move { Ok(got?.metadata.response_code == ResponseCode::Refused) }
    })
    .await?;
    ensure!(
        maki_e2e::body_of(node.http, "geo.example", "/")
            .await
            .is_none()
    );
    ensure!(
        maki_e2e::body_of(node.http, "www.geo.test", "/")
            .await
            .is_some()
    );
    // And one added later is served at once.
    net.admin
        .ok(&["site", "alias", "add", SITE, "later.example"])?;
    wait_for(Duration::from_secs(10), "the new alias served", || {
        let addr = node.http;
        async move {
            Ok(maki_e2e::body_of(addr, "later.example", "/")
                .await
                .is_some())
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_dead_node_leaves_the_answers_within_ten_seconds_and_comes_back() -> Result<()> {
    let mut net = dns_network(3, &[("dns_answers", "3")])?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    let dns = net.nodes[0].dns.context("dns")?;
    let all = vec![ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")];
    wait_for(Duration::from_secs(20), "all three in the answer", || {
        let got = ask(dns, SITE, RecordType::A, &Ask::default()).map(|m| addresses(&m));
        let want = all.clone();
        async move { Ok(got? == want) }
    })
    .await?;
    // Every member probes the others: maki nodes shows it.
    wait_for(Duration::from_secs(10), "probes in maki nodes", || {
        let out = net.admin.ok(&["nodes"]);
        async move { Ok(out?.matches("http up (0/2 see it down)").count() == 3) }
    })
    .await?;

    let dir = net.nodes[2].dir.clone();
    net.nodes.remove(2).crash()?;
    let took = wait_for(
        Duration::from_secs(10),
        "the dead node out of the answers",
        || {
            let got = ask(dns, SITE, RecordType::A, &Ask::default()).map(|m| addresses(&m));
            async move { Ok(got? == [ip("192.0.2.1"), ip("192.0.2.2")]) }
        },
    )
    .await?;
    eprintln!("the dead node left the answers after {took:?}");
    // Node 1 answers without it too.
    let other = net.nodes[1].dns.context("dns")?;
    wait_for(Duration::from_secs(5), "out at node 1 as well", || {
        let got = ask(other, SITE, RecordType::A, &Ask::default()).map(|m| addresses(&m));
        async move { Ok(got? == [ip("192.0.2.1"), ip("192.0.2.2")]) }
    })
    .await?;
    let listed = net.admin.ok(&["nodes"])?;
    ensure!(listed.contains("http down (2/2 see it down)"), "{listed}");

    // Back after good probes.
    net.nodes.push(NodeProc::start(&dir)?);
    wait_for(
        Duration::from_secs(20),
        "the node back in the answers",
        || {
            let got = ask(dns, SITE, RecordType::A, &Ask::default()).map(|m| addresses(&m));
            let want = all.clone();
            async move { Ok(got? == want) }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn records_from_maki_toml_are_served_after_publish() -> Result<()> {
    let net = dns_network(1, &[])?;
    let dns = net.nodes[0].dns.context("dns")?;
    net.admin.ok(&["site", "add", SITE])?;
    net.admin.ok(&["site", "add", "blog.geo.test"])?;
    let project = net.tmp.path().join("project");
    copy_dir(&example_site(), &project.join("public"))?;
    let mut maki = Maki::new(&net.admin.home, Some(&net.nodes[0].ticket));
    maki.cwd = project.clone();
    let records = r#"
[[dns]]
name = "www"
type = "CNAME"
value = "geo.test."

[[dns]]
name = "@"
type = "MX"
value = "10 mx.mail.example."

[[dns]]
name = "@"
type = "TXT"
value = "v=spf1 -all"
ttl = 600

[[dns]]
name = "api"
type = "A"
value = "198.51.100.7"

[[dns]]
name = "*.api"
type = "AAAA"
value = "2001:db8::7"

[[dns]]
name = "deep.under.it"
type = "TXT"
value = ["one", "two"]

[[dns]]
name = "@"
type = "CAA"
value = '0 issue "letsencrypt.org"'
"#;
    let write = |extra: &str| {
        std::fs::write(
            project.join("maki.toml"),
            format!("[site]\ndomain = \"{SITE}\"\ndir = \"public\"\n{extra}"),
        )
    };
    write(records)?;
    let out = maki.ok(&["publish"])?;
    ensure!(out.contains("7 DNS records set"), "{out}");

    let q = |name: &str, t: RecordType| ask(dns, name, t, &Ask::default());
    wait_for(Duration::from_secs(10), "the records in the zone", || {
        let got = q("geo.test", RecordType::MX);
        async move { Ok(got?.answers.len() == 1) }
    })
    .await?;
    // A CNAME answers for every type at its name.
    let www = q("www.geo.test", RecordType::A)?;
    ensure!(
        matches!(&www.answers[..], [r] if matches!(&r.data, RData::CNAME(c) if c.0.to_ascii() == "geo.test.")),
        "{www:?}"
    );
    let txt = q("geo.test", RecordType::TXT)?;
    ensure!(
        txt.answers.len() == 1 && txt.answers[0].ttl == 600,
        "{txt:?}"
    );
    let caa = q("geo.test", RecordType::CAA)?;
    ensure!(caa.answers.len() == 1, "{caa:?}");
    ensure!(addresses(&q("api.geo.test", RecordType::A)?) == [ip("198.51.100.7")]);
    // The wildcard answers below api, in the name asked for.
    let wild = q("x.api.geo.test", RecordType::AAAA)?;
    ensure!(addresses(&wild) == [ip("2001:db8::7")], "{wild:?}");
    ensure!(
        wild.answers[0].name.to_ascii() == "x.api.geo.test.",
        "{wild:?}"
    );
    // api has no AAAA of its own: NODATA, not the wildcard.
    let nodata = q("api.geo.test", RecordType::AAAA)?;
    ensure!(nodata.metadata.response_code == ResponseCode::NoError && nodata.answers.is_empty());
    // A name between the apex and a record exists (NODATA), one beside
    // does not (NXDOMAIN).
    let between = q("under.it.geo.test", RecordType::TXT)?;
    ensure!(
        between.metadata.response_code == ResponseCode::NoError,
        "{between:?}"
    );
    let nx = q("nothing.it.geo.test", RecordType::TXT)?;
    ensure!(
        nx.metadata.response_code == ResponseCode::NXDomain,
        "{nx:?}"
    );
    // The geo answer at the apex is untouched.
    ensure!(addresses(&q(SITE, RecordType::A)?) == [ip("192.0.2.1")]);

    // What could hurt another tenant, or the network, is refused with
    // the reason, and the records in place stay.
    for (entry, why) in [
        (
            "name = \"_acme-challenge\"\ntype = \"TXT\"\nvalue = \"x\"",
            "_acme-challenge names are the network's",
        ),
        (
            "name = \"sub\"\ntype = \"NS\"\nvalue = \"ns.evil.example.\"",
            "not for tenants",
        ),
        (
            "name = \"@\"\ntype = \"A\"\nvalue = \"203.0.113.9\"",
            "the apex answers with the nodes",
        ),
        (
            "name = \"blog\"\ntype = \"TXT\"\nvalue = \"x\"",
            "blog.geo.test is at or below blog.geo.test, another site's name",
        ),
        (
            "name = \"*.blog\"\ntype = \"TXT\"\nvalue = \"x\"",
            "another site's name",
        ),
    ] {
        write(&format!("[[dns]]\n{entry}\n"))?;
        let err = maki.fails(&["publish"])?;
        ensure!(err.contains(why), "{entry}: {err}");
    }
    ensure!(q("geo.test", RecordType::MX)?.answers.len() == 1);
    // A publisher who is not one of this site's cannot set its records.
    let stranger_home = net.tmp.path().join("stranger");
    std::fs::create_dir_all(&stranger_home)?;
    let mut stranger = Maki::new(&stranger_home, Some(&net.nodes[0].ticket));
    stranger.cwd = project.clone();
    write(records)?;
    let err = stranger.fails(&["publish"])?;
    ensure!(err.contains("not") && err.contains("publish"), "{err}");
    // `dns = []` removes them all (a top-level key: before [site]).
    std::fs::write(
        project.join("maki.toml"),
        format!("dns = []\n[site]\ndomain = \"{SITE}\"\ndir = \"public\"\n"),
    )?;
    maki.ok(&["publish"])?;
    wait_for(Duration::from_secs(10), "the records gone", || {
        let got = q("geo.test", RecordType::MX);
        async move { Ok(got?.answers.is_empty()) }
    })
    .await?;
    ensure!(q("www.geo.test", RecordType::A)?.metadata.response_code == ResponseCode::NXDomain);

    // The network's CAA: every zone without CAA records of its own lets
    // only the network's CA issue, for names and wildcards.
    net.admin.ok(&[
        "acme",
        "set",
        "--directory",
        "https://acme.test/directory",
        "--contact",
        "ops@example.com",
        "--caa",
        "letsencrypt.org",
    ])?;
    wait_for(Duration::from_secs(10), "the network's CAA", || {
        let got = q("blog.geo.test", RecordType::CAA);
        async move { Ok(got?.answers.len() == 2) }
    })
    .await?;
    let caa = q("geo.test", RecordType::CAA)?;
    let tags: Vec<String> = caa
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CAA(c) => Some(format!("{} {}", c.tag, String::from_utf8_lossy(&c.value))),
            _ => None,
        })
        .collect();
    ensure!(
        tags.len() == 2
            && tags.iter().any(|t| t.starts_with("issue letsencrypt.org"))
            && tags
                .iter()
                .any(|t| t.starts_with("issuewild letsencrypt.org")),
        "{tags:?}"
    );
    // Only an admin sets them, and only to an https:// directory.
    let err = net
        .admin
        .fails(&["acme", "set", "--directory", "http://acme.test/dir"])?;
    ensure!(err.contains("https://"), "{err}");
    let err = stranger.fails(&["acme", "set", "--directory", "https://evil.test/dir"])?;
    ensure!(err.contains("admin"), "{err}");
    Ok(())
}

#[tokio::test]
async fn dns_setup_prints_the_registrar_records_and_checks_them() -> Result<()> {
    let net = dns_network(2, &[])?;
    // Once node 0 knows both nameservers (the second restarted with the
    // dns role), its zone names both.
    let dns = net.nodes[0].dns.context("dns")?;
    net.admin.ok(&["site", "add", "shop.example"])?;
    wait_for(
        Duration::from_secs(20),
        "both nameservers in the zone",
        || {
            let got = ask(dns, "shop.example", RecordType::NS, &Ask::default());
            async move { Ok(got?.answers.len() == 2) }
        },
    )
    .await?;
    let out = net.admin.ok(&["dns", "setup", "shop.example"])?;
    // Two nameservers, each with its glue, named under the domain.
    ensure!(out.matches("shop.example.  NS  ns-").count() == 2, "{out}");
    for ip in ["192.0.2.1", "192.0.2.2"] {
        ensure!(
            out.contains(&format!(".shop.example.  A  {ip}   (glue)")),
            "{out}"
        );
    }
    ensure!(out.contains("only 2 nameserver(s)"), "{out}");
    // These addresses are documentation ones: nothing answers there.
    ensure!(out.contains("FAIL  ns-"), "{out}");
    // The names agree with what the nameservers themselves say.
    let ns = ask(dns, "shop.example", RecordType::NS, &Ask::default())?;
    for r in &ns.answers {
        let RData::NS(n) = &r.data else {
            anyhow::bail!("not NS: {r:?}")
        };
        let name = n.0.to_ascii();
        ensure!(out.contains(&format!("NS  {name}")), "{name} not in {out}");
    }
    // A name no zone serves would be a lame delegation: said so.
    let out = net.admin.ok(&["dns", "setup", "nosite.example"])?;
    ensure!(
        out.contains("note: nosite.example is not among the sites"),
        "{out}"
    );
    // A node without the dns role is no nameserver.
    let err = maki_e2e::one_node()?
        .admin
        .fails(&["dns", "setup", "shop.example"])?;
    ensure!(err.contains("no node has the dns role"), "{err}");
    Ok(())
}

/// Runs `unbound` (Debian's) on loopback as a recursive resolver with a
/// stub zone for `zone` at `ns`, ECS on; returns the process and its port.
fn unbound(
    dir: &std::path::Path,
    zone: &str,
    ns: std::net::SocketAddr,
) -> Result<(std::process::Child, u16)> {
    unbound_with(dir, zone, ns, "subnetcache iterator", "")
}

/// unbound as a validating resolver, trusting `ds` (a DS line).
fn validating_unbound(
    dir: &std::path::Path,
    zone: &str,
    ns: std::net::SocketAddr,
    ds: &str,
) -> Result<(std::process::Child, u16)> {
    let anchor = format!(
        "  trust-anchor: \"{}\"\n  aggressive-nsec: yes\n",
        ds.replace(" 3600 IN ", " IN ")
    );
    unbound_with(dir, zone, ns, "validator iterator", &anchor)
}

fn unbound_with(
    dir: &std::path::Path,
    zone: &str,
    ns: std::net::SocketAddr,
    modules: &str,
    extra: &str,
) -> Result<(std::process::Child, u16)> {
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.local_addr()?.port()
    };
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "{modules}"
{extra}  send-client-subnet: 127.0.0.1
  client-subnet-always-forward: yes
  max-client-subnet-ipv4: 24
  qname-minimisation: no
  # RFC 6761's test. is a static empty zone in unbound by default.
  local-zone: "test." nodefault
stub-zone:
  name: "{zone}"
  stub-addr: {ip}@{nsport}
"#,
            dir = dir.display(),
            modules = modules,
            extra = extra,
            ip = ns.ip(),
            nsport = ns.port(),
        ),
    )?;
    let child = std::process::Command::new("unbound")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("unbound.log"))?)
        .spawn()
        .context("running unbound (Debian package unbound)")?;
    Ok((child, port))
}

#[tokio::test]
#[ignore = "needs unbound and dig (Debian packages unbound, dnsutils); .ci/run installs them"]
async fn a_real_resolver_passes_the_visitors_subnet_and_gets_the_near_node() -> Result<()> {
    let Network { tmp, nodes, .. } = three_places()?;
    let db = tmp.path().join("city.mmdb");
    geo_database(&db)?;
    geoip_install(&nodes[0].dir, &db)?;
    let dns = nodes[0].dns.context("dns")?;
    // Our own server places the subnet before the resolver is asked.
    wait_for(Duration::from_secs(10), "the database read", || {
        let got = ask(
            dns,
            SITE,
            RecordType::A,
            &Ask {
                subnet: Some((ip("10.2.0.0"), 24)),
                ..Ask::default()
            },
        );
        async move { Ok(addresses(&got?) == [ip("192.0.2.2")]) }
    })
    .await?;

    let (mut resolver, port) = unbound(tmp.path(), SITE, dns)?;
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let result = async {
        // The resolver passes each client's subnet on, and caches each
        // answer for the scope we gave (the /16), not for everyone.
        for (subnet, want) in [
            ("10.1.4.0/24", "192.0.2.1"),
            ("10.2.9.0/24", "192.0.2.2"),
            ("10.1.200.0/24", "192.0.2.1"),
        ] {
            let sub = format!("+subnet={subnet}");
            wait_for(Duration::from_secs(10), "the resolver's answer", || {
                // Until unbound listens, dig fails: not yet, not an error.
                let got = dig(at, &["+short", "+rec", &sub, SITE, "A"]);
                async move { Ok(got.is_ok_and(|g| g.trim() == want)) }
            })
            .await
            .with_context(|| {
                std::fs::read_to_string(tmp.path().join("unbound.log")).unwrap_or_default()
            })?;
        }
        let full = dig(at, &["+rec", "+subnet=10.2.9.0/24", SITE, "A"])?;
        ensure!(full.contains("CLIENT-SUBNET: 10.2.9.0/24/16"), "{full}");
        anyhow::Ok(())
    }
    .await;
    resolver.kill().ok();
    resolver.wait().ok();
    result
}

/// The trust anchor a registrar's DS makes, as delv reads it.
fn anchor_file(dir: &std::path::Path, ds: &str) -> Result<std::path::PathBuf> {
    // "geo.test. 3600 IN DS 12345 13 2 ABCD…"
    let f: Vec<&str> = ds.split_whitespace().collect();
    let [zone, _, _, _, tag, alg, digest_type, digest, ..] = f.as_slice() else {
        anyhow::bail!("not a DS line: {ds}");
    };
    let path = dir.join("anchors.conf");
    std::fs::write(
        &path,
        format!("trust-anchors {{ {zone} static-ds {tag} {alg} {digest_type} \"{digest}\"; }};\n"),
    )?;
    Ok(path)
}

fn delv(server: std::net::SocketAddr, anchors: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("delv")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .arg("-a")
        .arg(anchors)
        .arg(format!("+root={SITE}"))
        .args(["+tcp"])
        .args(args)
        .output()
        .context("run delv (Debian package bind9-dnsutils)")?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[tokio::test]
#[ignore = "needs delv (Debian package bind9-dnsutils); .ci/run installs it"]
async fn delv_validates_signed_positive_negative_and_geo_answers() -> Result<()> {
    let net = dns_network(2, &[])?;
    net.admin.ok(&["site", "add", SITE])?;
    let project = net.tmp.path().join("project");
    copy_dir(&example_site(), &project.join("public"))?;
    std::fs::write(
        project.join("maki.toml"),
        format!(
            "[site]\ndomain = \"{SITE}\"\ndir = \"public\"\n[[dns]]\nname = \"*.apps\"\ntype = \"TXT\"\nvalue = \"wild\"\n[[dns]]\nname = \"*\"\ntype = \"TXT\"\nvalue = \"apex-wild\"\n[[dns]]\nname = \"mail\"\ntype = \"A\"\nvalue = \"192.0.2.50\"\n"
        ),
    )?;
    let mut maki = Maki::new(&net.admin.home, Some(&net.nodes[0].ticket));
    maki.cwd = project.clone();
    maki.ok(&["publish", "--wait"])?;
    let out = net.admin.ok(&["dns", "sign", SITE])?;
    let ds = out
        .lines()
        .find(|l| l.starts_with(&format!("{SITE}. ")) && l.contains(" IN DS "))
        .with_context(|| format!("no DS printed:\n{out}"))?;
    let anchors = anchor_file(net.tmp.path(), ds)?;
    ensure!(
        net.admin.ok(&["dns", "ds", SITE])?.contains(ds),
        "maki dns ds prints the same DS"
    );
    for node in &net.nodes {
        let dns = node.dns.context("dns")?;
        wait_for(Duration::from_secs(10), "a DNSKEY answer", || {
            let m = ask(
                dns,
                &format!("{SITE}."),
                RecordType::DNSKEY,
                &Ask::default(),
            );
            async move { Ok(!m?.answers.is_empty()) }
        })
        .await?;
        for (name, qtype, want) in [
            (SITE.to_owned(), "A", "; fully validated"),
            (SITE.to_owned(), "SOA", "; fully validated"),
            (SITE.to_owned(), "NS", "; fully validated"),
            (format!("mail.{SITE}"), "A", "; fully validated"),
            (format!("x.apps.{SITE}"), "TXT", "; fully validated"),
            (
                format!("nope.{SITE}"),
                "A",
                "; negative response, fully validated",
            ),
            (
                SITE.to_owned(),
                "MX",
                "; negative response, fully validated",
            ),
            (
                format!("apps.{SITE}"),
                "A",
                "; negative response, fully validated",
            ),
            (
                format!("x.apps.{SITE}"),
                "A",
                "; negative response, fully validated",
            ),
            // Below a wildcard's owner: `*.apps` is the closest encloser.
            (
                format!("a.*.apps.{SITE}"),
                "TXT",
                "; negative response, fully validated",
            ),
            // The apex wildcard answers other names, never the network's
            // `_acme-challenge`, which exists (empty) outside an order.
            (format!("x.{SITE}"), "TXT", "; fully validated"),
            (
                format!("_acme-challenge.{SITE}"),
                "TXT",
                "; negative response, fully validated",
            ),
        ] {
            let out = delv(dns, &anchors, &[&name, qtype])?;
            ensure!(out.contains(want), "{name} {qtype} at {dns}:\n{out}");
        }
    }
    // A site inside the signed one: unsigned, it is an insecure
    // delegation (the zone above proves it has no DS); signed, it
    // validates through the DS the zone above serves for it.
    let blog = format!("blog.{SITE}");
    net.admin.ok(&["site", "add", &blog])?;
    net.admin.ok(&[
        "publish",
        &project.join("public").to_string_lossy(),
        "--site",
        &blog,
        "--wait",
    ])?;
    let dns = net.nodes[0].dns.context("dns")?;
    wait_for(Duration::from_secs(10), "the inner zone", || {
        let m = ask(dns, &format!("{blog}."), RecordType::A, &Ask::default());
        async move { Ok(!m?.answers.is_empty()) }
    })
    .await?;
    let out = delv(dns, &anchors, &[&blog, "A"])?;
    ensure!(out.contains("; unsigned answer"), "{out}");
    let signed = net.admin.ok(&["dns", "sign", &blog])?;
    ensure!(
        signed.contains(&format!("{blog} is inside {SITE}")) && !signed.contains(" IN DS "),
        "{signed}"
    );
    wait_for(Duration::from_secs(10), "the inner zone signed", || {
        let out = delv(dns, &anchors, &[&blog, "A"]);
        async move { Ok(out?.contains("; fully validated")) }
    })
    .await?;
    let out = delv(dns, &anchors, &[&format!("nope.{blog}"), "A"])?;
    ensure!(
        out.contains("; negative response, fully validated"),
        "{out}"
    );
    // A nameserver's name cannot become a site (it would take the name
    // from under the nameservers).
    let out = net
        .admin
        .output(&["site", "add", &format!("ns-0123456789.{SITE}")])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("nameserver's name"),
        "{out:?}"
    );
    // Signatures are served with the sets they sign, not on their own.
    let m = ask(dns, &format!("{SITE}."), RecordType::RRSIG, &Ask::default())?;
    ensure!(m.metadata.response_code == ResponseCode::NotImp, "{m:?}");

    // A DS that names another key: nothing validates.
    let forged = ds
        .replace(" 13 2 ", " 13 2 00")
        .chars()
        .take(ds.len())
        .collect::<String>();
    let wrong = anchor_file(&net.tmp.path().join("n1"), &forged)?;
    let out = delv(net.nodes[0].dns.context("dns")?, &wrong, &[SITE, "A"])?;
    ensure!(!out.contains("fully validated"), "{out}");
    Ok(())
}

/// The DS line of `zone` in `out` for the key that signs now.
fn ds_line(out: &str) -> Result<String> {
    out.lines()
        .find(|l| {
            l.starts_with(&format!("{SITE}. ")) && l.contains(" IN DS ") && !l.contains("retiring")
        })
        .map(str::to_owned)
        .with_context(|| format!("no DS printed:\n{out}"))
}

/// Removing a nameserver rolls the key it held: the new key signs at
/// once, the old one keeps signing the DNSKEY set (so resolvers that hold
/// the old DS still validate) until `maki dns retire`, after which only
/// the new DS validates. The removed node gets no copy of the new key.
#[tokio::test]
#[ignore = "needs delv (Debian package bind9-dnsutils); .ci/run installs it"]
async fn removing_a_nameserver_rolls_the_key_it_held() -> Result<()> {
    let mut net = dns_network(2, &[])?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    let old_ds = ds_line(&net.admin.ok(&["dns", "sign", SITE])?)?;
    let old_anchor = anchor_file(net.tmp.path(), &old_ds)?;
    let dns = net.nodes[0].dns.context("dns")?;
    wait_for(Duration::from_secs(10), "the zone signed", || {
        let out = delv(dns, &old_anchor, &[SITE, "A"]);
        async move { Ok(out?.contains("; fully validated")) }
    })
    .await?;

    let gone = net.nodes.pop().context("node 1")?;
    let gone_id = gone.id()?;
    gone.stop()?;
    let out = net.admin.ok(&["nodes", "remove", &gone_id])?;
    let new_ds = ds_line(&out)?;
    ensure!(new_ds != old_ds && out.contains("maki dns retire"), "{out}");
    let new_dir = net.tmp.path().join("new");
    std::fs::create_dir_all(&new_dir)?;
    let new_anchor = anchor_file(&new_dir, &new_ds)?;
    wait_for(Duration::from_secs(10), "the new key signing", || {
        let out = delv(dns, &new_anchor, &[SITE, "A"]);
        async move { Ok(out?.contains("; fully validated")) }
    })
    .await?;
    // The old DS still leads to the new key, through the DNSKEY set.
    let out = delv(dns, &old_anchor, &[SITE, "A"])?;
    ensure!(out.contains("; fully validated"), "{out}");
    let listed = net.admin.ok(&["dns", "ds", SITE])?;
    ensure!(
        listed.contains(&new_ds) && listed.contains("retiring"),
        "{listed}"
    );

    net.admin.ok(&["dns", "retire", SITE])?;
    wait_for(Duration::from_secs(10), "the old key gone", || {
        let m = ask(
            dns,
            &format!("{SITE}."),
            RecordType::DNSKEY,
            &Ask::default(),
        );
        async move { Ok(m?.answers.len() == 1) }
    })
    .await?;
    let out = delv(dns, &new_anchor, &[SITE, "A"])?;
    ensure!(out.contains("; fully validated"), "{out}");
    let out = delv(dns, &old_anchor, &[SITE, "A"])?;
    ensure!(
        !out.contains("fully validated"),
        "the old DS still validates:\n{out}"
    );
    Ok(())
}

/// `makiatto geoip install` of `url`, with `env`: whether it worked, and
/// what it printed.
fn geoip_install_url(
    data: &std::path::Path,
    url: &str,
    env: &[(&str, &std::path::Path)],
) -> Result<(bool, String)> {
    let mut cmd = std::process::Command::new(maki_e2e::bins()?.makiatto);
    cmd.args(["geoip", "install", "--data-dir"])
        .arg(data)
        .arg(url);
    cmd.env_remove("SSL_CERT_FILE").env_remove("SSL_CERT_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// A database downloads over HTTPS (gzipped, as DB-IP serves it), from a
/// real TLS server (`openssl s_server`) whose certificate the system
/// trusts (here: through SSL_CERT_FILE); an untrusted certificate and
/// plain http are refused, and nothing is installed by them.
#[tokio::test]
#[ignore = "needs openssl (Debian package openssl) to serve HTTPS; .ci/run installs it"]
async fn geoip_install_downloads_over_https() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www)?;
    geo_database(&www.join("city.mmdb"))?;
    let gz = std::process::Command::new("gzip")
        .arg("-k")
        .arg(www.join("city.mmdb"))
        .status()?;
    ensure!(gz.success(), "gzip");
    // A CA the test trusts, and the server's certificate from it.
    let p = |name: &str| tmp.path().join(name);
    let (ca, ca_key, cert, key) = (p("ca.pem"), p("ca.key"), p("cert.pem"), p("key.pem"));
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    let openssl = |args: &[&std::ffi::OsStr]| -> Result<()> {
        let out = std::process::Command::new("openssl").args(args).output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let ec = [
        os("-newkey"),
        os("ec"),
        os("-pkeyopt"),
        os("ec_paramgen_curve:P-256"),
        os("-nodes"),
    ];
    openssl(
        &[
            &[os("req"), os("-x509")],
            &ec[..],
            &[os("-days"), os("1"), os("-subj"), os("/CN=test CA")],
            &[
                os("-keyout"),
                ca_key.as_os_str(),
                os("-out"),
                ca.as_os_str(),
            ],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &[os("req")],
            &ec[..],
            &[os("-subj"), os("/CN=localhost")],
            &[
                os("-keyout"),
                key.as_os_str(),
                os("-out"),
                p("leaf.csr").as_os_str(),
            ],
        ]
        .concat(),
    )?;
    openssl(&[
        os("x509"),
        os("-req"),
        os("-days"),
        os("1"),
        os("-in"),
        p("leaf.csr").as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-extfile"),
        p("leaf.ext").as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-WWW", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .current_dir(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = async {
        wait_for(Duration::from_secs(10), "the TLS server", || async {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })
        .await?;
        let data = tmp.path().join("data");
        let url = format!("https://localhost:{port}/city.mmdb.gz");
        let (ok, out) = geoip_install_url(&data, &url, &[])?;
        ensure!(
            !ok && out.contains("certificate"),
            "an untrusted server: {out}"
        );
        let (ok, out) = geoip_install_url(&data, &url.replace("https", "http"), &[])?;
        ensure!(!ok && out.contains("only https://"), "{out}");
        ensure!(
            !data.join("geoip").join("v6.mmdb").exists(),
            "installed by a refusal"
        );
        let (ok, out) = geoip_install_url(&data, &url, &[("SSL_CERT_FILE", &ca)])?;
        ensure!(ok && out.contains("installed"), "{out}");
        ensure!(
            std::fs::read(data.join("geoip").join("v6.mmdb"))?
                == std::fs::read(www.join("city.mmdb"))?,
            "the unpacked database is the served one"
        );
        anyhow::Ok(())
    }
    .await;
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// A nameserver that joins after a site was signed holds no copy of its
/// keys: it answers validating resolvers SERVFAIL (they ask another) and
/// the others as before, `maki dns ds` says which one lacks them, and
/// `maki dns sign` again hands it a copy.
#[tokio::test]
#[ignore = "needs delv (Debian package bind9-dnsutils); .ci/run installs it"]
async fn a_nameserver_that_joins_after_signing_gets_the_keys_on_the_next_sign() -> Result<()> {
    let mut net = dns_network(1, &[])?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    let anchors = anchor_file(
        net.tmp.path(),
        &ds_line(&net.admin.ok(&["dns", "sign", SITE])?)?,
    )?;

    let ticket = net.admin.ok(&["invite"])?.trim().to_owned();
    let dir = net.tmp.path().join("late");
    NodeProc::join(&dir, &ticket)?.stop()?;
    set_config(&dir, "roles", r#"["http", "dns"]"#)?;
    set_config(&dir, "dns", r#""127.0.0.1:0""#)?;
    set_config(&dir, "public_ips", r#"["192.0.2.9"]"#)?;
    net.nodes.push(NodeProc::start(&dir)?);
    let late = net.nodes[1].dns.context("dns")?;
    wait_for(
        Duration::from_secs(20),
        "the late nameserver's zone",
        || {
            let m = ask(late, SITE, RecordType::SOA, &Ask::default());
            async move { Ok(m.is_ok_and(|m| !m.answers.is_empty())) }
        },
    )
    .await?;
    let validating = Ask {
        dnssec: true,
        ..Ask::default()
    };
    let m = ask(late, SITE, RecordType::SOA, &validating)?;
    ensure!(m.metadata.response_code == ResponseCode::ServFail, "{m:?}");
    let err = String::from_utf8(net.admin.output(&["dns", "ds", SITE])?.stderr)?;
    ensure!(err.contains("holds no copy"), "{err}");

    net.admin.ok(&["dns", "sign", SITE])?;
    wait_for(
        Duration::from_secs(10),
        "the late nameserver signing",
        || {
            let out = delv(late, &anchors, &[SITE, "SOA"]);
            async move { Ok(out?.contains("; fully validated")) }
        },
    )
    .await?;
    let err = String::from_utf8(net.admin.output(&["dns", "ds", SITE])?.stderr)?;
    ensure!(!err.contains("holds no copy"), "{err}");

    // Removing a nameserver that holds no copy leaves the keys alone.
    let ds = net.admin.ok(&["dns", "ds", SITE])?;
    let ticket = net.admin.ok(&["invite"])?.trim().to_owned();
    let dir = net.tmp.path().join("later");
    NodeProc::join(&dir, &ticket)?.stop()?;
    set_config(&dir, "roles", r#"["http", "dns"]"#)?;
    set_config(&dir, "dns", r#""127.0.0.1:0""#)?;
    set_config(&dir, "public_ips", r#"["192.0.2.10"]"#)?;
    let later = NodeProc::start(&dir)?;
    let later_id = later.id()?;
    wait_for(Duration::from_secs(20), "the later node listed", || {
        let out = net.admin.ok(&["nodes"]);
        let id = later_id.clone();
        async move { Ok(out?.contains(&id[..10])) }
    })
    .await?;
    let out = net.admin.ok(&["nodes", "remove", &later_id])?;
    later.stop()?;
    ensure!(
        out.contains("It was a nameserver") && !out.contains("has a new one"),
        "{out}"
    );
    ensure!(
        net.admin.ok(&["dns", "ds", SITE])? == ds,
        "the keys changed"
    );
    Ok(())
}

/// A resolver that holds the DNSKEY set from before a roll keeps
/// validating through it: the old key signs beside the new one until the
/// set's TTL has passed twice.
#[tokio::test]
#[ignore = "needs unbound and dig (Debian packages unbound, dnsutils); .ci/run installs them"]
async fn a_resolver_holding_the_old_keys_keeps_validating_across_a_roll() -> Result<()> {
    let net = dns_network(1, &[])?;
    net.admin.ok(&["site", "add", SITE])?;
    publish_example(&net)?;
    let ds = ds_line(&net.admin.ok(&["dns", "sign", SITE])?)?;
    let dns = net.nodes[0].dns.context("dns")?;
    wait_for(Duration::from_secs(10), "the zone signed", || {
        let m = ask(
            dns,
            &format!("{SITE}."),
            RecordType::DNSKEY,
            &Ask::default(),
        );
        async move { Ok(m.is_ok_and(|m| !m.answers.is_empty())) }
    })
    .await?;
    let (mut resolver, port) = validating_unbound(net.tmp.path(), SITE, dns, &ds)?;
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let result = async {
        // The AD flag: the resolver validated what it passes on.
        let authenticated = |out: &str| {
            out.lines()
                .find(|l| l.contains(";; flags:"))
                .is_some_and(|l| {
                    l.split(';')
                        .nth(2)
                        .is_some_and(|f| f.split_whitespace().any(|x| x == "ad"))
                })
        };
        wait_for(Duration::from_secs(10), "a validated answer", || {
            let out = dig(at, &["+rec", "+dnssec", &format!("nope.{SITE}"), "TXT"]);
            async move { Ok(out.is_ok_and(|o| authenticated(&o))) }
        })
        .await
        .with_context(|| {
            std::fs::read_to_string(net.tmp.path().join("unbound.log")).unwrap_or_default()
        })?;
        net.admin.ok(&["dns", "roll", SITE])?;
        // Until the new record reaches the nameserver, then after: every
        // answer the resolver gets validates with the set it holds.
        for i in 0..20 {
            let name = format!("after-roll-{i}.{SITE}");
            let out = dig(at, &["+rec", "+dnssec", &name, "TXT"])?;
            ensure!(
                out.contains("status: NXDOMAIN") && out.contains(" ad"),
                "{name}:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        anyhow::Ok(())
    }
    .await;
    resolver.kill().ok();
    resolver.wait().ok();
    result
}
