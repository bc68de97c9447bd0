//! Tests of the engine core: scheduler, prefix cache, preemption, step model.

use std::collections::HashMap;

use proptest::prelude::*;

use crate::core::*;
use crate::params::EngineParams;

fn small(kv_blocks: u32, block_size: u32) -> EngineParams {
    EngineParams {
        kv_blocks,
        block_size,
        ..EngineParams::default()
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| seed.wrapping_mul(100_003).wrapping_add(i) % 128_000)
        .collect()
}

/// Per-request record of what the engine emitted.
#[derive(Default, Debug)]
struct Record {
    tokens: Vec<u32>,
    token_times: Vec<u64>,
    finished: Option<(FinishReason, Usage)>,
    preempted: u32,
}

/// Runs the engine until it is idle, recording events. `arrivals` are (time, request),
/// sorted by time. Returns the records and the final clock.
fn run(
    core: &mut EngineCore,
    mut arrivals: Vec<(u64, EngineRequest)>,
    mut on_step: impl FnMut(&EngineCore, &StepSummary),
) -> (HashMap<RequestId, Record>, u64) {
    arrivals.reverse();
    let mut now = 0u64;
    let mut recs: HashMap<RequestId, Record> = HashMap::new();
    let mut events = Vec::new();
    loop {
        while arrivals.last().is_some_and(|(t, _)| *t <= now) {
            let Some((_, r)) = arrivals.pop() else { break };
            recs.entry(r.id).or_default();
            core.add_request(r, now).unwrap();
        }
        if !core.has_work() {
            match arrivals.last() {
                Some((t, _)) => {
                    now = *t;
                    continue;
                }
                None => break,
            }
        }
        events.clear();
        let s = core.step_into(now, &mut events);
        assert!(s.duration_us > 0, "a busy engine must schedule something");
        now += s.duration_us;
        on_step(core, &s);
        core.check_invariants();
        for e in &events {
            let r = recs.entry(e.id()).or_default();
            match *e {
                EngineEvent::Token { index, .. } => {
                    assert!(r.finished.is_none(), "token after finish");
                    r.tokens.push(index);
                    r.token_times.push(now);
                }
                EngineEvent::Finished { reason, usage, .. } => r.finished = Some((reason, usage)),
                EngineEvent::Preempted { .. } => r.preempted += 1,
            }
        }
    }
    (recs, now)
}

fn run_one(core: &mut EngineCore, req: EngineRequest) -> Record {
    let id = req.id;
    let (mut recs, _) = run(core, vec![(0, req)], |_, _| {});
    recs.remove(&id).unwrap()
}

#[test]
fn first_token_at_end_of_prefill_then_one_per_step() {
    let mut core = EngineCore::new(EngineParams::default());
    core.add_request(EngineRequest::new(RequestId(1), prompt(1, 100), 5, 1000), 0)
        .unwrap();
    let out = core.step(0);
    assert_eq!(
        out.events,
        vec![EngineEvent::Token {
            id: RequestId(1),
            index: 0
        }]
    );
    assert_eq!(out.summary.batch.prefill_tokens, 100);
    // T0 + a·100 + q·100·50.
    let p = EngineParams::default();
    let expect =
        p.step_fixed_us + p.prefill_token_us * 100.0 + p.prefill_attention_pair_us * 5000.0;
    assert_eq!(out.duration_us, expect.round() as u64);
    for i in 1..5 {
        let out = core.step(0);
        assert_eq!(out.summary.batch.decode_seqs, 1);
        assert_eq!(
            out.summary.batch.decode_context_tokens,
            100 + u64::from(i) - 1
        );
        assert_eq!(
            out.events[0],
            EngineEvent::Token {
                id: RequestId(1),
                index: i
            }
        );
    }
    assert!(!core.has_work());
    assert_eq!(core.pool().num_free(), p.kv_blocks);
}

