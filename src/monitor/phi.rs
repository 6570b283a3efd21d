//! The phi-accrual failure detector (Hayashibara et al., 2004) as Akka and
//! Pekko implement it (`akka.remote.PhiAccrualFailureDetector`).
//!
//! This is a plain data structure: no clock, no threads. Callers measure the
//! intervals between heartbeats and the silence since the last one, and pass
//! them in as [`Duration`]s.
//!
//! Each session keeps a sliding window of its recent inter-beat intervals.
//! From their mean and standard deviation the detector computes *phi*, the
//! suspicion level after a given silence: `phi = -log10(P)`, where `P` is the
//! (approximated, logistic) probability that the next beat arrives even later
//! than now. phi 1 means a 10 % chance that the peer is still alive and merely
//! late, phi 8 (Akka's default threshold) a 10^-8 chance.
//!
//! Two estimators of that mean and deviation are offered
//! ([`PhiEstimator`]):
//! - `Ewma` (the default): a few words per session. For the first
//!   `(max_samples + 1) / 2` intervals (seeds included) it is the exact mean
//!   and population variance of all of them (Welford's update with weight
//!   `1/n`), the same numbers Akka's window gives; from then on each new
//!   interval has weight `2 / (max_samples + 1)`, so the estimate has the
//!   window's average age, and older intervals fade exponentially where
//!   Akka's window drops the oldest at once.
//! - `Window`: Akka's sliding window itself, `max_samples` intervals of 4
//!   bytes per session (4 KB at the default 1000).
//!
//! Recording a beat and computing phi never allocate: the window allocates its
//! ring buffer once, when it is created.

use std::f64::consts::LN_10;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Coefficients of Akka's logistic approximation of the normal CDF:
/// `e = exp(-y * (A + B * y^2))`.
const A: f64 = 1.5976;
/// See [`A`].
const B: f64 = 0.070566;

/// Settings of a phi-accrual detector.
///
/// Defaults are Akka's: `threshold` 8.0, `max_samples` 1000,
/// `min_std_deviation` 100 ms, `acceptable_pause` 3 s, `expected_interval`
/// 10 s (the first estimate, before any interval is known); plus our
/// `warn_threshold` 4.0, the phi at which a session is warned about before it
/// is declared dead.
///
/// In JSON (serde), durations are seconds with a `_sec` suffix
/// (`min_std_deviation_sec`, `acceptable_pause_sec`, `expected_interval_sec`),
/// and missing fields take their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhiConfig {
    /// phi at or above which a session is declared dead (Akka: 8.0).
    pub threshold: f64,
    /// phi at or above which a session is warned about, before it reaches
    /// `threshold` (4.0).
    pub warn_threshold: f64,
    /// How many inter-beat intervals the estimate remembers (Akka: 1000):
    /// the window's length with [`PhiEstimator::Window`] (4 bytes each per
    /// session), the span of the weighted estimate (weight
    /// `2 / (max_samples + 1)`) with [`PhiEstimator::Ewma`], which costs the
    /// same whatever it is. From 2 to [`PhiConfig::MAX_SAMPLES`].
    pub max_samples: usize,
    /// Floor of the standard deviation used to compute phi (Akka: 100 ms), so
    /// that a very regular peer is not declared dead by a small delay. Should
    /// be above zero, as Akka requires.
    #[serde(rename = "min_std_deviation_sec", with = "super::snapshot::secs")]
    pub min_std_deviation: Duration,
    /// Extra silence tolerated on top of the mean interval before phi starts
    /// to rise, e.g. for garbage-collection pauses or network hiccups
    /// (Akka: 3 s). Added to the mean when phi is computed.
    #[serde(rename = "acceptable_pause_sec", with = "super::snapshot::secs")]
    pub acceptable_pause: Duration,
    /// The interval assumed before any has been measured (Akka's
    /// `heartbeat-interval` first estimate: 10 s). Seeds the window with two
    /// samples, `expected - expected / 4` and `expected + expected / 4`.
    #[serde(rename = "expected_interval_sec", with = "super::snapshot::secs")]
    pub expected_interval: Duration,
    /// How the mean and deviation of the intervals are kept: constant
    /// memory (`Ewma`, the default) or Akka's window of `max_samples`
    /// intervals. In JSON `"estimator": "ewma"` or `"window"`, left out
    /// when it is the default.
    #[serde(skip_serializing_if = "PhiEstimator::is_default")]
    pub estimator: PhiEstimator,
}

