//! A site's TLS certificate as it replicates: the chain in the clear, the
//! private key sealed (HPKE, [`crate::seal`]) to each node that serves
//! HTTPS and to each admin.
//!
//! Signed by an admin, by a publisher of the site (who uploaded it), or
//! by a member node (one that ordered it from the network's ACME CA, or
//! resealed it for nodes that joined since). What the chain claims is
//! checked by each node that serves it: that it chains to a root the node
//! trusts, names only the site's own names, and matches the key sealed to
//! it (X.509 is the node's to parse; this crate does no I/O and knows no
//! roots). A certificate for another site's name is never served for it.

use serde::{Deserialize, Serialize};

use crate::{
    Domain, Signable,
    seal::{self, Sealed},
};

/// The kind number of [`CertRecord`] (see [`crate::kind_context`]).
pub const CERT_KIND: u32 = 9;

/// The most certificates in a chain (the leaf and its intermediates).
pub const MAX_CHAIN: usize = 8;
/// The largest certificate of a chain (DER).
pub const MAX_CERT: usize = 16 << 10;
/// The most recipients of the sealed key.
pub const MAX_RECIPIENTS: usize = 512;
/// The largest sealed key (a PKCS#8 document of an RSA-4096 key fits).
pub const MAX_SEALED: usize = 4096;
/// The most names a certificate may be for.
pub const MAX_NAMES: usize = 100;

/// The HPKE `info` of TLS keys: sealed secrets of other purposes never
/// open as TLS keys.
pub const SEAL_INFO: &[u8] = b"makiatto/tls-key/v1";

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Ordered by a node from the network's ACME CA.
    Acme,
    /// Uploaded with `maki cert set`.
    Upload,
}

/// A site's certificate. No chain: the site has none (the nodes serve a
/// self-signed one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub format: u16,
    pub site: Domain,
    /// The site's `heads_after` when made (as in a ZoneRecord): a site
    /// removed and added again does not get the old certificate back.
    pub incarnation: u64,
    pub origin: Origin,
    /// The names it is for, as the leaf names them (a wildcard as
    /// `*.parent`): each is the site's domain or one of its aliases, or a
    /// wildcard under one.
    pub names: Vec<String>,
    /// The leaf first, then its intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// When the leaf expires (seconds since the epoch), as it says; for
    /// `maki sites` and renewal, checked against the leaf where served.
    pub not_after: u64,
    /// The private key (PKCS#8 DER), one copy per recipient.
    pub sealed: Vec<Sealed>,
    pub version: u64,
}

impl Signable for CertRecord {
    const CONTEXT: &'static [u8] = b"makiatto/record/9";
}

/// Why a certificate record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("no certificate, or a key sealed without one")]
    Empty,
    #[error("a chain of {0} certificates; at most {MAX_CHAIN}")]
    LongChain(usize),
    #[error("a certificate of {0} bytes; at most {MAX_CERT}")]
    LargeCert(usize),
    #[error("{0} names; at most {MAX_NAMES}")]
    TooManyNames(usize),
    #[error("{name} is not a name of {site}")]
    NotTheSites { name: String, site: Domain },
    #[error("{0} recipients; at most {MAX_RECIPIENTS}")]
    TooManyRecipients(usize),
    #[error("a sealed key of {0} bytes; at most {MAX_SEALED}")]
    TooLarge(usize),
    #[error("two copies for one recipient")]
    TwoCopies,
    #[error("made for the site before it was removed and added again")]
    OtherIncarnation,
    #[error("the expiry shown is not the certificate's (or it cannot be read)")]
    Expiry,
    #[error("no copy of the key is sealed to this key")]
    NoCopy,
    #[error("the key does not open: {0}")]
    Open(#[from] crate::seal::SealError),
}

