//! `kpa`: Knative's Pod Autoscaler on request concurrency, transcribed from
//! `knative/serving` `pkg/autoscaler/scaling/autoscaler.go` (`newAutoscaler`, `Scale`),
//! with the defaults of `config/core/configmaps/autoscaler.yaml` and
//! `pkg/autoscaler/config/config.go`: container-concurrency-target-default 100,
//! container-concurrency-target-percentage 70 (target 70 in flight per pod),
//! stable-window 60 s, panic-window-percentage 10 (6 s), panic-threshold-percentage 200,
//! max-scale-up-rate 1000, max-scale-down-rate 2, scale-down-delay 0, tick-interval 2 s.
//! The target is configurable because an LLM replica's useful concurrency is nothing like
//! 70; the simulator sets one per replica.
//!
//! The metric is the average of the revision's total in-flight requests over each window
//! (Knative's collector averages per-second scrapes; here one sample a tick). Each tick,
//! with `ready = max(1, ready pods)`:
//! - `dspc = ceil(stable / target)`, `dppc = ceil(panic / target)`, each kept within
//!   `[floor(ready / max_down_rate), ceil(ready × max_up_rate)]`;
//! - panic starts, or is extended, when the unbounded `dppc / ready ≥ panic_threshold`,
//!   and ends on the first tick more than a stable window after it was last extended;
//! - in panic the count is `max(dspc, dppc)` but never below the largest count of this
//!   panic (no scale-down in panic); out of panic it is `dspc`;
//! - with a scale-down delay, the count is the largest of the delay window.
//!
//! Like `newAutoscaler`, a core that first sees more than one ready pod starts in panic
//! holding that count, so a restarted leader with no metric history does not scale down
//! before a stable window of data. Scaling to zero is the bounds' business (`min`), as it
//! is the KPA reconciler's (grace period) rather than `Scale`'s; the activator, burst
//! capacity and activation scale do not change the count and are left out.

use super::window::{secs_to_us, Window};
use super::{count, metric, Autoscaler, AutoscalerConfig, ScaleBounds, ScaleInputs};

#[derive(Debug, Clone)]
pub struct Kpa {
    /// `TargetValue`: concurrency target × target utilization.
    target: f64,
    panic_threshold: f64,
    max_up_rate: f64,
    max_down_rate: f64,
    stable_window_us: u64,
    stable: Window,
    panic: Window,
    /// `delayWindow`, when scale-down-delay is set.
    delay: Option<Window>,
    /// `panicTime`: when panic mode was entered or last extended.
    panic_since_us: Option<u64>,
    max_panic_pods: usize,
    seen: bool,
}

impl Kpa {
    pub fn new(cfg: &AutoscalerConfig) -> Self {
        let stable_window_us = secs_to_us(cfg.kpa_stable_window_s);
        // The panic window is rounded to the metric bucket size (1 s), as Knative does.
        let panic_s = (cfg.kpa_stable_window_s * cfg.kpa_panic_window_pct / 100.0)
            .round()
            .max(1.0);
        let delay_us = secs_to_us(cfg.kpa_scale_down_delay_s);
        Self {
            target: cfg.kpa_target_concurrency * cfg.kpa_target_utilization,
            panic_threshold: cfg.kpa_panic_threshold,
            max_up_rate: cfg.kpa_max_scale_up_rate,
            max_down_rate: cfg.kpa_max_scale_down_rate,
            stable_window_us,
            stable: Window::new(stable_window_us),
            panic: Window::new(secs_to_us(panic_s)),
            delay: (delay_us > 0).then(|| Window::new(delay_us)),
            panic_since_us: None,
            max_panic_pods: 0,
            seen: false,
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
        let now = i.now_us;
        if !self.seen {
            self.seen = true;
            if i.ready > 1 {
                self.panic_since_us = Some(now);
                self.max_panic_pods = i.ready;
            }
        }
        let concurrency = metric(i.in_flight_requests);
        self.stable.push(now, concurrency);
        self.panic.push(now, concurrency);

        let ready = i.ready.max(1) as f64;
        let max_up = (self.max_up_rate * ready).ceil();
        let max_down = (ready / self.max_down_rate).floor();
        let dspc = (self.stable.mean() / self.target).ceil();
        let dppc = (self.panic.mean() / self.target).ceil();
        let stable_pods = count(dspc.max(max_down).min(max_up));
        let panic_pods = count(dppc.max(max_down).min(max_up));

        if dppc / ready >= self.panic_threshold {
            self.panic_since_us = Some(now);
        } else if let Some(since) = self.panic_since_us {
            if since.saturating_add(self.stable_window_us) < now {
                self.panic_since_us = None;
                self.max_panic_pods = 0;
            }
        }

        let mut desired = stable_pods;
        if self.panic_since_us.is_some() {
            desired = desired.max(panic_pods);
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }
        if let Some(delay) = &mut self.delay {
            delay.push(now, desired as f64);
            desired = delay.max().map_or(desired, count);
        }
        bounds.clamp(desired)
    }
}
