//! Section `raft`: how long a Raft commit takes and how many commit per second, with
//! 1, 8 and 64 writes in flight on the leader and one at a time on a follower, next to
//! the raw fsync cost of the same disk (what bounds a commit from below).

use crate::group::{leader_of, start_group, stop_group, Pki, QuicRaft};
use crate::machine::Background;
use crate::options::Options;
use crate::report::{histogram, Summary};
use serde::Serialize;
use sluice_raft::{ControlCommand, ControlPlane};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Raw fsync cost of the disk under `dir`: small appends, each followed by
/// `fdatasync` (what the log store does per append batch).
fn fsync_baseline(dir: &Path, n: usize) -> Summary {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("create probe file");
    let mut h = histogram();
    let record = [7u8; 128];
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&record).expect("write");
        f.sync_data().expect("fdatasync");
        h.record(t.elapsed().as_micros().max(1) as u64)
            .expect("record");
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Summary::of(&h)
}

#[derive(Serialize)]
pub struct RaftRun {
    /// Where the writes were submitted and how many were in flight.
    what: String,
    writers: usize,
    writes: u64,
    errors: u64,
    writes_per_s: f64,
    latency: Summary,
    background_cpu_pct: f64,
}

/// `writers` tasks each committing `Noop`s back to back through `cp` for `duration`.
async fn raft_load(
    cp: &ControlPlane<QuicRaft>,
    what: String,
    writers: usize,
    duration: Duration,
) -> RaftRun {
    let bg = Background::start(&[std::process::id()]);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let cp = cp.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match cp.write(ControlCommand::Noop).await {
                        Ok(_) => h
                            .record(t.elapsed().as_micros().max(1) as u64)
                            .expect("record"),
                        Err(_) => errors += 1,
                    }
                }
                (h, errors)
            })
        })
        .collect();
    let mut h = histogram();
    let mut errors = 0;
    for t in tasks {
        let (th, e) = t.await.expect("writer task");
        h.add(&th).expect("merge histograms");
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (background_cpu_pct, _) = bg.stop();
    let run = RaftRun {
        what,
        writers,
        writes: h.len(),
        errors,
        writes_per_s: h.len() as f64 / elapsed,
        latency: Summary::of(&h),
        background_cpu_pct,
    };
    eprintln!(
        "  {:<36} {:>7.0} writes/s  {}  errors {}  (background {:.0}%)",
        run.what,
        run.writes_per_s,
        run.latency.line(),
        run.errors,
        run.background_cpu_pct
    );
    run
}

#[derive(Serialize)]
pub struct RaftResults {
    fsync_baseline: Summary,
    runs: Vec<RaftRun>,
}

pub async fn bench_raft(o: &Options, pki: &Pki) -> RaftResults {
    let dir = tempfile::tempdir_in(&o.dir).expect("temp dir");
    let fsync = fsync_baseline(dir.path(), 300);
    eprintln!(
        "raft: 3 control planes over QUIC on loopback, data dirs in {}",
        o.dir.display()
    );
    eprintln!(
        "  fsync baseline (128-byte append + fdatasync): {}",
        fsync.line()
    );
    let members = start_group(pki, dir.path()).await;
    let leader = leader_of(&members);
    let follower = (leader + 1) % members.len();
    let mut runs = Vec::new();
    // Warm-up: connections, page cache, first snapshot.
    raft_load(
        &members[leader].cp,
        "(warm-up)".into(),
        8,
        Duration::from_millis(500),
    )
    .await;
    for &w in &o.writers {
        let what = if w == 1 {
            "1 in flight on leader (sequential)".to_owned()
        } else {
            format!("{w} in flight on leader")
        };
        runs.push(raft_load(&members[leader].cp, what, w, o.duration).await);
    }
    runs.push(
        raft_load(
            &members[follower].cp,
            "1 in flight on a follower".into(),
            1,
            o.duration,
        )
        .await,
    );
    stop_group(members).await;
    RaftResults {
        fsync_baseline: fsync,
        runs,
    }
}
