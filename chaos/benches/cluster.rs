//! Cluster-mode benchmarks (issue 4): Raft commit latency and throughput over real QUIC
//! with fsynced logs, leader failover time, and the cost of serving a request from a
//! replica on another node.
//!
//! ```text
//! cargo build --release -p sluice        # the failover-proc and forward sections
//! cargo bench -p sluice-chaos --bench cluster [-- OPTIONS]
//!   --only LIST          comma-separated sections: raft, failover, failover-proc, forward
//!                        (default: all four)
//!   --duration S         measured seconds per Raft throughput run and per forwarding run (3)
//!   --writers 1,8,64     concurrent Raft writers (requests in flight)
//!   --trials N           in-process failover trials (10)
//!   --proc-trials N      failover trials with `sluice node start` processes (10)
//!   --proc-settle S      least time between restarting a killed node and the next kill
//!                        (6: more than the 5 s QUIC idle timeout, see below)
//!   --concurrency N      forwarding: concurrency of the loaded runs (16; 1 is always run)
//!   --max-tokens N       forwarding: tokens per answer, with ignore_eos (8)
//!   --dir PATH           parent of the Raft data dirs and node data dirs (default: the
//!                        system temp dir; put it on the disk you want to measure)
//!   --json PATH          results file (default target/bench-cluster/results.json); the
//!                        nodes' logs go next to it. Relative paths (also --dir) are
//!                        taken from the workspace root, not cargo's package directory.
//!   --quiet-wait S       wait up to S for the machine to go quiet before each section (5)
//! ```
//!
//! Sections:
//!
//! - `raft`: three `ControlPlane`s in this process, each with its own data dir (durable
//!   log, fsync per append batch) and its own QUIC endpoint on loopback with mutual TLS
//!   from a cluster CA, with the node's Raft timings. The transport is the node's
//!   (`node/src/cluster/raft_net.rs`, `handler.rs`) re-implemented here, because the node
//!   is a binary crate: every Raft message is a `sluice_transport` call whose request and
//!   reply encode exactly like the node's `NodeRpc::Raft` / `NodeReply::Raft`. Measures
//!   `write(ControlCommand::Noop)` with 1 (sequential), 8 and 64 writes in flight on the
//!   leader, then one at a time on a follower (forwarded to the leader). A raw fsync
//!   baseline of the same disk is measured first.
//! - `failover`: the same three-node group, fresh per trial. The leader's endpoint is
//!   closed (no more traffic in or out) and its Raft shut down; the survivors' metrics
//!   are polled every millisecond until they name another leader, and a writer on a
//!   survivor retries `Noop` until one commits.
//! - `failover-proc`: three `sluice node start` processes in cluster mode. The leader is
//!   killed with SIGKILL; both survivors are polled with `sluice cluster status --json`
//!   until one names another leader. The dead node is then restarted on the same data
//!   dir and ports, and the next trial kills whoever leads, at least `--proc-settle`
//!   after that restart: until the 5 s QUIC idle timeout notices, the other nodes keep a
//!   connection to the dead incarnation, and an election meanwhile can lose 1-2 s to
//!   votes sent into it (`--proc-settle 0` shows it). The result is an interval: after
//!   the start of the last poll that still showed no new leader, before the end of the
//!   first that did.
//! - `forward`: two nodes, each launching one zero-delay simulated replica. Requests go
//!   to node A's front door, each with a distinct `x-session-id`; the `x-sluice-replica`
//!   answer header tells whether A's own replica served it (HTTP to the engine) or B's
//!   (forwarded over QUIC to B, which proxies to its engine). Latency is split by that,
//!   at concurrency 1 and at `--concurrency`, non-streaming and streaming.
//!
//! Every run also records how much CPU the rest of the machine used meanwhile, since
//! on a small machine other work shows up as latency.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use sluice_raft::{
    ControlCommand, ControlPlane, ControlPlaneConfig, NodeAddr, NodeId, RaftRpc, RaftRpcReply,
    RaftTransport, RemoteRefusal, TransportFailure,
};
use sluice_transport::{
    Client, ClusterCa, Endpoint, Handler, NodeIdentity, Reply, TransportConfig, TransportError,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Options

struct Options {
    sections: Vec<String>,
    duration: Duration,
    writers: Vec<usize>,
    trials: usize,
    proc_trials: usize,
    concurrency: usize,
    max_tokens: u32,
    dir: PathBuf,
    out: PathBuf,
    /// Longest wait for the machine to go quiet before each section.
    quiet_wait: Duration,
    /// failover-proc: least time between restarting a killed node and the next kill.
    proc_settle: Duration,
}

const SECTIONS: [&str; 4] = ["raft", "failover", "failover-proc", "forward"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("chaos/ has a parent")
        .to_path_buf()
}

fn parse_options() -> Options {
    let mut o = Options {
        sections: SECTIONS.iter().map(|s| s.to_string()).collect(),
        duration: Duration::from_secs(3),
        writers: vec![1, 8, 64],
        trials: 10,
        proc_trials: 10,
        concurrency: 16,
        max_tokens: 8,
        dir: std::env::temp_dir(),
        out: workspace_root().join("target/bench-cluster/results.json"),
        quiet_wait: Duration::from_secs(5),
        proc_settle: Duration::from_secs(6),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        let secs = |v: String| Duration::from_secs_f64(v.parse().expect("seconds"));
        match a.as_str() {
            "--only" => {
                o.sections = value("--only").split(',').map(str::to_owned).collect();
                for s in &o.sections {
                    assert!(
                        SECTIONS.contains(&s.as_str()),
                        "unknown section {s}; known: {SECTIONS:?}"
                    );
                }
            }
            "--duration" => o.duration = secs(value("--duration")),
            "--writers" => {
                o.writers = value("--writers")
                    .split(',')
                    .map(|c| c.parse().expect("comma-separated integers"))
                    .collect()
            }
            "--trials" => o.trials = value("--trials").parse().expect("integer"),
            "--proc-trials" => o.proc_trials = value("--proc-trials").parse().expect("integer"),
            "--concurrency" => o.concurrency = value("--concurrency").parse().expect("integer"),
            "--max-tokens" => o.max_tokens = value("--max-tokens").parse().expect("integer"),
            // cargo runs benches in the package directory: relative paths are taken
            // from the workspace root instead.
            "--dir" => o.dir = workspace_root().join(value("--dir")),
            "--json" => o.out = workspace_root().join(value("--json")),
            "--quiet-wait" => o.quiet_wait = secs(value("--quiet-wait")),
            "--proc-settle" => o.proc_settle = secs(value("--proc-settle")),
            // cargo bench passes --bench; ignore it and anything else libtest-ish.
            _ => {}
        }
    }
    o
}

// ---------------------------------------------------------------------------------------
// Statistics and CPU accounting

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Latency summary in microseconds.
#[derive(Serialize, Clone, Copy, Default)]
struct Summary {
    count: u64,
    mean_us: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Summary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:>7} µs  p90 {:>7} µs  p99 {:>7} µs  max {:>7} µs  (n={})",
            self.p50_us, self.p90_us, self.p99_us, self.max_us, self.count
        )
    }
}

