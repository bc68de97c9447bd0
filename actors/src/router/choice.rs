//! Replica choice: the healthy replica of the workload's *home* — the slice's subset, plus
//! any replica expected to hold the workload's prefix — with the best score: the seconds
//! of work queued there if it took the request (its in-flight MU plus what this request
//! costs *there*, where cached prompt tokens are nearly free, relative to capacity), plus
//! the delay that prefill a warm replica would have skipped imposes on the requests
//! sharing the replica. Outside the home only when the home is clearly worse, because
//! leaving it throws away the prefix cache.

use crate::slice::ReplicaId;

/// What the router knows about one replica when it chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: ReplicaId,
    pub healthy: bool,
    pub inflight_mu: f64,
    /// Requests in flight on the replica.
    pub inflight_requests: u64,
    pub capacity_mu_per_min: f64,
    /// This request's price on this replica (depends on what it has cached).
    pub cost_mu: f64,
    /// The replica is expected to hold part of the workload's prefix.
    pub warm: bool,
}

impl Candidate {
    /// Seconds of work queued on the replica if it also took this request.
    pub fn load_s(&self) -> f64 {
        if self.capacity_mu_per_min <= 0.0 {
            return f64::INFINITY;
        }
        (self.inflight_mu + self.cost_mu) * 60.0 / self.capacity_mu_per_min
    }

    /// What placing the request here costs, in request-seconds: its own `load_s`, plus
    /// the delay its *avoidable* work imposes on others. Avoidable work is what this
    /// replica would spend beyond the request's cheapest price anywhere (`min_cost`,
    /// the price on the replica holding most of its prefix): prefill a warm replica
    /// would skip. It delays every request sharing the replica, so it is counted once
    /// per request in flight there (at least once), times `waste_weight`.
    pub fn score_s(&self, min_cost: f64, waste_weight: f64) -> f64 {
        if self.capacity_mu_per_min <= 0.0 {
            return f64::INFINITY;
        }
        let waste_s = (self.cost_mu - min_cost).max(0.0) * 60.0 / self.capacity_mu_per_min;
        let sharing = self.inflight_requests.max(1) as f64;
        self.load_s() + waste_weight * sharing * waste_s
    }
}

/// When a request whose prefix is cached somewhere leaves its home: the home's best
/// score must exceed `ratio × (best score elsewhere) + slack_s`. A request with nothing
/// cached anywhere leaves as soon as a replica outside scores better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpillPolicy {
    pub ratio: f64,
    pub slack_s: f64,
}

