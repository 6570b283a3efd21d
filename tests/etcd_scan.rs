//! Reading presence back from a real etcd (started by the test on
//! 127.0.0.1): the verdicts of `EtcdScanner::scan`, the watch's events
//! through publishers coming and going and etcd going down, and the binary's
//! `scan --etcd`.

#[path = "support/child.rs"]
mod child;
#[path = "support/etcd.rs"]
mod etcd_support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::RecvTimeoutError;
use etcd_support::{Etcd, eventually};
use heartbeat::etcd::{
    EntryKind, EtcdEntry, EtcdEvent, EtcdScanner, EtcdWatch, EtcdWatchState, MemberRecord, Presence,
    Publisher,
};
use heartbeat::{HeartbeatState, ScanStatus, format_timestamp};

const BOUND: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(2);

fn publisher(host: &str, pid: u32, uuid: &str) -> Publisher {
    Publisher { host: host.into(), pid, uuid: uuid.into() }
}

/// A heartbeat as a beater writes it, last beaten at `at`, every `interval`.
fn heartbeat(p: &Publisher, at: SystemTime, interval: Duration) -> String {
    let mut state = HeartbeatState::for_current_process(at, interval, Default::default());
    state.pid = i64::from(p.pid);
    state.uuid = Some(p.uuid.clone());
    state.hostname = Some(p.host.clone());
    state.to_json()
}

fn member(kind: &str, p: &Publisher, id: &str, state: &str) -> String {
    let record = MemberRecord {
        kind: kind.into(),
        id: id.into(),
        owner: p.id(),
        state: state.into(),
        since: format_timestamp(SystemTime::now()),
        detail: Default::default(),
    };
    serde_json::to_string(&record).unwrap()
}

fn presence(etcd: &Etcd) -> Presence {
    Presence::start(etcd.client(), TTL).unwrap()
}

fn scanner(etcd: &Etcd, prefix: &str) -> EtcdScanner {
    EtcdScanner::builder(etcd.client()).prefix(prefix).build().unwrap()
}

#[test]
fn scan_judges_processes_sessions_and_peers_and_ignores_garbage() {
    let Some(etcd) = Etcd::start() else { return };
    let pre = "v/";
    let now = SystemTime::now();
    let sec = Duration::from_secs;
    let fresh = publisher("web-1", 101, "a");
    let stale = publisher("web-2", 102, "b");
    let skewed = publisher("web-3", 103, "c");
    let missing = publisher("web-4", 104, "d");
    let p = presence(&etcd);
    p.set(fresh.process_key(pre), heartbeat(&fresh, now, sec(10)));
    p.set(stale.process_key(pre), heartbeat(&stale, now - sec(60), sec(10)));
    p.set(skewed.process_key(pre), heartbeat(&skewed, now + sec(60), sec(10)));
    p.set(fresh.session_key(pre, "job-1"), member("session", &fresh, "job-1", "alive"));
    p.set(fresh.session_key(pre, "job-2"), member("session", &fresh, "job-2", "warning"));
    p.set(fresh.peer_key(pre, "J5abc"), member("peer", &fresh, "J5abc", "alive"));
    p.set(stale.session_key(pre, "job-3"), member("session", &stale, "job-3", "alive"));
    p.set(skewed.peer_key(pre, "J5def"), member("peer", &skewed, "J5def", "alive"));
    p.set(missing.session_key(pre, "job-4"), member("session", &missing, "job-4", "alive"));
    p.set(format!("{pre}hosts/web-5/105-e"), "{not json");
    p.set(format!("{pre}sessions/web-1/101-a/job-5"), "[]");
    p.set(format!("{pre}something/else"), "x");
    assert!(p.wait_published(BOUND), "{:?}", p.status());
    // Another prefix is not read.
    p.set(fresh.process_key("other/"), heartbeat(&fresh, now, sec(10)));
    assert!(p.wait_published(BOUND));

    let scan = scanner(&etcd, pre).scan().unwrap();
    let verdicts: Vec<(&str, EntryKind, ScanStatus)> =
        scan.entries.iter().map(|e| (e.key.strip_prefix(pre).unwrap(), e.kind, e.status)).collect();
    use EntryKind::*;
    use ScanStatus::*;
    assert_eq!(
        verdicts,
        [
            ("hosts/web-1/101-a", Process, Fresh),
            ("hosts/web-2/102-b", Process, Stale),
            ("hosts/web-3/103-c", Process, Skewed),
            ("peers/web-1/101-a/J5abc", Peer, Fresh),
            ("peers/web-3/103-c/J5def", Peer, Skewed),
            ("sessions/web-1/101-a/job-1", Session, Fresh),
            ("sessions/web-1/101-a/job-2", Session, Stale),
            ("sessions/web-2/102-b/job-3", Session, Stale),
            ("sessions/web-4/104-d/job-4", Session, Stale),
        ]
    );
    assert_eq!(scan.fresh_count(), 3);
    let e = &scan.entries[0];
    assert_eq!(
        (e.host.as_str(), e.pid, e.uuid.as_str(), e.owner.as_str()),
        ("web-1", 101, "a", "web-1/101-a")
    );
    assert_eq!(e.lease, p.status().lease.unwrap());
    assert!(e.why.contains("within 30.0s (3 of its intervals)"), "{}", e.why);
    assert!(scan.entries[1].why.contains("over 30.0s"), "{}", scan.entries[1].why);
    assert!(scan.entries[2].why.contains("clock skew"), "{}", scan.entries[2].why);
    let job2 = &scan.entries[6];
    assert_eq!((job2.id.as_deref(), job2.state.as_deref()), (Some("job-2"), Some("warning")));
    assert!(job2.why.contains("\"warning\""), "{}", job2.why);
    assert!(scan.entries[7].why.contains("its process is STALE"), "{}", scan.entries[7].why);
    assert!(scan.entries[8].why.contains("has no key"), "{}", scan.entries[8].why);
    let ignored: Vec<(&str, &str)> =
        scan.ignored.iter().map(|i| (i.key.strip_prefix(pre).unwrap(), i.why.as_str())).collect();
    assert_eq!(ignored.len(), 3, "{ignored:?}");
    assert!(
        ignored[0].0 == "hosts/web-5/105-e" && ignored[0].1.starts_with("not heartbeat JSON"),
        "{ignored:?}"
    );
    assert!(
        ignored[1].0 == "sessions/web-1/101-a/job-5" && ignored[1].1.contains("not an object"),
        "{ignored:?}"
    );
    assert!(
        ignored[2].0 == "something/else" && ignored[2].1.starts_with("not a key of the layout"),
        "{ignored:?}"
    );
}

