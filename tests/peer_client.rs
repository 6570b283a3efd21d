//! `PeerClient` against a real `Hub` and against a scripted fake directory,
//! and `heartbeat peer` as a user meets it. Loopback only; every wait is
//! bounded, every child process is killed on drop.

use std::fmt::Debug;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use heartbeat::peer::wire::{self, Handshake, Location};
use heartbeat::peer::{
    ClientEvent, EvictReason, Hub, HubConfig, HubEvent, PeerClient, PeerClientConfig, SweepConfig,
};

/// The longest any single wait in these tests may take.
const BOUND: Duration = Duration::from_secs(10);
/// What `stop` must beat.
const PROMPT: Duration = Duration::from_secs(2);

fn onion() -> String {
    format!("{}.onion:5222", "a".repeat(56))
}

/// A hub on a fast heartbeat: sweep 200 ms, probe after 300 ms idle, hard
/// evict after 1.5 s, 200 ms for PONGs.
fn hub() -> Hub {
    Hub::start(HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        network: "regtest".into(),
        sweep: SweepConfig {
            sweep_interval: Duration::from_millis(200),
            idle_threshold: Duration::from_millis(300),
            hard_evict: Duration::from_millis(1500),
            pong_wait: Duration::from_millis(200),
        },
        ..HubConfig::default()
    })
    .unwrap()
}

fn config(addr: SocketAddr) -> PeerClientConfig {
    PeerClientConfig {
        addr,
        network: "regtest".into(),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        ..PeerClientConfig::default()
    }
}

/// Reads events until `f` picks one, failing the test after `bound`.
fn wait_for<E: Debug, T>(
    rx: &Receiver<E>,
    bound: Duration,
    what: &str,
    mut f: impl FnMut(&E) -> Option<T>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) => {
                if let Some(found) = f(&event) {
                    return found;
                }
            }
            Err(e) => panic!("no {what} within {bound:?}: {e}"),
        }
    }
}

/// Every event that arrives within `window`.
fn collect<E>(rx: &Receiver<E>, window: Duration) -> Vec<E> {
    let deadline = Instant::now() + window;
    let mut events = Vec::new();
    while let Ok(event) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        events.push(event);
    }
    events
}

fn connected(client: &PeerClient) -> String {
    wait_for(client.events(), BOUND, "Connected", |e| match e {
        ClientEvent::Connected { nick, .. } => Some(nick.clone()),
        ClientEvent::Ping | ClientEvent::Peerlist(_) | ClientEvent::Message { .. } => None,
        other => panic!("expected Connected, got {other:?}"),
    })
}

fn joined(events: &Receiver<HubEvent>, nick: &str) -> (Location, bool) {
    wait_for(events, BOUND, "Joined", |e| match e {
        HubEvent::Joined { nick: n, location, ping, .. } if n == nick => Some((location.clone(), *ping)),
        _ => None,
    })
}

/// Stops the client, asserting it was prompt.
fn stop_promptly(client: &PeerClient) {
    let started = Instant::now();
    client.stop();
    let took = started.elapsed();
    assert!(took < PROMPT, "stop took {took:?}");
}

#[test]
fn a_ping_client_answers_every_ping_and_is_never_evicted() {
    let hub = hub();
    let hub_events = hub.subscribe();
    let client = PeerClient::start(config(hub.local_addr())).unwrap();
    assert_eq!(connected(&client), hub.nick());
    assert_eq!(joined(&hub_events, client.nick()), (Location::Taker, true));
    assert!(client.is_connected());

    // Idle for 300 ms means a PING each sweep or two; the 1.5 s hard
    // eviction would take a peer that did not answer.
    let events = collect(client.events(), Duration::from_millis(2500));
    let pings = events.iter().filter(|e| **e == ClientEvent::Ping).count();
    assert!(pings >= 3, "{events:?}");
    assert!(events.iter().all(|e| matches!(e, ClientEvent::Ping | ClientEvent::Peerlist(_))), "{events:?}");
    let hub_seen: Vec<HubEvent> = hub_events.try_iter().collect();
    assert!(hub_seen.is_empty(), "{hub_seen:?}");
    assert_eq!(hub.peer_count(), 1);
    assert!(hub.counters().pings_sent >= 3);
    assert!(client.is_connected());
}

