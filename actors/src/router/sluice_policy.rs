//! Sluice's own policy behind the [`RoutingPolicy`] interface: every call drives the live
//! router's [`RouterCore`] (`place`, `progress`, `finish`, `set_checked_health`), so the
//! simulator measures exactly the logic a node runs — MU pricing per replica by its
//! expected prefix cache, slices and subsets, the cost-aware choice and spill, passive
//! health. The prefix-cache size comes from the profile's engine (KV blocks × block size).
//!
//! The slice map starts as the assigner's [`initial_assignment`] (rack-spread subsets);
//! then, on the assigner's [`Schedule`] (a round a minute by default), the policy hands
//! the core's measured per-key load to the assigner and installs the next assignment —
//! what the Raft leader does for a live fleet. With the assigner off, the map is
//! `Assignment::uniform` and only [`SluicePolicy::set_assignment`] changes it. The replica
//! set is fixed at construction (the core has no way to add replicas); replicas missing
//! from an observation count as unhealthy, and the assigner moves their slices away.

use super::blocks::PromptBlocks;
use super::core::{Admission, ReplicaSpec, RouterConfig, RouterCore, Usage};
use super::ledger::RequestId;
use super::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::assigner::{initial_assignment, ReplicaInfo, Schedule, ScheduleConfig};
use crate::mu::MuCoefficients;
use crate::profile::Profile;
use crate::slice::{Assignment, AssignmentError, ReplicaId};
use std::collections::HashMap;

/// How the slice map is made.
#[derive(Debug, Clone, PartialEq)]
pub struct SluiceOptions {
    /// The assigner's rounds; `None` keeps a fixed uniform map.
    pub assigner: Option<ScheduleConfig>,
    /// Replicas per slice of the uniform map (assigner off).
    pub subset_size: usize,
    /// Slices of the uniform map (assigner off).
    pub slice_count: usize,
}

impl Default for SluiceOptions {
    fn default() -> Self {
        Self {
            assigner: Some(ScheduleConfig::default()),
            subset_size: 2,
            slice_count: 64,
        }
    }
}

/// What the assigner did over a run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AssignerStats {
    pub rounds: u64,
    /// Rounds that produced a new generation.
    pub changes: u64,
    /// Sum over rounds of the budgeted and the forced churn (fractions of the load).
    pub churn: f64,
    pub forced_churn: f64,
    /// Imbalance the last round left (max/mean relative load).
    pub last_imbalance: f64,
}

#[derive(Debug, Clone)]
pub struct SluicePolicy {
    core: RouterCore,
    /// Route id → the core's placement id.
    ids: HashMap<u64, RequestId>,
    /// Health last pushed to the core, per replica (in construction order).
    replicas: Vec<(ReplicaId, bool)>,
    index: HashMap<ReplicaId, usize>,
    seen: Vec<bool>,
    registry: Vec<ReplicaInfo>,
    schedule: Option<Schedule>,
    stats: AssignerStats,
}

impl SluicePolicy {
    /// A policy over `replicas` (ids, racks, capacities).
    pub fn new(
        coeffs: MuCoefficients,
        config: RouterConfig,
        replicas: &[ReplicaInfo],
        options: SluiceOptions,
    ) -> Result<Self, AssignmentError> {
        let ids: Vec<ReplicaId> = replicas.iter().map(|r| r.id).collect();
        let assignment = match &options.assigner {
            Some(schedule) => initial_assignment(replicas, &schedule.assigner)?,
            None => Assignment::uniform(1, &ids, options.slice_count, options.subset_size)?,
        };
        let specs: Vec<ReplicaSpec> = replicas
            .iter()
            .map(|r| ReplicaSpec {
                id: r.id,
                capacity_mu_per_min: r.capacity_mu_per_min,
                // The simulator's replicas have a machine each.
                host: r.id.0,
                rack: ReplicaSpec::rack_of(&r.rack),
            })
            .collect();
        Ok(Self {
            core: RouterCore::new(coeffs, config, &specs, assignment),
            ids: HashMap::new(),
            replicas: ids.iter().map(|&id| (id, true)).collect(),
            index: ids.iter().enumerate().map(|(i, &id)| (id, i)).collect(),
            seen: vec![false; ids.len()],
            registry: replicas.to_vec(),
            schedule: options.assigner.map(|c| Schedule::new(c, 0)),
            stats: AssignerStats::default(),
        })
    }

