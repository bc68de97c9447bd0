//! The router's decision state: price, slice, replica choice, in-flight accounting and
//! passive health, as one deterministic state machine fed by the front door with
//! explicit clock values. The HTTP shell only moves bytes.

use super::choice::{choose, Candidate, SpillPolicy};
use super::health::{EjectionPolicy, PassiveHealth};
use super::ledger::{Ledger, ReplicaInflight, RequestId};
use crate::mu::{EstimatorConfig, InflightCost, MuCoefficients, OutputEstimator, RequestShape};
use crate::slice::{Assignment, ReplicaId, SliceKey};
use std::collections::HashMap;

/// Tunables of the router core.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RouterConfig {
    pub spill: SpillPolicy,
    pub ejection: EjectionPolicy,
    pub estimator: EstimatorConfig,
}

/// A replica the router may send to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaSpec {
    pub id: ReplicaId,
    pub capacity_mu_per_min: f64,
}

/// What the router knows of a request at admission.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission {
    pub workload: SliceKey,
    pub input_tokens: u32,
    pub images: u32,
    pub max_tokens: Option<u32>,
    /// Completions requested per prompt (`n`); each is charged.
    pub n: u32,
}

/// Where a request goes and what it is charged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub id: RequestId,
    pub replica: ReplicaId,
    /// Start key of the slice the request belongs to.
    pub slice: SliceKey,
    pub spilled: bool,
    pub mu: f64,
}

/// Token counts a finished request reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
}

/// A replica as the router sees it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaView {
    pub id: ReplicaId,
    pub available: bool,
    pub capacity_mu_per_min: f64,
    pub inflight: ReplicaInflight,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    cost: InflightCost,
    workload: SliceKey,
    replica: ReplicaId,
    slice: SliceKey,
    generated: u32,
    n: u32,
}

#[derive(Debug, Clone, Copy)]
struct ReplicaEntry {
    spec: ReplicaSpec,
    /// Last verdict of the active health check.
    checked_healthy: bool,
    passive: PassiveHealth,
}

#[derive(Debug, Clone)]
pub struct RouterCore {
    coeffs: MuCoefficients,
    config: RouterConfig,
    assignment: Assignment,
    replicas: Vec<ReplicaEntry>,
    ledger: Ledger,
    estimator: OutputEstimator,
    active: HashMap<RequestId, Active>,
    next_id: RequestId,
}

