//! Fault injection for drills: the faults an operator sets through `/admin/fault`, the
//! poison text that hangs the engine, and the seeded draws of the `errors` fault. Kept
//! apart so that the serving path reads as if there were none.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::http::{error_response, json_response, read_body};
use super::Shared;
use crate::openai::ApiError;
use crate::words::mix64;

/// Exit code of the process after `POST /admin/fault {"kind":"crash"}`.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Default step-time factor of the `slow` fault.
pub const DEFAULT_SLOWDOWN: f64 = 10.0;

/// Default delay of the `slow_health` fault, ms.
pub const DEFAULT_HEALTH_DELAY_MS: f64 = 2_000.0;

/// The longest `slow_health` delay, ms (an hour).
const MAX_HEALTH_DELAY_MS: f64 = 3_600_000.0;

/// The largest `/admin/fault` body read.
const MAX_FAULT_BODY_BYTES: usize = 64 * 1024;

/// An injected fault (`POST /admin/fault`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Normal operation.
    None,
    /// Accept requests but never answer; in-flight streams stop; `/health` stays 200.
    Hang,
    /// Reply 200, then exit the process with [`CRASH_EXIT_CODE`].
    Crash,
    /// Every step takes this many times as long.
    Slow(f64),
    /// Answer this fraction (0..=1) of new generation requests with a 500.
    Errors(f64),
    /// Answer `/health` only after this many milliseconds, generating as usual: a
    /// saturated vLLM's API server, whose event loop answers its health endpoint late.
    SlowHealth(f64),
}

impl Fault {
    /// Parses a `POST /admin/fault` body: `{"kind": "...", "value": <number>?}`.
    pub fn parse(body: &[u8]) -> Result<Fault, String> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| format!("fault body is not valid JSON: {e}"))?;
        let Value::Object(obj) = v else {
            return Err(
                "fault body must be a JSON object like {\"kind\": \"slow\", \"value\": 10}".into(),
            );
        };
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            Some(_) => return Err("'kind' must be a string".into()),
            None => {
                return Err(
                    "'kind' is required: one of hang, crash, slow, errors, slow_health, none"
                        .into(),
                )
            }
        };
        let value = match obj.get("value") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() => Some(x),
                _ => return Err("'value' must be a finite number".into()),
            },
            Some(_) => return Err("'value' must be a number".into()),
        };
        match kind {
            "none" => Ok(Fault::None),
            "hang" => Ok(Fault::Hang),
            "crash" => Ok(Fault::Crash),
            "slow" => {
                let f = value.unwrap_or(DEFAULT_SLOWDOWN);
                if f > 0.0 && f <= 1e6 {
                    Ok(Fault::Slow(f))
                } else {
                    Err(format!(
                        "'value' of a slow fault is a step-time factor in (0, 1e6], got {f}"
                    ))
                }
            }
            "errors" => {
                let r = value.unwrap_or(1.0);
                if (0.0..=1.0).contains(&r) {
                    Ok(Fault::Errors(r))
                } else {
                    Err(format!(
                        "'value' of an errors fault is a fraction in [0, 1], got {r}"
                    ))
                }
            }
            "slow_health" => {
                let ms = value.unwrap_or(DEFAULT_HEALTH_DELAY_MS);
                if (0.0..=MAX_HEALTH_DELAY_MS).contains(&ms) {
                    Ok(Fault::SlowHealth(ms))
                } else {
                    Err(format!(
                        "'value' of a slow_health fault is a delay in ms in [0, {MAX_HEALTH_DELAY_MS}], got {ms}"
                    ))
                }
            }
            other => Err(format!(
                "unknown fault kind '{other}': expected one of hang, crash, slow, errors, \
                 slow_health, none"
            )),
        }
    }

    /// The JSON form, as `GET /admin/fault` returns it.
    pub fn to_json(&self) -> Value {
        match *self {
            Fault::None => serde_json::json!({"kind": "none"}),
            Fault::Hang => serde_json::json!({"kind": "hang"}),
            Fault::Crash => serde_json::json!({"kind": "crash"}),
            Fault::Slow(f) => serde_json::json!({"kind": "slow", "value": f}),
            Fault::Errors(r) => serde_json::json!({"kind": "errors", "value": r}),
            Fault::SlowHealth(ms) => serde_json::json!({"kind": "slow_health", "value": ms}),
        }
    }
}

pub(super) async fn get_fault(State(s): State<Arc<Shared>>) -> Response {
    let fault = *s.fault.borrow();
    json_response(StatusCode::OK, fault.to_json().to_string())
}

pub(super) async fn post_fault(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(&headers, body, MAX_FAULT_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let fault = match Fault::parse(&bytes) {
        Ok(f) => f,
        Err(msg) => return error_response(&ApiError::invalid(msg, None)),
    };
    tracing::warn!(?fault, "fault injected");
    s.fault.send_replace(fault);
    if fault == Fault::Crash {
        tokio::spawn(async {
            // Let the 200 reach the client first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tracing::error!("crash fault: exiting");
            std::process::exit(CRASH_EXIT_CODE);
        });
    }
    json_response(StatusCode::OK, fault.to_json().to_string())
}

/// A request carrying the poison text hangs the engine, as the `hang` fault does.
pub(super) fn take_poison(s: &Shared, body: &[u8]) {
    if let Some(p) = &s.poison {
        if contains(body, p.as_bytes()) {
            tracing::error!("poison request: the engine hangs");
            s.fault.send_replace(Fault::Hang);
        }
    }
}

/// Under the `errors` fault, the error a request draws (seeded, so a drill repeats).
pub(super) fn injected_error(s: &Shared) -> Option<ApiError> {
    let Fault::Errors(rate) = *s.fault.borrow() else {
        return None;
    };
    let draw = s.error_draws.fetch_add(1, Ordering::Relaxed);
    let u = (mix64(s.seed ^ 0xE770_0000_0000_0000 ^ draw) >> 11) as f64 / (1u64 << 53) as f64;
    (u < rate).then(|| {
        ApiError::new(
            500,
            "InternalServerError",
            "injected fault: the simulated engine failed this request",
        )
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