/// Waits (bounded) for the next event that `pick` takes, returning the
/// events skipped on the way.
fn next_event(
    watch: &EtcdWatch,
    what: &str,
    mut pick: impl FnMut(&EtcdEvent) -> bool,
) -> (EtcdEvent, Vec<EtcdEvent>) {
    let deadline = Instant::now() + BOUND;
    let mut skipped = Vec::new();
    loop {
        match watch.events().recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) if pick(&e) => return (e, skipped),
            Ok(e) => skipped.push(e),
            Err(RecvTimeoutError::Timeout) => panic!("no {what} within {BOUND:?}; saw {skipped:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the watch ended; saw {skipped:#?}"),
        }
    }
}

fn is_for(e: &EtcdEvent, key: &str) -> bool {
    entry_of(e).is_some_and(|entry| entry.key == key)
}

fn entry_of(e: &EtcdEvent) -> Option<&EtcdEntry> {
    match e {
        EtcdEvent::Appeared(x) | EtcdEvent::Gone(x) | EtcdEvent::Changed { entry: x, .. } => Some(x),
        _ => None,
    }
}

#[test]
fn the_watch_reports_appeared_changed_and_gone_but_not_rewrites() {
    let Some(etcd) = Etcd::start() else { return };
    let pre = "w/";
    let sec = Duration::from_secs;
    let a = publisher("h", 1, "a");
    let b = publisher("h", 2, "b");
    let c = publisher("h", 3, "c");
    let (pa, pb, pc) = (presence(&etcd), presence(&etcd), presence(&etcd));
    pa.set(a.process_key(pre), heartbeat(&a, SystemTime::now(), sec(60)));
    pa.set(a.session_key(pre, "s"), member("session", &a, "s", "alive"));
    pb.set(b.process_key(pre), heartbeat(&b, SystemTime::now(), sec(60)));
    assert!(pa.wait_published(BOUND) && pb.wait_published(BOUND));

    let mut watch = scanner(&etcd, pre).watch().unwrap();
    let mut initial = Vec::new();
    for _ in 0..3 {
        let (e, skipped) = next_event(&watch, "an initial event", |_| true);
        assert!(skipped.is_empty());
        initial.push(e);
    }
    let mut appeared: Vec<(String, ScanStatus)> = initial
        .iter()
        .map(|e| match e {
            EtcdEvent::Appeared(x) => (x.key.clone(), x.status),
            other => panic!("{other:?}"),
        })
        .collect();
    appeared.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        appeared,
        [
            (a.process_key(pre), ScanStatus::Fresh),
            (b.process_key(pre), ScanStatus::Fresh),
            (a.session_key(pre, "s"), ScanStatus::Fresh)
        ]
    );
    eventually("the watch is up", BOUND, || watch.status().state == EtcdWatchState::Up);

    // A key that appears later.
    pc.set(c.process_key(pre), heartbeat(&c, SystemTime::now(), sec(60)));
    let (e, skipped) = next_event(&watch, "c appeared", |e| is_for(e, &c.process_key(pre)));
    assert!(matches!(e, EtcdEvent::Appeared(ref x) if x.status == ScanStatus::Fresh), "{e:?}");
    assert!(skipped.is_empty(), "{skipped:?}");

    // b rewritten with new beats, same verdict: nothing is said.
    let rev_before = watch.status().revision;
    for _ in 0..5 {
        pb.set(b.process_key(pre), heartbeat(&b, SystemTime::now(), sec(60)));
        assert!(pb.wait_published(BOUND));
        thread::sleep(Duration::from_millis(100));
    }
    eventually("the watch saw the rewrites", BOUND, || watch.status().revision > rev_before + 4);
    thread::sleep(Duration::from_millis(300));
    let said: Vec<EtcdEvent> = watch.events().try_iter().filter(|e| is_for(e, &b.process_key(pre))).collect();
    assert!(said.is_empty(), "rewrites with the same verdict were reported: {said:?}");

    // A state change is a change, with the state.
    pa.set(a.session_key(pre, "s"), member("session", &a, "s", "failed"));
    let (e, _) = next_event(&watch, "the session's change", |e| is_for(e, &a.session_key(pre, "s")));
    match e {
        EtcdEvent::Changed { from: ScanStatus::Fresh, entry } => {
            assert_eq!((entry.status, entry.state.as_deref()), (ScanStatus::Stale, Some("failed")));
        }
        other => panic!("{other:?}"),
    }
    pa.set(a.session_key(pre, "s"), member("session", &a, "s", "alive"));
    let (e, _) = next_event(&watch, "the session alive again", |e| is_for(e, &a.session_key(pre, "s")));
    assert!(
        matches!(e, EtcdEvent::Changed { from: ScanStatus::Stale, ref entry } if entry.status == ScanStatus::Fresh),
        "{e:?}"
    );

    // a now says it beats every second, then stops beating but keeps its
    // lease: STALE 3 s after that beat by age alone (the watch re-judges
    // every second), and its session with it.
    pa.set(a.process_key(pre), heartbeat(&a, SystemTime::now(), sec(1)));
    let (e, _) = next_event(&watch, "a turning STALE", |e| is_for(e, &a.process_key(pre)));
    assert!(
        matches!(e, EtcdEvent::Changed { from: ScanStatus::Fresh, ref entry } if entry.status == ScanStatus::Stale),
        "{e:?}"
    );
    let (e, _) = next_event(&watch, "a's session turning STALE", |e| is_for(e, &a.session_key(pre, "s")));
    assert!(
        matches!(e, EtcdEvent::Changed { ref entry, .. } if entry.why.contains("its process is STALE")),
        "{e:?}"
    );

    // Stopped cleanly: its lease is revoked, its key gone at once.
    pc.stop();
    let (e, _) = next_event(&watch, "c gone", |e| is_for(e, &c.process_key(pre)));
    assert!(matches!(e, EtcdEvent::Gone(_)), "{e:?}");

    // Abandoned (as a crash): gone when its lease expires, within its TTL and etcd's expiry check.
    let abandoned = Instant::now();
    pb.abandon();
    let (e, _) = next_event(&watch, "b gone", |e| is_for(e, &b.process_key(pre)));
    assert!(matches!(e, EtcdEvent::Gone(_)), "{e:?}");
    assert!(abandoned.elapsed() >= Duration::from_secs(1), "gone before its lease could expire");

    let stopping = Instant::now();
    watch.stop();
    assert_eq!(watch.status().state, EtcdWatchState::Stopped);
    // Bounded (about a second of stream silence, or one request in flight),
    // with room for a loaded machine: this checks it ends, not how fast.
    assert!(stopping.elapsed() < Duration::from_secs(15), "stop took {:?}", stopping.elapsed());
}

