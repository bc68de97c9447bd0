//! Tests of the calibration: the virtual-time reference, the sweep plumbing, the profile
//! it writes, and the end-to-end check that calibrating the simulated engine over HTTP
//! recovers the engine's true costs.

use super::fit;
use super::grid::GridShape;
use super::http::HttpEngine;
use super::virtual_engine::VirtualEngine;
use super::*;
use sluice_actors::mu::{attention_pairs, kv_token_steps, MuCoefficients};
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
        (m.engine_ms_per_request - want_us / 1000.0).abs() < 1e-6,
        "{} vs {}",
        m.engine_ms_per_request,
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
    assert!(warm.engine_ms_per_request < 0.6 * cold.engine_ms_per_request);
}

#[test]
fn sweep_points_and_validation() {
    let s = SweepConfig::default();
    s.validate().unwrap();
    let pts = s.cost_points();
    assert_eq!(pts.len(), 3 * 3 + 2);
    assert!(pts.iter().all(|p| p.concurrency == REFERENCE_CONCURRENCY));
    assert_eq!(pts[9], PointSpec::new(1024, 768, 128, 64));
    assert_eq!(s.capacity_point(32), PointSpec::new(2048, 0, 256, 32));
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
            capacity_concurrency: vec![32, 16],
            ..SweepConfig::default()
        },
        SweepConfig {
            rounds: RoundsConfig {
                min_rounds: 3,
                max_rounds: 2,
                ..RoundsConfig::default()
            },
            ..SweepConfig::default()
        },
        SweepConfig {
            rounds: RoundsConfig {
                tolerance: 0.0,
                ..RoundsConfig::default()
            },
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
        intended_cached: 0,
    };
    // One completion every 10 ms, the first observed 20 ms late.
    let mut done: Vec<Done> = (0..100).map(|k| mk(10.0 * k as f64)).collect();
    done[0].end_ms += 20.0;
    let m = summarize(PointSpec::new(1, 0, 1, 1), &done).unwrap();
    assert!(
        (m.engine_ms_per_request - 10.0).abs() < 0.05,
        "{}",
        m.engine_ms_per_request
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
        capacity_max_concurrency: 64,
        grid: Vec::new(),
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
    assert_eq!(cal.shapes.len(), 5);
    assert_eq!(cal.rounds.len(), 1, "the engine model is exact: one round");
    assert_eq!(cal.steadiness.verdict, Verdict::Exact);
    assert!(lines.iter().any(|l| l.contains("exact")));
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
    assert_eq!(a.seed, None, "a fresh prompt seed each run by default");
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
    let small = parse(&[
        "--virtual",
        "--out",
        "p.toml",
        "--seed",
        "9",
        "--max-rounds",
        "1",
        "--tolerance",
        "0.1",
        "--capacity-concurrency",
        "2,4",
        "--capacity-max-concurrency",
        "64",
        "--knee-bisections",
        "3",
    ])
    .unwrap();
    assert_eq!(small.seed, Some(9));
    let sm = small.sweep().unwrap();
    assert_eq!(
        sm.rounds,
        RoundsConfig {
            min_rounds: 1,
            max_rounds: 1,
            tolerance: 0.1
        }
    );
    assert_eq!((sm.capacity_max_concurrency, sm.knee_bisections), (64, 3));
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
        // One round: this test is about the accuracy of one measurement.
        rounds: RoundsConfig {
            min_rounds: 1,
            max_rounds: 1,
            ..RoundsConfig::default()
        },
        capacity_concurrency: vec![64, 160],
        capacity_max_concurrency: 160,
        knee_bisections: 0,
        grid: Vec::new(),
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
        let e = (price(c, t) - t.engine_ms_per_request) / t.engine_ms_per_request;
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
    assert_eq!(cal.rounds.len(), 1);
    assert_eq!(cal.steadiness.verdict, Verdict::OneRound);
    for (m, t) in cal.rounds[0].iter().zip(&truth.rounds[0]) {
        assert_eq!(m.spec, t.spec);
        assert_eq!(m.prompt_tokens, t.prompt_tokens, "{:?}", m.spec);
        assert_eq!(m.completion_tokens, t.completion_tokens, "{:?}", m.spec);
        assert_eq!(m.cached_tokens, t.cached_tokens, "{:?}", m.spec);
        let e = m.engine_ms_per_request / t.engine_ms_per_request - 1.0;
        worst_sample = worst_sample.max(e.abs());
        lines.push(format!(
            "{:>6} {:>6} {:>4} {:>10.3} {:>10.3} {:>+6.1}%",
            m.spec.input,
            m.spec.cached,
            m.spec.output,
            m.engine_ms_per_request,
            t.engine_ms_per_request,
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
            h.engine_ms_per_request,
            price(&c, h),
            (price(&c, h) / h.engine_ms_per_request - 1.0) * 100.0,
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
            l.measurement.engine_ms_per_request,
            tl.measurement.engine_ms_per_request,
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

#[tokio::test]
async fn the_embedded_profile_is_the_engine_models_calibration_and_its_unit_holds_across_shapes() {
    // The embedded profile is `sluice calibrate --virtual` with the default grid: doing it
    // again gives the same price and capacity.
    let base = Profile::default_profile();
    let mut target = Target::Virtual(VirtualEngine::new(base.engine.clone(), MODEL, 4));
    let sweep = SweepConfig::default();
    let cal = calibrate(&mut target, &sweep, &mut |_| {}).await.unwrap();
    let g = cal.grid.as_ref().expect("the default sweep has a grid");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * b.abs().max(1e-12);
    let (got, want) = (
        fit::coefficient_array(&g.fit.coefficients),
        fit::coefficient_array(&base.mu),
    );
    for (j, (x, y)) in got.iter().zip(want).enumerate() {
        assert!(close(*x, y), "{}: {x} vs embedded {y}", fit::TERM_NAMES[j]);
    }
    assert!(close(cal.capacity_mu_per_min, base.capacity_mu_per_min));
    // The goal: every shape of the grid reaches the capacity within ±15% at the SLO,
    // also when priced by a fit that did not see it.
    assert!(
        g.spread <= output::SPREAD_GOAL,
        "{}",
        output::spread_line(g)
    );
    let held = g.held_out_spread().unwrap();
    assert!(held <= output::SPREAD_GOAL, "{}", output::spread_line(g));
    // Shapes the grid does not have, driven to their own capacity: the same unit holds.
    let other: Vec<GridShape> = [
        "a=64/16",
        "b=1024/128",
        "c=3000/300",
        "d=4096/512",
        "e=32768/64",
        "f=4096:2048/256",
        "g=512/4096",
        "h=2048/2048",
        "i=8192/2048",
        "j=1024:768/64+8192/32",
    ]
    .iter()
    .map(|s| GridShape::parse(s).unwrap())
    .collect();
    let check = SweepConfig {
        grid: other,
        ..SweepConfig::default()
    };
    let mut target = Target::Virtual(VirtualEngine::new(base.engine.clone(), MODEL, 5));
    let outside = calibrate(&mut target, &check, &mut |_| {}).await.unwrap();
    for p in &outside.grid.unwrap().points {
        let at_price = fit::predict(&base.mu, &p.observation) * p.throughput_rps * 60.0;
        let off = at_price / base.capacity_mu_per_min - 1.0;
        assert!(
            off.abs() <= output::SPREAD_GOAL,
            "{}: {at_price:.0} MU/min at the embedded price, {:+.1}% off its capacity",
            p.shape.describe(),
            off * 100.0
        );
    }
}

#[test]
fn the_old_linear_price_misses_the_unit_across_shapes() {
    // Why the price has attention and KV terms: priced linearly in prompt and output
    // (the first profile, which fitted a closed loop at concurrency 64), the shapes of
    // the grid reach very different MU/min at their capacity. The default grid's costs
    // at the SLO are in the embedded profile's comments; here two of them, from the
    // engine model: short chat and long-context RAG.
    let base = Profile::default_profile();
    let mut e = VirtualEngine::new(base.engine.clone(), MODEL, 6);
    let opts = MeasureOptions::default();
    let linear = MuCoefficients {
        uncached_input: 0.0186,
        cached_input: 0.0,
        output: 0.113125,
        input_output: 0.0,
        image: 0.0,
        attention: 0.0,
    };
    let chat = e
        .measure(&PointSpec::new(512, 0, 256, 1024), &opts)
        .unwrap();
    let rag = e
        .measure(&PointSpec::new(16384, 0, 256, 64), &opts)
        .unwrap();
    let per_min = |c: &MuCoefficients, m: &Measurement| {
        fit::predict(c, &m.observation()) * m.throughput_rps * 60.0
    };
    let ratio = |c: &MuCoefficients| per_min(c, &chat) / per_min(c, &rag);
    assert!(ratio(&linear) > 1.5, "{}", ratio(&linear));
    assert!((ratio(&base.mu) - 1.0).abs() < 0.15, "{}", ratio(&base.mu));
}

// ----- repeated rounds, per-shape errors, the capacity knee -----

/// A measurement of `spec` costing `cost_ms`, with the token counts of its shape.
fn fake(spec: PointSpec, cost_ms: f64) -> Measurement {
    Measurement {
        spec,
        requests: 100,
        prompt_tokens: f64::from(spec.input),
        cached_tokens: f64::from(spec.cached),
        cached_reported: true,
        completion_tokens: f64::from(spec.output),
        input_output: kv_token_steps(f64::from(spec.input), f64::from(spec.output)),
        attention_pairs: attention_pairs(
            f64::from(spec.input - spec.cached),
            f64::from(spec.cached),
        ),
        window_ms: 100.0 * cost_ms,
        throughput_rps: 1000.0 / cost_ms,
        engine_ms_per_request: cost_ms,
        ttft_ms: None,
        tpot_ms: None,
        tpot_p90_ms: None,
        streamed: 0,
        drift: 0.0,
        effective_concurrency: 1.0,
        decode_concurrency: None,
    }
}

/// The exact cost of `spec` under coefficients `[α, α_c, β, γ]` (ψ = 0).
fn cost_of(spec: &PointSpec, x: [f64; 4]) -> f64 {
    let (i, c, o) = (
        f64::from(spec.input),
        f64::from(spec.cached),
        f64::from(spec.output),
    );
    x[0] * (i - c) + x[1] * c + x[2] * o + x[3] * kv_token_steps(i, o)
}

/// A round measuring every point of `sweep` at its exact cost under `x`.
fn exact_round_of(sweep: &SweepConfig, x: [f64; 4]) -> Vec<Measurement> {
    sweep
        .cost_points()
        .iter()
        .map(|p| fake(*p, cost_of(p, x)))
        .collect()
}

/// A round measuring every point of `quick_sweep` at its exact cost under `x`.
fn exact_round(x: [f64; 4]) -> Vec<Measurement> {
    quick_sweep()
        .cost_points()
        .iter()
        .map(|p| fake(*p, cost_of(p, x)))
        .collect()
}

#[test]
fn the_spread_is_the_bootstrap_deviation_of_the_median_fit() {
    // Three rounds that agree on everything but the cached-input price: 0, 0.01, 0.02.
    let base = [0.03, 0.0, 0.1, 0.00004];
    let rounds: Vec<Vec<Measurement>> = [0.0, 0.01, 0.02]
        .iter()
        .map(|&ac| exact_round([base[0], ac, base[2], base[3]]))
        .collect();
    let (shapes, fit, st) = fit_rounds(&rounds, 0.05, false).unwrap();
    assert_eq!(st.rounds, 3);
    let ac = &st.coefficients[1];
    assert_eq!(ac.name, "cached_input");
    for (got, want) in ac.per_round.iter().zip([0.0, 0.01, 0.02]) {
        assert!((got - want).abs() < 1e-9, "{:?}", ac.per_round);
    }
    // The median cost of the cached shape is that of the middle round: α_c = 0.01.
    assert!((ac.estimate - 0.01).abs() < 1e-9, "{}", ac.estimate);
    assert!((fit.coefficients.cached_input - 0.01).abs() < 1e-9);
    // Only the cached shape varies, and α_c is linear in its cost: each resample's α_c
    // is the median of three draws from {0, 0.01, 0.02}, which is 0 or 0.02 with
    // probability 7/27 each. Its standard deviation is 0.01 · √(14/27) = 0.0072 (the
    // standard error of a mean of three, 0.0058, would be another estimator).
    let want = 0.01 * (14.0f64 / 27.0).sqrt();
    assert!(
        (ac.spread - want).abs() < 0.08 * want,
        "{} vs {want}",
        ac.spread
    );
    assert!((ac.relative.unwrap() - ac.spread / 0.01).abs() < 1e-12);
    // It moves the cached shape's cost by spread × cached tokens / its cost.
    let cached = shapes.iter().find(|s| s.spec.cached > 0).unwrap();
    let effect = ac.spread * cached.observation.cached_input / cached.observation.cost_ms;
    assert!(
        (ac.cost_effect - effect).abs() < 1e-12,
        "{} vs {effect}",
        ac.cost_effect
    );
    assert!(effect > 0.05 && effect < 0.5, "{effect}");
    assert!(!ac.steady);
    // The other coefficients did not move: steady, spread 0.
    for j in [0, 2, 3] {
        let c = &st.coefficients[j];
        assert!(c.spread < 1e-12 && c.steady, "{c:?}");
        assert!(
            (c.estimate - base[j]).abs() <= 1e-9 * base[j].max(1e-6),
            "{c:?}"
        );
    }
    assert_eq!(st.verdict, Verdict::NotConverged);
    assert_eq!(st.unsteady(), vec!["cached_input"]);
    // The same measurements give the same spread (the bootstrap is seeded).
    let (_, _, again) = fit_rounds(&rounds, 0.05, false).unwrap();
    assert_eq!(again, st);
    // A tolerance between the cost effect and the relative spread (72%): steady by its
    // effect on costs.
    let (_, _, st) = fit_rounds(&rounds, (effect + 0.7) / 2.0, false).unwrap();
    assert!(st.coefficients[1].steady);
    assert_eq!(st.verdict, Verdict::Converged);
    // One round assesses nothing; an exact target says so.
    let (_, _, st) = fit_rounds(&rounds[..1], 0.05, false).unwrap();
    assert_eq!(st.verdict, Verdict::OneRound);
    assert!(st.coefficients.iter().all(|c| c.spread == 0.0));
    let (_, _, st) = fit_rounds(&rounds[..1], 0.05, true).unwrap();
    assert_eq!(st.verdict, Verdict::Exact);
    // The report names the verdict and the unsteady coefficient.
    let (shapes, fit, st) = fit_rounds(&rounds, 0.05, false).unwrap();
    let report = output::fit_report(&shapes, &fit, &st).join("\n");
    assert!(report.contains("did NOT converge in 3 rounds"), "{report}");
    assert!(
        report.contains("cached_input spread more than 5.0%"),
        "{report}"
    );
    assert!(output::round_line(&st).contains("not steady yet: cached_input"));
}

#[test]
fn a_stalled_point_does_not_move_the_estimate() {
    // Five rounds at the exact costs, but in one of them a burst of other work on the
    // host tripled one point's cost.
    let x = [0.02, 0.003, 0.1, 0.00004];
    let mut rounds: Vec<Vec<Measurement>> = (0..5).map(|_| exact_round(x)).collect();
    rounds[2][3].engine_ms_per_request *= 3.0;
    let (shapes, fit, st) = fit_rounds(&rounds, 0.05, false).unwrap();
    let c = fit.coefficients;
    for (got, want) in [c.uncached_input, c.cached_input, c.output, c.input_output]
        .iter()
        .zip(x)
    {
        assert!((got - want).abs() <= 1e-9 * want, "{c:?}");
    }
    assert!(fit.max_relative < 1e-9);
    // The stall shows as that shape's cost noise, and in the fit of its round.
    assert!(shapes[3].cost_spread > 0.5, "{:?}", shapes[3]);
    assert!(shapes
        .iter()
        .enumerate()
        .all(|(i, s)| i == 3 || s.cost_spread == 0.0));
    // The fit error is within the noise: no shape is a misfit.
    assert!(shapes.iter().all(|s| !s.misfit()));
    assert!(output::misfit_words(&shapes).starts_with("every shape's error is within"));
    assert!(st.coefficients.iter().any(|c| c.per_round[2] != c.estimate));
    // A mean would have been pulled: the fit to the mean costs is off.
    let mut means = shapes.iter().map(|s| s.observation).collect::<Vec<_>>();
    means[3].cost_ms = rounds::mean_sd(&shapes[3].round_costs).0;
    assert!(fit::fit(&means).unwrap().max_relative > 0.05);
}

#[test]
fn the_fit_error_is_stated_per_shape() {
    let x = [0.02, 0.0, 0.1, 0.00004];
    let grid = SweepConfig::default();
    let mut rounds = vec![exact_round_of(&grid, x), exact_round_of(&grid, x)];
    // The second shape measured 50% (then 30%) over its true cost: its median is 40%.
    rounds[0][1].engine_ms_per_request *= 1.5;
    rounds[1][1].engine_ms_per_request *= 1.3;
    let (shapes, fit, st) = fit_rounds(&rounds, 0.05, false).unwrap();
    assert_eq!(shapes.len(), grid.cost_points().len());
    let mut sq = 0.0;
    for (i, s) in shapes.iter().enumerate() {
        let truth = cost_of(&s.spec, x);
        let measured = if i == 1 { truth * 1.4 } else { truth };
        assert!((s.observation.cost_ms - measured).abs() < 1e-9 * measured);
        let fitted = fit.predict(&s.observation);
        assert!((s.fitted_ms - fitted).abs() < 1e-12);
        let e = (fitted - measured) / measured;
        assert!((s.relative_error - e).abs() < 1e-12, "{s:?}");
        sq += e * e;
        // The cost noise over the rounds: sd / mean.
        let want = if i == 1 {
            (0.2f64 / 2f64.sqrt()) / 1.4
        } else {
            0.0
        };
        assert!(
            (s.cost_spread - want).abs() < 1e-9,
            "{i}: {}",
            s.cost_spread
        );
    }
    let rms = (sq / shapes.len() as f64).sqrt();
    assert!((fit.relative_rms - rms).abs() < 1e-12);
    // The outlier has the largest error: the fit prices it below what it measured.
    let worst = shapes
        .iter()
        .max_by(|a, b| a.relative_error.abs().total_cmp(&b.relative_error.abs()))
        .unwrap();
    assert_eq!(worst.spec, shapes[1].spec);
    assert!(worst.relative_error < -0.05);
    assert!((fit.max_relative - worst.relative_error.abs()).abs() < 1e-12);
    // Its median (1.4) has a standard error of about 0.0707 / 1.4 (the median of two
    // draws from {1.3, 1.5} is 1.3, 1.4, 1.4 or 1.5): the error is far beyond it.
    assert!(
        (worst.cost_se - 0.0707 / 1.4).abs() < 0.1 * 0.0707 / 1.4,
        "{}",
        worst.cost_se
    );
    assert!(worst.misfit());
    let report = output::fit_report(&shapes, &fit, &st);
    let row = format!(
        "{:>10.3} {:>8} {:>10.3} {:>+6.1}% *",
        worst.observation.cost_ms,
        format!("±{:.1}%", worst.cost_spread * 100.0),
        worst.fitted_ms,
        worst.relative_error * 100.0
    );
    assert!(
        report.iter().any(|l| l.ends_with(&row)),
        "{row}\n{report:#?}"
    );
    let summary = format!(
        "relative RMS {:.2}%, max {:.2}% at in={} cached=0 out={}",
        rms * 100.0,
        fit.max_relative * 100.0,
        worst.spec.input,
        worst.spec.output
    );
    assert!(
        report.iter().any(|l| l.contains(&summary)),
        "{summary}\n{report:#?}"
    );
    assert!(
        report
            .iter()
            .any(|l| l.contains("(marked *) are off by more than twice")),
        "{report:#?}"
    );
}

/// `quick_sweep` with rounds.
fn rounds_sweep(min_rounds: usize, max_rounds: usize, tolerance: f64) -> SweepConfig {
    SweepConfig {
        rounds: RoundsConfig {
            min_rounds,
            max_rounds,
            tolerance,
        },
        capacity_concurrency: vec![8],
        capacity_max_concurrency: 8,
        // Three prompt lengths, one long: the attention term is then told apart from
        // the per-token one.
        inputs: vec![128, 1024, 8192],
        ..quick_sweep()
    }
}

#[tokio::test]
async fn a_noisy_engine_is_measured_until_the_coefficients_are_steady() {
    let params = EngineParams::default();
    let mut exact = Target::Virtual(VirtualEngine::new(params.clone(), MODEL, 21));
    let truth = calibrate(&mut exact, &rounds_sweep(1, 1, 0.05), &mut |_| {})
        .await
        .unwrap();
    let sweep = rounds_sweep(3, 20, 0.03);
    let mut noisy = Target::Virtual(VirtualEngine::new(params, MODEL, 22).with_noise(0.04));
    let mut log = Vec::new();
    let cal = calibrate(&mut noisy, &sweep, &mut |l| log.push(l))
        .await
        .unwrap();
    println!("{}", log.join("\n"));
    let st = &cal.steadiness;
    let n = cal.rounds.len();
    assert_eq!(st.rounds, n);
    assert_eq!(st.verdict, Verdict::Converged, "{}", log.join("\n"));
    assert!(
        (3..20).contains(&n),
        "{n} rounds: the noise needs more than one and fewer than 20"
    );
    // It stopped at the first steady round: one round fewer was not steady (unless that
    // was below the minimum).
    if n > 3 {
        let (_, _, before) = fit_rounds(&cal.rounds[..n - 1], 0.03, false).unwrap();
        assert!(!before.all_steady(), "{before:?}");
    }
    // Every coefficient is steady, and the per-round fits are the fits of each round
    // alone.
    for (j, c) in st.coefficients.iter().enumerate() {
        assert_eq!(c.per_round.len(), n);
        assert!(c.steady && c.spread > 0.0, "{c:?}");
        let alone = fit::fit(
            &cal.rounds[n - 1]
                .iter()
                .map(Measurement::observation)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let want = fit::coefficient_array(&alone.coefficients)[j];
        assert!((c.per_round[n - 1] - want).abs() <= 1e-12 * want.abs().max(1e-12));
    }
    // The estimates land within a few spreads of the noiseless engine's.
    let t = truth.fit.coefficients;
    let c = cal.fit.coefficients;
    for (j, (got, want)) in [(c.uncached_input, t.uncached_input), (c.output, t.output)]
        .into_iter()
        .enumerate()
    {
        let spread = st.coefficients[[0, 2][j]].spread;
        assert!(
            (got - want).abs() <= 4.0 * spread + 0.01 * want,
            "{got} vs {want} ± {spread}"
        );
    }
    assert!(log.iter().any(|l| l.contains(&format!("after {n} rounds"))));
    assert!(log
        .iter()
        .any(|l| l.contains(&format!("CONVERGED after {n} rounds"))));
}

#[tokio::test]
async fn too_much_noise_is_reported_as_not_converged() {
    let sweep = rounds_sweep(2, 3, 0.02);
    let base = Profile::default_profile();
    let mut noisy =
        Target::Virtual(VirtualEngine::new(base.engine.clone(), MODEL, 23).with_noise(0.4));
    let mut log = Vec::new();
    let cal = calibrate(&mut noisy, &sweep, &mut |l| log.push(l))
        .await
        .unwrap();
    assert_eq!(cal.rounds.len(), 3, "runs the most rounds allowed");
    assert_eq!(cal.steadiness.verdict, Verdict::NotConverged);
    assert!(!cal.steadiness.unsteady().is_empty());
    let report = log.join("\n");
    assert!(report.contains("did NOT converge in 3 rounds"), "{report}");
    // Each coefficient carries its spread, and the profile says it did not converge.
    assert!(report.contains("NOT steady"), "{report}");
    let text = output::profile_toml(&cal, &base, "the default profile", "test").unwrap();
    assert!(text.contains("did NOT converge"), "{text}");
    assert!(
        text.contains("Spread (standard deviation over bootstrap"),
        "{text}"
    );
}

#[tokio::test]
async fn a_sweep_longer_than_the_engine_accepts_is_refused_up_front() {
    let params = EngineParams {
        max_model_len: 2048,
        ..EngineParams::default()
    };
    let mut t = Target::Virtual(VirtualEngine::new(params, MODEL, 24));
    let mut log = Vec::new();
    let err = calibrate(&mut t, &SweepConfig::default(), &mut |l| log.push(l))
        .await
        .unwrap_err()
        .to_string();
    assert!(log.is_empty(), "nothing is measured: {log:?}");
    assert!(err.contains("at most 2048 tokens"), "{err}");
    assert!(err.contains("4096 + 32 (--inputs/--outputs)"), "{err}");
    assert!(
        err.contains("4096 + 128 (--cached-inputs/--cached-output)"),
        "{err}"
    );
    assert!(err.contains("16384 + 256 (--grid)"), "{err}");
    let no_grid = SweepConfig {
        grid: Vec::new(),
        ..SweepConfig::default()
    };
    let err = no_grid.check_lengths(2048).unwrap_err();
    assert!(
        err.contains("2048 + 256 (--capacity-input/--capacity-output)"),
        "{err}"
    );
    assert!(!err.contains("1024 + 512"), "1024 + 512 fits: {err}");
    SweepConfig::default().check_lengths(32768 + 512).unwrap();
}

/// A sweep whose cost part is small, for the capacity tests.
fn knee_sweep(levels: Vec<usize>, max: usize, slo_tpot_ms: f64) -> SweepConfig {
    SweepConfig {
        concurrency: 8,
        inputs: vec![128, 512],
        outputs: vec![16, 64],
        cached_fraction: 0.0,
        capacity_input: 512,
        capacity_output: 64,
        capacity_concurrency: levels,
        capacity_max_concurrency: max,
        slo_tpot_ms,
        grid: Vec::new(),
        ..SweepConfig::default()
    }
}

fn p90(cal: &Calibration, c: usize) -> f64 {
    cal.level_at(c).unwrap().measurement.tpot_p90_ms.unwrap()
}

#[tokio::test]
async fn the_capacity_sweep_finds_the_knee_of_the_engine_model() {
    // TPOT grows with the batch; with an SLO of 15 ms the knee is past the listed levels.
    let mut t = Target::Virtual(VirtualEngine::new(EngineParams::default(), MODEL, 25));
    let sweep = knee_sweep(vec![4, 8], 1024, 15.0);
    let mut log = Vec::new();
    let cal = calibrate(&mut t, &sweep, &mut |l| log.push(l))
        .await
        .unwrap();
    let report = log.join("\n");
    println!("{report}");
    let Some(CapacityStop::Knee { within, broken }) = cal.capacity_stop.clone() else {
        panic!("no knee: {report}");
    };
    assert!(
        within > 8,
        "the sweep went past its listed levels: {report}"
    );
    assert!(
        p90(&cal, within) <= 15.0 && p90(&cal, broken) > 15.0,
        "{report}"
    );
    // Two bisections narrowed the doubling bracket to a quarter of it.
    let bracket = cal
        .levels
        .iter()
        .map(|l| l.measurement.spec.concurrency)
        .filter(|&c| c.is_power_of_two() && c >= broken)
        .min()
        .unwrap();
    assert!(
        broken - within <= bracket / 2 / 4 + 1,
        "{within}..{broken}: {report}"
    );
    // Every level below the knee kept the SLO, every one above broke it.
    for l in &cal.levels {
        let c = l.measurement.spec.concurrency;
        assert_eq!(l.within_slo, c <= within, "C={c}: {report}");
    }
    let best = &cal.levels[cal.capacity_level.unwrap()];
    assert!(best.within_slo);
    assert!(report.contains(&format!(
        "knee found: p90 TPOT {:.1} ms at concurrency {within} keeps the 15 ms SLO",
        p90(&cal, within)
    )));
    assert!(!report.contains("sweep ended"));
    assert!(
        !report.contains("confirm"),
        "an exact engine needs no confirmation"
    );
}

#[tokio::test]
async fn on_a_noisy_engine_the_levels_that_turn_the_search_are_confirmed() {
    let mut t =
        Target::Virtual(VirtualEngine::new(EngineParams::default(), MODEL, 29).with_noise(0.1));
    let sweep = SweepConfig {
        rounds: RoundsConfig {
            min_rounds: 2,
            max_rounds: 2,
            ..RoundsConfig::default()
        },
        ..knee_sweep(vec![4, 8], 1024, 15.0)
    };
    let mut log = Vec::new();
    let cal = calibrate(&mut t, &sweep, &mut |l| log.push(l))
        .await
        .unwrap();
    let report = log.join("\n");
    println!("{report}");
    let Some(CapacityStop::Knee { broken, .. }) = cal.capacity_stop else {
        panic!("no knee: {report}");
    };
    // Every level over the SLO was measured twice, and the faster measurement kept.
    for l in cal.levels.iter().filter(|l| !l.within_slo) {
        let c = l.measurement.spec.concurrency;
        let lines: Vec<&String> = log
            .iter()
            .filter(|x| x.starts_with(&format!("  C={c:<4} ")))
            .collect();
        assert!(
            lines
                .iter()
                .any(|x| x.contains("measuring again to confirm")),
            "C={c}: {report}"
        );
        let rates: Vec<f64> = lines
            .iter()
            .filter_map(|x| x.split_whitespace().nth(1)?.parse().ok())
            .collect();
        assert_eq!(rates.len(), 2, "C={c}: {lines:?}");
        let kept = format!("{:.2}", l.measurement.throughput_rps);
        let best = format!("{:.2}", rates.iter().copied().fold(0.0f64, f64::max));
        assert_eq!(kept, best, "C={c}: {lines:?}");
    }
    assert!(cal.level_at(broken).is_some());
}

#[tokio::test]
async fn an_engine_that_queues_is_saturated_not_a_knee() {
    // The engine runs at most 8 sequences: past 8, requests queue and TPOT stays low.
    let params = EngineParams {
        max_num_seqs: 8,
        ..EngineParams::default()
    };
    let mut t = Target::Virtual(VirtualEngine::new(params, MODEL, 26));
    let mut log = Vec::new();
    let cal = calibrate(&mut t, &knee_sweep(vec![4, 8], 1024, 1000.0), &mut |l| {
        log.push(l)
    })
    .await
    .unwrap();
    let report = log.join("\n");
    let Some(CapacityStop::Saturated { at, best }) = cal.capacity_stop else {
        panic!("not saturated: {report}");
    };
    // 16 and 32 both failed to raise throughput over 8 (or 16).
    assert_eq!(at, 32, "{report}");
    assert!(best == 8 || best == 16, "{report}");
    let d = cal
        .level_at(32)
        .unwrap()
        .measurement
        .decode_concurrency
        .unwrap();
    assert!((7.0..=9.0).contains(&d), "{d}");
    assert!(
        report.contains("knee not found: throughput stopped rising"),
        "{report}"
    );
    assert!(
        report.contains("decoded only about 8 requests at once"),
        "{report}"
    );
    // Stopped by the limit while the engine queues: said so, and not told to go higher.
    let params = EngineParams {
        max_num_seqs: 8,
        ..EngineParams::default()
    };
    let mut t = Target::Virtual(VirtualEngine::new(params, MODEL, 30));
    let mut log = Vec::new();
    let cal = calibrate(&mut t, &knee_sweep(vec![4, 16], 16, 1000.0), &mut |l| {
        log.push(l)
    })
    .await
    .unwrap();
    let report = log.join("\n");
    assert_eq!(
        cal.capacity_stop,
        Some(CapacityStop::Limit { max: 16 }),
        "{report}"
    );
    assert!(
        report.contains("the highest allowed, but there the engine decoded only about 8"),
        "{report}"
    );
    assert!(
        !report.contains("raise --capacity-max-concurrency"),
        "{report}"
    );
}

#[tokio::test]
async fn a_limit_below_the_knee_and_a_failing_level_are_named() {
    let mut t = Target::Virtual(VirtualEngine::new(EngineParams::default(), MODEL, 27));
    let mut log = Vec::new();
    let cal = calibrate(&mut t, &knee_sweep(vec![4], 16, 1000.0), &mut |l| {
        log.push(l)
    })
    .await
    .unwrap();
    assert_eq!(cal.capacity_stop, Some(CapacityStop::Limit { max: 16 }));
    let report = log.join("\n");
    assert!(
        report.contains("still within the 1000 ms SLO")
            && report.contains("at concurrency 16, the highest allowed"),
        "{report}"
    );
    // A KV cache too small for the capacity shape: the engine refuses it.
    let params = EngineParams {
        kv_blocks: 36,
        ..EngineParams::default()
    };
    let mut t = Target::Virtual(VirtualEngine::new(params, MODEL, 28));
    let sweep = SweepConfig {
        inputs: vec![128],
        capacity_input: 1024,
        ..knee_sweep(vec![4], 16, 1000.0)
    };
    let mut log = Vec::new();
    let err = calibrate(&mut t, &sweep, &mut |l| log.push(l))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("concurrency 4 failed"), "{err}");
    assert!(log
        .iter()
        .any(|l| l.contains("C=4") && l.contains("failed")));
}

#[test]
fn prompts_found_in_the_prefix_cache_are_flagged() {
    let mut m = fake(PointSpec::new(128, 0, 16, 8), 25.0);
    assert!(!output::sample_line(&m).contains("WARNING"));
    // 17 of 44 requests hit a 128-token block left by an earlier run's prompts.
    m.cached_tokens = 49.45;
    let line = output::sample_line(&m);
    assert!(
        line.contains("WARNING: 49 prompt tokens per request"),
        "{line}"
    );
    // A cached-prefix point is meant to hit.
    let mut c = fake(PointSpec::new(1024, 768, 16, 8), 25.0);
    c.cached_tokens = 768.0;
    assert!(!output::sample_line(&c).contains("WARNING"));
}
