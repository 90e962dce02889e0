//! The node: owns every subsystem, starts them in order, stops them in
//! reverse. `main.rs` only parses arguments and calls [`Node::spawn`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use iroh::{address_lookup::MemoryLookup, protocol::Router};
use iroh_blobs::{
    BlobsProtocol,
    provider::events::{ConnectMode, EventMask, EventSender, ObserveMode, RequestMode},
};
use iroh_gossip::net::Gossip;
use maki_protocol::{
    Domain, Hash, Head, Manifest, NodeRecord, NodeTicket, PublicKey, ROLE_HTTP, Record, SecretKey,
    Signed,
    rpc::{ADMIN_ALPN, JOIN_ALPN},
    sync::{GOSSIP_ALPN, SYNC_ALPN},
};
use n0_future::{BufferedStreamExt, StreamExt};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use crate::shared::Shared;
use crate::{
    admin::AdminProtocol,
    config::Config,
    content::Content,
    directory::{Authority, Directory},
    edge,
    endpoint::Endpoints,
    gate::PushGate,
    gossip::Swarms,
    identity,
    live::{Live, LiveSite},
    members::Members,
    mesh::Mesh,
    outbox::Outbox,
    peers::{Door, MembersOnly, Peers},
    records::Records,
    serving::Serving,
    state::State,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Bind(#[from] crate::endpoint::BindError),
    #[error(
        "{0} lacks invite.bin: this node joined with an invite and cannot prove it is a member without it; restore the file from a backup, or join again with a new invite"
    )]
    NoMembership(PathBuf),
    #[error(transparent)]
    Edge(#[from] edge::EdgeError),
    #[error(transparent)]
    Tls(#[from] edge::tls::TlsError),
    #[error("a task loading the stored sites failed: {0}")]
    Load(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Mesh(#[from] crate::mesh::MeshError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    /// The public endpoint's protocols.
    router: Router,
    /// The mesh endpoint's, with the mesh on.
    mesh_router: Option<Router>,
    http_addr: Option<SocketAddr>,
    edge: Option<edge::Edge>,
    /// The nameserver, with the dns role.
    dns: Option<crate::dns::Dns>,
    /// Removed at shutdown, once nothing sends through it.
    mesh: Option<Arc<Mesh>>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Node {
    /// Starts a node from an initialised data directory.
    pub async fn spawn(data_dir: &Path) -> Result<Self, NodeError> {
        let config = Config::load(data_dir)?;
        let key = identity::load_key(data_dir)?;
        let network = identity::load_genesis(data_dir)?;
        // Only the founder is a member without an invite.
        let membership = identity::load_membership(data_dir)?;
        if membership.is_none() && key.public() != network.signed.signer() {
            return Err(NodeError::NoMembership(data_dir.to_owned()));
        }
        let state = Arc::new(State::open(&data_dir.join("state.redb"))?);
        let records = Records::load(
            state.clone(),
            Authority {
                network: network.id,
                admins: network.genesis.admins.clone(),
                founder: network.signed.signer(),
            },
        )?;
        let content = Content::load(&blobs_dir(data_dir), Some(config.gc_interval)).await?;
        let orphans = content.remove_orphans(&blobs_dir(data_dir)).await?;
        if orphans > 0 {
            info!(bytes = orphans, "removed blobs a crash left in flight");
        }
        let swept = content.sweep_temp().await?;
        if swept > 0 {
            info!(swept, "removed leftovers of interrupted publishes");
        }
        // Versions the state no longer keeps lose their tags, so their
        // blobs are collected (a crash between a prune and its tag's removal).
        let kept: std::collections::HashSet<String> = state
            .all_versions()?
            .into_iter()
            .map(|(site, manifest)| format!("v/{site}/{manifest}"))
            .collect();
        let dropped = content.drop_unkept_versions(&kept).await?;
        if dropped > 0 {
            info!(dropped, "dropped tags of versions no longer kept");
        }
        let content = Arc::new(content);
        let live = Arc::new(Live::default());
        let loading = std::time::Instant::now();
        load_live(&state, &records.directory(), &content, &live).await?;
        info!(sites = live.len(), elapsed = ?loading.elapsed(), "serving the stored sites");

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let mesh = Mesh::start(
            config.mesh,
            data_dir,
            config.wireguard_port,
            &network.id,
            &key.public(),
        )?
        .map(Arc::new);
        let lookup = MemoryLookup::new();
        let mesh_lookup = MemoryLookup::new();
        let (introductions, introductions_rx) = mpsc::channel(16);
        let peers = Arc::new(
            Peers::new(
                key.public(),
                network.id,
                mesh.clone(),
                lookup.clone(),
                mesh_lookup.clone(),
            )
            .with_introductions(introductions),
        );
        let guard = |door| MembersOnly {
            peers: peers.clone(),
            door,
        };
        let endpoint =
            crate::endpoint::bind_node(&key, config.p2p, lookup, guard(Door::Public)).await?;
        let mesh_endpoint = match &mesh {
            Some(m) => {
                let bound = crate::endpoint::bind_mesh(
                    &key,
                    m.addr(),
                    config.p2p.port(),
                    mesh_lookup,
                    guard(Door::Mesh),
                )
                .await;
                match bound {
                    Ok(e) => Some(e),
                    Err(error) => {
                        endpoint.close().await;
                        return Err(error.into());
                    }
                }
            }
            None => None,
        };
        let endpoints = Endpoints::new(endpoint.clone(), mesh_endpoint.clone(), peers.clone());
        let (served_elsewhere, served_elsewhere_rx) = watch::channel(0);
        let (gossip_out, gossip_rx) = mpsc::channel(crate::gossip::OUTBOX);
        let keep_versions = config.keep_versions;
        let members = Arc::new(Members {
            id: key.public(),
            network: network.id,
            outbox: Outbox::new(gossip_out, key.clone(), live.clone()),
            records,
            peers,
            live: live.clone(),
            served_elsewhere,
            sync_soon: tokio::sync::Notify::new(),
            health: crate::health::verdict::Health::new(key.public()),
        });
        members.refresh_peers();
        let shared = Arc::new(Shared {
            config,
            genesis: network.genesis,
            signed_genesis: network.signed,
            serving: Serving::new(state.clone(), content.clone(), live, keep_versions),
            state,
            content,
            members: members.clone(),
            keyring: Arc::new(crate::dns::sign::Keyring::new(
                maki_protocol::seal::node_secret(&key),
            )),
        });

        let mask = EventMask {
            connected: ConnectMode::Intercept,
            // Members fetch from each other; nobody else reads over p2p.
            get: RequestMode::Intercept,
            get_many: RequestMode::Intercept,
            push: RequestMode::Intercept,
            observe: ObserveMode::None,
            ..EventMask::DEFAULT
        };
        let (events, events_rx) = EventSender::channel(256, mask);
        let gate = Arc::new(PushGate::default());
        tasks.spawn(crate::gate::run(
            gate.clone(),
            members.peers.clone(),
            events_rx,
            cancel.clone(),
        ));
        let record_sets = Arc::new(crate::sync::RecordSets::default());
        let blobs = BlobsProtocol::new(shared.content.store(), Some(events));
        let swarms = Swarms {
            public: Gossip::builder().alpn(GOSSIP_ALPN).spawn(endpoint.clone()),
            mesh: mesh_endpoint
                .as_ref()
                .map(|e| Gossip::builder().alpn(GOSSIP_ALPN).spawn(e.clone())),
        };
        // What both doors serve: the members-only protocols, and admin
        // (from a laptop outside, or an external peer inside the mesh).
        let members_router = |endpoint: &iroh::Endpoint, gossip: &Gossip| {
            Router::builder(endpoint.clone())
                .accept(ADMIN_ALPN, AdminProtocol::new(shared.clone(), gate.clone()))
                .accept(iroh_blobs::ALPN, SharedBlobs(blobs.clone()))
                .accept(
                    SYNC_ALPN,
                    crate::sync::SyncProtocol::new(
                        members.clone(),
                        record_sets.clone(),
                        shared.config.sync_timeout,
                    ),
                )
                .accept(
                    GOSSIP_ALPN,
                    crate::gossip::MemberGossip {
                        gossip: gossip.clone(),
                        members: members.clone(),
                    },
                )
        };
        let router = members_router(&endpoint, &swarms.public)
            .accept(
                JOIN_ALPN,
                crate::join::JoinProtocol::new(
                    members.network,
                    shared.signed_genesis.clone(),
                    shared.state.clone(),
                    members.clone(),
                    key.clone(),
                ),
            )
            .spawn();
        let mesh_router = match (&mesh_endpoint, &swarms.mesh) {
            (Some(e), Some(g)) => Some(members_router(e, g).spawn()),
            _ => None,
        };
        if let (Some(e), Some(m)) = (&mesh_endpoint, &mesh) {
            info!(at = ?e.bound_sockets(), addr = %m.addr(), "members are met at the mesh address");
        }

        // A node without the http role holds and forwards content only.
        let mut network_certs = None;
        let edge = if shared.config.roles.iter().any(|r| r == ROLE_HTTP) {
            let certs = Arc::new(edge::tls::Certs::new(members.live.clone()));
            network_certs = Some(certs.clone());
            let sites = Arc::new(edge::Sites {
                live: members.live.clone(),
                content: shared.content.clone(),
                config: shared.config.clone(),
                certs: Some(certs.clone()),
                https_port: std::sync::OnceLock::new(),
                alt_svc: std::sync::OnceLock::new(),
            });
            let tickets = Arc::new(edge::tickets::SharedTicketer::new(
                rustls::crypto::ring::Ticketer::new().map_err(edge::tls::TlsError::from)?,
            ));
            tasks.spawn(crate::certs::keep_issued(
                members.clone(),
                certs.clone(),
                tickets.clone(),
                key.clone(),
                cancel.clone(),
            ));
            tasks.spawn(crate::acme::run(
                members.clone(),
                key.clone(),
                cancel.clone(),
            ));
            let tickets = shared.config.tls_resumption.then_some(tickets);
            let h3 = if shared.config.http3 {
                Some(edge::tls::quic_config(certs.clone(), tickets.clone())?)
            } else {
                None
            };
            let https = edge::Https {
                addr: shared.config.https,
                config: edge::tls::server_config(certs, tickets)?,
                h3,
            };
            Some(edge::Edge::spawn(
                shared.config.http,
                Some(https),
                shared.config.http_threads,
                sites,
                cancel.clone(),
            )?)
        } else {
            None
        };
        let http_addr = edge.as_ref().map(|e| e.local_addr());
        let dns = if shared
            .config
            .roles
            .iter()
            .any(|r| r == crate::dns::ROLE_DNS)
        {
            let config = &shared.config;
            let settings = crate::dns::Settings {
                ttl: config.dns_ttl,
                answers: config.dns_answers,
                region: config.region.clone(),
                location: config.location.map(|[lat, lon]| (lat, lon)),
            };
            // A database that cannot be read is logged, not fatal: the
            // nameserver answers without geo until a good one is installed.
            let geo = match crate::dns::GeoDb::load(data_dir) {
                Ok(db) => db.map(Arc::new),
                Err(error) => {
                    warn!(%error, "answering without a geo database");
                    None
                }
            };
            let keyring = shared.keyring.clone();
            let zones = Arc::new(crate::dns::Zones::new(crate::dns::current(
                &members,
                settings.clone(),
                geo,
                &keyring,
            )));
            tasks.spawn(crate::dns::keep_current(
                members.clone(),
                zones.clone(),
                settings,
                keyring,
                data_dir.to_owned(),
                cancel.clone(),
            ));
            let name = format!("ns-{}.makiatto.invalid", key.public().fmt_short());
            let (tls, quic) = crate::dns::dot::server_configs(network_certs, &name)?;
            Some(crate::dns::Dns::spawn(
                config.dns,
                config.dns_threads,
                zones,
                Some(crate::dns::Encrypted {
                    addr: config.dot_addr(),
                    tls,
                    quic,
                }),
                cancel.clone(),
            )?)
        } else {
            None
        };
        let dns_addr = dns.as_ref().map(|d| d.local_addr());
        info!(node = %key.public().fmt_short(), ?http_addr, ?dns_addr, "node started");
        let node = Self {
            shared,
            router,
            mesh_router,
            http_addr,
            edge,
            dns,
            mesh,
            cancel,
            tasks,
        };
        node.record_self(&key, membership);
        let mut node = node;
        // Also without a mesh here: members may still take this node for
        // meshed (it just turned the mesh off).
        node.tasks.spawn(crate::join::introduce(
            node.shared.config.p2p,
            members.clone(),
            introductions_rx,
            node.cancel.clone(),
        ));
        node.tasks.spawn(crate::replicate::run(
            node.shared.clone(),
            endpoints.clone(),
            members.records.subscribe(),
            served_elsewhere_rx,
            node.cancel.clone(),
        ));
        node.tasks.spawn(crate::gossip::run(
            members.clone(),
            swarms,
            gossip_rx,
            members.records.subscribe(),
            node.cancel.clone(),
        ));
        node.tasks
            .spawn(sweep_live(node.shared.clone(), node.cancel.clone()));
        node.tasks.spawn(crate::health::run(
            node.shared.members.clone(),
            node.cancel.clone(),
        ));
        node.tasks.spawn(keep_aliases(
            node.shared.members.clone(),
            node.cancel.clone(),
        ));
        node.tasks.spawn(crate::sync::run(
            members,
            record_sets,
            endpoints,
            node.shared.config.sync_interval,
            node.shared.config.sync_timeout,
            node.cancel.clone(),
        ));
        Ok(node)
    }

    /// Puts this node's own record (and the invite that admitted it) into
    /// its records, with a version above any it signed before.
    fn record_self(&self, key: &SecretKey, membership: Option<identity::Membership>) {
        let mut secret_hash = None;
        let mut admission = None;
        if let Some(m) = membership {
            secret_hash = m.invite.verify().ok().map(|i| i.secret_hash);
            admission = Some(m.admission);
            if let Err(error) = self.shared.members.apply_record(&Record::Invite(m.invite)) {
                warn!(%error, "the invite this node redeemed is not valid here");
            }
        }
        let id = self.shared.members.id;
        let previous = self
            .shared
            .members
            .directory()
            .node(&id)
            .map(|(_, version)| version);
        let config = &self.shared.config;
        let addrs = self.ticket().addrs;
        let mut ips = config.public_ips.clone();
        if ips.is_empty() {
            ips = addrs.iter().map(|a| a.ip()).collect();
            ips.dedup();
        }
        let mesh = self.mesh.as_ref().and_then(|m| {
            let port = crate::endpoint::mesh_port(self.mesh_router.as_ref()?.endpoint())?;
            Some(m.announce(port))
        });
        let record = NodeRecord {
            format: maki_protocol::NODE_FORMAT,
            id,
            addrs,
            region: config.region.clone(),
            location: config.location.map(|[lat, lon]| (lat, lon)),
            version: crate::now().max(previous.map_or(0, |v| v + 1)),
            invite: secret_hash,
            roles: config.roles.clone(),
            admission,
            ips,
            mesh,
            ports: [
                (ROLE_HTTP, self.http_addr),
                (crate::dns::ROLE_DNS, self.dns_addr()),
            ]
            .into_iter()
            .filter_map(|(role, addr)| Some((role.to_owned(), addr?.port())))
            .collect(),
            seal: Some(maki_protocol::seal::public_key(
                &maki_protocol::seal::node_secret(key),
            )),
            #[cfg(feature = "next-format")]
            note: Some(crate::next::NODE_NOTE.into()),
        };
        if let Err(error) = self
            .shared
            .members
            .apply_record(&Record::Node(Signed::sign(key, &record)))
        {
            warn!(%error, "could not record this node");
        }
        #[cfg(feature = "next-format")]
        if let Err(error) = self.shared.members.apply_local(crate::next::note(key)) {
            warn!(%error, "could not record this node's note");
        }
    }

    /// Where the HTTP edge listens; `None` without the http role.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where HTTPS listens; `None` without the http role.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.edge.as_ref().and_then(|e| e.https_addr())
    }

    /// Where the nameserver listens; `None` without the dns role.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|d| d.local_addr())
    }

    /// Where the nameserver answers DNS over TLS; `None` without the dns
    /// role.
    pub fn dot_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().and_then(|d| d.dot_addr())
    }

    /// How to reach this node: its id plus public or bound addresses.
    pub fn ticket(&self) -> NodeTicket {
        let ep = self.router.endpoint();
        let mut addrs = self.shared.config.public_addrs.clone();
        let mesh = self.mesh.as_ref().map(|m| std::net::IpAddr::V6(m.addr()));
        if addrs.is_empty() {
            for a in ep.bound_sockets() {
                if a.ip().is_unspecified() {
                    addrs.extend(
                        ep.addr()
                            .ip_addrs()
                            .filter(|x| x.port() == a.port())
                            .copied(),
                    );
                } else {
                    addrs.push(a);
                }
            }
        }
        // Not the mesh address (a public endpoint bound to every address
        // listens there too): tickets are for those outside the mesh.
        addrs.retain(|a| Some(a.ip()) != mesh);
        addrs.sort();
        addrs.dedup();
        NodeTicket {
            id: PublicKey::from_bytes(*ep.id().as_bytes()).unwrap_or_else(|_| unreachable_key()),
            addrs,
        }
    }

    pub fn network(&self) -> Hash {
        self.shared.members.network
    }

    /// Stops accepting, drains, then closes the stores.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(edge) = self.edge.take() {
            edge.join().await;
        }
        if let Some(dns) = self.dns.take() {
            dns.join().await;
        }
        if let Some(router) = self.mesh_router.take()
            && let Err(error) = router.shutdown().await
        {
            warn!(%error, "mesh router did not shut down cleanly");
        }
        if let Err(error) = self.router.shutdown().await {
            warn!(%error, "p2p router did not shut down cleanly");
        }
        drop(self.mesh.take());
        while let Some(res) = self.tasks.join_next().await {
            if let Err(e) = res
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.shared.content.shutdown().await;
    }
}

