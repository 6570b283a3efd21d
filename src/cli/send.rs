//! `heartbeat send`: one beat to a `heartbeat monitor` (or one every S
//! seconds), over HTTP or UDP.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use crossbeam_channel::select;
use heartbeat::valid_session_id;

/// With --every, how often a failure that goes on is said again.
const FAILURE_REPEAT: Duration = Duration::from_secs(600);

/// Beat a session of a `heartbeat monitor`, once or every S seconds.
///
/// Over HTTP the beat is `POST URL/ping/ID` (or `/ping/ID/fail`,
/// `/ping/ID/start`): the monitor registers the session on its first beat.
/// Over UDP (--udp, URL is HOST:PORT) it is one datagram `ID\n`: nothing
/// registers over UDP, and nothing comes back, so success only means sent.
/// Prints nothing on success (cron mails what a job prints).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat send http://127.0.0.1:9333 backup                 # at the end of a cron job
  heartbeat send http://127.0.0.1:9333 backup --fail          # the job failed: run the timeout hook now
  heartbeat send http://127.0.0.1:9333 worker-3 --every 10    # until SIGINT or SIGTERM
  heartbeat send 127.0.0.1:9333 worker-3 --udp

Exit codes: 0 when the monitor took the beat (with --every: after SIGINT or
SIGTERM); 1 when it did not, with the reason on stderr; 2 for bad arguments
(a --token-file that cannot be read included).")]
pub struct SendArgs {
    /// The monitor: http://HOST:PORT, or HOST:PORT with --udp.
    url: String,
    /// The session: 1 to 128 bytes of A-Z a-z 0-9 . _ : -
    id: String,
    /// Report a failure: the session's timeout hook runs at once.
    #[arg(long, conflicts_with_all = ["start", "udp", "every"])]
    fail: bool,
    /// Report that a run started.
    #[arg(long, conflicts_with = "udp")]
    start: bool,
    /// Beat every S seconds until SIGINT or SIGTERM; failures are reported and retried.
    #[arg(long, value_name = "S", allow_hyphen_values = true, value_parser = super::parse_positive_seconds)]
    every: Option<Duration>,
    /// Send a UDP datagram instead of an HTTP request.
    #[arg(long)]
    udp: bool,
    /// A file holding the monitor's token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Seconds to wait for the monitor's answer.
    #[arg(long, value_name = "S", default_value = "5", allow_hyphen_values = true, value_parser = super::parse_positive_seconds)]
    timeout: Duration,
}

/// Why a send cannot even start: bad arguments (exit 2), or a failure (1).
enum Bad {
    Usage(String),
    Run(String),
}

/// Where beats go.
enum Target {
    Http { agent: ureq::Agent, url: String, token: Option<String> },
    Udp { socket: UdpSocket, addr: SocketAddr, datagram: Vec<u8> },
}

