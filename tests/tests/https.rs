//! HTTPS: the edge over TLS, against the real binaries.

use std::time::Duration;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use maki_e2e::{
    Maki, NodeProc, Trust, fresh_network, https_get, https_get_with, one_site, wait_for,
};
use rustls::pki_types::CertificateDer;

const SITE: &str = "tls.test";

/// A site that asks for HSTS (`_headers`).
const HSTS_RULE: &str = "/*\n  Strict-Transport-Security: max-age=300\n";

#[tokio::test]
async fn a_site_without_a_certificate_is_served_over_https_with_a_self_signed_one() -> Result<()> {
    let (net, site) = one_site(SITE)?;
    net.admin
        .ok(&["site", "alias", "add", SITE, "www.tls.test"])?;
    std::fs::write(site.join("_headers"), HSTS_RULE)?;
    // A file where ACME's HTTP-01 asks: the network's path, never served.
    std::fs::create_dir_all(site.join(".well-known/acme-challenge"))?;
    std::fs::write(site.join(".well-known/acme-challenge/mine"), "proof")?;
    net.admin
        .ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    let index = std::fs::read(site.join("index.html"))?;
    let https = net.node.https;
    wait_for(
        Duration::from_secs(10),
        "the site over HTTPS",
        || async move {
            Ok(https_get(https, SITE, "/", &["http/1.1"], &Trust::Any)
                .await
                .is_ok_and(|r| r.reply.status == 200))
        },
    )
    .await?;
    for host in [SITE, "www.tls.test"] {
        for (alpn, want) in [
            (&["h2", "http/1.1"][..], "h2"),
            (&["http/1.1"][..], "http/1.1"),
        ] {
            let got = https_get(https, host, "/", alpn, &Trust::Any).await?;
            ensure!(
                got.reply.status == 200,
                "{host} {want}: {}",
                got.reply.status
            );
            ensure!(got.reply.body == index, "{host} {want}: the site's index");
            ensure!(got.alpn.as_deref() == Some(want), "{host}: {:?}", got.alpn);
            // The certificate names the host: trusted as its own root, it
            // verifies for that name (and only for it).
            let own = got.chain.first().context("a certificate")?.clone();
            let pinned = Trust::Roots(vec![own]);
            https_get(https, host, "/", alpn, &pinned)
                .await
                .with_context(|| format!("{host}'s certificate names it"))?;
        }
    }
    // TLS 1.3, and 1.2 for older clients.
    let got = https_get(https, SITE, "/", &["h2"], &Trust::Any).await?;
    ensure!(got.version == Some(rustls::ProtocolVersion::TLSv1_3));
    for alpn in [&["h2"][..], &["http/1.1"][..]] {
        let tls12 = &[&rustls::version::TLS12];
        let got = https_get_with(https, SITE, "/", alpn, &Trust::Any, tls12).await?;
        ensure!(got.version == Some(rustls::ProtocolVersion::TLSv1_2));
        ensure!(got.reply.body == index, "over TLS 1.2, {alpn:?}");
    }
    // No HSTS after a self-signed certificate (a browser could never
    // come back), and no redirect from plain HTTP.
    ensure!(got.reply.header("strict-transport-security").is_none());
    let plain = maki_e2e::http_get(net.node.http, SITE, "/", &[]).await?;
    ensure!(plain.status == 200, "{}", plain.status);
    ensure!(plain.header("strict-transport-security").is_none());
    let challenge =
        maki_e2e::http_get(net.node.http, SITE, "/.well-known/acme-challenge/mine", &[]).await?;
    ensure!(challenge.status == 404, "{}", challenge.status);
    // A name no site has gets no certificate: the handshake fails.
    let unknown = https_get(https, "other.test", "/", &["http/1.1"], &Trust::Any).await;
    ensure!(unknown.is_err(), "a name no site has: {unknown:?}");
    // Plain HTTP goes on as before.
    let plain = maki_e2e::body_of(net.node.http, SITE, "/")
        .await
        .context("plain HTTP")?;
    ensure!(plain == index);
    Ok(())
}

