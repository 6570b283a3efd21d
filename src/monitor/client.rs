//! `HeartbeatClient`: a thread that beats one session, on a [`Monitor`] in
//! this process or on a `heartbeat monitor` service over HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::{Monitor, valid_session_id};
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::ticker::Ticker;

/// The interval a [`HeartbeatClient`] beats at unless told otherwise.
pub const DEFAULT_CLIENT_INTERVAL: Duration = Duration::from_secs(10);

/// How long one HTTP request of a remote [`HeartbeatClient`] may take,
/// unless [`RemoteOptions::request_timeout`] says otherwise: 5 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Options for [`HeartbeatClient::remote_with`].
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// The agent type to register the session with, when the monitor does
    /// not know it (sent as `{"agent_type": ...}`); `None`: the service's default.
    pub agent_type: Option<String>,
    /// Sent as `Authorization: Bearer <token>`. Printable ASCII.
    pub token: Option<String>,
    /// The most one HTTP request may take, from connecting to the end of
    /// the answer. Default [`DEFAULT_REQUEST_TIMEOUT`] (5 s).
    pub request_timeout: Option<Duration>,
}

/// Beats one session every interval on a thread of its own, from
/// [`start`](Self::start) (a [`Monitor`] in this process) or
/// [`remote`](Self::remote) (a `heartbeat monitor` service over HTTP) until
/// [`stop`](Self::stop) or drop.
///
/// ```
/// use std::time::Duration;
/// use heartbeat::{HeartbeatClient, Monitor};
///
/// let monitor = Monitor::builder().build()?;
/// monitor.register("agent-7", "crawler");
/// let client = HeartbeatClient::start(&monitor, "agent-7", Duration::from_secs(10))?;
/// assert!(monitor.status("agent-7").unwrap().is_healthy);
/// drop(client); // stops beating
/// # Ok::<(), heartbeat::Error>(())
/// ```
#[derive(Debug)]
pub struct HeartbeatClient {
    session_id: String,
    beats: Arc<AtomicU64>,
    /// Beats tried, accepted or not (read by tests).
    #[cfg_attr(not(test), allow(dead_code))]
    attempts: Arc<AtomicU64>,
    worker: Option<(Sender<()>, JoinHandle<()>)>,
}

/// Where beats go.
enum Target {
    Local(Monitor),
    Remote(Remote),
}

/// A `heartbeat monitor` service, and what to send it.
struct Remote {
    agent: ureq::Agent,
    /// `{url}/sessions/{id}/beat`, for POST.
    beat_url: String,
    /// `{url}/sessions/{id}`, for PUT (register).
    session_url: String,
    /// The PUT's JSON body, if there is an agent type.
    register_body: Option<String>,
    /// `Bearer <token>`.
    authorization: Option<String>,
}

/// How one remote beat went.
enum Outcome {
    Accepted,
    Failed(String),
    /// `stop` was called between two requests.
    Stopping,
}

impl HeartbeatClient {
    /// Starts beating `session_id` on `monitor`: once now, then every
    /// `interval` on the monitor's clock. A beat for a session the monitor
    /// does not know (unregistered, timed out) is logged and beating goes on.
    /// A zero `interval` is refused.
    pub fn start(monitor: &Monitor, session_id: impl Into<String>, interval: Duration) -> Result<Self> {
        check_interval(interval)?;
        let clock = monitor.clock().clone();
        Self::spawn(Target::Local(monitor.clone()), session_id.into(), interval, clock)
    }

    /// Beats `session_id` on a `heartbeat monitor` service at `url` (e.g.
    /// `"http://127.0.0.1:9333"`) over HTTP: once now, then every
    /// `interval`. [`remote_with`](Self::remote_with) with default options.
    pub fn remote(url: &str, session_id: impl Into<String>, interval: Duration) -> Result<Self> {
        Self::remote_with(url, session_id, interval, RemoteOptions::default())
    }