#[test]
fn output_length_and_finish_reason() {
    let mut core = EngineCore::new(EngineParams::default());
    let r = run_one(
        &mut core,
        EngineRequest::new(RequestId(1), prompt(1, 10), 7, 100),
    );
    assert_eq!(r.tokens, (0..7).collect::<Vec<_>>());
    assert_eq!(r.finished.unwrap().0, FinishReason::Length);
    let r = run_one(
        &mut core,
        EngineRequest::new(RequestId(2), prompt(2, 10), 70, 9),
    );
    assert_eq!(r.tokens.len(), 9);
    let (reason, usage) = r.finished.unwrap();
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(usage.prompt_tokens, 10);
    assert_eq!(usage.completion_tokens, 9);
    // output_len == max_tokens: the cap was hit.
    let r = run_one(
        &mut core,
        EngineRequest::new(RequestId(3), prompt(3, 10), 9, 9),
    );
    assert_eq!(r.finished.unwrap().0, FinishReason::Length);
}

#[test]
fn rejects_what_cannot_run() {
    let mut core = EngineCore::new(EngineParams {
        max_model_len: 1000,
        ..small(10, 16)
    });
    let too_long = EngineRequest::new(RequestId(1), prompt(1, 900), 200, 10);
    assert!(matches!(
        core.add_request(too_long, 0),
        Err(RejectReason::TooLong {
            requested: 1100,
            ..
        })
    ));
    let too_big = EngineRequest::new(RequestId(2), prompt(1, 150), 20, 20);
    assert!(matches!(
        core.add_request(too_big, 0),
        Err(RejectReason::ExceedsKvCache {
            needed: 11,
            available: 10
        })
    ));
    assert_eq!(
        core.add_request(EngineRequest::new(RequestId(3), vec![], 5, 5), 0),
        Err(RejectReason::EmptyPrompt)
    );
    core.add_request(EngineRequest::new(RequestId(4), prompt(1, 10), 5, 5), 0)
        .unwrap();
    assert_eq!(
        core.add_request(EngineRequest::new(RequestId(4), prompt(1, 10), 5, 5), 0),
        Err(RejectReason::DuplicateId(RequestId(4)))
    );
    assert!(!core.contains(RequestId(1)));
}

#[test]
fn equal_prefixes_hit_in_whole_blocks() {
    let mut core = EngineCore::new(EngineParams::default());
    let base = prompt(7, 100);
    let a = run_one(
        &mut core,
        EngineRequest::new(RequestId(1), base.clone(), 4, 4),
    );
    assert_eq!(a.finished.unwrap().1.cached_tokens, 0);
    // Same prompt: 6 whole blocks (96 tokens) hit; the last 4 are computed.
    let b = run_one(
        &mut core,
        EngineRequest::new(RequestId(2), base.clone(), 4, 4),
    );
    assert_eq!(b.finished.unwrap().1.cached_tokens, 96);
    // Shares 40 tokens, then differs: 2 whole blocks hit.
    let mut c_prompt = base[..40].to_vec();
    c_prompt.extend(prompt(8, 60));
    let c = run_one(&mut core, EngineRequest::new(RequestId(3), c_prompt, 4, 4));
    assert_eq!(c.finished.unwrap().1.cached_tokens, 32);
    // A different prompt misses.
    let d = run_one(
        &mut core,
        EngineRequest::new(RequestId(4), prompt(9, 100), 4, 4),
    );
    assert_eq!(d.finished.unwrap().1.cached_tokens, 0);
    // Exactly 64 tokens, all cached: the last token is still computed, so 3 blocks hit.
    let e_prompt = base[..64].to_vec();
    run_one(
        &mut core,
        EngineRequest::new(RequestId(5), e_prompt.clone(), 1, 1),
    );
    let e = run_one(&mut core, EngineRequest::new(RequestId(6), e_prompt, 1, 1));
    assert_eq!(e.finished.unwrap().1.cached_tokens, 48);
    let s = core.stats();
    assert_eq!(s.prefix_cache_queries, 100 * 4 + 64 * 2);
    assert_eq!(s.prefix_cache_hits, 96 + 32 + 48 + 48);
}

