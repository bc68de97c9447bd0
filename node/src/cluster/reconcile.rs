//! The supervisor's side of autoscaling: keeps this node's engines in step with the
//! replicas Raft places on it. A `Starting` replica of this node is launched and, once
//! its engine is ready, reported ready; a `Draining` one first stops getting work (the
//! assigner and every router see the state), then finishes what it has in flight —
//! until the engine's own queue is empty, or the drain deadline — and only then is it
//! stopped and removed from the registry.

use super::{local_index, NodeHandle};
use crate::error_line::one_line;
use crate::front::AppState;
use crate::supervisor::engines::Supervisor;
use crate::tree::{Duty, Turn};
use ractor::ActorProcessingErr;
use sluice_actors::slice::ReplicaId;
use sluice_raft::{ControlCommand, ControlResponse, ReplicaHealth};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time for every router to apply a `Draining` state before its work is counted: a
/// request routed just before it saw the state still arrives after this.
const DRAIN_PROPAGATION: Duration = Duration::from_secs(1);
/// A replica's registry writes outlast a leader election or two.
const COMMIT_BACKOFF: super::call::Backoff = super::call::Backoff {
    first: Duration::from_millis(300),
    max: Duration::from_secs(1),
    give_up_after: Duration::from_secs(10),
};

/// SIGTERM to SIGKILL when a drained engine is stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One model's engines on this node: who launches them and the fleet that routes them.
#[derive(Clone)]
pub struct ModelEngines {
    pub supervisor: Arc<Supervisor>,
    pub front: Arc<AppState>,
}

/// The reconciler actor's duty. Which replicas are being started or drained (`busy`)
/// outlives a restart of the actor: the tasks doing it still run.
pub struct Reconciler {
    node: NodeHandle,
    /// This node's engines by model.
    engines: HashMap<String, ModelEngines>,
    drain_deadline: Duration,
    busy: Arc<Mutex<HashSet<ReplicaId>>>,
    /// Replicas of this node the registry has listed: a local one that disappears from
    /// it was removed on purpose (its start was withdrawn) and is stopped.
    listed: HashSet<ReplicaId>,
    rx: tokio::sync::watch::Receiver<Arc<sluice_raft::ControlState>>,
}

impl Reconciler {
    pub fn new(
        node: NodeHandle,
        engines: HashMap<String, ModelEngines>,
        drain_deadline: Duration,
        busy: Arc<Mutex<HashSet<ReplicaId>>>,
    ) -> Self {
        let rx = node.cp.state();
        Self {
            node,
            engines,
            drain_deadline,
            busy,
            listed: HashSet::new(),
            rx,
        }
    }
}

impl Duty for Reconciler {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        let state = self.rx.borrow_and_update().clone();
        let (node, busy) = (&self.node, &self.busy);
        let local = node.local.snapshot();
        for r in state.replicas().values().filter(|r| r.node == node.id) {
            self.listed.insert(r.id);
            let start = r.health == ReplicaHealth::Starting && !local.contains_key(&r.id);
            let stop = r.health == ReplicaHealth::Draining && local.contains_key(&r.id);
            if !(start || stop) {
                continue;
            }
            let Some(engines) = self.engines.get(&r.model).cloned() else {
                if start && claim(busy, r.id) {
                    tracing::warn!(replica = r.id.0, model = %r.model, "placed here, but this node does not run the model; withdrawing it");
                    commit(node, ControlCommand::RemoveReplica(r.id)).await;
                    release(busy, r.id);
                }
                continue;
            };
            if claim(busy, r.id) {
                let (node, busy) = (node.clone(), busy.clone());
                let (id, drain_deadline) = (r.id, self.drain_deadline);
                tokio::spawn(async move {
                    let (sup, front) = (&engines.supervisor, &engines.front);
                    if start {
                        launch(&node, sup, front, id).await;
                    } else {
                        drain(&node, sup, front, id, drain_deadline).await;
                    }
                    release(&busy, id);
                });
            }
        }
        for id in local.keys() {
            if self.listed.contains(id) && state.replica(*id).is_none() && claim(busy, *id) {
                tracing::info!(replica = id.0, "replica left the registry; stopping it");
                // Whichever model's supervisor runs it.
                for e in self.engines.values() {
                    e.supervisor.retire(local_index(*id), STOP_GRACE).await;
                }
                node.local.remove(*id);
                self.listed.remove(id);
                release(busy, *id);
            }
        }
        Ok(super::next_change(&mut self.rx).await)
    }
}

fn claim(busy: &Mutex<HashSet<ReplicaId>>, id: ReplicaId) -> bool {
    busy.lock().unwrap_or_else(|p| p.into_inner()).insert(id)
}

fn release(busy: &Mutex<HashSet<ReplicaId>>, id: ReplicaId) {
    busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
}

/// Starts a placed replica and reports it ready; a failed start is withdrawn so the
/// leader places it again.
async fn launch(node: &NodeHandle, sup: &Supervisor, front: &AppState, id: ReplicaId) {
    tracing::info!(replica = id.0, "starting a placed replica");
    let url = match sup.add(local_index(id)).await {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(replica = id.0, error = %one_line(&e), "placed replica did not start");
            commit(node, ControlCommand::RemoveReplica(id)).await;
            return;
        }
    };
    node.local.insert(id, &url);
    if let Err(e) = front.set_local_url(id, &url) {
        tracing::warn!(replica = id.0, error = %e, "started replica has a bad URL");
    }
    let ready = ControlCommand::ReplicaReady {
        replica: id,
        endpoint: url,
    };
    match commit(node, ready).await {
        Some(ControlResponse::Ok) => tracing::info!(replica = id.0, "placed replica is ready"),
        // Withdrawn or drained while it started: the drain (or the removal) takes it
        // from here on the next pass.
        _ => tracing::info!(
            replica = id.0,
            "placed replica was cancelled while it started"
        ),
    }
}

/// Lets a draining replica finish its work, then stops and deregisters it. Taken back
/// into service meanwhile, it is left running.
async fn drain(
    node: &NodeHandle,
    sup: &Supervisor,
    front: &AppState,
    id: ReplicaId,
    deadline: Duration,
) {
    tracing::info!(replica = id.0, "draining a replica");
    tokio::time::sleep(DRAIN_PROPAGATION).await;
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let health = node.cp.state().borrow().replica(id).map(|r| r.health);
        match health {
            Some(ReplicaHealth::Draining) => {}
            None => break,
            Some(_) => {
                tracing::info!(replica = id.0, "drain called off: back in service");
                return;
            }
        }
        let idle = match node.local.snapshot().get(&id) {
            Some(url) => front.in_flight(id) == 0 && front.engine_queued(url).await == Some(0),
            None => true,
        };
        if idle {
            break;
        }
        if tokio::time::Instant::now() >= until {
            tracing::warn!(
                replica = id.0,
                ?deadline,
                "drain deadline passed with work in flight; stopping anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sup.retire(local_index(id), STOP_GRACE).await;
    node.local.remove(id);
    commit(node, ControlCommand::RemoveReplica(id)).await;
    tracing::info!(replica = id.0, "drained replica stopped and removed");
}

/// Commits `cmd` (idempotent), asking again while there is no leader.
async fn commit(node: &NodeHandle, cmd: ControlCommand) -> Option<ControlResponse> {
    let what = cmd.to_string();
    match super::call::retry(&what, COMMIT_BACKOFF, || node.cp.write(cmd.clone())).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(command = %what, error = %e, "write not committed; giving up");
            None
        }
    }
}
