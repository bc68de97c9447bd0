//! Fewest in-flight requests.
//!
//! Source: AIBrix gateway, `pkg/plugins/gateway/algorithms/least_request.go`
//! (vllm-project/aibrix, commit 4ad2966f7e2769535a09d3137ee1b253ca17ed33, read 2025),
//! `selectTargetPodWithLeastRequestCount`: among the ready pods, the minimum of the
//! gateway's own running-request count (`RealtimeNumRequestsRunning`, tracked locally by
//! the gateway), ties broken uniformly at random. LiteLLM's `least-busy` is the same rule.
//! Load is `ReplicaObservation::active_requests` (this router's in-flight count). The
//! source's thread RNG is replaced by a seeded SplitMix64. No parameters.

use super::common::SplitMix64;
use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;

#[derive(Debug, Clone)]
pub struct LeastRequests {
    rng: SplitMix64,
    ties: Vec<usize>,
}

impl LeastRequests {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            ties: Vec::new(),
        }
    }
}

impl RoutingPolicy for LeastRequests {
    fn name(&self) -> &'static str {
        "least-requests"
    }

    fn route(
        &mut self,
        _req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        _kv: &dyn KvIndex,
        _now_us: u64,
    ) -> Option<ReplicaId> {
        let mut min = u32::MAX;
        self.ties.clear();
        for (i, o) in fleet.iter().enumerate().filter(|(_, o)| o.healthy) {
            if o.active_requests < min {
                min = o.active_requests;
                self.ties.clear();
                self.ties.push(i);
            } else if o.active_requests == min {
                self.ties.push(i);
            }
        }
        if self.ties.is_empty() {
            return None;
        }
        let pick = self.ties[self.rng.below(self.ties.len())];
        Some(fleet[pick].id)
    }
}
