//! `sluice calibrate`: measure an OpenAI-compatible engine from outside and fit a
//! profile's MU coefficients and a replica's capacity.
//!
//! # What is measured
//!
//! One MU is one millisecond of the *engine's* time at a reference operating point (see
//! `docs/PROFILE.md`): an engine-ms, whatever the engine runs on (a GPU, or the CPU of a
//! CPU build of vLLM). Under continuous batching concurrent requests share every step,
//! so a request's cost is its *share* of the engine's time: driven by a closed loop of
//! `C` concurrent requests of one shape (input `I`, output `O`, optionally a shared
//! cached prefix), the engine is busy all the time, and at steady state one request
//! costs `1 / throughput` seconds of it. That, in milliseconds, is its price in MU at
//! concurrency `C`.
//!
//! * **Cost sweep** at the reference concurrency (64 by default, the decode batch of the
//!   default profile's reference point): a grid of prompt and output lengths with unique
//!   random prompts, plus points whose prompts share a prefix (the cached input). The
//!   coefficients α, α_c, β, γ are fitted to the per-request costs by non-negative least
//!   squares on relative errors ([`fit`]). δ (images) is not measured. The sweep runs in
//!   **rounds** ([`rounds`]) until every coefficient is steady (its spread over the
//!   rounds within a tolerance) or the most rounds allowed have run; each coefficient is
//!   reported with its spread, each shape with its measured and fitted cost.
//! * **Capacity sweep**: one request shape at rising concurrency, searching for the
//!   **knee** ([`knee`]): the highest concurrency whose p90 TPOT keeps the SLO (default
//!   100 ms), doubling past the listed levels up to a limit and bisecting once the SLO
//!   breaks. A level's sustained load in MU/min is its throughput times the fitted price
//!   of the shape; the capacity is the most any level within the SLO sustains. The sweep
//!   always says why it stopped: the knee found, or why not (the SLO held up to the
//!   limit, throughput stopped rising first, even one request breaks the SLO, an error).
//!
//! # How a point is measured ([`PointSpec`] → [`Measurement`])
//!
//! `C` workers each send requests back to back (`/v1/completions`, `max_tokens = O`,
//! `ignore_eos`). The first request of worker `k` is a *ramp* request with
//! `O·(k+1)/C` output tokens, so that the workers' cycles are spread evenly and the
//! engine runs a steady mix from the start instead of synchronized waves. Once every
//! ramp request has finished, the completions of the next `cycles·C` full-shape
//! requests are timed (over HTTP, for at least `min_window_s` of wall time too); the
//! throughput is the least-squares slope of their completion count over time, which a
//! late-observed first or last completion barely moves. If the rates of the two halves
//! of the window differ by more than `max_drift`, the point was not at a steady state
//! (a stall, a busy host) and is measured again; the steadiest attempt is kept. A few
//! workers stream (`stream: true`, usage included) to measure TTFT and TPOT; the others
//! do not, which keeps the client cheap. Each worker builds its next body while its
//! request is in flight. Token counts come from each response's `usage`
//! (`prompt_tokens_details.cached_tokens` for cached input, when the engine reports it).
//!
//! Prompts are random common words ([`prompt`]): unique per request, so the prefix
//! cache never hits by accident, or a per-point shared prefix for the cached points
//! (computed once by a warm-up request before the loop starts). How many tokens the
//! engine's tokenizer makes of a word is measured by two probe requests at connection.
//! When the engine's `/v1/models` gives its `max_model_len`, a sweep asking for longer
//! requests is refused before anything is measured.
//!
//! Against a sped-up simulated engine (`sluice replica sim --time-scale F`), times are
//! divided by `F` (`--engine-time-scale`). The engine then has to keep up with `1/F`
//! times the real request rate; on a host without CPU to spare (or with a debug build),
//! keep `F` at 0.1–0.2 rather than 0.05: a late engine stretches every measured cost.
//!
//! The same procedure runs against the pure engine model in virtual time
//! ([`virtual_engine`], `--virtual`), with no client delay and exact step times: the
//! simulated engine's true costs, which the HTTP measurement is tested against. It is
//! exact, so its cost sweep runs one round.

pub mod cli;
pub mod fit;
pub mod grid;
pub mod http;
pub mod knee;
pub mod output;
pub mod prompt;
pub mod rounds;
pub mod virtual_engine;

#[cfg(test)]
mod tests;

pub use cli::{cli_main, CalibrateArgs};
pub use fit::{Fit, Observation};
pub use grid::{GridFit, GridPoint, GridShape};
pub use knee::CapacityStop;
pub use rounds::{RoundsConfig, ShapeFit, Steadiness, Verdict};

use serde::Serialize;
use sluice_actors::mu::{attention_pairs, kv_token_steps, MuCoefficients};

/// The concurrency of the reference operating point: the default profile's MU is a
/// millisecond of the engine's time (an H100 there) at decode batch 64.
pub const REFERENCE_CONCURRENCY: usize = 64;

