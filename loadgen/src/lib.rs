//! What drives a live OpenAI-compatible endpoint: the HTTP/1.1 load generator
//! (`sluice loadgen`) and, built on it, calibration (`sluice calibrate`).
//!
//! What is sent comes from a [`RequestSource`] (today the [`SyntheticSource`], later a
//! trace replayer), when it is sent from the [`Mode`]: a closed loop of `concurrency`
//! workers that each send the next request as soon as the previous one is answered, or
//! an open loop that starts requests on a fixed [`Timetable`] whether or not earlier
//! ones have been answered, measuring each from its *scheduled* start so that a slow
//! server cannot hide its queueing (no coordinated omission).
//!
//! Every run is bounded: it stops issuing requests after `warmup + duration`, and each
//! request is abandoned after `request_timeout`. It only ever talks to the configured
//! base URL.

pub mod calibrate;
mod cli;
mod config;
mod driver;
mod error;
pub mod exchange;
mod report;
mod schedule;
mod source;
mod stats;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

pub use cli::{cli_main, EndpointArg, LoadgenArgs};
pub use config::{Endpoint, LoadConfig, Mode};
pub use error::LoadError;
pub use report::Report;
pub use schedule::{FixedRate, Timetable};
pub use source::{PlannedRequest, RequestSource, SyntheticSource};
pub use stats::Percentiles;

use std::sync::Arc;

/// Runs the load described by `cfg` with synthetic requests and reports what happened
/// in the measurement window (after the warm-up).
pub async fn run(cfg: &LoadConfig) -> Result<Report, LoadError> {
    cfg.validate()?;
    let source = Arc::new(SyntheticSource::new(cfg)?);
    run_with_source(cfg, source).await
}

/// Like [`run`], with the requests taken from `source` (whose answers replace the
/// synthetic body settings of `cfg`; the URL, mode, timing and timeout still apply).
/// A finite source ends the run early when it is exhausted.
pub async fn run_with_source(
    cfg: &LoadConfig,
    source: Arc<dyn RequestSource>,
) -> Result<Report, LoadError> {
    cfg.validate()?;
    driver::run(cfg, source).await
}
