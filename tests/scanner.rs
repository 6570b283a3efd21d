//! The directory Scanner as a library user meets it: heartbeat files written
//! by hand (or by a real Beater), a manual clock wherever time matters, a
//! fixed host name and boot id wherever they matter. Every wait is bounded;
//! the only short wait is the one that shows a Watch stays silent.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use heartbeat::{
    Beater, Clock, Error, ManualClock, Scan, ScanEntry, ScanEvent, ScanReason, ScanStatus, Scanner,
    format_timestamp, parse_timestamp,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Generous bound for anything a live thread must do "at once".
const BOUND: Duration = Duration::from_secs(5);
/// How long a Watch is given to prove it has nothing to say.
const QUIET: Duration = Duration::from_millis(200);
const HOST: &str = "testhost";
const BOOT: &str = "boot-a";
/// PID_MAX_LIMIT on 64-bit Linux: PIDs are below `pid_max`, which cannot be
/// set higher, so no process has this PID and `kill(pid, 0)` says ESRCH.
const DEAD_PID: i64 = 4_194_304;
const LIMIT: Duration = heartbeat::DEFAULT_STALE_AFTER;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

/// This test process's PID: alive.
fn me() -> i64 {
    i64::from(std::process::id())
}

/// This test process's real start time, in clock ticks since boot.
fn my_ticks() -> u64 {
    heartbeat::process::start_ticks(std::process::id()).expect("/proc/<pid>/stat is readable on Linux")
}

/// A manual clock at a fixed, whole-second instant (files keep microseconds).
fn manual_clock() -> Arc<ManualClock> {
    ManualClock::starting_at(parse_timestamp("2026-11-23T10:00:00Z").unwrap())
}

/// A scanner of `dir` on `clock`, on host [`HOST`] in boot [`BOOT`].
fn scanner(dir: &Path, clock: &Arc<ManualClock>) -> Scanner {
    Scanner::builder(dir).clock(clock.clone()).hostname(HOST).boot_id(Some(BOOT.into())).build().unwrap()
}

/// A heartbeat record as the seed's writers leave it, from this host and boot.
fn record(pid: i64, uuid: &str, last_refresh: SystemTime) -> Value {
    json!({
        "pid": pid,
        "uuid": uuid,
        "hostname": HOST,
        "last_refresh": format_timestamp(last_refresh),
        "boot_id": BOOT,
    })
}

/// `record` plus the writer's start time.
fn with_ticks(mut v: Value, ticks: u64) -> Value {
    v["process_start_ticks"] = json!(ticks);
    v
}

fn name_for(pid: impl fmt::Display, uuid: &str) -> String {
    format!("heartbeat-{pid}-{uuid}.json")
}

/// Writes `v` to `heartbeat-<pid>-<uuid>.json` (its own pid and uuid) in `dir`.
fn put(dir: &Path, v: &Value) -> PathBuf {
    let path = dir.join(name_for(&v["pid"], v["uuid"].as_str().unwrap()));
    std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    path
}

/// Writes raw `contents` to `name` in `dir` with the given mtime.
fn put_raw(dir: &Path, name: &str, contents: &str, mtime: SystemTime) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    path
}

/// The entry for `path`, which the scan must have.
fn entry<'a>(scan: &'a Scan, path: &Path) -> &'a ScanEntry {
    scan.entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no entry for {}: {scan:#?}", path.display()))
}

/// The scan's only entry.
fn only(scan: &Scan) -> &ScanEntry {
    assert_eq!(scan.entries.len(), 1, "{scan:#?}");
    assert!(scan.ignored.is_empty(), "{scan:#?}");
    &scan.entries[0]
}

fn verdict(e: &ScanEntry) -> (ScanStatus, ScanReason) {
    (e.status, e.why.clone())
}

fn paths(entries: &[ScanEntry]) -> HashSet<PathBuf> {
    entries.iter().map(|e| e.path.clone()).collect()
}

fn set(paths: &[&PathBuf]) -> HashSet<PathBuf> {
    paths.iter().map(|p| (*p).clone()).collect()
}

// ---- 1. the seed's matrix ----

#[test]
fn a_recent_file_of_a_live_pid_with_its_start_time_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let path = put(dir.path(), &with_ticks(record(me(), "f", clock.wall()), my_ticks()));
    let scan = scanner(dir.path(), &clock).scan().unwrap();
    let e = only(&scan);
    assert_eq!(verdict(e), (ScanStatus::Fresh, ScanReason::Running { identity_checked: true }));
    assert_eq!(e.path, path);
    assert_eq!((e.pid, e.uuid.as_str(), e.hostname.as_deref()), (me(), "f", Some(HOST)));
    assert_eq!((e.last_beat, e.age, e.fallback.as_deref()), (clock.wall(), Some(Duration::ZERO), None));
    assert_eq!(scan.fresh_count(), 1);
}

#[test]
fn seed_files_without_start_time_are_fresh_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &record(me(), "f", clock.wall() - secs(10)));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Fresh, ScanReason::Running { identity_checked: false }));
    assert_eq!(e.age, Some(secs(10)));
}

#[test]
fn stale_wins_over_a_live_pid_and_over_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let old = clock.wall() - secs(200);
    let live = put(dir.path(), &with_ticks(record(me(), "live", old), my_ticks()));
    let dead = put(dir.path(), &record(DEAD_PID, "dead", old));
    let scan = scanner(dir.path(), &clock).scan().unwrap();
    let too_old = (ScanStatus::Stale, ScanReason::TooOld { age: secs(200), limit: LIMIT });
    assert_eq!(verdict(entry(&scan, &live)), too_old);
    assert_eq!(verdict(entry(&scan, &dead)), too_old);
    assert_eq!(scan.fresh_count(), 0);
}

#[test]
fn a_recent_file_of_a_dead_pid_is_an_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &record(DEAD_PID, "o", clock.wall() - secs(5)));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Orphan, ScanReason::NotRunning));
    assert_eq!((e.pid, e.age), (DEAD_PID, Some(secs(5))));
}

