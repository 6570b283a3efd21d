//! The client side of the directory-node heartbeat: [`PeerClient`], a peer
//! that connects to a JoinMarket directory, handshakes, answers its PINGs and
//! reports what it hears, reconnecting with exponential backoff.
//!
//! One owned thread does all the work with blocking `std::net` I/O. The TCP
//! connect is the one non-blocking step (through `mio`), so that
//! [`PeerClient::stop`] can interrupt it; a connected socket is interrupted
//! by shutting it down from the stopping thread, a backoff wait by waking the
//! poll it waits on. No step of the thread waits on anything `stop` cannot cut
//! short.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;

use super::auth::{self, Code, Identity, Mode};
use super::lines::{LineBuffer, TooLong};
use super::server::DEFAULT_PORT;
use super::wire::{self, Location};
use crate::error::{Error, Result};

/// The longest a single wait is handed to the OS; longer waits loop. Keeps
/// huge configured durations away from timeout conversions.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// How much one `read` takes from the socket.
const READ_CHUNK: usize = 16 * 1024;
/// Read buffer capacity kept between bursts of long lines.
const KEEP_BUFFER: usize = 2 * READ_CHUNK;
/// Poll tokens.
const CONNECTING: Token = Token(0);
const WAKE: Token = Token(1);

/// How a [`PeerClient`] runs. Start from `PeerClientConfig::default()` and set
/// what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerClientConfig {
    /// The directory to connect to. Default `127.0.0.1:5222`. Any address is
    /// accepted, loopback or not.
    pub addr: SocketAddr,
    /// Our nick; `None` takes the [`identity`](Self::identity)'s, or without
    /// one draws a random nick ([`wire::random_nick`]) once, at start, kept
    /// across reconnections. Must pass [`wire::is_valid_nick`], and with an
    /// identity be its nick.
    pub nick: Option<String>,
    /// Our secp256k1 key (JMP-0005 nick authentication): the nick is derived
    /// from it, and with a [`nick_auth_id`](Self::nick_auth_id) the client
    /// advertises `nick_auth` and proves the nick when challenged. `None`
    /// (default): no key, never authenticated.
    pub identity: Option<Identity>,
    /// The directory id we expect for `addr`: the directory's challenge must
    /// name it, or no proof is produced (a proof is never made for another
    /// directory). For an onion service it is its `<56 base32>.onion:<port>`,
    /// which `heartbeat peer` takes by default when it dials one. `None`
    /// (default): nick authentication is not offered.
    pub nick_auth_id: Option<String>,
    /// [`Mode::Prefer`] (default): authenticate with a directory that offers
    /// it, carry on unauthenticated with one that does not.
    /// [`Mode::Require`]: refuse a directory that does not offer it (needs an
    /// identity and a directory id). [`Mode::Off`]: never offer it.
    pub nick_auth: Mode,
    /// The network we handshake for; a directory serving another refuses us.
    /// Default `mainnet`.
    pub network: String,
    /// Where we say we serve: a taker (default), or a maker's onion.
    pub location: Location,
    /// Advertise `"features": {"ping": true}` and answer every PING with a
    /// PONG (default). With `false` the client behaves like a legacy
    /// (reference) peer: it advertises `"features": {}`, ignores PINGs and
    /// never sends a PONG.
    pub ping: bool,
    /// The first reconnection delay. Default 1 s.
    pub reconnect_min: Duration,
    /// Reconnection delays double up to this. Default 60 s.
    pub reconnect_max: Duration,
    /// Bounds the TCP connect, and separately the wait for the directory's
    /// handshake reply. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for PeerClientConfig {
    fn default() -> Self {
        PeerClientConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            nick: None,
            network: "mainnet".into(),
            location: Location::Taker,
            ping: true,
            identity: None,
            nick_auth_id: None,
            nick_auth: Mode::Prefer,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl PeerClientConfig {
    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if self.network.is_empty() {
            return bad("the network must not be empty".into());
        }
        if let Some(nick) = &self.nick
            && !wire::is_valid_nick(nick)
        {
            return bad(format!("{nick:?} is not a nick: J5, then base58, 16 characters padded with O"));
        }
        if let (Some(nick), Some(identity)) = (&self.nick, &self.identity)
            && nick != identity.nick()
        {
            return bad(format!("the nick {nick:?} is not the identity's, {:?}", identity.nick()));
        }
        if let Some(id) = &self.nick_auth_id {
            auth::check_directory_id(id).or_else(bad)?;
        }
        if self.nick_auth == Mode::Require && (self.identity.is_none() || self.nick_auth_id.is_none()) {
            return bad("requiring nick authentication needs an identity and the directory's id".into());
        }
        if self.reconnect_min.is_zero() || self.connect_timeout.is_zero() {
            return bad("the reconnection delay and the connect timeout must be positive".into());
        }
        if self.reconnect_min > self.reconnect_max {
            return bad(format!(
                "reconnect_min ({:?}) must not exceed reconnect_max ({:?})",
                self.reconnect_min, self.reconnect_max
            ));
        }
        Ok(())
    }
}

