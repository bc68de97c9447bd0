//! When open-loop requests are due.

use std::time::Duration;

/// The open-loop timetable: when request `seq` is due, as an offset from the start
/// of the run (warm-up included). Offsets must not decrease. A trace replayer
/// supplies the recorded arrival offsets instead of [`FixedRate`].
pub trait Timetable: Send + Sync + 'static {
    /// `None` when there are no more requests.
    fn due(&self, seq: u64) -> Option<Duration>;
}

/// Evenly spaced arrivals at `rate_per_s`: request `i` is due at exactly `i / rate`
/// seconds, computed from `i` each time so that rounding never accumulates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedRate {
    rate_per_s: f64,
}

impl FixedRate {
    /// `rate_per_s` must be positive and finite (validated by `LoadConfig`).
    pub fn new(rate_per_s: f64) -> Self {
        Self { rate_per_s }
    }

    /// How many requests are due strictly before `t`.
    pub fn count_before(&self, t: Duration) -> u64 {
        let n = (t.as_secs_f64() * self.rate_per_s).ceil() as u64;
        // Guard the float boundary: make it exact against `due`.
        let mut n = n.saturating_sub(1);
        while self.due_at(n) < t {
            n += 1;
        }
        n
    }

    fn due_at(&self, seq: u64) -> Duration {
        Duration::from_nanos((seq as f64 * 1e9 / self.rate_per_s).round() as u64)
    }
}

impl Timetable for FixedRate {
    fn due(&self, seq: u64) -> Option<Duration> {
        Some(self.due_at(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_is_evenly_spaced_without_drift() {
        let t = FixedRate::new(3.0);
        assert_eq!(t.due(0), Some(Duration::ZERO));
        assert_eq!(t.due(1), Some(Duration::from_nanos(333_333_333)));
        assert_eq!(t.due(2), Some(Duration::from_nanos(666_666_667)));
        assert_eq!(t.due(3), Some(Duration::from_secs(1)));
        // A million steps later the error is still under a nanosecond-ish rounding.
        assert_eq!(t.due(3_000_000), Some(Duration::from_secs(1_000_000)));
        let t = FixedRate::new(20_000.0);
        for i in 0..10_000u64 {
            let gap = t.due(i + 1).unwrap() - t.due(i).unwrap();
            assert!(
                (49_999..=50_001).contains(&(gap.as_nanos() as u64)),
                "gap {gap:?} at {i}"
            );
        }
    }

    #[test]
    fn count_before_matches_due() {
        for rate in [1.0, 3.0, 7.5, 1000.0, 20_000.0] {
            let t = FixedRate::new(rate);
            for ms in [0u64, 1, 133, 999, 1000, 1001, 2500, 10_000] {
                let cut = Duration::from_millis(ms);
                let n = t.count_before(cut);
                assert!(
                    n == 0 || t.due(n - 1).unwrap() < cut,
                    "rate {rate} cut {cut:?}"
                );
                assert!(t.due(n).unwrap() >= cut, "rate {rate} cut {cut:?}");
            }
        }
        assert_eq!(
            FixedRate::new(200.0).count_before(Duration::from_secs(1)),
            200
        );
        assert_eq!(FixedRate::new(200.0).count_before(Duration::ZERO), 0);
    }
}
