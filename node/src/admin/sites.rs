//! Changes to the network's records an admin makes: sites, pins,
//! invites, revocations.

use maki_protocol::{
    Domain, Invite, PublicKey, Record, Signed, SiteRecord,
    rpc::{Response, RpcError},
};
use tracing::info;

use super::{AdminProtocol, internal};
use crate::directory::Applied;

impl AdminProtocol {
    pub(super) fn invite(
        &self,
        caller: PublicKey,
        signed: Signed<Invite>,
    ) -> Result<Response, RpcError> {
        let invite = self.admin_signed(caller, &signed)?;
        let bad = |m: &str| Err(RpcError::InvalidInvite(m.to_owned()));
        if invite.format > maki_protocol::RECORD_FORMAT {
            return bad("made by a newer maki; upgrade this node");
        }
        if invite.network != self.shared.members.network {
            return bad("it names another network");
        }
        if invite.issuer != self.shared.members.id {
            return bad("it names another issuing node; only the issuer can redeem it");
        }
        if invite.is_expired(crate::now()) {
            return bad("it has already expired");
        }
        self.shared
            .state
            .add_invite(invite.secret_hash, &signed)
            .map_err(internal)?;
        // Also a replicated record: other members check joiners against it.
        self.shared
            .members
            .apply_local(Record::Invite(signed))
            .map_err(|e| RpcError::InvalidInvite(e.to_string()))?;
        info!(expires = invite.expires, "invite stored");
        Ok(Response::Done)
    }

    pub(super) fn pin(
        &self,
        caller: PublicKey,
        signed: Signed<maki_protocol::Pin>,
    ) -> Result<Response, RpcError> {
        let pin = self.admin_signed(caller, &signed)?;
        if self.shared.members.directory().site(&pin.site).is_none() {
            return Err(RpcError::UnknownSite(pin.site));
        }
        self.apply_admin(Record::Pin(signed), "pin of the site")?;
        info!(site = %pin.site, regions = ?pin.regions, "site pinned");
        Ok(Response::Done)
    }

    pub(super) fn peer_set(
        &self,
        caller: PublicKey,
        signed: Signed<maki_protocol::PeerRecord>,
    ) -> Result<Response, RpcError> {
        let peer = self.admin_signed(caller, &signed)?;
        if !maki_protocol::valid_peer_name(&peer.name) {
            return Err(RpcError::InvalidRecord(format!(
                "{:?} is not a peer name (1 to 32 of a-z, 0-9 and -)",
                peer.name
            )));
        }
        let dir = self.shared.members.directory();
        if peer.removed {
            if !dir.external_peers().any(|p| p.name == peer.name) {
                return Err(RpcError::InvalidRecord(format!(
                    "there is no peer {:?} (maki peer list shows them)",
                    peer.name
                )));
            }
        } else if let Some((n, _)) = dir
            .members()
            .find(|(n, _)| n.mesh.as_ref().is_some_and(|m| m.key == peer.key))
        {
            return Err(RpcError::InvalidRecord(format!(
                "that WireGuard key is node {}'s",
                n.id.fmt_short()
            )));
        } else if let Some(other) = dir
            .external_peers()
            .find(|p| p.key == peer.key && p.name != peer.name)
        {
            return Err(RpcError::InvalidRecord(format!(
                "that WireGuard key is peer {:?}'s already",
                other.name
            )));
        }
        self.apply_admin(Record::Peer(signed), "external peer")?;
        if peer.removed {
            info!(peer = %peer.name, "external peer removed");
        } else {
            info!(peer = %peer.name, endpoint = ?peer.endpoint, "external peer set");
        }
        Ok(Response::Done)
    }

    pub(super) fn node_remove(
        &self,
        caller: PublicKey,
        signed: Signed<maki_protocol::Revocation>,
    ) -> Result<Response, RpcError> {
        let revocation = self.admin_signed(caller, &signed)?;
        if !self.shared.members.peers.is_member(&revocation.node) {
            return Err(RpcError::UnknownNode(revocation.node));
        }
        if revocation.node == self.shared.members.id {
            return Err(RpcError::InvalidRecord(
                "a node cannot revoke itself; ask another member".into(),
            ));
        }
        self.apply_admin(Record::Revocation(signed), "revocation of that node")?;
        info!(node = %revocation.node.fmt_short(), "node revoked");
        Ok(Response::Done)
    }

