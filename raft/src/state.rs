//! The replicated control state and the pure function that changes it.
//!
//! Every node applies the same committed [`ControlCommand`]s in the same order through
//! [`apply`], so `apply` must be deterministic and must never fail the Raft core: an
//! invalid command is answered with [`ControlResponse::Rejected`] and leaves the state
//! untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sluice_actors::slice::{Assignment, ReplicaId};

/// A node's id, in Raft membership and in the control state alike.
pub type NodeId = u64;

/// What a node would like to do; the voter policy and the placement code read these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RoleHint {
    /// May be chosen as a Raft voter.
    Voter,
    /// Serves client traffic.
    Router,
    /// Owns GPUs and runs replicas.
    Supervisor,
}

/// A node of the fleet as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Where its QUIC endpoint (Raft and actor traffic) listens.
    pub quic_addr: String,
    /// Where its HTTP front door listens.
    pub http_addr: String,
    /// Failure domain; voters and subsets are spread over racks.
    pub rack: String,
    pub labels: BTreeMap<String, String>,
    pub roles: BTreeSet<RoleHint>,
    /// GPUs the node's supervisor owns: the most replicas placement may put there.
    pub gpus: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicaHealth {
    Healthy,
    Unhealthy,
    /// Finishing its in-flight requests before it stops; gets no new ones.
    Draining,
    /// Placed by the autoscaler; its node is starting the engine. No endpoint yet.
    Starting,
    /// Its node went silent (killed, powered off, cut off): the leader took it out of
    /// service, and clears the mark when the node is heard again (or the node clears
    /// it by registering its replicas anew).
    Unreachable,
}

/// An engine replica serving one model on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub id: ReplicaId,
    pub node: NodeId,
    pub model: String,
    /// Base URL of its OpenAI-compatible endpoint.
    pub endpoint: String,
    pub capacity_mu_per_min: f64,
    pub health: ReplicaHealth,
}

/// A tenant: who may send requests, and under which key. Only the key's SHA-256 is
/// kept; the key itself is shown once, when the tenant is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub key_sha256: [u8; 32],
}

/// The cluster's CA and the join tokens it admits with, replicated so that any voter can
/// admit a joining node — the node that ran `cluster init` is no single point (as
/// Consul's built-in CA keeps its root in its Raft store). The key is in the Raft log
/// and snapshots on disk, whose directory only its owner may read.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterAuthority {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// Token id → SHA-256 of its secret (never the secret).
    pub tokens: BTreeMap<String, [u8; 32]>,
    /// A rotation of the CA under way.
    pub rotation: Option<CaRotation>,
}

/// Rotating the cluster's CA with both trusted during the change. First every member
/// takes the next CA into its trust and says so ([`RotationPhase::Trusting`]); only then
/// does it sign — a node that renewed under a CA its peers did not trust yet would be cut
/// off, the leader's replication with it. Then every member renews its certificate under
/// it and says so ([`RotationPhase::Renewing`]) while the previous CA is still trusted;
/// once all have, the previous one is trusted no more. A member that never answers holds
/// the rotation: remove it (`sluice cluster remove`) and it goes on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    pub phase: RotationPhase,
    /// Trusting: the next CA. Renewing: the previous one (`ca_cert_pem` is the new).
    pub other_cert_pem: String,
    /// Trusting: the next CA's key. Renewing: empty (the previous CA signs nothing).
    pub other_key_pem: String,
    /// The members that said they are done with this phase.
    pub done: BTreeSet<NodeId>,
}

impl fmt::Debug for CaRotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaRotation")
            .field("phase", &self.phase)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RotationPhase {
    Trusting,
    Renewing,
}

impl ClusterAuthority {
    /// The CA certificates a member trusts now, the signing CA first.
    pub fn trusted_pems(&self) -> Vec<&str> {
        let mut out = vec![self.ca_cert_pem.as_str()];
        if let Some(r) = &self.rotation {
            out.push(r.other_cert_pem.as_str());
        }
        out
    }

    /// [`trusted_pems`](Self::trusted_pems) as one PEM bundle: what a member's trust
    /// store and a joining node's CA file hold.
    pub fn trusted_pem_bundle(&self) -> String {
        self.trusted_pems().concat()
    }

    /// The rotation's new CA certificate (what acknowledgements name), if one is under
    /// way.
    pub fn rotating_to(&self) -> Option<&str> {
        self.rotation.as_ref().map(|r| match r.phase {
            RotationPhase::Trusting => r.other_cert_pem.as_str(),
            RotationPhase::Renewing => self.ca_cert_pem.as_str(),
        })
    }
}

impl fmt::Debug for ClusterAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAuthority")
            .field("ca_key_pem", &"<redacted>")
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Everything the fleet agrees on through Raft.
///
/// Fields are private so that only [`apply`] changes them; readers use the accessors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    nodes: BTreeMap<NodeId, NodeInfo>,
    replicas: BTreeMap<ReplicaId, ReplicaInfo>,
    /// Per model; each carries its own generation number.
    assignments: BTreeMap<String, Assignment>,
    desired_replicas: BTreeMap<String, u32>,
    /// Tenant → model → reserved MU/min.
    reservations: BTreeMap<String, BTreeMap<String, f64>>,
    tenants: BTreeMap<String, TenantInfo>,
    /// The id `AllocateNodeId` hands out next; only ever grows.
    next_node_id: NodeId,
    /// Ids of removed nodes; they are never accepted again.
    retired_node_ids: BTreeSet<NodeId>,
    /// Tenant → the most replicas of each model its requests may reach.
    blast_radius: BTreeMap<String, u32>,
    /// The CA and join tokens; `None` until the node holding them writes them.
    authority: Option<ClusterAuthority>,
}

impl Default for ControlState {
    fn default() -> Self {
        Self {
            nodes: BTreeMap::new(),
            replicas: BTreeMap::new(),
            assignments: BTreeMap::new(),
            desired_replicas: BTreeMap::new(),
            reservations: BTreeMap::new(),
            tenants: BTreeMap::new(),
            // 0 is left unused so that a zeroed id is never a real node.
            next_node_id: 1,
            retired_node_ids: BTreeSet::new(),
            blast_radius: BTreeMap::new(),
            authority: None,
        }
    }
}

