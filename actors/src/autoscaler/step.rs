//! The leader's scaling step: one tick of the autoscaler and of placement, from what
//! the control state says to the commands that move it. The live leader and the
//! simulator both run it, so the fleet a simulation scales is the one that ships; each
//! turns the commands into its own effects (Raft writes; the virtual fleet's power).

use super::leader::LeaderScaler;
use super::placement::{free_index, place, Host, Placed, SlotState, StartWatch};
use super::{ScaleBounds, ScaleInputs};
use crate::slice::ReplicaId;

/// What one tick decides, in the order it is to be carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleCommand {
    /// The replica count changes (recorded so that every node and operator sees it).
    SetDesired(usize),
    /// A start that will not become ready (its host is gone, or it took too long): it
    /// is withdrawn so placement can try elsewhere.
    Withdraw(ReplicaId),
    /// A new replica, placed on `host`.
    Start { id: ReplicaId, host: u64 },
    /// A draining replica taken back into service (cheaper than a cold start).
    Undrain(ReplicaId),
    /// A replica that stops taking work and is released once idle.
    Drain(ReplicaId),
}

/// What the leader knows at a tick.
#[derive(Debug, Clone)]
pub struct ScaleView<'a> {
    pub now_us: u64,
    /// Offered load over the last tick.
    pub mu_per_min: f64,
    pub in_flight_requests: f64,
    pub requests_per_s: f64,
    pub capacity_mu_per_min: f64,
    pub bounds: ScaleBounds,
    /// The model's replicas where they are, and the hosts that could take more.
    pub placed: &'a [Placed],
    pub hosts: &'a [Host],
    /// Every replica id in use (any model): a new one takes none of them.
    pub taken: &'a [ReplicaId],
    /// The count the control state holds now (`None`: none recorded).
    pub recorded: Option<usize>,
    /// How long a start may take before it is withdrawn.
    pub start_timeout_us: u64,
    /// A new leader has heard from no node yet: for this long after its first tick it
    /// takes every host for live, whatever `hosts` says.
    pub liveness_grace_us: u64,
}

/// A tick's outcome: the count, what the scaler was fed, and the commands.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleTick {
    pub desired: usize,
    pub inputs: ScaleInputs,
    pub commands: Vec<ScaleCommand>,
}

/// The leader's scaling state: its scaler's windows and the starts it watches.
pub struct ScaleLeader {
    scaler: LeaderScaler,
    starts: StartWatch,
    /// This leader's first tick.
    since_us: Option<u64>,
}

impl ScaleLeader {
    pub fn new(scaler: LeaderScaler) -> Self {
        Self {
            scaler,
            starts: StartWatch::default(),
            since_us: None,
        }
    }

    /// The scaler's name (`sluice`, `kpa`, …).
    pub fn name(&self) -> &'static str {
        self.scaler.name()
    }

    pub fn tick(&mut self, v: &ScaleView<'_>) -> ScaleTick {
        let count = |s: SlotState| v.placed.iter().filter(|p| p.state == s).count();
        let inputs = ScaleInputs {
            now_us: v.now_us,
            ready: count(SlotState::Serving),
            starting: count(SlotState::Starting),
            mu_per_min: v.mu_per_min,
            in_flight_requests: v.in_flight_requests,
            requests_per_s: v.requests_per_s,
            capacity_mu_per_min: v.capacity_mu_per_min,
        };
        let desired = self.scaler.decide(&inputs, &v.bounds);
        let mut commands = Vec::new();
        if v.recorded != Some(desired) {
            commands.push(ScaleCommand::SetDesired(desired));
        }
        let since = *self.since_us.get_or_insert(v.now_us);
        let in_grace = v.now_us.saturating_sub(since) < v.liveness_grace_us;
        let all_live: Vec<Host>;
        let hosts = if in_grace {
            all_live = v
                .hosts
                .iter()
                .map(|h| Host {
                    live: true,
                    ..h.clone()
                })
                .collect();
            &all_live[..]
        } else {
            v.hosts
        };
        let stalled = self
            .starts
            .stalled(v.placed, hosts, v.now_us, v.start_timeout_us);
        commands.extend(stalled.iter().map(|id| ScaleCommand::Withdraw(*id)));
        // Placement decides over the fleet as it is (a withdrawn start still counts
        // this tick; its host is judged again at the next).
        let plan = place(desired, hosts, v.placed);
        let mut taken = v.taken.to_vec();
        for host in plan.start {
            let id = replica_id(host, free_index(host, taken.iter().copied()));
            taken.push(id);
            commands.push(ScaleCommand::Start { id, host });
        }
        commands.extend(plan.undrain.into_iter().map(ScaleCommand::Undrain));
        commands.extend(plan.drain.into_iter().map(ScaleCommand::Drain));
        ScaleTick {
            desired,
            inputs,
            commands,
        }
    }
}

