//! Load for a JoinMarket directory node, loopback only. Speaks only the wire
//! protocol (no part of this crate's hub), so it drives any directory node:
//! `heartbeat serve`, joinmarket-ng, joinmarket-rs.
//!
//! ```text
//! cargo run --release --example peer_load -- --addr 127.0.0.1:PORT [--mode ping|route|attack|churn] ...
//! ```
//!
//! Every mode answers each PING (798) at once with `{"type": 799, "line": ""}`,
//! keeps at most `--window` handshakes in flight, prints `ALL_HANDSHAKED ok=..
//! failed=.. secs=S` once its peers are in, and ends with one `RESULT {json}`
//! line (the same contract as `jmload`, so `benches/peer_load.py` drives either).
//! Every wait is bounded (`--timeout`, `--hold`); nothing but the given loopback
//! address is ever connected to. One thread, one mio poll.
//!
//! - `ping` (default): `--n` ping-capable takers held for `--hold` s. RESULT:
//!   handshake figures, PING sweeps (PINGs grouped wherever two arrive more than
//!   `--gap` s apart: count and spread, user-space and kernel receive
//!   timestamps), evictions with their CLOCK_MONOTONIC times (`closed_mono_s`).
//! - `route`: `--makers M` makers (`<56 base32>.onion:5222`) and `--takers T`
//!   takers (`NOT-SERVING-ONION`), all with features `peerlist_features` and
//!   `ping`. Makers answer every `!orderbook` PUBMSG with one ~300-byte
//!   `sw0reloffer` PRIVMSG to its sender. Phases (`--phases`, in this order):
//!   - `orderbook`: for `--hold` s, `--rate` takers a second send
//!     `<taker>!PUBLIC!orderbook`, rotating so that no taker asks more than
//!     3 times a minute (a hub's `!orderbook` limit). Round trip = the ask
//!     to the taker's M-th distinct offer; an ask not complete within
//!     `--timeout` s counts as timed out.
//!   - `fanout`: `--fanout` times, one peer sends one PUBMSG
//!     (`!hp2 <64 hex>`); first to last delivery among the other peers.
//!   - `broadcast`: `--broadcast-rate` PUBMSGs a second for `--hold` s, from
//!     senders rotating over all peers; then up to `--timeout` s to drain.
//!     Per peer: broadcasts expected (all but its own) vs received.
//! - `attack`: `--k` makers whose sockets get SO_RCVBUF `--rcvbuf` bytes
//!   *before connect* (the socket is made with libc::socket, the option set,
//!   then libc::connect), handshake, send `--getpeerlist` GETPEERLIST lines in
//!   one write, and never read again. `/proc/net/sockstat` TCP is sampled
//!   before, every second for `--hold` s, at the end and after closing. Hub
//!   closes are seen without reading (poll for POLLRDHUP/POLLHUP/POLLERR:
//!   a FIN queued behind unread data stays invisible), then by draining every
//!   socket for up to `--drain` s at the very end. A fresh taker's handshake
//!   time just before the drain shows whether the hub still serves.
//! - `churn`: `--n` idle takers, then `--cycles` makers one at a time that
//!   handshake and close. Prints `CHURN_READY`, `CHURN_START` and
//!   `CHURN_END` lines with 2 s of quiet around the churn so that a driver
//!   can read the hub's CPU time at each.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{Value, json};

const PRIVMSG: i64 = 685;
const PUBMSG: i64 = 687;
const PEERLIST: i64 = 789;
const GETPEERLIST: i64 = 791;
const HANDSHAKE: i64 = 793;
const DN_HANDSHAKE: i64 = 795;
const PING: i64 = 798;
const PONG_LINE: &[u8] = b"{\"type\": 799, \"line\": \"\"}\r\n";
const B58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const B32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// The hub's `!orderbook` budget: 3 per rolling 60 s, so a taker asks at most every 20 s.
const ORDERBOOK_GAP: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Ping,
    Route,
    Attack,
    Churn,
}

