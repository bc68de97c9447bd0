//! `sluice sim`'s model for the discrete-event loop (`des`): arrivals from a trace,
//! routed by a policy onto a fleet of engine models stepping in virtual time. The engine
//! core and the policy are the same code the live node runs; only the clock is virtual.

use super::outcome::{summarize, PolicyReport, RequestRecord, Slo};
use super::scaling::{self, counts, promote, Power, ScalePoint, Scaling, TickLoad};
use crate::des::{self, Model, Queue, VirtualEngine};
use crate::trace::Trace;
use sluice_actors::mu::RequestShape;
use sluice_actors::router::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy, Usage};
use sluice_actors::slice::{ReplicaId, SliceKey};
use sluice_engine::core::{EngineEvent, EngineRequest, RequestId};
use sluice_engine::EngineParams;

/// The simulated fleet: identical replicas spread round-robin over racks.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub replicas: usize,
    pub racks: usize,
    pub params: EngineParams,
    pub capacity_mu_per_min: f64,
}

impl FleetSpec {
    pub fn rack_of(&self, replica: usize) -> usize {
        replica % self.racks.max(1)
    }
}

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub slo: Slo,
    /// How often per-replica load is sampled (imbalance, timelines).
    pub sample_every_us: u64,
    /// Keep the per-replica load samples (for plots).
    pub keep_timeline: bool,
    /// Tell policies each request's true output length as `max_tokens` (clients that
    /// set it tightly); by default they see none, as with most chat clients.
    pub exact_max_tokens: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            slo: Slo::default(),
            sample_every_us: 1_000_000,
            keep_timeline: false,
            exact_max_tokens: false,
        }
    }
}

/// Per-replica outstanding requests at one sample time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at_us: u64,
    pub outstanding: Vec<u32>,
}

/// A run's results.
#[derive(Debug, Clone)]
pub struct SimRun {
    pub report: PolicyReport,
    pub records: Vec<RequestRecord>,
    pub timeline: Vec<Sample>,
    /// Discrete events processed (arrivals, step ends and autoscaler ticks).
    pub events: u64,
    /// The autoscaler's ticks (empty for a fixed fleet).
    pub scale: Vec<ScalePoint>,
}

/// The engines' real prefix caches, read by KV-event-driven policies.
struct FleetKv<'a> {
    replicas: &'a [VirtualEngine],
    block_size: u32,
}

impl KvIndex for FleetKv<'_> {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn overlap_blocks(&self, replica: ReplicaId, prompt: &[u32]) -> u32 {
        self.replicas
            .get(replica.0 as usize)
            .map_or(0, |r| r.core.cached_prefix_blocks(prompt))
    }
}

/// Replays `trace` over `fleet`, routing with `policy`.
pub fn simulate(
    trace: &Trace,
    fleet: &FleetSpec,
    policy: &mut dyn RoutingPolicy,
    opts: &SimOptions,
) -> SimRun {
    simulate_scaled(trace, fleet, policy, None, opts)
}

/// What happens at a point of a run's virtual time. At one time a load sample comes
/// first, then an arrival, then steps ending (by replica), then the autoscaler's tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Sample,
    Arrival(u32),
    Step(u32),
    Tick,
}

impl Ev {
    fn rank(self) -> u64 {
        match self {
            Ev::Sample => 0,
            Ev::Arrival(_) => 1,
            Ev::Step(r) => 2 + u64::from(r),
            Ev::Tick => u64::MAX,
        }
    }
}

/// One replay in progress: the fleet, the policy, and what is measured.
struct Replay<'a> {
    trace: &'a Trace,
    fleet: &'a FleetSpec,
    policy: &'a mut dyn RoutingPolicy,
    scaling: Option<&'a mut Scaling>,
    opts: &'a SimOptions,
    queue: Queue<Ev>,
    /// Arrivals and step ends still to come: the run ends when none are.
    work: usize,
    replicas: Vec<VirtualEngine>,
    obs: Vec<ReplicaObservation>,
    power: Vec<Power>,
    /// First-token time of each request, by trace index.
    first_token: Vec<Option<u64>>,
    records: Vec<RequestRecord>,
    rejected: u64,
    events: u64,
    timeline: Vec<Sample>,
    imbalance_sum: f64,
    imbalance_samples: u64,
    last_us: u64,
    delivered: Vec<EngineEvent>,
    tick_mu: f64,
    tick_arrivals: u64,
    billed_us: u64,
    billed_since: u64,
    scale_points: Vec<ScalePoint>,
}

