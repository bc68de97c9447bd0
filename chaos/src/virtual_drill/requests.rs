//! The requests' side of the virtual fleet: the load arriving through the balancer,
//! each request's attempts at its door — run by the live node's request-lifecycle core
//! — its tokens as the engine streams them, and its answer in the ledger.

use super::world::{
    attempt_id, Ev, Node, Power, Req, World, POISON_FINGERPRINT, POISON_KEY, SECOND_US,
};
use crate::drill::ledger::Outcome;
use sluice_actors::lifecycle::{Broke, Fail, Lifecycle, Next};
use sluice_actors::prober::RealOutcome;
use sluice_actors::router::{Admission, PromptBlocks, Usage};
use sluice_actors::slice::{ReplicaId, SliceKey};
use sluice_engine::core::{EngineRequest, RequestId};
use sluice_sim::trace::splitmix64 as splitmix;

impl World<'_> {
    pub(super) fn arrival(&mut self, i: u32) {
        if let Some(next) = self.trace.requests.get(i as usize + 1) {
            if next.arrival_us <= self.end_us {
                self.push(next.arrival_us, Ev::Arrival(i + 1));
            }
        }
        let stream = splitmix(u64::from(i)) & 1 == 1;
        self.admit(Some(i), stream, false);
    }

    /// A client sends a request through the balancer: to the next open door.
    pub(super) fn admit(&mut self, trace: Option<u32>, stream: bool, poison: bool) {
        let n = self.nodes.len();
        let door = (0..n)
            .map(|k| (self.door_rr + k) % n)
            .find(|&d| self.nodes[d].open && self.reach.up[d]);
        self.door_rr = self.door_rr.wrapping_add(1);
        let q = self.reqs.len() as u32;
        self.reqs.push(Req {
            trace,
            door: door.unwrap_or(0) as u32,
            stream,
            poison,
            sent_us: self.now,
            attempt: 0,
            life: None,
            started: false,
            next_token: 0,
            resumed: 0,
            last_us: self.now,
            first_us: None,
            corrupt: false,
            counted: false,
            done: None,
        });
        let Some(door) = door else {
            self.answer(
                q,
                Outcome::Explicit {
                    why: "no front door open".into(),
                },
            );
            return;
        };
        self.active.push(q);
        self.nodes[door].inflight += 1;
        self.reqs[q as usize].counted = true;
        let (workload, input, output, fingerprint) = self.shape(q);
        let blocks = PromptBlocks::of_tokens(&self.prompt(q));
        let now_ms = self.now / 1000;
        let admission = Admission {
            workload: workload.map(SliceKey),
            blocks: &blocks,
            input_tokens: input,
            images: 0,
            max_tokens: Some(output),
            n: 1,
            fingerprint: Some(fingerprint),
            radius: None,
            stream: self.reqs[q as usize].stream,
        };
        let node = &mut self.nodes[door];
        match Lifecycle::begin(&mut node.router, &mut node.budget, &admission, now_ms) {
            Ok((life, p)) => {
                self.reqs[q as usize].life = Some(life);
                self.dispatch(q, p.replica.0 as usize);
            }
            Err(f) => self.answer(q, failed(f)),
        }
    }

    /// (workload key, prompt tokens, output tokens, body fingerprint) of request `q`.
    fn shape(&self, q: u32) -> (Option<u64>, u32, u32, u64) {
        let r = &self.reqs[q as usize];
        match r.trace.and_then(|t| self.trace.requests.get(t as usize)) {
            Some(t) => (
                t.session,
                t.prompt.len(),
                t.output_tokens.max(1),
                splitmix(u64::from(r.trace.unwrap_or(0)) ^ 0xb0d7),
            ),
            None => (Some(POISON_KEY), 64, 32, POISON_FINGERPRINT),
        }
    }

    pub(super) fn prompt(&self, q: u32) -> Vec<u32> {
        match self.reqs[q as usize]
            .trace
            .and_then(|t| self.trace.requests.get(t as usize))
        {
            Some(t) => t.prompt.tokens(),
            None => (0..64).map(|k| 7 + k).collect(),
        }
    }

    /// Sends the current attempt of `q` to `replica`.
    fn dispatch(&mut self, q: u32, replica: usize) {
        self.routed[replica] += 1;
        let req = &self.reqs[q as usize];
        let door = req.door as usize;
        let attempt = req.attempt;
        let host = self.spec.host(replica);
        if host != door && !self.reach.can(door, host) {
            // Forwarded on a connection to a peer that is gone: no answer until the
            // peer's silence is taken for its loss, and the door cannot tell whether it
            // arrived.
            self.push(
                self.now + self.spec.peer_timeout_us,
                Ev::NodeLost(q, attempt),
            );
            return;
        }
        if self.engines[replica].power != Power::Up {
            // The engine's port refuses the connection: not delivered.
            self.upstream_failure(q, false);
            return;
        }
        let (_, _, output, _) = self.shape(q);
        // A continuation's prompt ends with the answer so far, and asks for the rest.
        let resumed = req.resumed;
        let mut prompt = self.prompt(q);
        prompt.extend((0..resumed).map(|i| 1_000 + i));
        let output = output.saturating_sub(resumed).max(1);
        let id = attempt_id(q, attempt);
        let e = &mut self.engines[replica];
        match e.engine.core.add_request(
            EngineRequest::new(RequestId(id), prompt, output, output),
            self.now,
        ) {
            Ok(()) => {
                e.on.push(q);
                if self.reqs[q as usize].poison {
                    // The poison hangs whichever engine serves it.
                    e.hung = true;
                }
                self.kick(replica);
            }
            Err(why) => self.answered(
                q,
                replica,
                400,
                None,
                Outcome::Explicit {
                    why: format!("HTTP 400 {why}"),
                },
            ),
        }
    }

    /// The request whose current attempt on replica `r` has engine id `id`.
    pub(super) fn current(&self, id: u64, r: usize) -> Option<u32> {
        let q = (id >> 8) as u32;
        let req = self.reqs.get(q as usize)?;
        (req.done.is_none() && u64::from(req.attempt) == id & 0xff && req.replica() == r)
            .then_some(q)
    }

    pub(super) fn token(&mut self, r: usize, id: u64, index: u32) {
        let Some(q) = self.current(id, r) else {
            return;
        };
        let req = &mut self.reqs[q as usize];
        let index = req.resumed + index;
        if index != req.next_token {
            req.corrupt = true;
        }
        req.next_token = index + 1;
        req.started = true;
        req.last_us = self.now;
        if req.stream {
            req.first_us.get_or_insert(self.now);
        }
        // Every token, as the live door meters a stream: the router's stall rule
        // judges a replica by its silence, and reports every 16 tokens made a replica
        // whose steps had slowed to 190 ms look silent for 3 s (false hang verdicts).
        if let Some(life) = req.life {
            let door = req.door as usize;
            self.nodes[door]
                .router
                .progress(life.id(), index + 1, self.now / 1000);
        }
    }

    pub(super) fn finished(&mut self, r: usize, id: u64, usage: sluice_engine::core::Usage) {
        let Some(q) = self.current(id, r) else {
            return;
        };
        self.detach(q, r);
        let req = &self.reqs[q as usize];
        // Usage for one request, as the live door splices a continuation's.
        let usage = Usage {
            prompt_tokens: usage.prompt_tokens.saturating_sub(req.resumed),
            completion_tokens: usage.completion_tokens + req.resumed,
            cached_tokens: usage.cached_tokens,
        };
        let outcome = if req.corrupt || req.next_token != usage.completion_tokens {
            Outcome::Lost {
                why: format!(
                    "tokens do not add up: {} streamed, usage says {}",
                    req.next_token, usage.completion_tokens
                ),
            }
        } else {
            Outcome::Ok
        };
        self.answered(q, r, 200, Some(usage), outcome);
    }

    /// Replica `r` answered `q` with HTTP `status`: its door's router and prober hear
    /// of it as a live door's do.
    pub(super) fn answered(
        &mut self,
        q: u32,
        r: usize,
        status: u16,
        usage: Option<Usage>,
        outcome: Outcome,
    ) {
        let now_ms = self.now / 1000;
        let door = self.reqs[q as usize].door as usize;
        self.with_life(q, |life, node| match usage {
            Some(u) => life.completed(&mut node.router, u, now_ms),
            None => life.finish(&mut node.router, None),
        });
        let changes = self.nodes[door].prober.on_real_outcome(
            ReplicaId(r as u64),
            RealOutcome::of_status(Some(status)),
            now_ms,
        );
        self.answer(q, outcome);
        self.verdicts(door, changes);
    }

    /// Runs `f` on `q`'s lifecycle with its door's node (its router and retry budget).
    fn with_life<R>(
        &mut self,
        q: u32,
        f: impl FnOnce(&mut Lifecycle, &mut Node) -> R,
    ) -> Option<R> {
        let req = &mut self.reqs[q as usize];
        let life = req.life.as_mut()?;
        Some(f(life, &mut self.nodes[req.door as usize]))
    }

    /// An attempt of `q` failed (one more failure counted): `decide` asks its lifecycle,
    /// with its door's node, what now at the clock value it is given; that is carried out.
    fn attempt_failed(
        &mut self,
        q: u32,
        decide: impl FnOnce(&mut Lifecycle, &mut Node, u64) -> Next,
    ) {
        self.failures += 1;
        let now_ms = self.now / 1000;
        match self.with_life(q, |life, node| decide(life, node, now_ms)) {
            Some(Next::Retry(p)) => {
                let req = &mut self.reqs[q as usize];
                req.attempt = req.attempt.wrapping_add(1);
                // Nothing of the answer reached the client: it starts over.
                req.next_token = 0;
                req.started = false;
                self.dispatch(q, p.replica.0 as usize);
            }
            Some(Next::Fail(f)) => self.answer(q, failed(f)),
            // Only a placed request has attempts that can fail.
            None => {}
        }
    }

    /// The request's attempt failed before any answer reached the client.
    fn upstream_failure(&mut self, q: u32, delivered: bool) {
        self.attempt_failed(q, |life, node, now_ms| {
            life.failed_before_answer(delivered, &mut node.router, &mut node.budget, now_ms)
        });
    }

    /// The attempt broke after the replica took it: a stream already started is
    /// continued elsewhere (or ends with an error event); otherwise — nothing reached
    /// the client, an answer sent whole has not begun — the door may retry. With
    /// `node_lost` the node serving it went silent (killed, or cut off from the door):
    /// it is the fleet's fault, so nothing is implicated. A stream under way is
    /// continued as any other, anything else moves as the live door's
    /// `node_lost_before_answer` moves it — on by migration once its retry is spent.
    pub(super) fn cut(&mut self, q: u32, attempt: u8, node_lost: bool) {
        let req = &self.reqs[q as usize];
        if req.done.is_some() || req.attempt != attempt {
            return;
        }
        let (replica, started) = (req.replica(), req.started && req.stream);
        let moved = req.life.map_or(0, |l| l.migrations());
        self.detach(q, replica);
        if started {
            self.migrate(
                q,
                if node_lost {
                    Broke::NodeLost
                } else {
                    Broke::Answer
                },
            );
            return;
        }
        self.attempt_failed(q, |life, node, now_ms| {
            let (router, budget) = (&mut node.router, &mut node.budget);
            if node_lost {
                life.node_lost_before_answer(router, budget, &mut node.migrations, now_ms)
            } else {
                life.lost(false, router, budget, now_ms)
            }
        });
        if self.reqs[q as usize].life.map_or(0, |l| l.migrations()) > moved {
            self.migrations += 1;
        }
    }

    /// Door `n`'s router took replica `r` for hung (every stream on it stopped): the
    /// requests it holds there move, as the live door's alarm moves them — a started
    /// stream is continued, anything else fails over as a call that got no answer —
    /// unless the move would be refused (its lifecycle's word rules): then it goes on
    /// where it is, as at the live door.
    pub(super) fn stalled(&mut self, n: usize, r: usize) {
        let held: Vec<u32> = self
            .active
            .iter()
            .copied()
            .filter(|&q| {
                let req = &self.reqs[q as usize];
                req.door as usize == n
                    && req.done.is_none()
                    && req.life.is_some()
                    && req.replica() == r
            })
            .collect();
        let now_ms = self.now / 1000;
        for q in held {
            // Asked one at a time: each move spends the budget the next one asks about.
            let req = &self.reqs[q as usize];
            let midway = req.started && req.stream;
            let node = &self.nodes[n];
            let movable = req.life.is_some_and(|l| {
                if midway {
                    l.moves_midway_on_stall_word(true, &node.router, &node.migrations, now_ms)
                } else {
                    l.moves_on_stall_word(&node.router, &node.budget, now_ms)
                }
            });
            if !movable {
                continue;
            }
            self.withdraw(q, r);
            if midway {
                self.migrate(q, Broke::Hung);
            } else {
                self.upstream_failure(q, true);
            }
        }
    }

    /// The replica serving `q`'s stream failed mid-answer (it was detached): the
    /// lifecycle continues it on another replica from the token the client has, as the
    /// live door does, or it ends with an error event.
    fn migrate(&mut self, q: u32, how: Broke) {
        self.failures += 1;
        let now_ms = self.now / 1000;
        let moved = self.with_life(q, |life, node| {
            life.failed_midway(how, true, &mut node.router, &mut node.migrations, now_ms)
        });
        match moved {
            Some(Ok(p)) => {
                let req = &mut self.reqs[q as usize];
                req.attempt = req.attempt.wrapping_add(1);
                req.resumed = req.next_token;
                req.last_us = self.now;
                self.migrations += 1;
                self.dispatch(q, p.replica.0 as usize);
            }
            Some(Err(refused)) => self.answer(q, failed(refused.fail)),
            None => {}
        }
    }

    pub(super) fn answer(&mut self, q: u32, outcome: Outcome) {
        let req = &mut self.reqs[q as usize];
        if req.done.is_some() {
            return;
        }
        req.done = Some((self.now, outcome));
        if std::mem::take(&mut req.counted) {
            let door = req.door as usize;
            self.nodes[door].inflight = self.nodes[door].inflight.saturating_sub(1);
        }
        if req.poison {
            self.poison_waiting = false;
            if self.poison_on || self.poison_final {
                self.push(self.now + SECOND_US, Ev::Poison);
            }
        }
    }

    /// Timeouts at the doors: a started stream silent past the idle timeout (continued
    /// elsewhere), a request past its deadline (an explicit error). An answer sent
    /// whole has no idle timeout, as at the live door, which waits for it until the
    /// deadline.
    pub(super) fn timeouts(&mut self) {
        let mut expired = Vec::new();
        self.active.retain(|&q| {
            let r = &self.reqs[q as usize];
            if r.done.is_some() {
                return false;
            }
            if self.now.saturating_sub(r.sent_us) > self.spec.request_timeout_us {
                expired.push((q, false));
            } else if r.started
                && r.stream
                && self.now.saturating_sub(r.last_us) > self.spec.stream_idle_us
            {
                expired.push((q, true));
            }
            true
        });
        let now_ms = self.now / 1000;
        for (q, silent_stream) in expired {
            self.withdraw(q, self.reqs[q as usize].replica());
            if silent_stream {
                // A silent stream is continued elsewhere, as the live door does.
                self.migrate(q, Broke::Answer);
                continue;
            }
            self.failures += 1;
            let fail = self.with_life(q, |life, node| {
                life.failed_holding(Broke::Deadline, &mut node.router, now_ms)
            });
            self.answer(q, failed(fail.unwrap_or(Fail::Timeout)));
        }
    }
}

/// What the client saw of a request the lifecycle failed, as the ledger records it.
fn failed(f: Fail) -> Outcome {
    let why = match f {
        Fail::CutOff => "the answer was cut off (error event)".into(),
        _ => format!("HTTP {} {}", f.status(), f.code().unwrap_or(f.error_type())),
    };
    Outcome::Explicit { why }
}
