//! The slices each replica serves during the placement search, and, for a replica that
//! serves many, the same slices ordered by the load each puts on it.
//!
//! A hot key split many times leaves thousands of slices on the two replicas that served
//! it, and the search takes the hottest replica at every step: scanning all of its slices
//! made a round over 10,000 replicas take a minute. The order lets the search try the few
//! slices whose share can be the best to move (`Work::likely`). It is built for a replica
//! only when first needed and kept up to date from then on.

use std::collections::BTreeSet;
use std::ops::Bound;

/// A share as a key that orders like the share (shares are non-negative).
pub(super) fn share_key(share: f64) -> u64 {
    if share > 0.0 {
        share.to_bits()
    } else {
        0
    }
}

/// A replica serving at most this many slices has all of them tried by the placement
/// search, in the order they came; one serving more, only the likeliest. (A fleet within
/// `max_slices_per_replica` serves 16 to 32 each, so the shortcut is for hot keys split
/// far past it, and the simulator's fleets never take it.)
pub(super) const SCAN_ALL: usize = 64;

type ByShare = BTreeSet<(u64, u32)>;

enum Held {
    /// Slice indices in the order they came.
    Listed(Vec<u32>),
    /// `(share_key, slice)`, once the replica served more than the scan limit.
    Sorted(ByShare),
}

/// What the search gets to see of a replica's slices.
pub(super) enum Seen<'a> {
    All(&'a [u32]),
    ByShare(&'a ByShare),
}

pub(super) struct Holdings {
    held: Vec<Held>,
    /// Past this many slices, a replica's are kept by share ([`SCAN_ALL`] but in tests).
    scan_all: usize,
}

impl Holdings {
    /// `subsets[i]` is slice `i`'s members among `replicas` replicas.
    pub fn new<'s>(
        replicas: usize,
        subsets: impl Iterator<Item = &'s [u32]> + Clone,
        scan_all: usize,
    ) -> Self {
        // Each list sized once: growing 10,000 of them push by push was a good part of
        // setting up a round.
        let mut counts = vec![0usize; replicas];
        for &m in subsets.clone().flatten() {
            counts[m as usize] += 1;
        }
        let mut lists: Vec<Vec<u32>> = counts.into_iter().map(Vec::with_capacity).collect();
        for (i, subset) in subsets.enumerate() {
            for &m in subset {
                lists[m as usize].push(i as u32);
            }
        }
        Self {
            held: lists.into_iter().map(Held::Listed).collect(),
            scan_all,
        }
    }

    /// `r`'s slices; past the scan limit ordered by share, from `share` (slice index → its
    /// share) when first ordered and kept up to date from then on.
    pub fn of(&mut self, r: u32, share: impl Fn(u32) -> f64) -> Seen<'_> {
        let scan_all = self.scan_all;
        let held = &mut self.held[r as usize];
        if let Held::Listed(list) = held {
            if list.len() > scan_all {
                *held = Held::Sorted(list.iter().map(|&s| (share_key(share(s)), s)).collect());
            }
        }
        match held {
            Held::Listed(list) => Seen::All(list),
            Held::Sorted(set) => Seen::ByShare(set),
        }
    }

    fn remove(&mut self, r: u32, slice: u32, share: f64) {
        match &mut self.held[r as usize] {
            Held::Listed(list) => {
                if let Some(p) = list.iter().position(|&x| x == slice) {
                    list.swap_remove(p);
                }
            }
            Held::Sorted(set) => {
                set.remove(&(share_key(share), slice));
            }
        }
    }

    fn insert(&mut self, r: u32, slice: u32, share: f64) {
        match &mut self.held[r as usize] {
            Held::Listed(list) => list.push(slice),
            Held::Sorted(set) => {
                set.insert((share_key(share), slice));
            }
        }
    }

    /// Slice `slice`, whose share is `share`, moved from `from` to `to`.
    pub fn moved(&mut self, slice: u32, share: f64, from: u32, to: u32) {
        self.remove(from, slice, share);
        self.insert(to, slice, share);
    }

    /// Slice `slice` widened from `members` to them and `to`: its share went from `was`
    /// to `now` on each.
    pub fn widened(&mut self, slice: u32, members: &[u32], to: u32, was: f64, now: f64) {
        for &m in members {
            if let Held::Sorted(set) = &mut self.held[m as usize] {
                set.remove(&(share_key(was), slice));
                set.insert((share_key(now), slice));
            }
        }
        self.insert(to, slice, now);
    }
}