/// How a phi detector estimates the mean and standard deviation of a
/// session's inter-beat intervals (see [`PhiConfig::estimator`]).
///
/// Both give the same numbers for the first `(max_samples + 1) / 2`
/// intervals (the exact mean and population deviation of all of them,
/// seeds included). After that the window forgets its oldest interval at
/// each beat, all at once, and the exponentially weighted estimate (weight
/// `2 / (max_samples + 1)`, the window's average age) lets every old
/// interval fade a little. After a change of pace (a drift, a new rhythm
/// after a restart) the window has fully moved after `max_samples` beats,
/// the weighted estimate about 86% of the way, with the rest fading
/// geometrically; an outlier (a long pause that was not a death) counts
/// fully in the window for `max_samples` beats and then vanishes, where it
/// weighs most at once in the weighted estimate and then fades. A session
/// of steady rhythm gets the same verdicts from both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhiEstimator {
    /// Exponentially weighted mean and variance: 24 bytes per session.
    /// In JSON `"ewma"`.
    #[default]
    Ewma,
    /// Akka's sliding window of `max_samples` intervals: 4 bytes each.
    /// In JSON `"window"`.
    Window,
}

impl PhiEstimator {
    fn is_default(&self) -> bool {
        *self == PhiEstimator::Ewma
    }
}

impl PhiConfig {
    /// The largest `max_samples` a monitor accepts: 10,000 intervals, 40 KB
    /// per session (ten times Akka's default). Longer windows adapt no better
    /// and make a session cost more than its beats are worth.
    pub const MAX_SAMPLES: usize = 10_000;

    /// The largest `threshold` a monitor accepts: phi 100, a 10^-100 chance
    /// of being wrong. Larger ones only postpone death without meaning
    /// anything more.
    pub const MAX_THRESHOLD: f64 = 100.0;
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            warn_threshold: 4.0,
            max_samples: 1000,
            min_std_deviation: Duration::from_millis(100),
            acceptable_pause: Duration::from_secs(3),
            expected_interval: Duration::from_secs(10),
            estimator: PhiEstimator::Ewma,
        }
    }
}

/// Akka's phi for a silence of `time_diff_ms` given the interval distribution's
/// `mean_ms` and `std_ms`, all in milliseconds.
///
/// ```text
/// y = (time_diff - mean) / std
/// e = exp(-y * (1.5976 + 0.070566 * y * y))
/// phi = if time_diff > mean { -log10(e / (1 + e)) } else { -log10(1 - 1 / (1 + e)) }
/// ```
///
/// `mean_ms` and `std_ms` are used as given: callers add the acceptable pause
/// to the mean and apply the minimum standard deviation. `std_ms` must be
/// above zero. phi is 0 (or close) long before the mean, `log10(2)` ≈ 0.301 at
/// the mean, and grows without bound (up to infinity) afterwards.
pub fn phi(time_diff_ms: f64, mean_ms: f64, std_ms: f64) -> f64 {
    let y = (time_diff_ms - mean_ms) / std_ms;
    let e = (-y * (A + B * y * y)).exp();
    if time_diff_ms > mean_ms { -(e / (1.0 + e)).log10() } else { -(1.0 - 1.0 / (1.0 + e)).log10() }
}

/// The sliding window of inter-beat intervals of one session.
///
/// Intervals are stored as whole milliseconds (`u32`, saturating at about 49
/// days) in a ring buffer allocated once by [`PhiWindow::new`]; running integer
/// sums make the mean and standard deviation O(1) and exact. Memory per window:
/// the buffer, 4 bytes × `max_samples` (4000 bytes with the default 1000),
/// plus 64 bytes inline on 64-bit targets.
#[derive(Debug, Clone)]
pub(crate) struct PhiWindow {
    /// Ring buffer of samples in milliseconds; its length is the capacity.
    buf: Box<[u32]>,
    /// Index of the oldest sample.
    head: usize,
    /// Number of samples held.
    len: usize,
    /// Sum of the samples held.
    sum: u64,
    /// Sum of the squares of the samples held.
    sum_sq: u128,
}

