//! Reads an OpenAI SSE stream as it passes through, without changing it: counts the
//! token chunks (for in-flight cost correction) and picks up the final usage.

use serde::Deserialize;
use sluice_actors::router::Usage;

/// Longest event we buffer while looking for its end; past that the meter stops
/// counting rather than grow without bound (the bytes still flow to the client).
const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseMeter {
    pending: Vec<u8>,
    /// Chunks that carried generated output.
    pub tokens: u32,
    pub usage: Option<Usage>,
    pub done: bool,
    pub error: bool,
    overflowed: bool,
}

#[derive(Deserialize)]
struct UsageChunk {
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
pub struct UsageJson {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: u32,
}

impl UsageJson {
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .map_or(0, |d| d.cached_tokens),
        }
    }
}

/// Usage from a complete (non-streaming) response body, if it has one.
pub fn body_usage(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<UsageChunk>(body)
        .ok()?
        .usage
        .map(|u| u.usage())
}

impl SseMeter {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        let mut rest = chunk;
        while let Some(pos) = find_event_end(&self.pending, rest) {
            // `pos` indexes into pending ++ rest; the event ends before the blank line.
            let take = pos + 2 - self.pending.len();
            self.pending.extend_from_slice(&rest[..take]);
            let event = std::mem::take(&mut self.pending);
            self.on_event(&event[..event.len() - 2]);
            rest = &rest[take..];
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_EVENT_BYTES {
            self.overflowed = true;
            self.pending = Vec::new();
        }
    }

    fn on_event(&mut self, event: &[u8]) {
        for line in event.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            let data = data.strip_suffix(b"\r").unwrap_or(data);
            if data == b"[DONE]" {
                self.done = true;
            } else if data.starts_with(b"{\"error\"") {
                self.error = true;
            } else {
                if contains(data, b"\"usage\"") {
                    if let Some(u) = serde_json::from_slice::<UsageChunk>(data)
                        .ok()
                        .and_then(|c| c.usage)
                    {
                        self.usage = Some(u.usage());
                    }
                }
                if !contains(data, b"\"choices\":[]") {
                    self.tokens += 1;
                }
            }
        }
    }
}

/// Index (into `pending ++ rest`) of the first "\n\n", if any.
fn find_event_end(pending: &[u8], rest: &[u8]) -> Option<usize> {
    if pending.last() == Some(&b'\n') && rest.first() == Some(&b'\n') {
        return Some(pending.len() - 1);
    }
    rest.windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| pending.len() + p)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\" a\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" b\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9,",
        "\"prompt_tokens_details\":{\"cached_tokens\":3}}}\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn counts_tokens_and_reads_usage_however_the_bytes_are_split() {
        for split in 1..STREAM.len() {
            let mut m = SseMeter::default();
            for piece in STREAM.as_bytes().chunks(split) {
                m.feed(piece);
            }
            assert_eq!(m.tokens, 2, "split {split}");
            assert!(m.done);
            assert_eq!(
                m.usage,
                Some(Usage {
                    prompt_tokens: 7,
                    completion_tokens: 2,
                    cached_tokens: 3
                })
            );
        }
    }

    #[test]
    fn notices_error_events() {
        let mut m = SseMeter::default();
        m.feed(b"data: {\"error\":{\"message\":\"x\"}}\n\n");
        assert!(m.error && !m.done && m.tokens == 0);
    }

    #[test]
    fn reads_usage_of_a_whole_body() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
        assert_eq!(
            body_usage(body),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 1,
                cached_tokens: 0
            })
        );
        assert_eq!(body_usage(b"not json"), None);
    }
}
