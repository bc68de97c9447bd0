use super::hang::StallDetector;
use super::*;
use proptest::prelude::*;

const IDLE: u64 = 5_000;
const TIMEOUT: u64 = 5_000;
const STALL: u64 = 10_000;

fn r(i: u64) -> ReplicaId {
    ReplicaId(i)
}

fn core(n: u64) -> ProberCore {
    let mut c = ProberCore::new(ProbeConfig::default()).unwrap();
    let ids: Vec<_> = (0..n).map(r).collect();
    assert!(c.set_replicas(&ids, 0).is_empty());
    c
}

fn unhealthy(c: &ProberCore) -> Vec<ReplicaId> {
    c.verdicts()
        .filter(|(_, v)| !v.in_service())
        .map(|(r, _)| r)
        .collect()
}

/// Probes `replica` at `now` (it must be due) and answers at once.
fn probe_once(c: &mut ProberCore, replica: ReplicaId, ok: bool, now: u64) -> Vec<VerdictChange> {
    let tick = c.tick(now);
    let p = *tick
        .probes
        .iter()
        .find(|p| p.replica == replica)
        .expect("probe due");
    c.on_probe_result(p, ok, now)
}

#[test]
fn defaults_validate_and_bad_values_are_named() {
    assert_eq!(ProbeConfig::default().validate(), Ok(()));
    let bad = [
        ProbeConfig {
            idle_window_ms: 0,
            ..Default::default()
        },
        ProbeConfig {
            failures_to_eject: 0,
            ..Default::default()
        },
        ProbeConfig {
            probe_timeout_ms: 0,
            ..Default::default()
        },
        ProbeConfig {
            stall_window_ms: 0,
            ..Default::default()
        },
        ProbeConfig {
            max_ejected_share: 0.0,
            ..Default::default()
        },
        ProbeConfig {
            idle_busy_share: -0.1,
            ..Default::default()
        },
        ProbeConfig {
            idle_busy_share: f64::NAN,
            ..Default::default()
        },
        ProbeConfig {
            max_ejected_share: 1.5,
            ..Default::default()
        },
        ProbeConfig {
            retry_budget_ratio: f64::NAN,
            ..Default::default()
        },
        ProbeConfig {
            retry_budget_min_per_s: -1.0,
            ..Default::default()
        },
    ];
    for config in bad {
        let err = ProberCore::new(config.clone()).unwrap_err();
        assert!(err.to_string().starts_with("prober setting "), "{err}");
    }
    let parsed: ProbeConfig = toml::from_str("idle_window_ms = 2000").unwrap();
    assert_eq!(parsed.idle_window_ms, 2000);
    assert_eq!(parsed.failures_to_eject, 3);
    assert!(toml::from_str::<ProbeConfig>("idle_window = 2").is_err());
}

#[test]
fn max_ejected_is_a_share_but_at_least_one() {
    let c = ProbeConfig::default();
    let got: Vec<_> = [0, 1, 2, 3, 5, 6, 9, 10, 100]
        .iter()
        .map(|&n| c.max_ejected(n))
        .collect();
    assert_eq!(got, [0, 1, 1, 1, 1, 2, 3, 3, 34]);
    let all = ProbeConfig {
        max_ejected_share: 1.0,
        ..Default::default()
    };
    assert_eq!(all.max_ejected(7), 7);
}

#[test]
fn idle_replica_is_probed_once_per_window_with_a_probe_that_jumps_the_queue() {
    let mut c = core(1);
    assert!(
        c.tick(IDLE - 1).probes.is_empty(),
        "new replicas get a window"
    );
    let tick = c.tick(IDLE);
    assert_eq!(tick.probes.len(), 1);
    assert!(c.tick(IDLE + 1).probes.is_empty(), "one probe at a time");
    assert!(c
        .on_probe_result(tick.probes[0], true, IDLE + 20)
        .is_empty());
    assert!(c.tick(2 * IDLE).probes.is_empty(), "the success proved it");
    assert_eq!(c.tick(2 * IDLE + 20).probes.len(), 1);
    const _: () = assert!(PROBE_PRIORITY == i64::MIN && PROBE_MAX_TOKENS == 1);
}

#[test]
fn real_successes_keep_probes_away() {
    let mut c = core(2);
    for t in (0..60_000).step_by(1_000) {
        c.on_real_outcome(r(0), RealOutcome::Success, t);
        let probes = c.tick(t).probes;
        assert!(probes.iter().all(|p| p.replica != r(0)), "at {t}");
    }
}

