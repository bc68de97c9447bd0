//! The virtual fleet in discrete-event time: every node runs the live node's policy
//! cores — the router core (choice, passive health, quarantine), the request lifecycle
//! with its retry rule and budget, the prober core and its verdicts' effects, and the
//! leader's assigner step — over engine-model replicas in the simulator's event loop
//! (`sluice_sim::des`), and the shells' parts are played
//! with the live timings by the sibling modules (`requests`, `engines`, `probes`,
//! `cluster`, `faults`, `samples`). This one holds the fleet's state and the event loop
//! that hands each event to them; the ledger and the samples are the ones the process
//! drills judge.

use super::cluster::{registry_of, voters};
use super::control::{Control, Reach, Write};
use super::spec::{Act, Spec};
use crate::drill::ledger::{Outcome, Record};
use crate::drill::watch::Sample;
use sluice_actors::assigner::{
    next_assignment, AssignerConfig, LoadReport, Schedule, ScheduleConfig,
};
use sluice_actors::lifecycle::{Lifecycle, MigrationBudget, MigrationLimits};
use sluice_actors::prober::{
    Ejections, LivenessWatch, Probe, ProbeConfig, ProberCore, RetryBudget, Standing,
};
use sluice_actors::router::{
    QuarantineConfig, ReplicaSpec, RouterConfig, RouterCore, LOAD_SHARE_MS,
};
use sluice_actors::slice::ReplicaId;
use sluice_engine::core::EngineEvent;
use sluice_sim::des::{self, Model, Queue, VirtualEngine};
use sluice_sim::trace::Trace;
use std::collections::{HashMap, VecDeque};

/// What happens at a point in virtual time; ties are broken by the order of scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ev {
    Arrival(u32),
    Step(u32, u32),
    EngineUp(u32, u32),
    NodeUp(u32),
    /// The door learns that attempt `.1` of request `.0` failed on its replica.
    Cut(u32, u8),
    /// The door takes the node serving attempt `.1` of request `.0` for gone (its
    /// silence outlasted the peer timeout).
    NodeLost(u32, u8),
    Second,
    /// The routers share their load and words, as live nodes do every
    /// [`LOAD_SHARE_MS`].
    Gossip,
    Sample,
    Director,
    Poison,
}

/// Whether an engine serves, is starting again, or died with its node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Power {
    Up,
    Restarting,
    Down,
}

/// One replica: the engine model and what the loop tracks of it.
pub(super) struct Engine {
    pub(super) engine: VirtualEngine,
    pub(super) power: Power,
    pub(super) hung: bool,
    pub(super) epoch: u32,
    /// Time spent computing steps (µs): the virtual engine's busy time, which the live
    /// prober reads from an engine's processes. A hung engine starts no step, so it
    /// stands still.
    pub(super) busy_us: u64,
    /// Requests (ledger indices) on it now.
    pub(super) on: Vec<u32>,
    /// Probes on it: engine id → (prober's probe).
    pub(super) probes: HashMap<u64, Probe>,
}

/// One node's policy cores and its door's state.
pub(super) struct Node {
    pub(super) router: RouterCore,
    pub(super) prober: ProberCore,
    pub(super) budget: RetryBudget,
    pub(super) migrations: MigrationBudget,
    pub(super) ejected: Ejections,
    /// Writes waiting for a reachable leader.
    pub(super) outbox: VecDeque<Write>,
    pub(super) open: bool,
    pub(super) inflight: u32,
    /// When this node last heard each node's router (gossip, or a load report while it
    /// leads); 0: not since it started. What its liveness marks go by when it leads.
    pub(super) heard: Vec<u64>,
    /// When this node (re)started: it has heard nobody from before then.
    pub(super) started_us: u64,
}

/// One client request as the ledger follows it.
#[derive(Debug, Clone)]
pub(super) struct Req {
    pub(super) trace: Option<u32>,
    pub(super) door: u32,
    pub(super) stream: bool,
    pub(super) poison: bool,
    pub(super) sent_us: u64,
    pub(super) attempt: u8,
    /// Its life at the door's router, once placed.
    pub(super) life: Option<Lifecycle>,
    pub(super) started: bool,
    pub(super) next_token: u32,
    /// Tokens the client had received when the current attempt began (a continuation
    /// on another replica, after its first one failed mid-stream).
    pub(super) resumed: u32,
    pub(super) last_us: u64,
    /// When a stream's first token reached the client.
    pub(super) first_us: Option<u64>,
    pub(super) corrupt: bool,
    /// Counted in its door's open requests.
    pub(super) counted: bool,
    pub(super) done: Option<(u64, Outcome)>,
}

