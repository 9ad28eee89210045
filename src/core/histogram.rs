//! A histogram cheap enough for the relay path: fixed bucket bounds, one
//! relaxed atomic add per bucket touched and two for sum and count, and a
//! batch form that folds many observations into one add per bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (inclusive) of the latency buckets, in seconds: from 50 µs
/// (the gateway's own relay time on a quiet machine) to 5 s (a write that
/// stalled to the edge of the write timeout).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// Upper bounds of the set-up buckets (handshake to `WELCOME`), in seconds:
/// a loopback WebSocket takes ~100 µs, a QUIC handshake over the internet
/// several round trips.
pub const SETUP_BOUNDS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Upper bounds of the batch-size buckets: envelopes written with one flush.
pub const BATCH_BOUNDS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A histogram with `N` fixed buckets (plus the implicit `+Inf`).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// Non-cumulative counts; the last slot is `+Inf`.
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    /// Sum of the observations, in the unit's millionths (microseconds for
    /// seconds), so it adds as an integer.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound, observations in this bucket alone)`, ending with
    /// `+Inf`; the exposition's encoder makes them cumulative.
    pub buckets: Vec<(f64, u64)>,
}

impl<const N: usize> Histogram<N> {
    /// An empty histogram with these bucket bounds (ascending).
    pub const fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn slot(&self, value: f64) -> &AtomicU64 {
        match self.bounds.iter().position(|bound| value <= *bound) {
            Some(index) => &self.buckets[index],
            None => &self.overflow,
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        self.slot(value).fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros(value), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one duration, in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Records many durations (in seconds) with one add per bucket they
    /// fall in.
    pub fn observe_durations(&self, durations: impl IntoIterator<Item = Duration>) {
        let mut counts = [0u64; N];
        let mut overflow = 0;
        let mut sum = 0;
        let mut count = 0;
        for duration in durations {
            let value = duration.as_secs_f64();
            match self.bounds.iter().position(|bound| value <= *bound) {
                Some(index) => counts[index] += 1,
                None => overflow += 1,
            }
            sum += micros(value);
            count += 1;
        }
        if count == 0 {
            return;
        }
        for (slot, added) in self.buckets.iter().zip(counts) {
            if added > 0 {
                slot.fetch_add(added, Ordering::Relaxed);
            }
        }
        if overflow > 0 {
            self.overflow.fetch_add(overflow, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(sum, Ordering::Relaxed);
        self.count.fetch_add(count, Ordering::Relaxed);
    }

    /// The values now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(bound, slot)| (*bound, slot.load(Ordering::Relaxed)))
            .collect();
        buckets.push((f64::INFINITY, self.overflow.load(Ordering::Relaxed)));
        HistogramSnapshot {
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            // The buckets are read one by one while others add to them: the
            // count is taken from them so the exposition stays consistent.
            count: buckets.iter().map(|(_, count)| count).sum(),
            buckets,
        }
    }
}

fn micros(value: f64) -> u64 {
    // Saturates on absurd values instead of wrapping.
    (value * 1e6).round().clamp(0.0, u64::MAX as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets() {
        static BOUNDS: [f64; 3] = [1.0, 2.0, 4.0];
        let histogram = Histogram::new(&BOUNDS);
        for value in [0.5, 1.0, 1.5, 3.0, 9.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 5);
        assert!((snapshot.sum - 15.0).abs() < 1e-9);
        assert_eq!(
            snapshot.buckets,
            vec![(1.0, 2), (2.0, 1), (4.0, 1), (f64::INFINITY, 1)]
        );
    }

    #[test]
    fn a_batch_counts_as_its_observations_one_by_one() {
        let one = Histogram::new(&LATENCY_BOUNDS);
        let batch = Histogram::new(&LATENCY_BOUNDS);
        let durations: Vec<Duration> = [30, 70, 70, 900, 40_000, 9_000_000]
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        for duration in &durations {
            one.observe_duration(*duration);
        }
        batch.observe_durations(durations);
        assert_eq!(one.snapshot(), batch.snapshot());
    }
}