    /// Beats `session_id` on a `heartbeat monitor` service at `url` over
    /// HTTP, once now and then every `interval`: `POST {url}/sessions/{id}/beat`;
    /// on a 404 it registers the session with `PUT {url}/sessions/{id}` (a
    /// JSON body `{"agent_type": ...}` when one is given) and beats again.
    ///
    /// Plain `http://` only: this build has no TLS, and an `https://` url is
    /// refused. The session id must pass [`valid_session_id`] (so it needs
    /// no escaping in the path). No proxy is used, whatever the environment
    /// says, and redirects are not followed.
    ///
    /// Failures (connection refused, timeouts, answers other than 2xx) are
    /// logged, a warning for the first of a streak and at debug level after,
    /// and the beat is tried again at the next tick; they never end the
    /// thread. Each request takes at most `request_timeout` (5 s by default),
    /// and a stop is noticed between requests, so [`stop`](Self::stop)
    /// returns within about one `request_timeout`.
    pub fn remote_with(
        url: &str,
        session_id: impl Into<String>,
        interval: Duration,
        options: RemoteOptions,
    ) -> Result<Self> {
        check_interval(interval)?;
        let session_id = session_id.into();
        if !valid_session_id(&session_id) {
            return Err(Error::InvalidConfig(format!(
                "session id {session_id:?} must be 1 to 128 bytes of A-Z a-z 0-9 . _ : -"
            )));
        }
        let base = check_url(url)?;
        let timeout = options.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if timeout.is_zero() {
            return Err(Error::InvalidConfig("request_timeout must be above zero, got 0s".into()));
        }
        if let Some(token) = &options.token
            && (token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::InvalidConfig(
                "token must be non-empty printable ASCII without spaces".into(),
            ));
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("heartbeat/", env!("CARGO_PKG_VERSION")))
            .build();
        let remote = Remote {
            agent: config.into(),
            beat_url: format!("{base}/sessions/{session_id}/beat"),
            session_url: format!("{base}/sessions/{session_id}"),
            register_body: options.agent_type.map(|a| serde_json::json!({ "agent_type": a }).to_string()),
            authorization: options.token.map(|t| format!("Bearer {t}")),
        };
        Self::spawn(Target::Remote(remote), session_id, interval, Arc::new(SystemClock))
    }

    fn spawn(target: Target, session_id: String, interval: Duration, clock: SharedClock) -> Result<Self> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let (beats, attempts) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (id, counter, tries) = (session_id.clone(), beats.clone(), attempts.clone());
        let mut ticker = Ticker::new(clock, interval, Duration::ZERO);
        let handle = thread::Builder::new().name("heartbeat-client".into()).spawn(move || {
            // Whether the last beat failed: warn once per streak of failures.
            let mut failing = false;
            loop {
                if ticker.due() {
                    let outcome = target.beat(&id, &stop_rx);
                    tries.fetch_add(1, Ordering::Relaxed);
                    match outcome {
                        Outcome::Accepted => {
                            counter.fetch_add(1, Ordering::Relaxed);
                            if failing {
                                log::info!("heartbeat client: session {id} beats again");
                            }
                            failing = false;
                        }
                        Outcome::Failed(why) if failing => log::debug!("heartbeat client: {why}"),
                        Outcome::Failed(why) => {
                            log::warn!("heartbeat client: {why} (retrying every {interval:?})");
                            failing = true;
                        }
                        Outcome::Stopping => break,
                    }
                }
                if !ticker.wait(&stop_rx) {
                    break;
                }
            }
        })?;
        Ok(HeartbeatClient { session_id, beats, attempts, worker: Some((stop_tx, handle)) })
    }

    /// The session this client beats.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Beats the monitor accepted so far: a local monitor that knew the
    /// session, or a 2xx answer to a remote beat.
    pub fn beats_sent(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Stops beating and joins the thread; idempotent. Prompt for a local
    /// monitor; for a remote one, it may wait for the request in flight,
    /// at most about its `request_timeout`.
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            let _ = stop.try_send(());
            if handle.join().is_err() {
                log::error!("heartbeat client thread panicked");
            }
        }
    }
}

