//! Certificates from an ACME CA, as the replicated state holds them.
//!
//! - [`AcmeConfig`]: which CA the nodes order from, who it tells about
//!   them, and what the zones' CAA records allow. One per network,
//!   signed by an admin.
//! - [`AcmeAccount`]: the network's one account at that CA, its key
//!   sealed to the `http` nodes and the admins. Made by the first node
//!   that orders; signed by a member node or an admin.
//! - [`AcmeOrder`]: per site, who is ordering its certificate now (a
//!   lease), the challenges every node answers for it, and how the last
//!   attempt failed. Signed by the member node that holds the lease.

use serde::{Deserialize, Serialize};

use crate::{
    Domain, PublicKey, Signable,
    seal::{self, Sealed},
};

/// The kind number of [`AcmeConfig`] (see [`crate::kind_context`]).
pub const ACME_KIND: u32 = 10;
/// The kind number of [`AcmeAccount`].
pub const ACCOUNT_KIND: u32 = 11;
/// The kind number of [`AcmeOrder`].
pub const ORDER_KIND: u32 = 12;

/// The HPKE `info` of the account key: no other sealed secret opens as it.
pub const ACCOUNT_SEAL_INFO: &[u8] = b"makiatto/acme-account/v1";

/// The longest directory URL or contact.
pub const MAX_URL: usize = 512;
/// The most contacts and CAA issuer names.
pub const MAX_LIST: usize = 8;
/// The largest extra root (DER).
pub const MAX_ROOT: usize = 16 << 10;
/// The longest challenge token or proof.
pub const MAX_TOKEN: usize = 256;
/// The longest error kept of a failed order.
pub const MAX_ERROR: usize = 1024;

/// The network's ACME settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeConfig {
    pub format: u16,
    /// The CA's ACME directory (`https://…`), e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Who the CA writes to (`mailto:…`).
    pub contact: Vec<String>,
    /// Roots the nodes trust besides the system's (DER), for the CA's
    /// certificates and its directory: a private CA, or Pebble in tests
    /// (whose directory and certificates have roots of their own).
    pub roots: Vec<Vec<u8>>,
    /// The CA's CAA identifiers (`letsencrypt.org`): every zone without
    /// CAA records of its own gets `issue` and `issuewild` for each, so
    /// only the network's CA may issue for its sites (RFC 8659).
    pub caa: Vec<Domain>,
    /// How names are proven to the CA: HTTP-01 asks any node over port
    /// 80 and needs the name pointed at the network; DNS-01 asks the
    /// network's nameservers and needs the zone delegated to them. A
    /// wildcard is always proven with DNS-01.
    pub challenge: ChallengeKind,
    pub version: u64,
}

impl Signable for AcmeConfig {
    const CONTEXT: &'static [u8] = b"makiatto/record/10";
}

/// Why ACME settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    #[error("the directory must be an https:// URL of at most {MAX_URL} bytes")]
    Directory,
    #[error(
        "a contact must be a mailto: URL of at most {MAX_URL} bytes, and at most {MAX_LIST} of them"
    )]
    Contact,
    #[error("at most {MAX_LIST} CAA issuer names")]
    Caa,
    #[error(
        "an extra root is empty or larger than {MAX_ROOT} bytes, or more than {MAX_LIST} of them"
    )]
    Root,
}

impl AcmeConfig {
    /// The checks that need nothing but the record.
    pub fn check(&self) -> Result<(), AcmeError> {
        let ok_url = |s: &str, scheme: &str| {
            s.len() <= MAX_URL && printable(s) && s.len() > scheme.len() && s.starts_with(scheme)
        };
        if !directory_ok(&self.directory) {
            return Err(AcmeError::Directory);
        }
        if self.contact.len() > MAX_LIST || !self.contact.iter().all(|c| ok_url(c, "mailto:")) {
            return Err(AcmeError::Contact);
        }
        if self.caa.len() > MAX_LIST {
            return Err(AcmeError::Caa);
        }
        if self.roots.len() > MAX_LIST
            || self
                .roots
                .iter()
                .any(|r| r.is_empty() || r.len() > MAX_ROOT)
        {
            return Err(AcmeError::Root);
        }
        Ok(())
    }
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn directory_ok(url: &str) -> bool {
    url.len() <= MAX_URL && printable(url) && url.len() > 8 && url.starts_with("https://")
}

/// The network's account at its CA. The key is the account: whoever
/// holds it orders for the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeAccount {
    pub format: u16,
    /// The directory the account is at: a record for another directory
    /// than the settings name is stale, and a new account is made.
    pub directory: String,
    /// The account's URL at the CA (its id): kept when its key changes.
    pub url: String,
    /// The account key (PKCS#8 DER, ECDSA P-256), one copy per recipient.
    pub sealed: Vec<Sealed>,
    pub version: u64,
}

