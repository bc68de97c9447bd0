//! Verdicts drawn from the watcher's samples: how long each stage of recovery took, that
//! no router kept sending to a replica the registry marked dead, and that a poison
//! request's damage stayed inside its slice's subset. Pure functions of the samples.

use super::watch::Sample;
use serde::Serialize;
use std::collections::BTreeSet;

/// Seconds from the fault to each stage of recovery; `None` when the stage was not
/// seen (a killed node's replicas are not marked dead, say) or not needed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recovery {
    /// A router or prober saw failures (failed probes or upstream calls).
    pub detected_s: Option<f64>,
    /// The registry had fewer replicas in service (marked dead, or restarted).
    pub ejected_s: Option<f64>,
    /// A new assignment was committed.
    pub reassigned_s: Option<f64>,
    /// Every replica in service again.
    pub restored_s: Option<f64>,
}

pub fn recovery(samples: &[Sample], fault_ms: u64, full: usize) -> Recovery {
    let before = samples.iter().rev().find(|s| s.at_ms < fault_ms);
    let (failures0, generation0) = before.map_or((0, 0), |s| (s.failures, s.generation));
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at_ms >= fault_ms).collect();
    let since = |s: &Sample| s.at_ms.saturating_sub(fault_ms) as f64 / 1e3;
    let ejected = after.iter().find(|s| s.in_service < full);
    Recovery {
        detected_s: after
            .iter()
            .find(|s| s.failures > failures0)
            .map(|s| since(s)),
        ejected_s: ejected.map(|s| since(s)),
        reassigned_s: after
            .iter()
            .find(|s| s.generation > generation0)
            .map(|s| since(s)),
        restored_s: ejected.and_then(|e| {
            after
                .iter()
                .find(|s| s.at_ms > e.at_ms && s.in_service >= full && s.dead.is_empty())
                .map(|s| since(s))
        }),
    }
}

/// Requests routed to a replica while the registry marked it dead, later than `bound_ms`
/// after it was first seen dead: one line per offending stretch.
pub fn routed_after_dead(samples: &[Sample], bound_ms: u64) -> Vec<String> {
    let replicas: BTreeSet<u64> = samples
        .iter()
        .flat_map(|s| s.dead.iter().copied())
        .collect();
    let mut out = Vec::new();
    for r in replicas {
        let mut dead_since: Option<u64> = None;
        let mut baseline: Option<u64> = None;
        let mut reported = false;
        for s in samples {
            if !s.dead.contains(&r) {
                (dead_since, baseline, reported) = (None, None, false);
                continue;
            }
            let since = *dead_since.get_or_insert(s.at_ms);
            if s.at_ms < since + bound_ms {
                continue;
            }
            let routed = s.routed.get(&r).copied().unwrap_or(0);
            let base = *baseline.get_or_insert(routed);
            if routed > base && !reported {
                reported = true;
                out.push(format!(
                    "replica {r}: {} request(s) routed to it {:.1} s after it was marked dead",
                    routed - base,
                    (s.at_ms - since) as f64 / 1e3
                ));
            }
        }
    }
    out
}

/// Where a poison request did damage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Containment {
    /// Replicas that went out of service while the poison was being sent.
    pub hurt: Vec<u64>,
    /// Every replica the poison's slice was assigned to meanwhile.
    pub subset: Vec<u64>,
    pub contained: bool,
}

/// The subset of the slice holding `key` in `s`, if the sample has an assignment.
fn subset_of(s: &Sample, key: u64) -> Option<&[u64]> {
    s.slices
        .iter()
        .take_while(|(start, _)| *start <= key)
        .last()
        .map(|(_, subset)| subset.as_slice())
}

