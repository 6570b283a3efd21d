//! The heartbeat file: its schema, atomic writes, and readers.
//!
//! One JSON object serves every reader in the seeds:
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "pid": 4242,
//!   "uuid": "0b9f0c1e-5f3a-4d43-9a57-2f1f4f0d6a10",
//!   "hostname": "web-1",
//!   "started_at": "2026-11-23T22:00:00.000000+00:00",
//!   "timestamp": "2026-11-23T22:05:10.123456+00:00",
//!   "last_refresh": "2026-11-23T22:05:10.123456+00:00",
//!   "interval_sec": 10.0,
//!   "metadata": {},
//!   "process_start_ticks": 1234567,
//!   "boot_id": "5c1a5a52-3b53-4a0d-93f4-8f1f0c7c9d2e"
//! }
//! ```
//!
//! `timestamp` (what kstlib-style readers read) and `last_refresh` (what
//! directory scanners read) are the same instant. The last two fields exist
//! on Linux only and let a scanner tell the writer from a later process that
//! was given the same PID.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::error::{Error, Result};
use crate::process::ProcessIdentity;

/// The schema version this crate writes.
pub const SCHEMA_VERSION: u64 = 1;

/// How far in the future a heartbeat timestamp may lie and still be read as
/// "just now": small differences between the writer's clock and ours. Beyond
/// it the file is reported as clock skew, never as alive.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(2);

/// The mode heartbeat files get unless told otherwise: readable by all, so a
/// checker running as another user can read it.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// The contents of a heartbeat file, as written by this crate or read from
/// any of the formats the seeds write.
///
/// Only `pid` and one of `last_refresh` / `timestamp` are required on reading;
/// everything else is optional so files written by kstlib-style writers
/// (`timestamp`, `pid`, `hostname`, `metadata`) and by per-process scanners'
/// writers (`pid`, `uuid`, `last_refresh`) are read too. Unknown fields are
/// ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatState {
    /// `schema_version`, when the file has one.
    pub schema_version: Option<u64>,
    /// The writer's process id. Signed: other writers may put anything here,
    /// and a reader must treat zero and negatives as "no such process".
    pub pid: i64,
    /// A random id per process run (`uuid`).
    pub uuid: Option<String>,
    /// The writer's host name.
    pub hostname: Option<String>,
    /// When the writer started beating (`started_at`).
    pub started_at: Option<SystemTime>,
    /// The last beat: `last_refresh`, or `timestamp` when there is no
    /// `last_refresh`. This crate writes both with the same value.
    pub last_beat: SystemTime,
    /// The writer's beat interval (`interval_sec`).
    pub interval: Option<Duration>,
    /// Application data (`metadata`); empty when absent.
    pub metadata: Map<String, Value>,
    /// The writer's start time in clock ticks since boot (Linux).
    pub process_start_ticks: Option<u64>,
    /// The boot the writer ran in (Linux).
    pub boot_id: Option<String>,
}

impl HeartbeatState {
    /// A state describing the calling process, beating now (`wall`) every
    /// `interval`, with a fresh random `uuid`.
    pub fn for_current_process(wall: SystemTime, interval: Duration, metadata: Map<String, Value>) -> Self {
        let me = ProcessIdentity::current();
        HeartbeatState {
            schema_version: Some(SCHEMA_VERSION),
            pid: i64::from(me.pid),
            uuid: Some(crate::random::uuid_v4()),
            hostname: Some(crate::process::hostname()),
            started_at: Some(wall),
            last_beat: wall,
            interval: Some(interval),
            metadata,
            process_start_ticks: me.start_ticks,
            boot_id: me.boot_id,
        }
    }

