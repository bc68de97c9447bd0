//! The node in one process: simulated engines served in-process on port 0, the real
//! front door, cluster side and actor tree. No fixed sleeps: every wait is for a
//! condition, with a deadline.

use super::*;
use crate::config::Overrides;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sluice_engine::server::{serve as serve_engine, ServerConfig};
use std::path::Path;
use tokio::sync::oneshot;

const MODEL: &str = "tiny-test-model";

async fn engines(n: usize) -> Vec<String> {
    engines_at(n, 0.0).await
}

/// `n` simulated engines whose steps take `time_scale` of their modelled time.
async fn engines_at(n: usize, time_scale: f64) -> Vec<String> {
    let mut urls = Vec::new();
    for seed in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        engine_on(listener, time_scale, seed as u64);
    }
    urls
}

/// A simulated engine serving on `listener` for the rest of the test (the test's runtime
/// owns it and stops it with the test).
fn engine_on(listener: tokio::net::TcpListener, time_scale: f64, seed: u64) {
    engine_serving(listener, MODEL, time_scale, seed);
}

/// `n` zero-delay simulated engines serving `model`.
async fn engines_serving(n: usize, model: &str) -> Vec<String> {
    let mut urls = Vec::new();
    for seed in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        engine_serving(listener, model, 0.0, seed as u64);
    }
    urls
}

fn engine_serving(listener: tokio::net::TcpListener, model: &str, time_scale: f64, seed: u64) {
    let config = ServerConfig {
        model: model.to_owned(),
        params: sluice_actors::Profile::default_profile().engine,
        time_scale,
        seed,
        poison: None,
    };
    tokio::spawn(serve_engine(listener, config, std::future::pending()));
}

fn config(urls: Vec<String>, restarts: RestartPolicy) -> NodeConfig {
    let mut cfg = NodeConfig::load(
        None,
        Overrides {
            http: Some("127.0.0.1:0".parse().unwrap()),
            replica_urls: urls,
            ..Overrides::default()
        },
    )
    .unwrap();
    cfg.actor_restarts = restarts;
    cfg.shutdown_grace = Duration::from_secs(1);
    cfg
}

struct Running {
    node: Node,
    stop: oneshot::Sender<()>,
    /// The engines it fronts, when given by URL.
    engines: Vec<String>,
}

async fn start(cfg: NodeConfig, cluster: Option<ClusterArgs>) -> Running {
    let mut quic = None;
    if let Some(c) = &cluster {
        // A node stopped in this process lets go of its address once its endpoint's
        // last handle is dropped, a moment after it stopped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while quic.is_none() {
            match std::net::UdpSocket::bind(c.listen) {
                Ok(s) => quic = Some(s),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot bind {}: {e}", c.listen),
            }
        }
    }
    let listeners = Listeners {
        http: tokio::net::TcpListener::bind(cfg.http).await.unwrap(),
        quic,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let engines = cfg.urls.clone();
    let node = Node::start(cfg, cluster, listeners, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    Running {
        node,
        stop,
        engines,
    }
}

async fn http(addr: SocketAddr, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
    let client = front::http_client(Duration::from_secs(2));
    let req = match body {
        Some(b) => hyper::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(b.to_string()))),
        None => hyper::Request::get(format!("http://{addr}{path}")).body(Full::new(Bytes::new())),
    }
    .unwrap();
    let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await
    else {
        return (0, String::new());
    };
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn chat(addr: SocketAddr) -> u16 {
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
    });
    http(addr, "/v1/chat/completions", Some(body)).await.0
}

