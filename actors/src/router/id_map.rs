//! Maps keyed by ids the router hands out itself (replica and request ids), hashed by a
//! multiply and a shift instead of SipHash: nothing a client sends chooses these keys,
//! so they need no protection from crafted collisions, and the choice looks them up
//! hundreds of times per request (once per holder of each matched prompt block).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        // The product's high bits are well mixed; fold them into the low ones, which
        // pick the bucket.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::ReplicaId;

    #[test]
    fn consecutive_ids_spread_over_buckets() {
        let mut low = IdSet::default();
        for i in 0..1024u64 {
            let mut h = IdHasher::default();
            std::hash::Hash::hash(&ReplicaId(i), &mut h);
            low.insert(h.finish() & 1023);
        }
        assert!(low.len() > 600, "{} distinct buckets of 1024", low.len());
    }
}
