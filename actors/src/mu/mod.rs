//! Model units: the one currency for routing, autoscaling and reservations.

pub mod estimate;
pub mod inflight;
pub mod pricing;

pub use estimate::{EstimatorConfig, OutputEstimator};
pub use inflight::InflightCost;
pub use pricing::{MuCoefficients, RequestShape};
