//! `heartbeat monitor`: the session monitor behind HTTP and UDP, until
//! SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, ValueEnum};
use crossbeam_channel::select;
use heartbeat::http::HttpConfig;
use heartbeat::service::{HookConfig, MonitorService, ServiceConfig};
use heartbeat::{BeatGuard, Beater, DEFAULT_INTERVAL, Detector, Error, Monitor, PhiConfig};

/// How often the main thread checks that the service's threads still run.
const SERVICE_CHECK: Duration = Duration::from_secs(5);

/// Run the session monitor as a service: sessions beat it over HTTP or UDP.
///
/// Registers sessions over HTTP (`PUT /sessions/ID`), takes their beats over
/// HTTP (`POST /sessions/ID/beat`, `/ping/ID`) and UDP (one datagram `ID\n`
/// per beat), and reports a session that stops beating: first a warning,
/// then, after --max-missed missed beats, a timeout. Prints
/// `listening on http://ADDR` (and `udp on ADDR`) once it is up.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat monitor
  curl -fsS -m 5 'http://127.0.0.1:9333/ping/backup?timeout_sec=90000&max_missed=1'   # a daily cron job
  heartbeat monitor --timeout 90 --on-timeout 'logger \"$HEARTBEAT_SESSION timed out\"'
  heartbeat monitor --state /var/lib/heartbeat/monitor.json --token-file /etc/heartbeat/token
  heartbeat monitor --etcd http://10.0.0.1:2379,http://10.0.0.2:2379   # sessions in etcd