/// min / median / max of a few durations, in milliseconds.
#[derive(Serialize, Clone, Default)]
struct Spread {
    n: usize,
    min_ms: f64,
    p50_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    all_ms: Vec<f64>,
}

impl Spread {
    fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self::default();
        }
        let mid = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            n: v.len(),
            min_ms: v[0],
            p50_ms: mid,
            max_ms: v[v.len() - 1],
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
            all_ms: values.iter().map(|x| (x * 10.0).round() / 10.0).collect(),
        }
    }

    fn line(&self) -> String {
        format!(
            "min {:>6.0} ms  p50 {:>6.0} ms  max {:>6.0} ms  mean {:>6.0} ms  (n={})",
            self.min_ms, self.p50_ms, self.max_ms, self.mean_ms, self.n
        )
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// User + system CPU seconds used so far by process `pid` (all its threads).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clk_tck()
}

/// `pid` and all its live descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

/// Busy CPU seconds of the whole machine so far (idle and iowait excluded).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum();
    busy / clk_tck()
}

/// Waits (at most `max`) until the machine is nearly idle (below 10% busy over half a
/// second): other work on a small machine is measured as latency. Returns the busy
/// share of the last sample, in percent.
fn wait_for_quiet(max: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let began = Instant::now();
    loop {
        let b0 = machine_busy_seconds();
        std::thread::sleep(Duration::from_millis(500));
        let busy = (machine_busy_seconds() - b0) / (0.5 * cores) * 100.0;
        if busy < 10.0 || began.elapsed() >= max {
            if busy >= 10.0 {
                eprintln!("(the machine is {busy:.0}% busy with other work; measuring anyway)");
            }
            return busy;
        }
    }
}

