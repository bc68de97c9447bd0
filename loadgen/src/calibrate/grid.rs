//! The grid of shapes at the SLO: what makes a model unit mean the same on every
//! workload.
//!
//! A price fitted at one operating point (a fixed concurrency) says what a request costs
//! there, but a replica does not run every shape at that point: short chats fill the
//! engine's sequence slots, long prompts stretch the steps their neighbours decode in
//! (chunked prefill against the TPOT bound), long contexts fill the KV cache. So "80,000
//! MU/min" held for one mix only. Here each shape of the grid is driven as hard as the
//! SLO allows (the capacity knee of [`super::knee`]), and its cost is the replica's time
//! per request there: `1000 / req/s` engine-ms. The price is fitted to those costs, so
//! one MU is one millisecond of a replica run at the SLO, whatever it serves, and a
//! replica's capacity is the MU/min it sustains at the SLO: about 60,000 when the price
//! fits every shape. How far each shape's capacity strays from that is the *spread*, the
//! price's error where it matters.

use super::fit::{self, Fit, Observation};
use super::{CapacityLevel, CapacityStop, PointSpec, Shape};
use serde::Serialize;

/// A shape of the grid, named for the workload it stands for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridShape {
    pub name: String,
    /// The shape (a mix when it has an alternate); its concurrency is the search's.
    pub point: PointSpec,
}

impl GridShape {
    pub fn new(name: &str, point: PointSpec) -> Self {
        Self {
            name: name.to_owned(),
            point,
        }
    }

    /// Parses `name=I[:C]/O[+I[:C]/O]`: prompt tokens `I`, of which `C` shared (cached),
    /// output tokens `O`; with `+`, a mix of two shapes (half the requests each).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (name, shapes) = spec
            .split_once('=')
            .ok_or_else(|| format!("grid shape {spec:?}: expected name=INPUT[:CACHED]/OUTPUT"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("grid shape {spec:?} has no name"));
        }
        let mut parts = shapes.split('+').map(|s| parse_shape(s.trim(), spec));
        let first = parts
            .next()
            .ok_or_else(|| format!("grid shape {spec:?} has no shape"))??;
        let second = parts.next().transpose()?;
        if parts.next().is_some() {
            return Err(format!("grid shape {spec:?}: a mix has two shapes at most"));
        }
        let mut point = PointSpec::new(first.input, first.cached, first.output, 1);
        if let Some(s) = second {
            point = point.mixed_with(s);
        }
        Ok(Self::new(name, point))
    }

    /// The shape in the form [`GridShape::parse`] reads.
    pub fn describe(&self) -> String {
        let one = |s: Shape| {
            if s.cached > 0 {
                format!("{}:{}/{}", s.input, s.cached, s.output)
            } else {
                format!("{}/{}", s.input, s.output)
            }
        };
        let shapes: Vec<String> = self.point.shapes().into_iter().map(one).collect();
        format!("{}={}", self.name, shapes.join("+"))
    }
}

fn parse_shape(s: &str, whole: &str) -> Result<Shape, String> {
    let bad = || format!("grid shape {whole:?}: {s:?} is not INPUT[:CACHED]/OUTPUT");
    let (input, output) = s.split_once('/').ok_or_else(bad)?;
    let (input, cached) = match input.split_once(':') {
        Some((i, c)) => (i, c.trim().parse::<u32>().map_err(|_| bad())?),
        None => (input, 0),
    };
    let input: u32 = input.trim().parse().map_err(|_| bad())?;
    let output: u32 = output.trim().parse().map_err(|_| bad())?;
    if input == 0 || output == 0 {
        return Err(format!(
            "grid shape {whole:?}: token counts must be at least 1"
        ));
    }
    if cached >= input {
        return Err(format!(
            "grid shape {whole:?}: the cached prefix must be shorter than the prompt"
        ));
    }
    Ok(Shape::new(input, cached, output))
}

/// The default grid, for an engine serving an 8B model on a GPU: two sizes each of short
/// chat, long prompt with short output (code completion), long-context RAG, long output
/// and an agent whose prompt is mostly a cached prefix, and three mixes. Twice as many
/// shapes as the price has terms, so that the out-of-sample spread means something.
pub const DEFAULT_GRID: [&str; 13] = [
    "chat=512/256",
    "chat-short=128/64",
    "code=2048/32",
    "code-long=8192/32",
    "rag=16384/256",
    "rag-long=32768/512",
    "long-output=256/1024",
    "essay=1024/4096",
    "agentic=8192:7168/128",
    "agentic-small=2048:1536/64",
    "chat+code=512/256+2048/32",
    "chat+rag=512/256+16384/256",
    "agentic+essay=8192:7168/128+1024/4096",
];

