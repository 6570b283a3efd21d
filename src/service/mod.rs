//! The session monitor as a service: a [`Monitor`] behind an HTTP API and a
//! UDP intake, so that any process, in any language, on any host, can beat it.
//!
//! [`MonitorService::start`] takes a built monitor and runs, each on a thread
//! of its own: the monitor's sweeper, the HTTP front ([`crate::http`]), the
//! UDP intake, an event thread (Server-Sent Events, counters, hooks), the
//! hook thread ([`HookConfig`]), with a state file the saver and, once
//! [`MonitorService::publish_to_etcd`] is called, the etcd publisher
//! ([`MonitorPublisher`]). Every one of them is stopped and joined by
//! [`MonitorService::stop`] (or drop).
//!
//! The HTTP API, UDP format, hooks and state file are described in the
//! README under "Session monitor as a service"; `heartbeat monitor` is this
//! service as a command.

pub(crate) mod api;
mod hooks;
pub(crate) mod persist;
pub(crate) mod udp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, select};
use parking_lot::Mutex;

pub use self::hooks::{HookConfig, check_hook_command};
use self::hooks::{HookEvent, HookJob, Hooks};
pub use self::persist::{load_state, read_token_file, save_state};
use crate::error::{Error, Result};
use crate::etcd::{MonitorPublisher, Presence, PresenceStatus};
use crate::http::{HttpConfig, HttpServer, StreamSink};
use crate::monitor::{Event, Monitor, MonitorGuard, RemovalReason};
use crate::state::format_timestamp;
use crate::ticker::Ticker;

/// The port `heartbeat monitor` listens on by default, for HTTP and UDP.
pub const DEFAULT_PORT: u16 = 9333;

/// Events waiting for the event thread at most; more are dropped and
/// counted (`heartbeat_monitor_events_dropped_total`).
pub const EVENT_QUEUE: usize = 65_536;

/// Agent types are at most this long (bytes), without control characters.
pub const MAX_AGENT_TYPE: usize = 128;

/// Whether `agent_type` is one the service takes.
pub(crate) fn valid_agent_type(agent_type: &str) -> bool {
    !agent_type.is_empty() && agent_type.len() <= MAX_AGENT_TYPE && !agent_type.chars().any(char::is_control)
}

/// What the API would refuse is refused from a state file too: bad ids or
/// agent types, more sessions than allowed.
pub(crate) fn check_restored(
    path: &std::path::Path,
    sessions: &[crate::monitor::SessionSnapshot],
    max: usize,
) -> Result<()> {
    let bad = |why: String| Error::InvalidConfig(format!("monitor state file {} {why}", path.display()));
    if sessions.len() > max {
        return Err(bad(format!(
            "holds {} sessions, more than the {max} allowed (--max-sessions)",
            sessions.len()
        )));
    }
    for s in sessions {
        if !crate::monitor::valid_session_id(&s.session_id) {
            return Err(bad(format!("has a bad session id {:?}", s.session_id)));
        }
        if !valid_agent_type(&s.agent_type) {
            return Err(bad(format!("has a bad agent type {:?} for session {}", s.agent_type, s.session_id)));
        }
    }
    Ok(())
}

/// How a [`MonitorService`] listens and what it allows.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The HTTP front: address, limits, and the `Host` names it answers for
    /// ([`HttpConfig::allow_hosts`]; refused `403` otherwise, as is a `PUT`,
    /// `POST`, `DELETE` or `/ping` from another site's web page unless
    /// [`HttpConfig::allow_cross_site`]). Default: `127.0.0.1:9333`, its IP
    /// addresses and `localhost` only, no request from another site.
    pub http: HttpConfig,
    /// Where UDP beats are taken, if anywhere. Default: `127.0.0.1:9333`.
    pub udp: Option<SocketAddr>,
    /// The receive buffer asked of the kernel for the UDP socket, so that a
    /// burst waits there instead of being dropped. Default 4 MiB; the kernel
    /// may grant less (`net.core.rmem_max`) unless the process may force it.
    pub udp_receive_buffer: usize,
    /// Sessions at most; a registration beyond it gets `507` and changes
    /// nothing. Default 1,000,000.
    pub max_sessions: usize,
    /// When set, every HTTP request needs `Authorization: Bearer <token>` and
    /// every datagram starts with `<token> `. Printable ASCII, no spaces.
    pub token: Option<String>,
    /// Commands run on events.
    pub hooks: HookConfig,
    /// Where the registry is saved (atomically, every `save_interval` and at
    /// stop) and restored from at start.
    pub state_file: Option<PathBuf>,
    /// Start empty even when `state_file` exists (it is overwritten at the
    /// first save).
    pub state_reset: bool,
    /// Time between saves of the state file. Default 10 s.
    pub save_interval: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT));
        ServiceConfig {
            http: HttpConfig { listen: addr, ..HttpConfig::default() },
            udp: Some(addr),
            udp_receive_buffer: 4 << 20,
            max_sessions: 1_000_000,
            token: None,
            hooks: HookConfig::default(),
            state_file: None,
            state_reset: false,
            save_interval: Duration::from_secs(10),
        }
    }
}

