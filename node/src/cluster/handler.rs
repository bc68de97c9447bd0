//! Serves the node's QUIC traffic and runs the leader's duties: Raft messages, joins
//! (membership, voter placement), removals, status, load reports, the assigner rounds,
//! and forwarded requests for local replicas.

use super::forward::LocalReplicas;
use super::raft_net::QuicRaft;
use super::rpc::{
    AdminAnswer, AdminRpc, ClusterStatus, DrillRpc, LoadRpc, NodeReply, NodeRpc, NodeStatus,
    Refusal, ReplicaStatus, RpcError, SliceStatus,
};
use super::{fleet_of, registry};
use crate::front::Fleets;
use anyhow::Context as _;
use sluice_actors::assigner::{next_assignment, LoadReport, Schedule, ScheduleConfig};
use sluice_raft::voter_policy::{choose_voters, VoterCandidate, DESIRED_VOTERS};
use sluice_raft::{
    ControlCommand, ControlPlane, ControlPlaneError, ControlResponse, ControlState, NodeAddr,
    NodeInfo, Role,
};
use sluice_transport::join::BoxFuture;
use sluice_transport::{
    ClusterCa, JoinAuthority, JoinRefusal, JoinRequest, JoinResponse, JoinToken, Reply,
};
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Set to `1` in a node's environment to honour chaos drills' hooks.
pub const DRILL_HOOKS_ENV: &str = "SLUICE_DRILL_HOOKS";

/// Where the leader is, as this node sees it.
pub enum Membership {
    Me,
    At(SocketAddr),
}

pub struct NodeHandler {
    cp: ControlPlane<QuicRaft>,
    client: Arc<sluice_transport::Client>,
    partition: super::raft_net::Partition,
    local: Arc<LocalReplicas>,
    /// The models this node's front door routes, its own first.
    models: Vec<String>,
    schedule: ScheduleConfig,
    /// The leader's books per model of the cluster (leader only).
    desks: Arc<Mutex<HashMap<String, Desk>>>,
    /// When each node's router last reported its load or gossiped: the leader's view of
    /// who is live.
    seen: Mutex<std::collections::HashMap<u64, Instant>>,
    front: Arc<tokio::sync::OnceCell<Arc<Fleets>>>,
    started: Instant,
    /// Whether chaos drills' hooks (cutting the node off) are honoured.
    drill_hooks: bool,
}

/// What the leader keeps for one model: its assigner rounds and the load they balance,
/// and what its autoscaler measured.
struct Desk {
    schedule: Schedule,
    /// Load reports since the last round.
    load: Option<LoadReport>,
    /// MU reported since the autoscaler's last tick.
    mu_since: f64,
    /// The offered MU/min the autoscaler saw at its last tick.
    offered: Option<f64>,
}

impl NodeHandler {
    pub fn new(
        cp: ControlPlane<QuicRaft>,
        client: Arc<sluice_transport::Client>,
        partition: super::raft_net::Partition,
        local: Arc<LocalReplicas>,
        models: Vec<String>,
        schedule: ScheduleConfig,
        front: Arc<tokio::sync::OnceCell<Arc<Fleets>>>,
    ) -> Self {
        Self {
            cp,
            client,
            partition,
            local,
            models,
            schedule,
            desks: Arc::new(Mutex::new(HashMap::new())),
            seen: Mutex::new(std::collections::HashMap::new()),
            front,
            started: Instant::now(),
            drill_hooks: std::env::var_os(DRILL_HOOKS_ENV).is_some_and(|v| v == "1"),
        }
    }

    fn assigner_config(&self) -> sluice_actors::assigner::AssignerConfig {
        self.schedule.assigner.clone()
    }

