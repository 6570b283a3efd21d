//! A monitor's sessions and a hub's peers published to a real etcd (started
//! by the test on 127.0.0.1 with free ports): one lease per process, one key
//! per member written on change only, republished after a lost lease; and
//! `heartbeat monitor --etcd` through the real binary.

#[path = "support/child.rs"]
mod child;
#[path = "support/etcd.rs"]
mod etcd_support;

use std::io::ErrorKind;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use child::{Spawned, heartbeat, read_lines};
use etcd_support::{Etcd, eventually};
use heartbeat::etcd::{Client, HubPublisher, MemberRecord, MonitorPublisher, Presence, PresenceState};
use heartbeat::peer::{Hub, PeerClient, PeerClientConfig};
use heartbeat::{ManualClock, Monitor};

const BOUND: Duration = Duration::from_secs(15);
const PREFIX: &str = "hb/";

fn count(c: &Client, prefix: &str) -> usize {
    c.range_prefix(prefix).unwrap().kvs.len()
}

fn record(c: &Client, key: &str) -> Option<MemberRecord> {
    c.get(key).unwrap().map(|kv| serde_json::from_slice(&kv.value).unwrap())
}

fn state_of(c: &Client, key: &str) -> Option<String> {
    record(c, key).map(|r| r.state)
}

