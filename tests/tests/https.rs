//! HTTPS: the edge over TLS, against the real binaries.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use maki_e2e::{Trust, https_get, https_get_with, one_site, wait_for};

const SITE: &str = "tls.test";

#[tokio::test]
async fn a_site_without_a_certificate_is_served_over_https_with_a_self_signed_one() -> Result<()> {
    let (net, site) = one_site(SITE)?;
    net.admin
        .ok(&["site", "alias", "add", SITE, "www.tls.test"])?;
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
