//! The directory: an immutable, verified, in-memory snapshot of the
//! replicated records (members, sites, heads, pins, revocations, invites).
//!
//! Pure: no I/O. [`crate::records::Records`], the one owner of record
//! writes, merges each batch into a copy of the current directory, makes
//! the changes durable, then publishes the copy. Readers (replication,
//! membership, admin checks, listings, and later DNS, TLS and placement)
//! hold an `Arc<Directory>` and never touch redb or check a signature.

use std::sync::Arc;

use rpds::RedBlackTreeMapSync as Map;

use maki_protocol::{
    AuthError, Body, Domain, Hash, Head, Invite, NodeRecord, PeerRecord, Pin, PublicKey, Record,
    RecordError, RecordKey, Signed, SiteRecord, Verified, View, authorize,
};

/// The network's fixed facts a record is judged against.
#[derive(Debug, Clone)]
pub struct Authority {
    /// The network's id: the hash of its genesis record.
    pub network: Hash,
    pub admins: Vec<PublicKey>,
    pub founder: PublicKey,
}

/// A record as it travels, with what verifying it found.
#[derive(Debug)]
pub struct Held {
    pub record: Record,
    pub verified: Verified,
}

/// What merging a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// First record for its key.
    New,
    /// It beat the record held for its key.
    Replaced,
    /// The held record wins (or is the same): nothing changed.
    Stale,
}

/// Records of kinds this build cannot read that one signer may have this
/// node carry, and their bytes: enough for a newer node's few records of a
/// new kind, too few to make the network a free store.
pub const MAX_UNKNOWN_PER_SIGNER: usize = 64;
pub const MAX_UNKNOWN_BYTES_PER_SIGNER: usize = 256 * 1024;

/// A record that was not taken in; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("unauthorised record: {0}")]
    Auth(#[from] AuthError),
    #[error(
        "{signer} already has this node carry {count} records ({bytes} bytes) of kinds it cannot read; the limit is {MAX_UNKNOWN_PER_SIGNER} records and {MAX_UNKNOWN_BYTES_PER_SIGNER} bytes"
    )]
    TooManyUnknown {
        signer: PublicKey,
        count: usize,
        bytes: usize,
    },
}

/// A change the durable store must make for a merge.
#[derive(Debug, Clone)]
pub enum Change {
    /// `record` is now the winner for its key.
    Put(RecordKey, Record),
    /// The record for this key is void (a head of a removed site, or from
    /// before the site was added again).
    Remove(RecordKey),
    /// A head of this sequence was taken in for the domain.
    HeadSeen(Domain, u64),
}

/// One site as [`Directory::per_site`] walks them.
#[derive(Debug, Clone, Copy)]
pub struct SiteView<'a> {
    pub site: &'a SiteRecord,
    /// Its newest head record, if it may be served (as [`Directory::head`]).
    pub head: Option<(&'a Head, &'a Signed<Head>)>,
    pub pin: Option<&'a Pin>,
}

/// What [`Directory::load`] found.
#[derive(Debug)]
pub struct Loaded {
    pub dir: Directory,
    pub bad: Vec<(Record, RecordError)>,
    /// Records of a kind this build has learned since they were stored,
    /// with the key they were stored under.
    pub learned: Vec<(RecordKey, Record)>,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Directory {
    authority: Authority,
    held: Map<RecordKey, Arc<Held>>,
    /// The same site, head and pin records by domain: what readers ask
    /// for per site, looked up without building a key.
    by_domain: Map<Domain, Slots>,
    /// The node records: the member list is read without walking every
    /// record.
    nodes: Map<PublicKey, Arc<Held>>,
    /// Which node's record names each invite: an invite admits one node.
    by_invite: Map<Hash, PublicKey>,
}

#[derive(Debug, Clone, Default)]
struct Slots {
    site: Option<Arc<Held>>,
    head: Option<Arc<Held>>,
    pin: Option<Arc<Held>>,
}

impl Slots {
    fn of(&mut self, key: &RecordKey) -> Option<&mut Option<Arc<Held>>> {
        match key {
            RecordKey::Site(_) => Some(&mut self.site),
            RecordKey::Head(_) => Some(&mut self.head),
            RecordKey::Pin(_) => Some(&mut self.pin),
            _ => None,
        }
    }
}

fn domain_of(key: &RecordKey) -> Option<&Domain> {
    match key {
        RecordKey::Site(d) | RecordKey::Head(d) | RecordKey::Pin(d) => Some(d),
        _ => None,
    }
}

impl Directory {
    pub fn new(authority: Authority) -> Self {
        Self {
            authority,
            held: Map::new_sync(),
            by_domain: Map::new_sync(),
            nodes: Map::new_sync(),
            by_invite: Map::new_sync(),
        }
    }

