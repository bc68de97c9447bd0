//! Requests for replicas on other nodes. The router sends the OpenAI request over QUIC
//! to the node that runs the replica; that node proxies it to its local engine and
//! streams the answer back as frames, which the router turns into an HTTP body again —
//! so retries, metering and SSE handling in the front door are the same for local and
//! remote replicas.

use super::rpc::{ForwardFrame, ForwardRequest, NodeRpc};
use crate::front::engine_pool::EnginePool;
use crate::front::request_id::{self, RequestId};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use sluice_actors::slice::ReplicaId;
use sluice_transport::{Client, Reply, TransportError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Duration;
use tracing::Instrument;

/// Body of an upstream answer, local or forwarded.
pub type UpstreamBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// How often a node serving a forwarded request says it is alive while its engine is
/// quiet (waiting for the first token, or between tokens).
pub const ALIVE_EVERY: Duration = Duration::from_millis(500);

/// Silence after which the router takes the serving node for gone (see
/// [`PEER_SILENCE_MS`](sluice_actors::lifecycle::PEER_SILENCE_MS)).
pub const PEER_SILENCE: Duration = Duration::from_millis(sluice_actors::lifecycle::PEER_SILENCE_MS);

/// This node's own replicas, by id: what a forwarded request may reach.
pub struct LocalReplicas {
    urls: RwLock<HashMap<ReplicaId, String>>,
    engines: EnginePool,
    /// Forwarded requests being served: a stopping node waits for them.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts a forwarded request while it is served.
pub struct Serving<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl LocalReplicas {
    pub fn new(engines: EnginePool) -> Self {
        Self {
            urls: RwLock::new(HashMap::new()),
            engines,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn set(&self, urls: HashMap<ReplicaId, String>) {
        *self.urls.write().unwrap_or_else(|p| p.into_inner()) = urls;
    }

    /// A replica started (or restarted) here at `url`.
    pub fn insert(&self, id: ReplicaId, url: &str) {
        self.urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, url.trim_end_matches('/').to_owned());
    }

    /// A replica stopped for good.
    pub fn remove(&self, id: ReplicaId) {
        self.urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    pub fn snapshot(&self) -> HashMap<ReplicaId, String> {
        self.urls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn url(&self, id: ReplicaId) -> Option<String> {
        self.urls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Serves one forwarded request: proxies it to the local engine and streams the
    /// answer back. A caller that goes away stops the stream, which drops the engine
    /// request (the engine aborts it).
    /// Counts a request served for another node until the guard drops: a stopping
    /// node waits for it.
    pub fn serving(&self) -> Serving<'_> {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Serving(&self.in_flight)
    }

    /// Forwarded requests being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn serve(&self, req: ForwardRequest, reply: Reply) {
        // An id the door would not have made is replaced, as the door replaces one.
        let id = RequestId::parse(&req.request_id).unwrap_or_else(RequestId::generate);
        let span = tracing::info_span!("forwarded", request_id = %id);
        self.serve_as(req, &id, reply).instrument(span).await
    }

    async fn serve_as(&self, req: ForwardRequest, id: &RequestId, mut reply: Reply) {
        let _serving = self.serving();
        let fail = |m: String| ForwardFrame::Error(m);
        let Some(base) = self.url(req.replica) else {
            let _ = reply
                .respond(&fail(format!(
                    "replica {} is not on this node",
                    req.replica.0
                )))
                .await;
            return;
        };
        if !crate::front::passable(&req.path) {
            let _ = reply
                .respond(&fail(format!("cannot forward to '{}'", req.path)))
                .await;
            return;
        }
        let request = match hyper::Request::post(format!("{base}{}", req.path))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(request_id::HEADER, id.for_attempt())
            .body(Full::new(Bytes::from(req.body)))
        {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.respond(&fail(format!("bad request: {e}"))).await;
                return;
            }
        };
        let Some(resp) = alive_until(self.engines.request(request), &mut reply).await else {
            return;
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                let _ = reply
                    .respond(&fail(format!("the replica could not be reached: {e}")))
                    .await;
                return;
            }
            Err(e) => {
                let _ = reply
                    .respond(&ForwardFrame::Broke(format!(
                        "the replica failed before answering: {e}"
                    )))
                    .await;
                return;
            }
        };
        relay(resp, Vec::new(), reply).await;
    }
}

/// Awaits `work` (what the answer's head waits for), telling the node that asked that
/// this one is alive every [`ALIVE_EVERY`] meanwhile, so that a slow engine or a slow
/// hand-off is not taken for a dead node. `None`: the asking node went away.
pub async fn alive_until<F: std::future::Future>(work: F, reply: &mut Reply) -> Option<F::Output> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return Some(r),
            _ = reply.cancelled() => return None,
            () = tokio::time::sleep(ALIVE_EVERY) => {
                if reply.send(&ForwardFrame::Alive).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Streams an HTTP answer back to the node that asked: its head (with `headers`), then
/// its body's chunks, saying it is alive while the body is quiet. A caller that goes
/// away stops it, and dropping the body aborts what produces it.
pub async fn relay<B>(resp: hyper::Response<B>, headers: Vec<(String, String)>, mut reply: Reply)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let head = ForwardFrame::Head {
        status: resp.status().as_u16(),
        content_type: resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        headers,
    };
    if reply.send(&head).await.is_err() {
        return;
    }
    let mut body = resp.into_body();
    loop {
        let Ok(frame) = tokio::time::timeout(ALIVE_EVERY, body.frame()).await else {
            if reply.send(&ForwardFrame::Alive).await.is_err() {
                return;
            }
            continue;
        };
        let Some(frame) = frame else {
            break;
        };
        let msg = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => ForwardFrame::Chunk(d.to_vec()),
                Err(_) => continue,
            },
            Err(e) => {
                let _ = reply
                    .send(&ForwardFrame::Error(format!("the answer broke off: {e}")))
                    .await;
                break;
            }
        };
        if reply.send(&msg).await.is_err() {
            // The asking node went away: dropping `body` aborts the request.
            return;
        }
    }
    let _ = reply.finish();
}

