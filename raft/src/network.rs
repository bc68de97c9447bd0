//! Raft's network, generic over a small request/reply transport.
//!
//! The node carries [`RaftRpc`] to a peer and brings back its [`RaftRpcReply`] over its
//! QUIC RPC layer (framed with [`crate::codec`]); the receiving side hands the request
//! to [`crate::ControlPlane::handle_rpc`]. Tests use [`crate::MemRouter`]. openraft's
//! `RaftNetworkFactory`/`RaftNetworkV2` are implemented here on top of that trait, so
//! neither side of the transport has to know openraft's network API.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RPCTypes};
use serde::{Deserialize, Serialize};

use crate::state::{ControlCommand, ControlResponse, NodeId};
use crate::{NodeAddr, Snapshot, SnapshotMeta, TypeConfig, Vote};

/// A request from one node's control plane to another's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    /// A whole snapshot in one message: control state snapshots are small.
    FullSnapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A write forwarded to the node believed to lead. Not forwarded further.
    ClientWrite(ControlCommand),
    /// Adds a learner; only the leader accepts it. Used by joining nodes and forwarding.
    AddLearner {
        id: NodeId,
        addr: NodeAddr,
    },
    /// Replaces the voter set; only the leader accepts it.
    ChangeMembership {
        voters: BTreeSet<NodeId>,
    },
}

impl RaftRpc {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AppendEntries(_) => "append_entries",
            Self::Vote(_) => "vote",
            Self::PreVote(_) => "pre_vote",
            Self::FullSnapshot { .. } => "full_snapshot",
            Self::TransferLeader(_) => "transfer_leader",
            Self::ClientWrite(_) => "client_write",
            Self::AddLearner { .. } => "add_learner",
            Self::ChangeMembership { .. } => "change_membership",
        }
    }
}

/// The answer to a [`RaftRpc`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftRpcReply {
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    /// Answers both `Vote` and `PreVote`.
    Vote(VoteResponse<TypeConfig>),
    FullSnapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    /// The write committed at `log_index` and applying it answered `response`.
    ClientWrite {
        response: ControlResponse,
        log_index: u64,
    },
    /// `AddLearner` or `ChangeMembership` committed.
    MembershipChanged,
    Refused(RemoteRefusal),
}

/// Why the receiver did not carry out a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteRefusal {
    /// Only the leader takes writes and membership changes; here is who it is, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<NodeAddr>,
    },
    /// Raft on the receiver is not running (shut down, or stopped by a storage error).
    #[error("raft unavailable on the receiver: {0}")]
    Unavailable(String),
    /// The write was proposed but its fate is unknown (timeout, leader change).
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// Try again shortly: another membership change is still being committed.
    #[error("busy: {0}")]
    Busy(String),
    /// The request was refused for another reason.
    #[error("{0}")]
    Failed(String),
    /// The receiver replied with a message of the wrong kind (a protocol bug).
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
}

/// Why the transport could not bring back a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TransportFailure {
    /// The peer could not be reached; the request surely was not delivered (writes
    /// are retried on this, so do not use it once the request may have left).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No reply in time; the request may or may not have been handled.
    #[error("timed out")]
    Timeout,
    /// The call failed after the request may have left (connection lost, bad frame).
    #[error("transport failed: {0}")]
    Failed(String),
}

/// Carries one request to a peer and brings back its reply. The node implements this over
/// its QUIC RPC layer; the peer answers by calling `ControlPlane::handle_rpc`.
pub trait RaftTransport: Send + Sync + Clone + 'static {
    fn send(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftRpcReply, TransportFailure>> + Send;
}

/// openraft's network factory: one [`Network`] client per peer over the same transport.
pub struct NetworkFactory<T> {
    local: NodeId,
    transport: T,
}

impl<T: RaftTransport> NetworkFactory<T> {
    pub fn new(local: NodeId, transport: T) -> Self {
        Self { local, transport }
    }
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = Network<T>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        Network {
            local: self.local,
            target,
            addr: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// openraft's client for one peer.
pub struct Network<T> {
    local: NodeId,
    target: NodeId,
    addr: NodeAddr,
    transport: T,
}

fn unexpected(reply: &RaftRpcReply) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!(
        "unexpected reply {reply:?}"
    )))
}

impl<T: RaftTransport> Network<T> {
    async fn call(
        &self,
        rpc: RaftRpc,
        ttl: Duration,
        action: RPCTypes,
    ) -> Result<RaftRpcReply, RPCError<TypeConfig>> {
        let kind = rpc.kind();
        let sent =
            tokio::time::timeout(ttl, self.transport.send(self.target, &self.addr, rpc)).await;
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout: ttl,
            })
        };
        match sent {
            Err(_) | Ok(Err(TransportFailure::Timeout)) => Err(timeout()),
            Ok(Err(TransportFailure::Unreachable(m))) => Err(RPCError::Unreachable(
                Unreachable::from_string(format!("{kind} to {}: {m}", self.target)),
            )),
            Ok(Err(TransportFailure::Failed(m))) => Err(RPCError::Network(
                NetworkError::from_string(format!("{kind} to {}: {m}", self.target)),
            )),
            // A peer whose Raft is down is as good as unreachable: back off.
            Ok(Ok(RaftRpcReply::Refused(r))) => Err(RPCError::Unreachable(
                Unreachable::from_string(format!("{kind} to {}: {r}", self.target)),
            )),
            Ok(Ok(reply)) => Ok(reply),
        }
    }
}

impl<T: RaftTransport> RaftNetworkV2<TypeConfig> for Network<T> {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                RaftRpc::AppendEntries(rpc),
                option.hard_ttl(),
                RPCTypes::AppendEntries,
            )
            .await?
        {
            RaftRpcReply::AppendEntries(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(RaftRpc::Vote(rpc), option.hard_ttl(), RPCTypes::Vote)
            .await?
        {
            RaftRpcReply::Vote(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(RaftRpc::PreVote(rpc), option.hard_ttl(), RPCTypes::Vote)
            .await?
        {
            RaftRpcReply::Vote(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = RaftRpc::FullSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let call = self.call(rpc, option.hard_ttl(), RPCTypes::InstallSnapshot);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = call => match reply {
                Ok(RaftRpcReply::FullSnapshot(r)) => Ok(r),
                Ok(other) => Err(StreamingError::Network(NetworkError::from_string(format!("unexpected reply {other:?}")))),
                Err(RPCError::Timeout(t)) => Err(StreamingError::Timeout(t)),
                Err(RPCError::Unreachable(u)) => Err(StreamingError::Unreachable(u)),
                Err(RPCError::Network(n)) => Err(StreamingError::Network(n)),
                Err(RPCError::RemoteError(e)) => Err(StreamingError::Network(NetworkError::from_string(e.to_string()))),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(
                RaftRpc::TransferLeader(req),
                option.hard_ttl(),
                RPCTypes::TransferLeader,
            )
            .await?
        {
            RaftRpcReply::TransferLeader(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }
}
