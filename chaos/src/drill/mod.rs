//! `sluice chaos drill`: a local cluster of real node processes, load through their
//! front doors, a scenario's faults on a schedule, and the invariants checked against
//! the ledger of every request and what every node reports afterwards.
//!
//! Schedule: load starts at once; the fault strikes at a third of the duration and is
//! healed (killed nodes restarted, partitions lifted, slowness removed) at two thirds;
//! the last third shows the recovery. Then the drill waits for every node to hold the
//! same committed state, including a write made before the fault.

pub mod checks;
pub mod cluster;
pub mod ledger;
pub mod load;
pub(crate) mod plot;
pub mod watch;

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
    "poison-request",
    "full-restart",
    "cert-renewal",
    "ca-rotation",
    "all",
];

/// Node certificates' lifetime in drills that include `cert-renewal`: every node renews
/// every few seconds under load, and the node killed there is down past its
/// certificate's end.
const SHORT_CERT_LIFETIME_S: u32 = 10;

/// A router may still send to a replica this long after the registry marked it dead
/// (the mark reaching every node, and the watcher's half-second sampling).
pub const DEAD_ROUTING_BOUND_MS: u64 = 2_000;

/// The poison client's workload key.
const POISON_SESSION: &str = "poison-session";

#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// rack-loss, silent-hang, leader-kill, node-crash-restart, partition,
    /// slow-replica, rolling-restart, poison-request, full-restart, cert-renewal, ca-rotation, or all
    /// (each of them in a seeded random order).
    pub scenario: String,
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value_t = 3)]
    pub racks: usize,
    #[arg(long, default_value_t = 1)]
    pub gpus_per_node: usize,
    /// Models the cluster serves (live drills; 1 or 2): each node splits its GPUs
    /// between them, and the clients ask for each in turn.
    #[arg(long, default_value_t = 1)]
    pub models: usize,
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
    /// Runs the nodes with the poison quarantine off (`[router] quarantine_after = 0`),
    /// as a control for `poison-request`.
    #[arg(long)]
    pub no_quarantine: bool,
    /// Runs the drill in the simulator's virtual time instead of on real processes:
    /// the same policy cores and invariants on a fleet of any size (try `--nodes 250
    /// --racks 10 --gpus-per-node 8`).
    #[arg(long = "virtual")]
    pub virtual_time: bool,
    /// Virtual drills: offered load as a share of the fleet's capacity in model units
    /// (the agentic coding-session workload, scaled).
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
    /// Virtual drills: seconds from an engine's (re)start to its serving (a real GPU
    /// engine loads its weights in tens of seconds).
    #[arg(long, default_value_t = 30.0)]
    pub engine_restart_s: f64,
    /// Virtual drills: without the leader's liveness marks (the replicas of a node silent
    /// for 3 s taken out of service), which live nodes have had since issue 16, item 2:
    /// the drill as it ran before them.
    #[arg(long)]
    pub no_liveness_marks: bool,
    /// Virtual drills: what-if — a restarted node's replicas are routable at once, before
    /// their engines serve. By default a restarted node holds them out of service until
    /// they serve, as a live node does: it waits for the engines it launches before it
    /// rejoins, and registers engines given by URL `Starting` until they answer.
    #[arg(long, conflicts_with = "hold_restarted_replicas")]
    pub no_hold_restarted_replicas: bool,
    /// Virtual drills: the default since it was found to be what live nodes do; kept so
    /// that older documented commands still run. `--mark-silent-nodes` is its old name.
    #[arg(long, alias = "mark-silent-nodes", hide = true)]
    pub hold_restarted_replicas: bool,
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
    /// Seconds from the first fault to each stage of recovery, sampled every 0.5 s.
    pub recovery: checks::Recovery,
    /// Requests routed to a replica after it was marked dead, beyond
    /// [`DEAD_ROUTING_BOUND_MS`] (must be empty).
    pub routed_after_dead: Vec<String>,
    /// What the poison client saw and where the poison did damage.
    pub poison: Option<PoisonReport>,
    /// Streams continued on another replica after theirs failed mid-answer (as last
    /// sampled).
    pub migrations: u64,
    pub faults: Vec<String>,
    pub timeline: Vec<Second>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PoisonReport {
    pub sent: u64,
    /// Answered 422 `request_quarantined`: the fleet recognised it.
    pub refused: u64,
    pub failed_explicit: u64,
    pub lost: u64,
    /// Each try: when it was sent, through which node, how long it took, how it ended.
    pub tries: Vec<String>,
    /// Judged only when the poison is the drill's one fault.
    pub containment: Option<checks::Containment>,
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
    if !(1..=load::DRILL_MODELS.len()).contains(&args.models)
        || args.gpus_per_node < args.models
        || (args.virtual_time && args.models > 1)
    {
        bail!("--models must be 1 or 2 (a live drill), with --gpus-per-node at least as many");
    }
    if !(args.duration.is_finite() && args.duration >= 9.0 && args.rate > 0.0) {
        bail!("--duration must be at least 9 s and --rate positive");
    }
    let report = if args.virtual_time {
        crate::virtual_drill::check(&args)?;
        let a = args.clone();
        tokio::task::spawn_blocking(move || crate::virtual_drill::run(&a))
            .await
            .context("the virtual drill panicked")??
    } else {
        let exe = std::env::current_exe().context("cannot find the sluice executable")?;
        run(&exe, &args).await?
    };
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dir) = &args.plot {
        std::fs::create_dir_all(dir)?;
        plot::timeline(&dir.join("timeline.svg"), &report)?;
    }
    let broken = broken(&report);
    if !broken.is_empty() {
        bail!("invariants broken: {}", broken.join("; "));
    }
    Ok(())
}

