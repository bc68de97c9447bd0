//! Unit and property tests of the assigner. The checks recompute everything they assert
//! (replica loads, churn, validity) from the public types, independently of the
//! assigner's own bookkeeping.

use super::*;
use crate::slice::{Assignment, ReplicaId, Slice, SliceKey};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const END: u128 = 1 << 64;

fn fleet(racks: usize, caps: &[f64]) -> Vec<ReplicaInfo> {
    caps.iter()
        .enumerate()
        .map(|(i, &c)| ReplicaInfo::new(i as u64, format!("rack-{}", i % racks), c))
        .collect()
}

fn eligible(reg: &[ReplicaInfo]) -> BTreeMap<ReplicaId, &ReplicaInfo> {
    let mut m = BTreeMap::new();
    let mut bad = BTreeSet::new();
    for r in reg {
        // Spelled out rather than `ReplicaInfo::eligible`, so that the check stands alone.
        if r.healthy && !r.draining && r.capacity_mu_per_min > 0.0 {
            m.insert(r.id, r);
        } else {
            bad.insert(r.id);
        }
    }
    m.retain(|id, _| !bad.contains(id));
    m
}

/// (min width, max width) after clamping to the fleet, as documented.
fn widths(reg: &[ReplicaInfo], cfg: &AssignerConfig) -> (usize, usize) {
    let el = eligible(reg);
    let racks: BTreeSet<&str> = el.values().map(|r| r.rack.as_str()).collect();
    let n = el.len();
    let mut lo = cfg.min_width.min(n).max(1);
    if racks.len() >= 2 {
        lo = lo.max(2);
    }
    (lo, cfg.max_width.min(n).max(lo))
}

fn valid_subset(sub: &[ReplicaId], reg: &[ReplicaInfo], cfg: &AssignerConfig) -> bool {
    let el = eligible(reg);
    let racks: BTreeSet<&str> = el.values().map(|r| r.rack.as_str()).collect();
    let (lo, hi) = widths(reg, cfg);
    let unique: BTreeSet<_> = sub.iter().collect();
    let sub_racks: BTreeSet<&str> = sub
        .iter()
        .filter_map(|id| el.get(id).map(|r| r.rack.as_str()))
        .collect();
    unique.len() == sub.len()
        && sub.iter().all(|id| el.contains_key(id))
        && (lo..=hi).contains(&sub.len())
        && (racks.len() < 2 || sub_racks.len() >= 2)
}

/// Every invariant an assignment must satisfy after a round.
fn check_assignment(a: &Assignment, reg: &[ReplicaInfo], cfg: &AssignerConfig, keys: &[u64]) {
    // Well formed: the constructor's validation covers the keyspace exactly once.
    Assignment::new(a.generation, a.slices().to_vec()).expect("well formed");
    for &k in keys {
        let hit = a.lookup(SliceKey(k));
        let holding: Vec<&Slice> = a
            .slices()
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                let end = a.slices().get(i + 1).map_or(END, |n| n.start.0 as u128);
                s.start.0 <= k && (k as u128) < end
            })
            .map(|(_, s)| s)
            .collect();
        assert_eq!(holding, vec![hit], "key {k} in exactly one slice");
    }
    if eligible(reg).is_empty() {
        return;
    }
    for s in a.slices() {
        assert!(valid_subset(&s.subset, reg, cfg), "invalid subset {s:?}");
    }
}

/// Pairs of (old, new) slice indices over the common refinement of two assignments.
fn segments(old: &Assignment, new: &Assignment) -> Vec<(u128, u128, usize, usize)> {
    let (o, n) = (old.slices(), new.slices());
    let end = |v: &[Slice], i: usize| v.get(i + 1).map_or(END, |s| s.start.0 as u128);
    let (mut i, mut j, mut at) = (0, 0, 0u128);
    let mut out = Vec::new();
    while i < o.len() && j < n.len() {
        let stop = end(o, i).min(end(n, j));
        out.push((at, stop, i, j));
        at = stop;
        if end(o, i) == stop {
            i += 1;
        }
        if end(n, j) == stop {
            j += 1;
        }
    }
    out
}

