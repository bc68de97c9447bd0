//! Typed messaging between nodes, one bidirectional QUIC stream per request.
//!
//! The caller writes one request frame and finishes its side; the server answers with
//! one frame ([`Client::call`]) or many ([`Client::call_stream`], for token streaming)
//! and finishes. Streams are independent: a malformed frame resets only its own stream
//! (code [`codes::BAD_FRAME`]), a slow handler holds only its own stream, and quinn's
//! per-connection stream limit makes callers wait instead of piling up work.
//!
//! Frames are read header first; the version and length are checked before the payload
//! is allocated.

use std::{
    collections::HashMap,
    future::Future,
    marker::PhantomData,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    codes,
    endpoint::{alpn, peer_node_id, ALPN_CLUSTER, ALPN_JOIN},
    frame::{self, FrameError, HEADER_LEN},
    join::{self, JoinAuthority},
    Endpoint, PeerConnection, TransportError,
};

/// Reads one frame's payload: `Ok(None)` if the stream ended cleanly before a frame.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<Vec<u8>>, TransportError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::payload_len(header)?;
    if len > limit {
        return Err(FrameError::OverLimit { len, limit }.into());
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

/// Encodes `msg` and writes it as one frame.
pub(crate) async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    limit: usize,
) -> Result<(), TransportError> {
    let bytes = encode_limited(msg, limit)?;
    send.write_all(&bytes).await?;
    Ok(())
}

fn encode_limited<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, TransportError> {
    let bytes = frame::encode(msg)?;
    let len = bytes.len() - HEADER_LEN;
    if len > limit {
        return Err(FrameError::OverLimit { len, limit }.into());
    }
    Ok(bytes)
}

/// Gives up on a stream whose frame was bad: both directions are reset with `code`.
pub(crate) fn reject(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    code: quinn::VarInt,
) {
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

impl PeerConnection {
    async fn open(
        &self,
        request: &[u8],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        send.write_all(request).await?;
        // Ends our side; the peer answers on `recv`. Errors only if already reset.
        let _ = send.finish();
        Ok((send, recv))
    }

    /// One request, one response, on this connection.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let request = encode_limited(req, self.max_frame)?;
        with_timeout(timeout, async {
            let (_send, mut recv) = self.open(&request).await?;
            read_response(&mut recv, self.max_frame).await
        })
        .await
    }

    /// One request, a stream of responses, on this connection. `timeout` bounds sending
    /// the request and each wait for the next response.
    pub async fn call_stream<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        req: &Req,
        timeout: Duration,
    ) -> Result<ResponseStream<Resp>, TransportError> {
        let request = encode_limited(req, self.max_frame)?;
        let (_send, recv) = with_timeout(timeout, self.open(&request)).await?;
        Ok(ResponseStream::new(recv, timeout, self.max_frame))
    }
}

async fn with_timeout<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| TransportError::Timeout(limit))?
}

async fn read_response<Resp: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Resp, TransportError> {
    let result = match read_frame(recv, limit).await {
        Ok(Some(payload)) => frame::decode_payload(&payload).map_err(TransportError::from),
        Ok(None) => return Err(TransportError::NoResponse),
        Err(e) => Err(e),
    };
    if let Err(e @ TransportError::Frame(_)) = &result {
        tracing::warn!(error = %e, "malformed response frame; stopping the stream");
        let _ = recv.stop(codes::BAD_FRAME);
    }
    result
}

/// The responses of a streaming call, in order. Dropping it tells the server to stop.
pub struct ResponseStream<T> {
    recv: Option<quinn::RecvStream>,
    timeout: Duration,
    max_frame: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ResponseStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("open", &self.recv.is_some())
            .finish()
    }
}

impl<T: DeserializeOwned> ResponseStream<T> {
    fn new(recv: quinn::RecvStream, timeout: Duration, max_frame: usize) -> Self {
        ResponseStream {
            recv: Some(recv),
            timeout,
            max_frame,
            _type: PhantomData,
        }
    }

