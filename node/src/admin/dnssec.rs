//! A site's DNSSEC keys: made, resealed and rolled by an admin's CLI,
//! which seals them itself; the node checks what the record claims
//! before it takes it in.

use maki_protocol::{
    Domain, PublicKey, Record, Signed, View,
    dnssec::ZoneKeys,
    rpc::{KeysInfo, Response, RpcError},
};
use tracing::info;

use super::{AdminProtocol, sites::CLOCK_SKEW_MS};
use crate::dns::ROLE_DNS;

impl AdminProtocol {
    /// A site's publishers may read its public keys (for its DS); who
    /// the keys are sealed to is for admins.
    pub(super) fn keys(&self, caller: PublicKey, domain: Domain) -> Result<Response, RpcError> {
        // A removed site has no publishers, admins included.
        let site = self.require_publisher(caller, &domain)?;
        let admin = self.require_admin(caller).is_ok();
        let dir = self.shared.members.directory();
        let nameservers = dir
            .members()
            .filter(|(n, _)| n.roles.iter().any(|r| r == ROLE_DNS))
            .map(|(n, _)| (n.id, n.seal))
            .collect();
        let mut keys = dir.zone_keys(&domain).cloned();
        if !admin {
            keys.iter_mut().for_each(|k| k.sealed.clear());
        }
        Ok(Response::Keys(KeysInfo {
            keys,
            incarnation: site.heads_after,
            admins: if admin {
                dir.admins().to_vec()
            } else {
                Vec::new()
            },
            nameservers: if admin { nameservers } else { Vec::new() },
        }))
    }

    pub(super) fn keys_set(
        &self,
        caller: PublicKey,
        signed: Signed<ZoneKeys>,
    ) -> Result<Response, RpcError> {
        let keys = self.admin_signed(caller, &signed)?;
        let dir = self.shared.members.directory();
        let site = dir
            .site(&keys.site)
            .filter(|s| !s.removed)
            .ok_or_else(|| RpcError::UnknownSite(keys.site.clone()))?;
        if keys.incarnation != site.heads_after {
            return Err(RpcError::InvalidRecord(
                "made for the site before it was removed and added again; try again".into(),
            ));
        }
        keys.check()
            .map_err(|e| RpcError::InvalidRecord(format!("DNSSEC keys: {e}")))?;
        if keys.version > crate::now_millis().saturating_add(CLOCK_SKEW_MS) {
            return Err(RpcError::InvalidRecord(
                "DNSSEC keys dated in the future: check this machine's clock".into(),
            ));
        }
        // Signed is not honest: where this node holds a copy, the copy
        // must open to the private halves of the public keys shown, or
        // every nameserver would serve signatures nothing validates.
        self.shared
            .keyring
            .check(&keys)
            .map_err(|e| RpcError::InvalidRecord(format!("DNSSEC keys: this node's copy: {e}")))?;
        drop(dir);
        let count = keys.keys.len();
        let site_name = keys.site.clone();
        self.apply_admin(Record::Keys(signed), "set of DNSSEC keys")?;
        info!(site = %site_name, keys = count, "DNSSEC keys set");
        Ok(Response::Done)
    }
}
