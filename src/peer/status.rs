//! The hub's status endpoint: routes on the crate's own HTTP front
//! ([`HttpServer`]), answering `GET /health`, `GET /status` and `GET /metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::json;

use super::registry::{CounterSnapshot, PeerStatus};
use super::server::Hub;
use crate::error::Result;
use crate::etcd::{Presence, PresenceStatus};
use crate::http::metrics::{CONTENT_TYPE as PROMETHEUS, family, sample};
use crate::http::{HttpConfig, HttpCounters, HttpServer, Request, Response};

/// The prefix of the HTTP front's own series on `/metrics`.
const HTTP_PREFIX: &str = "heartbeat_hub_status";

/// A running status endpoint for a [`Hub`], read-only, on an
/// [`HttpServer`]: one event-loop thread for every client, bounded by an
/// [`HttpConfig`] (connections, head and body sizes, read, write and idle
/// deadlines). Stops on [`stop`](StatusServer::stop) or drop.
///
/// - `GET /health`: `200 {"status": "ok", "peers": N, "nick": .., "network": ..}`
///   while the hub runs, `503` with `"status": "stopped"` once it does not.
/// - `GET /status`: every peer (`nick`, `role`, `location`, `ping`,
///   `idle_sec`, `pong_pending`, `verified`), the hub's nick-authentication
///   setting (`nick_auth`: `off`, `prefer` or `require`) and its counters
///   (nick-auth proofs accepted and refused by code among them), as JSON.
/// - `GET /metrics`: the same figures in the Prometheus text format, and the
///   HTTP front's own (`heartbeat_hub_status_http_*`).
/// - With etcd ([`start_with_etcd`](StatusServer::start_with_etcd)): the
///   presence's state, `etcd` in `/status` and `heartbeat_etcd_*` in
///   `/metrics`.
///
/// `HEAD` is answered like `GET`; other methods on these paths get `405`,
/// other paths `404` (JSON bodies).
///
/// ```
/// use std::sync::Arc;
/// use heartbeat::peer::{Hub, HubConfig, StatusServer};
///
/// let hub = Arc::new(Hub::start(HubConfig { listen: "127.0.0.1:0".parse()?, ..HubConfig::default() })?);
/// let status = StatusServer::start("127.0.0.1:0".parse()?, hub.clone())?;
/// println!("curl http://{}/metrics", status.local_addr());
/// status.stop();
/// hub.stop();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct StatusServer {
    server: HttpServer,
}

impl StatusServer {
    /// Binds `addr` and starts answering requests about `hub`, with the
    /// [`HttpConfig`] defaults for everything else. A bind failure is an
    /// [`Error::Io`](crate::Error::Io) naming the address.
    pub fn start(addr: SocketAddr, hub: Arc<Hub>) -> Result<StatusServer> {
        StatusServer::start_with(HttpConfig { listen: addr, ..HttpConfig::default() }, hub)
    }

    /// [`start`](StatusServer::start) with the HTTP front's limits given:
    /// `config.listen` is the address.
    pub fn start_with(config: HttpConfig, hub: Arc<Hub>) -> Result<StatusServer> {
        StatusServer::serve(config, hub, None)
    }

    /// [`start_with`](StatusServer::start_with) for a hub whose peers are
    /// published to etcd through `presence` ([`HubPublisher`](crate::etcd::HubPublisher)):
    /// `/status` then carries the presence's state under `etcd` (`state`,
    /// `lease`, `keys`, `pending`, `grants`, `keepalives`, `writes`,
    /// `failures`, `last_error`, ...) and `/metrics` the `heartbeat_etcd_*`
    /// series.
    pub fn start_with_etcd(config: HttpConfig, hub: Arc<Hub>, presence: Presence) -> Result<StatusServer> {
        StatusServer::serve(config, hub, Some(presence))
    }

