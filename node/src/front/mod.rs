//! The node's OpenAI-compatible front door: authenticate, parse, price, admit, place,
//! forward, stream back, account. Decisions are the router core's; this shell moves
//! bytes and reads clocks.

mod assign;
pub mod engine_pool;
mod events;
pub mod fleets;
pub mod handoff;
mod health;
mod metrics;
pub mod models;
mod probe;
mod proxy;
pub mod request_id;
mod splice;
mod sse;
mod stream;
pub mod tenancy;
pub mod view;

use crate::config::NodeConfig;
use crate::tree::ChildSpec;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use sluice_actors::assigner::{initial_assignment, ReplicaInfo, ScheduleConfig};
use sluice_actors::router::{KeySource, ReplicaSpec, RouterCore};
use sluice_actors::slice::{Assignment, ReplicaId};
use sluice_engine::openai::{ApiError, Endpoint};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

pub use fleets::Fleets;
pub use metrics::Metrics;
pub use probe::Ejection;
pub use proxy::passable;
use proxy::Route;

/// A replica the front door forwards to.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub id: ReplicaId,
    pub target: Target,
}

/// The fleet as the control state describes it: every replica with where it is reached,
/// its capacity and machine, the registry's health verdicts, and the slice map.
pub struct FleetView {
    pub upstreams: Vec<(Upstream, ReplicaSpec)>,
    pub health: Vec<(ReplicaId, bool)>,
    pub assignment: Assignment,
}

/// Where a replica is reached.
#[derive(Debug, Clone)]
pub enum Target {
    /// An engine this node talks to over HTTP.
    Local {
        /// `http://host:port`, no trailing slash.
        base: String,
        /// Each endpoint's URI ([`Endpoint::ALL`]'s order), parsed once: the hot path
        /// clones these instead of formatting and parsing.
        uris: Arc<[hyper::Uri]>,
    },
    /// A replica of another node, reached through that node over QUIC.
    Remote { node: SocketAddr },
}

impl Upstream {
    pub fn local(id: ReplicaId, url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_owned();
        let uri = |path: &str| -> anyhow::Result<hyper::Uri> {
            format!("{base}{path}")
                .parse()
                .map_err(|e| anyhow::anyhow!("replica URL '{url}': {e}"))
        };
        let uris = Endpoint::ALL
            .iter()
            .map(|e| uri(e.path()))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            id,
            target: Target::Local { uris, base },
        })
    }

    pub fn remote(id: ReplicaId, node: SocketAddr) -> Self {
        Self {
            id,
            target: Target::Remote { node },
        }
    }
}

/// The front door's settings.
#[derive(Debug, Clone)]
pub struct FrontConfig {
    /// The model named in configuration (`--model`); `None`: the engines say.
    pub model_override: Option<String>,
    /// The model a node uses while none of its own engines has said what it serves
    /// (cluster mode: the registry's); `None`: requests wait for the engines.
    pub fallback_model: Option<String>,
    pub key_sources: Vec<KeySource>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub health_interval: Duration,
}