/// Counters the API, the UDP intake and the event thread keep, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) beats_http: AtomicU64,
    pub(crate) beats_ping: AtomicU64,
    pub(crate) beats_udp: AtomicU64,
    pub(crate) unknown_http: AtomicU64,
    pub(crate) unknown_udp: AtomicU64,
    pub(crate) datagrams: AtomicU64,
    pub(crate) datagrams_malformed: AtomicU64,
    pub(crate) datagrams_unauthorized: AtomicU64,
    pub(crate) unauthorized_http: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) events_warning: AtomicU64,
    pub(crate) events_recovered: AtomicU64,
    pub(crate) events_timed_out: AtomicU64,
    pub(crate) events_failed: AtomicU64,
    pub(crate) events_removed: AtomicU64,
    pub(crate) saves_failed: AtomicU64,
    pub(crate) walks_refused: AtomicU64,
}

/// What the HTTP handler, the UDP thread and the event thread share.
pub(crate) struct Shared {
    pub(crate) monitor: Monitor,
    pub(crate) max_sessions: usize,
    pub(crate) token: Option<Box<[u8]>>,
    pub(crate) counters: Counters,
    pub(crate) hooks: Arc<hooks::HookCounters>,
    /// Open `/events` streams.
    pub(crate) streams: Mutex<Vec<StreamSink>>,
    /// Runs started with `/ping/{id}/start` and not yet ended by a ping.
    pub(crate) runs: Mutex<hashbrown::HashMap<Box<str>, SystemTime>>,
    /// Tokens for walks over every session (pages; scrapes), and when they
    /// were counted.
    pub(crate) walks: Mutex<(f64, std::time::Instant)>,
    pub(crate) scrapes: Mutex<(f64, std::time::Instant)>,
    /// The HTTP server, for its counters (weak: it owns the handler that owns this).
    pub(crate) http: OnceLock<Weak<HttpServer>>,
    /// Whether the sweeper runs: `/health` says 503 otherwise.
    pub(crate) sweeping: std::sync::atomic::AtomicBool,
    /// The etcd presence sessions are published through, once set: its
    /// state goes on `/status` and `/metrics`.
    pub(crate) etcd: OnceLock<Presence>,
}

impl Shared {
    /// A bare one around `monitor`, for tests of one part and the fuzz checks.
    pub(crate) fn for_tests(monitor: Monitor) -> Shared {
        let now = monitor.clock().now();
        Shared {
            monitor,
            max_sessions: 1_000_000,
            token: None,
            counters: Counters::default(),
            hooks: Arc::default(),
            streams: Mutex::new(Vec::new()),
            runs: Mutex::new(hashbrown::HashMap::new()),
            walks: Mutex::new((api::WALK_BUDGET, now)),
            scrapes: Mutex::new((api::WALK_BUDGET, now)),
            http: OnceLock::new(),
            sweeping: std::sync::atomic::AtomicBool::new(false),
            etcd: OnceLock::new(),
        }
    }

    /// Whether `presented` is the token, compared in constant time for
    /// tokens of equal length. `true` when no token is set.
    pub(crate) fn token_ok(&self, presented: Option<&[u8]>) -> bool {
        match (&self.token, presented) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(token), Some(p)) => constant_time_eq(token, p),
        }
    }
}

/// Compares the secret `a` with the presented `b`, in time that depends on
/// `b`'s length alone.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.is_empty() {
        return b.is_empty();
    }
    // Time depends on the presented length only, never on where they differ
    // or on the secret's length.
    let mut diff = u8::from(a.len() != b.len());
    for (i, y) in b.iter().enumerate() {
        diff |= a[i % a.len()] ^ y;
    }
    // Keep the compiler from short-circuiting the fold.
    std::hint::black_box(diff) == 0
}

