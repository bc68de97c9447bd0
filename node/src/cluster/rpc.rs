//! What nodes say to each other over QUIC: Raft traffic, membership requests, status,
//! assigner load reports, and requests forwarded to a replica on another node.

use serde::{Deserialize, Serialize};
use sluice_actors::assigner::LoadReport;
use sluice_actors::slice::ReplicaId;
use sluice_raft::{NodeInfo, RaftRpc};
use std::net::SocketAddr;

/// A request from one node to another, by service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeRpc {
    /// Raft's own messages, answered [`NodeReply::Raft`].
    Raft(RaftRpc),
    /// Membership and operators' requests, answered [`NodeReply::Admin`].
    Admin(AdminRpc),
    /// Load sharing between routers and reports to the leader, answered
    /// [`NodeReply::Load`].
    Load(LoadRpc),
    /// An OpenAI request for a replica of the receiving node; answered with a stream of
    /// [`ForwardFrame`]s.
    Forward(ForwardRequest),
    /// A client's request for a model the sending node does not route, for the
    /// receiver's front door to route as its own; answered like `Forward`.
    Route(RouteRequest),
    /// Chaos drills' hooks, answered [`NodeReply::Drill`]; refused by a node not
    /// started for drills.
    Drill(DrillRpc),
}

/// Membership and administration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRpc {
    /// A node that joined asks to become a member (learner, then voter as the voter
    /// policy allows) and to be recorded in the control state.
    Join(NodeInfo),
    /// Removes a node from the voters and the control state.
    Remove(u64),
    Status,
    /// An operator's write to the control state (e.g. a tenant reservation); followers
    /// forward it to the leader.
    Write(sluice_raft::ControlCommand),
    /// A `Join` or `Remove` passed on by a node that believed the receiver leads.
    AtLeader(Box<AdminRpc>),
}

/// What routers tell each other and the leader about load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LoadRpc {
    /// A router's measured load of one model since its last report, for the leader's
    /// assigner (each model has its own); it also tells the leader the node is live.
    Report { model: String, report: LoadReport },
    /// The sender's router's in-flight load per replica and what its tenants asked.
    Gossip(Gossip),
}

/// Hooks only chaos drills use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DrillRpc {
    /// Drop all cluster traffic to and from these nodes (empty: heal).
    Isolate(Vec<u64>),
}

/// What an admin request did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminAnswer {
    Done,
    Status(Box<ClusterStatus>),
}

/// Why a request between nodes did not succeed, kept apart by what the caller may
/// conclude: a refusal did nothing (safe to retry or to report as not done), an unknown
/// outcome may have taken effect (check before repeating what is not idempotent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
    #[error("refused: {0}")]
    Refused(Refusal),
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("no leader")]
    NoLeader,
    #[error("not the leader; the leader is at {0}")]
    NotLeader(SocketAddr),
    /// The node could not be reached: nothing was sent.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The control state refused the command (e.g. an unknown tenant): final.
    #[error("{0}")]
    Rejected(String),
    /// The leader cannot take it now (e.g. a membership change is in progress): nothing
    /// was done, and asking again shortly may succeed.
    #[error("busy: {0}")]
    Busy(String),
    /// The request makes no sense from this sender (e.g. joining as another node).
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("this node was not started with drill hooks (SLUICE_DRILL_HOOKS=1)")]
    DrillHooksOff,
}

impl RpcError {
    /// Worth asking again shortly: leadership moves, nodes come back, and a lost
    /// answer's request is asked again only where repeating it is harmless.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            RpcError::Unknown(_)
                | RpcError::Refused(
                    Refusal::NoLeader | Refusal::NotLeader(_) | Refusal::Unreachable(_)
                )
        )
    }
}

impl From<sluice_raft::ControlPlaneError> for RpcError {
    fn from(e: sluice_raft::ControlPlaneError) -> Self {
        use sluice_raft::ControlPlaneError as E;
        match e {
            E::NoLeader { .. } => RpcError::Refused(Refusal::NoLeader),
            E::Refused(why) => RpcError::Refused(Refusal::Busy(why)),
            E::Fatal(why) => RpcError::Refused(Refusal::Unreachable(why)),
            other => RpcError::Unknown(other.to_string()),
        }
    }
}

impl From<sluice_transport::TransportError> for RpcError {
    fn from(e: sluice_transport::TransportError) -> Self {
        use sluice_transport::TransportError as T;
        match e {
            // Nothing reached the peer.
            T::Connect { .. }
            | T::Handshake { .. }
            | T::Refused(_)
            | T::EndpointClosed
            | T::NoPeerCertificate
            | T::WrongPeer { .. } => RpcError::Refused(Refusal::Unreachable(e.to_string())),
            // Sent, and then the answer was lost.
            other => RpcError::Unknown(other.to_string()),
        }
    }
}

