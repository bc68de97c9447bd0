//! Section `forward`: what it costs when a node's request is served by a replica on
//! another node (forwarded over QUIC) rather than by its own, measured in the same
//! runs through one front door so that both kinds see the same load. Section `handoff`
//! ([`bench_handoff`]): what it costs when a node hands a request for a model it does
//! not route to the node that does, against asking that node directly, the two kinds
//! alternating in the same runs.

use crate::machine::Background;
use crate::options::Options;
use crate::procs::{clear_logs, cluster_specs, count_panics, wait_status, Proc};
use crate::report::{histogram, Summary};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use sluice_actors::slice::ReplicaId;
use sluice_node::cluster::rpc::ClusterStatus;
use sluice_node::cluster::{local_index, replica_id};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Whether replica `r` (an `x-sluice-replica` header) runs on node `node`, by the
/// node's own replica id layout.
fn on_node(r: u64, node: u64) -> bool {
    let id = ReplicaId(r);
    replica_id(node, local_index(id)) == id
}

/// Sends one chat completion; returns the replica that served it, or an error
/// description.
async fn one_request(
    client: &HttpClient,
    uri: &hyper::Uri,
    body: &Bytes,
    session: String,
    stream: bool,
) -> Result<u64, String> {
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
    replica.ok_or_else(|| "no x-sluice-replica header".into())
}

/// One run. In the `forward` section `local` is served by node A's own replica and
/// `remote` by B's (forwarded); in `handoff`, `local` is asked of node B directly and
/// `remote` handed to B by A.
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

/// How a run's requests are told apart.
#[derive(Clone, Copy)]
enum Split {
    /// One front door; local when the answer's replica runs on this node.
    ByReplica { local_node: u64 },
    /// Requests alternate between the doors; the first is the remote kind.
    ByDoor,
}

struct ForwardTarget {
    /// The doors asked, in turn.
    uris: Vec<hyper::Uri>,
    split: Split,
    model: String,
    max_tokens: u32,
    pids: Vec<u32>,
}

