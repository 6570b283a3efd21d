//! Hooks: shell commands run when a session warns, times out, fails or
//! recovers, on a thread of their own.
//!
//! Events reach the hook thread through a bounded queue: when it is full the
//! event is counted as dropped and logged (a few lines per 10 s with the
//! count of the others, as every hook line is), never buffered without
//! bound, and never waited for by whoever reported it. At most
//! [`HookConfig::max_running`] hooks run at once, each counted until
//! everything it started is dead.
//!
//! **Containment (Linux).** Each hook's shell runs under a supervisor
//! process of its own (`crate::sys::supervise`), a child subreaper: every
//! process the hook starts stays its descendant, a daemon that calls
//! `setsid` or forks twice included, since orphans are reparented to the
//! supervisor rather than to init. When the shell exits, when the hook
//! outlives [`HookConfig::timeout`], when the hooks stop, and when the
//! monitor dies (even by `SIGKILL`: the supervisor asks for a signal when
//! its parent thread ends), the supervisor kills every descendant and exits
//! only once none is left; a slot is free only then. Not contained: a
//! process started outside the hook's tree on its behalf (`systemd-run`,
//! `at`, a request to a daemon such as `docker run`); a process that
//! changes credentials (a setuid helper) and so cannot be signalled, when
//! the monitor is not root; anything left behind by a hook that kills its
//! own supervisor (`kill -9 $PPID`). Elsewhere than Linux each hook only
//! gets a process group of its own, killed at the same moments, which a
//! `setsid` escapes.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use crate::error::Result;
use crate::lograte::{LogLimit, log_limit};

/// How often a running hook is checked for having exited. Only while hooks
/// run: with none running the thread sleeps until an event comes.
const REAP_EVERY: Duration = Duration::from_millis(10);

/// The hooks' lines: a flood of failure reports fills the queue, and a
/// hook that fails fast fails as often as it is run.
static DROPPED: LogLimit = log_limit!(log::Level::Warn, "hook queue full, hooks dropped");
static FAILED: LogLimit = log_limit!(log::Level::Warn, "hooks failed");
static TIMED_OUT: LogLimit = log_limit!(log::Level::Warn, "hooks killed after their timeout");

/// The program a hook names by its path, when the shell would run that
/// file: the first word of the command, if it holds a `/` and nothing the
/// shell would quote, expand or redirect (`A=1 cmd`, `$HOME/x`, `>log x`
/// and `'/a b'` are left to the shell).
fn hook_program(command: &str) -> Option<&std::path::Path> {
    let first = command.split_ascii_whitespace().next()?;
    let plain = !first.bytes().any(|b| b"'\"\\$`;&|<>(){}[]*?~=#!".contains(&b));
    (plain && first.contains('/')).then(|| std::path::Path::new(first))
}

/// Checks a hook command before it is ever run: one that names its
/// program by path must name an executable regular file (found out at the
/// start, not at the first timeout, in a log line); a command left to the
/// shell (`logger ...`, `A=1 /bin/x`) is not checked. An
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) says what is
/// wrong: "/x/alert.sh is a FIFO, not a regular file".
pub fn check_hook_command(command: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(program) = hook_program(command) else { return Ok(()) };
    let why = match std::fs::metadata(program) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        Err(e) => format!("cannot be looked at: {e}"),
        Ok(meta) if !meta.is_file() => {
            format!("is {}, not a regular file", crate::files::kind(meta.file_type()))
        }
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            format!("is not executable (mode {:o}; chmod +x it)", meta.permissions().mode() & 0o7777)
        }
        Ok(_) => return Ok(()),
    };
    Err(crate::Error::InvalidConfig(format!("{} {why}", program.display())))
}

