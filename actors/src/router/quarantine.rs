//! Poison requests. An engine bug set off by one request shape breaks every replica
//! that serves it; retried and re-sent, such a request would walk through the fleet.
//! A request that was on a replica when the replica failed is *implicated* there. An
//! implicated request stays inside its slice's subset (no spill, retries only there),
//! and one implicated on `limit` distinct replicas within `window_ms` is refused
//! outright, as Google's front ends treat a "query of death". So its damage stays
//! within its subset, and bystanders of a failure only lose the right to spill.
//!
//! Requests are known by a fingerprint of their body: a client's retry of the same
//! request has the same one.

use crate::slice::ReplicaId;
use std::collections::HashMap;

/// A request's fingerprint: a hash of its body as the client sent it.
pub fn fingerprint(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(body, 0x5155_4152_414e_5449)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuarantineConfig {
    /// Distinct replicas a request may be implicated on before it is refused; 0 turns
    /// the quarantine off (nothing is confined or refused).
    pub limit: usize,
    /// How long an implication counts.
    pub window_ms: u64,
    /// Fingerprints remembered at most (the oldest are forgotten first).
    pub capacity: usize,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            limit: 2,
            window_ms: 10 * 60_000,
            capacity: 10_000,
        }
    }
}

/// What the router does with a request, given its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never implicated: routed as usual.
    Clear,
    /// Implicated on fewer than `limit` replicas: kept inside its subset.
    Confined,
    /// Implicated on `limit` replicas: refused.
    Refused { replicas: usize },
}

/// One implication, as routers tell each other: `age_ms` rather than a time, because
/// nodes' clocks differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Implication {
    pub fingerprint: u64,
    pub replica: ReplicaId,
    pub age_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Quarantine {
    config: QuarantineConfig,
    /// Fingerprint → (replica, when implicated there), newest time per replica.
    entries: HashMap<u64, Vec<(ReplicaId, u64)>>,
}

