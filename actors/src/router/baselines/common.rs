//! Pieces shared by the baseline policies: a seeded RNG (the sources use a thread RNG; a
//! simulator needs reproducible runs), dense per-replica slots, and chained block hashes
//! of token ids.

use crate::router::policy::ReplicaObservation;
use crate::slice::ReplicaId;
use std::collections::HashMap;

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast, well-mixed 64-bit generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; `n` must be positive).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

pub use crate::router::mix::mix64;

/// Hashes token ids (little-endian bytes) with xxh3 under `seed`; `buf` is scratch space
/// reused across calls so hashing a long prompt allocates nothing.
pub fn hash_tokens(buf: &mut Vec<u8>, tokens: &[u32], seed: u64) -> u64 {
    buf.clear();
    buf.reserve(tokens.len() * 4);
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64_with_seed(buf, seed)
}

/// Chained hashes of the full `block`-token blocks of `tokens`:
/// `h[i] = hash(block i, seed = h[i-1])`, `h[-1] = root`. A trailing partial block is
/// not hashed. At most `max_blocks` blocks.
pub fn chained_block_hashes(
    buf: &mut Vec<u8>,
    tokens: &[u32],
    block: usize,
    max_blocks: usize,
    root: u64,
    out: &mut Vec<u64>,
) {
    out.clear();
    if block == 0 {
        return;
    }
    let mut prev = root;
    for chunk in tokens.chunks_exact(block).take(max_blocks) {
        prev = hash_tokens(buf, chunk, prev);
        out.push(prev);
    }
}

/// Dense slots for the replicas a policy has seen, so per-replica state lives in vectors
/// and a route costs O(fleet) without hashing every replica id. The slot of a replica
/// never changes; the fleet-position → slot map is rebuilt only when the fleet's
/// membership or order changes.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    by_id: HashMap<ReplicaId, usize>,
    ids: Vec<ReplicaId>,
    fleet_ids: Vec<ReplicaId>,
    map: Vec<usize>,
}

impl Slots {
    /// Updates the map for `fleet`; returns true when its membership or order changed.
    pub fn sync(&mut self, fleet: &[ReplicaObservation]) -> bool {
        let same = self.fleet_ids.len() == fleet.len()
            && self.fleet_ids.iter().zip(fleet).all(|(a, o)| *a == o.id);
        if same {
            return false;
        }
        self.fleet_ids.clear();
        self.fleet_ids.extend(fleet.iter().map(|o| o.id));
        self.map.clear();
        for o in fleet {
            let next = self.ids.len();
            let slot = *self.by_id.entry(o.id).or_insert(next);
            if slot == next {
                self.ids.push(o.id);
            }
            self.map.push(slot);
        }
        true
    }

    /// Slot of each fleet position (after `sync`).
    pub fn map(&self) -> &[usize] {
        &self.map
    }

    pub fn slot(&self, id: ReplicaId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    pub fn id(&self, slot: usize) -> ReplicaId {
        self.ids[slot]
    }

    /// Number of slots ever handed out.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Replicas of the current fleet.
    pub fn fleet_ids(&self) -> &[ReplicaId] {
        &self.fleet_ids
    }
}

/// Positions of the healthy replicas of `fleet`, in fleet order.
pub fn healthy_positions(fleet: &[ReplicaObservation], out: &mut Vec<usize>) {
    out.clear();
    out.extend(
        fleet
            .iter()
            .enumerate()
            .filter(|(_, o)| o.healthy)
            .map(|(i, _)| i),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_uniform_enough() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            let x = a.below(4);
            assert_eq!(x, b.below(4));
            counts[x] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        let u = a.unit_f64();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn chained_hashes_share_prefixes_only() {
        let mut buf = Vec::new();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let x: Vec<u32> = (0..40).collect();
        let mut y = x.clone();
        y[20] = 999;
        chained_block_hashes(&mut buf, &x, 8, 100, 1, &mut a);
        chained_block_hashes(&mut buf, &y, 8, 100, 1, &mut b);
        assert_eq!(a.len(), 5);
        assert_eq!(a[..2], b[..2]);
        assert!(a[2..].iter().zip(&b[2..]).all(|(p, q)| p != q));
        chained_block_hashes(&mut buf, &x, 8, 3, 1, &mut b);
        assert_eq!(b, a[..3]);
    }
}

/// Requests and fleets for the baselines' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::router::policy::{ReplicaObservation, RouteRequest};
    use crate::slice::{ReplicaId, SliceKey};

    /// A healthy, idle replica; tests change the fields they care about.
    pub fn obs(id: u64) -> ReplicaObservation {
        ReplicaObservation {
            id: ReplicaId(id),
            healthy: true,
            capacity_mu_per_min: 1.0,
            active_requests: 0,
            waiting: 0,
            kv_usage: 0.0,
        }
    }

    /// Request 0 of one workload with `prompt`.
    pub fn req(prompt: &[u32]) -> RouteRequest<'_> {
        RouteRequest {
            id: 0,
            workload: Some(SliceKey(0)),
            prompt,
            max_tokens: None,
            images: 0,
        }
    }

    /// `len` distinct tokens; different seeds share no prefix.
    pub fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 100_000 + i).collect()
    }
}