    /// The next response; `None` once the server has finished the stream (or after an
    /// error has been returned). An error here means the stream was cut short.
    pub async fn next(&mut self) -> Option<Result<T, TransportError>> {
        let recv = self.recv.as_mut()?;
        let result = match tokio::time::timeout(
            self.timeout,
            read_response::<T>(recv, self.max_frame),
        )
        .await
        {
            Ok(Err(TransportError::NoResponse)) => {
                self.recv = None;
                return None;
            }
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(self.timeout)),
        };
        if result.is_err() {
            if let Some(mut recv) = self.recv.take() {
                let _ = recv.stop(codes::SHUTDOWN);
            }
        }
        Some(result)
    }

    /// Collects every remaining response, failing on the first error.
    pub async fn collect(mut self) -> Result<Vec<T>, TransportError> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }
}

/// Calls other nodes by address over cached connections: one connection per peer
/// address, reused by every call and replaced when it has closed.
pub struct Client {
    endpoint: Endpoint,
    connections: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<PeerConnection>>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Client {
            endpoint,
            connections: Mutex::new(HashMap::new()),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The open connection to `addr`, dialing a new one if there is none or it closed.
    /// Concurrent callers for the same address share one dial.
    pub async fn connection(&self, addr: SocketAddr) -> Result<PeerConnection, TransportError> {
        let slot = {
            let mut map = self
                .connections
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(map.entry(addr).or_default())
        };
        let mut cached = slot.lock().await;
        if let Some(conn) = cached.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
        }
        let conn = self.endpoint.connect(addr, None).await?;
        *cached = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a stream to `addr` and sends `request`. If the cached connection turns out
    /// to be dead before anything was sent, dials once more.
    async fn open(
        &self,
        addr: SocketAddr,
        request: &[u8],
    ) -> Result<(PeerConnection, quinn::SendStream, quinn::RecvStream), TransportError> {
        let conn = self.connection(addr).await?;
        let conn = match conn.conn.open_bi().await {
            Ok((mut send, recv)) => {
                send.write_all(request).await?;
                let _ = send.finish();
                return Ok((conn, send, recv));
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "cached connection is dead; redialing");
                self.connection(addr).await?
            }
        };
        let (send, recv) = conn.open(request).await?;
        Ok((conn, send, recv))
    }

    /// Sends `req` to the node at `addr` and waits for its one response, all within
    /// `timeout` (dialing included).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let max_frame = self.endpoint.config().max_frame();
        let request = encode_limited(req, max_frame)?;
        with_timeout(timeout, async {
            let (_conn, _send, mut recv) = self.open(addr, &request).await?;
            read_response(&mut recv, max_frame).await
        })
        .await
    }

    /// Sends `req` to the node at `addr` and returns the stream of its responses.
    /// `timeout` bounds dialing and sending, then each wait for the next response.
    pub async fn call_stream<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        req: &Req,
        timeout: Duration,
    ) -> Result<ResponseStream<Resp>, TransportError> {
        let max_frame = self.endpoint.config().max_frame();
        let request = encode_limited(req, max_frame)?;
        let (_conn, _send, recv) = with_timeout(timeout, self.open(addr, &request)).await?;
        Ok(ResponseStream::new(recv, timeout, max_frame))
    }

    /// Drops the cached connection to `addr` (closing it).
    pub fn forget(&self, addr: SocketAddr) {
        let slot = self
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&addr);
        if let Some(slot) = slot {
            if let Ok(mut cached) = slot.try_lock() {
                if let Some(conn) = cached.take() {
                    conn.close();
                }
            }
        }
    }
}

/// Serves requests of one message type. `peer` is the caller's node id, read from its
/// certificate. Answer through `reply`: [`Reply::respond`] once, or [`Reply::send`] many
/// times then [`Reply::finish`].
pub trait Handler: Send + Sync + 'static {
    type Request: DeserializeOwned + Send + 'static;

    fn handle(
        &self,
        peer: u64,
        request: Self::Request,
        reply: Reply,
    ) -> impl Future<Output = ()> + Send;
}

/// The sending half of a request's stream. Dropping it unfinished (the handler failed or
/// panicked) resets the stream with [`codes::HANDLER_ABORTED`], so the caller sees an
/// error rather than a silently short answer.
pub struct Reply {
    send: Option<quinn::SendStream>,
    max_frame: usize,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("open", &self.send.is_some())
            .finish()
    }
}

