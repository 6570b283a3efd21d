//! `heartbeat peer`: be a peer of a JoinMarket directory node and print what
//! happens, until SIGINT or SIGTERM.

use std::fmt::Display;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use crossbeam_channel::RecvTimeoutError;
use heartbeat::peer::wire::{self, Location};
use heartbeat::peer::{ClientEvent, Identity, NickAuthMode, PeerClient, PeerClientConfig};

/// How often the event loop looks at the signal flag while no event arrives.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// Connect to a JoinMarket directory node as a peer and print one line per
/// event, until SIGINT or SIGTERM.
///
/// Handshakes as a taker (or, with --maker, a maker at ONION:PORT), answers
/// the directory's PINGs, and reconnects with a backoff from 1 s doubling to
/// 60 s whenever the connection fails or ends.
///
/// With --key-file the nick is derived from a secp256k1 key kept in FILE, and
/// the client proves it to a directory that offers nick authentication
/// (JMP-0005), signing only challenges that name the directory id it expects:
/// --nick-auth-id, or the dialled HOST:PORT itself when it is an onion service.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  heartbeat peer 127.0.0.1:5222 --network regtest
  heartbeat peer dir.example:5222 --no-ping
  heartbeat peer 127.0.0.1:5222 --maker <56 base32 chars>.onion:5222
  heartbeat peer 127.0.0.1:5222 --key-file peer.key --nick-auth-id 127.0.0.1:5222

