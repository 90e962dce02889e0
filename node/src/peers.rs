//! The member list: who belongs to the network (a node record backed by an
//! invite, not revoked), how to reach them (addresses handed to iroh's
//! in-memory address lookup, so peers are dialled by node id) and how near
//! they are (round-trip times measured by syncs).
//!
//! Rebuilt from the records whenever a node record or revocation changes;
//! read on every member-only connection, so it lives in memory.
//!
//! It also guards the long-lived member connections (gossip): only a
//! member gets one (the endpoint hook [`MembersOnly`] refuses those this
//! node dials to anyone else, and the gossip handler closes those a
//! non-member dials in), and a member removed from the list has its open
//! ones closed at once. Checking each message instead would still leave a
//! removed node reading what its neighbours broadcast.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use iroh::{
    EndpointAddr,
    address_lookup::MemoryLookup,
    endpoint::{
        AfterHandshakeOutcome, BeforeConnectOutcome, Connection, EndpointHooks, Side,
        WeakConnectionHandle,
    },
};
use maki_protocol::{
    Hash, PublicKey, mesh,
    sync::{GOSSIP_ALPN, Holding, Progress, SYNC_ALPN},
};
use tracing::info;

use crate::{
    directory::Directory,
    mesh::{Mesh, MeshMember},
};

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub addrs: Vec<SocketAddr>,
    pub region: Option<String>,
    pub location: Option<(f64, f64)>,
    pub roles: Vec<String>,
    /// Version of its node record.
    pub version: u64,
    /// Round trip of the last successful exchange.
    pub rtt: Option<Duration>,
    /// When the last exchange with it succeeded.
    pub seen: Option<Instant>,
    /// The last attempt to reach it failed.
    pub failing: bool,
    /// The site versions it said it serves.
    pub holds: Vec<Holding>,
    /// Its clock when it last announced them over gossip.
    pub holds_at: u64,
    /// Whether it has told us what it serves at all (by sync or gossip).
    pub holds_known: bool,
    /// Its mesh address, when both it and this node run the mesh: then it
    /// is dialled there.
    pub mesh_addr: Option<std::net::Ipv6Addr>,
    /// Its side of the mesh, as its record announces it.
    pub mesh: Option<maki_protocol::MeshPeer>,
    /// Its public IPs, as its record announces them.
    pub ips: Vec<std::net::IpAddr>,
    /// What it held of the version it was fetching, when it last said,
    /// and when that reached this node.
    pub progress: Option<(Arc<Progress>, std::time::Instant)>,
}

/// A member's claim to be getting a piece lapses when nothing more was
/// heard from it for this long (it crashed, or finished without a last
/// word): a fetch in progress repeats itself every `PROGRESS_REPEAT`.
pub const CLAIM_LAPSES: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug)]
pub struct Peers {
    me: PublicKey,
    network: Hash,
    /// This node's WireGuard mesh, when it runs one.
    mesh: Option<Arc<Mesh>>,
    inner: RwLock<BTreeMap<PublicKey, Peer>>,
    /// Where the public endpoint dials members: their public addresses,
    /// for those not reached over the mesh.
    lookup: MemoryLookup,
    /// Where the mesh endpoint dials members: their mesh addresses, for
    /// those reached over the mesh.
    mesh_lookup: MemoryLookup,
    /// Open member-only connections, by peer: closed when it leaves.
    links: Mutex<HashMap<PublicKey, Vec<WeakConnectionHandle>>>,
    /// Members this node should introduce itself to (`join::introduce`).
    introductions: Option<tokio::sync::mpsc::Sender<PublicKey>>,
}

impl Peers {
    pub fn new(
        me: PublicKey,
        network: Hash,
        mesh: Option<Arc<Mesh>>,
        lookup: MemoryLookup,
        mesh_lookup: MemoryLookup,
    ) -> Self {
        Self {
            me,
            network,
            mesh,
            inner: RwLock::default(),
            lookup,
            mesh_lookup,
            links: Mutex::default(),
            introductions: None,
        }
    }

    /// Asks `join::introduce` to introduce this node to the members that
    /// [`Self::introduce_to`] names.
    pub fn with_introductions(mut self, to: tokio::sync::mpsc::Sender<PublicKey>) -> Self {
        self.introductions = Some(to);
        self
    }

