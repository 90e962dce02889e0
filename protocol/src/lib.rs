//! Makiatto's data model and wire formats.
//!
//! Everything a node and the CLI must agree on lives here: content hashes,
//! site paths and domains, manifests, signed records, tickets and the admin
//! RPC. This crate does no I/O and knows no clock: time comes in as an
//! argument. Every decoder is total — any bytes give `Ok` or a typed error,
//! never a panic.

pub mod acme;
mod blobset;
pub mod cert;
mod codec;
pub mod dnssec;
mod domain;
mod hash;
mod keys;
mod manifest;
pub mod mesh;
mod path;
mod records;
pub mod rpc;
pub mod rules;
pub mod seal;
mod signed;
pub mod sync;
mod ticket;
pub mod tickets;
pub mod zone;

pub use blobset::{BlobSet, PIECE_BYTES, Piece, pieces};
pub use domain::{Domain, DomainError};
pub use hash::{Hash, HashError};
pub use keys::{KeyError, PublicKey, SecretKey, Signature};
pub use manifest::{
    Encoding, Entry, Head, MANIFEST_FORMAT, MAX_MANIFEST_BYTES, Manifest, ManifestError, Variant,
};
pub use path::{SitePath, SitePathError};
pub use records::{
    Admission, AuthError, Body, Claim, GENESIS_FORMAT, Genesis, Invite, InviteTicket, MeshPeer,
    NODE_FORMAT, NodeRecord, PEER_KIND, PeerRecord, Pin, RECORD_FORMAT, ROLE_DNS, ROLE_HTTP,
    Record, RecordError, RecordKey, Revocation, SiteRecord, Unread, Verified, View, authorize,
    invite_key, kind_context, valid_peer_name,
};
#[cfg(feature = "next-format")]
pub use records::{NOTE_KIND, Note};
pub use signed::{MAX_SIGNED_BYTES, Signable, Signed, SignedError};
pub use ticket::{NodeTicket, TicketError};