HTTP API (JSON; errors are {\"error\": \"...\"}):
  PUT    /sessions/ID            register (body optional: agent_type, timeout_sec,
                                 max_missed, grace_sec, detector)
  POST   /sessions/ID/beat       beat (404 when not registered); also /pause, /resume, /fail
  GET    /sessions/ID            status;  GET /sessions?after=ID&limit=N  a page, by id
                                 (100 by default, 1,000 at most)
  DELETE /sessions/ID            unregister
  GET    /ping/ID[/fail|/start]  beat, registering on first use (201, then 200);
                                 the query may carry settings (?timeout_sec=90000&max_missed=1)
  GET    /events                 Server-Sent Events, one JSON object per event
  GET    /health, /metrics       200 while sweeping; Prometheus text
  GET    /status                 the service's state (and etcd's, with --etcd); JSON

UDP: `ID\\n` (several ids, one per line, allowed); `TOKEN ID\\n` with a token.
Never a reply; unknown ids and malformed datagrams are counted in /metrics.
Off loopback without --token-file, anyone who can reach the port can beat
any session: keep the default 127.0.0.1, or set a token.

With --etcd, the monitor keeps PREFIXhosts/HOST/PID-UUID (its heartbeat,
rewritten every TTL/3) and one key per session, PREFIXsessions/HOST/PID-UUID/ID
(state alive, warning or failed), under one lease; a session's key is
written when it registers, changes state or goes, never on a beat. etcd
down never stops the sweeping: the keys are written again once it is back.
A clean stop revokes the lease (the keys go at once).

Hooks run through `sh -c` with HEARTBEAT_EVENT (warning, timeout, failed,
recovery), HEARTBEAT_SESSION, HEARTBEAT_AGENT_TYPE and HEARTBEAT_MISSED set;
at most 4 at once. On Linux whatever a hook starts, setsid daemons too, is
killed with it: when its shell exits, after --hook-timeout, and when the
monitor stops or dies.

Exit codes: 0 after a clean stop on SIGINT or SIGTERM (the state file is
written first); 1 if it could not start (an address in use, a state file
that cannot be read) or a thread stopped on its own, or the last save
failed; 2 for bad arguments.")]
pub struct MonitorArgs {
    /// Where the HTTP API listens. The default is loopback only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9333")]
    listen: SocketAddr,
    /// Where UDP beats are taken, or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9333", value_parser = parse_udp)]
    udp: UdpAddr,
    /// Seconds of silence that count as a missed beat (per session: timeout_sec).
    #[arg(long, value_name = "S", default_value = "30", allow_hyphen_values = true, value_parser = super::parse_positive_seconds)]
    timeout: Duration,
    /// Seconds between sweeps.
    #[arg(long, value_name = "S", default_value = "5", allow_hyphen_values = true, value_parser = super::parse_positive_seconds)]
    check_interval: Duration,
    /// Missed beats that time a session out (per session: max_missed).
    #[arg(long, value_name = "N", default_value = "3", value_parser = clap::value_parser!(u32).range(1..))]
    max_missed: u32,
    /// How silence is judged: a fixed timeout, or phi accrual.
    #[arg(long, value_enum, default_value_t = DetectorArg::Fixed)]
    detector: DetectorArg,
    /// Sessions at most; a registration beyond gets 507.
    #[arg(long, value_name = "N", default_value = "1000000", value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions: u64,
    /// HTTP connections at most; more are closed at once.
    #[arg(long, value_name = "N", default_value = "1024", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Save the registry here every 10 s and at exit, and restore it at start.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Start empty even if the --state file exists (it is overwritten).
    #[arg(long, requires = "state")]
    state_reset: bool,
    /// A file holding a token: HTTP requests then need `Authorization: Bearer TOKEN`
    /// and datagrams must start with `TOKEN `.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Run on a session's first missed beat.
    #[arg(long, value_name = "CMD")]
    on_warning: Option<String>,
    /// Run when a session times out or reports a failure.
    #[arg(long, value_name = "CMD")]
    on_timeout: Option<String>,
    /// Run when a warned or failed session beats again.
    #[arg(long, value_name = "CMD")]
    on_recovery: Option<String>,
    /// Seconds a hook may run before it is killed, with what it started.
    #[arg(long, value_name = "S", default_value = "30", allow_hyphen_values = true, value_parser = super::parse_positive_seconds)]
    hook_timeout: Duration,
    /// Keep a heartbeat file of the monitor itself (for `heartbeat check`).
    #[arg(long, value_name = "PATH")]
    beat_file: Option<PathBuf>,
    /// Notify systemd (READY=1, then WATCHDOG=1 every 10 s, STOPPING=1 on a stop) when run as a Type=notify unit.
    #[arg(long)]
    systemd: bool,
    #[command(flatten)]
    etcd: super::presence::EtcdArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DetectorArg {
    Fixed,
    Phi,
}

#[derive(Debug, Clone, Copy)]
struct UdpAddr(Option<SocketAddr>);

fn parse_udp(s: &str) -> Result<UdpAddr, String> {
    if s == "off" {
        return Ok(UdpAddr(None));
    }
    s.parse()
        .map(|a| UdpAddr(Some(a)))
        .map_err(|_| "not an address such as 127.0.0.1:9333, or off".to_owned())
}

impl MonitorArgs {
    fn monitor(&self) -> Result<Monitor, Error> {
        let detector = match self.detector {
            DetectorArg::Fixed => Detector::Fixed,
            DetectorArg::Phi => Detector::Phi(PhiConfig::default()),
        };
        Monitor::builder()
            .timeout(self.timeout)
            .check_interval(self.check_interval)
            .max_missed_beats(self.max_missed)
            .detector(detector)
            .build()
    }

    fn config(&self) -> Result<ServiceConfig, Error> {
        let token = match &self.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Ok(ServiceConfig {
            http: HttpConfig {
                listen: self.listen,
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                ..HttpConfig::default()
            },
            udp: self.udp.0,
            max_sessions: usize::try_from(self.max_sessions).unwrap_or(usize::MAX),
            token,
            hooks: HookConfig {
                on_warning: self.on_warning.clone(),
                on_timeout: self.on_timeout.clone(),
                on_recovery: self.on_recovery.clone(),
                timeout: self.hook_timeout,
                ..HookConfig::default()
            },
            state_file: self.state.clone(),
            state_reset: self.state_reset,
            ..ServiceConfig::default()
        })
    }
}

/// Reads a token file: its first line, without the line ending.
pub(super) fn read_token(path: &std::path::Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidConfig(format!("cannot read the token file {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or("").trim_end_matches('\r').to_owned();
    heartbeat::service::check_token(&token).map_err(|e| match e {
        Error::InvalidConfig(why) => Error::InvalidConfig(format!("token file {}: {why}", path.display())),
        other => other,
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o044 != 0 {
            log::warn!("token file {} is readable by others (chmod 600 it)", path.display());
        }
    }
    Ok(token)
}

fn failed(e: &Error) -> ExitCode {
    eprintln!("heartbeat monitor: {e}");
    ExitCode::from(1)
}

pub fn run(args: MonitorArgs) -> ExitCode {
    let stop = match super::stop_on_signals(|_| 1) {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("heartbeat monitor: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    // Signals wake the main thread through a channel: no polling of the
    // flag. Made before anything starts, so a descriptor table that fills
    // later (connections beyond the limit wait in the backlog) cannot make
    // a running monitor exit for want of the channel's socket pair.
    let signals = match super::SignalChannel::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("heartbeat monitor: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let service = match args.monitor().and_then(|m| Ok((m, args.config()?))) {
        Ok((monitor, config)) => match MonitorService::start(monitor, config) {
            Ok(service) => service,
            Err(e) => return failed(&e),
        },
        Err(e) => return failed(&e),
    };
    // What the end and every early exit undo. The lease first: revoking it
    // takes every key at once, where stopping the publisher first would
    // delete them in batches.
    let teardown = |presence: Option<&heartbeat::etcd::Presence>| {
        if let Some(presence) = presence {
            presence.stop();
        }
        service.stop()
    };
    let presence = match args.etcd.start() {
        Ok(presence) => presence,
        Err(e) => {
            let _ = teardown(None);
            return failed(&e);
        }
    };
    if let Some(presence) = &presence
        && let Err(e) = service.publish_to_etcd(presence, &args.etcd.etcd_prefix)
    {
        let _ = teardown(Some(presence));
        return failed(&e);
    }
    let beating = match beat(&args, &service) {
        Ok(guard) => guard,
        Err(e) => {
            let _ = teardown(presence.as_ref());
            return failed(&e);
        }
    };

    // Everything is up: say where. Tests read this to learn the ports.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{}", service.http_addr());
    if let Some(udp) = service.udp_addr() {
        let _ = writeln!(out, "udp on {udp}");
    }
    if let Some(state) = &args.state {
        let _ = writeln!(out, "restored {} sessions from {}", service.restored(), state.display());
    }
    if let Some(presence) = &presence {
        let _ = writeln!(out, "etcd at {}", presence.client().endpoints().join(","));
    }
    let _ = out.flush();
    drop(out);

    let mut code = loop {
        if stop.load(Ordering::SeqCst) {
            log::info!("signal received; stopping");
            break ExitCode::SUCCESS;
        }
        if !service.is_running() {
            eprintln!("heartbeat monitor: the service stopped on its own (a thread ended); exiting");
            break ExitCode::from(1);
        }
        select! {
            recv(signals.rx) -> _ => {}
            default(SERVICE_CHECK) => {}
        }
    };
    signals.close();
    // Stopping takes a moment (the last save of the state): say so first.
    super::notify_stopping(args.systemd);
    if let Err(e) = teardown(presence.as_ref()) {
        eprintln!("heartbeat monitor: {e}");
        code = ExitCode::from(1);
    }
    drop(beating);
    code
}

/// The monitor's own heartbeat file and/or systemd notifications.
fn beat(args: &MonitorArgs, service: &MonitorService) -> Result<Option<BeatGuard>, Error> {
    if args.beat_file.is_none() && !args.systemd {
        return Ok(None);
    }
    let mut builder = Beater::builder()
        .interval(DEFAULT_INTERVAL)
        .metadata("role", "monitor")
        .metadata("http", service.http_addr().to_string())
        .systemd(args.systemd)
        .exclusive(true)
        .remove_on_stop(true);
    if let Some(udp) = service.udp_addr() {
        builder = builder.metadata("udp", udp.to_string());
    }
    if let Some(path) = &args.beat_file {
        builder = builder.state_file(path);
    }
    let beater = builder.build()?;
    beater.beat()?;
    beater.start().map(Some)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        monitor: MonitorArgs,
    }

    #[test]
    fn defaults_are_loopback_and_the_service_defaults() {
        let args = Cli::try_parse_from(["monitor"]).unwrap().monitor;
        let config = args.config().unwrap();
        let defaults = ServiceConfig::default();
        assert_eq!(config.http.listen, defaults.http.listen);
        assert_eq!(config.udp, defaults.udp);
        assert_eq!(config.max_sessions, defaults.max_sessions);
        assert_eq!(config.http.max_connections, defaults.http.max_connections);
        assert_eq!(config.hooks.timeout, defaults.hooks.timeout);
        assert!(config.token.is_none() && config.state_file.is_none());
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in [
            &["monitor", "--timeout", "0"][..],
            &["monitor", "--max-missed", "0"],
            &["monitor", "--udp", "nowhere"],
            &["monitor", "--detector", "magic"],
            &["monitor", "--state-reset"],
            &["monitor", "--max-sessions", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let args = Cli::try_parse_from(["monitor", "--udp", "off", "--detector", "phi"]).unwrap().monitor;
        assert!(args.config().unwrap().udp.is_none());
        assert!(matches!(args.monitor().unwrap().detector(), Detector::Phi(_)));
    }

    #[test]
    fn a_token_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(&path).is_err());
        assert!(read_token(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
