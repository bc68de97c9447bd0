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

/// `sluice sim --policy all` on a generated structure; one row per policy.
fn simulate(format: &str, load: &str) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("out.json");
    let out = std::process::Command::new(sluice_bin()?)
        .args(["sim", "--trace-format", format, "--requests", "1500"])
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
    for load in ["0.5", "0.8"] {
        let rows = simulate(format, load)?;
        let (s, p95, p99, hit, attainment) = compare(&rows)?;
        ensure!(
            s.ttft_p95 <= p95 * p95_margin,
            "{format} at {load}: p95 {} vs {p95}",
            s.ttft_p95
        );
        ensure!(
            s.ttft_p99 <= p99 * p99_margin,
            "{format} at {load}: p99 {} vs {p99}",
            s.ttft_p99
        );
        ensure!(
            s.hit >= hit - hit_points / 100.0,
            "{format} at {load}: hits {} vs {hit}",
            s.hit
        );
        ensure!(
            s.attainment >= attainment * attainment_share,
            "{format} at {load}: requests within the SLO {} vs {attainment}",
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
    // today's gap to dynamo-kv (p95 and p99 ~1.35x, at 8 replicas; hits 4 points under
    // llm-d's, which piles each session onto one replica), not the goal: a change that
    // queues bursts behind the replica computing their context again, or prices blocks
    // being computed as missing, fails here.
    holds_its_own("bursty-code", 1.45, 1.45, 5.0)
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
