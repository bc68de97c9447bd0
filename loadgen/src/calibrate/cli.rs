//! The `sluice calibrate` command line.

use super::grid::{default_grid, GridShape};
use super::http::HttpEngine;
use super::virtual_engine::VirtualEngine;
use super::{calibrate, output, Calibration, MeasureOptions, RoundsConfig, SweepConfig, Target};
use anyhow::{bail, Context};
use sluice_actors::Profile;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Measure an OpenAI-compatible engine and fit a profile: the MU price coefficients
/// (α uncached input, α_c cached input, β output, γ input×output; one MU is one
/// millisecond of the engine's time at the reference point) from a sweep of prompt and
/// output lengths at the reference concurrency, repeated in rounds until the
/// coefficients are steady, and a replica's capacity in MU/min from a concurrency sweep
/// that searches the knee of a TPOT objective. Writes a profile TOML that keeps the base
/// profile's engine model. For a small CPU engine, see docs/CALIBRATION.md.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// Base URL of the engine, e.g. http://127.0.0.1:8000 (http only).
    #[arg(long, value_name = "URL", required_unless_present = "virtual_engine")]
    pub engine: Option<String>,
    /// Instead of an engine over HTTP, measure the base profile's simulated-engine model
    /// in virtual time (exact, takes seconds).
    #[arg(long = "virtual", conflicts_with = "engine")]
    pub virtual_engine: bool,
    /// Where to write the calibrated profile.
    #[arg(long, value_name = "PROFILE.toml")]
    pub out: PathBuf,
    /// Profile whose engine section (and δ, not measured) the output keeps [default: the
    /// embedded Llama-3.1-8B / H100 profile].
    #[arg(long, value_name = "PROFILE.toml")]
    pub base_profile: Option<PathBuf>,
    /// Model to request [default: the first one /v1/models lists; with --virtual, the
    /// base profile's].
    #[arg(long)]
    pub model: Option<String>,
    /// Hardware name written to the profile [default: the base profile's].
    #[arg(long)]
    pub hardware: Option<String>,
    /// Wall-clock seconds per engine second of the engine under test (a simulated engine
    /// run with --time-scale F): measured times are divided by it.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub engine_time_scale: f64,
    /// Concurrency of the cost sweep: the reference operating point of one MU.
    #[arg(long, value_name = "N", default_value_t = super::REFERENCE_CONCURRENCY)]
    pub concurrency: usize,
    /// Prompt lengths (tokens) of the cost sweep.
    #[arg(long, value_name = "T,T,..", value_delimiter = ',', default_values_t = [256u32, 1024, 4096])]
    pub inputs: Vec<u32>,
    /// Output lengths (tokens) of the cost sweep; each is run with each prompt length.
    #[arg(long, value_name = "T,T,..", value_delimiter = ',', default_values_t = [32u32, 128, 512])]
    pub outputs: Vec<u32>,
    /// Prompt lengths of the cached-prefix points.
    #[arg(long, value_name = "T,T,..", value_delimiter = ',', default_values_t = [1024u32, 4096])]
    pub cached_inputs: Vec<u32>,
    /// Fraction of a cached-prefix prompt shared by all its requests (0: no cached points;
    /// α_c is then not measured).
    #[arg(long, value_name = "F", default_value_t = 0.75)]
    pub cached_fraction: f64,
    /// Output length of the cached-prefix points.
    #[arg(long, value_name = "T", default_value_t = 128)]
    pub cached_output: u32,
    /// Rounds of the cost sweep before the coefficients may be declared steady.
    #[arg(long, value_name = "N", default_value_t = RoundsConfig::default().min_rounds)]
    pub min_rounds: usize,
    /// Rounds of the cost sweep at most (1: a single round, spread not assessed).
    #[arg(long, value_name = "N", default_value_t = RoundsConfig::default().max_rounds)]
    pub max_rounds: usize,
    /// A coefficient is steady when its spread over the rounds (standard error) is within
    /// this fraction of its value, or moves no measured cost by more than it.
    #[arg(long, value_name = "F", default_value_t = RoundsConfig::default().tolerance)]
    pub tolerance: f64,
    /// Prompt length of the capacity sweep.
    #[arg(long, value_name = "T", default_value_t = 2048)]
    pub capacity_input: u32,
    /// Output length of the capacity sweep.
    #[arg(long, value_name = "T", default_value_t = 256)]
    pub capacity_output: u32,
    /// First concurrency levels of the capacity sweep, rising; while the SLO holds and
    /// throughput rises, the sweep goes on past them by doubling.
    #[arg(long, value_name = "N,N,..", value_delimiter = ',', default_values_t = [16usize, 32, 64, 128, 256])]
    pub capacity_concurrency: Vec<usize>,
    /// The highest concurrency the capacity sweep tries (listed levels above it are
    /// dropped).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub capacity_max_concurrency: usize,
    /// Bisection steps narrowing the knee once a level breaks the SLO.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub knee_bisections: usize,
    /// The p90 TPOT objective (ms) the capacity must keep.
    #[arg(long, value_name = "MS", default_value_t = 100.0)]
    pub slo_tpot_ms: f64,
    /// The grid of shapes driven to their capacity at the SLO, to which the price is
    /// fitted: `name=INPUT[:CACHED]/OUTPUT`, or a mix of two shapes
    /// `name=I/O+I[:C]/O`, comma-separated [default: chat=512/256, code=2048/32,
    /// rag=16384/256, long-output=256/1024, agentic=8192:7168/128, two mixes]. `none`:
    /// no grid; the cost sweep's price and the capacity shape's knee are written.
    #[arg(long, value_name = "SHAPES", value_delimiter = ',')]
    pub grid: Option<Vec<String>>,
    /// Completions timed per point, in multiples of its concurrency (after a ramp of
    /// one request per worker).
    #[arg(long, value_name = "X", default_value_t = 1.5)]
    pub cycles: f64,
    /// Against an engine over HTTP, each point's timed completions span at least this
    /// many wall seconds.
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub min_window: f64,
    /// A point whose completion rate drifts more than this (fraction) between the two
    /// halves of its window is measured again.
    #[arg(long, value_name = "F", default_value_t = 0.15)]
    pub max_drift: f64,
    /// Measurements of an unsteady point, in all (the steadiest is kept).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub attempts: usize,
    /// About this many workers of each point stream, to measure TTFT and TPOT.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub stream_workers: usize,
    /// Per-request timeout in (wall) seconds.
    #[arg(long, value_name = "S", default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Seed of the random prompts [default: a fresh one each run, printed]. Repeating a
    /// seed against the same engine repeats its prompts, which the engine's prefix cache
    /// may still hold from the earlier run: the "uncached" points then hit it.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write every sample, the fit and the capacity levels as JSON here.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
}

