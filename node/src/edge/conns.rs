//! Each edge worker's open connections: how many, what each is doing, and
//! how to shed one. Past the worker's bound a connection is closed to make
//! room for each new one, so a flood of connections that say nothing (a
//! slowloris, h2c prefaces left hanging) or that take nothing (a reader of
//! a byte a second, an HTTP/2 client that never opens its flow-control
//! window) can never keep new clients out.
//!
//! The bound comes from the process's file-descriptor limit (see
//! [`bound`]), not a fixed number: a node that runs out of descriptors
//! cannot accept at all, which is worse than closing a connection.
//!
//! "Idle" means waiting for the client: between requests, or in the middle
//! of a request head that has not arrived yet (a slowloris is idle). A
//! connection is busy while a response is being produced or sent. The
//! registry also counts what each connection sends and when its response
//! last made progress: one that makes none for `http_send_timeout` is cut
//! (its watchdog in `edge.rs`, or the lean path's write deadline), and at
//! the bound, when nothing is idle, the slowest busy connection under
//! [`MIN_RATE`] is shed.
//!
//! Lives in a thread local of the worker's single-threaded runtime, like
//! the timer table.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use super::timer;

thread_local! {
    static CONNS: RefCell<Registry> = RefCell::new(Registry::default());
}

/// Descriptors kept back from the edge for the store, the p2p endpoint,
/// the state database, logs and the listeners themselves.
const RESERVE_MIN: u64 = 64;
const RESERVE_MAX: u64 = 1024;

/// Under pressure (at the bound, nothing idle), a connection busy for at
/// least [`MIN_BUSY`] that has sent fewer bytes per second than this since
/// is shed, slowest first.
pub const MIN_RATE: u64 = 8 * 1024;
const MIN_BUSY: Duration = Duration::from_secs(2);
/// What a busy connection writes in its first second does not count
/// toward its rate: a response's first writes fill the kernel's socket
/// buffers (hundreds of KiB for one large write) however slowly the
/// client reads, which made a trickling reader look fast for many seconds.
const SETTLE: Duration = Duration::from_secs(1);
/// The rate is judged over the last one to two of these, not since the
/// start: a reader that took megabytes fast and then trickles would
/// otherwise count as fast until its send timeout (banked rate).
const WINDOW: Duration = Duration::from_secs(2);

/// Raises the soft file-descriptor limit to the hard one (allowed without
/// privileges) and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

/// Connections one of `workers` may hold when the process may open
/// `fd_limit` descriptors: what is left after a reserve, shared equally.
/// The reserve includes the descriptors blob reads open for a moment
/// (one each), so a download costs its connection's descriptor only.
pub fn bound(fd_limit: u64, workers: usize) -> usize {
    let reserve =
        (fd_limit / 8).clamp(RESERVE_MIN, RESERVE_MAX) + crate::content::FILE_READS as u64;
    let usable = fd_limit.saturating_sub(reserve).max(workers as u64);
    let each = usable / workers.max(1) as u64;
    usize::try_from(each)
        .unwrap_or(usize::MAX)
        .clamp(1, 1 << 20)
}

#[derive(Debug, Default)]
struct Registry {
    slots: Vec<Slot>,
    free: Vec<usize>,
    open: usize,
    /// Accept order: the smallest among idle slots is shed first.
    next_seq: u64,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u64,
    live: bool,
    seq: u64,
    /// Requests in progress (HTTP/2 has several; the body counts until sent).
    active: u32,
    /// When the last request ended (or the connection opened).
    idle_since: Option<Instant>,
    /// Bytes written to the client.
    sent: u64,
    /// While busy: since when, and `sent` once it had settled.
    busy: Option<Busy>,
    /// When a response last made progress (a body chunk taken by hyper, a
    /// write done on the lean path).
    progress: Option<Instant>,
    shed: bool,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Busy {
    since: Instant,
    /// When the window being filled began and `sent` then: the first
    /// begins [`SETTLE`] after `since` (marked at the first write after
    /// that: nothing was written in between), each next one at the first
    /// write a [`WINDOW`] or more later.
    current: Option<(Instant, u64)>,
    /// The window before it.
    previous: Option<(Instant, u64)>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.active == 0
    }

