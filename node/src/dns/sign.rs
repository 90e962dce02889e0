//! DNSSEC, signed online (RFC 4033–4035): each answer's record sets are
//! signed as the answer is built, since geo answers differ by visitor
//! and cannot be signed ahead. Signatures are cached by what they cover,
//! so a busy name costs one signature an hour.
//!
//! Denial of existence is NSEC3 (RFC 5155) over the zone's real chain of
//! names, built with each snapshot, so its signatures are cached like any
//! other set's: a flood of made-up names costs hashes, not signatures.
//! "White lies" (RFC 7129 appendix B), a record made per query that
//! covers one hash, would hide the chain, but every name of a site with
//! a certificate is already public in the CT logs, and each lie costs a
//! fresh signature (see docs/dns.md). No iterations and no salt (RFC 9276).
//!
//! Pure: the caller brings the time and the zone's private keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use hickory_proto::{
    dnssec::{
        Algorithm, DigestType, Nsec3HashAlgorithm, PublicKeyBuf, TBS,
        rdata::{DNSKEY, DNSSECRData, DS, NSEC3, NSEC3PARAM, RRSIG, SigInput},
    },
    rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber},
};
use maki_protocol::{
    Domain,
    dnssec::{KeysError, ZoneKeys},
};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};

/// TTL of the DNSKEY set. Short, for rolls: a resolver holds an old set
/// at most this long (see docs/threat-model.md).
pub const DNSKEY_TTL: u32 = 300;
/// Signatures are made for windows of this many seconds; each is valid
/// from an hour before its window to [`VALIDITY`] after.
const WINDOW: u32 = 3600;
const VALIDITY: u32 = 7 * 24 * 3600;
/// The most signatures one zone keeps; past it the cache starts over (a
/// flood of made-up names must not grow memory without bound).
const CACHE_MAX: usize = 20_000;

/// Why a zone's keys cannot sign here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error("private key {0} is not a P-256 key in PKCS#8")]
    BadPrivate(usize),
    #[error("private key {0} does not match its public key in the record")]
    Mismatch(usize),
    #[error("the record has no keys")]
    NoKeys,
}

/// A zone's DNSSEC state at this node.
#[derive(Debug, Clone, Default)]
pub enum Dnssec {
    /// Not signed: answers carry no DNSSEC records.
    #[default]
    Off,
    /// Signed, with the keys at hand.
    On(Arc<Signer>),
    /// Signed, but this node holds no usable copy of the keys (a new
    /// nameserver no admin has sealed them to yet): it answers SERVFAIL
    /// to resolvers that validate, which then ask another nameserver.
    NoKey,
}

impl PartialEq for Dnssec {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Dnssec::Off, Dnssec::Off) | (Dnssec::NoKey, Dnssec::NoKey) => true,
            (Dnssec::On(a), Dnssec::On(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// The signers of the zones at this node, kept from one snapshot to the
/// next (their caches with them): a site's keys are opened once per
/// version of its record.
pub struct Keyring {
    /// This node's sealing secret.
    secret: [u8; 32],
    /// By site: what its signer was opened from (the record's version
    /// and public keys: two admins' records of one millisecond differ in
    /// their keys) and the signer.
    held: Mutex<HashMap<Domain, (Opened, Dnssec)>>,
}

/// A keys record's version and public keys.
type Opened = (u64, Vec<Vec<u8>>);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").finish_non_exhaustive()
    }
}

impl Keyring {
    pub fn new(secret: [u8; 32]) -> Self {
        Self {
            secret,
            held: Mutex::default(),
        }
    }

    /// This node's sealing secret (what every secret sealed to it opens
    /// with: TLS keys too).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// Whether the copy of `keys` sealed to this node, if there is one,
    /// opens to the private halves of the public keys the record shows.
    pub fn check(&self, keys: &ZoneKeys) -> Result<(), SignError> {
        let own = maki_protocol::seal::public_key(&self.secret);
        if keys.sealed.iter().any(|s| s.to == own) {
            Signer::open(keys, &self.secret)?;
        }
        Ok(())
    }

