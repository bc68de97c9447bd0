//! The request that continues an answer on another replica (token-replay migration):
//! the original request with what the client already received appended to its prompt
//! — a completion's text after its prompt, a chat's partial assistant message left open
//! with vLLM's `continue_final_message` — and its token limits reduced by what was sent.
//! Requests an engine cannot continue faithfully are named, not guessed at.

use crate::openai::Endpoint;
use serde_json::{Map, Value};

/// What to send to continue an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Continuation {
    /// This body, to the same endpoint.
    Body(Vec<u8>),
    /// Nothing: the answer already has every token its limit allows.
    Exhausted,
}

/// Why a request cannot be continued elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} cannot be continued on another replica")]
pub struct NotResumable(pub &'static str);

/// What the client received of an answer before its replica failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    /// The answer's text so far.
    pub text: &'a str,
    /// Its output tokens so far.
    pub tokens: u32,
    /// Every choice had finished (only the stream's close was lost).
    pub finished: bool,
    /// Output that is not plain text was streamed (tool calls, reasoning).
    pub opaque: bool,
}

/// What continues `body` (as the engine was sent it, for `endpoint`) after the client
/// received `received`.
pub fn plan(
    endpoint: Endpoint,
    body: &[u8],
    received: Received<'_>,
) -> Result<Continuation, NotResumable> {
    if matches!(endpoint, Endpoint::Responses | Endpoint::Embeddings) {
        return Err(blocked(endpoint));
    }
    if received.finished {
        Ok(Continuation::Exhausted)
    } else if received.opaque {
        Err(NotResumable("an answer with tool calls or reasoning"))
    } else {
        continuation(endpoint, body, received.text, received.tokens)
    }
}

/// The events that end a stream whose answer needs nothing more (see
/// [`Continuation::Exhausted`]), as the engine would have sent them: a finishing chunk
/// unless every choice had finished, the usage chunk when the client asked for it, and
/// `[DONE]`. `head` holds the stream's `id`, `created` and `model`.
pub fn ending(
    endpoint: Endpoint,
    head: &Map<String, Value>,
    finished: bool,
    usage: Option<(u32, u32)>,
) -> String {
    let chunk = |object: &str, extra: Value| {
        let mut c = head.clone();
        c.insert("object".to_owned(), object.into());
        if let Value::Object(extra) = extra {
            c.extend(extra);
        }
        format!("data: {}\n\n", Value::Object(c))
    };
    let (object, last) = match endpoint {
        Endpoint::Chat => (
            "chat.completion.chunk",
            serde_json::json!({"index": 0, "delta": {}, "finish_reason": "length"}),
        ),
        Endpoint::Completion => (
            "text_completion",
            serde_json::json!({"index": 0, "text": "", "finish_reason": "length"}),
        ),
        // Never continued (see [`plan`]), so never ended here: only `[DONE]`.
        Endpoint::Responses | Endpoint::Embeddings => return "data: [DONE]\n\n".to_owned(),
    };
    let mut out = String::new();
    if !finished {
        out.push_str(&chunk(object, serde_json::json!({ "choices": [last] })));
    }
    if let Some((prompt, completion)) = usage {
        out.push_str(&chunk(
            object,
            serde_json::json!({
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }),
        ));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

/// The continuation of `body` (as the engine was sent it, for `endpoint`) after the
/// client received `text`, `sent` tokens of output.
fn continuation(
    endpoint: Endpoint,
    body: &[u8],
    text: &str,
    sent: u32,
) -> Result<Continuation, NotResumable> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(NotResumable("a body that is not a JSON object"));
    };
    if let Some(why) = blocker(endpoint, &obj) {
        return Err(NotResumable(why));
    }
    if sent == 0 && text.is_empty() {
        // Nothing reached the client: starting over is continuing.
        return Ok(Continuation::Body(body.to_vec()));
    }
    for key in endpoint.limit_fields() {
        if let Some(limit) = obj.get(*key).and_then(Value::as_u64) {
            let left = limit.saturating_sub(u64::from(sent));
            if left == 0 {
                return Ok(Continuation::Exhausted);
            }
            obj.insert((*key).to_owned(), left.into());
        }
    }
    if let Some(min) = obj.get("min_tokens").and_then(Value::as_u64) {
        obj.insert(
            "min_tokens".to_owned(),
            min.saturating_sub(u64::from(sent)).into(),
        );
    }
    match endpoint {
        Endpoint::Completion => extend_prompt(&mut obj, text)?,
        Endpoint::Chat => extend_assistant(&mut obj, text)?,
        Endpoint::Responses | Endpoint::Embeddings => return Err(blocked(endpoint)),
    }
    serde_json::to_vec(&Value::Object(obj))
        .map(Continuation::Body)
        .map_err(|_| NotResumable("a body that cannot be written back"))
}

