//! Repeated rounds of the cost sweep: each shape's cost over the rounds, the fit to
//! their means, and whether the coefficients are steady.
//!
//! On a busy host (or against an engine whose speed wanders) one sweep fits one draw of
//! the noise: two runs can disagree on a coefficient by more than its value. So the cost
//! sweep is run in rounds, each measuring every point once with fresh prompts. After
//! each round the coefficients are fitted to the *median* cost of each shape over the
//! rounds (the estimate written to the profile): a point slowed down by a burst of
//! other work on the host (which only ever makes a point look more expensive) does not
//! move it. A coefficient's *spread* is the standard deviation of that estimate over
//! bootstrap resamples of the measurements: each resample draws every shape's costs
//! again, with replacement, from its rounds, and is fitted the same way. More rounds
//! shrink the spread, so rounds go on until every coefficient is steady or `max_rounds`
//! is reached. The fit of each round alone is reported beside it, to show the noise.
//!
//! A coefficient is *steady* when its relative spread (spread / estimate) is within the
//! tolerance, or when its spread moves no measured shape's cost by more than the
//! tolerance (spread × the coefficient's term / the shape's cost): a coefficient near
//! zero (the cached-input price of an engine that computes cached tokens almost for free)
//! has a meaningless relative spread, and is steady when it no longer matters.

use super::fit::{self, Fit, Observation, TERMS, TERM_NAMES};
use super::prompt::Rng;
use super::{Measurement, PointSpec};
use serde::Serialize;

/// Bootstrap resamples behind each spread.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// Seed of the bootstrap: the same measurements always give the same spreads.
const BOOTSTRAP_SEED: u64 = 0xB007_5742;

/// How many rounds of the cost sweep to run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoundsConfig {
    /// Rounds run before steadiness may end the sweep (at least 2 to measure a spread;
    /// 3 or more so that the spread itself is not a lucky draw).
    pub min_rounds: usize,
    /// Rounds run at most; the coefficients are then reported as not converged.
    pub max_rounds: usize,
    /// Largest spread of a steady coefficient (relative to its value, or to the costs it
    /// moves).
    pub tolerance: f64,
}

impl Default for RoundsConfig {
    fn default() -> Self {
        Self {
            min_rounds: 3,
            max_rounds: 6,
            tolerance: 0.05,
        }
    }
}

impl RoundsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.min_rounds == 0 || self.max_rounds < self.min_rounds {
            return Err(format!(
                "rounds: need 1 <= min ({}) <= max ({})",
                self.min_rounds, self.max_rounds
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            return Err(format!(
                "the steadiness tolerance must be a positive fraction, got {}",
                self.tolerance
            ));
        }
        Ok(())
    }
}

/// The median (the mean of the middle two of an even count); 0 when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One point of the cost sweep over all rounds, and what the fit makes of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShapeFit {
    pub spec: PointSpec,
    /// Mean prompt tokens over the rounds.
    pub prompt_tokens: f64,
    /// Mean token counts and the median measured cost (engine-ms per request) over the
    /// rounds.
    pub observation: Observation,
    /// The measured cost of each round.
    pub round_costs: Vec<f64>,
    /// Standard deviation of the measured cost over the rounds / its mean (0 with one
    /// round): the measurement noise, to set beside the fit error.
    pub cost_spread: f64,
    /// The standard error of the median cost, relative to it (its standard deviation over
    /// bootstrap resamples of the rounds; 0 with one round).
    pub cost_se: f64,
    /// The cost the fitted coefficients give this shape.
    pub fitted_ms: f64,
    /// (fitted − measured) / measured.
    pub relative_error: f64,
}

