//! Who may do what: every admin request is checked here against the
//! caller's key (proved by the TLS handshake) and the directory. The
//! rules are pure functions of a directory snapshot, so they are tested
//! without a node.

use maki_protocol::{Domain, Head, PublicKey, Signable, Signed, SiteRecord, rpc::RpcError};

use super::AdminProtocol;
use crate::directory::Directory;

pub(super) fn require_admin(dir: &Directory, caller: PublicKey) -> Result<(), RpcError> {
    if dir.is_admin(&caller) {
        Ok(())
    } else {
        Err(RpcError::NotAdmin { key: caller })
    }
}

/// The site's record if `caller` may publish it (its publishers, and admins).
pub(super) fn require_publisher(
    dir: &Directory,
    caller: PublicKey,
    domain: &Domain,
) -> Result<SiteRecord, RpcError> {
    let rec = dir
        .site(domain)
        .ok_or_else(|| RpcError::UnknownSite(domain.clone()))?;
    if rec.may_publish(&caller, &dir.authority().admins) {
        Ok(rec.clone())
    } else {
        Err(RpcError::NotPublisher {
            key: caller,
            domain: domain.clone(),
        })
    }
}

/// An admin's signed record: the caller is an admin and signed it.
pub(super) fn admin_signed<T: Signable>(
    dir: &Directory,
    caller: PublicKey,
    signed: &Signed<T>,
) -> Result<T, RpcError> {
    require_admin(dir, caller)?;
    let record = signed.verify().map_err(|_| RpcError::BadSignature)?;
    if signed.signer() != caller {
        return Err(RpcError::SignerMismatch);
    }
    Ok(record)
}

/// The sequence number a new head of `domain` must follow: the newest
/// head this node knows of (`newest`, from the records or from what it
/// serves), or where a site added again starts its heads.
pub(super) fn current_seq(dir: &Directory, domain: &Domain, newest: Option<u64>) -> u64 {
    let after = dir.site(domain).map_or(0, |s| s.heads_after);
    newest.unwrap_or(0).max(after)
}

/// Whether `caller` may make `head` the site's next head now.
pub(super) fn may_commit(
    dir: &Directory,
    caller: PublicKey,
    head: &Head,
    newest: Option<u64>,
) -> Result<(), RpcError> {
    require_publisher(dir, caller, &head.site)?;
    let expected = current_seq(dir, &head.site, newest) + 1;
    if head.seq == expected {
        Ok(())
    } else {
        Err(RpcError::StaleSeq {
            expected,
            offered: head.seq,
        })
    }
}

/// A signed head from `caller`: signature, signer, rights, order
/// (`newest` gives the newest head this node knows of a site).
pub(super) fn check_head(
    dir: &Directory,
    caller: PublicKey,
    signed: &Signed<Head>,
    newest: impl FnOnce(&Domain) -> Option<u64>,
) -> Result<Head, RpcError> {
    let head = signed.verify().map_err(|_| RpcError::BadSignature)?;
    if signed.signer() != caller {
        return Err(RpcError::SignerMismatch);
    }
    may_commit(dir, caller, &head, newest(&head.site))?;
    Ok(head)
}

impl AdminProtocol {
    fn newest_seq(&self, domain: &Domain) -> Option<u64> {
        self.shared.newest_head(domain).map(|(seq, _)| seq)
    }

    pub(super) fn require_admin(&self, caller: PublicKey) -> Result<(), RpcError> {
        require_admin(&self.shared.members.directory(), caller)
    }

    pub(super) fn require_publisher(
        &self,
        caller: PublicKey,
        domain: &Domain,
    ) -> Result<SiteRecord, RpcError> {
        require_publisher(&self.shared.members.directory(), caller, domain)
    }

    pub(super) fn admin_signed<T: Signable>(
        &self,
        caller: PublicKey,
        signed: &Signed<T>,
    ) -> Result<T, RpcError> {
        admin_signed(&self.shared.members.directory(), caller, signed)
    }

