//! Cluster mode: this node's QUIC endpoint (mutual TLS from the cluster CA), its Raft
//! member, membership (join, voter placement, leave), the replica registry, the leader's
//! assigner rounds, and routing to replicas on other nodes.
//!
//! A data directory holds `tls/` (CA certificate, this node's key and certificate; the
//! CA key and join token only on the node that initialized the cluster) and `raft/` (the
//! durable log and snapshots).

mod actors;
pub mod call;
pub mod certs;
pub mod cli;
pub mod forward;
mod handler;
mod liveness;
pub mod raft_net;
pub mod reconcile;
pub mod rpc;
mod scale;

use crate::config::NodeConfig;
use crate::front::{FleetView, Fleets, Upstream};
use anyhow::{bail, Context, Result};
use forward::LocalReplicas;
use handler::{Membership, NodeHandler};
use raft_net::QuicRaft;
use rpc::{AdminRpc, Refusal, RpcError};
use sluice_actors::assigner::{initial_assignment, ReplicaInfo as AssignerReplica};
use sluice_actors::router::ReplicaSpec;
use sluice_actors::slice::{Assignment, ReplicaId};
use sluice_raft::{
    ControlCommand, ControlPlane, ControlPlaneConfig, ControlState, NodeAddr, NodeInfo,
    ReplicaHealth, ReplicaInfo, RoleHint,
};
use sluice_transport::{
    join_cluster, CaCert, Client, Endpoint, JoinOptions, JoinToken, NodeIdentity, TransportConfig,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const TLS_DIR: &str = "tls";
pub const RAFT_DIR: &str = "raft";
/// Present until the first node has formed the cluster.
pub const INIT_MARKER: &str = "initialize-on-start";

pub use sluice_actors::autoscaler::{local_index, replica_id};

/// What `node start` gets in cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterArgs {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub rack: String,
    pub join: Option<SocketAddr>,
    pub token: Option<String>,
    /// How often the router shares its in-flight load; zero: never.
    pub load_share: Duration,
}

/// A running cluster member.
pub struct ClusterNode {
    pub id: u64,
    /// Where its QUIC endpoint listens.
    pub listen: SocketAddr,
    pub cp: ControlPlane<QuicRaft>,
    pub endpoint: Endpoint,
    pub client: Arc<Client>,
    local: Arc<LocalReplicas>,
    handler: Arc<NodeHandler>,
    setup: Arc<Setup>,
}

/// One model's engines on this node, as the cluster registers them.
#[derive(Debug, Clone)]
pub struct LocalFleet {
    pub model: String,
    /// A replica's capacity, from the model's profile.
    pub capacity: f64,
    /// Engine index (unique on this node, across models) → URL.
    pub urls: Vec<(usize, String)>,
    /// Those of `urls` that answered at start; the others are still loading.
    pub answered: BTreeSet<usize>,
}

/// What the cluster side's actors are started with.
struct Setup {
    me: NodeInfo,
    join: Option<SocketAddr>,
    urls: HashMap<ReplicaId, String>,
    /// Those of `urls` that answered at start; the others are still loading.
    serving: HashSet<ReplicaId>,
    /// Each local replica's model and capacity.
    serves: HashMap<ReplicaId, (String, f64)>,
    /// A replica's capacity per model this node serves (what the autoscaler places).
    capacities: HashMap<String, f64>,
    load_share: Duration,
    report_every: Duration,
    autoscaler: Option<crate::config::LiveAutoscaler>,
    start_timeout: Duration,
    /// This node's TLS directory: where the CA key is, on the node that made it.
    tls: PathBuf,
    /// The CA this node trusts, and how long its certificates live.
    ca: CaCert,
    cert_lifetime: Duration,
}

/// What the supervisor's events need of the cluster: the node's replicas and registry.
#[derive(Clone)]
pub struct NodeHandle {
    pub id: u64,
    cp: ControlPlane<QuicRaft>,
    local: Arc<LocalReplicas>,
    model: String,
    capacity: f64,
}

