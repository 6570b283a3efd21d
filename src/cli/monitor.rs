//! `heartbeat monitor`: the session monitor behind HTTP and UDP, until
//! SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
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

Web pages: a request whose Host is not an IP address, localhost, the
--listen name or an --allow-host NAME gets 403 (DNS rebinding), and so does
a PUT, POST, DELETE or /ping sent from another site's page (its Origin or
Sec-Fetch-Site says so). curl and scripts send neither and are served.

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
that cannot be read, a hook naming a file that cannot run) or a thread
stopped on its own, or the last save failed; 2 for bad arguments. A
signal before it is up ends it at once (128+N).")]
pub struct MonitorArgs {
    /// Where the HTTP API listens, HOST:PORT (a name resolves to its first
    /// address, and is answered as a Host). The default is loopback only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9333", value_parser = super::parse_http_addr)]
    listen: super::HttpAddr,
    /// Answer HTTP requests for this Host too (repeatable), besides IP addresses, localhost
    /// and the --listen name: the name clients use (a proxy's, a container's, a service's).
    #[arg(long = "allow-host", value_name = "NAME", value_parser = super::parse_host_name)]
    allow_host: Vec<String>,
    /// Answer any Host: DNS rebinding then lets web pages read and change sessions;
    /// only behind a proxy that checks Host.
    #[arg(long, conflicts_with = "allow_host")]
    allow_any_host: bool,
    /// Take requests that change state (PUT, POST, DELETE, /ping) from other sites'
    /// web pages too: any page the user opens may then send them.
    #[arg(long)]
    allow_cross_site: bool,
    /// Where UDP beats are taken, HOST:PORT as for --listen, or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9333", value_parser = parse_udp)]
    udp: UdpAddr,
    /// Seconds of silence that count as a missed beat (per session: timeout_sec).
    #[arg(long, value_name = "S", default_value = "30", allow_hyphen_values = true, value_parser = super::parse_positive_seconds)]
    timeout: Duration,
    /// Seconds between sweeps.
    #[arg(long, value_name = "S", default_value = "5", allow_hyphen_values = true, value_parser = super::parse_positive_seconds)]
    check_interval: Duration,
    /// Missed beats that time a session out (per session: max_missed).
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value = "3", value_parser = clap::value_parser!(u32).range(1..))]
    max_missed: u32,
    /// How silence is judged: a fixed timeout, or phi accrual.
    #[arg(long, value_enum, default_value_t = DetectorArg::Fixed)]
    detector: DetectorArg,
    /// Sessions at most; a registration beyond gets 507.
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value = "1000000", value_parser = super::parse_count)]
    max_sessions: u64,
    /// HTTP connections at most; more are closed at once.
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value = "1024", value_parser = super::parse_count)]
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
    // The same parser as --listen (and serve's): names resolve there and here alike.
    super::parse_socket_addr(s).map(|a| UdpAddr(Some(a))).map_err(|e| format!("{e}; or `off`"))
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
        for (flag, hook) in [
            ("--on-warning", &self.on_warning),
            ("--on-timeout", &self.on_timeout),
            ("--on-recovery", &self.on_recovery),
        ] {
            if let Some(command) = hook {
                check_hook(flag, command)?;
            }
        }
        let token = match &self.token_file {
            Some(path) => Some(heartbeat::service::read_token_file(path)?),
            None => None,
        };
        let mut http = HttpConfig {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            allow_hosts: self.allow_host.clone(),
            allow_any_host: self.allow_any_host,
            allow_cross_site: self.allow_cross_site,
            ..HttpConfig::default()
        };
        self.listen.configure(&mut http);
        Ok(ServiceConfig {
            http,
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

/// [`heartbeat::service::check_hook_command`], its error naming `flag`.
fn check_hook(flag: &str, command: &str) -> Result<(), Error> {
    heartbeat::service::check_hook_command(command).map_err(|e| match e {
        Error::InvalidConfig(why) => Error::InvalidConfig(format!("{flag}: {why}")),
        other => other,
    })
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
    // Up: from here a signal is a clean stop (until now it ended the
    // process at once, whatever step it interrupted). Before the first
    // beat, which tells systemd READY=1: a stop after that must be clean.
    stop.up();
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
        if stop.requested() {
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
    fn a_hook_naming_its_program_by_path_must_name_an_executable_file() {
        use std::path::Path;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("alert.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let at = |p: &Path| format!("{} --now", p.display());
        let says = |command: &str| check_hook("--on-timeout", command).unwrap_err().to_string();
        let e = says(&at(&script));
        assert!(
            e.contains("--on-timeout: ") && e.ends_with("alert.sh is not executable (mode 644; chmod +x it)"),
            "{e}"
        );
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        check_hook("--on-timeout", &at(&script)).unwrap();
        check_hook("--on-timeout", "logger timed out").unwrap();
        assert!(says(&at(dir.path())).ends_with("is a directory, not a regular file"));
        assert!(says(&at(&dir.path().join("gone"))).ends_with("gone does not exist"));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(says(&at(&fifo)).ends_with("fifo is a FIFO, not a regular file"));
        // Through the command line: before anything starts.
        let fifo = fifo.display().to_string();
        let args = Cli::try_parse_from(["monitor", "--on-recovery", &fifo]).unwrap().monitor;
        assert!(args.config().unwrap_err().to_string().contains("--on-recovery: "));
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
    fn hosts_to_answer_for_are_the_listen_name_and_the_allowed_ones() {
        let args = Cli::try_parse_from(["monitor", "--listen", "localhost:0", "--allow-host", "monitor.lan"]);
        let config = args.unwrap().monitor.config().unwrap().http;
        assert!(config.listen.ip().is_loopback() && config.listen.port() == 0);
        assert_eq!(config.allow_hosts, ["monitor.lan", "localhost"]);
        assert!(!config.allow_any_host && !config.allow_cross_site);
        let args = Cli::try_parse_from(["monitor", "--allow-any-host", "--allow-cross-site"]).unwrap();
        let config = args.monitor.config().unwrap().http;
        assert!(config.allow_hosts.is_empty() && config.allow_any_host && config.allow_cross_site);
        for bad in [
            &["monitor", "--allow-host", "monitor.lan:9333"][..],
            &["monitor", "--allow-host", "http://monitor.lan"],
            &["monitor", "--allow-host", "a", "--allow-any-host"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
