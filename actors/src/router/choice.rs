//! Replica choice: the healthy replica of the workload's *home* — the slice's subset, plus
//! any replica expected to hold the workload's prefix — with the best score: the seconds
//! of work queued there if it took the request (its in-flight MU plus what this request
//! costs *there*, where cached prompt tokens are nearly free, relative to capacity), plus
//! the prefill a warm replica would have skipped, once more: capacity taken from
//! whoever comes next. Outside the home only when the home is clearly worse, because
//! leaving it throws away the prefix cache.

use super::load_order::Floor;
use crate::slice::ReplicaId;

/// What the router knows about one replica when it chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: ReplicaId,
    pub healthy: bool,
    /// MU in flight there that a request arriving now would wait for (queued prefill,
    /// a share of running decode).
    pub inflight_mu: f64,
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

    /// What placing the request here costs, in seconds: its own `load_s`, plus its
    /// *avoidable* work times `waste_weight`. Avoidable work is what this replica would
    /// spend beyond the request's cheapest price anywhere (`min_cost`, the price on the
    /// replica holding most of its prefix): prefill a warm replica would skip, capacity
    /// lost to whoever comes next there.
    ///
    /// It used to count once per request in flight on the replica, as if each of them
    /// waited for it. Most of them are decoding, and a prefill beside them lengthens one
    /// step of theirs, not their wait for a first token; so counted, a burst of one
    /// conversation piled onto its one warm replica while idle replicas could have
    /// taken it (`docs/SIM_NOTES.md`, "Bursts of one conversation"). On an idle replica
    /// it does not count at all: there is no one there for it to delay, and a burst
    /// that spreads onto idle replicas, each computing the shared prefix once in
    /// parallel, answers sooner than one queued behind the replica still computing it
    /// (`docs/SIM_NOTES.md`, "Idle replicas").
    pub fn score_s(&self, min_cost: f64, waste_weight: f64) -> f64 {
        if self.capacity_mu_per_min <= 0.0 {
            return f64::INFINITY;
        }
        if self.idle() {
            return self.load_s();
        }
        let waste_s = (self.cost_mu - min_cost).max(0.0) * 60.0 / self.capacity_mu_per_min;
        self.load_s() + waste_weight * waste_s
    }

    /// Nothing queued or running there, as far as the router knows.
    pub fn idle(&self) -> bool {
        self.inflight_mu <= 0.0
    }
}

/// When a request whose prefix is cached somewhere leaves its home: the home's best
/// score must exceed `ratio × (best score elsewhere) + slack_s`. A request with nothing
/// cached anywhere leaves as soon as a replica outside scores better, and so does one
/// whose workload already has `burst` requests or more at its home still waiting for
/// their first token (0: never): a burst that outruns its warm replicas is served
/// sooner by one more, which its next requests find warm. The margin protects a cache
/// from being left for a slightly better score; a burst queued on it is not that.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpillPolicy {
    pub ratio: f64,
    pub slack_s: f64,
    pub burst: u32,
}

impl Default for SpillPolicy {
    fn default() -> Self {
        Self {
            ratio: 1.2,
            slack_s: 0.5,
            burst: 3,
        }
    }
}

impl SpillPolicy {
    /// `waiting_home` of a workload's requests waiting at its home for their first token
    /// are a burst.
    pub fn is_burst(&self, waiting_home: u32) -> bool {
        self.burst > 0 && waiting_home >= self.burst
    }
}

/// The router's pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub replica: ReplicaId,
    /// True when the replica is outside the slice's subset.
    pub spilled: bool,
}

/// The replicas a request knows nothing special about: not in its slice's subset, not
/// expected to hold any of its prompt. Each costs the request `cost_mu` (its price with
/// nothing cached). `walk` yields them least queued first, each with a [`Floor`] that
/// holds for every replica not yet yielded (as
/// [`LoadOrder::walk`](super::load_order::LoadOrder::walk) does), so the choice stops
/// walking as soon as none further on can win.
pub struct ColdReplicas<I> {
    pub walk: I,
    pub cost_mu: f64,
    /// The largest capacity among them (an upper bound is enough).
    pub max_capacity: f64,
}

