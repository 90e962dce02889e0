//! Network records: what the nodes of a network replicate and merge.
//!
//! Each record is signed by whoever may make it (see `docs/architecture.md`,
//! Trust) and merged last-writer-wins per key by `(version, hash)`: a higher
//! version wins, and between equal versions the higher hash, so every node
//! picks the same winner without a clock.
//!
//! Records must survive a rolling upgrade, where nodes of two versions
//! sync with each other:
//! - A newer format of a known kind only appends fields, so an older node
//!   reads the fields it knows (postcard reads a prefix) and carries the
//!   signed bytes unchanged. A change that is not an append is a new kind.
//! - A kind this build does not know travels as `(kind, signed bytes)` like
//!   every record; it is kept as [`Record::Unknown`]: stored, relayed and
//!   reconciled, never applied. Its signature is checked under the context
//!   every kind after the first six uses ([`kind_context`]); the node limits
//!   how many such records each signer may have it carry.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use crate::{Domain, Hash, Head, NodeTicket, PublicKey, Signed, signed::Signable};

/// The record format this code writes. A newer one only appends fields,
/// which this code reads past.
pub const RECORD_FORMAT: u16 = 1;
/// The genesis format (kept for the name used since the first release).
pub const GENESIS_FORMAT: u16 = RECORD_FORMAT;

/// The first record of a network: its admin keys. Signed by the node that
/// created the network; the BLAKE3 of the signed record is the network id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub format: u16,
    pub admins: Vec<PublicKey>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl Signable for Genesis {
    const CONTEXT: &'static [u8] = b"makiatto/genesis/v1";
}

/// Permission for one new node to join, redeemable once, only at `issuer`.
/// Signed by an admin. The secret itself travels only in the ticket, and
/// never leaves the joining machine: it proves itself to the issuer by
/// signing a [`Claim`] with the key derived from it ([`invite_key`]); the
/// issuer, having checked expiry and single use, answers with the
/// [`Admission`] every member then requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub format: u16,
    pub network: Hash,
    /// BLAKE3 of the ticket's secret: the invite's name.
    pub secret_hash: Hash,
    /// Seconds since the Unix epoch after which the invite is void.
    pub expires: u64,
    /// The only node that may redeem it (single use holds in a partition).
    pub issuer: PublicKey,
    /// The public half of [`invite_key`] of the secret: what a claim must
    /// be signed with.
    pub key: PublicKey,
}

/// The key a ticket's secret gives: whoever holds the ticket signs its
/// node's [`Claim`] with it.
pub fn invite_key(secret: &[u8; 32]) -> crate::SecretKey {
    crate::SecretKey::from_bytes(&blake3::derive_key("makiatto invite admission v1", secret))
}

/// "Node `node` holds the ticket of invite `invite`": signed with the
/// invite's key by the joining machine, and shown to the issuer only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub invite: Hash,
    pub node: PublicKey,
}

impl Signable for Claim {
    const CONTEXT: &'static [u8] = b"makiatto/claim/v1";
}

impl Claim {
    /// Whether `signed` shows that `node` holds the ticket of `invite`
    /// (named `secret_hash`).
    pub fn proves(
        signed: &Signed<Claim>,
        invite: &Invite,
        secret_hash: &Hash,
        node: &PublicKey,
    ) -> bool {
        signed.signer() == invite.key
            && signed
                .verify()
                .is_ok_and(|c| c.invite == *secret_hash && c.node == *node)
    }
}

/// "Node `node` redeemed invite `invite` here": signed by the invite's
/// issuer once it checked the claim, the expiry and that the invite was
/// unused; carried in the node's record. Every member requires it, so an
/// invite admits only whom its issuer let in (knowing an invite's name,
/// as every member does, or even its ticket, admits nobody else), and no
/// other node's record may name the same invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub invite: Hash,
    pub node: PublicKey,
}

impl Signable for Admission {
    const CONTEXT: &'static [u8] = b"makiatto/admission/v1";
}

impl Admission {
    /// Whether `signed` admits `node` through `invite` (named
    /// `secret_hash`).
    pub fn admits(
        signed: &Signed<Admission>,
        invite: &Invite,
        secret_hash: &Hash,
        node: &PublicKey,
    ) -> bool {
        signed.signer() == invite.issuer
            && signed
                .verify()
                .is_ok_and(|a| a.invite == *secret_hash && a.node == *node)
    }
}

impl Signable for Invite {
    const CONTEXT: &'static [u8] = b"makiatto/invite/v1";
}

impl Invite {
    pub fn is_expired(&self, now: u64) -> bool {
        now >= self.expires
    }

    pub fn matches(&self, secret: &[u8; 32]) -> bool {
        Hash::of(secret) == self.secret_hash
    }
}

/// A site: its domain, aliases and who may publish it. Signed by an admin.
/// Removal is a newer version with `removed` set, so it replicates too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub format: u16,
    pub domain: Domain,
    pub aliases: Vec<Domain>,
    pub publishers: Vec<PublicKey>,
    pub version: u64,
    pub removed: bool,
    /// Heads of this domain with a sequence number at or below this are
    /// from before the site was (re-)added, and void: a site removed and
    /// added again (say, for a new owner of the domain) never serves the
    /// old one's content, even offered by a member that missed both
    /// changes. Set when the site is added to the highest head sequence
    /// the admin's node knows for the domain; new heads continue above it.
    pub heads_after: u64,
}

impl Signable for SiteRecord {
    const CONTEXT: &'static [u8] = b"makiatto/site/v1";
}

impl SiteRecord {
    /// The names the site is served at: its domain, then its aliases.
    pub fn names(&self) -> impl Iterator<Item = &Domain> {
        std::iter::once(&self.domain).chain(&self.aliases)
    }

    /// Who may sign this site's heads (publish and roll back): its
    /// publishers and the network's admins. The one rule for both the admin
    /// RPC and the records every node checks, so a head one node takes is a
    /// head every node takes.
    pub fn may_publish(&self, key: &PublicKey, admins: &[PublicKey]) -> bool {
        !self.removed && (self.publishers.contains(key) || admins.contains(key))
    }

    /// Whether a head of this site with sequence number `seq` belongs to
    /// this incarnation of it (see [`SiteRecord::heads_after`]).
    pub fn current(&self, seq: u64) -> bool {
        seq > self.heads_after
    }
}

/// The [`NodeRecord`] format this build writes. Each format appends
/// fields to the one before; the test-only `next-format` feature plays a
/// newer release that appends [`NodeRecord::note`].
pub const NODE_FORMAT: u16 = if cfg!(feature = "next-format") { 6 } else { 5 };

/// A member node, signed by the node itself; valid only together with the
/// admin-signed invite it redeemed (named by hash).
///
/// Read by `format`: the fields a format appended are read only from a
/// record of that format or newer, so a node reads records both of older
/// formats (the appended fields take their empty value) and of newer ones
/// (the fields it does not know are carried in the signed bytes, unread).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRecord {
    pub format: u16,
    pub id: PublicKey,
    pub addrs: Vec<SocketAddr>,
    pub region: Option<String>,
    /// Latitude and longitude in degrees.
    pub location: Option<(f64, f64)>,
    pub version: u64,
    /// Hash of the signed invite this node redeemed; `None` for the node
    /// that created the network (vouched for by the genesis record).
    pub invite: Option<Hash>,
    /// What it offers the public: [`ROLE_HTTP`] (the web edge). Names a
    /// newer node adds are kept and ignored by older ones.
    pub roles: Vec<String>,
    /// Format 2: the issuer's word that this node redeemed `invite` (none
    /// for the founder). A record naming an invite without it admits
    /// nobody.
    pub admission: Option<Signed<Admission>>,
    /// Format 3: the node's public IP addresses, what DNS answers with and
    /// where its WireGuard peers send to (empty: unknown).
    pub ips: Vec<IpAddr>,
    /// Format 3: how members reach it inside the WireGuard mesh; `None`
    /// while its mesh is off.
    pub mesh: Option<MeshPeer>,
    /// Format 4: the port each public role listens at (`http`, `dns`):
    /// where members probe its health.
    pub ports: Vec<(String, u16)>,
    /// Format 5: its X25519 public key, to which admins seal the secrets
    /// it needs (zone-signing keys: [`crate::seal`]); `None` from a node
    /// too old to have one.
    pub seal: Option<[u8; 32]>,
    /// Format 6, test-only (feature `next-format`): a field today's
    /// release does not know.
    #[cfg(feature = "next-format")]
    pub note: Option<String>,
}

