//! `request-rate`: the Kubernetes Horizontal Pod Autoscaler on a requests-per-second
//! `Pods` metric with an `AverageValue` target, transcribed from `kubernetes/kubernetes`
//! `pkg/controller/podautoscaler/horizontal.go` (`reconcileAutoscaler`,
//! `normalizeDesiredReplicasWithBehaviors`, `stabilizeRecommendationWithBehaviors`,
//! `convertDesiredReplicasWithBehaviorRate`, `calculateScale{Up,Down}Limit...`) and
//! `replica_calculator.go` (`calcPlainMetricReplicas`), with the defaults of the
//! controller flags and `pkg/apis/autoscaling/v2/defaults.go`: sync period 15 s,
//! tolerance 0.1, scale-up stabilization 0 s and policies "4 pods or 100% per 15 s,
//! whichever is more", scale-down stabilization 300 s and policy "100% per 15 s",
//! minReplicas at least 1.
//!
//! At each sync (every tick is observed, but the HPA acts every sync period):
//! - the metric is the request rate over the metric window (a Prometheus `rate(..[1m])`
//!   behind the adapter) per ready pod; `ratio = rps / (ready × target)`;
//! - with no pod starting: within the tolerance the count stays, else
//!   `ceil(ratio × ready)`;
//! - replicas still cold-starting have no metric yet (an engine loading weights serves
//!   neither requests nor `/metrics`): they are the calculator's missing pods, counted as
//!   using nothing on a scale-up and exactly the target on a scale-down, and the count
//!   stays if that brings the ratio within the tolerance or flips the direction;
//! - no ready pod means no metrics: the HPA does nothing;
//! - stabilization: the count moves toward the recommendation only as far as the
//!   smallest of the up window and the largest of the down window allow;
//! - rate limits: relative to the count at the start of each policy's period.

use std::collections::VecDeque;

use super::window::{secs_to_us, Window};
use super::{count, metric, Autoscaler, AutoscalerConfig, ScaleBounds, ScaleInputs};

#[derive(Debug, Clone)]
pub struct RequestRate {
    target_rps: f64,
    tolerance: f64,
    sync_us: u64,
    up_pods: usize,
    up_percent: f64,
    up_period_us: u64,
    down_percent: f64,
    down_period_us: u64,
    rate: Window,
    up_recs: Window,
    down_recs: Window,
    /// `(at_us, replicas added)` and `(at_us, replicas removed)` by recent rescales.
    up_events: VecDeque<(u64, usize)>,
    down_events: VecDeque<(u64, usize)>,
    /// The scale's `spec.replicas` (the last decision).
    current: Option<usize>,
    last_sync_us: Option<u64>,
}

impl RequestRate {
    pub fn new(cfg: &AutoscalerConfig) -> Self {
        Self {
            target_rps: cfg.target_rps_per_replica,
            tolerance: cfg.hpa_tolerance,
            sync_us: secs_to_us(cfg.hpa_sync_period_s),
            up_pods: cfg.hpa_scale_up_pods as usize,
            up_percent: f64::from(cfg.hpa_scale_up_percent),
            up_period_us: secs_to_us(cfg.hpa_scale_up_period_s),
            down_percent: f64::from(cfg.hpa_scale_down_percent),
            down_period_us: secs_to_us(cfg.hpa_scale_down_period_s),
            rate: Window::new(secs_to_us(cfg.hpa_metric_window_s)),
            up_recs: Window::new(secs_to_us(cfg.hpa_up_stabilization_s)),
            down_recs: Window::new(secs_to_us(cfg.hpa_down_stabilization_s)),
            up_events: VecDeque::new(),
            down_events: VecDeque::new(),
            current: None,
            last_sync_us: None,
        }
    }

    /// `calcPlainMetricReplicas`: the unstabilized recommendation, or `None` without
    /// metrics.
    fn recommend(&self, rps: f64, ready: usize, starting: usize, current: usize) -> Option<usize> {
        if ready == 0 {
            return None;
        }
        let target = self.target_rps;
        let within = |r: f64| (1.0 - r).abs() <= self.tolerance;
        let ratio = rps / (ready as f64 * target);
        if starting == 0 {
            return Some(if within(ratio) {
                current
            } else {
                count((ratio * ready as f64).ceil())
            });
        }
        let assumed = if ratio < 1.0 { target } else { 0.0 };
        let n = (ready + starting) as f64;
        let new_ratio = (rps + starting as f64 * assumed) / (n * target);
        if within(new_ratio) || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0)
        {
            return Some(current);
        }
        let new = count((new_ratio * n).ceil());
        if (new_ratio < 1.0 && new > current) || (new_ratio > 1.0 && new < current) {
            return Some(current);
        }
        Some(new)
    }

    /// Replicas added and removed by rescales within the last `period_us`.
    fn changes_within(&self, now: u64, period_us: u64) -> (usize, usize) {
        let sum = |events: &VecDeque<(u64, usize)>| {
            events
                .iter()
                .filter(|(t, _)| t.saturating_add(period_us) > now)
                .map(|e| e.1)
                .sum::<usize>()
        };
        (sum(&self.up_events), sum(&self.down_events))
    }
}

impl Autoscaler for RequestRate {
    fn name(&self) -> &'static str {
        "request-rate"
    }

    fn decide(&mut self, i: &ScaleInputs, bounds: &ScaleBounds) -> usize {
        let now = i.now_us;
        self.rate.push(now, metric(i.requests_per_s));
        // minReplicas is at least 1 without the alpha HPAScaleToZero gate.
        let limits = |n: usize| bounds.clamp(n.max(1));
        let current = *self.current.get_or_insert(i.ready + i.starting);
        if self
            .last_sync_us
            .is_some_and(|t| now < t.saturating_add(self.sync_us))
        {
            let held = limits(current);
            self.current = Some(held);
            return held;
        }
        self.last_sync_us = Some(now);
        if limits(current) != current {
            // Outside min/max the HPA goes straight to the bound, reading no metric.
            self.current = Some(limits(current));
            return limits(current);
        }
        let Some(desired) = self.recommend(self.rate.mean(), i.ready, i.starting, current) else {
            return current;
        };

        // Stabilization: between the lowest recent recommendation (up window) and the
        // highest (down window), this one included.
        self.up_recs.push(now, desired as f64);
        self.down_recs.push(now, desired as f64);
        let up = self.up_recs.min().map_or(desired, count);
        let down = self.down_recs.max().map_or(desired, count);
        let stabilized = current.max(up).min(down);

        // Rate limits, each policy relative to the count at the start of its period.
        let next = if stabilized > current {
            let (added, removed) = self.changes_within(now, self.up_period_us);
            let start = (current + removed).saturating_sub(added);
            let by_pods = start + self.up_pods;
            let by_percent = count((start as f64 * (1.0 + self.up_percent / 100.0)).ceil());
            stabilized.min(by_pods.max(by_percent).max(current))
        } else if stabilized < current {
            let (added, removed) = self.changes_within(now, self.down_period_us);
            let start = (current + removed).saturating_sub(added);
            let limit = count(start as f64 * (1.0 - self.down_percent / 100.0));
            stabilized.max(limit.min(current))
        } else {
            current
        };
        let next = limits(next);

        let keep = self.up_period_us.max(self.down_period_us);
        for events in [&mut self.up_events, &mut self.down_events] {
            events.retain(|(t, _)| t.saturating_add(keep) > now);
        }
        if next > current {
            self.up_events.push_back((now, next - current));
        } else if next < current {
            self.down_events.push_back((now, current - next));
        }
        self.current = Some(next);
        next
    }
}
