//! What a handler sees and gives back: a borrowed [`Request`], and a
//! [`Reply`] that is either a whole [`Response`] or a stream.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::stream::StreamSink;

/// The content type of [`Response::json`] and [`Response::error`].
const JSON: &str = "application/json";
/// The content type of [`Response::empty`].
const PLAIN: &str = "text/plain; charset=utf-8";

/// One parsed request, borrowed from the connection's read buffer for the
/// length of a [`Handler::handle`](super::Handler::handle) call.
#[derive(Debug)]
pub struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a [httparse::Header<'a>],
    pub(crate) body: &'a [u8],
    pub(crate) peer: SocketAddr,
}

impl<'a> Request<'a> {
    /// The method as sent, e.g. `GET`. `HEAD` is passed as `HEAD`: answer it
    /// like `GET`; the server sends the head alone.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request target before any `?`, not percent-decoded.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The request target after the first `?`, if there is one.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The first header of that name (case-insensitive), as sent.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// The body: exactly `Content-Length` bytes, empty without one.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// A whole response: status, content type, extra headers and body. The
/// server adds `Content-Length`, `Connection` and `Server` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with this status, content type and body.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, headers: Vec::new(), body: body.into() }
    }

    /// `value` as JSON (`application/json`). A value that does not
    /// serialize gives a `500` saying why.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status, JSON, body),
            Err(e) => Response::error(500, &format!("cannot encode the response: {e}")),
        }
    }

    /// An error as JSON: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::new(status, JSON, serde_json::json!({ "error": message }).to_string())
    }

    /// No body: `Content-Length: 0`, or no length at all for a 204.
    pub fn empty(status: u16) -> Response {
        Response::new(status, PLAIN, Vec::new())
    }

    /// Adds a header, e.g. `Allow`, `WWW-Authenticate` or `Retry-After`.
    /// Line breaks in `value` become spaces: a value cannot start a header
    /// of its own.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        let mut value = value.into();
        if value.contains(['\r', '\n']) {
            value = value.replace(['\r', '\n'], " ");
        }
        self.headers.push((name, value));
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The `Content-Type` it is sent with.
    pub(crate) fn content_type(&self) -> &'static str {
        self.content_type
    }

    /// The body: none at all for a 204 or 304, whatever was given.
    pub(crate) fn body(&self) -> &[u8] {
        if self.has_body() { &self.body } else { &[] }
    }

    /// Whether the status allows a body (and so a `Content-Length`).
    fn has_body(&self) -> bool {
        !matches!(self.status, 204 | 304)
    }

    /// The head, ending in the blank line: status line, our headers, then
    /// the handler's.
    pub(crate) fn encode_head(&self, keep_alive: bool, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(160);
        let connection = if keep_alive { "keep-alive" } else { "close" };
        if self.has_body() {
            let _ = write!(
                head,
                "HTTP/1.1 {} {}\r\nServer: heartbeat\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
                self.status,
                reason(self.status),
                self.content_type,
                self.body.len(),
            );
        } else {
            // RFC 9110 8.6: no Content-Length (nor a body) in a 204 or 304.
            let _ = write!(
                head,
                "HTTP/1.1 {} {}\r\nServer: heartbeat\r\nConnection: {connection}\r\n",
                self.status,
                reason(self.status)
            );
        }
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
    }
}

/// The head of a streaming response.
pub(crate) fn stream_head(content_type: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: heartbeat\r\nContent-Type: {content_type}\r\n\
         Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// What a handler answers.
pub enum Reply {
    /// A whole response.
    Full(Response),
    /// A streaming response (Server-Sent Events and the like): the server writes the head
    /// (`200`, the content type, `Cache-Control: no-cache`, `Connection: close`, no Content-Length),
    /// then calls `open` once on the event-loop thread with a sink bound to this connection.
    /// Whatever is sent into the sink is written to the client until it closes, the sink's queue passes
    /// `max_stream_queue` (the client stopped reading: it is dropped and counted), or the server stops.
    ///
    /// `open` must not block: it runs on the thread that serves every
    /// connection. Store the sink, or hand it to a thread of your own. To a
    /// `HEAD` request the head alone is sent and `open` is not called.
    Stream {
        /// The stream's `Content-Type`, e.g. `text/event-stream`.
        content_type: &'static str,
        /// Called once with the sink, after the head is queued.
        open: Box<dyn FnOnce(StreamSink) + Send>,
    },
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply::Full(response)
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Full(response) => f.debug_tuple("Full").field(response).finish(),
            Reply::Stream { content_type, .. } => {
                f.debug_struct("Stream").field("content_type", content_type).finish_non_exhaustive()
            }
        }
    }
}

/// The reason phrase for a status code (clients ignore it; people read it).
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_carry_length_type_connection_and_extra_headers() {
        let response = Response::error(405, "no").header("Allow", "GET, HEAD");
        let mut head = Vec::new();
        response.encode_head(true, &mut head);
        let head = String::from_utf8(head).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 405 Method Not Allowed\r\nServer: heartbeat\r\nContent-Type: application/json\r\n\
             Content-Length: 14\r\nConnection: keep-alive\r\nAllow: GET, HEAD\r\n\r\n"
        );
        assert_eq!(response.body(), br#"{"error":"no"}"#);
    }

    #[test]
    fn header_values_cannot_inject_headers() {
        let response = Response::empty(204).header("X-A", "a\r\nSet-Cookie: b");
        let mut head = Vec::new();
        response.encode_head(false, &mut head);
        let head = String::from_utf8(head).unwrap();
        assert!(head.contains("X-A: a  Set-Cookie: b\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
    }
}