    /// Parses a heartbeat file's bytes; `path` is only used in errors.
    ///
    /// The bytes must be one JSON object, and no object in it may repeat a
    /// key ([`Error::DuplicateKey`]): the scanner reads files by the same
    /// rule, so a file never has two readings.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        crate::json::check_unique_keys(bytes).map_err(|(source, duplicate)| match duplicate {
            Some(key) => Error::DuplicateKey { path: path.to_owned(), key },
            None => Error::NotJson { path: path.to_owned(), source },
        })?;
        // Checked here: serde would quote a top-level string whole in its error.
        if !bytes.trim_ascii_start().starts_with(b"{") {
            let source = serde::de::Error::custom("its top level is not an object");
            return Err(Error::NotJson { path: path.to_owned(), source });
        }
        let obj: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|source| Error::NotJson { path: path.to_owned(), source })?;
        let fields = Fields { obj: &obj, path };

        let last_refresh = fields.timestamp("last_refresh")?;
        let timestamp = fields.timestamp("timestamp")?;
        let last_beat = last_refresh.or(timestamp).ok_or_else(|| Error::MissingField {
            path: path.to_owned(),
            field: "last_refresh or timestamp",
        })?;
        let pid = fields.get("pid")?.ok_or_else(|| fields.missing("pid"))?;
        let pid = pid.as_i64().ok_or_else(|| fields.invalid("pid", "an integer", pid))?;
        let interval = match fields.get("interval_sec")? {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| fields.invalid("interval_sec", "a non-negative number of seconds", v))?,
            ),
        };
        let metadata = match fields.get("metadata")? {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(v) => return Err(fields.invalid("metadata", "an object", v)),
        };
        Ok(HeartbeatState {
            schema_version: fields.u64("schema_version")?,
            pid,
            uuid: fields.string("uuid")?,
            hostname: fields.string("hostname")?,
            started_at: fields.timestamp("started_at")?,
            last_beat,
            interval,
            metadata,
            process_start_ticks: fields.u64("process_start_ticks")?,
            boot_id: fields.string("boot_id")?,
        })
    }

    /// Appends this state as pretty-printed JSON plus a newline to `buf`.
    pub fn write_json(&self, buf: &mut Vec<u8>) {
        serde_json::to_writer_pretty(&mut *buf, self).expect("serializing to a Vec cannot fail");
        buf.push(b'\n');
    }

    /// The state as pretty-printed JSON, newline-terminated.
    pub fn to_json(&self) -> String {
        let mut buf = Vec::with_capacity(512);
        self.write_json(&mut buf);
        String::from_utf8(buf).expect("serde_json writes UTF-8")
    }

    /// How long before `now` the last beat was.
    ///
    /// A beat dated in the future by at most [`SKEW_TOLERANCE`] is age zero;
    /// further ahead it is `Err(ahead)`: clock skew, whose real age is unknown.
    pub fn age_at(&self, now: SystemTime) -> Result<Duration, Duration> {
        beat_age(self.last_beat, now)
    }
}

/// How long before `now` a beat at `beat` was; `Err(ahead)` when it lies
/// further in the future than [`SKEW_TOLERANCE`].
pub(crate) fn beat_age(beat: SystemTime, now: SystemTime) -> Result<Duration, Duration> {
    match now.duration_since(beat) {
        Ok(age) => Ok(age),
        Err(e) if e.duration() <= SKEW_TOLERANCE => Ok(Duration::ZERO),
        Err(e) => Err(e.duration()),
    }
}

impl Serialize for HeartbeatState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let beat = format_timestamp(self.last_beat);
        Record {
            schema_version: self.schema_version,
            pid: self.pid,
            uuid: self.uuid.as_deref(),
            hostname: self.hostname.as_deref(),
            started_at: self.started_at.map(format_timestamp),
            timestamp: &beat,
            last_refresh: &beat,
            interval_sec: self.interval.map(|d| d.as_secs_f64()),
            metadata: &self.metadata,
            process_start_ticks: self.process_start_ticks,
            boot_id: self.boot_id.as_deref(),
        }
        .serialize(serializer)
    }
}

/// The on-disk field order and names.
#[derive(Serialize)]
struct Record<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_version: Option<u64>,
    pid: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    uuid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    timestamp: &'a str,
    last_refresh: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_sec: Option<f64>,
    metadata: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_start_ticks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_id: Option<&'a str>,
}

