//! Sluice's own policy behind the [`RoutingPolicy`] interface: every call drives the live
//! router's [`RouterCore`] (`place`, `progress`, `finish`, `set_checked_health`), so the
//! simulator measures exactly the logic a node runs — MU pricing per replica by its
//! expected prefix cache, slices and subsets, the cost-aware choice and spill, passive
//! health. The prefix-cache size comes from the profile's engine (KV blocks × block size).
//!
//! Until the assigner supplies one, the slice map is `Assignment::uniform` over the
//! replicas (default: 64 slices, subsets of 2); replace it with
//! [`SluicePolicy::set_assignment`]. The replica set is fixed at construction (the core has
//! no way to add replicas); replicas missing from an observation count as unhealthy.

use super::core::{Admission, ReplicaSpec, RouterConfig, RouterCore, Usage};
use super::ledger::RequestId;
use super::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::mu::MuCoefficients;
use crate::profile::Profile;
use crate::slice::{Assignment, AssignmentError, ReplicaId};
use std::collections::HashMap;

/// Shape of the initial uniform assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SluiceOptions {
    /// Replicas per slice.
    pub subset_size: usize,
    pub slice_count: usize,
}

impl Default for SluiceOptions {
    fn default() -> Self {
        Self {
            subset_size: 2,
            slice_count: 64,
        }
    }
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
}

impl SluicePolicy {
    pub fn new(
        coeffs: MuCoefficients,
        config: RouterConfig,
        replicas: &[ReplicaSpec],
        options: SluiceOptions,
    ) -> Result<Self, AssignmentError> {
        let ids: Vec<ReplicaId> = replicas.iter().map(|r| r.id).collect();
        let assignment = Assignment::uniform(1, &ids, options.slice_count, options.subset_size)?;
        Ok(Self {
            core: RouterCore::new(coeffs, config, replicas, assignment),
            ids: HashMap::new(),
            replicas: ids.iter().map(|&id| (id, true)).collect(),
            index: ids.iter().enumerate().map(|(i, &id)| (id, i)).collect(),
            seen: vec![false; ids.len()],
        })
    }

    /// `replicas` of `profile` (its coefficients and capacity), default router config.
    pub fn from_profile(
        profile: &Profile,
        replicas: &[ReplicaId],
        options: SluiceOptions,
    ) -> Result<Self, AssignmentError> {
        let specs: Vec<ReplicaSpec> = replicas
            .iter()
            .map(|&id| ReplicaSpec {
                id,
                capacity_mu_per_min: profile.capacity_mu_per_min,
            })
            .collect();
        let mut config = RouterConfig::default();
        config.affinity.cache_tokens = profile.kv_cache_tokens();
        Self::new(profile.mu, config, &specs, options)
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
        "sluice"
    }

    fn route(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        _kv: &dyn KvIndex,
        now_us: u64,
    ) -> Option<ReplicaId> {
        self.sync_health(fleet);
        let admission = Admission {
            workload: req.workload,
            input_tokens: u32::try_from(req.prompt.len()).unwrap_or(u32::MAX),
            images: req.images,
            max_tokens: req.max_tokens,
            n: 1,
        };
        let placed = self.core.place(&admission, now_us / 1000)?;
        if let Some(old) = self.ids.insert(req.id, placed.id) {
            // A reused route id: the earlier request is over as far as we can tell.
            self.core.finish(old, None);
        }
        Some(placed.replica)
    }

    fn on_progress(&mut self, id: u64, generated: u32, _now_us: u64) {
        if let Some(&pid) = self.ids.get(&id) {
            self.core.progress(pid, generated);
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
        let ids: Vec<ReplicaId> = (0..n).map(ReplicaId).collect();
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

    fn req<'a>(id: u64, workload: &str, prompt: &'a [u32]) -> RouteRequest<'a> {
        RouteRequest {
            id,
            workload: SliceKey::of(workload),
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
