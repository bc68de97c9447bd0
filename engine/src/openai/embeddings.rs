//! The embeddings endpoint: one or more inputs (texts or token ids), each embedded
//! whole; nothing is generated.

use super::{object_with_model, opt_u32, scheduling, ApiError, PromptInput};
use serde_json::{Map, Value};

/// Most inputs in one request, as OpenAI allows.
pub const MAX_INPUTS: usize = 2048;

/// How the vectors are written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON array of numbers.
    Float,
    /// Little-endian `f32`s, base64: what the official client asks for by default.
    Base64,
}

/// An embeddings request as the simulated engine runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub inputs: Vec<PromptInput>,
    pub encoding: Encoding,
    /// Length of each vector (`dimensions`); `None`: the model's own.
    pub dimensions: Option<u32>,
    /// vLLM's scheduling `priority` and `cache_salt`, as for generation.
    pub priority: i64,
    pub cache_salt: Option<String>,
}

/// Parses and validates an embeddings body.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingsRequest, ApiError> {
    let (obj, model) = object_with_model(body)?;
    let inputs = inputs(&obj)?;
    let encoding = match obj.get("encoding_format") {
        None | Some(Value::Null) => Encoding::Float,
        Some(Value::String(s)) if s == "float" => Encoding::Float,
        Some(Value::String(s)) if s == "base64" => Encoding::Base64,
        Some(_) => {
            return Err(ApiError::invalid(
                "'encoding_format' must be 'float' or 'base64'",
                Some("encoding_format"),
            ))
        }
    };
    let dimensions = opt_u32(&obj, "dimensions")?;
    if dimensions == Some(0) {
        return Err(ApiError::invalid(
            "'dimensions' must be at least 1",
            Some("dimensions"),
        ));
    }
    let (priority, cache_salt) = scheduling(&obj)?;
    Ok(EmbeddingsRequest {
        model,
        inputs,
        encoding,
        dimensions,
        priority,
        cache_salt,
    })
}

fn inputs(obj: &Map<String, Value>) -> Result<Vec<PromptInput>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "'input' must be a string, an array of strings, an array of token ids, \
             or an array of arrays of token ids",
            Some("input"),
        )
    };
    let ids = |items: &[Value]| super::token_ids(items).ok_or_else(bad);
    let out = match obj.get("input") {
        None => return Err(ApiError::invalid("'input' is required", Some("input"))),
        Some(Value::String(s)) => vec![PromptInput::Text(s.clone())],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => {
            vec![ids(items)?]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(PromptInput::Text(s.clone())),
                Value::Array(t) => ids(t),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if out.is_empty() {
        return Err(ApiError::invalid(
            "'input' must not be empty",
            Some("input"),
        ));
    }
    if out.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            format!(
                "'input' has {} items; at most {MAX_INPUTS} are allowed",
                out.len()
            ),
            Some("input"),
        ));
    }
    if let Some(i) = out.iter().position(|p| p.token_count() == 0) {
        return Err(ApiError::invalid(
            format!("input {i} is empty: every input needs at least one token"),
            Some("input"),
        ));
    }
    Ok(out)
}
