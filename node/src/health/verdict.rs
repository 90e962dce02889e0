//! What this node's probes and the other members' reports say of each
//! member's public services, and the majority verdict on each. No I/O:
//! `members` holds it, gossip feeds it, the probes (`health`) and the
//! nameserver read it.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use maki_protocol::{
    PublicKey, ROLE_DNS, ROLE_HTTP,
    rpc::Check,
    sync::{Health as HealthReport, MAX_HEALTH_DOWN},
};

/// Failed probes in a row before a service counts as down here.
pub const DOWN_AFTER: u32 = 3;
/// Good probes in a row before it counts as up again.
pub const UP_AFTER: u32 = 2;
/// A report older than this no longer votes (its sender may be dead).
const REPORT_FRESH: Duration = Duration::from_secs(15);

/// A public service a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Http,
    Dns,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Http, Service::Dns];

    pub fn role(self) -> &'static str {
        match self {
            Service::Http => ROLE_HTTP,
            Service::Dns => ROLE_DNS,
        }
    }
}

/// One service as this node's probes see it.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    down: bool,
    fails: u32,
    oks: u32,
    probed: bool,
}

impl Streak {
    /// Takes one probe's result; true if the verdict changed.
    fn take(&mut self, ok: bool) -> bool {
        self.probed = true;
        if ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
            if self.down && self.oks >= UP_AFTER {
                self.down = false;
                return true;
            }
        } else {
            self.oks = 0;
            self.fails = self.fails.saturating_add(1);
            if !self.down && self.fails >= DOWN_AFTER {
                self.down = true;
                return true;
            }
        }
        false
    }
}

/// Another member's report, as received.
#[derive(Debug)]
struct Report {
    http_down: HashSet<PublicKey>,
    dns_down: HashSet<PublicKey>,
    at: u64,
    received: Instant,
}

/// What this node's probes and the others' reports say.
#[derive(Debug)]
pub struct Health {
    me: PublicKey,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    probes: HashMap<(PublicKey, Service), Streak>,
    reports: HashMap<PublicKey, Report>,
}

impl Health {
    pub fn new(me: PublicKey) -> Self {
        Self {
            me,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a probe's result; true if this node's verdict changed.
    pub fn probed(&self, node: PublicKey, service: Service, ok: bool) -> bool {
        self.inner()
            .probes
            .entry((node, service))
            .or_default()
            .take(ok)
    }

    /// This node's report: the members it sees down.
    pub fn report(&self) -> Seen {
        let inner = self.inner();
        let down = |s: Service| -> Vec<PublicKey> {
            let mut v: Vec<PublicKey> = inner
                .probes
                .iter()
                .filter(|((_, svc), st)| *svc == s && st.down)
                .map(|((k, _), _)| *k)
                .collect();
            v.sort();
            v.truncate(MAX_HEALTH_DOWN);
            v
        };
        Seen {
            http_down: down(Service::Http),
            dns_down: down(Service::Dns),
        }
    }

    /// Takes another member's report (checked by the caller).
    pub fn received(&self, h: HealthReport) {
        if h.node == self.me {
            return;
        }
        let mut inner = self.inner();
        if inner.reports.get(&h.node).is_some_and(|r| r.at >= h.at) {
            return;
        }
        inner.reports.insert(
            h.node,
            Report {
                http_down: h.http_down.into_iter().collect(),
                dns_down: h.dns_down.into_iter().collect(),
                at: h.at,
                received: Instant::now(),
            },
        );
    }

    /// Forgets what is about nodes no longer members.
    pub fn retain(&self, members: &HashSet<PublicKey>) {
        let mut inner = self.inner();
        inner.probes.retain(|(k, _), _| members.contains(k));
        inner.reports.retain(|k, _| members.contains(k));
    }

    /// The verdict on `node`'s `service` among `members` (this node
    /// included): down when more than half of the members other than
    /// `node` see it down. Each member votes by its fresh report (this
    /// node by its own probes); a member without one votes "up".
    pub fn verdict(&self, node: &PublicKey, service: Service, members: &[PublicKey]) -> Check {
        let inner = self.inner();
        let voters = members.iter().filter(|m| *m != node).count() as u32;
        let mut down_votes = 0;
        for m in members.iter().filter(|m| *m != node) {
            let says_down = if *m == self.me {
                inner.probes.get(&(*node, service)).is_some_and(|s| s.down)
            } else {
                inner.reports.get(m).is_some_and(|r| {
                    r.received.elapsed() < REPORT_FRESH
                        && match service {
                            Service::Http => r.http_down.contains(node),
                            Service::Dns => r.dns_down.contains(node),
                        }
                })
            };
            down_votes += u32::from(says_down);
        }
        Check {
            role: service.role().to_owned(),
            down: down_votes * 2 > voters,
            down_votes,
            voters,
            here: inner
                .probes
                .get(&(*node, service))
                .filter(|s| s.probed)
                .map(|s| !s.down),
        }
    }

    /// The members whose `service` is down by the members' majority.
    ///
    /// A node whose own probes find more than half of the others down is
    /// most likely the one cut off: it drops nobody, whatever reports it
    /// still holds from before (they may be up to [`REPORT_FRESH`] old).
    pub fn down(&self, service: Service, members: &[PublicKey]) -> HashSet<PublicKey> {
        if self.cut_off(service, members) {
            return HashSet::new();
        }
        members
            .iter()
            .filter(|n| self.verdict(n, service, members).down)
            .copied()
            .collect()
    }

    /// Whether this node's own probes see more than half of the other
    /// members' `service` down.
    fn cut_off(&self, service: Service, members: &[PublicKey]) -> bool {
        let inner = self.inner();
        let probed: Vec<&Streak> = members
            .iter()
            .filter(|m| **m != self.me)
            .filter_map(|m| inner.probes.get(&(*m, service)))
            .filter(|s| s.probed)
            .collect();
        let down = probed.iter().filter(|s| s.down).count();
        probed.len() >= 2 && down * 2 > probed.len()
    }
}

/// The body of this node's report, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub http_down: Vec<PublicKey>,
    pub dns_down: Vec<PublicKey>,
}

#[cfg(test)]
mod tests {
    use maki_protocol::SecretKey;