    fn start_busy(&mut self, now: Instant) {
        if self.busy.is_none() {
            self.busy = Some(Busy {
                since: now,
                current: None,
                previous: None,
            });
        }
        self.progress = Some(now);
    }

    fn stop_busy(&mut self, now: Instant) {
        self.active = 0;
        self.busy = None;
        self.idle_since = Some(now);
    }

    /// Bytes per second sent over the last one to two windows (after it
    /// settled), once busy long enough to tell.
    fn rate(&self, now: Instant) -> Option<u64> {
        let busy = self.busy.as_ref()?;
        let busy_for = now.checked_duration_since(busy.since)?;
        if busy_for < MIN_BUSY {
            return None;
        }
        // No mark: nothing written since it settled.
        let (from, at) = busy
            .previous
            .or(busy.current)
            .unwrap_or((busy.since + SETTLE, self.sent));
        let ms = u64::try_from(now.saturating_duration_since(from).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Some(self.sent.saturating_sub(at).saturating_mul(1000) / ms)
    }

    fn shed(&mut self) {
        self.shed = true;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn register(&mut self, cx: &Context<'_>) {
        match &mut self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
    }
}

/// What a connection is doing, for its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// No request in progress since then.
    Idle(Instant),
    /// A response in progress; it last made progress then.
    Busy(Instant),
}

/// One open connection's place in the registry; removed when dropped.
#[derive(Debug)]
pub struct Registration {
    id: ConnId,
}

/// A connection's handle into the registry: cheap to copy into the tasks
/// hyper spawns for it (they run on the same worker thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    index: usize,
    generation: u64,
}

/// Runs `f` on this worker's registry; `None` only while the thread exits
/// (a connection dropped after its thread-locals): nothing to record then.
fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> Option<R> {
    CONNS.try_with(|c| f(&mut c.borrow_mut())).ok()
}

impl Registry {
    fn slot(&mut self, id: ConnId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index)
            .filter(|s| s.live && s.generation == id.generation)
    }
}

/// Registers a new connection.
pub fn open() -> Registration {
    // Off a worker thread (never expected) the registration is inert.
    let inert = ConnId {
        index: usize::MAX,
        generation: 0,
    };
    let id = with(|r| {
        let index = r.free.pop().unwrap_or_else(|| {
            r.slots.push(Slot::default());
            r.slots.len() - 1
        });
        r.next_seq += 1;
        r.open += 1;
        let seq = r.next_seq;
        let slot = &mut r.slots[index];
        *slot = Slot {
            generation: slot.generation + 1,
            live: true,
            seq,
            idle_since: Some(Instant::now()),
            ..Slot::default()
        };
        ConnId {
            index,
            generation: slot.generation,
        }
    });
    Registration {
        id: id.unwrap_or(inert),
    }
}

/// Connections open on this worker.
pub fn count() -> usize {
    with(|r| r.open).unwrap_or(0)
}

/// Makes room for one connection: asks the longest-open idle connection
/// to close or, when none is idle, the slowest busy one under
/// [`MIN_RATE`]. False when every connection is busy and fast enough.
pub fn shed_one() -> bool {
    let now = timer::now();
    with(|r| {
        let mut oldest_idle: Option<&mut Slot> = None;
        let mut slowest: Option<(u64, &mut Slot)> = None;
        for slot in r.slots.iter_mut().filter(|s| s.live && !s.shed) {
            if slot.idle() {
                if oldest_idle.as_ref().is_none_or(|o| slot.seq < o.seq) {
                    oldest_idle = Some(slot);
                }
            } else if let Some(rate) = slot.rate(now).filter(|r| *r < MIN_RATE)
                && slowest.as_ref().is_none_or(|(s, _)| rate < *s)
            {
                slowest = Some((rate, slot));
            }
        }
        match oldest_idle.or(slowest.map(|(_, s)| s)) {
            Some(slot) => {
                slot.shed();
                true
            }
            None => false,
        }
    })
    .unwrap_or(false)
}

