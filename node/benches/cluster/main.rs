//! Cluster-mode benchmarks (issue 4): Raft commit latency and throughput over real QUIC
//! with fsynced logs, leader failover time, and the cost of serving a request from a
//! replica on another node.
//!
//! ```text
//! cargo bench -p sluice --bench cluster [-- OPTIONS]
//!   --only LIST          comma-separated sections: raft, failover, failover-proc, forward,
//!                        handoff (default: all five)
//!   --duration S         measured seconds per Raft throughput run and per forwarding run (3)
//!   --writers 1,8,64     concurrent Raft writers (requests in flight)
//!   --trials N           in-process failover trials (10)
//!   --proc-trials N      failover trials with `sluice node start` processes (10)
//!   --proc-settle S      least time between restarting a killed node and the next kill
//!                        (6: more than the 5 s QUIC idle timeout, see below)
//!   --concurrency N      forwarding and handoff: concurrency of the loaded runs (16; 1 is
//!                        always run)
//!   --max-tokens N       forwarding and handoff: tokens per answer, with ignore_eos (8)
//!   --dir PATH           parent of the Raft data dirs and node data dirs (default: the
//!                        system temp dir; put it on the disk you want to measure)
//!   --json PATH          results file (default target/bench-cluster/results.json); the
//!                        nodes' logs go next to it. Relative paths (also --dir) are
//!                        taken from the workspace root, not cargo's package directory.
//!   --quiet-wait S       wait up to S for the machine to go quiet before each section (5)
//! ```
//!
//! The failover-proc, forward and handoff sections start the `sluice` binary that cargo builds
//! with this bench (`SLUICE_BIN` overrides it).
//!
//! Sections (one module each):
//!
//! - `raft` ([`raft`], over [`group`]): three `ControlPlane`s in this process, each with
//!   its own data dir (durable log, fsync per append batch) and its own QUIC endpoint on
//!   loopback with mutual TLS from a cluster CA, with the node's Raft timings. Every
//!   Raft message is a `sluice_transport` call carrying the node's own
//!   `NodeRpc::Raft` / `NodeReply::Raft`. Measures `write(ControlCommand::Noop)` with 1
//!   (sequential), 8 and 64 writes in flight on the leader, then one at a time on a
//!   follower (forwarded to the leader). A raw fsync baseline of the same disk is
//!   measured first.
//! - `failover` ([`failover`]): the same three-node group, fresh per trial. The
//!   leader's endpoint is closed (no more traffic in or out) and its Raft shut down; the
//!   survivors' metrics are polled every millisecond until they name another leader,
//!   and a writer on a survivor retries `Noop` until one commits.
//! - `failover-proc` ([`failover_proc`], over [`procs`]): three `sluice node start`
//!   processes in cluster mode. The leader is killed with SIGKILL; both survivors are
//!   polled with `sluice cluster status --json` until one names another leader. The
//!   dead node is then restarted on the same data dir and ports, and the next trial
//!   kills whoever leads, at least `--proc-settle` after that restart: until the 5 s
//!   QUIC idle timeout notices, the other nodes keep a connection to the dead
//!   incarnation, and an election meanwhile can lose 1-2 s to votes sent into it
//!   (`--proc-settle 0` shows it). The result is an interval: after the start of the
//!   last poll that still showed no new leader, before the end of the first that did.
//! - `forward` ([`forward`]): two nodes, each launching one zero-delay simulated
//!   replica. Requests go to node A's front door, each with a distinct `x-session-id`;
//!   the `x-sluice-replica` answer header tells whether A's own replica served it (HTTP
//!   to the engine) or B's (forwarded over QUIC to B, which proxies to its engine).
//!   Latency is split by that, at concurrency 1 and at `--concurrency`, non-streaming
//!   and streaming.
//! - `handoff` ([`forward::bench_handoff`]): node A runs the default model, node B
//!   another that A does not list. Requests for B's model alternate between A's door
//!   (handed to B over QUIC; B admits and routes it) and B's own; the same four runs.
//!
//! Every run also records how much CPU the rest of the machine used meanwhile
//! ([`machine`]), since on a small machine other work shows up as latency. [`report`]
//! holds the summaries and the results file.

mod failover;
mod failover_proc;
mod forward;
mod group;
#[path = "../common/host.rs"]
mod host;
mod machine;
mod options;
mod procs;
mod raft;
mod report;

use anyhow::{Context, Result};
use std::path::Path;
use std::time::Instant;

fn main() -> Result<()> {
    let o = options::parse_options()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let logs = o.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("create output directory {}", logs.display()))?;
    let bin = (o.on("failover-proc") || o.on("forward") || o.on("handoff")).then(procs::sluice_bin);
    eprintln!(
        "cluster bench: {cores} CPUs, sections {:?}, data dirs under {}",
        o.sections,
        o.dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let started = Instant::now();
    let mut results = report::Results {
        cpus: cores,
        data_dir_parent: o.dir.display().to_string(),
        duration_s: o.duration.as_secs_f64(),
        ..report::Results::default()
    };
    let quiet = || machine::wait_for_quiet(o.quiet_wait);
    if o.on("raft") || o.on("failover") {
        let pki = group::Pki::new(&o.dir);
        if o.on("raft") {
            quiet();
            results.raft = Some(rt.block_on(raft::bench_raft(&o, &pki)));
        }
        if o.on("failover") {
            quiet();
            results.failover = Some(rt.block_on(failover::bench_failover(&o, &pki)));
        }
    }
    if let Some(bin) = &bin {
        if o.on("failover-proc") {
            quiet();
            results.failover_proc = Some(failover_proc::bench_failover_proc(&o, bin, &logs));
        }
        if o.on("forward") {
            quiet();
            results.forward = Some(forward::bench_forward(&o, bin, &logs, &rt));
        }
        if o.on("handoff") {
            quiet();
            results.handoff = Some(forward::bench_handoff(&o, bin, &logs, &rt));
        }
    }
    results.write(&o.out)?;
    eprintln!(
        "done in {:.0} s; results written to {} (node logs next to it)",
        started.elapsed().as_secs_f64(),
        o.out.display()
    );
    Ok(())
}
