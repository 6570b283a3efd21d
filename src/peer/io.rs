//! The hub's I/O thread: one mio poll that owns every socket. It accepts,
//! handshakes, routes PUBMSG and PRIVMSG, answers PING and GETPEERLIST
//! within each peer's budgets, writes through bounded queues, sends the
//! coalesced `;D` notices and carries out the sweep thread's commands.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::auth::{self, Code, Mode};
use super::limits::{PeerRates, Rate, Verdict};
use super::lines::{LineBuffer, TooLong};
use super::output::{Budget, Output, Shared as SharedBytes, Wrote};
use super::registry::{Counters, Dropped, Kind, PeerInfo};
use super::server::{HubConfig, HubEvent, Shared};
use super::sweep::{Command, EvictReason, later, pinged_ids};
use super::wire::{self, HandshakeError, Location};
use crate::lograte::{LogLimit, log_limit};

pub(super) const LISTENER: Token = Token(0);
pub(super) const WAKER: Token = Token(1);
/// Connection ids start here, so an id is its token.
const FIRST_ID: u64 = 2;
/// A peer that sends this much in one go yields to the others; its rest is
/// read on the next turn of the loop.
const READ_BUDGET: usize = 256 * 1024;
/// A connection's input buffer shrinks back when it held more than this.
const KEEP_BUFFER: usize = 8 * 1024;
/// Lines handled for one peer per turn: a peer whose requests cost the hub
/// work cannot hold the I/O thread.
const LINE_BUDGET: usize = 64;
/// After a failed `accept` (out of file descriptors, say), retry after this.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Refused connections are logged one by one at debug level, and as a
/// warning at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The lines peers can cause, each limited (see [`crate::lograte`]); the
/// I/O thread flushes their counts after each turn and at its end.
static REFUSED: LogLimit = log_limit!(log::Level::Warn, "hub: connections refused").per(1, REFUSAL_LOG_EVERY);
static ACCEPT_FAILED: LogLimit = log_limit!(log::Level::Warn, "hub: accept failures");
static SET_UP_FAILED: LogLimit = log_limit!(log::Level::Warn, "hub: connections not set up");
static OVER_BUDGET: LogLimit = log_limit!(log::Level::Warn, "hub: peers evicted over the output budget");
static NO_CHALLENGE: LogLimit = log_limit!(log::Level::Error, "hub: nick-auth challenges not drawn");
static DISPLACED: LogLimit = log_limit!(log::Level::Info, "hub: connections displaced by a proven nick");
static EVICTED: LogLimit = log_limit!(log::Level::Info, "hub: peers evicted");
static LIMITS: [&LogLimit; 7] =
    [&REFUSED, &ACCEPT_FAILED, &SET_UP_FAILED, &OVER_BUDGET, &NO_CHALLENGE, &DISPLACED, &EVICTED];
/// The PEERLIST envelope around its `line`: `{"type": 789, "line": "` and `"}\r\n`.
const PEERLIST_ENVELOPE: usize = 27;

/// What the sweep thread asks of the I/O thread.
pub(super) enum Control {
    /// A sweep's or pong check's commands, and when they were decided.
    Commands(Instant, Vec<Command>),
    /// The hub was stalled: read what every peer sent meanwhile, then answer.
    Drain(Sender<()>),
    Stop,
}

/// The handshaked peer a connection became.
struct PeerMeta {
    nick: String,
    location: Location,
    ping: bool,
    peerlist_features: bool,
    /// Its location hint, `<nick>;<location>`, and with `;F:<features>`.
    hint: String,
    hint_features: String,
}

/// A connection whose handshake was accepted and that was sent the 803
/// challenge: not a peer (not routed, not listed) until its proof checks out.
struct Authenticating {
    handshake: wire::Handshake,
    /// [`auth::line_hash`] of its 793 line: all the transcript needs of it.
    line_hash: String,
    challenge: String,
}

struct Conn {
    /// Also its poll token.
    id: u64,
    stream: TcpStream,
    addr: SocketAddr,
    input: LineBuffer,
    output: Output,
    writable: bool,
    peer: Option<PeerMeta>,
    /// Set while the hub waits for its nick-authentication proof.
    auth: Option<Box<Authenticating>>,
    rates: PeerRates,
    /// Where in the output stream the last PEERLIST answer starts and ends.
    peerlist_start: u64,
    peerlist_end: u64,
}

/// Where a connection's output goes, borrowed from the I/O thread.
struct Outbox<'a> {
    registry: &'a mio::Registry,
    budget: &'a Budget,
    now: Instant,
    max_queued: usize,
}

