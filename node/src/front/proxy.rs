//! Forwarding one request: place it, send it, retry once elsewhere if the connection
//! fails before anything reached the client, stream the answer back while metering it.

use super::sse::{body_usage, SseMeter};
use super::{error_response, header_str, AppState, Target, Upstream};
use crate::cluster::forward::{self, UpstreamBody};
use crate::cluster::rpc::ForwardRequest;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use sluice_actors::lifecycle::{Broke, Fail, Lifecycle, Next};
use sluice_actors::prober::RetryBudget;
use sluice_actors::router::quarantine::fingerprint;
use sluice_actors::router::{workload_key, Admission, KeyInputs, PromptBlocks, RouterCore, Usage};
use sluice_actors::slice::ReplicaId;
use sluice_engine::openai::{read_for_routing, ApiError, Endpoint};
use std::sync::Arc;
use std::time::Instant;

/// Frees the request's in-flight MU however its handling ends — completion, error, or
/// the client going away (the response body is dropped).
struct Inflight {
    state: Arc<AppState>,
    life: Lifecycle,
    usage: Option<Usage>,
}

impl Inflight {
    /// The replica failed while it held the request (it hung, broke off its answer or
    /// went silent).
    fn broke(&mut self, how: Broke) -> Fail {
        let now = self.state.now_ms();
        self.life.failed_holding(how, &mut self.state.core(), now)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let usage = self.usage.take();
        self.life.finish(&mut self.state.core(), usage);
    }
}

/// Runs `f` on the router core and the retry budget together, always locked in this
/// order.
fn with_core_and_budget<R>(
    state: &AppState,
    f: impl FnOnce(&mut RouterCore, &mut RetryBudget) -> R,
) -> R {
    let mut core = state.core();
    let mut budget = state.retry_budget.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut core, &mut budget)
}

/// The client's error for a request the lifecycle failed; `message` replaces the core's
/// where the shell knows more.
fn failure(fail: Fail, message: Option<String>) -> Failure {
    let message = message.unwrap_or_else(|| fail.to_string());
    let mut e = ApiError::new(fail.status(), fail.error_type(), message);
    if let Some(code) = fail.code() {
        e = e.with_code(code);
    }
    (e, fail.retry_after_s())
}

fn label(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "chat",
        Endpoint::Completion => "completions",
    }
}

pub async fn handle(state: Arc<AppState>, endpoint: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let resp = match forward(&state, endpoint, req, started).await {
        Ok(r) => r,
        Err((e, retry_after)) => {
            if e.status >= 500 {
                tracing::warn!(status = e.status, error = %e.message, "request failed");
            }
            error_response(&e, retry_after)
        }
    };
    state
        .metrics
        .request(label(endpoint), resp.status().as_u16());
    resp
}

type Failure = (ApiError, Option<u32>);

