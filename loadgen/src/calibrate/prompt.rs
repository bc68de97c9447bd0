//! Prompts made of random words, so that the prefix cache hits exactly where a sweep
//! point means it to (a shared prefix) and nowhere else.
//!
//! Every word is a short common English word with a leading space: one token for the
//! simulated engine's tokenizer and for the BPE tokenizers of real models. The number of
//! tokens a real tokenizer makes of `n` such words is measured once per run
//! ([`TokenModel`]) and the word counts are scaled to hit the wanted token counts.

use sluice_engine::tokenizer::VOCAB;
use sluice_engine::words::{mix64, WORDS};

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(mix64(seed ^ 0xCA11_B8A7_E000_0000))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for small n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A random token id of the simulated vocabulary (for the virtual engine).
    pub fn token(&mut self) -> u32 {
        self.below(u64::from(VOCAB)) as u32
    }

    /// `n` random token ids.
    pub fn tokens(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.token()).collect()
    }

    /// Appends `n` random words (each with its leading space) to `out`.
    pub fn push_words(&mut self, out: &mut String, n: usize) {
        out.reserve(n * 5);
        for _ in 0..n {
            out.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
    }

    /// `n` random words.
    pub fn words(&mut self, n: usize) -> String {
        let mut s = String::new();
        self.push_words(&mut s, n);
        s
    }
}

/// How many tokens an engine's tokenizer makes of a prompt of random words:
/// `tokens = base + per_word · words` (`base` counts a BOS token and the like).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenModel {
    pub base: f64,
    pub per_word: f64,
}

impl TokenModel {
    /// One token per word and nothing else: the simulated engine's tokenizer.
    pub const ONE_PER_WORD: TokenModel = TokenModel {
        base: 0.0,
        per_word: 1.0,
    };

    /// The line through two measurements `(words, tokens)`.
    pub fn from_probes(a: (usize, u32), b: (usize, u32)) -> Option<TokenModel> {
        let (wa, ta) = (a.0 as f64, f64::from(a.1));
        let (wb, tb) = (b.0 as f64, f64::from(b.1));
        if wb <= wa {
            return None;
        }
        let per_word = (tb - ta) / (wb - wa);
        if !(per_word.is_finite() && per_word > 0.05 && per_word < 20.0) {
            return None;
        }
        Some(TokenModel {
            base: (ta - per_word * wa).max(0.0),
            per_word,
        })
    }

    /// Words to send for a prompt of about `tokens` tokens (at least one).
    pub fn words_for(&self, tokens: u32) -> usize {
        let w = ((f64::from(tokens) - self.base) / self.per_word).round();
        if w.is_finite() && w >= 1.0 {
            w as usize
        } else {
            1
        }
    }

    /// Words for a part of a prompt (no base tokens): a shared prefix or a suffix.
    pub fn words_for_part(&self, tokens: u32) -> usize {
        let w = (f64::from(tokens) / self.per_word).round();
        if w.is_finite() && w >= 0.0 {
            w as usize
        } else {
            0
        }
    }
}