    /// Takes in a record made here; an older one than held is refused.
    pub(super) fn apply_admin(&self, record: Record, what: &str) -> Result<(), RpcError> {
        match self.shared.members.apply_local(record) {
            Ok(Applied::New | Applied::Replaced) => Ok(()),
            Ok(Applied::Stale) => Err(RpcError::InvalidRecord(format!(
                "this node holds a newer {what}; list and try again"
            ))),
            Err(e) => Err(RpcError::InvalidRecord(e.to_string())),
        }
    }

    pub(super) async fn site_add(
        &self,
        caller: PublicKey,
        signed: Signed<SiteRecord>,
    ) -> Result<Response, RpcError> {
        let record = self.admin_signed(caller, &signed)?;
        if record.removed || record.publishers.is_empty() {
            return Err(RpcError::InvalidRecord(
                "a new site needs publishers and must not be marked removed".into(),
            ));
        }
        let _guard = self.shared.serving.lock().await;
        let dir = self.shared.members.directory();
        if dir.site(&record.domain).is_some() {
            return Err(RpcError::SiteExists(record.domain));
        }
        if let Some(other) = dir.sites().find(|s| s.aliases.contains(&record.domain)) {
            return Err(RpcError::InvalidRecord(format!(
                "{} is an alias of {}; remove the alias first",
                record.domain, other.domain
            )));
        }
        check_aliases(&dir, &record)?;
        self.apply_admin(Record::Site(signed), "record of the site")?;
        info!(site = %record.domain, aliases = ?record.aliases, "site added");
        Ok(Response::Done)
    }

    /// A site's record again, with other aliases; everything else stays.
    pub(super) async fn site_update(
        &self,
        caller: PublicKey,
        signed: Signed<SiteRecord>,
    ) -> Result<Response, RpcError> {
        let record = self.admin_signed(caller, &signed)?;
        let _guard = self.shared.serving.lock().await;
        let dir = self.shared.members.directory();
        let Some(current) = dir.site(&record.domain) else {
            return Err(RpcError::UnknownSite(record.domain));
        };
        // Only the aliases may change here: publishers and the head floor
        // have their own rules, and removal its own request.
        if record.removed
            || record.publishers != current.publishers
            || record.heads_after != current.heads_after
        {
            return Err(RpcError::InvalidRecord(
                "an update may change the aliases only; list the site and try again".into(),
            ));
        }
        check_aliases(&dir, &record)?;
        self.apply_admin(Record::Site(signed), "record of the site")?;
        info!(site = %record.domain, aliases = ?record.aliases, "site updated");
        Ok(Response::Done)
    }

    pub(super) async fn site_remove(
        &self,
        caller: PublicKey,
        signed: Signed<SiteRecord>,
    ) -> Result<Response, RpcError> {
        let record = self.admin_signed(caller, &signed)?;
        if !record.removed {
            return Err(RpcError::InvalidRecord(
                "a removal must be marked removed".into(),
            ));
        }
        let domain = record.domain;
        let guard = self.shared.serving.lock().await;
        if self.shared.members.directory().site(&domain).is_none() {
            return Err(RpcError::UnknownSite(domain));
        }
        self.apply_admin(Record::Site(signed), "record of the site")?;
        guard.clear(&domain).await;
        info!(site = %domain, "site removed");
        Ok(Response::Done)
    }

    /// Where a site added again (or anew) starts its heads: above every
    /// head this node has seen for the domain.
    pub(super) fn head_floor(
        &self,
        caller: PublicKey,
        domain: &Domain,
    ) -> Result<Response, RpcError> {
        self.require_admin(caller)?;
        let seen = self.shared.state.head_floor(domain).map_err(internal)?;
        let current = self.shared.newest_head(domain).map_or(0, |(seq, _)| seq);
        // Above a removed incarnation's floor too, so what was made for it
        // (its DNS records) never matches the new one.
        let before = self
            .shared
            .members
            .directory()
            .site_record(domain)
            .map_or(0, |(s, _)| s.heads_after.saturating_add(1));
        Ok(Response::HeadFloor {
            seq: seen.max(current).max(before),
        })
    }
}