impl Req {
    /// The replica of its current attempt.
    pub(super) fn replica(&self) -> usize {
        self.life.map_or(0, |l| l.replica().0 as usize)
    }
}

/// The engine's id for attempt `attempt` of request `q` (read back by `World::current`).
pub(super) fn attempt_id(q: u32, attempt: u8) -> u64 {
    (u64::from(q) << 8) | u64::from(attempt)
}

pub(super) const PROBE_BIT: u64 = 1 << 63;
pub(super) const SECOND_US: u64 = 1_000_000;
pub(super) const SAMPLE_US: u64 = 500_000;
pub(super) const DIRECTOR_US: u64 = 100_000;
/// The assigner's round period and the gossip freshness, as on a live node.
pub(super) const ROUND_US: u64 = 60_000_000;
/// A node not heard from for this long is taken for gone (the live leader's window over
/// its routers' gossip).
pub const LIVENESS_US: u64 = LivenessWatch::window_us(LOAD_SHARE_MS * 1000);
/// The poison client's key and body fingerprint.
pub const POISON_KEY: u64 = 0x706f_6973_6f6e_0001;
pub(super) const POISON_FINGERPRINT: u64 = 0x706f_6973_6f6e_0002;

/// The whole virtual fleet, its load and its faults, at virtual time `now`.
pub struct World<'t> {
    pub(super) spec: Spec,
    pub(super) trace: &'t Trace,
    pub(super) engines: Vec<Engine>,
    pub(super) nodes: Vec<Node>,
    pub(super) reach: Reach,
    pub(super) control: Control,
    pub(super) schedule: Schedule,
    pub(super) assigner: AssignerConfig,
    pub(super) leader_load: Option<LoadReport>,
    pub(super) next_round_us: u64,
    pub(super) reqs: Vec<Req>,
    /// Ledger indices of requests not answered yet.
    pub(super) active: Vec<u32>,
    queue: Queue<Ev>,
    /// A step's events, while they are handed out (its allocation kept).
    pub(super) delivered: Vec<EngineEvent>,
    pub now: u64,
    pub(super) end_us: u64,
    /// How long past `end_us` the run may go on settling.
    grace_us: u64,
    pub(super) plan: Vec<(u64, Act)>,
    pub(super) door_rr: usize,
    pub(super) routed: Vec<u64>,
    pub(super) failures: u64,
    /// Streams continued on another replica after theirs failed mid-answer.
    pub(super) migrations: u64,
    pub samples: Vec<Sample>,
    pub(super) last_epochs: Vec<u32>,
    pub(super) poison_on: bool,
    /// One more try is due after the client was told to stop.
    pub(super) poison_final: bool,
    pub(super) poison_waiting: bool,
    pub faults: Vec<String>,
    pub fault_at_us: Option<u64>,
    pub healed_at_us: u64,
    /// The rack a rolling restart is at.
    pub(super) rolling: Option<usize>,
}

/// The world as the event loop drives it (its events stay private to the drill).
struct Drive<'w, 't>(&'w mut World<'t>);

impl Model for Drive<'_, '_> {
    type Event = Ev;

    fn queue(&mut self) -> &mut Queue<Ev> {
        &mut self.0.queue
    }

    /// Past the load's end, the run stops once every request is answered and every
    /// replica serves again, or when the grace runs out.
    fn ends_before(&mut self, at: u64) -> bool {
        let w = &mut *self.0;
        w.now = at;
        if at <= w.end_us {
            return false;
        }
        let settled = w.active.is_empty()
            && w.engines.iter().all(|e| e.power == Power::Up)
            && w.plan.is_empty()
            && !w.poison_on
            && !w.poison_final
            && !w.poison_waiting;
        if settled || at > w.end_us + w.grace_us {
            // One more look at the settled fleet.
            w.sample();
            return true;
        }
        false
    }

