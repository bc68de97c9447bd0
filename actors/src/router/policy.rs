//! The interface every routing policy implements — Sluice's own and the baselines it is
//! measured against — so that the simulator runs them all on the same trace, fleet and
//! engine model, and the live router can run any of them.

use super::core::Usage;
use crate::slice::{ReplicaId, SliceKey};

/// A request as a router sees it at admission.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Unique per router; later `on_progress`/`on_finish` calls name it.
    pub id: u64,
    /// Hash of the workload key (session, user, API key); `None` when the request
    /// carries none.
    pub workload: Option<SliceKey>,
    /// The prompt's token ids (what prefix-aware policies hash).
    pub prompt: &'a [u32],
    pub max_tokens: Option<u32>,
    pub images: u32,
}

/// What a router can observe about one replica: its own accounting, plus the gauges
/// an engine exports on `/metrics` (vLLM's `num_requests_waiting`, `kv_cache_usage_perc`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaObservation {
    pub id: ReplicaId,
    pub healthy: bool,
    pub capacity_mu_per_min: f64,
    /// Requests this router sent to the replica that have not finished.
    pub active_requests: u32,
    /// Requests waiting in the engine's queue.
    pub waiting: u32,
    /// Fraction of the engine's KV cache in use (0..=1).
    pub kv_usage: f64,
}

/// The engines' real prefix-cache state, for policies that consume KV-cache events
/// (Dynamo's KV router). In the simulator it reads the engine models directly.
pub trait KvIndex {
    /// Tokens per KV block of the engines.
    fn block_size(&self) -> u32;
    /// Leading full blocks of `prompt` that `replica` holds in its prefix cache.
    fn overlap_blocks(&self, replica: ReplicaId, prompt: &[u32]) -> u32;
}

/// A `KvIndex` that knows nothing: for live routers without KV events.
pub struct NoKvIndex;

impl KvIndex for NoKvIndex {
    fn block_size(&self) -> u32 {
        16
    }
    fn overlap_blocks(&self, _: ReplicaId, _: &[u32]) -> u32 {
        0
    }
}

/// A routing policy: a deterministic state machine fed with explicit clock values.
pub trait RoutingPolicy {
    fn name(&self) -> &'static str;

    /// Picks the replica for `req`, or `None` when no replica is usable. A policy that
    /// returns `Some` has admitted the request and will hear its `on_finish`.
    fn route(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        kv: &dyn KvIndex,
        now_us: u64,
    ) -> Option<ReplicaId>;

    /// `generated` output tokens of request `id` have streamed back.
    fn on_progress(&mut self, _id: u64, _generated: u32, _now_us: u64) {}

    /// Request `id` is over (usage when it completed, `None` when it failed).
    fn on_finish(&mut self, _id: u64, _usage: Option<Usage>, _now_us: u64) {}
}