impl Signable for AcmeAccount {
    const CONTEXT: &'static [u8] = b"makiatto/record/11";
}

/// Why an account record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("the directory and the account must be https:// URLs of at most {MAX_URL} bytes")]
    Directory,
    #[error(
        "no copy of the key, more than {} copies, or a copy larger than {} bytes",
        crate::cert::MAX_RECIPIENTS,
        crate::cert::MAX_SEALED
    )]
    Copies,
    #[error("two copies for one recipient")]
    TwoCopies,
    #[error("no copy of the key is sealed to this key")]
    NoCopy,
    #[error("the key does not open: {0}")]
    Open(#[from] seal::SealError),
}

impl AcmeAccount {
    /// The checks that need nothing but the record.
    pub fn check(&self) -> Result<(), AccountError> {
        if !directory_ok(&self.directory) || !directory_ok(&self.url) {
            return Err(AccountError::Directory);
        }
        if self.sealed.is_empty()
            || self.sealed.len() > crate::cert::MAX_RECIPIENTS
            || self
                .sealed
                .iter()
                .any(|s| s.ct.len() > crate::cert::MAX_SEALED)
        {
            return Err(AccountError::Copies);
        }
        if seal::repeats(&self.sealed) {
            return Err(AccountError::TwoCopies);
        }
        Ok(())
    }

    /// The account key (PKCS#8 DER) from the copy sealed to `secret`'s
    /// public key.
    pub fn open(&self, secret: &[u8; 32]) -> Result<Vec<u8>, AccountError> {
        Ok(seal::open_own(
            secret,
            &self.sealed,
            ACCOUNT_SEAL_INFO,
            self.directory.as_bytes(),
        )
        .ok_or(AccountError::NoCopy)??)
    }

    /// Seals `key` (PKCS#8 DER) to each of `recipients`; `fresh` gives
    /// new random bytes for each copy.
    pub fn seal_to(
        &mut self,
        key: &[u8],
        recipients: &[[u8; 32]],
        fresh: impl FnMut() -> [u8; 32],
    ) -> Result<(), AccountError> {
        self.sealed = seal::seal_each(
            recipients,
            fresh,
            ACCOUNT_SEAL_INFO,
            self.directory.as_bytes(),
            key,
        )?;
        Ok(())
    }
}

/// How the CA is shown that the network controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeKind {
    /// `http://NAME/.well-known/acme-challenge/TOKEN` answers the proof,
    /// on every node.
    Http01,
    /// `_acme-challenge.NAME` has the proof as TXT, on every nameserver
    /// (the only kind a wildcard may use).
    Dns01,
}

/// One challenge of an order, as every node answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub kind: ChallengeKind,
    /// The name as ordered (a wildcard as `*.parent`).
    pub name: String,
    /// The CA's token (base64url).
    pub token: String,
    /// What is answered: the key authorization (HTTP-01) or its digest
    /// (DNS-01).
    pub proof: String,
}

impl Challenge {
    /// The name whose TXT record answers a DNS-01 challenge.
    pub fn txt_name(&self) -> String {
        let bare = self.name.strip_prefix("*.").unwrap_or(&self.name);
        format!("_acme-challenge.{bare}")
    }
}

/// Who orders a site's certificate, and what came of the last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeOrder {
    pub format: u16,
    pub site: Domain,
    /// The site's `heads_after` when made, as in a CertRecord.
    pub incarnation: u64,
    /// The member node ordering (the signer).
    pub holder: PublicKey,
    /// Until when the holder is ordering (seconds since the epoch); the
    /// others leave the site to it until then. 0: nobody is.
    pub until: u64,
    /// The challenges of the order in flight.
    pub challenges: Vec<Challenge>,
    /// Attempts that failed in a row (0 after a certificate came).
    pub failures: u32,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// No node orders again before this (seconds since the epoch), as
    /// long as the ACME settings are still those of version `settings`:
    /// new settings may be the fix.
    pub retry_at: u64,
    /// The version of the ACME settings the last attempt was made under.
    pub settings: u64,
    pub version: u64,
}

impl Signable for AcmeOrder {
    const CONTEXT: &'static [u8] = b"makiatto/record/12";
}

/// Why an order record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    #[error("{0} challenges; at most {max}", max = crate::cert::MAX_NAMES)]
    TooMany(usize),
    #[error("{name} is not a name of {site}")]
    NotTheSites { name: String, site: Domain },
    #[error("a token or proof that is empty, longer than {MAX_TOKEN} bytes, or not base64url")]
    Token,
    #[error("an error text longer than {MAX_ERROR} bytes or not printable")]
    Error,
    #[error("made for the site before it was removed and added again")]
    OtherIncarnation,
    #[error("not signed by its holder, or its holder is no member (any more)")]
    NotHolder,
}

