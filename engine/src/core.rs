//! The pure engine core: a deterministic model of a vLLM-style continuous-batching server
//! on one GPU. No I/O, no clocks, no randomness: the caller passes the time (`now_us`,
//! microseconds on the caller's clock) and carries out the outcome of each step.
//!
//! # Driving it
//!
//! ```
//! use sluice_engine::core::{EngineCore, EngineRequest, RequestId};
//! use sluice_engine::EngineParams;
//!
//! let mut core = EngineCore::new(EngineParams::default());
//! core.add_request(EngineRequest::new(RequestId(1), vec![7; 300], 8, 8), 0).unwrap();
//! let mut now = 0;
//! while core.has_work() {
//!     let out = core.step(now);
//!     now += out.duration_us; // the events in `out.events` happen at `now`
//! }
//! assert_eq!(core.stats().running, 0);
//! ```
//!
//! # Scheduler (after vLLM's V1 scheduler with `--scheduling-policy priority`)
//!
//! Each step has a budget of `max_num_batched_tokens`. Running sequences are scheduled
//! first, in admission order: a decoding sequence takes one token, a sequence still
//! prefilling takes the rest of its prompt up to the remaining budget (chunked prefill).
//! If a running sequence needs a KV block and none is free, the worst running sequence
//! (highest `priority` value, latest arrival) is preempted, recompute style: its blocks
//! are freed and it goes back to the waiting queue. If nothing was preempted, waiting
//! requests are then admitted in (priority, arrival) order while budget, sequence slots
//! (`max_num_seqs`) and KV blocks allow; a waiting request that does not fit may preempt
//! a running one of strictly worse priority. A request's first output token is emitted
//! at the end of the step that completes its prefill, then one token per step.
//!
//! # Cost
//!
//! Per step: O(sequences in the batch + blocks allocated or freed + tokens hashed).
//! Adding a request hashes its prompt once. Nothing scans all requests or all blocks.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::kv::{block_hash, BlockId, BlockPool, ROOT_HASH};
use crate::params::EngineParams;
use crate::words::output_token;

/// A request's id, chosen by the caller and unique among requests in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A request as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRequest {
    pub id: RequestId,
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// The client's cap on output tokens (at least one).
    pub max_tokens: u32,
    /// Tokens the model would produce before EOS. The engine generates
    /// `min(max_tokens, output_len)` tokens (at least one).
    pub output_len: u32,
    /// Scheduling priority: lower is served first (vLLM's `priority`).
    pub priority: i64,
    /// Seed of the pseudo output tokens (see [`crate::words`]).
    pub seed: u64,
    /// Root of the request's block-hash chain: [`ROOT_HASH`], or one derived from its
    /// `cache_salt` (vLLM mixes the salt into the first block's hash), so requests with
    /// different salts never share cached blocks.
    pub hash_root: u64,
}

/// The hash-chain root for a `cache_salt`.
pub fn salted_root(salt: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(salt.as_bytes(), ROOT_HASH).max(1)
}

impl EngineRequest {
    /// A request at priority 0 with seed equal to its id.
    pub fn new(id: RequestId, prompt: Vec<u32>, max_tokens: u32, output_len: u32) -> Self {
        Self {
            id,
            prompt,
            max_tokens,
            output_len,
            priority: 0,
            seed: id.0,
            hash_root: ROOT_HASH,
        }
    }

    pub fn with_priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    /// Output tokens this request will produce.
    pub fn target_output(&self) -> u32 {
        self.max_tokens.min(self.output_len).max(1)
    }
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FinishReason {
    /// It produced `max_tokens` tokens.
    Length,
    /// It reached its natural end (EOS).
    Stop,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// Token accounting of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the prefix cache when the request was first scheduled.
    pub cached_tokens: u32,
}

/// Something that happens at the end of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineEvent {
    /// Output token `index` (0-based) of request `id` was produced. Its id and text are
    /// `words::output_token(seed, index)` / `words::output_word(seed, index)`.
    Token { id: RequestId, index: u32 },
    /// The request is done (always after its last `Token`); its blocks are released.
    Finished {
        id: RequestId,
        reason: FinishReason,
        usage: Usage,
    },
    /// The request was preempted (its KV blocks were freed); it will be recomputed and
    /// continue where it stopped. Informational: no tokens are lost or repeated.
    Preempted { id: RequestId },
}

