//! The paths a user gives the binary (`--state`, `--token-file`,
//! `--key-file`, `--beat-file`, a hook, a heartbeat file or directory) when
//! they are not what they should be: a FIFO, a directory, missing. Each is
//! refused at once, saying what it is, with the exit code of a failed
//! start (or, for `send`, of a bad argument); and SIGTERM ends a start-up
//! that blocks. Every child process is killed on drop, every wait bounded.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[path = "support/child.rs"]
mod child;
use child::{Spawned, heartbeat, read_lines};

const BOUND: Duration = Duration::from_secs(10);

/// Runs the binary to its end, within [`BOUND`] (killed and failed after):
/// how it exited and what it said (stderr, then stdout, where `check`
/// says why a file is not alive).
fn run(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Spawned(
        heartbeat()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = child.wait_bounded(BOUND, &format!("heartbeat {}", args.join(" ")));
    let mut said = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut said).unwrap();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut said).unwrap();
    (status, said)
}

fn mkfifo(path: &Path) -> PathBuf {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", path.display());
    path.to_owned()
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

#[test]
fn a_fifo_given_for_a_file_is_refused_at_once_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], i32)] = &[
        (&["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--state", "FIFO"], 1),
        (&["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--token-file", "FIFO"], 1),
        (&["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--beat-file", "FIFO"], 1),
        (&["serve", "--listen", "127.0.0.1:0", "--beat-file", "FIFO"], 1),
        (&["peer", "127.0.0.1:1", "--key-file", "FIFO"], 1),
        (&["send", "http://127.0.0.1:1", "job", "--token-file", "FIFO"], 2),
        (&["beat", "FIFO", "--once"], 1),
        (&["beat", "FIFO"], 1),
        (&["check", "FIFO"], 1),
    ];
    for (i, (args, code)) in cases.iter().enumerate() {
        let fifo = mkfifo(&dir.path().join(format!("fifo{i}")));
        let fifo_arg = fifo.to_str().unwrap();
        let args: Vec<&str> = args.iter().map(|&a| if a == "FIFO" { fifo_arg } else { a }).collect();
        let (status, stderr) = run(&args);
        assert_eq!(status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(fifo_arg) && stderr.contains("is a FIFO, not a regular file"),
            "{args:?}: {stderr}"
        );
        assert!(is_fifo(&fifo), "{args:?} replaced or removed the FIFO");
    }
    // A directory to scan that is a FIFO: the scan's own code for a
    // directory that cannot be listed.
    let fifo = mkfifo(&dir.path().join("dir-fifo"));
    let (status, stderr) = run(&["scan", fifo.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("dir-fifo: it is a FIFO, not a directory"), "{stderr}");
    let (status, stderr) = run(&["beat", "--dir", fifo.to_str().unwrap(), "--once"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("dir-fifo is a FIFO, not a directory"), "{stderr}");
}

#[test]
fn a_directory_given_for_a_file_is_said_to_be_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // The exit code of a start that failed (README: serve exits 1 for a
    // --beat-file that cannot be written), and no advice that does not fit.
    for (args, code) in [
        (&["serve", "--listen", "127.0.0.1:0", "--beat-file", d][..], 1),
        (&["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--beat-file", d], 1),
        (&["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--state", d], 1),
        (&["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--token-file", d], 1),
        (&["peer", "127.0.0.1:1", "--key-file", d], 1),
        (&["beat", d, "--once"], 1),
    ] {
        let (status, stderr) = run(args);
        assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains("is a directory, not a regular file"), "{args:?}: {stderr}");
        assert!(!stderr.contains("chmod"), "{args:?}: {stderr}");
        if args.contains(&"--beat-file") {
            assert!(stderr.contains(&format!("heartbeat file {d} ")), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn beat_names_the_file_it_was_given_not_its_lock_file() {
    let (status, stderr) = run(&["beat", "/proc/nope/x.json", "--once"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write heartbeat file /proc/nope/x.json: "), "{stderr}");
    assert!(stderr.contains("directory /proc/nope"), "{stderr}");
    assert!(!stderr.contains(".lock"), "{stderr}");
}

#[test]
fn send_with_a_token_file_it_cannot_read_is_a_bad_argument() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    // Exit 1 would say the monitor did not take the beat: it was never asked.
    let (status, stderr) =
        run(&["send", "http://127.0.0.1:1", "job", "--token-file", missing.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read the token file") && stderr.contains("missing"), "{stderr}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let (status, stderr) =
        run(&["send", "127.0.0.1:1", "job", "--udp", "--token-file", empty.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the token must be"), "{stderr}");
}

#[test]
fn a_hook_naming_a_file_that_cannot_run_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("alert.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let hook = format!("{} --now", script.display());
    let (status, stderr) =
        run(&["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--on-timeout", &hook]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--on-timeout: ") && stderr.contains("alert.sh is not executable"), "{stderr}");
    let (status, stderr) = run(&[
        "monitor",
        "--listen",
        "127.0.0.1:0",
        "--udp",
        "off",
        "--on-warning",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--on-warning: ") && stderr.contains("is a directory"), "{stderr}");
}

#[test]
fn a_state_file_repeating_an_id_restores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"format": "heartbeat-monitor-state", "version": 1, "saved_at": "2026-11-30T05:00:00Z", "sessions": [
            {"session_id": "backup", "agent_type": "cron", "last_beat": "2026-11-30T05:00:00Z"},
            {"session_id": "backup", "agent_type": "cron", "last_beat": "2026-11-30T05:00:05Z"}]}"#,
    )
    .unwrap();
    let mut child = Spawned(
        heartbeat()
            .args(["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--max-sessions", "1", "--state"])
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = read_lines(child.stdout.take().unwrap());
    let mut said = Vec::new();
    while !said.last().is_some_and(|l: &String| l.starts_with("restored")) {
        match lines.recv_timeout(BOUND) {
            Ok(line) => said.push(line),
            Err(_) => {
                let status = child.wait_bounded(BOUND, "monitor");
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                panic!("no `restored` line; {status}: {said:?} {stderr}");
            }
        }
    }
    assert_eq!(said.last().unwrap(), &format!("restored 1 sessions from {}", state.display()));
    child.signal(libc::SIGTERM);
    assert!(child.wait_bounded(BOUND, "monitor").success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("repeats")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("repeats 1 session id (1 extra entry): kept the entry with the latest beat"),
        "{stderr}"
    );
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["sessions"].as_array().unwrap().len(), 1, "{saved}");
}

/// A pipe that is full: whoever writes into it blocks (its reader is kept
/// open and never read).
fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    let (reader, mut writer) = std::io::pipe().unwrap();
    let fd = writer.as_raw_fd();
    let set = |nonblocking: bool| {
        // SAFETY: fcntl on a descriptor the test owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let flags = if nonblocking { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }, 0);
    };
    set(true);
    let mut filled = 0;
    for chunk in [4096, 1] {
        let bytes = vec![b'x'; chunk];
        loop {
            match writer.write(&bytes) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the pipe: {e}"),
            }
        }
    }
    assert!(filled >= 4096, "{filled}");
    // The child's writes must block, not fail: the flag is the open
    // description's, shared with the child.
    set(false);
    (reader, writer)
}

/// Waits (within [`BOUND`]) until `pid`'s main thread sleeps in a pipe
/// write. Where the kernel does not say (`wchan` hidden), the test goes on
/// after the bound: what it checks holds whenever the signal comes.
fn blocked_in_pipe_write(pid: u32) {
    let deadline = Instant::now() + BOUND;
    while Instant::now() < deadline {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        if wchan.contains("pipe_write") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_ends_a_start_up_that_is_blocked() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // A token file its group may read: the monitor warns on stderr while it
    // starts. With stderr a full pipe nobody reads, that warning blocks.
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let cases: [Vec<&std::ffi::OsStr>; 2] = [
        ["monitor", "--listen", "127.0.0.1:0", "--udp", "off", "--token-file"]
            .iter()
            .map(std::ffi::OsStr::new)
            .chain([token.as_os_str()])
            .collect(),
        // serve logs its nick authentication (at the default level) as
        // soon as the hub runs, before it is up.
        ["serve", "--listen", "127.0.0.1:0", "--nick-auth-id", "127.0.0.1:5222"]
            .iter()
            .map(std::ffi::OsStr::new)
            .collect(),
    ];
    for args in cases {
        let (_reader, writer) = full_pipe();
        let mut child = Spawned(
            heartbeat()
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(writer)
                .spawn()
                .unwrap(),
        );
        blocked_in_pipe_write(child.id());
        child.signal(libc::SIGTERM);
        // Before the fix the signal only set a flag that nothing read: the
        // process stayed blocked for ever.
        let status = child.wait_bounded(BOUND, &format!("{args:?} blocked in its start-up, after SIGTERM"));
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{args:?}: {status}");
    }
}
