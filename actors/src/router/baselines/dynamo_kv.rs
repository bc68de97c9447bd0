//! NVIDIA Dynamo's KV router: cost = `overlap_score_weight × potential prefill blocks +
//! potential active blocks`, argmin (or softmax sampling with a temperature).
//!
//! Sources (ai-dynamo/dynamo, `lib/llm/src/kv_router/`, the mid-2025 generation, v0.3–v0.4,
//! read through the code index; the index does not name the commit of these two file
//! versions, so they are identified by content):
//! - `sequence.rs`, the `ActiveSequences` version with `add_request(request_id,
//!   token_sequence, overlap)`, `push(request_id, tokens)` and `free(request_id)`, and
//!   `UniqueBlock::{FullBlock(hash), PartialBlock(uuid)}`: per worker, the router tracks
//!   the requests *it* routed. `active_blocks` = distinct blocks over the worker's active
//!   requests: full prompt blocks are shared by their chained sequence hash, every
//!   request's trailing partial block is unique. `active_tokens` = Σ prefill tokens
//!   (`isl − overlap × block_size`) of requests not yet decoding, plus 1 per decoding
//!   request: the first pushed output token swaps a request's prefill tokens for 1. Each
//!   pushed token that starts a new block (`total % block_size == 1`) turns the partial
//!   block into a full block and opens a new partial one, so decode blocks grow with the
//!   output. `free` releases everything. `potential_blocks_and_tokens` for a request =
//!   (`new_blocks(seq) + active_blocks`, `new_tokens(isl, overlap) + active_tokens`), where
//!   `new_blocks` counts the request's blocks not active on the worker (its partial block
//!   is always new).
//! - `scheduler.rs`, `DefaultWorkerSelector::select_worker` and `softmax_sample`: per
//!   worker, `logit = overlap_score_weight × potential_prefill_tokens / block_size +
//!   potential_blocks`; temperature 0 → a uniformly random worker among those with the
//!   minimum logit; temperature > 0 → values divided by `(max − min)`, negated, divided by
//!   the temperature, softmaxed and sampled (uniform if all equal). The chosen request is
//!   then `add_request`ed with its overlap on the chosen worker.
//! - Defaults (`KvRouterConfig`, docs `kv_cache_routing.md`): `overlap_score_weight` 1.0,
//!   `router_temperature` 0.0. Newer Dynamo (late 2025 on) also discounts host/disk-tier
//!   hits, decays output blocks by expected output length and adds an active-request term;
//!   this module implements the mid-2025 form above.
//!
//! Adaptations forced by the simulator:
//! - Overlap (cached leading blocks per worker) comes from [`KvIndex::overlap_blocks`], the
//!   engines' real prefix-cache state, in place of the KV-event indexer; the block size is
//!   [`KvIndex::block_size`] (Dynamo uses the engine's KV block size).
//! - `RoutingPolicy::on_progress` reports a count of generated tokens, not the token ids,
//!   so output blocks are counted but never shared between requests (Dynamo would hash
//!   them and share them only with another active request on the same worker whose prompt
//!   already contains this output, which is rare). Prompt blocks are hashed with chained
//!   xxh3 over token ids, like Dynamo's sequence hashes.
//! - `new_blocks` is computed from the prefix property of chained hashes (if a worker holds
//!   block i of the request it holds blocks 0..i) with a binary search per worker, which
//!   gives the same count as Dynamo's block-by-block lookup in O(log n) lookups.
//! - Only healthy replicas are candidates (Dynamo drops workers that leave discovery). The
//!   source's thread RNG is a seeded SplitMix64.

use super::common::{chained_block_hashes, Slots, SplitMix64};
use crate::router::core::Usage;
use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;
use std::collections::HashMap;

/// `KvRouterConfig` fields this policy uses, with Dynamo's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamoConfig {
    pub overlap_score_weight: f64,
    pub router_temperature: f64,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        Self {
            overlap_score_weight: 1.0,
            router_temperature: 0.0,
        }
    }
}

/// One worker's `ActiveSequences`.
#[derive(Debug, Clone, Default)]
struct WorkerSeqs {
    /// Full prompt blocks of active requests → number of requests holding them.
    blocks: HashMap<u64, u32>,
    active_blocks: u64,
    active_tokens: u64,
}

