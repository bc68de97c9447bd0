//! Three nodes from the CLI, as separate processes on loopback: init, join with the
//! token, all three voters; a request through each node reaches replicas on the others;
//! `kill -9` of the leader gives a new leader within 3 s while requests keep being
//! served; all three killed and restarted keep every committed entry; a removed node
//! leaves the voters and the registry; a wrong token and another cluster's certificate
//! are refused; a partitioned minority cannot commit.

use anyhow::{Context, Result};
use sluice_tests::cluster::{sluice, status, wait_router_sees, wait_status, Node};
use sluice_tests::{Http, Proc};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const MODEL: &str = "llama-3.1-8b-instruct";

/// A streaming chat request: status, replica, and whether the stream ended with [DONE].
async fn chat_stream(http: &Http, base: &str, session: &str) -> Result<(u16, Option<u64>, bool)> {
    use http_body_util::BodyExt;
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("stream for {session}")}],
        "max_tokens": 8,
        "ignore_eos": true,
        "stream": true,
    })
    .to_string();
    let (status, replica, incoming) = http
        .start(
            "POST",
            &format!("{base}/v1/chat/completions"),
            &[("x-session-id", session)],
            Some(body),
        )
        .await?;
    let all = incoming.collect().await?.to_bytes();
    Ok((status, replica, all.ends_with(b"data: [DONE]\n\n")))
}

async fn chat(http: &Http, base: &str, session: &str) -> Result<(u16, Option<u64>)> {
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("hello from {session}")}],
        "max_tokens": 4,
    })
    .to_string();
    let a = http
        .send(
            "POST",
            &format!("{base}/v1/chat/completions"),
            &[("x-session-id", session)],
            Some(body),
        )
        .await?;
    Ok((a.status, a.replica))
}

/// A Responses API request and an embeddings request of one session: each one's
/// status, replica and whether its body is the answer it should be.
async fn responses_and_embeddings(
    http: &Http,
    base: &str,
    session: &str,
) -> Result<[(u16, Option<u64>, bool); 2]> {
    let calls = [
        (
            "/v1/responses",
            serde_json::json!({"model": MODEL, "input": format!("hi from {session}"),
                "max_output_tokens": 3, "ignore_eos": true}),
            "output_tokens",
        ),
        (
            "/v1/embeddings",
            serde_json::json!({"model": MODEL, "input": [format!("embed {session}"), "and this"]}),
            "embedding",
        ),
    ];
    let mut out = [(0, None, false); 2];
    for (slot, (path, body, expected)) in out.iter_mut().zip(calls) {
        let a = http
            .send(
                "POST",
                &format!("{base}{path}"),
                &[("x-session-id", session)],
                Some(body.to_string()),
            )
            .await?;
        let text = String::from_utf8_lossy(&a.body);
        *slot = (a.status, a.replica, text.contains(expected));
    }
    Ok(out)
}

