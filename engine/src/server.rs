//! The real-time shell: an OpenAI-compatible HTTP server around one [`EngineCore`].
//!
//! One engine task owns the core. Handlers validate a request, send it to the engine task
//! over a channel and receive its tokens over a per-request channel. The engine task runs
//! a step, waits until `step_start + duration × time_scale` (deadlines are chained, so
//! there is no drift), then delivers the step's events. When idle (or hung) it waits for
//! the next command. With `time_scale = 0` steps take no wall time (zero-delay mode).
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (streaming and not),
//! `GET /v1/models`, `GET /health`, `GET /metrics`, `GET|POST /admin/fault`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::core::{
    check_limits, EngineCore, EngineEvent, EngineRequest, FinishReason, RequestId, Usage,
};
use crate::metrics::Metrics;
use crate::openai::{parse_request, ApiError, Endpoint};
use crate::params::EngineParams;
use crate::words::{mix64, natural_output_len, output_word};

/// Largest request body accepted (larger ones get 413).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Exit code of the process after `POST /admin/fault {"kind":"crash"}`.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Default step-time factor of the `slow` fault.
pub const DEFAULT_SLOWDOWN: f64 = 10.0;

/// How long in-flight connections may take to finish after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How far behind its schedule the engine may fall before it stops catching up.
const MAX_CATCH_UP: Duration = Duration::from_millis(50);

/// Configuration of one simulated engine server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The served model name (requests for any other model get 404).
    pub model: String,
    /// Step model and limits.
    pub params: EngineParams,
    /// Wall time per simulated time: 1.0 = real time, 2.0 = twice as slow, 0.0 = zero-delay
    /// mode (steps take no wall time).
    pub time_scale: f64,
    /// Seed of everything random-looking: output words, natural output lengths, the
    /// `errors` fault's draws.
    pub seed: u64,
    /// Fault injection for drills: a request whose body contains this text hangs the
    /// engine (as the `hang` fault), the way an engine bug set off by one request shape
    /// would. Unlike an admin fault it survives restarts, so it strikes every replica
    /// that serves such a request.
    pub poison: Option<String>,
}

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
            None => return Err("'kind' is required: one of hang, crash, slow, errors, none".into()),
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
            other => Err(format!(
                "unknown fault kind '{other}': expected one of hang, crash, slow, errors, none"
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
        }
    }
}

/// Serves the OpenAI API of one simulated engine on `listener` until `shutdown`
/// completes. In-flight requests get 2 s to finish; hung ones are cut.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let time_scale = if config.time_scale.is_finite() && config.time_scale > 0.0 {
        config.time_scale
    } else {
        0.0
    };
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (fault_tx, fault_rx) = watch::channel(Fault::None);
    let metrics = Arc::new(Metrics::new(&config.model));
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let shared = Arc::new(Shared {
        model_json: serde_json::to_string(&config.model).unwrap_or_else(|_| "\"model\"".into()),
        model: config.model.clone(),
        params: config.params.clone(),
        seed: config.seed,
        cmd: cmd_tx,
        next_id: AtomicU64::new(0),
        error_draws: AtomicU64::new(0),
        poison: config.poison.clone().filter(|p| !p.is_empty()),
        fault: fault_tx,
        metrics: metrics.clone(),
        created,
    });
    let core = EngineCore::new(config.params.clone());
    let engine = tokio::spawn(engine_loop(core, cmd_rx, fault_rx, metrics, time_scale));
    tracing::info!(model = %config.model, time_scale, "simulated engine serving");

    let app = router(shared);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    // Token chunks are small writes: without TCP_NODELAY, Nagle's algorithm and the
    // client's delayed ACK hold each one back by up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let grace = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        r = server => r,
        _ = grace => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
            Ok(())
        }
    };
    engine.abort();
    result
}

/// The axum router of the shell.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_handler))
        .route("/admin/fault", get(get_fault).post(post_fault))
        .fallback(not_found)
        .with_state(shared)
}

struct Shared {
    model: String,
    /// The model name as a JSON string literal.
    model_json: String,
    params: EngineParams,
    seed: u64,
    cmd: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicU64,
    error_draws: AtomicU64,
    poison: Option<String>,
    fault: watch::Sender<Fault>,
    metrics: Arc<Metrics>,
    created: u64,
}