#[test]
fn k_failures_in_a_row_eject_and_a_success_between_forgives() {
    let mut c = core(1);
    assert!(probe_once(&mut c, r(0), false, IDLE).is_empty());
    assert!(probe_once(&mut c, r(0), false, 2 * IDLE).is_empty());
    assert!(probe_once(&mut c, r(0), true, 3 * IDLE).is_empty());
    assert!(probe_once(&mut c, r(0), false, 5 * IDLE).is_empty());
    assert!(probe_once(&mut c, r(0), false, 6 * IDLE).is_empty());
    assert_eq!(c.verdict(r(0)), Some(Verdict::Healthy));
    let changes = probe_once(&mut c, r(0), false, 7 * IDLE);
    let ejected = Verdict::Unhealthy {
        since_ms: 7 * IDLE,
        reason: Reason::ProbesFailed,
    };
    assert_eq!(
        changes,
        [VerdictChange {
            replica: r(0),
            verdict: ejected
        }]
    );
    assert_eq!(c.verdict(r(0)), Some(ejected));
    assert!(c.tick(20 * IDLE).probes.iter().all(|p| p.replica != r(0)));
}

#[test]
fn fast_failures_are_not_retried_in_a_tight_loop() {
    let mut c = core(1);
    let p = c.tick(IDLE).probes[0];
    c.on_probe_result(p, false, IDLE + 1);
    assert!(c.tick(IDLE + 2).probes.is_empty());
    assert!(c.tick(2 * IDLE - 1).probes.is_empty());
    assert_eq!(c.tick(2 * IDLE).probes.len(), 1);
}

#[test]
fn unanswered_and_late_probes_fail_and_stale_answers_are_ignored() {
    let mut c = core(2);
    let first = c.tick(IDLE).probes;
    // r0's probe is never answered: the tick past its timeout fails it.
    assert!(c.tick(IDLE + TIMEOUT).probes.is_empty());
    let second = c.tick(IDLE + TIMEOUT + 1).probes;
    assert_eq!(second.len(), 2, "both timed out and are probed again");
    // Its first probe's answer now is stale and ignored.
    assert!(c
        .on_probe_result(first[0], true, IDLE + TIMEOUT + 2)
        .is_empty());
    // r1 answers its second probe too late: a failure, however "ok".
    c.on_probe_result(second[1], true, IDLE + 2 * TIMEOUT + 2);
    // r0 times out again: two failures each, no ejection yet.
    let third = c.tick(IDLE + 2 * TIMEOUT + 2);
    assert!(third.changes.is_empty());
    assert_eq!(c.verdict(r(1)), Some(Verdict::Healthy));
    // r1's third failure ejects it.
    let p1 = *third.probes.iter().find(|p| p.replica == r(1)).unwrap();
    let changes = c.on_probe_result(p1, false, IDLE + 2 * TIMEOUT + 3);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].replica, r(1));
    // r0's third timeout would eject it too, but one of two is the cap.
    let t = c.tick(IDLE + 3 * TIMEOUT + 3);
    assert_eq!(
        t.changes,
        [VerdictChange {
            replica: r(0),
            verdict: Verdict::Deferred {
                since_ms: IDLE + 3 * TIMEOUT + 3,
                reason: Reason::ProbesFailed
            }
        }]
    );
}

#[test]
fn client_errors_and_failures_of_real_traffic_neither_eject_nor_prove() {
    let mut c = core(1);
    for t in 0..IDLE {
        for outcome in [RealOutcome::ClientError, RealOutcome::Failed] {
            assert!(c.on_real_outcome(r(0), outcome, t).is_empty());
        }
    }
    assert_eq!(c.verdict(r(0)), Some(Verdict::Healthy));
    assert_eq!(
        c.tick(IDLE).probes.len(),
        1,
        "a 400 does not prove the engine"
    );
}

#[test]
fn stall_detector_needs_queued_work_and_a_still_counter() {
    let mut d = StallDetector::default();
    d.sample(0, 7, None, 0);
    d.sample(0, 7, None, 60_000);
    assert_eq!(d.stalled(STALL), None, "idle is not stalled");
    d.sample(2, 7, None, 61_000);
    assert_eq!(d.stalled(STALL), None, "the clock starts when work queues");
    d.sample(2, 7, None, 61_000 + STALL - 1);
    assert_eq!(d.stalled(STALL), None);
    d.sample(2, 7, None, 61_000 + STALL);
    assert_eq!(d.stalled(STALL), Some(61_000));
    d.sample(2, 8, None, 80_000);
    assert_eq!(d.stalled(STALL), None, "a token is progress");
    d.sample(2, 8, None, 89_999);
    d.progressed(89_999);
    d.sample(2, 8, None, 95_000);
    assert_eq!(d.stalled(STALL), None, "so is a completed request");
    d.sample(3, 0, None, 200_000);
    assert_eq!(
        d.stalled(STALL),
        None,
        "a counter reset is a restart, not a stall"
    );
}

