use super::*;
use crate::router::blocks::NO_CONTENT;

fn core(n: u64, subset: usize) -> RouterCore {
    test_router(n, subset)
}

fn adm(w: &str, input: u32, max: u32) -> Admission<'static> {
    Admission {
        workload: Some(SliceKey::of(w)),
        blocks: &NO_CONTENT,
        input_tokens: input,
        images: 0,
        max_tokens: Some(max),
        n: 1,
        fingerprint: None,
        radius: None,
        stream: false,
    }
}

#[test]
fn prices_follow_the_engines_token_count() {
    let mut c = core(1, 1);
    let before = c.quote(&adm("w", 1_000, 10));
    // The engine's tokenizer makes three tokens of every stand-in one.
    for i in 0..60 {
        let p = c.place(&adm(&format!("s{i}"), 1_000, 10), 0).unwrap();
        c.finish(
            p.id,
            Some(Usage {
                prompt_tokens: 3_000,
                completion_tokens: 10,
                cached_tokens: 0,
            }),
        );
    }
    assert!((c.token_scale() - 3.0).abs() < 1e-9);
    let after = c.quote(&adm("w", 1_000, 10));
    // Two more thousand uncached prompt tokens are charged (and their attention).
    let input_cost = 0.019 * 1_000.0;
    assert!(after >= before + 2.0 * input_cost, "{before} -> {after}");
}

#[test]
fn requests_that_write_nothing_leave_the_expected_answer_length_alone() {
    let mut c = core(1, 1);
    let usage = |out| {
        Some(Usage {
            prompt_tokens: 100,
            completion_tokens: out,
            cached_tokens: 0,
        })
    };
    for _ in 0..20 {
        let p = c.place(&adm("chat", 100, 500), 0).unwrap();
        c.finish(p.id, usage(300));
    }
    let before = c.quote(&adm("chat", 100, 500));
    // Embeddings of the same workload: no output allowed, none written.
    for _ in 0..50 {
        let p = c.place(&adm("chat", 100, 0), 0).unwrap();
        c.finish(p.id, usage(0));
    }
    assert_eq!(c.quote(&adm("chat", 100, 500)), before);
    // Chat answers that write nothing do teach it.
    for _ in 0..50 {
        let p = c.place(&adm("chat", 100, 500), 0).unwrap();
        c.finish(p.id, usage(1));
    }
    assert!(c.quote(&adm("chat", 100, 500)) < 0.5 * before);
}

#[test]
fn other_routers_load_steers_the_choice() {
    let mut c = core(2, 2);
    // Another router has a long request on replica 0: this one avoids it.
    c.set_external_load([(ReplicaId(0), 5_000.0)]);
    for i in 0..3 {
        let p = c.place(&adm(&format!("w{i}"), 100, 10), 0).unwrap();
        assert_eq!(p.replica, ReplicaId(1));
        c.finish(p.id, None);
    }
    assert!(c.own_load().is_empty());
    c.set_external_load([(ReplicaId(1), 5_000.0), (ReplicaId(0), f64::NAN)]);
    let p = c.place(&adm("w", 100, 10), 0).unwrap();
    assert_eq!(p.replica, ReplicaId(0));
    // Others are told what a newcomer would wait for there: the prefill whole and
    // a share of the decode.
    let queued = c.ledger().replica(ReplicaId(0)).queue_mu;
    assert!(queued > 0.0 && queued < p.mu, "{queued} of {}", p.mu);
    assert_eq!(c.own_load(), vec![(ReplicaId(0), queued, 1)]);
}

