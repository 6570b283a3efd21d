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
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
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
                crate::json::quote_key(key)
            ),
            Error::MissingField { path, field } => {
                write!(f, "heartbeat file {} lacks the field `{field}`", path.display())
            }
            Error::InvalidField { path, field, reason } => {
                write!(f, "heartbeat file {} has a bad `{field}`: {reason}", path.display())
            }
            Error::ClockSkew { path, ahead } => write!(
                f,
                "heartbeat file {} is dated {:.3}s in the future (clock skew)",
                path.display(),
                ahead.as_secs_f64()
            ),
            Error::Directory { path, source } => {
                write!(f, "cannot read heartbeat directory {}: {source}", path.display())
            }
            Error::AlreadyRunning => f.write_str("heartbeat is already running"),
            Error::ShutDown => f.write_str("heartbeat was shut down and does not start again"),
            Error::InvalidConfig(msg) => write!(f, "invalid configuration: {msg}"),
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
        assert!(e.source().is_none());

        let e: Error = io::Error::other("boom").into();
        assert!(matches!(e, Error::Io(_)));
    }
}