    pub(super) fn check_head(
        &self,
        caller: PublicKey,
        signed: &Signed<Head>,
    ) -> Result<Head, RpcError> {
        check_head(&self.shared.members.directory(), caller, signed, |d| {
            self.newest_seq(d)
        })
    }

    /// [`may_commit`] as things are now: checked when a head is offered,
    /// and again under the serving lock just before it is committed (the
    /// site may have been removed, or handed to another publisher, while
    /// its blobs were arriving).
    pub(super) fn may_commit(&self, caller: PublicKey, head: &Head) -> Result<(), RpcError> {
        let newest = self.newest_seq(&head.site);
        may_commit(&self.shared.members.directory(), caller, head, newest)
    }
}

#[cfg(test)]
mod tests {
    use maki_protocol::{Hash, RECORD_FORMAT, Record, SecretKey};

    use super::*;
    use crate::directory::Authority;

    struct Net {
        admin: SecretKey,
        publisher: SecretKey,
        stranger: SecretKey,
        dir: Directory,
        domain: Domain,
    }

    impl Net {
        /// One admin, and `a.test` with one publisher.
        fn new() -> Self {
            let admin = SecretKey::from_bytes(&[1; 32]);
            let mut net = Self {
                dir: Directory::new(Authority {
                    network: Hash::of(b"net"),
                    admins: vec![admin.public()],
                    founder: admin.public(),
                }),
                publisher: SecretKey::from_bytes(&[2; 32]),
                stranger: SecretKey::from_bytes(&[3; 32]),
                domain: Domain::new("a.test").expect("domain"),
                admin,
            };
            net.site(1, |_| {});
            net
        }

        /// A new version of the site's record, changed by `change`.
        fn site(&mut self, version: u64, change: impl FnOnce(&mut SiteRecord)) {
            let mut site = SiteRecord {
                format: RECORD_FORMAT,
                domain: self.domain.clone(),
                aliases: vec![],
                publishers: vec![self.publisher.public()],
                version,
                removed: false,
                heads_after: 0,
            };
            change(&mut site);
            self.dir
                .merge(
                    &Record::Site(Signed::sign(&self.admin, &site)),
                    &mut Vec::new(),
                )
                .expect("site record");
        }

        fn head(&self, by: &SecretKey, seq: u64) -> Signed<Head> {
            Signed::sign(
                by,
                &Head {
                    site: self.domain.clone(),
                    seq,
                    manifest: Hash::of(b"m"),
                },
            )
        }
    }

    #[test]
    fn only_admins_pass_as_admins() {
        let net = Net::new();
        assert_eq!(require_admin(&net.dir, net.admin.public()), Ok(()));
        for k in [&net.publisher, &net.stranger] {
            assert_eq!(
                require_admin(&net.dir, k.public()),
                Err(RpcError::NotAdmin { key: k.public() })
            );
        }
    }

    #[test]
    fn a_site_is_published_by_its_publishers_and_admins_only() {
        let mut net = Net::new();
        for k in [&net.publisher, &net.admin] {
            assert!(require_publisher(&net.dir, k.public(), &net.domain).is_ok());
        }
        assert_eq!(
            require_publisher(&net.dir, net.stranger.public(), &net.domain),
            Err(RpcError::NotPublisher {
                key: net.stranger.public(),
                domain: net.domain.clone()
            })
        );
        let other = Domain::new("b.test").expect("domain");
        assert_eq!(
            require_publisher(&net.dir, net.admin.public(), &other),
            Err(RpcError::UnknownSite(other))
        );
        // A removed site has no publishers, admins included.
        net.site(2, |s| s.removed = true);
        assert_eq!(
            require_publisher(&net.dir, net.publisher.public(), &net.domain),
            Err(RpcError::UnknownSite(net.domain.clone()))
        );
    }

