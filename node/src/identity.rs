//! The node's identity: its key (also its iroh endpoint id) and the
//! network's genesis record. Files are written once, mode 0600.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use maki_protocol::{Genesis, Hash, SecretKey, Signed};

const KEY_FILE: &str = "node.key";
const GENESIS_FILE: &str = "genesis.bin";
const INVITE_FILE: &str = "invite.bin";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a node key (64 hex characters)")]
    BadKey(PathBuf),
    #[error("{0} is not a valid genesis record: {1}")]
    BadGenesis(PathBuf, String),
    #[error("{0} is not a valid invite record: {1}")]
    BadInvite(PathBuf, String),
    #[error("{0} already exists; refusing to overwrite a node's identity")]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to a new file with mode 0600; never overwrites.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(path.to_owned())
            } else {
                IdentityError::Io {
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Creates a fresh node key in `dir`.
pub fn create_key(dir: &Path) -> Result<SecretKey, IdentityError> {
    let key = generate_key(dir)?;
    write_key(dir, &key)?;
    Ok(key)
}

/// A fresh key, in memory only (`dir` only names errors).
pub fn generate_key(dir: &Path) -> Result<SecretKey, IdentityError> {
    let mut bytes = [0u8; 32];
    getrandom_fill(&mut bytes, &dir.join(KEY_FILE))?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Writes `key` as the node key of `dir` (never overwriting one).
pub fn write_key(dir: &Path, key: &SecretKey) -> Result<(), IdentityError> {
    let hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    write_private(&dir.join(KEY_FILE), format!("{hex}\n").as_bytes())
}

fn getrandom_fill(buf: &mut [u8; 32], path: &Path) -> Result<(), IdentityError> {
    getrandom::fill(buf).map_err(|e| IdentityError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

pub fn load_key(dir: &Path) -> Result<SecretKey, IdentityError> {
    let path = dir.join(KEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let hash: Hash = text
        .trim()
        .parse()
        .map_err(|_| IdentityError::BadKey(path.clone()))?;
    Ok(SecretKey::from_bytes(hash.as_bytes()))
}

pub fn write_genesis(dir: &Path, genesis: &Signed<Genesis>) -> Result<(), IdentityError> {
    let path = dir.join(GENESIS_FILE);
    let bytes = postcard::to_stdvec(genesis)
        .map_err(|e| IdentityError::BadGenesis(path.clone(), e.to_string()))?;
    write_private(&path, &bytes)
}

/// The network as this node knows it.
#[derive(Debug, Clone)]
pub struct Network {
    pub signed: Signed<Genesis>,
    pub genesis: Genesis,
    /// The network id: BLAKE3 of the signed genesis record.
    pub id: Hash,
}

/// The genesis record and the network id (its hash).
pub fn load_genesis(dir: &Path) -> Result<Network, IdentityError> {
    let path = dir.join(GENESIS_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let signed: Signed<Genesis> = postcard::from_bytes(&bytes)
        .map_err(|e| IdentityError::BadGenesis(path.clone(), e.to_string()))?;
    let genesis = signed
        .verify()
        .map_err(|e| IdentityError::BadGenesis(path.clone(), e.to_string()))?;
    Ok(Network {
        signed,
        genesis,
        id: Hash::of(&bytes),
    })
}

/// How a joined node proves it is a member: the invite it redeemed, and
/// its admission, signed with the key of the ticket's secret.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    pub invite: Signed<maki_protocol::Invite>,
    pub admission: Signed<maki_protocol::Admission>,
}

/// Keeps a joined node's membership credential.
pub fn write_membership(dir: &Path, membership: &Membership) -> Result<(), IdentityError> {
    let path = dir.join(INVITE_FILE);
    let bytes = postcard::to_stdvec(membership)
        .map_err(|e| IdentityError::BadInvite(path.clone(), e.to_string()))?;
    write_private(&path, &bytes)
}

/// A joined node's membership credential (the founder has none).
pub fn load_membership(dir: &Path) -> Result<Option<Membership>, IdentityError> {
    let path = dir.join(INVITE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| IdentityError::BadInvite(path.clone(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path, source }),
    }
}
