//! The live autoscaler on three nodes over three racks, two GPUs each: under light load
//! the fleet drains down to its minimum; as load ramps up the leader places replicas on
//! free GPUs across all racks and the nodes start them; as load falls they are drained
//! and removed — and no request fails at any point.

use anyhow::{Context, Result};
use serde_json::Value;
use sluice_chaos::drill::ledger::{judge_stream, Outcome};
use sluice_sim::scaling::ScalePoint;
use sluice_tests::cluster::{init, status, wait_status, Node};
use sluice_tests::Http;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MODEL: &str = "llama-3.1-8b-instruct";

/// Healthy replicas by node, and every replica's health, from a status.
fn fleet(s: &Value) -> (BTreeMap<u64, usize>, Vec<String>) {
    let mut healthy = BTreeMap::new();
    let mut all = Vec::new();
    for r in s["replicas"].as_array().into_iter().flatten() {
        let h = r["health"].as_str().unwrap_or("?").to_owned();
        if h == "healthy" {
            *healthy.entry(r["node"].as_u64().unwrap_or(0)).or_default() += 1;
        }
        all.push(h);
    }
    (healthy, all)
}

/// Requests in flight at a steady rate (milli-requests per second, changeable while it
/// runs), round-robin over the nodes' front doors, half of them streamed. Each outcome
/// is recorded: `None` for a whole answer, or what went wrong.
struct Load {
    rate_milli: Arc<AtomicU64>,
    outcomes: Arc<Mutex<Vec<Option<String>>>>,
    stop: tokio::sync::watch::Sender<bool>,
    driver: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl Load {
    /// Requests for `model` at `rps`.
    fn start(bases: Vec<String>, model: &'static str, rps: f64) -> Self {
        let rate_milli = Arc::new(AtomicU64::new((rps * 1000.0) as u64));
        let outcomes: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (rate, out) = (rate_milli.clone(), outcomes.clone());
        let driver = tokio::spawn(async move {
            let http = Http::default();
            let mut tasks = Vec::new();
            let mut i = 0u64;
            loop {
                let milli = rate.load(Ordering::Relaxed).max(1);
                let gap = Duration::from_secs_f64(1000.0 / milli as f64);
                tokio::select! {
                    _ = tokio::time::sleep(gap) => {}
                    _ = stopped.changed() => return tasks,
                }
                let base = bases[(i as usize) % bases.len()].clone();
                let (http, out) = (http.clone(), out.clone());
                tasks.push(tokio::spawn(async move {
                    let r = one(&http, &base, model, i).await;
                    out.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                }));
                i += 1;
            }
        });
        Self {
            rate_milli,
            outcomes,
            stop,
            driver,
        }
    }

    fn set_rate(&self, rps: f64) {
        self.rate_milli
            .store((rps * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Stops sending, waits for every answer, and returns the failures.
    async fn finish(self) -> Result<(usize, Vec<String>)> {
        let _ = self.stop.send(true);
        for t in self.driver.await? {
            t.await?;
        }
        let all = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        Ok((all.len(), all.iter().flatten().cloned().collect()))
    }
}

/// One request for `model` with a unique ~250-token prompt and exactly 64 output tokens.
async fn one(http: &Http, base: &str, model: &str, i: u64) -> Option<String> {
    use http_body_util::BodyExt;
    let stream = i.is_multiple_of(2);
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": format!("{i} {}", "data ".repeat(250))}],
        "max_tokens": 64,
        "ignore_eos": true,
        "stream": stream,
    })
    .to_string();
    let url = format!("{base}/v1/chat/completions");
    let headers = [("x-session-id", &*format!("s{i}"))];
    let (status, _, incoming) = match http.start("POST", &url, &headers, Some(body)).await {
        Ok(r) => r,
        Err(e) => return Some(format!("request {i}: {e}")),
    };
    let bytes = match tokio::time::timeout(Duration::from_secs(60), incoming.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Some(format!("request {i}: body broke off: {e}")),
        Err(_) => return Some(format!("request {i}: no answer within 60 s")),
    };
    let text = String::from_utf8_lossy(&bytes);
    if status != 200 {
        return Some(format!("request {i}: status {status}: {text}"));
    }
    if !stream {
        return None;
    }
    match judge_stream(&text, None) {
        Outcome::Ok => None,
        Outcome::Lost { why } | Outcome::Explicit { why } => Some(format!("request {i}: {why}")),
    }
}

/// Samples the leader's view once a second (for the ramp plot): desired count, healthy
/// and starting replicas, and the offered MU/min it measured.
fn record_timeline(
    nodes: Vec<(std::path::PathBuf, String)>,
) -> (
    tokio::task::JoinHandle<Vec<ScalePoint>>,
    tokio::sync::watch::Sender<bool>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut points = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped.changed() => return points,
            }
            let ask = nodes.clone();
            let leader_view = tokio::task::spawn_blocking(move || {
                ask.iter().find_map(|(dir, quic)| {
                    let s = status(dir, Some(quic)).ok()?;
                    s["offered_mu_per_min"].as_f64().map(|mu| (s, mu))
                })
            })
            .await;
            let Ok(Some((s, mu))) = leader_view else {
                continue;
            };
            let (_, every) = fleet(&s);
            points.push(ScalePoint {
                at_us: start.elapsed().as_micros() as u64,
                desired: s["desired"].as_u64().unwrap_or(0) as usize,
                ready: every.iter().filter(|h| *h == "healthy").count(),
                starting: every.iter().filter(|h| *h == "starting").count(),
                mu_per_min: mu,
            });
        }
    });
    (task, stop)
}

