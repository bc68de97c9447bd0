//! Raft-replicated control state.
//!
//! The fleet's membership, replica registry, assignments, desired replica counts and
//! reservations ([`ControlState`]) are changed only by committed [`ControlCommand`]s,
//! replicated with openraft. Each node keeps a durable log ([`log_store`]), a state
//! machine with on-disk snapshots ([`sm_store`]), and talks to its peers through a
//! [`RaftTransport`] the node implements over QUIC ([`network`]; an in-memory
//! [`MemRouter`] for tests). [`ControlPlane`] ties it together.

pub mod codec;
pub mod log_store;
pub mod mem_router;
pub mod network;
pub mod node;
pub mod sm_store;
pub mod state;
pub mod voter_policy;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use mem_router::{MemRouter, MemTransport};
pub use network::{RaftRpc, RaftRpcReply, RaftTransport, RemoteRefusal, TransportFailure};
pub use node::{
    send_to_leader, ControlMetrics, ControlPlane, ControlPlaneConfig, ControlPlaneError, Role,
};
pub use state::{
    apply, ControlCommand, ControlResponse, ControlState, NodeId, NodeInfo, Rejection,
    ReplicaHealth, ReplicaInfo, RoleHint,
};

/// How to reach a Raft member. Stored in Raft membership, so keep it small and stable:
/// richer node data lives in [`ControlState`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The node's QUIC endpoint (`host:port`).
    pub quic: String,
}

impl NodeAddr {
    pub fn new(quic: impl Into<String>) -> Self {
        Self { quic: quic.into() }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quic)
    }
}

openraft::declare_raft_types!(
    /// openraft's type configuration for the control state.
    pub TypeConfig:
        D = ControlCommand,
        R = ControlResponse,
        NodeId = NodeId,
        Node = NodeAddr,
);

/// Short names for the openraft types this crate uses.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
pub type Raft = openraft::Raft<TypeConfig, sm_store::SmStore>;