/// Budgeted churn, recomputed: load newly sent to replicas outside the old subset, over
/// key ranges whose old subset was valid (the rest is mandatory repair), as a fraction.
fn budgeted_churn(
    old: &Assignment,
    new: &Assignment,
    load: &SliceLoad,
    reg: &[ReplicaInfo],
    cfg: &AssignerConfig,
) -> f64 {
    let total = load.total();
    if total <= 0.0 {
        return 0.0;
    }
    let mut moved = 0.0;
    for (a, b, i, j) in segments(old, new) {
        let os = &old.slices()[i].subset;
        if !valid_subset(os, reg, cfg) {
            continue;
        }
        let ns = &new.slices()[j].subset;
        let fresh = ns.iter().filter(|m| !os.contains(m)).count();
        let l = load.range_load(SliceKey(a as u64), (b < END).then_some(SliceKey(b as u64)));
        moved += l * fresh as f64 / ns.len() as f64;
    }
    moved / total
}

/// Max relative replica load, recomputed from scratch.
fn true_imbalance(a: &Assignment, truth: &SliceLoad, reg: &[ReplicaInfo]) -> f64 {
    let el = eligible(reg);
    let mut loads: BTreeMap<ReplicaId, f64> = el.keys().map(|&id| (id, 0.0)).collect();
    let s = a.slices();
    let mut served = 0.0;
    for (i, sl) in s.iter().enumerate() {
        let end = s.get(i + 1).map(|n| n.start);
        let l = truth.range_load(sl.start, end);
        served += l;
        for m in &sl.subset {
            *loads.get_mut(m).expect("only eligible members") += l / sl.subset.len() as f64;
        }
    }
    let cap: f64 = el.values().map(|r| r.capacity_mu_per_min).sum();
    loads
        .iter()
        .map(|(id, l)| l / (el[id].capacity_mu_per_min * served / cap))
        .fold(0.0, f64::max)
}

/// What routers measure: the true load of each slice of `a`.
fn measure(a: &Assignment, truth: &SliceLoad) -> SliceLoad {
    truth.on_slices_of(a).unwrap()
}

/// Zipf-skewed load: `buckets` equal key ranges, the `rank[i]`-th hottest with weight
/// `1 / (rank + 1)^s`, scaled to `total`.
fn zipf(rank: &[usize], s: f64, total: f64) -> SliceLoad {
    let b = rank.len() as u128;
    let w: Vec<f64> = rank
        .iter()
        .map(|&r| 1.0 / ((r + 1) as f64).powf(s))
        .collect();
    let sum: f64 = w.iter().sum();
    SliceLoad::new(
        (0..rank.len())
            .map(|i| (SliceKey(((i as u128 * END) / b) as u64), total * w[i] / sum))
            .collect(),
    )
    .unwrap()
}

fn ids(a: &Assignment, i: usize) -> Vec<u64> {
    a.slices()[i].subset.iter().map(|r| r.0).collect()
}

fn manual(slices: Vec<(u64, Vec<u64>)>) -> Assignment {
    Assignment::new(
        7,
        slices
            .into_iter()
            .map(|(k, s)| Slice {
                start: SliceKey(k),
                subset: s.into_iter().map(ReplicaId).collect(),
            })
            .collect(),
    )
    .unwrap()
}

// ---------------------------------------------------------------- unit tests

#[test]
fn initial_assignment_is_rack_spread_capacity_weighted_and_a_fixed_point() {
    let reg = fleet(3, &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0]);
    let cfg = AssignerConfig::default();
    let a = initial_assignment(&reg, &cfg).unwrap();
    assert_eq!(a.generation, 1);
    check_assignment(&a, &reg, &cfg, &[0, 1, u64::MAX, 1 << 63]);
    let n = reg.len();
    assert!(a.slices().len() >= 4 * n && a.slices().len() <= 16 * n);
    let even = SliceLoad::uniform(1200.0);
    let imb = true_imbalance(&a, &even, &reg);
    assert!(imb <= 1.12 + 1e-9, "initial imbalance {imb}");
    // Preferred replicas rotate over the whole fleet.
    let leaders: BTreeSet<_> = a.slices().iter().map(|s| s.subset[0]).collect();
    assert_eq!(leaders.len(), n);
    // An even load on a balanced assignment needs nothing.
    let plan = assign(&a, &measure(&a, &even), &reg, &cfg);
    assert!(!plan.changed, "{plan:?}");
    assert_eq!(plan.assignment, a);
    assert!(matches!(
        initial_assignment(&[], &cfg),
        Err(crate::slice::AssignmentError::NoReplicas)
    ));
}

