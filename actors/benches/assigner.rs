//! One assigner round at fleet scale (issue 14, item 5: goal < 100 ms at 10,000 replicas
//! × 100,000 slices).
//!
//! ```text
//! cargo bench -p sluice-actors --bench assigner [-- --rounds N]
//! ```
//!
//! 10,000 replicas of three capacities over 100 racks; 100,000 slices, each served by
//! two replicas in different racks; a Zipf-skewed load (s = 1.1 over the slices in a
//! shuffled order) at 70% of the fleet's capacity. It times the first round (the skew
//! is new: splits, merges, moves and widening all run) and then further rounds on the
//! same load, each fed the previous round's assignment, as the leader does every minute.

use sluice_actors::assigner::{assign, AssignerConfig, ReplicaInfo, SliceLoad};
use sluice_actors::slice::{Assignment, ReplicaId};
use std::time::Instant;

const REPLICAS: usize = 10_000;
const RACKS: usize = 100;
const SLICES: usize = 100_000;

/// The true load of each slice of `a`: slice `i` of the first assignment carries weight
/// `1 / (rank_i + 1)^1.1`; later assignments (split or merged) apportion it by key range.
fn measured(a: &Assignment, truth: &[(u64, f64)]) -> SliceLoad {
    let starts: Vec<u64> = a.slices().iter().map(|s| s.start.0).collect();
    let mut loads = vec![0.0; starts.len()];
    let mut at = 0;
    for (i, &(start, l)) in truth.iter().enumerate() {
        let end = truth
            .get(i + 1)
            .map_or(u64::MAX as f64 + 1.0, |n| n.0 as f64);
        // Spread this truth range's load over the slices that overlap it.
        while at + 1 < starts.len() && starts[at + 1] <= start {
            at += 1;
        }
        let mut j = at;
        let width = end - start as f64;
        while j < starts.len() && (starts[j] as f64) < end {
            let lo = (starts[j] as f64).max(start as f64);
            let hi = starts.get(j + 1).map_or(end, |&n| (n as f64).min(end));
            loads[j] += l * ((hi - lo) / width).max(0.0);
            j += 1;
        }
    }
    match SliceLoad::per_slice(a, &loads) {
        Ok(l) => l,
        Err(e) => panic!("load: {e}"),
    }
}

fn main() {
    let mut rounds = 5.0;
    let mut skew = 1.1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let target = match a.as_str() {
            "--rounds" => &mut rounds,
            "--skew" => &mut skew,
            _ => continue,
        };
        match args.next().and_then(|v| v.parse().ok()) {
            Some(v) => *target = v,
            None => {
                eprintln!("{a} needs a number");
                std::process::exit(2);
            }
        }
    }
    let caps = [60_000.0, 80_000.0, 120_000.0];
    let registry: Vec<ReplicaInfo> = (0..REPLICAS)
        .map(|i| ReplicaInfo::new(i as u64, format!("rack-{}", i % RACKS), caps[i % 3]))
        .collect();
    let ids: Vec<ReplicaId> = registry.iter().map(|r| r.id).collect();
    let mut current = match Assignment::uniform(1, &ids, SLICES, 2) {
        Ok(a) => a,
        Err(e) => panic!("assignment: {e}"),
    };
    let capacity: f64 = registry.iter().map(|r| r.capacity_mu_per_min).sum();
    let weights: Vec<f64> = (0..SLICES)
        .map(|i| {
            let rank = (i as u64).wrapping_mul(2_654_435_761) % SLICES as u64;
            1.0 / ((rank + 1) as f64).powf(skew)
        })
        .collect();
    let sum: f64 = weights.iter().sum();
    let truth: Vec<(u64, f64)> = current
        .slices()
        .iter()
        .zip(&weights)
        .map(|(s, w)| (s.start.0, 0.7 * capacity * w / sum))
        .collect();
    let config = AssignerConfig::default();
    println!("{REPLICAS} replicas in {RACKS} racks, {SLICES} slices, Zipf {skew} load at 70%");
    println!("| round | time | slices after | splits | merges | moves | widened | churn | imbalance before → after |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for round in 1..=rounds as usize {
        let load = measured(&current, &truth);
        let t = Instant::now();
        let plan = assign(&current, &load, &registry, &config);
        let took = t.elapsed();
        println!(
            "| {round} | {:.1} ms | {} | {} | {} | {} | {} | {:.3} | {:.2} → {:.2} |",
            took.as_secs_f64() * 1e3,
            plan.assignment.slices().len(),
            plan.splits,
            plan.merges,
            plan.moves,
            plan.widened,
            plan.churn,
            plan.imbalance_before,
            plan.imbalance_after
        );
        current = plan.assignment;
    }
}
