//! The hub: one mio I/O thread that owns every socket, and one sweep thread
//! that decides the heartbeat and hands its commands to the I/O thread over a
//! channel, waking its poll.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;

use super::registry::{CounterSnapshot, Counters, Kind, PeerInfo, PeerStatus, Registry};
use super::sweep::{Command, Due, EvictReason, Schedule, SweepConfig, pinged_ids, pong_timeouts, sweep};
use super::wire::{self, HandshakeError, Location};
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
    /// A message of the day for the handshake reply.
    pub motd: Option<String>,
    /// Heartbeat timing.
    pub sweep: SweepConfig,
    /// Connections beyond this many are closed as soon as accepted. Default 20,000.
    pub max_peers: usize,
    /// Longest line accepted, terminator included. Default [`wire::MAX_LINE`].
    pub max_line: usize,
    /// Output queued for one peer beyond this evicts it as a slow consumer. Default 1 MiB.
    pub max_queued: usize,
    /// PINGs of a peer's own answered per minute; more are ignored. Default 60.
    pub pings_per_minute: u32,
    /// GETPEERLIST requests of one peer answered per minute; more are
    /// ignored. Each answer can be thousands of times its request. Default 30.
    pub peerlists_per_minute: u32,
    /// A connection must handshake within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// The clock for last-seen times and the sweep schedule. Default: the system's.
    pub clock: SharedClock,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            network: "mainnet".into(),
            nick: None,
            motd: None,
            sweep: SweepConfig::default(),
            max_peers: 20_000,
            max_line: wire::MAX_LINE,
            max_queued: 1 << 20,
            pings_per_minute: 60,
            peerlists_per_minute: 30,
            handshake_timeout: Duration::from_secs(10),
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
        if self.max_peers == 0 || self.max_queued == 0 || self.handshake_timeout.is_zero() {
            return bad("max peers, max queued output and the handshake timeout must be positive".into());
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
    /// malformed handshake, none in time, or the peer limit.
    Rejected {
        /// The remote address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// What the hub's threads share.
struct Shared {
    registry: Registry,
    counters: Counters,
    subscribers: Mutex<Vec<Sender<HubEvent>>>,
    nick: String,
    clock: SharedClock,
}

impl Shared {
    fn emit(&self, event: HubEvent) {
        let mut subscribers = self.subscribers.lock();
        if subscribers.is_empty() {
            return;
        }
        subscribers.retain(|s| s.send(event.clone()).is_ok());
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
    running: Mutex<Option<Running>>,
}

struct Running {
    control: Sender<Control>,
    waker: Arc<Waker>,
    stop_sweep: Sender<()>,
    io: JoinHandle<()>,
    sweep: JoinHandle<()>,
}

enum Control {
    /// A sweep's or pong check's commands, and when they were decided.
    Commands(Instant, Vec<Command>),
    Stop,
}

impl Hub {
    /// Binds the listener and starts the I/O and sweep threads.
    pub fn start(config: HubConfig) -> Result<Hub> {
        config.validate()?;
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

    /// A channel of every event from now on; dropping it unsubscribes.
    /// Unbounded: read it, or drop it.
    pub fn events(&self) -> Receiver<HubEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// Handshaked peers now.
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

/// The sweep thread: the pure schedule and decisions of `sweep.rs`, applied.
struct Sweeper {
    shared: Arc<Shared>,
    config: SweepConfig,
    control: Sender<Control>,
    waker: Arc<Waker>,
}

impl Sweeper {
    fn run(self, stop: &Receiver<()>) {
        let clock = self.shared.clock.clone();
        let mut changes = clock.changes();
        let mut schedule = Schedule::new(clock.now(), self.config);
        loop {
            let wait = schedule.next_due().saturating_duration_since(clock.now());
            select! {
                recv(stop) -> _ => return,
                recv(changes) -> moved => if moved.is_err() { changes = crossbeam_channel::never() },
                default(wait) => {}
            }
            let now = clock.now();
            let mut commands = Vec::new();
            for due in schedule.due(now) {
                let registry = &self.shared.registry;
                match due {
                    Due::Sweep => {
                        Counters::add(&self.shared.counters.sweeps);
                        let decided = sweep(&registry.views(), now, &self.config);
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
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection ids start here, so an id is its token.
const FIRST_ID: u64 = 2;
/// A peer that sends this much in one go yields to the others; its rest is
/// read on the next turn of the loop.
const READ_BUDGET: usize = 256 * 1024;
/// A connection's buffers shrink back when they held more than this.
const KEEP_BUFFER: usize = 8 * 1024;
/// Lines handled for one peer per turn: a peer whose requests cost the hub
/// work (GETPEERLIST) cannot hold the I/O thread.
const LINE_BUDGET: usize = 64;
/// After a failed `accept` (out of file descriptors, say), retry after this.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The handshaked peer a connection became.
struct PeerMeta {
    nick: String,
    location: Location,
    ping: bool,
}

struct Conn {
    /// Also its poll token.
    id: u64,
    stream: TcpStream,
    addr: SocketAddr,
    /// Received bytes not yet a whole line.
    input: Vec<u8>,
    /// Output not yet written, from `sent` on.
    output: Vec<u8>,
    sent: usize,
    writable: bool,
    peer: Option<PeerMeta>,
    /// PING answers left, refilled continuously.
    pings: Bucket,
    /// GETPEERLIST answers left, refilled continuously.
    peerlists: Bucket,
}

impl Conn {
    fn queued(&self) -> usize {
        self.output.len() - self.sent
    }
}

/// Why a connection closes.
enum Close {
    Left(String),
    Evicted(EvictReason),
    Rejected(String),
}

struct Io {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    network: String,
    motd: Option<String>,
    max_peers: usize,
    max_line: usize,
    max_queued: usize,
    pings_per_minute: f64,
    peerlists_per_minute: f64,
    handshake_timeout: Duration,
    /// Connections that have not handshaked, by deadline (accept order).
    handshake_deadlines: VecDeque<(Instant, u64)>,
    /// Connections with unread input left over from their read budget.
    unread: Vec<u64>,
    accept_retry: Option<Instant>,
    /// Whether accepting fails (logged once per episode).
    accept_failing: bool,
    /// PEERLIST entries of peers gone this turn, told to the others at its end.
    gone: Vec<(String, String)>,
    scratch: Vec<u8>,
    line: Vec<u8>,
}

impl Io {
    fn new(
        poll: Poll,
        mut listener: TcpListener,
        control: Receiver<Control>,
        shared: Arc<Shared>,
        config: &HubConfig,
    ) -> io::Result<Io> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Io {
            poll,
            listener,
            conns: HashMap::new(),
            next_id: FIRST_ID,
            control,
            shared,
            network: config.network.clone(),
            motd: config.motd.clone(),
            max_peers: config.max_peers,
            max_line: config.max_line,
            max_queued: config.max_queued,
            pings_per_minute: f64::from(config.pings_per_minute),
            peerlists_per_minute: f64::from(config.peerlists_per_minute),
            handshake_timeout: config.handshake_timeout,
            handshake_deadlines: VecDeque::new(),
            unread: Vec::new(),
            accept_retry: None,
            accept_failing: false,
            gone: Vec::new(),
            scratch: vec![0; 64 * 1024],
            line: Vec::new(),
        })
    }

    fn now(&self) -> Instant {
        self.shared.clock.now()
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("hub: poll failed, stopping: {e}");
                break;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(token) => {
                        let id = token as u64;
                        if event.is_writable() || event.is_write_closed() {
                            self.flush(id);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(id);
                        }
                    }
                }
            }
            let mut unread = std::mem::take(&mut self.unread);
            unread.sort_unstable();
            unread.dedup();
            for id in unread {
                self.read(id);
            }
            if self.accept_retry.is_some_and(|at| self.now() >= at) {
                self.accept_retry = None;
                self.accept_all();
            }
            self.expire_handshakes();
            if !self.apply_control() {
                break;
            }
            self.tell_gone();
        }
        self.shutdown();
    }

    /// How long the poll may sleep: until the next handshake deadline or
    /// accept retry; not at all with unread input waiting.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unread.is_empty() {
            return Some(Duration::ZERO);
        }
        let next =
            [self.handshake_deadlines.front().map(|d| d.0), self.accept_retry].into_iter().flatten().min()?;
        // Rounded up to a millisecond, so a wake-up is never a little early and spins.
        let wait = next.saturating_duration_since(self.now());
        Some(wait + Duration::from_millis(1))
    }

    /// Handles the sweep's commands; `false` on Stop.
    fn apply_control(&mut self) -> bool {
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::Stop => return false,
                Control::Commands(decided, commands) => {
                    // The seed's order: evictions, then probes. PINGs go out in
                    // one batch: one registry lock, no per-peer bookkeeping.
                    let (pings, others): (Vec<Command>, Vec<Command>) =
                        commands.into_iter().partition(|c| matches!(c, Command::Ping { .. }));
                    let (evictions, probes): (Vec<Command>, Vec<Command>) =
                        others.into_iter().partition(|c| matches!(c, Command::Evict { .. }));
                    evictions.into_iter().for_each(|c| self.command(c));
                    self.ping_all(&pinged_ids(&pings), decided);
                    probes.into_iter().for_each(|c| self.command(c));
                }
            }
        }
        true
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Evict { id, reason } => self.close(id, Close::Evicted(reason)),
            Command::Ping { id } => self.ping_all(&[id], self.now()),
            Command::OrderbookProbe { id } => {
                if self.conns.contains_key(&id) {
                    Counters::add(&self.shared.counters.probes_sent);
                    let probe = wire::orderbook_probe(&self.shared.nick);
                    self.send_or_evict(id, wire::PUBMSG, &probe);
                }
            }
        }
    }

    /// Writes a PING to each of these peers still connected. The PING is
    /// dated by the sweep that `decided` it, which is what that sweep's pong
    /// check compares with: a check never misses its own PINGs, and never
    /// takes an answered-then-repeated PING for an unanswered one.
    fn ping_all(&mut self, ids: &[u64], decided: Instant) {
        if ids.is_empty() {
            return;
        }
        self.shared.registry.pings_sent(ids, decided);
        let mut conns = std::mem::take(&mut self.conns);
        let mut failed = Vec::new();
        for &id in ids {
            if let Some(conn) = conns.get_mut(&id) {
                Counters::add(&self.shared.counters.pings_sent);
                if let Err(reason) = self.send(conn, wire::PING, "") {
                    failed.push((id, reason));
                }
            }
        }
        self.conns = conns;
        for (id, reason) in failed {
            self.close(id, Close::Evicted(reason));
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    self.accept_failing = false;
                    self.accepted(stream, addr);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors or memory: the listener will not
                    // signal again for connections already queued, so retry.
                    if !self.accept_failing {
                        log::warn!("hub: accept failed, retrying every {ACCEPT_RETRY:?} until it works: {e}");
                        self.accept_failing = true;
                    }
                    self.accept_retry = Some(self.now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn accepted(&mut self, mut stream: TcpStream, addr: SocketAddr) {
        Counters::add(&self.shared.counters.accepted);
        if self.conns.len() >= self.max_peers {
            Counters::add(&self.shared.counters.refused);
            log::warn!("hub: refusing {addr}: {} connections is the limit", self.max_peers);
            self.shared.emit(HubEvent::Rejected { addr, reason: "too many connections".into() });
            return; // dropping the stream closes it
        }
        let id = self.next_id;
        self.next_id += 1;
        let _ = stream.set_nodelay(true);
        if let Err(e) = self.poll.registry().register(&mut stream, Token(id as usize), Interest::READABLE) {
            log::warn!("hub: cannot watch {addr}: {e}");
            return;
        }
        let now = self.now();
        self.conns.insert(
            id,
            Conn {
                id,
                stream,
                addr,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                writable: false,
                peer: None,
                pings: Bucket::new(self.pings_per_minute, now),
                peerlists: Bucket::new(self.peerlists_per_minute, now),
            },
        );
        let deadline =
            now.checked_add(self.handshake_timeout).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        self.handshake_deadlines.push_back((deadline, id));
    }

    fn expire_handshakes(&mut self) {
        let now = self.now();
        while let Some(&(deadline, id)) = self.handshake_deadlines.front() {
            if deadline > now {
                return;
            }
            self.handshake_deadlines.pop_front();
            if self.conns.get(&id).is_some_and(|c| c.peer.is_none()) {
                self.close(id, Close::Evicted(EvictReason::HandshakeTimeout));
            }
        }
    }

    /// Reads what a connection sent and handles each whole line, up to a
    /// budget of lines and bytes per turn: a flooding peer yields to the
    /// others and to the sweep's commands, and is served again next turn.
    fn read(&mut self, id: u64) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let mut bytes_left = READ_BUDGET;
        let mut lines_left = LINE_BUDGET;
        let closed = loop {
            // Lines already buffered first: the budget may have cut them short last turn.
            if let Some(close) = self.lines(id, &mut conn, &mut lines_left) {
                break Some(close);
            }
            if lines_left == 0 || bytes_left == 0 {
                self.unread.push(id);
                break None;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => break Some(Close::Left("closed by peer".into())),
                Ok(n) => {
                    bytes_left = bytes_left.saturating_sub(n);
                    conn.input.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(Close::Left(format!("read failed: {e}"))),
            }
        };
        if conn.input.capacity() > KEEP_BUFFER && conn.input.len() <= KEEP_BUFFER / 4 {
            conn.input = conn.input.to_vec(); // a burst is over: keep the leftover, give the rest back
        }
        self.conns.insert(id, conn);
        if let Some(close) = closed {
            self.close(id, close);
        }
    }

    /// Handles whole lines in the connection's input while `budget` lasts.
    fn lines(&mut self, id: u64, conn: &mut Conn, budget: &mut usize) -> Option<Close> {
        let mut start = 0;
        let mut result = None;
        while *budget > 0
            && let Some(end) = conn.input[start..].iter().position(|&b| b == b'\n').map(|i| start + i)
        {
            if end + 1 - start > self.max_line {
                result = Some(self.too_long(conn));
                break;
            }
            *budget -= 1;
            let mut line = std::mem::take(&mut self.line);
            line.clear();
            let text = &conn.input[start..end];
            line.extend_from_slice(text.strip_suffix(b"\r").unwrap_or(text));
            start = end + 1;
            let outcome = self.line(id, conn, &line);
            self.line = line;
            if outcome.is_some() {
                result = outcome;
                break;
            }
        }
        conn.input.drain(..start);
        if result.is_none() && *budget > 0 && conn.input.len() >= self.max_line {
            result = Some(self.too_long(conn));
        }
        result
    }

    fn too_long(&self, conn: &Conn) -> Close {
        let why = format!("a line longer than {} bytes", self.max_line);
        if conn.peer.is_some() { Close::Evicted(EvictReason::Protocol(why)) } else { Close::Rejected(why) }
    }

    /// Handles one line (terminator stripped).
    fn line(&mut self, id: u64, conn: &mut Conn, line: &[u8]) -> Option<Close> {
        let now = self.now();
        if conn.peer.is_some() {
            // Anything received proves the peer alive, before it is even parsed.
            self.shared.registry.seen(id, now);
        }
        let envelope = match wire::parse_envelope(line) {
            Ok(envelope) => envelope,
            Err(e) => {
                let why = format!("malformed message: {e}");
                return Some(if conn.peer.is_some() {
                    Close::Evicted(EvictReason::Protocol(why))
                } else {
                    Close::Rejected(why)
                });
            }
        };
        let Some(peer) = &conn.peer else {
            if envelope.kind != wire::HANDSHAKE {
                return Some(Close::Rejected(format!("message type {} before the handshake", envelope.kind)));
            }
            return self.handshake(id, conn, &envelope.line);
        };
        let counters = &self.shared.counters;
        match envelope.kind {
            wire::PING => {
                counters.message(Kind::Ping);
                // A peer that did not advertise ping must never get a PONG.
                if peer.ping && conn.pings.take(now) {
                    Counters::add(&counters.pongs_sent);
                    return self.send(conn, wire::PONG, "").err().map(Close::Evicted);
                }
                Counters::add(&counters.pings_unanswered);
            }
            wire::PONG => {
                counters.message(Kind::Pong);
                self.shared.registry.pong(id);
            }
            wire::GETPEERLIST => {
                counters.message(Kind::GetPeerlist);
                if !conn.peerlists.take(now) {
                    return None; // over its ration: ignored
                }
                let entries: Vec<String> = self
                    .shared
                    .registry
                    .makers()
                    .iter()
                    .map(|(nick, location)| wire::peerlist_entry(nick, location, false))
                    .collect();
                for chunk in chunk_entries(&entries, self.max_line) {
                    if let Err(reason) = self.send(conn, wire::PEERLIST, &chunk) {
                        return Some(Close::Evicted(reason));
                    }
                }
            }
            wire::DISCONNECT => return Some(Close::Left("said DISCONNECT".into())),
            wire::PRIVMSG => counters.message(Kind::Privmsg),
            wire::PUBMSG => counters.message(Kind::Pubmsg),
            _ => counters.message(Kind::Other),
        }
        None
    }

    fn handshake(&mut self, id: u64, conn: &mut Conn, line: &str) -> Option<Close> {
        let rejected = |why: String| {
            Counters::add(&self.shared.counters.rejected);
            Some(Close::Rejected(why))
        };
        let handshake = match wire::parse_handshake(line, &self.network) {
            Ok(h) => h,
            Err(HandshakeError::Malformed(why)) => return rejected(format!("bad handshake: {why}")),
            Err(HandshakeError::Rejected(why)) => {
                self.reply(conn, false);
                return rejected(format!("handshake refused: {why}"));
            }
        };
        let info = PeerInfo {
            id,
            nick: handshake.nick.clone(),
            location: handshake.location.clone(),
            ping: handshake.ping,
            network: handshake.network,
            connected_at: self.shared.clock.wall(),
            last_seen: self.now(),
            ping_sent: None,
        };
        if handshake.nick == self.shared.nick || !self.shared.registry.insert(info) {
            self.reply(conn, false);
            return rejected(format!("handshake refused: nick {} is already connected", handshake.nick));
        }
        conn.peer = Some(PeerMeta {
            nick: handshake.nick.clone(),
            location: handshake.location.clone(),
            ping: handshake.ping,
        });
        Counters::add(&self.shared.counters.joins);
        log::debug!("hub: {} joined from {} as {}", handshake.nick, conn.addr, handshake.location);
        self.shared.emit(HubEvent::Joined {
            id,
            nick: handshake.nick,
            location: handshake.location,
            ping: handshake.ping,
        });
        self.send(conn, wire::DN_HANDSHAKE, &self.dn_reply(true)).err().map(Close::Evicted)
    }

    fn dn_reply(&self, accepted: bool) -> String {
        wire::dn_handshake(&self.shared.nick, &self.network, self.motd.as_deref(), accepted)
    }

    /// Sends a handshake reply to a connection about to be closed, best effort.
    fn reply(&self, conn: &mut Conn, accepted: bool) {
        let _ = self.send(conn, wire::DN_HANDSHAKE, &self.dn_reply(accepted));
    }

    /// Queues one message and writes what the socket takes now. A peer
    /// whose queue passes the limit is a slow consumer; a write error is a
    /// failed send.
    fn send(&self, conn: &mut Conn, kind: u32, line: &str) -> Result<(), EvictReason> {
        if conn.sent == conn.output.len() {
            conn.output.clear();
            conn.sent = 0;
        }
        wire::encode(kind, line, &mut conn.output);
        self.write_out(conn)
    }

    fn write_out(&self, conn: &mut Conn) -> Result<(), EvictReason> {
        while conn.sent < conn.output.len() {
            match conn.stream.write(&conn.output[conn.sent..]) {
                Ok(0) => return Err(EvictReason::SendFailed("the connection accepts no more bytes".into())),
                Ok(n) => conn.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EvictReason::SendFailed(e.to_string())),
            }
        }
        if conn.sent == conn.output.len() {
            conn.sent = 0;
            if conn.output.capacity() > KEEP_BUFFER {
                conn.output = Vec::new(); // a big answer is out: give the memory back
            } else {
                conn.output.clear();
            }
        } else if conn.sent > conn.output.len() / 2 {
            conn.output.drain(..conn.sent);
            conn.sent = 0;
        }
        if conn.queued() > self.max_queued {
            return Err(EvictReason::SlowConsumer);
        }
        let want_writable = conn.queued() > 0;
        if want_writable != conn.writable {
            let interest =
                if want_writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let token = Token(conn.id as usize);
            if let Err(e) = self.poll.registry().reregister(&mut conn.stream, token, interest) {
                return Err(EvictReason::SendFailed(format!("cannot watch the socket: {e}")));
            }
            conn.writable = want_writable;
        }
        Ok(())
    }

    fn send_or_evict(&mut self, id: u64, kind: u32, line: &str) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let result = self.send(&mut conn, kind, line);
        self.conns.insert(id, conn);
        if let Err(reason) = result {
            self.close(id, Close::Evicted(reason));
        }
    }

    /// The socket can take more: writes the queue.
    fn flush(&mut self, id: u64) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let result = self.write_out(&mut conn);
        self.conns.insert(id, conn);
        if let Err(reason) = result {
            self.close(id, Close::Evicted(reason));
        }
    }

    /// Closes a connection; a handshaked peer leaves the registry, and the
    /// others hear of it at the end of this turn.
    fn close(&mut self, id: u64, why: Close) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let shared = &self.shared;
        match (conn.peer, why) {
            (Some(peer), why) => {
                shared.registry.remove(id);
                self.gone.push((peer.nick.clone(), wire::peerlist_entry(&peer.nick, &peer.location, true)));
                let event = match why {
                    Close::Evicted(reason) => {
                        log::info!("hub: evicting {} ({}): {reason}", peer.nick, conn.addr);
                        shared.counters.evicted(&reason);
                        HubEvent::Evicted { id, nick: peer.nick, reason }
                    }
                    Close::Left(reason) | Close::Rejected(reason) => {
                        log::debug!("hub: {} ({}) left: {reason}", peer.nick, conn.addr);
                        Counters::add(&shared.counters.left);
                        HubEvent::Left { id, nick: peer.nick, reason }
                    }
                };
                shared.emit(event);
            }
            (None, why) => {
                let reason = match why {
                    Close::Evicted(reason) => {
                        shared.counters.evicted(&reason);
                        reason.to_string()
                    }
                    Close::Left(reason) | Close::Rejected(reason) => reason,
                };
                log::debug!("hub: closing {} before its handshake: {reason}", conn.addr);
                shared.emit(HubEvent::Rejected { addr: conn.addr, reason });
            }
        }
    }

    /// Tells the remaining handshaked peers who left this turn, in as few
    /// PEERLIST lines as fit.
    fn tell_gone(&mut self) {
        // Telling may evict a peer (a failed send), which is then told in turn;
        // each round can only remove peers, so this ends.
        while !self.gone.is_empty() {
            let gone = std::mem::take(&mut self.gone);
            // A nick that left and joined again this turn is not gone.
            let entries: Vec<String> = gone
                .into_iter()
                .filter(|(nick, _)| !self.shared.registry.has_nick(nick))
                .map(|(_, entry)| entry)
                .collect();
            if entries.is_empty() {
                return;
            }
            let chunks = chunk_entries(&entries, self.max_line);
            let ids: Vec<u64> =
                self.conns.iter().filter(|(_, c)| c.peer.is_some()).map(|(id, _)| *id).collect();
            for id in ids {
                for chunk in &chunks {
                    self.send_or_evict(id, wire::PEERLIST, chunk);
                }
            }
        }
    }

    fn shutdown(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, Close::Left("the hub stopped".into()));
        }
        self.gone.clear();
        log::info!("hub {} stopped", self.shared.nick);
    }
}

/// A token bucket of `per_minute` tokens, refilled continuously.
struct Bucket {
    per_minute: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(per_minute: f64, now: Instant) -> Bucket {
        Bucket { per_minute, tokens: per_minute, refilled: now }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Joins PEERLIST entries with "," into lines whose envelopes fit `max_line`.
fn chunk_entries(entries: &[String], max_line: usize) -> Vec<String> {
    // The envelope around the line, with room for JSON escapes of odd nicks.
    let room = max_line.saturating_sub(64) / 2;
    let mut chunks = vec![String::new()];
    for entry in entries {
        let current = chunks.last_mut().expect("never empty");
        if !current.is_empty() && current.len() + 1 + entry.len() > room {
            chunks.push(entry.clone());
        } else {
            if !current.is_empty() {
                current.push(',');
            }
            current.push_str(entry);
        }
    }
    chunks
}