#[test]
fn a_legacy_client_is_never_pinged_is_hard_evicted_and_reconnects() {
    let hub = hub();
    let hub_events = hub.subscribe();
    let client = PeerClient::start(PeerClientConfig { ping: false, ..config(hub.local_addr()) }).unwrap();
    assert_eq!(connected(&client), hub.nick());
    let up = Instant::now();
    assert_eq!(joined(&hub_events, client.nick()), (Location::Taker, false));

    let reason = wait_for(client.events(), BOUND, "Disconnected", |e| match e {
        ClientEvent::Disconnected { reason } => Some(reason.clone()),
        other => panic!("a legacy taker hears nothing (no PING, no PONG), got {other:?}"),
    });
    let lasted = up.elapsed();
    assert_eq!(reason, "closed by the directory");
    assert!(lasted >= Duration::from_millis(1400), "evicted after {lasted:?}");
    wait_for(&hub_events, BOUND, "Evicted", |e| match e {
        HubEvent::Evicted { nick, reason, .. } if nick == client.nick() => {
            assert_eq!(*reason, EvictReason::IdleTimeout);
            Some(())
        }
        _ => None,
    });

    // That session lasted past reconnect_max (1 s): back in 100 ms.
    let down = Instant::now();
    assert_eq!(connected(&client), hub.nick());
    assert!(down.elapsed() < Duration::from_secs(2), "reconnected after {:?}", down.elapsed());
    assert_eq!(joined(&hub_events, client.nick()), (Location::Taker, false));
}

#[test]
fn the_wrong_network_is_refused_and_retried() {
    let hub = hub();
    let hub_events = hub.subscribe();
    let client =
        PeerClient::start(PeerClientConfig { network: "mainnet".into(), ..config(hub.local_addr()) })
            .unwrap();
    for _ in 0..2 {
        let event = client.events().recv_timeout(BOUND).unwrap();
        let ClientEvent::Refused { reason } = event else { panic!("{event:?}") };
        assert_eq!(reason, format!("directory {} refused the handshake", hub.nick()));
    }
    assert!(!client.is_connected());
    wait_for(&hub_events, BOUND, "Rejected", |e| match e {
        HubEvent::Rejected { reason, .. } => {
            assert!(reason.contains("network is \"mainnet\""), "{reason}");
            Some(())
        }
        other => panic!("{other:?}"),
    });
    assert_eq!(hub.peer_count(), 0);
}

#[test]
fn a_peerlist_request_returns_the_makers() {
    let hub = hub();
    let hub_events = hub.subscribe();
    let maker = PeerClient::start(PeerClientConfig {
        location: Location::parse(&onion()).unwrap(),
        ..config(hub.local_addr())
    })
    .unwrap();
    let taker = PeerClient::start(config(hub.local_addr())).unwrap();
    connected(&maker);
    connected(&taker);
    assert!(joined(&hub_events, maker.nick()).0.is_maker());

    taker.request_peerlist().unwrap();
    let entries = wait_for(taker.events(), BOUND, "Peerlist", |e| match e {
        ClientEvent::Peerlist(entries) if !entries.is_empty() => Some(entries.clone()),
        _ => None,
    });
    // Directories list makers only: takers cannot be reached anyway.
    assert_eq!(entries, vec![(maker.nick().to_owned(), onion(), false)]);

    // The directory tells the others who left, marked D.
    maker.stop();
    let entries = wait_for(taker.events(), BOUND, "Peerlist", |e| match e {
        ClientEvent::Peerlist(entries) => Some(entries.clone()),
        _ => None,
    });
    assert_eq!(entries, vec![(maker.nick().to_owned(), onion(), true)]);
}

