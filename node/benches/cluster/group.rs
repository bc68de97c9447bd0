//! Three Raft members in this process, each with its own data dir and QUIC endpoint,
//! speaking the node's own protocol (`sluice_node::cluster::rpc`): the `raft` and
//! `failover` sections measure Raft as the node runs it without the rest of the node
//! (replicas, routers, gossip) competing for the CPU.
//!
//! Raft's network is the node's own (`raft_net::QuicRaft`); the handler below does what
//! the node's `handler.rs` does for Raft, with the node's `NodeRpc` / `NodeReply`, so a
//! change of the protocol shows up here as a compile error, not as a bench that
//! silently speaks another encoding.

use sluice_node::cluster::raft_net::Partition;
pub use sluice_node::cluster::raft_net::QuicRaft;
use sluice_node::cluster::rpc::{ForwardFrame, NodeReply, NodeRpc, Refusal, RpcError};
use sluice_raft::{
    ControlCommand, ControlPlane, ControlPlaneConfig, NodeAddr, NodeId, RaftRpcReply, RemoteRefusal,
};
use sluice_transport::{
    Client, ClusterCa, Endpoint, Handler, NodeIdentity, Reply, TransportConfig,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Answers Raft messages with `handle_rpc`; before the control plane is open, as
/// unavailable (like the node during startup).
#[derive(Default)]
struct RaftHandler {
    cp: OnceLock<ControlPlane<QuicRaft>>,
}

impl Handler for RaftHandler {
    type Request = NodeRpc;

    async fn handle(&self, _peer: u64, request: NodeRpc, reply: Reply) {
        // The members only send each other Raft; the other services are refused, one
        // by one, so that a new service must be thought about here.
        let only_raft = || RpcError::Refused(Refusal::Invalid("a bench member: Raft only".into()));
        let answer = match request {
            NodeRpc::Raft(rpc) => NodeReply::Raft(match self.cp.get() {
                Some(cp) => cp.handle_rpc(rpc).await,
                None => RaftRpcReply::Refused(RemoteRefusal::Unavailable("starting".into())),
            }),
            NodeRpc::Admin(_) => NodeReply::Admin(Err(only_raft())),
            NodeRpc::Load(_) => NodeReply::Load(Err(only_raft())),
            NodeRpc::Drill(_) => NodeReply::Drill(Err(only_raft())),
            NodeRpc::Forward(_) | NodeRpc::Route(_) => {
                let no_replica = ForwardFrame::Error("a bench member has no replicas".into());
                let _ = reply.respond(&no_replica).await;
                return;
            }
        };
        let _ = reply.respond(&answer).await;
    }
}

/// The node's Raft timings (set in `sluice_node::cluster::start`, which does not
/// export them).
fn node_raft_config() -> ControlPlaneConfig {
    ControlPlaneConfig {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
        ..ControlPlaneConfig::default()
    }
}

/// A CA and three node identities, made once.
pub struct Pki {
    _dir: tempfile::TempDir,
    ca: ClusterCa,
    ids: Vec<NodeIdentity>,
}

impl Pki {
    pub fn new(root: &Path) -> Pki {
        let dir = tempfile::tempdir_in(root).expect("temp dir");
        let b = sluice_transport::bootstrap(dir.path(), "bench", 1).expect("bootstrap a CA");
        let mut ids = vec![b.identity];
        for id in 2..=3 {
            ids.push(NodeIdentity::generate(&b.ca, id).expect("node identity"));
        }
        Pki {
            _dir: dir,
            ca: b.ca,
            ids,
        }
    }
}

pub struct Member {
    pub id: NodeId,
    pub endpoint: Endpoint,
    pub cp: ControlPlane<QuicRaft>,
}

/// Three members on fresh data dirs under `dir`, initialized together; returns once a
/// `Noop` has committed.
pub async fn start_group(pki: &Pki, dir: &Path) -> Vec<Member> {
    let mut members = Vec::new();
    let mut addrs = BTreeMap::new();
    let mut pending = Vec::new();
    for identity in &pki.ids {
        let endpoint = Endpoint::bind(
            "127.0.0.1:0".parse().expect("addr"),
            identity,
            pki.ca.cert(),
            TransportConfig::default(),
        )
        .expect("bind a QUIC endpoint");
        let handler = Arc::new(RaftHandler::default());
        tokio::spawn(sluice_transport::serve(
            endpoint.clone(),
            handler.clone(),
            None,
        ));
        let addr = endpoint.local_addr().expect("local addr");
        addrs.insert(identity.node_id(), NodeAddr::new(addr.to_string()));
        pending.push((identity.node_id(), endpoint, handler));
    }
    for (id, endpoint, handler) in pending {
        let transport = QuicRaft {
            client: Arc::new(Client::new(endpoint.clone())),
            timeout: Duration::from_secs(2),
            partition: Partition::default(),
        };
        let cp = ControlPlane::open(
            id,
            dir.join(format!("node-{id}")),
            transport,
            node_raft_config(),
        )
        .await
        .expect("open a control plane");
        let _ = handler.cp.set(cp.clone());
        members.push(Member { id, endpoint, cp });
    }
    members[0]
        .cp
        .initialize(addrs)
        .await
        .expect("initialize the group");
    members[0]
        .cp
        .write(ControlCommand::Noop)
        .await
        .expect("first write");
    members
}

pub async fn stop_group(members: Vec<Member>) {
    for m in &members {
        let _ = m.cp.shutdown().await;
        m.endpoint.close();
    }
}

pub fn leader_of(members: &[Member]) -> usize {
    let id = members[0].cp.metrics().leader.expect("a leader");
    members
        .iter()
        .position(|m| m.id == id)
        .expect("leader is a member")
}
