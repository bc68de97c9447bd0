//! The OpenAI response bodies, written by hand rather than through serde: one chunk per
//! token is the streaming hot path.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::responses::ResponseHead;
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

/// The common head of every response object of a request: for chat and completions
/// `{"id":…,"object":…,"created":…,"model":…,"choices":`, for the Responses API its
/// ids and time. Its id is `named` (see [`named_id`]) when given.
pub(super) fn response_head(
    s: &Shared,
    endpoint: Endpoint,
    n: u64,
    stream: bool,
    named: Option<&str>,
) -> Head {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(s.created);
    // OpenAI's Responses ids are `resp_…` and `msg_…`; chat's `chatcmpl-…`.
    let id = |prefix: &str| {
        let sep = if endpoint == Endpoint::Responses {
            '_'
        } else {
            '-'
        };
        match named {
            Some(id) => format!("{prefix}{sep}{id}"),
            None => format!(
                "{prefix}{sep}{:016x}{:08x}",
                mix64(s.seed ^ n),
                n & 0xffff_ffff
            ),
        }
    };
    let (prefix, object) = match (endpoint, stream) {
        (Endpoint::Chat, true) => ("chatcmpl", "chat.completion.chunk"),
        (Endpoint::Chat, false) => ("chatcmpl", "chat.completion"),
        (Endpoint::Completion | Endpoint::Embeddings, _) => ("cmpl", "text_completion"),
        (Endpoint::Responses, _) => {
            return Head::Response(ResponseHead {
                id: id("resp"),
                item_id: id("msg"),
                created_at: created,
                model: s.model.clone(),
            })
        }
    };
    let mut head = String::with_capacity(96 + s.model_json.len());
    head.push_str("{\"id\":\"");
    head.push_str(&id(prefix));
    let _ = write!(
        head,
        "\",\"object\":\"{object}\",\"created\":{created},\"model\":{},\"choices\":",
        s.model_json
    );
    Head::Choices(head)
}

/// How a request's answers begin.
pub(super) enum Head {
    /// Chat and completions: the JSON before `choices`' value.
    Choices(String),
    Response(ResponseHead),
}

/// How a request's answers are written: its endpoint's shape, its response head, the
/// seed of its words, and the index of its first word (past a continued message's).
pub(super) struct Format {
    pub endpoint: Endpoint,
    pub head: Head,
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
        let head = match &self.head {
            Head::Choices(h) => h,
            Head::Response(r) => return r.full_body(text, reason, usage),
        };
        let mut out = String::with_capacity(head.len() + text.len() + 256);
        out.push_str(head);
        let text_json = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
        let choice = match self.endpoint {
            Endpoint::Chat => "\"message\":{\"role\":\"assistant\",\"content\":",
            _ => "\"text\":",
        };
        let close = if self.endpoint == Endpoint::Chat {
            "}"
        } else {
            ""
        };
        let _ = write!(
            out,
            "[{{\"index\":0,{choice}{text_json}{close},\"logprobs\":null,\"finish_reason\":\"{}\"}}],\"usage\":",
            reason.as_str()
        );
        usage_json(&mut out, &usage);
        out.push('}');
        out
    }

    /// The events of token `index` (the `first` one the client gets opens the answer).
    pub fn token(&self, out: &mut Vec<u8>, index: u32, first: bool) {
        match &self.head {
            Head::Choices(head) => self.token_chunk(head, out, index, first, None),
            Head::Response(r) => {
                if first {
                    r.opening(out);
                }
                r.delta(out, index, output_word(self.seed, self.offset + index));
            }
        }
    }

    /// The events of the last token, `index`, and the end of the stream: usage (always
    /// in a response's last event; in its own chunk when the client asked), `[DONE]`.
    pub fn last(
        &self,
        out: &mut Vec<u8>,
        (index, first): (u32, bool),
        reason: FinishReason,
        usage: &Usage,
        include_usage: bool,
    ) {
        match &self.head {
            Head::Choices(head) => {
                self.token_chunk(head, out, index, first, Some(reason));
                if include_usage {
                    usage_chunk(head, out, usage);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Head::Response(r) => {
                self.token(out, index, first);
                let text: String = (0..=index)
                    .map(|i| output_word(self.seed, self.offset + i))
                    .collect();
                r.closing(out, index + 1, &text, reason, *usage);
            }
        }
    }

    /// One SSE chunk carrying token `index` (words are plain ASCII: no escaping needed).
    fn token_chunk(
        &self,
        head: &str,
        out: &mut Vec<u8>,
        index: u32,
        first: bool,
        finish: Option<FinishReason>,
    ) {
        let word = output_word(self.seed, self.offset + index);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(head.as_bytes());
        if self.endpoint == Endpoint::Chat {
            out.extend_from_slice(b"[{\"index\":0,\"delta\":{");
            if first {
                out.extend_from_slice(b"\"role\":\"assistant\",");
            }
            out.extend_from_slice(b"\"content\":\"");
            out.extend_from_slice(word.as_bytes());
            out.extend_from_slice(b"\"},\"logprobs\":null,\"finish_reason\":");
        } else {
            out.extend_from_slice(b"[{\"index\":0,\"text\":\"");
            out.extend_from_slice(word.as_bytes());
            out.extend_from_slice(b"\",\"logprobs\":null,\"finish_reason\":");
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
}

fn usage_chunk(head: &str, out: &mut Vec<u8>, usage: &Usage) {
    let mut s = String::with_capacity(head.len() + 160);
    s.push_str("data: ");
    s.push_str(head);
    s.push_str("[],\"usage\":");
    usage_json(&mut s, usage);
    s.push_str("}\n\n");
    out.extend_from_slice(s.as_bytes());
}