/// A request shape: prompt tokens, the leading ones shared (cached after the first
/// request), and output tokens (`max_tokens` with `ignore_eos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shape {
    pub input: u32,
    pub cached: u32,
    pub output: u32,
}

impl Shape {
    pub fn new(input: u32, cached: u32, output: u32) -> Self {
        Self {
            input,
            cached: cached.min(input.saturating_sub(1)),
            output,
        }
    }
}

/// One sweep point: a closed loop of `concurrency` requests of one shape, or of two
/// shapes alternating between the workers (a mix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PointSpec {
    /// Prompt tokens.
    pub input: u32,
    /// Of those, the leading tokens every request of the point shares (cached after the
    /// first request).
    pub cached: u32,
    /// Output tokens (`max_tokens` with `ignore_eos`).
    pub output: u32,
    pub concurrency: usize,
    /// The shape of every odd-numbered worker's requests, when the point is a mix (its
    /// shared prefix is its own).
    pub alternate: Option<Shape>,
}

impl PointSpec {
    pub fn new(input: u32, cached: u32, output: u32, concurrency: usize) -> Self {
        let s = Shape::new(input, cached, output);
        Self {
            input: s.input,
            cached: s.cached,
            output: s.output,
            concurrency,
            alternate: None,
        }
    }

    /// Half the workers (the odd-numbered ones) send `other` instead.
    pub fn mixed_with(mut self, other: Shape) -> Self {
        self.alternate = Some(other);
        self
    }

    /// The same point at concurrency `c`.
    pub fn at(mut self, c: usize) -> Self {
        self.concurrency = c;
        self
    }

    /// The shape of worker `k`'s requests.
    pub fn shape_of(&self, k: usize) -> Shape {
        match self.alternate {
            Some(other) if k % 2 == 1 => other,
            _ => Shape {
                input: self.input,
                cached: self.cached,
                output: self.output,
            },
        }
    }

    /// The distinct shapes of the point: one, or two for a mix.
    pub fn shapes(&self) -> Vec<Shape> {
        let mut v = vec![self.shape_of(0)];
        v.extend(self.alternate);
        v
    }

    /// Output tokens of worker `k`'s ramp request.
    pub fn ramp_output(&self, k: usize) -> u32 {
        let c = self.concurrency.max(1) as f64;
        let output = self.shape_of(k).output;
        ((f64::from(output) * (k as f64 + 1.0) / c).round() as u32).clamp(1, output)
    }
}

/// How long each point is measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeasureOptions {
    /// Full-shape completions timed per point, in multiples of the concurrency.
    pub cycles: f64,
    /// At least this many completions are timed.
    pub min_requests: usize,
    /// About this many workers stream (to measure TTFT and TPOT); the rest do not.
    pub stream_workers: usize,
    /// Over HTTP, the timed completions also span at least this many wall seconds (so
    /// that short requests against a sped-up engine are not timed over a few ms).
    pub min_window_s: f64,
    /// Over HTTP, a point whose completion rate drifted by more than this between the
    /// halves of its window (see [`Measurement::drift`]) was not at a steady state (a
    /// busy host, a stall): it is measured again, up to `attempts` times in all, and the
    /// steadiest measurement is kept.
    pub max_drift: f64,
    pub attempts: usize,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        Self {
            cycles: 1.5,
            min_requests: 24,
            stream_workers: 16,
            min_window_s: 1.0,
            max_drift: 0.15,
            attempts: 3,
        }
    }
}

impl MeasureOptions {
    /// Completions timed at concurrency `c`.
    pub fn target_requests(&self, c: usize) -> usize {
        let n = (self.cycles.max(0.0) * c as f64).ceil();
        (n as usize).max(self.min_requests).max(2)
    }

    /// Whether worker `k` of `c` streams.
    pub fn streams(&self, k: usize, c: usize) -> bool {
        if self.stream_workers == 0 {
            return false;
        }
        let stride = c.div_ceil(self.stream_workers).max(1);
        k.is_multiple_of(stride)
    }
}

