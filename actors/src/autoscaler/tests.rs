use super::*;
use proptest::prelude::*;

/// One replica's capacity in MU per minute, and the 70% of it `sluice` plans for.
const CAP: f64 = 80_000.0;
const PLAN: f64 = 0.7 * CAP;
/// Knative's tick.
const TICK: u64 = 2_000_000;

fn at(tick: u64, ready: usize, starting: usize) -> ScaleInputs {
    ScaleInputs {
        now_us: tick * TICK,
        ready,
        starting,
        mu_per_min: 0.0,
        in_flight_requests: 0.0,
        requests_per_s: 0.0,
        capacity_mu_per_min: CAP,
    }
}

fn mu(tick: u64, ready: usize, mu_per_min: f64) -> ScaleInputs {
    ScaleInputs {
        mu_per_min,
        ..at(tick, ready, 0)
    }
}

fn conc(tick: u64, ready: usize, in_flight: f64) -> ScaleInputs {
    ScaleInputs {
        in_flight_requests: in_flight,
        ..at(tick, ready, 0)
    }
}

fn rps(tick: u64, ready: usize, starting: usize, requests_per_s: f64) -> ScaleInputs {
    ScaleInputs {
        requests_per_s,
        ..at(tick, ready, starting)
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

// ---- sluice ----

#[test]
fn sluice_scales_up_within_one_tick_on_a_step() {
    let mut a = MuUtilization::new(&AutoscalerConfig {
        up_window_s: 2.0,
        ..cfg()
    });
    let b = bounds();
    assert_eq!(a.decide(&mu(0, 2, 2.0 * PLAN), &b), 2);
    assert_eq!(a.decide(&mu(1, 2, 10.0 * PLAN), &b), 10);
}

#[test]
fn sluice_with_the_default_window_rises_on_the_first_tick_and_reaches_the_need() {
    let mut a = MuUtilization::new(&cfg());
    let b = bounds();
    let mut t = 0;
    for _ in 0..15 {
        assert_eq!(a.decide(&mu(t, 2, 2.0 * PLAN), &b), 2);
        t += 1;
    }
    let mut seen = Vec::new();
    for _ in 0..15 {
        seen.push(a.decide(&mu(t, 2, 10.0 * PLAN), &b));
        t += 1;
    }
    assert!(seen[0] > 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    // 30 s of the new load fill the window.
    assert_eq!(*seen.last().unwrap(), 10, "{seen:?}");
}

#[test]
fn sluice_scales_down_only_after_the_long_window() {
    // The window is a cold start long unless set: both ways.
    for (c, window_us) in [
        (cfg(), 60_000_000),
        (
            AutoscalerConfig {
                down_window_s: Some(300.0),
                ..cfg()
            },
            300_000_000,
        ),
    ] {
        let mut a = MuUtilization::new(&AutoscalerConfig {
            up_window_s: 2.0,
            ..c
        });
        let b = bounds();
        assert_eq!(a.decide(&mu(0, 10, 10.0 * PLAN), &b), 10);
        let mut t = 1;
        while t * TICK < window_us {
            assert_eq!(a.decide(&mu(t, 10, 3.0 * PLAN), &b), 10, "at {} s", t * 2);
            t += 1;
        }
        // The 10 is now a full window old.
        assert_eq!(a.decide(&mu(t, 10, 3.0 * PLAN), &b), 3);
    }
}

#[test]
fn sluice_does_not_add_while_cold_starts_are_pending_for_the_same_demand() {
    let mut a = MuUtilization::new(&AutoscalerConfig {
        up_window_s: 2.0,
        ..cfg()
    });
    let b = bounds();
    assert_eq!(a.decide(&mu(0, 2, 10.0 * PLAN), &b), 10);
    // Eight replicas are starting; demand unchanged: the target stays 10, not 18.
    for t in 1..30 {
        let i = ScaleInputs {
            starting: 8,
            ..mu(t, 2, 10.0 * PLAN)
        };
        assert_eq!(a.decide(&i, &b), 10);
    }
}

#[test]
fn sluice_respects_min_and_the_reservation_floor() {
    let mut a = MuUtilization::new(&cfg());
    let b = ScaleBounds {
        min: 2,
        max: 5,
        reserved_floor: 3,
    };
    assert_eq!(a.decide(&mu(0, 1, 0.0), &b), 3);
    assert_eq!(a.decide(&mu(1, 3, 1e9), &b), 5);
    // A reservation floor above max still wins: reserved capacity is a promise.
    let over = ScaleBounds {
        min: 0,
        max: 2,
        reserved_floor: 4,
    };
    assert_eq!(a.decide(&mu(2, 3, 0.0), &over), 4);
}

#[test]
fn sluice_holds_the_count_when_capacity_is_unknown() {
    let mut a = MuUtilization::new(&cfg());
    let i = ScaleInputs {
        capacity_mu_per_min: 0.0,
        starting: 2,
        ..mu(0, 3, 1e6)
    };
    assert_eq!(a.decide(&i, &bounds()), 5);
}

// ---- kpa ----

#[test]
fn kpa_panics_on_a_3x_burst_and_does_not_scale_down_during_it() {
    let mut k = Kpa::new(&cfg());
    let b = bounds();
    // Steady 140 in flight against a target of 70 a pod: 2 pods.
    let mut t = 0;
    for _ in 0..40 {
        assert_eq!(k.decide(&conc(t, 2, 140.0), &b), 2);
        t += 1;
    }
    assert!(!k.panicking());
    // A 3x burst: the 6 s panic window sees it at once (ceil(233/70) / 2 >= 2).
    let mut during = Vec::new();
    for _ in 0..5 {
        during.push(k.decide(&conc(t, 2, 420.0), &b));
        assert!(k.panicking());
        t += 1;
    }
    assert!(during.windows(2).all(|w| w[0] <= w[1]), "{during:?}");
    assert_eq!(*during.last().unwrap(), 6);
    // The burst ends: no scale-down while in panic, which lasts a stable window.
    let mut ready = 6;
    for _ in 0..29 {
        ready = k.decide(&conc(t, ready, 140.0), &b);
        assert_eq!(ready, 6, "scaled down in panic at tick {t}");
        assert!(k.panicking());
        t += 1;
    }
    for _ in 0..10 {
        ready = k.decide(&conc(t, ready, 140.0), &b);
        t += 1;
    }
    assert!(!k.panicking());
    assert_eq!(ready, 2);
}

#[test]
fn kpa_scale_down_is_limited_by_the_max_scale_down_rate() {
    let mut k = Kpa::new(&cfg());
    let b = bounds();
    // A core that first sees 20 ready pods starts in panic holding them for a stable
    // window, as Knative's does after an autoscaler restart.
    let mut t = 0;
    while t * TICK <= 60_000_000 {
        assert_eq!(k.decide(&conc(t, 20, 0.0), &b), 20);
        t += 1;
    }
    // Then, with no load, at most halved per decision.
    let mut ready = 20;
    let mut seen = Vec::new();
    for _ in 0..5 {
        ready = k.decide(&conc(t, ready, 0.0), &b);
        seen.push(ready);
        t += 1;
    }
    assert_eq!(seen, vec![10, 5, 2, 1, 1]);
}

#[test]
fn kpa_scale_up_is_limited_by_the_max_scale_up_rate() {
    let mut k = Kpa::new(&AutoscalerConfig {
        kpa_max_scale_up_rate: 2.0,
        ..cfg()
    });
    let b = bounds();
    assert_eq!(k.decide(&conc(0, 1, 700.0), &b), 2);
    assert_eq!(k.decide(&conc(1, 2, 700.0), &b), 4);
    assert_eq!(k.decide(&conc(2, 4, 700.0), &b), 8);
    assert_eq!(k.decide(&conc(3, 8, 700.0), &b), 10);
}

#[test]
fn kpa_scale_down_delay_keeps_the_largest_count_of_the_delay_window() {
    // A high panic threshold keeps this in stable mode.
    let base = AutoscalerConfig {
        kpa_panic_threshold: 10.0,
        ..cfg()
    };
    let mut plain = Kpa::new(&base);
    let mut delayed = Kpa::new(&AutoscalerConfig {
        kpa_scale_down_delay_s: 30.0,
        ..base
    });
    let b = bounds();
    let load = |t: u64| if t < 40 { 700.0 } else { 70.0 };
    let mut undelayed = Vec::new();
    for t in 0..120 {
        let i = conc(t, 10, load(t));
        let u = plain.decide(&i, &b);
        undelayed.push(u);
        let from = (t as usize).saturating_sub(14);
        let expect = *undelayed[from..].iter().max().unwrap();
        assert_eq!(delayed.decide(&i, &b), expect, "tick {t}");
    }
    assert!(undelayed[60] < 10);
}

// ---- request-rate (HPA) ----

fn hpa(target: f64) -> RequestRate {
    RequestRate::new(&AutoscalerConfig {
        target_rps_per_replica: target,
        ..cfg()
    })
}

#[test]
fn hpa_keeps_the_count_within_the_tolerance_band() {
    let b = bounds();
    // 4 ready against 10 rps each.
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 0, 42.0), &b), 4); // ratio 1.05
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 0, 43.6), &b), 4); // 1.09
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 0, 36.4), &b), 4); // 0.91
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 0, 46.0), &b), 5); // 1.15: ceil(4.6)
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 0, 20.0), &b), 2); // 0.5, nothing to stabilize
}

