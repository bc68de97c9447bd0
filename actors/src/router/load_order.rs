//! The available replicas ordered by the seconds of work queued on them, so that the
//! choice can look outside a request's home without scoring the whole fleet. A cold
//! replica's score grows with its queue (see
//! [`Candidate::score_s`](super::choice::Candidate::score_s)), so walking the order from
//! its least loaded end, every replica not yet met scores at least what the current
//! position allows, and the walk stops as soon as that floor cannot beat the best found.
//! Updates cost O(log fleet).
//!
//! Only replicas the router may send to are listed: a replica failing its health check
//! or ejected by passive health leaves the order, and an ejection's end brings it back
//! ([`LoadOrder::readmit`]), so that a lost rack is not walked past on every request.

use super::id_map::IdMap;
use super::mix::mix64;
use crate::slice::ReplicaId;
use std::collections::BTreeSet;

/// Non-negative floats (infinity included) order like their bit patterns; negative
/// numbers and NaN read as 0.
fn key(queued_s: f64) -> u64 {
    if queued_s > 0.0 {
        queued_s.to_bits()
    } else {
        0
    }
}

/// Where a walk stands: every replica not yet met has at least `queued_s` seconds of
/// work queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Floor {
    pub queued_s: f64,
}

#[derive(Debug, Clone, Default)]
pub struct LoadOrder {
    /// (queued seconds as ordered bits, tie rank, replica) of every listed replica.
    by_queue: BTreeSet<(u64, u64, ReplicaId)>,
    keys: IdMap<ReplicaId, u64>,
    /// Replicas left out until a time: (until ms, replica).
    ejected: BTreeSet<(u64, ReplicaId)>,
    /// Orders equally loaded replicas (0: by id).
    salt: u64,
}

impl LoadOrder {
    /// Equally loaded replicas are met in an order of `salt`'s own (0: by id). Routers
    /// sharing a fleet each use their own: with the same order every router's walk
    /// meets the same idle replica first, and, knowing the others' load only from their
    /// last report, dozens of them spill onto it at once.
    pub fn spread_ties(&mut self, salt: u64) {
        self.salt = salt;
        self.by_queue = self
            .keys
            .iter()
            .map(|(&r, &k)| (k, self.rank(r), r))
            .collect();
    }

    fn rank(&self, replica: ReplicaId) -> u64 {
        if self.salt == 0 {
            replica.0
        } else {
            mix64(replica.0 ^ self.salt)
        }
    }

    /// Lists `replica` (or moves it) at `queued_s` seconds of queued work.
    pub fn set(&mut self, replica: ReplicaId, queued_s: f64) {
        let k = key(queued_s);
        let rank = self.rank(replica);
        if let Some(old) = self.keys.insert(replica, k) {
            if old != k {
                self.by_queue.remove(&(old, rank, replica));
                self.by_queue.insert((k, rank, replica));
            }
            return;
        }
        self.by_queue.insert((k, rank, replica));
    }

    /// Moves `replica` if it is listed; a no-op otherwise.
    pub fn update(&mut self, replica: ReplicaId, queued_s: f64) {
        if self.keys.contains_key(&replica) {
            self.set(replica, queued_s);
        }
    }

    /// Takes `replica` out of the order (it cannot be sent to).
    pub fn remove(&mut self, replica: ReplicaId) {
        if let Some(q) = self.keys.remove(&replica) {
            let rank = self.rank(replica);
            self.by_queue.remove(&(q, rank, replica));
        }
    }

    /// Takes `replica` out until `until_ms`, when [`readmit`](Self::readmit) returns it.
    pub fn eject(&mut self, replica: ReplicaId, until_ms: u64) {
        self.remove(replica);
        self.ejected.insert((until_ms, replica));
    }

    /// Replicas whose ejection has ended by `now_ms`, no longer tracked as ejected; the
    /// caller lists those still fit to serve.
    pub fn readmit(&mut self, now_ms: u64) -> Vec<ReplicaId> {
        let mut out = Vec::new();
        while let Some(&(until, r)) = self.ejected.first() {
            if until > now_ms {
                break;
            }
            self.ejected.pop_first();
            out.push(r);
        }
        out
    }

    pub fn contains(&self, replica: ReplicaId) -> bool {
        self.keys.contains_key(&replica)
    }