#[test]
fn splits_a_hot_slice_at_its_midpoint_keeping_the_subset() {
    // Four replicas in two racks; four slices; the second is hot.
    let reg = fleet(2, &[1.0; 4]);
    let q = 1u64 << 62;
    let a = manual(vec![
        (0, vec![0, 1]),
        (q, vec![2, 3]),
        (2 * q, vec![0, 3]),
        (3 * q, vec![2, 1]),
    ]);
    let load = SliceLoad::per_slice(&a, &[10.0, 100.0, 10.0, 10.0]).unwrap();
    // With no budget nothing may move; splits are free.
    let cfg = AssignerConfig {
        churn_budget: 0.0,
        min_slices_per_replica: 1,
        ..AssignerConfig::default()
    };
    let plan = assign(&a, &load, &reg, &cfg);
    assert!(plan.splits >= 1, "{plan:?}");
    assert_eq!(plan.churn, 0.0);
    assert_eq!(plan.assignment.generation, 8);
    let out = &plan.assignment;
    let inside: Vec<&Slice> = out
        .slices()
        .iter()
        .filter(|s| s.start.0 >= q && s.start.0 < 2 * q)
        .collect();
    assert!(inside.len() >= 2);
    assert!(inside.iter().all(|s| s.subset == a.slices()[1].subset));
    // One load per slice: cuts at key midpoints.
    assert!(out.slices().iter().any(|s| s.start.0 == q + q / 2));
    check_assignment(out, &reg, &cfg, &[q, q + q / 2, 2 * q - 1]);
}

#[test]
fn finer_load_moves_the_cut_to_the_load_median() {
    let reg = fleet(2, &[1.0; 2]);
    let a = manual(vec![(0, vec![0, 1])]);
    // All the load in the first eighth of the keyspace.
    let e = 1u64 << 61;
    let load = SliceLoad::new(vec![(SliceKey(0), 80.0), (SliceKey(e), 0.0)]).unwrap();
    let cfg = AssignerConfig {
        min_slices_per_replica: 1,
        max_slices_per_replica: 1,
        ..AssignerConfig::default()
    };
    // max 2 slices: exactly one split, at the load median.
    let plan = assign(&a, &load, &reg, &cfg);
    assert_eq!(plan.splits, 1);
    assert_eq!(plan.assignment.slices()[1].start, SliceKey(e / 2));
}

#[test]
fn merges_cold_neighbours_sharing_a_subset_for_free() {
    let reg = fleet(2, &[1.0; 4]);
    let q = 1u64 << 62;
    let a = manual(vec![
        (0, vec![0, 1]),
        (q / 2, vec![0, 1]),
        (q, vec![2, 3]),
        (2 * q, vec![0, 3]),
        (3 * q, vec![2, 1]),
    ]);
    // The first two are cold and share a subset; the others are warm.
    let load = SliceLoad::per_slice(&a, &[0.01, 0.01, 10.0, 10.0, 10.0]).unwrap();
    let cfg = AssignerConfig {
        min_slices_per_replica: 1,
        churn_budget: 0.0,
        ..AssignerConfig::default()
    };
    let plan = assign(&a, &load, &reg, &cfg);
    assert!(plan.merges >= 1, "{plan:?}");
    assert_eq!(plan.churn, 0.0);
    assert_eq!(plan.assignment.slices()[0].start, SliceKey(0));
    assert_eq!(plan.assignment.slices()[1].start, SliceKey(q));
    assert_eq!(ids(&plan.assignment, 0), vec![0, 1]);
}

#[test]
fn merges_down_when_above_the_maximum_slice_count() {
    let reg = fleet(2, &[1.0; 2]);
    let cfg = AssignerConfig {
        min_slices_per_replica: 1,
        max_slices_per_replica: 4,
        ..AssignerConfig::default()
    };
    // 32 slices on 2 replicas, max 8.
    let a = Assignment::uniform(1, &[ReplicaId(0), ReplicaId(1)], 32, 2).unwrap();
    let load = measure(&a, &SliceLoad::uniform(100.0));
    let plan = assign(&a, &load, &reg, &cfg);
    assert!(
        plan.assignment.slices().len() <= 8,
        "{}",
        plan.assignment.slices().len()
    );
    assert_eq!(plan.churn, 0.0, "same subsets merge for free");
}