/// With `SLUICE_RAMP_OUT=DIR`, the ramp's timeline as `DIR/ramp.csv` and `DIR/ramp.svg`.
fn write_ramp(points: &[ScalePoint], per_replica: f64) -> Result<()> {
    let Some(dir) = std::env::var_os("SLUICE_RAMP_OUT") else {
        return Ok(());
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let mut csv = String::from("seconds,offered_mu_per_min,desired,healthy,starting\n");
    for p in points {
        csv.push_str(&format!(
            "{:.1},{:.0},{},{},{}\n",
            p.at_us as f64 / 1e6,
            p.mu_per_min,
            p.desired,
            p.ready,
            p.starting
        ));
    }
    std::fs::write(dir.join("ramp.csv"), csv)?;
    sluice_sim::plot::replicas_over_time(
        &dir.join("ramp.svg"),
        "Live autoscaler: 3 nodes × 2 GPUs, load ramp",
        &[("replicas (healthy + starting)".to_owned(), points.to_vec())],
        per_replica,
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_load_across_racks_and_drain_without_failures() -> Result<()> {
    let work = tempfile::tempdir()?;
    let profile = sluice_tests::small_profile(work.path(), 600.0)?;
    let config = work.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[replicas]\nprofile = {:?}\ndrain_deadline_s = 30\n\n[autoscaler]\nenabled = true\n\
             min_replicas = 2\ntick_s = 1\nup_window_s = 5\ndown_window_s = 10\n",
            profile.to_string_lossy()
        ),
    )?;
    let cfg = config.to_string_lossy().into_owned();
    let extra = ["--gpus", "2", "--replicas", "1", "--config", &cfg];
    let nodes = [Node::new("r1")?, Node::new("r2")?, Node::new("r3")?];
    let token = init(&nodes[0])?;
    let _p1 = nodes[0].start_with(None, &extra)?;
    let _p2 = nodes[1].start_with(Some((&nodes[0].quic, &token)), &extra)?;
    let _p3 = nodes[2].start_with(Some((&nodes[0].quic, &token)), &extra)?;
    let all: Vec<&Node> = nodes.iter().collect();
    let s = wait_status(&all, Duration::from_secs(30), |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 3) && fleet(s).1.len() == 3
    })
    .await?;
    let rack_of: BTreeMap<u64, String> = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_u64()?, n["rack"].as_str()?.to_owned())))
        .collect();
    assert!(s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|n| n["gpus"] == 2));

    let (timeline, stop_timeline) = record_timeline(
        nodes
            .iter()
            .map(|n| (n.dir.path().to_owned(), n.quic.clone()))
            .collect(),
    );
    let load = Load::start(nodes.iter().map(|n| n.base()).collect(), MODEL, 0.25);

    // Light load: the fleet drains down to its minimum of two.
    let low = wait_status(&all, Duration::from_secs(60), |s| {
        let (healthy, every) = fleet(s);
        every.len() == 2 && healthy.values().sum::<usize>() == 2 && s["desired"] == 2
    })
    .await
    .context("the fleet did not scale in to 2 under light load")?;
    eprintln!("light load: {:?}", fleet(&low));

    // Load ramps up (~5 replicas' worth at 70% of the small capacity: ~9 MU a request
    // at the embedded price): replicas are placed on free GPUs, and every rack gets some.
    load.set_rate(3.2);
    let high = wait_status(&all, Duration::from_secs(60), |s| {
        let (healthy, _) = fleet(s);
        healthy.values().sum::<usize>() >= 5 && s["desired"].as_u64().is_some_and(|d| d >= 5)
    })
    .await
    .context("the fleet did not scale out to 5 replicas as load rose")?;
    let (healthy, _) = fleet(&high);
    eprintln!("heavy load: {healthy:?}");
    let racks: BTreeSet<&String> = healthy.keys().filter_map(|n| rack_of.get(n)).collect();
    assert_eq!(
        racks.len(),
        3,
        "replicas not spread over racks: {healthy:?}"
    );
    assert!(
        healthy.values().all(|&n| n <= 2),
        "more replicas than GPUs: {healthy:?}"
    );
    // Serve at the peak for a while.
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Load falls: replicas are drained (while requests are in flight) and removed.
    load.set_rate(0.25);
    let back = wait_status(&all, Duration::from_secs(90), |s| {
        let (healthy, every) = fleet(s);
        every.len() == 2 && healthy.values().sum::<usize>() == 2 && s["desired"] == 2
    })
    .await
    .context("the fleet did not scale back in to 2 as load fell")?;
    eprintln!("load fell: {:?}", fleet(&back));
    // A little more traffic on the shrunk fleet, then every answer is checked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (sent, failures) = load.finish().await?;
    let _ = stop_timeline.send(true);
    // The profile's 600 MU/min at the default target utilization of 0.7.
    write_ramp(&timeline.await?, 600.0 * 0.7)?;
    eprintln!("{sent} requests, {} failed", failures.len());
    assert!(sent > 30, "too little traffic to show anything: {sent}");
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    Ok(())
}