    /// Every listed replica once, least queued first, each with the floor that holds
    /// for the replicas not yet yielded.
    pub fn walk(&self) -> impl Iterator<Item = (ReplicaId, Floor)> + '_ {
        self.by_queue.iter().map(|&(k, _, r)| {
            let floor = Floor {
                queued_s: f64::from_bits(k),
            };
            (r, floor)
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Forgets everything (the replica set is rebuilt).
    pub fn clear(&mut self) {
        self.by_queue.clear();
        self.keys.clear();
        self.ejected.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn walked(o: &LoadOrder) -> Vec<u64> {
        o.walk().map(|(r, _)| r.0).collect()
    }

    #[test]
    fn the_walk_follows_the_latest_load_and_ejections_end() {
        let mut o = LoadOrder::default();
        o.set(ReplicaId(1), 3.0);
        o.set(ReplicaId(2), 1.0);
        o.set(ReplicaId(3), 2.0);
        assert_eq!(walked(&o), [2, 3, 1]);
        o.set(ReplicaId(2), 5.0);
        assert_eq!(walked(&o), [3, 1, 2]);
        o.eject(ReplicaId(3), 100);
        o.update(ReplicaId(3), 0.0);
        assert!(
            !o.contains(ReplicaId(3)),
            "an ejected replica is not moved back"
        );
        assert!(o.readmit(99).is_empty());
        assert_eq!(o.readmit(100), [ReplicaId(3)]);
        assert!(o.readmit(1000).is_empty());
        assert_eq!(o.len(), 2);
    }

    /// Seen in a 100-node virtual drill: the replicas a dozen-plus doors spilled onto
    /// together, all the lowest ids, held 30–60 waiting requests while hundreds idled.
    #[test]
    fn routers_break_ties_in_orders_of_their_own() {
        let firsts: std::collections::BTreeSet<u64> = (1..=20u64)
            .map(|salt| {
                // A salt given before or after the replicas are listed orders them alike.
                let mut before = LoadOrder::default();
                before.spread_ties(salt);
                let mut o = LoadOrder::default();
                for r in 0..100 {
                    before.set(ReplicaId(r), 0.0);
                    o.set(ReplicaId(r), 0.0);
                }
                o.spread_ties(salt);
                assert_eq!(walked(&o), walked(&before));
                let first = walked(&o)[0];
                // Load still comes first: the replica met first, once loaded, is last.
                o.set(ReplicaId(first), 1.0);
                assert_eq!(walked(&o).last(), Some(&first));
                o.remove(ReplicaId(first));
                assert_eq!(o.len(), 99);
                assert!(!walked(&o).contains(&first));
                first
            })
            .collect();
        assert!(firsts.len() >= 15, "{firsts:?}");
        // Without a salt (one router, the simulator), ties go to the lower id.
        let mut o = LoadOrder::default();
        for r in [3, 1, 2] {
            o.set(ReplicaId(r), 0.0);
        }
        assert_eq!(walked(&o), [1, 2, 3]);
    }

    proptest! {
        #[test]
        fn the_walk_meets_every_replica_once_above_its_floor(salt in any::<u64>(), ops in proptest::collection::vec((0u64..20, 0.0f64..100.0, any::<bool>()), 0..200)) {
            let mut o = LoadOrder::default();
            o.spread_ties(salt);
            let mut truth: std::collections::HashMap<ReplicaId, f64> = Default::default();
            for (id, queued, keep) in ops {
                let r = ReplicaId(id);
                if keep {
                    o.set(r, queued);
                    truth.insert(r, queued);
                } else {
                    o.remove(r);
                    truth.remove(&r);
                }
            }
            let walk: Vec<(ReplicaId, Floor)> = o.walk().collect();
            prop_assert_eq!(walk.len(), truth.len());
            for (i, (_, floor)) in walk.iter().enumerate() {
                for (later, _) in &walk[i + 1..] {
                    prop_assert!(truth[later] >= floor.queued_s);
                }
            }
            let mut met: Vec<ReplicaId> = walk.iter().map(|(r, _)| *r).collect();
            met.sort();
            met.dedup();
            prop_assert_eq!(met.len(), truth.len());
        }
    }
}