/// What one point measured. Times are in engine milliseconds (wall time divided by the
/// engine's time scale).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub spec: PointSpec,
    /// Full-shape requests timed.
    pub requests: usize,
    /// Mean prompt tokens of those requests.
    pub prompt_tokens: f64,
    /// Mean cached prompt tokens (as reported; else the intended shared prefix).
    pub cached_tokens: f64,
    /// Whether the engine reported cached tokens.
    pub cached_reported: bool,
    /// Mean output tokens.
    pub completion_tokens: f64,
    /// Mean context tokens read over the decode, and prefill attention pairs (see
    /// [`Observation`]).
    pub input_output: f64,
    pub attention_pairs: f64,
    /// From the first to the last timed completion.
    pub window_ms: f64,
    /// Completed requests per second.
    pub throughput_rps: f64,
    /// Engine time per request = 1 / throughput, in engine-ms: the request's cost in MU.
    pub engine_ms_per_request: f64,
    /// Mean time to first token of the streamed requests.
    pub ttft_ms: Option<f64>,
    /// Mean and 90th percentile time per output token after the first, of the streamed
    /// requests.
    pub tpot_ms: Option<f64>,
    pub tpot_p90_ms: Option<f64>,
    /// Streamed requests among the timed ones.
    pub streamed: usize,
    /// (Rate of the second half of the timed completions − rate of the first half) /
    /// the rate of all: how far from steady the point was.
    pub drift: f64,
    /// Requests the client kept in flight on average, by Little's law (throughput ×
    /// mean latency of the timed requests; approximate, as those of a queueing point
    /// may still carry queueing from the ramp). Clearly below the concurrency when the
    /// client is slow to send the next request: the engine then ran a smaller batch.
    pub effective_concurrency: f64,
    /// Requests the engine was decoding at once on average, by Little's law over the
    /// streamed requests (throughput × mean time from first to last token). Well below
    /// the concurrency when the engine runs fewer sequences at once than it is sent and
    /// queues the rest (their wait shows in the TTFT).
    pub decode_concurrency: Option<f64>,
}

impl Measurement {
    /// The sample this measurement contributes to the fit.
    pub fn observation(&self) -> Observation {
        let cached = self.cached_tokens.min(self.prompt_tokens);
        Observation {
            uncached_input: self.prompt_tokens - cached,
            cached_input: cached,
            output: self.completion_tokens,
            input_output: self.input_output,
            attention: self.attention_pairs,
            cost_ms: self.engine_ms_per_request,
        }
    }
}

/// One timed request, as a runner reports it to [`summarize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Done {
    /// Completion time, engine ms from any fixed origin.
    pub end_ms: f64,
    /// Engine ms from sending to the last token.
    pub e2e_ms: f64,
    /// Engine ms from sending to the first token (streamed requests only).
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: Option<u32>,
    /// The shared prefix the request's shape intended: its cached tokens when the
    /// engine does not report them.
    pub intended_cached: u32,
}

impl Done {
    /// Cached prompt tokens: as reported, else as intended.
    fn cached(&self) -> u32 {
        self.cached_tokens
            .unwrap_or(self.intended_cached)
            .min(self.prompt_tokens)
    }
}

