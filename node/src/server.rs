//! Starting and stopping a node, in the manner of mini-redis's `server::run`: the
//! caller binds the listeners (port 0 in tests) and says when to stop; [`Node::start`]
//! launches the engines, joins the cluster, starts the actor tree and the front door,
//! and returns a handle whose addresses are read back.

use crate::cluster::{self, ClusterArgs, ClusterNode, NodeHandle};
use crate::config::NodeConfig;
use crate::front::{self, AppState};
use crate::launcher;
use crate::supervisor::engine::Event;
use crate::supervisor::engines::Supervisor;
use crate::supervisor::restart::RestartPolicy;
use crate::tree::{ChildSpec, Duty, OnRestart, Tree, Turn};
use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use ractor::ActorProcessingErr;
use sluice_actors::slice::ReplicaId;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// How long a starting node waits for its engines to say which model they serve before
/// it goes on without (they are asked again as they come up).
const DISCOVERY_WAIT: Duration = Duration::from_secs(5);

/// How long a cluster node holds its first connections while it catches up with the
/// cluster's control state: a restarted follower waits for the leader to reach it again.
const CATCH_UP_WAIT: Duration = Duration::from_secs(15);

/// What a node listens on, bound by the caller before the node starts (so that a busy
/// port fails before any engine starts, and tests can bind port 0).
pub struct Listeners {
    /// The OpenAI-compatible front door.
    pub http: tokio::net::TcpListener,
    /// Cluster mode: the QUIC endpoint's socket.
    pub quic: Option<std::net::UdpSocket>,
}

impl Listeners {
    /// Binds the addresses the configuration names, with errors that say which.
    pub async fn bind(cfg: &NodeConfig, cluster: Option<&ClusterArgs>) -> Result<Self> {
        let http = tokio::net::TcpListener::bind(cfg.http)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (is another node running there?)",
                    cfg.http
                )
            })?;
        let quic =
            match cluster {
                Some(c) => Some(std::net::UdpSocket::bind(c.listen).with_context(|| {
                    format!("cannot listen for cluster traffic on {}", c.listen)
                })?),
                None => None,
            };
        Ok(Self { http, quic })
    }
}

/// A running node.
pub struct Node {
    http: SocketAddr,
    cluster: Option<(u64, SocketAddr)>,
    tree_running: Arc<Tree>,
    /// The node's serving task; `None` once [`Node::wait`] took it.
    done: Option<JoinHandle<Result<()>>>,
}

impl Drop for Node {
    /// A node whose handle is dropped without [`Node::wait`] stops: its task has no
    /// other owner.
    fn drop(&mut self) {
        if let Some(task) = self.done.take() {
            task.abort();
        }
    }
}