#[derive(Debug, Clone)]
struct Active {
    slot: usize,
    /// Chained hashes of the full prompt blocks.
    hashes: Vec<u64>,
    prompt_full: u64,
    /// The request holds a (unique) partial block.
    partial: bool,
    /// Full blocks completed by output tokens (unique to the request).
    output_full: u64,
    /// Prompt plus pushed output tokens.
    total: u64,
    generated: u32,
    /// Prefill tokens still counted in `active_tokens` (until the first output token).
    prefill: Option<u64>,
    /// Block size at admission (so `on_progress` needs no `KvIndex`).
    bs: u64,
}

#[derive(Debug, Clone)]
pub struct DynamoKv {
    config: DynamoConfig,
    rng: SplitMix64,
    slots: Slots,
    workers: Vec<WorkerSeqs>,
    active: HashMap<u64, Active>,
    buf: Vec<u8>,
    hashes: Vec<u64>,
    logits: Vec<(usize, f64, u32)>,
    ties: Vec<usize>,
}

impl DynamoKv {
    pub fn new(config: DynamoConfig, seed: u64) -> Self {
        Self {
            config,
            rng: SplitMix64::new(seed),
            slots: Slots::default(),
            workers: Vec::new(),
            active: HashMap::new(),
            buf: Vec::new(),
            hashes: Vec::new(),
            logits: Vec::new(),
            ties: Vec::new(),
        }
    }

    /// (active blocks, active tokens) the router tracks for `replica`.
    pub fn load(&self, replica: ReplicaId) -> (u64, u64) {
        self.slots
            .slot(replica)
            .and_then(|s| self.workers.get(s))
            .map_or((0, 0), |w| (w.active_blocks, w.active_tokens))
    }

    /// Requests being tracked.
    pub fn in_flight(&self) -> usize {
        self.active.len()
    }

    /// Leading prompt blocks of the current request active on worker `w`.
    fn active_depth(w: &WorkerSeqs, hashes: &[u64]) -> usize {
        if w.blocks.is_empty() || hashes.is_empty() || !w.blocks.contains_key(&hashes[0]) {
            return 0;
        }
        // Largest d with hashes[..d] all active: binary search on the prefix property.
        let (mut lo, mut hi) = (1usize, hashes.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if w.blocks.contains_key(&hashes[mid - 1]) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    fn add_request(&mut self, id: u64, slot: usize, isl: u64, overlap: u32, bs: u64) {
        let prefill = isl.saturating_sub(u64::from(overlap) * bs);
        let w = &mut self.workers[slot];
        w.active_tokens += prefill;
        for &h in &self.hashes {
            let c = w.blocks.entry(h).or_insert(0);
            *c += 1;
            if *c == 1 {
                w.active_blocks += 1;
            }
        }
        let partial = !isl.is_multiple_of(bs);
        if partial {
            w.active_blocks += 1;
        }
        let prompt_full = self.hashes.len() as u64;
        let prev = self.active.insert(
            id,
            Active {
                slot,
                hashes: self.hashes.clone(),
                prompt_full,
                partial,
                output_full: 0,
                total: isl,
                generated: 0,
                prefill: Some(prefill),
                bs,
            },
        );
        if let Some(old) = prev {
            // A reused id: the source ignores duplicate adds; free the old one instead so
            // no state leaks.
            self.release(old);
        }
    }

    fn release(&mut self, a: Active) {
        let Some(w) = self.workers.get_mut(a.slot) else {
            return;
        };
        w.active_tokens = w.active_tokens.saturating_sub(a.prefill.unwrap_or(1));
        for h in &a.hashes {
            if let Some(c) = w.blocks.get_mut(h) {
                *c -= 1;
                if *c == 0 {
                    w.blocks.remove(h);
                    w.active_blocks = w.active_blocks.saturating_sub(1);
                }
            }
        }
        let unique = a.output_full + u64::from(a.partial);
        w.active_blocks = w.active_blocks.saturating_sub(unique);
    }

    fn block_size(kv: &dyn KvIndex) -> u64 {
        u64::from(kv.block_size().max(1))
    }
}

impl RoutingPolicy for DynamoKv {
    fn name(&self) -> &'static str {
        "dynamo-kv"
    }

    fn route(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        kv: &dyn KvIndex,
        _now_us: u64,
    ) -> Option<ReplicaId> {
        self.slots.sync(fleet);
        if self.workers.len() < self.slots.len() {
            self.workers
                .resize_with(self.slots.len(), WorkerSeqs::default);
        }
        let bs = Self::block_size(kv);
        let isl = req.prompt.len() as u64;
        chained_block_hashes(
            &mut self.buf,
            req.prompt,
            bs as usize,
            usize::MAX,
            0x00d1_7a40,
            &mut self.hashes,
        );
        let n_full = self.hashes.len() as u64;
        let partial_new = u64::from(!isl.is_multiple_of(bs));
        let weight = self.config.overlap_score_weight;

        self.logits.clear();
        for (pos, o) in fleet.iter().enumerate().filter(|(_, o)| o.healthy) {
            let slot = self.slots.map()[pos];
            let w = &self.workers[slot];
            let overlap = kv.overlap_blocks(o.id, req.prompt);
            let new_tokens = isl.saturating_sub(u64::from(overlap) * bs);
            let prefill_tokens = w.active_tokens + new_tokens;
            let depth = Self::active_depth(w, &self.hashes) as u64;
            let blocks = w.active_blocks + (n_full - depth) + partial_new;
            let logit = weight * (prefill_tokens as f64 / bs as f64) + blocks as f64;
            self.logits.push((pos, logit, overlap));
        }
        if self.logits.is_empty() {
            return None;
        }

        let temperature = self.config.router_temperature;
        let chosen = if temperature == 0.0 {
            let min = self
                .logits
                .iter()
                .fold(f64::INFINITY, |m, &(_, l, _)| m.min(l));
            self.ties.clear();
            self.ties.extend(
                self.logits
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.1 == min)
                    .map(|(i, _)| i),
            );
            self.ties[self.rng.below(self.ties.len())]
        } else {
            softmax_sample(&self.logits, temperature, self.rng.unit_f64())
        };
        let (pos, _, overlap) = self.logits[chosen];
        let slot = self.slots.map()[pos];
        self.add_request(req.id, slot, isl, overlap, bs);
        Some(fleet[pos].id)
    }

