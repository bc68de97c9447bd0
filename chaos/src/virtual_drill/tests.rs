use super::*;
use crate::drill::broken;

fn args(scenario: &str, nodes: usize, racks: usize, gpus: usize, duration: f64) -> DrillArgs {
    DrillArgs {
        scenario: scenario.into(),
        nodes,
        racks,
        gpus_per_node: gpus,
        models: 1,
        duration,
        rate: 10.0,
        seed: 3,
        json: None,
        plot: None,
        no_quarantine: false,
        virtual_time: true,
        load: 0.5,
        engine_restart_s: 30.0,
        no_liveness_marks: false,
        no_hold_restarted_replicas: false,
        hold_restarted_replicas: false,
    }
}

fn drill(a: &DrillArgs) -> DrillReport {
    check(a).unwrap();
    let r = run(a).unwrap();
    let b = broken(&r);
    assert!(b.is_empty(), "{}: {b:?}\n{:#?}", a.scenario, r.summary);
    assert_eq!(r.summary.lost, 0, "{:#?}", r.summary);
    assert!(r.state_agrees, "{}: nodes disagree", a.scenario);
    assert!(r.summary.sent > 500, "{:#?}", r.summary);
    r
}

#[test]
fn every_scenario_keeps_the_invariants_on_a_small_virtual_fleet() {
    // As live nodes behave: the leader's liveness marks, restarted nodes' replicas held
    // until their engines serve.
    for sc in drill::SCENARIOS[..drill::SCENARIOS.len() - 1]
        .iter()
        .filter(|sc| !NOT_MODELLED.contains(sc))
    {
        let r = drill(&args(sc, 12, 3, 2, 60.0));
        assert!(r.fault_at_s > 0.0, "{sc}: no fault struck");
        // Issue 16's goal: the fault is invisible to every client.
        if [
            "rack-loss",
            "silent-hang",
            "node-crash-restart",
            "leader-kill",
            "partition",
            "rolling-restart",
        ]
        .contains(sc)
        {
            assert_eq!(r.summary.failed_explicit, 0, "{sc}: {:#?}", r.summary);
        }
        match *sc {
            "silent-hang" => {
                let ejected = r.recovery.ejected_s.expect("the hang is ejected");
                assert!(ejected < 15.0, "ejected after {ejected} s");
                assert!(r.recovery.restored_s.is_some(), "{:?}", r.recovery);
                assert!(
                    r.summary.success_rate_after_fault >= 0.99,
                    "{:#?}",
                    r.summary
                );
            }
            "poison-request" => {
                let p = r.poison.as_ref().expect("a poison report");
                assert!(p.refused >= 1, "{p:#?}");
                assert_eq!(p.lost, 0);
                let c = p.containment.as_ref().expect("judged");
                assert!(c.contained && !c.hurt.is_empty(), "{c:?}");
                assert!(c.hurt.len() <= 2, "{c:?}");
            }
            "slow-replica" | "rolling-restart" => {
                assert!(
                    r.summary.success_rate_after_fault >= 0.99,
                    "{:#?}",
                    r.summary
                );
            }
            _ => {}
        }
    }
}

#[test]
fn a_hang_under_load_is_out_of_service_within_five_seconds() {
    // Issue 16, item 6, at load 0.9: the streams on the hung replica fall silent, a
    // router says so, and its prober confirms on the engine's idle busy time. The
    // agentic traffic's prompts are mostly cached, so at this nominal load about 15 of
    // the 24 replicas get no request at all (only probes). A seed whose hung replica is
    // one of those is found by its idle probe: sent 5 s after the last proof (18 s,
    // 2 s before the hang), seen held at the next sample and unanswered 2 s later, so
    // out of service at 6 s (seeds 4, 5, 6, 9, 10, 12 and 13 of 0–15 as of
    // 2026-12-06); the requests that land on it meanwhile wait 3 s at most. Which seeds
    // those are moves with any change of routing, so the test counts over twelve. With
    // the counter's 5 s confirmation alone no seed is under 5 s.
    let mut within = 0;
    for seed in 0..12 {
        let mut a = args("silent-hang", 12, 3, 2, 60.0);
        a.load = 0.9;
        a.seed = seed;
        let r = drill(&a);
        assert_eq!(
            r.summary.failed_explicit, 0,
            "seed {seed}: {:#?}",
            r.summary
        );
        let ejected = r.recovery.ejected_s.expect("the hang is ejected");
        assert!(ejected < 10.0, "seed {seed}: ejected after {ejected} s");
        within += usize::from(ejected < 5.0);
    }
    assert!(within >= 6, "{within} of 12 seeds under 5 s");
}