/// The node's count of restarts of `actor`, from its /metrics.
async fn restarts(addr: SocketAddr, actor: &str) -> u64 {
    counter(addr, "actor_restarts", &format!("actor=\"{actor}\"")).await
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_actor_restarts_after_a_panic_and_the_node_keeps_serving() {
    let r = start(config(engines(2).await, RestartPolicy::quick(5)), None).await;
    let addr = r.node.http_addr();
    eventually("a chat request is served", || async {
        chat(addr).await == 200
    })
    .await;
    let names = r.node.actors().await;
    for expected in ["health", "prober", "tenancy", "engine-events", "ejections"] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    for name in names {
        r.node.panic_actor(name);
        eventually(&format!("{name} restarted"), || async {
            restarts(addr, name).await == 1
        })
        .await;
        eventually(&format!("{name} running again"), || async {
            r.node.actors().await.contains(&name)
        })
        .await;
        assert_eq!(chat(addr).await, 200, "after {name} restarted");
    }
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_keeps_its_engine_connection_between_requests() {
    let r = start(config(engines(1).await, RestartPolicy::quick(5)), None).await;
    let addr = r.node.http_addr();
    eventually("a chat request is served", || async {
        chat(addr).await == 200
    })
    .await;
    let sends = |label| counter(addr, "engine_sends", label);
    let (on_new, on_kept) = (r#"connection="new""#, r#"connection="kept""#);
    let (new, kept) = (sends(on_new).await, sends(on_kept).await);
    assert!(new >= 1, "the first request opened a connection");
    for _ in 0..5 {
        assert_eq!(chat(addr).await, 200);
    }
    // One request at a time, each answer read to its end: the same connection.
    assert_eq!(sends(on_new).await, new);
    assert_eq!(sends(on_kept).await, kept + 5);
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_that_keeps_failing_stops_the_node_with_its_name() {
    let r = start(config(engines(1).await, RestartPolicy::quick(2)), None).await;
    let addr = r.node.http_addr();
    eventually("a chat request is served", || async {
        chat(addr).await == 200
    })
    .await;
    for k in 1..=2 {
        r.node.panic_actor("prober");
        eventually("the prober restarted", || async {
            restarts(addr, "prober").await == k
        })
        .await;
        eventually("the prober running again", || async {
            r.node.actors().await.contains(&"prober")
        })
        .await;
    }
    r.node.panic_actor("prober");
    let err = tokio::time::timeout(Duration::from_secs(30), r.node.wait())
        .await
        .expect("the node stops")
        .expect_err("a meltdown is an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("prober") && msg.contains("failed 3 times"),
        "{msg}"
    );
    // The front door is closed.
    assert_eq!(http(addr, "/health", None).await.0, 0);
}

fn cluster_args(dir: &Path, join: Option<(SocketAddr, String)>) -> ClusterArgs {
    ClusterArgs {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        rack: "rack-0".to_owned(),
        join: join.as_ref().map(|j| j.0),
        token: join.map(|j| j.1),
        load_share: Duration::from_millis(200),
    }
}

/// Which of `nodes` runs the leader's assigner now.
async fn assigners(nodes: &[&Running]) -> Vec<u64> {
    let mut out = Vec::new();
    for r in nodes {
        if r.node.actors().await.contains(&"assigner") {
            out.extend(r.node.cluster().map(|c| c.0));
        }
    }
    out
}

/// A cluster of `n` nodes with one in-process engine each: the first initializes it,
/// the others join through it. The data directories outlive the nodes.
async fn cluster(n: usize) -> (Vec<tempfile::TempDir>, Vec<Running>) {
    cluster_at(n, 0.0).await
}

/// `n` nodes, each over one engine whose steps take `time_scale` of their modelled time.
async fn cluster_at(n: usize, time_scale: f64) -> (Vec<tempfile::TempDir>, Vec<Running>) {
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    crate::cluster::cli::init(dirs[0].path(), "test").unwrap();
    let token = sluice_transport::JoinToken::load(&dirs[0].path().join(crate::cluster::TLS_DIR))
        .unwrap()
        .to_string();
    let first = start(
        config(engines_at(1, time_scale).await, RestartPolicy::quick(5)),
        Some(cluster_args(dirs[0].path(), None)),
    )
    .await;
    let (_, seed) = first.node.cluster().unwrap();
    let mut nodes = vec![first];
    for dir in &dirs[1..] {
        let args = cluster_args(dir.path(), Some((seed, token.clone())));
        nodes.push(
            start(
                config(engines_at(1, time_scale).await, RestartPolicy::quick(5)),
                Some(args),
            )
            .await,
        );
    }
    (dirs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_actors_follow_leadership_across_a_leader_loss() {
    let (dirs, mut nodes) = cluster(3).await;
    // Exactly one node — the leader — runs the assigner (stably: not in passing).
    eventually("one assigner", || async {
        let all: Vec<&Running> = nodes.iter().collect();
        let first = assigners(&all).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        first.len() == 1 && assigners(&all).await == first
    })
    .await;
    let leader_id = assigners(&nodes.iter().collect::<Vec<_>>()).await[0];
    // A node not started for drills refuses their hooks, with the reason.
    let (_, quic) = nodes[1].node.cluster().unwrap();
    let refused = crate::cluster::cli::isolate(dirs[1].path(), Some(quic), vec![leader_id])
        .await
        .expect_err("drill hooks are off");
    assert!(
        format!("{refused:#}").contains("drill hooks"),
        "{refused:#}"
    );
    for r in &nodes {
        let addr = r.node.http_addr();
        eventually("every node serves", || async { chat(addr).await == 200 }).await;
    }
    // The leader goes: one of the others takes over its duties, and they keep serving.
    let at = nodes
        .iter()
        .position(|r| r.node.cluster().map(|c| c.0) == Some(leader_id))
        .unwrap();
    let leader = nodes.remove(at);
    let _ = leader.stop.send(());
    leader.node.wait().await.unwrap();
    let rest: Vec<&Running> = nodes.iter().collect();
    eventually("one assigner, on a new leader", || async {
        let now = assigners(&rest).await;
        now.len() == 1 && now[0] != leader_id
    })
    .await;
    for r in &nodes {
        let addr = r.node.http_addr();
        eventually("the survivors serve", || async { chat(addr).await == 200 }).await;
    }
    for r in nodes {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

/// A counter of the node's /metrics with these labels (0 when absent).
async fn counter(addr: SocketAddr, name: &str, labels: &str) -> u64 {
    let (_, text) = http(addr, "/metrics", None).await;
    let prefix = format!("sluice_{name}_total{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn hang(engine: &str) {
    fault(engine, serde_json::json!({"kind": "hang"})).await;
}

async fn fault(engine: &str, fault: serde_json::Value) {
    let client = front::http_client(Duration::from_secs(2));
    let req = hyper::Request::post(format!("{engine}/admin/fault"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(fault.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert!(
        resp.status().is_success(),
        "fault not set: {}",
        resp.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prober_ejects_a_silently_hung_engine_and_requests_go_elsewhere() {
    let urls = engines(2).await;
    let r = start(config(urls.clone(), RestartPolicy::quick(5)), None).await;
    let addr = r.node.http_addr();
    eventually("a chat request is served", || async {
        chat(addr).await == 200
    })
    .await;
    // Engine 0 still answers /health but never finishes a request.
    hang(&urls[0]).await;
    eventually("the hung replica is ejected", || async {
        counter(addr, "ejections", "replica=\"0\"").await >= 1
    })
    .await;
    assert_eq!(counter(addr, "ejections", "replica=\"1\"").await, 0);
    let before = counter(addr, "routed", "replica=\"0\"").await;
    for _ in 0..10 {
        assert_eq!(chat(addr).await, 200);
    }
    assert_eq!(counter(addr, "routed", "replica=\"0\"").await, before);
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

/// In a two-node cluster, leaves node 1 (at `a_addr`, over `a_engine`) only node 2's
/// replica: node 1 learns of it, then its own replica hangs and is ejected. Returns the
/// remote replica's metric label (node 2's replica is `2 << 20`).
async fn only_the_remote_replica(a_addr: SocketAddr, a_engine: &str) -> String {
    let remote = format!("replica=\"{}\"", crate::cluster::replica_id(2, 0).0);
    eventually("node 1 knows node 2's replica", || async {
        let (_, text) = http(a_addr, "/metrics", None).await;
        text.contains(&format!("sluice_replica_available{{{remote}}}"))
    })
    .await;
    hang(a_engine).await;
    eventually("node 1's replica is ejected", || async {
        counter(a_addr, "ejections", "replica=\"1048576\"").await >= 1
    })
    .await;
    remote
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_replica_is_gone_forwards_to_another_nodes_replica() {
    let (_dirs, nodes) = cluster(2).await;
    let mut nodes = nodes.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let (a_addr, b_addr) = (a.node.http_addr(), b.node.http_addr());
    for addr in [a_addr, b_addr] {
        eventually("the node serves", || async { chat(addr).await == 200 }).await;
    }
    let remote = only_the_remote_replica(a_addr, &a.engines[0]).await;
    let before = counter(a_addr, "routed", &remote).await;
    let kept = r#"connection="kept""#;
    let kept_before = counter(b_addr, "engine_sends", kept).await;
    for _ in 0..5 {
        assert_eq!(chat(a_addr).await, 200, "forwarded through QUIC");
    }
    assert!(counter(a_addr, "routed", &remote).await >= before + 5);
    // The serving node reached its engine on a kept connection each time but the first.
    assert!(counter(b_addr, "engine_sends", kept).await >= kept_before + 4);
    // The client's x-request-id comes back, and names the attempt the serving node sent
    // its engine (the engine names its answer after it, as vLLM does).
    let (echoed, body) = chat_named(a_addr, "fwd-trace-1").await;
    assert_eq!(echoed.as_deref(), Some("fwd-trace-1"));
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = answer["id"].as_str().unwrap_or_default();
    assert!(id.starts_with("chatcmpl-fwd-trace-1."), "{id}");
    for r in [a, b] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

/// A chat request sent with `x-request-id: id`: the id echoed, and the body.
async fn chat_named(addr: SocketAddr, id: &str) -> (Option<String>, String) {
    let (_, echoed, body) = chat_answer(addr, MODEL, Some(id), "x-request-id").await;
    (echoed, body)
}

/// A chat request's status and its `Retry-After` and error code.
async fn chat_detail(addr: SocketAddr) -> (u16, Option<String>, String) {
    chat_answer(addr, MODEL, None, "retry-after").await
}

/// A short chat request for `model`, sent with `x-request-id` when given: its status,
/// the answer's `header`, and its body.
async fn chat_answer(
    addr: SocketAddr,
    model: &str,
    id: Option<&str>,
    header: &str,
) -> (u16, Option<String>, String) {
    let client = front::http_client(Duration::from_secs(2));
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
    });
    let mut req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let value = resp
        .headers()
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, value, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_applied_the_control_state_refuses_requests() {
    let (dirs, nodes) = cluster(2).await;
    for r in &nodes {
        let addr = r.node.http_addr();
        eventually("the node serves", || async { chat(addr).await == 200 }).await;
    }
    // The voter policy may leave one voter: the node that leads is it.
    let all: Vec<&Running> = nodes.iter().collect();
    eventually("a leader", || async { assigners(&all).await.len() == 1 }).await;
    let leader_id = assigners(&all).await[0];
    let at = |id: u64| {
        nodes
            .iter()
            .position(|r| r.node.cluster().map(|c| c.0) == Some(id))
    };
    let (lead, follow) = match at(leader_id) {
        Some(0) => (0, 1),
        _ => (1, 0),
    };
    let quic: Vec<SocketAddr> = nodes.iter().map(|r| r.node.cluster().unwrap().1).collect();
    for r in nodes {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
    // The follower comes back alone and without its log (a lost disk, or a joiner
    // before the leader has sent it the log): it knows no tenant, so it refuses rather
    // than leave the door open.
    std::fs::remove_dir_all(dirs[follow].path().join(crate::cluster::RAFT_DIR)).unwrap();
    let mut args = cluster_args(dirs[follow].path(), None);
    args.listen = quic[follow];
    let follower = start(
        config(engines(1).await, RestartPolicy::quick(5)),
        Some(args),
    )
    .await;
    let addr = follower.node.http_addr();
    let (status, retry, body) = chat_detail(addr).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body.contains("node_catching_up"), "{body}");
    // The leader comes back at its address: it sends the follower the log, and the
    // follower admits requests.
    let mut args = cluster_args(dirs[lead].path(), None);
    args.listen = quic[lead];
    let leader = start(
        config(engines(1).await, RestartPolicy::quick(5)),
        Some(args),
    )
    .await;
    eventually("the node admits requests once caught up", || async {
        chat(addr).await == 200
    })
    .await;
    for r in [follower, leader] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

/// The SSE events of `text`, without their `data: ` prefix.
fn sse_events(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: "))
        .collect()
}

/// Asks `addr` for a chat stream of `tokens` tokens of `model` (seed 7, `ignore_eos`,
/// usage asked): the answer's head.
async fn seeded_stream(
    addr: SocketAddr,
    model: &str,
    tokens: usize,
) -> hyper::Response<hyper::body::Incoming> {
    seeded_stream_of(addr, model, "tell me a long story", tokens).await
}

/// [`seeded_stream`] of another prompt (which may land elsewhere).
async fn seeded_stream_of(
    addr: SocketAddr,
    model: &str,
    prompt: &str,
    tokens: usize,
) -> hyper::Response<hyper::body::Incoming> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "ignore_eos": true,
        "seed": 7,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let req = hyper::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = front::http_client(Duration::from_secs(2))
        .request(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// `text` (a chat stream asked with seed 7, `ignore_eos` and usage) reads as one answer
/// of `tokens` tokens: one id, one role, one finish, usage counting every token, and —
/// the simulated engine's seeded answer being known — no word lost, repeated or changed
/// at a splice.
fn assert_one_answer(text: &str, tokens: usize) {
    let events = sse_events(text);
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let ids: std::collections::HashSet<String> = chunks
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "one id: {ids:?}");
    let contents = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    let finishes = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .count();
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"].is_string())
        .count();
    assert_eq!((contents, finishes, roles), (tokens, 1, 1), "{text}");
    // Seeded, the simulated engine's answer is known: the splice lost, repeated or
    // changed no word.
    let said: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let words =
        sluice_engine::words::output_text(sluice_engine::words::client_seed(7), tokens as u32);
    assert_eq!(said, words);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], tokens, "{text}");
}

/// Whether the engine that hung mid-stream comes back.
#[derive(PartialEq)]
enum Resume {
    Never,
    /// Once the router has taken it for hung.
    AfterTheWord,
}

/// A node over two engines (configured by `edit`) streams a chat whose engine hangs
/// after three events: the stream must end as one answer of 40 tokens. Returns the node
/// and the replica that hung.
async fn a_stream_through_a_hang(
    edit: impl FnOnce(&mut NodeConfig),
    resume: Resume,
) -> (Running, usize) {
    a_stream_through_a_hang_over(engines_at(2, 1.0).await, edit, resume).await
}

/// [`a_stream_through_a_hang`] over the engines at `urls`, of which those that do not
/// answer are out of service before the stream begins.
async fn a_stream_through_a_hang_over(
    urls: Vec<String>,
    edit: impl FnOnce(&mut NodeConfig),
    resume: Resume,
) -> (Running, usize) {
    let mut cfg = config(urls.clone(), RestartPolicy::quick(5));
    edit(&mut cfg);
    let stream_idle_timeout = cfg.stream_idle_timeout;
    let r = start(cfg, None).await;
    let addr = r.node.http_addr();
    eventually("a chat request is served", || async {
        chat(addr).await == 200
    })
    .await;
    for (i, url) in urls.iter().enumerate() {
        if front::http_client(Duration::from_secs(2))
            .get(format!("{url}/health").parse().unwrap())
            .await
            .is_err()
        {
            eventually(
                "the engine that does not answer is out of service",
                || async { !available(addr, i).await },
            )
            .await;
        }
    }
    const TOKENS: usize = 40;
    let resp = seeded_stream(addr, MODEL, TOKENS).await;
    let first: usize = resp.headers()["x-sluice-replica"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut hung = false;
    let mut hung_at = None;
    let mut gap = Duration::ZERO;
    let read = async {
        let mut last = tokio::time::Instant::now();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            gap = gap.max(last.elapsed());
            last = tokio::time::Instant::now();
            text.push_str(std::str::from_utf8(&data).unwrap());
            if !hung && sse_events(&text).len() >= 3 {
                // The replica serving the stream stops mid-answer.
                hang(&urls[first]).await;
                hung = true;
                hung_at = Some(tokio::time::Instant::now());
                if resume == Resume::AfterTheWord {
                    let stalls = format!("replica=\"{first}\"");
                    eventually("the router takes the replica for hung", || async {
                        counter(addr, "stream_stalls", &stalls).await == 1
                    })
                    .await;
                    fault(&urls[first], serde_json::json!({"kind": "none"})).await;
                }
            }
        }
    };
    // Well within the idle timeout of the stall case: the stall is what ends the wait.
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ends");
    assert!(hung, "the stream was cut mid-answer: {text}");
    // What the client saw of the hang: its longest wait between two chunks.
    eprintln!(
        "hang mid-stream (idle timeout {stream_idle_timeout:?}): the client's longest wait for a chunk {gap:?}, {:?} from the hang to the end",
        hung_at.map(|t| t.elapsed())
    );
    assert_one_answer(&text, TOKENS);
    (r, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_replica_goes_silent_is_continued_on_another_and_reads_as_one_answer() {
    let (r, _) = a_stream_through_a_hang(
        // Short, but long enough that a loaded machine's pauses do not read as silence
        // on the continued stream too (the stall rule's floor, 3 s, is further off).
        |cfg| cfg.stream_idle_timeout = Duration::from_millis(1500),
        Resume::Never,
    )
    .await;
    let addr = r.node.http_addr();
    assert_eq!(
        counter(addr, "migrations", "reason=\"silent\"").await,
        1,
        "moved once"
    );
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_streams_all_stop_is_taken_for_hung_and_its_streams_move() {
    // The idle timeout is far off: only the streams' own silence can tell.
    let (r, hung) = a_stream_through_a_hang(
        |cfg| cfg.stream_idle_timeout = Duration::from_secs(60),
        Resume::Never,
    )
    .await;
    let addr = r.node.http_addr();
    assert_eq!(
        counter(addr, "migrations", "reason=\"stalled\"").await,
        1,
        "moved once, on the stall"
    );
    assert_eq!(
        counter(addr, "stream_stalls", &format!("replica=\"{hung}\"")).await,
        1
    );
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_word_that_cannot_move_a_stream_lets_it_stream_on() {
    // Migration is off, so the word that the replica is hung could only end the stream
    // with an error event. The replica resumes after the word: the stream must read as
    // one whole answer. The prober is kept from confirming the word (no idle rule, a
    // long window), as it would not for an engine busy in one long step.
    let (r, _) = a_stream_through_a_hang(
        |cfg| {
            cfg.stream_idle_timeout = Duration::from_secs(60);
            cfg.migration = sluice_actors::lifecycle::MigrationLimits::OFF;
            cfg.prober.idle_busy_share = 0.0;
            cfg.prober.stall_window_ms = 600_000;
            cfg.prober.probe_timeout_ms = 600_000;
        },
        Resume::AfterTheWord,
    )
    .await;
    let addr = r.node.http_addr();
    let (_, metrics) = http(addr, "/metrics", None).await;
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_migrations_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 0.0, "no move was refused: {metrics}");
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_word_with_nowhere_to_move_a_stream_lets_it_stream_on() {
    // Migration is on, but the only other engine is gone (its port answers nothing), so
    // moving the stream off the replica taken for hung could only end it with an error
    // event (a CPU-starved engine falls silent this way while its peers miss their
    // health checks). The replica resumes after the word: the stream must read as one
    // whole answer, and nothing was moved or refused. The prober is kept from
    // confirming the word, as in the test above.
    let mut urls = engines_at(1, 1.0).await;
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    urls.push(format!("http://{}", gone.local_addr().unwrap()));
    drop(gone);
    let (r, hung) = a_stream_through_a_hang_over(
        urls,
        |cfg| {
            cfg.stream_idle_timeout = Duration::from_secs(60);
            cfg.prober.idle_busy_share = 0.0;
            cfg.prober.stall_window_ms = 600_000;
            cfg.prober.probe_timeout_ms = 600_000;
        },
        Resume::AfterTheWord,
    )
    .await;
    assert_eq!(hung, 0, "the stream was served by the engine that answers");
    let addr = r.node.http_addr();
    let (_, metrics) = http(addr, "/metrics", None).await;
    let total = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("sluice_{name}_total{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(total("migrations_refused"), 0.0, "{metrics}");
    assert_eq!(total("migrations"), 0.0, "{metrics}");
    assert_eq!(counter(addr, "stream_stalls", "replica=\"0\"").await, 1);
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

/// Whether the node's replica `replica` is in service, by its gauge.
async fn available(addr: SocketAddr, replica: usize) -> bool {
    let gauge = format!("sluice_replica_available{{replica=\"{replica}\"}} ");
    let (_, text) = http(addr, "/metrics", None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&gauge))
        .is_some_and(|v| v.trim() == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_streaming_while_its_health_answers_late_stays_in_service() {
    // As a saturated vLLM's API server does: /health answers after 2 s, more than the
    // check waits (500 ms), while tokens stream as usual.
    let urls = engines_at(1, 1.0).await;
    let mut cfg = config(urls.clone(), RestartPolicy::quick(5));
    cfg.health_interval = Duration::from_millis(200);
    let r = start(cfg, None).await;
    let addr = r.node.http_addr();
    eventually("a chat request is served", || async {
        chat(addr).await == 200
    })
    .await;
    let mut body = seeded_stream(addr, MODEL, 2_000).await.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    fault(
        &urls[0],
        serde_json::json!({"kind": "slow_health", "value": 2000}),
    )
    .await;
    // Read for six seconds — several checks, each late — looking at the gauge meanwhile.
    let (reads, out) = {
        let read = async {
            let until = tokio::time::Instant::now() + Duration::from_secs(6);
            while tokio::time::Instant::now() < until {
                match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
                    Ok(Some(Ok(_))) => {}
                    other => panic!("the stream stopped: {other:?}"),
                }
            }
        };
        tokio::pin!(read);
        let (mut reads, mut out) = (0, 0);
        loop {
            reads += 1;
            out += u32::from(!available(addr, 0).await);
            tokio::select! {
                () = &mut read => break,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        (reads, out)
    };
    assert!(reads > 10, "the gauge was read {reads} times");
    assert_eq!(
        out, 0,
        "out of service in {out} of {reads} reads while it streamed"
    );
    drop(body);
    // Heard from no more, its late answers count: out of service, and back once it
    // answers in time.
    eventually(
        "the silent engine with late answers is out of service",
        || async { !available(addr, 0).await },
    )
    .await;
    fault(&urls[0], serde_json::json!({"kind": "none"})).await;
    eventually("the engine is back in service", || async {
        available(addr, 0).await
    })
    .await;
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_waits_out_a_slow_engine_while_its_node_says_it_is_alive() {
    let (_dirs, nodes) = cluster_at(2, 1.0).await;
    let mut nodes = nodes.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let a_addr = a.node.http_addr();
    eventually("the node serves", || async { chat(a_addr).await == 200 }).await;
    only_the_remote_replica(a_addr, &a.engines[0]).await;
    // Node 2's engine now takes seconds for a step: its first token comes later than
    // the silence that would mean node 2 is gone, but node 2 keeps saying it is alive.
    fault(
        &b.engines[0],
        serde_json::json!({"kind": "slow", "value": 600}),
    )
    .await;
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
    });
    // Retries while the cluster formed are not this request's.
    let retries = || async {
        let (_, metrics) = http(a_addr, "/metrics", None).await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_retries_total "))
            .map(|v| v.trim().to_owned())
    };
    let retried_before = retries().await;
    let started = tokio::time::Instant::now();
    let (status, text) = http(a_addr, "/v1/chat/completions", Some(body)).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{text}");
    assert!(
        took > crate::cluster::forward::PEER_SILENCE,
        "the engine answered within {took:?}: not slower than the silence bound"
    );
    assert!(retried_before.is_some());
    assert_eq!(
        retries().await,
        retried_before,
        "not taken for gone, so not retried"
    );
    for r in [a, b] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

/// Starts a node that joins through `peer` with `token`, retrying for a while as a
/// joiner does while the cluster cannot admit yet; `Err` once `within` has passed.
async fn join_through(
    peer: SocketAddr,
    token: &str,
    within: Duration,
) -> Result<(tempfile::TempDir, Running), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(engines(1).await, RestartPolicy::quick(5));
        let listeners = Listeners {
            http: tokio::net::TcpListener::bind(cfg.http).await.unwrap(),
            quic: Some(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let args = cluster_args(dir.path(), Some((peer, token.to_owned())));
        match Node::start(cfg, Some(args), listeners, async move {
            let _ = stopped.await;
        })
        .await
        {
            Ok(node) => {
                let running = Running {
                    node,
                    stop,
                    engines: Vec::new(),
                };
                return Ok((dir, running));
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %format!("{e:#}"), "not admitted yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("{e:#}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_voter_admits_once_the_init_node_is_gone_for_good_and_tokens_rotate() {
    let (dirs, nodes) = cluster(3).await;
    let initial = sluice_transport::JoinToken::load(&dirs[0].path().join(crate::cluster::TLS_DIR))
        .unwrap()
        .to_string();
    let mut nodes = nodes.into_iter();
    let (init, b, c) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let (_, b_quic) = b.node.cluster().unwrap();
    let status = || crate::cluster::cli::fetch_status(dirs[1].path(), Some(b_quic));
    eventually("all three are voters, the CA replicated", || async {
        status().await.is_ok_and(|s| {
            s.nodes.iter().filter(|n| n.role != "learner").count() == 3
                && s.join_tokens == ["initial"]
        })
    })
    .await;
    // The node that made the CA and the token is lost for good.
    let _ = init.stop.send(());
    init.node.wait().await.unwrap();
    // A new node joins through another voter, with the token `cluster init` printed.
    let (_d, joined) = join_through(b_quic, &initial, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("no voter admitted the new node: {e}"));
    let (new_id, _) = joined.node.cluster().unwrap();
    eventually("the new node is a member", || async {
        status()
            .await
            .is_ok_and(|s| s.nodes.iter().any(|n| n.id == new_id))
    })
    .await;
    let addr = joined.node.http_addr();
    eventually("the new node serves", || async { chat(addr).await == 200 }).await;
    // Rotation: a new token, then the old one revoked.
    let (id, fresh) = crate::cluster::cli::create_token(dirs[1].path(), Some(b_quic), None)
        .await
        .unwrap();
    crate::cluster::cli::token_revoke(dirs[1].path(), Some(b_quic), "initial")
        .await
        .unwrap();
    assert_eq!(status().await.unwrap().join_tokens, vec![id]);
    let refused = join_through(b_quic, &initial, Duration::ZERO).await;
    assert!(refused.is_err(), "a revoked token admitted a node");
    let (_e, second) = join_through(b_quic, &fresh.to_string(), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("the new token was refused: {e}"));
    for r in [b, c, joined, second] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_is_rotated_with_both_trusted_meanwhile_and_the_old_one_then_refused() {
    let (dirs, nodes) = cluster(3).await;
    for r in &nodes {
        let addr = r.node.http_addr();
        eventually("the node serves", || async { chat(addr).await == 200 }).await;
    }
    let tls = |i: usize| dirs[i].path().join(crate::cluster::TLS_DIR);
    let quic = |i: usize| nodes[i].node.cluster().unwrap().1;
    let old = sluice_transport::CaCert::load(&tls(0)).unwrap();
    eventually("three members", || async {
        crate::cluster::cli::fetch_status(dirs[0].path(), Some(quic(0)))
            .await
            .is_ok_and(|s| s.nodes.len() == 3)
    })
    .await;
    // Node 0's credentials as they were, to try them once the rotation is over.
    let before = tempfile::tempdir().unwrap();
    for f in ["node.pem", "node.key", "ca.pem"] {
        std::fs::copy(tls(0).join(f), before.path().join(f)).unwrap();
    }
    // From node 2's data directory, as an operator would.
    crate::cluster::cli::rotate_ca(dirs[2].path(), Some(quic(2)))
        .await
        .unwrap();
    eventually("the rotation is over", || async {
        crate::cluster::cli::fetch_status(dirs[1].path(), Some(quic(1)))
            .await
            .is_ok_and(|s| s.ca_rotation.is_none() && s.ca_sha256 != Some(old.fingerprint_hex()))
    })
    .await;
    let status = crate::cluster::cli::fetch_status(dirs[0].path(), Some(quic(0)))
        .await
        .unwrap();
    let new_sha = status.ca_sha256.clone().unwrap();
    for i in 0..3 {
        // Each node trusts the new CA alone, and its certificate is the new CA's.
        eventually("the node trusts the new CA alone", || async {
            sluice_transport::CaCert::load(&tls(i))
                .is_ok_and(|c| c.fingerprint_hex() == new_sha && c.roots().count() == 1)
        })
        .await;
        let ca = sluice_transport::CaCert::load(&tls(i)).unwrap();
        let id = sluice_transport::NodeIdentity::load(&tls(i), &ca).unwrap();
        assert!(id.signed_by(&ca), "node {i}'s certificate is the new CA's");
        assert!(!id.signed_by(&old));
        // Nodes still talk: status through every node, forwarding through every door.
        let s = crate::cluster::cli::fetch_status(dirs[i].path(), Some(quic(i)))
            .await
            .unwrap();
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(chat(nodes[i].node.http_addr()).await, 200);
    }
    // Node 0's certificate from before the rotation is refused now, though the client
    // trusts both CAs: the servers no longer trust the old one. Its new one gets in.
    let new_ca = sluice_transport::CaCert::load(&tls(0)).unwrap();
    let both = new_ca.trusting(&old);
    let old_identity = sluice_transport::NodeIdentity::load(before.path(), &old).unwrap();
    let new_identity = sluice_transport::NodeIdentity::load(&tls(0), &new_ca).unwrap();
    for (identity, admitted) in [(&old_identity, false), (&new_identity, true)] {
        let ep = sluice_transport::Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            identity,
            &both,
            sluice_transport::TransportConfig::default(),
        )
        .unwrap();
        // The server's verdict on the client's certificate comes with the first
        // exchange: ask for its status.
        let rpc = sluice_transport::Client::new(ep.clone());
        let call =
            crate::cluster::call::admin(&rpc, quic(1), crate::cluster::rpc::AdminRpc::Status);
        let got = tokio::time::timeout(Duration::from_secs(10), call).await;
        assert_eq!(
            matches!(got, Ok(Ok(_))),
            admitted,
            "an identity signed by the {} CA: {got:?}",
            if admitted { "new" } else { "old" }
        );
        ep.close();
    }
    for r in nodes {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_live_ten_seconds_are_renewed_and_new_connections_keep_working() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    crate::cluster::cli::init(dirs[0].path(), "test").unwrap();
    let tls = |i: usize| dirs[i].path().join(crate::cluster::TLS_DIR);
    let token = sluice_transport::JoinToken::load(&tls(0))
        .unwrap()
        .to_string();
    let short = |urls| {
        let mut cfg = config(urls, RestartPolicy::quick(5));
        cfg.cert_lifetime = Duration::from_secs(10);
        cfg
    };
    let a = start(
        short(engines(1).await),
        Some(cluster_args(dirs[0].path(), None)),
    )
    .await;
    let (_, a_quic) = a.node.cluster().unwrap();
    let b = start(
        short(engines(1).await),
        Some(cluster_args(dirs[1].path(), Some((a_quic, token)))),
    )
    .await;
    let (_, b_quic) = b.node.cluster().unwrap();
    let first_b = std::fs::read(tls(1).join("node.pem")).unwrap();
    // Node A's certificate from `cluster init` lives a day: renewed at once to the
    // policy. Node B's, signed by A at its join, lives 10 s: renewed at about 6.7 s and
    // 13.3 s. Wait for two renewals on each.
    for r in [&a, &b] {
        let addr = r.node.http_addr();
        eventually("two renewals", || async {
            counter(addr, "node_cert_renewals", "outcome=\"renewed\"").await >= 2
        })
        .await;
        assert_eq!(
            counter(addr, "node_cert_renewals", "outcome=\"failed\"").await,
            0
        );
        let (id, _) = r.node.cluster().unwrap();
        let (_, text) = http(addr, "/metrics", None).await;
        let prefix = format!("sluice_node_cert_expires_in_seconds{{node=\"{id}\"}} ");
        let left: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .expect("the certificate's time left is reported");
        assert!(left > 0.0 && left <= 10.0, "{left}");
    }
    // Every certificate the nodes started with has expired by now; new connections,
    // made with each node's renewed certificate on disk to its renewed endpoint, work.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ca = sluice_transport::CaCert::load(&tls(0)).unwrap();
    for (i, quic) in [(0, a_quic), (1, b_quic)] {
        let id = sluice_transport::NodeIdentity::load(&tls(i), &ca).unwrap();
        let left = id
            .not_after()
            .duration_since(std::time::SystemTime::now())
            .expect("the certificate on disk is valid");
        assert!(left <= Duration::from_secs(10), "{left:?}");
        let status = crate::cluster::cli::fetch_status(dirs[i].path(), Some(quic))
            .await
            .unwrap();
        assert_eq!(status.nodes.len(), 2);
    }
    assert_ne!(std::fs::read(tls(1).join("node.pem")).unwrap(), first_b);
    // Requests through either door still reach both replicas' nodes.
    for r in [&a, &b] {
        assert_eq!(chat(r.node.http_addr()).await, 200);
    }
    for r in [a, b] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_still_loading_is_registered_starting_and_served_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    crate::cluster::cli::init(dir.path(), "test").unwrap();
    // The second engine's address answers nothing yet: it is still loading.
    let loading = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut urls = engines(1).await;
    urls.push(format!("http://{loading}"));
    let r = start(
        config(urls, RestartPolicy::quick(5)),
        Some(cluster_args(dir.path(), None)),
    )
    .await;
    let (id, quic) = r.node.cluster().unwrap();
    let loading_id = crate::cluster::replica_id(id, 1).0;
    let health = || async {
        crate::cluster::cli::fetch_status(dir.path(), Some(quic))
            .await
            .ok()
            .and_then(|s| {
                let h = |rid: u64| {
                    s.replicas
                        .iter()
                        .find(|x| x.id == rid)
                        .map(|x| x.health.clone())
                };
                Some((h(crate::cluster::replica_id(id, 0).0)?, h(loading_id)?))
            })
    };
    eventually("both registered", || async { health().await.is_some() }).await;
    assert_eq!(
        health().await.unwrap(),
        ("healthy".to_owned(), "starting".to_owned())
    );
    // Requests meanwhile all go to the engine that serves, none to the loading one.
    let addr = r.node.http_addr();
    for _ in 0..10 {
        assert_eq!(chat(addr).await, 200);
    }
    let routed =
        |rid: u64| async move { counter(addr, "routed", &format!("replica=\"{rid}\"")).await };
    assert_eq!(routed(loading_id).await, 0);
    assert!(routed(crate::cluster::replica_id(id, 0).0).await >= 10);
    // It finishes loading: it is put in service.
    engine_on(
        tokio::net::TcpListener::bind(loading).await.unwrap(),
        0.0,
        9,
    );
    eventually("the loaded engine is in service", || async {
        health().await.is_some_and(|h| h.1 == "healthy")
    })
    .await;
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serving_two_models_routes_each_request_to_its_models_replicas() {
    let (alpha, beta) = (
        engines_serving(2, "alpha").await,
        engines_serving(1, "beta").await,
    );
    let quoted = |urls: &[String]| {
        urls.iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            "[[models]]\nurls = [{}]\n[[models]]\nurls = [{}]\n",
            quoted(&alpha),
            quoted(&beta)
        ),
    )
    .unwrap();
    let mut cfg = NodeConfig::load(
        Some(&file),
        Overrides {
            http: Some("127.0.0.1:0".parse().unwrap()),
            ..Overrides::default()
        },
    )
    .unwrap();
    cfg.shutdown_grace = Duration::from_secs(1);
    let r = start(cfg, None).await;
    let addr = r.node.http_addr();
    // Each model's requests land on its own replicas (ids 0, 1 and then 2).
    for _ in 0..6 {
        let (status, replica, body) = chat_answer(addr, "alpha", None, "x-sluice-replica").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            ["0", "1"].contains(&replica.as_deref().unwrap_or("")),
            "{replica:?}"
        );
        assert!(body.contains("\"model\":\"alpha\""), "{body}");
        let (status, replica, body) = chat_answer(addr, "beta", None, "x-sluice-replica").await;
        assert_eq!((status, replica.as_deref()), (200, Some("2")), "{body}");
    }
    let (status, _, body) = chat_answer(addr, "gamma", None, "x-sluice-replica").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("model_not_found") && body.contains("`alpha`, `beta`"),
        "{body}"
    );
    let (_, listed) = http(addr, "/v1/models", None).await;
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(&listed).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let (status, health) = http(addr, "/health", None).await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(status, 200);
    let per_model: Vec<(String, u64)> = health["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model"].as_str().unwrap().to_owned(),
                m["replicas"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_model, [("alpha".to_owned(), 2), ("beta".to_owned(), 1)]);
    let (_, metrics) = http(addr, "/metrics", None).await;
    for line in [
        "sluice_replica_model{replica=\"2\",model=\"beta\"} 1",
        "sluice_replica_model{replica=\"1\",model=\"alpha\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    for model in ["alpha", "beta"] {
        assert!(
            metrics.contains(&format!(
                "sluice_model_capacity_mu_per_min{{model=\"{model}\"}}"
            )),
            "{model}'s capacity missing"
        );
    }
    // Each model's actors run under a group named after it.
    let names = r.node.actors().await;
    for group in ["model alpha", "model beta"] {
        assert!(names.contains(&group), "{group} not in {names:?}");
    }
    let _ = r.stop.send(());
    r.node.wait().await.unwrap();
}

/// A cluster node's configuration from a `[[models]]` file.
fn cluster_config(models: &str) -> NodeConfig {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, models).unwrap();
    let mut cfg = NodeConfig::load(
        Some(&file),
        Overrides {
            http: Some("127.0.0.1:0".parse().unwrap()),
            cluster: true,
            ..Overrides::default()
        },
    )
    .unwrap();
    cfg.actor_restarts = RestartPolicy::quick(5);
    cfg.shutdown_grace = Duration::from_secs(1);
    cfg
}

/// Two cluster nodes over one simulated engine each: a runs alpha, b runs beta; with
/// `list_both`, each also lists (and routes) the model the other runs.
async fn alpha_and_beta_nodes(list_both: bool) -> (Vec<tempfile::TempDir>, Running, Running) {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    crate::cluster::cli::init(dirs[0].path(), "test").unwrap();
    let token = sluice_transport::JoinToken::load(&dirs[0].path().join(crate::cluster::TLS_DIR))
        .unwrap()
        .to_string();
    let alpha = engines_serving(1, "alpha").await;
    let beta = engines_serving(1, "beta").await;
    let listed = |name: &str| {
        if list_both {
            format!("[[models]]\nname = \"{name}\"\n")
        } else {
            String::new()
        }
    };
    let a = start(
        cluster_config(&format!(
            "[[models]]\nurls = [\"{}\"]\n{}",
            alpha[0],
            listed("beta")
        )),
        Some(cluster_args(dirs[0].path(), None)),
    )
    .await;
    let (_, seed) = a.node.cluster().unwrap();
    let b = start(
        cluster_config(&format!(
            "{}[[models]]\nurls = [\"{}\"]\n",
            listed("alpha"),
            beta[0]
        )),
        Some(cluster_args(dirs[1].path(), Some((seed, token)))),
    )
    .await;
    (dirs, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_routes_each_model_to_the_node_that_runs_it() {
    // Node a runs alpha and routes beta; node b the other way round.
    let (dirs, a, b) = alpha_and_beta_nodes(true).await;
    let (a_id, b_id) = (a.node.cluster().unwrap().0, b.node.cluster().unwrap().0);
    let (a_addr, b_addr) = (a.node.http_addr(), b.node.http_addr());
    // Every request is served by its model's replica, forwarded where the node runs none.
    for (addr, model, on) in [
        (a_addr, "alpha", a_id),
        (a_addr, "beta", b_id),
        (b_addr, "alpha", a_id),
        (b_addr, "beta", b_id),
    ] {
        let replica = crate::cluster::replica_id(on, 0).0.to_string();
        eventually(&format!("{model} served through {addr}"), || async {
            let (status, served_by, _) = chat_answer(addr, model, None, "x-sluice-replica").await;
            status == 200 && served_by.as_deref() == Some(replica.as_str())
        })
        .await;
    }
    let (_, listed) = http(b_addr, "/v1/models", None).await;
    assert!(
        listed.contains("\"alpha\"") && listed.contains("\"beta\""),
        "{listed}"
    );
    // The leader keeps an assignment for each model; status lists both.
    eventually("both models assigned", || async {
        let Ok(s) = crate::cluster::cli::fetch_status(dirs[1].path(), None).await else {
            return false;
        };
        let models: Vec<(String, usize, bool)> = s
            .models
            .iter()
            .map(|m| (m.model.clone(), m.replicas, m.generation >= 1))
            .collect();
        models == [("alpha".into(), 1, true), ("beta".into(), 1, true)]
            && s.replicas
                .iter()
                .any(|r| r.model == "beta" && r.node == b_id)
    })
    .await;
    for r in [a, b] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_only_another_node_routes_is_handed_to_it() {
    // Each node lists only the model it runs: a knows nothing of beta's fleet.
    let (_dirs, a, b) = alpha_and_beta_nodes(false).await;
    let (b_id, _) = b.node.cluster().unwrap();
    let a_addr = a.node.http_addr();
    let on_b = crate::cluster::replica_id(b_id, 0).0.to_string();
    eventually("beta served through a", || async {
        let (status, served_by, _) = chat_answer(a_addr, "beta", None, "x-sluice-replica").await;
        status == 200 && served_by.as_deref() == Some(on_b.as_str())
    })
    .await;
    // The id the client gave comes back, and the answer is b's engine's.
    let (status, echoed, body) =
        chat_answer(a_addr, "beta", Some("handed-1"), "x-request-id").await;
    assert_eq!(
        (status, echoed.as_deref()),
        (200, Some("handed-1")),
        "{body}"
    );
    assert!(body.contains("\"model\":\"beta\""), "{body}");
    // A stream comes through whole.
    let (status, sse) = http(
        a_addr,
        "/v1/chat/completions",
        Some(serde_json::json!({
            "model": "beta",
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 4,
            "stream": true,
        })),
    )
    .await;
    assert_eq!(status, 200, "{sse}");
    assert!(sse.contains("data: [DONE]"), "{sse}");
    // a lists both models; a model no node routes is a 404 naming both.
    let (_, listed) = http(a_addr, "/v1/models", None).await;
    assert!(
        listed.contains("\"alpha\"") && listed.contains("\"beta\""),
        "{listed}"
    );
    let (status, _, body) = chat_answer(a_addr, "gamma", None, "x-request-id").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("model_not_found") && body.contains("`alpha`") && body.contains("`beta`"),
        "{body}"
    );
    let (_, metrics) = http(a_addr, "/metrics", None).await;
    let handed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_handed_off_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(handed >= 3.0, "{handed}");
    for r in [a, b] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_request_goes_on_to_the_next_node_when_one_is_gone() {
    // a runs alpha; b and c both run beta. With b stopped, a hands beta to c.
    let (dirs, a, b) = alpha_and_beta_nodes(false).await;
    let c_dir = tempfile::tempdir().unwrap();
    let token = sluice_transport::JoinToken::load(&dirs[0].path().join(crate::cluster::TLS_DIR))
        .unwrap()
        .to_string();
    let beta = engines_serving(1, "beta").await;
    let (_, seed) = a.node.cluster().unwrap();
    let c = start(
        cluster_config(&format!("[[models]]\nurls = [\"{}\"]\n", beta[0])),
        Some(cluster_args(c_dir.path(), Some((seed, token)))),
    )
    .await;
    let (c_id, _) = c.node.cluster().unwrap();
    let a_addr = a.node.http_addr();
    let on_c = crate::cluster::replica_id(c_id, 0).0.to_string();
    // a knows c's replica (requests rank b or c first by their ids) before b goes.
    eventually("a hands beta to c", || async {
        let (status, served_by, _) = chat_answer(a_addr, "beta", None, "x-sluice-replica").await;
        status == 200 && served_by.as_deref() == Some(on_c.as_str())
    })
    .await;
    let _ = b.stop.send(());
    b.node.wait().await.unwrap();
    // Each request ranks b or c first by its id; those that meet b first move on.
    for _ in 0..8 {
        let (status, served_by, body) = chat_answer(a_addr, "beta", None, "x-sluice-replica").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(served_by.as_deref(), Some(on_c.as_str()));
    }
    for r in [a, c] {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

/// A cluster: node a runs alpha on a zero-delay engine; each of `betas` more nodes runs
/// beta on its own simulated engine at `time_scale`, and is lost at once when stopped
/// (no grace: its streams are cut, not finished).
async fn alpha_and_betas(
    betas: usize,
    time_scale: f64,
) -> (Vec<tempfile::TempDir>, Running, Vec<Running>) {
    let dirs: Vec<tempfile::TempDir> = (0..=betas).map(|_| tempfile::tempdir().unwrap()).collect();
    crate::cluster::cli::init(dirs[0].path(), "test").unwrap();
    let token = sluice_transport::JoinToken::load(&dirs[0].path().join(crate::cluster::TLS_DIR))
        .unwrap()
        .to_string();
    let alpha = engines_serving(1, "alpha").await;
    let a = start(
        cluster_config(&format!("[[models]]\nurls = [\"{}\"]\n", alpha[0])),
        Some(cluster_args(dirs[0].path(), None)),
    )
    .await;
    let (_, seed) = a.node.cluster().unwrap();
    let mut nodes = Vec::new();
    for (i, dir) in dirs[1..].iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        engine_serving(listener, "beta", time_scale, i as u64);
        let mut cfg = cluster_config(&format!("[[models]]\nurls = [\"{url}\"]\n"));
        cfg.shutdown_grace = Duration::ZERO;
        let node = start(
            cfg,
            Some(cluster_args(dir.path(), Some((seed, token.clone())))),
        )
        .await;
        nodes.push(node);
    }
    (dirs, a, nodes)
}

/// Reads a stream to its end, stopping `node` (which serves or routes it) mid-answer,
/// after its third event.
async fn read_losing(resp: hyper::Response<hyper::body::Incoming>, node: Running) -> String {
    let mut lost = Some(node);
    let mut body = resp.into_body();
    let mut text = String::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            text.push_str(std::str::from_utf8(&data).unwrap());
            if sse_events(&text).len() >= 3 {
                if let Some(r) = lost.take() {
                    let _ = r.stop.send(());
                    r.node.wait().await.unwrap();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ends");
    assert!(
        lost.is_none(),
        "the stream ended before its node was lost: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_stream_goes_on_from_another_node_when_the_one_routing_it_is_lost() {
    // a runs alpha; b and c each run beta on an engine that streams in real time.
    let (_dirs, a, mut betas) = alpha_and_betas(2, 1.0).await;
    let a_addr = a.node.http_addr();
    for b in &betas {
        let on = crate::cluster::replica_id(b.node.cluster().unwrap().0, 0)
            .0
            .to_string();
        // Requests go to one node or the other by their ids.
        eventually("beta served by each node through a", || async {
            let (status, served_by, _) =
                chat_answer(a_addr, "beta", None, "x-sluice-replica").await;
            status == 200 && served_by.as_deref() == Some(on.as_str())
        })
        .await;
    }
    const TOKENS: usize = 40;
    let resp = seeded_stream(a_addr, "beta", TOKENS).await;
    // The node a handed it to routes it (its replica may be on the other node).
    let routing: u64 = resp.headers()["x-sluice-handed-to"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let serving = betas
        .iter()
        .position(|b| b.node.cluster().unwrap().0 == routing)
        .expect("handed to b or c");
    let text = read_losing(resp, betas.remove(serving)).await;
    assert_one_answer(&text, TOKENS);
    assert_eq!(
        counter(a_addr, "migrations", "reason=\"node_lost\"").await,
        1,
        "continued once, from the other node"
    );
    for r in std::iter::once(a).chain(betas) {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_replicas_node_is_lost_goes_on_elsewhere_blaming_no_request() {
    // a and b each run beta on an engine that streams in real time.
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    crate::cluster::cli::init(dirs[0].path(), "test").unwrap();
    let token = sluice_transport::JoinToken::load(&dirs[0].path().join(crate::cluster::TLS_DIR))
        .unwrap()
        .to_string();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        engine_serving(listener, "beta", 1.0, i as u64);
        let mut cfg = cluster_config(&format!("[[models]]\nurls = [\"{url}\"]\n"));
        cfg.shutdown_grace = Duration::ZERO;
        let join = nodes
            .first()
            .map(|a: &Running| (a.node.cluster().unwrap().1, token.clone()));
        nodes.push(start(cfg, Some(cluster_args(dir.path(), join))).await);
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    let a_addr = a.node.http_addr();
    let on_b = crate::cluster::replica_id(b.node.cluster().unwrap().0, 0)
        .0
        .to_string();
    const TOKENS: usize = 40;
    // Streams held open (the latest few) until one of a's lands on b's replica, once
    // a has heard of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut held = std::collections::VecDeque::new();
    let mut tries = 0;
    let resp = loop {
        tries += 1;
        let prompt = format!("story number {tries}");
        let r = seeded_stream_of(a_addr, "beta", &prompt, TOKENS).await;
        if r.headers()["x-sluice-replica"].to_str().unwrap() == on_b {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stream of a's reached b's replica"
        );
        held.push_back(r);
        if held.len() > 16 {
            held.pop_front();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    drop(held);
    let text = read_losing(resp, b).await;
    assert_one_answer(&text, TOKENS);
    // Continued as the node's loss (which implicates no request), not as a break of
    // the answer.
    let (_, metrics) = http(a_addr, "/metrics", None).await;
    let moved: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_migrations_total{") && !l.ends_with(" 0"))
        .collect();
    assert_eq!(
        moved,
        ["sluice_migrations_total{reason=\"node_lost\"} 1"],
        "{text}"
    );
    let _ = a.stop.send(());
    a.node.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_answer_sent_whole_may_take_longer_than_a_peers_silence() {
    // a runs alpha; b runs beta on an engine slow enough that a whole answer takes
    // longer than the silence after which a peer is taken for gone.
    let (_dirs, a, betas) = alpha_and_betas(1, 3.0).await;
    let a_addr = a.node.http_addr();
    eventually("beta served through a", || async {
        chat_answer(a_addr, "beta", None, "x-request-id").await.0 == 200
    })
    .await;
    let body = serde_json::json!({
        "model": "beta",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 150,
        "ignore_eos": true,
    });
    let began = tokio::time::Instant::now();
    let (status, answer) = http(a_addr, "/v1/chat/completions", Some(body)).await;
    let took = began.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert!(
        took > crate::cluster::forward::PEER_SILENCE,
        "the answer took {took:?}: too quick to show anything"
    );
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 150, "{answer}");
    for r in std::iter::once(a).chain(betas) {
        let _ = r.stop.send(());
        r.node.wait().await.unwrap();
    }
}