/// Turns the timed completions of a point into its measurement.
pub(crate) fn summarize(spec: PointSpec, done: &[Done]) -> Result<Measurement, String> {
    if done.len() < 2 {
        return Err(format!(
            "only {} request(s) completed at {spec:?}: need two",
            done.len()
        ));
    }
    let first = done.iter().map(|d| d.end_ms).fold(f64::INFINITY, f64::min);
    let last = done
        .iter()
        .map(|d| d.end_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    let window_ms = last - first;
    let throughput_per_ms = completion_rate(done).ok_or_else(|| {
        format!(
            "the {} timed requests of {spec:?} did not complete over a measurable interval",
            done.len()
        )
    })?;
    let n = done.len() as f64;
    let mean = |f: &dyn Fn(&Done) -> f64| done.iter().map(f).sum::<f64>() / n;
    let cached_reported = done.iter().any(|d| d.cached_tokens.is_some());
    let cached_tokens = mean(&|d| f64::from(d.cached()));
    let input_output =
        mean(&|d| kv_token_steps(f64::from(d.prompt_tokens), f64::from(d.completion_tokens)));
    let attention_pairs = mean(&|d| {
        let c = d.cached();
        attention_pairs(f64::from(d.prompt_tokens - c), f64::from(c))
    });
    let mut tpots: Vec<f64> = done
        .iter()
        .filter_map(|d| {
            let ttft = d.ttft_ms?;
            (d.completion_tokens > 1)
                .then(|| (d.e2e_ms - ttft).max(0.0) / f64::from(d.completion_tokens - 1))
        })
        .collect();
    tpots.sort_by(f64::total_cmp);
    let ttfts: Vec<f64> = done.iter().filter_map(|d| d.ttft_ms).collect();
    let streamed = ttfts.len();
    let mean_e2e_ms = mean(&|d| d.e2e_ms);
    let decode_ms: Vec<f64> = done
        .iter()
        .filter_map(|d| d.ttft_ms.map(|t| (d.e2e_ms - t).max(0.0)))
        .collect();
    let decode_concurrency = (!decode_ms.is_empty())
        .then(|| throughput_per_ms * decode_ms.iter().sum::<f64>() / decode_ms.len() as f64);
    Ok(Measurement {
        spec,
        requests: done.len(),
        prompt_tokens: mean(&|d| f64::from(d.prompt_tokens)),
        cached_tokens,
        cached_reported,
        completion_tokens: mean(&|d| f64::from(d.completion_tokens)),
        input_output,
        attention_pairs,
        window_ms,
        throughput_rps: throughput_per_ms * 1000.0,
        engine_ms_per_request: 1.0 / throughput_per_ms,
        ttft_ms: (!ttfts.is_empty()).then(|| ttfts.iter().sum::<f64>() / streamed as f64),
        tpot_ms: (!tpots.is_empty()).then(|| tpots.iter().sum::<f64>() / tpots.len() as f64),
        tpot_p90_ms: percentile(&tpots, 0.9),
        streamed,
        drift: half_drift(done, throughput_per_ms),
        effective_concurrency: throughput_per_ms * mean_e2e_ms,
        decode_concurrency,
    })
}

/// Completions per ms: the least-squares slope of the completion count against time.
/// Unlike `(n − 1) / (t_n − t_1)` it does not hinge on the first and last completion,
/// which a busy client may observe a little late.
fn completion_rate(done: &[Done]) -> Option<f64> {
    rate_of(&sorted_ends(done))
}

fn sorted_ends(done: &[Done]) -> Vec<f64> {
    let mut t: Vec<f64> = done.iter().map(|d| d.end_ms).collect();
    t.sort_by(f64::total_cmp);
    t
}

/// The least-squares slope of the count of sorted times `t` against time.
fn rate_of(t: &[f64]) -> Option<f64> {
    let n = t.len() as f64;
    if t.len() < 2 {
        return None;
    }
    let mean_t = t.iter().sum::<f64>() / n;
    let mean_k = (n - 1.0) / 2.0;
    let (mut cov, mut var) = (0.0, 0.0);
    for (k, &x) in t.iter().enumerate() {
        cov += (x - mean_t) * (k as f64 - mean_k);
        var += (x - mean_t).powi(2);
    }
    let rate = cov / var;
    (var > 0.0 && rate.is_finite() && rate > 0.0).then_some(rate)
}

/// How much the completion rate of the second half of the timed completions differs
/// from that of the first half, relative to the whole: near 0 at a steady state.
fn half_drift(done: &[Done], whole: f64) -> f64 {
    let t = sorted_ends(done);
    let mid = t.len() / 2;
    match (rate_of(&t[..mid]), rate_of(&t[mid..])) {
        (Some(a), Some(b)) => (b - a) / whole,
        _ => 0.0,
    }
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The engine being calibrated: a real one over HTTP, or the engine model in virtual
/// time.
pub enum Target {
    Http(http::HttpEngine),
    Virtual(virtual_engine::VirtualEngine),
}

impl Target {
    /// One line saying what is calibrated.
    pub fn describe(&self) -> String {
        match self {
            Target::Http(e) => e.describe(),
            Target::Virtual(e) => e.describe(),
        }
    }

    /// The served model's name.
    pub fn model(&self) -> &str {
        match self {
            Target::Http(e) => e.model(),
            Target::Virtual(e) => e.model(),
        }
    }

    /// The longest request (prompt plus output tokens) the engine accepts, if known.
    pub fn max_model_len(&self) -> Option<u32> {
        match self {
            Target::Http(e) => e.max_model_len(),
            Target::Virtual(e) => Some(e.params().max_model_len),
        }
    }

    /// Whether a point measures the same every time (the noiseless engine model): one
    /// measurement, and one round of the cost sweep, is then exact.
    pub fn exact(&self) -> bool {
        match self {
            Target::Http(_) => false,
            Target::Virtual(e) => e.exact(),
        }
    }

    pub async fn measure(
        &mut self,
        spec: &PointSpec,
        opts: &MeasureOptions,
    ) -> anyhow::Result<Measurement> {
        match self {
            Target::Http(e) => e.measure(spec, opts).await,
            Target::Virtual(e) => e.measure(spec, opts).map_err(anyhow::Error::msg),
        }
    }
}

/// The sweeps to run. [`SweepConfig::default`] is the default of `sluice calibrate`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepConfig {
    /// Concurrency of the cost sweep (the reference operating point).
    pub concurrency: usize,
    /// Prompt lengths of the cost sweep (unique prompts).
    pub inputs: Vec<u32>,
    /// Output lengths of the cost sweep; every input is run with every output.
    pub outputs: Vec<u32>,
    /// Prompt lengths of the cached-prefix points.
    pub cached_inputs: Vec<u32>,
    /// Fraction of those prompts that is a shared prefix (0 skips the cached points).
    pub cached_fraction: f64,
    /// Output length of the cached-prefix points.
    pub cached_output: u32,
    /// How many rounds of the cost sweep, and when the coefficients are steady.
    pub rounds: RoundsConfig,
    /// Request shape of the capacity sweep.
    pub capacity_input: u32,
    pub capacity_output: u32,
    /// The first concurrency levels of the capacity sweep, rising; the sweep goes on
    /// past them by doubling while the SLO holds.
    pub capacity_concurrency: Vec<usize>,
    /// The highest concurrency the capacity sweep tries (listed levels above it are
    /// dropped).
    pub capacity_max_concurrency: usize,
    /// Bisection steps that narrow the knee once a level broke the SLO.
    pub knee_bisections: usize,
    /// The TPOT objective (p90, ms) the capacity must keep.
    pub slo_tpot_ms: f64,
    /// The shapes driven to their capacity at the SLO, to which the profile's price is
    /// fitted ([`grid`]). Empty: the price of the cost sweep and the capacity of the one
    /// capacity shape are written instead.
    pub grid: Vec<GridShape>,
    pub measure: MeasureOptions,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            concurrency: REFERENCE_CONCURRENCY,
            inputs: vec![256, 1024, 4096],
            outputs: vec![32, 128, 512],
            cached_inputs: vec![1024, 4096],
            cached_fraction: 0.75,
            cached_output: 128,
            rounds: RoundsConfig::default(),
            capacity_input: 2048,
            capacity_output: 256,
            capacity_concurrency: vec![16, 32, 64, 128, 256],
            capacity_max_concurrency: 1024,
            knee_bisections: 2,
            slo_tpot_ms: 100.0,
            grid: grid::default_grid(),
            measure: MeasureOptions::default(),
        }
    }
}

