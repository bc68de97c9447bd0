//! Tests of the calibration: the virtual-time reference, the sweep plumbing, the profile
//! it writes, and the end-to-end check that calibrating the simulated engine over HTTP
//! recovers the engine's true costs.

use super::fit::{self, Observation};
use super::http::HttpEngine;
use super::virtual_engine::VirtualEngine;
use super::*;
use sluice_actors::Profile;
use sluice_engine::server::{serve, ServerConfig};
use sluice_engine::EngineParams;
use std::time::{Duration, Instant};

const MODEL: &str = "calib-test-model";

#[test]
fn virtual_engine_at_concurrency_one_is_the_step_model() {
    // One request at a time: its cost is one prefill step plus one decode step per
    // further token, exactly as the step model prices them.
    let p = EngineParams::default();
    let (input, output) = (300u32, 8u32);
    let prefill = p.step_fixed_us
        + p.prefill_token_us * f64::from(input)
        + p.prefill_attention_pair_us * f64::from(input) * f64::from(input) / 2.0;
    let mut want_us = prefill.round();
    for k in 0..output - 1 {
        let ctx = f64::from(input + k);
        want_us += (p.step_fixed_us + p.decode_seq_us + p.kv_read_token_us * ctx).round();
    }
    let mut e = VirtualEngine::new(p, MODEL, 1);
    let m = e
        .measure(
            &PointSpec::new(input, 0, output, 1),
            &MeasureOptions::default(),
        )
        .unwrap();
    assert!(
        (m.gpu_ms_per_request - want_us / 1000.0).abs() < 1e-6,
        "{} vs {}",
        m.gpu_ms_per_request,
        want_us / 1000.0
    );
    assert_eq!(m.prompt_tokens, f64::from(input));
    assert_eq!(m.completion_tokens, f64::from(output));
    assert!((m.ttft_ms.unwrap() - prefill.round() / 1000.0).abs() < 1e-6);
    assert!((m.effective_concurrency - 1.0).abs() < 1e-9);
}

#[test]
fn a_shared_prefix_is_cached_and_cheaper() {
    let mut e = VirtualEngine::new(EngineParams::default(), MODEL, 2);
    let opts = MeasureOptions::default();
    let cold = e.measure(&PointSpec::new(2048, 0, 64, 16), &opts).unwrap();
    let warm = e
        .measure(&PointSpec::new(2048, 1536, 64, 16), &opts)
        .unwrap();
    assert_eq!(cold.cached_tokens, 0.0);
    assert_eq!(warm.cached_tokens, 1536.0);
    assert!(warm.gpu_ms_per_request < 0.6 * cold.gpu_ms_per_request);
}

