//! `heartbeat beat`: keep a heartbeat file (and/or an etcd key) fresh until
//! told to stop, or for as long as a wrapped command runs.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus};
use std::time::Duration;

use clap::Args;
use heartbeat::etcd::{self, Client};
use heartbeat::{Beater, process};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

/// Keep a heartbeat file (or etcd key) fresh until SIGINT/SIGTERM/SIGHUP/SIGQUIT, or while COMMAND runs.
///
/// One beater per FILE: a second `beat` on the same FILE is refused (an
/// advisory lock on FILE.lock, held while the first runs and released by
/// the kernel when it exits, crash included) unless it is given --take-over.
/// With --once, writes one beat and exits: for cron jobs and scripts.
///
/// With --etcd, also publishes the beat to etcd (instead of a file when no
/// FILE or --dir is given): the key PREFIXhosts/HOST/PID-UUID holds the
/// heartbeat JSON, rewritten every beat under a lease of 3 intervals. A
/// clean stop (signal, COMMAND exit) revokes the lease, so the key goes at
/// once; a crash or a freeze lets it expire. etcd down never stops the file
/// or fails a beat: it is retried with backoff, and its state changes are
/// logged. With --once, the key is written under a fresh lease and left to
/// expire after 3 intervals.
///
/// With a COMMAND, runs it as a child, beats while it lives, forwards SIGINT,
/// SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to it, removes the file when
/// it exits, and exits with its exit code (128+N when it was killed by signal N).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat beat /run/myapp/heartbeat.json --interval 5 --meta version=1.2
  heartbeat beat /tmp/worker.json -- python3 worker.py --queue jobs
  heartbeat beat --dir /run/myapp/wrappers --systemd
  heartbeat beat /var/lib/backup/heartbeat.json --once   # at the end of a cron job
  heartbeat beat --etcd http://10.0.0.1:2379,http://10.0.0.2:2379 --interval 5

Exit codes: 0 after a clean stop on a signal; with a COMMAND, the
command's own code, 128+N if a signal N killed it, 126 if it could not be
run, 127 if it was not found, 125 if heartbeat itself failed; without one,
1 if heartbeat failed (another beater holds FILE; the file cannot be
written; it was taken over). --once: 0 once the beat is written (and, with
--etcd, published within min(3 intervals, 10 s)), 1 if not. Bad arguments
(an --etcd URL that is not http://HOST:PORT, a bad --etcd-prefix) exit 2.")]
pub struct BeatArgs {
    /// The heartbeat file to write (parent directories are created).
    /// Optional with --etcd.
    #[arg(required_unless_present_any = ["dir", "etcd"], conflicts_with = "dir")]
    file: Option<PathBuf>,
    /// Seconds between beats, clamped to [1, 300].
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "10", value_parser = super::parse_seconds)]
    interval: Duration,
    /// Adds KEY=VALUE (a string) to the file's metadata; repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Write heartbeat-<pid>-<uuid>.json in DIR instead of FILE.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// fsync the file and its directory on every beat.
    #[arg(long)]
    fsync: bool,
    /// Also send READY=1 and WATCHDOG=1 to $NOTIFY_SOCKET (honours $WATCHDOG_PID).
    #[arg(long)]
    systemd: bool,
    /// The file's permission bits, in octal.
    #[arg(long, value_name = "OCTAL", default_value = "644", value_parser = parse_mode)]
    mode: u32,
    /// Leave the file in place on exit instead of removing it.
    #[arg(long)]
    keep: bool,
    /// Write one beat and exit (the file stays): no thread, no COMMAND.
    #[arg(long, conflicts_with_all = ["command", "systemd"])]
    once: bool,
    /// Take FILE over from another `beat` that holds it: that one stops
    /// writing it at its next beat and exits 1 (or, wrapping a command, goes
    /// on without the file).
    #[arg(long)]
    take_over: bool,
    /// Also publish each beat to etcd at these endpoints (comma-separated
    /// http://HOST:PORT), under a lease of 3 intervals.
    #[arg(long, value_name = "URL[,URL...]", value_parser = parse_etcd)]
    etcd: Option<Client>,
    /// The prefix of the etcd key: PREFIXhosts/HOST/PID-UUID.
    #[arg(long, value_name = "PREFIX", default_value = etcd::DEFAULT_PREFIX, requires = "etcd",
          value_parser = parse_prefix)]
    etcd_prefix: String,
    /// The command to run and watch, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("not KEY=VALUE with a non-empty KEY".to_owned()),
    }
}