#[test]
fn pids_that_cannot_name_a_process_are_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let now = clock.wall();
    // Zero and -1 would mean process groups to kill(2); the last one does not fit a pid_t.
    let bad = [0, -1, -12345, i64::from(i32::MAX) + 1];
    let files: Vec<PathBuf> = bad.iter().map(|&pid| put(dir.path(), &record(pid, "b", now))).collect();
    let scan = scanner(dir.path(), &clock).scan().unwrap();
    assert_eq!(scan.entries.len(), bad.len(), "{scan:#?}");
    for (pid, path) in bad.iter().zip(&files) {
        let e = entry(&scan, path);
        assert_eq!(e.pid, *pid);
        assert_eq!(verdict(e), (ScanStatus::Orphan, ScanReason::BadPid), "pid {pid}");
    }
}

#[test]
fn pid_1_is_alive_whether_kill_succeeds_or_says_eperm() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &record(1, "init", clock.wall()));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Fresh, ScanReason::Running { identity_checked: false }));
}

#[test]
fn exactly_90_seconds_old_is_not_stale_and_a_millisecond_more_is() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &record(me(), "edge", clock.wall()));
    let scanner = scanner(dir.path(), &clock);
    assert_eq!(scanner.stale_after(), secs(90));

    clock.advance(secs(90));
    let e = only(&scanner.scan().unwrap()).clone();
    assert_eq!((e.status, e.age), (ScanStatus::Fresh, Some(secs(90))));

    clock.advance(Duration::from_millis(1));
    let e = only(&scanner.scan().unwrap()).clone();
    let age = Duration::from_millis(90_001);
    assert_eq!(verdict(&e), (ScanStatus::Stale, ScanReason::TooOld { age, limit: LIMIT }));
    assert_eq!(e.age, Some(age));
}

#[test]
fn the_stale_threshold_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &record(me(), "f", clock.wall() - secs(200)));
    let scanner = Scanner::builder(dir.path())
        .clock(clock.clone())
        .hostname(HOST)
        .boot_id(Some(BOOT.into()))
        .stale_after(secs(300))
        .build()
        .unwrap();
    assert_eq!(only(&scanner.scan().unwrap()).status, ScanStatus::Fresh);
}

#[test]
fn a_zero_interval_is_refused() {
    let err = Scanner::builder("/nonexistent").interval(Duration::ZERO).build().unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

// ---- 2. torn and foreign files ----

#[test]
fn a_torn_file_falls_back_to_its_name_and_an_old_mtime_so_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let mtime = clock.wall() - secs(200);
    let path = put_raw(dir.path(), &name_for(me(), "torn-uuid"), r#"{"pid": 12"#, mtime);
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Stale, ScanReason::TooOld { age: secs(200), limit: LIMIT }));
    assert_eq!((e.path, e.pid, e.uuid.as_str()), (path, me(), "torn-uuid"), "pid and uuid from the name");
    assert_eq!((e.last_beat, e.hostname), (mtime, None));
    let why = e.fallback.expect("judged by name and mtime");
    assert!(why.contains("not a heartbeat object"), "{why}");
}

#[test]
fn a_torn_file_with_a_recent_mtime_and_a_live_pid_in_its_name_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put_raw(dir.path(), &name_for(me(), "t"), r#"{"pid": 12"#, clock.wall() - secs(1));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    // No start time in a name: the PID is probed by kill alone.
    assert_eq!(verdict(&e), (ScanStatus::Fresh, ScanReason::Running { identity_checked: false }));
    assert_eq!((e.pid, e.age), (me(), Some(secs(1))));
    assert!(e.fallback.is_some());
}

#[test]
fn an_empty_file_is_judged_by_its_name_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put_raw(dir.path(), &name_for(DEAD_PID, "empty"), "", clock.wall() - secs(3));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Orphan, ScanReason::NotRunning));
    assert!(e.fallback.is_some());
}

#[test]
fn valid_json_without_a_beat_time_falls_back_too() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let contents = json!({"pid": me(), "uuid": "inside", "hostname": HOST}).to_string();
    put_raw(dir.path(), &name_for(me(), "outside"), &contents, clock.wall() - secs(200));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(e.status, ScanStatus::Stale);
    assert_eq!(e.uuid, "outside", "the name's uuid, not the unusable contents'");
    assert_eq!(e.hostname, None);
    assert_eq!(e.fallback.as_deref(), Some("no last_refresh or timestamp"));
}

