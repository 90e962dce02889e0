//! The site logic behind every transport: Host → the site's live version
//! → rules → a static blob (later also functions, transformers and
//! fetch-on-miss). Transports (the lean HTTP/1.1 path, hyper's h1/h2, and
//! later TLS and h3) only parse a request into a [`Req`] and call
//! [`handle`].

use std::{io, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use maki_protocol::{
    Encoding, Hash,
    rules::{HeaderRule, is_reserved_header},
};
use tracing::warn;

use super::{Body, Req, Sites, local};
use crate::{
    content::{BlobFile, Complete, Content, ContentError},
    live::{LiveSite, Served},
};

const BLOB_PREFIX: &str = "/.maki/blob/";
const DEFAULT_CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";
const BLOB_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Answers one GET or HEAD. Never fails: every problem is a status code.
/// The body is the GET body even for HEAD; the caller drops it after
/// taking its length.
pub async fn handle(sites: &Sites, req: &Req<'_>) -> Response<Body> {
    let Some(path) = decode_path(req.path) else {
        return plain(StatusCode::BAD_REQUEST, "malformed path\n");
    };
    if let Some(hash) = path.strip_prefix(BLOB_PREFIX) {
        return serve_blob(sites, hash, req).await;
    }
    let host = req.host.map(bare_host);
    // Answered whether or not this node holds the site (it may not be
    // published yet, or be pinned elsewhere): the CA asks whichever node
    // the name leads to.
    if let (Some(token), Some(host), Some(certs)) =
        (path.strip_prefix(ACME_CHALLENGE), host, &sites.certs)
        && let Some(proof) = certs.challenge(host, token)
    {
        return plain(StatusCode::OK, proof);
    }
    // The path is the network's, for its own orders: a site's files or
    // redirects there would let its publisher prove the site's names to
    // a CA with an account of their own.
    if path.starts_with(ACME_CHALLENGE) && sites.certs.is_some() {
        return plain(StatusCode::NOT_FOUND, "no such ACME challenge\n");
    }
    match host.and_then(|h| local::site(&sites.live, h)) {
        Some(site) => {
            // Plain HTTP goes to HTTPS once every HTTPS node serves the
            // site's certificate, except what an ACME CA asks for on port
            // 80 (HTTP-01).
            let certified = host.is_some_and(|h| certified(sites, h));
            if !req.secure && certified && !path.starts_with(ACME_CHALLENGE) {
                return to_https(sites, host.unwrap_or_default(), req);
            }
            serve_site(sites, &site, &path, req, certified).await
        }
        None => plain(
            StatusCode::NOT_FOUND,
            "no site is published at this address\n",
        ),
    }
}

/// Where ACME HTTP-01 challenges are asked for.
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Whether every HTTPS node serves `host` with a certificate of the
/// network's.
fn certified(sites: &Sites, host: &str) -> bool {
    sites.certs.as_ref().is_some_and(|c| c.everywhere(host))
}

/// A permanent redirect to the same target over HTTPS.
fn to_https(sites: &Sites, host: &str, req: &Req<'_>) -> Response<Body> {
    let port = match sites.https_port.get() {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
    let location = format!("https://{host}{port}{}{query}", req.path);
    let mut r = plain(StatusCode::MOVED_PERMANENTLY, "");
    if let Ok(v) = HeaderValue::try_from(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A Host value without its port and trailing dot; IPv6 literals intact.
fn bare_host(h: &str) -> &str {
    let h = if h.starts_with('[') {
        h.split_once(']').map_or(h, |(a, _)| &a[1..])
    } else {
        h.rsplit_once(':').map_or(h, |(a, _)| a)
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// Percent-decodes a request path into NFC-normalisable UTF-8.
fn decode_path(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !raw.starts_with('/') {
        return None;
    }
    if !raw.contains('%') {
        // hyper hands us valid UTF-8 without NUL: nothing to decode.
        return Some(std::borrow::Cow::Borrowed(raw));
    }
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    // Control characters (NUL, CR, LF…) have no business in a path and
    // could otherwise reach a Location header through a redirect splat.
    if s.chars().any(char::is_control) {
        return None;
    }
    Some(std::borrow::Cow::Owned(s))
}

async fn serve_blob(sites: &Sites, text: &str, req: &Req<'_>) -> Response<Body> {
    let Ok(hash) = text.parse::<Hash>() else {
        return plain(
            StatusCode::BAD_REQUEST,
            "not a BLAKE3 hash (64 hex characters)\n",
        );
    };
    // Only what a served version references: never a manifest, an older
    // kept version, an upload in progress, or anything taken down. The
    // same answer whether or not the bytes are on disk.
    if !sites.live.references(&hash) {
        return plain(StatusCode::NOT_FOUND, "no such blob on this node\n");
    }
    let size = match sites.content.complete_size(hash).await {
        Ok(Some(size)) => size,
        Ok(None) => return plain(StatusCode::NOT_FOUND, "no such blob on this node\n"),
        Err(error) => {
            warn!(%error, "blob store failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
        }
    };
    let mut extra = HeaderMap::new();
    extra.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    extra.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    extra.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    extra.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(BLOB_CACHE_CONTROL),
    );
    send(
        sites,
        hash,
        size,
        crate::live::etag(&hash),
        None,
        StatusCode::OK,
        req,
        extra,
    )
    .await
}

enum Resolved<'a> {
    File(&'a Served),
    Redirect(u16, String),
    NotFound,
}

/// Rules first (first match wins), then the file, `dir/index.html`,
/// `/dir` → `/dir/`, and clean URLs (`/about` → `about.html`).
fn resolve<'a>(site: &'a LiveSite, path: &str, query: Option<&str>) -> Resolved<'a> {
    let with_query = |target: String| match query {
        Some(q) if !target.contains('?') => format!("{target}?{q}"),
        _ => target,
    };
    let mut path = std::borrow::Cow::Borrowed(path);
    for rule in &site.redirects {
        if let Some(caps) = rule.from.matches(&path) {
            if rule.status != 200 {
                return Resolved::Redirect(rule.status, with_query(rule.target(&caps)));
            }
            let target = rule
                .rewrite(&caps)
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_owned();
            path = std::borrow::Cow::Owned(target);
            break;
        }
    }
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.ends_with('/') {
        return site
            .file(&format!("{rel}index.html"))
            .map_or(Resolved::NotFound, Resolved::File);
    }
    if let Some(e) = site.file(rel) {
        return Resolved::File(e);
    }
    if site.file(&format!("{rel}/index.html")).is_some() {
        let mut location = String::with_capacity(rel.len() + 2);
        location.push('/');
        maki_protocol::rules::encode_into(rel, &mut location);
        location.push('/');
        return Resolved::Redirect(301, with_query(location));
    }
    site.file(&format!("{rel}.html"))
        .map_or(Resolved::NotFound, Resolved::File)
}

async fn serve_site(
    sites: &Sites,
    site: &LiveSite,
    path: &str,
    req: &Req<'_>,
    certified: bool,
) -> Response<Body> {
    let (file, status) = match resolve(site, path, req.query) {
        Resolved::File(f) => (f, StatusCode::OK),
        Resolved::Redirect(status, location) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let mut r = plain(status, "");
            if let Ok(v) = HeaderValue::try_from(location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        Resolved::NotFound => match site.file("404.html") {
            Some(f) => (f, StatusCode::NOT_FOUND),
            None => return plain(StatusCode::NOT_FOUND, "not found\n"),
        },
    };

    let mut extra = HeaderMap::with_capacity(8);
    if req.secure
        && let Some(alt) = sites.alt_svc.get()
    {
        extra.insert(header::ALT_SVC, alt.clone());
    }
    if let Some(ct) = site.content_type(file) {
        extra.insert(header::CONTENT_TYPE, ct);
    }
    extra.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(DEFAULT_CACHE_CONTROL),
    );
    if !site.headers.is_empty() {
        apply_rules(&site.headers, path, &mut extra);
        // HSTS only where it holds: over HTTPS, with a certificate of the
        // network's on every HTTPS node. After a self-signed one a browser
        // could never reach the site again until it expired.
        if !(req.secure && certified) {
            extra.remove(header::STRICT_TRANSPORT_SECURITY);
        }
    }

    // Ranges address the identity representation; compression is for whole bodies.
    let wants_range = req.range.is_some() && status == StatusCode::OK;
    if !file.variants.is_empty() {
        extra.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    let chosen = if wants_range || file.variants.is_empty() {
        None
    } else {
        pick_encoding(req.accept_encoding, file)
    };
    let (hash, size, encoding) = match chosen {
        Some((enc, v)) => (v.hash, v.size, Some(*enc)),
        None => (file.hash, file.size, None),
    };
    send(
        sites,
        hash,
        size,
        crate::live::etag(&hash),
        encoding,
        status,
        req,
        extra,
    )
    .await
}

fn apply_rules(rules: &[HeaderRule], path: &str, out: &mut HeaderMap) {
    let mut set: Vec<(&str, String)> = Vec::new();
    for rule in rules {
        if rule.pattern.matches(path).is_none() {
            continue;
        }
        // Refused at publish; filtered here too, for versions published
        // before that check (framing headers would desynchronise clients).
        for (name, value) in rule.set.iter().filter(|(n, _)| !is_reserved_header(n)) {
            match set.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => {
                    v.push_str(", ");
                    v.push_str(value);
                }
                None => set.push((name, value.clone())),
            }
        }
        for name in rule.unset.iter().filter(|n| !is_reserved_header(n)) {
            set.retain(|(n, _)| n != name);
            if let Ok(name) = header::HeaderName::try_from(name.as_str()) {
                out.remove(name);
            }
        }
    }
    for (name, value) in set {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            out.insert(n, v);
        }
    }
}

/// The best encoding the client accepts (br before gzip), honouring q=0.
fn pick_encoding<'a>(
    accept: Option<&str>,
    file: &'a Served,
) -> Option<&'a (Encoding, maki_protocol::Variant)> {
    let accept = accept?;
    let mut best: Option<(&(Encoding, maki_protocol::Variant), f32)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or_default().trim();
        let enc = if token.eq_ignore_ascii_case("br") {
            Encoding::Br
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Encoding::Gzip
        } else {
            continue;
        };
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let Some(v) = file.variants.iter().find(|v| v.0 == enc) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((b, bq)) => q > bq || (q == bq && enc < b.0),
        };
        if better {
            best = Some((v, q));
        }
    }
    best.map(|(v, _)| v)
}

