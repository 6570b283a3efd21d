//! Sweeps and the wheel's upkeep: when a session must next be looked at,
//! moving deadlines on ([`Monitor::maintain`](super::Monitor::maintain)),
//! judging the sessions due, and the log lines that come of it.

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::wheel::Entry;
use super::{Event, Inner, NO_SWEEP_YET, Padded, RemovalReason, Session, Shard, ms_to_nanos};
use crate::ticker::contained;

/// Per-session log lines of each kind (warned, timed out) a sweep writes;
/// the rest are counted in one line.
const LOG_LINES_PER_SWEEP: usize = 20;
/// How often, at most, a summary of unhealthy sessions is logged.
const SUMMARY_EVERY: u64 = 60_000_000_000;

/// What a sweep decided about one due session.
enum Verdict {
    /// Not dying: look again at this instant.
    Rearm(u64),
    /// This round does not count (a late sweep): look again next sweep.
    Again,
    /// A missed beat: the last one when `dead`, else look again at the next sweep.
    Missed { phi: Option<f64>, dead: bool },
}

/// How many sessions a sweep warned and timed out, for its log lines.
#[derive(Default)]
struct SweepReport {
    warned: usize,
    timed_out: usize,
}

/// A callback to run once the shard lock is released.
enum Pending {
    Warning(String, u32),
    Timeout(String, String),
}

impl Inner {
    /// One sweep; `guarded`: the sweeper thread's, which may be judged late.
    pub(super) fn sweep(&self, guarded: bool) {
        let inner = self;
        let now = inner.now();
        let previous = inner.last_sweep.load(Ordering::SeqCst);
        let late = guarded
            && previous != NO_SWEEP_YET
            && inner.pause_guard.is_some_and(|bound| {
                now.saturating_sub(previous) > inner.check_interval.saturating_add(bound)
            });
        if late {
            log::warn!(
                "monitor sweep ran {:.3}s after the previous one (interval {:.3}s): this process was paused; \
                 counting no misses this round",
                now.saturating_sub(previous) as f64 / 1e9,
                inner.check_interval as f64 / 1e9
            );
        }
        let mut pending = Vec::new();
        let mut report = SweepReport::default();
        let (mut expired, mut ready) = (Vec::new(), Vec::new());
        for Padded(shard) in inner.shards.iter() {
            let mut shard = shard.lock();
            inner.maintain_shard(&mut shard, now, &mut expired);
            std::mem::swap(&mut ready, &mut shard.ready);
            inner.sweep_shard(&mut shard, &mut ready, now, late, &mut pending, &mut report);
        }
        inner.log_sweep(&report, now);
        for p in pending {
            match p {
                Pending::Warning(id, missed) => {
                    if let Some(f) = &inner.on_warning {
                        contained("on_warning", || f(&id, missed));
                    }
                }
                Pending::Timeout(id, agent) => {
                    if let Some(f) = &inner.on_timeout {
                        contained("on_timeout", || f(&id, &agent));
                    }
                }
            }
        }
        // Lateness is measured from the end of this sweep: slow callbacks
        // delay the next round, and must not make it look like our pause.
        if guarded {
            inner.last_sweep.store(inner.now(), Ordering::SeqCst);
        }
    }

    /// The instant from which `s` must be looked at (ns since epoch): for
    /// the fixed detector, a timeout after its silence began (strictly
    /// after: the seed's miss is "silent for longer than timeout"); for phi,
    /// when phi reaches the warning threshold, or once warned the threshold
    /// (a microsecond later, so that rounding never finds it just short).
    pub(super) fn deadline_of(&self, s: &Session) -> u64 {
        let since = Self::silent_since(s);
        match s.phi() {
            None => since.saturating_add(self.timeout_of(s)).saturating_add(1),
            Some(p) => {
                let y = if s.missed > 0 { p.shared.y_dead } else { p.shared.y_warn };
                let ms = p.stats.silence_ms_at(y, &p.shared.config);
                since.saturating_add(ms_to_nanos(ms)).saturating_add(1_000)
            }
        }
    }

    fn judge(&self, s: &Session, now: u64, late: bool) -> Verdict {
        if now < s.grace_until() {
            return Verdict::Rearm(self.deadline_of(s).max(now.saturating_add(1)));
        }
        let silence = now.saturating_sub(Self::silent_since(s));
        let (missed, dead, phi) = match s.phi() {
            None => {
                let missed = silence > self.timeout_of(s);
                (missed, missed && s.missed.saturating_add(1) >= self.max_missed_of(s), None)
            }
            Some(p) => {
                let c = &p.shared.config;
                let phi = p.stats.phi(Duration::from_nanos(silence), c);
                (phi >= c.warn_threshold, phi >= c.threshold, Some(phi))
            }
        };
        if !missed {
            // Rounding may leave a phi deadline a hair early: then the next sweep.
            Verdict::Rearm(self.deadline_of(s).max(now.saturating_add(1)))
        } else if late {
            // Our own pause, not theirs: look again next round.
            Verdict::Again
        } else {
            Verdict::Missed { phi, dead }
        }
    }

