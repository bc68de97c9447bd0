//! An in-memory [`RaftTransport`] for tests: nodes register their [`ControlPlane`],
//! messages are encoded and decoded with [`crate::codec`] as on the real wire, and the
//! router can partition nodes into groups or "kill" a node (unregister it).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec;
use crate::network::{RaftRpc, RaftRpcReply, RaftTransport, TransportFailure};
use crate::node::ControlPlane;
use crate::state::NodeId;
use crate::NodeAddr;

#[derive(Default)]
struct RouterInner {
    nodes: HashMap<NodeId, ControlPlane<MemTransport>>,
    /// Killed nodes: what they send is dropped. (Unknown senders, e.g. a node asking to
    /// join before it has an id, are let through.)
    killed: HashSet<NodeId>,
    /// Group of each node while partitioned; nodes talk only within their group, and a
    /// node in no group talks to nobody.
    groups: Option<HashMap<NodeId, usize>>,
}

/// The in-memory network shared by all nodes of a test.
#[derive(Clone, Default)]
pub struct MemRouter {
    inner: Arc<Mutex<RouterInner>>,
}

/// One node's handle on the [`MemRouter`].
#[derive(Clone)]
pub struct MemTransport {
    router: MemRouter,
    from: NodeId,
}

impl MemRouter {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, RouterInner> {
        // A panic elsewhere in a test must not hide behind a poisoned lock.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport node `from` sends with.
    pub fn transport(&self, from: NodeId) -> MemTransport {
        MemTransport {
            router: self.clone(),
            from,
        }
    }

    /// Makes `node` reachable under `id` (again).
    pub fn register(&self, id: NodeId, node: ControlPlane<MemTransport>) {
        let mut inner = self.lock();
        inner.killed.remove(&id);
        inner.nodes.insert(id, node);
    }

    /// Unregisters `id`: nothing reaches it and nothing it sends arrives. Returns its
    /// handle so the test can shut it down.
    pub fn kill(&self, id: NodeId) -> Option<ControlPlane<MemTransport>> {
        let mut inner = self.lock();
        inner.killed.insert(id);
        inner.nodes.remove(&id)
    }

    /// Splits the nodes into groups that cannot talk to each other. Nodes not listed
    /// are cut off from everyone.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let map = groups
            .iter()
            .enumerate()
            .flat_map(|(g, ids)| ids.iter().map(move |id| (*id, g)))
            .collect();
        self.lock().groups = Some(map);
    }

    /// Ends any partition.
    pub fn heal(&self) {
        self.lock().groups = None;
    }

    fn can_talk(inner: &RouterInner, a: NodeId, b: NodeId) -> bool {
        match &inner.groups {
            None => true,
            Some(g) => matches!((g.get(&a), g.get(&b)), (Some(x), Some(y)) if x == y),
        }
    }

    fn route(
        &self,
        from: NodeId,
        to: NodeId,
    ) -> Result<ControlPlane<MemTransport>, TransportFailure> {
        let inner = self.lock();
        if inner.killed.contains(&from) {
            return Err(TransportFailure::Unreachable(format!(
                "sender {from} is down"
            )));
        }
        if !Self::can_talk(&inner, from, to) {
            return Err(TransportFailure::Unreachable(format!(
                "{from} and {to} are partitioned"
            )));
        }
        inner
            .nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| TransportFailure::Unreachable(format!("node {to} is down")))
    }

    fn reply_lost(&self, from: NodeId, to: NodeId) -> bool {
        let inner = self.lock();
        !inner.nodes.contains_key(&to) || !Self::can_talk(&inner, from, to)
    }
}

fn wire<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &T,
) -> Result<T, TransportFailure> {
    let bytes = codec::encode(value).map_err(|e| TransportFailure::Failed(e.to_string()))?;
    codec::decode(&bytes).map_err(|e| TransportFailure::Failed(e.to_string()))
}

impl RaftTransport for MemTransport {
    fn send(
        &self,
        target: NodeId,
        _addr: &NodeAddr,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftRpcReply, TransportFailure>> + Send {
        let router = self.router.clone();
        let from = self.from;
        async move {
            let rpc = wire(&rpc)?;
            let node = router.route(from, target)?;
            let reply = node.handle_rpc(rpc).await;
            // A partition or kill while the request was in flight loses the reply.
            if router.reply_lost(from, target) {
                return Err(TransportFailure::Failed(format!(
                    "reply from {target} lost"
                )));
            }
            wire(&reply)
        }
    }
}
