//! `service`: the monitor service's other inputs. The first byte picks:
//! - a UDP datagram (`src/service/udp.rs`), with or without a token: taken
//!   whole or dropped whole, each line's beat counted once, as a plain
//!   reading of the datagram says;
//! - the monitor's state file (`src/service/persist.rs`): what parses and
//!   passes the service's checks restores into a monitor, which saves a
//!   file that reads back as exactly its sessions.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::input::Input;
use crate::clock::ManualClock;
use crate::monitor::{Monitor, valid_session_id};
use crate::service::{Shared, check_restored, persist, udp};

/// Sessions registered before a datagram arrives.
const KNOWN: [&str; 3] = ["a", "backup", "worker-3"];
const TOKEN: &[u8] = b"s3cret";

pub(crate) fn check(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 2 {
        0 => datagram(input.u8() & 1 == 1, input.rest()),
        _ => state_file(input.rest()),
    }
}

fn datagram(with_token: bool, datagram: &[u8]) {
    let monitor = Monitor::builder().clock(ManualClock::new()).build().expect("the defaults are valid");
    for id in KNOWN {
        monitor.register(id, "worker");
    }
    let mut shared = Shared::for_tests(monitor);
    if with_token {
        shared.token = Some(TOKEN.into());
    }
    udp::take(&shared, datagram);

    // A plain reading: the token and a space, then ids one per line.
    let body = if with_token {
        match datagram.iter().position(|&b| b == b' ') {
            Some(space) if &datagram[..space] == TOKEN => Some(&datagram[space + 1..]),
            _ => None,
        }
    } else {
        Some(datagram)
    };
    let c = &shared.counters;
    let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    assert_eq!(get(&c.datagrams), 1);
    let Some(body) = body else {
        assert_eq!(get(&c.datagrams_unauthorized), 1, "a datagram without the token was not refused");
        assert_eq!(get(&c.beats_udp) + get(&c.unknown_udp) + get(&c.datagrams_malformed), 0);
        return;
    };
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect();
    let valid = !body.is_empty() && lines.iter().all(|l| std::str::from_utf8(l).is_ok_and(valid_session_id));
    if !valid {
        assert_eq!(get(&c.datagrams_malformed), 1, "a malformed datagram was not dropped: {datagram:?}");
        assert_eq!(get(&c.beats_udp) + get(&c.unknown_udp), 0, "a malformed datagram was half taken");
        return;
    }
    let known = lines.iter().filter(|l| KNOWN.iter().any(|k| k.as_bytes() == **l)).count() as u64;
    assert_eq!(get(&c.beats_udp), known);
    assert_eq!(get(&c.unknown_udp), lines.len() as u64 - known);
    assert_eq!(get(&c.datagrams_malformed) + get(&c.datagrams_unauthorized), 0);
    assert_eq!(shared.monitor.registered_count(), KNOWN.len(), "UDP registered something");
}

fn state_file(bytes: &[u8]) {
    let Ok(sessions) = persist::parse_sessions(bytes) else { return };
    if check_restored(std::path::Path::new("state.json"), &sessions, 1_000).is_err() {
        return;
    }
    let monitor = Monitor::builder().clock(ManualClock::new()).build().expect("the defaults are valid");
    if monitor.restore(&sessions).is_err() {
        assert_eq!(monitor.registered_count(), 0, "a refused restore registered sessions");
        return;
    }
    // The last snapshot of each id wins.
    let mut last = HashMap::new();
    for s in &sessions {
        last.insert(s.session_id.as_str(), s);
    }
    assert_eq!(monitor.registered_count(), last.len());
    let mut saved = Vec::new();
    persist::write_sessions(&mut saved, &monitor, "2026-11-30T05:00:00.000000+00:00")
        .expect("writing to a Vec");
    let mut again = persist::parse_sessions(&saved[..])
        .unwrap_or_else(|e| panic!("our own state file {e}: {}", String::from_utf8_lossy(&saved)));
    let mut now = monitor.snapshot();
    again.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    now.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    // The file stores times to the microsecond.
    for s in &mut now {
        s.last_beat = super::roundtrip::to_micros(s.last_beat);
    }
    assert_eq!(again, now, "the saved file does not read back as the monitor's sessions");
    for s in &now {
        let before = last[s.session_id.as_str()];
        // Restored sessions beat now; everything else comes back as saved,
        // except that a setting equal to the monitor's own is kept as the
        // monitor's (`None`): a session on the monitor's settings costs nothing.
        let own = |s: &crate::monitor::SessionSnapshot| {
            (
                s.agent_type.clone(),
                s.timeout.filter(|&t| t != monitor.timeout()),
                s.max_missed_beats.filter(|&m| m != monitor.max_missed_beats()),
                s.detector.filter(|&d| d != monitor.detector()),
                s.paused,
                s.failed,
                s.missed_beats,
            )
        };
        assert_eq!(own(s), own(before), "session {:?} changed in a restore", s.session_id);
    }
}