Output, one line per event (text from the network has its control
characters escaped):
  connected NICK ping=yes|no verified=yes|no [motd=TEXT]
      (the directory's nick; whether it pings; whether it verified our nick)
  refused REASON
  ping answered | ping ignored
  peerlist [NICK;LOCATION[;D],...]
  message TYPE LINE
  disconnected REASON
  error REASON

With --format json, the same events as one JSON object per line:
  {\"event\": \"connected\", \"nick\", \"motd\", \"ping\", \"verified\"}, and
  refused, ping, peerlist (\"peers\": [{nick, location, disconnected}]),
  message (\"type\", \"line\"), disconnected and error (\"reason\").

Exit codes: 0 after SIGINT or SIGTERM (or once stdout is closed), 1 if the
client could not run (e.g. a --key-file that cannot be read or created), 2
for bad arguments (also --nick-auth require without --key-file or a
directory id). A signal before it is up ends it at once (128+N).")]
pub struct PeerArgs {
    /// The directory node, HOST:PORT (a name resolves to its first address).
    #[arg(value_name = "HOST:PORT", value_parser = parse_endpoint)]
    addr: Endpoint,
    /// Our nick (J5, then base58, padded with O to 16 characters); random by default.
    #[arg(long, value_name = "NICK", value_parser = parse_nick, conflicts_with = "key_file")]
    nick: Option<String>,
    /// Our secp256k1 secret key (64 hex characters), created with mode 0600 when missing,
    /// refused when its group or others may read or write it; the nick is derived from it.
    /// Never printed or logged.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The directory id to expect in nick-auth challenges; default HOST:PORT when it is
    /// <56 base32 chars>.onion:PORT. Nick authentication is offered only with a key and an id.
    #[arg(long, value_name = "ID")]
    nick_auth_id: Option<String>,
    /// prefer: authenticate when the directory offers it; require: refuse a directory that
    /// does not (needs --key-file and a directory id); off: never offer it.
    #[arg(long, value_name = "MODE", default_value = "prefer", value_parser = ["prefer", "require", "off"])]
    nick_auth: String,
    /// The network to handshake for: mainnet, testnet, signet, regtest, or
    /// any other name the directory serves.
    #[arg(long, value_name = "NET", default_value = "mainnet", value_parser = super::parse_network)]
    network: String,
    /// Handshake as a maker serving at ONION:PORT (56 base32 characters, then .onion:PORT).
    #[arg(long, value_name = "ONION:PORT", value_parser = parse_maker)]
    maker: Option<Location>,
    /// Behave like a legacy peer: advertise no ping support, ignore PINGs, never send a PONG.
    #[arg(long)]
    no_ping: bool,
    /// One line of text per event, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = super::Format::Text)]
    format: super::Format,
}

/// The directory as given, and the address it resolved to.
#[derive(Debug, Clone)]
struct Endpoint {
    given: String,
    addr: SocketAddr,
}

impl Endpoint {
    /// The directory id an onion endpoint stands for: itself, lowercased.
    fn onion_id(&self) -> Option<String> {
        let lower = self.given.to_ascii_lowercase();
        Location::parse(&lower).filter(Location::is_maker).map(|_| lower)
    }
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    Ok(Endpoint { given: s.to_owned(), addr: super::parse_socket_addr(s)? })
}

fn parse_nick(s: &str) -> Result<String, String> {
    if wire::is_valid_nick(s) {
        Ok(s.to_owned())
    } else {
        Err("not a nick: J5, then base58, padded with O to 16 characters".to_owned())
    }
}

fn parse_maker(s: &str) -> Result<Location, String> {
    Location::parse(s)
        .filter(Location::is_maker)
        .ok_or_else(|| "not a maker location: <56 base32 characters>.onion:<port>".to_owned())
}

pub fn run(args: PeerArgs) -> ExitCode {
    let stop = match super::stop_on_signals(|sig| 128 + sig) {
        Ok(stop) => stop,
        Err(e) => return failed(&format_args!("cannot handle signals: {e}")),
    };
    let ping = !args.no_ping;
    let identity = match args.key_file.as_deref().map(Identity::load_or_create).transpose() {
        Ok(identity) => identity,
        Err(e) => return failed(&e),
    };
    let config = PeerClientConfig {
        addr: args.addr.addr,
        nick: args.nick,
        network: args.network,
        location: args.maker.unwrap_or(Location::Taker),
        ping,
        identity,
        nick_auth_id: args.nick_auth_id.or_else(|| args.addr.onion_id()),
        nick_auth: args.nick_auth.parse().unwrap_or(NickAuthMode::Prefer),
        ..PeerClientConfig::default()
    };
    let client = match PeerClient::start(config) {
        Ok(client) => client,
        // A configuration the library refuses is a bad command line.
        Err(e @ heartbeat::Error::InvalidConfig(_)) => return bad_arguments(&e),
        Err(e) => return failed(&e),
    };
    let line = |event: &ClientEvent| match args.format {
        super::Format::Text => event_line(event, ping),
        super::Format::Json => event_json(event, ping).to_string(),
    };
    log::info!("peer {} connecting to {}", client.nick(), client.addr());

    // Lines are written on a thread of their own through a bounded queue: a
    // stdout nobody reads neither grows memory with what the directory sends
    // nor keeps a signal from stopping the peer.
    let printer = match Printer::start() {
        Ok(printer) => printer,
        Err(e) => return failed(&format_args!("cannot start the output thread: {e}")),
    };
    stop.up();
    while !printer.closed() && !stop.requested() {
        match client.events().recv_timeout(SIGNAL_CHECK) {
            Ok(event) => printer.print(line(&event)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return failed(&"the client thread stopped unexpectedly");
            }
        }
    }
    if printer.closed() {
        log::info!("stdout is closed; stopping");
    }
    client.stop();
    // The end of the session (`disconnected client stopped`), already sent.
    for event in client.events().try_iter() {
        printer.print(line(&event));
    }
    printer.finish();
    ExitCode::SUCCESS
}

/// Lines waiting to be written at most; beyond, they are dropped and counted.
const LINE_QUEUE: usize = 4096;

/// How long the end of `peer` waits for the last lines to be written before
/// it leaves them (and a thread blocked on stdout) to the process's exit.
const PRINTER_WAIT: Duration = Duration::from_secs(1);

/// The thread that writes the lines to stdout.
struct Printer {
    lines: crossbeam_channel::Sender<String>,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    dropped: std::cell::Cell<u64>,
    done: crossbeam_channel::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Printer {
    fn start() -> io::Result<Printer> {
        let (lines, rx) = crossbeam_channel::bounded::<String>(LINE_QUEUE);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed_flag = closed.clone();
        let thread = std::thread::Builder::new().name("heartbeat-output".into()).spawn(move || {
            let mut stdout = io::stdout();
            for line in rx {
                if print(&mut stdout, &line).is_err() {
                    closed_flag.store(true, Ordering::Relaxed);
                    break;
                }
            }
            let _ = done_tx.send(());
        })?;
        Ok(Printer { lines, closed, dropped: std::cell::Cell::new(0), done, thread })
    }

    /// Whether stdout was found closed.
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Queues a line, or drops it (counted) when the queue is full.
    fn print(&self, line: String) {
        if let Err(crossbeam_channel::TrySendError::Full(_)) = self.lines.try_send(line) {
            if self.dropped.get() == 0 {
                log::warn!("stdout is too slow: lines are being dropped");
            }
            self.dropped.set(self.dropped.get() + 1);
        }
    }

    /// Lets the thread write what is queued, for at most [`PRINTER_WAIT`].
    fn finish(self) {
        if self.dropped.get() > 0 {
            log::warn!("{} lines not printed: stdout was too slow", self.dropped.get());
        }
        drop(self.lines);
        if self.done.recv_timeout(PRINTER_WAIT).is_ok() {
            let _ = self.thread.join();
        } else {
            log::warn!("stdout is not being read; exiting without the lines still to print");
        }
    }
}

/// A bad command line: reported on stderr, exit 2.
fn bad_arguments(what: &dyn Display) -> ExitCode {
    let _ = writeln!(io::stderr().lock(), "heartbeat peer: {}", super::one_line(&what.to_string()));
    ExitCode::from(2)
}

/// Could not run: reported on stderr, exit 1.
fn failed(what: &dyn Display) -> ExitCode {
    let _ = writeln!(io::stderr().lock(), "heartbeat peer: {}", super::one_line(&what.to_string()));
    ExitCode::from(1)
}

/// Prints one line, flushed; an error means stdout is closed.
fn print(out: &mut impl Write, line: &str) -> io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

/// One event as one line; what the network said is escaped.
fn event_line(event: &ClientEvent, ping: bool) -> String {
    let text = super::one_line;
    match event {
        ClientEvent::Connected { nick, motd, ping: directory_pings, verified } => {
            let ping = if *directory_pings { "yes" } else { "no" };
            let verified = if *verified { "yes" } else { "no" };
            let motd = motd.as_deref().map(|m| format!(" motd={}", text(m))).unwrap_or_default();
            format!("connected {} ping={ping} verified={verified}{motd}", text(nick))
        }
        ClientEvent::Refused { reason } => format!("refused {}", text(reason)),
        ClientEvent::Ping => format!("ping {}", if ping { "answered" } else { "ignored" }),
        ClientEvent::Peerlist(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(nick, location, gone)| format!("{nick};{location}{}", if *gone { ";D" } else { "" }))
                .collect();
            if entries.is_empty() {
                "peerlist".to_owned()
            } else {
                format!("peerlist {}", text(&entries.join(",")))
            }
        }
        ClientEvent::Message { kind, line } => format!("message {kind} {}", text(line)),
        ClientEvent::Disconnected { reason } => format!("disconnected {}", text(reason)),
        ClientEvent::Error(why) => format!("error {}", text(why)),
        other => format!("event {}", text(&format!("{other:?}"))),
    }
}

/// One event as a JSON object: `{"event": "connected", ...}`. Strings are
/// JSON-escaped, so what the network said cannot add lines.
fn event_json(event: &ClientEvent, ping: bool) -> serde_json::Value {
    use serde_json::json;
    match event {
        ClientEvent::Connected { nick, motd, ping: directory_pings, verified } => {
            json!({"event": "connected", "nick": nick, "motd": motd, "ping": directory_pings, "verified": verified})
        }
        ClientEvent::Refused { reason } => json!({"event": "refused", "reason": reason}),
        ClientEvent::Ping => json!({"event": "ping", "answered": ping}),
        ClientEvent::Peerlist(entries) => {
            let peers: Vec<_> = entries
                .iter()
                .map(|(nick, location, gone)| json!({"nick": nick, "location": location, "disconnected": gone}))
                .collect();
            json!({"event": "peerlist", "peers": peers})
        }
        ClientEvent::Message { kind, line } => json!({"event": "message", "type": kind, "line": line}),
        ClientEvent::Disconnected { reason } => json!({"event": "disconnected", "reason": reason}),
        ClientEvent::Error(why) => json!({"event": "error", "reason": why}),
        other => json!({"event": "other", "debug": format!("{other:?}")}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_or_say_why() {
        assert!(parse_nick("J5DirNickOOOOOOO").is_ok());
        assert!(parse_nick("bob").unwrap_err().contains("not a nick"));
        let onion = format!("{}.onion:5222", "a".repeat(56));
        assert!(parse_maker(&onion).unwrap().is_maker());
        for bad in ["NOT-SERVING-ONION", "", "127.0.0.1:5222", "x.onion:5222"] {
            assert!(parse_maker(bad).unwrap_err().contains("not a maker location"), "{bad}");
        }
        // An onion endpoint is its own directory id (lowercased); an address is none.
        let onion = Endpoint { given: onion.to_uppercase(), addr: "127.0.0.1:1".parse().unwrap() };
        assert_eq!(onion.onion_id(), Some(format!("{}.onion:5222", "a".repeat(56))));
        assert_eq!(parse_endpoint("127.0.0.1:5222").unwrap().onion_id(), None);
    }

    #[test]
    fn events_are_one_escaped_line_each() {
        let line = |event: ClientEvent| event_line(&event, true);
        assert_eq!(
            line(ClientEvent::Connected {
                nick: "J5DirNickOOOOOOO".into(),
                motd: None,
                ping: true,
                verified: true
            }),
            "connected J5DirNickOOOOOOO ping=yes verified=yes"
        );
        assert_eq!(
            line(ClientEvent::Connected {
                nick: "J5x".into(),
                motd: Some("hi\nOK all".into()),
                ping: false,
                verified: false
            }),
            "connected J5x ping=no verified=no motd=hi\\nOK all"
        );
        assert_eq!(line(ClientEvent::Ping), "ping answered");
        assert_eq!(event_line(&ClientEvent::Ping, false), "ping ignored");
        assert_eq!(
            line(ClientEvent::Peerlist(vec![
                ("J5a".into(), "x.onion:1".into(), false),
                ("J5b".into(), "NOT-SERVING-ONION".into(), true),
            ])),
            "peerlist J5a;x.onion:1,J5b;NOT-SERVING-ONION;D"
        );
        assert_eq!(line(ClientEvent::Peerlist(Vec::new())), "peerlist");
        assert_eq!(
            line(ClientEvent::Message { kind: 687, line: "J5d!PUBLIC!orderbook\r\n\u{1b}[2J".into() }),
            "message 687 J5d!PUBLIC!orderbook\\r\\n\\u{1b}[2J"
        );
        assert_eq!(line(ClientEvent::Refused { reason: "no".into() }), "refused no");
        assert_eq!(line(ClientEvent::Disconnected { reason: "bye".into() }), "disconnected bye");
        assert_eq!(line(ClientEvent::Error("down".into())), "error down");
    }

    #[test]
    fn events_as_json_are_one_object_each() {
        let json = |event: ClientEvent| event_json(&event, true).to_string();
        assert_eq!(
            json(ClientEvent::Connected {
                nick: "J5x".into(),
                motd: Some("hi\nthere".into()),
                ping: false,
                verified: true
            }),
            r#"{"event":"connected","motd":"hi\nthere","nick":"J5x","ping":false,"verified":true}"#
        );
        assert_eq!(json(ClientEvent::Ping), r#"{"answered":true,"event":"ping"}"#);
        assert_eq!(
            json(ClientEvent::Peerlist(vec![("J5a".into(), "x.onion:1".into(), true)])),
            r#"{"event":"peerlist","peers":[{"disconnected":true,"location":"x.onion:1","nick":"J5a"}]}"#
        );
        assert_eq!(
            json(ClientEvent::Message { kind: 687, line: "a\r\nb".into() }),
            r#"{"event":"message","line":"a\r\nb","type":687}"#
        );
    }
}
