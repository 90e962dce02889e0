//! Paths inside a site, validated once so nothing downstream has to.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// The longest site path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// A relative path inside a site: `/`-separated, Unicode NFC, no `.` or
/// `..` segments, no empty segments, no NUL or backslash, at most
/// [`MAX_PATH_LEN`] bytes. Shown without a leading slash (`blog/index.html`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SitePath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SitePathError {
    #[error("empty path")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path must be relative (no leading '/')")]
    Absolute,
    #[error("path has an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path contains a NUL, a control character or a backslash")]
    BadCharacter,
}

impl SitePath {
    /// Validates and normalises (NFC) `s`.
    pub fn new(s: &str) -> Result<Self, SitePathError> {
        if s.is_empty() {
            return Err(SitePathError::Empty);
        }
        let s: String = if unicode_normalization::is_nfc(s) {
            s.to_owned()
        } else {
            s.nfc().collect()
        };
        if s.len() > MAX_PATH_LEN {
            return Err(SitePathError::TooLong);
        }
        if s.starts_with('/') {
            return Err(SitePathError::Absolute);
        }
        if s.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(SitePathError::BadCharacter);
        }
        for seg in s.split('/') {
            match seg {
                "" => return Err(SitePathError::EmptySegment),
                "." | ".." => return Err(SitePathError::DotSegment),
                _ => {}
            }
        }
        Ok(Self(s))
    }

    pub fn into_string(self) -> String {
        self.0
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// `self/name`.
    pub fn join(&self, name: &str) -> Result<Self, SitePathError> {
        Self::new(&format!("{}/{name}", self.0))
    }
}

impl fmt::Display for SitePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SitePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SitePath({:?})", self.0)
    }
}

impl FromStr for SitePath {
    type Err = SitePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for SitePath {
    type Error = SitePathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<SitePath> for String {
    fn from(p: SitePath) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for ok in [
            "index.html",
            "a/b/c.css",
            ".well-known/security.txt",
            "ünï/cödé",
        ] {
            assert_eq!(SitePath::new(ok).map(|p| p.0), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn normalises_to_nfc() {
        let decomposed = "cafe\u{301}.html";
        assert_eq!(
            SitePath::new(decomposed).map(|p| p.0),
            Ok("caf\u{e9}.html".to_owned())
        );
    }

    #[test]
    fn rejects_traversal_and_junk() {
        use SitePathError::*;
        let cases: &[(&str, SitePathError)] = &[
            ("", Empty),
            ("/etc/passwd", Absolute),
            ("../secret", DotSegment),
            ("a/../../b", DotSegment),
            ("a/./b", DotSegment),
            ("a//b", EmptySegment),
            ("a/", EmptySegment),
            ("a\\..\\b", BadCharacter),
            ("a\0b", BadCharacter),
        ];
        for (input, err) in cases {
            assert_eq!(SitePath::new(input).as_ref(), Err(err), "{input:?}");
        }
        assert_eq!(SitePath::new(&"a".repeat(1025)), Err(TooLong));
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(s in "\\PC{0,40}") {
            if let Ok(p) = SitePath::new(&s) {
                prop_assert_eq!(SitePath::new(p.as_str()), Ok(p.clone()));
                prop_assert!(!p.as_str().split('/').any(|seg| seg == ".." || seg.is_empty()));
            }
        }
    }
}
