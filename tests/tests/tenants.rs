//! Tenants on three nodes: one reserves 60% of the fleet and sends exactly that, another
//! floods at 3× capacity. The reserved tenant keeps its goodput and its TTFT, the flooder
//! is told 429 with Retry-After (never left to time out), and the cluster admits about
//! its capacity — also when the reserved tenant sends everything to one node. Bad and
//! missing keys, a reservation that does not fit, an unknown tenant or model: each gets
//! its clear error.

use anyhow::{Context, Result};
use http_body_util::BodyExt;
use sluice_chaos::drill::ledger::{judge_stream, Outcome as StreamOutcome};
use sluice_tests::cluster::{init, sluice, wait_status, Node};
use sluice_tests::Http;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MODEL: &str = "llama-3.1-8b-instruct";
/// Per-replica capacity of the test profile, MU/min: small, so that the load a test
/// machine can offer is several times the fleet's capacity (the engines keep their
/// real speed, far above it).
const REPLICA_CAPACITY: f64 = 1200.0;

fn cli(node: &Node, args: &[&str]) -> Result<std::process::Output> {
    let d = node.dir.path().to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend(["--data-dir", &d]);
    sluice(&all)
}

/// `sluice tenant create NAME`; returns the key it printed.
fn create_tenant(node: &Node, name: &str) -> Result<String> {
    let out = cli(node, &["tenant", "create", name])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("sk-sluice-"))
        .map(str::to_owned)
        .context("no key printed")
}

#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    ttft: Option<Duration>,
    retry_after: bool,
    problem: Option<String>,
}

/// One streamed request: status, time to the first chunk, and whether a refusal said
/// when to retry.
async fn one(http: &Http, base: &str, key: &str, i: u64) -> Outcome {
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("{i} {}", "data ".repeat(250))}],
        "max_tokens": 64,
        "ignore_eos": true,
        "stream": true,
    })
    .to_string();
    let auth = format!("Bearer {key}");
    let url = format!("{base}/v1/chat/completions");
    let started = Instant::now();
    let mut req = hyper::Request::post(&url)
        .header("content-type", "application/json")
        .header("authorization", &auth);
    req = req.header("x-session-id", format!("s{i}"));
    let fail = |p: String| Outcome {
        status: 0,
        ttft: None,
        retry_after: false,
        problem: Some(p),
    };
    let Ok(req) = req.body(http_body_util::Full::new(bytes::Bytes::from(body))) else {
        return fail("bad request".into());
    };
    let resp = match tokio::time::timeout(Duration::from_secs(30), http.raw(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(format!("{e}")),
        Err(_) => return fail("no answer within 30 s".into()),
    };
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let mut body = resp.into_body();
    let mut ttft = None;
    let mut text = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    if ttft.is_none() && !d.is_empty() {
                        ttft = Some(started.elapsed());
                    }
                    text.extend_from_slice(&d);
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return fail(format!("body broke off: {e}")),
            Err(_) => return fail("stream stalled for 30 s".into()),
        }
    }
    let text = String::from_utf8_lossy(&text);
    let problem = match status {
        200 => match judge_stream(&text, None) {
            StreamOutcome::Ok => None,
            StreamOutcome::Lost { why } | StreamOutcome::Explicit { why } => Some(why),
        },
        429 => None,
        s => Some(format!("status {s}: {text}")),
    };
    Outcome {
        status,
        ttft,
        retry_after,
        problem,
    }
}