enum Cmd {
    Add { req: EngineRequest, sink: Sink },
    Abort(RequestId),
}

struct Sink {
    tx: mpsc::UnboundedSender<Out>,
    arrived: Instant,
}

/// What the engine task tells a request's handler.
#[derive(Debug)]
enum Out {
    Token(u32),
    /// The last token, with the request's end.
    Last(u32, FinishReason, Usage),
    Rejected(String),
}

// ----- the engine task -----

async fn engine_loop(
    mut core: EngineCore,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut fault_rx: watch::Receiver<Fault>,
    metrics: Arc<Metrics>,
    time_scale: f64,
) {
    let mut sinks: HashMap<RequestId, Sink> = HashMap::new();
    let mut events: Vec<EngineEvent> = Vec::with_capacity(1024);
    let mut dead: Vec<RequestId> = Vec::new();
    let epoch = Instant::now();
    let mut virtual_us: u64 = 0;
    let mut chained: Option<Instant> = None;
    loop {
        let fault = *fault_rx.borrow_and_update();
        core.set_slowdown(match fault {
            Fault::Slow(f) => f,
            _ => 1.0,
        });
        loop {
            match rx.try_recv() {
                Ok(cmd) => handle_cmd(&mut core, &mut sinks, cmd, virtual_us),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        if matches!(fault, Fault::Hang) || !core.has_work() {
            metrics.update(&core.stats());
            chained = None;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => handle_cmd(&mut core, &mut sinks, cmd, virtual_us),
                    None => return,
                },
                changed = fault_rx.changed() => if changed.is_err() { return },
            }
            continue;
        }

        let now = Instant::now();
        let start = match chained {
            Some(t) if now.saturating_duration_since(t) <= MAX_CATCH_UP => t,
            _ => now,
        };
        let now_us = if time_scale > 0.0 {
            (start.duration_since(epoch).as_secs_f64() * 1e6 / time_scale) as u64
        } else {
            virtual_us
        };
        events.clear();
        let summary = core.step_into(now_us, &mut events);
        virtual_us = virtual_us.max(now_us) + summary.duration_us;
        if time_scale > 0.0 && summary.duration_us > 0 {
            let wall = Duration::from_secs_f64(summary.duration_us as f64 * 1e-6 * time_scale);
            let deadline = start + wall;
            tokio::time::sleep_until(deadline).await;
            chained = Some(deadline);
        } else {
            chained = None;
            // Zero-delay mode: let the handlers run between steps.
            tokio::task::yield_now().await;
        }
        deliver(&events, &mut sinks, &metrics, &mut dead);
        for id in dead.drain(..) {
            core.abort(id);
        }
        metrics.update(&core.stats());
    }
}

fn handle_cmd(core: &mut EngineCore, sinks: &mut HashMap<RequestId, Sink>, cmd: Cmd, now_us: u64) {
    match cmd {
        Cmd::Add { req, sink } => {
            let id = req.id;
            match core.add_request(req, now_us) {
                Ok(()) => {
                    sinks.insert(id, sink);
                }
                Err(e) => {
                    let _ = sink.tx.send(Out::Rejected(e.to_string()));
                }
            }
        }
        Cmd::Abort(id) => {
            if sinks.remove(&id).is_some() {
                tracing::debug!(%id, "client went away: aborting");
            }
            core.abort(id);
        }
    }
}

fn deliver(
    events: &[EngineEvent],
    sinks: &mut HashMap<RequestId, Sink>,
    metrics: &Metrics,
    dead: &mut Vec<RequestId>,
) {
    let mut i = 0;
    while i < events.len() {
        match events[i] {
            EngineEvent::Token { id, index } => {
                // The core emits `Finished` right after a request's last token.
                let end = match events.get(i + 1) {
                    Some(&EngineEvent::Finished {
                        id: fid,
                        reason,
                        usage,
                    }) if fid == id => Some((reason, usage)),
                    _ => None,
                };
                if let Some(sink) = sinks.get(&id) {
                    if index == 0 {
                        metrics.observe_ttft(sink.arrived.elapsed().as_secs_f64());
                    }
                    let msg = match end {
                        Some((reason, usage)) => Out::Last(index, reason, usage),
                        None => Out::Token(index),
                    };
                    let gone = sink.tx.send(msg).is_err();
                    if let Some((reason, _)) = end {
                        metrics.observe_finished(reason, sink.arrived.elapsed().as_secs_f64());
                        sinks.remove(&id);
                    } else if gone {
                        sinks.remove(&id);
                        dead.push(id);
                    }
                }
                i += if end.is_some() { 2 } else { 1 };
            }
            EngineEvent::Finished { id, .. } => {
                sinks.remove(&id);
                i += 1;
            }
            EngineEvent::Preempted { .. } => i += 1,
        }
    }
}