impl Target {
    fn new(args: &SendArgs) -> Result<Target, Bad> {
        if !valid_session_id(&args.id) {
            return Err(Bad::Usage(format!(
                "{:?} is not a session id: 1 to 128 bytes of A-Z a-z 0-9 . _ : -",
                args.id
            )));
        }
        let token = match &args.token_file {
            // A token file that cannot be read is a bad argument: exit 1
            // says the monitor did not take the beat, and it was never asked.
            Some(path) => {
                Some(heartbeat::service::read_token_file(path).map_err(|e| Bad::Usage(e.to_string()))?)
            }
            None => None,
        };
        if args.udp {
            let host = args.url.strip_prefix("udp://").unwrap_or(&args.url);
            if host.contains('/') || !host.contains(':') {
                return Err(Bad::Usage(format!(
                    "with --udp, give HOST:PORT (such as 127.0.0.1:9333), not {:?}",
                    args.url
                )));
            }
            let addr = host
                .to_socket_addrs()
                .map_err(|e| Bad::Run(format!("cannot resolve {host:?}: {e}")))?
                .next()
                .ok_or_else(|| Bad::Run(format!("{host:?} resolves to no address")))?;
            let local: SocketAddr =
                if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            let socket =
                UdpSocket::bind(local).map_err(|e| Bad::Run(format!("cannot open a udp socket: {e}")))?;
            let mut datagram = Vec::new();
            if let Some(token) = token {
                datagram.extend_from_slice(token.as_bytes());
                datagram.push(b' ');
            }
            datagram.extend_from_slice(args.id.as_bytes());
            datagram.push(b'\n');
            return Ok(Target::Udp { socket, addr, datagram });
        }
        if !args.url.starts_with("http://") {
            return Err(Bad::Usage(format!(
                "{:?} is not an http:// address (https is not supported; use --udp for udp)",
                args.url
            )));
        }
        if args.url.contains(['?', '#']) {
            return Err(Bad::Usage(format!(
                "{:?}: give the monitor's address without a query or fragment",
                args.url
            )));
        }
        let action = if args.fail {
            "/fail"
        } else if args.start {
            "/start"
        } else {
            ""
        };
        let url = format!("{}/ping/{}{action}", args.url.trim_end_matches('/'), args.id);
        // Like the library's remote client: no proxy from the environment (a
        // cron job's http_proxy must not carry loopback beats away), no redirects.
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(args.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("heartbeat/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Target::Http { agent, url, token })
    }

    /// One beat: `Ok` when the monitor took it (or, over UDP, it was sent).
    fn send(&self) -> Result<(), String> {
        match self {
            Target::Udp { socket, addr, datagram } => {
                socket.send_to(datagram, addr).map(|_| ()).map_err(|e| format!("cannot send to {addr}: {e}"))
            }
            Target::Http { agent, url, token } => {
                let mut request = agent.post(url);
                if let Some(token) = token {
                    request = request.header("Authorization", format!("Bearer {token}"));
                }
                let mut response = request.send_empty().map_err(|e| format!("{url}: {e}"))?;
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    return Ok(());
                }
                // The monitor's errors are {"error": "..."}; say what it said.
                let body = response.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
                let said = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .unwrap_or(body);
                let hint = if status == 401 { " (give its token with --token-file)" } else { "" };
                Err(format!("{url}: the monitor answered {status}: {}{hint}", super::one_line(said.trim())))
            }
        }
    }
}

pub fn run(args: &SendArgs) -> ExitCode {
    let target = match Target::new(args) {
        Ok(target) => target,
        Err(Bad::Usage(e)) => {
            eprintln!("heartbeat send: {e}");
            return ExitCode::from(2);
        }
        Err(Bad::Run(e)) => {
            eprintln!("heartbeat send: {e}");
            return ExitCode::from(1);
        }
    };
    let Some(every) = args.every else {
        return match target.send() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("heartbeat send: {e}");
                ExitCode::from(1)
            }
        };
    };

    // Signals wake the main thread through a channel: no polling of the flag.
    let signals = match super::SignalChannel::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("heartbeat send: cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let mut next = Instant::now();
    // A failure is said when a streak starts and then every ten minutes,
    // not at every tick: a monitor down for a day must not fill a log.
    let mut failures = 0u64;
    let mut said_at = Instant::now();
    loop {
        match target.send() {
            Ok(()) if failures > 0 => {
                eprintln!("heartbeat send: beating again after {failures} failed beats");
                failures = 0;
            }
            Ok(()) => {}
            Err(e) => {
                failures += 1;
                if failures == 1 || said_at.elapsed() >= FAILURE_REPEAT {
                    let streak =
                        if failures > 1 { format!(" ({failures} failed in a row)") } else { String::new() };
                    eprintln!("heartbeat send: {e}{streak}");
                    said_at = Instant::now();
                }
            }
        }
        // On a fixed grid; after a long stall, restart it from now.
        next += every;
        let now = Instant::now();
        if next < now {
            next = now + every;
        }
        select! {
            recv(signals.rx) -> _ => break,
            default(next.saturating_duration_since(now)) => {}
        }
    }
    signals.close();
    ExitCode::SUCCESS
}