struct Args {
    mode: Mode,
    addr: SocketAddr,
    n: usize,
    window: usize,
    hold: Option<f64>,
    network: String,
    gap: f64,
    salt: u64,
    makers: usize,
    takers: usize,
    rate: f64,
    broadcast_rate: f64,
    fanout: usize,
    phases: Vec<String>,
    timeout: f64,
    k: usize,
    rcvbuf: i32,
    getpeerlist: usize,
    drain: f64,
    cycles: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        mode: Mode::Ping,
        addr: "127.0.0.1:5222".parse().expect("literal"),
        n: 1000,
        window: 100,
        hold: None,
        network: "regtest".into(),
        gap: 1.0,
        salt: u64::from(std::process::id()),
        makers: 100,
        takers: 900,
        rate: 1.0,
        broadcast_rate: 10.0,
        fanout: 3,
        phases: vec!["orderbook".into(), "fanout".into(), "broadcast".into()],
        timeout: 10.0,
        k: 500,
        rcvbuf: 4096,
        getpeerlist: 22,
        drain: 10.0,
        cycles: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--mode" => {
                a.mode = match value.as_str() {
                    "ping" => Mode::Ping,
                    "route" => Mode::Route,
                    "attack" => Mode::Attack,
                    "churn" => Mode::Churn,
                    _ => return Err(bad(&"one of ping, route, attack, churn")),
                }
            }
            "--addr" => a.addr = value.parse().map_err(|e| bad(&e))?,
            "--n" => a.n = value.parse().map_err(|e| bad(&e))?,
            "--window" => a.window = value.parse().map_err(|e| bad(&e))?,
            "--hold" => a.hold = Some(value.parse().map_err(|e| bad(&e))?),
            "--network" => a.network = value,
            "--gap" => a.gap = value.parse().map_err(|e| bad(&e))?,
            "--salt" => a.salt = value.parse().map_err(|e| bad(&e))?,
            "--makers" => a.makers = value.parse().map_err(|e| bad(&e))?,
            "--takers" => a.takers = value.parse().map_err(|e| bad(&e))?,
            "--rate" => a.rate = value.parse().map_err(|e| bad(&e))?,
            "--broadcast-rate" => a.broadcast_rate = value.parse().map_err(|e| bad(&e))?,
            "--fanout" => a.fanout = value.parse().map_err(|e| bad(&e))?,
            "--phases" => a.phases = value.split(',').filter(|p| !p.is_empty()).map(String::from).collect(),
            "--timeout" => a.timeout = value.parse().map_err(|e| bad(&e))?,
            "--k" => a.k = value.parse().map_err(|e| bad(&e))?,
            "--rcvbuf" => a.rcvbuf = value.parse().map_err(|e| bad(&e))?,
            "--getpeerlist" => a.getpeerlist = value.parse().map_err(|e| bad(&e))?,
            "--drain" => a.drain = value.parse().map_err(|e| bad(&e))?,
            "--cycles" => a.cycles = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !a.addr.ip().is_loopback() {
        return Err(format!("{} is not a loopback address: this tool only loads the local machine", a.addr));
    }
    for p in &a.phases {
        if !["orderbook", "fanout", "broadcast"].contains(&p.as_str()) {
            return Err(format!("unknown phase {p:?} (orderbook, fanout, broadcast)"));
        }
    }
    let finite = [a.rate, a.broadcast_rate, a.timeout, a.drain, a.gap, a.hold.unwrap_or(0.0)];
    if finite.iter().any(|v| !v.is_finite() || *v < 0.0)
        || a.timeout > 600.0
        || a.hold.unwrap_or(0.0) > 3600.0
    {
        return Err("times and rates must be finite, >= 0; --timeout <= 600, --hold <= 3600".into());
    }
    Ok(a)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("peer_load: {e}");
            std::process::exit(2);
        }
    };
    raise_nofile();
    let result = match a.mode {
        Mode::Ping => ping_mode(&a),
        Mode::Route => route_mode(&a),
        Mode::Attack => attack_mode(&a),
        Mode::Churn => churn_mode(&a),
    };
    match result {
        Ok(mut r) => {
            r["tool_cpu_s"] = json!(cpu_s());
            println!("RESULT {r}")
        }
        Err(e) => {
            eprintln!("peer_load: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers: clocks, limits, names, parsing, percentiles.

/// Raise the soft open-file limit to the hard one (each peer is one descriptor).
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// CLOCK_MONOTONIC in seconds: the clock of Python's `time.monotonic()`.
fn mono() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes the local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// This process's CPU time so far (user + system), in seconds.
fn cpu_s() -> f64 {
    // SAFETY: getrusage writes the zeroed local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn realtime() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn chars(seed: u64, alphabet: &[u8], len: usize) -> String {
    let mut s = seed;
    (0..len).map(|_| alphabet[(splitmix(&mut s) % alphabet.len() as u64) as usize] as char).collect()
}

/// `J5` + base58, padded with `O` to 16: two salt characters, then the index.
fn nick(salt: u64, i: usize) -> String {
    let mut s = String::from("J5");
    s.push(B58[1 + (salt % 57) as usize] as char);
    s.push(B58[((salt / 57) % 58) as usize] as char);
    let mut v = i as u64;
    let mut digits = Vec::new();
    loop {
        digits.push(B58[(v % 58) as usize]);
        v /= 58;
        if v == 0 {
            break;
        }
    }
    s.extend(digits.iter().rev().map(|&b| b as char));
    format!("{s:O<16}")
}

/// A v3-shaped onion location (56 base32 characters, ending `d` like real ones).
fn onion(salt: u64, i: usize) -> String {
    format!("{}d.onion:5222", chars(salt ^ (i as u64).wrapping_mul(0x1000_0001), B32, 55))
}

/// `{"type": 793, "line": "<handshake JSON>"}\r\n`, in jmcore's key order.
fn handshake_bytes(nick: &str, network: &str, location: &str) -> Vec<u8> {
    let inner = format!(
        "{{\"app-name\": \"joinmarket\", \"directory\": false, \"location-string\": {}, \"proto-ver\": 5, \
         \"features\": {{\"peerlist_features\": true, \"ping\": true}}, \"nick\": {}, \"network\": {}}}",
        Value::from(location),
        Value::from(nick),
        Value::from(network)
    );
    let mut out = Vec::new();
    encode(HANDSHAKE, &inner, &mut out);
    out
}

fn encode(kind: i64, line: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{{\"type\": {kind}, \"line\": ").as_bytes());
    if line.bytes().any(|b| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b)) {
        out.extend_from_slice(Value::from(line).to_string().as_bytes());
    } else {
        out.push(b'"');
        out.extend_from_slice(line.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}\r\n");
}

/// `(type, line)` of one received line. A fast path for the envelopes both
/// known spacings produce; anything else goes through serde_json.
fn parse(line: &[u8]) -> Option<(i64, Cow<'_, str>)> {
    fast_parse(line).or_else(|| {
        let v: Value = serde_json::from_slice(line).ok()?;
        Some((v.get("type")?.as_i64()?, Cow::Owned(v.get("line")?.as_str()?.to_owned())))
    })
}

fn fast_parse(line: &[u8]) -> Option<(i64, Cow<'_, str>)> {
    fn ws(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|c| **c == b' ').count();
        &b[n..]
    }
    let rest = ws(line.strip_prefix(b"{\"type\":")?);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 6 {
        return None;
    }
    let kind = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = ws(ws(&rest[digits..]).strip_prefix(b",")?);
    let rest = ws(ws(rest.strip_prefix(b"\"line\":")?).strip_prefix(b"\"")?);
    let body = rest.strip_suffix(b"\"}")?;
    if body.iter().any(|&b| b == b'"' || b == b'\\') {
        return None;
    }
    Some((kind, Cow::Borrowed(std::str::from_utf8(body).ok()?)))
}

/// Nearest-rank percentile of sorted values; `None` when empty.
fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() { None } else { Some(sorted[((sorted.len() - 1) as f64 * p).round() as usize]) }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn summary(v: Vec<f64>) -> Value {
    let v = sorted(v);
    json!({"count": v.len(), "p50": pct(&v, 0.5), "p99": pct(&v, 0.99), "max": pct(&v, 1.0)})
}

/// Latencies in log buckets (32 per power of two, about 3%): constant memory
/// for millions of deliveries.
struct Hist {
    buckets: Vec<u64>,
    n: u64,
    max: f64,
}

impl Hist {
    fn new() -> Hist {
        Hist { buckets: vec![0; 64 * 32], n: 0, max: 0.0 }
    }
    fn add(&mut self, secs: f64) {
        let us = (secs.max(0.0) * 1e6) as u64;
        let i = if us < 32 {
            us as usize
        } else {
            let p = 63 - us.leading_zeros() as usize;
            (p - 4) * 32 + ((us >> (p - 5)) & 31) as usize
        };
        self.buckets[i] += 1;
        self.n += 1;
        self.max = self.max.max(secs);
    }
    fn pct(&self, p: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((self.n as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let us = if i < 32 { i as u64 } else { (32 + (i % 32) as u64) << (i / 32 + 4 - 5) };
                return Some(us as f64 * 1e-6);
            }
        }
        Some(self.max)
    }
    fn json(&self) -> Value {
        json!({"count": self.n, "p50": self.pct(0.5), "p99": self.pct(0.99), "max": (self.n > 0).then_some(self.max)})
    }
}

/// `/proc/net/sockstat`'s TCP line as numbers (`mem` is in pages).
fn sockstat() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let mut out = BTreeMap::new();
    if let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for pair in words.chunks(2) {
            if let [k, v] = pair
                && let Ok(v) = v.parse()
            {
                out.insert((*k).to_string(), v);
            }
        }
    }
    out
}

fn page_mib(pages: i64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
    pages as f64 * page as f64 / (1024.0 * 1024.0)
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: fd is an open socket owned by the caller; value lives across the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of their sizes.
    let r =
        unsafe { libc::getsockopt(fd, level, name, &mut value as *mut i32 as *mut libc::c_void, &mut len) };
    (r == 0).then_some(value)
}

