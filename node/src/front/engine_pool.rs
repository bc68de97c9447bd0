//! HTTP/1 connections to the node's own engines, each driven by the request using it.
//!
//! hyper-util's pooled client runs every connection as a task of its own: the request,
//! the answer's head and every frame of the answer's body cross a channel between that
//! task and the handler's, a hand-off per token of a stream (`docs/BENCHMARKS.md`,
//! "Connections driven by the request's own task"). Here the task that handles the
//! request writes it and reads its answer itself: the connection is polled while the
//! answer's head is awaited, then from inside the answer's body, and it goes back to the
//! pool once that body has been read to its end. A body dropped before its end closes
//! its connection, which tells the engine the request was abandoned.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderValue, HOST};
use hyper::http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Why no answer head came back.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Nothing reached the engine.
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: Authority,
        source: std::io::Error,
    },
    #[error("cannot connect to {authority}: no connection within {timeout:?}")]
    ConnectTimeout {
        authority: Authority,
        timeout: Duration,
    },
    #[error("engine URI {0} is not http://host[:port]/…")]
    BadUri(Uri),
    /// The request may have reached the engine.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl PoolError {
    /// Nothing of the request reached the engine.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::BadUri(_)
        )
    }
}

type Driver = Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>;

/// One connection: the handle requests go in by, and the I/O that carries them, which
/// does nothing unless polled (`None` once it has ended).
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Option<Driver>,
}

impl Conn {
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.driver, cx)
    }
}

