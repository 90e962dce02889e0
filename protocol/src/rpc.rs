//! The admin protocol (`maki/admin/1`), shared by the daemon and the CLI.
//!
//! One request per QUIC bidirectional stream: a frame is a little-endian
//! `u32` length followed by that many postcard bytes. The caller is
//! identified by its iroh key (the TLS handshake proves it); every request
//! is authorised against that key.

use serde::{Deserialize, Serialize};

use crate::{
    Domain, Genesis, Hash, Head, Invite, PublicKey, Record, Revocation, Signed, SiteRecord,
};

/// ALPN of the admin protocol.
pub const ADMIN_ALPN: &[u8] = b"maki/admin/1";

/// The largest frame either side accepts. Manifests do not travel in
/// frames (they are pushed as blobs), so a frame stays small whatever the
/// site.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A request from the CLI to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Admin: create a site. The record is signed by the caller and names
    /// who may publish the site; it replicates to every node.
    SiteAdd { record: Signed<SiteRecord> },
    /// Admin: remove a site (a newer record of it with `removed` set); it
    /// stops being served at once.
    SiteRemove { record: Signed<SiteRecord> },
    /// List the sites and their heads.
    Sites,
    /// List a site's kept versions, newest first.
    Versions { domain: Domain },
    /// Publisher: offer a new version. `head` is signed by the caller and
    /// names the hash of the canonical manifest bytes, `manifest_size` their
    /// length. The node answers [`Response::SendManifest`] (push the
    /// manifest as a blob, then [`Request::PublishManifest`]) or, if it
    /// already holds the manifest, [`Response::Missing`] at once.
    PublishBegin {
        head: Signed<Head>,
        manifest_size: u64,
    },
    /// Publisher: the manifest blob of this session has been pushed.
    PublishManifest { session: u64 },
    /// Publisher: every missing blob has been pushed; make the version live.
    PublishCommit { session: u64 },
    /// Publisher: serve an older kept version (a new head, seq + 1).
    Rollback { head: Signed<Head> },
    /// This node's network id and node id (for building invites).
    Network,
    /// Admin: store an invite this node will redeem once.
    Invite { invite: Signed<Invite> },
    /// Admins and publishers: the member nodes this node knows of.
    Nodes,
    /// Admin: revoke a node. Its records and connections are refused from
    /// then on, by every member.
    NodeRemove { record: Signed<Revocation> },
    /// Admin: pin a site to regions (none: every node).
    Pin { record: Signed<crate::Pin> },
    /// Admin: the highest head sequence this node knows for a domain, also
    /// of a removed site; a site added again starts its heads after it.
    HeadFloor { domain: Domain },
    /// Admin: add, change or remove (`removed` set) an external WireGuard
    /// peer of the mesh.
    PeerSet { record: Signed<crate::PeerRecord> },
    /// Admin: the external WireGuard peers.
    Peers,
    /// A newer record of an existing site: its aliases changed (admin).
    SiteUpdate { record: Signed<SiteRecord> },
    /// A site's own DNS records (a publisher of it, or an admin).
    ZoneSet {
        record: Signed<crate::zone::ZoneRecord>,
    },
    /// A site's DNSSEC keys: the public ones for its publishers (its
    /// DS), and who they are sealed to for admins.
    Keys { domain: Domain },
    /// Admin: new DNSSEC keys for a site (made, resealed or rolled).
    KeysSet {
        record: Signed<crate::dnssec::ZoneKeys>,
    },
    /// What a publisher of a site needs to upload its certificate: who
    /// its key is sealed to.
    CertInfo { domain: Domain },
    /// A site's certificate, uploaded (a publisher of it, or an admin).
    CertSet {
        record: Signed<crate::cert::CertRecord>,
    },
    /// Admin: the network's ACME settings.
    AcmeSet {
        record: Signed<crate::acme::AcmeConfig>,
    },
    /// Admin: the network's ACME settings now (`Response::Acme`).
    Acme,
}

