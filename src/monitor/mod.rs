//! The session monitor: sessions that must beat, warnings, timeouts.
//!
//! Sessions live in 64 shards, each behind its own lock: a beat hashes the id
//! once, locks one shard and updates a timestamp. Deadlines sit in a per-shard
//! hashed timing wheel (`wheel.rs`; sweeps in `sweep.rs`) that is re-armed lazily: a beat
//! never touches it (a phi beat only when it brings the deadline earlier).
//! When a deadline comes up, a session that beat in the meantime is put
//! back at its real deadline; one that did not goes on the shard's ready
//! list, which the next sweep judges.
//!
//! The sweeper thread ([`Monitor::start`]) moves the wheel on
//! ([`Monitor::maintain`]) about fifty times per `check_interval`, so the
//! re-arming of sessions that keep beating (one per session per timeout) is
//! spread evenly over time, and a sweep ([`Monitor::sweep`], every
//! `check_interval`) costs in proportion to the sessions really due. Tests
//! call both directly with a manual clock.

mod client;
mod phi;
mod snapshot;
mod sweep;
mod wheel;

use std::collections::BinaryHeap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, MutexGuard, RwLock};
use serde::{Deserialize, Serialize};

pub use self::client::{DEFAULT_CLIENT_INTERVAL, DEFAULT_REQUEST_TIMEOUT, HeartbeatClient, RemoteOptions};
pub use self::phi::{PhiConfig, PhiEstimator, phi};
use self::phi::{PhiStats, y_for_phi};
pub use self::snapshot::SessionSnapshot;
use self::wheel::{Entry, Wheel};
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::lograte::{LogLimit, log_limit};
use crate::state::format_timestamp;
use crate::ticker::{Ticker, contained};

const SHARDS: usize = 64;

/// The longest timeout (and check interval, grace period, phi duration) a
/// monitor accepts: 365 days. Longer ones are almost surely a unit mistake
/// (milliseconds given as seconds), and keep deadline arithmetic far from
/// overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Whether `id` is a session id that travels everywhere unescaped (URL
/// paths, log lines, JSON): 1 to 128 bytes of `A-Z a-z 0-9 . _ : -`.
///
/// The `heartbeat monitor` service and [`HeartbeatClient::remote`] accept
/// only such ids; an in-process [`Monitor`] takes any string.
///
/// ```
/// assert!(heartbeat::valid_session_id("agent-7.eu:web_1"));
/// assert!(!heartbeat::valid_session_id(""));
/// assert!(!heartbeat::valid_session_id("a/b"));
/// assert!(!heartbeat::valid_session_id(&"x".repeat(129)));
/// ```
pub fn valid_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `last_sweep` before the first sweep: nothing to be late against.
const NO_SWEEP_YET: u64 = u64::MAX;

/// The sweeper thread moves the wheel on this many times per `check_interval`
/// (never more often than every [`MIN_MAINTAIN_PERIOD`]).
const MAINTAIN_PER_SWEEP: u32 = 50;
const MIN_MAINTAIN_PERIOD: Duration = Duration::from_millis(10);

thread_local! {
    /// The monitor (as an address) whose sweeper runs on this thread, so that
    /// `stop` called from a callback neither joins nor waits for itself.
    static SWEEPER_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How a monitor decides that a silent session is in trouble, and dead.
///
/// In JSON (serde): `{"kind": "fixed"}` or `{"kind": "phi", "threshold": 8.0, ...}`
/// with the fields of [`PhiConfig`] (missing ones take their defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Detector {
    /// The seed's rule: at each sweep, a session silent for longer than
    /// `timeout` misses a beat; the first miss warns; `max_missed_beats`
    /// misses time it out.
    Fixed,
    /// Phi accrual: a sweep that finds phi at or above `warn_threshold`
    /// counts a miss (the first one warns); phi at or above `threshold`
    /// times the session out. A phi session is looked at only from the
    /// instant its statistics say phi reaches `warn_threshold` (and, once
    /// warned, `threshold`), not at every sweep: its missed beats are 1
    /// once warned and 2 when it dies (1 if both happen in one sweep).
    Phi(PhiConfig),
}

/// Something that happened to a session. Sent on [`Monitor::events`], in
/// order for each session.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The session's first missed beat: it may be dying.
    Warning {
        /// The session.
        session_id: String,
        /// Missed beats so far (1 for the first warning).
        missed_beats: u32,
        /// The session's phi at the sweep, with the phi detector.
        phi: Option<f64>,
    },
    /// A warned or failed session beat again (or was resumed, or registered again).
    Recovered {
        /// The session.
        session_id: String,
    },
    /// The session missed `max_missed_beats` beats (or crossed the phi
    /// threshold) and is declared dead. A [`Event::Removed`] follows.
    TimedOut {
        /// The session.
        session_id: String,
        /// Its agent type, as registered.
        agent_type: String,
        /// Missed beats counted when it was declared dead.
        missed_beats: u32,
    },
    /// The session reported a failure ([`Monitor::fail`]). It stays
    /// registered, unhealthy, until its next beat (a [`Event::Recovered`]).
    Failed {
        /// The session.
        session_id: String,
        /// Its agent type, as registered.
        agent_type: String,
    },
    /// The session is no longer monitored.
    Removed {
        /// The session.
        session_id: String,
        /// Why.
        reason: RemovalReason,
    },
}

/// Why a session stopped being monitored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// It timed out.
    TimedOut,
    /// [`Monitor::unregister`] was called.
    Unregistered,
}

/// Options for [`Monitor::register_with`]; `None` takes the monitor's
/// setting. Checked as the builder checks its own: durations above zero and
/// at most [`MAX_TIMEOUT`], `max_missed_beats` at least 1, a phi detector's
/// settings as [`MonitorBuilder::detector`] wants them.
///
/// A session whose settings are all the monitor's costs nothing extra; one
/// with settings of its own carries a 24-byte box.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RegisterOptions {
    /// No misses are counted for this long after registering (like Docker's
    /// start period).
    pub grace: Option<Duration>,
    /// A detector for this session instead of the monitor's.
    pub detector: Option<Detector>,
    /// This session's timeout (fixed detector): a daily cron job and a
    /// 10-second agent in one monitor.
    pub timeout: Option<Duration>,
    /// This session's misses before it times out (fixed detector).
    pub max_missed_beats: Option<u32>,
}

/// How many sessions are in each state, from [`Monitor::counts`].
///
/// `healthy + warning + failed == registered`; `paused` overlaps them (a
/// paused session counts no misses and is usually healthy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions registered.
    pub registered: usize,
    /// Neither failed nor missing beats.
    pub healthy: usize,
    /// Missed at least one beat, not failed.
    pub warning: usize,
    /// Reported a failure not yet cleared by a beat.
    pub failed: usize,
    /// Paused.
    pub paused: usize,
}

/// One session's state, as [`Monitor::status`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStatus {
    /// The session id.
    pub session_id: String,
    /// The agent type it was registered with.
    pub agent_type: String,
    /// Its last beat (or registration, or resume), RFC 3339 UTC.
    pub last_beat: String,
    /// Seconds since then.
    pub seconds_since_beat: f64,
    /// Misses counted since its last beat.
    pub missed_beats: u32,
    /// Whether it is paused.
    pub is_paused: bool,
    /// It reported a failure ([`Monitor::fail`]) and has not beaten since.
    pub failed: bool,
    /// No missed beats, not failed.
    pub is_healthy: bool,
    /// Its phi now, with the phi detector.
    pub phi: Option<f64>,
    /// How long, from now, until it would be declared dead if it stayed
    /// silent: an estimate, since sweeps run on a grid. `None` while paused.
    pub time_to_death: Option<Duration>,
    /// The silence that counts as a missed beat for it (its own, or the
    /// monitor's): the fixed detector's rule.
    pub timeout: Duration,
    /// The misses that time it out (its own, or the monitor's); phi
    /// sessions are judged by phi instead.
    pub max_missed_beats: u32,
}

type WarningCallback = Arc<dyn Fn(&str, u32) + Send + Sync>;
type TimeoutCallback = Arc<dyn Fn(&str, &str) + Send + Sync>;
type FailureCallback = TimeoutCallback;

