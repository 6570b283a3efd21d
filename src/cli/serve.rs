//! `heartbeat serve`: run the peer hub until SIGINT or SIGTERM, with an
//! optional status endpoint and heartbeat file.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use crossbeam_channel::select;
use heartbeat::etcd::{HubPublisher, Presence};
use heartbeat::http::HttpConfig;
use heartbeat::peer::{Hub, HubConfig, HubEvent, NickAuthMode, StatusServer, SweepConfig};
use heartbeat::{BeatGuard, Beater, DEFAULT_INTERVAL, Error};

/// How often the main thread checks that the hub's threads still run. The
/// wait between is a blocking one (signals and hub events wake it), so an
/// idle hub costs no CPU here.
const HUB_CHECK: Duration = Duration::from_secs(5);

/// Events waiting to be printed at most; beyond, they are dropped and counted.
const EVENT_QUEUE: usize = 4096;

/// Run the peer hub, a JoinMarket directory node, until SIGINT or SIGTERM.
///
/// Peers connect over TCP and handshake; their PUBMSGs are relayed to every
/// other peer, their PRIVMSGs to the peer they name, and GETPEERLIST is
/// answered with the makers (takers are never listed), each peer within
/// its message budgets. Every --sweep seconds peers idle
/// for longer than --idle are pinged (or, makers without ping, sent an
/// orderbook request) and evicted if no PONG comes within --pong-wait; peers
/// idle for longer than --hard-evict are evicted outright. Prints
/// `listening on ADDR as NICK (network NET)` (and `status on ADDR`) once it
/// is up. Joins and leaves are logged at debug level (RUST_LOG=debug), or
/// printed as JSON lines with --format json.
///
/// With --nick-auth-id, clients that advertise nick authentication (JMP-0005)
/// must prove their nick with a signature bound to that id before they are
/// routed or listed; a verified nick cannot be taken by another key.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat serve
  heartbeat serve --listen 0.0.0.0:5222 --motd 'welcome' --status 127.0.0.1:9222
  heartbeat serve --beat-file /run/hub/heartbeat.json   # heartbeat check /run/hub/heartbeat.json
  heartbeat serve --format json | jq .                  # joins, leaves, evictions as JSON lines
  heartbeat serve --nick-auth-id <56 base32 chars>.onion:5222 --nick-auth require
  heartbeat serve --etcd http://10.0.0.1:2379 --status 127.0.0.1:9222   # peers in etcd

Status endpoint (--status ADDR): GET /health (200 while the hub runs, 503
once it does not; JSON), GET /status (every peer and the counters; JSON),
GET /metrics (Prometheus text format). It answers requests whose Host is
an IP address, localhost, the --status name or an --allow-host NAME (403
otherwise: a web page whose name was rebound to it cannot read the peers).

With --etcd, the hub keeps PREFIXhosts/HOST/PID-UUID (its heartbeat,
rewritten every TTL/3) and one key per peer, PREFIXpeers/HOST/PID-UUID/NICK,
under one lease: written when the peer joins, deleted when it leaves or is
evicted. /status and /metrics then show the etcd state. etcd down never
stops the hub. A clean stop revokes the lease (the keys go at once).

Open files: each peer holds one file descriptor. For more than about 1,000
peers raise the limit before starting (`ulimit -n 65536`, or
LimitNOFILE=65536 in a systemd unit); at the limit new connections wait in
the listen backlog and are accepted as others leave.