/// A byte range of a body of `size` bytes: inclusive start, exclusive end.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `bytes=` range; anything else means the whole body.
fn parse_range(value: &str, size: u64) -> RangeReq {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = if a.is_empty() {
        match digits(b) {
            Some(0) => return RangeReq::Unsatisfiable,
            Some(n) => Some((size.saturating_sub(n), size)),
            None => None,
        }
    } else {
        match (digits(a), digits(b)) {
            (Some(start), _) if start >= size => return RangeReq::Unsatisfiable,
            (Some(start), Some(end)) if end >= start => {
                Some((start, end.saturating_add(1).min(size)))
            }
            (Some(start), None) if b.is_empty() => Some((start, size)),
            _ => None,
        }
    };
    match parsed {
        Some((s, e)) if s < e => RangeReq::Part(s, e),
        Some(_) => RangeReq::Unsatisfiable,
        None => RangeReq::Full,
    }
}

/// A run of ASCII digits (RFC 9110's `1*DIGIT`: no sign, no spaces), as a
/// number; one past `u64::MAX` is as good as `u64::MAX` for a byte position.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
    })
}

/// Sends blob `hash` with conditional GET and Range handled.
#[allow(clippy::too_many_arguments)]
async fn send(
    sites: &Sites,
    hash: Hash,
    size: u64,
    etag_value: HeaderValue,
    encoding: Option<Encoding>,
    status: StatusCode,
    req: &Req<'_>,
    mut headers: HeaderMap,
) -> Response<Body> {
    headers.insert(header::ETAG, etag_value.clone());
    let etag = etag_value.to_str().unwrap_or_default();
    if let Some(enc) = encoding {
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(enc.token()),
        );
    }
    if status == StatusCode::OK {
        if let Some(inm) = req.if_none_match
            && etag_matches(inm, etag)
        {
            headers.remove(header::CONTENT_TYPE);
            return build(StatusCode::NOT_MODIFIED, headers, Body::empty());
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let if_range_ok = req.if_range.is_none_or(|v| v.trim() == etag);
    let range = match req.range {
        Some(r) if status == StatusCode::OK && encoding.is_none() && if_range_ok => {
            parse_range(r, size)
        }
        _ => RangeReq::Full,
    };
    let (status, start, end) = match range {
        RangeReq::Full => (status, 0, size),
        RangeReq::Part(s, e) => {
            if let Ok(v) = HeaderValue::try_from(format!("bytes {s}-{}/{size}", e - 1)) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
        RangeReq::Unsatisfiable => {
            if let Ok(v) = HeaderValue::try_from(format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
            headers.remove(header::CONTENT_TYPE);
            return build(StatusCode::RANGE_NOT_SATISFIABLE, headers, Body::empty());
        }
    };
    // Lengths and slices come from the blob itself, never from a size a
    // manifest declared: the two are checked equal before a version goes
    // live, and a mismatch here (a disk that lost data) is an error
    // response, never a short body behind a long Content-Length.
    let stored = if local::cacheable(size) {
        local::blob_or_load(hash, read_whole(&sites.content, hash, size)).await
    } else {
        match sites.content.complete(hash).await {
            Ok(Some(Complete::File(file))) if file.size() == size => {
                let body = file_body(file, hash, start, end);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
                return build(status, headers, body);
            }
            Ok(Some(Complete::Inline { size: stored })) if stored == size => {
                sites.content.get_bytes(hash).await.map_err(Arc::new)
            }
            Ok(other) => {
                return size_mismatch(hash, size, other.as_ref().map_or(0, Complete::size));
            }
            Err(e) => Err(Arc::new(e)),
        }
    };
    let bytes = match stored {
        Ok(bytes) => bytes,
        Err(error) => {
            warn!(%error, %hash, "blob read failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n");
        }
    };
    let body = match bytes.get(start as usize..end as usize) {
        Some(_) if bytes.len() as u64 == size => {
            Body::Bytes(bytes.slice(start as usize..end as usize))
        }
        _ => return size_mismatch(hash, size, bytes.len() as u64),
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    build(status, headers, body)
}

/// A blob read whole, for the memory cache: from its file when it has one.
async fn read_whole(content: &Content, hash: Hash, size: u64) -> Result<Bytes, ContentError> {
    match content.complete(hash).await? {
        Some(Complete::File(file)) if file.size() == size => file.read_at(0, size as usize).await,
        // A size other than the manifest's is found out by the caller.
        _ => content.get_bytes(hash).await,
    }
}

/// How much of a large blob the first read takes; each read after takes
/// twice the one before, up to [`LAST_CHUNK`]. A response holds one chunk
/// until the visitor takes it, so a visitor who takes nothing (an HTTP/2
/// stream left with a window of one byte, by the hundred) costs the
/// first chunk and no more; one who reads gets large reads.
const FIRST_CHUNK: u64 = 16 * 1024;
const LAST_CHUNK: u64 = 256 * 1024;

/// Bytes `start..end` of a blob's file, a chunk read at a time as the
/// visitor takes them. A read that fails ends the body early, which the
/// visitor sees as a short body against Content-Length; it is logged.
fn file_body(file: BlobFile, hash: Hash, start: u64, end: u64) -> Body {
    let chunks = n0_future::stream::unfold(Some((start, FIRST_CHUNK)), move |next| {
        let file = file.clone();
        async move {
            let (at, chunk) = next.filter(|&(at, _)| at < end)?;
            let len = (end - at).min(chunk);
            match file.read_at(at, len as usize).await {
                Ok(bytes) => Some((
                    Ok(Frame::data(bytes)),
                    Some((at + len, (chunk * 2).min(LAST_CHUNK))),
                )),
                Err(error) => {
                    warn!(%error, %hash, at, end, "a body was cut: its blob could not be read");
                    Some((Err(io::Error::other(error)), None))
                }
            }
        }
    });
    Body::Stream(StreamBody::new(chunks).boxed_unsync())
}

fn size_mismatch(hash: Hash, declared: u64, stored: u64) -> Response<Body> {
    warn!(%hash, declared, stored, "a served blob is not the size its manifest declares");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n")
}

fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

pub(super) fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    build(status, headers, Body::Bytes(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), Part(0, 100));
        assert_eq!(parse_range("bytes=50-1000", 100), Part(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=9-1", 100), Full);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        // Signs are not digits; a last position past the end is clamped,
        // however many digits it has.
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(parse_range("bytes=1-+2", 100), Full);
        assert_eq!(parse_range("bytes=-+2", 100), Full);
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            Part(0, 100)
        );
        assert_eq!(
            parse_range("bytes=-99999999999999999999999", 100),
            Part(0, 100)
        );
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
    }

    #[test]
    fn paths() {
        assert_eq!(decode_path("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(decode_path("/caf%C3%A9").as_deref(), Some("/café"));
        assert_eq!(decode_path("/%zz"), None);
        assert_eq!(decode_path("/%ff"), None);
        assert_eq!(decode_path("/a%00"), None);
        assert_eq!(decode_path("/a%0d%0aSet-Cookie:x"), None);
        assert_eq!(decode_path("/%2"), None);
    }

    /// A version published before reserved headers were refused still
    /// loads; the edge drops what it must not send.
    #[test]
    fn rules_never_set_framing_headers() {
        use maki_protocol::rules::Pattern;
        let rules = vec![HeaderRule {
            pattern: Pattern::new("/*").expect("pattern"),
            set: vec![
                ("transfer-encoding".into(), "chunked".into()),
                ("content-length".into(), "1".into()),
                ("connection".into(), "close".into()),
                ("x-ok".into(), "yes".into()),
            ],
            unset: vec!["etag".into(), "date".into()],
        }];
        let mut out = HeaderMap::new();
        out.insert(header::ETAG, HeaderValue::from_static("\"e\""));
        apply_rules(&rules, "/a", &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out.get("x-ok").map(HeaderValue::as_bytes),
            Some(&b"yes"[..])
        );
        assert!(out.contains_key(header::ETAG));
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(!etag_matches("\"c\"", "\"b\""));
    }
}