/// Chooses a replica for a request whose slice is served by `subset`. `known` holds the
/// slice's subset and every replica expected to hold part of the prompt, each with its
/// own price; `cold` the rest of the fleet. `exclude` holds replicas already tried for
/// this request. `waiting(r)`: the requests of this request's workload sent to `r` and
/// not yet answered with a first token, asked only of home replicas and only when the
/// margin decides. `None`: no healthy replica.
///
/// The cost is O(|known|) plus the cold replicas walked: those queued less than the best
/// score found, usually a handful, so it does not grow with the fleet.
pub fn choose<I: Iterator<Item = (Candidate, Floor)>>(
    subset: &[ReplicaId],
    known: &[Candidate],
    cold: ColdReplicas<I>,
    exclude: &[ReplicaId],
    spill: SpillPolicy,
    waste_weight: f64,
    waiting: impl Fn(ReplicaId) -> u32,
) -> Option<Choice> {
    let usable = |c: &Candidate| c.healthy && !exclude.contains(&c.id);
    let cold_cost = cold.cost_mu;
    let max_capacity = cold.max_capacity;
    // The cheapest price anywhere. A cached token never costs more than computing it
    // (profiles are checked for that), so the full price only matters when nothing
    // known is usable, and then only cold replicas can be chosen.
    let min_cost = known
        .iter()
        .filter(|c| usable(c))
        .map(|c| c.cost_mu)
        .fold(cold_cost, f64::min);
    let score = |c: &Candidate| c.score_s(min_cost, waste_weight);
    let any_warm = known.iter().filter(|c| usable(c)).any(|c| c.warm);
    // Home ties go to a warm replica, then to the earlier replica in the subset (the
    // slice's preferred one), then to the lower id.
    let home_rank = |c: &Candidate| {
        let pos = subset.iter().position(|&id| id == c.id);
        (!c.warm, pos.unwrap_or(usize::MAX), c.id)
    };
    let mut home: Option<(f64, &Candidate)> = None;
    let mut outside: Option<(f64, Candidate)> = None;
    let is_home = |c: &Candidate| c.warm || subset.contains(&c.id);
    for c in known.iter().filter(|c| usable(c)) {
        let s = score(c);
        if is_home(c) {
            let better =
                home.is_none_or(|(bs, best)| s < bs || (s == bs && home_rank(c) < home_rank(best)));
            if better {
                home = Some((s, c));
            }
        } else if outside.is_none_or(|(bs, best)| s < bs || (s == bs && c.id < best.id)) {
            outside = Some((s, *c));
        }
    }
    // A cold replica not yet walked scores at least the floor's queue plus the
    // request's price on the largest replica, and its avoidable part unless it may be
    // idle (a floor of nothing queued): stop when that cannot beat the best outside.
    // Ties go to the first walked.
    let price_s = cold_cost * 60.0 / max_capacity;
    let waste_s = waste_weight * (cold_cost - min_cost).max(0.0) * 60.0 / max_capacity;
    for (c, floor) in cold.walk {
        if usable(&c) && c.capacity_mu_per_min > 0.0 {
            let s = score(&c);
            if outside.is_none_or(|(bs, _)| s < bs) {
                outside = Some((s, c));
            }
        }
        let waste_s = if floor.queued_s > 0.0 { waste_s } else { 0.0 };
        let bound = floor.queued_s + price_s + waste_s;
        if outside.is_some_and(|(bs, _)| bound >= bs) {
            break;
        }
    }
    // Whether a warm home scoring `h` is left for `o`: past the margin, or past no
    // margin when a burst waits there. Every home replica's waiting requests count,
    // usable or not: they are the burst.
    let leaves = |h: f64, o: f64| {
        let burst = || {
            let home = known.iter().filter(|c| is_home(c));
            spill.is_burst(home.map(|c| waiting(c.id)).sum())
        };
        h > spill.ratio * o + spill.slack_s || (h > o && burst())
    };
    let pick = match (home, outside) {
        // With the prefix cached somewhere, leaving needs a clear margin (the score has
        // already charged the lost cache) unless a burst waits at home; with nothing
        // cached anywhere there is no locality to protect, and the better replica wins.
        (Some((h, _)), Some((o, out))) if any_warm && leaves(h, o) => out.id,
        (Some((h, _)), Some((o, out))) if !any_warm && h > o => out.id,
        (Some((_, h)), _) => h.id,
        (None, Some((_, o))) => o.id,
        (None, None) => return None,
    };
    Some(Choice {
        replica: pick,
        spilled: !subset.contains(&pick),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The choice over a whole fleet, split as the router core splits it: replicas at
    /// the highest price, outside the subset and not warm, are the cold ones.
    fn choose_fleet(
        subset: &[ReplicaId],
        fleet: &[Candidate],
        exclude: &[ReplicaId],
        spill: SpillPolicy,
        waste_weight: f64,
    ) -> Option<Choice> {
        choose_waiting(subset, fleet, exclude, spill, waste_weight, &[])
    }

    /// The requests of the workload waiting on each replica, `(replica, count)`.
    fn waiting_in(waits: &[(u64, u32)]) -> impl Fn(ReplicaId) -> u32 + '_ {
        |r: ReplicaId| waits.iter().filter(|w| w.0 == r.0).map(|w| w.1).sum()
    }

    /// [`choose_fleet`] with `waits` of the workload's requests waiting.
    fn choose_waiting(
        subset: &[ReplicaId],
        fleet: &[Candidate],
        exclude: &[ReplicaId],
        spill: SpillPolicy,
        waste_weight: f64,
        waits: &[(u64, u32)],
    ) -> Option<Choice> {
        let cold_cost = fleet.iter().map(|c| c.cost_mu).fold(0.0, f64::max);
        let (known, mut cold): (Vec<Candidate>, Vec<Candidate>) = fleet
            .iter()
            .partition(|c| c.warm || subset.contains(&c.id) || c.cost_mu < cold_cost);
        let queued = |c: &Candidate| c.inflight_mu * 60.0 / c.capacity_mu_per_min;
        cold.sort_by(|a, b| queued(a).total_cmp(&queued(b)).then(a.id.cmp(&b.id)));
        let max_capacity = fleet
            .iter()
            .map(|c| c.capacity_mu_per_min)
            .fold(0.0, f64::max);
        let walk = cold.into_iter().map(move |c| {
            let floor = Floor {
                queued_s: queued(&c),
            };
            (c, floor)
        });
        let cold = ColdReplicas {
            walk,
            cost_mu: cold_cost,
            max_capacity,
        };
        let waiting = waiting_in(waits);
        choose(subset, &known, cold, exclude, spill, waste_weight, waiting)
    }

    /// The rule scored over every replica, as it was before the walk: the reference
    /// the walk must agree with.
    fn exhaustive(
        subset: &[ReplicaId],
        fleet: &[Candidate],
        exclude: &[ReplicaId],
        spill: SpillPolicy,
        waste_weight: f64,
        waits: &[(u64, u32)],
    ) -> Option<(ReplicaId, f64)> {
        let usable: Vec<&Candidate> = fleet
            .iter()
            .filter(|c| c.healthy && !exclude.contains(&c.id))
            .collect();
        let min_cost = usable
            .iter()
            .map(|c| c.cost_mu)
            .fold(f64::INFINITY, f64::min);
        let score = |c: &Candidate| c.score_s(min_cost, waste_weight);
        let any_warm = usable.iter().any(|c| c.warm);
        let best = |home: bool| {
            usable
                .iter()
                .filter(|c| (c.warm || subset.contains(&c.id)) == home)
                .map(|c| (c.id, score(c)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
        };
        let waiting = waiting_in(waits);
        let waiting_home = fleet
            .iter()
            .filter(|c| c.warm || subset.contains(&c.id))
            .map(|c| waiting(c.id))
            .sum();
        let (ratio, slack) = if !any_warm || spill.is_burst(waiting_home) {
            (1.0, 0.0)
        } else {
            (spill.ratio, spill.slack_s)
        };
        match (best(true), best(false)) {
            (Some(h), Some(o)) if h.1 > ratio * o.1 + slack => Some(o),
            (Some(h), _) => Some(h),
            (None, o) => o,
        }
    }

    fn cand(id: u64, mu: f64) -> Candidate {
        Candidate {
            id: ReplicaId(id),
            healthy: true,
            inflight_mu: mu,
            capacity_mu_per_min: 60_000.0,
            cost_mu: 10.0,
            warm: false,
        }
    }

    fn pick(subset: &[ReplicaId], fleet: &[Candidate]) -> Option<Choice> {
        choose_fleet(subset, fleet, &[], SpillPolicy::default(), 0.0)
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
    fn avoidable_prefill_is_charged_once_beside_the_requests_own_wait() {
        // The request costs 310 MU on cold replicas and 10 on the warm one, which has
        // 650 MU queued (0.66 s with it) against 0 and 200 on the cold ones.
        let mut w = cand(0, 650.0);
        w.warm = true;
        let idle = Candidate {
            cost_mu: 310.0,
            ..cand(1, 0.0)
        };
        let queued = Candidate {
            cost_mu: 310.0,
            ..cand(2, 200.0)
        };
        let subset = [ReplicaId(0), ReplicaId(1), ReplicaId(2)];
        let policy = SpillPolicy::default();
        // Ignoring waste, the idle replica finishes the request first (0.31 s).
        let c = choose_fleet(&subset, &[w, idle, queued], &[], policy, 0.0).unwrap();
        assert_eq!(c.replica, ReplicaId(1));
        // With its 300 MU of avoidable prefill (0.3 s) it still wins: 0.61 < 0.66.
        let c = choose_fleet(&subset, &[w, idle, queued], &[], policy, 1.0).unwrap();
        assert_eq!(c.replica, ReplicaId(1));
        // A little queued there, and the warm replica wins (0.71 > 0.66).
        let busy = Candidate {
            inflight_mu: 100.0,
            ..idle
        };
        let c = choose_fleet(&subset, &[w, busy, queued], &[], policy, 1.0).unwrap();
        assert_eq!(c.replica, ReplicaId(0));
        // Scores: own load plus weight × waste.
        assert!((busy.score_s(10.0, 1.0) - (0.41 + 0.3)).abs() < 1e-9);
        assert!((busy.score_s(10.0, 2.0) - (0.41 + 0.6)).abs() < 1e-9);
        assert!((w.score_s(10.0, 1.0) - 0.66).abs() < 1e-9);
    }

    #[test]
    fn avoidable_prefill_is_not_charged_on_an_idle_replica() {
        // A burst's first request is computing the shared context on the warm replica
        // (400 MU queued); the next request costs 10 MU there and 310 MU elsewhere.
        let mut warm = cand(0, 400.0);
        warm.warm = true;
        warm.cost_mu = 10.0;
        let idle = Candidate {
            cost_mu: 310.0,
            ..cand(1, 0.0)
        };
        let subset = [ReplicaId(0), ReplicaId(1)];
        let policy = SpillPolicy::default();
        // The idle replica answers first (0.31 s against 0.41 s) and delays no one: its
        // avoidable 300 MU is not charged.
        assert!((idle.score_s(10.0, 1.0) - 0.31).abs() < 1e-9);
        let c = choose_fleet(&subset, &[warm, idle], &[], policy, 1.0).unwrap();
        assert_eq!(c.replica, ReplicaId(1));
        // With anything at all in flight there, the avoidable work counts again.
        let busy = Candidate {
            inflight_mu: 1.0,
            ..idle
        };
        assert!((busy.score_s(10.0, 1.0) - (0.311 + 0.3)).abs() < 1e-9);
        let c = choose_fleet(&subset, &[warm, busy], &[], policy, 1.0).unwrap();
        assert_eq!(c.replica, ReplicaId(0));
    }

    #[test]
    fn a_burst_waiting_at_home_spills_without_the_margin() {
        let subset = [ReplicaId(0)];
        // 0.4 s of work at home, nothing outside: inside the margin, so it stays home
        // while fewer than `burst` of its workload's requests wait there.
        let home = Candidate {
            warm: true,
            ..cand(0, 390.0)
        };
        let spill = SpillPolicy::default();
        let leaves = |fleet: &[Candidate], waits: &[(u64, u32)], spill| {
            let c = choose_waiting(&subset, fleet, &[], spill, 0.0, waits).unwrap();
            (c.spilled, c.replica)
        };
        let fleet = [home, cand(1, 0.0)];
        assert_eq!(leaves(&fleet, &[(0, 2)], spill), (false, ReplicaId(0)));
        assert_eq!(leaves(&fleet, &[(0, 3)], spill), (true, ReplicaId(1)));
        // The waiting requests of every home replica add up, healthy or not.
        let mut sick = cand(2, 0.0);
        (sick.healthy, sick.warm) = (false, true);
        let fleet = [home, cand(1, 0.0), sick];
        assert!(leaves(&fleet, &[(0, 2), (2, 1)], spill).0);
        // Waiting requests outside the home are no burst there.
        let fleet = [home, cand(1, 0.0)];
        assert!(!leaves(&fleet, &[(1, 5)], spill).0);
        // The best outside must still score better: a burst does not leave for worse.
        let fleet = [home, cand(1, 500.0)];
        assert!(!leaves(&fleet, &[(0, 9)], spill).0);
        // A burst of 0 turns the rule off.
        let off = SpillPolicy { burst: 0, ..spill };
        let fleet = [home, cand(1, 0.0)];
        assert!(!leaves(&fleet, &[(0, 9)], off).0);
    }

    #[test]
    fn unhealthy_and_excluded_replicas_are_skipped() {
        let mut sick = cand(0, 0.0);
        sick.healthy = false;
        let fleet = [sick, cand(1, 100.0), cand(2, 200.0)];
        let subset = [ReplicaId(0), ReplicaId(1)];
        assert_eq!(pick(&subset, &fleet).unwrap().replica, ReplicaId(1));
        let c = choose_fleet(
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
            choose_fleet(
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
                Candidate { id: ReplicaId(i as u64), healthy: h, inflight_mu: mu, capacity_mu_per_min: 60_000.0, cost_mu: cost, warm }
            }).collect();
            let subset: Vec<ReplicaId> = fleet.iter().filter(|c| subset_mask >> c.id.0 & 1 == 1).map(|c| c.id).collect();
            let exclude: Vec<ReplicaId> = fleet.iter().filter(|c| excl_mask >> c.id.0 & 1 == 1).map(|c| c.id).collect();
            let usable: Vec<&Candidate> = fleet.iter().filter(|c| c.healthy && !exclude.contains(&c.id)).collect();
            let is_home = |c: &Candidate| c.warm || subset.contains(&c.id);
            match choose_fleet(&subset, &fleet, &exclude, SpillPolicy::default(), 0.0) {
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

    proptest! {
        #[test]
        fn walking_the_cold_replicas_in_order_finds_what_scoring_all_finds(
            loads in proptest::collection::vec((0.0f64..10_000.0, any::<bool>(), 0u8..4, any::<bool>(), 0u8..3), 1..40),
            subset_mask in any::<u64>(),
            excl_mask in any::<u64>(),
            waste_weight in prop::sample::select(vec![0.0, 1.0, 2.0]),
            waits in proptest::collection::vec(0u32..3, 40),
        ) {
            // Cold replicas all cost 300; some others hold part of the prompt; some hold
            // requests of the workload that wait for their first token (a burst at home
            // once they add up to the policy's 3).
            let fleet: Vec<Candidate> = loads.iter().enumerate().map(|(i, &(mu, h, cached, warm, cap))| Candidate {
                id: ReplicaId(i as u64),
                healthy: h,
                inflight_mu: mu,
                capacity_mu_per_min: [60_000.0, 90_000.0, 120_000.0][cap as usize],
                cost_mu: 300.0 - 70.0 * f64::from(cached),
                warm: warm && cached > 0,
            }).collect();
            let waits: Vec<(u64, u32)> = waits.iter().enumerate().map(|(i, &n)| (i as u64, n)).collect();
            let subset: Vec<ReplicaId> = fleet.iter().filter(|c| subset_mask >> c.id.0 & 1 == 1).map(|c| c.id).collect();
            let exclude: Vec<ReplicaId> = fleet.iter().filter(|c| excl_mask >> c.id.0 & 3 == 3).map(|c| c.id).collect();
            let spill = SpillPolicy::default();
            let walked = choose_waiting(&subset, &fleet, &exclude, spill, waste_weight, &waits);
            let all = exhaustive(&subset, &fleet, &exclude, spill, waste_weight, &waits);
            match (walked, all) {
                (None, None) => {}
                (Some(w), Some((_, best))) => {
                    let c = fleet.iter().find(|c| c.id == w.replica).unwrap();
                    let min_cost = fleet.iter().filter(|c| c.healthy && !exclude.contains(&c.id)).map(|c| c.cost_mu).fold(f64::INFINITY, f64::min);
                    let s = c.score_s(min_cost, waste_weight);
                    prop_assert!((s - best).abs() <= 1e-9 * best.abs().max(1.0), "walked {s} vs all {best}");
                }
                (w, a) => prop_assert!(false, "walked {w:?} vs all {a:?}"),
            }
        }
    }
}