/// A member's side of the WireGuard mesh, as its node record announces it.
/// Its mesh address is not here: every node derives it from the network
/// and node ids ([`crate::mesh::member_addr`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPeer {
    /// Its WireGuard (Curve25519) public key.
    pub key: [u8; 32],
    /// The UDP port its WireGuard device listens on, at each of `ips`.
    pub port: u16,
    /// The UDP port of its p2p endpoint at its mesh address.
    pub p2p_port: u16,
    /// Which WireGuard it runs: `kernel` or `userspace` (for people).
    pub backend: String,
}

impl<'de> Deserialize<'de> for NodeRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = NodeRecord;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node record")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NodeRecord, A::Error> {
                macro_rules! field {
                    ($name:literal) => {
                        seq.next_element()?
                            .ok_or_else(|| serde::de::Error::missing_field($name))?
                    };
                }
                // A field a later format appended. Missing or unreadable,
                // it is empty: a build that predates it never reads it, and
                // every build must take the same records.
                macro_rules! appended {
                    ($read:expr, $since:expr) => {
                        if $read >= $since {
                            seq.next_element().ok().flatten().unwrap_or_default()
                        } else {
                            Default::default()
                        }
                    };
                }
                let format: u16 = field!("format");
                Ok(NodeRecord {
                    format,
                    id: field!("id"),
                    addrs: field!("addrs"),
                    region: field!("region"),
                    location: field!("location"),
                    version: field!("version"),
                    invite: field!("invite"),
                    roles: field!("roles"),
                    admission: appended!(format, 2),
                    ips: appended!(format, 3),
                    mesh: appended!(format, 3),
                    ports: appended!(format, 4),
                    seal: appended!(format, 5),
                    #[cfg(feature = "next-format")]
                    note: appended!(format, 6),
                })
            }
        }
        // postcard writes a struct as the tuple of its fields: a reader
        // takes the ones its format has and leaves the rest unread.
        d.deserialize_tuple(NODE_FIELDS, Fields)
    }
}

/// The most fields a [`NodeRecord`] of this build's format has.
const NODE_FIELDS: usize = if cfg!(feature = "next-format") {
    14
} else {
    13
};

/// The role of a node that serves sites over HTTP.
pub const ROLE_HTTP: &str = "http";

/// The role of a node that answers DNS for the sites (a nameserver).
pub const ROLE_DNS: &str = "dns";

impl Signable for NodeRecord {
    const CONTEXT: &'static [u8] = b"makiatto/node/v1";
}

/// A node removed from the network. Signed by an admin; beats any
/// `NodeRecord` of that node, whatever its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub format: u16,
    pub node: PublicKey,
    pub version: u64,
}

impl Signable for Revocation {
    const CONTEXT: &'static [u8] = b"makiatto/revocation/v1";
}

/// Where a site's content lives: only nodes in these regions hold and
/// serve it (empty: every node, the default). Signed by an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub format: u16,
    pub site: Domain,
    pub regions: Vec<String>,
    pub version: u64,
}

impl Signable for Pin {
    const CONTEXT: &'static [u8] = b"makiatto/pin/v1";
}

impl Pin {
    /// Whether a node in `region` should hold the site.
    pub fn admits(&self, region: Option<&str>) -> bool {
        self.regions.is_empty() || region.is_some_and(|r| self.regions.iter().any(|p| p == r))
    }
}

/// The kind number of [`PeerRecord`]: the first kind after the first six,
/// so it is signed under [`kind_context`], and a build that predates it
/// checks and carries it as a kind it does not know.
pub const PEER_KIND: u32 = 6;

/// A machine outside the network an admin lets into the WireGuard mesh (a
/// laptop, a database host): every member with a mesh makes it a peer, at
/// its address in the external subnet ([`crate::mesh::external_addr`]).
/// Signed by an admin; removal is a newer version with `removed` set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub format: u16,
    /// What people call it: 1 to 32 of `a-z`, `0-9` and `-`.
    pub name: String,
    /// Its WireGuard public key.
    pub key: [u8; 32],
    /// Where it listens, if it is reachable (a server); a laptop behind
    /// NAT has none, and starts every handshake itself.
    pub endpoint: Option<SocketAddr>,
    pub version: u64,
    pub removed: bool,
}

impl Signable for PeerRecord {
    const CONTEXT: &'static [u8] = b"makiatto/record/6";
}

/// Whether `name` is a valid [`PeerRecord::name`].
pub fn valid_peer_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The kind number of [`Note`] (test-only, feature `next-format`).
#[cfg(feature = "next-format")]
pub const NOTE_KIND: u32 = 999;

/// A record kind today's release does not know (test-only, feature
/// `next-format`): a member's note about itself, as a newer release would
/// add a kind. Signed by that node under [`kind_context`]`(NOTE_KIND)`, so
/// today's nodes can check it and carry it.
#[cfg(feature = "next-format")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub format: u16,
    pub node: PublicKey,
    pub text: String,
    pub version: u64,
}

#[cfg(feature = "next-format")]
impl Signable for Note {
    const CONTEXT: &'static [u8] = b"makiatto/record/999";
}

/// What a record is about: one winner per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKey {
    Invite(Hash),
    Site(Domain),
    Head(Domain),
    Node(PublicKey),
    Revocation(PublicKey),
    Pin(Domain),
    /// A record of a kind this build does not know, by its identity (it
    /// cannot read the key inside, so each such record is its own).
    Unknown {
        kind: u32,
        id: Hash,
    },
    // Kinds added later go after `Unknown`: keys rest in the store by
    // their postcard bytes, which name the variant by its position.
    Peer(String),
    Zone(Domain),
    Keys(Domain),
    Cert(Domain),
    /// The network's ACME settings: one per network.
    Acme,
    /// The network's ACME account: one per network.
    Account,
    /// Who orders a site's certificate.
    Order(Domain),
    /// The session-ticket secret the `http` nodes share: one per network.
    Tickets,
    #[cfg(feature = "next-format")]
    Note(PublicKey),
}

/// Marks the bytes of a record this build cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unread {}

/// Any replicated record, as it travels: on the wire, its kind (a varint)
/// then the signed record, the same bytes a derived enum would give.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Invite(Signed<Invite>),
    Site(Signed<SiteRecord>),
    Head(Signed<Head>),
    Node(Signed<NodeRecord>),
    Revocation(Signed<Revocation>),
    Pin(Signed<Pin>),
    /// A kind made by a newer node: carried, not applied.
    Unknown {
        kind: u32,
        signed: Signed<Unread>,
    },
    Peer(Signed<PeerRecord>),
    Zone(Signed<crate::zone::ZoneRecord>),
    Keys(Signed<crate::dnssec::ZoneKeys>),
    Cert(Signed<crate::cert::CertRecord>),
    Acme(Signed<crate::acme::AcmeConfig>),
    Account(Signed<crate::acme::AcmeAccount>),
    Order(Signed<crate::acme::AcmeOrder>),
    Tickets(Signed<crate::tickets::TicketKeys>),
    #[cfg(feature = "next-format")]
    Note(Signed<Note>),
}