impl AcmeOrder {
    /// The checks that need nothing but the record and the names of its
    /// site (its domain and aliases).
    pub fn check(&self, site_names: &[&str]) -> Result<(), OrderError> {
        if self.challenges.len() > crate::cert::MAX_NAMES {
            return Err(OrderError::TooMany(self.challenges.len()));
        }
        // Tokens are base64url (RFC 8555 §8.1), proofs a token, a dot and
        // a base64url thumbprint, or a base64url digest: nothing that
        // could break out of a URL path or a TXT string.
        let b64url = |s: &str, dot: bool| {
            !s.is_empty()
                && s.len() <= MAX_TOKEN
                && s.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (dot && b == b'.')
                })
        };
        for c in &self.challenges {
            if !crate::cert::covers_own(&c.name, site_names) {
                return Err(OrderError::NotTheSites {
                    name: c.name.clone(),
                    site: self.site.clone(),
                });
            }
            if !b64url(&c.token, false) || !b64url(&c.proof, true) {
                return Err(OrderError::Token);
            }
        }
        if let Some(e) = &self.error
            && (e.len() > MAX_ERROR || !e.bytes().all(|b| b == b' ' || b.is_ascii_graphic()))
        {
            return Err(OrderError::Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_directories_and_mailto_contacts() {
        let good = AcmeConfig {
            format: 1,
            directory: "https://acme.test/dir".into(),
            contact: vec!["mailto:ops@example.com".into()],
            roots: vec![],
            caa: vec![Domain::new("letsencrypt.org").expect("domain")],
            challenge: ChallengeKind::Http01,
            version: 1,
        };
        assert_eq!(good.check(), Ok(()));
        for dir in ["http://acme.test/dir", "https://", "https://a b", "ftp://x"] {
            let bad = AcmeConfig {
                directory: dir.into(),
                ..good.clone()
            };
            assert_eq!(bad.check(), Err(AcmeError::Directory), "{dir}");
        }
        let bad = AcmeConfig {
            contact: vec!["ops@example.com".into()],
            ..good.clone()
        };
        assert_eq!(bad.check(), Err(AcmeError::Contact));
        let bad = AcmeConfig {
            roots: vec![vec![]],
            ..good
        };
        assert_eq!(bad.check(), Err(AcmeError::Root));
    }

    fn order() -> AcmeOrder {
        AcmeOrder {
            format: 1,
            site: Domain::new("a.test").expect("domain"),
            incarnation: 0,
            holder: crate::SecretKey::from_bytes(&[1; 32]).public(),
            until: 10,
            challenges: vec![Challenge {
                kind: ChallengeKind::Http01,
                name: "a.test".into(),
                token: "tok-EN_1".into(),
                proof: "tok-EN_1.thumb".into(),
            }],
            failures: 0,
            error: None,
            retry_at: 0,
            settings: 0,
            version: 1,
        }
    }

    #[test]
    fn orders_name_only_the_sites_names_and_carry_no_markup() {
        assert_eq!(order().check(&["a.test"]), Ok(()));
        let mut o = order();
        o.challenges[0].name = "*.a.test".into();
        o.challenges[0].kind = ChallengeKind::Dns01;
        assert_eq!(o.check(&["a.test"]), Ok(()));
        assert_eq!(o.challenges[0].txt_name(), "_acme-challenge.a.test");
        o.challenges[0].name = "b.test".into();
        assert!(matches!(
            o.check(&["a.test"]),
            Err(OrderError::NotTheSites { .. })
        ));
        for (token, proof) in [("../x", "p"), ("t", "a/b"), ("", "p"), ("t", "a\"x")] {
            let mut o = order();
            o.challenges[0].token = token.into();
            o.challenges[0].proof = proof.into();
            assert_eq!(
                o.check(&["a.test"]),
                Err(OrderError::Token),
                "{token} {proof}"
            );
        }
        let mut o = order();
        o.error = Some("bad\ntext".into());
        assert_eq!(o.check(&["a.test"]), Err(OrderError::Error));
    }

    #[test]
    fn the_account_key_opens_only_for_its_directory() {
        let secret = [7u8; 32];
        let mut a = AcmeAccount {
            format: 1,
            directory: "https://acme.test/dir".into(),
            url: "https://acme.test/acct/1".into(),
            sealed: vec![],
            version: 1,
        };
        assert_eq!(a.check(), Err(AccountError::Copies));
        let mut n = 0u8;
        a.seal_to(b"key", &[seal::public_key(&secret)], || {
            n += 1;
            [n; 32]
        })
        .expect("seal");
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a.open(&secret), Ok(b"key".to_vec()));
        assert_eq!(a.open(&[8; 32]), Err(AccountError::NoCopy));
        let moved = AcmeAccount {
            directory: "https://other.test/dir".into(),
            ..a
        };
        assert!(matches!(moved.open(&secret), Err(AccountError::Open(_))));
    }
}
