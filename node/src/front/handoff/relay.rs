//! The answer of a handed request on its way back to the client. The node it was handed
//! to routes it — its own replicas' failures are continued there — but should that node
//! itself be lost midway (killed, cut off, stopped past its grace), the answer would end
//! with it. So this door reads what passes: a stream's text so far, to continue it from
//! the next node that routes the model with the same token replay a replica's failure
//! gets (spliced in to read as one answer); an answer sent whole, read whole before the
//! client gets any of it, so that one cut on its way is simply asked of the next node.

use super::{Courier, Failure};
use crate::cluster::forward::UpstreamBody;
use crate::front::sse::SseMeter;
use crate::front::stream::{ending_events, error_event, is_event_stream, refusal_text};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use sluice_engine::continuation::{plan, Continuation};
use sluice_engine::openai::{ApiError, Endpoint};

/// What the client asked, as far as continuing its answer needs.
pub(super) struct Sent {
    pub endpoint: Endpoint,
    /// The request's body as the client sent it.
    pub body: Bytes,
    pub model: String,
    /// The prompt's tokens as this door counted them, when the client asked for usage.
    pub prompt_tokens: Option<u32>,
}

/// An answer sent whole, read whole: asked again of the next node while the one that
/// took it is lost before all of it came and the door's migration limits allow. Returns
/// the node that answered, and its answer.
pub(super) async fn whole(
    mut courier: Courier,
    mut node: u64,
    mut resp: hyper::Response<UpstreamBody>,
    body: &Bytes,
) -> Result<(u64, Response), Failure> {
    loop {
        let (parts, answer) = resp.into_parts();
        let e = match answer.collect().await {
            Ok(collected) => {
                let answer = Response::from_parts(parts, Body::from(collected.to_bytes()));
                return Ok((node, answer));
            }
            Err(e) => e,
        };
        tracing::warn!(node, error = %e, "the node routing a handed request was lost before its answer was all here");
        if let Err(why) = courier.lost(node) {
            return Err((
                ApiError::new(
                    502,
                    "upstream_error",
                    format!(
                        "node {node}, which took the request, was lost before answering it whole ({e}); it is not sent again: {}",
                        why.label()
                    ),
                ),
                None,
            ));
        }
        let (next, again) = courier.answer(body).await?;
        courier.fleets.metrics().handoff_continued(node, next);
        (node, resp) = (next, again);
    }
}

struct Relay {
    courier: Courier,
    /// The node whose stream is being relayed.
    node: u64,
    body: UpstreamBody,
    meter: SseMeter,
    sent: Sent,
    finished: bool,
}

impl Relay {
    /// The stream from `self.node` was cut (`why`): continue it from the next node, or
    /// say how it ends. `None`: it goes on.
    async fn rescue(&mut self, why: String) -> Option<Bytes> {
        let from = self.node;
        tracing::warn!(request_id = %self.courier.request_id, node = from, tokens = self.meter.tokens, %why, "the node routing a handed stream was lost");
        let fail = |message: String| ApiError::new(502, "upstream_error", message);
        let body = match plan(self.sent.endpoint, &self.sent.body, self.meter.received()) {
            Ok(Continuation::Exhausted) => {
                self.courier.noted(from, true);
                return Some(ending_events(
                    self.sent.endpoint,
                    &self.meter,
                    &self.sent.model,
                    self.sent.prompt_tokens,
                ));
            }
            Ok(Continuation::Body(b)) => Bytes::from(b),
            Err(not) => {
                self.courier.noted(from, true);
                self.courier
                    .fleets
                    .metrics()
                    .migration_refused("not_resumable");
                return Some(self.error(&fail(format!("{why}; {not}"))));
            }
        };
        if let Err(refused) = self.courier.lost(from) {
            let e = fail(format!("{why}; not continued: {}", refused.label()));
            return Some(self.error(&e));
        }
        match self.courier.answer(&body).await {
            Ok((node, resp)) if resp.status().is_success() && is_event_stream(&resp) => {
                self.courier.fleets.metrics().handoff_continued(from, node);
                tracing::info!(request_id = %self.courier.request_id, from, to = node, tokens = self.meter.tokens, "continuing a handed stream from another node");
                self.node = node;
                self.body = resp.into_body();
                self.meter.splice();
                None
            }
            Ok((node, resp)) => {
                let status = resp.status().as_u16();
                let text = refusal_text(resp).await;
                let e = fail(format!(
                    "{why}; node {node} refused to continue it (HTTP {status}): {text}"
                ));
                Some(self.error(&e))
            }
            Err((e, _)) => Some(self.error(&fail(format!("{why}; {}", e.message)))),
        }
    }

    fn error(&self, e: &ApiError) -> Bytes {
        error_event(self.sent.endpoint, &self.meter, e)
    }
}

/// Relays the stream `resp` from `node`, continuing it from the next node should this
/// one be lost before the stream finished.
pub(super) fn stream(
    courier: Courier,
    node: u64,
    resp: hyper::Response<UpstreamBody>,
    sent: Sent,
) -> Response {
    let (parts, body) = resp.into_parts();
    let relay = Relay {
        courier,
        node,
        body,
        meter: SseMeter::new(sent.endpoint, false),
        sent,
        finished: false,
    };
    let events = futures_util::stream::unfold(relay, |mut r| async move {
        if r.finished {
            return None;
        }
        loop {
            let why = match r.body.frame().await {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let data = r.meter.pass(data);
                    if data.is_empty() {
                        continue;
                    }
                    return Some((Ok::<Bytes, std::io::Error>(data), r));
                }
                None if r.meter.done || r.meter.error => return None,
                // What a node does after `[DONE]` is no loss of this answer.
                Some(Err(_)) if r.meter.done => return None,
                None => format!("node {} ended the stream early", r.node),
                Some(Err(e)) => format!("the stream from node {} broke: {e}", r.node),
            };
            if let Some(last) = r.rescue(why).await {
                r.finished = true;
                return Some((Ok(last), r));
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(events))
}