#[test]
fn sweep_points_and_validation() {
    let s = SweepConfig::default();
    s.validate().unwrap();
    let pts = s.cost_points();
    assert_eq!(pts.len(), 3 * 3 + 2);
    assert!(pts.iter().all(|p| p.concurrency == REFERENCE_CONCURRENCY));
    assert_eq!(pts[9], PointSpec::new(1024, 768, 128, 64));
    assert_eq!(s.capacity_points().len(), s.capacity_concurrency.len());
    let no_cache = SweepConfig {
        cached_fraction: 0.0,
        ..SweepConfig::default()
    };
    assert_eq!(no_cache.cost_points().len(), 9);
    for bad in [
        SweepConfig {
            inputs: vec![],
            ..SweepConfig::default()
        },
        SweepConfig {
            cached_fraction: 1.0,
            ..SweepConfig::default()
        },
        SweepConfig {
            capacity_concurrency: vec![0],
            ..SweepConfig::default()
        },
        SweepConfig {
            slo_tpot_ms: f64::NAN,
            ..SweepConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    // Ramp requests spread the workers' cycles over one full request.
    let p = PointSpec::new(100, 0, 64, 4);
    let ramps: Vec<u32> = (0..4).map(|k| p.ramp_output(k)).collect();
    assert_eq!(ramps, vec![16, 32, 48, 64]);
    assert_eq!(PointSpec::new(100, 0, 1, 64).ramp_output(0), 1);
}

#[test]
fn completion_rate_is_robust_to_a_late_first_observation() {
    let mk = |t: f64| Done {
        end_ms: t,
        e2e_ms: 10.0,
        ttft_ms: None,
        prompt_tokens: 1,
        completion_tokens: 1,
        cached_tokens: None,
    };
    // One completion every 10 ms, the first observed 20 ms late.
    let mut done: Vec<Done> = (0..100).map(|k| mk(10.0 * k as f64)).collect();
    done[0].end_ms += 20.0;
    let m = summarize(PointSpec::new(1, 0, 1, 1), &done).unwrap();
    assert!(
        (m.gpu_ms_per_request - 10.0).abs() < 0.05,
        "{}",
        m.gpu_ms_per_request
    );
    assert!(summarize(PointSpec::new(1, 0, 1, 1), &done[..1]).is_err());
    assert!(summarize(PointSpec::new(1, 0, 1, 1), &[mk(5.0), mk(5.0)]).is_err());
}

/// A small sweep over the engine model: the calibration end to end, fast.
fn quick_sweep() -> SweepConfig {
    SweepConfig {
        concurrency: 16,
        inputs: vec![128, 1024],
        outputs: vec![16, 128],
        cached_inputs: vec![1024],
        capacity_input: 512,
        capacity_output: 64,
        capacity_concurrency: vec![8, 32, 64],
        ..SweepConfig::default()
    }
}

#[tokio::test]
async fn calibrating_the_engine_model_writes_a_loadable_profile() {
    let base = Profile::default_profile();
    let mut target = Target::Virtual(VirtualEngine::new(base.engine.clone(), MODEL, 3));
    let mut lines = Vec::new();
    let cal = calibrate(&mut target, &quick_sweep(), &mut |l| lines.push(l))
        .await
        .unwrap();
    assert_eq!(cal.samples.len(), 5);
    assert!(lines.iter().any(|l| l.contains("relative RMS")));
    assert!(lines.iter().any(|l| l.starts_with("capacity:")));
    assert!(cal.fit.measured.iter().all(|&m| m));
    assert!(cal.capacity_mu_per_min > 0.0 && cal.capacity_level.is_some());

    let text = output::profile_toml(&cal, &base, "the default profile", "test-gpu").unwrap();
    assert!(text.contains("cannot be measured from outside the engine"));
    assert!(text.contains("NOT MEASURED"));
    let dir = std::env::temp_dir().join(format!("sluice-calibrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("calibrated.toml");
    std::fs::write(&path, &text).unwrap();
    let p = Profile::load(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(p.model, MODEL);
    assert_eq!(p.hardware, "test-gpu");
    assert_eq!(p.engine, base.engine);
    assert_eq!(p.mu.image, 0.0);
    let rel = |a: f64, b: f64| ((a - b) / b).abs();
    assert!(rel(p.capacity_mu_per_min, cal.capacity_mu_per_min) < 1e-5);
    assert!(rel(p.mu.output, cal.fit.coefficients.output) < 1e-5);
    assert!(rel(p.mu.uncached_input, cal.fit.coefficients.uncached_input) < 1e-5);
}

#[test]
fn cli_flags_map_to_a_sweep() {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: CalibrateArgs,
    }
    let parse = |argv: &[&str]| {
        Wrap::try_parse_from(std::iter::once("calibrate").chain(argv.iter().copied()))
            .map(|w| w.args)
    };
    let a = parse(&["--engine", "http://127.0.0.1:1", "--out", "p.toml"]).unwrap();
    assert_eq!(a.sweep().unwrap(), SweepConfig::default());
    assert_eq!(a.engine_time_scale, 1.0);
    let a = parse(&[
        "--engine",
        "http://127.0.0.1:1",
        "--out",
        "p.toml",
        "--inputs",
        "100,200",
        "--outputs",
        "8",
        "--cached-fraction",
        "0",
        "--capacity-concurrency",
        "4,8",
        "--engine-time-scale",
        "0.05",
    ])
    .unwrap();
    let s = a.sweep().unwrap();
    assert_eq!(s.cost_points().len(), 2);
    assert_eq!(s.capacity_concurrency, vec![4, 8]);
    assert_eq!(a.engine_time_scale, 0.05);
    assert!(
        parse(&["--out", "p.toml"]).is_err(),
        "an engine is required"
    );
    assert!(parse(&["--virtual", "--out", "p.toml"]).is_ok());
    assert!(parse(&["--virtual", "--engine", "http://x:1", "--out", "p.toml"]).is_err());
    let bad = parse(&["--virtual", "--out", "p.toml", "--cycles", "0"]).unwrap();
    assert!(bad.sweep().is_err());
}

// ----- end to end: the simulated engine over HTTP against its true costs -----

/// Wall seconds per engine second of the simulated engine in the end-to-end test.
const TIME_SCALE: f64 = 0.2;

/// The sweep the end-to-end test calibrates with: the default grid at the reference
/// concurrency, a two-level capacity sweep, shorter windows.
fn e2e_sweep() -> SweepConfig {
    SweepConfig {
        capacity_concurrency: vec![64, 160],
        measure: MeasureOptions {
            cycles: 1.0,
            min_window_s: 0.5,
            ..MeasureOptions::default()
        },
        ..SweepConfig::default()
    }
}

/// Request shapes none of the sweep's points has: (input, cached, output).
const HELD_OUT: [(u32, u32, u32); 9] = [
    (512, 0, 64),
    (256, 0, 384),
    (768, 0, 256),
    (1536, 0, 48),
    (2048, 0, 96),
    (2048, 0, 384),
    (3072, 0, 32),
    (2048, 1024, 256),
    (3072, 2560, 64),
];

/// The largest relative error of `c`'s prices against the true costs.
fn worst_error(c: &MuCoefficients, truths: &[Measurement]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for t in truths {
        let e = (price(c, t) - t.gpu_ms_per_request) / t.gpu_ms_per_request;
        if e.abs() > worst.0 {
            worst = (e.abs(), format!("{:?}", t.spec));
        }
    }
    worst
}

/// Starts the simulated engine on its own runtime (as a separate process would be) on
/// 127.0.0.1:0 and returns its URL and a handle that stops it when dropped.
fn start_engine(time_scale: f64) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let config = ServerConfig {
                model: MODEL.to_owned(),
                params: EngineParams::default(),
                time_scale,
                seed: 7,
                poison: None,
            };
            serve(listener, config, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (format!("http://{addr}"), stop_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibration_recovers_the_simulated_engines_true_costs() {
    let started = Instant::now();
    let params = EngineParams::default();
    let sweep = e2e_sweep();

    // The truth: the same sweep on the engine model in virtual time, measured longer,
    // and the true cost of every held-out shape.
    let mut exact = SweepConfig {
        measure: MeasureOptions {
            cycles: 4.0,
            ..sweep.measure
        },
        ..sweep.clone()
    };
    exact.capacity_concurrency = sweep.capacity_concurrency.clone();
    let mut model = Target::Virtual(VirtualEngine::new(params.clone(), MODEL, 11));
    let truth = calibrate(&mut model, &exact, &mut |_| {}).await.unwrap();
    let mut ve = VirtualEngine::new(params.clone(), MODEL, 12);
    let held_out: Vec<Measurement> = HELD_OUT
        .iter()
        .map(|&(i, c, o)| {
            ve.measure(&PointSpec::new(i, c, o, sweep.concurrency), &exact.measure)
                .unwrap()
        })
        .collect();
    let (truth_fit_err, _) = worst_error(&truth.fit.coefficients, &held_out);
    let truth_s = started.elapsed().as_secs_f64();

    // The measurement: the simulated engine over HTTP, 5x faster than real time.
    let (url, _stop) = start_engine(TIME_SCALE);
    let engine = HttpEngine::connect(&url, None, TIME_SCALE, Duration::from_secs(60), 5)
        .await
        .unwrap();
    assert_eq!(engine.model(), MODEL);
    assert_eq!(engine.token_model(), prompt::TokenModel::ONE_PER_WORD);
    let mut target = Target::Http(engine);
    let mut log = Vec::new();
    let cal = calibrate(&mut target, &sweep, &mut |l| log.push(l))
        .await
        .unwrap();
    let report = log.join("\n");

    // Every sample against the true cost of its point.
    let mut lines = vec![format!(
        "{:>6} {:>6} {:>4} {:>10} {:>10} {:>7}",
        "input", "cached", "out", "measured", "true", "error"
    )];
    let mut worst_sample: f64 = 0.0;
    for (m, t) in cal.samples.iter().zip(&truth.samples) {
        assert_eq!(m.spec, t.spec);
        assert_eq!(m.prompt_tokens, t.prompt_tokens, "{:?}", m.spec);
        assert_eq!(m.completion_tokens, t.completion_tokens, "{:?}", m.spec);
        assert_eq!(m.cached_tokens, t.cached_tokens, "{:?}", m.spec);
        let e = m.gpu_ms_per_request / t.gpu_ms_per_request - 1.0;
        worst_sample = worst_sample.max(e.abs());
        lines.push(format!(
            "{:>6} {:>6} {:>4} {:>10.3} {:>10.3} {:>+6.1}%",
            m.spec.input,
            m.spec.cached,
            m.spec.output,
            m.gpu_ms_per_request,
            t.gpu_ms_per_request,
            e * 100.0
        ));
    }
    let c = cal.fit.coefficients;
    let t = truth.fit.coefficients;
    lines.push(format!(
        "coefficients (calibrated / true): α {:.5} / {:.5}, α_c {:.5} / {:.5}, β {:.5} / {:.5}, γ {:.3e} / {:.3e}",
        c.uncached_input, t.uncached_input, c.cached_input, t.cached_input, c.output, t.output,
        c.input_output, t.input_output
    ));
    for h in &held_out {
        lines.push(format!(
            "held out {:?}: true {:.3} ms, calibrated price {:.3} ({:+.1}%), true-fit price {:.3}",
            (h.spec.input, h.spec.cached, h.spec.output),
            h.gpu_ms_per_request,
            price(&c, h),
            (price(&c, h) / h.gpu_ms_per_request - 1.0) * 100.0,
            price(&t, h),
        ));
    }
    for (l, tl) in cal.levels.iter().zip(&truth.levels) {
        lines.push(format!(
            "capacity level C={}: {:.0} MU/min (true {:.0}), {:.2} req/s (true {:.2}), p90 TPOT {:.1} ms (true {:.1})",
            l.measurement.spec.concurrency,
            l.mu_per_min,
            tl.mu_per_min,
            l.measurement.throughput_rps,
            tl.measurement.throughput_rps,
            l.measurement.tpot_p90_ms.unwrap_or(f64::NAN),
            tl.measurement.tpot_p90_ms.unwrap_or(f64::NAN),
        ));
    }
    let (cal_err, cal_where) = worst_error(&c, &held_out);
    lines.push(format!(
        "held-out worst error: calibrated {:.1}% at {cal_where}, fit to the truths {:.1}%; \
         capacity {:.0} vs true {:.0} MU/min; {:.1} s ({truth_s:.1} s of it for the truths)",
        cal_err * 100.0,
        truth_fit_err * 100.0,
        cal.capacity_mu_per_min,
        truth.capacity_mu_per_min,
        started.elapsed().as_secs_f64()
    ));
    let summary = lines.join("\n");
    println!("{report}\n{summary}");

    // 1. The calibrated prices are within 10% of the true cost of every held-out shape.
    assert!(cal_err <= 0.10, "{summary}");
    // 2. The coefficients are close to those fitted to the exact costs.
    let close = |a: f64, b: f64, tol: f64| ((a - b) / b).abs() <= tol;
    assert!(
        close(c.uncached_input, t.uncached_input, 0.10),
        "α\n{summary}"
    );
    assert!(close(c.output, t.output, 0.10), "β\n{summary}");
    assert!(close(c.input_output, t.input_output, 0.20), "γ\n{summary}");
    assert!(
        (c.cached_input - t.cached_input).abs() <= 0.1 * t.uncached_input,
        "α_c\n{summary}"
    );
    // 3. Every sample (loosely: a busy host delays some replies), and the capacity,
    //    match the engine's true numbers.
    assert!(worst_sample <= 0.20, "samples\n{summary}");
    for (l, tl) in cal.levels.iter().zip(&truth.levels) {
        let (a, b) = (
            l.measurement.gpu_ms_per_request,
            tl.measurement.gpu_ms_per_request,
        );
        assert!(close(a, b, 0.10), "capacity level\n{summary}");
    }
    assert!(
        close(cal.capacity_mu_per_min, truth.capacity_mu_per_min, 0.10),
        "capacity\n{summary}"
    );
    assert!(cal.fit.max_relative < 0.15, "fit error\n{summary}");

    // 4. The check has teeth: 20% off in any of the main coefficients fails it.
    let bumped = [
        MuCoefficients {
            uncached_input: c.uncached_input * 1.2,
            ..c
        },
        MuCoefficients {
            output: c.output * 1.2,
            ..c
        },
        MuCoefficients {
            uncached_input: c.uncached_input * 0.8,
            output: c.output * 0.8,
            ..c
        },
    ];
    for b in bumped {
        assert!(
            worst_error(&b, &held_out).0 > 0.10,
            "{b:?} passes too\n{summary}"
        );
    }
}

#[test]
fn the_fit_reproduces_the_default_profiles_derivation() {
    // The default profile prices output at (T0 + 64 d) / 64 and input at a + T0 / 8192:
    // fitting the engine model's exact costs at the reference concurrency lands close.
    let base = Profile::default_profile();
    let mut e = VirtualEngine::new(base.engine.clone(), MODEL, 4);
    let s = SweepConfig::default();
    let samples: Vec<Observation> = s
        .cost_points()
        .iter()
        .map(|p| e.measure(p, &s.measure).unwrap().observation())
        .collect();
    let f = fit::fit(&samples).unwrap();
    let close = |a: f64, b: f64, tol: f64| ((a - b) / b).abs() <= tol;
    assert!(
        close(f.coefficients.uncached_input, base.mu.uncached_input, 0.05),
        "{f:?}"
    );
    assert!(close(f.coefficients.output, base.mu.output, 0.05), "{f:?}");
    assert!(
        close(f.coefficients.input_output, base.mu.input_output, 0.15),
        "{f:?}"
    );
    assert!(f.max_relative < 0.06, "{f:?}");
}
