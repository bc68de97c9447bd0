//! What `sluice calibrate` prints, and the profile it writes.
//!
//! Costs are in engine-ms: milliseconds of the engine's time at the reference operating
//! point (of a GPU or of a CPU, whatever the engine runs on). One MU is one engine-ms.

use super::fit::{Fit, TERM_NAMES};
use super::grid::GridFit;
use super::rounds::{CoefficientSpread, ShapeFit, Steadiness, Verdict};
use super::{Calibration, CapacityLevel, CapacityStop, Measurement, SweepConfig};
use sluice_actors::Profile;
use std::fmt::Write as _;

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1} ms"))
}

/// Short names of the fitted coefficients, in column order.
const GREEK: [&str; super::fit::TERMS] = ["α  ", "α_c", "β  ", "γ  ", "ψ  "];

/// One measured point.
pub fn sample_line(m: &Measurement) -> String {
    let s = &m.spec;
    let cached = if s.cached > 0 {
        format!(" (cached {:.0})", m.cached_tokens)
    } else {
        String::new()
    };
    let accidental = if s.cached == 0 && m.cached_tokens >= 1.0 {
        format!(
            "  WARNING: {:.0} prompt tokens per request were found in the prefix cache, though \
             every prompt is new (an earlier run with the same --seed?)",
            m.cached_tokens
        )
    } else {
        String::new()
    };
    format!(
        "C={:<3} in={:>5.0}{cached} out={:>4.0}: {:>8.2} req/s  {:>8.2} engine-ms/req  TTFT {}  TPOT {} (p90 {})  [{} timed, {} streamed, C_eff {:.1}, drift {:+.1}%]{accidental}",
        s.concurrency,
        m.prompt_tokens,
        m.completion_tokens,
        m.throughput_rps,
        m.engine_ms_per_request,
        opt_ms(m.ttft_ms),
        opt_ms(m.tpot_ms),
        opt_ms(m.tpot_p90_ms),
        m.requests,
        m.streamed,
        m.effective_concurrency,
        m.drift * 100.0,
    )
}

/// A coefficient's spread in a few words: relative to itself, and to the costs it moves.
fn spread_words(c: &CoefficientSpread) -> String {
    let own = match c.relative {
        Some(r) => format!("±{:.1}%", r * 100.0),
        None if c.spread == 0.0 => "±0".to_owned(),
        None => format!("±{:.2e}", c.spread),
    };
    if c.spread == 0.0 {
        own
    } else {
        format!("{own} (≤{:.1}% of a cost)", c.cost_effect * 100.0)
    }
}

/// The coefficients' spread after a round.
pub fn round_line(st: &Steadiness) -> String {
    let parts: Vec<String> = st
        .coefficients
        .iter()
        .zip(GREEK)
        .filter(|(c, _)| c.measured)
        .map(|(c, g)| format!("{} {}", g.trim_end(), spread_words(c)))
        .collect();
    let state = if st.all_steady() {
        format!("steady within {:.1}%", st.tolerance * 100.0)
    } else {
        format!("not steady yet: {}", st.unsteady().join(", "))
    };
    format!(
        "  after {} rounds, spread of the coefficients: {}; {state}",
        st.rounds,
        parts.join(", ")
    )
}

/// Whether the coefficients converged, in one line.
pub fn verdict_line(st: &Steadiness) -> String {
    let tol = st.tolerance * 100.0;
    match st.verdict {
        Verdict::Exact => {
            "coefficients: exact (the engine model in virtual time, one round)".to_owned()
        }
        Verdict::OneRound => "coefficients: ONE ROUND only (--max-rounds 1): their spread was \
                              not assessed; run more rounds to know how far to trust them"
            .to_owned(),
        Verdict::Converged => format!(
            "coefficients CONVERGED after {} rounds: every spread within {tol:.1}%",
            st.rounds
        ),
        Verdict::NotConverged => format!(
            "coefficients did NOT converge in {} rounds (the most allowed): {} spread more than \
             {tol:.1}%; trust them no further than their ± (more --max-rounds, or a quieter host)",
            st.rounds,
            st.unsteady().join(", ")
        ),
    }
}