/// What uploading a site's certificate needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertInfo {
    /// The site's `heads_after` (what a new record's `incarnation` is).
    pub incarnation: u64,
    /// The site's names (its domain, then its aliases).
    pub names: Vec<Domain>,
    /// Who gets a copy of the key: the nodes that serve HTTPS (role
    /// `http`) and the admins, by their sealing keys. A node too old to
    /// announce one is left out, and listed in `unsealable`.
    pub recipients: Vec<[u8; 32]>,
    pub unsealable: Vec<PublicKey>,
}

/// What an admin needs to make, reseal or roll a site's DNSSEC keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysInfo {
    /// The site's keys as held now, if any.
    pub keys: Option<crate::dnssec::ZoneKeys>,
    /// The site's `heads_after` (what a new record's `incarnation` is).
    pub incarnation: u64,
    /// The admins: each gets a copy, to reseal and roll with later.
    pub admins: Vec<PublicKey>,
    /// The nameservers (role `dns`) and their sealing keys; `None` from a
    /// node too old to announce one.
    pub nameservers: Vec<(PublicKey, Option<[u8; 32]>)>,
}

pub use crate::blobset::BlobSet;

/// A member node as `maki nodes` shows it, seen from the node asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: PublicKey,
    pub addrs: Vec<std::net::SocketAddr>,
    pub region: Option<String>,
    pub location: Option<(f64, f64)>,
    pub version: u64,
    pub health: Health,
    /// Round trip of the last exchange, in microseconds.
    pub rtt_us: Option<u64>,
    /// The site versions it holds and serves.
    pub holds: Vec<crate::sync::Holding>,
    /// What it offers the public (see [`crate::ROLE_HTTP`]).
    pub roles: Vec<String>,
    /// Its place in the WireGuard mesh, if it runs one.
    pub mesh: Option<NodeMesh>,
    /// What the members' probes find of each public service it runs.
    pub checks: Vec<Check>,
    /// Its public IPs: what DNS answers with, and its nameserver's glue.
    pub ips: Vec<std::net::IpAddr>,
}

/// The members' verdict on one service of a node (`maki nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The role: `http` or `dns`.
    pub role: String,
    /// Whether a majority of the other members see it down; a node
    /// down for `http` leaves the DNS answers.
    pub down: bool,
    /// How many members see it down, of how many could vote.
    pub down_votes: u32,
    pub voters: u32,
    /// What this node's own probes say: None before its first probes.
    pub here: Option<bool>,
}

/// An external WireGuard peer, as `maki peer list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    /// Its WireGuard public key, as `wg` shows it (base64).
    pub key: String,
    pub endpoint: Option<std::net::SocketAddr>,
    /// Its address in the mesh.
    pub addr: std::net::Ipv6Addr,
}

/// A member's mesh, as `maki nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMesh {
    pub addr: std::net::Ipv6Addr,
    /// `kernel` or `userspace`.
    pub backend: String,
    /// Its WireGuard public key, as `wg` shows it (base64).
    pub key: String,
    /// Where its WireGuard listens, if it announced a public IP.
    pub endpoint: Option<std::net::SocketAddr>,
}

/// How the node asked sees a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The node answering.
    Me,
    /// Exchanged with it recently.
    Up,
    /// The last attempt to reach it failed.
    Down,
    /// Not exchanged with lately, and no failure either.
    Unknown,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Me => "this node",
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "not checked lately",
        })
    }
}

/// A site as `maki sites` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    pub domain: Domain,
    /// Other domains that serve the same site.
    pub aliases: Vec<Domain>,
    pub publishers: Vec<PublicKey>,
    pub head: Option<HeadInfo>,
    /// The newest version kept (0 before the first publish); a new publish
    /// must carry a higher one.
    pub latest_version: u64,
    /// Version of the site's record; a change must carry a higher one.
    pub record_version: u64,
    /// Regions the site is pinned to (empty: every node holds it).
    pub regions: Vec<String>,
    /// A new head's sequence number must be above this as well as above the
    /// current head's (see `SiteRecord::heads_after`).
    pub heads_after: u64,
    /// Its certificate from the network, if it has one; without, the
    /// nodes serve a self-signed one.
    pub cert: Option<CertSummary>,
    /// Its certificate order at the network's ACME CA, if one was made.
    pub order: Option<OrderSummary>,
}

