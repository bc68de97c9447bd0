//! A request for a model this node does not route, in a cluster where another node
//! does: it is handed to that node's front door over the cluster's transport (mutual
//! TLS, like every node-to-node call) and its answer relayed back as it comes. The
//! receiving door routes it as its own — tenant admission, placement, retries and
//! migration all happen there — and never hands it on again. Should the receiving node
//! be lost midway, this door continues the answer from the next node that routes the
//! model ([`relay`]).

mod relay;

use super::proxy::{self, Route};
use super::request_id::RequestId;
use super::stream::is_event_stream;
use super::Fleets;
use crate::cluster::forward::{self, ForwardError, UpstreamBody};
use crate::cluster::rpc::{NodeRpc, RouteRequest};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use sluice_actors::lifecycle::Unmoved;
use sluice_actors::router::handoff_order;
use sluice_actors::slice::SliceKey;
use sluice_engine::openai::{ApiError, Endpoint, RoutingView};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

/// Which nodes of the cluster route which models (read from the control state).
pub trait Directory: Send + Sync {
    /// The other nodes that route `model`: their ids and QUIC addresses.
    fn routers_of(&self, model: &str) -> Vec<(u64, SocketAddr)>;
    /// Every model some node of the cluster routes.
    fn models(&self) -> Vec<String>;
}

/// Marks a request another node handed to this one: it is not handed on.
#[derive(Debug, Clone, Copy)]
pub struct HandedOff;

/// Headers that belong to one connection, not to the request or its answer.
fn per_hop(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-connection"
    )
}

/// The headers worth carrying to another node, as text.
pub fn carried(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(n, _)| !per_hop(n.as_str()))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

type Failure = (ApiError, Option<u32>);

/// Hands one request to the nodes that route its model, one after another in the
/// router core's order for its workload, until one takes it — again after a node that
/// took it is lost midway (the rest of the order is kept for that).
pub(super) struct Courier {
    fleets: Arc<Fleets>,
    client: Arc<sluice_transport::Client>,
    /// The nodes not yet tried, in the order they are tried.
    order: VecDeque<(u64, SocketAddr)>,
    path: String,
    headers: Vec<(String, String)>,
    request_id: String,
    model: String,
    /// How often the request went on from another node after one was lost.
    moved: u8,
}

impl Courier {
    /// `None` when no other node routes `model` (or this node is not in a cluster).
    fn new(
        fleets: &Arc<Fleets>,
        model: &str,
        route: &Route,
        headers: &HeaderMap,
        id: &RequestId,
        key: Option<SliceKey>,
    ) -> Option<Self> {
        let routers = fleets.directory()?.routers_of(model);
        let door = fleets.first();
        let client = door.remote.clone()?;
        let ids: Vec<u64> = routers.iter().map(|(n, _)| *n).collect();
        let salt = SliceKey::of(id.as_str()).0;
        let order = {
            let failed = fleets
                .handoff_failed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            handoff_order(&ids, key, salt, &failed, door.now_ms())
        };
        let order: VecDeque<(u64, SocketAddr)> = order
            .into_iter()
            .filter_map(|node| routers.iter().find(|(n, _)| *n == node).copied())
            .collect();
        (!order.is_empty()).then(|| Self {
            fleets: fleets.clone(),
            client,
            order,
            path: route.path().to_owned(),
            headers: carried(headers),
            request_id: id.as_str().to_owned(),
            model: model.to_owned(),
            moved: 0,
        })
    }

    /// Notes whether `node` took a handed request, so that one that failed is tried
    /// last for a while.
    fn noted(&self, node: u64, failed: bool) {
        let now = self.fleets.first().now_ms();
        let mut map = self
            .fleets
            .handoff_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failed {
            map.insert(node, now);
        } else {
            map.remove(&node);
        }
    }

    /// Hands `body` to the next node that takes it: which one, and its answer's head.
    async fn answer(
        &mut self,
        body: &Bytes,
    ) -> Result<(u64, hyper::Response<UpstreamBody>), Failure> {
        let model = self.model.clone();
        let rpc = NodeRpc::Route(RouteRequest {
            path: self.path.clone(),
            headers: self.headers.clone(),
            body: body.to_vec(),
            request_id: self.request_id.clone(),
        });
        let mut unreachable = Vec::new();
        while let Some((node, addr)) = self.order.pop_front() {
            match forward::call(&self.client, addr, &rpc).await {
                Ok(resp) => {
                    self.noted(node, false);
                    tracing::debug!(model, node, "handed to the node that routes the model");
                    return Ok((node, resp));
                }
                // Nothing answered: the next node may (a request that reached one that
                // died before answering is sent again, as a replica's would be).
                Err(why @ (ForwardError::Unreachable(_) | ForwardError::Timeout(_))) => {
                    tracing::warn!(model, node, error = %why, "cannot hand the request over; trying the next node");
                    self.noted(node, true);
                    unreachable.push(node);
                }
                Err(e) => {
                    return Err((
                        ApiError::new(
                            502,
                            "upstream_error",
                            format!(
                                "node {node}, which routes `{model}`, failed before answering: {e}"
                            ),
                        ),
                        None,
                    ))
                }
            }
        }
        Err((
            ApiError::new(
                503,
                "service_unavailable",
                format!("no node that routes `{model}` could be reached (tried {unreachable:?})"),
            )
            .with_code("no_router_reachable"),
            Some(1),
        ))
    }