impl NodeHandle {
    /// A replica restarted at `url`: forwarded requests and the registry follow it. A
    /// draining replica stays draining.
    pub async fn replica_moved(&self, id: ReplicaId, url: String) {
        self.local.insert(id, &url);
        let draining = self
            .cp
            .state()
            .borrow()
            .replica(id)
            .is_some_and(|r| r.health == ReplicaHealth::Draining);
        let info = ReplicaInfo {
            id,
            node: self.id,
            model: self.model.clone(),
            endpoint: url,
            capacity_mu_per_min: self.capacity,
            health: if draining {
                ReplicaHealth::Draining
            } else {
                ReplicaHealth::Healthy
            },
        };
        if let Err(e) = self.cp.write(ControlCommand::RegisterReplica(info)).await {
            tracing::warn!(replica = id.0, error = %e, "restarted replica not re-registered");
        }
    }

    /// A replica is given up: the registry marks it unhealthy, so the assigner moves its
    /// slices and every router stops sending to it.
    pub async fn replica_failed(&self, id: ReplicaId) {
        let cmd = ControlCommand::SetReplicaHealth {
            replica: id,
            health: ReplicaHealth::Unhealthy,
        };
        if let Err(e) = self.cp.write(cmd).await {
            tracing::warn!(replica = id.0, error = %e, "failed replica not marked unhealthy");
        }
    }
}

impl NodeHandle {
    /// A graceful stop begins: this node's replicas are marked draining so that other
    /// routers stop forwarding to them (they come back healthy when the node restarts).
    pub async fn drain_replicas(&self) {
        let mine: Vec<ReplicaId> = self.local.snapshot().into_keys().collect();
        for replica in mine {
            let cmd = ControlCommand::SetReplicaHealth {
                replica,
                health: ReplicaHealth::Draining,
            };
            match tokio::time::timeout(Duration::from_secs(2), self.cp.write(cmd)).await {
                Ok(Ok(_)) => {}
                _ => tracing::warn!(replica = replica.0, "could not mark a replica draining"),
            }
        }
    }

