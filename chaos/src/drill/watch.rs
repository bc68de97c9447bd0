//! What the drill sees of the cluster while it runs: twice a second, the registry and
//! assignment from `sluice cluster status`, and from every running node's `/metrics`
//! the requests its router sent to each replica and the failures it saw. Counters of a
//! restarted node start again from zero; the watcher adds up what each node counted.

use serde_json::Value;
use sluice_engine::exposition;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One look at the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Milliseconds since the drill started.
    pub at_ms: u64,
    /// Replicas in service: healthy, and not restarted since the last sample.
    pub in_service: usize,
    /// Replicas out of service: not healthy, or restarted since the last sample (out
    /// for part of it even if both samples call it healthy).
    pub out: Vec<u64>,
    /// Replicas the registry marks unhealthy: routers must stop sending to them.
    pub dead: Vec<u64>,
    pub generation: u64,
    /// The assignment's slices: first key and subset.
    pub slices: Vec<(u64, Vec<u64>)>,
    /// Requests all routers have sent to each replica so far.
    pub routed: BTreeMap<u64, u64>,
    /// Failed probes and failed upstream calls all routers have seen so far.
    pub failures: u64,
    /// Streams all routers have continued on another replica so far.
    pub migrations: u64,
}

/// Where to look: each node's data directory (credentials), QUIC and HTTP addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub dir: PathBuf,
    pub quic: String,
    pub http: String,
}

pub struct Watcher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Watcher {
    pub fn start(targets: Vec<Target>, epoch: Instant) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let out = samples.clone();
        let exe = std::env::current_exe().ok();
        let task = tokio::spawn(async move {
            let Some(exe) = exe else { return };
            let http = sluice_loadgen::exchange::client(8, Duration::from_secs(1));
            let mut counters = Counters::default();
            let mut prev_endpoints: HashMap<u64, String> = HashMap::new();
            let mut leader_at = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stopped.changed() => return,
                }
                for (i, t) in targets.iter().enumerate() {
                    if let Some(text) = metrics(&http, &t.http).await {
                        counters.observe(i, &text);
                    }
                }
                let Some(status) = leaders_status(&exe, &targets, &mut leader_at).await else {
                    continue;
                };
                let mut s = read_status(&status, &mut prev_endpoints);
                s.at_ms = epoch.elapsed().as_millis() as u64;
                s.routed = counters.routed.clone();
                s.failures = counters.failures;
                s.migrations = counters.migrations;
                out.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
        });
        Self {
            stop,
            task,
            samples,
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        let samples = self.samples.clone();
        let _ = self.task.await;
        let out = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out
    }
}

/// Registry, health and assignment from a status; `prev` holds the endpoints of the
/// last sample, to see restarts.
fn read_status(s: &Value, prev: &mut HashMap<u64, String>) -> Sample {
    let mut sample = Sample {
        generation: s["generation"].as_u64().unwrap_or(0),
        ..Sample::default()
    };
    let mut now = HashMap::new();
    for r in s["replicas"].as_array().into_iter().flatten() {
        let (Some(id), Some(ep)) = (r["id"].as_u64(), r["endpoint"].as_str()) else {
            continue;
        };
        let moved = prev.get(&id).is_some_and(|old| old != ep);
        if r["health"] == "healthy" && !moved {
            sample.in_service += 1;
        } else {
            sample.out.push(id);
        }
        if r["health"] == "unhealthy" {
            sample.dead.push(id);
        }
        now.insert(id, ep.to_owned());
    }
    *prev = now;
    for sl in s["slices"].as_array().into_iter().flatten() {
        if let Some(start) = sl["start"].as_u64() {
            let subset = sl["subset"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            sample.slices.push((start, subset));
        }
    }
    sample
}

/// The cluster's status as its leader tells it. Any node's answer would do in calm
/// weather, but a node cut off from the others still answers with the view it had and
/// would hide what the majority committed meanwhile. So the nodes are asked one at a
/// time — the one that led at the last look first (`*first`), then the others in order
/// — until one answers as the leader it names; failing that, the answer of the highest
/// term. One `cluster status` process a look while the leader stands. (A leader cut off
/// from the majority still takes itself for leader until it hears of a newer term; no
/// drill cuts the leader off.)
async fn leaders_status(
    exe: &std::path::Path,
    targets: &[Target],
    first: &mut usize,
) -> Option<Value> {
    if targets.is_empty() {
        return None;
    }
    let start = (*first).min(targets.len() - 1);
    let order = std::iter::once(start).chain((0..targets.len()).filter(|&i| i != start));
    let mut answers = Vec::new();
    for i in order {
        let t = &targets[i];
        let got = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::process::Command::new(exe)
                .args(["cluster", "status", "--json", "--data-dir"])
                .arg(&t.dir)
                .args(["--node", &t.quic])
                .kill_on_drop(true)
                .output(),
        )
        .await;
        let Ok(Ok(o)) = got else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(&o.stdout) else {
            continue;
        };
        if answered_by_leader(&v) {
            *first = i;
            return Some(v);
        }
        answers.push(v);
    }
    freshest(answers.into_iter())
}