impl ControlState {
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    pub fn replicas(&self) -> &BTreeMap<ReplicaId, ReplicaInfo> {
        &self.replicas
    }

    pub fn replica(&self, id: ReplicaId) -> Option<&ReplicaInfo> {
        self.replicas.get(&id)
    }

    /// Every model the cluster has: one a replica serves or an assignment was made for,
    /// in name order.
    pub fn models(&self) -> std::collections::BTreeSet<&str> {
        self.replicas
            .values()
            .map(|r| r.model.as_str())
            .chain(self.assignments.keys().map(String::as_str))
            .collect()
    }

    /// Replicas serving `model`, in id order.
    pub fn replicas_of_model<'a>(
        &'a self,
        model: &'a str,
    ) -> impl Iterator<Item = &'a ReplicaInfo> {
        self.replicas.values().filter(move |r| r.model == model)
    }

    pub fn assignments(&self) -> &BTreeMap<String, Assignment> {
        &self.assignments
    }

    pub fn assignment(&self, model: &str) -> Option<&Assignment> {
        self.assignments.get(model)
    }

    pub fn desired_replicas(&self) -> &BTreeMap<String, u32> {
        &self.desired_replicas
    }

    pub fn reservations(&self) -> &BTreeMap<String, BTreeMap<String, f64>> {
        &self.reservations
    }

    pub fn reservation(&self, tenant: &str, model: &str) -> Option<f64> {
        self.reservations.get(tenant)?.get(model).copied()
    }

    pub fn tenants(&self) -> &BTreeMap<String, TenantInfo> {
        &self.tenants
    }

    /// Each bounded tenant's blast radius: the most replicas of a model its requests
    /// may reach.
    pub fn blast_radius(&self) -> &BTreeMap<String, u32> {
        &self.blast_radius
    }

    /// The CA and join tokens any voter admits with, once written.
    pub fn authority(&self) -> Option<&ClusterAuthority> {
        self.authority.as_ref()
    }

    /// What the fleet can serve of `model` with a replica on every GPU, in MU/min: every
    /// node's GPUs times the model's per-replica capacity. `None` when no replica of the
    /// model was ever registered (an unknown model).
    pub fn capacity_at_max(&self, model: &str) -> Option<f64> {
        let per_replica = self
            .replicas_of_model(model)
            .map(|r| r.capacity_mu_per_min)
            .reduce(f64::max)?;
        let gpus: u64 = self.nodes.values().map(|n| u64::from(n.gpus)).sum();
        Some(per_replica * gpus as f64)
    }

    /// The sum of the reservations of `model`.
    pub fn reserved(&self, model: &str) -> f64 {
        self.reservations
            .values()
            .filter_map(|m| m.get(model))
            .sum()
    }

    pub fn next_node_id(&self) -> NodeId {
        self.next_node_id
    }

    pub fn is_retired(&self, id: NodeId) -> bool {
        self.retired_node_ids.contains(&id)
    }

    /// Moves a CA rotation on once every member is done with its phase: from trusting
    /// to renewing (the next CA signs from now on, the previous one is still trusted),
    /// from renewing to done (the previous one is trusted no more).
    fn advance_rotation(&mut self) {
        let members: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        let Some(a) = self.authority.as_mut() else {
            return;
        };
        let Some(r) = a.rotation.as_mut() else {
            return;
        };
        if !members.is_subset(&r.done) {
            return;
        }
        match r.phase {
            RotationPhase::Trusting => {
                let previous = std::mem::replace(&mut a.ca_cert_pem, r.other_cert_pem.clone());
                a.ca_key_pem = std::mem::take(&mut r.other_key_pem);
                r.other_cert_pem = previous;
                r.phase = RotationPhase::Renewing;
                r.done.clear();
            }
            RotationPhase::Renewing => a.rotation = None,
        }
    }

    /// Keeps `AllocateNodeId` clear of ids already in Raft membership (e.g. the founding
    /// voters, which join before anyone writes an `AddNode`). Called by the state machine
    /// for each applied membership entry, so every replica does it at the same log index.
    pub fn note_members(&mut self, ids: impl IntoIterator<Item = NodeId>) {
        for id in ids {
            self.bump_next_node_id(id);
        }
    }

    fn bump_next_node_id(&mut self, seen: NodeId) {
        if seen >= self.next_node_id {
            self.next_node_id = seen.saturating_add(1);
        }
    }
}