/// The signature context of record kinds after the first six: a node that
/// does not know a kind can still check who signed it.
pub fn kind_context(kind: u32) -> Vec<u8> {
    format!("makiatto/record/{kind}").into_bytes()
}

impl Record {
    /// The kind number that leads the record on the wire.
    pub fn kind(&self) -> u32 {
        match self {
            Record::Invite(_) => 0,
            Record::Site(_) => 1,
            Record::Head(_) => 2,
            Record::Node(_) => 3,
            Record::Revocation(_) => 4,
            Record::Pin(_) => 5,
            Record::Unknown { kind, .. } => *kind,
            Record::Peer(_) => PEER_KIND,
            Record::Zone(_) => crate::zone::ZONE_KIND,
            Record::Keys(_) => crate::dnssec::KEYS_KIND,
            Record::Cert(_) => crate::cert::CERT_KIND,
            Record::Acme(_) => crate::acme::ACME_KIND,
            Record::Account(_) => crate::acme::ACCOUNT_KIND,
            Record::Order(_) => crate::acme::ORDER_KIND,
            Record::Tickets(_) => crate::tickets::TICKETS_KIND,
            #[cfg(feature = "next-format")]
            Record::Note(_) => NOTE_KIND,
        }
    }
}

impl Record {
    /// Its size on the wire, at most a few bytes over: what a sender counts
    /// to keep a frame of records under its limit.
    pub fn wire_len(&self) -> usize {
        let signed = match self {
            Record::Invite(s) => s.bytes().len(),
            Record::Site(s) => s.bytes().len(),
            Record::Head(s) => s.bytes().len(),
            Record::Node(s) => s.bytes().len(),
            Record::Revocation(s) => s.bytes().len(),
            Record::Pin(s) => s.bytes().len(),
            Record::Unknown { signed, .. } => signed.bytes().len(),
            Record::Peer(s) => s.bytes().len(),
            Record::Zone(s) => s.bytes().len(),
            Record::Keys(s) => s.bytes().len(),
            Record::Cert(s) => s.bytes().len(),
            Record::Acme(s) => s.bytes().len(),
            Record::Account(s) => s.bytes().len(),
            Record::Order(s) => s.bytes().len(),
            Record::Tickets(s) => s.bytes().len(),
            #[cfg(feature = "next-format")]
            Record::Note(s) => s.bytes().len(),
        };
        // Kind and length varints (5 bytes each at most), signer (32) and
        // signature (64, with its length).
        signed + 5 + 5 + 32 + 65
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        match self {
            Record::Invite(r) => (kind, r).serialize(s),
            Record::Site(r) => (kind, r).serialize(s),
            Record::Head(r) => (kind, r).serialize(s),
            Record::Node(r) => (kind, r).serialize(s),
            Record::Revocation(r) => (kind, r).serialize(s),
            Record::Pin(r) => (kind, r).serialize(s),
            Record::Unknown { signed, .. } => (kind, signed).serialize(s),
            Record::Peer(r) => (kind, r).serialize(s),
            Record::Zone(r) => (kind, r).serialize(s),
            Record::Keys(r) => (kind, r).serialize(s),
            Record::Cert(r) => (kind, r).serialize(s),
            Record::Acme(r) => (kind, r).serialize(s),
            Record::Account(r) => (kind, r).serialize(s),
            Record::Order(r) => (kind, r).serialize(s),
            Record::Tickets(r) => (kind, r).serialize(s),
            #[cfg(feature = "next-format")]
            Record::Note(r) => (kind, r).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, signed) = <(u32, Signed<Unread>)>::deserialize(d)?;
        Ok(match kind {
            0 => Record::Invite(signed.retag()),
            1 => Record::Site(signed.retag()),
            2 => Record::Head(signed.retag()),
            3 => Record::Node(signed.retag()),
            4 => Record::Revocation(signed.retag()),
            5 => Record::Pin(signed.retag()),
            PEER_KIND => Record::Peer(signed.retag()),
            crate::zone::ZONE_KIND => Record::Zone(signed.retag()),
            crate::dnssec::KEYS_KIND => Record::Keys(signed.retag()),
            crate::cert::CERT_KIND => Record::Cert(signed.retag()),
            crate::acme::ACME_KIND => Record::Acme(signed.retag()),
            crate::acme::ACCOUNT_KIND => Record::Account(signed.retag()),
            crate::acme::ORDER_KIND => Record::Order(signed.retag()),
            crate::tickets::TICKETS_KIND => Record::Tickets(signed.retag()),
            #[cfg(feature = "next-format")]
            NOTE_KIND => Record::Note(signed.retag()),
            kind => Record::Unknown { kind, signed },
        })
    }
}

/// A record that cannot be taken in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error(transparent)]
    Signature(#[from] crate::SignedError),
}

/// A record whose signature holds, decoded, with its merge position.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub key: RecordKey,
    pub version: u64,
    /// BLAKE3 of the record's wire bytes: the tie-breaker and its identity
    /// in set reconciliation.
    pub hash: Hash,
    pub signer: PublicKey,
    pub body: Body,
}

/// The decoded content of a [`Verified`] record.
#[derive(Debug, Clone, PartialEq)]
// A body lives only while its record is checked and applied, one at a
// time; boxing the node record would cost an allocation for each instead.
#[allow(clippy::large_enum_variant)]
pub enum Body {
    Invite(Invite),
    Site(SiteRecord),
    Head(Head),
    Node(NodeRecord),
    Revocation(Revocation),
    Pin(Pin),
    /// A kind this build cannot read (its signature holds).
    Unknown {
        kind: u32,
        len: usize,
    },
    Peer(PeerRecord),
    Zone(crate::zone::ZoneRecord),
    Keys(crate::dnssec::ZoneKeys),
    Cert(crate::cert::CertRecord),
    Acme(crate::acme::AcmeConfig),
    Account(crate::acme::AcmeAccount),
    Order(crate::acme::AcmeOrder),
    Tickets(crate::tickets::TicketKeys),
    #[cfg(feature = "next-format")]
    Note(Note),
}

impl Record {
    /// Checks the signature and finds the record's key. Whether
    /// the signer had the right is the caller's question: it needs state.
    pub fn verify(&self) -> Result<Verified, RecordError> {
        self.open(true)
    }

    /// [`Self::verify`] without the signature check: only for a record
    /// this process verified before it stored it.
    pub fn open_trusted(&self) -> Result<Verified, RecordError> {
        self.open(false)
    }