impl PhiWindow {
    /// Preallocates `max_samples` slots (at least 2) and seeds the window as
    /// Akka does, with two samples `mean - mean / 4` and `mean + mean / 4`,
    /// where `mean` is `expected_interval` in whole milliseconds (integer
    /// division, as Akka's `Long` millis).
    pub(crate) fn new(config: &PhiConfig) -> Self {
        let capacity = config.max_samples.max(2);
        let mut window =
            PhiWindow { buf: vec![0; capacity].into_boxed_slice(), head: 0, len: 0, sum: 0, sum_sq: 0 };
        let mean = config.expected_interval.as_millis();
        let std_deviation = mean / 4;
        window.push_ms(saturate_ms(mean - std_deviation));
        window.push_ms(saturate_ms(mean + std_deviation));
        window
    }

    /// Adds one interval (stored as whole milliseconds, saturating at
    /// `u32::MAX`), dropping the oldest sample when the window is full.
    pub(crate) fn record(&mut self, interval: Duration) {
        self.push_ms(saturate_ms(interval.as_millis()));
    }

    /// Mean of the window, ms.
    pub(crate) fn mean_ms(&self) -> f64 {
        if self.len == 0 {
            return 0.0;
        }
        self.sum as f64 / self.len as f64
    }

    /// Population standard deviation of the window, ms (Akka: variance = mean
    /// of the squares - square of the mean; computed exactly in integers).
    pub(crate) fn std_dev_ms(&self) -> f64 {
        if self.len == 0 {
            return 0.0;
        }
        let n = self.len as u128;
        let sum = u128::from(self.sum);
        // n * sum_sq - sum^2 = n^2 * variance >= 0 (Cauchy-Schwarz), exact while it fits.
        let variance = match n.checked_mul(self.sum_sq) {
            Some(n_sum_sq) => (n_sum_sq - sum * sum) as f64 / (n * n) as f64,
            None => {
                let mean = self.mean_ms();
                (self.sum_sq as f64 / n as f64 - mean * mean).max(0.0)
            }
        };
        variance.sqrt()
    }

    /// phi after `since_last` of silence:
    /// `phi(since_last_ms, mean + acceptable_pause_ms, max(std, min_std_ms))`.
    #[cfg(test)]
    pub(crate) fn phi(&self, since_last: Duration, config: &PhiConfig) -> f64 {
        phi(duration_ms(since_last), self.pause_mean_ms(config), self.effective_std_ms(config))
    }

    /// How long after the last beat phi reaches `target` (e.g. the threshold):
    /// `mean + acceptable_pause + y_for_phi(target) * max(std, min_std)`.
    ///
    /// Saturates at zero (a `target` at or below zero is reached at once) and
    /// at [`Duration::MAX`] (an infinite or NaN `target` is never reached).
    #[cfg(test)]
    pub(crate) fn silence_until(&self, target: f64, config: &PhiConfig) -> Duration {
        let y = y_for_phi(target);
        if y.is_nan() {
            return Duration::MAX;
        }
        let ms = self.pause_mean_ms(config) + y * self.effective_std_ms(config);
        if ms.is_nan() || ms <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX)
    }

    /// Number of samples held (including the two seeds until they are pushed
    /// out).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends a sample, overwriting the oldest when full.
    fn push_ms(&mut self, ms: u32) {
        let capacity = self.buf.len();
        if self.len == capacity {
            let old = self.buf[self.head];
            self.sum -= u64::from(old);
            self.sum_sq -= u128::from(old) * u128::from(old);
            self.buf[self.head] = ms;
            self.head = (self.head + 1) % capacity;
        } else {
            self.buf[(self.head + self.len) % capacity] = ms;
            self.len += 1;
        }
        self.sum += u64::from(ms);
        self.sum_sq += u128::from(ms) * u128::from(ms);
    }

    /// The mean phi is computed against: window mean plus acceptable pause, ms.
    #[cfg(test)]
    fn pause_mean_ms(&self, config: &PhiConfig) -> f64 {
        self.mean_ms() + duration_ms(config.acceptable_pause)
    }

    /// The standard deviation phi is computed with: at least
    /// `min_std_deviation`, and never zero (a zero `min_std_deviation` with a
    /// constant window would make phi a step from `log10(2)` to infinity
    /// rather than NaN at the mean).
    #[cfg(test)]
    fn effective_std_ms(&self, config: &PhiConfig) -> f64 {
        self.std_dev_ms().max(duration_ms(config.min_std_deviation)).max(f64::MIN_POSITIVE)
    }
}

