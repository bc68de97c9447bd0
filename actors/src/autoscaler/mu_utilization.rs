//! Sluice's autoscaler: replicas from model-unit utilization. Offered MU per minute over
//! a short window, divided by what a replica can take at the target utilization, is the
//! count needed now; the fleet scales up to it at once (a cold start already costs a
//! minute) and down only when every recommendation over the long window agrees
//! (Kubernetes HPA's scale-down stabilization), so a lull between bursts does not give
//! back replicas the next burst needs. MU, not requests, because a 30k-token prompt and a
//! 50-token one are not the same load.

use super::window::Window;
use super::{Autoscaler, AutoscalerConfig, ScaleBounds, ScaleInputs};

#[derive(Debug, Clone)]
pub struct MuUtilization {
    target_utilization: f64,
    rate: Window,
    recommendations: Window,
}

impl MuUtilization {
    pub fn new(cfg: &AutoscalerConfig) -> Self {
        Self {
            target_utilization: cfg.target_utilization,
            rate: Window::new(secs(cfg.up_window_s)),
            recommendations: Window::new(secs(cfg.down_window_s)),
        }
    }
}

pub(crate) fn secs(s: f64) -> u64 {
    (s.max(0.0) * 1e6) as u64
}

impl Autoscaler for MuUtilization {
    fn name(&self) -> &'static str {
        "sluice"
    }

    fn decide(&mut self, i: &ScaleInputs, bounds: &ScaleBounds) -> usize {
        self.rate.push(i.now_us, i.mu_per_min);
        let per_replica = i.capacity_mu_per_min * self.target_utilization;
        let need = if per_replica > 0.0 {
            (self.rate.mean() / per_replica).ceil()
        } else {
            bounds.max as f64
        };
        self.recommendations.push(i.now_us, need);
        let stabilized = self.recommendations.max().unwrap_or(need);
        bounds.clamp(stabilized.min(usize::MAX as f64) as usize)
    }
}