    /// How `site`'s zones are signed here, given its keys record.
    pub fn dnssec(&self, site: &Domain, keys: Option<&ZoneKeys>) -> Dnssec {
        let Some(keys) = keys.filter(|k| !k.keys.is_empty()) else {
            return Dnssec::Off;
        };
        let Ok(mut held) = self.held.lock() else {
            return Dnssec::NoKey;
        };
        // Every second, for every site: compared in place, copied only
        // when the keys changed.
        if let Some(((version, public), dnssec)) = held.get(site)
            && *version == keys.version
            && *public == keys.keys
        {
            return dnssec.clone();
        }
        let dnssec = match Signer::open(keys, &self.secret) {
            Ok(signer) => Dnssec::On(Arc::new(signer)),
            Err(error) => {
                tracing::warn!(%site, %error, "cannot sign the zones of this site");
                Dnssec::NoKey
            }
        };
        held.insert(
            site.clone(),
            ((keys.version, keys.keys.clone()), dnssec.clone()),
        );
        dnssec
    }
}

struct Key {
    pair: EcdsaKeyPair,
    dnskey: DNSKEY,
    tag: u16,
}

/// After a roll, the old key keeps signing every set beside the new one
/// this long: resolvers may hold the DNSKEY set from before the roll (its
/// TTL, twice over), and validate with the old key meanwhile.
const ROLL_OVERLAP: u64 = 2 * DNSKEY_TTL as u64;

/// One zone's keys and the signatures made with them.
pub struct Signer {
    /// The first signs every set; the others (retiring) the DNSKEY set,
    /// and the second every set too for [`ROLL_OVERLAP`] after the roll.
    keys: Vec<Key>,
    /// When the keys last changed (seconds since the epoch).
    changed: u64,
    rng: SystemRandom,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("tags", &self.keys.iter().map(|k| k.tag).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// See [`Signer::epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    window: u32,
    signers: usize,
}

#[derive(Default)]
struct Cache {
    window: u32,
    sigs: HashMap<blake3::Hash, Vec<u8>>,
}

impl Signer {
    /// The signer of `keys`, opened with this node's sealing `secret`.
    /// The private keys must match the public ones the record shows: a
    /// record that lies about them signs nothing.
    pub fn open(keys: &ZoneKeys, secret: &[u8; 32]) -> Result<Self, SignError> {
        let private = keys.open(secret)?;
        let mut signer = Self::new(&keys.keys, &private)?;
        // The record's version is the admin's clock at the change.
        signer.changed = keys.version / 1000;
        Ok(signer)
    }

