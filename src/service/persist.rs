//! The monitor's state file: every session, so that a restart forgets no one.
//!
//! ```text
//! {"format": "heartbeat-monitor-state", "version": 1, "saved_at": "2026-11-30T05:00:00.000000Z",
//!  "sessions": [{"session_id": "backup", "agent_type": "cron", ...}, ...]}
//! ```
//!
//! Written atomically with [`write_atomic`] (a reader never sees half a
//! file), mode 0600: session ids may be worth keeping to oneself.

use std::io;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::monitor::{Monitor, SessionSnapshot};
use crate::state::{WriteOptions, format_timestamp, write_atomic_with};

const FORMAT: &str = "heartbeat-monitor-state";
const VERSION: u32 = 1;

/// Files larger than this are refused rather than read: about 4,000 bytes
/// for each of a million sessions, far more than they need.
const MAX_STATE_FILE: u64 = 4 << 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateIn {
    format: String,
    version: u32,
    #[allow(dead_code)]
    saved_at: String,
    sessions: Vec<SessionSnapshot>,
}

/// Writes every session of `monitor` to `path`, atomically and durably.
///
/// Streamed a shard at a time: the memory it takes is one shard's sessions
/// and a write buffer, whatever the number of sessions.
pub fn save_state(path: &Path, monitor: &Monitor) -> Result<()> {
    let started = std::time::Instant::now();
    let mut count = 0usize;
    let saved_at = format_timestamp(monitor.clock().wall());
    write_atomic_with(path, WriteOptions { fsync: true, mode: 0o600 }, |file| {
        count = write_sessions(io::BufWriter::with_capacity(256 << 10, file), monitor, &saved_at)?;
        Ok(())
    })
    .map_err(|e| state_error(path, format!("cannot be written: {e}")))?;
    log::debug!("saved {count} sessions to {} in {:?}", path.display(), started.elapsed());
    Ok(())
}

/// Writes the state file's contents for `monitor`'s sessions to `out`
/// (flushed at the end); how many sessions.
pub(crate) fn write_sessions(
    mut out: impl io::Write,
    monitor: &Monitor,
    saved_at: &str,
) -> io::Result<usize> {
    let mut count = 0;
    write!(
        out,
        "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"saved_at\":\"{saved_at}\",\"sessions\":["
    )?;
    monitor.snapshot_shards(|sessions| {
        for session in sessions {
            if count > 0 {
                out.write_all(b",\n")?;
            }
            serde_json::to_writer(&mut out, session)?;
            count += 1;
        }
        Ok::<(), io::Error>(())
    })?;
    out.write_all(b"]}\n")?;
    out.flush()?;
    Ok(count)
}

/// Reads a state file: `None` when there is none, the sessions when it
/// parses, and an error naming the file and the fault otherwise (unreadable,
/// not JSON, another format or version, a bad session).
pub fn load_state(path: &Path) -> Result<Option<Vec<SessionSnapshot>>> {
    let reader = match open_bounded(path) {
        Ok((_, 0)) => {
            // Never written by us (we write whole files): made by `touch`
            // while provisioning, say. Nothing to restore.
            log::warn!("state file {} is empty: starting empty", path.display());
            return Ok(None);
        }
        Ok((reader, _)) => reader,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::info!("no state file at {} yet: starting empty", path.display());
            return Ok(None);
        }
        Err(e) => return Err(state_error(path, format!("cannot read: {e}"))),
    };
    parse_sessions(reader).map(Some).map_err(|why| state_error(path, why))
}

/// The sessions in a state file's contents, or what is wrong with them.
pub(crate) fn parse_sessions(reader: impl io::Read) -> Result<Vec<SessionSnapshot>, String> {
    let state: StateIn = serde_json::from_reader(reader)
        .map_err(|e| format!("is corrupt ({e}); fix or remove it, or start with --state-reset"))?;
    if state.format != FORMAT || state.version != VERSION {
        return Err(format!(
            "is a {:?} file of version {}, not a {FORMAT:?} file of version {VERSION}",
            state.format, state.version
        ));
    }
    Ok(state.sessions)
}

/// The file, buffered and cut at [`MAX_STATE_FILE`]: read as a stream, so
/// that its bytes are never all in memory beside the sessions they become.
fn open_bounded(path: &Path) -> io::Result<(impl io::Read, u64)> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_STATE_FILE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} bytes is too large", meta.len())));
    }
    Ok((io::BufReader::with_capacity(256 << 10, file.take(MAX_STATE_FILE)), meta.len()))
}

fn state_error(path: &Path, reason: String) -> Error {
    Error::InvalidConfig(format!("monitor state file {} {reason}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::monitor::RegisterOptions;

    #[test]
    fn a_saved_registry_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let clock = ManualClock::new();
        let monitor = Monitor::builder().clock(clock.clone()).build().unwrap();
        monitor.register("a", "worker");
        let options = RegisterOptions {
            timeout: Some(Duration::from_secs(86_400)),
            max_missed_beats: Some(1),
            ..RegisterOptions::default()
        };
        monitor.register_with("b", "cron", options).unwrap();
        monitor.pause("b");
        save_state(&path, &monitor).unwrap();

        let sessions = load_state(&path).unwrap().unwrap();
        let again = Monitor::builder().clock(ManualClock::new()).build().unwrap();
        assert_eq!(again.restore(&sessions).unwrap(), 2);
        let b = again.status("b").unwrap();
        assert_eq!(b.agent_type, "cron");
        assert!(b.is_paused);
        assert_eq!(again.status("a").unwrap().agent_type, "worker");
    }

    #[test]
    fn a_missing_file_is_no_state_and_a_bad_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load_state(&path).unwrap().is_none());
        std::fs::write(&path, b"").unwrap();
        assert!(load_state(&path).unwrap().is_none(), "an empty file is no state");
        for (bytes, says) in [
            (&b"{\"format\": \"heartbeat-monitor-state\", \"version\": 1, \"sess"[..], "corrupt"),
            (b"[]", "corrupt"),
            (b"{\"format\": \"other\", \"version\": 1, \"saved_at\": \"\", \"sessions\": []}", "not a"),
            (b"{\"format\": \"heartbeat-monitor-state\", \"version\": 9, \"saved_at\": \"\", \"sessions\": []}", "version"),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let e = load_state(&path).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("state.json"), "{e}");
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(load_state(&path).is_err());
    }
}
