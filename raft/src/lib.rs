//! Raft-replicated control state.
//!
//! The fleet's membership, replica registry, assignments, desired replica counts and
//! reservations ([`ControlState`]) are changed only by committed [`ControlCommand`]s,
//! replicated with openraft. Each node keeps a durable log ([`log_store`]), a state
//! machine with on-disk snapshots ([`sm_store`]), and talks to its peers through a
//! [`RaftTransport`] the node implements over QUIC ([`network`]; an in-memory
//! [`MemRouter`] for tests). [`ControlPlane`] ties it together.
//!
//! # Wiring a node
//!
//! - Implement [`RaftTransport::send`]: encode the [`RaftRpc`] with [`codec::encode`],
//!   send it on a request stream to `addr.quic` (checking the peer's certificate names
//!   `target`), and decode the [`RaftRpcReply`] with [`codec::decode`]. Report
//!   [`TransportFailure::Unreachable`] only when the request surely did not leave (no
//!   connection, stream not opened): writes are retried on it. A lost connection after
//!   sending is `Failed`, no reply in time `Timeout`.
//! - On the receiving side, decode the request and answer it with
//!   [`ControlPlane::handle_rpc`]; encode its reply back. Requests can arrive before the
//!   handle exists (during startup): answer them with
//!   `RaftRpcReply::Refused(RemoteRefusal::Unavailable(..))`.
//! - First start of a new cluster: [`ControlPlane::open`] on every node, then
//!   [`ControlPlane::initialize`] on exactly one of them (with itself alone, or with all
//!   founding members), then [`ControlPlane::add_learner`] and
//!   [`ControlPlane::change_membership`] for the rest.
//! - Joining: [`send_to_leader`] with `ClientWrite(AllocateNodeId)` through any known
//!   member gives the new node id; open with it, then `send_to_leader` an `AddLearner`,
//!   then write `AddNode`. The leader promotes voters chosen by [`voter_policy`].
//! - Restart: `open` with the same id and data dir; the state is back at once.
//! - Readers (the router) hold [`ControlPlane::state`] and keep using its last value
//!   when there is no leader.

pub mod codec;
pub mod log_store;
pub mod mem_router;
pub mod network;
pub mod node;
pub mod private_dir;
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
    apply, CaRotation, ClusterAuthority, ControlCommand, ControlResponse, ControlState, NodeId,
    NodeInfo, Rejection, ReplicaHealth, ReplicaInfo, RoleHint, RotationPhase, TenantInfo,
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
