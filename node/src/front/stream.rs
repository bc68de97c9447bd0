//! A streamed answer on its way to the client: passed through as the engine writes it,
//! metered, and — when the replica serving it fails mid-answer (the stream breaks, goes
//! silent or ends early) — continued on another replica and spliced in, so that the
//! client reads one answer (token-replay migration). What cannot be continued ends with
//! an explicit error event, never a silent cut.

use super::probe::StallAlarm;
use super::proxy::{send, Inflight, Route};
use super::request_id::RequestId;
use super::sse::SseMeter;
use super::AppState;
use crate::cluster::forward::{self, UpstreamBody};
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use sluice_actors::lifecycle::{Broke, Fail, Refusal};
use sluice_actors::slice::ReplicaId;
use sluice_engine::continuation::{ending, plan, Continuation};
use sluice_engine::openai::{ApiError, Endpoint};
use std::sync::Arc;
use std::time::Instant;

/// Who a stream's tokens are metered to, and what continuing it takes.
pub(super) struct Metered {
    pub replica: ReplicaId,
    pub endpoint: Endpoint,
    pub started: Instant,
    pub tenant: Option<String>,
    /// The model as the request named it.
    pub model: String,
    /// The client did not ask for usage: the engine's usage event is not passed on.
    pub strip_usage: bool,
    /// The body the engines are sent, for a continuation.
    pub body: Bytes,
    /// The router's count of the prompt's tokens, for usage the door writes itself.
    pub prompt_tokens: u32,
    /// The request's deadline.
    pub deadline: tokio::time::Instant,
    /// Its `x-request-id`: a stream's later log lines are outside the request's span.
    pub request_id: RequestId,
}

/// How a stream's replica failed it.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The stream broke (connection lost, peer gone).
    Broke,
    /// Nothing came for the idle timeout.
    Silent,
    /// The replica closed the stream without finishing it.
    EndedEarly,
    /// Every stream on the replica stopped: it is hung.
    Stalled,
    /// The node serving the replica was lost (forwarded streams only).
    NodeLost,
}

impl Cut {
    fn label(self) -> &'static str {
        match self {
            Cut::Broke => "broke",
            Cut::Silent => "silent",
            Cut::EndedEarly => "ended_early",
            Cut::Stalled => "stalled",
            Cut::NodeLost => "node_lost",
        }
    }

    /// What the lifecycle is told: a replica taken for hung, or a node lost, implicates
    /// no request.
    fn broke(self) -> Broke {
        match self {
            Cut::Stalled => Broke::Hung,
            Cut::NodeLost => Broke::NodeLost,
            Cut::Broke | Cut::Silent | Cut::EndedEarly => Broke::Answer,
        }
    }
}

/// Longest wait for, and most of, an engine's refusal of a continuation that is read
/// into the client's error event.
const REFUSAL_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
const REFUSAL_BYTES: usize = 4096;

/// The start of a refusal's body, for the client's error event.
pub(super) async fn refusal_text(resp: hyper::Response<UpstreamBody>) -> String {
    let read = tokio::time::timeout(
        REFUSAL_READ_LIMIT,
        http_body_util::Limited::new(resp.into_body(), REFUSAL_BYTES).collect(),
    );
    match read.await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no body".to_owned(),
    }
}