impl CertRecord {
    /// The checks that need nothing but the record and the names of its
    /// site (its domain and aliases).
    pub fn check(&self, site_names: &[&str]) -> Result<(), CertError> {
        if self.chain.is_empty() != self.sealed.is_empty()
            || self.chain.is_empty() != self.names.is_empty()
        {
            return Err(CertError::Empty);
        }
        if self.chain.len() > MAX_CHAIN {
            return Err(CertError::LongChain(self.chain.len()));
        }
        if let Some(c) = self.chain.iter().find(|c| c.len() > MAX_CERT) {
            return Err(CertError::LargeCert(c.len()));
        }
        if self.names.len() > MAX_NAMES {
            return Err(CertError::TooManyNames(self.names.len()));
        }
        if let Some(name) = self.names.iter().find(|n| !covers_own(n, site_names)) {
            return Err(CertError::NotTheSites {
                name: name.clone(),
                site: self.site.clone(),
            });
        }
        if self.sealed.len() > MAX_RECIPIENTS {
            return Err(CertError::TooManyRecipients(self.sealed.len()));
        }
        if let Some(s) = self.sealed.iter().find(|s| s.ct.len() > MAX_SEALED) {
            return Err(CertError::TooLarge(s.ct.len()));
        }
        if seal::repeats(&self.sealed) {
            return Err(CertError::TwoCopies);
        }
        if let Some(leaf) = self.chain.first()
            && not_after(leaf) != Some(self.not_after)
        {
            return Err(CertError::Expiry);
        }
        Ok(())
    }

    /// What each sealed copy is bound to: the site and the leaf. A copy
    /// moved into another site's record, or next to another certificate,
    /// does not open.
    pub fn aad(&self) -> Vec<u8> {
        let mut aad = self.site.as_str().as_bytes().to_vec();
        aad.push(0);
        if let Some(leaf) = self.chain.first() {
            aad.extend_from_slice(blake3::hash(leaf).as_bytes());
        }
        aad
    }

    /// The private key (PKCS#8 DER) from the copy sealed to `secret`'s
    /// public key.
    pub fn open(&self, secret: &[u8; 32]) -> Result<Vec<u8>, CertError> {
        Ok(seal::open_own(secret, &self.sealed, SEAL_INFO, &self.aad())
            .ok_or(CertError::NoCopy)??)
    }

    /// Seals `key` (PKCS#8 DER) to each of `recipients`; `fresh` gives
    /// new random bytes for each copy.
    pub fn seal_to(
        &mut self,
        key: &[u8],
        recipients: &[[u8; 32]],
        fresh: impl FnMut() -> [u8; 32],
    ) -> Result<(), CertError> {
        self.sealed = seal::seal_each(recipients, fresh, SEAL_INFO, &self.aad(), key)?;
        Ok(())
    }
}

/// When the X.509 certificate `der` expires (its `notAfter`, seconds since
/// the epoch); None if it cannot be read that far.
pub fn not_after(der: &[u8]) -> Option<u64> {
    validity(der).map(|(_, after)| after)
}

/// Who issued the X.509 certificate `der`: the issuer's common name, or
/// else its organisation; printable ASCII only.
pub fn issuer_name(der: &[u8]) -> Option<String> {
    let (mut rdns, _) = der_item(from_issuer(der)?, 0x30)?;
    // id-at-commonName and id-at-organizationName.
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    let (mut cn, mut o) = (None, None);
    while !rdns.is_empty() {
        let (mut set, next) = der_item(rdns, 0x31)?;
        rdns = next;
        while !set.is_empty() {
            let (atv, next) = der_item(set, 0x30)?;
            set = next;
            let (oid, value) = der_item(atv, 0x06)?;
            let tag = *value.first()?;
            let (text, _) = der_item(value, tag)?;
            let text: String = String::from_utf8_lossy(text)
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .collect();
            if oid == CN {
                cn = Some(text);
            } else if oid == O {
                o = Some(text);
            }
        }
    }
    cn.or(o).filter(|t| !t.is_empty())
}

/// The X.509 certificate `der`'s `notBefore` and `notAfter` (seconds
/// since the epoch); None if it cannot be read that far.
pub fn validity(der: &[u8]) -> Option<(u64, u64)> {
    // The issuer, skipped.
    let rest = der_item(from_issuer(der)?, 0x30)?.1;
    let (validity, _) = der_item(rest, 0x30)?;
    let (before, after) = der_time(validity)?;
    let (after, _) = der_time(after)?;
    Some((before, after))
}