    fn serve(config: HttpConfig, hub: Arc<Hub>, etcd: Option<Presence>) -> Result<StatusServer> {
        let counters = Arc::new(crate::http::Counters::default());
        let handler = {
            let counters = counters.clone();
            move |request: &Request<'_>| {
                route(request.method(), request.path(), &hub, etcd.as_ref(), &counters.snapshot()).into()
            }
        };
        let server = HttpServer::start_counting(config, Arc::new(handler), counters)?;
        log::info!("status endpoint on http://{}/ (health, status, metrics)", server.local_addr());
        Ok(StatusServer { server })
    }

    /// The address it listens on (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops answering, closes every connection and the listener, and joins
    /// the thread. Prompt and idempotent.
    pub fn stop(&self) {
        self.server.stop();
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn route(method: &str, path: &str, hub: &Hub, etcd: Option<&Presence>, http: &HttpCounters) -> Response {
    let known = matches!(path, "/health" | "/status" | "/metrics");
    if !known {
        return Response::error(404, &format!("no such endpoint: {path}; try /health, /status or /metrics"));
    }
    if !matches!(method, "GET" | "HEAD") {
        return Response::error(405, &format!("{path} answers GET only, not {method}"))
            .header("Allow", "GET, HEAD");
    }
    match path {
        "/health" => health(hub),
        "/status" => Response::new(200, "application/json", status(hub, etcd)),
        _ => {
            let mut out = metrics(&hub.peers(), &hub.counters(), Some(http));
            if let Some(presence) = etcd {
                crate::etcd::report::prometheus(&mut out, &presence.status());
            }
            Response::new(200, PROMETHEUS, out)
        }
    }
}

fn health(hub: &Hub) -> Response {
    let running = hub.is_running();
    let body = json!({
        "status": if running { "ok" } else { "stopped" },
        "peers": hub.peer_count(),
        "nick": hub.nick(),
        "network": hub.network(),
    });
    Response::new(if running { 200 } else { 503 }, "application/json", body.to_string())
}

/// The `/status` body, from one snapshot of the registry.
fn status(hub: &Hub, etcd: Option<&Presence>) -> String {
    let peers = hub.peers();
    let counters = hub.counters();
    let body = StatusBody {
        nick: hub.nick(),
        network: hub.network(),
        listen: hub.local_addr(),
        running: hub.is_running(),
        nick_auth: hub.nick_auth().to_string(),
        peers: peers.iter().map(PeerBody::from).collect(),
        counters: CountersBody::from(&counters),
        etcd: etcd.map(Presence::status),
    };
    serde_json::to_string(&body).unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
}

#[derive(Serialize)]
struct StatusBody<'a> {
    nick: &'a str,
    network: &'a str,
    listen: SocketAddr,
    running: bool,
    nick_auth: String,
    peers: Vec<PeerBody<'a>>,
    counters: CountersBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<PresenceStatus>,
}

#[derive(Serialize)]
struct PeerBody<'a> {
    nick: &'a str,
    role: &'static str,
    location: &'a str,
    ping: bool,
    idle_sec: f64,
    pong_pending: bool,
    verified: bool,
}

impl<'a> From<&'a PeerStatus> for PeerBody<'a> {
    fn from(peer: &'a PeerStatus) -> Self {
        PeerBody {
            nick: &peer.nick,
            role: peer.role,
            location: &peer.location,
            ping: peer.ping,
            // Milliseconds are plenty, and keep the numbers short.
            idle_sec: (peer.idle.as_secs_f64() * 1000.0).round() / 1000.0,
            pong_pending: peer.pong_pending,
            verified: peer.verified,
        }
    }
}

#[derive(Serialize)]
struct CountersBody<'a> {
    accepted: u64,
    refused: u64,
    joins: u64,
    rejected: u64,
    left: u64,
    sweeps: u64,
    pings_sent: u64,
    probes_sent: u64,
    pongs_sent: u64,
    pings_unanswered: u64,
    relayed_pubmsg: u64,
    relayed_privmsg: u64,
    deliveries: u64,
    notices: u64,
    proofs_accepted: u64,
    proofs_refused: Labelled<'a>,
    dropped: Labelled<'a>,
    evictions: Labelled<'a>,
    messages: Labelled<'a>,
}

impl<'a> From<&'a CounterSnapshot> for CountersBody<'a> {
    fn from(c: &'a CounterSnapshot) -> Self {
        CountersBody {
            accepted: c.accepted,
            refused: c.refused,
            joins: c.joins,
            rejected: c.rejected,
            left: c.left,
            sweeps: c.sweeps,
            pings_sent: c.pings_sent,
            probes_sent: c.probes_sent,
            pongs_sent: c.pongs_sent,
            pings_unanswered: c.pings_unanswered,
            relayed_pubmsg: c.relayed_pubmsg,
            relayed_privmsg: c.relayed_privmsg,
            deliveries: c.deliveries,
            notices: c.notices,
            proofs_accepted: c.proofs_accepted,
            proofs_refused: Labelled(&c.proofs_refused),
            dropped: Labelled(&c.dropped),
            evictions: Labelled(&c.evictions),
            messages: Labelled(&c.messages),
        }
    }
}

