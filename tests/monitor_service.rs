//! `heartbeat monitor` as its users meet it: the real binary on loopback,
//! driven over HTTP (ureq), raw TCP for malformed requests, and UDP. Every
//! child process is killed on drop and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/child.rs"]
mod child;
use child::{Spawned, heartbeat, read_lines, told};

const BOUND: Duration = Duration::from_secs(10);

/// A `monitor` process, killed if the test ends first, with its addresses.
struct Service {
    child: Spawned,
    http: SocketAddr,
    udp: Option<SocketAddr>,
}

/// Sweeps every 50 ms, 200 ms of silence is a miss, 2 misses time out.
const FAST: &[&str] = &["--check-interval", "0.05", "--timeout", "0.2", "--max-missed", "2"];

impl Service {
    fn spawn(args: &[&str]) -> Service {
        Service::spawn_with(args, |_| {})
    }

    fn spawn_with(args: &[&str], tweak: impl FnOnce(&mut Command)) -> Service {
        let mut cmd = heartbeat();
        cmd.args(["monitor", "--listen", "127.0.0.1:0"]);
        if !args.contains(&"--udp") {
            cmd.args(["--udp", "127.0.0.1:0"]);
        }
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        let mut service = Service { child: Spawned(child), http: "0.0.0.0:0".parse().unwrap(), udp: None };
        let line = lines.recv_timeout(BOUND).expect("the listening line within the bound");
        service.http = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"));
        if !args.windows(2).any(|w| w == ["--udp", "off"]) {
            let line = lines.recv_timeout(BOUND).expect("the udp line within the bound");
            service.udp =
                Some(line.strip_prefix("udp on ").unwrap_or_else(|| panic!("{line:?}")).parse().unwrap());
        }
        service
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait_bounded(BOUND, "monitor")
    }

    /// A metric's value, from `/metrics`.
    fn metric(&self, series: &str) -> u64 {
        let (status, text) = get(&self.url("/metrics"));
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse()
            .unwrap()
    }

    fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(BOUND)).http_status_as_error(false).build().into()
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
    let mut response = response.unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn get(url: &str) -> (u16, String) {
    answer(agent().get(url).call())
}

fn post(url: &str) -> (u16, String) {
    answer(agent().post(url).send_empty())
}

fn put(url: &str, body: &str) -> (u16, String) {
    answer(agent().put(url).send(body))
}

