//! Making a node's data directory: a new network (`makiatto init`) or a
//! place in an existing one (`makiatto join`). Either leaves a directory
//! that [`crate::Node::spawn`] starts from, or nothing at all.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use maki_protocol::{GENESIS_FORMAT, Genesis, Hash, InviteTicket, PublicKey, Signed};

use crate::{
    Config,
    config::{CONFIG_FILE, ConfigError},
    directory::Authority,
    endpoint::BindError,
    identity::{self, IdentityError},
    join::RedeemError,
    records::Records,
    state::{State, StateError},
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    #[error("{0} already holds a node; refusing to overwrite it (start it with `makiatto run`)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Endpoint(#[from] BindError),
    #[error(transparent)]
    Redeem(#[from] RedeemError),
    #[error("the issuer sent a genesis record that does not verify: {0}")]
    BadGenesis(maki_protocol::SignedError),
}

/// What [`init`] made.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub node: PublicKey,
    pub network: Hash,
}

fn refuse_existing(data_dir: &Path) -> Result<(), SetupError> {
    if data_dir.join(CONFIG_FILE).exists() {
        return Err(SetupError::Exists(data_dir.to_owned()));
    }
    Ok(())
}

fn write(path: PathBuf, body: impl AsRef<[u8]>) -> Result<(), SetupError> {
    std::fs::write(&path, body).map_err(|source| SetupError::Io { path, source })
}

fn create_dir(data_dir: &Path) -> Result<(), SetupError> {
    std::fs::create_dir_all(data_dir).map_err(|source| SetupError::Io {
        path: data_dir.to_owned(),
        source,
    })
}

/// A new network with `admins`, and its first node, in `data_dir`.
pub fn init(
    data_dir: &Path,
    admins: Vec<PublicKey>,
    config: &Config,
) -> Result<Created, SetupError> {
    refuse_existing(data_dir)?;
    create_dir(data_dir)?;
    let key = identity::create_key(data_dir)?;
    let mut admins = admins;
    admins.sort();
    admins.dedup();
    let genesis = Genesis {
        format: GENESIS_FORMAT,
        admins,
        created: crate::now(),
    };
    identity::write_genesis(data_dir, &Signed::sign(&key, &genesis))?;
    write(data_dir.join(CONFIG_FILE), config.to_toml()?)?;
    Ok(Created {
        node: key.public(),
        network: identity::load_genesis(data_dir)?.id,
    })
}

/// Redeems `ticket` at its issuer, and only once the issuer said yes
/// writes `data_dir`: a refused join leaves nothing behind. Returns the
/// new node's id.
pub async fn join(
    ticket: &InviteTicket,
    data_dir: &Path,
    config: &Config,
) -> Result<PublicKey, SetupError> {
    refuse_existing(data_dir)?;
    let key = identity::generate_key(data_dir)?;
    let any: SocketAddr = if ticket.issuer.addrs.iter().all(|a| a.is_ipv6()) {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let endpoint = crate::endpoint::bind(&key, any, Default::default()).await?;
    let welcome = crate::join::redeem(&endpoint, ticket).await;
    endpoint.close().await;
    let welcome = welcome?;
    let genesis = welcome.genesis.verify().map_err(SetupError::BadGenesis)?;
    create_dir(data_dir)?;
    identity::write_key(data_dir, &key)?;
    identity::write_genesis(data_dir, &welcome.genesis)?;
    identity::write_membership(data_dir, &welcome.membership)?;
    write(data_dir.join(CONFIG_FILE), config.to_toml()?)?;
    // Start from the issuer's state; every record is checked as if it had
    // arrived by gossip, and a bad one is only logged.
    let state = State::open(&data_dir.join("state.redb"))?;
    let authority = Authority {
        network: ticket.network,
        admins: genesis.admins,
        founder: welcome.genesis.signer(),
    };
    let records = Records::load(Arc::new(state), authority)?;
    // In the order that lets each record be judged: what authorises comes
    // before what it admits, as in a sync.
    let mut batch = welcome.records;
    batch.sort_by_key(maki_protocol::sync::apply_rank);
    for verdict in records.apply(&batch)? {
        if let Err(error) = verdict {
            tracing::warn!(%error, "a record from the issuer was refused");
        }
    }
    Ok(key.public())
}
