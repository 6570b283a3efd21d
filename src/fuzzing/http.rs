//! `http`: bytes as received on one connection of the monitor service,
//! parsed by the HTTP front's request parser (no sockets) and routed by the
//! monitor's API against a monitor on a manual clock. Every request is
//! parsed or refused with a short error; every answer is well-formed
//! (a JSON body that parses, `{"error": ...}` for errors); what the API
//! says it did, the monitor shows; nothing outgrows its limits.
//!
//! Requests pass the server's admission first, as on a socket: a `Host`
//! other than an IP address, `localhost` or `x` (the corpus's), or a state
//! change with another site's `Origin` or `Sec-Fetch-Site`, is refused
//! `403` before the API sees it.
//!
//! Input: one byte of settings (bit 0: a bearer token is required), then
//! the bytes of the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;

use crate::clock::ManualClock;
use crate::http::admit::Admission;
use crate::http::server::{Outcome, parse_request};
use crate::http::{Handler, HttpConfig, Reply, Request, Response};
use crate::monitor::{Monitor, valid_session_id};
use crate::service::Shared;
use crate::service::api::Api;

/// Small limits, so the fuzzer reaches them.
const MAX_HEAD: usize = 1024;
const MAX_BODY: usize = 512;
const MAX_SESSIONS: usize = 8;
/// The token the settings byte may require.
const TOKEN: &str = "s3cret";
/// Requests handled per input at most.
const MAX_REQUESTS: usize = 64;

pub(crate) fn check(data: &[u8]) {
    let Some((&settings, stream)) = data.split_first() else { return };
    let monitor = Monitor::builder().clock(ManualClock::new()).build().expect("the defaults are valid");
    let mut shared = Shared::for_tests(monitor);
    shared.max_sessions = MAX_SESSIONS;
    if settings & 1 == 1 {
        shared.token = Some(TOKEN.as_bytes().into());
    }
    let shared = Arc::new(shared);
    let api = Api::new(shared.clone());
    let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
    let config = HttpConfig { allow_hosts: vec!["x".into()], ..HttpConfig::default() };
    let admission = Admission::new(&config).expect("x is a host name");

    let mut input = stream.to_vec();
    let mut continue_sent = false;
    for _ in 0..MAX_REQUESTS {
        let admit = (&admission, |request: &Request<'_>| api.changes_state(request));
        let outcome = parse_request(&input, (MAX_HEAD, MAX_BODY), continue_sent, peer, admit, |request| {
            let reply = api.handle(request);
            if let Reply::Full(response) = &reply {
                answer(&shared, request, response);
            }
            reply
        });
        match outcome {
            Outcome::NeedMore => break,
            Outcome::Continue => {
                assert!(!continue_sent, "100 Continue twice for one request");
                continue_sent = true;
            }
            Outcome::Refuse(status, message) => {
                assert!(matches!(status, 400 | 413 | 431), "the parser refused with {status}");
                assert!(message.len() <= 512, "a refusal of {} bytes: {message}", message.len());
                break;
            }
            Outcome::Forbidden { consumed, message, .. } => {
                assert!(message.len() <= 512, "a refusal of {} bytes: {message}", message.len());
                assert!(consumed > 0 && consumed <= input.len(), "consumed {consumed} of {}", input.len());
                input.drain(..consumed);
                continue_sent = false;
            }
            Outcome::Handled { consumed, .. } => {
                assert!(consumed > 0 && consumed <= input.len(), "consumed {consumed} of {}", input.len());
                input.drain(..consumed);
                continue_sent = false;
            }
        }
    }
    assert!(shared.monitor.registered_count() <= MAX_SESSIONS, "past --max-sessions");
}

/// One answer of the API: well-formed, and true to the monitor.
fn answer(shared: &Shared, request: &Request<'_>, response: &Response) {
    let status = response.status();
    assert!((200..600).contains(&status), "status {status}");
    let body = response.body();
    if response.content_type() == "application/json" {
        let value: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {}", String::from_utf8_lossy(body)));
        // `/health` while the sweeper is stopped (the path routes as the API does).
        let route = request.path().strip_prefix('/').unwrap_or(request.path());
        let health = route == "health" && status == 503;
        if status >= 400 && !health {
            let message = value.get("error").and_then(Value::as_str);
            let message = message.unwrap_or_else(|| panic!("a {status} without an error message: {value}"));
            assert!(message.len() <= 512, "an error of {} bytes: {message}", message.len());
        }
    }
    if status == 401 {
        assert!(shared.token.is_some(), "401 without a token set");
        return;
    }
    // What the API says it did to a session, the monitor shows.
    let mut parts = request.path().strip_prefix('/').unwrap_or("").split('/');
    let (first, id, action) = (parts.next(), parts.next(), parts.next());
    let Some(id) = id.filter(|id| valid_session_id(id) && parts.next().is_none()) else { return };
    let registered = shared.monitor.status(id).is_some();
    match (request.method(), first, action, status) {
        ("PUT", Some("sessions"), None, 200 | 201) | (_, Some("ping"), _, 200 | 201) => {
            assert!(registered, "{} {} answered {status}, not registered", request.method(), request.path());
        }
        ("DELETE", Some("sessions"), None, 200 | 204) => {
            assert!(!registered, "DELETE {id} answered {status}, still registered");
        }
        ("GET", Some("sessions"), None, 200) => {
            let value: Value = serde_json::from_slice(body).expect("checked above");
            assert_eq!(value["session_id"], id);
            assert!(registered);
        }
        (_, Some("sessions"), None, 404)
        | ("POST", Some("sessions"), Some("beat" | "pause" | "resume" | "fail"), 404) => {
            assert!(
                !registered,
                "{} {} answered 404, but it is registered",
                request.method(),
                request.path()
            );
        }
        _ => {}
    }
}