impl EngineEvent {
    pub fn id(&self) -> RequestId {
        match *self {
            EngineEvent::Token { id, .. }
            | EngineEvent::Finished { id, .. }
            | EngineEvent::Preempted { id } => id,
        }
    }
}

/// Why `add_request` refused a request (vLLM answers these with HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error(
        "This model's maximum context length is {max_model_len} tokens. However, you requested \
         {requested} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion). \
         Please reduce the length of the prompt or completion."
    )]
    TooLong {
        prompt_tokens: u32,
        max_tokens: u32,
        requested: u64,
        max_model_len: u32,
    },
    #[error("the request needs {needed} KV-cache blocks but the engine has only {available}")]
    ExceedsKvCache { needed: u64, available: u32 },
    #[error("request id {0} is already in the engine")]
    DuplicateId(RequestId),
}

/// The shape of one scheduled batch, the input of the step-time model.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchShape {
    /// Uncached prompt tokens computed in the step (`P_new`).
    pub prefill_tokens: u64,
    /// `Σ p_i·(c_i + p_i/2)` over the prefill chunks (token pairs of prefill attention).
    pub prefill_attention_pairs: f64,
    /// Sequences decoding one token (`D`).
    pub decode_seqs: u64,
    /// Context tokens those sequences read from the KV cache (`K`).
    pub decode_context_tokens: u64,
}

impl BatchShape {
    /// Adds a prefill chunk of `chunk` tokens after `context` already-computed tokens.
    pub fn add_prefill(&mut self, context: u64, chunk: u64) {
        self.prefill_tokens += chunk;
        self.prefill_attention_pairs += chunk as f64 * (context as f64 + chunk as f64 / 2.0);
    }

    /// Adds a sequence decoding one token over `context` tokens in the KV cache.
    pub fn add_decode(&mut self, context: u64) {
        self.decode_seqs += 1;
        self.decode_context_tokens += context;
    }

    pub fn is_empty(&self) -> bool {
        self.prefill_tokens == 0 && self.decode_seqs == 0
    }

    /// Tokens this batch takes from the step budget.
    pub fn tokens(&self) -> u64 {
        self.prefill_tokens + self.decode_seqs
    }

    /// Step time in µs: `T0 + a·P_new + q·Σ p_i·(c_i + p_i/2) + d·D + e·K`, times
    /// `slowdown`. An empty batch takes no time.
    pub fn duration_us(&self, p: &EngineParams, slowdown: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let t = p.step_fixed_us
            + p.prefill_token_us * self.prefill_tokens as f64
            + p.prefill_attention_pair_us * self.prefill_attention_pairs
            + p.decode_seq_us * self.decode_seqs as f64
            + p.kv_read_token_us * self.decode_context_tokens as f64;
        t * slowdown
    }
}

/// Checks a request's shape against an engine's limits: a non-empty prompt, at least one
/// output token, prompt + `max_tokens` within `max_model_len`, and prompt + the tokens it
/// will generate within the whole KV cache (otherwise it could never run).
pub fn check_limits(
    params: &EngineParams,
    prompt_tokens: usize,
    max_tokens: u32,
    target_output: u32,
) -> Result<(), RejectReason> {
    if prompt_tokens == 0 {
        return Err(RejectReason::EmptyPrompt);
    }
    if max_tokens == 0 {
        return Err(RejectReason::ZeroMaxTokens);
    }
    let prompt = prompt_tokens as u64;
    let requested = prompt + u64::from(max_tokens);
    if requested > u64::from(params.max_model_len) {
        return Err(RejectReason::TooLong {
            prompt_tokens: prompt_tokens.min(u32::MAX as usize) as u32,
            max_tokens,
            requested,
            max_model_len: params.max_model_len,
        });
    }
    let bs = u64::from(params.block_size.max(1));
    let needed = (prompt + u64::from(target_output.clamp(1, max_tokens))).div_ceil(bs);
    if needed > u64::from(params.kv_blocks.max(1)) {
        return Err(RejectReason::ExceedsKvCache {
            needed,
            available: params.kv_blocks.max(1),
        });
    }
    Ok(())
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepSummary {
    /// How long the step takes (µs, rounded; 0 if nothing could be scheduled). Its events
    /// happen at `now_us + duration_us`.
    pub duration_us: u64,
    /// The scheduled batch.
    pub batch: BatchShape,
    /// Sequences in the batch.
    pub scheduled_seqs: u32,
}

/// A step's duration and the events at its end.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepOutcome {
    pub duration_us: u64,
    pub events: Vec<EngineEvent>,
    pub summary: StepSummary,
}

