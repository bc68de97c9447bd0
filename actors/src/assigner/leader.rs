//! What the Raft leader commits next, given the registry and the committed assignment:
//! the one decision the live leader and the simulator's virtual leader share.

use super::config::AssignerConfig;
use super::fleet::ReplicaInfo;
use super::load::SliceLoad;
use super::meter::{LoadMeter, LoadReport};
use super::schedule::Schedule;
use super::{assign, initial_assignment};
use crate::slice::{Assignment, ReplicaId};
use std::collections::BTreeSet;

/// One leader step: a fresh initial assignment when replicas joined (or none exists); a
/// round on the measured load when some members left or failed (their slices must move
/// now) or when `round` is due; otherwise nothing. `take_report` is called only when a
/// round runs, so load keeps accumulating between rounds. Returns the assignment to
/// commit, if any.
pub fn next_assignment(
    current: Option<&Assignment>,
    registry: &[ReplicaInfo],
    round: bool,
    schedule: &mut Schedule,
    take_report: impl FnOnce() -> Option<LoadReport>,
    now_us: u64,
    config: &AssignerConfig,
) -> Option<Assignment> {
    let eligible: BTreeSet<ReplicaId> = registry
        .iter()
        .filter(|r| r.eligible())
        .map(|r| r.id)
        .collect();
    if eligible.is_empty() {
        return None;
    }
    let Some(current) = current else {
        return initial_assignment(registry, config).ok();
    };
    let used: BTreeSet<ReplicaId> = current
        .slices()
        .iter()
        .flat_map(|s| s.subset.iter().copied())
        .collect();
    if !eligible.is_subset(&used) {
        // New replicas: start over from an even, rack-spread map.
        return initial_assignment(registry, config).ok().map(|mut a| {
            a.generation = current.generation + 1;
            a
        });
    }
    if !round && used.is_subset(&eligible) {
        return None;
    }
    let report = take_report().unwrap_or_else(|| LoadMeter::new(12, 0).take(1));
    let plan = schedule
        .round(now_us, &report, current, registry)
        .unwrap_or_else(|| assign(current, &SliceLoad::uniform(0.0), registry, config));
    plan.changed.then_some(plan.assignment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assigner::ScheduleConfig;

    fn registry(n: u64) -> Vec<ReplicaInfo> {
        (0..n)
            .map(|i| ReplicaInfo::new(i, format!("r{}", i % 2), 1000.0))
            .collect()
    }

    #[test]
    fn a_failed_member_is_repaired_at_once_and_a_steady_fleet_is_left_alone() {
        let config = AssignerConfig::default();
        let mut schedule = Schedule::new(ScheduleConfig::default(), 0);
        let mut reg = registry(6);
        let first = next_assignment(None, &reg, false, &mut schedule, || None, 0, &config)
            .expect("a first assignment");
        assert_eq!(first.generation, 1);
        let mut asked = false;
        let same = next_assignment(
            Some(&first),
            &reg,
            false,
            &mut schedule,
            || {
                asked = true;
                None
            },
            1,
            &config,
        );
        assert_eq!(same, None);
        assert!(!asked, "no round was due, so no load was taken");
        reg[3].healthy = false;
        let repaired = next_assignment(
            Some(&first),
            &reg,
            false,
            &mut schedule,
            || None,
            2,
            &config,
        )
        .expect("the failed replica's slices move");
        assert_eq!(repaired.generation, 2);
        assert!(repaired
            .slices()
            .iter()
            .all(|s| !s.subset.contains(&ReplicaId(3))));
        // It comes back: a new even map that uses it again.
        reg[3].healthy = true;
        let back = next_assignment(
            Some(&repaired),
            &reg,
            false,
            &mut schedule,
            || None,
            3,
            &config,
        )
        .expect("the returning replica gets slices");
        assert!(back
            .slices()
            .iter()
            .any(|s| s.subset.contains(&ReplicaId(3))));
        assert_eq!(back.generation, 3);
    }

    #[test]
    fn no_eligible_replica_means_no_assignment() {
        let mut reg = registry(2);
        for r in &mut reg {
            r.healthy = false;
        }
        let mut schedule = Schedule::new(ScheduleConfig::default(), 0);
        let config = AssignerConfig::default();
        assert_eq!(
            next_assignment(None, &reg, true, &mut schedule, || None, 0, &config),
            None
        );
    }
}
