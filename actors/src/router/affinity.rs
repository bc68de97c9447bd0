//! Where each workload's prefix is likely cached, from the router's own history.
//!
//! The router knows where it sent every request of a workload and how long its prompt
//! was: the replica computes that prompt's KV blocks (before any request queued behind it
//! there) and keeps them in its prefix cache until enough newer KV pushes them out. So for
//! a new request the router expects a replica to hold `min(prompt of the workload's last
//! request there, this prompt)` tokens, scaled by
//!
//! - *survival*: the replica's prefix cache is an LRU of `cache_tokens`; the router counts
//!   the KV tokens it has written to each replica since (uncached prompt plus output), and
//!   expects the fraction `1 − written_since / cache_tokens` to remain;
//! - *reuse*: how much of what was expected actually hit, learned per workload from the
//!   `cached_tokens` the engine reports (a workload whose requests do not share prefixes,
//!   e.g. unrelated prompts under one API key, learns to expect little).
//!
//! Requests without a workload key (anonymous) share a key but nothing known about their
//! prompts; the router core learns no affinity for them.
//!
//! The estimate prices the request per replica (cached prompt tokens are nearly free) and
//! makes a warm replica outside the slice's subset a place the workload may stay. Memory
//! is bounded: a few replicas per workload, a bounded number of workloads.

use super::id_map::IdMap;
use crate::slice::ReplicaId;
use std::collections::HashMap;

/// Settings of the affinity tracker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinityConfig {
    /// Tokens of KV a replica's prefix cache holds.
    pub cache_tokens: u64,
    /// Replicas remembered per workload (the most recently used are kept).
    pub ways: usize,
    /// Weight of the newest observation in the reuse average (0..=1).
    pub alpha: f64,
    /// Workloads remembered at most; the least recently seen are forgotten first.
    pub max_workloads: usize,
}

