//! What each request of a run is: the [`RequestSource`] trait and the synthetic source.
//!
//! A source is indexed by the request's sequence number rather than iterated, so that
//! many workers can draw from it concurrently with one atomic counter, and so that an
//! open-loop schedule slot that is dropped simply skips its index. A trace replayer
//! implements the same trait (and supplies its own [`super::Timetable`]).

use super::config::{Endpoint, LoadConfig};
use super::error::LoadError;
use bytes::Bytes;
use hyper::header::HeaderValue;
use serde_json::json;

/// One request, ready to send. Cloning is cheap (reference-counted bytes).
#[derive(Debug, Clone)]
pub struct PlannedRequest {
    pub endpoint: Endpoint,
    /// The JSON body.
    pub body: Bytes,
    /// Whether an SSE answer is expected (it must end with `data: [DONE]`).
    pub stream: bool,
    /// The `x-session-id` header, if any.
    pub session: Option<HeaderValue>,
}

/// Where a run's requests come from.
pub trait RequestSource: Send + Sync + 'static {
    /// The `seq`-th request of the run (0-based, warm-up included). `None` means the
    /// source is exhausted and the run ends.
    fn request(&self, seq: u64) -> Option<PlannedRequest>;
}

/// How many distinct prompts the synthetic source pre-builds.
pub const BODY_VARIANTS: usize = 8;

/// Endless synthetic requests built from the config: [`BODY_VARIANTS`] pre-serialised
/// bodies (differing prompts of about `prompt_tokens` words) and `sessions` session ids,
/// both taken round-robin, so producing a request costs two reference-count bumps.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    endpoint: Endpoint,
    stream: bool,
    bodies: Vec<Bytes>,
    sessions: Vec<HeaderValue>,
}

const WORDS: &[&str] = &[
    "the", "router", "sends", "each", "request", "to", "a", "replica", "that", "has", "room",
    "for", "its", "tokens", "while", "keeping", "every", "tenant", "within", "fair", "share", "of",
    "cluster", "capacity", "under", "load", "spikes", "and", "failures", "alike", "so", "latency",
    "stays", "low",
];

/// About `words` words of deterministic filler text, distinct per `variant`.
pub fn prompt_text(words: usize, variant: usize) -> String {
    let mut out = format!("Prompt {variant}:");
    let mut x = (variant as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..words.saturating_sub(2) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(' ');
        out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    out
}

impl SyntheticSource {
    pub fn new(cfg: &LoadConfig) -> Result<Self, LoadError> {
        let bodies = (0..BODY_VARIANTS)
            .map(|v| {
                let prompt = prompt_text(cfg.prompt_tokens, v);
                let mut body = match cfg.endpoint {
                    Endpoint::Chat => json!({
                        "model": cfg.model,
                        "messages": [{"role": "user", "content": prompt}],
                        "max_tokens": cfg.max_tokens,
                        "stream": cfg.stream,
                    }),
                    Endpoint::Completion => json!({
                        "model": cfg.model,
                        "prompt": prompt,
                        "max_tokens": cfg.max_tokens,
                        "stream": cfg.stream,
                    }),
                };
                if cfg.ignore_eos {
                    body["ignore_eos"] = json!(true);
                }
                serde_json::to_vec(&body).map(Bytes::from)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LoadError::Internal(format!("cannot serialise a request body: {e}")))?;
        let sessions = (0..cfg.sessions)
            .map(|i| HeaderValue::try_from(format!("loadgen-session-{i}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LoadError::Internal(format!("bad session header: {e}")))?;
        Ok(Self {
            endpoint: cfg.endpoint,
            stream: cfg.stream,
            bodies,
            sessions,
        })
    }

    /// The distinct bodies this source sends.
    pub fn bodies(&self) -> &[Bytes] {
        &self.bodies
    }
}

impl RequestSource for SyntheticSource {
    fn request(&self, seq: u64) -> Option<PlannedRequest> {
        let body = self.bodies[(seq % self.bodies.len() as u64) as usize].clone();
        let session = (!self.sessions.is_empty())
            .then(|| self.sessions[(seq % self.sessions.len() as u64) as usize].clone());
        Some(PlannedRequest {
            endpoint: self.endpoint,
            body,
            stream: self.stream,
            session,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;
    use serde_json::Value;
    use std::collections::BTreeSet;

    #[test]
    fn prompt_has_about_the_requested_word_count() {
        for n in [2, 10, 100] {
            let words = prompt_text(n, 3).split_whitespace().count();
            assert_eq!(words, n, "{n} words requested");
        }
        assert_ne!(prompt_text(20, 0), prompt_text(20, 1));
    }

    #[test]
    fn bodies_are_valid_openai_requests_and_sessions_rotate() {
        let mut cfg = LoadConfig::new("http://127.0.0.1:1", Mode::Closed { concurrency: 1 });
        cfg.stream = true;
        cfg.max_tokens = 7;
        cfg.sessions = 3;
        cfg.ignore_eos = true;
        let src = SyntheticSource::new(&cfg).unwrap();
        for b in src.bodies() {
            let v: Value = serde_json::from_slice(b).unwrap();
            assert_eq!(v["model"], "llama-3.1-8b-instruct");
            assert_eq!(v["max_tokens"], 7);
            assert_eq!(v["stream"], true);
            assert_eq!(v["ignore_eos"], true);
            assert_eq!(v["messages"][0]["role"], "user");
        }
        let sessions: Vec<_> = (0..6)
            .map(|i| src.request(i).unwrap().session.unwrap())
            .collect();
        assert_eq!(sessions[0], sessions[3]);
        assert_eq!(sessions.iter().collect::<BTreeSet<_>>().len(), 3);

        cfg.endpoint = Endpoint::Completion;
        cfg.sessions = 0;
        let src = SyntheticSource::new(&cfg).unwrap();
        let r = src.request(5).unwrap();
        assert!(r.session.is_none());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["prompt"].is_string());
    }
}
