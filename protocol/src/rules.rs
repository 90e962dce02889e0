//! `_headers` and `_redirects`, in the syntax Netlify and Cloudflare Pages
//! users already write, parsed at publish time into manifest rules.
//!
//! Patterns: a path starting with `/`; `*` (a splat) matches any run of
//! characters including `/`, `:name` matches one non-empty segment. In a
//! redirect target `:splat` and `:name` are replaced by what they matched.
//! Redirect rules are tried in file order before files (first match wins);
//! every matching header rule applies, and values for the same header name
//! from several rules are joined with `, `.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The most lines a rules file may have.
pub const MAX_LINES: usize = 10_000;

/// Response headers the server owns: framing and hop-by-hop headers, and
/// those it computes from the bytes it sends (which coding they are in is
/// the server's choice among the variants made at publish time). `_headers` may neither set
/// nor remove them (a `Content-Length` of its own would desynchronise the
/// client from the next response on the connection).
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "date",
    "etag",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// True when `name` (any case) is one of [`RESERVED_HEADERS`].
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
}

/// The statuses a redirect rule may carry (200 is a rewrite).
pub const REDIRECT_STATUSES: [u16; 6] = [200, 301, 302, 303, 307, 308];

/// A path pattern with splats and placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern(String);

/// Headers to set (and remove) on responses whose path matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRule {
    pub pattern: Pattern,
    pub set: Vec<(String, String)>,
    /// Header names to remove (`! Name`).
    pub unset: Vec<String>,
}

/// A redirect (301, 302, 303, 307, 308) or rewrite (200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectRule {
    pub from: Pattern,
    pub to: String,
    pub status: u16,
}

/// A rules file that does not parse; names the file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct RuleError {
    pub file: &'static str,
    pub line: usize,
    pub message: String,
}

/// Named captures of a pattern match.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captures<'a> {
    pub splat: Option<&'a str>,
    pub named: Vec<(&'a str, &'a str)>,
}

