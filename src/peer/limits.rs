//! Per-peer message limits: rolling-window budgets for PUBMSG, `!orderbook`,
//! PING answers and GETPEERLIST, with a disconnect for a peer that keeps
//! trying past its budget.

use std::time::{Duration, Instant};

/// How many messages of each kind one peer may have handled per rolling
/// window. Over a budget the message is not relayed (or answered) and is
/// counted; a peer whose attempts reach `disconnect_after` times a budget
/// within one window is disconnected ([`EvictReason::RateLimited`]). A
/// budget of 0 turns that kind off: every such message is dropped, and
/// nobody is disconnected for it. The window is an estimate in constant
/// memory: exact in a peer's first window, at most twice a budget later.
///
/// The defaults are joinmarket-rs's: PUBMSG 30 per 60 s of which
/// `!orderbook` 3, PING 6 per 60 s, GETPEERLIST 3 per 60 s.
///
/// [`EvictReason::RateLimited`]: super::EvictReason::RateLimited
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The rolling window every budget is counted over. Default 60 s.
    pub window: Duration,
    /// PUBMSGs relayed per window, whatever their command. Default 30.
    pub pubmsg: u32,
    /// Of those, `!orderbook` requests. Default 3.
    pub orderbook: u32,
    /// The peer's own PINGs answered per window. Default 6.
    pub pings: u32,
    /// GETPEERLIST requests answered per window. Default 3. Never answered
    /// either while an earlier answer to the same peer is still queued.
    pub peerlists: u32,
    /// Attempts reaching this many times a budget within one window
    /// disconnect the peer. Default 2.
    pub disconnect_after: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: Duration::from_secs(60),
            pubmsg: 30,
            orderbook: 3,
            pings: 6,
            peerlists: 3,
            disconnect_after: 2,
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.window.is_zero() {
            return Err("the limits' window must be positive".into());
        }
        if self.disconnect_after < 2 {
            return Err(format!(
                "disconnect_after is {}: at least 2, or a peer is disconnected for the first message over a budget",
                self.disconnect_after
            ));
        }
        Ok(())
    }
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the budget: handle it.
    Allow,
    /// Over the budget: drop it and count it.
    Deny,
    /// The attempts reached `disconnect_after` times the budget: disconnect.
    Disconnect,
}

/// A rolling-window counter in constant memory: the counts of the current
/// fixed window plus the previous one, weighted by how much of the previous
/// window still lies inside the rolling one (the sliding-window estimate
/// Cloudflare describes). Within a peer's first window it is exact; later
/// it assumes the previous window's messages were spread evenly, so a burst
/// at the very end of one fixed window and another at the end of the next
/// can let up to twice the budget through within one true rolling window,
/// never more; messages spread evenly get exactly the budget.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    start: Instant,
    allowed: [u32; 2],
    tried: [u32; 2],
}

impl Rate {
    pub(crate) fn new(now: Instant) -> Rate {
        Rate { start: now, allowed: [0; 2], tried: [0; 2] }
    }

    /// Moves the fixed windows on to the one holding `now`; returns the
    /// previous window's weight.
    fn roll(&mut self, now: Instant, window: Duration) -> f64 {
        let mut elapsed = now.saturating_duration_since(self.start);
        if elapsed >= window {
            let carried = elapsed < window.saturating_mul(2);
            self.allowed = [if carried { self.allowed[1] } else { 0 }, 0];
            self.tried = [if carried { self.tried[1] } else { 0 }, 0];
            self.start = if carried { self.start + window } else { now };
            elapsed = now.saturating_duration_since(self.start);
        }
        1.0 - elapsed.as_secs_f64() / window.as_secs_f64()
    }

