//! Presence across machines, published to etcd.
//!
//! Heartbeat files, the [`Monitor`](crate::Monitor) and the
//! [`Hub`](crate::peer::Hub) each know one host. To see who is alive
//! across many, processes publish their presence to an etcd cluster under
//! a lease: a key written under a lease disappears when the lease is not
//! kept alive, so a crashed or frozen process drops out by itself.
//!
//! - [`Client`]: a small blocking client for etcd's v3 JSON gateway (grant,
//!   keep-alive, revoke, put, transactions, range, delete, watch), with a
//!   timeout on every request and failover across endpoints.
//! - [`EtcdScanner`]: reads it back, with the local scanner's verdicts
//!   (FRESH / STALE / SKEWED), once ([`EtcdScanner::scan`]) or following
//!   etcd's watch stream ([`EtcdScanner::watch`]).
//! - [`MonitorPublisher`] and [`HubPublisher`]: a monitor's sessions and a
//!   hub's peers, one key each under the process's lease, written on change
//!   only (join, leave, state change), never on a beat.
//! - [`Presence`]: **one lease per process**, kept alive every TTL/3 by a
//!   thread of its own, with every key the process publishes attached to it.
//!   etcd copes badly with many leases (keep-alives fail at tens of
//!   thousands), so sessions and peers are keys under their process's
//!   lease, never leases of their own.
//!
//! # Keys
//! Under a prefix ([`DEFAULT_PREFIX`], `heartbeat/`):
//!
//! | key | value | written |
//! |---|---|---|
//! | `<prefix>hosts/<host>/<pid>-<uuid>` | the process's heartbeat JSON (the file schema) | every beat (a beater), every TTL/3 (a monitor, a hub) |
//! | `<prefix>sessions/<host>/<pid>-<uuid>/<session>` | a monitor's session | on change |
//! | `<prefix>peers/<host>/<pid>-<uuid>/<nick>` | a hub's peer | on change |
//!
//! etcd down never stops local liveness: files are still written and the
//! monitor still sweeps; the presence thread retries with backoff and, when
//! its lease was lost meanwhile, grants a new one and writes every key again.

mod client;
mod presence;
mod publish;
pub(crate) mod report;
mod scan;
mod wire;

pub use client::{
    Client, DEFAULT_ETCD_TIMEOUT, KeyValue, Lease, MAX_ANSWER, MAX_GET_ANSWER, MAX_RANGE_ANSWER,
    MAX_RANGE_KEYS, MAX_TXN_OPS, MAX_WATCH_EVENTS, MAX_WATCH_LINE, Op, Range, WatchBatch, WatchEvent,
    WatchStream,
};
pub use presence::{MIN_TTL, Presence, PresenceState, PresenceStatus};
pub use publish::{CHECK_INTERVAL, HubPublisher, MonitorPublisher};
pub use scan::{
    DEFAULT_EVENT_CAPACITY, EntryKind, EtcdEntry, EtcdEvent, EtcdScan, EtcdScanner, EtcdScannerBuilder,
    EtcdWatch, EtcdWatchState, EtcdWatchStatus, IgnoredKey, MAX_MEMBER_BYTES,
};

use crate::error::{Error, Result};

/// The prefix every key goes under unless told otherwise.
pub const DEFAULT_PREFIX: &str = "heartbeat/";

/// Checks a key prefix: 1 to 128 printable ASCII bytes without spaces.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > 128 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidConfig(format!(
            "etcd prefix {prefix:?} must be 1 to 128 printable ASCII bytes without spaces"
        )));
    }
    Ok(())
}

/// Who publishes: `<host>/<pid>-<uuid>`, the part every key of one process
/// shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// The host name (a `/` in it is replaced by `_`).
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The run id: tells two processes that had the same pid apart.
    pub uuid: String,
}

impl Publisher {
    /// This process, with `uuid` as its run id.
    pub fn this_process(uuid: impl Into<String>) -> Publisher {
        let host = crate::process::hostname().replace('/', "_");
        Publisher { host, pid: std::process::id(), uuid: uuid.into() }
    }

    /// `<host>/<pid>-<uuid>`.
    pub fn id(&self) -> String {
        format!("{}/{}-{}", self.host, self.pid, self.uuid)
    }

    /// The process's own key: `<prefix>hosts/<host>/<pid>-<uuid>`.
    pub fn process_key(&self, prefix: &str) -> String {
        format!("{prefix}hosts/{}", self.id())
    }

    /// A session's key: `<prefix>sessions/<host>/<pid>-<uuid>/<session>`.
    pub fn session_key(&self, prefix: &str, session: &str) -> String {
        format!("{prefix}sessions/{}/{session}", self.id())
    }

    /// A peer's key: `<prefix>peers/<host>/<pid>-<uuid>/<nick>`.
    pub fn peer_key(&self, prefix: &str, nick: &str) -> String {
        format!("{prefix}peers/{}/{nick}", self.id())
    }
}

/// What a monitor publishes for a session, and a hub for a peer: the value
/// of a `sessions/...` or `peers/...` key, as JSON. Written on change only
/// (join, leave, state change), never on every beat: the member is as alive
/// as its owner's process key (`hosts/<owner>`) says, in the state given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// `session` or `peer`.
    pub kind: String,
    /// The session id, or the peer's nick.
    pub id: String,
    /// The publisher, `<host>/<pid>-<uuid>` ([`Publisher::id`]).
    pub owner: String,
    /// `alive` while healthy; any other word (`warning`, `failed`, ...)
    /// says why not.
    pub state: String,
    /// When it entered this state (RFC 3339, UTC).
    pub since: String,
    /// Anything else worth showing (agent type, location, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// The state word of a healthy member.
pub const ALIVE: &str = "alive";