/// Something that happened to a [`PeerClient`].
///
/// A session is bracketed: every `Connected` is followed by exactly one
/// `Disconnected` (also when [`PeerClient::stop`] ends it), with `Ping`,
/// `Peerlist` and `Message` only in between. An attempt that never got that
/// far is one `Refused` or one `Error`, with nothing after it. Between
/// attempts the client waits its backoff delay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The directory accepted our handshake.
    Connected {
        /// The directory's nick.
        nick: String,
        /// Its message of the day, if it sent one.
        motd: Option<String>,
        /// Whether the directory advertised ping support.
        ping: bool,
        /// Whether the directory verified our nick (JMP-0005): it challenged
        /// us, and answered our proof with `ok`.
        verified: bool,
    },
    /// The directory answered our handshake with `"accepted": false` (or
    /// accepted us for another network), refused our nick-authentication
    /// proof, or does not offer the nick authentication we require; the
    /// connection closes, and the client tries again after its backoff.
    Refused {
        /// Who refused, and the message of the day if there was one (a
        /// directory does not say why it refuses).
        reason: String,
    },
    /// The directory sent a PING; it was answered with a PONG unless the
    /// client runs with `ping: false`.
    Ping,
    /// A PEERLIST: `(nick, location, disconnected)` for each entry, as
    /// [`wire::parse_peerlist`] reads them (unvalidated).
    Peerlist(Vec<(String, String, bool)>),
    /// Any other message: PUBMSG, PRIVMSG, or a type this client does not
    /// act on (a PONG, a DISCONNECT, ...).
    Message {
        /// The message type, e.g. [`wire::PUBMSG`].
        kind: u32,
        /// Its payload.
        line: String,
    },
    /// A session that began with `Connected` ended: the directory closed the
    /// connection or evicted us, a read or write failed, the directory broke
    /// the wire format, or the client was stopped.
    Disconnected {
        /// What happened, e.g. `closed by the directory`.
        reason: String,
    },
    /// An attempt failed before any session: the connect failed or timed
    /// out, the handshake reply (or the nick-authentication exchange) was
    /// missing, late or malformed, or the directory challenged us for
    /// another directory id (no proof is sent then). One per attempt.
    Error(String),
}

/// A peer of a JoinMarket directory node, on a thread of its own, from
/// [`start`](Self::start) until [`stop`](Self::stop) or drop.
///
/// It connects to the directory, sends our handshake (793), waits for the
/// reply (795), then reads messages until the connection ends: each PING
/// (798) is answered at once with a PONG (799) when `ping` is on, and
/// everything is reported as a [`ClientEvent`]. Lines end with `\r\n` or
/// `\n`; a line longer than [`wire::MAX_LINE`] bytes (terminator included)
/// or one that is not an envelope ends the session. Then it reconnects.
///
/// # Nick authentication (JMP-0005)
/// With an [`Identity`] and the directory id it expects
/// ([`PeerClientConfig::nick_auth_id`]), the client advertises `nick_auth`;
/// a directory that advertises it too sends a challenge (803) after its
/// 795, which the client answers with its proof (805) only if the challenge
/// names the expected id, and the directory's answer (807) decides
/// [`ClientEvent::Connected`]'s `verified`, or a `Refused`. Each step waits
/// at most `connect_timeout`.
///
/// # Reconnecting
/// After every failed attempt or ended session the client waits, then tries
/// again: `reconnect_min` first, doubling after each wait up to
/// `reconnect_max`. The delay goes back to `reconnect_min` after a session
/// that lasted at least `reconnect_max`: a session that comes up and is
/// dropped again quickly (a full directory, an eviction loop) keeps backing
/// off, as a refused or failed attempt does, while one that served its
/// purpose for a good while is retried promptly. There is no jitter.
///
/// # Events
/// Events go to an unbounded channel ([`events`](Self::events)): read it, or
/// it grows. Nothing the network sends can panic the thread.
///
/// A connection that silently vanishes (a directory host that loses power)
/// is not noticed until something is written to it: like JoinMarket
/// clients, this one trusts the directory's own PINGs and TCP.
///
/// ```
/// use std::time::Duration;
/// use heartbeat::peer::{ClientEvent, Hub, HubConfig, PeerClient, PeerClientConfig};
///
/// let hub = Hub::builder().listen(([127, 0, 0, 1], 0)).start()?;
/// let client = PeerClient::builder().addr(hub.local_addr()).start()?;
/// match client.events().recv_timeout(Duration::from_secs(10))? {
///     ClientEvent::Connected { nick, .. } => assert_eq!(nick, hub.nick()),
///     other => panic!("{other:?}"),
/// }
/// client.stop();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PeerClient {
    nick: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: Receiver<ClientEvent>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("nick", &self.nick)
            .field("addr", &self.addr)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// What the client's thread and its owner share.