/// Findings 1 and 2 of the first fuzzing round: a file `read_state` reads
/// one way must not be read another way by the scanner. Both refuse these,
/// and the scanner judges them by name and mtime.
#[test]
fn files_read_state_refuses_the_scanner_judges_by_name_and_mtime() {
    let clock = manual_clock();
    let beat = format_timestamp(clock.wall() - secs(1));
    let cases = [
        // A repeated key: read_state took the last value, the scanner refused.
        (
            format!(r#"{{"pid": {DEAD_PID}, "last_refresh": "{beat}", "last_refresh": "{beat}"}}"#),
            "duplicate key",
        ),
        (
            format!(r#"{{"pid": {DEAD_PID}, "timestamp": "{beat}", "metadata": {{"v": 1, "v": 2}}}}"#),
            "duplicate key",
        ),
        // An array: the scanner read it as pid 123, read_state refused.
        (format!(r#"[123, "u", "{HOST}", "{beat}", null, null, null]"#), "not a JSON object"),
    ];
    for (contents, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = put_raw(dir.path(), &name_for(me(), "named"), &contents, clock.wall() - secs(200));
        let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
        let why = e.fallback.unwrap_or_else(|| panic!("{contents} was read as pid {}", e.pid));
        assert!(why.contains(says), "{why}");
        assert_eq!((e.pid, e.uuid.as_str(), e.status), (me(), "named", ScanStatus::Stale), "name and mtime");
        let err = heartbeat::read_state(&path).unwrap_err();
        assert!(matches!(err, Error::DuplicateKey { .. } | Error::NotJson { .. }), "{err:?}");
        assert_eq!(says == "duplicate key", matches!(err, Error::DuplicateKey { .. }), "{err}");
    }
}

#[test]
fn a_timestamp_field_serves_when_there_is_no_last_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let v = json!({"pid": me(), "uuid": "k", "timestamp": format_timestamp(clock.wall() - secs(7))});
    put(dir.path(), &v);
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!((e.status, e.age, e.fallback), (ScanStatus::Fresh, Some(secs(7)), None));
}

#[test]
fn a_garbled_file_whose_name_has_no_pid_is_ignored_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let path = put_raw(dir.path(), "heartbeat-garbage.json", "not json", clock.wall());
    let scan = scanner(dir.path(), &clock).scan().unwrap();
    assert!(scan.entries.is_empty(), "{scan:#?}");
    assert_eq!(scan.ignored.len(), 1, "{scan:#?}");
    assert_eq!(scan.ignored[0].path, path);
    assert!(scan.ignored[0].why.contains("no pid in the file name"), "{}", scan.ignored[0].why);
}

#[test]
fn escaped_strings_are_read_as_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let beat = format_timestamp(clock.wall());
    // "testhost" spelled with an escape: the same host, so judged locally.
    let contents = format!(
        r#"{{"pid": {}, "uuid": "a\"b\u00e9", "hostname": "test\u0068ost", "last_refresh": "{beat}"}}"#,
        me()
    );
    put_raw(dir.path(), &name_for(me(), "esc"), &contents, clock.wall());
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(e.fallback, None);
    assert_eq!((e.uuid.as_str(), e.hostname.as_deref()), ("a\"b\u{e9}", Some(HOST)));
    assert_eq!(e.status, ScanStatus::Fresh);
}

#[test]
fn a_file_longer_than_the_first_read_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let mut v = record(me(), "big", clock.wall() - secs(3));
    v["metadata"] = json!({"padding": "x".repeat(40 * 1024)});
    put(dir.path(), &v);
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!((e.status, e.age, e.fallback), (ScanStatus::Fresh, Some(secs(3)), None));
    assert_eq!(e.uuid, "big");
}

#[test]
fn a_file_over_the_size_limit_is_judged_by_its_name_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let mut v = record(me(), "huge-inside", clock.wall());
    v["metadata"] = json!({"padding": "x".repeat(heartbeat::MAX_STATE_BYTES as usize)});
    let contents = v.to_string();
    put_raw(dir.path(), &name_for(DEAD_PID, "huge"), &contents, clock.wall() - secs(200));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!((e.pid, e.uuid.as_str(), e.status), (DEAD_PID, "huge", ScanStatus::Stale));
    let why = e.fallback.expect("contents unusable");
    assert!(why.contains("larger than"), "{why}");
}

#[test]
fn a_fifo_with_a_heartbeat_name_is_ignored_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join(name_for(me(), "fifo"));
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let scanner = scanner(dir.path(), &manual_clock());
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || tx.send(scanner.scan()).unwrap());
    let scan = rx.recv_timeout(BOUND).expect("the scan hung on a FIFO").unwrap();
    assert!(scan.entries.is_empty(), "{scan:#?}");
    assert_eq!(scan.ignored.len(), 1, "{scan:#?}");
    assert_eq!((&scan.ignored[0].path, scan.ignored[0].why.as_str()), (&fifo, "a FIFO, not a regular file"));
}

// ---- 3. the directory itself ----

#[test]
fn a_missing_directory_is_an_empty_scan() {
    let dir = tempfile::tempdir().unwrap();
    let scanner = scanner(&dir.path().join("not-yet"), &manual_clock());
    assert_eq!(scanner.scan().unwrap(), Scan::default());
    assert_eq!(scanner.fresh_count().unwrap(), 0);
    let cleanup = scanner.cleanup().unwrap();
    assert!(cleanup.removed.is_empty() && cleanup.kept.is_empty());
}

#[test]
fn a_path_that_is_not_a_directory_is_a_directory_error_saying_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "").unwrap();
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (given, what) in [(&file, "a regular file"), (&fifo, "a FIFO")] {
        let scanner = scanner(given, &manual_clock());
        match scanner.scan() {
            Err(Error::Directory { path, source }) => {
                assert_eq!(&path, given);
                assert_eq!(source.kind(), std::io::ErrorKind::NotADirectory, "{source}");
                assert_eq!(source.to_string(), format!("it is {what}, not a directory"));
            }
            other => panic!("expected Error::Directory, got {other:?}"),
        }
        assert!(matches!(scanner.is_active(), Err(Error::Directory { .. })));
        assert!(matches!(scanner.cleanup(), Err(Error::Directory { .. })));
    }
}

// ---- 4. files vanishing mid-scan ----

#[test]
fn files_vanishing_while_scanned_are_skipped_silently() {
    /// Tells the churner to stop, also when an assertion unwinds.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let scanner = scanner(dir.path(), &clock);
    let files: Vec<(PathBuf, String, Vec<u8>)> = (0..32)
        .map(|i| {
            let uuid = format!("churn{i}");
            let body = serde_json::to_vec(&record(me(), &uuid, clock.wall())).unwrap();
            (dir.path().join(name_for(me(), &uuid)), uuid, body)
        })
        .collect();
    let done = AtomicBool::new(false);
    let (started_tx, started) = crossbeam_channel::bounded(1);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&done);
        s.spawn(|| {
            // Plain (non-atomic) writes: a scan may also meet a file created but not yet written.
            for round in 0..100_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                for (path, _, body) in &files {
                    std::fs::write(path, body).unwrap();
                }
                if round == 0 {
                    started_tx.send(()).unwrap();
                }
                for (path, _, _) in &files {
                    std::fs::remove_file(path).unwrap();
                }
            }
        });
        // Scan only once the churn is under way, or the scans may all see an empty directory.
        started.recv_timeout(BOUND).expect("the churner did not start");
        for round in 0..200 {
            let scan = scanner.scan().unwrap_or_else(|e| panic!("scan {round}: {e}"));
            assert!(scan.ignored.is_empty(), "scan {round}: {:#?}", scan.ignored);
            for e in &scan.entries {
                let (_, uuid, _) = files
                    .iter()
                    .find(|(path, _, _)| *path == e.path)
                    .unwrap_or_else(|| panic!("scan {round}: a file never written: {e:#?}"));
                assert_eq!((e.pid, &e.uuid), (me(), uuid), "scan {round}");
            }
        }
    });
}