    fn open(&self, verify: bool) -> Result<Verified, RecordError> {
        let hash = Hash::of(&crate::codec::encode(self));
        let (key, version, signer, body) = match self {
            Record::Invite(s) => {
                let v = content(s, verify)?;
                // An invite never changes: its version is fixed.
                (
                    RecordKey::Invite(v.secret_hash),
                    0,
                    s.signer(),
                    Body::Invite(v),
                )
            }
            Record::Site(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Site(v.domain.clone()),
                    v.version,
                    s.signer(),
                    Body::Site(v),
                )
            }
            Record::Head(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Head(v.site.clone()),
                    v.seq,
                    s.signer(),
                    Body::Head(v),
                )
            }
            Record::Node(s) => {
                let v = content(s, verify)?;
                (RecordKey::Node(v.id), v.version, s.signer(), Body::Node(v))
            }
            Record::Revocation(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Revocation(v.node),
                    v.version,
                    s.signer(),
                    Body::Revocation(v),
                )
            }
            Record::Pin(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Pin(v.site.clone()),
                    v.version,
                    s.signer(),
                    Body::Pin(v),
                )
            }
            Record::Peer(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Peer(v.name.clone()),
                    v.version,
                    s.signer(),
                    Body::Peer(v),
                )
            }
            Record::Zone(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Zone(v.site.clone()),
                    v.version,
                    s.signer(),
                    Body::Zone(v),
                )
            }
            Record::Keys(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Keys(v.site.clone()),
                    v.version,
                    s.signer(),
                    Body::Keys(v),
                )
            }
            Record::Cert(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Cert(v.site.clone()),
                    v.version,
                    s.signer(),
                    Body::Cert(v),
                )
            }
            Record::Acme(s) => {
                let v = content(s, verify)?;
                (RecordKey::Acme, v.version, s.signer(), Body::Acme(v))
            }
            Record::Account(s) => {
                let v = content(s, verify)?;
                (RecordKey::Account, v.version, s.signer(), Body::Account(v))
            }
            Record::Order(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Order(v.site.clone()),
                    v.version,
                    s.signer(),
                    Body::Order(v),
                )
            }
            Record::Tickets(s) => {
                let v = content(s, verify)?;
                (RecordKey::Tickets, v.version, s.signer(), Body::Tickets(v))
            }
            #[cfg(feature = "next-format")]
            Record::Note(s) => {
                let v = content(s, verify)?;
                (
                    RecordKey::Note(v.node),
                    v.version,
                    s.signer(),
                    Body::Note(v),
                )
            }
            Record::Unknown { kind, signed } => {
                if verify {
                    signed.holds_under(&kind_context(*kind))?;
                }
                (
                    RecordKey::Unknown {
                        kind: *kind,
                        id: hash,
                    },
                    0,
                    signed.signer(),
                    Body::Unknown {
                        kind: *kind,
                        len: signed.bytes().len(),
                    },
                )
            }
        };
        Ok(Verified {
            key,
            version,
            hash,
            signer,
            body,
        })
    }
}

fn content<T: crate::Signable>(s: &Signed<T>, verify: bool) -> Result<T, crate::SignedError> {
    if verify {
        s.verify()
    } else {
        s.decode_trusted()
    }
}

impl Verified {
    /// Last-writer-wins: true when `self` should replace `other` (same key).
    pub fn wins_over(&self, other: &Verified) -> bool {
        (self.version, self.hash) > (other.version, other.hash)
    }
}

/// What [`authorize`] needs to know of the current state.
pub trait View {
    /// The network's id (the hash of its genesis record).
    fn network(&self) -> Hash;
    /// The network's admins (from genesis).
    fn admins(&self) -> &[PublicKey];
    /// The node that created the network (the genesis signer).
    fn founder(&self) -> PublicKey;
    /// The current record of a site, if any.
    fn site(&self, domain: &Domain) -> Option<SiteRecord>;
    /// An invite by its secret hash, if known.
    fn invite(&self, secret_hash: &Hash) -> Option<Invite>;
    /// True when an admin revoked this node.
    fn revoked(&self, node: &PublicKey) -> bool;
    /// The node whose record names this invite, if any (revoked or not).
    fn invite_holder(&self, secret_hash: &Hash) -> Option<PublicKey>;
    /// An admin, a member node or a publisher of a site: the keys whose
    /// records of unknown kinds a node agrees to carry.
    fn known_signer(&self, key: &PublicKey) -> bool;
    /// A member node: its record is in, and it is not revoked.
    fn member(&self, key: &PublicKey) -> bool;
}

/// A record signed by someone without the right to make it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("signed by {0}, who is not an admin")]
    NotAdmin(PublicKey),
    #[error("{0:?} is not a peer name (1 to 32 of a-z, 0-9 and -)")]
    BadPeerName(String),
    #[error("head for {site} signed by {key}, who is neither one of its publishers nor an admin")]
    NotPublisher { site: Domain, key: PublicKey },
    #[error("head for unknown or removed site {0}")]
    UnknownSite(Domain),
    #[error(
        "head {seq} for {site} is from before the site was added again (its heads start after {heads_after})"
    )]
    BeforeSite {
        site: Domain,
        seq: u64,
        heads_after: u64,
    },
    #[error("node record for {node} not signed by that node")]
    NotSelfSigned { node: PublicKey },
    #[error("node {0} names no invite this network knows")]
    NoInvite(PublicKey),
    #[error("an invite for another network ({0})")]
    OtherNetwork(Hash),
    #[error("node {0} does not prove it redeemed the invite it names")]
    NoAdmission(PublicKey),
    #[error("node {node} names an invite node {holder} redeemed")]
    InviteTaken { node: PublicKey, holder: PublicKey },
    #[error(
        "a record of unknown kind {kind} signed by {key}, who is no admin, member or publisher"
    )]
    UnknownSigner { kind: u32, key: PublicKey },
    #[error("the DNS records of {site}: {error}")]
    Zone {
        site: Domain,
        error: crate::zone::ZoneError,
    },
    #[error("the DNSSEC keys of {site}: {error}")]
    Keys {
        site: Domain,
        error: crate::dnssec::KeysError,
    },
    #[error("the certificate of {site}: {error}")]
    Cert {
        site: Domain,
        error: crate::cert::CertError,
    },
    #[error("the ACME settings: {0}")]
    Acme(crate::acme::AcmeError),
    #[error("the ACME account, signed by {key}: {error}")]
    Account {
        key: PublicKey,
        error: AccountRefusal,
    },
    #[error("the certificate order of {site}: {error}")]
    Order {
        site: Domain,
        error: crate::acme::OrderError,
    },
    #[error("the session-ticket keys, signed by {key}: {error}")]
    Tickets {
        key: PublicKey,
        error: TicketsRefusal,
    },
}

/// Why a ticket-key record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketsRefusal {
    #[error("not a member node")]
    Signer,
    #[error(transparent)]
    Record(#[from] crate::tickets::TicketKeysError),
}

/// Why an account record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountRefusal {
    #[error("neither an admin nor a member node")]
    Signer,
    #[error(transparent)]
    Record(#[from] crate::acme::AccountError),
}