/// The commands and their limits.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Run on a session's first missed beat.
    pub on_warning: Option<String>,
    /// Run when a session times out, or reports a failure (`/ping/{id}/fail`).
    pub on_timeout: Option<String>,
    /// Run when a warned or failed session beats again.
    pub on_recovery: Option<String>,
    /// A hook still running after this long is killed, with every process
    /// it started. Default 30 s.
    pub timeout: Duration,
    /// Hooks running at once, at most, each with what it started. Default 4.
    pub max_running: usize,
    /// Events waiting for a free slot, at most; more are dropped and counted.
    /// Default 1,024.
    pub queue: usize,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            on_warning: None,
            on_timeout: None,
            on_recovery: None,
            timeout: Duration::from_secs(30),
            max_running: 4,
            queue: 1024,
        }
    }
}

impl HookConfig {
    /// Whether any hook is set.
    pub fn any(&self) -> bool {
        self.on_warning.is_some() || self.on_timeout.is_some() || self.on_recovery.is_some()
    }
}

/// What happened, as `HEARTBEAT_EVENT` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookEvent {
    Warning,
    TimedOut,
    Failed,
    Recovered,
}

impl HookEvent {
    pub(crate) fn name(self) -> &'static str {
        match self {
            HookEvent::Warning => "warning",
            HookEvent::TimedOut => "timeout",
            HookEvent::Failed => "failed",
            HookEvent::Recovered => "recovery",
        }
    }
}

/// One hook to run.
#[derive(Debug, Clone)]
pub(crate) struct HookJob {
    pub(crate) event: HookEvent,
    pub(crate) session_id: String,
    pub(crate) agent_type: String,
    pub(crate) missed: u32,
}

/// Counters, read by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct HookCounters {
    /// Commands started.
    pub(crate) run: AtomicU64,
    /// Exited with a non-zero status, killed by a signal, or could not start.
    pub(crate) failed: AtomicU64,
    /// Killed for outliving the timeout.
    pub(crate) timed_out: AtomicU64,
    /// Events dropped because the queue was full.
    pub(crate) dropped: AtomicU64,
}

/// The hook thread's owner: [`HookSender::submit`] never blocks;
/// [`stop`](Self::stop) kills what still runs and joins the thread.
pub(crate) struct Hooks {
    config: Arc<HookConfig>,
    queue: Option<Sender<HookJob>>,
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub(crate) counters: Arc<HookCounters>,
}

impl Hooks {
    /// Starts the hook thread (none when no hook is set).
    pub(crate) fn start(config: HookConfig) -> Result<Hooks> {
        let counters = Arc::new(HookCounters::default());
        let config = Arc::new(config);
        if !config.any() {
            return Ok(Hooks { config, queue: None, stop: None, thread: None, counters });
        }
        let (tx, rx) = crossbeam_channel::bounded(config.queue.max(1));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let thread = {
            let (config, counters) = (config.clone(), counters.clone());
            thread::Builder::new()
                .name("heartbeat-hooks".into())
                .spawn(move || run(&config, &rx, &stop_rx, &counters))?
        };
        Ok(Hooks { config, queue: Some(tx), stop: Some(stop_tx), thread: Some(thread), counters })
    }

    /// Whether the hook thread runs (or none is needed).
    pub(crate) fn is_running(&self) -> bool {
        self.queue.is_none() || self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// A handle that queues hooks, for the thread that sees the events;
    /// `None` when no hook is set.
    pub(crate) fn sender(&self) -> Option<HookSender> {
        Some(HookSender {
            config: self.config.clone(),
            queue: self.queue.clone()?,
            counters: self.counters.clone(),
        })
    }

    /// Stops taking events, kills hooks still running, joins the thread.
    /// Queued hooks that have not started are not run. Idempotent.
    pub(crate) fn stop(&mut self) {
        drop(self.stop.take());
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("hook thread panicked");
        }
    }
}

/// Queues hooks; cheap to clone.
#[derive(Clone)]
pub(crate) struct HookSender {
    config: Arc<HookConfig>,
    queue: Sender<HookJob>,
    counters: Arc<HookCounters>,
}

