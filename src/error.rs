//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in this crate.
///
/// Messages are short, lower-case and name the path or value at fault;
/// the underlying cause, where there is one, is available through
/// [`std::error::Error::source`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error with no better description.
    Io(io::Error),
    /// A heartbeat file could not be written (temporary file, write, fsync or rename).
    Write {
        /// The heartbeat file that was being written.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A heartbeat file does not exist.
    NotFound {
        /// The missing file.
        path: PathBuf,
    },
    /// A heartbeat file exists but could not be read (permissions, a directory, ...).
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A heartbeat file is not valid JSON, or its top level is not an object.
    NotJson {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// A heartbeat file repeats a key in one of its objects. Readers
    /// differ on which value counts, so the file is refused as a whole.
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The repeated key.
        key: String,
    },
    /// A field the heartbeat file must carry is absent.
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `pid` or `last_refresh or timestamp`.
        field: &'static str,
    },
    /// A field is present but has the wrong type or an unusable value.
    InvalidField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// What is wrong with it, quoting the value.
        reason: String,
    },
    /// A heartbeat file's timestamp lies in the future by more than the
    /// tolerated skew: the writer's clock and ours disagree, so its age is unknown.
    ClockSkew {
        /// The file.
        path: PathBuf,
        /// How far ahead of our clock the timestamp is.
        ahead: Duration,
    },
    /// A directory of heartbeat files could not be listed (permissions, not a directory, ...).
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// `start` was called on a [`Beater`](crate::Beater) that is already running.
    AlreadyRunning,
    /// `start` was called on a [`Beater`](crate::Beater) after its `shutdown`.
    ShutDown,
    /// A configuration value was rejected.
    InvalidConfig(String),
    /// Another beater holds the advisory lock on this heartbeat file
    /// (`<file>.lock`, see [`BeaterBuilder::exclusive`](crate::BeaterBuilder::exclusive)).
    Locked {
        /// The heartbeat file.
        path: PathBuf,
        /// The holder's pid, as its lock file says (absent while it is being written).
        holder: Option<u32>,
    },
    /// Another beater took this heartbeat file over
    /// ([`BeaterBuilder::take_over`](crate::BeaterBuilder::take_over)): this
    /// one no longer writes it.
    TakenOver {
        /// The heartbeat file.
        path: PathBuf,
        /// The new writer's pid, as its lock file says.
        by: Option<u32>,
    },
    /// An etcd request failed ([`etcd`](crate::etcd)): no endpoint could be
    /// reached, or one answered with an error.
    Etcd {
        /// The endpoint that answered last (or the last one tried).
        endpoint: String,
        /// What went wrong: the connection error, or the HTTP status and
        /// etcd's own message.
        what: String,
    },
}

/// A duration as people read it: `0.250s`, `42.000s`, `5m 3s`, `3h 5m`,
/// `2525d 3h`. Seconds keep milliseconds below a minute; above it, the two
/// largest units are enough.
///
/// ```
/// use std::time::Duration;
/// use heartbeat::HumanDuration;
/// assert_eq!(HumanDuration(Duration::from_millis(1500)).to_string(), "1.500s");
/// assert_eq!(HumanDuration(Duration::from_secs(218_163_041)).to_string(), "2525d 0h");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (days, hours, minutes, seconds) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        if secs < 60 {
            write!(f, "{:.3}s", self.0.as_secs_f64())
        } else if secs < 3600 {
            write!(f, "{minutes}m {seconds}s")
        } else if secs < 86_400 {
            write!(f, "{hours}h {minutes}m")
        } else {
            write!(f, "{days}d {hours}h")
        }
    }
}

/// ` (pid N)`, or nothing when the pid is unknown.
pub(crate) struct PidSuffix(pub(crate) Option<u32>);