impl SweepConfig {
    /// Checks that the sweep makes sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("the cost sweep's concurrency must be at least 1".into());
        }
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err("the cost sweep needs at least one input and one output length".into());
        }
        let all = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .chain(&self.cached_inputs)
            .chain([
                &self.cached_output,
                &self.capacity_input,
                &self.capacity_output,
            ]);
        if all.into_iter().any(|&t| t == 0) {
            return Err("token counts must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.cached_fraction) {
            return Err(format!(
                "the cached fraction must be in [0, 1), got {}",
                self.cached_fraction
            ));
        }
        self.rounds.validate()?;
        if self.capacity_concurrency.is_empty()
            || self.capacity_concurrency.contains(&0)
            || self.capacity_concurrency.windows(2).any(|w| w[1] <= w[0])
        {
            return Err("the capacity sweep needs rising concurrency levels of at least 1".into());
        }
        if self.capacity_max_concurrency == 0 {
            return Err("the capacity sweep's maximum concurrency must be at least 1".into());
        }
        if !(self.slo_tpot_ms.is_finite() && self.slo_tpot_ms > 0.0) {
            return Err(format!(
                "the TPOT SLO must be a positive number of ms, got {}",
                self.slo_tpot_ms
            ));
        }
        let m = &self.measure;
        if !(m.cycles.is_finite() && m.cycles > 0.0 && m.cycles <= 100.0) {
            return Err(format!("cycles must be in (0, 100], got {}", m.cycles));
        }
        if !(m.min_window_s.is_finite() && (0.0..=3600.0).contains(&m.min_window_s)) {
            return Err(format!(
                "the minimum window must be in [0, 3600] s, got {}",
                m.min_window_s
            ));
        }
        if !(m.max_drift.is_finite() && m.max_drift > 0.0) || m.attempts == 0 {
            return Err("the drift bound must be positive and attempts at least 1".into());
        }
        if m.stream_workers == 0 {
            return Err("at least one worker must stream (TPOT is measured on streams)".into());
        }
        for (i, g) in self.grid.iter().enumerate() {
            if self.grid[..i].iter().any(|h| h.name == g.name) {
                return Err(format!("the grid names the shape {:?} twice", g.name));
            }
        }
        Ok(())
    }

    /// Checks that every request of the sweep fits an engine that accepts at most
    /// `max_model_len` tokens (prompt plus output) per request.
    pub fn check_lengths(&self, max_model_len: u32) -> Result<(), String> {
        let mut shapes: Vec<(u32, u32, &str)> = Vec::new();
        for p in self.cost_points() {
            let flags = if p.cached > 0 {
                "--cached-inputs/--cached-output"
            } else {
                "--inputs/--outputs"
            };
            shapes.push((p.input, p.output, flags));
        }
        if self.grid.is_empty() {
            shapes.push((
                self.capacity_input,
                self.capacity_output,
                "--capacity-input/--capacity-output",
            ));
        }
        for g in &self.grid {
            for s in g.point.shapes() {
                shapes.push((s.input, s.output, "--grid"));
            }
        }
        let too_long: Vec<String> = shapes
            .iter()
            .filter(|(i, o, _)| u64::from(*i) + u64::from(*o) > u64::from(max_model_len))
            .map(|(i, o, f)| format!("{i} + {o} ({f})"))
            .collect();
        if too_long.is_empty() {
            return Ok(());
        }
        Err(format!(
            "the engine accepts at most {max_model_len} tokens per request (prompt + output, its \
             max_model_len), but the sweep asks for {}: choose shorter lengths (docs/CALIBRATION.md \
             has a grid for small engines)",
            too_long.join(", ")
        ))
    }

    /// The points of the cost sweep: every (input, output), then the cached-prefix ones.
    pub fn cost_points(&self) -> Vec<PointSpec> {
        let c = self.concurrency;
        let mut v = Vec::new();
        for &i in &self.inputs {
            for &o in &self.outputs {
                v.push(PointSpec::new(i, 0, o, c));
            }
        }
        if self.cached_fraction > 0.0 {
            for &i in &self.cached_inputs {
                let cached = (f64::from(i) * self.cached_fraction).round() as u32;
                if cached > 0 {
                    v.push(PointSpec::new(i, cached, self.cached_output, c));
                }
            }
        }
        v
    }

    /// The listed levels a capacity search measures first (those above the most
    /// allowed are dropped).
    pub fn listed_levels(&self) -> Vec<usize> {
        knee::KneeSearch::new(
            &self.capacity_concurrency,
            self.capacity_max_concurrency,
            self.knee_bisections,
        )
        .0
        .listed()
        .to_vec()
    }

    /// The capacity sweep's point at concurrency `c`.
    pub fn capacity_point(&self, c: usize) -> PointSpec {
        PointSpec::new(self.capacity_input, 0, self.capacity_output, c)
    }
}