async fn forward(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    req: Request,
    started: Instant,
) -> Result<Response, Failure> {
    if !state.caught_up() {
        // Without the control state this node knows no tenant keys: admitting requests
        // now would leave the door open on a cluster that has tenants.
        return Err((
            ApiError::new(
                503,
                "service_unavailable",
                "this node has not yet applied the cluster's control state; retry shortly"
                    .to_owned(),
            )
            .with_code("node_catching_up"),
            Some(1),
        ));
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, state.config.max_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err((
                ApiError::new(
                    413,
                    "invalid_request_error",
                    format!("request body exceeds {} bytes", state.config.max_body_bytes),
                ),
                None,
            ))
        }
        Err(e) => {
            return Err((
                ApiError::invalid(format!("could not read request body: {e}"), None),
                None,
            ))
        }
    };
    let parsed = read_for_routing(endpoint, &body).map_err(|e| (e, None))?;
    let served = state.served();
    if !served.serves(&parsed.model) {
        return Err(match &served.model {
            Some(ours) => (
                ApiError::new(
                    404,
                    "invalid_request_error",
                    format!(
                        "The model `{}` does not exist. This node serves `{ours}`.",
                        parsed.model
                    ),
                )
                .with_code("model_not_found"),
                None,
            ),
            None => (
                ApiError::new(
                    503,
                    "service_unavailable",
                    "no engine has said which model it serves yet (they may still be loading)",
                ),
                Some(1),
            ),
        });
    }
    drop(served);
    let api_key =
        header_str(&parts.headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    let workload = workload_key(
        &state.config.key_sources,
        &KeyInputs {
            header: |h: &str| header_str(&parts.headers, h),
            user: parsed.user.as_deref(),
            api_key,
        },
    );
    let blocks = PromptBlocks::of_bytes(&parsed.content);
    let mut admission = Admission {
        workload,
        blocks: &blocks,
        input_tokens: u32::try_from(parsed.prompt_tokens).unwrap_or(u32::MAX),
        images: parsed.images,
        max_tokens: parsed.max_tokens,
        // Every prompt of a batch gets its `n` completions.
        n: parsed.n.saturating_mul(parsed.prompts),
        fingerprint: Some(fingerprint(&body)),
        radius: None,
    };
    // Who is asking, and whether there is room: before anything is placed.
    let cost = state.core().quote(&admission);
    let pass = state.gate(api_key, cost)?;
    admission.radius = pass.radius;
    let begun = with_core_and_budget(state, |core, budget| {
        Lifecycle::begin(core, budget, &admission, state.now_ms())
    });
    let (life, mut placement) = begun.map_err(|f| {
        if let Fail::Quarantined { .. } = f {
            state.metrics.quarantined();
        }
        failure(f, None)
    })?;
    let mut guard = Inflight {
        state: state.clone(),
        life,
        usage: None,
    };
    let body = super::tenancy::engine_body(&body, &pass, parsed.stream && !parsed.include_usage);
    let tenant = pass.tenant;
    let deadline = tokio::time::Instant::from_std(started + state.config.request_timeout);

    let resp = loop {
        if placement.spilled {
            state.metrics.spill();
        }
        state.metrics.routed(placement.replica.0);
        let upstream = state
            .upstream(placement.replica)
            .ok_or_else(|| failure(Fail::NoReplica, None))?;
        match tokio::time::timeout_at(deadline, send(state, &upstream, endpoint, &body)).await {
            Ok(Ok(resp)) => break resp,
            Ok(Err(e)) => {
                state.metrics.upstream_failure(placement.replica.0);
                let retried = guard.life.retried();
                tracing::warn!(replica = placement.replica.0, error = %e.message, delivered = e.delivered, retried, "upstream failed before answering");
                let next = with_core_and_budget(state, |core, budget| {
                    guard
                        .life
                        .failed_before_answer(e.delivered, core, budget, state.now_ms())
                });
                if guard.life.retried() && !retried {
                    // Counted once the budget grants it, whether or not a replica is left.
                    state.metrics.retry();
                }
                match next {
                    Next::Retry(p) => placement = p,
                    Next::Fail(f) => return Err(failure(f, None)),
                }
            }
            Err(_) => return Err(timeout(state, &mut guard)),
        }
    };
    state
        .metrics
        .first_byte(label(endpoint), started.elapsed().as_secs_f64());

    let status = resp.status();
    let is_stream = parsed.stream
        && status.is_success()
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let replica = placement.replica;
    if is_stream {
        return Ok(stream_response(
            state.clone(),
            guard,
            resp,
            Metered {
                replica,
                endpoint,
                started,
                tenant,
                model: parsed.model,
                strip_usage: !parsed.include_usage,
            },
        ));
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match tokio::time::timeout_at(deadline, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let f = guard.broke(Broke::Answer);
            state.metrics.upstream_failure(replica.0);
            return Err(failure(f, Some(format!("{f}: {e}"))));
        }
        Err(_) => return Err(timeout(state, &mut guard)),
    };
    if status.is_success() {
        guard.usage = body_usage(&bytes);
        state.metered(
            replica,
            &parsed.model,
            tenant.as_deref(),
            guard.usage.as_ref(),
        );
    }
    drop(guard);
    state.real_outcome(replica, Some(status.as_u16()));
    state
        .metrics
        .duration(label(endpoint), started.elapsed().as_secs_f64());
    if let Some(t) = &tenant {
        state
            .metrics
            .tenant_duration(t, started.elapsed().as_secs_f64());
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    h.insert("x-sluice-replica", HeaderValue::from(replica.0));
    Ok(out)
}

/// Why no answer head came back from a replica.
struct SendError {
    message: String,
    /// The engine took the request before it failed (it may be the request's doing);
    /// otherwise nothing reached it.
    delivered: bool,
}

impl SendError {
    fn before(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            delivered: false,
        }
    }
}