#[test]
fn queued_work_with_no_tokens_ejects() {
    let mut c = core(3);
    for t in (0..=STALL).step_by(1_000) {
        // r2's engine reports the same stall, but its requests complete: not hung.
        c.on_real_outcome(r(2), RealOutcome::Success, t);
        assert!(c.on_progress(r(2), 4, 100, None, t).is_empty());
        let changes = c.on_progress(r(1), 4, 100, None, t);
        if t < STALL {
            assert!(changes.is_empty(), "at {t}");
        } else {
            assert_eq!(
                changes,
                [VerdictChange {
                    replica: r(1),
                    verdict: Verdict::Unhealthy {
                        since_ms: STALL,
                        reason: Reason::Stalled
                    }
                }]
            );
        }
    }
}

#[test]
fn deferred_replicas_wait_for_a_slot_or_recover() {
    let mut c = core(3);
    // r0 and r1 fail three probes each, r0 first; r2 answers.
    for k in 1..=3 {
        for p in c.tick(k * IDLE).probes {
            let ok = p.replica == r(2);
            c.on_probe_result(p, ok, k * IDLE + 1 + p.replica.0);
        }
    }
    assert_eq!(unhealthy(&c), [r(0)]);
    let deferred = Verdict::Deferred {
        since_ms: 3 * IDLE + 2,
        reason: Reason::ProbesFailed,
    };
    assert_eq!(c.verdict(r(1)), Some(deferred));
    assert!(deferred.in_service());
    // r0 comes back: its slot goes to r1.
    let changes = c.restored(r(0), 20_000);
    assert_eq!(
        changes,
        [
            VerdictChange {
                replica: r(0),
                verdict: Verdict::Healthy
            },
            VerdictChange {
                replica: r(1),
                verdict: Verdict::Unhealthy {
                    since_ms: 20_000,
                    reason: Reason::ProbesFailed
                }
            }
        ]
    );
    // r2 now fails, and waits behind r1; real traffic proves it before a slot frees.
    for k in 5..=7 {
        for p in c.tick(k * IDLE).probes {
            let ok = p.replica == r(0);
            c.on_probe_result(p, ok, k * IDLE + 1);
        }
    }
    assert!(matches!(c.verdict(r(2)), Some(Verdict::Deferred { .. })));
    assert_eq!(c.verdict(r(0)), Some(Verdict::Healthy));
    let changes = c.on_real_outcome(r(2), RealOutcome::Success, 40_000);
    assert_eq!(
        changes,
        [VerdictChange {
            replica: r(2),
            verdict: Verdict::Healthy
        }]
    );
}

#[test]
fn a_lone_replica_is_still_ejected_and_removal_frees_a_slot() {
    let mut c = core(1);
    for k in 1..=3 {
        probe_once(&mut c, r(0), false, k * IDLE);
    }
    assert_eq!(unhealthy(&c), [r(0)]);

    let mut c = core(2);
    for k in 1..=3 {
        for p in c.tick(k * IDLE).probes {
            c.on_probe_result(p, false, k * IDLE + p.replica.0);
        }
    }
    assert_eq!(unhealthy(&c), [r(0)]);
    let changes = c.set_replicas(&[r(1), r(2)], 30_000);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].replica, r(1));
    assert!(!changes[0].verdict.in_service());
    assert_eq!(c.verdict(r(2)), Some(Verdict::Healthy));
    assert_eq!(c.verdict(r(0)), None);
}

#[test]
fn an_engine_down_or_starting_is_neither_probed_nor_ejected_and_joins_once_up() {
    let mut c = core(0);
    let starting = [(r(0), EngineState::Up), (r(1), EngineState::DownOrStarting)];
    assert!(c.follow_engines(&starting, 0).is_empty());
    // Its start takes longer than three failed probes would: it is left alone all along.
    for k in 1..=4 {
        let now = k * IDLE;
        assert!(c.follow_engines(&starting, now).is_empty());
        // It holds work and writes nothing, as a loading engine may.
        assert!(c.on_progress(r(1), 3, 0, None, now).is_empty());
        for p in c.tick(now).probes {
            assert_ne!(p.replica, r(1), "a starting engine is not probed");
            c.on_probe_result(p, true, now);
        }
    }
    assert_eq!(c.verdict(r(1)), None);
    let up = [(r(0), EngineState::Up), (r(1), EngineState::Up)];
    assert!(c.follow_engines(&up, 5 * IDLE).is_empty());
    assert_eq!(c.verdict(r(1)), Some(Verdict::Healthy));
    let due: Vec<_> = c.tick(7 * IDLE).probes.iter().map(|p| p.replica).collect();
    assert!(due.contains(&r(1)), "probed once it is up: {due:?}");
}