fn parse_etcd(s: &str) -> Result<Client, String> {
    Client::from_list(s).map_err(|e| e.to_string())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    etcd::check_prefix(s).map(|()| s.to_owned()).map_err(|e| e.to_string())
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| "not an octal file mode such as 644".to_owned())
}

pub fn run(args: BeatArgs) -> ExitCode {
    let wrapping = !args.command.is_empty();
    let failed = |what: &dyn std::fmt::Display| {
        eprintln!("heartbeat beat: {what}");
        ExitCode::from(if wrapping { 125 } else { 1 })
    };

    let (missed_tx, missed) = crossbeam_channel::bounded(1);
    let mut builder = Beater::builder()
        .interval(args.interval)
        .fsync(args.fsync)
        .file_mode(args.mode)
        .systemd(args.systemd)
        .remove_on_stop(!args.keep && !args.once)
        .exclusive(true)
        .take_over(args.take_over)
        .on_missed_beat(move |e| {
            if matches!(e, heartbeat::Error::TakenOver { .. }) {
                let _ = missed_tx.try_send(e.to_string());
            }
        });
    builder = match (&args.file, &args.dir) {
        (_, Some(dir)) => builder.directory(dir),
        (Some(file), None) => builder.state_file(file),
        (None, None) => builder, // etcd only: clap requires FILE unless --dir or --etcd
    };
    if let Some(client) = &args.etcd {
        builder = builder.etcd_client(client.clone()).etcd_prefix(&args.etcd_prefix);
    }
    for (k, v) in &args.meta {
        builder = builder.metadata(k, v.as_str());
    }
    let beater = match builder.build() {
        Ok(b) => b,
        Err(e) => return failed(&e),
    };
    if args.once {
        return match beater.beat() {
            Ok(()) => publish_once(&beater),
            Err(e) => failed(&e),
        };
    }

    // Registered before the child exists, so neither a signal nor the
    // child's exit can slip by unseen.
    // Alone, any of these ends the beat cleanly (SIGHUP: the terminal went away);
    // wrapping, they are the child's to act on.
    let wanted: &[i32] = if wrapping {
        &[SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD]
    } else {
        &[SIGINT, SIGTERM, SIGHUP, SIGQUIT]
    };
    let mut signals = match Signals::new(wanted) {
        Ok(s) => s,
        Err(e) => return failed(&format_args!("cannot handle signals: {e}")),
    };
    // Fail fast and clearly when the file cannot be written at all.
    if let Err(e) = beater.beat() {
        return failed(&e);
    }
    let guard = match beater.start() {
        Ok(g) => g,
        Err(e) => return failed(&e),
    };
    let path = match (beater.state_file(), beater.etcd_key()) {
        (Some(p), Some(key)) => format!("{} and etcd key {key}", p.display()),
        (Some(p), None) => p.display().to_string(),
        (None, Some(key)) => format!("etcd key {key}"),
        (None, None) => "(no file)".into(),
    };
    log::info!(
        "beating {path} every {} (pid {})",
        heartbeat::HumanDuration(beater.interval()),
        std::process::id()
    );

    let code =
        if wrapping { supervise(&args.command, &mut signals) } else { wait_for_stop(&mut signals, &missed) };
    drop(guard); // stops the thread and removes the file unless --keep
    // The process is on its way out: now systemd may start its stop timeout.
    super::notify_stopping(args.systemd);
    code
}