/// Up to `count` slices of `set` with the shares nearest below `share`, and up to `count`
/// from `share` up.
pub(super) fn around(set: &ByShare, share: f64, count: usize) -> impl Iterator<Item = u32> + '_ {
    let key = (share_key(share), 0);
    set.range(..key)
        .rev()
        .take(count)
        .chain(
            set.range((Bound::Included(key), Bound::Unbounded))
                .take(count),
        )
        .map(|&(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slices(seen: Seen<'_>) -> Vec<u32> {
        match seen {
            Seen::All(list) => list.to_vec(),
            Seen::ByShare(set) => set.iter().map(|&(_, s)| s).collect(),
        }
    }

    #[test]
    fn a_replica_past_the_scan_limit_is_seen_by_share_and_kept_up_to_date() {
        // Replica 0 serves every slice, replicas 1 and 2 one each.
        let n = SCAN_ALL as u32 + 2;
        let subsets: Vec<Vec<u32>> = (0..n)
            .map(|i| match i {
                0 => vec![0, 1],
                1 => vec![0, 2],
                _ => vec![0],
            })
            .collect();
        let share = |i: u32| (n - i) as f64;
        let mut h = Holdings::new(3, subsets.iter().map(|s| s.as_slice()), SCAN_ALL);
        assert!(matches!(h.of(1, share), Seen::All(&[0])));
        let all = slices(h.of(0, share));
        assert_eq!(all.len(), n as usize);
        assert_eq!(all.first(), Some(&(n - 1)), "smallest share first");
        assert_eq!(all.last(), Some(&0));
        // Slice 0 leaves replica 0 for replica 2, which keeps its order of arrival.
        h.moved(0, share(0), 0, 2);
        assert_eq!(slices(h.of(2, share)), vec![1, 0]);
        assert_eq!(slices(h.of(0, share)).last(), Some(&1));
        // Slice 1 widens from {0, 2} to replica 1: its share on 0 falls to two thirds.
        let was = share(1);
        h.widened(1, &[0, 2], 1, was, was * 2.0 / 3.0);
        let Seen::ByShare(set) = h.of(0, |_| unreachable!("ordered already")) else {
            panic!("replica 0 serves more than the scan limit");
        };
        assert!(set.contains(&(share_key(was * 2.0 / 3.0), 1)));
        assert!(!set.contains(&(share_key(was), 1)));
        assert_eq!(set.len(), n as usize - 1);
        assert_eq!(slices(h.of(1, share)), vec![0, 1]);
    }

    #[test]
    fn around_takes_the_nearest_shares_on_each_side() {
        let set: BTreeSet<(u64, u32)> = [(1.0, 10), (2.0, 20), (3.0, 30), (4.0, 40), (5.0, 50)]
            .iter()
            .map(|&(x, s)| (share_key(x), s))
            .collect();
        assert_eq!(
            around(&set, 3.5, 2).collect::<Vec<_>>(),
            vec![30, 20, 40, 50]
        );
        assert_eq!(around(&set, 3.0, 1).collect::<Vec<_>>(), vec![20, 30]);
        assert_eq!(around(&set, 0.5, 2).collect::<Vec<_>>(), vec![10, 20]);
        assert_eq!(around(&set, 9.0, 2).collect::<Vec<_>>(), vec![50, 40]);
    }
}
