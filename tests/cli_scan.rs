//! `heartbeat scan` as a user, a probe or a supervisor script meets it.
//! Every child process is killed on drop and every wait is bounded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use heartbeat::{HeartbeatState, WriteOptions, format_timestamp, parse_timestamp, write_state};
use serde_json::{Value, json};

#[path = "support/child.rs"]
mod child;
use child::{Spawned, read_lines};

const BOUND: Duration = Duration::from_secs(10);

/// PID_MAX_LIMIT on 64-bit Linux: `pid_max` cannot be set higher, and PIDs
/// are below `pid_max`, so no process ever has this PID.
const DEAD_PID: i64 = 4_194_304;

fn heartbeat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartbeat"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn run(args: &[&str]) -> Output {
    heartbeat().args(args).output().unwrap()
}

fn scan(dir: &Path, args: &[&str]) -> Output {
    heartbeat().arg("scan").arg(dir).args(args).output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// The JSON lines keyed by uuid.
fn by_uuid(lines: Vec<Value>) -> HashMap<String, Value> {
    lines.into_iter().map(|v| (v["uuid"].as_str().unwrap().to_owned(), v)).collect()
}

/// A FRESH file: this test process, beating now, with its start time and boot id.
fn fresh(dir: &Path, uuid: &str) -> PathBuf {
    let mut state =
        HeartbeatState::for_current_process(SystemTime::now(), Duration::from_secs(10), Default::default());
    state.uuid = Some(uuid.to_owned());
    let path = dir.join(format!("heartbeat-{}-{uuid}.json", state.pid));
    write_state(&path, &state, WriteOptions::default()).unwrap();
    path
}

/// A file written by hand: `pid` on this host, last beat `ago_secs` ago.
fn by_hand(dir: &Path, pid: i64, uuid: &str, ago_secs: u64) -> PathBuf {
    let path = dir.join(format!("heartbeat-{pid}-{uuid}.json"));
    let json = json!({
        "pid": pid,
        "uuid": uuid,
        "hostname": heartbeat::process::hostname(),
        "last_refresh": format_timestamp(SystemTime::now() - Duration::from_secs(ago_secs)),
    });
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// STALE: this live process, but its last beat was 200 s ago (over the default 90 s).
fn stale(dir: &Path, uuid: &str) -> PathBuf {
    by_hand(dir, i64::from(std::process::id()), uuid, 200)
}

/// ORPHAN: recent, from a PID no process can have.
fn orphan(dir: &Path, uuid: &str) -> PathBuf {
    by_hand(dir, DEAD_PID, uuid, 1)
}

#[test]
fn scan_exits_0_when_an_entry_is_fresh_and_prints_a_sorted_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    orphan(d, "c-orphan");
    stale(d, "b-stale");
    fresh(d, "a-fresh");
    let out = scan(d, &[]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["STATUS", "PID", "UUID", "HOST", "AGE", "WHY"]);
    // Sorted by file name, whichever way our pid's digits sort against DEAD_PID's.
    let mut names: Vec<(String, &str)> = vec![
        (format!("heartbeat-{}-a-fresh.json", std::process::id()), "a-fresh"),
        (format!("heartbeat-{}-b-stale.json", std::process::id()), "b-stale"),
        (format!("heartbeat-{DEAD_PID}-c-orphan.json"), "c-orphan"),
    ];
    names.sort();
    for (line, (_, uuid)) in lines[1..].iter().zip(&names) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[2], *uuid, "{text}");
        let want = match *uuid {
            "a-fresh" => "FRESH",
            "b-stale" => "STALE",
            _ => "ORPHAN",
        };
        assert_eq!(cells[0], want, "{text}");
        assert_eq!(cells[3], heartbeat::process::hostname(), "{text}");
        assert!(cells[4].ends_with('s') && cells[4].trim_end_matches('s').parse::<f64>().is_ok(), "{text}");
    }
    assert!(text.contains("pid running, same process start time"), "{text}");
    assert!(text.contains("pid not running"), "{text}");
    assert!(text.contains("last beat 200."), "{text}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn scan_exits_1_when_nothing_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let out = scan(d, &[]);
    assert_eq!(code(&out), 1, "an empty directory");
    assert_eq!(stdout(&out).lines().count(), 1, "the header alone: {}", stdout(&out));

    let out = scan(&d.join("missing"), &[]);
    assert_eq!(code(&out), 1, "a missing directory is an empty scan: {}", stderr(&out));
    let missing = d.join("missing");
    assert_eq!(
        stderr(&out).trim(),
        format!("heartbeat scan: {} does not exist", missing.display()),
        "a typo must not pass for nobody alive in silence"
    );

    stale(d, "s");
    orphan(d, "o");
    let out = scan(d, &[]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert_eq!(stdout(&out).lines().count(), 3, "{}", stdout(&out));
    // A longer --stale-after makes the stale file FRESH again.
    assert_eq!(code(&scan(d, &["--stale-after", "300"])), 0);
    // And a short one makes every file STALE.
    fresh(d, "f");
    assert_eq!(code(&scan(d, &["--stale-after", "0"])), 1);
    assert_eq!(code(&scan(d, &["--stale-after", "30.5"])), 0);
}

#[test]
fn scan_of_something_that_is_not_a_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "").unwrap();
    for extra in [&[][..], &["--format", "json"], &["--cleanup"], &["--cleanup", "--dry-run"], &["--watch"]] {
        let out = scan(&file, extra);
        assert_eq!(code(&out), 2, "{extra:?}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.starts_with("heartbeat scan: cannot read heartbeat directory"), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(stdout(&out).is_empty(), "{extra:?}: {}", stdout(&out));
    }
}

