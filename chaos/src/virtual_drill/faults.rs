//! The director: the drill's faults struck on schedule (kills, cuts, hangs, slow
//! replicas, the poison client, rolling restarts) after the balancer drained the doors
//! they take down, their healing, and the nodes' restarts.

use super::control::Write;
use super::spec::Act;
use super::world::{Ev, Power, World, DIRECTOR_US, SECOND_US};
use crate::drill::ledger::Outcome;
use sluice_actors::prober::Standing;

impl World<'_> {
    pub(super) fn direct(&mut self) {
        self.push(self.now + DIRECTOR_US, Ev::Director);
        let due: Vec<(u64, Act)> = {
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.plan)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            self.plan = later;
            due
        };
        for (at, act) in due {
            self.act(at, act);
        }
    }

    pub(super) fn later(&mut self, after_us: u64, act: Act) {
        self.plan.push((self.now + after_us, act));
    }

    pub(super) fn struck(&mut self, what: String) {
        self.fault_at_us.get_or_insert(self.now);
        self.faults
            .push(format!("{:.1} s: {what}", self.now as f64 / 1e6));
    }

    pub(super) fn healed(&mut self, what: String) {
        self.healed_at_us = self.now;
        self.faults
            .push(format!("{:.1} s: {what}", self.now as f64 / 1e6));
    }

    /// Doors of `nodes` out of the balancer; whether their requests are all answered.
    pub(super) fn drained(&mut self, nodes: &[usize]) -> bool {
        for &n in nodes {
            self.nodes[n].open = false;
        }
        nodes.iter().all(|&n| self.nodes[n].inflight == 0)
    }

    pub(super) fn act(&mut self, at: u64, act: Act) {
        // A kill or a cut waits for the balancer to drain the doors it takes down.
        if let Act::Kill {
            nodes, deadline_us, ..
        }
        | Act::Cut {
            nodes, deadline_us, ..
        } = &act
        {
            let wait = !self.drained(nodes) && self.now < *deadline_us;
            if wait {
                self.plan.push((at, act));
                return;
            }
        }
        match act {
            Act::Kill {
                nodes,
                heal_after_us,
                ..
            } => {
                for &n in &nodes {
                    self.kill_node(n);
                }
                self.struck(format!(
                    "kill -9 of {} node(s) {} and their replicas",
                    nodes.len(),
                    short(&nodes)
                ));
                self.later(heal_after_us, Act::Start(nodes));
            }
            Act::KillLeader { heal_after_us } => {
                let Some(l) = self.control.leader else {
                    self.later(DIRECTOR_US, Act::KillLeader { heal_after_us });
                    return;
                };
                let deadline_us = self.now + 60 * SECOND_US;
                self.faults.push(format!(
                    "{:.1} s: the leader is node {l}",
                    self.now as f64 / 1e6
                ));
                self.act(
                    self.now,
                    Act::Kill {
                        nodes: vec![l],
                        deadline_us,
                        heal_after_us,
                    },
                );
            }
            Act::Start(nodes) => {
                for &n in &nodes {
                    self.push(self.now + self.spec.node_restart_us, Ev::NodeUp(n as u32));
                }
                self.healed(format!("{} node(s) started again", nodes.len()));
            }
            Act::Cut {
                nodes,
                heal_after_us,
                ..
            } => {
                for &n in &nodes {
                    self.reach.side[n] = 1;
                }
                // Whatever crossed the cut hangs until the peer timeout.
                for r in 0..self.engines.len() {
                    let host = self.spec.host(r);
                    let cross: Vec<u32> = self.engines[r]
                        .on
                        .iter()
                        .copied()
                        .filter(|&q| {
                            let d = self.reqs[q as usize].door as usize;
                            self.reach.side[d] != self.reach.side[host]
                        })
                        .collect();
                    for q in cross {
                        self.detach(q, r);
                        let attempt = self.reqs[q as usize].attempt;
                        self.push(
                            self.now + self.spec.peer_timeout_us,
                            Ev::NodeLost(q, attempt),
                        );
                    }
                }
                self.struck(format!(
                    "{} node(s) {} cut off from the rest (a minority)",
                    nodes.len(),
                    short(&nodes)
                ));
                self.later(heal_after_us, Act::HealCut(nodes));
            }
            Act::HealCut(nodes) => {
                for &n in &nodes {
                    self.reach.side[n] = 0;
                    self.nodes[n].open = true;
                }
                self.apply_everywhere();
                self.healed("partition healed".into());
            }
            Act::Hang(replicas) => {
                for &r in &replicas {
                    self.engines[r].hung = true;
                }
                self.struck(format!(
                    "{} replica(s) {} hang without erroring",
                    replicas.len(),
                    short(&replicas)
                ));
            }
            Act::Slow(replicas, factor) => {
                for &r in &replicas {
                    self.engines[r].engine.core.set_slowdown(factor);
                }
                self.struck(format!(
                    "{} replica(s) {} {factor}× slower",
                    replicas.len(),
                    short(&replicas)
                ));
            }
            Act::Unslow(replicas) => {
                for &r in &replicas {
                    self.engines[r].engine.core.set_slowdown(1.0);
                }
                self.healed("slow replicas back to normal".into());
            }
            Act::PoisonStart { stop_after_us } => {
                self.poison_on = true;
                self.struck(
                    "a poison request (it hangs whichever engine serves it) sent again and again by one client"
                        .into(),
                );
                self.push(self.now, Ev::Poison);
                self.later(stop_after_us, Act::PoisonStop);
            }
            Act::PoisonStop => {
                self.poison_on = false;
                self.poison_final = true;
                if !self.poison_waiting {
                    self.push(self.now, Ev::Poison);
                }
                self.healed("the poison client stops (after one more try)".into());
            }
            Act::Roll { rack, deadline_us } => {
                let nodes: Vec<usize> = (0..self.nodes.len())
                    .filter(|&n| self.spec.rack(n) == rack)
                    .collect();
                if self.rolling != Some(rack) {
                    // SIGTERM: the nodes drain their replicas (routers stop sending to
                    // them) and their doors leave the balancer.
                    for &n in &nodes {
                        for r in self.locals(n) {
                            self.nodes[n].outbox.push_back(Write::Health {
                                replica: r,
                                standing: Standing::HeldByNode,
                            });
                        }
                        self.flush(n);
                    }
                    self.rolling = Some(rack);
                }
                let idle = nodes
                    .iter()
                    .all(|&n| self.locals(n).all(|r| self.engines[r].on.is_empty()));
                if !(self.drained(&nodes) && idle) && self.now < deadline_us {
                    self.plan
                        .push((self.now + DIRECTOR_US, Act::Roll { rack, deadline_us }));
                    return;
                }
                for &n in &nodes {
                    self.kill_node(n);
                    self.push(self.now + self.spec.node_restart_us, Ev::NodeUp(n as u32));
                }
                self.struck(format!("rack {rack} restarted ({} nodes)", nodes.len()));
            }
        }
    }

    fn kill_node(&mut self, n: usize) {
        self.reach.up[n] = false;
        self.nodes[n].open = false;
        for r in self.locals(n) {
            // Doors elsewhere hear nothing until the node's silence is taken for its
            // loss.
            self.engine_down(r, Power::Down, self.spec.peer_timeout_us);
        }
        // Requests still open at its door die with it (the drain gave up on them).
        let open: Vec<u32> = self
            .active
            .iter()
            .copied()
            .filter(|&q| {
                let r = &self.reqs[q as usize];
                r.door as usize == n && r.done.is_none()
            })
            .collect();
        for q in open {
            self.answer(
                q,
                Outcome::Lost {
                    why: "its front door died with the request open".into(),
                },
            );
        }
        self.nodes[n].inflight = 0;
    }

    pub(super) fn node_up(&mut self, n: usize) {
        self.reach.up[n] = true;
        self.nodes[n] = self.fresh_node(n);
        self.nodes[n].open = true;
        // It replays its own durable log first, then catches up from the leader.
        self.apply(n, 0..self.control.applied[n]);
        self.apply_everywhere();
        for r in self.locals(n) {
            if self.spec.hold_restarted {
                // Its engines are starting: out of service until they serve.
                self.nodes[n].outbox.push_back(Write::Health {
                    replica: r,
                    standing: Standing::HeldByNode,
                });
            }
            let epoch = self.engines[r].epoch;
            self.push(
                self.now + self.spec.engine_restart_us,
                Ev::EngineUp(r as u32, epoch),
            );
        }
        self.flush(n);
        if let Some(rack) = self.rolling {
            if self.spec.rack(n) == rack {
                let last = (0..self.nodes.len()).rfind(|&k| self.spec.rack(k) == rack);
                if last == Some(n) {
                    self.roll_next(rack);
                }
            }
        }
    }

    /// The next rack of a rolling restart goes once this one's engines serve again.
    fn roll_next(&mut self, rack: usize) {
        let next = rack + 1;
        if next >= self.spec.racks.min(self.nodes.len()) {
            self.rolling = None;
            self.healed("rolling restart done".into());
            return;
        }
        let wait = self.spec.engine_restart_us + 2 * SECOND_US;
        self.later(
            wait,
            Act::Roll {
                rack: next,
                deadline_us: self.now + wait + 60 * SECOND_US,
            },
        );
    }

    /// The poison client: one try at a time, a second apart, until told to stop, then
    /// one final try.
    pub(super) fn poison_send(&mut self) {
        if self.poison_waiting || !(self.poison_on || self.poison_final) {
            return;
        }
        if !self.poison_on {
            self.poison_final = false;
        }
        self.poison_waiting = true;
        self.admit(None, false, true);
    }
}

fn short(items: &[usize]) -> String {
    if items.len() <= 8 {
        format!("{items:?}")
    } else {
        format!("[{}, {}, … {}]", items[0], items[1], items[items.len() - 1])
    }
}
