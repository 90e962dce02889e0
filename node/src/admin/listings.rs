//! What callers may list: sites, versions, member nodes.

use std::time::Duration;

use maki_protocol::{
    Domain, Hash, Manifest, PublicKey,
    rpc::{HeadInfo, Response, RpcError, SiteInfo, VersionInfo},
};

use super::{AdminProtocol, internal};

impl AdminProtocol {
    pub(super) fn peers(&self, caller: PublicKey) -> Result<Response, RpcError> {
        use maki_protocol::{mesh, rpc::PeerInfo};
        if !self.shared.is_admin(&caller) {
            return Err(RpcError::NotAdmin { key: caller });
        }
        let network = self.shared.members.network;
        let peers = self
            .shared
            .members
            .directory()
            .external_peers()
            .map(|p| PeerInfo {
                name: p.name.clone(),
                key: mesh::key_text(&p.key),
                endpoint: p.endpoint,
                addr: mesh::external_addr(&network, &p.key),
            })
            .collect();
        Ok(Response::Peers(peers))
    }

    pub(super) fn nodes(&self, caller: PublicKey) -> Result<Response, RpcError> {
        use maki_protocol::rpc::{Health, NodeInfo, NodeMesh};
        if !self.is_known(&caller) {
            return Err(RpcError::NotAdmin { key: caller });
        }
        // A publisher sees where its own sites are, not where others' are.
        let visible: Option<Vec<Domain>> = if self.shared.is_admin(&caller) {
            None
        } else {
            Some(
                self.shared
                    .members
                    .directory()
                    .sites()
                    .filter(|s| s.may_publish(&caller, &self.shared.genesis.admins))
                    .map(|s| s.domain.clone())
                    .collect(),
            )
        };
        let shown = |holds: Vec<maki_protocol::sync::Holding>| match &visible {
            None => holds,
            Some(mine) => holds
                .into_iter()
                .filter(|h| mine.contains(&h.site))
                .collect(),
        };
        // A peer counts as up if we exchanged with it within a few rounds.
        let fresh = (self.shared.config.sync_interval * 3).max(Duration::from_secs(15));
        let dir = self.shared.members.directory();
        let ids: Vec<PublicKey> = dir.members().map(|(n, _)| n.id).collect();
        let health_of = &self.shared.members.health;
        let nodes = self
            .shared
            .members
            .peers
            .all()
            .into_iter()
            .map(|(id, p)| {
                let me = id == self.shared.members.id;
                // Every public service it runs, as the members' probes find it.
                let checks: Vec<_> = crate::health::verdict::Service::ALL
                    .into_iter()
                    .filter(|s| p.roles.iter().any(|r| r == s.role()))
                    .map(|s| health_of.verdict(&id, s, &ids))
                    .collect();
                let health = if me {
                    Health::Me
                } else if checks.iter().any(|c| c.down) {
                    Health::Down
                } else if checks.iter().any(|c| c.here == Some(true))
                    || p.seen.is_some_and(|t| t.elapsed() < fresh)
                {
                    Health::Up
                } else if p.failing {
                    Health::Down
                } else {
                    Health::Unknown
                };
                NodeInfo {
                    id,
                    addrs: p.addrs,
                    region: p.region,
                    location: p.location,
                    version: p.version,
                    health,
                    rtt_us: p.rtt.map(|d| d.as_micros() as u64),
                    holds: shown(if me {
                        self.shared.members.live.holdings()
                    } else {
                        p.holds
                    }),
                    roles: p.roles,
                    checks,
                    ips: p.ips.clone(),
                    mesh: p.mesh.map(|m| {
                        let network = &self.shared.members.network;
                        let endpoint =
                            crate::mesh::MeshMember::of(network, id, &p.ips, &m).endpoint;
                        NodeMesh {
                            addr: maki_protocol::mesh::member_addr(network, &id),
                            key: maki_protocol::mesh::key_text(&m.key),
                            endpoint,
                            backend: m.backend,
                        }
                    }),
                }
            })
            .collect();
        Ok(Response::Nodes(nodes))
    }