// A running endpoint's id is always a valid key; this only satisfies the
// type system without a panic path.
fn unreachable_key() -> PublicKey {
    SecretKey::from_bytes(&[0; 32]).public()
}

pub fn blobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("blobs")
}

/// Drops replaced site versions once no edge worker holds them, on a
/// blocking thread: freeing a million files takes a while.
/// Keeps the edge's aliases as the site records give them.
async fn keep_aliases(members: Arc<crate::members::Members>, cancel: CancellationToken) {
    let mut records = members.records.subscribe();
    loop {
        let aliases = crate::live::aliases_of(&records.borrow_and_update());
        if members.live.set_aliases(aliases) {
            debug!("site aliases changed");
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = records.changed() => if changed.is_err() { break },
        }
    }
}

async fn sweep_live(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = every.tick() => {}
        }
        let dead = shared.members.live.sweep();
        if !dead.is_empty() {
            tokio::task::spawn_blocking(move || drop(dead)).await.ok();
        }
    }
}

/// How many stored sites are checked and laid out at once at start: enough
/// to keep every core and the blob store busy.
const LOAD_AT_ONCE: usize = 16;

/// Serves again what was served before the stop: every stored head that
/// the records still allow, whose blobs are all here. The checks that need
/// the disk run on several tasks at once; start time grows with the sites.
async fn load_live(
    state: &State,
    dir: &Directory,
    content: &Arc<Content>,
    live: &Live,
) -> Result<(), NodeError> {
    let mut heads = Vec::new();
    for site in dir.sites() {
        let domain = site.domain.clone();
        let Some(signed) = state.served_head(&domain)? else {
            continue;
        };
        // Verified when it was committed; not checked again at each start.
        let Ok(head) = signed.decode_trusted() else {
            warn!(site = %domain, "stored head no longer decodes; not serving it");
            continue;
        };
        if !site.current(head.seq) {
            info!(site = %domain, "the stored version is from before the site was added again; not serving it");
            continue;
        }
        if !site.may_publish(&signed.signer(), &dir.authority().admins) {
            info!(site = %domain, "the stored version was published by a key that may no longer publish the site; not serving it");
            continue;
        }
        heads.push((domain, head));
    }
    let mut loads = n0_future::stream::iter(heads)
        .map(|(domain, head)| {
            let content = content.clone();
            tokio::spawn(async move {
                let site = load_site(&domain, &head, &content).await;
                (domain, site)
            })
        })
        .buffered_unordered(LOAD_AT_ONCE);
    while let Some(done) = loads.next().await {
        let (domain, site) = done?;
        if let Some(site) = site? {
            live.set(domain, site);
        }
    }
    Ok(())
}