#[test]
fn requests_in_one_step_share_the_prefix_the_first_computes() {
    // vLLM caches a block when it schedules the prefill computing it, so requests
    // scheduled after it in the same step find it (measured on vLLM 0.32: eight requests
    // over one 900-token prefix in one step computed 905 + 7 x 9 tokens). The step
    // computes the shared prefix once.
    let mut core = EngineCore::new(EngineParams::default());
    let shared = prompt(11, 900);
    let arrivals = (0..8u32)
        .map(|i| {
            let mut p = shared.clone();
            p.extend(prompt(100 + i, 5));
            (0, EngineRequest::new(RequestId(u64::from(i)), p, 1, 1))
        })
        .collect();
    let mut steps = Vec::new();
    let (recs, _) = run(&mut core, arrivals, |_, s| steps.push(*s));
    assert_eq!(steps.len(), 1, "all eight in one step");
    assert_eq!(steps[0].scheduled_seqs, 8);
    assert_eq!(steps[0].batch.prefill_tokens, 905 + 7 * (905 - 896));
    let mut cached: Vec<u32> = recs
        .values()
        .filter_map(|r| r.finished.map(|(_, u)| u.cached_tokens))
        .collect();
    cached.sort_unstable();
    assert_eq!(cached, [0, 896, 896, 896, 896, 896, 896, 896]);
}

#[test]
fn a_request_preempted_before_computing_leaves_nothing_cached() {
    // A running request is scheduled for its second prefill chunk, then preempted in the
    // same step for a better-priority request with the same prompt: the blocks of that
    // chunk were never computed, so the newcomer finds only the first chunk cached.
    let params = EngineParams {
        max_num_seqs: 1,
        ..EngineParams::default()
    };
    let mut core = EngineCore::new(params);
    let long = prompt(21, 12_000);
    core.add_request(
        EngineRequest::new(RequestId(1), long.clone(), 4, 4).with_priority(5),
        0,
    )
    .unwrap();
    let mut events = Vec::new();
    core.step_into(0, &mut events);
    core.add_request(
        EngineRequest::new(RequestId(2), long, 4, 4).with_priority(0),
        1,
    )
    .unwrap();
    let (recs, _) = run(&mut core, Vec::new(), |_, _| {});
    let (_, usage) = recs[&RequestId(2)].finished.unwrap();
    assert_eq!(usage.cached_tokens, 8_192);
}

#[test]
fn a_cache_salt_isolates_prefixes() {
    // vLLM's cache_salt: the same prompt under another salt shares no cached block,
    // under the same salt it does.
    let mut core = EngineCore::new(EngineParams::default());
    let base = prompt(7, 100);
    let salted = |id: u64, salt: &str| {
        let mut r = EngineRequest::new(RequestId(id), base.clone(), 4, 4);
        r.hash_root = crate::core::salted_root(salt);
        r
    };
    run_one(&mut core, salted(1, "tenant-a"));
    let other = run_one(&mut core, salted(2, "tenant-b"));
    assert_eq!(other.finished.unwrap().1.cached_tokens, 0);
    let unsalted = run_one(
        &mut core,
        EngineRequest::new(RequestId(3), base.clone(), 4, 4),
    );
    assert_eq!(unsalted.finished.unwrap().1.cached_tokens, 0);
    let same = run_one(&mut core, salted(4, "tenant-a"));
    assert_eq!(same.finished.unwrap().1.cached_tokens, 96);
}