impl HookSender {
    /// Whether a hook is set for `event`.
    pub(crate) fn wants(&self, event: HookEvent) -> bool {
        command_for(&self.config, event).is_some()
    }

    /// Queues the hook for `job`'s event, if one is set. Never blocks: a
    /// full queue drops the event, counted and logged.
    pub(crate) fn submit(&self, job: HookJob) {
        if !self.wants(job.event) {
            return;
        }
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = self.queue.try_send(job) {
            let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            DROPPED.log(
                Instant::now(),
                format_args!(
                    "hook queue full ({} waiting): {} hook for {} dropped ({dropped} so far)",
                    self.config.queue,
                    job.event.name(),
                    job.session_id
                ),
            );
        }
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.stop();
    }
}

fn command_for(config: &HookConfig, event: HookEvent) -> Option<&str> {
    match event {
        HookEvent::Warning => config.on_warning.as_deref(),
        HookEvent::TimedOut | HookEvent::Failed => config.on_timeout.as_deref(),
        HookEvent::Recovered => config.on_recovery.as_deref(),
    }
}

struct Running {
    /// The supervisor (Linux), or the shell itself.
    child: Child,
    deadline: Instant,
    what: String,
    /// Told to end (timed out): its slot stays taken until it has.
    ended: bool,
}

/// The hook thread: takes jobs while a slot is free, reaps and kills, until
/// `stop` is dropped.
fn run(config: &HookConfig, jobs: &Receiver<HookJob>, stop: &Receiver<()>, counters: &HookCounters) {
    let mut running: Vec<Running> = Vec::new();
    let never = crossbeam_channel::never();
    loop {
        reap(&mut running, counters);
        // With nothing running there is nothing to watch: sleep until an
        // event or the stop comes.
        let tick = if running.is_empty() {
            crossbeam_channel::never()
        } else {
            crossbeam_channel::after(REAP_EVERY)
        };
        let jobs = if running.len() < config.max_running.max(1) { jobs } else { &never };
        select! {
            recv(stop) -> _ => break,
            recv(jobs) -> job => match job {
                Ok(job) => running.extend(spawn(config, &job, counters)),
                Err(_) => break,
            },
            recv(tick) -> _ => {}
        }
        for limit in [&DROPPED, &FAILED, &TIMED_OUT] {
            limit.flush(Instant::now());
        }
    }
    for limit in [&DROPPED, &FAILED, &TIMED_OUT] {
        limit.finish(Instant::now());
    }
    for mut r in running {
        if !r.ended {
            end(&r.child);
        }
        let _ = r.child.wait();
        log::info!("stopping: killed hook {}", r.what);
    }
}

fn spawn(config: &HookConfig, job: &HookJob, counters: &HookCounters) -> Option<Running> {
    let command = command_for(config, job.event)?;
    let what = format!("{} for {}", job.event.name(), job.session_id);
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("HEARTBEAT_EVENT", job.event.name())
        .env("HEARTBEAT_SESSION", &job.session_id)
        .env("HEARTBEAT_AGENT_TYPE", &job.agent_type)
        .env("HEARTBEAT_MISSED", job.missed.to_string())
        .stdin(Stdio::null())
        .process_group(0);
    #[cfg(target_os = "linux")]
    crate::sys::supervise(&mut cmd);
    // A hook's output goes to our stderr (stdout carries the listening lines).
    if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
        cmd.stdout(Stdio::from(err));
    }
    counters.run.fetch_add(1, Ordering::Relaxed);
    match cmd.spawn() {
        Ok(child) => {
            log::debug!("hook {what} started (pid {})", child.id());
            Some(Running { child, deadline: Instant::now() + config.timeout, what, ended: false })
        }
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            FAILED.log(Instant::now(), format_args!("hook {what} could not start: {e}"));
            None
        }
    }
}

