//! `sluice chaos drill`: a local cluster of real node processes, load through their
//! front doors, a scenario's faults on a schedule, and the invariants checked against
//! the ledger of every request and what every node reports afterwards.
//!
//! Schedule: load starts at once; the fault strikes at a third of the duration and is
//! healed (killed nodes restarted, partitions lifted, slowness removed) at two thirds;
//! the last third shows the recovery. Then the drill waits for every node to hold the
//! same committed state, including a write made before the fault.

pub mod cluster;
pub mod ledger;
pub mod load;
mod plot;

use anyhow::{bail, Context, Result};
use clap::Args;
use cluster::Cluster;
use ledger::{summarize, Summary};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SCENARIOS: &[&str] = &[
    "rack-loss",
    "silent-hang",
    "leader-kill",
    "node-crash-restart",
    "partition",
    "slow-replica",
    "rolling-restart",
    "all",
];

#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// rack-loss, silent-hang, leader-kill, node-crash-restart, partition,
    /// slow-replica, rolling-restart, or all (each of them in a seeded random order).
    pub scenario: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value_t = 3)]
    pub racks: usize,
    #[arg(long, default_value_t = 1)]
    pub gpus_per_node: usize,
    /// Seconds of load per scenario.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Requests per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Writes `timeline.svg` (requests/s, errors, latency, healthy replicas).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// One second of the drill, for the timeline.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Second {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub healthy_replicas: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DrillReport {
    #[serde(flatten)]
    pub summary: Summary,
    /// Seconds from the start to the fault and to its healing.
    pub fault_at_s: f64,
    pub healed_at_s: f64,
    /// Every node holds the same membership, tenants and reservations afterwards,
    /// including the write made before the fault.
    pub state_agrees: bool,
    /// Seconds from the fault until the registry had fewer replicas in service (the
    /// fault detected and the replica ejected, or restarted), and until all were again
    /// (capacity restored), sampled every 0.5 s; `None` when that did not happen.
    pub replica_down_s: Option<f64>,
    pub replica_back_s: Option<f64>,
    pub faults: Vec<String>,
    pub timeline: Vec<Second>,
}

pub async fn cli_main(args: DrillArgs) -> Result<()> {
    if !SCENARIOS.contains(&args.scenario.as_str()) {
        bail!(
            "unknown scenario '{}': choose from {}",
            args.scenario,
            SCENARIOS.join(", ")
        );
    }
    if args.nodes < 3 || args.racks < 1 || args.gpus_per_node < 1 {
        bail!("a drill needs --nodes ≥ 3, --racks ≥ 1 and --gpus-per-node ≥ 1");
    }
    if !(args.duration.is_finite() && args.duration >= 9.0 && args.rate > 0.0) {
        bail!("--duration must be at least 9 s and --rate positive");
    }
    let exe = std::env::current_exe().context("cannot find the sluice executable")?;
    let report = run(&exe, &args).await?;
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir)?;
        plot::timeline(&dir.join("timeline.svg"), &report)?;
    }
    let s = &report.summary;
    if s.lost > 0 || !report.state_agrees {
        bail!(
            "invariants broken: {} lost request(s){}",
            s.lost,
            if report.state_agrees {
                ""
            } else {
                ", nodes disagree on committed state"
            }
        );
    }
    Ok(())
}

fn print(r: &DrillReport) {
    let s = &r.summary;
    println!(
        "{:<20} {:>6} {:>9} {:>8} {:>5} {:>12} {:>10} {:>6}",
        "scenario", "sent", "succeeded", "explicit", "lost", "ok after", "recovery", "state"
    );
    println!(
        "{:<20} {:>6} {:>9} {:>8} {:>5} {:>11.2}% {:>10} {:>6}",
        s.scenario,
        s.sent,
        s.succeeded,
        s.failed_explicit,
        s.lost,
        s.success_rate_after_fault * 100.0,
        s.recovery_s.map_or("-".to_owned(), |x| format!("{x:.1} s")),
        if r.state_agrees { "same" } else { "DIFFERS" }
    );
    if let Some(d) = r.replica_down_s {
        println!(
            "  a replica out of the registry's healthy set {d:.1} s after the fault; all back after {}",
            r.replica_back_s.map_or("-".to_owned(), |b| format!("{b:.1} s"))
        );
    }
    for f in &r.faults {
        println!("  {f}");
    }
    for l in &s.lost_examples {
        println!("  lost: {l}");
    }
    for l in &s.explicit_examples {
        println!("  failed: {l}");
    }
}