#[test]
fn restored_replicas_start_over() {
    let mut c = core(1);
    for k in 1..=3 {
        probe_once(&mut c, r(0), false, k * IDLE);
    }
    let stale = c.tick(3 * IDLE + 100).probes;
    assert!(stale.is_empty(), "ejected replicas are not probed");
    assert_eq!(
        c.restored(r(0), 50_000),
        [VerdictChange {
            replica: r(0),
            verdict: Verdict::Healthy
        }]
    );
    assert!(c.tick(50_000 + IDLE - 1).probes.is_empty());
    probe_once(&mut c, r(0), false, 50_000 + IDLE);
    assert_eq!(
        c.verdict(r(0)),
        Some(Verdict::Healthy),
        "failures were forgotten"
    );
    assert!(c.restored(r(0), 60_000).is_empty(), "already healthy");
    assert!(c.restored(r(9), 60_000).is_empty(), "unknown");
}

#[test]
fn retry_budget_is_a_share_of_traffic_plus_a_reserve() {
    let config = ProbeConfig::default();
    let mut b = RetryBudget::new(&config);
    let allowed = |b: &mut RetryBudget, t| (0..1000).take_while(|_| b.try_retry(t)).count();
    assert_eq!(allowed(&mut b, 0), 10, "the reserve: 1/s over 10 s");
    for _ in 0..100 {
        b.on_request(500);
    }
    assert_eq!(allowed(&mut b, 900), 10, "10% of 100 requests");
    assert_eq!(allowed(&mut b, 9_999), 0, "all still in the window");
    // Slot 0's deposits leave the window together with the retries they paid for.
    assert_eq!(allowed(&mut b, 10_000), 10, "the reserve again");
    assert_eq!(allowed(&mut b, 19_999), 0);
    assert_eq!(allowed(&mut b, 20_000), 10);
    let none = ProbeConfig {
        retry_budget_ratio: 0.0,
        retry_budget_min_per_s: 0.0,
        ..Default::default()
    };
    let mut b = RetryBudget::new(&none);
    b.on_request(0);
    assert!(!b.try_retry(0));
}

#[derive(Debug, Clone)]
enum Ev {
    Tick,
    Real(u64, RealOutcome),
    Progress(u64, u32, u64),
    Answer(usize, bool),
    Restore(u64),
}

fn outcome() -> impl Strategy<Value = RealOutcome> {
    prop_oneof![
        Just(RealOutcome::Success),
        Just(RealOutcome::ClientError),
        Just(RealOutcome::Failed)
    ]
}

fn event(n: u64) -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => Just(Ev::Tick),
        2 => (0..n, outcome()).prop_map(|(r, o)| Ev::Real(r, o)),
        2 => (0..n, 0u32..3, 0u64..2).prop_map(|(r, q, d)| Ev::Progress(r, q, d)),
        3 => (0usize..8, proptest::bool::weighted(0.3)).prop_map(|(i, ok)| Ev::Answer(i, ok)),
        1 => (0..n).prop_map(Ev::Restore),
    ]
}

/// Runs `events`, `dt` apart, and returns everything the core said.
fn run(n: u64, events: &[(Ev, u64)]) -> (ProberCore, Vec<String>) {
    let mut c = core(n);
    let mut now = 0;
    let mut outstanding: Vec<Probe> = Vec::new();
    let mut tokens = vec![0u64; n as usize];
    let mut said = Vec::new();
    let cap = c.config().max_ejected(n as usize);
    for (ev, dt) in events {
        now += dt;
        let changes = match ev.clone() {
            Ev::Tick => {
                let tick = c.tick(now);
                outstanding.extend(&tick.probes);
                said.push(format!("{:?}", tick.probes));
                tick.changes
            }
            Ev::Real(i, o) => c.on_real_outcome(r(i), o, now),
            Ev::Progress(i, queued, delta) => {
                tokens[i as usize] += delta;
                c.on_progress(r(i), queued, tokens[i as usize], None, now)
            }
            Ev::Answer(i, ok) if !outstanding.is_empty() => {
                let p = outstanding.remove(i % outstanding.len());
                c.on_probe_result(p, ok, now)
            }
            Ev::Answer(..) => Vec::new(),
            Ev::Restore(i) => c.restored(r(i), now),
        };
        said.push(format!("{changes:?}"));
        assert!(unhealthy(&c).len() <= cap, "over the cap after {ev:?}");
    }
    (c, said)
}

fn events(n: u64) -> impl Strategy<Value = Vec<(Ev, u64)>> {
    proptest::collection::vec((event(n), 0u64..3_000), 0..200)
}