#[test]
fn running_decodes_delay_a_newcomer_less_than_queued_prefill() {
    // One replica runs a long generation that has started streaming; the other has
    // a little less MU in flight, all of it prefill another router queued there. A
    // new request's prefill joins the first replica's decode steps at once, but
    // waits for the whole queued prefill on the other: it goes to the first.
    let mut c = core(2, 2);
    let decoding = c.place(&adm("a", 10, 2_000), 0).unwrap();
    c.progress(decoding.id, 1, 0);
    let busy = c.ledger().replica(decoding.replica);
    assert!(busy.queue_mu < 0.5 * busy.mu, "{busy:?}");
    let other = ReplicaId(1 - decoding.replica.0);
    c.set_external_load([(other, 0.8 * busy.mu)]);
    let p = c.place(&adm("c", 100, 10), 0).unwrap();
    assert_eq!(p.replica, decoding.replica);
}

#[test]
fn the_replica_set_can_change_under_load() {
    let mut c = core(2, 2);
    let a = c.place(&adm("w", 100, 10), 0).unwrap();
    c.set_checked_health(ReplicaId(1), false);
    let specs: Vec<ReplicaSpec> = [1, 2]
        .iter()
        .map(|&i| ReplicaSpec {
            id: ReplicaId(i),
            capacity_mu_per_min: 60_000.0,
            host: i,
            rack: i,
        })
        .collect();
    c.set_replicas(&specs);
    c.set_assignment(Assignment::uniform(2, &[ReplicaId(1), ReplicaId(2)], 4, 2).unwrap());
    // Replica 1 kept its health verdict; replica 0 is gone; 2 is new and healthy.
    for _ in 0..5 {
        assert_eq!(
            c.place(&adm("w", 100, 10), 0).unwrap().replica,
            ReplicaId(2)
        );
    }
    // The request on the removed replica still finishes and frees its MU.
    c.finish(a.id, None);
    assert_eq!(c.ledger().replica(a.replica).requests, 0);
}

#[test]
fn long_requests_spread_by_mu_not_count() {
    let mut c = core(4, 4);
    // Two long requests and many short ones, each its own workload (nothing cached
    // anywhere): the long ones land on different replicas and the short ones avoid them.
    let long1 = c.place(&adm("long-1", 30_000, 2000), 0).unwrap();
    let long2 = c.place(&adm("long-2", 30_000, 2000), 0).unwrap();
    assert_ne!(long1.replica, long2.replica);
    for i in 0..20 {
        let p = c.place(&adm(&format!("short-{i}"), 200, 50), 0).unwrap();
        assert!(p.replica != long1.replica && p.replica != long2.replica);
    }
}

#[test]
fn a_workload_follows_its_prefix_and_is_priced_by_what_is_cached_there() {
    let mut c = core(2, 2);
    let first = c.place(&adm("chat", 10_000, 100), 0).unwrap();
    c.progress(first.id, 100, 0);
    c.finish(
        first.id,
        Some(Usage {
            prompt_tokens: 10_000,
            completion_tokens: 100,
            cached_tokens: 0,
        }),
    );
    // Other (cold) work makes the warm replica the busier one.
    let mut others = vec![c.place(&adm("other-1", 2_000, 50), 0).unwrap()];
    if others[0].replica != first.replica {
        let o = c.place(&adm("other-2", 4_000, 50), 0).unwrap();
        assert_eq!(
            o.replica, first.replica,
            "a cold request takes the idle replica"
        );
        others.push(o);
    }
    let other_replica = ReplicaId(1 - first.replica.0);
    assert!(c.ledger().replica(first.replica).mu > c.ledger().replica(other_replica).mu);
    // The next turn extends the prompt: it goes back where its 10k tokens are cached
    // and is charged only the 500 new ones.
    let next = c.place(&adm("chat", 10_500, 100), 0).unwrap();
    assert_eq!(next.replica, first.replica);
    assert!(next.mu < first.mu / 2.0, "{} vs {}", next.mu, first.mu);
    c.finish(next.id, None);
    for o in others {
        c.finish(o.id, None);
    }
    // A workload that never finds its prefix cached learns to expect nothing.
    for _ in 0..30 {
        let p = c.place(&adm("chat", 10_500, 100), 0).unwrap();
        c.finish(
            p.id,
            Some(Usage {
                prompt_tokens: 10_500,
                completion_tokens: 100,
                cached_tokens: 0,
            }),
        );
    }
    let p = c.place(&adm("chat", 10_500, 100), 0).unwrap();
    assert!(p.mu > first.mu * 0.95, "{} vs {}", p.mu, first.mu);
}

