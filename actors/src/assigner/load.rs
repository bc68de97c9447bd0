//! Measured load over the keyspace: a piecewise-constant density in MU/min.
//!
//! A [`SliceLoad`] is a partition of the keyspace into ranges (given by start keys, the
//! first at 0), each with the load measured on it. The load of any other range is
//! *apportioned*: a range covering a fraction of a measured range gets that fraction of
//! its load, since keys are hashes and load is close to uniform inside a range. This is
//! Dicer's load-map apportionment (`dicer/assigner/algorithm/src/LoadMap.scala`), on our
//! fixed-width 64-bit keys.
//!
//! The usual input is one range per slice of the current assignment
//! ([`SliceLoad::per_slice`]): a hot slice is then cut at its key midpoint. Finer input
//! (a few sub-range buckets per slice, from routers that count per bucket) makes the cut
//! follow the load: the assigner cuts where the apportioned load reaches half.

use crate::slice::{Assignment, SliceKey};
use serde::{Deserialize, Serialize};

/// One past the last key.
pub(crate) const KEY_END: u128 = 1 << 64;

/// Load per key range, in MU/min.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceLoad {
    starts: Vec<u64>,
    loads: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("a load map needs at least one range")]
    Empty,
    #[error("the first range must start at key 0")]
    FirstNotZero,
    #[error("range starts must be strictly increasing (at index {0})")]
    Unordered(usize),
    #[error("load at index {0} is negative or not finite")]
    BadLoad(usize),
    #[error("expected {expected} loads (one per slice), got {got}")]
    Mismatch { expected: usize, got: usize },
}

impl SliceLoad {
    /// A load map from `(start, load)` ranges covering the keyspace.
    pub fn new(ranges: Vec<(SliceKey, f64)>) -> Result<Self, LoadError> {
        let first = ranges.first().ok_or(LoadError::Empty)?;
        if first.0 != SliceKey(0) {
            return Err(LoadError::FirstNotZero);
        }
        for (i, pair) in ranges.windows(2).enumerate() {
            if pair[0].0 >= pair[1].0 {
                return Err(LoadError::Unordered(i + 1));
            }
        }
        if let Some(i) = ranges
            .iter()
            .position(|(_, l)| !(l.is_finite() && *l >= 0.0))
        {
            return Err(LoadError::BadLoad(i));
        }
        let (starts, loads) = ranges.into_iter().map(|(k, l)| (k.0, l)).unzip();
        Ok(Self { starts, loads })
    }

    /// One load per slice of `assignment`, in slice order.
    pub fn per_slice(assignment: &Assignment, loads: &[f64]) -> Result<Self, LoadError> {
        let slices = assignment.slices();
        if slices.len() != loads.len() {
            return Err(LoadError::Mismatch {
                expected: slices.len(),
                got: loads.len(),
            });
        }
        Self::new(
            slices
                .iter()
                .map(|s| s.start)
                .zip(loads.iter().copied())
                .collect(),
        )
    }

    /// `total` spread evenly over the keyspace (negative or NaN reads as 0).
    pub fn uniform(total: f64) -> Self {
        let total = if total.is_finite() && total > 0.0 {
            total
        } else {
            0.0
        };
        Self {
            starts: vec![0],
            loads: vec![total],
        }
    }

