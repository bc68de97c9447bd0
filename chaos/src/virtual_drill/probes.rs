//! Every node's health prober over its local replicas, as the live prober shell runs it:
//! the engines' gauges, the probes the core asks for, and its verdicts carried out —
//! through the same effects (`prober::Ejections`) the live node carries out.

use super::control::Write;
use super::world::{Power, World, PROBE_BIT};
use sluice_actors::prober::{
    Effect, EngineState, Probe, Standing, VerdictChange, PROBE_MAX_TOKENS, PROBE_PRIORITY,
};
use sluice_actors::slice::ReplicaId;
use sluice_engine::core::{EngineRequest, RequestId};

impl World<'_> {
    /// The prober on every node over its local replicas: the engines' gauges, then the
    /// core's tick and the probes it asks for.
    pub(super) fn probe_round(&mut self) {
        let now_ms = self.now / 1000;
        for n in 0..self.nodes.len() {
            if !self.reach.up[n] {
                continue;
            }
            // As the live prober's round begins: replicas hung by their streams' word.
            let stalled = self.nodes[n].router.take_stalled(now_ms);
            for r in &stalled {
                self.stalled(n, r.0 as usize);
            }
            // Its own prober weighs the word at once (it ignores others' replicas).
            let word: Vec<(ReplicaId, u64)> = stalled.iter().map(|&r| (r, 0)).collect();
            let changes = self.nodes[n].prober.on_stall_word(&word, now_ms);
            self.verdicts(n, changes);
            // As the live round: the pool follows the replicas here and their engines.
            let engines: Vec<(ReplicaId, EngineState)> = self
                .locals(n)
                .map(|r| match self.engines[r].power {
                    Power::Up => (ReplicaId(r as u64), EngineState::Up),
                    Power::Restarting | Power::Down => {
                        (ReplicaId(r as u64), EngineState::DownOrStarting)
                    }
                })
                .collect();
            let changes = self.nodes[n].prober.follow_engines(&engines, now_ms);
            self.verdicts(n, changes);
            for r in self.locals(n) {
                let e = &self.engines[r];
                if e.power != Power::Up {
                    continue;
                }
                // What the live prober reads off an engine's gauges: requests queued,
                // and prompt and output tokens counted since the engine started.
                let s = e.engine.core.stats();
                let queued = s.running + s.waiting;
                let tokens = s.generation_tokens + s.prompt_tokens;
                let busy_ms = Some(e.busy_us / 1000);
                let changes = self.nodes[n].prober.on_progress(
                    ReplicaId(r as u64),
                    queued,
                    tokens,
                    busy_ms,
                    now_ms,
                );
                self.verdicts(n, changes);
            }
            let tick = self.nodes[n].prober.tick(now_ms);
            self.verdicts(n, tick.changes);
            for p in tick.probes {
                self.send_probe(n, p);
            }
        }
    }

    fn send_probe(&mut self, n: usize, p: Probe) {
        let r = p.replica.0 as usize;
        if self.engines[r].power != Power::Up {
            self.probe_failed_now(n, p);
            return;
        }
        let id = PROBE_BIT | p.id.0;
        let prompt: Vec<u32> = (0..8).collect();
        let req = EngineRequest::new(RequestId(id), prompt, PROBE_MAX_TOKENS, PROBE_MAX_TOKENS)
            .with_priority(PROBE_PRIORITY);
        match self.engines[r].engine.core.add_request(req, self.now) {
            Ok(()) => {
                self.engines[r].probes.insert(id, p);
                self.kick(r);
            }
            Err(_) => self.probe_failed_now(n, p),
        }
    }

    fn probe_failed_now(&mut self, n: usize, p: Probe) {
        self.failures += 1;
        let changes = self.nodes[n]
            .prober
            .on_probe_result(p, false, self.now / 1000);
        self.verdicts(n, changes);
    }

    pub(super) fn probe_result(&mut self, r: usize, p: Probe, ok: bool) {
        let n = self.spec.host(r);
        if ok {
            // As the live prober's: a passed probe shows the replica works.
            self.nodes[n].router.heard_from(p.replica, self.now / 1000);
        } else {
            self.failures += 1;
        }
        let changes = self.nodes[n].prober.on_probe_result(p, ok, self.now / 1000);
        self.verdicts(n, changes);
    }

    /// Carries out the prober's verdicts on node `n`: an ejected replica leaves this
    /// router, is marked unhealthy in the registry and restarted by the supervisor.
    pub(super) fn verdicts(&mut self, n: usize, changes: Vec<VerdictChange>) {
        if changes.is_empty() {
            return;
        }
        let effects = self.nodes[n].ejected.apply(changes);
        self.carry_out(n, effects);
        self.flush(n);
    }

    /// Node `n`'s part in its prober's effects: only an ejection asks for anything
    /// (a restore or a kept replica changes nothing here).
    pub(super) fn carry_out(&mut self, n: usize, effects: Vec<Effect>) {
        for effect in effects {
            if let Effect::Eject(replica, _) = effect {
                let r = replica.0 as usize;
                let node = &mut self.nodes[n];
                node.router.set_checked_health(replica, false);
                node.outbox.push_back(Write::Health {
                    replica: r,
                    standing: Standing::HeldByNode,
                });
                self.restart_engine(r, self.spec.engine_restart_us);
            }
        }
    }
}