/// Checks a token's shape: 1 to 512 bytes of printable ASCII, no spaces
/// (a datagram's token ends at its first space).
pub fn check_token(token: &str) -> Result<()> {
    if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidConfig(
            "the token must be 1 to 512 printable ASCII characters without spaces".into(),
        ));
    }
    Ok(())
}

/// A running monitor service. Stops on [`stop`](Self::stop) or drop.
///
/// ```
/// use heartbeat::Monitor;
/// use heartbeat::http::HttpConfig;
/// use heartbeat::service::{MonitorService, ServiceConfig};
///
/// let monitor = Monitor::builder().build()?;
/// let service = MonitorService::builder()
///     .listen(([127, 0, 0, 1], 0))
///     .udp(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
///     .max_sessions(10_000)
///     .start(monitor)?;
/// println!("curl -fsS http://{}/ping/backup", service.http_addr());
/// service.stop()?;
/// # Ok::<(), heartbeat::Error>(())
/// ```
pub struct MonitorService {
    shared: Arc<Shared>,
    http: Arc<HttpServer>,
    udp: Mutex<Option<udp::Intake>>,
    udp_addr: Option<SocketAddr>,
    state_file: Option<PathBuf>,
    restored: usize,
    running: Mutex<Option<Running>>,
    publisher: Mutex<Option<MonitorPublisher>>,
}

struct Running {
    sweeper: MonitorGuard,
    hooks: Hooks,
    /// Dropped to stop the event thread and the saver.
    stop: Sender<()>,
    events: JoinHandle<()>,
    saver: Option<JoinHandle<()>>,
}

crate::builder::config_builder! {
    /// Configures a [`MonitorService`]: get one from
    /// [`MonitorService::builder`], set what differs from the defaults, then
    /// [`start`](Self::start) it with its [`Monitor`].
    pub struct ServiceBuilder for ServiceConfig {
        set {
            http: HttpConfig,
            udp_receive_buffer: usize,
            max_sessions: usize,
            hooks: HookConfig,
            state_reset: bool,
            save_interval: Duration,
        }
        into { udp: Option<SocketAddr> }
        some { token: String, state_file: PathBuf }
    }
}

impl ServiceBuilder {
    /// Where the HTTP API listens ([`HttpConfig::listen`] of [`ServiceConfig::http`]).
    pub fn listen(mut self, addr: impl Into<SocketAddr>) -> Self {
        self.config.http.listen = addr.into();
        self
    }

    /// Starts the service over `monitor` ([`MonitorService::start`]).
    pub fn start(self, monitor: Monitor) -> Result<MonitorService> {
        MonitorService::start(monitor, self.config)
    }
}