#[test]
fn widens_an_unsplittable_hot_slice() {
    // One workload key carries most of the load: its slice is a single key.
    let reg = fleet(2, &[1.0; 6]);
    let k = 1u64 << 62;
    let a = manual(vec![
        (0, vec![0, 1]),
        (k, vec![2, 3]),
        (k + 1, vec![4, 5]),
        (1 << 63, vec![0, 3]),
    ]);
    let load = SliceLoad::per_slice(&a, &[10.0, 60.0, 10.0, 10.0]).unwrap();
    let cfg = AssignerConfig {
        churn_budget: 1.0,
        ..AssignerConfig::default()
    };
    let plan = assign(&a, &load, &reg, &cfg);
    assert!(plan.widened >= 1, "{plan:?}");
    let hot = plan.assignment.lookup(SliceKey(k));
    assert_eq!(hot.start, SliceKey(k));
    assert!(hot.subset.len() > 2, "{hot:?}");
    // Its old members stay, the preferred one first.
    assert_eq!(hot.subset[0], ReplicaId(2));
    assert!(hot.subset.contains(&ReplicaId(3)));
    assert!(plan.imbalance_after < plan.imbalance_before);
}

#[test]
fn narrows_a_cold_wide_subset() {
    let reg = fleet(2, &[1.0; 6]);
    let q = 1u64 << 62;
    let a = manual(vec![
        (0, vec![0, 1, 2, 3, 4, 5]),
        (q, vec![2, 3]),
        (2 * q, vec![4, 5]),
        (3 * q, vec![0, 1]),
    ]);
    let load = SliceLoad::per_slice(&a, &[0.001, 10.0, 10.0, 10.0]).unwrap();
    let cfg = AssignerConfig {
        min_slices_per_replica: 1,
        churn_budget: 0.0,
        ..AssignerConfig::default()
    };
    let plan = assign(&a, &load, &reg, &cfg);
    assert_eq!(plan.narrowed, 4, "{plan:?}");
    let cold = plan.assignment.lookup(SliceKey(0));
    assert_eq!(cold.subset.len(), 2);
    assert_eq!(cold.subset[0], ReplicaId(0), "the preferred replica stays");
    check_assignment(&plan.assignment, &reg, &cfg, &[0, q]);
}

#[test]
fn drains_a_replica_within_one_round() {
    let mut reg = fleet(2, &[1.0; 6]);
    let cfg = AssignerConfig::default();
    let a = initial_assignment(&reg, &cfg).unwrap();
    let load = measure(&a, &SliceLoad::uniform(600.0));
    reg[3].draining = true;
    let plan = assign(&a, &load, &reg, &cfg);
    let out = &plan.assignment;
    check_assignment(out, &reg, &cfg, &[0, 12345]);
    assert!(out
        .slices()
        .iter()
        .all(|s| !s.subset.contains(&ReplicaId(3))));
    let held = a
        .slices()
        .iter()
        .filter(|s| s.subset.contains(&ReplicaId(3)))
        .count();
    assert_eq!(plan.evicted, held);
    assert!(plan.forced_churn > 0.0);
    assert!(plan.churn <= cfg.churn_budget + 1e-12);
    // Where the drained replica was preferred, the next member took over.
    for (old, new) in a.slices().iter().zip(out.slices()) {
        if old.start == new.start && old.subset[0] == ReplicaId(3) {
            assert_eq!(new.subset[0], old.subset[1]);
        }
    }
    // Most preferred replicas did not move.
    let same = segments(&a, out)
        .iter()
        .filter(|(_, _, i, j)| a.slices()[*i].subset[0] == out.slices()[*j].subset[0])
        .count();
    assert!(same * 10 >= segments(&a, out).len() * 8);
}