// ---- 5. process identity ----

#[test]
fn a_live_pid_with_another_start_time_is_a_reused_pid_scan_after_scan() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let real = my_ticks();
    let reused = put(dir.path(), &with_ticks(record(me(), "earlier-writer", clock.wall()), real + 1));
    let mine = put(dir.path(), &with_ticks(record(me(), "this-process", clock.wall()), real));
    let scanner = scanner(dir.path(), &clock);
    // The second scan takes the start time from the scanner's cache.
    for round in 0..2 {
        let scan = scanner.scan().unwrap();
        assert_eq!(
            verdict(entry(&scan, &reused)),
            (ScanStatus::Orphan, ScanReason::PidReused { recorded: real + 1, found: real }),
            "scan {round}"
        );
        assert_eq!(
            verdict(entry(&scan, &mine)),
            (ScanStatus::Fresh, ScanReason::Running { identity_checked: true }),
            "scan {round}"
        );
    }
}

#[test]
fn a_file_from_another_boot_is_an_orphan_even_if_its_pid_lives() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let mut v = with_ticks(record(me(), "before-reboot", clock.wall()), my_ticks());
    v["boot_id"] = json!("boot-b");
    put(dir.path(), &v);
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Orphan, ScanReason::OtherBoot));

    // A scanner that never judges by boot takes the file at its word.
    let blind =
        Scanner::builder(dir.path()).clock(clock.clone()).hostname(HOST).boot_id(None).build().unwrap();
    let e = only(&blind.scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Fresh, ScanReason::Running { identity_checked: true }));
}

// ---- 6. other hosts ----

#[test]
fn a_recent_file_from_another_host_is_remote_whatever_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let mut v = record(DEAD_PID, "far", clock.wall() - secs(10));
    v["hostname"] = json!("elsewhere");
    put(dir.path(), &v);
    let scan = scanner(dir.path(), &clock).scan().unwrap();
    let e = only(&scan);
    assert_eq!(verdict(e), (ScanStatus::Remote, ScanReason::OtherHost));
    assert_eq!((e.hostname.as_deref(), e.age), (Some("elsewhere"), Some(secs(10))));
    assert_eq!(scan.fresh_count(), 0, "REMOTE is not FRESH");
}

#[test]
fn an_old_file_from_another_host_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let mut v = record(me(), "far", clock.wall() - secs(200));
    v["hostname"] = json!("elsewhere");
    put(dir.path(), &v);
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Stale, ScanReason::TooOld { age: secs(200), limit: LIMIT }));
}

#[test]
fn a_file_without_a_hostname_is_judged_locally() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let seed = |pid: i64, uuid: &str| json!({"pid": pid, "uuid": uuid, "last_refresh": format_timestamp(clock.wall())});
    let dead = put(dir.path(), &seed(DEAD_PID, "dead"));
    let live = put(dir.path(), &seed(me(), "live"));
    let scan = scanner(dir.path(), &clock).scan().unwrap();
    assert_eq!(verdict(entry(&scan, &dead)), (ScanStatus::Orphan, ScanReason::NotRunning));
    assert_eq!(
        verdict(entry(&scan, &live)),
        (ScanStatus::Fresh, ScanReason::Running { identity_checked: false })
    );
    assert_eq!(entry(&scan, &live).hostname, None);
}

// ---- 7. clock skew ----

#[test]
fn a_beat_a_minute_in_the_future_is_skewed_and_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &with_ticks(record(me(), "ahead", clock.wall() + secs(60)), my_ticks()));
    let scanner = scanner(dir.path(), &clock);
    let scan = scanner.scan().unwrap();
    let e = only(&scan);
    assert_eq!(verdict(e), (ScanStatus::Skewed, ScanReason::Future { ahead: secs(60) }));
    assert_eq!(e.age, None);
    assert_eq!(scan.fresh_count(), 0);
    assert_eq!(scanner.fresh_count().unwrap(), 0);
    assert!(!scanner.is_active().unwrap());
}

#[test]
fn a_beat_within_the_skew_tolerance_is_fresh_at_age_zero() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    assert!(secs(1) < heartbeat::SKEW_TOLERANCE);
    put(dir.path(), &record(me(), "slightly-ahead", clock.wall() + secs(1)));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!((e.status, e.age), (ScanStatus::Fresh, Some(Duration::ZERO)));
}

#[test]
fn a_future_beat_of_a_dead_pid_is_an_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &record(DEAD_PID, "ahead", clock.wall() + secs(60)));
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Orphan, ScanReason::NotRunning));
    assert_eq!(e.age, None);
}

#[test]
fn a_future_beat_from_another_host_is_skewed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let mut v = record(DEAD_PID, "far-ahead", clock.wall() + secs(60));
    v["hostname"] = json!("elsewhere");
    put(dir.path(), &v);
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!(verdict(&e), (ScanStatus::Skewed, ScanReason::Future { ahead: secs(60) }));
}

// ---- 8. the idle window ----

#[test]
fn a_new_scanner_is_not_idle_until_the_window_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let scanner = scanner(dir.path(), &clock);
    assert!(!scanner.idle_for(mins(30)).unwrap());
    clock.advance(mins(30) - Duration::from_millis(1));
    assert!(!scanner.idle_for(mins(30)).unwrap());
    clock.advance(Duration::from_millis(1));
    assert!(scanner.idle_for(mins(30)).unwrap());
    assert_eq!(scanner.last_fresh(), None);
}

