//! `kpa`: Knative's Pod Autoscaler on request concurrency, after
//! `knative/serving` `pkg/autoscaler/scaling/autoscaler.go` (`Scale`) with the defaults of
//! `config/core/configmaps/autoscaler.yaml`: container-concurrency-target-default 100,
//! container-concurrency-target-percentage 70, stable-window 60 s, panic-window-percentage
//! 10 (6 s), panic-threshold-percentage 200, max-scale-up-rate 1000, max-scale-down-rate
//! 2, scale-down-delay 0. The metric is the average total in-flight requests over each
//! window, as the queue-proxies report it.
//!
//! Each decision: `dspc = ceil(stable / target)`, `dppc = ceil(panic / target)`, both
//! bounded to `[floor(ready / max_down_rate), ceil(ready × max_up_rate)]`; panic mode
//! starts (or is extended) when `dppc / ready ≥ panic_threshold` and ends a stable window
//! after the last time it was; in panic the count is the largest `dppc` seen and never
//! goes down.

use super::mu_utilization::secs;
use super::window::Window;
use super::{Autoscaler, AutoscalerConfig, ScaleBounds, ScaleInputs};

#[derive(Debug, Clone)]
pub struct Kpa {
    target: f64,
    panic_threshold: f64,
    max_up_rate: f64,
    max_down_rate: f64,
    stable_window_us: u64,
    stable: Window,
    panic: Window,
    panic_since_us: Option<u64>,
    max_panic_pods: f64,
}

impl Kpa {
    pub fn new(cfg: &AutoscalerConfig) -> Self {
        let stable_window_us = secs(cfg.kpa_stable_window_s);
        Self {
            target: cfg.kpa_target_concurrency * cfg.kpa_target_utilization,
            panic_threshold: cfg.kpa_panic_threshold,
            max_up_rate: cfg.kpa_max_scale_up_rate,
            max_down_rate: cfg.kpa_max_scale_down_rate,
            stable_window_us,
            stable: Window::new(stable_window_us),
            panic: Window::new(
                (stable_window_us as f64 * cfg.kpa_panic_window_pct / 100.0).max(1.0) as u64,
            ),
            panic_since_us: None,
            max_panic_pods: 0.0,
        }
    }

    /// Whether the last decision was made in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic_since_us.is_some()
    }
}

impl Autoscaler for Kpa {
    fn name(&self) -> &'static str {
        "kpa"
    }

    fn decide(&mut self, i: &ScaleInputs, bounds: &ScaleBounds) -> usize {
        self.stable.push(i.now_us, i.in_flight_requests);
        self.panic.push(i.now_us, i.in_flight_requests);
        let ready = (i.ready.max(1)) as f64;
        let max_up = (self.max_up_rate * ready).ceil();
        let max_down = (ready / self.max_down_rate).floor();
        let bound = |x: f64| x.min(max_up).max(max_down);
        let dspc = bound((self.stable.mean() / self.target).ceil());
        let dppc = bound((self.panic.mean() / self.target).ceil());
        let over = dppc / ready >= self.panic_threshold;
        if over {
            self.panic_since_us = Some(i.now_us);
        } else if let Some(since) = self.panic_since_us {
            if i.now_us > since.saturating_add(self.stable_window_us) {
                self.panic_since_us = None;
                self.max_panic_pods = 0.0;
            }
        }
        let desired = if self.panic_since_us.is_some() {
            self.max_panic_pods = self.max_panic_pods.max(dppc);
            self.max_panic_pods
        } else {
            dspc
        };
        bounds.clamp(desired.min(usize::MAX as f64) as usize)
    }
}
