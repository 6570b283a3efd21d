//! [`SessionSnapshot`]: one session as [`Monitor::snapshot`](super::Monitor::snapshot)
//! saves it and [`Monitor::restore`](super::Monitor::restore) takes it back,
//! and the serde helpers that give it (and [`PhiConfig`](super::PhiConfig)) a
//! JSON form people can read: durations as seconds, times as RFC 3339.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Detector;
use crate::state::{format_timestamp, parse_timestamp};

/// One session as saved by [`Monitor::snapshot`](super::Monitor::snapshot),
/// for persistence across restarts.
///
/// In JSON, durations are seconds (`timeout_sec`, a number) and `last_beat`
/// is RFC 3339 UTC text; a detector is `{"kind": "fixed"}` or
/// `{"kind": "phi", "threshold": 8.0, ...}`. `None` settings are the
/// monitor's own, whatever monitor the session is restored into.
///
/// ```
/// # use std::time::{Duration, UNIX_EPOCH};
/// # use heartbeat::SessionSnapshot;
/// let json = r#"{"session_id": "cron-1", "agent_type": "cron", "timeout_sec": 86400,
///               "last_beat": "2025-01-02T03:04:05Z"}"#;
/// let s: SessionSnapshot = serde_json::from_str(json).unwrap();
/// assert_eq!(s.timeout, Some(Duration::from_secs(86_400)));
/// assert_eq!(s.last_beat, UNIX_EPOCH + Duration::from_secs(1_735_787_045));
/// assert_eq!((s.paused, s.failed, s.missed_beats, s.detector), (false, false, 0, None));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The session id.
    pub session_id: String,
    /// Its agent type.
    pub agent_type: String,
    /// Its own timeout (`None`: the monitor's). JSON `timeout_sec`.
    #[serde(rename = "timeout_sec", default, with = "opt_secs", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Its own max missed beats (`None`: the monitor's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_missed_beats: Option<u32>,
    /// Its own detector (`None`: the monitor's). A phi session's window of
    /// intervals is not saved: it starts afresh on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<Detector>,
    /// Whether it was paused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Whether it had reported a failure not yet cleared by a beat.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
    /// Misses counted since its last beat.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed_beats: u32,
    /// Its last beat (or registration, resume), as wall-clock time.
    /// RFC 3339 text in JSON, to the microsecond.
    #[serde(with = "rfc3339")]
    pub last_beat: SystemTime,
}

/// A [`Duration`] as a number of seconds (`f64`).
// Defaults are left out of the JSON: a million sessions' state file stays
// about 100 bytes a session.
#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(crate) mod secs {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| serde::de::Error::custom(format!("{secs} is not a number of seconds >= 0")))
    }
}

/// An `Option<Duration>` as a number of seconds or `null`.
pub(crate) mod opt_secs {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{secs} is not a number of seconds >= 0"))),
        }
    }
}

/// A [`SystemTime`] as RFC 3339 text ([`format_timestamp`] / [`parse_timestamp`]).
mod rfc3339 {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_timestamp(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse_timestamp(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 timestamp")))
    }
}
