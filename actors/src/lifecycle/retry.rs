//! The retry rule: when a call to a replica fails before any answer came back, whether
//! the request gets another replica, and whether it is implicated in the failure.

use crate::prober::RetryBudget;

/// The front door's next move after an upstream failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpstreamFailure {
    /// The replica took the request and then failed: the request may be what broke it,
    /// so it is implicated (see `quarantine`).
    pub(crate) implicate: bool,
    /// Place it once more elsewhere; otherwise answer 502.
    pub(crate) retry: bool,
}

/// A request gets at most one retry, and only while the router's retry budget allows,
/// so that failing replicas do not multiply the load that made them fail.
pub(crate) fn upstream_failed(
    delivered: bool,
    already_retried: bool,
    budget: &mut RetryBudget,
    now_ms: u64,
) -> UpstreamFailure {
    UpstreamFailure {
        implicate: delivered,
        retry: !already_retried && budget.try_retry(now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prober::ProbeConfig;

    #[test]
    fn one_retry_per_request_within_the_budget() {
        let config = ProbeConfig {
            retry_budget_ratio: 0.0,
            retry_budget_min_per_s: 0.2,
            ..ProbeConfig::default()
        };
        let mut budget = RetryBudget::new(&config);
        // The reserve holds two retries over the 10 s window.
        let first = upstream_failed(false, false, &mut budget, 0);
        assert_eq!(
            first,
            UpstreamFailure {
                implicate: false,
                retry: true
            }
        );
        assert!(!upstream_failed(true, true, &mut budget, 0).retry);
        assert!(upstream_failed(true, false, &mut budget, 0).implicate);
        assert!(
            !upstream_failed(false, false, &mut budget, 0).retry,
            "budget spent"
        );
    }
}
