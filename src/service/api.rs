//! The HTTP API: JSON in and out, every error a JSON body that says what was
//! wrong. Runs on the HTTP front's event-loop thread, so every handler here
//! is short: a shard lock, a lookup, a few hundred bytes of JSON.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{MAX_AGENT_TYPE, Shared, valid_agent_type};
use crate::http::metrics::{CONTENT_TYPE as PROMETHEUS, family, sample};
use crate::http::{Handler, Reply, Request, Response};
use crate::monitor::{Detector, MAX_TIMEOUT, PhiConfig, RegisterOptions, SessionStatus, valid_session_id};
use crate::state::format_timestamp;

/// `GET /sessions` answers at most this many sessions at a time (a page of
/// the longest ids and agent types is then about 450 KB).
pub(crate) const MAX_PAGE: usize = 1_000;
/// ... and this many when not asked.
pub(crate) const DEFAULT_PAGE: usize = 100;
/// Walks over every session (pages, scrapes) cost one token per 10,000
/// sessions (a scrape an eighth of that); this many tokens come back each
/// second, and at most this many are saved up. At a million sessions that is
/// five pages a second, about 15% of the event loop; beyond, 503.
pub(crate) const WALK_BUDGET: f64 = 500.0;
/// The agent type of sessions registered without one, and by `/ping`.
pub(crate) const DEFAULT_AGENT_TYPE: &str = "default";

const BAD_ID: &str = "a session id is 1 to 128 bytes of A-Z a-z 0-9 . _ : -";

pub(crate) struct Api {
    shared: Arc<Shared>,
}

impl Api {
    pub(crate) fn new(shared: Arc<Shared>) -> Api {
        Api { shared }
    }
}

