//! Non-negative least squares for the MU coefficients.
//!
//! Each sample is a request shape and its measured cost in engine-milliseconds per
//! request (milliseconds of the engine's time, on whatever hardware it runs).
//! The model is `cost = α·uncached + α_c·cached + β·output + γ·output·(input +
//! output/2) + ψ·attention pairs` (the price of `sluice_actors::mu`); the fit
//! minimizes the sum of squared *relative* errors (each row weighted by 1 / cost), so a
//! 10-ms chat turn counts as much as a 300-ms long-context request, subject to every
//! coefficient being non-negative. With five unknowns the exact NNLS solution is found
//! by solving the unconstrained problem on every subset of the columns and keeping the
//! best feasible one.

use serde::Serialize;
use sluice_actors::mu::{attention_pairs, kv_token_steps, MuCoefficients};

/// Number of fitted coefficients: α, α_c, β, γ, ψ (δ, per image, is never measured
/// here).
pub const TERMS: usize = 5;

/// Names of the fitted coefficients, in column order.
pub const TERM_NAMES: [&str; TERMS] = [
    "uncached_input",
    "cached_input",
    "output",
    "input_output",
    "attention",
];

/// One observation: mean token counts of the measured requests and their cost. The
/// products are means over the requests too (not products of the means), so a point
/// that mixes shapes is priced as the mean of its requests' prices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Observation {
    pub uncached_input: f64,
    pub cached_input: f64,
    pub output: f64,
    /// Mean context tokens read over the decode, `o·(input + o/2)`.
    pub input_output: f64,
    /// Mean prefill attention pairs, `u·(c + u/2)`.
    pub attention: f64,
    /// Engine-milliseconds per request (= MU).
    pub cost_ms: f64,
}

impl Observation {
    /// An observation of requests that all have one shape.
    pub fn single(uncached_input: f64, cached_input: f64, output: f64, cost_ms: f64) -> Self {
        Self {
            uncached_input,
            cached_input,
            output,
            input_output: kv_token_steps(uncached_input + cached_input, output),
            attention: attention_pairs(uncached_input, cached_input),
            cost_ms,
        }
    }

    /// The shape's value of each fitted term (the coefficients' multipliers), in the
    /// order of [`TERM_NAMES`].
    pub fn terms(&self) -> [f64; TERMS] {
        [
            self.uncached_input,
            self.cached_input,
            self.output,
            self.input_output,
            self.attention,
        ]
    }
}

/// The fitted coefficients and how well they explain the samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    /// α, α_c, β, γ, ψ in MU per token (γ per input × output token, ψ per attention
    /// pair); `image` is 0 here.
    pub coefficients: MuCoefficients,
    /// Whether the samples determine each term (a column that is zero in every sample,
    /// e.g. cached input when no cached-prefix point was run, is not measured).
    pub measured: [bool; TERMS],
    /// Relative error (predicted − measured) / measured of each sample.
    pub relative_errors: Vec<f64>,
    /// Root mean square of the relative errors.
    pub relative_rms: f64,
    /// Largest absolute relative error.
    pub max_relative: f64,
}

impl Fit {
    /// The cost the fit predicts for a shape, in MU.
    pub fn predict(&self, o: &Observation) -> f64 {
        predict(&self.coefficients, o)
    }
}

/// The cost `c` predicts for an observation's shape (images excluded).
pub fn predict(c: &MuCoefficients, o: &Observation) -> f64 {
    let x = coefficient_array(c);
    o.terms().iter().zip(x).map(|(a, b)| a * b).sum()
}

/// The fitted coefficients in the order of [`TERM_NAMES`].
pub fn coefficient_array(c: &MuCoefficients) -> [f64; TERMS] {
    [
        c.uncached_input,
        c.cached_input,
        c.output,
        c.input_output,
        c.attention,
    ]
}

/// Fits the coefficients to `samples` by weighted non-negative least squares.
/// Needs at least one sample with a positive cost.
pub fn fit(samples: &[Observation]) -> Result<Fit, String> {
    let rows: Vec<&Observation> = samples
        .iter()
        .filter(|s| s.cost_ms.is_finite() && s.cost_ms > 0.0)
        .collect();
    if rows.is_empty() {
        return Err("no sample with a positive measured cost to fit".into());
    }
    // Weighted rows: each divided by its cost, so the target of every row is 1.
    let a: Vec<[f64; TERMS]> = rows
        .iter()
        .map(|s| {
            let r = s.terms();
            std::array::from_fn(|j| r[j] / s.cost_ms)
        })
        .collect();
    let mut measured = [false; TERMS];
    for (j, m) in measured.iter_mut().enumerate() {
        *m = a.iter().any(|r| r[j] != 0.0);
    }
    let mut best: Option<([f64; TERMS], f64)> = None;
    for mask in 0u32..(1 << TERMS) {
        let cols: Vec<usize> = (0..TERMS)
            .filter(|&j| mask & (1 << j) != 0 && measured[j])
            .collect();
        if cols.len() != mask.count_ones() as usize {
            continue;
        }
        let Some(x) = least_squares(&a, &cols) else {
            continue;
        };
        // A cached prompt token never costs more than computing it (profiles refuse
        // such prices).
        if x.iter().any(|&v| v < 0.0 || !v.is_finite()) || x[1] > x[0] {
            continue;
        }
        let r = residual(&a, &x);
        if best.as_ref().is_none_or(|(_, b)| r < *b) {
            best = Some((x, r));
        }
    }
    let Some((x, _)) = best else {
        return Err("the least-squares problem has no solution".into());
    };
    let coefficients = MuCoefficients {
        uncached_input: x[0],
        cached_input: x[1],
        output: x[2],
        input_output: x[3],
        image: 0.0,
        attention: x[4],
    };
    let relative_errors: Vec<f64> = rows
        .iter()
        .map(|s| (predict(&coefficients, s) - s.cost_ms) / s.cost_ms)
        .collect();
    let (relative_rms, max_relative) = error_summary(&relative_errors);
    Ok(Fit {
        coefficients,
        measured,
        relative_errors,
        relative_rms,
        max_relative,
    })
}

