//! A node over four simulated replicas: long requests are spread by model units, not
//! by request count, and in-flight MU returns to exactly zero when all finish.

use anyhow::Result;
use http_body_util::BodyExt;
use sluice_tests::{Http, Proc};
use std::collections::HashSet;
use tokio::task::JoinHandle;

const MODEL: &str = "llama-3.1-8b-instruct";

fn chat_body(words: usize, max_tokens: u32, tag: &str) -> String {
    let prompt = format!("{tag} {}", "abc ".repeat(words));
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": true,
    })
    .to_string()
}

/// Starts a streaming request; returns its replica and a task that drains the stream
/// and reports whether it ended with `[DONE]`.
async fn open_stream(http: &Http, base: &str, body: String) -> Result<(u64, JoinHandle<bool>)> {
    let (status, replica, mut incoming) = http
        .start(
            "POST",
            &format!("{base}/v1/chat/completions"),
            &[],
            Some(body),
        )
        .await?;
    anyhow::ensure!(status == 200, "status {status}");
    let replica = replica.ok_or_else(|| anyhow::anyhow!("no x-sluice-replica header"))?;
    let drain = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(Ok(frame)) = incoming.frame().await {
            if let Ok(d) = frame.into_data() {
                all.extend_from_slice(&d);
            }
        }
        all.ends_with(b"data: [DONE]\n\n")
    });
    Ok((replica, drain))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_spread_by_mu_and_inflight_returns_to_zero() -> Result<()> {
    // Every slice is served by all four replicas, so the choice is the cost rule's alone.
    let (node, _cfg) = Proc::node("[router]\nsubset_size = 4\n", &["--replicas", "4"])?;
    let http = Http::default();
    let base = node.url.clone();

    let (l1, d1) = open_stream(&http, &base, chat_body(30_000, 400, "long-1")).await?;
    let (l2, d2) = open_stream(&http, &base, chat_body(30_000, 400, "long-2")).await?;
    assert_ne!(l1, l2, "two long requests must not share a replica");

    // Six short requests while the long ones run: a request-count balancer would put
    // the third and later ones on the long requests' replicas; MU keeps them off.
    let mut drains = vec![d1, d2];
    let mut short_replicas = Vec::new();
    for i in 0..6 {
        let (r, d) = open_stream(&http, &base, chat_body(50, 50, &format!("short-{i}"))).await?;
        short_replicas.push(r);
        drains.push(d);
    }
    for r in &short_replicas {
        assert!(
            *r != l1 && *r != l2,
            "short request went to a long request's replica: {short_replicas:?}"
        );
    }
    let in_flight: f64 = http
        .metric(&base, "sluice_replica_inflight_mu")
        .await?
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert!(in_flight > 0.0);

    // Two more long requests go to the replicas without one.
    let (l3, d3) = open_stream(&http, &base, chat_body(30_000, 400, "long-3")).await?;
    let (l4, d4) = open_stream(&http, &base, chat_body(30_000, 400, "long-4")).await?;
    drains.push(d3);
    drains.push(d4);
    let longs: HashSet<u64> = [l1, l2, l3, l4].into();
    assert_eq!(
        longs.len(),
        4,
        "long requests {l1} {l2} {l3} {l4} must be on four replicas"
    );

    for d in drains {
        assert!(d.await?, "a stream did not end with [DONE]");
    }
    // All finished: every replica's in-flight MU and request count is exactly zero.
    let mu = http.metric(&base, "sluice_replica_inflight_mu").await?;
    assert_eq!(mu.len(), 4);
    assert!(mu.iter().all(|(_, v)| *v == 0.0), "{mu:?}");
    let reqs = http
        .metric(&base, "sluice_replica_inflight_requests")
        .await?;
    assert!(reqs.iter().all(|(_, v)| *v == 0.0), "{reqs:?}");
    assert!(node.stop()?, "node did not exit cleanly");
    Ok(())
}