impl Pattern {
    pub fn new(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("pattern {s:?} must start with '/'"));
        }
        if s.matches('*').count() > 1 {
            return Err(format!("pattern {s:?} has more than one '*'"));
        }
        if s.contains(['?', '#']) {
            return Err(format!(
                "pattern {s:?}: query strings and fragments are not matched"
            ));
        }
        let mut rest = s;
        while let Some(i) = rest.find(':') {
            let after = &rest[i + 1..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len > 0 && !(after[len..].is_empty() || after[len..].starts_with('/')) {
                return Err(format!(
                    "pattern {s:?}: placeholder :{} must fill a whole segment",
                    &after[..len]
                ));
            }
            rest = &after[len..];
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Matches a request path (decoded, starting with `/`). A pattern
    /// without a trailing slash also matches the path with one.
    pub fn matches<'a>(&'a self, path: &'a str) -> Option<Captures<'a>> {
        let mut caps = Captures::default();
        if match_here(&self.0, path, &mut caps) {
            return Some(caps);
        }
        if !self.0.ends_with('/')
            && let Some(trimmed) = path.strip_suffix('/')
        {
            let mut caps = Captures::default();
            if !trimmed.is_empty() && match_here(&self.0, trimmed, &mut caps) {
                return Some(caps);
            }
        }
        None
    }
}

fn match_here<'a>(pat: &'a str, path: &'a str, caps: &mut Captures<'a>) -> bool {
    let Some(c) = pat.chars().next() else {
        return path.is_empty();
    };
    match c {
        '*' => {
            // Greedy: prefer the longest splat. Only one splat per pattern,
            // so what follows it has no choices; and it holds as many `/` as
            // the rest of the path must, which leaves the splat's end only
            // one segment to be in (without placeholders, one position). A
            // hostile rule and a long path cost one pass, not a product.
            let rest = &pat[1..];
            let slashes = rest.bytes().filter(|&b| b == b'/').count();
            let (lo, hi) = if rest.contains(':') {
                // Ends after the (slashes+1)-th `/` from the end, at or
                // before the slashes-th.
                let mut from_end = path.rmatch_indices('/').map(|(i, _)| i);
                let hi = if slashes == 0 {
                    Some(path.len())
                } else {
                    from_end.nth(slashes - 1)
                };
                let lo = from_end.next().map_or(0, |i| i + 1);
                match hi {
                    Some(hi) if lo <= hi => (lo, hi),
                    _ => return false,
                }
            } else {
                match path.len().checked_sub(rest.len()) {
                    Some(at) => (at, at),
                    None => return false,
                }
            };
            for split in (lo..=hi).rev().filter(|&i| path.is_char_boundary(i)) {
                let mark = caps.named.len();
                if match_here(rest, &path[split..], caps) {
                    caps.splat = Some(&path[..split]);
                    return true;
                }
                caps.named.truncate(mark);
            }
            false
        }
        ':' => {
            let name_len = pat[1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(pat.len() - 1);
            if name_len == 0 {
                return path.starts_with(':') && match_here(&pat[1..], &path[1..], caps);
            }
            let name = &pat[1..1 + name_len];
            let rest = &pat[1 + name_len..];
            let seg_end = path.find('/').unwrap_or(path.len());
            if seg_end == 0 {
                return false;
            }
            // A placeholder takes exactly one whole segment: linear time,
            // whatever a publisher writes.
            if !(rest.is_empty() || rest.starts_with('/')) {
                return false;
            }
            caps.named.push((name, &path[..seg_end]));
            match_here(rest, &path[seg_end..], caps)
        }
        _ => {
            let n = c.len_utf8();
            path.starts_with(c) && match_here(&pat[n..], &path[n..], caps)
        }
    }
}

impl RedirectRule {
    /// Checks what [`parse_redirects`] checks, for a rule that arrived
    /// inside a manifest (a hostile publisher need not use the parser).
    pub fn validate(&self) -> Result<(), String> {
        Pattern::new(self.from.as_str())?;
        check_target(&self.to, self.status)
    }

    /// The target with captures substituted. Captured text is
    /// percent-encoded, so it lands in the path as data and can never
    /// become an authority (`//host`, `/\host`), a query or a fragment;
    /// and a path target stays a path on this site whatever it captured.
    pub fn target(&self, caps: &Captures<'_>) -> String {
        let raw = self.substitute(caps, encode_into);
        if raw.starts_with('/') {
            same_origin_path(&raw)
        } else {
            raw
        }
    }

    /// A 200 rewrite's target: the site path to serve, captures as they
    /// were matched (decoded), not a URL.
    pub fn rewrite(&self, caps: &Captures<'_>) -> String {
        self.substitute(caps, |v, out| out.push_str(v))
    }

    fn substitute(&self, caps: &Captures<'_>, put: impl Fn(&str, &mut String)) -> String {
        let mut out = String::with_capacity(self.to.len());
        let mut rest = self.to.as_str();
        while let Some(i) = rest.find(':') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            let value = if name == "splat" {
                caps.splat
            } else {
                caps.named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
            };
            match value {
                Some(v) if !name.is_empty() => put(v, &mut out),
                _ => {
                    out.push(':');
                    out.push_str(name);
                }
            }
            rest = &after[len..];
        }
        out.push_str(rest);
        out
    }
}

/// Appends `text` percent-encoded for a URL path: everything but
/// unreserved characters, sub-delimiters, `:`, `@` and `/` is encoded
/// (`%`, `\\`, `?`, `#`, spaces, controls, non-ASCII bytes).
pub fn encode_into(text: &str, out: &mut String) {
    for b in text.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A path that a browser resolves on the current origin: one leading `/`
/// (browsers read `//host` and `/\host` as another host), backslashes and
/// anything below `!` encoded.
pub fn same_origin_path(path: &str) -> String {
    let rest = path.trim_start_matches(['/', '\\']);
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    for c in rest.chars() {
        if c == '\\' || c.is_control() || c == ' ' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn check_target(to: &str, status: u16) -> Result<(), String> {
    if !REDIRECT_STATUSES.contains(&status) {
        return Err(format!(
            "status {status} is not one of 200, 301, 302, 303, 307, 308"
        ));
    }
    if status == 200 && !to.starts_with('/') {
        return Err("a 200 rewrite must target a path on the same site".into());
    }
    if !(to.starts_with('/') || to.starts_with("https://") || to.starts_with("http://")) {
        return Err(format!("target {to:?} must be a path or an http(s) URL"));
    }
    if to.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("target contains a control character or a space".into());
    }
    if to.len() > 2048 {
        return Err("target is longer than 2048 bytes".into());
    }
    Ok(())
}

impl HeaderRule {
    /// Checks what [`parse_headers`] checks (reserved names apart: see
    /// [`HeaderRule::reserved`]), for a rule that arrived in a manifest.
    pub fn validate(&self) -> Result<(), String> {
        Pattern::new(self.pattern.as_str())?;
        for (name, value) in &self.set {
            check_header_name(name)?;
            check_header_value(value)?;
        }
        for name in &self.unset {
            check_header_name(name)?;
        }
        Ok(())
    }

    /// The first reserved header this rule sets or removes.
    pub fn reserved(&self) -> Option<&str> {
        self.set
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(self.unset.iter().map(String::as_str))
            .find(|n| is_reserved_header(n))
    }
}

fn check_header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err("header value contains a control character".into());
    }
    Ok(())
}