/// Sends at `per_s` requests a second for `secs`, spread over `bases`; every outcome.
async fn drive(bases: Vec<String>, key: String, per_s: f64, secs: f64) -> Vec<Outcome> {
    let http = Http::default();
    let out: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let n = (per_s * secs) as u64;
    let gap = Duration::from_secs_f64(1.0 / per_s);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(start + gap * i as u32).await;
        let (http, base, key, out) = (
            http.clone(),
            bases[i as usize % bases.len()].clone(),
            key.clone(),
            out.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let o = one(&http, &base, &key, i).await;
            out.lock().unwrap_or_else(|p| p.into_inner()).push(o);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let v = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    v
}

/// MU admitted (reserved and best effort) by all nodes so far, by the nodes' metrics.
async fn admitted_mu(http: &Http, nodes: &[Node]) -> Result<f64> {
    let mut sum = 0.0;
    for n in nodes {
        for (labels, v) in http.metric(&n.base(), "sluice_tenant_mu_total").await? {
            if !labels.contains("refused") {
                sum += v;
            }
        }
    }
    Ok(sum)
}

fn p95(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 95 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_hold_against_a_flooder_on_every_node() -> Result<()> {
    let work = tempfile::tempdir()?;
    let profile = sluice_tests::small_profile(work.path(), REPLICA_CAPACITY)?;
    let p = profile.to_string_lossy().into_owned();
    let extra = ["--replicas", "1", "--profile", &p];
    let nodes = [Node::new("r1")?, Node::new("r2")?, Node::new("r3")?];
    let token = init(&nodes[0])?;
    let _p1 = nodes[0].start_with(None, &extra)?;
    let _p2 = nodes[1].start_with(Some((&nodes[0].quic, &token)), &extra)?;
    let _p3 = nodes[2].start_with(Some((&nodes[0].quic, &token)), &extra)?;
    let all: Vec<&Node> = nodes.iter().collect();
    wait_status(&all, Duration::from_secs(30), |s| {
        s["replicas"].as_array().is_some_and(|r| r.len() == 3)
            && s["nodes"].as_array().is_some_and(|n| n.len() == 3)
    })
    .await?;
    let http = Http::default();
    let bases: Vec<String> = nodes.iter().map(|n| n.base()).collect();

    // Open until the first tenant exists; then every request needs a key.
    let gold = create_tenant(&nodes[0], "gold")?;
    let flood = create_tenant(&nodes[1], "flood")?;
    let capacity = 3.0 * REPLICA_CAPACITY;
    let reserve = format!("{}", 0.6 * capacity);
    let out = cli(
        &nodes[2],
        &["tenant", "reserve", "gold", "--mu-per-min", &reserve],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Errors first: each one clear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let req = |key: Option<&str>| {
        let mut b = hyper::Request::post(format!("{}/v1/chat/completions", bases[0]))
            .header("content-type", "application/json");
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        b.body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
                .to_string(),
        )))
    };
    for (key, what) in [
        (None, "provide an API key"),
        (Some("sk-sluice-nope"), "Incorrect API key"),
    ] {
        let resp = http.raw(req(key)?).await?;
        assert_eq!(resp.status().as_u16(), 401);
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(what)),
            "{body}"
        );
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    let resp = http.raw(req(Some(&gold))?).await?;
    assert_eq!(resp.status().as_u16(), 200);
    for (args, needle) in [
        (
            vec!["tenant", "reserve", "flood", "--mu-per-min", &reserve],
            "does not fit",
        ),
        (
            vec!["tenant", "reserve", "nobody", "--mu-per-min", "10"],
            "unknown tenant nobody",
        ),
        (
            vec![
                "tenant",
                "reserve",
                "flood",
                "--model",
                "gpt-9",
                "--mu-per-min",
                "10",
            ],
            "unknown model gpt-9",
        ),
        (
            vec!["tenant", "create", "gold"],
            "tenant gold already exists",
        ),
    ] {
        let out = cli(&nodes[0], &args)?;
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = cli(&nodes[1], &["tenant", "list", "--json"])?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains(&gold) && !text.contains(&flood),
        "a key was shown again"
    );

    // What one request costs, by the node that admitted it.
    let before = admitted_mu(&http, &nodes).await?;
    let o = one(&http, &bases[0], &gold, 1_000_000).await;
    assert_eq!(o.status, 200);
    let cost = admitted_mu(&http, &nodes).await? - before;
    assert!(cost > 1.0, "cost {cost}");
    let gold_per_s = 0.6 * capacity / 60.0 / cost;
    let flood_per_s = 3.0 * capacity / 60.0 / cost;
    eprintln!("a request costs {cost:.1} MU: gold {gold_per_s:.2}/s, flood {flood_per_s:.2}/s");

    for (phase, gold_bases) in [
        ("spread", bases.clone()),
        ("one node", vec![bases[0].clone()]),
    ] {
        let secs = 40.0;
        let g = tokio::spawn(drive(gold_bases, gold.clone(), gold_per_s, secs));
        let f = tokio::spawn(drive(bases.clone(), flood.clone(), flood_per_s, secs));
        // Admitted MU over the steady part (after the first 10 s, while both send):
        // the shares have followed the demand by then.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start_mu = admitted_mu(&http, &nodes).await?;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(25)).await;
        let elapsed_min = started.elapsed().as_secs_f64() / 60.0;
        let admitted_rate = (admitted_mu(&http, &nodes).await? - start_mu) / elapsed_min;
        let (g, f) = (g.await?, f.await?);

        let problems: Vec<&String> = g
            .iter()
            .chain(&f)
            .filter_map(|o| o.problem.as_ref())
            .collect();
        assert!(problems.is_empty(), "{phase}: {problems:?}");
        let gold_ok = g.iter().filter(|o| o.status == 200).count();
        let goodput = gold_ok as f64 / g.len() as f64;
        let ttft = p95(g.iter().filter_map(|o| o.ttft).collect());
        let refused = f.iter().filter(|o| o.status == 429).count();
        eprintln!(
            "{phase}: gold {gold_ok}/{} ok (goodput {:.1}% of its reservation), p95 TTFT {ttft:?}; flood {} ok, {refused} refused; admitted {admitted_rate:.0} MU/min of {capacity} capacity",
            g.len(),
            goodput * 100.0,
            f.len() - refused,
        );
        assert!(goodput >= 0.95, "{phase}: gold got {:.1}%", goodput * 100.0);
        assert!(
            ttft <= Duration::from_secs(2),
            "{phase}: gold p95 TTFT {ttft:?}"
        );
        assert!(refused > 0, "{phase}: the flooder was never refused");
        assert!(
            f.iter().filter(|o| o.status == 429).all(|o| o.retry_after),
            "{phase}: a 429 without Retry-After"
        );
        // Reserved plus spare is the fleet's capacity: the cluster admits no more than
        // 5% beyond it.
        assert!(
            admitted_rate <= 1.05 * capacity,
            "{phase}: admitted {admitted_rate:.0} MU/min > capacity {capacity}"
        );
    }
    Ok(())
}