#[test]
fn json_lines_carry_statuses_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = fresh(d, "f");
    let s = stale(d, "s");
    orphan(d, "o");
    // Torn: contents unusable, so pid and uuid come from the name and the time from the mtime.
    let torn = d.join(format!("heartbeat-{DEAD_PID}-torn.json"));
    std::fs::write(&torn, r#"{"pid": 1, "uu"#).unwrap();
    // Another host's recent file: judged by age alone.
    let remote = json!({"pid": DEAD_PID, "uuid": "r", "hostname": "elsewhere.invalid",
                        "last_refresh": format_timestamp(SystemTime::now())});
    std::fs::write(d.join("heartbeat-1-r.json"), remote.to_string()).unwrap();
    // Dated an hour ahead, by this live process: SKEWED.
    let skewed = json!({"pid": std::process::id(), "uuid": "k", "hostname": heartbeat::process::hostname(),
                        "last_refresh": format_timestamp(SystemTime::now() + Duration::from_secs(3600))});
    std::fs::write(d.join(format!("heartbeat-{}-k.json", std::process::id())), skewed.to_string()).unwrap();

    let out = scan(d, &["--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines = json_lines(&out);
    let paths: Vec<&str> = lines.iter().map(|v| v["path"].as_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "sorted by file name");
    let got = by_uuid(lines);
    assert_eq!(got.len(), 6);
    let status = |u: &str| got[u]["status"].as_str().unwrap().to_owned();
    assert_eq!(
        ["f", "s", "o", "torn", "r", "k"].map(status),
        ["fresh", "stale", "orphan", "orphan", "remote", "skewed"]
    );

    let v = &got["f"];
    assert_eq!(v["pid"], std::process::id());
    assert_eq!(v["host"], heartbeat::process::hostname());
    assert_eq!(v["path"], f.to_str().unwrap());
    assert_eq!(v["why"], "pid running, same process start time");
    assert!(v["fallback"].is_null());
    let age = v["age_sec"].as_f64().unwrap();
    assert!((0.0..30.0).contains(&age), "{age}");
    let beat = parse_timestamp(v["last_beat"].as_str().unwrap()).expect("RFC 3339");
    assert!(SystemTime::now().duration_since(beat).unwrap() < BOUND);

    let v = &got["s"];
    assert_eq!(v["path"], s.to_str().unwrap());
    assert!(v["age_sec"].as_f64().unwrap() >= 200.0);
    assert!(v["why"].as_str().unwrap().starts_with("last beat 200."), "{v}");

    let v = &got["torn"];
    assert_eq!(v["pid"], DEAD_PID);
    assert!(v["host"].is_null());
    assert!(v["fallback"].as_str().unwrap().contains("not a heartbeat object"), "{v}");

    assert_eq!(got["r"]["why"], "written on another host; pid not probed");
    assert!(got["k"]["age_sec"].is_null(), "SKEWED has no age");
    assert!(got["k"]["why"].as_str().unwrap().contains("in the future"));

    // The table shows the fallback and the missing age its own way.
    let out = scan(d, &[]);
    let text = stdout(&out);
    assert!(text.contains("; contents unusable (not a heartbeat object"), "{text}");
    assert!(text.contains("), used name and mtime"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("SKEWED") && l.contains(" future ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ORPHAN") && l.contains(" torn  -  ")), "no host: {text}");
}

#[test]
fn cleanup_dry_run_lists_and_removes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = fresh(d, "f");
    let s = stale(d, "s");
    let o = orphan(d, "o");

    let out = scan(d, &["--cleanup", "--dry-run"]);
    assert_eq!(code(&out), 0, "a FRESH entry remains: {}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(&format!("would remove {} (STALE: last beat 200.", s.display())), "{text}");
    assert!(text.contains(&format!("would remove {} (ORPHAN: pid not running)", o.display())), "{text}");
    assert!(!text.contains(f.to_str().unwrap()), "{text}");
    assert!(f.exists() && s.exists() && o.exists(), "a dry run removes nothing");

    let out = scan(d, &["--cleanup", "--dry-run", "--format", "json"]);
    assert_eq!(code(&out), 0);
    let got = by_uuid(json_lines(&out));
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got["s"]["action"].as_str(), got["s"]["status"].as_str()),
        (Some("would_remove"), Some("stale"))
    );
    assert_eq!(
        (got["o"]["action"].as_str(), got["o"]["status"].as_str()),
        (Some("would_remove"), Some("orphan"))
    );
    assert!(f.exists() && s.exists() && o.exists());
}

#[test]
fn cleanup_removes_stale_and_orphan_files_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = fresh(d, "f");
    let s = stale(d, "s");
    let o = orphan(d, "o");
    // Outside the directory, a stale heartbeat a symlink in it points to.
    let outside = tempfile::tempdir().unwrap();
    let target = stale(outside.path(), "target");
    let link = d.join("heartbeat-1-link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // A stale heartbeat under a name the scanner does not claim.
    let other = d.join("stale.json");
    std::fs::copy(&s, &other).unwrap();
    // A directory with a heartbeat name.
    let subdir = d.join("heartbeat-2-dir.json");
    std::fs::create_dir(&subdir).unwrap();

    let out = scan(d, &["--cleanup"]);
    assert_eq!(code(&out), 0, "the FRESH file is left: {}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(&format!("removed {} (STALE: ", s.display())), "{text}");
    assert!(text.contains(&format!("removed {} (ORPHAN: pid not running)", o.display())), "{text}");
    assert!(!s.exists() && !o.exists());
    assert!(f.exists(), "FRESH is kept");
    assert!(link.symlink_metadata().is_ok() && target.exists(), "the symlink and its target are left alone");
    assert!(other.exists() && subdir.is_dir(), "foreign names are left alone");
    let err = stderr(&out);
    assert!(err.contains(&format!("heartbeat scan: ignored {}: a symbolic link", link.display())), "{err}");
    assert!(err.contains(&format!("heartbeat scan: ignored {}", subdir.display())), "{err}");

    // Nothing left to remove; then only dead files: removed, and exit 1.
    let out = scan(d, &["--cleanup"]);
    assert_eq!((code(&out), stdout(&out).as_str()), (0, ""));
    std::fs::remove_file(&f).unwrap();
    let s = stale(d, "s2");
    let out = scan(d, &["--cleanup", "--format", "json"]);
    assert_eq!(code(&out), 1, "no FRESH entry after the cleanup");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0]["action"].as_str(), lines[0]["uuid"].as_str()), (Some("removed"), Some("s2")));
    assert!(!s.exists());
}