struct Shared {
    stopping: AtomicBool,
    /// Wakes the thread's poll: a connect or a backoff wait in progress.
    waker: Waker,
    /// The connection now open, from the TCP connect to its end: shut down
    /// by `stop`, written by `send`.
    current: Mutex<Option<Arc<Connection>>>,
}

/// One open connection, as other threads than the client's may touch it.
struct Connection {
    /// A clone of the reading thread's handle on the same socket.
    stream: TcpStream,
    /// The encoding buffer; its lock keeps whole messages from interleaving.
    out: Mutex<Vec<u8>>,
    /// Whether the directory accepted our handshake.
    handshaked: AtomicBool,
    /// Why a write from another thread failed, for the `Disconnected` reason.
    failure: Mutex<Option<String>>,
}

impl Connection {
    /// Writes one whole message; a blocked write ends at the write timeout or
    /// when the socket is shut down.
    fn write(&self, kind: u32, line: &str) -> io::Result<()> {
        let mut out = self.out.lock();
        out.clear();
        wire::encode(kind, line, &mut out);
        (&self.stream).write_all(&out)
    }

    fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

crate::builder::config_builder! {
    /// Configures a [`PeerClient`]: get one from [`PeerClient::builder`],
    /// set what differs from the defaults, then [`start`](Self::start).
    pub struct PeerClientBuilder for PeerClientConfig {
        set {
            nick_auth: Mode,
            location: Location,
            ping: bool,
            reconnect_min: Duration,
            reconnect_max: Duration,
            connect_timeout: Duration,
        }
        into { addr: SocketAddr, network: String }
        some { nick: String, identity: Identity, nick_auth_id: String }
    }
}

impl PeerClientBuilder {
    /// Validates the configuration and starts the client ([`PeerClient::start`]).
    pub fn start(self) -> Result<PeerClient> {
        PeerClient::start(self.config)
    }
}

impl PeerClient {
    /// A builder with the defaults of [`PeerClientConfig::default`].
    pub fn builder() -> PeerClientBuilder {
        PeerClientBuilder::default()
    }

    /// Validates the configuration and starts the client's thread, which
    /// connects at once. Errors are a bad configuration (an empty network, a
    /// malformed nick, a zero delay or timeout, `reconnect_min` above
    /// `reconnect_max`) or a thread or poll that cannot be created; failures
    /// to reach the directory are events, not errors.
    pub fn start(config: PeerClientConfig) -> Result<PeerClient> {
        config.validate()?;
        let nick = config
            .nick
            .clone()
            .or_else(|| config.identity.as_ref().map(|i| i.nick().to_owned()))
            .unwrap_or_else(wire::random_nick);
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let shared = Arc::new(Shared { stopping: AtomicBool::new(false), waker, current: Mutex::new(None) });
        let (tx, events) = crossbeam_channel::unbounded();
        let addr = config.addr;
        let worker = Worker {
            backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            config,
            nick: nick.clone(),
            shared: shared.clone(),
            events: tx,
            poll,
            poll_events: Events::with_capacity(8),
        };
        let thread =
            thread::Builder::new().name("heartbeat-peer-client".into()).spawn(move || worker.run())?;
        Ok(PeerClient { nick, addr, shared, events, thread: Mutex::new(Some(thread)) })
    }

