//! The hub: one mio I/O thread that owns every socket, and one sweep thread
//! that decides the heartbeat and hands its commands to the I/O thread over a
//! channel, waking its poll.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, select};
use mio::net::TcpListener;
use mio::{Poll, Waker};
use parking_lot::Mutex;

use super::auth::{self, Mode};
use super::io::{Control, Io, WAKER};
use super::limits::Limits;
use super::registry::{CounterSnapshot, Counters, PeerStatus, Registry};
use super::sweep::{
    Command, Due, EvictReason, Schedule, SweepConfig, later, pinged_ids, pong_timeouts, sweep,
};
use super::wire::{self, Location};
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};

/// The port JoinMarket directory nodes listen on by convention.
pub const DEFAULT_PORT: u16 = 5222;

/// How a [`Hub`] runs. Start from `HubConfig::default()` and set what differs.
#[derive(Clone)]
pub struct HubConfig {
    /// Where to listen. Default `127.0.0.1:5222`: loopback only.
    pub listen: SocketAddr,
    /// The network peers must handshake for. Default `mainnet`.
    pub network: String,
    /// The directory's own nick; `None` draws a random one.
    pub nick: Option<String>,
    /// A message of the day for the handshake reply. Default [`DEFAULT_MOTD`].
    pub motd: Option<String>,
    /// Heartbeat timing.
    pub sweep: SweepConfig,
    /// Handshaked peers at most. A handshake beyond gets a 795 with
    /// `"accepted": false` and the motd `Rejected: Maximum peers reached`,
    /// then a close. Default 20,000.
    pub max_peers: usize,
    /// Connections not yet handshaked at most. When the pool is full, the
    /// oldest is closed to admit the newcomer: real clients handshake within
    /// milliseconds, and idle sockets never keep them out. Default 1,000.
    pub max_pending: usize,
    /// Longest line accepted, terminator included. Default [`wire::MAX_LINE`].
    pub max_line: usize,
    /// Output queued for one peer at most, in bytes. A relayed message that
    /// would pass it is dropped for that peer (counted `slow_recipient`);
    /// the hub's own output (hints, PONGs, PINGs, notices) has as much again
    /// on top, and past twice this the peer is evicted as a slow consumer.
    /// Its GETPEERLIST answer, one at a time, is not counted. Default 2 MiB.
    pub max_queued: usize,
    /// Output queued for all peers at most, a broadcast buffer counted once
    /// however many queues hold it. Past it the peers with the largest queues
    /// are evicted first. Default 256 MiB.
    pub max_queued_total: usize,
    /// A peer whose output queue has not drained for this long is evicted as
    /// a slow consumer, whatever it sends. Default 30 s.
    pub write_deadline: Duration,
    /// `SO_SNDBUF` of each connection, in bytes (Linux allocates twice
    /// this): what the kernel holds for a peer that does not read. 0 leaves
    /// the kernel's autotuning (up to `tcp_wmem`'s maximum, 4 MiB). Default 32 KiB.
    pub send_buffer: usize,
    /// `SO_RCVBUF` of each connection, in bytes; 0 leaves the kernel's
    /// autotuning. Default 64 KiB.
    pub receive_buffer: usize,
    /// Each peer's message budgets.
    pub limits: Limits,
    /// Departures are told at most once per interval, every departure since
    /// the last in one write per peer (as many PEERLIST lines as the max
    /// line needs). Default 1 s.
    pub notice_interval: Duration,
    /// Announce departed takers too (joinmarket-ng does). Default `false`:
    /// a taker's presence is private, so it leaves silently and is never
    /// listed.
    pub announce_takers: bool,
    /// A connection must handshake within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// The directory id of JMP-0005 nick authentication: what clients
    /// expect for the endpoint they dial (for an onion service, its
    /// `<56 base32>.onion:<port>`), bound into every challenge and proof.
    /// `None` (default): nick authentication is off and not advertised.
    pub nick_auth_id: Option<String>,
    /// With a `nick_auth_id`: [`Mode::Prefer`] (default) challenges the
    /// clients that advertise `nick_auth` and admits the others
    /// unauthenticated; [`Mode::Require`] refuses the others with a 795
    /// `accepted: false`, motd `Rejected: verified nick authentication
    /// required`; [`Mode::Off`] neither advertises nor challenges.
    pub nick_auth: Mode,
    /// A challenged client must send its proof within this. At most (and
    /// by default) 30 s, joinmarket-ng's cap.
    pub nick_auth_timeout: Duration,
    /// Nick-auth challenges sent per second at most, over all connections
    /// (a burst of as many): each lets one proof in, and checking a proof
    /// costs the I/O thread about 80 µs, so a flood of connections that
    /// each send one cannot take more than this many checks a second. Past
    /// it a client offering nick authentication gets a 795 `accepted:
    /// false`, motd `Rejected: too many nick authentications, try again
    /// later`, and reconnects after its backoff. Default 1,000.
    pub max_challenges_per_sec: u32,
    /// A sweep later than this was held up by a stall of the hub itself (a
    /// stopped process, a suspended machine): the stall counts against no
    /// peer's idle time or pong wait, and what peers sent meanwhile is read
    /// before deciding. Default 2 s.
    pub stall_threshold: Duration,
    /// The clock for last-seen times and the sweep schedule. Default: the system's.
    pub clock: SharedClock,
}