/// How far ahead of this node's clock a record's version may be.
pub(super) const CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// The most aliases one site may have.
pub const MAX_ALIASES: usize = 64;

/// Refuses aliases that would make a name ambiguous: the site's own
/// domain, a name twice, or a name another site has as its domain or as
/// an alias. (Records from two admins racing can still clash; every node
/// then settles it alike, see `live::aliases_of`.)
fn check_aliases(dir: &crate::directory::Directory, record: &SiteRecord) -> Result<(), RpcError> {
    let bad = |m: String| Err(RpcError::InvalidRecord(m));
    if record.aliases.len() > MAX_ALIASES {
        return bad(format!("a site may have at most {MAX_ALIASES} aliases"));
    }
    // `ns-<id>.<zone>` is a nameserver's own name in every zone: a site
    // or alias there would take it from under the nameservers.
    for name in std::iter::once(&record.domain).chain(&record.aliases) {
        if let Some((first, rest)) = name.as_str().split_once('.')
            && maki_protocol::zone::nameserver_name(first)
            && dir
                .sites()
                .any(|s| s.domain.as_str() == rest || s.aliases.iter().any(|a| a.as_str() == rest))
        {
            return bad(format!(
                "{name} is a nameserver's name in {rest} (ns- and 10 hex digits)"
            ));
        }
    }
    for (i, alias) in record.aliases.iter().enumerate() {
        if *alias == record.domain {
            return bad(format!("{alias} is the site's own domain"));
        }
        if record.aliases[..i].contains(alias) {
            return bad(format!("{alias} is named twice"));
        }
        for other in dir.sites().filter(|s| s.domain != record.domain) {
            if other.domain == *alias {
                return bad(format!("{alias} is a site of its own"));
            }
            if other.aliases.contains(alias) {
                return bad(format!("{alias} is already an alias of {}", other.domain));
            }
        }
    }
    Ok(())
}

impl AdminProtocol {
    /// A site's own DNS records, from a publisher of it (or an admin).
    /// Besides what every node checks, names at or below another site's
    /// domain or alias are refused here, where the publisher hears why
    /// (everywhere else such a record is only shadowed by that site's zone).
    pub(super) fn zone_set(
        &self,
        caller: PublicKey,
        signed: Signed<maki_protocol::zone::ZoneRecord>,
    ) -> Result<Response, RpcError> {
        let zone = signed.verify().map_err(|_| RpcError::BadSignature)?;
        if signed.signer() != caller {
            return Err(RpcError::SignerMismatch);
        }
        let site = self.require_publisher(caller, &zone.site)?;
        if zone.incarnation != site.heads_after {
            return Err(RpcError::InvalidRecord(
                "made for the site before it was removed and added again; list it and try again"
                    .into(),
            ));
        }
        zone.check()
            .map_err(|e| RpcError::InvalidRecord(format!("DNS records: {e}")))?;
        if let Some(r) = zone
            .records
            .iter()
            .find(|r| maki_protocol::zone::nameserver_name(&r.name))
        {
            return Err(RpcError::InvalidRecord(format!(
                "DNS records: {} is a nameserver's name (ns- and 10 hex digits): the network answers there",
                r.name
            )));
        }
        // The newest version wins everywhere, for good: one from a clock far
        // ahead would outlive every later change (and a removal and
        // re-adding of the site). Minutes of skew are allowed.
        if zone.version > crate::now_millis().saturating_add(CLOCK_SKEW_MS) {
            return Err(RpcError::InvalidRecord(
                "DNS records dated in the future: check this machine's clock".into(),
            ));
        }
        let dir = self.shared.members.directory();
        for other in dir.sites().filter(|s| s.domain != zone.site) {
            for name in other.names() {
                if let Some(taken) = zone.names_under(name).first() {
                    return Err(RpcError::InvalidRecord(format!(
                        "DNS records: {taken} is at or below {name}, another site's name"
                    )));
                }
            }
        }
        let count = zone.records.len();
        self.apply_admin(Record::Zone(signed), "set of DNS records")?;
        info!(site = %zone.site, records = count, "DNS records set");
        Ok(Response::Done)
    }
}