/// Gauges and cumulative counters, named after vLLM's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineStats {
    /// Sequences in the running batch (`vllm:num_requests_running`).
    pub running: u32,
    /// Requests waiting, including preempted ones (`vllm:num_requests_waiting`).
    pub waiting: u32,
    /// Fraction of KV blocks in use, 0..1 (`vllm:kv_cache_usage_perc`).
    pub kv_usage: f64,
    pub kv_blocks_used: u32,
    pub kv_blocks_total: u32,
    /// Prompt tokens looked up in the prefix cache (cumulative).
    pub prefix_cache_queries: u64,
    /// Of those, tokens found (cumulative).
    pub prefix_cache_hits: u64,
    /// Preemptions (cumulative, `vllm:num_preemptions_total`).
    pub preemptions: u64,
    pub steps: u64,
    pub admitted: u64,
    pub finished: u64,
    pub aborted: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
}

#[derive(Debug, Clone)]
struct Seq {
    id: RequestId,
    priority: i64,
    /// Arrival order (ties between equal priorities go to the earlier arrival).
    arrival: u64,
    /// Prompt followed by the output so far.
    tokens: Vec<u32>,
    /// Hashes of the full blocks of `tokens` (`tokens.len() / block_size` of them).
    hashes: Vec<u64>,
    hash_root: u64,
    prompt_len: u32,
    target: u32,
    max_tokens: u32,
    seed: u64,
    /// Tokens whose KV is computed (and held in `blocks`).
    computed: u32,
    blocks: Vec<BlockId>,
    output: u32,
    cached_tokens: Option<u32>,
    running: bool,
    /// Tokens scheduled in the current step.
    sched: u32,
}

impl Seq {
    fn key(&self) -> (i64, u64) {
        (self.priority, self.arrival)
    }

    /// (hash, block) of each full block this step's scheduled tokens complete.
    fn blocks_in_step(&self, block_size: u32) -> impl Iterator<Item = (u64, BlockId)> + '_ {
        let from = (self.computed / block_size) as usize;
        let to = ((self.computed + self.sched) / block_size) as usize;
        (from..to).filter_map(|j| Some((*self.hashes.get(j)?, *self.blocks.get(j)?)))
    }
}

/// The engine: scheduler, KV cache and step-time model.
#[derive(Debug, Clone)]
pub struct EngineCore {
    params: EngineParams,
    slowdown: f64,
    pool: BlockPool,
    seqs: Vec<Option<Seq>>,
    free_slots: Vec<u32>,
    index: HashMap<RequestId, u32>,
    /// Running sequences in admission order.
    running: Vec<u32>,
    waiting: BTreeMap<(i64, u64), u32>,
    next_arrival: u64,
    stats: EngineStats,
    scratch: Vec<u8>,
    done: Vec<u32>,
    now_us: u64,
    /// Blocks the step being scheduled computes, by hash. vLLM caches a block when it is
    /// scheduled, so a request scheduled after it in the same step finds it cached (the
    /// step writes a layer's KV before attending over it); the pool learns it at the
    /// step's end.
    scheduled: HashMap<u64, BlockId>,
}

impl EngineCore {
    /// A new, empty engine. Degenerate parameters are clamped to at least 1 (block size,
    /// KV blocks, token budget, sequence limit) so the engine can always make progress.
    pub fn new(params: EngineParams) -> Self {
        let mut params = params;
        params.block_size = params.block_size.max(1);
        params.kv_blocks = params.kv_blocks.max(1);
        params.max_num_batched_tokens = params.max_num_batched_tokens.max(1);
        params.max_num_seqs = params.max_num_seqs.max(1);
        params.max_model_len = params.max_model_len.max(2);
        let pool = BlockPool::new(params.kv_blocks);
        let stats = EngineStats {
            kv_blocks_total: params.kv_blocks,
            ..EngineStats::default()
        };
        Self {
            params,
            slowdown: 1.0,
            pool,
            seqs: Vec::new(),
            free_slots: Vec::new(),
            index: HashMap::new(),
            running: Vec::new(),
            waiting: BTreeMap::new(),
            next_arrival: 0,
            stats,
            scratch: Vec::new(),
            done: Vec::new(),
            now_us: 0,
            scheduled: HashMap::new(),
        }
    }

