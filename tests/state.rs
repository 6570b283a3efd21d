//! Reading heartbeat files: every way one can be wrong, told apart.

use std::path::Path;
use std::time::{Duration, SystemTime};

use heartbeat::{Error, WriteOptions, age, is_alive, is_alive_at, parse_timestamp, read_state, write_atomic};

fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn beat_at(t: SystemTime) -> String {
    format!(r#"{{"pid": 1, "hostname": "h", "timestamp": "{}"}}"#, heartbeat::format_timestamp(t))
}

#[test]
fn read_state_tells_the_failures_apart() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    assert!(matches!(read_state(&missing), Err(Error::NotFound { path }) if path == missing));
    assert!(matches!(read_state(dir.path()), Err(Error::Unreadable { .. })));
    let bad = write(dir.path(), "bad.json", "{not json");
    assert!(matches!(read_state(&bad), Err(Error::NotJson { path, .. }) if path == bad));
    let empty = write(dir.path(), "empty.json", "");
    assert!(matches!(read_state(&empty), Err(Error::NotJson { .. })));
    let no_pid = write(dir.path(), "nopid.json", r#"{"timestamp": "2026-01-12T10:00:00Z"}"#);
    let err = read_state(&no_pid).unwrap_err();
    assert!(matches!(err, Error::MissingField { field: "pid", .. }));
    assert!(err.to_string().contains("nopid.json"), "{err}");
}

#[test]
fn is_alive_judges_age_and_rejects_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let max = Duration::from_secs(30);
    let fresh = write(dir.path(), "fresh.json", &beat_at(SystemTime::now()));
    assert!(is_alive(&fresh, max));
    let old = write(
        dir.path(),
        "old.json",
        r#"{"pid": 1, "hostname": "h", "timestamp": "2020-01-01T00:00:00+00:00"}"#,
    );
    assert!(!is_alive(&old, max));
    assert!(!is_alive(dir.path().join("missing.json"), max));
    let bad_ts = write(dir.path(), "badts.json", r#"{"pid": 1, "hostname": "h", "timestamp": "not-a-date"}"#);
    assert!(!is_alive(&bad_ts, max));
    let corrupt = write(dir.path(), "corrupt.json", r#"{"pid": 1, "timest"#);
    assert!(!is_alive(&corrupt, max));
    let future = write(dir.path(), "future.json", &beat_at(SystemTime::now() + Duration::from_secs(3600)));
    assert!(!is_alive(&future, max));
    assert!(matches!(age(&future, SystemTime::now()), Err(Error::ClockSkew { .. })));
}

#[test]
fn the_boundary_is_inclusive_and_small_skew_is_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let t = parse_timestamp("2026-01-12T10:00:00Z").unwrap();
    let path = write(dir.path(), "b.json", &beat_at(t));
    let max = Duration::from_secs(30);
    assert!(is_alive_at(&path, max, t + max));
    assert!(!is_alive_at(&path, max, t + max + Duration::from_millis(1)));
    assert!(is_alive_at(&path, max, t - Duration::from_secs(1)));
    assert_eq!(age(&path, t - Duration::from_secs(1)).unwrap(), Duration::ZERO);
    let err = age(&path, t - Duration::from_secs(90)).unwrap_err();
    assert!(matches!(err, Error::ClockSkew { ahead, .. } if ahead == Duration::from_secs(90)));
    assert!(err.to_string().contains("in the future"), "{err}");
}

#[test]
fn other_writers_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // What the kstlib seed writes (json.dumps(indent=2), isoformat()).
    let kstlib = write(
        dir.path(),
        "k.json",
        "{\n  \"timestamp\": \"2026-01-12T10:00:00.123456+00:00\",\n  \"pid\": 1234,\n  \"hostname\": \"myhost\",\n  \"metadata\": {}\n}",
    );
    let s = read_state(&kstlib).unwrap();
    assert_eq!((s.pid, s.hostname.as_deref()), (1234, Some("myhost")));
    // What the scanner seed's wrappers write.
    let scanner = write(
        dir.path(),
        "heartbeat-12345-01HZQ.json",
        r#"{"pid": 12345, "uuid": "01HZQ", "started_at": "2026-05-02T15:00:00Z", "last_refresh": "2026-05-02T15:14:30Z", "wrapper_version": "1.0.0", "schema_version": 1}"#,
    );
    let s = read_state(&scanner).unwrap();
    assert_eq!(s.last_beat, parse_timestamp("2026-05-02T15:14:30Z").unwrap());
    assert_eq!(s.started_at, parse_timestamp("2026-05-02T15:00:00Z"));
}

#[test]
fn hostile_paths_are_unreadable_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.json");
    // A FIFO with no writer: a blocking open would wait forever.
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = read_state(&fifo).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    let huge = dir.path().join("huge.json");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(heartbeat::MAX_STATE_BYTES + 1).unwrap();
    let err = read_state(&huge).unwrap_err();
    assert!(matches!(err, Error::Unreadable { .. }) && err.to_string().contains("larger than"), "{err}");

    let err = read_state(dir.path()).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
    assert!(matches!(read_state("/dev/zero"), Err(Error::Unreadable { .. })));
}

#[test]
fn replacing_swaps_files_but_never_moves_links_or_directories() {
    let dir = tempfile::tempdir().unwrap();
    let fast = WriteOptions::default();
    let durable = WriteOptions { fsync: true, ..fast };
    let file = dir.path().join("hb.json");
    for (i, options) in [fast, fast, durable, fast].into_iter().enumerate() {
        write_atomic(&file, format!("beat {i}").as_bytes(), options).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("beat {i}"));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the old file is gone, no temp left");

    // A symlink at the target is replaced, as rename(2) does; what it points to is untouched.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    write_atomic(&link, b"new", fast).unwrap();
    assert!(link.symlink_metadata().unwrap().is_file());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // A directory at the target is an error, and stays where and what it was.
    let sub = dir.path().join("sub.json");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inside"), "kept").unwrap();
    let err = write_atomic(&sub, b"new", fast).unwrap_err();
    assert!(matches!(err, Error::Write { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(sub.join("inside")).unwrap(), "kept");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "no temp file left behind: {names:?}");
}
