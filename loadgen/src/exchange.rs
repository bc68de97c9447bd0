//! One HTTP exchange: send a planned request, read the whole answer, classify it.

use super::config::{Endpoint, LoadConfig};
use super::error::LoadError;
use super::source::PlannedRequest;
use super::stats::Outcome;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::{Duration, Instant};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

static SESSION_HEADER: HeaderName = HeaderName::from_static("x-session-id");

/// A keep-alive HTTP/1.1 client with TCP_NODELAY, pooling up to `pool` idle
/// connections (one per concurrent request).
pub fn client(pool: usize, connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(pool)
        .retry_canceled_requests(false)
        .build(connector)
}

/// The pre-parsed absolute URIs of both endpoints.
#[derive(Debug, Clone)]
pub struct Target {
    chat: Uri,
    completion: Uri,
}

impl Target {
    pub fn new(cfg: &LoadConfig) -> Result<Self, LoadError> {
        Ok(Self {
            chat: cfg.endpoint_uri(Endpoint::Chat)?,
            completion: cfg.endpoint_uri(Endpoint::Completion)?,
        })
    }

    fn uri(&self, e: Endpoint) -> &Uri {
        match e {
            Endpoint::Chat => &self.chat,
            Endpoint::Completion => &self.completion,
        }
    }
}

/// Sends `req` and reads its answer to the end, within `timeout` of `origin`. Times
/// in the outcome are measured from `origin` (which may be earlier than now: the
/// scheduled start of an open-loop request).
pub async fn exchange(
    client: &HttpClient,
    target: &Target,
    req: PlannedRequest,
    origin: Instant,
    timeout: Duration,
) -> Outcome {
    let deadline = tokio::time::Instant::from_std(origin + timeout);
    match tokio::time::timeout_at(deadline, send(client, target, req, origin)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Timeout,
    }
}

async fn send(
    client: &HttpClient,
    target: &Target,
    req: PlannedRequest,
    origin: Instant,
) -> Outcome {
    let mut http = Request::new(Full::new(req.body));
    *http.method_mut() = Method::POST;
    *http.uri_mut() = target.uri(req.endpoint).clone();
    let headers = http.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(s) = req.session {
        headers.insert(SESSION_HEADER.clone(), s);
    }
    let Ok(resp) = client.request(http).await else {
        return Outcome::Transport;
    };
    let status = resp.status();
    let mut body = resp.into_body();
    let mut first_byte = None;
    let mut tail = Tail::default();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Outcome::Transport;
        };
        if let Some(data) = frame.data_ref() {
            if !data.is_empty() {
                first_byte.get_or_insert_with(Instant::now);
                bytes += data.len() as u64;
                if req.stream {
                    tail.push(data);
                }
            }
        }
    }
    let end = Instant::now();
    if !status.is_success() {
        return Outcome::Status {
            code: status.as_u16(),
            bytes,
        };
    }
    if req.stream && !tail.ends_with_done() {
        return Outcome::Incomplete { bytes };
    }
    let micros = |t: Instant| t.saturating_duration_since(origin).as_micros() as u64;
    Outcome::Ok {
        latency_us: micros(end),
        ttfb_us: micros(first_byte.unwrap_or(end)),
        bytes,
    }
}

/// The last bytes of a body, enough to see how an SSE stream ended.
#[derive(Debug, Default)]
struct Tail {
    buf: [u8; 32],
    len: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        let cap = self.buf.len();
        if data.len() >= cap {
            self.buf.copy_from_slice(&data[data.len() - cap..]);
            self.len = cap;
        } else {
            let keep = self.len.min(cap - data.len());
            self.buf.copy_within(self.len - keep..self.len, 0);
            self.buf[keep..keep + data.len()].copy_from_slice(data);
            self.len = keep + data.len();
        }
    }

    /// Whether the last event of the stream is `data: [DONE]` (trailing line breaks
    /// allowed, the space after the colon optional as SSE allows).
    fn ends_with_done(&self) -> bool {
        let mut s = &self.buf[..self.len];
        while let [rest @ .., b'\n' | b'\r' | b' '] = s {
            s = rest;
        }
        let Some(s) = s.strip_suffix(b"[DONE]") else {
            return false;
        };
        let s = s.strip_suffix(b" ").unwrap_or(s);
        let Some(s) = s.strip_suffix(b"data:") else {
            return false;
        };
        s.is_empty() || s.ends_with(b"\n") || s.ends_with(b"\r")
    }
}

#[cfg(test)]
mod tests {
    use super::Tail;

    fn tail_of(chunks: &[&[u8]]) -> Tail {
        let mut t = Tail::default();
        for c in chunks {
            t.push(c);
        }
        t
    }

    #[test]
    fn done_detection() {
        assert!(tail_of(&[b"data: {\"a\":1}\n\n", b"data: [DONE]\n\n"]).ends_with_done());
        assert!(tail_of(&[b"data: {\"a\":1}\n\ndata: [DO", b"NE]\r\n\r\n"]).ends_with_done());
        assert!(tail_of(&[b"data:[DONE]"]).ends_with_done());
        assert!(
            tail_of(&[b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\ndata: [DONE]\n\n"])
                .ends_with_done()
        );
        let bytes = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert!(tail_of(&one_by_one).ends_with_done());
        assert!(!tail_of(&[b"data: {\"a\":1}\n\n"]).ends_with_done());
        assert!(!tail_of(&[b"data: [DONE]\n\ndata: {\"a\":1}\n\n"]).ends_with_done());
        assert!(!tail_of(&[b"xdata: [DONE]"]).ends_with_done());
        assert!(!tail_of(&[]).ends_with_done());
    }
}