    pub fn params(&self) -> &EngineParams {
        &self.params
    }

    /// Leading full blocks of `prompt` held in the prefix cache, read without touching
    /// the LRU order: what a router consuming the engine's KV-cache events (Dynamo's KV
    /// router) knows. The simulator serves it to KV-aware routing policies.
    pub fn cached_prefix_blocks(&self, prompt: &[u32]) -> u32 {
        let mut scratch = Vec::new();
        let mut parent = ROOT_HASH;
        let mut hits = 0;
        for block in prompt.chunks_exact(self.params.block_size as usize) {
            parent = block_hash(parent, block, &mut scratch);
            if self.pool.lookup(parent).is_none() {
                break;
            }
            hits += 1;
        }
        hits
    }

    /// Checks a request against the engine's limits without adding it.
    pub fn check(&self, req: &EngineRequest) -> Result<(), RejectReason> {
        check_limits(
            &self.params,
            req.prompt.len(),
            req.max_tokens,
            req.target_output(),
        )?;
        if self.index.contains_key(&req.id) {
            return Err(RejectReason::DuplicateId(req.id));
        }
        Ok(())
    }

    /// Queues a request. It is scheduled from the next step on.
    pub fn add_request(&mut self, req: EngineRequest, now_us: u64) -> Result<(), RejectReason> {
        self.check(&req)?;
        self.now_us = self.now_us.max(now_us);
        let bs = self.params.block_size as usize;
        let target = req.target_output();
        let prompt_len = req.prompt.len() as u32;
        let mut tokens = req.prompt;
        tokens.reserve(target as usize);
        let mut hashes = Vec::with_capacity((tokens.len() + target as usize) / bs + 1);
        let mut parent = req.hash_root;
        for chunk in tokens.chunks_exact(bs) {
            parent = block_hash(parent, chunk, &mut self.scratch);
            hashes.push(parent);
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let seq = Seq {
            id: req.id,
            priority: req.priority,
            arrival,
            tokens,
            hashes,
            prompt_len,
            target,
            max_tokens: req.max_tokens,
            seed: req.seed,
            hash_root: req.hash_root,
            computed: 0,
            blocks: Vec::new(),
            output: 0,
            cached_tokens: None,
            running: false,
            sched: 0,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.seqs[s as usize] = Some(seq);
                s
            }
            None => {
                self.seqs.push(Some(seq));
                (self.seqs.len() - 1) as u32
            }
        };
        self.index.insert(req.id, slot);
        self.waiting.insert((req.priority, arrival), slot);
        self.stats.admitted += 1;
        Ok(())
    }

    /// Removes a request (the client went away): its blocks are released and it produces
    /// no more events. Unknown ids are ignored.
    pub fn abort(&mut self, id: RequestId) {
        let Some(slot) = self.index.get(&id).copied() else {
            return;
        };
        let (running, key) = {
            let s = self.seq(slot);
            (s.running, s.key())
        };
        if running {
            if let Some(pos) = self.running.iter().position(|&r| r == slot) {
                self.running.remove(pos);
            }
        } else {
            self.waiting.remove(&key);
        }
        self.release_blocks(slot);
        self.remove(slot);
        self.stats.aborted += 1;
    }

    /// Whether any request is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Whether a request with this id is in the engine.
    pub fn contains(&self, id: RequestId) -> bool {
        self.index.contains_key(&id)
    }

    /// Requests in the engine (running and waiting).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Fault injection: every step takes `factor` times as long (1.0 = normal).
    pub fn set_slowdown(&mut self, factor: f64) {
        self.slowdown = if factor.is_finite() && factor > 0.0 {
            factor
        } else {
            1.0
        };
    }

    pub fn slowdown(&self) -> f64 {
        self.slowdown
    }