use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;

/// Forgets hooks that ended (their supervisor killed whatever they left
/// running before it exited: a hook cannot leave a daemon behind, nor escape
/// the limit on hooks running at once); ends those past their deadline.
fn reap(running: &mut Vec<Running>, counters: &HookCounters) {
    let now = Instant::now();
    running.retain_mut(|r| {
        let pid = libc::pid_t::try_from(r.child.id()).unwrap_or(0);
        match crate::sys::exited_unreaped(pid) {
            Ok(true) if r.ended => {
                let _ = r.child.wait();
                false
            }
            Ok(true) => {
                // Not reaped yet: the group's id is still ours to signal
                // (without a supervisor, the hook's group).
                let _ = crate::sys::kill(-pid, libc::SIGKILL);
                match r.child.wait() {
                    Ok(status) if status.success() => log::debug!("hook {} done", r.what),
                    Ok(status) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        FAILED.log(now, format_args!("hook {} failed: {status}", r.what));
                    }
                    Err(e) => FAILED.log(now, format_args!("hook {}: cannot wait for it: {e}", r.what)),
                }
                false
            }
            Ok(false) if now >= r.deadline && !r.ended => {
                end(&r.child);
                r.ended = true;
                counters.timed_out.fetch_add(1, Ordering::Relaxed);
                TIMED_OUT.log(now, format_args!("hook {} still running after its timeout: killed", r.what));
                true
            }
            Ok(false) => true,
            Err(e) => {
                // ECHILD: reaped by someone else (SIGCHLD ignored by the
                // process, say). Its pid, and its group's, may belong to
                // another process by now: signal nothing.
                FAILED.log(now, format_args!("hook {}: cannot wait for it ({e}); forgetting it", r.what));
                false
            }
        }
    });
}

