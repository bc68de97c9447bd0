//! The routing policies Sluice is measured against, each implemented from its source
//! (cited, with version and defaults, at the top of its module; see also
//! `../shared/BASELINES.md`). All are deterministic given their seed, route only to
//! healthy replicas, and keep bounded state (in-flight requests, or trees and LRUs bounded
//! as their sources bound them).
//!
//! | name | module | load signal |
//! |---|---|---|
//! | `round-robin` | [`round_robin`] | — |
//! | `random` | [`random`] | — |
//! | `least-requests` | [`least_requests`] | router's in-flight requests |
//! | `p2c` | [`p2c`] | router's in-flight requests |
//! | `chwbl` | [`chwbl`] | router's in-flight requests |
//! | `sglang-cache-aware` | [`sglang_cache_aware`] | router's in-flight requests |
//! | `dynamo-kv` | [`dynamo_kv`] | router-tracked active blocks + engine KV state |
//! | `llm-d` | [`llm_d`] | engine queue and KV usage |

pub mod chwbl;
pub mod common;
pub mod dynamo_kv;
pub mod least_requests;
pub mod llm_d;
pub mod p2c;
pub mod random;
pub mod round_robin;
pub mod sglang_cache_aware;

pub use chwbl::{Chwbl, ChwblConfig};
pub use dynamo_kv::{DynamoConfig, DynamoKv};
pub use least_requests::LeastRequests;
pub use llm_d::{Llmd, LlmdConfig};
pub use p2c::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use sglang_cache_aware::{SglangCacheAware, SglangConfig};

use super::policy::RoutingPolicy;

/// Names accepted by [`by_name`], in a stable order.
pub const NAMES: &[&str] = &[
    "round-robin",
    "random",
    "least-requests",
    "p2c",
    "chwbl",
    "sglang-cache-aware",
    "dynamo-kv",
    "llm-d",
];

/// The baseline `name` with its source's defaults, seeded with `seed` (policies without
/// randomness ignore it); `None` for an unknown name.
pub fn by_name(name: &str, seed: u64) -> Option<Box<dyn RoutingPolicy>> {
    Some(match name {
        "round-robin" => Box::new(RoundRobin::new()),
        "random" => Box::new(Random::new(seed)),
        "least-requests" => Box::new(LeastRequests::new(seed)),
        "p2c" => Box::new(PowerOfTwo::new(seed)),
        "chwbl" => Box::new(Chwbl::new(ChwblConfig::default())),
        "sglang-cache-aware" => Box::new(SglangCacheAware::new(SglangConfig::default(), seed)),
        "dynamo-kv" => Box::new(DynamoKv::new(DynamoConfig::default(), seed)),
        "llm-d" => Box::new(Llmd::new(LlmdConfig::default(), seed)),
        _ => return None,
    })
}