// ----- handlers -----

async fn health() -> StatusCode {
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

async fn get_fault(State(s): State<Arc<Shared>>) -> Response {
    let fault = *s.fault.borrow();
    json_response(StatusCode::OK, fault.to_json().to_string())
}

async fn post_fault(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(&headers, body, 64 * 1024).await {
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

async fn chat_completions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    generate(s, Endpoint::Chat, headers, body).await
}

async fn completions(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    generate(s, Endpoint::Completion, headers, body).await
}

/// Aborts the request in the engine if the handler or its response stream is dropped
/// before the request finished (the client went away).
struct AbortGuard {
    id: RequestId,
    cmd: mpsc::UnboundedSender<Cmd>,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmd.send(Cmd::Abort(self.id));
        }
    }
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
    if req.n > 1 {
        let mut e = ApiError::invalid(
            "n > 1 is not supported by the simulated engine: send one request per choice",
            Some("n"),
        );
        e.code = Some("unsupported_parameter");
        return error_response(&e);
    }
    if let Some(p) = &s.poison {
        if contains(&bytes, p.as_bytes()) {
            tracing::error!("poison request: the engine hangs");
            s.fault.send_replace(Fault::Hang);
        }
    }
    if let Fault::Errors(rate) = *s.fault.borrow() {
        let draw = s.error_draws.fetch_add(1, Ordering::Relaxed);
        let u = (mix64(s.seed ^ 0xE770_0000_0000_0000 ^ draw) >> 11) as f64 / (1u64 << 53) as f64;
        if u < rate {
            return error_response(&ApiError::new(
                500,
                "InternalServerError",
                "injected fault: the simulated engine failed this request",
            ));
        }
    }
    let prompt = req.prompt.tokens();
    let prompt_len = prompt.len();
    if prompt_len == 0 {
        return error_response(&ApiError::invalid(
            "the prompt must contain at least one token",
            Some(if endpoint == Endpoint::Chat {
                "messages"
            } else {
                "prompt"
            }),
        ));
    }
    let max_model_len = s.params.max_model_len as usize;
    let max_tokens = match req.max_tokens {
        Some(m) => m,
        None => max_model_len
            .saturating_sub(prompt_len)
            .min(u32::MAX as usize) as u32,
    };
    if max_tokens == 0 {
        return error_response(&ApiError::invalid(
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, your prompt \
                 has {prompt_len} tokens, which leaves no room for the completion."
            ),
            Some(if endpoint == Endpoint::Chat {
                "messages"
            } else {
                "prompt"
            }),
        ));
    }
    let output_len = if req.ignore_eos {
        max_tokens
    } else {
        natural_output_len(&prompt, s.seed)
    };
    let target = max_tokens.min(output_len).max(1);
    if let Err(e) = check_limits(&s.params, prompt_len, max_tokens, target) {
        return error_response(&ApiError::invalid(e.to_string(), None));
    }

    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let id = RequestId(n);
    let seed = mix64(s.seed ^ mix64(n));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let engine_req = EngineRequest {
        id,
        prompt,
        max_tokens,
        output_len,
        priority: req.priority,
        seed,
        hash_root: req
            .cache_salt
            .as_deref()
            .map_or(crate::kv::ROOT_HASH, crate::core::salted_root),
    };
    let sink = Sink {
        tx,
        arrived: Instant::now(),
    };
    if s.cmd
        .send(Cmd::Add {
            req: engine_req,
            sink,
        })
        .is_err()
    {
        return error_response(&ApiError::new(
            503,
            "ServiceUnavailableError",
            "the engine is shutting down",
        ));
    }
    let mut guard = AbortGuard {
        id,
        cmd: s.cmd.clone(),
        armed: true,
    };
    let fmt = Format {
        endpoint,
        head: response_head(&s, endpoint, n, req.stream),
        seed,
    };

    // Nothing is sent until the first token: a hung engine sends no bytes at all.
    let first = match rx.recv().await {
        Some(Out::Rejected(msg)) => {
            guard.armed = false;
            return error_response(&ApiError::invalid(msg, None));
        }
        Some(m) => m,
        None => return engine_gone(),
    };

    if req.stream {
        let stream = SseStream {
            rx,
            pending: Some(first),
            fmt,
            include_usage: req.include_usage,
            sent: 0,
            done: false,
            guard,
        };
        let mut resp = Response::new(Body::from_stream(stream));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }

    let mut text = String::with_capacity(target as usize * 5);
    let mut msg = first;
    loop {
        match msg {
            Out::Token(i) => text.push_str(output_word(seed, i)),
            Out::Last(i, reason, usage) => {
                text.push_str(output_word(seed, i));
                guard.armed = false;
                return json_response(StatusCode::OK, fmt.full_body(&text, reason, usage));
            }
            Out::Rejected(m) => {
                guard.armed = false;
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
    error_response(&ApiError::new(
        500,
        "InternalServerError",
        "the engine dropped the request",
    ))
}

/// `{"id":…,"object":…,"created":…,"model":…,"choices":` — the common head of every
/// response object of a request.
fn response_head(s: &Shared, endpoint: Endpoint, n: u64, stream: bool) -> String {
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
    let _ = write!(
        head,
        "{{\"id\":\"{prefix}-{:016x}{:08x}\",\"object\":\"{object}\",\"created\":{created},\"model\":{},\"choices\":",
        mix64(s.seed ^ n),
        n & 0xffff_ffff,
        s.model_json
    );
    head
}

struct Format {
    endpoint: Endpoint,
    head: String,
    seed: u64,
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
    fn full_body(&self, text: &str, reason: FinishReason, usage: Usage) -> String {
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
    fn token_chunk(
        &self,
        out: &mut Vec<u8>,
        index: u32,
        first: bool,
        finish: Option<FinishReason>,
    ) {
        let word = output_word(self.seed, index);
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

    fn usage_chunk(&self, out: &mut Vec<u8>, usage: &Usage) {
        let mut s = String::with_capacity(self.head.len() + 160);
        s.push_str("data: ");
        s.push_str(&self.head);
        s.push_str("[],\"usage\":");
        usage_json(&mut s, usage);
        s.push_str("}\n\n");
        out.extend_from_slice(s.as_bytes());
    }
}

/// The SSE body of a streaming response: one chunk per token (those available when
/// polled are written together), the usage chunk if asked for, then `[DONE]`.
struct SseStream {
    rx: mpsc::UnboundedReceiver<Out>,
    pending: Option<Out>,
    fmt: Format,
    include_usage: bool,
    sent: u32,
    done: bool,
    guard: AbortGuard,
}

impl SseStream {
    fn render(&mut self, msg: Out, out: &mut Vec<u8>) {
        match msg {
            Out::Token(i) => {
                self.fmt.token_chunk(out, i, self.sent == 0, None);
                self.sent += 1;
            }
            Out::Last(i, reason, usage) => {
                self.fmt.token_chunk(out, i, self.sent == 0, Some(reason));
                self.sent += 1;
                if self.include_usage {
                    self.fmt.usage_chunk(out, &usage);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
                self.guard.armed = false;
            }
            Out::Rejected(m) => {
                let e = ApiError::new(500, "InternalServerError", m);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(e.body().as_bytes());
                out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
                self.done = true;
                self.guard.armed = false;
            }
        }
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        if let Some(m) = this.pending.take() {
            this.render(m, &mut out);
        }
        while !this.done && out.len() < 64 * 1024 {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(m)) => this.render(m, &mut out),
                Poll::Ready(None) => {
                    this.render(
                        Out::Rejected("the engine dropped the request".into()),
                        &mut out,
                    );
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Bytes::from(out))))
    }
}

// ----- helpers -----

/// Reads a request body of at most `limit` bytes: 413 beyond it, 400 if unreadable.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            format!("request body is larger than the limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::invalid(
            format!("could not read the request body: {e}"),
            None,
        )),
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, e.body()).into_response()
}
