//! A workload identity for requests that carry no key, derived from their content.
//!
//! A conversation resends its history: every turn's prompt extends the one before. Many
//! conversations may begin alike — a shared system prompt, an application's
//! instructions, a tool list — and then part. The router learns, from the prompts it
//! sees, where prompts *fan out*: a block followed by [`FANOUT_SHARED`] or more distinct
//! next blocks is content many conversations share. A prompt's identity is its first
//! block after the last such fan-out point (or, for a prompt that ends there, its
//! trailing partial block): the point where this conversation became itself. Its turns
//! all extend that block, so they share the identity; distinct conversations behind one
//! system prompt do not.
//!
//! Memory is bounded: at most `max_nodes` blocks are remembered, the least recently seen
//! forgotten first. A forgotten fan-out point is learned again from a few prompts.

use super::blocks::PromptBlocks;
use crate::slice::SliceKey;
use std::collections::HashMap;

/// Distinct next blocks after which a block counts as shared by many conversations.
pub const FANOUT_SHARED: usize = 8;

#[derive(Debug, Clone)]
struct Node {
    /// Distinct next blocks seen, up to `FANOUT_SHARED`.
    next: [u64; FANOUT_SHARED],
    seen: u8,
    last: u64,
}

impl Node {
    fn shared(&self) -> bool {
        usize::from(self.seen) >= FANOUT_SHARED
    }

    fn add(&mut self, next: u64) {
        let n = usize::from(self.seen);
        if n < FANOUT_SHARED && !self.next[..n].contains(&next) {
            self.next[n] = next;
            self.seen += 1;
        }
    }
}

/// What a prompt's content says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Its conversation's workload key.
    pub key: SliceKey,
    /// Its leading blocks that many conversations share (up to the last fan-out point):
    /// a replica holding only those holds nothing of this conversation's own.
    pub shared_blocks: usize,
}

/// The learned fan-out points.
#[derive(Debug, Clone)]
pub struct Conversations {
    nodes: HashMap<u64, Node>,
    max_nodes: usize,
    tick: u64,
}

impl Default for Conversations {
    fn default() -> Self {
        Self::new(1 << 20)
    }
}

impl Conversations {
    pub fn new(max_nodes: usize) -> Self {
        Self {
            nodes: HashMap::new(),
            max_nodes: max_nodes.max(16),
            tick: 0,
        }
    }

    /// The identity of a prompt, learned from as well. `None` for an empty prompt.
    pub fn identify(&mut self, blocks: &PromptBlocks) -> Option<Identity> {
        let chain: Vec<u64> = blocks.full.iter().copied().chain(blocks.tail).collect();
        let (&last, _) = chain.split_last()?;
        // The last fan-out point among the prompt's blocks (not counting its end).
        let after = chain[..chain.len() - 1]
            .iter()
            .rposition(|h| self.nodes.get(h).is_some_and(Node::shared))
            .map_or(0, |i| i + 1);
        let identity = chain.get(after).copied().unwrap_or(last);
        self.learn(&chain);
        Some(Identity {
            key: SliceKey(identity ^ 0x636f_6e76_6572_7365),
            shared_blocks: after,
        })
    }

    fn learn(&mut self, chain: &[u64]) {
        for pair in chain.windows(2) {
            self.tick += 1;
            let tick = self.tick;
            let node = self.nodes.entry(pair[0]).or_insert(Node {
                next: [0; FANOUT_SHARED],
                seen: 0,
                last: tick,
            });
            node.add(pair[1]);
            node.last = tick;
        }
        if self.nodes.len() > self.max_nodes {
            // Forget the least recently seen half; shared points are seen most often.
            let cutoff = super::recency::median_tick(self.nodes.values().map(|n| n.last));
            self.nodes.retain(|_, n| n.last > cutoff);
        }
    }

    /// Blocks remembered.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::blocks::BLOCK_BYTES;

    /// Bytes of `len` drawn from `seed`.
    fn text(seed: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(31)) as u8)
            .map(|b| b.wrapping_add((seed % 251) as u8))
            .collect()
    }

    /// Turn `t` of conversation `c` behind a shared `system` prompt: each turn appends.
    fn turn(system: &[u8], c: u64, t: usize) -> PromptBlocks {
        let mut p = system.to_vec();
        for k in 0..=t {
            p.extend(text(1000 * c + k as u64, 300 + 37 * k));
        }
        PromptBlocks::of_bytes(&p)
    }

    #[test]
    fn conversations_behind_one_system_prompt_get_their_own_identity() {
        let system = text(1, 10 * BLOCK_BYTES + 100);
        let mut conv = Conversations::default();
        // A few conversations teach the router that the system prompt fans out.
        for c in 0..FANOUT_SHARED as u64 {
            conv.identify(&turn(&system, c, 0));
        }
        let mut ids = std::collections::HashSet::new();
        for c in 100..120 {
            let first = conv.identify(&turn(&system, c, 0)).unwrap().key;
            for t in 1..6 {
                let next = conv.identify(&turn(&system, c, t)).unwrap();
                assert_eq!(next.key, first, "turn {t}");
                // The system prompt's ten full blocks are shared; the next one is not.
                assert_eq!(next.shared_blocks, 10);
            }
            ids.insert(first);
        }
        assert_eq!(ids.len(), 20);
    }

    #[test]
    fn unrelated_prompts_and_repeats() {
        let mut conv = Conversations::default();
        let a = PromptBlocks::of_bytes(&text(5, 2000));
        let b = PromptBlocks::of_bytes(&text(6, 2000));
        let ia = conv.identify(&a);
        assert_ne!(ia, conv.identify(&b));
        assert_eq!(ia, conv.identify(&a));
        // A prompt shorter than a block is its own tail.
        let short = PromptBlocks::of_bytes(b"hello");
        assert!(conv.identify(&short).is_some());
        assert_eq!(conv.identify(&crate::router::blocks::NO_CONTENT), None);
    }

    #[test]
    fn a_prompt_that_ends_at_the_fan_out_point_is_its_tail() {
        let system = text(1, 4 * BLOCK_BYTES);
        let mut conv = Conversations::default();
        for c in 0..FANOUT_SHARED as u64 {
            conv.identify(&turn(&system, c, 0));
        }
        let mut alone = system.clone();
        alone.extend(b"hi");
        let mut other = system.clone();
        other.extend(b"ho");
        let (a, b) = (
            conv.identify(&PromptBlocks::of_bytes(&alone)),
            conv.identify(&PromptBlocks::of_bytes(&other)),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn memory_is_bounded() {
        let mut conv = Conversations::new(64);
        for c in 0..500 {
            conv.identify(&PromptBlocks::of_bytes(&text(c, 5 * BLOCK_BYTES)));
        }
        assert!(conv.len() <= 64, "{}", conv.len());
    }
}