/// Makes `file` impossible to remove until dropped: `chattr +i` as root
/// (who ignores directory permissions), a read-only directory otherwise.
/// `None` where neither works (no chattr, a file system without the flag).
struct Undeletable {
    file: PathBuf,
    as_root: bool,
}

impl Undeletable {
    fn new(file: &Path) -> Option<Undeletable> {
        use std::os::unix::fs::PermissionsExt;
        // Root is the one user that directory modes do not stop.
        let as_root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        let guard = Undeletable { file: file.to_owned(), as_root };
        if as_root {
            let ok =
                std::process::Command::new("chattr").arg("+i").arg(file).status().is_ok_and(|s| s.success());
            return ok.then_some(guard);
        }
        let dir = file.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).ok()?;
        Some(guard)
    }
}

impl Drop for Undeletable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.as_root {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&self.file).status();
        } else {
            let _ =
                std::fs::set_permissions(self.file.parent().unwrap(), std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn cleanup_that_cannot_remove_a_file_exits_3_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fresh(d, "alive");
    let s = stale(d, "stuck");
    let Some(_stuck) = Undeletable::new(&s) else {
        eprintln!("skipped: neither chattr +i nor a read-only directory can stop a removal here");
        return;
    };
    let out = scan(d, &["--cleanup"]);
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    assert!(s.exists());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("heartbeat scan: could not remove {}: cannot remove: ", s.display())),
        "{err}"
    );
    let out = scan(d, &["--cleanup", "--format", "json"]);
    assert_eq!(code(&out), 3);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!((lines[0]["action"].as_str(), lines[0]["uuid"].as_str()), (Some("failed"), Some("stuck")));
    assert!(lines[0]["error"].as_str().unwrap().starts_with("cannot remove: "));
    // A dry run removes nothing, so nothing can fail.
    assert_eq!(code(&scan(d, &["--cleanup", "--dry-run"])), 0);
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        &["scan"][..],
        &["scan", d, "--dry-run"],
        &["scan", d, "--stale-after", "-1"],
        &["scan", d, "--stale-after", "soon"],
        &["scan", d, "--format", "xml"],
        &["scan", d, "--watch", "--cleanup"],
        &["scan", d, "--watch", "--interval", "0"],
        &["scan", d, "--interval", "5"],
    ] {
        let out = run(args);
        assert_eq!(code(&out), 2, "{args:?}");
        assert!(stderr(&out).contains("error"), "{args:?}: {}", stderr(&out));
    }
    let out = run(&["scan", "--help"]);
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("Examples:") && stdout(&out).contains("Exit codes:"), "{}", stdout(&out));
}

