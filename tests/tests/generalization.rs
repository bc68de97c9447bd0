//! Routing on traffic structures Sluice was not tuned on, replayed by `sluice sim` with
//! every policy: a regression in how the router keys or places such traffic shows here
//! as a loss to a baseline. The simulator runs in virtual time, so the figures are
//! deterministic; the margins below are the goals of the issue that introduced them.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use sluice_tests::sluice_bin;

struct Row {
    name: String,
    ttft_p95: f64,
    ttft_p99: f64,
    hit: f64,
    /// Share of the trace's requests that met the SLO.
    attainment: f64,
}

/// `sluice sim --policy all` on the trace `trace_args` name; one row per policy.
fn simulate(trace_args: &[&str], load: &str) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("out.json");
    let out = std::process::Command::new(sluice_bin()?)
        .arg("sim")
        .args(trace_args)
        .args([
            "--replicas",
            "8",
            "--racks",
            "2",
            "--load",
            load,
            "--policy",
            "all",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .context("cannot run sluice sim")?;
    ensure!(
        out.status.success(),
        "sluice sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let rows = v["policies"]
        .as_array()
        .context("no policies in the sim's JSON")?
        .iter()
        .map(|p| Row {
            name: p["name"].as_str().unwrap_or("").to_owned(),
            ttft_p95: p["ttft_ms"]["p95"].as_f64().unwrap_or(f64::NAN),
            ttft_p99: p["ttft_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            hit: p["prefix_hit_rate"].as_f64().unwrap_or(f64::NAN),
            attainment: p["slo_attainment"].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    Ok(rows)
}

/// Sluice's row and the best of the baselines' on each metric.
fn compare(rows: &[Row]) -> Result<(&Row, f64, f64, f64, f64)> {
    let sluice = rows
        .iter()
        .find(|r| r.name == "sluice")
        .context("no sluice row")?;
    let others = rows.iter().filter(|r| r.name != "sluice");
    let min = |f: fn(&Row) -> f64| others.clone().map(f).fold(f64::INFINITY, f64::min);
    let max = |f: fn(&Row) -> f64| others.clone().map(f).fold(0.0, f64::max);
    Ok((
        sluice,
        min(|r| r.ttft_p95),
        min(|r| r.ttft_p99),
        max(|r| r.hit),
        max(|r| r.attainment),
    ))
}

/// At loads 0.5 and 0.8: Sluice's TTFT p95 and p99 within the given multiples of the
/// best baseline's, its prefix hits within `hit_points` points of the best (the goal is
/// 2), its goodput within 2%.
///
/// Goodput is compared over the trace's arrivals, which every policy replays alike: as
/// the share of requests meeting the SLO. (The simulator's `goodput_rps` divides by the
/// time until the last request finished; on 1,500 requests that all meet the SLO, it
/// measures when the last few answers ended, not how the traffic was placed.)
fn holds_its_own(format: &str, p95_margin: f64, p99_margin: f64, hit_points: f64) -> Result<()> {
    holds_its_own_within(format, p95_margin, p99_margin, hit_points, 0.98)
}

/// [`holds_its_own`] with Sluice's share of requests within the SLO allowed down to
/// `attainment_share` of the best baseline's.
fn holds_its_own_within(
    format: &str,
    p95_margin: f64,
    p99_margin: f64,
    hit_points: f64,
    attainment_share: f64,
) -> Result<()> {
    let trace = ["--trace-format", format, "--requests", "1500"];
    within(
        &trace,
        format,
        p95_margin,
        p99_margin,
        hit_points,
        attainment_share,
    )
}

/// [`holds_its_own_within`] on the trace `trace_args` name, called `name` in errors.
fn within(
    trace_args: &[&str],
    name: &str,
    p95_margin: f64,
    p99_margin: f64,
    hit_points: f64,
    attainment_share: f64,
) -> Result<()> {
    for load in ["0.5", "0.8"] {
        let rows = simulate(trace_args, load)?;
        let (s, p95, p99, hit, attainment) = compare(&rows)?;
        ensure!(
            s.ttft_p95 <= p95 * p95_margin,
            "{name} at {load}: p95 {} vs {p95}",
            s.ttft_p95
        );
        ensure!(
            s.ttft_p99 <= p99 * p99_margin,
            "{name} at {load}: p99 {} vs {p99}",
            s.ttft_p99
        );
        ensure!(
            s.hit >= hit - hit_points / 100.0,
            "{name} at {load}: hits {} vs {hit}",
            s.hit
        );
        ensure!(
            s.attainment >= attainment * attainment_share,
            "{name} at {load}: requests within the SLO {} vs {attainment}",
            s.attainment
        );
    }
    Ok(())
}

#[test]
fn a_shared_system_prompt_without_session_ids() -> Result<()> {
    // Conversations are told apart by content: no baseline has a better tail or finds
    // more of the cache.
    holds_its_own("shared-system", 1.0, 1.0, 2.0)
}

#[test]
fn three_applications_carry_all_the_traffic() -> Result<()> {
    // Three hot keys: their subsets widen and the choice inside them follows the
    // content, so no key queues on a few replicas. The p99 margin is today's gap, not
    // the goal (no worse than the best): round-robin's perfectly even spread wins the
    // tail while the assigner's once-a-minute rounds are still widening the subsets.
    holds_its_own("few-apps", 1.1, 1.35, 2.0)
}

#[test]
fn bursts_of_short_completions_over_one_file_context() -> Result<()> {
    // Code completion with no keys, in bursts of one editing session. The margins are
    // today's gap to dynamo-kv, not the goal: p95 / p99 ~1.0x / 1.1x at 0.5 and ~1.15x
    // at 0.8 (at 8 replicas; hits 4 points under llm-d's, which piles each session onto
    // one replica). Without the burst rule (`SpillPolicy::burst`) the gap was 1.27-1.40x;
    // a change that holds a burst on its warm replica, queues bursts behind the replica
    // computing their context again, or prices blocks being computed as missing, fails
    // here.
    holds_its_own("bursty-code", 1.25, 1.25, 5.0)
}

#[test]
fn bursts_of_short_completions_keyed_by_their_editing_session() -> Result<()> {
    // The same requests, each keyed by its session, as a trace that chains a session's
    // requests gives them: every request of a burst has one home. Today ~1.02x / 1.13x
    // dynamo-kv's at 0.5 and ~1.15x at 0.8; 1.29-1.40x before the burst rule.
    holds_its_own("bursty-sessions", 1.25, 1.25, 5.0)
}

#[test]
fn bursts_of_short_completions_known_by_their_lengths_alone() -> Result<()> {
    // bursty-code's requests as a lengths-only log (Azure's code trace) records them:
    // nothing shared, so the choice is balancing alone, through bursts that overrun the
    // fleet. Sluice's tail must stay with the best balancers' (it is within 1% of it at
    // both loads). The SLO share's margin is today's gap, not the goal: at 0.8 the
    // bursts' prefill stretches nearly every decode past the TPOT bound, and policies
    // that pile work unevenly (random, chwbl: ~3 points more, at a p95 15-30% worse)
    // leave a few replicas light enough for their requests to meet it.
    holds_its_own_within("bursty-lengths", 1.03, 1.03, 0.0, 0.94)
}

/// A RAG service's trace in the shape of Alibaba's Bailian traces, as JSON lines: three
/// applications (60/30/10% of the conversations) each with its own long prefix, and
/// conversations of a few turns that send their history again, each turn with its
/// `chat_id` and its `parent_chat_id` (−1 on the first), timestamps in seconds, one
/// block id per 16 prompt tokens, chained from the start.
fn bailian_rag(conversations: u64, seed: u64) -> String {
    use sluice_sim::trace::{servegen::Rng, splitmix64 as mix};
    let mut rng = Rng::new(seed);
    let apps: Vec<u64> = (0..3).map(|_| 2000 + rng.below(4000)).collect();
    let (mut rows, mut chat, mut start) = (Vec::new(), 0u64, 0.0f64);
    for c in 0..conversations {
        start += rng.exponential(1.0 / 1.5);
        let u = rng.uniform();
        let app = if u < 0.6 {
            0
        } else if u < 0.9 {
            1
        } else {
            2
        };
        // Each token is named by where it comes from, so equal content makes equal blocks.
        let mut tokens: Vec<u64> = (0..apps[app]).map(|i| mix(app as u64 ^ (i << 8))).collect();
        let (mut at, mut parent) = (start, -1i64);
        let turns = 1 + rng.exponential(1.5) as u64;
        for turn in 0..turns {
            let own = mix(c << 20 | turn << 4 | 1);
            let chunks = 2 + rng.below(5);
            let question = 20 + rng.below(120);
            tokens.extend((0..chunks * 500 + question).map(|i| mix(own ^ (i << 20))));
            let output = 30 + rng.below(250);
            let ids: Vec<u64> = tokens
                .chunks(16)
                .scan(0u64, |chain, block| {
                    *chain = block.iter().fold(mix(*chain), |h, &t| mix(h ^ t)) >> 1;
                    Some(*chain)
                })
                .collect();
            chat += 1;
            rows.push((
                at,
                serde_json::json!({
                    "chat_id": chat, "parent_chat_id": parent, "timestamp": at,
                    "input_length": tokens.len(), "output_length": output,
                    "type": "text", "turn": turn + 1, "hash_ids": ids,
                })
                .to_string(),
            ));
            parent = chat as i64;
            tokens.extend((0..output).map(|i| mix(own ^ 0xa ^ (i << 20))));
            at += rng.exponential(20.0);
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    rows.into_iter().map(|(_, row)| row + "\n").collect()
}

#[test]
fn a_rag_service_in_bailians_shape_with_its_conversation_ids() -> Result<()> {
    // The trace's reader takes the block size (16 tokens), the seconds and each
    // conversation's key from the rows; three applications' prefixes and every turn's
    // history make it a trace where the cache decides. Sluice keeps each conversation
    // on its replicas: no baseline has a better tail (its p95 is ~0.57x dynamo-kv's at
    // both loads) or finds more of the cache (75% of prompt tokens, sglang 68-72%).
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rag.jsonl");
    std::fs::write(&path, bailian_rag(700, 3))?;
    let path = path
        .to_str()
        .context("a temporary path that is not UTF-8")?;
    within(
        &["--trace-format", "bailian", "--trace", path],
        "bailian RAG",
        1.0,
        1.0,
        2.0,
        0.98,
    )
}