/// The front door's shared state. Locks are short and never held across an `.await`.
/// Where two are held together it is in this order, and in no other:
///
/// - `registry_health` → `core` (a new fleet from the control state),
/// - `ejected` → `core`, and `ejected` → `engines` (the prober's verdicts carried out),
/// - `core` → `retry_budget` (a request placed or retried),
/// - `core` → `migrations` (a request continued on another replica),
/// - `core` → `retry_budget` → `migrations` (a request whose node was lost before it
///   answered: retried, or moved once its retry is spent).
///
/// Every other lock is taken alone.
pub struct AppState {
    core: Mutex<RouterCore>,
    upstreams: RwLock<HashMap<ReplicaId, Upstream>>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Carries requests to the node's own engines (the hot path; `client` does the rest).
    engine_pool: engine_pool::EnginePool,
    /// Reaches other nodes (cluster mode).
    remote: Option<Arc<sluice_transport::Client>>,
    config: FrontConfig,
    /// The node's one registry, shared by its fleets.
    metrics: Arc<Metrics>,
    start: Instant,
    /// The replicas as the assigner sees them, and its rounds (`None`: fixed map).
    registry: Vec<ReplicaInfo>,
    schedule: Option<ScheduleConfig>,
    /// The control state's health verdict per replica, as last applied (cluster mode).
    registry_health: Mutex<HashMap<ReplicaId, bool>>,
    /// The health prober's state over the local replicas, those it keeps out of
    /// service, and where it reports ejections.
    prober: Mutex<sluice_actors::prober::ProberCore>,
    probe_prioritized: bool,
    /// Retries stay within a share of traffic, so a failing fleet is not hit twice.
    retry_budget: Mutex<sluice_actors::prober::RetryBudget>,
    /// Migrations stay within their own rate, so a flapping fleet cannot turn every
    /// request into several.
    migrations: Mutex<sluice_actors::lifecycle::MigrationBudget>,
    /// The replicas last found hung from their streams: the requests they hold move.
    stall_alarm: tokio::sync::watch::Sender<Arc<[ReplicaId]>>,
    ejected: Mutex<sluice_actors::prober::Ejections>,
    ejections: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Ejection>>,
    /// Tenants' keys, reservations and admission (cluster mode; open without tenants).
    tenancy: Mutex<tenancy::Tenancy>,
    /// Other routers' latest in-flight reports, by node (cluster mode).
    peer_loads: Mutex<HashMap<u64, (Instant, ReplicaLoads)>>,
    /// What each local engine said it serves, when it was last asked, and the fleet's
    /// model decided from that (read per request: an `Arc` swapped on change).
    model_reports: Mutex<sluice_actors::router::models::Reports>,
    models_asked: Mutex<HashMap<ReplicaId, u64>>,
    served: RwLock<Arc<sluice_actors::router::ServedModels>>,
    /// The profile pricing requests (for reporting which one it is).
    profile: sluice_actors::Profile,
    /// The supervisor's word on each launched engine.
    engines: Mutex<HashMap<ReplicaId, EngineStatus>>,
    /// Whether this node has applied the cluster's control state (its tenants above
    /// all): until then it admits no client request, rather than serve an open door on
    /// a cluster that has tenants. Standalone nodes have nothing to wait for.
    caught_up: std::sync::atomic::AtomicBool,
    caught_up_now: tokio::sync::Notify,
    /// The cluster's side of the live view (cluster mode).
    cluster_view: std::sync::OnceLock<view::ClusterSource>,
}

/// A supervised engine as the front door knows it.
#[derive(Debug, Clone, Copy, Default)]
struct EngineStatus {
    /// Exited, killed, backing off or starting: not to be probed.
    down: bool,
    incarnation: u64,
    /// The engine's process group, when the supervisor knows it.
    group: Option<i32>,
}

/// In-flight MU and requests per replica, as one router reports them.
pub type ReplicaLoads = Vec<(ReplicaId, f64, u64)>;

/// A peer's load report counts this long; a router that stopped reporting (dead, or
/// partitioned away) stops weighing on the choice.
const PEER_LOAD_TTL: Duration = Duration::from_secs(2);

/// The replica a fleet with none yet maps its keyspace to: no replica has this id.
const NO_REPLICA: ReplicaId = ReplicaId(u64::MAX);

/// Rack of a standalone node's replicas: they share its host.
const LOCAL_RACK: &str = "local";

