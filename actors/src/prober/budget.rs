//! The retry budget: retries stay a bounded share of traffic, so that when replicas fail
//! the retries do not multiply the load that made them fail. Finagle's `RetryBudget` is
//! the model: every original request deposits `ratio` of a retry, a standing reserve of
//! `min_per_s` retries per second lets a quiet client retry at all, and deposits and
//! withdrawals expire together after a window (Finagle's `ttl`, 10 s).
//!
//! Counted in whole-second slots over a sliding window of [`WINDOW_S`] slots, in integer
//! millionths of a retry, so the same calls give the same answers everywhere. Over any
//! run whose calls span slots `0..=s`, the retries allowed are at most
//! `ratio × requests + min_per_s × (s + WINDOW_S)`.

use super::ProbeConfig;

/// Slots in the window; each slot is one second.
pub const WINDOW_S: u64 = 10;
const SLOT_MS: u64 = 1_000;
const SLOTS: usize = WINDOW_S as usize;
/// One retry, in the budget's unit.
const RETRY: u64 = 1_000_000;

/// A router's budget of retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    /// Deposit per request, millionths of a retry (rounded down, so never above ratio).
    per_request: u64,
    /// Reserve over the window, millionths of a retry.
    reserve: u64,
    /// Counts of the window's slots, each at index `slot % WINDOW_S`.
    requests: [u64; SLOTS],
    retries: [u64; SLOTS],
    /// Latest slot seen; time never runs backwards here.
    slot: u64,
}

impl RetryBudget {
    /// A budget with nothing deposited, from `config.retry_budget_ratio` and
    /// `config.retry_budget_min_per_s` (validate the config first; out-of-range values
    /// are clamped to zero).
    pub fn new(config: &ProbeConfig) -> Self {
        let micro = |v: f64| (v.max(0.0) * RETRY as f64).floor() as u64;
        Self {
            per_request: micro(config.retry_budget_ratio.min(1.0)),
            reserve: micro(config.retry_budget_min_per_s).saturating_mul(WINDOW_S),
            requests: [0; SLOTS],
            retries: [0; SLOTS],
            slot: 0,
        }
    }

    /// An original request (not a retry) was sent at `now_ms`.
    pub fn on_request(&mut self, now_ms: u64) {
        let i = self.advance(now_ms);
        self.requests[i] = self.requests[i].saturating_add(1);
    }

    /// Whether a retry may be sent at `now_ms`; if so, it is counted.
    pub fn try_retry(&mut self, now_ms: u64) -> bool {
        let i = self.advance(now_ms);
        let requests: u64 = self.requests.iter().sum();
        let retries: u64 = self.retries.iter().sum();
        let allowed = requests
            .saturating_mul(self.per_request)
            .saturating_add(self.reserve);
        if (retries + 1).saturating_mul(RETRY) > allowed {
            return false;
        }
        self.retries[i] += 1;
        true
    }

    /// Whether [`Self::try_retry`] at `now_ms` would grant a retry; counts nothing.
    pub fn allows(&self, now_ms: u64) -> bool {
        self.clone().try_retry(now_ms)
    }

    /// Moves the window up to `now_ms`'s slot, emptying the slots that left it; returns
    /// the index of the current slot.
    fn advance(&mut self, now_ms: u64) -> usize {
        let slot = now_ms / SLOT_MS;
        if slot > self.slot {
            let stale = (slot - self.slot).min(WINDOW_S);
            for s in slot + 1 - stale..=slot {
                let i = (s % WINDOW_S) as usize;
                self.requests[i] = 0;
                self.retries[i] = 0;
            }
            self.slot = slot;
        }
        (self.slot % WINDOW_S) as usize
    }
}