/// Rewrites a publisher's heartbeat every 300 ms on a thread, joined on drop.
struct Beating {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Beating {
    fn start(p: Presence, who: Publisher, pre: &'static str) -> Beating {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                p.set(who.process_key(pre), heartbeat(&who, SystemTime::now(), Duration::from_secs(10)));
                thread::sleep(Duration::from_millis(300));
            }
        });
        Beating { stop, thread: Some(thread) }
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[test]
fn the_watch_resumes_after_etcd_was_down_past_the_ttl() {
    let Some(mut etcd) = Etcd::start() else { return };
    let pre = "r/";
    let keeper = publisher("h", 1, "keeper");
    let dier = publisher("h", 2, "dier");
    let pk = presence(&etcd);
    let pd = presence(&etcd);
    let _beating = Beating::start(pk.clone(), keeper.clone(), pre);
    pd.set(dier.process_key(pre), heartbeat(&dier, SystemTime::now(), Duration::from_secs(60)));
    assert!(pd.wait_published(BOUND));
    eventually("the keeper published", BOUND, || pk.status().keys == 1 && pk.wait_published(BOUND));

    let watch = scanner(&etcd, pre).watch().unwrap();
    let mut initial = Vec::new();
    for _ in 0..2 {
        initial.push(next_event(&watch, "an initial event", |_| true).0);
    }
    assert!(
        initial.iter().all(|e| matches!(e, EtcdEvent::Appeared(x) if x.status == ScanStatus::Fresh)),
        "{initial:?}"
    );

    etcd.stop();
    let (e, skipped) = next_event(&watch, "down", |e| matches!(e, EtcdEvent::Down(_)));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(matches!(&e, EtcdEvent::Down(why) if why.contains(&etcd.url())), "{e:?}");
    assert_eq!(watch.status().state, EtcdWatchState::Down);
    // The dier dies while etcd is down, and the outage outlasts every TTL.
    pd.abandon();
    thread::sleep(TTL + Duration::from_secs(1));
    assert!(
        watch.events().is_empty(),
        "nothing is said while down: {:?}",
        watch.events().try_iter().collect::<Vec<_>>()
    );
    etcd.restart();

    // etcd renews every lease when it comes back, so the dier's goes one TTL
    // after the restart: before or after the watch is up again (then found
    // missing by the range read). Either way: `up` once, the dier gone once,
    // and not a word about the keeper.
    let mut seen = Vec::new();
    while !(seen.contains(&EtcdEvent::Up) && seen.iter().any(|e| is_for(e, &dier.process_key(pre)))) {
        seen.push(next_event(&watch, "up and the dier gone", |_| true).0);
    }
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(
        seen.iter().any(|e| matches!(e, EtcdEvent::Gone(x) if x.key == dier.process_key(pre))),
        "{seen:#?}"
    );
    let status = watch.status();
    assert_eq!((status.state, status.range_reads, status.keys), (EtcdWatchState::Up, 2, 1), "{status:?}");
    // The keeper is still there, FRESH, and was never said twice.
    eventually("the keeper republished", BOUND, || pk.wait_published(BOUND));
    thread::sleep(Duration::from_millis(1500));
    let late: Vec<EtcdEvent> = watch.events().try_iter().collect();
    assert!(late.is_empty(), "{late:?}");
    let scan = scanner(&etcd, pre).scan().unwrap();
    assert_eq!(scan.entries.len(), 1);
    assert_eq!(
        (scan.entries[0].key.as_str(), scan.entries[0].status),
        (keeper.process_key(pre).as_str(), ScanStatus::Fresh)
    );
}

