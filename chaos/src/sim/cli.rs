//! `sluice sim`: replay a trace over a simulated fleet under each routing policy and
//! compare them.

use super::load::{offered_mu_per_min, scale_to_load};
use super::outcome::{PolicyReport, RequestRecord, Slo};
use super::plot;
use super::run::{simulate, FleetSpec, SimOptions, SimRun};
use crate::trace::{self, Trace};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use sluice_actors::router::RoutingPolicy;
use sluice_actors::Profile;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    Mooncake,
    Azure,
    Servegen,
    Agentic,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Trace file (not needed for the agentic generator).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub trace_format: TraceFormat,
    #[arg(long, default_value_t = 16)]
    pub replicas: usize,
    #[arg(long, default_value_t = 4)]
    pub racks: usize,
    /// Comma-separated policy names, or `all` (Sluice and every baseline). Also
    /// `sluice-uniform`: Sluice on a fixed uniform slice map, without assigner rounds.
    #[arg(long, default_value = "all")]
    pub policy: String,
    /// Scale arrivals so offered MU / fleet capacity equals this; as recorded if unset.
    #[arg(long)]
    pub load: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG plots into this directory.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Profile TOML [default: the embedded Llama-3.1-8B / H100 profile].
    #[arg(long)]
    pub profile: Option<PathBuf>,
    #[arg(long, default_value_t = 2000.0)]
    pub slo_ttft_ms: f64,
    #[arg(long, default_value_t = 100.0)]
    pub slo_tpot_ms: f64,
    /// Replay only the first N requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Let policies see each request's true output length as max_tokens.
    #[arg(long)]
    pub exact_max_tokens: bool,
    /// ServeGen: first second of the trace to replay (windows are 600 s).
    #[arg(long, default_value_t = 0)]
    pub start_s: u64,
    /// ServeGen and agentic: seconds of trace to replay [default: all].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// ServeGen: divide times by this, keeping each window's rate (days in minutes).
    #[arg(long, default_value_t = 1.0)]
    pub time_compression: f64,
    /// ServeGen: multiply every window's rate by this.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Agentic: number of coding-agent sessions.
    #[arg(long, default_value_t = 500)]
    pub sessions: u32,
}

/// What `--json` writes.
#[derive(Debug, Serialize)]
pub struct SimOutput {
    pub trace: String,
    pub requests: usize,
    pub replicas: usize,
    pub racks: usize,
    pub load: Option<f64>,
    pub offered_mu_per_min: f64,
    pub seed: u64,
    pub slo: Slo,
    pub policies: Vec<PolicyReport>,
}

/// Builds a policy by name for `fleet`; `None` if the name is unknown.
pub type PolicyFactory<'a> =
    &'a dyn Fn(&str, &FleetSpec, &Profile, u64) -> Option<Box<dyn RoutingPolicy>>;

pub fn load_trace(args: &SimArgs) -> Result<Trace> {
    let path = || {
        args.trace
            .as_deref()
            .context("--trace PATH is required for this --trace-format")
    };
    let mut t = match args.trace_format {
        TraceFormat::Mooncake => trace::mooncake::read_mooncake(path()?)?,
        TraceFormat::Azure => trace::azure::read_azure(path()?)?,
        TraceFormat::Servegen => {
            if !(args.time_compression.is_finite() && args.time_compression > 0.0) {
                bail!("--time-compression must be a positive number");
            }
            if !(args.rate_scale.is_finite() && args.rate_scale > 0.0) {
                bail!("--rate-scale must be a positive number");
            }
            let opts = trace::servegen::ServeGenOptions {
                start_s: args.start_s,
                duration_s: args.duration_s,
                time_compression: args.time_compression,
                rate_scale: args.rate_scale,
                seed: args.seed,
                ..Default::default()
            };
            trace::servegen::read_servegen(path()?, &opts)?
        }
        TraceFormat::Agentic => {
            if args.sessions == 0 {
                bail!("--sessions must be at least 1");
            }
            let cfg = trace::agentic::AgenticConfig {
                sessions: args.sessions,
                duration_s: args.duration_s.map(|d| d as f64),
                ..Default::default()
            };
            trace::agentic::generate(&cfg, args.seed)
        }
    };
    if let Some(n) = args.limit {
        t.requests.truncate(n);
    }
    if t.requests.is_empty() {
        bail!("the trace has no requests");
    }
    Ok(t)
}