/// Sends the request to `upstream`: over HTTP to a local engine, over QUIC through the
/// node that runs a remote one. An error means no answer came back (safe to retry).
async fn send(
    state: &AppState,
    upstream: &Upstream,
    endpoint: Endpoint,
    body: &Bytes,
) -> Result<hyper::Response<UpstreamBody>, SendError> {
    match &upstream.target {
        Target::Local {
            chat_uri,
            completions_uri,
            ..
        } => {
            let uri = match endpoint {
                Endpoint::Chat => chat_uri,
                Endpoint::Completion => completions_uri,
            };
            let request = hyper::Request::post(uri.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| SendError::before(format!("bad upstream request: {e}")))?;
            let resp = state.client.request(request).await.map_err(|e| SendError {
                delivered: !e.is_connect(),
                message: e.to_string(),
            })?;
            Ok(resp.map(|b| b.map_err(std::io::Error::other).boxed_unsync()))
        }
        Target::Remote { node } => {
            let client = state
                .remote
                .as_ref()
                .ok_or_else(|| SendError::before("no cluster transport for a remote replica"))?;
            let req = ForwardRequest {
                replica: upstream.id,
                path: match endpoint {
                    Endpoint::Chat => "/v1/chat/completions",
                    Endpoint::Completion => "/v1/completions",
                }
                .to_owned(),
                body: body.to_vec(),
            };
            forward::call(client, *node, req, state.config.request_timeout)
                .await
                .map_err(|e| SendError {
                    delivered: !matches!(e, forward::ForwardError::Unreachable(_)),
                    message: e.to_string(),
                })
        }
    }
}

/// The request's deadline passed while its replica held it.
fn timeout(state: &AppState, guard: &mut Inflight) -> Failure {
    let replica = guard.life.replica();
    let f = guard.broke(Broke::Deadline);
    state.metrics.upstream_failure(replica.0);
    let message = format!(
        "the replica did not answer within {:?}",
        state.config.request_timeout
    );
    failure(f, Some(message))
}

/// Who a stream's tokens are metered to.
struct Metered {
    replica: ReplicaId,
    endpoint: Endpoint,
    started: Instant,
    tenant: Option<String>,
    /// The model as the request named it.
    model: String,
    /// The client did not ask for usage: the engine's usage event is not passed on.
    strip_usage: bool,
}

