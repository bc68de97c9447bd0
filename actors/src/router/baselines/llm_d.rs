//! llm-d's endpoint picker (the Gateway API Inference Extension EPP with its default
//! scheduling profile): a weighted sum of the queue, KV-cache-utilization and prefix-cache
//! scorers, highest total wins.
//!
//! Sources (kubernetes-sigs/gateway-api-inference-extension, read 2025):
//! - `config/charts/inferencepool/templates/epp-config.yaml`, commit
//!   139eec852f4ab19fb9f246ee9abbdcca3d655d79: the default profile, weights
//!   `queue-scorer` 2, `kv-cache-utilization-scorer` 2, `prefix-cache-scorer` 3 (the same
//!   `default-plugins.yaml` llm-d ships; older charts used 1/1/3 and are not used here).
//! - `pkg/epp/scheduling/framework/plugins/queuescorer/queue.go` (commit a172f54a…):
//!   min-max normalized waiting queue over the candidates, `(max − q) / (max − min)`, 1.0
//!   for everyone when all queues are equal.
//! - `.../kvcacheutilizationscorer/kvcache_utilization.go` (a172f54a…): `1 − KVCacheUsagePercent`.
//! - `.../prefixcachescorer/plugin.go` and `indexer.go` (a172f54a…): the prompt is cut into
//!   `BlockSize` blocks (default 64 characters; with `AutoTune` (default on) the engine's
//!   cache block size × 4 characters per token), at most `MaxPrefixBlocksToMatch` 256
//!   blocks, a trailing partial block ignored, prompts shorter than a block not hashed;
//!   `hash[i] = xxhash64(block i ‖ hash[i−1])` seeded with the model name.
//!   `matchLongestPrefix` walks the hashes from the start, stops at the first hash no
//!   server has, and counts per server the hashes it has; score = count ÷ number of
//!   hashes. After the pick (`PreRequest`) the request's hashes are added to the chosen
//!   server's LRU (capacity `LRUCapacityPerServer` 31,250, or the engine's GPU block count
//!   under AutoTune); evicted hashes leave the hash → servers index. Servers gone from the
//!   pool are dropped every 2 minutes (`CleanUpInactivePods`).
//! - `.../scheduling/framework/scheduler_profile.go`: `total += clamp(score, 0, 1) × weight`;
//!   `.../maxscorepicker/max_score_picker.go`: shuffle, then stable sort by score, so ties
//!   are broken uniformly at random.
//!
//! Adaptations forced by the simulator:
//! - Token ids instead of characters: a block is `block_size_tokens` tokens, by default the
//!   engine's KV block size from [`KvIndex::block_size`] — exactly what AutoTune computes
//!   (engine block size × 4 characters, at 4 characters per token); the source's fixed
//!   64-character default is 16 tokens. Hash: chained xxh3 over token ids.
//! - AutoTune would size each server's LRU from the engine's `CacheNumGPUBlocks` metric,
//!   which a `ReplicaObservation` does not carry: the capacity is the configured
//!   `lru_capacity_per_server` (31,250 by default; set it to the engine's block count to
//!   mimic AutoTune).
//! - Queue and KV usage are `ReplicaObservation::waiting` and `kv_usage` (vLLM's
//!   `num_requests_waiting` and `kv_cache_usage_perc`). Candidates are the healthy
//!   replicas. Seeded SplitMix64 for the tie-breaking shuffle.

use super::common::{chained_block_hashes, Slots, SplitMix64};
use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;
use std::collections::HashMap;

/// The default llm-d scheduling profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmdConfig {
    pub queue_weight: f64,
    pub kv_cache_weight: f64,
    pub prefix_weight: f64,
    /// Tokens per hashed block; `None`: the engine's KV block size (AutoTune).
    pub block_size_tokens: Option<u32>,
    pub max_prefix_blocks: usize,
    pub lru_capacity_per_server: usize,
}

