//! Certificates from the network's ACME CA, ordered by the nodes
//! themselves (docs/https.md).
//!
//! Every `http` node runs [`run`]. Each round it finds the sites whose
//! certificate is missing, due for renewal, short of a name, sealed to a
//! node that left, or no longer trusted; for each, a rendezvous hash of
//! the site over the live `http` nodes names the one that orders it. That
//! node writes an [`AcmeOrder`] lease, then the challenges into the same
//! record, so every node answers them (HTTP-01 on the edge, DNS-01 from
//! the nameservers); it finishes the order, seals the new key to the
//! `http` nodes and admins and writes the [`CertRecord`]. A failure is
//! written too, with when to try again, for `maki sites` and for the node
//! that tries next. The state has no consensus: during a partition both
//! sides may order, which is harmless (both certificates are valid, and
//! last-writer-wins keeps one).

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, Key, NewOrder, OrderStatus, RetryPolicy, RevocationReason, RevocationRequest,
};
use maki_protocol::{
    Domain, PublicKey, Record, SecretKey, Signed, SiteRecord, View,
    acme::{AcmeAccount, AcmeConfig, AcmeOrder, Challenge, ChallengeKind},
    cert::{CertRecord, Origin},
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime, pem::PemObject},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod settle;

use crate::{
    directory::Directory,
    members::Members,
    secrets::{http_seals, recipients, with_randomness},
};

/// How often the sites are looked over.
const ROUND: Duration = Duration::from_secs(2);
/// How long a lease keeps the other nodes off a site (seconds); an order
/// that takes longer is given up.
const LEASE_SECS: u64 = 300;
/// Orders one node runs at once.
const MAX_ORDERS: usize = 4;
/// The first wait after a failure (seconds); it doubles with each one
/// after, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: u64 = 60;
const MAX_BACKOFF: u64 = 86_400;
/// How long orders wait for the account key to be changed after a node
/// that held it is gone.
const ROLL_WAIT: Duration = Duration::from_secs(30);
/// How long a site waits on a pick that never starts before the order
/// moves to the next node.
const STALL: Duration = Duration::from_secs(300);
/// The largest response read from the CA.
const MAX_RESPONSE: usize = 1 << 20;

