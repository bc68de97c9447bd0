//! [`ControlPlane`]: one node's handle on the replicated control state.
//!
//! It opens the durable stores, runs openraft, routes writes and membership changes to
//! the leader (locally, or forwarded one hop through the transport), answers peers'
//! requests in [`ControlPlane::handle_rpc`], and exposes the local copy of the state as a
//! `watch` channel that keeps its last value when there is no leader.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    ChangeMembershipError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::raft::ClientWriteResponse;
use openraft::{ConfigError, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::codec;
use crate::log_store::{sync_dir, LogStore, LogStoreError, LogStoreOptions};
use crate::network::{
    NetworkFactory, RaftRpc, RaftRpcReply, RaftTransport, RemoteRefusal, TransportFailure,
};
use crate::sm_store::{SmStore, SmStoreError};
use crate::state::{ControlCommand, ControlResponse, ControlState, NodeId};
use crate::{NodeAddr, Raft, Snapshot, TypeConfig};

const NODE_ID_FILE: &str = "node_id";

/// Timing and compaction settings.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub cluster_name: String,
    /// How often the leader heartbeats its followers.
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing for a random time in this range starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept below the snapshot, so a follower slightly behind catches up from the
    /// log instead of receiving the whole snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Time allowed to send and install a snapshot on a follower.
    pub snapshot_timeout: Duration,
    /// Budget of a `write` (or membership change), including waiting for a leader.
    pub write_timeout: Duration,
    /// Ask peers before starting an election, so a node coming back from a partition
    /// does not depose a healthy leader.
    pub pre_vote: bool,
    pub log: LogStoreOptions,
}

impl Default for ControlPlaneConfig {
    /// Values for a data-center network: elections within a few seconds of a leader loss.
    fn default() -> Self {
        Self {
            cluster_name: "sluice".into(),
            heartbeat_interval: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_logs_since_last: 1000,
            max_in_snapshot_log_to_keep: 200,
            snapshot_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            pre_vote: true,
            log: LogStoreOptions::default(),
        }
    }
}

impl ControlPlaneConfig {
    /// Fast timings for in-memory tests.
    pub fn for_tests() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(3),
            ..Self::default()
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, ConfigError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.snapshot_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            enable_pre_vote: Some(self.pre_vote),
            ..openraft::Config::default()
        }
        .validate()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(transparent)]
    LogStore(#[from] LogStoreError),
    #[error(transparent)]
    SmStore(#[from] SmStoreError),
    #[error("invalid Raft configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("data dir I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("data dir {path} belongs to node {found}, not {expected}")]
    NodeIdMismatch {
        path: PathBuf,
        found: String,
        expected: NodeId,
    },
    #[error("this node's Raft is not running: {0}")]
    Fatal(String),
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
    #[error("cannot initialize: {0}")]
    Initialize(String),
    /// No leader accepted the request in time; it was not applied.
    #[error("no leader after waiting {waited:?} ({detail})")]
    NoLeader { waited: Duration, detail: String },
    /// The request may or may not have taken effect (timed out waiting for commit, the
    /// leader changed under it, or the reply was lost). Check the state before retrying
    /// anything that is not idempotent.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The leader refused the request (e.g. a membership change already in progress).
    #[error("refused: {0}")]
    Refused(String),
}

/// A node's part in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl From<ServerState> for Role {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Leader => Self::Leader,
            ServerState::Follower => Self::Follower,
            ServerState::Candidate => Self::Candidate,
            ServerState::Learner => Self::Learner,
            ServerState::Shutdown => Self::Shutdown,
        }
    }
}

/// What the node reports about its Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMetrics {
    pub id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Last log index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries up to here were removed from the log (the log starts after it).
    pub purged_index: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Members and their addresses, as the current membership says.
    pub members: BTreeMap<NodeId, NodeAddr>,
    /// Set when Raft stopped on an error (e.g. a failed disk write). It does not recover
    /// by itself: shut down and reopen (or restart the process).
    pub fatal: Option<String>,
}

