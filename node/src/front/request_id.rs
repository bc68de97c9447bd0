//! `x-request-id` end to end. Every answer of the front door carries one: the client's
//! own when it sent a usable one, a new one otherwise. Every log line of the request
//! carries it (`request_id`), and every engine attempt is sent `x-request-id:
//! <id>.<n>`, unique per attempt on the node that sends it (an engine such as vLLM
//! refuses a second request under an id still running, and a retry or a continuation
//! may land on the same engine), over forwarding and migration too. vLLM names its
//! answer after that header (`chatcmpl-<id>.<n>`), so a client's id can be followed
//! into the engine's own logs.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// Longest client id taken as it is.
const MAX_LEN: usize = 128;

/// A request's id, as its client or the door named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The client's `x-request-id` if it is usable (see [`RequestId::parse`]), or a
    /// new one.
    pub fn of(headers: &HeaderMap) -> Self {
        headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
            .unwrap_or_else(Self::generate)
    }

    /// `text` as an id: 1 to 128 characters out of letters, digits and `-_.:/+=@`, so
    /// that it is safe in a header, a log line and an engine's JSON as it is.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= MAX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b));
        ok.then(|| RequestId(Arc::from(text)))
    }

    /// A new id, unique within this process and unlikely to meet another node's.
    pub fn generate() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let seed = *SEED.get_or_init(|| {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mixed = sluice_engine::words::mix64(seed ^ sluice_engine::words::mix64(n));
        RequestId(Arc::from(format!("sluice-{mixed:016x}{:04x}", n & 0xffff)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id one engine attempt is sent under: this id and a number no other attempt
    /// from this node shares.
    pub fn for_attempt(&self) -> String {
        static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
        format!("{}.{}", self.0, ATTEMPTS.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The front door's layer: names the request, runs it inside a span that carries the
/// id, and echoes the id on the answer, errors included.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = RequestId::of(req.headers());
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_id_is_kept_when_usable_and_replaced_otherwise() {
        for good in [
            "abc",
            "req-42",
            "7f3c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6",
            "a.b:c/d+e=f@g_h",
        ] {
            assert_eq!(
                RequestId::parse(good).map(|i| i.0.to_string()),
                Some(good.to_owned())
            );
        }
        let long = "x".repeat(MAX_LEN + 1);
        for bad in [
            "",
            "has space",
            "quote\"d",
            "back\\slash",
            "é",
            "new\nline",
            long.as_str(),
        ] {
            assert_eq!(RequestId::parse(bad), None, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("client-1"));
        assert_eq!(RequestId::of(&h).as_str(), "client-1");
        h.insert(HEADER, HeaderValue::from_static("not ok"));
        let made = RequestId::of(&h);
        assert!(made.as_str().starts_with("sluice-"), "{made}");
        assert!(
            RequestId::parse(made.as_str()).is_some(),
            "a made id is usable"
        );
    }

    #[test]
    fn made_ids_and_attempts_are_unique() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| RequestId::generate().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        let id = RequestId::parse("same").unwrap();
        let (a, b) = (id.for_attempt(), id.for_attempt());
        assert_ne!(a, b);
        assert!(a.starts_with("same.") && b.starts_with("same."), "{a} {b}");
        assert!(
            RequestId::parse(&a).is_some(),
            "an attempt's id is usable too"
        );
    }
}