/// Measures the share of the machine's CPU that processes other than `ours` (and their
/// descendants) use during a run.
struct Background {
    cores: f64,
    ours: Vec<u32>,
    start: (f64, f64, Instant),
}

impl Background {
    fn start(ours: &[u32]) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ours = ours.to_vec();
        let start = (
            machine_busy_seconds(),
            Self::ours_cpu(&ours),
            Instant::now(),
        );
        Self { cores, ours, start }
    }

    fn ours_cpu(ours: &[u32]) -> f64 {
        ours.iter()
            .flat_map(|&p| process_tree(p))
            .map(cpu_seconds)
            .sum()
    }

    /// (background %, our CPU seconds) since `start`.
    fn stop(&self) -> (f64, f64) {
        let busy = machine_busy_seconds() - self.start.0;
        let ours = Self::ours_cpu(&self.ours) - self.start.1;
        let wall = self.start.2.elapsed().as_secs_f64();
        let bg = ((busy - ours) / (wall * self.cores) * 100.0).clamp(0.0, 100.0);
        (bg, ours)
    }
}

// ---------------------------------------------------------------------------------------
// Raft over QUIC in this process (as node/src/cluster/raft_net.rs and handler.rs do it)

/// The node's `NodeRpc` has `Raft(RaftRpc)` as its first variant, so this encodes to the
/// same bytes as the node's Raft messages.
#[derive(Serialize, Deserialize)]
enum NodeRpc {
    Raft(RaftRpc),
}

/// Likewise the first variant of the node's `NodeReply`.
#[derive(Serialize, Deserialize, Debug)]
enum NodeReply {
    Raft(RaftRpcReply),
}

#[derive(Clone)]
struct QuicRaft {
    client: Arc<Client>,
    timeout: Duration,
}

impl RaftTransport for QuicRaft {
    async fn send(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, TransportFailure> {
        let to: SocketAddr = addr.quic.parse().map_err(|e| {
            TransportFailure::Unreachable(format!("node {target} at '{addr}': {e}"))
        })?;
        match self
            .client
            .call::<_, NodeReply>(to, &NodeRpc::Raft(rpc), self.timeout)
            .await
        {
            Ok(NodeReply::Raft(r)) => Ok(r),
            Err(TransportError::Timeout(_)) => Err(TransportFailure::Timeout),
            Err(
                e @ (TransportError::Connect { .. }
                | TransportError::Handshake { .. }
                | TransportError::ConnectionLost(_)),
            ) => {
                self.client.forget(to);
                Err(TransportFailure::Unreachable(e.to_string()))
            }
            Err(e) => Err(TransportFailure::Failed(e.to_string())),
        }
    }
}

/// Answers Raft messages with `handle_rpc`; before the control plane is open, as
/// unavailable (like the node during startup).
#[derive(Default)]
struct RaftHandler {
    cp: OnceLock<ControlPlane<QuicRaft>>,
}

impl Handler for RaftHandler {
    type Request = NodeRpc;

