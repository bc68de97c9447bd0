use super::*;
use crate::prober::{ProbeConfig, RETRY_BUDGET_WINDOW_S};
use crate::router::core::test_router as router;
use crate::router::NO_CONTENT;
use crate::slice::SliceKey;
use proptest::prelude::*;

/// A budget of `reserve_per_s` retries a second and `ratio` of one per request.
fn budget(ratio: f64, reserve_per_s: f64) -> RetryBudget {
    RetryBudget::new(&ProbeConfig {
        retry_budget_ratio: ratio,
        retry_budget_min_per_s: reserve_per_s,
        ..ProbeConfig::default()
    })
}

fn admission(key: u64, fingerprint: Option<u64>) -> Admission<'static> {
    Admission {
        workload: Some(SliceKey(key)),
        blocks: &NO_CONTENT,
        input_tokens: 100,
        images: 0,
        max_tokens: Some(50),
        n: 1,
        fingerprint,
        radius: None,
        stream: false,
    }
}

#[test]
fn a_failed_call_is_retried_once_on_another_replica_then_fails_502() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let (mut life, first) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    assert_eq!(life.replica(), first.replica);
    let Next::Retry(second) = life.failed_before_answer(false, &mut r, &mut b, 10) else {
        panic!("the first failure is retried");
    };
    assert_ne!(second.replica, first.replica);
    assert_eq!((life.replica(), life.retried()), (second.replica, true));
    assert_eq!(r.in_flight(), 1);
    assert_eq!(
        life.failed_before_answer(false, &mut r, &mut b, 20),
        Next::Fail(Fail::Unreachable)
    );
    assert!(!life.is_open());
    assert_eq!(r.in_flight(), 0, "the router finished it");
}

#[test]
fn a_stall_word_moves_a_waiting_request_only_while_its_retry_is_left() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    assert!(life.moves_on_stall_word(&r, &b, 10));
    let Next::Retry(_) = life.failed_before_answer(true, &mut r, &mut b, 10) else {
        panic!("the first failure is retried");
    };
    // Moved once already: another move would fail it, so it waits on.
    assert!(!life.moves_on_stall_word(&r, &b, 10));
    assert_eq!(r.in_flight(), 1, "still held where it is");
    life.finish(&mut r, None);
    assert!(!life.moves_on_stall_word(&r, &b, 10));
    // The door's budget is spent: a move would fail the request, so it waits on too,
    // and asking spends nothing.
    let mut spent = budget(0.0, 0.0);
    let (life, _) = Lifecycle::begin(&mut r, &mut spent, &admission(2, None), 20).unwrap();
    assert!(!life.moves_on_stall_word(&r, &spent, 20));
    let mut one = budget(0.0, 0.1);
    let (life, _) = Lifecycle::begin(&mut r, &mut one, &admission(3, None), 20).unwrap();
    assert!((0..3).all(|_| life.moves_on_stall_word(&r, &one, 20)));
    assert!(one.try_retry(20), "the one retry is still there");
    assert!(!life.moves_on_stall_word(&r, &one, 20));
}

#[test]
fn a_stall_word_moves_an_answer_under_way_only_if_the_migration_would_be_granted() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let mut m = migrations(1, 10.0);
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    assert!(life.moves_midway_on_stall_word(true, &r, &m, 0));
    // What the engine cannot continue is never moved: it streams on.
    assert!(!life.moves_midway_on_stall_word(false, &r, &m, 0));
    assert!(life
        .failed_midway(Broke::Hung, true, &mut r, &mut m, 0)
        .is_ok());
    // At its own limit: a move would end it with an error event, so it streams on.
    assert!(!life.moves_midway_on_stall_word(true, &r, &m, 5));
    assert_eq!(r.in_flight(), 1);
    // The door's budget spent.
    let mut empty = migrations(2, 0.0);
    let (other, _) = Lifecycle::begin(&mut r, &mut b, &admission(2, None), 0).unwrap();
    assert!(!other.moves_midway_on_stall_word(true, &r, &empty, 0));
    assert!(!empty.try_take(0));
    // A quarantined request is not moved either.
    let poison = admission(7, Some(0xbad));
    let mut m = migrations(5, 10.0);
    let (mut bad, _) = Lifecycle::begin(&mut r, &mut b, &poison, 0).unwrap();
    assert!(bad
        .failed_midway(Broke::Answer, true, &mut r, &mut m, 0)
        .is_ok());
    assert!(bad.moves_midway_on_stall_word(true, &r, &m, 1));
    r.implicate(bad.id(), bad.replica(), 1);
    assert!(!bad.moves_midway_on_stall_word(true, &r, &m, 2));
    bad.finish(&mut r, None);
    assert!(!bad.moves_midway_on_stall_word(true, &r, &m, 2));
}

