//! Who may do what: every admin request is checked here against the
//! caller's key (proved by the TLS handshake) and the directory.

use maki_protocol::{Domain, Head, PublicKey, Signable, Signed, SiteRecord, rpc::RpcError};

use super::AdminProtocol;

impl AdminProtocol {
    pub(super) fn require_admin(&self, caller: PublicKey) -> Result<(), RpcError> {
        if self.shared.is_admin(&caller) {
            Ok(())
        } else {
            Err(RpcError::NotAdmin { key: caller })
        }
    }

    /// The site's record if `caller` may publish it (its publishers, and admins).
    pub(super) fn require_publisher(
        &self,
        caller: PublicKey,
        domain: &Domain,
    ) -> Result<SiteRecord, RpcError> {
        let rec = self
            .shared
            .directory()
            .site(domain)
            .cloned()
            .ok_or_else(|| RpcError::UnknownSite(domain.clone()))?;
        if rec.may_publish(&caller, &self.shared.genesis.admins) {
            Ok(rec)
        } else {
            Err(RpcError::NotPublisher {
                key: caller,
                domain: domain.clone(),
            })
        }
    }

    /// Checks a site record from `caller` and takes it in (it replicates).
    /// An admin's signed record: the caller is an admin and signed it.
    pub(super) fn admin_signed<T: Signable>(
        &self,
        caller: PublicKey,
        signed: &Signed<T>,
    ) -> Result<T, RpcError> {
        self.require_admin(caller)?;
        let record = signed.verify().map_err(|_| RpcError::BadSignature)?;
        if signed.signer() != caller {
            return Err(RpcError::SignerMismatch);
        }
        Ok(record)
    }

    /// Checks a signed head from `caller`: signature, signer, rights, order.
    pub(super) fn check_head(
        &self,
        caller: PublicKey,
        signed: &Signed<Head>,
    ) -> Result<Head, RpcError> {
        let head = signed.verify().map_err(|_| RpcError::BadSignature)?;
        if signed.signer() != caller {
            return Err(RpcError::SignerMismatch);
        }
        self.may_commit(caller, &head)?;
        Ok(head)
    }

    /// Whether `caller` may make `head` the site's next head now: checked
    /// when it is offered, and again under the serving lock just before it
    /// is committed (the site may have been removed, or handed to another
    /// publisher, while its blobs were arriving).
    pub(super) fn may_commit(&self, caller: PublicKey, head: &Head) -> Result<(), RpcError> {
        self.require_publisher(caller, &head.site)?;
        self.check_seq(head)
    }

    /// A new head must follow the current one.
    fn check_seq(&self, head: &Head) -> Result<(), RpcError> {
        let expected = self.current_seq(&head.site) + 1;
        if head.seq == expected {
            Ok(())
        } else {
            Err(RpcError::StaleSeq {
                expected,
                offered: head.seq,
            })
        }
    }

    /// The sequence number a new head must follow: the current head's, or
    /// where a site added again starts its heads.
    pub(super) fn current_seq(&self, domain: &Domain) -> u64 {
        let after = self
            .shared
            .directory()
            .site(domain)
            .map_or(0, |s| s.heads_after);
        self.shared
            .newest_head(domain)
            .map_or(0, |(seq, _)| seq)
            .max(after)
    }
}