    /// The measured ranges, as given.
    pub fn ranges(&self) -> impl Iterator<Item = (SliceKey, f64)> + '_ {
        self.starts
            .iter()
            .zip(&self.loads)
            .map(|(&s, &l)| (SliceKey(s), l))
    }

    /// Total load over the keyspace.
    pub fn total(&self) -> f64 {
        self.loads.iter().sum()
    }

    /// Apportioned load of the keys from `start` up to `end` (exclusive; `None`: to the
    /// end of the keyspace).
    pub fn range_load(&self, start: SliceKey, end: Option<SliceKey>) -> f64 {
        self.between(start.0 as u128, end.map_or(KEY_END, |e| e.0 as u128))
    }

    /// This load as measured on `assignment`'s slices: each slice gets the load of its
    /// key range (what routers would report of it).
    pub fn on_slices_of(&self, assignment: &Assignment) -> Result<Self, LoadError> {
        let s = assignment.slices();
        let mut sweep = self.sweep();
        let loads: Vec<f64> = s
            .iter()
            .enumerate()
            .map(|(i, sl)| {
                let end = s.get(i + 1).map_or(KEY_END, |n| n.start.0 as u128);
                sweep.between(sl.start.0 as u128, end)
            })
            .collect();
        Self::per_slice(assignment, &loads)
    }

    /// An exponentially decayed blend: the result weighs `observed` by
    /// `1 − 2^(−elapsed/half_life)` and `self` by the rest, so a change in load is half
    /// absorbed after one half-life (Dicer's EWMA, `caching/util/src/EwmaCounter.scala`).
    /// The result has `observed`'s ranges (`self` is apportioned onto them), which keeps
    /// the map the size of the latest measurement. A non-positive half-life, or a
    /// non-finite elapsed time, returns `observed`.
    pub fn decayed(&self, observed: &SliceLoad, elapsed_secs: f64, half_life_secs: f64) -> Self {
        if !(half_life_secs > 0.0 && elapsed_secs.is_finite()) {
            return observed.clone();
        }
        let keep = (-elapsed_secs.max(0.0) / half_life_secs).exp2();
        let n = observed.starts.len();
        let mut sweep = self.sweep();
        let loads = (0..n)
            .map(|i| {
                let (a, b) = observed.bounds(i);
                keep * sweep.between(a, b) + (1.0 - keep) * observed.loads[i]
            })
            .collect();
        Self {
            starts: observed.starts.clone(),
            loads,
        }
    }

    fn bounds(&self, i: usize) -> (u128, u128) {
        let end = self.starts.get(i + 1).map_or(KEY_END, |&s| s as u128);
        (self.starts[i] as u128, end)
    }

    /// Index of the range holding key `a`.
    pub(crate) fn index_of(&self, a: u128) -> usize {
        self.starts
            .partition_point(|&s| (s as u128) <= a)
            .saturating_sub(1)
    }

    /// Apportioned load of the keys in `[a, b)`.
    pub(crate) fn between(&self, a: u128, b: u128) -> f64 {
        self.sum_from(self.index_of(a), a, b).0
    }

    /// A reader of [`between`](Self::between) for ranges asked in key order, which finds
    /// each range's first piece by stepping on from the last one instead of searching.
    pub(crate) fn sweep(&self) -> Sweep<'_> {
        Sweep { load: self, at: 0 }
    }

    /// `between(a, b)` when `i` is the range holding `a`, and the last range it read.
    fn sum_from(&self, mut i: usize, a: u128, b: u128) -> (f64, usize) {
        let first = i;
        let mut sum = 0.0;
        while i < self.starts.len() && (self.starts[i] as u128) < b {
            let (s, e) = self.bounds(i);
            let (lo, hi) = (a.max(s), b.min(e));
            if lo == s && hi == e {
                sum += self.loads[i];
            } else if hi > lo {
                sum += self.loads[i] * ((hi - lo) as f64 / (e - s) as f64);
            }
            i += 1;
        }
        (sum, i.saturating_sub(1).max(first))
    }

    /// [`split_point_from`](Self::split_point_from), searching for the range holding `a`.
    #[cfg(test)]
    pub(crate) fn split_point(&self, a: u128, b: u128, total: f64) -> Option<u64> {
        self.split_point_from(self.index_of(a), a, b, total)
    }

    /// Where to cut `[a, b)` (whose load is `total`) so that each side gets about half:
    /// the key where the apportioned load reaches `total / 2`, the midpoint when there is
    /// no load. `None` when the range holds a single key. `i` is the range holding `a`.
    fn split_point_from(&self, i: usize, a: u128, b: u128, total: f64) -> Option<u64> {
        if b <= a + 1 {
            return None;
        }
        let clamp = |k: u128| k.clamp(a + 1, b - 1) as u64;
        let half = total / 2.0;
        if half > 0.0 {
            let mut cum = 0.0;
            let mut i = i;
            while i < self.starts.len() && (self.starts[i] as u128) < b {
                let (s, e) = self.bounds(i);
                let (lo, hi) = (a.max(s), b.min(e));
                let part = if hi > lo {
                    self.loads[i] * ((hi - lo) as f64 / (e - s) as f64)
                } else {
                    0.0
                };
                if part > 0.0 && cum + part >= half {
                    let f = ((half - cum) / part).clamp(0.0, 1.0);
                    return Some(clamp(lo + ((hi - lo) as f64 * f) as u128));
                }
                cum += part;
                i += 1;
            }
        }
        Some(clamp(a + (b - a) / 2))
    }

    /// [`split_point_from`](Self::split_point_from) of `[a, b)`, and the loads on either
    /// side, each the very sum [`between`](Self::between) makes, when `i` is the range
    /// holding `a`. A split in two descends into both halves, and each finds its first
    /// range here instead of searching for it.
    pub(crate) fn halve(&self, i: usize, a: u128, b: u128, total: f64) -> Option<Halves> {
        let key = self.split_point_from(i, a, b, total)?;
        let k = u128::from(key);
        // The cut is after `a`, so the range holding it is at or after `i`.
        let mut at = i;
        while self.starts.get(at + 1).is_some_and(|&s| u128::from(s) <= k) {
            at += 1;
        }
        Some(Halves {
            key,
            left: self.sum_from(i, a, k).0,
            right: self.sum_from(at, k, b).0,
            at,
        })
    }
}