#[test]
fn multi_turn_reuses_cached_output_blocks() {
    // The engine caches the blocks of generated tokens too: a follow-up whose prompt is
    // the previous prompt plus the previous answer hits both.
    let mut core = EngineCore::new(EngineParams::default());
    let p = prompt(3, 64);
    let req = EngineRequest::new(RequestId(1), p.clone(), 40, 40);
    let seed = req.seed;
    run_one(&mut core, req);
    let mut next = p;
    next.extend((0..40).map(|i| crate::words::output_token(seed, i)));
    next.extend(prompt(4, 20));
    let r = run_one(&mut core, EngineRequest::new(RequestId(2), next, 1, 1));
    // 64 prompt + 39 answer tokens had KV computed (the last answer token never is): 6 blocks.
    assert_eq!(r.finished.unwrap().1.cached_tokens, 96);
}

#[test]
fn cached_prefix_makes_prefill_cheaper() {
    let mut core = EngineCore::new(EngineParams::default());
    let p = prompt(1, 2000);
    core.add_request(EngineRequest::new(RequestId(1), p.clone(), 1, 1), 0)
        .unwrap();
    let cold = core.step(0).duration_us;
    core.add_request(EngineRequest::new(RequestId(2), p, 1, 1), 0)
        .unwrap();
    let warm = core.step(0);
    assert_eq!(warm.summary.batch.prefill_tokens, 2000 - 1984);
    assert!(
        warm.duration_us * 3 < cold,
        "warm {} cold {cold}",
        warm.duration_us
    );
}

#[test]
fn lru_evicts_the_oldest_freed_blocks_first() {
    // 9 blocks of 4 tokens. A and B (9 tokens: 2 full blocks + 1) finish and stay cached,
    // A's freed first. C and D then need blocks: A's are evicted, B's survive.
    let mut core = EngineCore::new(small(9, 4));
    let (pa, pb) = (prompt(1, 9), prompt(2, 9));
    run_one(
        &mut core,
        EngineRequest::new(RequestId(1), pa.clone(), 1, 1),
    );
    run_one(
        &mut core,
        EngineRequest::new(RequestId(2), pb.clone(), 1, 1),
    );
    run_one(
        &mut core,
        EngineRequest::new(RequestId(3), prompt(3, 13), 1, 1),
    );
    run_one(
        &mut core,
        EngineRequest::new(RequestId(4), prompt(4, 9), 1, 1),
    );
    let b = run_one(&mut core, EngineRequest::new(RequestId(5), pb, 1, 1));
    assert_eq!(
        b.finished.unwrap().1.cached_tokens,
        8,
        "B's blocks were used more recently"
    );
    let a = run_one(&mut core, EngineRequest::new(RequestId(6), pa, 1, 1));
    assert_eq!(
        a.finished.unwrap().1.cached_tokens,
        0,
        "A's blocks were evicted first"
    );
}

#[test]
fn blocks_in_use_are_never_evicted() {
    // A long-running request holds its blocks while others churn through the cache.
    let mut core = EngineCore::new(small(12, 4));
    let long = prompt(1, 8);
    let mut arrivals = vec![(0, EngineRequest::new(RequestId(0), long.clone(), 20, 20))];
    for i in 1..30u32 {
        arrivals.push((
            u64::from(i) * 1000,
            EngineRequest::new(RequestId(u64::from(i)), prompt(i + 10, 6), 2, 2),
        ));
    }
    let (recs, _) = run(&mut core, arrivals, |_, _| {});
    assert_eq!(recs[&RequestId(0)].tokens.len(), 20);
    assert_eq!(recs[&RequestId(0)].preempted, 0);
    assert!(recs.values().all(|r| r.finished.is_some()));
    assert_eq!(core.pool().num_free(), 12);
}