/// Typed access to a parsed object's fields, with errors that name the field.
/// `null` counts as absent.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    fn get(&self, field: &'static str) -> Result<Option<&'a Value>> {
        Ok(self.obj.get(field).filter(|v| !v.is_null()))
    }

    fn string(&self, field: &'static str) -> Result<Option<String>> {
        match self.get(field)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.invalid(field, "a string", v)),
        }
    }

    fn u64(&self, field: &'static str) -> Result<Option<u64>> {
        match self.get(field)? {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.invalid(field, "a non-negative integer", v)),
        }
    }

    fn timestamp(&self, field: &'static str) -> Result<Option<SystemTime>> {
        match self.get(field)? {
            None => Ok(None),
            Some(Value::String(s)) => parse_timestamp(s).map(Some).ok_or_else(|| Error::InvalidField {
                path: self.path.to_owned(),
                field,
                reason: format!("{} is not an RFC 3339 timestamp", quote(s)),
            }),
            Some(v) => Err(self.invalid(field, "an RFC 3339 timestamp string", v)),
        }
    }

    fn missing(&self, field: &'static str) -> Error {
        Error::MissingField { path: self.path.to_owned(), field }
    }

    fn invalid(&self, field: &'static str, expected: &str, found: &Value) -> Error {
        Error::InvalidField {
            path: self.path.to_owned(),
            field,
            reason: format!("expected {expected}, found {}", quote(&found.to_string())),
        }
    }
}

use crate::json::quote;

/// Formats `t` as RFC 3339 UTC with microseconds and a `+00:00` offset,
/// e.g. `2026-11-23T22:05:10.123456+00:00` (what Python's `isoformat()` writes).
///
/// Instants outside years 0000 to 9999, which RFC 3339 cannot express and no
/// real clock reads, are written as the nearest end of that range.
pub fn format_timestamp(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    );
    let utc = to_utc(t).unwrap_or_else(|| if t > SystemTime::UNIX_EPOCH { RFC3339_MAX } else { RFC3339_MIN });
    utc.format(FORMAT).expect("a UTC instant in years 0000-9999 always formats")
}

const RFC3339_MIN: OffsetDateTime = time::macros::datetime!(0000-01-01 00:00:00 UTC);
const RFC3339_MAX: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59.999_999_999 UTC);

/// `t` in UTC, if it lies within what RFC 3339 can express.
fn to_utc(t: SystemTime) -> Option<OffsetDateTime> {
    let utc = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => OffsetDateTime::UNIX_EPOCH.checked_add(after.try_into().ok()?),
        Err(before) => OffsetDateTime::UNIX_EPOCH.checked_sub(before.duration().try_into().ok()?),
    }?;
    (RFC3339_MIN..=RFC3339_MAX).contains(&utc).then_some(utc)
}

/// Parses an RFC 3339 timestamp with any offset (`Z`, `+00:00`, `-05:00`, ...).
/// A timestamp with no offset at all (`2026-05-02T15:14:30`), as naive
/// writers produce, is read as UTC. `None` for anything else, including
/// instants whose UTC date falls outside years 0000 to 9999.
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    const NAIVE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let parsed = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| PrimitiveDateTime::parse(s, NAIVE).map(PrimitiveDateTime::assume_utc))
        .ok()?
        .checked_to_offset(UtcOffset::UTC)?;
    let t = SystemTime::from(parsed);
    to_utc(t).map(|_| t)
}

/// How a heartbeat file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// fsync the file before the rename and its directory after it, so the
    /// beat survives a power cut. Off by default: a heartbeat is rewritten
    /// every interval anyway.
    pub fsync: bool,
    /// The file's permission bits, set exactly (the umask does not apply).
    pub mode: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { fsync: false, mode: DEFAULT_FILE_MODE }
    }
}

/// Writes `state` to `path` atomically (see [`write_atomic`]).
pub fn write_state(path: &Path, state: &HeartbeatState, options: WriteOptions) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    state.write_json(&mut buf);
    write_atomic(path, &buf, options)
}