impl Node {
    /// Starts a node: its engines (launched or given by URL), the cluster side when
    /// `cluster` is given, the actor tree, and the front door on `listeners`. It runs
    /// until `shutdown` resolves (then in-flight requests get the grace period) or an
    /// actor keeps failing (then [`Node::wait`] returns that error).
    pub async fn start(
        cfg: NodeConfig,
        cluster_args: Option<ClusterArgs>,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Node> {
        if cfg.autoscaler.is_some() && cluster_args.is_none() {
            anyhow::bail!(
                "the [autoscaler] runs on the cluster's leader: start the node with --data-dir (cluster mode)"
            );
        }
        let local = listeners.http.local_addr()?;
        // Each model's engines, numbered one after another on this node.
        let mut found: Vec<Engines> = Vec::new();
        let mut first = 0;
        for fleet_cfg in cfg.fleets() {
            let engines = find_engines(fleet_cfg, first).await?;
            first += engines.urls.len();
            found.push(engines);
        }
        let slot = Arc::new(tokio::sync::OnceCell::new());
        let metrics = Arc::new(front::Metrics::new());
        let node = match (&cluster_args, listeners.quic) {
            (Some(ca), Some(quic)) => {
                let locals: Vec<cluster::LocalFleet> = found
                    .iter()
                    .map(|e| cluster::LocalFleet {
                        model: e.cfg.model.clone(),
                        capacity: e.cfg.profile.capacity_mu_per_min,
                        urls: e
                            .urls
                            .iter()
                            .cloned()
                            .enumerate()
                            .map(|(i, u)| (e.first + i, u))
                            .collect(),
                        // Engines that have not said what they serve are still loading:
                        // they are registered `Starting`, and in service once they answer.
                        answered: e.discovered.keys().map(|i| e.first + i).collect(),
                    })
                    .collect();
                let sends = metrics.engine_sends();
                let node =
                    cluster::start(&cfg, ca, quic, local, &locals, slot.clone(), sends).await?;
                std::fs::write(
                    ca.data_dir.join(cluster::cli::ADDR_FILE),
                    node.listen.to_string(),
                )
                .context("cannot record the node's address")?;
                tracing::info!(node = node.id, quic = %node.listen, rack = %ca.rack, "cluster member");
                Some(node)
            }
            (Some(_), None) => anyhow::bail!("cluster mode needs a QUIC socket"),
            (None, _) => None,
        };
        let id_of = {
            let node_id = node.as_ref().map(|n| n.id);
            move |index: usize| match node_id {
                Some(n) => cluster::replica_id(n, index),
                None => ReplicaId(index as u64),
            }
        };
        let mut fleets = Vec::new();
        let mut supervisors: Vec<Arc<Supervisor>> = Vec::new();
        let mut actors = Vec::new();
        let mut engines_by_model = std::collections::HashMap::new();
        let mut total = 0;
        for e in found {
            total += e.urls.len();
            let model = e.cfg.model.clone();
            let handle = node.as_ref().map(|n| n.handle(&model));
            let started = match start_fleet(e, &node, handle, metrics.clone(), id_of).await {
                Ok(f) => f,
                Err(err) => {
                    // No engine outlives a node that could not start.
                    stop_engines(&supervisors).await;
                    return Err(err);
                }
            };
            engines_by_model.insert(
                model.clone(),
                cluster::reconcile::ModelEngines {
                    supervisor: started.supervisor.clone(),
                    front: started.state.clone(),
                },
            );
            fleets.push((model, started.state));
            supervisors.push(started.supervisor);
            actors.push(started.actors);
        }
        let on_restart: OnRestart = {
            let metrics = metrics.clone();
            Arc::new(move |actor| metrics.actor_restarted(actor))
        };
        let mut children: Vec<ChildSpec> = if actors.len() == 1 {
            actors.pop().unwrap_or_default()
        } else {
            // Each model's actors in a group of their own, named after the model.
            fleets
                .iter()
                .zip(actors)
                .map(|((model, _), a)| {
                    // Named once per model at start: leaking these few names is bounded.
                    let name: &'static str = Box::leak(format!("model {model}").into_boxed_str());
                    ChildSpec::group(name, a, cfg.actor_restarts, None)
                })
                .collect()
        };
        let Some(fleets) = front::Fleets::new(fleets) else {
            anyhow::bail!("the node serves no model");
        };
        let _ = slot.set(fleets.clone());
        if let Some(n) = &node {
            fleets.set_directory(n.directory());
        }
        if let Some(n) = &node {
            children.extend(n.actors(cfg.actor_restarts));
            // Placements and drains (the autoscaler's or an operator's) on this node.
            let handle = n.node_handle();
            let busy: Arc<std::sync::Mutex<std::collections::HashSet<ReplicaId>>> = Arc::default();
            let deadline = cfg.drain_deadline;
            children.push(ChildSpec::duty("reconciler", move || {
                cluster::reconcile::Reconciler::new(
                    handle.clone(),
                    engines_by_model.clone(),
                    deadline,
                    busy.clone(),
                )
            }));
        }
        let tree = match Tree::start(children, cfg.actor_restarts, Some(on_restart)).await {
            Ok(tree) => Arc::new(tree),
            Err(e) => {
                stop_engines(&supervisors).await;
                return Err(anyhow::Error::new(e).context("cannot start the node's actors"));
            }
        };
        let models: Vec<String> = fleets.names();
        tracing::info!(%local, replicas = total, ?models, "node serving");
        let cluster = node.as_ref().map(|n| (n.id, n.listen));
        let done = tokio::spawn(serve(
            listeners.http,
            fleets,
            node,
            supervisors,
            tree.clone(),
            cfg.shutdown_grace,
            shutdown,
        ));
        Ok(Node {
            http: local,
            cluster,
            tree_running: tree,
            done: Some(done),
        })
    }

    /// Where the front door listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Cluster mode: this node's id and QUIC address.
    pub fn cluster(&self) -> Option<(u64, SocketAddr)> {
        self.cluster
    }

    /// The actors running now, by name.
    pub async fn actors(&self) -> Vec<&'static str> {
        self.tree_running.running().await
    }

