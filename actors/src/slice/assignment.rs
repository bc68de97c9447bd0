//! An Assignment maps every slice of the keyspace to a subset of replicas.
//!
//! Slices are contiguous key ranges given by their start keys; the first starts at 0,
//! so every key lies in exactly one slice. The assigner produces new generations; a
//! router keeps using the last one it has.

use super::key::SliceKey;
use serde::{Deserialize, Serialize};

/// A replica, unique in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub u64);

/// One slice: the keys from `start` up to the next slice's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub start: SliceKey,
    /// Replicas serving the slice, the preferred one first.
    pub subset: Vec<ReplicaId>,
}

/// A generation of the slice map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub generation: u64,
    slices: Vec<Slice>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("an assignment needs at least one slice")]
    Empty,
    #[error("the first slice must start at key 0")]
    FirstNotZero,
    #[error("slice starts must be strictly increasing (at index {0})")]
    Unordered(usize),
    #[error("slice at index {0} has no replicas")]
    EmptySubset(usize),
    #[error("no replicas to assign")]
    NoReplicas,
}

impl Assignment {
    /// Builds an assignment, checking that the slices cover the keyspace exactly once.
    pub fn new(generation: u64, slices: Vec<Slice>) -> Result<Self, AssignmentError> {
        let first = slices.first().ok_or(AssignmentError::Empty)?;
        if first.start != SliceKey(0) {
            return Err(AssignmentError::FirstNotZero);
        }
        for (i, pair) in slices.windows(2).enumerate() {
            if pair[0].start >= pair[1].start {
                return Err(AssignmentError::Unordered(i + 1));
            }
        }
        if let Some(i) = slices.iter().position(|s| s.subset.is_empty()) {
            return Err(AssignmentError::EmptySubset(i));
        }
        Ok(Self { generation, slices })
    }

    /// An even cut of the keyspace into `slice_count` slices, each served by
    /// `subset_size` replicas, with preferred replicas rotated so that every replica
    /// leads about the same number of slices. What a node uses before any assigner runs.
    pub fn uniform(
        generation: u64,
        replicas: &[ReplicaId],
        slice_count: usize,
        subset_size: usize,
    ) -> Result<Self, AssignmentError> {
        if replicas.is_empty() {
            return Err(AssignmentError::NoReplicas);
        }
        let count = slice_count.max(1);
        let width = subset_size.clamp(1, replicas.len());
        let step = u64::MAX / count as u64;
        let slices = (0..count)
            .map(|i| Slice {
                start: SliceKey(step * i as u64),
                subset: (0..width)
                    .map(|j| replicas[(i + j) % replicas.len()])
                    .collect(),
            })
            .collect();
        Self::new(generation, slices)
    }

    pub fn slices(&self) -> &[Slice] {
        &self.slices
    }

    /// The slice holding `key`.
    pub fn lookup(&self, key: SliceKey) -> &Slice {
        // slices[0].start == 0 <= key, so the partition point is at least 1.
        let idx = self.slices.partition_point(|s| s.start <= key);
        &self.slices[idx.saturating_sub(1)]
    }

    /// The slices (by index) whose keys `before` sent to other replicas: the ones a
    /// round moved, split off, or narrowed or widened.
    pub fn moved_since(&self, before: &Assignment) -> Vec<usize> {
        self.slices
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                let old = before.lookup(s.start);
                let mut a = old.subset.clone();
                let mut b = s.subset.clone();
                a.sort_unstable();
                b.sort_unstable();
                a != b
            })
            .map(|(i, _)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: u64) -> Vec<ReplicaId> {
        (0..n).map(ReplicaId).collect()
    }

    #[test]
    fn the_slices_a_round_moved_are_named() {
        let s = |k, r: &[u64]| Slice {
            start: SliceKey(k),
            subset: r.iter().map(|&i| ReplicaId(i)).collect(),
        };
        let before = Assignment::new(1, vec![s(0, &[0, 1]), s(100, &[2, 3])]).unwrap();
        // The same subsets in another order move nothing; a split-off slice on other
        // replicas, and a changed subset, do.
        let after = Assignment::new(
            2,
            vec![
                s(0, &[1, 0]),
                s(50, &[4, 1]),
                s(100, &[2, 3]),
                s(200, &[2, 5]),
            ],
        )
        .unwrap();
        assert_eq!(after.moved_since(&before), vec![1, 3]);
        assert!(before.moved_since(&before).is_empty());
    }

    #[test]
    fn rejects_malformed_maps() {
        assert_eq!(Assignment::new(1, vec![]), Err(AssignmentError::Empty));
        let s = |k, r: Vec<ReplicaId>| Slice {
            start: SliceKey(k),
            subset: r,
        };
        assert_eq!(
            Assignment::new(1, vec![s(5, ids(1))]),
            Err(AssignmentError::FirstNotZero)
        );
        assert_eq!(
            Assignment::new(1, vec![s(0, ids(1)), s(0, ids(1))]),
            Err(AssignmentError::Unordered(1))
        );
        assert_eq!(
            Assignment::new(1, vec![s(0, vec![])]),
            Err(AssignmentError::EmptySubset(0))
        );
        assert_eq!(
            Assignment::uniform(1, &[], 4, 2),
            Err(AssignmentError::NoReplicas)
        );
    }

    #[test]
    fn uniform_rotates_leaders() {
        let a = Assignment::uniform(1, &ids(4), 16, 2).unwrap();
        let mut leads = [0; 4];
        for s in a.slices() {
            leads[s.subset[0].0 as usize] += 1;
            assert_eq!(s.subset.len(), 2);
            assert_ne!(s.subset[0], s.subset[1]);
        }
        assert_eq!(leads, [4, 4, 4, 4]);
    }

    proptest! {
        #[test]
        fn every_key_lies_in_exactly_one_slice(n in 1u64..20, count in 1usize..200, width in 1usize..5, key: u64) {
            let a = Assignment::uniform(3, &ids(n), count, width).unwrap();
            let hit = a.lookup(SliceKey(key));
            let containing: Vec<_> = a.slices().iter().enumerate().filter(|(i, s)| {
                let end = a.slices().get(i + 1).map(|n| n.start.0);
                s.start.0 <= key && end.is_none_or(|e| key < e)
            }).collect();
            prop_assert_eq!(containing.len(), 1);
            prop_assert_eq!(containing[0].1, hit);
            prop_assert_eq!(hit.subset.len(), width.min(n as usize));
        }
    }
}