impl Default for SpillPolicy {
    fn default() -> Self {
        Self {
            ratio: 1.2,
            slack_s: 0.5,
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

/// Chooses a replica for a request whose slice is served by `subset`. `exclude` holds
/// replicas already tried for this request. `None`: no healthy replica.
pub fn choose(
    subset: &[ReplicaId],
    fleet: &[Candidate],
    exclude: &[ReplicaId],
    spill: SpillPolicy,
    waste_weight: f64,
) -> Option<Choice> {
    let usable = |c: &&Candidate| c.healthy && !exclude.contains(&c.id);
    let min_cost = fleet
        .iter()
        .filter(usable)
        .map(|c| c.cost_mu)
        .fold(f64::INFINITY, f64::min);
    let score = |c: &Candidate| c.score_s(min_cost, waste_weight);
    let any_warm = fleet.iter().filter(usable).any(|c| c.warm);
    // Home ties go to a warm replica, then to the earlier replica in the subset (the
    // slice's preferred one), then to the lower id.
    let home_rank = |c: &Candidate| {
        let pos = subset.iter().position(|&id| id == c.id);
        (!c.warm, pos.unwrap_or(usize::MAX), c.id)
    };
    let mut home: Option<&Candidate> = None;
    let mut outside: Option<&Candidate> = None;
    for c in fleet.iter().filter(usable) {
        if c.warm || subset.contains(&c.id) {
            let better = home.is_none_or(|best| {
                let (l, bl) = (score(c), score(best));
                l < bl || (l == bl && home_rank(c) < home_rank(best))
            });
            if better {
                home = Some(c);
            }
        } else {
            let better = outside.is_none_or(|best| {
                let (l, bl) = (score(c), score(best));
                l < bl || (l == bl && c.id < best.id)
            });
            if better {
                outside = Some(c);
            }
        }
    }
    let pick = match (home, outside) {
        // With the prefix cached somewhere, leaving needs a clear margin (the score has
        // already charged the lost cache); with nothing cached anywhere there is no
        // locality to protect, and the better replica wins.
        (Some(h), Some(o)) if any_warm && score(h) > spill.ratio * score(o) + spill.slack_s => o,
        (Some(h), Some(o)) if !any_warm && score(h) > score(o) => o,
        (Some(h), _) => h,
        (None, Some(o)) => o,
        (None, None) => return None,
    };
    Some(Choice {
        replica: pick.id,
        spilled: !subset.contains(&pick.id),
    })
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
            inflight_requests: 0,
            capacity_mu_per_min: 60_000.0,
            cost_mu: 10.0,
            warm: false,
        }
    }

    fn pick(subset: &[ReplicaId], fleet: &[Candidate]) -> Option<Choice> {
        choose(subset, fleet, &[], SpillPolicy::default(), 0.0)
    }

    #[test]
    fn picks_least_loaded_in_subset_and_prefers_the_leader_on_ties() {
        let fleet = [cand(0, 0.0), cand(1, 0.0), cand(2, 0.0)];
        let subset = [ReplicaId(1), ReplicaId(0)];
        assert_eq!(
            pick(&subset, &fleet).unwrap(),
            Choice {
                replica: ReplicaId(1),
                spilled: false
            }
        );
        let fleet = [cand(0, 0.0), cand(1, 500.0), cand(2, 0.0)];
        assert_eq!(pick(&subset, &fleet).unwrap().replica, ReplicaId(0));
    }

    #[test]
    fn capacity_matters() {
        let mut big = cand(1, 2000.0);
        big.capacity_mu_per_min = 240_000.0;
        let fleet = [cand(0, 1000.0), big];
        let subset = [ReplicaId(0), ReplicaId(1)];
        assert_eq!(pick(&subset, &fleet).unwrap().replica, ReplicaId(1));
    }

    #[test]
    fn a_replica_holding_the_prefix_wins_when_its_cheaper_price_makes_up_the_load() {
        // Replica 1 has 200 MU more queued, but the request costs 300 MU less there.
        let mut warm = cand(1, 400.0);
        warm.cost_mu = 20.0;
        warm.warm = true;
        let mut cold = cand(0, 200.0);
        cold.cost_mu = 320.0;
        let subset = [ReplicaId(0), ReplicaId(1)];
        assert_eq!(pick(&subset, &[cold, warm]).unwrap().replica, ReplicaId(1));
        // Not when it is much busier.
        warm.inflight_mu = 700.0;
        assert_eq!(pick(&subset, &[cold, warm]).unwrap().replica, ReplicaId(0));
        // On equal loads the warm replica is preferred over the subset's leader.
        let (mut a, mut b) = (cand(0, 0.0), cand(1, 0.0));
        b.warm = true;
        assert_eq!(pick(&subset, &[a, b]).unwrap().replica, ReplicaId(1));
        a.warm = true;
        assert_eq!(pick(&subset, &[a, b]).unwrap().replica, ReplicaId(0));
    }

    #[test]
    fn a_warm_replica_outside_the_subset_is_home_without_spill_threshold() {
        // The workload spilled to replica 2 before: it may stay there, and it counts
        // as spilled (outside the subset) for the caller.
        let mut w = cand(2, 100.0);
        w.warm = true;
        let fleet = [cand(0, 200.0), w, cand(3, 0.0)];
        assert_eq!(
            pick(&[ReplicaId(0)], &fleet).unwrap(),
            Choice {
                replica: ReplicaId(2),
                spilled: true
            }
        );
    }

    #[test]
    fn a_warm_request_spills_only_past_the_threshold() {
        let subset = [ReplicaId(0)];
        let warm = |mu| Candidate {
            warm: true,
            ..cand(0, mu)
        };
        // 0.4 s of work at home vs 0.01 s outside: 0.4 < 1.2 × 0.01 + 0.5, stay.
        let fleet = [warm(390.0), cand(1, 0.0)];
        assert!(!pick(&subset, &fleet).unwrap().spilled);
        // 5 s at home: leave.
        let fleet = [warm(5000.0), cand(1, 0.0)];
        assert_eq!(
            pick(&subset, &fleet).unwrap(),
            Choice {
                replica: ReplicaId(1),
                spilled: true
            }
        );
    }

    #[test]
    fn a_request_cached_nowhere_leaves_the_subset_for_any_better_replica() {
        let subset = [ReplicaId(0)];
        // Equal: stay.
        assert!(
            !pick(&subset, &[cand(0, 0.0), cand(1, 0.0)])
                .unwrap()
                .spilled
        );
        // Slightly less loaded outside: go.
        assert_eq!(
            pick(&subset, &[cand(0, 100.0), cand(1, 50.0)]).unwrap(),
            Choice {
                replica: ReplicaId(1),
                spilled: true
            }
        );
    }

    #[test]
    fn avoidable_prefill_weighs_more_on_a_replica_many_requests_share() {
        // The request costs 310 MU on cold replicas and 10 on the warm one, which has
        // 650 MU queued (0.66 s with it) against 0 and 200 on the cold ones.
        let mut w = cand(0, 650.0);
        w.warm = true;
        w.inflight_requests = 4;
        let idle = Candidate {
            cost_mu: 310.0,
            ..cand(1, 0.0)
        };
        let mut shared = Candidate {
            cost_mu: 310.0,
            ..cand(2, 200.0)
        };
        shared.inflight_requests = 8;
        let subset = [ReplicaId(0), ReplicaId(1), ReplicaId(2)];
        let policy = SpillPolicy::default();
        // Ignoring waste, the idle replica finishes the request first (0.31 s).
        let c = choose(&subset, &[w, idle, shared], &[], policy, 0.0).unwrap();
        assert_eq!(c.replica, ReplicaId(1));
        // Its 300 MU of avoidable prefill (0.3 s) delays nobody there, so it still wins.
        let c = choose(&subset, &[w, idle, shared], &[], policy, 1.0).unwrap();
        assert_eq!(c.replica, ReplicaId(1));
        // With requests sharing the idle replica, the waste delays each of them: stay warm.
        let busy = Candidate {
            inflight_requests: 3,
            ..idle
        };
        let c = choose(&subset, &[w, busy, shared], &[], policy, 1.0).unwrap();
        assert_eq!(c.replica, ReplicaId(0));
        // Scores: own load plus weight × sharing × waste.
        assert!((busy.score_s(10.0, 1.0) - (0.31 + 3.0 * 0.3)).abs() < 1e-9);
        assert!((w.score_s(10.0, 1.0) - 0.66).abs() < 1e-9);
    }

    #[test]
    fn unhealthy_and_excluded_replicas_are_skipped() {
        let mut sick = cand(0, 0.0);
        sick.healthy = false;
        let fleet = [sick, cand(1, 100.0), cand(2, 200.0)];
        let subset = [ReplicaId(0), ReplicaId(1)];
        assert_eq!(pick(&subset, &fleet).unwrap().replica, ReplicaId(1));
        let c = choose(
            &subset,
            &fleet,
            &[ReplicaId(1)],
            SpillPolicy::default(),
            0.0,
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
                &[ReplicaId(1), ReplicaId(2)],
                SpillPolicy::default(),
                0.0
            ),
            None
        );
    }

