//! Which nodes should be Raft voters, so that losing any one rack keeps a quorum.
//!
//! With `k` voters a majority is `k/2 + 1`, so no rack may hold more than
//! `k - (k/2 + 1)` of them (1 of 3, 2 of 5). When the racks allow that, the choice
//! obeys it; when they do not (too few racks), it spreads the voters as evenly as the
//! racks allow. Current voters are kept where the limit permits, to avoid membership
//! churn. Pure and deterministic; the leader calls it and applies the result with
//! `change_membership`.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::NodeId;

/// A node that may be a voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterCandidate {
    pub id: NodeId,
    pub rack: String,
    /// Whether it is a voter now.
    pub is_voter: bool,
}

/// The most voters one rack may hold so that losing it leaves a majority of `voters`.
pub fn max_per_rack(voters: usize) -> usize {
    voters.saturating_sub(voters / 2 + 1)
}

/// Whether losing any single rack leaves a majority of the voters (`racks` has one
/// entry per voter, naming its rack).
pub fn survives_any_rack_loss<'a>(racks: impl IntoIterator<Item = &'a str>) -> bool {
    let mut per_rack: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0;
    for r in racks {
        *per_rack.entry(r).or_default() += 1;
        total += 1;
    }
    per_rack.values().all(|&n| total - n > total / 2)
}

/// The smallest per-rack limit that still admits `k` voters.
fn min_feasible_limit(rack_sizes: &[usize], k: usize) -> usize {
    (0..=k)
        .find(|&l| rack_sizes.iter().map(|&n| n.min(l)).sum::<usize>() >= k)
        .unwrap_or(k)
}

/// Voters a cluster aims for (3 tolerates one failure, or one rack where racks allow).
pub const DESIRED_VOTERS: usize = 3;

