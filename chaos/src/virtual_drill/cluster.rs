//! What the nodes tell each other and the leader: load and implication gossip, load
//! reports, writes proposed to and applied from the modelled Raft log, and the leader's
//! step (liveness marks and the assigner) run with the live leader's cores.

use super::control::Write;
use super::spec::Spec;
use super::world::{World, LIVENESS_US, ROUND_US};
use sluice_actors::assigner::{next_assignment, LoadReport, ReplicaInfo};
use sluice_actors::prober::{LivenessWatch, Standing};
use sluice_actors::slice::ReplicaId;
use std::collections::HashMap;

impl World<'_> {
    /// Proposes `n`'s waiting writes while a leader takes them; what commits is applied
    /// on every node that hears from the leader.
    pub(super) fn flush(&mut self, n: usize) {
        let mut committed = false;
        while let Some(w) = self.nodes[n].outbox.front().cloned() {
            if !self.control.propose(n, w, &self.reach) {
                break;
            }
            self.nodes[n].outbox.pop_front();
            committed = true;
        }
        if committed {
            self.apply_everywhere();
        }
    }

    /// Every node that hears from the leader applies what it has not yet.
    pub(super) fn apply_everywhere(&mut self) {
        for n in 0..self.nodes.len() {
            if let Some(range) = self.control.catch_up(n, &self.reach) {
                self.apply(n, range);
            }
        }
    }

    pub(super) fn apply(&mut self, n: usize, range: std::ops::Range<usize>) {
        for k in range {
            match &self.control.log[k] {
                Write::Health { replica, standing } => {
                    let own = self.spec.host(*replica) == n;
                    self.nodes[n]
                        .router
                        .set_checked_health(ReplicaId(*replica as u64), standing.routable(own))
                }
                Write::Assignment(a) => self.nodes[n].router.set_assignment(a.clone()),
            }
        }
    }

    pub(super) fn gossip(&mut self) {
        let now_ms = self.now / 1000;
        // Load every router has in flight, summed per partition side.
        let mut totals: [HashMap<ReplicaId, f64>; 2] = Default::default();
        let mut implications: [Vec<sluice_actors::router::Implication>; 2] = Default::default();
        let mut stalls: [Vec<(ReplicaId, u64)>; 2] = Default::default();
        let mut heard: [Vec<(ReplicaId, u64)>; 2] = Default::default();
        let mut own = Vec::with_capacity(self.nodes.len());
        for n in 0..self.nodes.len() {
            if !self.reach.up[n] {
                own.push(Vec::new());
                continue;
            }
            let side = usize::from(self.reach.side[n].min(1));
            let loads = self.nodes[n].router.own_load();
            for &(id, mu, _) in &loads {
                *totals[side].entry(id).or_insert(0.0) += mu;
            }
            own.push(loads);
            implications[side].extend(self.nodes[n].router.announced_implications(now_ms));
            stalls[side].extend(self.nodes[n].router.announced_stalls(now_ms));
            heard[side].extend(self.nodes[n].router.announced_heard(now_ms));
        }
        for (n, loads) in own.iter().enumerate() {
            if !self.reach.up[n] {
                continue;
            }
            // Every router gossips to every node it can reach: each hears the others.
            for m in 0..self.nodes.len() {
                if m != n && self.reach.can(n, m) {
                    self.nodes[n].heard[m] = self.now;
                }
            }
            let side = usize::from(self.reach.side[n].min(1));
            let mine: HashMap<ReplicaId, f64> = loads.iter().map(|&(id, mu, _)| (id, mu)).collect();
            let others = totals[side]
                .iter()
                .map(|(&id, &mu)| (id, (mu - mine.get(&id).copied().unwrap_or(0.0)).max(0.0)));
            let router = &mut self.nodes[n].router;
            router.set_external_load(others);
            router.merge_implications(&implications[side], now_ms);
            router.peers_heard(&heard[side], now_ms);
            // Word of hung replicas: each node's prober weighs it for its own.
            let changes = self.nodes[n].prober.on_stall_word(&stalls[side], now_ms);
            self.verdicts(n, changes);
        }
    }

    pub(super) fn control_step(&mut self) {
        self.control.tick(self.now, &self.reach);
        let Some(leader) = self.control.leader else {
            return;
        };
        // Load reports reach the leader from the nodes that can reach it.
        for n in 0..self.nodes.len() {
            if !self.reach.can(n, leader) {
                continue;
            }
            self.nodes[leader].heard[n] = self.now;
            let report = self.nodes[n].router.take_load(self.now);
            LoadReport::accumulate(&mut self.leader_load, &report);
        }
        for n in 0..self.nodes.len() {
            if self.reach.up[n] {
                self.flush(n);
            }
        }
        // Nodes silent for the liveness window lose their replicas in the registry, as
        // the leader heard them (and only after it has been up for a window).
        let g = self.spec.gpus_per_node.max(1);
        let marking = self.spec.liveness_marks;
        let at_leader = &self.nodes[leader];
        let heard = |n: u64| {
            n as usize == leader
                || self.now.saturating_sub(at_leader.heard[n as usize]) <= LIVENESS_US
        };
        let watch = LivenessWatch {
            since_us: at_leader.started_us,
            grace_us: LIVENESS_US,
        };
        let marks = watch.marks(
            self.now,
            self.control
                .health
                .iter()
                .enumerate()
                .filter(|_| marking)
                .map(|(r, &s)| (ReplicaId(r as u64), (r / g) as u64, s)),
            heard,
        );
        for m in marks {
            let standing = if m.unreachable {
                Standing::Unreachable
            } else {
                Standing::Serving
            };
            let replica = m.replica.0 as usize;
            self.control
                .propose(leader, Write::Health { replica, standing }, &self.reach);
        }
        let round = self.now >= self.next_round_us;
        if round {
            self.next_round_us = self.now + ROUND_US;
        }
        let registry = registry_of(&self.spec, &self.control.health);
        let mut load = self.leader_load.take();
        let next = next_assignment(
            Some(&self.control.assignment),
            &registry,
            round,
            &mut self.schedule,
            || load.take(),
            self.now,
            &self.assigner,
        );
        self.leader_load = load;
        if let Some(a) = next {
            self.control
                .propose(leader, Write::Assignment(a), &self.reach);
        }
        self.apply_everywhere();
    }
}

/// The registry as the assigner sees it: replicas in service are those `health` calls
/// serving.
pub(super) fn registry_of(spec: &Spec, health: &[Standing]) -> Vec<ReplicaInfo> {
    health
        .iter()
        .enumerate()
        .map(|(r, &h)| {
            let mut info = ReplicaInfo::new(
                r as u64,
                format!("rack-{}", spec.rack(spec.host(r))),
                spec.profile.capacity_mu_per_min,
            );
            info.healthy = h == Standing::Serving;
            info
        })
        .collect()
}

/// Voters as the live cluster picks them: three, spread so that losing a rack leaves a
/// majority.
pub(super) fn voters(spec: &Spec) -> Vec<usize> {
    use sluice_raft::voter_policy::{choose_voters, VoterCandidate, DESIRED_VOTERS};
    let candidates: Vec<VoterCandidate> = (0..spec.nodes)
        .map(|n| VoterCandidate {
            id: n as u64,
            rack: format!("rack-{}", spec.rack(n)),
            is_voter: false,
        })
        .collect();
    choose_voters(&candidates, DESIRED_VOTERS)
        .into_iter()
        .map(|id| id as usize)
        .collect()
}