proptest! {
    // Four times the 512 combinations of the inputs, so that nearly every one comes up
    // (the one that needs the replicas' check is kept in proptest-regressions).
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The word's rule answers exactly what the move would: granted or refused.
    #[test]
    fn the_midway_word_rule_agrees_with_the_move(
        moves in 0u8..4,
        per_request in 0u8..4,
        burst in 0u8..4,
        resumable: bool,
        implicated: bool,
        others_down: bool,
    ) {
        let mut r = router(8, 8);
        let mut b = budget(0.0, 10.0);
        let mut m = MigrationBudget::new(MigrationLimits {
            per_request,
            per_s: 0.0,
            burst: f64::from(burst),
        });
        let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, Some(0x5eed)), 0).unwrap();
        for t in 0..u64::from(moves) {
            if life.failed_midway(Broke::Hung, true, &mut r, &mut m, t).is_err() {
                break;
            }
        }
        if implicated && life.is_open() {
            r.implicate(life.id(), life.replica(), 10);
        }
        if others_down {
            for id in (0..8).map(ReplicaId).filter(|&id| id != life.replica()) {
                r.set_checked_health(id, false);
            }
        }
        let says = life.moves_midway_on_stall_word(resumable, &r, &m, 10);
        let moved = life
            .clone()
            .failed_midway(Broke::Hung, resumable, &mut r.clone(), &mut m.clone(), 10)
            .is_ok();
        prop_assert_eq!(says, moved);
    }
}

#[test]
fn without_budget_the_first_failure_is_final() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 0.0);
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    assert_eq!(
        life.failed_before_answer(true, &mut r, &mut b, 0),
        Next::Fail(Fail::Unreachable)
    );
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn a_stall_word_leaves_a_request_where_it_is_when_no_other_replica_could_take_it() {
    for midway in [false, true] {
        let mut r = router(3, 3);
        let mut b = budget(0.0, 10.0);
        let m = migrations(2, 10.0);
        let (life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
        let says = |r: &RouterCore, b: &RetryBudget, now: u64| match midway {
            false => life.moves_on_stall_word(r, b, now),
            true => life.moves_midway_on_stall_word(true, r, &m, now),
        };
        assert!(says(&r, &b, 10));
        // Every other replica fails its health checks (as a CPU-starved fleet's may): a
        // move would end the request with an error, so the suspected replica keeps it.
        let others: Vec<ReplicaId> = (0..3)
            .map(ReplicaId)
            .filter(|&id| id != life.replica())
            .collect();
        for &id in &others {
            r.set_checked_health(id, false);
        }
        assert!(!says(&r, &b, 10), "midway: {midway}");
        assert!(b.try_retry(10), "asking spends nothing");
        // One comes back: the word moves the request again.
        r.set_checked_health(others[0], true);
        assert!(says(&r, &b, 10), "midway: {midway}");
        // A replica passively ejected is out too.
        for _ in 0..8 {
            r.on_replica_failure(others[0], 20);
        }
        assert!(!says(&r, &b, 20), "midway: {midway}");
        assert_eq!(r.in_flight(), 1, "still held where it was");
    }
}

#[test]
fn a_retry_that_finds_no_replica_is_503_and_finished_by_the_router() {
    // The only replica failed.
    let mut r = router(1, 1);
    let mut b = budget(0.0, 10.0);
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    assert_eq!(
        life.failed_before_answer(false, &mut r, &mut b, 0),
        Next::Fail(Fail::NoReplica)
    );
    assert!(!life.is_open());
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn a_request_delivered_to_replicas_that_failed_is_quarantined() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let poison = admission(7, Some(0xbad));
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &poison, 0).unwrap();
    assert!(matches!(
        life.failed_before_answer(true, &mut r, &mut b, 0),
        Next::Retry(_)
    ));
    assert_eq!(
        life.failed_holding(Broke::Deadline, &mut r, 5),
        Fail::Timeout
    );
    // Implicated on two replicas, the default limit.
    assert_eq!(
        Lifecycle::begin(&mut r, &mut b, &poison, 10),
        Err(Fail::Quarantined { replicas: 2 })
    );
    // A request never delivered is not implicated.
    let clean = admission(8, Some(0x600d));
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &clean, 20).unwrap();
    let Next::Retry(_) = life.failed_before_answer(false, &mut r, &mut b, 20) else {
        panic!("retried");
    };
    life.failed_before_answer(false, &mut r, &mut b, 20);
    assert_eq!(r.verdict(0x600d, 30), Verdict::Clear);
}