/// Replays `trace` with `fleet.replicas` as the most replicas there can be, switched on
/// and off by `scaling`'s autoscaler (all of them on, always, without one). GPU seconds
/// count every replica from the moment it is requested until it is released.
pub fn simulate_scaled(
    trace: &Trace,
    fleet: &FleetSpec,
    policy: &mut dyn RoutingPolicy,
    scaling: Option<&mut Scaling>,
    opts: &SimOptions,
) -> SimRun {
    let power = match &scaling {
        Some(sc) => (0..fleet.replicas)
            .map(|i| {
                if i < sc.initial {
                    Power::Ready
                } else {
                    Power::Off
                }
            })
            .collect(),
        None => vec![Power::Ready; fleet.replicas],
    };
    let obs = (0..fleet.replicas)
        .map(|i| ReplicaObservation {
            id: ReplicaId(i as u64),
            healthy: power[i] == Power::Ready,
            capacity_mu_per_min: fleet.capacity_mu_per_min,
            active_requests: 0,
            waiting: 0,
            kv_usage: 0.0,
        })
        .collect();
    let start_us = trace.requests.first().map_or(0, |r| r.arrival_us);
    let mut queue = Queue::default();
    let mut work = 0;
    if let Some(first) = trace.requests.first() {
        queue.push_ranked(first.arrival_us, Ev::Arrival(0).rank(), Ev::Arrival(0));
        work += 1;
    }
    queue.push_ranked(start_us, Ev::Sample.rank(), Ev::Sample);
    if let Some(sc) = &scaling {
        queue.push_ranked(start_us + sc.tick_us.max(1), Ev::Tick.rank(), Ev::Tick);
    }
    let mut replay = Replay {
        trace,
        fleet,
        policy,
        scaling,
        opts,
        queue,
        work,
        replicas: (0..fleet.replicas)
            .map(|_| VirtualEngine::new(fleet.params.clone()))
            .collect(),
        obs,
        power,
        first_token: vec![None; trace.requests.len()],
        records: Vec::with_capacity(trace.requests.len()),
        rejected: 0,
        events: 0,
        timeline: Vec::new(),
        imbalance_sum: 0.0,
        imbalance_samples: 0,
        last_us: start_us,
        delivered: Vec::new(),
        tick_mu: 0.0,
        tick_arrivals: 0,
        billed_us: 0,
        billed_since: start_us,
        scale_points: Vec::new(),
    };
    des::run(&mut replay);
    replay.finish(start_us)
}

impl Model for Replay<'_> {
    type Event = Ev;

    fn queue(&mut self) -> &mut Queue<Ev> {
        &mut self.queue
    }

    /// The load is replayed and every request has left its replica; samples and ticks
    /// alone do not keep the run going.
    fn ends_before(&mut self, _at: u64) -> bool {
        self.work == 0
    }

    fn handle(&mut self, now: u64, ev: Ev) {
        match ev {
            Ev::Sample => self.sample(now),
            Ev::Tick => self.tick(now),
            Ev::Arrival(i) => {
                self.work -= 1;
                self.events += 1;
                self.last_us = now;
                self.arrival(i as usize, now);
            }
            Ev::Step(r) => {
                self.work -= 1;
                self.events += 1;
                self.last_us = now;
                self.step_end(r as usize, now);
            }
        }
    }
}

