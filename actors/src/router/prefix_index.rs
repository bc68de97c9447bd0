//! An approximate index of which replica holds which prompt blocks in its prefix cache,
//! from where this router sent them: the content-aware half of the replica choice.
//!
//! After a request is placed, its prompt's blocks are expected on that replica. They
//! stay while the replica's cache has not turned over since: each holder is stamped with
//! the replica's written-KV counter (see [`PrefixAffinity`](super::affinity)) and counts
//! only while less than the cache's size has been written after it. (The router core
//! discounts a replica whose engine finds less than the index promised.) Lookups walk the prompt's chain from the start and stop at the first block
//! nobody holds, so they cost the length of the matched prefix times its holders.
//!
//! Memory is bounded: at most `max_blocks` blocks, the least recently used forgotten
//! first, and at most `max_holders` replicas per block, the most recent kept.

use super::id_map::IdMap;
use crate::slice::ReplicaId;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Holder {
    replica: ReplicaId,
    /// The replica's written-KV counter when the block was last placed there.
    stamp: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    holders: Vec<Holder>,
    last: u64,
}

/// A replica's run of a prompt's leading blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub blocks: usize,
    /// The oldest stamp in the run: the first of its blocks the cache would drop.
    pub oldest: u64,
}

#[derive(Debug, Clone)]
pub struct PrefixIndex {
    blocks: HashMap<u64, Entry>,
    max_blocks: usize,
    max_holders: usize,
    tick: u64,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::new(1 << 21, 64)
    }
}

impl PrefixIndex {
    pub fn new(max_blocks: usize, max_holders: usize) -> Self {
        Self {
            blocks: HashMap::new(),
            max_blocks: max_blocks.max(16),
            max_holders: max_holders.max(1),
            tick: 0,
        }
    }

    /// The prompt's full blocks `chain` were sent to `replica`, whose written-KV counter
    /// stood at `stamp`. They count from now: an engine caches a block when it schedules
    /// the prefill computing it, so a request scheduled after that one, even in the same
    /// step, finds it (vLLM; SGLang defers such a request to the next step).
    pub fn insert(&mut self, replica: ReplicaId, chain: &[u64], stamp: u64) {
        for &h in chain {
            // Every touch has its own tick, so eviction is least-recently-used by block.
            self.tick += 1;
            let tick = self.tick;
            let e = self.blocks.entry(h).or_insert(Entry {
                holders: Vec::new(),
                last: tick,
            });
            e.last = tick;
            // Holders are kept in the order they were last placed: the first is the
            // stalest (stamps of different replicas are not comparable).
            if let Some(at) = e.holders.iter().position(|x| x.replica == replica) {
                e.holders.remove(at);
            } else if e.holders.len() >= self.max_holders {
                e.holders.remove(0);
            }
            e.holders.push(Holder { replica, stamp });
        }
        if self.blocks.len() > self.max_blocks {
            let cutoff = super::recency::median_tick(self.blocks.values().map(|e| e.last));
            self.blocks.retain(|_, e| e.last > cutoff);
        }
    }

    /// For each replica holding a prefix of `chain`: how many leading blocks it holds,
    /// and the oldest stamp among them. `live(replica, stamp)` says whether a block
    /// stamped `stamp` may still be cached there.
    pub fn matched(
        &self,
        chain: &[u64],
        live: impl Fn(ReplicaId, u64) -> bool,
    ) -> IdMap<ReplicaId, Held> {
        let mut out: IdMap<ReplicaId, Held> = IdMap::default();
        for (i, h) in chain.iter().enumerate() {
            let Some(e) = self.blocks.get(h) else {
                break;
            };
            let mut any = false;
            for x in &e.holders {
                // A replica counts only for an unbroken run from the first block.
                let held = out.get(&x.replica).copied().unwrap_or(Held {
                    blocks: 0,
                    oldest: x.stamp,
                });
                if held.blocks == i && live(x.replica, x.stamp) {
                    out.insert(
                        x.replica,
                        Held {
                            blocks: i + 1,
                            oldest: held.oldest.min(x.stamp),
                        },
                    );
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        out
    }

    /// `replica` may have lost its whole cache (it restarted or failed).
    pub fn forget_replica(&mut self, replica: ReplicaId) {
        self.blocks.retain(|_, e| {
            e.holders.retain(|x| x.replica != replica);
            !e.holders.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: ReplicaId = ReplicaId(1);
    const B: ReplicaId = ReplicaId(2);

    #[test]
    fn the_longest_held_prefix_per_replica() {
        let mut idx = PrefixIndex::default();
        idx.insert(A, &[1, 2, 3, 4], 0);
        idx.insert(B, &[1, 2, 9], 0);
        idx.insert(A, &[1], 7);
        let m = idx.matched(&[1, 2, 3, 5], |_, _| true);
        assert_eq!(
            m.get(&A),
            Some(&Held {
                blocks: 3,
                oldest: 0
            })
        );
        assert_eq!(m.get(&B).map(|h| h.blocks), Some(2));
        assert!(idx.matched(&[7, 1, 2], |_, _| true).is_empty());
    }

    #[test]
    fn aged_out_holders_do_not_count_and_reports_correct() {
        let mut idx = PrefixIndex::default();
        idx.insert(A, &[1, 2, 3], 10);
        idx.insert(B, &[1, 2, 3], 500);
        // A's cache turned over since stamp 10.
        let m = idx.matched(&[1, 2, 3], |r, stamp| r != A || stamp > 100);
        assert_eq!((m.get(&A), m.get(&B).map(|h| h.blocks)), (None, Some(3)));
        idx.forget_replica(B);
        assert_eq!(idx.matched(&[1, 2, 3], |_, _| true).get(&B), None);
        assert_eq!(
            idx.matched(&[1, 2, 3], |_, _| true)
                .get(&A)
                .map(|h| h.blocks),
            Some(3)
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut idx = PrefixIndex::new(100, 2);
        for r in 0..10 {
            let chain: Vec<u64> = (0..20).map(|b| b + 1000 * r).collect();
            idx.insert(ReplicaId(r), &chain, 0);
            idx.insert(ReplicaId(r), &[1, 2], 0);
        }
        assert!(idx.len() <= 100);
        let m = idx.matched(&[1, 2], |_, _| true);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.contains_key(&ReplicaId(9)) && m.contains_key(&ReplicaId(8)));
    }

    proptest! {
        #[test]
        fn a_match_is_never_longer_than_what_was_inserted(
            inserts in proptest::collection::vec((0u64..4, 1usize..20), 1..20),
            probe in 1usize..25,
        ) {
            let mut idx = PrefixIndex::default();
            let mut longest: HashMap<ReplicaId, usize> = HashMap::new();
            for (r, len) in inserts {
                let chain: Vec<u64> = (0..len as u64).collect();
                idx.insert(ReplicaId(r), &chain, 0);
                let l = longest.entry(ReplicaId(r)).or_default();
                *l = (*l).max(len);
            }
            let chain: Vec<u64> = (0..probe as u64).collect();
            for (r, held) in idx.matched(&chain, |_, _| true) {
                prop_assert_eq!(held.blocks, longest[&r].min(probe));
            }
        }
    }
}
