//! The user's key: both their iroh identity and their signing key. Lives in
//! `$MAKI_HOME` (default: the XDG config dir + `/maki`), file mode 0600.

use std::path::{Path, PathBuf};

use maki_protocol::SecretKey;

const KEY_FILE: &str = "key";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("no home for maki's key: set MAKI_HOME")]
    NoHome,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a maki key (64 hex characters); move it away and run `maki keys`")]
    Malformed(PathBuf),
    #[error("{0} is readable by others; run `chmod 600 {0}`")]
    TooOpen(PathBuf),
}

/// `$MAKI_HOME`, or `<config dir>/maki`.
pub fn home() -> Result<PathBuf, KeyError> {
    if let Some(h) = std::env::var_os("MAKI_HOME") {
        return Ok(PathBuf::from(h));
    }
    dirs::config_dir()
        .map(|d| d.join("maki"))
        .ok_or(KeyError::NoHome)
}

/// Loads the key, creating it on first use. Returns it and whether it is new.
pub fn load_or_create(home: &Path) -> Result<(SecretKey, bool), KeyError> {
    let path = home.join(KEY_FILE);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            check_mode(&path)?;
            let hash: maki_protocol::Hash = text
                .trim()
                .parse()
                .map_err(|_| KeyError::Malformed(path.clone()))?;
            Ok((SecretKey::from_bytes(hash.as_bytes()), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(home).map_err(io)?;
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let key = SecretKey::from_bytes(&bytes);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, format!("{hex}\n").as_bytes()).map_err(io)?;
            Ok((key, true))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::TooOpen(path.to_owned()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (a, new_a) = load_or_create(dir.path())?;
        let (b, new_b) = load_or_create(dir.path())?;
        assert!(new_a && !new_b);
        assert_eq!(a.public(), b.public());
        Ok(())
    }
}
