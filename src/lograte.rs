//! Rate limits for the log lines others can cause.
//!
//! A remote party can make much of what this crate logs happen as often as
//! it likes: a failure report, a hook dropped for a full queue, a peer
//! evicted, a request that panics the handler. Each such line goes through
//! a [`LogLimit`], one per call site (a `static`, so per process, as the log
//! is): at most [`LINES`] lines per [`WINDOW`]; the others are counted, and
//! the count comes with the next line written
//! (`...; 4980 similar lines suppressed in the last 9.8s`), or as a summary
//! line from [`LogLimit::flush`] (which owners call where a thread wakes
//! anyway) or [`LogLimit::finish`] (when they stop). A flood thus costs at
//! most `LINES + 1` lines per window per call site, and no count is lost.
//!
//! The time is the caller's: its injected [`Clock`](crate::Clock) where it
//! has one, so tests drive a limit with a [`ManualClock`](crate::ManualClock).
//!
//! Lines at debug and trace are not limited: they are off by default (the
//! binary logs at warn, and at info only its own lines and etcd's), and
//! whoever turns them on asked for every one.

use std::fmt;
use std::time::{Duration, Instant};

use log::Level;
use parking_lot::Mutex;

/// Lines a call site may write per [`WINDOW`].
pub(crate) const LINES: u32 = 10;
/// The window [`LINES`] are counted over.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// The limit of one call site: see the [module docs](self).
pub(crate) struct LogLimit {
    target: &'static str,
    level: Level,
    /// What the lines say, for a summary line: "hook queue full".
    what: &'static str,
    lines: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, PartialEq, Eq)]
struct State {
    /// When the current window began; `None` before the first line.
    since: Option<Instant>,
    /// Lines written in the current window.
    written: u32,
    /// Lines suppressed since the last line (or summary) written.
    suppressed: u64,
    /// When the first of those was suppressed.
    first_suppressed: Option<Instant>,
}

/// How many lines were suppressed, over how long: the count a written line
/// carries (its `Display` is empty when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Note {
    count: u64,
    over: Duration,
}

impl Note {
    /// The lines suppressed (0: the line carries no count).
    #[cfg(test)]
    pub(crate) fn count(self) -> u64 {
        self.count
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count {
            0 => Ok(()),
            1 => write!(f, "; 1 similar line suppressed in the last {:.1}s", self.over.as_secs_f64()),
            n => write!(f, "; {n} similar lines suppressed in the last {:.1}s", self.over.as_secs_f64()),
        }
    }
}

/// A [`LogLimit`] for the calling module's target: `log_limit!(Level::Warn, "what")`.
macro_rules! log_limit {
    ($level:expr, $what:expr) => {
        $crate::lograte::LogLimit::new(module_path!(), $level, $what)
    };
}
pub(crate) use log_limit;

impl LogLimit {
    /// A limit of [`LINES`] per [`WINDOW`] for lines at `level` under
    /// `target` (the module's path: [`log_limit!`] fills it in); `what`
    /// names them in a summary line.
    pub(crate) const fn new(target: &'static str, level: Level, what: &'static str) -> LogLimit {
        LogLimit {
            target,
            level,
            what,
            lines: LINES,
            window: WINDOW,
            state: Mutex::new(State { since: None, written: 0, suppressed: 0, first_suppressed: None }),
        }
    }

    /// The same with `lines` per `window` (at least one line).
    pub(crate) const fn per(mut self, lines: u32, window: Duration) -> LogLimit {
        self.lines = if lines == 0 { 1 } else { lines };
        self.window = window;
        self
    }

    /// Writes `args` at `now` if the limit allows, with the count of the
    /// lines suppressed before it; counts it otherwise. A line the logger
    /// would not write anyway is neither written nor counted.
    pub(crate) fn log(&self, now: Instant, args: fmt::Arguments<'_>) {
        if !log::log_enabled!(target: self.target, self.level) {
            return;
        }
        if let Some(note) = self.admit(now) {
            log::log!(target: self.target, self.level, "{args}{note}");
        }
    }

