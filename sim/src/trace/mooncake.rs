//! JSON-lines traces of prompt blocks, one request a line: `timestamp`, `input_length`,
//! `output_length` and `hash_ids` (one id per prompt block; equal ids are equal blocks,
//! chained from the start). Two public releases have this shape:
//!
//! - Mooncake's FAST'25 traces (kvcache-ai/Mooncake, `FAST25-release/traces`): timestamps
//!   in milliseconds, 512-token blocks, no session ids.
//! - Alibaba's Bailian usage traces (alibaba-edu/qwen-bailian-usagetraces-anon):
//!   timestamps in seconds, 16-token blocks, and each request's `chat_id` with its
//!   `parent_chat_id` (−1 on a conversation's first turn), so a conversation is the chain
//!   of turns back to its root.
//!
//! A trace's block size is read off its rows (how many ids a prompt of a given length
//! has), not assumed, and its session ids are passed on as workload keys: an explicit
//! `session_id` (or `session`) or `conversation_id` (or `conv_id`), else the root of a
//! `chat_id` chain. A trace without them carries no key; none is invented from its
//! blocks.

use super::error::TraceError;
use super::request::{splitmix64, Prompt, Segment, Trace, TraceRequest};
use serde::Deserialize;
use sluice_actors::slice::SliceKey;
use std::collections::HashMap;
use std::path::Path;

/// Tokens per block when a trace's rows do not show it (none lists two ids or more):
/// Mooncake's.
pub const BLOCK_TOKENS: u32 = 512;

/// The largest block size looked for (powers of two up to it).
const MAX_BLOCK_TOKENS: u32 = 1 << 16;

#[derive(Deserialize)]
struct Row {
    timestamp: f64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
    #[serde(default, alias = "session")]
    session_id: Option<Id>,
    #[serde(default, alias = "conv_id")]
    conversation_id: Option<Id>,
    #[serde(default)]
    chat_id: Option<Id>,
    #[serde(default)]
    parent_chat_id: Option<Id>,
}

/// A session, conversation or chat id, as a number or a string.
#[derive(Deserialize, Clone, PartialEq, Eq, Hash, Debug)]
#[serde(untagged)]
enum Id {
    Signed(i64),
    Unsigned(u64),
    Text(String),
}

impl Id {
    /// Bailian marks a first turn's parent with −1.
    fn is_none(&self) -> bool {
        match self {
            Id::Signed(n) => *n < 0,
            Id::Unsigned(_) => false,
            Id::Text(s) => s.is_empty() || s == "-1",
        }
    }

    /// The workload key of the session this id names; `kind` keeps a session id and a
    /// chat id that happen to be equal apart.
    fn key(&self, kind: &str) -> u64 {
        let text = match self {
            Id::Signed(n) => n.to_string(),
            Id::Unsigned(n) => n.to_string(),
            Id::Text(s) => s.clone(),
        };
        SliceKey::of(&format!("{kind}:{text}")).0
    }
}

pub fn read_mooncake(path: &Path) -> Result<Trace, TraceError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_mooncake(&text, &shown)
}

/// Each block id seeds its block's tokens, so equal ids give equal token blocks; the
/// last block is sized by `input_length`.
pub fn parse_mooncake(text: &str, origin: &str) -> Result<Trace, TraceError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parse_error = |message: String| TraceError::Parse {
            path: origin.to_owned(),
            line: i + 1,
            message,
        };
        let row: Row = serde_json::from_str(line).map_err(|e| parse_error(e.to_string()))?;
        if !(row.timestamp.is_finite() && row.timestamp >= 0.0) {
            return Err(parse_error(format!(
                "timestamp {} is not a time (a number ≥ 0)",
                row.timestamp
            )));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(TraceError::Empty(origin.to_owned()));
    }
    // Bailian's rows name their parent turn, and its timestamps are seconds.
    let bailian = rows.iter().any(|r| r.parent_chat_id.is_some());
    let us_per_unit = if bailian { 1e6 } else { 1e3 };
    let block = block_tokens(&rows);
    let roots = chat_roots(&rows);
    // Each row's ids are freed as its request is made: a trace of 16-token blocks holds
    // many of them.
    let requests = rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| TraceRequest {
            arrival_us: (row.timestamp * us_per_unit).round() as u64,
            session: session(&row, &roots),
            prompt: prompt(&row, block, i),
            output_tokens: row.output_length.max(1),
        })
        .collect();
    let mut t = Trace {
        name: if bailian { "bailian" } else { "mooncake" }.into(),
        requests,
    };
    t.sort();
    Ok(t)
}