    fn on_progress(&mut self, id: u64, generated: u32, _now_us: u64) {
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        if generated <= a.generated {
            return;
        }
        let delta = u64::from(generated - a.generated);
        a.generated = generated;
        let Some(w) = self.workers.get_mut(a.slot) else {
            return;
        };
        let bs = a.bs;
        // The first output token: prefill tokens give way to one decoding token.
        if let Some(p) = a.prefill.take() {
            w.active_tokens = w.active_tokens.saturating_sub(p) + 1;
        }
        let (t0, t1) = (a.total, a.total + delta);
        a.total = t1;
        // Tokens t in (t0, t1] with t % bs == 1 start a new block: t = m·bs + 1.
        let m_lo = t0.div_ceil(bs);
        let m_hi = (t1 - 1) / bs;
        if m_hi < m_lo {
            return;
        }
        // Each crossing completes block m (new and unique iff it is past the prompt's full
        // blocks) and opens a fresh partial block.
        let first_new = m_lo.max(a.prompt_full + 1);
        let new_full = if m_hi >= first_new {
            m_hi - first_new + 1
        } else {
            0
        };
        a.output_full += new_full;
        w.active_blocks += new_full;
        if !a.partial {
            a.partial = true;
            w.active_blocks += 1;
        }
    }

    fn on_finish(&mut self, id: u64, _usage: Option<Usage>, _now_us: u64) {
        if let Some(a) = self.active.remove(&id) {
            self.release(a);
        }
    }
}

