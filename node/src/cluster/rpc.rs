//! What nodes say to each other over QUIC: Raft traffic, membership requests, status,
//! assigner load reports, and requests forwarded to a replica on another node.

use serde::{Deserialize, Serialize};
use sluice_actors::assigner::LoadReport;
use sluice_actors::slice::ReplicaId;
use sluice_raft::{NodeInfo, RaftRpc};

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeRpc {
    Raft(RaftRpc),
    /// A node that joined asks to become a member (learner, then voter as the voter
    /// policy allows) and to be recorded in the control state.
    Join(NodeInfo),
    /// Removes a node from the voters and the control state.
    Remove(u64),
    Status,
    /// A router's measured load since its last report, for the leader's assigner.
    Load(LoadReport),
    /// An OpenAI request for a replica of the receiving node; answered with a stream of
    /// [`ForwardFrame`]s.
    Forward(ForwardRequest),
    /// The sender's router's in-flight load per replica and what its tenants asked.
    Gossip(Gossip),
    /// An operator's write to the control state (e.g. a tenant reservation); followers
    /// forward it to the leader.
    Write(sluice_raft::ControlCommand),
    /// Chaos hook: drop all cluster traffic to and from these nodes (empty: heal).
    Isolate(Vec<u64>),
    /// A `Join` or `Remove` passed on by a node that believed the receiver leads.
    AtLeader(Box<NodeRpc>),
}

/// What a router tells the others several times a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gossip {
    /// In-flight (MU, requests) per replica, so that every router counts the others'
    /// work when it chooses.
    pub loads: Vec<(ReplicaId, f64, u64)>,
    /// MU/min asked of this node per tenant, so that reservations follow the traffic.
    pub demand: sluice_actors::admission::NodeDemand,
    /// Requests this router recently saw on replicas as they failed (quarantine).
    pub implicated: Vec<sluice_actors::router::Implication>,
}

/// The answer to anything but `Forward`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeReply {
    Raft(sluice_raft::RaftRpcReply),
    Done,
    Status(ClusterStatus),
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub replica: ReplicaId,
    /// `/v1/chat/completions` or `/v1/completions`.
    pub path: String,
    pub body: Vec<u8>,
}

/// One piece of a forwarded answer: the head first, then body chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardFrame {
    Head {
        status: u16,
        content_type: Option<String>,
    },
    Chunk(Vec<u8>),
    /// The engine could not be reached or its answer broke off.
    Error(String),
    /// The engine took the request and failed before answering (it may be the
    /// request's doing).
    Broke(String),
}

/// What `sluice cluster status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: Option<u64>,
    pub nodes: Vec<NodeStatus>,
    pub replicas: Vec<ReplicaStatus>,
    /// Generation of the model's assignment (0: none committed yet).
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
    pub endpoint: String,
    pub health: String,
}