#[test]
fn ten_thousand_sessions_go_under_one_lease_and_writes_follow_churn_not_beats() {
    const N: usize = 10_000;
    const PER_ROUND: usize = 100;
    const ROUNDS: usize = 4;
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let monitor = Monitor::builder().timeout(Duration::from_secs(600)).build().unwrap();
    for i in 0..N {
        monitor.register(&format!("s{i}"), "worker");
    }
    let ttl = Duration::from_secs(3);
    let presence = Presence::start(etcd.client(), ttl).unwrap();
    let publisher = MonitorPublisher::start(&monitor, &presence, PREFIX, Default::default()).unwrap();
    // Read back from etcd: `Presence::wait_published` can answer while the
    // last transaction is still on its way.
    eventually("10,000 sessions in etcd", BOUND, || count(&c, PREFIX) == N + 1);
    let range = c.range_prefix(PREFIX).unwrap();
    assert_eq!(range.kvs.len(), N + 1, "every session and the process key");
    let lease = presence.status().lease.unwrap();
    assert!(range.kvs.iter().all(|kv| kv.lease == lease));
    assert_eq!(c.lease_count().unwrap(), 1, "one lease for 10,001 keys");
    let r = record(&c, &publisher.publisher().session_key(PREFIX, "s7")).unwrap();
    assert_eq!(
        (r.kind.as_str(), r.state.as_str(), r.owner),
        ("session", "alive", publisher.publisher().id())
    );
    assert_eq!(r.detail["agent_type"], "worker");

    // Churn: each round, 100 sessions go and 100 new ones come, while every
    // other session beats. Only the churn and the process key are written.
    let before = presence.status().writes;
    let churn = (2 * PER_ROUND * ROUNDS) as u64;
    let started = Instant::now();
    let mut beats = 0;
    for round in 0..ROUNDS {
        for k in 0..PER_ROUND {
            assert!(monitor.unregister(&format!("s{}", round * PER_ROUND + k)));
            monitor.register(&format!("new{round}-{k}"), "worker");
        }
        for _ in 0..2 {
            for i in (round + 1) * PER_ROUND..N {
                assert!(monitor.beat(&format!("s{i}")));
                beats += 1;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eventually("the churn published", BOUND, || {
        let s = presence.status();
        s.pending == 0 && s.writes - before >= churn && count(&c, &format!("{PREFIX}sessions/")) == N
    });
    let elapsed = started.elapsed();
    let writes = presence.status().writes - before;
    // The process key is rewritten every TTL/3 (1 s): at most one per
    // second elapsed, plus one at each end.
    let refreshes = elapsed.as_secs() + 2;
    eprintln!("churn: {writes} writes for {churn} churned keys and {beats} beats over {elapsed:?}");
    assert!(
        writes >= churn && writes <= churn + refreshes,
        "{writes} writes for {churn} churned keys over {elapsed:?} ({beats} beats)"
    );
    assert!(beats > 10 * writes as usize, "the beats ({beats}) must dwarf the writes ({writes})");
    assert_eq!(count(&c, PREFIX), N + 1);
    assert!(record(&c, &publisher.publisher().session_key(PREFIX, "s0")).is_none());
    assert!(record(&c, &publisher.publisher().session_key(PREFIX, "new3-99")).is_some());
    assert_eq!(c.lease_count().unwrap(), 1);

    // A clean stop revokes: every key goes at once.
    presence.stop();
    assert_eq!(count(&c, PREFIX), 0);
    publisher.stop();
}

#[test]
fn a_warned_failed_or_recovered_session_changes_its_state_and_a_dead_one_goes() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let clock = ManualClock::new();
    let monitor = Monitor::builder()
        .timeout(Duration::from_secs(10))
        .check_interval(Duration::from_secs(1))
        .max_missed_beats(3)
        .clock(clock.clone())
        .build()
        .unwrap();
    let presence = Presence::start(etcd.client(), Duration::from_secs(3)).unwrap();
    let publisher = MonitorPublisher::start(&monitor, &presence, PREFIX, Default::default()).unwrap();
    monitor.register("steady", "job");
    monitor.register("flaky", "job");
    let key = |id: &str| publisher.publisher().session_key(PREFIX, id);
    // Registrations are learned from the count (no event), within a second or so.
    eventually("both alive", BOUND, || {
        state_of(&c, &key("steady")).as_deref() == Some("alive") && state_of(&c, &key("flaky")).is_some()
    });
    let since = record(&c, &key("flaky")).unwrap().since;

    // The sweeps run by hand, on the manual clock.
    let silence = |secs| {
        clock.advance(Duration::from_secs(secs));
        monitor.beat("steady");
        monitor.sweep();
    };
    silence(11);
    eventually("flaky warned", BOUND, || state_of(&c, &key("flaky")).as_deref() == Some("warning"));
    assert_ne!(record(&c, &key("flaky")).unwrap().since, since, "a new state, a new since");
    // The warning's write counted first: etcd has it before the presence
    // counts it, and pending reaches 0 only after the count.
    eventually("the warning counted", BOUND, || presence.status().pending == 0);
    let writes = presence.status().writes;
    monitor.beat("flaky");
    eventually("flaky recovered", BOUND, || state_of(&c, &key("flaky")).as_deref() == Some("alive"));
    monitor.fail("flaky");
    eventually("flaky failed", BOUND, || state_of(&c, &key("flaky")).as_deref() == Some("failed"));
    monitor.beat("flaky");
    eventually("flaky alive again", BOUND, || state_of(&c, &key("flaky")).as_deref() == Some("alive"));
    // Three state changes, three writes (the process key may add one).
    eventually("the writes counted", BOUND, || presence.status().writes - writes >= 3);
    let delta = presence.status().writes - writes;
    assert!((3..=4).contains(&delta), "{delta} writes");
    assert_eq!(state_of(&c, &key("steady")).as_deref(), Some("alive"));

    // Silent for three timeouts: timed out, and its key goes.
    for _ in 0..4 {
        silence(11);
    }
    assert!(monitor.status("flaky").is_none(), "timed out");
    eventually("flaky's key gone", BOUND, || record(&c, &key("flaky")).is_none());
    assert_eq!(state_of(&c, &key("steady")).as_deref(), Some("alive"));
    assert_eq!(count(&c, &format!("{PREFIX}sessions/")), 1);
    presence.stop();
}

#[test]
fn a_hub_publishes_one_key_per_peer_and_a_leaving_peer_goes() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let hub = Arc::new(Hub::builder().listen(([127, 0, 0, 1], 0)).network("regtest").start().unwrap());
    let presence = Presence::start(etcd.client(), Duration::from_secs(3)).unwrap();
    let publisher = HubPublisher::start(hub.clone(), &presence, PREFIX, Default::default()).unwrap();
    let peers: Vec<PeerClient> = (0..3)
        .map(|_| {
            PeerClient::start(PeerClientConfig {
                addr: hub.local_addr(),
                network: "regtest".into(),
                ..PeerClientConfig::default()
            })
            .unwrap()
        })
        .collect();
    let peer_prefix = format!("{PREFIX}peers/{}/", publisher.publisher().id());
    eventually("three peers published", BOUND, || count(&c, &peer_prefix) == 3);
    for peer in &peers {
        let r = record(&c, &publisher.publisher().peer_key(PREFIX, peer.nick())).unwrap();
        assert_eq!((r.kind.as_str(), r.id.as_str(), r.state.as_str()), ("peer", peer.nick(), "alive"));
        assert_eq!(r.detail["role"], "taker");
    }
    let process = c.get(&publisher.process_key()).unwrap().expect("the process key");
    let heartbeat: serde_json::Value = serde_json::from_slice(&process.value).unwrap();
    assert_eq!(heartbeat["metadata"]["role"], "hub");
    assert_eq!(heartbeat["pid"], std::process::id());

    peers[1].stop();
    eventually("the leaving peer's key gone", BOUND, || count(&c, &peer_prefix) == 2);
    assert!(record(&c, &publisher.publisher().peer_key(PREFIX, peers[1].nick())).is_none());
    assert!(record(&c, &publisher.publisher().peer_key(PREFIX, peers[0].nick())).is_some());
    assert_eq!(c.lease_count().unwrap(), 1);

    // The publisher's own stop withdraws its keys (the presence lives on).
    publisher.stop();
    eventually("its keys deleted", BOUND, || count(&c, PREFIX) == 0);
    assert_eq!(c.lease_count().unwrap(), 1);
    presence.stop();
    hub.stop();
}

#[test]
fn a_revoked_lease_is_granted_again_and_everything_republished_once() {
    const N: usize = 500;
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let monitor = Monitor::builder().timeout(Duration::from_secs(600)).build().unwrap();
    for i in 0..N {
        monitor.register(&format!("s{i}"), "worker");
    }
    let presence = Presence::start(etcd.client(), Duration::from_secs(3)).unwrap();
    let _publisher = MonitorPublisher::start(&monitor, &presence, PREFIX, Default::default()).unwrap();
    eventually("published", BOUND, || count(&c, PREFIX) == N + 1);
    let old = presence.status().lease.unwrap();
    c.revoke(old).unwrap();
    assert_eq!(count(&c, PREFIX), 0);
    eventually("republished", BOUND, || {
        let s = presence.status();
        s.grants == 2 && s.state == PresenceState::Up && s.pending == 0 && count(&c, PREFIX) == N + 1
    });
    let status = presence.status();
    assert_ne!(status.lease, Some(old));
    assert_eq!(status.keys, N + 1, "nothing counted twice");
    assert_eq!(c.lease_count().unwrap(), 1);
    assert!(c.range_prefix(PREFIX).unwrap().kvs.iter().all(|kv| Some(kv.lease) == status.lease));
    presence.stop();
}

/// A GET on the monitor's HTTP API: status and body.
fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn etcd_state(agent: &ureq::Agent, base: &str) -> String {
    let (code, body) = get(agent, &format!("{base}/status"));
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["etcd"]["state"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn the_monitor_binary_publishes_survives_etcd_going_away_and_revokes_on_stop() {
    let Some(mut etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let mut child = Spawned(
        heartbeat()
            .args(["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--etcd-ttl", "2"])
            .args(["--etcd", &etcd.url(), "--etcd-prefix", PREFIX])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = read_lines(child.stdout.take().unwrap());
    let addr = loop {
        let line = lines.recv_timeout(BOUND).expect("the monitor's start line");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    assert_eq!(lines.recv_timeout(BOUND).unwrap(), format!("etcd at {}", etcd.url()));
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(BOUND)).build().into();
    let (code, _) = get(&agent, &format!("{addr}/ping/job-1"));
    assert_eq!(code, 201);

    let sessions = format!("{PREFIX}sessions/");
    let hosts = format!("{PREFIX}hosts/");
    eventually("the session in etcd", BOUND, || count(&c, &sessions) == 1 && count(&c, &hosts) == 1);
    let kv = &c.range_prefix(&sessions).unwrap().kvs[0];
    assert!(kv.key_str().ends_with("/job-1"), "{}", kv.key_str());
    let process = &c.range_prefix(&hosts).unwrap().kvs[0];
    let heartbeat: serde_json::Value = serde_json::from_slice(&process.value).unwrap();
    assert_eq!(heartbeat["metadata"]["role"], "monitor");
    assert_eq!(heartbeat["pid"], child.id());
    assert_eq!(etcd_state(&agent, &addr), "up");
    let (_, metrics) = get(&agent, &format!("{addr}/metrics"));
    assert!(metrics.lines().any(|l| l == "heartbeat_etcd_up 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "heartbeat_etcd_keys 2"), "{metrics}");
    assert_eq!(c.lease_count().unwrap(), 1);

    // etcd gone: the monitor keeps answering and beating, and says so.
    etcd.stop();
    eventually("/status says down", BOUND, || etcd_state(&agent, &addr) == "down");
    assert_eq!(get(&agent, &format!("{addr}/ping/job-1")).0, 200);
    assert_eq!(get(&agent, &format!("{addr}/ping/job-2")).0, 201);
    assert_eq!(get(&agent, &format!("{addr}/health")).0, 200);
    let (_, metrics) = get(&agent, &format!("{addr}/metrics"));
    assert!(metrics.lines().any(|l| l == "heartbeat_etcd_up 0"), "{metrics}");

    // Back: the picture is right again (job-2 too), on one lease.
    etcd.restart();
    let c = etcd.client();
    eventually("up again with both sessions", BOUND, || {
        etcd_state(&agent, &addr) == "up" && count(&c, &sessions) == 2 && count(&c, &hosts) == 1
    });
    eventually("one lease", BOUND, || c.lease_count().unwrap() == 1);

    // A clean stop revokes the lease: the keys go at once.
    child.signal(libc::SIGTERM);
    assert!(child.wait_bounded(BOUND, "the monitor").success());
    assert_eq!(count(&c, PREFIX), 0);
    assert_eq!(c.lease_count().unwrap(), 0);
    match std::net::TcpStream::connect(addr.trim_start_matches("http://")) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
        Ok(_) => panic!("the monitor still listens"),
    }
}

#[test]
fn the_serve_binary_publishes_its_peers_and_shows_etcd_on_its_status() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let mut child = Spawned(
        heartbeat()
            .args(["serve", "--listen", "127.0.0.1:0", "--status", "127.0.0.1:0", "--network", "regtest"])
            .args(["--etcd", &etcd.url(), "--etcd-prefix", PREFIX, "--etcd-ttl", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = read_lines(child.stdout.take().unwrap());
    let first = lines.recv_timeout(BOUND).expect("the start line");
    let listen: std::net::SocketAddr =
        first.strip_prefix("listening on ").unwrap().split(' ').next().unwrap().parse().unwrap();
    let status = lines.recv_timeout(BOUND).unwrap().strip_prefix("status on ").unwrap().to_owned();
    let peer = PeerClient::start(PeerClientConfig {
        addr: listen,
        network: "regtest".into(),
        ..PeerClientConfig::default()
    })
    .unwrap();
    let peers = format!("{PREFIX}peers/");
    eventually("the peer in etcd", BOUND, || count(&c, &peers) == 1);
    assert!(c.range_prefix(&peers).unwrap().kvs[0].key_str().ends_with(&format!("/{}", peer.nick())));
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(BOUND)).build().into();
    let (code, body) = get(&agent, &format!("http://{status}/status"));
    assert_eq!(code, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["etcd"]["state"], "up", "{body}");
    assert_eq!(body["etcd"]["keys"], 2, "{body}");
    let (_, metrics) = get(&agent, &format!("http://{status}/metrics"));
    assert!(metrics.lines().any(|l| l == "heartbeat_etcd_up 1"), "{metrics}");
    peer.stop();
    eventually("the peer's key gone", BOUND, || count(&c, &peers) == 0);
    child.signal(libc::SIGTERM);
    assert!(child.wait_bounded(BOUND, "the hub").success());
    assert_eq!(count(&c, PREFIX), 0, "revoked on a clean stop");
}