/// The drill's invariants that do not hold.
pub fn broken(r: &DrillReport) -> Vec<String> {
    let mut out = Vec::new();
    if r.summary.lost > 0 {
        out.push(format!("{} lost request(s)", r.summary.lost));
    }
    if !r.state_agrees {
        out.push("nodes disagree on committed state".into());
    }
    out.extend(r.routed_after_dead.iter().cloned());
    if let Some(p) = &r.poison {
        if p.lost > 0 {
            out.push(format!("{} poison request(s) lost", p.lost));
        }
        if let Some(c) = p.containment.as_ref().filter(|c| !c.contained) {
            out.push(format!(
                "the poison hurt replicas {:?} outside its slice's subset {:?}",
                c.hurt, c.subset
            ));
        }
    }
    out
}

/// The streams' time to first token, before the fault and after it.
fn ttft_line(s: &Summary) -> Option<String> {
    let one = |t: &ledger::Ttft| {
        format!(
            "p50 / p95 / p99 {:.0} / {:.0} / {:.0} ms over {} streams",
            t.ms.p50, t.ms.p95, t.ms.p99, t.streams
        )
    };
    match (&s.ttft_before, &s.ttft_after) {
        (None, None) => None,
        (Some(b), None) => Some(format!("time to first token: {}", one(b))),
        (b, Some(a)) => Some(format!(
            "time to first token: before the fault {}; after it {}",
            b.as_ref().map_or("-".to_owned(), one),
            one(a)
        )),
    }
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
    let rec = &r.recovery;
    let t = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1} s"));
    println!(
        "  after the fault: failures seen {}, out of service {}, reassigned {}, all back {}; \
         streams continued elsewhere {}",
        t(rec.detected_s),
        t(rec.ejected_s),
        t(rec.reassigned_s),
        t(rec.restored_s),
        r.migrations
    );
    if let Some(line) = ttft_line(s) {
        println!("  {line}");
    }
    if s.by_model.len() > 1 {
        let each: Vec<String> = s
            .by_model
            .iter()
            .map(|m| {
                format!(
                    "{} {} sent, {} succeeded, {} explicit, {} lost",
                    m.model, m.sent, m.succeeded, m.failed_explicit, m.lost
                )
            })
            .collect();
        println!("  by model: {}", each.join("; "));
    }
    if let Some(p) = &r.poison {
        println!(
            "  poison: {} sent, {} refused as quarantined, {} other explicit errors, {} lost",
            p.sent, p.refused, p.failed_explicit, p.lost
        );
        for t in &p.tries {
            println!("    {t}");
        }
        if let Some(c) = &p.containment {
            println!(
                "  poison damage: replicas {:?}, its slice's subset {:?}: {}",
                c.hurt,
                c.subset,
                if c.contained { "contained" } else { "ESCAPED" }
            );
        }
    }
    for l in &r.routed_after_dead {
        println!("  routed after dead: {l}");
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
    StopPoison(load::PoisonHandle),
    /// Waits for the CA rotation away from this CA (its SHA-256) to be over.
    AwaitCaRotation(String),
    Nothing,
}