/// The fitted cost of each shape beside its measured one, the coefficients with their
/// spread, the fit error and whether the coefficients converged.
pub fn fit_report(shapes: &[ShapeFit], fit: &Fit, st: &Steadiness) -> Vec<String> {
    let several = st.rounds >= 2;
    let mut v = vec![
        format!(
            "fit of the median cost of each shape over {} round{} (non-negative least squares \
             on relative errors); MU = engine-ms per request:",
            st.rounds,
            if st.rounds == 1 { "" } else { "s" }
        ),
        format!(
            "  {:>6} {:>7} {:>5} {:>10} {:>8} {:>10} {:>7}",
            "input", "cached", "out", "measured", "±rounds", "fitted", "error"
        ),
    ];
    for s in shapes {
        let o = &s.observation;
        let noise = if several {
            format!("±{:.1}%", s.cost_spread * 100.0)
        } else {
            "-".to_owned()
        };
        v.push(format!(
            "  {:>6.0} {:>7.0} {:>5.0} {:>10.3} {:>8} {:>10.3} {:>+6.1}%{}",
            s.prompt_tokens,
            o.cached_input,
            o.output,
            o.cost_ms,
            noise,
            s.fitted_ms,
            s.relative_error * 100.0,
            if s.misfit() { " *" } else { "" }
        ));
    }
    for (j, c) in st.coefficients.iter().enumerate() {
        let mut line = format!("  {} {:<15} = {:.4e}", GREEK[j], TERM_NAMES[j], c.estimate);
        if !fit.measured[j] {
            line.push_str(" MU/token  (not measured: no sample varies it)");
        } else if several {
            let rounds: Vec<String> = c.per_round.iter().map(|x| format!("{x:.3e}")).collect();
            let own = c
                .relative
                .map(|r| format!("{:.1}%; ", r * 100.0))
                .unwrap_or_default();
            let _ = write!(
                line,
                " ± {:.1e} MU/token ({own}moves a measured cost ≤{:.1}%)  {}  [rounds: {}]",
                c.spread,
                c.cost_effect * 100.0,
                if c.steady { "steady" } else { "NOT steady" },
                rounds.join(" ")
            );
        } else {
            line.push_str(" MU/token");
        }
        v.push(line);
    }
    v.push("  δ   image           : not measured (text prompts only)".to_owned());
    if several {
        v.push(
            "  (± is the spread: the standard deviation of the estimate over bootstrap resamples \
             of the rounds; [rounds: ...] are the fits of each round alone; ±rounds is each \
             shape's cost noise, standard deviation / mean)"
                .to_owned(),
        );
    }
    let worst = shapes
        .iter()
        .max_by(|a, b| a.relative_error.abs().total_cmp(&b.relative_error.abs()));
    let at = worst
        .map(|w| {
            format!(
                " at in={:.0} cached={:.0} out={:.0}",
                w.prompt_tokens, w.observation.cached_input, w.observation.output
            )
        })
        .unwrap_or_default();
    v.push(format!(
        "  fit error over {} shapes: relative RMS {:.2}%, max {:.2}%{at}",
        shapes.len(),
        fit.relative_rms * 100.0,
        fit.max_relative * 100.0
    ));
    if several {
        v.push(format!("  {}", misfit_words(shapes)));
    }
    v.push(verdict_line(st));
    v
}

/// How the fit error compares with the measurement noise.
pub fn misfit_words(shapes: &[ShapeFit]) -> String {
    let off: Vec<String> = shapes
        .iter()
        .filter(|s| s.misfit())
        .map(|s| {
            format!(
                "in={:.0} cached={:.0} out={:.0}",
                s.prompt_tokens, s.observation.cached_input, s.observation.output
            )
        })
        .collect();
    if off.is_empty() {
        "every shape's error is within twice the standard error of its median cost: the \
         fit error is no larger than the measurement noise"
            .to_owned()
    } else {
        format!(
            "{} of {} shapes (marked *) are off by more than twice the standard error of their \
             median cost: there the cost model, not the noise, misses ({})",
            off.len(),
            shapes.len(),
            off.join("; ")
        )
    }
}