    /// Whether a line may be written at `now`: `Some` with the count it
    /// must carry, or `None` (the line is counted as suppressed). For a
    /// caller that writes the line itself, or needs to know.
    pub(crate) fn admit(&self, now: Instant) -> Option<Note> {
        let mut s = self.state.lock();
        if s.since.is_none_or(|since| now.saturating_duration_since(since) >= self.window) {
            s.since = Some(now);
            s.written = 0;
        }
        if s.written < self.lines {
            s.written += 1;
            return Some(s.take(now));
        }
        if s.suppressed == 0 {
            s.first_suppressed = Some(now);
        }
        s.suppressed = s.suppressed.saturating_add(1);
        None
    }

    /// Writes a summary of the lines suppressed, if any, once their window
    /// is over (no line of its kind came to carry the count). Cheap: call
    /// it where a thread wakes anyway.
    pub(crate) fn flush(&self, now: Instant) {
        self.summary(now, false);
    }

    /// Writes a summary of the lines suppressed, if any, now: when the
    /// owner stops.
    pub(crate) fn finish(&self, now: Instant) {
        self.summary(now, true);
    }

    fn summary(&self, now: Instant, force: bool) {
        let note = {
            let mut s = self.state.lock();
            let over = s.since.is_none_or(|since| now.saturating_duration_since(since) >= self.window);
            if s.suppressed == 0 || !(force || over) {
                return;
            }
            s.take(now)
        };
        // Counted while the level was on: written whatever it is now.
        let note = note.to_string();
        let note = note.strip_prefix("; ").unwrap_or(&note);
        log::log!(target: self.target, self.level, "{}: {note}", self.what);
    }
}

impl State {
    /// The count of suppressed lines, which is reset.
    fn take(&mut self, now: Instant) -> Note {
        let over = self.first_suppressed.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let note = Note { count: self.suppressed, over };
        self.suppressed = 0;
        self.first_suppressed = None;
        note
    }
}