impl Replay<'_> {
    fn sample(&mut self, now: u64) {
        let (imb, sample) = sample_load(&self.obs, now, self.opts.keep_timeline);
        if let Some(i) = imb {
            self.imbalance_sum += i;
            self.imbalance_samples += 1;
        }
        self.timeline.extend(sample);
        let next = now + self.opts.sample_every_us.max(1);
        self.queue.push_ranked(next, Ev::Sample.rank(), Ev::Sample);
    }

    /// An autoscaler tick: the leader's scaling step over the fleet's last tick.
    fn tick(&mut self, t: u64) {
        let Some(sc) = self.scaling.as_deref_mut() else {
            return;
        };
        self.events += 1;
        let on = self.power.iter().filter(|p| p.billed()).count() as u64;
        self.billed_us += on * (t - self.billed_since);
        self.billed_since = t;
        promote(&mut self.power, t);
        for (i, p) in self.power.iter_mut().enumerate() {
            if *p == Power::Draining
                && !self.replicas[i].stepping()
                && !self.replicas[i].core.has_work()
            {
                *p = Power::Off;
            }
        }
        let tick_s = sc.tick_us.max(1) as f64 / 1e6;
        let load = TickLoad {
            mu_per_min: self.tick_mu * 60.0 / tick_s,
            in_flight_requests: self.obs.iter().map(|o| f64::from(o.active_requests)).sum(),
            requests_per_s: self.tick_arrivals as f64 / tick_s,
            capacity_mu_per_min: self.fleet.capacity_mu_per_min,
        };
        let work: Vec<u32> = self.obs.iter().map(|o| o.active_requests).collect();
        let fleet = self.fleet;
        let rack_of = |i: usize| fleet.rack_of(i);
        let (desired, started) = scaling::tick(
            &mut sc.leader,
            &mut self.power,
            load,
            sc.bounds,
            &rack_of,
            &work,
            t,
            sc.cold_start_us,
        );
        for i in started {
            // A new engine: its prefix cache starts empty.
            self.replicas[i].restart(fleet.params.clone());
        }
        for (o, p) in self.obs.iter_mut().zip(&self.power) {
            o.healthy = *p == Power::Ready;
        }
        let (ready, starting) = counts(&self.power);
        self.scale_points.push(ScalePoint {
            at_us: t,
            desired,
            ready,
            starting,
            mu_per_min: load.mu_per_min,
        });
        self.tick_mu = 0.0;
        self.tick_arrivals = 0;
        let next = t + sc.tick_us.max(1);
        self.queue.push_ranked(next, Ev::Tick.rank(), Ev::Tick);
    }

    /// A step ends: deliver its events, then start the next one.
    fn step_end(&mut self, r: usize, now: u64) {
        self.replicas[r].end_step(&mut self.delivered);
        for ev in self.delivered.drain(..) {
            match ev {
                EngineEvent::Token { id, index } => {
                    self.first_token[id.0 as usize].get_or_insert(now);
                    self.policy.on_progress(id.0, index + 1, now);
                }
                EngineEvent::Finished { id, usage, .. } => {
                    let req = &self.trace.requests[id.0 as usize];
                    self.records.push(RequestRecord {
                        arrival_us: req.arrival_us,
                        first_token_us: self.first_token[id.0 as usize].unwrap_or(now),
                        finish_us: now,
                        output_tokens: usage.completion_tokens,
                        prompt_tokens: usage.prompt_tokens,
                        cached_tokens: usage.cached_tokens,
                    });
                    let o = &mut self.obs[r];
                    o.active_requests = o.active_requests.saturating_sub(1);
                    let u = Usage {
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                        cached_tokens: usage.cached_tokens,
                    };
                    self.policy.on_finish(id.0, Some(u), now);
                }
                EngineEvent::Preempted { .. } => {}
            }
        }
        self.kick(r, now);
    }

    /// Starts replica `r`'s next step if it has work, and observes it.
    fn kick(&mut self, r: usize, now: u64) {
        if let Some(end) = self.replicas[r].start_step(now) {
            self.work += 1;
            let ev = Ev::Step(r as u32);
            self.queue.push_ranked(end, ev.rank(), ev);
        }
        observe(&self.replicas[r], &mut self.obs[r]);
    }

    fn arrival(&mut self, idx: usize, now: u64) {
        let trace = self.trace;
        if let Some(next) = trace.requests.get(idx + 1) {
            let ev = Ev::Arrival(idx as u32 + 1);
            self.queue.push_ranked(next.arrival_us, ev.rank(), ev);
            self.work += 1;
        }
        let req = &trace.requests[idx];
        if let Some(sc) = self.scaling.as_deref() {
            self.tick_arrivals += 1;
            self.tick_mu += sc.coeffs.price(&RequestShape {
                uncached_input: req.prompt.len(),
                cached_input: 0,
                output: req.output_tokens,
                images: 0,
            });
        }
        let tokens = req.prompt.tokens();
        let route = RouteRequest {
            id: idx as u64,
            workload: req.session.map(SliceKey),
            prompt: &tokens,
            max_tokens: self.opts.exact_max_tokens.then_some(req.output_tokens),
            images: 0,
        };
        let kv = FleetKv {
            replicas: &self.replicas,
            block_size: self.fleet.params.block_size,
        };
        let Some(target) = self.policy.route(&route, &self.obs, &kv, now) else {
            self.rejected += 1;
            return;
        };
        let r = target.0 as usize;
        let Some(replica) = self.replicas.get_mut(r) else {
            self.rejected += 1;
            self.policy.on_finish(idx as u64, None, now);
            return;
        };
        let output = req.output_tokens.max(1);
        match replica.core.add_request(
            EngineRequest::new(RequestId(idx as u64), tokens, output, output),
            now,
        ) {
            Ok(()) => {
                self.obs[r].active_requests += 1;
                self.kick(r, now);
            }
            Err(_) => {
                self.rejected += 1;
                self.policy.on_finish(idx as u64, None, now);
            }
        }
    }

    fn finish(self, start_us: u64) -> SimRun {
        let span_s = self.last_us.saturating_sub(start_us) as f64 / 1e6;
        let imbalance = if self.imbalance_samples == 0 {
            1.0
        } else {
            self.imbalance_sum / self.imbalance_samples as f64
        };
        let on = self.power.iter().filter(|p| p.billed()).count() as u64;
        let billed_us = self.billed_us + on * self.last_us.saturating_sub(self.billed_since);
        let gpu_seconds = billed_us as f64 / 1e6;
        let name = match self.scaling.as_deref() {
            Some(sc) => format!("{}+{}", self.policy.name(), sc.leader.name()),
            None => self.policy.name().to_owned(),
        };
        let report = summarize(
            &name,
            &self.records,
            self.rejected,
            &self.opts.slo,
            span_s,
            imbalance,
            gpu_seconds,
        );
        SimRun {
            report,
            records: self.records,
            timeline: self.timeline,
            events: self.events,
            scale: self.scale_points,
        }
    }
}

