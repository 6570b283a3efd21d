//! The directory node's heartbeat decisions, as pure functions.
//!
//! Every `sweep_interval` the sweep thread looks at the handshaked peers and
//! decides, from their `last_seen` alone, what to do (seed
//! `peer-heartbeat-directory-server.txt`, `HeartbeatManager._sweep`):
//!
//! 1. **Hard-evict** every peer idle for longer than `hard_evict`
//!    ([`EvictReason::IdleTimeout`]).
//! 2. **Probe** every other peer idle for longer than `idle_threshold`: a
//!    [`Command::Ping`] to a ping-capable peer, a [`Command::OrderbookProbe`]
//!    to a maker without ping support (its offers refresh `last_seen`),
//!    nothing to a taker without ping support (phase 1 will take it).
//! 3. If anything was pinged, **wait** `pong_wait`.
//! 4. **Evict** every pinged peer still pong-pending
//!    ([`EvictReason::PongTimeout`]).
//!
//! [`sweep`] is phases 1 and 2, [`pong_timeouts`] is phase 4, and
//! [`Schedule`] says when each is due. None of them does I/O, reads a clock,
//! takes a lock or spawns a thread: the sweep thread hands them `now` and a
//! snapshot of the registry, and sends the [`Command`]s they return to the
//! I/O thread.
//!
//! # Thresholds are strict
//! A peer is selected when its idle time is *strictly greater* than the
//! threshold: `now - last_seen > threshold`. At exactly the threshold it is
//! left alone; 1 ns later it is selected. The seed computes
//! `cutoff = now - threshold` and asks the registry for the peers "idle
//! since" the cutoff, and describes them as peers whose `last_seen`
//! "exceeds" `hard_evict_sec`, "idle longer than" `idle_threshold_sec`, and
//! "idle > idle_threshold"; joinmarket-ng's registry implements that query as
//! `last_seen < cutoff`. The two differ only on an exact tie, which a real
//! clock almost never produces, but tests on a manual clock do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Where a deadline goes when adding a duration to an `Instant` overflows:
/// far enough to mean never.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + by`, or (on overflow) a far-away instant; never panics.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).or_else(|| at.checked_add(FAR_FUTURE)).unwrap_or(at)
}

/// Heartbeat timing; defaults match joinmarket-rs and the seed: sweep 60 s,
/// idle 600 s, hard evict 1500 s, pong wait 30 s.
///
/// ```
/// use std::time::Duration;
/// use heartbeat::peer::sweep::SweepConfig;
///
/// let config = SweepConfig { idle_threshold: Duration::from_secs(120), ..SweepConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepConfig {
    /// How often a sweep runs (seed `sweep_interval_sec`, 60 s).
    pub sweep_interval: Duration,
    /// Idle time after which a peer is probed (seed `idle_threshold_sec`, 600 s).
    pub idle_threshold: Duration,
    /// Idle time after which a peer is evicted without a probe (seed
    /// `hard_evict_sec`, 1500 s).
    pub hard_evict: Duration,
    /// How long pinged peers have to answer with a PONG (seed `pong_wait_sec`, 30 s).
    pub pong_wait: Duration,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            sweep_interval: Duration::from_secs(60),
            idle_threshold: Duration::from_secs(600),
            hard_evict: Duration::from_secs(1500),
            pong_wait: Duration::from_secs(30),
        }
    }
}

impl SweepConfig {
    /// Checks that every duration is positive and that `idle_threshold` is
    /// less than `hard_evict` (otherwise no peer would ever be probed before
    /// it is evicted). The error says which rule is broken and the values.
    ///
    /// `pong_wait` may be longer than `sweep_interval`: [`Schedule`] keeps
    /// overlapping pong checks.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("sweep_interval", self.sweep_interval),
            ("idle_threshold", self.idle_threshold),
            ("hard_evict", self.hard_evict),
            ("pong_wait", self.pong_wait),
        ] {
            if value.is_zero() {
                return Err(format!("{name} must be positive, got {value:?}"));
            }
        }
        if self.idle_threshold >= self.hard_evict {
            return Err(format!(
                "idle_threshold ({:?}) must be less than hard_evict ({:?})",
                self.idle_threshold, self.hard_evict
            ));
        }
        Ok(())
    }
}

/// What the sweep needs to know of one handshaked peer. `id` is the server's
/// connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// The server's connection id; a reconnecting peer gets a new one.
    pub id: u64,
    /// When the last line was received from this peer (any line, before parsing).
    pub last_seen: Instant,
    /// Whether the peer advertised `"features": {"ping": true}`.
    pub ping: bool,
    /// Whether the peer is a maker (serves an onion location), not a taker.
    pub maker: bool,
    /// Whether a PING went out to this peer and no PONG has come back yet.
    pub pong_pending: bool,
    /// Whether a probe is still waiting out its pong wait: a PING not yet
    /// answered, or an orderbook probe sent less than `pong_wait` ago. Such
    /// a peer is not probed again (joinmarket-ng waits too).
    pub probing: bool,
}