/// Damage from `from_ms` (the first poison sent) to `until_ms`: replicas out of
/// service that were in service just before, against the subsets the poison's slice
/// (the one holding `key`) had, including the one it had when the poison was sent.
pub fn containment(samples: &[Sample], key: u64, from_ms: u64, until_ms: u64) -> Containment {
    let start = samples.iter().rposition(|s| s.at_ms < from_ms).unwrap_or(0);
    let window: Vec<&Sample> = samples[start..]
        .iter()
        .filter(|s| s.at_ms <= until_ms)
        .collect();
    let already: BTreeSet<u64> = window
        .first()
        .filter(|s| s.at_ms < from_ms)
        .map(|s| s.out.iter().copied().collect())
        .unwrap_or_default();
    let hurt: BTreeSet<u64> = window
        .iter()
        .filter(|s| s.at_ms >= from_ms)
        .flat_map(|s| s.out.iter().copied())
        .filter(|r| !already.contains(r))
        .collect();
    let subset: BTreeSet<u64> = window
        .iter()
        .filter_map(|s| subset_of(s, key))
        .flat_map(|x| x.iter().copied())
        .collect();
    Containment {
        contained: !subset.is_empty() && hurt.is_subset(&subset),
        hurt: hurt.into_iter().collect(),
        subset: subset.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, out: &[u64], dead: &[u64], routed: &[(u64, u64)]) -> Sample {
        Sample {
            at_ms,
            in_service: 4 - out.len(),
            out: out.to_vec(),
            dead: dead.to_vec(),
            generation: 1,
            slices: vec![(0, vec![1, 2]), (1 << 63, vec![3, 4])],
            routed: routed.iter().copied().collect(),
            failures: 0,
            migrations: 0,
        }
    }

    #[test]
    fn routing_to_a_dead_replica_is_allowed_only_within_the_bound() {
        let s = vec![
            sample(0, &[], &[], &[(1, 10)]),
            sample(500, &[1], &[1], &[(1, 12)]),
            // Still arriving within the bound: allowed.
            sample(1_500, &[1], &[1], &[(1, 14)]),
            sample(3_000, &[1], &[1], &[(1, 14)]),
            sample(3_500, &[], &[], &[(1, 20)]),
        ];
        assert!(routed_after_dead(&s, 2_000).is_empty());
        let mut bad = s.clone();
        bad[3].routed.insert(1, 15);
        bad.insert(3, sample(2_600, &[1], &[1], &[(1, 14)]));
        let v = routed_after_dead(&bad, 2_000);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("replica 1: 1 request"));
    }

    #[test]
    fn recovery_stages_are_timed_from_the_fault() {
        let mut s = vec![sample(0, &[], &[], &[]), sample(1_000, &[], &[], &[])];
        s[1].failures = 3;
        s.push(sample(2_000, &[1], &[1], &[]));
        let mut re = sample(2_500, &[1], &[1], &[]);
        re.generation = 2;
        s.push(re);
        s.push(sample(4_000, &[], &[], &[]));
        let r = recovery(&s, 500, 4);
        assert_eq!(
            r,
            Recovery {
                detected_s: Some(0.5),
                ejected_s: Some(1.5),
                reassigned_s: Some(2.0),
                restored_s: Some(3.5),
            }
        );
    }

    #[test]
    fn damage_outside_the_subset_is_not_contained() {
        let s = vec![
            sample(0, &[], &[], &[]),
            sample(1_000, &[1], &[1], &[]),
            sample(2_000, &[2], &[], &[]),
        ];
        let c = containment(&s, 5, 500, 5_000);
        assert_eq!((c.hurt.clone(), c.contained), (vec![1, 2], true));
        let mut s2 = s.clone();
        s2.push(sample(3_000, &[3], &[3], &[]));
        let c = containment(&s2, 5, 500, 5_000);
        assert!(!c.contained);
        assert_eq!(c.subset, vec![1, 2]);
        // A replica already out before the poison is not its damage.
        let mut s3 = s.clone();
        s3[0].out = vec![4];
        s3[1].out.push(4);
        assert!(containment(&s3, 5, 500, 5_000).contained);
    }
}
