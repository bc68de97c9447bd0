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
}

impl RaftTransport for QuicRaft {
    async fn send(
        &self,
        target: NodeId,
        addr: &NodeAddr,
        rpc: RaftRpc,
    ) -> Result<RaftRpcReply, TransportFailure> {
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
            Err(TransportError::Timeout(_)) => Err(TransportFailure::Timeout),
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
