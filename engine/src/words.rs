//! Deterministic pseudo-output: the words a simulated request "generates", and how long
//! its answer would naturally be.
//!
//! Every output token is one short English word with a leading space (" the", " cat"),
//! which the stand-in tokenizer maps to exactly one token. The engine core emits the
//! token id of that word, so when a client sends the answer back as part of the next
//! conversation turn, its tokens equal the ones the engine cached and the prefix cache
//! hits across turns, as it does on a real engine.

use std::sync::OnceLock;

/// The vocabulary of pseudo-words (each at most four letters, so one token each).
pub const WORDS: &[&str] = &[
    " the", " of", " and", " to", " a", " in", " is", " it", " that", " was", " for", " on",
    " are", " as", " with", " he", " they", " at", " be", " this", " have", " from", " or", " one",
    " had", " by", " word", " but", " not", " what", " all", " were", " we", " when", " your",
    " can", " said", " thus", " use", " an", " each", " wish", " she", " do", " how", " if",
    " will", " up", " else", " upon", " out", " many", " then", " them", " so", " some", " her",
    " ever", " make", " like", " him", " into", " time", " has", " look", " two", " more", " go",
    " see", " no", " way", " soon", " my", " than", " been", " call", " who", " its", " now",
    " find", " long", " down", " day", " did", " get", " come", " made", " may", " part", " over",
    " new", " take", " only", " also", " back", " just", " work", " life", " good", " year",
    " well", " most", " here", " give", " very", " help", " line", " turn", " mean", " move",
    " same", " tell", " does", " set", " want", " air", " play", " end", " home", " read", " hand",
    " port", " big", " even", " land", " add", " must", " high", " such", " act", " why", " ask",
    " men", " went", " kind", " off", " need", " try", " us", " near", " own", " last", " city",
    " tree", " keep", " eye", " left", " late", " run", " open", " seem", " next", " hard",
    " body", " food", " sun", " four", " idea", " fish", " road", " map", " rain", " rule",
    " pull", " cold", " king", " town", " fine", " ship", " area", " half", " rock", " fire",
    " told", " knew", " pass", " top", " hold", " wind", " main", " car", " star", " box", " noun",
    " bird", " dry", " game", " door", " blue", " warm", " red", " list", " far", " sea", " draw",
    " cat", " test", " lay", " dog", " note", " wait", " plan", " wood", " fast", " gold", " walk",
    " boat", " slow", " ten", " page", " sing", " ball", " moon", " mind",
];

/// Token ids of `WORDS`, as the stand-in tokenizer gives them.
fn word_tokens() -> &'static [u32] {
    static IDS: OnceLock<Vec<u32>> = OnceLock::new();
    IDS.get_or_init(|| {
        WORDS
            .iter()
            .map(|w| crate::tokenizer::tokenize(w).first().copied().unwrap_or(0))
            .collect()
    })
}

/// SplitMix64: a fast, well-mixed 64-bit hash step.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn word_index(seed: u64, index: u32) -> usize {
    (mix64(seed ^ mix64(u64::from(index))) % WORDS.len() as u64) as usize
}

/// The text of output token `index` of the request seeded with `seed`.
pub fn output_word(seed: u64, index: u32) -> &'static str {
    WORDS[word_index(seed, index)]
}

/// The seed of a request's words when the client gave one (OpenAI's `seed`): the same
/// on every replica, so a continued answer goes on with the words it would have had.
pub fn client_seed(seed: u64) -> u64 {
    mix64(seed ^ 0x5eed_0fc1_1e47)
}

/// The text of the first `n` output tokens of a request seeded with `seed`.
pub fn output_text(seed: u64, n: u32) -> String {
    (0..n).map(|i| output_word(seed, i)).collect()
}

/// The token id of output token `index` of the request seeded with `seed`.
pub fn output_token(seed: u64, index: u32) -> u32 {
    word_tokens()[word_index(seed, index)]
}

/// Shortest and longest natural answer (tokens before the simulated EOS).
pub const MIN_NATURAL_LEN: u32 = 16;
pub const MAX_NATURAL_LEN: u32 = 512;

/// How many tokens a request with this prompt would produce before EOS: a deterministic
/// function of the prompt and `seed`, spread between 16 and 512 tokens with a median of
/// about 160 (`16 · 32^(u^0.6)` for a hash-uniform `u`), roughly the shape of chat answer
/// lengths in public traces.
pub fn natural_output_len(prompt: &[u32], seed: u64) -> u32 {
    let mut bytes = Vec::with_capacity(prompt.len() * 4);
    for t in prompt {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, seed);
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    let ratio = f64::from(MAX_NATURAL_LEN) / f64::from(MIN_NATURAL_LEN);
    let len = f64::from(MIN_NATURAL_LEN) * ratio.powf(u.powf(0.6));
    (len.round() as u32).clamp(MIN_NATURAL_LEN, MAX_NATURAL_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::tokenize;

    #[test]
    fn every_word_is_one_token_and_round_trips() {
        for w in WORDS {
            assert_eq!(tokenize(w).len(), 1, "{w:?}");
        }
        let text: String = (0..50).map(|i| output_word(42, i)).collect();
        let ids: Vec<u32> = (0..50).map(|i| output_token(42, i)).collect();
        assert_eq!(tokenize(&text), ids);
    }

    #[test]
    fn natural_lengths_spread() {
        let lens: Vec<u32> = (0..2000u32)
            .map(|i| natural_output_len(&[i, i + 1], 7))
            .collect();
        assert!(lens
            .iter()
            .all(|&l| (MIN_NATURAL_LEN..=MAX_NATURAL_LEN).contains(&l)));
        let mut sorted = lens.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        assert!((100..=250).contains(&median), "median {median}");
        assert_eq!(
            natural_output_len(&[1, 2, 3], 7),
            natural_output_len(&[1, 2, 3], 7)
        );
    }
}