#[test]
fn hpa_acts_only_every_sync_period_and_limits_scale_up() {
    let mut h = hpa(10.0);
    let b = bounds();
    assert_eq!(h.decide(&rps(0, 4, 0, 40.0), &b), 4);
    // Between syncs (15 s) nothing changes.
    for t in 1..8 {
        assert_eq!(h.decide(&rps(t, 4, 0, 1000.0), &b), 4);
    }
    // At 16 s: scale-up capped at max(100%, 4 pods) = 8.
    assert_eq!(h.decide(&rps(8, 4, 0, 1000.0), &b), 8);
    // From 1 replica, the 4-pod policy is the larger: 5.
    assert_eq!(hpa(10.0).decide(&rps(0, 1, 0, 1000.0), &b), 5);
}

#[test]
fn hpa_rate_limits_count_from_the_start_of_the_policy_period() {
    let mut h = RequestRate::new(&AutoscalerConfig {
        target_rps_per_replica: 10.0,
        hpa_sync_period_s: 5.0,
        ..cfg()
    });
    let b = bounds();
    // Syncs at 0, 6, 12, 18 s: the +4 made at 0 s counts against the period until 15 s.
    let got: Vec<usize> = [0, 3, 6, 9]
        .iter()
        .map(|&t| h.decide(&rps(t, 4, 0, 1000.0), &b))
        .collect();
    assert_eq!(got, vec![8, 8, 8, 16]);
}

