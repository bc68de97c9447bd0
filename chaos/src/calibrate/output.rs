//! What `sluice calibrate` prints, and the profile it writes.

use super::fit::{Fit, TERM_NAMES};
use super::{Calibration, CapacityLevel, CapacityStop, Measurement};
use sluice_actors::Profile;
use std::fmt::Write as _;

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.1} ms"))
}

/// One measured point.
pub fn sample_line(m: &Measurement) -> String {
    let s = &m.spec;
    let cached = if s.cached > 0 {
        format!(" (cached {:.0})", m.cached_tokens)
    } else {
        String::new()
    };
    format!(
        "C={:<3} in={:>5.0}{cached} out={:>4.0}: {:>8.2} req/s  {:>8.2} GPU-ms/req  TTFT {}  TPOT {} (p90 {})  [{} timed, {} streamed, C_eff {:.1}, drift {:+.1}%]",
        s.concurrency,
        m.prompt_tokens,
        m.completion_tokens,
        m.throughput_rps,
        m.gpu_ms_per_request,
        opt_ms(m.ttft_ms),
        opt_ms(m.tpot_ms),
        opt_ms(m.tpot_p90_ms),
        m.requests,
        m.streamed,
        m.effective_concurrency,
        m.drift * 100.0,
    )
}

/// The fitted coefficients and each sample's measured and predicted cost.
pub fn fit_report(samples: &[Measurement], fit: &Fit) -> Vec<String> {
    let mut v = vec![
        "fit (non-negative least squares on relative errors), MU = GPU-ms per request:".to_owned(),
        format!(
            "  {:>6} {:>7} {:>5} {:>10} {:>10} {:>7}",
            "input", "cached", "out", "measured", "fitted", "error"
        ),
    ];
    for (m, e) in samples.iter().zip(&fit.relative_errors) {
        let o = m.observation();
        v.push(format!(
            "  {:>6.0} {:>7.0} {:>5.0} {:>10.3} {:>10.3} {:>+6.1}%",
            m.prompt_tokens,
            o.cached_input,
            o.output,
            o.cost_ms,
            fit.predict(&o),
            e * 100.0
        ));
    }
    let c = &fit.coefficients;
    let values = [c.uncached_input, c.cached_input, c.output, c.input_output];
    let greek = ["α ", "α_c", "β ", "γ "];
    for j in 0..TERM_NAMES.len() {
        let note = if fit.measured[j] {
            ""
        } else {
            "  (not measured: no sample varies it)"
        };
        v.push(format!(
            "  {} {:<15} = {:.6e} MU/token{note}",
            greek[j], TERM_NAMES[j], values[j]
        ));
    }
    v.push("  δ  image           : not measured (text prompts only)".to_owned());
    v.push(format!(
        "  fit error over {} samples: relative RMS {:.2}%, max {:.2}%",
        samples.len(),
        fit.relative_rms * 100.0,
        fit.max_relative * 100.0
    ));
    v
}

/// One capacity level.
pub fn level_line(l: &CapacityLevel) -> String {
    let m = &l.measurement;
    format!(
        "C={:<4} {:>8.2} req/s  TTFT {}  TPOT {} (p90 {})  {:>7.1} MU/req  {:>9.0} MU/min{}",
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

/// How the capacity was chosen.
pub fn capacity_report(cal: &Calibration) -> Vec<String> {
    let why = match cal.capacity_stop {
        CapacityStop::Slo => "the next level broke the TPOT SLO",
        CapacityStop::Saturated => "more concurrency stopped raising throughput",
        CapacityStop::EndOfSweep => "the sweep ended",
    };
    let at = cal
        .capacity_level
        .map(|i| {
            format!(
                "at concurrency {}",
                cal.levels[i].measurement.spec.concurrency
            )
        })
        .unwrap_or_else(|| "(no level within the SLO)".to_owned());
    vec![format!(
        "capacity: {:.0} MU/min {at} ({:.3} MU per GPU-ms); sweep stopped because {why}",
        cal.capacity_mu_per_min,
        cal.capacity_mu_per_min / 60_000.0
    )]
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
    let f = &cal.fit;
    let c = &f.coefficients;
    let sw = &cal.sweep;
    let _ = writeln!(
        t,
        "# Calibrated by `sluice calibrate` against\n#   {}.",
        cal.target
    );
    let _ = writeln!(
        t,
        "# One MU = one millisecond of the GPU's time at the reference operating point: a\n\
         # closed loop of {} concurrent requests, where a request's cost is 1 / throughput.",
        sw.concurrency
    );
    let _ = writeln!(
        t,
        "# Fit: {} samples (prompts {:?}, outputs {:?}, cached-prefix prompts {:?} at {:.0}%),\n\
         # non-negative least squares on relative errors: relative RMS error {:.2}%, max {:.2}%.",
        cal.samples.len(),
        sw.inputs,
        sw.outputs,
        if sw.cached_fraction > 0.0 {
            sw.cached_inputs.clone()
        } else {
            Vec::new()
        },
        sw.cached_fraction * 100.0,
        f.relative_rms * 100.0,
        f.max_relative * 100.0
    );
    let _ = writeln!(t, "model = {}", toml_string(&cal.model));
    let _ = writeln!(t, "hardware = {}", toml_string(hardware));
    match cal.capacity_level {
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
    let values = [c.uncached_input, c.cached_input, c.output, c.input_output];
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