/// One stored version, checked against the disk and laid out; None (said
/// why) if it cannot be served.
async fn load_site(
    domain: &Domain,
    head: &Head,
    content: &Content,
) -> Result<Option<LiveSite>, NodeError> {
    let manifest = match content
        .get_bytes(head.manifest)
        .await
        .map(|b| Manifest::decode(&b))
    {
        Ok(Ok(manifest)) => manifest,
        Ok(Err(error)) => {
            warn!(site = %domain, %error, "stored manifest does not decode; not serving it");
            return Ok(None);
        }
        Err(error) => {
            warn!(site = %domain, %error, "stored manifest is missing; not serving it");
            return Ok(None);
        }
    };
    // What is on disk may predate today's checks (or a disk may have
    // lost blobs): serve only a version whose every blob is here, with
    // the size the manifest declares.
    match content.check_manifest(&manifest).await {
        Ok(missing) if missing.is_empty() => {
            match LiveSite::prepare(head.seq, head.manifest, manifest).await {
                Ok(site) => Ok(Some(site)),
                Err(error) => {
                    warn!(site = %domain, %error, "could not lay out the stored version");
                    Ok(None)
                }
            }
        }
        Ok(missing) => {
            warn!(site = %domain, missing = missing.len(), "stored version lacks blobs; not serving it until it is fetched again");
            Ok(None)
        }
        Err(crate::content::ContentError::SizeMismatch {
            path,
            declared,
            stored,
        }) => {
            warn!(site = %domain, %path, declared, stored, "stored version declares a wrong size; not serving it");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// The blobs protocol, served at both doors from one store: the same
/// handler, without the store's shutdown, which the node does once, last
/// (`Content::shutdown`), after both routers stopped.
#[derive(Debug, Clone)]
struct SharedBlobs(BlobsProtocol);

impl iroh::protocol::ProtocolHandler for SharedBlobs {
    async fn accept(
        &self,
        conn: iroh::endpoint::Connection,
    ) -> Result<(), iroh::protocol::AcceptError> {
        self.0.accept(conn).await
    }
}