#[test]
fn marking_silent_nodes_moves_their_slices_in_seconds_and_keeps_requests_whole() {
    for sc in [
        "rack-loss",
        "node-crash-restart",
        "leader-kill",
        "partition",
    ] {
        let mut a = args(sc, 12, 3, 2, 60.0);
        a.no_liveness_marks = true;
        a.no_hold_restarted_replicas = true;
        let shipped = drill(&a);
        a.no_liveness_marks = false;
        a.no_hold_restarted_replicas = false;
        let marked = drill(&a);
        assert!(
            marked.summary.success_rate_after_fault >= 0.99,
            "{sc}: {:#?}",
            marked.summary
        );
        assert!(
            marked.summary.success_rate_after_fault >= shipped.summary.success_rate_after_fault,
            "{sc}: marked {:#?} shipped {:#?}",
            marked.summary,
            shipped.summary
        );
        let re = marked.recovery.reassigned_s.expect("slices moved");
        assert!(re < 10.0, "{sc}: reassigned after {re} s");
    }
}

#[test]
fn a_follower_that_takes_over_from_a_dead_leader_marks_it_without_a_new_grace() {
    // Every router gossips to every node, so the follower elected after the leader's
    // death has heard the whole cluster all along: the dead leader's replicas go out
    // of service a liveness window after its last word (checked once a second), not a
    // window after the election.
    let r = drill(&args("leader-kill", 12, 3, 2, 60.0));
    let reassigned = r.recovery.reassigned_s.expect("slices moved");
    let window_s = world::LIVENESS_US as f64 / 1e6;
    assert!(
        reassigned <= window_s + 1.0,
        "reassigned after {reassigned} s"
    );
}

#[test]
fn without_the_quarantine_the_poison_spreads_past_its_subset() {
    let mut a = args("poison-request", 12, 3, 2, 90.0);
    a.no_quarantine = true;
    let r = run(&a).unwrap();
    let p = r.poison.as_ref().unwrap();
    let c = p.containment.as_ref().unwrap();
    assert_eq!(p.refused, 0, "{p:#?}");
    assert!(c.hurt.len() > 2, "{c:?}");
}

#[test]
fn a_large_fleet_loses_a_rack_without_losing_requests() {
    // 240 replicas on 60 nodes in 6 racks; the documented run is 2,000 replicas. No
    // client sees an error: streams on the dead replicas continue elsewhere, requests
    // waiting there fail over, and no door takes a busy replica for hung meanwhile.
    let r = drill(&args("rack-loss", 60, 6, 4, 90.0));
    assert_eq!(r.summary.failed_explicit, 0, "{:#?}", r.summary);
}

#[test]
fn the_same_seed_gives_the_same_drill() {
    let a = args("silent-hang", 6, 3, 2, 30.0);
    let (x, y) = (run(&a).unwrap(), run(&a).unwrap());
    assert_eq!(x.summary, y.summary);
    assert_eq!(x.recovery, y.recovery);
}

#[test]
fn bad_arguments_are_named() {
    let mut a = args("rack-loss", 6, 3, 2, 30.0);
    a.load = 0.0;
    assert!(check(&a).unwrap_err().to_string().contains("--load"));
    a.load = 0.5;
    a.engine_restart_s = f64::NAN;
    assert!(check(&a)
        .unwrap_err()
        .to_string()
        .contains("--engine-restart-s"));
    let a = args("cert-renewal", 6, 3, 2, 30.0);
    assert!(check(&a)
        .unwrap_err()
        .to_string()
        .contains("real processes"));
}

#[test]
fn plans_spare_the_first_leaders_rack_and_pick_about_one_percent() {
    let spec = Spec {
        nodes: 250,
        racks: 10,
        gpus_per_node: 8,
        profile: Profile::default_profile(),
        engine_restart_us: 0,
        node_restart_us: 0,
        peer_timeout_us: 0,
        election_us: 0,
        stream_idle_us: 0,
        request_timeout_us: 0,
        quarantine: true,
        keep_slices: false,
        liveness_marks: true,
        hold_restarted: false,
    };
    for seed in 0..20 {
        match &strike(&spec, "rack-loss", 1, 1, seed)[0].1 {
            Act::Kill { nodes, .. } => {
                assert_eq!(nodes.len(), 25);
                assert!(nodes.iter().all(|&n| spec.rack(n) != spec.rack(0)));
            }
            other => panic!("{other:?}"),
        }
        match &strike(&spec, "silent-hang", 1, 1, seed)[0].1 {
            Act::Hang(r) => assert_eq!(r.len(), 20),
            other => panic!("{other:?}"),
        }
    }
}
