//! A token bucket of model units: refills at a rate, holds a few seconds of it, and lets
//! one request run it into debt, so a request larger than the bucket is still admitted
//! when the bucket is full (the debt is then paid back before the next one).

#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    per_s: f64,
    /// Most MU it holds.
    depth: f64,
    tokens: f64,
    at_us: u64,
}

impl TokenBucket {
    /// Refills at `mu_per_min`, holds at most `depth` MU; starts full.
    pub fn new(mu_per_min: f64, depth: f64, now_us: u64) -> Self {
        let depth = depth.max(0.0);
        Self {
            per_s: rate(mu_per_min),
            depth,
            tokens: depth,
            at_us: now_us,
        }
    }

    fn refill(&mut self, now_us: u64) {
        let dt = now_us.saturating_sub(self.at_us) as f64 / 1e6;
        self.at_us = self.at_us.max(now_us);
        self.tokens = (self.tokens + dt * self.per_s).min(self.depth);
    }

    /// A new rate and depth from `now_us` on; what was earned so far is kept.
    pub fn set_rate(&mut self, mu_per_min: f64, depth: f64, now_us: u64) {
        self.refill(now_us);
        self.per_s = rate(mu_per_min);
        self.depth = depth.max(0.0);
        self.tokens = self.tokens.min(self.depth);
    }

    pub fn mu_per_min(&self) -> f64 {
        self.per_s * 60.0
    }

    /// Takes `cost` if the bucket is not in debt.
    pub fn try_take(&mut self, cost: f64, now_us: u64) -> bool {
        self.refill(now_us);
        if self.tokens > 0.0 && cost.is_finite() {
            self.tokens -= cost.max(0.0);
            true
        } else {
            false
        }
    }

    /// Seconds until the bucket is out of debt; `None` if it never refills.
    pub fn wait_s(&self, now_us: u64) -> Option<f64> {
        let dt = now_us.saturating_sub(self.at_us) as f64 / 1e6;
        let tokens = self.tokens + dt * self.per_s;
        if tokens > 0.0 {
            Some(0.0)
        } else if self.per_s > 0.0 {
            Some(-tokens / self.per_s)
        } else {
            None
        }
    }
}

fn rate(mu_per_min: f64) -> f64 {
    if mu_per_min.is_finite() && mu_per_min > 0.0 {
        mu_per_min / 60.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admits_up_to_its_depth_then_at_its_rate() {
        // 600 MU/min = 10 MU/s, 20 MU deep.
        let mut b = TokenBucket::new(600.0, 20.0, 0);
        assert!(b.try_take(15.0, 0));
        assert!(b.try_take(15.0, 0), "5 left: one more runs it into debt");
        assert!(!b.try_take(1.0, 0));
        assert_eq!(b.wait_s(0), Some(1.0));
        assert!(b.try_take(1.0, 1_000_001));
        let mut empty = TokenBucket::new(0.0, 0.0, 0);
        assert!(!empty.try_take(1.0, 10_000_000));
        assert_eq!(empty.wait_s(0), None);
    }

    proptest! {
        /// Over any stretch, what it admits is at most its rate times the stretch plus
        /// its depth plus one request.
        #[test]
        fn long_run_admission_is_bounded_by_the_rate(
            costs in proptest::collection::vec((1.0f64..50.0, 0u64..500_000), 1..400),
            per_min in 60.0f64..6000.0,
        ) {
            let mut b = TokenBucket::new(per_min, per_min / 60.0 * 5.0, 0);
            let (mut now, mut admitted, mut largest) = (0u64, 0.0, 0.0f64);
            for (cost, gap) in costs {
                now += gap;
                if b.try_take(cost, now) {
                    admitted += cost;
                    largest = largest.max(cost);
                }
            }
            let bound = per_min / 60.0 * (now as f64 / 1e6 + 5.0) + largest + 1e-6;
            prop_assert!(admitted <= bound, "{} > {}", admitted, bound);
        }
    }
}
