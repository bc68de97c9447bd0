//! The tree under paused time: restarts, meltdown, gating, finished duties, stop.

use super::*;
use ractor::ActorProcessingErr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts its turns; fails every turn when told to.
struct Counter {
    turns: Arc<AtomicUsize>,
    fail: bool,
    finish_after: Option<usize>,
}

impl Duty for Counter {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = self.turns.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail {
            return Err("broken on purpose".into());
        }
        Ok(match self.finish_after {
            Some(k) if n >= k => Turn::Done,
            _ => Turn::Again,
        })
    }
}

fn counter(
    name: &'static str,
    fail: bool,
    finish_after: Option<usize>,
) -> (ChildSpec, Arc<AtomicUsize>) {
    let turns = Arc::new(AtomicUsize::new(0));
    let t = turns.clone();
    let spec = ChildSpec::duty(name, move || Counter {
        turns: t.clone(),
        fail,
        finish_after,
    });
    (spec, turns)
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        reset_after: Duration::from_secs(10),
        max_restarts: 3,
        window: Duration::from_secs(60),
    }
}

async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicked_actor_is_restarted_and_the_others_keep_running() {
    let (a, a_turns) = counter("a", false, None);
    let (b, b_turns) = counter("b", false, None);
    let tree = Tree::start(vec![a, b], policy(), None).await.unwrap();
    settle(Duration::from_secs(1)).await;
    assert_eq!(tree.running().await, vec!["a", "b"]);
    tree.panic("a");
    settle(Duration::from_millis(150)).await;
    let b_before = b_turns.load(Ordering::SeqCst);
    settle(Duration::from_secs(2)).await;
    // Restarted after its backoff, and turning again; its neighbour never stopped.
    assert_eq!(tree.running().await, vec!["a", "b"]);
    let a_before = a_turns.load(Ordering::SeqCst);
    settle(Duration::from_secs(1)).await;
    assert!(a_turns.load(Ordering::SeqCst) > a_before);
    assert!(b_turns.load(Ordering::SeqCst) >= b_before + 15);
    tree.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_actor_that_keeps_failing_melts_the_tree_down_with_its_name() {
    let (good, _) = counter("good", false, None);
    let (bad, bad_turns) = counter("bad", true, None);
    let tree = Tree::start(vec![good, bad], policy(), None).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(30), tree.meltdown())
        .await
        .expect("the tree gives up");
    assert!(why.contains("bad"), "{why}");
    assert!(why.contains("broken on purpose"), "{why}");
    // The first run and three restarts, then no more.
    assert_eq!(bad_turns.load(Ordering::SeqCst), 4);
    settle(Duration::from_secs(5)).await;
    assert_eq!(bad_turns.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_meltdown_inside_a_group_takes_the_whole_tree_down() {
    let (bad, _) = counter("inner", true, None);
    let group = ChildSpec::group("leader", vec![bad], policy(), None);
    let tree = Tree::start(vec![group], policy(), None).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(30), tree.meltdown())
        .await
        .expect("the tree gives up");
    assert!(why.contains("inner") && why.contains("leader"), "{why}");
}

#[tokio::test(start_paused = true)]
async fn gated_actors_run_only_while_the_gate_is_open() {
    let (gate_tx, gate) = watch::channel(false);
    let (duty, turns) = counter("assigner", false, None);
    let (always, _) = counter("gossip", false, None);
    let group = ChildSpec::group("leader", vec![duty], policy(), Some(gate));
    let tree = Tree::start(vec![always, group], policy(), None)
        .await
        .unwrap();
    settle(Duration::from_secs(1)).await;
    assert_eq!(tree.running().await, vec!["gossip", "leader"]);
    assert_eq!(turns.load(Ordering::SeqCst), 0);
    gate_tx.send_replace(true);
    settle(Duration::from_secs(1)).await;
    assert_eq!(tree.running().await, vec!["gossip", "leader", "assigner"]);
    assert!(turns.load(Ordering::SeqCst) > 0);
    gate_tx.send_replace(false);
    settle(Duration::from_secs(1)).await;
    assert_eq!(tree.running().await, vec!["gossip", "leader"]);
    let stopped_at = turns.load(Ordering::SeqCst);
    settle(Duration::from_secs(1)).await;
    assert_eq!(turns.load(Ordering::SeqCst), stopped_at);
    // Panicking a gated actor reaches it through its group.
    gate_tx.send_replace(true);
    settle(Duration::from_secs(1)).await;
    tree.panic("assigner");
    settle(Duration::from_secs(2)).await;
    assert_eq!(tree.running().await, vec!["gossip", "leader", "assigner"]);
    tree.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_finished_duty_is_not_restarted_and_stop_ends_everything() {
    let (once, turns) = counter("membership", false, Some(3));
    let (loop_, loop_turns) = counter("gossip", false, None);
    let tree = Tree::start(vec![once, loop_], policy(), None)
        .await
        .unwrap();
    settle(Duration::from_secs(2)).await;
    assert_eq!(turns.load(Ordering::SeqCst), 3);
    assert_eq!(tree.running().await, vec!["gossip"]);
    tree.stop().await;
    let after = loop_turns.load(Ordering::SeqCst);
    settle(Duration::from_secs(2)).await;
    assert_eq!(loop_turns.load(Ordering::SeqCst), after);
}

#[tokio::test(start_paused = true)]
async fn a_child_that_cannot_start_is_retried_then_melts_the_tree_down() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let broken = ChildSpec::new("broken", move |_parent| {
        a.fetch_add(1, Ordering::SeqCst);
        async { Err(ractor::SpawnErr::StartupFailed("no socket".into())) }
    });
    let (good, good_turns) = counter("good", false, None);
    let tree = Tree::start(vec![good, broken], policy(), None)
        .await
        .unwrap();
    let why = tokio::time::timeout(Duration::from_secs(30), tree.meltdown())
        .await
        .expect("the tree gives up");
    assert!(
        why.contains("broken") && why.contains("cannot start"),
        "{why}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    // The others ran meanwhile: a start failure is the child's, not its supervisor's.
    assert!(good_turns.load(Ordering::SeqCst) > 0);
}

#[tokio::test(start_paused = true)]
async fn stopping_the_tree_does_not_wait_out_its_actors_turns() {
    // Actors waiting for a far tick, one group nested: each turn waits up to MAX_WAIT,
    // and an actor hears its stop only between turns, so stopped one after another
    // they would take about MAX_WAIT each.
    let idle = |name| {
        ChildSpec::duty(name, || {
            every(
                Duration::from_secs(60),
                tokio::time::MissedTickBehavior::Delay,
                || async {},
            )
        })
    };
    let leader = ChildSpec::group(
        "leader",
        vec![idle("assigner"), idle("liveness")],
        policy(),
        None,
    );
    let tree = Tree::start(vec![idle("prober"), idle("gossip"), leader], policy(), None)
        .await
        .unwrap();
    // Every actor is halfway through a wait.
    settle(Duration::from_millis(1500)).await;
    assert_eq!(tree.running().await.len(), 5);
    let started = tokio::time::Instant::now();
    tree.stop().await;
    assert!(
        started.elapsed() < MAX_WAIT / 10,
        "stopping took {:?} of the actors' time",
        started.elapsed()
    );
}