impl CalibrateArgs {
    /// The sweeps these flags describe.
    pub fn sweep(&self) -> anyhow::Result<SweepConfig> {
        let s = SweepConfig {
            concurrency: self.concurrency,
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            cached_inputs: self.cached_inputs.clone(),
            cached_fraction: self.cached_fraction,
            cached_output: self.cached_output,
            rounds: RoundsConfig {
                min_rounds: self.min_rounds.min(self.max_rounds),
                max_rounds: self.max_rounds,
                tolerance: self.tolerance,
            },
            capacity_input: self.capacity_input,
            capacity_output: self.capacity_output,
            capacity_concurrency: self.capacity_concurrency.clone(),
            capacity_max_concurrency: self.capacity_max_concurrency,
            knee_bisections: self.knee_bisections,
            slo_tpot_ms: self.slo_tpot_ms,
            grid: self.grid_shapes()?,
            measure: MeasureOptions {
                cycles: self.cycles,
                stream_workers: self.stream_workers,
                min_window_s: self.min_window,
                max_drift: self.max_drift,
                attempts: self.attempts,
                ..MeasureOptions::default()
            },
        };
        s.validate().map_err(anyhow::Error::msg)?;
        Ok(s)
    }

    fn grid_shapes(&self) -> anyhow::Result<Vec<GridShape>> {
        match self.grid.as_deref() {
            None => Ok(default_grid()),
            Some([none]) if none.trim() == "none" => Ok(Vec::new()),
            Some(specs) => specs
                .iter()
                .map(|s| GridShape::parse(s).map_err(anyhow::Error::msg))
                .collect(),
        }
    }
}

/// A seed that differs from run to run (and from process to process).
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    sluice_engine::words::mix64(nanos ^ u64::from(std::process::id()).rotate_left(32))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs the calibration, prints every sample, the fit and the capacity sweep, and
/// writes the profile (and, with `--json`, the whole calibration).
pub async fn cli_main(args: CalibrateArgs) -> anyhow::Result<()> {
    let sweep = args.sweep()?;
    if !(args.request_timeout.is_finite() && args.request_timeout > 0.0) {
        bail!("--request-timeout must be a positive number of seconds");
    }
    let (base, base_name) = match &args.base_profile {
        Some(p) => (Profile::load(p)?, p.display().to_string()),
        None => (
            Profile::default_profile(),
            "the embedded default profile".to_owned(),
        ),
    };
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let mut target = if args.virtual_engine {
        let model = args.model.clone().unwrap_or_else(|| base.model.clone());
        Target::Virtual(VirtualEngine::new(base.engine.clone(), model, seed))
    } else {
        let url = args.engine.as_deref().unwrap_or_default();
        Target::Http(
            HttpEngine::connect(
                url,
                args.model.as_deref(),
                args.engine_time_scale,
                Duration::from_secs_f64(args.request_timeout),
                seed,
            )
            .await?,
        )
    };
    let cal = calibrate(&mut target, &sweep, &mut |l| say(&l)).await?;
    let hardware = args
        .hardware
        .clone()
        .unwrap_or_else(|| base.hardware.clone());
    let text =
        output::profile_toml(&cal, &base, &base_name, &hardware).map_err(anyhow::Error::msg)?;
    std::fs::write(&args.out, &text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&cal)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    for line in comparison(&cal, &base, &base_name) {
        say(&line);
    }
    say(&format!(
        "wrote {} in {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The calibrated numbers beside the base profile's.
pub fn comparison(cal: &Calibration, base: &Profile, base_name: &str) -> Vec<String> {
    let c = &cal.profile_fit().coefficients;
    let b = &base.mu;
    let rows = [
        ("uncached_input", c.uncached_input, b.uncached_input),
        ("cached_input", c.cached_input, b.cached_input),
        ("output", c.output, b.output),
        ("input_output", c.input_output, b.input_output),
        ("attention", c.attention, b.attention),
        (
            "capacity_mu_per_min",
            cal.capacity_mu_per_min,
            base.capacity_mu_per_min,
        ),
    ];
    let mut v = vec![format!("calibrated vs {base_name}:")];
    for (name, new, old) in rows {
        let ratio = if old > 0.0 {
            format!("{:>6.3}×", new / old)
        } else {
            "      -".to_owned()
        };
        v.push(format!("  {name:<20} {new:>12.6e} {old:>12.6e} {ratio}"));
    }
    v
}
