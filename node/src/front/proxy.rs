//! Forwarding one request: place it, send it, retry once elsewhere if the connection
//! fails before anything reached the client, stream the answer back while metering it.

use super::handoff::{self, HandedOff};
use super::probe::StallAlarm;
use super::request_id::{self, RequestId};
use super::sse::body_usage;
use super::stream::{is_event_stream, pass_stream, stream_response, Metered};
use super::{error_response, header_str, AppState, Fleets, Target, Upstream};
use crate::cluster::forward::{self, UpstreamBody};
use crate::cluster::rpc::{ForwardRequest, NodeRpc};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use sluice_actors::lifecycle::{Broke, Fail, Lifecycle, Next, Refusal};
use sluice_actors::prober::RetryBudget;
use sluice_actors::router::quarantine::fingerprint;
use sluice_actors::router::{
    workload_key, Admission, KeyInputs, Placement, PromptBlocks, RouterCore, Unserved, Usage,
};
use sluice_engine::openai::{read_for_passthrough, read_for_routing, ApiError, Endpoint};
use std::sync::Arc;
use std::time::Instant;

/// Frees the request's in-flight MU however its handling ends — completion, error, or
/// the client going away (the response body is dropped).
pub(super) struct Inflight {
    pub state: Arc<AppState>,
    pub life: Lifecycle,
    pub usage: Option<Usage>,
}

impl Inflight {
    /// The replica failed while it held the request (it hung, broke off its answer or
    /// went silent), and the request is not to be moved.
    pub fn broke(&mut self, how: Broke) -> Fail {
        let now = self.state.now_ms();
        self.life.failed_holding(how, &mut self.state.core(), now)
    }

    /// The replica failed while it held the request: its placement on another replica
    /// if the lifecycle moves it (`resumable`: the engine can continue it faithfully).
    pub fn migrate(&mut self, how: Broke, resumable: bool) -> Result<Placement, Refusal> {
        let now = self.state.now_ms();
        let mut core = self.state.core();
        let mut budget = self.state.migrations();
        self.life
            .failed_midway(how, resumable, &mut core, &mut budget, now)
    }

    /// The node serving the attempt went silent before any answer came back (the
    /// lifecycle's rule, over the door's retry and migration budgets, locked in that
    /// order after the core).
    pub fn node_lost(&mut self) -> Next {
        let now = self.state.now_ms();
        let mut core = self.state.core();
        let mut budget = self.state.retry_budget();
        let mut moves = self.state.migrations();
        self.life
            .node_lost_before_answer(&mut core, &mut budget, &mut moves, now)
    }

    /// Whether a word that its replica is hung moves the request while no answer has
    /// come back (the lifecycle's rule, over the door's retry budget).
    pub fn moves_on_stall_word(&self) -> bool {
        let now = self.state.now_ms();
        let core = self.state.core();
        let budget = self.state.retry_budget();
        self.life.moves_on_stall_word(&core, &budget, now)
    }

    /// Whether such a word moves the request once its answer is under way (the
    /// lifecycle's rule, over the door's migration budget).
    pub fn moves_midway_on_stall_word(&self, resumable: bool) -> bool {
        let now = self.state.now_ms();
        let core = self.state.core();
        let budget = self.state.migrations();
        self.life
            .moves_midway_on_stall_word(resumable, &core, &budget, now)
    }

    /// The request ended without usage (the engine answered with an error).
    pub fn finish(&mut self) {
        self.life.finish(&mut self.state.core(), None);
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut core = self.state.core();
        match self.usage.take() {
            Some(usage) => self.life.completed(&mut core, usage, self.state.now_ms()),
            None => self.life.finish(&mut core, None),
        }
    }
}