#[test]
fn anonymous_traffic_is_not_piled_onto_a_guessed_prefix() {
    let mut c = core(2, 2);
    let anon = |input| Admission {
        workload: None,
        ..adm("", input, 100)
    };
    // A keyed workload's next request is priced as cached where the first one went.
    let a = c.place(&adm("keyed", 20_000, 100), 0).unwrap();
    c.finish(a.id, None);
    let b = c.place(&adm("keyed", 20_000, 100), 0).unwrap();
    assert_eq!(a.replica, b.replica);
    assert!(b.mu < a.mu / 2.0);
    c.finish(b.id, None);
    // Anonymous requests never are, and spread by load.
    let first = c.place(&anon(20_000), 0).unwrap();
    let next = c.place(&anon(20_000), 0).unwrap();
    assert_ne!(first.replica, next.replica);
    assert!(
        next.mu > 20_000.0 * 0.019,
        "charged the whole prefill: {}",
        next.mu
    );
}

#[test]
fn accounting_returns_to_zero_and_history_is_learned() {
    let mut c = core(2, 2);
    let p = c.place(&adm("w", 1000, 500), 0).unwrap();
    let before = c.ledger().replica(p.replica).mu;
    c.progress(p.id, 1, 0);
    assert!(c.ledger().replica(p.replica).mu < before);
    c.finish(
        p.id,
        Some(Usage {
            prompt_tokens: 1000,
            completion_tokens: 20,
            cached_tokens: 0,
        }),
    );
    assert_eq!(c.in_flight(), 0);
    assert!(c
        .replicas(0)
        .iter()
        .all(|r| r.inflight == ReplicaInflight::default()));
    let again = c.place(&adm("w", 1000, 500), 0).unwrap();
    assert!(
        again.mu < before,
        "a workload seen to stop early is priced lower"
    );
}

#[test]
fn retry_goes_elsewhere_and_ejects_the_failed_replica() {
    let mut c = core(3, 1);
    let p = c.place(&adm("x", 100, 10), 0).unwrap();
    let r = c.retry(p.id, p.replica, 0).unwrap();
    assert_ne!(r.replica, p.replica);
    assert_eq!(c.ledger().replica(p.replica).requests, 0);
    assert!(
        !c.replicas(10)
            .iter()
            .find(|v| v.id == p.replica)
            .unwrap()
            .available
    );
    // A new request of the same workload avoids it while ejected.
    assert_ne!(c.place(&adm("x", 100, 10), 10).unwrap().replica, p.replica);
}

#[test]
fn a_streams_first_token_tells_how_much_slower_than_its_profile_its_replica_is() {
    let mut c = core(1, 1);
    let long = Admission {
        stream: true,
        ..adm("a", 100_000, 10)
    };
    let p = c.place(&long, 0).unwrap();
    let expected = c.queue_ms(p.replica);
    assert!(expected > 1_000, "{expected}");
    assert_eq!(c.stalls.slowness(p.replica), 1.0);
    c.progress(p.id, 1, 10 * expected);
    let slowness = c.stalls.slowness(p.replica);
    assert!((slowness - 10.0).abs() < 1e-9, "{slowness}");
    // Later tokens, and an answer sent whole (its wait includes writing it), say
    // nothing of it.
    c.progress(p.id, 5, 20 * expected);
    let whole = c.place(&adm("b", 100_000, 10), 0).unwrap();
    c.progress(whole.id, 1, 1_000 * expected);
    assert_eq!(c.stalls.slowness(p.replica), slowness);
}

