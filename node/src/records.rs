//! The one owner of record writes: merges batches of records into the
//! [`Directory`], makes each batch durable in one transaction, then
//! publishes the new directory through a watch channel.

use std::sync::{Arc, Mutex};

use maki_protocol::Record;
use tokio::sync::watch;

use crate::{
    directory::{Applied, Authority, Change, Directory, Refused},
    state::{State, StateError},
};

/// A record that was not taken in; nothing changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    State(#[from] StateError),
}

/// See the module docs.
#[derive(Debug)]
pub struct Records {
    state: Arc<State>,
    current: watch::Sender<Arc<Directory>>,
    /// Writers merge one at a time, each into a copy of the latest.
    write: Mutex<()>,
}

impl Records {
    /// Loads the directory from the records `state` holds.
    pub fn load(state: Arc<State>, authority: Authority) -> Result<Self, StateError> {
        let loaded = Directory::load(authority, state.records()?);
        for (record, error) in loaded.bad {
            tracing::warn!(%error, ?record, "a stored record no longer decodes; ignoring it");
        }
        let records = Self {
            state,
            current: watch::Sender::new(Arc::new(loaded.dir)),
            write: Mutex::new(()),
        };
        if !loaded.learned.is_empty() {
            // Carried while unread; judged now, as if they had just arrived.
            // Their old keys go in the same transaction as the verdicts,
            // so a crash between the two loses nothing.
            let (old, mut batch): (Vec<_>, Vec<_>) = loaded.learned.into_iter().unzip();
            batch.sort_by_key(maki_protocol::sync::apply_rank);
            let removals = old.into_iter().map(Change::Remove).collect();
            for verdict in records.apply_after(removals, &batch)? {
                if let Err(error) = verdict {
                    tracing::info!(%error, "a carried record of a kind now known was refused");
                }
            }
        }
        Ok(records)
    }

    /// The directory now.
    pub fn directory(&self) -> Arc<Directory> {
        self.current.borrow().clone()
    }

    /// A receiver that sees each new directory.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Directory>> {
        self.current.subscribe()
    }

    /// Merges `batch` in order (a record may authorise the ones after it),
    /// makes every change durable in one transaction, then publishes the
    /// new directory. One verdict per record; if the transaction fails,
    /// nothing changed.
    pub fn apply(&self, batch: &[Record]) -> Result<Vec<Result<Applied, Refused>>, StateError> {
        self.apply_after(Vec::new(), batch)
    }

    /// [`Self::apply`], with `first` made in the same transaction.
    fn apply_after(
        &self,
        first: Vec<Change>,
        batch: &[Record],
    ) -> Result<Vec<Result<Applied, Refused>>, StateError> {
        // A poisoned lock means a writer panicked, which aborts the process.
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Directory::clone(&self.current.borrow());
        let mut changes = first;
        let verdicts = batch.iter().map(|r| next.merge(r, &mut changes)).collect();
        if !changes.is_empty() {
            self.state.write_records(&changes)?;
            tell_unread(&self.current.borrow(), &changes);
            #[cfg(feature = "next-format")]
            crate::next::tell(&changes);
            self.current.send_replace(Arc::new(next));
        }
        Ok(verdicts)
    }

    /// [`Self::apply`] for one record.
    pub fn apply_one(&self, record: &Record) -> Result<Applied, ApplyError> {
        match self.apply(std::slice::from_ref(record))?.pop() {
            Some(verdict) => Ok(verdict?),
            None => Ok(Applied::Stale),
        }
    }
}