/// Dynamo's `softmax_sample` over `(position, logit, overlap)` entries, given a uniform
/// draw `u` in [0, 1); returns an index into `logits`.
pub fn softmax_sample(logits: &[(usize, f64, u32)], temperature: f64, u: f64) -> usize {
    let min = logits.iter().fold(f64::INFINITY, |m, e| m.min(e.1));
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, e| m.max(e.1));
    let n = logits.len();
    let probs: Vec<f64> = if min == max {
        vec![1.0 / n as f64; n]
    } else {
        let scaled: Vec<f64> = logits
            .iter()
            .map(|e| -(e.1 / (max - min)) / temperature)
            .collect();
        let top = scaled.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let exps: Vec<f64> = scaled.iter().map(|v| (v - top).exp()).collect();
        let sum: f64 = exps.iter().sum();
        exps.iter().map(|v| v / sum).collect()
    };
    let mut cum = 0.0;
    for (i, p) in probs.iter().enumerate() {
        cum += p;
        if u <= cum {
            return i;
        }
    }
    n - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::baselines::common::fixtures::{self, prompt};
    use proptest::prelude::*;

    /// A `KvIndex` with a fixed number of cached leading blocks per replica.
    struct FakeKv {
        bs: u32,
        overlaps: HashMap<ReplicaId, u32>,
    }

    impl KvIndex for FakeKv {
        fn block_size(&self) -> u32 {
            self.bs
        }
        fn overlap_blocks(&self, replica: ReplicaId, prompt: &[u32]) -> u32 {
            let full = prompt.len() as u32 / self.bs;
            self.overlaps.get(&replica).copied().unwrap_or(0).min(full)
        }
    }

    fn kv(bs: u32, overlaps: &[(u64, u32)]) -> FakeKv {
        FakeKv {
            bs,
            overlaps: overlaps.iter().map(|&(r, o)| (ReplicaId(r), o)).collect(),
        }
    }

    fn obs(id: u64, healthy: bool) -> ReplicaObservation {
        ReplicaObservation {
            healthy,
            ..fixtures::obs(id)
        }
    }

    fn req(id: u64, prompt: &[u32]) -> RouteRequest<'_> {
        RouteRequest {
            id,
            ..fixtures::req(prompt)
        }
    }

    #[test]
    fn picks_the_argmin_of_weighted_prefill_plus_active_blocks() {
        let mut p = DynamoKv::new(DynamoConfig::default(), 1);
        let fleet = vec![obs(0, true), obs(1, true)];
        let p1 = prompt(1, 64);
        let k = kv(16, &[(0, 3)]);
        // w0: 16/16 + 4 = 5; w1: 64/16 + 4 = 8.
        assert_eq!(p.route(&req(1, &p1), &fleet, &k, 0), Some(ReplicaId(0)));
        assert_eq!(p.load(ReplicaId(0)), (4, 16));
        // A new prompt: w0 (16 + 64)/16 + 4 + 4 = 13; w1 64/16 + 4 = 8.
        let p2 = prompt(2, 64);
        assert_eq!(
            p.route(&req(2, &p2), &fleet, &kv(16, &[]), 0),
            Some(ReplicaId(1))
        );
        assert_eq!(p.load(ReplicaId(1)), (4, 64));
        // `p1` again: w0 (16 + 16)/16 + 4 (its blocks are already active) = 6;
        // w1 (64 + 64)/16 + 4 + 4 = 16.
        assert_eq!(p.route(&req(3, &p1), &fleet, &k, 0), Some(ReplicaId(0)));
        assert_eq!(p.load(ReplicaId(0)), (4, 32));
        for id in 1..=3 {
            p.on_finish(id, None, 0);
        }
        assert_eq!(p.load(ReplicaId(0)), (0, 0));
        assert_eq!(p.load(ReplicaId(1)), (0, 0));
    }

    #[test]
    fn overlap_weight_trades_prefill_against_decode_load() {
        let run = |weight: f64| {
            let mut p = DynamoKv::new(
                DynamoConfig {
                    overlap_score_weight: weight,
                    router_temperature: 0.0,
                },
                1,
            );
            let fleet = vec![obs(0, true), obs(1, true)];
            // A decoding request on w0: 8 prompt blocks + a partial output block, 1 token.
            let busy = prompt(9, 128);
            let only_w0 = vec![obs(0, true), obs(1, false)];
            p.route(&req(1, &busy), &only_w0, &kv(16, &[]), 0);
            p.on_progress(1, 1, 0);
            assert_eq!(p.load(ReplicaId(0)), (9, 1));
            // `p1` is 3/4 cached on w0.
            let p1 = prompt(1, 64);
            p.route(&req(2, &p1), &fleet, &kv(16, &[(0, 3)]), 0)
        };
        // weight 1: w0 1.0625 + 13 = 14.06 vs w1 4 + 4 = 8.
        assert_eq!(run(1.0), Some(ReplicaId(1)));
        // weight 4: w0 4.25 + 13 = 17.25 vs w1 16 + 4 = 20.
        assert_eq!(run(4.0), Some(ReplicaId(0)));
    }

    #[test]
    fn active_blocks_and_tokens_follow_dynamos_sequence_tracker() {
        // The scenario of Dynamo's `test_shared_sequence_manager_operations`, block size 4.
        let mut p = DynamoKv::new(DynamoConfig::default(), 1);
        let one = vec![obs(0, true)];
        let k = kv(4, &[(0, 1)]);
        p.route(&req(0, &[0, 1, 2]), &one, &kv(4, &[]), 0);
        assert_eq!(p.load(ReplicaId(0)), (1, 3)); // one partial block, 3 prefill tokens
        p.on_progress(0, 2, 0); // tokens 3 and 4: block [0,1,2,3] completes
        assert_eq!(p.load(ReplicaId(0)), (2, 1));
        // Request 1, [0..7) with one cached block: 3 prefill tokens. Dynamo shares block
        // [0,1,2,3] with request 0's output (3 blocks); we count output blocks as unique.
        p.route(&req(1, &[0, 1, 2, 3, 4, 5, 6]), &one, &k, 0);
        assert_eq!(p.load(ReplicaId(0)), (4, 4));
        p.on_finish(1, None, 0);
        assert_eq!(p.load(ReplicaId(0)), (2, 1));
        // Decode grows a block every `block_size` tokens.
        p.on_progress(0, 6, 0); // total 9: block [4..8) completes, a new partial opens
        assert_eq!(p.load(ReplicaId(0)), (3, 1));
        p.on_progress(0, 6, 0); // no news
        assert_eq!(p.load(ReplicaId(0)), (3, 1));
        p.on_finish(0, None, 0);
        assert_eq!(p.load(ReplicaId(0)), (0, 0));
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn shared_prompt_blocks_count_once() {
        let mut p = DynamoKv::new(DynamoConfig::default(), 1);
        let one = vec![obs(0, true)];
        let a = prompt(1, 64);
        let mut b = a[..32].to_vec();
        b.extend(prompt(2, 40));
        p.route(&req(1, &a), &one, &kv(16, &[]), 0);
        p.route(&req(2, &b), &one, &kv(16, &[]), 0);
        // a: 4 full; b: 2 shared + 2 new full + 1 partial.
        assert_eq!(p.load(ReplicaId(0)).0, 4 + 2 + 1);
    }

    #[test]
    fn softmax_sampling_matches_the_source() {
        let logits = vec![(0, 1.0, 0), (1, 2.0, 0)];
        // Normalized by (max − min) = 1: exp(-1/T) vs exp(-2/T); T = 1 → p0 = 0.731.
        assert_eq!(softmax_sample(&logits, 1.0, 0.70), 0);
        assert_eq!(softmax_sample(&logits, 1.0, 0.75), 1);
        let equal = vec![(0, 3.0, 0), (1, 3.0, 0), (2, 3.0, 0)];
        assert_eq!(softmax_sample(&equal, 0.5, 0.5), 1);
    }

    proptest! {
        #[test]
        fn tracking_returns_to_zero(ops in prop::collection::vec((0u32..3, 1usize..80, 0u32..40, 0u8..2), 1..40), bs in 2u32..20) {
            let mut p = DynamoKv::new(DynamoConfig::default(), 5);
            let fleet = vec![obs(0, true), obs(1, true)];
            let k = kv(bs, &[(0, 2), (1, 1)]);
            for (i, (family, len, gen, _)) in ops.iter().enumerate() {
                let text: Vec<u32> = (0..*len as u32).map(|t| family * 1000 + t).collect();
                p.route(&req(i as u64, &text), &fleet, &k, 0);
                p.on_progress(i as u64, *gen, 0);
            }
            for (i, (_, _, _, early)) in ops.iter().enumerate() {
                if *early == 1 {
                    p.on_finish(i as u64, None, 0);
                }
            }
            for i in 0..ops.len() {
                p.on_finish(i as u64, None, 0);
            }
            prop_assert_eq!(p.load(ReplicaId(0)), (0, 0));
            prop_assert_eq!(p.load(ReplicaId(1)), (0, 0));
        }
    }
}