impl MonitorService {
    /// A builder with the defaults of [`ServiceConfig::default`].
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// Restores the state file (unless `state_reset`), binds the HTTP and
    /// UDP sockets, starts the monitor's sweeper and every thread of the
    /// service. A state file that exists but cannot be read or parsed is an
    /// error: starting empty would silently forget every session.
    pub fn start(monitor: Monitor, config: ServiceConfig) -> Result<MonitorService> {
        if let Some(token) = &config.token {
            check_token(token)?;
        }
        if config.max_sessions == 0 {
            return Err(Error::InvalidConfig("max_sessions must be at least 1".into()));
        }
        if config.save_interval.is_zero() {
            return Err(Error::InvalidConfig("the state save interval must be positive".into()));
        }
        let mut restored = 0;
        if let Some(path) = config.state_file.as_deref().filter(|_| !config.state_reset)
            && let Some(sessions) = load_state(path)?
        {
            check_restored(path, &sessions, config.max_sessions)?;
            restored = monitor.restore(&sessions)?;
            log::info!("restored {restored} sessions from {}", path.display());
        }

        let hooks = Hooks::start(config.hooks.clone())?;
        let shared = Arc::new(Shared {
            monitor: monitor.clone(),
            max_sessions: config.max_sessions,
            token: config.token.as_deref().map(|t| t.as_bytes().into()),
            counters: Counters::default(),
            hooks: hooks.counters.clone(),
            streams: Mutex::new(Vec::new()),
            runs: Mutex::new(hashbrown::HashMap::new()),
            walks: Mutex::new((api::WALK_BUDGET, monitor.clock().now())),
            scrapes: Mutex::new((api::WALK_BUDGET, monitor.clock().now())),
            http: OnceLock::new(),
            sweeping: std::sync::atomic::AtomicBool::new(false),
            etcd: OnceLock::new(),
        });
        // Subscribe before anything can happen, so no event is missed; a
        // bounded channel, so that a burst (a million sessions timing out at
        // once, a client failing in a loop) costs dropped events, counted,
        // and never unbounded memory.
        let events = monitor.subscribe_bounded(EVENT_QUEUE);
        let sweeper = monitor.start()?;
        shared.sweeping.store(true, Ordering::SeqCst);

        let handler = api::Api::new(shared.clone());
        let http = Arc::new(HttpServer::start(config.http.clone(), Arc::new(handler))?);
        let _ = shared.http.set(Arc::downgrade(&http));
        let udp = match config.udp {
            Some(addr) => Some(udp::Intake::start(addr, config.udp_receive_buffer, shared.clone())?),
            None => None,
        };
        let udp_addr = udp.as_ref().map(udp::Intake::local_addr);

        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let events = {
            let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
            let hook_queue = hooks.sender();
            thread::Builder::new()
                .name("heartbeat-events".into())
                .spawn(move || forward_events(&shared, &events, &stop_rx, &hook_queue))?
        };
        let saver = match &config.state_file {
            Some(path) => {
                let (monitor, path, every) = (monitor.clone(), path.clone(), config.save_interval);
                let shared = shared.clone();
                Some(thread::Builder::new().name("heartbeat-saver".into()).spawn(move || {
                    let mut ticker = Ticker::new(monitor.clock().clone(), every, every);
                    while ticker.wait(&stop_rx) {
                        if ticker.due()
                            && let Err(e) = save_state(&path, &monitor)
                        {
                            shared.counters.saves_failed.fetch_add(1, Ordering::Relaxed);
                            log::error!("{e}");
                        }
                    }
                })?)
            }
            None => None,
        };
        log::info!(
            "monitor service: http://{}/ {}",
            http.local_addr(),
            match udp_addr {
                Some(a) => format!("and udp {a}"),
                None => "(no udp)".into(),
            }
        );
        Ok(MonitorService {
            shared,
            http,
            udp: Mutex::new(udp),
            udp_addr,
            state_file: config.state_file,
            restored,
            running: Mutex::new(Some(Running { sweeper, hooks, stop, events, saver })),
            publisher: Mutex::new(None),
        })
    }

    /// The HTTP address (the real port when started on port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The UDP address, if UDP beats are taken.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The monitor behind the service.
    pub fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

    /// Sessions restored from the state file at start.
    pub fn restored(&self) -> usize {
        self.restored
    }

    /// Publishes the monitor's sessions to etcd through `presence` (one key
    /// per session under the presence's lease, written on change only; see
    /// [`MonitorPublisher`]) under `prefix`, with a process key whose
    /// metadata names this service's addresses (`role` `monitor`, `http`,
    /// `udp`). `/status` and `/metrics` then report the presence's state
    /// (`etcd`, `heartbeat_etcd_*`). Once per service: a second call is an
    /// [`Error::InvalidConfig`]. [`stop`](Self::stop) stops the publisher;
    /// stopping the presence (which revokes its lease) is its owner's.
    pub fn publish_to_etcd(&self, presence: &Presence, prefix: &str) -> Result<()> {
        let mut slot = self.publisher.lock();
        if slot.is_some() || self.shared.etcd.get().is_some() {
            return Err(Error::InvalidConfig("this service already publishes to etcd".into()));
        }
        let mut metadata = serde_json::Map::new();
        metadata.insert("role".into(), "monitor".into());
        metadata.insert("http".into(), self.http_addr().to_string().into());
        if let Some(udp) = self.udp_addr {
            metadata.insert("udp".into(), udp.to_string().into());
        }
        *slot = Some(MonitorPublisher::start(&self.shared.monitor, presence, prefix, metadata)?);
        let _ = self.shared.etcd.set(presence.clone());
        Ok(())
    }

    /// The etcd presence's state, when [`publish_to_etcd`](Self::publish_to_etcd)
    /// was called.
    pub fn etcd_status(&self) -> Option<PresenceStatus> {
        self.shared.etcd.get().map(Presence::status)
    }

