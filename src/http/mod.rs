//! One HTTP/1.1 front of our own, on mio: a single event-loop thread owns
//! the listener and every connection, parses requests with `httparse` and
//! hands each to a [`Handler`]. No thread per connection; every resource a
//! client can grow is bounded by an [`HttpConfig`] field.
//!
//! | what a client can grow | bound (default) | past it |
//! |---|---|---|
//! | connections | `max_connections` (1024) | accepted and closed at once, counted |
//! | request line + headers | `max_head` (8 KiB) | `431`, closed |
//! | body | `max_body` (64 KiB), by `Content-Length` only | `413`, closed, the body unread |
//! | time to send one request | `read_deadline` (10 s) | `408` (or silence on a used connection), closed |
//! | time to take queued output | `write_deadline` (10 s) | closed |
//! | time between keep-alive requests | `idle_timeout` (60 s) | closed |
//! | a stream's queue | `max_stream_queue` (256 KiB) | the client dropped, the sink closed |
//! | output per connection | one response: pipelined requests wait until it is written | not read meanwhile |
//!
//! Before a handler sees a request, the server checks that a browser's page
//! did not send it: a `Host` that is not one of the server's own (its IP
//! addresses, `localhost`, [`HttpConfig::allow_hosts`]) is refused `403`,
//! which stops DNS rebinding; so is a request that changes state
//! ([`Handler::changes_state`]) with a `Sec-Fetch-Site` of `cross-site` or
//! `same-site`, or an `Origin` that is not the request's own. Clients that
//! send no `Origin` and no `Sec-Fetch-Site` (curl, scripts, probes) are
//! served. No CORS headers are ever sent: a page of another origin cannot
//! read an answer.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use heartbeat::http::{HttpConfig, HttpServer, Reply, Request, Response};
//!
//! let server = HttpServer::start(
//!     HttpConfig::default(),
//!     Arc::new(|request: &Request<'_>| -> Reply {
//!         match request.path() {
//!             "/hello" => Response::new(200, "text/plain", "hi\n").into(),
//!             path => Response::error(404, &format!("no such endpoint: {path}")).into(),
//!         }
//!     }),
//! )?;
//! let mut client = std::net::TcpStream::connect(server.local_addr())?;
//! client.write_all(b"GET /hello HTTP/1.0\r\n\r\n")?;
//! let mut answer = String::new();
//! client.read_to_string(&mut answer)?;
//! assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nhi\n"));
//! server.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) mod admit;
mod message;
pub mod metrics;
pub(crate) mod server;
mod stream;

pub use admit::check_host_name;
pub use message::{Reply, Request, Response};
pub use server::HttpServer;
pub use stream::StreamSink;

/// Where an [`HttpServer`] listens and what it lets one client cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The address to listen on. Default `127.0.0.1:0` (any free port).
    pub listen: SocketAddr,
    /// Connections open at once. Default 1024; beyond it new connections are
    /// accepted and closed at once (counted in `refused_over_limit`).
    pub max_connections: usize,
    /// Request line and headers, in bytes. Default 8 KiB; beyond it `431`
    /// and the connection closes.
    pub max_head: usize,
    /// A request's body, by its `Content-Length`. Default 64 KiB; beyond it
    /// `413` and the connection closes without reading the body.
    pub max_body: usize,
    /// From a request's first byte to its last. Default 10 s; a dribbling
    /// request is closed (`408` first if nothing was answered yet on the
    /// connection).
    pub read_deadline: Duration,
    /// Queued output not drained within this closes the connection. Default 10 s.
    pub write_deadline: Duration,
    /// A keep-alive connection with no request in progress for this long
    /// is closed. Default 60 s.
    pub idle_timeout: Duration,
    /// Bytes queued on one streaming response before that client is
    /// dropped. Default 256 KiB.
    pub max_stream_queue: usize,
    /// After `accept` fails for want of descriptors or memory (`EMFILE`,
    /// `ENFILE`, `ENOBUFS`, `ENOMEM`), stop accepting for this long while
    /// serving the open connections, then retry. Default 100 ms.
    pub accept_backoff: Duration,
    /// Host names the server answers for, besides its IP addresses and
    /// `localhost`, which it always answers for: a request whose `Host`
    /// names anything else gets `403` (so a page whose name was rebound to
    /// this server's address cannot read it). Names, without a port (ports
    /// are not compared: a port map or a proxy may change them), compared
    /// without regard to case; each is checked by [`check_host_name`] at
    /// start. Name the ones clients use: a reverse proxy's public name, a
    /// container's or a Kubernetes service's. Default: none.
    pub allow_hosts: Vec<String>,
    /// Answer whatever `Host` a request names. Default `false`; only behind
    /// a proxy that checks `Host` itself.
    pub allow_any_host: bool,
    /// Take requests that change state ([`Handler::changes_state`]) from
    /// other sites' pages too (an `Origin` not the request's own, a
    /// `Sec-Fetch-Site` of `cross-site` or `same-site`). Default `false`:
    /// `403`. Any web page the user opens may then send them.
    pub allow_cross_site: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: 1024,
            max_head: 8 * 1024,
            max_body: 64 * 1024,
            read_deadline: Duration::from_secs(10),
            write_deadline: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_stream_queue: 256 * 1024,
            accept_backoff: Duration::from_millis(100),
            allow_hosts: Vec::new(),
            allow_any_host: false,
            allow_cross_site: false,
        }
    }
}

