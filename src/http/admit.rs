//! Which requests the server takes at all, before a handler sees them.
//!
//! The threat is a browser. A page of `evil.example` can send requests to
//! `127.0.0.1`: a form's or `fetch`'s `text/plain` POST, an `<img>`'s GET,
//! no preflight for either; it cannot read the answers. After DNS
//! rebinding (its own name answered with `127.0.0.1`) it can read them
//! too, as its own origin. So:
//!
//! - a `Host` must name this server: an IP address (a name a rebinding
//!   page controls is never an IP literal), `localhost`, or a name the
//!   server was given ([`HttpConfig::allow_hosts`](super::HttpConfig::allow_hosts)).
//!   Ports are not compared: a port map or a proxy may change them, and
//!   rebinding is about the name. Refused: `403`.
//! - a request that changes state ([`Handler::changes_state`](super::Handler::changes_state))
//!   must not come from another site's page: `Sec-Fetch-Site` `cross-site`
//!   or `same-site` (another port of localhost is the same site), or an
//!   `Origin` that is not the request's own (`Origin: null` included), are
//!   refused `403`. A client that sends neither (curl, scripts, probes) is
//!   not a page, and is served.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::HttpConfig;
use super::message::Request;
use crate::error::{Error, Result};
use crate::json::quote;

/// The longest host name (RFC 1035: 253 characters).
const MAX_NAME: usize = 253;

/// Checks a name for [`HttpConfig::allow_hosts`](super::HttpConfig::allow_hosts):
/// a host name of letters, digits, `-`, `.` and `_` (1 to 253 characters),
/// or an IP address; no scheme, no port.
pub fn check_host_name(name: &str) -> Result<()> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    let inner = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if name_ok || inner.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "allowed host {}: not a host name (letters, digits, `-`, `.`, `_`) or an IP address; no scheme, no port",
        quote(name)
    )))
}

/// The admission rules of one server, from its [`HttpConfig`].
#[derive(Debug)]
pub(crate) struct Admission {
    any_host: bool,
    /// Lower-case, without a trailing dot.
    hosts: Vec<String>,
    cross_site: bool,
}

impl Admission {
    /// The rules `config` asks for; a bad name in `allow_hosts` is an
    /// [`Error::InvalidConfig`].
    pub(crate) fn new(config: &HttpConfig) -> Result<Admission> {
        let mut hosts = Vec::with_capacity(config.allow_hosts.len());
        for name in &config.allow_hosts {
            check_host_name(name)?;
            hosts.push(normal(name).to_ascii_lowercase());
        }
        Ok(Admission { any_host: config.allow_any_host, hosts, cross_site: config.allow_cross_site })
    }

    /// `Ok` to hand `request` to the handler, or why it is refused (`403`).
    /// `changes_state` is asked only about a request that carries a sign
    /// of another site.
    pub(crate) fn check(
        &self,
        request: &Request<'_>,
        changes_state: impl FnOnce(&Request<'_>) -> bool,
    ) -> std::result::Result<(), String> {
        // HTTP/1.1 without a Host never gets here (400); HTTP/1.0 without
        // one is a script or an old probe: browsers always send it.
        let host = request.header("host").map(String::from_utf8_lossy);
        if let Some(host) = &host
            && !self.host_ok(host)
        {
            return Err(format!(
                "Host {} is not this server: it answers for its IP addresses, localhost and the names \
                 it is given (--allow-host)",
                quote(host)
            ));
        }
        if self.cross_site {
            return Ok(());
        }
        let Some(sign) = other_site(request, host.as_deref()) else { return Ok(()) };
        if changes_state(request) {
            return Err(format!("a request that changes state is refused from another site's page ({sign})"));
        }
        Ok(())
    }

    fn host_ok(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let Some(authority) = Authority::parse(host) else { return false };
        authority.ip
            || authority.name.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(authority.name))
    }
}

