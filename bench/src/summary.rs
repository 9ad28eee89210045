//! Latency summaries from an HDR histogram.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest value the histograms hold: 10 minutes in nanoseconds (anything
/// longer is clamped; no run lasts that long).
const MAX_NS: u64 = 600_000_000_000;

/// Percentiles of a set of durations, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// A duration in nanoseconds, as the histograms take them.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Summarises samples given in nanoseconds (3 significant digits).
pub fn summarize(samples_ns: &[u64]) -> Summary {
    let Ok(mut hist) = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3) else {
        return Summary::default();
    };
    for &ns in samples_ns {
        hist.saturating_record(ns.clamp(1, MAX_NS));
    }
    if hist.is_empty() {
        return Summary::default();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Summary {
        count: hist.len(),
        mean_us: hist.mean() / 1000.0,
        p50_us: us(hist.value_at_quantile(0.50)),
        p90_us: us(hist.value_at_quantile(0.90)),
        p99_us: us(hist.value_at_quantile(0.99)),
        p999_us: us(hist.value_at_quantile(0.999)),
        max_us: us(hist.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_set() {
        let samples: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let s = summarize(&samples);
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(summarize(&[]).count, 0);
    }
}