#[test]
fn sending_needs_a_session() {
    let client = PeerClient::start(PeerClientConfig {
        reconnect_min: Duration::from_secs(60),
        reconnect_max: Duration::from_secs(60),
        ..config(closed_port())
    })
    .unwrap();
    let err = client.request_peerlist().unwrap_err();
    assert!(err.to_string().contains("not connected"), "{err}");
    let event = client.events().recv_timeout(BOUND).unwrap();
    let ClientEvent::Error(why) = event else { panic!("{event:?}") };
    assert!(why.starts_with(&format!("cannot connect to {}: ", client.addr())), "{why}");
}

#[test]
fn stop_is_prompt_while_connected() {
    let hub = hub();
    let hub_events = hub.subscribe();
    let client = PeerClient::start(config(hub.local_addr())).unwrap();
    connected(&client);
    joined(&hub_events, client.nick());
    stop_promptly(&client);
    assert!(!client.is_connected());
    let rest: Vec<ClientEvent> = client.events().try_iter().collect();
    assert_eq!(rest.last(), Some(&ClientEvent::Disconnected { reason: "client stopped".into() }), "{rest:?}");
    wait_for(&hub_events, BOUND, "Left", |e| match e {
        HubEvent::Left { nick, .. } if nick == client.nick() => Some(()),
        _ => None,
    });
    stop_promptly(&client); // idempotent
}

#[test]
fn stop_is_prompt_while_backing_off() {
    let client = PeerClient::start(PeerClientConfig {
        reconnect_min: Duration::from_secs(60),
        reconnect_max: Duration::from_secs(60),
        ..config(closed_port())
    })
    .unwrap();
    let event = client.events().recv_timeout(BOUND).unwrap();
    assert!(matches!(event, ClientEvent::Error(_)), "{event:?}");
    stop_promptly(&client);
    assert_eq!(client.events().try_iter().count(), 0);
}

#[test]
fn stop_is_prompt_while_waiting_for_the_handshake_reply() {
    let fake = Fake::new();
    let client = PeerClient::start(PeerClientConfig {
        connect_timeout: Duration::from_secs(60),
        ..config(fake.addr())
    })
    .unwrap();
    let (_conn, handshake) = fake.accept();
    assert_eq!(handshake.nick, client.nick());
    stop_promptly(&client);
    assert_eq!(client.events().try_iter().count(), 0);
}

#[test]
fn dropping_a_client_stops_it() {
    let hub = hub();
    let hub_events = hub.subscribe();
    let client = PeerClient::start(config(hub.local_addr())).unwrap();
    connected(&client);
    let nick = client.nick().to_owned();
    let started = Instant::now();
    drop(client);
    assert!(started.elapsed() < PROMPT);
    wait_for(&hub_events, BOUND, "Left", |e| match e {
        HubEvent::Left { nick: n, .. } if *n == nick => Some(()),
        _ => None,
    });
}

// ---------------------------------------------------------------------------
// A scripted directory: exact bytes on the wire.

/// A port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

struct Fake(TcpListener);

/// One connection to the fake directory: its reading and writing ends.
struct FakeConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Fake {
    fn new() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Fake(listener)
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    /// Accepts the next connection and reads its handshake.
    fn accept(&self) -> (FakeConn, Handshake) {
        let deadline = Instant::now() + BOUND;
        let stream = loop {
            match self.0.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection within {BOUND:?}");
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        let mut conn = FakeConn { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) };
        let line = conn.read_line();
        assert!(line.ends_with("\r\n"), "{line:?}");
        let envelope = wire::parse_envelope(line.trim_end().as_bytes()).unwrap();
        assert_eq!(envelope.kind, wire::HANDSHAKE);
        let handshake = wire::parse_handshake(&envelope.line, "regtest").unwrap();
        (conn, handshake)
    }
}

impl FakeConn {
    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn envelope(&mut self, kind: u32, line: &str) {
        let mut out = Vec::new();
        wire::encode(kind, line, &mut out);
        self.send(&out);
    }