/// Every change to [`ControlState`]. Serialized into the Raft log: add variants at the
/// end only, never reorder or change one in place (bump `codec::FORMAT_VERSION` instead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlCommand {
    /// Writes nothing; used to check that the cluster can commit.
    Noop,
    /// Adds a node; its id must not be in use nor retired.
    AddNode(NodeInfo),
    /// Removes a node and its replicas; the id is retired for good. Idempotent.
    RemoveNode(NodeId),
    /// Replaces the description of a known node.
    UpdateNode(NodeInfo),
    /// Registers a replica on a known node, or replaces it if the id is known.
    RegisterReplica(ReplicaInfo),
    /// Idempotent.
    RemoveReplica(ReplicaId),
    SetReplicaHealth {
        replica: ReplicaId,
        health: ReplicaHealth,
    },
    /// Installs a model's assignment if its generation is newer than the current one.
    SetAssignment {
        model: String,
        assignment: Assignment,
    },
    SetDesiredReplicas {
        model: String,
        count: u32,
    },
    SetReservation {
        tenant: String,
        model: String,
        mu_per_min: f64,
    },
    /// Idempotent.
    RemoveReservation {
        tenant: String,
        model: String,
    },
    /// Hands out a fresh node id for a joining node; ids are never handed out twice.
    AllocateNodeId,
    /// A `Starting` replica's engine is ready at `endpoint`: it becomes `Healthy`.
    /// Rejected unless the replica is still `Starting` (the autoscaler may have
    /// cancelled it meanwhile), so a late start never undoes a later decision.
    ReplicaReady {
        replica: ReplicaId,
        endpoint: String,
    },
    /// A new tenant with the SHA-256 of its API key; the name must be free.
    CreateTenant {
        name: String,
        key_sha256: [u8; 32],
    },
    /// Removes a tenant and its reservations. Idempotent.
    RemoveTenant(String),
    /// Bounds the replicas (of each model) a tenant's requests may reach; 0 removes the
    /// bound.
    SetBlastRadius {
        tenant: String,
        replicas: u32,
    },
    /// The leader's liveness mark: a `Healthy` replica becomes `Unreachable`
    /// (`reachable: false`), an `Unreachable` one `Healthy` again (`true`). Any other
    /// standing is its node's to decide and is left as it is, so a mark decided on an
    /// older view never undoes the node's own word.
    MarkReachable {
        replica: ReplicaId,
        reachable: bool,
    },
    /// The cluster's CA and its first join token (id, SHA-256 of the secret), written
    /// once, together, by the node that made them; again with the same CA: no change
    /// (the token is not brought back if it was revoked); a different CA is refused.
    SetCa {
        ca_cert_pem: String,
        ca_key_pem: String,
        token: (String, [u8; 32]),
    },
    /// A join token (the SHA-256 of its secret) under an id; the same id with another
    /// secret is refused. Needs the CA first.
    AddJoinToken {
        id: String,
        secret_sha256: [u8; 32],
    },
    /// No node joins with this token any more. Idempotent.
    RevokeJoinToken(String),
    /// Starts rotating the CA to this one (see [`CaRotation`]). Again with the same CA
    /// while it is under way: no change; another CA then is refused.
    BeginCaRotation {
        ca_cert_pem: String,
        ca_key_pem: String,
    },
    /// `node` is done with `phase` of the rotation to the CA `to` (its certificate PEM);
    /// word about another rotation or phase is stale and changes nothing.
    CaRotationDone {
        node: NodeId,
        to: String,
        phase: RotationPhase,
    },
}

impl fmt::Display for ControlCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Noop => write!(f, "Noop"),
            Self::AddNode(n) => write!(f, "AddNode({})", n.id),
            Self::RemoveNode(id) => write!(f, "RemoveNode({id})"),
            Self::UpdateNode(n) => write!(f, "UpdateNode({})", n.id),
            Self::RegisterReplica(r) => write!(f, "RegisterReplica({})", r.id.0),
            Self::RemoveReplica(id) => write!(f, "RemoveReplica({})", id.0),
            Self::SetReplicaHealth { replica, health } => {
                write!(f, "SetReplicaHealth({}, {health:?})", replica.0)
            }
            Self::SetAssignment { model, assignment } => {
                write!(f, "SetAssignment({model}, gen {})", assignment.generation)
            }
            Self::SetDesiredReplicas { model, count } => {
                write!(f, "SetDesiredReplicas({model}, {count})")
            }
            Self::SetReservation {
                tenant,
                model,
                mu_per_min,
            } => write!(f, "SetReservation({tenant}, {model}, {mu_per_min})"),
            Self::RemoveReservation { tenant, model } => {
                write!(f, "RemoveReservation({tenant}, {model})")
            }
            Self::AllocateNodeId => write!(f, "AllocateNodeId"),
            Self::ReplicaReady { replica, endpoint } => {
                write!(f, "ReplicaReady({}, {endpoint})", replica.0)
            }
            // Never the key's hash: logs hold names only.
            Self::CreateTenant { name, .. } => write!(f, "CreateTenant({name})"),
            Self::RemoveTenant(name) => write!(f, "RemoveTenant({name})"),
            Self::SetBlastRadius { tenant, replicas } => {
                write!(f, "SetBlastRadius({tenant}, {replicas})")
            }
            Self::MarkReachable { replica, reachable } => {
                write!(f, "MarkReachable({}, {reachable})", replica.0)
            }
            // Never the key or a token's hash.
            Self::SetCa { .. } => write!(f, "SetCa"),
            Self::AddJoinToken { id, .. } => write!(f, "AddJoinToken({id})"),
            Self::RevokeJoinToken(id) => write!(f, "RevokeJoinToken({id})"),
            Self::BeginCaRotation { .. } => write!(f, "BeginCaRotation"),
            Self::CaRotationDone { node, phase, .. } => {
                write!(f, "CaRotationDone({node}, {phase:?})")
            }
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// Applied (or a no-op: removing something absent).
    Ok,
    NodeIdAllocated(NodeId),
    /// Not applied; the state is unchanged.
    Rejected(Rejection),
}

impl ControlResponse {
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }
}

/// Why a command was not applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("node {0} already exists")]
    NodeExists(NodeId),
    #[error("node id {0} belonged to a removed node and is never reused")]
    NodeIdRetired(NodeId),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("unknown replica {0}")]
    UnknownReplica(u64),
    #[error("assignment for {model}: generation {proposed} is not newer than {current}")]
    StaleGeneration {
        model: String,
        current: u64,
        proposed: u64,
    },
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("replica {0} is not starting")]
    NotStarting(u64),
    #[error("tenant {0} already exists")]
    TenantExists(String),
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    #[error("unknown model {0}: no replica of it is registered")]
    UnknownModel(String),
    #[error("a reservation of {requested} MU/min of {model} does not fit: {available} MU/min of its {capacity} MU/min at max replicas are not reserved yet")]
    ReservationDoesNotFit {
        model: String,
        requested: f64,
        available: f64,
        capacity: f64,
    },
}

fn reject(r: Rejection) -> ControlResponse {
    ControlResponse::Rejected(r)
}