/// What a router tells the others several times a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gossip {
    /// In-flight (MU, requests) per replica, so that every router counts the others'
    /// work when it chooses.
    pub loads: Vec<(ReplicaId, f64, u64)>,
    /// MU/min asked of this node per tenant, per model (reservations are per model),
    /// so that reservations follow the traffic.
    pub demand: Vec<(String, sluice_actors::admission::NodeDemand)>,
    /// Requests this router recently saw on replicas as they failed (quarantine).
    pub implicated: Vec<sluice_actors::router::Implication>,
    /// Replicas this router lately took for hung from their streams, with how many ms
    /// ago: the receiving node's prober ejects and restarts its own.
    pub stalled: Vec<(ReplicaId, u64)>,
    /// Replicas this router lately heard from (a token, an answer, a passed probe),
    /// with how many ms ago: a busy replica is not taken for hung by a router whose
    /// request waits in its queue.
    pub heard: Vec<(ReplicaId, u64)>,
}

/// The answer to anything but `Forward`, by service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeReply {
    Raft(sluice_raft::RaftRpcReply),
    Admin(Result<AdminAnswer, RpcError>),
    Load(Result<(), RpcError>),
    Drill(Result<(), RpcError>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub replica: ReplicaId,
    /// `/v1/chat/completions` or `/v1/completions`.
    pub path: String,
    pub body: Vec<u8>,
    /// The request's `x-request-id` at the door: the serving node logs it and names
    /// its engine attempt after it.
    pub request_id: String,
}

/// A client's request handed to a node that routes its model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteRequest {
    /// The front door's path (`/v1/chat/completions`, …).
    pub path: String,
    /// The client's headers that routing and admission read (its API key, workload
    /// key headers), as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request's `x-request-id` at the first door.
    pub request_id: String,
}

/// One piece of a forwarded answer: the head first, then body chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardFrame {
    Head {
        status: u16,
        content_type: Option<String>,
        /// Other headers of the answer the client should see (a routed request's
        /// `retry-after`, `x-sluice-replica`); none from an engine.
        headers: Vec<(String, String)>,
    },
    Chunk(Vec<u8>),
    /// The engine could not be reached or its answer broke off.
    Error(String),
    /// The engine took the request and failed before answering (it may be the
    /// request's doing).
    Broke(String),
    /// Nothing to send yet, but the serving node is alive: sent when the engine has
    /// been quiet for [`ALIVE_EVERY`](crate::cluster::forward::ALIVE_EVERY), so that a
    /// router tells a dead node from a slow engine at once.
    Alive,
}

/// What `sluice cluster status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: Option<u64>,
    pub nodes: Vec<NodeStatus>,
    pub replicas: Vec<ReplicaStatus>,
    /// Generation of the answering node's (first) model's assignment (0: none
    /// committed yet); `models` has every model's.
    pub generation: u64,
    /// The committed assignment's slices: first key and replica subset, in key order.
    #[serde(default)]
    pub slices: Vec<SliceStatus>,
    /// The autoscaler's latest count for the model (none: it has not decided).
    #[serde(default)]
    pub desired: Option<u32>,
    /// Offered MU/min as the autoscaler last measured it (only from the leader).
    #[serde(default)]
    pub offered_mu_per_min: Option<f64>,
    /// The node that answered.
    pub answered_by: u64,
    pub term: u64,
    /// Tenant names.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Tenant → model → reserved MU/min.
    pub reservations: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    /// Tenant → the most replicas of a model its requests may reach.
    #[serde(default)]
    pub blast_radius: std::collections::BTreeMap<String, u32>,
    /// The ids of the join tokens nodes may join with (never the tokens).
    #[serde(default)]
    pub join_tokens: Vec<String>,
    /// SHA-256 of the CA that signs node certificates now (what new join tokens pin).
    #[serde(default)]
    pub ca_sha256: Option<String>,
    /// A CA rotation under way: its phase and which members are done with it.
    #[serde(default)]
    pub ca_rotation: Option<CaRotationStatus>,
    /// Every model of the registry: its assignment, replicas and autoscaler's word.
    #[serde(default)]
    pub models: Vec<ModelStatus>,
}

/// One model of the cluster in `cluster status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStatus {
    pub model: String,
    pub replicas: usize,
    pub healthy: usize,
    pub generation: u64,
    pub slices: usize,
    pub desired: Option<u32>,
    pub offered_mu_per_min: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRotationStatus {
    /// `trusting` (members take the new CA into their trust) or `renewing` (the new CA
    /// signs; members renew under it while the previous one is still trusted).
    pub phase: String,
    /// SHA-256 of the CA rotated to.
    pub to_sha256: String,
    /// The members done with this phase.
    pub done: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    /// `leader`, `voter`, `learner`, or `member` (in the state, not in Raft's config).
    pub role: String,
    pub rack: String,
    pub http: String,
    pub quic: String,
    pub gpus: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceStatus {
    pub start: u64,
    pub subset: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: u64,
    pub node: u64,
    #[serde(default)]
    pub model: String,
    pub endpoint: String,
    pub health: String,
}
