//! The node's durable state, in one redb database (`state.redb`): the
//! replicated records (the network's truth: sites, their publishers, heads,
//! nodes, invites, revocations) and what this node itself serves (its
//! current head per site and the versions it keeps).
//!
//! Only this module touches the database. A served head and the version it
//! adds are written in one transaction, so a crash leaves either the old
//! head or the new one, never a mix. Transactions are small and rare, so
//! they run inline.

use std::path::Path;

use maki_protocol::{
    Claim, Domain, Hash, Head, Invite, PublicKey, Record, RecordKey, Signed, rpc::JoinError,
};

use crate::directory::Change;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// The head this node serves per site (it holds all of its content); the
/// network's newest head is a record and may be ahead while it downloads.
const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("heads");
const VERSIONS: TableDefinition<(&str, u64), &[u8; 32]> = TableDefinition::new("versions");
/// Invites this node issues, by secret hash.
const INVITES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("invites");

/// Replicated records: postcard(`RecordKey`) → postcard(`Record`), the
/// winner per key.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Per domain, the highest head sequence this node has taken in, kept
/// after the site's removal: where a site added again starts its heads.
const FLOORS: TableDefinition<&str, u64> = TableDefinition::new("floors");

/// An invite this node will redeem, and who redeemed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredInvite {
    pub invite: Signed<Invite>,
    pub redeemed_by: Option<PublicKey>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("state database holds an undecodable record for {0}; restore from a peer or backup")]
    Corrupt(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                StateError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Debug)]
pub struct State {
    db: redb::Database,
}

/// What a committed head replaced.
#[derive(Debug, Default)]
pub struct Committed {
    /// Manifests no longer kept (beyond `keep_versions`).
    pub pruned: Vec<Hash>,
}

impl State {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = redb::Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(HEADS)?;
        tx.open_table(VERSIONS)?;
        tx.open_table(INVITES)?;
        tx.open_table(RECORDS)?;
        tx.commit()?;
        Ok(Self { db })
    }

    /// The highest head sequence this node has taken in for `domain`, also
    /// after the site's removal (0: none).
    pub fn head_floor(&self, domain: &Domain) -> Result<u64, StateError> {
        let tx = self.db.begin_read()?;
        let floor = match tx.open_table(FLOORS) {
            Ok(t) => t.get(domain.as_str())?.map_or(0, |v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(floor)
    }

    /// Forgets what this node serves of a site: its head and kept versions;
    /// returns the manifests it kept. None if it served nothing.
    pub fn clear_site(&self, domain: &Domain) -> Result<Option<Vec<Hash>>, StateError> {
        let tx = self.db.begin_write()?;
        let manifests = {
            let had_head = tx.open_table(HEADS)?.remove(domain.as_str())?.is_some();
            let mut versions = tx.open_table(VERSIONS)?;
            let gone = versions.extract_from_if(
                (domain.as_str(), 0)..=(domain.as_str(), u64::MAX),
                |_, _| true,
            )?;
            let mut out = Vec::new();
            for item in gone {
                let (_, v) = item?;
                out.push(Hash::from_bytes(*v.value()));
            }
            if !had_head && out.is_empty() {
                return Ok(None);
            }
            out
        };
        tx.commit()?;
        Ok(Some(manifests))
    }

    /// The head this node serves for a site (it holds all of its content).
    pub fn served_head(&self, domain: &Domain) -> Result<Option<Signed<Head>>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(HEADS)?;
        match t.get(domain.as_str())? {
            Some(v) => Ok(Some(decode(domain.as_str(), v.value())?)),
            None => Ok(None),
        }
    }

    /// Kept versions, newest first: (version, manifest hash).
    pub fn versions(&self, domain: &Domain) -> Result<Vec<(u64, Hash)>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(VERSIONS)?;
        let mut out = Vec::new();
        for item in t.range((domain.as_str(), 0)..=(domain.as_str(), u64::MAX))? {
            let (k, v) = item?;
            out.push((k.value().1, Hash::from_bytes(*v.value())));
        }
        out.reverse();
        Ok(out)
    }

    /// Every kept version of every site: (domain, manifest).
    pub fn all_versions(&self) -> Result<Vec<(String, Hash)>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(VERSIONS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().0.to_owned(), Hash::from_bytes(*v.value())));
        }
        Ok(out)
    }

    /// Makes `head` current and, for a publish, records `version`; prunes
    /// versions beyond `keep` (never the one the head names). One transaction.
    pub fn commit_head(
        &self,
        head: &Head,
        signed: &Signed<Head>,
        version: Option<u64>,
        keep: u32,
    ) -> Result<Committed, StateError> {
        let site = head.site.as_str();
        let tx = self.db.begin_write()?;
        let mut committed = Committed::default();
        {
            let mut versions = tx.open_table(VERSIONS)?;
            if let Some(v) = version {
                versions.insert((site, v), head.manifest.as_bytes())?;
            }
            let mut all = Vec::new();
            for item in versions.range((site, 0)..=(site, u64::MAX))? {
                let (k, v) = item?;
                all.push((k.value().1, Hash::from_bytes(*v.value())));
            }
            let excess = all.len().saturating_sub(keep as usize);
            for (v, hash) in all.into_iter().take(excess) {
                if hash != head.manifest {
                    versions.remove((site, v))?;
                    committed.pruned.push(hash);
                }
            }
            tx.open_table(HEADS)?
                .insert(site, encode(signed).as_slice())?;
        }
        tx.commit()?;
        Ok(committed)
    }
}

