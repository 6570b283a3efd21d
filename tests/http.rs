//! The HTTP front as a client meets it: real sockets on 127.0.0.1, every
//! bound pushed past, every wait bounded. Tests that count threads or
//! lower the open-files limit run in a child process of their own (this
//! test binary again, one test, selected by an environment variable).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use heartbeat::http::{HttpConfig, HttpServer, Reply, Request, Response, StreamSink};
use parking_lot::Mutex;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(10);
/// Set in a child process: which child test is to run.
const CHILD: &str = "HEARTBEAT_HTTP_TEST_CHILD";

/// Streams opened by `/events`, for the test to feed.
type Sinks = Arc<Mutex<Vec<StreamSink>>>;

/// `/echo` describes the request, `/big` is 32 MiB, `/panic` panics,
/// `/events` opens a stream.
fn handler(sinks: Sinks) -> Arc<dyn heartbeat::http::Handler> {
    Arc::new(move |request: &Request<'_>| -> Reply {
        match request.path() {
            "/echo" => Response::json(
                200,
                &json!({
                    "method": request.method(),
                    "path": request.path(),
                    "query": request.query(),
                    "x_test": request.header("x-TEST").map(|v| String::from_utf8_lossy(v).into_owned()),
                    "body": String::from_utf8_lossy(request.body()),
                    "peer_is_loopback": request.peer().ip().is_loopback(),
                }),
            )
            .into(),
            "/big" => Response::new(200, "application/octet-stream", vec![b'x'; 32 << 20]).into(),
            "/panic" => panic!("a handler that panics (on purpose, in a test)"),
            "/events" => {
                let sinks = sinks.clone();
                Reply::Stream {
                    content_type: "text/event-stream",
                    open: Box::new(move |sink| sinks.lock().push(sink)),
                }
            }
            path => Response::error(404, &format!("no such endpoint: {path}")).into(),
        }
    })
}

fn start(config: HttpConfig) -> (HttpServer, Sinks) {
    let sinks = Sinks::default();
    (HttpServer::start(config, handler(sinks.clone())).unwrap(), sinks)
}

fn start_default() -> HttpServer {
    start(HttpConfig::default()).0
}

/// A client connection that reads whole responses.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One response: status, head (lower-cased header names kept as sent), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, BOUND).unwrap();
        stream.set_read_timeout(Some(BOUND)).unwrap();
        stream.set_write_timeout(Some(BOUND)).unwrap();
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn get(&mut self, path: &str) -> Answer {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        self.answer(false)
    }

    /// Reads until `buf` holds `n` bytes; `false` at EOF first.
    fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        while self.buf.len() < n {
            match self.stream.read(&mut chunk)? {
                0 => return Ok(false),
                got => self.buf.extend_from_slice(&chunk[..got]),
            }
        }
        Ok(true)
    }

    fn head(&mut self) -> std::io::Result<String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
                return Ok(head[..end].to_owned());
            }
            match self.stream.read(&mut chunk)? {
                0 => return Err(ErrorKind::UnexpectedEof.into()),
                got => self.buf.extend_from_slice(&chunk[..got]),
            }
        }
    }

    fn try_answer(&mut self, head_only: bool) -> std::io::Result<Answer> {
        let head = self.head()?;
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut answer = Answer { status, head, body: Vec::new() };
        if !head_only {
            let len: usize = answer.header("content-length").expect("a Content-Length").parse().unwrap();
            if !self.fill(len)? {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            answer.body = self.buf.drain(..len).collect();
        }
        Ok(answer)
    }

    fn answer(&mut self, head_only: bool) -> Answer {
        self.try_answer(head_only).unwrap()
    }

    /// Whether the server closed the connection (EOF or reset) within the bound.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }
}

