//! The autoscaler on the leader: every tick, the MU the routers reported and the
//! control state go through the leader's scaling step (`ScaleLeader`, the same core
//! `sluice sim` runs): a desired replica count committed to Raft, and replicas placed on
//! hosts with free GPUs (`Starting`), drained ones taken back, or replicas drained. Each
//! node's supervisor carries out what concerns it (`reconcile`).

use super::handler::NodeHandler;
use crate::config::LiveAutoscaler;
use crate::tree::{Duty, Turn};
use ractor::ActorProcessingErr;
use sluice_actors::autoscaler::placement::{Host, Placed, SlotState};
use sluice_actors::autoscaler::{
    by_name, LeaderScaler, ScaleBounds, ScaleCommand, ScaleLeader, ScaleView,
};
use sluice_actors::slice::ReplicaId;
use sluice_raft::{ControlCommand, ControlState, ReplicaHealth, ReplicaInfo};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The autoscaler actor's duty (run only while this node leads): a thin shell over the
/// leader's scaling step ([`ScaleLeader`]), one per model, which it feeds from the
/// control state and whose commands it writes to Raft. The models share the hosts'
/// GPUs: each sees a host's GPUs less those other models' replicas hold.
pub struct Autoscaler {
    handler: Arc<NodeHandler>,
    cfg: LiveAutoscaler,
    /// A replica's capacity per model this node serves; other models' comes from the
    /// registry.
    capacities: HashMap<String, f64>,
    start_timeout: Duration,
    report_every: Duration,
    tick: tokio::time::Interval,
    epoch: Instant,
    last: Instant,
    leaders: HashMap<String, ScaleLeader>,
}

impl Autoscaler {
    pub fn new(
        handler: Arc<NodeHandler>,
        cfg: LiveAutoscaler,
        capacities: HashMap<String, f64>,
        start_timeout: Duration,
        report_every: Duration,
    ) -> Self {
        // The first decision one tick after leadership began, not at once: a cluster that
        // is still forming (nodes joining, registering their replicas, reporting load)
        // would be scaled on the part of it that came first.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.tick, cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // MU reported before this leadership began was another term's.
        handler.forget_mu();
        Self {
            handler,
            cfg,
            capacities,
            start_timeout,
            report_every,
            tick,
            epoch: Instant::now(),
            last: Instant::now(),
            leaders: HashMap::new(),
        }
    }
}

impl Drop for Autoscaler {
    /// Out of office: the offered load shown in status is no longer this node's to tell.
    fn drop(&mut self) {
        self.handler.clear_offered();
    }
}

impl Duty for Autoscaler {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        if !crate::tree::ticked(&mut self.tick).await {
            return Ok(Turn::Again);
        }
        let handler = self.handler.clone();
        let elapsed = self.last.elapsed();
        self.last = Instant::now();
        if !handler.is_leader() {
            handler.forget_mu();
            handler.clear_offered();
            self.leaders.clear();
            return Ok(Turn::Again);
        }
        let state = handler.control().state().borrow().clone();
        // The registry's models, and those this node serves that have none yet.
        let models: std::collections::BTreeSet<String> = state
            .models()
            .into_iter()
            .map(str::to_owned)
            .chain(self.capacities.keys().cloned())
            .collect();
        for model in models {
            let capacity = self.capacities.get(&model).copied().or_else(|| {
                state
                    .replicas_of_model(&model)
                    .map(|r| r.capacity_mu_per_min)
                    .next()
            });
            let Some(capacity) = capacity else {
                continue;
            };
            if self
                .tick_model(&state, &model, capacity, elapsed)
                .await
                .is_err()
            {
                return Ok(Turn::Done);
            }
        }
        Ok(Turn::Again)
    }
}