    /// Fault injection for tests: panics the named actor.
    #[cfg(test)]
    pub fn panic_actor(&self, name: &'static str) {
        self.tree_running.panic(name);
    }

    /// Waits until the node has stopped: `Ok` after a requested shutdown, the reason
    /// when an actor kept failing.
    pub async fn wait(mut self) -> Result<()> {
        match self.done.take() {
            Some(task) => task.await.context("the node's task failed")?,
            None => Ok(()),
        }
    }
}

/// Stops every engine of the node (SIGTERM, SIGKILL after a grace).
async fn stop_engines(supervisors: &[Arc<Supervisor>]) {
    for s in supervisors {
        s.stop(Duration::from_secs(5)).await;
    }
}

/// One model's engines, launched (or given by URL) and asked what they serve.
struct Engines {
    /// The fleet's configuration, its model decided.
    cfg: NodeConfig,
    spec: launcher::EngineSpec,
    children: Vec<launcher::ChildReplica>,
    urls: Vec<String>,
    /// What each engine (by its place in `urls`) said it serves.
    discovered: std::collections::BTreeMap<usize, Vec<String>>,
    /// The node-wide number of the first engine.
    first: usize,
}

/// Launches (or finds) one model's engines, numbered from `first`, and asks them what
/// they serve before anything is named after a model (the cluster registry, the
/// profile): launched ones are ready, others get a moment.
async fn find_engines(mut cfg: NodeConfig, first: usize) -> Result<Engines> {
    let spec = launcher::EngineSpec {
        model: cfg.model.clone(),
        profile: cfg.profile_path.clone(),
        time_scale: cfg.time_scale,
        command: cfg.command.clone(),
        start_timeout: cfg.start_timeout,
    };
    let children = if cfg.launch > 0 {
        launcher::launch(first, cfg.launch, &spec).await?
    } else {
        Vec::new()
    };
    let urls: Vec<String> = if children.is_empty() {
        cfg.urls.clone()
    } else {
        children.iter().map(|c| c.url.clone()).collect()
    };
    let discovered = front::models::discover(
        &front::http_client(cfg.connect_timeout),
        &urls,
        DISCOVERY_WAIT.min(cfg.start_timeout),
    )
    .await;
    let majority = {
        let reports = discovered
            .iter()
            .map(|(i, m)| (ReplicaId(*i as u64), m.clone()))
            .collect();
        sluice_actors::router::ServedModels::decide(cfg.model_override.as_deref(), None, &reports)
            .model
    };
    match majority {
        Some(m) => cfg.serve_model(&m),
        None if !urls.is_empty() => tracing::warn!(
            engines = urls.len(),
            "no engine has said which model it serves yet; asking again as they come up"
        ),
        None => {}
    }
    Ok(Engines {
        cfg,
        spec,
        children,
        urls,
        discovered,
        first,
    })
}

/// One model's fleet, started: its front-door state, its engines' supervisor and its
/// actors.
struct StartedFleet {
    state: Arc<AppState>,
    supervisor: Arc<Supervisor>,
    actors: Vec<ChildSpec>,
}

