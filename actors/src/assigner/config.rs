//! The assigner's knobs, with defaults that suit a fleet of tens to thousands of replicas.

use serde::{Deserialize, Serialize};

/// Configuration of one assigner round. Every field has a default (see [`Default`]); a
/// node reads overrides from its TOML config.
///
/// Loads are compared with a replica's *fair load*: its capacity times the fleet's mean
/// utilization (total load / total capacity). `split_above` and `merge_below` are shares
/// of the fair load of the *smallest* eligible replica, so that a slice is never too big
/// to fit on any replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssignerConfig {
    /// Fewest slices per eligible replica; colder slices are split to reach it. Default 4.
    pub min_slices_per_replica: usize,
    /// Most slices per eligible replica; the coldest neighbours are merged above it, and
    /// hot slices are no longer split at it. Default 16.
    pub max_slices_per_replica: usize,
    /// Narrowest subset. Default 2. Clamped to the number of eligible replicas, and
    /// raised to 2 when eligible replicas sit in two or more racks.
    pub min_width: usize,
    /// Widest subset. Default 65,536: no cap short of the whole fleet, so a hot
    /// workload that cannot be split gets the replicas its load needs. A deployment
    /// that wants to bound a workload's blast radius sets it lower. Clamped to the
    /// number of eligible replicas.
    pub max_width: usize,
    /// A slice is hot, and is split (or, when it cannot be split, may be widened), when
    /// its per-replica load exceeds this share of the smallest replica's fair load.
    /// Default 0.1.
    pub split_above: f64,
    /// Adjacent slices are merged, and a subset is narrowed, when the resulting
    /// per-replica load stays at or under this share of the smallest replica's fair load.
    /// Must be at most half of `split_above` so that a merge is never undone by a split
    /// in the next round. Default 0.04.
    pub merge_below: f64,
    /// Budget per round: the most load (a fraction of the total) that a round may send to
    /// replicas that did not serve it before. Repairs (leaving unhealthy, draining or
    /// unknown replicas, restoring the minimum width and rack spread) are mandatory and
    /// not counted against it. Default 0.1.
    pub churn_budget: f64,
    /// Bound on max/mean replica load (load relative to capacity) that rebalancing aims
    /// under. The assigner aims a little lower (see the module docs). Default 1.15.
    pub target_imbalance: f64,
}

impl Default for AssignerConfig {
    fn default() -> Self {
        Self {
            min_slices_per_replica: 4,
            max_slices_per_replica: 16,
            min_width: 2,
            max_width: 1 << 16,
            split_above: 0.1,
            merge_below: 0.04,
            churn_budget: 0.1,
            target_imbalance: 1.15,
        }
    }
}

/// Why a configuration is rejected by [`AssignerConfig::validate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("min_slices_per_replica must be at least 1")]
    NoSlices,
    #[error("max_slices_per_replica must be at least min_slices_per_replica")]
    SliceBounds,
    #[error("min_width must be at least 1 and max_width at least min_width")]
    WidthBounds,
    #[error("split_above must be in (0, 1]")]
    SplitAbove,
    #[error("merge_below must be in [0, split_above / 2]")]
    MergeBelow,
    #[error("churn_budget must be in [0, 1]")]
    ChurnBudget,
    #[error("target_imbalance must be finite and above 1")]
    TargetImbalance,
}

impl AssignerConfig {
    /// Checks the configuration. [`assign`](super::assign) never fails: it clamps a bad
    /// configuration into range instead (see [`AssignerConfig::sanitized`]); a node should
    /// call this when it loads its config and refuse to start on an error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_slices_per_replica == 0 {
            return Err(ConfigError::NoSlices);
        }
        if self.max_slices_per_replica < self.min_slices_per_replica {
            return Err(ConfigError::SliceBounds);
        }
        if self.min_width == 0 || self.max_width < self.min_width {
            return Err(ConfigError::WidthBounds);
        }
        if !(self.split_above > 0.0 && self.split_above <= 1.0) {
            return Err(ConfigError::SplitAbove);
        }
        if !(self.merge_below >= 0.0 && self.merge_below <= self.split_above / 2.0) {
            return Err(ConfigError::MergeBelow);
        }
        if !(0.0..=1.0).contains(&self.churn_budget) {
            return Err(ConfigError::ChurnBudget);
        }
        if !(self.target_imbalance.is_finite() && self.target_imbalance > 1.0) {
            return Err(ConfigError::TargetImbalance);
        }
        Ok(())
    }

    /// The nearest valid configuration (NaN fields take their default).
    pub fn sanitized(&self) -> Self {
        let d = Self::default();
        let pick = |v: f64, def: f64| if v.is_nan() { def } else { v };
        let min_slices = self.min_slices_per_replica.max(1);
        let min_width = self.min_width.max(1);
        let split_above = pick(self.split_above, d.split_above).clamp(1e-6, 1.0);
        Self {
            min_slices_per_replica: min_slices,
            max_slices_per_replica: self.max_slices_per_replica.max(min_slices),
            min_width,
            max_width: self.max_width.max(min_width),
            split_above,
            merge_below: pick(self.merge_below, d.merge_below).clamp(0.0, split_above / 2.0),
            churn_budget: pick(self.churn_budget, d.churn_budget).clamp(0.0, 1.0),
            target_imbalance: pick(self.target_imbalance, d.target_imbalance).clamp(1.0001, 1e6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sanitizing_fixes_bad_values() {
        assert_eq!(AssignerConfig::default().validate(), Ok(()));
        let bad = AssignerConfig {
            min_slices_per_replica: 0,
            max_slices_per_replica: 0,
            min_width: 0,
            max_width: 0,
            split_above: f64::NAN,
            merge_below: 0.9,
            churn_budget: 7.0,
            target_imbalance: 0.5,
        };
        assert_eq!(bad.validate(), Err(ConfigError::NoSlices));
        assert_eq!(bad.sanitized().validate(), Ok(()));
        let c = AssignerConfig {
            merge_below: 0.06,
            ..AssignerConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::MergeBelow));
    }

    #[test]
    fn reads_partial_toml() {
        let c: AssignerConfig = toml::from_str("churn_budget = 0.2\nmax_width = 4").unwrap();
        assert_eq!(c.churn_budget, 0.2);
        assert_eq!(c.max_width, 4);
        assert_eq!(c.min_width, 2);
    }
}