impl Autoscaler {
    /// One tick of `model`'s scaling step; `Err` when its policy cannot run.
    async fn tick_model(
        &mut self,
        state: &ControlState,
        model: &str,
        capacity: f64,
        elapsed: Duration,
    ) -> Result<(), ()> {
        let handler = self.handler.clone();
        let mu = handler.take_mu(model);
        // A node is live while its router reports (the step gives a new leader time
        // to hear from everyone).
        let window = self.report_every * 3;
        let live = handler.live_nodes(window);
        let (min, max) = self.cfg.bounds(model);
        let max = max.unwrap_or_else(|| {
            state
                .nodes()
                .values()
                .map(|n| n.gpus as usize)
                .sum::<usize>()
        });
        let leader = match self.leaders.get_mut(model) {
            Some(l) => l,
            None => match by_name(&self.cfg.policy, &self.cfg.core, max) {
                Ok(core) => self
                    .leaders
                    .entry(model.to_owned())
                    .or_insert(ScaleLeader::new(LeaderScaler::new(
                        core,
                        (self.cfg.core.down_window_s() * 1e6) as u64,
                    ))),
                Err(e) => {
                    tracing::error!(error = %e, "autoscaler cannot run");
                    return Err(());
                }
            },
        };
        // Only this router's share of each replica's requests: enough to break ties.
        let front = handler.fleet(model);
        let placed = placed_replicas(state, model, |id| {
            front.as_ref().map_or(0, |f| f.in_flight(id))
        });
        let hosts: Vec<Host> = state
            .nodes()
            .values()
            .map(|n| Host {
                id: n.id,
                rack: n.rack.clone(),
                // A node that does not run the model has no GPU for it.
                gpus: if runs(n, model) {
                    (n.gpus as usize).saturating_sub(held_by_others(state, n.id, model))
                } else {
                    0
                },
                live: live.contains(&n.id),
            })
            .collect();
        let taken: Vec<ReplicaId> = state.replicas().keys().copied().collect();
        let minutes = elapsed.as_secs_f64() / 60.0;
        let tick = leader.tick(&ScaleView {
            now_us: self.epoch.elapsed().as_micros() as u64,
            mu_per_min: if minutes > 0.0 { mu / minutes } else { 0.0 },
            in_flight_requests: 0.0,
            requests_per_s: 0.0,
            capacity_mu_per_min: capacity,
            bounds: ScaleBounds {
                min,
                max,
                reserved_floor: reserved_floor(state, model, capacity),
            },
            placed: &placed,
            hosts: &hosts,
            taken: &taken,
            recorded: state.desired_replicas().get(model).map(|&c| c as usize),
            // Starts that never became ready (their node died, or the engine would not
            // come up) are withdrawn after this long.
            start_timeout_us: (self.start_timeout * 2).as_micros() as u64,
            liveness_grace_us: window.as_micros() as u64,
        });
        handler.set_offered(model, Some(tick.inputs.mu_per_min));
        tracing::debug!(
            model,
            mu_per_min = tick.inputs.mu_per_min,
            ready = tick.inputs.ready,
            starting = tick.inputs.starting,
            desired = tick.desired,
            "autoscaler tick"
        );
        for command in tick.commands {
            let cmd = match command {
                ScaleCommand::SetDesired(count) => {
                    tracing::info!(
                        model,
                        desired = count,
                        ready = tick.inputs.ready,
                        starting = tick.inputs.starting,
                        mu_per_min = tick.inputs.mu_per_min,
                        "replica count changes"
                    );
                    ControlCommand::SetDesiredReplicas {
                        model: model.to_owned(),
                        count: u32::try_from(count).unwrap_or(u32::MAX),
                    }
                }
                ScaleCommand::Withdraw(id) => {
                    tracing::warn!(
                        replica = id.0,
                        "replica did not start; placing it elsewhere"
                    );
                    ControlCommand::RemoveReplica(id)
                }
                ScaleCommand::Start { id, host } => {
                    tracing::info!(model, replica = id.0, node = host, "placing a replica");
                    ControlCommand::RegisterReplica(ReplicaInfo {
                        id,
                        node: host,
                        model: model.to_owned(),
                        endpoint: String::new(),
                        capacity_mu_per_min: capacity,
                        health: ReplicaHealth::Starting,
                    })
                }
                ScaleCommand::Undrain(replica) => {
                    tracing::info!(replica = replica.0, "back into service");
                    ControlCommand::SetReplicaHealth {
                        replica,
                        health: ReplicaHealth::Healthy,
                    }
                }
                ScaleCommand::Drain(replica) => {
                    tracing::info!(replica = replica.0, "draining");
                    ControlCommand::SetReplicaHealth {
                        replica,
                        health: ReplicaHealth::Draining,
                    }
                }
            };
            handler.commit_logged(cmd).await;
        }
        Ok(())
    }
}

/// The label a node lists the models it can launch under (comma-separated).
pub const MODELS_LABEL: &str = "models";

/// The models node `n` routes (and may launch), as it listed them when it joined.
pub fn routes(n: &sluice_raft::NodeInfo) -> impl Iterator<Item = &str> {
    n.labels
        .get(MODELS_LABEL)
        .into_iter()
        .flat_map(|list| list.split(','))
        .filter(|m| !m.is_empty())
}

/// Whether node `n` can launch replicas of `model` (a node that lists none: any).
pub fn runs(n: &sluice_raft::NodeInfo, model: &str) -> bool {
    !n.labels.contains_key(MODELS_LABEL) || routes(n).any(|m| m == model)
}

/// GPUs of `host` that other models' replicas hold: the models share the hosts.
fn held_by_others(state: &ControlState, host: u64, model: &str) -> usize {
    state
        .replicas()
        .values()
        .filter(|r| r.node == host && r.model != model)
        .count()
}