#[test]
fn hpa_scale_down_waits_for_the_stabilization_window() {
    let mut h = hpa(10.0);
    let b = bounds();
    assert_eq!(h.decide(&rps(0, 10, 0, 100.0), &b), 10);
    let mut t = 1;
    let mut ready = 10;
    while t * TICK < 300_000_000 {
        ready = h.decide(&rps(t, ready, 0, 30.0), &b);
        assert_eq!(ready, 10, "at {} s", t * 2);
        t += 1;
    }
    while t * TICK < 400_000_000 {
        ready = h.decide(&rps(t, ready, 0, 30.0), &b);
        t += 1;
    }
    assert_eq!(ready, 3);
}

#[test]
fn hpa_counts_starting_replicas_as_missing_pods() {
    let b = bounds();
    // 4 ready serving 60 rps (ratio 1.5) would want 6; with 4 more starting (counted as
    // idle) the ratio is 0.75, a flip of direction: hold 8.
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 0, 60.0), &b), 6);
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 4, 60.0), &b), 8);
    // A real surge still scales past them: 200 rps over 8 pods wants 20, capped at 16.
    assert_eq!(hpa(10.0).decide(&rps(0, 4, 4, 200.0), &b), 16);
    // No ready replica, no metric: the HPA holds.
    assert_eq!(hpa(10.0).decide(&rps(0, 0, 3, 500.0), &b), 3);
}

#[test]
fn hpa_keeps_at_least_one_replica() {
    let b = ScaleBounds {
        min: 0,
        max: 10,
        reserved_floor: 0,
    };
    assert_eq!(hpa(10.0).decide(&rps(0, 2, 0, 0.0), &b), 1);
}

// ---- config and names ----