    #[test]
    fn admin_records_must_be_signed_by_the_admin_calling() {
        let net = Net::new();
        let site = SiteRecord {
            format: RECORD_FORMAT,
            domain: net.domain.clone(),
            aliases: vec![],
            publishers: vec![],
            version: 9,
            removed: true,
            heads_after: 0,
        };
        let by_admin = Signed::sign(&net.admin, &site);
        assert_eq!(
            admin_signed(&net.dir, net.admin.public(), &by_admin),
            Ok(site.clone())
        );
        // A publisher relaying an admin's record is still no admin.
        assert_eq!(
            admin_signed(&net.dir, net.publisher.public(), &by_admin),
            Err(RpcError::NotAdmin {
                key: net.publisher.public()
            })
        );
        // An admin relaying someone else's record: not theirs to vouch for.
        let by_stranger = Signed::sign(&net.stranger, &site);
        assert_eq!(
            admin_signed(&net.dir, net.admin.public(), &by_stranger),
            Err(RpcError::SignerMismatch)
        );
        // Signed under another context: the signature does not hold.
        let forged = Signed::<SiteRecord>::sign_bytes_under(
            &net.admin,
            b"makiatto/head/v1",
            by_admin.bytes().to_vec(),
        );
        assert_eq!(
            admin_signed(&net.dir, net.admin.public(), &forged),
            Err(RpcError::BadSignature)
        );
    }

    #[test]
    fn a_head_must_follow_the_newest_one() {
        let mut net = Net::new();
        let none = |_: &Domain| None;
        let at_3 = |_: &Domain| Some(3);
        let publisher = net.publisher.public();
        assert!(check_head(&net.dir, publisher, &net.head(&net.publisher, 1), none).is_ok());
        assert_eq!(
            check_head(&net.dir, publisher, &net.head(&net.publisher, 2), none),
            Err(RpcError::StaleSeq {
                expected: 1,
                offered: 2
            })
        );
        assert!(check_head(&net.dir, publisher, &net.head(&net.publisher, 4), at_3).is_ok());
        assert_eq!(
            check_head(&net.dir, publisher, &net.head(&net.publisher, 3), at_3),
            Err(RpcError::StaleSeq {
                expected: 4,
                offered: 3
            })
        );
        // Signed by the publisher, offered by someone else.
        assert_eq!(
            check_head(
                &net.dir,
                net.admin.public(),
                &net.head(&net.publisher, 1),
                none
            ),
            Err(RpcError::SignerMismatch)
        );
        // A stranger's own head.
        assert!(matches!(
            check_head(
                &net.dir,
                net.stranger.public(),
                &net.head(&net.stranger, 1),
                none
            ),
            Err(RpcError::NotPublisher { .. })
        ));
        // A site added again starts above its old heads.
        net.site(2, |s| s.heads_after = 10);
        assert_eq!(current_seq(&net.dir, &net.domain, Some(3)), 10);
        assert!(check_head(&net.dir, publisher, &net.head(&net.publisher, 11), at_3).is_ok());
    }

    #[test]
    fn a_commit_is_judged_against_the_site_as_it_is_then() {
        let mut net = Net::new();
        let head = Head {
            site: net.domain.clone(),
            seq: 1,
            manifest: Hash::of(b"m"),
        };
        let publisher = net.publisher.public();
        assert_eq!(may_commit(&net.dir, publisher, &head, None), Ok(()));
        // Handed to another publisher while the blobs were arriving.
        let other = net.stranger.public();
        net.site(2, |s| s.publishers = vec![other]);
        assert!(matches!(
            may_commit(&net.dir, publisher, &head, None),
            Err(RpcError::NotPublisher { .. })
        ));
        // Removed while the blobs were arriving.
        net.site(3, |s| s.removed = true);
        assert_eq!(
            may_commit(&net.dir, other, &head, None),
            Err(RpcError::UnknownSite(net.domain.clone()))
        );
    }
}