/// The model's replicas as placement sees them.
fn placed_replicas(
    state: &ControlState,
    model: &str,
    in_flight: impl Fn(ReplicaId) -> u64,
) -> Vec<Placed> {
    state
        .replicas_of_model(model)
        .map(|r| Placed {
            id: r.id,
            host: r.node,
            state: match r.health {
                ReplicaHealth::Healthy => SlotState::Serving,
                ReplicaHealth::Unhealthy | ReplicaHealth::Unreachable => SlotState::Unhealthy,
                ReplicaHealth::Draining => SlotState::Draining,
                ReplicaHealth::Starting => SlotState::Starting,
            },
            in_flight: in_flight(r.id),
        })
        .collect()
}

/// Replicas the tenants' reservations of `model` need at full capacity.
fn reserved_floor(state: &ControlState, model: &str, capacity: f64) -> usize {
    let reserved: f64 = state
        .reservations()
        .values()
        .filter_map(|m| m.get(model))
        .sum();
    if capacity > 0.0 && reserved.is_finite() && reserved > 0.0 {
        (reserved / capacity).ceil() as usize
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_set_a_floor_of_whole_replicas() {
        let mut state = ControlState::default();
        let reserve = |tenant: &str, model: &str, mu: f64| ControlCommand::SetReservation {
            tenant: tenant.into(),
            model: model.into(),
            mu_per_min: mu,
        };
        assert_eq!(reserved_floor(&state, "m", 1000.0), 0);
        // Reservations need tenants, and capacity for them: a node with 4 GPUs of
        // 1,000 MU/min replicas of m (and of other).
        let node = sluice_raft::NodeInfo {
            id: 1,
            quic_addr: "q".into(),
            http_addr: "h".into(),
            rack: "r".into(),
            labels: Default::default(),
            roles: Default::default(),
            gpus: 10,
        };
        let replica = |id: u64, model: &str| ReplicaInfo {
            id: ReplicaId(id),
            node: 1,
            model: model.into(),
            endpoint: "e".into(),
            capacity_mu_per_min: 1000.0,
            health: ReplicaHealth::Healthy,
        };
        let setup = [
            ControlCommand::AddNode(node),
            ControlCommand::RegisterReplica(replica(1, "m")),
            ControlCommand::RegisterReplica(replica(2, "other")),
            ControlCommand::CreateTenant {
                name: "a".into(),
                key_sha256: [1; 32],
            },
            ControlCommand::CreateTenant {
                name: "b".into(),
                key_sha256: [2; 32],
            },
        ];
        for cmd in setup {
            assert!(!sluice_raft::apply(&mut state, cmd).is_rejected());
        }
        for cmd in [
            reserve("a", "m", 1500.0),
            reserve("b", "m", 600.0),
            reserve("a", "other", 9000.0),
        ] {
            assert!(!sluice_raft::apply(&mut state, cmd).is_rejected());
        }
        // 2,100 MU/min of m at 1,000 per replica: three replicas, whatever the load.
        assert_eq!(reserved_floor(&state, "m", 1000.0), 3);
        assert_eq!(reserved_floor(&state, "m", 0.0), 0);
    }

    #[test]
    fn models_share_a_hosts_gpus_and_go_only_where_they_run() {
        let mut state = ControlState::default();
        let node = |id: u64, models: Option<&str>| sluice_raft::NodeInfo {
            id,
            quic_addr: format!("q{id}"),
            http_addr: format!("h{id}"),
            rack: "r".into(),
            labels: models
                .map(|m| [(MODELS_LABEL.to_owned(), m.to_owned())].into())
                .unwrap_or_default(),
            roles: Default::default(),
            gpus: 4,
        };
        let replica = |id: u64, host: u64, model: &str| ReplicaInfo {
            id: ReplicaId(id),
            node: host,
            model: model.into(),
            endpoint: "e".into(),
            capacity_mu_per_min: 1000.0,
            health: ReplicaHealth::Healthy,
        };
        for cmd in [
            ControlCommand::AddNode(node(1, Some("big,small"))),
            ControlCommand::AddNode(node(2, Some("small"))),
            ControlCommand::AddNode(node(3, None)),
            ControlCommand::RegisterReplica(replica(1, 1, "big")),
            ControlCommand::RegisterReplica(replica(2, 1, "big")),
            ControlCommand::RegisterReplica(replica(3, 1, "small")),
        ] {
            assert!(!sluice_raft::apply(&mut state, cmd).is_rejected());
        }
        // Host 1's four GPUs: two hold big, one small.
        assert_eq!(held_by_others(&state, 1, "small"), 2);
        assert_eq!(held_by_others(&state, 1, "big"), 1);
        assert_eq!(held_by_others(&state, 2, "big"), 0);
        let nodes = state.nodes();
        assert!(runs(&nodes[&1], "big") && runs(&nodes[&1], "small"));
        assert!(!runs(&nodes[&2], "big") && runs(&nodes[&2], "small"));
        // A node that lists nothing runs anything (one started before models were listed).
        assert!(runs(&nodes[&3], "big"));
    }
}