/// A chat completion of about 32 prompt words, like the load generator's default.
fn chat_body(model: &str, max_tokens: u32, stream: bool) -> Bytes {
    const PROMPT: &str = "Prompt: the router sends each request to a replica that has room for \
        its tokens while keeping every tenant within fair share of cluster capacity under load \
        spikes and failures alike so latency stays low";
    let body = serde_json::json!({
        "model": model,
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
    let body = chat_body(&t.model, t.max_tokens, stream);
    let bg = Background::start(&t.pids);
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, body, uris, split) =
                (client.clone(), body.clone(), t.uris.clone(), t.split);
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let (mut hl, mut hr) = (histogram(), histogram());
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    seq += 1;
                    let session = format!("{tag}-{w}-{seq}");
                    let door = (seq as usize + w) % uris.len();
                    let t = Instant::now();
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        one_request(&client, &uris[door], &body, session, stream),
                    )
                    .await;
                    let us = t.elapsed().as_micros().max(1) as u64;
                    let local = |replica: u64| match split {
                        Split::ByReplica { local_node } => on_node(replica, local_node),
                        Split::ByDoor => door != 0,
                    };
                    match r {
                        Ok(Ok(r)) if local(r) => hl.record(us).expect("record"),
                        Ok(Ok(_)) => hr.record(us).expect("record"),
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
pub struct ForwardResults {
    runs: Vec<ForwardRun>,
    /// Panics the two nodes logged during the section (a panic in a connection task
    /// drops that client connection).
    node_panics: usize,
}

/// Two cluster nodes (`prefix`-1 initialized the cluster, `prefix`-2 joined), one
/// zero-delay replica each, B's of `b_model` when given; returns once both replicas are
/// healthy, with the nodes' status then (their data dirs live as long as the first).
fn two_nodes(
    o: &Options,
    bin: &Path,
    logs: &Path,
    prefix: &str,
    b_model: Option<&str>,
) -> (tempfile::TempDir, Proc, Proc, Vec<ClusterStatus>) {
    clear_logs(logs, &format!("{prefix}-"));
    let root = tempfile::tempdir_in(&o.dir).expect("temp dir");
    let mut specs = cluster_specs(bin, root.path(), prefix, 2, 1);
    specs[1].model = b_model.map(str::to_owned);
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
    let st = wait_status(
        bin,
        &creds,
        &[specs[0].quic, specs[1].quic],
        Duration::from_secs(30),
        "two nodes, two healthy replicas",
        |s| {
            s.leader.is_some()
                && s.nodes.len() == 2
                && s.replicas.len() == 2
                && s.replicas.iter().all(|r| r.health == "healthy")
        },
    );
    (root, a, b, st)
}

pub fn bench_forward(
    o: &Options,
    bin: &Path,
    logs: &Path,
    rt: &tokio::runtime::Runtime,
) -> ForwardResults {
    let (_root, a, b, st) = two_nodes(o, bin, logs, "fw", None);
    let local_node = st[0].answered_by;
    let replicas: Vec<u64> = st[0].replicas.iter().map(|r| r.id).collect();
    eprintln!(
        "forward: node A (id {local_node}) at {} and node B, one zero-delay replica each (replicas {replicas:?}); requests to A, {} tokens, ignore_eos",
        a.url, o.max_tokens
    );
    let target = ForwardTarget {
        uris: vec![chat_uri(&a.url)],
        split: Split::ByReplica { local_node },
        model: DEFAULT_MODEL.to_owned(),
        max_tokens: o.max_tokens,
        pids: vec![std::process::id(), a.pid(), b.pid()],
    };
    let runs = rt.block_on(async {
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
        measured_runs(o, &target, ["local", "remote"], "forwarding").await
    });
    drop(b);
    drop(a);
    ForwardResults {
        runs,
        node_panics: panics(logs, "fw-"),
    }
}

/// Panics the section's nodes logged, said when there are any.
fn panics(logs: &Path, prefix: &str) -> usize {
    let n = count_panics(logs, prefix);
    if n > 0 {
        eprintln!(
            "  the nodes logged {n} panics (see {}/{prefix}*.log)",
            logs.display()
        );
    }
    n
}

/// The measured runs of a section: non-streaming and streaming, at concurrency 1 and
/// `--concurrency`, each after a discarded warm-up; `kinds` names the local and remote
/// kinds in the printout, `added` what the remote kind adds.
async fn measured_runs(
    o: &Options,
    target: &ForwardTarget,
    kinds: [&str; 2],
    added: &str,
) -> Vec<ForwardRun> {
    let mut runs = Vec::new();
    for stream in [false, true] {
        for c in [1, o.concurrency] {
            forward_load(target, stream, c, Duration::from_millis(500), "warm").await;
            let tag = format!("s{}-c{c}", stream as u8);
            let r = forward_load(target, stream, c, o.duration, &tag).await;
            eprintln!(
                "  {:<6} c={:<3} {:>6.0} ok/s ({} {:>5.0}/s, {} {:>5.0}/s)  errors {}  cpu/req {:.0} µs  (background {:.0}%)",
                if stream { "stream" } else { "json" },
                c,
                r.ok_per_s,
                kinds[0],
                r.local_per_s,
                kinds[1],
                r.remote_per_s,
                r.errors,
                r.cpu_us_per_request,
                r.background_cpu_pct
            );
            for (k, n) in &r.error_kinds {
                eprintln!("      {n} failed: {k}");
            }
            eprintln!("      {:<7}{}", kinds[0], r.local.line());
            eprintln!("      {:<7}{}", kinds[1], r.remote.line());
            eprintln!(
                "      added by {added}: p50 {:+} µs, p99 {:+} µs",
                r.added_p50_us, r.added_p99_us
            );
            runs.push(r);
        }
    }
    runs
}

/// The model every node serves unless told otherwise.
const DEFAULT_MODEL: &str = "llama-3.1-8b-instruct";
/// The model only node B of the `handoff` section serves.
const HANDED_MODEL: &str = "handed-model";

fn chat_uri(door: &str) -> hyper::Uri {
    format!("{door}/v1/chat/completions").parse().expect("uri")
}

/// Section `handoff`: node A runs one replica of the default model, node B one of
/// another model that A does not list. Requests for B's model alternate between A's
/// door (handed to B over QUIC, B routes it) and B's own.
pub fn bench_handoff(
    o: &Options,
    bin: &Path,
    logs: &Path,
    rt: &tokio::runtime::Runtime,
) -> ForwardResults {
    let (_root, a, b, _) = two_nodes(o, bin, logs, "ho", Some(HANDED_MODEL));
    eprintln!(
        "handoff: node A at {} runs {DEFAULT_MODEL}, node B at {} runs {HANDED_MODEL}; requests for {HANDED_MODEL} alternate between A (handed to B) and B, {} tokens, ignore_eos",
        a.url, b.url, o.max_tokens
    );
    let target = ForwardTarget {
        uris: vec![chat_uri(&a.url), chat_uri(&b.url)],
        split: Split::ByDoor,
        model: HANDED_MODEL.to_owned(),
        max_tokens: o.max_tokens,
        pids: vec![std::process::id(), a.pid(), b.pid()],
    };
    let runs = rt.block_on(async {
        // Wait until A knows where B's model is routed.
        let began = Instant::now();
        loop {
            let r = forward_load(&target, false, 2, Duration::from_millis(500), "probe").await;
            if r.errors == 0 && r.local.count > 0 && r.remote.count > 0 {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(20),
                "node A does not hand {HANDED_MODEL} to B (direct {}, handed {}, errors {:?})",
                r.local.count,
                r.remote.count,
                r.error_kinds
            );
        }
        measured_runs(o, &target, ["direct", "handed"], "handing over").await
    });
    drop(b);
    drop(a);
    ForwardResults {
        runs,
        node_panics: panics(logs, "ho-"),
    }
}