impl Reply {
    /// Sends one response frame. Fails when the caller has gone away: stop streaming then.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), TransportError> {
        let send = self.send.as_mut().ok_or(TransportError::EndpointClosed)?;
        write_frame(send, msg, self.max_frame).await
    }

    /// Ends the response stream cleanly.
    pub fn finish(mut self) -> Result<(), TransportError> {
        if let Some(mut send) = self.send.take() {
            send.finish()
                .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
        }
        Ok(())
    }

    /// Sends the one response and finishes.
    pub async fn respond<T: Serialize>(mut self, msg: &T) -> Result<(), TransportError> {
        self.send(msg).await?;
        self.finish()
    }

    /// Resolves when the caller stops reading (it dropped its [`ResponseStream`]) or the
    /// connection closes: a streaming handler can stop producing early.
    pub async fn cancelled(&mut self) {
        if let Some(send) = self.send.as_mut() {
            let _ = send.stopped().await;
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(codes::HANDLER_ABORTED);
        }
    }
}

/// Accepts connections on `endpoint` until it is closed, serving `sluice/1` streams with
/// `handler` and, if given, joins with `join`. Connections and streams are served
/// concurrently.
pub async fn serve<H: Handler>(
    endpoint: Endpoint,
    handler: Arc<H>,
    join: Option<Arc<dyn JoinAuthority>>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let handler = Arc::clone(&handler);
        let join = join.clone();
        let config = endpoint.config().clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "handshake failed");
                    return;
                }
            };
            match alpn(&conn).as_deref() {
                Some(ALPN_CLUSTER) => serve_cluster(conn, handler, config).await,
                Some(ALPN_JOIN) => match join {
                    Some(authority) => join::serve_join(conn, authority, &config).await,
                    None => conn.close(codes::JOIN_DISABLED, b"this node does not accept joins"),
                },
                _ => conn.close(codes::BAD_ALPN, b"unknown protocol"),
            }
        });
    }
}

async fn serve_cluster<H: Handler>(
    conn: quinn::Connection,
    handler: Arc<H>,
    config: crate::TransportConfig,
) {
    let remote = conn.remote_address();
    let peer = match peer_node_id(&conn) {
        Ok(id) => id,
        Err(TransportError::NoPeerCertificate) => {
            tracing::warn!(%remote, "refusing cluster connection: peer presented no certificate");
            conn.close(codes::NO_CLIENT_CERT, b"peer presented no certificate");
            return;
        }
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refusing cluster connection");
            conn.close(codes::NO_NODE_ID, b"peer certificate carries no node id");
            return;
        }
    };
    tracing::debug!(%remote, peer, "cluster connection up");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let handler = Arc::clone(&handler);
                let config = config.clone();
                tokio::spawn(serve_stream(handler, peer, send, recv, config));
            }
            Err(e) => {
                tracing::debug!(%remote, peer, error = %e, "cluster connection ended");
                return;
            }
        }
    }
}

async fn serve_stream<H: Handler>(
    handler: Arc<H>,
    peer: u64,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    config: crate::TransportConfig,
) {
    let limit = config.max_frame();
    let request = match tokio::time::timeout(config.request_timeout, read_frame(&mut recv, limit))
        .await
    {
        Ok(Ok(Some(payload))) => {
            frame::decode_payload::<H::Request>(&payload).map_err(TransportError::from)
        }
        Ok(Ok(None)) => Err(TransportError::NoResponse),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            tracing::warn!(peer, timeout = ?config.request_timeout, "request frame did not arrive in time");
            reject(&mut send, &mut recv, codes::REQUEST_TIMEOUT);
            return;
        }
    };
    match request {
        Ok(request) => {
            // `recv` stays open until the handler is done, so the caller's side of the
            // stream is not stopped while it may still be delivering its FIN.
            let reply = Reply {
                send: Some(send),
                max_frame: limit,
            };
            handler.handle(peer, request, reply).await;
        }
        Err(TransportError::NoResponse) => {
            tracing::debug!(peer, "stream ended before a request");
            reject(&mut send, &mut recv, codes::BAD_FRAME);
        }
        Err(e @ TransportError::Frame(_)) => {
            tracing::warn!(peer, error = %e, "malformed request frame; resetting the stream");
            reject(&mut send, &mut recv, codes::BAD_FRAME);
        }
        Err(e) => {
            tracing::debug!(peer, error = %e, "reading a request failed");
            reject(&mut send, &mut recv, codes::BAD_FRAME);
        }
    }
}
