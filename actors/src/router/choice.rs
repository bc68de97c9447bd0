//! Replica choice: the healthy replica of the slice's subset with the least in-flight
//! work relative to its capacity; outside the subset only when the subset is clearly
//! worse, because leaving it throws away the prefix cache.

use crate::slice::ReplicaId;

/// What the router knows about one replica when it chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: ReplicaId,
    pub healthy: bool,
    pub inflight_mu: f64,
    pub capacity_mu_per_min: f64,
}

impl Candidate {
    /// Seconds of work queued on the replica if it also took `cost` MU.
    pub fn load_s(&self, cost: f64) -> f64 {
        if self.capacity_mu_per_min <= 0.0 {
            return f64::INFINITY;
        }
        (self.inflight_mu + cost) * 60.0 / self.capacity_mu_per_min
    }
}

/// When to leave the subset: the subset's best load must exceed
/// `ratio × (best load elsewhere) + slack_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpillPolicy {
    pub ratio: f64,
    pub slack_s: f64,
}

impl Default for SpillPolicy {
    fn default() -> Self {
        Self {
            ratio: 1.5,
            slack_s: 1.0,
        }
    }
}

/// The router's pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub replica: ReplicaId,
    /// True when the replica is outside the slice's subset.
    pub spilled: bool,
}

