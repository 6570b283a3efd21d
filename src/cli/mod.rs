//! Command-line parsing and dispatch.

mod beat;
mod check;
mod monitor;
mod peer;
mod presence;
mod scan;
mod send;
mod serve;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Liveness for processes, sessions and peers: heartbeat files, a session monitor service, a peer hub.
#[derive(Debug, Parser)]
#[command(name = "heartbeat", version, about, propagate_version = true)]
#[command(after_help = "Logging goes to stderr and is set with RUST_LOG (e.g. RUST_LOG=debug); by
default, warnings, a command's own lines about what it does, and etcd
presence state changes (up, down, up again).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Beat(beat::BeatArgs),
    Check(check::CheckArgs),
    Completions(CompletionsArgs),
    Man(ManArgs),
    Monitor(monitor::MonitorArgs),
    Peer(peer::PeerArgs),
    Scan(scan::ScanArgs),
    Send(send::SendArgs),
    Serve(serve::ServeArgs),
}

/// How a long-running command prints its events on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The log filter without RUST_LOG.
const DEFAULT_LOG: &str = "warn,heartbeat::cli=info,heartbeat::etcd=info";

/// Parses the command line (exit 2 on bad arguments, clap's convention) and runs the command.
pub fn main() -> ExitCode {
    // Warnings and errors, and the commands' own few lines about what they
    // do (`beat` says where it writes), and etcd presence going up or
    // down, once per change: RUST_LOG replaces this.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_LOG)).init();
    match Cli::parse().command {
        Command::Beat(args) => beat::run(args),
        Command::Check(args) => check::run(&args),
        Command::Completions(args) => completions(&args),
        Command::Man(args) => man(&args),
        Command::Monitor(args) => monitor::run(args),
        Command::Peer(args) => peer::run(args),
        Command::Scan(args) => scan::run(&args),
        Command::Send(args) => send::run(&args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Print a shell completion script on stdout.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  heartbeat completions bash > ~/.local/share/bash-completion/completions/heartbeat
  heartbeat completions zsh > ~/.zfunc/_heartbeat     # with fpath+=~/.zfunc
  heartbeat completions fish > ~/.config/fish/completions/heartbeat.fish")]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

fn completions(args: &CompletionsArgs) -> ExitCode {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "heartbeat", &mut out);
    write_out(&out)
}

/// Print a man page (roff) on stdout: heartbeat(1), or with COMMAND heartbeat-COMMAND(1).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  heartbeat man | man -l -                      # heartbeat(1), which lists the commands
  heartbeat man beat | man -l -                 # heartbeat-beat(1)
  heartbeat man --out ~/.cargo/share/man/man1   # all of them: heartbeat.1, heartbeat-beat.1, ...")]
struct ManArgs {
    /// The command whose page to print (beat, check, monitor, ...).
    #[arg(value_name = "COMMAND", conflicts_with = "out")]
    command: Option<String>,
    /// Write heartbeat.1 and one heartbeat-COMMAND.1 page per command into DIR instead.
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
}

fn man(args: &ManArgs) -> ExitCode {
    use clap::CommandFactory;
    // No `help` subcommand in the pages: clap adds it to the parser, but it
    // has no page of its own, so heartbeat(1) must not list heartbeat-help(1).
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build(); // names the subcommands heartbeat-beat, ... as their pages
    if let Some(dir) = &args.out {
        return match std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(command, dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("heartbeat man: cannot write into {}: {e}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    let page = match &args.command {
        None => command,
        Some(name) => match command.find_subcommand(name) {
            Some(sub) => sub.clone(),
            None => {
                let names: Vec<&str> = command.get_subcommands().map(clap::Command::get_name).collect();
                eprintln!("heartbeat man: no command {}; one of: {}", one_line(name), names.join(", "));
                return ExitCode::from(2);
            }
        },
    };
    let mut out = Vec::new();
    match clap_mangen::Man::new(page).render(&mut out) {
        Ok(()) => write_out(&out),
        Err(e) => {
            eprintln!("heartbeat man: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes `bytes` to stdout: exit 0, or 1 if stdout is closed or full.
fn write_out(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heartbeat: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGINT and SIGTERM for commands that run until told to stop, registered
/// before the command starts its work so that no signal is lost.
///
/// Until [`up`](Self::up), while the command starts (reads its files,
/// binds, builds its beater), a signal has its default action: the process
/// ends at once, as it would without any handler, so that a start-up step
/// that blocks (a file system that hangs, a stderr nobody reads) cannot
/// make it deaf to SIGTERM. What that can lose is what a crash at that
/// moment would: a monitor's beats of the last milliseconds (its state
/// file was just read), a heartbeat file left to go stale, an etcd lease
/// left to expire. From `up` on, a signal sets a flag, and the
/// command stops cleanly; a second signal while stopping exits at once with
/// the code `second(signal)` gives, in case the stop itself is stuck.
struct StopSignals {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    starting: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn stop_on_signals(second: fn(i32) -> i32) -> std::io::Result<StopSignals> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let stop = Arc::new(AtomicBool::new(false));
    let starting = Arc::new(AtomicBool::new(true));
    for sig in [SIGINT, SIGTERM] {
        // The order matters: while starting, the first ends the process;
        // then the conditional exit sees the flag a first signal set.
        flag::register_conditional_default(sig, starting.clone())?;
        flag::register_conditional_shutdown(sig, second(sig), stop.clone())?;
        flag::register(sig, stop.clone())?;
    }
    Ok(StopSignals { stop, starting })
}

impl StopSignals {
    /// The start-up is over: from now on a signal asks for a clean stop.
    fn up(&self) {
        self.starting.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a signal asked for a stop (since [`up`](Self::up)).
    fn requested(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The flag a signal sets.
    fn flag(&self) -> &std::sync::atomic::AtomicBool {
        &self.stop
    }
}

/// SIGINT and SIGTERM as a channel, for a main thread that waits on other
/// things too (with `select!`): a thread of its own waits for the first
/// signal and sends on [`rx`](Self::rx). [`close`](Self::close) ends and
/// joins it, and so does a drop (an early exit of the command).
struct SignalChannel {
    rx: crossbeam_channel::Receiver<()>,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SignalChannel {
    fn new() -> std::io::Result<SignalChannel> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new().name("heartbeat-signals".into()).spawn(move || {
            if signals.forever().next().is_some() {
                let _ = tx.try_send(());
            }
        })?;
        Ok(SignalChannel { rx, handle, thread: Some(thread) })
    }

    fn close(self) {
        drop(self);
    }
}

impl Drop for SignalChannel {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// With --systemd: tells systemd the service is stopping (`STOPPING=1`),
/// once the process is on its way out. Failures are logged, never fatal.
fn notify_stopping(systemd: bool) {
    if !systemd {
        return;
    }
    match heartbeat::Notifier::from_env() {
        Ok(Some(mut n)) => {
            if let Err(e) = n.stopping() {
                log::warn!("systemd notification failed: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => log::warn!("systemd notification failed: {e}"),
    }
}

/// The most seconds any flag takes: 100 years. More means "never" to
/// every command here; the limit lets a value such as 1e30, past what a
/// `Duration` holds, be told it is too large and what the most is.
const MAX_SECONDS: u64 = 36_525 * 86_400; // 100 years of 365.25 days

/// Parses a number of seconds, zero or more, such as `10` or `0.5`, up to
/// [`MAX_SECONDS`]. Its flags are declared with `allow_negative_numbers`,
/// so that `-1` reaches this parser and its message, not clap's tip to
/// write `-- -1`.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    seconds(s, "must be a number of seconds, zero or more")
}

/// Parses a positive number of seconds: like [`parse_seconds`], but not zero.
fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    seconds(s, "must be a positive number of seconds").and_then(|d| {
        if d.is_zero() { Err("must be a positive number of seconds".to_owned()) } else { Ok(d) }
    })
}

/// `s` as a duration; `negative` is the message for a value below zero.
fn seconds(s: &str, negative: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| "not a number of seconds".to_owned())?;
    if secs.is_nan() {
        return Err("not a number of seconds".to_owned());
    }
    if secs < 0.0 {
        return Err(negative.to_owned());
    }
    // MAX_SECONDS is exact as an f64 (it is below 2^53).
    if secs > MAX_SECONDS as f64 {
        return Err(format!("too large: at most {MAX_SECONDS} seconds (100 years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a count of at least 1, such as a `--max-peers`.
fn parse_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n < 1 => Err("must be a whole number, 1 or more".to_owned()),
        Ok(n) => u64::try_from(n).map_err(|_| format!("too large: at most {}", u64::MAX)),
        Err(_) => Err("not a whole number".to_owned()),
    }
}

/// A socket address, or `HOST:PORT` with a name resolved to its first address.
fn parse_socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| "resolves to no address".to_owned()),
        Err(e) => Err(format!("not HOST:PORT, or does not resolve: {e}")),
    }
}

/// Where an HTTP front listens, and the name it was given as (`HOST:PORT`
/// with a name, not an address): requests for that `Host` are answered too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpAddr {
    addr: std::net::SocketAddr,
    name: Option<String>,
}

impl HttpAddr {
    /// `config.listen` set, and the name given allowed as a `Host`.
    fn configure(&self, config: &mut heartbeat::http::HttpConfig) {
        config.listen = self.addr;
        config.allow_hosts.extend(self.name.clone());
    }
}

/// [`parse_socket_addr`], keeping the name of `HOST:PORT`.
fn parse_http_addr(s: &str) -> Result<HttpAddr, String> {
    let addr = parse_socket_addr(s)?;
    let name = match s.rsplit_once(':') {
        Some((host, _)) if s.parse::<std::net::SocketAddr>().is_err() => {
            heartbeat::http::check_host_name(host).is_ok().then(|| host.to_owned())
        }
        _ => None,
    };
    Ok(HttpAddr { addr, name })
}

/// A name for `--allow-host`: a host name or an IP address, no port.
fn parse_host_name(s: &str) -> Result<String, String> {
    heartbeat::http::check_host_name(s).map(|()| s.to_owned()).map_err(|_| {
        "not a host name (letters, digits, `-`, `.`, `_`) or an IP address; no scheme, no port".to_owned()
    })
}

/// A JoinMarket network name as handshakes carry it: 1 to 64 bytes of
/// letters, digits, `-`, `_` and `.` (mainnet, testnet, signet, regtest, ...).
fn parse_network(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= heartbeat::peer::wire::MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "not a network name such as mainnet, testnet, signet or regtest (1 to {} letters, digits, `-`, `_` or `.`)",
            heartbeat::peer::wire::MAX_NAME
        ))
    }
}

/// Escapes control characters. Output quotes what files say (host names,
/// uuids, paths, parse errors), and whoever wrote a file must not be able to
/// add lines to a probe's output, such as a forged Nagios `OK` line.
fn one_line(s: &str) -> String {
    let mut line = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || is_bidi_control(c) {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

/// Unicode's bidirectional formatting characters: printed raw, they can
/// reorder the rest of a line on a terminal, so a file could disguise a row.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_or_say_why() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("-0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("-1").unwrap_err(), "must be a number of seconds, zero or more");
        assert_eq!(parse_seconds("inf").unwrap_err(), "too large: at most 3155760000 seconds (100 years)");
        assert_eq!(parse_seconds("1e30").unwrap_err(), "too large: at most 3155760000 seconds (100 years)");
        assert_eq!(parse_seconds("3155760000"), Ok(Duration::from_secs(MAX_SECONDS)));
        assert!(parse_seconds("3155760000.5").unwrap_err().contains("too large"));
        assert_eq!(parse_seconds("NaN").unwrap_err(), "not a number of seconds");
        assert!(parse_seconds("ten").unwrap_err().contains("not a number"));
        assert_eq!(parse_positive_seconds("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_positive_seconds("0").unwrap_err(), "must be a positive number of seconds");
        assert_eq!(parse_positive_seconds("-1").unwrap_err(), "must be a positive number of seconds");
    }

    #[test]
    fn counts_parse_or_say_why() {
        assert_eq!(parse_count("7"), Ok(7));
        assert_eq!(parse_count("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_count("18446744073709551616").unwrap_err().contains("too large"));
        assert_eq!(parse_count("0").unwrap_err(), "must be a whole number, 1 or more");
        assert_eq!(parse_count("-3").unwrap_err(), "must be a whole number, 1 or more");
        assert_eq!(parse_count("1.5").unwrap_err(), "not a whole number");
    }

    #[test]
    fn addresses_and_networks_parse_or_say_why() {
        use std::net::SocketAddr;
        assert_eq!(parse_socket_addr("127.0.0.1:5222"), Ok(SocketAddr::from(([127, 0, 0, 1], 5222))));
        assert_eq!(parse_socket_addr("[::1]:5222").unwrap().port(), 5222);
        assert_eq!(parse_socket_addr("localhost:5222").unwrap().port(), 5222);
        assert!(parse_socket_addr("127.0.0.1").is_err());
        assert!(parse_socket_addr("no port").is_err());
        for good in ["mainnet", "testnet", "signet", "regtest", "testnet4"] {
            assert_eq!(parse_network(good).as_deref(), Ok(good));
        }
        for bad in ["", "main net", "x\n", &"n".repeat(65)] {
            assert!(parse_network(bad).unwrap_err().contains("not a network name"), "{bad:?}");
        }
    }

    #[test]
    fn one_line_escapes_control_and_bidi_characters_only() {
        assert_eq!(one_line("a\nb\tc\u{1b}[31m\u{7f}"), "a\\nb\\tc\\u{1b}[31m\\u{7f}");
        assert_eq!(one_line("web-1 héllo ✓"), "web-1 héllo ✓");
        assert_eq!(one_line("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
    }

    #[test]
    fn every_number_flag_takes_a_negative_value_to_its_parser() {
        // Without this, clap reads `--interval -1` as two flags and tips
        // `-- -1`; the parser's own message is the one that helps.
        use clap::CommandFactory;
        let mut command = Cli::command();
        command.build();
        let mut numbers = 0;
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments() {
                let names = arg.get_value_names().unwrap_or_default();
                if names.iter().any(|n| ["S", "N", "S|auto"].contains(&n.as_str())) {
                    numbers += 1;
                    assert!(
                        arg.is_allow_negative_numbers_set() || arg.is_allow_hyphen_values_set(),
                        "{} --{}",
                        sub.get_name(),
                        arg.get_id()
                    );
                }
            }
        }
        assert!(numbers >= 20, "{numbers} number flags found");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