impl fmt::Display for PidSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Write { path, source } => {
                write!(f, "cannot write heartbeat file {}: {source}", path.display())
            }
            Error::NotFound { path } => write!(f, "heartbeat file {} does not exist", path.display()),
            Error::Unreadable { path, source } => {
                write!(f, "cannot read heartbeat file {}: {source}", path.display())
            }
            Error::NotJson { path, source } => {
                write!(f, "heartbeat file {} is not a JSON object: {source}", path.display())
            }
            Error::DuplicateKey { path, key } => write!(
                f,
                "heartbeat file {} repeats the key {} (refused: readers differ on which value counts)",
                path.display(),
                crate::json::quote(key)
            ),
            Error::MissingField { path, field } => {
                // One name per pair of backticks: `last_refresh` or `timestamp`.
                let names: Vec<String> = field.split(" or ").map(|name| format!("`{name}`")).collect();
                write!(f, "heartbeat file {} lacks the field {}", path.display(), names.join(" or "))
            }
            Error::InvalidField { path, field, reason } => {
                write!(f, "heartbeat file {} has a bad `{field}`: {reason}", path.display())
            }
            Error::ClockSkew { path, ahead } => write!(
                f,
                "heartbeat file {} is dated {} in the future (clock skew)",
                path.display(),
                HumanDuration(*ahead)
            ),
            Error::Directory { path, source } => {
                write!(f, "cannot read heartbeat directory {}: {source}", path.display())
            }
            Error::AlreadyRunning => f.write_str("heartbeat is already running"),
            Error::ShutDown => f.write_str("heartbeat was shut down and does not start again"),
            Error::InvalidConfig(msg) => write!(f, "invalid configuration: {msg}"),
            Error::Locked { path, holder } => write!(
                f,
                "heartbeat file {} is already being written by another beater{}",
                path.display(),
                PidSuffix(*holder)
            ),
            Error::TakenOver { path, by } => {
                write!(
                    f,
                    "heartbeat file {} was taken over by another beater{}",
                    path.display(),
                    PidSuffix(*by)
                )
            }
            Error::Etcd { endpoint, what } => write!(f, "etcd at {endpoint}: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e)
            | Error::Write { source: e, .. }
            | Error::Unreadable { source: e, .. }
            | Error::Directory { source: e, .. } => Some(e),
            Error::NotJson { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }

    #[test]
    fn messages_name_the_path_and_keep_the_source() {
        let e = Error::Write {
            path: "/run/x.json".into(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        };
        assert_eq!(e.to_string(), "cannot write heartbeat file /run/x.json: denied");
        assert_eq!(e.source().unwrap().to_string(), "denied");

        let e = Error::MissingField { path: "a.json".into(), field: "pid" };
        assert_eq!(e.to_string(), "heartbeat file a.json lacks the field `pid`");
        let e = Error::MissingField { path: "a.json".into(), field: "last_refresh or timestamp" };
        assert_eq!(e.to_string(), "heartbeat file a.json lacks the field `last_refresh` or `timestamp`");
        assert!(e.source().is_none());

        let e: Error = io::Error::other("boom").into();
        assert!(matches!(e, Error::Io(_)));
        assert_eq!(e.to_string(), "boom");

        let e = Error::Locked { path: "a.json".into(), holder: Some(42) };
        assert_eq!(
            e.to_string(),
            "heartbeat file a.json is already being written by another beater (pid 42)"
        );
        let e = Error::TakenOver { path: "a.json".into(), by: None };
        assert_eq!(e.to_string(), "heartbeat file a.json was taken over by another beater");
    }

    #[test]
    fn durations_read_as_people_read_them() {
        let h = |s: u64| HumanDuration(Duration::from_secs(s)).to_string();
        assert_eq!(HumanDuration(Duration::from_millis(250)).to_string(), "0.250s");
        assert_eq!(h(59), "59.000s");
        assert_eq!(h(60), "1m 0s");
        assert_eq!(h(3599), "59m 59s");
        assert_eq!(h(3600 * 5 + 60 * 7 + 3), "5h 7m");
        assert_eq!(h(86_400 * 2525 + 3600 * 3 + 5), "2525d 3h");
    }
}