/// Chooses a replica for a request of `cost` MU whose slice is served by `subset`.
/// `exclude` holds replicas already tried for this request. `None`: no healthy replica.
pub fn choose(
    subset: &[ReplicaId],
    fleet: &[Candidate],
    cost: f64,
    exclude: &[ReplicaId],
    spill: SpillPolicy,
) -> Option<Choice> {
    let usable = |c: &&Candidate| c.healthy && !exclude.contains(&c.id);
    // Inside: ties go to the earlier replica in the subset (the slice's preferred one).
    let mut inside: Option<(usize, &Candidate)> = None;
    let mut outside: Option<&Candidate> = None;
    for c in fleet.iter().filter(usable) {
        match subset.iter().position(|&id| id == c.id) {
            Some(rank) => {
                let better = inside.is_none_or(|(r, best)| {
                    let (l, bl) = (c.load_s(cost), best.load_s(cost));
                    l < bl || (l == bl && rank < r)
                });
                if better {
                    inside = Some((rank, c));
                }
            }
            None => {
                let better = outside.is_none_or(|best| {
                    let (l, bl) = (c.load_s(cost), best.load_s(cost));
                    l < bl || (l == bl && c.id < best.id)
                });
                if better {
                    outside = Some(c);
                }
            }
        }
    }
    match (inside, outside) {
        (Some((_, i)), Some(o))
            if i.load_s(cost) > spill.ratio * o.load_s(cost) + spill.slack_s =>
        {
            Some(Choice {
                replica: o.id,
                spilled: true,
            })
        }
        (Some((_, i)), _) => Some(Choice {
            replica: i.id,
            spilled: false,
        }),
        (None, Some(o)) => Some(Choice {
            replica: o.id,
            spilled: true,
        }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(id: u64, mu: f64) -> Candidate {
        Candidate {
            id: ReplicaId(id),
            healthy: true,
            inflight_mu: mu,
            capacity_mu_per_min: 60_000.0,
        }
    }

    #[test]
    fn picks_least_loaded_in_subset_and_prefers_the_leader_on_ties() {
        let fleet = [cand(0, 0.0), cand(1, 0.0), cand(2, 0.0)];
        let subset = [ReplicaId(1), ReplicaId(0)];
        let c = choose(&subset, &fleet, 10.0, &[], SpillPolicy::default()).unwrap();
        assert_eq!(
            c,
            Choice {
                replica: ReplicaId(1),
                spilled: false
            }
        );
        let fleet = [cand(0, 0.0), cand(1, 500.0), cand(2, 0.0)];
        assert_eq!(
            choose(&subset, &fleet, 10.0, &[], SpillPolicy::default())
                .unwrap()
                .replica,
            ReplicaId(0)
        );
    }

    #[test]
    fn capacity_matters() {
        let mut big = cand(1, 2000.0);
        big.capacity_mu_per_min = 240_000.0;
        let fleet = [cand(0, 1000.0), big];
        let subset = [ReplicaId(0), ReplicaId(1)];
        assert_eq!(
            choose(&subset, &fleet, 10.0, &[], SpillPolicy::default())
                .unwrap()
                .replica,
            ReplicaId(1)
        );
    }

    #[test]
    fn spills_only_past_the_threshold() {
        let subset = [ReplicaId(0)];
        // 0.5 s of work inside vs 0 outside: 0.5 < 1.5*0 + 1.0, stay.
        let fleet = [cand(0, 500.0), cand(1, 0.0)];
        assert!(
            !choose(&subset, &fleet, 0.0, &[], SpillPolicy::default())
                .unwrap()
                .spilled
        );
        // 5 s inside: leave.
        let fleet = [cand(0, 5000.0), cand(1, 0.0)];
        assert_eq!(
            choose(&subset, &fleet, 0.0, &[], SpillPolicy::default()).unwrap(),
            Choice {
                replica: ReplicaId(1),
                spilled: true
            }
        );
    }

    #[test]
    fn unhealthy_and_excluded_replicas_are_skipped() {
        let mut sick = cand(0, 0.0);
        sick.healthy = false;
        let fleet = [sick, cand(1, 100.0), cand(2, 0.0)];
        let subset = [ReplicaId(0), ReplicaId(1)];
        assert_eq!(
            choose(&subset, &fleet, 1.0, &[], SpillPolicy::default())
                .unwrap()
                .replica,
            ReplicaId(1)
        );
        let c = choose(
            &subset,
            &fleet,
            1.0,
            &[ReplicaId(1)],
            SpillPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            c,
            Choice {
                replica: ReplicaId(2),
                spilled: true
            }
        );
        assert_eq!(
            choose(
                &subset,
                &fleet,
                1.0,
                &[ReplicaId(1), ReplicaId(2)],
                SpillPolicy::default()
            ),
            None
        );
    }

    proptest! {
        #[test]
        fn choice_is_healthy_unexcluded_and_minimal_in_its_group(
            loads in proptest::collection::vec((0.0f64..10_000.0, any::<bool>()), 1..12),
            subset_mask in any::<u16>(),
            excl_mask in any::<u16>(),
            cost in 0.0f64..500.0,
        ) {
            let fleet: Vec<Candidate> = loads.iter().enumerate().map(|(i, &(mu, h))| {
                Candidate { id: ReplicaId(i as u64), healthy: h, inflight_mu: mu, capacity_mu_per_min: 60_000.0 }
            }).collect();
            let subset: Vec<ReplicaId> = fleet.iter().filter(|c| subset_mask >> c.id.0 & 1 == 1).map(|c| c.id).collect();
            let exclude: Vec<ReplicaId> = fleet.iter().filter(|c| excl_mask >> c.id.0 & 1 == 1).map(|c| c.id).collect();
            let usable: Vec<&Candidate> = fleet.iter().filter(|c| c.healthy && !exclude.contains(&c.id)).collect();
            match choose(&subset, &fleet, cost, &exclude, SpillPolicy::default()) {
                None => prop_assert!(usable.is_empty()),
                Some(ch) => {
                    let picked = usable.iter().find(|c| c.id == ch.replica);
                    prop_assert!(picked.is_some());
                    let picked = picked.unwrap();
                    prop_assert_eq!(ch.spilled, !subset.contains(&ch.replica));
                    // Nothing usable in the same group is less loaded.
                    for c in &usable {
                        if subset.contains(&c.id) == subset.contains(&ch.replica) {
                            prop_assert!(picked.load_s(cost) <= c.load_s(cost));
                        }
                    }
                    // It stays inside whenever the subset has a usable replica that is not far worse.
                    let best_in = usable.iter().filter(|c| subset.contains(&c.id)).map(|c| c.load_s(cost)).fold(f64::INFINITY, f64::min);
                    let best_out = usable.iter().filter(|c| !subset.contains(&c.id)).map(|c| c.load_s(cost)).fold(f64::INFINITY, f64::min);
                    if best_in.is_finite() && best_in <= 1.5 * best_out + 1.0 {
                        prop_assert!(!ch.spilled);
                    }
                }
            }
        }
    }
}
