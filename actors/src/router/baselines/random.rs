//! Uniformly random healthy replica.
//!
//! Source: SGLang router, `sgl-router/src/policies/random.rs` (sgl-project/sglang, commit
//! b4ea46ff7ae6a4e0da370929cb87a7f50f35d544, read 2025): a uniform index into the healthy
//! workers. The source draws from a thread RNG; we draw from a seeded SplitMix64 so runs
//! are reproducible. No parameters.

use super::common::SplitMix64;
use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;

#[derive(Debug, Clone)]
pub struct Random {
    rng: SplitMix64,
    healthy: Vec<usize>,
}

impl Random {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            healthy: Vec::new(),
        }
    }
}

impl RoutingPolicy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn route(
        &mut self,
        _req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        _kv: &dyn KvIndex,
        _now_us: u64,
    ) -> Option<ReplicaId> {
        super::common::healthy_positions(fleet, &mut self.healthy);
        if self.healthy.is_empty() {
            return None;
        }
        let i = self.rng.below(self.healthy.len());
        Some(fleet[self.healthy[i]].id)
    }
}