/// A session's interval statistics, by either estimator.
///
/// `Ewma` is the constant-memory estimate: exponentially weighted mean and
/// variance (West's incremental update), in milliseconds, seeded as
/// [`PhiWindow::new`] seeds its window (two samples around the expected
/// interval). The `n`-th sample has weight `max(1/n, 2 / (max_samples + 1))`:
/// with weight `1/n` the update is Welford's, and gives the exact mean and
/// population variance of every sample so far; then the weight stays at
/// `2 / (max_samples + 1)`. (Its fields are the variant's own, not a struct's,
/// so that the enum is 24 bytes: the tag shares a word with `n`.)
#[derive(Debug, Clone)]
pub(crate) enum PhiStats {
    Ewma {
        mean: f64,
        variance: f64,
        /// Samples so far, counting the two seeds (saturating).
        n: u32,
    },
    Window(Box<PhiWindow>),
}

impl PhiStats {
    pub(crate) fn new(config: &PhiConfig) -> Self {
        match config.estimator {
            PhiEstimator::Ewma => {
                let mean = config.expected_interval.as_millis();
                let std_deviation = mean / 4;
                let low = f64::from(saturate_ms(mean - std_deviation));
                let high = f64::from(saturate_ms(mean + std_deviation));
                let half = (high - low) / 2.0;
                PhiStats::Ewma { mean: (low + high) / 2.0, variance: half * half, n: 2 }
            }
            PhiEstimator::Window => PhiStats::Window(Box::new(PhiWindow::new(config))),
        }
    }

    /// Adds one interval, as whole milliseconds saturating at `u32::MAX` (as
    /// the window stores them).
    pub(crate) fn record(&mut self, interval: Duration, config: &PhiConfig) {
        match self {
            PhiStats::Ewma { mean, variance, n } => {
                let x = f64::from(saturate_ms(interval.as_millis()));
                *n = n.saturating_add(1);
                let floor = 2.0 / (config.max_samples.max(2) as f64 + 1.0);
                let alpha = (1.0 / f64::from(*n)).max(floor);
                let diff = x - *mean;
                let increment = alpha * diff;
                *mean += increment;
                *variance = ((1.0 - alpha) * (*variance + diff * increment)).max(0.0);
            }
            PhiStats::Window(w) => w.record(interval),
        }
    }

    pub(crate) fn mean_ms(&self) -> f64 {
        match self {
            PhiStats::Ewma { mean, .. } => *mean,
            PhiStats::Window(w) => w.mean_ms(),
        }
    }

    pub(crate) fn std_dev_ms(&self) -> f64 {
        match self {
            PhiStats::Ewma { variance, .. } => variance.sqrt(),
            PhiStats::Window(w) => w.std_dev_ms(),
        }
    }

    /// phi after `since_last` of silence.
    pub(crate) fn phi(&self, since_last: Duration, config: &PhiConfig) -> f64 {
        phi(
            duration_ms(since_last),
            self.mean_ms() + duration_ms(config.acceptable_pause),
            self.effective_std(config),
        )
    }

    /// The silence, in ms, at which phi reaches the level whose `y` (from
    /// [`y_for_phi`]) is given: `mean + acceptable_pause + y * std`, at least 0.
    pub(crate) fn silence_ms_at(&self, y: f64, config: &PhiConfig) -> f64 {
        let ms = self.mean_ms() + duration_ms(config.acceptable_pause) + y * self.effective_std(config);
        if ms.is_nan() { f64::INFINITY } else { ms.max(0.0) }
    }