Exit codes: 0 after a clean stop on SIGINT or SIGTERM (a second signal
during the stop exits at once with 1); 1 if the hub could not start (an
address in use, a beat file that cannot be written) or stopped on its own;
2 for bad arguments, including --idle not less than --hard-evict and a
malformed --nick. A signal before it is up ends it at once (128+N).")]
pub struct ServeArgs {
    /// Where peers connect, HOST:PORT (a name resolves to its first
    /// address). The default is loopback only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5222", value_parser = super::parse_socket_addr)]
    listen: SocketAddr,
    /// The network peers must handshake for: mainnet, testnet, signet,
    /// regtest, or any other name (1 to 64 letters, digits, `-`, `_`, `.`).
    #[arg(long, value_name = "NET", default_value = "mainnet", value_parser = super::parse_network)]
    network: String,
    /// The directory's own nick (J5, base58, padded with O to 16 characters); random if not given.
    #[arg(long, value_name = "NICK")]
    nick: Option<String>,
    /// A message of the day for the handshake reply (a short default says what this node is).
    #[arg(long, value_name = "TEXT")]
    motd: Option<String>,
    /// Seconds between heartbeat sweeps.
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "60", value_parser = super::parse_positive_seconds)]
    sweep: Duration,
    /// Seconds of silence after which a peer is pinged.
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "600", value_parser = super::parse_positive_seconds)]
    idle: Duration,
    /// Seconds of silence after which a peer is evicted without a ping; more than --idle.
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "1500", value_parser = super::parse_positive_seconds)]
    hard_evict: Duration,
    /// Seconds a pinged peer has to answer with a PONG.
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "30", value_parser = super::parse_positive_seconds)]
    pong_wait: Duration,
    /// Handshaked peers at most; a handshake beyond is refused ("Maximum peers reached").
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value = "20000", value_parser = super::parse_count)]
    max_peers: u64,
    /// Connections not yet handshaked at most; when full, the oldest is closed to admit a newcomer.
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value = "1000", value_parser = super::parse_count)]
    max_pending: u64,
    /// Announce departed takers with `;D` notices too (as joinmarket-ng does); by default only makers.
    #[arg(long)]
    announce_takers: bool,
    /// Serve /health, /status and /metrics over HTTP on ADDR (e.g. 127.0.0.1:9222).
    #[arg(long, value_name = "ADDR", value_parser = super::parse_http_addr)]
    status: Option<super::HttpAddr>,
    /// The status endpoint answers for this Host too (repeatable), besides IP addresses,
    /// localhost and the --status name: the name a scraper uses.
    #[arg(long = "allow-host", value_name = "NAME", requires = "status", value_parser = super::parse_host_name)]
    allow_host: Vec<String>,
    /// The status endpoint answers any Host (DNS rebinding then lets web pages read it).
    #[arg(long, requires = "status", conflicts_with = "allow_host")]
    allow_any_host: bool,
    /// Keep a heartbeat file at PATH (every 10 s, removed on exit) for `heartbeat check`.
    #[arg(long, value_name = "PATH")]
    beat_file: Option<PathBuf>,
    /// Notify systemd (READY=1, then WATCHDOG=1 every 10 s, STOPPING=1 on a stop) when run as a Type=notify unit.
    #[arg(long)]
    systemd: bool,
    /// Print the start line and every join, leave, eviction and rejection
    /// as one JSON object per line on stdout (text: the start lines only).
    #[arg(long, value_enum, default_value_t = super::Format::Text)]
    format: super::Format,
    /// Nick authentication (JMP-0005): the directory id clients expect for this node (for an
    /// onion service, its <56 base32>.onion:PORT). Advertised only when given.
    #[arg(long, value_name = "ID")]
    nick_auth_id: Option<String>,
    /// prefer: challenge clients that offer nick authentication, admit the others unverified;
    /// require: refuse the others; off. Default prefer with --nick-auth-id (which require needs).
    #[arg(long, value_name = "MODE", value_parser = ["prefer", "require", "off"])]
    nick_auth: Option<String>,
    /// Seconds a challenged client has to send its nick-auth proof (at most 30).
    #[arg(long, value_name = "S", allow_negative_numbers = true, default_value = "30", value_parser = super::parse_positive_seconds)]
    nick_auth_timeout: Duration,
    #[command(flatten)]
    etcd: super::presence::EtcdArgs,
}

impl ServeArgs {
    fn hub_config(&self) -> HubConfig {
        HubConfig {
            listen: self.listen,
            network: self.network.clone(),
            nick: self.nick.clone(),
            motd: self.motd.clone().or(HubConfig::default().motd),
            sweep: SweepConfig {
                sweep_interval: self.sweep,
                idle_threshold: self.idle,
                hard_evict: self.hard_evict,
                pong_wait: self.pong_wait,
            },
            max_peers: usize::try_from(self.max_peers).unwrap_or(usize::MAX),
            max_pending: usize::try_from(self.max_pending).unwrap_or(usize::MAX),
            announce_takers: self.announce_takers,
            nick_auth_id: self.nick_auth_id.clone(),
            nick_auth: self
                .nick_auth
                .as_deref()
                .map_or(NickAuthMode::Prefer, |m| m.parse().unwrap_or_default()),
            nick_auth_timeout: self.nick_auth_timeout,
            ..HubConfig::default()
        }
    }
}

/// A configuration the library rejects is a bad command line (2); anything
/// else is a failure to run (1).
fn failed(e: &Error) -> ExitCode {
    eprintln!("heartbeat serve: {e}");
    ExitCode::from(if matches!(e, Error::InvalidConfig(_)) { 2 } else { 1 })
}

