//! A tenant's blast radius: the most replicas its requests may reach.
//!
//! Subsets bound where one *workload* goes, and widen with its load up to the whole
//! fleet; a tenant that wants a bound on where *all* its traffic goes (so that its
//! flood, or a request that breaks engines, can touch only so many replicas) sets it
//! explicitly. Its replicas are the first N available ones in a rendezvous order of the
//! tenant's key over the fleet: every router computes the same set, and a replica
//! joining, leaving or failing moves the set by at most that one replica.

use super::mix::splitmix64;
use crate::slice::ReplicaId;

/// The bound a request carries from its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlastRadius {
    /// The tenant's key in the rendezvous order (a hash of its name).
    pub key: u64,
    /// The most replicas its requests may reach (at least one).
    pub replicas: u32,
}

impl BlastRadius {
    /// The bound for tenant `name`; `None` when `replicas` is 0 (no bound).
    pub fn of_tenant(name: &str, replicas: u32) -> Option<Self> {
        (replicas > 0).then(|| Self {
            key: xxhash_rust::xxh3::xxh3_64(format!("sluice-tenant:{name}").as_bytes()),
            replicas,
        })
    }
}

/// The fleet in the tenant's rendezvous order: by a score of (key, replica), highest
/// first.
pub fn rank(key: u64, fleet: impl Iterator<Item = ReplicaId>) -> Vec<ReplicaId> {
    let mut scored: Vec<(u64, ReplicaId)> = fleet
        .map(|r| (splitmix64(key ^ splitmix64(r.0)), r))
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, r)| r).collect()
}

/// The first `radius.replicas` of `ranked` for which `available` holds, sorted by id.
pub fn members(
    radius: BlastRadius,
    ranked: &[ReplicaId],
    available: impl Fn(ReplicaId) -> bool,
) -> Vec<ReplicaId> {
    let mut v: Vec<ReplicaId> = ranked
        .iter()
        .copied()
        .filter(|&r| available(r))
        .take(radius.replicas.max(1) as usize)
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fleet(n: u64) -> Vec<ReplicaId> {
        (1..=n).map(ReplicaId).collect()
    }

    #[test]
    fn no_bound_at_zero_and_tenants_differ() {
        assert!(BlastRadius::of_tenant("acme", 0).is_none());
        let a = BlastRadius::of_tenant("acme", 3).unwrap();
        let b = BlastRadius::of_tenant("globex", 3).unwrap();
        assert_ne!(a.key, b.key);
        assert_eq!(a, BlastRadius::of_tenant("acme", 3).unwrap());
        let f = fleet(64);
        let ma = members(a, &rank(a.key, f.iter().copied()), |_| true);
        let mb = members(b, &rank(b.key, f.iter().copied()), |_| true);
        assert_eq!(ma.len(), 3);
        assert_ne!(ma, mb, "two tenants share all their replicas");
    }

    proptest! {
        #[test]
        fn a_failure_or_a_join_moves_the_set_by_one_replica(key: u64, n in 4u64..80, k in 1u32..8, down in 0usize..8) {
            let radius = BlastRadius { key, replicas: k };
            let f = fleet(n);
            let ranked = rank(key, f.iter().copied());
            let all = members(radius, &ranked, |_| true);
            prop_assert_eq!(all.len(), (k as usize).min(n as usize));
            // One replica of the set fails: the rest stay, one other takes its place.
            let gone = all[down % all.len()];
            let without = members(radius, &ranked, |r| r != gone);
            prop_assert!(!without.contains(&gone));
            let kept = all.iter().filter(|r| without.contains(r)).count();
            prop_assert_eq!(kept, all.len() - 1);
            // A replica joins: at most one of the set changes.
            let mut bigger = f.clone();
            bigger.push(ReplicaId(10_000));
            let joined = members(radius, &rank(key, bigger.into_iter()), |_| true);
            let kept = all.iter().filter(|r| joined.contains(r)).count();
            prop_assert!(kept + 1 >= all.len());
        }
    }
}