/// Does what I/O the connection can now: false once it has ended (closed by either
/// side, or broken). Its state is dropped then, which fails or hands back whatever it
/// had not answered.
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) -> bool {
    let Some(d) = driver else { return false };
    if d.as_mut().poll(cx).is_pending() {
        return true;
    }
    *driver = None;
    false
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Requests written on a connection opened for them, and on one kept from an earlier
/// answer: an engine that closes its connections between requests shows as `new`.
#[derive(Clone, Debug, Default)]
pub struct SendCounts {
    pub new: Counter,
    pub kept: Counter,
}

/// The idle connections by engine, and when every engine's list was last swept.
#[derive(Default)]
struct IdleMap {
    by_engine: HashMap<Authority, Vec<Idle>>,
    swept: Option<Instant>,
}

struct Shared {
    idle: Mutex<IdleMap>,
    counts: SendCounts,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_engine: usize,
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, IdleMap> {
        // A panic while holding the map leaves it whole: every change is one push or pop.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps a connection whose answer was read to its end, if it can take another.
    fn put_back(&self, authority: Authority, conn: Conn) {
        if !conn.sender.is_ready() {
            return;
        }
        let now = Instant::now();
        let fresh = |i: &Idle| now.duration_since(i.since) < self.idle_timeout;
        let mut idle = self.idle();
        // Engines no request goes to any more (stopped, replaced) still hold sockets
        // here: every half idle time, every list is swept, not only the one in use.
        if idle
            .swept
            .is_none_or(|t| now.duration_since(t) >= self.idle_timeout / 2)
        {
            idle.by_engine.retain(|_, list| {
                list.retain(fresh);
                !list.is_empty()
            });
            idle.swept = Some(now);
        }
        let list = idle.by_engine.entry(authority).or_default();
        list.retain(fresh);
        if list.len() < self.max_idle_per_engine {
            list.push(Idle { conn, since: now });
        }
    }
}

/// The node's connections to its engines, kept open between requests.
#[derive(Clone)]
pub struct EnginePool {
    shared: Arc<Shared>,
}

impl EnginePool {
    /// A pool whose connections are given up after `idle_timeout` unused.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, counts: SendCounts) -> Self {
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(IdleMap::default()),
                counts,
                connect_timeout,
                idle_timeout,
                max_idle_per_engine: 1024,
            }),
        }
    }

    /// Sends `req` (an absolute `http://` URI) and returns the answer's head; its body
    /// carries the connection until it has been read.
    ///
    /// A kept connection that the engine closed while it was idle is noticed before
    /// use, or, if the engine closes it as the request goes out, the request is sent
    /// again on a new one as long as none of it was written.
    pub async fn request(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<EngineBody>, PoolError> {
        let uri = req.uri();
        let authority = match (uri.scheme(), uri.authority()) {
            (Some(s), Some(a)) if *s == Scheme::HTTP => a.clone(),
            _ => return Err(PoolError::BadUri(uri.clone())),
        };
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        if !req.headers().contains_key(HOST) {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|_| PoolError::BadUri(Uri::from(authority.clone())))?;
            req.headers_mut().insert(HOST, host);
        }
        loop {
            let (mut conn, kept) = match self.checkout(&authority).await {
                Some(conn) => (conn, true),
                None => (self.connect(&authority).await?, false),
            };
            let counts = &self.shared.counts;
            if kept { &counts.kept } else { &counts.new }.inc();
            match send_on(&mut conn, req).await {
                Ok(resp) => {
                    let shared = self.shared.clone();
                    return Ok(resp.map(|body| EngineBody {
                        body,
                        conn: Some((conn, authority, shared)),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Closed under us before any of it was written: a new connection.
                    Some(back) if kept => req = back,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `authority` that is still open.
    async fn checkout(&self, authority: &Authority) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut idle = self.shared.idle();
                let list = idle.by_engine.get_mut(authority)?;
                let now = Instant::now();
                list.retain(|i| now.duration_since(i.since) < self.shared.idle_timeout);
                list.pop()?.conn
            };
            // Reads what the engine sent while it sat idle: its close, if it closed.
            let open = poll_fn(|cx| Poll::Ready(conn.drive(cx))).await;
            if open && conn.sender.is_ready() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Conn, PoolError> {
        let timeout = self.shared.connect_timeout;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = (host, authority.port_u16().unwrap_or(80));
        let connect_err = |source| PoolError::Connect {
            authority: authority.clone(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| PoolError::ConnectTimeout {
                authority: authority.clone(),
                timeout,
            })?
            .map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
        })
    }
}

/// Writes `req` on `conn` and reads the answer's head, driving the connection meanwhile.
async fn send_on(
    conn: &mut Conn,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Full<Bytes>>>> {
    let Conn { sender, driver } = conn;
    let mut sent = std::pin::pin!(sender.try_send_request(req));
    poll_fn(|cx| {
        if let Poll::Ready(r) = sent.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if drive(driver, cx) {
            return Poll::Pending;
        }
        // Ended: the request has been failed or handed back by now.
        sent.as_mut().poll(cx)
    })
    .await
}

/// An engine's answer, still arriving over the connection it holds.
pub struct EngineBody {
    body: Incoming,
    /// The connection, where it goes back to, and the pool; `None` once given up or
    /// returned.
    conn: Option<(Conn, Authority, Arc<Shared>)>,
}

impl EngineBody {
    /// Polls the answer, driving its connection when nothing is buffered yet.
    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if let Some((conn, ..)) = &mut self.conn {
            if !conn.drive(cx) {
                // Ended: what it read is in the body, an early end as an error.
                self.conn = None;
            }
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }
}

impl std::fmt::Debug for EngineBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBody")
            .field("connection", &self.conn.is_some())
            .finish()
    }
}

impl Body for EngineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = this.poll_body(cx);
        // Readers may stop at the last frame when the body says it is the end.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some((mut conn, authority, shared)) = this.conn.take() {
                // One more turn readies it for the next request (or finds it closed).
                if conn.drive(cx) {
                    shared.put_back(authority, conn);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinSet;

    /// How the test engine answers each request on a connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Whole, with a length, and keeps the connection.
        Whole,
        /// In three chunks, and keeps the connection.
        Chunked,
        /// Whole, then closes the connection without saying so first.
        WholeThenClose,
        /// One chunk, then nothing more until the client goes away.
        OneChunkThenHold,
    }

    /// An HTTP/1.1 engine written by hand, so that what it does on the wire is exactly
    /// what the test says. Counts the connections it accepted; serves until the returned
    /// set is dropped (its accept loop owns the connections' tasks).
    async fn engine(answer: Answer) -> (String, Arc<AtomicUsize>, JoinSet<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let mut serving = JoinSet::new();
        serving.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                connections.spawn(async move {
                    let mut served = 0;
                    while let Some(body) = read_request(&mut stream).await {
                        served += 1;
                        let text = format!("conn {n} req {served}: {body}");
                        let reply = match answer {
                            Answer::Whole | Answer::WholeThenClose => format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                                text.len()
                            ),
                            Answer::Chunked => {
                                let mut r = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                    .to_owned();
                                for part in [&text[..4], &text[4..8], &text[8..]] {
                                    r += &format!("{:x}\r\n{part}\r\n", part.len());
                                }
                                r + "0\r\n\r\n"
                            }
                            Answer::OneChunkThenHold => format!(
                                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{text}\r\n",
                                text.len()
                            ),
                        };
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        match answer {
                            Answer::WholeThenClose => return,
                            Answer::OneChunkThenHold => {
                                // Until the client closes its side.
                                let mut rest = [0u8; 64];
                                while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
                                return;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        (url, accepted, serving)
    }

    /// One request's body, or `None` once the client closed the connection.
    async fn read_request(stream: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).ok()?;
        assert!(head.starts_with("POST /v1/x HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("\r\nhost: 127.0.0.1:"),
            "{head}"
        );
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })?
            .parse()
            .ok()?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.ok()?;
        String::from_utf8(body).ok()
    }

    fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
        Request::post(format!("{url}/v1/x"))
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn text(pool: &EnginePool, url: &str, body: &'static str) -> String {
        let resp = pool.request(post(url, body)).await.unwrap();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn pool() -> EnginePool {
        EnginePool::new(
            Duration::from_secs(2),
            Duration::from_secs(30),
            SendCounts::default(),
        )
    }

    /// Requests sent on new connections and on kept ones.
    fn sends(pool: &EnginePool) -> (u64, u64) {
        let c = &pool.shared.counts;
        (c.new.get(), c.kept.get())
    }

    #[tokio::test]
    async fn answers_read_to_their_end_leave_one_connection_for_the_next() {
        for answer in [Answer::Whole, Answer::Chunked] {
            let (url, accepted, _serving) = engine(answer).await;
            let pool = pool();
            for (i, body) in ["a", "bb", "ccc"].into_iter().enumerate() {
                let got = text(&pool, &url, body).await;
                assert_eq!(got, format!("conn 1 req {}: {body}", i + 1));
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
            assert_eq!(sends(&pool), (1, 2));
        }
    }

    #[tokio::test]
    async fn a_reader_that_stops_where_the_body_says_it_ends_gives_the_connection_back() {
        // hyper's server writes a body with a known length this way: it stops at the
        // frame after which `is_end_stream` holds and never polls for the end.
        let (url, accepted, _serving) = engine(Answer::Whole).await;
        let pool = pool();
        for i in 1..=3 {
            let mut body = pool.request(post(&url, "x")).await.unwrap().into_body();
            let mut got = Vec::new();
            while !body.is_end_stream() {
                got.extend_from_slice(&body.frame().await.unwrap().unwrap().into_data().unwrap());
            }
            assert_eq!(got, format!("conn 1 req {i}: x").as_bytes());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn requests_at_once_each_get_a_connection_and_all_are_kept() {
        let (url, accepted, _serving) = engine(Answer::Chunked).await;
        let pool = pool();
        // Three heads before any body is read: three connections.
        let mut held = Vec::new();
        for body in ["x", "y", "z"] {
            held.push(pool.request(post(&url, body)).await.unwrap());
        }
        for resp in held {
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for _ in 0..6 {
            text(&pool, &url, "again").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_to_an_engine_no_longer_used_are_let_go() {
        let (gone, _, _gone_serving) = engine(Answer::Whole).await;
        let (used, _, _used_serving) = engine(Answer::Whole).await;
        let idle = Duration::from_millis(40);
        let pool = EnginePool::new(Duration::from_secs(2), idle, SendCounts::default());
        text(&pool, &gone, "x").await;
        let held = |url: &str| {
            let authority: Authority = url.trim_start_matches("http://").parse().unwrap();
            pool.shared.idle().by_engine.contains_key(&authority)
        };
        assert!(held(&gone));
        // Requests go to another engine only, past the idle time.
        for _ in 0..3 {
            tokio::time::sleep(idle).await;
            text(&pool, &used, "y").await;
        }
        assert!(!held(&gone), "the unused engine's connection is still held");
        assert!(held(&used));
    }

    #[tokio::test]
    async fn a_connection_the_engine_closed_while_idle_is_not_used_again() {
        let (url, accepted, _serving) = engine(Answer::WholeThenClose).await;
        let pool = pool();
        assert_eq!(text(&pool, &url, "one").await, "conn 1 req 1: one");
        // The engine's close reaches the idle connection before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(text(&pool, &url, "two").await, "conn 2 req 1: two");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(sends(&pool), (2, 0));
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_closes_its_connection() {
        let (url, accepted, _serving) = engine(Answer::OneChunkThenHold).await;
        let pool = pool();
        let resp = pool.request(post(&url, "first")).await.unwrap();
        let mut body = resp.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "conn 1 req 1: first");
        drop(body);
        let resp = pool.request(post(&url, "second")).await.unwrap();
        let frame = resp.into_body().frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "conn 2 req 1: second");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_engine_that_is_not_there_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = pool().request(post(&url, "x")).await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        let bad = Request::post("https://127.0.0.1:1/v1/x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let e = pool().request(bad).await.unwrap_err();
        assert!(matches!(e, PoolError::BadUri(_)), "{e}");
    }

    #[tokio::test]
    async fn an_engine_that_breaks_off_its_answer_is_an_error_not_an_end() {
        // A length promised and not delivered: the body must fail, not end short.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut serving = JoinSet::new();
        serving.spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request(&mut stream).await.unwrap();
            let reply = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this";
            stream.write_all(reply.as_bytes()).await.unwrap();
        });
        let resp = pool().request(post(&url, "x")).await.unwrap();
        assert!(resp.into_body().collect().await.is_err());
        // The engine did what the test says (its task did not fail on the way).
        assert!(serving.join_next().await.is_some_and(|r| r.is_ok()));
    }
}