fn valid_rate(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

/// Applies one committed command. Pure and deterministic; never panics.
pub fn apply(state: &mut ControlState, cmd: ControlCommand) -> ControlResponse {
    match cmd {
        ControlCommand::Noop => ControlResponse::Ok,
        ControlCommand::AddNode(node) => {
            if node.id == 0 {
                return reject(Rejection::InvalidValue("node id 0 is reserved".into()));
            }
            if state.retired_node_ids.contains(&node.id) {
                return reject(Rejection::NodeIdRetired(node.id));
            }
            if state.nodes.contains_key(&node.id) {
                return reject(Rejection::NodeExists(node.id));
            }
            state.bump_next_node_id(node.id);
            state.nodes.insert(node.id, node);
            ControlResponse::Ok
        }
        ControlCommand::RemoveNode(id) => {
            if state.nodes.remove(&id).is_some() {
                state.replicas.retain(|_, r| r.node != id);
            }
            state.bump_next_node_id(id);
            state.retired_node_ids.insert(id);
            // A removed member no longer holds a CA rotation.
            state.advance_rotation();
            ControlResponse::Ok
        }
        ControlCommand::UpdateNode(node) => match state.nodes.get_mut(&node.id) {
            Some(slot) => {
                *slot = node;
                ControlResponse::Ok
            }
            None => reject(Rejection::UnknownNode(node.id)),
        },
        ControlCommand::RegisterReplica(replica) => {
            if !state.nodes.contains_key(&replica.node) {
                return reject(Rejection::UnknownNode(replica.node));
            }
            if !valid_rate(replica.capacity_mu_per_min) {
                return reject(Rejection::InvalidValue(format!(
                    "capacity {} MU/min",
                    replica.capacity_mu_per_min
                )));
            }
            state.replicas.insert(replica.id, replica);
            ControlResponse::Ok
        }
        ControlCommand::RemoveReplica(id) => {
            state.replicas.remove(&id);
            ControlResponse::Ok
        }
        ControlCommand::SetReplicaHealth { replica, health } => {
            match state.replicas.get_mut(&replica) {
                Some(r) => {
                    r.health = health;
                    ControlResponse::Ok
                }
                None => reject(Rejection::UnknownReplica(replica.0)),
            }
        }
        ControlCommand::SetAssignment { model, assignment } => {
            if let Some(current) = state.assignments.get(&model) {
                if assignment.generation <= current.generation {
                    return reject(Rejection::StaleGeneration {
                        current: current.generation,
                        proposed: assignment.generation,
                        model,
                    });
                }
            }
            state.assignments.insert(model, assignment);
            ControlResponse::Ok
        }
        ControlCommand::SetDesiredReplicas { model, count } => {
            state.desired_replicas.insert(model, count);
            ControlResponse::Ok
        }
        ControlCommand::SetReservation {
            tenant,
            model,
            mu_per_min,
        } => {
            if !valid_rate(mu_per_min) {
                return reject(Rejection::InvalidValue(format!(
                    "reservation {mu_per_min} MU/min"
                )));
            }
            if !state.tenants.contains_key(&tenant) {
                return reject(Rejection::UnknownTenant(tenant));
            }
            let Some(capacity) = state.capacity_at_max(&model) else {
                return reject(Rejection::UnknownModel(model));
            };
            let others = state.reserved(&model) - state.reservation(&tenant, &model).unwrap_or(0.0);
            if others + mu_per_min > capacity + 1e-9 {
                return reject(Rejection::ReservationDoesNotFit {
                    requested: mu_per_min,
                    available: (capacity - others).max(0.0),
                    capacity,
                    model,
                });
            }
            state
                .reservations
                .entry(tenant)
                .or_default()
                .insert(model, mu_per_min);
            ControlResponse::Ok
        }
        ControlCommand::RemoveReservation { tenant, model } => {
            if let Some(models) = state.reservations.get_mut(&tenant) {
                models.remove(&model);
                if models.is_empty() {
                    state.reservations.remove(&tenant);
                }
            }
            ControlResponse::Ok
        }
        ControlCommand::AllocateNodeId => {
            // Skip ids that are taken or retired; `next_node_id` normally already is past
            // them, but an `AddNode` may have used an id below it.
            let mut id = state.next_node_id;
            while state.nodes.contains_key(&id) || state.retired_node_ids.contains(&id) {
                id = id.saturating_add(1);
            }
            state.next_node_id = id.saturating_add(1);
            ControlResponse::NodeIdAllocated(id)
        }
        ControlCommand::CreateTenant { name, key_sha256 } => {
            if name.is_empty() || name.len() > 64 {
                return reject(Rejection::InvalidValue(
                    "a tenant name has 1 to 64 characters".into(),
                ));
            }
            if state.tenants.contains_key(&name) {
                return reject(Rejection::TenantExists(name));
            }
            if state.tenants.values().any(|t| t.key_sha256 == key_sha256) {
                return reject(Rejection::InvalidValue("that key is already in use".into()));
            }
            state.tenants.insert(name, TenantInfo { key_sha256 });
            ControlResponse::Ok
        }
        ControlCommand::RemoveTenant(name) => {
            state.tenants.remove(&name);
            state.reservations.remove(&name);
            state.blast_radius.remove(&name);
            ControlResponse::Ok
        }
        ControlCommand::SetBlastRadius { tenant, replicas } => {
            if !state.tenants.contains_key(&tenant) {
                return reject(Rejection::UnknownTenant(tenant));
            }
            if replicas == 0 {
                state.blast_radius.remove(&tenant);
            } else {
                state.blast_radius.insert(tenant, replicas);
            }
            ControlResponse::Ok
        }
        ControlCommand::ReplicaReady { replica, endpoint } => {
            match state.replicas.get_mut(&replica) {
                Some(r) if r.health == ReplicaHealth::Starting => {
                    r.endpoint = endpoint;
                    r.health = ReplicaHealth::Healthy;
                    ControlResponse::Ok
                }
                Some(_) => reject(Rejection::NotStarting(replica.0)),
                None => reject(Rejection::UnknownReplica(replica.0)),
            }
        }
        ControlCommand::SetCa {
            ca_cert_pem,
            ca_key_pem,
            token,
        } => match &state.authority {
            Some(a) if a.ca_cert_pem == ca_cert_pem => ControlResponse::Ok,
            Some(_) => reject(Rejection::InvalidValue(
                "the cluster already has another CA".into(),
            )),
            None if ca_cert_pem.is_empty() || ca_key_pem.is_empty() => {
                reject(Rejection::InvalidValue("an empty CA".into()))
            }
            None => {
                state.authority = Some(ClusterAuthority {
                    ca_cert_pem,
                    ca_key_pem,
                    tokens: BTreeMap::from([token]),
                    rotation: None,
                });
                ControlResponse::Ok
            }
        },
        ControlCommand::AddJoinToken { id, secret_sha256 } => {
            let Some(a) = &mut state.authority else {
                return reject(Rejection::InvalidValue(
                    "the cluster's CA is not known yet".into(),
                ));
            };
            if id.is_empty() || id.len() > 64 {
                return reject(Rejection::InvalidValue(
                    "a token id has 1 to 64 characters".into(),
                ));
            }
            match a.tokens.get(&id) {
                Some(h) if *h == secret_sha256 => ControlResponse::Ok,
                Some(_) => reject(Rejection::InvalidValue(format!("token id {id} is taken"))),
                None => {
                    a.tokens.insert(id, secret_sha256);
                    ControlResponse::Ok
                }
            }
        }
        ControlCommand::RevokeJoinToken(id) => {
            if let Some(a) = &mut state.authority {
                a.tokens.remove(&id);
            }
            ControlResponse::Ok
        }
        ControlCommand::BeginCaRotation {
            ca_cert_pem,
            ca_key_pem,
        } => {
            let Some(a) = &mut state.authority else {
                return reject(Rejection::InvalidValue(
                    "the cluster's CA is not known yet".into(),
                ));
            };
            if ca_cert_pem.is_empty() || ca_key_pem.is_empty() {
                return reject(Rejection::InvalidValue("an empty CA".into()));
            }
            if a.rotating_to() == Some(ca_cert_pem.as_str()) {
                return ControlResponse::Ok;
            }
            if a.rotation.is_some() {
                return reject(Rejection::InvalidValue(
                    "a CA rotation is under way: it finishes first".into(),
                ));
            }
            if a.ca_cert_pem == ca_cert_pem {
                return reject(Rejection::InvalidValue(
                    "that is the cluster's CA already".into(),
                ));
            }
            a.rotation = Some(CaRotation {
                phase: RotationPhase::Trusting,
                other_cert_pem: ca_cert_pem,
                other_key_pem: ca_key_pem,
                done: BTreeSet::new(),
            });
            state.advance_rotation();
            ControlResponse::Ok
        }
        ControlCommand::CaRotationDone { node, to, phase } => {
            let Some(a) = &mut state.authority else {
                return ControlResponse::Ok;
            };
            let current = a.rotating_to() == Some(to.as_str());
            if let Some(r) = a.rotation.as_mut().filter(|r| current && r.phase == phase) {
                r.done.insert(node);
            }
            state.advance_rotation();
            ControlResponse::Ok
        }
        ControlCommand::MarkReachable { replica, reachable } => {
            let Some(r) = state.replicas.get_mut(&replica) else {
                return reject(Rejection::UnknownReplica(replica.0));
            };
            match (r.health, reachable) {
                (ReplicaHealth::Healthy, false) => r.health = ReplicaHealth::Unreachable,
                (ReplicaHealth::Unreachable, true) => r.health = ReplicaHealth::Healthy,
                _ => {}
            }
            ControlResponse::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(id: NodeId, rack: &str) -> NodeInfo {
        NodeInfo {
            id,
            quic_addr: format!("10.0.0.{id}:7000"),
            http_addr: format!("10.0.0.{id}:8080"),
            rack: rack.into(),
            labels: BTreeMap::new(),
            roles: [RoleHint::Voter].into(),
            gpus: 2,
        }
    }

    fn replica(id: u64, node: NodeId, model: &str) -> ReplicaInfo {
        ReplicaInfo {
            id: ReplicaId(id),
            node,
            model: model.into(),
            endpoint: format!("http://10.0.0.{node}:9000"),
            capacity_mu_per_min: 100.0,
            health: ReplicaHealth::Healthy,
        }
    }

    fn assignment(generation: u64) -> Assignment {
        Assignment::uniform(generation, &[ReplicaId(1), ReplicaId(2)], 4, 2).unwrap()
    }

    #[test]
    fn nodes_and_replicas() {
        let mut s = ControlState::default();
        assert_eq!(
            apply(&mut s, ControlCommand::AddNode(node(1, "a"))),
            ControlResponse::Ok
        );
        assert_eq!(
            apply(&mut s, ControlCommand::AddNode(node(1, "b"))),
            reject(Rejection::NodeExists(1))
        );
        assert_eq!(
            apply(&mut s, ControlCommand::RegisterReplica(replica(10, 2, "m"))),
            reject(Rejection::UnknownNode(2))
        );
        assert_eq!(
            apply(&mut s, ControlCommand::RegisterReplica(replica(10, 1, "m"))),
            ControlResponse::Ok
        );
        let mut bad = replica(11, 1, "m");
        bad.capacity_mu_per_min = f64::NAN;
        assert!(apply(&mut s, ControlCommand::RegisterReplica(bad)).is_rejected());
        assert_eq!(
            apply(
                &mut s,
                ControlCommand::SetReplicaHealth {
                    replica: ReplicaId(10),
                    health: ReplicaHealth::Draining
                }
            ),
            ControlResponse::Ok
        );
        assert_eq!(
            s.replica(ReplicaId(10)).unwrap().health,
            ReplicaHealth::Draining
        );
        assert_eq!(s.replicas_of_model("m").count(), 1);

        let mut moved = node(1, "b");
        moved.labels.insert("gpu".into(), "h100".into());
        assert_eq!(
            apply(&mut s, ControlCommand::UpdateNode(moved.clone())),
            ControlResponse::Ok
        );
        assert_eq!(s.node(1), Some(&moved));

        // Removing a node takes its replicas with it and retires the id.
        assert_eq!(
            apply(&mut s, ControlCommand::RemoveNode(1)),
            ControlResponse::Ok
        );
        assert!(s.replicas().is_empty());
        assert!(s.is_retired(1));
        assert_eq!(
            apply(&mut s, ControlCommand::AddNode(node(1, "a"))),
            reject(Rejection::NodeIdRetired(1))
        );
        assert_eq!(
            apply(&mut s, ControlCommand::RemoveNode(1)),
            ControlResponse::Ok
        );
    }

    #[test]
    fn node_ids_are_never_reused() {
        let mut s = ControlState::default();
        s.note_members([1, 2, 3]);
        assert_eq!(
            apply(&mut s, ControlCommand::AllocateNodeId),
            ControlResponse::NodeIdAllocated(4)
        );
        apply(&mut s, ControlCommand::AddNode(node(9, "a")));
        assert_eq!(
            apply(&mut s, ControlCommand::AllocateNodeId),
            ControlResponse::NodeIdAllocated(10)
        );
        apply(&mut s, ControlCommand::RemoveNode(9));
        assert_eq!(
            apply(&mut s, ControlCommand::AllocateNodeId),
            ControlResponse::NodeIdAllocated(11)
        );
    }

    #[test]
    fn stale_assignments_are_rejected() {
        let mut s = ControlState::default();
        let set = |g| ControlCommand::SetAssignment {
            model: "m".into(),
            assignment: assignment(g),
        };
        assert_eq!(apply(&mut s, set(5)), ControlResponse::Ok);
        assert_eq!(
            apply(&mut s, set(5)),
            reject(Rejection::StaleGeneration {
                model: "m".into(),
                current: 5,
                proposed: 5
            })
        );
        assert!(apply(&mut s, set(4)).is_rejected());
        assert_eq!(apply(&mut s, set(6)), ControlResponse::Ok);
        assert_eq!(s.assignment("m").unwrap().generation, 6);
    }

    #[test]
    fn reservations_and_desired_counts() {
        let mut s = ControlState::default();
        let set = |t: &str, m: &str, v| ControlCommand::SetReservation {
            tenant: t.into(),
            model: m.into(),
            mu_per_min: v,
        };
        // Only for a known tenant and a known model, and only what fits: two nodes of
        // two GPUs at 100 MU/min per replica hold 400 MU/min.
        assert_eq!(
            apply(&mut s, set("t", "m", 50.0)),
            ControlResponse::Rejected(Rejection::UnknownTenant("t".into()))
        );
        let tenant = |name: &str, k: u8| ControlCommand::CreateTenant {
            name: name.into(),
            key_sha256: [k; 32],
        };
        assert_eq!(apply(&mut s, tenant("t", 1)), ControlResponse::Ok);
        assert_eq!(apply(&mut s, tenant("u", 2)), ControlResponse::Ok);
        assert!(apply(&mut s, tenant("t", 3)).is_rejected(), "name taken");
        assert!(apply(&mut s, tenant("v", 1)).is_rejected(), "key taken");
        assert_eq!(
            apply(&mut s, set("t", "m", 50.0)),
            ControlResponse::Rejected(Rejection::UnknownModel("m".into()))
        );
        for id in [1, 2] {
            apply(&mut s, ControlCommand::AddNode(node(id, "a")));
        }
        let mut r = replica(1, 1, "m");
        r.capacity_mu_per_min = 100.0;
        apply(&mut s, ControlCommand::RegisterReplica(r));
        assert_eq!(s.capacity_at_max("m"), Some(400.0));
        assert_eq!(apply(&mut s, set("u", "m", 300.0)), ControlResponse::Ok);
        assert!(matches!(
            apply(&mut s, set("t", "m", 150.0)),
            ControlResponse::Rejected(Rejection::ReservationDoesNotFit { .. })
        ));
        assert_eq!(
            apply(&mut s, set("u", "m", 350.0)),
            ControlResponse::Ok,
            "a change of its own"
        );
        assert_eq!(apply(&mut s, set("u", "m", 300.0)), ControlResponse::Ok);
        assert_eq!(apply(&mut s, set("t", "m", 50.0)), ControlResponse::Ok);
        assert!(apply(&mut s, set("t", "m", -1.0)).is_rejected());
        assert!(apply(&mut s, set("t", "m", f64::INFINITY)).is_rejected());
        assert_eq!(s.reservation("t", "m"), Some(50.0));
        apply(
            &mut s,
            ControlCommand::RemoveReservation {
                tenant: "t".into(),
                model: "m".into(),
            },
        );
        assert_eq!(s.reservations().len(), 1);
        // A blast radius: for known tenants only; 0 removes it, and so does removing
        // the tenant.
        let radius = |t: &str, n| ControlCommand::SetBlastRadius {
            tenant: t.into(),
            replicas: n,
        };
        assert_eq!(
            apply(&mut s, radius("nobody", 2)),
            ControlResponse::Rejected(Rejection::UnknownTenant("nobody".into()))
        );
        assert_eq!(apply(&mut s, radius("t", 2)), ControlResponse::Ok);
        assert_eq!(apply(&mut s, radius("u", 3)), ControlResponse::Ok);
        assert_eq!(s.blast_radius().get("t"), Some(&2));
        assert_eq!(apply(&mut s, radius("t", 0)), ControlResponse::Ok);
        assert!(!s.blast_radius().contains_key("t"));
        apply(&mut s, ControlCommand::RemoveTenant("u".into()));
        assert!(s.blast_radius().is_empty());
        assert!(s.reservations().is_empty());
        assert!(s.tenants().contains_key("t") && !s.tenants().contains_key("u"));
        apply(
            &mut s,
            ControlCommand::SetDesiredReplicas {
                model: "m".into(),
                count: 3,
            },
        );
        assert_eq!(s.desired_replicas().get("m"), Some(&3));
    }

    #[test]
    fn liveness_marks_touch_only_healthy_and_unreachable_replicas() {
        let mut s = ControlState::default();
        apply(&mut s, ControlCommand::AddNode(node(1, "a")));
        let mut r = replica(10, 1, "m");
        apply(&mut s, ControlCommand::RegisterReplica(r.clone()));
        let mark = |reachable| ControlCommand::MarkReachable {
            replica: ReplicaId(10),
            reachable,
        };
        apply(&mut s, mark(false));
        assert_eq!(
            s.replica(ReplicaId(10)).unwrap().health,
            ReplicaHealth::Unreachable
        );
        apply(&mut s, mark(true));
        assert_eq!(
            s.replica(ReplicaId(10)).unwrap().health,
            ReplicaHealth::Healthy
        );
        // The node's own word stands: a draining replica is neither marked nor cleared.
        for health in [
            ReplicaHealth::Draining,
            ReplicaHealth::Unhealthy,
            ReplicaHealth::Starting,
        ] {
            r.health = health;
            apply(&mut s, ControlCommand::RegisterReplica(r.clone()));
            apply(&mut s, mark(false));
            apply(&mut s, mark(true));
            assert_eq!(s.replica(ReplicaId(10)).unwrap().health, health);
        }
        // A node that comes back registers its replicas anew, which clears the mark.
        r.health = ReplicaHealth::Healthy;
        apply(&mut s, ControlCommand::RegisterReplica(r.clone()));
        apply(&mut s, mark(false));
        apply(&mut s, ControlCommand::RegisterReplica(r));
        assert_eq!(
            s.replica(ReplicaId(10)).unwrap().health,
            ReplicaHealth::Healthy
        );
        assert!(apply(
            &mut s,
            ControlCommand::MarkReachable {
                replica: ReplicaId(99),
                reachable: true
            }
        )
        .is_rejected());
    }

    #[test]
    fn a_placed_replica_becomes_healthy_only_while_starting() {
        let mut s = ControlState::default();
        apply(&mut s, ControlCommand::AddNode(node(1, "a")));
        let mut placed = replica(5, 1, "m");
        placed.health = ReplicaHealth::Starting;
        placed.endpoint = String::new();
        apply(&mut s, ControlCommand::RegisterReplica(placed));
        let ready = |url: &str| ControlCommand::ReplicaReady {
            replica: ReplicaId(5),
            endpoint: url.into(),
        };
        assert_eq!(apply(&mut s, ready("http://h:1")), ControlResponse::Ok);
        let r = s.replica(ReplicaId(5)).unwrap();
        assert_eq!(
            (r.health, r.endpoint.as_str()),
            (ReplicaHealth::Healthy, "http://h:1")
        );
        // Cancelled (drained) before its engine came up: the late ready is refused.
        apply(
            &mut s,
            ControlCommand::SetReplicaHealth {
                replica: ReplicaId(5),
                health: ReplicaHealth::Draining,
            },
        );
        assert_eq!(
            apply(&mut s, ready("http://h:2")),
            ControlResponse::Rejected(Rejection::NotStarting(5))
        );
        assert!(apply(
            &mut s,
            ControlCommand::ReplicaReady {
                replica: ReplicaId(9),
                endpoint: "x".into()
            }
        )
        .is_rejected());
    }

    #[test]
    fn a_ca_rotation_trusts_first_then_signs_then_forgets_the_previous_ca() {
        let mut s = ControlState::default();
        for id in [1, 2] {
            apply(&mut s, ControlCommand::AddNode(node(id, "a")));
        }
        let begin = |c: &str| ControlCommand::BeginCaRotation {
            ca_cert_pem: c.into(),
            ca_key_pem: format!("{c}-key"),
        };
        assert!(apply(&mut s, begin("new")).is_rejected(), "no CA yet");
        apply(
            &mut s,
            ControlCommand::SetCa {
                ca_cert_pem: "old".into(),
                ca_key_pem: "old-key".into(),
                token: ("t".into(), [1; 32]),
            },
        );
        assert!(apply(&mut s, begin("old")).is_rejected(), "already the CA");
        assert_eq!(apply(&mut s, begin("new")), ControlResponse::Ok);
        assert_eq!(
            apply(&mut s, begin("new")),
            ControlResponse::Ok,
            "idempotent"
        );
        assert!(apply(&mut s, begin("other")).is_rejected(), "one at a time");
        let a = s.authority().unwrap();
        assert_eq!(a.trusted_pems(), ["old", "new"]);
        assert_eq!(
            a.ca_key_pem, "old-key",
            "the old CA signs until all trust the new"
        );
        let done = |node: NodeId, to: &str, phase| ControlCommand::CaRotationDone {
            node,
            to: to.into(),
            phase,
        };
        // Stale word (another CA, another phase) changes nothing.
        apply(&mut s, done(1, "other", RotationPhase::Trusting));
        apply(&mut s, done(1, "new", RotationPhase::Renewing));
        assert!(s
            .authority()
            .unwrap()
            .rotation
            .as_ref()
            .unwrap()
            .done
            .is_empty());
        apply(&mut s, done(1, "new", RotationPhase::Trusting));
        assert_eq!(
            s.authority().unwrap().ca_cert_pem,
            "old",
            "node 2 does not trust it yet"
        );
        apply(&mut s, done(2, "new", RotationPhase::Trusting));
        let a = s.authority().unwrap();
        assert_eq!(
            (a.ca_cert_pem.as_str(), a.ca_key_pem.as_str()),
            ("new", "new-key")
        );
        assert_eq!(
            a.trusted_pems(),
            ["new", "old"],
            "the previous CA is still trusted"
        );
        let r = a.rotation.as_ref().unwrap();
        assert_eq!(
            (r.phase, r.other_key_pem.as_str()),
            (RotationPhase::Renewing, "")
        );
        assert_eq!(a.rotating_to(), Some("new"));
        apply(&mut s, done(2, "new", RotationPhase::Renewing));
        assert!(s.authority().unwrap().rotation.is_some());
        // Node 1 is removed instead of answering: the rotation finishes without it.
        apply(&mut s, ControlCommand::RemoveNode(1));
        let a = s.authority().unwrap();
        assert!(a.rotation.is_none());
        assert_eq!(a.trusted_pems(), ["new"]);
        assert_eq!(a.trusted_pem_bundle(), "new");
        assert_eq!(a.tokens.len(), 1, "tokens outlive a rotation");
    }

    fn arb_command() -> impl Strategy<Value = ControlCommand> {
        let id = 0u64..12;
        prop_oneof![
            Just(ControlCommand::Noop),
            Just(ControlCommand::AllocateNodeId),
            Just(ControlCommand::AllocateNodeId),
            (id.clone(), "[ab]").prop_map(|(i, r)| ControlCommand::AddNode(node(i, &r))),
            (id.clone(), "[abc]").prop_map(|(i, r)| ControlCommand::UpdateNode(node(i, &r))),
            id.clone().prop_map(ControlCommand::RemoveNode),
            (0u64..6, id.clone(), "[mn]")
                .prop_map(|(r, n, m)| ControlCommand::RegisterReplica(replica(r, n, &m))),
            (0u64..6).prop_map(|r| ControlCommand::RemoveReplica(ReplicaId(r))),
            (0u64..6).prop_map(|r| ControlCommand::ReplicaReady {
                replica: ReplicaId(r),
                endpoint: "http://e".into()
            }),
            ("[mn]", 0u64..8).prop_map(|(model, g)| ControlCommand::SetAssignment {
                model,
                assignment: assignment(g)
            }),
            ("[tu]", 0u8..3).prop_map(|(name, k)| ControlCommand::CreateTenant {
                name,
                key_sha256: [k; 32]
            }),
            ("[mn]", -5.0f64..100.0).prop_map(|(m, v)| ControlCommand::SetReservation {
                tenant: "t".into(),
                model: m,
                mu_per_min: v
            }),
            ("[tu]", 0u32..4)
                .prop_map(|(tenant, replicas)| ControlCommand::SetBlastRadius { tenant, replicas }),
            "[cd]".prop_map(|c| ControlCommand::SetCa {
                ca_cert_pem: c,
                ca_key_pem: "k".into(),
                token: ("x".into(), [0; 32])
            }),
            ("[xy]", 0u8..3).prop_map(|(id, k)| ControlCommand::AddJoinToken {
                id,
                secret_sha256: [k; 32]
            }),
            "[xy]".prop_map(ControlCommand::RevokeJoinToken),
        ]
    }

    proptest! {
        #[test]
        fn apply_keeps_its_invariants(cmds in proptest::collection::vec(arb_command(), 0..80)) {
            let mut s = ControlState::default();
            let mut handed_out = BTreeSet::new();
            let mut ever_used = BTreeSet::new();
            for cmd in cmds {
                let before = s.clone();
                let gens: BTreeMap<String, u64> =
                    s.assignments().iter().map(|(m, a)| (m.clone(), a.generation)).collect();
                let resp = apply(&mut s, cmd.clone());

                // A rejected command leaves the state exactly as it was.
                if resp.is_rejected() {
                    prop_assert_eq!(&s, &before);
                }
                // Allocated node ids never repeat and never collide with a node ever seen.
                if let ControlResponse::NodeIdAllocated(id) = resp {
                    prop_assert!(handed_out.insert(id), "id {} handed out twice", id);
                    prop_assert!(!ever_used.contains(&id), "id {} was already in use", id);
                    prop_assert!(id > 0);
                }
                ever_used.extend(s.nodes().keys().copied());
                ever_used.extend(s.retired_node_ids.iter().copied());
                prop_assert!(ever_used.iter().all(|&id| id < s.next_node_id()));
                prop_assert!(handed_out.iter().all(|&id| id < s.next_node_id()));
                // Generations never go backwards, and an assignment never disappears.
                for (model, g) in gens {
                    let now = s.assignment(&model).map(|a| a.generation);
                    prop_assert!(now >= Some(g));
                }
                // Every replica sits on a live node; reservations are valid rates.
                for r in s.replicas().values() {
                    prop_assert!(s.node(r.node).is_some());
                }
                for models in s.reservations().values() {
                    prop_assert!(!models.is_empty());
                    prop_assert!(models.values().all(|v| valid_rate(*v)));
                }
                // Retired ids never come back.
                prop_assert!(s.nodes().keys().all(|id| !s.is_retired(*id)));
            }
        }
    }

    #[test]
    fn the_ca_is_written_once_and_tokens_come_and_go() {
        let mut s = ControlState::default();
        let token = |id: &str, k: u8| ControlCommand::AddJoinToken {
            id: id.into(),
            secret_sha256: [k; 32],
        };
        assert!(apply(&mut s, token("a", 1)).is_rejected(), "no CA yet");
        let ca = |c: &str| ControlCommand::SetCa {
            ca_cert_pem: c.into(),
            ca_key_pem: "SECRET-KEY".into(),
            token: ("initial".into(), [9; 32]),
        };
        assert_eq!(apply(&mut s, ca("cert")), ControlResponse::Ok);
        assert_eq!(
            apply(&mut s, ControlCommand::RevokeJoinToken("initial".into())),
            ControlResponse::Ok
        );
        assert_eq!(
            apply(&mut s, ca("cert")),
            ControlResponse::Ok,
            "the same again"
        );
        assert!(
            s.authority().unwrap().tokens.is_empty(),
            "a revoked token is not brought back"
        );
        assert!(apply(&mut s, ca("other")).is_rejected(), "never replaced");
        assert_eq!(apply(&mut s, token("a", 1)), ControlResponse::Ok);
        assert_eq!(apply(&mut s, token("a", 1)), ControlResponse::Ok);
        assert!(apply(&mut s, token("a", 2)).is_rejected(), "id taken");
        assert_eq!(apply(&mut s, token("b", 2)), ControlResponse::Ok);
        assert_eq!(
            apply(&mut s, ControlCommand::RevokeJoinToken("a".into())),
            ControlResponse::Ok
        );
        let a = s.authority().unwrap();
        assert_eq!(a.tokens.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(
            !format!("{s:?}").contains("SECRET"),
            "the key is never printed"
        );
        assert_eq!(format!("{}", ca("cert")), "SetCa");
    }
}