impl Registration {
    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.id;
        with(|r| {
            if let Some(slot) = r.slot(id) {
                slot.live = false;
                slot.waker = None;
                r.free.push(id.index);
                r.open -= 1;
            }
        });
    }
}

impl ConnId {
    fn update(self, f: impl FnOnce(&mut Slot)) {
        with(|r| r.slot(self).map(f));
    }

    /// The lean path's marks: busy from the first byte of a request until
    /// its response is written, idle while it waits for the client. Only
    /// the coarse clock is read: the lean path keeps its own deadlines.
    pub fn busy(self, busy: bool) {
        self.update(|s| {
            if busy {
                s.active = 1;
                s.start_busy(timer::now());
            } else {
                s.active = 0;
                s.busy = None;
            }
        });
    }

    /// Idle from now: the lean path handed the connection to hyper, whose
    /// requests count themselves (see [`Active`]).
    pub fn rest(self) {
        self.update(|s| s.stop_busy(Instant::now()));
    }

    /// A request started: the connection is busy until [`ConnId::end`].
    pub fn begin(self) {
        self.update(|s| {
            s.active += 1;
            s.idle_since = None;
            s.start_busy(timer::now());
        });
    }

    /// A request (its response sent, or dropped) ended.
    pub fn end(self) {
        self.update(|s| {
            s.active = s.active.saturating_sub(1);
            if s.active == 0 {
                s.stop_busy(Instant::now());
            }
        });
    }

    /// `n` bytes went to the client; `progress` when they are response
    /// bytes (see [`h1::Conn`](super::h1::Conn)). Hyper takes a body from
    /// its response long before the client has it (h2 holds up to the
    /// whole of a cached file): bytes still going out after the last
    /// response ended are not idleness, so they restart the idle clock.
    pub fn wrote(self, n: usize, progress: bool) {
        self.update(|s| {
            let now = timer::now();
            if let Some(busy) = &mut s.busy {
                match busy.current {
                    // Nothing was written since it settled: the window
                    // begins then, not now.
                    None if now.saturating_duration_since(busy.since) >= SETTLE => {
                        busy.current = Some((busy.since + SETTLE, s.sent));
                    }
                    Some((from, _)) if now.saturating_duration_since(from) >= WINDOW => {
                        busy.previous = busy.current;
                        busy.current = Some((now, s.sent));
                    }
                    _ => {}
                }
            }
            s.sent += n as u64;
            if progress {
                s.progress = Some(now);
                if s.active == 0 && s.idle_since.is_some() {
                    s.idle_since = Some(now);
                }
            }
        });
    }

    /// A response handed hyper another chunk of its body.
    pub fn progressed(self) {
        self.update(|s| s.progress = Some(timer::now()));
    }

    /// True once the worker asked this connection to close; until then
    /// `cx`'s task is woken when it does (so a write stuck on a slow client
    /// notices at once).
    /// Whether the worker asked this connection to close, without waiting.
    pub fn is_shed(self) -> bool {
        with(|r| r.slot(self).is_some_and(|s| s.shed)).unwrap_or(false)
    }

    pub fn shed_requested(self, cx: &Context<'_>) -> bool {
        with(|r| match r.slot(self) {
            Some(s) if s.shed => true,
            Some(s) => {
                s.register(cx);
                false
            }
            None => false,
        })
        .unwrap_or(false)
    }

    /// What the connection is doing, for its watchdog.
    pub fn activity(self) -> Activity {
        let now = Instant::now();
        with(|r| match r.slot(self) {
            Some(s) if s.active > 0 => Activity::Busy(s.progress.unwrap_or(now)),
            Some(s) => Activity::Idle(s.idle_since.unwrap_or(now)),
            None => Activity::Idle(now),
        })
        .unwrap_or(Activity::Idle(now))
    }

    /// Resolves once the worker wants this connection closed to make room.
    pub fn shed(self) -> Shed {
        Shed { id: self }
    }
}

/// See [`ConnId::shed`].
#[derive(Debug)]
pub struct Shed {
    id: ConnId,
}