/// [`DEFAULT_GRID`], parsed.
pub fn default_grid() -> Vec<GridShape> {
    DEFAULT_GRID
        .iter()
        .filter_map(|s| GridShape::parse(s).ok())
        .collect()
}

/// One grid shape driven to its capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridPoint {
    pub name: String,
    pub shape: GridShape,
    /// The search's levels in the order measured (their MU priced by the reference fit).
    pub levels: Vec<CapacityLevel>,
    /// Index in `levels` of the fastest level within the SLO (else the lowest level).
    pub best: usize,
    pub within_slo: bool,
    pub stop: CapacityStop,
    /// The best level's requests, with their cost at the SLO: `1000 / req/s` engine-ms.
    pub observation: Observation,
    pub throughput_rps: f64,
    /// The price the grid's fit gives the shape, MU per request.
    pub price_mu: f64,
    /// The MU per minute the shape sustains at that price: `price × req/s × 60`.
    pub mu_per_min: f64,
}

/// The price fitted over the grid, and the capacity every shape reaches under it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridFit {
    pub points: Vec<GridPoint>,
    pub fit: Fit,
    /// The middle of the range of the shapes' MU/min: the profile's capacity.
    pub capacity_mu_per_min: f64,
    /// Half the range over the middle: every shape's capacity is within ± this of it.
    pub spread: f64,
    /// Each shape's MU/min under a price fitted without it, over the capacity: how the
    /// price does on a shape it was not fitted to (leave-one-out). Empty with fewer
    /// shapes than the price has terms plus one.
    pub held_out: Vec<f64>,
}

impl GridFit {
    /// Fits the price to the shapes' costs at the SLO and measures what each shape
    /// sustains under it.
    pub fn new(mut points: Vec<GridPoint>) -> Result<Self, String> {
        let samples: Vec<Observation> = points.iter().map(|p| p.observation).collect();
        let fit = fit::fit(&samples)?;
        for p in &mut points {
            p.price_mu = fit.predict(&p.observation);
            p.mu_per_min = p.price_mu * p.throughput_rps * 60.0;
        }
        let (lo, hi) = points.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
            (lo.min(p.mu_per_min), hi.max(p.mu_per_min))
        });
        if !(lo.is_finite() && lo > 0.0) {
            return Err("a shape of the grid sustained no load at the fitted price".into());
        }
        let capacity_mu_per_min = (lo + hi) / 2.0;
        let held_out = if samples.len() > fit::TERMS {
            (0..samples.len())
                .map(|i| {
                    let mut rest = samples.clone();
                    rest.remove(i);
                    let price = fit::fit(&rest)?.predict(&samples[i]);
                    Ok(price * points[i].throughput_rps * 60.0 / capacity_mu_per_min)
                })
                .collect::<Result<Vec<f64>, String>>()?
        } else {
            Vec::new()
        };
        Ok(Self {
            points,
            fit,
            capacity_mu_per_min,
            spread: (hi - lo) / (hi + lo),
            held_out,
        })
    }

    /// The largest deviation from the capacity of a shape priced without it, if
    /// assessed.
    pub fn held_out_spread(&self) -> Option<f64> {
        (!self.held_out.is_empty()).then(|| {
            self.held_out
                .iter()
                .fold(0.0f64, |m, r| m.max((r - 1.0).abs()))
        })
    }

    /// The shape with the least and the most MU/min.
    pub fn extremes(&self) -> Option<(&GridPoint, &GridPoint)> {
        let by = |a: &&GridPoint, b: &&GridPoint| a.mu_per_min.total_cmp(&b.mu_per_min);
        Some((
            self.points.iter().min_by(by)?,
            self.points.iter().max_by(by)?,
        ))
    }
}

/// The observation a grid shape contributes: its best level's requests, costed at the
/// SLO.
pub fn slo_observation(level: &CapacityLevel) -> Observation {
    let m = &level.measurement;
    Observation {
        cost_ms: 1000.0 / m.throughput_rps,
        ..m.observation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_shapes_parse_and_print_back() {
        for s in [
            "chat=512/256",
            "agentic=8192:7168/128",
            "chat+code=512/256+2048/32",
        ] {
            let g = GridShape::parse(s).unwrap();
            assert_eq!(g.describe(), s);
        }
        let mix = GridShape::parse("m=100:50/10+200/20").unwrap();
        assert_eq!(mix.point.shape_of(0), Shape::new(100, 50, 10));
        assert_eq!(mix.point.shape_of(1), Shape::new(200, 0, 20));
        assert_eq!(mix.point.shape_of(2), Shape::new(100, 50, 10));
        for bad in [
            "512/256",
            "=512/256",
            "x=512",
            "x=0/5",
            "x=10:10/5",
            "x=1/1+2/2+3/3",
            "x=a/b",
        ] {
            assert!(GridShape::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(default_grid().len(), DEFAULT_GRID.len());
    }
}