/// Configures a [`Monitor`]; get one from [`Monitor::builder`].
#[must_use]
pub struct MonitorBuilder {
    timeout: Duration,
    check_interval: Duration,
    max_missed_beats: u32,
    detector: Detector,
    /// `None`: the default, `check_interval`; `Some(None)`: off.
    pause_guard: Option<Option<Duration>>,
    on_warning: Option<WarningCallback>,
    on_timeout: Option<TimeoutCallback>,
    on_failure: Option<FailureCallback>,
    clock: SharedClock,
}

impl MonitorBuilder {
    /// Silence longer than this at a sweep is a missed beat (fixed detector).
    /// Default 30 s; above zero and at most [`MAX_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Time between sweeps. Default 5 s; above zero and at most [`MAX_TIMEOUT`].
    pub fn check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// Misses that time a session out. Default 3.
    pub fn max_missed_beats(mut self, max: u32) -> Self {
        self.max_missed_beats = max;
        self
    }

    /// The detector for sessions registered without one. Default [`Detector::Fixed`].
    /// A phi detector needs `0 < warn_threshold <= threshold <=`
    /// [`PhiConfig::MAX_THRESHOLD`],
    /// `2 <= max_samples <=` [`PhiConfig::MAX_SAMPLES`] and its durations at
    /// most [`MAX_TIMEOUT`].
    pub fn detector(mut self, detector: Detector) -> Self {
        self.detector = detector;
        self
    }

    /// A sweep of the sweeper thread that comes more than
    /// `check_interval + bound` after the end of its previous one (or after
    /// `start`) means this process itself was not running (stopped, swapped
    /// out, suspended): that round counts no misses against anyone, and says
    /// so in the log. The thread's first sweep is measured from `start`; a
    /// [`Monitor::sweep`] called by hand is never late: the guard belongs to
    /// the sweeper thread.
    /// Default: `Some(check_interval)`. `None` turns it off.
    pub fn pause_guard(mut self, bound: Option<Duration>) -> Self {
        self.pause_guard = Some(bound);
        self
    }

    /// Called as `(session_id, missed_beats)` on a session's first miss, on
    /// the thread that sweeps.
    pub fn on_warning(mut self, f: impl Fn(&str, u32) + Send + Sync + 'static) -> Self {
        self.on_warning = Some(Arc::new(f));
        self
    }

    /// Called as `(session_id, agent_type)` when a session times out, on the
    /// thread that sweeps.
    pub fn on_timeout(mut self, f: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_timeout = Some(Arc::new(f));
        self
    }

    /// Called as `(session_id, agent_type)` when a session reports a failure
    /// ([`Monitor::fail`]), on the thread that called `fail`, after the
    /// session's lock is released. Not [`on_timeout`](Self::on_timeout): the
    /// session is not dead, and stays registered.
    pub fn on_failure(mut self, f: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(Arc::new(f));
        self
    }

    /// The clock. Default: the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Checks the configuration and builds the monitor (its sweeper not started).
    pub fn build(self) -> Result<Monitor> {
        check_duration("timeout", self.timeout)?;
        check_duration("check_interval", self.check_interval)?;
        check_max_missed(self.max_missed_beats)?;
        if let Detector::Phi(c) = &self.detector {
            check_phi(c)?;
        }
        let epoch = self.clock.now();
        let mut phi_configs = PhiCache::default();
        if let Detector::Phi(c) = self.detector {
            phi_configs.get(c);
        }
        Ok(Monitor {
            inner: Arc::new(Inner {
                timeout: nanos(self.timeout),
                check_interval: nanos(self.check_interval),
                max_missed: self.max_missed_beats,
                detector: self.detector,
                pause_guard: self.pause_guard.unwrap_or(Some(self.check_interval)).map(nanos),
                on_warning: self.on_warning,
                on_timeout: self.on_timeout,
                on_failure: self.on_failure,
                shards: (0..SHARDS).map(|_| Padded(Mutex::new(Shard::default()))).collect(),
                hasher: DefaultHashBuilder::default(),
                agents: RwLock::new(Interner::default()),
                epoch,
                clock: self.clock,
                subscribers: Mutex::new(Vec::new()),
                has_subscribers: AtomicBool::new(false),
                events_dropped: AtomicU64::new(0),
                registered: AtomicUsize::new(0),
                unhealthy: AtomicUsize::new(0),
                last_sweep: AtomicU64::new(NO_SWEEP_YET),
                sweeper: Mutex::new(None),
                lifecycle: Mutex::new(()),
                sweepers_started: AtomicU64::new(0),
                phi_configs: Mutex::new(phi_configs),
                last_summary: AtomicU64::new(0),
            }),
        })
    }
}

/// A timeout, interval or grace: above zero, at most [`MAX_TIMEOUT`].
fn check_duration(field: &str, d: Duration) -> Result<()> {
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(Error::InvalidConfig(format!(
            "{field} must be above zero and at most {} s (365 days), got {d:?}",
            MAX_TIMEOUT.as_secs()
        )));
    }
    Ok(())
}

fn check_max_missed(max: u32) -> Result<()> {
    if max == 0 {
        return Err(Error::InvalidConfig("max_missed_beats must be at least 1, got 0".into()));
    }
    Ok(())
}

fn check_phi(c: &PhiConfig) -> Result<()> {
    let bad = |what: String| Err(Error::InvalidConfig(format!("phi detector: {what}")));
    if !(c.threshold.is_finite() && c.threshold > 0.0 && c.threshold <= PhiConfig::MAX_THRESHOLD) {
        return bad(format!(
            "threshold must be above zero and at most {}, got {}",
            PhiConfig::MAX_THRESHOLD,
            c.threshold
        ));
    }
    if !(c.warn_threshold.is_finite() && c.warn_threshold > 0.0 && c.warn_threshold <= c.threshold) {
        return bad(format!(
            "warn_threshold must be above zero and at most threshold ({}), got {}",
            c.threshold, c.warn_threshold
        ));
    }
    if !(2..=PhiConfig::MAX_SAMPLES).contains(&c.max_samples) {
        return bad(format!(
            "max_samples must be from 2 to {}, got {}",
            PhiConfig::MAX_SAMPLES,
            c.max_samples
        ));
    }
    for (field, d) in [
        ("min_std_deviation", c.min_std_deviation),
        ("acceptable_pause", c.acceptable_pause),
        ("expected_interval", c.expected_interval),
    ] {
        if d > MAX_TIMEOUT {
            return bad(format!("{field} must be at most {} s, got {d:?}", MAX_TIMEOUT.as_secs()));
        }
    }
    // Zero for both leaves no spread and no estimate: phi is infinite at
    // once, and every session dies at its first sweep.
    for (field, d) in [("min_std_deviation", c.min_std_deviation), ("expected_interval", c.expected_interval)]
    {
        if d.is_zero() {
            return bad(format!("{field} must be above zero (Akka requires it too)"));
        }
    }
    Ok(())
}

/// Per-session options, checked as the builder checks its own.
fn check_options(o: &RegisterOptions) -> Result<()> {
    if let Some(grace) = o.grace
        && grace > MAX_TIMEOUT
    {
        return Err(Error::InvalidConfig(format!(
            "grace must be at most {} s (365 days), got {grace:?}",
            MAX_TIMEOUT.as_secs()
        )));
    }
    if let Some(timeout) = o.timeout {
        check_duration("timeout", timeout)?;
    }
    if let Some(max) = o.max_missed_beats {
        check_max_missed(max)?;
    }
    if let Some(Detector::Phi(c)) = &o.detector {
        check_phi(c)?;
    }
    Ok(())
}

/// Fractional milliseconds as nanoseconds, saturating (infinity: never).
fn ms_to_nanos(ms: f64) -> u64 {
    let ns = (ms * 1e6).ceil();
    if ns >= u64::MAX as f64 { u64::MAX } else { ns.max(0.0) as u64 }
}

