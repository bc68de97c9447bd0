//! Section `failover`: how long a three-member group is without a leader after the
//! leader goes silent, measured in process where the survivors can be watched every
//! millisecond at almost no cost (`failover_proc` does it with real processes).

use crate::group::{leader_of, start_group, stop_group, Pki};
use crate::machine::Background;
use crate::options::Options;
use crate::report::Spread;
use serde::Serialize;
use sluice_raft::{ControlCommand, NodeId};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct FailoverTrial {
    old_leader: NodeId,
    new_leader: Option<NodeId>,
    /// Kill until the first survivor names a new leader (the new leader itself).
    first_knows_ms: Option<f64>,
    /// Kill until both survivors name it.
    all_know_ms: Option<f64>,
    /// Kill until a write submitted (and retried) on a survivor committed.
    write_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct FailoverResults {
    trials: Vec<FailoverTrial>,
    first_knows: Spread,
    all_know: Spread,
    write: Spread,
    background_cpu_pct: f64,
}

async fn failover_trial(pki: &Pki, root: &Path) -> FailoverTrial {
    let dir = tempfile::tempdir_in(root).expect("temp dir");
    let mut members = start_group(pki, dir.path()).await;
    // Let every member learn the leader and settle into heartbeats.
    for m in &members {
        m.cp.wait_for_leader(Duration::from_secs(5))
            .await
            .expect("leader known");
    }
    members[0]
        .cp
        .write(ControlCommand::Noop)
        .await
        .expect("write before the kill");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let li = leader_of(&members);
    let dead = members.remove(li);
    let old = dead.id;
    let t0 = Instant::now();
    let watchers: Vec<_> = members
        .iter()
        .map(|m| {
            let cp = m.cp.clone();
            tokio::spawn(async move {
                let deadline = t0 + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Some(l) = cp.metrics().leader.filter(|&l| l != old) {
                        return Some((t0.elapsed(), l));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                None
            })
        })
        .collect();
    let writer = {
        let cp = members[0].cp.clone();
        tokio::spawn(async move {
            let deadline = t0 + Duration::from_secs(15);
            while Instant::now() < deadline {
                if cp.write(ControlCommand::Noop).await.is_ok() {
                    return Some(t0.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    };
    // The "kill": no more traffic in or out of the leader, then its Raft stops.
    dead.endpoint.close();
    let _ = dead.cp.shutdown().await;
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.expect("watcher"));
    }
    let write = writer.await.expect("writer");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let first = seen.iter().flatten().map(|(d, _)| *d).min();
    let all = if seen.iter().all(Option::is_some) {
        seen.iter().flatten().map(|(d, _)| *d).max()
    } else {
        None
    };
    let trial = FailoverTrial {
        old_leader: old,
        new_leader: seen.iter().flatten().min_by_key(|(d, _)| *d).map(|x| x.1),
        first_knows_ms: first.map(ms),
        all_know_ms: all.map(ms),
        write_ms: write.map(ms),
    };
    stop_group(members).await;
    trial
}

pub async fn bench_failover(o: &Options, pki: &Pki) -> FailoverResults {
    eprintln!(
        "failover (in process): {} trials, heartbeat 100 ms, election timeout 500-1000 ms",
        o.trials
    );
    let bg = Background::start(&[std::process::id()]);
    let mut trials = Vec::new();
    for i in 0..o.trials {
        let t = failover_trial(pki, &o.dir).await;
        let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.0} ms"));
        eprintln!(
            "  trial {:>2}: leader {} killed → {:?} known by the first survivor after {}, by both after {}; a write committed after {}",
            i + 1,
            t.old_leader,
            t.new_leader,
            f(t.first_knows_ms),
            f(t.all_know_ms),
            f(t.write_ms)
        );
        trials.push(t);
    }
    let (background_cpu_pct, _) = bg.stop();
    let spread = |get: fn(&FailoverTrial) -> Option<f64>| {
        Spread::of(&trials.iter().filter_map(get).collect::<Vec<_>>())
    };
    let r = FailoverResults {
        first_knows: spread(|t| t.first_knows_ms),
        all_know: spread(|t| t.all_know_ms),
        write: spread(|t| t.write_ms),
        trials,
        background_cpu_pct,
    };
    eprintln!("  new leader known (first):  {}", r.first_knows.line());
    eprintln!("  new leader known (both):   {}", r.all_know.line());
    eprintln!("  first write committed:     {}", r.write.line());
    r
}
