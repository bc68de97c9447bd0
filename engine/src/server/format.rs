//! The OpenAI response bodies, written by hand rather than through serde: one chunk per
//! token is the streaming hot path.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Shared;
use crate::core::{FinishReason, Usage};
use crate::openai::Endpoint;
use crate::words::{mix64, output_word};

/// The id a request's answers carry after `x-request-id`, as vLLM names its answers
/// `chatcmpl-<X-Request-Id>`: only an id safe in hand-written JSON as it is (letters,
/// digits and `-_.:/+=@`, at most 200 characters) is taken.
pub(super) fn named_id(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get("x-request-id")?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 200
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b));
    ok.then(|| v.to_owned())
}

/// `{"id":…,"object":…,"created":…,"model":…,"choices":` — the common head of every
/// response object of a request; its id is `named` (see [`named_id`]) when given.
pub(super) fn response_head(
    s: &Shared,
    endpoint: Endpoint,
    n: u64,
    stream: bool,
    named: Option<&str>,
) -> String {
    let (prefix, object) = match (endpoint, stream) {
        (Endpoint::Chat, true) => ("chatcmpl", "chat.completion.chunk"),
        (Endpoint::Chat, false) => ("chatcmpl", "chat.completion"),
        (Endpoint::Completion, _) => ("cmpl", "text_completion"),
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(s.created);
    let mut head = String::with_capacity(96 + s.model_json.len());
    let _ = match named {
        Some(id) => write!(head, "{{\"id\":\"{prefix}-{id}\","),
        None => write!(
            head,
            "{{\"id\":\"{prefix}-{:016x}{:08x}\",",
            mix64(s.seed ^ n),
            n & 0xffff_ffff
        ),
    };
    let _ = write!(
        head,
        "\"object\":\"{object}\",\"created\":{created},\"model\":{},\"choices\":",
        s.model_json
    );
    head
}

/// How a request's answers are written: its endpoint's shape, its response head, the
/// seed of its words, and the index of its first word (past a continued message's).
pub(super) struct Format {
    pub endpoint: Endpoint,
    pub head: String,
    pub seed: u64,
    pub offset: u32,
}

fn usage_json(out: &mut String, u: &Usage) {
    let _ = write!(
        out,
        "{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}}}}",
        u.prompt_tokens,
        u.completion_tokens,
        u.prompt_tokens + u.completion_tokens,
        u.cached_tokens
    );
}

impl Format {
    /// A non-streaming response body.
    pub fn full_body(&self, text: &str, reason: FinishReason, usage: Usage) -> String {
        let mut out = String::with_capacity(self.head.len() + text.len() + 256);
        out.push_str(&self.head);
        let text_json = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
        match self.endpoint {
            Endpoint::Chat => {
                let _ = write!(
                    out,
                    "[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{text_json}}},\"logprobs\":null,\"finish_reason\":\"{}\"}}],\"usage\":",
                    reason.as_str()
                );
            }
            Endpoint::Completion => {
                let _ = write!(
                    out,
                    "[{{\"index\":0,\"text\":{text_json},\"logprobs\":null,\"finish_reason\":\"{}\"}}],\"usage\":",
                    reason.as_str()
                );
            }
        }
        usage_json(&mut out, &usage);
        out.push('}');
        out
    }

    /// One SSE chunk carrying token `index` (words are plain ASCII: no escaping needed).
    pub fn token_chunk(
        &self,
        out: &mut Vec<u8>,
        index: u32,
        first: bool,
        finish: Option<FinishReason>,
    ) {
        let word = output_word(self.seed, self.offset + index);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(self.head.as_bytes());
        match self.endpoint {
            Endpoint::Chat => {
                out.extend_from_slice(b"[{\"index\":0,\"delta\":{");
                if first {
                    out.extend_from_slice(b"\"role\":\"assistant\",");
                }
                out.extend_from_slice(b"\"content\":\"");
                out.extend_from_slice(word.as_bytes());
                out.extend_from_slice(b"\"},\"logprobs\":null,\"finish_reason\":");
            }
            Endpoint::Completion => {
                out.extend_from_slice(b"[{\"index\":0,\"text\":\"");
                out.extend_from_slice(word.as_bytes());
                out.extend_from_slice(b"\",\"logprobs\":null,\"finish_reason\":");
            }
        }
        match finish {
            Some(r) => {
                out.push(b'"');
                out.extend_from_slice(r.as_str().as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    pub fn usage_chunk(&self, out: &mut Vec<u8>, usage: &Usage) {
        let mut s = String::with_capacity(self.head.len() + 160);
        s.push_str("data: ");
        s.push_str(&self.head);
        s.push_str("[],\"usage\":");
        usage_json(&mut s, usage);
        s.push_str("}\n\n");
        out.extend_from_slice(s.as_bytes());
    }
}