/// A site's certificate order as `maki sites` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The node that orders (or ordered last).
    pub holder: PublicKey,
    /// Whether it is ordering now.
    pub ordering: bool,
    /// Attempts that failed in a row.
    pub failures: u32,
    /// Why the last one failed.
    pub error: Option<String>,
    /// No node tries again before this (seconds since the epoch).
    pub retry_at: u64,
}

/// A site's certificate as `maki sites` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    pub origin: crate::cert::Origin,
    /// Who issued it (the issuer's common name or organisation).
    pub issuer: Option<String>,
    pub names: Vec<String>,
    /// When it expires (seconds since the epoch).
    pub not_after: u64,
    /// Why the node asked does not serve it (untrusted root, expired, a
    /// key that is not the leaf's); none when it does.
    pub problem: Option<String>,
}

/// The version a site serves now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub seq: u64,
    pub version: u64,
    pub manifest: Hash,
    pub files: u64,
    pub bytes: u64,
    pub created: u64,
}

/// One kept version of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub manifest: Hash,
    pub files: u64,
    pub bytes: u64,
    pub created: u64,
    /// True for the version the site serves now.
    pub current: bool,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    Done,
    Sites(Vec<SiteInfo>),
    Versions(Vec<VersionInfo>),
    /// Push the manifest blob (iroh-blobs, ALPN `/iroh-bytes/4`), then send
    /// [`Request::PublishManifest`].
    SendManifest {
        session: u64,
    },
    /// Push these blobs (iroh-blobs, ALPN `/iroh-bytes/4`), then commit.
    /// `lacks` names them as a set over the manifest's blobs.
    Missing {
        session: u64,
        lacks: BlobSet,
        bytes: u64,
    },
    /// Same content as the current head: nothing to do.
    Unchanged {
        version: u64,
    },
    /// The new head is live.
    Published {
        version: u64,
        seq: u64,
    },
    Network {
        network: Hash,
        node: PublicKey,
    },
    Nodes(Vec<NodeInfo>),
    Peers(Vec<PeerInfo>),
    Error(RpcError),
    /// See [`Request::HeadFloor`].
    HeadFloor {
        seq: u64,
    },
    Keys(KeysInfo),
    CertInfo(CertInfo),
    /// See [`Request::Acme`]; None before an admin set any.
    Acme(Option<crate::acme::AcmeConfig>),
}

/// Why a node refused a request. Each message names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    #[error("{key} is not an admin of this network; ask an admin to run this")]
    NotAdmin { key: PublicKey },
    #[error(
        "{key} may not publish {domain}; an admin can add it with `maki site add {domain} --publisher {key}`"
    )]
    NotPublisher { key: PublicKey, domain: Domain },
    #[error("unknown node {0}; see `maki nodes`")]
    UnknownNode(PublicKey),
    #[error("unknown site {0}; an admin can create it with `maki site add {0}`")]
    UnknownSite(Domain),
    #[error("site {0} already exists")]
    SiteExists(Domain),
    #[error("the signature on the head is not valid (forged or corrupted)")]
    BadSignature,
    #[error("the head must be signed by the caller's own key")]
    SignerMismatch,
    #[error(
        "the site changed since this publish started (the current version is {current:?}); publish again"
    )]
    StaleParent { current: Option<Hash> },
    #[error("head sequence {offered} is not the next one ({expected}); publish again")]
    StaleSeq { expected: u64, offered: u64 },
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("the site is {size} bytes; this node accepts at most {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("unknown or expired publish session {0}; publish again")]
    UnknownSession(u64),
    #[error("{count} blobs were not received (first: {first}); publish again")]
    MissingBlobs { count: usize, first: Hash },
    #[error("version {0} is not kept on this node; see `maki versions`")]
    UnknownVersion(Hash),
    #[error("the record was refused: {0}")]
    InvalidRecord(String),
    #[error("invalid invite: {0}")]
    InvalidInvite(String),
    #[error("the request is malformed or from a newer client: {0}")]
    BadRequest(String),
    #[error("the node failed: {0}")]
    Internal(String),
    #[error(
        "{path}: the manifest says {declared} bytes, but its blob is {stored} bytes; the manifest lies (a stale hash cache?); publish again"
    )]
    SizeMismatch {
        path: String,
        declared: u64,
        stored: u64,
    },
    #[error(
        "this key already has {in_flight} bytes of uploads in progress; this node allows {limit} at once: wait for them to finish"
    )]
    UploadBudget { in_flight: u64, limit: u64 },
}