    fn accept_handshake(&mut self, motd: Option<&str>) {
        self.envelope(wire::DN_HANDSHAKE, &wire::dn_handshake("J5FakeDirOOOOOOO", "regtest", motd, true));
    }

    /// Asserts the client sends nothing within `window`.
    fn silent_for(&mut self, window: Duration) {
        self.reader.get_ref().set_read_timeout(Some(window)).unwrap();
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("expected silence, got {other:?} {byte:?}"),
        }
        self.reader.get_ref().set_read_timeout(Some(BOUND)).unwrap();
    }
}

#[test]
fn pings_are_answered_with_the_exact_pong_bytes() {
    let fake = Fake::new();
    let client = PeerClient::start(config(fake.addr())).unwrap();
    let (mut conn, handshake) = fake.accept();
    assert!(handshake.ping);
    conn.accept_handshake(Some("hello\nworld"));
    let event = client.events().recv_timeout(BOUND).unwrap();
    assert_eq!(
        event,
        ClientEvent::Connected {
            nick: "J5FakeDirOOOOOOO".into(),
            motd: Some("hello\nworld".into()),
            ping: true,
            verified: false
        }
    );
    for ping in [&b"{\"type\": 798, \"line\": \"\"}\r\n"[..], b"{\"type\":798,\"line\":\"\"}\n"] {
        conn.send(ping);
        assert_eq!(conn.read_line(), "{\"type\": 799, \"line\": \"\"}\r\n");
        assert_eq!(client.events().recv_timeout(BOUND).unwrap(), ClientEvent::Ping);
    }
}

#[test]
fn a_legacy_client_ignores_pings_and_never_sends_a_pong() {
    let fake = Fake::new();
    let client = PeerClient::start(PeerClientConfig { ping: false, ..config(fake.addr()) }).unwrap();
    let (mut conn, handshake) = fake.accept();
    assert!(!handshake.ping, "a legacy client advertises no ping");
    conn.accept_handshake(None);
    assert!(matches!(
        client.events().recv_timeout(BOUND).unwrap(),
        ClientEvent::Connected { motd: None, .. }
    ));
    conn.envelope(wire::PING, "");
    // The client writes any PONG before it reports the PING.
    assert_eq!(client.events().recv_timeout(BOUND).unwrap(), ClientEvent::Ping);
    conn.silent_for(Duration::from_millis(300));
    assert!(client.is_connected());
}

#[test]
fn messages_are_reported_and_framing_is_lenient() {
    let fake = Fake::new();
    let client = PeerClient::start(config(fake.addr())).unwrap();
    let (mut conn, _) = fake.accept();
    // A bare \n ends lines too, and compact spacing parses.
    let reply = wire::dn_handshake("J5FakeDirOOOOOOO", "regtest", None, true);
    conn.send(format!("{{\"type\":795,\"line\":{}}}\n", serde_json::to_string(&reply).unwrap()).as_bytes());
    connected(&client);
    conn.envelope(wire::PUBMSG, "J5FakeDirOOOOOOO!PUBLIC!orderbook");
    conn.envelope(wire::PRIVMSG, "J5a!J5b!fill 1 2 3 pubkey sig");
    conn.envelope(wire::PEERLIST, &format!("J5a;{},J5b;NOT-SERVING-ONION;D", onion()));
    conn.envelope(wire::PONG, "");
    conn.envelope(4242, "\u{1b}[2J");
    let events: Vec<ClientEvent> = (0..5).map(|_| client.events().recv_timeout(BOUND).unwrap()).collect();
    assert_eq!(
        events,
        vec![
            ClientEvent::Message { kind: 687, line: "J5FakeDirOOOOOOO!PUBLIC!orderbook".into() },
            ClientEvent::Message { kind: 685, line: "J5a!J5b!fill 1 2 3 pubkey sig".into() },
            ClientEvent::Peerlist(vec![
                ("J5a".into(), onion(), false),
                ("J5b".into(), "NOT-SERVING-ONION".into(), true),
            ]),
            ClientEvent::Message { kind: 799, line: String::new() },
            ClientEvent::Message { kind: 4242, line: "\u{1b}[2J".into() },
        ]
    );
}