#[test]
fn a_request_placed_nowhere_deposits_nothing_in_the_budget() {
    let mut r = router(2, 2);
    for id in 0..2 {
        r.set_checked_health(ReplicaId(id), false);
    }
    let mut b = budget(1.0, 0.0);
    assert_eq!(
        Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0),
        Err(Fail::NoReplica)
    );
    assert!(!b.try_retry(0), "no deposit for a request never sent");
    r.set_checked_health(ReplicaId(0), true);
    assert!(Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).is_ok());
    assert!(b.try_retry(0));
}

#[test]
fn a_broken_answer_is_never_retried_and_ends_once() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    assert_eq!(life.lost(true, &mut r, &mut b, 0), Next::Fail(Fail::CutOff));
    assert_eq!(r.in_flight(), 0);
    // The shell's other paths end it again: nothing more reaches the router.
    life.finish(&mut r, None);
    assert_eq!(
        life.failed_holding(Broke::Deadline, &mut r, 1),
        Fail::Timeout
    );
    assert_eq!(r.in_flight(), 0);
    // Lost before any of the answer came back: a delivered call failure, retried.
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(2, None), 0).unwrap();
    assert!(matches!(
        life.lost(false, &mut r, &mut b, 0),
        Next::Retry(_)
    ));
}

#[test]
fn failures_are_answered_as_the_openai_api_would() {
    let q = Fail::Quarantined { replicas: 2 };
    assert_eq!((q.status(), q.code()), (422, Some("request_quarantined")));
    assert_eq!(
        (Fail::NoReplica.status(), Fail::NoReplica.error_type()),
        (503, "service_unavailable")
    );
    assert_eq!(Fail::Unreachable.retry_after_s(), Some(1));
    assert_eq!(Fail::Timeout.retry_after_s(), None);
    assert_eq!(
        (Fail::CutOff.status(), Fail::CutOff.error_type()),
        (502, "upstream_error")
    );
}

/// What the shell reports of request `.0` (an index into the open requests).
#[derive(Debug, Clone)]
enum Event {
    Admit(u64),
    CallFailed(usize, bool),
    Held(usize, bool),
    Lost(usize, bool),
    Finish(usize),
    Later(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (0u64..16).prop_map(Event::Admit),
        4 => (0usize..8, any::<bool>()).prop_map(|(i, d)| Event::CallFailed(i, d)),
        1 => (0usize..8, any::<bool>()).prop_map(|(i, d)| Event::Held(i, d)),
        1 => (0usize..8, any::<bool>()).prop_map(|(i, s)| Event::Lost(i, s)),
        2 => (0usize..8).prop_map(Event::Finish),
        1 => (0u64..3_000).prop_map(Event::Later),
    ]
}