    fn put(&mut self, key: RecordKey, held: Arc<Held>) {
        if let Some(domain) = domain_of(&key) {
            let mut slots = self.by_domain.get(domain).cloned().unwrap_or_default();
            if let Some(slot) = slots.of(&key) {
                *slot = Some(held.clone());
                self.by_domain.insert_mut(domain.clone(), slots);
            }
        }
        if let RecordKey::Node(id) = &key {
            if let Body::Node(NodeRecord {
                invite: Some(invite),
                ..
            }) = &held.verified.body
            {
                self.by_invite.insert_mut(*invite, *id);
            }
            self.nodes.insert_mut(*id, held.clone());
        }
        self.held.insert_mut(key, held);
    }

    fn take(&mut self, key: &RecordKey) {
        if let Some(domain) = domain_of(key)
            && let Some(slots) = self.by_domain.get_mut(domain)
            && let Some(slot) = slots.of(key)
        {
            *slot = None;
        }
        if let RecordKey::Node(id) = key
            && let Some(old) = self.nodes.get(id).cloned()
            && let Body::Node(NodeRecord {
                invite: Some(invite),
                ..
            }) = &old.verified.body
        {
            self.by_invite.remove_mut(invite);
        }
        if let RecordKey::Node(id) = key {
            self.nodes.remove_mut(id);
        }
        self.held.remove_mut(key);
    }

