//! The replicas' side: engine-model replicas stepping in virtual time, going down
//! (killed, cut off, restarted by the supervisor) and coming back, and what their
//! requests and probes hear of it.

use super::control::Write;
use super::world::{attempt_id, Ev, Power, World, PROBE_BIT};
use sluice_actors::prober::Standing;
use sluice_actors::slice::ReplicaId;
use sluice_engine::core::{EngineEvent, RequestId};

impl World<'_> {
    pub(super) fn kick(&mut self, r: usize) {
        let e = &mut self.engines[r];
        if e.hung || e.power != Power::Up {
            return;
        }
        if let Some(end) = e.engine.start_step(self.now) {
            e.busy_us += end.saturating_sub(self.now);
            let epoch = e.epoch;
            self.push(end, Ev::Step(r as u32, epoch));
        }
    }

    pub(super) fn step_end(&mut self, r: usize, epoch: u32) {
        let e = &mut self.engines[r];
        if e.epoch != epoch || e.power != Power::Up {
            return;
        }
        if e.hung {
            // A hung engine never finishes its step: nothing comes out of it.
            e.engine.drop_step();
            return;
        }
        let mut events = std::mem::take(&mut self.delivered);
        e.engine.end_step(&mut events);
        for ev in &events {
            match *ev {
                EngineEvent::Token { id, index } => {
                    if id.0 & PROBE_BIT == 0 {
                        self.token(r, id.0, index);
                    }
                }
                EngineEvent::Finished { id, usage, .. } => {
                    if id.0 & PROBE_BIT != 0 {
                        if let Some(p) = self.engines[r].probes.remove(&id.0) {
                            self.probe_result(r, p, true);
                        }
                    } else {
                        self.finished(r, id.0, usage);
                    }
                }
                EngineEvent::Preempted { .. } => {}
            }
        }
        events.clear();
        self.delivered = events;
        self.kick(r);
    }

    pub(super) fn detach(&mut self, q: u32, r: usize) {
        let on = &mut self.engines[r].on;
        if let Some(k) = on.iter().position(|&x| x == q) {
            on.swap_remove(k);
        }
    }

    /// The door gives up `q`'s current attempt on replica `r`: the engine aborts it.
    pub(super) fn withdraw(&mut self, q: u32, r: usize) {
        self.detach(q, r);
        let id = attempt_id(q, self.reqs[q as usize].attempt);
        self.engines[r].engine.core.abort(RequestId(id));
    }

    /// Engine `r` goes down and starts again `after_us` later (a supervisor restart,
    /// or its node's return); what it held fails.
    pub(super) fn restart_engine(&mut self, r: usize, after_us: u64) {
        self.engine_down(r, Power::Restarting, 0);
        let epoch = self.engines[r].epoch;
        self.push(self.now + after_us, Ev::EngineUp(r as u32, epoch));
    }

    /// Engine `r` stops; its requests' doors hear of it after `notice_us`.
    pub(super) fn engine_down(&mut self, r: usize, power: Power, notice_us: u64) {
        let e = &mut self.engines[r];
        e.power = power;
        e.epoch += 1;
        e.hung = false;
        e.probes.clear();
        e.engine.restart(self.spec.profile.engine.clone());
        for q in std::mem::take(&mut e.on) {
            let attempt = self.reqs[q as usize].attempt;
            // An engine that died with its node goes silent with it; one restarted by
            // its supervisor is reported by its node at once.
            let ev = if power == Power::Down {
                Ev::NodeLost(q, attempt)
            } else {
                Ev::Cut(q, attempt)
            };
            self.push(self.now + notice_us, ev);
        }
    }

    pub(super) fn engine_up(&mut self, r: usize, epoch: u32) {
        let host = self.spec.host(r);
        if self.engines[r].epoch != epoch || !self.reach.up[host] {
            return;
        }
        self.engines[r].power = Power::Up;
        let changes = self.nodes[host]
            .prober
            .restored(ReplicaId(r as u64), self.now / 1000);
        let node = &mut self.nodes[host];
        let effects = node.ejected.restored(ReplicaId(r as u64), changes);
        node.router.set_checked_health(ReplicaId(r as u64), true);
        if self.control.health[r] != Standing::Serving {
            node.outbox.push_back(Write::Health {
                replica: r,
                standing: Standing::Serving,
            });
        }
        self.carry_out(host, effects);
        self.flush(host);
    }
}
