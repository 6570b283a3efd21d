//! Tell whether processes, sessions and network peers are still alive.
//!
//! `heartbeat` is synchronous: dedicated OS threads do the work, they talk
//! over crossbeam channels, and every thread has an owner that stops and
//! joins it. No async runtime.
//!
//! - **Heartbeat files.** A process proves it is alive by rewriting a small
//!   JSON file every interval ([`Beater`]); anyone can read that file and
//!   judge its age ([`is_alive`], [`age`], [`read_state`]).
//! - **Sessions that must beat** inside one process: [`Monitor`], with
//!   warnings, then timeouts, and phi-accrual detection.
//! - **A directory of per-process heartbeat files:** [`Scanner`] judges each
//!   FRESH, STALE, ORPHAN, REMOTE or SKEWED, cleans up safely and watches.
//! - **Peers over TCP:** [`peer::Hub`], a presence server speaking the
//!   JoinMarket directory-node heartbeat, and [`peer::PeerClient`]; both
//!   sides of JMP-0005 nick authentication ([`peer::auth`]).
//! - **Across machines:** [`etcd`] publishes processes, sessions and peers
//!   to an etcd cluster, one lease per process, and reads them back.
//! - **An HTTP front of our own** ([`http::HttpServer`]): one mio thread for
//!   every connection, every client-grown resource bounded; the hub's status
//!   endpoint runs on it.
//!
//! ```
//! use std::time::Duration;
//! use heartbeat::Beater;
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("worker.json");
//! let beater = Beater::builder()
//!     .state_file(&path)
//!     .interval(Duration::from_secs(5))
//!     .metadata("role", "worker")
//!     .on_missed_beat(|err| eprintln!("could not beat: {err}"))
//!     .build()?;
//! let _guard = beater.start()?;
//!
//! // Elsewhere, perhaps in another process:
//! let state = heartbeat::read_state(&path)?;
//! assert_eq!(state.pid, i64::from(std::process::id()));
//! assert_eq!(state.metadata["role"], "worker");
//! assert!(heartbeat::is_alive(&path, Duration::from_secs(15)));
//! # Ok::<(), heartbeat::Error>(())
//! ```
//!
//! # Time
//! Intervals and deadlines use the monotonic clock; wall-clock time appears
//! only in the files other processes read. Both come from a [`Clock`], so
//! tests drive time with a [`ManualClock`] instead of sleeping.
//!
//! # Files
//! Writes are atomic (an exclusively created temporary file with an
//! unpredictable name, then a rename), so readers never see half a file.
//! The schema is described in the [`HeartbeatState`] docs and the README.
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod beater;
mod builder;
#[cfg(feature = "capi")]
pub mod capi;
mod clock;
mod error;
pub mod etcd;
mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod json;
mod lograte;
mod monitor;
pub mod peer;
pub mod process;
mod random;
pub(crate) mod scanner;
pub mod service;
mod state;
mod sys;
mod systemd;
mod ticker;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use crate::{
    beater::{
        BeatGuard, Beater, BeaterBuilder, DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL, Target,
        clamp_interval,
    },
    clock::{Clock, ManualClock, SharedClock, SystemClock},
    error::{Error, HumanDuration, Result},
    monitor::{
        DEFAULT_CLIENT_INTERVAL, DEFAULT_REQUEST_TIMEOUT, Detector, Event, HeartbeatClient, MAX_TIMEOUT,
        Monitor, MonitorBuilder, MonitorGuard, PhiConfig, PhiEstimator, RegisterOptions, RemoteOptions,
        RemovalReason, SessionCounts, SessionSnapshot, SessionStatus, phi, valid_session_id,
    },
    scanner::{
        Cleanup, DEFAULT_IDLE_WINDOW, DEFAULT_SCAN_INTERVAL, DEFAULT_STALE_AFTER, IgnoredFile, Scan,
        ScanEntry, ScanEvent, ScanReason, ScanStatus, Scanner, ScannerBuilder, Watch, is_heartbeat_name,
    },
    state::{
        DEFAULT_FILE_MODE, HeartbeatState, MAX_STATE_BYTES, SCHEMA_VERSION, SKEW_TOLERANCE, WriteOptions,
        age, format_timestamp, is_alive, is_alive_at, parse_timestamp, read_state, write_atomic, write_state,
    },
    systemd::Notifier,
};