/// Durations as `u64` nanoseconds, saturating (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An in-process registry of sessions that must beat.
///
/// ```
/// use std::time::Duration;
/// use heartbeat::{Event, Monitor};
///
/// let monitor = Monitor::builder().timeout(Duration::from_secs(30)).build()?;
/// let events = monitor.subscribe();
/// let _sweeper = monitor.start()?;          // sweeps every check_interval (5 s)
/// monitor.register("session-1", "worker");
/// assert!(monitor.beat("session-1"));
/// assert!(!monitor.beat("nobody"));
/// assert_eq!(monitor.healthy_count(), 1);
/// monitor.unregister("session-1");
/// assert!(matches!(events.try_recv(), Ok(Event::Removed { .. })));
/// # Ok::<(), heartbeat::Error>(())
/// ```
///
/// Cloning gives another handle to the same monitor.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

/// The failure reports' line: anyone who may ping may report failures as
/// fast as they can send them. Flushed by the sweeps.
static FAILURES: LogLimit = log_limit!(log::Level::Warn, "sessions reported a failure");

struct Inner {
    timeout: u64,
    check_interval: u64,
    max_missed: u32,
    detector: Detector,
    pause_guard: Option<u64>,
    on_warning: Option<WarningCallback>,
    on_timeout: Option<TimeoutCallback>,
    on_failure: Option<FailureCallback>,
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// foldhash, randomly seeded per monitor: hashbrown's default, a few
    /// nanoseconds for a short id where SipHash takes 15.
    hasher: DefaultHashBuilder,
    agents: RwLock<Interner>,
    /// Monotonic instants are kept as nanoseconds since this one.
    epoch: Instant,
    clock: SharedClock,
    /// One channel per `events()` call; pruned when its receiver is dropped.
    subscribers: Mutex<Vec<Sender<Event>>>,
    has_subscribers: AtomicBool,
    /// Events a full bounded subscriber did not get.
    events_dropped: AtomicU64,
    registered: AtomicUsize,
    unhealthy: AtomicUsize,
    /// When the last sweep ended (ns since epoch), for the local-pause guard.
    last_sweep: AtomicU64,
    /// Held only briefly, never while waiting: callbacks on the sweeper
    /// thread may take it (`is_running`, `stop`).
    sweeper: Mutex<Option<Sweeper>>,
    /// Held by `start` and by `stop` while it waits for the thread to end,
    /// so starts and stops happen one at a time. Never taken on the sweeper
    /// thread.
    lifecycle: Mutex<()>,
    sweepers_started: AtomicU64,
    /// Phi settings in use, shared by the sessions that use them.
    phi_configs: Mutex<PhiCache>,
    /// When the last summary of unhealthy sessions was logged (ns since epoch).
    last_summary: AtomicU64,
}

/// A phi detector's settings with the `y` of its two thresholds worked out
/// once (each is a Newton iteration), shared by its sessions.
#[derive(Debug)]
struct PhiShared {
    config: PhiConfig,
    y_warn: f64,
    y_dead: f64,
}

/// The distinct phi settings sessions use (a few in practice): a session
/// holds an `Arc` of its settings, 8 bytes, instead of a copy. At most
/// [`PhiCache::MAX`] are remembered; sessions with more distinct settings
/// than that each get their own.
#[derive(Default)]
struct PhiCache(Vec<Arc<PhiShared>>);

impl PhiCache {
    const MAX: usize = 64;

    fn get(&mut self, config: PhiConfig) -> Arc<PhiShared> {
        // Arcs no session holds any more are forgotten first.
        self.0.retain(|c| Arc::strong_count(c) > 1 || c.config == config);
        if let Some(c) = self.0.iter().find(|c| c.config == config) {
            return c.clone();
        }
        let shared = Arc::new(PhiShared {
            config,
            y_warn: y_for_phi(config.warn_threshold),
            y_dead: y_for_phi(config.threshold),
        });
        if self.0.len() < Self::MAX {
            self.0.push(shared.clone());
        }
        shared
    }
}

struct Sweeper {
    /// Which start this is, so a guard stops only the sweeper it started.
    id: u64,
    stop: Sender<()>,
    /// Disconnects when the thread ends (its sender is dropped, also on panic).
    done: Receiver<()>,
    handle: JoinHandle<()>,
}

/// Keeps each shard's lock on cache lines of its own: two threads beating
/// sessions in different shards must not contend through false sharing.
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Default)]
struct Shard {
    /// Session id hash -> slot in `sessions`.
    index: HashTable<u32>,
    sessions: Vec<Session>,
    free: Vec<u32>,
    /// Deadlines. A session has one live entry, in the wheel or on the
    /// ready list: one of its generation (re-registering, resuming and a phi
    /// beat that brings its deadline earlier move the generation on), while
    /// it is live and not paused. Others are stale and skipped.
    wheel: Wheel,
    /// (slot, generation) of sessions whose deadline passed: the next sweep
    /// judges them.
    ready: Vec<(u32, u32)>,
}

/// One session. Kept small: a million of them should fit in 200 MB.
/// Settings of its own (timeout, misses, detector, grace) live in `rules`,
/// boxed, so a session on the monitor's settings pays one null pointer for
/// them.
struct Session {
    id: Box<str>,
    /// The beat (or registration, resume), ns since the monitor's epoch.
    last_beat: u64,
    /// Index into the monitor's agent-type table.
    agent: u32,
    generation: u32,
    missed: u32,
    paused: bool,
    live: bool,
    /// Beaten since register or resume (phi records intervals from the second beat).
    has_beaten: bool,
    /// Reported a failure, not yet cleared by a beat.
    failed: bool,
    rules: Option<Box<Rules>>,
}

impl Session {
    /// Whether an entry of `generation` is this session's live one.
    fn holds(&self, generation: u32) -> bool {
        self.live && self.generation == generation && !self.paused
    }

    /// No misses before this instant (ns since epoch); 0 for none.
    fn grace_until(&self) -> u64 {
        self.rules.as_ref().map_or(0, |r| r.grace_until)
    }

    /// Counted in `Inner::unhealthy`.
    fn unhealthy(&self) -> bool {
        self.missed > 0 || self.failed
    }

    fn phi(&self) -> Option<&PhiState> {
        self.rules.as_ref()?.phi.as_ref()
    }

    fn phi_mut(&mut self) -> Option<&mut PhiState> {
        self.rules.as_mut()?.phi.as_mut()
    }
}

/// What a session does not take from the monitor: 56 bytes (a 64-byte
/// block from the allocator), phi statistics included with the
/// constant-memory estimator.
#[derive(Default)]
struct Rules {
    /// Its own timeout, ns; 0: the monitor's.
    timeout: u64,
    /// No misses before this instant (ns since epoch); 0 for none.
    grace_until: u64,
    /// Its own max missed beats; 0: the monitor's.
    max_missed: u32,
    /// Its detector was its own (from [`RegisterOptions`]), not the
    /// monitor's: snapshots say so.
    own_detector: bool,
    /// The phi detector's state, with the phi detector.
    phi: Option<PhiState>,
}

struct PhiState {
    shared: Arc<PhiShared>,
    stats: PhiStats,
}

/// Agent types are few and repeated: each is stored once, and forgotten
/// when its last session goes.
#[derive(Default)]
struct Interner {
    names: Vec<Box<str>>,
    sessions: Vec<u32>,
    ids: std::collections::HashMap<Box<str>, u32>,
    free: Vec<u32>,
}

impl Interner {
    /// The id of `name`, counting one more session of it.
    fn acquire(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            self.sessions[id as usize] += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = name.into();
                self.sessions[id as usize] = 1;
                id
            }
            None => {
                self.names.push(name.into());
                self.sessions.push(1);
                u32::try_from(self.names.len() - 1).expect("fewer than 4 billion agent types")
            }
        };
        self.ids.insert(name.into(), id);
        id
    }

    /// One session fewer of type `id`.
    fn release(&mut self, id: u32) {
        let count = &mut self.sessions[id as usize];
        *count -= 1;
        if *count == 0 {
            let name = std::mem::take(&mut self.names[id as usize]);
            self.ids.remove(&name);
            self.free.push(id);
        }
    }
}

/// State a restored session brings along into [`Inner::insert`]; the
/// default is a fresh registration's (healthy, pause state kept).
#[derive(Default)]
struct Carried {
    /// `Some`: set the pause state; `None`: keep it (a new session is not paused).
    paused: Option<bool>,
    failed: bool,
    missed: u32,
    /// Replacing a warned or failed session sends no `Recovered`: only its
    /// settings change (`reconfigure`).
    silent: bool,
}

