//! The C API from C: builds `libheartbeat.a` and `libheartbeat.so` with
//! `cargo rustc --lib --features capi --crate-type staticlib,cdylib` (in a
//! target directory of its own), compiles the programs under `tests/c/` and
//! `examples/c/` with the system `cc` (C11, `-Wall -Wextra -Werror
//! -pedantic`), runs them with a bounded wait, and checks what they print
//! and leave on disk. The header is also compiled as C++17. Where valgrind
//! is installed, the C tests linked against the shared library run under it.
//!
//! Skipped, with a message, when there is no `cc`.

#[path = "support/child.rs"]
mod child;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use child::Spawned;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether C tests can run here; prints why not.
fn cc_available() -> bool {
    let ok = have("cc");
    if !ok {
        eprintln!("skipped: no C compiler (`cc`) on PATH; the C API's C tests did not run");
    }
    ok
}

/// The directory holding `libheartbeat.a` and `libheartbeat.so`, built once
/// per test run.
fn libdir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi-target");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["rustc", "--lib", "--features", "capi", "--crate-type", "staticlib,cdylib", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run cargo rustc");
        assert!(status.success(), "building the C libraries failed");
        target.join("debug")
    })
}

/// Compiles `sources` into `out`, linked statically (or against the shared
/// library when `shared`).
fn compile(sources: &[&str], out: &Path, shared: bool) {
    let lib = libdir();
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("tests/c"));
    for s in sources {
        cc.arg(root().join(s));
    }
    cc.arg("-o").arg(out);
    if shared {
        cc.arg("-L").arg(lib).arg("-lheartbeat").arg(format!("-Wl,-rpath,{}", lib.display()));
    } else {
        cc.arg(lib.join("libheartbeat.a"));
    }
    cc.args(["-lpthread", "-ldl", "-lm"]);
    let output = cc.output().expect("run cc");
    assert!(
        output.status.success(),
        "cc failed for {sources:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs a program with a bounded wait; returns its stdout, failing the
/// test (with both outputs) unless it exits 0.
fn run(mut cmd: Command, what: &str) -> String {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Spawned(cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}")));
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = child.wait_bounded(Duration::from_secs(120), what);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{what} failed ({status}):\n--- stdout\n{out}\n--- stderr\n{err}");
    out
}

fn line_value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

#[test]
fn a_c_program_beats_reads_and_gets_every_error_right() {
    if !cc_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("beater");
    compile(&["tests/c/beater.c"], &exe, false);
    let mut cmd = Command::new(&exe);
    cmd.arg(tmp.path());
    let out = run(cmd, "tests/c/beater.c");
    assert!(out.lines().any(|l| l == "PASS"), "{out}");
    // Freed from an atexit handler, after the main thread's storage is gone.
    assert!(out.lines().any(|l| l == "freed at exit"), "{out}");

    // What the C Beater wrote, the Rust reader and `heartbeat check` accept.
    let state_file = line_value(&out, "STATE_FILE=");
    let state = heartbeat::read_state(state_file).unwrap();
    let mut check = Command::new(env!("CARGO_BIN_EXE_heartbeat"));
    check.args(["check", state_file, "--max-age", "60"]);
    run(check, "heartbeat check");
    assert_eq!(state.metadata["role"], "worker");
    assert_eq!(state.metadata["lang"], "c");
    assert_eq!(state.interval, Some(Duration::from_secs(1)));
    assert_eq!(state.uuid.as_deref(), Some(line_value(&out, "UUID=")));
    assert!(state.pid > 0 && state.pid != i64::from(std::process::id()));
    let beats: u32 = line_value(&out, "beats=").parse().unwrap();
    assert!(beats >= 2, "{out}");
    // Every error path printed its code and a message.
    assert!(out.contains("hb_beater_start(b) -> 4: heartbeat is already running"), "{out}");
}

#[test]
fn forked_children_draw_distinct_uuids_and_inherited_handles_are_refused() {
    if !cc_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("beats");
    std::fs::create_dir(&dir).unwrap();
    let exe = tmp.path().join("fork");
    compile(&["tests/c/fork.c"], &exe, false);
    let mut cmd = Command::new(&exe);
    cmd.arg(&dir);
    let out = run(cmd, "tests/c/fork.c");
    assert!(out.lines().any(|l| l == "PASS"), "{out}");
    // Each of the 4 children is refused twice, the child of a running beater once.
    assert_eq!(out.matches("-> 7: ").count(), 9, "HB_ERR_FORKED in every child:\n{out}");

    let mut uuids = std::collections::BTreeSet::new();
    let mut pids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let state = heartbeat::read_state(entry.unwrap().path()).unwrap();
        uuids.insert(state.uuid.unwrap());
        pids.insert(state.pid);
    }
    assert_eq!((uuids.len(), pids.len()), (4, 4), "{uuids:?} {pids:?}");
}

