//! Passive health of a replica as one router sees it: ejected after consecutive
//! failures of real traffic, for a backoff that grows with each ejection (Envoy's
//! outlier detection is the model), and back when a health check or request succeeds.

/// Settings of passive ejection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject a replica.
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this, up to `max_ms`.
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 1,
            base_ms: 1_000,
            max_ms: 30_000,
        }
    }
}

/// One replica's passive-health state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassiveHealth {
    failures: u32,
    times_ejected: u32,
    ejected_until_ms: u64,
}

impl PassiveHealth {
    /// A request or probe failed to reach the replica at `now_ms`.
    pub fn on_failure(&mut self, policy: &EjectionPolicy, now_ms: u64) {
        self.failures += 1;
        if self.failures >= policy.consecutive_failures {
            self.times_ejected = self.times_ejected.saturating_add(1);
            let span = policy
                .base_ms
                .saturating_mul(u64::from(self.times_ejected))
                .min(policy.max_ms);
            self.ejected_until_ms = now_ms.saturating_add(span);
            self.failures = 0;
        }
    }

    /// A request or health check succeeded: forgive failures and end any ejection.
    pub fn on_success(&mut self) {
        *self = Self::default();
    }

    /// When the current ejection ends (0 or in the past: not ejected).
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms
    }

    pub fn available(&self, now_ms: u64) -> bool {
        now_ms >= self.ejected_until_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_k_failures_with_growing_backoff() {
        let p = EjectionPolicy {
            consecutive_failures: 2,
            base_ms: 1000,
            max_ms: 2500,
        };
        let mut h = PassiveHealth::default();
        h.on_failure(&p, 0);
        assert!(h.available(0));
        h.on_failure(&p, 0);
        assert!(!h.available(999));
        assert!(h.available(1000));
        h.on_failure(&p, 1000);
        h.on_failure(&p, 1000);
        assert!(!h.available(2999));
        assert!(h.available(3000));
        for _ in 0..10 {
            h.on_failure(&p, 3000);
        }
        assert!(h.available(5500), "capped at max_ms");
        h.on_success();
        assert!(h.available(3000));
    }
}