/// The message of the day a hub sends by default.
pub const DEFAULT_MOTD: &str =
    "heartbeat directory node: messages are relayed, never stored; peers that stop answering are dropped";

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            network: "mainnet".into(),
            nick: None,
            motd: Some(DEFAULT_MOTD.into()),
            sweep: SweepConfig::default(),
            max_peers: 20_000,
            max_pending: 1_000,
            max_line: wire::MAX_LINE,
            max_queued: 2 << 20,
            max_queued_total: 256 << 20,
            write_deadline: Duration::from_secs(30),
            send_buffer: 32 << 10,
            receive_buffer: 64 << 10,
            limits: Limits::default(),
            notice_interval: Duration::from_secs(1),
            announce_takers: false,
            handshake_timeout: Duration::from_secs(10),
            nick_auth_id: None,
            nick_auth: Mode::Prefer,
            nick_auth_timeout: auth::MAX_TIMEOUT,
            max_challenges_per_sec: 1_000,
            stall_threshold: Duration::from_secs(2),
            clock: Arc::new(SystemClock),
        }
    }
}

impl HubConfig {
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        self.sweep.validate().or_else(bad)?;
        if self.network.is_empty() {
            return bad("the network must not be empty".into());
        }
        if let Some(nick) = &self.nick
            && !wire::is_valid_nick(nick)
        {
            return bad(format!("{nick:?} is not a nick: J5, then base58, 16 characters padded with O"));
        }
        self.limits.validate().or_else(bad)?;
        if self.max_peers == 0 || self.max_pending == 0 || self.max_queued == 0 || self.max_queued_total == 0
        {
            return bad("max peers, max pending, max queued and max queued total must be positive".into());
        }
        if self.handshake_timeout.is_zero() || self.write_deadline.is_zero() || self.notice_interval.is_zero()
        {
            return bad("the handshake timeout, write deadline and notice interval must be positive".into());
        }
        if let Some(id) = &self.nick_auth_id {
            auth::check_directory_id(id).or_else(bad)?;
        } else if self.nick_auth == Mode::Require {
            return bad("nick authentication cannot be required without a directory id".into());
        }
        if self.max_challenges_per_sec == 0 {
            return bad("max challenges per second must be positive".into());
        }
        if self.nick_auth_timeout.is_zero() || self.nick_auth_timeout > auth::MAX_TIMEOUT {
            return bad(format!(
                "the nick-auth timeout {:?} is outside (0, {:?}]",
                self.nick_auth_timeout,
                auth::MAX_TIMEOUT
            ));
        }
        if self.max_line < 64 || self.max_line > wire::MAX_LINE {
            return bad(format!(
                "max line {} is outside 64..={}: peers drop longer lines, and a handshake needs 64",
                self.max_line,
                wire::MAX_LINE
            ));
        }
        Ok(())
    }
}