/// A date: year, month, day.
type Ymd = (i32, u8, u8);

/// A test CA and what it signs.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "makiatto test CA");
        let der = params.self_signed(&key)?.der().clone();
        Ok(Self {
            issuer: rcgen::Issuer::new(params, key),
            der,
        })
    }

    /// A leaf for `names` and its key (PKCS#8 DER).
    fn leaf(&self, names: &[&str]) -> Result<(CertificateDer<'static>, Vec<u8>)> {
        self.leaf_for(names, None)
    }

    /// A leaf valid only between the two dates.
    fn leaf_for(
        &self,
        names: &[&str],
        valid: Option<(Ymd, Ymd)>,
    ) -> Result<(CertificateDer<'static>, Vec<u8>)> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        if let Some(((y0, m0, d0), (y1, m1, d1))) = valid {
            params.not_before = rcgen::date_time_ymd(y0, m0, d0);
            params.not_after = rcgen::date_time_ymd(y1, m1, d1);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.der().clone(), key.serialize_der()))
    }
}

use maki_e2e::pebble::pem;

#[tokio::test]
async fn an_uploaded_certificate_is_served_by_every_node_and_verifies_with_its_ca() -> Result<()> {
    let ca = Ca::new()?;
    let fresh = fresh_network()?;
    let ca_file = fresh.tmp.path().join("ca.pem");
    std::fs::write(&ca_file, pem("CERTIFICATE", &ca.der))?;
    // The nodes trust the test CA as the system's roots.
    let env: &[(&str, &Path)] = &[("SSL_CERT_FILE", &ca_file)];
    let mut nodes = vec![NodeProc::start_with_env(&fresh.data, env)?];
    let admin = Maki::new(&fresh.admin.home, Some(&nodes[0].ticket));
    let ticket = admin.ok(&["invite"])?.trim().to_owned();
    let dir = fresh.tmp.path().join("n1");
    NodeProc::join(&dir, &ticket)?.stop()?;
    nodes.push(NodeProc::start_with_env(&dir, env)?);

    admin.ok(&["site", "add", SITE, "--alias", "www.tls.test"])?;
    let site = fresh.tmp.path().join("site");
    maki_e2e::copy_dir(&maki_e2e::example_site(), &site)?;
    std::fs::write(site.join("_headers"), HSTS_RULE)?;
    admin.ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    let index = std::fs::read(site.join("index.html"))?;

    let listed = admin.ok(&["sites"])?;
    ensure!(listed.contains("certificate self-signed"), "{listed}");
    let (leaf, key) = ca.leaf(&[SITE, "www.tls.test"])?;
    let files = |name: &str| fresh.tmp.path().join(name);
    std::fs::write(files("chain.pem"), pem("CERTIFICATE", &leaf))?;
    std::fs::write(files("key.pem"), pem("PRIVATE KEY", &key))?;
    let chain = files("chain.pem").to_string_lossy().into_owned();
    let key_file = files("key.pem").to_string_lossy().into_owned();
    let out = admin.ok(&["cert", "set", SITE, "--cert", &chain, "--key", &key_file])?;
    ensure!(out.contains("tls.test, www.tls.test"), "{out}");
    let listed = admin.ok(&["sites"])?;
    ensure!(
        listed
            .contains("certificate uploaded from makiatto test CA for tls.test,www.tls.test until")
            && !listed.contains("NOT SERVED"),
        "{listed}"
    );

    // Every node serves it, and a client that trusts only the CA accepts it.
    let trust = Trust::Roots(vec![ca.der.clone()]);
    for node in &nodes {
        for host in [SITE, "www.tls.test"] {
            let https = node.https;
            let trust = trust.clone();
            wait_for(
                Duration::from_secs(10),
                "the CA's certificate served",
                || {
                    let trust = trust.clone();
                    async move {
                        Ok(https_get(https, host, "/", &["h2"], &trust)
                            .await
                            .is_ok_and(|r| r.reply.status == 200))
                    }
                },
            )
            .await?;
            let got = https_get(https, host, "/", &["h2", "http/1.1"], &trust).await?;
            ensure!(got.reply.body == index && got.alpn.as_deref() == Some("h2"));
            ensure!(
                got.chain.first() == Some(&leaf),
                "{host}: the uploaded leaf"
            );
            // HSTS, as the site asks, now that it holds.
            ensure!(
                got.reply.header("strict-transport-security") == Some("max-age=300"),
                "{:?}",
                got.reply.headers
            );
            // Plain HTTP moves to HTTPS, except ACME's HTTP-01 path.
            let moved = maki_e2e::http_get(node.http, host, "/a/b?x=1", &[]).await?;
            let want = format!("https://{host}:{}/a/b?x=1", https.port());
            ensure!(moved.status == 301, "{}", moved.status);
            ensure!(
                moved.header("location") == Some(want.as_str()),
                "{:?}",
                moved.headers
            );
            let acme =
                maki_e2e::http_get(node.http, host, "/.well-known/acme-challenge/t", &[]).await?;
            ensure!(acme.status != 301, "HTTP-01 stays on port 80");
        }
    }

    // A node that joins gets a copy of the key from a node that holds
    // one (resealed, signed as a member), with no new upload.
    let ticket = admin.ok(&["invite"])?.trim().to_owned();
    let dir = fresh.tmp.path().join("n2");
    NodeProc::join(&dir, &ticket)?.stop()?;
    nodes.push(NodeProc::start_with_env(&dir, env)?);
    let https = nodes[2].https;
    wait_for(Duration::from_secs(15), "the new node serves it", || {
        let (trust, leaf) = (trust.clone(), leaf.clone());
        async move {
            Ok(https_get(https, SITE, "/", &["h2"], &trust)
                .await
                .is_ok_and(|r| r.chain.first() == Some(&leaf)))
        }
    })
    .await?;
    let http = nodes[0].http;
    wait_for(
        Duration::from_secs(10),
        "the redirect, every node holding the key",
        || async move { Ok(maki_e2e::http_get(http, SITE, "/", &[]).await?.status == 301) },
    )
    .await?;

    // Signed is not honest: what the record claims is checked, and a
    // refused upload changes nothing.
    let set = |cert: &[u8], key: &[u8]| -> Result<String> {
        std::fs::write(files("bad.pem"), pem("CERTIFICATE", cert))?;
        std::fs::write(files("bad.key"), pem("PRIVATE KEY", key))?;
        admin.fails(&[
            "cert",
            "set",
            SITE,
            "--cert",
            &files("bad.pem").to_string_lossy(),
            "--key",
            &files("bad.key").to_string_lossy(),
        ])
    };
    // Not from a root the nodes trust.
    let other = Ca::new()?;
    let (stranger, stranger_key) = other.leaf(&[SITE])?;
    let err = set(&stranger, &stranger_key)?;
    ensure!(err.contains("not valid for tls.test"), "{err}");
    // Another certificate's key.
    let (_, wrong_key) = ca.leaf(&[SITE])?;
    let err = set(&leaf, &wrong_key)?;
    ensure!(err.contains("the key is not the certificate's"), "{err}");
    // For another tenant's name only.
    let (foreign, foreign_key) = ca.leaf(&["other.test"])?;
    let err = set(&foreign, &foreign_key)?;
    ensure!(err.contains("none of tls.test's names"), "{err}");
    // Expired, and not valid yet: from the right CA, for the right name.
    let (expired, expired_key) = ca.leaf_for(&[SITE], Some(((2020, 1, 1), (2021, 1, 1))))?;
    let err = set(&expired, &expired_key)?;
    ensure!(err.contains("expired"), "{err}");
    let (early, early_key) = ca.leaf_for(&[SITE], Some(((2090, 1, 1), (2091, 1, 1))))?;
    let err = set(&early, &early_key)?;
    ensure!(err.contains("not valid yet"), "{err}");
    let got = https_get(nodes[1].https, SITE, "/", &["h2"], &trust).await?;
    ensure!(
        got.chain.first() == Some(&leaf),
        "the good certificate stays"
    );
    Ok(())
}