/// Of nodes' statuses, the one of the highest term, one answered by the leader it
/// names before others of that term.
fn freshest(answers: impl Iterator<Item = Value>) -> Option<Value> {
    answers.max_by_key(|s| (s["term"].as_u64().unwrap_or(0), answered_by_leader(s)))
}

/// Whether a status was answered by the node it names as leader.
fn answered_by_leader(status: &Value) -> bool {
    status["leader"].as_u64().is_some() && status["leader"] == status["answered_by"]
}

async fn metrics(http: &sluice_loadgen::exchange::HttpClient, addr: &str) -> Option<String> {
    use http_body_util::BodyExt;
    let req = hyper::Request::get(format!("http://{addr}/metrics"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(1), http.request(req))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect())
        .await
        .ok()?
        .ok()?;
    String::from_utf8(body.to_bytes().to_vec()).ok()
}

/// Counter totals over nodes that restart: each node's last readings, and the sums of
/// what they added since the drill began.
#[derive(Debug, Default)]
pub struct Counters {
    last: HashMap<(usize, String), u64>,
    pub routed: BTreeMap<u64, u64>,
    pub failures: u64,
    pub migrations: u64,
}

impl Counters {
    /// Reads node `node`'s metrics text.
    pub fn observe(&mut self, node: usize, text: &str) {
        for s in exposition::samples(text) {
            let v = s.value as u64;
            let counted = matches!(
                s.name,
                "sluice_routed_total"
                    | "sluice_upstream_failures_total"
                    | "sluice_migrations_total"
            ) || (s.name == "sluice_probes_total"
                && s.label("outcome") == Some("failed"));
            if !counted {
                continue;
            }
            let series = format!("{}{{{}}}", s.name, s.labels);
            let last = self.last.insert((node, series), v).unwrap_or(0);
            // A restarted node counts from zero again.
            let added = if v >= last { v - last } else { v };
            match s.name {
                "sluice_routed_total" => {
                    if let Some(r) = s.label("replica").and_then(|r| r.parse::<u64>().ok()) {
                        *self.routed.entry(r).or_default() += added;
                    }
                }
                "sluice_migrations_total" => self.migrations += added,
                _ => self.failures += added,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_of_the_highest_term_speaks_for_the_cluster() {
        let status = |term: u64, leader: u64, by: u64| serde_json::json!({"term": term, "leader": leader, "answered_by": by});
        assert!(answered_by_leader(&status(3, 2, 2)));
        assert!(!answered_by_leader(&status(3, 2, 1)));
        assert!(!answered_by_leader(
            &serde_json::json!({"term": 3, "leader": null, "answered_by": 1})
        ));
        // A cut-off old leader (term 2) against the majority's follower and leader.
        let answers = [status(2, 1, 1), status(3, 2, 3), status(3, 2, 2)];
        assert_eq!(
            freshest(answers.iter().cloned()).as_ref(),
            Some(&answers[2])
        );
        assert_eq!(
            freshest(answers[..2].iter().cloned()).as_ref(),
            Some(&answers[1])
        );
    }

    #[test]
    fn counters_add_up_across_restarts() {
        let mut c = Counters::default();
        c.observe(0, "sluice_routed_total{replica=\"3\"} 5\nsluice_probes_total{outcome=\"failed\"} 1\nsluice_probes_total{outcome=\"ok\"} 9");
        c.observe(1, "sluice_routed_total{replica=\"3\"} 2");
        c.observe(
            0,
            "sluice_routed_total{replica=\"3\"} 7\nsluice_upstream_failures_total{replica=\"3\"} 2",
        );
        assert_eq!(c.routed[&3], 9);
        assert_eq!(c.failures, 3);
        // Node 0 restarted: its counter starts over.
        c.observe(0, "sluice_routed_total{replica=\"3\"} 1");
        assert_eq!(c.routed[&3], 10);
    }

    #[test]
    fn a_changed_endpoint_is_a_restart() {
        let status = |ep: &str, health: &str| {
            serde_json::json!({
                "generation": 4,
                "replicas": [
                    {"id": 1, "endpoint": ep, "health": health},
                    {"id": 2, "endpoint": "b", "health": "healthy"},
                ],
                "slices": [{"start": 0, "subset": [1, 2]}],
            })
        };
        let mut prev = HashMap::new();
        let s = read_status(&status("a", "healthy"), &mut prev);
        assert_eq!((s.in_service, s.out.clone()), (2, vec![]));
        assert_eq!(s.slices, vec![(0, vec![1, 2])]);
        let s = read_status(&status("a2", "healthy"), &mut prev);
        assert_eq!((s.in_service, s.out.clone()), (1, vec![1]));
        let s = read_status(&status("a2", "unhealthy"), &mut prev);
        assert_eq!((s.out.clone(), s.dead.clone()), (vec![1], vec![1]));
    }
}