pub fn run(args: ServeArgs) -> ExitCode {
    // Before anything starts, so no signal slips by. A second signal while
    // stopping ends the process at once (the order of registration matters).
    let stop = match super::stop_on_signals(|_| 1) {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("heartbeat serve: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    // Signals wake the main thread through a channel: no polling of the
    // flag. Made before anything starts, so a descriptor table that fills
    // later (connections beyond the limit wait in the backlog) cannot make
    // a running serve exit for want of the channel's socket pair.
    let signals = match super::SignalChannel::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("heartbeat serve: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };

    let hub = match Hub::start(args.hub_config()) {
        Ok(hub) => Arc::new(hub),
        Err(e) => return failed(&e),
    };
    if let Some(id) = hub.nick_auth_id() {
        log::info!("nick authentication ({}) for directory id {id}", hub.nick_auth());
    }
    // Bounded: peers that come and go must not grow memory while stdout is slow.
    let events = hub.subscribe_bounded(EVENT_QUEUE);
    let presence = match args.etcd.start() {
        Ok(presence) => presence,
        Err(e) => {
            hub.stop();
            return failed(&e);
        }
    };
    // What the end and every early exit undo, in this order. Revoking the
    // lease takes every key at once: always before the publisher stops
    // (which would delete them in batches). Then the hub: a status client
    // that does not read must not keep peers connected.
    let teardown = |status: Option<&StatusServer>| {
        if let Some(presence) = &presence {
            presence.stop();
        }
        hub.stop();
        if let Some(status) = status {
            status.stop();
        }
    };
    let status = match args
        .status
        .as_ref()
        .map(|addr| status_server(addr, &args, &hub, presence.as_ref()))
        .transpose()
    {
        Ok(status) => status,
        Err(e) => {
            teardown(None);
            return failed(&e);
        }
    };
    let publisher = match presence.as_ref().map(|p| publish(&args, &hub, status.as_ref(), p)).transpose() {
        Ok(publisher) => publisher,
        Err(e) => {
            teardown(status.as_ref());
            return failed(&e);
        }
    };
    // Up: from here a signal is a clean stop (until now it ended the
    // process at once, whatever step it interrupted). Before the first
    // beat, which tells systemd READY=1: a stop after that must be clean.
    stop.up();
    let beating = match beat(&args, &hub, status.as_ref()) {
        Ok(guard) => guard,
        // A --beat-file that cannot be written (a directory, a FIFO, held
        // by another beater) is a failure to start, 1, as for every command.
        Err(e) => {
            teardown(status.as_ref());
            eprintln!("heartbeat serve: {e}");
            return ExitCode::from(1);
        }
    };

    // Everything is up: say where. Tests read this to learn the ports.
    let mut out = std::io::stdout().lock();
    match args.format {
        super::Format::Text => {
            let _ = writeln!(
                out,
                "listening on {} as {} (network {})",
                hub.local_addr(),
                hub.nick(),
                hub.network()
            );
            if let Some(status) = &status {
                let _ = writeln!(out, "status on {}", status.local_addr());
            }
            if let Some(presence) = &presence {
                let _ = writeln!(out, "etcd at {}", presence.client().endpoints().join(","));
            }
        }
        super::Format::Json => {
            let line = serde_json::json!({
                "event": "listening",
                "addr": hub.local_addr().to_string(),
                "nick": hub.nick(),
                "network": hub.network(),
                "status": status.as_ref().map(|s| s.local_addr().to_string()),
                "etcd": presence.as_ref().map(|p| p.client().endpoints().join(",")),
            });
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = out.flush();
    drop(out);

    // Events are logged and printed on a thread of their own: a stdout that
    // nobody reads blocks that thread only, never the stop on a signal.
    let printer = match EventPrinter::start(events, hub.clone(), args.format == super::Format::Json) {
        Ok(printer) => printer,
        Err(e) => {
            eprintln!("heartbeat serve: cannot start the event thread: {e}");
            signals.close();
            teardown(status.as_ref());
            return ExitCode::from(1);
        }
    };
    let code = loop {
        if stop.requested() {
            log::info!("signal received; stopping");
            break ExitCode::SUCCESS;
        }
        if !hub.is_running() {
            eprintln!("heartbeat serve: the hub stopped on its own (a thread ended); exiting");
            break ExitCode::from(1);
        }
        select! {
            recv(signals.rx) -> _ => {}
            default(HUB_CHECK) => {}
        }
    };
    signals.close();
    // Stopping takes a moment (closing every peer): say so first.
    super::notify_stopping(args.systemd);

    teardown(status.as_ref());
    drop(beating); // stops the beat thread and removes the file
    drop(publisher);
    printer.stop();
    code
}

/// The status endpoint, with the etcd presence's state when publishing.
fn status_server(
    addr: &super::HttpAddr,
    args: &ServeArgs,
    hub: &Arc<Hub>,
    presence: Option<&Presence>,
) -> Result<StatusServer, Error> {
    let mut config = HttpConfig {
        allow_hosts: args.allow_host.clone(),
        allow_any_host: args.allow_any_host,
        ..HttpConfig::default()
    };
    addr.configure(&mut config);
    match presence {
        Some(presence) => StatusServer::start_with_etcd(config, hub.clone(), presence.clone()),
        None => StatusServer::start_with(config, hub.clone()),
    }
}

/// The hub's peers in etcd, with a process key naming where it serves.
fn publish(
    args: &ServeArgs,
    hub: &Arc<Hub>,
    status: Option<&StatusServer>,
    presence: &Presence,
) -> Result<HubPublisher, Error> {
    let mut metadata = serde_json::Map::new();
    metadata.insert("role".into(), "hub".into());
    metadata.insert("listen".into(), hub.local_addr().to_string().into());
    metadata.insert("nick".into(), hub.nick().into());
    metadata.insert("network".into(), hub.network().into());
    if let Some(status) = status {
        metadata.insert("status".into(), status.local_addr().to_string().into());
    }
    HubPublisher::start(hub.clone(), presence, &args.etcd.etcd_prefix, metadata)
}

/// How long the end of `serve` waits for the event thread, which may be
/// stuck writing to a stdout nobody reads; the process's exit ends it then.
const PRINTER_WAIT: Duration = Duration::from_secs(1);

/// The thread that logs the hub's events and, with --format json, prints
/// them as JSON lines.
struct EventPrinter {
    quit: crossbeam_channel::Sender<()>,
    done: crossbeam_channel::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl EventPrinter {
    fn start(
        events: crossbeam_channel::Receiver<HubEvent>,
        hub: Arc<Hub>,
        json: bool,
    ) -> std::io::Result<Self> {
        let (quit, quit_rx) = crossbeam_channel::bounded::<()>(0);
        let (done_tx, done) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new().name("heartbeat-events".into()).spawn(move || {
            let mut dropped_seen = 0;
            loop {
                select! {
                    recv(events) -> event => {
                        // Only if the hub were gone: nothing more will come.
                        let Ok(event) = event else { break };
                        log_event(&event);
                        if json {
                            print_json(&event);
                            let dropped = hub.events_dropped();
                            if dropped > dropped_seen {
                                log::warn!("{} events not printed: stdout was too slow", dropped - dropped_seen);
                                dropped_seen = dropped;
                            }
                        }
                    }
                    recv(quit_rx) -> _ => break,
                }
            }
            let _ = done_tx.send(());
        })?;
        Ok(EventPrinter { quit, done, thread })
    }

    /// Stops the thread and joins it, unless it is blocked on stdout for
    /// longer than [`PRINTER_WAIT`]: then it is left to the process's exit.
    fn stop(self) {
        drop(self.quit);
        if self.done.recv_timeout(PRINTER_WAIT).is_ok() {
            let _ = self.thread.join();
        } else {
            log::warn!("stdout is not being read; exiting without the events still to print");
        }
    }
}

/// With --beat-file or --systemd: a beater writing the file (with the hub's
/// identity in its metadata) and/or notifying systemd every 10 s; its first
/// beat is made when this returns.
fn beat(args: &ServeArgs, hub: &Hub, status: Option<&StatusServer>) -> Result<Option<BeatGuard>, Error> {
    if args.beat_file.is_none() && !args.systemd {
        return Ok(None);
    }
    let mut builder = Beater::builder()
        .interval(DEFAULT_INTERVAL)
        .systemd(args.systemd)
        .exclusive(true)
        .metadata("role", "hub")
        .metadata("nick", hub.nick())
        .metadata("network", hub.network())
        .metadata("listen", hub.local_addr().to_string())
        .remove_on_stop(true);
    if let Some(status) = status {
        builder = builder.metadata("status", status.local_addr().to_string());
    }
    if let Some(path) = &args.beat_file {
        builder = builder.state_file(path);
    }
    let beater = builder.build()?;
    // Fail fast and clearly when the file cannot be written at all.
    beater.beat()?;
    if let Some(path) = &args.beat_file {
        log::info!("beating {} every {}", path.display(), heartbeat::HumanDuration(beater.interval()));
    }
    beater.start().map(Some)
}

/// One event as one JSON line on stdout. A closed stdout is ignored here:
/// the hub goes on serving.
fn print_json(event: &HubEvent) {
    use serde_json::json;
    let line = match event {
        HubEvent::Joined { id, nick, location, ping, verified } => json!({
            "event": "joined", "id": id, "nick": nick, "location": location.to_string(),
            "maker": location.is_maker(), "ping": ping, "verified": verified,
        }),
        HubEvent::Left { id, nick, reason } => {
            json!({"event": "left", "id": id, "nick": nick, "reason": reason})
        }
        HubEvent::Evicted { id, nick, reason } => {
            json!({"event": "evicted", "id": id, "nick": nick, "reason": reason.to_string()})
        }
        HubEvent::Rejected { addr, reason } => {
            json!({"event": "rejected", "addr": addr.to_string(), "reason": reason})
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn log_event(event: &HubEvent) {
    match event {
        HubEvent::Joined { nick, location, ping, verified, .. } => {
            let role = if location.is_maker() { "maker" } else { "taker" };
            let ping = if *ping { "ping" } else { "no ping" };
            let verified = if *verified { ", nick verified" } else { "" };
            log::debug!("{nick} joined: {role} at {location}, {ping}{verified}");
        }
        HubEvent::Left { nick, reason, .. } => log::debug!("{nick} left: {reason}"),
        // The hub logs these itself: evictions at info, with the address,
        // and rejections at debug.
        HubEvent::Evicted { .. } | HubEvent::Rejected { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let args = Cli::try_parse_from(["serve"]).unwrap().serve;
        let config = args.hub_config();
        let defaults = HubConfig::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.network, defaults.network);
        assert_eq!(config.sweep, SweepConfig::default());
        assert_eq!(config.max_peers, defaults.max_peers);
        assert_eq!(config.max_pending, defaults.max_pending);
        assert_eq!(config.announce_takers, defaults.announce_takers);
        assert_eq!(config.motd, defaults.motd);
        assert_eq!((config.nick, args.status, args.beat_file), (None, None, None));
        assert!(args.allow_host.is_empty() && !args.allow_any_host);
        assert_eq!(config.nick_auth_id, None);
        assert_eq!(config.nick_auth_timeout, defaults.nick_auth_timeout);
    }

    #[test]
    fn nick_auth_flags_reach_the_config() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.serve.hub_config());
        let config = parse(&["serve", "--nick-auth-id", "x.onion:5222"]).unwrap();
        assert_eq!(config.nick_auth_id.as_deref(), Some("x.onion:5222"));
        assert_eq!(config.nick_auth, NickAuthMode::Prefer);
        let config = parse(&["serve", "--nick-auth-id", "x:1", "--nick-auth", "require"]).unwrap();
        assert_eq!(config.nick_auth, NickAuthMode::Require);
        let config =
            parse(&["serve", "--nick-auth-id", "x:1", "--nick-auth", "off", "--nick-auth-timeout", "5"]);
        let config = config.unwrap();
        assert_eq!((config.nick_auth, config.nick_auth_timeout), (NickAuthMode::Off, Duration::from_secs(5)));
        assert!(parse(&["serve", "--nick-auth", "always"]).is_err());
        // Require without an id, or a timeout over 30 s: the library refuses (exit 2).
        let no_id = parse(&["serve", "--nick-auth", "require", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(Hub::start(no_id), Err(Error::InvalidConfig(_))));
        let long = parse(&[
            "serve",
            "--nick-auth-id",
            "x:1",
            "--nick-auth-timeout",
            "31",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(matches!(Hub::start(long.unwrap()), Err(Error::InvalidConfig(_))));
    }

    #[test]
    fn flags_reach_the_config() {
        let args = Cli::try_parse_from([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--network",
            "regtest",
            "--sweep",
            "0.2",
            "--idle",
            "0.4",
            "--hard-evict",
            "2",
            "--pong-wait",
            "0.25",
            "--max-peers",
            "7",
            "--max-pending",
            "9",
            "--announce-takers",
            "--motd",
            "hi",
        ])
        .unwrap()
        .serve;
        let config = args.hub_config();
        assert_eq!(config.network, "regtest");
        assert_eq!(config.sweep.sweep_interval, Duration::from_millis(200));
        assert_eq!(config.sweep.idle_threshold, Duration::from_millis(400));
        assert_eq!(config.sweep.hard_evict, Duration::from_secs(2));
        assert_eq!(config.sweep.pong_wait, Duration::from_millis(250));
        assert_eq!(config.max_peers, 7);
        assert_eq!(config.max_pending, 9);
        assert!(config.announce_takers);
        assert_eq!(config.motd.as_deref(), Some("hi"));
        for bad in
            [&["serve", "--sweep", "0"][..], &["serve", "--max-peers", "0"], &["serve", "--listen", "x"]]
        {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