    proptest! {
        #[test]
        fn choice_is_healthy_unexcluded_and_minimal_in_its_group(
            loads in proptest::collection::vec((0.0f64..10_000.0, any::<bool>(), 0.0f64..500.0, any::<bool>()), 1..12),
            subset_mask in any::<u16>(),
            excl_mask in any::<u16>(),
        ) {
            let fleet: Vec<Candidate> = loads.iter().enumerate().map(|(i, &(mu, h, cost, warm))| {
                Candidate { id: ReplicaId(i as u64), healthy: h, inflight_mu: mu, inflight_requests: 0, capacity_mu_per_min: 60_000.0, cost_mu: cost, warm }
            }).collect();
            let subset: Vec<ReplicaId> = fleet.iter().filter(|c| subset_mask >> c.id.0 & 1 == 1).map(|c| c.id).collect();
            let exclude: Vec<ReplicaId> = fleet.iter().filter(|c| excl_mask >> c.id.0 & 1 == 1).map(|c| c.id).collect();
            let usable: Vec<&Candidate> = fleet.iter().filter(|c| c.healthy && !exclude.contains(&c.id)).collect();
            let is_home = |c: &Candidate| c.warm || subset.contains(&c.id);
            match choose(&subset, &fleet, &exclude, SpillPolicy::default(), 0.0) {
                None => prop_assert!(usable.is_empty()),
                Some(ch) => {
                    let picked = usable.iter().find(|c| c.id == ch.replica);
                    prop_assert!(picked.is_some());
                    let picked = picked.unwrap();
                    prop_assert_eq!(ch.spilled, !subset.contains(&ch.replica));
                    // Nothing usable in the same group would finish sooner.
                    for c in &usable {
                        if is_home(c) == is_home(picked) {
                            prop_assert!(picked.load_s() <= c.load_s());
                        }
                    }
                    // It stays home whenever home has a usable replica that is not far worse
                    // (with waste weight 0 the score is the load).
                    let any_warm = usable.iter().any(|c| c.warm);
                    let best_in = usable.iter().filter(|c| is_home(c)).map(|c| c.load_s()).fold(f64::INFINITY, f64::min);
                    let best_out = usable.iter().filter(|c| !is_home(c)).map(|c| c.load_s()).fold(f64::INFINITY, f64::min);
                    let (ratio, slack) = if any_warm { (1.2, 0.5) } else { (1.0, 0.0) };
                    if best_in.is_finite() && best_in <= ratio * best_out + slack {
                        prop_assert!(is_home(picked));
                    }
                }
            }
        }
    }
}