impl State {
    /// Stores an invite (already checked by the caller).
    pub fn add_invite(&self, secret_hash: Hash, invite: &Signed<Invite>) -> Result<(), StateError> {
        let stored = StoredInvite {
            invite: invite.clone(),
            redeemed_by: None,
        };
        let tx = self.db.begin_write()?;
        tx.open_table(INVITES)?
            .insert(secret_hash.as_bytes(), encode(&stored).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Redeems the invite with this secret hash for `node`, once: the check
    /// and the mark are one transaction, so two racing joins cannot both win.
    pub fn redeem_invite(
        &self,
        claim: &Signed<Claim>,
        node: PublicKey,
        now: u64,
    ) -> Result<Result<Signed<Invite>, JoinError>, StateError> {
        // Which invite it claims; whether it may is checked below, before
        // anything is written (a bad claim must not use up the invite).
        let secret_hash = match claim.verify() {
            Ok(c) => c.invite,
            Err(_) => return Ok(Err(JoinError::BadAdmission)),
        };
        let tx = self.db.begin_write()?;
        let result = {
            let mut t = tx.open_table(INVITES)?;
            let stored: Option<StoredInvite> = match t.get(secret_hash.as_bytes())? {
                Some(v) => Some(decode("invite", v.value())?),
                None => None,
            };
            match stored {
                None => Err(JoinError::UnknownInvite),
                Some(s) if s.redeemed_by.is_some_and(|by| by != node) => {
                    Err(JoinError::AlreadyUsed)
                }
                Some(mut s) => {
                    let invite = s.invite.verify().ok();
                    if invite.as_ref().is_none_or(|i| i.is_expired(now)) {
                        Err(JoinError::Expired)
                    } else if invite.is_none_or(|i| !Claim::proves(claim, &i, &secret_hash, &node))
                    {
                        Err(JoinError::BadAdmission)
                    } else {
                        // The same node asking again (a lost answer) gets the same welcome.
                        s.redeemed_by = Some(node);
                        t.insert(secret_hash.as_bytes(), encode(&s).as_slice())?;
                        Ok(s.invite)
                    }
                }
            }
        };
        if result.is_ok() {
            tx.commit()?;
        } else {
            tx.abort()?;
        }
        Ok(result)
    }
}

impl State {
    /// Makes a merged batch of record changes durable, in one transaction.
    pub fn write_records(&self, changes: &[Change]) -> Result<(), StateError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RECORDS)?;
            let mut floors = tx.open_table(FLOORS)?;
            for change in changes {
                match change {
                    Change::Put(key, record) => {
                        table.insert(encode(key).as_slice(), encode(record).as_slice())?;
                    }
                    Change::Remove(key) => {
                        table.remove(encode(key).as_slice())?;
                    }
                    Change::HeadSeen(domain, seq) => {
                        let floor = floors.get(domain.as_str())?.map_or(0, |v| v.value());
                        if *seq > floor {
                            floors.insert(domain.as_str(), *seq)?;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every record held, in key order, with the key it is stored under
    /// (`None` for a key this build cannot read).
    pub fn records(&self) -> Result<Vec<(Option<RecordKey>, Record)>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let key = postcard::from_bytes(k.value()).ok();
            out.push((key, decode("record", v.value())?));
        }
        Ok(out)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|_| StateError::Corrupt(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use maki_protocol::SecretKey;

    use super::*;

    #[test]
    fn head_and_versions() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let state = State::open(&dir.path().join("s.redb"))?;
        let d = Domain::new("a.test")?;
        let sk = SecretKey::from_bytes(&[9; 32]);
        for v in 1..=4u64 {
            let head = Head {
                site: d.clone(),
                seq: v,
                manifest: Hash::of(&v.to_le_bytes()),
            };
            let c = state.commit_head(&head, &Signed::sign(&sk, &head), Some(v), 2)?;
            assert_eq!(c.pruned.len(), usize::from(v > 2));
        }
        let vs = state.versions(&d)?;
        assert_eq!(vs.iter().map(|v| v.0).collect::<Vec<_>>(), vec![4, 3]);
        assert_eq!(
            state.served_head(&d)?.map(|h| h.verify().map(|h| h.seq)),
            Some(Ok(4))
        );
        assert_eq!(state.clear_site(&d)?.map(|m| m.len()), Some(2));
        assert!(state.clear_site(&d)?.is_none());
        assert!(state.versions(&d)?.is_empty());
        assert!(state.served_head(&d)?.is_none());
        Ok(())
    }
}