impl Default for AffinityConfig {
    fn default() -> Self {
        Self {
            // A conservative default (an 8B model on one 80 GB GPU holds ~470k tokens);
            // a profile's engine block count gives the real number.
            cache_tokens: 262_144,
            ways: 4,
            alpha: 0.3,
            max_workloads: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Warm {
    replica: ReplicaId,
    /// Prompt tokens of the workload's last request there.
    tokens: u32,
    /// The replica's written-KV counter when that request last touched its prefix.
    stamp: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    warm: Vec<Warm>,
    /// Fraction of the expected cached tokens that hit (0..=1).
    reuse: f64,
    last_seen: u64,
}

/// Per-(workload, replica) expected prefix-cache contents.
#[derive(Debug, Clone)]
pub struct PrefixAffinity {
    config: AffinityConfig,
    /// KV tokens written to each replica by this router's requests, ever.
    written: IdMap<ReplicaId, u64>,
    workloads: HashMap<u64, Entry>,
    tick: u64,
}

impl PrefixAffinity {
    pub fn new(config: AffinityConfig) -> Self {
        Self {
            config,
            written: IdMap::default(),
            workloads: HashMap::new(),
            tick: 0,
        }
    }

    /// KV tokens written to `replica` by this router's requests, ever.
    pub fn written(&self, replica: ReplicaId) -> u64 {
        self.written.get(&replica).copied().unwrap_or(0)
    }

    /// Prompt tokens of a request of `workload` with `input` tokens that `replica` is
    /// expected to find in its prefix cache.
    pub fn expected_cached(&self, workload: u64, replica: ReplicaId, input: u32) -> u32 {
        let Some(e) = self.workloads.get(&workload) else {
            return 0;
        };
        let Some(w) = e.warm.iter().find(|w| w.replica == replica) else {
            return 0;
        };
        let since = self.written(replica).saturating_sub(w.stamp) as f64;
        let cap = self.config.cache_tokens.max(1) as f64;
        let survival = (1.0 - since / cap).clamp(0.0, 1.0);
        let held = f64::from(w.tokens.min(input));
        (held * survival * e.reuse.clamp(0.0, 1.0)).floor() as u32
    }

    /// The replicas that may hold part of `workload`'s prefix (at most `ways`).
    pub fn holders(&self, workload: u64) -> impl Iterator<Item = ReplicaId> + '_ {
        self.workloads
            .get(&workload)
            .into_iter()
            .flat_map(|e| e.warm.iter().map(|w| w.replica))
    }

    /// A request was sent to `replica`, which will write `new_kv` tokens of KV for it
    /// (uncached prompt plus output).
    pub fn on_placed(&mut self, replica: ReplicaId, new_kv: u64) {
        let written = self.written.entry(replica).or_default();
        *written = written.saturating_add(new_kv);
    }

    /// Real traffic of `workload` failed to reach `replica`: it may have restarted, and
    /// what it cached for the workload is not counted on.
    pub fn on_failed(&mut self, workload: u64, replica: ReplicaId) {
        if let Some(e) = self.workloads.get_mut(&workload) {
            e.warm.retain(|w| w.replica != replica);
        }
    }

    /// A request of `workload` with `input` prompt tokens was sent to `replica` (after
    /// `on_placed`): the replica will hold the workload's prompt.
    pub fn hold(&mut self, workload: u64, replica: ReplicaId, input: u32) {
        let stamp = self.written(replica);
        self.tick += 1;
        let tick = self.tick;
        let ways = self.config.ways.max(1);
        let e = self.workloads.entry(workload).or_insert_with(|| Entry {
            warm: Vec::with_capacity(ways),
            reuse: 1.0,
            last_seen: tick,
        });
        e.last_seen = tick;
        // Most recent first; the oldest falls off.
        e.warm.retain(|w| w.replica != replica);
        e.warm.insert(
            0,
            Warm {
                replica,
                tokens: input,
                stamp,
            },
        );
        e.warm.truncate(ways);
        if self.workloads.len() > self.config.max_workloads {
            self.forget_oldest_half();
        }
    }

    /// A request of `workload` completed on `replica`: `expected` cached tokens were
    /// predicted when it was placed and the engine reported `cached`; it wrote `new_kv`
    /// tokens of KV where `charged_kv` were counted at placement.
    pub fn on_completed(
        &mut self,
        workload: u64,
        replica: ReplicaId,
        expected: u32,
        cached: u32,
        new_kv: u64,
        charged_kv: u64,
    ) {
        // Correct the placement-time count by what the request really wrote.
        let written = self.written.entry(replica).or_default();
        *written = written
            .saturating_add(new_kv.saturating_sub(charged_kv))
            .saturating_sub(charged_kv.saturating_sub(new_kv));
        let stamp = *written;
        let Some(e) = self.workloads.get_mut(&workload) else {
            return;
        };
        if expected > 0 {
            let hit = (f64::from(cached) / f64::from(expected)).clamp(0.0, 1.0);
            let a = self.config.alpha;
            e.reuse = a * hit + (1.0 - a) * e.reuse;
        }
        // Its blocks were in use until now: they are the replica's most recent.
        if let Some(w) = e.warm.iter_mut().find(|w| w.replica == replica) {
            w.stamp = stamp;
        }
    }

    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }

    fn forget_oldest_half(&mut self) {
        let cut = super::recency::median_tick(self.workloads.values().map(|e| e.last_seen));
        self.workloads.retain(|_, e| e.last_seen >= cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn aff(cache_tokens: u64) -> PrefixAffinity {
        PrefixAffinity::new(AffinityConfig {
            cache_tokens,
            ..Default::default()
        })
    }

    /// Places and completes a request of `w` on `r` that hits what was expected.
    fn serve(a: &mut PrefixAffinity, w: u64, r: u64, input: u32, new_kv: u64) {
        let e = a.expected_cached(w, ReplicaId(r), input);
        a.on_placed(ReplicaId(r), new_kv);
        a.hold(w, ReplicaId(r), input);
        a.on_completed(w, ReplicaId(r), e, e, new_kv, new_kv);
    }

    #[test]
    fn the_replica_that_served_the_workload_holds_its_prompt() {
        let mut a = aff(100_000);
        a.on_placed(ReplicaId(3), 10_000);
        a.hold(1, ReplicaId(3), 10_000);
        assert_eq!(a.expected_cached(1, ReplicaId(3), 12_000), 10_000);
        // A shorter prompt can hit at most its own length.
        assert_eq!(a.expected_cached(1, ReplicaId(3), 4_000), 4_000);
        // Other replicas and other workloads expect nothing.
        assert_eq!(a.expected_cached(1, ReplicaId(2), 12_000), 0);
        assert_eq!(a.expected_cached(2, ReplicaId(3), 12_000), 0);
    }

    #[test]
    fn newer_kv_written_to_the_replica_evicts_it() {
        let mut a = aff(100_000);
        serve(&mut a, 1, 0, 10_000, 10_000);
        serve(&mut a, 2, 0, 50_000, 50_000);
        assert_eq!(a.expected_cached(1, ReplicaId(0), 10_000), 5_000);
        // A request that wrote less than charged at placement gives the difference back.
        a.on_placed(ReplicaId(0), 80_000);
        a.hold(3, ReplicaId(0), 50_000);
        a.on_completed(3, ReplicaId(0), 0, 0, 50_000, 80_000);
        assert_eq!(a.expected_cached(1, ReplicaId(0), 10_000), 0);
        // KV written elsewhere does not matter.
        serve(&mut a, 1, 1, 10_000, 10_000);
        serve(&mut a, 4, 2, 90_000, 90_000);
        assert_eq!(a.expected_cached(1, ReplicaId(1), 10_000), 10_000);
    }

    #[test]
    fn a_workload_whose_requests_do_not_share_prefixes_learns_to_expect_little() {
        let mut a = aff(1_000_000);
        for _ in 0..20 {
            let e = a.expected_cached(9, ReplicaId(0), 1_000);
            a.on_placed(ReplicaId(0), 1_000);
            a.hold(9, ReplicaId(0), 1_000);
            a.on_completed(9, ReplicaId(0), e, 0, 1_000, 1_000);
        }
        assert!(a.expected_cached(9, ReplicaId(0), 1_000) < 10);
    }

    #[test]
    fn only_the_most_recent_replicas_are_remembered_and_a_failure_forgets_one() {
        let mut a = aff(1_000_000);
        for r in 0..6 {
            serve(&mut a, 5, r, 100, 100);
        }
        let warm: Vec<u64> = (0..6)
            .filter(|&r| a.expected_cached(5, ReplicaId(r), 100) > 0)
            .collect();
        assert_eq!(warm, vec![2, 3, 4, 5]);
        a.on_failed(5, ReplicaId(5));
        assert_eq!(a.expected_cached(5, ReplicaId(5), 100), 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut a = PrefixAffinity::new(AffinityConfig {
            max_workloads: 100,
            ..Default::default()
        });
        for w in 0..10_000u64 {
            serve(&mut a, w, w % 7, 10, 10);
        }
        assert!(a.workloads() <= 100);
        assert!(a.expected_cached(9_999, ReplicaId(9_999 % 7), 10) > 0);
    }

    proptest! {
        #[test]
        fn expectation_never_exceeds_the_prompt_or_what_was_sent(
            ops in proptest::collection::vec((0u64..4, 0u64..3, 0u32..50_000, 0u32..50_000), 0..60),
            input in 0u32..60_000,
        ) {
            let mut a = aff(200_000);
            let mut last_sent = [[0u32; 3]; 4];
            for (w, r, tokens, hit) in ops {
                let e = a.expected_cached(w, ReplicaId(r), tokens);
                a.on_placed(ReplicaId(r), u64::from(tokens));
                a.hold(w, ReplicaId(r), tokens);
                a.on_completed(w, ReplicaId(r), e, hit.min(tokens), u64::from(tokens), u64::from(tokens));
                last_sent[w as usize][r as usize] = tokens;
            }
            for w in 0..4 {
                for r in 0..3 {
                    let e = a.expected_cached(w, ReplicaId(r), input);
                    prop_assert!(e <= input);
                    prop_assert!(e <= last_sent[w as usize][r as usize]);
                }
            }
        }
    }
}