#[test]
fn a_replica_slower_than_its_profile_is_given_time_for_a_long_prompt() {
    // A long prompt's first token on replica `slow` comes `late` times its expected
    // wait; then another long prompt waits there while the other replica streams.
    // Returns how long that one waited before the replica was taken for hung.
    let judged_after = |late: u64| -> u64 {
        let mut c = core(2, 2);
        let long = |key: String| Admission {
            stream: true,
            ..adm(&key, 100_000, 10)
        };
        let first = c.place(&long("a".into()), 0).unwrap();
        let slow = first.replica;
        let t0 = late * c.queue_ms(slow);
        c.progress(first.id, 1, t0);
        c.finish(first.id, None);
        let witness = (0..20)
            .map(|i| {
                let short = Admission {
                    stream: true,
                    ..adm(&format!("w{i}"), 100, 100_000)
                };
                c.place(&short, t0).unwrap()
            })
            .find(|p| p.replica != slow)
            .expect("a stream on the other replica");
        let waiting = (0..20)
            .map(|i| c.place(&long(format!("b{i}")), t0).unwrap())
            .find(|p| p.replica == slow)
            .expect("a long prompt on the slow replica");
        assert!(waiting.id > witness.id);
        for t in (t0 + 50..t0 + 600_000).step_by(50) {
            c.progress(witness.id, ((t - t0) / 50) as u32, t);
            if c.take_stalled(t) == vec![slow] {
                return t - t0;
            }
        }
        panic!("never judged");
    };
    let on_time = judged_after(1);
    let ten_times = judged_after(10);
    assert!(on_time > 3_000, "{on_time}");
    assert!(ten_times >= 9 * on_time, "{ten_times} vs {on_time}");
}

#[test]
fn a_replica_whose_streams_never_start_while_another_answers_is_taken_for_hung() {
    // `late`: the other routers' report comes only after the requests were sent.
    let run_with = |stream: bool, input: u32, peers_mu: f64, late: bool| {
        let mut c = core(2, 2);
        // Work other routers report queued on each replica.
        let peers = [(ReplicaId(0), peers_mu), (ReplicaId(1), peers_mu)];
        if !late {
            c.set_external_load(peers);
        }
        // Two requests, on the two replicas.
        let first = c
            .place(
                &Admission {
                    stream,
                    ..adm("a", input, 400)
                },
                0,
            )
            .unwrap();
        let mut other = None;
        for i in 0..20 {
            let streamed = Admission {
                stream: true,
                ..adm(&format!("b{i}"), 100, 400)
            };
            let p = c.place(&streamed, 0).unwrap();
            if p.replica != first.replica {
                other = Some(p);
                break;
            }
        }
        let other = other.expect("a request on the other replica");
        if late {
            c.set_external_load(peers);
        }
        // The other replica streams on; the first one never sends a token.
        let mut judged = None;
        for t in (50..60_000u64).step_by(50) {
            c.progress(other.id, (t / 50) as u32, t);
            if judged.is_none() && c.take_stalled(t) == vec![first.replica] {
                judged = Some(t);
            }
        }
        judged
    };
    let run = |stream: bool, input: u32| run_with(stream, input, 0.0, false);
    let judged = run(true, 100).expect("the silent replica is judged");
    assert!((3_000..=3_200).contains(&judged), "{judged}");
    // In a cluster each router holds only its share of a replica's queue: the work
    // the other routers report queued there is waited for too (10 s of it at the
    // test replicas' 60,000 MU a minute).
    let queued = run_with(true, 100, 10_000.0, false).expect("judged in the end");
    assert!(queued > 3 * 10_000, "{queued}");
    // Reports come up to a gossip round late: work a peer placed there just before
    // the request, heard of only after it was sent, is waited for as well.
    let late = run_with(true, 100, 10_000.0, true).expect("judged in the end");
    assert!(late > 3 * 10_000, "{late}");
    // A long prompt's own prefill is work: its replica is given three times as long.
    let mut alone = core(1, 1);
    alone.place(&adm("p", 100_000, 1), 0).unwrap();
    let prefill_ms = alone.queue_ms(ReplicaId(0));
    assert!(prefill_ms > 1_200, "{prefill_ms}");
    let long = run(true, 100_000).expect("judged in the end");
    assert!(long > 3 * prefill_ms, "{long} vs {prefill_ms}");
    // An answer sent whole: writing its 400 tokens at the pace seen elsewhere (50 ms
    // a token) explains three times 20 s of silence.
    let whole = run(false, 100).expect("judged in the end");
    assert!(whole >= 3 * 399 * 50, "{whole}");
}