#[test]
fn defaults_are_the_sources_and_valid() {
    let c = cfg();
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(
        (c.target_utilization, c.up_window_s, c.down_window_s()),
        (0.7, 30.0, 60.0)
    );
    // Idle capacity is held as long as a cold start takes, unless told otherwise.
    let slow = AutoscalerConfig {
        cold_start_s: 180.0,
        ..cfg()
    };
    assert_eq!(slow.down_window_s(), 180.0);
    let set = AutoscalerConfig {
        down_window_s: Some(300.0),
        ..slow
    };
    assert_eq!(set.down_window_s(), 300.0);
    assert_eq!(
        (c.kpa_target_concurrency, c.kpa_target_utilization),
        (100.0, 0.7)
    );
    assert_eq!(
        (c.kpa_stable_window_s, c.kpa_panic_window_pct),
        (60.0, 10.0)
    );
    assert_eq!(
        (c.kpa_panic_threshold, c.kpa_scale_down_delay_s),
        (2.0, 0.0)
    );
    assert_eq!(
        (c.kpa_max_scale_up_rate, c.kpa_max_scale_down_rate),
        (1000.0, 2.0)
    );
    assert_eq!(
        (c.target_rps_per_replica, c.hpa_sync_period_s),
        (200.0, 15.0)
    );
    assert_eq!((c.hpa_tolerance, c.hpa_down_stabilization_s), (0.1, 300.0));
    assert_eq!((c.hpa_scale_up_pods, c.hpa_scale_up_percent), (4, 100));
}

#[test]
fn nonsense_settings_are_rejected_by_name() {
    type Edit = fn(&mut AutoscalerConfig);
    let cases: &[(&str, Edit)] = &[
        ("target_utilization", |c| c.target_utilization = 0.0),
        ("target_utilization", |c| c.target_utilization = 1.5),
        ("target_utilization", |c| c.target_utilization = f64::NAN),
        ("up_window_s", |c| c.up_window_s = 0.0),
        ("down_window_s", |c| c.down_window_s = Some(-1.0)),
        ("cold_start_s", |c| c.cold_start_s = -1.0),
        ("kpa_target_concurrency", |c| c.kpa_target_concurrency = 0.0),
        ("kpa_target_utilization", |c| c.kpa_target_utilization = 0.0),
        ("kpa_stable_window_s", |c| c.kpa_stable_window_s = 0.0),
        ("kpa_panic_window_pct", |c| c.kpa_panic_window_pct = 0.0),
        ("kpa_panic_threshold", |c| c.kpa_panic_threshold = 1.0),
        ("kpa_max_scale_up_rate", |c| c.kpa_max_scale_up_rate = 1.0),
        ("kpa_max_scale_down_rate", |c| {
            c.kpa_max_scale_down_rate = 0.5
        }),
        ("kpa_scale_down_delay_s", |c| {
            c.kpa_scale_down_delay_s = -2.0
        }),
        ("target_rps_per_replica", |c| c.target_rps_per_replica = 0.0),
        ("hpa_sync_period_s", |c| c.hpa_sync_period_s = 0.0),
        ("hpa_tolerance", |c| c.hpa_tolerance = 1.0),
        ("hpa_metric_window_s", |c| c.hpa_metric_window_s = 0.0),
        ("hpa_down_stabilization_s", |c| {
            c.hpa_down_stabilization_s = f64::INFINITY
        }),
        ("hpa_scale_up_pods", |c| c.hpa_scale_up_pods = 0),
        ("hpa_scale_down_percent", |c| c.hpa_scale_down_percent = 101),
        ("hpa_scale_up_period_s", |c| c.hpa_scale_up_period_s = 0.0),
    ];
    for (name, edit) in cases {
        let mut c = cfg();
        edit(&mut c);
        let err = c.validate().expect_err(name).to_string();
        assert!(err.contains(name), "{name}: {err}");
        // by_name checks too.
        assert!(by_name("sluice", &c, 4).is_err());
    }
}

#[test]
fn the_toml_section_takes_defaults_and_rejects_unknown_keys() {
    let c: AutoscalerConfig =
        toml::from_str("target_utilization = 0.5\nkpa_target_concurrency = 8.0").unwrap();
    assert_eq!(
        c,
        AutoscalerConfig {
            target_utilization: 0.5,
            kpa_target_concurrency: 8.0,
            ..cfg()
        }
    );
    assert!(toml::from_str::<AutoscalerConfig>("target_utilisation = 0.5").is_err());
}

#[test]
fn names_resolve_and_unknown_ones_say_so() {
    for n in NAMES {
        assert_eq!(by_name(n, &cfg(), 8).unwrap().name(), *n);
    }
    let e = by_name("hpa", &cfg(), 8).err().unwrap().to_string();
    assert!(e.contains("'hpa'") && e.contains("request-rate"), "{e}");
    let b = bounds();
    let mut s = by_name("static-peak", &cfg(), 8).unwrap();
    assert_eq!(s.decide(&mu(0, 1, 1e9), &b), 8);
    let c = AutoscalerConfig {
        static_replicas: Some(5),
        ..cfg()
    };
    let mut s = by_name("static-peak", &c, 8).unwrap();
    assert_eq!(s.decide(&mu(0, 1, 0.0), &b), 5);
}