/// Why a forwarded request produced no answer head.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Nothing reached the replica, or it refused: safe to retry elsewhere.
    #[error("{0}")]
    Unreachable(String),
    /// The replica took the request and failed before answering.
    #[error("{0}")]
    Broke(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A forwarded answer broke off because the node serving it was lost (silent past
/// [`PEER_SILENCE`], its connection dropped, or closed here once another call found it
/// gone): the fleet's fault, not the answer's.
/// It reaches the front door inside the body's `io::Error`; [`node_lost`] finds it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodeLost(String);

/// Whether a body error says the node serving the answer was lost.
pub fn node_lost(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NodeLost>())
}

/// Sends `rpc` (a [`NodeRpc::Forward`] or [`NodeRpc::Route`]) to the node at `node` and
/// returns the answer as an HTTP response whose body streams as the frames arrive. The serving node says it is alive
/// while its engine is quiet, so a silence of [`PEER_SILENCE`] means the node is gone
/// (or cut off): the call fails then, or the body breaks, rather than wait for QUIC's
/// idle timeout. The caller bounds the whole request.
pub async fn call(
    client: &Client,
    node: SocketAddr,
    rpc: &NodeRpc,
) -> Result<hyper::Response<UpstreamBody>, ForwardError> {
    let mut stream = client
        .call_stream::<_, ForwardFrame>(node, rpc, PEER_SILENCE)
        .await
        .map_err(|e| match e {
            TransportError::Timeout(d) => ForwardError::Timeout(d),
            e => ForwardError::Unreachable(e.to_string()),
        })?;
    let mut head = stream.next().await;
    while let Some(Ok(ForwardFrame::Alive)) = head {
        head = stream.next().await;
    }
    let (status, content_type, headers) = match head {
        Some(Ok(ForwardFrame::Head {
            status,
            content_type,
            headers,
        })) => (status, content_type, headers),
        Some(Ok(ForwardFrame::Error(m))) => return Err(ForwardError::Unreachable(m)),
        Some(Ok(ForwardFrame::Broke(m))) => return Err(ForwardError::Broke(m)),
        Some(Ok(ForwardFrame::Chunk(_) | ForwardFrame::Alive)) => {
            return Err(ForwardError::Unreachable("answer without a head".into()))
        }
        Some(Err(TransportError::Timeout(d))) => return Err(ForwardError::Timeout(d)),
        Some(Err(e)) => return Err(ForwardError::Unreachable(e.to_string())),
        None => return Err(ForwardError::Unreachable("empty answer".into())),
    };
    let frames = futures_util::stream::unfold(Some(stream), |s| async move {
        let mut s = s?;
        let mut next = s.next().await?;
        while let Ok(ForwardFrame::Alive) = next {
            next = s.next().await?;
        }
        match next {
            Ok(ForwardFrame::Alive) => None,
            Ok(ForwardFrame::Chunk(b)) => Some((Ok(Frame::data(Bytes::from(b))), Some(s))),
            Ok(ForwardFrame::Error(m) | ForwardFrame::Broke(m)) => {
                Some((Err(std::io::Error::other(m)), None))
            }
            Ok(ForwardFrame::Head { .. }) => {
                Some((Err(std::io::Error::other("a second answer head")), None))
            }
            Err(TransportError::Timeout(_)) => Some((
                Err(std::io::Error::other(NodeLost(format!(
                    "the node serving the replica sent nothing for {PEER_SILENCE:?}: taken for gone"
                )))),
                None,
            )),
            Err(TransportError::ConnectionLost(m)) => Some((
                Err(std::io::Error::other(NodeLost(format!(
                    "the connection to the node serving the replica was lost: {m}"
                )))),
                None,
            )),
            // Closed on this side: another call found the node gone and dropped the
            // connection to it (or this node is shutting down).
            Err(TransportError::EndpointClosed) => Some((
                Err(std::io::Error::other(NodeLost(
                    "the connection to the node serving the replica was closed: taken for lost"
                        .to_owned(),
                ))),
                None,
            )),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    // Fused: the front door may poll a finished body once more (after draining what was
    // ready), and an unfold stream must never be polled past its end.
    let frames = futures_util::StreamExt::fuse(frames);
    let mut resp = hyper::Response::new(StreamBody::new(frames).boxed_unsync());
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    let named = content_type
        .map(|c| (hyper::header::CONTENT_TYPE.as_str().to_owned(), c))
        .into_iter()
        .chain(headers);
    for (name, value) in named {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    Ok(resp)
}