/// Waits for `what` within the bound.
fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not happen within {BOUND:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = start_default();
    let mut client = Client::connect(server.local_addr());
    for n in 0..3 {
        client.send(format!("GET /echo?n={n} HTTP/1.1\r\nHost: localhost\r\nX-Test: yes\r\n\r\n").as_bytes());
        let answer = client.answer(false);
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("connection"), Some("keep-alive"));
        assert_eq!(answer.header("server"), Some("heartbeat"));
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let v = answer.json();
        assert_eq!((v["method"].as_str(), v["path"].as_str()), (Some("GET"), Some("/echo")));
        assert_eq!(v["query"], format!("n={n}"));
        assert_eq!(v["x_test"], "yes");
        assert_eq!(v["peer_is_loopback"], true);
    }
    assert_eq!(client.get("/nope").status, 404);
    let c = server.counters();
    assert_eq!((c.accepted, c.open, c.requests, c.bad_requests), (1, 1, 4, 0));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = start_default();
    let mut client = Client::connect(server.local_addr());
    let mut burst = String::new();
    for n in 0..20 {
        burst.push_str(&format!("GET /echo?{n} HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    }
    burst.push_str("POST /echo?last HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello");
    client.send(burst.as_bytes());
    for n in 0..20 {
        assert_eq!(client.answer(false).json()["query"], n.to_string());
    }
    let last = client.answer(false).json();
    assert_eq!((last["query"].as_str(), last["body"].as_str()), (Some("last"), Some("hello")));
    // A response too big for the socket holds the requests behind it back.
    client.send(
        b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\nGET /echo?after HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(client.answer(false).body.len(), 32 << 20);
    assert_eq!(client.answer(false).json()["query"], "after");
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive_and_close_is_honoured() {
    let server = start_default();
    let addr = server.local_addr();
    let mut client = Client::connect(addr);
    client.send(b"GET /echo HTTP/1.0\r\n\r\n");
    let answer = client.answer(false);
    assert_eq!((answer.status, answer.header("connection")), (200, Some("close")));
    assert!(client.closed());

    let mut client = Client::connect(addr);
    for _ in 0..2 {
        client.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(client.answer(false).header("connection"), Some("keep-alive"));
    }

    let mut client = Client::connect(addr);
    client.send(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(client.answer(false).header("connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn head_has_the_length_of_get_and_no_body() {
    let server = start_default();
    let mut client = Client::connect(server.local_addr());
    let get = client.get("/echo");
    client.send(b"HEAD /echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let head = client.answer(true);
    assert_eq!(head.status, 200);
    let get_len: usize = get.header("content-length").unwrap().parse().unwrap();
    // `"method":"HEAD"` is one byte longer than `"method":"GET"`.
    assert_eq!(head.header("content-length").unwrap().parse::<usize>().unwrap(), get_len + 1);
    // No body came: the next answer starts right after the head.
    assert_eq!(client.get("/echo").status, 200);
    assert!(client.buf.is_empty());
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = start_default();
    let mut client = Client::connect(server.local_addr());
    client
        .send(b"PUT /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = client.answer(true);
    assert_eq!(interim.status, 100);
    client.send(b"ping");
    let v = client.answer(false).json();
    assert_eq!((v["method"].as_str(), v["body"].as_str()), (Some("PUT"), Some("ping")));
}

/// Sends `request` on a fresh connection: the answer must be `status` with
/// a JSON error, then the connection closes; meanwhile `other` is served.
fn refused(server: &HttpServer, other: &mut Client, request: &[u8], status: u16) -> String {
    let mut client = Client::connect(server.local_addr());
    client.send(request);
    let answer = client.answer(false);
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.header("connection"), Some("close"));
    let message = answer.json()["error"].as_str().expect("a JSON error").to_owned();
    assert!(client.closed(), "closed after {status}");
    assert_eq!(other.get("/echo").status, 200, "another client is still served");
    message
}

#[test]
fn each_bad_request_gets_its_code_and_the_others_are_served() {
    let config = HttpConfig { max_head: 1024, max_body: 100, ..HttpConfig::default() };
    let (server, _) = start(config);
    let mut other = Client::connect(server.local_addr());
    assert_eq!(other.get("/echo").status, 200);

    let m = refused(&server, &mut other, b"GET /echo HTTP/1.1\r\n\r\n", 400);
    assert!(m.contains("Host"), "{m}");
    let m = refused(&server, &mut other, b"\x16\x03\x01 this is not http\r\n\r\n", 400);
    assert!(m.contains("cannot parse"), "{m}");
    let big = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
    let m = refused(&server, &mut other, big.as_bytes(), 431);
    assert!(m.contains("1024"), "{m}");
    let endless = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Big: {}", "a".repeat(5000));
    refused(&server, &mut other, endless.as_bytes(), 431);
    let many: String = (0..70).map(|n| format!("X-{n}: y\r\n")).collect();
    refused(&server, &mut other, format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes(), 431);
    let m = refused(
        &server,
        &mut other,
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 101\r\n\r\n",
        413,
    );
    assert!(m.contains("101") && m.contains("100"), "{m}");
    // Refused before the body is read, even when the body comes along.
    let body = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 50000\r\n\r\n{}",
        "b".repeat(50000)
    );
    refused(&server, &mut other, body.as_bytes(), 413);
    let chunked =
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let m = refused(&server, &mut other, chunked, 400);
    assert!(m.contains("chunked") && m.contains("Content-Length"), "{m}");
    refused(
        &server,
        &mut other,
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        400,
    );
    refused(
        &server,
        &mut other,
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
        400,
    );

    let c = server.counters();
    assert_eq!(c.bad_requests, 10);
    assert_eq!(c.requests, 11, "only the other client's requests reached the handler");
}

/// `GET /echo` with `Host: host`, then `POST /echo` with `headers`, on one
/// connection: their statuses and the error message, if any.
fn get_then_post(client: &mut Client, host: &str, headers: &str) -> (u16, u16, String) {
    client.send(format!("GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let get = client.answer(false);
    client.send(
        format!("POST /echo HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: 2\r\n\r\nhi").as_bytes(),
    );
    let post = client.answer(false);
    let error = [&get, &post]
        .iter()
        .find_map(|a| (a.status != 200).then(|| a.json()["error"].as_str().unwrap_or_default().to_owned()));
    (get.status, post.status, error.unwrap_or_default())
}

#[test]
fn a_host_that_is_not_the_server_is_refused_and_dns_rebinding_reads_nothing() {
    let server = start_default();
    let port = server.local_addr().port();
    let mut client = Client::connect(server.local_addr());
    // A page of evil.example whose name now resolves to 127.0.0.1: the
    // browser sends its own name as the Host, and would read the answer.
    for host in [format!("evil.example:{port}"), "evil.example".into(), "localhost.evil.example".into()] {
        let (get, post, error) = get_then_post(&mut client, &host, "");
        assert_eq!((get, post), (403, 403), "{host}");
        assert!(error.contains(&host) && error.contains("--allow-host"), "{error}");
    }
    // The same connection serves on: a 403 leaves it in step.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "LocalHost".into(),
        // Ports are not compared (a port map), nor addresses (a wildcard listener).
        "10.1.2.3:8080".into(),
    ] {
        assert_eq!(get_then_post(&mut client, &host, ""), (200, 200, String::new()), "{host}");
    }
    // HTTP/1.0 without a Host: no browser sends that.
    client.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.answer(false).status, 200);
    // Two Hosts: which would count?
    let mut other = Client::connect(server.local_addr());
    let two = b"GET /echo HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n";
    let m = refused(&server, &mut other, two, 400);
    assert!(m.contains("more than one Host"), "{m}");
    let c = server.counters();
    assert_eq!((c.forbidden, c.requests, c.bad_requests), (6, 12, 1), "{c:?}");
}

#[test]
fn a_state_change_from_another_sites_page_is_refused_and_curl_is_served() {
    let server = start_default();
    let port = server.local_addr().port();
    let mut client = Client::connect(server.local_addr());
    let host = format!("127.0.0.1:{port}");
    // What browsers send with a page's cross-site `fetch`, form or `<img>`.
    for sign in [
        "Origin: http://evil.example\r\n".to_owned(),
        "Origin: null\r\n".into(),
        format!("Origin: http://127.0.0.1:{}\r\n", port.wrapping_add(1)),
        "Sec-Fetch-Site: cross-site\r\n".into(),
        // Another port of localhost is the same site.
        "Sec-Fetch-Site: same-site\r\n".into(),
    ] {
        let (get, post, error) = get_then_post(&mut client, &host, &sign);
        assert_eq!((get, post), (200, 403), "{sign}");
        assert!(error.contains("another site"), "{error}");
    }
    // curl, a script, a probe: no Origin, no Sec-Fetch-Site. The server's own
    // origin, or the user typing the address, are not another site.
    for same in [
        String::new(),
        format!("Origin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n"),
        "Sec-Fetch-Site: none\r\n".into(),
    ] {
        assert_eq!(get_then_post(&mut client, &host, &same), (200, 200, String::new()), "{same}");
    }
    let c = server.counters();
    assert_eq!((c.forbidden, c.requests), (5, 11), "{c:?}");
    assert!(server.is_running());
}

#[test]
fn named_hosts_any_host_and_cross_site_are_the_configs_to_give() {
    let named = HttpConfig { allow_hosts: vec!["monitor.internal".into()], ..HttpConfig::default() };
    let (server, _) = start(named);
    let mut client = Client::connect(server.local_addr());
    assert_eq!(get_then_post(&mut client, "Monitor.Internal:9333", "").0, 200);
    assert_eq!(get_then_post(&mut client, "evil.example", "").0, 403);
    // The origin of a named host is the request's own.
    let same = "Origin: http://monitor.internal\r\n";
    assert_eq!(get_then_post(&mut client, "monitor.internal:80", same), (200, 200, String::new()));

    let (server, _) = start(HttpConfig { allow_any_host: true, ..HttpConfig::default() });
    let mut client = Client::connect(server.local_addr());
    assert_eq!(get_then_post(&mut client, "evil.example", "").0, 200);
    let (get, post, _) = get_then_post(&mut client, "evil.example", "Sec-Fetch-Site: cross-site\r\n");
    assert_eq!((get, post), (200, 403), "any Host is not any site");

    let (server, _) = start(HttpConfig { allow_cross_site: true, ..HttpConfig::default() });
    let mut client = Client::connect(server.local_addr());
    let (get, post, _) = get_then_post(&mut client, "localhost", "Origin: http://evil.example\r\n");
    assert_eq!((get, post), (200, 200));
    assert_eq!(get_then_post(&mut client, "evil.example", "").0, 403, "cross-site is not any Host");

    for bad in ["monitor:9333", "http://monitor", "", "*.example"] {
        let config = HttpConfig { allow_hosts: vec![bad.into()], ..HttpConfig::default() };
        let e = HttpServer::start(config, handler(Sinks::default())).unwrap_err().to_string();
        assert!(e.contains("not a host name"), "{bad:?}: {e}");
    }
}

/// `GET /beacon` counts a visit: a GET that changes state, as a ping does.
struct Beacon(Arc<std::sync::atomic::AtomicU64>);

impl heartbeat::http::Handler for Beacon {
    fn handle(&self, _: &Request<'_>) -> Reply {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Response::empty(204).into()
    }

    fn changes_state(&self, request: &Request<'_>) -> bool {
        request.path() == "/beacon" || !matches!(request.method(), "GET" | "HEAD")
    }
}

#[test]
fn a_handler_names_the_gets_that_change_state_and_an_img_cannot_send_them() {
    let visits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let server = HttpServer::start(HttpConfig::default(), Arc::new(Beacon(visits.clone()))).unwrap();
    let mut client = Client::connect(server.local_addr());
    // `<img src="http://127.0.0.1:PORT/beacon">` on another site's page.
    let img = "GET /beacon HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: cross-site\r\n\
               Sec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\n\r\n";
    client.send(img.as_bytes());
    assert_eq!(client.answer(false).status, 403);
    client.send(b"HEAD /beacon HTTP/1.1\r\nHost: localhost\r\nOrigin: null\r\n\r\n");
    assert_eq!(client.answer(true).status, 403);
    assert_eq!(visits.load(std::sync::atomic::Ordering::SeqCst), 0, "the handler never saw them");
    // Other GETs from another site are reads (the page cannot read the answer).
    client.send(b"GET /other HTTP/1.1\r\nHost: localhost\r\nSec-Fetch-Site: cross-site\r\n\r\n");
    assert_eq!(client.answer(true).status, 204);
    client.send(b"GET /beacon HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(client.answer(true).status, 204);
    assert_eq!(visits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn a_request_dribbled_slower_than_the_read_deadline_gets_408_and_is_closed() {
    let config = HttpConfig { read_deadline: Duration::from_millis(200), ..HttpConfig::default() };
    let (server, _) = start(config);
    let mut other = Client::connect(server.local_addr());
    let mut client = Client::connect(server.local_addr());
    client.stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    client.send(b"GET /echo HTTP/1.1\r\n");
    let started = Instant::now();
    let mut got = [0u8; 1];
    loop {
        assert!(started.elapsed() < BOUND, "no answer to a dribbling request");
        // One byte of header every 50 ms, never ending.
        if client.stream.write_all(b"x").is_err() {
            break;
        }
        match client.stream.read(&mut got) {
            Ok(n) => {
                client.buf.extend_from_slice(&got[..n]);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
        assert_eq!(other.get("/echo").status, 200);
    }
    client.stream.set_read_timeout(Some(BOUND)).unwrap();
    let answer = client.answer(false);
    assert_eq!(answer.status, 408);
    assert!(answer.json()["error"].as_str().unwrap().contains("deadline"));
    assert!(client.closed());
    let c = server.counters();
    assert_eq!((c.timed_out, c.bad_requests), (1, 1));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let config = HttpConfig { idle_timeout: Duration::from_millis(200), ..HttpConfig::default() };
    let (server, _) = start(config);
    let mut client = Client::connect(server.local_addr());
    assert_eq!(client.get("/echo").status, 200);
    let since = Instant::now();
    assert!(client.closed());
    assert!(since.elapsed() >= Duration::from_millis(150), "closed after {:?}", since.elapsed());
    // Never a request at all: closed too.
    let mut silent = Client::connect(server.local_addr());
    assert!(silent.closed());
    eventually("both counted", || server.counters().timed_out == 2);
    assert_eq!(server.counters().open, 0);
    assert_eq!(Client::connect(server.local_addr()).get("/echo").status, 200);
}

#[test]
fn a_client_that_does_not_read_a_big_response_is_closed_after_the_write_deadline() {
    let config = HttpConfig { write_deadline: Duration::from_millis(200), ..HttpConfig::default() };
    let (server, _) = start(config);
    let mut lazy = Client::connect(server.local_addr());
    lazy.send(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut other = Client::connect(server.local_addr());
    eventually("the lazy reader dropped", || server.counters().timed_out == 1);
    assert_eq!(server.counters().open, 1);
    assert_eq!(other.get("/echo").status, 200);
    // What it reads now ends well short of the 32 MiB.
    let mut read = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match lazy.stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    assert!(read < 32 << 20, "{read}");
}

#[test]
fn connections_over_the_limit_are_closed_at_once_and_counted() {
    let config = HttpConfig { max_connections: 8, ..HttpConfig::default() };
    let (server, _) = start(config);
    let mut served: Vec<Client> = (0..8).map(|_| Client::connect(server.local_addr())).collect();
    for client in &mut served {
        assert_eq!(client.get("/echo").status, 200);
    }
    for _ in 0..4 {
        let mut extra = Client::connect(server.local_addr());
        // Whatever it sends, it is closed without an answer.
        let _ = extra.stream.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert!(extra.closed());
        assert!(extra.buf.is_empty());
    }
    let c = server.counters();
    assert_eq!((c.accepted, c.refused_over_limit, c.open), (8, 4, 8));
    for client in &mut served {
        assert_eq!(client.get("/echo").status, 200);
    }
    // One leaves: room for one more.
    served.pop();
    eventually("the slot freed", || server.counters().open == 7);
    assert_eq!(Client::connect(server.local_addr()).get("/echo").status, 200);
}

#[test]
fn a_panicking_handler_gets_500_and_the_server_keeps_serving() {
    let server = start_default();
    let mut client = Client::connect(server.local_addr());
    let answer = client.get("/panic");
    assert_eq!(answer.status, 500);
    assert!(answer.json()["error"].as_str().unwrap().contains("panicked"));
    assert_eq!(client.get("/echo").status, 200, "same connection");
    assert_eq!(Client::connect(server.local_addr()).get("/echo").status, 200);
    assert!(server.is_running());
}

#[test]
fn streams_arrive_in_order_and_a_client_that_does_not_read_is_dropped() {
    let (server, sinks) = start(HttpConfig::default());
    let mut reader = Client::connect(server.local_addr());
    reader.send(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let head = reader.answer(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(head.header("content-length"), None);
    eventually("the stream opened", || sinks.lock().len() == 1);
    let sink = sinks.lock()[0].clone();
    let mut expected = Vec::new();
    for n in 0..100 {
        let line = format!("data: {n}\n\n");
        assert!(sink.send(line.as_bytes()));
        expected.extend_from_slice(line.as_bytes());
    }
    assert!(reader.fill(expected.len()).unwrap());
    assert_eq!(reader.buf, expected);

    // A second client asks for the stream and never reads it.
    let mut lazy = Client::connect(server.local_addr());
    lazy.send(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n");
    eventually("the second stream opened", || sinks.lock().len() == 2);
    let lazy_sink = sinks.lock()[1].clone();
    let chunk = vec![b'z'; 1024];
    let started = Instant::now();
    let mut sent = 0usize;
    while lazy_sink.send(&chunk) {
        sent += chunk.len();
        assert!(sent < 256 << 20 && started.elapsed() < BOUND, "never dropped ({sent} bytes sent)");
        if sent.is_multiple_of(64 << 10) {
            // Give the loop a moment to move bytes to the socket.
            thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(!lazy_sink.is_open());
    eventually("the drop counted", || server.counters().streams_dropped == 1);
    assert!(lazy.closed() || lazy.stream.read(&mut [0u8; 1]).is_ok(), "closed");

    // The reader was never held up.
    reader.buf.clear();
    assert!(sink.send(b"data: still here\n\n"));
    assert!(reader.fill(18).unwrap());
    assert_eq!(reader.buf, b"data: still here\n\n");
    assert_eq!(Client::connect(server.local_addr()).get("/echo").status, 200);

    // The reader leaves: its sink closes.
    drop(reader);
    eventually("the sink closed when the client left", || !sink.send(b"x"));

    // A server that stops closes its streams.
    let mut last = Client::connect(server.local_addr());
    last.send(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n");
    eventually("the third stream opened", || sinks.lock().len() == 3);
    let last_sink = sinks.lock()[2].clone();
    server.stop();
    assert!(!last_sink.is_open() && !last_sink.send(b"x"));
    assert!(last.closed());
}

#[test]
fn stop_is_prompt_with_open_connections_and_idempotent() {
    let server = start_default();
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(addr)).collect();
    assert_eq!(clients[0].get("/echo").status, 200);
    clients[1].send(b"GET /echo HTTP/1.1\r\nHo");
    eventually("all open", || server.counters().open == 10);
    let started = Instant::now();
    server.stop();
    server.stop();
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(!server.is_running());
    for client in &mut clients {
        assert!(client.closed());
    }
    // The listener is gone with the thread.
    assert!(std::net::TcpListener::bind(addr).is_ok());
    drop(server);
}

#[test]
fn an_idle_server_does_not_wake_up() {
    let server = start_default();
    // An idle keep-alive connection has one far deadline: no wakeups either.
    let mut client = Client::connect(server.local_addr());
    assert_eq!(client.get("/echo").status, 200);
    thread::sleep(Duration::from_millis(50));
    let before = server.wakeups();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(server.wakeups(), before);
}

#[test]
fn a_bind_failure_names_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = HttpConfig { listen: addr, ..HttpConfig::default() };
    let err = HttpServer::start(config, handler(Sinks::default())).expect_err("the port is taken");
    assert!(matches!(&err, heartbeat::Error::Io(e) if e.kind() == ErrorKind::AddrInUse), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

// ---- tests in a child process ------------------------------------------

/// This test binary again, running the one test `name` with `CHILD=name`;
/// killed on drop.
struct ChildTest(Child);

impl ChildTest {
    fn spawn(name: &str) -> ChildTest {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        ChildTest(child)
    }

    /// Lines of its standard output, on a channel.
    fn lines(&mut self) -> crossbeam_channel::Receiver<String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let stdout = self.0.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Closes its stdin: the child's cue to finish.
    fn close_stdin(&mut self) {
        drop(self.0.stdin.take());
    }

    /// Closes its stdin and waits for it to pass.
    fn finish(mut self) {
        self.close_stdin();
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "the child test failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the child test did not finish");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether this process is the child running `name`.
fn in_child(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|v| v == name)
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
}

fn set_open_files(soft: Option<u64>) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: the pointer is to a valid rlimit for the duration of the calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = soft.unwrap_or(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Opens `n` idle connections to `addr` and checks that the process's
/// thread count hardly moves and that `path` still answers.
fn idle_connections_cost_no_threads(addr: SocketAddr, open: impl Fn() -> u64, n: usize, path: &str) {
    let before = threads();
    let idle: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    eventually("every idle connection accepted", || open() >= n as u64);
    let after = threads();
    assert!(after <= before + 2, "threads: {before} before, {after} with {n} idle connections");
    let mut client = Client::connect(addr);
    let answer = client.get(path);
    assert_eq!(answer.status, 200, "{answer:?}");
    drop(idle);
}

#[test]
fn a_thousand_idle_connections_hold_no_thread_each() {
    const NAME: &str = "child_a_thousand_idle_connections";
    ChildTest::spawn(NAME).finish();
}

#[test]
fn child_a_thousand_idle_connections() {
    if !in_child("child_a_thousand_idle_connections") {
        return;
    }
    set_open_files(None);
    let server = start_default();
    idle_connections_cost_no_threads(server.local_addr(), || server.counters().open, 1000, "/echo");
}

#[test]
fn the_status_server_holds_no_thread_per_idle_connection() {
    ChildTest::spawn("child_status_server_idle_connections").finish();
}

#[test]
fn child_status_server_idle_connections() {
    if !in_child("child_status_server_idle_connections") {
        return;
    }
    set_open_files(None);
    use heartbeat::peer::{Hub, HubConfig, StatusServer};
    let hub = Arc::new(
        Hub::start(HubConfig { listen: "127.0.0.1:0".parse().unwrap(), ..HubConfig::default() }).unwrap(),
    );
    let status = StatusServer::start("127.0.0.1:0".parse().unwrap(), hub.clone()).unwrap();
    let addr = status.local_addr();
    // The status server's counters are on its /metrics page.
    let open = || {
        let text = String::from_utf8(Client::connect(addr).get("/metrics").body).unwrap();
        let line =
            text.lines().find(|l| l.starts_with("heartbeat_hub_status_http_connections_open ")).unwrap();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap().saturating_sub(1)
    };
    idle_connections_cost_no_threads(addr, open, 300, "/health");
    status.stop();
    hub.stop();
}

#[test]
fn out_of_file_descriptors_the_server_backs_off_and_recovers() {
    let mut child = ChildTest::spawn("child_out_of_file_descriptors");
    let lines = child.lines();
    let port: u16 = loop {
        let line = lines.recv_timeout(BOUND).expect("the child's port");
        // The harness starts the line with `test NAME ... `.
        if let Some((_, port)) = line.split_once("PORT ") {
            break port.parse().unwrap();
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut keep = Client::connect(addr);
    assert_eq!(keep.get("/echo").status, 200);

    // Connect until one is not served: the server is out of descriptors.
    let mut served = Vec::new();
    let stuck = loop {
        assert!(served.len() < 200, "never ran out of descriptors");
        let mut client = Client::connect(addr);
        client.stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        client.send(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
        match client.try_answer(false) {
            Ok(answer) => {
                assert_eq!(answer.status, 200);
                served.push(client);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break client,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(served.len() > 10, "only {} served", served.len());
    // The connections it has are still served.
    assert_eq!(keep.get("/echo").status, 200);
    assert_eq!(served[0].get("/echo").status, 200);

    // Descriptors come free: the waiting connection is taken and answered.
    served.truncate(served.len() - 10);
    let mut stuck = stuck;
    stuck.stream.set_read_timeout(Some(BOUND)).unwrap();
    assert_eq!(stuck.answer(false).status, 200);
    assert_eq!(Client::connect(addr).get("/echo").status, 200);

    drop((served, stuck, keep));
    child.close_stdin();
    let counted = lines.recv_timeout(BOUND).expect("the child's counters");
    let errors: u64 = counted.split_once("ACCEPT_ERRORS ").unwrap().1.parse().unwrap();
    assert!(errors > 0, "{counted}");
    child.finish();
}

#[test]
fn child_out_of_file_descriptors() {
    if !in_child("child_out_of_file_descriptors") {
        return;
    }
    set_open_files(Some(64));
    let server = start_default();
    println!("PORT {}", server.local_addr().port());
    // Serve until the parent closes our stdin.
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    println!("ACCEPT_ERRORS {}", server.counters().accept_errors);
    server.stop();
}