/// Replaces `path` with `contents` so that readers see either the old file or
/// the new one, never a part.
///
/// The bytes go to a temporary file with an unpredictable name, created
/// exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`) in the same directory, so a
/// symlink planted there is neither followed nor clobbered; then the file is
/// optionally fsynced, moved over `path`, and the directory optionally
/// fsynced. Missing parent directories are created (mode 0755).
///
/// Without `fsync` nothing is promised across a power cut: the file may then
/// be empty or missing, which readers report as not alive, as is true of a
/// host that just lost power. A process crash loses nothing.
pub fn write_atomic(path: &Path, contents: &[u8], options: WriteOptions) -> Result<()> {
    write_atomic_with(path, options, |file| file.write_all(contents))
}

/// [`write_atomic`] for contents produced by `write`, which writes them to
/// the temporary file (buffer it: the file is not). Whatever `write` fails
/// with is the error, and the temporary file is removed.
pub(crate) fn write_atomic_with(
    path: &Path,
    options: WriteOptions,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let write_err = |source: io::Error| Error::Write { path: path.to_owned(), source };
    let name = path
        .file_name()
        .ok_or_else(|| write_err(io::Error::new(io::ErrorKind::InvalidInput, "the path names no file")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };

    let (mut file, tmp) = match create_temp(dir, name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(write_err)?;
            create_temp(dir, name)
        }
        other => other,
    }
    .map_err(write_err)?;

    let result = (|| {
        file.set_permissions(fs::Permissions::from_mode(options.mode))?;
        write(&mut file)?;
        if options.fsync {
            file.sync_all()?;
        }
        drop(file);
        replace(&tmp, path, options.fsync)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    if options.fsync {
        File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)?;
    }
    Ok(())
}

/// Moves the finished temporary file `tmp` over `path`, atomically.
///
/// Where `path` is already a regular file and durability was not asked for,
/// the two are swapped with `renameat2(RENAME_EXCHANGE)` and the old file,
/// now at `tmp`, is unlinked. On ext4 a plain rename over an existing file
/// triggers `auto_da_alloc`, which starts writeback of the new file at once:
/// measured here, 99 us median per rename against 13 us for exchange plus
/// unlink, the bulk of a beat. Durable writes have no dirty data left for it
/// to flush, so they, first writes, and file systems without exchange
/// (`EINVAL`) use a plain rename.
#[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
fn replace(tmp: &Path, path: &Path, durable: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if !durable && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
        match crate::sys::rename_exchange(tmp, path) {
            Ok(()) => match fs::symlink_metadata(tmp) {
                Ok(m) if m.file_type().is_file() => {
                    if let Err(e) = fs::remove_file(tmp) {
                        log::warn!("cannot remove the previous heartbeat, left at {}: {e}", tmp.display());
                    }
                    return Ok(());
                }
                // `path` became something else since the check: put it back
                // and let rename report on it as it would have.
                _ => crate::sys::rename_exchange(tmp, path)?,
            },
            // Unsupported here, or `path` changed since the check: a plain rename decides.
            Err(e) => log::debug!("exchange over {} failed ({e}); renaming", path.display()),
        }
    }
    fs::rename(tmp, path)
}

/// Creates `.<name>.<random>.tmp` in `dir`, exclusively, retrying on the
/// (astronomically unlikely, or planted) name collision. `<name>` is cut to
/// 200 bytes so the temporary name fits wherever the target's name does.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(File, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let stem = &name.as_bytes()[..name.len().min(200)];
    let mut last = None;
    for _ in 0..8 {
        let mut tmp_name = Vec::with_capacity(stem.len() + 22);
        tmp_name.push(b'.');
        tmp_name.extend_from_slice(stem);
        tmp_name.extend_from_slice(format!(".{:016x}.tmp", crate::random::u64()).as_bytes());
        let tmp = dir.join(std::ffi::OsStr::from_bytes(&tmp_name));
        match create_exclusive(&tmp) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("the loop ran"))
}