    /// `key` refused or failed this node: if the two may disagree on
    /// which door they talk at (either runs the mesh), this node's own
    /// record is sent to it over the join protocol, which both doors
    /// leave open. Its record is what tells `key` which door to use.
    pub fn introduce_to(&self, key: &PublicKey) {
        let may_disagree = self.mesh.is_some()
            || self
                .inner
                .read()
                .ok()
                .is_some_and(|m| m.get(key).is_some_and(|p| p.mesh.is_some()));
        if may_disagree && let Some(tx) = &self.introductions {
            // Full: one is asked for at every failure, so a later one asks again.
            let _ = tx.try_send(*key);
        }
    }

    /// Recomputes the members from the records; keeps measurements.
    /// With the mesh on, the mesh peers are set first, so a member is a
    /// WireGuard peer before anything dials its mesh address.
    pub fn refresh(&self, dir: &Directory) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        // A WireGuard key two members announce (or one announces this
        // node's) is neither's: one of them lies, or copied the other's
        // data. Both are reached over their public addresses instead, so a
        // member cannot cut another off the mesh by announcing its key.
        let mut uses: HashMap<[u8; 32], usize> = HashMap::new();
        for (n, _) in dir.members() {
            if let Some(m) = &n.mesh {
                *uses.entry(m.key).or_default() += 1;
            }
        }
        let own = self.mesh.as_ref().map(|m| m.public_key());
        // Its own key taken too: to the others this node is not meshed, so
        // it must not take them for meshed either (each would call the
        // other at a door the other refuses).
        let own_clash = own.is_some_and(|k| uses.get(&k).is_some_and(|n| *n > 1));
        let meshed = |n: &maki_protocol::NodeRecord| {
            n.mesh.as_ref().is_some_and(|m| {
                uses.get(&m.key) == Some(&1) && (n.id == self.me || Some(m.key) != own)
            })
        };
        if let Some(mesh) = &self.mesh {
            let members = dir
                .members()
                .filter(|(n, _)| meshed(n))
                .filter_map(|(n, _)| {
                    let peer = n.mesh.as_ref()?;
                    Some(MeshMember::of(&self.network, n.id, &n.ips, peer))
                });
            // An external peer never takes a member's key.
            let external = dir
                .external_peers()
                .filter(|p| !uses.contains_key(&p.key) && Some(p.key) != own)
                .map(|p| MeshMember::external(&self.network, p));
            mesh.set_peers(members.chain(external));
        }
        let mut next = BTreeMap::new();
        // Members whose door changed (into the mesh, or out of it).
        let mut moved = std::collections::HashSet::new();
        for (n, version) in dir.members() {
            let old = inner.get(&n.id);
            let mesh_addr = (self.mesh.is_some() && !own_clash && meshed(n))
                .then(|| mesh::member_addr(&self.network, &n.id));
            if old.is_some_and(|p| p.mesh_addr.is_some() != mesh_addr.is_some()) {
                moved.insert(n.id);
            }
            next.insert(
                n.id,
                Peer {
                    addrs: n.addrs.clone(),
                    region: n.region.clone(),
                    location: n.location,
                    roles: n.roles.clone(),
                    version,
                    rtt: old.and_then(|p| p.rtt),
                    seen: old.and_then(|p| p.seen),
                    failing: old.is_some_and(|p| p.failing),
                    holds: old.map(|p| p.holds.clone()).unwrap_or_default(),
                    holds_at: old.map_or(0, |p| p.holds_at),
                    holds_known: old.is_some_and(|p| p.holds_known),
                    mesh_addr,
                    mesh: n.mesh.clone(),
                    ips: n.ips.clone(),
                    progress: old.and_then(|p| p.progress.clone()),
                },
            );
            if n.id != self.me
                && let Ok(id) = iroh::PublicKey::from_bytes(n.id.as_bytes())
            {
                // Each member is known to one endpoint only: one that
                // learned a meshed member's public address would carry
                // member traffic outside the mesh.
                match (mesh_addr, &n.mesh) {
                    (Some(ip), Some(peer)) => {
                        self.lookup.remove_endpoint_info(id);
                        self.mesh_lookup.set_endpoint_info(
                            EndpointAddr::new(id)
                                .with_ip_addr(SocketAddr::new(ip.into(), peer.p2p_port)),
                        );
                    }
                    _ => {
                        self.mesh_lookup.remove_endpoint_info(id);
                        let mut addr = EndpointAddr::new(id);
                        for a in &n.addrs {
                            addr = addr.with_ip_addr(*a);
                        }
                        // Replaces what it was dialled at before.
                        self.lookup.set_endpoint_info(addr);
                    }
                }
            }
        }
        for gone in inner.keys().filter(|k| !next.contains_key(*k)) {
            if let Ok(id) = iroh::PublicKey::from_bytes(gone.as_bytes()) {
                self.lookup.remove_endpoint_info(id);
                self.mesh_lookup.remove_endpoint_info(id);
            }
        }
        // Under the write lock, so no link to a removed member is added
        // after this (`hold_link` checks membership under the read lock).
        if let Ok(mut links) = self.links.lock() {
            links.retain(|key, conns| {
                let (code, reason): (_, &[u8]) = if !next.contains_key(key) {
                    (REMOVED, b"no longer a member")
                } else if moved.contains(key) {
                    // Opened at the door it no longer uses: it reopens at
                    // the other one.
                    (WRONG_DOOR, b"members talk over the mesh")
                } else {
                    return true;
                };
                let open: Vec<Connection> = conns.iter().filter_map(|c| c.upgrade()).collect();
                if !open.is_empty() {
                    info!(peer = %key.fmt_short(), conns = open.len(), reason = %String::from_utf8_lossy(reason), "closing a member's links");
                }
                for conn in open {
                    conn.close(code, reason);
                }
                false
            });
        }
        *inner = next;
    }

    /// Keeps `conn` to close it if `key` stops being a member; false (and
    /// nothing kept) if it is not one now.
    pub fn hold_link(&self, key: &PublicKey, conn: &Connection) -> bool {
        let Ok(inner) = self.inner.read() else {
            return false;
        };
        if !inner.contains_key(key) {
            return false;
        }
        if let Ok(mut links) = self.links.lock() {
            let conns = links.entry(*key).or_default();
            conns.retain(|c| c.upgrade().is_some());
            conns.push(conn.weak_handle());
        }
        true
    }

    pub fn is_member(&self, key: &PublicKey) -> bool {
        self.inner.read().is_ok_and(|m| m.contains_key(key))
    }

    /// Its mesh address, if this node reaches it over the mesh.
    pub fn mesh_addr(&self, key: &PublicKey) -> Option<std::net::Ipv6Addr> {
        self.inner.read().ok()?.get(key)?.mesh_addr
    }

    pub fn get(&self, key: &PublicKey) -> Option<Peer> {
        self.inner.read().ok()?.get(key).cloned()
    }

    /// The other members, nearest first (measured ones before unmeasured).
    pub fn others(&self) -> Vec<PublicKey> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        let mut out: Vec<(Option<Duration>, PublicKey)> = inner
            .iter()
            .filter(|(k, _)| **k != self.me)
            .map(|(k, p)| (p.rtt, *k))
            .collect();
        out.sort_by_key(|(rtt, k)| (rtt.is_none(), *rtt, *k));
        out.into_iter().map(|(_, k)| k).collect()
    }

    pub fn all(&self) -> Vec<(PublicKey, Peer)> {
        self.inner
            .read()
            .map(|m| m.iter().map(|(k, p)| (*k, p.clone())).collect())
            .unwrap_or_default()
    }

    /// Records a successful exchange with `key`.
    pub fn seen(&self, key: &PublicKey, rtt: Option<Duration>) {
        if let Ok(mut inner) = self.inner.write()
            && let Some(p) = inner.get_mut(key)
        {
            p.seen = Some(Instant::now());
            p.failing = false;
            if rtt.is_some() {
                p.rtt = rtt;
            }
        }
    }

    /// Forgets the measured RTT of a peer that failed, so it sorts last.
    pub fn failed(&self, key: &PublicKey) {
        if let Ok(mut inner) = self.inner.write()
            && let Some(p) = inner.get_mut(key)
        {
            p.rtt = None;
            p.failing = true;
        }
    }

    /// Records what a peer said it serves; true if that changed.
    pub fn set_holds(&self, key: &PublicKey, holds: Vec<Holding>) -> bool {
        if let Ok(mut inner) = self.inner.write()
            && let Some(p) = inner.get_mut(key)
        {
            p.holds_known = true;
            if p.holds != holds {
                p.holds = holds;
                return true;
            }
        }
        false
    }

    /// The digest of what a peer last said it serves, if it said anything.
    pub fn holds_digest(&self, key: &PublicKey) -> Option<Hash> {
        let inner = self.inner.read().ok()?;
        let p = inner.get(key).filter(|p| p.holds_known)?;
        Some(maki_protocol::sync::holdings_digest(&p.holds))
    }

    /// Records a gossiped announcement unless a newer one came first;
    /// true if what the peer serves changed.
    pub fn set_holds_at(&self, key: &PublicKey, holds: Vec<Holding>, at: u64) -> bool {
        if let Ok(mut inner) = self.inner.write()
            && let Some(p) = inner.get_mut(key)
            && at > p.holds_at
        {
            p.holds_at = at;
            p.holds_known = true;
            if p.holds != holds {
                p.holds = holds;
                return true;
            }
        }
        false
    }

    /// Records what a member said it holds of a version it fetches,
    /// unless a newer word came first.
    pub fn set_progress(&self, key: &PublicKey, progress: Progress) {
        if let Ok(mut inner) = self.inner.write()
            && let Some(p) = inner.get_mut(key)
            && p.progress
                .as_ref()
                .is_none_or(|(old, _)| progress.at > old.at)
        {
            p.progress = Some((Arc::new(progress), std::time::Instant::now()));
        }
    }

    /// Which members hold the piece at `index` of `manifest`'s pieces
    /// ([`maki_protocol::pieces`]), and whether each holds the whole
    /// version: those that serve it, and those that said they hold that
    /// piece while fetching it.
    pub fn holders(&self, manifest: &Hash, index: usize) -> Vec<(PublicKey, bool)> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        inner
            .iter()
            .filter(|(k, _)| **k != self.me)
            .filter_map(|(k, p)| {
                let whole = p.holds.iter().any(|h| h.manifest == *manifest);
                let piece = p
                    .progress
                    .as_ref()
                    .is_some_and(|(g, _)| g.manifest == *manifest && g.have.contains(index));
                (whole || piece).then_some((*k, whole))
            })
            .collect()
    }

    /// Whether another member said it is fetching the piece at `index` of
    /// `manifest`'s pieces (and does not hold it yet). A claim of a member
    /// that holds the version whole by now, or not heard from for
    /// `CLAIM_LAPSES`, does not count: it would hold the piece back from
    /// everyone else for good.
    pub fn claimed(&self, manifest: &Hash, index: usize) -> bool {
        let Ok(inner) = self.inner.read() else {
            return false;
        };
        inner.iter().any(|(k, p)| {
            *k != self.me
                && !p.holds.iter().any(|h| h.manifest == *manifest)
                && p.progress.as_ref().is_some_and(|(g, heard)| {
                    heard.elapsed() < CLAIM_LAPSES
                        && g.manifest == *manifest
                        && g.getting.contains(index)
                        && !g.have.contains(index)
                })
        })
    }

    /// Fetch order for a version: the members that hold it (nearest
    /// first), then the rest (they may have it by now).
    pub fn providers(&self, manifest: &Hash) -> Vec<PublicKey> {
        let mut order = self.others();
        if let Ok(inner) = self.inner.read() {
            // Stable: holders keep their RTT order, and so do the rest.
            order.sort_by_key(|k| {
                !inner
                    .get(k)
                    .is_some_and(|p| p.holds.iter().any(|h| h.manifest == *manifest))
            });
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use maki_protocol::{Hash, RECORD_FORMAT, Record, Revocation, SecretKey, Signed};

    use super::*;
    use crate::directory::testing::Net;

    /// The founder and two invited members.
    /// `me`'s member list of `net`, without a mesh.
    fn without_mesh(me: &SecretKey, net: &Net) -> Peers {
        let peers = Peers::new(
            me.public(),
            Hash::of(b"net"),
            None,
            MemoryLookup::new(),
            MemoryLookup::new(),
        );
        peers.refresh(&net.dir);
        peers
    }

    fn three() -> (Net, [SecretKey; 3]) {
        let mut net = Net::new();
        let founder = net.founder.clone();
        net.merge(Net::node(&founder, None, 1)).expect("founder");
        let keys = [
            founder,
            SecretKey::from_bytes(&[7; 32]),
            SecretKey::from_bytes(&[8; 32]),
        ];
        for (i, k) in keys.iter().enumerate().skip(1) {
            let secret = [i as u8; 32];
            net.merge(Record::Invite(net.invite(&secret)))
                .expect("invite");
            net.merge(Net::node(k, Some(&secret), 1)).expect("member");
        }
        (net, keys)
    }

    #[test]
    fn members_follow_the_records_and_keep_their_measurements() {
        let (mut net, [me, a, b]) = three();
        let peers = without_mesh(&me, &net);
        assert!(peers.is_member(&a.public()) && peers.is_member(&b.public()));
        // Unmeasured ones sort after measured, nearest first.
        peers.seen(&b.public(), Some(Duration::from_millis(5)));
        assert_eq!(peers.others(), vec![b.public(), a.public()]);
        peers.seen(&a.public(), Some(Duration::from_millis(1)));
        assert_eq!(peers.others(), vec![a.public(), b.public()]);

        // A newer record of a member keeps what was measured.
        net.merge(Net::node(&a, Some(&[1; 32]), 2)).expect("newer");
        peers.refresh(&net.dir);
        let p = peers.get(&a.public()).expect("still a member");
        assert_eq!((p.version, p.rtt), (2, Some(Duration::from_millis(1))));

        // A failed peer loses its measurement and sorts last.
        peers.failed(&a.public());
        assert_eq!(peers.others(), vec![b.public(), a.public()]);

        // Revoked: no longer a member.
        let revocation = Revocation {
            format: RECORD_FORMAT,
            node: b.public(),
            version: 1,
        };
        net.merge(Record::Revocation(Signed::sign(&net.admin, &revocation)))
            .expect("revocation");
        peers.refresh(&net.dir);
        assert!(!peers.is_member(&b.public()));
        assert_eq!(peers.others(), vec![a.public()]);
    }

    #[test]
    fn a_claim_ends_when_its_member_holds_the_version_whole() {
        let (net, [me, a, _b]) = three();
        let peers = without_mesh(&me, &net);
        let m = Hash::of(b"manifest");
        let progress = |at, getting: &[usize], have: &[usize]| Progress {
            format: maki_protocol::sync::PROGRESS_FORMAT,
            node: a.public(),
            manifest: m,
            have: maki_protocol::BlobSet::of_indices(8, have.iter().copied()),
            getting: maki_protocol::BlobSet::of_indices(8, getting.iter().copied()),
            at,
        };
        peers.set_progress(&a.public(), progress(1, &[0, 1], &[2]));
        assert!(peers.claimed(&m, 0) && peers.claimed(&m, 1));
        assert!(!peers.claimed(&m, 2) && !peers.claimed(&m, 3));
        assert_eq!(peers.holders(&m, 2), vec![(a.public(), false)]);
        // An older message changes nothing; a newer one replaces it.
        peers.set_progress(&a.public(), progress(0, &[3], &[]));
        assert!(peers.claimed(&m, 0) && !peers.claimed(&m, 3));
        // Done (whole), though its last progress never came: no claims.
        let whole = vec![Holding {
            site: maki_protocol::Domain::new("a.test").expect("domain"),
            seq: 1,
            manifest: m,
        }];
        assert!(peers.set_holds_at(&a.public(), whole, 5));
        assert!(!peers.claimed(&m, 0));
        assert_eq!(peers.holders(&m, 5), vec![(a.public(), true)]);
    }

    #[test]
    fn holders_are_asked_first_and_older_announcements_lose() {
        let (net, [me, a, b]) = three();
        let peers = without_mesh(&me, &net);
        peers.seen(&a.public(), Some(Duration::from_millis(1)));
        peers.seen(&b.public(), Some(Duration::from_millis(9)));
        let m = Hash::of(b"manifest");
        let holding = |seq| {
            vec![Holding {
                site: maki_protocol::Domain::new("a.test").expect("domain"),
                seq,
                manifest: m,
            }]
        };
        assert_eq!(peers.providers(&m), vec![a.public(), b.public()]);
        assert!(peers.set_holds_at(&b.public(), holding(1), 10));
        assert_eq!(peers.providers(&m), vec![b.public(), a.public()]);
        // An announcement older than the one taken changes nothing.
        assert!(!peers.set_holds_at(&b.public(), vec![], 9));
        assert_eq!(peers.get(&b.public()).map(|p| p.holds), Some(holding(1)));
        // Strangers' holdings are not recorded.
        let stranger = SecretKey::from_bytes(&[9; 32]).public();
        assert!(!peers.set_holds(&stranger, holding(1)));
        assert_eq!(peers.holds_digest(&stranger), None);
    }
}

/// The close code for a connection whose peer was removed (or never was a
/// member).
const REMOVED: iroh::endpoint::VarInt = iroh::endpoint::VarInt::from_u32(403);

/// The close code for a member's connection that came through the wrong
/// door (see [`MembersOnly`]).
const WRONG_DOOR: iroh::endpoint::VarInt = iroh::endpoint::VarInt::from_u32(421);

/// Which of a node's two endpoints a hook guards: the public one (joins,
/// admin, and members this node does not reach over the mesh) or the one
/// bound to its mesh address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Public,
    Mesh,
}