/// The prompt of row `i`: one segment per listed block, and the tokens past the last
/// listed block unique to the request.
fn prompt(row: &Row, block: u32, i: usize) -> Prompt {
    let input = row.input_length.max(1);
    let mut segments = Vec::with_capacity(row.hash_ids.len().max(1));
    let mut left = input;
    for &id in &row.hash_ids {
        if left == 0 {
            break;
        }
        let len = left.min(block);
        segments.push(Segment {
            seed: splitmix64(id ^ 0x6d6f_6f6e),
            len,
        });
        left -= len;
    }
    if left > 0 {
        segments.push(Segment {
            seed: splitmix64(0x7461_696c ^ i as u64),
            len: left,
        });
    }
    Prompt { segments }
}

/// The block size the rows were cut with: the power of two that gives the most rows of
/// two blocks or more exactly their number of ids (`⌈input / block⌉`). A row of `n ≥ 2`
/// ids fits at most one power of two, since it needs `input / n ≤ block < input /
/// (n − 1)`. With no such row, [`BLOCK_TOKENS`].
fn block_tokens(rows: &[Row]) -> u32 {
    let mut fits: HashMap<u32, usize> = HashMap::new();
    for row in rows.iter().filter(|r| r.hash_ids.len() >= 2) {
        let (input, n) = (u64::from(row.input_length), row.hash_ids.len() as u64);
        // The smallest power of two at least ⌈input / n⌉ is the only candidate.
        let least = input.div_ceil(n).max(1).next_power_of_two();
        if least <= u64::from(MAX_BLOCK_TOKENS) && input.div_ceil(least) == n {
            *fits.entry(least as u32).or_default() += 1;
        }
    }
    fits.into_iter()
        .max_by_key(|&(block, count)| (count, block))
        .map_or(BLOCK_TOKENS, |(block, _)| block)
}

/// For every chat id that names a parent, the root of its chain: the first turn, or the
/// earliest ancestor the trace names but does not hold (a conversation begun before the
/// trace's window), so all of a conversation's turns share it. A chain that loops ends
/// where it would repeat.
fn chat_roots(rows: &[Row]) -> HashMap<Id, Id> {
    let parent: HashMap<&Id, &Id> = rows
        .iter()
        .filter_map(|r| Some((r.chat_id.as_ref()?, r.parent_chat_id.as_ref()?)))
        .filter(|(_, p)| !p.is_none())
        .collect();
    let mut roots: HashMap<Id, Id> = HashMap::new();
    let mut path = Vec::new();
    for &start in parent.keys() {
        path.clear();
        let mut at = start;
        let root = loop {
            if let Some(root) = roots.get(at) {
                break root.clone();
            }
            match parent.get(at) {
                Some(&up) if path.len() < parent.len() => {
                    path.push(at);
                    at = up;
                }
                _ => break at.clone(),
            }
        };
        for &id in &path {
            roots.insert(id.clone(), root.clone());
        }
    }
    roots
}