/// Runs `f` on the router core and the retry budget together, always locked in this
/// order.
fn with_core_and_budget<R>(
    state: &AppState,
    f: impl FnOnce(&mut RouterCore, &mut RetryBudget) -> R,
) -> R {
    let mut core = state.core();
    let mut budget = state.retry_budget();
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

/// Where a request goes on the engine: an endpoint Sluice reads, or another `/v1/` path
/// passed through as it came (priced by its size, answered as the engine answers).
#[derive(Debug, Clone)]
pub enum Route {
    Api(Endpoint),
    Other(Arc<str>),
}

impl Route {
    pub fn path(&self) -> &str {
        match self {
            Route::Api(e) => e.path(),
            Route::Other(p) => p,
        }
    }

    /// Its name in metrics (bounded: every other path is `other`).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Api(e) => e.label(),
            Route::Other(_) => "other",
        }
    }
}

/// Whether `path` may be passed through to an engine: under `/v1/`, of plain URL
/// characters, with no way out of it (no `..`, no empty segment).
pub fn passable(path: &str) -> bool {
    path.len() <= 200
        && path.strip_prefix("/v1/").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        })
}

pub async fn handle(fleets: Arc<Fleets>, route: Route, req: Request) -> Response {
    let started = Instant::now();
    // Named by the front door's layer; a handler called without it names its own.
    let id = req
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    let resp = match forward(&fleets, &route, req, &id, started).await {
        Ok(r) => r,
        Err((e, retry_after)) => {
            if e.status >= 500 {
                tracing::warn!(status = e.status, error = %e.message, "request failed");
            }
            error_response(&e, retry_after)
        }
    };
    fleets
        .metrics()
        .request(route.label(), resp.status().as_u16());
    resp
}

type Failure = (ApiError, Option<u32>);

