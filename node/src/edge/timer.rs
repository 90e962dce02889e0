//! Each edge worker's coarse clock: deadlines for header timeouts, the
//! `Date` header, and the signal that the worker is draining.
//!
//! hyper arms its header-read timeout for every request (it also ends idle
//! keep-alive connections), and with tokio's timer each one registers in
//! and clears from the timer wheel — ~5% of a 1 KiB request here. The
//! timeout only has to be right to within a fraction of a second, so this
//! timer keeps deadlines in a per-worker table that one ticker scans a few
//! times a second. Registering is a push into a thread-local vector. The
//! same ticker formats the `Date` header once per tick, so no request reads
//! the clock for it.
//!
//! Used only on an edge worker's single-threaded runtime. A sleep polled or
//! dropped on another thread (never expected) falls back to firing on time
//! from that thread's own table, or leaves a stale entry that the ticker
//! discards.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    thread::ThreadId,
    time::{Duration, Instant, SystemTime},
};

use tokio_util::sync::CancellationToken;

/// How often deadlines are checked: the timeout's precision.
pub const TICK: Duration = Duration::from_millis(250);

/// An IMF-fixdate, the only form a `Date` header is sent in.
pub type HttpDate = [u8; 29];

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
    static DATE: Cell<Option<HttpDate>> = const { Cell::new(None) };
    static DRAINING: Cell<bool> = const { Cell::new(false) };
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Now, to within one tick: for bookkeeping done on every write, where
/// reading the clock each time would cost more than the precision is worth.
pub fn now() -> Instant {
    NOW.with(|n| match n.get() {
        Some(now) => now,
        None => Instant::now(),
    })
}

/// Now as a `Date` header value, to within one tick.
pub fn date() -> HttpDate {
    DATE.with(|d| match d.get() {
        Some(date) => date,
        None => {
            let date = format_date(SystemTime::now());
            d.set(Some(date));
            date
        }
    })
}

fn format_date(now: SystemTime) -> HttpDate {
    let mut out = [b' '; 29];
    let text = httpdate::fmt_http_date(now);
    let n = text.len().min(out.len());
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// True once this worker was told to stop: finish what is in flight, take
/// no new requests.
pub fn draining() -> bool {
    DRAINING.with(Cell::get)
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    entry: Option<(Instant, Waker)>,
}

impl Table {
    fn insert(&mut self, deadline: Instant, waker: Waker) -> (usize, u64) {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.generation += 1;
        slot.entry = Some((deadline, waker));
        (index, slot.generation)
    }

    fn get(&mut self, (index, generation): (usize, u64)) -> Option<&mut (Instant, Waker)> {
        self.slots
            .get_mut(index)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.entry.as_mut())
    }

    fn remove(&mut self, (index, generation): (usize, u64)) {
        if let Some(slot) = self.slots.get_mut(index)
            && slot.generation == generation
            && slot.entry.take().is_some()
        {
            self.free.push(index);
        }
    }

    /// Wakes every sleep; those not due register again when polled.
    fn wake_all(&mut self) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some((_, waker)) = slot.entry.take() {
                waker.wake();
                self.free.push(index);
            }
        }
    }

    /// Wakes every sleep whose deadline has passed.
    fn fire(&mut self, now: Instant) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if slot.entry.as_ref().is_some_and(|(d, _)| *d <= now)
                && let Some((_, waker)) = slot.entry.take()
            {
                waker.wake();
                self.free.push(index);
            }
        }
    }
}

/// Runs this worker's clock until `stop`. When `drain` is cancelled, sets
/// [`draining`] and wakes every sleep, so idle connections notice at once.
pub async fn tick(drain: CancellationToken, stop: CancellationToken) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = drain.cancelled(), if !draining() => {
                DRAINING.with(|d| d.set(true));
                TABLE.with(|t| t.borrow_mut().wake_all());
            }
            _ = interval.tick() => {
                let now = Instant::now();
                NOW.with(|n| n.set(Some(now)));
                DATE.with(|d| d.set(Some(format_date(SystemTime::now()))));
                TABLE.with(|t| t.borrow_mut().fire(now));
            }
        }
    }
}