    /// A directory of records this node verified before it stored them:
    /// their signatures are not checked again. Returned apart: records
    /// that no longer decode, and records stored as of an unknown kind that
    /// this build now reads (they were never judged: the caller merges them
    /// anew, and drops their old keys).
    pub fn load(authority: Authority, records: Vec<(Option<RecordKey>, Record)>) -> Loaded {
        let mut loaded = Loaded {
            dir: Self::new(authority),
            bad: Vec::new(),
            learned: Vec::new(),
        };
        for (stored, record) in records {
            match record.open_trusted() {
                Ok(verified) => {
                    if let Some(old @ RecordKey::Unknown { .. }) = &stored
                        && !matches!(verified.key, RecordKey::Unknown { .. })
                    {
                        loaded.learned.push((old.clone(), record));
                        continue;
                    }
                    // Two rows for one key (one stored under a key an
                    // older build gave it): the winner is the merge's.
                    if let Some(held) = loaded.dir.held.get(&verified.key)
                        && !verified.wins_over(&held.verified)
                    {
                        continue;
                    }
                    loaded
                        .dir
                        .put(verified.key.clone(), Arc::new(Held { record, verified }));
                }
                Err(e) => loaded.bad.push((record, e)),
            }
        }
        loaded
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Verifies and authorises `record` against this directory and, if it
    /// wins over the record held for its key, takes it in. `changes` gets
    /// what the durable store must do to match.
    pub fn merge(
        &mut self,
        record: &Record,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, Refused> {
        // The very record held already (gossip and overlapping syncs bring
        // many): nothing to check, and nothing changes.
        if let Ok(seen) = record.open_trusted()
            && self
                .held
                .get(&seen.key)
                .is_some_and(|h| h.verified.hash == seen.hash)
        {
            return Ok(Applied::Stale);
        }
        let new = record.verify()?;
        authorize(&new, self)?;
        if let Body::Unknown { len, .. } = new.body {
            let (count, bytes) = self.unknown_of(&new.signer);
            if !self.held.contains_key(&new.key)
                && (count >= MAX_UNKNOWN_PER_SIGNER
                    || bytes.saturating_add(len) > MAX_UNKNOWN_BYTES_PER_SIGNER)
            {
                return Err(Refused::TooManyUnknown {
                    signer: new.signer,
                    count,
                    bytes,
                });
            }
        }
        let applied = match self.held.get(&new.key) {
            None => Applied::New,
            Some(old) if new.wins_over(&old.verified) => Applied::Replaced,
            Some(_) => Applied::Stale,
        };
        if applied == Applied::Stale {
            return Ok(applied);
        }
        changes.push(Change::Put(new.key.clone(), record.clone()));
        match &new.body {
            // A removal ends the site's head, and a site added again voids
            // the heads from before (`heads_after`): nothing keeps fetching
            // a version nobody may serve.
            Body::Site(site) => {
                let key = RecordKey::Head(site.domain.clone());
                let void = self.held.get(&key).is_some_and(|h| match &h.verified.body {
                    Body::Head(head) => site.removed || !site.current(head.seq),
                    _ => true,
                });
                if void {
                    self.take(&key);
                    changes.push(Change::Remove(key));
                }
            }
            Body::Head(head) => changes.push(Change::HeadSeen(head.site.clone(), head.seq)),
            // A revoked node's records of kinds this build cannot read go
            // with it, on every node alike: nothing judged them, and the
            // signer is no longer one whose records a node carries.
            Body::Revocation(r) => {
                let carried: Vec<RecordKey> = self
                    .unknown()
                    .filter(|h| h.verified.signer == r.node)
                    .map(|h| h.verified.key.clone())
                    .collect();
                for key in carried {
                    self.take(&key);
                    changes.push(Change::Remove(key));
                }
            }
            _ => {}
        }
        self.put(
            new.key.clone(),
            Arc::new(Held {
                record: record.clone(),
                verified: new,
            }),
        );
        Ok(applied)
    }

    /// Records of kinds this build cannot read: carried for newer nodes.
    pub fn unknown(&self) -> impl Iterator<Item = &Held> {
        self.held
            .range(
                RecordKey::Unknown {
                    kind: 0,
                    id: Hash::from_bytes([0; 32]),
                }..,
            )
            // Kinds added later sort after `Unknown`.
            .take_while(|(k, _)| matches!(k, RecordKey::Unknown { .. }))
            .map(|(_, h)| h.as_ref())
    }

    /// How many unknown records `signer` has this node carry, and their bytes.
    fn unknown_of(&self, signer: &PublicKey) -> (usize, usize) {
        self.unknown()
            .filter(|h| h.verified.signer == *signer)
            .fold((0, 0), |(n, b), h| match h.verified.body {
                Body::Unknown { len, .. } => (n + 1, b + len),
                _ => (n, b),
            })
    }

    /// The record held for `key`, as it travels.
    pub fn record(&self, key: &RecordKey) -> Option<&Record> {
        self.held.get(key).map(|h| &h.record)
    }

    /// Every record held, in key order.
    pub fn all(&self) -> impl Iterator<Item = &Held> {
        self.held.values().map(|h| h.as_ref())
    }

    pub fn len(&self) -> usize {
        self.held.size()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn body(&self, key: &RecordKey) -> Option<&Body> {
        self.held.get(key).map(|h| &h.verified.body)
    }

    /// A site as its record says, removed ones included, with the record's
    /// version.
    pub fn site_record(&self, domain: &Domain) -> Option<(&SiteRecord, u64)> {
        let held = self.by_domain.get(domain)?.site.as_ref()?;
        match &held.verified.body {
            Body::Site(s) => Some((s, held.verified.version)),
            _ => None,
        }
    }

    /// A site that exists (not removed).
    pub fn site(&self, domain: &Domain) -> Option<&SiteRecord> {
        self.site_record(domain)
            .map(|(s, _)| s)
            .filter(|s| !s.removed)
    }

    /// Every site record, removed ones included (they must be cleared
    /// wherever they are still served), with its version.
    pub fn site_records(&self) -> impl Iterator<Item = (&SiteRecord, u64)> {
        self.by_domain
            .values()
            .filter_map(|slots| match &slots.site.as_ref()?.verified {
                v @ Verified {
                    body: Body::Site(s),
                    ..
                } => Some((s, v.version)),
                _ => None,
            })
    }

    /// Every site record (removed ones included) with its current head and
    /// its pin, in one walk: what a pass over all sites reads.
    pub fn per_site(&self) -> impl Iterator<Item = SiteView<'_>> {
        self.by_domain.values().filter_map(|slots| {
            let Body::Site(site) = &slots.site.as_ref()?.verified.body else {
                return None;
            };
            let head = slots
                .head
                .as_ref()
                .and_then(|h| match (&h.verified.body, &h.record) {
                    (Body::Head(head), Record::Head(signed))
                        if !site.removed && site.current(head.seq) =>
                    {
                        Some((head, signed))
                    }
                    _ => None,
                });
            let pin = slots.pin.as_ref().and_then(|p| match &p.verified.body {
                Body::Pin(pin) => Some(pin),
                _ => None,
            });
            Some(SiteView { site, head, pin })
        })
    }

    /// The sites that exist.
    pub fn sites(&self) -> impl Iterator<Item = &SiteRecord> {
        self.site_records().map(|(s, _)| s).filter(|s| !s.removed)
    }

    /// The network's newest head of a site, which this node may not hold
    /// yet. None for a removed site or a head from before it was added
    /// again.
    pub fn head(&self, domain: &Domain) -> Option<(&Head, &Signed<Head>)> {
        let held = self.by_domain.get(domain)?.head.as_ref()?;
        let (Body::Head(head), Record::Head(signed)) = (&held.verified.body, &held.record) else {
            return None;
        };
        let site = self.site(domain)?;
        site.current(head.seq).then_some((head, signed))
    }

    /// The DNS records of a site, if its publishers declared some and
    /// they were made for the site as it is now.
    pub fn zone(&self, domain: &Domain) -> Option<&maki_protocol::zone::ZoneRecord> {
        let site = self.site(domain)?;
        match &self
            .held
            .get(&RecordKey::Zone(domain.clone()))?
            .verified
            .body
        {
            Body::Zone(z) if z.incarnation == site.heads_after => Some(z),
            _ => None,
        }
    }

    /// The DNSSEC keys of a live site, if an admin made any for this
    /// incarnation of it.
    pub fn zone_keys(&self, domain: &Domain) -> Option<&maki_protocol::dnssec::ZoneKeys> {
        let site = self.site(domain)?;
        match &self
            .held
            .get(&RecordKey::Keys(domain.clone()))?
            .verified
            .body
        {
            Body::Keys(k) if k.incarnation == site.heads_after => Some(k),
            _ => None,
        }
    }

    /// The certificate of a live site, if one was made for this
    /// incarnation of it.
    pub fn cert(&self, domain: &Domain) -> Option<&maki_protocol::cert::CertRecord> {
        let site = self.site(domain)?;
        match &self
            .held
            .get(&RecordKey::Cert(domain.clone()))?
            .verified
            .body
        {
            Body::Cert(c) if c.incarnation == site.heads_after => Some(c),
            _ => None,
        }
    }

    /// The network's ACME settings, if an admin set them.
    pub fn acme(&self) -> Option<&maki_protocol::acme::AcmeConfig> {
        match &self.held.get(&RecordKey::Acme)?.verified.body {
            Body::Acme(a) => Some(a),
            _ => None,
        }
    }

    /// The network's ACME account, if a node made one.
    pub fn acme_account(&self) -> Option<&maki_protocol::acme::AcmeAccount> {
        match &self.held.get(&RecordKey::Account)?.verified.body {
            Body::Account(a) => Some(a),
            _ => None,
        }
    }

    /// The session-ticket secret the `http` nodes share, if made.
    pub fn ticket_keys(&self) -> Option<&maki_protocol::tickets::TicketKeys> {
        match &self.held.get(&RecordKey::Tickets)?.verified.body {
            Body::Tickets(t) => Some(t),
            _ => None,
        }
    }

    /// Who orders the certificate of a live site (this incarnation of it),
    /// and how its last attempt went.
    pub fn acme_order(&self, domain: &Domain) -> Option<&maki_protocol::acme::AcmeOrder> {
        let site = self.site(domain)?;
        match &self
            .held
            .get(&RecordKey::Order(domain.clone()))?
            .verified
            .body
        {
            Body::Order(o) if o.incarnation == site.heads_after => Some(o),
            _ => None,
        }
    }

    /// The pin of a site, if an admin set one.
    pub fn pin(&self, domain: &Domain) -> Option<&Pin> {
        match &self.by_domain.get(domain)?.pin.as_ref()?.verified.body {
            Body::Pin(p) => Some(p),
            _ => None,
        }
    }

    /// The external WireGuard peers admins added, and not removed.
    pub fn external_peers(&self) -> impl Iterator<Item = &PeerRecord> {
        self.held
            .range(RecordKey::Peer(String::new())..)
            .take_while(|(k, _)| matches!(k, RecordKey::Peer(_)))
            .filter_map(|(_, h)| match &h.verified.body {
                Body::Peer(p) if !p.removed => Some(p),
                _ => None,
            })
    }

    /// The members: node records of nodes not revoked, with their versions.
    pub fn members(&self) -> impl Iterator<Item = (&NodeRecord, u64)> {
        self.nodes.values().filter_map(|h| match &h.verified.body {
            Body::Node(n) if !self.is_revoked(&n.id) => Some((n, h.verified.version)),
            _ => None,
        })
    }

    /// A node's record, revoked or not, with its version.
    pub fn node(&self, id: &PublicKey) -> Option<(&NodeRecord, u64)> {
        let held = self.held.get(&RecordKey::Node(*id))?;
        match &held.verified.body {
            Body::Node(n) => Some((n, held.verified.version)),
            _ => None,
        }
    }

    /// A node's own record as it travels, and the invite that admitted it.
    pub fn introduction(
        &self,
        id: &PublicKey,
    ) -> Option<(Signed<NodeRecord>, Option<Signed<Invite>>)> {
        let held = self.held.get(&RecordKey::Node(*id))?;
        let (Record::Node(me), Body::Node(node)) = (&held.record, &held.verified.body) else {
            return None;
        };
        let invite = node
            .invite
            .and_then(|secret| match self.record(&RecordKey::Invite(secret)) {
                Some(Record::Invite(i)) => Some(i.clone()),
                _ => None,
            });
        Some((me.clone(), invite))
    }

    pub fn is_revoked(&self, node: &PublicKey) -> bool {
        self.held.contains_key(&RecordKey::Revocation(*node))
    }

    pub fn is_admin(&self, key: &PublicKey) -> bool {
        self.authority.admins.contains(key)
    }

    /// Admins and the publishers of any site: callers trusted with large
    /// frames and with the member list.
    pub fn is_known(&self, key: &PublicKey) -> bool {
        self.is_admin(key) || self.sites().any(|s| s.publishers.contains(key))
    }
}

impl View for Directory {
    fn network(&self) -> Hash {
        self.authority.network
    }
    fn admins(&self) -> &[PublicKey] {
        &self.authority.admins
    }
    fn founder(&self) -> PublicKey {
        self.authority.founder
    }
    fn site(&self, domain: &Domain) -> Option<SiteRecord> {
        self.site_record(domain).map(|(s, _)| s.clone())
    }
    fn invite(&self, secret_hash: &Hash) -> Option<Invite> {
        match self.body(&RecordKey::Invite(*secret_hash))? {
            Body::Invite(i) => Some(i.clone()),
            _ => None,
        }
    }
    fn revoked(&self, node: &PublicKey) -> bool {
        self.is_revoked(node)
    }
    fn invite_holder(&self, secret_hash: &Hash) -> Option<PublicKey> {
        self.by_invite.get(secret_hash).copied()
    }
    fn known_signer(&self, key: &PublicKey) -> bool {
        // A member by its own record (one lookup), before the walk over
        // every site's publishers.
        self.member(key) || self.is_known(key)
    }

    fn member(&self, key: &PublicKey) -> bool {
        self.node(key).is_some() && !self.is_revoked(key)
    }
}

/// A small network to build directories from, for the tests of the
/// modules that read one.
#[cfg(test)]
pub(crate) mod testing {
    use maki_protocol::{RECORD_FORMAT, SecretKey};

    use super::*;

    /// The founder's key: it issues the invites.
    const FOUNDER: [u8; 32] = [2; 32];

    pub(crate) struct Net {
        pub(crate) admin: SecretKey,
        pub(crate) founder: SecretKey,
        pub(crate) dir: Directory,
    }

    impl Net {
        pub(crate) fn new() -> Self {
            let admin = SecretKey::from_bytes(&[1; 32]);
            let founder = SecretKey::from_bytes(&FOUNDER);
            let dir = Directory::new(Authority {
                network: Hash::of(b"net"),
                admins: vec![admin.public()],
                founder: founder.public(),
            });
            Self {
                admin,
                founder,
                dir,
            }
        }

        pub(crate) fn merge(&mut self, record: Record) -> Result<Applied, Refused> {
            self.dir.merge(&record, &mut Vec::new())
        }

        /// An invite of the founder's, redeemable with `secret`.
        pub(crate) fn invite(&self, secret: &[u8; 32]) -> Signed<maki_protocol::Invite> {
            Signed::sign(
                &self.admin,
                &maki_protocol::Invite {
                    format: RECORD_FORMAT,
                    network: Hash::of(b"net"),
                    secret_hash: Hash::of(secret),
                    expires: u64::MAX,
                    issuer: self.founder.public(),
                    key: maki_protocol::invite_key(secret).public(),
                },
            )
        }

        /// `key`'s node record, admitted by the invite of `secret` (none:
        /// the founder).
        pub(crate) fn node(key: &SecretKey, secret: Option<&[u8; 32]>, version: u64) -> Record {
            // The founder issues every invite of this network.
            let admission = secret.map(|s| {
                Signed::sign(
                    &SecretKey::from_bytes(&FOUNDER),
                    &maki_protocol::Admission {
                        invite: Hash::of(s),
                        node: key.public(),
                    },
                )
            });
            Record::Node(Signed::sign(
                key,
                &NodeRecord {
                    format: maki_protocol::NODE_FORMAT,
                    id: key.public(),
                    addrs: vec![],
                    region: None,
                    location: None,
                    version,
                    invite: secret.map(|s| Hash::of(s)),
                    roles: vec![],
                    admission,
                    ips: vec![],
                    mesh: None,
                    ports: vec![],
                    seal: None,
                    #[cfg(feature = "next-format")]
                    note: None,
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use maki_protocol::{RECORD_FORMAT, Revocation, SecretKey};

    use super::*;

    use super::testing::Net;

    #[test]
    fn a_record_held_already_is_stale_and_a_copy_keeps_what_it_saw()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut net = Net::new();
        let founder = net.founder.clone();
        let record = Net::node(&founder, None, 1);
        assert_eq!(net.merge(record.clone())?, Applied::New);
        // The same bytes again (gossip and overlapping syncs): stale.
        assert_eq!(net.merge(record)?, Applied::Stale);

        // A copy is a snapshot: what merges into the original later (the
        // maps are shared until one side changes) does not reach it.
        let before = net.dir.clone();
        assert_eq!(net.merge(Net::node(&founder, None, 2))?, Applied::Replaced);
        assert_eq!(before.node(&founder.public()).map(|(_, v)| v), Some(1));
        assert_eq!(net.dir.node(&founder.public()).map(|(_, v)| v), Some(2));
        Ok(())
    }

    #[test]
    fn members_are_backed_by_an_invite_and_not_revoked() -> Result<(), Box<dyn std::error::Error>> {
        let mut net = Net::new();
        let joiner = SecretKey::from_bytes(&[3; 32]);
        let founder = net.founder.clone();
        assert_eq!(net.merge(Net::node(&founder, None, 1))?, Applied::New);

        // Without the invite its record names, a node is not taken in.
        let secret = [7; 32];
        let secret = &secret;
        assert!(matches!(
            net.merge(Net::node(&joiner, Some(secret), 1)),
            Err(Refused::Auth(AuthError::NoInvite(_)))
        ));
        let invite = net.invite(secret);
        net.merge(Record::Invite(invite.clone()))?;
        net.merge(Net::node(&joiner, Some(secret), 1))?;
        let ids = |d: &Directory| d.members().map(|(n, _)| n.id).collect::<Vec<_>>();
        assert_eq!(ids(&net.dir).len(), 2);
        let (me, admitted) = net
            .dir
            .introduction(&joiner.public())
            .ok_or("introduction")?;
        assert_eq!(me.signer(), joiner.public());
        assert_eq!(
            admitted.map(|i| i.bytes().to_vec()),
            Some(invite.bytes().to_vec())
        );

        // A newer record of a member replaces the old; an older one is stale.
        assert_eq!(
            net.merge(Net::node(&joiner, Some(secret), 5))?,
            Applied::Replaced
        );
        assert_eq!(
            net.merge(Net::node(&joiner, Some(secret), 4))?,
            Applied::Stale
        );
        assert_eq!(net.dir.node(&joiner.public()).map(|(_, v)| v), Some(5));

        // Revoked: no longer a member, whatever records it makes (they are
        // kept, so the invite they name stays used).
        let revocation = Revocation {
            format: RECORD_FORMAT,
            node: joiner.public(),
            version: 1,
        };
        net.merge(Record::Revocation(Signed::sign(&net.admin, &revocation)))?;
        assert_eq!(ids(&net.dir), vec![founder.public()]);
        net.merge(Net::node(&joiner, Some(secret), 9))?;
        assert_eq!(ids(&net.dir), vec![founder.public()]);
        // Nor does it come back under a new key, ticket kept or not: the
        // invite admitted it, and admits nobody else.
        let again = SecretKey::from_bytes(&[4; 32]);
        assert!(matches!(
            net.merge(Net::node(&again, Some(secret), 1)),
            Err(Refused::Auth(AuthError::InviteTaken { .. }))
        ));
        // A revocation that arrives before the node's record (a node that
        // joins later) still leaves the invite used.
        let mut late = Net::new();
        late.merge(Net::node(&founder, None, 1))?;
        late.merge(Record::Invite(invite.clone()))?;
        late.merge(Record::Revocation(Signed::sign(&net.admin, &revocation)))?;
        late.merge(Net::node(&joiner, Some(secret), 9))?;
        assert!(matches!(
            late.merge(Net::node(&again, Some(secret), 1)),
            Err(Refused::Auth(AuthError::InviteTaken { .. }))
        ));
        // A member naming another's invite without its admission proves nothing.
        let mut borrowed = maki_protocol::NodeRecord {
            format: maki_protocol::NODE_FORMAT,
            id: again.public(),
            addrs: vec![],
            region: None,
            location: None,
            version: 1,
            invite: Some(Hash::of(&[8; 32])),
            roles: vec![],
            admission: None,
            ips: vec![],
            mesh: None,
            ports: vec![],
            seal: None,
            #[cfg(feature = "next-format")]
            note: None,
        };
        net.merge(Record::Invite(net.invite(&[8; 32])))?;
        assert!(matches!(
            net.merge(Record::Node(Signed::sign(&again, &borrowed))),
            Err(Refused::Auth(AuthError::NoAdmission(_)))
        ));
        borrowed.admission = Some(Signed::sign(
            &again,
            &maki_protocol::Admission {
                invite: Hash::of(&[8; 32]),
                node: again.public(),
            },
        ));
        assert!(matches!(
            net.merge(Record::Node(Signed::sign(&again, &borrowed))),
            Err(Refused::Auth(AuthError::NoAdmission(_)))
        ));
        assert_eq!(ids(&net.dir), vec![founder.public()]);
        Ok(())
    }

    #[test]
    fn sites_heads_and_who_may_publish() -> Result<(), Box<dyn std::error::Error>> {
        let mut net = Net::new();
        let publisher = SecretKey::from_bytes(&[4; 32]);
        let domain = Domain::new("a.test")?;
        let site = |version: u64, removed: bool, heads_after: u64| SiteRecord {
            format: RECORD_FORMAT,
            domain: domain.clone(),
            aliases: vec![],
            publishers: vec![publisher.public()],
            version,
            removed,
            heads_after,
        };
        // Only an admin makes a site.
        assert!(
            net.merge(Record::Site(Signed::sign(&publisher, &site(1, false, 0))))
                .is_err()
        );
        net.merge(Record::Site(Signed::sign(&net.admin, &site(1, false, 0))))?;
        assert!(net.dir.is_known(&publisher.public()));
        assert!(!net.dir.is_known(&SecretKey::from_bytes(&[5; 32]).public()));

        let head = |seq: u64| Head {
            site: domain.clone(),
            seq,
            manifest: Hash::of(&seq.to_le_bytes()),
        };
        let mut changes = Vec::new();
        net.dir.merge(
            &Record::Head(Signed::sign(&publisher, &head(3))),
            &mut changes,
        )?;
        assert!(matches!(changes.last(), Some(Change::HeadSeen(_, 3))));
        assert_eq!(net.dir.head(&domain).map(|(h, _)| h.seq), Some(3));

        // A removal voids the head at once, and the store is told to.
        changes.clear();
        net.dir.merge(
            &Record::Site(Signed::sign(&net.admin, &site(2, true, 0))),
            &mut changes,
        )?;
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Remove(RecordKey::Head(_))))
        );
        assert!(net.dir.site(&domain).is_none() && net.dir.head(&domain).is_none());
        assert_eq!(net.dir.site_records().count(), 1);
        assert!(!net.dir.is_known(&publisher.public()));

        // Added again above the old heads: an old head is refused.
        net.merge(Record::Site(Signed::sign(&net.admin, &site(3, false, 3))))?;
        assert!(matches!(
            net.merge(Record::Head(Signed::sign(&publisher, &head(3)))),
            Err(Refused::Auth(AuthError::BeforeSite { .. }))
        ));
        net.merge(Record::Head(Signed::sign(&publisher, &head(4))))?;
        assert_eq!(net.dir.head(&domain).map(|(h, _)| h.seq), Some(4));
        Ok(())
    }

    /// Two heads of one seq (a publish on each side of a partition): each
    /// order of arrival keeps the same one, the higher record hash.
    #[test]
    fn two_heads_of_one_seq_settle_on_the_higher_hash_in_any_order()
    -> Result<(), Box<dyn std::error::Error>> {
        let publisher = SecretKey::from_bytes(&[4; 32]);
        let domain = Domain::new("a.test")?;
        let head = |side: &[u8]| {
            Record::Head(Signed::sign(
                &publisher,
                &Head {
                    site: domain.clone(),
                    seq: 2,
                    manifest: Hash::of(side),
                },
            ))
        };
        let (left, right) = (head(b"left"), head(b"right"));
        let hash = |r: &Record| r.verify().map(|v| v.hash);
        let winner = if hash(&left)? > hash(&right)? {
            Hash::of(b"left")
        } else {
            Hash::of(b"right")
        };
        for order in [[&left, &right], [&right, &left]] {
            let mut net = Net::new();
            net.merge(Record::Site(Signed::sign(
                &net.admin,
                &SiteRecord {
                    format: RECORD_FORMAT,
                    domain: domain.clone(),
                    aliases: vec![],
                    publishers: vec![publisher.public()],
                    version: 1,
                    removed: false,
                    heads_after: 0,
                },
            )))?;
            for r in order {
                net.merge(r.clone())?;
            }
            assert_eq!(net.dir.head(&domain).map(|(h, _)| h.manifest), Some(winner));
        }
        Ok(())
    }

    /// A record of kind 99, which this build does not know.
    fn future(key: &SecretKey, n: usize, len: usize) -> Record {
        let mut body = vec![0u8; len];
        body[..8].copy_from_slice(&(n as u64).to_le_bytes());
        let signed = Signed::<maki_protocol::Unread>::sign_bytes_under(
            key,
            &maki_protocol::kind_context(99),
            body,
        );
        Record::Unknown { kind: 99, signed }
    }

    #[test]
    fn unknown_kinds_are_carried_for_known_signers_within_limits()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut net = Net::new();
        let founder = net.founder.clone();
        net.merge(Net::node(&founder, None, 1))?;
        let stranger = SecretKey::from_bytes(&[7; 32]);

        // A member's and an admin's are carried, a stranger's refused.
        let mut changes = Vec::new();
        assert_eq!(
            net.dir.merge(&future(&founder, 0, 100), &mut changes)?,
            Applied::New
        );
        assert!(matches!(
            changes.as_slice(),
            [Change::Put(RecordKey::Unknown { kind: 99, .. }, _)]
        ));
        let admin = net.admin.clone();
        net.merge(future(&admin, 0, 100))?;
        assert!(matches!(
            net.merge(future(&stranger, 0, 100)),
            Err(Refused::Auth(AuthError::UnknownSigner { kind: 99, .. }))
        ));
        // The same record again changes nothing.
        assert_eq!(net.merge(future(&founder, 0, 100))?, Applied::Stale);
        assert_eq!(net.dir.unknown().count(), 2);

        // Per signer, at most so many records and so many bytes.
        for n in 1..MAX_UNKNOWN_PER_SIGNER {
            net.merge(future(&founder, n, 100))?;
        }
        assert!(matches!(
            net.merge(future(&founder, 999, 100)),
            Err(Refused::TooManyUnknown { .. })
        ));
        // Two records just under the size of one fit; a third does not.
        let big = maki_protocol::MAX_SIGNED_BYTES - 64;
        assert!(3 * big > MAX_UNKNOWN_BYTES_PER_SIGNER);
        net.merge(future(&admin, 1, big))?;
        net.merge(future(&admin, 2, big))?;
        assert!(matches!(
            net.merge(future(&admin, 3, big)),
            Err(Refused::TooManyUnknown { .. })
        ));
        // Members, sites and heads are untouched by what is carried.
        assert_eq!(net.dir.members().count(), 1);

        // A revoked node's carried records go with it, and no more come.
        let carried_before = net.dir.unknown().count();
        let revocation = Signed::sign(
            &net.admin,
            &maki_protocol::Revocation {
                format: RECORD_FORMAT,
                node: founder.public(),
                version: 1,
            },
        );
        let mut changes = Vec::new();
        net.dir
            .merge(&Record::Revocation(revocation), &mut changes)?;
        let removed = changes
            .iter()
            .filter(|c| matches!(c, Change::Remove(RecordKey::Unknown { .. })))
            .count();
        assert_eq!(removed, MAX_UNKNOWN_PER_SIGNER);
        assert_eq!(
            net.dir.unknown().count(),
            carried_before - MAX_UNKNOWN_PER_SIGNER
        );
        assert!(
            net.dir
                .unknown()
                .all(|h| h.verified.signer != founder.public())
        );
        assert!(matches!(
            net.merge(future(&founder, 500, 100)),
            Err(Refused::Auth(AuthError::UnknownSigner { .. }))
        ));
        Ok(())
    }
}