#[test]
fn preemption_when_cache_is_full_and_all_still_complete() {
    // 8 blocks of 4 tokens (32 tokens); two requests that each grow to 27 tokens.
    let mut core = EngineCore::new(small(8, 4));
    let arrivals = vec![
        (0, EngineRequest::new(RequestId(1), prompt(1, 8), 20, 20)),
        (0, EngineRequest::new(RequestId(2), prompt(2, 8), 20, 20)),
    ];
    let (recs, _) = run(&mut core, arrivals, |_, _| {});
    let total_preempted: u32 = recs.values().map(|r| r.preempted).sum();
    assert!(total_preempted >= 1);
    // The later arrival is the victim (same priority).
    assert!(recs[&RequestId(2)].preempted >= 1);
    for r in recs.values() {
        assert_eq!(r.tokens, (0..20).collect::<Vec<_>>());
        assert_eq!(r.finished.unwrap().1.completion_tokens, 20);
    }
    assert_eq!(core.stats().preemptions, u64::from(total_preempted));
    assert_eq!(core.pool().num_free(), 8);
    assert_eq!(core.stats().kv_usage, 0.0);
}

#[test]
fn preemption_picks_the_lowest_priority() {
    let mut core = EngineCore::new(small(8, 4));
    let arrivals = vec![
        (
            0,
            EngineRequest::new(RequestId(1), prompt(1, 8), 20, 20).with_priority(5),
        ),
        (
            0,
            EngineRequest::new(RequestId(2), prompt(2, 8), 20, 20).with_priority(0),
        ),
    ];
    let (recs, _) = run(&mut core, arrivals, |_, _| {});
    assert!(recs[&RequestId(1)].preempted >= 1);
    assert_eq!(recs[&RequestId(2)].preempted, 0);
}

#[test]
fn high_priority_request_is_served_promptly_in_a_saturated_engine() {
    let params = EngineParams {
        max_num_seqs: 8,
        ..EngineParams::default()
    };
    let mut core = EngineCore::new(params);
    let mut arrivals = Vec::new();
    // 8 long low-priority requests fill every slot, 20 more queue behind them.
    for i in 0..28u64 {
        arrivals.push((
            0,
            EngineRequest::new(RequestId(i), prompt(i as u32, 500), 300, 300).with_priority(10),
        ));
    }
    // A probe at the highest priority arrives once the engine is saturated.
    let probe = EngineRequest::new(RequestId(999), prompt(999, 20), 1, 1).with_priority(i64::MIN);
    arrivals.push((100_000, probe));
    let (recs, _) = run(&mut core, arrivals, |_, _| {});
    let probe_first = recs[&RequestId(999)].token_times[0];
    assert!(
        probe_first < 100_000 + 3 * 20_000,
        "probe TTFT {}",
        probe_first - 100_000
    );
    for i in 8..28u64 {
        assert!(
            recs[&RequestId(i)].token_times[0] > probe_first,
            "queued {i} went first"
        );
    }
    // Someone was preempted to make room, and still finished completely.
    let victims: Vec<_> = recs.iter().filter(|(_, r)| r.preempted > 0).collect();
    assert!(!victims.is_empty());
    for (_, r) in victims {
        assert_eq!(r.tokens.len(), 300);
    }
}

#[test]
fn equal_priority_does_not_preempt() {
    let params = EngineParams {
        max_num_seqs: 2,
        ..EngineParams::default()
    };
    let mut core = EngineCore::new(params);
    let arrivals = (0..3u64)
        .map(|i| {
            (
                0,
                EngineRequest::new(RequestId(i), prompt(i as u32, 50), 10, 10),
            )
        })
        .collect();
    let (recs, _) = run(&mut core, arrivals, |_, _| {});
    assert!(recs.values().all(|r| r.preempted == 0));
    assert!(recs[&RequestId(2)].token_times[0] > recs[&RequestId(0)].token_times[9] - 1);
}

#[test]
fn long_prompts_are_chunked_and_decodes_go_first() {
    let mut core = EngineCore::new(EngineParams::default());
    core.add_request(EngineRequest::new(RequestId(1), prompt(1, 100), 50, 50), 0)
        .unwrap();
    core.step(0);
    core.add_request(EngineRequest::new(RequestId(2), prompt(2, 20_000), 5, 5), 0)
        .unwrap();
    let mut first_token_step = None;
    for step in 1..=4 {
        let out = core.step(0);
        assert!(out.summary.batch.tokens() <= 8192);
        // The decoding request gets its token every step.
        assert!(out.summary.batch.decode_seqs >= 1);
        assert!(out.events.contains(&EngineEvent::Token {
            id: RequestId(1),
            index: step
        }));
        if out.events.iter().any(|e| {
            *e == EngineEvent::Token {
                id: RequestId(2),
                index: 0,
            }
        }) {
            first_token_step.get_or_insert(step);
        }
    }
    // 20,000 tokens with 8,191 per step beside the decode: 3 steps.
    assert_eq!(first_token_step, Some(3));
}

