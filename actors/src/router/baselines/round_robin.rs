//! Round-robin over the healthy replicas.
//!
//! Source: SGLang router, `sgl-router/src/policies/round_robin.rs` (sgl-project/sglang,
//! commit 098565a656b3a2187c728aa5e65d5c636a13c61d, read 2025). A counter incremented on
//! every routed request, taken modulo the number of healthy workers, indexes the healthy
//! workers in list order. No parameters.

use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;

#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    counter: usize,
    healthy: Vec<usize>,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RoutingPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
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
        let count = self.counter;
        self.counter = self.counter.wrapping_add(1);
        Some(fleet[self.healthy[count % self.healthy.len()]].id)
    }
}