    /// Moves `shard`'s wheel on to `now`: a session that beat since its
    /// deadline came up is re-armed at its new one, the others go on the
    /// ready list. `expired` is scratch space.
    pub(super) fn maintain_shard(&self, shard: &mut Shard, now: u64, expired: &mut Vec<Entry>) {
        expired.clear();
        shard.wheel.expire(now, expired);
        for e in expired.drain(..) {
            let s = &shard.sessions[e.slot as usize];
            if !s.holds(e.generation) {
                continue; // stale, or paused (resume re-arms it)
            }
            let deadline = self.deadline_of(s);
            if deadline > now {
                shard.arm(e.slot, deadline);
            } else {
                shard.make_ready(e.slot);
            }
        }
    }

    /// Judges the sessions of `ready` (taken from the shard's ready list,
    /// which now collects those for the next sweep).
    fn sweep_shard(
        &self,
        shard: &mut Shard,
        ready: &mut Vec<(u32, u32)>,
        now: u64,
        late: bool,
        pending: &mut Vec<Pending>,
        report: &mut SweepReport,
    ) {
        for (slot, generation) in ready.drain(..) {
            let s = &mut shard.sessions[slot as usize];
            if !s.holds(generation) {
                continue; // stale, or paused (resume re-arms it)
            }
            match self.judge(s, now, late) {
                Verdict::Rearm(at) => shard.arm(slot, at),
                Verdict::Again => shard.make_ready(slot),
                Verdict::Missed { phi, dead } => {
                    // The first miss warns, also when it is the last one (as the
                    // seed does with max_missed_beats = 1, and as phi does when it
                    // passes both thresholds between two sweeps): never dead
                    // without a warning first.
                    s.missed = s.missed.saturating_add(1);
                    if s.missed == 1 {
                        if !s.failed {
                            self.unhealthy.fetch_add(1, Ordering::Relaxed);
                        }
                        let id = s.id.to_string();
                        report.warned += 1;
                        if report.warned <= LOG_LINES_PER_SWEEP {
                            match phi {
                                Some(phi) => log::warn!("session {id} missed a heartbeat (phi {phi:.2})"),
                                None => log::warn!("session {id} missed a heartbeat"),
                            }
                        }
                        self.emit(Event::Warning { session_id: id.clone(), missed_beats: 1, phi });
                        pending.push(Pending::Warning(id, 1));
                    }
                    if !dead {
                        if s.phi().is_some() {
                            // Looked at again when phi would reach the threshold.
                            let at = self.deadline_of(s).max(now.saturating_add(1));
                            shard.arm(slot, at);
                        } else {
                            shard.make_ready(slot);
                        }
                        continue;
                    }
                    let id = s.id.to_string();
                    let agent = self.agents.read().names[s.agent as usize].to_string();
                    let missed_beats = s.missed;
                    report.timed_out += 1;
                    if report.timed_out <= LOG_LINES_PER_SWEEP {
                        log::error!("session {id} ({agent}) timed out");
                    }
                    let hash = self.hasher.hash_one(&*s.id);
                    self.remove(shard, hash, slot);
                    self.emit(Event::TimedOut {
                        session_id: id.clone(),
                        agent_type: agent.clone(),
                        missed_beats,
                    });
                    self.emit(Event::Removed { session_id: id.clone(), reason: RemovalReason::TimedOut });
                    pending.push(Pending::Timeout(id, agent));
                }
            }
        }
    }

    /// The lines a sweep adds to the per-session ones it wrote: how many
    /// were left out, at most every minute a summary of the unhealthy, and
    /// the count of failure reports not logged (once their window is over).
    fn log_sweep(&self, report: &SweepReport, now: u64) {
        super::FAILURES.flush(self.clock.now());
        for (count, what) in [(report.warned, "warned"), (report.timed_out, "timed out")] {
            if count > LOG_LINES_PER_SWEEP {
                log::warn!(
                    "{} more sessions {what} in this sweep ({count} in all)",
                    count - LOG_LINES_PER_SWEEP
                );
            }
        }
        let unhealthy = self.unhealthy.load(Ordering::Relaxed);
        let last = self.last_summary.load(Ordering::Relaxed);
        if unhealthy > 0 && (last == 0 || now.saturating_sub(last) >= SUMMARY_EVERY) {
            self.last_summary.store(now.max(1), Ordering::Relaxed);
            log::info!(
                "monitor: {unhealthy} of {} sessions unhealthy (warned or failed)",
                self.registered.load(Ordering::Relaxed)
            );
        }
    }
}
