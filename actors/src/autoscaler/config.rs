//! Every autoscaler's knobs in one TOML-friendly struct (the node's `[autoscaler]`
//! section), defaulting to each source's own defaults, checked before any core is built so
//! a bad file is a clear error instead of a fleet that never scales.

use serde::Deserialize;

/// Knobs for all four autoscalers; a policy reads only its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoscalerConfig {
    /// `sluice`: share of a replica's MU capacity to plan for, in (0, 1]. Default 0.7.
    pub target_utilization: f64,
    /// `sluice`: window of the MU rate that scales up. Default 30 s.
    pub up_window_s: f64,
    /// How long a replica takes from being asked for to serving (its engine's cold
    /// start). Default 60 s.
    pub cold_start_s: f64,
    /// `sluice`, and a new leader's guard: scale down only to the largest need of this
    /// window. Unset: `cold_start_s` (see [`Self::down_window_s`]).
    pub down_window_s: Option<f64>,

    /// `kpa`: container-concurrency-target-default. Default 100.
    pub kpa_target_concurrency: f64,
    /// `kpa`: container-concurrency-target-percentage / 100, in (0, 1]. Default 0.7.
    pub kpa_target_utilization: f64,
    /// `kpa`: stable-window, in [6 s, 3600 s]. Default 60 s.
    pub kpa_stable_window_s: f64,
    /// `kpa`: panic-window-percentage of the stable window, in [1, 100]. Default 10.
    pub kpa_panic_window_pct: f64,
    /// `kpa`: panic-threshold-percentage / 100, in [1.1, 10]. Default 2.
    pub kpa_panic_threshold: f64,
    /// `kpa`: max-scale-up-rate, above 1. Default 1000.
    pub kpa_max_scale_up_rate: f64,
    /// `kpa`: max-scale-down-rate, above 1. Default 2.
    pub kpa_max_scale_down_rate: f64,
    /// `kpa`: scale-down-delay, at least 0 (0 = off). Default 0 s.
    pub kpa_scale_down_delay_s: f64,

    /// `request-rate`: target requests per second per replica. Default 200 (Knative's
    /// requests-per-second-target-default; the HPA itself has no default target).
    pub target_rps_per_replica: f64,
    /// `request-rate`: `--horizontal-pod-autoscaler-sync-period`. Default 15 s.
    pub hpa_sync_period_s: f64,
    /// `request-rate`: `--horizontal-pod-autoscaler-tolerance`, in [0, 1). Default 0.1.
    pub hpa_tolerance: f64,
    /// `request-rate`: the rate window of the metric (a Prometheus `rate(..[1m])` behind
    /// the custom-metrics adapter). Default 60 s.
    pub hpa_metric_window_s: f64,
    /// `request-rate`: behavior.scaleUp.stabilizationWindowSeconds. Default 0 s.
    pub hpa_up_stabilization_s: f64,
    /// `request-rate`: behavior.scaleDown.stabilizationWindowSeconds
    /// (`--horizontal-pod-autoscaler-downscale-stabilization`). Default 300 s.
    pub hpa_down_stabilization_s: f64,
    /// `request-rate`: scale-up policy `Pods`. Default 4.
    pub hpa_scale_up_pods: u32,
    /// `request-rate`: scale-up policy `Percent`. Default 100.
    pub hpa_scale_up_percent: u32,
    /// `request-rate`: periodSeconds of both scale-up policies. Default 15 s.
    pub hpa_scale_up_period_s: f64,
    /// `request-rate`: scale-down policy `Percent`, in (0, 100]. Default 100.
    pub hpa_scale_down_percent: u32,
    /// `request-rate`: periodSeconds of the scale-down policy. Default 15 s.
    pub hpa_scale_down_period_s: f64,

    /// `static-peak`: the count; `None` means the fleet's maximum.
    pub static_replicas: Option<usize>,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            target_utilization: 0.7,
            up_window_s: 30.0,
            cold_start_s: 60.0,
            down_window_s: None,
            kpa_target_concurrency: 100.0,
            kpa_target_utilization: 0.7,
            kpa_stable_window_s: 60.0,
            kpa_panic_window_pct: 10.0,
            kpa_panic_threshold: 2.0,
            kpa_max_scale_up_rate: 1000.0,
            kpa_max_scale_down_rate: 2.0,
            kpa_scale_down_delay_s: 0.0,
            target_rps_per_replica: 200.0,
            hpa_sync_period_s: 15.0,
            hpa_tolerance: 0.1,
            hpa_metric_window_s: 60.0,
            hpa_up_stabilization_s: 0.0,
            hpa_down_stabilization_s: 300.0,
            hpa_scale_up_pods: 4,
            hpa_scale_up_percent: 100,
            hpa_scale_up_period_s: 15.0,
            hpa_scale_down_percent: 100,
            hpa_scale_down_period_s: 15.0,
            static_replicas: None,
        }
    }
}

