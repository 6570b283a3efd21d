//! The binary as a child process of a test: killed and reaped if the test
//! ends first, its stdout read line by line on a thread, every wait bounded.
//! Included by the test crates that run the binary (`#[path]`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::process::{Child, ChildStdout, Command, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The binary, with the environment that would change what it does
/// (systemd's notify socket and watchdog, the log filter) removed.
pub fn heartbeat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartbeat"));
    cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_PID").env_remove("RUST_LOG");
    cmd
}

/// A child process, killed and reaped on drop.
pub struct Spawned(pub Child);

impl Spawned {
    /// Sends `sig` to it.
    pub fn signal(&self, sig: i32) {
        heartbeat::process::send_signal(self.0.id(), sig).unwrap();
    }

    /// Waits for it to exit; fails the test if `what` is still running
    /// after `bound`.
    pub fn wait_bounded(&mut self, bound: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{what} did not exit within {bound:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's stdout, line by line, on a thread (it ends at EOF).
pub fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The lines a rate-limited call site was asked for: the lines written
/// that contain `line`, and the counts of those suppressed, which come
/// with the next line written or in a summary line containing `summary`.
pub fn told(log: &str, line: &str, summary: &str) -> u64 {
    let count = |l: &str| -> u64 {
        l.split_once(" similar line")
            .and_then(|(before, _)| before.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .filter(|l| l.contains(line) || l.contains(summary))
        .map(|l| if l.contains(summary) { count(l) } else { 1 + count(l) })
        .sum()
}