proptest! {
    #[test]
    fn never_more_than_the_share_is_ejected_and_runs_repeat(
        (n, evs) in (1u64..8).prop_flat_map(|n| (Just(n), events(n)))
    ) {
        let (a, said_a) = run(n, &evs);
        let (b, said_b) = run(n, &evs);
        prop_assert_eq!(said_a, said_b);
        prop_assert_eq!(a.verdicts().collect::<Vec<_>>(), b.verdicts().collect::<Vec<_>>());
    }

    /// Replica 0's probes all succeed and its engine makes progress; whatever its real
    /// traffic does (4xx, 5xx, timeouts), it is never condemned.
    #[test]
    fn client_errors_never_eject(
        evs in proptest::collection::vec((0u64..2, 0u64..2_000), 0..300)
    ) {
        let mut c = core(2);
        let mut now = 0;
        let mut tokens = 0;
        for (kind, dt) in evs {
            now += dt;
            if kind == 0 {
                c.on_real_outcome(r(0), RealOutcome::ClientError, now);
                c.on_real_outcome(r(0), RealOutcome::Failed, now);
            } else {
                tokens += 1;
                c.on_progress(r(0), 3, tokens, None, now);
            }
            for p in c.tick(now).probes {
                c.on_probe_result(p, p.replica == r(0), now + 1);
            }
            prop_assert_eq!(c.verdict(r(0)), Some(Verdict::Healthy));
        }
    }

    #[test]
    fn steady_real_successes_are_never_probed(
        gaps in proptest::collection::vec((0u64..IDLE, 0u64..IDLE), 1..100)
    ) {
        let mut c = core(1);
        let mut last_success = 0;
        for (gap, tick_at) in gaps {
            // A tick anywhere before the next success, which comes within the window.
            let now = last_success + tick_at.min(gap);
            prop_assert!(c.tick(now).probes.is_empty());
            last_success += gap;
            c.on_real_outcome(r(0), RealOutcome::Success, last_success);
        }
    }

    /// Streaks of at most K-1 failures, each ended by a probe success or a real one,
    /// never eject.
    #[test]
    fn k_minus_one_failures_then_a_success_never_eject(
        streaks in proptest::collection::vec((0u32..3, any::<bool>()), 1..30)
    ) {
        let mut c = core(1);
        let mut now = 0;
        for (fails, real) in streaks {
            for _ in 0..fails {
                now += IDLE;
                probe_once(&mut c, r(0), false, now);
            }
            now += IDLE;
            if real {
                c.on_real_outcome(r(0), RealOutcome::Success, now);
            } else {
                probe_once(&mut c, r(0), true, now);
            }
            prop_assert_eq!(c.verdict(r(0)), Some(Verdict::Healthy));
        }
    }

    #[test]
    fn retry_budget_stays_within_ratio_and_floor(
        ratio in 0.0f64..=1.0,
        floor in 0.0f64..5.0,
        start in 0u64..100_000,
        ops in proptest::collection::vec((any::<bool>(), 0u64..1_500), 0..500),
    ) {
        let config = ProbeConfig {
            retry_budget_ratio: ratio,
            retry_budget_min_per_s: floor,
            ..Default::default()
        };
        let mut b = RetryBudget::new(&config);
        let mut now = start;
        let (mut requests, mut retries) = (0u64, 0u64);
        for (is_request, dt) in ops {
            now += dt;
            if is_request {
                b.on_request(now);
                requests += 1;
            } else if b.try_retry(now) {
                retries += 1;
            }
            let seconds = now / 1_000 - start / 1_000;
            let bound = ratio * requests as f64
                + floor * (seconds + RETRY_BUDGET_WINDOW_S) as f64;
            prop_assert!(retries as f64 <= bound + 1e-9, "{} > {}", retries, bound);
        }
    }
}

#[test]
fn only_a_2xx_is_a_success_and_only_a_4xx_the_clients_fault() {
    assert_eq!(RealOutcome::of_status(Some(200)), RealOutcome::Success);
    assert_eq!(RealOutcome::of_status(Some(429)), RealOutcome::ClientError);
    assert_eq!(RealOutcome::of_status(Some(503)), RealOutcome::Failed);
    assert_eq!(RealOutcome::of_status(None), RealOutcome::Failed);
}

#[test]
fn a_routers_word_that_its_streams_stalled_ejects_once_the_counter_agrees() {
    const C: u64 = ProbeConfig::DEFAULT_STALL_WINDOW_MS / 2;
    let t = 1_000 + C; // the counter has stood still for C by then
    let mut c = core(3);
    // r1's counter stands still from 1 s on; r2's moves.
    for at in (1_000..=t).step_by(1_000) {
        c.on_progress(r(1), 0, 50, None, at);
        c.on_progress(r(2), 4, at, None, at);
    }
    // Word older than the replica's last proof (here, joining the pool at 0) is stale.
    assert!(c.on_stall_word(&[(r(1), t)], t).is_empty());
    assert_eq!(
        c.on_stall_word(&[(r(1), 100)], t + 100),
        [VerdictChange {
            replica: r(1),
            verdict: Verdict::Unhealthy {
                since_ms: t + 100,
                reason: Reason::StreamsStalled
            }
        }]
    );
    // Repeated by gossip: no second change.
    assert!(c.on_stall_word(&[(r(1), 500)], t + 500).is_empty());
    // Restarted: the same word, still gossiped, no longer counts.
    c.restored(r(1), t + 6_000);
    assert!(c.on_stall_word(&[(r(1), 6_100)], t + 6_100).is_empty());
    assert_eq!(c.verdict(r(1)), Some(Verdict::Healthy));
    // An engine that writes tokens is busy, not hung, whatever a router saw.
    assert!(c.on_stall_word(&[(r(2), 100)], t + 100).is_empty());
    assert_eq!(c.verdict(r(2)), Some(Verdict::Healthy));
}