/// Why an order did not bring a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    #[error("the CA: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the CA offers no {kind} challenge for {name}")]
    NoChallenge { name: String, kind: &'static str },
    #[error("the CA refused {0}")]
    Invalid(String),
    #[error("the authorization of {name} is {status:?}")]
    Authorization {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the certificate: {0}")]
    Certificate(String),
    #[error("the issued certificate is not usable: {0}")]
    Unusable(#[from] crate::certs::CertCheckError),
    #[error("the order took longer than its lease")]
    Timeout,
    #[error("not written: {0}")]
    Apply(#[from] crate::records::ApplyError),
    #[error("no randomness for sealing")]
    NoRandomness,
}

/// Orders the certificates this node is picked for, until `cancel`.
pub async fn run(members: Arc<Members>, key: SecretKey, cancel: CancellationToken) {
    let mut orderer = Orderer {
        members,
        secret: maki_protocol::seal::node_secret(&key),
        key,
        account: None,
        account_failed: None,
        untrusted: Arc::new(AtomicU64::new(0)),
        waiting: HashMap::new(),
        rolled: None,
        roll_pending: None,
        trusted: HashMap::new(),
    };
    let mut running: JoinSet<Domain> = JoinSet::new();
    let mut busy: HashSet<Domain> = HashSet::new();
    let mut every = tokio::time::interval(ROUND);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = running.join_next() => {
                if let Ok(site) = done {
                    busy.remove(&site);
                }
                continue;
            }
            _ = every.tick() => {}
        }
        // A CA that does not answer must not hold up the node's shutdown.
        tokio::select! {
            _ = cancel.cancelled() => break,
            () = orderer.round(&mut running, &mut busy, &cancel) => {}
        }
    }
    running.shutdown().await;
}

struct Orderer {
    members: Arc<Members>,
    key: SecretKey,
    secret: [u8; 32],
    /// The account in use: for which settings and account record versions.
    account: Option<(u64, u64, Account)>,
    /// The settings version the account could not be had under, the
    /// failures in a row, and when to try again (new settings: at once).
    account_failed: Option<(u64, u32, u64)>,
    /// Settings under which an issued certificate did not chain to the
    /// trusted roots (0: none): no more orders under them, since each
    /// would be issued and thrown away.
    untrusted: Arc<AtomicU64>,
    /// By site due but not this node's to order: the order record's
    /// version seen and since when. A pick that never starts (a node
    /// alive to probes but cut off from the records) counts as a failed
    /// attempt after [`STALL`], so the order moves on.
    waiting: HashMap<Domain, (u64, Instant)>,
    /// The account record whose key this node last tried to change.
    rolled: Option<u64>,
    /// The account record with a copy for a gone node, and since when.
    roll_pending: Option<(u64, Instant)>,
    /// Whether a site's certificate chains to the roots, by site, for the
    /// record and settings versions checked.
    trusted: HashMap<Domain, (u64, u64, bool)>,
}

/// A site whose certificate this node orders now.
struct Job {
    site: SiteRecord,
    names: Vec<String>,
    previous: Option<CertRecord>,
    failures: u32,
    /// The previous certificate's key was readable by a node that left:
    /// revoke it once the new one is in.
    revoke: bool,
}

impl Orderer {
    async fn round(
        &mut self,
        running: &mut JoinSet<Domain>,
        busy: &mut HashSet<Domain>,
        cancel: &CancellationToken,
    ) {
        let dir = self.members.directory();
        let Some(config) = dir.acme().cloned() else {
            return;
        };
        let now = now_secs();
        self.reseal_account(&dir);
        if self.untrusted.load(Ordering::Relaxed) == config.version {
            return;
        }
        // While the account key a gone node held is being changed, no
        // order starts with it (one would fail half-way), for a while.
        if self.roll_account_key(&dir, &config).await {
            return;
        }
        let jobs = self.due(&dir, &config, now, busy);
        if jobs.is_empty() || busy.len() >= MAX_ORDERS {
            return;
        }
        if let Some((settings, _, retry_at)) = self.account_failed
            && settings == config.version
            && retry_at > now
        {
            return;
        }
        let account = match self.account(&dir, &config).await {
            Ok(a) => {
                self.account_failed = None;
                a
            }
            Err(error) => {
                let error = crate::download::chain(&error);
                warn!(%error, directory = %config.directory, "no ACME account");
                let failures = match self.account_failed {
                    Some((v, f, _)) if v == config.version => f.saturating_add(1),
                    _ => 1,
                };
                self.account_failed = Some((config.version, failures, now + backoff(failures)));
                for job in &jobs {
                    let text = format!("no account at the CA: {error}");
                    self.fail(&dir, job, config.version, &text, now);
                }
                return;
            }
        };
        let roots = Arc::new(crate::certs::roots(Some(&config)));
        for job in jobs.into_iter().take(MAX_ORDERS - busy.len()) {
            let lease = self.lease(&dir, &job, now + LEASE_SECS, Vec::new());
            if let Err(error) = self.members.apply_local(lease) {
                warn!(site = %job.site.domain, %error, "could not take the order's lease");
                continue;
            }
            info!(site = %job.site.domain, names = ?job.names, "ordering a certificate");
            busy.insert(job.site.domain.clone());
            let ctx = Ctx {
                members: self.members.clone(),
                key: self.key.clone(),
                secret: self.secret,
                roots: roots.clone(),
                challenge: config.challenge,
                settings: config.version,
                untrusted: self.untrusted.clone(),
            };
            let cancel = cancel.clone();
            let account = account.clone();
            running.spawn(async move {
                let domain = job.site.domain.clone();
                let timeout = Duration::from_secs(LEASE_SECS - 30);
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return domain,
                    o = tokio::time::timeout(timeout, ctx.order(&account, &job)) => o,
                };
                let outcome = outcome.unwrap_or(Err(OrderError::Timeout));
                ctx.finish(&account, &job, outcome).await;
                domain
            });
        }
    }

    /// The sites this node should order for now.
    fn due(
        &mut self,
        dir: &Directory,
        config: &AcmeConfig,
        now: u64,
        busy: &HashSet<Domain>,
    ) -> Vec<Job> {
        let me = self.key.public();
        let candidates = self.candidates(dir, config);
        if !candidates.contains(&me) {
            return Vec::new();
        }
        let allowed = allowed(dir);
        let acme_version = config.version;
        let mut roots = None;
        let mut jobs = Vec::new();
        let mut still_waiting = HashSet::new();
        for site in dir.sites() {
            if busy.contains(&site.domain) {
                continue;
            }
            // HTTP-01 cannot prove a name before the site is published:
            // the network's nameservers give it no address yet.
            if config.challenge == ChallengeKind::Http01 && dir.head(&site.domain).is_none() {
                continue;
            }
            let order = dir.acme_order(&site.domain);
            // Backing off after a failure, unless an admin changed the
            // settings since (which may be the fix).
            if order.is_some_and(|o| o.retry_at > now && o.settings == config.version) {
                continue;
            }
            // A lease no longer than a lease runs (a member could claim
            // one for ever).
            let leased = order.filter(|o| o.until > now && o.until <= now + 2 * LEASE_SECS);
            // A lease of a node still up is left to it; one of this node
            // (a restart mid-order) or of a node that is down is not.
            if let Some(o) = leased
                && o.holder != me
                && candidates.contains(&o.holder)
            {
                continue;
            }
            let names = order_names(site, config.challenge);
            let previous = dir.cert(&site.domain);
            let trusted = previous.is_some_and(|c| {
                let entry = self.trusted.get(&site.domain);
                match entry {
                    Some((v, a, ok)) if *v == c.version && *a == acme_version => *ok,
                    _ => {
                        let roots = roots
                            .get_or_insert_with(|| Arc::new(crate::certs::roots(Some(config))));
                        let ok =
                            crate::certs::verify_chain(c, roots.clone(), UnixTime::now()).is_ok();
                        self.trusted
                            .insert(site.domain.clone(), (c.version, acme_version, ok));
                        ok
                    }
                }
            });
            let Some(why) = needs(previous, &names, trusted, &allowed, now) else {
                continue;
            };
            // Each failed attempt, and each lease that ran out unanswered,
            // moves the order to the next node: one that cannot reach the
            // CA does not hold the site back. So does a pick that never
            // starts.
            let lapsed = order.is_some_and(|o| o.until != 0 && leased.is_none());
            let seen = order.map_or(0, |o| o.version);
            let since = match self.waiting.get(&site.domain) {
                Some((v, since)) if *v == seen => *since,
                _ => Instant::now(),
            };
            self.waiting.insert(site.domain.clone(), (seen, since));
            still_waiting.insert(site.domain.clone());
            let stalled = u32::try_from(since.elapsed().as_secs() / STALL.as_secs()).unwrap_or(0);
            let attempt = order
                .map_or(0, |o| o.failures)
                .saturating_add(u32::from(lapsed))
                .saturating_add(stalled);
            if pick(&site.domain, attempt, &candidates) != Some(me) {
                continue;
            }
            info!(site = %site.domain, why, "the site needs a certificate");
            jobs.push(Job {
                site: site.clone(),
                names,
                previous: previous.cloned(),
                // A lease that ran out counts as a failed attempt.
                failures: attempt,
                revoke: why == NEEDS_REKEY,
            });
        }
        self.trusted
            .retain(|d, _| dir.sites().any(|s| &s.domain == d));
        self.waiting.retain(|d, _| still_waiting.contains(d));
        jobs
    }

    /// The nodes that may order: the live `http` nodes that can be sealed
    /// to, and of those, the ones holding the account key when any does.
    fn candidates(&self, dir: &Directory, config: &AcmeConfig) -> Vec<PublicKey> {
        let down = self.members.http_down(dir);
        let live: Vec<(PublicKey, [u8; 32])> = dir
            .members()
            .filter(|(n, _)| n.roles.iter().any(|r| r == maki_protocol::ROLE_HTTP))
            .filter(|(n, _)| !down.contains(&n.id))
            .filter_map(|(n, _)| Some((n.id, n.seal?)))
            .collect();
        let account = dir
            .acme_account()
            .filter(|a| a.directory == config.directory);
        let holds =
            |seal: &[u8; 32]| account.is_some_and(|a| a.sealed.iter().any(|s| s.to == *seal));
        let holders: Vec<PublicKey> = live
            .iter()
            .filter(|(_, seal)| holds(seal))
            .map(|(id, _)| *id)
            .collect();
        if holders.is_empty() {
            live.into_iter().map(|(id, _)| id).collect()
        } else {
            holders
        }
    }

    /// The network's account: the one in the records if this node can
    /// open it, or a new one (written to the records) when there is none
    /// for the settings' directory.
    async fn account(
        &mut self,
        dir: &Directory,
        config: &AcmeConfig,
    ) -> Result<Account, AccountError> {
        let record = dir
            .acme_account()
            .filter(|a| a.directory == config.directory);
        let record_version = record.map_or(0, |r| r.version);
        if let Some((c, r, account)) = &self.account
            && *c == config.version
            && *r == record_version
        {
            return Ok(account.clone());
        }
        let http = Box::new(AcmeHttp::new(config)?);
        let builder = Account::builder_with_http(http);
        let (account, key, fresh) = match record {
            // The account by its URL: no lookup by key at the CA (a key
            // changed since need not be found that way).
            Some(r) => {
                let key = r.open(&self.secret)?;
                let account = builder
                    .from_parts(
                        r.url.clone(),
                        PrivatePkcs8KeyDer::from(key.as_slice()),
                        config.directory.clone(),
                    )
                    .await?;
                (account, key, false)
            }
            None => {
                let (signing, pkcs8) = Key::generate_pkcs8()?;
                let key = pkcs8.secret_pkcs8_der().to_vec();
                let (account, _) = builder
                    .create_from_key(
                        (signing, PrivateKeyDer::Pkcs8(pkcs8)),
                        config.directory.clone(),
                    )
                    .await?;
                (account, key, true)
            }
        };
        if !config.contact.is_empty() {
            let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
            if let Err(error) = account.update_contacts(&contact).await {
                warn!(%error, "the CA did not take the account's contacts");
            }
        }
        let mut version = record_version;
        if fresh {
            let mut next = AcmeAccount {
                format: 1,
                directory: config.directory.clone(),
                url: account.id().to_owned(),
                sealed: Vec::new(),
                version: crate::now_millis(),
            };
            let (sealed, failed) =
                with_randomness(|fresh| next.seal_to(&key, &recipients(dir), fresh).is_ok());
            if !sealed || failed {
                return Err(AccountError::NoRandomness);
            }
            version = next.version;
            info!(directory = %config.directory, id = account.id(), "made the network's ACME account");
            self.members
                .apply_local(Record::Account(Signed::sign(&self.key, &next)))
                .map_err(|e| AccountError::Apply(e.to_string()))?;
        }
        self.account = Some((config.version, version, account.clone()));
        Ok(account)
    }

    /// A new key for the account when a node that held the old one is
    /// gone (RFC 8555 §7.3.5: the account stays, its key changes), made
    /// by the lowest-id live holder and sealed to the nodes and admins
    /// left; tried once per account record. True while orders should
    /// wait for it (at most [`ROLL_WAIT`]), and in the round that made it.
    async fn roll_account_key(&mut self, dir: &Directory, config: &AcmeConfig) -> bool {
        let Some(record) = dir
            .acme_account()
            .filter(|a| a.directory == config.directory)
        else {
            return false;
        };
        let allowed = allowed(dir);
        if record.sealed.iter().all(|s| allowed.contains(&s.to)) {
            self.roll_pending = None;
            return false;
        }
        let since = match self.roll_pending {
            Some((v, since)) if v == record.version => since,
            _ => Instant::now(),
        };
        self.roll_pending = Some((record.version, since));
        let wait = since.elapsed() < ROLL_WAIT;
        if self.rolled == Some(record.version) {
            return wait;
        }
        let down = self.members.http_down(dir);
        let holds = |seal: &[u8; 32]| record.sealed.iter().any(|s| s.to == *seal);
        let first = http_seals(dir)
            .iter()
            .filter(|(id, seal)| holds(seal) && !down.contains(id))
            .map(|(id, _)| *id)
            .min();
        if first != Some(self.key.public()) {
            return wait;
        }
        self.rolled = Some(record.version);
        let mut rolled = match self.account(dir, config).await {
            Ok(a) => a,
            Err(error) => {
                warn!(error = %crate::download::chain(&error), "no ACME account to change the key of");
                return wait;
            }
        };
        let credentials = match rolled.update_key().await {
            Ok(c) => c,
            Err(error) => {
                warn!(error = %crate::download::chain(&error), "could not change the ACME account key");
                return wait;
            }
        };
        let key = credentials.private_key().secret_pkcs8_der().to_vec();
        let mut next = AcmeAccount {
            version: crate::now_millis().max(record.version.saturating_add(1)),
            sealed: Vec::new(),
            ..record.clone()
        };
        let (sealed, failed) =
            with_randomness(|fresh| next.seal_to(&key, &recipients(dir), fresh).is_ok());
        if !sealed || failed {
            warn!("could not seal the new ACME account key");
            return wait;
        }
        match self
            .members
            .apply_local(Record::Account(Signed::sign(&self.key, &next)))
        {
            Ok(_) => {
                info!("rolled the ACME account key: a node that held it is gone");
                // Taken up from the record next round, as every other node
                // does (this round's view of the records is from before).
                self.account = None;
                drop(rolled);
                true
            }
            Err(error) => {
                warn!(%error, "could not write the new ACME account key");
                wait
            }
        }
    }

    /// Seals the account key again for `http` nodes that joined since it
    /// was made (the lowest-id holder does it).
    fn reseal_account(&self, dir: &Directory) {
        let Some(account) = dir.acme_account() else {
            return;
        };
        let http = http_seals(dir);
        let down = self.members.http_down(dir);
        let holds = |seal: &[u8; 32]| account.sealed.iter().any(|s| s.to == *seal);
        let first = http
            .iter()
            .filter(|(id, seal)| holds(seal) && !down.contains(id))
            .map(|(id, _)| *id)
            .min();
        // A key a gone node held gets no new copies: it is changed
        // instead (`roll_account_key`), and the new one sealed to all.
        let allowed = allowed(dir);
        if first != Some(self.key.public())
            || http.iter().all(|(_, seal)| holds(seal))
            || account.sealed.iter().any(|s| !allowed.contains(&s.to))
        {
            return;
        }
        let Ok(key) = account.open(&self.secret) else {
            return;
        };
        let mut next = AcmeAccount {
            version: crate::now_millis().max(account.version.saturating_add(1)),
            ..account.clone()
        };
        let (sealed, failed) =
            with_randomness(|fresh| next.seal_to(&key, &recipients(dir), fresh).is_ok());
        if !sealed || failed {
            warn!("could not reseal the ACME account key");
            return;
        }
        info!("resealing the ACME account key to the nodes that joined");
        if let Err(error) = self
            .members
            .apply_local(Record::Account(Signed::sign(&self.key, &next)))
        {
            warn!(%error, "could not reseal the ACME account key");
        }
    }

    fn lease(&self, dir: &Directory, job: &Job, until: u64, challenges: Vec<Challenge>) -> Record {
        let order = AcmeOrder {
            until,
            challenges,
            ..next_order(&self.key, dir, job)
        };
        Record::Order(Signed::sign(&self.key, &order))
    }

    /// Writes a failed attempt for `job` without having started it.
    fn fail(&self, dir: &Directory, job: &Job, settings: u64, error: &str, now: u64) {
        let record = failure_record(&self.key, dir, job, settings, error, now);
        if let Err(e) = self.members.apply_local(record) {
            warn!(site = %job.site.domain, error = %e, "could not write the failed order");
        }
    }
}

