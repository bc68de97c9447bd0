//! Reads an OpenAI SSE stream as it passes through: counts the generated tokens (for
//! in-flight cost correction), picks up the final usage, and keeps the text the client
//! has received (so that the answer can be continued elsewhere if its replica fails).
//! The front door always asks the engine for that usage; when the client did not, the
//! usage event is taken out of the client's stream. Only whole events are passed on, so
//! that a stream broken mid-event never leaves half an event with the client.

use super::splice::Splice;
use serde::Deserialize;
use sluice_actors::router::Usage;
use sluice_engine::continuation::Received;
use sluice_engine::openai::Endpoint;
use std::borrow::Cow;

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
    /// The output text of the first choice passed on so far.
    pub text: String,
    /// The stream's `id` and `created`, from its first chunk.
    pub id: Option<String>,
    pub created: Option<u64>,
    /// A choice has finished (a `finish_reason` was passed on).
    pub finished: bool,
    /// What was passed on cannot be continued as text: tool calls, reasoning, or an
    /// event too long to read.
    pub opaque: bool,
    overflowed: bool,
    /// Take usage-only events out of the stream passed on (the client did not ask).
    strip_usage: bool,
    /// Rewrites a continuation's events to read as the first attempt's.
    splice: Option<Splice>,
    /// Collect the events to pass on in `out` (else the chunk is passed as it came).
    emit: bool,
    /// The events to pass on.
    out: Vec<u8>,
    /// The stream is the Responses API's (named events, usage in the last one).
    responses: bool,
    /// The sequence number after the last Responses event seen.
    pub next_sequence: u32,
}

/// A Responses API event: its type, and what of it the meter reads.
#[derive(Deserialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    sequence_number: Option<u32>,
    #[serde(default, borrow)]
    delta: Option<Cow<'a, str>>,
    #[serde(default)]
    response: Option<ResponseJson>,
    #[serde(default)]
    item: Option<ItemJson>,
}

#[derive(Deserialize)]
struct ResponseJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created_at: Option<u64>,
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct ItemJson {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct UsageChunk {
    usage: Option<UsageJson>,
}

/// Just enough of a chunk to tell whether it carried output, and which.
#[derive(Deserialize)]
struct OutputChunk<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default, borrow)]
    choices: Vec<ChoiceJson<'a>>,
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct ChoiceJson<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<DeltaJson<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaJson<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
}

fn some(t: &Option<Cow<'_, str>>) -> bool {
    t.as_ref().is_some_and(|t| !t.is_empty())
}

impl ChoiceJson<'_> {
    fn has_output(&self) -> bool {
        self.content().is_some() || self.delta.as_ref().is_some_and(DeltaJson::is_opaque)
    }

    /// The text this chunk adds to the choice's answer.
    fn content(&self) -> Option<&str> {
        let delta = self.delta.as_ref().and_then(|d| d.content.as_deref());
        self.text.as_deref().or(delta).filter(|t| !t.is_empty())
    }
}

impl DeltaJson<'_> {
    /// Output that is not the answer's text.
    fn is_opaque(&self) -> bool {
        some(&self.reasoning_content) || self.tool_calls.is_some()
    }
}