impl Drop for HeartbeatClient {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Target {
    fn beat(&self, id: &str, stop: &Receiver<()>) -> Outcome {
        match self {
            Target::Local(monitor) if monitor.beat(id) => Outcome::Accepted,
            Target::Local(_) => Outcome::Failed(format!("session {id} is not registered")),
            Target::Remote(remote) => remote.beat(stop),
        }
    }
}

impl Remote {
    /// POST the beat; on 404 PUT the session and POST again. Looks at
    /// `stop` (without taking its message) between requests.
    fn beat(&self, stop: &Receiver<()>) -> Outcome {
        let stopping = || !stop.is_empty();
        match self.send("POST", &self.beat_url, None) {
            Ok(status) if is_success(status) => return Outcome::Accepted,
            Ok(404) => {}
            Ok(status) => return Outcome::Failed(format!("POST {}: HTTP {status}", self.beat_url)),
            Err(why) => return Outcome::Failed(why),
        }
        if stopping() {
            return Outcome::Stopping;
        }
        match self.send("PUT", &self.session_url, self.register_body.as_deref()) {
            Ok(status) if is_success(status) => {}
            Ok(status) => return Outcome::Failed(format!("PUT {}: HTTP {status}", self.session_url)),
            Err(why) => return Outcome::Failed(why),
        }
        if stopping() {
            return Outcome::Stopping;
        }
        match self.send("POST", &self.beat_url, None) {
            Ok(status) if is_success(status) => Outcome::Accepted,
            Ok(status) => Outcome::Failed(format!("POST {} after registering: HTTP {status}", self.beat_url)),
            Err(why) => Outcome::Failed(why),
        }
    }