    /// Waits (up to `limit`) until no forwarded request is being served here.
    pub async fn forwarded_done(&self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while self.local.in_flight() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Which nodes route which models, as the control state says (each node lists the
/// models it routes under [`scale::MODELS_LABEL`]). Holds the handler weakly, as the
/// live view's source does: the front door holds this, and the handler the front door.
struct ModelDirectory {
    me: u64,
    handler: std::sync::Weak<NodeHandler>,
}

impl crate::front::handoff::Directory for ModelDirectory {
    fn routers_of(&self, model: &str) -> Vec<(u64, SocketAddr)> {
        let Some(handler) = self.handler.upgrade() else {
            return Vec::new();
        };
        handler.read_state(|state| {
            state
                .nodes()
                .values()
                .filter(|n| n.id != self.me && scale::routes(n).any(|m| m == model))
                .filter_map(|n| Some((n.id, n.quic_addr.parse().ok()?)))
                .collect()
        })
    }

    fn models(&self) -> Vec<String> {
        let Some(handler) = self.handler.upgrade() else {
            return Vec::new();
        };
        handler.read_state(|state| {
            let models: BTreeSet<&str> = state.nodes().values().flat_map(scale::routes).collect();
            models.into_iter().map(str::to_owned).collect()
        })
    }
}

impl ClusterNode {
    /// The front door's directory of the models other nodes route.
    pub fn directory(&self) -> Box<dyn crate::front::handoff::Directory> {
        Box::new(ModelDirectory {
            me: self.id,
            handler: Arc::downgrade(&self.handler),
        })
    }

    /// Where the live view learns the leader, the members and the registry. It holds
    /// the handler weakly: the handler reaches the front door, and a cycle would keep
    /// both (and the node's QUIC endpoint, its port bound) alive after the node stops.
    pub fn view_source(&self) -> crate::front::view::ClusterSource {
        let handler = Arc::downgrade(&self.handler);
        Box::new(move || {
            handler
                .upgrade()
                .map(|h| h.view_snapshot())
                .unwrap_or_default()
        })
    }

    /// The handle for node-wide duties (draining, reconciling), named after the node's
    /// first model.
    pub fn node_handle(&self) -> NodeHandle {
        let first = self.handler.models().first().cloned().unwrap_or_default();
        self.handle(&first)
    }

    /// What the supervisor's events of `model`'s engines need of the cluster.
    pub fn handle(&self, model: &str) -> NodeHandle {
        NodeHandle {
            id: self.id,
            cp: self.cp.clone(),
            local: self.local.clone(),
            model: model.to_owned(),
            capacity: self.setup.capacities.get(model).copied().unwrap_or(0.0),
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.cp.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.endpoint.close();
        // Peers learn of the close from the endpoint's last packets: without them their
        // connections to this address stay open, dead, until the idle timeout.
        self.endpoint.wait_idle(Duration::from_secs(1)).await;
    }
}

fn tls_dir(data: &Path) -> PathBuf {
    data.join(TLS_DIR)
}

/// This node's identity: from the data directory, or by joining with the token.
async fn identity(args: &ClusterArgs, listen: SocketAddr) -> Result<(NodeIdentity, CaCert)> {
    let tls = tls_dir(&args.data_dir);
    if tls.join("node.pem").exists() {
        let ca = CaCert::load(&tls).context("cannot read the cluster CA certificate")?;
        let id = NodeIdentity::load(&tls, &ca).context("cannot read this node's identity")?;
        return Ok((id, ca));
    }
    let (Some(peer), Some(token)) = (args.join, args.token.as_deref()) else {
        bail!(
            "{} holds no node identity: run `sluice cluster init --data-dir {}` for a new cluster, or pass --join PEER --token TOKEN",
            args.data_dir.display(),
            args.data_dir.display()
        );
    };
    let token: JoinToken = token
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid --token: {e}"))?;
    // The authority cannot decide while leadership moves (its write of a node id comes
    // back "leader changed"): that passes, so ask again for a while. A burnt id is
    // harmless.
    let transport = TransportConfig::default();
    let joined = call::retry("join", JOIN_BACKOFF, || {
        let options = JoinOptions {
            requested_node_id: None,
            rack: Some(args.rack.clone()),
            addresses: vec![listen],
        };
        let (token, transport) = (&token, &transport);
        async move { join_cluster(peer, token, options, transport).await }
    })
    .await
    .with_context(|| format!("cannot join the cluster through {peer}"))?;
    std::fs::create_dir_all(&tls).with_context(|| format!("cannot create {}", tls.display()))?;
    joined.save(&tls).context("cannot save the node identity")?;
    tracing::info!(node = joined.identity.node_id(), %peer, "joined the cluster");
    Ok((joined.identity, joined.ca))
}

/// Starts this node's cluster side: endpoint, Raft, membership, replica registration,
/// and the loops that keep the front door's fleet and the assignment current.
pub async fn start(
    cfg: &NodeConfig,
    args: &ClusterArgs,
    quic: std::net::UdpSocket,
    http: SocketAddr,
    fleets: &[LocalFleet],
    state_slot: Arc<tokio::sync::OnceCell<Arc<Fleets>>>,
    engine_sends: crate::front::engine_pool::SendCounts,
) -> Result<ClusterNode> {
    let bound = quic
        .local_addr()
        .context("cannot read the cluster socket's address")?;
    let (identity, ca) = identity(args, bound).await?;
    let id = identity.node_id();
    let endpoint = Endpoint::on_socket(quic, &identity, &ca, TransportConfig::default())
        .context("cannot serve cluster traffic")?;
    // The bound address (port 0 picks a free one).
    let listen = endpoint
        .local_addr()
        .context("cannot read the cluster endpoint's address")?;
    let client = Arc::new(Client::new(endpoint.clone()));
    let partition = raft_net::Partition::default();
    let cp = ControlPlane::open(
        id,
        args.data_dir.join(RAFT_DIR),
        QuicRaft {
            client: client.clone(),
            timeout: Duration::from_secs(2),
            partition: partition.clone(),
        },
        ControlPlaneConfig {
            // Notice a dead leader within about a second on a data-center network.
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            ..ControlPlaneConfig::default()
        },
    )
    .await
    .context("cannot open the Raft store")?;

    let local = Arc::new(LocalReplicas::new(crate::front::engine_pool(
        cfg.connect_timeout,
        engine_sends,
    )));
    let urls: HashMap<ReplicaId, String> = fleets
        .iter()
        .flat_map(|f| &f.urls)
        .map(|(i, u)| (replica_id(id, *i), u.trim_end_matches('/').to_owned()))
        .collect();
    local.set(urls.clone());
    let serving: HashSet<ReplicaId> = fleets
        .iter()
        .flat_map(|f| &f.answered)
        .map(|&i| replica_id(id, i))
        .collect();
    let serves: HashMap<ReplicaId, (String, f64)> = fleets
        .iter()
        .flat_map(|f| {
            f.urls
                .iter()
                .map(|(i, _)| (replica_id(id, *i), (f.model.clone(), f.capacity)))
        })
        .collect();
    let handler = Arc::new(NodeHandler::new(
        cp.clone(),
        client.clone(),
        partition,
        local.clone(),
        fleets.iter().map(|f| f.model.clone()).collect(),
        cfg.assigner.clone().unwrap_or_default(),
        state_slot,
    ));
    let authority = handler::authority(cp.clone(), cfg.cert_lifetime);
    tokio::spawn(sluice_transport::serve(
        endpoint.clone(),
        handler.clone(),
        Some(authority),
    ));

    let marker = args.data_dir.join(INIT_MARKER);
    if marker.exists() {
        let members = BTreeMap::from([(id, NodeAddr::new(listen.to_string()))]);
        match cp.initialize(members).await {
            Ok(()) | Err(sluice_raft::ControlPlaneError::AlreadyInitialized) => {}
            Err(e) => return Err(e).context("cannot form the cluster"),
        }
        let _ = std::fs::remove_file(&marker);
    }
    let me = NodeInfo {
        id,
        quic_addr: listen.to_string(),
        http_addr: http.to_string(),
        rack: args.rack.clone(),
        // Where the autoscaler may place each model.
        labels: BTreeMap::from([(
            scale::MODELS_LABEL.to_owned(),
            fleets
                .iter()
                .map(|f| f.model.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )]),
        roles: BTreeSet::from([RoleHint::Voter, RoleHint::Router, RoleHint::Supervisor]),
        gpus: u32::try_from(cfg.gpus).unwrap_or(u32::MAX),
    };
    // The autoscaler decides on fresh load: routers report at least once per tick.
    let report_every = cfg
        .autoscaler
        .as_ref()
        .map_or(REPORT_EVERY, |a| a.tick.min(REPORT_EVERY));
    let node = ClusterNode {
        id,
        listen,
        cp: cp.clone(),
        endpoint,
        client: client.clone(),
        local: local.clone(),
        handler,
        setup: Arc::new(Setup {
            me,
            join: args.join,
            urls,
            serving,
            serves,
            capacities: fleets
                .iter()
                .map(|f| (f.model.clone(), f.capacity))
                .collect(),
            load_share: args.load_share,
            report_every,
            autoscaler: cfg.autoscaler.clone(),
            start_timeout: cfg.start_timeout,
            tls: tls_dir(&args.data_dir),
            ca,
            cert_lifetime: cfg.cert_lifetime,
        }),
    };
    Ok(node)
}

pub(crate) use actors::next_change;

/// Makes sure the control state lists this node and Raft counts it as a member: the
/// leader (possibly this node) adds it as a learner, records it, and re-chooses voters.
async fn become_member(
    id: u64,
    cp: &ControlPlane<QuicRaft>,
    client: &Client,
    handler: &Arc<NodeHandler>,
    me: NodeInfo,
    peer: Option<SocketAddr>,
) -> Result<(), RpcError> {
    loop {
        let member = call::retry("membership", MEMBERSHIP_BACKOFF, || async {
            let recorded = cp.state().borrow().node(id) == Some(&me);
            if recorded && cp.metrics().members.contains_key(&id) {
                return Ok::<_, RpcError>(true);
            }
            let leader = match handler.leader_addr() {
                Some(Membership::Me) => {
                    handler.admit(me.clone()).await?;
                    return Ok(false);
                }
                Some(Membership::At(addr)) => addr,
                None => peer.ok_or(RpcError::Refused(Refusal::NoLeader))?,
            };
            call::admin(client, leader, AdminRpc::Join(me.clone())).await?;
            Ok(false)
        })
        .await?;
        if member {
            return Ok(());
        }
    }
}

/// Registers this node's replicas — healthy if they answered at start (`serving`), else
/// `Starting` until they do — and removes registrations of replicas it no longer runs.
async fn register_replicas(
    node_id: u64,
    cp: &ControlPlane<QuicRaft>,
    urls: &HashMap<ReplicaId, String>,
    serving: &HashSet<ReplicaId>,
    serves: &HashMap<ReplicaId, (String, f64)>,
) -> Result<()> {
    let state = cp.state().borrow().clone();
    for r in state.replicas().values() {
        if r.node == node_id && !urls.contains_key(&r.id) {
            cp.write(ControlCommand::RemoveReplica(r.id))
                .await
                .context("cannot remove a stale replica")?;
        }
    }
    let mut ids: Vec<_> = urls.keys().copied().collect();
    ids.sort();
    for rid in ids {
        let Some((model, capacity)) = serves.get(&rid) else {
            continue;
        };
        let info = ReplicaInfo {
            id: rid,
            node: node_id,
            model: model.clone(),
            endpoint: urls[&rid].clone(),
            capacity_mu_per_min: *capacity,
            health: if serving.contains(&rid) {
                ReplicaHealth::Healthy
            } else {
                ReplicaHealth::Starting
            },
        };
        if state.replica(rid) == Some(&info) {
            continue;
        }
        let r = cp
            .write(ControlCommand::RegisterReplica(info))
            .await
            .context("cannot register a replica")?;
        if r.is_rejected() {
            bail!("registering replica {} was rejected: {r:?}", rid.0);
        }
    }
    Ok(())
}

/// How a joining node keeps asking while the cluster cannot decide.
const JOIN_BACKOFF: call::Backoff = call::Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(2),
    give_up_after: Duration::from_secs(30),
};

/// How a node keeps asking to be made a member while leadership and other joins settle.
const MEMBERSHIP_BACKOFF: call::Backoff = call::Backoff {
    first: Duration::from_millis(300),
    max: Duration::from_secs(1),
    give_up_after: Duration::from_secs(30),
};

/// How often routers report their load to the leader when no autoscaler asks for more.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The front door's view of the fleet from the control state: every registered replica
/// of the model, local ones over HTTP and the others through their nodes, and the
/// committed assignment (or, before the leader has committed one, the deterministic
/// initial assignment every node computes alike). A replica the node cannot reach (its
/// node unrecorded or its address unreadable) is left out, not the whole fleet; `None`
/// only when the model has no replica to show.
pub fn fleet_of(
    state: &ControlState,
    me: u64,
    model: &str,
    local: &HashMap<ReplicaId, String>,
    assigner: &sluice_actors::assigner::AssignerConfig,
) -> Option<FleetView> {
    let mut upstreams = Vec::new();
    let mut health = Vec::new();
    for r in state.replicas().values().filter(|r| r.model == model) {
        let up = if r.node == me {
            match local.get(&r.id).map(|url| Upstream::local(r.id, url)) {
                Some(Ok(up)) => up,
                _ => continue,
            }
        } else {
            let addr = state
                .node(r.node)
                .map(|n| n.quic_addr.parse::<SocketAddr>());
            match addr {
                Some(Ok(addr)) => Upstream::remote(r.id, addr),
                _ => continue,
            }
        };
        let spec = ReplicaSpec {
            id: r.id,
            capacity_mu_per_min: r.capacity_mu_per_min,
            host: r.node,
            rack: ReplicaSpec::rack_of(&rack_of(state, r.node)),
        };
        upstreams.push((up, spec));
        health.push((r.id, liveness::standing(r.health).routable(r.node == me)));
    }
    if upstreams.is_empty() {
        return None;
    }
    let assignment = match state.assignment(model) {
        Some(a) => a.clone(),
        None => first_assignment(state, model, assigner)?,
    };
    Some(FleetView {
        upstreams,
        health,
        assignment,
    })
}

/// The initial assignment over the model's eligible replicas; when none is eligible
/// (every one marked before the leader committed a map), over all of them, so that the
/// door still gets the fleet's view — every replica out of service, requests answered
/// 503 — rather than keeping the one it had before the marks.
fn first_assignment(
    state: &ControlState,
    model: &str,
    assigner: &sluice_actors::assigner::AssignerConfig,
) -> Option<Assignment> {
    let mut replicas = registry(state, model);
    initial_assignment(&replicas, assigner).ok().or_else(|| {
        for r in &mut replicas {
            r.healthy = true;
            r.draining = false;
        }
        initial_assignment(&replicas, assigner).ok()
    })
}

/// A node's rack; a node not (yet) recorded is a rack of its own.
fn rack_of(state: &ControlState, node: u64) -> String {
    state
        .node(node)
        .map_or_else(|| format!("node-{node}"), |n| n.rack.clone())
}

/// The registry as the assigner sees it: replicas with their nodes' racks.
pub fn registry(state: &ControlState, model: &str) -> Vec<AssignerReplica> {
    state
        .replicas()
        .values()
        .filter(|r| r.model == model)
        .map(|r| AssignerReplica {
            id: r.id,
            rack: rack_of(state, r.node),
            capacity_mu_per_min: r.capacity_mu_per_min,
            healthy: r.health == ReplicaHealth::Healthy,
            draining: r.health == ReplicaHealth::Draining,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_raft::{apply, NodeInfo, ReplicaInfo, RoleHint};

    fn node(id: u64) -> NodeInfo {
        NodeInfo {
            id,
            quic_addr: format!("127.0.0.1:{}", 7000 + id),
            http_addr: format!("127.0.0.1:{}", 8000 + id),
            rack: format!("rack-{id}"),
            labels: Default::default(),
            roles: [RoleHint::Voter].into(),
            gpus: 1,
        }
    }

    /// Two nodes; replica 1 on node 1, replicas 2 and 3 on node 2, all of model "m".
    fn two_nodes(health: ReplicaHealth) -> ControlState {
        let mut state = ControlState::default();
        apply(&mut state, ControlCommand::AddNode(node(1)));
        apply(&mut state, ControlCommand::AddNode(node(2)));
        for (id, on) in [(1, 1), (2, 2), (3, 2)] {
            let replica = ReplicaInfo {
                id: ReplicaId(id),
                node: on,
                model: "m".into(),
                endpoint: format!("http://127.0.0.1:{}", 9000 + id),
                capacity_mu_per_min: 100.0,
                health,
            };
            apply(&mut state, ControlCommand::RegisterReplica(replica));
        }
        state
    }

    #[test]
    fn a_fleet_with_every_replica_out_before_any_assignment_is_still_shown() {
        // Every replica marked before the leader committed a map: the door must see
        // them all out of service (and answer 503), not keep its older view.
        let state = two_nodes(ReplicaHealth::Unhealthy);
        assert!(state.assignment("m").is_none());
        let local = HashMap::from([(ReplicaId(1), "http://127.0.0.1:9001".to_owned())]);
        let assigner = sluice_actors::assigner::AssignerConfig::default();
        let fleet = fleet_of(&state, 1, "m", &local, &assigner).expect("a fleet");
        assert!(fleet.health.iter().all(|(_, up)| !up), "{:?}", fleet.health);
        assert_eq!(fleet.upstreams.len(), 3);
        assert!(!fleet.assignment.slices().is_empty());
        // A replica whose node is not recorded is left out, not the whole fleet.
        let mut state = two_nodes(ReplicaHealth::Healthy);
        apply(
            &mut state,
            ControlCommand::RegisterReplica(ReplicaInfo {
                id: ReplicaId(4),
                node: 9,
                model: "m".into(),
                endpoint: "http://127.0.0.1:9004".into(),
                capacity_mu_per_min: 100.0,
                health: ReplicaHealth::Healthy,
            }),
        );
        let fleet = fleet_of(&state, 1, "m", &local, &assigner).expect("a fleet");
        let ids: Vec<_> = fleet.upstreams.iter().map(|(_, spec)| spec.id).collect();
        assert_eq!(ids, vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]);
    }

    #[test]
    fn a_node_does_not_take_its_own_replicas_for_unreachable() {
        let mut state = two_nodes(ReplicaHealth::Healthy);
        // The leader has not heard from node 1 for a while, nor had it from node 2
        // about replica 2 (say a report was lost).
        for id in [1, 2] {
            apply(
                &mut state,
                ControlCommand::MarkReachable {
                    replica: ReplicaId(id),
                    reachable: false,
                },
            );
        }
        let local = HashMap::from([(ReplicaId(1), "http://127.0.0.1:9001".to_owned())]);
        let assigner = sluice_actors::assigner::AssignerConfig::default();
        let fleet = fleet_of(&state, 1, "m", &local, &assigner).expect("a fleet");
        // Node 1 serves from its own replica; the other node's marked one stays out.
        assert_eq!(
            fleet.health,
            vec![
                (ReplicaId(1), true),
                (ReplicaId(2), false),
                (ReplicaId(3), true)
            ]
        );
    }
}