/// The row's workload key: its session or conversation id, else its conversation's root
/// chat (only where the trace links turns to their parents), else none.
fn session(row: &Row, roots: &HashMap<Id, Id>) -> Option<u64> {
    let named = [&row.session_id, &row.conversation_id]
        .into_iter()
        .flatten();
    if let Some(id) = named.into_iter().find(|id| !id.is_none()) {
        return Some(id.key("session"));
    }
    row.parent_chat_id.as_ref()?;
    let chat = row.chat_id.as_ref()?;
    Some(roots.get(chat).unwrap_or(chat).key("chat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_shared_segments() {
        let text = r#"{"timestamp": 5, "input_length": 1100, "output_length": 3, "hash_ids": [7, 8, 9]}
{"timestamp": 0, "input_length": 600, "output_length": 0, "hash_ids": [7, 10]}
"#;
        let t = parse_mooncake(text, "t").unwrap();
        assert_eq!(t.requests.len(), 2);
        let (a, b) = (&t.requests[0], &t.requests[1]);
        assert_eq!(a.arrival_us, 0);
        assert_eq!(b.arrival_us, 5000);
        assert_eq!(a.prompt.len(), 600);
        assert_eq!(b.prompt.len(), 1100);
        assert_eq!(
            b.prompt.segments.iter().map(|s| s.len).collect::<Vec<_>>(),
            vec![512, 512, 76]
        );
        assert_eq!(a.output_tokens, 1);
        let (ta, tb) = (a.prompt.tokens(), b.prompt.tokens());
        assert_eq!(ta[..512], tb[..512]);
        assert_ne!(ta[512..600], tb[512..600]);
        assert_eq!((a.session, b.session), (None, None));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = parse_mooncake("{\"timestamp\": 1}\n{oops", "f.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.jsonl:1:"), "{e}");
        assert!(matches!(
            parse_mooncake("\n", "x"),
            Err(TraceError::Empty(_))
        ));
    }

    #[test]
    fn bailian_rows_are_read_in_seconds_with_their_block_size_and_conversations() {
        // Blocks of 16 tokens; a conversation 1 → 2 → 3, a single turn 4, and a turn 6
        // whose parent 5 began before the window, as did its sibling 7.
        let text = r#"{"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.5, "input_length": 40, "output_length": 9, "type": "text", "turn": 1, "hash_ids": [100, 101, 102]}
{"chat_id": 4, "parent_chat_id": -1, "timestamp": 1.0, "input_length": 20, "output_length": 3, "hash_ids": [100, 200]}
{"chat_id": 2, "parent_chat_id": 1, "timestamp": 2.25, "input_length": 70, "output_length": 4, "hash_ids": [100, 101, 102, 103, 104]}
{"chat_id": 3, "parent_chat_id": 2, "timestamp": 3.0, "input_length": 90, "output_length": 4, "hash_ids": [100, 101, 102, 103, 104, 105]}
{"chat_id": 6, "parent_chat_id": 5, "timestamp": 4.0, "input_length": 33, "output_length": 4, "hash_ids": [300, 301, 302]}
{"chat_id": 7, "parent_chat_id": 5, "timestamp": 5.0, "input_length": 16, "output_length": 4, "hash_ids": [300]}
"#;
        let t = parse_mooncake(text, "b.jsonl").unwrap();
        assert_eq!(t.name, "bailian");
        let arrivals: Vec<u64> = t.requests.iter().map(|r| r.arrival_us).collect();
        assert_eq!(
            arrivals,
            [500_000, 1_000_000, 2_250_000, 3_000_000, 4_000_000, 5_000_000]
        );
        let lens = |i: usize| -> Vec<u32> {
            t.requests[i]
                .prompt
                .segments
                .iter()
                .map(|s| s.len)
                .collect()
        };
        assert_eq!(lens(0), [16, 16, 8]);
        assert_eq!(lens(3), [16, 16, 16, 16, 16, 10]);
        // A later turn repeats its conversation's blocks token for token.
        let (first, third) = (t.requests[0].prompt.tokens(), t.requests[3].prompt.tokens());
        assert_eq!(first[..32], third[..32]);
        let key = |i: usize| t.requests[i].session.expect("every turn keyed");
        assert_eq!(key(0), key(2));
        assert_eq!(key(0), key(3));
        assert_ne!(key(0), key(1));
        assert_eq!(key(4), key(5));
        assert_ne!(key(4), key(0));
        assert_ne!(key(4), key(1));
    }

    #[test]
    fn explicit_session_ids_are_keys_and_mooncake_rows_stay_unkeyed() {
        let text = r#"{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [1, 2], "session_id": "alice"}
{"timestamp": 1, "input_length": 600, "output_length": 2, "hash_ids": [1, 3], "session": "bob"}
{"timestamp": 2, "input_length": 900, "output_length": 2, "hash_ids": [1, 2], "session_id": "alice"}
{"timestamp": 3, "input_length": 900, "output_length": 2, "hash_ids": [1, 2], "conv_id": 12}
{"timestamp": 4, "input_length": 900, "output_length": 2, "hash_ids": [1, 2], "chat_id": 12}
"#;
        let t = parse_mooncake(text, "s.jsonl").unwrap();
        assert_eq!(t.name, "mooncake");
        // Milliseconds and Mooncake's 512-token blocks.
        assert_eq!(t.requests[1].arrival_us, 1000);
        assert_eq!(t.requests[0].prompt.segments[0].len, 512);
        let s: Vec<Option<u64>> = t.requests.iter().map(|r| r.session).collect();
        assert!(s[..4].iter().all(Option::is_some));
        assert_eq!(s[0], s[2]);
        assert_ne!(s[0], s[1]);
        assert_ne!(s[3], s[0]);
        // A chat id with no parent field says nothing about conversations.
        assert_eq!(s[4], None);
    }

    #[test]
    fn a_block_size_is_what_most_rows_were_cut_with() {
        let row = |input: u32, n: u64| {
            format!(
                r#"{{"timestamp": 0, "input_length": {input}, "output_length": 1, "hash_ids": {:?}}}"#,
                (0..n).collect::<Vec<u64>>()
            )
        };
        let block = |rows: &[String]| {
            let t = parse_mooncake(&rows.join("\n"), "x").unwrap();
            t.requests[0].prompt.segments[0].len
        };
        assert_eq!(block(&[row(1000, 16), row(100, 2)]), 64);
        assert_eq!(block(&[row(4000, 250), row(17, 2)]), 16);
        // One stray row does not outvote the rest; rows of one block show nothing.
        assert_eq!(block(&[row(1000, 4), row(1000, 16), row(900, 15)]), 64);
        assert_eq!(block(&[row(10, 1), row(3, 1)]), 10);
        // Ids that fit no power of two: Mooncake's size, as before.
        assert_eq!(block(&[row(1000, 3), row(10, 7)]), 512);
    }

    #[test]
    fn a_loop_of_parents_ends_and_a_bad_time_names_its_line() {
        let text = r#"{"chat_id": 1, "parent_chat_id": 2, "timestamp": 0, "input_length": 5, "output_length": 1}
{"chat_id": 2, "parent_chat_id": 1, "timestamp": 1, "input_length": 5, "output_length": 1}
"#;
        let t = parse_mooncake(text, "l").unwrap();
        assert!(t.requests.iter().all(|r| r.session.is_some()));
        let e = parse_mooncake(
            "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1}\n{\"timestamp\": -2, \"input_length\": 1, \"output_length\": 1}",
            "neg.jsonl",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("neg.jsonl:2: timestamp -2"), "{e}");
    }

    #[test]
    fn reads_the_shared_trace() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/traces/mooncake_synthetic.jsonl");
        if !p.exists() {
            eprintln!("skipping: {} not present", p.display());
            return;
        }
        let t = read_mooncake(&p).unwrap();
        assert_eq!(t.requests.len(), 3993);
        let avg = t
            .requests
            .iter()
            .map(|r| f64::from(r.prompt.len()))
            .sum::<f64>()
            / 3993.0;
        assert!((14_000.0..17_000.0).contains(&avg), "{avg}");
    }
}