/// Connects a client to the fake, handshakes, sends `bytes`, and returns
/// the `Disconnected` reason.
fn disconnect_reason(bytes: &[u8]) -> String {
    let fake = Fake::new();
    let client = PeerClient::start(config(fake.addr())).unwrap();
    let (mut conn, _) = fake.accept();
    conn.accept_handshake(None);
    connected(&client);
    conn.send(bytes);
    let event = client.events().recv_timeout(BOUND).unwrap();
    let ClientEvent::Disconnected { reason } = event else { panic!("{event:?}") };
    // The client hung up: the fake reads the end of the stream.
    assert_eq!(conn.read_line(), "");
    reason
}

#[test]
fn a_broken_directory_ends_the_session() {
    let too_long = disconnect_reason(&vec![b'x'; wire::MAX_LINE + 1]);
    assert_eq!(too_long, "a line longer than 40000 bytes");
    let malformed = disconnect_reason(b"{\"type\": \"798\", \"line\": \"\"}\r\n");
    assert!(malformed.starts_with("malformed message from the directory: "), "{malformed}");
    assert!(disconnect_reason(b"\r\n").starts_with("malformed message"));
    let not_json = disconnect_reason(b"PING\n");
    assert!(not_json.contains("not a JSON object"), "{not_json}");
}

#[test]
fn failed_handshakes_are_errors_or_refusals_and_are_retried() {
    let fake = Fake::new();
    let client = PeerClient::start(config(fake.addr())).unwrap();
    let next = || client.events().recv_timeout(BOUND).unwrap();

    let (mut conn, _) = fake.accept();
    conn.envelope(wire::PEERLIST, "");
    assert_eq!(
        next(),
        ClientEvent::Error(format!(
            "handshake with {} failed: expected a handshake reply (795), got type 789",
            fake.addr()
        ))
    );
    let (mut conn, _) = fake.accept();
    conn.envelope(wire::DN_HANDSHAKE, "{\"accepted\": true}");
    let ClientEvent::Error(why) = next() else { panic!() };
    assert!(why.contains("malformed reply: missing \"app-name\""), "{why}");

    let (conn, _) = fake.accept();
    drop(conn);
    let ClientEvent::Error(why) = next() else { panic!() };
    assert!(why.ends_with("failed: closed by the directory"), "{why}");

    let (mut conn, _) = fake.accept();
    conn.envelope(
        wire::DN_HANDSHAKE,
        &wire::dn_handshake("J5FakeDirOOOOOOO", "regtest", Some("full"), false),
    );
    assert_eq!(
        next(),
        ClientEvent::Refused {
            reason: "directory J5FakeDirOOOOOOO refused the handshake (motd: full)".into()
        }
    );
    let (mut conn, _) = fake.accept();
    conn.envelope(wire::DN_HANDSHAKE, &wire::dn_handshake("J5FakeDirOOOOOOO", "signet", None, true));
    assert_eq!(
        next(),
        ClientEvent::Refused { reason: "directory J5FakeDirOOOOOOO serves signet, not regtest".into() }
    );
    // A silent directory: the reply must come within connect_timeout.
    drop(client);
    let client = PeerClient::start(PeerClientConfig {
        connect_timeout: Duration::from_millis(200),
        ..config(fake.addr())
    })
    .unwrap();
    let (_conn, _) = fake.accept();
    let event = client.events().recv_timeout(BOUND).unwrap();
    let ClientEvent::Error(why) = event else { panic!("{event:?}") };
    assert!(why.ends_with("failed: no reply within 200ms"), "{why}");
}

// ---------------------------------------------------------------------------
// The binary.

/// A child process that is killed if the test ends before it does.
struct Running(Child);

