//! Model units: the one currency for routing, autoscaling and reservations.

pub mod estimate;
pub mod inflight;
pub mod pricing;
pub mod token_scale;

pub use estimate::{EstimatorConfig, OutputEstimator};
pub use inflight::InflightCost;
pub use pricing::{attention_pairs, kv_token_steps, MuCoefficients, RequestShape};
pub use token_scale::TokenScale;
