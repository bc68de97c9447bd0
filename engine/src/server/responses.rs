//! The Responses API's bodies and events, as OpenAI's client reads them: one message
//! item with one `output_text` part. A stream opens with `response.created`,
//! `response.in_progress`, the item and the part; each token is an
//! `response.output_text.delta`; it closes with the text, part and item done and
//! `response.completed` (its status `incomplete` when `max_output_tokens` cut it),
//! which carries the usage. Sequence numbers follow from the token index alone.

use serde_json::{json, Value};

use crate::core::{FinishReason, Usage};

/// Events before the first delta.
const OPENING_EVENTS: u32 = 4;

/// The fixed parts of one response: its ids, time and model.
pub(super) struct ResponseHead {
    pub id: String,
    pub item_id: String,
    pub created_at: u64,
    pub model: String,
}

impl ResponseHead {
    /// The response object: `in_progress` with no output (no `end`), or finished.
    pub fn object(&self, end: Option<(&str, FinishReason, Usage)>) -> Value {
        let (status, output, usage, incomplete) = match end {
            None => ("in_progress", json!([]), Value::Null, Value::Null),
            Some((text, reason, u)) => (
                status(reason),
                json!([self.item(Some(text))]),
                json!({
                    "input_tokens": u.prompt_tokens,
                    "input_tokens_details": {"cached_tokens": u.cached_tokens},
                    "output_tokens": u.completion_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": u.prompt_tokens + u.completion_tokens,
                }),
                match reason {
                    FinishReason::Length => json!({"reason": "max_output_tokens"}),
                    FinishReason::Stop => Value::Null,
                },
            ),
        };
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": null, "incomplete_details": incomplete,
            "instructions": null, "metadata": {}, "model": self.model,
            "output": output, "parallel_tool_calls": true, "temperature": 1.0,
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "usage": usage,
        })
    }

    /// The message item, with its text once it is done.
    fn item(&self, text: Option<&str>) -> Value {
        let (status, content) = match text {
            None => ("in_progress", json!([])),
            Some(t) => ("completed", json!([part(t)])),
        };
        json!({"id": self.item_id, "type": "message", "status": status,
            "role": "assistant", "content": content})
    }

    /// The non-streaming body.
    pub fn full_body(&self, text: &str, reason: FinishReason, usage: Usage) -> String {
        self.object(Some((text, reason, usage))).to_string()
    }

    /// The events before the first token.
    pub fn opening(&self, out: &mut Vec<u8>) {
        let started = self.object(None);
        event(out, "response.created", 0, json!({"response": started}));
        event(out, "response.in_progress", 1, json!({"response": started}));
        event(
            out,
            "response.output_item.added",
            2,
            json!({"output_index": 0, "item": self.item(None)}),
        );
        event(
            out,
            "response.content_part.added",
            3,
            json!({"output_index": 0, "content_index": 0, "item_id": self.item_id,
                "part": part("")}),
        );
    }

    /// Token `index`'s delta (words are plain ASCII: written as they are).
    pub fn delta(&self, out: &mut Vec<u8>, index: u32, word: &str) {
        out.extend_from_slice(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":");
        out.extend_from_slice((OPENING_EVENTS + index).to_string().as_bytes());
        out.extend_from_slice(b",\"item_id\":\"");
        out.extend_from_slice(self.item_id.as_bytes());
        out.extend_from_slice(b"\",\"output_index\":0,\"content_index\":0,\"delta\":\"");
        out.extend_from_slice(word.as_bytes());
        out.extend_from_slice(b"\",\"logprobs\":[]}\n\n");
    }

    /// The events after the last of `tokens` tokens: the whole `text`, the part, the
    /// item, and the finished response with its usage.
    pub fn closing(
        &self,
        out: &mut Vec<u8>,
        tokens: u32,
        text: &str,
        reason: FinishReason,
        usage: Usage,
    ) {
        let seq = OPENING_EVENTS + tokens;
        let at = json!({"output_index": 0, "content_index": 0, "item_id": self.item_id});
        let with = |extra: Value| {
            let mut v = at.clone();
            if let (Value::Object(v), Value::Object(e)) = (&mut v, extra) {
                v.extend(e);
            }
            v
        };
        event(
            out,
            "response.output_text.done",
            seq,
            with(json!({"text": text, "logprobs": []})),
        );
        event(
            out,
            "response.content_part.done",
            seq + 1,
            with(json!({"part": part(text)})),
        );
        event(
            out,
            "response.output_item.done",
            seq + 2,
            json!({"output_index": 0, "item": self.item(Some(text))}),
        );
        // As vLLM: `response.completed` however it ended (an incomplete one says so in
        // its status), which is the event OpenAI's stream helper waits for.
        event(
            out,
            "response.completed",
            seq + 3,
            json!({"response": self.object(Some((text, reason, usage)))}),
        );
    }
}

/// The sequence number of the event after `sent` tokens' deltas (the opening events
/// are sent with the first token).
pub(super) fn next_sequence_number(sent: u32) -> u32 {
    if sent == 0 {
        0
    } else {
        OPENING_EVENTS + sent
    }
}

fn status(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "completed",
        FinishReason::Length => "incomplete",
    }
}

fn part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// One server-sent event: its name, and its data with `type` and `sequence_number`.
fn event(out: &mut Vec<u8>, kind: &str, seq: u32, mut data: Value) {
    if let Value::Object(m) = &mut data {
        m.insert("type".to_owned(), kind.into());
        m.insert("sequence_number".to_owned(), seq.into());
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}