fn check_reserved(name: &str) -> Result<(), String> {
    if is_reserved_header(name) {
        return Err(format!(
            "{name} is set by the server and cannot be changed in _headers"
        ));
    }
    Ok(())
}

/// Parses a `_redirects` file: `FROM TO [STATUS]` per line, `#` comments.
pub fn parse_redirects(text: &str) -> Result<Vec<RedirectRule>, RuleError> {
    let err = |line: usize, message: String| RuleError {
        file: "_redirects",
        line,
        message,
    };
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if n > MAX_LINES {
            return Err(err(n, format!("more than {MAX_LINES} lines")));
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (from, to, status) = match fields.as_slice() {
            [from, to] => (*from, *to, "301"),
            [from, to, status] => (*from, *to, *status),
            [_, _, third, ..] if third.contains('=') => {
                return Err(err(
                    n,
                    "query-parameter conditions are not supported".into(),
                ));
            }
            _ => {
                return Err(err(
                    n,
                    format!("expected 'FROM TO [STATUS]', found {} fields", fields.len()),
                ));
            }
        };
        if from.contains("://") {
            return Err(err(
                n,
                "FROM must be a path; domain-level redirects are not supported".into(),
            ));
        }
        let from = Pattern::new(from).map_err(|m| err(n, m))?;
        let status_num = status.trim_end_matches('!');
        let status: u16 = status_num
            .parse()
            .map_err(|_| err(n, format!("status {status:?} is not a number")))?;
        check_target(to, status).map_err(|m| err(n, m))?;
        rules.push(RedirectRule {
            from,
            to: to.to_owned(),
            status,
        });
    }
    Ok(rules)
}