#[test]
fn the_readme_example_compiles_and_runs() {
    if !cc_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("beat");
    compile(&["examples/c/beat.c"], &exe, false);
    let path = tmp.path().join("svc.json");
    let mut cmd = Command::new(&exe);
    cmd.arg(&path);
    let out = run(cmd, "examples/c/beat.c");
    assert_eq!(out.trim(), format!("{} is alive", path.display()));
    assert_eq!(heartbeat::read_state(&path).unwrap().metadata["role"], "worker");
}

#[test]
fn the_header_compiles_as_cpp17() {
    if !cc_available() {
        return;
    }
    if !have("c++") {
        eprintln!("skipped: no C++ compiler (`c++`) on PATH");
        return;
    }
    let output = Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .arg(root().join("tests/c/header.cpp"))
        .output()
        .unwrap();
    assert!(output.status.success(), "c++ -std=c++17:\n{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_c_monitor_times_a_session_out_by_callback_and_by_poll() {
    if !cc_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("monitor");
    compile(&["tests/c/monitor.c"], &exe, false);
    let out = run(Command::new(&exe), "tests/c/monitor.c");
    assert!(out.lines().any(|l| l == "PASS"), "{out}");
    assert!(out.contains("warnings=1 timeouts=1 failures=1"), "{out}");
    assert!(out.contains("hb_monitor_beat(m, \"nope\") -> 3: no session \"nope\" is registered"), "{out}");
    assert!(out.contains("hb_monitor_start(m) -> 4: heartbeat is already running"), "{out}");
}

/// A directory holding 2 ORPHAN files (the pid of a child that has been
/// reaped) and 1 STALE one (this process, an hour ago), for tests/c/scanner.c.
fn scan_dir(tmp: &Path) -> PathBuf {
    use heartbeat::{HeartbeatState, WriteOptions};
    let dir = tmp.join("beats");
    std::fs::create_dir(&dir).unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = i64::from(child.id());
    child.wait().unwrap();
    let now = std::time::SystemTime::now();
    let base = HeartbeatState::for_current_process(now, Duration::from_secs(1), Default::default());
    for n in 0..2 {
        let state = HeartbeatState { pid: dead, process_start_ticks: None, boot_id: None, ..base.clone() };
        let path = dir.join(format!("heartbeat-{dead}-orphan{n}.json"));
        heartbeat::write_state(&path, &state, WriteOptions::default()).unwrap();
    }
    let old = now - Duration::from_secs(3600);
    let stale = HeartbeatState { last_beat: old, started_at: Some(old), ..base };
    let path = dir.join(format!("heartbeat-{}-stale.json", std::process::id()));
    heartbeat::write_state(&path, &stale, WriteOptions::default()).unwrap();
    dir
}

#[test]
fn a_c_scan_counts_fresh_orphan_and_stale_files() {
    if !cc_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = scan_dir(tmp.path());
    let exe = tmp.path().join("scanner");
    compile(&["tests/c/scanner.c"], &exe, false);
    let mut cmd = Command::new(&exe);
    cmd.arg(&dir);
    let out = run(cmd, "tests/c/scanner.c");
    assert!(out.lines().any(|l| l == "PASS"), "{out}");
    assert!(out.contains("hb_scan(NULL, 0, &entries, &len) -> 1: dir is NULL"), "{out}");
}

#[test]
fn the_readme_monitor_example_compiles_and_runs() {
    if !cc_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("monitor-example");
    compile(&["examples/c/monitor.c"], &exe, false);
    let path = tmp.path().join("svc.json");
    let mut cmd = Command::new(&exe);
    cmd.arg(&path);
    let out = run(cmd, "examples/c/monitor.c");
    assert!(out.contains("worker-2 (worker) timed out"), "{out}");
    assert!(!out.contains("worker-1 (worker) timed out"), "{out}");
    assert!(heartbeat::read_state(&path).is_ok());
}

#[test]
fn under_valgrind_against_the_shared_library_nothing_leaks() {
    if !cc_available() {
        return;
    }
    if !have("valgrind") {
        eprintln!("skipped: valgrind is not installed; the C tests did not run under it");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for program in ["beater", "monitor", "scanner"] {
        let exe = tmp.path().join(format!("{program}-shared"));
        compile(&[&format!("tests/c/{program}.c")], &exe, true);
        // Definite and indirect leaks fail the test; "possibly lost" does not:
        // the one such block is std's handle for the C main thread
        // (`thread::current`, made once when a Rust channel first waits there),
        // held through a tagged thread-local pointer for the thread's life.
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "-q",
        ])
        .arg(&exe);
        match program {
            "beater" => {
                cmd.arg(tmp.path());
            }
            "scanner" => {
                cmd.arg(scan_dir(tmp.path()));
            }
            _ => {}
        }
        let out = run(cmd, &format!("tests/c/{program}.c under valgrind"));
        assert!(out.lines().any(|l| l == "PASS"), "{program}: {out}");
    }
}
