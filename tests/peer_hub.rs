//! The peer hub over real sockets on `127.0.0.1:0`, with short timings: the
//! protocol document's captured probe run, the PING/PONG rules, handshake
//! refusals, hostile peers, the limits, PEERLIST, shutdown and the counters.
//!
//! Every wait is bounded ([`BOUND`]); timing assertions are orderings, or carry
//! generous slack: these tests run in parallel on a loaded 2-core machine.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use heartbeat::peer::wire::{self, Location};
use heartbeat::peer::{EvictReason, Hub, HubConfig, HubEvent, Limits, SweepConfig};
use parking_lot::Mutex;

mod common;
use common::{BOUND, Events, counter, encoded};

const NETWORK: &str = "regtest";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The short heartbeat: sweep every 200 ms, probe after 500 ms idle,
/// hard-evict after 1500 ms idle, wait 400 ms for PONGs.
///
/// An answering peer is pinged every 600 ms (three sweeps), so the pong wait
/// leaves it 400 ms to answer and still ends before its next PING (see
/// `an_answering_peer_survives_a_pong_wait_longer_than_its_ping_period`).
fn fast() -> SweepConfig {
    SweepConfig { sweep_interval: ms(200), idle_threshold: ms(500), hard_evict: ms(1500), pong_wait: ms(400) }
}

/// [`fast`], but hard-evicting only after 5 s idle.
fn pinging() -> SweepConfig {
    SweepConfig { hard_evict: Duration::from_secs(5), ..fast() }
}

/// A heartbeat that never fires within a test.
fn quiet() -> SweepConfig {
    SweepConfig {
        sweep_interval: Duration::from_secs(60),
        idle_threshold: Duration::from_secs(120),
        hard_evict: Duration::from_secs(600),
        pong_wait: Duration::from_secs(30),
    }
}

/// A hub on `127.0.0.1:0` for `regtest`, `tweak`ed. These tests are about
/// the heartbeat, so the hub announces takers' departures too (as
/// joinmarket-ng does), sends its notices at once, and answers GETPEERLIST
/// (the tests' round-trip barrier) without its usual ration; routing,
/// privacy and the limits are tested in `peer_routing.rs`.
fn start(sweep: SweepConfig, tweak: impl FnOnce(&mut HubConfig)) -> Hub {
    let mut config = HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        network: NETWORK.into(),
        sweep,
        announce_takers: true,
        notice_interval: ms(1),
        limits: Limits { peerlists: 100_000, ..Limits::default() },
        ..HubConfig::default()
    };
    tweak(&mut config);
    Hub::start(config).expect("the hub starts")
}

/// Maker location number `i`: 56 base32 characters, `.onion`, a port.
fn maker(i: u32) -> Location {
    const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut host = "m".repeat(48);
    let mut n = i;
    for _ in 0..8 {
        host.push(char::from(BASE32[(n % 32) as usize]));
        n /= 32;
    }
    Location::parse(&format!("{host}.onion:{}", 5222 + i % 100)).expect("a maker location")
}

/// A valid PUBMSG envelope of exactly `total` bytes, `\n` included.
fn pubmsg_of_len(from: &str, total: usize) -> Vec<u8> {
    let tail = b"\"}\n";
    let mut out = format!("{{\"type\": {}, \"line\": \"{from}!PUBLIC!", wire::PUBMSG).into_bytes();
    out.resize(total - tail.len(), b'x');
    out.extend_from_slice(tail);
    assert_eq!(out.len(), total);
    out
}

/// The PEERLIST entry that says a peer is gone.
fn gone(client: &Client) -> String {
    wire::peerlist_entry(&client.nick, &client.location, true)
}

/// One line a client received.
#[derive(Debug, Clone)]
struct Msg {
    /// `None` when the line is not a valid envelope.
    kind: Option<u32>,
    line: String,
    /// As received, terminator included.
    raw: Vec<u8>,
    at: Instant,
}

impl Msg {
    fn is(&self, kind: u32) -> bool {
        self.kind == Some(kind)
    }

    /// A PEERLIST answering GETPEERLIST (no `;D` entry), not a notice of peers gone.
    fn is_answer(&self) -> bool {
        self.is(wire::PEERLIST) && wire::parse_peerlist(&self.line).iter().all(|(_, _, gone)| !gone)
    }
}

enum Got {
    Line(Msg),
    /// EOF (`"eof"`) or the read error.
    Closed(String, Instant),
}

/// How a client treats the hub's PINGs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    /// Advertises ping and answers every PING with a PONG at once.
    Answers,
    /// Advertises ping and never answers.
    Silent,
    /// A reference client: `"features": {}`.
    Legacy,
}

/// A raw test client: a reader thread forwards every received line (and the
/// close) over a channel, answering PINGs first when told to.
struct Client {
    nick: String,
    location: Location,
    /// Its local address: the hub's `Rejected { addr }`.
    addr: SocketAddr,
    writer: Arc<Mutex<TcpStream>>,
    answer_pings: Arc<AtomicBool>,
    rx: Receiver<Got>,
    reader: Option<JoinHandle<()>>,
    /// Every line received so far, in order.
    seen: Vec<Msg>,
    closed: Option<(String, Instant)>,
}