    /// What happens, in order. After [`stop`](Self::stop) it still holds
    /// what was sent before, then reports its sender gone.
    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }

    /// Our nick (drawn at start when the configuration had none).
    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// The directory's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a session is up: the directory accepted our handshake and the
    /// connection has not ended yet (as far as the client's thread knows).
    pub fn is_connected(&self) -> bool {
        self.session().is_some()
    }

    /// The current connection, if the directory accepted us on it.
    fn session(&self) -> Option<Arc<Connection>> {
        self.shared.current.lock().clone().filter(|c| c.handshaked.load(Ordering::Acquire))
    }

    /// Sends one message to the directory over the current session.
    ///
    /// Fails with an `io::ErrorKind::NotConnected` error when no session is
    /// up, `InvalidInput` when the message would exceed [`wire::MAX_LINE`];
    /// a failed write is returned and also ends the session (its
    /// `Disconnected` reason says so). Nothing is checked about `kind`: it is
    /// the caller's to speak the protocol (a PONG or DISCONNECT kills a
    /// legacy peer's connection, and the directory answers neither).
    pub fn send(&self, kind: u32, line: &str) -> Result<()> {
        let not_connected = || io::Error::new(io::ErrorKind::NotConnected, "not connected to the directory");
        let conn = self.session().ok_or_else(not_connected)?;
        let mut encoded = Vec::new();
        wire::encode(kind, line, &mut encoded);
        if encoded.len() > wire::MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a message of {} bytes exceeds the {}-byte limit", encoded.len(), wire::MAX_LINE),
            )
            .into());
        }
        conn.write(kind, line).map_err(|e| {
            *conn.failure.lock() = Some(format!("send failed: {e}"));
            conn.close();
            Error::Io(e)
        })
    }

    /// Asks the directory for its peer list (GETPEERLIST, 791); the answer
    /// comes as a [`ClientEvent::Peerlist`]. Fails as [`send`](Self::send) does.
    pub fn request_peerlist(&self) -> Result<()> {
        self.send(wire::GETPEERLIST, "")
    }

    /// Closes the connection and joins the thread; a session in progress ends
    /// with `Disconnected { reason: "client stopped" }`. Prompt in every state
    /// (connecting, handshaking, connected, backing off) and idempotent.
    pub fn stop(&self) {
        let Some(thread) = self.thread.lock().take() else { return };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.shared.waker.wake() {
            log::error!("peer client: cannot wake its thread to stop it: {e}");
        }
        // Set after the flag: the thread publishes a connection before it
        // checks the flag, so either it sees the flag or we see the connection.
        let current = self.shared.current.lock().clone();
        if let Some(conn) = current {
            conn.close();
        }
        if thread.join().is_err() {
            log::error!("peer client thread panicked");
        }
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reconnection delays: from `min`, doubling up to `max`, back to `min`
/// after a session that lasted at least `max`. Pure: the caller measures.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, next: min }
    }

    /// The wait before the next attempt, after one that ended. `lasted` is
    /// how long its session was up, `None` when it never got one.
    fn after(&mut self, lasted: Option<Duration>) -> Duration {
        if lasted.is_some_and(|d| d >= self.max) {
            self.next = self.min;
        }
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }
}

/// How an attempt went.
enum Attempt {
    /// The client is stopping.
    Stopped,
    /// It ended; with the session's length if the directory accepted us.
    Ended(Option<Duration>),
}

/// The client's thread.
struct Worker {
    config: PeerClientConfig,
    nick: String,
    shared: Arc<Shared>,
    events: Sender<ClientEvent>,
    poll: Poll,
    poll_events: Events,
    backoff: Backoff,
}

