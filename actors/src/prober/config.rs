//! The prober's knobs in one TOML-friendly struct (a node's `[prober]` section), checked
//! before a core is built so a bad file is a clear error instead of a prober that ejects
//! everything or nothing.

use serde::Deserialize;

/// How the health prober and the retry budget behave. Times are milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Probe a replica once no real request on it has completed for this long. Default 5 s.
    pub idle_window_ms: u64,
    /// Consecutive failed probes that condemn a replica. Default 3.
    pub failures_to_eject: u32,
    /// A probe not answered within this long has failed. Default 5 s.
    pub probe_timeout_ms: u64,
    /// Work queued but the engine's token counter still for this long is a hang.
    /// Default 10 s: longer than any single step of a real engine (a long prefill or a
    /// CUDA-graph capture), short enough that a hung replica is restarted in seconds.
    pub stall_window_ms: u64,
    /// Busy time (on a CPU, or waiting on a run queue for one) of an engine's processes,
    /// as a share of one CPU, up to which an engine holding work without writing a token
    /// counts as idle: not computing, so stuck, and confirmed sooner than by the token
    /// counter alone. Default 0.1. 0 turns the rule off — for an engine that waits for
    /// its accelerator without using or queueing for a CPU, which would look idle while
    /// it computes (measure it before relying on the rule there).
    pub idle_busy_share: f64,
    /// Largest share of the pool the prober ejects at once, in (0, 1]; at least one
    /// replica may always be ejected (Envoy's rule for `max_ejection_percent`).
    ///
    /// Default 0.34 rather than Envoy's `max_ejection_percent` of 10%: LLM pools hold a
    /// handful of replicas, where 10% would mean "one at a time" for any pool under 20.
    /// 0.34 lets one of three, two of six replicas go, and keeps it below Envoy's panic
    /// threshold of 50% so that the prober never ejects so much that a router would have
    /// to stop honouring health to have anywhere to send traffic. Condemned replicas past
    /// the cap stay in service (see [`super::Verdict::Deferred`]): a fleet-wide verdict is
    /// more likely a fault of the prober's own path than of every engine at once.
    pub max_ejected_share: f64,
    /// Retries allowed per original request, in [0, 1]. Default 0.1 (10% of traffic).
    pub retry_budget_ratio: f64,
    /// Retries allowed per second regardless of traffic, so a quiet router can still
    /// retry (Finagle's `minRetriesPerSec`, Envoy's `min_retry_concurrency`). Default 1.
    pub retry_budget_min_per_s: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            idle_window_ms: 5_000,
            failures_to_eject: 3,
            probe_timeout_ms: 5_000,
            stall_window_ms: Self::DEFAULT_STALL_WINDOW_MS,
            idle_busy_share: 0.1,
            max_ejected_share: 0.34,
            retry_budget_ratio: 0.1,
            retry_budget_min_per_s: 1.0,
        }
    }
}

/// Why a configuration is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeConfigError {
    #[error("prober setting {name} must be {expected}, got {got}")]
    OutOfRange {
        name: &'static str,
        expected: &'static str,
        got: f64,
    },
}

impl ProbeConfig {
    /// `stall_window_ms` unless configured.
    pub const DEFAULT_STALL_WINDOW_MS: u64 = 10_000;

    /// Checks every knob: zero windows would probe or condemn on every tick.
    pub fn validate(&self) -> Result<(), ProbeConfigError> {
        let check = |name, got: f64, ok: bool, expected| {
            if got.is_finite() && ok {
                Ok(())
            } else {
                Err(ProbeConfigError::OutOfRange {
                    name,
                    expected,
                    got,
                })
            }
        };
        let positive = |name, v: u64| check(name, v as f64, v > 0, "at least 1");
        positive("idle_window_ms", self.idle_window_ms)?;
        positive("failures_to_eject", u64::from(self.failures_to_eject))?;
        positive("probe_timeout_ms", self.probe_timeout_ms)?;
        positive("stall_window_ms", self.stall_window_ms)?;
        let idle = self.idle_busy_share;
        check(
            "idle_busy_share",
            idle,
            (0.0..=1.0).contains(&idle),
            "in [0, 1]",
        )?;
        let share = self.max_ejected_share;
        check(
            "max_ejected_share",
            share,
            share > 0.0 && share <= 1.0,
            "in (0, 1]",
        )?;
        let ratio = self.retry_budget_ratio;
        check(
            "retry_budget_ratio",
            ratio,
            (0.0..=1.0).contains(&ratio),
            "in [0, 1]",
        )?;
        let floor = self.retry_budget_min_per_s;
        check(
            "retry_budget_min_per_s",
            floor,
            floor >= 0.0,
            "a number >= 0",
        )
    }

    /// How many of a pool of `pool` replicas may be ejected at once:
    /// `max(1, floor(share × pool))`, and none of an empty pool. With one or two replicas
    /// that is all or half of them: a hung replica serves nothing, so restarting it costs
    /// no capacity that was real.
    pub fn max_ejected(&self, pool: usize) -> usize {
        if pool == 0 {
            return 0;
        }
        let share = (self.max_ejected_share * pool as f64).floor() as usize;
        share.clamp(1, pool)
    }
}