/// The X.509 certificate `der`'s to-be-signed part from its issuer on.
fn from_issuer(der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = der_item(der, 0x30)?;
    let (mut tbs, _) = der_item(cert, 0x30)?;
    // [0] EXPLICIT version, when present.
    if tbs.first() == Some(&0xa0) {
        tbs = der_item(tbs, 0xa0)?.1;
    }
    // serialNumber and signature, skipped.
    let rest = der_item(tbs, 0x02)?.1;
    Some(der_item(rest, 0x30)?.1)
}

/// The UTCTime or GeneralizedTime at the start of `b` (seconds since the
/// epoch), and what follows it.
fn der_time(b: &[u8]) -> Option<(u64, &[u8])> {
    let tag = *b.first()?;
    let (time, next) = der_item(b, tag)?;
    let text = std::str::from_utf8(time).ok()?;
    let (year, rest) = match tag {
        // UTCTime: YYMMDDHHMMSSZ, years 1950 to 2049 (RFC 5280 §4.1.2.5.1).
        0x17 => {
            let yy: u64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        // GeneralizedTime: YYYYMMDDHHMMSSZ.
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    if rest.len() != 11 || !rest.ends_with('Z') {
        return None;
    }
    let field = |i: usize| -> Option<u64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, next))
}

/// The DER item with `tag` at the start of `b`: its contents and what
/// follows it.
fn der_item(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for &byte in b.get(2..2 + n)? {
            len = (len << 8) | usize::from(byte);
        }
        (len, 2 + n)
    };
    let end = start.checked_add(len)?;
    Some((b.get(start..end)?, b.get(end..)?))
}

/// Days from 1970-01-01 to the given date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Whether `name` (maybe `*.parent`) is one of `own` or a wildcard
/// directly under one. A wildcard under a site's domain covers names no
/// other tenant can hold as their own site there only if the edge serves
/// them for this site: the node checks, per name served, that the site
/// serving it is the certificate's.
pub fn covers_own(name: &str, own: &[&str]) -> bool {
    let name = name.to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    own.iter().any(|o| o.eq_ignore_ascii_case(bare))
}

/// Self-signed certificates for `a.test` (openssl, P-256): one that
/// expires in 1, dated in UTCTime, and one in 2054, in GeneralizedTime.
#[cfg(test)]
pub(crate) const TEST_LEAVES: [(&str, u64); 2] = [
    (
        "MIIBijCCATCgAwIBAgIUC0urE+Hd+KTME+wK58lnpZhmuQcwCgYIKoZIzj0EAwIwETEPMA0GA1UEAwwGYS50ZXN0MB4XDTI2MTIwNzEzMDA0N1oXDTI3MTIwNzEzMDA0N1owETEPMA0GA1UEAwwGYS50ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9fDPJX+fPR6FpJYk/ldPDRsRVq/ZDlXfQiJ5v6gG0wVxsh7CGmxaE5V29jmyfaqeYG0E96A/BxbrfcF4PIoL6aNmMGQwHQYDVR0OBBYEFOthdAOfWxMJmI5dTzIRKuF0LOadMB8GA1UdIwQYMBaAFOthdAOfWxMJmI5dTzIRKuF0LOadMA8GA1UdEwEB/wQFMAMBAf8wEQYDVR0RBAowCIIGYS50ZXN0MAoGCCqGSM49BAMCA0gAMEUCICN1h51P4XiuBNLBNZuiHVkFvGfAe7YU5OLCktm+0X5TAiEAwXz+K3bgfC7kgg2EKbkGvmNgx8O+rZZq6oWICXVAyEU=",
        1828184447,
    ),
    (
        "MIIBjDCCATKgAwIBAgIUca+cNh2v2DeOQOQIpKG4rYy6zp0wCgYIKoZIzj0EAwIwETEPMA0GA1UEAwwGYS50ZXN0MCAXDTI2MTIwNzEzMDA0N1oYDzIwNTQwNDI0MTMwMDQ3WjARMQ8wDQYDVQQDDAZhLnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATMq36G+7RQOxMM1Hxkng2Td+EFF/DdxkaYJiVjyhheBGbVXNTHRdDA3eqosjprjD7m1L+tOO+S48jj93UQa8pSo2YwZDAdBgNVHQ4EFgQUl8Hxoloa6WtcO0vRZADIASFxJjwwHwYDVR0jBBgwFoAUl8Hxoloa6WtcO0vRZADIASFxJjwwDwYDVR0TAQH/BAUwAwEB/zARBgNVHREECjAIggZhLnRlc3QwCgYIKoZIzj0EAwIDSAAwRQIhAP1en6Cshle6lxNpqca1+AtpACkAbcxD0zVXzRvPZxQcAiAUC6ANizOmF9C3d5IfLAND+1MF52R2KzQcmoYvAEIIfw==",
        2660648447,
    ),
];