/// A non-blocking TCP connect. On IPv4 the socket is made with libc so that
/// SO_RCVBUF can be set before the SYN (the window scale is fixed then).
fn connect(addr: SocketAddr, rcvbuf: Option<i32>) -> io::Result<TcpStream> {
    let stream = match addr {
        SocketAddr::V4(v4) => connect_v4(v4, rcvbuf)?,
        SocketAddr::V6(_) if rcvbuf.is_none() => TcpStream::connect(addr)?,
        SocketAddr::V6(_) => return Err(io::Error::other("--rcvbuf needs an IPv4 address")),
    };
    let fd = stream.as_raw_fd();
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    Ok(stream)
}

fn connect_v4(addr: SocketAddrV4, rcvbuf: Option<i32>) -> io::Result<TcpStream> {
    // SAFETY: a fresh socket whose descriptor is handed to std at once, which then owns it.
    let std_stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        std::net::TcpStream::from_raw_fd(fd)
    };
    let fd = std_stream.as_raw_fd();
    if let Some(size) = rcvbuf {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in for the length given.
    let r = unsafe {
        libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(std_stream))
}

/// recvmsg: bytes read and the kernel receive timestamp (SO_TIMESTAMPNS,
/// epoch seconds; NaN if none came).
fn recv_kts(fd: i32, buf: &mut [u8]) -> io::Result<(usize, f64)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let mut cbuf = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer in it refers to a live local buffer.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ts = f64::NAN;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                ts = t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((n as usize, ts))
    }
}

// ---------------------------------------------------------------------------
// The connections: one mio poll, lines in, PINGs answered, the rest handed out.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Role {
    Maker,
    Taker,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum St {
    Handshaking,
    Ready,
    Closed,
}

struct Conn {
    stream: Option<TcpStream>,
    role: Role,
    nick: String,
    st: St,
    input: Vec<u8>,
    output: Vec<u8>,
    started: Instant,
    /// Cleared once an attacker has sent its burst: never read again.
    reading: bool,
}

/// A line that is neither a 795 nor a PING, for the mode to handle.
struct Msg {
    id: usize,
    kind: i64,
    line: String,
    at: Instant,
    kts: f64,
}

struct Closed {
    mono: f64,
    id: usize,
    phase: &'static str,
    reason: String,
}

struct Net {
    poll: Poll,
    events: Events,
    addr: SocketAddr,
    network: String,
    salt: u64,
    conns: Vec<Conn>,
    by_nick: HashMap<String, usize>,
    in_flight: usize,
    ok: usize,
    rejected: usize,
    failed: usize,
    fail_reasons: BTreeMap<String, usize>,
    hs_latency: Vec<f64>,
    first_connect: Option<Instant>,
    last_hs: Option<Instant>,
    pings: Vec<(Instant, f64)>,
    closed: Vec<Closed>,
    phase: &'static str,
    inbox: Vec<Msg>,
    /// Sent right after an accepted 795, after which the socket is not read again.
    burst: Option<Vec<u8>>,
    rcvbuf: Option<i32>,
    buf: Vec<u8>,
    t0: Instant,
}

