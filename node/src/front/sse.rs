//! Reads an OpenAI SSE stream as it passes through: counts the generated tokens (for
//! in-flight cost correction) and picks up the final usage. The front door always asks
//! the engine for that usage; when the client did not, the usage event is taken out of
//! the client's stream, which is otherwise passed on unchanged.

use serde::Deserialize;
use sluice_actors::router::Usage;

/// Longest event we buffer while looking for its end; past that the meter stops
/// counting rather than grow without bound (the bytes still flow to the client).
const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseMeter {
    pending: Vec<u8>,
    /// Generated tokens so far: the engine's own count when a chunk carries usage,
    /// else the chunks that carried output (a role-only or empty chunk is no token).
    pub tokens: u32,
    pub usage: Option<Usage>,
    pub done: bool,
    pub error: bool,
    overflowed: bool,
    /// Take usage-only events out of the stream passed on (the client did not ask).
    strip_usage: bool,
    /// The events to pass on, when stripping.
    out: Vec<u8>,
}

#[derive(Deserialize)]
struct UsageChunk {
    usage: Option<UsageJson>,
}

/// Just enough of a chunk to tell whether it carried output.
#[derive(Deserialize)]
struct OutputChunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceJson<'a>>,
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct ChoiceJson<'a> {
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaJson<'a>>,
}

#[derive(Deserialize)]
struct DeltaJson<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
}

impl ChoiceJson<'_> {
    fn has_output(&self) -> bool {
        let some =
            |t: &Option<std::borrow::Cow<'_, str>>| t.as_ref().is_some_and(|t| !t.is_empty());
        some(&self.text)
            || self.delta.as_ref().is_some_and(|d| {
                some(&d.content) || some(&d.reasoning_content) || d.tool_calls.is_some()
            })
    }
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

/// Usage from a complete (non-streaming) response body, if it has one. Engines put
/// `usage` last, so its value is read where the key last occurs rather than by parsing
/// the whole answer; a body where that finds nothing is parsed whole.
pub fn body_usage(body: &[u8]) -> Option<Usage> {
    usage_at_last_key(body).or_else(|| {
        serde_json::from_slice::<UsageChunk>(body)
            .ok()?
            .usage
            .map(|u| u.usage())
    })
}

/// The value of the last `"usage":` in `body`. Inside a JSON string a quote is escaped,
/// so an unescaped `"usage"` followed by a colon is an object key.
fn usage_at_last_key(body: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let at = body.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = body[at + KEY.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?;
    serde_json::Deserializer::from_slice(rest)
        .into_iter::<Option<UsageJson>>()
        .next()?
        .ok()?
        .map(|u| u.usage())
}

impl SseMeter {
    /// A meter that takes usage-only events out of what it passes on.
    pub fn stripping_usage() -> Self {
        Self {
            strip_usage: true,
            ..Self::default()
        }
    }

    /// Meters `chunk` and returns what to pass on: `chunk` itself, or, when stripping
    /// usage, the complete events seen so far minus the usage-only ones.
    pub fn pass(&mut self, chunk: bytes::Bytes) -> bytes::Bytes {
        self.feed(&chunk);
        if self.strip_usage && !self.overflowed {
            bytes::Bytes::from(std::mem::take(&mut self.out))
        } else {
            chunk
        }
    }

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
            // What was held back goes on as it came.
            if self.strip_usage {
                let held = std::mem::take(&mut self.pending);
                self.out.extend_from_slice(&held);
            }
            self.pending = Vec::new();
        }
    }

    fn on_event(&mut self, event: &[u8]) {
        let mut usage_only = false;
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
            } else if let Ok(c) = serde_json::from_slice::<OutputChunk>(data) {
                let outputs = c.choices.iter().filter(|ch| ch.has_output()).count() as u32;
                match &c.usage {
                    Some(u) => {
                        let u = u.usage();
                        // The engine's own count (continuous usage, or the final one).
                        self.tokens = self.tokens.max(u.completion_tokens);
                        self.usage = Some(u);
                        usage_only = c.choices.is_empty();
                    }
                    None => self.tokens += outputs,
                }
            }
        }
        if self.strip_usage && !usage_only {
            self.out.extend_from_slice(event);
            self.out.extend_from_slice(b"\n\n");
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
    fn role_and_empty_chunks_are_no_tokens_and_usage_can_be_stripped() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\" a\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"text\":\" b\"},{\"text\":\" c\"}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3}}\n\n",
            "data: [DONE]\n\n"
        );
        for split in [1, 7, 40, stream.len()] {
            let mut m = SseMeter::stripping_usage();
            let mut passed = Vec::new();
            for piece in stream.as_bytes().chunks(split) {
                passed.extend_from_slice(&m.pass(bytes::Bytes::copy_from_slice(piece)));
            }
            let passed = String::from_utf8(passed).unwrap();
            assert_eq!(
                m.usage.map(|u| u.completion_tokens),
                Some(3),
                "split {split}"
            );
            assert_eq!(m.tokens, 3);
            assert!(m.done);
            assert!(!passed.contains("prompt_tokens"), "{passed}");
            assert_eq!(passed, stream.replace(
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3}}\n\n", ""));
        }
        // Without stripping, the bytes pass as they are.
        let mut m = SseMeter::default();
        let b = bytes::Bytes::from_static(stream.as_bytes());
        assert_eq!(m.pass(b.clone()), b);
        assert_eq!(m.tokens, 3);
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
        // Usage first, a `usage` key inside the text, null usage: all read right.
        let first = br#"{"usage":{"prompt_tokens":2,"completion_tokens":3},"choices":[{"text":"say \"usage\": {}"}]}"#;
        assert_eq!(body_usage(first).map(|u| u.completion_tokens), Some(3));
        assert_eq!(body_usage(br#"{"choices":[],"usage":null}"#), None);
        assert_eq!(
            body_usage(br#"{"choices":[],"usage": {"completion_tokens":4}}"#)
                .map(|u| u.completion_tokens),
            Some(4)
        );
    }
}
