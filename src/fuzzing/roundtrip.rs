//! `roundtrip`: random valid messages, built from the input, encoded by our
//! writers and parsed by our readers: each must come back as it went in.
//! The first byte picks the message kind.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::input::Input;
use crate::peer::wire::{
    self, HandshakeError, Location, MAX_LINE, NICK_HASH_LEN, client_handshake, dn_handshake, encode,
    nick_from_hash, parse_dn_handshake, parse_envelope, parse_handshake, parse_peerlist, peer_entry,
    peerlist, peerlist_entry,
};
use crate::state::{HeartbeatState, format_timestamp, parse_timestamp};

pub(crate) fn check(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 5 {
        0 => envelope(&mut input),
        1 => handshake(&mut input),
        2 => directory_handshake(&mut input),
        3 => peer_list(&mut input),
        _ => heartbeat_file(&mut input),
    }
}

fn envelope(input: &mut Input<'_>) {
    let kind = input.u32();
    let line = String::from_utf8_lossy(input.rest()).into_owned();
    envelope_of(kind, &line);
}

/// `line` in an envelope of `kind`, encoded and parsed back.
fn envelope_of(kind: u32, line: &str) {
    let mut out = Vec::new();
    encode(kind, line, &mut out);
    let body = out.strip_suffix(b"\r\n").expect("encode ends the line");
    match parse_envelope(body) {
        Ok(e) => assert_eq!((e.kind, &*e.line), (kind, line)),
        Err(e) => assert!(body.len() >= MAX_LINE, "our own line of {} bytes refused: {e}", body.len()),
    }
}

fn nick(input: &mut Input<'_>) -> String {
    nick_from_hash(input.array::<NICK_HASH_LEN>())
}

fn location(input: &mut Input<'_>) -> Location {
    if input.bool() {
        return Location::Taker;
    }
    const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let onion: String = input.array::<56>().iter().map(|b| char::from(BASE32[usize::from(b % 32)])).collect();
    Location::Maker { host: format!("{onion}.onion"), port: input.u16().max(1) }
}

fn handshake(input: &mut Input<'_>) {
    let (nick, location, ping) = (nick(input), location(input), input.bool());
    let network = input.string(80);
    let line = client_handshake(&nick, &network, &location, ping);
    match parse_handshake(&line, &network) {
        Ok(h) => {
            assert!(network.len() <= 64, "a network of {} bytes was accepted", network.len());
            assert_eq!((h.nick, h.location, h.ping, h.network), (nick, location, ping, network));
            assert_eq!(h.peerlist_features, ping, "we advertise both or neither");
        }
        Err(HandshakeError::Malformed(why)) if network.len() > 64 => {
            assert!(why.contains("network"), "{why}")
        }
        Err(e) => panic!("our own handshake {line} was refused: {e}"),
    }
    envelope_of(wire::HANDSHAKE, &line);
}

fn directory_handshake(input: &mut Input<'_>) {
    let (nick, network) = (input.string(40), input.string(40));
    let motd = input.bool().then(|| input.string(255));
    let accepted = input.bool();
    let line = dn_handshake(&nick, &network, motd.as_deref(), accepted);
    let reply = parse_dn_handshake(&line).unwrap_or_else(|e| panic!("our own 795 {line} was refused: {e}"));
    assert_eq!((reply.accepted, reply.nick, reply.network, reply.motd), (accepted, nick, network, motd));
    assert!(reply.ping);
    envelope_of(wire::DN_HANDSHAKE, &line);
}

fn peer_list(input: &mut Input<'_>) {
    let mut entries = Vec::new();
    let mut expected = Vec::new();
    for _ in 0..usize::from(input.u8() % 16) {
        let (nick, location) = (nick(input), location(input));
        let entry = match input.u8() % 3 {
            0 => peerlist_entry(&nick, &location, true),
            1 => peerlist_entry(&nick, &location, false),
            _ => peer_entry(&nick, &location, Some("peerlist_features+ping")),
        };
        expected.push((nick, location.to_string(), entry.ends_with(";D")));
        entries.push(entry);
    }
    let line = peerlist(entries.iter().map(String::as_str));
    assert_eq!(parse_peerlist(&line), expected, "{line}");
    envelope_of(wire::PEERLIST, &line);
}

/// An instant in years 0001 to 9999 (RFC 3339's range), to the nanosecond.
fn instant(input: &mut Input<'_>) -> SystemTime {
    const FIRST: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = FIRST + (input.u64() % (LAST - FIRST + 1) as u64) as i64;
    let nanos = input.u32() % 1_000_000_000;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(u64::from(nanos))
    }
}

/// `t` cut to whole microseconds, as heartbeat files store it.
pub(crate) fn to_micros(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64),
        Err(e) => {
            let before = e.duration();
            // Floor, not toward the epoch: 0.5 us before it is 1 us before it.
            let micros = before.as_nanos().div_ceil(1_000) as u64;
            UNIX_EPOCH - Duration::from_micros(micros)
        }
    }
}

fn heartbeat_file(input: &mut Input<'_>) {
    let opt_string = |input: &mut Input<'_>| input.bool().then(|| input.string(40));
    let mut metadata = Map::new();
    for _ in 0..input.u8() % 4 {
        let key = input.string(12);
        let value = match input.u8() % 4 {
            0 => Value::from(input.string(20)),
            1 => Value::from(input.u64()),
            2 => Value::from(input.bool()),
            _ => Value::Null,
        };
        metadata.insert(key, value);
    }
    let state = HeartbeatState {
        schema_version: input.bool().then(|| input.u64()),
        pid: input.u64() as i64,
        uuid: opt_string(input),
        hostname: opt_string(input),
        started_at: input.bool().then(|| instant(input)),
        last_beat: instant(input),
        // Up to 2^20 s (12 days): exact through an f64 to the nanosecond.
        interval: input
            .bool()
            .then(|| Duration::new(u64::from(input.u32() % (1 << 20)), input.u32() % 1_000_000_000)),
        metadata,
        process_start_ticks: input.bool().then(|| input.u64()),
        boot_id: opt_string(input),
    };
    let json = state.to_json();
    let back = HeartbeatState::from_json(json.as_bytes(), Path::new("f.json"))
        .unwrap_or_else(|e| panic!("our own file does not read back: {e}\n{json}"));
    let expected = HeartbeatState {
        last_beat: to_micros(state.last_beat),
        started_at: state.started_at.map(to_micros),
        ..state
    };
    assert_eq!(back, expected, "{json}");
    // Both readers read it, and read it alike.
    super::files::agree(json.as_bytes()).unwrap_or_else(|e| panic!("our own file refused: {e}\n{json}"));
    // The timestamps as text: written, parsed, written again, the same.
    for t in [expected.last_beat, state_started(&expected)] {
        let text = format_timestamp(t);
        assert_eq!(parse_timestamp(&text), Some(t), "{text}");
    }
}

fn state_started(state: &HeartbeatState) -> SystemTime {
    state.started_at.unwrap_or(state.last_beat)
}
