//! How much token-replay migration a front door allows: a few migrations per request, so
//! that a request that breaks every replica it lands on is not moved forever, and a
//! rate per second with a burst, so that a lost rack's streams all move at once but a
//! flapping fleet cannot turn every request into several.

use super::Unmoved;

/// The migration limits of one front door.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MigrationLimits {
    /// Migrations one request may make (0 turns migration off).
    pub per_request: u8,
    /// Migrations a second, sustained.
    pub per_s: f64,
    /// Migrations that may happen at once (a rack's streams).
    pub burst: f64,
}

impl Default for MigrationLimits {
    fn default() -> Self {
        Self {
            per_request: 2,
            per_s: 20.0,
            burst: 400.0,
        }
    }
}

impl MigrationLimits {
    /// Limits that never migrate.
    pub const OFF: Self = Self {
        per_request: 0,
        per_s: 0.0,
        burst: 0.0,
    };
}

/// Millionths of a migration per token, so that the bucket counts in integers.
const UNIT: u64 = 1_000_000;

/// A token bucket over the clock values it is given: full at the start, refilled at
/// `per_s`, never above `burst`.
#[derive(Debug, Clone)]
pub struct MigrationBudget {
    limits: MigrationLimits,
    /// Millionths of a migration in the bucket.
    level: u64,
    cap: u64,
    /// Millionths refilled per millisecond.
    per_ms: u64,
    last_ms: u64,
}

impl MigrationBudget {
    pub fn new(limits: MigrationLimits) -> Self {
        let micro = |v: f64| {
            if v.is_finite() && v > 0.0 {
                (v * UNIT as f64) as u64
            } else {
                0
            }
        };
        let cap = micro(limits.burst);
        Self {
            limits,
            level: cap,
            cap,
            per_ms: micro(limits.per_s) / 1000,
            last_ms: 0,
        }
    }

    pub fn limits(&self) -> MigrationLimits {
        self.limits
    }

    /// Takes one migration at `now_ms` if the bucket holds one. Time never runs
    /// backwards here: an older clock value refills nothing.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.per_ms))
            .min(self.cap);
        if self.level < UNIT {
            return false;
        }
        self.level -= UNIT;
        true
    }

    /// Whether [`Self::try_take`] at `now_ms` would grant a migration; takes nothing.
    pub fn allows(&self, now_ms: u64) -> bool {
        self.clone().try_take(now_ms)
    }

    /// Whether a request that has moved `moved` times may move once more at `now_ms`:
    /// within its own limit first, then the door's rate (spent only when granted).
    pub fn take_for(&mut self, moved: u8, now_ms: u64) -> Result<(), Unmoved> {
        if moved >= self.limits.per_request {
            Err(Unmoved::RequestLimit)
        } else if !self.try_take(now_ms) {
            Err(Unmoved::Budget)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = MigrationBudget::new(MigrationLimits {
            per_request: 2,
            per_s: 10.0,
            burst: 3.0,
        });
        assert!((0..3).all(|_| b.try_take(0)));
        assert!(!b.try_take(0), "the burst is spent");
        assert!(!b.try_take(99));
        assert!(b.try_take(100), "one more after 1/10 s");
        assert!(!b.try_take(100));
        // A long quiet spell refills no more than the burst.
        assert_eq!((0..10).filter(|_| b.try_take(60_000)).count(), 3);
        assert!(!MigrationBudget::new(MigrationLimits::OFF).try_take(1_000_000));
    }

    #[test]
    fn a_request_moves_within_its_own_limit_and_then_the_doors() {
        let mut b = MigrationBudget::new(MigrationLimits {
            per_request: 2,
            per_s: 0.0,
            burst: 2.0,
        });
        assert_eq!(b.take_for(2, 0), Err(Unmoved::RequestLimit));
        // A request over its own limit spends none of the door's budget.
        assert_eq!((b.take_for(0, 0), b.take_for(1, 0)), (Ok(()), Ok(())));
        assert_eq!(b.take_for(0, 0), Err(Unmoved::Budget));
        assert_eq!(
            MigrationBudget::new(MigrationLimits::OFF).take_for(0, 0),
            Err(Unmoved::RequestLimit)
        );
    }

    proptest! {
        /// Over any run of clock values, no more than the burst plus the rate over the
        /// time elapsed is granted.
        #[test]
        fn never_more_than_burst_plus_rate(
            steps in proptest::collection::vec(0u64..2_000, 1..200),
            per_s in 0.0f64..100.0,
            burst in 0.0f64..50.0,
        ) {
            let mut b = MigrationBudget::new(MigrationLimits { per_request: 1, per_s, burst });
            let (mut now, mut granted) = (0u64, 0u64);
            for dt in steps {
                now += dt;
                granted += u64::from(b.try_take(now));
            }
            let bound = burst + per_s * now as f64 / 1000.0;
            prop_assert!(granted as f64 <= bound + 1e-9, "{granted} > {bound}");
        }
    }
}