    pub(super) async fn sites(&self, caller: PublicKey) -> Result<Response, RpcError> {
        let admin = self.shared.is_admin(&caller);
        let mut out = Vec::new();
        let dir = self.shared.members.directory();
        // Each certificate is checked as the edge checks it, so the
        // listing says why one is not served.
        let roots = std::sync::Arc::new(crate::certs::roots(dir.acme()));
        for (record, record_version) in dir.site_records() {
            let record = record.clone();
            if record.removed || (!admin && !record.publishers.contains(&caller)) {
                continue;
            }
            let domain = record.domain;
            let domain_for_pin = domain.clone();
            let latest_version = self
                .shared
                .state
                .versions(&domain)
                .map_err(internal)?
                .first()
                .map_or(0, |v| v.0);
            let info = |seq: u64, manifest: Hash, m: &Manifest| HeadInfo {
                seq,
                version: m.version,
                manifest,
                files: m.entries.len() as u64,
                bytes: m.total_size(),
                created: m.created,
            };
            let live = self.shared.members.live.get(domain.as_str());
            // The network's head, which may be ahead of what this node serves
            // while it downloads; a publish must build on it.
            let head = match (self.shared.newest_head(&domain), &live) {
                (Some((seq, m)), Some(l)) if l.manifest_hash == m => Some(HeadInfo {
                    seq,
                    version: l.summary.version,
                    manifest: m,
                    files: l.summary.files,
                    bytes: l.summary.bytes,
                    created: l.summary.created,
                }),
                (Some((seq, m)), _) => match self.load_manifest(m).await {
                    Ok(manifest) => Some(info(seq, m, &manifest)),
                    // Not here yet: the head is still what a publish builds
                    // on; the rest is what this node knows best.
                    Err(_) => Some(HeadInfo {
                        seq,
                        manifest: m,
                        version: live.as_ref().map_or(0, |l| l.summary.version),
                        files: 0,
                        bytes: 0,
                        created: 0,
                    }),
                },
                (None, _) => None,
            };
            out.push(SiteInfo {
                aliases: record.aliases,
                domain,
                heads_after: record.heads_after,
                publishers: record.publishers,
                head,
                latest_version,
                record_version,
                regions: dir
                    .pin(&domain_for_pin)
                    .map(|p| p.regions.clone())
                    .unwrap_or_default(),
                cert: dir
                    .cert(&domain_for_pin)
                    .map(|c| crate::certs::summary(c, &roots, self.shared.keyring.secret())),
                order: dir.acme_order(&domain_for_pin).map(|o| {
                    // A certificate written after the failure settled it.
                    let settled = dir
                        .cert(&domain_for_pin)
                        .is_some_and(|c| c.version > o.version);
                    maki_protocol::rpc::OrderSummary {
                        holder: o.holder,
                        ordering: o.until > crate::now_millis() / 1000,
                        failures: if settled { 0 } else { o.failures },
                        error: o.error.clone().filter(|_| !settled),
                        retry_at: o.retry_at,
                    }
                }),
            });
        }
        Ok(Response::Sites(out))
    }

    pub(super) async fn versions(
        &self,
        caller: PublicKey,
        domain: Domain,
    ) -> Result<Response, RpcError> {
        self.require_publisher(caller, &domain)?;
        let current = self
            .shared
            .members
            .live
            .get(domain.as_str())
            .map(|s| s.manifest_hash);
        let mut out = Vec::new();
        for (version, hash) in self.shared.state.versions(&domain).map_err(internal)? {
            let m = self.load_manifest(hash).await?;
            out.push(VersionInfo {
                version,
                manifest: hash,
                files: m.entries.len() as u64,
                bytes: m.total_size(),
                created: m.created,
                current: current == Some(hash),
            });
        }
        Ok(Response::Versions(out))
    }

    pub(super) async fn load_manifest(&self, hash: Hash) -> Result<Manifest, RpcError> {
        let bytes = self
            .shared
            .content
            .get_bytes(hash)
            .await
            .map_err(|_| RpcError::UnknownVersion(hash))?;
        Manifest::decode(&bytes).map_err(|e| RpcError::Internal(e.to_string()))
    }
}