impl Handler for Api {
    fn handle(&self, request: &Request<'_>) -> Reply {
        let shared = &*self.shared;
        if shared.token.is_some() {
            // The scheme is case-insensitive (RFC 9110 11.1).
            let presented = request
                .header("authorization")
                .filter(|h| h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer "))
                .map(|h| &h[7..]);
            if !shared.token_ok(presented) {
                shared.counters.unauthorized_http.fetch_add(1, Ordering::Relaxed);
                return Response::error(401, "this monitor needs Authorization: Bearer <token>")
                    .header("WWW-Authenticate", "Bearer")
                    .into();
            }
        }
        route(&self.shared, request)
    }

    /// Every method but `GET` and `HEAD`, and `/ping` by any method: a
    /// ping beats, registers or fails a session, and an `<img>` on any web
    /// page could send its `GET`.
    fn changes_state(&self, request: &Request<'_>) -> bool {
        let path = request.path();
        !matches!(request.method(), "GET" | "HEAD") || path == "/ping" || path.starts_with("/ping/")
    }
}

/// What a path allows, for 405 answers.
const READ: &str = "GET, HEAD";

fn route(shared: &Arc<Shared>, request: &Request<'_>) -> Reply {
    let method = request.method();
    let path = request.path();
    let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
    let (first, id, action, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    let get = matches!(method, "GET" | "HEAD");
    let reply = match (first, id, action, rest) {
        (Some("health"), None, None, None) if get => health(shared),
        (Some("health"), None, None, None) => not_allowed(READ),
        (Some("status"), None, None, None) if get => service_status(shared),
        (Some("status"), None, None, None) => not_allowed(READ),
        (Some("metrics"), None, None, None) if get => match walk(shared, 8) {
            Ok(()) => metrics(shared),
            Err(busy) => busy,
        },
        (Some("metrics"), None, None, None) => not_allowed(READ),
        (Some("events"), None, None, None) if get => return events(shared),
        (Some("events"), None, None, None) => not_allowed(READ),
        (Some("sessions"), None, None, None) if get => match walk(shared, 1) {
            Ok(()) => list(shared, request.query()),
            Err(busy) => busy,
        },
        (Some("sessions"), None, None, None) => not_allowed(READ),
        (Some("sessions"), Some(id), None, None) => match (method, check_id(id)) {
            (_, Err(bad)) => bad,
            ("PUT", Ok(id)) => register(shared, id, request.body()),
            ("GET" | "HEAD", Ok(id)) => status(shared, id),
            ("DELETE", Ok(id)) => unregister(shared, id),
            _ => not_allowed("GET, HEAD, PUT, DELETE"),
        },
        (Some("sessions"), Some(id), Some(action @ ("beat" | "pause" | "resume" | "fail")), None) => {
            match (method, check_id(id)) {
                (_, Err(bad)) => bad,
                ("POST", Ok(id)) => act(shared, id, action),
                _ => not_allowed("POST"),
            }
        }
        (Some("ping"), Some(id), action @ (None | Some("fail" | "start")), None) => {
            match (method, check_id(id)) {
                (_, Err(bad)) => bad,
                ("GET" | "HEAD" | "POST", Ok(id)) => ping(shared, id, action, request.query()),
                _ => not_allowed("GET, HEAD, POST"),
            }
        }
        _ => Response::error(
            404,
            "no such resource: the API is /sessions, /ping, /events, /health, /status, /metrics",
        ),
    };
    reply.into()
}

fn not_allowed(allow: &'static str) -> Response {
    Response::error(405, &format!("method not allowed here; allowed: {allow}")).header("Allow", allow)
}

/// Takes the tokens a walk over every session costs (`1 / share` of one
/// per 10,000 sessions), or a 503 when the budget is spent.
fn walk(shared: &Shared, share: usize) -> Result<(), Response> {
    // At most the whole bucket: beyond five million sessions a page costs
    // all of it, and is still answered once a second.
    let cost = ((shared.monitor.registered_count() / 10_000 / share).max(1) as f64).min(WALK_BUDGET);
    let now = shared.monitor.clock().now();
    // Scrapes have a bucket of their own: paging cannot starve Prometheus.
    let mut budget = if share == 1 { shared.walks.lock() } else { shared.scrapes.lock() };
    let (tokens, since) = &mut *budget;
    *tokens = (*tokens + now.saturating_duration_since(*since).as_secs_f64() * WALK_BUDGET).min(WALK_BUDGET);
    *since = now;
    if *tokens < cost {
        shared.counters.walks_refused.fetch_add(1, Ordering::Relaxed);
        return Err(Response::error(
            503,
            "too many session listings and scrapes (each walks every session): retry in a second",
        )
        .header("Retry-After", "1"));
    }
    *tokens -= cost;
    Ok(())
}

fn check_id(id: &str) -> Result<&str, Response> {
    if valid_session_id(id) { Ok(id) } else { Err(Response::error(400, BAD_ID)) }
}

fn not_registered(id: &str) -> Response {
    Response::error(404, &format!("session {id} is not registered"))
}

fn health(shared: &Shared) -> Response {
    let sweeping = shared.sweeping.load(Ordering::SeqCst) && shared.monitor.is_running();
    let body = serde_json::json!({
        "status": if sweeping { "ok" } else { "stopped" },
        "sessions": shared.monitor.registered_count(),
    });
    Response::json(if sweeping { 200 } else { 503 }, &body)
}

/// The service's own state: sweeping or not, session counts by state
/// (O(1) figures only: no walk), and the etcd presence's state when the
/// sessions are published to etcd.
fn service_status(shared: &Shared) -> Response {
    let sweeping = shared.sweeping.load(Ordering::SeqCst) && shared.monitor.is_running();
    let registered = shared.monitor.registered_count();
    let mut body = serde_json::json!({
        "status": if sweeping { "ok" } else { "stopped" },
        "sessions": registered,
        "healthy": shared.monitor.healthy_count(),
        "events_dropped": shared.monitor.events_dropped(),
    });
    if let Some(presence) = shared.etcd.get() {
        body["etcd"] = serde_json::to_value(presence.status()).unwrap_or_default();
    }
    Response::json(if sweeping { 200 } else { 503 }, &body)
}

/// A session's status as the API gives it.
#[derive(Serialize)]
struct StatusJson<'a> {
    session_id: &'a str,
    agent_type: &'a str,
    last_beat: &'a str,
    seconds_since_beat: f64,
    missed_beats: u32,
    is_paused: bool,
    is_healthy: bool,
    failed: bool,
    phi: Option<f64>,
    time_to_death_sec: Option<f64>,
    timeout_sec: f64,
    max_missed: u32,
    detector: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_started: Option<String>,
}

fn status_json<'a>(s: &'a SessionStatus, run_started: Option<SystemTime>) -> StatusJson<'a> {
    StatusJson {
        session_id: &s.session_id,
        agent_type: &s.agent_type,
        last_beat: &s.last_beat,
        seconds_since_beat: s.seconds_since_beat,
        missed_beats: s.missed_beats,
        is_paused: s.is_paused,
        is_healthy: s.is_healthy,
        failed: s.failed,
        // JSON has no NaN or infinity: an unbounded phi is reported as null.
        phi: s.phi.filter(|p| p.is_finite()),
        time_to_death_sec: s.time_to_death.map(|d| d.as_secs_f64()),
        timeout_sec: s.timeout.as_secs_f64(),
        max_missed: s.max_missed_beats,
        detector: if s.phi.is_some() { "phi" } else { "fixed" },
        run_started: run_started.map(format_timestamp),
    }
}

