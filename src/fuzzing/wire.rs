//! `wire`: the peer wire envelope, the handshakes (793 and 795), PEERLIST
//! (789, `;D` hints) and the routing header of PUBMSG/PRIVMSG, on arbitrary
//! bytes. The first byte picks the parser.

use crate::peer::wire::{
    self, Location, MAX_LINE, PRIVMSG, PUBMSG, client_handshake, dn_handshake, encode, is_valid_nick,
    parse_dn_handshake, parse_envelope, parse_handshake, parse_peerlist, parse_route,
};

/// The network the handshake is checked against.
pub(crate) const NETWORK: &str = "mainnet";

/// Errors quote at most 64 characters of input (each at most 10 bytes
/// Debug-escaped) plus some words: never the whole of a 40 KB line.
pub(crate) const MAX_ERROR: usize = 1024;

pub(crate) fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 4 {
        0 => envelope(rest),
        1 => handshake(&String::from_utf8_lossy(rest)),
        2 => directory_handshake(&String::from_utf8_lossy(rest)),
        _ => peerlist_and_route(&String::from_utf8_lossy(rest)),
    }
}

/// A parsed envelope encodes to one line that parses back the same.
fn envelope(line: &[u8]) {
    match parse_envelope(line) {
        Ok(envelope) => {
            assert!(line.len() < MAX_LINE, "a line of {} bytes was parsed", line.len());
            assert!(envelope.line.len() <= line.len(), "the payload outgrew its line");
            let mut out = Vec::new();
            encode(envelope.kind, &envelope.line, &mut out);
            let body = out.strip_suffix(b"\r\n").expect("encode ends the line");
            assert!(!body.contains(&b'\n'), "an encoded line holds a newline: {body:?}");
            if body.len() < MAX_LINE {
                let again =
                    parse_envelope(body).unwrap_or_else(|e| panic!("our encoding does not parse: {e}"));
                assert_eq!(again, envelope, "encode then parse changed the envelope");
            }
            route(envelope.kind, &envelope.line);
        }
        Err(e) => assert!(e.0.len() <= MAX_ERROR, "an error of {} bytes: {}", e.0.len(), e.0),
    }
}

/// An accepted handshake is valid by our own rules, and the client's
/// handshake built from it is accepted as the same.
fn handshake(line: &str) {
    match parse_handshake(line, NETWORK) {
        Ok(h) => {
            assert!(is_valid_nick(&h.nick), "accepted nick {:?}", h.nick);
            assert_eq!((h.app_name.as_str(), h.network.as_str()), (wire::APP_NAME, NETWORK));
            assert!(!h.directory && h.proto_ver == wire::PROTO_VER);
            let names: Vec<&str> =
                if h.features.is_empty() { vec![] } else { h.features.split('+').collect() };
            assert!(names.windows(2).all(|w| w[0] < w[1]), "features not sorted: {:?}", h.features);
            for name in &names {
                let ok =
                    !name.is_empty() && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
                assert!(ok, "feature name {name:?} could forge a PEERLIST entry");
            }
            assert_eq!(h.ping, names.contains(&"ping"));
            assert_eq!(h.peerlist_features, names.contains(&"peerlist_features"));
            assert_eq!(Location::parse(&h.location.to_string()).as_ref(), Some(&h.location));
            let ours = client_handshake(&h.nick, NETWORK, &h.location, h.ping);
            let again = parse_handshake(&ours, NETWORK).unwrap_or_else(|e| panic!("{ours}: {e}"));
            assert_eq!((&again.nick, &again.location, again.ping), (&h.nick, &h.location, h.ping));
        }
        Err(e) => assert!(e.to_string().len() <= MAX_ERROR, "an error of {} bytes", e.to_string().len()),
    }
}

/// A parsed 795 reply, written back by [`dn_handshake`], reads the same.
fn directory_handshake(line: &str) {
    match parse_dn_handshake(line) {
        Ok(reply) => {
            let ours = dn_handshake(&reply.nick, &reply.network, reply.motd.as_deref(), reply.accepted);
            let again = parse_dn_handshake(&ours).unwrap_or_else(|e| panic!("{ours}: {e}"));
            assert_eq!(
                (again.accepted, &again.nick, &again.network, &again.motd),
                (reply.accepted, &reply.nick, &reply.network, &reply.motd)
            );
            assert!(again.ping, "we always advertise ping");
        }
        Err(e) => assert!(e.0.len() <= MAX_ERROR, "an error of {} bytes", e.0.len()),
    }
}

/// PEERLIST entries hold no separators, and written back they read the same.
fn peerlist_and_route(line: &str) {
    let entries = parse_peerlist(line);
    assert!(entries.len() <= line.len() / 2 + 1, "more entries than the line can hold");
    let mut rebuilt = Vec::new();
    for (nick, location, disconnected) in &entries {
        assert!(!nick.is_empty() && !nick.starts_with(char::is_whitespace), "nick {nick:?}");
        for field in [nick, location] {
            assert!(!field.contains([',', ';']), "a separator in {field:?}");
        }
        // A third field always: it keeps a location's trailing blanks inside the entry.
        rebuilt.push(format!("{nick};{location};{}", if *disconnected { "D" } else { "F:" }));
    }
    let again = parse_peerlist(&rebuilt.join(","));
    assert_eq!(again, entries, "PEERLIST entries written back read differently");
    route(PUBMSG, line);
    route(PRIVMSG, line);
}

/// A routing header is a prefix of its line, with no separators inside.
fn route(kind: u32, line: &str) {
    let Some(r) = parse_route(kind, line) else { return };
    assert!(kind == PUBMSG || kind == PRIVMSG);
    assert!(!r.from.is_empty() && !r.from.contains('!'));
    let to = match r.to {
        Some(to) => {
            assert!(kind == PRIVMSG && !to.is_empty() && !to.contains('!'));
            to
        }
        None => {
            assert_eq!(kind, PUBMSG);
            "PUBLIC"
        }
    };
    assert!(!r.command.contains(|c: char| c == '!' || c.is_ascii_whitespace()));
    let head = format!("{}!{to}!{}", r.from, r.command);
    assert!(line.starts_with(&head), "{head:?} is not the start of {line:?}");
}
