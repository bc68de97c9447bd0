//! Power of two choices on in-flight requests (Mitzenmacher, "The Power of Two Choices in
//! Randomized Load Balancing", 2001; the default of Ray Serve's request router).
//!
//! Source followed line by line: SGLang router, `sgl-router/src/policies/power_of_two.rs`
//! (sgl-project/sglang, commit b6f20641ad6bafc1278db74d1e13b0e9da47bd64, read 2025):
//! one healthy worker → it; otherwise draw two *distinct* uniform indices into the
//! healthy workers (redraw the second until it differs) and take the first unless the
//! second has strictly lower load (`load1 <= load2` keeps the first). Load is the router's
//! in-flight count (`ReplicaObservation::active_requests`). Seeded SplitMix64 instead of
//! the thread RNG. No parameters.

use super::common::SplitMix64;
use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;

#[derive(Debug, Clone)]
pub struct PowerOfTwo {
    rng: SplitMix64,
    healthy: Vec<usize>,
}

impl PowerOfTwo {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            healthy: Vec::new(),
        }
    }
}

impl RoutingPolicy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "p2c"
    }

    fn route(
        &mut self,
        _req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        _kv: &dyn KvIndex,
        _now_us: u64,
    ) -> Option<ReplicaId> {
        super::common::healthy_positions(fleet, &mut self.healthy);
        let n = self.healthy.len();
        match n {
            0 => return None,
            1 => return Some(fleet[self.healthy[0]].id),
            _ => {}
        }
        let i1 = self.rng.below(n);
        let mut i2 = self.rng.below(n);
        while i2 == i1 {
            i2 = self.rng.below(n);
        }
        let (a, b) = (&fleet[self.healthy[i1]], &fleet[self.healthy[i2]]);
        Some(if a.active_requests <= b.active_requests {
            a.id
        } else {
            b.id
        })
    }
}
