//! Consistent hashing with bounded loads (CHWBL) on the prompt prefix, as KubeAI's
//! `PrefixHash` load-balancing strategy does it (Mirrokni, Thorup and Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", SODA 2018).
//!
//! Sources (substratusai/kubeai, read 2025):
//! - `internal/loadbalancer/balance_chwbl.go` (commit 8fbbb358479aed253cc98075af42cf4e5268e2a8):
//!   the ring holds `replication` virtual nodes per endpoint at `xxhash64(name + i)`, sorted;
//!   a request key is hashed, the first virtual node with hash ≥ key is found (wrapping to
//!   0), and the ring is walked clockwise over *all* virtual nodes; the first endpoint seen
//!   is the default, and the first endpoint whose load passes `chwblLoadOK` wins; if none
//!   passes, the default wins. `chwblLoadOK(load, total, n, f)`: true when `total == 0`,
//!   else `load + 1 <= f × (total + 1) / n` (the `+1`s count the new request).
//! - `internal/loadbalancer/group.go` (the `newEndpointGroup(lb v1.LoadBalancing)` version):
//!   key = adapter + prefix; `f = meanLoadPercentage / 100`; in-flight counts are the
//!   balancer's own per-endpoint counters, `total` its group-wide counter (requests still in
//!   flight on endpoints that left the group keep counting), `n` the ready endpoints.
//! - `api/k8s/v1/model_types.go`: defaults `meanLoadFactor` 125 (%), `replication` 256,
//!   `prefixCharLength` 100; `internal/apiutils/request.go`: the prefix is the first
//!   `prefixCharLength` characters of the prompt (`/v1/completions`) or of the first user
//!   message (`/v1/chat/completions`).
//!
//! Adaptations forced by the simulator:
//! - Prompts are token ids, not text: the key is the hash of the first
//!   `prefix_tokens` = 25 tokens (100 characters at ~4 characters per token, the same
//!   ratio GIE's prefix scorer assumes), i.e. the completions-endpoint rule on tokens. We
//!   have no message structure, so a chat system prompt is part of the prefix.
//! - Endpoint names are replica ids: virtual node `i` of replica `r` sits at
//!   `xxh3("{r}{i}")` (the workspace builds xxh3, not xxhash64; ring positions are
//!   pseudo-random either way).
//! - Load is `ReplicaObservation::active_requests`; `total` is its sum over every replica
//!   in the observation (healthy or not), `n` the number of healthy replicas (KubeAI keeps
//!   only ready pods on the ring).
//! - Walking all `replication × n` virtual nodes when no endpoint passes would cost 256k
//!   steps per request at 1,000 replicas; when even the least-loaded healthy replica fails
//!   the bound we return the default (the key's first endpoint) directly, which is exactly
//!   the result of the full walk.

use super::common::Slots;
use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;

/// KubeAI `PrefixHash` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChwblConfig {
    /// `meanLoadPercentage / 100`.
    pub mean_load_factor: f64,
    /// Virtual nodes per endpoint.
    pub replication: u32,
    /// Leading prompt tokens hashed (`prefixCharLength` 100 characters ÷ 4).
    pub prefix_tokens: usize,
}