    /// Counts one message against `budget` per `window`. A budget of 0
    /// denies every message and disconnects nobody: that kind is simply off.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        window: Duration,
        budget: u32,
        disconnect_after: u32,
    ) -> Verdict {
        // Every message is an attempt, first; too many of them disconnect.
        match self.tried(now, window, budget, disconnect_after) {
            Verdict::Disconnect => return Verdict::Disconnect,
            _ if budget == 0 => return Verdict::Deny,
            _ => {}
        }
        let weight = self.roll(now, window);
        let allowed = f64::from(self.allowed[0]) * weight + f64::from(self.allowed[1]);
        if allowed + 1.0 <= f64::from(budget) {
            self.allowed[1] += 1;
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }

    /// Gives back the last message allowed: another budget refused it.
    pub(crate) fn refund(&mut self) {
        self.allowed[1] = self.allowed[1].saturating_sub(1);
    }

    /// Counts an attempt that is refused for another reason (an earlier
    /// answer still queued): it still brings the peer nearer a disconnect.
    pub(crate) fn tried(
        &mut self,
        now: Instant,
        window: Duration,
        budget: u32,
        disconnect_after: u32,
    ) -> Verdict {
        if budget == 0 {
            return Verdict::Deny;
        }
        let weight = self.roll(now, window);
        self.tried[1] = self.tried[1].saturating_add(1);
        let tried = f64::from(self.tried[0]) * weight + f64::from(self.tried[1]);
        if tried >= f64::from(budget.saturating_mul(disconnect_after)) {
            Verdict::Disconnect
        } else {
            Verdict::Deny
        }
    }
}

/// A peer's four budgets.
pub(crate) struct PeerRates {
    pub(crate) pubmsg: Rate,
    pub(crate) orderbook: Rate,
    pub(crate) pings: Rate,
    pub(crate) peerlists: Rate,
}

impl PeerRates {
    pub(crate) fn new(now: Instant) -> PeerRates {
        PeerRates {
            pubmsg: Rate::new(now),
            orderbook: Rate::new(now),
            pings: Rate::new(now),
            peerlists: Rate::new(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn run(rate: &mut Rate, now: Instant, n: usize, budget: u32) -> Vec<Verdict> {
        (0..n).map(|_| rate.check(now, MIN, budget, 2)).collect()
    }

    #[test]
    fn the_budget_then_denials_then_a_disconnect_at_twice_the_budget() {
        let t0 = Instant::now();
        let mut rate = Rate::new(t0);
        let verdicts = run(&mut rate, t0, 6, 3);
        use Verdict::*;
        assert_eq!(verdicts, [Allow, Allow, Allow, Deny, Deny, Disconnect]);
    }

    #[test]
    fn a_window_later_the_budget_is_back_and_half_a_window_later_half_of_it() {
        let t0 = Instant::now();
        let mut rate = Rate::new(t0);
        assert!(run(&mut rate, t0, 30, 30).iter().all(|v| *v == Verdict::Allow));
        assert_eq!(rate.check(t0 + MIN / 2, MIN, 30, 2), Verdict::Deny, "all 30 are within the last 60 s");
        // 90 s in: the first window's 30 weigh one half; 15 more fit.
        let t90 = t0 + MIN + MIN / 2;
        let allowed = run(&mut rate, t90, 20, 30).iter().filter(|v| **v == Verdict::Allow).count();
        assert_eq!(allowed, 15);
        // Two quiet windows later everything is forgotten.
        assert_eq!(run(&mut rate, t0 + MIN * 4, 30, 30), vec![Verdict::Allow; 30]);
    }

    #[test]
    fn refused_attempts_count_towards_the_disconnect() {
        let t0 = Instant::now();
        let mut rate = Rate::new(t0);
        assert_eq!(rate.check(t0, MIN, 3, 2), Verdict::Allow);
        for _ in 0..4 {
            assert_eq!(rate.tried(t0, MIN, 3, 2), Verdict::Deny);
        }
        assert_eq!(rate.tried(t0, MIN, 3, 2), Verdict::Disconnect);
    }

    #[test]
    fn a_zero_budget_denies_everything_and_disconnects_nobody() {
        let t0 = Instant::now();
        let mut rate = Rate::new(t0);
        assert_eq!(run(&mut rate, t0, 100, 0), vec![Verdict::Deny; 100]);
        assert_eq!(rate.tried(t0, MIN, 0, 2), Verdict::Deny);
    }

    #[test]
    fn a_refund_gives_the_message_back() {
        let t0 = Instant::now();
        let mut rate = Rate::new(t0);
        for _ in 0..10 {
            assert_eq!(rate.check(t0, MIN, 1, 100), Verdict::Allow);
            rate.refund();
        }
        assert_eq!(rate.check(t0, MIN, 1, 100), Verdict::Allow);
        assert_eq!(rate.check(t0, MIN, 1, 100), Verdict::Deny);
    }

    #[test]
    fn limits_are_validated() {
        assert_eq!(Limits::default().validate(), Ok(()));
        assert!(Limits { window: Duration::ZERO, ..Limits::default() }.validate().is_err());
        assert!(Limits { disconnect_after: 1, ..Limits::default() }.validate().is_err());
    }
}