impl PeerView {
    /// How long the peer has been idle at `now`; a `last_seen` after `now`
    /// (impossible on a monotonic clock) counts as idle 0.
    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }
}

/// Why a peer is evicted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EvictReason {
    /// Idle for longer than `hard_evict` (the seed's `"idle timeout"`).
    IdleTimeout,
    /// Pinged, and no PONG within `pong_wait` (the seed's `"pong timeout"`).
    PongTimeout,
    /// Writing to the peer failed (the seed's `"send failed: <error>"`).
    SendFailed(String),
    /// The peer does not read what is sent to it fast enough.
    SlowConsumer,
    /// The peer broke the protocol (an overlong or malformed line, ...).
    Protocol(String),
    /// The peer did not complete its handshake in time.
    HandshakeTimeout,
    /// The peer kept sending past its message budget (see `Limits`).
    RateLimited(String),
    /// The peer sent a message under another peer's nick.
    Spoofed,
    /// A connection that proved its nick (JMP-0005) took the nick over from
    /// this unverified peer, or from an earlier connection of the same key.
    Displaced,
    /// The connection did not send its nick-authentication proof in time.
    NickAuthTimeout,
}

impl EvictReason {
    /// A short, fixed label for metrics: `idle_timeout`, `pong_timeout`,
    /// `send_failed`, `slow_consumer`, `protocol`, `handshake_timeout`,
    /// `rate_limited`, `spoofed`, `displaced`, `nick_auth_timeout`.
    pub fn label(&self) -> &'static str {
        match self {
            EvictReason::IdleTimeout => "idle_timeout",
            EvictReason::PongTimeout => "pong_timeout",
            EvictReason::SendFailed(_) => "send_failed",
            EvictReason::SlowConsumer => "slow_consumer",
            EvictReason::Protocol(_) => "protocol",
            EvictReason::HandshakeTimeout => "handshake_timeout",
            EvictReason::RateLimited(_) => "rate_limited",
            EvictReason::Spoofed => "spoofed",
            EvictReason::Displaced => "displaced",
            EvictReason::NickAuthTimeout => "nick_auth_timeout",
        }
    }
}

impl fmt::Display for EvictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvictReason::IdleTimeout => f.write_str("idle timeout"),
            EvictReason::PongTimeout => f.write_str("pong timeout"),
            EvictReason::SendFailed(e) => write!(f, "send failed: {e}"),
            EvictReason::SlowConsumer => f.write_str("slow consumer"),
            EvictReason::Protocol(e) => write!(f, "protocol error: {e}"),
            EvictReason::HandshakeTimeout => f.write_str("handshake timeout"),
            EvictReason::RateLimited(what) => write!(f, "rate limited: {what}"),
            EvictReason::Spoofed => f.write_str("spoofed sender: a message from another peer's nick"),
            EvictReason::Displaced => f.write_str("displaced by a connection that proved the nick"),
            EvictReason::NickAuthTimeout => f.write_str("no nick-authentication proof in time"),
        }
    }
}

/// What the sweep asks the I/O thread to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the connection and announce the peer as disconnected.
    Evict {
        /// The connection to close.
        id: u64,
        /// Why.
        reason: EvictReason,
    },
    /// Send `{"type": 798, "line": ""}` and mark the peer pong-pending.
    Ping {
        /// The connection to ping.
        id: u64,
    },
    /// Send the unicast PUBMSG `<dn_nick>!PUBLIC!orderbook` to a maker
    /// without ping support.
    OrderbookProbe {
        /// The connection to probe.
        id: u64,
    },
}

impl Command {
    /// The connection the command is about.
    pub fn id(&self) -> u64 {
        match *self {
            Command::Evict { id, .. } | Command::Ping { id } | Command::OrderbookProbe { id } => id,
        }
    }
}

/// The ids of the [`Command::Ping`]s in `commands`, in order: what to hand
/// to [`Schedule::pinged`] after carrying out a sweep.
pub fn pinged_ids(commands: &[Command]) -> Vec<u64> {
    commands
        .iter()
        .filter_map(|c| match *c {
            Command::Ping { id } => Some(id),
            _ => None,
        })
        .collect()
}