/// Every baseline with its defaults, in [`NAMES`] order.
pub fn all(seed: u64) -> Vec<Box<dyn RoutingPolicy>> {
    NAMES
        .iter()
        .map(|n| by_name(n, seed).expect("listed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest};
    use crate::router::sluice_policy::{SluiceOptions, SluicePolicy};
    use crate::slice::{ReplicaId, SliceKey};
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A `KvIndex` that says each replica holds a fixed number of leading blocks.
    struct FakeKv(HashMap<ReplicaId, u32>);

    impl KvIndex for FakeKv {
        fn block_size(&self) -> u32 {
            16
        }
        fn overlap_blocks(&self, replica: ReplicaId, prompt: &[u32]) -> u32 {
            self.0
                .get(&replica)
                .copied()
                .unwrap_or(0)
                .min(prompt.len() as u32 / 16)
        }
    }

    fn obs(id: u64, healthy: bool, active: u32, waiting: u32, kv: f64) -> ReplicaObservation {
        ReplicaObservation {
            id: ReplicaId(id),
            healthy,
            capacity_mu_per_min: 80_000.0,
            active_requests: active,
            waiting,
            kv_usage: kv,
        }
    }

    fn req(id: u64, workload: u64, prompt: &[u32]) -> RouteRequest<'_> {
        RouteRequest {
            id,
            workload: Some(SliceKey(workload.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
            prompt,
            max_tokens: Some(64),
            images: 0,
        }
    }

    fn every_policy(seed: u64, replicas: u64) -> Vec<Box<dyn RoutingPolicy>> {
        let mut v = all(seed);
        let ids: Vec<(ReplicaId, String)> = (0..replicas)
            .map(|i| (ReplicaId(i), format!("rack-{}", i % 2)))
            .collect();
        v.push(Box::new(
            SluicePolicy::from_profile(&Profile::default_profile(), &ids, SluiceOptions::default())
                .unwrap(),
        ));
        v
    }

    #[test]
    fn names_build_and_unknown_names_do_not() {
        for (n, p) in NAMES.iter().zip(all(1)) {
            assert_eq!(p.name(), *n);
        }
        assert!(by_name("nope", 1).is_none());
    }

    #[test]
    fn round_robin_cycles_over_healthy_replicas() {
        let mut p = by_name("round-robin", 0).unwrap();
        let mut fleet: Vec<_> = (0..3).map(|i| obs(i, true, 0, 0, 0.0)).collect();
        let kv = FakeKv(HashMap::new());
        let got: Vec<u64> = (0..6)
            .map(|i| p.route(&req(i, 0, &[1]), &fleet, &kv, 0).unwrap().0)
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        fleet[1].healthy = false;
        let got: Vec<u64> = (0..4)
            .map(|i| p.route(&req(i, 0, &[1]), &fleet, &kv, 0).unwrap().0)
            .collect();
        // counter 6, 7, 8, 9 over [0, 2]
        assert_eq!(got, vec![0, 2, 0, 2]);
    }

    #[test]
    fn random_is_uniform_over_healthy_and_seeded() {
        let kv = FakeKv(HashMap::new());
        let mut fleet: Vec<_> = (0..4).map(|i| obs(i, true, 0, 0, 0.0)).collect();
        fleet[3].healthy = false;
        let draw = |seed| {
            let mut p = by_name("random", seed).unwrap();
            (0..3000)
                .map(|i| p.route(&req(i, 0, &[1]), &fleet, &kv, 0).unwrap().0)
                .collect::<Vec<_>>()
        };
        let a = draw(5);
        assert_eq!(a, draw(5));
        assert_ne!(a, draw(6));
        for r in 0..3 {
            let c = a.iter().filter(|&&x| x == r).count();
            assert!((850..1150).contains(&c), "{r}: {c}");
        }
        assert!(!a.contains(&3));
    }

    #[test]
    fn least_requests_picks_the_minimum() {
        let kv = FakeKv(HashMap::new());
        let mut p = by_name("least-requests", 3).unwrap();
        let fleet = vec![
            obs(0, true, 5, 0, 0.0),
            obs(1, true, 2, 0, 0.0),
            obs(2, false, 0, 0, 0.0),
            obs(3, true, 2, 0, 0.0),
        ];
        let mut seen = [0; 4];
        for i in 0..200 {
            let r = p.route(&req(i, 0, &[1]), &fleet, &kv, 0).unwrap();
            seen[r.0 as usize] += 1;
        }
        assert_eq!(seen[0], 0);
        assert_eq!(seen[2], 0, "unhealthy despite the lowest count");
        assert!(seen[1] > 50 && seen[3] > 50, "ties are shared: {seen:?}");
    }

    #[test]
    fn p2c_takes_the_less_loaded_of_its_two_samples() {
        let kv = FakeKv(HashMap::new());
        // Two replicas: both are always sampled, so the less loaded always wins.
        let two = vec![obs(0, true, 9, 0, 0.0), obs(1, true, 3, 0, 0.0)];
        let mut p = by_name("p2c", 1).unwrap();
        for i in 0..50 {
            assert_eq!(p.route(&req(i, 0, &[1]), &two, &kv, 0), Some(ReplicaId(1)));
        }
        // Three replicas: the most loaded never wins, the least loaded wins whenever
        // sampled (2/3 of the time), the middle one otherwise.
        let three = vec![
            obs(0, true, 9, 0, 0.0),
            obs(1, true, 3, 0, 0.0),
            obs(2, true, 5, 0, 0.0),
        ];
        let run = |seed| {
            let mut p = by_name("p2c", seed).unwrap();
            (0..3000)
                .map(|i| p.route(&req(i, 0, &[1]), &three, &kv, 0).unwrap().0)
                .collect::<Vec<_>>()
        };
        let a = run(11);
        assert_eq!(a, run(11), "deterministic per seed");
        assert_ne!(a, run(12));
        assert!(!a.contains(&0));
        let least = a.iter().filter(|&&x| x == 1).count();
        assert!((1800..2200).contains(&least), "{least}");
    }

    #[test]
    fn every_policy_is_deterministic_per_seed() {
        let kv = FakeKv([(ReplicaId(1), 2)].into_iter().collect());
        let run = |seed: u64| {
            let mut out = Vec::new();
            for mut p in every_policy(seed, 5) {
                let mut fleet: Vec<_> = (0..5).map(|i| obs(i, true, 0, 0, 0.1)).collect();
                for i in 0..200u64 {
                    let prompt: Vec<u32> = (0..(40 + i % 70) as u32)
                        .map(|t| t + (i % 4) as u32 * 1000)
                        .collect();
                    let r = p.route(&req(i, i % 7, &prompt), &fleet, &kv, i * 1000);
                    if let Some(r) = r {
                        fleet[r.0 as usize].active_requests += 1;
                        fleet[r.0 as usize].waiting = (i % 3) as u32;
                    }
                    out.push(r);
                    if i % 3 == 0 {
                        p.on_progress(i / 2, 5, i * 1000);
                        p.on_finish(i / 2, None, i * 1000);
                    }
                }
            }
            out
        };
        assert_eq!(run(42), run(42));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Route {
            workload: u64,
            family: u32,
            len: usize,
        },
        Progress {
            back: usize,
            tokens: u32,
        },
        Finish {
            back: usize,
        },
        Flip {
            replica: usize,
        },
        Load {
            replica: usize,
            active: u32,
            waiting: u32,
            kv: f64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..5, 0u32..4, 0usize..120).prop_map(|(workload, family, len)| Op::Route { workload, family, len }),
            2 => (0usize..8, 0u32..100).prop_map(|(back, tokens)| Op::Progress { back, tokens }),
            2 => (0usize..8).prop_map(|back| Op::Finish { back }),
            1 => (0usize..6).prop_map(|replica| Op::Flip { replica }),
            1 => (0usize..6, 0u32..200, 0u32..20, 0.0f64..1.0).prop_map(|(replica, active, waiting, kv)| Op::Load { replica, active, waiting, kv }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// For every policy: a chosen replica exists and is healthy, and `None` comes back
        /// exactly when no replica is healthy.
        #[test]
        fn picks_are_healthy_members_and_none_iff_none_healthy(
            n in 1usize..6,
            healthy in prop::collection::vec(any::<bool>(), 6),
            ops in prop::collection::vec(op(), 1..80),
            seed in any::<u64>(),
        ) {
            let kv = FakeKv((0..6).map(|i| (ReplicaId(i), (i as u32) % 3)).collect());
            for mut p in every_policy(seed, n as u64) {
                let mut fleet: Vec<_> = (0..n as u64)
                    .map(|i| obs(i, healthy[i as usize], 0, 0, 0.0))
                    .collect();
                let mut routed: Vec<u64> = Vec::new();
                for (step, o) in ops.iter().enumerate() {
                    let now = step as u64 * 50_000_000;
                    match o {
                        Op::Route { workload, family, len } => {
                            let prompt: Vec<u32> = (0..*len as u32).map(|t| family * 10_000 + t).collect();
                            let id = step as u64;
                            let got = p.route(&req(id, *workload, &prompt), &fleet, &kv, now);
                            let any_healthy = fleet.iter().any(|r| r.healthy);
                            match got {
                                Some(r) => {
                                    let member = fleet.iter().find(|x| x.id == r);
                                    prop_assert!(member.is_some_and(|m| m.healthy),
                                        "{} picked {:?} from {:?}", p.name(), r, fleet);
                                    routed.push(id);
                                }
                                None => prop_assert!(!any_healthy, "{} refused with healthy replicas", p.name()),
                            }
                        }
                        Op::Progress { back, tokens } => {
                            if let Some(&id) = routed.iter().rev().nth(*back) {
                                p.on_progress(id, *tokens, now);
                            }
                        }
                        Op::Finish { back } => {
                            if let Some(&id) = routed.iter().rev().nth(*back) {
                                p.on_finish(id, None, now);
                            }
                        }
                        Op::Flip { replica } => {
                            if let Some(r) = fleet.get_mut(*replica) {
                                r.healthy = !r.healthy;
                            }
                        }
                        Op::Load { replica, active, waiting, kv } => {
                            if let Some(r) = fleet.get_mut(*replica) {
                                r.active_requests = *active;
                                r.waiting = *waiting;
                                r.kv_usage = *kv;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A rough speed check at simulator scale (1,000 replicas, 2k-token prompts with
    /// shared prefixes); time it from the shell, one policy at a time:
    /// `SLUICE_BENCH_POLICY=llm-d cargo test -p sluice-actors --release -- --ignored baselines_at_scale`.
    #[test]
    #[ignore]
    fn baselines_at_scale() {
        let replicas = 1000u64;
        let requests = 20_000u64;
        let only = std::env::var("SLUICE_BENCH_POLICY").ok();
        let kv = FakeKv(HashMap::new());
        for mut p in every_policy(1, replicas) {
            if only.as_deref().is_some_and(|n| n != p.name()) {
                continue;
            }
            let mut fleet: Vec<_> = (0..replicas).map(|i| obs(i, true, 0, 0, 0.2)).collect();
            for i in 0..requests {
                let family = (i % 50) as u32;
                let prompt: Vec<u32> = (0..2000u32)
                    .map(|t| {
                        if t < 1500 {
                            family * 100_000 + t
                        } else {
                            i as u32 * 7 + t
                        }
                    })
                    .collect();
                if let Some(r) = p.route(&req(i, i % 97, &prompt), &fleet, &kv, i * 10_000) {
                    fleet[r.0 as usize].active_requests += 1;
                }
                if i >= 500 {
                    let done = i - 500;
                    p.on_progress(done, 100, i * 10_000);
                    p.on_finish(done, None, i * 10_000);
                }
            }
        }
    }
}