/// What a fault did, so that healing can undo it.
enum Undo {
    Restart(Vec<usize>),
    Heal(Vec<usize>),
    Unfault(String),
    Nothing,
}

pub async fn run(exe: &std::path::Path, args: &DrillArgs) -> Result<DrillReport> {
    let mut c = Cluster::start(exe, args.nodes, args.racks, args.gpus_per_node).await?;
    // A committed write before any fault: it must be on every node at the end. It is
    // the tenant the load runs as (so the drill also covers key checks on every node).
    let marker = format!("drill-{}", args.seed);
    let key = create_tenant(exe, &c, &marker).await?;
    // Every node has applied it before the load starts.
    c.wait(Duration::from_secs(10), |s| {
        s["tenants"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == marker.as_str()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let doors = load::Doors::new(c.front_doors());
    let epoch = Instant::now();
    let load = load::start(
        doors.clone(),
        args.rate,
        Duration::from_secs(30),
        epoch,
        key,
    );
    let health = Arc::new(std::sync::Mutex::new(Vec::<(u64, usize)>::new()));
    let (stop_health, health_task) = watch_health(&c, health.clone(), epoch);

    let total = Duration::from_secs_f64(args.duration);
    let scenarios: Vec<&str> = if args.scenario == "all" {
        shuffled(&SCENARIOS[..SCENARIOS.len() - 1], args.seed)
    } else {
        vec![args.scenario.as_str()]
    };
    let slot = total / scenarios.len() as u32;
    let mut faults = Vec::new();
    let (mut fault_at, mut healed_at) = (None, Duration::ZERO);
    for (k, sc) in scenarios.iter().enumerate() {
        let base = slot * k as u32;
        sleep_until(epoch, base + slot / 3).await;
        let (undo, struck) =
            strike(sc, &mut c, &doors, args.seed + k as u64, &mut faults, epoch).await?;
        fault_at.get_or_insert(struck);
        sleep_until(epoch, base + slot * 2 / 3).await;
        heal(undo, &mut c, &doors, &mut faults).await?;
        healed_at = epoch.elapsed();
    }
    sleep_until(epoch, total).await;
    let records = load.finish().await;
    // A hung replica is ejected and restarted on the prober's schedule, possibly after
    // the load ended: wait to see it go (up to 30 s after the fault)...
    let full = args.nodes * args.gpus_per_node;
    if scenarios.contains(&"silent-hang") {
        let from = fault_at.map_or(0, |d| d.as_millis() as u64);
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < until
            && !health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|(at, n)| *at >= from && *n < full)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // ...and capacity restored: every replica healthy in the registry again.
    let _ = c
        .wait(Duration::from_secs(45), |s| {
            s["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == full && r.iter().all(|x| x["health"] == "healthy"))
        })
        .await;
    // One more health sample of the restored fleet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_health.send(true);
    let _ = health_task.await;

    let state_agrees = agree(&c, &marker).await;
    let fault_ms = fault_at.map(|d| d.as_millis() as u64);
    let summary = summarize(&args.scenario, &records, fault_ms);
    let health = health.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let from = fault_ms.unwrap_or(0);
    let down = health
        .iter()
        .find(|(at, n)| *at >= from && *n < full)
        .map(|h| h.0);
    let back = down.and_then(|d| {
        health
            .iter()
            .find(|(at, n)| *at > d && *n >= full)
            .map(|h| h.0)
    });
    let since = |at: Option<u64>| at.map(|a| a.saturating_sub(from) as f64 / 1e3);
    Ok(DrillReport {
        replica_down_s: since(down),
        replica_back_s: since(back),
        summary,
        fault_at_s: fault_at.unwrap_or_default().as_secs_f64(),
        healed_at_s: healed_at.as_secs_f64(),
        state_agrees,
        faults,
        timeline: plot::seconds(&records, &health),
    })
}

async fn sleep_until(epoch: Instant, at: Duration) {
    let now = epoch.elapsed();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// A deterministic shuffle (SplitMix64) of the scenarios for `all`.
fn shuffled<'a>(items: &[&'a str], seed: u64) -> Vec<&'a str> {
    let mut v = items.to_vec();
    let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    for i in (1..v.len()).rev() {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        v.swap(i, (z % (i as u64 + 1)) as usize);
    }
    v
}

/// Takes node `i`'s front door out of the load (the balancer's part), waiting for the
/// requests already sent through it.
async fn take_out(doors: &load::Doors, i: usize) {
    doors.set_open(i, false);
    doors.drain(i, Duration::from_secs(10)).await;
}

async fn strike(
    scenario: &str,
    c: &mut Cluster,
    doors: &load::Doors,
    seed: u64,
    log: &mut Vec<String>,
    epoch: Instant,
) -> Result<(Undo, Duration)> {
    // When the fault itself strikes (after the balancer took the entry node out).
    let mut at = epoch.elapsed();
    let n = c.nodes.len();
    let leader = c.leader().await;
    // A node that is not the leader, chosen by the seed.
    let follower = (0..n)
        .map(|k| (k + seed as usize) % n)
        .find(|&i| Some(i) != leader && c.is_up(i))
        .unwrap_or(n - 1);
    let undo = match scenario {
        "leader-kill" => {
            let l = leader.context("no leader to kill")?;
            take_out(doors, l).await;
            at = epoch.elapsed();
            c.kill(l).await;
            log.push(format!("kill -9 of the leader, node {l}"));
            Undo::Restart(vec![l])
        }
        "node-crash-restart" => {
            take_out(doors, follower).await;
            at = epoch.elapsed();
            c.kill(follower).await;
            log.push(format!("kill -9 of node {follower}"));
            Undo::Restart(vec![follower])
        }
        "rack-loss" => {
            let rack = c.nodes[follower].rack.clone();
            let victims: Vec<usize> = (0..n).filter(|&i| c.nodes[i].rack == rack).collect();
            for &v in &victims {
                take_out(doors, v).await;
            }
            at = epoch.elapsed();
            for &v in &victims {
                c.kill(v).await;
            }
            log.push(format!(
                "{rack} lost: kill -9 of nodes {victims:?} and their replicas"
            ));
            Undo::Restart(victims)
        }
        "partition" => {
            let s = c.status().await.context("no status")?;
            let ids = c.ids(&s);
            let me = ids[follower].context("unknown node id")?;
            let others: Vec<u64> = ids.iter().flatten().copied().filter(|&x| x != me).collect();
            take_out(doors, follower).await;
            at = epoch.elapsed();
            c.isolate(follower, &others).await?;
            for (i, id) in ids.iter().enumerate() {
                if i != follower && id.is_some() {
                    c.isolate(i, &[me]).await?;
                }
            }
            log.push(format!(
                "node {follower} cut off from the others (a minority)"
            ));
            Undo::Heal((0..n).collect())
        }
        "silent-hang" | "slow-replica" => {
            let s = c.status().await.context("no status")?;
            let endpoint = s["replicas"]
                .as_array()
                .and_then(|r| r.get(seed as usize % r.len().max(1)))
                .and_then(|r| r["endpoint"].as_str())
                .context("no replica to fault")?
                .to_owned();
            let fault = if scenario == "silent-hang" {
                r#"{"kind":"hang"}"#
            } else {
                r#"{"kind":"slow","value":10}"#
            };
            at = epoch.elapsed();
            admin_fault(&endpoint, fault).await?;
            log.push(format!("replica at {endpoint}: {fault}"));
            if scenario == "silent-hang" {
                // The prober ejects it and its supervisor restarts it: nothing to undo.
                Undo::Nothing
            } else {
                Undo::Unfault(endpoint)
            }
        }
        "rolling-restart" => {
            for i in 0..n {
                take_out(doors, i).await;
                c.stop(i).await;
                c.restart(i).await?;
                doors.set_open(i, true);
                log.push(format!("node {i} restarted (SIGTERM, then started again)"));
                // Let it rejoin before the next one goes.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Undo::Nothing
        }
        other => bail!("unknown scenario {other}"),
    };
    Ok((undo, at))
}

async fn heal(
    undo: Undo,
    c: &mut Cluster,
    doors: &load::Doors,
    log: &mut Vec<String>,
) -> Result<()> {
    match undo {
        Undo::Restart(nodes) => {
            for i in nodes {
                c.restart(i).await?;
                doors.set_open(i, true);
                log.push(format!("node {i} started again"));
            }
        }
        Undo::Heal(nodes) => {
            for i in nodes {
                c.isolate(i, &[]).await?;
                doors.set_open(i, true);
            }
            log.push("partition healed".into());
        }
        Undo::Unfault(endpoint) => {
            // The replica may have been restarted meanwhile (a new endpoint): fine.
            let _ = admin_fault(&endpoint, r#"{"kind":"none"}"#).await;
            log.push(format!("replica at {endpoint} back to normal"));
        }
        Undo::Nothing => {}
    }
    Ok(())
}

async fn admin_fault(endpoint: &str, body: &str) -> Result<()> {
    let http = crate::loadgen::exchange::client(4, Duration::from_secs(2));
    let req = hyper::Request::post(format!("{endpoint}/admin/fault"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), http.request(req))
        .await
        .context("the replica's admin endpoint did not answer")??;
    if !resp.status().is_success() {
        bail!("admin fault refused: {}", resp.status());
    }
    Ok(())
}

/// Creates tenant `name`; its API key.
async fn create_tenant(exe: &std::path::Path, c: &Cluster, name: &str) -> Result<String> {
    let n = &c.nodes[0];
    let out = tokio::process::Command::new(exe)
        .args(["tenant", "create", name, "--data-dir"])
        .arg(&n.dir)
        .args(["--node", &n.quic])
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "cannot write the marker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("sk-sluice-"))
        .map(str::to_owned)
        .context("tenant create printed no key")
}

/// Whether every node (within 30 s) reports the same members, tenants and
/// reservations, the marker among the tenants.
async fn agree(c: &Cluster, marker: &str) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for i in 0..c.nodes.len() {
            if let Some(s) = c.status_of(i).await {
                let mut ids: Vec<u64> = s["nodes"]
                    .as_array()
                    .map(|n| n.iter().filter_map(|x| x["id"].as_u64()).collect())
                    .unwrap_or_default();
                ids.sort_unstable();
                views.push((ids, s["tenants"].clone(), s["reservations"].clone()));
            }
        }
        let has_marker = views.iter().all(|v| {
            v.1.as_array()
                .is_some_and(|t| t.iter().any(|x| x == marker))
        });
        if views.len() == c.nodes.len() && has_marker && views.windows(2).all(|w| w[0] == w[1]) {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Samples, twice a second, the replicas in service by the registry: healthy ones,
/// less any whose endpoint changed since the last sample (it was restarted in between,
/// so it was out of service for part of it even if both samples call it healthy).
fn watch_health(
    c: &Cluster,
    out: Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
    epoch: Instant,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let targets: Vec<(PathBuf, String)> = c
        .nodes
        .iter()
        .map(|n| (n.dir.clone(), n.quic.clone()))
        .collect();
    let exe = std::env::current_exe().ok();
    let task = tokio::spawn(async move {
        let Some(exe) = exe else { return };
        let mut prev: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopped.changed() => return,
            }
            for (dir, quic) in &targets {
                let got = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::process::Command::new(&exe)
                        .args(["cluster", "status", "--json", "--data-dir"])
                        .arg(dir)
                        .args(["--node", quic])
                        .output(),
                )
                .await;
                let Ok(Ok(o)) = got else { continue };
                let Ok(s) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
                    continue;
                };
                let replicas = s["replicas"].as_array().cloned().unwrap_or_default();
                let mut in_service = 0;
                let mut now = std::collections::HashMap::new();
                for r in &replicas {
                    let (Some(id), Some(ep)) = (r["id"].as_u64(), r["endpoint"].as_str()) else {
                        continue;
                    };
                    let moved = prev.get(&id).is_some_and(|old| old != ep);
                    if r["health"] == "healthy" && !moved {
                        in_service += 1;
                    }
                    now.insert(id, ep.to_owned());
                }
                prev = now;
                out.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((epoch.elapsed().as_millis() as u64, in_service));
                break;
            }
        }
    });
    (stop, task)
}