#[test]
fn a_replica_that_never_answers_whole_while_another_streams_is_taken_for_hung() {
    let mut c = core(2, 2);
    // A stream on each replica at 20 ms a token: both paces known.
    let mut on = Vec::new();
    for i in 0..40 {
        let a = Admission {
            stream: true,
            ..adm(&format!("s{i}"), 100, 40)
        };
        let p = c.place(&a, 0).unwrap();
        if !on.iter().any(|q: &Placement| q.replica == p.replica) {
            on.push(p);
        }
        if on.len() == 2 {
            break;
        }
    }
    assert_eq!(on.len(), 2);
    for t in (20..=800u64).step_by(20) {
        for p in &on {
            c.progress(p.id, (t / 20) as u32, t);
        }
    }
    let (hung, live) = (on[0], on[1]);
    c.finish(hung.id, None);
    // A whole answer of at most 100 tokens on the first replica, which then falls
    // silent; the second streams on.
    let mut whole = None;
    for i in 0..40 {
        let p = c.place(&adm(&format!("w{i}"), 100, 100), 1_000).unwrap();
        if p.replica == hung.replica {
            whole = Some(p);
            break;
        }
        c.finish(p.id, None);
    }
    assert!(whole.is_some(), "a whole answer on the first replica");
    let mut judged = None;
    for t in (1_000..60_000u64).step_by(50) {
        c.progress(live.id, 40 + ((t - 1_000) / 20) as u32, t);
        if judged.is_none() && c.take_stalled(t) == vec![hung.replica] {
            judged = Some(t);
        }
    }
    // Writing 100 tokens at 20 ms takes ~2 s: three times that, past the 3 s floor.
    let judged = judged.expect("judged");
    assert!((6_900..=7_400).contains(&judged), "{judged}");
}

#[test]
fn a_retry_leaves_the_failed_replicas_rack_then_machine_while_another_can_take_it() {
    // (replica, machine, rack); every slice's subset is the whole fleet.
    let on = |fleet: &[(u64, u64, u64)]| {
        let ids: Vec<ReplicaId> = fleet.iter().map(|&(r, _, _)| ReplicaId(r)).collect();
        let specs: Vec<ReplicaSpec> = fleet
            .iter()
            .map(|&(r, host, rack)| ReplicaSpec {
                id: ReplicaId(r),
                capacity_mu_per_min: 60_000.0,
                host,
                rack,
            })
            .collect();
        let assignment = Assignment::uniform(1, &ids, 8, ids.len()).unwrap();
        RouterCore::new(
            crate::mu::pricing::test_coefficients(),
            RouterConfig::default(),
            &specs,
            assignment,
        )
    };
    let retried = |fleet: &[(u64, u64, u64)], workload: &str| {
        // A fresh router each time: the retry ejects the failed replica.
        let mut c = on(fleet);
        let p = c.place(&adm(workload, 100, 10), 0).unwrap();
        let r = c.retry(p.id, p.replica, 0).unwrap();
        (p.replica.0, r.replica.0)
    };
    // Two racks of two machines of two replicas.
    let racks: Vec<(u64, u64, u64)> = (0..8).map(|r| (r, r / 2, r / 4)).collect();
    // One rack of three machines of two replicas.
    let machines: Vec<(u64, u64, u64)> = (0..6).map(|r| (r, r / 2, 0)).collect();
    let mut first = std::collections::BTreeSet::new();
    for i in 0..40 {
        let (p, r) = retried(&racks, &format!("w{i}"));
        first.insert(p);
        assert_ne!(p / 4, r / 4, "{p} then {r}: the same rack");
        let (p, r) = retried(&machines, &format!("w{i}"));
        assert_ne!(p / 2, r / 2, "{p} then {r}: the same machine");
    }
    assert!(first.len() > 2, "the first choices vary: {first:?}");
    // One machine only: the retry takes its sibling rather than failing.
    let (p, r) = retried(&[(0, 7, 0), (1, 7, 0)], "x");
    assert_ne!(p, r);
}