#[test]
fn abort_frees_blocks() {
    let mut core = EngineCore::new(EngineParams::default());
    core.add_request(EngineRequest::new(RequestId(1), prompt(1, 1000), 50, 50), 0)
        .unwrap();
    core.add_request(EngineRequest::new(RequestId(2), prompt(2, 1000), 50, 50), 0)
        .unwrap();
    core.step(0);
    assert!(core.stats().kv_blocks_used > 0);
    core.abort(RequestId(1));
    core.abort(RequestId(2));
    core.abort(RequestId(3));
    assert!(!core.has_work());
    assert_eq!(core.stats().kv_blocks_used, 0);
    assert_eq!(core.stats().aborted, 2);
    core.check_invariants();
}

#[test]
fn slowdown_scales_step_time() {
    let mut a = EngineCore::new(EngineParams::default());
    let mut b = EngineCore::new(EngineParams::default());
    b.set_slowdown(10.0);
    for c in [&mut a, &mut b] {
        c.add_request(EngineRequest::new(RequestId(1), prompt(1, 500), 5, 5), 0)
            .unwrap();
    }
    let (ta, tb) = (a.step(0).duration_us, b.step(0).duration_us);
    assert!((tb as f64 / ta as f64 - 10.0).abs() < 0.01);
}

/// Mean decode step time with `n` sequences of `ctx` context tokens.
fn decode_step_us(n: u32, ctx: usize) -> u64 {
    let mut core = EngineCore::new(EngineParams {
        max_num_seqs: 1024,
        kv_blocks: 200_000,
        ..EngineParams::default()
    });
    for i in 0..n {
        core.add_request(
            EngineRequest::new(RequestId(u64::from(i)), prompt(i, ctx), 100, 100),
            0,
        )
        .unwrap();
    }
    // Prefill everything.
    while core.step(0).summary.batch.prefill_tokens > 0 {}
    core.step(0).duration_us
}