#[test]
fn scan_etcd_through_the_binary_lists_and_exits_as_scan() {
    let Some(etcd) = Etcd::start() else { return };
    let pre = "b/";
    let run = |extra: &[&str]| {
        let out = child::heartbeat()
            .args(["scan", "--etcd", &etcd.url(), "--prefix", pre])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Nobody yet: 1.
    let (code, stdout, _) = run(&[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "only the header: {stdout}");

    let w = publisher("web-1", 4242, "u1");
    let p = presence(&etcd);
    p.set(w.process_key(pre), heartbeat(&w, SystemTime::now(), Duration::from_secs(10)));
    p.set(w.session_key(pre, "job"), member("session", &w, "job", "alive"));
    p.set(format!("{pre}junk"), "1");
    assert!(p.wait_published(BOUND));
    let (code, stdout, stderr) = run(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("STATUS  KIND"), "{stdout}");
    let fields = |l: &str| l.split_whitespace().take(6).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(fields(lines[1]), ["FRESH", "process", "web-1", "4242", "u1", "-"], "{stdout}");
    assert_eq!(fields(lines[2]), ["FRESH", "session", "web-1", "4242", "u1", "job"], "{stdout}");
    assert!(stderr.contains(&format!("ignored {pre}junk: not a key of the layout")), "{stderr}");

    let (code, stdout, _) = run(&["--format", "json"]);
    assert_eq!(code, Some(0));
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["status"].as_str(), first["kind"].as_str(), first["pid"].as_u64()),
        (Some("fresh"), Some("process"), Some(4242))
    );

    // An old beat: STALE, so nobody FRESH: 1 (the session follows its process).
    p.set(
        w.process_key(pre),
        heartbeat(&w, SystemTime::now() - Duration::from_secs(600), Duration::from_secs(10)),
    );
    assert!(p.wait_published(BOUND));
    let (code, stdout, _) = run(&[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.lines().skip(1).all(|l| l.starts_with("STALE")), "{stdout}");

    // --cleanup is refused; an etcd that cannot be reached is an error, 2.
    let (code, _, stderr) = run(&["--cleanup"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--cleanup does not apply to --etcd"), "{stderr}");
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    let out = child::heartbeat().args(["scan", "--etcd", &dead]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read presence from etcd") && stderr.contains(&dead), "{stderr}");
    let out = child::heartbeat().args(["scan", "/tmp", "--etcd", &etcd.url()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a DIR and --etcd together are refused");
}

#[test]
fn scan_etcd_watch_through_the_binary_prints_gone_when_a_publisher_stops() {
    let Some(etcd) = Etcd::start() else { return };
    let pre = "bw/";
    let w = publisher("web-1", 4343, "u2");
    let p = presence(&etcd);
    p.set(w.process_key(pre), heartbeat(&w, SystemTime::now(), Duration::from_secs(10)));
    assert!(p.wait_published(BOUND));
    let mut scan = child::Spawned(
        child::heartbeat()
            .args(["scan", "--etcd", &etcd.url(), "--prefix", pre, "--watch"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lines = child::read_lines(scan.stdout.take().unwrap());
    let line = lines.recv_timeout(BOUND).expect("no appeared line");
    assert!(line.starts_with("appeared  FRESH  process  web-1  4343  u2"), "{line}");
    p.stop();
    let line = lines.recv_timeout(BOUND).expect("no gone line");
    assert!(line.starts_with("gone  FRESH  process  web-1  4343"), "{line}");
    scan.signal(libc::SIGTERM);
    let status = scan.wait_bounded(BOUND, "scan --watch");
    assert_eq!(status.code(), Some(1), "nobody left: 1");
}

#[test]
fn a_reader_that_lags_holds_the_watch_back_without_losing_events_and_stop_still_returns() {
    let Some(etcd) = Etcd::start() else { return };
    let pre = "q/";
    let p = presence(&etcd);
    let scanner = EtcdScanner::builder(etcd.client()).prefix(pre).event_capacity(2).build().unwrap();
    let mut watch = scanner.watch().unwrap();
    eventually("the watch is up", BOUND, || watch.status().state == EtcdWatchState::Up);
    let keys: Vec<String> = (0..20)
        .map(|i| {
            let who = publisher("h", 100 + i, "x");
            p.set(who.process_key(pre), heartbeat(&who, SystemTime::now(), Duration::from_secs(60)));
            who.process_key(pre)
        })
        .collect();
    assert!(p.wait_published(BOUND));
    // Nobody reads: the channel holds 2, the thread waits with the rest.
    eventually("the channel is full", BOUND, || watch.events().len() == 2);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(watch.events().len(), 2, "a bounded channel");
    // Read now: every key, once.
    let mut appeared = Vec::new();
    while appeared.len() < keys.len() {
        match next_event(&watch, "the next appearance", |_| true).0 {
            EtcdEvent::Appeared(e) => appeared.push(e.key),
            other => panic!("{other:?}"),
        }
    }
    let mut sorted = keys.clone();
    sorted.sort();
    appeared.sort();
    assert_eq!(appeared, sorted);
    // Full again, and stopped while the thread waits to send: stop returns.
    for key in &keys[..5] {
        p.remove(key);
    }
    eventually("the channel is full again", BOUND, || watch.events().len() == 2);
    watch.stop();
    assert_eq!(watch.status().state, EtcdWatchState::Stopped);
}