pub async fn run(exe: &std::path::Path, args: &DrillArgs) -> Result<DrillReport> {
    let mut config = String::new();
    if args.scenario == "cert-renewal" || args.scenario == "all" {
        // Still in the `[node]` section the cluster's config starts with.
        config.push_str(&format!("cert_lifetime_s = {SHORT_CERT_LIFETIME_S}\n"));
    }
    if args.no_quarantine {
        config.push_str("[router]\nquarantine_after = 0\n");
    }
    let models = &load::DRILL_MODELS[..args.models];
    let mut c = Cluster::start(
        exe,
        args.nodes,
        args.racks,
        (args.gpus_per_node, models),
        &config,
    )
    .await?;
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
        key.clone(),
        models,
    );
    let watcher = watch::Watcher::start(
        c.nodes
            .iter()
            .map(|n| watch::Target {
                dir: n.dir.clone(),
                quic: n.quic.clone(),
                http: n.http.clone(),
            })
            .collect(),
        epoch,
    );

    let total = Duration::from_secs_f64(args.duration);
    let scenarios: Vec<&str> = if args.scenario == "all" {
        shuffled(&SCENARIOS[..SCENARIOS.len() - 1], args.seed)
    } else {
        vec![args.scenario.as_str()]
    };
    let slot = total / scenarios.len() as u32;
    let mut faults = Vec::new();
    let mut poisons = Vec::new();
    let (mut fault_at, mut healed_at) = (None, Duration::ZERO);
    for (k, sc) in scenarios.iter().enumerate() {
        let base = slot * k as u32;
        sleep_until(epoch, base + slot / 3).await;
        let seed = args.seed + k as u64;
        let (undo, struck) = strike(sc, &mut c, &doors, seed, &key, &mut faults, epoch).await?;
        fault_at.get_or_insert(struck);
        sleep_until(epoch, base + slot * 2 / 3).await;
        poisons.extend(heal(undo, &mut c, &doors, &mut faults).await?);
        healed_at = epoch.elapsed();
    }
    sleep_until(epoch, total).await;
    let records = load.finish().await;
    let mut poisoned = Vec::new();
    for p in poisons {
        poisoned.extend(p.finish().await);
    }
    let from = fault_at.map_or(0, |d| d.as_millis() as u64);
    // A hung replica is ejected and restarted on the prober's schedule, possibly after
    // the load ended: wait to see it go (up to 30 s after the fault)...
    let full = args.nodes * args.gpus_per_node;
    if scenarios.contains(&"silent-hang") {
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < until
            && !watcher
                .samples()
                .iter()
                .any(|s| s.at_ms >= from && s.in_service < full)
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
    // One more sample of the restored fleet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let samples = watcher.finish().await;

    let state_agrees = agree(&c, &marker).await;
    let fault_ms = fault_at.map(|d| d.as_millis() as u64);
    let summary = summarize(&args.scenario, &records, fault_ms);
    let poison = scenarios.contains(&"poison-request").then(|| {
        PoisonReport::judge(
            &poisoned,
            (scenarios.len() == 1)
                .then(|| checks::containment(&samples, poison_key(), from, u64::MAX)),
        )
    });
    let health: Vec<(u64, usize)> = samples.iter().map(|s| (s.at_ms, s.in_service)).collect();
    Ok(DrillReport {
        migrations: samples.last().map_or(0, |s| s.migrations),
        recovery: checks::recovery(&samples, from, full),
        routed_after_dead: checks::routed_after_dead(&samples, DEAD_ROUTING_BOUND_MS),
        poison,
        summary,
        fault_at_s: fault_at.unwrap_or_default().as_secs_f64(),
        healed_at_s: healed_at.as_secs_f64(),
        state_agrees,
        faults,
        timeline: plot::seconds(&records, &health),
    })
}

