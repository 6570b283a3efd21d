//! The `Beater` publishing to etcd, and `heartbeat beat --etcd`, against a
//! real etcd started by the test (127.0.0.1, free ports, a temporary data
//! directory). Every wait is bounded.

#[path = "support/child.rs"]
mod child;
#[path = "support/etcd.rs"]
mod etcd_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use child::{Spawned, heartbeat};
use etcd_support::{Etcd, eventually};
use heartbeat::etcd::{Client, KeyValue, Presence, PresenceState, Publisher};
use heartbeat::{Beater, HeartbeatState};
use libc::{SIGCONT, SIGKILL, SIGSTOP, SIGTERM};

const BOUND: Duration = Duration::from_secs(10);
/// A `beat --interval 1` process's lease: 3 intervals.
const TTL: Duration = Duration::from_secs(3);
/// What etcd may take past a TTL to notice the lease expired and delete its
/// keys (it checks expiry about every 500 ms; a keep-alive sent just before
/// the kill restarts the full TTL).
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

fn parse(kv: &KeyValue) -> HeartbeatState {
    HeartbeatState::from_json(&kv.value, Path::new(&*kv.key_str())).unwrap()
}

/// The key of a `beat` process, found by its pid (its uuid is its own).
fn key_of(c: &Client, pid: u32) -> Option<KeyValue> {
    let prefix = format!("heartbeat/hosts/{}/{pid}-", Publisher::this_process("").host);
    let mut kvs = c.range_prefix(&prefix).unwrap().kvs;
    assert!(kvs.len() <= 1, "one key per process: {kvs:?}");
    kvs.pop()
}

fn wait_for_key(c: &Client, pid: u32, what: &str) -> KeyValue {
    let mut found = None;
    eventually(what, BOUND, || {
        found = key_of(c, pid);
        found.is_some()
    });
    found.unwrap()
}

fn beat_etcd(etcd_url: &str, extra: &[&str]) -> Spawned {
    Spawned(
        heartbeat()
            .args(["beat", "--interval", "1", "--etcd", etcd_url])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_beater_publishes_its_heartbeat_json_every_beat_and_a_stop_revokes_it_at_once() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.json");
    let beater = Beater::builder()
        .state_file(&path)
        .interval(Duration::from_secs(1))
        .metadata("role", "worker")
        .etcd_client(etcd.client())
        .build()
        .unwrap();
    let key = beater.etcd_key().unwrap().to_owned();
    assert_eq!(key, Publisher::this_process(beater.uuid()).process_key("heartbeat/"));
    assert!(beater.presence().is_none(), "no presence before the first beat");

    let guard = beater.start().unwrap();
    let mut kv = None;
    eventually("the key is published", BOUND, || {
        kv = c.get(&key).unwrap();
        kv.is_some()
    });
    let kv = kv.unwrap();
    let first = parse(&kv);
    assert_eq!(first.pid, i64::from(std::process::id()));
    assert_eq!(first.uuid.as_deref(), Some(beater.uuid().as_str()));
    assert_eq!(first.metadata["role"], "worker");
    assert_eq!(first.interval, Some(Duration::from_secs(1)));
    // The same JSON as the file: both come from one beat.
    assert_eq!(heartbeat::read_state(&path).unwrap().uuid, first.uuid);
    assert_ne!(kv.lease, 0, "the key hangs off a lease");
    assert_eq!(c.keepalive(kv.lease).unwrap(), Some(TTL), "TTL = 3 intervals");

    eventually("a later beat rewrites the key", BOUND, || {
        let now = c.get(&key).unwrap().map(|kv| parse(&kv).last_beat);
        now.is_some_and(|t| t > first.last_beat)
    });
    let status = beater.presence().unwrap().status();
    assert_eq!((status.state, status.grants, status.keys), (PresenceState::Up, 1, 1));
    assert_eq!(status.lease, Some(kv.lease));

    drop(guard);
    assert!(c.get(&key).unwrap().is_none(), "a clean stop removes the key before it returns");
    assert_eq!(c.keepalive(kv.lease).unwrap(), None, "its lease is revoked");
    assert!(beater.presence().is_none());
}

#[test]
fn a_beater_without_a_file_publishes_only_to_etcd_and_publishes_again_after_a_restart() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let beater =
        Beater::builder().interval(Duration::from_secs(1)).etcd_client(etcd.client()).build().unwrap();
    assert!(beater.state_file().is_none());
    let key = beater.etcd_key().unwrap().to_owned();

    // One beat on the calling thread publishes too.
    beater.beat().unwrap();
    assert!(beater.presence().unwrap().wait_published(BOUND));
    let first = c.get(&key).unwrap().expect("published by beat()");
    assert_eq!(parse(&first).uuid.as_deref(), Some(beater.uuid().as_str()));
    beater.stop();
    assert!(c.get(&key).unwrap().is_none(), "stop withdraws a key set by beat() alone");

    let guard = beater.start().unwrap();
    assert!(beater.presence().unwrap().wait_published(BOUND));
    let again = c.get(&key).unwrap().expect("published again after a restart");
    assert_ne!(again.lease, first.lease, "a fresh lease");
    drop(guard);
    assert!(c.get(&key).unwrap().is_none());
}

