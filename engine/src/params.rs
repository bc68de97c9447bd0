//! Step-model coefficients of one (model, hardware) pair.
//!
//! The defaults are the Llama-3.1-8B / one H100 (bf16) figures from the published
//! measurements collected in `docs/ENGINE.md` (which cites the source of each
//! coefficient and compares the model with the published checks); the step model is
//! `T0 + a·P_new + q·Σ p_i·(c_i + p_i/2) + d·D + e·K`.

use serde::{Deserialize, Serialize};

/// Timing and capacity of a simulated engine. Times are in microseconds so that the
/// model is exact integer-free of clocks: callers add them to their own clock values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineParams {
    /// Fixed cost of one scheduler step (kernel launches, sampling), µs.
    pub step_fixed_us: f64,
    /// Cost per uncached prompt token computed in a step (MLP + projections), µs.
    pub prefill_token_us: f64,
    /// Prefill attention cost per (query token × key token) pair, µs.
    pub prefill_attention_pair_us: f64,
    /// Cost per sequence decoding in the step, µs.
    pub decode_seq_us: f64,
    /// Cost per context token read from the KV cache by decoding sequences, µs.
    pub kv_read_token_us: f64,
    /// Number of KV-cache blocks on the device.
    pub kv_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Per-step token budget (prefill chunks plus one token per decoding sequence).
    pub max_num_batched_tokens: u32,
    /// Most sequences running at once.
    pub max_num_seqs: u32,
    /// Longest prompt plus output the model accepts.
    pub max_model_len: u32,
}

impl Default for EngineParams {
    fn default() -> Self {
        Self {
            // Low end of BLIS's fitted β0 range (5.0-6.5 ms): every decode-side check
            // (4.4 ms ITL at batch 1, 4.1 ms TPOT at 8 req/s) sits below any T0 in the
            // range, so the lowest one fits them best. See docs/ENGINE.md.
            step_fixed_us: 5000.0,
            prefill_token_us: 18.0,
            prefill_attention_pair_us: 0.0006,
            decode_seq_us: 35.0,
            kv_read_token_us: 0.04,
            kv_blocks: 29_205,
            block_size: 16,
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            max_model_len: 131_072,
        }
    }
}
