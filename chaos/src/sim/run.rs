//! The discrete-event loop: arrivals from a trace, routed by a policy onto a fleet of
//! engine models stepping in virtual time. The engine core and the policy are the same
//! code the live node runs; only the clock is virtual.

use super::outcome::{summarize, PolicyReport, RequestRecord, Slo};
use crate::trace::Trace;
use sluice_actors::router::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy, Usage};
use sluice_actors::slice::{ReplicaId, SliceKey};
use sluice_engine::core::{EngineCore, EngineEvent, EngineRequest, RequestId};
use sluice_engine::EngineParams;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
    /// Discrete events processed (arrivals and step ends).
    pub events: u64,
}

struct Replica {
    core: EngineCore,
    /// Events of the step in progress, delivered when it ends.
    pending: Vec<EngineEvent>,
    stepping: bool,
    busy_us: u64,
}

/// The engines' real prefix caches, read by KV-event-driven policies.
struct FleetKv<'a> {
    replicas: &'a [Replica],
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
    let mut replicas: Vec<Replica> = (0..fleet.replicas)
        .map(|_| Replica {
            core: EngineCore::new(fleet.params.clone()),
            pending: Vec::new(),
            stepping: false,
            busy_us: 0,
        })
        .collect();
    let mut obs: Vec<ReplicaObservation> = (0..fleet.replicas)
        .map(|i| ReplicaObservation {
            id: ReplicaId(i as u64),
            healthy: true,
            capacity_mu_per_min: fleet.capacity_mu_per_min,
            active_requests: 0,
            waiting: 0,
            kv_usage: 0.0,
        })
        .collect();
    // First-token time of each request, by trace index.
    let mut first_token: Vec<Option<u64>> = vec![None; trace.requests.len()];
    let mut records = Vec::with_capacity(trace.requests.len());
    let mut rejected = 0u64;
    let mut steps: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let mut events = 0u64;
    let mut next_arrival = 0usize;
    let mut timeline = Vec::new();
    let mut imbalance_sum = 0.0;
    let mut imbalance_samples = 0u64;
    let start_us = trace.requests.first().map_or(0, |r| r.arrival_us);
    let mut next_sample = start_us;
    let mut last_us = start_us;
    let mut delivered = Vec::new();

    loop {
        let arrival_at = trace.requests.get(next_arrival).map(|r| r.arrival_us);
        let step_at = steps.peek().map(|Reverse((t, _))| *t);
        let now = match (arrival_at, step_at) {
            (None, None) => break,
            (Some(a), Some(s)) => a.min(s),
            (Some(a), None) => a,
            (None, Some(s)) => s,
        };
        while next_sample <= now {
            let (imb, sample) = sample_load(&obs, next_sample, opts.keep_timeline);
            if let Some(i) = imb {
                imbalance_sum += i;
                imbalance_samples += 1;
            }
            timeline.extend(sample);
            next_sample += opts.sample_every_us.max(1);
        }
        events += 1;
        last_us = now;
        if step_at == Some(now) && arrival_at.is_none_or(|a| a > now) {
            // A step ends: deliver its events, then start the next one.
            let Some(Reverse((_, r))) = steps.pop() else {
                break;
            };
            let r = r as usize;
            std::mem::swap(&mut delivered, &mut replicas[r].pending);
            for ev in delivered.drain(..) {
                match ev {
                    EngineEvent::Token { id, index } => {
                        first_token[id.0 as usize].get_or_insert(now);
                        policy.on_progress(id.0, index + 1, now);
                    }
                    EngineEvent::Finished { id, usage, .. } => {
                        let req = &trace.requests[id.0 as usize];
                        records.push(RequestRecord {
                            arrival_us: req.arrival_us,
                            first_token_us: first_token[id.0 as usize].unwrap_or(now),
                            finish_us: now,
                            output_tokens: usage.completion_tokens,
                            prompt_tokens: usage.prompt_tokens,
                            cached_tokens: usage.cached_tokens,
                        });
                        obs[r].active_requests = obs[r].active_requests.saturating_sub(1);
                        let u = Usage {
                            prompt_tokens: usage.prompt_tokens,
                            completion_tokens: usage.completion_tokens,
                            cached_tokens: usage.cached_tokens,
                        };
                        policy.on_finish(id.0, Some(u), now);
                    }
                    EngineEvent::Preempted { .. } => {}
                }
            }
            start_step(&mut replicas[r], r, now, &mut steps);
            observe(&replicas[r], &mut obs[r]);
            continue;
        }

        // An arrival.
        let idx = next_arrival;
        next_arrival += 1;
        let req = &trace.requests[idx];
        let tokens = req.prompt.tokens();
        let route = RouteRequest {
            id: idx as u64,
            workload: SliceKey(req.session),
            prompt: &tokens,
            max_tokens: opts.exact_max_tokens.then_some(req.output_tokens),
            images: 0,
        };
        let kv = FleetKv {
            replicas: &replicas,
            block_size: fleet.params.block_size,
        };
        let Some(target) = policy.route(&route, &obs, &kv, now) else {
            rejected += 1;
            continue;
        };
        let r = target.0 as usize;
        let Some(replica) = replicas.get_mut(r) else {
            rejected += 1;
            policy.on_finish(idx as u64, None, now);
            continue;
        };
        let output = req.output_tokens.max(1);
        match replica.core.add_request(
            EngineRequest::new(RequestId(idx as u64), tokens, output, output),
            now,
        ) {
            Ok(()) => {
                obs[r].active_requests += 1;
                if !replica.stepping {
                    start_step(replica, r, now, &mut steps);
                }
                observe(replica, &mut obs[r]);
            }
            Err(_) => {
                rejected += 1;
                policy.on_finish(idx as u64, None, now);
            }
        }
    }

    let span_s = last_us.saturating_sub(start_us) as f64 / 1e6;
    let imbalance = if imbalance_samples == 0 {
        1.0
    } else {
        imbalance_sum / imbalance_samples as f64
    };
    let gpu_seconds = span_s * fleet.replicas as f64;
    let report = summarize(
        policy.name(),
        &records,
        rejected,
        &opts.slo,
        span_s,
        imbalance,
        gpu_seconds,
    );
    SimRun {
        report,
        records,
        timeline,
        events,
    }
}

fn start_step(r: &mut Replica, idx: usize, now: u64, steps: &mut BinaryHeap<Reverse<(u64, u32)>>) {
    r.stepping = false;
    if !r.core.has_work() {
        return;
    }
    let summary = r.core.step_into(now, &mut r.pending);
    if summary.duration_us == 0 && r.pending.is_empty() {
        return;
    }
    let d = summary.duration_us.max(1);
    r.busy_us += d;
    r.stepping = true;
    steps.push(Reverse((now + d, idx as u32)));
}

fn observe(r: &Replica, o: &mut ReplicaObservation) {
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
    let total: u64 = obs.iter().map(|o| u64::from(o.active_requests)).sum();
    let max = obs.iter().map(|o| o.active_requests).max().unwrap_or(0);
    let imb = (total > 0).then(|| f64::from(max) * obs.len() as f64 / total as f64);
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
                req.workload.0
            } else {
                self.next
            };
            Some(fleet[(k % fleet.len() as u64) as usize].id)
        }
    }

    fn trace(sessions: u64, turns: u64) -> Trace {
        let mut requests = Vec::new();
        for s in 0..sessions {
            for t in 0..turns {
                requests.push(TraceRequest {
                    arrival_us: (t * sessions + s) * 50_000,
                    session: s,
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