#[test]
fn a_bounded_tenant_reaches_only_its_replicas_whatever_its_load() {
    use std::collections::BTreeSet;
    let mut c = core(16, 2);
    let radius = BlastRadius::of_tenant("acme", 3);
    let bounded = |w: &str| Admission {
        radius,
        ..adm(w, 4000, 200)
    };
    // Many workloads, far more load than three replicas take: still only three.
    let mut used = BTreeSet::new();
    let mut placed = Vec::new();
    for i in 0..300 {
        let p = c.place(&bounded(&format!("w{i}")), 0).unwrap();
        used.insert(p.replica);
        placed.push(p);
    }
    assert_eq!(used.len(), 3, "{used:?}");
    // Unbounded traffic of the same shape spreads over the fleet.
    let mut free = BTreeSet::new();
    for i in 0..300 {
        free.insert(
            c.place(&adm(&format!("v{i}"), 4000, 200), 0)
                .unwrap()
                .replica,
        );
    }
    assert!(free.len() > 8, "{free:?}");
    // One of the tenant's replicas fails: the tenant moves to one other replica,
    // and never to more than three at once.
    let failed = *used.iter().next().unwrap();
    let p = placed.iter().find(|p| p.replica == failed).unwrap();
    let again = c.retry(p.id, failed, 10).unwrap();
    assert!(again.replica != failed);
    let mut after = BTreeSet::new();
    for i in 0..100 {
        after.insert(c.place(&bounded(&format!("x{i}")), 20).unwrap().replica);
    }
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.contains(&failed));
    assert_eq!(after.intersection(&used).count(), 2);
    // Every router computes the same set.
    let mut other = core(16, 2);
    let p = other.place(&bounded("w0"), 0).unwrap();
    assert!(used.contains(&p.replica));
}

/// Turn `t` of conversation `c` behind a 4,000-byte system prompt shared by all.
fn turn(c: u64, t: u64) -> PromptBlocks {
    let mut text: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    for k in 0..=t {
        text.extend((0..600u64).map(|i| ((c * 7919 + k * 104_729 + i * 31) % 256) as u8));
    }
    PromptBlocks::of_bytes(&text)
}

fn unkeyed(blocks: &PromptBlocks) -> Admission<'_> {
    Admission {
        workload: None,
        blocks,
        input_tokens: (blocks.bytes / 4) as u32,
        ..adm("", 0, 50)
    }
}

fn done(input: u32, cached: u32) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: input,
        completion_tokens: 50,
        cached_tokens: cached,
    })
}

#[test]
fn unkeyed_conversations_find_their_prefix_and_spread() {
    let mut c = core(8, 2);
    let mut homes = std::collections::HashSet::new();
    // Twelve conversations start at once.
    let firsts: Vec<(PromptBlocks, Placement)> = (0..12)
        .map(|conv| {
            let first = turn(conv, 0);
            let a = c.place(&unkeyed(&first), 0).unwrap();
            (first, a)
        })
        .collect();
    for (first, a) in &firsts {
        // What the engine finds: the system prompt's 15 full blocks where another
        // conversation was before.
        let found = if homes.insert(a.replica) { 0 } else { 960 };
        c.finish(a.id, done(unkeyed(first).input_tokens, found));
    }
    for (conv, (_, a)) in firsts.iter().enumerate() {
        let conv = conv as u64;
        // The next turn is known by its content alone: it goes where the first one
        // went, and is priced as mostly cached there.
        let second = turn(conv, 1);
        let b = c.place(&unkeyed(&second), 0).unwrap();
        assert_eq!(b.replica, a.replica, "conversation {conv}");
        let cold = c.quote(&unkeyed(&second));
        assert!(b.mu < cold * 0.6, "{} vs {cold}", b.mu);
        // The first turn's 17 full blocks.
        c.finish(b.id, done(unkeyed(&second).input_tokens, 17 * 64));
    }
    // Conversations behind one system prompt are not one workload.
    assert!(homes.len() >= 4, "{homes:?}");
}

