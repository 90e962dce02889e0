//! `maki.toml`: the site this folder publishes and the node to talk to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const PROJECT_FILE: &str = "maki.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    #[serde(default)]
    pub site: SiteSection,
    /// The site's own DNS records, sent with every publish and replacing
    /// the ones it had. Absent: publish leaves the records alone; `dns =
    /// []` removes them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<crate::zone::Entry>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// The site's domain.
    pub domain: Option<String>,
    /// The folder to publish, relative to `maki.toml`.
    pub dir: Option<PathBuf>,
    /// A node ticket (`makinode1…`).
    pub node: Option<String>,
    /// Ask browsers to use HTTPS only (HSTS, one year), sent once every
    /// node serves the site's certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hsts: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Project {
    /// Reads `dir/maki.toml`; absent means empty.
    pub fn load(dir: &Path) -> Result<Self, ProjectError> {
        let path = dir.join(PROJECT_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ProjectError::Parse {
                path,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ProjectError::Io { path, source }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), ProjectError> {
        let path = dir.join(PROJECT_FILE);
        let text = toml::to_string(self).map_err(|e| ProjectError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|source| ProjectError::Io { path, source })
    }
}
