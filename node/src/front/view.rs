//! The live view: a small page every node serves at `/ui` (its files are built into the
//! binary), redrawn every second from `/ui/state` — the keyspace as slices mapped to
//! replica subsets (those the last round moved marked), each replica's in-flight MU
//! against its capacity with its health and rack, the leader and the Raft members,
//! tenants' use against their reservations, and what just happened (migrations,
//! ejections, restarts, new slice maps).

use super::Fleets;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

const INDEX: &str = include_str!("view/index.html");
const SCRIPT: &str = include_str!("view/app.js");
const STYLE: &str = include_str!("view/style.css");

/// Slices listed one by one (all of them are drawn in the keyspace band).
const LISTED_SLICES: usize = 64;

/// The cluster as this node sees it (cluster mode).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterSnapshot {
    pub node: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<Member>,
    /// Replica id → the node it runs on and the registry's health word.
    #[serde(skip)]
    pub replicas: HashMap<u64, (u64, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub id: u64,
    pub role: String,
    pub rack: String,
    pub http: String,
}

/// Gives the cluster's side of the view, asked at every refresh.
pub type ClusterSource = Box<dyn Fn() -> ClusterSnapshot + Send + Sync>;

#[derive(Serialize)]
struct ViewState {
    /// The model shown, and every model the node serves (the page's tabs).
    model: Option<String>,
    models: Vec<String>,
    cluster: Option<ClusterSnapshot>,
    replicas: Vec<ReplicaRow>,
    keyspace: Keyspace,
    tenants: Vec<super::tenancy::TenantUse>,
    events: Vec<super::events::Event>,
}

#[derive(Serialize)]
struct ReplicaRow {
    id: u64,
    /// How it is named on the page: `node.index` in a cluster, its id alone otherwise.
    label: String,
    node: Option<u64>,
    rack: String,
    available: bool,
    /// The registry's word (cluster mode): healthy, unhealthy, unreachable, starting, …
    health: Option<String>,
    /// In flight on it: this router's requests, and what the others reported.
    inflight_mu: f64,
    peer_mu: f64,
    requests: u64,
    capacity_mu_per_min: f64,
}

#[derive(Serialize)]
struct Keyspace {
    generation: u64,
    slices: usize,
    /// Each slice's share of the keyspace and its replicas, in key order (the first
    /// [`LISTED_SLICES`] with their subsets; the band shows every one).
    starts: Vec<f64>,
    /// Each slice's preferred replica (what colours it in the band).
    firsts: Vec<u64>,
    subsets: Vec<Vec<u64>>,
    moved: Vec<usize>,
}

pub async fn page() -> Response {
    file(INDEX, "text/html; charset=utf-8")
}

pub async fn script() -> Response {
    file(SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn style() -> Response {
    file(STYLE, "text/css; charset=utf-8")
}

fn file(body: &'static str, kind: &'static str) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

/// Which model's fleet the page shows (`?model=NAME`; default: the first).
#[derive(Debug, Default, serde::Deserialize)]
pub struct Shown {
    model: Option<String>,
}

pub async fn state(State(f): State<Arc<Fleets>>, Query(shown): Query<Shown>) -> Response {
    let s = shown
        .model
        .as_deref()
        .and_then(|m| f.serving(m).ok())
        .unwrap_or_else(|| f.first());
    let models = f.all().filter_map(|s| s.served().model.clone()).collect();
    let cluster = s.cluster_view.get().map(|f| f());
    let now = s.now_ms();
    let (views, keyspace, peer) = {
        let core = s.core();
        let a = core.assignment();
        let slices = a.slices();
        let keyspace = Keyspace {
            generation: a.generation,
            slices: slices.len(),
            starts: slices
                .iter()
                .map(|sl| sl.start.0 as f64 / u64::MAX as f64)
                .collect(),
            firsts: slices
                .iter()
                .map(|sl| sl.subset.first().map_or(0, |r| r.0))
                .collect(),
            subsets: slices
                .iter()
                .take(LISTED_SLICES)
                .map(|sl| sl.subset.iter().map(|r| r.0).collect())
                .collect(),
            moved: core.moved_slices().to_vec(),
        };
        let views = core.replicas(now);
        let peer: Vec<f64> = views.iter().map(|v| core.peer_load(v.id)).collect();
        (views, keyspace, peer)
    };
    let racks: HashMap<u64, String> = cluster.as_ref().map_or_else(HashMap::new, |c| {
        c.members.iter().map(|m| (m.id, m.rack.clone())).collect()
    });
    let replicas = views
        .iter()
        .zip(peer)
        .map(|(v, peer_mu)| {
            let placed = cluster.as_ref().and_then(|c| c.replicas.get(&v.id.0));
            let node = placed.map(|(n, _)| *n);
            ReplicaRow {
                id: v.id.0,
                label: match node {
                    Some(n) => format!("{n}.{}", sluice_actors::autoscaler::local_index(v.id)),
                    None => v.id.0.to_string(),
                },
                node,
                rack: node
                    .and_then(|n| racks.get(&n).cloned())
                    .unwrap_or_else(|| super::LOCAL_RACK.to_owned()),
                available: v.available,
                health: placed.map(|(_, h)| h.clone()),
                inflight_mu: v.inflight.mu,
                peer_mu,
                requests: v.inflight.requests,
                capacity_mu_per_min: v.capacity_mu_per_min,
            }
        })
        .collect();
    let body = ViewState {
        model: s.served().model.clone(),
        models,
        cluster,
        replicas,
        keyspace,
        tenants: s.tenant_use(),
        events: s.metrics.events.recent(),
    };
    match serde_json::to_string(&body) {
        Ok(json) => super::json_response(StatusCode::OK, json),
        Err(e) => super::error_response(
            &sluice_engine::openai::ApiError::new(500, "server_error", e.to_string()),
            None,
        ),
    }
}