impl Net {
    fn new(a: &Args) -> io::Result<Net> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            addr: a.addr,
            network: a.network.clone(),
            salt: a.salt,
            conns: Vec::new(),
            by_nick: HashMap::new(),
            in_flight: 0,
            ok: 0,
            rejected: 0,
            failed: 0,
            fail_reasons: BTreeMap::new(),
            hs_latency: Vec::new(),
            first_connect: None,
            last_hs: None,
            pings: Vec::new(),
            closed: Vec::new(),
            phase: "connect",
            inbox: Vec::new(),
            burst: None,
            rcvbuf: None,
            buf: vec![0; 64 * 1024],
            t0: Instant::now(),
        })
    }

    /// Start one peer's connection and queue its handshake; its id, or None if connect failed.
    fn open(&mut self, role: Role) -> Option<usize> {
        let id = self.conns.len();
        let nick = nick(self.salt, id);
        let location = match role {
            Role::Maker => onion(self.salt, id),
            Role::Taker => "NOT-SERVING-ONION".to_string(),
        };
        self.first_connect.get_or_insert_with(Instant::now);
        let stream = connect(self.addr, self.rcvbuf).and_then(|mut s| {
            self.poll.registry().register(&mut s, Token(id), Interest::READABLE | Interest::WRITABLE)?;
            Ok(s)
        });
        let (stream, st) = match stream {
            Ok(s) => (Some(s), St::Handshaking),
            Err(e) => {
                self.failed += 1;
                *self.fail_reasons.entry(format!("connect: {e}")).or_default() += 1;
                (None, St::Closed)
            }
        };
        let output =
            if stream.is_some() { handshake_bytes(&nick, &self.network, &location) } else { Vec::new() };
        self.conns.push(Conn {
            stream,
            role,
            nick,
            st,
            input: Vec::new(),
            output,
            started: Instant::now(),
            reading: true,
        });
        if st == St::Handshaking {
            self.in_flight += 1;
            Some(id)
        } else {
            None
        }
    }

    /// Open every role in `roles` (at most `window` handshaking at once),
    /// within `deadline`. Prints ALL_HANDSHAKED; returns the new ids.
    fn connect_all(&mut self, roles: &[Role], window: usize, deadline: Duration) -> io::Result<Vec<usize>> {
        let t = Instant::now();
        let mut next = 0;
        let mut ids = Vec::with_capacity(roles.len());
        loop {
            while next < roles.len() && self.in_flight < window.max(1) {
                ids.extend(self.open(roles[next]));
                next += 1;
            }
            if next == roles.len() && self.in_flight == 0 {
                break;
            }
            if t.elapsed() > deadline {
                println!("ALL_HANDSHAKED DEADLINE in_flight={}", self.in_flight);
                break;
            }
            self.turn(Duration::from_millis(10))?;
            self.inbox.clear();
        }
        let secs = match (self.first_connect, self.last_hs) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        println!(
            "ALL_HANDSHAKED ok={} rejected={} failed={} secs={secs:.3}",
            self.ok, self.rejected, self.failed
        );
        Ok(ids)
    }

    fn send(&mut self, id: usize, kind: i64, line: &str) {
        let c = &mut self.conns[id];
        if c.st == St::Closed {
            return;
        }
        encode(kind, line, &mut c.output);
        flush(c);
    }

    fn is_ready(&self, id: usize) -> bool {
        self.conns[id].st == St::Ready
    }

    /// Close our side; `by_hub` records it as an eviction or close by the hub.
    fn close(&mut self, id: usize, by_hub: Option<String>) {
        let c = &mut self.conns[id];
        let was = c.st;
        if was == St::Closed {
            return;
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.st = St::Closed;
        c.input = Vec::new();
        c.output = Vec::new();
        match (was, by_hub) {
            (St::Handshaking, reason) => {
                self.in_flight -= 1;
                if reason.as_deref() == Some("rejected") {
                    return; // counted in `rejected`
                }
                self.failed += 1;
                *self.fail_reasons.entry(reason.unwrap_or_else(|| "closed by us".into())).or_default() += 1;
            }
            (St::Ready, Some(reason)) => {
                self.closed.push(Closed { mono: mono(), id, phase: self.phase, reason });
            }
            _ => {}
        }
    }

    /// One poll: read what arrived, answer PINGs, queue other lines in `inbox`.
    fn turn(&mut self, timeout: Duration) -> io::Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<(usize, bool, bool, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_readable(), e.is_writable(), e.is_read_closed() || e.is_error()))
            .collect();
        for (id, readable, writable, hup) in ready {
            self.handle(id, readable, writable, hup);
        }
        Ok(())
    }

    fn handle(&mut self, id: usize, readable: bool, writable: bool, hup: bool) {
        let Some(c) = self.conns.get_mut(id) else { return };
        if c.st == St::Closed {
            return;
        }
        if writable && !c.output.is_empty() {
            flush(c);
        }
        if !(readable || hup) || !c.reading {
            return;
        }
        let Some(fd) = c.stream.as_ref().map(|s| s.as_raw_fd()) else { return };
        let mut end: Option<String> = None;
        let mut kts = f64::NAN;
        loop {
            match recv_kts(fd, &mut self.buf) {
                Ok((0, _)) => {
                    end = Some("eof".into());
                    break;
                }
                Ok((n, t)) => {
                    c.input.extend_from_slice(&self.buf[..n]);
                    if !t.is_nan() {
                        kts = t;
                    }
                    // A short read drained the socket: new data raises a new edge. Read on
                    // to EOF when the event says the peer has closed.
                    if n < self.buf.len() && !hup {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    end = Some(format!("read: {e}"));
                    break;
                }
            }
        }
        let at = Instant::now();
        let input = std::mem::take(&mut c.input);
        let mut start = 0;
        while let Some(p) = input[start..].iter().position(|&b| b == b'\n') {
            let raw = &input[start..start + p];
            start += p + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let Some((kind, line)) = parse(raw) else {
                self.inbox.push(Msg { id, kind: -1, line: String::new(), at, kts });
                continue;
            };
            match kind {
                DN_HANDSHAKE if c.st == St::Handshaking => {
                    self.in_flight -= 1;
                    let accepted = serde_json::from_str::<Value>(&line)
                        .ok()
                        .and_then(|v| v.get("accepted").and_then(Value::as_bool))
                        .unwrap_or(false);
                    if accepted {
                        c.st = St::Ready;
                        self.ok += 1;
                        self.hs_latency.push((at - c.started).as_secs_f64());
                        self.last_hs = Some(at);
                        self.by_nick.insert(c.nick.clone(), id);
                        if let Some(burst) = &self.burst {
                            c.output.extend_from_slice(burst);
                            c.reading = false;
                            flush(c);
                            break;
                        }
                    } else {
                        self.rejected += 1;
                        self.in_flight += 1; // close() counts it down again
                        end = Some("rejected".into());
                        break;
                    }
                }
                PING => {
                    self.pings.push((at, kts));
                    c.output.extend_from_slice(PONG_LINE);
                }
                _ => self.inbox.push(Msg { id, kind, line: line.into_owned(), at, kts }),
            }
        }
        c.input = input;
        c.input.drain(..start.min(c.input.len()));
        if !c.reading {
            c.input = Vec::new();
        }
        if !c.output.is_empty() {
            flush(c);
        }
        if let Some(reason) = end {
            self.close(id, Some(reason));
        }
    }

    fn handshake_json(&self) -> Value {
        let secs = match (self.first_connect, self.last_hs) {
            (Some(a), Some(b)) => Some((b - a).as_secs_f64()),
            _ => None,
        };
        json!({
            "handshaked_ok": self.ok,
            "rejected": self.rejected,
            "failed": self.failed,
            "fail_reasons": self.fail_reasons,
            "handshake_all_s": secs,
            "hs_latency_s": summary(self.hs_latency.clone()),
        })
    }

    /// PINGs grouped into sweeps wherever two are more than `gap` s apart.
    fn sweeps_json(&self, gap: f64) -> Value {
        let mut pings = self.pings.clone();
        pings.sort_by_key(|p| p.0);
        let mut sweeps = Vec::new();
        let mut i = 0;
        while i < pings.len() {
            let mut j = i + 1;
            while j < pings.len() && (pings[j].0 - pings[j - 1].0).as_secs_f64() <= gap {
                j += 1;
            }
            let group = &pings[i..j];
            let kernel = sorted(group.iter().map(|p| p.1).filter(|t| !t.is_nan()).collect());
            sweeps.push(json!({
                "count": group.len(),
                "t_first_s": (group[0].0 - self.t0).as_secs_f64(),
                "spread_s": (group[group.len() - 1].0 - group[0].0).as_secs_f64(),
                "kernel_spread_s": kernel.last().zip(kernel.first()).map(|(l, f)| l - f),
            }));
            i = j;
        }
        json!(sweeps)
    }

    fn closed_json(&self) -> Value {
        let mut by_phase: BTreeMap<&str, usize> = BTreeMap::new();
        let mut by_role: BTreeMap<String, usize> = BTreeMap::new();
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &self.closed {
            *by_phase.entry(c.phase).or_default() += 1;
            *by_role.entry(format!("{:?}", self.conns[c.id].role).to_lowercase()).or_default() += 1;
            *reasons.entry(c.reason.as_str()).or_default() += 1;
        }
        json!({
            "total": self.closed.len(),
            "by_phase": by_phase,
            "by_role": by_role,
            "reasons": reasons,
            "closed_mono_s": self.closed.iter().take(2000).map(|c| c.mono).collect::<Vec<_>>(),
        })
    }

    /// Turn the poll for `secs`, handing each message to `f`.
    fn run_for(&mut self, secs: f64, mut f: impl FnMut(&mut Net, Msg)) -> io::Result<()> {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            self.turn(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())))?;
            for m in std::mem::take(&mut self.inbox) {
                f(self, m);
            }
        }
        Ok(())
    }
}