    /// One request; the answer's status, or what went wrong.
    fn send(&self, method: &str, url: &str, json: Option<&str>) -> std::result::Result<u16, String> {
        let mut request = match method {
            "PUT" => self.agent.put(url),
            _ => self.agent.post(url),
        };
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth.as_str());
        }
        let sent = match json {
            Some(body) => request.header("Content-Type", "application/json").send(body),
            None => request.send_empty(),
        };
        match sent {
            // The body is dropped unread: the status is all a beat needs.
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => Err(format!("{method} {url}: {e}")),
        }
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn check_interval(interval: Duration) -> Result<()> {
    if interval.is_zero() {
        return Err(Error::InvalidConfig("a heartbeat client's interval must be positive".into()));
    }
    Ok(())
}

/// `url` without a trailing `/`, if it is a plain `http://host[:port][/path]`.
fn check_url(url: &str) -> Result<&str> {
    let bad = |why: &str| Err(Error::InvalidConfig(format!("monitor url {url:?}: {why}")));
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return bad("https is not supported (this build has no TLS): use http://");
        }
        return bad("must start with http://");
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return bad("has no host");
    }
    if url.bytes().any(|b| !b.is_ascii_graphic() || matches!(b, b'?' | b'#')) {
        return bad("must be printable ASCII without spaces, query or fragment");
    }
    if url.parse::<ureq::http::Uri>().is_err() {
        return bad("is not a valid URL");
    }
    Ok(url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn urls_are_plain_http_with_a_host() {
        assert_eq!(check_url("http://127.0.0.1:9333").unwrap(), "http://127.0.0.1:9333");
        assert_eq!(check_url("http://monitor.lan:9333/hb/").unwrap(), "http://monitor.lan:9333/hb");
        let err = check_url("https://monitor.lan").unwrap_err().to_string();
        assert!(err.contains("https is not supported"), "{err}");
        for bad in ["", "monitor.lan:9333", "ftp://x", "http://", "http:///x", "http://a b", "http://x/?q=1"]
        {
            assert!(matches!(check_url(bad), Err(Error::InvalidConfig(_))), "{bad:?} accepted");
        }
    }

    #[test]
    fn remote_refuses_bad_ids_intervals_timeouts_and_tokens() {
        let url = "http://127.0.0.1:9";
        let second = Duration::from_secs(1);
        for id in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(HeartbeatClient::remote(url, id, second).is_err(), "{id:?} accepted");
        }
        assert!(HeartbeatClient::remote(url, "s", Duration::ZERO).is_err());
        let opts = |o: RemoteOptions| HeartbeatClient::remote_with(url, "s", second, o);
        assert!(opts(RemoteOptions { request_timeout: Some(Duration::ZERO), ..Default::default() }).is_err());
        assert!(opts(RemoteOptions { token: Some("a b".into()), ..Default::default() }).is_err());
        assert!(opts(RemoteOptions { token: Some(String::new()), ..Default::default() }).is_err());
    }

    /// A stand-in for the service on the crate's own HTTP front: 404 to
    /// beats until the session is PUT.
    #[test]
    fn a_remote_client_registers_on_404_then_beats() {
        use std::sync::atomic::{AtomicBool, Ordering};

        use crate::http::{HttpConfig, HttpServer, Reply, Request, Response};

        let (tx, seen) = crossbeam_channel::unbounded();
        let registered = AtomicBool::new(false);
        let handler = move |request: &Request<'_>| -> Reply {
            let auth = request.header("authorization").map(|h| String::from_utf8_lossy(h).into_owned());
            let body = String::from_utf8_lossy(request.body());
            tx.send(format!("{} {} {auth:?} {body}", request.method(), request.path())).unwrap();
            let status = match request.method() {
                "PUT" => {
                    registered.store(true, Ordering::SeqCst);
                    201
                }
                _ if registered.load(Ordering::SeqCst) => 204,
                _ => 404,
            };
            Response::empty(status).into()
        };
        let config = HttpConfig { listen: "127.0.0.1:0".parse().unwrap(), ..HttpConfig::default() };
        let server = HttpServer::start(config, Arc::new(handler)).unwrap();
        let options = RemoteOptions {
            agent_type: Some("tester".into()),
            token: Some("s3cret".into()),
            request_timeout: None,
        };
        let url = format!("http://{}/", server.local_addr());
        let mut client =
            HeartbeatClient::remote_with(&url, "agent-7", Duration::from_millis(10), options).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.beats_sent() < 3 {
            assert!(Instant::now() < deadline, "three beats not accepted within 10 s");
            thread::yield_now();
        }
        client.stop();
        let lines: Vec<String> = seen.try_iter().take(4).collect();
        let auth = r#"Some("Bearer s3cret")"#;
        assert_eq!(
            lines,
            [
                format!("POST /sessions/agent-7/beat {auth} "),
                format!(r#"PUT /sessions/agent-7 {auth} {{"agent_type":"tester"}}"#),
                format!("POST /sessions/agent-7/beat {auth} "),
                format!("POST /sessions/agent-7/beat {auth} "),
            ]
        );
        server.stop();
    }

    #[test]
    fn a_client_of_a_closed_port_keeps_running_counts_nothing_and_stops_promptly() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let options = RemoteOptions {
            agent_type: Some("tester".into()),
            token: Some("secret".into()),
            request_timeout: Some(Duration::from_secs(2)),
        };
        let mut client = HeartbeatClient::remote_with(
            &format!("http://127.0.0.1:{port}"),
            "closed-port",
            Duration::from_millis(10),
            options,
        )
        .unwrap();
        assert_eq!(client.session_id(), "closed-port");
        // Three refused beats (10 ms apart): the thread goes on.
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.attempts.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "no three attempts within 10 s");
            thread::yield_now();
        }
        assert!(client.worker.as_ref().is_some_and(|(_, h)| !h.is_finished()), "the client thread ended");
        assert_eq!(client.beats_sent(), 0);
        let t = Instant::now();
        client.stop();
        client.stop();
        assert!(t.elapsed() < Duration::from_secs(3), "stop took {:?}", t.elapsed());
    }
}
