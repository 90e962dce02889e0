//! Site domains: validated, lowercase, IDNA (punycode) form.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A domain name in its ASCII (IDNA) form, lowercase, without a trailing dot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    #[error("empty domain")]
    Empty,
    #[error("not a valid domain name (IDNA): {0:?}")]
    Invalid(String),
    #[error("domain name is longer than 253 characters")]
    TooLong,
    #[error("a label of the domain is empty or longer than 63 characters")]
    BadLabel,
}

impl Domain {
    pub fn new(s: &str) -> Result<Self, DomainError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(DomainError::Empty);
        }
        let ascii =
            idna::domain_to_ascii_strict(s).map_err(|_| DomainError::Invalid(s.to_owned()))?;
        if ascii.len() > 253 {
            return Err(DomainError::TooLong);
        }
        for label in ascii.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(DomainError::BadLabel);
            }
            let ok = label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok || label.starts_with('-') || label.ends_with('-') {
                return Err(DomainError::Invalid(s.to_owned()));
            }
        }
        Ok(Self(ascii.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// `Hash`/`Eq` are derived from the inner string, so lookups by `&str` agree.
impl std::borrow::Borrow<str> for Domain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Domain({})", self.0)
    }
}

impl FromStr for Domain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Domain {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> Self {
        d.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(
            Domain::new("Example.COM.").map(|d| d.0),
            Ok("example.com".into())
        );
        assert_eq!(
            Domain::new("bücher.de").map(|d| d.0),
            Ok("xn--bcher-kva.de".into())
        );
        assert_eq!(
            Domain::new("localhost").map(|d| d.0),
            Ok("localhost".into())
        );
    }

    #[test]
    fn rejects() {
        for bad in ["", ".", "a..b", "-a.com", "a b.com", "a/b", &"a".repeat(64)] {
            assert!(Domain::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            if let Ok(d) = Domain::new(&s) {
                prop_assert_eq!(Domain::new(d.as_str()), Ok(d.clone()));
            }
        }
    }
}