proptest! {
    /// Whatever the shell reports, in whatever order: the router holds exactly the
    /// requests still open, a request is retried at most once and never onto the
    /// replica that failed, a failed request is finished, and retries stay within the
    /// budget's bound.
    #[test]
    fn the_router_holds_exactly_the_open_requests(
        events in proptest::collection::vec(event(), 1..120),
        replicas in 1u64..6,
        ratio in 0.0f64..0.5,
        reserve in 0.0f64..2.0,
    ) {
        let mut r = router(replicas, replicas as usize);
        let mut b = budget(ratio, reserve);
        let mut lives: Vec<(Lifecycle, u32)> = Vec::new();
        let (mut now, mut begun, mut retries) = (0u64, 0u64, 0u64);
        for ev in events {
            // The open request an event is about, if any.
            let k = match &ev {
                Event::CallFailed(i, _) | Event::Held(i, _) | Event::Lost(i, _) | Event::Finish(i) => {
                    match lives.len() {
                        0 => continue,
                        n => i % n,
                    }
                }
                Event::Admit(_) | Event::Later(_) => 0,
            };
            match ev {
                Event::Admit(key) => {
                    if let Ok((life, p)) = Lifecycle::begin(&mut r, &mut b, &admission(key, Some(key)), now) {
                        prop_assert_eq!(life.replica(), p.replica);
                        begun += 1;
                        lives.push((life, 0));
                    }
                }
                Event::CallFailed(_, delivered) => {
                    let (life, tries) = &mut lives[k];
                    let (was_open, failed) = (life.is_open(), life.replica());
                    match life.failed_before_answer(delivered, &mut r, &mut b, now) {
                        Next::Retry(p) => {
                            prop_assert!(was_open);
                            prop_assert_ne!(p.replica, failed);
                            *tries += 1;
                            retries += 1;
                            prop_assert!(*tries <= 1, "retried twice");
                        }
                        Next::Fail(f) => {
                            prop_assert!(matches!(f, Fail::Unreachable | Fail::NoReplica));
                            prop_assert!(!life.is_open());
                        }
                    }
                }
                Event::Held(_, deadline) => {
                    let how = if deadline { Broke::Deadline } else { Broke::Answer };
                    let f = lives[k].0.failed_holding(how, &mut r, now);
                    prop_assert_eq!(f, if deadline { Fail::Timeout } else { Fail::CutOff });
                    prop_assert!(!lives[k].0.is_open());
                }
                Event::Lost(_, started) => {
                    let (life, tries) = &mut lives[k];
                    if let Next::Retry(_) = life.lost(started, &mut r, &mut b, now) {
                        prop_assert!(!started);
                        *tries += 1;
                        retries += 1;
                        prop_assert!(*tries <= 1, "retried twice");
                    }
                }
                Event::Finish(_) => {
                    lives[k].0.finish(&mut r, None);
                }
                Event::Later(ms) => now += ms,
            }
            let open = lives.iter().filter(|(l, _)| l.is_open()).count();
            prop_assert_eq!(r.in_flight(), open);
        }
        // The budget's bound over the slots the run spanned.
        let bound = ratio * begun as f64 + reserve * (now / 1000 + RETRY_BUDGET_WINDOW_S) as f64;
        prop_assert!(retries as f64 <= bound + 1e-9, "{retries} retries, bound {bound}");
    }
}

fn migrations(per_request: u8, burst: f64) -> MigrationBudget {
    MigrationBudget::new(MigrationLimits {
        per_request,
        per_s: 0.0,
        burst,
    })
}

