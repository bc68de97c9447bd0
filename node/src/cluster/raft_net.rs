//! Raft's network over the node's QUIC RPC client: every Raft message is a
//! [`NodeRpc::Raft`] call to the target's endpoint, mutually authenticated.

use super::rpc::{NodeReply, NodeRpc};
use sluice_raft::{NodeAddr, NodeId, RaftRpc, RaftRpcReply, RaftTransport, TransportFailure};
use sluice_transport::{Client, TransportError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct QuicRaft {
    pub client: Arc<Client>,
    pub timeout: Duration,
    pub partition: Partition,
}

/// Nodes this node is cut off from (a chaos drill's network partition): Raft messages
/// to them are not sent and their requests are dropped unanswered.
#[derive(Clone, Default)]
pub struct Partition(Arc<std::sync::RwLock<std::collections::BTreeSet<u64>>>);

impl Partition {
    pub fn set(&self, nodes: impl IntoIterator<Item = u64>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = nodes.into_iter().collect();
    }

    pub fn blocks(&self, node: u64) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&node)
    }
}

impl RaftTransport for QuicRaft {
    async fn send(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, TransportFailure> {
        if self.partition.blocks(target) {
            return Err(TransportFailure::Unreachable(format!(
                "node {target} is partitioned away"
            )));
        }
        let to: SocketAddr = addr.quic.parse().map_err(|e| {
            TransportFailure::Unreachable(format!("node {target} at '{addr}': {e}"))
        })?;
        match self
            .client
            .call::<_, NodeReply>(to, &NodeRpc::Raft(rpc), self.timeout)
            .await
        {
            Ok(NodeReply::Raft(r)) => Ok(r),
            Ok(other) => Err(TransportFailure::Failed(format!(
                "node {target} answered a Raft message with {other:?}"
            ))),
            Err(TransportError::Timeout(_)) => {
                // A peer restarted at the same address never answers on the old
                // connection (it cannot reset it): dial afresh next time rather than wait
                // out the idle timeout.
                self.client.forget(to);
                Err(TransportFailure::Timeout)
            }
            Err(
                e @ (TransportError::Connect { .. }
                | TransportError::Handshake { .. }
                | TransportError::ConnectionLost(_)),
            ) => {
                self.client.forget(to);
                Err(TransportFailure::Unreachable(e.to_string()))
            }
            Err(e) => Err(TransportFailure::Failed(e.to_string())),
        }
    }
}
