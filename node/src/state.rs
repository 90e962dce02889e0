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
    AuthError, Body, Domain, Hash, Head, Invite, PublicKey, Record, RecordError, RecordKey, Signed,
    SiteRecord, Verified, View, authorize, rpc::JoinError,
};
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

    /// A site as its record says (None if unknown or removed).
    pub fn site(&self, domain: &Domain) -> Result<Option<SiteRecord>, StateError> {
        Ok(match self.record(&RecordKey::Site(domain.clone()))? {
            Some(Body::Site(s)) if !s.removed => Some(s),
            _ => None,
        })
    }

    /// The sites the records name, removed ones included (they must be
    /// cleared here too).
    pub fn site_records(&self) -> Result<Vec<(SiteRecord, u64)>, StateError> {
        let mut out = Vec::new();
        for v in self.verified()? {
            if let Body::Site(s) = v.body {
                out.push((s, v.version));
            }
        }
        Ok(out)
    }

    /// The pin of a site, if an admin set one.
    pub fn pin(&self, domain: &Domain) -> Result<Option<maki_protocol::Pin>, StateError> {
        Ok(match self.record(&RecordKey::Pin(domain.clone()))? {
            Some(Body::Pin(p)) => Some(p),
            _ => None,
        })
    }

    /// Live sites (not removed), by domain.
    pub fn sites(&self) -> Result<Vec<(Domain, SiteRecord)>, StateError> {
        Ok(self
            .site_records()?
            .into_iter()
            .filter(|(s, _)| !s.removed)
            .map(|(s, _)| (s.domain.clone(), s))
            .collect())
    }

    /// The network's newest head for a site (a record), which this node may
    /// not hold yet.
    pub fn head_record(&self, domain: &Domain) -> Result<Option<Signed<Head>>, StateError> {
        match self.held(&RecordKey::Head(domain.clone()))? {
            None => Ok(None),
            // A head from before the site was added again is void.
            Some(Record::Head(h)) => Ok(match (self.site(domain)?, h.verify()) {
                (Some(site), Ok(head)) if !site.current(head.seq) => None,
                _ => Some(h),
            }),
            Some(_) => Err(StateError::Corrupt(format!("head record of {domain}"))),
        }
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

    pub fn head(&self, domain: &Domain) -> Result<Option<Signed<Head>>, StateError> {
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
        secret_hash: Hash,
        node: PublicKey,
        now: u64,
    ) -> Result<Result<Signed<Invite>, JoinError>, StateError> {
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
                    let expired = s.invite.verify().map_or(true, |i| i.is_expired(now));
                    if expired {
                        Err(JoinError::Expired)
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

/// What applying a record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// First record for its key.
    New,
    /// It beat the record held for its key.
    Replaced,
    /// The held record wins (or is the same): nothing changed.
    Stale,
}

/// A record that was not taken in; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("unauthorised record: {0}")]
    Auth(#[from] AuthError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The network's fixed facts a record is judged against.
#[derive(Debug, Clone)]
pub struct Authority {
    pub admins: Vec<PublicKey>,
    pub founder: PublicKey,
}

/// `View` over the records table inside the applying transaction, so the
/// check and the write see the same state.
struct TableView<'a, T> {
    table: &'a T,
    authority: &'a Authority,
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> TableView<'_, T> {
    fn body(&self, key: &RecordKey) -> Option<Body> {
        let raw = self.table.get(encode(key).as_slice()).ok()??;
        let record: Record = postcard::from_bytes(raw.value()).ok()?;
        record.verify().ok().map(|v| v.body)
    }
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> View for TableView<'_, T> {
    fn admins(&self) -> &[PublicKey] {
        &self.authority.admins
    }
    fn founder(&self) -> PublicKey {
        self.authority.founder
    }
    fn site(&self, domain: &Domain) -> Option<SiteRecord> {
        match self.body(&RecordKey::Site(domain.clone()))? {
            Body::Site(s) => Some(s),
            _ => None,
        }
    }
    fn invite(&self, secret_hash: &Hash) -> Option<maki_protocol::Invite> {
        match self.body(&RecordKey::Invite(*secret_hash))? {
            Body::Invite(i) => Some(i),
            _ => None,
        }
    }
    fn revoked(&self, node: &PublicKey) -> bool {
        self.body(&RecordKey::Revocation(*node)).is_some()
    }
}

impl State {
    /// Verifies, authorises and merges one record (last writer wins by
    /// (version, hash)) in one transaction. Bad records change nothing.
    pub fn apply(&self, record: &Record, authority: &Authority) -> Result<Applied, ApplyError> {
        let new = record.verify()?;
        let tx = self.db.begin_write().map_err(StateError::from)?;
        let applied = {
            let mut table = tx.open_table(RECORDS).map_err(StateError::from)?;
            authorize(
                &new,
                &TableView {
                    table: &table,
                    authority,
                },
            )?;
            let key = encode(&new.key);
            let held = match table.get(key.as_slice()).map_err(StateError::from)? {
                Some(raw) => postcard::from_bytes::<Record>(raw.value())
                    .ok()
                    .and_then(|r| r.verify().ok()),
                None => None,
            };
            let applied = match held {
                None => Applied::New,
                Some(old) if new.wins_over(&old) => Applied::Replaced,
                Some(_) => Applied::Stale,
            };
            if applied != Applied::Stale {
                table
                    .insert(key.as_slice(), encode(record).as_slice())
                    .map_err(StateError::from)?;
                match &new.body {
                    // A removal ends the site's head, and a site added
                    // again voids the heads from before (`heads_after`), in
                    // the same transaction: nothing keeps fetching a version
                    // nobody may serve.
                    Body::Site(site) => {
                        let key = encode(&RecordKey::Head(site.domain.clone()));
                        let void = match table.get(key.as_slice()).map_err(StateError::from)? {
                            Some(raw) => {
                                site.removed
                                    || postcard::from_bytes::<Record>(raw.value())
                                        .ok()
                                        .and_then(|r| r.verify().ok())
                                        .is_none_or(|v| match v.body {
                                            Body::Head(h) => !site.current(h.seq),
                                            _ => true,
                                        })
                            }
                            None => false,
                        };
                        if void {
                            table.remove(key.as_slice()).map_err(StateError::from)?;
                        }
                    }
                    Body::Head(head) => {
                        let mut floors = tx.open_table(FLOORS).map_err(StateError::from)?;
                        let floor = floors
                            .get(head.site.as_str())
                            .map_err(StateError::from)?
                            .map_or(0, |v| v.value());
                        if head.seq > floor {
                            floors
                                .insert(head.site.as_str(), head.seq)
                                .map_err(StateError::from)?;
                        }
                    }
                    _ => {}
                }
            }
            applied
        };
        if applied == Applied::Stale {
            tx.abort().map_err(StateError::from)?;
        } else {
            tx.commit().map_err(StateError::from)?;
        }
        Ok(applied)
    }

    /// The record held for `key`, as it travels (unverified).
    pub fn held(&self, key: &RecordKey) -> Result<Option<Record>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECORDS)?;
        match t.get(encode(key).as_slice())? {
            Some(raw) => Ok(Some(decode("record", raw.value())?)),
            None => Ok(None),
        }
    }

    /// The body of the record held for `key`, if any (and it verifies).
    pub fn record(&self, key: &RecordKey) -> Result<Option<Body>, StateError> {
        Ok(self
            .held(key)?
            .and_then(|r| r.verify().ok())
            .map(|v| v.body))
    }

    /// Every record held, verified (those that no longer verify are skipped).
    pub fn verified(&self) -> Result<Vec<Verified>, StateError> {
        Ok(self
            .records()?
            .iter()
            .filter_map(|r| r.verify().ok())
            .collect())
    }

    /// Every record held, in key order.
    pub fn records(&self) -> Result<Vec<Record>, StateError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.push(decode("record", v.value())?);
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
    fn records_merge_last_writer_wins_and_refuse_strangers()
    -> Result<(), Box<dyn std::error::Error>> {
        use maki_protocol::RECORD_FORMAT;
        let dir = tempfile::tempdir()?;
        let state = State::open(&dir.path().join("s.redb"))?;
        let admin = SecretKey::from_bytes(&[1; 32]);
        let publisher = SecretKey::from_bytes(&[2; 32]);
        let authority = Authority {
            admins: vec![admin.public()],
            founder: SecretKey::from_bytes(&[3; 32]).public(),
        };
        let site = |version: u64| SiteRecord {
            format: RECORD_FORMAT,
            domain: Domain::new("a.test").expect("domain"),
            aliases: vec![],
            publishers: vec![publisher.public()],
            version,
            removed: false,
            heads_after: 0,
        };
        let rec = |v: u64| Record::Site(Signed::sign(&admin, &site(v)));
        assert_eq!(state.apply(&rec(2), &authority)?, Applied::New);
        assert_eq!(state.apply(&rec(1), &authority)?, Applied::Stale);
        assert_eq!(state.apply(&rec(2), &authority)?, Applied::Stale);
        assert_eq!(state.apply(&rec(3), &authority)?, Applied::Replaced);
        let stranger = Record::Site(Signed::sign(&publisher, &site(9)));
        assert!(matches!(
            state.apply(&stranger, &authority),
            Err(ApplyError::Auth(_))
        ));

        // A head is judged against the site record the table holds.
        let head = Head {
            site: Domain::new("a.test")?,
            seq: 1,
            manifest: Hash::of(b"m"),
        };
        let ok = Record::Head(Signed::sign(&publisher, &head));
        assert_eq!(state.apply(&ok, &authority)?, Applied::New);
        let stranger_key = SecretKey::from_bytes(&[9; 32]);
        let bad = Record::Head(Signed::sign(&stranger_key, &head));
        assert!(matches!(
            state.apply(&bad, &authority),
            Err(ApplyError::Auth(_))
        ));
        assert_eq!(state.records()?.len(), 2);

        // Removed, then added again above the old heads: the old head is
        // gone with the removal, refused if offered again, and the floor
        // remembers where the new heads start.
        let d = Domain::new("a.test")?;
        assert_eq!(state.head_floor(&d)?, 1);
        let mut removed = site(10);
        removed.removed = true;
        state.apply(&Record::Site(Signed::sign(&admin, &removed)), &authority)?;
        assert!(state.head_record(&d)?.is_none());
        assert_eq!(state.head_floor(&d)?, 1);
        let mut again = site(11);
        again.heads_after = state.head_floor(&d)?;
        state.apply(&Record::Site(Signed::sign(&admin, &again)), &authority)?;
        assert!(matches!(
            state.apply(&ok, &authority),
            Err(ApplyError::Auth(AuthError::BeforeSite { .. }))
        ));
        let next = Record::Head(Signed::sign(&publisher, &Head { seq: 2, ..head }));
        assert_eq!(state.apply(&next, &authority)?, Applied::New);
        assert_eq!(state.head_floor(&d)?, 2);
        Ok(())
    }

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
            state.head(&d)?.map(|h| h.verify().map(|h| h.seq)),
            Some(Ok(4))
        );
        assert_eq!(state.clear_site(&d)?.map(|m| m.len()), Some(2));
        assert!(state.clear_site(&d)?.is_none());
        assert!(state.versions(&d)?.is_empty());
        assert!(state.head(&d)?.is_none());
        Ok(())
    }
}