#[test]
fn a_broken_answer_moves_to_another_replica_within_its_limits() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let mut m = migrations(2, 10.0);
    let (mut life, first) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    let second = life
        .failed_midway(Broke::Answer, true, &mut r, &mut m, 10)
        .unwrap();
    assert_ne!(second.replica, first.replica);
    assert_eq!((life.replica(), life.migrations()), (second.replica, 1));
    assert_eq!(r.in_flight(), 1, "still held, now by the new replica");
    let third = life
        .failed_midway(Broke::Answer, true, &mut r, &mut m, 20)
        .unwrap();
    assert!(![first.replica, second.replica].contains(&third.replica));
    // Its own limit is two moves.
    let refused = life
        .failed_midway(Broke::Answer, true, &mut r, &mut m, 30)
        .unwrap_err();
    assert_eq!(refused, Refusal::new(Fail::CutOff, Unmoved::RequestLimit));
    assert_eq!(r.in_flight(), 0, "finished once refused");
    assert_eq!(
        life.failed_midway(Broke::Answer, true, &mut r, &mut m, 40),
        Err(Refusal::new(Fail::CutOff, Unmoved::Ended))
    );
}

#[test]
fn what_cannot_be_continued_or_is_past_its_deadline_fails_as_before() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let mut m = migrations(2, 10.0);
    for (how, resumable, want) in [
        (
            Broke::Answer,
            false,
            Refusal::new(Fail::CutOff, Unmoved::NotResumable),
        ),
        (
            Broke::Deadline,
            true,
            Refusal::new(Fail::Timeout, Unmoved::Deadline),
        ),
    ] {
        let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
        assert_eq!(
            life.failed_midway(how, resumable, &mut r, &mut m, 0),
            Err(want)
        );
        assert_eq!(r.in_flight(), 0);
    }
    // The door's budget: one migration in the bucket, none refilled.
    let mut r = router(4, 4);
    let mut m = migrations(2, 1.0);
    let (mut one, _) = Lifecycle::begin(&mut r, &mut b, &admission(2, None), 0).unwrap();
    let (mut two, _) = Lifecycle::begin(&mut r, &mut b, &admission(3, None), 0).unwrap();
    assert!(one
        .failed_midway(Broke::Answer, true, &mut r, &mut m, 0)
        .is_ok());
    assert_eq!(
        two.failed_midway(Broke::Answer, true, &mut r, &mut m, 0),
        Err(Refusal::new(Fail::CutOff, Unmoved::Budget))
    );
    // Migration off.
    let mut r = router(4, 4);
    let mut off = MigrationBudget::new(MigrationLimits::OFF);
    let (mut three, _) = Lifecycle::begin(&mut r, &mut b, &admission(4, None), 0).unwrap();
    assert_eq!(
        three.failed_midway(Broke::Answer, true, &mut r, &mut off, 0),
        Err(Refusal::new(Fail::CutOff, Unmoved::RequestLimit))
    );
}

#[test]
fn a_request_that_breaks_every_replica_it_moves_to_is_quarantined_not_moved_forever() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let mut m = migrations(5, 10.0);
    let poison = admission(7, Some(0xbad));
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &poison, 0).unwrap();
    assert!(life
        .failed_midway(Broke::Answer, true, &mut r, &mut m, 0)
        .is_ok());
    // Implicated on two replicas, the default limit: refused, not moved a second time.
    assert_eq!(
        life.failed_midway(Broke::Answer, true, &mut r, &mut m, 5),
        Err(Refusal::new(
            Fail::Quarantined { replicas: 2 },
            Unmoved::Quarantined { replicas: 2 }
        ))
    );
    assert_eq!(r.in_flight(), 0);
    assert_eq!(
        Lifecycle::begin(&mut r, &mut b, &poison, 10),
        Err(Fail::Quarantined { replicas: 2 })
    );
}

