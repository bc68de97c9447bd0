//! A prompt as a chain of block hashes: what the router knows of a prompt's content.
//!
//! The prompt is cut into blocks of [`BLOCK_BYTES`] and each block's hash folds in the
//! hash of the block before it, so equal hashes at position `i` mean equal prompts up to
//! the end of block `i` — the shape of an engine's prefix cache. The same function runs
//! live, over the prompt text as the router renders it (about 64 tokens a block at four
//! bytes a token), and in the simulator, over the token ids' little-endian bytes (64
//! tokens a block); so a conversation, a shared system prompt or an application's
//! instructions look alike to the router in both.

use super::mix::splitmix64;

/// Bytes per block.
pub const BLOCK_BYTES: usize = 256;

/// The chained hashes of a prompt's full blocks, and of its trailing partial block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PromptBlocks {
    /// One hash per full block, each covering the prompt from its start.
    pub full: Vec<u64>,
    /// The hash of the whole prompt when it ends inside a block.
    pub tail: Option<u64>,
    /// Bytes hashed.
    pub bytes: usize,
}

/// A prompt the router has no content of.
pub static NO_CONTENT: PromptBlocks = PromptBlocks {
    full: Vec::new(),
    tail: None,
    bytes: 0,
};

impl PromptBlocks {
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let mut full = Vec::with_capacity(bytes.len() / BLOCK_BYTES);
        let mut chain = SEED;
        let mut chunks = bytes.chunks_exact(BLOCK_BYTES);
        for block in &mut chunks {
            chain = hash_block(chain, block);
            full.push(chain);
        }
        let rest = chunks.remainder();
        let tail = (!rest.is_empty()).then(|| hash_block(chain, rest));
        Self {
            full,
            tail,
            bytes: bytes.len(),
        }
    }

    /// Token ids, as their little-endian bytes.
    pub fn of_tokens(tokens: &[u32]) -> Self {
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        Self::of_bytes(&bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The share of the prompt covered by its first `blocks` full blocks.
    pub fn share(&self, blocks: usize) -> f64 {
        Self::share_of(blocks.min(self.full.len()), self.bytes)
    }

    /// The share of a prompt of `bytes` covered by `blocks` full blocks.
    pub fn share_of(blocks: usize, bytes: usize) -> f64 {
        if bytes == 0 {
            return 0.0;
        }
        ((blocks * BLOCK_BYTES) as f64 / bytes as f64).min(1.0)
    }
}

const SEED: u64 = 0x736c_7569_6365_0001;

/// A 64-bit hash of `block` continuing `chain`: eight bytes at a time through a
/// multiply-xorshift mix. Not cryptographic; collisions only cost a wrong guess.
fn hash_block(chain: u64, block: &[u8]) -> u64 {
    let mut h = splitmix64(chain ^ block.len() as u64);
    let mut words = block.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = splitmix64(h ^ u64::from_le_bytes(b));
    }
    let mut b = [0u8; 8];
    let rest = words.remainder();
    b[..rest.len()].copy_from_slice(rest);
    splitmix64(h ^ u64::from_le_bytes(b) ^ ((rest.len() as u64) << 56))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blocks_chain_from_the_start() {
        let a = vec![7u8; 3 * BLOCK_BYTES + 10];
        let mut b = a.clone();
        b[BLOCK_BYTES + 3] = 8;
        let (pa, pb) = (PromptBlocks::of_bytes(&a), PromptBlocks::of_bytes(&b));
        assert_eq!(pa.full.len(), 3);
        assert!(pa.tail.is_some());
        assert_eq!(pa.full[0], pb.full[0]);
        // A change in block 1 changes every hash from there on, though block 2 is equal.
        assert_ne!(pa.full[1], pb.full[1]);
        assert_ne!(pa.full[2], pb.full[2]);
        assert_ne!(pa.tail, pb.tail);
        // Equal blocks at different positions hash differently.
        assert_ne!(pa.full[0], pa.full[1]);
    }

    #[test]
    fn tokens_are_their_bytes_and_a_block_is_64_tokens() {
        let tokens: Vec<u32> = (0..130).collect();
        let p = PromptBlocks::of_tokens(&tokens);
        assert_eq!(p.full.len(), 2);
        assert_eq!(p.bytes, 520);
        assert!((p.share(2) - 512.0 / 520.0).abs() < 1e-12);
        assert_eq!(p.share(9), p.share(2));
        assert!(NO_CONTENT.is_empty() && PromptBlocks::of_bytes(b"").is_empty());
        assert_eq!(NO_CONTENT.share(1), 0.0);
    }

    proptest! {
        #[test]
        fn a_longer_prompt_extends_the_chain(
            head in proptest::collection::vec(any::<u8>(), 0..2000),
            more in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let short = PromptBlocks::of_bytes(&head);
            let long = PromptBlocks::of_bytes(&[head.clone(), more.clone()].concat());
            prop_assert_eq!(&long.full[..short.full.len()], &short.full[..]);
            prop_assert_eq!(long.bytes, head.len() + more.len());
            if more.is_empty() {
                prop_assert_eq!(long.tail, short.tail);
            }
        }
    }
}
