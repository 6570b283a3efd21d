//! The `heartbeat` binary as a user, a Docker HEALTHCHECK or systemd meets it.
//! Every child process is killed on drop and every wait is bounded.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use heartbeat::format_timestamp;
use serde_json::Value;

#[path = "support/child.rs"]
mod child;
use child::heartbeat;

const BOUND: Duration = Duration::from_secs(10);

fn run(args: &[&str]) -> Output {
    heartbeat().args(args).output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process that is killed if the test ends before it does.
struct Running(Child);

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        Running(cmd.stdin(Stdio::null()).spawn().unwrap())
    }

    fn signal(&self, sig: i32) {
        heartbeat::process::send_signal(self.0.id(), sig).unwrap();
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit within {BOUND:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + BOUND;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {BOUND:?}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a heartbeat file beaten `ago` before now (negative: in the future).
fn file_aged(dir: &Path, name: &str, ago_secs: f64) -> PathBuf {
    let now = SystemTime::now();
    let t = if ago_secs >= 0.0 {
        now - Duration::from_secs_f64(ago_secs)
    } else {
        now + Duration::from_secs_f64(-ago_secs)
    };
    let path = dir.join(name);
    let json = format!(r#"{{"pid": 4242, "hostname": "web-1", "timestamp": "{}"}}"#, format_timestamp(t));
    std::fs::write(&path, json).unwrap();
    path
}

#[test]
fn check_exit_codes_for_each_case() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fresh = file_aged(d, "fresh.json", 1.0);
    let stale = file_aged(d, "stale.json", 120.0);
    let skewed = file_aged(d, "skewed.json", -3600.0);
    let corrupt = d.join("corrupt.json");
    std::fs::write(&corrupt, "{\"pid\": 1, \"timest").unwrap();
    let missing = d.join("missing.json");
    let unreadable = d.join("a-directory");
    std::fs::create_dir(&unreadable).unwrap();

    let check = |p: &Path| run(&["check", p.to_str().unwrap(), "--max-age", "30"]);
    let out = check(&fresh);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("alive: "), "{}", stdout(&out));
    assert!(stdout(&out).contains("pid 4242 on web-1"), "{}", stdout(&out));
    for (path, why) in [
        (&stale, "over the max age of 30.000s (given)"),
        (&skewed, "in the future (clock skew)"),
        (&corrupt, "is not a JSON object"),
        (&missing, "does not exist"),
        (&unreadable, "cannot read"),
    ] {
        let out = check(path);
        assert_eq!(code(&out), 1, "{}: {}", path.display(), stdout(&out));
        let text = stdout(&out);
        assert!(text.starts_with("not alive: ") && text.contains(why), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}

#[test]
fn check_json_prints_the_state_and_its_age() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = file_aged(dir.path(), "fresh.json", 2.0);
    let out = run(&["check", fresh.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code(&out), 0);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["alive"], true);
    assert_eq!(v["status"], "alive");
    assert_eq!(v["max_age_sec"], 30.0);
    let age = v["age_sec"].as_f64().unwrap();
    assert!((2.0..30.0).contains(&age), "{age}");
    assert_eq!(v["state"]["pid"], 4242);
    assert_eq!(v["state"]["hostname"], "web-1");

    let out = run(&["check", dir.path().join("nope.json").to_str().unwrap(), "--format", "json"]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((v["alive"].as_bool(), v["status"].as_str()), (Some(false), Some("missing")));
    assert!(v["state"].is_null() && v["age_sec"].is_null());
}

#[test]
fn check_nagios_uses_the_plugin_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("corrupt.json"), "]").unwrap();
    let cases = [
        (file_aged(d, "ok.json", 1.0), 0, "HEARTBEAT OK - "),
        (file_aged(d, "warn.json", 25.0), 1, "HEARTBEAT WARNING - "), // over 2/3 of 30 s
        (file_aged(d, "crit.json", 60.0), 2, "HEARTBEAT CRITICAL - "),
        (d.join("missing.json"), 2, "HEARTBEAT CRITICAL - "),
        (d.join("corrupt.json"), 3, "HEARTBEAT UNKNOWN - "),
        (file_aged(d, "skew.json", -600.0), 3, "HEARTBEAT UNKNOWN - "),
    ];
    for (path, want, prefix) in cases {
        let out = run(&["check", path.to_str().unwrap(), "--max-age", "30", "--format", "nagios"]);
        assert_eq!(code(&out), want, "{}: {}", path.display(), stdout(&out));
        assert!(stdout(&out).starts_with(prefix), "{}", stdout(&out));
    }
    let out = run(&["check", d.join("ok.json").to_str().unwrap(), "--format", "nagios"]);
    assert!(stdout(&out).contains("| age="), "perfdata: {}", stdout(&out));
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for args in [
        &["check"][..],
        &["check", "f.json", "--max-age", "soon"],
        &["check", "f.json", "--max-age", "-5"],
        &["check", "f.json", "--format", "xml"],
        &["beat"],
        &["beat", "f.json", "--interval=-1"],
        &["beat", "f.json", "--meta", "novalue"],
        &["beat", "f.json", "--dir", "d"],
        &["frobnicate"],
    ] {
        let out = run(args);
        assert_eq!(code(&out), 2, "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in ["beat", "check"] {
        let out = run(&[cmd, "--help"]);
        assert_eq!(code(&out), 0);
        assert!(stdout(&out).contains("Examples:"), "{cmd}: {}", stdout(&out));
    }
    assert_eq!(code(&run(&["--help"])), 0);
}

#[test]
fn beat_wraps_a_command_and_returns_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run/child.json");
    let f = file.to_str().unwrap();
    // The child sees a live heartbeat file while it runs, then exits 3.
    let script =
        format!("{} check {f} --max-age 30 >/dev/null && exit 3; exit 9", env!("CARGO_BIN_EXE_heartbeat"));
    let out = run(&["beat", f, "--", "sh", "-c", &script]);
    assert_eq!(code(&out), 3, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!file.exists(), "the file is removed when the child exits");

    let out = run(&["beat", f, "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(code(&out), 128 + libc::SIGTERM);
    assert!(!file.exists());

    let out = run(&["beat", f, "--keep", "--", "true"]);
    assert_eq!(code(&out), 0);
    assert!(file.exists(), "--keep leaves the last beat");

    let out = run(&["beat", f, "--", "/nonexistent/program"]);
    assert_eq!(code(&out), 127);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/program"));
}

#[test]
fn beat_forwards_sigterm_to_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fwd.json");
    let ready = dir.path().join("ready");
    let script = format!("trap 'exit 42' TERM; touch {}; while :; do sleep 0.02; done", ready.display());
    let mut hb =
        Running::spawn(heartbeat().args(["beat", file.to_str().unwrap(), "--", "sh", "-c", &script]));
    wait_for(&ready);
    hb.signal(libc::SIGTERM);
    assert_eq!(hb.wait().code(), Some(42), "the child's own exit code, after its TERM trap");
    assert!(!file.exists());
}

#[test]
fn beat_without_a_command_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("solo.json");
    let mut hb = Running::spawn(heartbeat().args(["beat", file.to_str().unwrap(), "--meta", "role=sidecar"]));
    wait_for(&file);
    let out = run(&["check", file.to_str().unwrap(), "--format", "json"]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["state"]["pid"], hb.0.id());
    assert_eq!(v["state"]["metadata"]["role"], "sidecar");
    hb.signal(libc::SIGTERM);
    assert_eq!(hb.wait().code(), Some(0));
    assert!(!file.exists());
}

#[test]
fn beat_in_directory_mode_uses_the_scanner_naming() {
    let dir = tempfile::tempdir().unwrap();
    let wrappers = dir.path().join("wrappers");
    let listing = dir.path().join("listing");
    let script = format!("ls {} > {}", wrappers.display(), listing.display());
    let mut hb = Running::spawn(heartbeat().args([
        "beat",
        "--dir",
        wrappers.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]));
    assert_eq!(hb.wait().code(), Some(0));
    let names = std::fs::read_to_string(&listing).unwrap();
    let name = names.trim();
    let prefix = format!("heartbeat-{}-", hb.0.id());
    assert!(
        name.starts_with(&prefix) && name.ends_with(".json") && name.len() == prefix.len() + 36 + 5,
        "{name}"
    );
    assert_eq!(std::fs::read_dir(&wrappers).unwrap().count(), 0, "removed on exit");
}

#[test]
fn beat_fails_clearly_when_the_file_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let target = blocker.join("hb.json");
    let out = run(&["beat", target.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write heartbeat file") && err.contains("hb.json"), "{err}");
    let out = run(&["beat", target.to_str().unwrap(), "--", "true"]);
    assert_eq!(code(&out), 125, "heartbeat's own failure, not the command's");
}

#[test]
fn systemd_gets_ready_and_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(BOUND)).unwrap();
    let file = dir.path().join("sd.json");
    let out = heartbeat()
        .args(["beat", file.to_str().unwrap(), "--systemd", "--", "true"])
        .env("NOTIFY_SOCKET", &sock_path)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let mut got = Vec::new();
    let mut buf = [0u8; 128];
    loop {
        let n = sock.recv(&mut buf).expect("a notification within the bound");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if got.last().unwrap() == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(got[0], "READY=1\nWATCHDOG=1");
    assert!(got[1..got.len() - 1].iter().all(|m| m == "WATCHDOG=1"), "{got:?}");

    // WATCHDOG_PID naming another process: READY only, no watchdog pings.
    let out = heartbeat()
        .args(["beat", file.to_str().unwrap(), "--systemd", "--", "true"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_PID", "1")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    assert_eq!(sock.recv(&mut buf).map(|n| buf[..n].to_vec()).unwrap(), b"READY=1");
    assert_eq!(sock.recv(&mut buf).map(|n| buf[..n].to_vec()).unwrap(), b"STOPPING=1");

    // Without NOTIFY_SOCKET, --systemd does nothing and nothing fails.
    assert_eq!(code(&run(&["beat", file.to_str().unwrap(), "--systemd", "--", "true"])), 0);
}

#[test]
fn check_never_panics_on_hostile_files_or_paths() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fresh = format_timestamp(SystemTime::now());
    let cases = [
        // A valid RFC 3339 time that is year 10000 in UTC.
        (r#"{"pid": 1, "timestamp": "9999-12-31T23:59:59-23:59"}"#.to_owned(), 1, 3),
        (format!(r#"{{"pid": 1, "timestamp": "{fresh}", "started_at": "9999-12-31T23:59:59-23:59"}}"#), 1, 3),
        (format!(r#"{{"pid": 99999999999999, "timestamp": "{fresh}"}}"#), 0, 0),
        (
            format!(
                r#"{{"pid": 1, "timestamp": "{fresh}", "metadata": {{"deep": {}}}}}"#,
                "[".repeat(200) + &"]".repeat(200)
            ),
            // Past serde_json's nesting limit: corrupt, not a stack overflow.
            1,
            3,
        ),
    ];
    for (i, (json, text_code, nagios_code)) in cases.iter().enumerate() {
        let path = d.join(format!("{i}.json"));
        std::fs::write(&path, json).unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(code(&run(&["check", p])), *text_code, "{json}");
        assert_eq!(code(&run(&["check", p, "--format", "nagios"])), *nagios_code, "{json}");
        let out = run(&["check", p, "--format", "json"]);
        assert_eq!(code(&out), *text_code, "{json}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<Value>(&stdout(&out)).unwrap();
    }
    // A path that is not UTF-8.
    let odd = d.join(std::ffi::OsStr::from_bytes(b"\xff.json"));
    let out = heartbeat().arg("check").arg(&odd).args(["--format", "json"]).output().unwrap();
    assert_eq!(code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["status"], "missing");
}

#[test]
fn check_output_stays_one_line_whatever_the_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.json");
    let json = serde_json::json!({
        "pid": 1,
        "hostname": "h\nHEARTBEAT OK - fake | age=0s;1;2;0",
        "timestamp": format_timestamp(SystemTime::now() - Duration::from_secs(100)),
    });
    std::fs::write(&path, json.to_string()).unwrap();
    for format in ["text", "nagios"] {
        let out = run(&["check", path.to_str().unwrap(), "--format", format]);
        assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
        assert!(stdout(&out).contains("h\\nHEARTBEAT"), "{}", stdout(&out));
    }
}

#[test]
fn check_survives_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_aged(dir.path(), "fresh.json", 1.0);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = heartbeat().args(["check", path.to_str().unwrap()]).stdout(writer).status().unwrap();
    assert_eq!(status.code(), Some(0), "the verdict, not a panic");
}

#[test]
fn beat_stops_cleanly_on_sighup_and_forwards_it_to_a_child() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hup.json");
    let mut hb = Running::spawn(heartbeat().args(["beat", file.to_str().unwrap()]));
    wait_for(&file);
    hb.signal(libc::SIGHUP);
    assert_eq!(hb.wait().code(), Some(0));
    assert!(!file.exists());

    let ready = dir.path().join("ready");
    let script = format!("trap 'exit 5' HUP; touch {}; while :; do sleep 0.02; done", ready.display());
    let mut hb =
        Running::spawn(heartbeat().args(["beat", file.to_str().unwrap(), "--", "sh", "-c", &script]));
    wait_for(&ready);
    hb.signal(libc::SIGHUP);
    assert_eq!(hb.wait().code(), Some(5));
    assert!(!file.exists());
}

/// A PID above the kernel's limit (`pid_max` is at most 2^22): never alive.
const DEAD_PID: i64 = 4_194_304;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes a heartbeat file as the crate's writer would for `pid`, beaten
/// `ago` seconds before now, every `interval` seconds (none: no `interval_sec`).
fn file_of(dir: &Path, name: &str, pid: i64, ago: u64, interval: Option<u64>) -> PathBuf {
    let mut state = heartbeat::HeartbeatState::for_current_process(
        SystemTime::now() - Duration::from_secs(ago),
        Duration::from_secs(interval.unwrap_or(10)),
        Default::default(),
    );
    state.pid = pid;
    state.interval = interval.map(Duration::from_secs);
    let path = dir.join(name);
    heartbeat::write_state(&path, &state, heartbeat::WriteOptions::default()).unwrap();
    path
}

#[test]
fn beat_once_writes_one_beat_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub/cron.json");
    let out = run(&["beat", file.to_str().unwrap(), "--once", "--interval", "60", "--meta", "job=backup"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let state = heartbeat::read_state(&file).unwrap();
    assert_eq!(state.interval, Some(Duration::from_secs(60)));
    assert_eq!(state.metadata["job"], "backup");
    assert!(!dir.path().join("sub/cron.json.lock").exists(), "the lock goes with the process");
    let out = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));

    // --dir too: one scanner-named file, left in place.
    let out = run(&["beat", "--dir", dir.path().to_str().unwrap(), "--once"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("heartbeat-"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Not with a command to wrap.
    assert_eq!(code(&run(&["beat", file.to_str().unwrap(), "--once", "--", "true"])), 2);
}

#[test]
fn beat_logs_where_it_writes_at_the_default_level() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.json");
    let mut beat = Running::spawn(
        heartbeat().args(["beat", file.to_str().unwrap(), "--interval", "30"]).stderr(Stdio::piped()),
    );
    wait_for(&file);
    beat.signal(libc::SIGTERM);
    assert!(beat.wait().success());
    let mut err = String::new();
    std::io::Read::read_to_string(beat.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(&format!("beating {} every 30.000s (pid {})", file.display(), beat.0.id())),
        "{err}"
    );
    assert!(err.contains("signal SIGTERM received; stopping"), "the signal by its name: {err}");
}

#[test]
fn a_second_beat_on_one_file_is_refused_unless_it_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.json");
    let f = file.to_str().unwrap();
    let mut first = Running::spawn(heartbeat().args(["beat", f, "--interval", "1"]).stderr(Stdio::piped()));
    wait_for(&dir.path().join("one.json.lock"));
    wait_for(&file);

    let out = run(&["beat", f, "--once"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("is already being written by another beater (pid {})", first.0.id())),
        "{err}"
    );
    assert_eq!(heartbeat::read_state(&file).unwrap().pid, i64::from(first.0.id()), "the file is untouched");

    // --take-over: the new one writes, the first stops at its next beat and exits 1.
    let mut second = Running::spawn(heartbeat().args(["beat", f, "--interval", "1", "--take-over"]));
    let status = first.wait();
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(first.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains(&format!("was taken over by another beater (pid {})", second.0.id())), "{err}");
    assert_eq!(heartbeat::read_state(&file).unwrap().pid, i64::from(second.0.id()));
    assert!(file.exists(), "the first leaves the file to the new writer");

    // A crash leaves no stale lock: the kernel drops it with the process.
    second.0.kill().unwrap();
    second.wait();
    let out = run(&["beat", f, "--once"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn metadata_too_large_for_readers_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    // Nine arguments of 120 KB (one argument may not pass 128 KiB).
    let values: Vec<String> = (0..9).map(|i| format!("k{i}={}", "x".repeat(120_000))).collect();
    let mut args = vec!["beat".to_owned(), file.to_str().unwrap().to_owned(), "--once".to_owned()];
    for v in &values {
        args.push("--meta".to_owned());
        args.push(v.clone());
    }
    let out = heartbeat().args(&args).output().unwrap();
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("the metadata is too large"), "{}", stderr(&out));
    assert!(!file.exists());
}

#[test]
fn check_max_age_auto_reads_the_files_own_interval() {
    let dir = tempfile::tempdir().unwrap();
    let me = i64::from(std::process::id());
    // Beats every 60 s, last one 100 s ago: alive by 3 intervals, not by 1.
    let slow = file_of(dir.path(), "slow.json", me, 100, Some(60));
    let s = slow.to_str().unwrap();
    let out = run(&["check", s]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("within the max age of 3m 0s (auto: the file's interval times --missed)"),
        "{}",
        stdout(&out)
    );
    let out = run(&["check", s, "--missed", "1"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("over the max age of 1m 0s"), "{}", stdout(&out));
    assert_eq!(code(&run(&["check", s, "--max-age", "30"])), 1, "a given max age wins");
    let out = run(&["check", s, "--format", "json"]);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((json["max_age_sec"].as_f64(), json["max_age_from"].as_str()), (Some(180.0), Some("auto")));

    // No interval in the file: 30 s, and the output says why.
    let bare = file_of(dir.path(), "bare.json", me, 20, None);
    let out = run(&["check", bare.to_str().unwrap()]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("30.000s (auto: the file has no interval)"), "{}", stdout(&out));
    assert_eq!(code(&run(&["check", "x.json", "--missed", "0"])), 2);
}

#[test]
fn check_pid_requires_the_writer_to_be_alive() {
    let dir = tempfile::tempdir().unwrap();
    let mine = file_of(dir.path(), "mine.json", i64::from(std::process::id()), 1, Some(10));
    let out = run(&["check", mine.to_str().unwrap(), "--pid"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));

    // Fresh, but its writer is gone: alive without --pid, not with it.
    let dead = file_of(dir.path(), "dead.json", DEAD_PID, 1, Some(10));
    let d = dead.to_str().unwrap();
    assert_eq!(code(&run(&["check", d])), 0);
    let out = run(&["check", d, "--pid"]);
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains(&format!("but pid {DEAD_PID} is not running")), "{}", stdout(&out));
    let json: Value =
        serde_json::from_str(&stdout(&run(&["check", d, "--pid", "--format", "json"]))).unwrap();
    assert_eq!(json["status"], "gone");
    assert!(stdout(&run(&["check", d, "--pid", "--format", "nagios"])).starts_with("HEARTBEAT CRITICAL"));

    // A live PID that now belongs to another process (another start time).
    let mut state = heartbeat::read_state(&mine).unwrap();
    state.process_start_ticks = state.process_start_ticks.map(|t| t + 1);
    let reused = dir.path().join("reused.json");
    heartbeat::write_state(&reused, &state, heartbeat::WriteOptions::default()).unwrap();
    if state.process_start_ticks.is_some() {
        let out = run(&["check", reused.to_str().unwrap(), "--pid"]);
        assert_eq!(code(&out), 1);
        assert!(stdout(&out).contains("is now another process"), "{}", stdout(&out));
    }

    // Written on another host: its pid means nothing here.
    state = heartbeat::read_state(&mine).unwrap();
    state.hostname = Some("elsewhere".into());
    let remote = dir.path().join("remote.json");
    heartbeat::write_state(&remote, &state, heartbeat::WriteOptions::default()).unwrap();
    let out = run(&["check", remote.to_str().unwrap(), "--pid"]);
    assert_eq!(code(&out), 1);
    assert!(stdout(&out).contains("written on host `elsewhere`"), "{}", stdout(&out));
}

#[test]
fn check_says_large_ages_in_days() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ancient.json");
    std::fs::write(&path, r#"{"pid": 1, "timestamp": "2000-01-01T00:00:00Z"}"#).unwrap();
    let out = run(&["check", path.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    let ago = text.split(" beat ").nth(1).and_then(|t| t.split(" ago").next()).unwrap();
    assert!(ago.ends_with('h') && ago.contains("d "), "{text}");
}

#[test]
fn completions_and_man_page_generate() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}");
        let script = stdout(&out);
        assert!(script.len() > 1000 && script.contains("heartbeat") && script.contains("max-age"), "{shell}");
    }
    assert_eq!(code(&run(&["completions", "cmd.exe"])), 2);
    let out = run(&["man"]);
    assert_eq!(code(&out), 0);
    let page = stdout(&out);
    assert!(page.contains(".TH heartbeat 1") && page.contains("monitor"), "{}", &page[..page.len().min(300)]);
    let dir = tempfile::tempdir().unwrap();
    let mandir = dir.path().join("man1");
    assert_eq!(code(&run(&["man", "--out", mandir.to_str().unwrap()])), 0);
    for page in ["heartbeat.1", "heartbeat-beat.1", "heartbeat-check.1", "heartbeat-monitor.1"] {
        assert!(std::fs::metadata(mandir.join(page)).unwrap().len() > 100, "{page}");
    }
}

#[test]
fn negative_and_out_of_range_numbers_get_a_clear_error() {
    // Clap alone takes `-1` for a flag and tips `-- -1`, which then fails
    // otherwise: every number of seconds or count says what is wrong with it.
    for (args, why) in [
        (&["beat", "f.json", "--interval", "-1"][..], "must be a number of seconds, zero or more"),
        (&["check", "f.json", "--max-age", "-5"], "must be a number of seconds, zero or more"),
        (&["check", "f.json", "--missed", "-1"], "-1 is not in 1..=1000"),
        (&["scan", "/tmp", "--stale-after", "-1"], "must be a number of seconds, zero or more"),
        (&["scan", "/tmp", "--watch", "--interval", "-0.5"], "must be a positive number of seconds"),
        (&["serve", "--sweep", "-1"], "must be a positive number of seconds"),
        (&["serve", "--max-peers", "-3"], "must be a whole number, 1 or more"),
        (&["monitor", "--max-sessions", "-3"], "must be a whole number, 1 or more"),
        (&["monitor", "--timeout", "-1"], "must be a positive number of seconds"),
        (&["monitor", "--max-missed", "-1"], "-1 is not in 1.."),
        (&["monitor", "--etcd", "http://127.0.0.1:1", "--etcd-ttl", "-10"], "must be a positive number"),
        (&["send", "http://127.0.0.1:1", "x", "--every", "-2"], "must be a positive number of seconds"),
        (&["check", "f.json", "--max-age", "1e30"], "too large: at most 3155760000 seconds (100 years)"),
        (&["check", "f.json", "--max-age", "inf"], "too large: at most 3155760000 seconds (100 years)"),
        (&["beat", "f.json", "--interval", "NaN"], "not a number of seconds"),
    ] {
        let out = run(args);
        assert_eq!(code(&out), 2, "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("invalid value") && err.contains(why), "{args:?}: {err}");
        assert!(!err.contains("tip:"), "{args:?}: {err}");
    }
}

#[test]
fn the_man_pages_are_one_per_command_and_name_only_pages_that_exist() {
    let commands = ["beat", "check", "completions", "man", "monitor", "peer", "scan", "send", "serve"];
    let top = stdout(&run(&["man"]));
    assert!(!top.contains("heartbeat\\-help"), "no help subcommand, no heartbeat-help(1): {top}");
    for cmd in commands {
        assert!(top.contains(&format!("heartbeat\\-{cmd}(1)")), "{cmd} listed: {top}");
        let out = run(&["man", cmd]);
        assert_eq!(code(&out), 0, "{cmd}: {}", stderr(&out));
        let page = stdout(&out);
        assert!(page.starts_with(".ie") && page.contains(&format!(".TH heartbeat-{cmd} 1")), "{cmd}: {page}");
        assert!(page.contains("Examples:"), "{cmd}: {page}");
    }
    assert_eq!(code(&run(&["man", "help"])), 2);
    assert_eq!(code(&run(&["man", "frobnicate"])), 2);

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(code(&run(&["man", "--out", dir.path().to_str().unwrap()])), 0);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = commands.iter().map(|c| format!("heartbeat-{c}.1")).collect();
    expected.push("heartbeat.1".into());
    expected.sort();
    assert_eq!(pages, expected);
    // What --out writes is what `man COMMAND` prints.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("heartbeat-beat.1")).unwrap(),
        stdout(&run(&["man", "beat"]))
    );
    assert_eq!(std::fs::read_to_string(dir.path().join("heartbeat.1")).unwrap(), top);
}

/// The README's synopsis of `command`: its lines in the block under "The
/// command", from `heartbeat COMMAND` to the next command's line.
fn readme_synopsis(readme: &str, command: &str) -> String {
    let section = readme.split("\n## The command\n").nth(1).expect("a section \"The command\"");
    let block = section.split("```text\n").nth(1).and_then(|b| b.split("```").next()).expect("its synopsis");
    let mut lines = String::new();
    let mut inside = false;
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("heartbeat ") {
            inside = rest.split(' ').next() == Some(command);
        }
        if inside {
            lines.push_str(line);
            lines.push('\n');
        }
    }
    lines
}

#[test]
fn the_readme_synopsis_names_every_flag_of_every_command() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for command in ["beat", "check", "scan", "serve", "peer", "monitor", "send"] {
        let synopsis = readme_synopsis(&readme, command);
        assert!(!synopsis.is_empty(), "{command} has a synopsis");
        let help = stdout(&run(&[command, "--help"]));
        for line in help.lines() {
            let Some(flag) = line.trim_start().split([' ', ',', '=']).find(|w| w.starts_with("--")) else {
                continue;
            };
            let listed = line.trim_start().starts_with('-');
            if !listed || flag == "--help" || flag == "--version" {
                continue;
            }
            let named = synopsis.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|w| w == flag);
            assert!(named, "`{command} {flag}` is missing from the README's synopsis:\n{synopsis}");
        }
    }
}
