//! The event loop: one thread, one mio poll, the listener and every
//! connection. Deadlines sit in a heap the poll sleeps towards; with no
//! connections it sleeps without a timeout.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;

use super::admit::Admission;
use super::message::{Reply, Request, Response, stream_head};
use super::stream::{Notify, StreamSink, StreamState};
use super::{Counters, Handler, HttpConfig, HttpCounters};
use crate::error::{Error, Result};
use crate::json::quote;
use crate::lograte::{LogLimit, log_limit};

/// The lines clients can cause, each limited (see [`crate::lograte`]);
/// the loop flushes their counts.
static ACCEPT_FAILED: LogLimit = log_limit!(log::Level::Warn, "http: accept failures");
static NOT_WATCHED: LogLimit = log_limit!(log::Level::Warn, "http: connections that could not be watched");
static PANICKED: LogLimit = log_limit!(log::Level::Error, "http: handler panics");

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection tokens start here and are never reused, so a stream's late
/// notification cannot reach a newer connection.
const FIRST_TOKEN: usize = 2;
/// One read takes at most this much.
const READ_CHUNK: usize = 16 * 1024;
/// Headers per request; more is answered `431`.
const MAX_HEADERS: usize = 64;
/// `SO_SNDBUF` per connection: modest, so that a client that does not read
/// shows up in our queue (and its bound or deadline) soon.
const SEND_BUFFER: usize = 64 * 1024;
/// Buffers that grew past this are freed once empty.
const KEEP_BUFFER: usize = 64 * 1024;
/// Requests answered (or reads of a stream's input) per connection per turn
/// of the loop: a busy client cannot hold the others up.
const TURN_BUDGET: usize = 32;
/// Connections accepted (or refused) per turn at most.
const ACCEPT_BUDGET: usize = 256;
/// After an error answer, how long the connection is read (and what it
/// sends discarded) before it closes: closing with unread input would reset
/// the connection and could destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
/// ... and how much it may send meanwhile.
const LINGER_BYTES: usize = 256 * 1024;

/// A running HTTP server: one event-loop thread that owns the listener and
/// every connection. Stops on [`stop`](HttpServer::stop) or drop.
pub struct HttpServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the server's handle and its thread share.
struct Shared {
    counters: Arc<Counters>,
    stopping: AtomicBool,
    running: AtomicBool,
    notify: Arc<Notify>,
    /// Returns from `poll`: a test sees an idle server sleep.
    wakeups: AtomicU64,
}

impl HttpServer {
    /// Binds `config.listen` and starts the event-loop thread that hands
    /// requests to `handler`. A bind failure is an [`Error::Io`] naming the
    /// address; a bad name in `config.allow_hosts` an
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    pub fn start(config: HttpConfig, handler: Arc<dyn Handler>) -> Result<HttpServer> {
        HttpServer::start_counting(config, handler, Arc::default())
    }

