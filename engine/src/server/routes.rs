//! The endpoint table, and the endpoints too small for a module of their own (health,
//! models, metrics, the fallback).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use super::embed::embeddings;
use super::fault::{get_fault, post_fault, Fault};
use super::generate::{chat_completions, completions, responses};
use super::http::{error_response, json_response};
use super::Shared;
use crate::openai::ApiError;

/// The axum router of the shell.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_handler))
        .route("/admin/fault", get(get_fault).post(post_fault))
        .fallback(not_found)
        .with_state(shared)
}

async fn health(State(s): State<Arc<Shared>>) -> StatusCode {
    let fault = *s.fault.borrow();
    if let Fault::SlowHealth(ms) = fault {
        tokio::time::sleep(std::time::Duration::from_secs_f64(ms / 1e3)).await;
    }
    StatusCode::OK
}

async fn not_found() -> Response {
    error_response(
        &ApiError::new(404, "not_found_error", "no such endpoint").with_code("not_found"),
    )
}

async fn models(State(s): State<Arc<Shared>>) -> Response {
    let body = serde_json::json!({
        "object": "list",
        "data": [{
            "id": s.model,
            "object": "model",
            "created": s.created,
            "owned_by": "sluice",
            "root": s.model,
            "parent": null,
            "max_model_len": s.params.max_model_len,
        }],
    });
    json_response(StatusCode::OK, body.to_string())
}

async fn metrics_handler(State(s): State<Arc<Shared>>) -> Response {
    let mut resp = Response::new(Body::from(s.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