/// Parses a `_headers` file: a path pattern on its own line, then indented
/// `Name: value` lines (or `! Name` to remove a header).
pub fn parse_headers(text: &str) -> Result<Vec<HeaderRule>, RuleError> {
    let err = |line: usize, message: String| RuleError {
        file: "_headers",
        line,
        message,
    };
    let mut rules: Vec<HeaderRule> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if n > MAX_LINES {
            return Err(err(n, format!("more than {MAX_LINES} lines")));
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if !indented {
            if line.contains("://") {
                return Err(err(n, "patterns with a host are not supported".into()));
            }
            let pattern = Pattern::new(line).map_err(|m| err(n, m))?;
            rules.push(HeaderRule {
                pattern,
                set: Vec::new(),
                unset: Vec::new(),
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            return Err(err(n, "a header line must follow a path line".into()));
        };
        if let Some(name) = line.strip_prefix('!') {
            let name = name.trim();
            check_header_name(name).map_err(|m| err(n, m))?;
            check_reserved(name).map_err(|m| err(n, m))?;
            rule.unset.push(name.to_ascii_lowercase());
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(err(n, format!("expected 'Name: value', found {line:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        check_header_name(name).map_err(|m| err(n, m))?;
        check_reserved(name).map_err(|m| err(n, m))?;
        check_header_value(value).map_err(|m| err(n, m))?;
        rule.set.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(rules)
}

fn check_header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid header name"))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::new(s).expect("pattern")
    }

    #[test]
    fn splats_and_placeholders() {
        let p = pat("/blog/*");
        assert_eq!(p.matches("/blog/a/b").and_then(|c| c.splat), Some("a/b"));
        assert!(p.matches("/other").is_none());

        let p = pat("/news/:year/:slug");
        let c = p.matches("/news/2024/hello").expect("match");
        assert_eq!(c.named, vec![("year", "2024"), ("slug", "hello")]);
        assert!(p.matches("/news/2024").is_none());

        assert!(pat("/about").matches("/about/").is_some());
        assert!(pat("/").matches("/").is_some());
    }

    #[test]
    fn redirect_targets() {
        let rules = parse_redirects(
            "# comment\n/old/* /new/:splat 302\n/news/:y/:s /blog/:y-:s\n/app/* /index.html 200\n",
        )
        .expect("parse");
        assert_eq!(rules.len(), 3);
        let c = rules[0].from.matches("/old/x/y").expect("match");
        assert_eq!(rules[0].target(&c), "/new/x/y");
        assert_eq!(rules[0].status, 302);
        let c = rules[1].from.matches("/news/2024/hi").expect("match");
        assert_eq!(rules[1].target(&c), "/blog/2024-hi");
        assert_eq!(rules[1].status, 301);
        assert_eq!(rules[2].status, 200);
    }

    #[test]
    fn bad_redirects_name_the_line() {
        let e = parse_redirects("/a /b\n/c /d 999\n").expect_err("bad status");
        assert_eq!((e.file, e.line), ("_redirects", 2));
        assert!(e.to_string().starts_with("_redirects:2: "));
        assert_eq!(parse_redirects("nope /b").expect_err("x").line, 1);
        assert_eq!(parse_redirects("/a").expect_err("x").line, 1);
        assert_eq!(parse_redirects("/a b").expect_err("x").line, 1);
        assert_eq!(parse_redirects("/a /b 200 x=y").expect_err("x").line, 1);
    }

    #[test]
    fn headers() {
        let rules = parse_headers(
            "/*\n  X-Frame-Options: DENY\n  ! Server\n/assets/*\n  Cache-Control: public, max-age=31536000, immutable\n",
        )
        .expect("parse");
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].set,
            vec![("x-frame-options".into(), "DENY".into())]
        );
        assert_eq!(rules[0].unset, vec!["server".to_owned()]);
        assert_eq!(rules[1].set[0].1, "public, max-age=31536000, immutable");

        let e = parse_headers("  X-A: b\n").expect_err("orphan");
        assert_eq!((e.file, e.line), ("_headers", 1));
        let e = parse_headers("/a\n  Bad Name: x\n").expect_err("bad name");
        assert_eq!(e.line, 2);
    }

    /// The red team's open redirects: what a splat captured can never make a
    /// path target leave the site.
    #[test]
    fn path_targets_stay_on_the_site() {
        let rules =
            parse_redirects("/go/* /:splat 301\n/r/:x /:x\n/ext/* https://cdn.test/:splat\n")
                .expect("parse");
        let go = |path: &str| {
            let c = rules[0].from.matches(path).expect("match");
            rules[0].target(&c)
        };
        // `/go//evil.example` and `/go/%2fevil.example` (decoded by the edge).
        assert_eq!(go("/go//evil.example"), "/evil.example");
        assert_eq!(go("/go/\\evil.example"), "/%5Cevil.example");
        assert_eq!(go("/go/a b?c#d"), "/a%20b%3Fc%23d");
        assert_eq!(go("/go/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(go("/go/100%"), "/100%25");
        let c = rules[1].from.matches("/r/\\evil.example").expect("match");
        assert_eq!(rules[1].target(&c), "/%5Cevil.example");
        // A literal `//` in the publisher's own target does not leave either.
        let lit = parse_redirects("/x //evil.example/y").expect("parse");
        assert_eq!(lit[0].target(&Captures::default()), "/evil.example/y");
        // Only a literal absolute URL leaves; its captures are still data.
        let c = rules[2].from.matches("/ext/a/../b?x").expect("match");
        assert_eq!(rules[2].target(&c), "https://cdn.test/a/../b%3Fx");
        assert_eq!(same_origin_path("/\\/x"), "/x");
        assert_eq!(same_origin_path("/a\\b"), "/a%5Cb");
    }

    #[test]
    fn reserved_headers_are_refused_by_name() {
        for name in RESERVED_HEADERS {
            let e = parse_headers(&format!("/*\n  {name}: 1\n")).expect_err(name);
            assert_eq!(e.line, 2, "{name}");
            assert!(e.message.contains("set by the server"), "{e}");
            let e = parse_headers(&format!("/*\n  ! {name}\n")).expect_err(name);
            assert_eq!(e.line, 2, "{name}");
        }
        let e = parse_headers("/*\n  Transfer-Encoding: chunked\n").expect_err("te");
        assert_eq!(
            e.to_string(),
            "_headers:2: Transfer-Encoding is set by the server and cannot be changed in _headers"
        );
        assert!(parse_headers("/*\n  Cache-Control: no-store\n").is_ok());
    }

    /// The matcher before pruning: every split of the splat, longest first.
    fn naive<'a>(pat: &'a str, path: &'a str) -> Option<Captures<'a>> {
        fn go<'a>(pat: &'a str, path: &'a str, caps: &mut Captures<'a>) -> bool {
            let Some(c) = pat.chars().next() else {
                return path.is_empty();
            };
            match c {
                '*' => {
                    for split in (0..=path.len()).rev() {
                        let mark = caps.named.len();
                        if go(&pat[1..], &path[split..], caps) {
                            caps.splat = Some(&path[..split]);
                            return true;
                        }
                        caps.named.truncate(mark);
                    }
                    false
                }
                ':' => {
                    let name_len = pat[1..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(pat.len() - 1);
                    if name_len == 0 {
                        return path.starts_with(':') && go(&pat[1..], &path[1..], caps);
                    }
                    let rest = &pat[1 + name_len..];
                    let seg_end = path.find('/').unwrap_or(path.len());
                    if seg_end == 0 || !(rest.is_empty() || rest.starts_with('/')) {
                        return false;
                    }
                    caps.named.push((&pat[1..1 + name_len], &path[..seg_end]));
                    go(rest, &path[seg_end..], caps)
                }
                _ => path.starts_with(c) && go(&pat[1..], &path[1..], caps),
            }
        }
        let mut caps = Captures::default();
        if go(pat, path, &mut caps) {
            return Some(caps);
        }
        let trimmed = path
            .strip_suffix('/')
            .filter(|t| !pat.ends_with('/') && !t.is_empty())?;
        let mut caps = Captures::default();
        go(pat, trimmed, &mut caps).then_some(caps)
    }

    /// A hostile `_headers` file against a long path: with every split of
    /// the splat tried, each rule cost 60,000 × 1,000 comparisons and this
    /// test took hours; pruned, it is one comparison of the suffix per rule.
    #[test]
    fn a_long_path_against_many_rules_costs_one_pass_each() {
        let suffix = "a".repeat(1000);
        let rules: Vec<Pattern> = (0..2_000)
            .map(|i| pat(&format!("/*{suffix}{i}")))
            .chain((0..2_000).map(|i| pat(&format!("/*/{suffix}/:x/{i}"))))
            .collect();
        let path = format!("/{}", "a".repeat(60_000));
        assert!(rules.iter().all(|r| r.matches(&path).is_none()));
    }

    proptest! {
        #[test]
        fn path_targets_never_name_another_host(splat in "\\PC{0,40}") {
            let rules = parse_redirects("/go/* /:splat 302").expect("parse");
            let path = format!("/go/{splat}");
            if let Some(c) = rules[0].from.matches(&path) {
                let t = rules[0].target(&c);
                prop_assert!(t.starts_with('/'));
                prop_assert!(!t.starts_with("//"));
                prop_assert!(!t.contains('\\'));
                prop_assert!(t.bytes().all(|b| b.is_ascii_graphic()));
            }
        }

        #[test]
        fn parsers_are_total(text in "\\PC{0,200}") {
            let _ = parse_redirects(&text);
            let _ = parse_headers(&text);
        }

        #[test]
        fn matching_is_total(p in "/[a-z:*/]{0,12}", path in "/[a-z/]{0,20}") {
            if let Ok(p) = Pattern::new(&p) {
                let _ = p.matches(&path);
            }
        }

        /// The pruned splat finds exactly what trying every split finds.
        #[test]
        fn pruned_matching_agrees_with_trying_every_split(
            p in "/[ab:/]{0,6}\\*[ab:/]{0,6}",
            path in "/[ab/]{0,14}",
        ) {
            if let Ok(p) = Pattern::new(&p) {
                prop_assert_eq!(p.matches(&path), naive(p.as_str(), &path));
            }
        }
    }
}