/// One capacity level.
pub fn level_line(l: &CapacityLevel) -> String {
    let m = &l.measurement;
    let running = m
        .decode_concurrency
        .map(|d| format!("  decoding {d:.1}"))
        .unwrap_or_default();
    format!(
        "C={:<4} {:>8.2} req/s  TTFT {}  TPOT {} (p90 {})  {:>7.1} MU/req  {:>9.0} MU/min{running}{}",
        m.spec.concurrency,
        m.throughput_rps,
        opt_ms(m.ttft_ms),
        opt_ms(m.tpot_ms),
        opt_ms(m.tpot_p90_ms),
        l.mu_per_request,
        l.mu_per_min,
        if l.within_slo {
            ""
        } else {
            "  (TPOT over the SLO)"
        }
    )
}

/// Requests decoding at once below this share of the concurrency: the engine queues.
const QUEUEING_SHARE: f64 = 0.8;

/// Why the capacity sweep stopped, in a sentence: the knee found, or why it was not.
pub fn knee_reason(cal: &Calibration) -> String {
    match &cal.capacity_stop {
        Some(stop) => knee_reason_of(stop, &cal.levels, &cal.sweep),
        None => "not run: the grid at the SLO measured the capacity".to_owned(),
    }
}

/// Why a capacity search over `levels` stopped, in words.
pub fn knee_reason_of(
    stop: &CapacityStop,
    levels: &[CapacityLevel],
    sweep: &SweepConfig,
) -> String {
    let slo = sweep.slo_tpot_ms;
    let level_at = |c: usize| levels.iter().find(|l| l.measurement.spec.concurrency == c);
    let p90 = |c: usize| opt_ms(level_at(c).and_then(|l| l.measurement.tpot_p90_ms));
    match stop {
        CapacityStop::Knee { within, broken } => format!(
            "knee found: p90 TPOT {} at concurrency {within} keeps the {slo} ms SLO, {} at \
             {broken} breaks it",
            p90(*within),
            p90(*broken)
        ),
        CapacityStop::SloBrokenAlone => format!(
            "knee not found: even one request at a time has p90 TPOT {}, over the {slo} ms SLO \
             (the engine cannot keep it; --slo-tpot-ms sets it)",
            p90(1)
        ),
        CapacityStop::Limit { max } => {
            let queued = level_at(*max).and_then(|l| {
                let m = &l.measurement;
                let d = m.decode_concurrency?;
                (d < QUEUEING_SHARE * *max as f64).then(|| (d, opt_ms(m.ttft_ms)))
            });
            match queued {
                Some((d, ttft)) => format!(
                    "knee not found: p90 TPOT was still within the {slo} ms SLO ({}) at \
                     concurrency {max}, the highest allowed, but there the engine decoded only \
                     about {d:.0} requests at once and queued the rest (TTFT {ttft}): its own \
                     limit on concurrent sequences (vLLM's --max-num-seqs, or its KV cache); \
                     more concurrency only adds queueing, and TPOT will not break the SLO",
                    p90(*max)
                ),
                None => format!(
                    "knee not found: p90 TPOT was still within the {slo} ms SLO ({}) at \
                     concurrency {max}, the highest allowed; raise --capacity-max-concurrency \
                     to search further",
                    p90(*max)
                ),
            }
        }
        CapacityStop::Saturated { at, best } => {
            let (Some(a), Some(b)) = (level_at(*at), level_at(*best)) else {
                return format!("knee not found: throughput stopped rising at concurrency {at}");
            };
            let (ma, mb) = (&a.measurement, &b.measurement);
            let mut s = format!(
                "knee not found: throughput stopped rising before the TPOT SLO broke \
                 (concurrency {at}: {:.2} req/s, not 2% above {:.2} req/s at {best}; p90 TPOT {} \
                 within the {slo} ms SLO)",
                ma.throughput_rps,
                mb.throughput_rps,
                opt_ms(ma.tpot_p90_ms)
            );
            match ma.decode_concurrency {
                Some(d) if d < QUEUEING_SHARE * *at as f64 => {
                    let _ = write!(
                        s,
                        ": the engine decoded only about {d:.0} requests at once and queued the \
                         rest (TTFT {} at {best}, {} at {at}), its own limit on concurrent \
                         sequences (vLLM's --max-num-seqs, or its KV cache)",
                        opt_ms(mb.ttft_ms),
                        opt_ms(ma.ttft_ms)
                    );
                }
                _ => s.push_str(
                    ": the engine is saturated (its steps grow as fast as its batch); the \
                     capacity is its throughput plateau",
                ),
            }
            s
        }
        CapacityStop::Error {
            concurrency,
            message,
        } => format!("knee not found: the level at concurrency {concurrency} failed: {message}"),
    }
}