    async fn handle(&self, _peer: u64, request: NodeRpc, reply: Reply) {
        let NodeRpc::Raft(rpc) = request;
        let answer = match self.cp.get() {
            Some(cp) => cp.handle_rpc(rpc).await,
            None => RaftRpcReply::Refused(RemoteRefusal::Unavailable("starting".into())),
        };
        let _ = reply.respond(&NodeReply::Raft(answer)).await;
    }
}

/// The node's Raft timings (node/src/cluster/mod.rs).
fn node_raft_config() -> ControlPlaneConfig {
    ControlPlaneConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
        ..ControlPlaneConfig::default()
    }
}

/// A CA and three node identities, made once.
struct Pki {
    _dir: tempfile::TempDir,
    ca: ClusterCa,
    ids: Vec<NodeIdentity>,
}

impl Pki {
    fn new(root: &Path) -> Pki {
        let dir = tempfile::tempdir_in(root).expect("temp dir");
        let b = sluice_transport::bootstrap(dir.path(), "bench", 1).expect("bootstrap a CA");
        let mut ids = vec![b.identity];
        for id in 2..=3 {
            ids.push(NodeIdentity::generate(&b.ca, id).expect("node identity"));
        }
        Pki {
            _dir: dir,
            ca: b.ca,
            ids,
        }
    }
}

struct Member {
    id: NodeId,
    endpoint: Endpoint,
    cp: ControlPlane<QuicRaft>,
}

/// Three members on fresh data dirs under `dir`, initialized together; returns once a
/// `Noop` has committed.
async fn start_group(pki: &Pki, dir: &Path) -> Vec<Member> {
    let mut members = Vec::new();
    let mut addrs = BTreeMap::new();
    let mut pending = Vec::new();
    for identity in &pki.ids {
        let endpoint = Endpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            identity,
            pki.ca.cert(),
            TransportConfig::default(),
        )
        .expect("bind a QUIC endpoint");
        let handler = Arc::new(RaftHandler::default());
        tokio::spawn(sluice_transport::serve(
            endpoint.clone(),
            handler.clone(),
            None,
        ));
        let addr = endpoint.local_addr().expect("local addr");
        addrs.insert(identity.node_id(), NodeAddr::new(addr.to_string()));
        pending.push((identity.node_id(), endpoint, handler));
    }
    for (id, endpoint, handler) in pending {
        let transport = QuicRaft {
            client: Arc::new(Client::new(endpoint.clone())),
            timeout: Duration::from_secs(2),
        };
        let cp = ControlPlane::open(
            id,
            dir.join(format!("node-{id}")),
            transport,
            node_raft_config(),
        )
        .await
        .expect("open a control plane");
        let _ = handler.cp.set(cp.clone());
        members.push(Member { id, endpoint, cp });
    }
    members[0]
        .cp
        .initialize(addrs)
        .await
        .expect("initialize the group");
    members[0]
        .cp
        .write(ControlCommand::Noop)
        .await
        .expect("first write");
    members
}

async fn stop_group(members: Vec<Member>) {
    for m in &members {
        let _ = m.cp.shutdown().await;
        m.endpoint.close();
    }
}

