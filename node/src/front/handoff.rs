//! A request for a model this node does not route, in a cluster where another node
//! does: it is handed to that node's front door over the cluster's transport (mutual
//! TLS, like every node-to-node call) and its answer relayed back as it comes. The
//! receiving door routes it as its own — tenant admission, placement, retries and
//! migration all happen there — and never hands it on again.

use super::proxy::{self, Route};
use super::request_id::RequestId;
use super::Fleets;
use crate::cluster::forward::{self, ForwardError};
use crate::cluster::rpc::{NodeRpc, RouteRequest};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use bytes::Bytes;
use sluice_actors::router::handoff_order;
use sluice_actors::slice::SliceKey;
use sluice_engine::openai::{ApiError, Endpoint};
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

/// Hands the request to the first reachable node that routes `model`, in the order
/// the router core gives for its workload `key`. `Ok(None)`: no other node routes it.
pub async fn send(
    fleets: &Fleets,
    model: &str,
    route: &Route,
    headers: &HeaderMap,
    body: &Bytes,
    id: &RequestId,
    key: Option<SliceKey>,
) -> Result<Option<Response>, Failure> {
    let Some(directory) = fleets.directory() else {
        return Ok(None);
    };
    let routers = directory.routers_of(model);
    if routers.is_empty() {
        return Ok(None);
    }
    let Some(client) = fleets.first().remote.as_ref() else {
        return Ok(None);
    };
    let ids: Vec<u64> = routers.iter().map(|(n, _)| *n).collect();
    let salt = SliceKey::of(id.as_str()).0;
    let rpc = NodeRpc::Route(RouteRequest {
        path: route.path().to_owned(),
        headers: carried(headers),
        body: body.to_vec(),
        request_id: id.as_str().to_owned(),
    });
    let door = fleets.first();
    let order = {
        let failed = fleets
            .handoff_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        handoff_order(&ids, key, salt, &failed, door.now_ms())
    };
    let noted = |node: u64, failed: bool| {
        let mut map = fleets
            .handoff_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failed {
            map.insert(node, door.now_ms());
        } else {
            map.remove(&node);
        }
    };
    let mut unreachable = Vec::new();
    for node in order {
        let Some(&(_, addr)) = routers.iter().find(|(n, _)| *n == node) else {
            continue;
        };
        match forward::call(client, addr, &rpc).await {
            Ok(resp) => {
                noted(node, false);
                fleets.metrics().handed_off();
                tracing::debug!(model, node, "handed to the node that routes the model");
                let (parts, body) = resp.into_parts();
                return Ok(Some(Response::from_parts(parts, Body::new(body))));
            }
            // Nothing answered: the next node may (a request that reached one that
            // died before answering is sent again, as a replica's would be).
            Err(why @ (ForwardError::Unreachable(_) | ForwardError::Timeout(_))) => {
                tracing::warn!(model, node, error = %why, "cannot hand the request over; trying the next node");
                noted(node, true);
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