/// Whether the signer of `v` had the right to make it, given `view`:
/// invites, sites and revocations come from admins; a head from one of its
/// site's publishers or an admin; a node record from the node itself, backed by an
/// invite it redeemed (or by genesis, for the founder) and not revoked.
pub fn authorize(v: &Verified, view: &impl View) -> Result<(), AuthError> {
    let admin = |key: PublicKey| {
        if view.admins().contains(&key) {
            Ok(())
        } else {
            Err(AuthError::NotAdmin(key))
        }
    };
    match &v.body {
        Body::Invite(i) if i.network != view.network() => Err(AuthError::OtherNetwork(i.network)),
        Body::Invite(_) | Body::Site(_) | Body::Revocation(_) | Body::Pin(_) => admin(v.signer),
        Body::Peer(p) if !valid_peer_name(&p.name) => Err(AuthError::BadPeerName(p.name.clone())),
        Body::Peer(_) => admin(v.signer),
        // Whether a name belongs to another site is judged where the
        // records are used (the longest zone wins), not here: every node
        // must take the same records whatever sites it knows yet.
        Body::Zone(z) => match view.site(&z.site) {
            Some(site) if !site.removed => {
                if !site.may_publish(&v.signer, view.admins()) {
                    Err(AuthError::NotPublisher {
                        site: z.site.clone(),
                        key: v.signer,
                    })
                } else if z.incarnation != site.heads_after {
                    Err(AuthError::Zone {
                        site: z.site.clone(),
                        error: crate::zone::ZoneError::OtherIncarnation,
                    })
                } else {
                    z.check().map_err(|error| AuthError::Zone {
                        site: z.site.clone(),
                        error,
                    })
                }
            }
            _ => Err(AuthError::UnknownSite(z.site.clone())),
        },
        Body::Keys(k) => {
            admin(v.signer)?;
            match view.site(&k.site) {
                Some(site) if !site.removed => {
                    let error = |error| AuthError::Keys {
                        site: k.site.clone(),
                        error,
                    };
                    if k.incarnation != site.heads_after {
                        return Err(error(crate::dnssec::KeysError::OtherIncarnation));
                    }
                    k.check().map_err(error)
                }
                _ => Err(AuthError::UnknownSite(k.site.clone())),
            }
        }
        Body::Acme(a) => {
            admin(v.signer)?;
            a.check().map_err(AuthError::Acme)
        }
        Body::Account(a) => {
            let error = |error| AuthError::Account {
                key: v.signer,
                error,
            };
            if !(view.admins().contains(&v.signer) || view.member(&v.signer)) {
                return Err(error(AccountRefusal::Signer));
            }
            a.check().map_err(|e| error(e.into()))
        }
        Body::Tickets(t) => {
            let error = |error| AuthError::Tickets {
                key: v.signer,
                error,
            };
            if !view.member(&v.signer) {
                return Err(error(TicketsRefusal::Signer));
            }
            t.check().map_err(|e| error(e.into()))
        }
        Body::Order(o) => match view.site(&o.site) {
            Some(site) if !site.removed => {
                let error = |error| AuthError::Order {
                    site: o.site.clone(),
                    error,
                };
                if v.signer != o.holder || !view.member(&v.signer) {
                    return Err(error(crate::acme::OrderError::NotHolder));
                }
                if o.incarnation != site.heads_after {
                    return Err(error(crate::acme::OrderError::OtherIncarnation));
                }
                let names: Vec<&str> = site.names().map(Domain::as_str).collect();
                o.check(&names).map_err(error)
            }
            _ => Err(AuthError::UnknownSite(o.site.clone())),
        },
        Body::Cert(c) => match view.site(&c.site) {
            Some(site) if !site.removed => {
                if !(site.may_publish(&v.signer, view.admins()) || view.member(&v.signer)) {
                    return Err(AuthError::NotPublisher {
                        site: c.site.clone(),
                        key: v.signer,
                    });
                }
                let error = |error| AuthError::Cert {
                    site: c.site.clone(),
                    error,
                };
                if c.incarnation != site.heads_after {
                    return Err(error(crate::cert::CertError::OtherIncarnation));
                }
                let names: Vec<&str> = site.names().map(Domain::as_str).collect();
                c.check(&names).map_err(error)
            }
            _ => Err(AuthError::UnknownSite(c.site.clone())),
        },
        Body::Head(h) => match view.site(&h.site) {
            Some(site) if !site.removed => {
                if !site.current(h.seq) {
                    Err(AuthError::BeforeSite {
                        site: h.site.clone(),
                        seq: h.seq,
                        heads_after: site.heads_after,
                    })
                } else if site.may_publish(&v.signer, view.admins()) {
                    Ok(())
                } else {
                    Err(AuthError::NotPublisher {
                        site: h.site.clone(),
                        key: v.signer,
                    })
                }
            }
            _ => Err(AuthError::UnknownSite(h.site.clone())),
        },
        Body::Node(n) => {
            if v.signer != n.id {
                return Err(AuthError::NotSelfSigned { node: n.id });
            }
            // A revoked node's record is still taken in (a revocation beats
            // it: the node is no member): the invite it names stays used.
            match n.invite {
                None if n.id == view.founder() => Ok(()),
                None => Err(AuthError::NoInvite(n.id)),
                Some(secret_hash) => {
                    let invite = view.invite(&secret_hash).ok_or(AuthError::NoInvite(n.id))?;
                    let admitted = n
                        .admission
                        .as_ref()
                        .is_some_and(|a| Admission::admits(a, &invite, &secret_hash, &n.id));
                    if !admitted {
                        return Err(AuthError::NoAdmission(n.id));
                    }
                    match view.invite_holder(&secret_hash) {
                        Some(holder) if holder != n.id => {
                            Err(AuthError::InviteTaken { node: n.id, holder })
                        }
                        _ => Ok(()),
                    }
                }
            }
        }
        #[cfg(feature = "next-format")]
        Body::Note(n) => {
            if v.signer != n.node {
                Err(AuthError::NotSelfSigned { node: n.node })
            } else if view.known_signer(&v.signer) {
                Ok(())
            } else {
                Err(AuthError::UnknownSigner {
                    kind: NOTE_KIND,
                    key: v.signer,
                })
            }
        }
        // What it may say is for a node that knows the kind to judge; this
        // one only carries it, for someone the network knows.
        Body::Unknown { kind, .. } => {
            if view.known_signer(&v.signer) {
                Ok(())
            } else {
                Err(AuthError::UnknownSigner {
                    kind: *kind,
                    key: v.signer,
                })
            }
        }
    }
}

const INVITE_PREFIX: &str = "makinvite1";

/// What `maki invite` prints: the network, the one-time secret and where to
/// redeem it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteTicket {
    pub network: Hash,
    pub secret: [u8; 32],
    pub issuer: NodeTicket,
}

impl fmt::Display for InviteTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = crate::codec::encode(self);
        write!(f, "{INVITE_PREFIX}{}", crate::ticket::encode_b32(&bytes))
    }
}