    fn effective_std(&self, config: &PhiConfig) -> f64 {
        self.std_dev_ms().max(duration_ms(config.min_std_deviation)).max(f64::MIN_POSITIVE)
    }
}

/// The standardized distance `y` at which Akka's phi formula reaches
/// `phi_target`.
///
/// Solves `-log10(e / (1 + e)) = phi_target` with
/// `e = exp(-y (1.5976 + 0.070566 y^2))`, i.e.
/// `y (1.5976 + 0.070566 y^2) = ln((1 - p) / p) = ln(10^phi_target - 1)` with
/// `p = 10^-phi_target`. The left side is odd and strictly increasing in `y`,
/// so there is exactly one root, found by Newton's method to machine
/// precision. `phi_target` = `log10(2)` gives 0, smaller positive targets give
/// negative `y` (before the mean); a target at or below zero gives negative
/// infinity, an infinite one infinity, NaN gives NaN.
pub(crate) fn y_for_phi(phi_target: f64) -> f64 {
    if phi_target.is_nan() {
        return f64::NAN;
    }
    if phi_target <= 0.0 {
        return f64::NEG_INFINITY;
    }
    // c = ln(10^phi - 1), written to stay accurate for small and huge phi.
    let x = phi_target * LN_10;
    let c = if x <= 1.0 { x.exp_m1().ln() } else { x + (-(-x).exp()).ln_1p() };
    solve_cubic(c)
}

/// The real root of `y (A + B y^2) = c`.
fn solve_cubic(c: f64) -> f64 {
    if c == 0.0 || !c.is_finite() {
        return c;
    }
    // The left side is odd: solve for |c| and restore the sign.
    let target = c.abs();
    if target > 1e300 {
        // The cubic term dominates by ~200 orders of magnitude.
        return (target.cbrt() / B.cbrt()).copysign(c);
    }
    // Both bounds are >= the root (the left side is >= A y and >= B y^3 for
    // y >= 0), and the left side is convex there, so Newton's method descends
    // monotonically onto the root; it stops when rounding prevents progress.
    let mut y = (target / A).min(target.cbrt() / B.cbrt());
    for _ in 0..200 {
        let g = y * (A + B * y * y) - target;
        let next = y - g / (A + 3.0 * B * y * y);
        if next.is_nan() || next >= y {
            break;
        }
        y = next;
    }
    y.copysign(c)
}