#[test]
fn a_beater_on_a_shared_presence_removes_only_its_own_key() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let presence = Presence::start(etcd.client(), Duration::from_secs(30)).unwrap();
    presence.set("apps/sessions/other", b"kept".to_vec());
    let beater = Beater::builder()
        .interval(Duration::from_secs(1))
        .etcd(presence.clone())
        .etcd_prefix("apps/")
        .build()
        .unwrap();
    let key = beater.etcd_key().unwrap().to_owned();
    assert!(key.starts_with("apps/hosts/"), "{key}");

    let guard = beater.start().unwrap();
    assert!(presence.wait_published(BOUND));
    let kv = c.get(&key).unwrap().expect("published");
    assert_eq!(Some(kv.lease), presence.status().lease, "under the shared lease");
    assert_eq!(c.lease_count().unwrap(), 1, "one lease for the process");

    drop(guard);
    eventually("the beater's key is deleted", BOUND, || c.get(&key).unwrap().is_none());
    let other = c.get("apps/sessions/other").unwrap().expect("the other key stays");
    assert_eq!(other.lease, kv.lease);
    let status = presence.status();
    assert_eq!((status.state, status.grants, status.keys), (PresenceState::Up, 1, 1));
    assert_eq!(c.keepalive(kv.lease).unwrap(), Some(Duration::from_secs(30)), "the lease lives on");
    presence.stop();
    assert!(c.get("apps/sessions/other").unwrap().is_none());
}