#[test]
fn losing_a_rack_keeps_subsets_spread_over_the_rest() {
    let mut reg = fleet(3, &[1.0; 9]);
    let cfg = AssignerConfig::default();
    let a = initial_assignment(&reg, &cfg).unwrap();
    let load = measure(&a, &SliceLoad::uniform(900.0));
    for r in reg.iter_mut().filter(|r| r.rack == "rack-1") {
        r.healthy = false;
    }
    let plan = assign(&a, &load, &reg, &cfg);
    check_assignment(&plan.assignment, &reg, &cfg, &[0, 99, u64::MAX]);
    assert!(plan.repaired > 0);
    // And a lone surviving rack needs no spread.
    for r in reg.iter_mut().filter(|r| r.rack == "rack-2") {
        r.draining = true;
    }
    let plan = assign(&plan.assignment, &load, &reg, &cfg);
    check_assignment(&plan.assignment, &reg, &cfg, &[0, 99, u64::MAX]);
}

#[test]
fn degenerate_fleets() {
    let cfg = AssignerConfig::default();
    // One replica: width 1.
    let reg = fleet(1, &[5.0]);
    let a = initial_assignment(&reg, &cfg).unwrap();
    assert!(a.slices().iter().all(|s| s.subset == vec![ReplicaId(0)]));
    let plan = assign(&a, &measure(&a, &SliceLoad::uniform(10.0)), &reg, &cfg);
    check_assignment(&plan.assignment, &reg, &cfg, &[0]);
    // No eligible replica: nothing to do, the current map stands.
    let mut dead = reg.clone();
    dead[0].healthy = false;
    let plan = assign(&a, &SliceLoad::uniform(10.0), &dead, &cfg);
    assert!(!plan.changed);
    assert_eq!(plan.assignment, a);
    // Replicas unknown to the registry are replaced.
    let stale = manual(vec![(0, vec![42, 43])]);
    let reg = fleet(2, &[1.0, 1.0]);
    let plan = assign(&stale, &SliceLoad::uniform(0.0), &reg, &cfg);
    check_assignment(&plan.assignment, &reg, &cfg, &[0, u64::MAX]);
    assert_eq!(plan.evicted, 2);
    assert_eq!(plan.assignment.generation, 8);
}

#[test]
fn rebalances_two_racks_of_unequal_capacity_by_widening() {
    // Rack 0 has twice the capacity of rack 1, yet every subset needs a member in each.
    let reg: Vec<ReplicaInfo> = (0..8)
        .map(|i| ReplicaInfo::new(i, format!("r{}", i % 2), if i % 2 == 0 { 2.0 } else { 1.0 }))
        .collect();
    let cfg = AssignerConfig::default();
    let truth = SliceLoad::uniform(1000.0);
    // Start from a map made while both racks were alike (rack 0 was just upgraded).
    let mut a = initial_assignment(&fleet(2, &[1.0; 8]), &cfg).unwrap();
    assert!(a.slices().iter().all(|s| s.subset.len() == 2));
    assert!(true_imbalance(&a, &truth, &reg) > 1.3);
    let mut imb = f64::INFINITY;
    for _ in 0..30 {
        let plan = assign(&a, &measure(&a, &truth), &reg, &cfg);
        a = plan.assignment;
        imb = true_imbalance(&a, &truth, &reg);
    }
    assert!(imb <= 1.15, "imbalance {imb}");
    assert!(a.slices().iter().any(|s| s.subset.len() > 2));
}

#[test]
fn scales_to_a_thousand_replicas() {
    let caps: Vec<f64> = (0..1000)
        .map(|i| [1.0, 2.0, 4.0][i % 3] * 60_000.0)
        .collect();
    let reg = fleet(20, &caps);
    let cfg = AssignerConfig::default();
    let a = initial_assignment(&reg, &cfg).unwrap();
    let rank: Vec<usize> = (0..4096).map(|i| (i * 2654435761usize) % 4096).collect();
    let truth = zipf(&rank, 1.1, 3.0e7);
    let load = measure(&a, &truth);
    // How long it takes is the `assigner` bench's to say (docs/BENCHMARKS.md).
    let plan = assign(&a, &load, &reg, &cfg);
    let n = plan.assignment.slices().len();
    assert!(n >= 4000);
    check_assignment(&plan.assignment, &reg, &cfg, &[0, 1 << 40, u64::MAX]);
    assert!(plan.churn <= cfg.churn_budget + 1e-9);
    assert!(plan.imbalance_after < plan.imbalance_before);
}