/// Chooses up to `desired` voters (rounded down to an odd number when there are too
/// few candidates or `desired` is even: an even count adds no fault tolerance).
pub fn choose_voters(candidates: &[VoterCandidate], desired: usize) -> BTreeSet<NodeId> {
    // Ignore duplicate ids (first wins), then group by rack, ids ascending.
    let mut seen = BTreeSet::new();
    let mut racks: BTreeMap<&str, Vec<&VoterCandidate>> = BTreeMap::new();
    for c in candidates {
        if seen.insert(c.id) {
            racks.entry(c.rack.as_str()).or_default().push(c);
        }
    }
    for members in racks.values_mut() {
        members.sort_by_key(|c| c.id);
    }

    let mut k = desired.min(seen.len());
    if k % 2 == 0 {
        k = k.saturating_sub(1);
    }
    if k == 0 {
        return BTreeSet::new();
    }
    let sizes: Vec<usize> = racks.values().map(Vec::len).collect();
    let limit = max_per_rack(k).max(min_feasible_limit(&sizes, k));

    let mut chosen = BTreeSet::new();
    let mut per_rack: BTreeMap<&str, usize> = BTreeMap::new();

    // Keep current voters within the limit.
    let mut current: Vec<&VoterCandidate> = racks
        .values()
        .flatten()
        .filter(|c| c.is_voter)
        .copied()
        .collect();
    current.sort_by_key(|c| c.id);
    for c in current {
        if chosen.len() == k {
            break;
        }
        let n = per_rack.entry(c.rack.as_str()).or_default();
        if *n < limit {
            *n += 1;
            chosen.insert(c.id);
        }
    }

    // Fill the rest, always from the rack with the fewest voters so far.
    while chosen.len() < k {
        let pick = racks
            .iter()
            .filter_map(|(rack, members)| {
                let n = per_rack.get(rack).copied().unwrap_or(0);
                let next = members.iter().find(|c| !chosen.contains(&c.id))?;
                (n < limit).then_some((n, std::cmp::Reverse(members.len()), *rack, next.id))
            })
            .min();
        match pick {
            Some((_, _, rack, id)) => {
                chosen.insert(id);
                *per_rack.entry(rack).or_default() += 1;
            }
            // Unreachable by the choice of `limit`; stop rather than loop.
            None => break,
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(id: NodeId, rack: &str, is_voter: bool) -> VoterCandidate {
        VoterCandidate {
            id,
            rack: rack.into(),
            is_voter,
        }
    }

    fn racks_of<'a>(cands: &'a [VoterCandidate], chosen: &BTreeSet<NodeId>) -> Vec<&'a str> {
        cands
            .iter()
            .filter(|c| chosen.contains(&c.id))
            .map(|c| c.rack.as_str())
            .collect()
    }

    #[test]
    fn limits() {
        assert_eq!(max_per_rack(1), 0);
        assert_eq!(max_per_rack(3), 1);
        assert_eq!(max_per_rack(5), 2);
        assert!(survives_any_rack_loss(["a", "b", "c"]));
        assert!(!survives_any_rack_loss(["a", "a", "b"]));
        assert!(survives_any_rack_loss(["a", "a", "b", "b", "c"]));
    }

    #[test]
    fn spreads_over_racks() {
        let cands = vec![
            cand(1, "a", false),
            cand(2, "a", false),
            cand(3, "a", false),
            cand(4, "b", false),
            cand(5, "b", false),
            cand(6, "c", false),
        ];
        let three = choose_voters(&cands, 3);
        assert_eq!(three, [1, 4, 6].into());
        let five = choose_voters(&cands, 5);
        assert_eq!(five.len(), 5);
        assert!(survives_any_rack_loss(racks_of(&cands, &five)));
    }

    #[test]
    fn keeps_current_voters_when_they_are_fine() {
        let cands = vec![
            cand(1, "a", false),
            cand(2, "a", true),
            cand(3, "b", true),
            cand(4, "c", false),
            cand(5, "c", true),
            cand(6, "d", false),
        ];
        assert_eq!(choose_voters(&cands, 3), [2, 3, 5].into());
    }

    #[test]
    fn moves_a_voter_off_an_overloaded_rack() {
        let cands = vec![
            cand(1, "a", true),
            cand(2, "a", true),
            cand(3, "b", true),
            cand(4, "c", false),
        ];
        assert_eq!(choose_voters(&cands, 3), [1, 3, 4].into());
    }

    #[test]
    fn too_few_racks_or_nodes() {
        // Two racks cannot survive a rack loss with 3 voters; still spread 2+1.
        let cands = vec![
            cand(1, "a", false),
            cand(2, "a", false),
            cand(3, "b", false),
            cand(4, "b", false),
        ];
        let v = choose_voters(&cands, 3);
        assert_eq!(v.len(), 3);
        assert_eq!(
            racks_of(&cands, &v).iter().filter(|r| **r == "a").count(),
            2
        );
        // Two candidates: one voter (an even count adds nothing).
        assert_eq!(choose_voters(&cands[..2], 3).len(), 1);
        assert!(choose_voters(&[], 3).is_empty());
    }

    fn arb_candidates() -> impl Strategy<Value = Vec<VoterCandidate>> {
        proptest::collection::vec((0usize..5, any::<bool>()), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (rack, is_voter))| cand(i as NodeId + 1, &format!("r{rack}"), is_voter))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn a_rack_loss_keeps_quorum_when_racks_allow(
            cands in arb_candidates(),
            desired in prop_oneof![Just(3usize), Just(5usize)],
        ) {
            let chosen = choose_voters(&cands, desired);
            let mut k = desired.min(cands.len());
            if k % 2 == 0 { k = k.saturating_sub(1); }
            prop_assert_eq!(chosen.len(), k);
            prop_assert!(chosen.iter().all(|id| cands.iter().any(|c| c.id == *id)));
            prop_assert_eq!(&choose_voters(&cands, desired), &chosen);

            let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
            for c in &cands { *sizes.entry(c.rack.as_str()).or_default() += 1; }
            let cap = max_per_rack(k);
            let feasible = sizes.values().map(|&n| n.min(cap)).sum::<usize>() >= k;
            let voter_racks = racks_of(&cands, &chosen);
            if feasible {
                // For every rack, the voters outside it are a majority of all voters.
                for rack in sizes.keys() {
                    let outside = voter_racks.iter().filter(|r| *r != rack).count();
                    prop_assert!(outside > k / 2, "rack {} holds too many of {:?}", rack, chosen);
                }
            } else {
                // Otherwise the busiest rack holds no more than the best split allows.
                let sizes: Vec<usize> = sizes.values().copied().collect();
                let best = min_feasible_limit(&sizes, k);
                let mut per: BTreeMap<&str, usize> = BTreeMap::new();
                for r in &voter_racks { *per.entry(r).or_default() += 1; }
                prop_assert!(per.values().all(|&n| n <= best));
            }
        }
    }
}
