use super::*;
use proptest::prelude::*;

const CAP: f64 = 80_000.0;
const TICK: u64 = 2_000_000;

fn inputs(t: u64, ready: usize, mu: f64, conc: f64, rps: f64) -> ScaleInputs {
    ScaleInputs {
        now_us: t * TICK,
        ready,
        starting: 0,
        mu_per_min: mu,
        in_flight_requests: conc,
        requests_per_s: rps,
        capacity_mu_per_min: CAP,
    }
}

fn bounds() -> ScaleBounds {
    ScaleBounds {
        min: 1,
        max: 100,
        reserved_floor: 0,
    }
}

fn cfg() -> AutoscalerConfig {
    AutoscalerConfig::default()
}

#[test]
fn sluice_scales_up_at_once_and_down_only_after_the_long_window() {
    let mut a = MuUtilization::new(&AutoscalerConfig {
        up_window_s: 2.0,
        ..cfg()
    });
    let b = bounds();
    // 2 replicas' worth at 70%: 2.
    assert_eq!(a.decide(&inputs(0, 2, 2.0 * 0.7 * CAP, 0.0, 0.0), &b), 2);
    // A step to 10 replicas' worth: within one tick.
    assert_eq!(a.decide(&inputs(1, 2, 10.0 * 0.7 * CAP, 0.0, 0.0), &b), 10);
    // Load drops: the count holds for the 300 s window, then follows.
    let mut t = 2;
    let mut last = 0;
    while t * TICK < 300_000_000 {
        last = a.decide(&inputs(t, 10, 3.0 * 0.7 * CAP, 0.0, 0.0), &b);
        assert_eq!(last, 10, "at {} s", t * 2);
        t += 1;
    }
    for _ in 0..3 {
        last = a.decide(&inputs(t, 10, 3.0 * 0.7 * CAP, 0.0, 0.0), &b);
        t += 1;
    }
    assert_eq!(last, 3);
}

#[test]
fn floors_and_bounds_hold() {
    let mut a = MuUtilization::new(&cfg());
    let b = ScaleBounds {
        min: 2,
        max: 5,
        reserved_floor: 3,
    };
    assert_eq!(a.decide(&inputs(0, 1, 0.0, 0.0, 0.0), &b), 3);
    assert_eq!(a.decide(&inputs(1, 1, 1e9, 0.0, 0.0), &b), 5);
    // A reservation floor above max still wins: reserved capacity is a promise.
    let over = ScaleBounds {
        min: 0,
        max: 2,
        reserved_floor: 4,
    };
    assert_eq!(over.clamp(0), 4);
}

#[test]
fn kpa_panics_on_a_burst_and_does_not_scale_down_during_it() {
    let mut k = Kpa::new(&cfg());
    let b = bounds();
    // Steady 140 in flight with target 70 per pod: 2 pods.
    let mut t = 0;
    for _ in 0..40 {
        assert_eq!(k.decide(&inputs(t, 2, 0.0, 140.0, 0.0), &b), 2);
        t += 1;
    }
    // A 3x burst: the 6 s panic window sees it first; 6/2 >= 2 → panic.
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(k.decide(&inputs(t, 2, 0.0, 420.0, 0.0), &b));
        t += 1;
    }
    assert!(k.panicking());
    assert_eq!(*during.last().unwrap(), 6);
    // The burst ends: in panic the count does not go down for a stable window.
    let mut ready = 6;
    for _ in 0..25 {
        let d = k.decide(&inputs(t, ready, 0.0, 140.0, 0.0), &b);
        assert!(d >= 6, "scaled down to {d} in panic");
        ready = d;
        t += 1;
    }
    for _ in 0..40 {
        ready = k.decide(&inputs(t, ready, 0.0, 140.0, 0.0), &b);
        t += 1;
    }
    assert!(!k.panicking());
    assert_eq!(ready, 2);
}

#[test]
fn kpa_scale_down_is_limited_by_the_max_scale_down_rate() {
    let mut k = Kpa::new(&cfg());
    let b = bounds();
    // 20 ready pods, load gone: at most halved per decision.
    assert_eq!(k.decide(&inputs(0, 20, 0.0, 0.0, 0.0), &b), 10);
}

