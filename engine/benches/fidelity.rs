//! Fidelity of the simulated engine's default profile against published measurements.
//!
//! Drives the pure engine core in virtual time (no wall clock) and prints each measured
//! figure beside the published one from `docs/ENGINE.md`:
//!
//! ```text
//! cargo bench -p sluice-engine --bench fidelity
//! ```

use std::collections::HashMap;
use std::time::Instant;

use sluice_engine::core::{EngineCore, EngineEvent, EngineRequest, RequestId};
use sluice_engine::words::mix64;
use sluice_engine::EngineParams;

/// Distinct, deterministic token ids (no accidental prefix sharing between seeds).
fn tokens(seed: u64, len: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| (mix64(seed.wrapping_mul(0x1_0000_0001) ^ i) % 128_000) as u32)
        .collect()
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

fn row(label: &str, sim_ms: f64, published_ms: f64, note: &str) {
    println!(
        "| {label:<34} | {sim_ms:>9.1} | {published_ms:>9.1} | {:>5.2} | {note} |",
        sim_ms / published_ms
    );
}

fn header(title: &str) {
    println!("\n### {title}\n");
    println!(
        "| {:<34} | {:>9} | {:>9} | {:>5} | note |",
        "workload", "sim (ms)", "published", "ratio"
    );
    println!(
        "|{}|{}|{}|{}|------|",
        "-".repeat(36),
        "-".repeat(11),
        "-".repeat(11),
        "-".repeat(7)
    );
}

