//! The wait every background thread here does: until its next tick on a
//! fixed grid, a stop message, or a manual clock moving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::clock::SharedClock;

/// Where the next tick goes when `interval` is too large to add to an
/// `Instant`: far enough to mean never.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A fixed grid of ticks `interval` apart on an injected clock.
pub(crate) struct Ticker {
    clock: SharedClock,
    changes: Receiver<()>,
    interval: Duration,
    next: Instant,
}

impl Ticker {
    /// A grid whose first tick is `first_after` from now (zero: at once).
    pub(crate) fn new(clock: SharedClock, interval: Duration, first_after: Duration) -> Self {
        let now = clock.now();
        let next = now.checked_add(first_after).unwrap_or_else(|| now + FAR_FUTURE);
        Ticker { changes: clock.changes(), clock, interval, next }
    }

    /// Whether a tick is due; if so the grid moves on. After a stall longer
    /// than an interval (suspend, SIGSTOP) the grid restarts from now rather
    /// than bursting through the ticks it missed.
    pub(crate) fn due(&mut self) -> bool {
        let now = self.clock.now();
        if now < self.next {
            return false;
        }
        self.next = match self.next.checked_add(self.interval) {
            Some(next) if next > now => next,
            _ => now.checked_add(self.interval).unwrap_or_else(|| now + FAR_FUTURE),
        };
        true
    }

    /// Waits for the next tick, a move of a manual clock, or `stop`.
    /// Returns `false` when `stop` received a message or was disconnected.
    pub(crate) fn wait(&mut self, stop: &Receiver<()>) -> bool {
        let wait = self.next.saturating_duration_since(self.clock.now());
        select! {
            recv(stop) -> _ => false,
            recv(self.changes) -> msg => {
                if msg.is_err() {
                    // The clock is gone (it cannot be while we hold it), never spin on it.
                    self.changes = crossbeam_channel::never();
                }
                true
            }
            default(wait) => true,
        }
    }
}

/// Runs a user callback, containing and logging a panic.
pub(crate) fn contained<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(panic) => {
            log::error!("heartbeat {what} callback panicked: {}", panic_message(&*panic));
            None
        }
    }
}

/// The message a panic was raised with (`panic!("...")` payloads are a
/// `&str` or a `String`), or a placeholder for any other payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn ticks_follow_a_fixed_grid_and_skip_after_a_stall() {
        let clock = ManualClock::new();
        let mut t = Ticker::new(clock.clone(), Duration::from_secs(10), Duration::ZERO);
        assert!(t.due());
        assert!(!t.due());
        clock.advance(Duration::from_secs(9));
        assert!(!t.due());
        clock.advance(Duration::from_secs(1));
        assert!(t.due());
        clock.advance(Duration::from_secs(45)); // a stall: one tick, not four
        assert!(t.due());
        assert!(!t.due());
        clock.advance(Duration::from_secs(10));
        assert!(t.due());
    }

    #[test]
    fn wait_returns_on_stop_and_on_clock_moves() {
        let clock = ManualClock::new();
        let mut t = Ticker::new(clock.clone(), Duration::from_secs(300), Duration::from_secs(300));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        clock.advance(Duration::from_secs(1));
        assert!(t.wait(&stop_rx), "a clock move wakes the wait");
        stop_tx.send(()).unwrap();
        assert!(!t.wait(&stop_rx));
        drop(stop_tx);
        assert!(!t.wait(&stop_rx), "a disconnected stop channel means stop");
    }

    #[test]
    fn an_interval_too_large_for_an_instant_never_ticks_again_and_never_panics() {
        let clock = ManualClock::new();
        let huge = Duration::from_secs(u64::MAX / 2);
        let mut t = Ticker::new(clock.clone(), huge, Duration::ZERO);
        assert!(t.due());
        clock.advance(Duration::from_secs(3600));
        assert!(!t.due());
        let (_stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        clock.advance(Duration::from_secs(1));
        assert!(t.wait(&stop_rx), "woken by the clock, not stuck computing a deadline");
        let mut late = Ticker::new(clock.clone(), Duration::from_secs(1), huge);
        assert!(!late.due());
    }

    #[test]
    fn contained_returns_none_on_panic() {
        assert_eq!(contained("t", || 5), Some(5));
        assert_eq!(contained("t", || -> i32 { panic!("boom") }), None);
    }
}