/// Why a configuration or a name is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AutoscalerError {
    #[error("unknown autoscaler '{0}': choose from sluice, static-peak, kpa, request-rate")]
    Unknown(String),
    #[error("autoscaler setting {name} must be {expected}, got {got}")]
    OutOfRange {
        name: &'static str,
        expected: &'static str,
        got: f64,
    },
}

/// Knative's smallest target (`autoscaling.TargetMin`).
const KNATIVE_TARGET_MIN: f64 = 0.01;

impl AutoscalerConfig {
    /// How long idle capacity is held before it is given back: as long as bringing it
    /// back would take, unless set. Holding an unneeded replica that long costs at most
    /// what releasing it and cold-starting it again would (the rent-or-buy bound: at
    /// most twice the GPU time of knowing the future), where a window of many cold
    /// starts pays for idle replicas through every lull; shorter than a cold start, a
    /// lull the length of one start thrashes.
    pub fn down_window_s(&self) -> f64 {
        self.down_window_s.unwrap_or(self.cold_start_s)
    }

    /// Checks every knob against the range its source accepts (Knative's
    /// `pkg/autoscaler/config/config.go` validation for `kpa_*`, the HPA API validation
    /// for `hpa_*`).
    pub fn validate(&self) -> Result<(), AutoscalerError> {
        let check = |name, v: f64, ok: bool, expected| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(AutoscalerError::OutOfRange {
                    name,
                    expected,
                    got: v,
                })
            }
        };
        let share = |name, v: f64| check(name, v, v > 0.0 && v <= 1.0, "in (0, 1]");
        let positive = |name, v: f64| check(name, v, v > 0.0, "a positive number");
        let non_negative = |name, v: f64| check(name, v, v >= 0.0, "a number >= 0");

        share("target_utilization", self.target_utilization)?;
        positive("up_window_s", self.up_window_s)?;
        non_negative("cold_start_s", self.cold_start_s)?;
        if let Some(w) = self.down_window_s {
            positive("down_window_s", w)?;
        }

        positive("kpa_target_concurrency", self.kpa_target_concurrency)?;
        share("kpa_target_utilization", self.kpa_target_utilization)?;
        let target = self.kpa_target_concurrency * self.kpa_target_utilization;
        check(
            "kpa_target_concurrency * kpa_target_utilization",
            target,
            target >= KNATIVE_TARGET_MIN,
            "at least 0.01",
        )?;
        let w = self.kpa_stable_window_s;
        check(
            "kpa_stable_window_s",
            w,
            (6.0..=3600.0).contains(&w),
            "in [6, 3600] seconds",
        )?;
        let p = self.kpa_panic_window_pct;
        check(
            "kpa_panic_window_pct",
            p,
            (1.0..=100.0).contains(&p),
            "in [1, 100]",
        )?;
        let t = self.kpa_panic_threshold;
        check(
            "kpa_panic_threshold",
            t,
            (1.1..=10.0).contains(&t),
            "in [1.1, 10] (110% to 1000%)",
        )?;
        let up = self.kpa_max_scale_up_rate;
        check("kpa_max_scale_up_rate", up, up > 1.0, "above 1")?;
        let down = self.kpa_max_scale_down_rate;
        check("kpa_max_scale_down_rate", down, down > 1.0, "above 1")?;
        non_negative("kpa_scale_down_delay_s", self.kpa_scale_down_delay_s)?;

        positive("target_rps_per_replica", self.target_rps_per_replica)?;
        positive("hpa_sync_period_s", self.hpa_sync_period_s)?;
        let tol = self.hpa_tolerance;
        check("hpa_tolerance", tol, (0.0..1.0).contains(&tol), "in [0, 1)")?;
        positive("hpa_metric_window_s", self.hpa_metric_window_s)?;
        // The HPA API caps stabilization windows at one hour and policy periods at 30 min.
        for (name, v) in [
            ("hpa_up_stabilization_s", self.hpa_up_stabilization_s),
            ("hpa_down_stabilization_s", self.hpa_down_stabilization_s),
        ] {
            check(name, v, (0.0..=3600.0).contains(&v), "in [0, 3600] seconds")?;
        }
        for (name, v) in [
            ("hpa_scale_up_period_s", self.hpa_scale_up_period_s),
            ("hpa_scale_down_period_s", self.hpa_scale_down_period_s),
        ] {
            check(name, v, v > 0.0 && v <= 1800.0, "in (0, 1800] seconds")?;
        }
        let pods = f64::from(self.hpa_scale_up_pods);
        check("hpa_scale_up_pods", pods, pods > 0.0, "at least 1")?;
        let pct = f64::from(self.hpa_scale_up_percent);
        check("hpa_scale_up_percent", pct, pct > 0.0, "at least 1")?;
        let pct = f64::from(self.hpa_scale_down_percent);
        check(
            "hpa_scale_down_percent",
            pct,
            pct > 0.0 && pct <= 100.0,
            "in [1, 100]",
        )?;
        Ok(())
    }
}
