//! Autoscaler cores: from what the fleet is doing to how many replicas it should have.
//! Each is a deterministic state machine fed one [`ScaleInputs`] per tick with an explicit
//! clock value; the simulator and the live leader run the same code. `sluice` scales on
//! model-unit utilization; `kpa` (Knative, request concurrency), `request-rate`
//! (Kubernetes HPA on requests per second) and `static-peak` are the baselines it is
//! measured against, each faithful to its source's rules and defaults.

mod kpa;
mod mu_utilization;
mod request_rate;
mod static_peak;
mod window;

#[cfg(test)]
mod tests;

pub use kpa::Kpa;
pub use mu_utilization::MuUtilization;
pub use request_rate::RequestRate;
pub use static_peak::StaticPeak;
pub use window::Window;

use serde::Deserialize;

/// One observation per tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleInputs {
    pub now_us: u64,
    /// Replicas serving, and replicas requested but still cold-starting.
    pub ready: usize,
    pub starting: usize,
    /// Model units admitted per minute over the last tick.
    pub mu_per_min: f64,
    /// Requests in flight now, over all replicas.
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
    /// `n` within `[max(min, reserved_floor), max]` (the floor wins over `max`).
    pub fn clamp(&self, n: usize) -> usize {
        let floor = self.min.max(self.reserved_floor);
        n.min(self.max).max(floor)
    }
}

/// An autoscaler core.
pub trait Autoscaler: Send {
    fn name(&self) -> &'static str;
    /// Desired replica count (ready plus starting) after this observation.
    fn decide(&mut self, inputs: &ScaleInputs, bounds: &ScaleBounds) -> usize;
}

/// Every autoscaler's knobs, with their sources' defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerConfig {
    /// `sluice`: share of a replica's MU capacity to plan for. Default 0.7.
    pub target_utilization: f64,
    /// `sluice`: window of the MU rate that scales up. Default 10 s.
    pub up_window_s: f64,
    /// `sluice`: scale down only to the largest need of this window. Default 300 s.
    pub down_window_s: f64,
    /// `kpa`: container-concurrency-target-default. Default 100.
    pub kpa_target_concurrency: f64,
    /// `kpa`: container-concurrency-target-percentage / 100. Default 0.7.
    pub kpa_target_utilization: f64,
    /// `kpa`: stable-window. Default 60 s.
    pub kpa_stable_window_s: f64,
    /// `kpa`: panic-window-percentage. Default 10.
    pub kpa_panic_window_pct: f64,
    /// `kpa`: panic-threshold-percentage / 100. Default 2.
    pub kpa_panic_threshold: f64,
    /// `kpa`: max-scale-up-rate. Default 1000.
    pub kpa_max_scale_up_rate: f64,
    /// `kpa`: max-scale-down-rate. Default 2.
    pub kpa_max_scale_down_rate: f64,
    /// `request-rate`: target requests per second per replica. Default 200 (Knative's
    /// default target for its `rps` metric; HPA itself has none).
    pub target_rps_per_replica: f64,
    /// `request-rate`: scale-down stabilization window. Default 300 s.
    pub hpa_down_stabilization_s: f64,
    /// `static-peak`: the count; `None` means the bounds' maximum.
    pub static_replicas: Option<usize>,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            target_utilization: 0.7,
            up_window_s: 10.0,
            down_window_s: 300.0,
            kpa_target_concurrency: 100.0,
            kpa_target_utilization: 0.7,
            kpa_stable_window_s: 60.0,
            kpa_panic_window_pct: 10.0,
            kpa_panic_threshold: 2.0,
            kpa_max_scale_up_rate: 1000.0,
            kpa_max_scale_down_rate: 2.0,
            target_rps_per_replica: 200.0,
            hpa_down_stabilization_s: 300.0,
            static_replicas: None,
        }
    }
}

/// Why a configuration is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AutoscalerError {
    #[error("unknown autoscaler '{0}': choose from sluice, static-peak, kpa, request-rate")]
    Unknown(String),
    #[error("{0} must be in (0, 1], got {1}")]
    Share(&'static str, f64),
    #[error("{0} must be a positive number, got {1}")]
    Positive(&'static str, f64),
    #[error("kpa_max_scale_down_rate must be above 1, got {0}")]
    DownRate(f64),
}

impl AutoscalerConfig {
    pub fn validate(&self) -> Result<(), AutoscalerError> {
        for (name, v) in [
            ("target_utilization", self.target_utilization),
            ("kpa_target_utilization", self.kpa_target_utilization),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(AutoscalerError::Share(name, v));
            }
        }
        for (name, v) in [
            ("up_window_s", self.up_window_s),
            ("down_window_s", self.down_window_s),
            ("kpa_target_concurrency", self.kpa_target_concurrency),
            ("kpa_stable_window_s", self.kpa_stable_window_s),
            ("kpa_panic_window_pct", self.kpa_panic_window_pct),
            ("kpa_panic_threshold", self.kpa_panic_threshold),
            ("kpa_max_scale_up_rate", self.kpa_max_scale_up_rate),
            ("target_rps_per_replica", self.target_rps_per_replica),
            ("hpa_down_stabilization_s", self.hpa_down_stabilization_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(AutoscalerError::Positive(name, v));
            }
        }
        if !(self.kpa_max_scale_down_rate.is_finite() && self.kpa_max_scale_down_rate > 1.0) {
            return Err(AutoscalerError::DownRate(self.kpa_max_scale_down_rate));
        }
        Ok(())
    }
}

/// Names `by_name` knows, Sluice's first.
pub const NAMES: &[&str] = &["sluice", "static-peak", "kpa", "request-rate"];

/// An autoscaler by name, with a checked configuration; `max` is the fleet's size (what
/// `static-peak` keeps when `static_replicas` is unset).
pub fn by_name(
    name: &str,
    cfg: &AutoscalerConfig,
    max: usize,
) -> Result<Box<dyn Autoscaler>, AutoscalerError> {
    cfg.validate()?;
    Ok(match name {
        "sluice" => Box::new(MuUtilization::new(cfg)),
        "static-peak" => Box::new(StaticPeak {
            replicas: cfg.static_replicas.unwrap_or(max),
        }),
        "kpa" => Box::new(Kpa::new(cfg)),
        "request-rate" => Box::new(RequestRate::new(cfg)),
        other => return Err(AutoscalerError::Unknown(other.to_owned())),
    })
}