/// Whole milliseconds as a `u32`, saturating.
fn saturate_ms(ms: u128) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// A duration in (fractional) milliseconds.
pub(crate) fn duration_ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::LOG10_2;

    /// Akka's test helper: the probability phi stands for.
    fn cdf(phi: f64) -> f64 {
        1.0 - 10f64.powf(-phi)
    }

    fn config(max_samples: usize) -> PhiConfig {
        PhiConfig {
            max_samples,
            acceptable_pause: Duration::ZERO,
            min_std_deviation: Duration::from_millis(100),
            expected_interval: Duration::from_millis(1000),
            ..PhiConfig::default()
        }
    }

    fn close(actual: f64, expected: f64, tolerance: f64) {
        assert!((actual - expected).abs() <= tolerance, "{actual} is not {expected} ± {tolerance}");
    }

    #[test]
    fn defaults_are_akkas() {
        let c = PhiConfig::default();
        assert_eq!(c.threshold, 8.0);
        assert_eq!(c.warn_threshold, 4.0);
        assert_eq!(c.max_samples, 1000);
        assert_eq!(c.min_std_deviation, Duration::from_millis(100));
        assert_eq!(c.acceptable_pause, Duration::from_secs(3));
        assert_eq!(c.expected_interval, Duration::from_secs(10));
    }

    /// Akka's "use good enough cumulative distribution function": standard
    /// normal CDF at y = 0, 0.6, 1.5, 2, 2.5, 3.5, 4.
    #[test]
    fn good_enough_cumulative_distribution_function() {
        close(cdf(phi(0.0, 0.0, 10.0)), 0.5, 0.001);
        close(cdf(phi(6.0, 0.0, 10.0)), 0.7257, 0.001);
        close(cdf(phi(15.0, 0.0, 10.0)), 0.9332, 0.001);
        close(cdf(phi(20.0, 0.0, 10.0)), 0.97725, 0.001);
        close(cdf(phi(25.0, 0.0, 10.0)), 0.99379, 0.001);
        close(cdf(phi(35.0, 0.0, 10.0)), 0.99977, 0.001);
        close(cdf(phi(40.0, 0.0, 10.0)), 0.99997, 0.0001);
    }

    #[test]
    fn phi_increases_with_time_diff() {
        let (mean, std) = (1000.0, 100.0);
        let mut previous = phi(0.0, mean, std);
        assert!(previous >= 0.0);
        // Steps of 0.05 standard deviations, y from -10 to +10, across both branches.
        for step in 1..=400 {
            let t = f64::from(step) * 5.0;
            let current = phi(t, mean, std);
            assert!(current >= previous, "phi({t}) = {current} < {previous}");
            if previous > 1e-9 && current.is_finite() {
                assert!(current > previous, "phi({t}) = {current} not above {previous}");
            }
            previous = current;
        }
        // Just around the mean, where the branches meet.
        let below = phi(mean - 1e-6, mean, std);
        let at = phi(mean, mean, std);
        let above = phi(mean + 1e-6, mean, std);
        assert!(below < at && at < above, "{below} {at} {above}");
        close(at, LOG10_2, 1e-15);
    }

    #[test]
    fn phi_extremes() {
        assert_eq!(phi(1e9, 0.0, 1.0), f64::INFINITY);
        assert_eq!(phi(-1e9, 0.0, 1.0), 0.0);
        assert!(phi(0.0, 1e9, 1.0) >= 0.0);
    }

    #[test]
    fn known_history() {
        let config = config(4);
        let mut window = PhiWindow::new(&config);
        // Seeds 750 and 1250.
        assert_eq!(window.len(), 2);
        assert_eq!(window.mean_ms(), 1000.0);
        assert_eq!(window.std_dev_ms(), 250.0);
        // With std 250: phi(1000) = log10(2).
        close(window.phi(Duration::from_millis(1000), &config), LOG10_2, 1e-12);

        for expected_len in [3, 4, 4, 4] {
            window.record(Duration::from_millis(1000));
            assert_eq!(window.len(), expected_len);
        }
        // The seeds are pushed out: four samples of 1000.
        assert_eq!(window.mean_ms(), 1000.0);
        assert_eq!(window.std_dev_ms(), 0.0);

        // std 0 is floored to min_std 100: y = 0 → e = 1 → phi = -log10(1 - 1/2) = log10(2).
        close(window.phi(Duration::from_millis(1000), &config), LOG10_2, 1e-12);
        // y = (1200 - 1000) / 100 = 2 → e = exp(-2 * (1.5976 + 0.070566 * 4)) = exp(-3.759728)
        // = 0.023290074413669197 → phi = -log10(e / (1 + e)) = log10(1 + 1/e) = 1.6428278854871123.
        let at_1200 = window.phi(Duration::from_millis(1200), &config);
        close(at_1200, 1.642_827_885_487_112_3, 1e-9);
        close(at_1200, phi(1200.0, 1000.0, 100.0), 1e-12);
        let e = (-3.759_728f64).exp();
        close(e, 0.023_290_074_413_669_197, 1e-15);
        close(at_1200, -(e / (1.0 + e)).log10(), 1e-12);
    }

    #[test]
    fn acceptable_pause_shifts_the_mean() {
        let config = PhiConfig { acceptable_pause: Duration::from_millis(500), ..config(4) };
        let window = PhiWindow::new(&config);
        close(window.phi(Duration::from_millis(1500), &config), LOG10_2, 1e-12);
        close(window.phi(Duration::from_millis(2000), &config), phi(2000.0, 1500.0, 250.0), 1e-12);
    }

    #[test]
    fn ring_drops_the_oldest() {
        let config = PhiConfig { max_samples: 3, ..PhiConfig::default() };
        let mut window = PhiWindow::new(&config);
        assert_eq!(window.mean_ms(), 10_000.0); // seeds 7500 and 12500
        for ms in [10, 20, 30, 40] {
            window.record(Duration::from_millis(ms));
        }
        assert_eq!(window.len(), 3);
        assert_eq!(window.mean_ms(), 30.0);
        // Population std of 20, 30, 40: sqrt(200 / 3).
        close(window.std_dev_ms(), (200.0f64 / 3.0).sqrt(), 1e-12);
        // Keep going around the ring several times.
        for ms in 1..=10 {
            window.record(Duration::from_millis(ms));
        }
        assert_eq!(window.mean_ms(), 9.0); // 8, 9, 10
    }

    #[test]
    fn at_least_two_samples() {
        for max_samples in [0, 1, 2] {
            let config = PhiConfig { max_samples, ..config(0) };
            let mut window = PhiWindow::new(&config);
            assert_eq!(window.len(), 2);
            assert_eq!(window.std_dev_ms(), 250.0);
            window.record(Duration::from_millis(2000));
            assert_eq!(window.len(), 2);
            assert_eq!(window.mean_ms(), 1625.0); // 1250 and 2000
        }
    }

    #[test]
    fn huge_intervals_saturate_and_zero_is_fine() {
        let config = config(2);
        let mut window = PhiWindow::new(&config);
        window.record(Duration::MAX);
        window.record(Duration::from_millis(u64::from(u32::MAX) + 1));
        assert_eq!(window.mean_ms(), f64::from(u32::MAX));
        assert_eq!(window.std_dev_ms(), 0.0);
        window.record(Duration::from_millis(u64::from(u32::MAX)));
        assert_eq!(window.mean_ms(), f64::from(u32::MAX));

        window.record(Duration::ZERO);
        window.record(Duration::ZERO);
        assert_eq!(window.mean_ms(), 0.0);
        assert_eq!(window.std_dev_ms(), 0.0);
        close(window.phi(Duration::ZERO, &config), LOG10_2, 1e-12);
        // Std floored at 100 ms: y = 10 gives phi ≈ 37.6; y = 1000 overflows to infinity.
        assert!(window.phi(Duration::from_secs(1), &config) > 30.0);
        assert_eq!(window.phi(Duration::from_secs(100), &config), f64::INFINITY);
        // Sub-millisecond intervals truncate to whole milliseconds.
        window.record(Duration::from_micros(1999));
        window.record(Duration::from_micros(999));
        assert_eq!(window.mean_ms(), 0.5);
    }

    #[test]
    fn large_windows_stay_exact() {
        let config = PhiConfig { max_samples: 100_000, ..config(0) };
        let mut window = PhiWindow::new(&config);
        for i in 0..300_000u64 {
            window.record(Duration::from_millis(if i % 2 == 0 { u64::from(u32::MAX) } else { 0 }));
        }
        assert_eq!(window.len(), 100_000);
        let half = f64::from(u32::MAX) / 2.0;
        close(window.mean_ms(), half, 1e-6);
        close(window.std_dev_ms(), half, 1e-6);
    }

    #[test]
    fn zero_min_std_does_not_give_nan() {
        let config = PhiConfig { min_std_deviation: Duration::ZERO, ..config(2) };
        let mut window = PhiWindow::new(&config);
        window.record(Duration::from_millis(1000));
        window.record(Duration::from_millis(1000));
        close(window.phi(Duration::from_millis(1000), &config), LOG10_2, 1e-12);
        assert_eq!(window.phi(Duration::from_millis(1001), &config), f64::INFINITY);
        assert_eq!(window.phi(Duration::from_millis(999), &config), 0.0);
        assert_eq!(window.silence_until(8.0, &config), Duration::from_millis(1000));
    }

    #[test]
    fn y_for_phi_inverts_phi() {
        let (mean, std) = (1000.0, 100.0);
        for target in [0.5, 1.0, 3.0, 4.0, 8.0, 12.0, 16.0] {
            let y = y_for_phi(target);
            assert!(y > 0.0);
            let back = phi(mean + y * std, mean, std);
            assert!((back - target).abs() <= 1e-9 * target, "target {target}: y {y}, phi {back}");
        }
        // Below log10(2) the root is before the mean and the inversion still holds.
        for target in [0.001, 0.01, 0.1, 0.2, 0.3] {
            let y = y_for_phi(target);
            assert!(y < 0.0);
            let back = phi(mean + y * std, mean, std);
            assert!((back - target).abs() <= 1e-9 * target, "target {target}: y {y}, phi {back}");
        }
        assert!(y_for_phi(LOG10_2).abs() < 1e-12);
        // Known values: phi 4 and 8 (y(1.5976 + 0.070566 y^2) = ln(10^4 - 1), ln(10^8 - 1)).
        close(y_for_phi(4.0), 3.638_109_756_8, 1e-9);
        close(y_for_phi(8.0), 5.225_986_644_1, 1e-9);
        // Strictly increasing.
        let mut previous = y_for_phi(1e-6);
        for i in 1..=1000 {
            let y = y_for_phi(f64::from(i) * 0.05);
            assert!(y > previous);
            previous = y;
        }
    }

    #[test]
    fn y_for_phi_edges() {
        assert_eq!(y_for_phi(0.0), f64::NEG_INFINITY);
        assert_eq!(y_for_phi(-1.0), f64::NEG_INFINITY);
        assert_eq!(y_for_phi(f64::INFINITY), f64::INFINITY);
        assert!(y_for_phi(f64::NAN).is_nan());
        assert!(y_for_phi(f64::MIN_POSITIVE).is_finite());
        assert!(y_for_phi(f64::MIN_POSITIVE) < 0.0);
        assert!(y_for_phi(1e300).is_finite());
        assert!(y_for_phi(1e307).is_finite());
        assert!(y_for_phi(f64::MAX) > 0.0); // phi * ln 10 overflows: infinity
        let y = y_for_phi(1000.0);
        close(y * (A + B * y * y), 1000.0 * LN_10, 1e-9);
    }

    #[test]
    fn silence_until_reaches_the_target() {
        let config = config(10);
        let mut window = PhiWindow::new(&config);
        for ms in [900, 1100, 1000, 950, 1050, 1200, 800] {
            window.record(Duration::from_millis(ms));
        }
        for target in [0.5, 1.0, config.warn_threshold, config.threshold, 12.0] {
            let d = window.silence_until(target, &config);
            let reached = window.phi(d, &config);
            assert!((reached - target).abs() < 1e-6, "target {target}: {d:?} gives {reached}");
        }
        assert_eq!(window.silence_until(0.0, &config), Duration::ZERO);
        assert_eq!(window.silence_until(-3.0, &config), Duration::ZERO);
        assert_eq!(window.silence_until(f64::INFINITY, &config), Duration::MAX);
        assert_eq!(window.silence_until(f64::NAN, &config), Duration::MAX);
        // A tiny target is reached long before the mean: saturates at zero.
        assert_eq!(window.silence_until(1e-300, &config), Duration::ZERO);
    }

    #[test]
    fn defaults_sanity() {
        let config = PhiConfig::default();
        let window = PhiWindow::new(&config);
        assert_eq!(window.mean_ms(), 10_000.0);
        assert_eq!(window.std_dev_ms(), 2_500.0);
        let dead = window.silence_until(config.threshold, &config);
        assert!(dead > Duration::from_secs(13) && dead < Duration::from_secs(30), "{dead:?}");
        let warn = window.silence_until(config.warn_threshold, &config);
        assert!(warn > Duration::from_secs(13) && warn < dead, "{warn:?}");
        close(window.phi(dead, &config), config.threshold, 1e-6);
        let mut previous = window.phi(Duration::ZERO, &config);
        for secs in 1..=40 {
            let current = window.phi(Duration::from_secs(secs), &config);
            assert!(current >= previous, "{secs} s: {current} < {previous}");
            previous = current;
        }
        assert!(window.phi(Duration::from_secs(13), &config) < 0.31);
        assert!(window.phi(Duration::from_secs(30), &config) > config.threshold);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn constant_memory_stats_are_24_bytes() {
        assert_eq!(std::mem::size_of::<PhiStats>(), 24);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn window_is_small() {
        assert!(std::mem::size_of::<PhiWindow>() <= 64);
    }
}
