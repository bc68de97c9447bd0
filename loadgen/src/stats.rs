//! Counting outcomes and summarising latencies.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// The longest latency a histogram holds exactly (one hour, in µs); longer ones are
/// clamped to it.
const MAX_US: u64 = 3_600_000_000;

/// How one request ended. Times are microseconds from the request's origin: its actual
/// start in a closed loop, its scheduled start in an open loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, fully read (and for a stream, ended by `data: [DONE]`).
    Ok {
        latency_us: u64,
        ttfb_us: u64,
        bytes: u64,
    },
    /// A non-2xx answer.
    Status { code: u16, bytes: u64 },
    /// A 2xx stream that ended without `data: [DONE]`.
    Incomplete { bytes: u64 },
    /// Connecting, sending, or reading the answer failed.
    Transport,
    /// Not fully answered within the request timeout.
    Timeout,
}

/// Latency summary in microseconds. All zero when nothing was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    /// Reads the summary off a histogram. Quantiles are hdrhistogram's: the highest
    /// value equivalent (within 3 significant digits) to the recorded one at that rank.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Microsecond histogram with 3 significant digits from 1 µs to an hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

/// What a run (or a shard of it) has seen in its measurement window.
#[derive(Debug, Clone)]
pub struct Stats {
    pub sent: u64,
    pub ok: u64,
    pub errors_by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub timeouts: u64,
    pub incomplete_streams: u64,
    pub bytes_received: u64,
    pub latency: Histogram<u64>,
    pub ttfb: Histogram<u64>,
    /// Open loop only: how late each request actually started after its due time.
    pub lag: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            sent: 0,
            ok: 0,
            errors_by_status: BTreeMap::new(),
            transport_errors: 0,
            timeouts: 0,
            incomplete_streams: 0,
            bytes_received: 0,
            latency: histogram(),
            ttfb: histogram(),
            lag: histogram(),
        }
    }
}

impl Stats {
    /// Counts one request. Only successful requests contribute latencies.
    pub fn record(&mut self, outcome: Outcome, lag_us: Option<u64>) {
        self.sent += 1;
        if let Some(lag) = lag_us {
            self.lag.saturating_record(lag.max(1));
        }
        match outcome {
            Outcome::Ok {
                latency_us,
                ttfb_us,
                bytes,
            } => {
                self.ok += 1;
                self.bytes_received += bytes;
                // The histogram's floor is 1 µs.
                self.latency.saturating_record(latency_us.max(1));
                self.ttfb.saturating_record(ttfb_us.max(1));
            }
            Outcome::Status { code, bytes } => {
                *self.errors_by_status.entry(code).or_default() += 1;
                self.bytes_received += bytes;
            }
            Outcome::Incomplete { bytes } => {
                self.incomplete_streams += 1;
                self.bytes_received += bytes;
            }
            Outcome::Transport => self.transport_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (code, n) in &other.errors_by_status {
            *self.errors_by_status.entry(*code).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.incomplete_streams += other.incomplete_streams;
        self.bytes_received += other.bytes_received;
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttfb.add(&other.ttfb);
        let _ = self.lag.add(&other.lag);
    }

    /// Requests that did not succeed.
    pub fn errors(&self) -> u64 {
        self.sent - self.ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(us: u64) -> Outcome {
        Outcome::Ok {
            latency_us: us,
            ttfb_us: us / 2,
            bytes: 10,
        }
    }

    #[test]
    fn percentiles_of_a_uniform_ramp() {
        let mut s = Stats::default();
        for us in 1..=1000 {
            s.record(ok(us), None);
        }
        let p = Percentiles::from_histogram(&s.latency);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, 500);
        assert_eq!(p.p90, 900);
        assert_eq!(p.p99, 990);
        assert_eq!(p.p999, 999);
        assert_eq!(p.max, 1000);
        assert!((p.mean - 500.5).abs() < 0.01, "mean {}", p.mean);
        assert_eq!(s.bytes_received, 10_000);
    }

    #[test]
    fn percentiles_keep_three_significant_digits_and_the_tail() {
        let mut s = Stats::default();
        for _ in 0..990 {
            s.record(ok(100), None);
        }
        for _ in 0..10 {
            s.record(ok(1_234_567), None);
        }
        let p = Percentiles::from_histogram(&s.latency);
        assert_eq!(p.p50, 100);
        assert_eq!(p.p90, 100);
        assert_eq!(p.p99, 100);
        // One request in a hundred is slow: p99.9 and max see it to within 0.1%.
        let rel = |v: u64| (v as f64 - 1_234_567.0).abs() / 1_234_567.0;
        assert!(rel(p.p999) < 1e-3, "p999 {}", p.p999);
        assert!(rel(p.max) < 1e-3, "max {}", p.max);
        let mean = (990.0 * 100.0 + 10.0 * 1_234_567.0) / 1000.0;
        assert!((p.mean - mean).abs() / mean < 1e-3, "mean {}", p.mean);
    }

    #[test]
    fn empty_and_clamped() {
        assert_eq!(
            Percentiles::from_histogram(&histogram()),
            Percentiles::default()
        );
        let mut s = Stats::default();
        s.record(ok(0), None);
        s.record(ok(u64::MAX), None);
        let p = Percentiles::from_histogram(&s.latency);
        assert_eq!(p.count, 2);
        assert_eq!(p.p50, 1);
        assert!(p.max >= MAX_US && p.max < MAX_US + MAX_US / 1000);
    }

    #[test]
    fn outcomes_are_counted_by_kind_and_merge() {
        let mut a = Stats::default();
        a.record(ok(10), Some(3));
        a.record(
            Outcome::Status {
                code: 503,
                bytes: 5,
            },
            Some(4),
        );
        a.record(
            Outcome::Status {
                code: 503,
                bytes: 5,
            },
            None,
        );
        let mut b = Stats::default();
        b.record(
            Outcome::Status {
                code: 429,
                bytes: 0,
            },
            None,
        );
        b.record(Outcome::Transport, None);
        b.record(Outcome::Timeout, None);
        b.record(Outcome::Incomplete { bytes: 7 }, None);
        b.record(ok(30), None);
        a.merge(&b);
        assert_eq!(a.sent, 8);
        assert_eq!(a.ok, 2);
        assert_eq!(a.errors(), 6);
        assert_eq!(a.errors_by_status, BTreeMap::from([(429, 1), (503, 2)]));
        assert_eq!(
            (a.transport_errors, a.timeouts, a.incomplete_streams),
            (1, 1, 1)
        );
        assert_eq!(a.bytes_received, 10 + 5 + 5 + 7 + 10);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.lag.len(), 2);
        assert_eq!(Percentiles::from_histogram(&a.latency).max, 30);
    }
}