#[test]
fn hpa_keeps_the_count_inside_the_tolerance_and_limits_scale_up() {
    let c = AutoscalerConfig {
        target_rps_per_replica: 10.0,
        ..cfg()
    };
    let mut h = RequestRate::new(&c);
    let b = bounds();
    // 4 ready at 42 rps (ratio 1.05): inside the 10% band.
    assert_eq!(h.decide(&inputs(0, 4, 0.0, 0.0, 42.0), &b), 4);
    // Between syncs (15 s) nothing changes.
    assert_eq!(h.decide(&inputs(1, 4, 0.0, 0.0, 1000.0), &b), 4);
    // At the next sync the 1-minute rate is high; scale-up capped at max(2x, +4) = 8.
    let mut t = 2;
    let mut d = 4;
    while t * TICK <= 16_000_000 {
        d = h.decide(&inputs(t, 4, 0.0, 0.0, 1000.0), &b);
        t += 1;
    }
    assert_eq!(d, 8);
}

#[test]
fn names_and_config_errors() {
    for n in NAMES {
        assert_eq!(by_name(n, &cfg(), 8).unwrap().name(), *n);
    }
    let e = by_name("hpa", &cfg(), 8).err().unwrap();
    assert!(e.to_string().contains("hpa"));
    let bad = AutoscalerConfig {
        target_utilization: 0.0,
        ..cfg()
    };
    assert!(by_name("sluice", &bad, 8)
        .err()
        .unwrap()
        .to_string()
        .contains("target_utilization"));
    let mut s = by_name("static-peak", &cfg(), 8).unwrap();
    assert_eq!(s.decide(&inputs(0, 1, 0.0, 0.0, 0.0), &bounds()), 8);
}

fn each(c: &AutoscalerConfig) -> Vec<Box<dyn Autoscaler>> {
    NAMES.iter().map(|n| by_name(n, c, 50).unwrap()).collect()
}

proptest! {
    #[test]
    fn always_within_bounds_and_deterministic(
        seq in proptest::collection::vec((0.0f64..2e6, 0.0f64..500.0, 0.0f64..300.0, 0usize..60), 1..80),
        min in 0usize..5, extra in 0usize..40, floor in 0usize..8,
    ) {
        let b = ScaleBounds { min, max: min + extra, reserved_floor: floor };
        let c = AutoscalerConfig { target_rps_per_replica: 5.0, kpa_target_concurrency: 8.0, ..cfg() };
        let mut x = each(&c);
        let mut y = each(&c);
        for (t, &(mu, conc, rps, ready)) in seq.iter().enumerate() {
            let i = inputs(t as u64, ready, mu, conc, rps);
            for (a, b2) in x.iter_mut().zip(y.iter_mut()) {
                let d = a.decide(&i, &b);
                prop_assert_eq!(d, b2.decide(&i, &b));
                prop_assert!(d <= b.max.max(b.min.max(b.reserved_floor)));
                prop_assert!(d >= b.min.max(b.reserved_floor));
            }
        }
    }

    #[test]
    fn sluice_needs_more_for_more_mu(mu in 0.0f64..5e6, more in 0.0f64..5e6) {
        let b = bounds();
        let d1 = MuUtilization::new(&cfg()).decide(&inputs(0, 1, mu, 0.0, 0.0), &b);
        let d2 = MuUtilization::new(&cfg()).decide(&inputs(0, 1, mu + more, 0.0, 0.0), &b);
        prop_assert!(d2 >= d1);
    }

    #[test]
    fn constant_load_reaches_a_fixed_point(mu in 0.0f64..3e6, conc in 0.0f64..400.0, rps in 0.0f64..400.0) {
        let b = bounds();
        let c = AutoscalerConfig { target_rps_per_replica: 10.0, kpa_target_concurrency: 10.0, ..cfg() };
        for mut a in each(&c) {
            let mut ready = 1;
            let mut seen = Vec::new();
            for t in 0..600u64 {
                ready = a.decide(&inputs(t, ready, mu, conc, rps), &b);
                seen.push(ready);
            }
            let tail = &seen[seen.len() - 30..];
            prop_assert!(tail.iter().all(|&d| d == tail[0]), "{} did not settle: {:?}", a.name(), tail);
        }
    }
}