#[test]
fn a_round_reports_the_imbalance_that_imbalance_measures() {
    // A plan's before and after are read off the round's own slices; they must be the
    // public measure's numbers to the bit, also when members were evicted (a replica
    // draining) or listed twice.
    let caps: Vec<f64> = (0..40)
        .map(|i| [60_000.0, 80_000.0, 120_000.0][i % 3])
        .collect();
    let mut reg = fleet(4, &caps);
    let cfg = AssignerConfig::default();
    let mut a = initial_assignment(&reg, &cfg).unwrap();
    let rank: Vec<usize> = (0..512).map(|i| (i * 2654435761usize) % 512).collect();
    let truth = zipf(&rank, 1.1, 2.0e6);
    for round in 0..6 {
        if round == 2 {
            reg[3].draining = true;
        }
        if round == 4 {
            let mut slices = a.slices().to_vec();
            let twice = slices[0].subset[0];
            slices[0].subset.push(twice);
            a = Assignment::new(a.generation, slices).unwrap();
        }
        let load = measure(&a, &truth);
        let plan = assign(&a, &load, &reg, &cfg);
        assert_eq!(
            plan.imbalance_before.to_bits(),
            imbalance(&a, &load, &reg).to_bits(),
            "round {round}"
        );
        assert_eq!(
            plan.imbalance_after.to_bits(),
            imbalance(&plan.assignment, &load, &reg).to_bits(),
            "round {round}"
        );
        assert!(plan.changed || round > 0);
        a = plan.assignment;
    }
}

/// A hot key range already split into 200 slices, all on the same two replicas: the
/// placement search tries only the likeliest of their slices (`Work::likely`), and
/// spreads the load round after round as the search over every slice does.
#[test]
fn a_hot_range_split_past_the_scan_limit_spreads_like_the_whole_search() {
    let reg = fleet(4, &[60_000.0; 40]);
    let cfg = AssignerConfig::default();
    let n = 400u64;
    let key = |i: u64| ((i as u128 * END) / n as u128) as u64;
    let a = manual(
        (0..n)
            .map(|i| {
                let sub = if i < 200 {
                    vec![0, 1]
                } else {
                    vec![2 + i % 38, 2 + (i + 1) % 38]
                };
                (key(i), sub)
            })
            .collect(),
    );
    // About 80% of the load on the hot range, in uneven slices.
    let truth = SliceLoad::new(
        (0..n)
            .map(|i| {
                let l = if i < 200 {
                    0.5 + (i % 7) as f64 / 7.0
                } else {
                    0.2
                };
                (SliceKey(key(i)), l * 6_000.0)
            })
            .collect(),
    )
    .unwrap();
    let held = |a: &Assignment, r: u64| {
        a.slices()
            .iter()
            .filter(|s| s.subset.contains(&ReplicaId(r)))
            .count()
    };
    assert!(held(&a, 0) > holdings::SCAN_ALL);
    let (mut short, mut whole) = (a.clone(), a);
    let mut last = f64::INFINITY;
    for round in 0..12 {
        let p = assign(&short, &measure(&short, &truth), &reg, &cfg);
        let everything = Search {
            scan_all: usize::MAX,
            ..Search::ROUND
        };
        let q = assign_trying(&whole, &measure(&whole, &truth), &reg, &cfg, everything);
        check_assignment(&p.assignment, &reg, &cfg, &[0, 1 << 40, u64::MAX]);
        assert!(p.churn <= cfg.churn_budget + 1e-9);
        assert_eq!(&assign(&short, &measure(&short, &truth), &reg, &cfg), &p);
        short = p.assignment;
        whole = q.assignment;
        let (s, w) = (
            true_imbalance(&short, &truth, &reg),
            true_imbalance(&whole, &truth, &reg),
        );
        assert!(s <= 1.05 * w, "round {round}: imbalance {s} against {w}");
        last = s;
    }
    assert!(last <= cfg.target_imbalance, "imbalance {last}");
}

// ---------------------------------------------------------------- properties