/// Property-test cases: `default`, or `PROPTEST_CASES` from the environment.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

    #[test]
    fn more_concurrent_decode_is_never_faster(n in 1u32..64, extra in 1u32..16, ctx in 1usize..600) {
        prop_assert!(decode_step_us(n + extra, ctx) >= decode_step_us(n, ctx));
    }

    #[test]
    fn more_context_is_never_faster(n in 1u32..32, ctx in 1usize..600, more in 1usize..600) {
        prop_assert!(decode_step_us(n, ctx + more) >= decode_step_us(n, ctx));
    }

    #[test]
    fn batch_model_is_monotone(
        p in 0u64..8192, c in 0u64..100_000, d in 0u64..512, k in 0u64..1_000_000,
        dp in 0u64..100, dd in 0u64..10, dk in 0u64..1000,
    ) {
        let params = EngineParams::default();
        let mut a = BatchShape::default();
        a.add_prefill(c, p);
        for _ in 0..d { a.add_decode(k / d.max(1)); }
        let mut b = a;
        b.add_prefill(c + p, dp);
        for _ in 0..dd { b.add_decode(dk); }
        prop_assert!(b.duration_us(&params, 1.0) >= a.duration_us(&params, 1.0));
    }

    #[test]
    fn prefill_cost_grows_with_uncached_tokens(len in 1usize..8000, more in 1usize..8000, cached_blocks in 0usize..100) {
        // A request's prefill step gets slower with every uncached token, and a cached
        // prefix of the same prompt makes it faster.
        let first_step = |prompt_tokens: &[u32], warm: Option<&[u32]>| {
            let mut core = EngineCore::new(EngineParams { max_num_batched_tokens: 32_768, ..EngineParams::default() });
            if let Some(w) = warm {
                core.add_request(EngineRequest::new(RequestId(0), w.to_vec(), 1, 1), 0).unwrap();
                core.step(0);
            }
            core.add_request(EngineRequest::new(RequestId(1), prompt_tokens.to_vec(), 1, 1), 0).unwrap();
            core.step(0).duration_us
        };
        let long = prompt(5, len + more);
        prop_assert!(first_step(&long, None) > first_step(&long[..len], None));
        let warm_len = (cached_blocks * 16).min(len + more - 1);
        if warm_len >= 16 {
            prop_assert!(first_step(&long, Some(&long[..warm_len])) < first_step(&long, None));
        }
    }

    #[test]
    fn every_request_finishes_exactly_and_frees_everything(
        reqs in prop::collection::vec(
            (0u64..200_000, 0u32..4, 1usize..120, 1u32..60, 1u32..60, -2i64..3, prop::bool::ANY),
            1..40,
        ),
        kv_blocks in 20u32..80,
        block_size in prop::sample::select(vec![1u32, 4, 16]),
        max_num_seqs in 1u32..12,
        budget in 8u32..300,
    ) {
        let params = EngineParams {
            kv_blocks,
            block_size,
            max_num_seqs,
            max_num_batched_tokens: budget,
            ..EngineParams::default()
        };
        let mut core = EngineCore::new(params.clone());
        // Prompts share prefixes: a common head of a few "system prompts".
        let mut arrivals: Vec<(u64, EngineRequest)> = Vec::new();
        let mut expect = HashMap::new();
        for (i, &(t, sys, len, max_tokens, output_len, priority, _)) in reqs.iter().enumerate() {
            let mut p = prompt(1000 + sys, 40);
            p.extend(prompt(i as u32, len));
            let req = EngineRequest::new(RequestId(i as u64), p, max_tokens, output_len).with_priority(priority);
            if core.check(&req).is_err() {
                continue;
            }
            expect.insert(req.id, req.target_output());
            arrivals.push((t, req));
        }
        arrivals.sort_by_key(|(t, r)| (*t, r.id));
        let (recs, _) = run(&mut core, arrivals, |_, s| {
            assert!(s.batch.tokens() <= u64::from(budget));
            assert!(s.scheduled_seqs <= max_num_seqs);
        });
        for (id, target) in &expect {
            let r = &recs[id];
            prop_assert_eq!(&r.tokens, &(0..*target).collect::<Vec<_>>());
            let (reason, usage) = r.finished.unwrap();
            prop_assert_eq!(usage.completion_tokens, *target);
            let max_tokens = reqs[id.0 as usize].3;
            prop_assert_eq!(reason == FinishReason::Length, *target == max_tokens);
        }
        prop_assert!(!core.has_work());
        prop_assert_eq!(core.pool().num_free(), kv_blocks);
        prop_assert_eq!(core.stats().kv_blocks_used, 0);
        prop_assert_eq!(core.stats().finished, expect.len() as u64);
    }

    #[test]
    fn aborts_at_random_times_release_everything(
        n in 1usize..20, aborts in prop::collection::vec((0usize..20, 0u32..30), 0..10),
    ) {
        let mut core = EngineCore::new(small(40, 4));
        for i in 0..n {
            core.add_request(EngineRequest::new(RequestId(i as u64), prompt(i as u32, 30), 20, 20), 0).unwrap();
        }
        let mut step = 0u32;
        while core.has_work() {
            for &(who, when) in &aborts {
                if when == step { core.abort(RequestId(who as u64)); }
            }
            core.step(0);
            core.check_invariants();
            step += 1;
            prop_assert!(step < 10_000);
        }
        prop_assert_eq!(core.pool().num_free(), 40);
    }
}