// ---- properties ----

fn each(c: &AutoscalerConfig) -> Vec<Box<dyn Autoscaler>> {
    NAMES.iter().map(|n| by_name(n, c, 50).unwrap()).collect()
}

/// Small targets so modest random loads span many replicas.
fn small_targets() -> AutoscalerConfig {
    AutoscalerConfig {
        target_rps_per_replica: 5.0,
        kpa_target_concurrency: 8.0,
        ..cfg()
    }
}

type Tick = (f64, f64, f64, usize, usize);

fn ticks() -> impl Strategy<Value = Vec<Tick>> {
    proptest::collection::vec(
        (
            0.0f64..2e6,
            0.0f64..500.0,
            0.0f64..300.0,
            0usize..60,
            0usize..10,
        ),
        1..120,
    )
}

fn observe(t: usize, &(mu, conc, rps, ready, starting): &Tick) -> ScaleInputs {
    ScaleInputs {
        now_us: t as u64 * TICK,
        ready,
        starting,
        mu_per_min: mu,
        in_flight_requests: conc,
        requests_per_s: rps,
        capacity_mu_per_min: CAP,
    }
}

proptest! {
    #[test]
    fn always_within_bounds_and_deterministic(
        seq in ticks(), min in 0usize..5, extra in 0usize..40, floor in 0usize..8,
    ) {
        let b = ScaleBounds { min, max: min + extra, reserved_floor: floor };
        let lo = b.floor();
        let hi = b.max.max(lo);
        let mut x = each(&small_targets());
        let mut y = each(&small_targets());
        for (t, tick) in seq.iter().enumerate() {
            let i = observe(t, tick);
            for (a, a2) in x.iter_mut().zip(y.iter_mut()) {
                let d = a.decide(&i, &b);
                prop_assert_eq!(d, a2.decide(&i, &b), "{} not deterministic", a.name());
                prop_assert!(lo <= d && d <= hi, "{}: {} outside [{}, {}]", a.name(), d, lo, hi);
            }
        }
    }

    #[test]
    fn kpa_never_scales_down_in_panic(seq in ticks()) {
        let mut k = Kpa::new(&small_targets());
        let b = bounds();
        let mut last: Option<usize> = None;
        for (t, tick) in seq.iter().enumerate() {
            let d = k.decide(&observe(t, tick), &b);
            if k.panicking() {
                if let Some(prev) = last {
                    prop_assert!(d >= prev, "panic scale-down {} -> {}", prev, d);
                }
                last = Some(d);
            } else {
                last = None;
            }
        }
    }

    #[test]
    fn sluice_needs_more_for_more_mu(mu_per_min in 0.0f64..5e6, more in 0.0f64..5e6) {
        let b = bounds();
        let d1 = MuUtilization::new(&cfg()).decide(&mu(0, 1, mu_per_min), &b);
        let d2 = MuUtilization::new(&cfg()).decide(&mu(0, 1, mu_per_min + more), &b);
        prop_assert!(d2 >= d1);
    }

    #[test]
    fn constant_load_reaches_a_fixed_point(
        mu_per_min in 0.0f64..3e6, in_flight in 0.0f64..400.0, rate in 0.0f64..400.0,
        start in 1usize..60,
    ) {
        let b = bounds();
        let c = AutoscalerConfig {
            target_rps_per_replica: 10.0,
            kpa_target_concurrency: 10.0,
            ..cfg()
        };
        for mut a in each(&c) {
            // The fleet follows each decision at once.
            let mut ready = start;
            let mut seen = Vec::new();
            for t in 0..600u64 {
                let i = ScaleInputs {
                    mu_per_min,
                    in_flight_requests: in_flight,
                    requests_per_s: rate,
                    ..at(t, ready, 0)
                };
                ready = a.decide(&i, &b);
                seen.push(ready);
            }
            let tail = &seen[seen.len() - 60..];
            prop_assert!(
                tail.iter().all(|&d| d == tail[0]),
                "{} did not settle: {:?}", a.name(), tail
            );
        }
    }
}
