//! Splicing a continuation into the client's stream: after the replica serving a stream
//! failed, the answer goes on from another replica (token-replay migration), and its
//! events are rewritten so that the client reads one answer — the first attempt's `id`
//! and `created`, no second opening role chunk, and usage for one request (the prompt
//! the client sent, every token it received).

use serde_json::Value;

/// Rewrites the events of one continuation.
#[derive(Debug)]
pub struct Splice {
    id: Option<String>,
    created: Option<u64>,
    /// Output tokens the client had received before this continuation began; they are
    /// in the continuation's prompt.
    sent: u32,
}

impl Splice {
    pub fn new(id: Option<String>, created: Option<u64>, sent: u32) -> Self {
        Self { id, created, sent }
    }

    /// The event (without its blank line) as the client gets it, or `None` to drop it.
    pub fn event(&mut self, event: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(event.len() + 16);
        for (i, line) in event.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            let Some(data) = line.strip_prefix(b"data:") else {
                out.extend_from_slice(line);
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            let data = data.strip_suffix(b"\r").unwrap_or(data);
            match serde_json::from_slice::<Value>(data) {
                Ok(Value::Object(mut chunk)) if !chunk.contains_key("error") => {
                    if self.rewrite(&mut chunk) {
                        return None;
                    }
                    out.extend_from_slice(b"data: ");
                    // A map of JSON values always serializes.
                    out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
                }
                // `[DONE]`, error events and anything else pass as they are.
                _ => out.extend_from_slice(line),
            }
        }
        Some(out)
    }

    /// Rewrites one chunk; true when it is to be dropped (a bare opening role chunk).
    fn rewrite(&self, chunk: &mut serde_json::Map<String, Value>) -> bool {
        if let Some(id) = &self.id {
            chunk.insert("id".to_owned(), id.clone().into());
        }
        if let (Some(created), true) = (self.created, chunk.contains_key("created")) {
            chunk.insert("created".to_owned(), created.into());
        }
        let usage = chunk.get("usage").is_some_and(|u| !u.is_null());
        if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
            for choice in choices.iter_mut() {
                if let Some(Value::Object(delta)) = choice.get_mut("delta") {
                    delta.remove("role");
                }
            }
            let bare = |c: &Value| {
                c.get("finish_reason").is_none_or(Value::is_null)
                    && c.get("logprobs").is_none_or(Value::is_null)
                    && c.get("delta").is_some_and(|d| {
                        d.as_object().is_some_and(|d| {
                            d.iter().all(|(k, v)| {
                                v.is_null() || (k == "content" && v.as_str() == Some(""))
                            })
                        })
                    })
            };
            if !choices.is_empty() && choices.iter().all(bare) && !usage {
                return true;
            }
        }
        if let Some(Value::Object(usage)) = chunk.get_mut("usage") {
            let get = |u: &serde_json::Map<String, Value>, k: &str| {
                u.get(k).and_then(Value::as_u64).unwrap_or(0)
            };
            let sent = u64::from(self.sent);
            let prompt = get(usage, "prompt_tokens").saturating_sub(sent);
            let completion = get(usage, "completion_tokens").saturating_add(sent);
            usage.insert("prompt_tokens".to_owned(), prompt.into());
            usage.insert("completion_tokens".to_owned(), completion.into());
            usage.insert("total_tokens".to_owned(), (prompt + completion).into());
            if let Some(Value::Object(details)) = usage.get_mut("prompt_tokens_details") {
                if let Some(cached) = details.get("cached_tokens").and_then(Value::as_u64) {
                    details.insert("cached_tokens".to_owned(), cached.min(prompt).into());
                }
            }
        }
        false
    }
}
