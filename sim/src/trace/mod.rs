//! Request traces for the simulator and the load generator.

pub mod agentic;
pub mod azure;
pub mod error;
pub mod mooncake;
pub mod request;
pub mod servegen;
pub mod structures;

pub use error::TraceError;
pub use request::{splitmix64, Prompt, Segment, Trace, TraceRequest};