fn leader_of(members: &[Member]) -> usize {
    let id = members[0].cp.metrics().leader.expect("a leader");
    members
        .iter()
        .position(|m| m.id == id)
        .expect("leader is a member")
}

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
struct RaftRun {
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
struct RaftResults {
    fsync_baseline: Summary,
    runs: Vec<RaftRun>,
}

async fn bench_raft(o: &Options, pki: &Pki) -> RaftResults {
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

// ---------------------------------------------------------------------------------------
// In-process failover

#[derive(Serialize)]
struct FailoverTrial {
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
struct FailoverResults {
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

async fn bench_failover(o: &Options, pki: &Pki) -> FailoverResults {
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

// ---------------------------------------------------------------------------------------
// Processes: `sluice node start` in cluster mode

/// A child process stopped on drop (SIGTERM, then SIGKILL).
struct Proc {
    name: String,
    child: Child,
    /// The front door URL it printed.
    url: String,
}

impl Proc {
    fn start(name: &str, bin: &Path, args: &[String], log: &Path) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log file");
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            // A panic's message still reaches the log; symbolizing a backtrace for each
            // (RUST_BACKTRACE=1 in the caller's environment) would cost more CPU than
            // the requests being measured.
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.contains("node listening on") {
                    if let Some(i) = line.find("http://") {
                        let _ = tx.send(line[i..].trim().to_owned());
                    }
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not print its listening address within 30 s");
            }
        };
        Proc {
            name: name.to_owned(),
            child,
            url,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port()
}

fn run_ok(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Deserialize, Debug, Clone)]
struct Status {
    leader: Option<u64>,
    nodes: Vec<StatusNode>,
    replicas: Vec<StatusReplica>,
    answered_by: u64,
}

#[derive(Deserialize, Debug, Clone)]
struct StatusNode {
    role: String,
}

#[derive(Deserialize, Debug, Clone)]
struct StatusReplica {
    id: u64,
    health: String,
}

/// `sluice cluster status --json` asked of the node at `quic` (credentials of `creds`).
fn status(bin: &Path, creds: &Path, quic: SocketAddr) -> Option<Status> {
    let out = Command::new(bin)
        .args(["cluster", "status", "--json", "--data-dir"])
        .arg(creds)
        .arg("--node")
        .arg(quic.to_string())
        .env("RUST_LOG", "error")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// One cluster node's settings, to start it again after a kill.
struct NodeSpec {
    name: String,
    data: PathBuf,
    quic: SocketAddr,
    rack: String,
    replicas: usize,
    join: Option<(SocketAddr, String)>,
}

impl NodeSpec {
    fn start(&self, bin: &Path, logs: &Path) -> Proc {
        let mut args: Vec<String> = [
            "node",
            "start",
            "--http",
            "127.0.0.1:0",
            "--time-scale",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--data-dir".into(),
            self.data.display().to_string(),
            "--listen".into(),
            self.quic.to_string(),
            "--rack".into(),
            self.rack.clone(),
            "--replicas".into(),
            self.replicas.to_string(),
        ]);
        if let Some((peer, token)) = &self.join {
            args.extend([
                "--join".into(),
                peer.to_string(),
                "--token".into(),
                token.clone(),
            ]);
        }
        Proc::start(
            &self.name,
            bin,
            &args,
            &logs.join(format!("{}.log", self.name)),
        )
    }
}

/// Data dirs and settings of `n` nodes; node 0 initialized the cluster.
fn cluster_specs(
    bin: &Path,
    root: &Path,
    prefix: &str,
    n: usize,
    replicas: usize,
) -> Vec<NodeSpec> {
    let first = root.join(format!("{prefix}-1"));
    run_ok(
        bin,
        &[
            "cluster",
            "init",
            "--data-dir",
            first.to_str().expect("utf-8 path"),
        ],
    );
    let token = std::fs::read_to_string(first.join("tls/join-token"))
        .expect("join token")
        .trim()
        .to_owned();
    let quic: Vec<SocketAddr> = (0..n)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
        .collect();
    (0..n)
        .map(|i| NodeSpec {
            name: format!("{prefix}-{}", i + 1),
            data: root.join(format!("{prefix}-{}", i + 1)),
            quic: quic[i],
            rack: format!("rack-{}", i + 1),
            replicas,
            join: (i > 0).then(|| (quic[0], token.clone())),
        })
        .collect()
}

/// Polls until `ok` holds for the status of every node in `quics` (or panics after
/// `limit`).
fn wait_status(
    bin: &Path,
    creds: &Path,
    quics: &[SocketAddr],
    limit: Duration,
    what: &str,
    ok: impl Fn(&Status) -> bool,
) -> Vec<Status> {
    let start = Instant::now();
    loop {
        let all: Vec<Option<Status>> = quics.iter().map(|&q| status(bin, creds, q)).collect();
        if all.iter().all(|s| s.as_ref().is_some_and(&ok)) {
            return all.into_iter().flatten().collect();
        }
        assert!(
            start.elapsed() < limit,
            "cluster did not reach '{what}' within {limit:?}; last status: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sluice_bin() -> PathBuf {
    let bin = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/sluice"));
    if !bin.exists() {
        eprintln!(
            "{} not found: run `cargo build --release -p sluice` first (or set SLUICE_BIN)",
            bin.display()
        );
        std::process::exit(2);
    }
    bin
}

// ---------------------------------------------------------------------------------------
// Failover with processes and SIGKILL

#[derive(Serialize)]
struct ProcTrial {
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
struct ProcFailoverResults {
    trials: Vec<ProcTrial>,
    detected_by: Spread,
    elected_after: Spread,
    status_poll: Summary,
    background_cpu_pct: f64,
}

fn nodes_settled(s: &Status, n: usize) -> bool {
    let voters = s
        .nodes
        .iter()
        .filter(|x| x.role == "leader" || x.role == "voter")
        .count();
    s.leader.is_some() && s.nodes.len() == n && voters == n
}

/// Pause between two status polls of one survivor.
const POLL_PAUSE: Duration = Duration::from_millis(20);

fn bench_failover_proc(o: &Options, bin: &Path, logs: &Path) -> ProcFailoverResults {
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

// ---------------------------------------------------------------------------------------
// Forwarding: local vs remote replica through one front door

type HttpClient = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

fn http_client(pool: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(pool)
        .retry_canceled_requests(false)
        .build(connector)
}

#[derive(Clone, Copy, PartialEq)]
enum Served {
    Local,
    Remote,
}

/// Sends one chat completion; returns where it was served, or an error description.
async fn one_request(
    client: &HttpClient,
    uri: &hyper::Uri,
    body: &Bytes,
    session: String,
    stream: bool,
    local_node: u64,
) -> Result<Served, String> {
    let mut req = hyper::Request::new(Full::new(body.clone()));
    *req.method_mut() = hyper::Method::POST;
    *req.uri_mut() = uri.clone();
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        "x-session-id",
        HeaderValue::try_from(session).map_err(|e| e.to_string())?,
    );
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let replica: Option<u64> = resp
        .headers()
        .get("x-sluice-replica")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    if stream {
        let text = String::from_utf8_lossy(&bytes);
        if !text.trim_end().ends_with("data: [DONE]") {
            return Err("stream did not end with [DONE]".into());
        }
    }
    match replica {
        Some(r) if r >> 20 == local_node => Ok(Served::Local),
        Some(_) => Ok(Served::Remote),
        None => Err("no x-sluice-replica header".into()),
    }
}

#[derive(Serialize)]
struct ForwardRun {
    stream: bool,
    concurrency: usize,
    ok_per_s: f64,
    errors: u64,
    /// Failed requests by what the client saw.
    error_kinds: BTreeMap<String, u64>,
    local: Summary,
    remote: Summary,
    /// remote − local, µs.
    added_p50_us: i64,
    added_p99_us: i64,
    remote_share: f64,
    local_per_s: f64,
    remote_per_s: f64,
    /// CPU µs per request of the bench client plus both nodes and their replicas.
    cpu_us_per_request: f64,
    background_cpu_pct: f64,
}

struct ForwardTarget {
    uri: hyper::Uri,
    local_node: u64,
    max_tokens: u32,
    pids: Vec<u32>,
}

/// A chat completion of about 32 prompt words, like the load generator's default.
fn chat_body(max_tokens: u32, stream: bool) -> Bytes {
    const PROMPT: &str = "Prompt: the router sends each request to a replica that has room for \
        its tokens while keeping every tenant within fair share of cluster capacity under load \
        spikes and failures alike so latency stays low";
    let body = serde_json::json!({
        "model": "llama-3.1-8b-instruct",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": stream,
        "ignore_eos": true,
    });
    Bytes::from(serde_json::to_vec(&body).expect("serialise body"))
}

/// A closed loop of `concurrency` workers for `duration`; every request gets a fresh
/// session id so that requests spread over the slices (and so over both replicas).
async fn forward_load(
    t: &ForwardTarget,
    stream: bool,
    concurrency: usize,
    duration: Duration,
    tag: &str,
) -> ForwardRun {
    let client = http_client(concurrency);
    let body = chat_body(t.max_tokens, stream);
    let bg = Background::start(&t.pids);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, body, uri, local) =
                (client.clone(), body.clone(), t.uri.clone(), t.local_node);
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let (mut hl, mut hr) = (histogram(), histogram());
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    seq += 1;
                    let session = format!("{tag}-{w}-{seq}");
                    let t = Instant::now();
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        one_request(&client, &uri, &body, session, stream, local),
                    )
                    .await;
                    let us = t.elapsed().as_micros().max(1) as u64;
                    match r {
                        Ok(Ok(Served::Local)) => hl.record(us).expect("record"),
                        Ok(Ok(Served::Remote)) => hr.record(us).expect("record"),
                        Ok(Err(e)) => *errors.entry(e).or_default() += 1,
                        Err(_) => *errors.entry("timeout (10 s)".into()).or_default() += 1,
                    }
                }
                (hl, hr, errors)
            })
        })
        .collect();
    let (mut hl, mut hr) = (histogram(), histogram());
    let mut error_kinds: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let (l, r, e) = task.await.expect("worker");
        hl.add(&l).expect("merge");
        hr.add(&r).expect("merge");
        for (k, n) in e {
            *error_kinds.entry(k).or_default() += n;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (background_cpu_pct, cpu) = bg.stop();
    let (local, remote) = (Summary::of(&hl), Summary::of(&hr));
    let ok = hl.len() + hr.len();
    ForwardRun {
        stream,
        concurrency,
        ok_per_s: ok as f64 / elapsed,
        errors: error_kinds.values().sum(),
        error_kinds,
        local,
        remote,
        added_p50_us: remote.p50_us as i64 - local.p50_us as i64,
        added_p99_us: remote.p99_us as i64 - local.p99_us as i64,
        remote_share: hr.len() as f64 / ok.max(1) as f64,
        local_per_s: hl.len() as f64 / elapsed,
        remote_per_s: hr.len() as f64 / elapsed,
        cpu_us_per_request: cpu * 1e6 / ok.max(1) as f64,
        background_cpu_pct,
    }
}

#[derive(Serialize)]
struct ForwardResults {
    runs: Vec<ForwardRun>,
    /// Panics the two nodes logged during the section (a panic in a connection task
    /// drops that client connection).
    node_panics: usize,
}

/// Lines announcing a panic in the logs of this section's nodes.
fn count_panics(logs: &Path, prefix: &str) -> usize {
    std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches("panicked at")
                .count()
        })
        .sum()
}