    /// `replicas` of `profile` (its coefficients and capacity) in the given racks, default
    /// router config.
    pub fn from_profile(
        profile: &Profile,
        replicas: &[(ReplicaId, String)],
        options: SluiceOptions,
    ) -> Result<Self, AssignmentError> {
        let infos: Vec<ReplicaInfo> = replicas
            .iter()
            .map(|(id, rack)| ReplicaInfo::new(id.0, rack.clone(), profile.capacity_mu_per_min))
            .collect();
        let mut config = RouterConfig::default();
        config.affinity.cache_tokens = profile.kv_cache_tokens();
        Self::new(profile.mu, config, &infos, options)
    }

    pub fn assigner_stats(&self) -> AssignerStats {
        self.stats
    }

    /// Runs an assigner round when one is due: the core's measured load, the replicas'
    /// observed health, the next assignment installed.
    fn maybe_reassign(&mut self, now_us: u64) {
        let Some(schedule) = self.schedule.as_mut() else {
            return;
        };
        if !schedule.due(now_us) {
            return;
        }
        for (info, &(_, healthy)) in self.registry.iter_mut().zip(&self.replicas) {
            info.healthy = healthy;
        }
        let report = self.core.take_load(now_us);
        let Some(plan) = schedule.round(now_us, &report, self.core.assignment(), &self.registry)
        else {
            return;
        };
        self.stats.rounds += 1;
        self.stats.churn += plan.churn;
        self.stats.forced_churn += plan.forced_churn;
        self.stats.last_imbalance = plan.imbalance_after;
        if plan.changed {
            self.stats.changes += 1;
            self.core.set_assignment(plan.assignment);
        }
    }

    /// Installs a newer slice map (ignored if its generation is older than the current).
    pub fn set_assignment(&mut self, assignment: Assignment) {
        self.core.set_assignment(assignment);
    }

    pub fn assignment(&self) -> &Assignment {
        self.core.assignment()
    }

    pub fn core(&self) -> &RouterCore {
        &self.core
    }

    /// Pushes the observed health of every replica to the core (only changes).
    fn sync_health(&mut self, fleet: &[ReplicaObservation]) {
        self.seen.iter_mut().for_each(|s| *s = false);
        for o in fleet {
            if let Some(&i) = self.index.get(&o.id) {
                self.seen[i] = true;
                if self.replicas[i].1 != o.healthy {
                    self.replicas[i].1 = o.healthy;
                    self.core.set_checked_health(o.id, o.healthy);
                }
            }
        }
        for (i, seen) in self.seen.iter().enumerate() {
            if !seen && self.replicas[i].1 {
                self.replicas[i].1 = false;
                self.core.set_checked_health(self.replicas[i].0, false);
            }
        }
    }
}

