//! The cost of one routing decision as the fleet grows (issue 14, item 5).
//!
//! ```text
//! cargo bench -p sluice-actors --bench routing [-- --decisions N]
//! ```
//!
//! For fleets of 16, 1,000 and 10,000 replicas it drives one `RouterCore` in a steady
//! state — about four requests in flight per replica, the oldest finished (with usage
//! reported) as each new one is placed — and times `place`, the whole decision: price,
//! slice lookup, the content index, and the replica choice with its spill rule. Two kinds
//! of traffic: requests with an explicit workload key and no content (priced by the
//! workload's history), and unkeyed multi-turn conversations under a shared system prompt
//! (identity and price from the prompt's blocks). Times are per decision, single-threaded.

use sluice_actors::router::baselines::common::SplitMix64;
use sluice_actors::router::{
    Admission, PromptBlocks, ReplicaSpec, RouterConfig, RouterCore, Usage,
};
use sluice_actors::slice::{Assignment, ReplicaId, SliceKey};
use sluice_actors::Profile;
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

const FLEETS: [usize; 3] = [16, 1_000, 10_000];

struct Stats {
    median_ns: f64,
    p99_ns: f64,
    mean_ns: f64,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize] as f64;
    Stats {
        median_ns: at(0.5),
        p99_ns: at(0.99),
        mean_ns: ns.iter().sum::<u64>() as f64 / ns.len() as f64,
    }
}

/// Prompts of `conversations` conversations, `turns` turns each, behind one shared system
/// prompt of 2 KiB: each turn repeats the conversation so far and adds 1 KiB.
fn conversation_prompts(conversations: u64, turns: u64) -> Vec<PromptBlocks> {
    let system: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    for c in 0..conversations {
        let mut text = system.clone();
        for t in 0..turns {
            text.extend((0..1024u64).map(|i| (c.wrapping_mul(31) ^ t ^ i) as u8));
            out.push(PromptBlocks::of_bytes(&text));
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Traffic {
    Keyed,
    Conversations,
}

fn run(replicas: usize, traffic: Traffic, decisions: usize) -> Stats {
    let profile = Profile::default_profile();
    let ids: Vec<ReplicaId> = (0..replicas as u64).map(ReplicaId).collect();
    let specs: Vec<ReplicaSpec> = ids
        .iter()
        .map(|&id| ReplicaSpec {
            id,
            capacity_mu_per_min: profile.capacity_mu_per_min,
            host: id.0,
            rack: id.0,
        })
        .collect();
    let assignment = match Assignment::uniform(1, &ids, replicas * 4, 2) {
        Ok(a) => a,
        Err(e) => panic!("assignment: {e}"),
    };
    let mut core = RouterCore::new(profile.mu, RouterConfig::default(), &specs, assignment);
    let prompts = conversation_prompts(2_000, 4);
    let workloads: Vec<SliceKey> = (0..20_000u64)
        .map(|w| SliceKey(w.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let window = replicas * 4;
    let mut inflight: VecDeque<u64> = VecDeque::with_capacity(window + 1);
    // Deterministic, so every run sees the same traffic.
    let mut rng = SplitMix64::new(7);
    let mut times = Vec::with_capacity(decisions);
    let warmup = window * 2;
    for i in 0..warmup + decisions {
        let now_ms = i as u64 / 10;
        let (workload, blocks) = match traffic {
            Traffic::Keyed => (
                Some(workloads[rng.below(workloads.len())]),
                &sluice_actors::router::NO_CONTENT,
            ),
            Traffic::Conversations => (None, &prompts[rng.below(prompts.len())]),
        };
        let input = (blocks.bytes / 4).max(512) as u32;
        let a = Admission {
            workload,
            blocks,
            input_tokens: input,
            images: 0,
            max_tokens: Some(256),
            n: 1,
            fingerprint: None,
            radius: None,
            stream: false,
        };
        let t = Instant::now();
        let placed = black_box(core.place(&a, now_ms));
        let took = t.elapsed().as_nanos() as u64;
        if i >= warmup {
            times.push(took);
        }
        if let Some(p) = placed {
            inflight.push_back(p.id);
        }
        if inflight.len() > window {
            if let Some(old) = inflight.pop_front() {
                core.finish(
                    old,
                    Some(Usage {
                        prompt_tokens: input,
                        completion_tokens: 128,
                        cached_tokens: input / 2,
                    }),
                );
            }
        }
    }
    stats(times)
}

fn main() {
    let mut decisions = 20_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--decisions" {
            match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => decisions = n,
                None => {
                    eprintln!("--decisions needs a number");
                    std::process::exit(2);
                }
            }
        }
    }
    println!("| replicas | traffic | median | p99 | mean |");
    println!("|---|---|---|---|---|");
    for replicas in FLEETS {
        for (name, traffic) in [
            ("keyed", Traffic::Keyed),
            ("conversations", Traffic::Conversations),
        ] {
            let s = run(replicas, traffic, decisions);
            println!(
                "| {replicas} | {name} | {:.1} µs | {:.1} µs | {:.1} µs |",
                s.median_ns / 1e3,
                s.p99_ns / 1e3,
                s.mean_ns / 1e3
            );
        }
    }
}
