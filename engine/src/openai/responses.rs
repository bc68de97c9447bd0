//! OpenAI's Responses API, stateless: a request's `instructions` and `input` are a chat
//! (instructions as the system message, input items as messages), rendered through the
//! same template as chat so that router and engine count the same tokens, and a
//! conversation sent to either endpoint shares its prefix.

use super::ApiError;
use serde_json::{json, Map, Value};

/// Roles an input message may have.
const ROLES: [&str; 4] = ["user", "assistant", "system", "developer"];

/// The request as chat messages. Takes anything: items and parts it does not know are
/// rendered as their JSON, never refused, because a real engine may accept them.
pub(super) fn messages(obj: &Map<String, Value>) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(Value::String(s)) = obj.get("instructions") {
        out.push(json!({"role": "system", "content": s}));
    }
    match obj.get("input") {
        Some(Value::String(s)) => out.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => out.extend(items.iter().map(item_message)),
        _ => {}
    }
    out
}

/// One input item as a chat message.
fn item_message(item: &Value) -> Value {
    let kind = item.get("type").and_then(Value::as_str);
    match (kind, item.get("role").and_then(Value::as_str)) {
        (None | Some("message"), Some(role)) => {
            let content = match item.get("content") {
                Some(Value::Array(parts)) => Value::Array(parts.iter().map(part).collect()),
                Some(c) => c.clone(),
                None => Value::Null,
            };
            json!({"role": role, "content": content})
        }
        (Some("function_call_output"), _) => {
            let output = item.get("output").cloned().unwrap_or(Value::Null);
            let text = output
                .as_str()
                .map_or_else(|| output.to_string(), str::to_owned);
            json!({"role": "tool", "content": text})
        }
        // A tool call the model made: in the prompt as the engine renders it.
        (Some("function_call"), _) => {
            json!({"role": "assistant", "content": null, "tool_calls": [item]})
        }
        _ => json!({"role": "user", "content": item.to_string()}),
    }
}

/// A content part as chat's: text parts by their text, images as images.
fn part(p: &Value) -> Value {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            json!({"type": "text", "text": p.get("text").cloned().unwrap_or(Value::Null)})
        }
        Some("input_image") => json!({"type": "input_image"}),
        _ => json!({"type": "text", "text": p.to_string()}),
    }
}

/// Checks a request as the simulated engine takes it: an `input`, items it can render,
/// and none of the stateful or tool features it does not have.
pub(super) fn check(obj: &Map<String, Value>) -> Result<(), ApiError> {
    match obj.get("instructions") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "'instructions' must be a string",
                Some("instructions"),
            ))
        }
    }
    if obj
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::invalid(
            "'previous_response_id' is not supported: this engine stores no responses; \
             send the conversation in 'input'",
            Some("previous_response_id"),
        ));
    }
    match obj.get("input") {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .try_for_each(|(i, it)| check_item(i, it)),
        Some(Value::String(_) | Value::Array(_)) => Err(ApiError::invalid(
            "'input' must not be empty",
            Some("input"),
        )),
        Some(_) => Err(ApiError::invalid(
            "'input' must be a string or an array of input items",
            Some("input"),
        )),
        None => Err(ApiError::invalid("'input' is required", Some("input"))),
    }
}

fn check_item(i: usize, item: &Value) -> Result<(), ApiError> {
    let bad = |what: String| Err(ApiError::invalid(what, Some("input")));
    let Value::Object(item) = item else {
        return bad(format!("input[{i}] must be an object"));
    };
    match item.get("type").and_then(Value::as_str) {
        None | Some("message") => {}
        Some("function_call_output") if item.contains_key("output") => return Ok(()),
        Some("function_call") if item.contains_key("name") => return Ok(()),
        Some(t) => return bad(format!("input[{i}] has an unsupported type '{t}'")),
    }
    match item.get("role").and_then(Value::as_str) {
        Some(r) if ROLES.contains(&r) => {}
        Some(_) => {
            return bad(format!(
                "input[{i}].role must be one of {}",
                ROLES.join(", ")
            ))
        }
        None => return bad(format!("input[{i}].role is required")),
    }
    match item.get("content") {
        Some(Value::String(_)) => Ok(()),
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text")
                        if p.get("text").is_some_and(Value::is_string) => {}
                    Some("input_image") => {}
                    _ => {
                        return bad(format!(
                        "input[{i}].content[{j}] must be input_text, output_text or input_image"
                    ))
                    }
                }
            }
            Ok(())
        }
        _ => bad(format!(
            "input[{i}].content must be a string or an array of parts"
        )),
    }
}
