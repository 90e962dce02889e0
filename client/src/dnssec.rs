//! A site's DNSSEC keys, from the admin's side: made here, sealed here to
//! every nameserver and every admin, and sent as one signed record. The
//! node never sees a private key in the clear over the admin protocol.

use hickory_proto::{
    dnssec::{Algorithm, DigestType, PublicKeyBuf, rdata::DNSKEY},
    rr::Name,
};
use maki_protocol::{
    Domain, RECORD_FORMAT, SecretKey, Signed,
    dnssec::{KeysError, MAX_KEYS, ZoneKeys},
    rpc::{KeysInfo, Request, Response},
    seal,
};
use ring::{
    rand::{SecureRandom, SystemRandom},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};

use crate::net::{Client, NetError, unexpected};

/// Why the keys could not be made or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnssecError {
    #[error(
        "the keys of {0} are not sealed to your key (you became an admin after they were made): ask the admin who made them to run `maki dns sign {0}`"
    )]
    NotSealedToYou(Domain),
    #[error("the keys of {site} do not open: {error}")]
    Keys { site: Domain, error: KeysError },
    #[error(
        "only an admin makes, rolls or removes the DNSSEC keys of {0}; a publisher can read them (`maki dns ds {0}`)"
    )]
    NotAdmin(Domain),
    #[error("{0} is not signed: `maki dns sign {0}` first")]
    NotSigned(Domain),
    #[error(
        "no nameserver can sign: no node has the dns role (`makiatto join … --dns ADDR`), or those that do are too old to announce a sealing key"
    )]
    NoNameserver,
    #[error(
        "{0} already has {MAX_KEYS} keys from earlier rolls: once the registrar has the newest DS, `maki dns retire {0}`, then roll"
    )]
    TooManyRolls(Domain),
    #[error("cannot make a key: {0}")]
    Random(String),
}

/// What to do with a site's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Sign the site: make a key if it has none, else seal the ones it
    /// has to the nameservers and admins of today.
    Sign,
    /// A new signing key; the old one stays (retiring) for the DNSKEY set
    /// until the registrar has the new DS.
    Roll,
    /// [`Change::Roll`] that cannot wait (a nameserver that held the key
    /// was removed): at the limit of keys, the ones between the newest
    /// and the oldest go (the oldest may be what the registrar names).
    ForcedRoll,
    /// Drop the retiring keys: the registrar names only the new DS now.
    Retire,
    /// Stop signing (remove the DS at the registrar first).
    Unsign,
}

/// What a change did, for the user.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub record: Signed<ZoneKeys>,
    /// Nameservers that got no copy: too old to announce a sealing key.
    pub skipped: Vec<maki_protocol::PublicKey>,
    /// How many nameservers got a copy.
    pub sealed_to: usize,
}

pub async fn info(client: &Client, domain: &Domain) -> Result<KeysInfo, NetError> {
    match client
        .call(&Request::Keys {
            domain: domain.clone(),
        })
        .await?
    {
        Response::Keys(info) => Ok(info),
        other => Err(unexpected(other)),
    }
}

