//! A latency histogram made of atomics.
//!
//! prometheus-client's own `Histogram` takes a mutex on every observation, so concurrent
//! requests of one RPC would queue on it. This one does one relaxed `fetch_add` on the
//! bucket and one on the sum; the count is the sum of the buckets, computed at scrape
//! time, so `_count` always equals the `+Inf` bucket.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// Upper bounds of the buckets, in nanoseconds: 25 µs to 2.5 s. A check answers in
/// microseconds; a request with `min_revision` may wait up to `--revision-wait` (1 s by
/// default).
const BOUNDS_NS: [u64; 16] = [
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// A histogram of durations in seconds, with fixed buckets (`BOUNDS_NS` and `+Inf`).
/// Clones share the same counts.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    /// Sum of all observations, in nanoseconds (wraps after 584 years of request time).
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        if let Some(bucket) = self.inner.buckets.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        self.inner.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The number of observations so far.
    pub fn count(&self) -> u64 {
        self.inner.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); BOUNDS_NS.len() + 1];
        let bounds = BOUNDS_NS
            .iter()
            .map(|&ns| Duration::from_nanos(ns).as_secs_f64())
            .chain(std::iter::once(f64::INFINITY));
        let mut count = 0;
        for ((slot, bound), bucket) in buckets.iter_mut().zip(bounds).zip(&self.inner.buckets) {
            let n = bucket.load(Relaxed);
            count += n;
            *slot = (bound, n);
        }
        let sum = Duration::from_nanos(self.inner.sum_ns.load(Relaxed)).as_secs_f64();
        // The encoder makes the counts cumulative.
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_matches_inf() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(25));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count(), 4);
        let mut registry = Registry::default();
        registry.register("t", "test", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "t_bucket{le=\"0.000025\"} 2",
            "t_bucket{le=\"0.0025\"} 2",
            "t_bucket{le=\"0.005\"} 3",
            "t_bucket{le=\"2.5\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
            "t_count 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("t_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.003035).abs() < 1e-9, "{sum}");
    }
}