/// Where [`SliceLoad::halve`] cuts a range, what each side holds, and the range holding
/// the cut (where the right side's own cuts start looking).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Halves {
    pub key: u64,
    pub left: f64,
    pub right: f64,
    pub at: usize,
}

/// See [`SliceLoad::sweep`].
pub(crate) struct Sweep<'a> {
    load: &'a SliceLoad,
    /// A range at or before the one holding the next `a`.
    at: usize,
}

impl Sweep<'_> {
    /// [`SliceLoad::between`]; the same value, found in constant time on average when
    /// each `a` is at or after the previous one.
    pub(crate) fn between(&mut self, a: u128, b: u128) -> f64 {
        let starts = &self.load.starts;
        let mut i = self.at.min(starts.len().saturating_sub(1));
        if starts.get(i).is_some_and(|&s| s as u128 > a) {
            i = self.load.index_of(a);
        }
        while starts.get(i + 1).is_some_and(|&s| s as u128 <= a) {
            i += 1;
        }
        let (sum, last) = self.load.sum_from(i, a, b);
        self.at = last;
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(x: u64) -> SliceKey {
        SliceKey(x)
    }

    #[test]
    fn validates_ranges() {
        assert_eq!(SliceLoad::new(vec![]), Err(LoadError::Empty));
        assert_eq!(
            SliceLoad::new(vec![(k(1), 1.0)]),
            Err(LoadError::FirstNotZero)
        );
        assert_eq!(
            SliceLoad::new(vec![(k(0), 1.0), (k(0), 1.0)]),
            Err(LoadError::Unordered(1))
        );
        assert_eq!(
            SliceLoad::new(vec![(k(0), 1.0), (k(5), -1.0)]),
            Err(LoadError::BadLoad(1))
        );
        let a = Assignment::uniform(1, &[crate::slice::ReplicaId(0)], 4, 1).unwrap();
        assert_eq!(
            SliceLoad::per_slice(&a, &[1.0]),
            Err(LoadError::Mismatch {
                expected: 4,
                got: 1
            })
        );
    }

    #[test]
    fn apportions_by_key_width() {
        let half = 1u64 << 63;
        let m = SliceLoad::new(vec![(k(0), 10.0), (k(half), 30.0)]).unwrap();
        assert_eq!(m.total(), 40.0);
        assert_eq!(m.range_load(k(0), None), 40.0);
        assert_eq!(m.range_load(k(0), Some(k(half))), 10.0);
        assert!((m.range_load(k(half / 2), Some(k(half + half / 2))) - 20.0).abs() < 1e-9);
        assert!((m.range_load(k(half + half / 2), None) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn split_point_follows_the_load() {
        let q = 1u64 << 62;
        // All load in the second quarter: the median is its midpoint.
        let m = SliceLoad::new(vec![(k(0), 0.0), (k(q), 8.0), (k(2 * q), 0.0)]).unwrap();
        let cut = m.split_point(0, KEY_END, 8.0).unwrap();
        assert_eq!(cut, q + q / 2);
        // Uniform load: the key midpoint.
        let u = SliceLoad::uniform(5.0);
        assert_eq!(u.split_point(0, KEY_END, 5.0), Some(1 << 63));
        assert_eq!(u.split_point(10, 20, 0.0), Some(15));
        // A single key cannot be cut.
        assert_eq!(u.split_point(7, 8, 1.0), None);
        assert_eq!(u.split_point(7, 9, 1.0), Some(8));
    }

    #[test]
    fn decay_has_the_half_life() {
        let old = SliceLoad::uniform(100.0);
        let half = 1u64 << 63;
        let new = SliceLoad::new(vec![(k(0), 0.0), (k(half), 200.0)]).unwrap();
        let d = old.decayed(&new, 60.0, 60.0);
        let r: Vec<_> = d.ranges().collect();
        assert_eq!(r.len(), 2);
        assert!((r[0].1 - 25.0).abs() < 1e-9, "{r:?}");
        assert!((r[1].1 - 125.0).abs() < 1e-9, "{r:?}");
        assert_eq!(old.decayed(&new, 1.0, 0.0), new);
    }

    /// A load over ranges starting at 0 and at each of `starts`, with `loads` in turn.
    fn ranges_from(starts: std::collections::BTreeSet<u64>, loads: Vec<f64>) -> SliceLoad {
        let ranges: Vec<(SliceKey, f64)> = std::iter::once(0)
            .chain(starts)
            .zip(loads)
            .map(|(s, l)| (k(s), l))
            .collect();
        SliceLoad::new(ranges).unwrap()
    }

    proptest::proptest! {
        /// A halving found from the range holding its start cuts where `split_point`
        /// cuts, gives each side what `between` gives it, to the bit, and names the
        /// range holding the cut.
        #[test]
        fn halving_from_a_known_range_is_split_point_and_between(
            starts in proptest::collection::btree_set(1u64.., 0..40),
            loads in proptest::collection::vec(0.0f64..1e4, 41),
            ends in proptest::collection::btree_set(proptest::prelude::any::<u64>(), 1..3),
            whole in proptest::prelude::any::<bool>(),
        ) {
            let m = ranges_from(starts, loads);
            let mut ends = ends.into_iter().map(u128::from);
            let a = ends.next().unwrap_or(0);
            let b = if whole { KEY_END } else { ends.next().unwrap_or(KEY_END) };
            let total = m.between(a, b);
            let got = m.halve(m.index_of(a), a, b, total);
            let want = m.split_point(a, b, total).map(|key| {
                let c = u128::from(key);
                (key, m.between(a, c).to_bits(), m.between(c, b).to_bits(), m.index_of(c))
            });
            proptest::prop_assert_eq!(
                got.map(|h| (h.key, h.left.to_bits(), h.right.to_bits(), h.at)),
                want
            );
        }

        /// The sweep reads what `between` reads, to the bit: over cuts in key order (each
        /// range starting where the last ended, or further on), and when asked for an
        /// earlier key than the last one.
        #[test]
        fn a_sweep_reads_what_between_reads(
            starts in proptest::collection::btree_set(1u64.., 0..40),
            loads in proptest::collection::vec(0.0f64..1e4, 41),
            cuts in proptest::collection::btree_set(proptest::prelude::any::<u64>(), 1..60),
            back in 0usize..60,
        ) {
            let m = ranges_from(starts, loads);
            let cuts: Vec<u128> = cuts
                .into_iter()
                .map(u128::from)
                .chain(std::iter::once(KEY_END))
                .collect();
            let mut sweep = m.sweep();
            for pair in cuts.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                proptest::prop_assert_eq!(sweep.between(a, b).to_bits(), m.between(a, b).to_bits());
            }
            let (a, b) = (cuts[back % cuts.len()], KEY_END);
            proptest::prop_assert_eq!(sweep.between(a, b).to_bits(), m.between(a, b).to_bits());
        }
    }
}