pub async fn set(client: &Client, record: Signed<ZoneKeys>) -> Result<(), NetError> {
    match client.call(&Request::KeysSet { record }).await? {
        Response::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// The record that makes `change` to `site`'s keys, as `key` (an admin)
/// signs it at `version`.
pub fn change(
    key: &SecretKey,
    site: &Domain,
    info: &KeysInfo,
    change: Change,
    version: u64,
) -> Result<Outcome, DnssecError> {
    // Only an admin is told who the keys are sealed to.
    if info.admins.is_empty() {
        return Err(DnssecError::NotAdmin(site.clone()));
    }
    let rng = SystemRandom::new();
    let held = info.keys.as_ref().filter(|k| !k.keys.is_empty());
    let (mut public, mut private) = match held {
        Some(k) => {
            let private = k
                .open(&seal::admin_secret(key))
                .map_err(|error| match error {
                    KeysError::NoCopy => DnssecError::NotSealedToYou(site.clone()),
                    error => DnssecError::Keys {
                        site: site.clone(),
                        error,
                    },
                })?;
            (k.keys.clone(), private)
        }
        None => (Vec::new(), Vec::new()),
    };
    match change {
        Change::Sign if public.is_empty() => {
            let (p, s) = new_key(&rng)?;
            public.push(p);
            private.push(s);
        }
        Change::Sign => {}
        Change::Roll | Change::ForcedRoll if public.is_empty() => {
            return Err(DnssecError::NotSigned(site.clone()));
        }
        Change::Roll if public.len() >= MAX_KEYS => {
            return Err(DnssecError::TooManyRolls(site.clone()));
        }
        Change::Roll | Change::ForcedRoll => {
            while public.len() >= MAX_KEYS {
                public.remove(1);
                private.remove(1);
            }
            let (p, s) = new_key(&rng)?;
            public.insert(0, p);
            private.insert(0, s);
        }
        Change::Retire if public.is_empty() => return Err(DnssecError::NotSigned(site.clone())),
        Change::Retire => {
            public.truncate(1);
            private.truncate(1);
        }
        Change::Unsign if public.is_empty() => return Err(DnssecError::NotSigned(site.clone())),
        Change::Unsign => {
            public.clear();
            private.clear();
        }
    }
    let mut skipped = Vec::new();
    let mut recipients = Vec::new();
    for (node, sealing) in &info.nameservers {
        match sealing {
            Some(k) => recipients.push(*k),
            None => skipped.push(*node),
        }
    }
    let sealed_to = recipients.len();
    if sealed_to == 0 && !public.is_empty() {
        return Err(DnssecError::NoNameserver);
    }
    recipients.extend(info.admins.iter().filter_map(seal::admin_public));
    let mut record = ZoneKeys {
        format: RECORD_FORMAT,
        site: site.clone(),
        incarnation: info.incarnation,
        keys: public,
        sealed: Vec::new(),
        version: version.max(info.keys.as_ref().map_or(0, |k| k.version + 1)),
    };
    if !record.keys.is_empty() {
        let mut failed = false;
        record
            .seal_to(&private, &recipients, || {
                let mut b = [0u8; 32];
                failed |= rng.fill(&mut b).is_err();
                b
            })
            .map_err(|error| DnssecError::Keys {
                site: site.clone(),
                error,
            })?;
        if failed {
            return Err(DnssecError::Random(
                "the system's random source failed".into(),
            ));
        }
    }
    Ok(Outcome {
        record: Signed::sign(key, &record),
        skipped,
        sealed_to,
    })
}

/// Whether `node` holds a copy of a signed site's keys.
pub fn holds_keys(info: &KeysInfo, node: &maki_protocol::PublicKey) -> bool {
    let Some(keys) = info.keys.as_ref().filter(|k| !k.keys.is_empty()) else {
        return false;
    };
    info.nameservers
        .iter()
        .find(|(n, _)| n == node)
        .and_then(|(_, sealing)| *sealing)
        .is_some_and(|s| keys.sealed.iter().any(|c| c.to == s))
}

/// The nameservers that hold no copy of a signed site's keys (joined
/// since it was signed, or too old to announce a sealing key): they
/// answer SERVFAIL to validating resolvers until `maki dns sign` again.
pub fn without_keys(info: &KeysInfo) -> Vec<maki_protocol::PublicKey> {
    let Some(keys) = info.keys.as_ref().filter(|k| !k.keys.is_empty()) else {
        return Vec::new();
    };
    info.nameservers
        .iter()
        .filter(|(_, sealing)| sealing.is_none_or(|s| !keys.sealed.iter().any(|c| c.to == s)))
        .map(|(node, _)| *node)
        .collect()
}

fn new_key(rng: &SystemRandom) -> Result<(Vec<u8>, Vec<u8>), DnssecError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
        .map_err(|e| DnssecError::Random(e.to_string()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), rng)
        .map_err(|e| DnssecError::Random(e.to_string()))?;
    let public = pair.public_key().as_ref()[1..].to_vec();
    Ok((public, doc.as_ref().to_vec()))
}

/// One DS record for the registrar, as a zone file line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ds {
    pub zone: String,
    pub key_tag: u16,
    pub algorithm: u8,
    pub digest_type: u8,
    pub digest: String,
    /// Whether it names the key that signs now (else a retiring one).
    pub signing: bool,
}

impl std::fmt::Display for Ds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} 3600 IN DS {} {} {} {}",
            self.zone, self.key_tag, self.algorithm, self.digest_type, self.digest
        )
    }
}

