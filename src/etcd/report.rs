//! A [`Presence`](super::Presence)'s state on a status page and in
//! Prometheus metrics, shared by the monitor service and the hub's status
//! endpoint.

use super::{PresenceState, PresenceStatus};
use crate::http::metrics::{family, sample};

/// The `heartbeat_etcd_*` series for `status`.
pub(crate) fn prometheus(out: &mut String, status: &PresenceStatus) {
    family(out, "heartbeat_etcd_up", "gauge", "1 while the etcd lease is held and every key written.");
    sample(out, "heartbeat_etcd_up", None, u64::from(status.state == PresenceState::Up));
    family(out, "heartbeat_etcd_state", "gauge", "The etcd presence's state (1 for the current one).");
    for state in [PresenceState::Connecting, PresenceState::Up, PresenceState::Down, PresenceState::Stopped] {
        sample(
            out,
            "heartbeat_etcd_state",
            Some(("state", state.as_str())),
            u64::from(status.state == state),
        );
    }
    family(out, "heartbeat_etcd_keys", "gauge", "Keys this process publishes under its lease.");
    sample(out, "heartbeat_etcd_keys", None, status.keys as u64);
    family(out, "heartbeat_etcd_pending", "gauge", "Keys whose latest value etcd does not have yet.");
    sample(out, "heartbeat_etcd_pending", None, status.pending as u64);
    family(out, "heartbeat_etcd_lease_ttl_seconds", "gauge", "The lease's TTL.");
    sample(out, "heartbeat_etcd_lease_ttl_seconds", None, status.ttl_secs);
    for (name, help, value) in [
        ("heartbeat_etcd_writes_total", "Key writes and deletes etcd took.", status.writes),
        (
            "heartbeat_etcd_grants_total",
            "Leases granted (more than one: the lease was lost and everything republished).",
            status.grants,
        ),
        ("heartbeat_etcd_keepalives_total", "Lease keep-alives etcd answered.", status.keepalives),
        ("heartbeat_etcd_failures_total", "Requests to etcd that failed.", status.failures),
    ] {
        family(out, name, "counter", help);
        sample(out, name, None, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_with_its_value() {
        let status = PresenceStatus {
            state: PresenceState::Down,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            lease: None,
            ttl_secs: 10,
            keys: 3,
            pending: 2,
            last_error: Some("refused".into()),
            since_unix: 0,
            grants: 1,
            keepalives: 7,
            writes: 5,
            failures: 4,
        };
        let mut out = String::new();
        prometheus(&mut out, &status);
        for line in [
            "heartbeat_etcd_up 0",
            "heartbeat_etcd_state{state=\"down\"} 1",
            "heartbeat_etcd_state{state=\"up\"} 0",
            "heartbeat_etcd_keys 3",
            "heartbeat_etcd_pending 2",
            "heartbeat_etcd_lease_ttl_seconds 10",
            "heartbeat_etcd_writes_total 5",
            "heartbeat_etcd_grants_total 1",
            "heartbeat_etcd_keepalives_total 7",
            "heartbeat_etcd_failures_total 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