#[test]
fn idle_counts_from_the_last_scan_that_saw_a_fresh_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let scanner = scanner(dir.path(), &clock);
    clock.advance(mins(40));
    let path = put(dir.path(), &record(me(), "f", clock.wall()));
    assert!(!scanner.idle_for(mins(30)).unwrap());
    assert!(scanner.is_active().unwrap());
    assert_eq!(scanner.fresh_count().unwrap(), 1);
    let seen = clock.now();
    assert_eq!(scanner.last_fresh(), Some(seen));

    std::fs::remove_file(&path).unwrap();
    clock.advance(mins(29));
    assert!(!scanner.idle_for(mins(30)).unwrap());
    assert!(!scanner.is_active().unwrap());
    clock.advance(mins(2));
    assert!(scanner.idle_for(mins(30)).unwrap());
    assert_eq!(scanner.last_fresh(), Some(seen));
}

#[test]
fn a_writer_that_came_and_went_between_scans_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let scanner = scanner(dir.path(), &clock);
    clock.advance(mins(40));
    assert!(scanner.idle_for(mins(30)).unwrap(), "40 minutes watched, nobody seen");
    // A writer beat for a while and stopped 5 minutes ago; no scan saw it FRESH.
    put(dir.path(), &record(me(), "gone", clock.wall() - mins(5)));
    assert!(!scanner.idle_for(mins(30)).unwrap(), "its last beat is evidence");
    assert_eq!(scanner.last_fresh(), Some(clock.now() - mins(5)));
    assert_eq!(scanner.fresh_count().unwrap(), 0);
    assert!(!scanner.is_active().unwrap());
    clock.advance(mins(25) + secs(1));
    assert!(scanner.idle_for(mins(30)).unwrap());
}

#[test]
fn an_orphans_last_beat_is_evidence_too() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let scanner = scanner(dir.path(), &clock);
    clock.advance(mins(40));
    put(dir.path(), &record(DEAD_PID, "crashed", clock.wall() - secs(30)));
    assert!(!scanner.idle_for(mins(30)).unwrap());
    assert_eq!(scanner.last_fresh(), Some(clock.now() - secs(30)));
}

#[test]
fn a_recent_file_from_another_host_is_no_evidence_of_local_activity() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let scanner = scanner(dir.path(), &clock);
    clock.advance(mins(40));
    let mut v = record(me(), "far", clock.wall() - secs(30));
    v["hostname"] = json!("elsewhere");
    put(dir.path(), &v);
    assert!(scanner.idle_for(mins(30)).unwrap());
    assert_eq!(scanner.last_fresh(), None);
}

#[test]
fn a_stale_file_from_another_host_is_no_evidence_of_local_activity() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let scanner = scanner(dir.path(), &clock);
    clock.advance(mins(40));
    // Older than the one in the test above: STALE rather than REMOTE.
    let mut v = record(me(), "far", clock.wall() - mins(5));
    v["hostname"] = json!("elsewhere");
    put(dir.path(), &v);
    assert_eq!(only(&scanner.scan().unwrap()).status, ScanStatus::Stale);
    assert_eq!(scanner.last_fresh(), None, "last_fresh counts files from this host only");
    assert!(scanner.idle_for(mins(30)).unwrap());
}

// ---- 9. cleanup ----

/// A directory holding one file of each kind, and things cleanup must not touch.
struct Mixed {
    dir: tempfile::TempDir,
    _outside: tempfile::TempDir,
    fresh: PathBuf,
    stale: PathBuf,
    orphan: PathBuf,
    remote: PathBuf,
    link: PathBuf,
    target: PathBuf,
    untouchable: Vec<PathBuf>,
}

