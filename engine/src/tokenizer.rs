//! A deterministic stand-in tokenizer: no model files, but real prompt content maps to
//! stable token ids, so equal prompt prefixes give equal token prefixes and the prefix
//! cache sees what a real one would.
//!
//! Text splits roughly like a BPE tokenizer: a word together with its leading space is
//! one token up to four characters, longer words split into four-character pieces,
//! every punctuation mark is a token, and special markers such as `<|eot_id|>` are one
//! token each. Ids are hashes of the piece folded into a 128k vocabulary.

/// Size of the simulated vocabulary (Llama-3 has 128,256 tokens).
pub const VOCAB: u32 = 128_000;

/// Longest run of characters that one word token covers.
const PIECE_CHARS: usize = 4;

/// Tokenizes `text` into ids in `0..VOCAB`.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut out = Vec::with_capacity(text.len() / 3 + 1);
    for_each_piece(text, |piece| out.push(piece_id(piece)));
    out
}

/// Number of tokens `tokenize` would return, without allocating them.
pub fn count_tokens(text: &str) -> usize {
    let mut n = 0;
    for_each_piece(text, |_| n += 1);
    n
}

fn piece_id(piece: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(piece.as_bytes()) % u64::from(VOCAB)) as u32
}

fn for_each_piece(text: &str, mut emit: impl FnMut(&str)) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Special marker `<|name|>`: one token.
        if bytes[i] == b'<' && bytes.get(i + 1) == Some(&b'|') {
            if let Some(end) = text[i + 2..].find("|>") {
                let name = &text[i + 2..i + 2 + end];
                if !name.is_empty()
                    && name.len() <= 32
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    let stop = i + 2 + end + 2;
                    emit(&text[i..stop]);
                    i = stop;
                    continue;
                }
            }
        }
        let start = i;
        // A run of spaces attaches to the word that follows it, as in GPT-style BPE.
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let ch_len = utf8_len(bytes, i);
        if i < bytes.len() && is_word_byte(bytes[i]) {
            let mut chars = 0;
            while i < bytes.len() && is_word_byte(bytes[i]) && chars < PIECE_CHARS {
                i += utf8_len(bytes, i);
                chars += 1;
            }
        } else if i < bytes.len() {
            i += ch_len;
        }
        if i == start {
            // Only possible at the end of input with trailing spaces handled above.
            break;
        }
        emit(&text[start..i]);
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// Length of the UTF-8 character starting at `i` (1 past the end).
fn utf8_len(bytes: &[u8], i: usize) -> usize {
    match bytes.get(i) {
        None => 1,
        Some(&b) if b < 0x80 => 1,
        Some(&b) if b >= 0xF0 => 4,
        Some(&b) if b >= 0xE0 => 3,
        Some(_) => 2,
    }
    .min(bytes.len().saturating_sub(i).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_prefixes_give_equal_token_prefixes() {
        let a = tokenize("You are a helpful assistant. What is the capital of France?");
        let b = tokenize("You are a helpful assistant. Tell me a joke.");
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(common >= 6, "common prefix {common}");
        assert_ne!(a, b);
    }

    #[test]
    fn special_markers_are_single_tokens() {
        assert_eq!(count_tokens("<|eot_id|>"), 1);
        assert_eq!(count_tokens("<|start_header_id|>user<|end_header_id|>"), 3);
    }

    #[test]
    fn roughly_bpe_sized() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(100);
        let n = count_tokens(&text);
        // 900 words and 100 periods: a BPE tokenizer gives about 1,000-1,300 tokens.
        assert!((1000..=1600).contains(&n), "{n}");
    }

    proptest! {
        #[test]
        fn count_matches_tokenize(s in "\\PC{0,200}") {
            prop_assert_eq!(count_tokens(&s), tokenize(&s).len());
            prop_assert!(tokenize(&s).iter().all(|&t| t < VOCAB));
        }

        #[test]
        fn concatenation_at_a_token_boundary_is_additive(a in "[a-z ]{0,50}[a-z]", b in "[.,!?]{1,5}") {
            // Punctuation always starts a new token, so tokens(a+b) = tokens(a) + tokens(b).
            let mut joined = tokenize(&a);
            joined.extend(tokenize(&b));
            prop_assert_eq!(tokenize(&format!("{a}{b}")), joined);
        }
    }
}