/// A fleet of `racks` racks of identical capacity make-up (so that balance is reachable:
/// see the module docs), capacities heterogeneous inside a rack.
fn balanced_fleet() -> impl Strategy<Value = Vec<ReplicaInfo>> {
    (1usize..=4)
        .prop_flat_map(|racks| {
            let per = if racks == 1 { 3usize..=8 } else { 1usize..=6 };
            (Just(racks), per)
        })
        .prop_flat_map(|(racks, per)| {
            let caps = if racks == 1 {
                prop::collection::vec(prop::sample::select(vec![1.0, 1.5, 2.0]), per)
            } else {
                prop::collection::vec(prop::sample::select(vec![1.0, 2.0, 3.0, 4.0]), per)
            };
            (Just(racks), caps, any::<u64>())
        })
        .prop_map(|(racks, caps, salt)| {
            let mut out = Vec::new();
            for r in 0..racks {
                for (j, c) in caps.iter().enumerate() {
                    // Interleave ids across racks in a salted order.
                    let id =
                        ((r * caps.len() + j) as u64).wrapping_mul(0x9e37_79b9) ^ (salt & 0xffff);
                    out.push(ReplicaInfo::new(id, format!("rack-{r}"), c * 60_000.0));
                }
            }
            out
        })
}

fn zipf_truth() -> impl Strategy<Value = SliceLoad> {
    (
        Just((0..128usize).collect::<Vec<_>>()).prop_shuffle(),
        0.5f64..1.4,
        1.0e3f64..1.0e7,
    )
        .prop_map(|(rank, s, total)| zipf(&rank, s, total))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// On a static Zipf-skewed load, repeated rounds bring max/mean replica load under
    /// the bound within a bounded number of rounds, keep it there, and settle (a round
    /// changes nothing). (Over 1,000 cases: under the bound for good from round 3 at
    /// the latest, settled by round 5.)
    #[test]
    fn converges_under_the_imbalance_bound(reg in balanced_fleet(), truth in zipf_truth()) {
        let cfg = AssignerConfig::default();
        let mut a = initial_assignment(&reg, &cfg).unwrap();
        let mut history = Vec::new();
        let mut last_change = 0;
        for round in 0..40 {
            let plan = assign(&a, &measure(&a, &truth), &reg, &cfg);
            prop_assert!(plan.churn <= cfg.churn_budget + 1e-9);
            if plan.changed {
                last_change = round;
            }
            a = plan.assignment;
            history.push(true_imbalance(&a, &truth, &reg));
        }
        prop_assert!(
            history[10..].iter().all(|&h| h <= cfg.target_imbalance),
            "imbalance by round: {:?}", history
        );
        prop_assert!(last_change < 20, "still changing at round {}", last_change);
    }

    /// Skipping the slices whose floor of cost is above the best candidate so far, or
    /// whose move prices as one already tried, changes no decision: rounds with and
    /// without it give the same plans, on a hot range past the scan limit as on a
    /// fleet-sized map.
    #[test]
    fn pruning_the_search_changes_no_plan(
        reg in balanced_fleet(),
        truths in prop::collection::vec(zipf_truth(), 4),
        scan_all in prop::sample::select(vec![4usize, holdings::SCAN_ALL]),
        budget in prop::sample::select(vec![0.02, 0.1, 1.0]),
    ) {
        let cfg = AssignerConfig { churn_budget: budget, ..AssignerConfig::default() };
        let pruned = Search { scan_all, prune: true };
        let whole = Search { prune: false, ..pruned };
        let mut a = initial_assignment(&reg, &cfg).unwrap();
        for truth in &truths {
            let load = measure(&a, truth);
            let plan = assign_trying(&a, &load, &reg, &cfg, pruned);
            prop_assert_eq!(&assign_trying(&a, &load, &reg, &cfg, whole), &plan);
            a = plan.assignment;
        }
    }

    /// Splitting each hot slice in place when the slice count allows it gives what
    /// splitting the hottest first gives, whether or not the count's bounds bind.
    #[test]
    fn splitting_in_place_is_splitting_the_hottest_first(
        reg in balanced_fleet(),
        truth in zipf_truth(),
        per_replica in 1usize..24,
        split_above in prop::sample::select(vec![0.02, 0.1, 0.5]),
    ) {
        let cfg = AssignerConfig {
            min_slices_per_replica: per_replica.min(4),
            max_slices_per_replica: per_replica,
            split_above,
            ..AssignerConfig::default()
        };
        let cfg = cfg.sanitized();
        let a = initial_assignment(&reg, &AssignerConfig::default()).unwrap();
        let load = measure(&a, &truth);
        let fleet = fleet::Fleet::new(&reg);
        let slices = || {
            a.slices()
                .iter()
                .map(|s| (s.start.0 as u128, s.subset.as_slice()))
                .collect()
        };
        let mut fast = Work::new(&fleet, &load, &cfg, slices());
        let mut heap = Work::new(&fleet, &load, &cfg, slices());
        fast.repair();
        heap.repair();
        fast.split();
        heap.split_hottest_first();
        prop_assert_eq!(fast.described(), heap.described());
        prop_assert_eq!(fast.stats.splits, heap.stats.splits);
    }

    /// Over rounds of changing load and health: every key in exactly one slice, subsets
    /// of eligible replicas only, within the width bounds and across two racks; budgeted
    /// churn within the budget; the same inputs give the same plan.
    #[test]
    fn rounds_keep_invariants_and_the_churn_budget(
        racks in 1usize..=4,
        caps in prop::collection::vec(prop::sample::select(vec![1.0, 2.0, 3.0]), 1..14),
        events in prop::collection::vec(prop::collection::vec(0u8..12, 14), 6),
        truths in prop::collection::vec(zipf_truth(), 6),
        budget in prop::sample::select(vec![0.0, 0.05, 0.1, 0.3]),
        keys in prop::collection::vec(any::<u64>(), 8),
    ) {
        let cfg = AssignerConfig { churn_budget: budget, ..AssignerConfig::default() };
        let mut reg = fleet(racks, &caps);
        let mut a = initial_assignment(&reg, &cfg).unwrap();
        check_assignment(&a, &reg, &cfg, &keys);
        for (ev, truth) in events.iter().zip(&truths) {
            for (r, e) in reg.iter_mut().zip(ev) {
                match e {
                    0 => r.healthy = false,
                    1 => r.draining = true,
                    2 | 3 => { r.healthy = true; r.draining = false; }
                    _ => {}
                }
            }
            let load = measure(&a, truth);
            let plan = assign(&a, &load, &reg, &cfg);
            // Determinism, also under a shuffled registry.
            let mut rev = reg.clone();
            rev.reverse();
            prop_assert_eq!(&assign(&a, &load, &rev, &cfg), &plan);
            if eligible(&reg).is_empty() {
                prop_assert!(!plan.changed);
                continue;
            }
            check_assignment(&plan.assignment, &reg, &cfg, &keys);
            let churn = budgeted_churn(&a, &plan.assignment, &load, &reg, &cfg);
            prop_assert!(churn <= budget + 1e-9, "churn {} > {}", churn, budget);
            prop_assert!(plan.churn <= budget + 1e-9);
            prop_assert!(churn <= plan.churn + 1e-9, "own accounting {} under {}", plan.churn, churn);
            prop_assert_eq!(
                plan.assignment.generation,
                a.generation + u64::from(plan.changed)
            );
            a = plan.assignment;
        }
    }
}