/// ALPN of the join protocol: a new node redeems an invite at its issuer.
pub const JOIN_ALPN: &[u8] = b"maki/join/1";

/// What a joining node sends (one frame on one stream). Its node id is the
/// key of the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JoinRequest {
    /// The ticket's secret stays home: the claim, signed with the key it
    /// gives, proves the joiner holds it.
    Redeem {
        network: Hash,
        claim: Signed<crate::Claim>,
    },
    /// A member's own node record (and the invite it redeemed), sent to
    /// the other members over their public address before it talks to
    /// them over the WireGuard mesh: they make it a mesh peer only once
    /// they have its record, and until then the mesh does not carry it.
    Introduce {
        network: Hash,
        record: Record,
        invite: Option<Record>,
    },
}

/// The issuer's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
// Sent once per join; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum JoinResponse {
    /// Welcome: the network's genesis and the invite now redeemed by you.
    Welcome {
        genesis: Signed<Genesis>,
        invite: Signed<Invite>,
        /// The issuer's word that the joiner redeemed `invite`: what its
        /// node record must carry.
        admission: Signed<crate::Admission>,
        /// The issuer's membership records (invites, nodes, revocations):
        /// whom the joiner syncs the rest with.
        records: Vec<Record>,
    },
    /// The introduction was taken (or was known already).
    Introduced,
    Refused(JoinError),
}

/// Why an invite was not redeemed. Nothing changes on either side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    #[error(
        "this node does not know that invite (wrong node, or never issued); ask an admin for a new one"
    )]
    UnknownInvite,
    #[error("the invite was already used; ask an admin for a new one")]
    AlreadyUsed,
    #[error("the invite has expired; ask an admin for a new one")]
    Expired,
    #[error("the invite is for another network")]
    WrongNetwork,
    #[error("the ticket does not match the invite (a damaged or forged ticket)")]
    BadAdmission,
    #[error("the issuing node failed: {0}")]
    Internal(String),
    #[error("the introduction was refused: {0}")]
    NotIntroduced(String),
}

/// A frame that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("frame does not decode: {0}")]
    Decode(String),
}

/// Encodes a frame body: postcard bytes, no prefix (what gossip carries).
pub fn encode_body<T: Serialize>(value: &T) -> Vec<u8> {
    crate::codec::encode(value)
}

/// Encodes a frame: length prefix plus postcard bytes.
pub fn encode_frame<T: Serialize>(value: &T) -> Vec<u8> {
    let body = encode_body(value);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Checks a frame's announced length before anything is allocated for it.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body (without its prefix).
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (v, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode("trailing bytes".into()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {

    #[test]
    fn lacks_names_exactly_the_missing_blobs() {
        let all: Vec<Hash> = (0u8..20).map(|i| Hash::of(&[i])).collect();
        for missing in [vec![], vec![0], vec![7, 8], (0..20).collect::<Vec<usize>>()] {
            let set = missing.iter().map(|i| all[*i]).collect();
            let lacks = BlobSet::new(&all, &set);
            let want: Vec<Hash> = missing.iter().map(|i| all[*i]).collect();
            assert_eq!(lacks.hashes(&all), want);
            assert!(lacks.len_bytes() <= 3);
        }
    }

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn frame_round_trip() {
        let req = Request::Versions {
            domain: Domain::new("a.example").expect("domain"),
        };
        let frame = encode_frame(&req);
        let len = frame_len(frame[..4].try_into().expect("4")).expect("len");
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_body::<Request>(&frame[4..]), Ok(req));
        assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_body::<Request>(&bytes);
            let _ = decode_body::<Response>(&bytes);
        }
    }
}
