//! Everything a peer or a CLI can send decodes to a value or an error:
//! admin frames, sync and gossip messages, replicated records, tickets;
//! and what every node checks in a record's content whoever signed it
//! (a certificate's DER, ACME settings) finishes with a verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maki_protocol::{
    InviteTicket, NodeTicket, Record,
    rpc::{self, JoinRequest, JoinResponse, Request, Response},
    sync::{GossipMsg, SyncMsg},
};

fuzz_target!(|data: &[u8]| {
    let _ = rpc::decode_body::<Request>(data);
    let _ = rpc::decode_body::<Response>(data);
    let _ = rpc::decode_body::<JoinRequest>(data);
    let _ = rpc::decode_body::<JoinResponse>(data);
    let _ = rpc::decode_body::<SyncMsg>(data);
    if let Ok(GossipMsg::Holdings(h)) = rpc::decode_body::<GossipMsg>(data) {
        let _ = h.verify();
    }
    if let Ok(r) = postcard::from_bytes::<Record>(data) {
        let _ = r.verify();
    }
    let _ = maki_protocol::cert::not_after(data);
    if let Ok(c) = postcard::from_bytes::<maki_protocol::cert::CertRecord>(data) {
        let _ = c.check(&["a.test", "www.a.test"]);
        let _ = c.open(&[7; 32]);
    }
    if let Ok(a) = postcard::from_bytes::<maki_protocol::acme::AcmeConfig>(data) {
        let _ = a.check();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<NodeTicket>();
        let _ = s.parse::<InviteTicket>();
    }
});