    /// Current gauges and cumulative counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats;
        s.running = self.running.len() as u32;
        s.waiting = self.waiting.len() as u32;
        s.kv_usage = self.pool.usage();
        s.kv_blocks_used = self.pool.num_blocks() - self.pool.num_free();
        s
    }

    /// Schedules one batch at `now_us` and returns its duration and the events that
    /// happen at its end (`now_us + duration_us`). The caller must not step again before
    /// then. Allocates the event vector; see [`EngineCore::step_into`] to reuse one.
    pub fn step(&mut self, now_us: u64) -> StepOutcome {
        let mut events = Vec::new();
        let summary = self.step_into(now_us, &mut events);
        StepOutcome {
            duration_us: summary.duration_us,
            events,
            summary,
        }
    }

    /// Like [`EngineCore::step`], appending the events to `events`.
    pub fn step_into(&mut self, now_us: u64, events: &mut Vec<EngineEvent>) -> StepSummary {
        self.now_us = self.now_us.max(now_us);
        let budget_total = self.params.max_num_batched_tokens;
        let mut budget = budget_total;
        let mut preempted = false;

        // 1. Running sequences, in admission order.
        let mut i = 0;
        'running: while i < self.running.len() && budget > 0 {
            let slot = self.running[i];
            let want = {
                let s = self.seq(slot);
                (s.tokens.len() as u32 - s.computed).min(budget)
            };
            loop {
                if self.grow(slot, want) {
                    self.seq_mut(slot).sched = want;
                    self.mark_scheduled(slot);
                    budget -= want;
                    i += 1;
                    break;
                }
                let victim_pos = self.worst_running();
                let victim = self.running[victim_pos];
                budget += self.seq(victim).sched;
                self.preempt(victim_pos, events);
                preempted = true;
                if victim == slot {
                    // It was the worst itself. vLLM stops scheduling running sequences
                    // here; the ones after it may still fit, so go on with them.
                    continue 'running;
                }
                if victim_pos < i {
                    i -= 1;
                }
            }
        }

        // 2. Waiting requests, by (priority, arrival), unless running ones were preempted
        //    for space in this step (as vLLM does, to avoid thrashing) and the batch is
        //    not empty.
        let batch_empty = self.running.iter().all(|&s| self.seq(s).sched == 0);
        if !preempted || batch_empty {
            while budget > 0 {
                let Some((_, &slot)) = self.waiting.first_key_value() else {
                    break;
                };
                if self.running.len() >= self.params.max_num_seqs as usize {
                    if self.preempt_for(slot, &mut budget, events) {
                        continue;
                    }
                    break;
                }
                if self.admit(slot, &mut budget) {
                    continue;
                }
                if !self.preempt_for(slot, &mut budget, events) {
                    break;
                }
            }
        }

        // 3. The batch's shape and time.
        let mut batch = BatchShape::default();
        let mut scheduled = 0u32;
        for &slot in &self.running {
            let s = self.seq(slot);
            if s.sched == 0 {
                continue;
            }
            scheduled += 1;
            if s.sched == 1 && s.output > 0 && s.computed as usize + 1 == s.tokens.len() {
                batch.add_decode(u64::from(s.computed));
            } else {
                batch.add_prefill(u64::from(s.computed), u64::from(s.sched));
            }
        }
        debug_assert!(batch.tokens() <= u64::from(budget_total));
        let duration = batch.duration_us(&self.params, self.slowdown).round() as u64;
        if scheduled == 0 {
            return StepSummary::default();
        }
        self.stats.steps += 1;

        // 4. The step's effects, at its end.
        let bs = self.params.block_size;
        self.scheduled.clear();
        self.done.clear();
        for idx in 0..self.running.len() {
            let slot = self.running[idx];
            let seq = match self.seqs[slot as usize].as_mut() {
                Some(s) => s,
                None => continue,
            };
            if seq.sched == 0 {
                continue;
            }
            for (h, b) in seq.blocks_in_step(bs) {
                self.pool.register(b, h);
            }
            seq.computed += seq.sched;
            seq.sched = 0;
            if seq.computed as usize != seq.tokens.len() {
                continue;
            }
            let index = seq.output;
            seq.output += 1;
            self.stats.generation_tokens += 1;
            events.push(EngineEvent::Token { id: seq.id, index });
            if seq.output >= seq.target {
                let reason = if seq.output >= seq.max_tokens {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                };
                events.push(EngineEvent::Finished {
                    id: seq.id,
                    reason,
                    usage: Usage {
                        prompt_tokens: seq.prompt_len,
                        completion_tokens: seq.output,
                        cached_tokens: seq.cached_tokens.unwrap_or(0),
                    },
                });
                self.done.push(slot);
            } else {
                seq.tokens.push(output_token(seq.seed, index));
                if seq.tokens.len() % bs as usize == 0 {
                    let parent = seq.hashes.last().copied().unwrap_or(seq.hash_root);
                    let start = seq.tokens.len() - bs as usize;
                    let h = block_hash(parent, &seq.tokens[start..], &mut self.scratch);
                    seq.hashes.push(h);
                }
            }
        }
        if !self.done.is_empty() {
            let done = std::mem::take(&mut self.done);
            for &slot in &done {
                self.release_blocks(slot);
            }
            self.running.retain(|s| !done.contains(s));
            for &slot in &done {
                self.remove(slot);
                self.stats.finished += 1;
            }
            self.done = done;
        }

        StepSummary {
            duration_us: duration,
            batch,
            scheduled_seqs: scheduled,
        }
    }

    // ----- internals -----

    fn seq(&self, slot: u32) -> &Seq {
        self.seqs[slot as usize]
            .as_ref()
            .unwrap_or_else(|| unreachable!("slot {slot} is empty"))
    }

    fn seq_mut(&mut self, slot: u32) -> &mut Seq {
        self.seqs[slot as usize]
            .as_mut()
            .unwrap_or_else(|| unreachable!("slot {slot} is empty"))
    }

    fn remove(&mut self, slot: u32) {
        if let Some(seq) = self.seqs[slot as usize].take() {
            self.index.remove(&seq.id);
            self.free_slots.push(slot);
        }
    }

    /// Releases a sequence's blocks, last block first so that the tail of a sequence is
    /// evicted before its (more shareable) prefix.
    fn release_blocks(&mut self, slot: u32) {
        let Some(seq) = self.seqs[slot as usize].as_mut() else {
            return;
        };
        for &b in seq.blocks.iter().rev() {
            self.pool.release(b);
        }
        seq.blocks.clear();
        seq.computed = 0;
        seq.sched = 0;
    }

    /// Allocates the blocks a running sequence needs to compute `want` more tokens.
    fn grow(&mut self, slot: u32, want: u32) -> bool {
        let bs = self.params.block_size;
        let seq = match self.seqs[slot as usize].as_mut() {
            Some(s) => s,
            None => return false,
        };
        let need = (seq.computed + want).div_ceil(bs) as usize;
        let extra = need.saturating_sub(seq.blocks.len());
        if extra as u32 > self.pool.num_free() {
            return false;
        }
        for _ in 0..extra {
            match self.pool.allocate() {
                Some(b) => seq.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Position in `running` of the sequence to preempt first: the highest priority value,
    /// then the latest arrival.
    fn worst_running(&self) -> usize {
        let mut best = 0;
        let mut best_key = (i64::MIN, 0u64);
        for (pos, &slot) in self.running.iter().enumerate() {
            let k = self.seq(slot).key();
            if pos == 0 || k > best_key {
                best = pos;
                best_key = k;
            }
        }
        best
    }

    fn preempt(&mut self, pos: usize, events: &mut Vec<EngineEvent>) {
        let slot = self.running.remove(pos);
        self.unmark_scheduled(slot);
        self.release_blocks(slot);
        let seq = self.seq_mut(slot);
        seq.running = false;
        let (key, id) = (seq.key(), seq.id);
        self.waiting.insert(key, slot);
        self.stats.preemptions += 1;
        events.push(EngineEvent::Preempted { id });
    }

    /// Preempts the worst running sequence if its priority is strictly worse than that of
    /// the waiting request in `slot`.
    fn preempt_for(&mut self, slot: u32, budget: &mut u32, events: &mut Vec<EngineEvent>) -> bool {
        if self.running.is_empty() {
            return false;
        }
        let pos = self.worst_running();
        let victim = self.running[pos];
        if self.seq(victim).priority <= self.seq(slot).priority {
            return false;
        }
        *budget += self.seq(victim).sched;
        self.preempt(pos, events);
        true
    }

    /// Tries to start the waiting request in `slot`: looks up its prefix in the cache,
    /// takes the blocks it needs and schedules its first chunk.
    fn admit(&mut self, slot: u32, budget: &mut u32) -> bool {
        let bs = self.params.block_size;
        let pool = &mut self.pool;
        let scheduled = &self.scheduled;
        let seq = match self.seqs[slot as usize].as_mut() {
            Some(s) => s,
            None => return false,
        };
        debug_assert!(seq.blocks.is_empty() && seq.computed == 0);
        let lookup =
            |pool: &BlockPool, h: u64| pool.lookup(h).or_else(|| scheduled.get(&h).copied());
        let len = seq.tokens.len() as u32;
        // At least the last token is computed, so the hit stops before it.
        let max_hit_blocks = ((len - 1) / bs) as usize;
        let mut hits = 0usize;
        let mut evictable_hits = 0u32;
        for &h in seq.hashes.iter().take(max_hit_blocks) {
            match lookup(pool, h) {
                Some(b) => {
                    if pool.ref_count(b) == 0 {
                        evictable_hits += 1;
                    }
                    hits += 1;
                }
                None => break,
            }
        }
        let hit_tokens = hits as u32 * bs;
        let want = (len - hit_tokens).min(*budget);
        let need_new = ((hit_tokens + want).div_ceil(bs) as usize).saturating_sub(hits) as u32;
        if need_new + evictable_hits > pool.num_free() {
            return false;
        }
        for j in 0..hits {
            let Some(b) = lookup(pool, seq.hashes[j]) else {
                unreachable!("hit block vanished")
            };
            pool.touch(b);
            seq.blocks.push(b);
        }
        for _ in 0..need_new {
            match pool.allocate() {
                Some(b) => seq.blocks.push(b),
                None => unreachable!("free blocks were counted"),
            }
        }
        seq.computed = hit_tokens;
        seq.sched = want;
        seq.running = true;
        if seq.cached_tokens.is_none() {
            seq.cached_tokens = Some(hit_tokens.min(seq.prompt_len));
            self.stats.prompt_tokens += u64::from(seq.prompt_len);
        }
        self.stats.prefix_cache_queries += u64::from(len);
        self.stats.prefix_cache_hits += u64::from(hit_tokens);
        let key = seq.key();
        *budget -= want;
        self.waiting.remove(&key);
        self.running.push(slot);
        self.mark_scheduled(slot);
        true
    }

    /// The full blocks the sequence in `slot` computes in this step, as cached for the
    /// requests scheduled after it.
    fn mark_scheduled(&mut self, slot: u32) {
        if let Some(seq) = self.seqs[slot as usize].as_ref() {
            for (h, b) in seq.blocks_in_step(self.params.block_size) {
                self.scheduled.entry(h).or_insert(b);
            }
        }
    }

    /// A sequence leaves the step before computing: its blocks are not cached after all.
    fn unmark_scheduled(&mut self, slot: u32) {
        if let Some(seq) = self.seqs[slot as usize].as_ref() {
            for (h, b) in seq.blocks_in_step(self.params.block_size) {
                if self.scheduled.get(&h) == Some(&b) {
                    self.scheduled.remove(&h);
                }
            }
        }
    }

    /// Checks internal invariants (tests only: O(everything)).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.pool.check();
        let bs = self.params.block_size as usize;
        let mut held = 0usize;
        for (slot, s) in self.seqs.iter().enumerate() {
            let Some(s) = s else { continue };
            assert_eq!(self.index.get(&s.id), Some(&(slot as u32)));
            assert_eq!(s.hashes.len(), s.tokens.len() / bs);
            assert_eq!(s.sched, 0);
            if s.running {
                assert!(self.running.contains(&(slot as u32)));
                assert!(s.blocks.len() * bs >= s.computed as usize);
            } else {
                assert!(s.blocks.is_empty());
                assert_eq!(self.waiting.get(&s.key()), Some(&(slot as u32)));
            }
            held += s.blocks.len();
        }
        assert!(self.running.len() <= self.params.max_num_seqs as usize);
        assert_eq!(self.index.len(), self.running.len() + self.waiting.len());
        // Every held block is referenced; shared prefix blocks are counted once per holder.
        assert!(held as u32 >= self.pool.num_blocks() - self.pool.num_free());
    }

    /// Blocks currently held by no one and not cached (tests only).
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &BlockPool {
        &self.pool
    }
}
