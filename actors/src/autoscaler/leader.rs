//! The autoscaler as the Raft leader runs it. Leadership moves, and a new leader's
//! windows start empty: scaling in on a few seconds of data would give back replicas the
//! old leader had good reason to keep. So for its first down window a new leader only
//! scales out.

use super::{Autoscaler, ScaleBounds, ScaleInputs};

pub struct LeaderScaler {
    core: Box<dyn Autoscaler>,
    down_window_us: u64,
    /// When this node became leader (its first tick).
    since_us: Option<u64>,
}

impl LeaderScaler {
    pub fn new(core: Box<dyn Autoscaler>, down_window_us: u64) -> Self {
        Self {
            core,
            down_window_us,
            since_us: None,
        }
    }

    pub fn name(&self) -> &'static str {
        self.core.name()
    }

    /// The desired count for this tick.
    pub fn decide(&mut self, inputs: &ScaleInputs, bounds: &ScaleBounds) -> usize {
        let since = *self.since_us.get_or_insert(inputs.now_us);
        let want = self.core.decide(inputs, bounds);
        let current = inputs.ready + inputs.starting;
        if inputs.now_us.saturating_sub(since) < self.down_window_us && want < current {
            bounds.clamp(current)
        } else {
            want
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::{AutoscalerConfig, MuUtilization};

    #[test]
    fn a_new_leader_scales_out_at_once_but_in_only_after_a_down_window() {
        let cfg = AutoscalerConfig {
            up_window_s: 10.0,
            down_window_s: Some(60.0),
            ..AutoscalerConfig::default()
        };
        let mut s = LeaderScaler::new(Box::new(MuUtilization::new(&cfg)), 60_000_000);
        let bounds = ScaleBounds {
            min: 1,
            max: 10,
            reserved_floor: 0,
        };
        let at = |t_s: u64, ready: usize, mu: f64| ScaleInputs {
            now_us: t_s * 1_000_000,
            ready,
            starting: 0,
            mu_per_min: mu,
            in_flight_requests: 0.0,
            requests_per_s: 0.0,
            capacity_mu_per_min: 100.0,
        };
        // Idle, but it inherited 6 replicas: kept through the first minute.
        for t in 0..60 {
            assert_eq!(s.decide(&at(t, 6, 0.0), &bounds), 6, "t={t}");
        }
        assert_eq!(s.decide(&at(61, 6, 0.0), &bounds), 1);
        // Out: immediately, whatever the age.
        let mut fresh = LeaderScaler::new(Box::new(MuUtilization::new(&cfg)), 60_000_000);
        assert_eq!(fresh.decide(&at(0, 1, 500.0), &bounds), 8);
    }
}
