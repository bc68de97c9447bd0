//! Workload keys hash to 64-bit slice keys; the keyspace is what slices cut up.

use serde::{Deserialize, Serialize};

/// A point in the 64-bit keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SliceKey(pub u64);

/// Fixed seed: every node must hash a workload to the same key, across versions.
const SEED: u64 = 0x51ce_0000_0000_0001;

impl SliceKey {
    /// The slice key of a workload key (tenant, session, user…).
    pub fn of(workload: &str) -> Self {
        Self(xxhash_rust::xxh3::xxh3_64_with_seed(
            workload.as_bytes(),
            SEED,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(SliceKey::of("session-1"), SliceKey::of("session-1"));
        assert_ne!(SliceKey::of("session-1"), SliceKey::of("session-2"));
        // The top bits of many keys cover the keyspace evenly enough for slicing.
        let mut quarters = [0u32; 4];
        for i in 0..4000 {
            quarters[(SliceKey::of(&format!("w{i}")).0 >> 62) as usize] += 1;
        }
        assert!(
            quarters.iter().all(|&q| (800..1200).contains(&q)),
            "{quarters:?}"
        );
    }
}