fn delete(url: &str) -> (u16, String) {
    answer(agent().delete(url).call())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {BOUND:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends raw bytes and returns the status code of the first response (0 if
/// the connection closed without one).
fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let _ = stream.write_all(request);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

#[test]
fn the_session_api_end_to_end() {
    let service = Service::spawn(&[]);
    let session = service.url("/sessions/agent-7");

    let (code, body) = put(&session, r#"{"agent_type": "crawler", "timeout_sec": 60, "max_missed": 5}"#);
    assert_eq!(code, 201, "{body}");
    let status = json(&body);
    assert_eq!(status["agent_type"], "crawler");
    assert_eq!(status["is_healthy"], true);
    assert_eq!(put(&session, "").0, 200, "registering again replaces");

    assert_eq!(post(&format!("{session}/beat")).0, 204);
    assert_eq!(post(&service.url("/sessions/nobody/beat")).0, 404);
    assert_eq!(post(&format!("{session}/pause")).0, 204);
    assert_eq!(json(&get(&session).1)["is_paused"], true);
    assert_eq!(post(&format!("{session}/resume")).0, 204);
    assert_eq!(post(&format!("{session}/resume")).0, 409, "not paused any more");

    for i in 0..5 {
        assert_eq!(put(&service.url(&format!("/sessions/s{i}")), "").0, 201);
    }
    let page = json(&get(&service.url("/sessions?limit=3")).1);
    assert_eq!(page["total"], 6);
    let ids: Vec<&str> =
        page["sessions"].as_array().unwrap().iter().map(|s| s["session_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["agent-7", "s0", "s1"]);
    let rest =
        json(&get(&service.url(&format!("/sessions?after={}", page["next_after"].as_str().unwrap()))).1);
    assert_eq!(rest["sessions"].as_array().unwrap().len(), 3);
    assert!(rest["next_after"].is_null());

    assert_eq!(delete(&session).0, 204);
    assert_eq!(get(&session).0, 404);
    assert_eq!(delete(&session).0, 404);
    let health = json(&get(&service.url("/health")).1);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sessions"], 5);
}

#[test]
fn ping_registers_on_first_use_and_reports_failures_and_starts() {
    let service = Service::spawn(&[]);
    let (code, body) = get(&service.url("/ping/backup"));
    assert_eq!((code, body.as_str()), (201, ""), "created, with nothing for cron to mail");
    assert_eq!(post(&service.url("/ping/backup")).0, 200);
    let head = agent().head(&service.url("/ping/backup")).call().unwrap();
    assert_eq!(head.status().as_u16(), 200);

    assert_eq!(get(&service.url("/ping/backup/fail")).0, 200);
    let status = json(&get(&service.url("/sessions/backup")).1);
    assert_eq!((status["failed"].as_bool(), status["is_healthy"].as_bool()), (Some(true), Some(false)));
    assert_eq!(get(&service.url("/ping/backup/start")).0, 200);
    let status = json(&get(&service.url("/sessions/backup")).1);
    assert_eq!(status["failed"], true, "a start is no recovery");
    assert!(status["run_started"].is_string(), "{status}");
    assert_eq!(get(&service.url("/ping/backup")).0, 200);
    let status = json(&get(&service.url("/sessions/backup")).1);
    assert_eq!(status["failed"], false, "a plain ping after a failure is a recovery");
    assert!(status.get("run_started").is_none());

    assert_eq!(get(&service.url("/ping/bad%20id")).0, 400);
    assert_eq!(get(&service.url("/ping/x/explode")).0, 404);
    assert_eq!(put(&service.url("/ping/x"), "").0, 405);
    assert_eq!(service.metric("heartbeat_monitor_events_total{kind=\"failed\"}"), 1);
    // GET, POST, HEAD, fail, start, GET: six pings.
    assert_eq!(service.metric("heartbeat_monitor_beats_received_total{transport=\"ping\"}"), 6);
}

#[test]
fn a_ping_carries_its_settings_and_failures_do_not_pass_for_recoveries() {
    let service = Service::spawn(&[]);
    let daily = "/ping/nightly?timeout_sec=90000&max_missed=1&agent_type=cron";
    assert_eq!(get(&service.url(daily)).0, 201);
    let status = json(&get(&service.url("/sessions/nightly")).1);
    assert_eq!((status["timeout_sec"].as_f64(), status["max_missed"].as_u64()), (Some(90_000.0), Some(1)));
    assert_eq!(status["agent_type"], "cron");
    assert_eq!(get(&service.url(daily)).0, 200);
    // Other settings in the query: registered again with them.
    assert_eq!(get(&service.url("/ping/nightly?timeout_sec=3600")).0, 200);
    assert_eq!(json(&get(&service.url("/sessions/nightly")).1)["timeout_sec"], 3600.0);
    for bad in [
        "?timeout_sec=0",
        "?timeout_sec=-1",
        "?timeout_sec=nan",
        "?timeout_sec=inf",
        "?timeout_sec=1e-12",
        "?grace_sec=NaN",
        "?timeout_sec=x",
        "?max_missed=0",
        "?colour=red",
        "?agent_type=a%20b",
    ] {
        let (code, body) = get(&service.url(&format!("/ping/nightly{bad}")));
        assert_eq!(code, 400, "{bad}: {body}");
    }

    let mut events = event_stream(&service);
    for path in ["/ping/nightly/fail", "/ping/nightly/fail", "/ping/nightly/start", "/ping/nightly"] {
        assert_eq!(get(&service.url(path)).0, 200, "{path}");
        if path.ends_with("start") {
            assert_eq!(
                json(&get(&service.url("/sessions/nightly")).1)["failed"],
                true,
                "a start is no recovery"
            );
        }
    }
    let kinds: Vec<Value> = (0..3).map(|_| next_event(&mut events)["event"].clone()).collect();
    assert_eq!(kinds, ["failed", "failed", "recovered"]);
}

#[test]
fn settings_in_a_ping_change_settings_only() {
    let service = Service::spawn(&[]);
    let mut events = event_stream(&service);
    // A query leaves out what is the server's default: here, the agent type.
    assert_eq!(put(&service.url("/sessions/job"), r#"{"agent_type": "cron", "timeout_sec": 90000}"#).0, 201);
    assert_eq!(get(&service.url("/ping/job?max_missed=1")).0, 200);
    let status = json(&get(&service.url("/sessions/job")).1);
    assert_eq!(
        (status["agent_type"].as_str(), status["timeout_sec"].as_f64()),
        (Some("default"), Some(30.0))
    );
    assert_eq!(status["max_missed"], 1);
    // Failed, then a start or a fail with other settings: still failed, no recovery.
    assert_eq!(get(&service.url("/ping/job/fail?timeout_sec=90000")).0, 200);
    assert_eq!(get(&service.url("/ping/job/start?timeout_sec=3600")).0, 200);
    let status = json(&get(&service.url("/sessions/job")).1);
    assert_eq!((status["failed"].as_bool(), status["timeout_sec"].as_f64()), (Some(true), Some(3600.0)));
    assert_eq!(get(&service.url("/ping/job/fail?timeout_sec=60")).0, 200);
    assert_eq!(get(&service.url("/ping/job?timeout_sec=60")).0, 200, "the plain ping recovers it");
    let kinds: Vec<Value> = (0..3).map(|_| next_event(&mut events)["event"].clone()).collect();
    assert_eq!(kinds, ["failed", "failed", "recovered"]);
}

#[test]
fn a_start_on_a_failed_session_is_a_sign_of_life() {
    // A second of silence times it out.
    let service = Service::spawn(&["--check-interval", "0.1", "--timeout", "1", "--max-missed", "1"]);
    assert_eq!(get(&service.url("/ping/job/fail")).0, 201);
    // Starts keep it alive, failed, for three timeouts.
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(300));
        assert_eq!(get(&service.url("/ping/job/start")).0, 200, "timed out while starting");
    }
    let status = json(&get(&service.url("/sessions/job")).1);
    assert_eq!((status["failed"].as_bool(), status["missed_beats"].as_u64()), (Some(true), Some(0)));
}

#[test]
fn dropped_events_and_refused_walks_are_in_the_metrics() {
    let service = Service::spawn(&[]);
    assert_eq!(service.metric("heartbeat_monitor_events_dropped_total"), 0);
    assert_eq!(service.metric("heartbeat_monitor_walks_refused_total"), 0);
}

#[test]
fn registration_errors_say_what_was_wrong_in_the_api_s_terms() {
    let service = Service::spawn(&[]);
    let session = service.url("/sessions/a");
    for (body, says) in [
        ("[]", "must be a JSON object"),
        (r#"{"timeout_sec": 0}"#, "timeout_sec must be a number of seconds above 0 and at most 31536000"),
        (r#"{"timeout_sec": 1e9}"#, "not 1000000000"),
        (r#"{"timeout_sec": 1e-12}"#, "timeout_sec must be a number of seconds above 0"),
        (r#"{"max_missed": 0}"#, "max_missed must be a whole number from 1"),
        (r#"{"grace_sec": -1}"#, "grace_sec must be a number of seconds from 0"),
    ] {
        let (code, text) = put(&session, body);
        assert_eq!(code, 400, "{body}");
        assert!(json(&text)["error"].as_str().unwrap().contains(says), "{body}: {text}");
    }
}

#[test]
fn the_timeout_hook_runs_with_the_session_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hook");
    let hook = format!(
        "printf '%s %s %s %s' \"$HEARTBEAT_EVENT\" \"$HEARTBEAT_SESSION\" \"$HEARTBEAT_AGENT_TYPE\" \
         \"$HEARTBEAT_MISSED\" > {0}.tmp && mv {0}.tmp {0}",
        out.display()
    );
    let mut args = FAST.to_vec();
    args.extend(["--on-timeout", &hook]);
    let service = Service::spawn(&args);
    assert_eq!(put(&service.url("/sessions/job-1"), r#"{"agent_type": "cron"}"#).0, 201);
    eventually("the timeout hook's file", || out.exists());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "timeout job-1 cron 2");
    assert_eq!(get(&service.url("/sessions/job-1")).0, 404, "timed out and removed");
    eventually("the hook counted", || service.metric("heartbeat_monitor_hooks_total{outcome=\"run\"}") == 1);
}

#[test]
fn a_hook_that_hangs_is_killed() {
    let mut args = FAST.to_vec();
    args.extend(["--on-warning", "sleep 1000", "--hook-timeout", "0.2"]);
    let service = Service::spawn(&args);
    assert_eq!(put(&service.url("/sessions/slow"), "").0, 201);
    eventually("the hook killed", || {
        service.metric("heartbeat_monitor_hooks_total{outcome=\"timed_out\"}") == 1
    });
}

/// A process a hook left running (`sleep 301x`, its pid in a file), killed
/// when the test ends if it still runs: a failing test leaves nothing behind.
struct Leftover(u32);

impl Leftover {
    /// Waits (bounded) for the hook to write the pid file.
    fn from(file: &std::path::Path) -> Leftover {
        eventually("the hook's pid file", || file.exists());
        Leftover(std::fs::read_to_string(file).unwrap().trim().parse().unwrap())
    }

    /// No such process any more, or a zombie (dead, not yet reaped).
    fn is_gone(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .map_or(true, |s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
    }

    fn assert_gone_soon(&self, what: &str) {
        eventually(what, || self.is_gone());
    }
}

impl Drop for Leftover {
    fn drop(&mut self) {
        let ours =
            std::fs::read(format!("/proc/{}/cmdline", self.0)).is_ok_and(|c| c.starts_with(b"sleep\x00301"));
        if ours && !self.is_gone() {
            let _ = heartbeat::process::send_signal(self.0, libc::SIGKILL);
        }
    }
}

/// A hook (`--on-warning`, the first missed beat of session `s`) that runs
/// `script` with `$D` set (and exported) to a fresh directory.
fn hook_service(script: &str, more: &[&str]) -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let hook = format!("export D={}; {script}", dir.path().display());
    let mut args = FAST.to_vec();
    args.extend(["--on-warning", &hook]);
    args.extend(more);
    let service = Service::spawn(&args);
    assert_eq!(put(&service.url("/sessions/s"), "").0, 201);
    (service, dir)
}

/// `setsid` starts a daemon in a session of its own, outside the hook's
/// process group: it dies when the hook's shell exits all the same.
#[test]
fn a_daemon_a_hook_starts_with_setsid_dies_when_the_hook_ends() {
    let (service, dir) = hook_service(
        "setsid sh -c 'echo $$ > $D/d.tmp && mv $D/d.tmp $D/d; exec sleep 3011' & \
         while [ -d $D ] && [ ! -e $D/d ]; do sleep 0.01; done",
        &[],
    );
    let daemon = Leftover::from(&dir.path().join("d"));
    daemon.assert_gone_soon("the setsid daemon killed when the hook ended");
    assert_eq!(service.metric("heartbeat_monitor_hooks_total{outcome=\"run\"}"), 1);
}

/// The classic daemon: fork, setsid, fork again, the middle one exits; the
/// daemon's parent and grandparent are gone before the hook ends.
#[test]
fn a_daemon_a_hook_starts_by_forking_twice_dies_when_the_hook_ends() {
    let (_service, dir) = hook_service(
        "(setsid sh -c 'sleep 3012 & echo $! > $D/d.tmp && mv $D/d.tmp $D/d' &); \
         while [ -d $D ] && [ ! -e $D/d ]; do sleep 0.01; done",
        &[],
    );
    let daemon = Leftover::from(&dir.path().join("d"));
    daemon.assert_gone_soon("the double-forked daemon killed when the hook ended");
}

/// A hook that outlives `--hook-timeout` is killed with its daemon. (The
/// timeout leaves 3 s for the daemon to start: killed before, it would
/// never write its pid.)
#[test]
fn a_hook_s_daemon_dies_with_it_at_the_hook_timeout() {
    let (service, dir) = hook_service(
        "(setsid sh -c 'sleep 3013 & echo $! > $D/d.tmp && mv $D/d.tmp $D/d' &); exec sleep 3014",
        &["--hook-timeout", "3"],
    );
    let daemon = Leftover::from(&dir.path().join("d"));
    eventually("the hook timed out", || {
        service.metric("heartbeat_monitor_hooks_total{outcome=\"timed_out\"}") == 1
    });
    daemon.assert_gone_soon("the daemon killed at the hook's timeout");
}

/// A stop kills the hooks still running and what they started.
#[test]
fn a_hook_s_daemon_dies_when_the_monitor_stops() {
    let (mut service, dir) = hook_service(
        "echo $$ > $D/h.tmp && mv $D/h.tmp $D/h; \
         (setsid sh -c 'sleep 3015 & echo $! > $D/d.tmp && mv $D/d.tmp $D/d' &); exec sleep 3016",
        &[],
    );
    let (hook, daemon) = (Leftover::from(&dir.path().join("h")), Leftover::from(&dir.path().join("d")));
    service.signal(libc::SIGTERM);
    assert!(service.wait().success());
    hook.assert_gone_soon("the hook killed at the stop");
    daemon.assert_gone_soon("the hook's daemon killed at the stop");
}

/// Even a monitor killed with SIGKILL, which cannot clean up, leaves no
/// hook behind.
#[test]
fn a_hook_s_daemon_dies_when_the_monitor_is_killed() {
    let (mut service, dir) = hook_service(
        "echo $$ > $D/h.tmp && mv $D/h.tmp $D/h; \
         (setsid sh -c 'sleep 3017 & echo $! > $D/d.tmp && mv $D/d.tmp $D/d' &); exec sleep 3018",
        &[],
    );
    let (hook, daemon) = (Leftover::from(&dir.path().join("h")), Leftover::from(&dir.path().join("d")));
    service.signal(libc::SIGKILL);
    service.wait();
    hook.assert_gone_soon("the hook killed with the monitor");
    daemon.assert_gone_soon("the hook's daemon killed with the monitor");
}

/// Reads Server-Sent Events' `data:` lines from a raw connection.
fn event_stream(service: &Service) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(service.http).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("content-type") {
            assert!(line.contains("text/event-stream"), "{line}");
        }
    }
    reader
}

fn next_event(reader: &mut BufReader<TcpStream>) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if let Some(data) = line.strip_prefix("data: ") {
            return json(data.trim_end());
        }
    }
}

#[test]
fn events_stream_in_order() {
    let service = Service::spawn(&[]);
    let mut events = event_stream(&service);
    assert_eq!(put(&service.url("/sessions/a"), "").0, 201);
    assert_eq!(post(&service.url("/sessions/a/fail")).0, 204);
    assert_eq!(post(&service.url("/sessions/a/beat")).0, 204);
    assert_eq!(delete(&service.url("/sessions/a")).0, 204);
    let kinds: Vec<Value> = (0..3).map(|_| next_event(&mut events)).collect();
    assert_eq!(kinds[0]["event"], "failed");
    assert_eq!(kinds[0]["session_id"], "a");
    assert_eq!(kinds[1]["event"], "recovered");
    assert_eq!(kinds[2]["event"], "removed");
    assert_eq!(kinds[2]["reason"], "unregistered");
}

#[test]
fn streams_whose_clients_left_are_forgotten() {
    let service = Service::spawn(&[]);
    for _ in 0..50 {
        drop(event_stream(&service));
    }
    let kept = event_stream(&service);
    eventually("only the open stream counted", || service.metric("heartbeat_monitor_event_streams") == 1);
    drop(kept);
    eventually("none left", || service.metric("heartbeat_monitor_event_streams") == 0);
}

#[test]
fn an_events_client_that_never_reads_is_dropped() {
    let service = Service::spawn(&[]);
    // Connect with a small receive buffer and never read.
    let stuck = TcpStream::connect(service.http).unwrap();
    (&stuck).write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    eventually("the stream opened", || service.metric("heartbeat_monitor_http_requests_total") >= 1);
    assert_eq!(put(&service.url("/sessions/noisy"), "").0, 201);
    // Each fail/beat pair makes two events of about 120 bytes: 8,000 pairs
    // pass the 256 KiB stream queue plus the kernel's buffers on both sides.
    let agent = agent();
    let (fail, beat) = (service.url("/sessions/noisy/fail"), service.url("/sessions/noisy/beat"));
    let mut dropped = false;
    for round in 0..8_000 {
        assert_eq!(agent.post(&fail).send_empty().unwrap().status().as_u16(), 204);
        assert_eq!(agent.post(&beat).send_empty().unwrap().status().as_u16(), 204);
        if round % 500 == 499 && service.metric("heartbeat_monitor_http_streams_dropped_total") == 1 {
            dropped = true;
            break;
        }
    }
    if !dropped {
        eventually("the stuck client dropped", || {
            service.metric("heartbeat_monitor_http_streams_dropped_total") == 1
        });
    }
    // Others were never blocked, and still are not.
    assert_eq!(get(&service.url("/health")).0, 200);
    drop(stuck);
}

#[test]
fn malformed_requests_get_their_4xx_and_others_are_served() {
    let service = Service::spawn(&[]);
    let addr = service.http;
    let huge_header =
        format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(10_000));
    let huge_body = "PUT /sessions/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n";
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("no host", b"GET /health HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("garbage", b"\x16\x03\x01 hello\r\n\r\n".to_vec(), 400),
        ("bad method", b"BREW /sessions/a HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 405),
        ("huge header", huge_header.into_bytes(), 431),
        ("huge body", huge_body.as_bytes().to_vec(), 413),
        ("bad id", b"GET /sessions/a%2Fb HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 400),
        (
            "long id",
            format!("PUT /sessions/{} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(129)).into_bytes(),
            400,
        ),
        ("unknown path", b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), 404),
        (
            "chunked",
            b"PUT /sessions/a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
    ];
    for (what, request, code) in cases {
        assert_eq!(raw_status(addr, &request), code, "{what}");
        assert_eq!(get(&service.url("/health")).0, 200, "after {what}");
    }
    let session = service.url("/sessions/a");
    for (body, says) in [
        ("{", "bad registration body"),
        ("[1]", "JSON object"),
        (r#"{"timeout_sec": "ten"}"#, "bad registration body"),
        (r#"{"timeout_sec": -1}"#, "timeout_sec"),
        (r#"{"timeout_sec": 1e300}"#, "timeout_sec"),
        (r#"{"timeout_sec": 0}"#, "timeout_sec"),
        (r#"{"max_missed": 0}"#, "max_missed"),
        (r#"{"max_missed": -3}"#, "max_missed"),
        (r#"{"detector": "magic"}"#, "bad registration body"),
        (r#"{"agent_type": ""}"#, "agent_type"),
        (r#"{"color": "red"}"#, "unknown field"),
    ] {
        let (code, text) = put(&session, body);
        assert_eq!(code, 400, "{body}: {text}");
        let error = json(&text)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{body}: {error}");
    }
    assert_eq!(get(&session).0, 404, "nothing was registered by a bad request");
    assert_eq!(get(&service.url("/sessions?limit=0")).0, 400);
    assert_eq!(get(&service.url("/sessions?limit=1001")).0, 400);
    assert_eq!(get(&service.url("/sessions?page=2")).0, 400);
}

/// One request, `Connection: close`, on a fresh connection: the status and
/// the body.
fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let request = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{answer:?}"));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    (code, body.to_owned())
}

#[test]
fn dns_rebinding_can_neither_read_nor_change_sessions() {
    let service = Service::spawn(&[]);
    let (addr, port) = (service.http, service.http.port());
    assert_eq!(put(&service.url("/sessions/x"), "").0, 201);
    // A page of evil.example, its name rebound to 127.0.0.1, is same-origin
    // with the monitor as far as the browser knows; its Host gives it away.
    let evil = format!("Host: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n");
    for (request, what) in [
        (format!("GET /sessions HTTP/1.1\r\n{evil}\r\n"), "list"),
        (format!("GET /sessions/x HTTP/1.1\r\n{evil}\r\n"), "read"),
        (format!("GET /events HTTP/1.1\r\n{evil}\r\n"), "stream"),
        (format!("DELETE /sessions/x HTTP/1.1\r\n{evil}\r\n"), "delete"),
        (format!("POST /sessions/x/pause HTTP/1.1\r\n{evil}Content-Length: 0\r\n\r\n"), "pause"),
    ] {
        let (code, body) = raw(addr, &request);
        assert_eq!(code, 403, "{what}: {body}");
        assert!(json(&body)["error"].as_str().unwrap().contains("evil.example"), "{body}");
    }
    let status = json(&get(&service.url("/sessions/x")).1);
    assert_eq!((status["session_id"].as_str(), status["is_paused"].as_bool()), (Some("x"), Some(false)));
    // curl, by address or by localhost, is served.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (code, body) = raw(addr, &format!("GET /sessions/x HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!((code, json(&body)["session_id"].as_str()), (200, Some("x")), "{host}");
    }
    assert_eq!(service.metric("heartbeat_monitor_http_forbidden_total"), 5);
}

#[test]
fn another_sites_page_cannot_pause_or_fail_a_session() {
    let service = Service::spawn(&[]);
    let addr = service.http;
    let host = format!("Host: {addr}\r\n");
    assert_eq!(put(&service.url("/sessions/x"), "").0, 201);
    // A form or `fetch(.., {mode: "no-cors"})` of evil.example: a simple
    // request, no preflight, sent with the page's Origin.
    let pause = format!(
        "POST /sessions/x/pause HTTP/1.1\r\n{host}Origin: http://evil.example\r\n\
         Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    );
    let (code, body) = raw(addr, &pause);
    assert_eq!(code, 403, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("another site"), "{body}");
    // `<img src="http://127.0.0.1:9333/ping/x/fail">`: a GET with no Origin,
    // but Sec-Fetch-Site says where it comes from.
    let img = format!(
        "GET /ping/x/fail HTTP/1.1\r\n{host}Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n\
         Sec-Fetch-Dest: image\r\n\r\n"
    );
    assert_eq!(raw(addr, &img).0, 403);
    assert_eq!(raw(addr, &img.replace("/ping/x/fail", "/ping/new")).0, 403, "nor registers one");
    let status = json(&get(&service.url("/sessions/x")).1);
    assert_eq!((status["is_paused"].as_bool(), status["failed"].as_bool()), (Some(false), Some(false)));
    assert_eq!(get(&service.url("/sessions/new")).0, 404);
    // Reading is not refused: the page cannot read the answer (no CORS).
    let read = format!("GET /health HTTP/1.1\r\n{host}Sec-Fetch-Site: cross-site\r\n\r\n");
    assert_eq!(raw(addr, &read).0, 200);

    // The same requests as curl sends them are served.
    let pause = format!(
        "POST /sessions/x/pause HTTP/1.1\r\n{host}Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(raw(addr, &pause).0, 204);
    assert_eq!(raw(addr, &format!("GET /ping/x/fail HTTP/1.1\r\n{host}\r\n")).0, 200);
    let status = json(&get(&service.url("/sessions/x")).1);
    assert_eq!((status["is_paused"].as_bool(), status["failed"].as_bool()), (Some(true), Some(true)));
}

#[test]
fn allow_host_allow_any_host_and_allow_cross_site_open_what_they_say() {
    let request = |host: &str, extra: &str| format!("GET /ping/p HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
    let cross = "Origin: http://dashboard.example\r\n";
    let service = Service::spawn(&["--allow-host", "monitor.internal", "--allow-host", "hb"]);
    assert_eq!(raw(service.http, &request("monitor.internal:9333", "")).0, 201);
    assert_eq!(raw(service.http, &request("HB", "")).0, 200);
    assert_eq!(raw(service.http, &request("evil.example", "")).0, 403);
    assert_eq!(raw(service.http, &request("hb", cross)).0, 403);
    let service = Service::spawn(&["--allow-any-host"]);
    assert_eq!(raw(service.http, &request("evil.example", "")).0, 201);
    assert_eq!(raw(service.http, &request("evil.example", cross)).0, 403);
    let service = Service::spawn(&["--allow-cross-site"]);
    assert_eq!(raw(service.http, &request("localhost", cross)).0, 201);
    assert_eq!(raw(service.http, &request("evil.example", "")).0, 403);

    let out = heartbeat().args(["monitor", "--allow-host", "monitor:9333"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no port"), "{out:?}");
}

#[test]
fn a_full_monitor_refuses_registrations_with_507() {
    let service = Service::spawn(&["--max-sessions", "2"]);
    assert_eq!(put(&service.url("/sessions/a"), "").0, 201);
    assert_eq!(get(&service.url("/ping/b")).0, 201);
    let (code, body) = put(&service.url("/sessions/c"), "");
    assert_eq!(code, 507, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("maximum of 2"));
    assert_eq!(get(&service.url("/ping/c")).0, 507);
    assert_eq!(put(&service.url("/sessions/a"), "").0, 200, "re-registering one held is fine");
    assert_eq!(json(&get(&service.url("/health")).1)["sessions"], 2);
}

/// Raises this process's open-file limit to its hard limit (harmless to
/// other tests) so it can hold many client sockets.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// Sets the child's open-file limit before it runs.
fn nofile(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[test]
fn a_thousand_idle_connections_hold_no_thread_each() {
    assert!(raise_nofile() >= 2_200, "this test needs 2,200 open files");
    let service = Service::spawn_with(&["--max-connections", "1100"], |cmd| nofile(cmd, 1_200));
    let before = service.threads();
    let idle: Vec<TcpStream> = (0..1_000).map(|_| TcpStream::connect(service.http).unwrap()).collect();
    eventually("all accepted", || service.metric("heartbeat_monitor_http_connections_open") >= 1_000);
    assert!(service.threads() <= before + 1, "{} threads for 1,000 connections", service.threads());
    assert_eq!(get(&service.url("/health")).0, 200);
    drop(idle);
}

/// Asks for `/health` on a kept-alive connection; whether a 200 came back.
fn health_on(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    // The answer is small: its head and JSON body come in one read or a few.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !(got.ends_with(b"}") && got.windows(4).any(|w| w == b"\r\n\r\n")) {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    got.starts_with(b"HTTP/1.1 200 ")
}

#[test]
fn running_out_of_file_descriptors_does_not_end_the_server() {
    let service = Service::spawn_with(&[], |cmd| nofile(cmd, 40));
    // One keep-alive connection made before the limit is hit.
    let mut kept = TcpStream::connect(service.http).unwrap();
    kept.set_read_timeout(Some(BOUND)).unwrap();
    assert!(health_on(&mut kept));
    // Fill the descriptor table: connections beyond it wait in the backlog.
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(TcpStream::connect(service.http).unwrap());
    }
    let mut waiting = TcpStream::connect(service.http).unwrap();
    waiting.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(!health_on(&mut waiting), "answered past the descriptor limit");
    // The connection it has is still served.
    assert!(health_on(&mut kept));
    drop(held);
    // Descriptors free again: the waiting connection is answered, and new ones.
    waiting.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = [0u8; 12];
    waiting.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    assert_eq!(get(&service.url("/health")).0, 200);
    assert!(health_on(&mut kept));
    assert!(service.metric("heartbeat_monitor_http_accept_errors_total") >= 1);
}

#[test]
fn udp_beats_are_taken_counted_and_never_answered() {
    let service = Service::spawn(&[]);
    assert_eq!(put(&service.url("/sessions/a"), "").0, 201);
    assert_eq!(put(&service.url("/sessions/b"), "").0, 201);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let udp = service.udp.unwrap();
    for datagram in [&b"a\n"[..], b"a\nb", b"b\r\n", b"ghost\n", b"bad id\n", b"", b"a\n\xff\n"] {
        socket.send_to(datagram, udp).unwrap();
    }
    eventually("7 datagrams", || service.metric("heartbeat_monitor_udp_datagrams_total") == 7);
    assert_eq!(service.metric("heartbeat_monitor_beats_received_total{transport=\"udp\"}"), 4);
    assert_eq!(service.metric("heartbeat_monitor_beats_unknown_total{transport=\"udp\"}"), 1);
    assert_eq!(service.metric("heartbeat_monitor_udp_dropped_total{reason=\"malformed\"}"), 3);
    assert!(socket.recv(&mut [0u8; 16]).is_err(), "never a reply");
}

#[test]
fn a_token_is_needed_for_every_request_and_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let service = Service::spawn(&["--token-file", token.to_str().unwrap()]);
    let (code, body) = get(&service.url("/health"));
    assert_eq!(code, 401, "{body}");
    assert_eq!(put(&service.url("/sessions/a"), "").0, 401);
    assert_eq!(
        answer(agent().get(&service.url("/health")).header("Authorization", "Bearer wrong").call()).0,
        401
    );
    let with = |req: ureq::RequestBuilder<ureq::typestate::WithoutBody>| {
        answer(req.header("Authorization", "Bearer s3cret-token").call())
    };
    assert_eq!(with(agent().get(&service.url("/ping/a"))).0, 201);

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = service.udp.unwrap();
    socket.send_to(b"a\n", udp).unwrap();
    socket.send_to(b"wrong a\n", udp).unwrap();
    socket.send_to(b"s3cret-token a\n", udp).unwrap();
    let metric = |series: &str| {
        let (code, text) = with(agent().get(&service.url("/metrics")));
        assert_eq!(code, 200);
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<u64>().ok()).unwrap()
    };
    eventually("3 datagrams", || metric("heartbeat_monitor_udp_datagrams_total") == 3);
    assert_eq!(metric("heartbeat_monitor_udp_dropped_total{reason=\"unauthorized\"}"), 2);
    assert_eq!(metric("heartbeat_monitor_beats_received_total{transport=\"udp\"}"), 1);
}

#[test]
fn a_restart_keeps_every_session_and_holds_no_downtime_against_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().unwrap();
    let args = ["--check-interval", "0.05", "--timeout", "0.3", "--max-missed", "2", "--state", state_arg];
    let mut first = Service::spawn(&args);
    for id in ["a", "b", "c"] {
        assert_eq!(put(&first.url(&format!("/sessions/{id}")), r#"{"agent_type": "w"}"#).0, 201);
    }
    assert_eq!(put(&first.url("/sessions/daily"), r#"{"timeout_sec": 86400}"#).0, 201);
    assert_eq!(post(&first.url("/sessions/c/pause")).0, 204);
    first.signal(libc::SIGTERM);
    assert!(first.wait().success());
    assert!(state.exists());

    // Down for longer than any session's timeout and misses.
    thread::sleep(Duration::from_millis(900));
    let second = Service::spawn(&args);
    let page = json(&get(&second.url("/sessions")).1);
    assert_eq!(page["total"], 4, "{page}");
    for s in page["sessions"].as_array().unwrap() {
        assert_eq!(s["is_healthy"], true, "the downtime is not held against {s}");
    }
    assert_eq!(json(&get(&second.url("/sessions/c")).1)["is_paused"], true);
    assert_eq!(json(&get(&second.url("/sessions/a")).1)["agent_type"], "w");
    // `a` goes on beating; `b` really stopped, and times out after all.
    let deadline = Instant::now() + BOUND;
    while get(&second.url("/sessions/b")).0 == 200 {
        assert!(Instant::now() < deadline, "b never timed out");
        assert_eq!(post(&second.url("/sessions/a/beat")).0, 204);
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&second.url("/sessions/a")).0, 200);
    assert_eq!(get(&second.url("/sessions/daily")).0, 200);
}

#[test]
fn a_corrupt_state_file_stops_the_start_and_reset_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, "{\"format\": \"heartbeat-monitor-state\", \"vers").unwrap();
    let out = heartbeat()
        .args(["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--state", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("state.json") && stderr.contains("corrupt") && stderr.contains("--state-reset"),
        "{stderr}"
    );
    let service = Service::spawn(&["--udp", "off", "--state", state.to_str().unwrap(), "--state-reset"]);
    assert_eq!(json(&get(&service.url("/health")).1)["sessions"], 0);
}

#[test]
fn the_remote_client_beats_a_real_monitor() {
    let service = Service::spawn(&[]);
    let url = format!("http://{}", service.http);
    let options = heartbeat::RemoteOptions { agent_type: Some("agent".into()), ..Default::default() };
    let mut client =
        heartbeat::HeartbeatClient::remote_with(&url, "remote-1", Duration::from_millis(50), options)
            .unwrap();
    eventually("three beats", || client.beats_sent() >= 3);
    let status = json(&get(&service.url("/sessions/remote-1")).1);
    assert_eq!(status["agent_type"], "agent", "registered on its first beat");
    let started = Instant::now();
    client.stop();
    assert!(started.elapsed() < BOUND);
}

#[test]
fn send_beats_once_or_every_interval() {
    let service = Service::spawn(&[]);
    let url = format!("http://{}", service.http);
    let out = heartbeat().args(["send", &url, "nightly"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&service.url("/sessions/nightly")).0, 200);
    let out = heartbeat().args(["send", &url, "nightly", "--fail"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(json(&get(&service.url("/sessions/nightly")).1)["failed"], true);
    let out = heartbeat().args(["send", &url, "bad id"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("session id"));
    // The monitor's own refusal is passed on: a full monitor.
    let full = Service::spawn(&["--max-sessions", "1", "--udp", "off"]);
    assert_eq!(put(&full.url("/sessions/one"), "").0, 201);
    let out = heartbeat().args(["send", &format!("http://{}", full.http), "two"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("507") && said.contains("maximum of 1"), "{said}");

    for bad in [&url[..], "127.0.0.1"] {
        let out = heartbeat().args(["send", bad, "nightly", "--udp"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    let udp = service.udp.unwrap().to_string();
    assert!(heartbeat().args(["send", &udp, "nightly", "--udp"]).status().unwrap().success());
    eventually("the udp beat", || {
        service.metric("heartbeat_monitor_beats_received_total{transport=\"udp\"}") == 1
    });

    let mut every = heartbeat().args(["send", &url, "loop", "--every", "0.05"]).spawn().unwrap();
    eventually("registered by the loop", || get(&service.url("/sessions/loop")).0 == 200);
    heartbeat::process::send_signal(every.id(), libc::SIGTERM).unwrap();
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = every.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = heartbeat().args(["send", &format!("http://{closed}"), "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn listen_and_udp_take_host_names_as_serve_does() {
    let mut child = heartbeat()
        .args(["monitor", "--listen", "localhost:0", "--udp", "localhost:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = read_lines(child.stdout.take().unwrap());
    let mut child = child::Spawned(child);
    let line = lines.recv_timeout(BOUND).expect("the listening line within the bound");
    let http: SocketAddr = line.strip_prefix("listening on http://").and_then(|a| a.parse().ok()).unwrap();
    let line = lines.recv_timeout(BOUND).expect("the udp line within the bound");
    let udp: SocketAddr = line.strip_prefix("udp on ").and_then(|a| a.parse().ok()).unwrap();
    assert!(http.ip().is_loopback() && udp.ip().is_loopback(), "{http} {udp}");
    assert_eq!(get(&format!("http://{http}/health")).0, 200);
    child.signal(libc::SIGTERM);
    assert!(child.wait_bounded(BOUND, "monitor").success());

    for flag in ["--listen", "--udp"] {
        let out = heartbeat().args(["monitor", flag, "no-port"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains("not HOST:PORT"), "{flag}: {err}");
    }
}

#[test]
fn sigterm_saves_and_exits_zero_and_idle_uses_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.json");
    let mut service = Service::spawn(&["--state", state.to_str().unwrap()]);
    assert_eq!(put(&service.url("/sessions/a"), "").0, 201);
    // Idle: no thread spins. The CPU time used over half a second of idling
    // stays a tiny fraction of it (scheduler ticks are 4 ms at worst).
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu(service.child.id());
    thread::sleep(Duration::from_millis(500));
    let used = cpu(service.child.id()) - before;
    assert!(used <= 5, "{used} clock ticks used while idle");
    service.signal(libc::SIGTERM);
    assert!(service.wait().success());
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["sessions"][0]["session_id"], "a");
}

#[test]
fn the_monitor_beats_its_own_file_and_tells_systemd_it_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let beat_file = dir.path().join("monitor.json");
    let notify = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(BOUND)).unwrap();
    let mut service =
        Service::spawn_with(&["--beat-file", beat_file.to_str().unwrap(), "--systemd"], |cmd| {
            cmd.env("NOTIFY_SOCKET", &notify);
        });
    let mut message = [0u8; 256];
    let n = systemd.recv(&mut message).unwrap();
    assert!(String::from_utf8_lossy(&message[..n]).contains("READY=1"));
    let state = heartbeat::read_state(&beat_file).unwrap();
    assert_eq!(state.metadata["role"], "monitor");
    assert_eq!(state.metadata["http"], service.http.to_string());
    service.signal(libc::SIGTERM);
    // STOPPING=1 as it stops (WATCHDOG=1 may come before it).
    loop {
        let n = systemd.recv(&mut message).expect("STOPPING=1 within the bound");
        if &message[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(service.wait().success());
    assert!(!beat_file.exists(), "removed at a clean stop");
}

/// Runs `spawn` with its stderr piped; the stderr, whole, once it closes
/// (the process exited and so did the hooks it killed), within the bound.
fn with_stderr(
    spawn: impl FnOnce(&mut dyn FnMut(&mut Command)) -> Service,
) -> (Service, mpsc::Receiver<String>) {
    let mut service = spawn(&mut |cmd| {
        cmd.stderr(Stdio::piped());
    });
    let mut stderr = service.child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Read as it comes: a flood must not block the monitor on a full pipe.
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    (service, rx)
}

/// Stops the service with SIGTERM and returns what it wrote on stderr.
fn stop_and_read(mut service: Service, stderr: &mpsc::Receiver<String>) -> String {
    service.signal(libc::SIGTERM);
    assert!(service.wait().success());
    stderr.recv_timeout(BOUND).expect("stderr closed within the bound")
}

/// Issue 22, defect 5: a failure report wrote a WARN line each, and each
/// one's hook dropped for a full queue another (98,151 lines, 10.7 MB for
/// 50,000 reports). Now each kind of line is limited to a few per 10 s,
/// with the count of the others.
#[test]
fn a_flood_of_failure_reports_writes_a_few_lines_that_count_the_others() {
    const REPORTS: usize = 10_000;
    const SENDERS: usize = 4;
    // A hook that fails: 4 run at once, 1,024 wait, the others are dropped.
    let (service, stderr) = with_stderr(|tweak| {
        Service::spawn_with(&["--on-timeout", "exit 3", "--udp", "off"], |cmd| tweak(cmd))
    });
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..SENDERS {
            s.spawn(|| {
                let agent = agent();
                for _ in 0..REPORTS / SENDERS {
                    let status = answer(agent.get(&service.url("/ping/x/fail")).call()).0;
                    assert!(status == 200 || status == 201, "{status}");
                }
            });
        }
    });
    let took = started.elapsed();
    let failed = "heartbeat_monitor_events_total{kind=\"failed\"}";
    eventually("every report's event handled", || service.metric(failed) == REPORTS as u64);
    let dropped = service.metric("heartbeat_monitor_hooks_total{outcome=\"dropped\"}");
    let hooks_failed = service.metric("heartbeat_monitor_hooks_total{outcome=\"failed\"}");
    assert!(dropped > 0 && hooks_failed > 0, "{dropped} hooks dropped, {hooks_failed} failed");
    let log = stop_and_read(service, &stderr);
    let lines = log.lines().count();
    // Per kind (failure reports, hooks dropped, hooks failed), at most 10
    // lines and a summary per 10 s window the flood touched, and a few
    // lines of the monitor's own.
    let windows = took.as_secs() as usize / 10 + 2;
    assert!(lines <= 3 * 11 * windows + 5, "{lines} lines in {took:?}:\n{log}");
    assert_eq!(told(&log, "reported a failure", "sessions reported a failure:"), REPORTS as u64, "{log}");
    let told_dropped = told(&log, "dropped (", "hook queue full, hooks dropped:");
    assert!(told_dropped >= dropped && told_dropped <= REPORTS as u64, "{told_dropped} of {dropped}:\n{log}");
    let told_failed = told(&log, "failed: exit status: 3", "hooks failed:");
    assert!(told_failed >= hooks_failed, "{told_failed} of {hooks_failed}:\n{log}");
}

/// Bad datagrams are counted, never logged one by one.
#[test]
fn a_flood_of_bad_datagrams_writes_no_line_each() {
    const DATAGRAMS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (service, stderr) = with_stderr(|tweak| {
        Service::spawn_with(&["--token-file", token.to_str().unwrap()], |cmd| tweak(cmd))
    });
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = service.udp.unwrap();
    let bad: [&[u8]; 4] =
        [b"wrong x\n", b"s3cret-token bad id\n", b"s3cret-token \xff\n", b"no-token-at-all"];
    let metric = |series: &str| {
        let response =
            agent().get(&service.url("/metrics")).header("Authorization", "Bearer s3cret-token").call();
        let (code, text) = answer(response);
        assert_eq!(code, 200);
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<u64>().ok()).unwrap()
    };
    let mut sent = 0;
    // In rounds the receive buffer holds, so that the kernel drops none.
    while sent < DATAGRAMS {
        for _ in 0..1000 {
            socket.send_to(bad[sent as usize % bad.len()], udp).unwrap();
            sent += 1;
        }
        eventually("the round taken", || metric("heartbeat_monitor_udp_datagrams_total") == sent);
    }
    let dropped =
        |reason: &str| metric(&format!("heartbeat_monitor_udp_dropped_total{{reason=\"{reason}\"}}"));
    assert_eq!(dropped("unauthorized") + dropped("malformed"), DATAGRAMS);
    let log = stop_and_read(service, &stderr);
    assert!(log.lines().count() <= 3, "{log}");
}

/// A metric read over a connection already open (none can be opened while
/// the monitor is out of descriptors).
fn metric_on(stream: &mut TcpStream, series: &str) -> u64 {
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let body_start = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the metrics connection closed");
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    while got.len() < body_start + length {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the metrics connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&got[body_start..body_start + length]);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series}"))
}

/// Clients that keep the monitor at its descriptor limit make accept fail
/// and work again as often as they close a connection: a warning and an
/// info line each time, before; now as many as the limit allows.
#[test]
fn accept_failing_and_working_again_in_a_loop_writes_a_few_lines() {
    const EPISODES: usize = 50;
    let (service, stderr) = with_stderr(|tweak| {
        Service::spawn_with(&["--udp", "off"], |cmd| {
            nofile(cmd, 40);
            cmd.env("RUST_LOG", "info");
            tweak(cmd);
        })
    });
    let mut kept = TcpStream::connect(service.http).unwrap();
    kept.set_read_timeout(Some(BOUND)).unwrap();
    let accepted = "heartbeat_monitor_http_connections_accepted_total";
    // More than the descriptors: the rest waits in the backlog.
    let mut held: std::collections::VecDeque<TcpStream> =
        (0..60).map(|_| TcpStream::connect(service.http).unwrap()).collect();
    eventually("accept failing", || metric_on(&mut kept, "heartbeat_monitor_http_accept_errors_total") > 0);
    let started = Instant::now();
    for _ in 0..EPISODES {
        // One descriptor free: the next accept works, the one after fails.
        let before = metric_on(&mut kept, accepted);
        drop(held.pop_front());
        held.push_back(TcpStream::connect(service.http).unwrap());
        eventually("an accept again", || metric_on(&mut kept, accepted) > before);
    }
    let took = started.elapsed();
    drop(held);
    drop(kept);
    let log = stop_and_read(service, &stderr);
    let episodes = log.lines().filter(|l| l.contains("accepting connections again")).count();
    let failures = log.lines().filter(|l| l.contains("accept failed")).count();
    let windows = took.as_secs() as usize / 10 + 2;
    assert!(
        failures <= 10 * windows && episodes <= failures,
        "{failures} and {episodes} in {took:?}:\n{log}"
    );
    assert!(log.lines().count() <= 21 * windows + 10, "{took:?}:\n{log}");
    assert!(log.contains("similar lines suppressed"), "{log}");
}