#[test]
fn a_replica_that_keeps_missing_is_discounted() {
    let mut c = core(2, 2);
    let p = turn(1, 0);
    let input = unkeyed(&p).input_tokens;
    let a = c.place(&unkeyed(&p), 0).unwrap();
    // The engine reports cached tokens, so its reports are believed.
    c.finish(a.id, done(input, 10));
    let b = c.place(&unkeyed(&p), 0).unwrap();
    assert_eq!(b.replica, a.replica);
    assert!(b.mu < a.mu * 0.6, "{} vs {}", b.mu, a.mu);
    c.finish(b.id, done(input, input));
    // Its engine then finds nothing, again and again: its promises lose weight.
    let mut last = b.mu;
    for _ in 0..8 {
        let next = c.place(&unkeyed(&p), 0).unwrap();
        assert!(next.mu >= last - 1e-9, "{} after {last}", next.mu);
        last = next.mu;
        c.finish(next.id, done(input, 0));
    }
    assert!(last > a.mu * 0.8, "{last} vs {}", a.mu);
}

#[test]
fn an_implicated_request_stays_in_its_subset_and_is_refused_at_the_limit() {
    let mut c = core(6, 2);
    let poison = Admission {
        fingerprint: Some(99),
        ..adm("p", 100, 10)
    };
    let subset = c
        .assignment()
        .lookup(poison.workload.unwrap())
        .subset
        .clone();
    let first = c.place(&poison, 0).unwrap();
    assert!(subset.contains(&first.replica));
    // It hung its replica: implicated, then retried - only inside the subset.
    c.implicate(first.id, first.replica, 0);
    assert_eq!(c.verdict(99, 0), Verdict::Confined);
    let second = c.retry(first.id, first.replica, 0).unwrap();
    assert!(subset.contains(&second.replica) && second.replica != first.replica);
    c.implicate(second.id, second.replica, 0);
    assert_eq!(c.verdict(99, 0), Verdict::Refused { replicas: 2 });
    // With its subset out, a confined request finds no replica...
    c.finish(second.id, None);
    let mut c2 = core(6, 2);
    c2.merge_implications(&c.announced_implications(0), 0);
    let s = c2
        .assignment()
        .lookup(poison.workload.unwrap())
        .subset
        .clone();
    let other = Admission {
        fingerprint: Some(7),
        ..poison
    };
    let seed = c2.place(&other, 0).unwrap();
    c2.implicate(seed.id, seed.replica, 0);
    c2.finish(seed.id, None);
    for r in &s {
        c2.set_checked_health(*r, false);
    }
    assert_eq!(c2.place(&other, 0), None);
    // ...while a clear request of the same workload spills to a healthy one.
    let clear = Admission {
        fingerprint: Some(8),
        ..poison
    };
    let spilled = c2.place(&clear, 0).unwrap();
    assert!(!s.contains(&spilled.replica) && spilled.spilled);
}

#[test]
fn a_passing_health_check_does_not_end_an_ejection() {
    let mut c = core(1, 1);
    c.on_replica_failure(ReplicaId(0), 0);
    c.set_checked_health(ReplicaId(0), true);
    assert_eq!(c.place(&adm("x", 100, 10), 10), None);
    assert!(
        c.place(&adm("x", 100, 10), 1_000).is_some(),
        "the ejection ends by its backoff"
    );
}

