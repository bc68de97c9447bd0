//! `sluice sim`: replay a trace over a simulated fleet under each routing policy and
//! compare them.

use super::load::{minute_needs, offered_mu_per_min, scale_to_load};
use super::outcome::{PolicyReport, RequestRecord, Slo};
use super::plot;
use super::run::{simulate_scaled, FleetSpec, SimOptions, SimRun};
use super::scaling::{ScalePoint, Scaling};
use crate::trace::{self, Trace};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use sluice_actors::autoscaler::{self, AutoscalerConfig, LeaderScaler, ScaleBounds, ScaleLeader};
use sluice_actors::router::RoutingPolicy;
use sluice_actors::Profile;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// JSON lines of prompt block ids: Mooncake's FAST'25 traces, and Alibaba's Bailian
    /// traces (`bailian`), whose chat ids give each conversation's turns one key.
    #[value(alias = "bailian")]
    Mooncake,
    Azure,
    Servegen,
    Agentic,
    /// Generated: chat over one system prompt, full history resent, no workload keys.
    SharedSystem,
    /// Generated: three keyed RAG applications with their own long prefixes (60/30/10%).
    FewApps,
    /// Generated: code completion, ~2k-token prompts, ~30 output tokens, on/off
    /// arrivals (interarrival CV ~10), no workload keys.
    BurstyCode,
    /// Generated: bursty-code's arrivals and lengths with a prompt of its own for each
    /// request, as a lengths-only log (Azure's code trace) gives them: nothing shared.
    BurstyLengths,
    /// Generated: bursty-code's trace with each request keyed by its editing session.
    BurstySessions,
    /// Generated: shared-system's trace with each request keyed by its conversation.
    Sessions,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Trace file (not needed for the generated formats: agentic, shared-system,
    /// few-apps, bursty-code, bursty-lengths, bursty-sessions, sessions).
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
    /// ServeGen and the generated formats: seconds of trace to replay [default: all].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// ServeGen: divide times by this, keeping each window's rate (days in minutes).
    #[arg(long, default_value_t = 1.0)]
    pub time_compression: f64,
    /// ServeGen: multiply every window's rate by this.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// ServeGen: only these client ids (comma-separated) [default: every client].
    #[arg(long, value_delimiter = ',')]
    pub clients: Option<Vec<u32>>,
    /// Agentic: number of coding-agent sessions.
    #[arg(long, default_value_t = 500)]
    pub sessions: u32,
    /// shared-system, few-apps, bursty-code, bursty-lengths, bursty-sessions, sessions: requests
    /// to generate.
    #[arg(long, default_value_t = 5000)]
    pub requests: u32,
    /// Autoscale the fleet (`--replicas` is then the most there can be): comma-separated
    /// names of sluice, static-peak, kpa, request-rate, or `all`. Each routing policy
    /// runs under each autoscaler.
    #[arg(long)]
    pub autoscaler: Option<String>,
    /// Seconds from requesting a replica to its serving.
    #[arg(long, default_value_t = 60.0)]
    pub cold_start_s: f64,
    /// Fewest replicas an autoscaler may keep.
    #[arg(long, default_value_t = 1)]
    pub min_replicas: usize,
    /// Seconds between autoscaler decisions.
    #[arg(long, default_value_t = 2.0)]
    pub scale_tick_s: f64,
    /// Autoscaler knobs (TOML, the node's [autoscaler] section format) [default: each
    /// source's defaults].
    #[arg(long)]
    pub autoscaler_config: Option<PathBuf>,
    /// kpa: target in-flight requests per replica (container concurrency target).
    #[arg(long)]
    pub kpa_target: Option<f64>,
    /// request-rate: target requests per second per replica.
    #[arg(long)]
    pub rps_target: Option<f64>,
    /// static-peak: replicas to keep [default: the trace's busiest minute at the
    /// target utilization].
    #[arg(long)]
    pub static_replicas: Option<usize>,
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
    let generated = matches!(
        args.trace_format,
        TraceFormat::SharedSystem
            | TraceFormat::Sessions
            | TraceFormat::FewApps
            | TraceFormat::BurstyCode
            | TraceFormat::BurstyLengths
            | TraceFormat::BurstySessions
    );
    if generated && args.requests == 0 {
        bail!("--requests must be at least 1");
    }
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
                clients: args.clients.clone(),
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
        TraceFormat::SharedSystem | TraceFormat::Sessions => {
            let cfg = trace::structures::ChatConfig {
                requests: args.requests,
                duration_s: args.duration_s.map(|d| d as f64),
                ..Default::default()
            };
            if args.trace_format == TraceFormat::Sessions {
                trace::structures::sessions(&cfg, args.seed)
            } else {
                trace::structures::shared_system(&cfg, args.seed)
            }
        }
        TraceFormat::FewApps => {
            let cfg = trace::structures::FewAppsConfig {
                requests: args.requests,
                duration_s: args.duration_s.map(|d| d as f64),
                ..Default::default()
            };
            trace::structures::few_apps(&cfg, args.seed)
        }
        TraceFormat::BurstyCode | TraceFormat::BurstyLengths | TraceFormat::BurstySessions => {
            let cfg = trace::structures::BurstyCodeConfig {
                requests: args.requests,
                duration_s: args.duration_s.map(|d| d as f64),
                lengths_only: args.trace_format == TraceFormat::BurstyLengths,
                keyed: args.trace_format == TraceFormat::BurstySessions,
                ..Default::default()
            };
            trace::structures::bursty_code(&cfg, args.seed)
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
    let scalers = autoscalers(args)?;
    let needs = minute_needs(
        &trace,
        &profile.mu,
        profile.capacity_mu_per_min * AutoscalerConfig::default().target_utilization,
    );
    let fit = |n: usize| n.clamp(args.min_replicas.max(1), args.replicas.max(1));
    let peak = fit(args
        .static_replicas
        .unwrap_or_else(|| needs.iter().copied().max().unwrap_or(1)));
    let first = fit(needs.first().copied().unwrap_or(1));
    if !scalers.is_empty() {
        let total = needs.iter().sum::<usize>() as f64;
        let mean = total / needs.len().max(1) as f64;
        // A replica-minute each: the oracle's GPU-hours.
        let oracle_h = total / 60.0;
        eprintln!(
            "replicas needed per minute at {:.0}% utilization: peak {}, mean {mean:.2}, first {}, oracle {oracle_h:.2} GPU-hours; static-peak keeps {peak}",
            AutoscalerConfig::default().target_utilization * 100.0,
            needs.iter().copied().max().unwrap_or(0),
            needs.first().copied().unwrap_or(0),
        );
    }
    let mut runs = Vec::new();
    for name in &wanted {
        for scaler in scalers
            .iter()
            .map(Some)
            .chain(scalers.is_empty().then_some(None))
        {
            let Some(mut policy) = factory(name, &fleet, &profile, args.seed) else {
                bail!(
                    "unknown policy '{name}': choose from {}, or all",
                    names.join(", ")
                );
            };
            let mut scaling = match scaler {
                Some(sc) => Some(Scaling {
                    leader: {
                        let mut c = sc_config(args)?;
                        c.static_replicas = c.static_replicas.or(Some(peak));
                        let core = autoscaler::by_name(sc, &c, args.replicas)?;
                        // As the live leader runs it: its first down window only scales out.
                        let down_window_us = (c.down_window_s() * 1e6) as u64;
                        ScaleLeader::new(LeaderScaler::new(core, down_window_us))
                    },
                    bounds: ScaleBounds {
                        min: args.min_replicas.min(args.replicas),
                        max: args.replicas,
                        reserved_floor: 0,
                    },
                    coeffs: profile.mu,
                    tick_us: (args.scale_tick_s * 1e6) as u64,
                    cold_start_us: (args.cold_start_s * 1e6) as u64,
                    // Static peak starts (and stays) at the peak; the others at what the
                    // first minute needs.
                    initial: if *sc == "static-peak" { peak } else { first },
                }),
                None => None,
            };
            let started = std::time::Instant::now();
            let run = simulate_scaled(&trace, &fleet, policy.as_mut(), scaling.as_mut(), &opts);
            let wall = started.elapsed().as_secs_f64();
            eprintln!(
                "{name}: {} events in {wall:.1} s of wall time ({:.0} events/s)",
                run.events,
                run.events as f64 / wall.max(1e-9)
            );
            runs.push(run);
        }
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

/// The autoscalers `--autoscaler` names (none: a fixed fleet).
fn autoscalers(args: &SimArgs) -> Result<Vec<&'static str>> {
    let Some(list) = &args.autoscaler else {
        return Ok(Vec::new());
    };
    if !(args.cold_start_s.is_finite() && args.cold_start_s >= 0.0) {
        bail!("--cold-start-s must be a non-negative number of seconds");
    }
    if !(args.scale_tick_s.is_finite() && args.scale_tick_s > 0.0) {
        bail!("--scale-tick-s must be a positive number of seconds");
    }
    let mut out = Vec::new();
    for n in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if n == "all" {
            out.extend(autoscaler::NAMES.iter().copied());
            continue;
        }
        match autoscaler::NAMES.iter().find(|k| **k == n) {
            Some(k) => out.push(*k),
            None => bail!(
                "unknown autoscaler '{n}': choose from {}, or all",
                autoscaler::NAMES.join(", ")
            ),
        }
    }
    if out.is_empty() {
        bail!("--autoscaler names no autoscaler");
    }
    Ok(out)
}

/// Autoscaler knobs: the file's, then the flags'.
fn sc_config(args: &SimArgs) -> Result<AutoscalerConfig> {
    let mut c = match &args.autoscaler_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid {}", p.display()))?
        }
        None => AutoscalerConfig::default(),
    };
    if let Some(t) = args.kpa_target {
        c.kpa_target_concurrency = t;
    }
    if let Some(t) = args.rps_target {
        c.target_rps_per_replica = t;
    }
    c.static_replicas = args.static_replicas.or(c.static_replicas);
    // The simulated fleet's cold start is known: the autoscaler plans with it.
    c.cold_start_s = args.cold_start_s;
    c.validate()?;
    Ok(c)
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
        let scaled: Vec<(String, Vec<ScalePoint>)> = runs
            .iter()
            .filter(|r| !r.scale.is_empty())
            .map(|r| (r.report.name.clone(), r.scale.clone()))
            .collect();
        if !scaled.is_empty() {
            let profile = match &args.profile {
                Some(p) => Profile::load(p)?,
                None => Profile::default_profile(),
            };
            plot::replicas_over_time(
                &dir.join("replicas.svg"),
                &format!("Replicas over time — {what}"),
                &scaled,
                profile.capacity_mu_per_min * AutoscalerConfig::default().target_utilization,
            )?;
        }
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
        "{:<20} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>9} {:>6} {:>6} {:>8} {:>9} {:>8}\n",
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
        "gpu h",
        "completed",
        "rejected"
    );
    for p in &out.policies {
        s += &format!(
            "{:<20} {:>9.1} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>7.1} {:>9.2} {:>6.1} {:>6.2} {:>8.2} {:>9} {:>8}\n",
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
            p.gpu_seconds / 3600.0,
            p.completed,
            p.rejected,
        );
    }
    s
}
