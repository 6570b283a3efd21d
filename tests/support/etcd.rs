//! A real etcd for a test: started on 127.0.0.1 with free ports and a
//! temporary data directory, stopped (killed and reaped) on drop, every wait
//! bounded. Included by the test crates that need one (`#[path]`).
//!
//! etcd comes from Debian's `etcd-server` package (`.ci/run` installs it);
//! `HEARTBEAT_ETCD` names another binary. Without one, each test that needs
//! it is skipped, with one line on stderr naming what is missing, unless
//! `HEARTBEAT_REQUIRE_ETCD=1` (set by `.ci/run`): then it fails, so that CI
//! cannot pass without running them.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use heartbeat::etcd::Client;

/// How long etcd may take to start answering.
const START_BOUND: Duration = Duration::from_secs(20);

/// One etcd member on loopback.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The etcd binary: `HEARTBEAT_ETCD`, or `etcd` on the `PATH` (or in
/// `/usr/bin`, `/usr/local/bin`); `None` if there is none.
fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HEARTBEAT_ETCD") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/bin".into(), "/usr/local/bin".into()]);
    dirs.map(|dir| dir.join("etcd")).find(|candidate| candidate.is_file())
}

/// Without an etcd binary: one line on stderr (the test is skipped), or a
/// panic where `HEARTBEAT_REQUIRE_ETCD=1`.
fn skip_without_etcd() {
    let why = "no etcd binary: not on the PATH, not in /usr/bin or /usr/local/bin, and no HEARTBEAT_ETCD; \
               install it (apt-get install etcd-server)";
    if std::env::var_os("HEARTBEAT_REQUIRE_ETCD").is_some_and(|v| v == "1") {
        panic!("HEARTBEAT_REQUIRE_ETCD=1 and {why}");
    }
    // Once per test binary, and past the harness's capture of `eprintln!`
    // (which shows a passing test's output only with --nocapture).
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipping the tests that need etcd: {why}");
    });
}

impl Etcd {
    /// Starts etcd and waits (bounded) until it answers; `None` (the test
    /// returns: skipped, with a line on stderr) when there is no etcd to
    /// start and `HEARTBEAT_REQUIRE_ETCD` is not `1`.
    #[must_use]
    pub fn start() -> Option<Etcd> {
        if binary().is_none() {
            skip_without_etcd();
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Etcd { child: None, dir, client_port: free_port(), peer_port: free_port() };
        etcd.launch();
        Some(etcd)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A client for it, with a short timeout.
    pub fn client(&self) -> Client {
        Client::with_timeout(&[self.url()], Duration::from_secs(3)).unwrap()
    }

    /// The data directory (kept across `stop` and `restart`).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops it (SIGKILL) and reaps it; the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The pid of the running etcd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd is not running").id()
    }

    fn launch(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(binary().expect("checked by start"))
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-outputs=stderr")
            .env_remove("ETCD_UNSUPPORTED_ARCH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        self.child = Some(child);
        let c = Client::with_timeout(&[client.as_str()], Duration::from_secs(1)).unwrap();
        let deadline = Instant::now() + START_BOUND;
        loop {
            if c.range_prefix("readiness/").is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                panic!("etcd exited ({status}) before answering:\n{}", tail(&log));
            }
            assert!(Instant::now() < deadline, "etcd did not answer within {START_BOUND:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The end of etcd's log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default())
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (bounded by `bound`) until `cond` holds, checking every 20 ms.
pub fn eventually(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {bound:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}