#[test]
fn no_available_replica_means_no_placement() {
    let mut c = core(2, 2);
    c.set_checked_health(ReplicaId(0), false);
    c.set_checked_health(ReplicaId(1), false);
    assert_eq!(c.place(&adm("x", 100, 10), 0), None);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn implications_are_announced_while_they_count_so_a_restarted_router_relearns_them() {
    let mut heard = core(6, 2);
    let old = Implication {
        fingerprint: 5,
        replica: ReplicaId(1),
        age_ms: 0,
    };
    heard.merge_implications(
        &[
            old,
            Implication {
                replica: ReplicaId(2),
                ..old
            },
        ],
        0,
    );
    // Nine minutes later, still within the ten-minute window: announced, with its age.
    let announced = heard.announced_implications(540_000);
    assert_eq!(announced.len(), 2);
    assert!(announced.iter().all(|i| i.age_ms == 540_000));
    // A router that starts now learns the refusal from it.
    let mut restarted = core(6, 2);
    restarted.merge_implications(&announced, 540_000);
    assert_eq!(
        restarted.verdict(5, 540_000),
        Verdict::Refused { replicas: 2 }
    );
    // Past the window nothing is announced, and it expires everywhere at once.
    assert!(heard.announced_implications(600_000).is_empty());
    assert_eq!(restarted.verdict(5, 600_000), Verdict::Clear);
    // At most the newest ANNOUNCED_AT_MOST go out.
    let many: Vec<Implication> = (0..ANNOUNCED_AT_MOST as u64 + 10)
        .map(|k| Implication {
            fingerprint: 1_000 + k,
            replica: ReplicaId(1),
            age_ms: k,
        })
        .collect();
    heard.merge_implications(&many, 540_000);
    let announced = heard.announced_implications(540_000);
    assert_eq!(announced.len(), ANNOUNCED_AT_MOST);
    assert!(announced
        .iter()
        .all(|i| i.age_ms < ANNOUNCED_AT_MOST as u64));
}

/// Places `burst` requests of one keyed workload at once, after a first one made its
/// home (a subset of one replica) warm; for each, whether it left the home and how many
/// of the burst were waiting there for their first token when it was placed.
fn burst_of(c: &mut RouterCore, burst: usize) -> (Vec<(bool, usize)>, Vec<RequestId>) {
    let code = || adm("code", 500, 500);
    let first = c.place(&code(), 0).unwrap();
    c.progress(first.id, 500, 0);
    c.finish(
        first.id,
        Some(Usage {
            prompt_tokens: 500,
            completion_tokens: 500,
            cached_tokens: 0,
        }),
    );
    let mut seen = Vec::new();
    let mut ids = Vec::new();
    let mut at_home = 0;
    for _ in 0..burst {
        let p = c.place(&code(), 0).unwrap();
        seen.push((p.spilled, at_home));
        at_home += usize::from(p.replica == first.replica);
        ids.push(p.id);
    }
    (seen, ids)
}

#[test]
fn a_burst_that_outruns_its_home_takes_one_more_replica() {
    // Inside the spill margin (0.5 s), a burst of one workload piles onto its warm
    // replica when the rule is off.
    let mut off = core(4, 1);
    off.config.spill.burst = 0;
    let (seen, _) = burst_of(&mut off, 8);
    assert!(seen.iter().all(|&(left, _)| !left), "{seen:?}");
    // With it, the burst stays home until three of it wait there, then leaves for a
    // replica that scores better.
    let mut c = core(4, 1);
    let (seen, ids) = burst_of(&mut c, 8);
    assert!(seen.iter().any(|&(left, _)| left), "{seen:?}");
    assert!(
        seen.iter().all(|&(left, waiting)| !left || waiting >= 3),
        "{seen:?}"
    );
    // The count of what waits falls with first tokens and ends.
    assert!(!c.waiting.is_empty());
    for &id in &ids[..4] {
        c.progress(id, 1, 10);
    }
    for id in ids {
        c.finish(id, None);
    }
    assert!(c.waiting.is_empty());
}