async fn forward(
    fleets: &Arc<Fleets>,
    route: &Route,
    req: Request,
    id: &RequestId,
    started: Instant,
) -> Result<Response, Failure> {
    // Node-wide: every fleet has the same door settings and catch-up.
    let door = fleets.first();
    if !door.caught_up() {
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
    let body = match Limited::new(body, door.config.max_body_bytes)
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
                    format!("request body exceeds {} bytes", door.config.max_body_bytes),
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
    let mut parsed = match route {
        Route::Api(endpoint) => read_for_routing(*endpoint, &body),
        Route::Other(_) => read_for_passthrough(&body),
    }
    .map_err(|e| (e, None))?;
    // The API's readers require a model; a passed-through request that names none is
    // the engines' to judge (the first fleet's).
    let api_key =
        header_str(&parts.headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    // Node-wide, like the door's other settings.
    let workload = workload_key(
        &door.config.key_sources,
        &KeyInputs {
            header: |h: &str| header_str(&parts.headers, h),
            user: parsed.user.as_deref(),
            api_key,
        },
    );
    let state = match fleets.choose(&parsed.model) {
        Ok(state) => state,
        // A model only other nodes of the cluster route: theirs to route.
        Err(Unserved::Unknown(ours)) if parts.extensions.get::<HandedOff>().is_none() => {
            let handed =
                handoff::send(fleets, route, &parsed, &parts.headers, &body, id, workload).await?;
            return handed.ok_or_else(|| fleets.refusal(&parsed.model, Unserved::Unknown(ours)));
        }
        Err(why) => return Err(fleets.refusal(&parsed.model, why)),
    };
    if parsed.model.is_empty() {
        // Metered under the model the fleet serves.
        parsed.model = state.served().model.clone().unwrap_or_default();
    }
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
        stream: parsed.stream,
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
    // A stream's usage is what meters it: chat and completions send it only when asked
    // (a response's last event always has it).
    let ask_usage = parsed.stream
        && !parsed.include_usage
        && matches!(route, Route::Api(Endpoint::Chat | Endpoint::Completion));
    let body = super::tenancy::engine_body(&body, &pass, ask_usage);
    let tenant = pass.tenant;
    let deadline = tokio::time::Instant::from_std(started + state.config.request_timeout);

    // An answer sent whole that breaks before it is all here has reached no client:
    // it is sent again, whole, to another replica (the same migration as a stream's).
    let mut first_byte = true;
    // A replica found hung from its streams gives up the requests it holds here too.
    let mut alarm = state.stall_alarm();
    let (status, content_type, bytes, replica) = loop {
        let resp = answer_head(
            state,
            &mut guard,
            &mut placement,
            &mut alarm,
            deadline,
            (route, id),
            &body,
        )
        .await?;
        if std::mem::take(&mut first_byte) {
            state
                .metrics
                .first_byte(route.label(), started.elapsed().as_secs_f64());
        }
        let status = resp.status();
        let is_stream = parsed.stream && status.is_success() && is_event_stream(&resp);
        if is_stream {
            let Route::Api(endpoint) = route else {
                return Ok(pass_stream(guard, resp, placement.replica));
            };
            return Ok(stream_response(
                state.clone(),
                guard,
                resp,
                Metered {
                    replica: placement.replica,
                    endpoint: *endpoint,
                    started,
                    tenant,
                    model: parsed.model,
                    strip_usage: ask_usage,
                    body,
                    prompt_tokens: admission.input_tokens,
                    deadline,
                    request_id: id.clone(),
                },
            ));
        }
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let collected = AppState::unless_moved(
            tokio::time::timeout_at(deadline, resp.into_body().collect()),
            &mut alarm,
            placement.replica,
            || guard.moves_midway_on_stall_word(true),
        )
        .await;
        let collected = match collected {
            Some(c) => c.map(|r| {
                r.map_err(|e| {
                    if forward::node_lost(&e) {
                        (Broke::NodeLost, "node_lost", e.to_string())
                    } else {
                        (Broke::Answer, "answer_lost", e.to_string())
                    }
                })
            }),
            None => Ok(Err((
                Broke::Hung,
                "stalled",
                "the replica was taken for hung".to_owned(),
            ))),
        };
        match collected {
            Ok(Ok(b)) => break (status, content_type, b.to_bytes(), placement.replica),
            Ok(Err((broke, reason, e))) => {
                state.metrics.upstream_failure(placement.replica.0);
                match guard.migrate(broke, true) {
                    Ok(p) => {
                        state
                            .metrics
                            .migrated(reason, placement.replica.0, p.replica.0);
                        tracing::info!(from = placement.replica.0, to = p.replica.0, error = %e, "sending a broken answer's request again elsewhere");
                        placement = p;
                    }
                    Err(r) => {
                        state.metrics.migration_refused(r.why.label());
                        return Err(failure(r.fail, Some(format!("{}: {e}", r.fail))));
                    }
                }
            }
            Err(_) => return Err(timeout(state, &mut guard)),
        }
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
        .duration(route.label(), started.elapsed().as_secs_f64());
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

/// Sends the request to its placement until an answer head comes back: a call that
/// fails first (or whose replica is found hung meanwhile) is retried once elsewhere
/// while the lifecycle allows; `placement` is where the head came from.
async fn answer_head(
    state: &Arc<AppState>,
    guard: &mut Inflight,
    placement: &mut Placement,
    alarm: &mut StallAlarm,
    deadline: tokio::time::Instant,
    (route, id): (&Route, &RequestId),
    body: &Bytes,
) -> Result<hyper::Response<UpstreamBody>, Failure> {
    loop {
        if placement.spilled {
            state.metrics.spill();
        }
        state.metrics.routed(placement.replica.0);
        let upstream = state
            .upstream(placement.replica)
            .ok_or_else(|| failure(Fail::NoReplica, None))?;
        // A request whose retry would be refused is not moved by a word (see the
        // lifecycle).
        let sent = AppState::unless_moved(
            tokio::time::timeout_at(deadline, send(state, &upstream, route, id, body)),
            alarm,
            placement.replica,
            || guard.moves_on_stall_word(),
        )
        .await
        .unwrap_or(Ok(Err(SendError {
            message: "the replica was taken for hung (every stream on it stopped)".to_owned(),
            delivered: true,
            node_lost: false,
        })));
        match sent {
            Ok(Ok(resp)) => return Ok(resp),
            Ok(Err(e)) => {
                state.metrics.upstream_failure(placement.replica.0);
                let retried = guard.life.retried();
                tracing::warn!(replica = placement.replica.0, error = %e.message, delivered = e.delivered, node_lost = e.node_lost, retried, "upstream failed before answering");
                let moved = guard.life.migrations();
                let next = if e.node_lost {
                    guard.node_lost()
                } else {
                    with_core_and_budget(state, |core, budget| {
                        guard
                            .life
                            .failed_before_answer(e.delivered, core, budget, state.now_ms())
                    })
                };
                if guard.life.retried() && !retried {
                    // Counted once the budget grants it, whether or not a replica is left.
                    state.metrics.retry();
                }
                if let (true, Next::Retry(p)) = (guard.life.migrations() > moved, &next) {
                    state
                        .metrics
                        .migrated("node_lost", placement.replica.0, p.replica.0);
                }
                match next {
                    Next::Retry(p) => *placement = p,
                    Next::Fail(f) => return Err(failure(f, None)),
                }
            }
            Err(_) => return Err(timeout(state, guard)),
        }
    }
}

/// Why no answer head came back from a replica.
pub(super) struct SendError {
    pub message: String,
    /// The engine took the request before it failed (it may be the request's doing);
    /// otherwise nothing reached it.
    delivered: bool,
    /// The node serving the replica went silent (killed, cut off): the fleet's fault,
    /// whether or not the request reached it.
    node_lost: bool,
}

impl SendError {
    fn before(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            delivered: false,
            node_lost: false,
        }
    }
}

/// Sends the request to `upstream`: over HTTP to a local engine (as one attempt of
/// request `id`), over QUIC through the node that runs a remote one (which names the
/// attempt). An error means no answer came back (safe to retry).
pub(super) async fn send(
    state: &AppState,
    upstream: &Upstream,
    route: &Route,
    id: &RequestId,
    body: &Bytes,
) -> Result<hyper::Response<UpstreamBody>, SendError> {
    match &upstream.target {
        Target::Local { uris, base } => {
            let uri = match route {
                Route::Api(e) => uris[*e as usize].clone(),
                Route::Other(path) => format!("{base}{path}")
                    .parse()
                    .map_err(|e| SendError::before(format!("bad upstream path: {e}")))?,
            };
            let request = hyper::Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .header(request_id::HEADER, id.for_attempt())
                .body(Full::new(body.clone()))
                .map_err(|e| SendError::before(format!("bad upstream request: {e}")))?;
            let resp = state
                .engine_pool
                .request(request)
                .await
                .map_err(|e| SendError {
                    delivered: !e.is_connect(),
                    message: e.to_string(),
                    node_lost: false,
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
                path: route.path().to_owned(),
                body: body.to_vec(),
                request_id: id.as_str().to_owned(),
            };
            forward::call(client, *node, &NodeRpc::Forward(req))
                .await
                .map_err(|e| SendError {
                    delivered: !matches!(e, forward::ForwardError::Unreachable(_)),
                    node_lost: matches!(e, forward::ForwardError::Timeout(_)),
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

#[cfg(test)]
mod tests {
    use super::passable;

    #[test]
    fn only_plain_paths_under_v1_pass_through() {
        for ok in [
            "/v1/rerank",
            "/v1/score",
            "/v1/messages",
            "/v1/audio/speech",
            "/v1/a-b_c.d",
        ] {
            assert!(passable(ok), "{ok}");
        }
        for bad in [
            "/v1/",
            "/v1",
            "/v2/rerank",
            "/v1/../admin/fault",
            "/v1/a/./b",
            "/v1/a//b",
            "/v1/a%2e%2e",
            "/v1/a?b",
            "/v1/a b",
        ] {
            assert!(!passable(bad), "{bad}");
        }
        assert!(!passable(&format!("/v1/{}", "a".repeat(300))));
    }
}
