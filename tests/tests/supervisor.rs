//! Launched replicas are supervised: one that crashes is restarted (at a new address)
//! and serves again, and requests sent meanwhile are answered by the others.

use anyhow::{Context, Result};
use serde_json::Value;
use sluice_tests::{Http, Proc};
use std::time::{Duration, Instant};

async fn health(http: &Http, base: &str) -> Result<Value> {
    let a = http
        .send("GET", &format!("{base}/health"), &[], None)
        .await?;
    Ok(serde_json::from_slice(&a.body)?)
}

/// Whether the node's `/health` lists replica `id` as available.
fn available(h: &Value, id: u64) -> bool {
    h["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|x| x["id"] == id))
        .is_some_and(|x| x["available"] == true)
}

fn url_of(h: &Value, id: u64) -> Option<String> {
    h["upstreams"].as_array()?.iter().find(|u| u["id"] == id)?["url"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_replica_is_restarted_and_serves_again() -> Result<()> {
    let (node, _cfg) = Proc::node("", &["--replicas", "2", "--time-scale", "0"])?;
    let http = Http::default();
    let base = node.url.clone();
    let before = health(&http, &base).await?;
    let old = url_of(&before, 0).context("no URL for replica 0")?;
    let a = http
        .send(
            "POST",
            &format!("{old}/admin/fault"),
            &[],
            Some(r#"{"kind":"crash"}"#.into()),
        )
        .await;
    // The engine exits at once; the answer may or may not make it out.
    let _ = a;
    let body = serde_json::json!({
        "model": "llama-3.1-8b-instruct",
        "messages": [{"role": "user", "content": "still there?"}],
        "max_tokens": 3,
    })
    .to_string();
    let start = Instant::now();
    let restarted = loop {
        let a = http
            .send(
                "POST",
                &format!("{base}/v1/chat/completions"),
                &[],
                Some(body.clone()),
            )
            .await?;
        assert_eq!(a.status, 200, "a request failed while a replica was down");
        let h = health(&http, &base).await?;
        let now = url_of(&h, 0);
        let up = available(&h, 0);
        if up && now.as_deref().is_some_and(|u| u != old) {
            break now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica 0 was not restarted: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new = restarted.context("no URL")?;
    let a = http
        .send("GET", &format!("{new}/health"), &[], None)
        .await?;
    assert_eq!(a.status, 200);
    assert!(node.stop()?, "node did not exit cleanly");
    Ok(())
}

/// A real engine from a command template (here the simulated engine's own binary, as
/// an operator would put `vllm serve …`): launched on a free port, ready once `/health`
/// answers, serving, and restarted through the same template when it crashes. A
/// template that cannot start fails the node with a message naming the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_from_a_command_template_is_launched_and_restarted() -> Result<()> {
    let bin = sluice_tests::sluice_bin()?;
    let config = format!(
        "[replicas]\ncount = 1\ncommand = \"{} replica sim --port {{port}} --model {{model}} --time-scale 0\"\n",
        bin.display()
    );
    let (node, _cfg) = Proc::node(&config, &[])?;
    let http = Http::default();
    let base = node.url.clone();
    let old = url_of(&health(&http, &base).await?, 0).context("no URL for replica 0")?;
    let body = serde_json::json!({
        "model": "llama-3.1-8b-instruct",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 3,
    })
    .to_string();
    let url = format!("{base}/v1/chat/completions");
    assert_eq!(
        http.send("POST", &url, &[], Some(body.clone()))
            .await?
            .status,
        200
    );
    let _ = http
        .send(
            "POST",
            &format!("{old}/admin/fault"),
            &[],
            Some(r#"{"kind":"crash"}"#.into()),
        )
        .await;
    let start = Instant::now();
    loop {
        let h = health(&http, &base).await?;
        let up = available(&h, 0);
        if up && url_of(&h, 0).is_some_and(|u| u != old) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not restarted: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http.send("POST", &url, &[], Some(body)).await?.status, 200);
    assert!(node.stop()?, "node did not exit cleanly");

    let mut bad = tempfile::NamedTempFile::new()?;
    std::io::Write::write_all(
        &mut bad,
        b"[replicas]\ncount = 1\ncommand = \"/nonexistent/engine --port {port}\"\n",
    )?;
    let out = std::process::Command::new(&bin)
        .args(["node", "start", "--http", "127.0.0.1:0", "--config"])
        .arg(bad.path())
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/engine"), "{err}");
    Ok(())
}

/// A replica hung through the engine's admin switch (it still answers `/health`) is
/// ejected within 15 s by the prober — work queued while its token counter stands
/// still — and restarted; requests sent after the ejection all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_is_ejected_and_restarted() -> Result<()> {
    let (node, _cfg) = Proc::node(
        "[router]\nrequest_timeout_s = 30\n",
        &["--replicas", "2", "--time-scale", "0"],
    )?;
    let http = Http::default();
    let base = node.url.clone();
    let old = url_of(&health(&http, &base).await?, 0).context("no URL for replica 0")?;
    let a = http
        .send(
            "POST",
            &format!("{old}/admin/fault"),
            &[],
            Some(r#"{"kind":"hang"}"#.into()),
        )
        .await?;
    assert_eq!(a.status, 200);
    let hung_at = Instant::now();
    // Keep traffic flowing; some of it queues on the hung replica.
    let load = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for k in 0..200u32 {
                let (http, base) = (http.clone(), base.clone());
                handles.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let body = serde_json::json!({
                        "model": "llama-3.1-8b-instruct",
                        "messages": [{"role": "user", "content": format!("q{k}")}],
                        "max_tokens": 3,
                    })
                    .to_string();
                    let r = http
                        .send(
                            "POST",
                            &format!("{base}/v1/chat/completions"),
                            &[("x-session-id", &format!("s{k}"))],
                            Some(body),
                        )
                        .await;
                    (sent, r.map(|a| a.status).unwrap_or(0))
                }));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut out = Vec::new();
            for h in handles {
                if let Ok(x) = h.await {
                    out.push(x);
                }
            }
            out
        })
    };
    // Ejected: replica 0 out of service while its /health still answers 200.
    let ejected_at = loop {
        let h = health(&http, &base).await?;
        let up = available(&h, 0);
        if !up {
            break Instant::now();
        }
        assert!(
            hung_at.elapsed() < Duration::from_secs(15),
            "not ejected within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Restarted: a new engine at a new address, back in service.
    loop {
        let h = health(&http, &base).await?;
        let back = available(&h, 0) && url_of(&h, 0).is_some_and(|u| u != old);
        if back {
            break;
        }
        assert!(hung_at.elapsed() < Duration::from_secs(40), "not restarted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "hang: ejected after {:?}, back in service (restarted) after {:?}",
        ejected_at.duration_since(hung_at),
        hung_at.elapsed()
    );
    let results = load.await?;
    let after: Vec<_> = results
        .iter()
        .filter(|(sent, _)| *sent > ejected_at)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|(_, status)| *status == 200),
        "requests sent after the ejection failed: {:?}",
        after.iter().filter(|(_, s)| *s != 200).count()
    );
    assert!(node.stop()?, "node did not exit cleanly");
    Ok(())
}

/// Keeps `n` long generations in flight against `base` (each one that ends is replaced
/// at once) until aborted; every other one streams, so that the router judges the
/// replica from its streams as well.
fn saturate(http: &Http, base: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|k| {
            let (http, base) = (http.clone(), base.to_owned());
            tokio::spawn(async move {
                for round in 0.. {
                    let body = serde_json::json!({
                        "model": "llama-3.1-8b-instruct",
                        "messages": [{"role": "user", "content": format!("long job {k}.{round}")}],
                        "max_tokens": 1500,
                        "ignore_eos": true,
                        "stream": k % 2 == 1,
                    })
                    .to_string();
                    let _ = http
                        .send(
                            "POST",
                            &format!("{base}/v1/chat/completions"),
                            &[],
                            Some(body),
                        )
                        .await;
                }
            })
        })
        .collect()
}

/// When replica 0 first went out of service within `window`, if it did.
async fn ejected_within(http: &Http, base: &str, window: Duration) -> Result<Option<Duration>> {
    let start = Instant::now();
    while start.elapsed() < window {
        let h = health(http, base).await?;
        let up = available(&h, 0);
        if !up {
            return Ok(Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

/// How long the prioritized arm runs: several minutes by default, so that probes meet
/// the queue in every state a long overload goes through (`SLUICE_OVERLOAD_S` to change).
fn overload_window() -> Duration {
    let s = std::env::var("SLUICE_OVERLOAD_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(s)
}

/// At 1.5× the replica's batch capacity (384 long generations kept in flight against
/// 256 sequence slots, so completions come in waves with long gaps and the prober
/// probes), prioritized probes are served ahead of the queue and the busy replica is
/// never ejected over several minutes; with probe priority turned off the same load
/// gets it falsely ejected — the mechanism is what keeps a busy replica in service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_priority_prevents_false_ejections_under_overload() -> Result<()> {
    let fast = "idle_window_ms = 2000\nprobe_timeout_ms = 2000\n";
    let http = Http::default();
    for prioritized in [true, false] {
        let config = format!("[prober]\nprioritized = {prioritized}\n{fast}");
        let (node, _cfg) = Proc::node(&config, &["--replicas", "1", "--time-scale", "1"])?;
        let base = node.url.clone();
        let load = saturate(&http, &base, 384);
        let window = if prioritized {
            overload_window()
        } else {
            Duration::from_secs(60)
        };
        let ejected = ejected_within(&http, &base, window).await?;
        for h in &load {
            h.abort();
        }
        let probes = http.metric(&base, "sluice_probes_total").await?;
        let count = |o: &str| {
            probes
                .iter()
                .filter(|(l, _)| l.contains(o))
                .fold(0.0, |a, (_, v)| a + v)
        };
        let (ok, failed) = (count("\"ok\""), count("\"failed\""));
        let stalls: f64 = http
            .metric(&base, "sluice_stream_stalls_total")
            .await?
            .iter()
            .fold(0.0, |a, (_, v)| a + v);
        eprintln!(
            "prioritized={prioritized}: ejected after {ejected:?} (watched {window:?}); probes ok {ok}, failed {failed}; stream stalls {stalls}"
        );
        if prioritized {
            assert_eq!(
                ejected, None,
                "a busy replica was ejected although probes were prioritized"
            );
            assert!(ok > 0.0, "the overload never made the prober probe");
            assert_eq!(
                failed, 0.0,
                "prioritized probes failed on a healthy replica"
            );
            assert_eq!(
                stalls, 0.0,
                "a busy replica's streams were taken for a hang"
            );
        } else {
            assert!(
                ejected.is_some(),
                "without probe priority the overloaded replica was not ejected"
            );
        }
        drop(node);
    }
    Ok(())
}