/// The goal for the grid's spread: every shape's capacity within ± this of the
/// profile's.
pub const SPREAD_GOAL: f64 = 0.15;

/// The grid at the SLO: each shape's capacity under the price fitted over the grid, and
/// their spread.
pub fn grid_report(g: &GridFit) -> Vec<String> {
    let mut v = vec![
        "grid at the SLO: each shape at its capacity, its cost there (engine-ms per request = 1000 / req/s) and the fitted price".to_owned(),
        format!(
            "  {:<14} {:>7} {:>7} {:>6} {:>6} {:>9} {:>10} {:>10} {:>9} {:>8} {:>9}",
            "shape", "prompt", "cached", "output", "C", "req/s", "SLO cost", "price MU", "MU/min", "vs cap", "held out"
        ),
    ];
    for (i, p) in g.points.iter().enumerate() {
        let o = &p.observation;
        let c = p.levels[p.best].measurement.spec.concurrency;
        let held = g
            .held_out
            .get(i)
            .map_or_else(|| "-".to_owned(), |r| format!("{:+.1}%", (r - 1.0) * 100.0));
        v.push(format!(
            "  {:<14} {:>7.0} {:>7.0} {:>6.0} {:>6} {:>9.2} {:>10.2} {:>10.2} {:>9.0} {:>+7.1}% {:>9}{}",
            p.name,
            o.uncached_input + o.cached_input,
            o.cached_input,
            o.output,
            c,
            p.throughput_rps,
            o.cost_ms,
            p.price_mu,
            p.mu_per_min,
            (p.mu_per_min / g.capacity_mu_per_min - 1.0) * 100.0,
            held,
            if p.within_slo { "" } else { "  (no level kept the SLO)" }
        ));
    }
    let c = &g.fit.coefficients;
    let values = super::fit::coefficient_array(c);
    let coeffs: Vec<String> = GREEK
        .iter()
        .zip(values)
        .map(|(g, x)| format!("{} {x:.4e}", g.trim_end()))
        .collect();
    v.push(format!(
        "  price fitted over the grid: {}",
        coeffs.join(", ")
    ));
    v.push(spread_line(g));
    v
}

/// The grid's capacity and spread in one line, against the goal.
pub fn spread_line(g: &GridFit) -> String {
    let (lo, hi) = match g.extremes() {
        Some((lo, hi)) => (
            format!("{} {:.0}", lo.name, lo.mu_per_min),
            format!("{} {:.0}", hi.name, hi.mu_per_min),
        ),
        None => ("-".into(), "-".into()),
    };
    let verdict = if g.spread <= SPREAD_GOAL {
        format!("within the ±{:.0}% goal", SPREAD_GOAL * 100.0)
    } else {
        format!("OUTSIDE the ±{:.0}% goal", SPREAD_GOAL * 100.0)
    };
    let held = g.held_out_spread().map_or_else(String::new, |h| {
        format!(
            "; priced by a fit without it, every shape within ±{:.1}%",
            h * 100.0
        )
    });
    format!(
        "capacity: {:.0} MU/min at the SLO, spread ±{:.1}% (least {lo}, most {hi} MU/min): {verdict}{held}",
        g.capacity_mu_per_min,
        g.spread * 100.0
    )
}

