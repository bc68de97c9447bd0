//! The autoscaler on the leader: every tick, the MU the routers reported becomes a
//! desired replica count (the same core `sluice sim` runs), committed to Raft, and the
//! placement core turns the difference into replicas placed on hosts with free GPUs
//! (`Starting`), drained ones taken back, or replicas drained. Each node's supervisor
//! carries out what concerns it (`reconcile`).

use super::handler::NodeHandler;
use super::replica_id;
use crate::config::LiveAutoscaler;
use crate::tree::{Duty, Turn};
use ractor::ActorProcessingErr;
use sluice_actors::autoscaler::placement::{
    free_index, place, Host, Placed, SlotState, StartWatch,
};
use sluice_actors::autoscaler::{by_name, LeaderScaler, ScaleBounds, ScaleInputs};
use sluice_actors::slice::ReplicaId;
use sluice_raft::{ControlCommand, ControlState, ReplicaHealth, ReplicaInfo};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The autoscaler actor's duty (run only while this node leads): what it learned of
/// the load and of the starts it asked for.
pub struct Autoscaler {
    handler: Arc<NodeHandler>,
    cfg: LiveAutoscaler,
    capacity: f64,
    start_timeout: Duration,
    report_every: Duration,
    tick: tokio::time::Interval,
    epoch: Instant,
    last: Instant,
    scaler: Option<LeaderScaler>,
    leader_since: Option<Instant>,
    starts: StartWatch,
}