/// Builds one model's fleet over its engines: the front door's state, the engines'
/// supervisor, and the fleet's actors (`handle`: the cluster's side of its engines).
async fn start_fleet(
    e: Engines,
    node: &Option<ClusterNode>,
    handle: Option<NodeHandle>,
    metrics: Arc<front::Metrics>,
    id_of: impl Fn(usize) -> ReplicaId + Clone + Send + Sync + 'static,
) -> Result<StartedFleet> {
    let Engines {
        cfg,
        spec,
        children,
        urls,
        discovered,
        first,
    } = e;
    let upstreams = urls
        .iter()
        .enumerate()
        .map(|(i, u)| front::Upstream::local(id_of(first + i), u))
        .collect::<Result<Vec<_>>>()?;
    let remote = node.as_ref().map(|n| n.client.clone());
    // Cluster mode: an engine that did not answer discovery is still loading; it is
    // registered `Starting` and held out of service until the registry says otherwise.
    let held: Vec<ReplicaId> = match node {
        Some(_) => (0..urls.len())
            .filter(|i| !discovered.contains_key(i))
            .map(|i| id_of(first + i))
            .collect(),
        None => Vec::new(),
    };
    let state = AppState::new(&cfg, upstreams, &held, remote, metrics)?;
    if let Some(n) = node {
        state.set_cluster_view(n.view_source());
    }
    if let Some(template) = cfg.command.as_deref() {
        if cfg.probe_prioritized && launcher::ignores_priority(template) {
            tracing::warn!(
                command = template,
                "this vLLM is started without `--scheduling-policy priority`: it ignores request \
                 priorities, so health probes queue behind real work and a busy healthy replica \
                 can be ejected; add the flag to [replicas] command"
            );
            for i in 0..cfg.launch {
                state.priority_ignored(id_of(first + i));
            }
        }
    }
    for (i, models) in discovered {
        state.learn_models(id_of(first + i), Some(models));
    }
    // The first incarnations were launched before supervision: the prober reads their
    // process groups' CPU time from the start.
    for (i, child) in children.iter().enumerate() {
        state.engine_up(id_of(first + i), 0, child.group());
    }
    let on_restart: OnRestart = {
        let state = state.clone();
        Arc::new(move |actor| state.actor_restarted(actor))
    };
    // Launched replicas are supervised: restarted with backoff when they exit.
    let (events, event_rx) = mpsc::unbounded_channel();
    let supervisor = Arc::new(
        Supervisor::start(
            first,
            children,
            spec,
            RestartPolicy::default(),
            cfg.actor_restarts,
            events,
            Some(on_restart),
        )
        .await
        .context("cannot start the engine supervisor")?,
    );
    let (eject_tx, eject_rx) = mpsc::unbounded_channel();
    state.set_ejection_sink(eject_tx);
    let mut actors = front::actors(&state);
    actors.push(engine_events(
        event_rx,
        state.clone(),
        handle.clone(),
        id_of,
    ));
    actors.push(ejections(eject_rx, supervisor.clone(), handle));
    Ok(StartedFleet {
        state,
        supervisor,
        actors,
    })
}

/// Serves until `shutdown` (or a meltdown of the tree), then stops in order: the front
/// door stops accepting and in-flight requests get `grace`; requests forwarded from
/// other nodes finish; the actors stop; Raft and the endpoint close; the engines stop.
async fn serve(
    listener: tokio::net::TcpListener,
    fleets: Arc<front::Fleets>,
    node: Option<ClusterNode>,
    supervisors: Vec<Arc<Supervisor>>,
    tree: Arc<Tree>,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stopping, mut stop_seen) = tokio::sync::watch::channel(false);
    // Token chunks are small writes: without TCP_NODELAY, Nagle's algorithm and the
    // client's delayed ACK hold each one back by up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let handle = node.as_ref().map(ClusterNode::node_handle);
    let draining = handle.clone();
    let meltdown = {
        let actors = tree.meltdown();
        let engines =
            futures_util::future::select_all(supervisors.iter().map(|s| Box::pin(s.meltdown())));
        async move {
            tokio::select! {
                why = actors => why,
                (why, _, _) = engines => why,
            }
        }
    };
    let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let failure = failed.clone();
    // A cluster node that has not applied the control state yet (a joiner or a
    // restarted follower gets the log within seconds) leaves the connections it is sent
    // in the listen queue for a while rather than answer them 503 at once; past the wait
    // it serves, and refuses what it cannot admit yet.
    fleets.first().wait_caught_up(CATCH_UP_WAIT).await;
    let server = async move {
        axum::serve(listener, front::app(fleets))
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = shutdown => {}
                    why = meltdown => {
                        tracing::error!(reason = %why, "an actor keeps failing; the node stops");
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                    }
                }
                let _ = stopping.send(true);
                // Other routers stop forwarding here while in-flight work finishes.
                if let Some(n) = draining {
                    n.drain_replicas().await;
                }
            })
            .await
    };
    let served = tokio::select! {
        r = server => r.context("front door failed"),
        _ = async {
            let _ = stop_seen.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "in-flight requests did not finish within the grace period");
            Ok(())
        }
    };
    tracing::info!("node stopping");
    if let Some(n) = &handle {
        // Requests forwarded from other nodes finish before the endpoint closes.
        n.forwarded_done(grace).await;
    }
    tree.stop().await;
    if let Some(node) = node {
        node.shutdown().await;
    }
    stop_engines(&supervisors).await;
    let failed = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failed {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => served,
    }
}