/// An operator drains a replica that is streaming a long answer: the stream finishes
/// whole, no new request goes to the replica, and only then is it stopped and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replica_finishes_its_streams_before_it_stops() -> Result<()> {
    use http_body_util::BodyExt;
    let node = Node::new("r1")?;
    init(&node)?;
    let _p = node.start_with(None, &["--replicas", "2"])?;
    wait_status(&[&node], Duration::from_secs(30), |s| fleet(s).1.len() == 2).await?;
    let http = Http::default();
    let long = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "a long story"}],
        "max_tokens": 1500,
        "ignore_eos": true,
        "stream": true,
    })
    .to_string();
    let url = format!("{}/v1/chat/completions", node.base());
    let (status, replica, incoming) = http.start("POST", &url, &[], Some(long)).await?;
    assert_eq!(status, 200);
    let replica = replica.context("no replica header")?;
    let stream = tokio::spawn(async move { incoming.collect().await.map(|b| b.to_bytes()) });

    let d = node.dir.path().to_string_lossy().into_owned();
    let out = sluice_tests::cluster::sluice(&[
        "cluster",
        "drain",
        &replica.to_string(),
        "--data-dir",
        &d,
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drained_at = std::time::Instant::now();
    // While it drains: listed as draining, and new requests go elsewhere.
    let s = wait_status(&[&node], Duration::from_secs(5), |s| {
        fleet(s).1.iter().any(|h| h == "draining")
    })
    .await?;
    assert_eq!(fleet(&s).1.len(), 2);
    // The router has taken it out of service.
    let label = format!("replica=\"{replica}\"");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let gauge = http
            .metric(&node.base(), "sluice_replica_available")
            .await?;
        if gauge.iter().any(|(l, v)| l.contains(&label) && *v == 0.0) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the router still has the draining replica in service: {gauge:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..6 {
        let body = serde_json::json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": format!("short {i}")}],
            "max_tokens": 4,
        })
        .to_string();
        let a = http.send("POST", &url, &[], Some(body)).await?;
        assert_eq!(a.status, 200);
        assert_ne!(
            a.replica,
            Some(replica),
            "a draining replica got a new request"
        );
    }
    // The long stream comes back whole, and only then is the replica gone.
    let body = stream.await??;
    let finished_after = drained_at.elapsed();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream was cut: {}",
        &text[text.len().saturating_sub(300)..]
    );
    let gone = wait_status(&[&node], Duration::from_secs(15), |s| fleet(s).1.len() == 1).await?;
    assert!(gone["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|r| r["id"].as_u64() != Some(replica)));
    assert!(
        finished_after > Duration::from_secs(2),
        "the stream ended {finished_after:?} after the drain: too short to show the wait"
    );
    // A replica that is not there cannot be drained.
    let out = sluice_tests::cluster::sluice(&["cluster", "drain", "999", "--data-dir", &d])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown replica 999"));
    Ok(())
}

/// Replicas of every model on each node, and healthy replicas of `model` (from a status).
fn by_model(s: &Value, model: &str) -> (BTreeMap<u64, usize>, usize) {
    let mut held = BTreeMap::new();
    let mut healthy = 0;
    for r in s["replicas"].as_array().into_iter().flatten() {
        *held.entry(r["node"].as_u64().unwrap_or(0)).or_default() += 1;
        if r["model"] == model && r["health"] == "healthy" {
            healthy += 1;
        }
    }
    (held, healthy)
}

/// Two models on two nodes of two GPUs: each node starts one replica of the first and
/// none of the second. The autoscaler gives the second its minimum at once and, under
/// load, as many replicas as the GPUs the first leaves free — never more replicas on a
/// node than it has GPUs — and both models keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_share_the_gpus_as_the_autoscaler_places_them() -> Result<()> {
    const SMALL: &str = "small-model";
    let work = tempfile::tempdir()?;
    let profile = sluice_tests::small_profile(work.path(), 600.0)?;
    let config = work.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = {MODEL:?}\nreplicas = 1\nprofile = {p:?}\n\
             [[models]]\nname = {SMALL:?}\nprofile = {p:?}\n\n\
             [autoscaler]\nenabled = true\nmin_replicas = 1\ntick_s = 1\nup_window_s = 5\n\
             down_window_s = 60\n",
            p = profile.to_string_lossy()
        ),
    )?;
    let cfg = config.to_string_lossy().into_owned();
    let extra = ["--gpus", "2", "--time-scale", "0", "--config", &cfg];
    let nodes = [Node::new("r1")?, Node::new("r2")?];
    let token = init(&nodes[0])?;
    let _p1 = nodes[0].start_with(None, &extra)?;
    let _p2 = nodes[1].start_with(Some((&nodes[0].quic, &token)), &extra)?;
    let all: Vec<&Node> = nodes.iter().collect();
    wait_status(&all, Duration::from_secs(60), |s| by_model(s, SMALL).1 >= 1)
        .await
        .context("the second model did not get its minimum replica")?;
    let bases: Vec<String> = nodes.iter().map(|n| n.base()).collect();
    let big = Load::start(bases.clone(), MODEL, 2.0);
    let small = Load::start(bases, SMALL, 6.0);
    let full = wait_status(&all, Duration::from_secs(90), |s| {
        let (held, healthy) = by_model(s, SMALL);
        assert!(
            held.values().all(|&n| n <= 2),
            "more replicas than GPUs on a node: {s}"
        );
        healthy >= 2
    })
    .await
    .context("the loaded model did not scale out onto the free GPUs")?;
    eprintln!("under load: {:?}", by_model(&full, SMALL));
    // Serve at the peak a while: the autoscaler keeps wanting more than the GPUs hold.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = wait_status(&all, Duration::from_secs(10), |_| true).await?;
    let (held, _) = by_model(&s, SMALL);
    assert!(held.values().all(|&n| n <= 2), "{s}");
    assert!(
        s["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["model"] == MODEL && r["health"] == "healthy"),
        "the first model lost its replicas: {s}"
    );
    for (name, load) in [("first", big), ("second", small)] {
        let (sent, failures) = load.finish().await?;
        eprintln!("{name} model: {sent} requests, {} failed", failures.len());
        assert!(sent > 5, "too little traffic: {sent}");
        assert!(
            failures.is_empty(),
            "{name} model's failed requests: {failures:#?}"
        );
    }
    Ok(())
}
