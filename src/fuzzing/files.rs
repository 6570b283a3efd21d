//! `state_file`: the heartbeat file's two readers (`read_state`'s parser and
//! the scanner's record parser) on the same bytes must agree: both refuse,
//! or both read the same facts. What they read is written back and read
//! again the same.
//!
//! `time_and_names`: the RFC 3339 timestamp parser and the scanner's file
//! names (`heartbeat-<pid>-<uuid>.json`). The first byte picks one.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::input::Input;
use super::roundtrip::to_micros;
use crate::error::Error;
use crate::scanner::{Record, is_heartbeat_name, name_parts};
use crate::state::{HeartbeatState, format_timestamp, parse_timestamp};

/// The boot the scanner compares files with.
const BOOT: &str = "5c1a5a52-3b53-4a0d-93f4-8f1f0c7c9d2e";
/// The uuid the scanner takes from the file name when the file has none.
const NAME_UUID: &str = "from-the-name";

pub(crate) fn state_file(data: &[u8]) {
    if let Ok(state) = agree(data) {
        // What we read, we write; and read that back the same.
        let json = state.to_json();
        let again = HeartbeatState::from_json(json.as_bytes(), Path::new("f.json"))
            .unwrap_or_else(|e| panic!("{e}\n{json}"));
        let expected = HeartbeatState {
            last_beat: to_micros(state.last_beat),
            started_at: state.started_at.map(to_micros),
            ..state
        };
        assert_eq!(again, expected, "{json}");
        let _ = agree(json.as_bytes()).unwrap_or_else(|e| panic!("our own file refused: {e}"));
    }
}

/// Both readers on `data`: both refuse or read the same facts.
/// `read_state`'s result.
pub(crate) fn agree(data: &[u8]) -> Result<HeartbeatState, Error> {
    let name = format!("heartbeat-42-{NAME_UUID}.json");
    let state = HeartbeatState::from_json(data, Path::new("f.json"));
    let record = Record::parse(data, OsStr::new(&name), Some(BOOT));
    match (&state, &record) {
        (Ok(s), Ok(r)) => {
            assert_eq!(r.pid, s.pid);
            assert_eq!(r.last_beat, s.last_beat);
            assert_eq!(r.hostname, s.hostname);
            assert_eq!(r.start_ticks, s.process_start_ticks);
            assert_eq!(r.uuid, s.uuid.as_deref().unwrap_or(NAME_UUID));
            assert_eq!(r.other_boot, s.boot_id.as_deref().is_some_and(|b| b != BOOT));
            assert!(r.fallback.is_none());
        }
        (Err(e), Err(why)) => {
            // read_state checks keys over the whole file first; the scanner
            // checks each key as it reads, and may stop earlier at a bad
            // value. So: a duplicate the scanner finds, read_state finds.
            if why.starts_with("refused: duplicate key") {
                assert!(matches!(e, Error::DuplicateKey { .. }), "read_state: {e}; scanner: {why}");
            }
            assert!(e.to_string().len() <= 1024 && why.len() <= 1024, "a long error: {e} / {why}");
        }
        (Ok(s), Err(why)) => panic!("read_state read {s:?}, the scanner refused: {why}"),
        (Err(e), Ok(r)) => {
            panic!("the scanner read pid {} at {:?}, read_state refused: {e}", r.pid, r.last_beat)
        }
    }
    state
}

pub(crate) fn time_and_names(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    match selector % 3 {
        0 => timestamp_text(&String::from_utf8_lossy(rest)),
        1 => timestamp_instant(rest),
        _ => file_name(rest),
    }
}

/// A timestamp that parses is written (to the microsecond) and read back.
fn timestamp_text(text: &str) {
    let Some(t) = parse_timestamp(text) else { return };
    let written = format_timestamp(t);
    assert_eq!(parse_timestamp(&written), Some(to_micros(t)), "{text:?} -> {written:?}");
    assert_eq!(format_timestamp(to_micros(t)), written);
}

/// Any instant is written in range and reads back (to the microsecond)
/// when it lies in years 0000 to 9999.
fn timestamp_instant(bytes: &[u8]) {
    use std::time::{Duration, UNIX_EPOCH};
    let mut input = Input::new(bytes);
    let (secs, nanos, before) = (input.u64() >> 24, input.u32() % 1_000_000_000, input.bool());
    let d = Duration::new(secs, nanos);
    let Some(t) = (if before { UNIX_EPOCH.checked_sub(d) } else { UNIX_EPOCH.checked_add(d) }) else {
        return;
    };
    let written = format_timestamp(t);
    let back = parse_timestamp(&written).unwrap_or_else(|| panic!("{written:?} does not parse"));
    let year: i64 = written[..4].parse().expect("four digits of year");
    if (1..=9998).contains(&year) {
        assert_eq!(back, to_micros(t), "{written}");
    }
}

/// A name the scanner takes a PID from is a heartbeat name, and the
/// canonical name of that PID and uuid gives them back.
fn file_name(bytes: &[u8]) {
    let name = OsStr::from_bytes(bytes);
    let Some((pid, uuid)) = name_parts(name) else { return };
    assert!(is_heartbeat_name(name), "{name:?}");
    let canonical = format!("heartbeat-{pid}-{uuid}.json");
    assert_eq!(name_parts(OsStr::new(&canonical)), Some((pid, uuid)));
}
