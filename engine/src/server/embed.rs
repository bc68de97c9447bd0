//! An embeddings request: each input is run through the engine as a prefill (with one
//! step for the pooled output, as a pooling model's request leaves the batch after its
//! prompt), then answered with a vector. The vector is a deterministic function of the
//! input's tokens — the normalized sum of one pseudo-random direction per token — so
//! the same text embeds the same on every replica and texts that share words are near.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{json, Value};

use super::engine_task::{submit, Out};
use super::fault::{injected_error, take_poison};
use super::format::named_id;
use super::http::{error_response, json_response, read_body};
use super::{Shared, MAX_BODY_BYTES};
use crate::core::{check_limits, EngineRequest, RequestId};
use crate::openai::{parse_embeddings, ApiError, EmbeddingsRequest, Encoding};
use crate::words::mix64;

/// Length of a vector when the request does not ask for another.
pub const DEFAULT_DIMENSIONS: u32 = 256;

/// Longest vector a request may ask for.
const MAX_DIMENSIONS: u32 = 8192;

pub(super) async fn embeddings(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(&headers, body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let req = match parse_embeddings(&bytes) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if req.model != s.model {
        return error_response(
            &ApiError::new(
                404,
                "NotFoundError",
                format!("The model `{}` does not exist.", req.model),
            )
            .with_code("model_not_found"),
        );
    }
    let dimensions = req.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
    if dimensions > MAX_DIMENSIONS {
        return error_response(&ApiError::invalid(
            format!("'dimensions' must be at most {MAX_DIMENSIONS}"),
            Some("dimensions"),
        ));
    }
    take_poison(&s, &bytes);
    if let Some(e) = injected_error(&s) {
        return error_response(&e);
    }
    match run(&s, &req).await {
        Ok(runs) => {
            let body = answer(&s, &headers, &req, dimensions, &runs);
            json_response(StatusCode::OK, body.to_string())
        }
        Err(e) => error_response(&e),
    }
}

/// One input as the engine ran it: its tokens and how many were cached.
struct Run {
    tokens: Vec<u32>,
    cached: u32,
}

/// Runs every input through the engine at once and waits for all.
async fn run(s: &Shared, req: &EmbeddingsRequest) -> Result<Vec<Run>, ApiError> {
    let mut waits = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.iter().enumerate() {
        let tokens = input.tokens();
        check_limits(&s.params, tokens.len(), 1, 1)
            .map_err(|e| ApiError::invalid(format!("input {i}: {e}"), Some("input")))?;
        let n = s.next_id.fetch_add(1, Ordering::Relaxed);
        let engine_req = EngineRequest {
            id: RequestId(n),
            prompt: tokens.clone(),
            max_tokens: 1,
            output_len: 1,
            priority: req.priority,
            seed: mix64(s.seed ^ mix64(n)),
            hash_root: crate::kv::ROOT_HASH,
        };
        let (rx, guard) = submit(&s.cmd, engine_req, req.cache_salt.as_deref())?;
        waits.push((tokens, rx, guard));
    }
    let mut runs = Vec::with_capacity(waits.len());
    for (tokens, mut rx, mut guard) in waits {
        match rx.recv().await {
            Some(Out::Last(_, _, usage)) => {
                guard.disarm();
                runs.push(Run {
                    tokens,
                    cached: usage.cached_tokens,
                });
            }
            Some(Out::Rejected(m)) => {
                guard.disarm();
                return Err(ApiError::invalid(m, Some("input")));
            }
            // One step with a one-token limit ends with its only token.
            Some(Out::Token(_)) | None => {
                return Err(ApiError::new(
                    500,
                    "InternalServerError",
                    super::engine_task::ENGINE_GONE,
                ))
            }
        }
    }
    Ok(runs)
}

fn answer(
    s: &Shared,
    headers: &HeaderMap,
    req: &EmbeddingsRequest,
    dimensions: u32,
    runs: &[Run],
) -> Value {
    let data: Vec<Value> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let v = vector(&r.tokens, dimensions);
            let embedding = match req.encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => {
                    let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(raw))
                }
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let prompt: usize = runs.iter().map(|r| r.tokens.len()).sum();
    let cached: u32 = runs.iter().map(|r| r.cached).sum();
    let id = named_id(headers).unwrap_or_else(|| format!("{:016x}", mix64(s.seed ^ prompt as u64)));
    json!({
        "id": format!("embd-{id}"), "object": "list", "model": s.model, "data": data,
        "usage": {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt,
            "prompt_tokens_details": {"cached_tokens": cached}},
    })
}

/// The unit vector of `tokens`: the sum of each token's direction, normalized.
pub fn vector(tokens: &[u32], dimensions: u32) -> Vec<f32> {
    let mut v = vec![0f64; dimensions as usize];
    for &t in tokens {
        let base = mix64(u64::from(t) ^ 0xe4b3_dd1c_0f2a_9b71);
        for (k, x) in v.iter_mut().enumerate() {
            let h = mix64(base ^ k as u64);
            // Uniform in [-1, 1).
            *x += (h >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter()
        .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::vector;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_unit_deterministic_and_nearer_for_shared_tokens() {
        let a = vector(&[1, 2, 3, 4], 64);
        assert_eq!(a, vector(&[1, 2, 3, 4], 64));
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        let near = vector(&[1, 2, 3, 5], 64);
        let far = vector(&[9, 10, 11, 12], 64);
        assert!(cosine(&a, &near) > cosine(&a, &far) + 0.2);
        assert_eq!(vector(&[7], 3).len(), 3);
    }
}