fn mixed(clock: &ManualClock) -> Mixed {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = dir.path();
    let now = clock.wall();
    let old = now - secs(600);
    let fresh = put(d, &with_ticks(record(me(), "fresh", now), my_ticks()));
    let stale = put(d, &record(me(), "stale", old));
    let orphan = put(d, &record(DEAD_PID, "orphan", now));
    let mut remote = record(DEAD_PID, "remote", now);
    remote["hostname"] = json!("elsewhere");
    let remote = put(d, &remote);
    // A symlink named like a heartbeat, to a STALE file outside the directory.
    let target = put(outside.path(), &record(DEAD_PID, "target", old));
    let link = d.join("heartbeat-1-link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // Stale contents under names that are not heartbeat names, and a directory that is one.
    let stale_text = record(DEAD_PID, "x", old).to_string();
    let other = put_raw(d, "other.json", &stale_text, old);
    let txt = put_raw(d, "heartbeat-1-x.txt", &stale_text, old);
    let subdir = d.join("heartbeat-2-d.json");
    std::fs::create_dir(&subdir).unwrap();
    Mixed {
        dir,
        _outside: outside,
        fresh,
        stale,
        orphan,
        remote,
        link,
        target,
        untouchable: vec![other, txt, subdir],
    }
}

#[test]
fn the_scan_of_a_mixed_directory_ignores_links_and_directories() {
    let clock = manual_clock();
    let m = mixed(&clock);
    let scan = scanner(m.dir.path(), &clock).scan().unwrap();
    assert_eq!(paths(&scan.entries), set(&[&m.fresh, &m.stale, &m.orphan, &m.remote]));
    let status = |p: &Path| entry(&scan, p).status;
    assert_eq!(
        [&m.fresh, &m.stale, &m.orphan, &m.remote].map(|p| status(p)),
        [ScanStatus::Fresh, ScanStatus::Stale, ScanStatus::Orphan, ScanStatus::Remote]
    );
    let mut ignored: Vec<(PathBuf, String)> =
        scan.ignored.iter().map(|i| (i.path.clone(), i.why.clone())).collect();
    ignored.sort();
    assert_eq!(
        ignored,
        vec![
            (m.link.clone(), "a symbolic link; not followed".to_owned()),
            (m.untouchable[2].clone(), "a directory".to_owned()),
        ]
    );
}

#[test]
fn cleanup_plan_lists_the_stale_and_orphaned_and_removes_nothing() {
    let clock = manual_clock();
    let m = mixed(&clock);
    let plan = scanner(m.dir.path(), &clock).cleanup_plan().unwrap();
    assert_eq!(paths(&plan.removed), set(&[&m.stale, &m.orphan]));
    assert!(plan.kept.is_empty(), "{:#?}", plan.kept);
    for p in [&m.fresh, &m.stale, &m.orphan, &m.remote, &m.link, &m.target].into_iter().chain(&m.untouchable)
    {
        assert!(p.symlink_metadata().is_ok(), "{} was removed by a dry run", p.display());
    }
}

#[test]
fn cleanup_removes_exactly_the_stale_and_orphaned_files() {
    let clock = manual_clock();
    let m = mixed(&clock);
    let scanner = scanner(m.dir.path(), &clock);
    let done = scanner.cleanup().unwrap();
    assert_eq!(paths(&done.removed), set(&[&m.stale, &m.orphan]));
    assert!(done.kept.is_empty(), "{:#?}", done.kept);
    assert!(!m.stale.exists() && !m.orphan.exists());
    for p in [&m.fresh, &m.remote, &m.target].into_iter().chain(&m.untouchable) {
        assert!(p.exists(), "{} was removed", p.display());
    }
    assert!(m.link.symlink_metadata().unwrap().file_type().is_symlink(), "the link itself stays");
    // Nothing left to do.
    let again = scanner.cleanup().unwrap();
    assert!(again.removed.is_empty() && again.kept.is_empty());
}

#[test]
fn a_file_deleted_by_someone_else_after_the_plan_is_simply_not_there() {
    // What is observable from outside: cleanup judges afresh, so a file gone
    // since the plan is neither removed nor kept, and nothing fails.
    let clock = manual_clock();
    let m = mixed(&clock);
    let scanner = scanner(m.dir.path(), &clock);
    assert_eq!(paths(&scanner.cleanup_plan().unwrap().removed), set(&[&m.stale, &m.orphan]));
    std::fs::remove_file(&m.stale).unwrap();
    let done = scanner.cleanup().unwrap();
    assert_eq!(paths(&done.removed), set(&[&m.orphan]));
    assert!(done.kept.is_empty(), "{:#?}", done.kept);
}

#[test]
fn cleanup_racing_another_remover_keeps_nothing_and_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let old = clock.wall() - secs(600);
    let files: Vec<PathBuf> =
        (0..1500).map(|i| put(dir.path(), &record(DEAD_PID, &format!("s{i}"), old))).collect();
    let scanner = scanner(dir.path(), &clock);
    let done = std::thread::scope(|s| {
        // The other remover works from the far end, so the two meet midway.
        let other = s.spawn(|| {
            for path in files.iter().rev() {
                let _ = std::fs::remove_file(path);
            }
        });
        let done = scanner.cleanup().unwrap();
        other.join().unwrap();
        done
    });
    assert!(done.kept.is_empty(), "{:#?}", done.kept);
    let all: HashSet<PathBuf> = files.iter().cloned().collect();
    assert!(paths(&done.removed).is_subset(&all));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

// ---- 10. cleanup judges again just before removing ----

/// What a [`HookedClock`] runs.
type Hook = Box<dyn FnOnce() + Send>;

/// A clock that runs `hook` during one particular read of the wall clock:
/// the way to act inside a cleanup, between its scan and its removals.
///
/// `Scanner::cleanup` reads the wall clock once for its scan, then once per
/// file it re-judges before removing it; `skip = 1` therefore runs the hook
/// after the scan, before the first file is re-judged.
struct HookedClock {
    clock: Arc<ManualClock>,
    hook: Mutex<Option<(usize, Hook)>>,
}

impl HookedClock {
    fn new(clock: Arc<ManualClock>) -> Arc<Self> {
        Arc::new(HookedClock { clock, hook: Mutex::new(None) })
    }

    fn arm(&self, skip: usize, hook: impl FnOnce() + Send + 'static) {
        *self.hook.lock() = Some((skip, Box::new(hook)));
    }

    fn fired(&self) -> bool {
        self.hook.lock().is_none()
    }
}

impl fmt::Debug for HookedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedClock").field("clock", &self.clock).finish_non_exhaustive()
    }
}

impl Clock for HookedClock {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn wall(&self) -> SystemTime {
        let due = {
            let mut hook = self.hook.lock();
            match hook.as_mut() {
                Some((0, _)) => hook.take().map(|(_, f)| f),
                Some((skip, _)) => {
                    *skip -= 1;
                    None
                }
                None => None,
            }
        };
        if let Some(f) = due {
            f();
        }
        self.clock.wall()
    }
}

fn hooked_scanner(dir: &Path, clock: &Arc<HookedClock>) -> Scanner {
    Scanner::builder(dir).clock(clock.clone()).hostname(HOST).boot_id(Some(BOOT.into())).build().unwrap()
}

#[test]
fn a_stale_file_refreshed_between_scan_and_removal_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let manual = manual_clock();
    let clock = HookedClock::new(manual.clone());
    let stale = put(dir.path(), &record(me(), "resumed", manual.wall() - secs(600)));
    let fresh_again = serde_json::to_vec(&record(me(), "resumed", manual.wall())).unwrap();
    let path = stale.clone();
    clock.arm(1, move || std::fs::write(path, fresh_again).unwrap());

    let done = hooked_scanner(dir.path(), &clock).cleanup().unwrap();
    assert!(clock.fired(), "the hook never ran: cleanup reads the clock differently now");
    assert!(done.removed.is_empty(), "{:#?}", done.removed);
    assert_eq!(done.kept.len(), 1, "{:#?}", done.kept);
    let (entry, why) = &done.kept[0];
    assert_eq!((&entry.path, entry.status), (&stale, ScanStatus::Stale), "as the scan found it");
    assert!(why.starts_with("now FRESH"), "{why}");
    assert!(stale.exists());
}

#[test]
fn a_file_replaced_by_a_symlink_between_scan_and_removal_is_kept_with_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let manual = manual_clock();
    let clock = HookedClock::new(manual.clone());
    let old = manual.wall() - secs(600);
    let stale = put(dir.path(), &record(DEAD_PID, "swapped", old));
    let target = put(outside.path(), &record(DEAD_PID, "target", old));
    let (path, to) = (stale.clone(), target.clone());
    clock.arm(1, move || {
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&to, &path).unwrap();
    });

    let done = hooked_scanner(dir.path(), &clock).cleanup().unwrap();
    assert!(clock.fired(), "the hook never ran: cleanup reads the clock differently now");
    assert!(done.removed.is_empty(), "{:#?}", done.removed);
    assert_eq!(done.kept.len(), 1, "{:#?}", done.kept);
    assert_eq!(done.kept[0].1, "a symbolic link; not followed");
    assert!(stale.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(target.exists());
}

