//! The HTTP API: JSON in and out, every error a JSON body that says what was
//! wrong. Runs on the HTTP front's event-loop thread, so every handler here
//! is short: a shard lock, a lookup, a few hundred bytes of JSON.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Shared;
use crate::http::metrics::{CONTENT_TYPE as PROMETHEUS, family, sample};
use crate::http::{Handler, Reply, Request, Response};
use crate::monitor::{Detector, PhiConfig, RegisterOptions, SessionStatus, valid_session_id};
use crate::state::format_timestamp;

/// `GET /sessions` answers at most this many sessions at a time.
pub(crate) const MAX_PAGE: usize = 10_000;
/// ... and this many when not asked.
pub(crate) const DEFAULT_PAGE: usize = 1_000;
/// Agent types sent to the API are at most this long.
const MAX_AGENT_TYPE: usize = 128;
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
            let presented = request.header("authorization").and_then(|h| h.strip_prefix(b"Bearer "));
            if !shared.token_ok(presented) {
                shared.counters.unauthorized_http.fetch_add(1, Ordering::Relaxed);
                return Response::error(401, "this monitor needs Authorization: Bearer <token>")
                    .header("WWW-Authenticate", "Bearer")
                    .into();
            }
        }
        route(&self.shared, request)
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
        (Some("metrics"), None, None, None) if get => metrics(shared),
        (Some("metrics"), None, None, None) => not_allowed(READ),
        (Some("events"), None, None, None) if get => return events(shared),
        (Some("events"), None, None, None) => not_allowed(READ),
        (Some("sessions"), None, None, None) if get => list(shared, request.query()),
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
                ("GET" | "HEAD" | "POST", Ok(id)) => ping(shared, id, action),
                _ => not_allowed("GET, HEAD, POST"),
            }
        }
        _ => {
            Response::error(404, "no such resource: the API is /sessions, /ping, /events, /health, /metrics")
        }
    };
    reply.into()
}

fn not_allowed(allow: &'static str) -> Response {
    Response::error(405, &format!("method not allowed here; allowed: {allow}")).header("Allow", allow)
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

/// The body of `PUT /sessions/{id}`; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    agent_type: Option<String>,
    timeout_sec: Option<f64>,
    max_missed: Option<u32>,
    grace_sec: Option<f64>,
    detector: Option<DetectorName>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DetectorName {
    Fixed,
    Phi,
}

fn seconds(field: &str, value: Option<f64>) -> Result<Option<Duration>, Response> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                Response::error(
                    400,
                    &format!("{field} must be a non-negative, finite number of seconds, not {s}"),
                )
            })
        })
        .transpose()
}

fn register(shared: &Shared, id: &str, body: &[u8]) -> Response {
    let body: RegisterBody = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterBody::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(body) => body,
            Err(e) => return Response::error(400, &format!("bad registration body: {e}")),
        }
    };
    let agent_type = body.agent_type.as_deref().unwrap_or(DEFAULT_AGENT_TYPE);
    if agent_type.is_empty() || agent_type.len() > MAX_AGENT_TYPE || agent_type.chars().any(char::is_control)
    {
        return Response::error(
            400,
            &format!("agent_type must be 1 to {MAX_AGENT_TYPE} bytes without control characters"),
        );
    }
    let detector = body.detector.map(|d| match (d, shared.monitor.detector()) {
        (DetectorName::Fixed, _) => Detector::Fixed,
        (DetectorName::Phi, Detector::Phi(config)) => Detector::Phi(config),
        (DetectorName::Phi, Detector::Fixed) => Detector::Phi(PhiConfig::default()),
    });
    let options = match (seconds("timeout_sec", body.timeout_sec), seconds("grace_sec", body.grace_sec)) {
        (Ok(timeout), Ok(grace)) => {
            RegisterOptions { timeout, grace, max_missed_beats: body.max_missed, detector }
        }
        (Err(bad), _) | (_, Err(bad)) => return bad,
    };
    let exists = shared.monitor.status(id).is_some();
    if !exists && shared.monitor.registered_count() >= shared.max_sessions {
        shared.counters.refused_full.fetch_add(1, Ordering::Relaxed);
        return Response::error(
            507,
            &format!("the monitor holds its maximum of {} sessions", shared.max_sessions),
        );
    }
    if let Err(e) = shared.monitor.register_with(id, agent_type, options) {
        return Response::error(400, &e.to_string());
    }
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

/// `/ping/{id}`, `/ping/{id}/fail`, `/ping/{id}/start`: the healthchecks.io
/// habit. The session is registered with the server's defaults on first use
/// (201), beaten after (200). Success answers have an empty body, so that a
/// cron job's `curl -fsS` prints nothing (cron mails what a job prints).
fn ping(shared: &Shared, id: &str, action: Option<&str>) -> Response {
    let monitor = &shared.monitor;
    let mut created = false;
    if monitor.beat(id) {
        shared.counters.beats_ping.fetch_add(1, Ordering::Relaxed);
    } else {
        if monitor.registered_count() >= shared.max_sessions {
            shared.counters.refused_full.fetch_add(1, Ordering::Relaxed);
            return Response::error(
                507,
                &format!("the monitor holds its maximum of {} sessions", shared.max_sessions),
            );
        }
        monitor.register(id, DEFAULT_AGENT_TYPE);
        shared.counters.beats_ping.fetch_add(1, Ordering::Relaxed);
        created = true;
    }
    match action {
        Some("fail") => {
            shared.runs.lock().remove(id);
            monitor.fail(id);
        }
        Some("start") => {
            shared.runs.lock().insert(id.into(), monitor.clock().wall());
        }
        _ => {
            shared.runs.lock().remove(id);
        }
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
    Response::new(200, PROMETHEUS, out)
}