impl RoutingPolicy for SluicePolicy {
    fn name(&self) -> &'static str {
        if self.schedule.is_some() {
            "sluice"
        } else {
            "sluice-uniform"
        }
    }

    fn route(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        _kv: &dyn KvIndex,
        now_us: u64,
    ) -> Option<ReplicaId> {
        self.sync_health(fleet);
        self.maybe_reassign(now_us);
        let blocks = PromptBlocks::of_tokens(req.prompt);
        let admission = Admission {
            workload: req.workload,
            blocks: &blocks,
            input_tokens: u32::try_from(req.prompt.len()).unwrap_or(u32::MAX),
            images: req.images,
            max_tokens: req.max_tokens,
            n: 1,
            fingerprint: None,
            radius: None,
            // The simulator judges no stalls: how the answer travels changes nothing.
            stream: false,
        };
        let placed = self.core.place(&admission, now_us / 1000)?;
        if let Some(old) = self.ids.insert(req.id, placed.id) {
            // A reused route id: the earlier request is over as far as we can tell.
            self.core.finish(old, None);
        }
        Some(placed.replica)
    }

    fn on_progress(&mut self, id: u64, generated: u32, now_us: u64) {
        if let Some(&pid) = self.ids.get(&id) {
            self.core.progress(pid, generated, now_us / 1000);
        }
    }

    fn on_finish(&mut self, id: u64, usage: Option<Usage>, _now_us: u64) {
        if let Some(pid) = self.ids.remove(&id) {
            self.core.finish(pid, usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::policy::NoKvIndex;
    use crate::slice::SliceKey;

    fn policy(n: u64) -> SluicePolicy {
        let ids: Vec<(ReplicaId, String)> = (0..n)
            .map(|i| (ReplicaId(i), format!("rack-{}", i % 2)))
            .collect();
        SluicePolicy::from_profile(&Profile::default_profile(), &ids, SluiceOptions::default())
            .unwrap()
    }

    fn obs(id: u64, healthy: bool) -> ReplicaObservation {
        ReplicaObservation {
            id: ReplicaId(id),
            healthy,
            capacity_mu_per_min: 1.0,
            active_requests: 0,
            waiting: 0,
            kv_usage: 0.0,
        }
    }

    fn unkeyed(id: u64, prompt: &[u32]) -> RouteRequest<'_> {
        RouteRequest {
            id,
            workload: None,
            prompt,
            max_tokens: Some(30),
            images: 0,
        }
    }

    fn req<'a>(id: u64, workload: &str, prompt: &'a [u32]) -> RouteRequest<'a> {
        RouteRequest {
            id,
            workload: Some(SliceKey::of(workload)),
            prompt,
            max_tokens: Some(200),
            images: 0,
        }
    }

    #[test]
    fn routes_within_the_slice_subset_and_accounts_like_the_core() {
        let mut p = policy(8);
        let fleet: Vec<_> = (0..8).map(|i| obs(i, true)).collect();
        let prompt = vec![1u32; 500];
        let slice = p.assignment().lookup(SliceKey::of("tenant-a")).clone();
        // The first request goes to the (idle) subset's leader; the workload's prefix is
        // then expected there, so the next ones, even while running together, stay home.
        let first = p
            .route(&req(0, "tenant-a", &prompt), &fleet, &NoKvIndex, 0)
            .unwrap();
        assert_eq!(first, slice.subset[0]);
        p.on_finish(0, Some(Usage::default()), 1);
        for id in 1..7 {
            let r = p
                .route(&req(id, "tenant-a", &prompt), &fleet, &NoKvIndex, 2)
                .unwrap();
            assert!(slice.subset.contains(&r), "{r:?} not in {:?}", slice.subset);
        }
        assert_eq!(p.core().in_flight(), 6);
        p.on_progress(1, 10, 3);
        for id in 1..7 {
            p.on_finish(id, None, 4);
        }
        assert_eq!(p.core().in_flight(), 0);
        assert!(p.core().ledger().replica(slice.subset[0]).requests == 0);
    }

    #[test]
    fn a_burst_counts_on_the_context_its_first_request_is_computing() {
        // Requests sharing a 2k-token context arrive together. The first one's prefill
        // has not finished when the next comes, but an engine caches a block when it
        // schedules the prefill computing it: the next request, behind it or in the same
        // step, finds the context cached (vLLM 0.32, measured: 7 of 8 requests of one
        // step report the shared 896 tokens cached). So it is priced as a hit there at
        // once. The other replica is busy, so the hit is where it goes.
        let mut p = policy(2);
        let fleet: Vec<_> = (0..2).map(|i| obs(i, true)).collect();
        let other: Vec<u32> = (0..6000).map(|t| 900_000 + t).collect();
        let busy = p.route(&unkeyed(0, &other), &fleet, &NoKvIndex, 0).unwrap();
        let context: Vec<u32> = (0..2000).map(|t| 7 + t % 5000).collect();
        let with_tail = |n: u32| -> Vec<u32> {
            let mut v = context.clone();
            v.extend((0..64).map(|t| 100_000 + n * 1_000 + t));
            v
        };
        let first = p
            .route(&unkeyed(1, &with_tail(1)), &fleet, &NoKvIndex, 0)
            .unwrap();
        assert_ne!(first, busy);
        let queued = |p: &SluicePolicy| p.core().ledger().replica(first).queue_mu;
        let after_first = queued(&p);
        let second = p
            .route(&unkeyed(2, &with_tail(2)), &fleet, &NoKvIndex, 1)
            .unwrap();
        assert_eq!(
            second, first,
            "the second request joins the context being computed"
        );
        let added = queued(&p) - after_first;
        assert!(
            added < after_first / 4.0,
            "priced as a hit: {added} MU added to {after_first}"
        );
    }

    #[test]
    fn a_burst_of_one_conversation_spreads_past_its_busy_warm_replica() {
        // Code completion without keys: one editing session's ~2k-token file context,
        // a new tail per request, ~30 tokens out. Every replica is busy decoding other
        // conversations; the session's one warm replica takes the burst until its queue
        // costs more than computing the context elsewhere, then the burst spreads
        // (counting the lost prefix once per request decoding on the other replicas
        // kept all of it on the warm one).
        let mut p = policy(8);
        let fleet: Vec<_> = (0..8).map(|i| obs(i, true)).collect();
        let context: Vec<u32> = (0..2000).map(|t| 7 + t % 5000).collect();
        let with_tail = |n: u32| -> Vec<u32> {
            let mut v = context.clone();
            v.extend((0..300).map(|t| 100_000 + n * 1_000 + t));
            v
        };
        let first = with_tail(0);
        let warm = p.route(&unkeyed(0, &first), &fleet, &NoKvIndex, 0).unwrap();
        p.on_progress(0, 1, 40);
        p.on_finish(
            0,
            Some(Usage {
                prompt_tokens: 2300,
                completion_tokens: 30,
                cached_tokens: 0,
            }),
            300,
        );
        // 32 other conversations decoding across the fleet.
        for id in 1..=32u64 {
            let other: Vec<u32> = (0..500).map(|t| (id as u32) * 10_000 + t).collect();
            p.route(&unkeyed(id, &other), &fleet, &NoKvIndex, 400)
                .unwrap();
            p.on_progress(id, 1, 450);
        }
        let mut used = std::collections::BTreeSet::new();
        let mut on_warm = 0;
        for n in 1..=24u32 {
            let prompt = with_tail(n);
            let r = p
                .route(
                    &unkeyed(100 + u64::from(n), &prompt),
                    &fleet,
                    &NoKvIndex,
                    500,
                )
                .unwrap();
            on_warm += u32::from(r == warm);
            used.insert(r);
        }
        assert!(
            on_warm >= 2,
            "the warm replica takes the start of the burst"
        );
        assert!(used.len() >= 3, "the burst stays on {used:?}");
    }

    #[test]
    fn follows_observed_health() {
        let mut p = policy(3);
        let prompt = vec![1u32; 100];
        let mut fleet: Vec<_> = (0..3).map(|i| obs(i, true)).collect();
        fleet[0].healthy = false;
        fleet[1].healthy = false;
        for id in 0..5 {
            assert_eq!(
                p.route(&req(id, "w", &prompt), &fleet, &NoKvIndex, 0),
                Some(ReplicaId(2))
            );
        }
        // A replica missing from the observation is not used.
        let only01 = vec![obs(0, true), obs(1, true)];
        for id in 5..10 {
            let r = p
                .route(&req(id, "w", &prompt), &only01, &NoKvIndex, 0)
                .unwrap();
            assert_ne!(r, ReplicaId(2));
        }
        let none: Vec<_> = (0..3).map(|i| obs(i, false)).collect();
        assert_eq!(p.route(&req(99, "w", &prompt), &none, &NoKvIndex, 0), None);
    }

    #[test]
    fn a_new_assignment_moves_the_slice() {
        let mut p = policy(4);
        let fleet: Vec<_> = (0..4).map(|i| obs(i, true)).collect();
        let prompt = vec![1u32; 100];
        let only3 = Assignment::uniform(2, &[ReplicaId(3)], 4, 1).unwrap();
        p.set_assignment(only3);
        for id in 0..4 {
            assert_eq!(
                p.route(&req(id, "x", &prompt), &fleet, &NoKvIndex, 0),
                Some(ReplicaId(3))
            );
            p.on_finish(id, None, 0);
        }
    }
}