/// Phases 1 and 2 of one sweep at `now`.
///
/// Hard-evicts ([`EvictReason::IdleTimeout`]) every peer idle for longer than
/// `hard_evict`; then, among the others idle for longer than
/// `idle_threshold`: [`Command::Ping`] for ping-capable peers,
/// [`Command::OrderbookProbe`] for makers without ping support, nothing for
/// takers without ping support. Evictions come first in the output, then
/// probes, each in the order of `peers`.
///
/// Both thresholds are strict (see the [module docs](self)): a peer idle for
/// exactly `idle_threshold` is not probed, and one idle for exactly
/// `hard_evict` is probed rather than evicted. A `last_seen` after `now`
/// counts as idle 0.
///
/// Unlike the seed, a peer still [`probing`](PeerView::probing) is not
/// probed again: a PING still unanswered, or an orderbook probe younger than
/// `pong_wait`, is left to its own wait (as joinmarket-ng does); the pong
/// check of the sweep that pinged it decides its fate.
///
/// ```
/// use std::time::{Duration, Instant};
/// use heartbeat::peer::sweep::{Command, EvictReason, PeerView, SweepConfig, sweep};
///
/// let now = Instant::now() + Duration::from_secs(2000);
/// let peer = |id, idle_secs, ping, maker| PeerView {
///     id,
///     last_seen: now - Duration::from_secs(idle_secs),
///     ping,
///     maker,
///     pong_pending: false,
///     probing: false,
/// };
/// let peers = [peer(1, 700, true, false), peer(2, 1600, false, false), peer(3, 700, false, true)];
/// assert_eq!(
///     sweep(&peers, now, &SweepConfig::default()),
///     [
///         Command::Evict { id: 2, reason: EvictReason::IdleTimeout },
///         Command::Ping { id: 1 },
///         Command::OrderbookProbe { id: 3 },
///     ]
/// );
/// ```
pub fn sweep(peers: &[PeerView], now: Instant, config: &SweepConfig) -> Vec<Command> {
    let mut evictions = Vec::new();
    let mut probes = Vec::new();
    for peer in peers {
        let idle = peer.idle(now);
        if idle > config.hard_evict {
            evictions.push(Command::Evict { id: peer.id, reason: EvictReason::IdleTimeout });
        } else if idle > config.idle_threshold && !peer.probing {
            if peer.ping {
                probes.push(Command::Ping { id: peer.id });
            } else if peer.maker {
                probes.push(Command::OrderbookProbe { id: peer.id });
            }
        }
    }
    evictions.append(&mut probes);
    evictions
}

/// Phase 4, at the end of the pong wait: evicts
/// ([`EvictReason::PongTimeout`]) every peer pinged by that sweep (`pinged`
/// ids) that is still pong-pending in `peers`, in the order of `pinged`.
///
/// Peers no longer present (evicted or gone during the wait) are skipped, as
/// are repeated ids. Only a PONG clears pong-pending, as in the seed: other
/// traffic during the wait refreshes `last_seen` but does not save a peer
/// that never answers PING.
///
/// `config` is not consulted today (phase 4 depends only on the pending
/// flags); it is taken so every decision is called the same way.
pub fn pong_timeouts(pinged: &[u64], peers: &[PeerView], config: &SweepConfig) -> Vec<Command> {
    let _ = config;
    let pending: HashMap<u64, bool> = peers.iter().map(|p| (p.id, p.pong_pending)).collect();
    let mut seen = HashSet::new();
    pinged
        .iter()
        .filter(|&&id| pending.get(&id).copied().unwrap_or(false) && seen.insert(id))
        .map(|&id| Command::Evict { id, reason: EvictReason::PongTimeout })
        .collect()
}

/// What [`Schedule::due`] says to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Run [`sweep`], then report its pings with [`Schedule::pinged`].
    Sweep,
    /// Run [`pong_timeouts`] with these ids, the ones an earlier sweep pinged.
    PongCheck(Vec<u64>),
}

/// A pong check waiting for its deadline.
#[derive(Debug, Clone)]
struct PendingCheck {
    deadline: Instant,
    ids: Vec<u64>,
}

/// The schedule of the sweep thread, pure: it is told the time and says what
/// is due.
///
/// Sweeps run on a fixed grid, `k * sweep_interval` after `start` (the pong
/// wait does not push them back, unlike the seed's loop, which sleeps a full
/// interval after each sweep's pong wait). After a stall longer than an
/// interval (suspend, SIGSTOP) the grid restarts from the current time
/// rather than bursting through the sweeps it missed. Every sweep that pinged
/// has a pong check due `pong_wait` after it; checks wait in a queue, so they
/// may outlive the next sweep when `pong_wait >= sweep_interval`.
///
/// The sweep thread waits until [`next_due`](Schedule::next_due) (or a stop
/// message), then asks [`due`](Schedule::due) what to do.
///
/// ```
/// use std::time::{Duration, Instant};
/// use heartbeat::peer::sweep::{Due, Schedule, SweepConfig};
///
/// let start = Instant::now();
/// let mut schedule = Schedule::new(start, SweepConfig::default());
/// let t60 = start + Duration::from_secs(60);
/// assert_eq!(schedule.next_due(), t60);
/// assert_eq!(schedule.due(t60), [Due::Sweep]);
/// schedule.pinged(t60, vec![7]);
/// assert_eq!(schedule.next_due(), start + Duration::from_secs(90));
/// assert_eq!(schedule.due(start + Duration::from_secs(90)), [Due::PongCheck(vec![7])]);
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    config: SweepConfig,
    next_sweep: Instant,
    /// Sorted by deadline; equal deadlines keep the order they were recorded in.
    checks: VecDeque<PendingCheck>,
}

