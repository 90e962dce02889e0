//! One site, one table: the serving rules no other test exercises (200
//! rewrites, `! Name` removals, values joined from several `_headers`
//! rules, If-Range, Range with Accept-Encoding, If-None-Match on the 404
//! page, Vary, q-values), each asked over HTTP/1.1 (the lean path) and
//! HTTP/2 (hyper), which must answer alike.

use anyhow::{Context, Result, ensure};
use maki_e2e::{one_site, request};

const SITE: &str = "table.test";

/// What a row expects of a response.
#[derive(Debug, Default)]
struct Want {
    status: u16,
    /// (header, value); a value of "" means the header must be absent.
    headers: &'static [(&'static str, &'static str)],
    /// The body must be this file of the site (None: not checked).
    body_of: Option<&'static str>,
    /// The body must be this byte range of that file.
    range: Option<(usize, usize)>,
}

struct Row {
    what: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    want: Want,
}

#[tokio::test]
async fn serving_rules_table() -> Result<()> {
    let (net, site) = one_site(SITE)?;
    // Compressible pages over 256 bytes get br and gzip variants.
    let page = |title: &str| format!("<h1>{title}</h1>{}", "<p>lorem ipsum</p>".repeat(40));
    std::fs::write(site.join("index.html"), page("home"))?;
    std::fs::write(site.join("app.html"), page("app shell"))?;
    std::fs::create_dir_all(site.join("docs"))?;
    std::fs::write(site.join("docs/guide.html"), page("guide"))?;
    std::fs::write(site.join("404.html"), page("not here"))?;
    std::fs::write(site.join("data.bin"), [7u8; 1000])?;
    std::fs::write(
        site.join("_headers"),
        "/*\n  X-Frame-Options: DENY\n  X-Tag: a\n/docs/*\n  X-Tag: b\n  ! X-Frame-Options\n",
    )?;
    std::fs::write(
        site.join("_redirects"),
        "/app/* /app.html 200\n/old /docs/guide.html 301\n",
    )?;
    net.admin
        .ok(&["publish", &site.to_string_lossy(), "--site", SITE])?;

    let etag_of = |file: &str| -> Result<String> {
        Ok(format!(
            "\"{}\"",
            blake3::hash(&std::fs::read(site.join(file))?).to_hex()
        ))
    };
    let index_etag = etag_of("index.html")?;
    let notfound_etag = etag_of("404.html")?;
    let h = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    };

    let rows = vec![
        Row {
            what: "a 200 rewrite serves the target, not a redirect",
            path: "/app/deep/link",
            headers: vec![],
            want: Want {
                status: 200,
                headers: &[("location", "")],
                body_of: Some("app.html"),
                ..Want::default()
            },
        },
        Row {
            what: "values from several rules are joined; `! Name` removes one",
            path: "/docs/guide.html",
            headers: vec![],
            want: Want {
                status: 200,
                headers: &[("x-tag", "a, b"), ("x-frame-options", "")],
                body_of: Some("docs/guide.html"),
                ..Want::default()
            },
        },
        Row {
            what: "outside /docs the header stays",
            path: "/",
            headers: vec![],
            want: Want {
                status: 200,
                headers: &[("x-tag", "a"), ("x-frame-options", "DENY")],
                ..Want::default()
            },
        },
        Row {
            what: "If-Range with the current ETag: the range",
            path: "/",
            headers: h(&[("range", "bytes=0-9"), ("if-range", &index_etag)]),
            want: Want {
                status: 206,
                body_of: Some("index.html"),
                range: Some((0, 10)),
                ..Want::default()
            },
        },
        Row {
            what: "If-Range with another ETag: the whole body",
            path: "/",
            headers: h(&[("range", "bytes=0-9"), ("if-range", "\"stale\"")]),
            want: Want {
                status: 200,
                body_of: Some("index.html"),
                ..Want::default()
            },
        },
        Row {
            what: "Range with Accept-Encoding: identity bytes, no coding",
            path: "/",
            headers: h(&[("range", "bytes=4-13"), ("accept-encoding", "br, gzip")]),
            want: Want {
                status: 206,
                headers: &[("content-encoding", "")],
                body_of: Some("index.html"),
                range: Some((4, 14)),
            },
        },
        Row {
            what: "If-None-Match on the 404 page is ignored (not 2xx)",
            path: "/nope",
            headers: h(&[("if-none-match", &notfound_etag)]),
            want: Want {
                status: 404,
                body_of: Some("404.html"),
                ..Want::default()
            },
        },
        Row {
            what: "Vary where variants exist",
            path: "/",
            headers: vec![],
            want: Want {
                status: 200,
                headers: &[("vary", "Accept-Encoding")],
                ..Want::default()
            },
        },
        Row {
            what: "no Vary where none exist",
            path: "/data.bin",
            headers: h(&[("accept-encoding", "br")]),
            want: Want {
                status: 200,
                headers: &[("vary", ""), ("content-encoding", "")],
                ..Want::default()
            },
        },
        Row {
            what: "q=0 excludes br",
            path: "/",
            headers: h(&[("accept-encoding", "br;q=0, gzip")]),
            want: Want {
                status: 200,
                headers: &[("content-encoding", "gzip")],
                ..Want::default()
            },
        },
        Row {
            what: "the higher q wins",
            path: "/",
            headers: h(&[("accept-encoding", "br;q=0.1, gzip;q=0.9")]),
            want: Want {
                status: 200,
                headers: &[("content-encoding", "gzip")],
                ..Want::default()
            },
        },
        Row {
            what: "equal q: br first",
            path: "/",
            headers: h(&[("accept-encoding", "gzip;q=0.5, br;q=0.5")]),
            want: Want {
                status: 200,
                headers: &[("content-encoding", "br")],
                ..Want::default()
            },
        },
        Row {
            what: "identity only",
            path: "/",
            headers: h(&[("accept-encoding", "identity")]),
            want: Want {
                status: 200,
                headers: &[("content-encoding", "")],
                body_of: Some("index.html"),
                ..Want::default()
            },
        },
        Row {
            what: "a 301 rule",
            path: "/old",
            headers: vec![],
            want: Want {
                status: 301,
                headers: &[("location", "/docs/guide.html")],
                ..Want::default()
            },
        },
    ];

    for h2 in [false, true] {
        for row in &rows {
            let headers: Vec<(&str, &str)> =
                row.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = request(net.node.http, "GET", SITE, row.path, &headers, h2)
                .await
                .with_context(|| row.what)?;
            let ctx = format!("{} (h2={h2}): {} {:?}", row.what, r.status, r.headers);
            ensure!(r.status == row.want.status, "{ctx}");
            for (name, value) in row.want.headers {
                if value.is_empty() {
                    ensure!(r.header(name).is_none(), "{name} present: {ctx}");
                } else {
                    ensure!(r.header(name) == Some(*value), "{name}: {ctx}");
                }
            }
            if let Some(file) = row.want.body_of {
                let bytes = std::fs::read(site.join(file))?;
                let want = match row.want.range {
                    Some((a, b)) => &bytes[a..b],
                    None => &bytes[..],
                };
                ensure!(r.body[..] == *want, "body: {ctx}");
            }
        }
    }
    Ok(())
}