fn node_of(replica: u64) -> u64 {
    replica >> 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_route_fail_over_and_restart() -> Result<()> {
    let nodes = [Node::new("r1")?, Node::new("r2")?, Node::new("r3")?];
    let d1 = nodes[0].dir.path().to_string_lossy().into_owned();
    let out = sluice(&["cluster", "init", "--data-dir", &d1])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = std::fs::read_to_string(nodes[0].dir.path().join("tls/join-token"))?
        .trim()
        .to_owned();

    let mut procs = vec![nodes[0].start(None)?];

    // A wrong token is refused with a clear error, and no identity is written.
    // The secret's first hex digit changed (to a different digit, whatever it was;
    // the CA fingerprint after it stays right).
    let mut bad = token.clone();
    let flip = if bad[8..9] == *"0" { "1" } else { "0" };
    bad.replace_range(8..9, flip);
    assert_ne!(bad, token);
    let stranger = Node::new("r9")?;
    let sd = stranger.dir.path().to_string_lossy().into_owned();
    let out = sluice(&[
        "node",
        "start",
        "--data-dir",
        &sd,
        "--listen",
        &stranger.quic,
        "--http",
        "127.0.0.1:0",
        "--replicas",
        "1",
        "--time-scale",
        "0",
        "--join",
        &nodes[0].quic,
        "--token",
        &bad,
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong token"), "{err}");
    assert!(!stranger.dir.path().join("tls/node.pem").exists());

    procs.push(nodes[1].start(Some((&nodes[0].quic, &token)))?);
    procs.push(nodes[2].start(Some((&nodes[0].quic, &token)))?);
    let all: Vec<&Node> = nodes.iter().collect();
    let s = wait_status(&all, Duration::from_secs(30), |s| {
        let roles: Vec<&str> = s["nodes"]
            .as_array()
            .map(|n| n.iter().filter_map(|x| x["role"].as_str()).collect())
            .unwrap_or_default();
        roles.len() == 3
            && roles.iter().filter(|r| **r == "leader").count() == 1
            && roles.iter().filter(|r| **r == "voter").count() == 2
            && s["replicas"].as_array().is_some_and(|r| r.len() == 3)
            && s["generation"].as_u64().is_some_and(|g| g >= 1)
    })
    .await?;
    let racks: BTreeSet<&str> = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["rack"].as_str())
        .collect();
    assert_eq!(racks.len(), 3);

    // Through every node, some requests are served by replicas on other nodes.
    let http = Http::default();
    // Every router has the committed fleet.
    for n in &nodes {
        wait_router_sees(&http, &n.base(), &[1, 2, 3], Duration::from_secs(15)).await?;
    }
    for (i, n) in nodes.iter().enumerate() {
        let base = format!("http://127.0.0.1:{}", n.http_port);
        let mut served_by = BTreeSet::new();
        for k in 0..16 {
            let (code, replica) = chat(&http, &base, &format!("n{i}-s{k}")).await?;
            assert_eq!(code, 200);
            served_by.insert(node_of(replica.context("no replica header")?));
        }
        let me = (i + 1) as u64;
        assert!(
            served_by.iter().any(|&x| x != me),
            "node {me} only used its own replica: {served_by:?}"
        );
        // Streams from replicas on other nodes come back whole.
        let mut remote_streams = 0;
        for k in 0..12 {
            let (code, replica, done) = chat_stream(&http, &base, &format!("n{i}-t{k}")).await?;
            assert_eq!(code, 200);
            assert!(done, "a stream through node {me} did not end with [DONE]");
            if node_of(replica.context("no replica header")?) != me {
                remote_streams += 1;
            }
        }
        assert!(
            remote_streams > 0,
            "no stream through node {me} was served remotely"
        );
        // The Responses API and embeddings are forwarded like chat.
        let mut remote = [0; 2];
        for k in 0..12 {
            let answers = responses_and_embeddings(&http, &base, &format!("n{i}-r{k}")).await?;
            for (count, (code, replica, whole)) in remote.iter_mut().zip(answers) {
                assert!(code == 200 && whole, "through node {me}: HTTP {code}");
                if node_of(replica.context("no replica header")?) != me {
                    *count += 1;
                }
            }
        }
        assert!(
            remote.iter().all(|&n| n > 0),
            "responses and embeddings through node {me} served remotely: {remote:?}"
        );
    }

    // kill -9 the leader: a new leader within 3 s, and requests keep being served.
    let leader = s["leader"].as_u64().context("no leader")?;
    let generation = s["generation"].as_u64().unwrap_or(0);
    let li = (leader - 1) as usize;
    let killed_at = Instant::now();
    procs[li].child.kill()?;
    let others: Vec<&Node> = (0..3).filter(|&j| j != li).map(|j| &nodes[j]).collect();
    let after = wait_status(&others, Duration::from_secs(10), |s| {
        s["leader"].as_u64().is_some_and(|l| l != leader)
    })
    .await?;
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(3),
        "new leader after {failover:?}"
    );
    for (k, n) in others.iter().enumerate() {
        let base = format!("http://127.0.0.1:{}", n.http_port);
        for j in 0..6 {
            let (code, _) = chat(&http, &base, &format!("after-{k}-{j}")).await?;
            assert_eq!(code, 200, "a request failed after the leader died");
        }
    }
    let gen_after = after["generation"].as_u64().unwrap_or(0);
    assert!(gen_after >= generation);
    // The new leader takes the dead node's replica out of service in the registry (its
    // liveness mark), and moves its slices: routers stop finding it by timing out.
    let dead = |s: &serde_json::Value, health: &str| {
        s["replicas"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x["node"].as_u64() == Some(leader) && x["health"] == health)
        })
    };
    wait_status(&others, Duration::from_secs(15), |s| dead(s, "unreachable")).await?;
    let out_after = killed_at.elapsed();
    assert!(
        out_after < Duration::from_secs(10),
        "the dead node's replica was marked after {out_after:?}"
    );
    wait_status(&others, Duration::from_secs(15), |s| {
        s["slices"].as_array().is_some_and(|sl| {
            !sl.is_empty()
                && sl.iter().all(|x| {
                    x["subset"].as_array().is_some_and(|sub| {
                        sub.iter().all(|r| r.as_u64().map(node_of) != Some(leader))
                    })
                })
        })
    })
    .await
    .context("the dead node's slices were not moved")?;

    // All three killed and restarted: every committed entry is still there.
    for p in procs.iter_mut() {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    drop(procs);
    let procs: Vec<Proc> = nodes.iter().map(|n| n.start(None)).collect::<Result<_>>()?;
    // Back, the node's replica serves again: no mark outlives the silence.
    let back = wait_status(&all, Duration::from_secs(30), |s| {
        s["leader"].as_u64().is_some()
            && s["nodes"].as_array().is_some_and(|n| n.len() == 3)
            && s["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == 3 && r.iter().all(|x| x["health"] == "healthy"))
    })
    .await?;
    assert!(back["generation"].as_u64().unwrap_or(0) >= gen_after);
    let base = format!("http://127.0.0.1:{}", nodes[1].http_port);
    assert_eq!(chat(&http, &base, "restarted").await?.0, 200);

    // Node 3 is removed: it leaves the voters and the registry, and requests through
    // the others no longer go to its replica.
    let out = sluice(&[
        "cluster",
        "remove",
        "3",
        "--data-dir",
        &d1,
        "--node",
        &nodes[0].quic,
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shrunk = wait_status(&all[..2], Duration::from_secs(15), |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 2)
            && s["replicas"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await?;
    assert!(shrunk["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|n| n["id"] != 3));
    wait_router_sees(&http, &base, &[1, 2], Duration::from_secs(15)).await?;
    for k in 0..8 {
        let (code, replica) = chat(&http, &base, &format!("after-remove-{k}")).await?;
        assert_eq!(code, 200);
        assert_ne!(node_of(replica.context("no replica header")?), 3);
    }

    // Another cluster's credentials are refused.
    let other = tempfile::tempdir()?;
    let od = other.path().to_string_lossy().into_owned();
    assert!(sluice(&["cluster", "init", "--data-dir", &od])?
        .status
        .success());
    let e = status(other.path(), Some(&nodes[1].quic))
        .err()
        .context("a foreign CA was accepted")?;
    assert!(e.to_string().contains("status failed"), "{e}");
    drop(procs);
    Ok(())
}

fn cli(dir: &Path, args: &[&str], node: &str) -> Result<std::process::Output> {
    let d = dir.to_string_lossy().into_owned();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--data-dir", &d, "--node", node]);
    sluice(&all)
}

/// A partition that leaves the leader alone: the minority cannot commit, the majority
/// elects a leader and commits, and after healing the old leader catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_partition_cannot_commit_and_the_majority_can() -> Result<()> {
    let nodes = [Node::new("r1")?, Node::new("r2")?, Node::new("r3")?];
    let d1 = nodes[0].dir.path().to_string_lossy().into_owned();
    assert!(sluice(&["cluster", "init", "--data-dir", &d1])?
        .status
        .success());
    let token = std::fs::read_to_string(nodes[0].dir.path().join("tls/join-token"))?
        .trim()
        .to_owned();
    let _p1 = nodes[0].start(None)?;
    let _p2 = nodes[1].start(Some((&nodes[0].quic, &token)))?;
    let _p3 = nodes[2].start(Some((&nodes[0].quic, &token)))?;
    let all: Vec<&Node> = nodes.iter().collect();
    let s = wait_status(&all, Duration::from_secs(30), |s| {
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3 && n.iter().filter(|x| x["role"] == "voter").count() == 2)
    })
    .await?;
    let leader = s["leader"].as_u64().context("no leader")? as usize;
    let (minority, majority): (Vec<usize>, Vec<usize>) = (0..3).partition(|&i| i + 1 == leader);
    // Cut the leader off, on every side.
    let ids = |v: &[usize]| {
        v.iter()
            .map(|i| (i + 1).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    for (side, other) in [(&minority, &majority), (&majority, &minority)] {
        for &i in side {
            let out = cli(
                nodes[i].dir.path(),
                &["cluster", "isolate", "--from", &ids(other)],
                &nodes[i].quic,
            )?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The old leader alone cannot commit.
    let m = &nodes[minority[0]];
    let out = cli(m.dir.path(), &["tenant", "create", "lonely"], &m.quic)?;
    assert!(!out.status.success(), "the minority committed a write");
    // The majority elects a leader and commits.
    let maj: Vec<&Node> = majority.iter().map(|&i| &nodes[i]).collect();
    wait_status(&maj, Duration::from_secs(10), |s| {
        s["leader"].as_u64().is_some_and(|l| l as usize != leader)
    })
    .await?;
    let w = maj[0];
    let out = cli(w.dir.path(), &["tenant", "create", "acme"], &w.quic)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Healed, the old leader catches up with the majority's write and never applied its own.
    for n in &nodes {
        let out = cli(n.dir.path(), &["cluster", "isolate"], &n.quic)?;
        assert!(out.status.success());
    }
    let has = |s: &serde_json::Value, name: &str| {
        s["tenants"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == name))
    };
    let healed = wait_status(&[m], Duration::from_secs(15), |s| has(s, "acme")).await?;
    assert!(!has(&healed, "lonely"), "{healed}");
    Ok(())
}

/// With load sharing off (`--load-share-ms 0`) the leader hears a node only by its load
/// reports, every 5 s: live nodes stay in service past the leader's grace and the
/// silence window (three reports), and a node killed with `kill -9` has its replica
/// marked unreachable once its reports have been missing for the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_load_sharing_the_leader_hears_nodes_by_their_reports_alone() -> Result<()> {
    /// The leader's silence window without gossip: three report periods.
    const WINDOW: Duration = Duration::from_secs(15);
    /// How often a router reports its load to the leader.
    const REPORT: Duration = Duration::from_secs(5);
    let nodes = [Node::new("r1")?, Node::new("r2")?, Node::new("r3")?];
    let token = sluice_tests::cluster::init(&nodes[0])?;
    let quiet = [
        "--replicas",
        "1",
        "--time-scale",
        "0",
        "--load-share-ms",
        "0",
    ];
    let mut procs = vec![nodes[0].start_with(None, &quiet)?];
    for n in &nodes[1..] {
        procs.push(n.start_with(Some((&nodes[0].quic, &token)), &quiet)?);
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let health = |s: &serde_json::Value| -> Vec<(u64, String)> {
        s["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["node"].as_u64()?, r["health"].as_str()?.to_owned())))
            .collect()
    };
    let s = wait_status(&all, Duration::from_secs(30), |s| {
        let h = health(s);
        h.len() == 3 && h.iter().all(|(_, x)| x == "healthy") && s["leader"].is_u64()
    })
    .await?;
    let leader = s["leader"].as_u64().context("no leader")?;
    // Past the grace and the window, with every node alive and reporting: no marks.
    let watch = Instant::now();
    while watch.elapsed() < WINDOW + Duration::from_secs(5) {
        for n in &all {
            if let Ok(s) = status(n.dir.path(), Some(&n.quic)) {
                let h = health(&s);
                assert!(
                    h.iter().all(|(_, x)| x == "healthy"),
                    "a live node marked: {h:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // kill -9 a node that does not lead.
    let victim = (1..=3).find(|&id| id != leader).context("no follower")?;
    procs[(victim - 1) as usize].child.kill()?;
    let killed = Instant::now();
    let others: Vec<&Node> = (1..=3u64)
        .filter(|&id| id != victim)
        .map(|id| &nodes[(id - 1) as usize])
        .collect();
    wait_status(&others, WINDOW * 2 + Duration::from_secs(10), |s| {
        health(s)
            .iter()
            .any(|(node, x)| *node == victim && x == "unreachable")
    })
    .await?;
    // Its last report came at most a period before the kill.
    let after = killed.elapsed();
    assert!(
        after >= WINDOW - REPORT,
        "marked {after:?} after the kill, sooner than a window of missing reports"
    );
    Ok(())
}
