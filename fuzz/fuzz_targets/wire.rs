//! Everything a peer or a CLI can send decodes to a value or an error:
//! admin frames, replicated records, tickets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maki_protocol::{
    InviteTicket, NodeTicket, Record,
    rpc::{self, Request, Response},
};

fuzz_target!(|data: &[u8]| {
    let _ = rpc::decode_body::<Request>(data);
    let _ = rpc::decode_body::<Response>(data);
    if let Ok(r) = postcard::from_bytes::<Record>(data) {
        let _ = r.verify();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<NodeTicket>();
        let _ = s.parse::<InviteTicket>();
    }
});