impl FromStr for InviteTicket {
    type Err = crate::TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(INVITE_PREFIX)
            .ok_or(crate::TicketError::WrongPrefix)?;
        let bytes = crate::ticket::decode_b32(body)?;
        let (ticket, rest) = postcard::take_from_bytes::<InviteTicket>(&bytes)
            .map_err(|e| crate::TicketError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(crate::TicketError::Decode("trailing bytes".into()));
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::SecretKey;

    fn site(version: u64) -> SiteRecord {
        SiteRecord {
            format: RECORD_FORMAT,
            domain: Domain::new("a.test").expect("domain"),
            aliases: vec![],
            publishers: vec![],
            version,
            removed: false,
            heads_after: 0,
        }
    }

    #[test]
    fn newer_version_wins_and_ties_break_by_hash() {
        let admin = SecretKey::from_bytes(&[1; 32]);
        let v1 = Record::Site(Signed::sign(&admin, &site(1)))
            .verify()
            .expect("v1");
        let v2 = Record::Site(Signed::sign(&admin, &site(2)))
            .verify()
            .expect("v2");
        assert_eq!(v1.key, v2.key);
        assert!(v2.wins_over(&v1) && !v1.wins_over(&v2));

        let mut other = site(2);
        other.removed = true;
        let v2b = Record::Site(Signed::sign(&admin, &other))
            .verify()
            .expect("v2b");
        // Exactly one of two different records of the same version wins.
        assert!(v2b.wins_over(&v2) != v2.wins_over(&v2b));
    }

    #[test]
    fn newer_formats_are_read_by_the_fields_known() {
        let admin = SecretKey::from_bytes(&[1; 32]);
        let mut v1 = site(1);
        v1.format = RECORD_FORMAT + 1;
        // Signed as the newer node would: same context, more bytes.
        let newer =
            Signed::<SiteRecord>::sign_bytes(&admin, crate::codec::encode(&(v1.clone(), 99u64)));
        let record = Record::Site(newer);
        let verified = record.verify().expect("read by prefix");
        assert_eq!(verified.body, Body::Site(v1));
        // Carried unchanged: the same bytes, so the same identity everywhere.
        let wire = crate::codec::encode(&record);
        let back: Record = postcard::from_bytes(&wire).expect("decode");
        assert_eq!(back, record);
        assert_eq!(back.verify().expect("again").hash, verified.hash);
    }

    fn node_v1() -> NodeRecord {
        NodeRecord {
            format: 1,
            id: SecretKey::from_bytes(&[6; 32]).public(),
            addrs: vec!["127.0.0.1:1".parse().expect("addr")],
            region: Some("eu".into()),
            location: None,
            version: 7,
            invite: None,
            roles: vec![ROLE_HTTP.into()],
            admission: None,
            ips: vec![],
            mesh: None,
            ports: vec![],
            seal: None,
            #[cfg(feature = "next-format")]
            note: None,
        }
    }

    /// The bytes a format-1 node record has (what today's release signs).
    fn node_v1_bytes(n: &NodeRecord) -> Vec<u8> {
        crate::codec::encode(&(
            n.format, n.id, &n.addrs, &n.region, n.location, n.version, n.invite, &n.roles,
        ))
    }

    #[test]
    fn node_records_of_a_newer_format_are_read_by_the_fields_known() {
        let key = SecretKey::from_bytes(&[6; 32]);
        let mut newer = node_v1();
        newer.format = 9;
        let mut bytes = node_v1_bytes(&newer);
        bytes.extend(crate::codec::encode(&(Some("a field from later"), 5u64)));
        let record = Record::Node(Signed::sign_bytes(&key, bytes));
        match record.verify().expect("read by prefix").body {
            Body::Node(read) => {
                assert_eq!(read.format, 9);
                assert_eq!(read.id, newer.id);
                assert_eq!(read.roles, newer.roles);
            }
            other => panic!("not a node record: {other:?}"),
        }
    }

    #[test]
    fn node_records_of_an_older_format_are_read_with_empty_new_fields() {
        let key = SecretKey::from_bytes(&[6; 32]);
        let v1 = node_v1();
        let record = Record::Node(Signed::sign_bytes(&key, node_v1_bytes(&v1)));
        assert_eq!(record.verify().expect("v1").body, Body::Node(v1.clone()));
        // What this build writes reads back whole.
        let mine = NodeRecord {
            format: NODE_FORMAT,
            ips: vec![
                "192.0.2.7".parse().expect("ip"),
                "2001:db8::7".parse().expect("ip"),
            ],
            mesh: Some(MeshPeer {
                key: [9; 32],
                port: 51820,
                p2p_port: 51821,
                backend: "userspace".into(),
            }),
            ports: vec![(ROLE_HTTP.into(), 80), ("dns".into(), 53)],
            seal: Some([4; 32]),
            ..v1
        };
        let record = Record::Node(Signed::sign(&key, &mine));
        assert_eq!(record.verify().expect("own").body, Body::Node(mine));
    }

    #[cfg(feature = "next-format")]
    #[test]
    fn the_next_format_plays_a_newer_release() {
        assert_eq!(Note::CONTEXT, kind_context(NOTE_KIND).as_slice());
        let key = SecretKey::from_bytes(&[6; 32]);
        let mut n = node_v1();
        n.format = NODE_FORMAT;
        n.note = Some("hello".into());
        let record = Record::Node(Signed::sign(&key, &n));
        assert_eq!(record.verify().expect("v2").body, Body::Node(n.clone()));
        // Format 2 without the field, or with bytes that are not one: read
        // as empty, as today's build (which never reads it) takes it.
        for tail in [vec![], vec![7u8]] {
            let mut bytes = node_v1_bytes(&n);
            bytes.extend(tail);
            let record = Record::Node(Signed::sign_bytes(&key, bytes));
            match record.verify().expect("lenient").body {
                Body::Node(read) => assert_eq!((read.format, read.note), (NODE_FORMAT, None)),
                other => panic!("not a node record: {other:?}"),
            }
        }
        let note = Note {
            format: 1,
            node: key.public(),
            text: "hi".into(),
            version: 1,
        };
        let record = Record::Note(Signed::sign(&key, &note));
        let wire = crate::codec::encode(&record);
        let back: Record = postcard::from_bytes(&wire).expect("decode");
        assert_eq!(back, record);
        let v = back.verify().expect("verify");
        assert_eq!(v.key, RecordKey::Note(key.public()));
        // What today's release sees: the same bytes, as an unknown kind
        // whose signature holds under the kind's context.
        let signed = Signed::<Unread>::sign_bytes_under(
            &key,
            &kind_context(NOTE_KIND),
            crate::codec::encode(&note),
        );
        assert_eq!(
            crate::codec::encode(&(NOTE_KIND, &signed)),
            wire,
            "the wire form of a new kind is the generic one"
        );
    }

    #[test]
    fn unknown_kinds_are_carried_with_their_signature_checked() {
        let signer = SecretKey::from_bytes(&[5; 32]);
        let body = b"a record of a kind from the future".to_vec();
        let signed = Signed::<Unread>::sign_bytes_under(&signer, &kind_context(99), body.clone());
        let wire = postcard::to_stdvec(&(99u32, &signed)).expect("encode");
        let record: Record = postcard::from_bytes(&wire).expect("a whole batch still decodes");
        assert!(matches!(record, Record::Unknown { kind: 99, .. }));
        assert_eq!(crate::codec::encode(&record), wire, "relayed byte for byte");
        let v = record.verify().expect("signature holds");
        assert_eq!(
            v.key,
            RecordKey::Unknown {
                kind: 99,
                id: Hash::of(&wire)
            }
        );
        assert_eq!(v.signer, signer.public());

        // Under another kind's context, or with a byte flipped, it does not.
        let mut wire2 = postcard::to_stdvec(&(10u32, &signed)).expect("encode");
        let other: Record = postcard::from_bytes(&wire2).expect("decode");
        assert!(other.verify().is_err());
        let last = wire2.len() - 70;
        wire2[last] ^= 1;
        let flipped: Record = postcard::from_bytes(&wire2).expect("decode");
        assert!(flipped.verify().is_err());

        // Known kinds keep the bytes a derived enum gave them.
        let admin = SecretKey::from_bytes(&[1; 32]);
        let site = Signed::sign(&admin, &site(3));
        let derived = postcard::to_stdvec(&(1u32, &site)).expect("encode");
        assert_eq!(crate::codec::encode(&Record::Site(site)), derived);
    }

    #[test]
    fn invite_ticket_round_trip() {
        let t = InviteTicket {
            network: Hash::of(b"net"),
            secret: [7; 32],
            issuer: NodeTicket {
                id: SecretKey::from_bytes(&[3; 32]).public(),
                addrs: vec!["127.0.0.1:51821".parse().expect("addr")],
            },
        };
        let s = t.to_string();
        assert!(s.starts_with("makinvite1") && s == s.to_lowercase());
        assert_eq!(s.parse::<InviteTicket>(), Ok(t.clone()));
        assert!(
            s.replace("makinvite1", "makinode1")
                .parse::<InviteTicket>()
                .is_err()
        );
        let invite = Invite {
            format: RECORD_FORMAT,
            network: t.network,
            secret_hash: Hash::of(&t.secret),
            expires: 100,
            issuer: t.issuer.id,
            key: invite_key(&t.secret).public(),
        };
        assert!(invite.matches(&t.secret) && !invite.matches(&[8; 32]));
        assert!(!invite.is_expired(99) && invite.is_expired(100));
    }

    struct TestView {
        admins: Vec<PublicKey>,
        founder: PublicKey,
        site: Option<SiteRecord>,
        invite: Option<Invite>,
        revoked: Vec<PublicKey>,
        holder: Option<PublicKey>,
    }

    impl View for TestView {
        fn network(&self) -> Hash {
            Hash::of(b"net")
        }
        fn admins(&self) -> &[PublicKey] {
            &self.admins
        }
        fn founder(&self) -> PublicKey {
            self.founder
        }
        fn site(&self, domain: &Domain) -> Option<SiteRecord> {
            self.site.clone().filter(|s| &s.domain == domain)
        }
        fn invite(&self, secret_hash: &Hash) -> Option<Invite> {
            self.invite
                .clone()
                .filter(|i| &i.secret_hash == secret_hash)
        }
        fn revoked(&self, node: &PublicKey) -> bool {
            self.revoked.contains(node)
        }
        fn invite_holder(&self, _: &Hash) -> Option<PublicKey> {
            self.holder
        }
        fn known_signer(&self, key: &PublicKey) -> bool {
            self.admins.contains(key)
        }
        fn member(&self, key: &PublicKey) -> bool {
            *key == self.founder
        }
    }

    #[test]
    fn only_the_right_signers_pass() {
        let admin = SecretKey::from_bytes(&[1; 32]);
        let publisher = SecretKey::from_bytes(&[2; 32]);
        let stranger = SecretKey::from_bytes(&[3; 32]);
        let founder = SecretKey::from_bytes(&[4; 32]);
        let joiner = SecretKey::from_bytes(&[5; 32]);
        let mut s = site(1);
        s.publishers = vec![publisher.public()];
        let secret = [9; 32];
        let invite = Invite {
            format: RECORD_FORMAT,
            network: Hash::of(b"net"),
            secret_hash: Hash::of(&secret),
            expires: 10,
            issuer: founder.public(),
            key: invite_key(&secret).public(),
        };
        let mut view = TestView {
            admins: vec![admin.public()],
            founder: founder.public(),
            site: Some(s.clone()),
            invite: Some(invite.clone()),
            revoked: vec![],
            holder: None,
        };
        let check = |r: Record, view: &TestView| authorize(&r.verify().expect("verify"), view);

        assert_eq!(check(Record::Site(Signed::sign(&admin, &s)), &view), Ok(()));
        // A site's DNS records: its publishers and admins, for the site as
        // it is now, and only records a tenant may set.
        let zone = crate::zone::ZoneRecord {
            format: 1,
            site: s.domain.clone(),
            incarnation: s.heads_after,
            records: vec![crate::zone::UserRecord {
                name: "www".into(),
                ttl: 300,
                data: crate::zone::Data::Cname("a.test.".into()),
            }],
            version: 1,
        };
        assert_eq!(
            check(Record::Zone(Signed::sign(&publisher, &zone)), &view),
            Ok(())
        );
        assert_eq!(
            check(Record::Zone(Signed::sign(&admin, &zone)), &view),
            Ok(())
        );
        assert!(matches!(
            check(Record::Zone(Signed::sign(&stranger, &zone)), &view),
            Err(AuthError::NotPublisher { .. })
        ));
        // DNSSEC keys are secrets: only admins make them, a site's
        // publisher no more than a stranger.
        let keys = crate::dnssec::ZoneKeys {
            format: 1,
            site: s.domain.clone(),
            incarnation: s.heads_after,
            keys: vec![vec![1; 64]],
            sealed: vec![crate::seal::Sealed {
                to: [2; 32],
                enc: [3; 32],
                ct: vec![0; 80],
            }],
            version: 1,
        };
        assert_eq!(
            check(Record::Keys(Signed::sign(&admin, &keys)), &view),
            Ok(())
        );
        for who in [&publisher, &stranger] {
            assert!(matches!(
                check(Record::Keys(Signed::sign(who, &keys)), &view),
                Err(AuthError::NotAdmin(_))
            ));
        }
        let unsealed = crate::dnssec::ZoneKeys {
            sealed: vec![],
            ..keys.clone()
        };
        assert!(matches!(
            check(Record::Keys(Signed::sign(&admin, &unsealed)), &view),
            Err(AuthError::Keys { .. })
        ));
        // A certificate: its site's publishers (an upload), admins and
        // member nodes (an ACME order), for the site's own names only.
        let cert = crate::cert::CertRecord {
            format: 1,
            site: s.domain.clone(),
            incarnation: s.heads_after,
            origin: crate::cert::Origin::Upload,
            names: vec![s.domain.as_str().to_owned()],
            chain: vec![crate::cert::test_leaf().0],
            not_after: crate::cert::test_leaf().1,
            sealed: keys.sealed.clone(),
            version: 1,
        };
        for who in [&publisher, &admin, &founder] {
            assert_eq!(check(Record::Cert(Signed::sign(who, &cert)), &view), Ok(()));
        }
        assert!(matches!(
            check(Record::Cert(Signed::sign(&stranger, &cert)), &view),
            Err(AuthError::NotPublisher { .. })
        ));
        // Orders: only a member node, as itself; an account: a member
        // node or an admin, never a site's publisher.
        let order = crate::acme::AcmeOrder {
            format: 1,
            site: s.domain.clone(),
            incarnation: s.heads_after,
            holder: founder.public(),
            until: 1,
            challenges: vec![],
            failures: 0,
            error: None,
            retry_at: 0,
            settings: 0,
            version: 1,
        };
        assert_eq!(
            check(Record::Order(Signed::sign(&founder, &order)), &view),
            Ok(())
        );
        for who in [&publisher, &admin] {
            let theirs = crate::acme::AcmeOrder {
                holder: who.public(),
                ..order.clone()
            };
            assert!(matches!(
                check(Record::Order(Signed::sign(who, &theirs)), &view),
                Err(AuthError::Order {
                    error: crate::acme::OrderError::NotHolder,
                    ..
                })
            ));
        }
        assert!(matches!(
            check(Record::Order(Signed::sign(&admin, &order)), &view),
            Err(AuthError::Order { .. })
        ));
        let account = crate::acme::AcmeAccount {
            format: 1,
            directory: "https://acme.test/dir".into(),
            url: "https://acme.test/acct/1".into(),
            sealed: keys.sealed.clone(),
            version: 1,
        };
        for who in [&founder, &admin] {
            assert_eq!(
                check(Record::Account(Signed::sign(who, &account)), &view),
                Ok(())
            );
        }
        assert!(matches!(
            check(Record::Account(Signed::sign(&publisher, &account)), &view),
            Err(AuthError::Account {
                error: AccountRefusal::Signer,
                ..
            })
        ));
        // The ticket secret: member nodes only (admins serve no TLS).
        let tickets = crate::tickets::TicketKeys {
            format: 1,
            made: 1,
            sealed: vec![crate::seal::Sealed {
                to: [1; 32],
                enc: [2; 32],
                ct: vec![0; crate::tickets::SECRET_LEN + 16],
            }],
            version: 1,
        };
        assert_eq!(
            check(Record::Tickets(Signed::sign(&founder, &tickets)), &view),
            Ok(())
        );
        assert!(matches!(
            check(Record::Tickets(Signed::sign(&admin, &tickets)), &view),
            Err(AuthError::Tickets {
                error: TicketsRefusal::Signer,
                ..
            })
        ));
        let mut foreign = cert.clone();
        foreign.names.push("other.test".into());
        assert!(matches!(
            check(Record::Cert(Signed::sign(&publisher, &foreign)), &view),
            Err(AuthError::Cert {
                error: crate::cert::CertError::NotTheSites { .. },
                ..
            })
        ));
        let stale = crate::dnssec::ZoneKeys {
            incarnation: s.heads_after + 1,
            ..keys
        };
        assert!(matches!(
            check(Record::Keys(Signed::sign(&admin, &stale)), &view),
            Err(AuthError::Keys { .. })
        ));
        let older = crate::zone::ZoneRecord {
            incarnation: s.heads_after + 1,
            ..zone.clone()
        };
        assert!(matches!(
            check(Record::Zone(Signed::sign(&publisher, &older)), &view),
            Err(AuthError::Zone {
                error: crate::zone::ZoneError::OtherIncarnation,
                ..
            })
        ));
        let mut acme = zone.clone();
        acme.records[0].name = "_acme-challenge".into();
        assert!(matches!(
            check(Record::Zone(Signed::sign(&publisher, &acme)), &view),
            Err(AuthError::Zone {
                error: crate::zone::ZoneError::AcmeChallenge(_),
                ..
            })
        ));
        // An invite of another network (an admin of both) is refused here.
        let elsewhere = Invite {
            network: Hash::of(b"elsewhere"),
            ..invite.clone()
        };
        assert_eq!(
            check(Record::Invite(Signed::sign(&admin, &elsewhere)), &view),
            Err(AuthError::OtherNetwork(Hash::of(b"elsewhere")))
        );
        assert_eq!(
            check(Record::Site(Signed::sign(&stranger, &s)), &view),
            Err(AuthError::NotAdmin(stranger.public()))
        );
        assert!(check(Record::Invite(Signed::sign(&publisher, &invite)), &view).is_err());

        let head = Head {
            site: s.domain.clone(),
            seq: 1,
            manifest: Hash::of(b"m"),
        };
        assert_eq!(
            check(Record::Head(Signed::sign(&publisher, &head)), &view),
            Ok(())
        );
        // An admin may publish any site through the admin RPC, so every
        // node must take the admin's head too (one rule for both).
        assert_eq!(
            check(Record::Head(Signed::sign(&admin, &head)), &view),
            Ok(())
        );
        assert!(matches!(
            check(Record::Head(Signed::sign(&stranger, &head)), &view),
            Err(AuthError::NotPublisher { .. })
        ));

        // A site added again starts its heads above the old ones: an old
        // head, even signed by someone who may still publish, is void.
        let mut again = s.clone();
        again.heads_after = 5;
        view.site = Some(again);
        let old = Head {
            seq: 5,
            ..head.clone()
        };
        assert_eq!(
            check(Record::Head(Signed::sign(&publisher, &old)), &view),
            Err(AuthError::BeforeSite {
                site: s.domain.clone(),
                seq: 5,
                heads_after: 5
            })
        );
        let new = Head {
            seq: 6,
            ..head.clone()
        };
        assert_eq!(
            check(Record::Head(Signed::sign(&publisher, &new)), &view),
            Ok(())
        );
        view.site = Some(s.clone());

        let admission = |by: &SecretKey, node: PublicKey| {
            Signed::sign(
                by,
                &Admission {
                    invite: invite.secret_hash,
                    node,
                },
            )
        };
        let ticket_key = invite_key(&secret);
        let node = |id: PublicKey, invite: Option<Hash>| NodeRecord {
            format: NODE_FORMAT,
            id,
            addrs: vec![],
            region: Some("eu".into()),
            location: Some((50.1, 8.7)),
            version: 1,
            invite,
            roles: vec![ROLE_HTTP.into()],
            admission: invite.map(|_| admission(&founder, id)),
            ips: vec![],
            mesh: None,
            ports: vec![],
            seal: None,
            #[cfg(feature = "next-format")]
            note: None,
        };
        let founding = node(founder.public(), None);
        assert_eq!(
            check(Record::Node(Signed::sign(&founder, &founding)), &view),
            Ok(())
        );
        let joined = node(joiner.public(), Some(invite.secret_hash));
        assert_eq!(
            check(Record::Node(Signed::sign(&joiner, &joined)), &view),
            Ok(())
        );
        // Someone else signing the joiner's record, or a node without invite.
        assert!(matches!(
            check(Record::Node(Signed::sign(&admin, &joined)), &view),
            Err(AuthError::NotSelfSigned { .. })
        ));
        // Naming the invite is not enough: the admission must be the
        // issuer's, for this node. The ticket's own key does not admit
        // (a ticket holder cannot let anyone in past the issuer's checks).
        let mut bare = node(stranger.public(), Some(invite.secret_hash));
        bare.admission = None;
        assert_eq!(
            check(Record::Node(Signed::sign(&stranger, &bare)), &view),
            Err(AuthError::NoAdmission(stranger.public()))
        );
        let mut forged = bare.clone();
        forged.admission = Some(admission(&stranger, stranger.public()));
        assert_eq!(
            check(Record::Node(Signed::sign(&stranger, &forged)), &view),
            Err(AuthError::NoAdmission(stranger.public()))
        );
        let mut with_ticket = bare.clone();
        with_ticket.admission = Some(admission(&ticket_key, stranger.public()));
        assert_eq!(
            check(Record::Node(Signed::sign(&stranger, &with_ticket)), &view),
            Err(AuthError::NoAdmission(stranger.public()))
        );
        let mut borrowed = bare.clone();
        borrowed.admission = Some(admission(&founder, joiner.public()));
        assert_eq!(
            check(Record::Node(Signed::sign(&stranger, &borrowed)), &view),
            Err(AuthError::NoAdmission(stranger.public()))
        );
        // Even with an admission from the issuer (a compromised one), an
        // invite admits one node only.
        let mut second = bare.clone();
        second.admission = Some(admission(&founder, stranger.public()));
        view.holder = Some(joiner.public());
        assert_eq!(
            check(Record::Node(Signed::sign(&stranger, &second)), &view),
            Err(AuthError::InviteTaken {
                node: stranger.public(),
                holder: joiner.public()
            })
        );
        assert_eq!(
            check(Record::Node(Signed::sign(&joiner, &joined)), &view),
            Ok(()),
            "the holder's own newer record"
        );
        view.holder = None;
        let uninvited = node(stranger.public(), None);
        assert_eq!(
            check(Record::Node(Signed::sign(&stranger, &uninvited)), &view),
            Err(AuthError::NoInvite(stranger.public()))
        );
        // A revoked node's record is still taken in: the revocation beats
        // it (the node is no member), and the invite it names stays used.
        view.revoked.push(joiner.public());
        assert_eq!(
            check(Record::Node(Signed::sign(&joiner, &joined)), &view),
            Ok(())
        );
        // A removed site takes no heads.
        let mut removed = s.clone();
        removed.removed = true;
        view.site = Some(removed);
        assert!(matches!(
            check(Record::Head(Signed::sign(&publisher, &head)), &view),
            Err(AuthError::UnknownSite(_))
        ));
        // External WireGuard peers: admins only, with a valid name.
        let peer = PeerRecord {
            format: RECORD_FORMAT,
            name: "laptop-1".into(),
            key: [8; 32],
            endpoint: None,
            version: 1,
            removed: false,
        };
        assert_eq!(
            check(Record::Peer(Signed::sign(&admin, &peer)), &view),
            Ok(())
        );
        assert_eq!(
            check(Record::Peer(Signed::sign(&joiner, &peer)), &view),
            Err(AuthError::NotAdmin(joiner.public()))
        );
        for bad in ["", "Laptop", "a b", "../x", &"x".repeat(33)] {
            let named = PeerRecord {
                name: bad.to_owned(),
                ..peer.clone()
            };
            assert_eq!(
                check(Record::Peer(Signed::sign(&admin, &named)), &view),
                Err(AuthError::BadPeerName(bad.to_owned()))
            );
        }
    }

    #[test]
    fn peer_records_are_a_kind_older_builds_can_check_and_carry() {
        // Signed under the context an older build checks unknown kinds by.
        assert_eq!(PeerRecord::CONTEXT, kind_context(PEER_KIND).as_slice());
        let admin = SecretKey::from_bytes(&[1; 32]);
        let peer = PeerRecord {
            format: RECORD_FORMAT,
            name: "db".into(),
            key: [8; 32],
            endpoint: Some("192.0.2.9:51820".parse().expect("addr")),
            version: 3,
            removed: false,
        };
        let record = Record::Peer(Signed::sign(&admin, &peer));
        let wire = crate::codec::encode(&record);
        let back: Record = postcard::from_bytes(&wire).expect("decode");
        assert_eq!(back, record);
        let v = back.verify().expect("verify");
        assert_eq!(v.key, RecordKey::Peer("db".into()));
        assert_eq!(v.version, 3);
        // What an older build sees: kind 6, unknown, its signature holds.
        let Record::Peer(signed) = record else {
            unreachable!()
        };
        let unknown = Record::Unknown {
            kind: PEER_KIND,
            signed: signed.retag(),
        };
        assert!(unknown.verify().is_ok());
    }

    proptest! {
        #[test]
        fn record_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(r) = postcard::from_bytes::<Record>(&bytes) {
                let _ = r.verify();
            }
        }

        #[test]
        fn invite_ticket_decode_is_total(s in "makinvite1[a-z2-7]{0,160}") {
            let _ = s.parse::<InviteTicket>();
        }
    }
}