enum Payload<'a> {
    Bytes(&'a [u8]),
    Shared(&'a Arc<SharedBytes>),
}

impl Conn {
    /// Hands a message to the connection: written now as far as the socket
    /// takes it, the rest queued. `Ok(true)` when output is left queued. A
    /// queue past `max_queued` is a slow consumer; a write error a failed send.
    fn send(&mut self, payload: Payload<'_>, out: &Outbox<'_>) -> Result<bool, EvictReason> {
        let wrote = match payload {
            Payload::Bytes(bytes) => self.output.send(&mut self.stream, bytes, out.now, out.budget),
            Payload::Shared(shared) => self.output.send_shared(&mut self.stream, shared, out.now),
        };
        self.after_write(wrote, out)
    }

    /// The socket can take more: writes the queue.
    fn flush(&mut self, out: &Outbox<'_>) -> Result<bool, EvictReason> {
        let wrote = self.output.flush(&mut self.stream, out.budget);
        self.after_write(wrote, out)
    }

    /// Output queued for the peer, less what is left of its last PEERLIST
    /// answer (bounded on its own: one at a time, a few per minute).
    fn relay_queued(&self) -> usize {
        let answer_left = self.peerlist_end.saturating_sub(self.output.written().max(self.peerlist_start));
        self.output.queued() - self.output.queued().min(usize::try_from(answer_left).unwrap_or(usize::MAX))
    }

    fn after_write(&mut self, wrote: io::Result<Wrote>, out: &Outbox<'_>) -> Result<bool, EvictReason> {
        if let Err(e) = wrote {
            return Err(EvictReason::SendFailed(e.to_string()));
        }
        // Relays stop at `max_queued`; the hub's own output (hints, PONGs,
        // PINGs, notices) has as much again on top before the peer is evicted.
        if self.relay_queued() > out.max_queued.saturating_mul(2) {
            return Err(EvictReason::SlowConsumer);
        }
        let want_writable = self.output.queued() > 0;
        if want_writable != self.writable {
            let interest =
                if want_writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if let Err(e) = out.registry.reregister(&mut self.stream, Token(self.id as usize), interest) {
                return Err(EvictReason::SendFailed(format!("cannot watch the socket: {e}")));
            }
            self.writable = want_writable;
        }
        Ok(want_writable)
    }

    /// Whether a relayed message of `len` bytes would push the queue past
    /// `max_queued`: then it is dropped for this peer rather than queued.
    fn too_far_behind(&self, len: usize, max_queued: usize) -> bool {
        self.output.queued() > 0 && self.relay_queued() + len > max_queued
    }
}

/// Why a connection closes.
enum Close {
    Left(String),
    Evicted(EvictReason),
    Rejected(String),
    /// Closed before its handshake because of a limit.
    Refused(String),
}

/// The `;D` notices waiting to go out.
#[derive(Default)]
struct Notices {
    /// (nick, `<nick>;<location>;D`, always) of peers gone since the last
    /// notice. A nick held again by then is not told gone, unless `always`
    /// (a peer displaced by a verified connection: its offers go).
    gone: Vec<(String, String, bool)>,
    last_sent: Option<Instant>,
}

pub(super) struct Io {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    config: HubConfig,
    /// Connections not yet handshaked, oldest first, with their deadlines.
    pending: VecDeque<(Instant, u64)>,
    /// Connections challenged for their nick-auth proof, oldest first, with
    /// their deadlines. They still count in `pending_count`.
    authenticating: VecDeque<(Instant, u64)>,
    pending_count: usize,
    /// Connections with unread input left over from their read budget.
    unread: Vec<u64>,
    /// Connections with queued output.
    backlogged: HashSet<u64>,
    /// When the last turn of the loop ended: a poll is due from there.
    awake: Instant,
    budget: Arc<Budget>,
    accept_retry: Option<Instant>,
    /// Whether accepting fails (logged once per episode).
    accept_failing: bool,
    notices: Notices,
    /// The encoded GETPEERLIST answers, without and with `F:` features,
    /// shared by every requester until a maker joins or leaves.
    peerlists: [Option<Arc<SharedBytes>>; 2],
    /// Nick-auth challenges that may still be sent (`max_challenges_per_sec`
    /// a second, as many in a burst), and when they were last counted.
    challenges: (f64, Instant),
    scratch: Vec<u8>,
    line: Vec<u8>,
    encoded: Vec<u8>,
}

impl Io {
    pub(super) fn new(
        poll: Poll,
        mut listener: TcpListener,
        control: Receiver<Control>,
        shared: Arc<Shared>,
        config: &HubConfig,
    ) -> io::Result<Io> {
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let awake = shared.clock.now();
        Ok(Io {
            poll,
            listener,
            conns: HashMap::new(),
            next_id: FIRST_ID,
            control,
            shared,
            config: config.clone(),
            pending: VecDeque::new(),
            authenticating: VecDeque::new(),
            pending_count: 0,
            unread: Vec::new(),
            backlogged: HashSet::new(),
            awake,
            budget: Arc::new(Budget::default()),
            accept_retry: None,
            accept_failing: false,
            notices: Notices::default(),
            peerlists: [None, None],
            challenges: (f64::from(config.max_challenges_per_sec), awake),
            scratch: vec![0; 64 * 1024],
            line: Vec::new(),
            encoded: Vec::new(),
        })
    }

    fn now(&self) -> Instant {
        self.shared.clock.now()
    }

    pub(super) fn run(&mut self) {
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
            // A stall may strike anywhere: in the poll (it returns later than
            // set), or in a turn (the turn takes longer than any turn does).
            let woke = self.now();
            if let Some(timeout) = timeout {
                self.skip_stall(woke.saturating_duration_since(later(self.awake, timeout)), woke);
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
            let now = self.now();
            self.skip_stall(now.saturating_duration_since(woke), now);
            self.expire_backlogs();
            self.keep_budget();
            self.send_notices();
            for limit in LIMITS {
                limit.flush(now);
            }
            self.awake = now;
        }
        self.shutdown();
    }

    /// How long the poll may sleep: until the next handshake deadline, write
    /// deadline, notice or accept retry; not at all with unread input waiting.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unread.is_empty() {
            return Some(Duration::ZERO);
        }
        let write_deadline = self
            .backlogged
            .iter()
            .filter_map(|id| self.conns.get(id)?.output.stalled_since())
            .min()
            .map(|since| later(since, self.config.write_deadline));
        let notice = (!self.notices.gone.is_empty())
            .then(|| self.notices.last_sent.map_or(self.now(), |at| later(at, self.config.notice_interval)));
        // While output waits, wake at least this often: a stall of the hub is
        // then seen whole, and does not count against the write deadlines.
        let watch = (!self.backlogged.is_empty())
            .then(|| later(self.now(), (self.config.stall_threshold / 2).max(Duration::from_millis(1))));
        let next = [
            self.pending.front().map(|d| d.0),
            self.authenticating.front().map(|d| d.0),
            self.accept_retry,
            write_deadline,
            notice,
            watch,
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Rounded up to a millisecond, so a wake-up is never a little early and spins.
        let wait = next.saturating_duration_since(self.now());
        Some(wait + Duration::from_millis(1))
    }

    /// Time that passed `late` beyond what the thread planned (a poll that
    /// returned after it was due, a turn longer than any turn takes): past
    /// `stall_threshold` the hub itself was stalled (a stopped process, a
    /// suspended machine), and no queue could drain meanwhile. Their write
    /// deadlines skip the stall.
    fn skip_stall(&mut self, late: Duration, now: Instant) {
        if late <= self.config.stall_threshold {
            return;
        }
        log::warn!(
            "hub: the I/O thread woke {late:?} late: the hub was stalled; write deadlines skip the stall"
        );
        for id in &self.backlogged {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.output.forgive(late, now);
            }
        }
    }

    /// Handles the sweep's commands; `false` on Stop.
    fn apply_control(&mut self) -> bool {
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::Stop => return false,
                Control::Drain(done) => {
                    let ids: Vec<u64> = self.conns.keys().copied().collect();
                    for id in ids {
                        self.read(id);
                    }
                    let _ = done.send(());
                }
                Control::Commands(decided, commands) => {
                    // The seed's order: evictions, then probes. PINGs go out in
                    // one batch: one registry lock, no per-peer bookkeeping.
                    let (pings, others): (Vec<Command>, Vec<Command>) =
                        commands.into_iter().partition(|c| matches!(c, Command::Ping { .. }));
                    let (evictions, probes): (Vec<Command>, Vec<Command>) =
                        others.into_iter().partition(|c| matches!(c, Command::Evict { .. }));
                    evictions.into_iter().for_each(|c| self.command(c, decided));
                    self.ping_all(&pinged_ids(&pings), decided);
                    probes.into_iter().for_each(|c| self.command(c, decided));
                }
            }
        }
        true
    }

    fn command(&mut self, command: Command, decided: Instant) {
        match command {
            Command::Evict { id, reason } => {
                if matches!(reason, EvictReason::IdleTimeout | EvictReason::PongTimeout) {
                    // The peer may have spoken since the decision: read it, and look again.
                    self.read(id);
                    let (now, sweep) = (self.now(), self.config.sweep);
                    if !self.shared.registry.still_due(id, &reason, now, &sweep) {
                        log::debug!("hub: not evicting peer {id} for {reason}: it spoke since the sweep");
                        return;
                    }
                }
                self.close(id, Close::Evicted(reason));
            }
            Command::Ping { id } => self.ping_all(&[id], decided),
            Command::OrderbookProbe { id } => {
                if self.conns.contains_key(&id) {
                    Counters::add(&self.shared.counters.probes_sent);
                    self.shared.registry.probed(id, decided);
                    let probe = wire::orderbook_probe(&self.shared.nick);
                    self.send_own(id, wire::PUBMSG, &probe);
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
        self.encoded.clear();
        wire::encode(wire::PING, "", &mut self.encoded);
        let out = Outbox {
            registry: self.poll.registry(),
            budget: &self.budget,
            now: self.shared.clock.now(),
            max_queued: self.config.max_queued,
        };
        let mut failed = Vec::new();
        for &id in ids {
            if let Some(conn) = self.conns.get_mut(&id) {
                Counters::add(&self.shared.counters.pings_sent);
                match conn.send(Payload::Bytes(&self.encoded), &out) {
                    Ok(true) => {
                        self.backlogged.insert(id);
                    }
                    Ok(false) => {}
                    Err(reason) => failed.push((id, reason)),
                }
            }
        }
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
                        ACCEPT_FAILED.log(
                            self.now(),
                            format_args!(
                                "hub: accept failed, retrying every {ACCEPT_RETRY:?} until it works: {e}"
                            ),
                        );
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
        if self.pending_count >= self.config.max_pending {
            self.push_out_oldest_pending();
        }
        let id = self.next_id;
        self.next_id += 1;
        let _ = stream.set_nodelay(true);
        // The kernel's buffers are the larger part of what a peer that does
        // not read can make us hold: cap them.
        for (option, size) in
            [(libc::SO_SNDBUF, self.config.send_buffer), (libc::SO_RCVBUF, self.config.receive_buffer)]
        {
            if size > 0
                && let Err(e) = crate::sys::set_socket_int(stream.as_fd(), option, size)
            {
                SET_UP_FAILED
                    .log(self.now(), format_args!("hub: cannot cap the socket buffers of {addr}: {e}"));
            }
        }
        if let Err(e) = self.poll.registry().register(&mut stream, Token(id as usize), Interest::READABLE) {
            SET_UP_FAILED.log(self.now(), format_args!("hub: cannot watch {addr}: {e}"));
            return;
        }
        let now = self.now();
        self.conns.insert(
            id,
            Conn {
                id,
                stream,
                addr,
                input: LineBuffer::new(),
                output: Output::new(),
                writable: false,
                peer: None,
                auth: None,
                rates: PeerRates::new(now),
                peerlist_start: 0,
                peerlist_end: 0,
            },
        );
        self.pending_count += 1;
        self.pending.push_back((later(now, self.config.handshake_timeout), id));
    }

    /// The pool of connections not yet handshaked is full: the oldest makes
    /// room. A real client handshakes within milliseconds, so the oldest is
    /// the likeliest to be idle; behind Tor every connection comes from
    /// 127.0.0.1, so this, not a per-address cap, keeps idle sockets from
    /// locking real peers out.
    /// Connections waiting for their nick-authentication proof count too.
    fn push_out_oldest_pending(&mut self) {
        let why = |count: usize| {
            format!("{count} connections wait for their handshake or nick-auth proof: the oldest makes room")
        };
        while let Some((_, id)) = self.pending.pop_front() {
            if self.conns.get(&id).is_some_and(|c| c.peer.is_none()) {
                self.close(id, Close::Refused(why(self.pending_count)));
                return;
            }
        }
        while let Some((_, id)) = self.authenticating.pop_front() {
            if self.conns.get(&id).is_some_and(|c| c.auth.is_some()) {
                self.close(id, Close::Refused(why(self.pending_count)));
                return;
            }
        }
    }

    /// Closes the connections past their handshake deadline, and those past
    /// their nick-auth deadline (807 `expired` first).
    fn expire_handshakes(&mut self) {
        let now = self.now();
        while let Some(&(deadline, id)) = self.pending.front() {
            if deadline > now {
                break;
            }
            self.pending.pop_front();
            let waiting = |c: &Conn| c.peer.is_none() && c.auth.is_none();
            if self.conns.get(&id).is_some_and(waiting) {
                // Its handshake may be waiting unread (a stall of the hub, a busy turn).
                self.read(id);
                if self.conns.get(&id).is_some_and(waiting) {
                    self.close(id, Close::Evicted(EvictReason::HandshakeTimeout));
                }
            }
        }
        while let Some(&(deadline, id)) = self.authenticating.front() {
            if deadline > now {
                return;
            }
            self.authenticating.pop_front();
            if self.conns.get(&id).is_some_and(|c| c.auth.is_some()) {
                self.read(id);
                if self.conns.get(&id).is_some_and(|c| c.auth.is_some()) {
                    self.shared.counters.proof_refused(Code::Expired);
                    self.send_own(id, auth::RESULT, &auth::encode_result(Code::Expired));
                    self.close(id, Close::Evicted(EvictReason::NickAuthTimeout));
                }
            }
        }
    }

    /// Evicts every peer whose output has not drained for the write
    /// deadline, whatever else it sends: it does not read, or reads too
    /// slowly to keep up.
    fn expire_backlogs(&mut self) {
        if self.backlogged.is_empty() {
            return;
        }
        let now = self.now();
        let deadline = self.config.write_deadline;
        let mut late = Vec::new();
        self.backlogged.retain(|id| match self.conns.get(id).and_then(|c| c.output.stalled_since()) {
            None => false,
            Some(since) => {
                if now.saturating_duration_since(since) >= deadline {
                    late.push(*id);
                }
                true
            }
        });
        for id in late {
            // The socket may have room it has not told us of yet (a stall of
            // the hub, a busy turn): a queue that drains now is not late.
            self.flush(id);
            let now = self.now();
            if let Some(since) = self.conns.get(&id).and_then(|c| c.output.stalled_since())
                && now.saturating_duration_since(since) >= deadline
            {
                self.close(id, Close::Evicted(EvictReason::SlowConsumer));
            }
        }
    }

    /// Keeps the hub's queued output within `max_queued_total`, evicting the
    /// peers whose queues would give back the most first (their own bytes,
    /// and broadcast buffers no one else still holds), then the longest.
    fn keep_budget(&mut self) {
        if self.budget.used() <= self.config.max_queued_total {
            return;
        }
        let mut largest: Vec<(usize, usize, u64)> = self
            .backlogged
            .iter()
            .filter_map(|id| {
                let output = &self.conns.get(id)?.output;
                Some((output.freeable(), output.queued(), *id))
            })
            .collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        for (_, queued, id) in largest {
            if self.budget.used() <= self.config.max_queued_total {
                break;
            }
            OVER_BUDGET.log(
                self.now(),
                format_args!(
                    "hub: {} bytes of output queued, over the {}-byte budget: evicting peer {id}, {queued} bytes behind",
                    self.budget.used(),
                    self.config.max_queued_total
                ),
            );
            self.close(id, Close::Evicted(EvictReason::SlowConsumer));
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
            if let Some(close) = self.lines(&mut conn, &mut lines_left) {
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
                    conn.input.extend(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(Close::Left(format!("read failed: {e}"))),
            }
        };
        conn.input.shrink(KEEP_BUFFER);
        self.conns.insert(id, conn);
        if let Some(close) = closed {
            self.close(id, close);
        }
    }

    /// Handles whole lines in the connection's input while `budget` lasts.
    fn lines(&mut self, conn: &mut Conn, budget: &mut usize) -> Option<Close> {
        while *budget > 0 {
            let mut line = std::mem::take(&mut self.line);
            line.clear();
            match conn.input.next_line(self.config.max_line) {
                Ok(Some(text)) => line.extend_from_slice(text),
                Ok(None) => {
                    self.line = line;
                    return None;
                }
                Err(TooLong) => {
                    self.line = line;
                    let why = format!("a line longer than {} bytes", self.config.max_line);
                    return Some(protocol_error(conn, why));
                }
            }
            *budget -= 1;
            let outcome = self.line(conn, &line);
            self.line = line;
            if outcome.is_some() {
                return outcome;
            }
        }
        None
    }

    /// Handles one line (terminator stripped).
    fn line(&mut self, conn: &mut Conn, line: &[u8]) -> Option<Close> {
        let now = self.now();
        if conn.peer.is_some() {
            // Anything received proves the peer alive, before it is even parsed.
            self.shared.registry.seen(conn.id, now);
        }
        let envelope = match wire::parse_envelope(line) {
            Ok(envelope) => envelope,
            Err(e) => return Some(protocol_error(conn, format!("malformed message: {e}"))),
        };
        let Some(peer) = &conn.peer else {
            if conn.auth.is_some() {
                return self.proof(conn, envelope.kind, &envelope.line);
            }
            if envelope.kind != wire::HANDSHAKE {
                return Some(Close::Rejected(format!("message type {} before the handshake", envelope.kind)));
            }
            return self.handshake(conn, &envelope.line);
        };
        let counters = &self.shared.counters;
        let limits = self.config.limits;
        match envelope.kind {
            wire::PING => {
                counters.message(Kind::Ping);
                // A peer that did not advertise ping must never get a PONG.
                if !peer.ping {
                    Counters::add(&counters.pings_unanswered);
                    return None;
                }
                match budget(&mut conn.rates.pings, now, &limits, limits.pings, counters) {
                    Err(()) => return Some(rate_limited("PINGs")),
                    Ok(false) => Counters::add(&counters.pings_unanswered),
                    Ok(true) => {
                        Counters::add(&counters.pongs_sent);
                        return self.reply(conn, wire::PONG, "");
                    }
                }
            }
            wire::PONG => {
                counters.message(Kind::Pong);
                self.shared.registry.pong(conn.id);
            }
            wire::GETPEERLIST => {
                counters.message(Kind::GetPeerlist);
                return self.peerlist(conn, now);
            }
            wire::PUBMSG => {
                counters.message(Kind::Pubmsg);
                return self.pubmsg(conn, &envelope.line, now);
            }
            wire::PRIVMSG => {
                counters.message(Kind::Privmsg);
                return self.privmsg(conn, &envelope.line, now);
            }
            wire::DISCONNECT => return Some(Close::Left("said DISCONNECT".into())),
            // joinmarket-ng closes a peer that sends a nick-auth message once
            // past authentication (a second proof is no use, and no client sends one).
            auth::CHALLENGE | auth::PROOF | auth::RESULT if self.nick_auth() => {
                counters.message(Kind::Other);
                let why = format!("nick-auth message type {} after the handshake", envelope.kind);
                return Some(Close::Evicted(EvictReason::Protocol(why)));
            }
            _ => counters.message(Kind::Other), // 797 and unknown types: ignored
        }
        None
    }

    /// Relays a PUBMSG to every other handshaked peer, within the sender's budgets.
    fn pubmsg(&mut self, conn: &mut Conn, text: &str, now: Instant) -> Option<Close> {
        if let Err(close) = sender_route(conn, wire::PUBMSG, text)? {
            return Some(close);
        }
        let counters = &self.shared.counters;
        let limits = self.config.limits;
        match budget(&mut conn.rates.pubmsg, now, &limits, limits.pubmsg, counters) {
            Err(()) => return Some(rate_limited("PUBMSGs")),
            Ok(false) => return None,
            Ok(true) => {}
        }
        // Reference clients run every `!`-separated command of a message:
        // an `!orderbook` anywhere in it is an orderbook request.
        let orderbook =
            text.split('!').skip(2).any(|part| wire::is_orderbook(part.split(' ').next().unwrap_or("")));
        if orderbook {
            match budget(&mut conn.rates.orderbook, now, &limits, limits.orderbook, counters) {
                Err(()) => return Some(rate_limited("!orderbook requests")),
                Ok(false) => {
                    conn.rates.pubmsg.refund();
                    return None;
                }
                Ok(true) => {}
            }
        }
        let mut bytes = Vec::with_capacity(text.len() + 34);
        wire::encode(wire::PUBMSG, text, &mut bytes);
        if bytes.len() > self.config.max_line {
            // Re-encoded with our spacing and `\r\n` it would be too long for its readers.
            counters.dropped(Dropped::TooLong);
            return None;
        }
        Counters::add(&counters.relayed_pubmsg);
        let message = SharedBytes::new(bytes, self.budget.clone());
        self.broadcast(&message, true, &HashSet::new());
        None
    }

    /// Hands one shared message to every handshaked peer in `conns` (the
    /// connection being read is out of the map, so never to the sender).
    /// A relay skips peers too far behind; the hub's own notices do not.
    /// Never to the connections in `skip`.
    fn broadcast(&mut self, message: &Arc<SharedBytes>, relay: bool, skip: &HashSet<u64>) -> u64 {
        let out = Outbox {
            registry: self.poll.registry(),
            budget: &self.budget,
            now: self.shared.clock.now(),
            max_queued: self.config.max_queued,
        };
        let counters = &self.shared.counters;
        let len = message.bytes().len();
        let mut failed = Vec::new();
        let mut delivered = 0;
        for (&id, conn) in self.conns.iter_mut() {
            if conn.peer.is_none() || skip.contains(&id) {
                continue;
            }
            if relay && conn.too_far_behind(len, out.max_queued) {
                counters.dropped(Dropped::SlowRecipient);
                continue;
            }
            delivered += 1;
            match conn.send(Payload::Shared(message), &out) {
                Ok(true) => {
                    self.backlogged.insert(id);
                }
                Ok(false) => {}
                Err(reason) => failed.push((id, reason)),
            }
        }
        if relay {
            Counters::add_n(&counters.deliveries, delivered);
        }
        for (id, reason) in failed {
            self.close(id, Close::Evicted(reason));
        }
        // Within the turn too: a burst of broadcasts to many slow peers
        // must not overshoot the budget until the turn ends.
        self.keep_budget();
        delivered
    }

    /// Delivers a PRIVMSG to the peer holding its `<to>` nick, then, after a
    /// maker's, that maker's location hint.
    fn privmsg(&mut self, conn: &mut Conn, text: &str, _now: Instant) -> Option<Close> {
        let route = match sender_route(conn, wire::PRIVMSG, text)? {
            Ok(route) => route,
            Err(close) => return Some(close),
        };
        let peer = conn.peer.as_ref()?;
        let counters = &self.shared.counters;
        let Some(target) = route.to.and_then(|to| self.shared.registry.id_of(to)) else {
            counters.dropped(Dropped::UnknownTarget);
            return None;
        };
        let maker = peer.location.is_maker();
        let hints = maker.then(|| (peer.hint.clone(), peer.hint_features.clone()));
        let mut bytes = std::mem::take(&mut self.encoded);
        bytes.clear();
        wire::encode(wire::PRIVMSG, text, &mut bytes);
        if bytes.len() > self.config.max_line {
            // Re-encoded with our spacing and `\r\n` it would be too long for its reader.
            self.encoded = bytes;
            counters.dropped(Dropped::TooLong);
            return None;
        }
        let out = Outbox {
            registry: self.poll.registry(),
            budget: &self.budget,
            now: self.shared.clock.now(),
            max_queued: self.config.max_queued,
        };
        let own = target == conn.id;
        let result = match if own { Some(&mut *conn) } else { self.conns.get_mut(&target) } {
            None => Ok(false), // registered but not ours to reach (never happens: one thread)
            Some(to) => {
                if to.too_far_behind(bytes.len(), out.max_queued) {
                    counters.dropped(Dropped::SlowRecipient);
                    Ok(false)
                } else {
                    Counters::add(&counters.relayed_privmsg);
                    Counters::add(&counters.deliveries);
                    let mut result = to.send(Payload::Bytes(&bytes), &out);
                    if let (Ok(_), Some((hint, hint_features))) = (&result, hints) {
                        let with_features = to.peer.as_ref().is_some_and(|p| p.peerlist_features);
                        bytes.clear();
                        let hint = if with_features { hint_features } else { hint };
                        wire::encode(wire::PEERLIST, &hint, &mut bytes);
                        result = to.send(Payload::Bytes(&bytes), &out);
                    }
                    result
                }
            }
        };
        self.encoded = bytes;
        match result {
            Ok(true) => {
                self.backlogged.insert(target);
            }
            Ok(false) => {}
            Err(reason) if own => return Some(Close::Evicted(reason)),
            Err(reason) => self.close(target, Close::Evicted(reason)),
        }
        None
    }

    /// Answers GETPEERLIST with every handshaked maker, in as many PEERLIST
    /// lines as the max line needs: one buffer, built once for every
    /// requester until a maker joins or leaves.
    fn peerlist(&mut self, conn: &mut Conn, now: Instant) -> Option<Close> {
        let counters = &self.shared.counters;
        let limits = self.config.limits;
        if conn.output.written() < conn.peerlist_end {
            // The last answer is still queued: a peer that does not read gets no more.
            counters.dropped(Dropped::PeerlistBusy);
            let verdict =
                conn.rates.peerlists.tried(now, limits.window, limits.peerlists, limits.disconnect_after);
            return (verdict == Verdict::Disconnect).then(|| rate_limited("GETPEERLIST requests"));
        }
        match budget(&mut conn.rates.peerlists, now, &limits, limits.peerlists, counters) {
            Err(()) => return Some(rate_limited("GETPEERLIST requests")),
            Ok(false) => return None,
            Ok(true) => {}
        }
        let with_features = conn.peer.as_ref().is_some_and(|p| p.peerlist_features);
        let answer = match &self.peerlists[usize::from(with_features)] {
            Some(answer) => answer.clone(),
            None => {
                let entries = self.shared.registry.maker_entries(with_features);
                let (bytes, _) = peerlist_lines(&entries, self.config.max_line);
                let answer = SharedBytes::new(bytes, self.budget.clone());
                self.peerlists[usize::from(with_features)] = Some(answer.clone());
                answer
            }
        };
        // Marked first: the answer is bounded on its own, not by the relay cap.
        conn.peerlist_start = conn.output.total();
        conn.peerlist_end = conn.peerlist_start + answer.bytes().len() as u64;
        self.hand_to(conn, Payload::Shared(&answer))
    }

    /// Whether nick authentication is on: an id is configured and the mode is not off.
    fn nick_auth(&self) -> bool {
        self.config.nick_auth_id.is_some() && self.config.nick_auth != Mode::Off
    }

    fn handshake(&mut self, conn: &mut Conn, line: &str) -> Option<Close> {
        let handshake = match wire::parse_handshake(line, &self.config.network) {
            Ok(h) => h,
            Err(HandshakeError::Malformed(why)) => {
                return Some(Close::Rejected(format!("bad handshake: {why}")));
            }
            Err(HandshakeError::Rejected(why)) => {
                self.refuse(conn, None);
                return Some(Close::Rejected(format!("handshake refused: {why}")));
            }
        };
        if self.shared.registry.len() >= self.config.max_peers {
            self.refuse(conn, Some("Rejected: Maximum peers reached"));
            return Some(Close::Refused(format!("{} peers is the limit", self.config.max_peers)));
        }
        let challenge = self.nick_auth() && handshake.nick_auth;
        if self.nick_auth() && self.config.nick_auth == Mode::Require && !challenge {
            self.refuse(conn, Some("Rejected: verified nick authentication required"));
            return Some(Close::Rejected(
                "handshake refused: verified nick authentication required, and it did not offer it".into(),
            ));
        }
        // A nick held by a peer is refused here unless the newcomer is about
        // to prove it: ownership is then decided on its proof.
        if handshake.nick == self.shared.nick
            || (!challenge && self.shared.registry.id_of(&handshake.nick).is_some())
        {
            return self.nick_taken(conn, &handshake.nick);
        }
        if !challenge {
            if !self.register(conn, handshake, None) {
                return Some(Close::Rejected("handshake refused: its nick was taken meanwhile".into()));
            }
            return self.accept(conn);
        }
        if !self.take_challenge() {
            self.refuse(conn, Some("Rejected: too many nick authentications, try again later"));
            return Some(Close::Refused(format!(
                "over {} nick-auth challenges a second",
                self.config.max_challenges_per_sec
            )));
        }
        let challenge = match auth::random_challenge() {
            Ok(challenge) => challenge,
            Err(e) => {
                NO_CHALLENGE.log(self.now(), format_args!("hub: cannot draw a nick-auth challenge: {e}"));
                self.refuse(conn, Some("Rejected: the directory cannot authenticate nicks now"));
                return Some(Close::Refused(format!("no challenge: {e}")));
            }
        };
        let id = self.config.nick_auth_id.clone().unwrap_or_default();
        if let Some(close) = self.accept(conn) {
            return Some(close);
        }
        let payload =
            auth::encode_challenge(&auth::Challenge { challenge: challenge.clone(), directory_id: id });
        conn.auth = Some(Box::new(Authenticating { handshake, line_hash: auth::line_hash(line), challenge }));
        let deadline = later(self.now(), self.config.nick_auth_timeout);
        self.authenticating.push_back((deadline, conn.id));
        log::debug!("hub: challenged {} for its nick-auth proof", conn.addr);
        self.reply(conn, auth::CHALLENGE, &payload)
    }

    /// Takes one challenge from the budget (a token bucket refilled at
    /// `max_challenges_per_sec`); `false` when it is spent.
    fn take_challenge(&mut self) -> bool {
        let now = self.now();
        let rate = f64::from(self.config.max_challenges_per_sec);
        let (tokens, since) = self.challenges;
        let tokens = (tokens + now.saturating_duration_since(since).as_secs_f64() * rate).min(rate);
        if tokens < 1.0 {
            self.challenges = (tokens, now);
            return false;
        }
        self.challenges = (tokens - 1.0, now);
        true
    }

    /// The accepting 795, advertising `nick_auth` when it is on.
    fn accept(&mut self, conn: &mut Conn) -> Option<Close> {
        let reply = wire::dn_handshake_with(
            &self.shared.nick,
            &self.config.network,
            self.config.motd.as_deref(),
            true,
            self.nick_auth(),
        );
        self.reply(conn, wire::DN_HANDSHAKE, &reply)
    }

    /// Refuses a handshake whose nick is held (as joinmarket-ng does).
    fn nick_taken(&mut self, conn: &mut Conn, nick: &str) -> Option<Close> {
        self.refuse(conn, Some(&format!("Rejected: Peer nick already registered: {nick}")));
        Some(Close::Rejected(format!("handshake refused: nick {nick} is already connected")))
    }

    /// The 805 proof of a challenged connection (any other message fails
    /// it): verified, and the nick's ownership settled, it becomes a peer
    /// and gets 807 `ok`; else the 807 failure code, then a close.
    fn proof(&mut self, conn: &mut Conn, kind: u32, line: &str) -> Option<Close> {
        let pending = conn.auth.take()?;
        let directory_id = self.config.nick_auth_id.as_deref().unwrap_or_default();
        let nick = pending.handshake.nick.clone();
        let checked = if kind == auth::PROOF {
            auth::parse_proof(line).and_then(|proof| {
                auth::verify_hashed(&pending.challenge, directory_id, &pending.line_hash, &nick, &proof)
                    .map(|()| proof.pubkey)
            })
        } else {
            Err(auth::Refusal {
                code: Code::Malformed,
                why: format!("message type {kind} instead of the proof ({})", auth::PROOF),
            })
        };
        let pubkey = match checked {
            Ok(pubkey) => pubkey,
            Err(refusal) => return self.auth_failed(conn, &nick, refusal.code, &refusal.why),
        };
        match self.shared.registry.owner(&nick) {
            // Checked again: other proofs may have filled the hub since its 793.
            None if self.shared.registry.len() >= self.config.max_peers => {
                return self.auth_failed(conn, &nick, Code::Policy, "the hub has its maximum of peers");
            }
            None => {}
            Some((_, Some(key))) if key != pubkey => {
                return self.auth_failed(
                    conn,
                    &nick,
                    Code::Policy,
                    "the nick is held by another verified key",
                );
            }
            Some((old, _)) => {
                DISPLACED.log(
                    self.now(),
                    format_args!(
                        "hub: {nick} proved its nick from {}: displacing connection {old}",
                        conn.addr
                    ),
                );
                self.close(old, Close::Evicted(EvictReason::Displaced));
                // Its `;D` now if the notice interval allows, before the new
                // owner is routed: a `;D` after its first messages would make
                // the others drop them. (Not to the new owner: it is no peer yet.)
                self.send_notices();
            }
        }
        if !self.register(conn, pending.handshake, Some(pubkey)) {
            // Never happens: one thread registers, and the owner just left.
            return self.auth_failed(conn, &nick, Code::Policy, "the nick is held");
        }
        Counters::add(&self.shared.counters.proofs_accepted);
        self.reply(conn, auth::RESULT, &auth::encode_result(Code::Ok))
    }

    /// A failed nick authentication: counted, answered with its 807 code, closed.
    fn auth_failed(&mut self, conn: &mut Conn, nick: &str, code: Code, why: &str) -> Option<Close> {
        self.shared.counters.proof_refused(code);
        let _ = self.reply(conn, auth::RESULT, &auth::encode_result(code));
        Some(Close::Rejected(format!("nick authentication of {nick} failed ({code}): {why}")))
    }

    /// Makes the connection a peer: registered (routable, listed), its
    /// `Joined` out. `false` when its nick is held.
    fn register(&mut self, conn: &mut Conn, handshake: wire::Handshake, pubkey: Option<String>) -> bool {
        let verified = pubkey.is_some();
        let info = PeerInfo {
            id: conn.id,
            nick: handshake.nick.clone(),
            location: handshake.location.clone(),
            ping: handshake.ping,
            features: handshake.features.clone(),
            peerlist_features: handshake.peerlist_features,
            network: handshake.network,
            connected_at: self.shared.clock.wall(),
            last_seen: self.now(),
            ping_sent: None,
            probed_at: None,
            pubkey,
        };
        let hint = info.entry(false);
        let hint_features = info.entry(true);
        if !self.shared.registry.insert(info) {
            return false;
        }
        conn.peer = Some(PeerMeta {
            nick: handshake.nick.clone(),
            location: handshake.location.clone(),
            ping: handshake.ping,
            peerlist_features: handshake.peerlist_features,
            hint,
            hint_features,
        });
        self.pending_count -= 1;
        if handshake.location.is_maker() {
            self.peerlists = [None, None];
        }
        Counters::add(&self.shared.counters.joins);
        log::debug!(
            "hub: {} joined from {} as {}{}",
            handshake.nick,
            conn.addr,
            handshake.location,
            if verified { ", verified" } else { "" }
        );
        self.shared.emit(HubEvent::Joined {
            id: conn.id,
            nick: handshake.nick,
            location: handshake.location,
            ping: handshake.ping,
            verified,
        });
        true
    }

    /// Sends a refusing handshake reply to a connection about to be closed,
    /// best effort; `motd` says why.
    fn refuse(&mut self, conn: &mut Conn, motd: Option<&str>) {
        let reply = wire::dn_handshake(&self.shared.nick, &self.config.network, motd, false);
        let _ = self.reply(conn, wire::DN_HANDSHAKE, &reply);
    }

    /// Sends the hub's own message to the connection being read.
    fn reply(&mut self, conn: &mut Conn, kind: u32, line: &str) -> Option<Close> {
        let mut bytes = std::mem::take(&mut self.encoded);
        bytes.clear();
        wire::encode(kind, line, &mut bytes);
        let result = self.hand_to(conn, Payload::Bytes(&bytes));
        self.encoded = bytes;
        result
    }

    /// Hands the hub's own output to one connection (out of the map).
    fn hand_to(&mut self, conn: &mut Conn, payload: Payload<'_>) -> Option<Close> {
        let out = Outbox {
            registry: self.poll.registry(),
            budget: &self.budget,
            now: self.shared.clock.now(),
            max_queued: self.config.max_queued,
        };
        match conn.send(payload, &out) {
            Ok(true) => {
                self.backlogged.insert(conn.id);
                None
            }
            Ok(false) => None,
            Err(reason) => Some(Close::Evicted(reason)),
        }
    }

    /// Sends encoded messages of the hub's own to a connection in the map.
    fn send_bytes(&mut self, id: u64, bytes: &[u8]) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let result = self.hand_to(&mut conn, Payload::Bytes(bytes));
        self.conns.insert(id, conn);
        if let Some(close) = result {
            self.close(id, close);
        }
    }

    /// Sends the hub's own message to a connection in the map.
    fn send_own(&mut self, id: u64, kind: u32, line: &str) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let result = self.reply(&mut conn, kind, line);
        self.conns.insert(id, conn);
        if let Some(close) = result {
            self.close(id, close);
        }
    }

    /// The socket can take more: writes the queue.
    fn flush(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let out = Outbox {
            registry: self.poll.registry(),
            budget: &self.budget,
            now: self.shared.clock.now(),
            max_queued: self.config.max_queued,
        };
        if let Err(reason) = conn.flush(&out) {
            self.close(id, Close::Evicted(reason));
        }
    }

    /// Closes a connection; a handshaked peer leaves the registry, and a
    /// maker (or, with `announce_takers`, anyone) is announced gone with the
    /// next notice.
    fn close(&mut self, id: u64, why: Close) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        conn.output.clear(&self.budget);
        self.backlogged.remove(&id);
        let shared = &self.shared;
        match (conn.peer, why) {
            (Some(peer), why) => {
                shared.registry.remove(id);
                if peer.location.is_maker() {
                    self.peerlists = [None, None];
                }
                if peer.location.is_maker() || self.config.announce_takers {
                    let entry = wire::peerlist_entry(&peer.nick, &peer.location, true);
                    let always = matches!(why, Close::Evicted(EvictReason::Displaced));
                    self.notices.gone.push((peer.nick.clone(), entry, always));
                }
                let event = match why {
                    Close::Evicted(reason) => {
                        EVICTED.log(
                            shared.clock.now(),
                            format_args!("hub: evicting {} ({}): {reason}", peer.nick, conn.addr),
                        );
                        shared.counters.evicted(&reason);
                        HubEvent::Evicted { id, nick: peer.nick, reason }
                    }
                    Close::Left(reason) | Close::Rejected(reason) | Close::Refused(reason) => {
                        log::debug!("hub: {} ({}) left: {reason}", peer.nick, conn.addr);
                        Counters::add(&shared.counters.left);
                        HubEvent::Left { id, nick: peer.nick, reason }
                    }
                };
                shared.emit(event);
            }
            (None, why) => {
                self.pending_count -= 1;
                Counters::add(&shared.counters.rejected);
                let reason = match why {
                    Close::Evicted(reason) => {
                        shared.counters.evicted(&reason);
                        reason.to_string()
                    }
                    Close::Refused(reason) => {
                        Counters::add(&shared.counters.refused);
                        REFUSED.log(
                            shared.clock.now(),
                            format_args!("hub: refused a connection from {}: {reason}", conn.addr),
                        );
                        reason
                    }
                    Close::Left(reason) | Close::Rejected(reason) => reason,
                };
                log::debug!("hub: closing {} before its handshake: {reason}", conn.addr);
                shared.emit(HubEvent::Rejected { addr: conn.addr, reason });
            }
        }
    }

    /// Tells every handshaked peer who left since the last notice, at most
    /// once per `notice_interval`: one buffer (as many PEERLIST lines as the
    /// max line needs) shared by every recipient, so churn costs at most one
    /// write per peer per interval, and nothing waits longer than that.
    fn send_notices(&mut self) {
        let now = self.now();
        if self.notices.gone.is_empty()
            || self.notices.last_sent.is_some_and(|at| now < later(at, self.config.notice_interval))
        {
            return;
        }
        let registry = &self.shared.registry;
        // A nick that left and joined again is not gone.
        let gone: Vec<(String, String, bool)> = self
            .notices
            .gone
            .drain(..)
            .filter(|(nick, _, always)| *always || registry.id_of(nick).is_none())
            .collect();
        if gone.is_empty() {
            return;
        }
        // A displaced peer's `;D` (its offers go) is not for the connection
        // that took its nick over: that one would drop its own offers.
        let holders: Vec<(u64, usize)> = gone
            .iter()
            .enumerate()
            .filter(|(_, (_, _, always))| *always)
            .filter_map(|(i, (nick, _, _))| Some((registry.id_of(nick)?, i)))
            .collect();
        let skip: HashSet<u64> = holders.iter().map(|(id, _)| *id).collect();
        self.notices.last_sent = Some(now);
        let entries: Vec<String> = gone.iter().map(|(_, entry, _)| entry.clone()).collect();
        let (bytes, lines) = peerlist_lines(&entries, self.config.max_line);
        let message = SharedBytes::new(bytes, self.budget.clone());
        let mut sent = self.broadcast(&message, false, &skip) * lines;
        for &holder in &skip {
            let others: Vec<String> = gone
                .iter()
                .enumerate()
                .filter(|(i, _)| !holders.contains(&(holder, *i)))
                .map(|(_, (_, entry, _))| entry.clone())
                .collect();
            if !others.is_empty() && self.conns.get(&holder).is_some_and(|c| c.peer.is_some()) {
                let (bytes, lines) = peerlist_lines(&others, self.config.max_line);
                self.send_bytes(holder, &bytes);
                sent += lines;
            }
        }
        Counters::add_n(&self.shared.counters.notices, sent);
    }

    fn shutdown(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, Close::Left("the hub stopped".into()));
        }
        self.notices.gone.clear();
        for limit in LIMITS {
            limit.finish(self.now());
        }
        log::info!("hub {} stopped", self.shared.nick);
    }
}