/// Why an account could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("{0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the network's account key: {0}")]
    Key(#[from] maki_protocol::acme::AccountError),
    #[error("the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("no randomness for sealing")]
    NoRandomness,
    #[error("not written: {0}")]
    Apply(String),
}

/// What one order needs, apart from the orderer's bookkeeping.
struct Ctx {
    members: Arc<Members>,
    key: SecretKey,
    secret: [u8; 32],
    roots: Arc<RootCertStore>,
    challenge: ChallengeKind,
    /// The settings version the order is made under.
    settings: u64,
    /// Set to `settings` when the certificate issued does not chain to
    /// the trusted roots.
    untrusted: Arc<AtomicU64>,
}

impl Ctx {
    async fn order(&self, account: &Account, job: &Job) -> Result<CertRecord, OrderError> {
        let identifiers: Vec<Identifier> = job
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        // First what every node must answer, then the CA is told to look.
        let mut challenges = Vec::new();
        let mut auths = order.authorizations();
        while let Some(auth) = auths.next().await {
            let mut auth = auth?;
            match auth.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => {
                    return Err(OrderError::Authorization {
                        name: auth.identifier().to_string(),
                        status,
                    });
                }
            }
            let name = auth.identifier().to_string();
            let kind = if auth.identifier().wildcard {
                ChallengeKind::Dns01
            } else {
                self.challenge
            };
            let handle = auth
                .challenge(challenge_type(kind))
                .ok_or(OrderError::NoChallenge {
                    name: name.clone(),
                    kind: kind_name(kind),
                })?;
            let proof = handle.key_authorization();
            challenges.push(Challenge {
                kind,
                name,
                token: handle.token.clone(),
                proof: match kind {
                    ChallengeKind::Http01 => proof.as_str().to_owned(),
                    ChallengeKind::Dns01 => proof.dns_value(),
                },
            });
        }
        if !challenges.is_empty() {
            let dir = self.members.directory();
            let lease = AcmeOrder {
                until: now_secs() + LEASE_SECS,
                challenges: challenges.clone(),
                ..next_order(&self.key, &dir, job)
            };
            self.members
                .apply_local(Record::Order(Signed::sign(&self.key, &lease)))?;
            settle::until_answered(&self.members, &challenges).await;
            let mut auths = order.authorizations();
            while let Some(auth) = auths.next().await {
                let mut auth = auth?;
                if auth.status != AuthorizationStatus::Pending {
                    continue;
                }
                let kind = if auth.identifier().wildcard {
                    ChallengeKind::Dns01
                } else {
                    self.challenge
                };
                if let Some(mut handle) = auth.challenge(challenge_type(kind)) {
                    handle.set_ready().await?;
                }
            }
        }
        let polling = RetryPolicy::new()
            .initial_delay(Duration::from_millis(500))
            .timeout(Duration::from_secs(120));
        if order.poll_ready(&polling).await? != OrderStatus::Ready {
            return Err(OrderError::Invalid(why_invalid(&mut order).await));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| OrderError::Certificate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(job.names.clone())
            .map_err(|e| OrderError::Certificate(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| OrderError::Certificate(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        let pem = order.poll_certificate(&polling).await?;
        let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| OrderError::Certificate(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| OrderError::Certificate("an empty chain".into()))?;
        let not_after = maki_protocol::cert::not_after(leaf)
            .ok_or_else(|| OrderError::Certificate("its expiry cannot be read".into()))?;
        let dir = self.members.directory();
        let mut record = CertRecord {
            format: 1,
            site: job.site.domain.clone(),
            incarnation: job.site.heads_after,
            origin: Origin::Acme,
            names: job.names.clone(),
            chain,
            not_after,
            sealed: Vec::new(),
            version: crate::now_millis(),
        };
        let private = key.serialize_der();
        let (sealed, failed) =
            with_randomness(|fresh| record.seal_to(&private, &recipients(&dir), fresh).is_ok());
        if !sealed || failed {
            return Err(OrderError::NoRandomness);
        }
        // What every node will check before serving it, checked first here.
        // A chain to no trusted root means the settings' roots are wrong:
        // every order would be issued and thrown away, so none is made
        // under these settings again.
        if let Err(error) = crate::certs::verify_chain(&record, self.roots.clone(), UnixTime::now())
        {
            self.untrusted.store(self.settings, Ordering::Relaxed);
            warn!(%error, "a certificate the CA issued does not chain to the trusted roots: no orders until the ACME settings change (check --root)");
            return Err(error.into());
        }
        crate::certs::open(&record, &self.secret)?;
        Ok(record)
    }

    /// Writes what came of an order: the certificate and a released
    /// lease, or the failure and when to try again.
    async fn finish(&self, account: &Account, job: &Job, outcome: Result<CertRecord, OrderError>) {
        let dir = self.members.directory();
        let site = &job.site.domain;
        let now = now_secs();
        let record = match outcome {
            Ok(cert) => {
                let not_after = cert.not_after;
                if let Err(error) = self
                    .members
                    .apply_local(Record::Cert(Signed::sign(&self.key, &cert)))
                {
                    warn!(%site, %error, "could not write the new certificate");
                    failure_record(&self.key, &dir, job, self.settings, &error.to_string(), now)
                } else {
                    info!(%site, names = ?job.names, not_after, "certificate issued");
                    if job.revoke
                        && let Some(old) = &job.previous
                        && old.origin == Origin::Acme
                    {
                        revoke(account, old).await;
                    }
                    let released = AcmeOrder {
                        failures: 0,
                        error: None,
                        settings: self.settings,
                        ..next_order(&self.key, &dir, job)
                    };
                    Record::Order(Signed::sign(&self.key, &released))
                }
            }
            Err(error) => {
                let error = crate::download::chain(&error);
                warn!(%site, %error, failures = job.failures.saturating_add(1), "certificate order failed");
                failure_record(&self.key, &dir, job, self.settings, &error, now)
            }
        };
        if let Err(error) = self.members.apply_local(record) {
            warn!(%site, %error, "could not write the order's outcome");
        }
    }
}

async fn revoke(account: &Account, old: &CertRecord) {
    let Some(leaf) = old.chain.first() else {
        return;
    };
    let der = CertificateDer::from(leaf.as_slice());
    let request = RevocationRequest {
        certificate: &der,
        reason: Some(RevocationReason::KeyCompromise),
    };
    match account.revoke(&request).await {
        Ok(()) => {
            info!(site = %old.site, "revoked the certificate whose key a removed node could read")
        }
        Err(error) => warn!(site = %old.site, %error, "could not revoke the old certificate"),
    }
}

/// Why the CA found the order invalid, from its authorizations.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut why = Vec::new();
    let mut auths = order.authorizations();
    while let Some(Ok(mut auth)) = auths.next().await {
        let name = auth.identifier().to_string();
        if auth.refresh().await.is_err() {
            continue;
        }
        for c in &auth.challenges {
            if let Some(e) = &c.error {
                why.push(format!("{name}: {e}"));
            }
        }
    }
    if why.is_empty() {
        "the order (no reason given)".into()
    } else {
        why.join("; ")
    }
}

/// Who may hold a copy of a key: the members (with or without the
/// `http` role) and admins; a copy sealed to anyone else was read by a
/// node that is gone.
fn allowed(dir: &Directory) -> HashSet<[u8; 32]> {
    let mut allowed: HashSet<[u8; 32]> = dir.members().filter_map(|(n, _)| n.seal).collect();
    allowed.extend(
        dir.admins()
            .iter()
            .filter_map(maki_protocol::seal::admin_public),
    );
    allowed
}

/// How long after a certificate is issued a new name waits for the next
/// (seconds): 36 orders per 3 hours at most, per site.
const NAME_COOLDOWN: u64 = 300;

/// Why a site needs a new certificate; None if it does not.
const NEEDS_REKEY: &str = "its key was readable by a node that left";

fn needs(
    cert: Option<&CertRecord>,
    names: &[String],
    trusted: bool,
    allowed: &HashSet<[u8; 32]>,
    now: u64,
) -> Option<&'static str> {
    let Some(cert) = cert.filter(|c| !c.chain.is_empty()) else {
        return Some("it has none");
    };
    if cert.not_after <= now {
        return Some("it expired");
    }
    // An uploaded certificate is the publisher's to renew.
    if cert.origin == Origin::Upload {
        return None;
    }
    if !trusted {
        return Some("it does not chain to a trusted root");
    }
    // Aliases changed over and over (an admin's script gone wrong) must
    // not spend the network's one account, whose limits (orders per
    // account per 3 hours) every site shares: a certificate is replaced
    // for new names at most every NAME_COOLDOWN, which also gathers
    // aliases added one after another into one order. The rest (none,
    // expiry, renewal, a node removed) comes at once.
    let issued = cert.version / 1000;
    if names.iter().any(|n| !covered(n, &cert.names)) && issued + NAME_COOLDOWN <= now {
        return Some("it lacks a name of the site");
    }
    if cert.sealed.iter().any(|s| !allowed.contains(&s.to)) {
        return Some(NEEDS_REKEY);
    }
    let not_before = cert
        .chain
        .first()
        .and_then(|l| maki_protocol::cert::validity(l))
        .map_or(now, |(b, _)| b);
    let life = cert.not_after.saturating_sub(not_before);
    (cert.not_after.saturating_sub(now) <= life / 3).then_some("a third of its life is left")
}

/// The names to order for `site`. With DNS-01 (the network's nameservers
/// answer for its zones), its domain and the wildcard under it, as a CDN
/// does: an alias added under the domain later needs no new order; then
/// the aliases elsewhere. With HTTP-01, each name (a wildcard cannot be
/// proven over HTTP).
fn order_names(site: &SiteRecord, challenge: ChallengeKind) -> Vec<String> {
    let domain = site.domain.as_str();
    match challenge {
        ChallengeKind::Http01 => site.names().map(|d| d.as_str().to_owned()).collect(),
        ChallengeKind::Dns01 => {
            let mut names = vec![domain.to_owned(), format!("*.{domain}")];
            names.extend(
                site.aliases
                    .iter()
                    .filter(|a| a.as_str().split_once('.').map(|(_, p)| p) != Some(domain))
                    .map(|a| a.as_str().to_owned()),
            );
            names
        }
    }
}

/// Whether `name` is among `names`, itself or (a name that is no
/// wildcard) by the wildcard directly above it.
fn covered(name: &str, names: &[String]) -> bool {
    names.iter().any(|n| n == name)
        || (!name.starts_with("*.")
            && name.split_once('.').is_some_and(|(_, parent)| {
                names.iter().any(|n| n.strip_prefix("*.") == Some(parent))
            }))
}

/// The node a rendezvous hash of `site` and `attempt` picks among
/// `candidates`: each site has one per attempt, and a node leaving moves
/// only its own sites.
fn pick(site: &Domain, attempt: u32, candidates: &[PublicKey]) -> Option<PublicKey> {
    candidates.iter().copied().max_by_key(|id| {
        let mut h = blake3::Hasher::new_derive_key("makiatto 2026 acme orderer v1");
        h.update(site.as_str().as_bytes());
        h.update(&[0]);
        h.update(&attempt.to_le_bytes());
        h.update(id.as_bytes());
        *h.finalize().as_bytes()
    })
}

/// The next version of `job`'s order record, held by `key`'s node: no
/// lease, no challenges, the failures and last error as they stand.
fn next_order(key: &SecretKey, dir: &Directory, job: &Job) -> AcmeOrder {
    let previous = dir.acme_order(&job.site.domain);
    AcmeOrder {
        format: 1,
        site: job.site.domain.clone(),
        incarnation: job.site.heads_after,
        holder: key.public(),
        until: 0,
        challenges: Vec::new(),
        failures: job.failures,
        error: previous.and_then(|o| o.error.clone()),
        retry_at: 0,
        settings: previous.map_or(0, |o| o.settings),
        version: crate::now_millis().max(previous.map_or(0, |o| o.version.saturating_add(1))),
    }
}

fn failure_record(
    key: &SecretKey,
    dir: &Directory,
    job: &Job,
    settings: u64,
    error: &str,
    now: u64,
) -> Record {
    let failures = job.failures.saturating_add(1);
    let mut text: String = error
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect();
    text.truncate(maki_protocol::acme::MAX_ERROR);
    let order = AcmeOrder {
        failures,
        error: Some(text),
        retry_at: now + backoff(failures),
        settings,
        ..next_order(key, dir, job)
    };
    Record::Order(Signed::sign(key, &order))
}

/// How long to wait after `failures` failures in a row (seconds).
fn backoff(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(20);
    (FIRST_BACKOFF << doublings).min(MAX_BACKOFF)
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    }
}

