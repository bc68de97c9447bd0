//! Autoscaler cores: from what the fleet is doing to how many replicas it should have.
//! Each is a deterministic state machine fed one [`ScaleInputs`] per tick with an explicit
//! clock value (no `Instant`, no randomness, no I/O), so the discrete-event simulator and
//! the live leader run the same code. `sluice` scales on model-unit utilization; `kpa`
//! (Knative, request concurrency), `request-rate` (Kubernetes HPA on requests per second)
//! and `static-peak` are the baselines it is measured against, each faithful to its
//! source's rules and defaults.

mod config;
mod kpa;
mod leader;
mod mu_utilization;
pub mod placement;
mod request_rate;
mod static_peak;
mod step;
mod window;

#[cfg(test)]
mod tests;

pub use config::{AutoscalerConfig, AutoscalerError};
pub use kpa::Kpa;
pub use leader::LeaderScaler;
pub use mu_utilization::MuUtilization;
pub use request_rate::RequestRate;
pub use static_peak::StaticPeak;
pub use step::{local_index, replica_id, ScaleCommand, ScaleLeader, ScaleTick, ScaleView};
pub use window::Window;

/// One observation per tick (the caller ticks every few seconds; Knative's tick is 2 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleInputs {
    pub now_us: u64,
    /// Replicas serving, and replicas requested but still cold-starting.
    pub ready: usize,
    pub starting: usize,
    /// Model units admitted per minute over the last tick (offered work, priced in MU).
    pub mu_per_min: f64,
    /// Requests in flight now, over all replicas (what KPA's concurrency metric sees).
    pub in_flight_requests: f64,
    /// Requests arriving per second over the last tick.
    pub requests_per_s: f64,
    /// One replica's capacity in MU per minute (the profile's).
    pub capacity_mu_per_min: f64,
}

/// Limits on the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleBounds {
    pub min: usize,
    pub max: usize,
    /// Replicas the tenants' reservations need, whatever the load.
    pub reserved_floor: usize,
}

impl ScaleBounds {
    /// The fewest replicas allowed: `max(min, reserved_floor)`.
    pub fn floor(&self) -> usize {
        self.min.max(self.reserved_floor)
    }

    /// `n` within `[floor, max]`. When the floor is above `max` the floor wins: reserved
    /// capacity is a promise, and `max` is only a cost cap.
    pub fn clamp(&self, n: usize) -> usize {
        n.min(self.max).max(self.floor())
    }
}

/// An autoscaler core.
pub trait Autoscaler: Send {
    fn name(&self) -> &'static str;
    /// Desired replica count (ready plus starting to aim for) after this observation,
    /// within `bounds`; the caller starts or drains the difference.
    fn decide(&mut self, inputs: &ScaleInputs, bounds: &ScaleBounds) -> usize;
}

/// Names `by_name` knows, Sluice's first.
pub const NAMES: &[&str] = &["sluice", "static-peak", "kpa", "request-rate"];

/// An autoscaler by name, with a checked configuration. `max` is the fleet's size: what
/// `static-peak` keeps when `static_replicas` is unset (the caller usually sets it to the
/// peak need it computed).
pub fn by_name(
    name: &str,
    cfg: &AutoscalerConfig,
    max: usize,
) -> Result<Box<dyn Autoscaler>, AutoscalerError> {
    if !NAMES.contains(&name) {
        return Err(AutoscalerError::Unknown(name.to_owned()));
    }
    cfg.validate()?;
    Ok(match name {
        "sluice" => Box::new(MuUtilization::new(cfg)),
        "static-peak" => Box::new(StaticPeak::new(cfg.static_replicas.unwrap_or(max))),
        "kpa" => Box::new(Kpa::new(cfg)),
        _ => Box::new(RequestRate::new(cfg)),
    })
}

/// A metric sample as the cores use it: a missing or nonsensical reading (NaN, infinite,
/// negative) counts as no load rather than poisoning a window.
fn metric(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// A pod count from a non-negative float (saturating; NaN is 0).
fn count(x: f64) -> usize {
    x as usize
}
