//! Time, injected: the real clock and a manual clock for tests.
//!
//! Everything in this crate that reads the time does so through a [`Clock`]:
//! the monotonic [`Instant`] for intervals, timeouts and deadlines, and the
//! wall-clock [`SystemTime`] only for what other processes read (the
//! timestamps inside heartbeat files).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

/// A source of monotonic and wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time, for measuring intervals. Never goes backwards.
    fn now(&self) -> Instant;

    /// Wall-clock time, for timestamps other processes read. May jump.
    fn wall(&self) -> SystemTime;

    /// A channel that receives a message each time this clock moves by other
    /// means than the passing of real time (a [`ManualClock`] being advanced).
    ///
    /// Background threads wait on it next to their own deadline so that a test
    /// that advances a manual clock wakes them at once. The real clock never
    /// sends anything.
    fn changes(&self) -> Receiver<()> {
        crossbeam_channel::never()
    }
}

/// A shared, dynamically typed clock, as the builders take it.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to, for deterministic tests.
///
/// [`advance`](ManualClock::advance) moves both clocks together, as real time
/// does; [`step_wall`](ManualClock::step_wall) moves only the wall clock, as an
/// administrator or NTP stepping the clock does.
///
/// ```
/// use std::time::Duration;
/// use heartbeat::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - t0, Duration::from_secs(5));
/// ```
pub struct ManualClock {
    inner: Mutex<ManualInner>,
}

struct ManualInner {
    now: Instant,
    wall: SystemTime,
    subscribers: Vec<Sender<()>>,
}

impl ManualClock {
    /// A manual clock starting at the current real instant and wall time.
    pub fn new() -> Arc<Self> {
        Self::starting_at(SystemTime::now())
    }

    /// A manual clock whose wall clock starts at `wall`.
    pub fn starting_at(wall: SystemTime) -> Arc<Self> {
        Arc::new(ManualClock {
            inner: Mutex::new(ManualInner { now: Instant::now(), wall, subscribers: Vec::new() }),
        })
    }

    /// Moves both the monotonic and the wall clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut inner = self.inner.lock();
        inner.now += by;
        inner.wall += by;
        inner.notify();
    }

    /// Moves only the wall clock, forwards (`forward = true`) or backwards.
    pub fn step_wall(&self, by: Duration, forward: bool) {
        let mut inner = self.inner.lock();
        if forward {
            inner.wall += by;
        } else {
            inner.wall -= by;
        }
        inner.notify();
    }

    /// Sets the wall clock to `wall`, leaving the monotonic clock alone.
    pub fn set_wall(&self, wall: SystemTime) {
        let mut inner = self.inner.lock();
        inner.wall = wall;
        inner.notify();
    }
}

impl ManualInner {
    fn notify(&mut self) {
        // A full channel already holds a wake-up; a disconnected one has no reader left.
        self.subscribers
            .retain(|tx| !matches!(tx.try_send(()), Err(crossbeam_channel::TrySendError::Disconnected(_))));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.inner.lock().now
    }

    fn wall(&self) -> SystemTime {
        self.inner.lock().wall
    }

    fn changes(&self) -> Receiver<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.lock().subscribers.push(tx);
        rx
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("ManualClock").field("now", &inner.now).field("wall", &inner.wall).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_both_clocks_and_wakes_subscribers() {
        let clock = ManualClock::new();
        let changes = clock.changes();
        let (t0, w0) = (clock.now(), clock.wall());
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now() - t0, Duration::from_millis(1500));
        assert_eq!(clock.wall().duration_since(w0).unwrap(), Duration::from_millis(1500));
        assert!(changes.try_recv().is_ok());
        // Wake-ups coalesce: many advances leave one pending message, never block.
        clock.advance(Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert!(changes.try_recv().is_ok());
        assert!(changes.try_recv().is_err());
    }

    #[test]
    fn wall_steps_leave_monotonic_time_alone() {
        let clock = ManualClock::new();
        let (t0, w0) = (clock.now(), clock.wall());
        clock.step_wall(Duration::from_secs(3600), false);
        assert_eq!(clock.now(), t0);
        assert_eq!(w0.duration_since(clock.wall()).unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn dropped_subscribers_are_forgotten() {
        let clock = ManualClock::new();
        drop(clock.changes());
        clock.advance(Duration::from_secs(1));
        assert!(clock.inner.lock().subscribers.is_empty());
    }
}