impl fmt::Debug for LogLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLimit")
            .field("target", &self.target)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use super::*;
    use crate::{Clock, ManualClock};

    /// The lines logged under this module's target, for the tests that
    /// look at what is written (one logger per test process: others'
    /// lines are not taken).
    struct Capture(Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.target().starts_with(module_path!())
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                self.0.lock().push(format!("{} {}: {}", record.level(), record.target(), record.args()));
            }
        }
        fn flush(&self) {}
    }

    fn capture() -> &'static Capture {
        static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
            // Another logger would already be set only by another test of this module.
            let _ = log::set_logger(capture);
            log::set_max_level(log::LevelFilter::Trace);
            capture
        })
    }

    /// The captured lines under `target`, taken.
    fn lines_of(target: &str) -> Vec<String> {
        let mut all = capture().0.lock();
        let (mine, others): (Vec<String>, Vec<String>) =
            all.drain(..).partition(|l| l.split(' ').nth(1).is_some_and(|t| t.starts_with(target)));
        *all = others;
        mine
    }

    fn limit(lines: u32, window: Duration) -> LogLimit {
        LogLimit::new("heartbeat::lograte::tests::x", Level::Warn, "x happened").per(lines, window)
    }

    fn admitted(limit: &LogLimit, clock: &Arc<ManualClock>, n: usize) -> Vec<Note> {
        (0..n).filter_map(|_| limit.admit(clock.now())).collect()
    }

    #[test]
    fn a_window_takes_its_lines_and_counts_the_rest() {
        let clock = ManualClock::new();
        let limit = limit(3, Duration::from_secs(10));
        let notes = admitted(&limit, &clock, 1000);
        assert_eq!(notes.iter().map(|n| n.count()).collect::<Vec<_>>(), [0, 0, 0]);
        assert_eq!(limit.state.lock().suppressed, 997);
        // Still the same window a hair before its end.
        clock.advance(Duration::from_millis(9_999));
        assert!(limit.admit(clock.now()).is_none());
        clock.advance(Duration::from_millis(1));
        let note = limit.admit(clock.now()).unwrap();
        assert_eq!(note, Note { count: 998, over: Duration::from_secs(10) });
        assert_eq!(note.to_string(), "; 998 similar lines suppressed in the last 10.0s");
        // The count was handed over: the next lines carry none.
        assert_eq!(limit.admit(clock.now()).unwrap().count(), 0);
    }

    #[test]
    fn a_steady_flood_costs_lines_per_window_and_loses_no_count() {
        let clock = ManualClock::new();
        let limit = limit(10, Duration::from_secs(10));
        let (mut written, mut counted) = (0u64, 0u64);
        // 100 lines a second for 100 s: 10,000 lines.
        for _ in 0..10_000 {
            if let Some(note) = limit.admit(clock.now()) {
                written += 1;
                counted += note.count();
            }
            clock.advance(Duration::from_millis(10));
        }
        assert_eq!(written, 100, "10 lines in each of the 10 windows");
        assert_eq!(written + counted + limit.state.lock().suppressed, 10_000);
    }

    #[test]
    fn one_note_per_line_in_its_words() {
        assert_eq!(Note { count: 0, over: Duration::ZERO }.to_string(), "");
        assert_eq!(
            Note { count: 1, over: Duration::from_millis(250) }.to_string(),
            "; 1 similar line suppressed in the last 0.2s"
        );
    }

    #[test]
    fn lines_are_written_with_their_count_and_summaries_wait_for_the_window() {
        let target = "heartbeat::lograte::tests::written";
        let _ = capture();
        let clock = ManualClock::new();
        let limit = LogLimit::new(target, Level::Warn, "peers evicted").per(2, Duration::from_secs(10));
        for i in 0..50 {
            limit.log(clock.now(), format_args!("evicting peer {i}"));
        }
        clock.advance(Duration::from_secs(4));
        limit.flush(clock.now());
        assert_eq!(
            lines_of(target),
            [format!("WARN {target}: evicting peer 0"), format!("WARN {target}: evicting peer 1")],
            "no summary before the window is over"
        );
        clock.advance(Duration::from_secs(6));
        limit.flush(clock.now());
        limit.flush(clock.now());
        assert_eq!(
            lines_of(target),
            [format!("WARN {target}: peers evicted: 48 similar lines suppressed in the last 10.0s")],
            "one summary once the window is over"
        );
        for i in 0..3 {
            limit.log(clock.now(), format_args!("evicting peer {i}"));
        }
        limit.finish(clock.now());
        limit.finish(clock.now());
        assert_eq!(
            lines_of(target),
            [
                format!("WARN {target}: evicting peer 0"),
                format!("WARN {target}: evicting peer 1"),
                format!("WARN {target}: peers evicted: 1 similar line suppressed in the last 0.0s"),
            ],
            "finish tells what is left at once"
        );
    }

    #[test]
    fn lines_the_logger_does_not_want_are_not_counted() {
        let _ = capture();
        let clock = ManualClock::new();
        // Not taken by the capture's filter: not written, not counted.
        let limit = LogLimit::new("heartbeat::elsewhere", Level::Warn, "x").per(1, Duration::from_secs(10));
        for _ in 0..10 {
            limit.log(clock.now(), format_args!("x"));
        }
        assert_eq!(limit.state.lock().written, 0);
        assert_eq!(limit.state.lock().suppressed, 0);
    }

    #[test]
    fn a_clock_that_another_owner_set_behind_does_not_panic_or_reopen() {
        // A static is shared by every owner: their clocks may disagree.
        let clock = ManualClock::new();
        let limit = limit(1, Duration::from_secs(10));
        clock.advance(Duration::from_secs(100));
        assert!(limit.admit(clock.now()).is_some());
        let behind = clock.now() - Duration::from_secs(50);
        assert!(limit.admit(behind).is_none());
        limit.flush(behind);
        assert_eq!(limit.state.lock().suppressed, 1);
    }
}