/// How the capacity was chosen, and why the sweep stopped.
pub fn capacity_report(cal: &Calibration) -> Vec<String> {
    if let Some(g) = &cal.grid {
        return vec![spread_line(g)];
    }
    let at = cal
        .capacity_level
        .map(|i| {
            format!(
                "at concurrency {}",
                cal.levels[i].measurement.spec.concurrency
            )
        })
        .unwrap_or_else(|| {
            format!(
                "(WARNING: no level kept p90 TPOT within {} ms; this is what the lowest \
                 concurrency sustained)",
                cal.sweep.slo_tpot_ms
            )
        });
    vec![
        format!(
            "capacity: {:.0} MU/min {at} ({:.3} MU per wall-clock ms)",
            cal.capacity_mu_per_min,
            cal.capacity_mu_per_min / 60_000.0
        ),
        format!("capacity sweep: {}", knee_reason(cal)),
    ]
}

/// `v` rounded to 6 significant digits, as a TOML float.
pub fn toml_float(v: f64) -> String {
    toml_float_exact(format!("{v:.5e}").parse().unwrap_or(v))
}

/// `v` exactly (shortest round-trip form), as a TOML float.
fn toml_float_exact(v: f64) -> String {
    let s = format!("{v}");
    if s.contains(['.', 'e', 'E']) || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    // JSON string escapes are a subset of TOML's basic-string escapes.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

/// The profile file: the calibrated MU coefficients and capacity, and the engine model
/// of `base` (which cannot be measured from outside). Checked with `Profile::parse`.
pub fn profile_toml(
    cal: &Calibration,
    base: &Profile,
    base_name: &str,
    hardware: &str,
) -> Result<String, String> {
    let mut t = String::new();
    let f = cal.profile_fit();
    let c = &f.coefficients;
    let sw = &cal.sweep;
    let _ = writeln!(
        t,
        "# Calibrated by `sluice calibrate` against\n#   {}.",
        cal.target
    );
    if cal.grid.is_some() {
        let _ = writeln!(
            t,
            "# One MU = one millisecond of a replica's time when it runs as hard as the SLO\n\
             # (p90 TPOT <= {} ms) allows, whatever the shape: the price is fitted to each grid\n\
             # shape's cost at its capacity (1000 / req/s engine-ms), see the grid below.",
            sw.slo_tpot_ms
        );
        let _ = writeln!(
            t,
            "# The cost sweep first (its price only names the grid levels' MU in the log):"
        );
    } else {
        let _ = writeln!(
            t,
            "# One MU = one millisecond of the engine's time (engine-ms) at the reference operating\n\
             # point: a closed loop of {} concurrent requests, where a request's cost is 1 / throughput.",
            sw.concurrency
        );
    }
    let _ = writeln!(
        t,
        "# Fit: {} shapes (prompts {:?}, outputs {:?}, cached-prefix prompts {:?} at {:.0}%),\n\
         # the median of {} round(s) each, non-negative least squares on relative errors:\n\
         # relative RMS error {:.2}%, max {:.2}%.",
        cal.shapes.len(),
        sw.inputs,
        sw.outputs,
        if sw.cached_fraction > 0.0 {
            sw.cached_inputs.clone()
        } else {
            Vec::new()
        },
        sw.cached_fraction * 100.0,
        cal.steadiness.rounds,
        cal.fit.relative_rms * 100.0,
        cal.fit.max_relative * 100.0
    );
    let _ = writeln!(
        t,
        "# Per shape (prompt, cached, output tokens: measured -> fitted engine-ms, error):"
    );
    for s in &cal.shapes {
        let o = &s.observation;
        let _ = writeln!(
            t,
            "#   {:.0}, {:.0}, {:.0}: {:.3} -> {:.3} ({:+.1}%){}",
            s.prompt_tokens,
            o.cached_input,
            o.output,
            o.cost_ms,
            s.fitted_ms,
            s.relative_error * 100.0,
            if s.misfit() { " *" } else { "" }
        );
    }
    if cal.steadiness.rounds >= 2 {
        let _ = writeln!(t, "# {} (* in the list above).", misfit_words(&cal.shapes));
    }
    let _ = writeln!(t, "# {}.", verdict_line(&cal.steadiness));
    if cal.steadiness.rounds >= 2 {
        let spreads: Vec<String> = cal
            .steadiness
            .coefficients
            .iter()
            .filter(|c| c.measured)
            .map(|c| format!("{} {}", c.name, spread_words(c)))
            .collect();
        let _ = writeln!(
            t,
            "# Spread (standard deviation over bootstrap resamples of the rounds): {}.",
            spreads.join(", ")
        );
    }
    if let Some(g) = &cal.grid {
        let _ = writeln!(
            t,
            "# Grid at the SLO (shape: prompt, cached, output tokens at concurrency C: req/s,\n\
             # cost there -> fitted price, MU/min sustained, against the capacity):"
        );
        for p in &g.points {
            let o = &p.observation;
            let _ = writeln!(
                t,
                "#   {} ({:.0}, {:.0}, {:.0} at C={}): {:.3} req/s, {:.2} -> {:.2} MU, {:.0} MU/min ({:+.1}%){}",
                p.shape.describe(),
                o.uncached_input + o.cached_input,
                o.cached_input,
                o.output,
                p.levels[p.best].measurement.spec.concurrency,
                p.throughput_rps,
                o.cost_ms,
                p.price_mu,
                p.mu_per_min,
                (p.mu_per_min / g.capacity_mu_per_min - 1.0) * 100.0,
                if p.within_slo { "" } else { " (no level kept the SLO)" }
            );
        }
        let _ = writeln!(t, "# {}.", spread_line(g));
    } else {
        let _ = writeln!(t, "# Capacity sweep: {}.", knee_reason(cal));
    }
    let _ = writeln!(t, "model = {}", toml_string(&cal.model));
    let _ = writeln!(t, "hardware = {}", toml_string(hardware));
    match cal.capacity_level {
        _ if cal.grid.is_some() => {
            let _ = writeln!(
                t,
                "# The middle of the range the grid's shapes sustain at the SLO."
            );
        }
        Some(i) => {
            let l = &cal.levels[i];
            let m = &l.measurement;
            let _ = writeln!(
                t,
                "# Sustained at concurrency {} (prompt {:.0}, output {:.0} tokens): {:.2} req/s, \
                 p90 TPOT {} within the {} ms SLO.",
                m.spec.concurrency,
                m.prompt_tokens,
                m.completion_tokens,
                m.throughput_rps,
                opt_ms(m.tpot_p90_ms),
                sw.slo_tpot_ms
            );
        }
        None => {
            let _ = writeln!(
                t,
                "# WARNING: no concurrency level kept p90 TPOT within {} ms; this is what the \
                 lowest level sustained.",
                sw.slo_tpot_ms
            );
        }
    }
    let _ = writeln!(
        t,
        "capacity_mu_per_min = {}",
        toml_float(cal.capacity_mu_per_min)
    );
    t.push_str("\n[mu]\n");
    let values = super::fit::coefficient_array(c);
    for (j, name) in TERM_NAMES.iter().enumerate() {
        if !f.measured[j] {
            let _ = writeln!(t, "# Not measured (no sample varied it).");
        }
        let _ = writeln!(t, "{name} = {}", toml_float(values[j]));
    }
    let _ = writeln!(
        t,
        "# NOT MEASURED: calibration sends text prompts only; copied from {base_name}."
    );
    let _ = writeln!(t, "image = {}", toml_float(base.mu.image));
    let _ = writeln!(
        t,
        "\n# The engine's internal step model cannot be measured from outside the engine: this\n\
         # section is copied unchanged from {base_name}.\n\
         # It only drives the simulated engine; routing, autoscaling and reservations use\n\
         # the MU coefficients and capacity above."
    );
    t.push_str("[engine]\n");
    let engine = serde_json::to_value(&base.engine).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(fields) = engine else {
        return Err("the engine parameters are not a table".into());
    };
    for (k, v) in fields {
        let value = match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                toml_float_exact(n.as_f64().unwrap_or(0.0))
            }
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::String(s) => toml_string(&s),
            other => {
                return Err(format!(
                    "engine parameter {k} = {other} has no TOML form here"
                ))
            }
        };
        let _ = writeln!(t, "{k} = {value}");
    }
    let parsed = Profile::parse(&t, "<calibrated profile>").map_err(|e| e.to_string())?;
    if parsed.engine != base.engine {
        return Err("the engine section did not round-trip".into());
    }
    Ok(t)
}
