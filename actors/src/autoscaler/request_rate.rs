//! `request-rate`: the Kubernetes Horizontal Pod Autoscaler on a requests-per-second
//! metric, after `kubernetes/pkg/controller/podautoscaler/horizontal.go` and
//! `replica_calculator.go` with their defaults: a sync every 15 s, tolerance 0.1, scale-up
//! policies "100% or 4 pods per 15 s, whichever is more", no scale-up stabilization,
//! scale-down stabilization 300 s (the largest recommendation of the last five minutes)
//! and "100% per 15 s". The metric is the request rate over the last minute (a Prometheus
//! `rate(...[1m])` through the metrics adapter) per ready pod, against a target per pod.
//! Pods still starting count as using nothing when a scale-up is considered, as the
//! replica calculator treats unready pods.

use super::mu_utilization::secs;
use super::window::Window;
use super::{Autoscaler, AutoscalerConfig, ScaleBounds, ScaleInputs};

const SYNC_US: u64 = 15_000_000;
const TOLERANCE: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct RequestRate {
    target_rps: f64,
    rate: Window,
    recommendations: Window,
    /// The scale's spec (last decision) and when it was made.
    current: Option<usize>,
    last_sync_us: Option<u64>,
}

impl RequestRate {
    pub fn new(cfg: &AutoscalerConfig) -> Self {
        Self {
            target_rps: cfg.target_rps_per_replica,
            rate: Window::new(60_000_000),
            recommendations: Window::new(secs(cfg.hpa_down_stabilization_s)),
            current: None,
            last_sync_us: None,
        }
    }
}

impl Autoscaler for RequestRate {
    fn name(&self) -> &'static str {
        "request-rate"
    }

    fn decide(&mut self, i: &ScaleInputs, bounds: &ScaleBounds) -> usize {
        self.rate.push(i.now_us, i.requests_per_s);
        let current = *self.current.get_or_insert(i.ready + i.starting);
        if self
            .last_sync_us
            .is_some_and(|t| i.now_us < t.saturating_add(SYNC_US))
        {
            return bounds.clamp(current);
        }
        self.last_sync_us = Some(i.now_us);
        let rps = self.rate.mean();
        let ready = i.ready.max(1) as f64;
        let ratio = rps / (self.target_rps * ready);
        let mut recommended = if (ratio - 1.0).abs() <= TOLERANCE {
            current
        } else {
            (ratio * ready).ceil() as usize
        };
        if recommended > current && i.starting > 0 {
            // Unready pods count as idle: recompute over all of them.
            let all = (i.ready + i.starting) as f64;
            let r2 = rps / (self.target_rps * all);
            recommended = if r2 <= 1.0 + TOLERANCE {
                current
            } else {
                (r2 * all).ceil() as usize
            };
        }
        self.recommendations.push(i.now_us, recommended as f64);
        let stabilized = if recommended < current {
            (self.recommendations.max().unwrap_or(recommended as f64) as usize).min(current)
        } else {
            recommended
        };
        let up_limit = (current * 2).max(current + 4);
        let next = bounds.clamp(stabilized.min(up_limit));
        self.current = Some(next);
        next
    }
}