fn status(shared: &Shared, id: &str) -> Response {
    match shared.monitor.status(id) {
        Some(s) => {
            let started = shared.runs.lock().get(id).copied();
            Response::json(200, &status_json(&s, started))
        }
        None => not_registered(id),
    }
}

fn list(shared: &Shared, query: Option<&str>) -> Response {
    let mut after = None;
    let mut limit = DEFAULT_PAGE;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" if valid_session_id(value) => after = Some(value),
            "after" => return Response::error(400, &format!("after: {BAD_ID}")),
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => {
                    return Response::error(
                        400,
                        &format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                    );
                }
            },
            _ => {
                return Response::error(
                    400,
                    &format!("unknown query parameter {:?}; known: after, limit", key),
                );
            }
        }
    }
    let page = shared.monitor.status_page(after, limit);
    let runs = shared.runs.lock();
    let sessions: Vec<StatusJson<'_>> =
        page.iter().map(|s| status_json(s, runs.get(s.session_id.as_str()).copied())).collect();
    let next = (page.len() == limit).then(|| page.last().map(|s| s.session_id.as_str())).flatten();
    Response::json(
        200,
        &serde_json::json!({
            "total": shared.monitor.registered_count(),
            "sessions": sessions,
            "next_after": next,
        }),
    )
}

/// A session's settings, from a `PUT` body or a ping's query; every one
/// optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    agent_type: Option<String>,
    timeout_sec: Option<f64>,
    max_missed: Option<i64>,
    grace_sec: Option<f64>,
    detector: Option<DetectorName>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DetectorName {
    Fixed,
    Phi,
}

impl Settings {
    /// From a `PUT` body: empty, or a JSON object.
    fn from_body(body: &[u8]) -> Result<Settings, Response> {
        let text = body.trim_ascii();
        if text.is_empty() {
            return Ok(Settings::default());
        }
        if !text.starts_with(b"{") {
            return Err(Response::error(
                400,
                r#"the registration body must be a JSON object such as {"agent_type": "worker", "timeout_sec": 60}"#,
            ));
        }
        serde_json::from_slice(text).map_err(|e| Response::error(400, &format!("bad registration body: {e}")))
    }