impl PoisonReport {
    /// The poison client's ledger, with where the poison did damage (judged only when
    /// it is the drill's one fault).
    pub(crate) fn judge(
        poisoned: &[ledger::Record],
        containment: Option<checks::Containment>,
    ) -> Self {
        let p = summarize("poison", poisoned, None);
        let refused = poisoned
            .iter()
            .filter(|r| {
                matches!(&r.outcome, ledger::Outcome::Explicit { why } if why.contains("request_quarantined"))
            })
            .count() as u64;
        Self {
            sent: p.sent,
            refused,
            failed_explicit: p.failed_explicit - refused,
            lost: p.lost,
            tries: poisoned.iter().map(describe_try).collect(),
            containment,
        }
    }
}

/// One poison try, for the report.
fn describe_try(r: &ledger::Record) -> String {
    format!(
        "at {:.1} s via node {}, {:.1} s: {}",
        r.sent_ms as f64 / 1e3,
        r.node,
        r.done_ms.saturating_sub(r.sent_ms) as f64 / 1e3,
        match &r.outcome {
            ledger::Outcome::Ok => "answered".to_owned(),
            ledger::Outcome::Explicit { why } => why.clone(),
            ledger::Outcome::Lost { why } => format!("LOST: {why}"),
        }
    )
}

/// The slice key of the poison client's requests, as every router computes it.
fn poison_key() -> u64 {
    use sluice_actors::router::{default_sources, workload_key, KeyInputs};
    workload_key(
        &default_sources(),
        &KeyInputs {
            header: |h: &str| (h == "x-session-id").then_some(POISON_SESSION),
            user: None,
            api_key: None,
        },
    )
    .map_or(0, |k| k.0)
}

async fn sleep_until(epoch: Instant, at: Duration) {
    let now = epoch.elapsed();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// A deterministic shuffle (SplitMix64) of the scenarios for `all`.
pub(crate) fn shuffled<'a>(items: &[&'a str], seed: u64) -> Vec<&'a str> {
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

/// How long the balancer waits for a restarted node to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Puts node `i` back behind the balancer once its `/health` says it serves (it has
/// applied the cluster's control state and has a replica), as a load balancer's health
/// check would; after [`READY_WITHIN`] it goes back regardless, and its answers count.
async fn bring_back(doors: &load::Doors, i: usize) -> Duration {
    let http = sluice_loadgen::exchange::client(2, Duration::from_secs(1));
    let started = Instant::now();
    while started.elapsed() < READY_WITHIN {
        let Ok(req) = hyper::Request::get(format!("{}/health", doors.urls[i]))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
        else {
            break;
        };
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), http.request(req)).await
        {
            if resp.status().is_success() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    doors.set_open(i, true);
    started.elapsed()
}

