//! Mooncake's FAST'25 trace (kvcache-ai/Mooncake, `FAST25-release/traces`), one JSON
//! object a line: `timestamp` (ms), `input_length`, `output_length`, `hash_ids` (one id
//! per 512-token prompt block; equal ids are equal blocks, chained from the start).

use super::error::TraceError;
use super::request::{splitmix64, Prompt, Segment, Trace, TraceRequest};
use serde::Deserialize;
use std::path::Path;

/// Tokens per Mooncake block id.
pub const BLOCK_TOKENS: u32 = 512;

#[derive(Deserialize)]
struct Row {
    timestamp: u64,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
}

pub fn read_mooncake(path: &Path) -> Result<Trace, TraceError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_mooncake(&text, &shown)
}

/// Each block id seeds its 512 tokens, so equal ids give equal token blocks; the last
/// block is sized by `input_length`. The trace has no session ids, so requests carry no
/// workload key.
pub fn parse_mooncake(text: &str, origin: &str) -> Result<Trace, TraceError> {
    let mut requests = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line).map_err(|e| TraceError::Parse {
            path: origin.to_owned(),
            line: i + 1,
            message: e.to_string(),
        })?;
        let input = row.input_length.max(1);
        let mut segments = Vec::with_capacity(row.hash_ids.len().max(1));
        let mut left = input;
        for &id in &row.hash_ids {
            if left == 0 {
                break;
            }
            let len = left.min(BLOCK_TOKENS);
            segments.push(Segment {
                seed: splitmix64(id ^ 0x6d6f_6f6e),
                len,
            });
            left -= len;
        }
        if left > 0 {
            // More tokens than blocks listed: the rest is unique to this request.
            segments.push(Segment {
                seed: splitmix64(0x7461_696c ^ i as u64),
                len: left,
            });
        }
        requests.push(TraceRequest {
            arrival_us: row.timestamp * 1000,
            // The trace names no session: none is invented from its blocks.
            session: None,
            prompt: Prompt { segments },
            output_tokens: row.output_length.max(1),
        });
    }
    if requests.is_empty() {
        return Err(TraceError::Empty(origin.to_owned()));
    }
    let mut t = Trace {
        name: "mooncake".into(),
        requests,
    };
    t.sort();
    Ok(t)
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