    /// From a ping's query, `?timeout_sec=90000&max_missed=1&agent_type=cron`
    /// (values are not percent-decoded: an agent type there uses the
    /// characters of a session id); `None` when it sets nothing.
    fn from_query(query: Option<&str>) -> Result<Option<Settings>, Response> {
        let mut settings = Settings::default();
        let mut any = false;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| -> Result<f64, Response> {
                value
                    .parse::<f64>()
                    .map_err(|_| Response::error(400, &format!("{what} must be a number, not {value:?}")))
            };
            match key {
                "agent_type" if valid_session_id(value) => settings.agent_type = Some(value.to_owned()),
                "agent_type" => {
                    return Err(Response::error(
                        400,
                        "agent_type in a query: 1 to 128 of A-Z a-z 0-9 . _ : -",
                    ));
                }
                "timeout_sec" => settings.timeout_sec = Some(number(key)?),
                "grace_sec" => settings.grace_sec = Some(number(key)?),
                "max_missed" => {
                    settings.max_missed = Some(value.parse().map_err(|_| {
                        Response::error(400, &format!("max_missed must be a whole number, not {value:?}"))
                    })?);
                }
                "detector" => {
                    settings.detector = Some(match value {
                        "fixed" => DetectorName::Fixed,
                        "phi" => DetectorName::Phi,
                        _ => return Err(Response::error(400, "detector must be fixed or phi")),
                    });
                }
                _ => {
                    return Err(Response::error(
                        400,
                        &format!(
                            "unknown query parameter {key:?}; known: agent_type, timeout_sec, max_missed, grace_sec, \
                             detector"
                        ),
                    ));
                }
            }
            any = true;
        }
        Ok(any.then_some(settings))
    }

    /// The agent type and options, checked with messages in the API's terms.
    fn check(&self, shared: &Shared) -> Result<(String, RegisterOptions), Response> {
        let agent_type = self.agent_type.clone().unwrap_or_else(|| DEFAULT_AGENT_TYPE.to_owned());
        if !valid_agent_type(&agent_type) {
            return Err(Response::error(
                400,
                &format!("agent_type must be 1 to {MAX_AGENT_TYPE} bytes without control characters"),
            ));
        }
        let max_secs = MAX_TIMEOUT.as_secs();
        let secs = |field: &str, value: Option<f64>, zero_ok: bool| -> Result<Option<Duration>, Response> {
            let Some(v) = value else { return Ok(None) };
            // Below a nanosecond rounds to zero: as zero, not a session that dies at once.
            let ok = v.is_finite() && (v >= 1e-9 || (zero_ok && v == 0.0)) && v <= max_secs as f64;
            if !ok {
                let low = if zero_ok { "from 0" } else { "above 0" };
                return Err(Response::error(
                    400,
                    &format!(
                        "{field} must be a number of seconds {low} and at most {max_secs} (365 days), not {v}"
                    ),
                ));
            }
            Ok(Some(Duration::from_secs_f64(v)))
        };
        let timeout = secs("timeout_sec", self.timeout_sec, false)?;
        let grace = secs("grace_sec", self.grace_sec, true)?;
        let max_missed_beats = match self.max_missed {
            None => None,
            Some(n) => Some(u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                Response::error(
                    400,
                    &format!("max_missed must be a whole number from 1 to {}, not {n}", u32::MAX),
                )
            })?),
        };
        let detector = self.detector.map(|d| match (d, shared.monitor.detector()) {
            (DetectorName::Fixed, _) => Detector::Fixed,
            (DetectorName::Phi, Detector::Phi(config)) => Detector::Phi(config),
            (DetectorName::Phi, Detector::Fixed) => Detector::Phi(PhiConfig::default()),
        });
        Ok((agent_type, RegisterOptions { timeout, grace, max_missed_beats, detector }))
    }
}

fn full(shared: &Shared) -> Response {
    shared.counters.refused_full.fetch_add(1, Ordering::Relaxed);
    Response::error(507, &format!("the monitor holds its maximum of {} sessions", shared.max_sessions))
}

/// `PUT /sessions/{id}`: registers, replacing a session of that id and its
/// settings (what the body leaves out is the server's default).
fn register(shared: &Shared, id: &str, body: &[u8]) -> Response {
    let (agent_type, options) = match Settings::from_body(body).and_then(|s| s.check(shared)) {
        Ok(checked) => checked,
        Err(bad) => return bad,
    };
    let exists = shared.monitor.status(id).is_some();
    if !exists && shared.monitor.registered_count() >= shared.max_sessions {
        return full(shared);
    }
    if let Err(e) = shared.monitor.register_with(id, &agent_type, options) {
        return Response::error(400, &e.to_string());
    }
    shared.runs.lock().remove(id);
    match shared.monitor.status(id) {
        Some(s) => Response::json(if exists { 200 } else { 201 }, &status_json(&s, None)),
        None => not_registered(id),
    }
}

fn unregister(shared: &Shared, id: &str) -> Response {
    if shared.monitor.unregister(id) {
        shared.runs.lock().remove(id);
        Response::empty(204)
    } else {
        not_registered(id)
    }
}

fn act(shared: &Shared, id: &str, action: &str) -> Response {
    let monitor = &shared.monitor;
    let done = match action {
        "beat" => {
            let known = monitor.beat(id);
            let counter = if known { &shared.counters.beats_http } else { &shared.counters.unknown_http };
            counter.fetch_add(1, Ordering::Relaxed);
            known
        }
        "pause" => monitor.pause(id),
        "resume" => {
            if monitor.resume(id) {
                true
            } else if monitor.status(id).is_some() {
                return Response::error(409, &format!("session {id} is not paused"));
            } else {
                false
            }
        }
        "fail" => monitor.fail(id),
        _ => false,
    };
    if done { Response::empty(204) } else { not_registered(id) }
}