/// Who a PUBMSG or PRIVMSG from `conn`'s peer is from and for: `None` (the
/// message is ignored) when it is not addressed as one, an eviction when its
/// `<from>` is not the sender's own nick (no client does that).
fn sender_route<'t>(conn: &Conn, kind: u32, text: &'t str) -> Option<Result<wire::Route<'t>, Close>> {
    let nick = &conn.peer.as_ref()?.nick;
    let Some(route) = wire::parse_route(kind, text) else {
        log::debug!("hub: {nick} sent a message of type {kind} without <from>!<to>!: ignored");
        return None;
    };
    Some(if route.from == nick.as_str() { Ok(route) } else { Err(Close::Evicted(EvictReason::Spoofed)) })
}

/// A broken line from `conn`: an eviction if it is a peer, else a rejection.
fn protocol_error(conn: &Conn, why: String) -> Close {
    if conn.peer.is_some() { Close::Evicted(EvictReason::Protocol(why)) } else { Close::Rejected(why) }
}

fn rate_limited(what: &str) -> Close {
    Close::Evicted(EvictReason::RateLimited(format!("kept sending {what} past the limit")))
}

/// Counts one message against a budget: `Ok(true)` to handle it,
/// `Ok(false)` to drop it (counted), `Err` to disconnect the peer.
fn budget(
    rate: &mut Rate,
    now: Instant,
    limits: &super::Limits,
    budget: u32,
    counters: &Counters,
) -> Result<bool, ()> {
    match rate.check(now, limits.window, budget, limits.disconnect_after) {
        Verdict::Allow => Ok(true),
        Verdict::Deny => {
            counters.dropped(Dropped::RateLimited);
            Ok(false)
        }
        Verdict::Disconnect => Err(()),
    }
}