impl Client {
    /// Connects without a handshake.
    fn connect(hub: &Hub) -> Client {
        let stream = TcpStream::connect(hub.local_addr()).expect("connect to the hub");
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(BOUND)).unwrap();
        let addr = stream.local_addr().unwrap();
        let writer = Arc::new(Mutex::new(stream.try_clone().unwrap()));
        let answer_pings = Arc::new(AtomicBool::new(false));
        let (tx, rx) = unbounded();
        let reader = spawn_reader(stream, writer.clone(), answer_pings.clone(), tx);
        Client {
            nick: wire::random_nick(),
            location: Location::Taker,
            addr,
            writer,
            answer_pings,
            rx,
            reader: Some(reader),
            seen: Vec::new(),
            closed: None,
        }
    }

    /// Connects and handshakes; returns once the hub accepted (its `Joined`
    /// event is out by then).
    fn join(hub: &Hub, location: Location, ping: Ping) -> Client {
        let mut client = Client::connect(hub);
        client.location = location;
        client.answer_pings(ping == Ping::Answers);
        client.send(
            wire::HANDSHAKE,
            &wire::client_handshake(&client.nick, NETWORK, &client.location, ping != Ping::Legacy),
        );
        let i = client.wait_from(0, "the handshake reply", |m| m.is(wire::DN_HANDSHAKE));
        assert_eq!(i, 0, "the reply is the first line");
        let reply = wire::parse_dn_handshake(&client.seen[0].line).expect("a well-formed 795");
        assert!(reply.accepted, "{} refused: {:?}", client.nick, client.seen[0].line);
        assert_eq!((reply.nick.as_str(), reply.network.as_str()), (hub.nick(), NETWORK));
        assert!(reply.ping, "the hub advertises ping");
        client
    }

    fn answer_pings(&self, yes: bool) {
        self.answer_pings.store(yes, Ordering::SeqCst);
    }

    fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.lock().write_all(bytes)
    }

    fn send(&self, kind: u32, line: &str) {
        self.send_raw(&encoded(kind, line)).expect("send to the hub");
    }

    fn record(&mut self, got: Got) {
        match got {
            Got::Line(msg) => self.seen.push(msg),
            Got::Closed(how, at) => self.closed = Some((how, at)),
        }
    }

    /// The index of the first line from `from` on that matches; waits for it.
    fn wait_from(&mut self, from: usize, what: &str, pred: impl Fn(&Msg) -> bool) -> usize {
        let deadline = Instant::now() + BOUND;
        let mut i = from;
        loop {
            while i < self.seen.len() {
                if pred(&self.seen[i]) {
                    return i;
                }
                i += 1;
            }
            if let Some((how, _)) = &self.closed {
                panic!("{}: closed ({how}) before {what}; received {:?}", self.nick, self.lines());
            }
            match self.rx.recv_deadline(deadline) {
                Ok(got) => self.record(got),
                Err(_) => panic!("{}: no {what} within {BOUND:?}; received {:?}", self.nick, self.lines()),
            }
        }
    }

    /// The first line ever received that matches; waits for it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let i = self.wait_from(0, what, pred);
        self.seen[i].clone()
    }

    /// Waits until `n` lines of `kind` have arrived; returns the `n`th.
    fn wait_nth(&mut self, kind: u32, n: usize) -> Msg {
        let mut from = 0;
        for _ in 0..n {
            from = self.wait_from(from, &format!("{n} lines of type {kind}"), |m| m.is(kind)) + 1;
        }
        self.seen[from - 1].clone()
    }

    /// Waits for the hub to close the connection: how (`"eof"` or the read
    /// error) and when.
    fn wait_closed(&mut self) -> (String, Instant) {
        let deadline = Instant::now() + BOUND;
        while self.closed.is_none() {
            match self.rx.recv_deadline(deadline) {
                Ok(got) => self.record(got),
                Err(_) => panic!("{}: still open after {BOUND:?}; received {:?}", self.nick, self.lines()),
            }
        }
        self.closed.clone().unwrap()
    }

    /// Listens for `window` without expecting anything.
    fn listen(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Ok(got) = self.rx.recv_deadline(deadline) {
            self.record(got);
        }
    }

    /// Sends GETPEERLIST and waits for its answer: a round trip through the
    /// hub's I/O thread, which handles a peer's lines and writes in order.
    /// Returns the lines that arrived before the answer, and the answer.
    fn barrier(&mut self) -> (Vec<Msg>, Msg) {
        let from = self.seen.len();
        self.send(wire::GETPEERLIST, "");
        let i = self.wait_from(from, "the GETPEERLIST answer", Msg::is_answer);
        (self.seen[from..i].to_vec(), self.seen[i].clone())
    }

    fn count(&self, kind: u32) -> usize {
        self.seen.iter().filter(|m| m.is(kind)).count()
    }

    /// Every type received, in order (`0` for an invalid line).
    fn kinds(&self) -> Vec<u32> {
        self.seen.iter().map(|m| m.kind.unwrap_or(0)).collect()
    }

    fn lines(&self) -> Vec<String> {
        self.seen.iter().map(|m| String::from_utf8_lossy(&m.raw).trim_end().to_owned()).collect()
    }

    /// Every `;D` entry of every PEERLIST received, in order.
    fn gone_entries(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|m| m.is(wire::PEERLIST))
            .flat_map(|m| m.line.split(',').map(str::to_owned).collect::<Vec<_>>())
            .filter(|entry| entry.ends_with(";D"))
            .collect()
    }

    /// Asserts that only these types ever arrived.
    fn assert_only(&self, allowed: &[u32]) {
        let kinds = self.kinds();
        assert!(
            kinds.iter().all(|k| allowed.contains(k)),
            "{} may only receive {allowed:?}, got {:?}",
            self.nick,
            self.lines()
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.writer.lock().shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn spawn_reader(
    stream: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
    answer_pings: Arc<AtomicBool>,
    tx: Sender<Got>,
) -> JoinHandle<()> {
    let pong = encoded(wire::PONG, "");
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        loop {
            let mut raw = Vec::new();
            let how = match reader.read_until(b'\n', &mut raw) {
                Ok(0) => "eof".to_owned(),
                Ok(_) => {
                    let at = Instant::now();
                    let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    let envelope = wire::parse_envelope(text).ok();
                    let kind = envelope.as_ref().map(|e| e.kind);
                    let line = envelope.map(|e| e.line.into_owned()).unwrap_or_default();
                    if kind == Some(wire::PING) && answer_pings.load(Ordering::SeqCst) {
                        let _ = writer.lock().write_all(&pong);
                    }
                    if tx.send(Got::Line(Msg { kind, line, raw, at })).is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => e.to_string(),
            };
            let _ = tx.send(Got::Closed(how, Instant::now()));
            return;
        }
    })
}

/// The protocol document's "Captured probe run" (sweep 1 s, idle 2 s, hard
/// evict 6 s, pong wait 1 s), scaled down to [`fast`].
#[test]
fn the_captured_probe_run_over_real_sockets() {
    let hub = start(fast(), |_| {});
    let mut events = Events::of(&hub);
    let mut answering = Client::join(&hub, maker(1), Ping::Answers);
    let mut silent = Client::join(&hub, Location::Taker, Ping::Silent);
    let mut legacy_maker = Client::join(&hub, maker(2), Ping::Legacy);
    let mut legacy_taker = Client::join(&hub, Location::Taker, Ping::Legacy);

    // The silent ping taker: one PING, then evicted for not answering it.
    let ping = silent.wait_for("a PING", |m| m.is(wire::PING));
    assert_eq!(ping.raw, b"{\"type\": 798, \"line\": \"\"}\r\n");
    let (_, reason) = events.evicted(&silent.nick);
    assert_eq!(reason, EvictReason::PongTimeout);
    // Both instants come from the client's reader thread.
    let (_, closed) = silent.wait_closed();
    let waited = closed.saturating_duration_since(ping.at);
    assert!(closed > ping.at && waited >= ms(50), "evicted {waited:?} after its PING (pong wait 400 ms)");
    silent.assert_only(&[wire::DN_HANDSHAKE, wire::PING]);

    // The legacy peers: hard-evicted for idleness, after the silent one.
    assert_eq!(events.evicted(&legacy_maker.nick).1, EvictReason::IdleTimeout);
    assert_eq!(events.evicted(&legacy_taker.nick).1, EvictReason::IdleTimeout);
    let order: Vec<&str> = events
        .seen
        .iter()
        .filter_map(|(_, e)| match e {
            HubEvent::Evicted { nick, .. } => Some(nick.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order[0], silent.nick, "the silent one goes first: {order:?}");
    assert_eq!(order.len(), 3, "{:#?}", events.seen);
    legacy_maker.wait_closed();
    legacy_taker.wait_closed();

    // The legacy maker got the orderbook probe, exact bytes, from 500 ms
    // idle until its eviction past 1500 ms: every other 200 ms sweep, as each
    // probe waits out the 400 ms pong wait before the next (about three).
    let probe = format!("{{\"type\": 687, \"line\": \"{}!PUBLIC!orderbook\"}}\r\n", hub.nick());
    let probes: Vec<&Msg> = legacy_maker.seen.iter().filter(|m| m.is(wire::PUBMSG)).collect();
    assert!((2..=4).contains(&probes.len()), "probes: {:?}", legacy_maker.lines());
    for p in probes {
        assert_eq!(String::from_utf8_lossy(&p.raw), probe);
    }
    legacy_maker.assert_only(&[wire::DN_HANDSHAKE, wire::PUBMSG, wire::PEERLIST]);
    // The legacy taker got nothing but the reply and the news of the others.
    legacy_taker.assert_only(&[wire::DN_HANDSHAKE, wire::PEERLIST]);
    for (who, got) in
        [(&legacy_maker, legacy_maker.gone_entries()), (&legacy_taker, legacy_taker.gone_entries())]
    {
        assert!(got.contains(&gone(&silent)), "{}: {got:?}", who.nick);
        // Evicted in the same sweep, or the maker one sweep before the taker.
        assert!(got.iter().all(|e| *e == gone(&silent) || *e == gone(&legacy_maker)), "{got:?}");
    }

    // The answering maker: pinged sweep after sweep, never evicted.
    answering.wait_nth(wire::PING, 4);
    let (_, answer) = answering.barrier();
    assert_eq!(
        answer.line,
        wire::peer_entry(&answering.nick, &answering.location, Some("peerlist_features+ping"))
    );
    events.assert_only_joined(&answering.nick);
    answering.assert_only(&[wire::DN_HANDSHAKE, wire::PING, wire::PEERLIST]);
    let got: BTreeSet<String> = answering.gone_entries().into_iter().collect();
    let expected: BTreeSet<String> = [gone(&silent), gone(&legacy_maker), gone(&legacy_taker)].into();
    assert_eq!(got, expected);
    assert_eq!(answering.gone_entries().len(), 3, "each told once");
    let peers = hub.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (peers[0].nick.as_str(), peers[0].role, peers[0].ping),
        (answering.nick.as_str(), "maker", true)
    );
    let counters = hub.counters();
    assert!(counter(&counters.messages, "pong") >= 3, "{counters:?}");
    assert!(counters.pings_sent >= 5 && counters.probes_sent >= 2, "{counters:?}");
}

/// PONG only to peers that advertised ping, at once, and rate-limited.
#[test]
fn pongs_go_only_to_ping_peers_at_once_and_rate_limited() {
    let hub = start(quiet(), |c| c.limits = Limits { pings: 3, disconnect_after: 1000, ..Limits::default() });
    let mut pinger = Client::join(&hub, Location::Taker, Ping::Answers);
    let mut legacy_taker = Client::join(&hub, Location::Taker, Ping::Legacy);
    let mut legacy_maker = Client::join(&hub, maker(1), Ping::Legacy);
    // `"ping": "yes"` is no ping support.
    let mut yes = Client::connect(&hub);
    let handshake = wire::client_handshake(&yes.nick, NETWORK, &Location::Taker, true)
        .replace("\"ping\": true", "\"ping\": \"yes\"");
    assert!(handshake.contains("\"ping\": \"yes\""));
    yes.send(wire::HANDSHAKE, &handshake);
    yes.wait_for("the handshake reply", |m| m.is(wire::DN_HANDSHAKE));

    // A ping peer's PING: a PONG at once, exact bytes.
    let sent = Instant::now();
    pinger.send(wire::PING, "");
    let pong = pinger.wait_for("a PONG", |m| m.is(wire::PONG));
    assert_eq!(pong.raw, b"{\"type\": 799, \"line\": \"\"}\r\n");
    assert!(pong.at.saturating_duration_since(sent) < Duration::from_secs(2));
    // Five more in a row: two more PONGs (3 a minute), nothing else.
    for _ in 0..5 {
        pinger.send(wire::PING, "");
    }
    let (before, _) = pinger.barrier();
    assert_eq!(before.iter().filter(|m| m.is(wire::PONG)).count(), 2, "{before:?}");
    assert_eq!(before.len(), 2);
    let counters = hub.counters();
    assert_eq!((counters.pongs_sent, counters.pings_unanswered), (3, 3));

    // Legacy peers' PINGs: never a PONG, never a DISCONNECT, nothing at all.
    for legacy in [&mut legacy_taker, &mut legacy_maker, &mut yes] {
        legacy.send(wire::PING, "");
        legacy.send(wire::PING, "");
        let (before, _) = legacy.barrier();
        assert!(before.is_empty(), "{}: {before:?}", legacy.nick);
    }
    for client in [&mut pinger, &mut legacy_taker, &mut legacy_maker, &mut yes] {
        client.listen(ms(100));
        assert!(client.closed.is_none());
    }
    for legacy in [&legacy_taker, &legacy_maker, &yes] {
        legacy.assert_only(&[wire::DN_HANDSHAKE, wire::PEERLIST]);
    }
    assert_eq!(pinger.count(wire::PONG), 3);
    assert_eq!(pinger.count(wire::DISCONNECT), 0);
    let counters = hub.counters();
    assert_eq!((counters.pongs_sent, counters.pings_unanswered), (3, 9));
    assert_eq!(counter(&counters.messages, "ping"), 12);
    assert_eq!(hub.peer_count(), 4);
    let ping_flags: Vec<bool> = hub.peers().iter().map(|p| p.ping).collect();
    assert_eq!(ping_flags, [true, false, false, false]);
}

/// Refused handshakes get `"accepted": false` then a close; malformed ones
/// and non-handshakes just the close; the first peer is served throughout.
#[test]
fn refused_and_malformed_handshakes_are_closed() {
    let hub = start(quiet(), |_| {});
    let mut events = Events::of(&hub);
    let mut first = Client::join(&hub, maker(1), Ping::Answers);
    let good = |nick: &str| wire::client_handshake(nick, NETWORK, &Location::Taker, true);

    let cases = [
        ("wrong network", wire::client_handshake(&wire::random_nick(), "mainnet", &Location::Taker, true)),
        ("proto-ver 4", good(&wire::random_nick()).replace("\"proto-ver\": 5", "\"proto-ver\": 4")),
        (
            "app-name other",
            good(&wire::random_nick()).replace("\"app-name\": \"joinmarket\"", "\"app-name\": \"other\""),
        ),
        ("directory true", good(&wire::random_nick()).replace("\"directory\": false", "\"directory\": true")),
        ("duplicate nick", good(&first.nick)),
        ("the hub's own nick", good(hub.nick())),
    ];
    for (what, changed) in
        ["mainnet", "\"proto-ver\": 4", "\"other\"", "\"directory\": true"].iter().enumerate()
    {
        assert!(cases[what].1.contains(changed), "{}", cases[what].0);
    }
    for (what, handshake) in cases {
        let mut refused = Client::connect(&hub);
        refused.send(wire::HANDSHAKE, &handshake);
        let (how, _) = refused.wait_closed();
        assert_eq!(how, "eof", "{what}");
        assert_eq!(refused.seen.len(), 1, "{what}: {:?}", refused.lines());
        assert!(refused.seen[0].is(wire::DN_HANDSHAKE), "{what}");
        let reply = wire::parse_dn_handshake(&refused.seen[0].line).expect("a well-formed refusal");
        assert!(!reply.accepted, "{what}");
        assert_eq!((reply.nick.as_str(), reply.network.as_str()), (hub.nick(), NETWORK), "{what}");
        assert!(refused.seen[0].line.contains("\"accepted\": false"), "{what}");
        let reason = events.rejected(refused.addr);
        assert!(reason.starts_with("handshake refused"), "{what}: {reason}");
        let (before, _) = first.barrier();
        assert!(before.is_empty(), "{what}: {before:?}");
        assert_eq!(hub.peer_count(), 1, "{what}");
    }

    let location = good("J5DirNickOOOOOOO").replace("NOT-SERVING-ONION", "localhost:5222");
    let no_reply: Vec<(&str, Vec<u8>)> = vec![
        ("a handshake that is not JSON", encoded(wire::HANDSHAKE, "not json")),
        ("a bad location string", encoded(wire::HANDSHAKE, &location)),
        ("a line that is no envelope", b"hello\r\n".to_vec()),
        ("a PUBMSG first", encoded(wire::PUBMSG, "J5DirNickOOOOOOO!PUBLIC!orderbook")),
        ("a GETPEERLIST first", encoded(wire::GETPEERLIST, "")),
        ("a PING first", encoded(wire::PING, "")),
    ];
    for (what, bytes) in no_reply {
        let mut refused = Client::connect(&hub);
        refused.send_raw(&bytes).unwrap();
        let (how, _) = refused.wait_closed();
        assert_eq!(how, "eof", "{what}");
        assert!(refused.seen.is_empty(), "{what}: {:?}", refused.lines());
        let reason = events.rejected(refused.addr);
        assert!(!reason.is_empty(), "{what}");
        let (before, _) = first.barrier();
        assert!(before.is_empty(), "{what}: {before:?}");
    }

    first.assert_only(&[wire::DN_HANDSHAKE, wire::PEERLIST]);
    assert!(first.gone_entries().is_empty(), "never handshaked, never announced");
    events.assert_only_joined(&first.nick);
    let counters = hub.counters();
    assert_eq!((counters.joins, counters.accepted), (1, 13));
    assert!(counters.rejected >= 8, "{counters:?}");
    assert_eq!(hub.peers()[0].nick, first.nick);
}

/// The well-behaved side of the hostile-peer tests: a hub that pings but
/// hard-evicts late, and one ping maker that answers.
struct Watched {
    hub: Hub,
    events: Events,
    good: Client,
}

fn watched(sweep: SweepConfig, tweak: impl FnOnce(&mut HubConfig)) -> Watched {
    let hub = start(sweep, tweak);
    let events = Events::of(&hub);
    let good = Client::join(&hub, maker(0), Ping::Answers);
    Watched { hub, events, good }
}

impl Watched {
    /// The well-behaved peer is still served: pinged after `since`, its
    /// GETPEERLIST answered, and nothing happened to it but its join.
    fn assert_good_served(&mut self, since: Instant) {
        self.good.wait_for("a PING after the hostile peer went", |m| m.is(wire::PING) && m.at > since);
        let (_, answer) = self.good.barrier();
        let listed = wire::parse_peerlist(&answer.line);
        assert!(listed.iter().any(|(nick, _, _)| *nick == self.good.nick), "{listed:?}");
        self.events.assert_only_joined(&self.good.nick);
        assert!(self.hub.peers().iter().any(|p| p.nick == self.good.nick));
        assert!(self.good.closed.is_none());
        self.good.assert_only(&[wire::DN_HANDSHAKE, wire::PING, wire::PEERLIST]);
    }

    /// The well-behaved peer hears that `bad` is gone.
    fn assert_told_gone(&mut self, bad: &Client) {
        let entry = gone(bad);
        self.good.wait_for("the ;D of the hostile peer", |m| {
            m.is(wire::PEERLIST) && m.line.split(',').any(|e| e == entry)
        });
    }
}

#[test]
fn hostile_50000_bytes_without_a_newline() {
    let mut w = watched(pinging(), |_| {});
    let mut bad = Client::join(&w.hub, Location::Taker, Ping::Legacy);
    let _ = bad.send_raw(&vec![b'x'; 50_000]); // the hub may close before it all goes
    let (at, reason) = w.events.evicted(&bad.nick);
    assert!(matches!(&reason, EvictReason::Protocol(why) if why.contains("40000")), "{reason:?}");
    bad.wait_closed();
    w.assert_told_gone(&bad);

    // Before a handshake: rejected, no reply.
    let mut early = Client::connect(&w.hub);
    let _ = early.send_raw(&vec![b'{'; 50_000]);
    let reason = w.events.rejected(early.addr);
    assert!(reason.contains("40000"), "{reason}");
    early.wait_closed();
    assert!(early.seen.is_empty());
    assert_eq!(counter(&w.hub.counters().evictions, "protocol"), 1);
    w.assert_good_served(at);
}

#[test]
fn hostile_a_40001_byte_line_but_40000_is_fine() {
    let mut w = watched(pinging(), |_| {});
    let mut bad = Client::join(&w.hub, Location::Taker, Ping::Legacy);
    bad.send_raw(&pubmsg_of_len(&bad.nick, 40_000)).unwrap();
    let (before, _) = bad.barrier();
    assert!(before.is_empty() && bad.closed.is_none(), "40,000 bytes with the newline is the limit");
    assert_eq!(counter(&w.hub.counters().messages, "pubmsg"), 1);
    // Re-encoded with `\r\n` it would be 40,001 bytes, which its readers
    // would refuse: not relayed, counted.
    assert_eq!(counter(&w.hub.counters().dropped, "too_long"), 1);
    assert_eq!(w.hub.counters().relayed_pubmsg, 0);

    let _ = bad.send_raw(&pubmsg_of_len(&bad.nick, 40_001));
    let (at, reason) = w.events.evicted(&bad.nick);
    assert!(matches!(&reason, EvictReason::Protocol(why) if why.contains("40000")), "{reason:?}");
    bad.wait_closed();
    w.assert_told_gone(&bad);
    w.assert_good_served(at);
}

#[test]
fn hostile_garbage_after_the_handshake() {
    let mut w = watched(pinging(), |_| {});
    let mut bad = Client::join(&w.hub, maker(7), Ping::Answers);
    bad.send_raw(b"\x00\xff garbage {{{ \x01\r\n").unwrap();
    let (at, reason) = w.events.evicted(&bad.nick);
    assert!(matches!(&reason, EvictReason::Protocol(why) if why.contains("malformed")), "{reason:?}");
    bad.wait_closed();
    bad.assert_only(&[wire::DN_HANDSHAKE]);
    w.assert_told_gone(&bad);
    w.assert_good_served(at);
}

#[test]
fn hostile_never_handshakes() {
    let mut w = watched(pinging(), |c| c.handshake_timeout = ms(300));
    let connected = Instant::now();
    let mut mute = Client::connect(&w.hub);
    let mut partial = Client::connect(&w.hub);
    let handshake =
        encoded(wire::HANDSHAKE, &wire::client_handshake(&partial.nick, NETWORK, &Location::Taker, true));
    partial.send_raw(&handshake[..handshake.len() / 2]).unwrap();

    for client in [&mut mute, &mut partial] {
        let reason = w.events.rejected(client.addr);
        assert_eq!(reason, EvictReason::HandshakeTimeout.to_string());
        let (_, closed) = client.wait_closed();
        let after = closed.saturating_duration_since(connected);
        assert!(after >= ms(250), "closed {after:?} after connecting: the timeout is 300 ms");
        assert!(client.seen.is_empty(), "{:?}", client.lines());
    }
    let counters = w.hub.counters();
    assert_eq!(counter(&counters.evictions, "handshake_timeout"), 2);
    assert_eq!(counters.joins, 1);
    assert!(w.good.gone_entries().is_empty(), "never handshaked, never announced");
    w.assert_good_served(Instant::now());
}

#[test]
fn hostile_never_reads_and_is_a_slow_consumer() {
    // While the hub writes megabytes of answers, the good peer's PING and
    // PONG wait their turn on the I/O thread: a pong wait with slack (and
    // shorter than the time between its PINGs).
    let sweep = SweepConfig { idle_threshold: ms(1000), pong_wait: ms(800), ..pinging() };
    let mut w = watched(sweep, |c| {
        c.write_deadline = ms(300);
        c.limits.peerlists = 1_000_000; // the ration would stop the flood this test needs
    });
    let makers: Vec<Client> = (1..=20).map(|i| Client::join(&w.hub, maker(i), Ping::Legacy)).collect();
    let mut stream = TcpStream::connect(w.hub.local_addr()).unwrap();
    stream.set_write_timeout(Some(BOUND)).unwrap();
    let nick = wire::random_nick();
    stream
        .write_all(&encoded(
            wire::HANDSHAKE,
            &wire::client_handshake(&nick, NETWORK, &Location::Taker, false),
        ))
        .unwrap();
    w.events.wait("the non-reader joining", |e| matches!(e, HubEvent::Joined { nick: n, .. } if *n == nick));

    // Each answer lists 21 makers (about 1.8 kB): ask until the socket
    // buffers are full and an answer waits in the queue for longer than the
    // write deadline, giving the hub time to answer.
    let batch = encoded(wire::GETPEERLIST, "").repeat(256);
    let mut asked = 0;
    while w.events.about(&nick).len() == 1 {
        assert!(asked < 100_000, "still served after {asked} GETPEERLISTs unread");
        if stream.write_all(&batch).is_err() {
            break; // evicted: the hub reset the connection
        }
        asked += 256;
        w.events.listen(ms(5));
    }
    let (at, reason) = w.events.evicted(&nick);
    assert_eq!(reason, EvictReason::SlowConsumer);
    let entry = wire::peerlist_entry(&nick, &Location::Taker, true);
    w.good.wait_for("the ;D of the slow consumer", |m| m.is(wire::PEERLIST) && m.line == entry);
    assert_eq!(w.hub.peer_count(), 21);
    assert_eq!(counter(&w.hub.counters().evictions, "slow_consumer"), 1);
    w.assert_good_served(at);
    for m in &makers {
        w.events.assert_only_joined(&m.nick);
    }
}

/// Beyond `max_peers` handshaked peers, a handshake is refused with a 795
/// that says so, and the connection closed.
#[test]
fn max_peers_refuses_the_extra_handshake() {
    let hub = start(quiet(), |c| c.max_peers = 3);
    let mut events = Events::of(&hub);
    let mut peers: Vec<Client> = vec![
        Client::join(&hub, maker(1), Ping::Answers),
        Client::join(&hub, Location::Taker, Ping::Legacy),
        Client::join(&hub, maker(2), Ping::Legacy),
    ];
    let mut extra = Client::connect(&hub);
    extra.send(wire::HANDSHAKE, &wire::client_handshake(&extra.nick, NETWORK, &maker(9), true));
    let (how, _) = extra.wait_closed();
    assert_eq!(how, "eof");
    assert_eq!(extra.kinds(), [wire::DN_HANDSHAKE]);
    let reply = wire::parse_dn_handshake(&extra.seen[0].line).unwrap();
    assert!(!reply.accepted);
    assert_eq!(reply.motd.as_deref(), Some("Rejected: Maximum peers reached"));
    let reason = events.rejected(extra.addr);
    assert!(reason.contains("limit"), "{reason}");
    let counters = hub.counters();
    assert_eq!((counters.accepted, counters.refused, counters.rejected, counters.joins), (4, 1, 1, 3));
    for peer in &mut peers {
        let (before, answer) = peer.barrier();
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(wire::parse_peerlist(&answer.line).len(), 2);
        events.assert_only_joined(&peer.nick);
    }
    assert_eq!(hub.peer_count(), 3);

    // One leaves: there is room again.
    let leaver = peers.remove(1);
    leaver.send(wire::DISCONNECT, "");
    events.left(&leaver.nick);
    let _again = Client::join(&hub, maker(3), Ping::Legacy);
    assert_eq!(hub.peer_count(), 3);
}

/// GETPEERLIST lists exactly the handshaked makers, in connection order.
#[test]
fn getpeerlist_lists_exactly_the_handshaked_makers() {
    let hub = start(quiet(), |_| {});
    let mut events = Events::of(&hub);
    let m1 = Client::join(&hub, maker(1), Ping::Answers);
    let mut ping_taker = Client::join(&hub, Location::Taker, Ping::Answers);
    let mut m2 = Client::join(&hub, maker(2), Ping::Legacy);
    let mut legacy_taker = Client::join(&hub, Location::Taker, Ping::Legacy);
    let m3 = Client::join(&hub, maker(3), Ping::Silent);
    // Neither a connection that never handshakes nor a refused maker counts.
    let _bare = Client::connect(&hub);
    let mut refused = Client::connect(&hub);
    refused.send(wire::HANDSHAKE, &wire::client_handshake(&refused.nick, "mainnet", &maker(4), true));
    refused.wait_closed();

    // A requester that advertised `peerlist_features` (as jmcore and our
    // ping clients do) gets each maker's features; a legacy one does not.
    let entry = |c: &Client| wire::peerlist_entry(&c.nick, &c.location, false);
    let featured = |c: &Client, features: &str| wire::peer_entry(&c.nick, &c.location, Some(features));
    let plain = wire::peerlist([entry(&m1), entry(&m2), entry(&m3)].iter().map(String::as_str));
    let with_features =
        [featured(&m1, "peerlist_features+ping"), entry(&m2), featured(&m3, "peerlist_features+ping")];
    let with_features = wire::peerlist(with_features.iter().map(String::as_str));
    for (taker, expected) in [(&mut ping_taker, &with_features), (&mut legacy_taker, &plain)] {
        let (before, answer) = taker.barrier();
        assert!(before.is_empty());
        assert_eq!(answer.line, *expected);
        assert_eq!(answer.raw, encoded(wire::PEERLIST, expected));
    }
    // A maker asking gets the others too, and no taker.
    let (_, answer) = m2.barrier();
    let listed: Vec<String> =
        wire::parse_peerlist(&answer.line).into_iter().map(|(nick, _, _)| nick).collect();
    assert!(listed.contains(&m1.nick) && listed.contains(&m3.nick), "{listed:?}");
    assert!(!listed.contains(&ping_taker.nick) && !listed.contains(&legacy_taker.nick), "{listed:?}");
    assert!(wire::parse_peerlist(&answer.line).iter().all(|(_, _, gone)| !gone));

    // A maker that left is no longer listed.
    m1.send(wire::DISCONNECT, "");
    events.left(&m1.nick);
    let (_, answer) = legacy_taker.barrier();
    assert_eq!(answer.line, wire::peerlist([entry(&m2), entry(&m3)].iter().map(String::as_str)));
    assert_eq!(counter(&hub.counters().messages, "getpeerlist"), 4);
}

/// A peer's DISCONNECT: it leaves, and the others hear `;D`.
#[test]
fn disconnect_is_a_left_event_and_the_others_hear_of_it() {
    let hub = start(quiet(), |_| {});
    let mut events = Events::of(&hub);
    let mut leaving_maker = Client::join(&hub, maker(1), Ping::Answers);
    let mut leaving_taker = Client::join(&hub, Location::Taker, Ping::Legacy);
    let mut staying_ping = Client::join(&hub, Location::Taker, Ping::Answers);
    let mut staying_legacy = Client::join(&hub, maker(2), Ping::Legacy);

    for leaving in [&mut leaving_maker, &mut leaving_taker] {
        leaving.send(wire::DISCONNECT, "");
        let reason = events.left(&leaving.nick);
        assert!(reason.contains("DISCONNECT"), "{reason}");
        let (how, _) = leaving.wait_closed();
        assert_eq!(how, "eof");
        leaving.assert_only(&[wire::DN_HANDSHAKE, wire::PEERLIST]);
        let notice = encoded(wire::PEERLIST, &gone(leaving));
        for staying in [&mut staying_ping, &mut staying_legacy] {
            staying.wait_for("the ;D notice", |m| m.raw == notice);
        }
    }
    // The maker's notice reached the taker before it left, not after.
    assert_eq!(leaving_taker.gone_entries(), [gone(&leaving_maker)]);
    for staying in [&mut staying_ping, &mut staying_legacy] {
        staying.barrier();
        assert_eq!(staying.gone_entries(), [gone(&leaving_maker), gone(&leaving_taker)]);
        staying.assert_only(&[wire::DN_HANDSHAKE, wire::PEERLIST]);
        events.assert_only_joined(&staying.nick);
    }
    let counters = hub.counters();
    assert_eq!(counters.left, 2);
    assert!(counters.evictions.iter().all(|(_, n)| *n == 0), "{counters:?}");
    let nicks: Vec<String> = hub.peers().into_iter().map(|p| p.nick).collect();
    assert_eq!(nicks, [staying_ping.nick.clone(), staying_legacy.nick.clone()]);
}

/// `stop()` with 50 peers is prompt, closes every connection, and is idempotent.
#[test]
fn stop_with_50_peers_is_prompt_and_idempotent() {
    let hub = start(quiet(), |_| {});
    let mut events = Events::of(&hub);
    let mut clients: Vec<Client> = (0..50)
        .map(|i| {
            let location = if i % 2 == 0 { maker(i) } else { Location::Taker };
            Client::join(&hub, location, if i % 3 == 0 { Ping::Answers } else { Ping::Legacy })
        })
        .collect();
    assert_eq!(hub.peer_count(), 50);
    assert!(hub.is_running());

    let stopping = Instant::now();
    hub.stop();
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    assert!(!hub.is_running());
    for client in &mut clients {
        let (how, _) = client.wait_closed();
        assert_eq!(how, "eof", "{}", client.nick);
        assert_eq!(client.count(wire::DISCONNECT) + client.count(wire::PONG), 0);
    }
    let again = Instant::now();
    hub.stop();
    hub.stop();
    assert!(again.elapsed() < Duration::from_secs(1));
    for client in &clients {
        assert_eq!(events.left(&client.nick), "the hub stopped");
    }
    assert_eq!(hub.counters().left, 50);
    assert_eq!(hub.peer_count(), 0);
}

#[test]
fn dropping_a_hub_stops_it() {
    let hub = start(quiet(), |_| {});
    let events = hub.subscribe();
    let mut clients = vec![
        Client::join(&hub, maker(1), Ping::Answers),
        Client::join(&hub, Location::Taker, Ping::Legacy),
        Client::join(&hub, Location::Taker, Ping::Silent),
    ];
    let dropping = Instant::now();
    drop(hub);
    assert!(dropping.elapsed() < Duration::from_secs(2), "drop took {:?}", dropping.elapsed());
    for client in &mut clients {
        assert_eq!(client.wait_closed().0, "eof");
    }
    // Both threads are gone with the hub: the event channel disconnects.
    let deadline = Instant::now() + BOUND;
    let mut left = 0;
    loop {
        match events.recv_deadline(deadline) {
            Ok(HubEvent::Joined { .. }) => {}
            Ok(HubEvent::Left { reason, .. }) => {
                assert_eq!(reason, "the hub stopped");
                left += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("the hub's event channel is still open"),
        }
    }
    assert_eq!(left, 3);
}

/// Every received line refreshes last-seen: a legacy taker that talks every
/// 200 ms outlives the 1500 ms hard eviction; a silent one does not.
#[test]
fn every_line_refreshes_last_seen() {
    let hub = start(fast(), |_| {});
    let mut events = Events::of(&hub);
    let mut chatty = Client::join(&hub, Location::Taker, Ping::Legacy);
    let mut silent = Client::join(&hub, Location::Taker, Ping::Legacy);
    let joined = Instant::now();

    let (mut pubmsgs, mut others) = (0, 0);
    while joined.elapsed() < ms(2500) {
        if (pubmsgs + others) % 3 == 2 {
            chatty.send(4242, "an unknown type counts too");
            others += 1;
        } else {
            chatty.send(wire::PUBMSG, &format!("{}!PUBLIC!hello {pubmsgs}", chatty.nick));
            pubmsgs += 1;
        }
        thread::sleep(ms(200));
    }
    assert_eq!(events.evicted(&silent.nick).1, EvictReason::IdleTimeout);
    let (_, closed) = silent.wait_closed();
    let after = closed.saturating_duration_since(joined);
    assert!(after >= ms(1300), "hard-evicted {after:?} after joining: the limit is 1500 ms idle");
    // The chatty peer's PUBMSGs are relayed to it: receiving refreshes nothing.
    silent.assert_only(&[wire::DN_HANDSHAKE, wire::PUBMSG]);

    let (before, _) = chatty.barrier();
    assert!(before.iter().all(|m| m.is(wire::PEERLIST)), "{before:?}");
    assert_eq!(chatty.gone_entries(), [gone(&silent)]);
    chatty.assert_only(&[wire::DN_HANDSHAKE, wire::PEERLIST]);
    events.assert_only_joined(&chatty.nick);
    let peers = hub.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].nick, chatty.nick);
    assert!(peers[0].idle < ms(1500), "{:?}", peers[0].idle);
    let counters = hub.counters();
    assert_eq!(counter(&counters.messages, "pubmsg"), pubmsgs);
    assert_eq!(counter(&counters.messages, "other"), others);
    assert_eq!(counter(&counters.evictions, "idle_timeout"), 1);
}

/// `counters()` and `peers()` follow a run with one of everything.
#[test]
fn counters_and_peers_reflect_the_run() {
    let hub = start(fast(), |_| {});
    let mut events = Events::of(&hub);
    let mut a = Client::join(&hub, Location::Taker, Ping::Silent); // answers by hand
    let b = Client::join(&hub, Location::Taker, Ping::Silent); // pong timeout
    let c = Client::join(&hub, Location::Taker, Ping::Legacy); // idle timeout
    let d = Client::join(&hub, maker(1), Ping::Legacy); // probed, idle timeout
    let e = Client::join(&hub, maker(2), Ping::Answers); // garbage: protocol
    let f = Client::join(&hub, maker(3), Ping::Answers); // DISCONNECT: left
    let mut g = Client::connect(&hub); // wrong network: rejected
    g.send(wire::HANDSHAKE, &wire::client_handshake(&g.nick, "mainnet", &Location::Taker, false));

    let (_, joined) =
        events.wait("d's join", |ev| matches!(ev, HubEvent::Joined { nick, .. } if *nick == d.nick));
    assert_eq!(
        joined,
        HubEvent::Joined {
            id: joined_id(&joined),
            nick: d.nick.clone(),
            location: maker(1),
            ping: false,
            verified: false
        }
    );
    let peers = hub.peers();
    let summary: Vec<_> =
        peers.iter().map(|p| (p.nick.clone(), p.role, p.location.clone(), p.ping, p.pong_pending)).collect();
    let row = |c: &Client, role, ping| (c.nick.clone(), role, c.location.to_string(), ping, false);
    let expected = [
        row(&a, "taker", true),
        row(&b, "taker", true),
        row(&c, "taker", false),
        row(&d, "maker", false),
        row(&e, "maker", true),
        row(&f, "maker", true),
    ];
    assert_eq!(summary, expected);
    assert!(peers.iter().all(|p| p.idle < ms(1500)));

    e.send_raw(b"garbage\n").unwrap();
    assert!(matches!(events.evicted(&e.nick).1, EvictReason::Protocol(_)));
    f.send(wire::DISCONNECT, "");
    events.left(&f.nick);
    g.wait_closed();

    // One message of each kind from a.
    a.send(wire::PUBMSG, &format!("{}!PUBLIC!hello", a.nick));
    a.send(wire::PUBMSG, &format!("{}!PUBLIC!again", a.nick));
    a.send(wire::PRIVMSG, &format!("{}!{}!fill 1 2 3 abcd sig", a.nick, d.nick));
    a.send(4242, "");
    a.send(wire::PING, "");
    let (before, _) = a.barrier();
    assert!(before.iter().any(|m| m.is(wire::PONG)), "{before:?}");

    // pong_pending between the hub's PING and the PONG.
    let ping = a.wait_for("the hub's PING", |m| m.is(wire::PING));
    let status = hub.peers().into_iter().find(|p| p.nick == a.nick).unwrap();
    assert!(status.pong_pending, "{status:?}");
    a.answer_pings(true);
    a.send(wire::PONG, "");
    a.barrier();
    let status = hub.peers().into_iter().find(|p| p.nick == a.nick).unwrap();
    // Unless a later sweep pinged again already (a loaded machine).
    let pinged_again = a.seen.iter().any(|m| m.is(wire::PING) && m.at > ping.at);
    assert!(!status.pong_pending || pinged_again, "{status:?}");

    assert_eq!(events.evicted(&b.nick).1, EvictReason::PongTimeout);
    assert_eq!(events.evicted(&c.nick).1, EvictReason::IdleTimeout);
    assert_eq!(events.evicted(&d.nick).1, EvictReason::IdleTimeout);
    a.barrier();
    events.assert_only_joined(&a.nick);

    let counters = hub.counters();
    assert_eq!(
        (counters.accepted, counters.refused, counters.joins, counters.rejected, counters.left),
        (7, 0, 6, 1, 1),
        "{counters:?}"
    );
    assert!(counters.sweeps >= 5, "{counters:?}");
    assert!(counters.pings_sent >= 2 && counters.probes_sent >= 1, "{counters:?}");
    assert_eq!((counters.pongs_sent, counters.pings_unanswered), (1, 0));
    let evictions: Vec<(&str, u64)> = counters.evictions.clone();
    assert_eq!(
        evictions,
        [
            ("idle_timeout", 2),
            ("pong_timeout", 1),
            ("send_failed", 0),
            ("slow_consumer", 0),
            ("protocol", 1),
            ("handshake_timeout", 0),
            ("rate_limited", 0),
            ("spoofed", 0),
            ("displaced", 0),
            ("nick_auth_timeout", 0)
        ]
    );
    let m = &counters.messages;
    assert_eq!(
        (counter(m, "privmsg"), counter(m, "pubmsg"), counter(m, "ping"), counter(m, "getpeerlist")),
        (1, 2, 1, 3)
    );
    assert_eq!(counter(m, "other"), 1);
    assert!(counter(m, "pong") >= 1);
    let peers = hub.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!((peers[0].nick.as_str(), peers[0].role, peers[0].ping), (a.nick.as_str(), "taker", true));
    assert_eq!(peers[0].location, "NOT-SERVING-ONION");
}

/// A peer that answers every PING at once must never be evicted for a pong
/// timeout, whatever the (valid) timing. With a pong wait as long as the
/// time between its PINGs, the next sweep pings it again just before the
/// earlier sweep's pong check, which then sees the new PING's pending flag.
#[test]
fn an_answering_peer_survives_a_pong_wait_longer_than_its_ping_period() {
    let sweep = SweepConfig {
        sweep_interval: ms(200),
        idle_threshold: ms(300),
        hard_evict: Duration::from_secs(5),
        pong_wait: ms(400),
    };
    assert_eq!(sweep.validate(), Ok(()));
    let hub = start(sweep, |_| {});
    let mut events = Events::of(&hub);
    let mut answering = Client::join(&hub, maker(1), Ping::Answers);
    // Pinged every 400 ms (idle 400 > 300); each PING answered within a few ms.
    for n in 1..=5 {
        let deadline = Instant::now() + BOUND;
        while answering.count(wire::PING) < n && answering.closed.is_none() && Instant::now() < deadline {
            answering.listen(ms(20));
        }
        let about = events.about(&answering.nick);
        assert!(
            about.len() == 1,
            "evicted although it answered all {} PINGs at once: {about:?}",
            answering.count(wire::PING)
        );
    }
    assert_eq!(hub.peer_count(), 1);
}

fn joined_id(event: &HubEvent) -> u64 {
    match event {
        HubEvent::Joined { id, .. } => *id,
        other => panic!("not a join: {other:?}"),
    }
}

/// One peer flooding GETPEERLIST must not starve the others: a ping peer that
/// answers every PING at once keeps being pinged and is never evicted.
///
/// Today the I/O thread reads up to `READ_BUDGET` (256 KiB) of one peer's
/// input per turn, about 9,700 GETPEERLISTs, and answers each in that turn:
/// with 200 makers that is ~165 MB of output, seconds of work, during which
/// no other peer is read or written and the sweep's commands wait. The pong
/// wait meanwhile runs from the sweep's decision, so when the turn ends the
/// good peer's PING and its pong-timeout eviction are applied together.
#[test]
fn a_getpeerlist_flood_does_not_starve_a_well_behaved_peer() {
    let hub = start(pinging(), |c| c.limits.peerlists = 1_000_000); // the line budget alone
    let mut events = Events::of(&hub);
    let mut good = Client::join(&hub, Location::Taker, Ping::Answers);
    // 200 legacy makers, raw sockets: each answer lists them all (~17 kB).
    let makers: Vec<TcpStream> = (1..=200)
        .map(|i| {
            let mut stream = TcpStream::connect(hub.local_addr()).unwrap();
            let handshake = wire::client_handshake(&wire::random_nick(), NETWORK, &maker(i), false);
            stream.write_all(&encoded(wire::HANDSHAKE, &handshake)).unwrap();
            stream
        })
        .collect();
    let deadline = Instant::now() + BOUND;
    while hub.peer_count() < 201 && Instant::now() < deadline {
        thread::sleep(ms(10));
    }
    assert_eq!(hub.peer_count(), 201);

    // The flooder reads everything as fast as loopback allows, so it is no
    // slow consumer; it asks for the peerlist over and over.
    let mut flood = TcpStream::connect(hub.local_addr()).unwrap();
    flood.set_write_timeout(Some(ms(500))).unwrap();
    let handshake = wire::client_handshake(&wire::random_nick(), NETWORK, &Location::Taker, false);
    flood.write_all(&encoded(wire::HANDSHAKE, &handshake)).unwrap();
    let mut sink = flood.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut buf = vec![0; 1 << 20];
        while let Ok(1..) = std::io::Read::read(&mut sink, &mut buf) {}
    });
    let batch = encoded(wire::GETPEERLIST, "").repeat(1000);
    let flooding = Instant::now();
    while flooding.elapsed() < ms(2000) {
        let _ = flood.write_all(&batch); // times out while the hub is busy
        good.listen(ms(1));
    }
    let pings_during = good.count(wire::PING);
    let _ = flood.shutdown(Shutdown::Both);
    reader.join().unwrap();
    good.listen(ms(1000));
    drop(makers);

    let pings: Vec<Duration> =
        good.seen.iter().filter(|m| m.is(wire::PING)).map(|m| m.at.duration_since(flooding)).collect();
    let closed = good.closed.as_ref().map(|(how, at)| (how.clone(), at.duration_since(flooding)));
    let about = events.about(&good.nick);
    assert!(
        pings_during >= 2 && about.len() == 1,
        "during 2 s of flood the good peer got {pings_during} PINGs (every 600 ms expected); \
         PINGs at {pings:?} after the flood began, closed {closed:?}, events {about:?}"
    );
}