/// Removes the logs of an earlier run of this section (node logs are appended to, so
/// that a restarted node keeps its history).
fn clear_logs(logs: &Path, prefix: &str) {
    for e in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".log") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn bench_forward(
    o: &Options,
    bin: &Path,
    logs: &Path,
    rt: &tokio::runtime::Runtime,
) -> ForwardResults {
    clear_logs(logs, "fw-");
    let root = tempfile::tempdir_in(&o.dir).expect("temp dir");
    let specs = cluster_specs(bin, root.path(), "fw", 2, 1);
    let creds = specs[0].data.clone();
    let a = specs[0].start(bin, logs);
    wait_status(
        bin,
        &creds,
        &[specs[0].quic],
        Duration::from_secs(30),
        "node A up",
        |s| s.leader.is_some(),
    );
    let b = specs[1].start(bin, logs);
    let quics = [specs[0].quic, specs[1].quic];
    let st = wait_status(
        bin,
        &creds,
        &quics,
        Duration::from_secs(30),
        "two nodes, two healthy replicas",
        |s| {
            s.leader.is_some()
                && s.nodes.len() == 2
                && s.replicas.len() == 2
                && s.replicas.iter().all(|r| r.health == "healthy")
        },
    );
    let local_node = st[0].answered_by;
    let replicas: Vec<u64> = st[0].replicas.iter().map(|r| r.id).collect();
    eprintln!(
        "forward: node A (id {local_node}) at {} and node B, one zero-delay replica each (replicas {replicas:?}); requests to A, {} tokens, ignore_eos",
        a.url, o.max_tokens
    );
    let target = ForwardTarget {
        uri: format!("{}/v1/chat/completions", a.url)
            .parse()
            .expect("uri"),
        local_node,
        max_tokens: o.max_tokens,
        pids: vec![std::process::id(), a.pid(), b.pid()],
    };
    let mut runs = Vec::new();
    rt.block_on(async {
        // Wait until A's front door routes to both replicas.
        let began = Instant::now();
        loop {
            let r = forward_load(&target, false, 4, Duration::from_millis(500), "probe").await;
            if r.local.count > 0 && r.remote.count > 0 {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "node A does not use both replicas (local {}, remote {}, errors {})",
                r.local.count,
                r.remote.count,
                r.errors
            );
        }
        for stream in [false, true] {
            for c in [1, o.concurrency] {
                // Discarded warm-up, then the measured run.
                forward_load(&target, stream, c, Duration::from_millis(500), "warm").await;
                let tag = format!("s{}-c{c}", stream as u8);
                let r = forward_load(&target, stream, c, o.duration, &tag).await;
                eprintln!(
                    "  {:<6} c={:<3} {:>6.0} ok/s (local {:>5.0}/s, remote {:>5.0}/s, {:.0}% remote)  errors {}  cpu/req {:.0} µs  (background {:.0}%)",
                    if stream { "stream" } else { "json" },
                    c,
                    r.ok_per_s,
                    r.local_per_s,
                    r.remote_per_s,
                    r.remote_share * 100.0,
                    r.errors,
                    r.cpu_us_per_request,
                    r.background_cpu_pct
                );
                for (k, n) in &r.error_kinds {
                    eprintln!("      {n} failed: {k}");
                }
                eprintln!("      local  {}", r.local.line());
                eprintln!("      remote {}", r.remote.line());
                eprintln!(
                    "      added by forwarding: p50 {:+} µs, p99 {:+} µs",
                    r.added_p50_us, r.added_p99_us
                );
                runs.push(r);
            }
        }
    });
    drop(b);
    drop(a);
    let node_panics = count_panics(logs, "fw-");
    if node_panics > 0 {
        eprintln!(
            "  the nodes logged {node_panics} panics (see {}/fw-*.log)",
            logs.display()
        );
    }
    ForwardResults { runs, node_panics }
}