/// PEERLIST entries as encoded 789 lines of at most `max_line` bytes each,
/// in one buffer, and how many lines that is.
fn peerlist_lines(entries: &[String], max_line: usize) -> (Vec<u8>, u64) {
    let lines = chunk_entries(entries, max_line - PEERLIST_ENVELOPE);
    let mut bytes = Vec::new();
    for line in &lines {
        wire::encode(wire::PEERLIST, line, &mut bytes);
    }
    (bytes, lines.len() as u64)
}

/// Joins PEERLIST entries with "," into lines of at most `room` bytes
/// (entries are checked nicks, onion locations and `[a-z0-9_+]` features:
/// nothing in them is escaped). At least one line, empty when there are no
/// entries, as joinmarket-ng answers.
fn chunk_entries(entries: &[String], room: usize) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fill_up_to_the_room_and_never_split_an_entry() {
        let entries: Vec<String> = (0..10).map(|i| format!("entry{i}")).collect();
        let chunks = chunk_entries(&entries, 20);
        assert!(chunks.iter().all(|c| c.len() <= 20));
        assert_eq!(chunks.join(","), entries.join(","));
        assert_eq!(chunks[0], "entry0,entry1,entry2");
        assert_eq!(chunk_entries(&[], 20), [""]);
    }
}
