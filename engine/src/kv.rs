//! The KV-cache block pool with hash-chained prefix reuse, after vLLM's V1
//! `BlockPool`/`FreeKVCacheBlockQueue`.
//!
//! * Every block has a reference count. Blocks with no references sit in one free queue,
//!   ordered by eviction priority: allocation takes from the head, freeing appends at the
//!   tail. A freed block keeps its content hash, so it can still be hit until it reaches
//!   the head of the queue and is reused (least recently used first).
//! * A full block's hash is `hash(parent block's hash, its token ids)`, so two prompts with
//!   equal prefixes produce equal hash chains and share blocks.
//! * A cache hit on a free block takes it out of the free queue (O(1), the queue is doubly
//!   linked); a block in use is never evicted.
//!
//! Every operation is O(1) or O(blocks touched); nothing scans the pool.

use std::collections::HashMap;

/// Index of a block in the pool.
pub type BlockId = u32;

const NIL: u32 = u32::MAX;

/// Parent hash of a sequence's first block.
pub const ROOT_HASH: u64 = 0x005E_ED0F_B10C_u64;

/// Hash of one full block: chains the parent's hash with the block's token ids.
pub fn block_hash(parent: u64, tokens: &[u32], scratch: &mut Vec<u8>) -> u64 {
    scratch.clear();
    for t in tokens {
        scratch.extend_from_slice(&t.to_le_bytes());
    }
    // 0 marks "no hash" in the pool.
    xxhash_rust::xxh3::xxh3_64_with_seed(scratch, parent).max(1)
}

const NO_HASH: u64 = 0;

/// The block pool.
#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_cnt: Vec<u32>,
    /// Content hash of a block registered in `cached` (only full, computed blocks), or
    /// `NO_HASH`. (A plain `u64` rather than `Option<u64>`: half the memory, which
    /// matters with thousands of simulated engines.)
    hash: Vec<u64>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    free: u32,
    cached: HashMap<u64, BlockId>,
}

impl BlockPool {
    pub fn new(num_blocks: u32) -> Self {
        let n = num_blocks as usize;
        let mut prev = Vec::with_capacity(n);
        let mut next = Vec::with_capacity(n);
        for i in 0..num_blocks {
            prev.push(if i == 0 { NIL } else { i - 1 });
            next.push(if i + 1 == num_blocks { NIL } else { i + 1 });
        }
        Self {
            ref_cnt: vec![0; n],
            hash: vec![NO_HASH; n],
            prev,
            next,
            head: if num_blocks == 0 { NIL } else { 0 },
            tail: if num_blocks == 0 { NIL } else { num_blocks - 1 },
            free: num_blocks,
            cached: HashMap::new(),
        }
    }

    /// Total number of blocks.
    pub fn num_blocks(&self) -> u32 {
        self.ref_cnt.len() as u32
    }

    /// Blocks with no reference (including cached blocks that may be evicted).
    pub fn num_free(&self) -> u32 {
        self.free
    }

    /// Number of blocks currently registered in the prefix cache.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Fraction of blocks in use, as vLLM reports `kv_cache_usage_perc`.
    pub fn usage(&self) -> f64 {
        let n = self.num_blocks();
        if n == 0 {
            return 0.0;
        }
        1.0 - f64::from(self.free) / f64::from(n)
    }