    /// Whether it runs: every thread of it up (HTTP, UDP, sweeper, events,
    /// hooks, saver, etcd publisher).
    pub fn is_running(&self) -> bool {
        let running = self.running.lock();
        let Some(r) = running.as_ref() else { return false };
        self.http.is_running()
            && self.shared.monitor.is_running()
            && self.udp.lock().as_ref().is_none_or(udp::Intake::is_running)
            && !r.events.is_finished()
            && r.saver.as_ref().is_none_or(|s| !s.is_finished())
            && r.hooks.is_running()
            && self.publisher.lock().as_ref().is_none_or(MonitorPublisher::is_running)
    }

    /// Stops taking beats (HTTP and UDP), stops the sweeper (so that nobody
    /// times out during the stop), writes the state file a last time, then
    /// stops the event and hook threads (killing hooks still running).
    /// Idempotent; the error is the last save's.
    pub fn stop(&self) -> Result<()> {
        let Some(running) = self.running.lock().take() else { return Ok(()) };
        if let Some(publisher) = self.publisher.lock().take() {
            publisher.stop();
        }
        self.http.stop();
        if let Some(mut udp) = self.udp.lock().take() {
            udp.stop();
        }
        drop(running.sweeper);
        self.shared.sweeping.store(false, Ordering::SeqCst);
        drop(running.stop);
        if let Some(saver) = running.saver
            && saver.join().is_err()
        {
            log::error!("state saver thread panicked");
        }
        let saved = match &self.state_file {
            Some(path) => save_state(path, &self.shared.monitor),
            None => Ok(()),
        };
        if running.events.join().is_err() {
            log::error!("event thread panicked");
        }
        let mut hooks = running.hooks;
        hooks.stop();
        self.shared.streams.lock().clear();
        saved
    }
}

impl Drop for MonitorService {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("{e}");
        }
    }
}

impl std::fmt::Debug for MonitorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorService")
            .field("http", &self.http_addr())
            .field("udp", &self.udp_addr)
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

/// The event thread: counts each event, queues its hook, and sends it to
/// every open `/events` stream.
fn forward_events(
    shared: &Shared,
    events: &Receiver<Event>,
    stop: &Receiver<()>,
    hooks: &Option<hooks::HookSender>,
) {
    let c = &shared.counters;
    loop {
        let event = select! {
            recv(stop) -> _ => return,
            recv(events) -> event => match event {
                Ok(event) => event,
                Err(_) => return,
            },
        };
        let (hook, id) = match &event {
            Event::Warning { session_id, .. } => {
                c.events_warning.fetch_add(1, Ordering::Relaxed);
                (Some(HookEvent::Warning), session_id)
            }
            Event::Recovered { session_id } => {
                c.events_recovered.fetch_add(1, Ordering::Relaxed);
                (Some(HookEvent::Recovered), session_id)
            }
            Event::TimedOut { session_id, .. } => {
                c.events_timed_out.fetch_add(1, Ordering::Relaxed);
                (Some(HookEvent::TimedOut), session_id)
            }
            Event::Failed { session_id, .. } => {
                c.events_failed.fetch_add(1, Ordering::Relaxed);
                (Some(HookEvent::Failed), session_id)
            }
            Event::Removed { session_id, .. } => {
                c.events_removed.fetch_add(1, Ordering::Relaxed);
                shared.runs.lock().remove(session_id.as_str());
                (None, session_id)
            }
        };
        if let (Some(hook), Some(hooks)) = (hook, hooks)
            && hooks.wants(hook)
        {
            let status = shared.monitor.status(id);
            let agent_type = match &event {
                Event::TimedOut { agent_type, .. } | Event::Failed { agent_type, .. } => agent_type.clone(),
                _ => status.as_ref().map(|s| s.agent_type.clone()).unwrap_or_default(),
            };
            let missed = match &event {
                Event::Warning { missed_beats, .. } | Event::TimedOut { missed_beats, .. } => *missed_beats,
                _ => status.as_ref().map_or(0, |s| s.missed_beats),
            };
            hooks.submit(HookJob { event: hook, session_id: id.clone(), agent_type, missed });
        }
        let mut streams = shared.streams.lock();
        if !streams.is_empty() {
            let mut line = Vec::with_capacity(160);
            line.extend_from_slice(b"data: ");
            let _ = serde_json::to_writer(&mut line, &event_json(&event, SystemTime::now()));
            line.extend_from_slice(b"\n\n");
            streams.retain(|sink| sink.send(&line));
        }
    }
}