#[test]
fn a_routers_word_waits_for_the_counter_and_a_proof_clears_it() {
    const C: u64 = ProbeConfig::DEFAULT_STALL_WINDOW_MS / 2;
    let mut c = core(3);
    // No gauge sampled yet: the word alone condemns nothing.
    assert!(c.on_stall_word(&[(r(0), 0)], 1_000).is_empty());
    c.on_progress(r(0), 1, 7, None, 1_000);
    assert!(
        c.on_progress(r(0), 1, 7, None, C).is_empty(),
        "still for less than the confirmation"
    );
    assert_eq!(
        c.on_progress(r(0), 1, 7, None, 1_000 + C),
        [VerdictChange {
            replica: r(0),
            verdict: Verdict::Unhealthy {
                since_ms: 1_000 + C,
                reason: Reason::StreamsStalled
            }
        }],
        "still long enough: confirmed"
    );
    // Past the ejection cap (one of three) a second is deferred, and a completed
    // request clears the word.
    c.on_progress(r(1), 1, 7, None, 1_000);
    c.on_progress(r(1), 1, 7, None, 1_000 + C);
    assert_eq!(
        c.on_stall_word(&[(r(1), C - 1_500)], 1_000 + C),
        [VerdictChange {
            replica: r(1),
            verdict: Verdict::Deferred {
                since_ms: 2_500,
                reason: Reason::StreamsStalled
            }
        }]
    );
    assert_eq!(
        c.on_real_outcome(r(1), RealOutcome::Success, 1_500 + C),
        [VerdictChange {
            replica: r(1),
            verdict: Verdict::Healthy
        }]
    );
}

/// Seen in a 100-node virtual drill: an engine idle for seconds was given one long
/// prompt, whose chunked prefill wrote no token for several seconds while requests queued
/// behind it; a router took it for hung, and the counter's stillness *while idle* made
/// the word count at once, restarting a healthy engine.
#[test]
fn a_routers_word_is_not_confirmed_by_the_time_an_engine_idled_before_its_work() {
    const C: u64 = ProbeConfig::DEFAULT_STALL_WINDOW_MS / 2;
    let mut c = core(10);
    // Idle, nothing queued, counter at 1 from 1 s to 9 s; then work held from 10 s on,
    // its processes computing all along.
    for at in (1_000..=9_000).step_by(1_000) {
        c.on_progress(r(0), 0, 1, Some(0), at);
    }
    let busy = |at: u64| Some((at - 9_000) * 9 / 10);
    assert!(c.on_progress(r(0), 5, 1, busy(10_000), 10_000).is_empty());
    assert!(c.on_stall_word(&[(r(0), 0)], 10_500).is_empty());
    for at in (11_000..10_000 + C).step_by(1_000) {
        assert!(
            c.on_progress(r(0), 5, 1, busy(at), at).is_empty(),
            "at {at}"
        );
    }
    // Held with no token for the whole confirmation: the word counts.
    let changes = c.on_progress(r(0), 5, 1, busy(10_000 + C), 10_000 + C);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(matches!(
        changes[0].verdict,
        Verdict::Unhealthy {
            reason: Reason::StreamsStalled,
            ..
        }
    ));
}