/// Each point over the rounds: mean token counts, median cost (every round measures the
/// same points in the same order). Not yet fitted: `fitted_ms` and `relative_error` are 0 until [`attach_fit`].
pub fn pool(rounds: &[Vec<Measurement>]) -> Vec<ShapeFit> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let of_point: Vec<&Measurement> = rounds.iter().filter_map(|r| r.get(i)).collect();
            let obs: Vec<Observation> = of_point.iter().map(|m| m.observation()).collect();
            let mean =
                |f: &dyn Fn(&Observation) -> f64| mean_sd(&obs.iter().map(f).collect::<Vec<_>>()).0;
            let round_costs: Vec<f64> = obs.iter().map(|o| o.cost_ms).collect();
            let (mean_cost, sd) = mean_sd(&round_costs);
            let cost = median(&round_costs);
            ShapeFit {
                spec: first[i].spec,
                prompt_tokens: mean_sd(
                    &of_point.iter().map(|m| m.prompt_tokens).collect::<Vec<_>>(),
                )
                .0,
                observation: Observation {
                    uncached_input: mean(&|o| o.uncached_input),
                    cached_input: mean(&|o| o.cached_input),
                    output: mean(&|o| o.output),
                    input_output: mean(&|o| o.input_output),
                    attention: mean(&|o| o.attention),
                    cost_ms: cost,
                },
                cost_spread: if mean_cost > 0.0 { sd / mean_cost } else { 0.0 },
                cost_se: if cost > 0.0 {
                    median_sd(&round_costs, i as u64) / cost
                } else {
                    0.0
                },
                round_costs,
                fitted_ms: 0.0,
                relative_error: 0.0,
            }
        })
        .collect()
}

/// The standard deviation of the median of `v` over bootstrap resamples.
fn median_sd(v: &[f64], stream: u64) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mut rng = Rng::new(BOOTSTRAP_SEED ^ stream.wrapping_mul(0x9E37_79B9));
    let k = v.len() as u64;
    let mut draw = Vec::with_capacity(v.len());
    let medians: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            draw.clear();
            draw.extend((0..k).map(|_| v[rng.below(k) as usize]));
            median(&draw)
        })
        .collect();
    mean_sd(&medians).1
}

impl ShapeFit {
    /// Whether the fit misses this shape by more than twice the standard error of its
    /// measured cost: the cost model, not the measurement noise, is off here. Never with
    /// one round (the noise is unknown).
    pub fn misfit(&self) -> bool {
        self.round_costs.len() >= 2 && self.relative_error.abs() > 2.0 * self.cost_se
    }
}

/// Fills in each shape's fitted cost and relative error under `fit`.
pub fn attach_fit(shapes: &mut [ShapeFit], fit: &Fit) {
    for s in shapes {
        s.fitted_ms = fit.predict(&s.observation);
        s.relative_error = if s.observation.cost_ms > 0.0 {
            (s.fitted_ms - s.observation.cost_ms) / s.observation.cost_ms
        } else {
            f64::NAN
        };
    }
}

/// How one coefficient varied over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoefficientSpread {
    pub name: &'static str,
    /// Fitted to the median costs of all rounds: the value written to the profile.
    pub estimate: f64,
    /// The value fitted to each round alone.
    pub per_round: Vec<f64>,
    /// The spread of the estimate: its standard deviation over bootstrap resamples.
    pub spread: f64,
    /// `spread / estimate`; `None` when the estimate is 0.
    pub relative: Option<f64>,
    /// The largest share of a measured shape's cost that `spread` moves:
    /// `spread · term(shape) / cost(shape)`.
    pub cost_effect: f64,
    /// Whether some sample varies the coefficient's term.
    pub measured: bool,
    /// `relative <= tolerance` or `cost_effect <= tolerance`.
    pub steady: bool,
}

/// Whether the coefficients came out steady.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The engine model in virtual time: one round is exact.
    Exact,
    /// One round only (`max_rounds = 1`): the spread was not assessed.
    OneRound,
    /// Every coefficient steady within the tolerance.
    Converged,
    /// `max_rounds` reached with some coefficient not steady.
    NotConverged,
}

/// The coefficients' spread over the rounds so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Steadiness {
    pub rounds: usize,
    pub tolerance: f64,
    pub coefficients: Vec<CoefficientSpread>,
    pub verdict: Verdict,
}