/// A channel's receiving end that outlives a restart of the actor reading it: no event
/// is lost to a restart (but the one whose handling failed).
type Inbox<T> = Arc<Mutex<mpsc::UnboundedReceiver<T>>>;

/// What waiting on an inbox found.
enum Next<T> {
    Event(T),
    /// Nothing for a second, or the actor is stopping: the turn ends, so the actor can
    /// hear its own messages.
    Quiet,
    /// Every sender is gone.
    Closed,
}

async fn next<T>(inbox: &Inbox<T>) -> Next<T> {
    let mut rx = inbox.lock().await;
    match crate::tree::bounded(rx.recv()).await {
        Some(Some(e)) => Next::Event(e),
        Some(None) => Next::Closed,
        None => Next::Quiet,
    }
}

/// The supervisor's events become routing changes and registry writes.
struct EngineEvents<F> {
    inbox: Inbox<Event>,
    state: Arc<AppState>,
    node: Option<NodeHandle>,
    id_of: F,
}

fn engine_events(
    rx: mpsc::UnboundedReceiver<Event>,
    state: Arc<AppState>,
    node: Option<NodeHandle>,
    id_of: impl Fn(usize) -> ReplicaId + Clone + Send + Sync + 'static,
) -> ChildSpec {
    let inbox: Inbox<Event> = Arc::new(Mutex::new(rx));
    ChildSpec::duty("engine-events", move || EngineEvents {
        inbox: inbox.clone(),
        state: state.clone(),
        node: node.clone(),
        id_of: id_of.clone(),
    })
}

impl<F: Fn(usize) -> ReplicaId + Send + 'static> Duty for EngineEvents<F> {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        let ev = match next(&self.inbox).await {
            Next::Event(ev) => ev,
            Next::Quiet => return Ok(Turn::Again),
            Next::Closed => return Ok(Turn::Done),
        };
        let (state, node) = (&self.state, &self.node);
        let (index, up) = match &ev {
            Event::Down(i) | Event::GaveUp(i) => (*i, None),
            Event::Up {
                index,
                url,
                incarnation,
                group,
            } => (*index, Some((url.clone(), *incarnation, *group))),
            Event::State(i, _) => (*i, None),
        };
        let id = (self.id_of)(index);
        if let Event::State(_, s) = ev {
            state.engine_state(id, s);
            return Ok(Turn::Again);
        }
        match up {
            Some((url, incarnation, group)) => {
                if let Err(e) = state.set_local_url(id, &url) {
                    tracing::warn!(error = %e, "restarted replica has a bad URL");
                }
                state.engine_up(id, incarnation, group);
                if incarnation > 0 {
                    state.engine_restarted(id);
                }
                state.replica_restored(id);
                if let Some(n) = node {
                    n.replica_moved(id, url).await;
                }
            }
            None => {
                state.replica_down(id);
                if let (Some(n), Event::GaveUp(_)) = (node, &ev) {
                    n.replica_failed(id).await;
                }
            }
        }
        Ok(Turn::Again)
    }
}

/// Replicas the prober ejects (hung without saying so) are marked unhealthy in the
/// registry and restarted.
struct Ejections {
    inbox: Inbox<front::Ejection>,
    supervisor: Arc<Supervisor>,
    node: Option<NodeHandle>,
}

fn ejections(
    rx: mpsc::UnboundedReceiver<front::Ejection>,
    supervisor: Arc<Supervisor>,
    node: Option<NodeHandle>,
) -> ChildSpec {
    let inbox: Inbox<front::Ejection> = Arc::new(Mutex::new(rx));
    ChildSpec::duty("ejections", move || Ejections {
        inbox: inbox.clone(),
        supervisor: supervisor.clone(),
        node: node.clone(),
    })
}

impl Duty for Ejections {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        let e = match next(&self.inbox).await {
            Next::Event(e) => e,
            Next::Quiet => return Ok(Turn::Again),
            Next::Closed => return Ok(Turn::Done),
        };
        if let front::Ejection::Ejected(id, incarnation) = e {
            if let Some(n) = &self.node {
                n.replica_failed(id).await;
            }
            self.supervisor
                .kill(cluster::local_index(id), incarnation)
                .await;
        }
        Ok(Turn::Again)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests;
