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
        (&stale, "over the max age of 30s"),
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