    /// The signer of the given key pairs (public: x then y, 64 bytes).
    pub fn new(public: &[Vec<u8>], private: &[Vec<u8>]) -> Result<Self, SignError> {
        if public.is_empty() {
            return Err(SignError::NoKeys);
        }
        let rng = SystemRandom::new();
        let keys = public
            .iter()
            .zip(private)
            .enumerate()
            .map(|(i, (public, private))| {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, private, &rng)
                        .map_err(|_| SignError::BadPrivate(i))?;
                if pair.public_key().as_ref().get(1..) != Some(public.as_slice()) {
                    return Err(SignError::Mismatch(i));
                }
                let dnskey = dnskey(public.clone());
                let tag = dnskey
                    .calculate_key_tag()
                    .map_err(|_| SignError::Mismatch(i))?;
                Ok(Key { pair, dnskey, tag })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys,
            changed: 0,
            rng,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// What the signatures made at `now` depend on besides what they
    /// sign: the hour's window and how many keys sign.
    pub fn epoch(&self, now: u64) -> Epoch {
        Epoch {
            window: (now as u32) / WINDOW,
            signers: self.signers(RecordType::A, now).len(),
        }
    }

    /// The keys that sign a set of `rtype` at `now`.
    fn signers(&self, rtype: RecordType, now: u64) -> &[Key] {
        if rtype == RecordType::DNSKEY {
            &self.keys
        } else if now < self.changed.saturating_add(ROLL_OVERLAP) {
            &self.keys[..self.keys.len().min(2)]
        } else {
            &self.keys[..1]
        }
    }

    /// How many signatures are cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.sigs.len())
    }

    /// The DNSKEY set at `apex`.
    pub fn dnskeys(&self, apex: &Name) -> Vec<Record> {
        self.keys
            .iter()
            .map(|k| {
                Record::from_rdata(
                    apex.clone(),
                    DNSKEY_TTL,
                    RData::DNSSEC(DNSSECRData::DNSKEY(k.dnskey.clone())),
                )
            })
            .collect()
    }

    /// Appends to `section` an RRSIG for each record set in it (every
    /// key's for the DNSKEY set). `wildcard` names the records expanded
    /// from a wildcard and its label count (the owner's, `*` left out).
    pub fn sign_section(
        &self,
        apex: &Name,
        section: &mut Vec<Record>,
        wildcard: Option<(&Name, u8)>,
        now: u64,
    ) {
        let mut sets: Vec<(Name, RecordType)> = Vec::new();
        for r in section.iter() {
            let key = (r.name.clone(), r.record_type());
            if key.1 != RecordType::RRSIG && !sets.contains(&key) {
                sets.push(key);
            }
        }
        for (name, rtype) in sets {
            let set: Vec<&Record> = section
                .iter()
                .filter(|r| r.name == name && r.record_type() == rtype)
                .collect();
            let labels = match wildcard {
                Some((n, labels)) if *n == name => labels,
                _ => name.num_labels(),
            };
            let sigs: Vec<Record> = self
                .signers(rtype, now)
                .iter()
                .filter_map(|k| self.rrsig(k, apex, &name, rtype, labels, &set, now))
                .collect();
            section.extend(sigs);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rrsig(
        &self,
        key: &Key,
        apex: &Name,
        name: &Name,
        rtype: RecordType,
        labels: u8,
        set: &[&Record],
        now: u64,
    ) -> Option<Record> {
        let ttl = set.first()?.ttl;
        let window = (now as u32) / WINDOW * WINDOW;
        let input = SigInput {
            type_covered: rtype,
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: labels,
            original_ttl: ttl,
            sig_expiration: SerialNumber::new(window.wrapping_add(VALIDITY)),
            sig_inception: SerialNumber::new(window.wrapping_sub(WINDOW)),
            key_tag: key.tag,
            signer_name: apex.clone(),
        };
        let tbs = TBS::from_input(name, DNSClass::IN, &input, set.iter().copied()).ok()?;
        let id = blake3::hash(tbs.as_ref());
        let cached = {
            let mut cache = self.cache.lock().ok()?;
            if cache.window != window || cache.sigs.len() >= CACHE_MAX {
                cache.window = window;
                cache.sigs.clear();
            }
            cache.sigs.get(&id).cloned()
        };
        let sig = match cached {
            Some(sig) => sig,
            None => {
                let sig = key
                    .pair
                    .sign(&self.rng, tbs.as_ref())
                    .ok()?
                    .as_ref()
                    .to_vec();
                if let Ok(mut cache) = self.cache.lock() {
                    cache.sigs.insert(id, sig.clone());
                }
                sig
            }
        };
        Some(Record::from_rdata(
            name.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, sig))),
        ))
    }
}

/// The DNSKEY of a P-256 public key (x then y): a zone key that is also
/// the secure entry point (flags 257), the one DS names.
pub fn dnskey(public: Vec<u8>) -> DNSKEY {
    DNSKEY::with_flags(257, PublicKeyBuf::new(public, Algorithm::ECDSAP256SHA256))
}

/// The DS records of a zone whose keys are `public`, as the zone above it
/// serves them when both are the network's (a site inside another site).
pub fn ds_records(apex: &Name, public: &[Vec<u8>], ttl: u32) -> Vec<Record> {
    public
        .iter()
        .filter_map(|p| {
            let key = dnskey(p.clone());
            let tag = key.calculate_key_tag().ok()?;
            let digest = key.to_digest(apex, DigestType::SHA256).ok()?;
            Some(Record::from_rdata(
                apex.clone(),
                ttl,
                RData::DNSSEC(DNSSECRData::DS(DS::new(
                    tag,
                    Algorithm::ECDSAP256SHA256,
                    DigestType::SHA256,
                    digest.as_ref().to_vec(),
                ))),
            ))
        })
        .collect()
}

/// The NSEC3PARAM at a signed apex: SHA-1, no opt-out, no iterations, no
/// salt (RFC 9276).
pub fn nsec3param(apex: &Name, ttl: u32) -> Record {
    Record::from_rdata(
        apex.clone(),
        ttl,
        RData::DNSSEC(DNSSECRData::NSEC3PARAM(NSEC3PARAM::new(
            Nsec3HashAlgorithm::SHA1,
            false,
            0,
            Vec::new(),
        ))),
    )
}

/// The NSEC3 hash of `name`.
pub fn hash(name: &Name) -> Option<[u8; 20]> {
    let digest = Nsec3HashAlgorithm::SHA1.hash(&[], name, 0).ok()?;
    digest.as_ref().try_into().ok()
}

fn hashed_owner(h: &[u8; 20], apex: &Name) -> Option<Name> {
    let label = data_encoding::BASE32HEX_NOPAD
        .encode(h)
        .to_ascii_lowercase();
    apex.prepend_label(label.as_str()).ok()
}

fn nsec3(
    apex: &Name,
    owner: &[u8; 20],
    next: [u8; 20],
    types: &[RecordType],
    ttl: u32,
) -> Option<Record> {
    Some(Record::from_rdata(
        hashed_owner(owner, apex)?,
        ttl,
        RData::DNSSEC(DNSSECRData::NSEC3(NSEC3::new(
            Nsec3HashAlgorithm::SHA1,
            false,
            0,
            Vec::new(),
            next.to_vec(),
            types.iter().copied(),
        ))),
    ))
}

/// A zone's NSEC3 chain: one record per name that exists (empty
/// non-terminals too), each pointing at the next hash, the last at the
/// first.
#[derive(Debug, Default)]
pub struct Chain {
    /// By hash.
    links: Vec<Link>,
    /// The SOA of negative answers and its signatures: it comes with
    /// every denial.
    soa: Mutex<Option<SignedSoa>>,
}

/// A denial's SOA, signed in an epoch: the epoch, the record, and it with
/// its signatures.
type SignedSoa = (Epoch, Record, Arc<[Record]>);

#[derive(Debug)]
struct Link {
    hash: [u8; 20],
    record: Record,
    /// The record and its signatures, for the signing epoch they were
    /// made in: most negative answers are made of a few links, so they
    /// are signed (and their signing input built) once per epoch.
    signed: Mutex<Option<(Epoch, Arc<[Record]>)>>,
}

impl PartialEq for Chain {
    fn eq(&self, other: &Self) -> bool {
        self.links.len() == other.links.len()
            && self
                .links
                .iter()
                .zip(&other.links)
                .all(|(a, b)| a.hash == b.hash && a.record == b.record)
    }
}

impl Chain {
    /// The chain of `names` (each with the types it has) under `apex`.
    pub fn new(
        apex: &Name,
        names: impl IntoIterator<Item = (Name, Vec<RecordType>)>,
        ttl: u32,
    ) -> Self {
        let mut hashed: Vec<([u8; 20], Vec<RecordType>)> = names
            .into_iter()
            .filter_map(|(n, types)| Some((hash(&n)?, types)))
            .collect();
        hashed.sort_by_key(|a| a.0);
        hashed.dedup_by(|a, b| a.0 == b.0);
        let links = hashed
            .iter()
            .enumerate()
            .filter_map(|(i, (h, types))| {
                let next = hashed[(i + 1) % hashed.len()].0;
                Some(Link {
                    hash: *h,
                    record: nsec3(apex, h, next, types, ttl)?,
                    signed: Mutex::new(None),
                })
            })
            .collect();
        Self {
            links,
            soa: Mutex::new(None),
        }
    }