/// One level of the capacity sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityLevel {
    pub measurement: Measurement,
    /// MU per request at this shape, by the fitted coefficients.
    pub mu_per_request: f64,
    /// Sustained MU per minute: throughput × MU per request.
    pub mu_per_min: f64,
    /// Whether the p90 TPOT is within the SLO.
    pub within_slo: bool,
}

/// The result of a whole calibration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub target: String,
    pub model: String,
    pub sweep: SweepConfig,
    /// Every round of the cost sweep: one measurement per point, in the order of
    /// [`SweepConfig::cost_points`].
    pub rounds: Vec<Vec<Measurement>>,
    /// Each point over all rounds: its mean measured cost, fitted cost and error.
    pub shapes: Vec<ShapeFit>,
    /// The fit to the shapes' mean costs.
    pub fit: Fit,
    /// How the coefficients varied over the rounds.
    pub steadiness: Steadiness,
    /// The capacity levels in the order they were measured.
    pub levels: Vec<CapacityLevel>,
    /// Index in `levels` of the level the capacity comes from.
    pub capacity_level: Option<usize>,
    /// Why the capacity sweep stopped; `None` when the grid ran instead.
    pub capacity_stop: Option<CapacityStop>,
    /// The grid at the SLO and the price fitted over it, when the sweep has a grid (the
    /// capacity sweep above is then not run).
    pub grid: Option<GridFit>,
    /// The capacity written to the profile, MU per minute.
    pub capacity_mu_per_min: f64,
}

impl Calibration {
    /// The price written to the profile: fitted over the grid at the SLO when there is
    /// one, else the cost sweep's.
    pub fn profile_fit(&self) -> &Fit {
        self.grid.as_ref().map_or(&self.fit, |g| &g.fit)
    }

    /// The measured level at concurrency `c`, if any.
    pub fn level_at(&self, c: usize) -> Option<&CapacityLevel> {
        self.levels
            .iter()
            .find(|l| l.measurement.spec.concurrency == c)
    }
}

