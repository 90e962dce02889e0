//! The `_headers` / `_redirects` parsers and the pattern matcher are total.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maki_protocol::rules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rules_text, path) = text.split_once('\n').unwrap_or((text, "/"));
    if let Ok(redirects) = rules::parse_redirects(rules_text) {
        for r in &redirects {
            if let Some(c) = r.from.matches(path) {
                let _ = r.target(&c);
            }
        }
    }
    if let Ok(headers) = rules::parse_headers(rules_text) {
        for h in &headers {
            let _ = h.pattern.matches(path);
        }
    }
});