    /// `soa` (the zone's, for negative answers) and its signatures by
    /// `signer` at `now`.
    pub fn signed_soa(&self, soa: Record, signer: &Signer, apex: &Name, now: u64) -> Arc<[Record]> {
        let epoch = signer.epoch(now);
        if let Ok(cached) = self.soa.lock()
            && let Some((at, record, signed)) = cached.as_ref()
            && *at == epoch
            && *record == soa
        {
            return signed.clone();
        }
        let mut records = vec![soa.clone()];
        signer.sign_section(apex, &mut records, None, now);
        let signed: Arc<[Record]> = records.into();
        if let Ok(mut cached) = self.soa.lock() {
            *cached = Some((epoch, soa, signed.clone()));
        }
        signed
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The link of `name`, which exists: its NSEC3 proves what `name`
    /// does not have.
    pub fn matching(&self, name: &Name) -> Option<usize> {
        let h = hash(name)?;
        self.links.binary_search_by(|l| l.hash.cmp(&h)).ok()
    }

    /// The link whose range holds the hash of `name`: its NSEC3 proves
    /// that `name` does not exist. None if it does.
    pub fn covering(&self, name: &Name) -> Option<usize> {
        let h = hash(name)?;
        match self.links.binary_search_by(|l| l.hash.cmp(&h)) {
            Ok(_) => None,
            // Below the first hash: the last link's range wraps round.
            Err(0) => self.links.len().checked_sub(1),
            Err(i) => Some(i - 1),
        }
    }

    /// The NSEC3 of link `i`.
    pub fn record(&self, i: usize) -> Option<&Record> {
        self.links.get(i).map(|l| &l.record)
    }

    /// The NSEC3 of link `i` and its signatures by `signer` at `now`.
    pub fn signed(&self, i: usize, signer: &Signer, apex: &Name, now: u64) -> Arc<[Record]> {
        let Some(link) = self.links.get(i) else {
            return Arc::new([]);
        };
        let epoch = signer.epoch(now);
        if let Ok(cached) = link.signed.lock()
            && let Some((at, records)) = cached.as_ref()
            && *at == epoch
        {
            return records.clone();
        }
        let mut records = vec![link.record.clone()];
        signer.sign_section(apex, &mut records, None, now);
        let records: Arc<[Record]> = records.into();
        if let Ok(mut cached) = link.signed.lock() {
            *cached = Some((epoch, records.clone()));
        }
        records
    }
}

/// A fresh P-256 key pair: the public key as a record holds it (x then
/// y) and the private one as PKCS#8.
#[cfg(test)]
pub(crate) fn key_pair() -> (Vec<u8>, Vec<u8>) {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
        .expect("pair");
    (
        pair.public_key().as_ref()[1..].to_vec(),
        doc.as_ref().to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_rfc_5155s() {
        // RFC 5155 appendix A hashes with salt aabbccdd and 12 iterations;
        // with neither, "example." is this (checked with ldns-nsec3-hash).
        let h = hash(&Name::from_ascii("example.").expect("name")).expect("hash");
        let owner = hashed_owner(&h, &Name::root()).expect("owner");
        assert_eq!(owner.to_ascii().len(), 32 + 1);
    }

    #[test]
    fn the_chain_matches_names_that_exist_and_covers_the_rest() {
        let apex = Name::from_ascii("a.test.").expect("name");
        let name = |s: &str| Name::from_ascii(s).expect("name");
        let names = ["a.test.", "www.a.test.", "x.y.a.test.", "y.a.test."];
        let chain = Chain::new(
            &apex,
            names.iter().map(|n| (name(n), vec![RecordType::A])),
            60,
        );
        assert_eq!(chain.len(), 4);
        let mut owners = Vec::new();
        for n in names {
            let m = chain.matching(&name(n)).expect("matches");
            assert!(chain.covering(&name(n)).is_none(), "{n} exists");
            owners.push(chain.record(m).expect("link").name.clone());
        }
        owners.sort();
        owners.dedup();
        assert_eq!(owners.len(), 4);
        // Every made-up name is covered by a link whose range holds it.
        for n in ["nope.a.test.", "zzz.a.test.", "0.a.test.", "*.a.test."] {
            let h = hash(&name(n)).expect("hash");
            let cover = chain
                .record(chain.covering(&name(n)).expect("covered"))
                .expect("link");
            let RData::DNSSEC(DNSSECRData::NSEC3(rd)) = &cover.data else {
                panic!("not an NSEC3")
            };
            let owner = data_encoding::BASE32HEX_NOPAD
                .decode(
                    cover
                        .name
                        .iter()
                        .next()
                        .expect("label")
                        .to_ascii_uppercase()
                        .as_slice(),
                )
                .expect("base32");
            let next = rd.next_hashed_owner_name();
            let inside = if owner.as_slice() < next {
                owner.as_slice() < &h[..] && &h[..] < next
            } else {
                owner.as_slice() < &h[..] || &h[..] < next
            };
            assert!(inside, "{n} inside its cover");
            assert!(chain.matching(&name(n)).is_none());
        }
    }

    #[test]
    fn after_a_roll_both_keys_sign_until_resolvers_hold_the_new_set() {
        let (new, old) = (key_pair(), key_pair());
        let mut signer = Signer::new(&[new.0, old.0], &[new.1, old.1]).expect("signer");
        let now = 1_800_000_000;
        signer.changed = now;
        let apex = Name::from_ascii("a.test.").expect("name");
        let a = Record::from_rdata(
            apex.clone(),
            60,
            RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
        );
        let sigs = |at: u64| {
            let mut section = vec![a.clone()];
            signer.sign_section(&apex, &mut section, None, at);
            section.len() - 1
        };
        assert_eq!(
            sigs(now),
            2,
            "both keys, while resolvers may hold the old set"
        );
        assert_eq!(sigs(now + ROLL_OVERLAP), 1, "the new key alone after");
        let mut keys = signer.dnskeys(&apex);
        signer.sign_section(&apex, &mut keys, None, now + ROLL_OVERLAP);
        assert_eq!(keys.len(), 4, "the DNSKEY set: two keys, signed by both");
    }

    #[test]
    fn a_private_key_that_is_not_the_records_is_refused() {
        let (public, a) = key_pair();
        let (_, b) = key_pair();
        assert!(Signer::new(std::slice::from_ref(&public), &[a]).is_ok());
        assert!(matches!(
            Signer::new(&[public], &[b]),
            Err(SignError::Mismatch(0))
        ));
        assert!(matches!(
            Signer::new(&[vec![0; 64]], &[b"junk".to_vec()]),
            Err(SignError::BadPrivate(0))
        ));
    }
}