/// The DS records of `keys` for each of `zones` (SHA-256 digests).
pub fn ds(zones: &[Domain], keys: &ZoneKeys) -> Vec<Ds> {
    let mut out = Vec::new();
    for zone in zones {
        let Ok(name) = Name::from_ascii(format!("{zone}.")) else {
            continue;
        };
        for (i, public) in keys.keys.iter().enumerate() {
            let dnskey = DNSKEY::with_flags(
                257,
                PublicKeyBuf::new(public.clone(), Algorithm::ECDSAP256SHA256),
            );
            let (Ok(tag), Ok(digest)) = (
                dnskey.calculate_key_tag(),
                dnskey.to_digest(&name, DigestType::SHA256),
            ) else {
                continue;
            };
            out.push(Ds {
                zone: format!("{zone}."),
                key_tag: tag,
                algorithm: 13,
                digest_type: 2,
                digest: data_encoding::HEXUPPER.encode(digest.as_ref()),
                signing: i == 0,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        nameservers: Vec<(maki_protocol::PublicKey, Option<[u8; 32]>)>,
        admin: &SecretKey,
    ) -> KeysInfo {
        KeysInfo {
            keys: None,
            incarnation: 0,
            admins: vec![admin.public()],
            nameservers,
        }
    }

    #[test]
    fn sign_roll_retire_unsign() {
        let admin = SecretKey::from_bytes(&[1; 32]);
        let node = SecretKey::from_bytes(&[2; 32]);
        let node_secret = seal::node_secret(&node);
        let old = SecretKey::from_bytes(&[3; 32]);
        let site = Domain::new("a.test").expect("domain");
        let mut i = info(
            vec![
                (node.public(), Some(seal::public_key(&node_secret))),
                (old.public(), None),
            ],
            &admin,
        );
        let made = change(&admin, &site, &i, Change::Sign, 10).expect("sign");
        assert_eq!(made.sealed_to, 1);
        assert_eq!(made.skipped, vec![old.public()]);
        let keys = made.record.verify().expect("signed");
        assert_eq!(keys.check(), Ok(()));
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.open(&node_secret).expect("the node's copy").len(), 1);

        i.keys = Some(keys.clone());
        let rolled = change(&admin, &site, &i, Change::Roll, 5)
            .expect("roll")
            .record
            .verify()
            .expect("signed");
        assert_eq!(rolled.keys.len(), 2);
        assert_eq!(rolled.keys[1], keys.keys[0], "the old key retires");
        assert!(rolled.version > keys.version);

        i.keys = Some(rolled.clone());
        let retired = change(&admin, &site, &i, Change::Retire, 20)
            .expect("retire")
            .record
            .verify()
            .expect("signed");
        assert_eq!(retired.keys, vec![rolled.keys[0].clone()]);

        let zones = [site.clone(), Domain::new("alias.test").expect("domain")];
        let ds = ds(&zones, &rolled);
        assert_eq!(ds.len(), 4);
        assert!(ds[0].signing && !ds[1].signing);
        assert_eq!(ds[0].digest.len(), 64);

        // Rolls pile up to the limit; a forced one keeps the oldest key
        // (what the registrar may still name) and the newest.
        let mut piled = rolled.clone();
        for n in 0..3 {
            i.keys = Some(piled.clone());
            match change(&admin, &site, &i, Change::Roll, 50 + n) {
                Ok(o) => piled = o.record.verify().expect("signed"),
                Err(e) => {
                    assert!(matches!(e, DnssecError::TooManyRolls(_)), "{e}");
                    break;
                }
            }
        }
        assert_eq!(piled.keys.len(), MAX_KEYS);
        i.keys = Some(piled.clone());
        let forced = change(&admin, &site, &i, Change::ForcedRoll, 60)
            .expect("forced")
            .record
            .verify()
            .expect("signed");
        assert_eq!(forced.keys.len(), MAX_KEYS);
        assert_eq!(forced.keys.last(), piled.keys.last(), "the oldest stays");
        assert_eq!(forced.keys[1], piled.keys[0], "the newest before stays");

        i.keys = Some(retired);
        let off = change(&admin, &site, &i, Change::Unsign, 30)
            .expect("unsign")
            .record
            .verify()
            .expect("signed");
        assert!(off.keys.is_empty() && off.sealed.is_empty());

        // Another admin, added after: it holds no copy.
        let late = SecretKey::from_bytes(&[4; 32]);
        i.keys = Some(rolled);
        assert!(matches!(
            change(&late, &site, &i, Change::Roll, 40),
            Err(DnssecError::NotSealedToYou(_))
        ));
    }
}