/// Answers requests. Runs on the event-loop thread, so it must not block:
/// whatever takes time belongs to a thread of your own (answer with a
/// stream, or with what is known now). A panic is caught and answered `500`.
///
/// Closures `Fn(&Request<'_>) -> Reply` are handlers.
pub trait Handler: Send + Sync + 'static {
    /// The reply to one request.
    fn handle(&self, request: &Request<'_>) -> Reply;

    /// Whether `request` changes state: the server refuses such a request
    /// (`403`, before [`handle`](Handler::handle)) when another site's page
    /// sent it, unless [`HttpConfig::allow_cross_site`]. Asked only about
    /// requests that carry an `Origin` or `Sec-Fetch-Site` of another site.
    /// Default: every method but `GET` and `HEAD`; a handler whose `GET`s
    /// change something (a ping that an `<img>` could send) says so here.
    fn changes_state(&self, request: &Request<'_>) -> bool {
        !matches!(request.method(), "GET" | "HEAD")
    }
}

impl<F: Fn(&Request<'_>) -> Reply + Send + Sync + 'static> Handler for F {
    fn handle(&self, request: &Request<'_>) -> Reply {
        self(request)
    }
}

/// What an [`HttpServer`] has done, a snapshot ([`HttpServer::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounters {
    /// Connections taken into service.
    pub accepted: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused_over_limit: u64,
    /// Connections open now.
    pub open: u64,
    /// Requests handed to the handler.
    pub requests: u64,
    /// Requests the server answered itself: `400`, `413`, `431`, `408`.
    pub bad_requests: u64,
    /// Requests refused `403` before the handler: a `Host` not the
    /// server's, or a state change from another site's page.
    pub forbidden: u64,
    /// Connections closed by a read, idle or write deadline.
    pub timed_out: u64,
    /// Streaming clients dropped because their queue passed `max_stream_queue`.
    pub streams_dropped: u64,
    /// `accept` calls that failed (out of descriptors, say).
    pub accept_errors: u64,
}

impl HttpCounters {
    /// Appends these counters to a `/metrics` page in the Prometheus text
    /// format: `# HELP` and `# TYPE` lines, then a sample, for each of
    /// `{prefix}_http_connections_accepted_total`,
    /// `{prefix}_http_connections_refused_total`, `{prefix}_http_connections_open`,
    /// `{prefix}_http_requests_total`, `{prefix}_http_bad_requests_total`,
    /// `{prefix}_http_forbidden_total`,
    /// `{prefix}_http_timeouts_total`, `{prefix}_http_streams_dropped_total`
    /// and `{prefix}_http_accept_errors_total`.
    pub fn prometheus(&self, out: &mut String, prefix: &str) {
        let c = self;
        for (name, kind, help, value) in [
            ("connections_accepted_total", "counter", "HTTP connections taken into service.", c.accepted),
            (
                "connections_refused_total",
                "counter",
                "HTTP connections closed at once because the connection limit was reached.",
                c.refused_over_limit,
            ),
            ("connections_open", "gauge", "HTTP connections open now.", c.open),
            ("requests_total", "counter", "HTTP requests handed to the handler.", c.requests),
            (
                "bad_requests_total",
                "counter",
                "HTTP requests the server refused itself (400, 413, 431, 408).",
                c.bad_requests,
            ),
            (
                "forbidden_total",
                "counter",
                "HTTP requests refused (403) for their Host or as a state change from another site's page.",
                c.forbidden,
            ),
            (
                "timeouts_total",
                "counter",
                "HTTP connections closed by a read, idle or write deadline.",
                c.timed_out,
            ),
            (
                "streams_dropped_total",
                "counter",
                "Streaming HTTP clients dropped because they did not keep up.",
                c.streams_dropped,
            ),
            ("accept_errors_total", "counter", "Failed accept calls on the HTTP listener.", c.accept_errors),
        ] {
            let name = format!("{prefix}_http_{name}");
            metrics::family(out, &name, kind, help);
            metrics::sample(out, &name, None, value);
        }
    }
}

/// The live counters behind [`HttpCounters`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    refused_over_limit: AtomicU64,
    open: AtomicU64,
    requests: AtomicU64,
    bad_requests: AtomicU64,
    forbidden: AtomicU64,
    timed_out: AtomicU64,
    streams_dropped: AtomicU64,
    accept_errors: AtomicU64,
}

impl Counters {
    fn add(cell: &AtomicU64) {
        cell.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HttpCounters {
        let get = |cell: &AtomicU64| cell.load(Ordering::Relaxed);
        HttpCounters {
            accepted: get(&self.accepted),
            refused_over_limit: get(&self.refused_over_limit),
            open: get(&self.open),
            requests: get(&self.requests),
            bad_requests: get(&self.bad_requests),
            forbidden: get(&self.forbidden),
            timed_out: get(&self.timed_out),
            streams_dropped: get(&self.streams_dropped),
            accept_errors: get(&self.accept_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_as_prometheus_text() {
        let counters = HttpCounters { accepted: 3, open: 1, timed_out: 2, ..HttpCounters::default() };
        let mut out = String::new();
        counters.prometheus(&mut out, "x");
        for line in [
            "# TYPE x_http_connections_accepted_total counter",
            "x_http_connections_accepted_total 3",
            "# TYPE x_http_connections_open gauge",
            "x_http_connections_open 1",
            "x_http_timeouts_total 2",
            "x_http_accept_errors_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 9);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = HttpConfig::default();
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!((c.max_connections, c.max_head, c.max_body), (1024, 8192, 65536));
        assert_eq!((c.max_stream_queue, c.accept_backoff), (262_144, Duration::from_millis(100)));
        assert!(c.allow_hosts.is_empty() && !c.allow_any_host && !c.allow_cross_site, "safe by default");
    }
}
