//! The simulated GPU engine.
//!
//! * [`core`]: the pure engine model (scheduler, KV cache with prefix reuse, step-time
//!   model). Deterministic, no I/O, no clocks: the discrete-event simulator drives it in
//!   virtual time and the HTTP shell drives it in real time.
//! * [`server`]: the OpenAI-compatible HTTP shell around one core (`serve`).
//! * [`openai`], [`tokenizer`]: request parsing and the stand-in tokenizer, shared with
//!   the router.
//! * [`continuation`]: the request that continues an answer on another replica.
//! * [`words`]: the deterministic pseudo-output (words and natural answer lengths).

pub mod continuation;
pub mod core;
pub mod exposition;
pub mod kv;
pub mod metrics;
pub mod openai;
pub mod params;
pub mod server;
pub mod tokenizer;
pub mod words;

#[cfg(test)]
mod core_tests;

pub use crate::core::{
    BatchShape, EngineCore, EngineEvent, EngineRequest, EngineStats, FinishReason, RejectReason,
    RequestId, StepOutcome, StepSummary, Usage,
};
pub use params::EngineParams;
pub use server::{serve, Fault, ServerConfig};
