//! The network's ACME settings: which CA its nodes order certificates
//! from, who it tells about them, and what the zones' CAA records allow.
//! One per network, signed by an admin.

use serde::{Deserialize, Serialize};

use crate::{Domain, Signable};

/// The kind number of [`AcmeConfig`] (see [`crate::kind_context`]).
pub const ACME_KIND: u32 = 10;

/// The longest directory URL or contact.
pub const MAX_URL: usize = 512;
/// The most contacts and CAA issuer names.
pub const MAX_LIST: usize = 8;
/// The largest extra root (DER).
pub const MAX_ROOT: usize = 16 << 10;

/// The network's ACME settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeConfig {
    pub format: u16,
    /// The CA's ACME directory (`https://…`), e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Who the CA writes to (`mailto:…`).
    pub contact: Vec<String>,
    /// A root the nodes trust besides the system's, for the CA's
    /// certificates and its directory (a private CA, Pebble in tests).
    pub extra_root: Option<Vec<u8>>,
    /// The CA's CAA identifiers (`letsencrypt.org`): every zone without
    /// CAA records of its own gets `issue` and `issuewild` for each, so
    /// only the network's CA may issue for its sites (RFC 8659).
    pub caa: Vec<Domain>,
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
    #[error("the extra root is empty or larger than {MAX_ROOT} bytes")]
    Root,
}

impl AcmeConfig {
    /// The checks that need nothing but the record.
    pub fn check(&self) -> Result<(), AcmeError> {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        let ok_url = |s: &str, scheme: &str| {
            s.len() <= MAX_URL && printable(s) && s.len() > scheme.len() && s.starts_with(scheme)
        };
        if !ok_url(&self.directory, "https://") {
            return Err(AcmeError::Directory);
        }
        if self.contact.len() > MAX_LIST || !self.contact.iter().all(|c| ok_url(c, "mailto:")) {
            return Err(AcmeError::Contact);
        }
        if self.caa.len() > MAX_LIST {
            return Err(AcmeError::Caa);
        }
        if let Some(root) = &self.extra_root
            && (root.is_empty() || root.len() > MAX_ROOT)
        {
            return Err(AcmeError::Root);
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
            extra_root: None,
            caa: vec![Domain::new("letsencrypt.org").expect("domain")],
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
            extra_root: Some(vec![]),
            ..good
        };
        assert_eq!(bad.check(), Err(AcmeError::Root));
    }
}