/// `--once` with `--etcd`: waits (bounded) until the key is in etcd, then
/// leaves its lease to expire on its own (3 intervals) instead of revoking
/// it, so that the beat stays visible as long as a running beater's would.
fn publish_once(beater: &Beater) -> ExitCode {
    let Some(presence) = beater.presence() else { return ExitCode::SUCCESS };
    let bound = presence.ttl().min(ONCE_PUBLISH_BOUND);
    let published = presence.wait_published(bound);
    if published {
        presence.abandon();
        return ExitCode::SUCCESS;
    }
    let status = presence.status();
    eprintln!(
        "heartbeat beat: the beat was not published to etcd at {} within {}: {}",
        status.endpoints.join(","),
        heartbeat::HumanDuration(bound),
        status.last_error.as_deref().unwrap_or("no answer")
    );
    ExitCode::from(1)
}

/// The longest `--once --etcd` waits for etcd.
const ONCE_PUBLISH_BOUND: Duration = Duration::from_secs(10);

/// Waits for a stop signal (exit 0), or for another beater to take the file
/// over (exit 1).
fn wait_for_stop(signals: &mut Signals, taken_over: &crossbeam_channel::Receiver<String>) -> ExitCode {
    let handle = signals.handle();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let sig = signals.forever().next();
            let _ = tx.send(sig);
        });
        let code = crossbeam_channel::select! {
            recv(rx) -> sig => {
                let name = sig.ok().flatten().map_or_else(|| "?".into(), signal_name);
                log::info!("signal {name} received; stopping");
                ExitCode::SUCCESS
            }
            recv(taken_over) -> why => {
                eprintln!("heartbeat beat: {}", why.unwrap_or_default());
                ExitCode::from(1)
            }
        };
        handle.close(); // ends the signal thread's wait
        code
    })
}

/// Runs `command` to its end, forwarding SIGINT/SIGTERM, and returns its exit code.
fn supervise(command: &[OsString], signals: &mut Signals) -> ExitCode {
    let program = command[0].to_string_lossy().into_owned();
    let mut child = match Command::new(&command[0]).args(&command[1..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("heartbeat beat: cannot run {program}: {e}");
            return ExitCode::from(if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    log::info!("running {program} as pid {}", child.id());
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exit_code_of(status),
            Ok(None) => {}
            Err(e) => {
                eprintln!("heartbeat beat: cannot wait for {program}: {e}");
                return ExitCode::from(125);
            }
        }
        // Blocks until a signal arrives; SIGCHLD wakes us when the child exits.
        for sig in signals.wait() {
            if sig == SIGCHLD {
                continue;
            }
            // Only this thread reaps the child, so its pid is still its own here
            // (at worst a zombie, which ignores the signal).
            let name = signal_name(sig);
            log::info!("forwarding signal {name} to {program} (pid {})", child.id());
            if let Err(e) = process::send_signal(child.id(), sig) {
                log::warn!("cannot forward signal {name} to pid {}: {e}", child.id());
            }
        }
    }
}

/// A signal by its name (SIGTERM), or its number if it has none.
fn signal_name(sig: i32) -> String {
    signal_hook::low_level::signal_name(sig).map_or_else(|| sig.to_string(), str::to_owned)
}

/// The shell's convention: the exit code, or 128+N for death by signal N.
fn exit_code_of(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(255)),
        (None, None) => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_and_mode_parse_or_say_why() {
        assert_eq!(parse_meta("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_meta("k="), Ok(("k".into(), String::new())));
        assert!(parse_meta("=v").is_err());
        assert!(parse_meta("novalue").unwrap_err().contains("KEY=VALUE"));
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("77777").is_err());
        assert_eq!(parse_etcd("http://a:1, http://b:2").unwrap().endpoints().len(), 2);
        assert!(parse_etcd("").is_err());
        assert!(parse_etcd("ftp://a:1").is_err());
        assert_eq!(parse_prefix("apps/heartbeat/").as_deref(), Ok("apps/heartbeat/"));
        assert!(parse_prefix("with space").unwrap_err().contains("printable"));
    }

    #[test]
    fn signals_are_logged_by_name() {
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
        assert_eq!(signal_name(SIGUSR2), "SIGUSR2");
        assert_eq!(signal_name(1000), "1000");
    }
}