    /// `node`, which took the request, was lost before its answer was all here: may the
    /// request go on from the next node? The door's migration limits decide.
    fn lost(&mut self, node: u64) -> Result<(), Unmoved> {
        self.noted(node, true);
        let door = self.fleets.first();
        let now = door.now_ms();
        let granted = door.migrations().take_for(self.moved, now);
        match granted {
            Ok(()) => {
                self.moved += 1;
                Ok(())
            }
            Err(why) => {
                self.fleets.metrics().migration_refused(why.label());
                Err(why)
            }
        }
    }
}

/// Hands the request to the first reachable node that routes its model, in the order
/// the router core gives for its workload `key`, and relays the answer: a stream as it
/// comes, continued from the next node if the one routing it is lost midway; an answer
/// sent whole, read whole first, so that one cut on its way is asked of the next node.
/// `Ok(None)`: no other node routes the model.
pub async fn send(
    fleets: &Arc<Fleets>,
    route: &Route,
    parsed: &RoutingView,
    headers: &HeaderMap,
    body: &Bytes,
    id: &RequestId,
    key: Option<SliceKey>,
) -> Result<Option<Response>, Failure> {
    let Some(mut courier) = Courier::new(fleets, &parsed.model, route, headers, id, key) else {
        return Ok(None);
    };
    let (node, resp) = courier.answer(body).await?;
    fleets.metrics().handed_off();
    let Route::Api(endpoint) = route else {
        let (parts, body) = resp.into_parts();
        return Ok(Some(handed_to(
            node,
            Response::from_parts(parts, Body::new(body)),
        )));
    };
    let sent = relay::Sent {
        endpoint: *endpoint,
        body: body.clone(),
        model: parsed.model.clone(),
        prompt_tokens: parsed
            .include_usage
            .then(|| u32::try_from(parsed.prompt_tokens).unwrap_or(u32::MAX)),
    };
    let (node, answer) = if resp.status().is_success() && is_event_stream(&resp) {
        (node, relay::stream(courier, node, resp, sent))
    } else {
        relay::whole(courier, node, resp, &sent.body).await?
    };
    Ok(Some(handed_to(node, answer)))
}

/// Names the node that answered a handed request (for a stream, the first: one
/// continued from another node keeps its head) in the `x-sluice-handed-to` header.
fn handed_to(node: u64, mut answer: Response) -> Response {
    answer
        .headers_mut()
        .insert("x-sluice-handed-to", HeaderValue::from(node));
    answer
}

/// Where a handed request's path goes, as the front door's routes would send it.
fn route_of(path: &str) -> Option<Route> {
    match Endpoint::ALL.into_iter().find(|e| e.path() == path) {
        Some(endpoint) => Some(Route::Api(endpoint)),
        None => proxy::passable(path).then(|| Route::Other(Arc::from(path))),
    }
}

/// Serves a request another node handed here, through this node's front door.
pub async fn receive(fleets: Arc<Fleets>, req: RouteRequest) -> Response {
    let id = RequestId::parse(&req.request_id).unwrap_or_else(RequestId::generate);
    let Some(route) = route_of(&req.path) else {
        let e = ApiError::new(
            404,
            "not_found_error",
            format!("no route for POST {}", req.path),
        );
        return super::error_response(&e, None);
    };
    let mut builder = Request::post(&req.path);
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    let request = match builder.body(Body::from(req.body)) {
        Ok(mut r) => {
            r.extensions_mut().insert(id.clone());
            r.extensions_mut().insert(HandedOff);
            r
        }
        Err(e) => {
            let e = ApiError::invalid(format!("a handed request could not be read: {e}"), None);
            return super::error_response(&e, None);
        }
    };
    let span = tracing::info_span!("handed", request_id = %id);
    proxy::handle(fleets, route, request).instrument(span).await
}

/// The headers of a routed answer the first door passes on (its content type travels
/// apart).
pub fn answer_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    carried(headers)
        .into_iter()
        .filter(|(n, _)| n != header::CONTENT_TYPE.as_str())
        .collect()
}