impl Steadiness {
    /// Whether every coefficient is steady (vacuously with one round).
    pub fn all_steady(&self) -> bool {
        self.coefficients.iter().all(|c| c.steady)
    }

    /// Names of the coefficients not steady.
    pub fn unsteady(&self) -> Vec<&'static str> {
        self.coefficients
            .iter()
            .filter(|c| !c.steady)
            .map(|c| c.name)
            .collect()
    }
}

fn coefficient_array(f: &Fit) -> [f64; TERMS] {
    fit::coefficient_array(&f.coefficients)
}

/// The spread of each coefficient over `rounds` (each round: one observation per point,
/// the same points in the same order as `shapes`), around `pooled`, the fit to the
/// shapes' median costs. With `exact`, or with one round, nothing is assessed.
pub fn assess(
    rounds: &[Vec<Observation>],
    shapes: &[ShapeFit],
    pooled: &Fit,
    tolerance: f64,
    exact: bool,
) -> Result<Steadiness, String> {
    let n = rounds.len();
    let per_round: Vec<[f64; TERMS]> = if n >= 2 {
        rounds
            .iter()
            .enumerate()
            .map(|(r, obs)| {
                fit::fit(obs)
                    .map(|f| coefficient_array(&f))
                    .map_err(|e| format!("round {}: {e}", r + 1))
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let resamples = if n >= 2 {
        bootstrap(shapes)
    } else {
        Vec::new()
    };
    let estimate = coefficient_array(pooled);
    let coefficients = (0..TERMS)
        .map(|j| {
            let values: Vec<f64> = per_round.iter().map(|x| x[j]).collect();
            let (_, spread) = mean_sd(&resamples.iter().map(|x| x[j]).collect::<Vec<_>>());
            let share = shapes
                .iter()
                .filter(|s| s.observation.cost_ms > 0.0)
                .map(|s| s.observation.terms()[j] / s.observation.cost_ms)
                .fold(0.0f64, f64::max);
            let cost_effect = spread * share;
            let relative = (estimate[j] > 0.0).then(|| spread / estimate[j]);
            let steady = spread == 0.0
                || relative.is_some_and(|r| r <= tolerance)
                || cost_effect <= tolerance;
            CoefficientSpread {
                name: TERM_NAMES[j],
                estimate: estimate[j],
                per_round: values,
                spread,
                relative,
                cost_effect,
                measured: pooled.measured[j],
                steady,
            }
        })
        .collect::<Vec<_>>();
    let mut s = Steadiness {
        rounds: n,
        tolerance,
        coefficients,
        verdict: Verdict::OneRound,
    };
    s.verdict = if exact {
        Verdict::Exact
    } else if n < 2 {
        Verdict::OneRound
    } else if s.all_steady() {
        Verdict::Converged
    } else {
        Verdict::NotConverged
    };
    Ok(s)
}

/// The coefficients fitted to [`BOOTSTRAP_RESAMPLES`] resamples: in each, every shape's
/// cost is the median of as many costs as it has rounds, drawn with replacement from
/// them. Resamples whose fit fails are left out.
fn bootstrap(shapes: &[ShapeFit]) -> Vec<[f64; TERMS]> {
    let mut rng = Rng::new(BOOTSTRAP_SEED);
    let mut draw = Vec::new();
    let mut obs: Vec<Observation> = shapes.iter().map(|s| s.observation).collect();
    (0..BOOTSTRAP_RESAMPLES)
        .filter_map(|_| {
            for (o, s) in obs.iter_mut().zip(shapes) {
                let k = s.round_costs.len() as u64;
                draw.clear();
                draw.extend((0..k).map(|_| s.round_costs[rng.below(k) as usize]));
                o.cost_ms = median(&draw);
            }
            fit::fit(&obs).ok().map(|f| coefficient_array(&f))
        })
        .collect()
}
