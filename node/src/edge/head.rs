//! What a request asks for, read from either parser's output: the lean
//! path's httparse head ([`from_httparse`]) or hyper's parts
//! ([`from_hyper`]). Both give the one [`Req`] the edge answers, so the two
//! paths cannot disagree on which request they serve.
//!
//! Pure (httparse and http only, no I/O), so the differential fuzz target
//! (`fuzz/fuzz_targets/http_head.rs`) compiles this very file and checks,
//! against hyper's own parser, that whatever the lean path accepts hyper
//! reads as the same request, ending at the same byte.

use http::{HeaderMap, HeaderValue, Method, Uri, Version, header};

/// hyper allows 100 headers; a request with more than this goes to hyper.
pub const MAX_HEADERS: usize = 64;

/// What the edge reads from a request, whichever parser read it. Header
/// values are present only when they are visible ASCII (hyper's
/// `HeaderValue::to_str`); the first of repeated headers counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Req<'a> {
    /// HEAD rather than GET (no other method reaches [`handle`]).
    pub head: bool,
    /// The path as sent, before percent-decoding.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The Host header, or the host of an absolute-form target.
    pub host: Option<&'a str>,
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub accept_encoding: Option<&'a str>,
    /// Over TLS.
    pub secure: bool,
}

/// The request, if this path serves it, and whether the client asked to close.
pub fn from_httparse<'b>(parsed: &httparse::Request<'_, 'b>) -> Option<(Req<'b>, bool)> {
    if parsed.version != Some(1) {
        return None;
    }
    let head = match parsed.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    // Origin-form of the bytes hyper's URI parser takes in a path and a
    // query; hyper judges anything else (an absolute-form target, a
    // fragment, raw UTF-8, a byte it refuses).
    let target = parsed.path?;
    if !target.starts_with('/') || target.len() >= MAX_TARGET {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if !path.bytes().all(path_byte) || !query.is_none_or(|q| q.bytes().all(query_byte)) {
        return None;
    }
    let mut req = Req {
        head,
        path,
        query,
        ..Req::default()
    };
    let mut close = false;
    let (mut hosts, mut ranges) = (0, 0);
    // Which of the first-wins headers were seen at all: the first one
    // counts even when its value is not text (hyper's `get` then gives
    // nothing, and so must we).
    let (mut inm, mut if_range, mut ae) = (false, false, false);
    for h in parsed.headers.iter() {
        let is = |name: &str| h.name.eq_ignore_ascii_case(name);
        let first = |seen: &mut bool, slot: &mut Option<&'b str>| {
            if !*seen {
                *seen = true;
                *slot = text(h.value);
            }
        };
        if is("host") {
            hosts += 1;
            req.host = text(h.value);
        } else if is("range") {
            ranges += 1;
            req.range = text(h.value);
        } else if is("if-none-match") {
            first(&mut inm, &mut req.if_none_match);
        } else if is("if-range") {
            first(&mut if_range, &mut req.if_range);
        } else if is("accept-encoding") {
            first(&mut ae, &mut req.accept_encoding);
        } else if is("connection") {
            for token in text(h.value)?.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return None;
                }
            }
        } else if is("content-length")
            || is("transfer-encoding")
            || is("expect")
            || is("upgrade")
            || is("http2-settings")
        {
            return None;
        }
    }
    // No Host, or more than one, is hyper's to refuse (400).
    if hosts != 1 {
        return None;
    }
    // Range is not a list: a repeated one is ignored (as on hyper's side).
    if ranges > 1 {
        req.range = None;
    }
    Some((req, close))
}

/// A header value as text when it is visible ASCII (as `HeaderValue::to_str`).
pub fn text(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// The longest target hyper's URI parser takes (`http::uri::MAX_LEN`).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// A byte `http`'s URI parser takes in a path (WHATWG's path state, plus
/// `"`, `{` and `}`); `?` and `#` end the path.
fn path_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E | b'"' | b'{' | b'}')
}

/// A byte `http`'s URI parser takes in a query; `#` ends it.
fn query_byte(b: u8) -> bool {
    matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E)
}

/// What hyper's side makes of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum View<'a> {
    /// A GET or HEAD to answer.
    Req(Req<'a>),
    /// Another method: 405.
    MethodNotAllowed,
    /// A malformed request hyper's parser let through: 400 (two Host
    /// headers, or none in an HTTP/1.1 request without an absolute-form
    /// target, RFC 9112 §3.2).
    BadRequest,
}

/// The request hyper parsed, as [`Req`]: an absolute-form target's host
/// (HTTP/2's `:authority`) wins over `Host` (RFC 9112 §3.2.2); a repeated
/// `Range` is ignored, as on the lean path.
pub fn from_hyper<'a>(
    method: &Method,
    uri: &'a Uri,
    version: Version,
    headers: &'a HeaderMap,
) -> View<'a> {
    let head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => return View::MethodNotAllowed,
    };
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let hosts = headers.get_all(header::HOST).iter().count();
    let authority = uri.host();
    if hosts > 1 || (hosts == 0 && authority.is_none() && version == Version::HTTP_11) {
        return View::BadRequest;
    }
    View::Req(Req {
        head,
        path: uri.path(),
        query: uri.query(),
        host: authority.or_else(|| text(header::HOST)),
        range: single(headers, header::RANGE),
        if_range: text(header::IF_RANGE),
        if_none_match: text(header::IF_NONE_MATCH),
        accept_encoding: text(header::ACCEPT_ENCODING),
        secure: false,
    })
}

/// The value of a header sent exactly once, as text.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the lean path read, as one line; None when it hands off.
    fn parse(raw: &[u8]) -> Option<String> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut p = httparse::Request::new(&mut headers);
        assert!(p.parse(raw).expect("parses").is_complete());
        from_httparse(&p).map(|(r, close)| {
            format!(
                "head={} path={} query={:?} host={:?} ae={:?} close={close}",
                r.head, r.path, r.query, r.host, r.accept_encoding
            )
        })
    }

    #[test]
    fn takes_plain_gets_and_heads() {
        assert_eq!(
            parse(b"GET /a/b.html?x=1 HTTP/1.1\r\nHost: a.test\r\nAccept-Encoding: br\r\n\r\n")
                .as_deref(),
            Some(
                r#"head=false path=/a/b.html query=Some("x=1") host=Some("a.test") ae=Some("br") close=false"#
            )
        );
        assert_eq!(
            parse(b"HEAD / HTTP/1.1\r\nhost: a\r\nConnection: keep-alive, Close\r\n\r\n")
                .as_deref(),
            Some(r#"head=true path=/ query=None host=Some("a") ae=None close=true"#)
        );
    }

    #[test]
    fn hands_everything_else_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(parse(raw).is_none(), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn header_values_must_be_text() {
        assert_eq!(text(b"gzip, br"), Some("gzip, br"));
        assert_eq!(text(b"a\tb"), Some("a\tb"));
        assert_eq!(text(b"caf\xc3\xa9"), None);
        assert_eq!(text(b"a\x7fb"), None);
    }
}