/// Passes the upstream SSE stream through, metering tokens as they go (and taking out
/// the usage event the client did not ask for). A stream that goes silent past the
/// idle timeout or breaks ends with an explicit error event, never a silent cut.
fn stream_response(
    state: Arc<AppState>,
    guard: Inflight,
    resp: hyper::Response<UpstreamBody>,
    m: Metered,
) -> Response {
    struct Pump {
        body: UpstreamBody,
        meter: SseMeter,
        guard: Inflight,
        finished: bool,
        /// The request's outcome is accounted (at `[DONE]`, before the body ends).
        settled: bool,
        m: Metered,
    }
    impl Pump {
        /// Meters and accounts a stream the engine finished (`[DONE]`, or an error
        /// event). Done as soon as it is seen: a client that hangs up right after
        /// `[DONE]` drops the stream before the upstream body's end is polled.
        fn settle(&mut self) {
            if self.settled {
                return;
            }
            self.settled = true;
            let state = self.guard.state.clone();
            let took = self.m.started.elapsed().as_secs_f64();
            state.metrics.duration(label(self.m.endpoint), took);
            if let Some(t) = &self.m.tenant {
                state.metrics.tenant_duration(t, took);
            }
            if self.meter.done {
                state.metered(
                    self.m.replica,
                    &self.m.model,
                    self.m.tenant.as_deref(),
                    self.meter.usage.as_ref(),
                );
            }
            self.guard.usage = self.meter.usage;
            state.real_outcome(self.m.replica, self.meter.done.then_some(200));
        }
    }
    let idle = state.config.stream_idle_timeout;
    let replica = m.replica;
    let pump = Pump {
        body: resp.into_body(),
        meter: if m.strip_usage {
            SseMeter::stripping_usage()
        } else {
            SseMeter::default()
        },
        guard,
        finished: false,
        settled: false,
        m,
    };
    let stream = futures_util::stream::unfold(pump, move |mut p| async move {
        if p.finished {
            return None;
        }
        loop {
            match tokio::time::timeout(idle, p.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let Ok(first) = frame.into_data() else {
                        continue;
                    };
                    // Send every frame that is already here as one write, and meter
                    // and account them once: one syscall and one lock per batch, not
                    // per token.
                    let data = coalesce_ready(&mut p.body, first);
                    let before = p.meter.tokens;
                    let data = p.meter.pass(data);
                    if p.meter.tokens != before {
                        p.guard
                            .state
                            .core()
                            .progress(p.guard.life.id(), p.meter.tokens);
                    }
                    if p.meter.done {
                        p.settle();
                    }
                    if data.is_empty() {
                        // Held back until its event is complete, or the usage event.
                        continue;
                    }
                    return Some((Ok::<Bytes, std::io::Error>(data), p));
                }
                Ok(None) => {
                    p.finished = true;
                    if p.meter.done || p.meter.error {
                        p.settle();
                        return None;
                    }
                    // The replica closed the stream without finishing it.
                    let state = p.guard.state.clone();
                    let took = p.m.started.elapsed().as_secs_f64();
                    state.metrics.duration(label(p.m.endpoint), took);
                    if let Some(t) = &p.m.tenant {
                        state.metrics.tenant_duration(t, took);
                    }
                    let f = p.guard.broke(Broke::Answer);
                    return Some((Ok(error_event(f, "the replica ended the stream early")), p));
                }
                // Finished and accounted: what the engine does after `[DONE]` (a
                // break, or holding the connection open) is no failure of this request.
                Ok(Some(Err(_))) | Err(_) if p.settled => return None,
                Ok(Some(Err(e))) => {
                    p.finished = true;
                    let f = p.guard.broke(Broke::Answer);
                    p.guard.state.metrics.upstream_failure(p.m.replica.0);
                    let message = format!("the replica's stream broke: {e}");
                    return Some((Ok(error_event(f, &message)), p));
                }
                Err(_) => {
                    p.finished = true;
                    let f = p.guard.broke(Broke::Answer);
                    p.guard.state.metrics.upstream_failure(p.m.replica.0);
                    let message = format!("the replica sent nothing for {idle:?}");
                    return Some((Ok(error_event(f, &message)), p));
                }
            }
        }
    });
    let mut out = Response::new(Body::from_stream(stream));
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-sluice-replica", HeaderValue::from(replica.0));
    out
}

/// `first` followed by the data frames `body` can yield without waiting. The end of the
/// body is seen again by the next poll; an error taken here leaves a body that ended
/// without `[DONE]`, which the pump answers with an explicit error event.
fn coalesce_ready(body: &mut UpstreamBody, first: Bytes) -> Bytes {
    use futures_util::FutureExt;
    use hyper::body::Body as _;
    let mut more: Option<bytes::BytesMut> = None;
    while !body.is_end_stream() {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Ok(d) = frame.into_data() {
                    more.get_or_insert_with(|| bytes::BytesMut::from(&first[..]))
                        .extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    more.map_or(first, bytes::BytesMut::freeze)
}

/// An SSE error event in the shape OpenAI clients raise on.
fn error_event(fail: Fail, message: &str) -> Bytes {
    let e = ApiError::new(fail.status(), fail.error_type(), message);
    Bytes::from(format!("data: {}\n\n", e.body()))
}