    fn handle(&mut self, _at: u64, ev: Ev) {
        let w = &mut *self.0;
        match ev {
            Ev::Arrival(i) => w.arrival(i),
            Ev::Step(r, epoch) => w.step_end(r as usize, epoch),
            Ev::EngineUp(r, epoch) => w.engine_up(r as usize, epoch),
            Ev::NodeUp(n) => w.node_up(n as usize),
            Ev::Cut(q, attempt) => w.cut(q, attempt, false),
            Ev::NodeLost(q, attempt) => w.cut(q, attempt, true),
            Ev::Second => w.second(),
            Ev::Gossip => {
                w.push(w.now + LOAD_SHARE_MS * 1000, Ev::Gossip);
                w.gossip();
            }
            Ev::Sample => w.sample(),
            Ev::Director => w.direct(),
            Ev::Poison => w.poison_send(),
        }
    }
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
                engine: VirtualEngine::new(spec.profile.engine.clone()),
                power: Power::Up,
                hung: false,
                epoch: 0,
                busy_us: 0,
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
            queue: Queue::default(),
            delivered: Vec::new(),
            now: 0,
            end_us,
            grace_us: 0,
            plan,
            door_rr: 0,
            routed: vec![0; n],
            failures: 0,
            migrations: 0,
            samples: Vec::new(),
            last_epochs: vec![0; n],
            poison_on: false,
            poison_final: false,
            poison_waiting: false,
            faults: Vec::new(),
            fault_at_us: None,
            healed_at_us: 0,
            rolling: None,
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

    pub(super) fn fresh_node(&self, i: usize) -> Node {
        let specs: Vec<ReplicaSpec> = (0..self.spec.replicas())
            .map(|r| ReplicaSpec {
                id: ReplicaId(r as u64),
                capacity_mu_per_min: self.spec.profile.capacity_mu_per_min,
                host: self.spec.host(r) as u64,
                rack: self.spec.rack(self.spec.host(r)) as u64,
            })
            .collect();
        let mut config = RouterConfig::default();
        if !self.spec.quarantine {
            config.quarantine = QuarantineConfig {
                limit: 0,
                ..config.quarantine
            };
        }
        let mut router = RouterCore::new(
            self.spec.profile.mu,
            config,
            &specs,
            self.control.assignment.clone(),
        );
        // Each door breaks ties in its own order, as each live node does.
        router.spread_ties(i as u64 + 1);
        let probe_config = ProbeConfig::default();
        let mut prober = ProberCore::new(probe_config.clone())
            .unwrap_or_else(|e| panic!("the default probe config is valid: {e}"));
        let locals: Vec<ReplicaId> = self.locals(i).map(|r| ReplicaId(r as u64)).collect();
        prober.set_replicas(&locals, self.now / 1000);
        Node {
            router,
            prober,
            budget: RetryBudget::new(&probe_config),
            migrations: MigrationBudget::new(MigrationLimits::default()),
            ejected: Ejections::default(),
            outbox: VecDeque::new(),
            open: true,
            inflight: 0,
            heard: vec![0; self.spec.nodes],
            started_us: self.now,
        }
    }

    pub(super) fn locals(&self, node: usize) -> std::ops::Range<usize> {
        let g = self.spec.gpus_per_node;
        node * g..(node + 1) * g
    }

    pub(super) fn push(&mut self, at: u64, ev: Ev) {
        self.queue.push(at, ev);
    }

    /// Runs to the end: load until `end_us`, then until every request is answered and
    /// every replica serves again (at most `grace_us` more).
    pub fn run(&mut self, grace_us: u64) {
        if !self.trace.requests.is_empty() {
            self.push(self.trace.requests[0].arrival_us, Ev::Arrival(0));
        }
        self.push(SECOND_US, Ev::Second);
        self.push(LOAD_SHARE_MS * 1000, Ev::Gossip);
        self.push(0, Ev::Sample);
        self.push(0, Ev::Director);
        self.grace_us = grace_us;
        des::run(&mut Drive(self));
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
                model: crate::drill::load::MODEL,
                stream: r.stream,
                outcome,
                first_ms: r.first_us.map(|us| us / 1000),
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

    /// Once a second: the doors' timeouts, the probers and the control plane.
    fn second(&mut self) {
        self.push(self.now + SECOND_US, Ev::Second);
        self.timeouts();
        self.probe_round();
        self.control_step();
    }
}