    /// Runs `f` on `model`'s desk, opened on first use.
    fn desk<R>(&self, model: &str, f: impl FnOnce(&mut Desk) -> R) -> R {
        let mut desks = self.desks.lock().unwrap_or_else(|p| p.into_inner());
        let desk = desks.entry(model.to_owned()).or_insert_with(|| Desk {
            schedule: Schedule::new(self.schedule.clone(), 0),
            load: None,
            mu_since: 0.0,
            offered: None,
        });
        f(desk)
    }

    /// Reads the control state as this node last applied it.
    pub fn read_state<R>(&self, read: impl FnOnce(&ControlState) -> R) -> R {
        read(&self.cp.state().borrow())
    }

    pub fn front(&self) -> Option<Arc<Fleets>> {
        self.front.get().cloned()
    }

    /// The fleet of `model`, if this node's front door routes it.
    pub fn fleet(&self, model: &str) -> Option<Arc<crate::front::AppState>> {
        self.front()?.of(model).cloned()
    }

    /// When this node began: it hears its peers' gossip from then on.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn leader_addr(&self) -> Option<Membership> {
        let m = self.cp.metrics();
        let leader = m.leader?;
        if leader == m.id && m.role == Role::Leader {
            return Some(Membership::Me);
        }
        m.members
            .get(&leader)
            .and_then(|a| a.quic.parse().ok())
            .map(Membership::At)
    }

    pub(super) fn is_leader(&self) -> bool {
        matches!(self.leader_addr(), Some(Membership::Me))
    }

    /// Leader: makes `info` a member (learner first), records it, re-chooses voters.
    pub async fn admit(&self, info: NodeInfo) -> Result<(), ControlPlaneError> {
        let m = self.cp.metrics();
        if !m.members.contains_key(&info.id) {
            self.cp
                .add_learner(info.id, NodeAddr::new(info.quic_addr.clone()))
                .await?;
        }
        let state = self.cp.state().borrow().clone();
        let cmd = if state.node(info.id).is_some() {
            ControlCommand::UpdateNode(info)
        } else {
            ControlCommand::AddNode(info)
        };
        if let ControlResponse::Rejected(r) = self.cp.write(cmd).await? {
            // The state machine said no and nothing changed (not "outcome unknown").
            return Err(ControlPlaneError::Refused(r.to_string()));
        }
        self.place_voters(None).await
    }

    /// Chooses voters among the recorded members (without `leaving`) so that losing a
    /// rack keeps a quorum where the racks allow, and applies the choice if it differs.
    async fn place_voters(&self, leaving: Option<u64>) -> Result<(), ControlPlaneError> {
        let m = self.cp.metrics();
        let state = self.cp.state().borrow().clone();
        let candidates: Vec<VoterCandidate> = state
            .nodes()
            .values()
            .filter(|n| Some(n.id) != leaving && m.members.contains_key(&n.id))
            .map(|n| VoterCandidate {
                id: n.id,
                rack: n.rack.clone(),
                is_voter: m.voters.contains(&n.id),
            })
            .collect();
        let voters = choose_voters(&candidates, DESIRED_VOTERS);
        if !voters.is_empty() && voters != m.voters {
            tracing::info!(?voters, "changing the voter set");
            // Members left out of the voters stay on as learners, so that their copy
            // of the control state keeps up.
            self.cp.change_membership(voters).await?;
        }
        Ok(())
    }

    async fn remove(&self, id: u64) -> Result<(), ControlPlaneError> {
        self.place_voters(Some(id)).await?;
        // Removing the leader's own seat moves leadership: the record is written through
        // whoever leads next (RemoveNode is idempotent, so retrying is safe).
        super::call::retry("removal record", super::call::WRITE_BACKOFF, || {
            self.cp.write(ControlCommand::RemoveNode(id))
        })
        .await
        .map(drop)
    }

    pub fn add_load(&self, model: &str, report: &LoadReport) {
        // Re-stamped on this node's clock: the routers' clocks started at other times.
        let received = report.received(self.now_us());
        self.desk(model, |d| {
            // Corrections of finished requests are negative where the estimate was
            // high; they count against the admissions they correct.
            d.mu_since += report.mu.iter().filter(|v| v.is_finite()).sum::<f64>();
            LoadReport::accumulate(&mut d.load, &received);
        });
    }

    /// MU the routers reported for `model` since the last call. A net negative
    /// (corrections of earlier over-estimates) is carried over to offset the next
    /// admissions.
    pub(super) fn take_mu(&self, model: &str) -> f64 {
        self.desk(model, |d| {
            if d.mu_since < 0.0 {
                return 0.0;
            }
            std::mem::take(&mut d.mu_since)
        })
    }

    /// Forgets the MU reported for every model (another term's).
    pub(super) fn forget_mu(&self) {
        for d in self
            .desks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            d.mu_since = 0.0;
        }
    }

    /// Nodes whose router reported within `within` (this node always counts).
    pub(super) fn live_nodes(&self, within: Duration) -> BTreeSet<u64> {
        let me = self.cp.metrics().id;
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|(_, at)| at.elapsed() <= within)
            .map(|(id, _)| *id)
            .chain(std::iter::once(me))
            .collect()
    }

    /// The autoscaler's latest reading of `model`'s offered load, for `cluster status`.
    pub(super) fn set_offered(&self, model: &str, mu_per_min: Option<f64>) {
        self.desk(model, |d| d.offered = mu_per_min);
    }

    /// The autoscaler's latest reading of `model`'s offered load (leader only).
    fn offered(&self, model: &str) -> Option<f64> {
        self.desks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .and_then(|d| d.offered)
    }

    /// No autoscaler reading counts any more (this node stopped leading).
    pub(super) fn clear_offered(&self) {
        for d in self
            .desks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            d.offered = None;
        }
    }

    pub(super) fn control(&self) -> &ControlPlane<QuicRaft> {
        &self.cp
    }

    /// Commits a leader's decision, logging (not failing on) a refusal or an unknown
    /// outcome: the leader's next tick decides again from the state as it then is.
    pub(super) async fn commit_logged(&self, cmd: ControlCommand) {
        let what = cmd.to_string();
        match self.cp.write(cmd).await {
            Ok(r) if r.is_rejected() => tracing::warn!(command = %what, answer = ?r, "refused"),
            Ok(_) => {}
            Err(e) => tracing::warn!(command = %what, error = %e, "not committed"),
        }
    }

    /// The models this node's front door routes, its own first.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The cluster's side of the live view.
    pub fn view_snapshot(&self) -> crate::front::view::ClusterSnapshot {
        let s = self.status();
        crate::front::view::ClusterSnapshot {
            node: s.answered_by,
            leader: s.leader,
            term: s.term,
            members: s
                .nodes
                .into_iter()
                .map(|n| crate::front::view::Member {
                    id: n.id,
                    role: n.role,
                    rack: n.rack,
                    http: n.http,
                })
                .collect(),
            replicas: s
                .replicas
                .into_iter()
                .map(|r| (r.id, (r.node, r.health)))
                .collect(),
        }
    }

    fn status(&self) -> ClusterStatus {
        let m = self.cp.metrics();
        let state = self.cp.state().borrow().clone();
        let own = self.models.first().map_or("", String::as_str);
        let role = |id: u64| {
            if m.leader == Some(id) {
                "leader"
            } else if m.voters.contains(&id) {
                "voter"
            } else if m.learners.contains(&id) {
                "learner"
            } else {
                "member"
            }
        };
        ClusterStatus {
            leader: m.leader,
            nodes: state
                .nodes()
                .values()
                .map(|n| NodeStatus {
                    id: n.id,
                    role: role(n.id).into(),
                    rack: n.rack.clone(),
                    http: n.http_addr.clone(),
                    quic: n.quic_addr.clone(),
                    gpus: n.gpus,
                })
                .collect(),
            replicas: state
                .replicas()
                .values()
                .map(|r| ReplicaStatus {
                    id: r.id.0,
                    node: r.node,
                    model: r.model.clone(),
                    endpoint: r.endpoint.clone(),
                    health: format!("{:?}", r.health).to_lowercase(),
                })
                .collect(),
            generation: state.assignment(own).map_or(0, |a| a.generation),
            slices: state.assignment(own).map_or_else(Vec::new, |a| {
                a.slices()
                    .iter()
                    .map(|s| SliceStatus {
                        start: s.start.0,
                        subset: s.subset.iter().map(|r| r.0).collect(),
                    })
                    .collect()
            }),
            desired: state.desired_replicas().get(own).copied(),
            offered_mu_per_min: self.offered(own),
            models: state
                .models()
                .into_iter()
                .map(|model| {
                    let replicas: Vec<_> = state.replicas_of_model(model).collect();
                    super::rpc::ModelStatus {
                        model: model.to_owned(),
                        replicas: replicas.len(),
                        healthy: replicas
                            .iter()
                            .filter(|r| r.health == sluice_raft::ReplicaHealth::Healthy)
                            .count(),
                        generation: state.assignment(model).map_or(0, |a| a.generation),
                        slices: state.assignment(model).map_or(0, |a| a.slices().len()),
                        desired: state.desired_replicas().get(model).copied(),
                        offered_mu_per_min: self.offered(model),
                    }
                })
                .collect(),
            answered_by: m.id,
            term: m.term,
            tenants: state.tenants().keys().cloned().collect(),
            reservations: state.reservations().clone(),
            blast_radius: state.blast_radius().clone(),
            join_tokens: state
                .authority()
                .map_or_else(Vec::new, |a| a.tokens.keys().cloned().collect()),
            ca_sha256: state.authority().and_then(|a| sha256_of(&a.ca_cert_pem)),
            ca_rotation: state.authority().and_then(|a| {
                let r = a.rotation.as_ref()?;
                Some(super::rpc::CaRotationStatus {
                    phase: match r.phase {
                        sluice_raft::RotationPhase::Trusting => "trusting",
                        sluice_raft::RotationPhase::Renewing => "renewing",
                    }
                    .to_owned(),
                    to_sha256: a.rotating_to().and_then(sha256_of).unwrap_or_default(),
                    done: r.done.iter().copied().collect(),
                })
            }),
        }
    }

    /// The router's side of the control state, on every node: the fleet it routes to,
    /// the tenants it admits.
    pub(super) fn apply_control(&self, state: &ControlState) {
        let Some(fleets) = self.front() else {
            return;
        };
        let local = self.local.snapshot();
        let me = self.cp.metrics().id;
        let assigner = self.assigner_config();
        let caught_up = self.caught_up(state);
        let keys = crate::tenants::keys::KeyRing::new(
            state
                .tenants()
                .iter()
                .map(|(name, t)| (name.clone(), t.key_sha256)),
        );
        // Each fleet: its model's replicas and slices, and the tenants' reservations of it.
        for (model, front) in fleets.named() {
            if let Some(fleet) = fleet_of(state, me, model, &local, &assigner) {
                front.set_fleet(fleet);
            }
            let reservations = state
                .reservations()
                .iter()
                .filter_map(|(t, m)| Some((t.clone(), *m.get(model)?)))
                .collect();
            front.set_tenants(me, keys.clone(), reservations, state.blast_radius().clone());
            if !front.caught_up() && caught_up {
                front.set_caught_up();
            }
        }
    }

    /// Whether this node has applied the cluster's control state: its own record is in
    /// it (so is everything committed before it joined, the tenants above all) and all
    /// it knows to be committed is applied. A node restarted with its log on disk has;
    /// a joiner, or a node whose log was lost, has not until the leader sends it.
    fn caught_up(&self, state: &ControlState) -> bool {
        let m = self.cp.metrics();
        state.node(m.id).is_some() && m.last_applied_index >= m.committed_index
    }

    /// How often the leader runs a full assigner round.
    pub(super) fn round_period(&self) -> Duration {
        Duration::from_micros(self.schedule.period_us.max(1_000_000))
    }

    /// One leader step of the assigner for every model of the cluster: a fresh initial
    /// assignment when replicas joined (or none exists), a repair when some left or
    /// failed, a full round when `round`.
    pub(super) async fn assign(&self, round: bool) -> Result<(), ControlPlaneError> {
        let state = self.cp.state().borrow().clone();
        for model in state.models() {
            let reg = registry(&state, model);
            let now = self.now_us();
            let current = state.assignment(model).cloned();
            let mut schedule = self.desk(model, |d| d.schedule.clone());
            let (desks, name, config) =
                (self.desks.clone(), model.to_owned(), self.assigner_config());
            // A round over a large fleet takes a while (half a second at 10,000
            // replicas rebalancing a new skew, docs/BENCHMARKS.md): off the runtime's
            // threads, with the desks unlocked so that load reports keep coming in.
            let step = tokio::task::spawn_blocking(move || {
                let take = || {
                    let mut desks = desks.lock().unwrap_or_else(|p| p.into_inner());
                    desks.get_mut(&name).and_then(|d| d.load.take())
                };
                let next = next_assignment(
                    current.as_ref(),
                    &reg,
                    round,
                    &mut schedule,
                    take,
                    now,
                    &config,
                );
                (next, schedule)
            });
            let (next, schedule) = match step.await {
                Ok(done) => done,
                // A panic in the round fails the assigner actor, which its supervisor
                // restarts; a cancelled one means the runtime is shutting down.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return Ok(()),
            };
            self.desk(model, |d| d.schedule = schedule);
            if let Some(assignment) = next {
                tracing::info!(
                    model,
                    generation = assignment.generation,
                    "committing an assignment"
                );
                self.cp
                    .write(ControlCommand::SetAssignment {
                        model: model.to_owned(),
                        assignment,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Membership changes that must run on the leader, forwarded there once if this
    /// node is not it.
    async fn on_leader(&self, rpc: AdminRpc, may_forward: bool) -> Result<AdminAnswer, RpcError> {
        match self.leader_addr() {
            Some(Membership::Me) => {
                match &rpc {
                    AdminRpc::Join(info) => self.admit(info.clone()).await?,
                    AdminRpc::Remove(id) => self.remove(*id).await?,
                    _ => {}
                }
                Ok(AdminAnswer::Done)
            }
            Some(Membership::At(addr)) if may_forward => {
                super::call::admin(&self.client, addr, AdminRpc::AtLeader(Box::new(rpc))).await
            }
            Some(Membership::At(addr)) => Err(RpcError::Refused(Refusal::NotLeader(addr))),
            None => Err(RpcError::Refused(Refusal::NoLeader)),
        }
    }

    /// Membership and operators' requests.
    async fn admin(&self, peer: u64, rpc: AdminRpc) -> Result<AdminAnswer, RpcError> {
        match rpc {
            AdminRpc::Join(info) if info.id != peer => Err(RpcError::Refused(Refusal::Invalid(
                format!("node {peer} cannot join as node {}", info.id),
            ))),
            rpc @ (AdminRpc::Join(_) | AdminRpc::Remove(_)) => self.on_leader(rpc, true).await,
            // Forwarded by a node that believed this one leads: never forwarded again.
            AdminRpc::AtLeader(rpc) => match *rpc {
                AdminRpc::AtLeader(_) => Err(RpcError::Refused(Refusal::Invalid(
                    "nested forwarding".into(),
                ))),
                rpc => self.on_leader(rpc, false).await,
            },
            AdminRpc::Status => Ok(AdminAnswer::Status(Box::new(self.status()))),
            AdminRpc::Write(cmd) => match self.cp.write(cmd).await? {
                ControlResponse::Rejected(r) => {
                    Err(RpcError::Refused(Refusal::Rejected(r.to_string())))
                }
                _ => Ok(AdminAnswer::Done),
            },
        }
    }

    /// Load reports to the leader and gossip between routers.
    fn load(&self, peer: u64, rpc: LoadRpc) {
        // Either is word from the peer's router: the leader's view of who is live.
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
        match rpc {
            LoadRpc::Report { model, report } => {
                // Only models the registry has get a desk: a peer cannot make them grow.
                let known = self.cp.state().borrow().models().contains(model.as_str());
                if self.is_leader() && known {
                    self.add_load(&model, &report);
                }
            }
            LoadRpc::Gossip(g) => {
                if let Some(fleets) = self.front() {
                    for (model, front) in fleets.named() {
                        front.peer_load(peer, g.loads.clone());
                        if let Some((_, demand)) = g.demand.iter().find(|(m, _)| m == model) {
                            front.peer_demand(peer, demand.clone());
                        }
                        front.peer_implications(&g.implicated);
                        front.streams_stalled(&g.stalled);
                        front.peers_heard(&g.heard);
                    }
                }
            }
        }
    }

    /// Chaos drills' hooks, only on a node started for drills.
    fn drill(&self, rpc: DrillRpc) -> Result<(), RpcError> {
        if !self.drill_hooks {
            return Err(RpcError::Refused(Refusal::DrillHooksOff));
        }
        match rpc {
            DrillRpc::Isolate(nodes) => {
                tracing::warn!(?nodes, "partition: cutting this node off from nodes");
                self.partition.set(nodes);
            }
        }
        Ok(())
    }
}

impl sluice_transport::Handler for NodeHandler {
    type Request = NodeRpc;

    async fn handle(&self, peer: u64, request: NodeRpc, reply: Reply) {
        if self.partition.blocks(peer) {
            // Partitioned: nothing is handled; the stream is reset unanswered.
            drop(reply);
            return;
        }
        let answer = match request {
            NodeRpc::Raft(rpc) => NodeReply::Raft(self.cp.handle_rpc(rpc).await),
            NodeRpc::Admin(rpc) => NodeReply::Admin(self.admin(peer, rpc).await),
            NodeRpc::Load(rpc) => {
                self.load(peer, rpc);
                NodeReply::Load(Ok(()))
            }
            NodeRpc::Drill(rpc) => NodeReply::Drill(self.drill(rpc)),
            NodeRpc::Forward(req) => {
                self.local.serve(req, reply).await;
                return;
            }
            NodeRpc::Route(req) => {
                let _serving = self.local.serving();
                let Some(fleets) = self.front() else {
                    let _ = reply
                        .respond(&super::rpc::ForwardFrame::Error(
                            "this node is not serving yet".into(),
                        ))
                        .await;
                    return;
                };
                // Routing it can take longer than the asker's patience for silence
                // (an answer sent whole comes back only once complete): say this node
                // is alive meanwhile.
                let mut reply = reply;
                let work = crate::front::handoff::receive(fleets, req);
                let Some(resp) = super::forward::alive_until(work, &mut reply).await else {
                    return;
                };
                let headers = crate::front::handoff::answer_headers(resp.headers());
                super::forward::relay(resp, headers, reply).await;
                return;
            }
        };
        if let Err(e) = reply.respond(&answer).await {
            tracing::debug!(peer, error = %e, "reply not delivered");
        }
    }
}

/// Admits joiners on any node, with the CA and join tokens the control state holds:
/// checks the token's hash in constant time against every live token, allocates a
/// never-used node id through Raft, signs the joiner's CSR. A node that has not yet
/// applied a state with the CA refuses (the joiner may ask another).
/// The SHA-256 of a CA certificate given as PEM, in hex.
fn sha256_of(pem: &str) -> Option<String> {
    sluice_transport::CaCert::from_pem(pem)
        .ok()
        .map(|c| c.fingerprint_hex())
}

struct RaftAuthority {
    cp: ControlPlane<QuicRaft>,
    /// How long the certificates it signs live.
    lifetime: std::time::Duration,
}

impl JoinAuthority for RaftAuthority {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<JoinResponse, JoinRefusal>> {
        Box::pin(async move {
            let authority = self.cp.state().borrow().authority().cloned();
            let Some(authority) = authority else {
                return Err(JoinRefusal::Unavailable(
                    "this node does not know the cluster's CA yet".into(),
                ));
            };
            let presented = crate::tenants::keys::sha256(request.token_secret.as_slice());
            // Every token is compared, so the time taken says nothing of which matched.
            let matched = authority.tokens.values().fold(false, |any, h| {
                any | bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &presented[..]))
            });
            if !matched {
                return Err(JoinRefusal::WrongToken);
            }
            let ca = ClusterCa::from_pem(&authority.ca_cert_pem, &authority.ca_key_pem)
                .map_err(|e| JoinRefusal::Unavailable(format!("the cluster's CA: {e}")))?;
            let id = match self.cp.write(ControlCommand::AllocateNodeId).await {
                Ok(ControlResponse::NodeIdAllocated(id)) => id,
                Ok(other) => return Err(JoinRefusal::Unavailable(format!("{other:?}"))),
                Err(e) => return Err(JoinRefusal::Unavailable(e.to_string())),
            };
            let cert_pem = ca
                .sign_csr(&request.csr_pem, id, self.lifetime)
                .map_err(|e| JoinRefusal::BadRequest(e.to_string()))?;
            tracing::info!(node = id, rack = ?request.rack, "admitted a joining node");
            Ok(JoinResponse {
                node_id: id,
                cert_pem,
                // Every CA the members trust now, the signing one first: during a CA
                // rotation the joiner must let in peers of either.
                ca_pem: authority.trusted_pem_bundle(),
            })
        })
    }
}

/// The join authority every node runs; it signs certificates that live `lifetime`.
pub fn authority(
    cp: ControlPlane<QuicRaft>,
    lifetime: std::time::Duration,
) -> Arc<dyn JoinAuthority> {
    Arc::new(RaftAuthority { cp, lifetime })
}

/// On the node whose TLS directory holds the CA key (the one that ran `cluster init`):
/// writes the CA and its join token into the control state, once, so that every voter
/// can admit nodes from then on. Elsewhere, or once written, nothing to do.
pub(super) async fn publish_authority(
    tls: &Path,
    cp: &ControlPlane<QuicRaft>,
) -> anyhow::Result<()> {
    if !tls.join("ca.key").exists() {
        return Ok(());
    }
    let ca = ClusterCa::load(tls).context("cannot read the cluster's CA")?;
    let token = JoinToken::load(tls).context("cannot read the join token")?;
    let published = cp
        .state()
        .borrow()
        .authority()
        .is_some_and(|a| a.ca_cert_pem == ca.cert().pem());
    if published {
        // With its token, which may since have been revoked, and stays so.
        return Ok(());
    }
    // Both in one command: a crash cannot leave the CA without its token.
    let cmd = ControlCommand::SetCa {
        ca_cert_pem: ca.cert().pem(),
        ca_key_pem: ca.key_pem(),
        token: (
            INITIAL_TOKEN.to_owned(),
            crate::tenants::keys::sha256(token.secret()),
        ),
    };
    match cp.write(cmd).await {
        Ok(ControlResponse::Rejected(r)) => {
            anyhow::bail!("the cluster refused this node's CA: {r}")
        }
        Ok(_) => {}
        Err(e) => anyhow::bail!("the cluster's CA and join token are not committed yet: {e}"),
    }
    tracing::info!("the cluster's CA is replicated: every voter admits joining nodes");
    Ok(())
}

/// The id of the join token `cluster init` made.
pub const INITIAL_TOKEN: &str = "initial";
