//! `sluice chaos drill SCENARIO --virtual`: the drills' faults and invariants on a fleet
//! far larger than one machine holds (hundreds of nodes, thousands of replicas), in the
//! simulator's virtual time. The report is the process drill's, judged by the same
//! functions (`drill::ledger`, `drill::checks`, `drill::broken`).
//!
//! Schedule, as in the process drills: each scenario gets an equal slot of the
//! duration; its fault strikes a third of the way in (after the balancer drained the
//! doors it takes down) and is healed a third of a slot later.

mod cluster;
pub mod control;
mod engines;
mod faults;
mod probes;
mod requests;
mod samples;
pub mod spec;
pub mod world;

use crate::drill::{self, checks, ledger, DrillArgs, DrillReport, PoisonReport};
use anyhow::{bail, Result};
use sluice_actors::Profile;
use sluice_sim::trace::splitmix64 as splitmix;
use sluice_sim::trace::{self, Trace};
use spec::{Act, Spec};
use world::World;

/// How long after the load the run may go on for every request to be answered (past the
/// doors' request timeout, so that none is cut short by the drill) and every replica
/// to serve again.
const GRACE_US: u64 = 330_000_000;
/// The longest a drained door is waited for before its node is taken down anyway.
const DRAIN_US: u64 = 120_000_000;
/// Outputs are capped so that a drain ends well within [`DRAIN_US`] even on a loaded
/// fleet, as the process drills ask for short answers (it trims the agentic trace's
/// longest replies; tool calls are shorter).
const MAX_OUTPUT: u32 = 256;

/// Runs the virtual drill `args` asks for and returns its report.
pub fn run(args: &DrillArgs) -> Result<DrillReport> {
    let scenarios: Vec<&str> = if args.scenario == "all" {
        let modelled: Vec<&str> = drill::SCENARIOS[..drill::SCENARIOS.len() - 1]
            .iter()
            .copied()
            .filter(|sc| !NOT_MODELLED.contains(sc))
            .collect();
        drill::shuffled(&modelled, args.seed)
    } else {
        vec![args.scenario.as_str()]
    };
    let profile = Profile::default_profile();
    let spec = Spec {
        nodes: args.nodes,
        racks: args.racks,
        gpus_per_node: args.gpus_per_node,
        profile,
        engine_restart_us: secs(args.engine_restart_s),
        node_restart_us: 1_000_000,
        peer_timeout_us: sluice_actors::lifecycle::PEER_SILENCE_MS * 1000,
        election_us: 1_500_000,
        stream_idle_us: 30_000_000,
        request_timeout_us: 300_000_000,
        quarantine: !args.no_quarantine,
        keep_slices: scenarios.contains(&"poison-request"),
        liveness_marks: !args.no_liveness_marks,
        hold_restarted: !args.no_hold_restarted_replicas,
    };
    let end_us = secs(args.duration);
    let trace = load(&spec, args.load, end_us, args.seed);
    let slot = end_us / scenarios.len() as u64;
    let mut plan = Vec::new();
    for (k, sc) in scenarios.iter().enumerate() {
        let at = slot * k as u64 + slot / 3;
        plan.extend(strike(&spec, sc, at, slot / 3, args.seed + k as u64));
    }
    let mut w = World::new(spec, &trace, plan, end_us);
    w.run(GRACE_US);
    let (records, poisoned) = w.records();
    let fault_ms = w.fault_at_us.map(|u| u / 1000);
    let from = fault_ms.unwrap_or(0);
    let samples = std::mem::take(&mut w.samples);
    let poison = scenarios.contains(&"poison-request").then(|| {
        PoisonReport::judge(
            &poisoned,
            (scenarios.len() == 1)
                .then(|| checks::containment(&samples, world::POISON_KEY, from, u64::MAX)),
        )
    });
    let health: Vec<(u64, usize)> = samples.iter().map(|s| (s.at_ms, s.in_service)).collect();
    Ok(DrillReport {
        summary: ledger::summarize(&args.scenario, &records, fault_ms),
        fault_at_s: w.fault_at_us.unwrap_or(0) as f64 / 1e6,
        healed_at_s: w.healed_at_us as f64 / 1e6,
        state_agrees: w.agrees(),
        recovery: checks::recovery(&samples, from, w.full()),
        routed_after_dead: checks::routed_after_dead(&samples, drill::DEAD_ROUTING_BOUND_MS),
        poison,
        migrations: w.migrations,
        faults: std::mem::take(&mut w.faults),
        timeline: drill::plot::seconds(&records, &health),
    })
}

fn secs(s: f64) -> u64 {
    (s.max(0.0) * 1e6).round() as u64
}