/// Labelled counts as a JSON object, in the library's order.
struct Labelled<'a>(&'a [(&'static str, u64)]);

impl Serialize for Labelled<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (label, n) in self.0 {
            map.serialize_entry(label, n)?;
        }
        map.end()
    }
}

/// The `/metrics` body: the Prometheus text exposition format (0.0.4),
/// with the HTTP front's counters when given.
fn metrics(peers: &[PeerStatus], c: &CounterSnapshot, http: Option<&HttpCounters>) -> String {
    let mut out = String::with_capacity(4096);
    let makers = peers.iter().filter(|p| p.role == "maker").count() as u64;
    let pending = peers.iter().filter(|p| p.pong_pending).count() as u64;

    family(&mut out, "heartbeat_hub_peers", "gauge", "Handshaked peers connected now.");
    sample(&mut out, "heartbeat_hub_peers", None, peers.len() as u64);
    family(&mut out, "heartbeat_hub_peers_by_role", "gauge", "Handshaked peers connected now, by role.");
    sample(&mut out, "heartbeat_hub_peers_by_role", Some(("role", "maker")), makers);
    sample(&mut out, "heartbeat_hub_peers_by_role", Some(("role", "taker")), peers.len() as u64 - makers);
    family(
        &mut out,
        "heartbeat_hub_pong_pending",
        "gauge",
        "Peers pinged that have not answered with a PONG yet.",
    );
    sample(&mut out, "heartbeat_hub_pong_pending", None, pending);
    let verified = peers.iter().filter(|p| p.verified).count() as u64;
    let name = "heartbeat_hub_peers_by_auth";
    family(&mut out, name, "gauge", "Handshaked peers connected now, by whether they proved their nick.");
    sample(&mut out, name, Some(("auth", "verified")), verified);
    sample(&mut out, name, Some(("auth", "unverified")), peers.len() as u64 - verified);

    for (name, help, value) in [
        ("heartbeat_hub_connections_accepted_total", "TCP connections accepted.", c.accepted),
        (
            "heartbeat_hub_connections_refused_total",
            "Connections closed before their handshake because of a limit.",
            c.refused,
        ),
        ("heartbeat_hub_joins_total", "Handshakes accepted.", c.joins),
        (
            "heartbeat_hub_handshakes_rejected_total",
            "Connections closed before their handshake completed, for any reason.",
            c.rejected,
        ),
        ("heartbeat_hub_left_total", "Handshaked peers that left, not evicted.", c.left),
        ("heartbeat_hub_sweeps_total", "Heartbeat sweeps run.", c.sweeps),
        ("heartbeat_hub_pings_sent_total", "PINGs sent to idle peers.", c.pings_sent),
        (
            "heartbeat_hub_probes_sent_total",
            "Orderbook probes sent to idle makers without ping.",
            c.probes_sent,
        ),
        ("heartbeat_hub_pongs_sent_total", "PONGs sent in answer to peers' PINGs.", c.pongs_sent),
        (
            "heartbeat_hub_pings_unanswered_total",
            "Peers' PINGs left unanswered by the rate limit.",
            c.pings_unanswered,
        ),
        ("heartbeat_hub_relayed_pubmsg_total", "PUBMSGs relayed, once per message.", c.relayed_pubmsg),
        ("heartbeat_hub_relayed_privmsg_total", "PRIVMSGs relayed.", c.relayed_privmsg),
        ("heartbeat_hub_deliveries_total", "Relayed copies handed to recipients.", c.deliveries),
        ("heartbeat_hub_notices_total", "Departure notice lines sent, one per recipient.", c.notices),
        (
            "heartbeat_hub_nick_auth_accepted_total",
            "Nick-authentication proofs accepted (807 ok).",
            c.proofs_accepted,
        ),
    ] {
        family(&mut out, name, "counter", help);
        sample(&mut out, name, None, value);
    }

    let name = "heartbeat_hub_evictions_total";
    family(&mut out, name, "counter", "Connections the hub evicted, by reason.");
    for (reason, n) in &c.evictions {
        sample(&mut out, name, Some(("reason", reason)), *n);
    }
    let name = "heartbeat_hub_nick_auth_refused_total";
    family(&mut out, name, "counter", "Nick authentications refused, by 807 code.");
    for (code, n) in &c.proofs_refused {
        sample(&mut out, name, Some(("code", code)), *n);
    }
    let name = "heartbeat_hub_messages_total";
    family(&mut out, name, "counter", "Messages received from handshaked peers, by kind.");
    for (kind, n) in &c.messages {
        sample(&mut out, name, Some(("kind", kind)), *n);
    }
    let name = "heartbeat_hub_dropped_total";
    family(&mut out, name, "counter", "Messages not delivered, by reason.");
    for (reason, n) in &c.dropped {
        sample(&mut out, name, Some(("reason", reason)), *n);
    }
    if let Some(http) = http {
        http.prometheus(&mut out, HTTP_PREFIX);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::error::Error;
    use crate::peer::HubConfig;

    const BOUND: Duration = Duration::from_secs(10);

    fn counters() -> CounterSnapshot {
        CounterSnapshot {
            accepted: 7,
            refused: 1,
            joins: 5,
            rejected: 2,
            left: 1,
            sweeps: 40,
            pings_sent: 3,
            probes_sent: 4,
            pongs_sent: 6,
            pings_unanswered: 0,
            relayed_pubmsg: 8,
            relayed_privmsg: 9,
            deliveries: 30,
            notices: 2,
            proofs_accepted: 3,
            proofs_refused: vec![("malformed", 0), ("expired", 1), ("invalid", 2), ("policy", 0)],
            dropped: vec![
                ("unknown_target", 1),
                ("rate_limited", 0),
                ("slow_recipient", 0),
                ("peerlist_busy", 0),
            ],
            evictions: vec![
                ("idle_timeout", 2),
                ("pong_timeout", 1),
                ("send_failed", 0),
                ("slow_consumer", 0),
                ("protocol", 0),
                ("handshake_timeout", 0),
                ("rate_limited", 0),
                ("spoofed", 0),
                ("displaced", 0),
                ("nick_auth_timeout", 1),
            ],
            messages: vec![
                ("privmsg", 10),
                ("pubmsg", 11),
                ("ping", 12),
                ("pong", 13),
                ("getpeerlist", 14),
                ("other", 0),
            ],
        }
    }

    fn peer(nick: &str, role: &'static str, pong_pending: bool) -> PeerStatus {
        PeerStatus {
            nick: nick.into(),
            role,
            location: "NOT-SERVING-ONION".into(),
            ping: true,
            idle: Duration::from_millis(1500),
            pong_pending,
            verified: nick == "a",
        }
    }

    /// `name{labels} value` or a comment: the shape every line must have.
    fn parse_line(line: &str) -> Option<(&str, Option<&str>, u64)> {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value = value.parse().expect("a sample's value is a number");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, Some(labels.strip_suffix('}').expect("labels end with }"))),
            None => (series, None),
        };
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{line}");
        Some((name, labels, value))
    }

    #[test]
    fn metrics_are_prometheus_text_with_help_and_type_before_samples() {
        let peers = [peer("a", "maker", false), peer("b", "taker", true), peer("c", "taker", true)];
        let http = HttpCounters { accepted: 4, open: 2, ..HttpCounters::default() };
        let text = metrics(&peers, &counters(), Some(&http));
        assert!(text.ends_with('\n'));
        let mut typed = Vec::new();
        let mut helped = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "gauge" || kind == "counter", "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                typed.push(name.to_owned());
            } else {
                let (name, _, _) = parse_line(line).unwrap();
                assert_eq!(typed.last().map(String::as_str), Some(name), "TYPE precedes {line}");
                assert_eq!(helped.last().map(String::as_str), Some(name), "HELP precedes {line}");
            }
        }
        let mut unique = typed.clone();
        unique.dedup();
        assert_eq!(unique, typed, "each family once");
        for line in [
            "heartbeat_hub_peers 3",
            "heartbeat_hub_peers_by_role{role=\"maker\"} 1",
            "heartbeat_hub_peers_by_role{role=\"taker\"} 2",
            "heartbeat_hub_pong_pending 2",
            "heartbeat_hub_connections_accepted_total 7",
            "heartbeat_hub_connections_refused_total 1",
            "heartbeat_hub_joins_total 5",
            "heartbeat_hub_handshakes_rejected_total 2",
            "heartbeat_hub_left_total 1",
            "heartbeat_hub_sweeps_total 40",
            "heartbeat_hub_pings_sent_total 3",
            "heartbeat_hub_probes_sent_total 4",
            "heartbeat_hub_pongs_sent_total 6",
            "heartbeat_hub_pings_unanswered_total 0",
            "heartbeat_hub_evictions_total{reason=\"idle_timeout\"} 2",
            "heartbeat_hub_evictions_total{reason=\"pong_timeout\"} 1",
            "heartbeat_hub_evictions_total{reason=\"handshake_timeout\"} 0",
            "heartbeat_hub_peers_by_auth{auth=\"verified\"} 1",
            "heartbeat_hub_peers_by_auth{auth=\"unverified\"} 2",
            "heartbeat_hub_nick_auth_accepted_total 3",
            "heartbeat_hub_nick_auth_refused_total{code=\"invalid\"} 2",
            "heartbeat_hub_messages_total{kind=\"getpeerlist\"} 14",
            "heartbeat_hub_messages_total{kind=\"other\"} 0",
            "# TYPE heartbeat_hub_peers gauge",
            "# TYPE heartbeat_hub_joins_total counter",
            "# HELP heartbeat_hub_evictions_total Connections the hub evicted, by reason.",
            "heartbeat_hub_status_http_connections_accepted_total 4",
            "heartbeat_hub_status_http_connections_open 2",
            "# TYPE heartbeat_hub_status_http_connections_open gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let evictions = text.lines().filter(|l| l.starts_with("heartbeat_hub_evictions_total{")).count();
        assert_eq!(evictions, 10, "every reason, zeros included");
    }

    #[test]
    fn metrics_of_an_empty_hub_still_list_every_series() {
        let text = metrics(&[], &counters(), None);
        assert!(text.lines().any(|l| l == "heartbeat_hub_peers 0"));
        assert!(text.lines().any(|l| l == "heartbeat_hub_peers_by_role{role=\"maker\"} 0"));
        assert!(text.lines().any(|l| l == "heartbeat_hub_peers_by_role{role=\"taker\"} 0"));
        assert!(text.lines().any(|l| l == "heartbeat_hub_pong_pending 0"));
    }

    fn hub() -> Arc<Hub> {
        let config = HubConfig { listen: "127.0.0.1:0".parse().unwrap(), ..HubConfig::default() };
        Arc::new(Hub::start(config).unwrap())
    }

    /// One HTTP/1.0 exchange: the status code and the body.
    fn get(addr: SocketAddr, request: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, head.to_owned(), body.to_owned())
    }

    #[test]
    fn routes_answer_with_the_right_codes_and_types() {
        let hub = hub();
        let status = StatusServer::start("127.0.0.1:0".parse().unwrap(), hub.clone()).unwrap();
        let addr = status.local_addr();
        assert_ne!(addr.port(), 0);

        let (code, head, body) = get(addr, "GET /health HTTP/1.0\r\n\r\n");
        assert_eq!(code, 200);
        assert!(head.contains("Content-Type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["peers"], 0);
        assert_eq!(v["nick"], hub.nick());
        assert_eq!(v["network"], "mainnet");

        let (code, _, body) = get(addr, "GET /status?pretty HTTP/1.0\r\n\r\n");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["peers"], serde_json::json!([]));
        assert_eq!(v["counters"]["evictions"]["idle_timeout"], 0);
        assert_eq!(v["counters"]["messages"]["privmsg"], 0);

        let (code, head, body) = get(addr, "GET /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(code, 200);
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        assert!(body.lines().any(|l| l == "heartbeat_hub_joins_total 0"), "{body}");

        let (code, head, body) = get(addr, "HEAD /health HTTP/1.0\r\n\r\n");
        assert_eq!((code, body.as_str()), (200, ""), "{head}");

        let (code, _, body) = get(addr, "GET /nope HTTP/1.0\r\n\r\n");
        assert_eq!(code, 404);
        assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());

        let (code, head, _) = get(addr, "POST /health HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(code, 405);
        assert!(head.contains("Allow: GET, HEAD"), "{head}");

        hub.stop();
        let (code, _, body) = get(addr, "GET /health HTTP/1.0\r\n\r\n");
        assert_eq!(code, 503);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "stopped");
    }

    #[test]
    fn stop_is_prompt_idempotent_and_closes_the_port() {
        let hub = hub();
        let status = StatusServer::start("127.0.0.1:0".parse().unwrap(), hub.clone()).unwrap();
        let addr = status.local_addr();
        let started = Instant::now();
        status.stop();
        status.stop();
        assert!(started.elapsed() < BOUND);
        // The listener closes as the accept thread ends: the port is free again.
        let deadline = Instant::now() + BOUND;
        while std::net::TcpListener::bind(addr).is_err() {
            assert!(Instant::now() < deadline, "{addr} still bound");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(status);
    }

    #[test]
    fn a_bind_failure_names_the_address() {
        let hub = hub();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = StatusServer::start(addr, hub).err().expect("the port is taken");
        assert!(matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::AddrInUse), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