/// A sleep until `deadline` that also ends when the worker starts draining.
pub fn sleep_or_drain(deadline: Instant) -> CoarseSleep {
    CoarseSleep {
        deadline,
        on_drain: true,
        key: None,
    }
}

/// A sleep until `deadline`, draining or not.
pub fn sleep_until(deadline: Instant) -> CoarseSleep {
    CoarseSleep {
        deadline,
        on_drain: false,
        key: None,
    }
}

/// hyper's `Timer`, backed by the worker's table.
#[derive(Debug, Clone, Copy)]
pub struct CoarseTimer;

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(deadline))
    }
}

#[derive(Debug)]
pub struct CoarseSleep {
    deadline: Instant,
    on_drain: bool,
    key: Option<(ThreadId, (usize, u64))>,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if (self.on_drain && draining()) || Instant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let here = std::thread::current().id();
        let deadline = self.deadline;
        let key = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            match self.key {
                Some((thread, key)) if thread == here => match t.get(key) {
                    Some((_, waker)) => {
                        if !waker.will_wake(cx.waker()) {
                            *waker = cx.waker().clone();
                        }
                        key
                    }
                    // Fired early (a tick raced the clock): register again.
                    None => t.insert(deadline, cx.waker().clone()),
                },
                _ => t.insert(deadline, cx.waker().clone()),
            }
        });
        self.key = Some((here, key));
        Poll::Pending
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

impl CoarseSleep {
    fn unregister(&mut self) {
        if let Some((thread, key)) = self.key.take()
            && thread == std::thread::current().id()
        {
            TABLE.with(|t| t.borrow_mut().remove(key));
        }
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn fires_after_the_deadline_and_not_before() {
        let cancel = CancellationToken::new();
        let ticker = tokio::spawn(tick(CancellationToken::new(), cancel.clone()));
        let start = Instant::now();
        let sleep = hyper::rt::Timer::sleep(&CoarseTimer, Duration::from_millis(300));
        sleep.await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_millis(300) + TICK * 4, "{waited:?}");
        cancel.cancel();
        ticker.await.ok();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn draining_ends_lean_sleeps_at_once_and_leaves_hypers() {
        let (drain, stop) = (CancellationToken::new(), CancellationToken::new());
        let ticker = tokio::spawn(tick(drain.clone(), stop.clone()));
        let far = Instant::now() + Duration::from_secs(60);
        let mut lean = std::pin::pin!(sleep_or_drain(far));
        let mut hypers = hyper::rt::Timer::sleep_until(&CoarseTimer, far);
        std::future::poll_fn(|cx| {
            assert!(lean.as_mut().poll(cx).is_pending());
            assert!(hypers.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        drain.cancel();
        tokio::time::timeout(Duration::from_secs(1), lean)
            .await
            .expect("a lean sleep ends when draining starts");
        assert!(draining());
        let still = tokio::time::timeout(TICK * 2, hypers).await;
        assert!(still.is_err(), "hyper's own timeouts keep their deadline");
        stop.cancel();
        ticker.await.ok();
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let d = format_date(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777));
        assert_eq!(&d, b"Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn dropped_sleeps_free_their_slot() {
        let mut t = Table::default();
        let waker = Waker::noop().clone();
        let a = t.insert(Instant::now(), waker.clone());
        t.remove(a);
        let b = t.insert(Instant::now(), waker.clone());
        assert_eq!(a.0, b.0, "slot reused");
        // The stale key of `a` must not remove `b`.
        t.remove(a);
        assert!(t.get(b).is_some());
        t.fire(Instant::now() + Duration::from_secs(1));
        assert!(t.get(b).is_none());
    }
}