fn observe(r: &VirtualEngine, o: &mut ReplicaObservation) {
    let s = r.core.stats();
    o.waiting = s.waiting;
    o.kv_usage = s.kv_usage;
}

/// max/mean of outstanding requests (when any are outstanding), and the sample.
fn sample_load(
    obs: &[ReplicaObservation],
    at_us: u64,
    keep: bool,
) -> (Option<f64>, Option<Sample>) {
    let serving = || obs.iter().filter(|o| o.healthy);
    let total: u64 = serving().map(|o| u64::from(o.active_requests)).sum();
    let max = serving().map(|o| o.active_requests).max().unwrap_or(0);
    let n = serving().count();
    let imb = (total > 0).then(|| f64::from(max) * n as f64 / total as f64);
    let sample = keep.then(|| Sample {
        at_us,
        outstanding: obs.iter().map(|o| o.active_requests).collect(),
    });
    (imb, sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Prompt, Segment, TraceRequest};

    /// Sends each session to `session % n` (sticky), or round-robin when not sticky.
    struct Fixed {
        sticky: bool,
        next: u64,
    }

    impl RoutingPolicy for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn route(
            &mut self,
            req: &RouteRequest<'_>,
            fleet: &[ReplicaObservation],
            _: &dyn KvIndex,
            _: u64,
        ) -> Option<ReplicaId> {
            self.next += 1;
            let k = if self.sticky {
                req.workload.map_or(0, |w| w.0)
            } else {
                self.next
            };
            Some(fleet[(k % fleet.len() as u64) as usize].id)
        }
    }

    /// Requests of 4,000 prompt and 400 output tokens at `rate` per second over each
    /// `(seconds, rate)` phase in turn.
    fn phases(phases: &[(u64, u64)]) -> Trace {
        let mut requests = Vec::new();
        let mut t0 = 0;
        let mut n = 0u64;
        for &(secs, rate) in phases {
            for k in 0..secs * rate {
                n += 1;
                requests.push(TraceRequest {
                    arrival_us: t0 + k * 1_000_000 / rate,
                    session: Some(n),
                    prompt: Prompt {
                        segments: vec![Segment { seed: n, len: 4000 }],
                    },
                    output_tokens: 400,
                });
            }
            t0 += secs * 1_000_000;
        }
        let mut t = Trace {
            name: "phases".into(),
            requests,
        };
        t.sort();
        t
    }

    #[test]
    fn an_autoscaled_fleet_follows_a_step_and_loses_nothing() {
        let t = phases(&[(120, 2), (240, 20), (600, 2)]);
        let profile = sluice_actors::Profile::default_profile();
        let spec = FleetSpec {
            replicas: 8,
            racks: 2,
            params: profile.engine.clone(),
            capacity_mu_per_min: profile.capacity_mu_per_min,
        };
        let mut scaling = Scaling {
            leader: sluice_actors::autoscaler::ScaleLeader::new(
                sluice_actors::autoscaler::LeaderScaler::new(
                    sluice_actors::autoscaler::by_name("sluice", &Default::default(), 8).unwrap(),
                    0,
                ),
            ),
            bounds: sluice_actors::autoscaler::ScaleBounds {
                min: 1,
                max: 8,
                reserved_floor: 0,
            },
            coeffs: profile.mu,
            tick_us: 2_000_000,
            cold_start_us: 60_000_000,
            initial: 1,
        };
        let mut policy = sluice_actors::router::baselines::by_name("least-requests", 0).unwrap();
        let run = simulate_scaled(
            &t,
            &spec,
            policy.as_mut(),
            Some(&mut scaling),
            &SimOptions::default(),
        );
        assert_eq!(run.report.completed, t.requests.len() as u64);
        assert_eq!(run.report.rejected, 0);
        let peak = run.scale.iter().map(|p| p.ready).max().unwrap();
        assert!(peak >= 3, "peak ready {peak}");
        // Rack spread while scaled up, and back to one replica after the load falls.
        let last = run.scale.last().unwrap();
        assert_eq!((last.ready, last.starting), (1, 0), "{last:?}");
        let span_s =
            (t.requests.last().unwrap().arrival_us - t.requests[0].arrival_us) as f64 / 1e6;
        assert!(
            run.report.gpu_seconds < 0.6 * 8.0 * span_s,
            "{}",
            run.report.gpu_seconds
        );
        assert!(
            run.report.gpu_seconds > span_s,
            "{}",
            run.report.gpu_seconds
        );
        assert_eq!(run.report.name, "least-requests+sluice");
    }

    fn trace(sessions: u64, turns: u64) -> Trace {
        let mut requests = Vec::new();
        for s in 0..sessions {
            for t in 0..turns {
                requests.push(TraceRequest {
                    arrival_us: (t * sessions + s) * 50_000,
                    session: Some(s),
                    prompt: Prompt {
                        segments: vec![
                            Segment {
                                seed: 1000 + s,
                                len: 2048,
                            },
                            Segment {
                                seed: 77 * t + s,
                                len: 64,
                            },
                        ],
                    },
                    output_tokens: 20,
                });
            }
        }
        let mut t = Trace {
            name: "t".into(),
            requests,
        };
        t.sort();
        t
    }

    fn fleet(n: usize) -> FleetSpec {
        FleetSpec {
            replicas: n,
            racks: 2,
            params: EngineParams::default(),
            capacity_mu_per_min: 80_000.0,
        }
    }

    #[test]
    fn every_request_completes_deterministically_with_sane_timings() {
        let t = trace(8, 5);
        let run = |sticky| {
            simulate(
                &t,
                &fleet(4),
                &mut Fixed { sticky, next: 0 },
                &SimOptions::default(),
            )
        };
        let a = run(true);
        let b = run(true);
        assert_eq!(a.records, b.records);
        assert_eq!(a.report.completed, 40);
        assert_eq!(a.report.rejected, 0);
        for r in &a.records {
            assert!(r.first_token_us > r.arrival_us && r.finish_us > r.first_token_us);
            assert_eq!(r.output_tokens, 20);
        }
        // A 2k-token uncached prompt on an H100-class engine: tens of milliseconds; a
        // turn whose session prefix is cached computes only its new tokens.
        for r in &a.records {
            let ttft = r.ttft_ms();
            if r.cached_tokens == 0 {
                assert!((20.0..500.0).contains(&ttft), "{ttft}");
            } else {
                assert!(ttft < 20.0, "{ttft}");
            }
        }
    }

    #[test]
    fn sticky_sessions_hit_the_prefix_cache_and_scattered_ones_hit_less() {
        let t = trace(8, 5);
        // Three replicas, so round-robin over eight sessions moves each session every turn.
        let sticky = simulate(
            &t,
            &fleet(3),
            &mut Fixed {
                sticky: true,
                next: 0,
            },
            &SimOptions::default(),
        );
        let scattered = simulate(
            &t,
            &fleet(3),
            &mut Fixed {
                sticky: false,
                next: 0,
            },
            &SimOptions::default(),
        );
        // Sticky: every turn after the first reuses the 2,048-token session prefix.
        assert!(
            sticky.report.prefix_hit_rate > 0.7,
            "{}",
            sticky.report.prefix_hit_rate
        );
        assert!(scattered.report.prefix_hit_rate < sticky.report.prefix_hit_rate);
    }

    #[test]
    fn a_policy_that_refuses_counts_as_rejected() {
        struct Refuse;
        impl RoutingPolicy for Refuse {
            fn name(&self) -> &'static str {
                "refuse"
            }
            fn route(
                &mut self,
                _: &RouteRequest<'_>,
                _: &[ReplicaObservation],
                _: &dyn KvIndex,
                _: u64,
            ) -> Option<ReplicaId> {
                None
            }
        }
        let run = simulate(&trace(2, 2), &fleet(2), &mut Refuse, &SimOptions::default());
        assert_eq!((run.report.completed, run.report.rejected), (0, 4));
        assert_eq!(run.report.slo_attainment, 0.0);
    }
}