impl RouterCore {
    pub fn new(
        coeffs: MuCoefficients,
        config: RouterConfig,
        replicas: &[ReplicaSpec],
        assignment: Assignment,
    ) -> Self {
        Self {
            coeffs,
            config,
            assignment,
            replicas: replicas
                .iter()
                .map(|&spec| ReplicaEntry {
                    spec,
                    checked_healthy: true,
                    passive: PassiveHealth::default(),
                })
                .collect(),
            ledger: Ledger::new(),
            estimator: OutputEstimator::new(config.estimator),
            active: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Prices `a` and picks its replica; `None` when no replica is available.
    pub fn place(&mut self, a: &Admission, now_ms: u64) -> Option<Placement> {
        let est = self.estimator.estimate(a.workload.0, a.max_tokens);
        let cached = (f64::from(a.input_tokens) * est.cached_fraction).round() as u32;
        let shape = RequestShape {
            uncached_input: a.input_tokens - cached.min(a.input_tokens),
            cached_input: cached.min(a.input_tokens),
            output: est.output_tokens.saturating_mul(a.n.max(1)),
            images: a.images,
        };
        let cost = InflightCost::new(shape, a.max_tokens.map(|m| m.saturating_mul(a.n.max(1))));
        let id = self.next_id;
        self.next_id += 1;
        let active = Active {
            cost,
            workload: a.workload,
            replica: ReplicaId(0),
            slice: a.workload,
            generated: 0,
            n: a.n.max(1),
        };
        self.active.insert(id, active);
        let placed = self.assign(id, &[], now_ms);
        if placed.is_none() {
            self.active.remove(&id);
        }
        placed
    }

    /// The request could not reach `failed` (nothing was sent to the client yet):
    /// count the failure against the replica and place the request elsewhere.
    pub fn retry(&mut self, id: RequestId, failed: ReplicaId, now_ms: u64) -> Option<Placement> {
        self.on_replica_failure(failed, now_ms);
        let placed = self.assign(id, &[failed], now_ms);
        if placed.is_none() {
            self.finish(id, None);
        }
        placed
    }

    fn assign(&mut self, id: RequestId, exclude: &[ReplicaId], now_ms: u64) -> Option<Placement> {
        let active = *self.active.get(&id)?;
        let mu = active.cost.remaining_mu(&self.coeffs, 0);
        let slice = self.assignment.lookup(active.workload);
        let fleet: Vec<Candidate> = self
            .replicas
            .iter()
            .map(|r| Candidate {
                id: r.spec.id,
                healthy: r.checked_healthy && r.passive.available(now_ms),
                inflight_mu: self.ledger.replica(r.spec.id).mu,
                capacity_mu_per_min: r.spec.capacity_mu_per_min,
            })
            .collect();
        let choice = choose(&slice.subset, &fleet, mu, exclude, self.config.spill)?;
        let slice_start = slice.start;
        self.ledger.admit(id, choice.replica, slice_start, mu);
        if let Some(a) = self.active.get_mut(&id) {
            a.replica = choice.replica;
            a.slice = slice_start;
        }
        Some(Placement {
            id,
            replica: choice.replica,
            slice: slice_start,
            spilled: choice.spilled,
            mu,
        })
    }

    /// `generated` output tokens (over all `n` choices) have streamed back.
    pub fn progress(&mut self, id: RequestId, generated: u32) {
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        a.generated = generated;
        let mu = a.cost.remaining_mu(&self.coeffs, generated);
        self.ledger.update(id, mu);
    }

    /// The request is over: completed with `usage` when the engine reported it, or
    /// failed or abandoned with `None`. Frees its in-flight MU.
    pub fn finish(&mut self, id: RequestId, usage: Option<Usage>) {
        self.ledger.finish(id);
        let Some(a) = self.active.remove(&id) else {
            return;
        };
        if let Some(u) = usage {
            let per_choice = u.completion_tokens / a.n;
            self.estimator
                .observe(a.workload.0, per_choice, u.prompt_tokens, u.cached_tokens);
            if let Some(r) = self.entry(a.replica) {
                r.passive.on_success();
            }
        } else if a.generated > 0 {
            // Tokens arrived, so the replica was reachable; learn the length seen so far.
            self.estimator.observe(
                a.workload.0,
                a.generated / a.n,
                a.cost.shape().input() as u32,
                0,
            );
        }
    }

    /// Real traffic failed to reach `replica` (connection refused, reset, timeout).
    pub fn on_replica_failure(&mut self, replica: ReplicaId, now_ms: u64) {
        let policy = self.config.ejection;
        if let Some(r) = self.entry(replica) {
            r.passive.on_failure(&policy, now_ms);
        }
    }

    /// Result of an active health check of `replica`. A passing check does not end a
    /// passive ejection: a hung engine still answers its health endpoint.
    pub fn set_checked_health(&mut self, replica: ReplicaId, healthy: bool) {
        if let Some(r) = self.entry(replica) {
            r.checked_healthy = healthy;
        }
    }

    /// Replaces the slice map (a newer generation from the assigner).
    pub fn set_assignment(&mut self, assignment: Assignment) {
        if assignment.generation >= self.assignment.generation {
            self.assignment = assignment;
        }
    }

    pub fn replicas(&self, now_ms: u64) -> Vec<ReplicaView> {
        self.replicas
            .iter()
            .map(|r| ReplicaView {
                id: r.spec.id,
                available: r.checked_healthy && r.passive.available(now_ms),
                capacity_mu_per_min: r.spec.capacity_mu_per_min,
                inflight: self.ledger.replica(r.spec.id),
            })
            .collect()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn in_flight(&self) -> usize {
        self.active.len()
    }

    fn entry(&mut self, id: ReplicaId) -> Option<&mut ReplicaEntry> {
        self.replicas.iter_mut().find(|r| r.spec.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(n: u64, subset: usize) -> RouterCore {
        let ids: Vec<ReplicaId> = (0..n).map(ReplicaId).collect();
        let specs: Vec<ReplicaSpec> = ids
            .iter()
            .map(|&id| ReplicaSpec {
                id,
                capacity_mu_per_min: 60_000.0,
            })
            .collect();
        let coeffs = MuCoefficients {
            uncached_input: 0.019,
            cached_input: 0.0,
            output: 0.129,
            input_output: 0.00004,
            image: 0.0,
        };
        RouterCore::new(
            coeffs,
            RouterConfig::default(),
            &specs,
            Assignment::uniform(1, &ids, 8, subset).unwrap(),
        )
    }

    fn adm(w: &str, input: u32, max: u32) -> Admission {
        Admission {
            workload: SliceKey::of(w),
            input_tokens: input,
            images: 0,
            max_tokens: Some(max),
            n: 1,
        }
    }

    #[test]
    fn long_requests_spread_by_mu_not_count() {
        let mut c = core(4, 4);
        // Two long requests and many short ones: the long ones land on different
        // replicas and the short ones avoid them.
        let long1 = c.place(&adm("a", 30_000, 2000), 0).unwrap();
        let long2 = c.place(&adm("a", 30_000, 2000), 0).unwrap();
        assert_ne!(long1.replica, long2.replica);
        for _ in 0..20 {
            let p = c.place(&adm("a", 200, 50), 0).unwrap();
            assert!(p.replica != long1.replica && p.replica != long2.replica);
        }
    }

    #[test]
    fn accounting_returns_to_zero_and_history_is_learned() {
        let mut c = core(2, 2);
        let p = c.place(&adm("w", 1000, 500), 0).unwrap();
        let before = c.ledger().replica(p.replica).mu;
        c.progress(p.id, 1);
        assert!(c.ledger().replica(p.replica).mu < before);
        c.finish(
            p.id,
            Some(Usage {
                prompt_tokens: 1000,
                completion_tokens: 20,
                cached_tokens: 0,
            }),
        );
        assert_eq!(c.in_flight(), 0);
        assert!(c
            .replicas(0)
            .iter()
            .all(|r| r.inflight == ReplicaInflight::default()));
        let again = c.place(&adm("w", 1000, 500), 0).unwrap();
        assert!(
            again.mu < before,
            "a workload seen to stop early is priced lower"
        );
    }

    #[test]
    fn retry_goes_elsewhere_and_ejects_the_failed_replica() {
        let mut c = core(3, 1);
        let p = c.place(&adm("x", 100, 10), 0).unwrap();
        let r = c.retry(p.id, p.replica, 0).unwrap();
        assert_ne!(r.replica, p.replica);
        assert_eq!(c.ledger().replica(p.replica).requests, 0);
        assert!(
            !c.replicas(10)
                .iter()
                .find(|v| v.id == p.replica)
                .unwrap()
                .available
        );
        // A new request of the same workload avoids it while ejected.
        assert_ne!(c.place(&adm("x", 100, 10), 10).unwrap().replica, p.replica);
    }

    #[test]
    fn a_passing_health_check_does_not_end_an_ejection() {
        let mut c = core(1, 1);
        c.on_replica_failure(ReplicaId(0), 0);
        c.set_checked_health(ReplicaId(0), true);
        assert_eq!(c.place(&adm("x", 100, 10), 10), None);
        assert!(
            c.place(&adm("x", 100, 10), 1_000).is_some(),
            "the ejection ends by its backoff"
        );
    }

    #[test]
    fn no_available_replica_means_no_placement() {
        let mut c = core(2, 2);
        c.set_checked_health(ReplicaId(0), false);
        c.set_checked_health(ReplicaId(1), false);
        assert_eq!(c.place(&adm("x", 100, 10), 0), None);
        assert_eq!(c.in_flight(), 0);
    }
}