#[test]
fn a_file_deleted_by_someone_else_between_scan_and_removal_counts_as_removed() {
    let dir = tempfile::tempdir().unwrap();
    let manual = manual_clock();
    let clock = HookedClock::new(manual.clone());
    let stale = put(dir.path(), &record(DEAD_PID, "raced", manual.wall() - secs(600)));
    let path = stale.clone();
    clock.arm(1, move || std::fs::remove_file(path).unwrap());

    let done = hooked_scanner(dir.path(), &clock).cleanup().unwrap();
    assert!(clock.fired(), "the hook never ran: cleanup reads the clock differently now");
    assert_eq!(paths(&done.removed), set(&[&stale]));
    assert!(done.kept.is_empty(), "{:#?}", done.kept);
}

// ---- 11. watching ----

fn next_event(w: &heartbeat::Watch) -> ScanEvent {
    w.events().recv_timeout(BOUND).unwrap_or_else(|_| panic!("no event within {BOUND:?}"))
}

fn assert_quiet(w: &heartbeat::Watch) {
    if let Ok(event) = w.events().recv_timeout(QUIET) {
        panic!("unexpected event: {event:#?}");
    }
}

fn appeared(event: ScanEvent) -> ScanEntry {
    match event {
        ScanEvent::Appeared(e) => e,
        other => panic!("expected Appeared, got {other:#?}"),
    }
}

#[test]
fn a_watch_reports_appearances_changes_and_disappearances() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clock = manual_clock();
    let t0 = clock.wall();
    let a = put(d, &record(me(), "a", t0));
    let o = put(d, &record(DEAD_PID, "o", t0));
    let scanner = Scanner::builder(d)
        .clock(clock.clone())
        .hostname(HOST)
        .boot_id(Some(BOOT.into()))
        .interval(secs(30))
        .build()
        .unwrap();
    let mut w = scanner.watch().unwrap();

    // The first scan is at once, and everything in it is new.
    let mut first = [appeared(next_event(&w)), appeared(next_event(&w))];
    first.sort_by(|x, y| x.path.cmp(&y.path));
    let mut expected = vec![(a.clone(), ScanStatus::Fresh), (o.clone(), ScanStatus::Orphan)];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(first.iter().map(|e| (e.path.clone(), e.status)).collect::<Vec<_>>(), expected);

    // t = 30: a new writer.
    let b = put(d, &record(me(), "b", t0 + secs(30)));
    clock.advance(secs(30));
    let e = appeared(next_event(&w));
    assert_eq!((&e.path, e.status), (&b, ScanStatus::Fresh));

    // t = 60: nothing changed, nothing said.
    clock.advance(secs(30));
    assert_quiet(&w);

    // t = 120: a and o are past 90 s; b is exactly 90 s old, still FRESH.
    clock.advance(secs(60));
    let mut changed = Vec::new();
    for _ in 0..2 {
        match next_event(&w) {
            ScanEvent::Changed { from, entry } => changed.push((entry.path.clone(), from, entry.status)),
            other => panic!("expected Changed, got {other:#?}"),
        }
    }
    changed.sort_by(|x, y| x.0.cmp(&y.0));
    let mut expected =
        vec![(a.clone(), ScanStatus::Fresh, ScanStatus::Stale), (o, ScanStatus::Orphan, ScanStatus::Stale)];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(changed, expected);
    assert_quiet(&w);

    // t = 150: b is gone.
    std::fs::remove_file(&b).unwrap();
    clock.advance(secs(30));
    match next_event(&w) {
        ScanEvent::Disappeared(e) => assert_eq!((e.path, e.status), (b, ScanStatus::Fresh), "as last seen"),
        other => panic!("expected Disappeared, got {other:#?}"),
    }
    assert_quiet(&w);

    let started = Instant::now();
    w.stop();
    w.stop();
    assert!(started.elapsed() < BOUND);
    assert!(w.events().try_recv().is_err());
}

#[test]
fn stop_is_prompt_mid_interval_and_keeps_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = put(dir.path(), &record(me(), "a", SystemTime::now()));
    // A real clock and an hour between scans: only the stop message can end the wait.
    let scanner = Scanner::builder(dir.path())
        .hostname(HOST)
        .boot_id(Some(BOOT.into()))
        .interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut w = scanner.watch().unwrap();
    let started = Instant::now();
    w.stop();
    assert!(started.elapsed() < BOUND, "stop took {:?}", started.elapsed());
    // The first scan happens at once, before the thread looks at its stop channel.
    assert_eq!(appeared(w.events().try_recv().expect("the first scan's event")).path, path);
    assert!(w.events().try_recv().is_err());
}

#[test]
fn dropping_a_watch_stops_and_joins_it_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let scanner = Scanner::builder(dir.path()).interval(Duration::from_secs(3600)).build().unwrap();
    let w = scanner.watch().unwrap();
    let events = w.events().clone();
    let started = Instant::now();
    drop(w);
    assert!(started.elapsed() < BOUND, "drop took {:?}", started.elapsed());
    // The thread is gone, and with it the only sender.
    assert_eq!(events.recv_timeout(BOUND), Err(crossbeam_channel::RecvTimeoutError::Disconnected));
}

#[test]
fn a_failing_directory_is_reported_once_and_the_picture_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let path = dir.path().join("hb");
    std::fs::write(&path, "").unwrap();
    let scanner = Scanner::builder(&path)
        .clock(clock.clone())
        .hostname(HOST)
        .boot_id(Some(BOOT.into()))
        .interval(secs(30))
        .build()
        .unwrap();
    let w = scanner.watch().unwrap();
    let message = match next_event(&w) {
        ScanEvent::Failed(m) => m,
        other => panic!("expected Failed, got {other:#?}"),
    };
    assert!(message.contains(&path.display().to_string()), "{message}");
    clock.advance(secs(30));
    assert_quiet(&w); // the same failure again: not repeated

    // The directory appears, with a writer in it.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let a = put(&path, &record(me(), "a", clock.wall() + secs(30)));
    clock.advance(secs(30));
    assert_eq!(appeared(next_event(&w)).path, a);

    // It fails again: reported (a new failure after a success), and nothing is said to be gone.
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::write(&path, "").unwrap();
    clock.advance(secs(30));
    assert_eq!(next_event(&w), ScanEvent::Failed(message));
    assert_quiet(&w);
}