#[test]
fn a_request_moved_off_replicas_taken_for_hung_is_not_implicated() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let mut m = migrations(5, 10.0);
    let innocent = admission(7, Some(0x600d));
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &innocent, 0).unwrap();
    // Every stream on two replicas in turn stopped: the replicas' fault.
    for t in [0, 5] {
        assert!(life
            .failed_midway(Broke::Hung, true, &mut r, &mut m, t)
            .is_ok());
    }
    // Not movable any more, it fails as cut off, never as quarantined.
    let mut limited = migrations(2, 10.0);
    assert_eq!(
        life.failed_midway(Broke::Hung, true, &mut r, &mut limited, 10),
        Err(Refusal::new(Fail::CutOff, Unmoved::RequestLimit))
    );
    assert_eq!(r.verdict(0x600d, 10), Verdict::Clear);
    assert!(Lifecycle::begin(&mut r, &mut b, &innocent, 10).is_ok());
}

#[test]
fn a_move_that_finds_no_replica_ends_the_request() {
    let mut r = router(1, 1);
    let mut b = budget(0.0, 10.0);
    let mut m = migrations(2, 10.0);
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    assert_eq!(
        life.failed_midway(Broke::Answer, true, &mut r, &mut m, 0),
        Err(Refusal::new(Fail::CutOff, Unmoved::NoReplica))
    );
    assert!(!life.is_open());
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn a_request_whose_node_is_lost_after_its_retry_is_spent_moves_on_and_is_not_implicated() {
    let mut r = router(4, 4);
    let mut b = budget(0.0, 10.0);
    let mut m = migrations(2, 10.0);
    let innocent = admission(7, Some(0x600d));
    let (mut life, first) = Lifecycle::begin(&mut r, &mut b, &innocent, 0).unwrap();
    // The first node lost: retried as any failed call.
    let Next::Retry(second) = life.node_lost_before_answer(&mut r, &mut b, &mut m, 10) else {
        panic!("the first loss is retried");
    };
    assert_ne!(second.replica, first.replica);
    assert_eq!((life.retried(), life.migrations()), (true, 0));
    // The second node lost too: no retry left, but nothing was sent, so it moves.
    let Next::Retry(third) = life.node_lost_before_answer(&mut r, &mut b, &mut m, 20) else {
        panic!("moved once its retry is spent");
    };
    assert!(![first.replica, second.replica].contains(&third.replica));
    assert_eq!(life.migrations(), 1);
    assert_eq!(r.in_flight(), 1);
    // Lost nodes implicate nobody.
    assert_eq!(r.verdict(0x600d, 30), Verdict::Clear);
    // It moves within its migration limit only (two moves), here on a fresh fleet.
    let mut r = router(6, 6);
    let (mut life, _) = Lifecycle::begin(&mut r, &mut b, &innocent, 30).unwrap();
    let mut outcomes = Vec::new();
    for t in 0..4 {
        outcomes.push(life.node_lost_before_answer(&mut r, &mut b, &mut m, 40 + t));
    }
    assert!(matches!(
        outcomes[..3],
        [Next::Retry(_), Next::Retry(_), Next::Retry(_)]
    ));
    assert_eq!(outcomes[3], Next::Fail(Fail::Unreachable));
    assert_eq!(r.in_flight(), 0, "finished once refused");
    assert_eq!(r.verdict(0x600d, 50), Verdict::Clear);
}

#[test]
fn a_lost_node_with_the_doors_retries_spent_moves_the_request_as_a_migration() {
    let mut r = router(4, 4);
    // No retry in the budget at all: the move comes from the migration budget, and
    // with that spent as well the request fails.
    let mut b = budget(0.0, 0.0);
    let mut m = migrations(2, 1.0);
    let (mut one, _) = Lifecycle::begin(&mut r, &mut b, &admission(1, None), 0).unwrap();
    let (mut two, _) = Lifecycle::begin(&mut r, &mut b, &admission(2, None), 0).unwrap();
    assert!(matches!(
        one.node_lost_before_answer(&mut r, &mut b, &mut m, 0),
        Next::Retry(_)
    ));
    assert!(!one.retried(), "moved, not retried");
    assert_eq!(
        two.node_lost_before_answer(&mut r, &mut b, &mut m, 0),
        Next::Fail(Fail::Unreachable)
    );
}