/// Something that happened to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// A handshake was accepted.
    Joined {
        /// The connection id.
        id: u64,
        /// The peer's nick.
        nick: String,
        /// Where it serves.
        location: Location,
        /// Whether it advertised ping.
        ping: bool,
        /// Whether it proved its nick (JMP-0005 nick authentication).
        verified: bool,
    },
    /// A handshaked peer closed its connection, or it failed.
    Left {
        /// The connection id.
        id: u64,
        /// The peer's nick.
        nick: String,
        /// What happened, e.g. `closed by peer`.
        reason: String,
    },
    /// The hub evicted a handshaked peer.
    Evicted {
        /// The connection id.
        id: u64,
        /// The peer's nick.
        nick: String,
        /// Why.
        reason: EvictReason,
    },
    /// A connection that never became a peer was closed: a refused or
    /// malformed handshake, none in time, a failed or missing nick-auth
    /// proof, or a limit (the peer limit, or the pool of connections not yet
    /// handshaked was full). The `rejected`
    /// counter counts exactly these.
    Rejected {
        /// The remote address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// What the hub's threads share.
pub(super) struct Shared {
    pub(super) registry: Registry,
    pub(super) counters: Counters,
    subscribers: Mutex<Vec<Sender<HubEvent>>>,
    events_dropped: std::sync::atomic::AtomicU64,
    pub(super) nick: String,
    pub(super) clock: SharedClock,
}

impl Shared {
    pub(super) fn emit(&self, event: HubEvent) {
        let mut subscribers = self.subscribers.lock();
        if subscribers.is_empty() {
            return;
        }
        subscribers.retain(|s| match s.try_send(event.clone()) {
            Ok(()) => true,
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                self.events_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
        });
    }
}

/// A running peer hub: a TCP presence server speaking the JoinMarket
/// directory-node heartbeat. Stops on [`stop`](Hub::stop) or drop.
///
/// ```
/// use heartbeat::peer::{Hub, HubConfig};
/// let hub = Hub::start(HubConfig { listen: "127.0.0.1:0".parse()?, ..HubConfig::default() })?;
/// println!("listening on {} as {}", hub.local_addr(), hub.nick());
/// assert_eq!(hub.peer_count(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Hub {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    network: String,
    nick_auth: Mode,
    nick_auth_id: Option<String>,
    running: Mutex<Option<Running>>,
}

struct Running {
    control: Sender<Control>,
    waker: Arc<Waker>,
    stop_sweep: Sender<()>,
    io: JoinHandle<()>,
    sweep: JoinHandle<()>,
}

crate::builder::config_builder! {
    /// Configures a [`Hub`]: get one from [`Hub::builder`], set what differs
    /// from the defaults, then [`start`](Self::start).
    ///
    /// ```
    /// use heartbeat::peer::Hub;
    /// let hub = Hub::builder().listen(([127, 0, 0, 1], 0)).network("regtest").max_peers(100).start()?;
    /// assert_eq!(hub.network(), "regtest");
    /// # Ok::<(), heartbeat::Error>(())
    /// ```
    pub struct HubBuilder for HubConfig {
        set {
            sweep: SweepConfig,
            max_peers: usize,
            max_pending: usize,
            max_line: usize,
            max_queued: usize,
            max_queued_total: usize,
            write_deadline: Duration,
            send_buffer: usize,
            receive_buffer: usize,
            limits: Limits,
            notice_interval: Duration,
            announce_takers: bool,
            handshake_timeout: Duration,
            nick_auth: Mode,
            nick_auth_timeout: Duration,
            stall_threshold: Duration,
            max_challenges_per_sec: u32,
            clock: SharedClock,
        }
        into { listen: SocketAddr, network: String }
        some { nick: String, motd: String, nick_auth_id: String }
    }
}

impl HubBuilder {
    /// Checks the configuration, binds the listener and starts the hub
    /// ([`Hub::start`]).
    pub fn start(self) -> Result<Hub> {
        Hub::start(self.config)
    }
}