#[test]
fn a_routers_word_is_confirmed_sooner_when_the_engine_holds_work_and_idles() {
    const SOON: u64 = decide::STREAMS_CONFIRMED_IDLE_AFTER_MS;
    const C: u64 = ProbeConfig::DEFAULT_STALL_WINDOW_MS / 2;
    // Replica 0 holds work, writes nothing and uses 2% of a CPU (its HTTP server);
    // replica 1 the same but computing (90% of a CPU, a long step); replica 2 idles
    // with nothing queued (a router's requests never reached it); replica 3's CPU time
    // cannot be read. Ten replicas, so the ejection cap is not what holds any back.
    let mut c = core(10);
    let busy_per_s = [20, 900, 20];
    let queued = [3, 3, 0];
    let sample = |c: &mut ProberCore, t: u64| {
        let mut changes = Vec::new();
        for i in 0..3 {
            let cpu = 10_000 + busy_per_s[i] * t / 1_000;
            changes.extend(c.on_progress(r(i as u64), queued[i], 7, Some(cpu), t));
        }
        changes.extend(c.on_progress(r(3), 3, 7, None, t));
        changes
    };
    assert!(sample(&mut c, 1_000).is_empty());
    assert!(sample(&mut c, 2_000).is_empty());
    let word: Vec<_> = (0..4).map(|i| (r(i), 0)).collect();
    assert!(c.on_stall_word(&word, 2_500).is_empty(), "too soon for any");
    let changes = sample(&mut c, 1_000 + SOON);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].replica, r(0));
    assert!(matches!(
        changes[0].verdict,
        Verdict::Unhealthy {
            reason: Reason::StreamsStalled,
            ..
        }
    ));
    // The others wait for the counter's full confirmation.
    for t in (1_000 + SOON + 500..1_000 + C).step_by(500) {
        assert!(sample(&mut c, t).is_empty(), "at {t}");
    }
    let late: Vec<_> = sample(&mut c, 1_000 + C)
        .into_iter()
        .map(|ch| ch.replica)
        .collect();
    assert_eq!(late, vec![r(1), r(2), r(3)]);
}

#[test]
fn busy_time_that_falls_or_goes_missing_is_no_proof_of_idleness() {
    let mut d = StallDetector::default();
    d.sample(2, 7, Some(5_000), 0);
    d.sample(2, 7, Some(100), 3_000);
    assert!(
        d.idle_stall(2_000, 0.1).is_none(),
        "a member of the group exited"
    );
    let mut d = StallDetector::default();
    d.sample(2, 7, Some(5_000), 0);
    d.sample(2, 7, None, 1_000);
    d.sample(2, 7, Some(5_010), 3_000);
    assert!(d.idle_stall(2_000, 0.1).is_none(), "unknown for a while");
    let mut d = StallDetector::default();
    d.sample(2, 7, Some(5_000), 0);
    d.sample(2, 7, Some(5_010), 1_000);
    assert!(d.idle_stall(2_000, 0.1).is_none(), "not long enough");
    d.sample(2, 7, Some(5_020), 2_000);
    assert!(d.idle_stall(2_000, 0.1).is_some());
    // A proof restarts the stretch from the last figure.
    d.progressed(2_500);
    d.sample(2, 7, Some(5_030), 4_000);
    assert!(d.idle_stall(2_000, 0.1).is_none());
    d.sample(2, 7, Some(5_040), 4_500);
    assert!(d.idle_stall(2_000, 0.1).is_some());
}

#[test]
fn work_cancelled_by_routers_that_gave_up_does_not_restart_the_idle_stretch() {
    // A stuck engine's queue empties as routers move their requests away; it is still
    // the same stretch without a token. A token ends it.
    let mut d = StallDetector::default();
    d.sample(0, 7, Some(1_000), 0);
    d.sample(2, 7, Some(1_005), 1_000);
    d.sample(0, 7, Some(1_010), 2_000);
    d.sample(0, 7, Some(1_015), 3_000);
    assert!(d.idle_stall(2_000, 0.1).is_some());
    d.sample(0, 8, Some(1_020), 4_000);
    d.sample(0, 8, Some(1_025), 7_000);
    assert!(
        d.idle_stall(2_000, 0.1).is_none(),
        "no work held since the token"
    );
}

#[test]
fn an_engine_holding_work_with_its_processes_idle_is_stalled_in_half_the_window() {
    const HALF: u64 = 5_000;
    // No router's word at all: replica 0 holds work and idles; replica 1 holds work
    // and computes; replica 2 lost its only request before a token (a client gone)
    // and has idled since; replica 3's busy time cannot be read.
    let ejected = idle_engines_ejected(core(10));
    // The samples start at 0, so the gauge's own window ends at 10 s.
    assert_eq!(
        ejected,
        vec![
            (r(0), HALF, Reason::Stalled),
            (r(1), 10_000, Reason::Stalled),
            (r(3), 10_000, Reason::Stalled),
        ]
    );
    // With the rule off (an engine that waits for its accelerator off the CPU), the
    // idle one waits out the whole window like the rest.
    let off = ProberCore::new(ProbeConfig {
        idle_busy_share: 0.0,
        ..ProbeConfig::default()
    })
    .unwrap();
    let ejected = idle_engines_ejected(off);
    assert_eq!(
        ejected,
        vec![
            (r(0), 10_000, Reason::Stalled),
            (r(1), 10_000, Reason::Stalled),
            (r(3), 10_000, Reason::Stalled),
        ]
    );
}