#[tokio::test]
async fn the_acme_settings_extra_root_is_trusted_for_uploads() -> Result<()> {
    let ca = Ca::new()?;
    let (net, site) = one_site(SITE)?;
    net.admin
        .ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    let files = |name: &str| net.tmp.path().join(name);
    std::fs::write(files("ca.pem"), pem("CERTIFICATE", &ca.der))?;
    let (leaf, key) = ca.leaf(&[SITE])?;
    std::fs::write(files("chain.pem"), pem("CERTIFICATE", &leaf))?;
    std::fs::write(files("key.pem"), pem("PRIVATE KEY", &key))?;
    let path = |name: &str| files(name).to_string_lossy().into_owned();
    let upload = [
        "cert",
        "set",
        SITE,
        "--cert",
        &path("chain.pem"),
        "--key",
        &path("key.pem"),
    ];
    // The node does not know the CA yet.
    let err = net.admin.fails(&upload)?;
    ensure!(err.contains("not valid for tls.test"), "{err}");
    // An admin names it the network's extra root.
    let acme = [
        "acme",
        "set",
        "--directory",
        "https://ca.test/dir",
        "--root",
        &path("ca.pem"),
    ];
    net.admin.ok(&acme)?;
    net.admin.ok(&upload)?;
    let trust = Trust::Roots(vec![ca.der.clone()]);
    let https = net.node.https;
    wait_for(Duration::from_secs(10), "the certificate served", || {
        let (trust, leaf) = (trust.clone(), leaf.clone());
        async move {
            Ok(https_get(https, SITE, "/", &["h2"], &trust)
                .await
                .is_ok_and(|r| r.chain.first() == Some(&leaf)))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_visitor_resumes_at_another_node_with_the_ticket_one_gave() -> Result<()> {
    let net = maki_e2e::network(2)?;
    net.admin.ok(&["site", "add", SITE])?;
    let site = net.tmp.path().join("site");
    maki_e2e::copy_dir(&maki_e2e::example_site(), &site)?;
    net.admin
        .ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    let (a, b) = (net.nodes[0].https, net.nodes[1].https);
    for (versions, name) in [
        (&[&rustls::version::TLS13][..], "TLS 1.3"),
        (&[&rustls::version::TLS12][..], "TLS 1.2"),
    ] {
        // Both nodes get the network's ticket secret shortly after the
        // second joins; until then each seals tickets with its own keys.
        wait_for(
            Duration::from_secs(20),
            &format!("{name}: a ticket from one node resumed at the other"),
            || async move {
                // Node b may not serve the site yet: its handshake fails.
                // A request that fails on a loaded machine (a timeout) is
                // tried again, not the end of the test.
                let config = maki_e2e::client_config(&["h2"], &Trust::Any, versions)?;
                let Ok(first) = maki_e2e::https_get_on(&config, a, SITE, "/").await else {
                    return Ok(false);
                };
                ensure!(first.reply.status == 200 && !first.resumed);
                let second = maki_e2e::https_get_on(&config, b, SITE, "/").await;
                Ok(second.is_ok_and(|r| r.reply.status == 200 && r.resumed))
            },
        )
        .await?;
    }
    // A node removed: the secret it held is replaced, and a ticket sealed
    // with the old one no longer resumes.
    let config = maki_e2e::client_config(&["h2"], &Trust::Any, &[&rustls::version::TLS13])?;
    maki_e2e::https_get_on(&config, a, SITE, "/").await?;
    let mut net = net;
    net.add_node()?;
    let node = net.nodes.pop().context("the third node")?;
    // It holds the secret once a ticket of node 0 resumes there.
    let c = node.https;
    wait_for(
        Duration::from_secs(20),
        "the third node resumes",
        || async move {
            let config = maki_e2e::client_config(&["h2"], &Trust::Any, &[&rustls::version::TLS13])?;
            if maki_e2e::https_get_on(&config, a, SITE, "/").await.is_err() {
                return Ok(false);
            }
            let third = maki_e2e::https_get_on(&config, c, SITE, "/").await;
            Ok(third.is_ok_and(|r| r.resumed))
        },
    )
    .await?;
    let id = node.id()?;
    node.stop()?;
    net.admin.ok(&["nodes", "remove", &id])?;
    wait_for(Duration::from_secs(20), "the old ticket refused", || {
        let config = config.clone();
        async move {
            let again = maki_e2e::https_get_on(&config, b, SITE, "/").await;
            Ok(again.is_ok_and(|r| !r.resumed))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn http3_serves_the_same_bytes_and_https_advertises_it() -> Result<()> {
    let fresh = fresh_network()?;
    maki_e2e::set_config(&fresh.data, "http3", "true")?;
    let node = NodeProc::start(&fresh.data)?;
    let admin = Maki::new(&fresh.admin.home, Some(&node.ticket));
    admin.ok(&["site", "add", SITE])?;
    let site = fresh.tmp.path().join("site");
    maki_e2e::copy_dir(&maki_e2e::example_site(), &site)?;
    admin.ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    let index = std::fs::read(site.join("index.html"))?;
    let https = node.https;
    // HTTPS says where HTTP/3 is: the same port, over UDP.
    let got = https_get(https, SITE, "/", &["h2"], &Trust::Any).await?;
    let alt = got.reply.header("alt-svc").unwrap_or_default().to_owned();
    ensure!(
        alt == format!("h3=\":{}\"; ma=86400", https.port()),
        "{alt:?}"
    );
    let reply = maki_e2e::h3_get(https, SITE, "/", &Trust::Any).await?;
    ensure!(reply.status == 200, "{}", reply.status);
    ensure!(reply.body == index, "the site's index over HTTP/3");
    ensure!(reply.header("alt-svc").is_some());
    // A missing file, and a name no site has (no certificate: no QUIC).
    let missing = maki_e2e::h3_get(https, SITE, "/nope", &Trust::Any).await?;
    ensure!(missing.status == 404, "{}", missing.status);
    ensure!(
        maki_e2e::h3_get(https, "other.test", "/", &Trust::Any)
            .await
            .is_err()
    );
    // Without the setting, no Alt-Svc.
    let (plain, dir) = maki_e2e::one_site("plain.test")?;
    plain.admin.ok(&[
        "publish",
        &dir.to_string_lossy(),
        "--site",
        "plain.test",
        "--wait",
    ])?;
    let got = https_get(plain.node.https, "plain.test", "/", &["h2"], &Trust::Any).await?;
    ensure!(got.reply.status == 200 && got.reply.header("alt-svc").is_none());
    Ok(())
}

/// Over HTTP/2, bodies of up to 2 KiB go in pieces small enough for h2
/// to copy them into its write buffer, so several responses share one
/// write (bench/https.sh): every size around the cuts arrives whole, over
/// TLS 1.3 and 1.2.
#[tokio::test]
async fn bodies_of_every_size_arrive_whole_over_h2() -> Result<()> {
    let (net, site) = one_site(SITE)?;
    let sizes = [
        1usize, 254, 255, 256, 510, 1024, 2047, 2048, 2049, 4096, 70_000,
    ];
    for n in sizes {
        let body: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        std::fs::write(site.join(format!("{n}.bin")), body)?;
    }
    net.admin
        .ok(&["publish", &site.to_string_lossy(), "--site", SITE, "--wait"])?;
    let https = net.node.https;
    for n in sizes {
        let path = format!("/{n}.bin");
        let want: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
        for versions in [rustls::DEFAULT_VERSIONS, &[&rustls::version::TLS12]] {
            let got = https_get_with(https, SITE, &path, &["h2"], &Trust::Any, versions).await?;
            ensure!(got.alpn.as_deref() == Some("h2"));
            ensure!(got.reply.status == 200, "{path}: {}", got.reply.status);
            ensure!(
                got.reply.body == want,
                "{path}: {} bytes, not the {n} published",
                got.reply.body.len()
            );
        }
    }
    Ok(())
}
