//! The assigner runs live on a standalone node: load on one hot workload makes a round
//! commit a new slice-map generation (the hot slice split or spread), visible on
//! `/metrics`, while requests keep being served; idle rounds change nothing.

use anyhow::Result;
use sluice_tests::{Http, Proc};
use std::time::Duration;

const MODEL: &str = "llama-3.1-8b-instruct";

async fn generation(http: &Http, base: &str) -> Result<f64> {
    let g = http.metric(base, "sluice_assignment_generation").await?;
    g.first()
        .map(|(_, v)| *v)
        .ok_or_else(|| anyhow::anyhow!("no sluice_assignment_generation metric"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_workload_makes_the_assigner_commit_a_new_generation() -> Result<()> {
    let (node, _cfg) = Proc::node(
        "[assigner]\nround_every_s = 0.5\nhalf_life_s = 0\n",
        &["--replicas", "4", "--time-scale", "0"],
    )?;
    let http = Http::default();
    let base = node.url.clone();
    // Idle rounds have nothing to balance and leave the map alone.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(generation(&http, &base).await?, 1.0);
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "hot ".repeat(200)}],
        "max_tokens": 16,
    })
    .to_string();
    let mut seen = 1.0;
    for _ in 0..40 {
        for _ in 0..10 {
            let a = http
                .send(
                    "POST",
                    &format!("{base}/v1/chat/completions"),
                    &[("x-session-id", "the-hot-one")],
                    Some(body.clone()),
                )
                .await?;
            assert_eq!(a.status, 200);
        }
        seen = generation(&http, &base).await?;
        if seen > 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen > 1.0,
        "no assigner round changed the map (generation {seen})"
    );
    assert!(node.stop()?, "node did not exit cleanly");
    Ok(())
}