    /// [`start`](HttpServer::start), counting into `counters` (which the
    /// handler may read for a `/metrics` page).
    pub(crate) fn start_counting(
        config: HttpConfig,
        handler: Arc<dyn Handler>,
        counters: Arc<Counters>,
    ) -> Result<HttpServer> {
        let admission = Admission::new(&config)?;
        let addr = config.listen;
        let named =
            |e: io::Error| Error::Io(io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")));
        let mut listener = TcpListener::bind(addr).map_err(named)?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let shared = Arc::new(Shared {
            counters,
            stopping: AtomicBool::new(false),
            running: AtomicBool::new(true),
            notify: Arc::new(Notify::new(waker)),
            wakeups: AtomicU64::new(0),
        });
        let mut event_loop = Loop {
            poll,
            listener,
            conns: HashMap::new(),
            next_token: FIRST_TOKEN,
            config,
            admission,
            handler,
            shared: shared.clone(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            accept_paused_until: None,
            accept_more: false,
            accept_failing: None,
            scratch: vec![0; READ_CHUNK],
        };
        let thread = thread::Builder::new().name("heartbeat-http".into()).spawn(move || {
            event_loop.run();
            event_loop.shared.running.store(false, Ordering::SeqCst);
        })?;
        Ok(HttpServer { local_addr, shared, thread: Mutex::new(Some(thread)) })
    }

    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the server has done so far.
    pub fn counters(&self) -> HttpCounters {
        self.shared.counters.snapshot()
    }

    /// Whether the event loop still runs.
    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// How often the event loop has woken up: an idle server does not.
    #[doc(hidden)]
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }

    /// Stops the event loop, closes every connection and the listener, and
    /// joins the thread. Prompt (nothing is waited for) and idempotent; a
    /// handler that calls it stops the loop after the current turn.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.notify.wake();
        let Some(thread) = self.thread.lock().take() else { return };
        if thread.thread().id() == thread::current().id() {
            return;
        }
        if thread.join().is_err() {
            log::error!("http: the event-loop thread panicked");
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Received and not yet consumed: the request being read, perhaps the
    /// start of the next.
    input: Vec<u8>,
    /// One response (or a `100 Continue`), written up to `written`.
    output: Vec<u8>,
    written: usize,
    /// Whether `WRITABLE` interest is registered.
    writable: bool,
    /// Close once the output is written (after a lingering read).
    close_after_write: bool,
    /// Lingering: what it sends is discarded until EOF or then.
    lingering_until: Option<Instant>,
    lingered: usize,
    /// Final responses queued on this connection so far.
    responses: u64,
    /// The output is a final response: once written, the next request's
    /// read deadline starts.
    final_queued: bool,
    /// `100 Continue` sent for the request being read.
    continue_sent: bool,
    /// When the request being read sent its first byte.
    request_started: Option<Instant>,
    /// When the connection last had nothing to do.
    idle_since: Instant,
    /// Since when output has been waiting for the socket.
    write_since: Option<Instant>,
    /// The streaming response this connection carries, if any.
    stream_state: Option<Arc<StreamState>>,
    /// The deadline in the timer heap, and its generation there.
    deadline: Option<Instant>,
    generation: u64,
}

/// Why a connection closes.
enum Close {
    /// The client closed, or the socket failed.
    Gone,
    /// We are done with it (`Connection: close`, an error answer, a stream's end).
    Done,
    /// A read, idle or write deadline passed.
    TimedOut,
    /// A stream's queue passed `max_stream_queue`.
    Overflow,
}

/// What the buffered input amounts to.
pub(crate) enum Outcome {
    NeedMore,
    /// Send `100 Continue`, then read the body.
    Continue,
    /// Answer this error and close.
    Refuse(u16, String),
    /// A whole request, refused `403` before the handler (its `Host`, or
    /// a state change from another site's page): `consumed` bytes were it.
    Forbidden {
        consumed: usize,
        keep_alive: bool,
        head: bool,
        message: String,
    },
    /// A request was handled: `consumed` bytes of input were it.
    Handled {
        consumed: usize,
        keep_alive: bool,
        head: bool,
        reply: Reply,
    },
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    config: HttpConfig,
    admission: Admission,
    handler: Arc<dyn Handler>,
    shared: Arc<Shared>,
    /// (deadline, token, generation); entries whose generation is not the
    /// connection's current one are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Connections that used their turn's budget with work left.
    again: Vec<usize>,
    accept_paused_until: Option<Instant>,
    /// The accept budget ran out with connections left in the backlog.
    accept_more: bool,
    /// `Some` while accepting fails, with whether the episode's line was
    /// written (once per episode, and as many episodes as the limit allows;
    /// "again" only after a failure that was told).
    accept_failing: Option<bool>,
    scratch: Vec<u8>,
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("http: poll failed, stopping: {e}");
                break;
            }
            self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {}
                    Token(token) => self.drive(token, now),
                }
            }
            for token in self.shared.notify.take() {
                self.drive(token, now);
            }
            for token in std::mem::take(&mut self.again) {
                self.drive(token, now);
            }
            let now = Instant::now();
            if std::mem::take(&mut self.accept_more) {
                self.accept_all(now);
            }
            if self.accept_paused_until.is_some_and(|until| now >= until) {
                self.accept_paused_until = None;
                // The listener is edge-triggered: what queued meanwhile
                // signals nothing new.
                self.accept_all(now);
            }
            self.expire(now);
            for limit in [&ACCEPT_FAILED, &NOT_WATCHED, &PANICKED, &super::stream::WAKE_FAILED] {
                limit.flush(now);
            }
        }
        self.shutdown();
    }

    /// Until the nearest deadline or the end of an accept backoff; no
    /// timeout at all when there is neither.
    fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() || self.accept_more {
            return Some(Duration::ZERO);
        }
        while let Some(Reverse((_, token, generation))) = self.timers.peek() {
            if self.conns.get(token).is_some_and(|c| c.generation == *generation) {
                break;
            }
            self.timers.pop();
        }
        let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let next = match (next_timer, self.accept_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|at| at.saturating_duration_since(now))
    }

    fn accept_all(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        // A flood of connections (admitted or refused) must not keep the
        // loop here: the rest waits for the next turn.
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if self.accept_failing.take() == Some(true) {
                        log::info!("http: accepting connections again");
                    }
                    if self.conns.len() >= self.config.max_connections {
                        Counters::add(&self.shared.counters.refused_over_limit);
                        log::debug!("http: {peer} refused: {} connections open", self.conns.len());
                        drop(stream);
                        continue;
                    }
                    self.admit(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // Out of descriptors or memory (or worse): serve the
                    // connections we have and try again after a while.
                    Counters::add(&self.shared.counters.accept_errors);
                    if self.accept_failing.is_none() {
                        let note = ACCEPT_FAILED.admit(now);
                        if let Some(note) = note {
                            log::warn!(
                                "http: accept failed, retrying every {:?} until it works: {e}{note}",
                                self.config.accept_backoff
                            );
                        }
                        self.accept_failing = Some(note.is_some());
                    }
                    self.accept_paused_until = Some(now + self.config.accept_backoff);
                    return;
                }
            }
        }
        self.accept_more = true;
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let token = self.next_token;
        self.next_token += 1;
        let _ = stream.set_nodelay(true);
        if let Err(e) = crate::sys::set_socket_int(stream.as_fd(), libc::SO_SNDBUF, SEND_BUFFER) {
            log::debug!("http: cannot cap the send buffer of {peer}: {e}");
        }
        // Data that arrived before this is reported by the registration.
        if let Err(e) = self.poll.registry().register(&mut stream, Token(token), Interest::READABLE) {
            NOT_WATCHED.log(now, format_args!("http: cannot watch {peer}: {e}"));
            return;
        }
        Counters::add(&self.shared.counters.accepted);
        self.shared.counters.open.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn {
            stream,
            peer,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            writable: false,
            close_after_write: false,
            lingering_until: None,
            lingered: 0,
            responses: 0,
            final_queued: false,
            continue_sent: false,
            request_started: None,
            idle_since: now,
            write_since: None,
            stream_state: None,
            deadline: None,
            generation: 0,
        };
        self.schedule(&mut conn, token);
        self.conns.insert(token, conn);
    }

    /// Does whatever the connection allows now: write, read, answer.
    fn drive(&mut self, token: usize, now: Instant) {
        let Some(conn) = self.conns.remove(&token) else { return };
        self.carry_on(token, conn, now);
    }

    fn carry_on(&mut self, token: usize, mut conn: Conn, now: Instant) {
        match self.serve(token, &mut conn, now) {
            Ok(()) => {
                if let Err(e) = self.watch(token, &mut conn) {
                    log::debug!("http: cannot watch {}: {e}", conn.peer);
                    return self.close(conn, Close::Gone);
                }
                self.schedule(&mut conn, token);
                self.conns.insert(token, conn);
            }
            Err(why) => self.close(conn, why),
        }
    }

    fn serve(&mut self, token: usize, conn: &mut Conn, now: Instant) -> Result<(), Close> {
        if conn.lingering_until.is_some() {
            return self.discard_input(conn, token);
        }
        if conn.stream_state.is_some() {
            return self.serve_stream(token, conn, now);
        }
        for _ in 0..TURN_BUDGET {
            if conn.written < conn.output.len() {
                write_out(conn).map_err(|_| Close::Gone)?;
                if conn.written < conn.output.len() {
                    conn.write_since.get_or_insert(now);
                    return Ok(());
                }
            }
            if !conn.output.is_empty() {
                self.written(conn, now);
                if conn.close_after_write {
                    // Half-close, then read what it still sends until it
                    // closes too: closing with unread input would reset the
                    // connection, and a reset can destroy the answer before
                    // the client reads it.
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    conn.lingering_until = Some(now + LINGER);
                    conn.input = Vec::new();
                    return self.discard_input(conn, token);
                }
            }
            match self.parse(conn) {
                Outcome::NeedMore => match read_some(conn, &mut self.scratch) {
                    Ok(0) => return Err(Close::Gone),
                    Ok(_) => {
                        conn.request_started.get_or_insert(now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(_) => return Err(Close::Gone),
                },
                Outcome::Continue => {
                    conn.continue_sent = true;
                    conn.output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                Outcome::Refuse(status, message) => self.refuse(conn, status, &message),
                Outcome::Forbidden { consumed, keep_alive, head, message } => {
                    Counters::add(&self.shared.counters.forbidden);
                    log::debug!("http: {} refused with 403: {message}", conn.peer);
                    conn.input.drain(..consumed);
                    conn.continue_sent = false;
                    conn.responses += 1;
                    let keep_alive = keep_alive && !self.shared.stopping.load(Ordering::Relaxed);
                    queue(conn, &Response::error(403, &message), keep_alive, head);
                }
                Outcome::Handled { consumed, keep_alive, head, reply } => {
                    conn.input.drain(..consumed);
                    conn.continue_sent = false;
                    conn.responses += 1;
                    let keep_alive = keep_alive && !self.shared.stopping.load(Ordering::Relaxed);
                    match reply {
                        Reply::Full(response) => queue(conn, &response, keep_alive, head),
                        Reply::Stream { content_type, .. } if head => {
                            conn.output.extend_from_slice(&stream_head(content_type));
                            conn.final_queued = true;
                            conn.close_after_write = true;
                        }
                        Reply::Stream { content_type, open } => {
                            return self.open_stream(token, conn, content_type, open, now);
                        }
                    }
                }
            }
        }
        // Budget spent with work left: the rest next turn.
        self.again.push(token);
        Ok(())
    }

    /// The output was all written: the connection is idle, or reading the
    /// next request it sent already.
    fn written(&self, conn: &mut Conn, now: Instant) {
        conn.write_since = None;
        if conn.output.capacity() > KEEP_BUFFER {
            conn.output = Vec::new();
        } else {
            conn.output.clear();
        }
        conn.written = 0;
        if std::mem::take(&mut conn.final_queued) {
            conn.idle_since = now;
            conn.request_started = if conn.input.is_empty() { None } else { Some(now) };
            if conn.input.is_empty() && conn.input.capacity() > KEEP_BUFFER {
                conn.input = Vec::new();
            }
        }
    }

    /// Queues an error the server answers itself, then closes.
    fn refuse(&self, conn: &mut Conn, status: u16, message: &str) {
        Counters::add(&self.shared.counters.bad_requests);
        log::debug!("http: {} refused with {status}: {message}", conn.peer);
        conn.output.clear();
        conn.written = 0;
        queue(conn, &Response::error(status, message), false, false);
        conn.input = Vec::new();
    }

    /// What the buffered input amounts to; a whole request is handed to
    /// the handler here.
    fn parse(&self, conn: &Conn) -> Outcome {
        let limits = (self.config.max_head, self.config.max_body);
        // A handler that panics deciding is taken to change state: refused
        // from another site's page rather than let through.
        let changes_state = |view: &Request<'_>| {
            catch_unwind(AssertUnwindSafe(|| self.handler.changes_state(view))).unwrap_or(true)
        };
        let admit = (&self.admission, changes_state);
        parse_request(&conn.input, limits, conn.continue_sent, conn.peer, admit, |view| {
            Counters::add(&self.shared.counters.requests);
            catch_unwind(AssertUnwindSafe(|| self.handler.handle(view))).unwrap_or_else(|panic| {
                let why = crate::ticker::panic_message(&*panic);
                PANICKED.log(
                    Instant::now(),
                    format_args!(
                        "http: the handler panicked on {} {} from {}: {why}",
                        view.method, view.path, view.peer
                    ),
                );
                Response::error(500, "the handler panicked; see the server's log").into()
            })
        })
    }

    fn open_stream(
        &mut self,
        token: usize,
        conn: &mut Conn,
        content_type: &str,
        open: Box<dyn FnOnce(StreamSink) + Send>,
        now: Instant,
    ) -> Result<(), Close> {
        let state = StreamState::new(
            token,
            self.config.max_stream_queue,
            stream_head(content_type),
            self.shared.notify.clone(),
        );
        conn.stream_state = Some(state.clone());
        conn.input = Vec::new();
        conn.request_started = None;
        let sink = StreamSink::new(state);
        if catch_unwind(AssertUnwindSafe(|| open(sink))).is_err() {
            PANICKED.log(now, format_args!("http: a stream's open panicked; closing {}", conn.peer));
            return Err(Close::Done);
        }
        self.serve_stream(token, conn, now)
    }

    /// A streaming connection: what the client sends is discarded (its
    /// end closes the stream), the sink's queue is written.
    fn serve_stream(&mut self, token: usize, conn: &mut Conn, now: Instant) -> Result<(), Close> {
        self.discard_input(conn, token)?;
        let Some(state) = conn.stream_state.clone() else { return Ok(()) };
        let stream = &mut conn.stream;
        let drained = state
            .drain(|bytes| {
                loop {
                    match stream.write(bytes) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        other => return other,
                    }
                }
            })
            .map_err(|_| Close::Gone)?;
        if drained.overflowed {
            log::debug!("http: streaming client {} does not keep up; dropped", conn.peer);
            return Err(Close::Overflow);
        }
        if drained.closed {
            return Err(Close::Done);
        }
        if drained.left > 0 {
            conn.write_since.get_or_insert(now);
        } else {
            conn.write_since = None;
        }
        Ok(())
    }

    /// Reads and drops what the client sends; its end is `Err(Gone)`.
    fn discard_input(&mut self, conn: &mut Conn, token: usize) -> Result<(), Close> {
        for _ in 0..TURN_BUDGET {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => return Err(Close::Gone),
                Ok(n) => {
                    if conn.lingering_until.is_some() {
                        conn.lingered += n;
                        if conn.lingered > LINGER_BYTES {
                            return Err(Close::Done);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Close::Gone),
            }
        }
        self.again.push(token);
        Ok(())
    }

    /// `WRITABLE` interest while output waits for the socket, not otherwise.
    fn watch(&self, token: usize, conn: &mut Conn) -> io::Result<()> {
        let want = conn.write_since.is_some();
        if want != conn.writable {
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            self.poll.registry().reregister(&mut conn.stream, Token(token), interest)?;
            conn.writable = want;
        }
        Ok(())
    }

    /// The one deadline that applies to the connection now.
    fn deadline(&self, conn: &Conn) -> Option<Instant> {
        let c = &self.config;
        if let Some(until) = conn.lingering_until {
            Some(until)
        } else if let Some(since) = conn.write_since {
            Some(since + c.write_deadline)
        } else if conn.stream_state.is_some() {
            None
        } else if let Some(started) = conn.request_started {
            Some(started + c.read_deadline)
        } else {
            Some(conn.idle_since + c.idle_timeout)
        }
    }

    /// Puts the connection's deadline in the heap if it changed.
    fn schedule(&mut self, conn: &mut Conn, token: usize) {
        let deadline = self.deadline(conn);
        if deadline == conn.deadline {
            return;
        }
        conn.generation += 1;
        conn.deadline = deadline;
        if let Some(at) = deadline {
            self.timers.push(Reverse((at, token, conn.generation)));
        }
        // Stale entries go as their time comes; a busy keep-alive client
        // could pile them up faster, so rebuild now and then.
        if self.timers.len() > 2 * self.conns.len() + 64 {
            let mut live: Vec<_> = self
                .conns
                .iter()
                .filter_map(|(t, c)| c.deadline.map(|at| Reverse((at, *t, c.generation))))
                .collect();
            live.extend(deadline.map(|at| Reverse((at, token, conn.generation))));
            self.timers = live.into();
        }
    }

    /// Carries out the deadlines that passed.
    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, token, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.conns.get(&token).is_none_or(|c| c.generation != generation) {
                continue;
            }
            let Some(mut conn) = self.conns.remove(&token) else { continue };
            if conn.lingering_until.is_some() {
                self.close(conn, Close::Done);
            } else if conn.write_since.is_some() || conn.stream_state.is_some() {
                log::debug!("http: {} did not take its output within the write deadline", conn.peer);
                self.close(conn, Close::TimedOut);
            } else if conn.request_started.is_some() && conn.responses == 0 {
                log::debug!("http: {} did not finish its request within the read deadline", conn.peer);
                Counters::add(&self.shared.counters.timed_out);
                self.refuse(&mut conn, 408, "the request was not received within the read deadline");
                self.carry_on(token, conn, now);
            } else {
                self.close(conn, Close::TimedOut);
            }
        }
    }

    fn close(&mut self, mut conn: Conn, why: Close) {
        let counters = &self.shared.counters;
        match why {
            Close::TimedOut => Counters::add(&counters.timed_out),
            Close::Overflow => Counters::add(&counters.streams_dropped),
            Close::Gone | Close::Done => {}
        }
        if let Some(state) = &conn.stream_state {
            state.close();
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The loop ends: streams are told, every connection closes.
    fn shutdown(&mut self) {
        for limit in [&ACCEPT_FAILED, &NOT_WATCHED, &PANICKED, &super::stream::WAKE_FAILED] {
            limit.finish(Instant::now());
        }
        for (_, conn) in self.conns.drain() {
            if let Some(state) = &conn.stream_state {
                state.close();
            }
            self.shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        }
        self.timers.clear();
    }
}

/// Queues a final response; `HEAD` gets the head alone.
fn queue(conn: &mut Conn, response: &Response, keep_alive: bool, head: bool) {
    response.encode_head(keep_alive, &mut conn.output);
    if !head {
        conn.output.extend_from_slice(response.body());
    }
    conn.final_queued = true;
    conn.close_after_write |= !keep_alive;
}

/// Writes the output until it is all written or the socket is full.
fn write_out(conn: &mut Conn) -> io::Result<()> {
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One read onto the input.
fn read_some(conn: &mut Conn, scratch: &mut [u8]) -> io::Result<usize> {
    loop {
        match conn.stream.read(scratch) {
            Ok(n) => {
                conn.input.extend_from_slice(&scratch[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the buffered `input` amounts to, for a connection whose request
/// may already have had its `100 Continue` (`continue_sent`). A whole
/// request that `admission` lets through (asking `changes_state` if need
/// be; `Forbidden` otherwise) is handed to `handle` here. `limits` are
/// `(max_head, max_body)`.
///
/// No sockets: the server calls it on a connection's input, the `http`
/// fuzz target on arbitrary bytes.
pub(crate) fn parse_request(
    input: &[u8],
    (max_head, max_body): (usize, usize),
    continue_sent: bool,
    peer: SocketAddr,
    (admission, changes_state): (&Admission, impl FnOnce(&Request<'_>) -> bool),
    handle: impl FnOnce(&Request<'_>) -> Reply,
) -> Outcome {
    if input.is_empty() {
        return Outcome::NeedMore;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(input) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if input.len() <= max_head => return Outcome::NeedMore,
        Ok(_) => {
            return Outcome::Refuse(431, format!("the request line and headers pass {max_head} bytes"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Outcome::Refuse(431, format!("more than {MAX_HEADERS} headers"));
        }
        Err(e) => return Outcome::Refuse(400, format!("cannot parse the request: {e}")),
    };
    let version = request.version.unwrap_or(1);
    let mut fields = Fields::default();
    for header in request.headers.iter() {
        if let Err(message) = fields.take(header) {
            return Outcome::Refuse(400, message);
        }
    }
    if fields.transfer_encoding {
        return Outcome::Refuse(
            400,
            "chunked request bodies are not supported: send the body with a Content-Length".into(),
        );
    }
    if version >= 1 && fields.hosts == 0 {
        return Outcome::Refuse(400, "an HTTP/1.1 request must carry a Host header".into());
    }
    if fields.hosts > 1 {
        // RFC 9112 3.2: which one would count?
        return Outcome::Refuse(400, "more than one Host header".into());
    }
    let body_len = fields.content_length.unwrap_or(0);
    if body_len > max_body as u64 {
        return Outcome::Refuse(
            413,
            format!("a body of {body_len} bytes passes the limit of {max_body} bytes"),
        );
    }
    let total = head_len + body_len as usize;
    if input.len() < total {
        if fields.expect_continue && version >= 1 && !continue_sent {
            return Outcome::Continue;
        }
        return Outcome::NeedMore;
    }
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let keep_alive = !fields.close && (version >= 1 || fields.keep_alive);
    let view = Request { method, path, query, headers: request.headers, body: &input[head_len..total], peer };
    let head = method == "HEAD";
    if let Err(message) = admission.check(&view, changes_state) {
        return Outcome::Forbidden { consumed: total, keep_alive, head, message };
    }
    let reply = handle(&view);
    Outcome::Handled { consumed: total, keep_alive, head, reply }
}

/// The headers the server itself looks at.
#[derive(Default)]
struct Fields {
    /// Host headers seen.
    hosts: usize,
    transfer_encoding: bool,
    content_length: Option<u64>,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Fields {
    fn take(&mut self, header: &httparse::Header<'_>) -> Result<(), String> {
        let name = header.name;
        let value = String::from_utf8_lossy(header.value);
        if name.eq_ignore_ascii_case("host") {
            self.hosts += 1;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            // `5` or, from a proxy that merged headers, `5, 5`.
            for part in value.split(',') {
                let part = part.trim();
                let n = part
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| part.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| format!("bad Content-Length: {}", quote(&value)))?;
                if self.content_length.is_some_and(|m| m != n) {
                    return Err("conflicting Content-Length headers".into());
                }
                self.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                self.close |= option.eq_ignore_ascii_case("close");
                self.keep_alive |= option.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            self.expect_continue |= value.trim().eq_ignore_ascii_case("100-continue");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(headers: &[(&'static str, &'static str)]) -> Result<Fields, String> {
        let mut fields = Fields::default();
        for (name, value) in headers {
            fields.take(&httparse::Header { name, value: value.as_bytes() })?;
        }
        Ok(fields)
    }

    #[test]
    fn content_length_must_be_digits_and_agree() {
        assert_eq!(fields(&[("Content-Length", "12")]).unwrap().content_length, Some(12));
        assert_eq!(
            fields(&[("content-length", "5, 5"), ("Content-Length", "5")]).unwrap().content_length,
            Some(5)
        );
        for bad in ["-1", "+3", "1e3", "", "0x10", "99999999999999999999999"] {
            assert!(fields(&[("Content-Length", bad)]).is_err(), "{bad:?}");
        }
        let err = fields(&[("Content-Length", "5"), ("Content-Length", "6")]).err().unwrap();
        assert!(err.contains("conflicting"), "{err}");
    }

    #[test]
    fn a_bad_content_length_is_quoted_short() {
        // Found by the `http` fuzz target (fuzz/regressions/http/long-content-length):
        // the refusal quoted the whole header value, up to max_head bytes.
        let long = format!("5{}", "x".repeat(5_000));
        let mut fields = Fields::default();
        let err =
            fields.take(&httparse::Header { name: "Content-Length", value: long.as_bytes() }).unwrap_err();
        assert!(err.len() < 100 && err.ends_with("..."), "{err}");
        assert!(err.starts_with("bad Content-Length: \"5xxx"), "{err}");
    }

    #[test]
    fn connection_options_are_a_case_insensitive_list() {
        let f = fields(&[("Connection", "Upgrade, CLOSE")]).unwrap();
        assert!(f.close && !f.keep_alive);
        let f = fields(&[("connection", "Keep-Alive")]).unwrap();
        assert!(f.keep_alive && !f.close);
        let f =
            fields(&[("Expect", "100-Continue"), ("Host", "x"), ("Transfer-Encoding", "chunked")]).unwrap();
        assert!(f.expect_continue && f.hosts == 1 && f.transfer_encoding);
    }
}
