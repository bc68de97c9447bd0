//! The virtual fleet in discrete-event time: every node runs the live node's policy
//! cores — the router core (choice, passive health, quarantine), the prober core, the
//! retry rule and budget, and the leader's assigner step — over engine-model replicas,
//! and this loop plays the shells' parts (forwarding, timeouts, restarts, gossip, the
//! control plane) with the live timings. Faults strike on the drill's schedule; the
//! ledger and the samples are the ones the process drills judge.

use super::control::{Control, Reach, Write};
use crate::drill::ledger::{Outcome, Record};
use crate::drill::watch::Sample;
use crate::trace::{splitmix64 as splitmix, Trace};
use sluice_actors::assigner::{
    next_assignment, AssignerConfig, LoadReport, ReplicaInfo, Schedule, ScheduleConfig,
};
use sluice_actors::lifecycle::{Broke, Fail, Lifecycle, Next};
use sluice_actors::prober::{
    liveness_marks, Effect, Ejections, Probe, ProbeConfig, ProberCore, RealOutcome, RetryBudget,
    Standing, VerdictChange, PROBE_MAX_TOKENS, PROBE_PRIORITY,
};
use sluice_actors::router::{
    Admission, PromptBlocks, QuarantineConfig, ReplicaSpec, RouterConfig, RouterCore, Usage,
};
use sluice_actors::slice::{ReplicaId, SliceKey};
use sluice_actors::Profile;
use sluice_engine::core::{EngineCore, EngineEvent, EngineRequest, RequestId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// The fleet and the shells' timings.
#[derive(Debug, Clone)]
pub struct Spec {
    pub nodes: usize,
    pub racks: usize,
    pub gpus_per_node: usize,
    pub profile: Profile,
    /// An engine's cold start: from (re)start to serving.
    pub engine_restart_us: u64,
    /// A node process's restart, before its engines start.
    pub node_restart_us: u64,
    /// How long a call to a dead or cut-off peer hangs before the caller gives up (the
    /// QUIC idle timeout).
    pub peer_timeout_us: u64,
    pub election_us: u64,
    pub stream_idle_us: u64,
    pub request_timeout_us: u64,
    pub quarantine: bool,
    /// Keep every sample's slice map (for the poison containment check).
    pub keep_slices: bool,
    /// The leader marks the replicas of nodes silent for [`LIVENESS_US`] unreachable,
    /// and a restarted node holds its replicas out of service until they serve. Live
    /// nodes do not do this yet; the drill measures what it would change.
    pub mark_silent_nodes: bool,
}

impl Spec {
    pub fn replicas(&self) -> usize {
        self.nodes * self.gpus_per_node
    }

    pub fn host(&self, replica: usize) -> usize {
        replica / self.gpus_per_node.max(1)
    }

    pub fn rack(&self, node: usize) -> usize {
        node % self.racks.max(1)
    }
}

/// What the director does at a point in time.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    /// Take these doors out of the balancer, wait for their requests (up to the
    /// deadline), then kill the nodes; they start again at `heal_us`.
    Kill {
        nodes: Vec<usize>,
        deadline_us: u64,
        heal_after_us: u64,
    },
    /// Kill the leader of the moment (after draining its door).
    KillLeader {
        heal_after_us: u64,
    },
    /// Cut these nodes off from the rest (their doors drained first).
    Cut {
        nodes: Vec<usize>,
        deadline_us: u64,
        heal_after_us: u64,
    },
    HealCut(Vec<usize>),
    Start(Vec<usize>),
    Hang(Vec<usize>),
    Slow(Vec<usize>, f64),
    Unslow(Vec<usize>),
    PoisonStart {
        stop_after_us: u64,
    },
    PoisonStop,
    /// Restart the nodes of `rack` (drained first), then the next rack once its
    /// replicas serve again.
    Roll {
        rack: usize,
        deadline_us: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival(u32),
    Step(u32, u32),
    EngineUp(u32, u32),
    NodeUp(u32),
    /// The door learns that attempt `.1` of request `.0` failed on its replica.
    Cut(u32, u8),
    Second,
    Sample,
    Director,
    Poison,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Power {
    Up,
    Restarting,
    Down,
}

struct Engine {
    core: EngineCore,
    pending: Vec<EngineEvent>,
    stepping: bool,
    power: Power,
    hung: bool,
    epoch: u32,
    tokens_total: u64,
    /// Requests (ledger indices) on it now.
    on: Vec<u32>,
    /// Probes on it: engine id → (prober's probe).
    probes: HashMap<u64, Probe>,
}

struct Node {
    router: RouterCore,
    prober: ProberCore,
    budget: RetryBudget,
    ejected: Ejections,
    /// Writes waiting for a reachable leader.
    outbox: VecDeque<Write>,
    open: bool,
    inflight: u32,
}

#[derive(Debug, Clone)]
struct Req {
    trace: Option<u32>,
    door: u32,
    stream: bool,
    poison: bool,
    sent_us: u64,
    attempt: u8,
    /// Its life at the door's router, once placed.
    life: Option<Lifecycle>,
    started: bool,
    next_token: u32,
    last_us: u64,
    corrupt: bool,
    /// Counted in its door's open requests.
    counted: bool,
    done: Option<(u64, Outcome)>,
}

impl Req {
    /// The replica of its current attempt.
    fn replica(&self) -> usize {
        self.life.map_or(0, |l| l.replica().0 as usize)
    }
}

const PROBE_BIT: u64 = 1 << 63;
const SECOND_US: u64 = 1_000_000;
const SAMPLE_US: u64 = 500_000;
const DIRECTOR_US: u64 = 100_000;
/// The assigner's round period and the gossip freshness, as on a live node.
const ROUND_US: u64 = 60_000_000;
const IMPLICATION_FRESH_MS: u64 = 3_000;
/// A node not heard from for this long is taken for gone (three load reports).
pub const LIVENESS_US: u64 = 3_000_000;
/// The poison client's key and body fingerprint.
pub const POISON_KEY: u64 = 0x706f_6973_6f6e_0001;
const POISON_FINGERPRINT: u64 = 0x706f_6973_6f6e_0002;

pub struct World<'t> {
    spec: Spec,
    trace: &'t Trace,
    engines: Vec<Engine>,
    nodes: Vec<Node>,
    reach: Reach,
    control: Control,
    schedule: Schedule,
    assigner: AssignerConfig,
    leader_load: Option<LoadReport>,
    next_round_us: u64,
    reqs: Vec<Req>,
    /// Ledger indices of requests not answered yet.
    active: Vec<u32>,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    pub now: u64,
    end_us: u64,
    plan: Vec<(u64, Act)>,
    door_rr: usize,
    routed: Vec<u64>,
    failures: u64,
    pub samples: Vec<Sample>,
    last_epochs: Vec<u32>,
    poison_on: bool,
    /// One more try is due after the client was told to stop.
    poison_final: bool,
    poison_waiting: bool,
    pub faults: Vec<String>,
    pub fault_at_us: Option<u64>,
    pub healed_at_us: u64,
    /// The rack a rolling restart is at.
    rolling: Option<usize>,
    /// When the leader last heard from each node, and which leader that was.
    last_heard: Vec<u64>,
    heard_by: Option<usize>,
}

impl<'t> World<'t> {
    pub fn new(spec: Spec, trace: &'t Trace, plan: Vec<(u64, Act)>, end_us: u64) -> Self {
        let n = spec.replicas();
        let registry = registry_of(&spec, &vec![Standing::Serving; n]);
        let assigner = AssignerConfig::default();
        let mut schedule = Schedule::new(
            ScheduleConfig {
                period_us: ROUND_US,
                ..ScheduleConfig::default()
            },
            0,
        );
        let first = next_assignment(None, &registry, false, &mut schedule, || None, 0, &assigner)
            .unwrap_or_else(|| {
                sluice_actors::slice::Assignment::uniform(1, &[ReplicaId(0)], 1, 1)
                    .unwrap_or_else(|e| panic!("a one-slice map is valid: {e}"))
            });
        let voters = voters(&spec);
        let control = Control::new(spec.nodes, voters, n, first, spec.election_us);
        let engines = (0..n)
            .map(|_| Engine {
                core: EngineCore::new(spec.profile.engine.clone()),
                pending: Vec::new(),
                stepping: false,
                power: Power::Up,
                hung: false,
                epoch: 0,
                tokens_total: 0,
                on: Vec::new(),
                probes: HashMap::new(),
            })
            .collect();
        let mut w = Self {
            nodes: Vec::new(),
            reach: Reach::new(spec.nodes),
            control,
            schedule,
            assigner,
            leader_load: None,
            next_round_us: ROUND_US,
            reqs: Vec::new(),
            active: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            end_us,
            plan,
            door_rr: 0,
            routed: vec![0; n],
            failures: 0,
            samples: Vec::new(),
            last_epochs: vec![0; n],
            poison_on: false,
            poison_final: false,
            poison_waiting: false,
            faults: Vec::new(),
            fault_at_us: None,
            healed_at_us: 0,
            rolling: None,
            last_heard: vec![0; spec.nodes],
            heard_by: None,
            engines,
            trace,
            spec,
        };
        w.nodes = (0..w.spec.nodes).map(|i| w.fresh_node(i)).collect();
        // The balancer keeps the doors the drill will take down out of rotation from
        // the start, so that a fault strikes on schedule rather than after the longest
        // request through them: what is measured is the traffic routed to their
        // replicas by every other node.
        let doomed: Vec<usize> = w
            .plan
            .iter()
            .flat_map(|(_, act)| match act {
                Act::Kill { nodes, .. } | Act::Cut { nodes, .. } => nodes.clone(),
                Act::KillLeader { .. } => w.control.leader.into_iter().collect(),
                _ => Vec::new(),
            })
            .collect();
        if doomed.len() < w.nodes.len() {
            for n in doomed {
                w.nodes[n].open = false;
            }
        }
        w
    }

    fn fresh_node(&self, i: usize) -> Node {
        let specs: Vec<ReplicaSpec> = (0..self.spec.replicas())
            .map(|r| ReplicaSpec {
                id: ReplicaId(r as u64),
                capacity_mu_per_min: self.spec.profile.capacity_mu_per_min,
            })
            .collect();
        let mut config = RouterConfig::default();
        if !self.spec.quarantine {
            config.quarantine = QuarantineConfig {
                limit: 0,
                ..config.quarantine
            };
        }
        let router = RouterCore::new(
            self.spec.profile.mu,
            config,
            &specs,
            self.control.assignment.clone(),
        );
        let probe_config = ProbeConfig::default();
        let mut prober = ProberCore::new(probe_config.clone())
            .unwrap_or_else(|e| panic!("the default probe config is valid: {e}"));
        let locals: Vec<ReplicaId> = self.locals(i).map(|r| ReplicaId(r as u64)).collect();
        prober.set_replicas(&locals, self.now / 1000);
        Node {
            router,
            prober,
            budget: RetryBudget::new(&probe_config),
            ejected: Ejections::default(),
            outbox: VecDeque::new(),
            open: true,
            inflight: 0,
        }
    }

    fn locals(&self, node: usize) -> std::ops::Range<usize> {
        let g = self.spec.gpus_per_node;
        node * g..(node + 1) * g
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    /// Runs to the end: load until `end_us`, then until every request is answered and
    /// every replica serves again (at most `grace_us` more).
    pub fn run(&mut self, grace_us: u64) {
        if !self.trace.requests.is_empty() {
            self.push(self.trace.requests[0].arrival_us, Ev::Arrival(0));
        }
        self.push(SECOND_US, Ev::Second);
        self.push(0, Ev::Sample);
        self.push(0, Ev::Director);
        while let Some(Reverse((at, _, ev))) = self.heap.pop() {
            self.now = at;
            if at > self.end_us {
                let settled = self.active.is_empty()
                    && self.engines.iter().all(|e| e.power == Power::Up)
                    && self.plan.is_empty()
                    && !self.poison_on
                    && !self.poison_final
                    && !self.poison_waiting;
                if settled || at > self.end_us + grace_us {
                    // One more look at the settled fleet.
                    self.sample();
                    break;
                }
            }
            match ev {
                Ev::Arrival(i) => self.arrival(i),
                Ev::Step(r, epoch) => self.step_end(r as usize, epoch),
                Ev::EngineUp(r, epoch) => self.engine_up(r as usize, epoch),
                Ev::NodeUp(n) => self.node_up(n as usize),
                Ev::Cut(q, attempt) => self.cut(q, attempt),
                Ev::Second => self.second(),
                Ev::Sample => self.sample(),
                Ev::Director => self.direct(),
                Ev::Poison => self.poison_send(),
            }
        }
        for &q in &std::mem::take(&mut self.active) {
            let r = &mut self.reqs[q as usize];
            if r.done.is_none() {
                r.done = Some((
                    self.now,
                    Outcome::Lost {
                        why: "no answer by the end of the drill".into(),
                    },
                ));
            }
        }
    }

    /// The ledger: ordinary requests and the poison client's, apart.
    pub fn records(&self) -> (Vec<Record>, Vec<Record>) {
        let mut plain = Vec::new();
        let mut poison = Vec::new();
        for (i, r) in self.reqs.iter().enumerate() {
            let (done, outcome) = r.done.clone().unwrap_or((
                self.now,
                Outcome::Lost {
                    why: "never answered".into(),
                },
            ));
            let rec = Record {
                id: i as u64,
                sent_ms: r.sent_us / 1000,
                done_ms: done / 1000,
                node: r.door as usize,
                stream: r.stream,
                outcome,
            };
            if r.poison {
                poison.push(rec);
            } else {
                plain.push(rec);
            }
        }
        (plain, poison)
    }

    /// Every node is up, has applied the whole log, and routes on the committed map.
    pub fn agrees(&self) -> bool {
        (0..self.nodes.len()).all(|n| {
            self.reach.up[n]
                && self.reach.side[n] == 0
                && self.control.applied[n] == self.control.log.len()
                && self.nodes[n].router.assignment() == &self.control.assignment
        })
    }

    /// Replicas the fleet has.
    pub fn full(&self) -> usize {
        self.engines.len()
    }

    // ---- the load --------------------------------------------------------------

    fn arrival(&mut self, i: u32) {
        if let Some(next) = self.trace.requests.get(i as usize + 1) {
            if next.arrival_us <= self.end_us {
                self.push(next.arrival_us, Ev::Arrival(i + 1));
            }
        }
        let stream = splitmix(u64::from(i)) & 1 == 1;
        self.admit(Some(i), stream, false);
    }

    /// A client sends a request through the balancer: to the next open door.
    fn admit(&mut self, trace: Option<u32>, stream: bool, poison: bool) {
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
            last_us: self.now,
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

    fn prompt(&self, q: u32) -> Vec<u32> {
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
            // QUIC idle timeout, and the door cannot tell whether it arrived.
            self.push(self.now + self.spec.peer_timeout_us, Ev::Cut(q, attempt));
            return;
        }
        if self.engines[replica].power != Power::Up {
            // The engine's port refuses the connection: not delivered.
            self.upstream_failure(q, false);
            return;
        }
        let (_, _, output, _) = self.shape(q);
        let prompt = self.prompt(q);
        let id = (u64::from(q) << 8) | u64::from(attempt);
        let e = &mut self.engines[replica];
        match e.core.add_request(
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

    fn kick(&mut self, r: usize) {
        let e = &mut self.engines[r];
        if e.stepping || e.hung || e.power != Power::Up || !e.core.has_work() {
            return;
        }
        let summary = e.core.step_into(self.now, &mut e.pending);
        if summary.duration_us == 0 && e.pending.is_empty() {
            return;
        }
        e.stepping = true;
        let epoch = e.epoch;
        self.push(
            self.now + summary.duration_us.max(1),
            Ev::Step(r as u32, epoch),
        );
    }

    fn step_end(&mut self, r: usize, epoch: u32) {
        let e = &mut self.engines[r];
        if e.epoch != epoch || e.power != Power::Up {
            return;
        }
        e.stepping = false;
        if e.hung {
            // A hung engine never finishes its step: nothing comes out of it.
            e.pending.clear();
            return;
        }
        let mut events = std::mem::take(&mut e.pending);
        for ev in &events {
            match *ev {
                EngineEvent::Token { id, index } => {
                    self.engines[r].tokens_total += 1;
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
        self.engines[r].pending = events;
        self.kick(r);
    }

    fn current(&self, id: u64, r: usize) -> Option<u32> {
        let q = (id >> 8) as u32;
        let req = self.reqs.get(q as usize)?;
        (req.done.is_none() && u64::from(req.attempt) == id & 0xff && req.replica() == r)
            .then_some(q)
    }

    fn token(&mut self, r: usize, id: u64, index: u32) {
        let Some(q) = self.current(id, r) else {
            return;
        };
        let req = &mut self.reqs[q as usize];
        if index != req.next_token {
            req.corrupt = true;
        }
        req.next_token = index + 1;
        req.started = true;
        req.last_us = self.now;
        if index % 16 == 15 {
            if let Some(life) = req.life {
                let door = req.door as usize;
                self.nodes[door].router.progress(life.id(), index + 1);
            }
        }
    }

    fn finished(&mut self, r: usize, id: u64, usage: sluice_engine::core::Usage) {
        let Some(q) = self.current(id, r) else {
            return;
        };
        self.detach(q, r);
        let req = &self.reqs[q as usize];
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
        let usage = Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage.cached_tokens,
        };
        self.answered(q, r, 200, Some(usage), outcome);
    }

    /// Replica `r` answered `q` with HTTP `status`: its door's router and prober hear
    /// of it as a live door's do.
    fn answered(&mut self, q: u32, r: usize, status: u16, usage: Option<Usage>, outcome: Outcome) {
        let now_ms = self.now / 1000;
        let door = self.reqs[q as usize].door as usize;
        self.with_life(q, |life, node| life.finish(&mut node.router, usage));
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

    /// Carries out what the lifecycle decided after an attempt of `q` failed.
    fn next(&mut self, q: u32, next: Option<Next>) {
        match next {
            Some(Next::Retry(p)) => {
                let req = &mut self.reqs[q as usize];
                req.attempt = req.attempt.wrapping_add(1);
                self.dispatch(q, p.replica.0 as usize);
            }
            Some(Next::Fail(f)) => self.answer(q, failed(f)),
            // Only a placed request has attempts that can fail.
            None => {}
        }
    }

    fn detach(&mut self, q: u32, r: usize) {
        let on = &mut self.engines[r].on;
        if let Some(k) = on.iter().position(|&x| x == q) {
            on.swap_remove(k);
        }
    }

    /// The request's attempt failed before any answer reached the client.
    fn upstream_failure(&mut self, q: u32, delivered: bool) {
        self.failures += 1;
        let now_ms = self.now / 1000;
        let next = self.with_life(q, |life, node| {
            life.failed_before_answer(delivered, &mut node.router, &mut node.budget, now_ms)
        });
        self.next(q, next);
    }

    /// The attempt broke after the replica took it: a stream already started ends
    /// with an error event; otherwise the door may retry.
    fn cut(&mut self, q: u32, attempt: u8) {
        let req = &self.reqs[q as usize];
        if req.done.is_some() || req.attempt != attempt {
            return;
        }
        let (replica, started) = (req.replica(), req.started);
        self.detach(q, replica);
        self.failures += 1;
        let now_ms = self.now / 1000;
        let next = self.with_life(q, |life, node| {
            life.lost(started, &mut node.router, &mut node.budget, now_ms)
        });
        self.next(q, next);
    }

    fn answer(&mut self, q: u32, outcome: Outcome) {
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

    // ---- once a second: probes, timeouts, gossip, control ------------------------

    fn second(&mut self) {
        self.push(self.now + SECOND_US, Ev::Second);
        let now_ms = self.now / 1000;
        self.timeouts();
        // The prober on every node over its local replicas.
        for n in 0..self.nodes.len() {
            if !self.reach.up[n] {
                continue;
            }
            for r in self.locals(n) {
                let e = &self.engines[r];
                if e.power != Power::Up {
                    continue;
                }
                let s = e.core.stats();
                let (queued, tokens) = (s.running + s.waiting, e.tokens_total);
                let changes =
                    self.nodes[n]
                        .prober
                        .on_progress(ReplicaId(r as u64), queued, tokens, now_ms);
                self.verdicts(n, changes);
            }
            let tick = self.nodes[n].prober.tick(now_ms);
            self.verdicts(n, tick.changes);
            for p in tick.probes {
                self.send_probe(n, p);
            }
        }
        self.gossip();
        self.control_step();
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
        match self.engines[r].core.add_request(req, self.now) {
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

    fn probe_result(&mut self, r: usize, p: Probe, ok: bool) {
        let n = self.spec.host(r);
        if !ok {
            self.failures += 1;
        }
        let changes = self.nodes[n].prober.on_probe_result(p, ok, self.now / 1000);
        self.verdicts(n, changes);
    }

    /// Carries out the prober's verdicts on node `n`: an ejected replica leaves this
    /// router, is marked unhealthy in the registry and restarted by the supervisor.
    fn verdicts(&mut self, n: usize, changes: Vec<VerdictChange>) {
        if changes.is_empty() {
            return;
        }
        let effects = self.nodes[n].ejected.apply(changes);
        self.carry_out(n, effects);
        self.flush(n);
    }

    /// Node `n`'s part in its prober's effects: only an ejection asks for anything
    /// (a restore or a kept replica changes nothing here).
    fn carry_out(&mut self, n: usize, effects: Vec<Effect>) {
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

    /// Proposes `n`'s waiting writes while a leader takes them; what commits is applied
    /// on every node that hears from the leader.
    fn flush(&mut self, n: usize) {
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
    fn apply_everywhere(&mut self) {
        for n in 0..self.nodes.len() {
            if let Some(range) = self.control.catch_up(n, &self.reach) {
                self.apply(n, range);
            }
        }
    }

    fn apply(&mut self, n: usize, range: std::ops::Range<usize>) {
        for k in range {
            match &self.control.log[k] {
                Write::Health { replica, standing } => self.nodes[n]
                    .router
                    .set_checked_health(ReplicaId(*replica as u64), *standing == Standing::Serving),
                Write::Assignment(a) => self.nodes[n].router.set_assignment(a.clone()),
            }
        }
    }

    /// Engine `r` goes down and starts again `after_us` later (a supervisor restart,
    /// or its node's return); what it held fails.
    fn restart_engine(&mut self, r: usize, after_us: u64) {
        self.engine_down(r, Power::Restarting, 0);
        let epoch = self.engines[r].epoch;
        self.push(self.now + after_us, Ev::EngineUp(r as u32, epoch));
    }

    /// Engine `r` stops; its requests' doors hear of it after `notice_us`.
    fn engine_down(&mut self, r: usize, power: Power, notice_us: u64) {
        let e = &mut self.engines[r];
        e.power = power;
        e.epoch += 1;
        e.stepping = false;
        e.hung = false;
        e.pending.clear();
        e.probes.clear();
        e.core = EngineCore::new(self.spec.profile.engine.clone());
        for q in std::mem::take(&mut e.on) {
            let attempt = self.reqs[q as usize].attempt;
            self.push(self.now + notice_us, Ev::Cut(q, attempt));
        }
    }

    fn engine_up(&mut self, r: usize, epoch: u32) {
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

    /// Timeouts at the doors: a stream silent past the idle timeout, a request past
    /// its deadline. Both end with an explicit error and count against the replica.
    fn timeouts(&mut self) {
        let mut expired = Vec::new();
        self.active.retain(|&q| {
            let r = &self.reqs[q as usize];
            if r.done.is_some() {
                return false;
            }
            if (r.started && self.now.saturating_sub(r.last_us) > self.spec.stream_idle_us)
                || self.now.saturating_sub(r.sent_us) > self.spec.request_timeout_us
            {
                expired.push(q);
            }
            true
        });
        let now_ms = self.now / 1000;
        for q in expired {
            let replica = self.reqs[q as usize].replica();
            self.detach(q, replica);
            let id = (u64::from(q) << 8) | u64::from(self.reqs[q as usize].attempt);
            self.engines[replica].core.abort(RequestId(id));
            self.failures += 1;
            let fail = self.with_life(q, |life, node| {
                life.failed_holding(Broke::Deadline, &mut node.router, now_ms)
            });
            self.answer(q, failed(fail.unwrap_or(Fail::Timeout)));
        }
    }

    fn gossip(&mut self) {
        let now_ms = self.now / 1000;
        // Load every router has in flight, summed per partition side.
        let mut totals: [HashMap<ReplicaId, (f64, u64)>; 2] = Default::default();
        let mut implications: [Vec<sluice_actors::router::Implication>; 2] = Default::default();
        let mut own = Vec::with_capacity(self.nodes.len());
        for n in 0..self.nodes.len() {
            if !self.reach.up[n] {
                own.push(Vec::new());
                continue;
            }
            let side = usize::from(self.reach.side[n].min(1));
            let loads = self.nodes[n].router.own_load();
            for &(id, mu, k) in &loads {
                let t = totals[side].entry(id).or_insert((0.0, 0));
                t.0 += mu;
                t.1 += k;
            }
            own.push(loads);
            implications[side].extend(
                self.nodes[n]
                    .router
                    .implications(now_ms, IMPLICATION_FRESH_MS),
            );
        }
        for (n, loads) in own.iter().enumerate() {
            if !self.reach.up[n] {
                continue;
            }
            let side = usize::from(self.reach.side[n].min(1));
            let mine: HashMap<ReplicaId, (f64, u64)> =
                loads.iter().map(|&(id, mu, k)| (id, (mu, k))).collect();
            let others = totals[side].iter().map(|(&id, &(mu, k))| {
                let (m, c) = mine.get(&id).copied().unwrap_or((0.0, 0));
                (id, (mu - m).max(0.0), k.saturating_sub(c))
            });
            let router = &mut self.nodes[n].router;
            router.set_external_load(others);
            router.merge_implications(&implications[side], now_ms);
        }
    }

    fn control_step(&mut self) {
        self.control.tick(self.now, &self.reach);
        let Some(leader) = self.control.leader else {
            return;
        };
        if self.heard_by != Some(leader) {
            // A new leader gives every node a full window before judging it.
            self.heard_by = Some(leader);
            self.last_heard.iter_mut().for_each(|t| *t = self.now);
        }
        // Load reports reach the leader from the nodes that can reach it.
        for n in 0..self.nodes.len() {
            if !self.reach.can(n, leader) {
                continue;
            }
            self.last_heard[n] = self.now;
            let report = self.nodes[n].router.take_load(self.now);
            LoadReport::accumulate(&mut self.leader_load, &report);
        }
        for n in 0..self.nodes.len() {
            if self.reach.up[n] {
                self.flush(n);
            }
        }
        // Nodes silent for the liveness window lose their replicas in the registry.
        let g = self.spec.gpus_per_node.max(1);
        let marking = self.spec.mark_silent_nodes;
        let heard = |n: u64| self.now.saturating_sub(self.last_heard[n as usize]) <= LIVENESS_US;
        let marks = liveness_marks(
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

    // ---- what the watcher sees ---------------------------------------------------

    fn sample(&mut self) {
        self.push(self.now + SAMPLE_US, Ev::Sample);
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for r in 0..self.engines.len() {
            let e = &self.engines[r];
            let healthy = self.control.health[r] == Standing::Serving;
            if !healthy {
                dead.push(r as u64);
            }
            if !healthy || e.power != Power::Up || e.epoch != self.last_epochs[r] {
                out.push(r as u64);
            }
            self.last_epochs[r] = e.epoch;
        }
        let slices = if self.spec.keep_slices {
            self.control
                .assignment
                .slices()
                .iter()
                .map(|s| (s.start.0, s.subset.iter().map(|x| x.0).collect()))
                .collect()
        } else {
            Vec::new()
        };
        self.samples.push(Sample {
            at_ms: self.now / 1000,
            in_service: self.engines.len() - out.len(),
            out,
            dead,
            generation: self.control.assignment.generation,
            slices,
            routed: self
                .routed
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(r, &c)| (r as u64, c))
                .collect::<BTreeMap<_, _>>(),
            failures: self.failures,
        });
    }

    // ---- the faults ----------------------------------------------------------------

    fn direct(&mut self) {
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

    fn later(&mut self, after_us: u64, act: Act) {
        self.plan.push((self.now + after_us, act));
    }

    fn struck(&mut self, what: String) {
        self.fault_at_us.get_or_insert(self.now);
        self.faults
            .push(format!("{:.1} s: {what}", self.now as f64 / 1e6));
    }

    fn healed(&mut self, what: String) {
        self.healed_at_us = self.now;
        self.faults
            .push(format!("{:.1} s: {what}", self.now as f64 / 1e6));
    }

    /// Doors of `nodes` out of the balancer; whether their requests are all answered.
    fn drained(&mut self, nodes: &[usize]) -> bool {
        for &n in nodes {
            self.nodes[n].open = false;
        }
        nodes.iter().all(|&n| self.nodes[n].inflight == 0)
    }

    fn act(&mut self, at: u64, act: Act) {
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
                        self.push(self.now + self.spec.peer_timeout_us, Ev::Cut(q, attempt));
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
                    self.engines[r].core.set_slowdown(factor);
                }
                self.struck(format!(
                    "{} replica(s) {} {factor}× slower",
                    replicas.len(),
                    short(&replicas)
                ));
            }
            Act::Unslow(replicas) => {
                for &r in &replicas {
                    self.engines[r].core.set_slowdown(1.0);
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
            // Doors elsewhere hear nothing until their connections time out.
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

    fn node_up(&mut self, n: usize) {
        self.reach.up[n] = true;
        self.nodes[n] = self.fresh_node(n);
        self.nodes[n].open = true;
        // It replays its own durable log first, then catches up from the leader.
        self.apply(n, 0..self.control.applied[n]);
        self.apply_everywhere();
        for r in self.locals(n) {
            if self.spec.mark_silent_nodes {
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
    fn poison_send(&mut self) {
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

/// The registry as the assigner sees it: replicas in service are those `health` calls
/// serving.
fn registry_of(spec: &Spec, health: &[Standing]) -> Vec<ReplicaInfo> {
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
fn voters(spec: &Spec) -> Vec<usize> {
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

/// What the client saw of a request the lifecycle failed, as the ledger records it.
fn failed(f: Fail) -> Outcome {
    let why = match f {
        Fail::CutOff => "the answer was cut off (error event)".into(),
        _ => format!("HTTP {} {}", f.status(), f.code().unwrap_or(f.error_type())),
    };
    Outcome::Explicit { why }
}

fn short(items: &[usize]) -> String {
    if items.len() <= 8 {
        format!("{items:?}")
    } else {
        format!("[{}, {}, … {}]", items[0], items[1], items[items.len() - 1])
    }
}