/// Measures a point, again (up to `opts.attempts` times) while its rate drifted more
/// than `opts.max_drift` over its window, and keeps the steadiest measurement. An exact
/// target is measured once.
async fn measure_steady(
    target: &mut Target,
    p: &PointSpec,
    opts: &MeasureOptions,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<Measurement> {
    let mut best = target.measure(p, opts).await?;
    if target.exact() {
        return Ok(best);
    }
    for attempt in 2..=opts.attempts {
        if best.drift.abs() <= opts.max_drift {
            break;
        }
        log(format!(
            "         not steady ({:.2} engine-ms/req, rate drift {:+.1}% over the window): measuring again ({attempt}/{})",
            best.engine_ms_per_request,
            best.drift * 100.0,
            opts.attempts
        ));
        let m = target.measure(p, opts).await?;
        if m.drift.abs() < best.drift.abs() {
            best = m;
        }
    }
    Ok(best)
}

/// The fit of the rounds so far: each shape over the rounds, the fit to their means,
/// and the coefficients' spread.
pub fn fit_rounds(
    rounds: &[Vec<Measurement>],
    tolerance: f64,
    exact: bool,
) -> Result<(Vec<ShapeFit>, Fit, Steadiness), String> {
    let mut shapes = rounds::pool(rounds);
    let means: Vec<Observation> = shapes.iter().map(|s| s.observation).collect();
    let fit = fit::fit(&means)?;
    rounds::attach_fit(&mut shapes, &fit);
    let per_round: Vec<Vec<Observation>> = rounds
        .iter()
        .map(|r| r.iter().map(Measurement::observation).collect())
        .collect();
    let steadiness = rounds::assess(&per_round, &shapes, &fit, tolerance, exact)?;
    Ok((shapes, fit, steadiness))
}

/// Runs the cost sweep in rounds until the coefficients are steady, fits them, then
/// searches the capacity knee. Each measured point, the fit and each capacity level are
/// reported through `log` as they come.
pub async fn calibrate(
    target: &mut Target,
    sweep: &SweepConfig,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<Calibration> {
    sweep.validate().map_err(anyhow::Error::msg)?;
    if let Some(len) = target.max_model_len() {
        sweep.check_lengths(len).map_err(anyhow::Error::msg)?;
    }
    let exact = target.exact();
    let points = sweep.cost_points();
    let rc = sweep.rounds;
    let max_rounds = if exact { 1 } else { rc.max_rounds };
    log(format!(
        "cost sweep: {} points at concurrency {} ({})",
        points.len(),
        sweep.concurrency,
        target.describe()
    ));
    if exact {
        log("  the engine model in virtual time is exact: one round".to_owned());
    } else if max_rounds > 1 {
        log(format!(
            "  in rounds until every coefficient's spread is within {:.1}% (at least {}, at most {} rounds)",
            rc.tolerance * 100.0,
            rc.min_rounds,
            max_rounds
        ));
    }
    let mut all_rounds: Vec<Vec<Measurement>> = Vec::new();
    let (shapes, fit, steadiness) = loop {
        let r = all_rounds.len() + 1;
        let mut round = Vec::with_capacity(points.len());
        for (i, p) in points.iter().enumerate() {
            let m = measure_steady(target, p, &sweep.measure, log).await?;
            let tag = if max_rounds > 1 {
                format!("{r}:{:>2}/{}", i + 1, points.len())
            } else {
                format!("{:>2}/{}", i + 1, points.len())
            };
            log(format!("  [{tag}] {}", output::sample_line(&m)));
            round.push(m);
        }
        all_rounds.push(round);
        let (shapes, fit, st) =
            fit_rounds(&all_rounds, rc.tolerance, exact).map_err(anyhow::Error::msg)?;
        if r >= 2 {
            log(output::round_line(&st));
        }
        if exact || r >= max_rounds || (r >= rc.min_rounds && st.all_steady()) {
            break (shapes, fit, st);
        }
    };
    for line in output::fit_report(&shapes, &fit, &steadiness) {
        log(line);
    }

    let (levels, capacity_level, stop, grid, capacity_mu_per_min) = if sweep.grid.is_empty() {
        log(format!(
            "capacity sweep: prompt {} tokens, output {} tokens, concurrency {:?} then doubling up to {}, \
             SLO p90 TPOT <= {} ms",
            sweep.capacity_input,
            sweep.capacity_output,
            sweep.listed_levels(),
            sweep.capacity_max_concurrency,
            sweep.slo_tpot_ms
        ));
        let point = sweep.capacity_point(1);
        let (levels, stop) = capacity_search(target, point, sweep, &fit, log).await;
        let capacity_level = best_level(&levels);
        let capacity_mu_per_min = match capacity_level {
            Some(i) => levels[i].mu_per_min,
            None => lowest_level(&levels).map_or(0.0, |i| levels[i].mu_per_min),
        };
        if !(capacity_mu_per_min.is_finite() && capacity_mu_per_min > 0.0) {
            anyhow::bail!(
                "the capacity sweep measured no positive load ({capacity_mu_per_min} MU/min){}",
                stop_error(&stop)
            );
        }
        (
            levels,
            capacity_level,
            Some(stop),
            None,
            capacity_mu_per_min,
        )
    } else {
        let g = grid_sweep(target, sweep, &fit, log).await?;
        let capacity = g.capacity_mu_per_min;
        (Vec::new(), None, None, Some(g), capacity)
    };
    let cal = Calibration {
        target: target.describe(),
        model: target.model().to_owned(),
        sweep: sweep.clone(),
        rounds: all_rounds,
        shapes,
        fit,
        steadiness,
        levels,
        capacity_level,
        capacity_stop: stop,
        grid,
        capacity_mu_per_min,
    };
    for line in output::capacity_report(&cal) {
        log(line);
    }
    Ok(cal)
}

/// The fastest level within the SLO (most MU/min), if any.
fn best_level(levels: &[CapacityLevel]) -> Option<usize> {
    levels
        .iter()
        .enumerate()
        .filter(|(_, l)| l.within_slo)
        .max_by(|a, b| a.1.mu_per_min.total_cmp(&b.1.mu_per_min))
        .map(|(i, _)| i)
}

/// The level of least concurrency measured.
fn lowest_level(levels: &[CapacityLevel]) -> Option<usize> {
    levels
        .iter()
        .enumerate()
        .min_by_key(|(_, l)| l.measurement.spec.concurrency)
        .map(|(i, _)| i)
}

/// ": concurrency C failed: why" when the search ended on an error.
fn stop_error(stop: &CapacityStop) -> String {
    match stop {
        CapacityStop::Error {
            concurrency,
            message,
        } => format!(": concurrency {concurrency} failed: {message}"),
        _ => String::new(),
    }
}

/// Searches the capacity knee of `point`'s shape (its concurrency is the search's): the
/// levels measured, each priced by `fit`, and why the search stopped.
async fn capacity_search(
    target: &mut Target,
    point: PointSpec,
    sweep: &SweepConfig,
    fit: &Fit,
    log: &mut dyn FnMut(String),
) -> (Vec<CapacityLevel>, CapacityStop) {
    let exact = target.exact();
    let (mut search, mut c) = knee::KneeSearch::new(
        &sweep.capacity_concurrency,
        sweep.capacity_max_concurrency,
        sweep.knee_bisections,
    );
    let mut levels: Vec<CapacityLevel> = Vec::new();
    let to_level = |m: Measurement| {
        let mu_per_request = fit.predict(&m.observation());
        CapacityLevel {
            mu_per_request,
            mu_per_min: m.throughput_rps * 60.0 * mu_per_request,
            within_slo: m.tpot_p90_ms.is_none_or(|t| t <= sweep.slo_tpot_ms),
            measurement: m,
        }
    };
    let stop = loop {
        let p = point.at(c);
        let outcome = match measure_steady(target, &p, &sweep.measure, log).await {
            Ok(m) => {
                let mut level = to_level(m);
                log(format!("  {}", output::level_line(&level)));
                // A level that would end or turn the search (over the SLO, or no faster
                // than a lower one) is measured once more on a noisy target, and the
                // faster measurement kept: a burst of other work on the host only ever
                // makes a level look slower.
                let best_lower = levels
                    .iter()
                    .filter(|l| l.measurement.spec.concurrency < c)
                    .map(|l| l.measurement.throughput_rps)
                    .fold(0.0f64, f64::max);
                let decisive = !level.within_slo
                    || level.measurement.throughput_rps < best_lower * knee::SATURATION_GAIN;
                if decisive && !exact {
                    log(format!("  C={c:<4} measuring again to confirm"));
                    match measure_steady(target, &p, &sweep.measure, log).await {
                        Ok(m) => {
                            let again = to_level(m);
                            log(format!("  {}", output::level_line(&again)));
                            if again.measurement.throughput_rps > level.measurement.throughput_rps {
                                level = again;
                            }
                        }
                        Err(e) => log(format!("  C={c:<4} the confirmation failed: {e:#}")),
                    }
                }
                let o = knee::LevelOutcome {
                    throughput_rps: level.measurement.throughput_rps,
                    within_slo: level.within_slo,
                };
                levels.push(level);
                Ok(o)
            }
            Err(e) => {
                log(format!("  C={c:<4} failed: {e:#}"));
                Err(format!("{e:#}"))
            }
        };
        match search.record(outcome) {
            knee::Step::Measure(next) => c = next,
            knee::Step::Stop(stop) => break stop,
        }
    };
    (levels, stop)
}

/// Drives every shape of the grid to its capacity at the SLO and fits the price to
/// their costs there.
async fn grid_sweep(
    target: &mut Target,
    sweep: &SweepConfig,
    fit: &Fit,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<GridFit> {
    log(format!(
        "grid at the SLO: {} shapes, each at concurrency {:?} then doubling up to {}, SLO p90 TPOT <= {} ms",
        sweep.grid.len(),
        sweep.listed_levels(),
        sweep.capacity_max_concurrency,
        sweep.slo_tpot_ms
    ));
    let mut points = Vec::with_capacity(sweep.grid.len());
    for (i, shape) in sweep.grid.iter().enumerate() {
        log(format!(
            "  [{}/{}] {}",
            i + 1,
            sweep.grid.len(),
            shape.describe()
        ));
        let (levels, stop) = capacity_search(target, shape.point, sweep, fit, log).await;
        let within = best_level(&levels);
        let Some(best) = within.or_else(|| lowest_level(&levels)) else {
            anyhow::bail!(
                "grid shape {} measured no level{}",
                shape.name,
                stop_error(&stop)
            );
        };
        let level = &levels[best];
        let throughput_rps = level.measurement.throughput_rps;
        if !(throughput_rps.is_finite() && throughput_rps > 0.0) {
            anyhow::bail!("grid shape {} completed no requests", shape.name);
        }
        log(format!(
            "  {}: {}",
            shape.name,
            output::knee_reason_of(&stop, &levels, sweep)
        ));
        points.push(GridPoint {
            name: shape.name.clone(),
            shape: shape.clone(),
            observation: grid::slo_observation(level),
            throughput_rps,
            within_slo: within.is_some(),
            best,
            levels,
            stop,
            price_mu: 0.0,
            mu_per_min: 0.0,
        });
    }
    let g = GridFit::new(points).map_err(anyhow::Error::msg)?;
    for line in output::grid_report(&g) {
        log(line);
    }
    Ok(g)
}

/// The price of `m`'s shape under `c`.
pub fn price(c: &MuCoefficients, m: &Measurement) -> f64 {
    fit::predict(c, &m.observation())
}