impl Autoscaler {
    pub fn new(
        handler: Arc<NodeHandler>,
        cfg: LiveAutoscaler,
        capacity: f64,
        start_timeout: Duration,
        report_every: Duration,
    ) -> Self {
        let mut tick = tokio::time::interval(cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // MU reported before this leadership began was another term's.
        handler.take_mu();
        Self {
            handler,
            cfg,
            capacity,
            start_timeout,
            report_every,
            tick,
            epoch: Instant::now(),
            last: Instant::now(),
            scaler: None,
            leader_since: None,
            starts: StartWatch::default(),
        }
    }
}

impl Drop for Autoscaler {
    /// Out of office: the offered load shown in status is no longer this node's to tell.
    fn drop(&mut self) {
        self.handler.set_offered(None);
    }
}

impl Duty for Autoscaler {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        if !crate::tree::ticked(&mut self.tick).await {
            return Ok(Turn::Again);
        }
        let (handler, cfg, capacity, start_timeout, report_every, epoch) = (
            self.handler.clone(),
            self.cfg.clone(),
            self.capacity,
            self.start_timeout,
            self.report_every,
            self.epoch,
        );
        let elapsed = self.last.elapsed();
        self.last = Instant::now();
        let mu = handler.take_mu();
        if !handler.is_leader() {
            handler.set_offered(None);
            self.scaler = None;
            self.leader_since = None;
            self.starts = StartWatch::default();
            return Ok(Turn::Again);
        }
        let state = handler.control().state().borrow().clone();
        let model = handler.model().to_owned();
        // A node is live while its router reports; a new leader has not heard from
        // anyone yet, so it takes every node for live until they had time to report.
        let window = report_every * 3;
        let live: std::collections::BTreeSet<u64> =
            if self.leader_since.get_or_insert_with(Instant::now).elapsed() > window {
                handler.live_nodes(window)
            } else {
                state.nodes().keys().copied().collect()
            };
        let max = cfg.max_replicas.unwrap_or_else(|| {
            state
                .nodes()
                .values()
                .map(|n| n.gpus as usize)
                .sum::<usize>()
        });
        let scaler = match &mut self.scaler {
            Some(s) => s,
            None => match by_name(&cfg.policy, &cfg.core, max) {
                Ok(core) => self.scaler.insert(LeaderScaler::new(
                    core,
                    (cfg.core.down_window_s * 1e6) as u64,
                )),
                Err(e) => {
                    tracing::error!(error = %e, "autoscaler cannot run");
                    return Ok(Turn::Done);
                }
            },
        };
        // Only this router's share of each replica's requests: enough to break ties.
        let front = handler.front();
        let placed = placed_replicas(&state, &model, |id| {
            front.as_ref().map_or(0, |f| f.in_flight(id))
        });
        let ready = placed
            .iter()
            .filter(|p| p.state == SlotState::Serving)
            .count();
        let starting = placed
            .iter()
            .filter(|p| p.state == SlotState::Starting)
            .count();
        let minutes = elapsed.as_secs_f64() / 60.0;
        let inputs = ScaleInputs {
            now_us: epoch.elapsed().as_micros() as u64,
            ready,
            starting,
            mu_per_min: if minutes > 0.0 { mu / minutes } else { 0.0 },
            in_flight_requests: 0.0,
            requests_per_s: 0.0,
            capacity_mu_per_min: capacity,
        };
        let bounds = ScaleBounds {
            min: cfg.min_replicas,
            max,
            reserved_floor: reserved_floor(&state, &model, capacity),
        };
        let desired = scaler.decide(&inputs, &bounds);
        handler.set_offered(Some(inputs.mu_per_min));
        tracing::debug!(
            mu_per_min = inputs.mu_per_min,
            ready,
            starting,
            desired,
            "autoscaler tick"
        );
        if state.desired_replicas().get(&model).copied() != Some(desired as u32) {
            tracing::info!(
                desired,
                ready,
                starting,
                mu_per_min = inputs.mu_per_min,
                "replica count changes"
            );
            write(
                &handler,
                ControlCommand::SetDesiredReplicas {
                    model: model.clone(),
                    count: desired as u32,
                },
            )
            .await;
        }
        let hosts: Vec<Host> = state
            .nodes()
            .values()
            .map(|n| Host {
                id: n.id,
                rack: n.rack.clone(),
                gpus: n.gpus as usize,
                live: live.contains(&n.id),
            })
            .collect();
        // Starts that never became ready (their node died, or the engine would not
        // come up) are withdrawn, so placement can try elsewhere.
        let now_us = epoch.elapsed().as_micros() as u64;
        let timeout_us = (start_timeout * 2).as_micros() as u64;
        for id in self.starts.stalled(&placed, &hosts, now_us, timeout_us) {
            tracing::warn!(
                replica = id.0,
                "replica did not start; placing it elsewhere"
            );
            write(&handler, ControlCommand::RemoveReplica(id)).await;
        }
        let plan = place(desired, &hosts, &placed);
        let mut taken: Vec<ReplicaId> = state.replicas().keys().copied().collect();
        for host in plan.start {
            let index = free_index(host, taken.iter().copied());
            let id = replica_id(host, index);
            taken.push(id);
            tracing::info!(replica = id.0, node = host, "placing a replica");
            write(
                &handler,
                ControlCommand::RegisterReplica(ReplicaInfo {
                    id,
                    node: host,
                    model: model.clone(),
                    endpoint: String::new(),
                    capacity_mu_per_min: capacity,
                    health: ReplicaHealth::Starting,
                }),
            )
            .await;
        }
        for (ids, health, what) in [
            (plan.undrain, ReplicaHealth::Healthy, "back into service"),
            (plan.drain, ReplicaHealth::Draining, "draining"),
        ] {
            for replica in ids {
                tracing::info!(replica = replica.0, "{what}");
                write(
                    &handler,
                    ControlCommand::SetReplicaHealth { replica, health },
                )
                .await;
            }
        }
        Ok(Turn::Again)
    }
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
                ReplicaHealth::Unhealthy => SlotState::Unhealthy,
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

async fn write(handler: &NodeHandler, cmd: ControlCommand) {
    let what = cmd.to_string();
    match handler.control().write(cmd).await {
        Ok(r) if r.is_rejected() => tracing::warn!(command = %what, answer = ?r, "refused"),
        Ok(_) => {}
        Err(e) => tracing::warn!(command = %what, error = %e, "not committed"),
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
}