/// Whether a session's settings differ from those a ping's query asks for:
/// what the query leaves out is the server's default, as at registration.
fn differs(shared: &Shared, status: &SessionStatus, agent_type: &str, options: &RegisterOptions) -> bool {
    let monitor = &shared.monitor;
    let phi = matches!(options.detector.unwrap_or(monitor.detector()), Detector::Phi(_));
    status.agent_type != agent_type
        || options.timeout.unwrap_or(monitor.timeout()) != status.timeout
        || options.max_missed_beats.unwrap_or(monitor.max_missed_beats()) != status.max_missed_beats
        || phi != status.phi.is_some()
}

/// `/ping/{id}`, `/ping/{id}/fail`, `/ping/{id}/start`: the healthchecks.io
/// habit. The session is registered on first use (201), with the settings
/// of the query (`?timeout_sec=90000&max_missed=1`) or the server's
/// defaults, and beaten after (200). A ping whose query asks for other
/// settings than the session has (what it leaves out being the server's
/// defaults) changes them, and nothing else; a ping without a query leaves
/// them as they are. Success answers have an empty body, so that a cron
/// job's `curl -fsS` prints nothing (cron mails what a job prints).
///
/// `/fail` reports a failure (a sign of life that leaves the session
/// failed); `/start` records that a run started and is a sign of life, but
/// leaves a failed session failed: only a plain ping (or a beat) clears it.
fn ping(shared: &Shared, id: &str, action: Option<&str>, query: Option<&str>) -> Response {
    let monitor = &shared.monitor;
    let wanted = match Settings::from_query(query) {
        Ok(Some(settings)) => match settings.check(shared) {
            Ok(checked) => Some(checked),
            Err(bad) => return bad,
        },
        Ok(None) => None,
        Err(bad) => return bad,
    };
    let current = monitor.status(id);
    let created = current.is_none();
    match (&current, wanted) {
        (None, wanted) => {
            if monitor.registered_count() >= shared.max_sessions {
                return full(shared);
            }
            let (agent_type, options) =
                wanted.unwrap_or_else(|| (DEFAULT_AGENT_TYPE.to_owned(), RegisterOptions::default()));
            if let Err(e) = monitor.register_with(id, &agent_type, options) {
                return Response::error(400, &e.to_string());
            }
        }
        (Some(status), Some((agent_type, options))) if differs(shared, status, &agent_type, &options) => {
            // New settings only: its failure, misses and pause stay.
            if let Err(e) = monitor.reconfigure(id, &agent_type, options) {
                return Response::error(400, &e.to_string());
            }
        }
        (Some(_), _) => {}
    }
    let took = match action {
        Some("fail") => monitor.fail(id),
        Some("start") => monitor.touch(id),
        _ => monitor.beat(id),
    };
    if !took {
        // Removed between the lookup and now (a sweep timed it out).
        return not_registered(id);
    }
    shared.counters.beats_ping.fetch_add(1, Ordering::Relaxed);
    let mut runs = shared.runs.lock();
    match action {
        Some("start") => {
            runs.insert(id.into(), monitor.clock().wall());
            // A `Removed` the event thread never saw (dropped in a burst)
            // would leave entries behind: prune when they outnumber sessions.
            if runs.len() > monitor.registered_count() {
                runs.retain(|id, _| monitor.status(id).is_some());
            }
        }
        _ => {
            runs.remove(id);
        }
    }
    drop(runs);
    // A sweep may have removed it meanwhile, its `Removed` already handled:
    // then the entry must not stay behind.
    if action == Some("start") && monitor.status(id).is_none() {
        shared.runs.lock().remove(id);
    }
    Response::empty(if created { 201 } else { 200 })
}

fn events(shared: &Arc<Shared>) -> Reply {
    let shared = Arc::clone(shared);
    Reply::Stream {
        content_type: "text/event-stream",
        open: Box::new(move |sink| {
            // A first comment, so that a client sees the stream is open.
            if sink.send(b": heartbeat monitor events\n\n") {
                let mut streams = shared.streams.lock();
                // Streams whose clients left are pruned here too, not only
                // when an event goes out: the list never holds more than the
                // open connections.
                streams.retain(crate::http::StreamSink::is_open);
                streams.push(sink);
            }
        }),
    }
}