impl Quarantine {
    pub fn new(config: QuarantineConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
        }
    }

    pub fn config(&self) -> QuarantineConfig {
        self.config
    }

    /// The request `fingerprint` was on `replica` when it failed at `at_ms`.
    pub fn implicate(&mut self, fingerprint: u64, replica: ReplicaId, at_ms: u64) {
        if self.config.limit == 0 {
            return;
        }
        let list = self.entries.entry(fingerprint).or_default();
        match list.iter_mut().find(|(r, _)| *r == replica) {
            Some(e) => e.1 = e.1.max(at_ms),
            None => list.push((replica, at_ms)),
        }
        if self.entries.len() > self.config.capacity {
            self.forget_oldest();
        }
    }

    /// Implications another router reported at `now_ms`.
    pub fn merge(&mut self, from: &[Implication], now_ms: u64) {
        for i in from {
            if i.age_ms < self.config.window_ms {
                self.implicate(i.fingerprint, i.replica, now_ms.saturating_sub(i.age_ms));
            }
        }
    }

    pub fn verdict(&self, fingerprint: u64, now_ms: u64) -> Verdict {
        let live = self.live(fingerprint, now_ms);
        if live == 0 {
            Verdict::Clear
        } else if live >= self.config.limit {
            Verdict::Refused { replicas: live }
        } else {
            Verdict::Confined
        }
    }

    /// Distinct replicas `fingerprint` is implicated on within the window.
    fn live(&self, fingerprint: u64, now_ms: u64) -> usize {
        self.entries.get(&fingerprint).map_or(0, |l| {
            l.iter()
                .filter(|(_, at)| now_ms.saturating_sub(*at) < self.config.window_ms)
                .count()
        })
    }

    /// Implications made within the last `max_age_ms` (and the window), for the other
    /// routers; drops the expired ones. Routers tell each other their fresh ones several
    /// times over rather than everything they hold, which stays small after a failure
    /// that implicated many bystanders.
    pub fn recent(&mut self, now_ms: u64, max_age_ms: u64) -> Vec<Implication> {
        let window = self.config.window_ms;
        self.entries.retain(|_, l| {
            l.retain(|(_, at)| now_ms.saturating_sub(*at) < window);
            !l.is_empty()
        });
        let mut out: Vec<Implication> = self
            .entries
            .iter()
            .flat_map(|(&fingerprint, l)| {
                l.iter().map(move |&(replica, at)| Implication {
                    fingerprint,
                    replica,
                    age_ms: now_ms.saturating_sub(at),
                })
            })
            .filter(|i| i.age_ms <= max_age_ms)
            .collect();
        out.sort_by_key(|i| (i.fingerprint, i.replica));
        out
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .map(|(&fp, l)| (l.iter().map(|e| e.1).max().unwrap_or(0), fp))
            .min();
        if let Some((_, fp)) = oldest {
            self.entries.remove(&fp);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const R: fn(u64) -> ReplicaId = ReplicaId;

    #[test]
    fn a_request_is_confined_then_refused() {
        let mut q = Quarantine::new(QuarantineConfig::default());
        assert_eq!(q.verdict(7, 0), Verdict::Clear);
        q.implicate(7, R(1), 1_000);
        assert_eq!(q.verdict(7, 1_000), Verdict::Confined);
        // The same replica again does not count twice.
        q.implicate(7, R(1), 2_000);
        assert_eq!(q.verdict(7, 2_000), Verdict::Confined);
        q.implicate(7, R(2), 3_000);
        assert_eq!(q.verdict(7, 3_000), Verdict::Refused { replicas: 2 });
        // Other requests are untouched.
        assert_eq!(q.verdict(8, 3_000), Verdict::Clear);
    }

    #[test]
    fn a_limit_of_zero_turns_it_off() {
        let mut q = Quarantine::new(QuarantineConfig {
            limit: 0,
            ..Default::default()
        });
        for r in 0..5 {
            q.implicate(7, R(r), 0);
        }
        assert_eq!(q.verdict(7, 0), Verdict::Clear);
    }

    #[test]
    fn implications_expire() {
        let cfg = QuarantineConfig {
            window_ms: 10_000,
            ..Default::default()
        };
        let mut q = Quarantine::new(cfg);
        q.implicate(7, R(1), 0);
        q.implicate(7, R(2), 5_000);
        assert_eq!(q.verdict(7, 9_999), Verdict::Refused { replicas: 2 });
        assert_eq!(q.verdict(7, 10_000), Verdict::Confined);
        assert_eq!(q.verdict(7, 15_000), Verdict::Clear);
        assert!(q.recent(15_000, u64::MAX).is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn gossip_carries_ages_so_clocks_need_not_agree() {
        let mut a = Quarantine::new(QuarantineConfig::default());
        a.implicate(7, R(1), 50_000);
        a.implicate(7, R(2), 58_000);
        // Router b's clock reads 1_000_000 when a's reads 60_000.
        let mut b = Quarantine::new(QuarantineConfig::default());
        b.merge(&a.recent(60_000, u64::MAX), 1_000_000);
        assert_eq!(a.recent(60_000, 5_000).len(), 1, "only r2 is fresh");
        assert_eq!(b.verdict(7, 1_000_000), Verdict::Refused { replicas: 2 });
        let window = QuarantineConfig::default().window_ms;
        // r1 was implicated 10 s before b's now, so it expires 10 s earlier than r2.
        assert_eq!(b.verdict(7, 1_000_000 + window - 10_000), Verdict::Confined);
        assert_eq!(b.verdict(7, 1_000_000 + window - 2_000), Verdict::Clear);
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let cfg = QuarantineConfig {
            capacity: 3,
            ..Default::default()
        };
        let mut q = Quarantine::new(cfg);
        for fp in 0..5u64 {
            q.implicate(fp, R(1), fp * 10);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.verdict(0, 50), Verdict::Clear);
        assert_eq!(q.verdict(4, 50), Verdict::Confined);
    }

    proptest! {
        /// The verdict depends only on distinct replicas within the window, whatever
        /// the order implications arrive in, directly or by gossip.
        #[test]
        fn verdict_counts_distinct_live_replicas(
            events in proptest::collection::vec((0u64..4, 0u64..30_000), 0..20),
            now in 30_000u64..40_000,
        ) {
            let cfg = QuarantineConfig { window_ms: 20_000, limit: 3, capacity: 100 };
            let mut direct = Quarantine::new(cfg);
            for &(r, at) in &events {
                direct.implicate(1, R(r), at);
            }
            let mut live: Vec<u64> = events
                .iter()
                .filter(|(_, at)| now - at < cfg.window_ms)
                .map(|e| e.0)
                .collect();
            live.sort_unstable();
            live.dedup();
            let expected = match live.len() {
                0 => Verdict::Clear,
                n if n >= 3 => Verdict::Refused { replicas: n },
                _ => Verdict::Confined,
            };
            prop_assert_eq!(direct.verdict(1, now), expected);
            let mut relayed = Quarantine::new(cfg);
            let mut clone = direct.clone();
            relayed.merge(&clone.recent(now, u64::MAX), now);
            prop_assert_eq!(relayed.verdict(1, now), expected);
        }
    }
}
