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
use sluice_actors::slice::{Assignment, ReplicaId, SliceKey};
use std::time::Instant;

const REPLICAS: usize = 10_000;
const RACKS: usize = 100;
const SLICES: usize = 100_000;

/// What the leader would measure on `a`: each slice's share of the true load.
fn measured(a: &Assignment, truth: &SliceLoad) -> SliceLoad {
    match truth.on_slices_of(a) {
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
    let ranges: Vec<(SliceKey, f64)> = current
        .slices()
        .iter()
        .zip(&weights)
        .map(|(s, w)| (s.start, 0.7 * capacity * w / sum))
        .collect();
    let truth = match SliceLoad::new(ranges) {
        Ok(t) => t,
        Err(e) => panic!("load: {e}"),
    };
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