async fn strike(
    scenario: &str,
    c: &mut Cluster,
    doors: &Arc<load::Doors>,
    seed: u64,
    key: &str,
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
        "cert-renewal" => {
            // Every node renews its certificate every few seconds throughout; this node
            // is down until its certificate has expired, and must renew to be let back.
            take_out(doors, follower).await;
            at = epoch.elapsed();
            c.kill(follower).await;
            log.push(format!(
                "certificates live {SHORT_CERT_LIFETIME_S} s, renewed by every node under load; kill -9 of node {follower}, restarted after its certificate expired"
            ));
            Undo::Restart(vec![follower])
        }
        "ca-rotation" => {
            // The cluster's CA is replaced under load: every node takes the new one into
            // its trust, renews under it, and forgets the old one; no request may notice.
            let before = c.status().await.context("no status")?;
            let old = before["ca_sha256"].as_str().unwrap_or_default().to_owned();
            at = epoch.elapsed();
            c.rotate_ca(follower).await?;
            log.push(format!(
                "`cluster rotate-ca` from node {follower}: a new CA for every node under load"
            ));
            Undo::AwaitCaRotation(old)
        }
        "full-restart" => {
            for i in 0..n {
                take_out(doors, i).await;
            }
            at = epoch.elapsed();
            for i in 0..n {
                c.kill(i).await;
            }
            log.push(format!("kill -9 of every node at once ({n})"));
            Undo::Restart((0..n).collect())
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
        "poison-request" => {
            let ask = load::Ask {
                content: format!("{}: answer this", cluster::POISON),
                session: POISON_SESSION.into(),
                model: load::MODEL,
                stream: false,
                seed: None,
            };
            at = epoch.elapsed();
            let h = load::poison(doors.clone(), ask, POISON_DEADLINE, epoch, key.to_owned());
            log.push(format!(
                "a poison request (it hangs whichever engine serves it) sent again and again by one client, session '{POISON_SESSION}'"
            ));
            Undo::StopPoison(h)
        }
        "rolling-restart" => {
            for i in 0..n {
                take_out(doors, i).await;
                c.stop(i).await;
                c.restart(i).await?;
                let took = bring_back(doors, i).await;
                log.push(format!(
                    "node {i} restarted (SIGTERM, then started again; ready after {:.1} s)",
                    took.as_secs_f64()
                ));
                // Let it rejoin before the next one goes.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Undo::Nothing
        }
        other => bail!("unknown scenario {other}"),
    };
    Ok((undo, at))
}

/// Undoes a fault; a poison client is stopped (it sends once more) and handed back to
/// be waited for.
async fn heal(
    undo: Undo,
    c: &mut Cluster,
    doors: &load::Doors,
    log: &mut Vec<String>,
) -> Result<Option<load::PoisonHandle>> {
    match undo {
        Undo::Restart(nodes) => {
            // All of them first: a whole cluster restarted needs a quorum to serve.
            for &i in &nodes {
                c.restart(i).await?;
            }
            for i in nodes {
                let took = bring_back(doors, i).await;
                log.push(format!(
                    "node {i} started again (ready after {:.1} s)",
                    took.as_secs_f64()
                ));
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
        Undo::StopPoison(h) => {
            h.stop();
            log.push("the poison client stops (after one more try)".into());
            return Ok(Some(h));
        }
        Undo::AwaitCaRotation(old) => {
            let done = c
                .wait(CA_ROTATION_LIMIT, |s| {
                    s["ca_rotation"].is_null()
                        && s["ca_sha256"].as_str().is_some_and(|ca| ca != old)
                })
                .await
                .context("the CA rotation did not finish")?;
            log.push(format!(
                "CA rotation over by the end of the load: every member renewed under {}, the old CA retired",
                done["ca_sha256"].as_str().unwrap_or("?")
            ));
        }
        Undo::Nothing => {}
    }
    Ok(None)
}

/// How long a CA rotation may take in a drill: three trust-and-renew rounds of a few
/// Raft writes each, well under it.
const CA_ROTATION_LIMIT: Duration = Duration::from_secs(30);

async fn admin_fault(endpoint: &str, body: &str) -> Result<()> {
    let http = sluice_loadgen::exchange::client(4, Duration::from_secs(2));
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

/// A poison request is answered once the replicas it hangs are ejected and restarted,
/// twice over (the first try and its retry): longer than an ordinary request may take.
const POISON_DEADLINE: Duration = Duration::from_secs(90);

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
