//! The files in `contrib/` as an operator uses them: the systemd units pass
//! `systemd-analyze verify` (where it is installed) and their command lines
//! start the real binary; the Dockerfile's probe is a valid `check`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "support/child.rs"]
mod child;
use child::{Spawned, heartbeat, read_lines};

const BOUND: Duration = Duration::from_secs(10);
const INSTALLED: &str = "/usr/local/bin/heartbeat";

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(path)
}

fn units() -> Vec<PathBuf> {
    let mut units: Vec<PathBuf> = std::fs::read_dir(contrib("systemd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    assert_eq!(units.len(), 2, "{units:?}");
    units
}

/// The unit's `ExecStart=` words, without the program.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart line");
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some(INSTALLED), "{line}");
    words.collect()
}

#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for unit in units() {
        // The unit names the installed binary; verify checks that it exists.
        let text =
            std::fs::read_to_string(&unit).unwrap().replace(INSTALLED, env!("CARGO_BIN_EXE_heartbeat"));
        let copy = dir.path().join(unit.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", unit.display());
        let name = unit.file_name().unwrap().to_str().unwrap();
        assert!(!err.contains(name), "{}: {err}", unit.display());
        for setting in
            ["Type=notify", "WatchdogSec=", "LimitNOFILE=", "NoNewPrivileges=yes", "ProtectSystem=strict"]
        {
            assert!(std::fs::read_to_string(&unit).unwrap().contains(setting), "{name} lacks {setting}");
        }
    }
}

#[test]
fn systemd_units_command_lines_start_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    for unit in units() {
        let text = std::fs::read_to_string(&unit).unwrap();
        // Ports and paths of this test's own: loopback port 0 and a temporary directory.
        let args: Vec<String> = exec_start(&text)
            .into_iter()
            .map(|a| {
                if a.starts_with("127.0.0.1:") {
                    "127.0.0.1:0".to_owned()
                } else if let Some(name) = a.strip_prefix("/var/lib/heartbeat/") {
                    dir.path().join(name).to_str().unwrap().to_owned()
                } else {
                    a
                }
            })
            .collect();
        let mut args = args;
        // A unit that relies on a default address (the monitor's HTTP and UDP
        // 127.0.0.1:9333) gets port 0 too: no test binds a fixed port, which
        // would fail beside a monitor the quick start left running.
        if args.first().is_some_and(|a| a == "monitor") {
            for flag in ["--listen", "--udp"] {
                if !args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
                    args.extend([flag.to_owned(), "127.0.0.1:0".to_owned()]);
                }
            }
        }
        let mut child = heartbeat().args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
        let lines = read_lines(child.stdout.take().unwrap());
        let mut child = Spawned(child);
        let line = lines
            .recv_timeout(BOUND)
            .unwrap_or_else(|_| panic!("{}: {args:?} did not start", unit.display()));
        assert!(line.starts_with("listening on "), "{}: {line}", unit.display());
        child.signal(libc::SIGTERM);
        assert!(child.wait_bounded(BOUND, "the unit's command").success(), "{}", unit.display());
    }
}

#[test]
fn the_dockerfile_probe_is_a_valid_check() {
    let dockerfile = std::fs::read_to_string(contrib("docker/Dockerfile")).unwrap();
    let cmd =
        dockerfile.lines().find(|l| l.trim_start().starts_with("CMD [\"heartbeat\", \"check\"")).unwrap();
    let args: Vec<String> = serde_json::from_str(cmd.trim_start().strip_prefix("CMD ").unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.json");
    let mut args: Vec<String> = args.into_iter().skip(1).collect();
    args[1] = file.to_str().unwrap().to_owned();
    // Missing: not alive (1), never a usage error (2).
    assert_eq!(heartbeat().args(&args).output().unwrap().status.code(), Some(1));
    assert!(heartbeat().args(["beat", file.to_str().unwrap(), "--once"]).status().unwrap().success());
    // Written by a process that has exited: `--pid` says so at once.
    assert_eq!(heartbeat().args(&args).output().unwrap().status.code(), Some(1));
}