#[test]
fn etcd_unreachable_never_fails_a_beat() {
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.json");
    let (beats, missed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (b, m) = (beats.clone(), missed.clone());
    let beater = Beater::builder()
        .state_file(&path)
        .interval(Duration::from_secs(1))
        .etcd_client(Client::with_timeout(&[dead], Duration::from_millis(500)).unwrap())
        .on_beat(move || {
            b.fetch_add(1, Ordering::SeqCst);
        })
        .on_missed_beat(move |_| {
            m.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    beater.beat().unwrap();
    let guard = beater.start().unwrap();
    eventually("two beats", BOUND, || beats.load(Ordering::SeqCst) >= 2);
    eventually("the presence says etcd is down", BOUND, || {
        beater.presence().unwrap().status().state == PresenceState::Down
    });
    assert_eq!(missed.load(Ordering::SeqCst), 0);
    assert!(heartbeat::is_alive(&path, Duration::from_secs(30)));
    drop(guard);
}

#[test]
fn two_beat_processes_appear_a_killed_one_expires_a_terminated_one_goes_at_once() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.json");
    let mut a = beat_etcd(&etcd.url(), &[]);
    let mut b = beat_etcd(&etcd.url(), &[file.to_str().unwrap()]);
    let ka = wait_for_key(&c, a.id(), "the first process publishes");
    let kb = wait_for_key(&c, b.id(), "the second process publishes");
    assert_ne!(ka.lease, kb.lease, "one lease per process");
    assert_eq!(parse(&ka).pid, i64::from(a.id()));
    assert_eq!(parse(&kb).pid, i64::from(b.id()));
    assert!(file.exists(), "the second one writes its file too");

    // `scan --etcd` sees both FRESH (exit 0: someone is).
    let out = heartbeat().args(["scan", "--etcd", &etcd.url()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for pid in [a.id(), b.id()] {
        let row = text.lines().find(|l| l.split_whitespace().nth(3) == Some(&*pid.to_string()));
        assert!(row.is_some_and(|r| r.starts_with("FRESH")), "pid {pid} not FRESH in:\n{text}");
    }
    // And `scan --etcd --watch` follows them.
    let mut watch = Spawned(
        heartbeat()
            .args(["scan", "--etcd", &etcd.url(), "--watch"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = child::read_lines(watch.stdout.take().unwrap());
    let about = |line: &str, pid: u32| line.split_whitespace().any(|word| word == pid.to_string());
    let mut appeared = 0;
    while appeared < 2 {
        let line = lines.recv_timeout(BOUND).expect("the watch's first picture");
        assert!(line.starts_with("appeared  FRESH"), "{line}");
        appeared += 1;
    }

    a.signal(SIGKILL);
    a.wait_bounded(BOUND, "the killed beat");
    eventually("the killed process's key expires", TTL + EXPIRY_MARGIN, || key_of(&c, a.id()).is_none());
    assert!(key_of(&c, b.id()).is_some(), "the other one is still there");
    // Its last beat can age past 3 intervals before the lease expires: a
    // `changed FRESH->STALE` may come first.
    let mut line = lines.recv_timeout(BOUND).expect("no gone line for the killed process");
    while line.starts_with("changed") && about(&line, a.id()) {
        line = lines.recv_timeout(BOUND).expect("no gone line for the killed process");
    }
    assert!(line.starts_with("gone") && about(&line, a.id()), "{line}");

    b.signal(SIGTERM);
    let status = b.wait_bounded(BOUND, "the terminated beat");
    assert!(status.success(), "{status:?}");
    assert!(key_of(&c, b.id()).is_none(), "a clean exit revoked the lease before exiting");
    assert_eq!(c.keepalive(kb.lease).unwrap(), None);
    assert!(!file.exists(), "and removed the file");
    let line = lines.recv_timeout(BOUND).expect("no gone line for the terminated process");
    assert!(line.starts_with("gone") && about(&line, b.id()), "{line}");
    watch.signal(SIGTERM);
    watch.wait_bounded(BOUND, "scan --watch");
}

#[test]
fn a_process_stopped_past_its_ttl_expires_and_republishes_after_sigcont() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let mut p = beat_etcd(&etcd.url(), &[]);
    let before = wait_for_key(&c, p.id(), "the process publishes");

    p.signal(SIGSTOP);
    eventually("the frozen process's key expires", TTL + EXPIRY_MARGIN, || key_of(&c, p.id()).is_none());
    assert_eq!(c.keepalive(before.lease).unwrap(), None, "its lease is gone");

    p.signal(SIGCONT);
    let mut after = None;
    eventually("the process republishes under a new lease", BOUND, || {
        after = key_of(&c, p.id());
        after.is_some()
    });
    let after = after.unwrap();
    assert_ne!(after.lease, before.lease);
    assert_eq!(parse(&after).uuid, parse(&before).uuid, "the same process run");
    assert!(parse(&after).last_beat > parse(&before).last_beat);

    p.signal(SIGTERM);
    assert!(p.wait_bounded(BOUND, "beat after SIGTERM").success());
    assert!(key_of(&c, p.id()).is_none());
}

#[test]
fn etcd_down_at_start_leaves_the_file_beating_and_the_key_comes_when_etcd_does() {
    let Some(mut etcd) = Etcd::start() else { return };
    let url = etcd.url();
    etcd.stop();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.json");
    let log = dir.path().join("stderr.log");
    let mut p = Spawned(
        heartbeat()
            .args(["beat", "--interval", "1", "--etcd", &url])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually("the file is written", BOUND, || heartbeat::read_state(&file).is_ok());
    let first = heartbeat::read_state(&file).unwrap().last_beat;
    eventually("the file is rewritten while etcd is down", BOUND, || {
        heartbeat::read_state(&file).is_ok_and(|s| s.last_beat > first)
    });
    eventually("etcd down is logged", BOUND, || {
        std::fs::read_to_string(&log).unwrap().contains("etcd presence down")
    });

    etcd.restart();
    let c = etcd.client();
    let kv = wait_for_key(&c, p.id(), "the key is published once etcd is up");
    assert_eq!(parse(&kv).uuid, heartbeat::read_state(&file).unwrap().uuid);
    eventually("etcd up is logged", BOUND, || {
        std::fs::read_to_string(&log).unwrap().contains("etcd presence up")
    });

    p.signal(SIGTERM);
    assert!(p.wait_bounded(BOUND, "beat after SIGTERM").success());
    assert!(key_of(&c, p.id()).is_none());
}

#[test]
fn once_with_etcd_leaves_the_key_to_expire_on_its_lease() {
    let Some(etcd) = Etcd::start() else { return };
    let c = etcd.client();
    let mut p = Spawned(
        heartbeat()
            .args(["beat", "--once", "--interval", "1", "--etcd", &etcd.url(), "--etcd-prefix", "cron/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = p.id();
    assert!(p.wait_bounded(BOUND, "beat --once").success());
    let prefix = format!("cron/hosts/{}/{pid}-", Publisher::this_process("").host);
    let kv = c.range_prefix(&prefix).unwrap().kvs.pop().expect("published before exiting");
    assert_eq!(parse(&kv).pid, i64::from(pid));
    assert_ne!(kv.lease, 0);
    eventually("the key expires with its lease", TTL + EXPIRY_MARGIN, || {
        c.range_prefix(&prefix).unwrap().kvs.is_empty()
    });
}

#[test]
fn once_with_etcd_unreachable_fails_and_says_so() {
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let mut p = Spawned(
        heartbeat()
            .args(["beat", "--once", "--interval", "1", "--etcd", &dead])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = p.wait_bounded(BOUND + TTL, "beat --once with etcd down");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(p.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("not published to etcd") && err.contains(&dead), "{err}");
}

#[test]
fn bad_etcd_arguments_exit_2_with_a_reason() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_heartbeat")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["beat", "--etcd", "ftp://127.0.0.1:2379"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("http://"), "{err}");
    let (code, err) = run(&["beat", "--etcd", "http://127.0.0.1:2379", "--etcd-prefix", "a b/"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("printable"), "{err}");
    let (code, err) = run(&["beat", "--etcd-prefix", "apps/", "/tmp/never-written.json"]);
    assert_eq!(code, Some(2), "--etcd-prefix needs --etcd: {err}");
    let (code, err) = run(&["beat"]);
    assert_eq!(code, Some(2), "FILE, --dir or --etcd: {err}");
}