pub(super) fn is_event_stream(resp: &hyper::Response<UpstreamBody>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// What became of a stream whose replica failed.
enum Rescue {
    /// It goes on from another replica.
    Continued,
    /// These last events end it (an explicit error, or the ending the door wrote).
    Ended(Bytes),
}

struct Pump {
    body: UpstreamBody,
    /// Says when replicas are found hung from their streams.
    alarm: StallAlarm,
    meter: SseMeter,
    guard: Inflight,
    finished: bool,
    /// The request's outcome is accounted (at `[DONE]`, before the body ends).
    settled: bool,
    m: Metered,
    /// When its first token passed, for the time per output token.
    first_token: Option<Instant>,
}

impl Pump {
    fn state(&self) -> Arc<AppState> {
        self.guard.state.clone()
    }

    fn record_duration(&self) {
        let state = &self.guard.state;
        let took = self.m.started.elapsed().as_secs_f64();
        state.metrics.duration(self.m.endpoint.label(), took);
        if let (Some(first), 2..) = (self.first_token, self.meter.tokens) {
            let per = first.elapsed().as_secs_f64() / f64::from(self.meter.tokens - 1);
            state.metrics.per_token(self.m.endpoint.label(), per);
        }
        if let Some(t) = &self.m.tenant {
            state.metrics.tenant_duration(t, took);
        }
    }

    /// Meters and accounts a stream the engine finished (`[DONE]`, or an error event).
    /// Done as soon as it is seen: a client that hangs up right after `[DONE]` drops the
    /// stream before the upstream body's end is polled.
    fn settle(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.record_duration();
        let state = self.state();
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

    /// The stream's replica failed it (`cut`, described by `message`): continue the
    /// answer on another replica if the lifecycle allows, else end it explicitly.
    async fn rescue(&mut self, cut: Cut, message: String) -> Rescue {
        let state = self.state();
        state.metrics.upstream_failure(self.m.replica.0);
        let body = match plan(self.m.endpoint, &self.m.body, self.meter.received()) {
            Ok(Continuation::Exhausted) => return Rescue::Ended(self.close(cut)),
            Ok(Continuation::Body(b)) => Bytes::from(b),
            Err(why) => {
                tracing::info!(request_id = %self.m.request_id, replica = self.m.replica.0, %why, "stream not continued");
                let fail = match self.guard.migrate(cut.broke(), false) {
                    Err(refused) => return self.refused(refused, &message),
                    // Not resumable is never moved; should it be, it still ends here.
                    Ok(_) => self.guard.broke(cut.broke()),
                };
                self.record_duration();
                return Rescue::Ended(self.error_event(fail, &message));
            }
        };
        let route = Route::Api(self.m.endpoint);
        let mut how = (cut, message);
        loop {
            let p = match self.guard.migrate(how.0.broke(), true) {
                Ok(p) => p,
                Err(refused) => return self.refused(refused, &how.1),
            };
            state
                .metrics
                .migrated(how.0.label(), self.m.replica.0, p.replica.0);
            state.metrics.routed(p.replica.0);
            tracing::info!(
                request_id = %self.m.request_id,
                from = self.m.replica.0,
                to = p.replica.0,
                reason = how.0.label(),
                tokens = self.meter.tokens,
                "continuing a stream on another replica"
            );
            self.m.replica = p.replica;
            let Some(upstream) = state.upstream(p.replica) else {
                how = (Cut::Broke, "the new replica is gone".to_owned());
                continue;
            };
            let guard = &self.guard;
            let sent = AppState::unless_moved(
                tokio::time::timeout_at(
                    self.m.deadline,
                    send(&state, &upstream, &route, &self.m.request_id, &body),
                ),
                &mut self.alarm,
                p.replica,
                || guard.moves_midway_on_stall_word(true),
            )
            .await;
            let Some(sent) = sent else {
                how = (
                    Cut::Stalled,
                    format!("{}; the replica continuing it was taken for hung", how.1),
                );
                continue;
            };
            match sent {
                Ok(Ok(resp)) if resp.status().is_success() && is_event_stream(&resp) => {
                    self.body = resp.into_body();
                    self.meter.splice();
                    return Rescue::Continued;
                }
                Ok(Ok(resp)) => {
                    // The engine refused the continuation itself: its word ends it.
                    let status = resp.status().as_u16();
                    let text = refusal_text(resp).await;
                    state.metrics.migration_refused("engine_refused");
                    self.guard.finish();
                    self.record_duration();
                    let e = ApiError::new(
                        502,
                        "upstream_error",
                        format!(
                            "{}; continuing it elsewhere was refused (HTTP {status}): {text}",
                            how.1
                        ),
                    );
                    return Rescue::Ended(Bytes::from(format!("data: {}\n\n", e.body())));
                }
                Ok(Err(e)) => {
                    state.metrics.upstream_failure(p.replica.0);
                    how = (
                        Cut::Broke,
                        format!("{}; continuing it failed: {}", how.1, e.message),
                    );
                }
                Err(_) => {
                    let f = self.guard.broke(Broke::Deadline);
                    self.record_duration();
                    return Rescue::Ended(self.error_event(
                        f,
                        "the request's deadline passed while it was being continued",
                    ));
                }
            }
        }
    }

    /// A migration the lifecycle refused: the stream ends with its error event.
    fn refused(&mut self, refused: Refusal, message: &str) -> Rescue {
        tracing::info!(
            request_id = %self.m.request_id,
            replica = self.m.replica.0,
            why = refused.why.label(),
            "stream not continued"
        );
        self.guard
            .state
            .metrics
            .migration_refused(refused.why.label());
        self.record_duration();
        Rescue::Ended(self.error_event(refused.fail, message))
    }

    /// The event that ends the client's stream with `fail`, in its endpoint's shape.
    fn error_event(&self, fail: Fail, message: &str) -> Bytes {
        let e = ApiError::new(fail.status(), fail.error_type(), message);
        error_event(self.m.endpoint, &self.meter, &e)
    }

    /// Ends a stream whose answer is complete but whose replica failed before closing
    /// it: the finishing chunk if none was sent, usage if the client asked, `[DONE]`.
    fn close(&mut self, cut: Cut) -> Bytes {
        self.guard.broke(cut.broke());
        self.record_duration();
        let usage = sluice_actors::router::Usage {
            prompt_tokens: self.m.prompt_tokens,
            completion_tokens: self.meter.tokens,
            cached_tokens: 0,
        };
        let out = ending_events(
            self.m.endpoint,
            &self.meter,
            &self.m.model,
            (!self.m.strip_usage).then_some(self.m.prompt_tokens),
        );
        self.guard.state.metered(
            self.m.replica,
            &self.m.model,
            self.m.tenant.as_deref(),
            Some(&usage),
        );
        self.settled = true;
        out
    }
}

/// Whether the engine could continue the stream `m` from what `meter` passed on (an
/// answer already whole needs no continuing, and is closed, not failed).
fn resumable(m: &Metered, meter: &SseMeter) -> bool {
    plan(m.endpoint, &m.body, meter.received()).is_ok()
}

/// The event that ends a client's stream of `endpoint` with `e`, after what `meter`
/// passed on.
pub(super) fn error_event(endpoint: Endpoint, meter: &SseMeter, e: &ApiError) -> Bytes {
    let event = match endpoint {
        Endpoint::Responses => e.stream_event(Endpoint::Responses, meter.next_sequence),
        // OpenAI's client raises the error chunk; no `[DONE]` follows it.
        _ => format!("data: {}\n\n", e.body()),
    };
    Bytes::from(event)
}

/// The events that end a stream whose answer `meter` passed on whole, but whose close
/// was lost: the finishing chunk if none was sent, usage (of `prompt_tokens` and every
/// token passed on) when the client asked, `[DONE]`.
pub(super) fn ending_events(
    endpoint: Endpoint,
    meter: &SseMeter,
    model: &str,
    prompt_tokens: Option<u32>,
) -> Bytes {
    let mut head = serde_json::Map::new();
    head.insert("id".to_owned(), meter.id.clone().into());
    head.insert("created".to_owned(), meter.created.into());
    head.insert("model".to_owned(), model.into());
    let usage = prompt_tokens.map(|p| (p, meter.tokens));
    Bytes::from(ending(endpoint, &head, meter.finished, usage))
}

/// Passes the upstream SSE stream through, metering tokens as they go (and taking out
/// the usage event the client did not ask for).
pub(super) fn stream_response(
    state: Arc<AppState>,
    guard: Inflight,
    resp: hyper::Response<UpstreamBody>,
    m: Metered,
) -> Response {
    let idle = state.config.stream_idle_timeout;
    let replica = m.replica;
    let pump = Pump {
        body: resp.into_body(),
        alarm: state.stall_alarm(),
        meter: SseMeter::new(m.endpoint, m.strip_usage),
        guard,
        finished: false,
        settled: false,
        m,
        first_token: None,
    };
    let stream = futures_util::stream::unfold(pump, move |mut p| async move {
        if p.finished {
            return None;
        }
        loop {
            // `None`: the replica was found hung from its streams, and the word moves
            // the stream (a stream that could not move streams on; the lifecycle).
            let (guard, m, meter, settled) = (&p.guard, &p.m, &p.meter, p.settled);
            let polled = AppState::unless_moved(
                tokio::time::timeout(idle, p.body.frame()),
                &mut p.alarm,
                p.m.replica,
                || settled || guard.moves_midway_on_stall_word(resumable(m, meter)),
            )
            .await;
            let (cut, message) = match polled {
                None if p.settled => return None,
                None => (
                    Cut::Stalled,
                    "every stream on the replica stopped: it was taken for hung".to_owned(),
                ),
                Some(Ok(Some(Ok(frame)))) => {
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
                        p.first_token.get_or_insert_with(Instant::now);
                        let now = p.guard.state.now_ms();
                        p.guard
                            .state
                            .core()
                            .progress(p.guard.life.id(), p.meter.tokens, now);
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
                Some(Ok(None)) if p.meter.done || p.meter.error => {
                    p.finished = true;
                    p.settle();
                    return None;
                }
                // Finished and accounted: what the engine does after `[DONE]` (a
                // break, or holding the connection open) is no failure of this request.
                Some(Ok(Some(Err(_))) | Err(_)) if p.settled => return None,
                Some(Ok(None)) => (
                    Cut::EndedEarly,
                    "the replica ended the stream early".to_owned(),
                ),
                Some(Ok(Some(Err(e)))) if forward::node_lost(&e) => (Cut::NodeLost, e.to_string()),
                Some(Ok(Some(Err(e)))) => (Cut::Broke, format!("the replica's stream broke: {e}")),
                Some(Err(_)) => (
                    Cut::Silent,
                    format!("the replica sent nothing for {idle:?}"),
                ),
            };
            match p.rescue(cut, message).await {
                Rescue::Continued => continue,
                Rescue::Ended(last) => {
                    p.finished = true;
                    return Some((Ok(last), p));
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

/// A stream of an endpoint Sluice does not read, passed through as the engine writes
/// it: its request is in flight until the stream ends or the client goes away, and
/// each piece that comes counts as progress (so that its replica is not taken for hung
/// while it streams).
pub(super) fn pass_stream(
    guard: Inflight,
    resp: hyper::Response<UpstreamBody>,
    replica: ReplicaId,
) -> Response {
    let (parts, body) = resp.into_parts();
    let start = (body, Some(guard), 0u32);
    let frames = futures_util::stream::unfold(start, |(mut body, guard, pieces)| async move {
        let g = guard.as_ref()?;
        match body.frame().await {
            Some(Ok(frame)) => {
                let data = frame.into_data().unwrap_or_default();
                let pieces = pieces.saturating_add(1);
                let now = g.state.now_ms();
                g.state.core().progress(g.life.id(), pieces, now);
                Some((Ok::<Bytes, std::io::Error>(data), (body, guard, pieces)))
            }
            Some(Err(e)) => Some((Err(e), (body, None, pieces))),
            None => None,
        }
    });
    let mut out = Response::new(Body::from_stream(frames));
    *out.status_mut() = parts.status;
    let h = out.headers_mut();
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(v) = parts.headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    h.insert("x-sluice-replica", HeaderValue::from(replica.0));
    out
}

/// `first` followed by the data frames `body` can yield without waiting. The end of the
/// body is seen again by the next poll; an error taken here leaves a body that ended
/// without `[DONE]`, which the pump answers like any other failure of its replica.
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