impl AppState {
    /// The fleet of `node`'s model over `upstreams`, all in this node's rack; `remote`
    /// reaches the other nodes of a cluster; `metrics` is the node's registry.
    ///
    /// `held` take no work until the registry puts them in service: in cluster mode, the
    /// engines still loading at start, which are registered `Starting` — held from the
    /// first moment, so the start-up view does not route to them in the moment between
    /// this node catching up and its own registrations being applied.
    pub fn new(
        node: &NodeConfig,
        upstreams: Vec<Upstream>,
        held: &[ReplicaId],
        remote: Option<Arc<sluice_transport::Client>>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let ids: Vec<ReplicaId> = upstreams.iter().map(|u| u.id).collect();
        let specs: Vec<ReplicaSpec> = ids
            .iter()
            .map(|&id| ReplicaSpec {
                id,
                capacity_mu_per_min: node.profile.capacity_mu_per_min,
                // One node: every replica is on this machine.
                host: 0,
                rack: 0,
            })
            .collect();
        let registry: Vec<ReplicaInfo> = ids
            .iter()
            .map(|id| ReplicaInfo::new(id.0, LOCAL_RACK, node.profile.capacity_mu_per_min))
            .collect();
        let assignment = match &node.assigner {
            // A cluster node may route a model it runs no replica of: until the control
            // state gives the model's map, every request of it finds no replica.
            _ if ids.is_empty() => Assignment::uniform(0, &[NO_REPLICA], 1, 1)?,
            Some(schedule) => initial_assignment(&registry, &schedule.assigner)?,
            None => Assignment::uniform(1, &ids, node.slice_count, node.subset_size)?,
        };
        let mut core = RouterCore::new(node.profile.mu, node.router, &specs, assignment);
        for &id in held {
            core.set_checked_health(id, false);
        }
        // Every router of a cluster breaks ties between idle replicas in its own order, or
        // they all spill onto the same one (see `LoadOrder::spread_ties`). A new
        // `RandomState` is keyed at random, so what it hashes does not matter.
        core.spread_ties(std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            0u8,
        ));
        let client = http_client(node.connect_timeout);
        let locals: Vec<ReplicaId> = upstreams
            .iter()
            .filter(|u| matches!(u.target, Target::Local { .. }))
            .map(|u| u.id)
            .collect();
        let prober = probe::core_for(&node.prober, &locals)?;
        let fallback_model = (remote.is_some() || locals.is_empty()).then(|| node.model.clone());
        let initial_served = sluice_actors::router::ServedModels::decide(
            node.model_override.as_deref(),
            fallback_model.as_deref(),
            &Default::default(),
        );
        let standalone = remote.is_none();
        let state = Arc::new(Self {
            core: Mutex::new(core),
            upstreams: RwLock::new(upstreams.into_iter().map(|u| (u.id, u)).collect()),
            client,
            engine_pool: engine_pool(node.connect_timeout, metrics.engine_sends()),
            remote,
            config: FrontConfig {
                model_override: node.model_override.clone(),
                fallback_model,
                key_sources: node.key_sources.clone(),
                max_body_bytes: node.max_body_bytes,
                request_timeout: node.request_timeout,
                stream_idle_timeout: node.stream_idle_timeout,
                health_interval: node.health_interval,
            },
            metrics,
            start: Instant::now(),
            registry,
            schedule: node.assigner.clone(),
            registry_health: Mutex::new(held.iter().map(|&id| (id, false)).collect()),
            peer_loads: Mutex::new(HashMap::new()),
            tenancy: Mutex::new(tenancy::Tenancy::new(0)),
            retry_budget: Mutex::new(sluice_actors::prober::RetryBudget::new(prober.config())),
            migrations: Mutex::new(sluice_actors::lifecycle::MigrationBudget::new(
                node.migration,
            )),
            stall_alarm: tokio::sync::watch::Sender::new(Arc::from(Vec::new())),
            prober: Mutex::new(prober),
            probe_prioritized: node.probe_prioritized,
            ejected: Mutex::new(Default::default()),
            ejections: std::sync::OnceLock::new(),
            model_reports: Mutex::new(Default::default()),
            models_asked: Mutex::new(HashMap::new()),
            served: RwLock::new(Arc::new(initial_served)),
            profile: node.profile.clone(),
            engines: Mutex::new(HashMap::new()),
            caught_up: std::sync::atomic::AtomicBool::new(standalone),
            caught_up_now: tokio::sync::Notify::new(),
            cluster_view: std::sync::OnceLock::new(),
        });
        Ok(state)
    }

    /// Microseconds since the node started: the assigner's clock.
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Milliseconds since the node started: the clock value handed to the core.
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The core's state is plain data that every update leaves consistent, so a panic
    /// elsewhere while holding the lock does not make it unusable.
    fn core(&self) -> MutexGuard<'_, RouterCore> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The door's retry budget (after `core` when both are held).
    fn retry_budget(&self) -> MutexGuard<'_, sluice_actors::prober::RetryBudget> {
        self.retry_budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The door's migration budget (after `core`, and after `retry_budget`, when held
    /// with them).
    fn migrations(&self) -> MutexGuard<'_, sluice_actors::lifecycle::MigrationBudget> {
        self.migrations.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn upstream(&self, id: ReplicaId) -> Option<Upstream> {
        self.upstreams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn local_upstreams(&self) -> Vec<(ReplicaId, String)> {
        self.upstreams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|u| match &u.target {
                Target::Local { base, .. } => Some((u.id, base.clone())),
                Target::Remote { .. } => None,
            })
            .collect()
    }

    /// The registry changed (cluster mode): new replica set, where each is reached, and
    /// the slice map to use.
    pub fn set_fleet(&self, fleet: FleetView) {
        let FleetView {
            upstreams,
            health: healthy,
            assignment,
        } = fleet;
        let specs: Vec<ReplicaSpec> = upstreams.iter().map(|(_, spec)| *spec).collect();
        let capacity: f64 = specs
            .iter()
            .filter(|s| healthy.iter().any(|(id, ok)| *id == s.id && *ok))
            .map(|s| s.capacity_mu_per_min)
            .sum();
        self.set_capacity(capacity);
        *self.upstreams.write().unwrap_or_else(|p| p.into_inner()) =
            upstreams.into_iter().map(|(u, _)| (u.id, u)).collect();
        let mut verdicts = self
            .registry_health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut core = self.core();
        core.set_replicas(&specs);
        // A replica that left the view is forgotten by the core, and comes back to it
        // routable: its verdict must be pushed again then.
        let present: std::collections::HashSet<ReplicaId> = specs.iter().map(|s| s.id).collect();
        verdicts.retain(|id, _| present.contains(id));
        // Only changes of the registry's verdict are pushed, so that it does not undo
        // this node's own health checks of its local replicas every time.
        for (id, ok) in healthy {
            if verdicts.insert(id, ok) != Some(ok) {
                core.set_checked_health(id, ok);
            }
        }
        let generation = assignment.generation;
        core.set_assignment(assignment);
        drop(core);
        self.metrics.assignment(generation);
    }

    /// Whether the registry (cluster mode) lets `id` take work; standalone, always.
    pub(super) fn registry_allows(&self, id: ReplicaId) -> bool {
        self.registry_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .unwrap_or(true)
    }

    /// Requests queued or running in the engine at `base`, by its own `/metrics`
    /// (forwarded requests from other routers included); `None` if it does not answer.
    pub async fn engine_queued(&self, base: &str) -> Option<u32> {
        probe::engine_progress(self, base)
            .await
            .map(|(queued, _)| queued)
    }

    /// Requests this router has in flight on `id`.
    pub fn in_flight(&self, id: ReplicaId) -> u64 {
        self.own_load()
            .iter()
            .filter(|(r, _, _)| *r == id)
            .map(|(_, _, n)| *n)
            .sum()
    }

    /// A launched replica is listening again, possibly at a new address.
    pub fn set_local_url(&self, id: ReplicaId, url: &str) -> anyhow::Result<()> {
        let up = Upstream::local(id, url)?;
        self.upstreams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, up);
        // A new engine process: ask it again what it serves.
        self.models_asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(())
    }

    /// A launched replica exited: no new requests until its health check passes again.
    pub fn replica_down(&self, id: ReplicaId) {
        self.core().set_checked_health(id, false);
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .down = true;
    }

    /// Incarnation `incarnation` of the engine behind `id` is up (supervised engines),
    /// running as process group `group` when that is known.
    pub fn engine_up(&self, id: ReplicaId, incarnation: u64, group: Option<i32>) {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        let e = engines.entry(id).or_default();
        e.down = false;
        e.incarnation = incarnation;
        e.group = group;
    }

    /// The process group of the engine behind `id`, if it is supervised here and up.
    pub fn engine_group(&self, id: ReplicaId) -> Option<i32> {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .filter(|e| !e.down)
            .and_then(|e| e.group)
    }

    /// What the supervisor says of the engine behind `id` (one not supervised here: up).
    pub fn supervised_state(&self, id: ReplicaId) -> sluice_actors::prober::EngineState {
        let engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        match engines.get(&id).is_some_and(|e| e.down) {
            true => sluice_actors::prober::EngineState::DownOrStarting,
            false => sluice_actors::prober::EngineState::Up,
        }
    }

    /// The incarnation of the engine process behind `id` (0 for one not supervised).
    pub fn incarnation(&self, id: ReplicaId) -> u64 {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map_or(0, |e| e.incarnation)
    }

    /// An answered request's tokens, as its engine reported them.
    pub(super) fn metered(
        &self,
        replica: ReplicaId,
        model: &str,
        tenant: Option<&str>,
        usage: Option<&sluice_actors::router::Usage>,
    ) {
        match usage {
            Some(u) => self.metrics.usage(replica.0, model, tenant, u),
            None => self.metrics.usage_missing(replica.0),
        }
    }

    /// The engine behind `id` ignores request priorities (probes are not prioritized).
    pub fn priority_ignored(&self, id: ReplicaId) {
        self.metrics.priority_ignored(id.0, true);
    }

    /// A supervised engine entered a lifecycle state.
    pub fn engine_state(&self, id: ReplicaId, state: &'static str) {
        self.metrics.engine_state(id.0, state);
    }

    pub fn engine_restarted(&self, id: ReplicaId) {
        self.metrics.engine_restart(id.0);
    }

    /// Another node's router reported its in-flight load.
    pub fn peer_load(&self, node: u64, loads: ReplicaLoads) {
        let mut peers = self.peer_loads.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        peers.insert(node, (now, loads));
        peers.retain(|_, (at, _)| now.duration_since(*at) < PEER_LOAD_TTL);
        // Request counts travel with the load (the wire keeps them); the choice weighs
        // only the MU.
        let all: Vec<(ReplicaId, f64)> = peers
            .values()
            .flat_map(|(_, l)| l.iter().map(|&(id, mu, _)| (id, mu)))
            .collect();
        drop(peers);
        self.core().set_external_load(all);
    }

    /// Cluster mode: where the live view learns the leader, members and registry.
    pub fn set_cluster_view(&self, source: view::ClusterSource) {
        let _ = self.cluster_view.set(source);
    }

    /// Cluster mode: this node has applied the control state as the cluster has it.
    pub fn set_caught_up(&self) {
        if !self
            .caught_up
            .swap(true, std::sync::atomic::Ordering::Release)
        {
            tracing::info!("the cluster's control state is applied; admitting requests");
            self.caught_up_now.notify_waiters();
        }
    }

    /// Waits until this node has caught up, or `limit`: whether it has.
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        let now = self.caught_up_now.notified();
        tokio::pin!(now);
        // Registered before the check, so a catch-up in between is not missed.
        now.as_mut().enable();
        if self.caught_up() {
            return true;
        }
        tokio::time::timeout(limit, now).await.is_ok() || self.caught_up()
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up.load(std::sync::atomic::Ordering::Acquire)
    }

    /// One of the node's actors failed and was restarted.
    pub fn actor_restarted(&self, actor: &'static str) {
        self.metrics.actor_restarted(actor);
    }

    /// Node `node`'s certificate: a renewal's `outcome` (when one was tried) and the
    /// seconds it has left.
    pub fn cert_state(&self, node: u64, outcome: Option<&'static str>, seconds_left: f64) {
        if let Some(o) = outcome {
            self.metrics.cert_renewal(o);
        }
        self.metrics.set_cert_expiry(node, seconds_left);
    }

    /// This router's in-flight load per replica, for the others.
    pub fn own_load(&self) -> ReplicaLoads {
        self.core().own_load()
    }

    /// The implications of requests in replica failures this router knows that still
    /// count, for the others (re-announced while they count).
    pub fn announced_implications(&self) -> Vec<sluice_actors::router::Implication> {
        let now = self.now_ms();
        self.core().announced_implications(now)
    }

    /// Implications another router reported: its poison requests are ours too.
    pub fn peer_implications(&self, from: &[sluice_actors::router::Implication]) {
        if !from.is_empty() {
            let now = self.now_ms();
            self.core().merge_implications(from, now);
        }
    }

    /// What the router core measured since the last call (the assigner's input).
    pub fn take_load(&self) -> sluice_actors::assigner::LoadReport {
        let now = self.now_us();
        self.core().take_load(now)
    }
}