/// Creates `path` for writing, failing if anything, a symlink included, is
/// already there (`O_CREAT | O_EXCL | O_NOFOLLOW`).
fn create_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Reads and parses the heartbeat file at `path`.
///
/// Each failure is its own error, naming the path: [`Error::NotFound`],
/// [`Error::Unreadable`], [`Error::NotJson`], [`Error::DuplicateKey`],
/// [`Error::MissingField`], [`Error::InvalidField`].
///
/// Only regular files of at most [`MAX_STATE_BYTES`] are read: a FIFO, a
/// device or a huge file planted at the path is `Unreadable`, never a hang
/// or an unbounded allocation.
pub fn read_state(path: impl AsRef<Path>) -> Result<HeartbeatState> {
    let path = path.as_ref();
    let bytes = read_bounded(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::NotFound { path: path.to_owned() },
        _ => Error::Unreadable { path: path.to_owned(), source },
    })?;
    HeartbeatState::from_json(&bytes, path)
}

/// The largest heartbeat file a reader accepts (1 MiB); real ones are ~400 bytes.
pub const MAX_STATE_BYTES: u64 = 1 << 20;

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    // A FIFO must not wait for a writer, nor a device be opened.
    let (file, meta) = crate::files::open_regular(path)?;
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_STATE_BYTES) as usize + 1);
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_STATE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// How old the heartbeat file at `path` is at wall-clock time `now`.
///
/// Errors: those of [`read_state`], and [`Error::ClockSkew`] when the beat is
/// dated further in the future than [`SKEW_TOLERANCE`].
pub fn age(path: impl AsRef<Path>, now: SystemTime) -> Result<Duration> {
    let path = path.as_ref();
    read_state(path)?.age_at(now).map_err(|ahead| Error::ClockSkew { path: path.to_owned(), ahead })
}

/// Whether the heartbeat file at `path` was beaten at most `max_age` ago.
///
/// A missing, unreadable, corrupt, stale or future-dated (clock skew) file is
/// not alive. Use [`age`] or [`read_state`] to learn why.
///
/// ```no_run
/// use std::time::Duration;
/// if !heartbeat::is_alive("/run/myapp/heartbeat.json", Duration::from_secs(30)) {
///     eprintln!("myapp is not beating");
/// }
/// ```
pub fn is_alive(path: impl AsRef<Path>, max_age: Duration) -> bool {
    is_alive_at(path, max_age, SystemTime::now())
}

