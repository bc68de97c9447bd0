//! The assigner, live on a standalone node: every round, the router core's measured
//! per-key load and the replicas' health go through the same [`Schedule`] the simulator
//! runs, and the next assignment is installed. In a cluster the Raft leader runs these
//! rounds on every router's reports instead.

use super::AppState;
use crate::tree::{Duty, Turn};
use ractor::ActorProcessingErr;
use sluice_actors::assigner::{Schedule, ScheduleConfig};
use std::sync::Arc;
use std::time::Duration;

/// The standalone assigner actor's duty: its schedule, and the registry it marks
/// healthy from the router core's view each round.
pub struct Rounds {
    state: Arc<AppState>,
    schedule: Schedule,
    tick: tokio::time::Interval,
    registry: Vec<sluice_actors::assigner::ReplicaInfo>,
}

impl Rounds {
    pub fn new(state: Arc<AppState>, config: ScheduleConfig) -> Self {
        let period = Duration::from_micros(config.period_us.max(1_000));
        let schedule = Schedule::new(config, state.now_us());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let registry = state.registry.clone();
        Self {
            state,
            schedule,
            tick,
            registry,
        }
    }
}

impl Duty for Rounds {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        if !crate::tree::ticked(&mut self.tick).await {
            return Ok(Turn::Again);
        }
        let state = &self.state;
        let now_us = state.now_us();
        let mut core = state.core();
        let views = core.replicas(now_us / 1000);
        for info in self.registry.iter_mut() {
            info.healthy = views.iter().any(|v| v.id == info.id && v.available);
        }
        let report = core.take_load(now_us);
        let Some(plan) = self
            .schedule
            .round(now_us, &report, core.assignment(), &self.registry)
        else {
            return Ok(Turn::Again);
        };
        if plan.changed {
            let generation = plan.assignment.generation;
            core.set_assignment(plan.assignment);
            drop(core);
            state.metrics.assignment(generation);
            tracing::info!(
                generation,
                splits = plan.splits,
                merges = plan.merges,
                moves = plan.moves,
                evicted = plan.evicted,
                churn = plan.churn,
                imbalance_before = plan.imbalance_before,
                imbalance_after = plan.imbalance_after,
                "new assignment"
            );
        }
        Ok(Turn::Again)
    }
}
