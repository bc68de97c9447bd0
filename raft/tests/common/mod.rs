//! A test cluster of `ControlPlane`s on one `MemRouter`, with data dirs in tempdirs.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_raft::{
    ControlCommand, ControlMetrics, ControlPlane, ControlPlaneConfig, ControlState, MemRouter,
    MemTransport, NodeAddr, NodeId, NodeInfo, Role, RoleHint,
};
use tempfile::TempDir;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn addr(id: NodeId) -> NodeAddr {
    NodeAddr::new(format!("mem-{id}:7000"))
}

pub fn node_info(id: NodeId, rack: &str) -> NodeInfo {
    NodeInfo {
        id,
        quic_addr: addr(id).quic,
        http_addr: format!("mem-{id}:8080"),
        rack: rack.into(),
        labels: BTreeMap::new(),
        roles: [RoleHint::Voter, RoleHint::Router].into(),
        gpus: 0,
    }
}

pub struct Cluster {
    pub router: MemRouter,
    pub config: ControlPlaneConfig,
    pub dirs: BTreeMap<NodeId, TempDir>,
    pub nodes: BTreeMap<NodeId, ControlPlane<MemTransport>>,
}

impl Cluster {
    /// Opens `ids` with fresh data dirs; nothing is initialized yet.
    pub async fn open(ids: &[NodeId], config: ControlPlaneConfig) -> Self {
        let mut c = Self {
            router: MemRouter::new(),
            config,
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for &id in ids {
            c.dirs.insert(id, tempfile::tempdir().unwrap());
            c.start(id).await;
        }
        c
    }

    /// Opens node `id` from its data dir and makes it reachable.
    pub async fn start(&mut self, id: NodeId) {
        let dir = self.dirs[&id].path().to_path_buf();
        let cp = ControlPlane::open(id, &dir, self.router.transport(id), self.config.clone())
            .await
            .unwrap();
        self.router.register(id, cp.clone());
        self.nodes.insert(id, cp);
    }

    /// Makes `id` unreachable and stops its Raft, like a crashed process.
    pub async fn kill(&mut self, id: NodeId) {
        self.router.kill(id);
        if let Some(cp) = self.nodes.remove(&id) {
            cp.shutdown().await.unwrap();
        }
    }

    pub fn node(&self, id: NodeId) -> &ControlPlane<MemTransport> {
        &self.nodes[&id]
    }

    /// Initializes on the first node alone, adds the others as learners, then makes
    /// them all voters.
    pub async fn form(&self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let first = self.node(ids[0]);
        first
            .initialize([(ids[0], addr(ids[0]))].into())
            .await
            .unwrap();
        first.wait_for_leader(WAIT).await.unwrap();
        for &id in &ids[1..] {
            first.add_learner(id, addr(id)).await.unwrap();
        }
        first
            .change_membership(ids.iter().copied().collect())
            .await
            .unwrap();
        for &id in &ids {
            self.wait_metrics(id, "all voters", |m| {
                m.voters.len() == ids.len() && m.leader.is_some()
            })
            .await;
        }
    }

    pub async fn wait_metrics(
        &self,
        id: NodeId,
        what: &str,
        pred: impl Fn(&ControlMetrics) -> bool,
    ) -> ControlMetrics {
        let start = Instant::now();
        loop {
            let m = self.node(id).metrics();
            if pred(&m) {
                return m;
            }
            assert!(
                start.elapsed() < WAIT,
                "node {id}: timed out waiting for {what}; metrics {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_state(
        &self,
        id: NodeId,
        what: &str,
        pred: impl Fn(&ControlState) -> bool,
    ) -> Arc<ControlState> {
        let mut rx = self.node(id).state();
        let start = Instant::now();
        loop {
            let s = rx.borrow_and_update().clone();
            if pred(&s) {
                return s;
            }
            let left = WAIT.saturating_sub(start.elapsed());
            assert!(
                !left.is_zero(),
                "node {id}: timed out waiting for state {what}; state {s:?}"
            );
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    /// The leader all live nodes agree on.
    pub async fn leader(&self) -> NodeId {
        let start = Instant::now();
        loop {
            let leaders: BTreeSet<Option<NodeId>> =
                self.nodes.values().map(|n| n.metrics().leader).collect();
            if let [Some(l)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                if self.nodes.contains_key(&l) && self.node(l).metrics().role == Role::Leader {
                    return l;
                }
            }
            assert!(start.elapsed() < WAIT, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every live node has applied the leader's last log entry, then
    /// returns the (equal) states.
    pub async fn converged(&self) -> Arc<ControlState> {
        let leader = self.leader().await;
        let last = self.node(leader).metrics().last_log_index;
        for &id in self.nodes.keys() {
            self.wait_metrics(id, "applied the leader's log", |m| {
                m.last_applied_index >= last
            })
            .await;
        }
        let states: Vec<Arc<ControlState>> = self
            .nodes
            .values()
            .map(|n| n.state().borrow().clone())
            .collect();
        for s in &states[1..] {
            assert_eq!(**s, *states[0]);
        }
        states[0].clone()
    }

    pub async fn shutdown_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

pub fn add_node(id: NodeId) -> ControlCommand {
    ControlCommand::AddNode(node_info(id, &format!("rack-{}", id % 3)))
}