    /// The cached block holding `hash`, if any.
    pub fn lookup(&self, hash: u64) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Reference count of a block.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_cnt[block as usize]
    }

    /// Takes a reference on a cached block found by `lookup`, taking it out of the free
    /// queue if nobody held it.
    pub fn touch(&mut self, block: BlockId) {
        let b = block as usize;
        if self.ref_cnt[b] == 0 {
            self.unlink(block);
        }
        self.ref_cnt[b] += 1;
    }

    /// Allocates a fresh block, evicting the least recently freed one. `None` if no block
    /// is free.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let block = self.head;
        if block == NIL {
            return None;
        }
        self.unlink(block);
        let b = block as usize;
        let h = std::mem::replace(&mut self.hash[b], NO_HASH);
        if h != NO_HASH && self.cached.get(&h) == Some(&block) {
            self.cached.remove(&h);
        }
        self.ref_cnt[b] = 1;
        Some(block)
    }

    /// Drops one reference; a block nobody holds goes to the tail of the free queue (it
    /// stays cached until evicted).
    pub fn release(&mut self, block: BlockId) {
        let b = block as usize;
        debug_assert!(self.ref_cnt[b] > 0, "double free of block {block}");
        if self.ref_cnt[b] == 0 {
            return;
        }
        self.ref_cnt[b] -= 1;
        if self.ref_cnt[b] == 0 {
            self.push_tail(block);
        }
    }

    /// Registers a full, computed block under `hash` so later requests can hit it. If an
    /// equal block is already cached the new one stays unregistered (it is freed normally).
    pub fn register(&mut self, block: BlockId, hash: u64) {
        let b = block as usize;
        if self.hash[b] != NO_HASH || hash == NO_HASH {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            self.hash[b] = hash;
        }
    }

    fn unlink(&mut self, block: BlockId) {
        let b = block as usize;
        let (p, n) = (self.prev[b], self.next[b]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[b] = NIL;
        self.next[b] = NIL;
        self.free -= 1;
    }

    fn push_tail(&mut self, block: BlockId) {
        let b = block as usize;
        self.prev[b] = self.tail;
        self.next[b] = NIL;
        if self.tail == NIL {
            self.head = block;
        } else {
            self.next[self.tail as usize] = block;
        }
        self.tail = block;
        self.free += 1;
    }

    /// Checks the pool's invariants (tests only: O(blocks)).
    #[cfg(test)]
    pub fn check(&self) {
        let mut count = 0;
        let mut cur = self.head;
        let mut prev = NIL;
        while cur != NIL {
            assert_eq!(
                self.ref_cnt[cur as usize], 0,
                "block {cur} in free queue with refs"
            );
            assert_eq!(self.prev[cur as usize], prev);
            prev = cur;
            cur = self.next[cur as usize];
            count += 1;
        }
        assert_eq!(prev, self.tail);
        assert_eq!(count, self.free);
        for (h, &b) in &self.cached {
            assert_eq!(self.hash[b as usize], *h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order_and_eviction() {
        let mut pool = BlockPool::new(4);
        let blocks: Vec<_> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(pool.num_free(), 0);
        assert!(pool.allocate().is_none());
        for (i, &b) in blocks.iter().enumerate() {
            pool.register(b, 100 + i as u64);
        }
        // Free in order 2, 0, 3, 1: eviction must follow the same order.
        for &i in &[2usize, 0, 3, 1] {
            pool.release(blocks[i]);
        }
        pool.check();
        assert_eq!(pool.num_free(), 4);
        assert_eq!(pool.lookup(100), Some(blocks[0]));
        // Hitting block 0 takes it out of the free queue: it must not be evicted.
        pool.touch(blocks[0]);
        let a = pool.allocate().unwrap();
        assert_eq!(a, blocks[2]);
        assert_eq!(pool.lookup(102), None, "evicted block is no longer cached");
        let b = pool.allocate().unwrap();
        assert_eq!(b, blocks[3]);
        let c = pool.allocate().unwrap();
        assert_eq!(c, blocks[1]);
        assert!(pool.allocate().is_none(), "the touched block is in use");
        assert_eq!(pool.lookup(100), Some(blocks[0]));
        pool.check();
    }

    #[test]
    fn duplicate_registration_keeps_first() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        pool.register(a, 7);
        pool.register(b, 7);
        assert_eq!(pool.lookup(7), Some(a));
        pool.release(b);
        pool.release(a);
        // b is evicted first; evicting it must not drop a's entry.
        assert_eq!(pool.allocate(), Some(b));
        assert_eq!(pool.lookup(7), Some(a));
        pool.check();
    }

    #[test]
    fn hash_chains_differ_by_parent() {
        let mut s = Vec::new();
        let x = block_hash(ROOT_HASH, &[1, 2, 3], &mut s);
        assert_eq!(x, block_hash(ROOT_HASH, &[1, 2, 3], &mut s));
        assert_ne!(x, block_hash(x, &[1, 2, 3], &mut s));
        assert_ne!(x, block_hash(ROOT_HASH, &[1, 2, 4], &mut s));
    }
}