impl Schedule {
    /// A schedule whose first sweep is at `start + sweep_interval` (the seed
    /// sleeps before its first sweep).
    ///
    /// `config` should have passed [`SweepConfig::validate`]; if it has not,
    /// the schedule still never panics (a zero interval makes a sweep due at
    /// every call).
    pub fn new(start: Instant, config: SweepConfig) -> Self {
        Schedule { config, next_sweep: later(start, config.sweep_interval), checks: VecDeque::new() }
    }

    /// The configuration the schedule runs on.
    pub fn config(&self) -> &SweepConfig {
        &self.config
    }

    /// The next instant something is due: the next sweep or the earliest
    /// pending pong check, whichever is sooner.
    pub fn next_due(&self) -> Instant {
        match self.checks.front() {
            Some(check) => check.deadline.min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    /// The number of pong checks still waiting for their deadline.
    pub fn pending_checks(&self) -> usize {
        self.checks.len()
    }

    /// What is due at `now`, in time order: at most one [`Due::Sweep`] and
    /// every [`Due::PongCheck`] whose deadline has come. Moves the sweep grid
    /// on when a sweep is returned.
    ///
    /// A pong check due at the same instant as a sweep comes first: it
    /// finishes the earlier sweep, and evicting its silent peers first keeps
    /// the new sweep from pinging them again.
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut out = Vec::new();
        let sweep_at = (self.next_sweep <= now).then_some(self.next_sweep);
        let mut sweep_placed = sweep_at.is_none();
        while let Some(check) = self.checks.front() {
            if check.deadline > now {
                break;
            }
            if let Some(at) = sweep_at
                && !sweep_placed
                && check.deadline > at
            {
                out.push(Due::Sweep);
                sweep_placed = true;
            }
            if let Some(check) = self.checks.pop_front() {
                out.push(Due::PongCheck(check.ids));
            }
        }
        if !sweep_placed {
            out.push(Due::Sweep);
        }
        if let Some(at) = sweep_at {
            let next = later(at, self.config.sweep_interval);
            self.next_sweep = if next > now { next } else { later(now, self.config.sweep_interval) };
        }
        out
    }

    /// Records that the sweep at `at` pinged these ids: a
    /// [`Due::PongCheck`] with them is due at `at + pong_wait`. Nothing is
    /// recorded when `ids` is empty (the seed skips the wait when nothing
    /// was pinged).
    pub fn pinged(&mut self, at: Instant, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let deadline = later(at, self.config.pong_wait);
        // Usually the newest deadline: search from the back.
        let pos = self.checks.iter().rposition(|c| c.deadline <= deadline).map_or(0, |i| i + 1);
        self.checks.insert(pos, PendingCheck { deadline, ids });
    }

    /// The hub itself was stalled for `by` (a stopped process, a suspended
    /// machine): every pending pong check moves on by the stall, so a PONG
    /// that waited unread in its socket meanwhile still counts. The sweep
    /// grid is left alone: [`due`](Schedule::due) already restarts it after
    /// a stall.
    pub fn stalled(&mut self, by: Duration) {
        for check in &mut self.checks {
            check.deadline = later(check.deadline, by);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const NS: Duration = Duration::from_nanos(1);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    /// A peer idle for `idle` at `now`.
    fn peer(id: u64, now: Instant, idle: Duration, ping: bool, maker: bool) -> PeerView {
        PeerView { id, last_seen: now - idle, ping, maker, pong_pending: false, probing: false }
    }

    /// A `now` late enough that every `now - idle` below is a valid Instant.
    fn late_now() -> Instant {
        Instant::now() + secs(10_000)
    }

    fn evict(id: u64, reason: EvictReason) -> Command {
        Command::Evict { id, reason }
    }

    #[test]
    fn defaults_match_the_seed_and_validate() {
        let c = SweepConfig::default();
        assert_eq!(c.sweep_interval, secs(60));
        assert_eq!(c.idle_threshold, secs(600));
        assert_eq!(c.hard_evict, secs(1500));
        assert_eq!(c.pong_wait, secs(30));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_says_what_is_wrong() {
        let d = SweepConfig::default();
        let cases = [
            (SweepConfig { sweep_interval: Duration::ZERO, ..d }, "sweep_interval must be positive, got 0ns"),
            (SweepConfig { idle_threshold: Duration::ZERO, ..d }, "idle_threshold must be positive, got 0ns"),
            (SweepConfig { hard_evict: Duration::ZERO, ..d }, "hard_evict must be positive, got 0ns"),
            (SweepConfig { pong_wait: Duration::ZERO, ..d }, "pong_wait must be positive, got 0ns"),
            (
                SweepConfig { idle_threshold: secs(1500), ..d },
                "idle_threshold (1500s) must be less than hard_evict (1500s)",
            ),
            (
                SweepConfig { idle_threshold: secs(700), hard_evict: secs(600), ..d },
                "idle_threshold (700s) must be less than hard_evict (600s)",
            ),
        ];
        for (config, message) in cases {
            assert_eq!(config.validate(), Err(message.to_owned()), "{config:?}");
        }
        // A pong wait longer than the sweep interval is allowed.
        assert_eq!(SweepConfig { pong_wait: secs(120), ..d }.validate(), Ok(()));
    }

    #[test]
    fn evict_reasons_display_as_the_seed_and_label_for_metrics() {
        let cases = [
            (EvictReason::IdleTimeout, "idle timeout", "idle_timeout"),
            (EvictReason::PongTimeout, "pong timeout", "pong_timeout"),
            (
                EvictReason::SendFailed("Connection reset by peer".into()),
                "send failed: Connection reset by peer",
                "send_failed",
            ),
            (EvictReason::SlowConsumer, "slow consumer", "slow_consumer"),
            (EvictReason::Protocol("line too long".into()), "protocol error: line too long", "protocol"),
            (EvictReason::HandshakeTimeout, "handshake timeout", "handshake_timeout"),
        ];
        for (reason, display, label) in cases {
            assert_eq!(reason.to_string(), display);
            assert_eq!(reason.label(), label);
        }
    }

    #[test]
    fn each_peer_kind_at_each_age() {
        let config = SweepConfig::default();
        let now = late_now();
        // (idle, expected for ping maker, ping taker, legacy maker, legacy taker)
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Want {
            Nothing,
            Probe,
            Evict,
        }
        use Want::*;
        let ages = [
            (Duration::ZERO, [Nothing; 4]),
            (secs(599), [Nothing; 4]),
            (secs(600), [Nothing; 4]), // exactly idle_threshold: not yet
            (secs(600) + NS, [Probe, Probe, Probe, Nothing]),
            (secs(1000), [Probe, Probe, Probe, Nothing]),
            (secs(1500), [Probe, Probe, Probe, Nothing]), // exactly hard_evict: not yet
            (secs(1500) + NS, [Evict; 4]),
            (secs(5000), [Evict; 4]),
        ];
        let kinds = [(true, true), (true, false), (false, true), (false, false)];
        for (idle, wants) in ages {
            for (k, ((ping, maker), want)) in kinds.into_iter().zip(wants).enumerate() {
                let id = k as u64 + 1;
                let got = sweep(&[peer(id, now, idle, ping, maker)], now, &config);
                let expected = match want {
                    Nothing => vec![],
                    Evict => vec![evict(id, EvictReason::IdleTimeout)],
                    Probe if ping => vec![Command::Ping { id }],
                    Probe => vec![Command::OrderbookProbe { id }],
                };
                assert_eq!(got, expected, "idle {idle:?}, ping {ping}, maker {maker}");
            }
        }
    }

    #[test]
    fn thresholds_are_strict_to_the_nanosecond() {
        let config = SweepConfig::default();
        let now = late_now();
        let at = |idle| sweep(&[peer(9, now, idle, true, false)], now, &config);
        assert_eq!(at(config.idle_threshold - NS), []);
        assert_eq!(at(config.idle_threshold), []);
        assert_eq!(at(config.idle_threshold + NS), [Command::Ping { id: 9 }]);
        assert_eq!(at(config.hard_evict - NS), [Command::Ping { id: 9 }]);
        assert_eq!(at(config.hard_evict), [Command::Ping { id: 9 }]);
        assert_eq!(at(config.hard_evict + NS), [evict(9, EvictReason::IdleTimeout)]);
    }

    #[test]
    fn a_last_seen_in_the_future_counts_as_idle_zero() {
        let config = SweepConfig::default();
        let now = Instant::now();
        let p = PeerView {
            id: 1,
            last_seen: now + secs(5000),
            ping: true,
            maker: true,
            pong_pending: true,
            probing: true,
        };
        assert_eq!(p.idle(now), Duration::ZERO);
        assert_eq!(sweep(&[p], now, &config), []);
    }

    #[test]
    fn a_mixed_sweep_puts_evictions_first_then_probes_in_peer_order() {
        let config = SweepConfig::default();
        let now = late_now();
        let peers = [
            peer(10, now, secs(700), false, true),   // legacy maker: probe
            peer(11, now, secs(2000), true, true),   // evict
            peer(12, now, secs(30), true, true),     // fresh
            peer(13, now, secs(900), false, false),  // legacy taker: nothing
            peer(14, now, secs(601), true, false),   // ping taker: ping
            peer(15, now, secs(1501), false, false), // evict
            PeerView { pong_pending: true, probing: true, ..peer(16, now, secs(800), true, true) }, // still waiting
        ];
        assert_eq!(
            sweep(&peers, now, &config),
            [
                evict(11, EvictReason::IdleTimeout),
                evict(15, EvictReason::IdleTimeout),
                Command::OrderbookProbe { id: 10 },
                Command::Ping { id: 14 },
            ]
        );
        assert_eq!(pinged_ids(&sweep(&peers, now, &config)), [14]);
        assert_eq!(sweep(&[], now, &config), []);
    }

    #[test]
    fn pong_timeouts_evict_only_the_still_pending() {
        let config = SweepConfig::default();
        let now = late_now();
        let pending = |id| PeerView { pong_pending: true, ..peer(id, now, secs(1), true, false) };
        let answered = |id| peer(id, now, secs(1), true, false); // its PONG cleared the flag
        let peers = [answered(1), pending(2), pending(3), pending(4)];
        // 5 left during the wait; 4 is pending but was pinged by another sweep.
        assert_eq!(
            pong_timeouts(&[3, 1, 5, 2, 3], &peers, &config),
            [evict(3, EvictReason::PongTimeout), evict(2, EvictReason::PongTimeout)]
        );
        assert_eq!(pong_timeouts(&[1], &peers, &config), []);
        assert_eq!(pong_timeouts(&[5], &peers, &config), []);
        assert_eq!(pong_timeouts(&[], &peers, &config), []);
    }

    #[test]
    fn a_pong_during_the_wait_saves_the_peer_and_a_departed_peer_is_skipped() {
        let config = SweepConfig::default();
        let t0 = Instant::now();
        let mut peers = vec![
            peer(1, t0 + secs(700), secs(700), true, true),
            peer(2, t0 + secs(700), secs(700), true, false),
            peer(3, t0 + secs(700), secs(700), true, false),
        ];
        let now = t0 + secs(700);
        let commands = sweep(&peers, now, &config);
        let pinged = pinged_ids(&commands);
        assert_eq!(pinged, [1, 2, 3]);
        for p in &mut peers {
            p.pong_pending = true;
        }
        // During the wait: 1 answers, 3 disconnects, 2 stays silent.
        peers[0].pong_pending = false;
        peers[0].last_seen = now + secs(2);
        peers.remove(2);
        assert_eq!(pong_timeouts(&pinged, &peers, &config), [evict(2, EvictReason::PongTimeout)]);
    }

    /// Drives `schedule` on a manual clock until `until` (after start),
    /// recording each `Due` with its offset in seconds; `on_sweep` says what
    /// a sweep at that offset pinged.
    fn drive(config: SweepConfig, until: Duration, on_sweep: impl Fn(u64) -> Vec<u64>) -> Vec<(u64, Due)> {
        let clock = ManualClock::new();
        let start = clock.now();
        let mut schedule = Schedule::new(start, config);
        let mut log = Vec::new();
        while schedule.next_due() <= start + until {
            assert_eq!(schedule.due(schedule.next_due() - NS), [], "nothing is due early");
            clock.advance(schedule.next_due() - clock.now());
            let now = clock.now();
            let offset = (now - start).as_secs();
            assert_eq!(now - start, secs(offset), "due on whole seconds only");
            for due in schedule.due(now) {
                if due == Due::Sweep {
                    schedule.pinged(now, on_sweep(offset));
                }
                log.push((offset, due));
            }
        }
        log
    }

    #[test]
    fn sweeps_keep_a_fixed_grid_across_pong_waits() {
        let log = drive(SweepConfig::default(), secs(200), |at| if at <= 120 { vec![at] } else { vec![] });
        assert_eq!(
            log,
            [
                (60, Due::Sweep),
                (90, Due::PongCheck(vec![60])),
                (120, Due::Sweep),
                (150, Due::PongCheck(vec![120])),
                (180, Due::Sweep),
            ]
        );
    }

    #[test]
    fn pong_checks_longer_than_an_interval_overlap_and_come_in_order() {
        let config = SweepConfig { pong_wait: secs(90), ..SweepConfig::default() };
        let log = drive(config, secs(240), |at| vec![at]);
        assert_eq!(
            log,
            [
                (60, Due::Sweep),
                (120, Due::Sweep),
                (150, Due::PongCheck(vec![60])),
                (180, Due::Sweep),
                (210, Due::PongCheck(vec![120])),
                (240, Due::Sweep),
            ]
        );

        // Asked late, one call delivers everything in time order.
        let start = Instant::now();
        let mut s = Schedule::new(start, config);
        assert_eq!(s.due(start + secs(60)), [Due::Sweep]);
        s.pinged(start + secs(60), vec![1]);
        assert_eq!(s.due(start + secs(120)), [Due::Sweep]);
        s.pinged(start + secs(120), vec![2]);
        assert_eq!(s.pending_checks(), 2);
        assert_eq!(s.due(start + secs(215)), [Due::PongCheck(vec![1]), Due::Sweep, Due::PongCheck(vec![2])]);
        assert_eq!(s.pending_checks(), 0);
        assert_eq!(s.next_due(), start + secs(240), "still on the grid");
    }

    #[test]
    fn a_pong_check_at_a_sweep_instant_comes_first() {
        let config = SweepConfig { pong_wait: secs(60), ..SweepConfig::default() };
        let log = drive(config, secs(180), |at| if at == 60 { vec![5, 6] } else { vec![] });
        assert_eq!(
            log,
            [(60, Due::Sweep), (120, Due::PongCheck(vec![5, 6])), (120, Due::Sweep), (180, Due::Sweep)]
        );
    }

    #[test]
    fn checks_recorded_out_of_order_are_still_delivered_by_deadline() {
        let start = Instant::now();
        let mut s = Schedule::new(start, SweepConfig::default());
        s.pinged(start + secs(50), vec![2]);
        s.pinged(start + secs(10), vec![1]);
        s.pinged(start + secs(50), vec![3]);
        s.pinged(start + secs(20), vec![]); // nothing pinged: no check
        assert_eq!(s.pending_checks(), 3);
        assert_eq!(s.next_due(), start + secs(40));
        assert_eq!(
            s.due(start + secs(80)),
            [Due::PongCheck(vec![1]), Due::Sweep, Due::PongCheck(vec![2]), Due::PongCheck(vec![3])]
        );
    }

    #[test]
    fn a_stall_of_five_intervals_yields_one_sweep_and_restarts_the_grid() {
        let clock = ManualClock::new();
        let start = clock.now();
        let mut s = Schedule::new(start, SweepConfig::default());
        clock.advance(secs(60));
        assert_eq!(s.due(clock.now()), [Due::Sweep]);
        clock.advance(secs(5 * 60) + secs(7));
        assert_eq!(s.due(clock.now()), [Due::Sweep]);
        assert_eq!(s.due(clock.now()), []);
        assert_eq!(s.next_due(), clock.now() + secs(60), "the grid restarts from now");
        clock.advance(secs(60));
        assert_eq!(s.due(clock.now()), [Due::Sweep]);
    }

    #[test]
    fn a_stall_postpones_pending_pong_checks_by_its_length() {
        let start = Instant::now();
        let mut s = Schedule::new(start, SweepConfig::default());
        s.pinged(start + secs(60), vec![1]);
        s.pinged(start + secs(70), vec![2]);
        s.stalled(secs(100));
        assert_eq!(s.due(start + secs(189)), [Due::Sweep], "the checks were due at 90 and 100");
        assert_eq!(s.due(start + secs(190)), [Due::PongCheck(vec![1])]);
        assert_eq!(s.due(start + secs(200)), [Due::PongCheck(vec![2])]);
    }

    #[test]
    fn a_peer_still_waiting_out_a_probe_is_not_probed_again() {
        let config = SweepConfig::default();
        let now = late_now();
        let waiting = |id, ping, maker| PeerView { probing: true, ..peer(id, now, secs(700), ping, maker) };
        assert_eq!(sweep(&[waiting(1, true, false), waiting(2, false, true)], now, &config), []);
        // Hard eviction does not wait for a probe.
        let gone = PeerView { probing: true, ..peer(3, now, secs(1501), true, true) };
        assert_eq!(sweep(&[gone], now, &config), [evict(3, EvictReason::IdleTimeout)]);
    }

    #[test]
    fn a_late_call_within_one_interval_stays_on_the_grid() {
        let start = Instant::now();
        let mut s = Schedule::new(start, SweepConfig::default());
        assert_eq!(s.due(start + secs(60) - NS), []);
        assert_eq!(s.due(start + secs(100)), [Due::Sweep]);
        assert_eq!(s.next_due(), start + secs(120));
    }

    #[test]
    fn next_due_is_the_earliest_of_sweep_and_checks() {
        let start = Instant::now();
        let mut s = Schedule::new(start, SweepConfig::default());
        assert_eq!(s.next_due(), start + secs(60), "the first sweep waits an interval");
        s.pinged(start + secs(100), vec![1]);
        assert_eq!(s.next_due(), start + secs(60));
        s.pinged(start, vec![2]);
        assert_eq!(s.next_due(), start + secs(30));
        assert_eq!(s.due(start + secs(30)), [Due::PongCheck(vec![2])]);
        assert_eq!(s.next_due(), start + secs(60));
        assert_eq!(s.due(start + secs(60)), [Due::Sweep]);
        assert_eq!(s.next_due(), start + secs(120));
        assert_eq!(s.due(start + secs(120)), [Due::Sweep]);
        assert_eq!(s.next_due(), start + secs(130));
    }

    #[test]
    fn huge_durations_never_panic() {
        let huge = Duration::from_secs(u64::MAX / 2);
        let config =
            SweepConfig { sweep_interval: huge, idle_threshold: huge, hard_evict: huge, pong_wait: huge };
        let start = Instant::now();
        let mut s = Schedule::new(start, config);
        s.pinged(start, vec![1]);
        assert!(s.next_due() > start + secs(3600));
        assert_eq!(s.due(start + secs(3600)), []);
        assert_eq!(sweep(&[peer(1, late_now(), secs(9000), true, true)], late_now(), &config), []);
    }

    /// The protocol document's "Captured probe run": sweep 1 s, idle 2 s,
    /// hard-evict 6 s, pong wait 1 s, four peers that handshake `offset`
    /// after the server starts. Peer 1 is a ping maker that answers every
    /// PING 100 ms later (its PONG clears pending and refreshes last_seen);
    /// 2 a silent ping taker; 3 a legacy maker that never answers the
    /// orderbook probe; 4 a legacy taker. Returns every command with its
    /// time in milliseconds since the start.
    fn probe_run(offset: Duration) -> Vec<(u64, Command)> {
        let config = SweepConfig {
            sweep_interval: secs(1),
            idle_threshold: secs(2),
            hard_evict: secs(6),
            pong_wait: secs(1),
        };
        assert_eq!(config.validate(), Ok(()));
        let clock = ManualClock::new();
        let start = clock.now();
        let joined = start + offset;
        let mut peers: Vec<PeerView> =
            [(1, true, true), (2, true, false), (3, false, true), (4, false, false)]
                .into_iter()
                .map(|(id, ping, maker)| PeerView {
                    id,
                    last_seen: joined,
                    ping,
                    maker,
                    pong_pending: false,
                    probing: false,
                })
                .collect();
        let mut schedule = Schedule::new(start, config);
        let mut pongs: Vec<(Instant, u64)> = Vec::new();
        let mut log = Vec::new();
        let end = start + secs(10);
        loop {
            let next_pong = pongs.iter().map(|&(at, _)| at).min();
            let next = next_pong.map_or(schedule.next_due(), |p| p.min(schedule.next_due()));
            if next > end {
                break;
            }
            clock.advance(next - clock.now());
            let now = clock.now();
            // PONGs arriving now: read by the I/O thread before the sweep thread looks.
            pongs.retain(|&(at, id)| {
                if at > now {
                    return true;
                }
                if let Some(p) = peers.iter_mut().find(|p| p.id == id) {
                    p.pong_pending = false;
                    p.probing = false;
                    p.last_seen = at;
                }
                false
            });
            for due in schedule.due(now) {
                let commands = match due {
                    Due::Sweep => {
                        let commands = sweep(&peers, now, &config);
                        schedule.pinged(now, pinged_ids(&commands));
                        commands
                    }
                    Due::PongCheck(ids) => pong_timeouts(&ids, &peers, &config),
                };
                // The I/O thread carries them out.
                for command in commands {
                    match command {
                        Command::Evict { id, .. } => peers.retain(|p| p.id != id),
                        Command::Ping { id } => {
                            if let Some(p) = peers.iter_mut().find(|p| p.id == id) {
                                p.pong_pending = true;
                                p.probing = true;
                            }
                            if id == 1 {
                                pongs.push((now + ms(100), id));
                            }
                        }
                        Command::OrderbookProbe { .. } => {} // peer 3 never answers
                    }
                    log.push(((now - start).as_millis() as u64, command));
                }
            }
        }
        assert_eq!(peers.iter().map(|p| p.id).collect::<Vec<_>>(), [1], "only the answering maker is left");
        log
    }

    #[test]
    fn the_captured_probe_run_replays() {
        let expected = [
            // Idle 2.5 s (3 s when joined at start; 2 s exactly is not enough).
            (3000, Command::Ping { id: 1 }),
            (3000, Command::Ping { id: 2 }),
            (3000, Command::OrderbookProbe { id: 3 }),
            // The silent taker, 1 s after its PING; the pong check precedes the sweep.
            (4000, evict(2, EvictReason::PongTimeout)),
            (4000, Command::OrderbookProbe { id: 3 }),
            (5000, Command::OrderbookProbe { id: 3 }),
            // The maker answered at 3.1 s: idle 2.9 s at 6 s, pinged again.
            (6000, Command::Ping { id: 1 }),
            (6000, Command::OrderbookProbe { id: 3 }),
            // The first sweep after 6 s idle; the pong check at 7 s finds 1 answered.
            (7000, evict(3, EvictReason::IdleTimeout)),
            (7000, evict(4, EvictReason::IdleTimeout)),
            (9000, Command::Ping { id: 1 }),
        ];
        // Joining mid-interval or exactly on a sweep gives the same run.
        assert_eq!(probe_run(ms(500)), expected);
        assert_eq!(probe_run(Duration::ZERO), expected);
    }
}