/// Usage as chat, completions and embeddings report it, or as the Responses API names
/// the same counts.
#[derive(Deserialize)]
pub struct UsageJson {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u32,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u32,
    #[serde(default, alias = "input_tokens_details")]
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
    /// What the client has received so far, as a continuation is planned from it.
    pub fn received(&self) -> Received<'_> {
        Received {
            text: &self.text,
            tokens: self.tokens,
            finished: self.finished,
            opaque: self.opaque,
        }
    }

    /// The meter of a stream of `endpoint`, taking usage-only events out of what it
    /// passes on when `strip_usage`.
    pub fn new(endpoint: Endpoint, strip_usage: bool) -> Self {
        Self {
            strip_usage,
            responses: endpoint == Endpoint::Responses,
            ..Self::default()
        }
    }

    /// A meter of chat or completions that takes usage-only events out.
    #[cfg(test)]
    pub fn stripping_usage() -> Self {
        Self::new(Endpoint::Chat, true)
    }

    /// From now on, the stream is a continuation of what was passed on so far: its
    /// events are rewritten to read as the first attempt's (what was held back of the
    /// broken stream is dropped).
    pub fn splice(&mut self) {
        self.pending.clear();
        self.done = false;
        self.error = false;
        // Nothing reached the client yet: the new stream is the answer as it comes.
        if self.id.is_some() {
            self.splice = Some(Splice::new(self.id.clone(), self.created, self.tokens));
        }
    }

    /// Meters `chunk` and returns what to pass on: the whole events seen so far (minus
    /// usage-only ones when stripping, rewritten when splicing), which is `chunk` itself
    /// when it is whole events and nothing is rewritten.
    pub fn pass(&mut self, chunk: bytes::Bytes) -> bytes::Bytes {
        if self.overflowed {
            return chunk;
        }
        let whole = self.pending.is_empty()
            && chunk.ends_with(b"\n\n")
            && !self.strip_usage
            && self.splice.is_none();
        self.emit = !whole;
        self.feed(&chunk);
        if whole {
            chunk
        } else {
            bytes::Bytes::from(std::mem::take(&mut self.out))
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
            self.opaque = true;
            // What was held back goes on as it came.
            if self.emit {
                let held = std::mem::take(&mut self.pending);
                self.out.extend_from_slice(&held);
            }
            self.pending = Vec::new();
        }
    }

    fn on_event(&mut self, event: &[u8]) {
        let rewritten;
        let event = match &mut self.splice {
            None => event,
            Some(s) => match s.event(event) {
                Some(e) => {
                    rewritten = e;
                    &rewritten[..]
                }
                None => return,
            },
        };
        let mut usage_only = false;
        for line in event.split(|&b| b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            let data = data.strip_suffix(b"\r").unwrap_or(data);
            if self.responses {
                self.on_response_event(data);
            } else if data == b"[DONE]" {
                self.done = true;
            } else if data.starts_with(b"{\"error\"") {
                self.error = true;
            } else if let Ok(c) = serde_json::from_slice::<OutputChunk>(data) {
                if self.id.is_none() {
                    self.id = c.id.as_deref().map(str::to_owned);
                    self.created = c.created;
                }
                for ch in &c.choices {
                    self.finished |= ch.finish_reason.is_some();
                    self.opaque |= ch.delta.as_ref().is_some_and(DeltaJson::is_opaque);
                    if ch.index == 0 {
                        if let Some(t) = ch.content() {
                            self.text.push_str(t);
                        }
                    }
                }
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
        if self.emit && !(self.strip_usage && usage_only) {
            self.out.extend_from_slice(event);
            self.out.extend_from_slice(b"\n\n");
        }
    }
}

impl SseMeter {
    /// Reads one Responses API event: the answer's text as it grows, and its end with
    /// the usage (`response.completed`, or `response.incomplete` when cut at its limit).
    fn on_response_event(&mut self, data: &[u8]) {
        let Ok(e) = serde_json::from_slice::<ResponseEvent>(data) else {
            return;
        };
        if let Some(n) = e.sequence_number {
            self.next_sequence = self.next_sequence.max(n.saturating_add(1));
        }
        match &*e.kind {
            "response.created" => {
                if let Some(r) = &e.response {
                    self.id.clone_from(&r.id);
                    self.created = r.created_at;
                }
            }
            "response.output_text.delta" => {
                if let Some(d) = e.delta.as_deref().filter(|d| !d.is_empty()) {
                    // An engine may put several tokens in one delta: the final usage
                    // corrects the count.
                    self.tokens += 1;
                    self.text.push_str(d);
                }
            }
            "response.output_item.added" => {
                // Tool calls and reasoning are output that is not the answer's text.
                self.opaque |= e
                    .item
                    .as_ref()
                    .and_then(|i| i.kind.as_deref())
                    .is_some_and(|k| k != "message");
            }
            "response.completed" | "response.incomplete" => {
                self.done = true;
                self.finished = true;
                if let Some(u) = e.response.as_ref().and_then(|r| r.usage.as_ref()) {
                    let u = u.usage();
                    self.tokens = self.tokens.max(u.completion_tokens);
                    self.usage = Some(u);
                }
            }
            "response.failed" | "error" => self.error = true,
            _ => {}
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

    /// A Responses API stream as vLLM writes it: one delta may hold several tokens,
    /// and the usage is in the last event, under the Responses API's names.
    const RESPONSE_STREAM: &str = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,",
        "\"response\":{\"id\":\"resp_1\",\"created_at\":77,\"usage\":null}}\n\n",
        "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",",
        "\"sequence_number\":1,\"item\":{\"type\":\"message\"}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",",
        "\"sequence_number\":2,\"delta\":\" a \\\"b\\\"\"}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",",
        "\"sequence_number\":3,\"delta\":\" c\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":4,",
        "\"response\":{\"id\":\"resp_1\",\"status\":\"incomplete\",\"usage\":{\"input_tokens\":9,",
        "\"input_tokens_details\":{\"cached_tokens\":4},\"output_tokens\":3,\"total_tokens\":12}}}\n\n",
    );

    #[test]
    fn reads_a_responses_stream_however_the_bytes_are_split() {
        for split in 1..RESPONSE_STREAM.len() {
            let mut m = SseMeter::new(Endpoint::Responses, false);
            let mut passed = Vec::new();
            for piece in RESPONSE_STREAM.as_bytes().chunks(split) {
                passed.extend_from_slice(&m.pass(bytes::Bytes::copy_from_slice(piece)));
            }
            assert_eq!(passed, RESPONSE_STREAM.as_bytes(), "split {split}");
            assert!(
                m.done && m.finished && !m.opaque && !m.error,
                "split {split}"
            );
            assert_eq!(m.text, " a \"b\" c");
            assert_eq!((m.id.as_deref(), m.created), (Some("resp_1"), Some(77)));
            // The engine's count, not the deltas'.
            assert_eq!(m.tokens, 3);
            assert_eq!(
                m.usage,
                Some(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 3,
                    cached_tokens: 4
                })
            );
            assert_eq!(m.next_sequence, 5);
        }
    }

    #[test]
    fn a_responses_stream_with_a_tool_call_or_an_error_is_told_apart() {
        let mut tool = SseMeter::new(Endpoint::Responses, false);
        tool.feed(b"data: {\"type\":\"response.output_item.added\",\"item\":{\"type\":\"function_call\"}}\n\n");
        assert!(tool.opaque && !tool.done);
        let mut failed = SseMeter::new(Endpoint::Responses, false);
        failed.feed(
            b"event: error\ndata: {\"type\":\"error\",\"message\":\"x\",\"sequence_number\":6}\n\n",
        );
        assert!(failed.error && !failed.done && failed.next_sequence == 7);
        // Chat's `[DONE]` means nothing in a Responses stream.
        let mut m = SseMeter::new(Endpoint::Responses, false);
        m.feed(b"data: [DONE]\n\n");
        assert!(!m.done);
    }

    #[test]
    fn reads_usage_of_whole_responses_and_embeddings() {
        let response = br#"{"id":"resp_1","output":[{"content":[{"text":"usage"}]}],"usage":{"input_tokens":20,"input_tokens_details":{"cached_tokens":16},"output_tokens":8,"total_tokens":28},"user":null}"#;
        assert_eq!(
            body_usage(response),
            Some(Usage {
                prompt_tokens: 20,
                completion_tokens: 8,
                cached_tokens: 16
            })
        );
        let embeddings = br#"{"data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":6,"total_tokens":6,"completion_tokens":0,"prompt_tokens_details":null}}"#;
        assert_eq!(
            body_usage(embeddings),
            Some(Usage {
                prompt_tokens: 6,
                completion_tokens: 0,
                cached_tokens: 0
            })
        );
    }

    #[test]
    fn only_whole_events_are_passed_on_and_the_text_is_kept() {
        let stream = concat!(
            "data: {\"id\":\"c-1\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
            "data: {\"id\":\"c-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
        );
        for split in [1, 9, stream.len()] {
            let mut m = SseMeter::default();
            let mut passed = Vec::new();
            for piece in stream.as_bytes().chunks(split) {
                let out = m.pass(bytes::Bytes::copy_from_slice(piece));
                // Whatever is passed on ends an event.
                assert!(out.is_empty() || out.ends_with(b"\n\n"), "split {split}");
                passed.extend_from_slice(&out);
            }
            assert_eq!(passed, stream.as_bytes());
            assert_eq!(
                (m.text.as_str(), m.id.as_deref(), m.created),
                ("Hello", Some("c-1"), Some(5))
            );
            assert!(!m.finished && !m.opaque);
        }
        let mut m = SseMeter::default();
        m.feed(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n",
        );
        assert!(m.opaque);
        m.feed(b"data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n");
        assert!(m.finished);
    }

    #[test]
    fn a_continuation_reads_as_the_first_attempt() {
        let mut m = SseMeter::default();
        m.pass(bytes::Bytes::from_static(concat!(
            "data: {\"id\":\"c-1\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c-1\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"content\":\" a\"}}]}\n\n",
            "data: {\"id\":\"c-1\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"content\":\" b\"}}]}\n\n",
            "data: {\"id\":\"c-1\",\"created\":5,\"choices\":[{\"index\":0,\"delta\":{\"con",
        ).as_bytes()));
        assert_eq!((m.tokens, m.text.as_str()), (2, " a b"));
        // The half event of the broken stream is dropped; the new stream is spliced in.
        m.splice();
        let out = m.pass(bytes::Bytes::from_static(concat!(
            "data: {\"id\":\"other\",\"created\":9,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"other\",\"created\":9,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" c\"}}]}\n\n",
            "data: {\"id\":\"other\",\"created\":9,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"id\":\"other\",\"created\":9,\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"total_tokens\":13,",
            "\"prompt_tokens_details\":{\"cached_tokens\":11}}}\n\n",
            "data: [DONE]\n\n",
        ).as_bytes()));
        let out = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "the bare role chunk is dropped: {out}");
        assert!(
            !out.contains("other") && !out.contains("role") && !out.contains(":9"),
            "{out}"
        );
        let chunk = |i: usize| -> serde_json::Value {
            serde_json::from_str(events[i].strip_prefix("data: ").unwrap()).unwrap()
        };
        assert_eq!(chunk(0)["choices"][0]["delta"]["content"], " c");
        assert_eq!(
            (chunk(0)["id"].clone(), chunk(0)["created"].clone()),
            ("c-1".into(), 5.into())
        );
        let usage = &chunk(2)["usage"];
        assert_eq!(
            (
                usage["prompt_tokens"].clone(),
                usage["completion_tokens"].clone(),
                usage["total_tokens"].clone()
            ),
            (10.into(), 3.into(), 13.into())
        );
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 10);
        assert_eq!(events[3], "data: [DONE]");
        assert!(m.done && m.finished);
        assert_eq!((m.tokens, m.text.as_str()), (3, " a b c"));
        assert_eq!(
            m.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((10, 3))
        );
    }
}