#[cfg(test)]
pub(crate) fn test_leaf() -> (Vec<u8>, u64) {
    let (b64, at) = TEST_LEAVES[0];
    (
        data_encoding::BASE64
            .decode(b64.as_bytes())
            .expect("base64"),
        at,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> CertRecord {
        let (leaf, not_after) = test_leaf();
        CertRecord {
            format: 1,
            site: Domain::new("a.test").expect("domain"),
            incarnation: 0,
            origin: Origin::Upload,
            names: vec!["a.test".into(), "*.a.test".into()],
            chain: vec![leaf],
            not_after,
            sealed: vec![],
            version: 1,
        }
    }

    #[test]
    fn the_expiry_is_read_from_the_certificate() {
        for (b64, at) in TEST_LEAVES {
            let der = data_encoding::BASE64
                .decode(b64.as_bytes())
                .expect("base64");
            assert_eq!(not_after(&der), Some(at));
            // Both were made at 2026-12-07 13:00:47 UTC, by "a.test".
            assert_eq!(validity(&der), Some((1_796_648_447, at)));
            assert_eq!(issuer_name(&der).as_deref(), Some("a.test"));
            // Cut anywhere, it reads as nothing rather than as a wrong time.
            for cut in 0..der.len() {
                let got = not_after(&der[..cut]);
                assert!(got.is_none() || got == Some(at), "cut at {cut}: {got:?}");
            }
        }
        let mut c = cert();
        c.sealed = vec![Sealed {
            to: [1; 32],
            enc: [2; 32],
            ct: vec![0; 32],
        }];
        assert_eq!(c.check(&["a.test"]), Ok(()));
        c.not_after += 1;
        assert_eq!(c.check(&["a.test"]), Err(CertError::Expiry));
    }

    #[test]
    fn a_key_opens_for_its_recipients_only_and_only_beside_its_certificate() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut c = cert();
        let mut n = 10u8;
        c.seal_to(b"pkcs8", &[seal::public_key(&a)], || {
            n += 1;
            [n; 32]
        })
        .expect("seal");
        assert_eq!(c.check(&["a.test"]), Ok(()));
        assert_eq!(c.open(&a).expect("a"), b"pkcs8".to_vec());
        assert_eq!(c.open(&b), Err(CertError::NoCopy));
        let mut other_leaf = c.clone();
        other_leaf.chain = vec![b"another leaf".to_vec()];
        other_leaf.not_after = 0;
        assert!(matches!(other_leaf.open(&a), Err(CertError::Open(_))));
        let mut moved = c.clone();
        moved.site = Domain::new("b.test").expect("domain");
        assert!(matches!(moved.open(&a), Err(CertError::Open(_))));
    }

    #[test]
    fn names_of_another_site_are_refused() {
        let mut c = cert();
        c.sealed = vec![Sealed {
            to: [1; 32],
            enc: [2; 32],
            ct: vec![0; 32],
        }];
        assert_eq!(c.check(&["a.test", "www.a.test"]), Ok(()));
        for name in ["b.test", "*.test", "x.a.test", "*.*.a.test", "a.test.evil"] {
            let mut bad = c.clone();
            bad.names.push(name.into());
            assert!(
                matches!(bad.check(&["a.test"]), Err(CertError::NotTheSites { .. })),
                "{name}"
            );
        }
        let mut empty = c.clone();
        empty.chain.clear();
        assert_eq!(empty.check(&["a.test"]), Err(CertError::Empty));
    }
}