/// The first sign that a browser sent `request` from another site's page:
/// a `Sec-Fetch-Site` but `same-origin` or `none` (the user typed it), an
/// `Origin` whose scheme, host and port are not the request's own.
fn other_site(request: &Request<'_>, host: Option<&str>) -> Option<String> {
    for header in request.headers {
        let value = String::from_utf8_lossy(header.value);
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("sec-fetch-site") {
            if !value.eq_ignore_ascii_case("same-origin") && !value.eq_ignore_ascii_case("none") {
                return Some(format!("Sec-Fetch-Site: {}", quote(value)));
            }
        } else if header.name.eq_ignore_ascii_case("origin") && !same_origin(value, host) {
            return Some(format!("Origin: {}", quote(value)));
        }
    }
    None
}

/// Whether `origin` (`scheme://host[:port]`) is the origin of a request
/// sent with this `Host`: the same host and port, the port a scheme
/// implies counted (the scheme itself is not the server's to know: a proxy
/// may add TLS). `null`, schemes but HTTP's, a missing Host: no.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else { return false };
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return false;
    };
    let (Some(origin), Some(host)) = (Authority::parse(rest), host.and_then(Authority::parse)) else {
        return false;
    };
    origin.name.eq_ignore_ascii_case(host.name)
        && origin.port.unwrap_or(default_port) == host.port.unwrap_or(default_port)
}

/// A `Host` value, or the part of an `Origin` after the scheme.
#[derive(Debug, PartialEq, Eq)]
struct Authority<'a> {
    /// A name without its trailing dot, a dotted IPv4 address, or an IPv6
    /// address in its brackets.
    name: &'a str,
    ip: bool,
    port: Option<u16>,
}

