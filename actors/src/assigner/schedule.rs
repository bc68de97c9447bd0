//! When the assigner runs and on what load: a round every `period` over the load
//! measured since the last one, smoothed with a half-life so that one bursty minute
//! does not reshuffle the fleet (Dicer: a round a minute, 120 s half-life). The same
//! schedule drives the simulated policy and the live leader.

use super::config::AssignerConfig;
use super::fleet::ReplicaInfo;
use super::load::SliceLoad;
use super::meter::LoadReport;
use super::{assign, Plan};
use crate::slice::Assignment;

/// Rounds and smoothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub period_us: u64,
    pub half_life_s: f64,
    pub assigner: AssignerConfig,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            period_us: 60_000_000,
            half_life_s: 120.0,
            assigner: AssignerConfig::default(),
        }
    }
}

/// The assigner's state between rounds: the smoothed load and when it last ran.
#[derive(Debug, Clone)]
pub struct Schedule {
    config: ScheduleConfig,
    smoothed: Option<SliceLoad>,
    last_round_us: u64,
}

impl Schedule {
    pub fn new(config: ScheduleConfig, now_us: u64) -> Self {
        Self {
            config,
            smoothed: None,
            last_round_us: now_us,
        }
    }

    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// Whether a round is due at `now_us`.
    pub fn due(&self, now_us: u64) -> bool {
        now_us
            >= self
                .last_round_us
                .saturating_add(self.config.period_us.max(1))
    }

    /// Runs a round on `report` (the load since the previous round): folds it into the
    /// smoothed load and plans the next assignment. `None` when the report is empty or
    /// malformed; the round is still counted as done.
    pub fn round(
        &mut self,
        now_us: u64,
        report: &LoadReport,
        current: &Assignment,
        replicas: &[ReplicaInfo],
    ) -> Option<Plan> {
        self.last_round_us = now_us;
        let observed = report.to_load()?;
        let elapsed_s = report.to_us.saturating_sub(report.from_us) as f64 / 1e6;
        let load = match &self.smoothed {
            Some(old) => old.decayed(&observed, elapsed_s, self.config.half_life_s),
            None => observed,
        };
        let plan = assign(current, &load, replicas, &self.config.assigner);
        self.smoothed = Some(load);
        Some(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assigner::{initial_assignment, LoadMeter};
    use crate::slice::SliceKey;

    #[test]
    fn rounds_follow_the_period_and_move_a_hot_spot() {
        let replicas: Vec<ReplicaInfo> = (0..8)
            .map(|i| ReplicaInfo::new(i, format!("r{}", i % 2), 1000.0))
            .collect();
        let config = ScheduleConfig::default();
        let mut current = initial_assignment(&replicas, &config.assigner).unwrap();
        let mut s = Schedule::new(config, 0);
        assert!(!s.due(59_000_000));
        let mut now = 0;
        let mut before = None;
        for _ in 0..10 {
            let mut meter = LoadMeter::new(12, now);
            now += 60_000_000;
            assert!(s.due(now));
            // Most of the load in one small key range.
            for i in 0..2000u64 {
                meter.record(SliceKey(i << 40), 2.0);
                meter.record(SliceKey(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), 1.0);
            }
            let plan = s.round(now, &meter.take(now), &current, &replicas).unwrap();
            before.get_or_insert(plan.imbalance_before);
            current = plan.assignment;
            assert!(!s.due(now));
        }
        let load = s.smoothed.clone().unwrap();
        let after = crate::assigner::imbalance(&current, &load, &replicas);
        assert!(after <= 1.15 + 1e-9, "imbalance {after}");
        assert!(before.unwrap() > after);
    }

    #[test]
    fn an_empty_interval_plans_nothing() {
        let replicas = vec![ReplicaInfo::new(0, "a", 1.0)];
        let current = Assignment::uniform(1, &[crate::slice::ReplicaId(0)], 1, 1).unwrap();
        let mut s = Schedule::new(ScheduleConfig::default(), 0);
        let empty = LoadMeter::new(4, 10).take(10);
        assert!(s.round(10, &empty, &current, &replicas).is_none());
    }
}
