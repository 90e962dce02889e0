//! Manifest::decode is total, and what it accepts re-encodes to bytes that
//! decode to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maki_protocol::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        let again = Manifest::decode(&m.to_bytes()).expect("re-encoded manifest must decode");
        assert_eq!(again, m);
    }
});