struct Inner<T> {
    id: NodeId,
    raft: Raft,
    transport: T,
    state_rx: watch::Receiver<Arc<ControlState>>,
    config: ControlPlaneConfig,
}

/// One node's handle on the replicated control state. Cheap to clone.
pub struct ControlPlane<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for ControlPlane<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// A write or membership change, to run on the leader.
#[derive(Clone)]
enum LeaderOp {
    Write(ControlCommand),
    AddLearner { id: NodeId, addr: NodeAddr },
    ChangeMembership { voters: BTreeSet<NodeId> },
}

impl LeaderOp {
    fn to_rpc(&self) -> RaftRpc {
        match self {
            Self::Write(cmd) => RaftRpc::ClientWrite(cmd.clone()),
            Self::AddLearner { id, addr } => RaftRpc::AddLearner {
                id: *id,
                addr: addr.clone(),
            },
            Self::ChangeMembership { voters } => RaftRpc::ChangeMembership {
                voters: voters.clone(),
            },
        }
    }
}

/// Refuses to open a data dir written by another node id: a copied or mixed-up data
/// dir would make two nodes share one Raft identity.
fn check_node_id(dir: &Path, id: NodeId) -> Result<(), ControlPlaneError> {
    let path = dir.join(NODE_ID_FILE);
    let io_err = |source| ControlPlaneError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            if s.trim().parse::<NodeId>().ok() != Some(id) {
                return Err(ControlPlaneError::NodeIdMismatch {
                    path,
                    found: s.trim().to_string(),
                    expected: id,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            let tmp = dir.join("node_id.tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(io_err)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err)?;
            std::fs::rename(&tmp, &path).map_err(io_err)?;
            sync_dir(dir).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

fn not_leader(f: ForwardToLeader<TypeConfig>) -> RemoteRefusal {
    RemoteRefusal::NotLeader {
        leader: f.leader_id,
        leader_addr: f.leader_node,
    }
}

/// Maps the local outcome of a leader operation to the reply a forwarding peer gets.
fn write_outcome(
    result: Result<
        ClientWriteResponse<TypeConfig>,
        RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    >,
    membership: bool,
) -> RaftRpcReply {
    match result {
        Ok(_) if membership => RaftRpcReply::MembershipChanged,
        Ok(resp) => RaftRpcReply::ClientWrite {
            response: resp.data,
            log_index: resp.log_id.index,
        },
        // Raft stopped while the request was in flight: it may have been replicated.
        // (A Raft already stopped before proposing is caught earlier, as Unavailable.)
        Err(RaftError::Fatal(f)) => RaftRpcReply::Refused(RemoteRefusal::Indeterminate(format!(
            "raft stopped during the request: {f}"
        ))),
        Err(RaftError::APIError(e)) => RaftRpcReply::Refused(match e {
            ClientWriteError::ForwardToLeader(f) => not_leader(f),
            ClientWriteError::LogEntryDiscarded(f) => {
                RemoteRefusal::Indeterminate(format!("leader changed before commit: {f}"))
            }
            ClientWriteError::ChangeMembershipError(e @ ChangeMembershipError::InProgress(_)) => {
                RemoteRefusal::Busy(e.to_string())
            }
            ClientWriteError::ChangeMembershipError(e) => RemoteRefusal::Failed(e.to_string()),
            ClientWriteError::PreconditionFailed(e) => RemoteRefusal::Failed(e.to_string()),
        }),
    }
}

impl<T: RaftTransport> ControlPlane<T> {
    /// Opens the stores in `data_dir`, starts Raft and returns once the state machine
    /// has re-applied everything this node knew to be committed before it stopped (the
    /// log store persists the commit point). That needs no peer, so a whole cluster can
    /// restart one node at a time. For a state at least as new as the cluster's, also
    /// call [`Self::wait_for_recovery`].
    pub async fn open(
        node_id: NodeId,
        data_dir: impl AsRef<Path>,
        transport: T,
        config: ControlPlaneConfig,
    ) -> Result<Self, ControlPlaneError> {
        let dir = data_dir.as_ref().to_path_buf();
        let raft_config = Arc::new(config.raft_config()?);
        let log_options = config.log.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || {
            // The log store takes the data dir's lock first.
            let log = LogStore::open(&dir, log_options)?;
            check_node_id(&dir, node_id)?;
            let sm = SmStore::open(&dir)?;
            Ok::<_, ControlPlaneError>((log, sm))
        })
        .await
        .map_err(|e| ControlPlaneError::Fatal(format!("opening the stores panicked: {e}")))??;
        let state_rx = sm.subscribe();
        let network = NetworkFactory::new(node_id, transport.clone());
        let raft = Raft::new(node_id, raft_config, network, log, sm)
            .await
            .map_err(|e| ControlPlaneError::Fatal(e.to_string()))?;
        tracing::info!(node_id, "control plane open");
        Ok(Self {
            inner: Arc::new(Inner {
                id: node_id,
                raft,
                transport,
                state_rx,
                config,
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The underlying openraft handle, for what this type does not wrap (e.g. triggering
    /// a snapshot).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Forms a new cluster of `members`. Call it once, on one node of a brand-new cluster
    /// (the others join as learners); it fails if this node already has any Raft state.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<(), ControlPlaneError> {
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| ControlPlaneError::Fatal(e.to_string()))?
        {
            return Err(ControlPlaneError::AlreadyInitialized);
        }
        raft.initialize(members).await.map_err(|e| match e {
            RaftError::Fatal(f) => ControlPlaneError::Fatal(f.to_string()),
            RaftError::APIError(InitializeError::NotAllowed(_)) => {
                ControlPlaneError::AlreadyInitialized
            }
            RaftError::APIError(e) => ControlPlaneError::Initialize(e.to_string()),
        })
    }

    /// Commits `cmd` through the leader and returns what applying it did (which may be
    /// [`ControlResponse::Rejected`]). Takes at most about `write_timeout`, waiting for a
    /// leader if there is none. When it returns `Ok`, [`Self::state`] on this node
    /// already shows the write (unless applying it here took longer than the budget).
    pub async fn write(&self, cmd: ControlCommand) -> Result<ControlResponse, ControlPlaneError> {
        let start = Instant::now();
        match self.on_leader(LeaderOp::Write(cmd)).await? {
            RaftRpcReply::ClientWrite {
                response,
                log_index,
            } => {
                // Read-your-writes: a forwarded write returns once this node has applied
                // it too, so `state()` shows it. If that takes too long the write still
                // stands; the local state just lags.
                let wait = self
                    .inner
                    .config
                    .write_timeout
                    .saturating_sub(start.elapsed());
                let applied = self
                    .inner
                    .raft
                    .wait(Some(wait))
                    .applied_index_at_least(Some(log_index), "forwarded write applied locally")
                    .await;
                if let Err(e) = applied {
                    tracing::warn!(log_index, error = %e, "forwarded write committed but not yet applied here");
                }
                Ok(response)
            }
            other => Err(ControlPlaneError::Indeterminate(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Adds `id` as a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, addr: NodeAddr) -> Result<(), ControlPlaneError> {
        self.on_leader(LeaderOp::AddLearner { id, addr })
            .await
            .map(drop)
    }

    /// Makes `voters` the voter set (they must be members already, e.g. learners);
    /// members left out of the voters stay on as learners.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<NodeId>,
    ) -> Result<(), ControlPlaneError> {
        self.on_leader(LeaderOp::ChangeMembership { voters })
            .await
            .map(drop)
    }

    /// The local copy of the control state; holds the last applied state when there is
    /// no leader.
    pub fn state(&self) -> watch::Receiver<Arc<ControlState>> {
        self.inner.state_rx.clone()
    }

    pub fn metrics(&self) -> ControlMetrics {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        ControlMetrics {
            id: self.inner.id,
            role: m.state.into(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.map(|l| l.index),
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            members: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            fatal: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }

    /// Waits until this node knows a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ControlPlaneError> {
        let start = Instant::now();
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Some(leader) = rx.borrow_watched().current_leader {
                return Ok(leader);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(ControlPlaneError::NoLeader {
                    waited: timeout,
                    detail: "none elected or known".into(),
                });
            }
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return Err(ControlPlaneError::Fatal("raft stopped".into())),
            }
        }
    }

    /// Waits until the state machine has caught up with the cluster's commit point, so
    /// the local state is at least as new as anything this node served before a restart.
    pub async fn wait_for_recovery(
        &self,
        timeout: Duration,
    ) -> Result<ControlMetrics, ControlPlaneError> {
        self.inner
            .raft
            .wait_for_recovery(Some(timeout))
            .await
            .map_err(|e| ControlPlaneError::Indeterminate(format!("recovery: {e}")))?;
        Ok(self.metrics())
    }

    /// Stops Raft. The state watch keeps its last value.
    pub async fn shutdown(&self) -> Result<(), ControlPlaneError> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| ControlPlaneError::Fatal(format!("shutdown: {e}")))
    }

    /// Answers a peer's request; the node's RPC server calls this for every [`RaftRpc`]
    /// it receives and sends the reply back. Writes and membership changes are carried
    /// out only if this node leads (no second forwarding hop, so no forwarding loops).
    pub async fn handle_rpc(&self, rpc: RaftRpc) -> RaftRpcReply {
        let raft = &self.inner.raft;
        let fatal = |e: &dyn std::fmt::Display| {
            RaftRpcReply::Refused(RemoteRefusal::Unavailable(e.to_string()))
        };
        match rpc {
            RaftRpc::AppendEntries(req) => match raft.append_entries(req).await {
                Ok(r) => RaftRpcReply::AppendEntries(r),
                Err(e) => fatal(&e),
            },
            RaftRpc::Vote(req) => match raft.vote(req).await {
                Ok(r) => RaftRpcReply::Vote(r),
                Err(e) => fatal(&e),
            },
            RaftRpc::PreVote(req) => match raft.pre_vote(req).await {
                Ok(r) => RaftRpcReply::Vote(r),
                Err(e) => fatal(&e),
            },
            RaftRpc::FullSnapshot { vote, meta, data } => {
                // A snapshot that does not decode would fail the state machine and stop
                // Raft here: refuse it instead.
                if let Err(e) = codec::decode::<ControlState>(&data) {
                    return RaftRpcReply::Refused(RemoteRefusal::Failed(format!(
                        "bad snapshot: {e}"
                    )));
                }
                match raft
                    .install_full_snapshot(
                        vote,
                        Snapshot {
                            meta,
                            snapshot: data,
                        },
                    )
                    .await
                {
                    Ok(r) => RaftRpcReply::FullSnapshot(r),
                    Err(e) => fatal(&e),
                }
            }
            RaftRpc::TransferLeader(req) => match raft.handle_transfer_leader(req).await {
                Ok(r) => RaftRpcReply::TransferLeader(r),
                Err(e) => fatal(&e),
            },
            RaftRpc::ClientWrite(cmd) => {
                self.run_local(LeaderOp::Write(cmd), self.inner.config.write_timeout)
                    .await
            }
            RaftRpc::AddLearner { id, addr } => {
                self.run_local(
                    LeaderOp::AddLearner { id, addr },
                    self.inner.config.write_timeout,
                )
                .await
            }
            RaftRpc::ChangeMembership { voters } => {
                self.run_local(
                    LeaderOp::ChangeMembership { voters },
                    self.inner.config.write_timeout,
                )
                .await
            }
        }
    }

    /// Runs `op` on this node's Raft, which answers `NotLeader` if it does not lead.
    async fn run_local(&self, op: LeaderOp, budget: Duration) -> RaftRpcReply {
        let raft = &self.inner.raft;
        let down = {
            let rx = raft.metrics();
            let m = rx.borrow_watched();
            match &m.running_state {
                Err(e) => Some(e.to_string()),
                Ok(()) if m.state == ServerState::Shutdown => Some("shut down".into()),
                Ok(()) => None,
            }
        };
        if let Some(why) = down {
            // Checked before proposing, so the caller knows nothing was written.
            return RaftRpcReply::Refused(RemoteRefusal::Unavailable(why));
        }
        let result = match op {
            LeaderOp::Write(cmd) => tokio::time::timeout(budget, raft.client_write(cmd))
                .await
                .map(|r| write_outcome(r, false)),
            LeaderOp::AddLearner { id, addr } => {
                tokio::time::timeout(budget, raft.add_learner(id, addr, true))
                    .await
                    .map(|r| write_outcome(r, true))
            }
            LeaderOp::ChangeMembership { voters } => {
                tokio::time::timeout(budget, raft.change_membership(voters, true))
                    .await
                    .map(|r| write_outcome(r, true))
            }
        };
        result.unwrap_or_else(|_| {
            RaftRpcReply::Refused(RemoteRefusal::Indeterminate(format!(
                "not committed within {budget:?}"
            )))
        })
    }

    /// Runs `op` on the leader: here if this node leads, else forwarded to the leader.
    /// Retries while there is no leader, the leader moved, could not be reached, or is
    /// busy with another membership change (nothing was proposed in any of these); gives
    /// up with `Indeterminate` as soon as something may have been proposed.
    async fn on_leader(&self, op: LeaderOp) -> Result<RaftRpcReply, ControlPlaneError> {
        let budget = self.inner.config.write_timeout;
        let start = Instant::now();
        let mut metrics = self.inner.raft.metrics();
        let mut busy = None;
        let mut detail = String::from("none elected or known");
        loop {
            let left = budget.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(match busy {
                    Some(m) => ControlPlaneError::Refused(m),
                    None => ControlPlaneError::NoLeader {
                        waited: budget,
                        detail,
                    },
                });
            }
            let (leader, leader_addr, running) = {
                let m = metrics.borrow_watched();
                let addr = m
                    .current_leader
                    .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
                (m.current_leader, addr, m.running_state.is_ok())
            };
            if !running {
                return Err(ControlPlaneError::Fatal("raft stopped".into()));
            }
            let reply = match (leader, leader_addr) {
                (Some(l), _) if l == self.inner.id => Some(self.run_local(op.clone(), left).await),
                (Some(l), Some(addr)) => {
                    let sent = tokio::time::timeout(
                        left,
                        self.inner.transport.send(l, &addr, op.to_rpc()),
                    )
                    .await;
                    match sent {
                        Ok(Ok(reply)) => Some(reply),
                        Ok(Err(TransportFailure::Unreachable(m))) => {
                            detail = format!("leader {l} unreachable: {m}");
                            None
                        }
                        Ok(Err(e)) => {
                            return Err(ControlPlaneError::Indeterminate(format!(
                                "forwarding to {l}: {e}"
                            )))
                        }
                        Err(_) => {
                            return Err(ControlPlaneError::Indeterminate(format!(
                                "forwarding to {l}: no reply within {left:?}"
                            )))
                        }
                    }
                }
                _ => None,
            };
            match reply {
                Some(RaftRpcReply::Refused(RemoteRefusal::NotLeader { leader, .. })) => {
                    detail = format!("leadership moving (hint: {leader:?})");
                }
                Some(RaftRpcReply::Refused(RemoteRefusal::Busy(m))) => {
                    // Nothing was proposed; the previous membership change commits soon.
                    busy = Some(m);
                }
                Some(RaftRpcReply::Refused(RemoteRefusal::Unavailable(m))) => {
                    // The leader's Raft had stopped before anything was proposed; a new
                    // leader will be elected.
                    detail = format!("leader unavailable: {m}");
                }
                Some(RaftRpcReply::Refused(RemoteRefusal::Indeterminate(m))) => {
                    return Err(ControlPlaneError::Indeterminate(m))
                }
                Some(RaftRpcReply::Refused(r)) => {
                    return Err(ControlPlaneError::Refused(r.to_string()))
                }
                Some(reply) => return Ok(reply),
                None => {}
            }
            // Wait for news about the leader, but poll too: a peer may have become
            // reachable without any metrics change.
            let left = budget.saturating_sub(start.elapsed());
            let pause = left.min(self.inner.config.heartbeat_interval);
            if let Ok(Err(_)) = tokio::time::timeout(pause, metrics.changed()).await {
                return Err(ControlPlaneError::Fatal("raft stopped".into()));
            }
        }
    }
}

/// Sends a leader-only request (a write or a membership change) from outside the
/// cluster, e.g. from a node that is joining and has no Raft state yet: tries the seeds
/// in turn and follows `NotLeader` redirects until the leader answers or `timeout`
/// passes. Retries only when nothing was proposed.
pub async fn send_to_leader<T: RaftTransport>(
    transport: &T,
    seeds: &[(NodeId, NodeAddr)],
    rpc: RaftRpc,
    timeout: Duration,
) -> Result<RaftRpcReply, ControlPlaneError> {
    const MAX_REDIRECTS: usize = 3;
    let start = Instant::now();
    let mut detail = String::from("no seeds");
    loop {
        if start.elapsed() >= timeout {
            return Err(ControlPlaneError::NoLeader {
                waited: timeout,
                detail,
            });
        }
        for seed in seeds {
            let mut target = seed.clone();
            for _ in 0..=MAX_REDIRECTS {
                let left = timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(ControlPlaneError::NoLeader {
                        waited: timeout,
                        detail,
                    });
                }
                let sent =
                    tokio::time::timeout(left, transport.send(target.0, &target.1, rpc.clone()))
                        .await;
                let redirect = match sent {
                    Err(_) | Ok(Err(TransportFailure::Timeout)) => {
                        return Err(ControlPlaneError::Indeterminate(format!(
                            "no reply from {}",
                            target.0
                        )))
                    }
                    Ok(Err(TransportFailure::Failed(m))) => {
                        return Err(ControlPlaneError::Indeterminate(m))
                    }
                    Ok(Err(TransportFailure::Unreachable(m))) => {
                        detail = format!("{} unreachable: {m}", target.0);
                        None
                    }
                    Ok(Ok(RaftRpcReply::Refused(RemoteRefusal::NotLeader {
                        leader: Some(l),
                        leader_addr: Some(a),
                    }))) if l != target.0 => Some((l, a)),
                    Ok(Ok(RaftRpcReply::Refused(
                        r @ (RemoteRefusal::NotLeader { .. }
                        | RemoteRefusal::Busy(_)
                        | RemoteRefusal::Unavailable(_)),
                    ))) => {
                        detail = format!("{}: {r}", target.0);
                        None
                    }
                    Ok(Ok(RaftRpcReply::Refused(RemoteRefusal::Indeterminate(m)))) => {
                        return Err(ControlPlaneError::Indeterminate(m))
                    }
                    Ok(Ok(RaftRpcReply::Refused(r))) => {
                        return Err(ControlPlaneError::Refused(r.to_string()))
                    }
                    Ok(Ok(reply)) => return Ok(reply),
                };
                match redirect {
                    Some(next) => target = next,
                    None => break,
                }
            }
        }
        let left = timeout.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}
