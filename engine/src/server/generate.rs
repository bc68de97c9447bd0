//! A generation request from its body to its answer: checked, handed to the engine task,
//! then answered whole or streamed. Nothing is sent before the first token, so a hung
//! engine sends no bytes at all.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::engine_task::{submit, Out, ENGINE_GONE};
use super::fault::{injected_error, take_poison};
use super::format::{named_id, response_head, Format};
use super::http::{error_response, json_response, read_body};
use super::sse;
use super::validate::{check_target, shape, Shape};
use super::{Shared, MAX_BODY_BYTES};
use crate::core::{EngineRequest, RequestId};
use crate::openai::{parse_request, ApiError, Endpoint};
use crate::words::{mix64, output_word};

pub(super) async fn chat_completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(s, Endpoint::Chat, headers, body).await
}

pub(super) async fn completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(s, Endpoint::Completion, headers, body).await
}

pub(super) async fn responses(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(s, Endpoint::Responses, headers, body).await
}

async fn generate(s: Arc<Shared>, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(&headers, body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let req = match parse_request(endpoint, &bytes) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if let Err(e) = check_target(&s.model, &req) {
        return error_response(&e);
    }
    take_poison(&s, &bytes);
    if let Some(e) = injected_error(&s) {
        return error_response(&e);
    }
    let Shape {
        prompt,
        max_tokens,
        output_len,
        target,
    } = match shape(&s.params, s.seed, endpoint, &req) {
        Ok(shape) => shape,
        Err(e) => return error_response(&e),
    };

    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let id = RequestId(n);
    let seed = req
        .seed
        .map_or_else(|| mix64(s.seed ^ mix64(n)), crate::words::client_seed);
    // A continued answer goes on with the words after those it already has.
    let offset = req.continued_tokens;
    let engine_req = EngineRequest {
        id,
        prompt,
        max_tokens,
        output_len,
        priority: req.priority,
        seed,
        hash_root: crate::kv::ROOT_HASH,
    };
    let (mut rx, mut guard) = match submit(&s.cmd, engine_req, req.cache_salt.as_deref()) {
        Ok(sent) => sent,
        Err(e) => return error_response(&e),
    };
    let fmt = Format {
        endpoint,
        head: response_head(&s, endpoint, n, req.stream, named_id(&headers).as_deref()),
        seed,
        offset,
    };

    // Nothing is sent until the first token: a hung engine sends no bytes at all.
    let first = match rx.recv().await {
        Some(Out::Rejected(msg)) => {
            guard.disarm();
            return error_response(&ApiError::invalid(msg, None));
        }
        Some(m) => m,
        None => return engine_gone(),
    };

    if req.stream {
        return sse::response(rx, first, fmt, req.include_usage, guard);
    }

    let mut text = String::with_capacity(target as usize * 5);
    let mut msg = first;
    loop {
        match msg {
            Out::Token(i) => text.push_str(output_word(seed, offset + i)),
            Out::Last(i, reason, usage) => {
                text.push_str(output_word(seed, offset + i));
                guard.disarm();
                return json_response(StatusCode::OK, fmt.full_body(&text, reason, usage));
            }
            Out::Rejected(m) => {
                guard.disarm();
                return error_response(&ApiError::invalid(m, None));
            }
        }
        msg = match rx.recv().await {
            Some(m) => m,
            None => return engine_gone(),
        };
    }
}

fn engine_gone() -> Response {
    error_response(&ApiError::new(500, "InternalServerError", ENGINE_GONE))
}