/// Root mean square and largest magnitude of relative errors.
pub fn error_summary(errors: &[f64]) -> (f64, f64) {
    if errors.is_empty() {
        return (0.0, 0.0);
    }
    let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
    let max = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    (rms, max)
}

/// Sum of squared residuals of `a·x − 1`.
fn residual(a: &[[f64; TERMS]], x: &[f64; TERMS]) -> f64 {
    a.iter()
        .map(|r| {
            let p: f64 = r.iter().zip(x).map(|(u, v)| u * v).sum();
            (p - 1.0).powi(2)
        })
        .sum()
}

/// Unconstrained least squares of `a·x ≈ 1` on the columns `cols` (the others are 0),
/// through the normal equations of the column-scaled matrix. `None` if singular.
fn least_squares(a: &[[f64; TERMS]], cols: &[usize]) -> Option<[f64; TERMS]> {
    let mut x = [0.0; TERMS];
    let k = cols.len();
    if k == 0 {
        return Some(x);
    }
    let scale: Vec<f64> = cols
        .iter()
        .map(|&j| a.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt())
        .collect();
    if scale.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return None;
    }
    // Augmented normal equations [AᵀA | Aᵀ1] of the scaled columns.
    let mut m = vec![vec![0.0; k + 1]; k];
    for r in a {
        for p in 0..k {
            let u = r[cols[p]] / scale[p];
            for q in 0..k {
                m[p][q] += u * r[cols[q]] / scale[q];
            }
            m[p][k] += u;
        }
    }
    let y = solve(m)?;
    for p in 0..k {
        x[cols[p]] = y[p] / scale[p];
    }
    Some(x)
}

/// Gaussian elimination with partial pivoting on an augmented k × (k+1) matrix.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = m.len();
    for c in 0..k {
        let p = (c..k).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))?;
        // Scaled columns have unit norm, so the diagonal starts at 1: a pivot this small
        // means the columns are (nearly) linearly dependent.
        if m[p][c].abs() < 1e-10 {
            return None;
        }
        m.swap(c, p);
        let pivot = m[c].clone();
        for (i, row) in m.iter_mut().enumerate() {
            let f = row[c] / pivot[c];
            if i != c && f != 0.0 {
                for (x, &y) in row.iter_mut().zip(&pivot).skip(c) {
                    *x -= f * y;
                }
            }
        }
    }
    Some((0..k).map(|i| m[i][k] / m[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(u: f64, c: f64, o: f64, coeffs: [f64; TERMS]) -> Observation {
        let mut x = Observation::single(u, c, o, 0.0);
        x.cost_ms = x.terms().iter().zip(coeffs).map(|(t, k)| t * k).sum();
        x
    }

    fn grid(coeffs: [f64; TERMS], cached: bool) -> Vec<Observation> {
        let mut v = Vec::new();
        for u in [256.0, 1024.0, 4096.0, 16384.0] {
            for o in [32.0, 128.0, 512.0] {
                v.push(obs(u, 0.0, o, coeffs));
            }
        }
        if cached {
            v.push(obs(256.0, 768.0, 128.0, coeffs));
            v.push(obs(1024.0, 3072.0, 128.0, coeffs));
        }
        v
    }

    #[test]
    fn recovers_exact_coefficients() {
        let truth = [0.0186, 0.002, 0.113, 0.00004, 6e-7];
        let f = fit(&grid(truth, true)).unwrap();
        let got = coefficient_array(&f.coefficients);
        for (g, t) in got.iter().zip(truth) {
            assert!((g - t).abs() <= 1e-9 * t.max(1e-6), "{got:?} vs {truth:?}");
        }
        assert!(f.max_relative < 1e-9 && f.relative_rms < 1e-9);
        assert_eq!(f.measured, [true; TERMS]);
    }

    #[test]
    fn coefficients_stay_non_negative() {
        // A negative cached price would fit these exactly; NNLS pins it at zero.
        let f = fit(&grid([0.02, -0.005, 0.1, 0.00004, 0.0], true)).unwrap();
        let c = f.coefficients;
        assert_eq!(c.cached_input, 0.0);
        assert!(c.uncached_input > 0.0 && c.output > 0.0 && c.input_output > 0.0);
        assert!(f.max_relative > 0.0);
    }

    #[test]
    fn terms_without_data_are_not_measured() {
        let f = fit(&grid([0.02, 0.0, 0.1, 0.00004, 0.0], false)).unwrap();
        assert_eq!(f.measured, [true, false, true, true, true]);
        assert_eq!(f.coefficients.cached_input, 0.0);
        assert!((f.coefficients.output - 0.1).abs() < 1e-9);
        assert!(fit(&[]).is_err());
    }

    #[test]
    fn relative_errors_are_reported() {
        let mut s = grid([0.02, 0.0, 0.1, 0.00004, 0.0], false);
        s[0].cost_ms *= 1.5;
        let f = fit(&s).unwrap();
        assert!(f.max_relative > 0.05, "{f:?}");
        assert!(f.relative_rms > 0.0 && f.relative_rms <= f.max_relative);
        assert_eq!(f.relative_errors.len(), s.len());
    }
}