/// What in a request stops an engine from continuing it where another left off.
fn blocker(endpoint: Endpoint, obj: &Map<String, Value>) -> Option<&'static str> {
    let set = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let above_one = |k: &str| obj.get(k).and_then(Value::as_u64).is_some_and(|v| v > 1);
    let truthy = |k: &str| obj.get(k).and_then(Value::as_bool) == Some(true);
    if above_one("n") {
        return Some("a request for several choices (n > 1)");
    }
    if above_one("best_of") || truthy("use_beam_search") {
        return Some("a best-of or beam-search request");
    }
    // A grammar's state is not in the text: a new engine would restart it mid-answer.
    let guided = [
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "structured_outputs",
    ];
    let format = obj
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str);
    if guided.iter().any(|k| set(k)) || format.is_some_and(|t| t != "text") {
        return Some("a request with structured output");
    }
    if truthy("echo") || set("prompt_logprobs") {
        return Some("a request that echoes its prompt");
    }
    match endpoint {
        Endpoint::Completion => {
            if set("suffix") {
                return Some("a completion with a suffix");
            }
            match obj.get("prompt") {
                Some(Value::String(_)) => None,
                Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => None,
                _ => Some("a completion whose prompt is not one text"),
            }
        }
        Endpoint::Chat => {
            let forced = match obj.get("tool_choice") {
                Some(Value::String(c)) => c == "required",
                Some(Value::Object(_)) => true,
                _ => false,
            };
            forced.then_some("a chat with a forced tool call")
        }
        Endpoint::Responses | Endpoint::Embeddings => Some(blocked(endpoint).0),
    }
}

/// Why an endpoint's answers are never continued.
fn blocked(endpoint: Endpoint) -> NotResumable {
    match endpoint {
        // vLLM's Responses API has no `continue_final_message`: a continuation would be
        // a new answer after the partial one, not the same answer going on.
        Endpoint::Responses => NotResumable("a Responses API answer"),
        Endpoint::Embeddings => NotResumable("an embeddings request"),
        Endpoint::Chat | Endpoint::Completion => NotResumable("this request"),
    }
}

fn extend_prompt(obj: &mut Map<String, Value>, text: &str) -> Result<(), NotResumable> {
    let prompt = match obj.get_mut("prompt") {
        Some(Value::Array(items)) => items.first_mut(),
        other => other,
    };
    match prompt {
        Some(Value::String(p)) => {
            p.push_str(text);
            Ok(())
        }
        _ => Err(NotResumable("a completion whose prompt is not one text")),
    }
}