/// Durations at their maximum are "never", not an overflow that panics a
/// thread: the hub keeps routing, answering and closing.
#[test]
fn huge_durations_never_panic_a_thread() {
    let hub = start(quiet(), |c| {
        c.write_deadline = Duration::MAX;
        c.notice_interval = Duration::MAX;
        c.handshake_timeout = Duration::MAX;
        c.stall_threshold = Duration::MAX;
        c.limits.window = Duration::MAX;
    });
    let mut a = Client::join(&hub, maker(1), Ping::Answers);
    let b = Client::join(&hub, maker(2), Ping::Answers);
    let c = Client::join(&hub, maker(3), Ping::Answers);
    let _idle = Client::connect(&hub);
    b.send(wire::PUBMSG, &format!("{}!PUBLIC!hello", b.nick));
    a.wait_for("the relayed PUBMSG", |m| m.is(wire::PUBMSG));
    b.send(wire::PING, "");
    b.send(wire::DISCONNECT, "");
    let (_, answer) = a.barrier();
    assert!(answer.line.contains(&a.nick), "{answer:?}");
    a.wait_for("the ;D of the maker that left", |m| m.is(wire::PEERLIST) && m.line.ends_with(";D"));
    // A second departure waits for the next notice, "never" from now.
    c.send(wire::DISCONNECT, "");
    let (before, _) = a.barrier();
    assert!(before.is_empty(), "{before:?}");
    assert!(hub.is_running());
}