/// TTFT of one request alone on an idle engine (µs).
fn ttft_alone(params: &EngineParams, prompt_len: usize) -> f64 {
    let mut core = EngineCore::new(params.clone());
    core.add_request(
        EngineRequest::new(RequestId(1), tokens(1, prompt_len), 1, 1),
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut now = 0u64;
    loop {
        let out = core.step(now);
        now += out.duration_us;
        if out
            .events
            .iter()
            .any(|e| matches!(e, EngineEvent::Token { index: 0, .. }))
        {
            return now as f64;
        }
        assert!(core.has_work());
    }
}

/// Mean decode step time (µs) with `batch` sequences of `context` tokens, all decoding.
fn itl(params: &EngineParams, batch: u32, context: usize) -> (f64, f64) {
    let mut core = EngineCore::new(params.clone());
    for i in 0..batch {
        core.add_request(
            EngineRequest::new(
                RequestId(u64::from(i)),
                tokens(1000 + u64::from(i), context),
                10_000,
                10_000,
            ),
            0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    // Prefill everything first.
    loop {
        let out = core.step(0);
        if out.summary.batch.prefill_tokens == 0 {
            assert_eq!(out.summary.batch.decode_seqs, u64::from(batch));
            break;
        }
    }
    let steps = 32;
    let mut total = 0u64;
    for _ in 0..steps {
        let out = core.step(0);
        assert_eq!(
            out.summary.batch.decode_seqs,
            u64::from(batch),
            "not all decoding"
        );
        total += out.duration_us;
    }
    (total as f64 / f64::from(steps), core.stats().kv_usage)
}

struct Trace {
    mean_ttft_us: f64,
    mean_tpot_us: f64,
    hit_rate: f64,
    completed: usize,
    mean_running: f64,
}

/// The inference-perf "shared prefix" workload: 9 system prompts of 100 tokens, each
/// request one of them plus a unique question (575 tokens in all), 248 output tokens
/// (`ignore_eos`), Poisson arrivals at `rate` per second for `seconds`.
fn shared_prefix(params: &EngineParams, rate: f64, seconds: f64, seed: u64) -> Trace {
    const SYSTEM: usize = 100;
    const PROMPT: usize = 575;
    const OUTPUT: u32 = 248;
    let systems: Vec<Vec<u32>> = (0..9).map(|i| tokens(50_000 + i, SYSTEM)).collect();
    // Arrivals.
    let mut rng = seed;
    let mut t = 0.0f64;
    let mut arrivals: Vec<(u64, EngineRequest)> = Vec::new();
    let mut i = 0u64;
    loop {
        rng = mix64(rng);
        let u = ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        t += -u.ln() / rate;
        if t > seconds {
            break;
        }
        let mut prompt = systems[(mix64(rng ^ 0xABCD) % 9) as usize].clone();
        prompt.extend(tokens(1_000_000 + i, PROMPT - SYSTEM));
        arrivals.push((
            (t * 1e6) as u64,
            EngineRequest::new(RequestId(i), prompt, OUTPUT, OUTPUT),
        ));
        i += 1;
    }
    let arrival_at: HashMap<RequestId, u64> = arrivals.iter().map(|(t, r)| (r.id, *t)).collect();
    arrivals.reverse();

    let mut core = EngineCore::new(params.clone());
    let mut now = 0u64;
    let mut first: HashMap<RequestId, u64> = HashMap::new();
    let (mut ttft_sum, mut tpot_sum, mut done) = (0.0, 0.0, 0usize);
    let mut events = Vec::new();
    let (mut running_sum, mut steps) = (0u64, 0u64);
    loop {
        while arrivals.last().is_some_and(|(at, _)| *at <= now) {
            let Some((at, r)) = arrivals.pop() else { break };
            core.add_request(r, at).unwrap_or_else(|e| panic!("{e}"));
        }
        if !core.has_work() {
            match arrivals.last() {
                Some((at, _)) => {
                    now = *at;
                    continue;
                }
                None => break,
            }
        }
        events.clear();
        let s = core.step_into(now, &mut events);
        now += s.duration_us;
        running_sum += u64::from(s.scheduled_seqs);
        steps += 1;
        for e in &events {
            match *e {
                EngineEvent::Token { id, index: 0 } => {
                    first.insert(id, now);
                }
                EngineEvent::Finished { id, usage, .. } => {
                    let arrived = arrival_at[&id];
                    let ttft = first[&id] - arrived;
                    let e2e = now - arrived;
                    ttft_sum += ttft as f64;
                    tpot_sum += (e2e - ttft) as f64 / f64::from(usage.completion_tokens - 1);
                    done += 1;
                }
                _ => {}
            }
        }
    }
    let st = core.stats();
    Trace {
        mean_ttft_us: ttft_sum / done as f64,
        mean_tpot_us: tpot_sum / done as f64,
        hit_rate: st.prefix_cache_hits as f64 / st.prefix_cache_queries as f64,
        completed: done,
        mean_running: running_sum as f64 / steps as f64,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let started = Instant::now();
    let p = EngineParams::default();
    println!("## Simulated engine fidelity (default profile: Llama-3.1-8B class, 1x H100, bf16)");
    println!(
        "\nprofile: T0 = {} us, a = {} us/token, q = {} us/pair, d = {} us/seq, e = {} us/token, \
         KV = {} blocks x {}, budget = {} tokens, max_num_seqs = {}",
        p.step_fixed_us,
        p.prefill_token_us,
        p.prefill_attention_pair_us,
        p.decode_seq_us,
        p.kv_read_token_us,
        p.kv_blocks,
        p.block_size,
        p.max_num_batched_tokens,
        p.max_num_seqs
    );

    header("TTFT at batch 1 vs prompt length (published: Llama-3.1-8B FP8, H200, Dynamo planner profile)");
    for (len, published) in [(100, 19.5), (2_100, 50.0), (8_200, 171.0), (16_400, 375.0)] {
        row(
            &format!("prompt {len} tokens"),
            ms(ttft_alone(&p, len)),
            published,
            "",
        );
    }

    header("Decode inter-token latency vs batch (published: same H200 FP8 profile)");
    let (t, _) = itl(&p, 1, 3_000);
    row("batch 1, 3k context", ms(t), 4.4, "");
    let (t, kv) = itl(&p, 49, 3_000);
    row(
        "batch 49, 3k context",
        ms(t),
        10.0,
        &format!("KV {:.0}% full", kv * 100.0),
    );
    let (t, kv) = itl(&p, 145, 3_000);
    row(
        "batch 145, 3k context",
        ms(t),
        22.0,
        &format!("KV {:.0}% full", kv * 100.0),
    );
    // 289 sequences exceed the default max_num_seqs (256) and 289 x 3k tokens exceed
    // an H100's KV cache: raise the limit and fill the cache to 92%, as published.
    let big = EngineParams {
        max_num_seqs: 512,
        ..p.clone()
    };
    let ctx = (0.92 * f64::from(p.kv_blocks * p.block_size) / 289.0) as usize;
    let (t, kv) = itl(&big, 289, ctx);
    row(
        &format!("batch 289, {ctx} context"),
        ms(t),
        42.0,
        &format!("KV {:.0}% full; max_num_seqs raised to 512", kv * 100.0),
    );

    header("Shared-prefix workload, 575-token prompts (100 shared), 248 output tokens, Poisson arrivals (published: real vLLM, Llama-2-7B, 1x H100)");
    let (mut sim_requests, mut sim_wall) = (0usize, 0.0f64);
    for (rate, ttft, tpot) in [(8.0, 27.0, 4.1), (20.0, 52.0, 8.3)] {
        let t = Instant::now();
        let r = shared_prefix(&p, rate, 300.0, 42);
        sim_wall += t.elapsed().as_secs_f64();
        sim_requests += r.completed;
        let note = format!(
            "{} requests, mean batch {:.1}, prefix hit rate {:.0}%",
            r.completed,
            r.mean_running,
            r.hit_rate * 100.0
        );
        row(
            &format!("{rate} req/s: mean TTFT"),
            ms(r.mean_ttft_us),
            ttft,
            &note,
        );
        row(
            &format!("{rate} req/s: mean TPOT"),
            ms(r.mean_tpot_us),
            tpot,
            "",
        );
    }
    println!(
        "\nCore speed: the shared-prefix runs simulated {sim_requests} requests ({} output tokens) \
         in {sim_wall:.2} s of wall time ({:.0} requests/s, {:.1} M tokens/s, one core).",
        sim_requests * 248,
        sim_requests as f64 / sim_wall,
        (sim_requests * 248) as f64 / sim_wall / 1e6
    );
    println!(
        "(whole benchmark: {:.2} s of wall time)",
        started.elapsed().as_secs_f64()
    );
}