/// [`is_alive`] at a given wall-clock time.
pub fn is_alive_at(path: impl AsRef<Path>, max_age: Duration, now: SystemTime) -> bool {
    matches!(age(path, now), Ok(a) if a <= max_age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: &str) -> SystemTime {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_micros() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(format_timestamp(t), "2023-11-14T22:13:20.123456+00:00");
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
        // Out of RFC 3339's range: the nearest end, never a panic.
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format_timestamp(far), "9999-12-31T23:59:59.999999+00:00");
        let before = UNIX_EPOCH - Duration::from_secs(100_000_000_000);
        assert_eq!(format_timestamp(before), "0000-01-01T00:00:00.000000+00:00");
        let edge = parse_timestamp("9999-12-31T23:59:59.999999Z").unwrap();
        assert_eq!(format_timestamp(edge), "9999-12-31T23:59:59.999999+00:00");
    }

    #[test]
    fn exclusive_creation_never_follows_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let trap = dir.path().join("trap");
        std::os::unix::fs::symlink(&victim, &trap).unwrap();
        assert_eq!(create_exclusive(&trap).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert_eq!(create_exclusive(&dangling).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn temp_names_fit_where_the_target_name_fits() {
        let dir = tempfile::tempdir().unwrap();
        let long = "h".repeat(250) + ".json"; // 255 bytes: NAME_MAX on Linux
        let path = dir.path().join(&long);
        write_atomic(&path, b"{}", WriteOptions::default()).unwrap();
        write_atomic(&path, b"{}", WriteOptions::default()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn readers_accept_z_offsets_and_naive() {
        let utc = at("2026-05-02T15:14:30+00:00");
        assert_eq!(at("2026-05-02T15:14:30Z"), utc);
        assert_eq!(at("2026-05-02T17:14:30+02:00"), utc);
        assert_eq!(at("2026-05-02T10:14:30-05:00"), utc);
        assert_eq!(at("2026-05-02T15:14:30"), utc);
        assert_eq!(at("2026-05-02T15:14:30.5Z"), utc + Duration::from_millis(500));
        for bad in [
            "",
            "yesterday",
            "2026-05-02",
            "2026-13-02T15:14:30Z",
            "2026-05-02T15:14:30+0530x",
            "9999-12-31T23:59:59-23:59", // year 10000 in UTC
            "0000-01-01T00:00:00+01:00", // year -1 in UTC
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut meta = Map::new();
        meta.insert("version".into(), Value::from("1.2.3"));
        meta.insert("shard".into(), Value::from(7));
        let t = at("2026-11-23T22:05:10.123456Z");
        let mut state = HeartbeatState::for_current_process(t, Duration::from_secs(10), meta);
        state.started_at = Some(t - Duration::from_secs(60));
        let back = HeartbeatState::from_json(state.to_json().as_bytes(), Path::new("x")).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn every_schema_key_is_written() {
        let state =
            HeartbeatState::for_current_process(SystemTime::now(), Duration::from_secs(10), Map::new());
        let v: Map<String, Value> = serde_json::from_str(&state.to_json()).unwrap();
        let mut keys = vec![
            "schema_version",
            "pid",
            "uuid",
            "hostname",
            "started_at",
            "timestamp",
            "last_refresh",
            "interval_sec",
            "metadata",
        ];
        if cfg!(target_os = "linux") {
            keys.extend(["process_start_ticks", "boot_id"]);
        }
        for k in &keys {
            assert!(v.contains_key(*k), "missing {k}");
        }
        assert_eq!(v.len(), keys.len());
        assert_eq!(v["timestamp"], v["last_refresh"]);
        assert!(v["timestamp"].as_str().unwrap().ends_with("+00:00"));
    }

    #[test]
    fn kstlib_only_and_scanner_only_files_are_read() {
        let p = Path::new("k.json");
        let k = br#"{"timestamp": "2026-01-12T10:00:00+00:00", "pid": 1234, "hostname": "myhost", "metadata": {"a": 1}}"#;
        let s = HeartbeatState::from_json(k, p).unwrap();
        assert_eq!((s.pid, s.hostname.as_deref(), s.uuid.as_deref()), (1234, Some("myhost"), None));
        assert_eq!(s.last_beat, at("2026-01-12T10:00:00Z"));
        assert_eq!(s.metadata["a"], 1);

        let sc = br#"{"pid": 12345, "uuid": "01HZQ", "started_at": "2026-05-02T15:00:00Z",
                      "last_refresh": "2026-05-02T15:14:30Z", "wrapper_version": "1.0.0", "schema_version": 1}"#;
        let s = HeartbeatState::from_json(sc, p).unwrap();
        assert_eq!((s.pid, s.uuid.as_deref(), s.schema_version), (12345, Some("01HZQ"), Some(1)));
        assert_eq!(s.last_beat, at("2026-05-02T15:14:30Z"));
        assert!(s.metadata.is_empty());
    }

    #[test]
    fn missing_and_ill_typed_fields_are_named() {
        let p = Path::new("f.json");
        let err = |json: &str| HeartbeatState::from_json(json.as_bytes(), p).unwrap_err();
        assert!(matches!(
            err(r#"{"pid": 1}"#),
            Error::MissingField { field: "last_refresh or timestamp", .. }
        ));
        assert!(matches!(
            err(r#"{"timestamp": "2026-01-12T10:00:00Z"}"#),
            Error::MissingField { field: "pid", .. }
        ));
        assert!(matches!(
            err(r#"{"pid": "12", "timestamp": "2026-01-12T10:00:00Z"}"#),
            Error::InvalidField { field: "pid", .. }
        ));
        assert!(matches!(
            err(r#"{"pid": 1, "timestamp": 17}"#),
            Error::InvalidField { field: "timestamp", .. }
        ));
        assert!(matches!(
            err(r#"{"pid": 1, "last_refresh": "soon"}"#),
            Error::InvalidField { field: "last_refresh", .. }
        ));
        assert!(matches!(
            err(r#"{"pid": 1, "timestamp": "2026-01-12T10:00:00Z", "metadata": [1]}"#),
            Error::InvalidField { field: "metadata", .. }
        ));
        assert!(matches!(
            err(r#"{"pid": 1, "timestamp": "2026-01-12T10:00:00Z", "interval_sec": -1}"#),
            Error::InvalidField { field: "interval_sec", .. }
        ));
        assert!(matches!(err("[1, 2]"), Error::NotJson { .. }));
        assert!(matches!(err(r#"{"pid": 1, "timest"#), Error::NotJson { .. }));
        let msg = err(r#"{"pid": 1, "last_refresh": "soon"}"#).to_string();
        assert_eq!(
            msg,
            r#"heartbeat file f.json has a bad `last_refresh`: "soon" is not an RFC 3339 timestamp"#
        );
    }

    #[test]
    fn a_repeated_key_is_refused_with_its_name() {
        // Finding 1 of the fuzzing round: this read as the last `timestamp`.
        let json = br#"{"pid":7,"timestamp":7,"timestamp":"1151-12-31T23:59:60Z"}"#;
        let err = HeartbeatState::from_json(json, Path::new("d.json")).unwrap_err();
        assert!(matches!(&err, Error::DuplicateKey { key, .. } if key == "timestamp"), "{err:?}");
        assert_eq!(
            err.to_string(),
            "heartbeat file d.json repeats the key \"timestamp\" (refused: readers differ on which value counts)"
        );
        // In metadata too: one rule at every depth.
        let json = br#"{"pid":7,"timestamp":"2026-01-12T10:00:00Z","metadata":{"v":1,"v":2}}"#;
        let err = HeartbeatState::from_json(json, Path::new("d.json")).unwrap_err();
        assert!(matches!(&err, Error::DuplicateKey { key, .. } if key == "v"), "{err:?}");
        // A top level that is not an object is NotJson, and a huge string
        // there is not quoted back (found by the state_file fuzz target:
        // fuzz/regressions/state_file/top-level-string-quoted).
        let huge = format!("{:?}", "G".repeat(100_000));
        let err = HeartbeatState::from_json(huge.as_bytes(), Path::new("d.json")).unwrap_err();
        assert!(matches!(err, Error::NotJson { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "heartbeat file d.json is not a JSON object: its top level is not an object"
        );
        // A syntax error is still NotJson.
        let err = HeartbeatState::from_json(br#"{"pid":7,"timest"#, Path::new("d.json")).unwrap_err();
        assert!(matches!(err, Error::NotJson { .. }), "{err:?}");
    }

    #[test]
    fn hostile_values_are_quoted_short() {
        let huge = format!(r#"{{"pid": "{}", "timestamp": "2026-01-12T10:00:00Z"}}"#, "9".repeat(100_000));
        let msg = HeartbeatState::from_json(huge.as_bytes(), Path::new("h")).unwrap_err().to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.ends_with("..."));
    }

    #[test]
    fn age_tolerates_small_skew_and_reports_large() {
        let t = at("2026-01-12T10:00:00Z");
        let s =
            HeartbeatState::from_json(br#"{"pid": 1, "timestamp": "2026-01-12T10:00:00Z"}"#, Path::new("a"))
                .unwrap();
        assert_eq!(s.age_at(t + Duration::from_secs(5)), Ok(Duration::from_secs(5)));
        assert_eq!(s.age_at(t - Duration::from_secs(1)), Ok(Duration::ZERO));
        assert_eq!(s.age_at(t - Duration::from_secs(60)), Err(Duration::from_secs(60)));
    }
}