/// Write what is queued; WouldBlock waits for the writable event, and other
/// errors show up as a close on the next read.
fn flush(c: &mut Conn) {
    let Some(stream) = c.stream.as_mut() else { return };
    while !c.output.is_empty() {
        match stream.write(&c.output) {
            Ok(0) => return,
            Ok(n) => {
                c.output.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn count_other(other: &mut BTreeMap<String, usize>, m: &Msg) {
    let key =
        if m.kind == PEERLIST && m.line.contains(";D") { "789;D".to_string() } else { m.kind.to_string() };
    *other.entry(key).or_default() += 1;
}

// ---------------------------------------------------------------------------
// ping: N takers, PING sweeps, evictions.

fn ping_mode(a: &Args) -> io::Result<Value> {
    let mut net = Net::new(a)?;
    net.connect_all(&vec![Role::Taker; a.n], a.window, Duration::from_secs(300))?;
    net.phase = "hold";
    let mut other = BTreeMap::new();
    net.run_for(a.hold.unwrap_or(10.0), |_, m| count_other(&mut other, &m))?;
    let open = net.conns.iter().filter(|c| c.st == St::Ready).count();
    Ok(json!({
        "mode": "ping",
        "n": a.n,
        "window": a.window,
        "handshake": net.handshake_json(),
        "handshaked_ok": net.ok,
        "failed": net.failed,
        "handshake_all_s": net.handshake_json()["handshake_all_s"],
        "pings_total": net.pings.len(),
        "sweeps": net.sweeps_json(a.gap),
        "evictions": net.closed.len(),
        "closed": net.closed_json(),
        "still_connected_at_end": open,
        "other_msgs_by_type": other,
    }))
}

// ---------------------------------------------------------------------------
// route: orderbook round trips, one PUBMSG's fan-out, sustained broadcasts.

struct Ask {
    sent: Instant,
    want: usize,
    got: Vec<u64>,
    count: usize,
}

/// One tagged PUBMSG (`!hp2 <hex seq>`): when sent, and its deliveries.
struct Tagged {
    sender: usize,
    sent: Instant,
    sent_real: f64,
    expected: usize,
    received: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    kts_first: f64,
    kts_last: f64,
    latency: Vec<f64>,
    keep_latency: bool,
}

struct Route {
    makers: usize,
    maker_suffix: Vec<String>,
    asks: HashMap<usize, Ask>,
    rtt: Vec<f64>,
    timed_out: Vec<usize>,
    offers: usize,
    late_offers: usize,
    hints: usize,
    orderbooks_seen: usize,
    offers_sent: usize,
    tagged: Vec<Tagged>,
    /// Broadcast phase: per peer, deliveries and out-of-order ones.
    got: Vec<u32>,
    own: Vec<u32>,
    last_seq: Vec<u32>,
    disorder: usize,
    bcast_from: usize,
    bcast_latency: Hist,
    bcast_kernel_latency: Hist,
    other: BTreeMap<String, usize>,
}

impl Route {
    fn on_msg(&mut self, net: &mut Net, m: Msg) {
        match m.kind {
            PUBMSG => {
                let mut parts = m.line.splitn(3, '!');
                let (Some(from), Some("PUBLIC"), Some(body)) = (parts.next(), parts.next(), parts.next())
                else {
                    count_other(&mut self.other, &m);
                    return;
                };
                if body == "orderbook" {
                    self.orderbooks_seen += 1;
                    if net.conns[m.id].role == Role::Maker {
                        let offer = format!(
                            "{}!{from}!sw0reloffer 0 27300 100000000 0 0.0002 {}",
                            net.conns[m.id].nick, self.maker_suffix[m.id]
                        );
                        net.send(m.id, PRIVMSG, &offer);
                        self.offers_sent += 1;
                    }
                } else if let Some(hex) = body.strip_prefix("hp2 ") {
                    let seq = hex
                        .get(hex.len().saturating_sub(16)..)
                        .and_then(|h| usize::from_str_radix(h, 16).ok());
                    match seq {
                        Some(seq) if seq < self.tagged.len() => self.on_tagged(seq, &m),
                        _ => count_other(&mut self.other, &m),
                    }
                } else {
                    count_other(&mut self.other, &m);
                }
            }
            PRIVMSG => {
                let mut parts = m.line.splitn(3, '!');
                let (Some(from), Some(to), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
                    count_other(&mut self.other, &m);
                    return;
                };
                if !body.starts_with("sw0reloffer ") || to != net.conns[m.id].nick {
                    count_other(&mut self.other, &m);
                    return;
                }
                self.offers += 1;
                let maker = net.by_nick.get(from).copied().filter(|&i| i < self.makers);
                match (self.asks.get_mut(&m.id), maker) {
                    (Some(ask), Some(maker)) => {
                        let (word, bit) = (maker / 64, 1u64 << (maker % 64));
                        if ask.got[word] & bit == 0 {
                            ask.got[word] |= bit;
                            ask.count += 1;
                            if ask.count >= ask.want {
                                self.rtt.push((m.at - ask.sent).as_secs_f64());
                                self.asks.remove(&m.id);
                            }
                        }
                    }
                    _ => self.late_offers += 1,
                }
            }
            PEERLIST if !m.line.contains(";D") => self.hints += 1,
            _ => count_other(&mut self.other, &m),
        }
    }

    fn on_tagged(&mut self, seq: usize, m: &Msg) {
        let t = &mut self.tagged[seq];
        t.received += 1;
        t.first.get_or_insert(m.at);
        t.last = Some(m.at);
        if !m.kts.is_nan() {
            t.kts_first = if t.kts_first.is_nan() { m.kts } else { t.kts_first.min(m.kts) };
            t.kts_last = if t.kts_last.is_nan() { m.kts } else { t.kts_last.max(m.kts) };
        }
        let lat = (m.at - t.sent).as_secs_f64();
        if t.keep_latency {
            t.latency.push(lat);
        }
        if seq >= self.bcast_from {
            self.bcast_latency.add(lat);
            if !m.kts.is_nan() {
                self.bcast_kernel_latency.add(m.kts - t.sent_real);
            }
            self.got[m.id] += 1;
            if self.last_seq[m.id] as usize > seq {
                self.disorder += 1;
            }
            self.last_seq[m.id] = self.last_seq[m.id].max(seq as u32 + 1);
        }
    }

    /// Send tagged PUBMSG number `tagged.len()` from `sender` to everyone else.
    fn send_tagged(&mut self, net: &mut Net, sender: usize, keep_latency: bool) {
        let seq = self.tagged.len();
        let expected =
            net.conns.iter().enumerate().filter(|(i, c)| *i != sender && c.st == St::Ready).count();
        let line = format!("{}!PUBLIC!hp2 {:048x}{seq:016x}", net.conns[sender].nick, 0x10ad_u64);
        self.tagged.push(Tagged {
            sender,
            sent: Instant::now(),
            sent_real: realtime(),
            expected,
            received: 0,
            first: None,
            last: None,
            kts_first: f64::NAN,
            kts_last: f64::NAN,
            latency: Vec::new(),
            keep_latency,
        });
        net.send(sender, PUBMSG, &line);
    }
}

fn route_mode(a: &Args) -> io::Result<Value> {
    let mut net = Net::new(a)?;
    let mut roles = vec![Role::Maker; a.makers];
    roles.extend(std::iter::repeat_n(Role::Taker, a.takers));
    let ids = net.connect_all(&roles, a.window, Duration::from_secs(300))?;
    let total = roles.len();
    let maker_suffix = (0..a.makers)
        .map(|i| {
            let seed = a.salt ^ (i as u64) << 20;
            format!("03{} MEQCI{}==", chars(seed, b"0123456789abcdef", 64), chars(seed ^ 1, B64, 81))
        })
        .collect();
    let mut r = Route {
        makers: a.makers,
        maker_suffix,
        asks: HashMap::new(),
        rtt: Vec::new(),
        timed_out: Vec::new(),
        offers: 0,
        late_offers: 0,
        hints: 0,
        orderbooks_seen: 0,
        offers_sent: 0,
        tagged: Vec::new(),
        got: vec![0; total],
        own: vec![0; total],
        last_seq: vec![0; total],
        disorder: 0,
        bcast_from: usize::MAX,
        bcast_latency: Hist::new(),
        bcast_kernel_latency: Hist::new(),
        other: BTreeMap::new(),
    };
    let hold = a.hold.unwrap_or(30.0);
    let timeout = Duration::from_secs_f64(a.timeout);
    let mut out = json!({
        "mode": "route",
        "makers": a.makers,
        "takers": a.takers,
        "window": a.window,
        "handshake": net.handshake_json(),
        "handshaked_ok": net.ok,
        "failed": net.failed,
        "handshake_all_s": net.handshake_json()["handshake_all_s"],
    });
    net.phase = "settle";
    net.run_for(1.0, |net, m| r.on_msg(net, m))?;
    let makers_ready = (0..a.makers).filter(|&i| net.is_ready(i)).count();
    let takers: Vec<usize> = ids.iter().copied().filter(|&i| net.conns[i].role == Role::Taker).collect();

    let mut tool_cpu = BTreeMap::new();
    for phase in &a.phases {
        println!("PHASE {phase} mono={:.6}", mono());
        let cpu_at_start = cpu_s();
        let wall_at_start = Instant::now();
        match phase.as_str() {
            "orderbook" => {
                net.phase = "orderbook";
                eprintln!("[peer_load] orderbook: {hold} s at {} asks/s", a.rate);
                let start = Instant::now();
                let mut last_ask: HashMap<usize, Instant> = HashMap::new();
                let (mut asked, mut skipped, mut cursor) = (0usize, 0usize, 0usize);
                let interval = if a.rate > 0.0 { Some(Duration::from_secs_f64(1.0 / a.rate)) } else { None };
                let mut next_at = start;
                loop {
                    let now = Instant::now();
                    let asking = now - start < Duration::from_secs_f64(hold);
                    if !asking && (r.asks.is_empty() || now - start > Duration::from_secs_f64(hold) + timeout)
                    {
                        break;
                    }
                    if let Some(interval) = interval
                        && asking
                        && now >= next_at
                    {
                        next_at += interval;
                        // The next taker that is connected, not waiting, and within its budget.
                        let pick =
                            (0..takers.len()).map(|k| takers[(cursor + k) % takers.len()]).position(|t| {
                                net.is_ready(t)
                                    && !r.asks.contains_key(&t)
                                    && last_ask.get(&t).is_none_or(|at| now - *at >= ORDERBOOK_GAP)
                            });
                        match pick {
                            Some(k) => {
                                let t = takers[(cursor + k) % takers.len()];
                                cursor = (cursor + k + 1) % takers.len();
                                last_ask.insert(t, now);
                                r.asks.insert(
                                    t,
                                    Ask {
                                        sent: Instant::now(),
                                        want: makers_ready,
                                        got: vec![0; a.makers.div_ceil(64)],
                                        count: 0,
                                    },
                                );
                                let line = format!("{}!PUBLIC!orderbook", net.conns[t].nick);
                                net.send(t, PUBMSG, &line);
                                asked += 1;
                            }
                            None => skipped += 1,
                        }
                    }
                    // Asks past the timeout end as timed out, with what they got.
                    let expired: Vec<usize> = r
                        .asks
                        .iter()
                        .filter(|(_, ask)| ask.sent.elapsed() > timeout)
                        .map(|(t, _)| *t)
                        .collect();
                    for t in expired {
                        if let Some(ask) = r.asks.remove(&t) {
                            r.timed_out.push(ask.count);
                        }
                    }
                    let wait =
                        next_at.saturating_duration_since(Instant::now()).min(Duration::from_millis(20));
                    net.turn(wait)?;
                    for m in std::mem::take(&mut net.inbox) {
                        r.on_msg(&mut net, m);
                    }
                }
                for (_, ask) in r.asks.drain() {
                    r.timed_out.push(ask.count);
                }
                // Offers still on their way count as late, not lost.
                net.run_for(1.0, |net, m| r.on_msg(net, m))?;
                let partial = sorted(r.timed_out.iter().map(|&c| c as f64).collect());
                out["orderbook"] = json!({
                    "rate_per_s": a.rate,
                    "hold_s": hold,
                    "timeout_s": a.timeout,
                    "makers_ready": makers_ready,
                    "asked": asked,
                    "skipped_no_eligible_taker": skipped,
                    "per_taker_per_min": if takers.is_empty() { 0.0 } else { a.rate * 60.0 / takers.len() as f64 },
                    "completed": r.rtt.len(),
                    "timed_out": r.timed_out.len(),
                    "timed_out_offers_received": {"p50": pct(&partial, 0.5), "min": pct(&partial, 0.0), "max": pct(&partial, 1.0)},
                    "round_trip_s": summary(r.rtt.clone()),
                    "offers_expected": asked * makers_ready,
                    "offers_sent_by_makers": r.offers_sent,
                    "offers_received": r.offers,
                    "late_offers": r.late_offers,
                    "location_hints": r.hints,
                    "orderbook_pubmsgs_received": r.orderbooks_seen,
                    "orderbook_pubmsgs_expected": asked * (total - 1),
                });
            }
            "fanout" => {
                net.phase = "fanout";
                let mut runs = Vec::new();
                for f in 0..a.fanout {
                    // Senders rotate over takers (makers if none), so no one exceeds a PUBMSG budget.
                    let pool: Vec<usize> =
                        if takers.is_empty() { (0..a.makers).collect() } else { takers.clone() };
                    let Some(&sender) =
                        pool.iter().cycle().skip(f * 7919).take(pool.len()).find(|&&s| net.is_ready(s))
                    else {
                        break;
                    };
                    let seq = r.tagged.len();
                    r.send_tagged(&mut net, sender, true);
                    let start = Instant::now();
                    while r.tagged[seq].received < r.tagged[seq].expected && start.elapsed() < timeout {
                        net.turn(Duration::from_millis(20))?;
                        for m in std::mem::take(&mut net.inbox) {
                            r.on_msg(&mut net, m);
                        }
                    }
                    let t = &r.tagged[seq];
                    runs.push(json!({
                        "sender_role": format!("{:?}", net.conns[t.sender].role).to_lowercase(),
                        "recipients_expected": t.expected,
                        "received": t.received,
                        "timed_out": t.received < t.expected,
                        "first_to_last_s": t.first.zip(t.last).map(|(f, l)| (l - f).as_secs_f64()),
                        "kernel_first_to_last_s": (!t.kts_first.is_nan()).then_some(t.kts_last - t.kts_first),
                        "send_to_first_s": t.first.map(|f| (f - t.sent).as_secs_f64()),
                        "send_to_last_s": t.last.map(|l| (l - t.sent).as_secs_f64()),
                        "latency_s": summary(t.latency.clone()),
                    }));
                    net.run_for(1.0, |net, m| r.on_msg(net, m))?;
                }
                out["fanout"] = json!(runs);
            }
            "broadcast" => {
                net.phase = "broadcast";
                eprintln!("[peer_load] broadcast: {hold} s at {} /s", a.broadcast_rate);
                let ready_at_start: Vec<bool> = (0..total).map(|i| net.is_ready(i)).collect();
                let closed_before = net.closed.len();
                r.bcast_from = r.tagged.len();
                let start = Instant::now();
                let mut next_at = start;
                let mut cursor = 0usize;
                let interval =
                    (a.broadcast_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.broadcast_rate));
                while start.elapsed() < Duration::from_secs_f64(hold) {
                    if let Some(interval) = interval
                        && Instant::now() >= next_at
                    {
                        next_at += interval;
                        if let Some(k) = (0..total).map(|k| (cursor + k) % total).find(|&s| net.is_ready(s)) {
                            cursor = (k + 1) % total;
                            r.own[k] += 1;
                            r.send_tagged(&mut net, k, false);
                        }
                    }
                    let wait =
                        next_at.saturating_duration_since(Instant::now()).min(Duration::from_millis(20));
                    net.turn(wait)?;
                    for m in std::mem::take(&mut net.inbox) {
                        r.on_msg(&mut net, m);
                    }
                }
                let sent = r.tagged.len() - r.bcast_from;
                // Drain: until every open peer has everything, or the timeout.
                let drain = Instant::now();
                let complete = |net: &Net, r: &Route| {
                    (0..total).all(|i| !net.is_ready(i) || r.got[i] as usize >= sent - r.own[i] as usize)
                };
                while !complete(&net, &r) && drain.elapsed() < timeout {
                    net.turn(Duration::from_millis(20))?;
                    for m in std::mem::take(&mut net.inbox) {
                        r.on_msg(&mut net, m);
                    }
                }
                let drain_s = drain.elapsed().as_secs_f64();
                let (mut expected, mut received, mut short, mut lost) = (0usize, 0usize, 0usize, 0usize);
                let (mut min_got, mut max_got) = (u32::MAX, 0u32);
                let (mut closed_expected, mut closed_received) = (0usize, 0usize);
                for i in (0..total).filter(|&i| ready_at_start[i]) {
                    let want = sent - r.own[i] as usize;
                    if net.is_ready(i) {
                        expected += want;
                        received += r.got[i] as usize;
                        min_got = min_got.min(r.got[i]);
                        max_got = max_got.max(r.got[i]);
                        if (r.got[i] as usize) < want {
                            short += 1;
                            lost += want - r.got[i] as usize;
                        }
                    } else {
                        closed_expected += want;
                        closed_received += r.got[i] as usize;
                    }
                }
                let spreads = sorted(
                    r.tagged[r.bcast_from..]
                        .iter()
                        .filter_map(|t| t.first.zip(t.last).map(|(f, l)| (l - f).as_secs_f64()))
                        .collect(),
                );
                let peers = ready_at_start.iter().filter(|r| **r).count();
                out["broadcast"] = json!({
                    "rate_per_s": a.broadcast_rate,
                    "hold_s": hold,
                    "peers": peers,
                    "sent": sent,
                    "per_sender_per_min_max": r.own.iter().max().map(|&m| m as f64 * 60.0 / hold.max(1e-9)),
                    "drain_s": drain_s,
                    "open_peers_at_end": (0..total).filter(|&i| ready_at_start[i] && net.is_ready(i)).count(),
                    "expected_deliveries_open_peers": expected,
                    "received_deliveries_open_peers": received,
                    "lost_deliveries_open_peers": lost,
                    "open_peers_missing_some": short,
                    "per_peer_received_min": (min_got != u32::MAX).then_some(min_got),
                    "per_peer_received_max": max_got,
                    "per_peer_expected": {
                        "min": sent - r.own.iter().max().copied().unwrap_or(0) as usize,
                        "max": sent - r.own.iter().min().copied().unwrap_or(0) as usize,
                    },
                    "closed_peers": closed_before.max(net.closed.len()) - closed_before,
                    "closed_peers_expected": closed_expected,
                    "closed_peers_received": closed_received,
                    "out_of_order_or_duplicate": r.disorder,
                    "latency_s": r.bcast_latency.json(),
                    "kernel_latency_s": r.bcast_kernel_latency.json(),
                    "per_message_first_to_last_s": {"p50": pct(&spreads, 0.5), "p99": pct(&spreads, 0.99), "max": pct(&spreads, 1.0)},
                });
            }
            _ => unreachable!("checked in args"),
        }
        let (cpu, wall) = (cpu_s() - cpu_at_start, wall_at_start.elapsed().as_secs_f64());
        tool_cpu.insert(phase.clone(), json!({"cpu_s": cpu, "wall_s": wall, "cpu_pct": cpu / wall * 100.0}));
    }
    out["tool_cpu_by_phase"] = json!(tool_cpu);
    println!("PHASE end mono={:.6}", mono());
    out["pings_total"] = json!(net.pings.len());
    out["sweeps"] = net.sweeps_json(a.gap);
    out["closed"] = net.closed_json();
    out["evictions"] = json!(net.closed.len());
    out["still_connected_at_end"] = json!(net.conns.iter().filter(|c| c.st == St::Ready).count());
    out["other_msgs_by_type"] = json!(r.other);
    Ok(out)
}

// ---------------------------------------------------------------------------
// attack: K makers with tiny receive buffers ask for peer lists and never read.

fn attack_mode(a: &Args) -> io::Result<Value> {
    let hold = a.hold.unwrap_or(45.0);
    let before = sockstat();
    let mut net = Net::new(a)?;
    net.rcvbuf = Some(a.rcvbuf);
    let mut burst = Vec::new();
    for _ in 0..a.getpeerlist {
        encode(GETPEERLIST, "", &mut burst);
    }
    net.burst = Some(burst);
    let ids = net.connect_all(&vec![Role::Maker; a.k], a.window, Duration::from_secs(120))?;
    let attackers: Vec<usize> = ids.into_iter().filter(|&i| net.is_ready(i)).collect();
    let effective_rcvbuf = attackers
        .first()
        .and_then(|&i| net.conns[i].stream.as_ref())
        .and_then(|s| getsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF));
    // Flush the bursts, then watch without reading.
    let start = Instant::now();
    let mut series = Vec::new();
    let mut seen_closed: HashMap<usize, f64> = HashMap::new();
    let mut peak = before.clone();
    let mut next_sample = start;
    while start.elapsed() < Duration::from_secs_f64(hold) {
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            let s = sockstat();
            if s.get("mem") > peak.get("mem") {
                peak = s.clone();
            }
            let t = start.elapsed().as_secs_f64();
            for (i, hup) in hung_up(&net, &attackers) {
                if hup {
                    seen_closed.entry(i).or_insert(t);
                }
            }
            series.push(json!({"t_s": t, "mem_pages": s.get("mem"), "orphan": s.get("orphan"), "inuse": s.get("inuse"), "hub_closed_seen": seen_closed.len()}));
        }
        net.turn(Duration::from_millis(100))?;
        net.inbox.clear();
    }
    let end_of_hold = sockstat();
    // Is the hub still serving? A fresh taker's handshake, timed.
    net.burst = None;
    net.rcvbuf = None;
    let probe_start = Instant::now();
    let probe = net.open(Role::Taker);
    let mut probe_s = None;
    while let Some(p) = probe {
        if net.is_ready(p) {
            probe_s = Some(probe_start.elapsed().as_secs_f64());
            break;
        }
        if net.conns[p].st == St::Closed || probe_start.elapsed() > Duration::from_secs(15) {
            break;
        }
        net.turn(Duration::from_millis(10))?;
        net.inbox.clear();
    }
    // Only now read the attackers: EOF or reset means the hub had closed them.
    let drain_start = Instant::now();
    let mut drained: HashMap<usize, u64> = HashMap::new();
    let mut eof: HashMap<usize, String> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut last_progress = Instant::now();
    while drain_start.elapsed() < Duration::from_secs_f64(a.drain)
        && eof.len() < attackers.len()
        && last_progress.elapsed() < Duration::from_secs(3)
    {
        for &i in &attackers {
            if eof.contains_key(&i) {
                continue;
            }
            let Some(fd) = net.conns[i].stream.as_ref().map(|s| s.as_raw_fd()) else { continue };
            loop {
                // SAFETY: fd is open (owned by net.conns[i]); buf is valid for writes.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                if n > 0 {
                    *drained.entry(i).or_default() += n as u64;
                    last_progress = Instant::now();
                } else if n == 0 {
                    eof.insert(i, "eof".into());
                    break;
                } else {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => {}
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            eof.insert(i, e.to_string());
                        }
                    }
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut end_reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for r in eof.values() {
        *end_reasons.entry(r.as_str()).or_default() += 1;
    }
    let per_conn = sorted(attackers.iter().map(|i| drained.get(i).copied().unwrap_or(0) as f64).collect());
    let drained_total: u64 = drained.values().sum();
    let drained_max = drained.values().max().copied().unwrap_or(0);
    for &i in &attackers {
        net.close(i, None);
    }
    if let Some(p) = probe {
        net.close(p, None);
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = sockstat();
    let mem = |s: &BTreeMap<String, i64>| json!({"pages": s.get("mem"), "mib": s.get("mem").map(|&p| page_mib(p)), "orphan": s.get("orphan"), "inuse": s.get("inuse")});
    let first_closed = seen_closed.values().copied().fold(f64::NAN, f64::min);
    Ok(json!({
        "mode": "attack",
        "k": a.k,
        "rcvbuf_requested": a.rcvbuf,
        "rcvbuf_effective": effective_rcvbuf,
        "rcvbuf_set": "before connect (libc::socket, setsockopt SO_RCVBUF, libc::connect)",
        "getpeerlist_each": a.getpeerlist,
        "hold_s": hold,
        "handshake": net.handshake_json(),
        "handshaked_ok": net.ok,
        "failed": net.failed,
        "sockstat_before": mem(&before),
        "sockstat_peak": mem(&peak),
        "sockstat_end_of_hold": mem(&end_of_hold),
        "sockstat_after_close": mem(&after),
        "series": series,
        "hub_closed_seen_without_reading": seen_closed.len(),
        "first_close_seen_s": (!first_closed.is_nan()).then_some(first_closed),
        "closed_seen_when_draining": eof.len(),
        "drain_end_reasons": end_reasons,
        "still_open_after_drain": attackers.len() - eof.len(),
        "drained_bytes_total": drained_total,
        "drained_bytes_max_per_conn": drained_max,
        "drained_bytes_per_conn": {"min": pct(&per_conn, 0.0), "p50": pct(&per_conn, 0.5), "p90": pct(&per_conn, 0.9)},
        "drain_s": drain_start.elapsed().as_secs_f64(),
        "probe_handshake_s": probe_s,
        "pings_total": net.pings.len(),
    }))
}

/// For each attacker: whether poll() reports a hang-up, FIN or error, without reading.
fn hung_up(net: &Net, ids: &[usize]) -> Vec<(usize, bool)> {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(ids.len());
    let mut which = Vec::with_capacity(ids.len());
    for &i in ids {
        if let Some(s) = net.conns[i].stream.as_ref() {
            fds.push(libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 });
            which.push(i);
        }
    }
    // SAFETY: fds is a valid array of fds.len() pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if n < 0 {
        return Vec::new();
    }
    let bad = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
    which.into_iter().zip(fds).map(|(i, p)| (i, p.revents & bad != 0)).collect()
}

/// Entries of a PEERLIST line that mark a departure (`<nick>;<location>;D`).
fn departed(line: &str) -> usize {
    line.split(',').filter(|e| e.split(';').nth(2) == Some("D")).count()
}

// ---------------------------------------------------------------------------
// churn: N idle takers, then makers that handshake and leave, one at a time.

fn churn_mode(a: &Args) -> io::Result<Value> {
    let mut net = Net::new(a)?;
    net.connect_all(&vec![Role::Taker; a.n], a.window, Duration::from_secs(300))?;
    let mut other = BTreeMap::new();
    // Notice lines, and the departures they carry (a hub may batch several in one line).
    let (mut notices, mut departures) = (0usize, 0usize);
    println!("CHURN_READY");
    net.phase = "quiet";
    net.run_for(2.0, |_, m| count_other(&mut other, &m))?;
    println!("CHURN_START mono={:.6}", mono());
    net.phase = "churn";
    let start = Instant::now();
    let (mut done, mut refused) = (0usize, 0usize);
    let budget = Duration::from_secs_f64(a.timeout.max(1.0) * 6.0);
    for _ in 0..a.cycles {
        if start.elapsed() > budget {
            break;
        }
        let Some(id) = net.open(Role::Maker) else {
            refused += 1;
            continue;
        };
        let t = Instant::now();
        while net.conns[id].st == St::Handshaking && t.elapsed() < Duration::from_secs(10) {
            net.turn(Duration::from_millis(5))?;
            for m in std::mem::take(&mut net.inbox) {
                if m.kind == PEERLIST && m.line.contains(";D") {
                    notices += 1;
                    departures += departed(&m.line);
                } else {
                    count_other(&mut other, &m);
                }
            }
        }
        if net.is_ready(id) {
            done += 1;
        } else {
            refused += 1;
        }
        net.close(id, None);
    }
    let cycles_s = start.elapsed().as_secs_f64();
    // Until the idle peers have had no departure notice for 2.5 s (a hub may batch them
    // once a second), at most --timeout s.
    let mut quiet_since = Instant::now();
    let drain = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(2500)
        && drain.elapsed() < Duration::from_secs_f64(a.timeout)
    {
        net.turn(Duration::from_millis(20))?;
        for m in std::mem::take(&mut net.inbox) {
            if m.kind == PEERLIST && m.line.contains(";D") {
                notices += 1;
                departures += departed(&m.line);
                quiet_since = Instant::now();
            } else {
                count_other(&mut other, &m);
            }
        }
    }
    let churn_s = start.elapsed().as_secs_f64();
    println!("CHURN_END mono={:.6} cycles={done} secs={churn_s:.3}", mono());
    net.phase = "after";
    net.run_for(2.0, |_, m| count_other(&mut other, &m))?;
    let idle_open = net.conns[..a.n].iter().filter(|c| c.st == St::Ready).count();
    Ok(json!({
        "mode": "churn",
        "n": a.n,
        "handshake": net.handshake_json(),
        "handshaked_ok": net.ok,
        "failed": net.failed,
        "cycles_requested": a.cycles,
        "cycles_done": done,
        "cycles_refused": refused,
        "cycles_s": cycles_s,
        "churn_until_quiet_s": churn_s,
        "departure_notice_lines_received": notices,
        "departures_notified": departures,
        "departures_if_all_notified": done * a.n,
        "idle_peers_open_at_end": idle_open,
        "closed": net.closed_json(),
        "pings_total": net.pings.len(),
        "other_msgs_by_type": other,
    }))
}