/// Says so, once per kind, when this node starts carrying records of a
/// kind it cannot read: a newer release is in the network, and this node
/// relays what it makes without applying it.
fn tell_unread(before: &Directory, changes: &[Change]) {
    let mut told = std::collections::BTreeSet::new();
    for change in changes {
        if let Change::Put(_, Record::Unknown { kind, signed }) = change
            && told.insert(*kind)
            && !before.unknown().any(|h| h.record.kind() == *kind)
        {
            tracing::info!(
                kind,
                signer = %signed.signer(),
                "carrying records of a kind this build cannot read (made by a newer release); they are relayed, not applied"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use maki_protocol::{AuthError, Domain, Hash, Head, RecordKey, SecretKey, Signed, SiteRecord};

    use super::*;

    #[test]
    fn records_merge_last_writer_wins_and_refuse_strangers()
    -> Result<(), Box<dyn std::error::Error>> {
        use maki_protocol::RECORD_FORMAT;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.redb");
        let state = Arc::new(State::open(&path)?);
        let admin = SecretKey::from_bytes(&[1; 32]);
        let publisher = SecretKey::from_bytes(&[2; 32]);
        let authority = Authority {
            network: maki_protocol::Hash::of(b"net"),
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
        let records = Records::load(state.clone(), authority.clone())?;
        let apply = |r: &Record| records.apply_one(r);
        let rec = |v: u64| Record::Site(Signed::sign(&admin, &site(v)));
        assert_eq!(apply(&rec(2))?, Applied::New);
        assert_eq!(apply(&rec(1))?, Applied::Stale);
        assert_eq!(apply(&rec(2))?, Applied::Stale);
        assert_eq!(apply(&rec(3))?, Applied::Replaced);
        let stranger = Record::Site(Signed::sign(&publisher, &site(9)));
        assert!(matches!(
            apply(&stranger),
            Err(ApplyError::Refused(Refused::Auth(_)))
        ));

        // A head is judged against the site record the directory holds.
        let head = Head {
            site: Domain::new("a.test")?,
            seq: 1,
            manifest: Hash::of(b"m"),
        };
        let ok = Record::Head(Signed::sign(&publisher, &head));
        assert_eq!(apply(&ok)?, Applied::New);
        let stranger_key = SecretKey::from_bytes(&[9; 32]);
        let bad = Record::Head(Signed::sign(&stranger_key, &head));
        assert!(matches!(
            apply(&bad),
            Err(ApplyError::Refused(Refused::Auth(_)))
        ));
        assert_eq!(state.records()?.len(), 2);

        // Removed, then added again above the old heads: the old head is
        // gone with the removal, refused if offered again, and the floor
        // remembers where the new heads start.
        let d = Domain::new("a.test")?;
        assert_eq!(state.head_floor(&d)?, 1);
        let mut removed = site(10);
        removed.removed = true;
        apply(&Record::Site(Signed::sign(&admin, &removed)))?;
        assert!(records.directory().head(&d).is_none());
        assert!(
            records
                .directory()
                .record(&RecordKey::Head(d.clone()))
                .is_none()
        );
        assert_eq!(state.head_floor(&d)?, 1);
        let mut again = site(11);
        again.heads_after = state.head_floor(&d)?;
        apply(&Record::Site(Signed::sign(&admin, &again)))?;
        assert!(matches!(
            apply(&ok),
            Err(ApplyError::Refused(Refused::Auth(
                AuthError::BeforeSite { .. }
            )))
        ));
        let next = Record::Head(Signed::sign(&publisher, &Head { seq: 2, ..head }));
        assert_eq!(apply(&next)?, Applied::New);
        assert_eq!(state.head_floor(&d)?, 2);

        // What was applied is what a restart loads, signatures unchecked.
        let before = records.directory();
        drop(records);
        let reloaded = Records::load(state.clone(), authority)?.directory();
        let ids = |d: &Directory| d.all().map(|h| h.verified.hash).collect::<Vec<_>>();
        assert_eq!(ids(&before), ids(&reloaded));
        assert_eq!(reloaded.head(&d).map(|(h, _)| h.seq), Some(2));
        Ok(())
    }

    /// A node upgraded to a build that knows a kind it used to carry
    /// unread judges those records at start, as if they had just arrived.
    #[test]
    fn carried_records_of_a_kind_now_known_are_judged_at_start()
    -> Result<(), Box<dyn std::error::Error>> {
        use maki_protocol::RECORD_FORMAT;
        let dir = tempfile::tempdir()?;
        let state = Arc::new(State::open(&dir.path().join("s.redb"))?);
        let admin = SecretKey::from_bytes(&[1; 32]);
        let stranger = SecretKey::from_bytes(&[9; 32]);
        let authority = Authority {
            network: maki_protocol::Hash::of(b"net"),
            admins: vec![admin.public()],
            founder: SecretKey::from_bytes(&[3; 32]).public(),
        };
        let site = |domain: &str| SiteRecord {
            format: RECORD_FORMAT,
            domain: Domain::new(domain).expect("domain"),
            aliases: vec![],
            publishers: vec![admin.public()],
            version: 1,
            removed: false,
            heads_after: 0,
        };
        // As an older build stored them: under keys of an unknown kind.
        let good = Record::Site(Signed::sign(&admin, &site("good.test")));
        let bad = Record::Site(Signed::sign(&stranger, &site("bad.test")));
        let carried = |r: &Record| RecordKey::Unknown {
            kind: 1,
            id: Hash::of(&postcard::to_stdvec(r).expect("encode")),
        };
        state.write_records(&[
            Change::Put(carried(&good), good.clone()),
            Change::Put(carried(&bad), bad.clone()),
        ])?;

        let records = Records::load(state.clone(), authority)?;
        let d = records.directory();
        assert!(d.site(&Domain::new("good.test")?).is_some());
        assert!(d.site(&Domain::new("bad.test")?).is_none());
        assert_eq!(d.unknown().count(), 0);
        // What is stored now: the good one under its real key, nothing else.
        let stored = state.records()?;
        assert_eq!(stored.len(), 1);
        assert_eq!(
            stored[0].0,
            Some(RecordKey::Site(Domain::new("good.test")?))
        );
        Ok(())
    }
}