// ---- 12. files a real Beater writes ----

#[test]
fn a_beater_in_directory_mode_is_fresh_and_gone_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let beater = Beater::builder().directory(dir.path()).build().unwrap();
    let guard = beater.start().unwrap();
    // The system clock, host name and boot id, as the beater has them.
    let scanner = Scanner::new(dir.path());
    let scan = scanner.scan().unwrap();
    let e = only(&scan);
    assert_eq!(verdict(e), (ScanStatus::Fresh, ScanReason::Running { identity_checked: true }));
    assert_eq!(Some(e.path.as_path()), beater.state_file());
    assert_eq!((e.pid, e.uuid.clone()), (me(), beater.uuid()));
    assert_eq!(e.path.file_name().unwrap().to_str().unwrap(), name_for(me(), &beater.uuid()));
    assert_eq!(e.hostname, Some(heartbeat::process::hostname()));
    assert!(scanner.is_active().unwrap());

    drop(guard);
    assert_eq!(scanner.scan().unwrap(), Scan::default());
}

// ---- 13. large directories ----

#[test]
fn a_large_directory_scans_the_same_on_four_threads_as_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clock = manual_clock();
    let now = clock.wall();
    let ticks = my_ticks();
    for i in 0..2000u64 {
        let uuid = format!("u{i:04}");
        let age = secs(i % 200);
        if i % 6 == 4 {
            put_raw(d, &name_for(me(), &uuid), r#"{"pid": "#, now - age);
            continue;
        }
        let v = match i % 6 {
            0 => with_ticks(record(me(), &uuid, now - age), ticks),
            1 => with_ticks(record(me(), &uuid, now - age), ticks + 1),
            2 => record(DEAD_PID, &uuid, now - age),
            3 => {
                let mut v = record(DEAD_PID, &uuid, now - age);
                v["hostname"] = json!("elsewhere");
                v
            }
            _ => record(me(), &uuid, now + secs(i % 7)),
        };
        put(d, &v);
    }
    for i in 0..10 {
        put_raw(d, &format!("heartbeat-garbage{i}.json"), "garbage", now);
    }
    let scan = |threads: usize| {
        let scanner = Scanner::builder(d)
            .clock(clock.clone())
            .hostname(HOST)
            .boot_id(Some(BOOT.into()))
            .threads(threads)
            .build()
            .unwrap();
        let mut scan = scanner.scan().unwrap();
        scan.entries.sort_by(|a, b| a.path.cmp(&b.path));
        scan.ignored.sort_by(|a, b| a.path.cmp(&b.path));
        // And again, from the start-time cache.
        let mut again = scanner.scan().unwrap();
        again.entries.sort_by(|a, b| a.path.cmp(&b.path));
        again.ignored.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(scan, again, "{threads} threads, second scan");
        scan
    };
    let one = scan(1);
    assert_eq!((one.entries.len(), one.ignored.len()), (2000, 10));
    for status in
        [ScanStatus::Fresh, ScanStatus::Stale, ScanStatus::Orphan, ScanStatus::Remote, ScanStatus::Skewed]
    {
        assert!(one.entries.iter().any(|e| e.status == status), "no {status} entry");
    }
    assert!(one.entries.iter().any(|e| matches!(e.why, ScanReason::PidReused { .. })));
    assert!(one.entries.iter().any(|e| e.fallback.is_some()));
    let four = scan(4);
    assert!(one == four, "one thread and four disagree");
}

// ---- review fixes ----

#[test]
fn a_file_without_a_uuid_takes_the_one_in_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let contents = json!({"pid": me(), "last_refresh": format_timestamp(clock.wall())}).to_string();
    put_raw(dir.path(), &name_for(me(), "from-name"), &contents, clock.wall());
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!((e.uuid.as_str(), e.fallback), ("from-name", None));
}

#[test]
fn a_torn_file_whose_name_is_not_utf8_still_falls_back_to_its_pid() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    let name = std::ffi::OsStr::from_bytes(format!("heartbeat-{DEAD_PID}-\u{1}.json").as_bytes()).to_owned();
    let mut bytes = name.as_bytes().to_vec();
    let at = bytes.len() - 6;
    bytes[at] = 0xff; // the uuid's one byte: not UTF-8
    let path = dir.path().join(std::ffi::OsStr::from_bytes(&bytes));
    std::fs::write(&path, "{\"pid\"").unwrap();
    File::options().write(true).open(&path).unwrap().set_modified(clock.wall() - secs(3)).unwrap();
    let e = only(&scanner(dir.path(), &clock).scan().unwrap()).clone();
    assert_eq!((e.pid, e.status, e.path), (DEAD_PID, ScanStatus::Orphan, path));
    assert!(e.fallback.is_some());
}

#[test]
fn a_watch_with_an_interval_too_large_for_the_clock_scans_once_and_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let clock = manual_clock();
    put(dir.path(), &record(me(), "once", clock.wall()));
    let scanner = Scanner::builder(dir.path())
        .clock(clock.clone())
        .hostname(HOST)
        .boot_id(Some(BOOT.into()))
        .interval(Duration::from_secs(u64::MAX / 2))
        .build()
        .unwrap();
    let mut w = scanner.watch().unwrap();
    assert_eq!(appeared(next_event(&w)).status, ScanStatus::Fresh);
    clock.advance(mins(60));
    assert_quiet(&w);
    let started = Instant::now();
    w.stop();
    assert!(started.elapsed() < BOUND);
    assert!(w.events().try_recv().is_err(), "no Failed event: the thread did not die");
}