/// The agentic coding-session workload, scaled so that it offers `load` × the fleet's
/// capacity in MU, over `end_us`.
pub fn load(spec: &Spec, load: f64, end_us: u64, seed: u64) -> Trace {
    let max_len = spec.profile.engine.max_model_len;
    let mut sessions = (spec.replicas() as u32).max(50) * 4;
    loop {
        let cfg = trace::agentic::AgenticConfig {
            sessions,
            ..Default::default()
        };
        let mut t = trace::agentic::generate(&cfg, seed);
        for r in &mut t.requests {
            r.output_tokens = r.output_tokens.clamp(1, MAX_OUTPUT);
            let room = max_len.saturating_sub(r.output_tokens);
            if r.prompt.len() > room {
                let mut left = room;
                for s in &mut r.prompt.segments {
                    s.len = s.len.min(left);
                    left -= s.len;
                }
                r.prompt.segments.retain(|s| s.len > 0);
            }
        }
        sluice_sim::load::scale_to_load(
            &mut t,
            &spec.profile.mu,
            load,
            spec.replicas(),
            spec.profile.capacity_mu_per_min,
        );
        if t.span_us() >= end_us || sessions >= 1 << 22 {
            t.requests.retain(|r| r.arrival_us <= end_us);
            return t;
        }
        sessions *= 2;
    }
}

/// What scenario `sc` does, striking at `at_us` and healed `heal_after_us` later.
pub fn strike(spec: &Spec, sc: &str, at_us: u64, heal_after_us: u64, seed: u64) -> Vec<(u64, Act)> {
    let nodes = spec.nodes;
    let replicas = spec.replicas();
    // The first voter leads at the start: faults other than leader-kill spare its rack.
    let spare = spec.rack(0);
    let rack = {
        let r = (seed as usize) % spec.racks.max(1);
        if r == spare && spec.racks > 1 {
            (r + 1) % spec.racks
        } else {
            r
        }
    };
    let in_rack: Vec<usize> = (0..nodes).filter(|&n| spec.rack(n) == rack).collect();
    // About 1% of the replicas (at least one), chosen by the seed.
    let some: Vec<usize> = {
        let want = (replicas / 100).max(1);
        let mut picked = Vec::new();
        let mut x = seed;
        while picked.len() < want.min(replicas) {
            x = splitmix(x);
            let r = (x % replicas as u64) as usize;
            if !picked.contains(&r) {
                picked.push(r);
            }
        }
        picked.sort_unstable();
        picked
    };
    let deadline_us = at_us + DRAIN_US;
    match sc {
        "rack-loss" => vec![(
            at_us,
            Act::Kill {
                nodes: in_rack,
                deadline_us,
                heal_after_us,
            },
        )],
        "full-restart" => vec![(
            at_us,
            Act::Kill {
                nodes: (0..nodes).collect(),
                deadline_us,
                heal_after_us,
            },
        )],
        "node-crash-restart" => vec![(
            at_us,
            Act::Kill {
                nodes: vec![in_rack.first().copied().unwrap_or(nodes - 1)],
                deadline_us,
                heal_after_us,
            },
        )],
        "leader-kill" => vec![(at_us, Act::KillLeader { heal_after_us })],
        "partition" => {
            let cut = if spec.racks >= 3 {
                in_rack
            } else {
                vec![nodes - 1]
            };
            vec![(
                at_us,
                Act::Cut {
                    nodes: cut,
                    deadline_us,
                    heal_after_us,
                },
            )]
        }
        "silent-hang" => vec![(at_us, Act::Hang(some))],
        "slow-replica" => vec![
            (at_us, Act::Slow(some.clone(), 10.0)),
            (at_us + heal_after_us, Act::Unslow(some)),
        ],
        "poison-request" => vec![(
            at_us,
            Act::PoisonStart {
                stop_after_us: heal_after_us,
            },
        )],
        "rolling-restart" => vec![(
            at_us,
            Act::Roll {
                rack: 0,
                deadline_us,
            },
        )],
        _ => Vec::new(),
    }
}

/// Checks the virtual drill's arguments.
/// Scenarios about what the virtual world has no model of (certificates); `all` leaves
/// them out.
pub const NOT_MODELLED: &[&str] = &["cert-renewal", "ca-rotation"];

pub fn check(args: &DrillArgs) -> Result<()> {
    if NOT_MODELLED.contains(&args.scenario.as_str()) {
        bail!(
            "{} is about what the virtual drill does not model (certificates): run it on real processes, without --virtual",
            args.scenario
        );
    }
    if !(args.load.is_finite() && args.load > 0.0 && args.load <= 2.0) {
        bail!("--load must be in (0, 2], got {}", args.load);
    }
    if !(args.engine_restart_s.is_finite() && args.engine_restart_s >= 0.0) {
        bail!("--engine-restart-s must be a non-negative number of seconds");
    }
    if args.nodes * args.gpus_per_node > 100_000 {
        bail!("a virtual fleet of more than 100,000 replicas is not supported");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