#[test]
fn control_characters_from_files_stay_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let uuid = "x\nFRESH  1  forged";
    let path = d.join(format!("heartbeat-{DEAD_PID}-evil\n.json"));
    let json = json!({
        "pid": DEAD_PID,
        "uuid": uuid,
        "hostname": heartbeat::process::hostname(),
        "last_refresh": format_timestamp(SystemTime::now()),
    });
    std::fs::write(&path, json.to_string()).unwrap();
    // Another host's (REMOTE, so never removed), with a terminal-rewriting name.
    let json = json!({
        "pid": 1,
        "uuid": "r",
        "hostname": "h\r\u{1b}[2K",
        "last_refresh": format_timestamp(SystemTime::now()),
    });
    std::fs::write(d.join("heartbeat-1-r.json"), json.to_string()).unwrap();
    // Unusable contents whose parse error quotes them.
    std::fs::write(d.join(format!("heartbeat-{DEAD_PID}-t\tx.json")), "{\"pid\": \"\n\"").unwrap();

    let out = scan(d, &[]);
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "header and three rows: {text}");
    assert!(!text.contains('\r') && !text.contains('\u{1b}') && !text.contains('\t'), "{text:?}");
    assert!(text.contains("x\\nFRESH  1  forged") && text.contains("h\\r\\u{1b}[2K"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("FRESH")), "{text}");

    let out = scan(d, &["--cleanup", "--dry-run"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("evil\\n.json") && text.contains("t\\tx.json"), "{text}");

    let out = scan(d, &["--format", "json"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{}", stdout(&out));
    assert!(lines.iter().any(|v| v["uuid"] == uuid), "JSON keeps the values exact");
    assert!(lines.iter().any(|v| v["host"] == "h\r\u{1b}[2K"), "JSON keeps the values exact");
}

#[test]
fn scan_survives_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    fresh(dir.path(), "f");
    for format in ["table", "json"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = heartbeat()
            .arg("scan")
            .arg(dir.path())
            .args(["--format", format])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{format}: the outcome, not a panic: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    }
}

/// A `scan --watch` child whose stdout lines arrive on a channel; killed on drop.
struct Watching {
    child: Spawned,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    fn start(dir: &Path, format: &str) -> Watching {
        let mut child = heartbeat()
            .arg("scan")
            .arg(dir)
            .args(["--watch", "--interval", "0.2", "--format", format])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        Watching { child: Spawned(child), lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(BOUND).expect("a line within the bound")
    }

    fn event(&self) -> Value {
        let line = self.line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait_bounded(BOUND, "scan --watch")
    }
}

#[test]
fn watch_prints_changes_as_json_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = fresh(d, "f");
    let mut w = Watching::start(d, "json");

    let v = w.event();
    assert_eq!(
        (v["event"].as_str(), v["status"].as_str(), v["uuid"].as_str()),
        (Some("appeared"), Some("fresh"), Some("f"))
    );
    assert_eq!(v["path"], f.to_str().unwrap());

    let o = orphan(d, "o");
    let v = w.event();
    assert_eq!(
        (v["event"].as_str(), v["status"].as_str(), v["uuid"].as_str()),
        (Some("appeared"), Some("orphan"), Some("o"))
    );
    assert_eq!(v["path"], o.to_str().unwrap());

    // The writer falls silent: its file turns STALE.
    stale(d, "f");
    let v = w.event();
    assert_eq!(
        (v["event"].as_str(), v["from"].as_str(), v["status"].as_str(), v["uuid"].as_str()),
        (Some("changed"), Some("fresh"), Some("stale"), Some("f"))
    );

    std::fs::remove_file(&o).unwrap();
    let v = w.event();
    assert_eq!((v["event"].as_str(), v["uuid"].as_str()), (Some("gone"), Some("o")));

    w.signal(libc::SIGTERM);
    assert_eq!(w.wait().code(), Some(1), "the last picture has no FRESH entry");
}

#[test]
fn watch_prints_table_lines_and_exits_0_on_sigint_with_a_fresh_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut w = Watching::start(d, "table");
    // Nothing to say about an empty directory; then a writer appears.
    fresh(d, "f");
    let line = w.line();
    assert!(line.starts_with("appeared  FRESH  "), "{line}");
    assert!(line.contains("  f  "), "{line}");
    let s = stale(d, "s\nforged");
    let line = w.line();
    assert!(line.starts_with("appeared  STALE  ") && line.contains("s\\nforged"), "{line}");
    std::fs::remove_file(&s).unwrap();
    let line = w.line();
    assert!(line.starts_with("gone  STALE  "), "{line}");

    w.signal(libc::SIGINT);
    assert_eq!(w.wait().code(), Some(0), "a FRESH entry in the last picture");
    assert!(w.lines.recv_timeout(BOUND).is_err(), "nothing more after the stop");
}