fn kind_name(kind: ChallengeKind) -> &'static str {
    match kind {
        ChallengeKind::Http01 => "http-01",
        ChallengeKind::Dns01 => "dns-01",
    }
}

fn now_secs() -> u64 {
    crate::now_millis() / 1000
}

/// The CA's HTTP client: reqwest (what iroh builds already) over rustls
/// with ring, trusting the system's roots and the settings' extra ones.
struct AcmeHttp(reqwest::Client);

impl AcmeHttp {
    fn new(config: &AcmeConfig) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(crate::certs::roots(Some(config)))
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self(client))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let other = |e: reqwest::Error| instant_acme::Error::Other(Box::new(e));
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let mut response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(other)?;
            let mut out = http::Response::builder().status(response.status());
            if let Some(headers) = out.headers_mut() {
                *headers = std::mem::take(response.headers_mut());
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(other)? {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > MAX_RESPONSE {
                    return Err(instant_acme::Error::Str("a response larger than 1 MiB"));
                }
            }
            let out = out
                .body(http_body_util::Full::new(Bytes::from(bytes)))
                .map_err(instant_acme::Error::Http)?;
            Ok(BytesResponse::from(out))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaving_node_moves_only_its_own_sites() {
        let nodes: Vec<PublicKey> = (1..=5u8)
            .map(|i| SecretKey::from_bytes(&[i; 32]).public())
            .collect();
        let sites: Vec<Domain> = (0..200)
            .map(|i| Domain::new(&format!("s{i}.test")).expect("domain"))
            .collect();
        let before: Vec<_> = sites.iter().map(|s| pick(s, 0, &nodes)).collect();
        let mut counts = HashMap::new();
        for p in before.iter().flatten() {
            *counts.entry(*p).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&c| c > 20), "{counts:?}");
        let gone = nodes[2];
        let rest: Vec<_> = nodes.iter().copied().filter(|n| *n != gone).collect();
        for (site, was) in sites.iter().zip(&before) {
            let now = pick(site, 0, &rest);
            if *was != Some(gone) {
                assert_eq!(now, *was);
            }
        }
        assert_eq!(pick(&sites[0], 0, &[]), None);
        // Attempts after a failure go round the nodes.
        let tried: HashSet<_> = (0..20).filter_map(|a| pick(&sites[0], a, &nodes)).collect();
        assert!(tried.len() >= 3, "{tried:?}");
    }

    #[test]
    fn dns01_orders_the_domain_and_its_wildcard_and_the_aliases_elsewhere() {
        let site = SiteRecord {
            format: 1,
            domain: Domain::new("shop.test").expect("domain"),
            aliases: ["www.shop.test", "shop.example", "a.b.shop.test"]
                .iter()
                .map(|a| Domain::new(a).expect("domain"))
                .collect(),
            publishers: vec![],
            version: 1,
            removed: false,
            heads_after: 0,
        };
        let names = order_names(&site, ChallengeKind::Dns01);
        assert_eq!(
            names,
            ["shop.test", "*.shop.test", "shop.example", "a.b.shop.test"]
        );
        assert_eq!(order_names(&site, ChallengeKind::Http01).len(), 4);
        assert!(covered("www.shop.test", &names));
        assert!(covered("new.shop.test", &names));
        assert!(!covered("a.c.shop.test", &names));
        assert!(!covered("*.shop.example", &names));
    }

    /// Aliases changed over and over cost the network's account one
    /// order per NAME_COOLDOWN at most; a node leaving is not delayed.
    #[test]
    fn new_names_wait_for_the_cooldown_and_a_rekey_does_not() {
        let now = 1_800_000_000;
        let cert = |issued: u64, sealed_to: [u8; 32]| CertRecord {
            format: 1,
            site: Domain::new("shop.test").expect("domain"),
            incarnation: 0,
            origin: Origin::Acme,
            names: vec!["shop.test".into()],
            chain: vec![vec![0]],
            not_after: now + 90 * 86_400,
            sealed: vec![maki_protocol::seal::Sealed {
                to: sealed_to,
                enc: [0; 32],
                ct: vec![],
            }],
            version: issued * 1000,
        };
        let allowed: HashSet<[u8; 32]> = [[1; 32]].into();
        let names = ["shop.test".to_owned(), "new.example".to_owned()];
        let fresh = cert(now - 60, [1; 32]);
        assert_eq!(needs(Some(&fresh), &names, true, &allowed, now), None);
        let old = cert(now - NAME_COOLDOWN, [1; 32]);
        assert_eq!(
            needs(Some(&old), &names, true, &allowed, now),
            Some("it lacks a name of the site")
        );
        let readable_by_one_gone = cert(now - 60, [2; 32]);
        assert_eq!(
            needs(Some(&readable_by_one_gone), &names, true, &allowed, now),
            Some(NEEDS_REKEY)
        );
    }

    #[test]
    fn failures_back_off_to_a_day() {
        assert_eq!(backoff(1), 60);
        assert_eq!(backoff(2), 120);
        assert_eq!(backoff(5), 960);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