impl Running {
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit within {BOUND:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn heartbeat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartbeat"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

#[test]
fn the_binary_prints_events_and_exits_0_on_sigterm() {
    let hub = hub();
    let hub_events = hub.subscribe();
    let nick = wire::random_nick();
    let addr = hub.local_addr().to_string();
    let mut child = Running(
        heartbeat()
            .args(["peer", &addr, "--network", "regtest", "--nick", &nick, "--no-ping", "--maker", &onion()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = crossbeam_channel::unbounded();
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let reader = thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let first = lines.recv_timeout(BOUND).unwrap();
    assert_eq!(
        first,
        format!("connected {} ping=yes verified=no motd={}", hub.nick(), heartbeat::peer::DEFAULT_MOTD)
    );
    let (location, ping) = joined(&hub_events, &nick);
    assert_eq!((location.to_string(), ping), (onion(), false));

    heartbeat::process::send_signal(child.0.id(), libc::SIGTERM).unwrap();
    let status = child.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
    reader.join().unwrap();
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(rest.last().map(String::as_str), Some("disconnected client stopped"), "{rest:?}");
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    // The start line at the default log level, and nothing else.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].ends_with(&format!("peer {nick} connecting to {}", hub.local_addr())), "{stderr}");
}

#[test]
fn the_binary_proves_its_nick_with_a_key_file_it_creates_0600_and_never_prints() {
    let hub = Hub::start(HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        network: "regtest".into(),
        nick_auth_id: Some("hub.example:5222".into()),
        nick_auth: heartbeat::peer::NickAuthMode::Require,
        ..HubConfig::default()
    })
    .unwrap();
    let hub_events = hub.subscribe();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("peer.key");
    let addr = hub.local_addr().to_string();
    let key = key_file.to_str().unwrap();
    let args =
        ["peer", &addr, "--network", "regtest", "--key-file", key, "--nick-auth-id", "hub.example:5222"];
    let mut child = Running(
        heartbeat()
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with(&format!("connected {} ping=yes verified=yes", hub.nick())), "{first}");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let secret = std::fs::read_to_string(&key_file).unwrap().trim().to_owned();
    let identity = heartbeat::peer::Identity::from_hex(&secret).unwrap();
    let nick = identity.nick().to_owned();
    let deadline = Instant::now() + BOUND;
    loop {
        match hub_events.recv_deadline(deadline).expect("the verified join") {
            HubEvent::Joined { nick: n, verified, .. } if n == nick => {
                assert!(verified);
                break;
            }
            _ => {}
        }
    }
    heartbeat::process::send_signal(child.0.id(), libc::SIGTERM).unwrap();
    assert_eq!(child.wait().code(), Some(0));
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains(&nick), "debug logs name the nick: {stderr}");
    for text in [&first, &rest, &stderr] {
        assert!(!text.contains(&secret), "the secret key was printed");
    }
    // The same file again: the same nick.
    let again = heartbeat::peer::Identity::load_or_create(&key_file).unwrap();
    assert_eq!(again.nick(), nick);
}

#[test]
fn a_bad_maker_location_is_a_usage_error() {
    for bad in ["NOT-SERVING-ONION", "example.onion:5222", &onion().replace(":5222", ":0")] {
        let out = heartbeat().args(["peer", "127.0.0.1:5222", "--maker", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--maker") && stderr.contains("not a maker location"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let out = heartbeat().args(["peer", "127.0.0.1", "--nick", "J5DirNickOOOOOOO"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = heartbeat().args(["peer", "127.0.0.1:5222", "--nick", "bob"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Requiring nick authentication without a key, and a nick with a key.
    let out = heartbeat().args(["peer", "127.0.0.1:5222", "--nick-auth", "require"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("requiring nick authentication needs"));
    let args = ["peer", "127.0.0.1:5222", "--nick", "J5DirNickOOOOOOO", "--key-file", "/nonexistent/k"];
    assert_eq!(heartbeat().args(args).output().unwrap().status.code(), Some(2));
    // A key file that cannot be created: 1, naming the file.
    let out =
        heartbeat().args(["peer", "127.0.0.1:5222", "--key-file", "/nonexistent/dir/k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir/k"));
}