    use super::*;

    fn key(n: u8) -> PublicKey {
        SecretKey::from_bytes(&[n; 32]).public()
    }

    fn report(from: u8, http_down: &[u8], at: u64) -> HealthReport {
        HealthReport {
            format: 1,
            node: key(from),
            http_down: http_down.iter().map(|n| key(*n)).collect(),
            dns_down: vec![],
            at,
        }
    }

    #[test]
    fn down_after_three_failures_up_after_two_successes() {
        let h = Health::new(key(0));
        let members = [key(0), key(1)];
        assert!(!h.probed(key(1), Service::Http, false));
        assert!(!h.probed(key(1), Service::Http, false));
        assert!(!h.verdict(&key(1), Service::Http, &members).down);
        assert!(h.probed(key(1), Service::Http, false));
        // One other member: this node's vote decides.
        assert!(h.verdict(&key(1), Service::Http, &members).down);
        assert!(!h.probed(key(1), Service::Http, true));
        assert!(h.probed(key(1), Service::Http, true));
        assert!(!h.verdict(&key(1), Service::Http, &members).down);
    }

    #[test]
    fn a_cut_off_observer_drops_nobody() {
        // Node 0 is cut off: its probes fail everyone, and the others'
        // reports (that all is well) reach it no longer.
        let h = Health::new(key(0));
        let members = [key(0), key(1), key(2)];
        for n in [1, 2] {
            for _ in 0..DOWN_AFTER {
                h.probed(key(n), Service::Http, false);
            }
        }
        for n in [1, 2] {
            let v = h.verdict(&key(n), Service::Http, &members);
            assert_eq!(
                (v.down, v.down_votes, v.voters, v.here),
                (false, 1, 2, Some(false))
            );
        }
        // Even with a report from before the cut that says node 2 is down,
        // node 0 drops nobody: it sees most of the others down itself.
        h.received(report(2, &[1], 10));
        assert!(h.down(Service::Http, &members).is_empty());
        // The others agree that node 0 is the one down.
        let h1 = Health::new(key(1));
        for _ in 0..DOWN_AFTER {
            h1.probed(key(0), Service::Http, false);
        }
        h1.received(report(2, &[0], 10));
        assert!(h1.verdict(&key(0), Service::Http, &members).down);
        assert!(!h1.verdict(&key(2), Service::Http, &members).down);
    }

    #[test]
    fn reports_vote_until_replaced_by_newer_ones() {
        let h = Health::new(key(0));
        let members = [key(0), key(1), key(2), key(3)];
        h.received(report(1, &[3], 10));
        h.received(report(2, &[3], 10));
        // Two of the three others: a majority.
        assert!(h.verdict(&key(3), Service::Http, &members).down);
        // An older report arriving late changes nothing; a newer one does.
        h.received(report(2, &[], 5));
        assert!(h.verdict(&key(3), Service::Http, &members).down);
        h.received(report(2, &[], 11));
        let v = h.verdict(&key(3), Service::Http, &members);
        assert_eq!((v.down, v.down_votes, v.voters), (false, 1, 3));
        // A node's report about itself, or this node's own, never counts.
        h.received(report(3, &[3], 12));
        h.received(report(0, &[1], 12));
        assert!(!h.verdict(&key(1), Service::Http, &members).down);
        // A member that left takes its votes along.
        h.retain(&[key(0), key(2), key(3)].into_iter().collect());
        assert_eq!(h.verdict(&key(3), Service::Http, &members).down_votes, 0);
    }
}