/// Ends a hook that has not been reaped: `SIGTERM` tells its supervisor to
/// kill everything in it and exit (Linux); elsewhere its process group is
/// killed. The caller reaps it.
fn end(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        #[cfg(target_os = "linux")]
        let _ = crate::sys::kill(pid, libc::SIGTERM);
        #[cfg(not(target_os = "linux"))]
        let _ = crate::sys::kill(-pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(event: HookEvent, id: &str) -> HookJob {
        HookJob { event, session_id: id.into(), agent_type: "cron".into(), missed: 2 }
    }

    /// Waits (bounded) until `f` holds.
    fn eventually(f: impl Fn() -> bool) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if f() {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_hook_names_its_program_by_path_only_where_the_shell_would_run_that_file() {
        use std::path::Path;
        assert_eq!(hook_program("/usr/local/bin/alert --loud"), Some(Path::new("/usr/local/bin/alert")));
        assert_eq!(hook_program("  ./alert.sh"), Some(Path::new("./alert.sh")));
        for left_to_the_shell in [
            "logger \"$HEARTBEAT_SESSION\"",
            "A=1 /bin/x",
            "'/a b'",
            "$HOME/x",
            ">log /bin/x",
            "~/x",
            "",
            "x;/y",
        ] {
            assert_eq!(hook_program(left_to_the_shell), None, "{left_to_the_shell:?}");
        }
    }

    #[test]
    fn a_hook_sees_the_event_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let config = HookConfig {
            on_timeout: Some(format!(
                "printf '%s %s %s %s' \"$HEARTBEAT_EVENT\" \"$HEARTBEAT_SESSION\" \"$HEARTBEAT_AGENT_TYPE\" \
                 \"$HEARTBEAT_MISSED\" > {}.tmp && mv {0}.tmp {0}",
                out.display()
            )),
            ..HookConfig::default()
        };
        let mut hooks = Hooks::start(config).unwrap();
        hooks.sender().unwrap().submit(job(HookEvent::Failed, "backup"));
        assert!(eventually(|| out.exists()));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "failed backup cron 2");
        // No warning hook is set: nothing queued, nothing run.
        hooks.sender().unwrap().submit(job(HookEvent::Warning, "backup"));
        hooks.stop();
        assert_eq!(hooks.counters.run.load(Ordering::Relaxed), 1);
        assert_eq!(hooks.counters.failed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_hook_that_hangs_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let config = HookConfig {
            // The shell starts a child that would outlive a kill of the shell alone.
            on_warning: Some(format!("sleep 1000 & echo $! > {}; wait", pid_file.display())),
            timeout: Duration::from_millis(200),
            ..HookConfig::default()
        };
        let mut hooks = Hooks::start(config).unwrap();
        hooks.sender().unwrap().submit(job(HookEvent::Warning, "a"));
        assert!(eventually(|| hooks.counters.timed_out.load(Ordering::Relaxed) == 1));
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // The grandchild is gone too (a zombie at most until init reaps it).
        assert!(eventually(|| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        }));
        hooks.stop();
    }

    #[test]
    fn what_a_hook_leaves_running_is_killed_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let config = HookConfig {
            on_warning: Some(format!("sleep 1000 & echo $! > {}.tmp && mv {0}.tmp {0}", pid_file.display())),
            ..HookConfig::default()
        };
        let mut hooks = Hooks::start(config).unwrap();
        hooks.sender().unwrap().submit(job(HookEvent::Warning, "a"));
        assert!(eventually(|| pid_file.exists()));
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(eventually(|| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        }));
        assert_eq!(hooks.counters.failed.load(Ordering::Relaxed), 0);
        hooks.stop();
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_never_blocks() {
        let config = HookConfig {
            on_recovery: Some("sleep 1000".into()),
            timeout: Duration::from_secs(60),
            max_running: 1,
            queue: 2,
            ..HookConfig::default()
        };
        let mut hooks = Hooks::start(config).unwrap();
        hooks.sender().unwrap().submit(job(HookEvent::Recovered, "first"));
        assert!(eventually(|| hooks.counters.run.load(Ordering::Relaxed) == 1));
        for i in 0..10 {
            hooks.sender().unwrap().submit(job(HookEvent::Recovered, &format!("s{i}")));
        }
        // One slot busy, two queued: the other eight are dropped.
        assert_eq!(hooks.counters.dropped.load(Ordering::Relaxed), 8);
        let started = Instant::now();
        hooks.stop(); // kills the running one; the queued ones never run
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(hooks.counters.run.load(Ordering::Relaxed), 1);
    }

    /// The supervisor exits as the shell did: a shell killed by a signal
    /// counts as failed, one that exits 0 does not; a hook that cannot start
    /// (std's exec error, reported through the supervisor) counts too.
    #[test]
    fn the_shell_s_status_comes_through_its_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        let config = HookConfig {
            on_warning: Some("kill -KILL $$".into()),
            on_recovery: Some(format!("touch {}", done.display())),
            ..HookConfig::default()
        };
        let mut hooks = Hooks::start(config).unwrap();
        hooks.sender().unwrap().submit(job(HookEvent::Warning, "x"));
        assert!(eventually(|| hooks.counters.failed.load(Ordering::Relaxed) == 1));
        hooks.sender().unwrap().submit(job(HookEvent::Recovered, "x"));
        assert!(eventually(|| done.exists()));
        hooks.stop(); // reaps the recovery hook if still running
        assert_eq!(hooks.counters.failed.load(Ordering::Relaxed), 1);
        assert_eq!(hooks.counters.run.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn failures_are_counted() {
        let config = HookConfig { on_timeout: Some("exit 3".into()), ..HookConfig::default() };
        let mut hooks = Hooks::start(config).unwrap();
        hooks.sender().unwrap().submit(job(HookEvent::TimedOut, "x"));
        assert!(eventually(|| hooks.counters.failed.load(Ordering::Relaxed) == 1));
        hooks.stop();
    }
}