impl Monitor {
    /// A builder with the seed's defaults: timeout 30 s, check every 5 s,
    /// 3 missed beats, the fixed detector.
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder {
            timeout: Duration::from_secs(30),
            check_interval: Duration::from_secs(5),
            max_missed_beats: 3,
            detector: Detector::Fixed,
            pause_guard: None,
            on_warning: None,
            on_timeout: None,
            on_failure: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// A new subscription: a channel that receives every event from now on.
    /// Each call makes its own channel; dropping the receiver unsubscribes
    /// it. Events pile up in a receiver that is kept but not read (see
    /// [`subscribe_bounded`](Self::subscribe_bounded)).
    pub fn subscribe(&self) -> Receiver<Event> {
        self.add_subscriber(crossbeam_channel::unbounded())
    }

    /// The old name of [`subscribe`](Self::subscribe): `events()` on
    /// [`Watch`](crate::Watch) and [`PeerClient`](crate::peer::PeerClient)
    /// is their one channel, not a new one.
    #[deprecated(since = "0.2.0", note = "renamed `subscribe()`: each call is a new subscription")]
    pub fn events(&self) -> Receiver<Event> {
        self.subscribe()
    }

    /// The old name of [`subscribe_bounded`](Self::subscribe_bounded).
    #[deprecated(since = "0.2.0", note = "renamed `subscribe_bounded()`")]
    pub fn events_bounded(&self, capacity: usize) -> Receiver<Event> {
        self.subscribe_bounded(capacity)
    }

    /// [`subscribe`](Self::subscribe) through a channel that holds at most
    /// `capacity` events: when it is full, events for it are dropped, never
    /// waited for, and counted ([`events_dropped`](Self::events_dropped)).
    /// For a consumer that must not let a burst (a million sessions timing
    /// out at once, or a client reporting failures in a loop) grow memory
    /// without bound. A `capacity` of 0 is taken as 1.
    pub fn subscribe_bounded(&self, capacity: usize) -> Receiver<Event> {
        self.add_subscriber(crossbeam_channel::bounded(capacity.max(1)))
    }

    /// Events dropped so far because a bounded subscriber's channel was full.
    pub fn events_dropped(&self) -> u64 {
        self.inner.events_dropped.load(Ordering::Relaxed)
    }

    fn add_subscriber(&self, (tx, rx): (Sender<Event>, Receiver<Event>)) -> Receiver<Event> {
        let mut subscribers = self.inner.subscribers.lock();
        subscribers.push(tx);
        self.inner.has_subscribers.store(true, Ordering::SeqCst);
        rx
    }

    /// Starts monitoring `session_id` (replacing any session of that id),
    /// as beating now, with the monitor's settings.
    pub fn register(&self, session_id: &str, agent_type: &str) {
        self.inner.insert(session_id, agent_type, &RegisterOptions::default(), Carried::default());
    }

    /// [`register`](Self::register) with a grace period, a timeout, a
    /// number of misses and/or a detector of its own. Invalid options (see
    /// [`RegisterOptions`]) are an [`Error::InvalidConfig`] naming the field
    /// and value, and register nothing.
    pub fn register_with(&self, session_id: &str, agent_type: &str, options: RegisterOptions) -> Result<()> {
        check_options(&options)?;
        self.inner.insert(session_id, agent_type, &options, Carried::default());
        Ok(())
    }

    /// Records a beat. `false` if the session is not registered. No
    /// allocation unless the session was warned (a `Recovered` event).
    pub fn beat(&self, session_id: &str) -> bool {
        let inner = &*self.inner;
        let now = inner.now();
        let Some((mut shard, slot, _)) = inner.locate(session_id) else { return false };
        let shard = &mut *shard;
        let s = &mut shard.sessions[slot as usize];
        let (has_beaten, last_beat) = (s.has_beaten, s.last_beat);
        let before = s.phi().map(|_| inner.deadline_of(s));
        let phi = s.phi_mut().map(|p| {
            if has_beaten {
                // Akka's rules: the first beat (after register or resume) only
                // sets the time, and an interval long enough to have been a
                // failure does not become part of the history.
                let interval = Duration::from_nanos(now.saturating_sub(last_beat));
                let c = &p.shared.config;
                if phi::duration_ms(interval) < p.stats.silence_ms_at(p.shared.y_dead, c) {
                    p.stats.record(interval, c);
                }
            }
        });
        let phi = phi.and(before);
        s.has_beaten = true;
        s.last_beat = now;
        inner.recover(s, session_id);
        // New statistics (beats sped up) or forgotten misses may bring the
        // deadline earlier than it was before this beat.
        inner.rearm_if_earlier(shard, slot, phi);
        true
    }

    /// Stops monitoring a session. `false` if it was not registered.
    pub fn unregister(&self, session_id: &str) -> bool {
        let inner = &*self.inner;
        let Some((mut shard, slot, hash)) = inner.locate(session_id) else { return false };
        inner.remove(&mut shard, hash, slot);
        inner.emit(Event::Removed { session_id: session_id.to_owned(), reason: RemovalReason::Unregistered });
        log::debug!("unregistered session {session_id}");
        true
    }

    /// Stops counting misses for a session (e.g. it waits for user input).
    /// `false` if it is not registered.
    pub fn pause(&self, session_id: &str) -> bool {
        self.inner.with_session(session_id, |_, s| s.paused = true).is_some()
    }

    /// Resumes a paused session as if it beat now. `false` if it was not paused.
    pub fn resume(&self, session_id: &str) -> bool {
        self.resume_with_grace(session_id, Duration::ZERO)
    }

    /// [`resume`](Self::resume), counting no misses for `grace` afterwards.
    pub fn resume_with_grace(&self, session_id: &str, grace: Duration) -> bool {
        let inner = &*self.inner;
        let now = inner.now();
        let Some((mut guard, slot, _)) = inner.locate(session_id) else { return false };
        let shard = &mut *guard;
        let s = &mut shard.sessions[slot as usize];
        if !s.paused {
            return false;
        }
        s.paused = false;
        s.last_beat = now;
        s.has_beaten = false;
        let grace_until = if grace.is_zero() { 0 } else { now.saturating_add(nanos(grace)) };
        match &mut s.rules {
            Some(rules) => rules.grace_until = grace_until,
            // Allocates under the shard lock, for a resume with grace only.
            None if grace_until != 0 => s.rules = Some(Box::new(Rules { grace_until, ..Rules::default() })),
            None => {}
        }
        inner.recover(s, session_id);
        // A new generation: any entry from before the pause is stale.
        s.generation = s.generation.wrapping_add(1);
        let deadline = inner.deadline_of(s).max(now.saturating_add(1));
        shard.arm(slot, deadline);
        true
    }

    /// One session's status, or `None` if it is not registered.
    pub fn status(&self, session_id: &str) -> Option<SessionStatus> {
        let now = self.inner.now();
        let wall = self.inner.clock.wall();
        // Lock order everywhere: a shard, then the agent names (`register`
        // takes the names alone). parking_lot's RwLock queues new readers
        // behind a waiting writer, so the reverse order could deadlock.
        self.inner.with_session(session_id, |inner, s| inner.status_of(s, now, wall, &inner.agents.read()))
    }

    /// Every session's status.
    pub fn all_status(&self) -> Vec<SessionStatus> {
        let inner = &*self.inner;
        let now = inner.now();
        let wall = inner.clock.wall();
        let mut out = Vec::with_capacity(self.registered_count());
        for Padded(shard) in inner.shards.iter() {
            let shard = shard.lock();
            let agents = inner.agents.read();
            out.extend(
                shard.sessions.iter().filter(|s| s.live).map(|s| inner.status_of(s, now, wall, &agents)),
            );
        }
        out
    }

    /// Up to `limit` sessions' statuses, sorted by id (byte order): the
    /// `limit` smallest ids strictly greater than `after` (all ids when
    /// `None`). To walk every session a page at a time, pass the last id of
    /// one page as `after` of the next.
    ///
    /// Costs O(n log limit) comparisons over all n sessions, one shard lock
    /// at a time, and builds statuses only for the chosen ones. Sessions are
    /// looked up again to build their status: one removed in between is left
    /// out (the page is then shorter), one added in between may be missed.
    pub fn status_page(&self, after: Option<&str>, limit: usize) -> Vec<SessionStatus> {
        let inner = &*self.inner;
        if limit == 0 {
            return Vec::new();
        }
        // A max-heap of the smallest ids seen so far: its top is the one to
        // drop when a smaller id comes. Ids are copied only when they enter.
        let mut chosen: BinaryHeap<Box<str>> = BinaryHeap::with_capacity(limit.min(self.registered_count()));
        for Padded(shard) in inner.shards.iter() {
            // One shard lock at a time, and no other lock under it.
            let shard = shard.lock();
            for s in shard.sessions.iter().filter(|s| s.live) {
                let id = &*s.id;
                if after.is_some_and(|after| id <= after) {
                    continue;
                }
                if chosen.len() < limit {
                    chosen.push(id.into());
                } else if let Some(mut largest) = chosen.peek_mut()
                    && id < &**largest
                {
                    *largest = id.into();
                }
            }
        }
        let ids = chosen.into_sorted_vec();
        let now = inner.now();
        let wall = inner.clock.wall();
        ids.iter()
            .filter_map(|id| {
                inner.with_session(id, |inner, s| inner.status_of(s, now, wall, &inner.agents.read()))
            })
            .collect()
    }

    /// How many sessions are in each state, e.g. for a metrics endpoint.
    /// Walks every session, one shard lock at a time (a few milliseconds
    /// for a million sessions), without building any status; the counts are
    /// each shard's at the moment it was visited.
    /// ([`registered_count`](Self::registered_count) and
    /// [`healthy_count`](Self::healthy_count) are O(1).)
    pub fn counts(&self) -> SessionCounts {
        let mut counts = SessionCounts::default();
        for Padded(shard) in self.inner.shards.iter() {
            let shard = shard.lock();
            for s in shard.sessions.iter().filter(|s| s.live) {
                counts.registered += 1;
                counts.paused += usize::from(s.paused);
                if s.failed {
                    counts.failed += 1;
                } else if s.missed > 0 {
                    counts.warning += 1;
                } else {
                    counts.healthy += 1;
                }
            }
        }
        counts
    }

    /// Reports a failure of `session_id` at once (as healthchecks.io's
    /// `/fail`): an [`Event::Failed`] and the `on_failure` callback, for
    /// every call. A failure report is a sign of life too: the session's
    /// silence starts again from now and its missed beats are forgotten,
    /// but it stays unhealthy (no [`Event::Recovered`]) until its next beat
    /// (or resume, or registering again) clears the failure. `false` if it
    /// is not registered. Logged at warn, at most 10 lines per 10 s in the
    /// process; the count of the others comes with the next line, or with
    /// a sweep once the 10 s are over.
    pub fn fail(&self, session_id: &str) -> bool {
        let inner = &*self.inner;
        let now = inner.now();
        let agent = inner.with_session_in_shard(session_id, |inner, s| {
            // Counted unhealthy once: it may already be, by its misses.
            if !s.unhealthy() {
                inner.unhealthy.fetch_add(1, Ordering::Relaxed);
            }
            s.failed = true;
            s.last_beat = now;
            s.missed = 0;
            // The next beat only sets the time: the gap since this report is
            // no beat interval for phi's history.
            s.has_beaten = false;
            // Lock order: the shard, then the agent names.
            let agent = inner.agents.read().names[s.agent as usize].to_string();
            inner.emit(Event::Failed { session_id: session_id.to_owned(), agent_type: agent.clone() });
            agent
        });
        let Some(agent) = agent else { return false };
        FAILURES.log(inner.clock.now(), format_args!("session {session_id} ({agent}) reported a failure"));
        if let Some(f) = &inner.on_failure {
            contained("on_failure", || f(session_id, &agent));
        }
        true
    }

    /// A beat that leaves a reported failure standing: for a session that is
    /// not failed, exactly [`beat`](Self::beat); for a failed one, a sign of
    /// life (its silence starts again, its misses are forgotten) that keeps
    /// it failed and sends nothing. `false` if it is not registered.
    pub fn touch(&self, session_id: &str) -> bool {
        let inner = &*self.inner;
        let now = inner.now();
        let touched = inner.with_session_in_shard(session_id, |_, s| {
            if !s.failed {
                return false;
            }
            s.last_beat = now;
            s.missed = 0;
            s.has_beaten = false;
            true
        });
        match touched {
            None => false,
            Some(true) => true,
            Some(false) => self.beat(session_id),
        }
    }

    /// Changes a registered session's agent type and settings (validated
    /// as [`register_with`](Self::register_with) validates them) and counts
    /// it as beating now, keeping its paused and failed flags and its missed
    /// beats, and sending no event. `Ok(false)` if it is not registered. A
    /// phi session starts a new window.
    pub fn reconfigure(&self, session_id: &str, agent_type: &str, options: RegisterOptions) -> Result<bool> {
        check_options(&options)?;
        let inner = &*self.inner;
        let Some((paused, failed, missed)) =
            inner.with_session(session_id, |_, s| (s.paused, s.failed, s.missed))
        else {
            return Ok(false);
        };
        inner.insert(
            session_id,
            agent_type,
            &options,
            Carried { paused: Some(paused), failed, missed, silent: true },
        );
        Ok(true)
    }

    /// The monitor's timeout, for sessions without one of their own.
    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.inner.timeout)
    }

    /// The monitor's max missed beats, for sessions without their own.
    pub fn max_missed_beats(&self) -> u32 {
        self.inner.max_missed
    }

    /// Every live session, for saving across a restart
    /// ([`restore`](Self::restore) takes it back), one shard lock at a time.
    /// `last_beat` is wall-clock time: the clock's wall time now, less the
    /// (monotonic) silence since the beat.
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let mut out = Vec::with_capacity(self.registered_count());
        let _ = self.snapshot_shards(|sessions| {
            out.extend_from_slice(sessions);
            Ok::<(), std::convert::Infallible>(())
        });
        out
    }

    /// [`snapshot`](Self::snapshot) a shard at a time, for writers that
    /// stream: `f` gets each shard's sessions (about 1/64 of them) once that
    /// shard's lock is released, so a slow `f` never holds up beats, and
    /// memory holds one shard's snapshot at a time. The first error from `f`
    /// ends the walk and is returned.
    pub fn snapshot_shards<E>(
        &self,
        mut f: impl FnMut(&[SessionSnapshot]) -> Result<(), E>,
    ) -> Result<(), E> {
        let inner = &*self.inner;
        let now = inner.now();
        let wall = inner.clock.wall();
        let mut batch = Vec::new();
        for Padded(shard) in inner.shards.iter() {
            batch.clear();
            {
                // Lock order: the shard, then the agent names.
                let shard = shard.lock();
                let agents = inner.agents.read();
                batch.extend(shard.sessions.iter().filter(|s| s.live).map(|s| {
                    let rules = s.rules.as_deref();
                    let silence = Duration::from_nanos(now.saturating_sub(s.last_beat));
                    SessionSnapshot {
                        session_id: s.id.to_string(),
                        agent_type: agents.names[s.agent as usize].to_string(),
                        timeout: rules.filter(|r| r.timeout != 0).map(|r| Duration::from_nanos(r.timeout)),
                        max_missed_beats: rules.map(|r| r.max_missed).filter(|&m| m != 0),
                        detector: rules.filter(|r| r.own_detector).map(|r| {
                            r.phi.as_ref().map_or(Detector::Fixed, |p| Detector::Phi(p.shared.config))
                        }),
                        paused: s.paused,
                        failed: s.failed,
                        missed_beats: s.missed,
                        last_beat: wall.checked_sub(silence).unwrap_or(wall),
                    }
                }));
            }
            f(&batch)?;
        }
        Ok(())
    }

    /// Registers every session of a snapshot, replacing sessions of the same
    /// ids, and returns how many.
    ///
    /// All are checked first, as [`register_with`](Self::register_with)
    /// checks its options: on the first invalid one, an
    /// [`Error::InvalidConfig`] naming it, and none is restored.
    ///
    /// Restored sessions keep their settings, paused and failed flags and
    /// missed count, and beat *now*: the time this monitor was down is not
    /// held against them (a grace of one timeout from the restart), while a
    /// session that really stopped beating still times out after that. Phi
    /// sessions start a fresh window. No events are sent for restored state.
    pub fn restore(&self, sessions: &[SessionSnapshot]) -> Result<usize> {
        let options = |s: &SessionSnapshot| RegisterOptions {
            grace: None,
            detector: s.detector,
            timeout: s.timeout,
            max_missed_beats: s.max_missed_beats,
        };
        for s in sessions {
            let named =
                |msg: String| Error::InvalidConfig(format!("snapshot of session {:?}: {msg}", s.session_id));
            check_options(&options(s)).map_err(|e| match e {
                Error::InvalidConfig(msg) => named(msg),
                other => other,
            })?;
        }
        for s in sessions {
            let carried =
                Carried { paused: Some(s.paused), failed: s.failed, missed: s.missed_beats, silent: false };
            self.inner.insert(&s.session_id, &s.agent_type, &options(s), carried);
        }
        log::info!("restored {} sessions", sessions.len());
        Ok(sessions.len())
    }

    /// How many sessions are registered.
    pub fn registered_count(&self) -> usize {
        self.inner.registered.load(Ordering::Relaxed)
    }

    /// How many sessions have no missed beats and no failure.
    pub fn healthy_count(&self) -> usize {
        self.registered_count().saturating_sub(self.inner.unhealthy.load(Ordering::Relaxed))
    }

    /// Runs one sweep now, on the calling thread: counts misses, raises
    /// warnings and timeouts, removes the dead, then runs the callbacks.
    /// The sweeper thread calls this every `check_interval`; tests call it
    /// directly. It costs in proportion to the sessions whose deadline
    /// passed, plus, when [`maintain`](Self::maintain) was not called in
    /// between, re-arming the sessions that beat since their deadline came
    /// up. A sweep called by hand is never judged late (see
    /// [`MonitorBuilder::pause_guard`]).
    pub fn sweep(&self) {
        self.inner.sweep(false);
    }

    /// Moves the deadlines on to now without judging anyone: sessions that
    /// beat since their deadline came up are re-armed at their new one, the
    /// others are put aside for the next [`sweep`](Self::sweep). The sweeper
    /// thread calls this about fifty times per `check_interval`, so that
    /// this work (one re-arm per session per timeout while it beats) is
    /// spread evenly instead of falling on the sweeps. Never needed for
    /// correctness; whoever sweeps by hand may call it in between to the
    /// same effect.
    pub fn maintain(&self) {
        let inner = &*self.inner;
        let now = inner.now();
        let mut expired = Vec::new();
        for Padded(shard) in inner.shards.iter() {
            let mut shard = shard.lock();
            inner.maintain_shard(&mut shard, now, &mut expired);
        }
    }

    /// Starts the sweeper thread: a sweep every `check_interval`, the first
    /// one `check_interval` from now. The guard stops it when dropped.
    pub fn start(&self) -> Result<MonitorGuard> {
        let inner = &self.inner;
        if self.on_sweeper_thread() {
            return Err(Error::AlreadyRunning);
        }
        let _one_at_a_time = inner.lifecycle.lock();
        let mut sweeper = inner.sweeper.lock();
        if let Some(old) = sweeper.take() {
            if !old.handle.is_finished() {
                *sweeper = Some(old);
                return Err(Error::AlreadyRunning);
            }
            // It was stopped from one of its own callbacks: reap it.
            let _ = old.handle.join();
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let monitor = self.clone();
        let interval = Duration::from_nanos(inner.check_interval);
        let period = (interval / MAINTAIN_PER_SWEEP).max(MIN_MAINTAIN_PERIOD).min(interval);
        let mut ticks = Ticker::new(inner.clock.clone(), period, period);
        let mut sweeps = Ticker::new(inner.clock.clone(), interval, interval);
        inner.last_sweep.store(inner.now(), Ordering::SeqCst);
        let handle = thread::Builder::new().name("heartbeat-monitor".into()).spawn(move || {
            let _done = done_tx;
            SWEEPER_OF.with(|c| c.set(Arc::as_ptr(&monitor.inner) as usize));
            // Wakes every `period` (or when a manual clock moves): a sweep
            // when one is due, else the wheel moves on.
            while ticks.wait(&stop_rx) {
                let tick = ticks.due();
                if sweeps.due() {
                    monitor.inner.sweep(true);
                } else if tick {
                    monitor.maintain();
                }
            }
            FAILURES.finish(monitor.inner.clock.now());
        })?;
        let id = inner.sweepers_started.fetch_add(1, Ordering::SeqCst);
        *sweeper = Some(Sweeper { id, stop: stop_tx, done: done_rx, handle });
        log::info!(
            "monitor started (timeout {:?}, check every {interval:?})",
            Duration::from_nanos(inner.timeout)
        );
        Ok(MonitorGuard { monitor: self.clone(), sweeper: id })
    }

    /// Stops the sweeper thread and waits for it; prompt and idempotent.
    /// Called from a callback on the sweeper, it asks the thread to stop once
    /// the sweep is over.
    pub fn stop(&self) {
        self.stop_sweeper(None);
    }

    fn stop_sweeper(&self, only: Option<u64>) {
        let wanted = |s: &Sweeper| only.is_none_or(|id| id == s.id);
        if self.on_sweeper_thread() {
            // From a callback: ask, and let the thread end after this sweep.
            if let Some(s) = self.inner.sweeper.lock().as_ref().filter(|s| wanted(s)) {
                let _ = s.stop.try_send(());
            }
            return;
        }
        let _one_at_a_time = self.inner.lifecycle.lock();
        let done = match self.inner.sweeper.lock().as_ref().filter(|s| wanted(s)) {
            Some(s) => {
                let _ = s.stop.try_send(());
                s.done.clone()
            }
            None => return,
        };
        // The sweeper stays in its slot (so `is_running` tells the truth)
        // until its thread has ended; then it is reaped.
        let _ = done.recv();
        if let Some(s) = self.inner.sweeper.lock().take()
            && s.handle.join().is_err()
        {
            log::error!("monitor sweeper thread panicked");
        }
    }

    fn on_sweeper_thread(&self) -> bool {
        SWEEPER_OF.with(std::cell::Cell::get) == Arc::as_ptr(&self.inner) as usize
    }

    /// Whether the sweeper thread runs.
    pub fn is_running(&self) -> bool {
        self.inner.sweeper.lock().as_ref().is_some_and(|s| !s.handle.is_finished())
    }

    /// The clock it reads time from.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The detector of sessions registered without one of their own.
    pub fn detector(&self) -> Detector {
        self.inner.detector
    }
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("registered", &self.registered_count())
            .field("healthy", &self.healthy_count())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

/// Stops the sweeper thread it was returned with when dropped (not one
/// started later).
#[must_use = "dropping the guard stops the sweeper at once"]
#[derive(Debug)]
pub struct MonitorGuard {
    monitor: Monitor,
    sweeper: u64,
}

impl Drop for MonitorGuard {
    fn drop(&mut self) {
        self.monitor.stop_sweeper(Some(self.sweeper));
    }
}

impl Shard {
    /// Arms `slot`'s live entry (of its generation) at `deadline`. Stale entries stay until they come up; when they outnumber
    /// the live sessions the wheel is rebuilt without them, so it stays
    /// within twice the sessions whatever the deadlines.
    fn arm(&mut self, slot: u32, deadline: u64) {
        let generation = self.sessions[slot as usize].generation;
        self.wheel.insert(Entry { deadline, slot, generation });
        let live = self.sessions.len() - self.free.len();
        if self.wheel.len() > 2 * live + 64 {
            let sessions = &self.sessions;
            self.wheel.retain(|e| sessions[e.slot as usize].holds(e.generation));
        }
    }

    /// Puts `slot` on the ready list for the next sweep.
    fn make_ready(&mut self, slot: u32) {
        self.ready.push((slot, self.sessions[slot as usize].generation));
    }

    fn find(&self, hash: u64, id: &str) -> Option<u32> {
        let sessions = &self.sessions;
        self.index.find(hash, |&i| &*sessions[i as usize].id == id).copied()
    }
}

impl Inner {
    /// A session's settings apart from the monitor's; `None` if it has none.
    /// Allocates (before any lock is taken).
    fn rules_for(&self, options: &RegisterOptions, grace_until: u64) -> Option<Box<Rules>> {
        let timeout = options.timeout.map(nanos).filter(|&t| t != self.timeout).unwrap_or(0);
        let max_missed = options.max_missed_beats.filter(|&m| m != self.max_missed).unwrap_or(0);
        let own_detector = options.detector.is_some_and(|d| d != self.detector);
        let phi = match options.detector.unwrap_or(self.detector) {
            Detector::Fixed => None,
            Detector::Phi(config) => {
                Some(PhiState { shared: self.phi_configs.lock().get(config), stats: PhiStats::new(&config) })
            }
        };
        (timeout != 0 || max_missed != 0 || own_detector || phi.is_some() || grace_until != 0)
            .then(|| Box::new(Rules { timeout, grace_until, max_missed, own_detector, phi }))
    }

    /// Registers (or replaces) a session, beating now. `options` are valid.
    fn insert(&self, session_id: &str, agent_type: &str, options: &RegisterOptions, carried: Carried) {
        let agent = self.agents.write().acquire(agent_type);
        let now = self.now();
        let grace_until = options.grace.filter(|g| !g.is_zero()).map_or(0, |g| now.saturating_add(nanos(g)));
        let rules = self.rules_for(options, grace_until);
        let hash = self.hasher.hash_one(session_id);
        let mut guard = self.shard(hash).lock();
        let shard = &mut *guard;
        let slot = match shard.find(hash, session_id) {
            Some(slot) => {
                // Registering again replaces the session; a paused one stays
                // paused, as in the seed.
                let s = &mut shard.sessions[slot as usize];
                if carried.silent {
                    if s.unhealthy() {
                        self.unhealthy.fetch_sub(1, Ordering::Relaxed);
                    }
                } else {
                    self.recover(s, session_id);
                }
                self.agents.write().release(s.agent);
                s.generation = s.generation.wrapping_add(1);
                slot
            }
            None => {
                let session = Session {
                    id: session_id.into(),
                    last_beat: now,
                    agent,
                    generation: 0,
                    missed: 0,
                    paused: false,
                    live: true,
                    has_beaten: false,
                    failed: false,
                    rules: None,
                };
                let slot = match shard.free.pop() {
                    Some(slot) => {
                        let old = &mut shard.sessions[slot as usize];
                        let generation = old.generation.wrapping_add(1);
                        *old = Session { generation, ..session };
                        slot
                    }
                    None => {
                        shard.sessions.push(session);
                        u32::try_from(shard.sessions.len() - 1)
                            .expect("fewer than 4 billion sessions a shard")
                    }
                };
                let sessions = &shard.sessions;
                shard.index.insert_unique(hash, slot, |&i| self.hasher.hash_one(&*sessions[i as usize].id));
                self.registered.fetch_add(1, Ordering::Relaxed);
                slot
            }
        };
        let s = &mut shard.sessions[slot as usize];
        s.last_beat = now;
        s.agent = agent;
        s.has_beaten = false;
        s.rules = rules;
        // After `recover` above: the session is healthy and not failed here.
        s.missed = carried.missed;
        s.failed = carried.failed;
        if let Some(paused) = carried.paused {
            s.paused = paused;
        }
        if s.unhealthy() {
            self.unhealthy.fetch_add(1, Ordering::Relaxed);
        }
        // Replacing bumped the generation: any entry of before is stale.
        let first = self.deadline_of(s).max(now.saturating_add(1));
        shard.arm(slot, first);
        log::debug!("registered session {session_id} ({agent_type})");
    }

    /// The timeout that applies to `s`, ns.
    fn timeout_of(&self, s: &Session) -> u64 {
        match s.rules.as_ref().map_or(0, |r| r.timeout) {
            0 => self.timeout,
            own => own,
        }
    }

    /// The misses that time `s` out.
    fn max_missed_of(&self, s: &Session) -> u32 {
        match s.rules.as_ref().map_or(0, |r| r.max_missed) {
            0 => self.max_missed,
            own => own,
        }
    }

    fn now(&self) -> u64 {
        nanos(self.clock.now().saturating_duration_since(self.epoch))
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // Bits 32-37 pick the shard: hashbrown uses the low bits (bucket) and
        // the top 7 (tag) inside it, which must stay independent of the shard.
        &self.shards[(hash >> 32) as usize % SHARDS].0
    }

    /// Sends `event` to every subscriber. Called under the shard lock, so
    /// the events of one session arrive in the order they happened.
    fn emit(&self, event: Event) {
        if !self.has_subscribers.load(Ordering::Relaxed) {
            return;
        }
        let mut subscribers = self.subscribers.lock();
        subscribers.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                self.events_dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        });
        self.has_subscribers.store(!subscribers.is_empty(), Ordering::Relaxed);
    }

    /// The locked shard holding `session_id`, its slot there and the id's
    /// hash; `None` if the session is not registered.
    fn locate(&self, session_id: &str) -> Option<(MutexGuard<'_, Shard>, u32, u64)> {
        let hash = self.hasher.hash_one(session_id);
        let shard = self.shard(hash).lock();
        let slot = shard.find(hash, session_id)?;
        Some((shard, slot, hash))
    }

    fn with_session<R>(&self, session_id: &str, f: impl FnOnce(&Inner, &mut Session) -> R) -> Option<R> {
        let (mut shard, slot, _) = self.locate(session_id)?;
        Some(f(self, &mut shard.sessions[slot as usize]))
    }

    /// [`with_session`](Self::with_session) for a change that may bring a
    /// phi session's deadline earlier (its misses forgotten: the warning
    /// threshold applies again instead of the death threshold): the session
    /// is then armed at its new deadline.
    fn with_session_in_shard<R>(
        &self,
        session_id: &str,
        f: impl FnOnce(&Inner, &mut Session) -> R,
    ) -> Option<R> {
        let (mut guard, slot, _) = self.locate(session_id)?;
        let shard = &mut *guard;
        let s = &mut shard.sessions[slot as usize];
        let before = s.phi().map(|_| self.deadline_of(s));
        let out = f(self, s);
        self.rearm_if_earlier(shard, slot, before);
        Some(out)
    }

    /// Arms a new entry for a phi session whose deadline is now earlier than
    /// `before` (its deadline before a change), so earlier than its live
    /// entry may be: a new generation, the old entry stale. Only then: a
    /// later deadline is found lazily when the old entry comes up.
    fn rearm_if_earlier(&self, shard: &mut Shard, slot: u32, before: Option<u64>) {
        let s = &mut shard.sessions[slot as usize];
        let Some(before) = before else { return };
        if s.paused || !s.live {
            return;
        }
        let deadline = self.deadline_of(s);
        if deadline < before {
            s.generation = s.generation.wrapping_add(1);
            shard.arm(slot, deadline);
        }
    }

    /// Clears a session's misses and failure; if it had been warned or had
    /// failed, it is healthy again and `Recovered` is sent.
    fn recover(&self, s: &mut Session, session_id: &str) {
        if s.unhealthy() {
            s.missed = 0;
            s.failed = false;
            self.unhealthy.fetch_sub(1, Ordering::Relaxed);
            self.emit(Event::Recovered { session_id: session_id.to_owned() });
        }
    }

    fn remove(&self, shard: &mut Shard, hash: u64, slot: u32) {
        if let Ok(entry) = shard.index.find_entry(hash, |&i| i == slot) {
            entry.remove();
        }
        let s = &mut shard.sessions[slot as usize];
        if s.unhealthy() {
            self.unhealthy.fetch_sub(1, Ordering::Relaxed);
        }
        s.live = false;
        s.failed = false;
        s.missed = 0;
        s.id = Box::default();
        s.rules = None;
        self.agents.write().release(s.agent);
        s.generation = s.generation.wrapping_add(1);
        shard.free.push(slot);
        self.registered.fetch_sub(1, Ordering::Relaxed);
    }

    /// Where silence is measured from: the last beat, or the end of a grace
    /// period, which counts as a beat (a session gets a full timeout after it).
    fn silent_since(s: &Session) -> u64 {
        s.last_beat.max(s.grace_until())
    }

    fn status_of(
        &self,
        s: &Session,
        now: u64,
        wall: std::time::SystemTime,
        agents: &Interner,
    ) -> SessionStatus {
        let silence = now.saturating_sub(s.last_beat);
        let judged = Duration::from_nanos(now.saturating_sub(Self::silent_since(s)));
        let phi = s.phi().map(|p| p.stats.phi(judged, &p.shared.config));
        let (timeout, max_missed) = (self.timeout_of(s), self.max_missed_of(s));
        // Misses still to come after the next one.
        let after_next = u64::from(max_missed.saturating_sub(s.missed).saturating_sub(1));
        let death_at = match s.phi() {
            // Silent for longer than the timeout: a miss at every sweep from now.
            None if s.missed > 0 && judged > Duration::from_nanos(timeout) => now.saturating_add(
                self.check_interval.saturating_mul(u64::from(max_missed.saturating_sub(s.missed))),
            ),
            // The next miss comes a timeout after the last beat (a restored
            // session's misses may be more than zero here).
            None => Self::silent_since(s)
                .saturating_add(timeout)
                .saturating_add(self.check_interval.saturating_mul(after_next)),
            Some(p) => Self::silent_since(s)
                .saturating_add(ms_to_nanos(p.stats.silence_ms_at(p.shared.y_dead, &p.shared.config))),
        };
        SessionStatus {
            session_id: s.id.to_string(),
            agent_type: agents.names[s.agent as usize].to_string(),
            last_beat: format_timestamp(wall.checked_sub(Duration::from_nanos(silence)).unwrap_or(wall)),
            seconds_since_beat: silence as f64 / 1e9,
            missed_beats: s.missed,
            is_paused: s.paused,
            failed: s.failed,
            is_healthy: !s.unhealthy(),
            phi,
            time_to_death: (!s.paused).then(|| Duration::from_nanos(death_at.saturating_sub(now))),
            timeout: Duration::from_nanos(timeout),
            max_missed_beats: max_missed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_types_are_forgotten_with_their_last_session() {
        let monitor = Monitor::builder().build().unwrap();
        for i in 0..1000 {
            let id = format!("s{i}");
            monitor.register(&id, &format!("type-{i}"));
            monitor.unregister(&id);
        }
        monitor.register("a", "x");
        monitor.register("a", "y"); // replacing releases "x"
        let agents = monitor.inner.agents.read();
        assert_eq!(agents.ids.len(), 1);
        assert!(agents.names.len() <= 2, "{} names kept", agents.names.len());
    }

    #[test]
    fn dropped_subscribers_are_pruned() {
        let monitor = Monitor::builder().build().unwrap();
        drop(monitor.subscribe());
        monitor.register("s", "w");
        monitor.unregister("s");
        assert!(monitor.inner.subscribers.lock().is_empty());
        assert!(!monitor.inner.has_subscribers.load(Ordering::Relaxed));
    }

    /// A client beating a phi session ever faster brings its deadline
    /// earlier at many beats, each arming a new entry: the wheel stays
    /// bounded all the same.
    #[test]
    fn a_phi_session_beating_in_a_loop_keeps_the_wheel_bounded() {
        let clock = crate::clock::ManualClock::new();
        let config = PhiConfig { expected_interval: Duration::from_secs(60), ..PhiConfig::default() };
        let monitor =
            Monitor::builder().clock(clock.clone()).detector(Detector::Phi(config)).build().unwrap();
        monitor.register("s", "w");
        let wheel = || monitor.inner.shards.iter().map(|Padded(s)| s.lock().wheel.len()).sum::<usize>();
        let mut most = 0;
        for _ in 0..20_000 {
            clock.advance(Duration::from_millis(1));
            assert!(monitor.beat("s"));
            most = most.max(wheel());
        }
        assert!(most <= 2 + 64, "{most} wheel entries for one session");
        let generation = {
            let hash = monitor.inner.hasher.hash_one("s");
            let shard = monitor.inner.shard(hash).lock();
            let slot = shard.find(hash, "s").unwrap();
            shard.sessions[slot as usize].generation
        };
        // The loop did arm new entries (else this test proves nothing).
        assert!(generation > 100, "generation {generation}");
    }

    #[test]
    fn stale_wheel_entries_are_compacted() {
        let monitor = Monitor::builder().build().unwrap();
        let grace = RegisterOptions { grace: Some(MAX_TIMEOUT), ..Default::default() };
        monitor.register_with("s", "w", grace).unwrap();
        for _ in 0..10_000 {
            monitor.pause("s");
            monitor.resume_with_grace("s", Duration::MAX);
            monitor.register_with("s", "w", grace).unwrap();
        }
        let total: usize = monitor.inner.shards.iter().map(|Padded(s)| s.lock().wheel.len()).sum();
        assert!(total <= 2 + 64, "{total} heap entries for one session");
    }

    #[test]
    fn the_sweeper_threads_pause_guard_suppresses_a_late_round() {
        use crate::clock::ManualClock;
        for guard in [true, false] {
            let clock = ManualClock::new();
            let mut builder = Monitor::builder().clock(clock.clone());
            if !guard {
                builder = builder.pause_guard(None);
            }
            let monitor = builder.build().unwrap();
            let events = monitor.subscribe();
            monitor.register("s1", "worker");
            // What the sweeper thread runs.
            let sweep = |secs| {
                clock.advance(Duration::from_secs(secs));
                monitor.inner.sweep(true);
            };
            sweep(5);
            sweep(5); // t = 10
            sweep(60); // t = 70: this process was stopped for a minute
            let warned = events.try_iter().any(|e| matches!(e, Event::Warning { .. }));
            assert_eq!(warned, !guard, "guard {guard}");
            if guard {
                assert_eq!(monitor.status("s1").unwrap().missed_beats, 0);
                sweep(5); // t = 75: an on-time round counts again
                assert!(matches!(events.try_recv(), Ok(Event::Warning { .. })));
            }
        }
    }

    #[test]
    fn a_phi_session_is_looked_at_when_its_deadline_comes_earlier() {
        use crate::clock::ManualClock;
        let clock = ManualClock::new();
        let config = PhiConfig { acceptable_pause: Duration::ZERO, ..PhiConfig::default() };
        let monitor =
            Monitor::builder().clock(clock.clone()).detector(Detector::Phi(config)).build().unwrap();
        monitor.register("p", "w");
        let armed = || {
            let (shard, slot, _) = monitor.inner.locate("p").unwrap();
            let s = &shard.sessions[slot as usize];
            monitor.inner.deadline_of(s)
        };
        let first = armed();
        // Beats every 100 ms: the expected 10 s interval shrinks fast.
        for _ in 0..50 {
            clock.advance(Duration::from_millis(100));
            assert!(monitor.beat("p"));
        }
        assert!(armed() < first, "{} not before {first}", armed());
        // Silent from t = 5 s, it is warned about at the earlier deadline
        // (about 12.4 s: mean 0.49 s, std 1.9 s with the seeds), well before
        // the first one (19.1 s: 10 s + y(4) * 2.5 s).
        let events = monitor.subscribe();
        for _ in 0..100 {
            clock.advance(Duration::from_millis(100));
            monitor.maintain();
            monitor.sweep();
            if events.try_iter().any(|e| matches!(e, Event::Warning { .. })) {
                assert!(monitor.inner.now() < first, "warned at {} ns", monitor.inner.now());
                return;
            }
        }
        panic!("not warned by t = 15 s");
    }

    #[test]
    fn a_session_stays_small() {
        assert!(std::mem::size_of::<Session>() <= 48, "{}", std::mem::size_of::<Session>());
        // With the allocator's 8-byte header, a 64-byte block.
        assert!(std::mem::size_of::<Rules>() <= 56, "{}", std::mem::size_of::<Rules>());
    }
}