/// Leaves the answer so far open as the final assistant message: appended to one the
/// client already asked to continue, else added.
fn extend_assistant(obj: &mut Map<String, Value>, text: &str) -> Result<(), NotResumable> {
    let continuing = obj.get("continue_final_message").and_then(Value::as_bool) == Some(true);
    let Some(Value::Array(messages)) = obj.get_mut("messages") else {
        return Err(NotResumable("a chat without messages"));
    };
    let last_is_assistant = messages
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        == Some("assistant");
    if continuing && last_is_assistant {
        let Some(Value::Object(last)) = messages.last_mut() else {
            return Err(NotResumable("a chat without messages"));
        };
        match last.get_mut("content") {
            Some(Value::String(s)) => s.push_str(text),
            Some(Value::Array(parts)) => {
                parts.push(serde_json::json!({"type": "text", "text": text}));
            }
            _ => {
                last.insert("content".to_owned(), text.into());
            }
        }
    } else {
        messages.push(serde_json::json!({"role": "assistant", "content": text}));
    }
    obj.insert("continue_final_message".to_owned(), true.into());
    obj.insert("add_generation_prompt".to_owned(), false.into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{parse_request, PromptInput};
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn cont(endpoint: Endpoint, v: Value, text: &str, sent: u32) -> Value {
        match continuation(endpoint, &body(v), text, sent) {
            Ok(Continuation::Body(b)) => serde_json::from_slice(&b).unwrap(),
            other => panic!("not a body: {other:?}"),
        }
    }

    fn prompt_of(endpoint: Endpoint, v: &Value) -> String {
        match parse_request(endpoint, &body(v.clone())).unwrap().prompt {
            PromptInput::Text(t) => t,
            PromptInput::Tokens(_) => panic!("text"),
        }
    }

    #[test]
    fn responses_and_embeddings_are_never_continued() {
        let received = Received {
            text: "so far",
            tokens: 2,
            finished: false,
            opaque: false,
        };
        let body = br#"{"model":"m","input":"hi","max_output_tokens":9}"#;
        assert!(plan(Endpoint::Responses, body, received).is_err());
        assert!(plan(
            Endpoint::Embeddings,
            br#"{"model":"m","input":"hi"}"#,
            received
        )
        .is_err());
    }

    #[test]
    fn a_finished_answer_needs_nothing_and_opaque_output_is_not_continued() {
        let req = body(json!({"model": "m", "prompt": "p", "max_tokens": 10}));
        let received = Received {
            text: "done",
            tokens: 4,
            finished: true,
            opaque: false,
        };
        assert_eq!(
            plan(Endpoint::Completion, &req, received),
            Ok(Continuation::Exhausted)
        );
        let opaque = Received {
            finished: false,
            opaque: true,
            ..received
        };
        assert!(plan(Endpoint::Completion, &req, opaque).is_err());
        let plain = Received {
            finished: false,
            ..received
        };
        assert!(matches!(
            plan(Endpoint::Completion, &req, plain),
            Ok(Continuation::Body(_))
        ));
    }

    #[test]
    fn an_ending_finishes_reports_usage_when_asked_and_closes() {
        let head: Map<String, Value> =
            serde_json::from_value(json!({"id": "c-1", "created": 5, "model": "m"})).unwrap();
        let events = |s: String| -> Vec<String> {
            s.split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| e.trim_start_matches("data: ").to_owned())
                .collect()
        };
        let e = events(ending(Endpoint::Chat, &head, false, Some((7, 3))));
        assert_eq!(e.len(), 3);
        let finish: Value = serde_json::from_str(&e[0]).unwrap();
        assert_eq!(finish["id"], "c-1");
        assert_eq!(finish["created"], 5);
        assert_eq!(finish["object"], "chat.completion.chunk");
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        let usage: Value = serde_json::from_str(&e[1]).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 10);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(e[2], "[DONE]");
        // Finished already, no usage asked: only the close.
        let e = events(ending(Endpoint::Completion, &head, true, None));
        assert_eq!(e, vec!["[DONE]".to_owned()]);
        let e = events(ending(Endpoint::Completion, &head, false, None));
        let finish: Value = serde_json::from_str(&e[0]).unwrap();
        assert_eq!(finish["object"], "text_completion");
        assert_eq!(finish["choices"][0]["text"], "");
    }

    #[test]
    fn a_chat_continues_its_partial_assistant_message() {
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 10, "stream": true});
        let c = cont(Endpoint::Chat, req.clone(), "Hello, wor", 3);
        assert_eq!(c["max_tokens"], 7);
        assert_eq!(
            c["messages"][1],
            json!({"role": "assistant", "content": "Hello, wor"})
        );
        assert_eq!(c["continue_final_message"], true);
        assert_eq!(c["add_generation_prompt"], false);
        // The engine sees the original prompt, then the answer so far, left open.
        assert_eq!(
            prompt_of(Endpoint::Chat, &c),
            format!("{}Hello, wor", prompt_of(Endpoint::Chat, &req))
        );
        // The simulated engine goes on after the words the message already has.
        let parsed = parse_request(Endpoint::Chat, &body(c.clone())).unwrap();
        assert_eq!(
            parsed.continued_tokens,
            crate::tokenizer::count_tokens("Hello, wor") as u32
        );
        assert_eq!(
            parse_request(Endpoint::Chat, &body(req.clone()))
                .unwrap()
                .continued_tokens,
            0
        );
        // A continuation continued again appends to the same message.
        let again = cont(Endpoint::Chat, c, "ld", 1);
        assert_eq!(again["messages"][1]["content"], "Hello, world");
        assert_eq!(again["max_tokens"], 6);
        assert_eq!(again["messages"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_completion_continues_after_its_prompt() {
        let req = json!({"model": "m", "prompt": ["Once upon"], "max_tokens": 5, "min_tokens": 2});
        let c = cont(Endpoint::Completion, req, " a time", 2);
        assert_eq!(c["prompt"], json!(["Once upon a time"]));
        assert_eq!(
            (c["max_tokens"].clone(), c["min_tokens"].clone()),
            (json!(3), json!(0))
        );
        assert_eq!(
            continuation(
                Endpoint::Completion,
                &body(json!({"prompt": "x", "max_tokens": 2})),
                "ab",
                2
            ),
            Ok(Continuation::Exhausted)
        );
        // Nothing sent yet: the request as it was.
        let raw = body(json!({"prompt": "x"}));
        assert_eq!(
            continuation(Endpoint::Completion, &raw, "", 0),
            Ok(Continuation::Body(raw))
        );
    }

    #[test]
    fn what_an_engine_cannot_continue_is_refused_by_name() {
        let chat = |extra: Value| {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            continuation(Endpoint::Chat, &body(v), "a", 1)
        };
        for extra in [
            json!({"n": 2}),
            json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
            json!({"guided_regex": "a+"}),
            json!({"tool_choice": "required"}),
            json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
            json!({"echo": true}),
        ] {
            assert!(chat(extra.clone()).is_err(), "{extra}");
        }
        for extra in [
            json!({"n": 1}),
            json!({"response_format": {"type": "text"}}),
            json!({"tool_choice": "auto"}),
        ] {
            assert!(chat(extra.clone()).is_ok(), "{extra}");
        }
        for prompt in [json!([1, 2, 3]), json!(["a", "b"])] {
            assert!(continuation(
                Endpoint::Completion,
                &body(json!({"prompt": prompt})),
                "a",
                1
            )
            .is_err());
        }
        assert!(continuation(
            Endpoint::Completion,
            &body(json!({"prompt": "p", "suffix": "s"})),
            "a",
            1
        )
        .is_err());
        assert!(continuation(Endpoint::Chat, b"[1]", "a", 1).is_err());
    }

    #[test]
    fn the_simulated_engine_refuses_what_vllm_refuses() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let bad = [
            json!({"model": "m", "messages": msgs, "continue_final_message": true}),
            json!({"model": "m", "messages": msgs, "continue_final_message": true, "add_generation_prompt": false}),
            json!({"model": "m", "messages": msgs, "add_generation_prompt": "no"}),
        ];
        for b in bad {
            assert!(
                parse_request(Endpoint::Chat, &body(b.clone())).is_err(),
                "{b}"
            );
        }
    }
}
