//! The virtual fleet's control plane: the replicated log as Raft keeps it, modelled at
//! the level the drill needs — which voter leads, when a write commits (a quorum of
//! voters reachable from the leader), and which nodes have applied what — not the
//! protocol's messages. The process drills run the real openraft; here the question is
//! what the fleet's policies do while the control plane is slow, leaderless or split.

use sluice_actors::prober::Standing;
use sluice_actors::slice::Assignment;

/// A committed write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Health { replica: usize, standing: Standing },
    Assignment(Assignment),
}

/// Who can talk to whom: nodes that are up, on the same side of a partition.
#[derive(Debug, Clone)]
pub struct Reach {
    pub up: Vec<bool>,
    /// Partition side of each node; nodes on different sides cannot talk.
    pub side: Vec<u8>,
}

impl Reach {
    pub fn new(nodes: usize) -> Self {
        Self {
            up: vec![true; nodes],
            side: vec![0; nodes],
        }
    }

    pub fn can(&self, a: usize, b: usize) -> bool {
        self.up[a] && self.up[b] && self.side[a] == self.side[b]
    }
}

/// The log, its committed state, and who leads.
#[derive(Debug, Clone)]
pub struct Control {
    pub voters: Vec<usize>,
    pub leader: Option<usize>,
    /// When the election after losing a leader may complete.
    elect_at_us: Option<u64>,
    election_us: u64,
    /// Committed entries, in order.
    pub log: Vec<Write>,
    /// The registry's health of each replica, as committed.
    pub health: Vec<Standing>,
    pub assignment: Assignment,
    /// Entries each node has applied.
    pub applied: Vec<usize>,
}

impl Control {
    pub fn new(
        nodes: usize,
        voters: Vec<usize>,
        replicas: usize,
        assignment: Assignment,
        election_us: u64,
    ) -> Self {
        Self {
            leader: voters.first().copied(),
            voters,
            elect_at_us: None,
            election_us,
            log: Vec::new(),
            health: vec![Standing::Serving; replicas],
            assignment,
            applied: vec![0; nodes],
        }
    }

    /// Voters `v` reaches, itself included.
    fn quorum_of(&self, v: usize, reach: &Reach) -> bool {
        let n = self.voters.iter().filter(|&&w| reach.can(v, w)).count();
        n * 2 > self.voters.len()
    }

    /// Loses a leader that died or lost its quorum, and elects the next one an election
    /// timeout later: the lowest voter that is up and reaches a quorum.
    pub fn tick(&mut self, now_us: u64, reach: &Reach) {
        if let Some(l) = self.leader {
            if !reach.up[l] || !self.quorum_of(l, reach) {
                self.leader = None;
                self.elect_at_us = Some(now_us + self.election_us);
            }
        }
        if self.leader.is_none() {
            let at = *self.elect_at_us.get_or_insert(now_us + self.election_us);
            if now_us >= at {
                self.leader = self
                    .voters
                    .iter()
                    .copied()
                    .find(|&v| reach.up[v] && self.quorum_of(v, reach));
                self.elect_at_us = if self.leader.is_some() {
                    None
                } else {
                    Some(now_us + self.election_us)
                };
            }
        }
    }

    /// Node `from` asks to write `w`: committed when a leader is reachable from it with
    /// its quorum; otherwise refused (the caller tries again later).
    pub fn propose(&mut self, from: usize, w: Write, reach: &Reach) -> bool {
        let Some(l) = self.leader else {
            return false;
        };
        if !reach.can(from, l) || !self.quorum_of(l, reach) {
            return false;
        }
        match &w {
            Write::Health { replica, standing } => {
                if let Some(h) = self.health.get_mut(*replica) {
                    *h = *standing;
                }
            }
            Write::Assignment(a) => self.assignment = a.clone(),
        }
        self.log.push(w);
        true
    }

    /// The entries node `n` has not applied yet, if it can hear from the leader; they
    /// count as applied from now on.
    pub fn catch_up(&mut self, n: usize, reach: &Reach) -> Option<std::ops::Range<usize>> {
        let l = self.leader?;
        let from = self.applied[n];
        if from == self.log.len() || !reach.can(n, l) {
            return None;
        }
        self.applied[n] = self.log.len();
        Some(from..self.log.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_actors::slice::ReplicaId;

    fn control(nodes: usize) -> Control {
        let a = Assignment::uniform(1, &[ReplicaId(0)], 1, 1).unwrap();
        Control::new(nodes, vec![0, 1, 2], 4, a, 1_000)
    }

    #[test]
    fn a_dead_leader_is_replaced_after_the_election_timeout() {
        let mut reach = Reach::new(5);
        let mut c = control(5);
        assert!(c.propose(
            3,
            Write::Health {
                replica: 1,
                standing: Standing::HeldByNode
            },
            &reach
        ));
        reach.up[0] = false;
        c.tick(10_000, &reach);
        assert_eq!(c.leader, None);
        assert!(!c.propose(
            3,
            Write::Health {
                replica: 1,
                standing: Standing::Serving
            },
            &reach
        ));
        c.tick(10_999, &reach);
        assert_eq!(c.leader, None);
        c.tick(11_000, &reach);
        assert_eq!(c.leader, Some(1));
        assert!(c.propose(
            3,
            Write::Health {
                replica: 1,
                standing: Standing::Serving
            },
            &reach
        ));
        assert_eq!(c.log.len(), 2);
        assert_eq!(c.health[1], Standing::Serving);
    }

    #[test]
    fn a_minority_neither_commits_nor_applies_until_healed() {
        let mut reach = Reach::new(5);
        let mut c = control(5);
        // Voter 2 and node 4 are cut off: the majority side keeps its leader.
        reach.side[2] = 1;
        reach.side[4] = 1;
        c.tick(0, &reach);
        assert_eq!(c.leader, Some(0));
        assert!(!c.propose(
            4,
            Write::Health {
                replica: 0,
                standing: Standing::Unreachable
            },
            &reach
        ));
        assert!(c.propose(
            3,
            Write::Health {
                replica: 0,
                standing: Standing::Unreachable
            },
            &reach
        ));
        assert_eq!(c.catch_up(3, &reach), Some(0..1));
        assert_eq!(c.catch_up(4, &reach), None);
        reach.side[2] = 0;
        reach.side[4] = 0;
        assert_eq!(c.catch_up(4, &reach), Some(0..1));
        assert_eq!(c.applied, vec![0, 0, 0, 1, 1]);
    }

    #[test]
    fn no_quorum_means_no_leader() {
        let mut reach = Reach::new(3);
        let mut c = control(3);
        reach.up[1] = false;
        reach.up[2] = false;
        c.tick(0, &reach);
        c.tick(5_000, &reach);
        assert_eq!(c.leader, None);
    }
}