/// The endpoint hook that keeps the members-only protocols among members,
/// each through its door (see the module docs and `docs/architecture.md`,
/// "The mesh").
#[derive(Debug, Clone)]
pub struct MembersOnly {
    pub peers: Arc<Peers>,
    pub door: Door,
}

/// The protocols only members speak with each other.
fn members_only(alpn: &[u8]) -> bool {
    alpn == GOSSIP_ALPN || alpn == SYNC_ALPN || alpn == iroh_blobs::ALPN
}

impl MembersOnly {
    /// Whether member traffic with `key` belongs at this door: a member
    /// this node reaches over the mesh talks to it over the mesh only.
    fn right_door(&self, key: &PublicKey) -> bool {
        (self.door == Door::Mesh) == self.peers.mesh_addr(key).is_some()
    }
}

impl EndpointHooks for MembersOnly {
    /// Nothing members-only leaves through the wrong door, even when
    /// gossip names a meshed member to the public swarm.
    async fn before_connect<'a>(
        &'a self,
        remote: &'a iroh::EndpointAddr,
        alpn: &'a [u8],
    ) -> BeforeConnectOutcome {
        if !members_only(alpn) {
            return BeforeConnectOutcome::Accept;
        }
        match PublicKey::from_bytes(*remote.id.as_bytes()) {
            Ok(key) if self.right_door(&key) || !self.peers.is_member(&key) => {
                BeforeConnectOutcome::Accept
            }
            _ => BeforeConnectOutcome::Reject,
        }
    }

    /// Gossip links this node dials are kept (to close if the member is
    /// removed); those dialled in are kept, or closed, by the gossip
    /// handler (a refusal here would log a warning for every joiner,
    /// which dials before its record has arrived).
    ///
    /// A meshed member that calls the public door with a members-only
    /// protocol is refused (421): both ends run the mesh, so its traffic
    /// belongs there. This cannot partition members the way refusals did
    /// when one endpoint held both sockets (iroh dialled the public
    /// addresses it learned while punching holes): the mesh endpoint knows
    /// no address outside the mesh and tells none.
    async fn after_handshake<'a>(&'a self, conn: &'a Connection) -> AfterHandshakeOutcome {
        let alpn = conn.alpn();
        if !members_only(alpn) {
            return AfterHandshakeOutcome::Accept;
        }
        let Ok(key) = PublicKey::from_bytes(*conn.remote_id().as_bytes()) else {
            return AfterHandshakeOutcome::Reject {
                error_code: REMOVED,
                reason: b"not a member".to_vec(),
            };
        };
        if conn.side() == Side::Server {
            if self.door == Door::Public && self.peers.mesh_addr(&key).is_some() {
                tracing::debug!(peer = %key.fmt_short(), "refused a meshed member at the public door");
                // It may not know this node is meshed (a record it lacks).
                self.peers.introduce_to(&key);
                return AfterHandshakeOutcome::Reject {
                    error_code: WRONG_DOOR,
                    reason: b"members talk over the mesh".to_vec(),
                };
            }
            return AfterHandshakeOutcome::Accept;
        }
        if alpn != GOSSIP_ALPN || self.peers.hold_link(&key, conn) {
            AfterHandshakeOutcome::Accept
        } else {
            AfterHandshakeOutcome::Reject {
                error_code: REMOVED,
                reason: b"not a member".to_vec(),
            }
        }
    }
}