impl Future for Shed {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.id.shed_requested(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Counts one request as in progress until dropped (HTTP/2 and hyper's
/// HTTP/1.1: the response body carries it until it is sent).
#[derive(Debug)]
pub struct Active {
    id: ConnId,
}

impl Active {
    pub fn new(id: ConnId) -> Self {
        id.begin();
        Self { id }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.id.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_descriptor_limit() {
        assert_eq!(bound(1024, 2), 440);
        assert_eq!(bound(256, 2), 88);
        assert_eq!(bound(1 << 20, 2), ((1 << 20) - 1024 - 16) / 2);
        assert!(bound(8, 4) >= 1);
    }

    fn poll(shed: Pin<&mut Shed>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        shed.poll(&mut cx).is_ready()
    }

    #[test]
    fn the_oldest_idle_connection_is_shed_first() {
        let a = open();
        let b = open();
        let c = open();
        assert_eq!(count(), 3);
        // a is busy; b and c wait for their clients.
        a.id().begin();
        b.id().busy(false);
        c.id().busy(true);
        c.id().busy(false);
        let mut shed_b = std::pin::pin!(b.id().shed());
        let mut shed_c = std::pin::pin!(c.id().shed());
        assert!(!poll(shed_b.as_mut()));
        assert!(shed_one());
        assert!(poll(shed_b.as_mut()));
        assert!(!poll(shed_c.as_mut()));
        drop(b);
        assert!(shed_one());
        assert!(poll(shed_c.as_mut()));
        drop(c);
        // Only the busy one is left, too new to judge: nothing to shed.
        assert!(!shed_one());
        a.id().end();
        assert!(matches!(a.id().activity(), Activity::Idle(_)));
        drop(a);
        assert_eq!(count(), 0);
    }

    /// Puts a connection in the middle of a response: busy `since`, with
    /// its rate windows and `sent` bytes in all.
    fn set_busy(
        id: ConnId,
        since: Instant,
        previous: Option<(Instant, u64)>,
        current: Option<(Instant, u64)>,
        sent: u64,
    ) {
        with(|r| {
            let s = r.slot(id).expect("slot");
            s.active = 1;
            s.busy = Some(Busy {
                since,
                current,
                previous,
            });
            s.sent = sent;
        });
    }

    #[test]
    fn under_pressure_the_slowest_busy_connection_goes() {
        let fast = open();
        let slow = open();
        let t0 = Instant::now();
        for (id, sent) in [(fast.id(), 10 << 20), (slow.id(), 100)] {
            set_busy(id, t0 - MIN_BUSY * 2, None, Some((t0 - MIN_BUSY, 0)), sent);
        }
        let mut shed_slow = std::pin::pin!(slow.id().shed());
        let mut shed_fast = std::pin::pin!(fast.id().shed());
        assert!(shed_one());
        assert!(poll(shed_slow.as_mut()));
        assert!(!poll(shed_fast.as_mut()));
        // The fast one is above MIN_RATE: never shed.
        assert!(!shed_one());
        assert!(!poll(shed_fast.as_mut()));
    }

    /// A response's first write fills the socket's buffers at once; a
    /// reader that then trickles is still slow, and goes under pressure.
    #[test]
    fn a_burst_into_socket_buffers_does_not_make_a_slow_reader_fast() {
        let slow = open();
        let t0 = Instant::now();
        set_busy(slow.id(), t0 - MIN_BUSY * 2, None, None, 4 << 20);
        slow.id().wrote(256, true);
        let mut shed = std::pin::pin!(slow.id().shed());
        assert!(shed_one());
        assert!(poll(shed.as_mut()));
    }

    /// The red team's banked rate: 8 MB taken fast, then a trickle. It is
    /// judged by its last windows, not its average since the start.
    #[test]
    fn a_reader_cannot_bank_rate_and_then_trickle() {
        let banker = open();
        let t0 = Instant::now();
        set_busy(
            banker.id(),
            t0 - Duration::from_secs(30),
            Some((t0 - WINDOW * 2, 8 << 20)),
            Some((t0 - WINDOW, (8 << 20) + 300)),
            (8 << 20) + 600,
        );
        let mut shed = std::pin::pin!(banker.id().shed());
        assert!(shed_one());
        assert!(poll(shed.as_mut()));
    }
}