impl Worker {
    fn run(mut self) {
        log::debug!("peer client {} starting for {}", self.nick, self.config.addr);
        loop {
            let lasted = match self.attempt() {
                Attempt::Stopped => break,
                Attempt::Ended(lasted) => lasted,
            };
            let wait = self.backoff.after(lasted);
            log::debug!("peer client {}: reconnecting to {} in {wait:?}", self.nick, self.config.addr);
            if !self.pause(wait) {
                break;
            }
        }
        *self.shared.current.lock() = None;
        log::debug!("peer client {} stopped", self.nick);
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    fn emit(&self, event: ClientEvent) {
        // The receiver lives in the PeerClient, which joins us before it goes.
        let _ = self.events.send(event);
    }

    /// One connection attempt, and its session if the directory accepts us.
    fn attempt(&mut self) -> Attempt {
        let addr = self.config.addr;
        let stream = match self.connect() {
            Ok(Some(stream)) => stream,
            Ok(None) => return Attempt::Stopped,
            Err(e) => {
                if self.stopping() {
                    return Attempt::Stopped;
                }
                log::debug!("peer client {}: cannot connect to {addr}: {e}", self.nick);
                self.emit(ClientEvent::Error(format!("cannot connect to {addr}: {e}")));
                return Attempt::Ended(None);
            }
        };
        let conn = match stream.try_clone() {
            Ok(clone) => Arc::new(Connection {
                stream: clone,
                out: Mutex::new(Vec::new()),
                handshaked: AtomicBool::new(false),
                failure: Mutex::new(None),
            }),
            Err(e) => {
                self.emit(ClientEvent::Error(format!("cannot use the connection to {addr}: {e}")));
                return Attempt::Ended(None);
            }
        };
        // Published before the flag is checked: see `PeerClient::stop`.
        *self.shared.current.lock() = Some(conn.clone());
        let outcome = if self.stopping() { Attempt::Stopped } else { self.session(stream, &conn) };
        *self.shared.current.lock() = None;
        conn.close();
        outcome
    }

    /// Connects without blocking, so that `stop` can interrupt; `None` when
    /// stopped. The stream returned is blocking, with Nagle off and a write
    /// timeout of `connect_timeout`.
    fn connect(&mut self) -> io::Result<Option<TcpStream>> {
        let timeout = self.config.connect_timeout;
        let mut stream = mio::net::TcpStream::connect(self.config.addr)?;
        let registry = self.poll.registry();
        registry.register(&mut stream, CONNECTING, Interest::WRITABLE)?;
        let deadline = deadline_after(timeout);
        let connected = loop {
            if self.stopping() {
                break Ok(false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(io::Error::new(io::ErrorKind::TimedOut, format!("timed out after {timeout:?}")));
            }
            match self.poll.poll(&mut self.poll_events, Some(left.min(MAX_WAIT))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
            if !self.poll_events.iter().any(|event| event.token() == CONNECTING) {
                continue; // woken, or timed out: both checked above
            }
            if let Some(e) = stream.take_error()? {
                break Err(e);
            }
            match stream.peer_addr() {
                Ok(_) => break Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => break Err(e),
            }
        };
        let _ = self.poll.registry().deregister(&mut stream);
        if !connected? {
            return Ok(None);
        }
        let stream = TcpStream::from(stream);
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout.min(MAX_WAIT)))?;
        Ok(Some(stream))
    }

    /// Waits `wait` unless stopped first; `false` when stopped.
    fn pause(&mut self, wait: Duration) -> bool {
        let deadline = deadline_after(wait);
        loop {
            if self.stopping() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if let Err(e) = self.poll.poll(&mut self.poll_events, Some(left.min(MAX_WAIT)))
                && e.kind() != io::ErrorKind::Interrupted
            {
                // Never seen in practice; do not spin on it.
                log::warn!("peer client: poll failed while waiting: {e}");
                thread::sleep(left.min(Duration::from_millis(100)));
            }
        }
    }

    /// Handshakes, then reads until the connection ends.
    fn session(&mut self, stream: TcpStream, conn: &Connection) -> Attempt {
        let addr = self.config.addr;
        let failed = |this: &Self, why: String| {
            if this.stopping() {
                return Attempt::Stopped;
            }
            log::debug!("peer client {}: handshake with {addr} failed: {why}", this.nick);
            this.emit(ClientEvent::Error(format!("handshake with {addr} failed: {why}")));
            Attempt::Ended(None)
        };
        let offer = self.offers_nick_auth();
        let ours = wire::client_handshake_with(
            &self.nick,
            &self.config.network,
            &self.config.location,
            self.config.ping,
            offer.is_some(),
        );
        if let Err(e) = conn.write(wire::HANDSHAKE, &ours) {
            return failed(self, format!("cannot send the handshake: {e}"));
        }
        let mut reader = LineReader::new(stream);
        let reply = match reader.line_before(deadline_after(self.config.connect_timeout)) {
            Ok(line) => line,
            Err(ReadEnd::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                return failed(self, format!("no reply within {:?}", self.config.connect_timeout));
            }
            Err(end) => return failed(self, end.to_string()),
        };
        let reply = match wire::parse_envelope(&reply) {
            Ok(envelope) if envelope.kind == wire::DN_HANDSHAKE => wire::parse_dn_handshake(&envelope.line),
            Ok(envelope) => {
                return failed(self, format!("expected a handshake reply (795), got type {}", envelope.kind));
            }
            Err(e) => return failed(self, format!("malformed reply: {e}")),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return failed(self, format!("malformed reply: {e}")),
        };
        if !reply.accepted || reply.network != self.config.network {
            let mut reason = if reply.accepted {
                format!("directory {} serves {}, not {}", reply.nick, reply.network, self.config.network)
            } else {
                format!("directory {} refused the handshake", reply.nick)
            };
            if let Some(motd) = &reply.motd {
                reason.push_str(&format!(" (motd: {motd})"));
            }
            log::info!("peer client {}: {reason}", self.nick);
            self.emit(ClientEvent::Refused { reason });
            return Attempt::Ended(None);
        }
        let verified = match (offer, reply.nick_auth) {
            (Some((identity, id)), true) => {
                match self.authenticate(&mut reader, conn, &identity, &id, &ours, &reply.nick) {
                    Ok(()) => true,
                    Err(Failed::Error(why)) => return failed(self, why),
                    Err(Failed::Refused(reason)) => {
                        log::info!("peer client {}: {reason}", self.nick);
                        self.emit(ClientEvent::Refused { reason });
                        return Attempt::Ended(None);
                    }
                }
            }
            _ if self.config.nick_auth == Mode::Require => {
                let reason =
                    format!("directory {} does not support required nick authentication", reply.nick);
                log::info!("peer client {}: {reason}", self.nick);
                self.emit(ClientEvent::Refused { reason });
                return Attempt::Ended(None);
            }
            _ => false,
        };
        if let Err(e) = reader.stream.set_read_timeout(None) {
            return failed(self, format!("cannot clear the read timeout: {e}"));
        }
        let since = Instant::now();
        conn.handshaked.store(true, Ordering::Release);
        log::info!(
            "peer client {} connected to directory {} at {addr}{}",
            self.nick,
            reply.nick,
            if verified { ", nick verified" } else { "" }
        );
        self.emit(ClientEvent::Connected { nick: reply.nick, motd: reply.motd, ping: reply.ping, verified });

        let reason = self.read_messages(&mut reader, conn);
        let reason = if self.stopping() {
            "client stopped".to_owned()
        } else {
            conn.failure.lock().take().unwrap_or(reason)
        };
        log::info!("peer client {} disconnected from {addr}: {reason}", self.nick);
        self.emit(ClientEvent::Disconnected { reason });
        if self.stopping() { Attempt::Stopped } else { Attempt::Ended(Some(since.elapsed())) }
    }

    /// Our identity and the directory id, when we offer nick authentication.
    fn offers_nick_auth(&self) -> Option<(Identity, String)> {
        if self.config.nick_auth == Mode::Off {
            return None;
        }
        Some((self.config.identity.clone()?, self.config.nick_auth_id.clone()?))
    }

    /// The JMP-0005 exchange after an accepting 795: the 803 challenge, our
    /// 805 proof (only for the directory id we expect), the 807 answer.
    fn authenticate(
        &self,
        reader: &mut LineReader,
        conn: &Connection,
        identity: &Identity,
        expected_id: &str,
        our_line: &str,
        directory: &str,
    ) -> std::result::Result<(), Failed> {
        let deadline = deadline_after(self.config.connect_timeout);
        let mut next = |what: &str, kind: u32| -> std::result::Result<String, Failed> {
            let line = match reader.line_before(deadline) {
                Ok(line) => line,
                Err(ReadEnd::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    return Err(Failed::Error(format!("no {what} within {:?}", self.config.connect_timeout)));
                }
                Err(end) => return Err(Failed::Error(format!("{end} before the {what}"))),
            };
            match wire::parse_envelope(&line) {
                Ok(envelope) if envelope.kind == kind => Ok(envelope.line.into_owned()),
                Ok(envelope) => {
                    Err(Failed::Error(format!("expected the {what} ({kind}), got type {}", envelope.kind)))
                }
                Err(e) => Err(Failed::Error(format!("malformed {what}: {e}"))),
            }
        };
        let challenge = auth::parse_challenge(&next("nick-auth challenge", auth::CHALLENGE)?)
            .map_err(|e| Failed::Error(format!("malformed nick-auth challenge: {e}")))?;
        if challenge.directory_id != expected_id {
            return Err(Failed::Error(format!(
                "the nick-auth challenge is for directory id {:?}, not {expected_id:?}: no proof sent",
                challenge.directory_id
            )));
        }
        let proof = identity.sign(&challenge.challenge, expected_id, our_line);
        conn.write(auth::PROOF, &auth::encode_proof(&proof))
            .map_err(|e| Failed::Error(format!("cannot send the nick-auth proof: {e}")))?;
        let answer = next("nick-auth answer", auth::RESULT)?;
        match auth::parse_result(&answer) {
            Ok(Code::Ok) => Ok(()),
            Ok(code) => {
                Err(Failed::Refused(format!("directory {directory} refused our nick proof ({code})")))
            }
            Err(e) => Err(Failed::Error(format!("malformed nick-auth answer: {e}"))),
        }
    }

    /// Reads and reports messages until the session ends; returns why.
    fn read_messages(&self, reader: &mut LineReader, conn: &Connection) -> String {
        loop {
            let line = match reader.line() {
                Ok(line) => line,
                Err(end) => return end.to_string(),
            };
            let envelope = match wire::parse_envelope(&line) {
                Ok(envelope) => envelope,
                Err(e) => return format!("malformed message from the directory: {e}"),
            };
            match envelope.kind {
                wire::PING => {
                    if self.config.ping
                        && let Err(e) = conn.write(wire::PONG, "")
                    {
                        return format!("send failed: {e}");
                    }
                    self.emit(ClientEvent::Ping);
                }
                wire::PEERLIST => self.emit(ClientEvent::Peerlist(wire::parse_peerlist(&envelope.line))),
                kind => self.emit(ClientEvent::Message { kind, line: envelope.line.into_owned() }),
            }
        }
    }
}

/// How the nick-authentication exchange failed.
enum Failed {
    /// Reported as [`ClientEvent::Error`].
    Error(String),
    /// Reported as [`ClientEvent::Refused`].
    Refused(String),
}

/// `now + after`, or far in the future when that overflows; never panics.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Why reading lines stopped.
#[derive(Debug)]
enum ReadEnd {
    /// End of stream.
    Closed,
    /// A line longer than [`wire::MAX_LINE`], terminator included.
    TooLong,
    /// A read failed (or timed out).
    Io(io::Error),
}

impl std::fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadEnd::Closed => f.write_str("closed by the directory"),
            ReadEnd::TooLong => write!(f, "a line longer than {} bytes", wire::MAX_LINE),
            ReadEnd::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// Lines from a blocking stream: ended by `\n`, a `\r` before it dropped,
/// at most [`wire::MAX_LINE`] bytes with the terminator.
struct LineReader {
    stream: TcpStream,
    /// Bytes read and not yet returned.
    buf: LineBuffer,
    chunk: Vec<u8>,
}

impl LineReader {
    fn new(stream: TcpStream) -> Self {
        LineReader { stream, buf: LineBuffer::new(), chunk: vec![0; READ_CHUNK] }
    }

