//! The estimate of what is unknown at admission: how many tokens a request will
//! generate. It comes from a running history per workload (exponentially weighted),
//! bounded in memory, and capped by the request's own `max_tokens`. A workload with no
//! history of its own is expected to do what the traffic as a whole does: without keys,
//! every conversation is new at its first request, and a fixed guess there (say 256
//! tokens in front of ~30-token code completions) inflates the queue a replica seems to
//! hold and drives requests away from the replicas caching their prefix. That overall
//! average starts at the configured default and moves with each finished request, so a
//! router that has seen one tiny answer does not yet take every newcomer for tiny. (How
//! much of a prompt a replica caches is estimated per replica in `router::affinity`.)

use std::collections::HashMap;

/// Settings of the estimator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EstimatorConfig {
    /// Output length assumed for a workload with no history before the traffic has
    /// said otherwise: where the overall average starts.
    pub default_output: u32,
    /// Weight of the newest observation in the moving averages (0..=1).
    pub alpha: f64,
    /// Workloads remembered at most; the least recently seen are forgotten first.
    pub max_workloads: usize,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        Self {
            default_output: 256,
            alpha: 0.2,
            max_workloads: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct History {
    output: f64,
    last_seen: u64,
}

/// Per-workload running history of output lengths.
#[derive(Debug, Clone)]
pub struct OutputEstimator {
    config: EstimatorConfig,
    history: HashMap<u64, History>,
    /// Every workload's outputs together, weighted as a workload's are, starting from
    /// the configured default.
    overall: f64,
    tick: u64,
}

impl OutputEstimator {
    pub fn new(config: EstimatorConfig) -> Self {
        Self {
            config,
            history: HashMap::new(),
            overall: f64::from(config.default_output),
            tick: 0,
        }
    }

    /// Output tokens expected of a request of `workload` that allows at most
    /// `max_tokens`.
    pub fn estimate(&self, workload: u64, max_tokens: Option<u32>) -> u32 {
        let mean = self
            .history
            .get(&workload)
            .map_or(self.overall, |h| h.output);
        let output = mean.round().max(1.0) as u32;
        max_tokens.map_or(output, |m| output.min(m)).max(1)
    }

    /// Records how many tokens a finished request of `workload` generated.
    pub fn observe(&mut self, workload: u64, output_tokens: u32) {
        self.tick += 1;
        let a = self.config.alpha;
        let tick = self.tick;
        self.overall = a * f64::from(output_tokens) + (1.0 - a) * self.overall;
        self.history
            .entry(workload)
            .and_modify(|h| {
                h.output = a * f64::from(output_tokens) + (1.0 - a) * h.output;
                h.last_seen = tick;
            })
            .or_insert(History {
                output: f64::from(output_tokens),
                last_seen: tick,
            });
        if self.history.len() > self.config.max_workloads {
            self.forget_oldest_half();
        }
    }

    pub fn workloads(&self) -> usize {
        self.history.len()
    }

    /// Amortized O(1) bound: when over the limit, keep the most recently seen half.
    fn forget_oldest_half(&mut self) {
        let mut ticks: Vec<u64> = self.history.values().map(|h| h.last_seen).collect();
        let mid = ticks.len() / 2;
        let (_, cut, _) = ticks.select_nth_unstable(mid);
        let cut = *cut;
        self.history.retain(|_, h| h.last_seen >= cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn before_anything_finished_a_new_workload_gets_the_default_capped_by_max_tokens() {
        let e = OutputEstimator::new(EstimatorConfig::default());
        assert_eq!(e.estimate(1, None), 256);
        assert_eq!(e.estimate(1, Some(10)), 10);
    }

    #[test]
    fn history_moves_the_estimate_toward_what_the_workload_does() {
        let mut e = OutputEstimator::new(EstimatorConfig::default());
        for _ in 0..50 {
            e.observe(7, 40);
        }
        for _ in 0..50 {
            e.observe(9, 400);
        }
        assert_eq!(e.estimate(7, Some(2000)), 40);
        assert_eq!(e.estimate(9, None), 400);
    }

    #[test]
    fn a_workload_never_seen_expects_what_the_traffic_does_lately() {
        let mut e = OutputEstimator::new(EstimatorConfig::default());
        // One short answer moves the guess for newcomers only by its weight.
        e.observe(999, 2);
        assert_eq!(e.estimate(1_000, None), 205);
        // Short completions from many one-off conversations: a new one is short too.
        for w in 0..50 {
            e.observe(w, 30);
        }
        assert_eq!(e.estimate(1_000, None), 30);
        assert_eq!(e.estimate(1_000, Some(8)), 8);
        // The traffic turns to long answers; the guess for newcomers follows.
        for w in 50..100 {
            e.observe(w, 600);
        }
        assert_eq!(e.estimate(1_001, None), 600);
        // A known workload keeps its own history.
        assert_eq!(e.estimate(0, None), 30);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut e = OutputEstimator::new(EstimatorConfig {
            max_workloads: 100,
            ..Default::default()
        });
        for w in 0..10_000u64 {
            e.observe(w, 10);
        }
        assert!(e.workloads() <= 100);
        // The most recent workload is remembered.
        assert_eq!(e.estimate(9_999, None), 10);
    }

    proptest! {
        #[test]
        fn estimate_is_within_bounds(obs in proptest::collection::vec(0u32..5000, 0..50), max in proptest::option::of(1u32..4096)) {
            let mut e = OutputEstimator::new(EstimatorConfig::default());
            for o in obs {
                e.observe(3, o);
            }
            let est = e.estimate(3, max);
            prop_assert!(est >= 1);
            if let Some(m) = max { prop_assert!(est <= m); }
        }
    }
}