impl Hub {
    /// A builder with the defaults of [`HubConfig::default`].
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    /// Binds the listener and starts the I/O and sweep threads, with a
    /// configuration made by [`HubBuilder`] or by hand.
    pub fn start(config: HubConfig) -> Result<Hub> {
        config.validate()?;
        let (nick_auth, nick_auth_id) = match &config.nick_auth_id {
            Some(id) if config.nick_auth != Mode::Off => (config.nick_auth, Some(id.clone())),
            _ => (Mode::Off, None),
        };
        if nick_auth != Mode::Off {
            // Every challenge needs it: fail now rather than on each client.
            auth::random_challenge()?;
        }
        let listener = TcpListener::bind(config.listen).map_err(|e| {
            Error::Io(io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen)))
        })?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let shared = Arc::new(Shared {
            registry: Registry::default(),
            counters: Counters::default(),
            subscribers: Mutex::new(Vec::new()),
            events_dropped: std::sync::atomic::AtomicU64::new(0),
            nick: config.nick.clone().unwrap_or_else(wire::random_nick),
            clock: config.clock.clone(),
        });
        let (control, control_rx) = crossbeam_channel::unbounded();
        let (stop_sweep, stop_sweep_rx) = crossbeam_channel::bounded(1);
        let mut io = Io::new(poll, listener, control_rx, shared.clone(), &config)?;
        let io = thread::Builder::new().name("heartbeat-hub-io".into()).spawn(move || io.run())?;
        let sweeper = Sweeper {
            shared: shared.clone(),
            config: config.sweep,
            stall_threshold: config.stall_threshold,
            control: control.clone(),
            waker: waker.clone(),
        };
        let sweep = match thread::Builder::new()
            .name("heartbeat-hub-sweep".into())
            .spawn(move || sweeper.run(&stop_sweep_rx))
        {
            Ok(handle) => handle,
            Err(e) => {
                let _ = control.send(Control::Stop);
                let _ = waker.wake();
                let _ = io.join();
                return Err(e.into());
            }
        };
        log::info!(
            "hub {} listening on {local_addr} for {} (sweep {:?}, idle {:?}, hard evict {:?}, pong wait {:?})",
            shared.nick,
            config.network,
            config.sweep.sweep_interval,
            config.sweep.idle_threshold,
            config.sweep.hard_evict,
            config.sweep.pong_wait
        );
        Ok(Hub {
            shared,
            local_addr,
            network: config.network,
            nick_auth,
            nick_auth_id,
            running: Mutex::new(Some(Running { control, waker, stop_sweep, io, sweep })),
        })
    }

    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The directory's nick.
    pub fn nick(&self) -> &str {
        &self.shared.nick
    }

    /// The network it serves.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// A new subscription: a channel of every event from now on; dropping
    /// it unsubscribes. Unbounded: read it, or drop it (or use
    /// [`subscribe_bounded`](Self::subscribe_bounded): peers that come and
    /// go make events as fast as they like).
    pub fn subscribe(&self) -> Receiver<HubEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// [`subscribe`](Self::subscribe) through a channel that holds at most
    /// `capacity` events (0 is taken as 1): when it is full, events for it
    /// are dropped, never waited for, and counted
    /// ([`events_dropped`](Self::events_dropped)).
    pub fn subscribe_bounded(&self, capacity: usize) -> Receiver<HubEvent> {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// Events dropped so far because a bounded subscriber's channel was full.
    pub fn events_dropped(&self) -> u64 {
        self.shared.events_dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The old name of [`subscribe`](Self::subscribe): `events()` on
    /// [`PeerClient`](crate::peer::PeerClient) is its one channel, not a new one.
    #[deprecated(since = "0.2.0", note = "renamed `subscribe()`: each call is a new subscription")]
    pub fn events(&self) -> Receiver<HubEvent> {
        self.subscribe()
    }

    /// Whether nick authentication runs: [`Mode::Off`] without a directory id.
    pub fn nick_auth(&self) -> Mode {
        self.nick_auth
    }

    /// The directory id proofs are bound to, when nick authentication runs.
    pub fn nick_auth_id(&self) -> Option<&str> {
        self.nick_auth_id.as_deref()
    }

    /// How many of the [`peer_count`](Self::peer_count) peers proved their
    /// nick (JMP-0005 nick authentication).
    pub fn verified_peer_count(&self) -> usize {
        self.shared.registry.verified()
    }

    /// How many peers are handshaked (and, where nick authentication ran,
    /// authenticated): the peers messages are routed between.
    pub fn peer_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Every handshaked peer, in connection order.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let now = self.shared.clock.now();
        self.shared.registry.snapshot().iter().map(|p| PeerStatus::of(p, now)).collect()
    }

    /// The counters since the hub started.
    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// Whether both threads are still running.
    pub fn is_running(&self) -> bool {
        self.running.lock().as_ref().is_some_and(|r| !r.io.is_finished() && !r.sweep.is_finished())
    }

    /// Closes every connection and the listener, and joins both threads.
    /// Idempotent; prompt (it wakes the poll and the sweep wait).
    pub fn stop(&self) {
        let Some(running) = self.running.lock().take() else { return };
        let _ = running.stop_sweep.try_send(());
        let _ = running.control.send(Control::Stop);
        if let Err(e) = running.waker.wake() {
            log::error!("hub: cannot wake the I/O thread to stop it: {e}");
        }
        for (name, handle) in [("sweep", running.sweep), ("I/O", running.io)] {
            if handle.join().is_err() {
                log::error!("hub {name} thread panicked");
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a sweep after a stall waits for the I/O thread to read what
/// peers sent meanwhile.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The sweep thread: the pure schedule and decisions of `sweep.rs`, applied.
struct Sweeper {
    shared: Arc<Shared>,
    config: SweepConfig,
    stall_threshold: Duration,
    control: Sender<Control>,
    waker: Arc<Waker>,
}

impl Sweeper {
    fn run(self, stop: &Receiver<()>) {
        let clock = self.shared.clock.clone();
        let mut changes = clock.changes();
        let mut schedule = Schedule::new(clock.now(), self.config);
        // Awake at least this often, so that a stall of the hub is measured
        // from its start (give or take one watch), not only from when the
        // next sweep was due. A wake-up costs about 70 µs: every 2 s by
        // default, 0.004% of a core.
        let watch = self.stall_threshold.max(Duration::from_millis(1));
        loop {
            let before = clock.now();
            let wait = schedule.next_due().saturating_duration_since(before).min(watch);
            select! {
                recv(stop) -> _ => return,
                recv(changes) -> moved => if moved.is_err() { changes = crossbeam_channel::never() },
                default(wait) => {}
            }
            let mut now = clock.now();
            let late = now.saturating_duration_since(later(before, wait));
            if late > self.stall_threshold {
                if !self.recover_from_stall(late, &mut schedule, stop) {
                    return;
                }
                now = clock.now();
            }
            let mut commands = Vec::new();
            for due in schedule.due(now) {
                let registry = &self.shared.registry;
                match due {
                    Due::Sweep => {
                        Counters::add(&self.shared.counters.sweeps);
                        let mut decided =
                            sweep(&registry.views(now, self.config.pong_wait), now, &self.config);
                        // Never a PING in the same instant as evicting that peer.
                        decided.retain(|c| {
                            matches!(c, Command::Evict { .. })
                                || !commands
                                    .iter()
                                    .any(|e| matches!(e, Command::Evict { id, .. } if *id == c.id()))
                        });
                        let pinged = pinged_ids(&decided);
                        if !pinged.is_empty() {
                            log::debug!("hub: pinged {} idle peers", pinged.len());
                            schedule.pinged(now, pinged);
                        }
                        commands.extend(decided);
                    }
                    Due::PongCheck(pinged) => {
                        let views = registry.views_for_pong_check(now, self.config.pong_wait);
                        commands.extend(pong_timeouts(&pinged, &views, &self.config));
                    }
                }
            }
            if commands.is_empty() {
                continue;
            }
            if self.control.send(Control::Commands(now, commands)).is_err() {
                return; // the I/O thread is gone
            }
            if let Err(e) = self.waker.wake() {
                log::error!("hub: cannot wake the I/O thread: {e}");
            }
        }
    }

    /// The hub itself stalled for at least `late`: the stall counts against
    /// nobody's idle time or pong wait, and what peers sent meanwhile is read
    /// before anything is decided. `false` when the hub is stopping.
    fn recover_from_stall(&self, late: Duration, schedule: &mut Schedule, stop: &Receiver<()>) -> bool {
        log::warn!(
            "hub: the sweep ran {late:?} late: the hub itself was stalled (a stopped process or a suspended \
             machine); the stall counts against no peer, and what they sent meanwhile is read first"
        );
        self.shared.registry.stalled(late, self.shared.clock.now());
        schedule.stalled(late);
        let (done, drained) = crossbeam_channel::bounded(1);
        if self.control.send(Control::Drain(done)).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            log::error!("hub: cannot wake the I/O thread: {e}");
        }
        select! {
            recv(stop) -> _ => false,
            recv(drained) -> _ => true,
            default(DRAIN_WAIT) => {
                log::warn!("hub: the I/O thread did not read the peers within {DRAIN_WAIT:?} after the stall");
                true
            }
        }
    }
}