    /// The next line, without its terminator. A read timeout set on the
    /// stream comes back as `ReadEnd::Io`, keeping what was read so far.
    fn line(&mut self) -> Result<Vec<u8>, ReadEnd> {
        loop {
            match self.buf.next_line(wire::MAX_LINE) {
                Ok(Some(line)) => return Ok(line.to_vec()),
                Ok(None) => {}
                Err(TooLong) => return Err(ReadEnd::TooLong),
            }
            // Only the start of a line is left: cheap to move, and the
            // memory of a burst of long lines goes back.
            self.buf.shrink(KEEP_BUFFER);
            match self.stream.read(&mut self.chunk) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(n) => self.buf.extend(&self.chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadEnd::Io(e)),
            }
        }
    }

    /// The next line, if it arrives before `deadline`.
    fn line_before(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadEnd> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Io(io::ErrorKind::TimedOut.into()));
            }
            self.stream.set_read_timeout(Some(left.min(MAX_WAIT))).map_err(ReadEnd::Io)?;
            match self.line() {
                Err(ReadEnd::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets_after_a_long_session() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(60));
        let waits: Vec<u64> = (0..9).map(|_| b.after(None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // A short session does not reset, a long one does.
        assert_eq!(b.after(Some(s(59))), s(60));
        assert_eq!(b.after(Some(s(60))), s(1));
        assert_eq!(b.after(Some(s(3))), s(2));
        assert_eq!(b.after(None), s(4));
        // Equal bounds: a constant delay; huge ones saturate, never panic.
        let mut flat = Backoff::new(s(5), s(5));
        assert_eq!([flat.after(None), flat.after(None)], [s(5), s(5)]);
        let mut huge = Backoff::new(Duration::MAX / 2 + s(1), Duration::MAX);
        huge.after(None);
        assert_eq!(huge.after(None), Duration::MAX);
    }

    #[test]
    fn configs_are_validated() {
        assert!(PeerClientConfig::default().validate().is_ok());
        let bad = |config: PeerClientConfig| match config.validate() {
            Err(Error::InvalidConfig(why)) => why,
            other => panic!("{other:?}"),
        };
        let d = PeerClientConfig::default;
        assert!(bad(PeerClientConfig { network: String::new(), ..d() }).contains("network"));
        assert!(bad(PeerClientConfig { nick: Some("bob".into()), ..d() }).contains("not a nick"));
        assert!(bad(PeerClientConfig { reconnect_min: Duration::ZERO, ..d() }).contains("positive"));
        assert!(bad(PeerClientConfig { connect_timeout: Duration::ZERO, ..d() }).contains("positive"));
        let inverted = PeerClientConfig { reconnect_min: Duration::from_secs(61), ..d() };
        assert!(bad(inverted).contains("must not exceed"));
        assert!(PeerClient::start(PeerClientConfig { nick: Some("J5bad".into()), ..d() }).is_err());
    }

    /// A reader over a connected pair, and the writing end.
    fn pair() -> (LineReader, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (read_end, _) = listener.accept().unwrap();
        read_end.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (LineReader::new(read_end), writer)
    }

    #[test]
    fn lines_end_with_crlf_or_lf_and_are_capped() {
        let (mut reader, mut writer) = pair();
        writer.write_all(b"one\r\ntwo\n\r\nthr").unwrap();
        assert_eq!(reader.line().unwrap(), b"one");
        assert_eq!(reader.line().unwrap(), b"two");
        assert_eq!(reader.line().unwrap(), b"");
        writer.write_all(b"ee\n").unwrap();
        assert_eq!(reader.line().unwrap(), b"three");
        // Exactly the limit with its terminator passes; one byte more does not.
        let longest = vec![b'x'; wire::MAX_LINE - 1];
        writer.write_all(&longest).unwrap();
        writer.write_all(b"\n").unwrap();
        assert_eq!(reader.line().unwrap(), longest);
        writer.write_all(&vec![b'y'; wire::MAX_LINE]).unwrap();
        writer.write_all(b"\n").unwrap();
        assert!(matches!(reader.line(), Err(ReadEnd::TooLong)));

        // An endless line is cut off without waiting for its end.
        let (mut reader, mut writer) = pair();
        writer.write_all(&vec![b'z'; wire::MAX_LINE + 10]).unwrap();
        assert!(matches!(reader.line(), Err(ReadEnd::TooLong)));

        let (mut reader, writer) = pair();
        drop(writer);
        assert!(matches!(reader.line(), Err(ReadEnd::Closed)));
        assert_eq!(ReadEnd::Closed.to_string(), "closed by the directory");
    }

    #[test]
    fn a_late_line_times_out_and_keeps_its_start() {
        let (mut reader, mut writer) = pair();
        writer.write_all(b"par").unwrap();
        let deadline = Instant::now() + Duration::from_millis(100);
        match reader.line_before(deadline) {
            Err(ReadEnd::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
        writer.write_all(b"tial\n").unwrap();
        assert_eq!(reader.line_before(deadline_after(Duration::from_secs(10))).unwrap(), b"partial");
    }

    #[test]
    fn deadlines_never_overflow() {
        assert!(deadline_after(Duration::MAX) > Instant::now());
    }
}