impl Default for ChwblConfig {
    fn default() -> Self {
        Self {
            mean_load_factor: 1.25,
            replication: 256,
            prefix_tokens: 25,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Chwbl {
    config: ChwblConfig,
    slots: Slots,
    /// Healthy replicas on the ring (by id), to notice membership changes.
    members: Vec<ReplicaId>,
    /// Sorted virtual nodes: (hash, slot).
    ring: Vec<(u64, usize)>,
    /// Fleet position of each slot for the current observation (`usize::MAX` if absent).
    pos_of_slot: Vec<usize>,
    buf: Vec<u8>,
}

impl Chwbl {
    pub fn new(config: ChwblConfig) -> Self {
        Self {
            config,
            slots: Slots::default(),
            members: Vec::new(),
            ring: Vec::new(),
            pos_of_slot: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Hash of a request's key (the first `prefix_tokens` tokens).
    pub fn key_hash(&mut self, prompt: &[u32]) -> u64 {
        let n = prompt.len().min(self.config.prefix_tokens);
        super::common::hash_tokens(&mut self.buf, &prompt[..n], 0)
    }

    fn vnode_hash(id: ReplicaId, i: u32) -> u64 {
        let name = format!("{}{}", id.0, i);
        xxhash_rust::xxh3::xxh3_64(name.as_bytes())
    }

    fn sync(&mut self, fleet: &[ReplicaObservation]) {
        self.slots.sync(fleet);
        self.pos_of_slot.clear();
        self.pos_of_slot.resize(self.slots.len(), usize::MAX);
        for (pos, &slot) in self.slots.map().iter().enumerate() {
            self.pos_of_slot[slot] = pos;
        }
        let same = self
            .members
            .iter()
            .copied()
            .eq(fleet.iter().filter(|o| o.healthy).map(|o| o.id));
        if same {
            return;
        }
        self.members.clear();
        self.members
            .extend(fleet.iter().filter(|o| o.healthy).map(|o| o.id));
        self.ring.clear();
        for &id in &self.members {
            let slot = self.slots.slot(id).expect("synced");
            for i in 0..self.config.replication.max(1) {
                self.ring.push((Self::vnode_hash(id, i), slot));
            }
        }
        // Ties (hash collisions) ordered by slot so the ring is deterministic.
        self.ring.sort_unstable();
    }

    /// Index of the first virtual node at or after `h`, wrapping to 0.
    fn search(&self, h: u64) -> usize {
        let i = self.ring.partition_point(|&(v, _)| v < h);
        if i >= self.ring.len() {
            0
        } else {
            i
        }
    }

    /// Distinct healthy replicas in the clockwise order the walk visits them for `prompt`
    /// (after a `route` has synced the ring). For tests and diagnostics.
    pub fn clockwise(&mut self, prompt: &[u32]) -> Vec<ReplicaId> {
        let mut out = Vec::new();
        if self.ring.is_empty() {
            return out;
        }
        let h = self.key_hash(prompt);
        let start = self.search(h);
        for n in 0..self.ring.len() {
            let id = self.slots.id(self.ring[(start + n) % self.ring.len()].1);
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}

/// KubeAI's `chwblLoadOK`.
pub fn load_ok(load: u64, total: u64, n: usize, factor: f64) -> bool {
    if total == 0 {
        return true;
    }
    let avg = (total + 1) as f64 / n as f64;
    (load + 1) as f64 <= avg * factor
}

impl RoutingPolicy for Chwbl {
    fn name(&self) -> &'static str {
        "chwbl"
    }

    fn route(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        _kv: &dyn KvIndex,
        _now_us: u64,
    ) -> Option<ReplicaId> {
        self.sync(fleet);
        if self.ring.is_empty() {
            return None;
        }
        let total: u64 = fleet.iter().map(|o| u64::from(o.active_requests)).sum();
        let n = self.members.len();
        let factor = self.config.mean_load_factor;
        let h = self.key_hash(req.prompt);
        let start = self.search(h);
        let load_of = |slot: usize| u64::from(fleet[self.pos_of_slot[slot]].active_requests);
        let default = self.ring[start].1;
        let min_load = fleet
            .iter()
            .filter(|o| o.healthy)
            .map(|o| u64::from(o.active_requests))
            .min()
            .unwrap_or(0);
        if !load_ok(min_load, total, n, factor) {
            // No endpoint can pass: the full walk would end on the default.
            return Some(self.slots.id(default));
        }
        let len = self.ring.len();
        for step in 0..len {
            let slot = self.ring[(start + step) % len].1;
            if load_ok(load_of(slot), total, n, factor) {
                return Some(self.slots.id(slot));
            }
        }
        Some(self.slots.id(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::baselines::common::fixtures::{self, req};
    use crate::router::policy::NoKvIndex;

    fn obs(id: u64, healthy: bool, active: u32) -> ReplicaObservation {
        ReplicaObservation {
            healthy,
            active_requests: active,
            ..fixtures::obs(id)
        }
    }

    #[test]
    fn load_bound_matches_kubeai() {
        // total 0: always fine.
        assert!(load_ok(5, 0, 4, 1.25));
        // 4 endpoints, 8 in flight: threshold 1.25 × 9/4 = 2.8125.
        assert!(load_ok(1, 8, 4, 1.25));
        assert!(!load_ok(2, 8, 4, 1.25));
    }

    #[test]
    fn equal_prefixes_stick_until_the_bound_then_walk_clockwise() {
        let mut p = Chwbl::new(ChwblConfig::default());
        let prompt: Vec<u32> = (0..200).collect();
        let mut other = prompt.clone();
        other[150] = 7; // differs only after the 25-token prefix
        let mut fleet: Vec<_> = (0..6).map(|i| obs(i, true, 0)).collect();
        let first = p.route(&req(&prompt), &fleet, &NoKvIndex, 0).unwrap();
        assert_eq!(p.route(&req(&other), &fleet, &NoKvIndex, 0), Some(first));
        let order = p.clockwise(&prompt);
        assert_eq!(order[0], first);
        assert_eq!(order.len(), 6);

        // Everyone has some load; the owner is still within 1.25 × average.
        for o in &mut fleet {
            o.active_requests = 4;
        }
        let i0 = first.0 as usize;
        // Owner at 5: total 25, threshold 1.25 × 26/6 = 5.42 < 5 + 1, so the owner is over
        // the bound and the next clockwise replica (4 + 1 ≤ 5.42) takes the request.
        fleet[i0].active_requests = 5;
        assert_eq!(
            p.route(&req(&prompt), &fleet, &NoKvIndex, 0),
            Some(order[1])
        );
        // Owner 7, next 9: total 32, threshold 6.875; both fail and the walk goes on.
        fleet[i0].active_requests = 7;
        fleet[order[1].0 as usize].active_requests = 9;
        assert_eq!(
            p.route(&req(&prompt), &fleet, &NoKvIndex, 0),
            Some(order[2])
        );
        // Owner back to 3: total 28, threshold 6.04 ≥ 4: the owner again.
        fleet[i0].active_requests = 3;
        assert_eq!(p.route(&req(&prompt), &fleet, &NoKvIndex, 0), Some(first));
    }

    #[test]
    fn bound_collapse_falls_back_to_the_owner() {
        // 1,000 endpoints and one request in flight: 1.25 × 2/1000 < 1, nobody passes,
        // and KubeAI returns the default endpoint (the key's owner).
        let mut p = Chwbl::new(ChwblConfig::default());
        let mut fleet: Vec<_> = (0..1000).map(|i| obs(i, true, 0)).collect();
        let prompt: Vec<u32> = (0..30).collect();
        let owner = p.route(&req(&prompt), &fleet, &NoKvIndex, 0).unwrap();
        fleet[owner.0 as usize].active_requests = 1;
        assert_eq!(p.route(&req(&prompt), &fleet, &NoKvIndex, 0), Some(owner));
    }

    #[test]
    fn unhealthy_replicas_leave_the_ring() {
        let mut p = Chwbl::new(ChwblConfig::default());
        let mut fleet: Vec<_> = (0..4).map(|i| obs(i, true, 0)).collect();
        let prompt: Vec<u32> = (5..40).collect();
        let owner = p.route(&req(&prompt), &fleet, &NoKvIndex, 0).unwrap();
        let order = p.clockwise(&prompt);
        fleet[owner.0 as usize].healthy = false;
        assert_eq!(
            p.route(&req(&prompt), &fleet, &NoKvIndex, 0),
            Some(order[1])
        );
        for o in &mut fleet {
            o.healthy = false;
        }
        assert_eq!(p.route(&req(&prompt), &fleet, &NoKvIndex, 0), None);
    }
}