/// How long a connection to an engine is kept unused.
const ENGINE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections to this node's engines for the requests it serves (its own and those
/// other nodes forward), kept as long as hyper-util's client keeps them.
pub fn engine_pool(
    connect_timeout: Duration,
    counts: engine_pool::SendCounts,
) -> engine_pool::EnginePool {
    engine_pool::EnginePool::new(connect_timeout, ENGINE_IDLE_TIMEOUT, counts)
}

/// The pooled HTTP client for what is not a request's own call to an engine (health
/// checks, probes, model lists; a request goes through [`engine_pool()`]): no Nagle delay,
/// bounded connect time.
pub fn http_client(connect_timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(ENGINE_IDLE_TIMEOUT)
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// The front door's actors: health checks, the prober, the tenants' reservations, and
/// (standalone only: in a cluster the Raft leader runs it on every router's reports)
/// the assigner.
pub fn actors(state: &Arc<AppState>) -> Vec<ChildSpec> {
    let mut actors = vec![
        ChildSpec::duty("health", {
            let state = state.clone();
            move || health::HealthChecks::new(state.clone())
        }),
        ChildSpec::duty("prober", {
            let state = state.clone();
            move || probe::Prober::new(state.clone())
        }),
        ChildSpec::duty("tenancy", {
            let state = state.clone();
            move || tenancy::rebalancer(state.clone())
        }),
    ];
    if let (Some(schedule), None) = (state.schedule.clone(), &state.remote) {
        let state = state.clone();
        actors.push(ChildSpec::duty("assigner", move || {
            assign::Rounds::new(state.clone(), schedule.clone())
        }));
    }
    actors
}

/// The axum app over the node's fleets. Their actors ([`actors`]) run in the node's
/// tree.
pub fn app(fleets: Arc<Fleets>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/{*rest}", post(other))
        .route("/ui", get(view::page))
        .route("/ui/app.js", get(view::script))
        .route("/ui/style.css", get(view::style))
        .route("/ui/state", get(view::state))
        .route("/health", get(node_health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(fleets)
}

async fn chat(State(f): State<Arc<Fleets>>, req: Request) -> Response {
    proxy::handle(f, Route::Api(Endpoint::Chat), req).await
}

async fn completions(State(f): State<Arc<Fleets>>, req: Request) -> Response {
    proxy::handle(f, Route::Api(Endpoint::Completion), req).await
}

/// Any other `POST /v1/…` (vLLM's `/v1/score`, `/v1/rerank`, `/v1/messages`, …): passed
/// through to a replica as it came.
async fn other(State(f): State<Arc<Fleets>>, req: Request) -> Response {
    let path = req.uri().path();
    if !proxy::passable(path) {
        return not_found(req).await;
    }
    let route = Route::Other(Arc::from(path));
    proxy::handle(f, route, req).await
}

async fn responses(State(f): State<Arc<Fleets>>, req: Request) -> Response {
    proxy::handle(f, Route::Api(Endpoint::Responses), req).await
}

async fn embeddings(State(f): State<Arc<Fleets>>, req: Request) -> Response {
    proxy::handle(f, Route::Api(Endpoint::Embeddings), req).await
}

/// Every model the node's fleets serve, with the names their engines also answer to.
async fn models(State(f): State<Arc<Fleets>>) -> Response {
    let data: Vec<serde_json::Value> = f
        .names()
        .into_iter()
        .map(
            |m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "sluice"}),
        )
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    json_response(StatusCode::OK, body.to_string())
}

/// One fleet's replicas for `/health`: how many are available, and each one.
fn fleet_health(s: &AppState) -> (usize, Vec<serde_json::Value>) {
    let views = s.core().replicas(s.now_ms());
    let available = views.iter().filter(|v| v.available).count();
    let urls: HashMap<ReplicaId, String> = s.local_upstreams().into_iter().collect();
    let served = s.served();
    let reports = s
        .model_reports
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let upstreams = views
        .iter()
        .map(|v| {
            serde_json::json!({"id": v.id.0, "url": urls.get(&v.id), "available": v.available,
                "model": served.model, "models": reports.get(&v.id),
                "model_mismatch": !served.agrees(v.id)})
        })
        .collect();
    (available, upstreams)
}

/// 200 while any model has a replica to serve it (a node serving one of its models
/// still takes that model's traffic); each model's replicas are listed.
async fn node_health(State(f): State<Arc<Fleets>>) -> Response {
    let mut upstreams = Vec::new();
    let mut models = Vec::new();
    let mut available = 0;
    for s in f.all() {
        let (up, listed) = fleet_health(s);
        models.push(
            serde_json::json!({"model": s.served().model, "replicas": listed.len(),
            "available": up, "tokenizer_scale": s.core().token_scale()}),
        );
        available += up;
        upstreams.extend(listed);
    }
    let caught_up = f.first().caught_up();
    let status = if available > 0 && caught_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let said = match (caught_up, available > 0) {
        (false, _) => "catching up with the cluster's control state",
        (true, true) => "ok",
        (true, false) => "no replica available",
    };
    let first = f.first();
    let body = serde_json::json!({"status": said,
        "model": first.served().model, "models": models,
        "replicas": upstreams.len(), "available": available,
        "tokenizer": {"counts": "sluice stand-in, scaled to the engine's reported prompt tokens",
            "scale": first.core().token_scale()},
        "upstreams": upstreams});
    json_response(status, body.to_string())
}

async fn metrics(State(f): State<Arc<Fleets>>) -> Response {
    let samples: Vec<metrics::FleetSample> = f
        .all()
        .map(|s| {
            // `served` is read before the core is locked: locks are taken alone.
            let model = s.served().model.clone();
            let core = s.core();
            metrics::FleetSample {
                model,
                profile: &s.profile,
                replicas: core.replicas(s.now_ms()),
                token_scale: core.token_scale(),
            }
        })
        .collect();
    let text = f.metrics().render(&samples);
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

async fn not_found(req: Request) -> Response {
    let e = ApiError::new(
        404,
        "not_found_error",
        format!("no route for {} {}", req.method(), req.uri().path()),
    );
    error_response(&e, None)
}

async fn method_not_allowed(req: Request) -> Response {
    let e = ApiError::new(
        405,
        "invalid_request_error",
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    );
    error_response(&e, None)
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An OpenAI-style error; `retry_after` seconds are sent as `Retry-After`.
fn error_response(e: &ApiError, retry_after: Option<u32>) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, e.body());
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