pub fn run(
    args: &SimArgs,
    names: &[&str],
    factory: PolicyFactory<'_>,
) -> Result<(SimOutput, Vec<SimRun>)> {
    if args.replicas == 0 || args.racks == 0 {
        bail!("--replicas and --racks must be at least 1");
    }
    if let Some(l) = args.load {
        if !(l.is_finite() && l > 0.0) {
            bail!("--load must be a positive number, got {l}");
        }
    }
    let profile = match &args.profile {
        Some(p) => Profile::load(p)?,
        None => Profile::default_profile(),
    };
    let mut trace = load_trace(args)?;
    if let Some(l) = args.load {
        scale_to_load(
            &mut trace,
            &profile.mu,
            l,
            args.replicas,
            profile.capacity_mu_per_min,
        );
    }
    let fleet = FleetSpec {
        replicas: args.replicas,
        racks: args.racks,
        params: profile.engine.clone(),
        capacity_mu_per_min: profile.capacity_mu_per_min,
    };
    let wanted: Vec<String> = if args.policy == "all" {
        names.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.policy
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    if wanted.is_empty() {
        bail!("--policy names no policy");
    }
    let slo = Slo {
        ttft_ms: args.slo_ttft_ms,
        tpot_ms: args.slo_tpot_ms,
    };
    let opts = SimOptions {
        slo,
        keep_timeline: args.plot.is_some(),
        exact_max_tokens: args.exact_max_tokens,
        ..SimOptions::default()
    };
    let mut runs = Vec::new();
    for name in &wanted {
        let Some(mut policy) = factory(name, &fleet, &profile, args.seed) else {
            bail!(
                "unknown policy '{name}': choose from {}, or all",
                names.join(", ")
            );
        };
        runs.push(simulate(&trace, &fleet, policy.as_mut(), &opts));
    }
    let out = SimOutput {
        trace: trace.name.clone(),
        requests: trace.requests.len(),
        replicas: args.replicas,
        racks: args.racks,
        load: args.load,
        offered_mu_per_min: offered_mu_per_min(&trace, &profile.mu),
        seed: args.seed,
        slo,
        policies: runs.iter().map(|r| r.report.clone()).collect(),
    };
    Ok((out, runs))
}

/// Runs the command: table on stdout, JSON and plots where asked.
pub fn cli_main(args: &SimArgs, names: &[&str], factory: PolicyFactory<'_>) -> Result<()> {
    let (out, runs) = run(args, names, factory)?;
    print!("{}", table(&out));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&out)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let series: Vec<(String, Vec<RequestRecord>)> = runs
            .iter()
            .map(|r| (r.report.name.clone(), r.records.clone()))
            .collect();
        let what = format!("{} trace, {} replicas", out.trace, out.replicas);
        plot::latency_cdf(
            &dir.join("ttft_cdf.svg"),
            &format!("TTFT — {what}"),
            &series,
            |r| Some(r.ttft_ms()),
        )?;
        plot::latency_cdf(
            &dir.join("tpot_cdf.svg"),
            &format!("TPOT — {what}"),
            &series,
            RequestRecord::tpot_ms,
        )?;
        plot::latency_cdf(
            &dir.join("e2e_cdf.svg"),
            &format!("End-to-end latency — {what}"),
            &series,
            |r| Some(r.e2e_ms()),
        )?;
        for r in &runs {
            let file = dir.join(format!("load_{}.svg", r.report.name));
            plot::replica_load(
                &file,
                &format!("Per-replica load under {} — {what}", r.report.name),
                &r.timeline,
            )?;
        }
    }
    Ok(())
}

/// The human-readable comparison.
pub fn table(out: &SimOutput) -> String {
    let mut s = format!(
        "trace {} · {} requests · {} replicas over {} racks · load {} · offered {:.0} MU/min · SLO TTFT ≤ {} ms, TPOT ≤ {} ms\n",
        out.trace,
        out.requests,
        out.replicas,
        out.racks,
        out.load.map_or("as recorded".to_owned(), |l| format!("{l}")),
        out.offered_mu_per_min,
        out.slo.ttft_ms,
        out.slo.tpot_ms,
    );
    s += &format!(
        "{:<20} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>9} {:>6} {:>6} {:>9} {:>8}\n",
        "policy",
        "ttft p50",
        "ttft p95",
        "ttft p99",
        "tpot p50",
        "tpot p99",
        "e2e p99",
        "hit %",
        "goodput",
        "slo %",
        "imbal",
        "completed",
        "rejected"
    );
    for p in &out.policies {
        s += &format!(
            "{:<20} {:>9.1} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>7.1} {:>9.2} {:>6.1} {:>6.2} {:>9} {:>8}\n",
            p.name,
            p.ttft_ms.p50,
            p.ttft_ms.p95,
            p.ttft_ms.p99,
            p.tpot_ms.p50,
            p.tpot_ms.p99,
            p.e2e_ms.p99,
            p.prefix_hit_rate * 100.0,
            p.goodput_rps,
            p.slo_attainment * 100.0,
            p.imbalance,
            p.completed,
            p.rejected,
        );
    }
    s
}
