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
        Err(e) => return Err(state_error(path, format!("cannot be read: {e}"))),
    };
    let mut sessions = parse_sessions(reader).map_err(|why| state_error(path, why))?;
    let (ids, dropped) = merge_duplicates(&mut sessions);
    if dropped > 0 {
        let (id_s, entry_s) = (if ids == 1 { "" } else { "s" }, if dropped == 1 { "y" } else { "ies" });
        log::warn!(
            "monitor state file {} repeats {ids} session id{id_s} ({dropped} extra entr{entry_s}): \
             kept the entry with the latest beat of each",
            path.display()
        );
    }
    Ok(Some(sessions))
}

/// Keeps one entry per session id: the one with the latest `last_beat`
/// (of equal ones, the last in the file, as a restore would have it).
/// Returns how many ids were repeated and how many entries went.
///
/// We never write a file with a repeated id; one that has them was edited
/// or concatenated by hand. Refusing it would stop the monitor for a
/// slip that loses nothing, and counting every entry would report
/// sessions that are not there (and count them against --max-sessions).
pub(crate) fn merge_duplicates(sessions: &mut Vec<SessionSnapshot>) -> (usize, usize) {
    use std::hash::BuildHasher;
    // Indices into `sessions`, hashed by id: 5 bytes a bucket, where a map
    // keyed by the ids would take 25 (a million sessions: 10 MB, not 50).
    // The top bit marks an id already seen repeated.
    const REPEATED: u32 = 1 << 31;
    if sessions.len() >= REPEATED as usize {
        return (0, 0); // never: 2^31 sessions do not fit in a 4 GiB file
    }
    let hasher = hashbrown::DefaultHashBuilder::default();
    let hash = |s: &SessionSnapshot| hasher.hash_one(s.session_id.as_str());
    let mut table = hashbrown::HashTable::<u32>::with_capacity(sessions.len());
    let mut keep = vec![true; sessions.len()];
    let mut ids = 0;
    for (i, s) in sessions.iter().enumerate() {
        let i = i as u32;
        let entry = table.entry(
            hash(s),
            |&k| sessions[(k & !REPEATED) as usize].session_id == s.session_id,
            |&k| hash(&sessions[(k & !REPEATED) as usize]),
        );
        match entry {
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(i);
            }
            hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                let slot = occupied.get_mut();
                if *slot & REPEATED == 0 {
                    ids += 1;
                }
                let kept = (*slot & !REPEATED) as usize;
                if s.last_beat >= sessions[kept].last_beat {
                    keep[kept] = false;
                    *slot = i | REPEATED;
                } else {
                    keep[i as usize] = false;
                    *slot |= REPEATED;
                }
            }
        }
    }
    drop(table);
    let before = sessions.len();
    let mut keep = keep.into_iter();
    sessions.retain(|_| keep.next().unwrap_or(true));
    (ids, before - sessions.len())
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
    // A FIFO must not wait for a writer (forever, and deaf to SIGTERM).
    let (file, meta) = crate::files::open_regular(path)?;
    if meta.len() > MAX_STATE_FILE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} bytes is too large", meta.len())));
    }
    Ok((io::BufReader::with_capacity(256 << 10, file.take(MAX_STATE_FILE)), meta.len()))
}

/// A token file is its first line; anything past this many bytes is not
/// read (a token is at most 512).
const MAX_TOKEN_FILE: u64 = 4096;

/// Reads the token in a token file: its first line, without the line
/// ending, checked with [`check_token`](super::check_token). Only a regular
/// file is read (a FIFO is refused, never waited on), and only its first
/// 4 KiB. A file that its group or others may read is taken, with a
/// warning.
pub fn read_token_file(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let cannot =
        |e: io::Error| Error::InvalidConfig(format!("cannot read the token file {}: {e}", path.display()));
    let (file, meta) = crate::files::open_regular(path).map_err(cannot)?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE).read_to_string(&mut text).map_err(cannot)?;
    let token = text.lines().next().unwrap_or("").trim_end_matches('\r');
    super::check_token(token).map_err(|e| match e {
        Error::InvalidConfig(why) => Error::InvalidConfig(format!("token file {}: {why}", path.display())),
        other => other,
    })?;
    if meta.permissions().mode() & 0o044 != 0 {
        log::warn!("token file {} is readable by others (chmod 600 it)", path.display());
    }
    Ok(token.to_owned())
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
    use crate::service::check_restored;

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
    fn repeated_ids_are_merged_keeping_the_latest_beat() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let entry = |id: &str, agent: &str, beat: &str| {
            format!(r#"{{"session_id": "{id}", "agent_type": "{agent}", "last_beat": "{beat}"}}"#)
        };
        let sessions = [
            entry("a", "old", "2026-11-30T05:00:00Z"),
            entry("b", "only", "2026-11-30T05:00:00Z"),
            entry("a", "new", "2026-11-30T05:00:09Z"),
            entry("a", "older", "2026-11-30T04:00:00Z"),
            entry("c", "first", "2026-11-30T05:00:00Z"),
            entry("c", "same-time-later-in-file", "2026-11-30T05:00:00Z"),
        ];
        std::fs::write(
            &path,
            format!(
                r#"{{"format": "heartbeat-monitor-state", "version": 1, "saved_at": "", "sessions": [{}]}}"#,
                sessions.join(",")
            ),
        )
        .unwrap();
        let sessions = load_state(&path).unwrap().unwrap();
        let kept: Vec<(&str, &str)> =
            sessions.iter().map(|s| (s.session_id.as_str(), s.agent_type.as_str())).collect();
        assert_eq!(kept, [("b", "only"), ("a", "new"), ("c", "same-time-later-in-file")]);

        // As many as there are, and so within a limit of exactly that many.
        check_restored(&path, &sessions, 3).unwrap();
        let monitor = Monitor::builder().clock(ManualClock::new()).build().unwrap();
        assert_eq!(monitor.restore(&sessions).unwrap(), 3);
        assert_eq!(monitor.registered_count(), 3);

        let mut none_repeated = sessions.clone();
        assert_eq!(merge_duplicates(&mut none_repeated), (0, 0));
        assert_eq!(none_repeated, sessions);
    }

    #[test]
    fn a_token_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\r\nsecond line\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token_file(&path).is_err());
        // Only the first 4 KiB are read: a token cannot be longer than 512.
        std::fs::write(&path, "x".repeat(1 << 20)).unwrap();
        assert!(read_token_file(&path).unwrap_err().to_string().contains("1 to 512"));
        assert!(read_token_file(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
        let e = read_token_file(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("it is a directory, not a regular file"), "{e}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read_token_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("fifo: it is a FIFO, not a regular file"), "{e}");
    }

    #[test]
    fn a_state_file_that_is_not_a_regular_file_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_state(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("cannot be read: it is a directory, not a regular file"), "{e}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Would wait for a writer forever if opened as a file is.
        let e = load_state(&fifo).unwrap_err().to_string();
        assert!(e.ends_with("cannot be read: it is a FIFO, not a regular file"), "{e}");
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