/// Feeds `c` twelve seconds of the four engines above, once a second: the ejections.
fn idle_engines_ejected(mut c: ProberCore) -> Vec<(ReplicaId, u64, Reason)> {
    let ids: Vec<_> = (0..10).map(r).collect();
    c.set_replicas(&ids, 0);
    let busy_per_s = [20, 900, 20, 0];
    let queued_at = |i: usize, t: u64| match i {
        2 if t > 1_000 => 0,
        _ => 3,
    };
    let mut ejected = Vec::new();
    for t in (0..=12_000).step_by(1_000) {
        for (i, per_s) in busy_per_s.iter().enumerate() {
            let busy = (i != 3).then(|| 10_000 + per_s * t / 1_000);
            for ch in c.on_progress(r(i as u64), queued_at(i, t), 7, busy, t) {
                if let Verdict::Unhealthy { reason, .. } = ch.verdict {
                    ejected.push((ch.replica, t, reason));
                }
            }
        }
    }
    ejected
}

#[test]
fn a_probe_held_by_an_idle_engine_ejects_without_any_routers_word() {
    // No traffic at all: after the idle window each replica is probed. r0's engine holds
    // its probe and does nothing; r1's holds it while computing (a long step); r2's
    // answers it. Only r0 is taken for hung, as long as a router's word waits after
    // the probe went out; r1 is left to the probe's own timeout.
    let mut c = core(3);
    let mut sent = None;
    let mut ejected = Vec::new();
    for t in (0..=IDLE + 4_000).step_by(1_000) {
        for p in c.tick(t).probes {
            sent.get_or_insert(t);
            if p.replica == r(2) {
                assert!(c.on_probe_result(p, true, t).is_empty());
            }
        }
        let holding = u32::from(sent.is_some());
        let changes = [(r(0), 20), (r(1), 900)]
            .into_iter()
            .flat_map(|(id, busy_per_s)| {
                let busy = 10_000 + busy_per_s * t / 1_000;
                c.on_progress(id, holding, 7, Some(busy), t)
            });
        let changes: Vec<_> = changes.collect();
        for ch in changes {
            if let Verdict::Unhealthy { reason, .. } = ch.verdict {
                ejected.push((ch.replica, t, reason));
            }
        }
    }
    let sent = sent.expect("probed after the idle window");
    let waited = decide::STREAMS_CONFIRMED_IDLE_AFTER_MS;
    assert_eq!(ejected, vec![(r(0), sent + waited, Reason::Stalled)]);
}

#[test]
fn an_engine_holding_work_without_a_token_is_probed_before_the_idle_window() {
    // Each replica proved itself at 0 and takes a request at 1 s. r0 holds it and
    // idles (hung); r1 holds it while computing a long step; r2 writes tokens at once.
    // r0 and r1 are probed as soon as two samples show the work held with no token,
    // long before the idle window; r2 is not. Only r0, idle while it holds the probe,
    // is ejected, as long as a router's word waits after the probe went out.
    let mut c = core(3);
    let mut sent: Vec<(ReplicaId, u64)> = Vec::new();
    let mut ejected = Vec::new();
    for t in (0..IDLE).step_by(1_000) {
        let holding = u32::from(t >= 1_000);
        for (id, tokens, busy_per_s) in [(r(0), 7, 20), (r(1), 7, 900), (r(2), 7 + t, 900)] {
            let busy = 10_000 + busy_per_s * t / 1_000;
            for ch in c.on_progress(id, holding, tokens, Some(busy), t) {
                if let Verdict::Unhealthy { reason, .. } = ch.verdict {
                    ejected.push((ch.replica, t, reason));
                }
            }
        }
        let tick = c.tick(t);
        sent.extend(tick.probes.iter().map(|p| (p.replica, t)));
        assert!(tick.changes.is_empty());
    }
    // Work first seen held at 1 s; still held with no token at 2 s.
    let suspect = 1_000 + decide::SUSPECT_AFTER_MS;
    assert_eq!(sent, vec![(r(0), suspect), (r(1), suspect)]);
    let waited = decide::STREAMS_CONFIRMED_IDLE_AFTER_MS;
    assert_eq!(ejected, vec![(r(0), suspect + waited, Reason::Stalled)]);
}

#[test]
fn a_suspect_is_probed_once_per_stretch_of_held_work() {
    // A replica whose engine holds work and answers its probe without writing a token
    // (an engine whose counter the shell reads wrong) is not probed again until the
    // idle window, whatever it keeps holding.
    let mut c = core(1);
    let mut sent = Vec::new();
    for t in (0..=3 * IDLE).step_by(1_000) {
        c.on_progress(r(0), 1, 7, None, t);
        for p in c.tick(t).probes {
            sent.push(t);
            c.on_probe_result(p, true, t);
        }
    }
    // First at two samples of held work. The answer proved the replica and restarted
    // the stretch at the probe's own time, which no suspicion outlasts: from then on
    // only the idle window sends one.
    let suspect = decide::SUSPECT_AFTER_MS;
    assert_eq!(sent, vec![suspect, suspect + IDLE, suspect + 2 * IDLE]);
}
