//! Each edge worker's open connections: how many, which are idle, and how
//! to shed one. Past the worker's bound the oldest idle connection is
//! closed to make room, so a flood of connections that say nothing (a
//! slowloris, h2c prefaces left hanging) can never keep new clients out.
//!
//! The bound comes from the process's file-descriptor limit (see
//! [`bound`]), not a fixed number: a node that runs out of descriptors
//! cannot accept at all, which is worse than closing an idle connection.
//!
//! "Idle" means waiting for the client: between requests, or in the middle
//! of a request head that has not arrived yet (a slowloris is idle). A
//! connection is busy while a response is being produced or sent. Lives in a thread local of the
//! worker's single-threaded runtime, like the timer table.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

thread_local! {
    static CONNS: RefCell<Registry> = RefCell::new(Registry::default());
}

/// Descriptors kept back from the edge for the store, the p2p endpoint,
/// the state database, logs and the listeners themselves.
const RESERVE_MIN: u64 = 64;
const RESERVE_MAX: u64 = 1024;

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
pub fn bound(fd_limit: u64, workers: usize) -> usize {
    let reserve = (fd_limit / 8).clamp(RESERVE_MIN, RESERVE_MAX);
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
    shed: bool,
    waker: Option<Waker>,
}

impl Slot {
    fn idle(&self) -> bool {
        self.active == 0
    }
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

/// Asks the longest-open idle connection to close; false when none is idle.
pub fn shed_oldest_idle() -> bool {
    with(|r| {
        let oldest = r
            .slots
            .iter_mut()
            .filter(|s| s.live && !s.shed && s.idle())
            .min_by_key(|s| s.seq);
        match oldest {
            Some(slot) => {
                slot.shed = true;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
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
    /// The lean path's marks: busy from the first byte of a request until
    /// its response is written, idle while it waits for the client. No
    /// clock is read: the lean path keeps its own deadlines.
    pub fn busy(self, busy: bool) {
        with(|r| {
            if let Some(s) = r.slot(self) {
                s.active = u32::from(busy);
            }
        });
    }

    /// Idle from now: the lean path handed the connection to hyper, whose
    /// requests count themselves (see [`Active`]).
    pub fn rest(self) {
        with(|r| {
            if let Some(s) = r.slot(self) {
                s.active = 0;
                s.idle_since = Some(Instant::now());
            }
        });
    }

    /// A request started: the connection is busy until [`ConnId::end`].
    pub fn begin(self) {
        with(|r| {
            if let Some(s) = r.slot(self) {
                s.active += 1;
                s.idle_since = None;
            }
        });
    }

    /// A request (its response sent, or dropped) ended.
    pub fn end(self) {
        with(|r| {
            if let Some(s) = r.slot(self) {
                s.active = s.active.saturating_sub(1);
                if s.active == 0 {
                    s.idle_since = Some(Instant::now());
                }
            }
        });
    }

    /// Since when no request has been in progress; `None` while one is.
    pub fn idle_since(self) -> Option<Instant> {
        with(|r| r.slot(self).and_then(|s| s.idle_since)).flatten()
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
        let id = self.id;
        // Not registered on this thread (never expected): never shed.
        with(|r| match r.slot(id) {
            Some(s) if s.shed => Poll::Ready(()),
            Some(s) => {
                match &mut s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            None => Poll::Pending,
        })
        .unwrap_or(Poll::Pending)
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
        assert_eq!(bound(1024, 2), 448);
        assert_eq!(bound(256, 2), 96);
        assert_eq!(bound(1 << 20, 2), ((1 << 20) - 1024) / 2);
        assert!(bound(8, 4) >= 1);
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
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(shed_b.as_mut().poll(&mut cx).is_pending());
        assert!(shed_oldest_idle());
        assert!(shed_b.as_mut().poll(&mut cx).is_ready());
        assert!(shed_c.as_mut().poll(&mut cx).is_pending());
        drop(b);
        assert!(shed_oldest_idle());
        assert!(shed_c.as_mut().poll(&mut cx).is_ready());
        drop(c);
        // Only the busy one is left: nothing to shed.
        assert!(!shed_oldest_idle());
        a.id().end();
        assert!(a.id().idle_since().is_some());
        drop(a);
        assert_eq!(count(), 0);
    }
}
