//! Section `failover-proc`: leader failover as an operator meets it, with three
//! `sluice node start` processes, SIGKILL, and `sluice cluster status --json` polled on
//! the survivors; each result is an interval because a poll takes milliseconds.

use crate::machine::Background;
use crate::options::Options;
use crate::procs::{clear_logs, cluster_specs, status, wait_status, Proc};
use crate::report::{histogram, Spread, Summary};
use serde::Serialize;
use sluice_node::cluster::rpc::ClusterStatus;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct ProcTrial {
    old_leader: u64,
    new_leader: Option<u64>,
    /// The new leader was elected after this (start of the last poll that did not show it)...
    after_ms: Option<f64>,
    /// ...and before this (end of the first poll that did).
    before_ms: Option<f64>,
    /// Status polls completed meanwhile (both survivors).
    polls: usize,
    /// Time between the previous trial's restart of its dead node and this kill.
    since_restart_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct ProcFailoverResults {
    trials: Vec<ProcTrial>,
    detected_by: Spread,
    elected_after: Spread,
    status_poll: Summary,
    background_cpu_pct: f64,
}

fn nodes_settled(s: &ClusterStatus, n: usize) -> bool {
    let voters = s
        .nodes
        .iter()
        .filter(|x| x.role == "leader" || x.role == "voter")
        .count();
    s.leader.is_some() && s.nodes.len() == n && voters == n
}

/// Pause between two status polls of one survivor.
const POLL_PAUSE: Duration = Duration::from_millis(20);

pub fn bench_failover_proc(o: &Options, bin: &Path, logs: &Path) -> ProcFailoverResults {
    const N: usize = 3;
    clear_logs(logs, "fo-");
    let root = tempfile::tempdir_in(&o.dir).expect("temp dir");
    let specs = cluster_specs(bin, root.path(), "fo", N, 1);
    let creds = specs[0].data.clone();
    eprintln!(
        "failover (processes): {N} `sluice node start` nodes (one zero-delay replica each), SIGKILL the leader, {} trials",
        o.proc_trials
    );
    let mut procs: Vec<Option<Proc>> = Vec::new();
    for s in &specs {
        procs.push(Some(s.start(bin, logs)));
        // Join one at a time: each joiner needs the cluster to have a leader.
        let quics: Vec<SocketAddr> = specs[..procs.len()].iter().map(|s| s.quic).collect();
        let n = procs.len();
        wait_status(
            bin,
            &creds,
            &quics,
            Duration::from_secs(30),
            "all joined",
            |st| st.leader.is_some() && st.nodes.len() == n,
        );
    }
    let quics: Vec<SocketAddr> = specs.iter().map(|s| s.quic).collect();
    let mut poll_h = histogram();
    let mut trials = Vec::new();
    let ours: Vec<u32> = std::iter::once(std::process::id())
        .chain(procs.iter().flatten().map(Proc::pid))
        .collect();
    let bg = Background::start(&ours);
    let mut restarted: Option<Instant> = None;
    let mut attempts = 0;
    while trials.len() < o.proc_trials {
        attempts += 1;
        assert!(
            attempts <= 5 * o.proc_trials,
            "the nodes keep disagreeing about the leader"
        );
        // A restarted node's peers keep their QUIC connection to its previous
        // incarnation until the idle timeout notices it is dead; give them that time
        // (see --proc-settle).
        if let Some(r) = restarted {
            std::thread::sleep(o.proc_settle.saturating_sub(r.elapsed()));
        }
        let settled = wait_status(
            bin,
            &creds,
            &quics,
            Duration::from_secs(30),
            "three voters and one leader",
            |st| nodes_settled(st, N),
        );
        let old = settled[0].leader.expect("leader");
        if settled.iter().any(|s| s.leader != Some(old)) {
            // Not all agree yet; try again shortly.
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let li = settled
            .iter()
            .position(|s| s.answered_by == old)
            .expect("the leader answered");
        let survivors: Vec<SocketAddr> = (0..N).filter(|&i| i != li).map(|i| quics[i]).collect();
        // Quiet for a moment so the cluster is in steady heartbeats.
        std::thread::sleep(Duration::from_millis(300));
        let since_restart_ms = restarted.map(|r| r.elapsed().as_secs_f64() * 1000.0);
        let victim = procs[li].take().expect("running");
        let done = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        victim.kill9();
        let threads: Vec<_> = survivors
            .iter()
            .map(|&q| {
                let (bin, creds, done, polls) =
                    (bin.to_owned(), creds.clone(), done.clone(), polls.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(15) {
                        let start = t0.elapsed();
                        let leader = status(&bin, &creds, q).and_then(|s| s.leader);
                        let end = t0.elapsed();
                        let new = leader.filter(|&l| l != old);
                        polls
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((start, end, new));
                        if new.is_some() {
                            done.store(true, Ordering::Relaxed);
                        }
                        // Leave the survivors some CPU: a poll is a process start and a
                        // QUIC handshake.
                        std::thread::sleep(POLL_PAUSE);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("poller");
        }
        let polls = std::mem::take(&mut *polls.lock().unwrap_or_else(|p| p.into_inner()));
        for (s, e, _) in &polls {
            poll_h
                .record((*e - *s).as_micros().max(1) as u64)
                .expect("record");
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let first_new = polls.iter().filter(|p| p.2.is_some()).min_by_key(|p| p.1);
        let trial = match first_new {
            Some(&(_, end, new)) => {
                let after = polls
                    .iter()
                    .filter(|p| p.2.is_none() && p.0 < end)
                    .map(|p| p.0)
                    .max()
                    .unwrap_or(Duration::ZERO);
                ProcTrial {
                    old_leader: old,
                    new_leader: new,
                    after_ms: Some(ms(after)),
                    before_ms: Some(ms(end)),
                    polls: polls.len(),
                    since_restart_ms,
                }
            }
            None => ProcTrial {
                old_leader: old,
                new_leader: None,
                after_ms: None,
                before_ms: None,
                polls: polls.len(),
                since_restart_ms,
            },
        };
        let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.0}"));
        eprintln!(
            "  trial {:>2}: leader {old} SIGKILLed → {:?} elected between {} and {} ms ({} polls; {} s after the last restart)",
            trials.len() + 1,
            trial.new_leader,
            f(trial.after_ms),
            f(trial.before_ms),
            trial.polls,
            since_restart_ms.map_or("-".into(), |v| format!("{:.1}", v / 1000.0)),
        );
        trials.push(trial);
        // Bring the dead node back on the same data dir and ports.
        procs[li] = Some(specs[li].start(bin, logs));
        restarted = Some(Instant::now());
    }
    let (background_cpu_pct, _) = bg.stop();
    drop(procs);
    let r = ProcFailoverResults {
        detected_by: Spread::of(
            &trials
                .iter()
                .filter_map(|t| t.before_ms)
                .collect::<Vec<_>>(),
        ),
        elected_after: Spread::of(&trials.iter().filter_map(|t| t.after_ms).collect::<Vec<_>>()),
        status_poll: Summary::of(&poll_h),
        trials,
        background_cpu_pct,
    };
    eprintln!(
        "  new leader seen by (upper bound): {}",
        r.detected_by.line()
    );
    eprintln!(
        "  elected after (lower bound):      {}",
        r.elected_after.line()
    );
    eprintln!(
        "  one status poll:                  {}",
        r.status_poll.line()
    );
    r
}