// ---------------------------------------------------------------------------------------

#[derive(Serialize, Default)]
struct Results {
    cpus: usize,
    data_dir_parent: String,
    duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    raft: Option<RaftResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<FailoverResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover_proc: Option<ProcFailoverResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward: Option<ForwardResults>,
}

fn main() {
    let o = parse_options();
    let on = |s: &str| o.sections.iter().any(|x| x == s);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let logs = o.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&logs).expect("create output directory");
    let bin = (on("failover-proc") || on("forward")).then(sluice_bin);
    eprintln!(
        "cluster bench: {cores} CPUs, sections {:?}, data dirs under {}",
        o.sections,
        o.dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut results = Results {
        cpus: cores,
        data_dir_parent: o.dir.display().to_string(),
        duration_s: o.duration.as_secs_f64(),
        ..Results::default()
    };
    let quiet = || wait_for_quiet(o.quiet_wait);
    if on("raft") || on("failover") {
        let pki = Pki::new(&o.dir);
        if on("raft") {
            quiet();
            results.raft = Some(rt.block_on(bench_raft(&o, &pki)));
        }
        if on("failover") {
            quiet();
            results.failover = Some(rt.block_on(bench_failover(&o, &pki)));
        }
    }
    if let Some(bin) = &bin {
        if on("failover-proc") {
            quiet();
            results.failover_proc = Some(bench_failover_proc(&o, bin, &logs));
        }
        if on("forward") {
            quiet();
            results.forward = Some(bench_forward(&o, bin, &logs, &rt));
        }
    }
    std::fs::write(
        &o.out,
        serde_json::to_string_pretty(&results).expect("serialise results"),
    )
    .expect("write results");
    eprintln!(
        "done in {:.0} s; results written to {} (node logs next to it)",
        started.elapsed().as_secs_f64(),
        o.out.display()
    );
}
