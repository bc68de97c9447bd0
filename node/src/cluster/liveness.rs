//! The leader's liveness marks: the replicas of a node it has not heard from for the
//! liveness window (killed, powered off with its rack, cut off) are taken out of
//! service in Raft at once, instead of every router finding each dead replica by timing
//! out on it, and the assigner moves their slices. The mark is kept apart from the
//! prober's verdicts (`ReplicaHealth::Unreachable`); the leader clears it when the node
//! is heard again, and a restarted node clears it by registering its replicas anew. The
//! decisions are the `LivenessWatch` core's.

use super::handler::NodeHandler;
use crate::tree::{ticked, Duty, Turn};
use ractor::ActorProcessingErr;
use sluice_actors::prober::{LivenessWatch, Mark, Standing};
use sluice_raft::{ControlCommand, ReplicaHealth};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::{Interval, MissedTickBehavior};

/// How often the leader looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The liveness actor's duty (run only while this node leads).
pub struct Liveness {
    handler: Arc<NodeHandler>,
    /// A node not heard from for this long is taken for gone.
    window: Duration,
    watch: LivenessWatch,
    epoch: Instant,
    tick: Interval,
}

impl Liveness {
    /// Routers are heard every `heard_every`. With `gossip`, every router tells every
    /// node of its load, so this node has heard the whole cluster since it started,
    /// leading or not, and its grace counts from its start: a follower that takes over
    /// a dead leader marks the dead node's replicas as soon as the window has passed,
    /// not a window after its election. Without gossip only the reports to a leader
    /// tell who is live, and the grace counts from now, when the leadership begins.
    pub fn new(handler: Arc<NodeHandler>, heard_every: Duration, gossip: bool) -> Self {
        let beat_us = u64::try_from(heard_every.as_micros()).unwrap_or(u64::MAX);
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let epoch = if gossip {
            handler.started()
        } else {
            Instant::now()
        };
        Self {
            handler,
            window: Duration::from_micros(LivenessWatch::window_us(beat_us)),
            watch: LivenessWatch::new(0, beat_us),
            epoch,
            tick,
        }
    }
}

/// A replica's standing as far as liveness goes.
pub(super) fn standing(health: ReplicaHealth) -> Standing {
    match health {
        ReplicaHealth::Healthy => Standing::Serving,
        ReplicaHealth::Unreachable => Standing::Unreachable,
        ReplicaHealth::Unhealthy | ReplicaHealth::Draining | ReplicaHealth::Starting => {
            Standing::HeldByNode
        }
    }
}

impl Duty for Liveness {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        if !ticked(&mut self.tick).await || !self.handler.is_leader() {
            return Ok(Turn::Again);
        }
        let live = self.handler.live_nodes(self.window);
        // Decided on the state as it is now; the borrow ends before any write.
        let marks: Vec<(Mark, u64)> = {
            let state = self.handler.control().state();
            let state = state.borrow();
            let marks = self.watch.marks(
                self.epoch.elapsed().as_micros() as u64,
                state
                    .replicas()
                    .values()
                    .map(|r| (r.id, r.node, standing(r.health))),
                |node| live.contains(&node),
            );
            marks
                .into_iter()
                .map(|m| (m, state.replica(m.replica).map_or(0, |r| r.node)))
                .collect()
        };
        for (m, node) in marks {
            if m.unreachable {
                tracing::warn!(replica = m.replica.0, node, window = ?self.window, "node silent: its replica is out of service");
            } else {
                tracing::info!(
                    replica = m.replica.0,
                    node,
                    "node heard again: its replica serves again"
                );
            }
            let cmd = ControlCommand::MarkReachable {
                replica: m.replica,
                reachable: !m.unreachable,
            };
            self.handler.commit_logged(cmd).await;
        }
        Ok(Turn::Again)
    }
}