/// Replica ids are global: the host (node) id in the high bits, the local index below.
pub fn replica_id(host: u64, index: usize) -> ReplicaId {
    ReplicaId((host << 20) | index as u64)
}

/// The local index of a replica id (standalone ids are the index).
pub fn local_index(id: ReplicaId) -> usize {
    (id.0 & ((1 << 20) - 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaler::{AutoscalerConfig, MuUtilization};

    fn leader() -> ScaleLeader {
        let cfg = AutoscalerConfig::default();
        ScaleLeader::new(LeaderScaler::new(Box::new(MuUtilization::new(&cfg)), 0))
    }

    fn hosts(n: u64) -> Vec<Host> {
        (1..=n)
            .map(|id| Host {
                id,
                rack: format!("rack-{}", id % 2),
                gpus: 2,
                live: true,
            })
            .collect()
    }

    fn view<'a>(
        now_us: u64,
        mu: f64,
        placed: &'a [Placed],
        hosts: &'a [Host],
        taken: &'a [ReplicaId],
    ) -> ScaleView<'a> {
        ScaleView {
            now_us,
            mu_per_min: mu,
            in_flight_requests: 0.0,
            requests_per_s: 0.0,
            capacity_mu_per_min: 100.0,
            bounds: ScaleBounds {
                min: 1,
                max: 8,
                reserved_floor: 0,
            },
            placed,
            hosts,
            taken,
            recorded: Some(placed.len()),
            start_timeout_us: 60_000_000,
            liveness_grace_us: 0,
        }
    }

    fn serving(id: ReplicaId, host: u64) -> Placed {
        Placed {
            id,
            host,
            state: SlotState::Serving,
            in_flight: 0,
        }
    }

    #[test]
    fn load_beyond_capacity_records_a_count_and_places_fresh_ids_across_hosts() {
        let hosts = hosts(3);
        let placed = [serving(replica_id(1, 0), 1)];
        let taken = [replica_id(1, 0)];
        let t = leader().tick(&view(0, 350.0, &placed, &hosts, &taken));
        assert!(t.desired > 1);
        assert_eq!(t.commands[0], ScaleCommand::SetDesired(t.desired));
        let starts: Vec<(ReplicaId, u64)> = t
            .commands
            .iter()
            .filter_map(|c| match c {
                ScaleCommand::Start { id, host } => Some((*id, *host)),
                _ => None,
            })
            .collect();
        assert_eq!(starts.len(), t.desired - 1);
        // Every new id is fresh and names its host.
        let mut ids: Vec<ReplicaId> = starts.iter().map(|s| s.0).collect();
        ids.push(replica_id(1, 0));
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), t.desired);
        assert!(starts.iter().all(|(id, host)| id.0 >> 20 == *host));
    }

    #[test]
    fn a_start_on_a_host_that_went_away_is_withdrawn() {
        let mut hs = hosts(2);
        hs[1].live = false;
        let placed = [
            serving(replica_id(1, 0), 1),
            Placed {
                id: replica_id(2, 0),
                host: 2,
                state: SlotState::Starting,
                in_flight: 0,
            },
        ];
        let taken = [replica_id(1, 0), replica_id(2, 0)];
        let t = leader().tick(&view(0, 150.0, &placed, &hs, &taken));
        assert!(t
            .commands
            .contains(&ScaleCommand::Withdraw(replica_id(2, 0))));
    }

    #[test]
    fn a_new_leader_trusts_every_host_until_they_had_time_to_report() {
        let mut hs = hosts(2);
        hs[1].live = false;
        let placed = [Placed {
            id: replica_id(2, 0),
            host: 2,
            state: SlotState::Starting,
            in_flight: 0,
        }];
        let taken = [replica_id(2, 0)];
        let mut l = leader();
        let mut at = |t: u64| {
            let mut v = view(t, 0.0, &placed, &hs, &taken);
            v.liveness_grace_us = 15_000_000;
            l.tick(&v)
        };
        // Within the grace the silent host's start is left alone...
        assert!(!at(0)
            .commands
            .contains(&ScaleCommand::Withdraw(replica_id(2, 0))));
        // ...and after it, it is withdrawn.
        assert!(at(16_000_000)
            .commands
            .contains(&ScaleCommand::Withdraw(replica_id(2, 0))));
    }

    #[test]
    fn at_the_recorded_count_a_quiet_tick_changes_nothing() {
        let hosts = hosts(2);
        let placed = [serving(replica_id(1, 0), 1), serving(replica_id(2, 0), 2)];
        let taken = [replica_id(1, 0), replica_id(2, 0)];
        let mut l = leader();
        // Load for two replicas at the target utilization, held: nothing to do.
        for k in 0..10 {
            let t = l.tick(&view(k * 2_000_000, 120.0, &placed, &hosts, &taken));
            assert_eq!(t.desired, 2, "tick {k}");
            assert!(t.commands.is_empty(), "tick {k}: {:?}", t.commands);
        }
    }
}