/// Rounds to balance a skewed load over 1,000 replicas; slow in debug builds, so run with
/// `cargo test -p sluice-actors --release -- --ignored large_fleet`.
#[test]
#[ignore]
fn large_fleet_converges() {
    let caps: Vec<f64> = (0..1000)
        .map(|i| [1.0, 2.0, 4.0][(i / 20) % 3] * 60_000.0)
        .collect();
    let reg = fleet(20, &caps);
    let cfg = AssignerConfig::default();
    let mut a = initial_assignment(&reg, &cfg).unwrap();
    let rank: Vec<usize> = (0..4096).map(|i| (i * 2654435761usize) % 4096).collect();
    let truth = zipf(&rank, 1.1, 3.0e7);
    let mut worst = std::time::Duration::ZERO;
    for round in 0..60 {
        let t = std::time::Instant::now();
        let plan = assign(&a, &measure(&a, &truth), &reg, &cfg);
        worst = worst.max(t.elapsed());
        a = plan.assignment;
        let imb = true_imbalance(&a, &truth, &reg);
        eprintln!(
            "round {round}: {:?} slices {} splits {} merges {} moves {} widened {} narrowed {} churn {:.3} imbalance {imb:.3}",
            t.elapsed(), a.slices().len(), plan.splits, plan.merges, plan.moves, plan.widened, plan.narrowed, plan.churn
        );
        if imb <= cfg.target_imbalance && !plan.changed {
            break;
        }
    }
    eprintln!("slowest round {worst:?}");
    assert!(true_imbalance(&a, &truth, &reg) <= cfg.target_imbalance);
}