impl Default for LlmdConfig {
    fn default() -> Self {
        Self {
            queue_weight: 2.0,
            kv_cache_weight: 2.0,
            prefix_weight: 3.0,
            block_size_tokens: None,
            max_prefix_blocks: 256,
            lru_capacity_per_server: 31_250,
        }
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct LruNode {
    hash: u64,
    prev: u32,
    next: u32,
}

/// golang-lru's `Cache[BlockHash, struct{}]`: `add` moves an existing key to the front,
/// otherwise inserts it there and evicts the oldest key past capacity.
#[derive(Debug, Clone)]
pub struct LruSet {
    map: HashMap<u64, u32>,
    nodes: Vec<LruNode>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    cap: usize,
}

impl LruSet {
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, h: u64) -> bool {
        self.map.contains_key(&h)
    }

    fn unlink(&mut self, i: u32) {
        let LruNode { prev, next, .. } = self.nodes[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = self.head;
        if self.head != NIL {
            self.nodes[self.head as usize].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// Returns (newly inserted, evicted key).
    pub fn add(&mut self, h: u64) -> (bool, Option<u64>) {
        if let Some(&i) = self.map.get(&h) {
            self.unlink(i);
            self.push_front(i);
            return (false, None);
        }
        let node = LruNode {
            hash: h,
            prev: NIL,
            next: NIL,
        };
        let i = if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.map.insert(h, i);
        self.push_front(i);
        let mut evicted = None;
        if self.map.len() > self.cap {
            let t = self.tail;
            self.unlink(t);
            let old = self.nodes[t as usize].hash;
            self.map.remove(&old);
            self.free.push(t);
            evicted = Some(old);
        }
        (true, evicted)
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.map.keys().copied()
    }
}

#[derive(Debug, Clone)]
pub struct Llmd {
    config: LlmdConfig,
    rng: SplitMix64,
    slots: Slots,
    lrus: Vec<Option<LruSet>>,
    /// hash → servers (slots) whose LRU holds it.
    index: HashMap<u64, Vec<u32>>,
    buf: Vec<u8>,
    hashes: Vec<u64>,
    counts: Vec<u32>,
    touched: Vec<usize>,
    scores: Vec<(usize, f64)>,
    ties: Vec<usize>,
    next_cleanup_us: Option<u64>,
}

/// `PodActiveCheckInterval`.
const CLEANUP_INTERVAL_US: u64 = 120_000_000;

impl Llmd {
    pub fn new(config: LlmdConfig, seed: u64) -> Self {
        Self {
            config,
            rng: SplitMix64::new(seed),
            slots: Slots::default(),
            lrus: Vec::new(),
            index: HashMap::new(),
            buf: Vec::new(),
            hashes: Vec::new(),
            counts: Vec::new(),
            touched: Vec::new(),
            scores: Vec::new(),
            ties: Vec::new(),
            next_cleanup_us: None,
        }
    }

    /// Blocks in `replica`'s LRU.
    pub fn lru_len(&self, replica: ReplicaId) -> usize {
        self.slots
            .slot(replica)
            .and_then(|s| self.lrus.get(s))
            .and_then(|l| l.as_ref())
            .map_or(0, LruSet::len)
    }

    /// Per-replica (queue, kv-cache, prefix) scores of the healthy replicas for `req`,
    /// without routing. For tests and diagnostics.
    pub fn scores(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        kv: &dyn KvIndex,
    ) -> Vec<(ReplicaId, [f64; 3])> {
        self.slots.sync(fleet);
        self.score_into(req, fleet, kv)
    }

    fn remove_pod(&mut self, slot: usize) {
        let Some(lru) = self.lrus.get_mut(slot).and_then(Option::take) else {
            return;
        };
        for h in lru.keys() {
            remove_from_index(&mut self.index, h, slot as u32);
        }
    }

    fn cleanup(&mut self, now_us: u64) {
        match self.next_cleanup_us {
            None => self.next_cleanup_us = Some(now_us.saturating_add(CLEANUP_INTERVAL_US)),
            Some(at) if now_us >= at => {
                let present: Vec<bool> = {
                    let mut p = vec![false; self.slots.len()];
                    for &s in self.slots.map() {
                        p[s] = true;
                    }
                    p
                };
                for (slot, here) in present.into_iter().enumerate() {
                    if !here {
                        self.remove_pod(slot);
                    }
                }
                let periods = (now_us - at) / CLEANUP_INTERVAL_US + 1;
                self.next_cleanup_us = Some(at + periods * CLEANUP_INTERVAL_US);
            }
            Some(_) => {}
        }
    }

    fn block_size(&self, kv: &dyn KvIndex) -> usize {
        self.config
            .block_size_tokens
            .unwrap_or_else(|| kv.block_size())
            .max(1) as usize
    }

    /// Scores of the healthy replicas; leaves the request's hashes in `self.hashes`.
    fn score_into(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        kv: &dyn KvIndex,
    ) -> Vec<(ReplicaId, [f64; 3])> {
        let bs = self.block_size(kv);
        if req.prompt.len() < bs {
            self.hashes.clear();
        } else {
            chained_block_hashes(
                &mut self.buf,
                req.prompt,
                bs,
                self.config.max_prefix_blocks,
                0x11d_0000,
                &mut self.hashes,
            );
        }
        if self.counts.len() < self.slots.len() {
            self.counts.resize(self.slots.len(), 0);
        }
        // matchLongestPrefix.
        for &h in &self.hashes {
            match self.index.get(&h) {
                Some(pods) if !pods.is_empty() => {
                    for &s in pods {
                        let s = s as usize;
                        if s >= self.counts.len() {
                            self.counts.resize(s + 1, 0);
                        }
                        if self.counts[s] == 0 {
                            self.touched.push(s);
                        }
                        self.counts[s] += 1;
                    }
                }
                _ => break,
            }
        }
        let total = self.hashes.len();
        let (mut qmin, mut qmax) = (u32::MAX, 0u32);
        for o in fleet.iter().filter(|o| o.healthy) {
            qmin = qmin.min(o.waiting);
            qmax = qmax.max(o.waiting);
        }
        let mut out = Vec::new();
        for (pos, o) in fleet.iter().enumerate().filter(|(_, o)| o.healthy) {
            let queue = if qmax == qmin {
                1.0
            } else {
                f64::from(qmax - o.waiting) / f64::from(qmax - qmin)
            };
            let kv_score = 1.0 - o.kv_usage;
            let prefix = if total == 0 {
                0.0
            } else {
                f64::from(self.counts[self.slots.map()[pos]]) / total as f64
            };
            out.push((o.id, [queue, kv_score, prefix]));
        }
        for &s in &self.touched {
            self.counts[s] = 0;
        }
        self.touched.clear();
        out
    }
}

fn remove_from_index(index: &mut HashMap<u64, Vec<u32>>, h: u64, slot: u32) {
    if let Some(pods) = index.get_mut(&h) {
        if let Some(i) = pods.iter().position(|&p| p == slot) {
            pods.swap_remove(i);
        }
        if pods.is_empty() {
            index.remove(&h);
        }
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

impl RoutingPolicy for Llmd {
    fn name(&self) -> &'static str {
        "llm-d"
    }

    fn route(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        kv: &dyn KvIndex,
        now_us: u64,
    ) -> Option<ReplicaId> {
        self.slots.sync(fleet);
        if self.lrus.len() < self.slots.len() {
            self.lrus.resize_with(self.slots.len(), || None);
        }
        self.cleanup(now_us);
        if !fleet.iter().any(|o| o.healthy) {
            return None;
        }
        let scored = self.score_into(req, fleet, kv);
        let c = self.config;
        self.scores.clear();
        let mut best = f64::NEG_INFINITY;
        for (pos, (_, [q, k, p])) in fleet
            .iter()
            .enumerate()
            .filter(|(_, o)| o.healthy)
            .map(|(i, _)| i)
            .zip(scored)
        {
            let total = clamp01(q) * c.queue_weight
                + clamp01(k) * c.kv_cache_weight
                + clamp01(p) * c.prefix_weight;
            best = best.max(total);
            self.scores.push((pos, total));
        }
        self.ties.clear();
        self.ties
            .extend(self.scores.iter().filter(|e| e.1 == best).map(|e| e.0));
        let pos = self.ties[self.rng.below(self.ties.len())];

        // PreRequest: record the request's blocks on the chosen server.
        let slot = self.slots.map()[pos];
        let cap = c.lru_capacity_per_server;
        let lru = self.lrus[slot].get_or_insert_with(|| LruSet::new(cap));
        let mut fresh = Vec::new();
        for &h in &self.hashes {
            let (new, evicted) = lru.add(h);
            if new {
                fresh.push(h);
            }
            if let Some(old) = evicted {
                remove_from_index(&mut self.index, old, slot as u32);
            }
        }
        for h in fresh {
            self.index.entry(h).or_default().push(slot as u32);
        }
        Some(fleet[pos].id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::baselines::common::fixtures::{self, prompt, req};
    use crate::router::policy::NoKvIndex;

    fn obs(id: u64, waiting: u32, kv_usage: f64) -> ReplicaObservation {
        ReplicaObservation {
            waiting,
            kv_usage,
            ..fixtures::obs(id)
        }
    }

    #[test]
    fn lru_evicts_the_oldest_and_refreshes_on_add() {
        let mut l = LruSet::new(2);
        assert_eq!(l.add(1), (true, None));
        assert_eq!(l.add(2), (true, None));
        assert_eq!(l.add(1), (false, None)); // 1 is now the newest
        assert_eq!(l.add(3), (true, Some(2)));
        assert!(l.contains(1) && l.contains(3) && !l.contains(2));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn weighted_sum_of_min_max_queue_kv_and_prefix_scores() {
        let mut p = Llmd::new(LlmdConfig::default(), 1);
        let fleet = vec![obs(0, 0, 0.5), obs(1, 10, 0.1), obs(2, 5, 0.9)];
        let short = prompt(1, 8); // below one 16-token block: no prefix score
        let s = p.scores(&req(&short), &fleet, &NoKvIndex);
        let q: Vec<f64> = s.iter().map(|e| e.1[0]).collect();
        assert_eq!(q, vec![1.0, 0.0, 0.5]);
        let k: Vec<f64> = s.iter().map(|e| e.1[1]).collect();
        assert!((k[0] - 0.5).abs() < 1e-12 && (k[1] - 0.9).abs() < 1e-12);
        // Totals: 2·1 + 2·0.5 = 3; 2·0 + 2·0.9 = 1.8; 2·0.5 + 2·0.1 = 1.2.
        assert_eq!(
            p.route(&req(&short), &fleet, &NoKvIndex, 0),
            Some(ReplicaId(0))
        );
        // Equal queues score 1.0 each; kv then decides.
        let flat = vec![obs(0, 3, 0.7), obs(1, 3, 0.2), obs(2, 3, 0.4)];
        let s = p.scores(&req(&short), &flat, &NoKvIndex);
        assert!(s.iter().all(|e| e.1[0] == 1.0));
        assert_eq!(
            p.route(&req(&short), &flat, &NoKvIndex, 0),
            Some(ReplicaId(1))
        );
    }

    #[test]
    fn prefix_scorer_follows_the_blocks_it_routed() {
        let mut p = Llmd::new(LlmdConfig::default(), 1);
        // Replica 1 is best on load, so the first request lands there.
        let fleet = vec![obs(0, 4, 0.5), obs(1, 0, 0.1), obs(2, 4, 0.5)];
        let a = prompt(1, 160); // 10 blocks of 16
        assert_eq!(p.route(&req(&a), &fleet, &NoKvIndex, 0), Some(ReplicaId(1)));
        assert_eq!(p.lru_len(ReplicaId(1)), 10);
        // Now replica 1 is worse on load: queue 1 / 0 / 0, kv 0.5 / 0.4 / 0.5.
        let fleet = vec![obs(0, 0, 0.5), obs(1, 4, 0.6), obs(2, 4, 0.5)];
        // A full match: 0 + 2·0.4 + 3·1 = 3.8 beats the idle replica's 2·1 + 2·0.5 = 3.
        assert_eq!(p.route(&req(&a), &fleet, &NoKvIndex, 0), Some(ReplicaId(1)));
        // Half a match: 0.8 + 3·0.5 = 2.3 loses to 3.
        let mut b = a[..80].to_vec();
        b.extend(prompt(2, 80));
        let s = p.scores(&req(&b), &fleet, &NoKvIndex);
        assert_eq!(s[1].1[2], 0.5);
        assert_eq!(s[0].1[2], 0.0);
        assert_eq!(p.route(&req(&b), &fleet, &NoKvIndex, 0), Some(ReplicaId(0)));
    }

    #[test]
    fn match_counting_stops_at_the_first_unknown_block() {
        let mut p = Llmd::new(
            LlmdConfig {
                lru_capacity_per_server: 4,
                ..LlmdConfig::default()
            },
            1,
        );
        let fleet = vec![obs(0, 0, 0.0), obs(1, 9, 0.9)];
        let a = prompt(1, 48); // 3 blocks
        let c = prompt(2, 48); // 3 other blocks: evicts a's first two
        p.route(&req(&a), &fleet, &NoKvIndex, 0);
        p.route(&req(&c), &fleet, &NoKvIndex, 0);
        assert_eq!(p.lru_len(ReplicaId(0)), 4);
        // a's block 2 is still held, but the walk stops at block 0, so the score is 0.
        let s = p.scores(&req(&a), &fleet, &NoKvIndex);
        assert_eq!(s[0].1[2], 0.0);
    }
}