/// An event as `/events` sends it: one JSON object.
pub(crate) fn event_json(event: &Event, at: SystemTime) -> serde_json::Value {
    use serde_json::json;
    let time = format_timestamp(at);
    match event {
        Event::Warning { session_id, missed_beats, phi } => {
            json!({"event": "warning", "session_id": session_id, "missed_beats": missed_beats, "phi": phi, "time": time})
        }
        Event::Recovered { session_id } => {
            json!({"event": "recovered", "session_id": session_id, "time": time})
        }
        Event::TimedOut { session_id, agent_type, missed_beats } => {
            json!({"event": "timed_out", "session_id": session_id, "agent_type": agent_type,
                   "missed_beats": missed_beats, "time": time})
        }
        Event::Failed { session_id, agent_type } => {
            json!({"event": "failed", "session_id": session_id, "agent_type": agent_type, "time": time})
        }
        Event::Removed { session_id, reason } => {
            let reason = match reason {
                RemovalReason::TimedOut => "timed_out",
                RemovalReason::Unregistered => "unregistered",
            };
            json!({"event": "removed", "session_id": session_id, "reason": reason, "time": time})
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::clock::ManualClock;

    fn loopback() -> ServiceConfig {
        ServiceConfig {
            http: HttpConfig { listen: "127.0.0.1:0".parse().unwrap(), ..HttpConfig::default() },
            udp: Some("127.0.0.1:0".parse().unwrap()),
            ..ServiceConfig::default()
        }
    }

    fn status_of(agent: &ureq::Agent, url: &str) -> u16 {
        agent.get(url).call().unwrap().status().as_u16()
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into()
    }

    #[test]
    fn walks_over_every_session_have_a_budget() {
        // The manual clock never moves: no token comes back.
        let monitor = Monitor::builder().clock(ManualClock::new()).build().unwrap();
        let service = MonitorService::start(monitor, ServiceConfig { udp: None, ..loopback() }).unwrap();
        let agent = agent();
        let page = format!("http://{}/sessions", service.http_addr());
        let budget = api::WALK_BUDGET as usize;
        for _ in 0..budget {
            assert_eq!(status_of(&agent, &page), 200);
        }
        let refused = agent.get(&page).call().unwrap();
        assert_eq!(refused.status().as_u16(), 503);
        assert_eq!(refused.headers().get("retry-after").unwrap(), "1");
        // Scrapes have a bucket of their own: paging does not starve them.
        let metrics = format!("http://{}/metrics", service.http_addr());
        for _ in 0..budget {
            assert_eq!(status_of(&agent, &metrics), 200);
        }
        assert_eq!(status_of(&agent, &metrics), 503);
        // What does not walk is not held back.
        assert_eq!(status_of(&agent, &format!("http://{}/health", service.http_addr())), 200);
        assert_eq!(service.shared.counters.walks_refused.load(Ordering::Relaxed), 2);
        service.stop().unwrap();
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let config = ServiceConfig { udp: None, token: Some("t0ken".into()), ..loopback() };
        let service = MonitorService::start(Monitor::builder().build().unwrap(), config).unwrap();
        let url = format!("http://{}/health", service.http_addr());
        let agent = agent();
        for (header, code) in [
            ("Bearer t0ken", 200),
            ("bearer t0ken", 200),
            ("BEARER t0ken", 200),
            ("Bearer t0ke", 401),
            ("Basic t0ken", 401),
            ("Bearer", 401),
        ] {
            let got = agent.get(&url).header("Authorization", header).call().unwrap().status().as_u16();
            assert_eq!(got, code, "{header}");
        }
        service.stop().unwrap();
    }

    #[test]
    fn a_state_file_with_what_the_api_refuses_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let session = |id: &str, extra: &str| {
            format!(
                r#"{{"session_id": "{id}", "agent_type": "w", "last_beat": "2026-01-01T00:00:00Z"{extra}}}"#
            )
        };
        for (sessions, says) in [
            (session("bad id", ""), "bad session id"),
            (format!("{}, {}", session("a", ""), session("b", "")), "more than the 1 allowed"),
        ] {
            std::fs::write(
                &path,
                format!(r#"{{"format": "heartbeat-monitor-state", "version": 1, "saved_at": "x", "sessions": [{sessions}]}}"#),
            )
            .unwrap();
            let config =
                ServiceConfig { udp: None, state_file: Some(path.clone()), max_sessions: 1, ..loopback() };
            let e =
                MonitorService::start(Monitor::builder().build().unwrap(), config).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(check_token("s3cr3t-token_=").is_ok());
        for bad in ["", "has space", "tab\t", "é", &"x".repeat(513)] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
    }
}