impl<'a> Authority<'a> {
    /// `host[:port]` (RFC 9110 7.2; an empty port is no port), or `None`.
    fn parse(s: &'a str) -> Option<Authority<'a>> {
        let (name, port, ip) = if s.starts_with('[') {
            let end = s.find(']')?;
            let (name, rest) = s.split_at(end + 1);
            name[1..end].parse::<Ipv6Addr>().ok()?;
            let port = if rest.is_empty() { "" } else { rest.strip_prefix(':')? };
            (name, port, true)
        } else {
            let (name, port) = s.split_once(':').unwrap_or((s, ""));
            (normal(name), port, name.parse::<Ipv4Addr>().is_ok())
        };
        if name.is_empty() || name.contains(['/', '@', '?', '#', '\\', ' ']) {
            return None;
        }
        let port = match port {
            "" => None,
            digits if digits.bytes().all(|b| b.is_ascii_digit()) => Some(digits.parse().ok()?),
            _ => return None,
        };
        Some(Authority { name, ip, port })
    }
}

/// A name without the trailing dot of a fully qualified one.
fn normal(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn admission(config: HttpConfig) -> Admission {
        Admission::new(&config).unwrap()
    }

    /// What `admission` says to a GET (`changes` false) or a POST with these headers.
    fn check(
        admission: &Admission,
        changes: bool,
        headers: &[(&'static str, &'static str)],
    ) -> Result<(), String> {
        let headers: Vec<_> =
            headers.iter().map(|(name, value)| httparse::Header { name, value: value.as_bytes() }).collect();
        let request = Request {
            method: if changes { "POST" } else { "GET" },
            path: "/x",
            query: None,
            headers: &headers,
            body: b"",
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        admission.check(&request, |_| changes)
    }

    #[test]
    fn authorities_parse_as_rfc_9110_writes_them() {
        let a = |name, ip, port| Some(Authority { name, ip, port });
        assert_eq!(Authority::parse("127.0.0.1:9333"), a("127.0.0.1", true, Some(9333)));
        assert_eq!(Authority::parse("[::1]:80"), a("[::1]", true, Some(80)));
        assert_eq!(Authority::parse("[::1]"), a("[::1]", true, None));
        assert_eq!(Authority::parse("LocalHost.:"), a("LocalHost", false, None));
        assert_eq!(Authority::parse("evil.example"), a("evil.example", false, None));
        for bad in [
            "",
            ":80",
            "[::1",
            "[nope]:1",
            "[::1]x",
            "::1",
            "a:b",
            "a:99999",
            "a:1:2",
            "u@localhost",
            "localhost/x",
            "localhost:-1",
        ] {
            assert_eq!(Authority::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts_must_be_ip_addresses_localhost_or_named() {
        let strict = admission(HttpConfig::default());
        for ok in ["127.0.0.1:9333", "[::1]:9333", "localhost:9333", "LOCALHOST", "localhost.", "10.0.0.7:80"]
        {
            assert_eq!(check(&strict, false, &[("Host", ok)]), Ok(()), "{ok}");
        }
        for bad in ["evil.example:9333", "localhost.evil.example", "127.0.0.1.nip.io", "x", "", "::1"] {
            let refused = check(&strict, false, &[("Host", bad)]).unwrap_err();
            assert!(refused.starts_with("Host ") && refused.contains("--allow-host"), "{refused}");
        }
        assert_eq!(check(&strict, true, &[]), Ok(()), "HTTP/1.0 without a Host");

        let named =
            admission(HttpConfig { allow_hosts: vec!["Monitor.Internal.".into()], ..HttpConfig::default() });
        assert_eq!(check(&named, false, &[("Host", "monitor.internal:9333")]), Ok(()));
        assert_eq!(check(&named, false, &[("Host", "MONITOR.internal")]), Ok(()));
        assert!(check(&named, false, &[("Host", "monitor.internal.evil.example")]).is_err());
        let any = admission(HttpConfig { allow_any_host: true, ..HttpConfig::default() });
        assert_eq!(check(&any, false, &[("Host", "evil.example:9333")]), Ok(()));
    }

    #[test]
    fn a_state_change_from_another_site_is_refused() {
        let strict = admission(HttpConfig::default());
        let host = ("Host", "127.0.0.1:9333");
        for sign in [
            ("Origin", "http://evil.example"),
            ("Origin", "null"),
            ("Origin", "http://127.0.0.1:8080"),
            ("Origin", "https://127.0.0.1"),
            ("Origin", "file://"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Site", "same-site"),
            ("sec-fetch-site", "whatever"),
        ] {
            let refused = check(&strict, true, &[host, sign]).unwrap_err();
            assert!(refused.contains("another site") && refused.contains(sign.1), "{refused}");
            assert_eq!(check(&strict, false, &[host, sign]), Ok(()), "a read is not refused: {sign:?}");
        }
        for same in [
            &[host][..],
            &[host, ("Origin", "http://127.0.0.1:9333")],
            &[host, ("Origin", "HTTP://127.0.0.1:9333"), ("Sec-Fetch-Site", "same-origin")],
            &[host, ("Sec-Fetch-Site", "none")],
            &[("Host", "localhost"), ("Origin", "http://localhost:80")],
            &[("Host", "[::1]:443"), ("Origin", "https://[::1]")],
            // The scheme is not the server's to know: a proxy may add TLS.
            &[("Host", "localhost"), ("Origin", "https://localhost")],
        ] {
            assert_eq!(check(&strict, true, same), Ok(()), "{same:?}");
        }
        // Two Origins, one of them another site's.
        assert!(
            check(&strict, true, &[host, ("Origin", "http://127.0.0.1:9333"), ("Origin", "null")]).is_err()
        );
        // No Host to be the same origin as.
        assert!(check(&strict, true, &[("Origin", "http://127.0.0.1:9333")]).is_err());

        let open = admission(HttpConfig { allow_cross_site: true, ..HttpConfig::default() });
        assert_eq!(check(&open, true, &[host, ("Origin", "http://evil.example")]), Ok(()));
        assert!(check(&open, true, &[("Host", "evil.example")]).is_err(), "the Host is still checked");
    }

    #[test]
    fn allowed_names_are_checked() {
        for ok in ["monitor", "monitor.internal", "my_service", "10.0.0.7", "[::1]", "::1", "a.b-c."] {
            check_host_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "monitor:9333", "http://monitor", "*.example", "a b", &"a".repeat(254)] {
            let e = check_host_name(bad).unwrap_err().to_string();
            assert!(e.contains("not a host name"), "{e}");
        }
        let config = HttpConfig { allow_hosts: vec!["x:1".into()], ..HttpConfig::default() };
        assert!(Admission::new(&config).is_err());
    }
}