fn metrics(shared: &Shared) -> Response {
    let mut out = String::with_capacity(4096);
    let counts = shared.monitor.counts();
    let c = &shared.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    family(&mut out, "heartbeat_monitor_sessions", "gauge", "Sessions registered, by state.");
    for (state, n) in [
        ("healthy", counts.healthy),
        ("warning", counts.warning),
        ("failed", counts.failed),
        ("paused", counts.paused),
    ] {
        sample(&mut out, "heartbeat_monitor_sessions", Some(("state", state)), n as u64);
    }
    family(&mut out, "heartbeat_monitor_beats_received_total", "counter", "Beats taken, by transport.");
    for (transport, n) in
        [("http", get(&c.beats_http)), ("ping", get(&c.beats_ping)), ("udp", get(&c.beats_udp))]
    {
        sample(&mut out, "heartbeat_monitor_beats_received_total", Some(("transport", transport)), n);
    }
    family(
        &mut out,
        "heartbeat_monitor_beats_unknown_total",
        "counter",
        "Beats for sessions not registered, dropped.",
    );
    for (transport, n) in [("http", get(&c.unknown_http)), ("udp", get(&c.unknown_udp))] {
        sample(&mut out, "heartbeat_monitor_beats_unknown_total", Some(("transport", transport)), n);
    }
    family(&mut out, "heartbeat_monitor_udp_datagrams_total", "counter", "UDP datagrams received.");
    sample(&mut out, "heartbeat_monitor_udp_datagrams_total", None, get(&c.datagrams));
    family(
        &mut out,
        "heartbeat_monitor_udp_dropped_total",
        "counter",
        "UDP datagrams dropped whole, by reason.",
    );
    for (reason, n) in
        [("malformed", get(&c.datagrams_malformed)), ("unauthorized", get(&c.datagrams_unauthorized))]
    {
        sample(&mut out, "heartbeat_monitor_udp_dropped_total", Some(("reason", reason)), n);
    }
    family(
        &mut out,
        "heartbeat_monitor_http_unauthorized_total",
        "counter",
        "HTTP requests without the token.",
    );
    sample(&mut out, "heartbeat_monitor_http_unauthorized_total", None, get(&c.unauthorized_http));
    family(
        &mut out,
        "heartbeat_monitor_registrations_refused_total",
        "counter",
        "Registrations refused because the monitor was full (507).",
    );
    sample(&mut out, "heartbeat_monitor_registrations_refused_total", None, get(&c.refused_full));
    family(&mut out, "heartbeat_monitor_events_total", "counter", "Monitor events, by kind.");
    for (kind, n) in [
        ("warning", get(&c.events_warning)),
        ("recovered", get(&c.events_recovered)),
        ("timed_out", get(&c.events_timed_out)),
        ("failed", get(&c.events_failed)),
        ("removed", get(&c.events_removed)),
    ] {
        sample(&mut out, "heartbeat_monitor_events_total", Some(("kind", kind)), n);
    }
    let h = &shared.hooks;
    family(&mut out, "heartbeat_monitor_hooks_total", "counter", "Hooks, by outcome.");
    for (outcome, n) in [
        ("run", get(&h.run)),
        ("failed", get(&h.failed)),
        ("timed_out", get(&h.timed_out)),
        ("dropped", get(&h.dropped)),
    ] {
        sample(&mut out, "heartbeat_monitor_hooks_total", Some(("outcome", outcome)), n);
    }
    let streams = {
        let mut streams = shared.streams.lock();
        streams.retain(crate::http::StreamSink::is_open);
        streams.len()
    };
    family(
        &mut out,
        "heartbeat_monitor_walks_refused_total",
        "counter",
        "Session listings and scrapes refused (503) for want of budget.",
    );
    sample(&mut out, "heartbeat_monitor_walks_refused_total", None, get(&c.walks_refused));
    family(
        &mut out,
        "heartbeat_monitor_events_dropped_total",
        "counter",
        "Events the event thread had no room for: no hook ran and no stream got them.",
    );
    sample(&mut out, "heartbeat_monitor_events_dropped_total", None, shared.monitor.events_dropped());
    family(&mut out, "heartbeat_monitor_event_streams", "gauge", "Open /events streams.");
    sample(&mut out, "heartbeat_monitor_event_streams", None, streams as u64);
    family(
        &mut out,
        "heartbeat_monitor_state_saves_failed_total",
        "counter",
        "State file writes that failed.",
    );
    sample(&mut out, "heartbeat_monitor_state_saves_failed_total", None, get(&c.saves_failed));
    if let Some(http) = shared.http.get().and_then(std::sync::Weak::upgrade) {
        http.counters().prometheus(&mut out, "heartbeat_monitor");
    }
    if let Some(presence) = shared.etcd.get() {
        crate::etcd::report::prometheus(&mut out, &presence.status());
    }
    Response::new(200, PROMETHEUS, out)
}
