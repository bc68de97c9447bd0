//! What to send, where, how hard and for how long.

use super::error::LoadError;
use hyper::Uri;
use serde::Serialize;
use std::time::Duration;

/// The OpenAI endpoint requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completion,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
        }
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mode {
    /// `concurrency` workers, each sending its next request as soon as the previous
    /// one is answered: measures throughput at a given concurrency.
    Closed { concurrency: usize },
    /// Requests start on a fixed timetable of `rate_per_s`, whatever the server does;
    /// one due while `max_in_flight` are outstanding is not sent and counted dropped.
    Open {
        rate_per_s: f64,
        max_in_flight: usize,
    },
}

/// Upper bound on closed-loop workers and open-loop in-flight requests: each one can
/// hold a TCP connection.
pub const MAX_CONNECTIONS: usize = 20_000;

/// Longest run (warm-up + duration) and longest request timeout accepted.
pub const MAX_RUN: Duration = Duration::from_secs(7 * 24 * 3600);

/// A load run's settings. [`LoadConfig::new`] fills in the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// Base URL, `http://host:port` (no path, no TLS).
    pub url: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u32,
    /// Approximate prompt size, in words.
    pub prompt_tokens: usize,
    pub mode: Mode,
    /// Length of the measurement window, after the warm-up.
    pub duration: Duration,
    /// Requests started during the warm-up are sent but not counted.
    pub warmup: Duration,
    /// Number of distinct `x-session-id` values sent round-robin; 0 sends none.
    pub sessions: usize,
    /// Adds vLLM's `"ignore_eos": true`, so every answer is exactly `max_tokens` long.
    pub ignore_eos: bool,
    /// A request not fully answered within this is abandoned and counted a timeout.
    pub request_timeout: Duration,
}

impl LoadConfig {
    /// A 10-second chat run after a 2-second warm-up, non-streaming, 16 tokens out,
    /// a 32-word prompt, one session.
    pub fn new(url: impl Into<String>, mode: Mode) -> Self {
        Self {
            url: url.into(),
            endpoint: Endpoint::Chat,
            model: "llama-3.1-8b-instruct".to_owned(),
            stream: false,
            max_tokens: 16,
            prompt_tokens: 32,
            mode,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            sessions: 1,
            ignore_eos: false,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the settings; every run calls this first.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
        self.endpoint_uri(self.endpoint)?;
        match self.mode {
            Mode::Closed { concurrency } if concurrency == 0 || concurrency > MAX_CONNECTIONS => {
                return bad(format!(
                    "concurrency must be between 1 and {MAX_CONNECTIONS}, got {concurrency}"
                ))
            }
            Mode::Open { rate_per_s, .. }
                if !(rate_per_s.is_finite() && rate_per_s > 0.0 && rate_per_s <= 1e7) =>
            {
                return bad(format!(
                    "rate must be a positive number of requests per second, got {rate_per_s}"
                ))
            }
            Mode::Open { max_in_flight, .. }
                if max_in_flight == 0 || max_in_flight > MAX_CONNECTIONS =>
            {
                return bad(format!(
                    "max in flight must be between 1 and {MAX_CONNECTIONS}, got {max_in_flight}"
                ))
            }
            _ => {}
        }
        if self.duration.is_zero() {
            return bad("duration must be positive".to_owned());
        }
        let run = self
            .warmup
            .checked_add(self.duration)
            .unwrap_or(Duration::MAX);
        if run > MAX_RUN || self.request_timeout > MAX_RUN {
            return bad(format!(
                "warm-up + duration and the request timeout must each be at most {MAX_RUN:?}"
            ));
        }
        if self.request_timeout.is_zero() {
            return bad("request timeout must be positive".to_owned());
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".to_owned());
        }
        if self.model.is_empty() {
            return bad("model must not be empty".to_owned());
        }
        if self.sessions > 1_000_000 {
            return bad(format!("at most 1000000 sessions, got {}", self.sessions));
        }
        Ok(())
    }

    /// The absolute URI of `endpoint` under the base URL.
    pub fn endpoint_uri(&self, endpoint: Endpoint) -> Result<Uri, LoadError> {
        let bad = |reason: &str| LoadError::Url {
            url: self.url.clone(),
            reason: reason.to_owned(),
        };
        let base: Uri = self
            .url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        if base.scheme_str() != Some("http") {
            return Err(bad("only http:// URLs are supported"));
        }
        if base.authority().is_none() {
            return Err(bad("no host"));
        }
        if !matches!(base.path(), "" | "/") || base.query().is_some() {
            return Err(bad("give the base URL only (the endpoint path is added)"));
        }
        let full = format!("{}{}", self.url.trim_end_matches('/'), endpoint.path());
        full.parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> LoadConfig {
        LoadConfig::new(url, Mode::Closed { concurrency: 1 })
    }

    #[test]
    fn endpoint_uri_joins_base_and_path() {
        let c = cfg("http://127.0.0.1:8080/");
        assert_eq!(
            c.endpoint_uri(Endpoint::Chat).unwrap().to_string(),
            "http://127.0.0.1:8080/v1/chat/completions"
        );
        assert_eq!(
            c.endpoint_uri(Endpoint::Completion).unwrap().to_string(),
            "http://127.0.0.1:8080/v1/completions"
        );
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(cfg("https://127.0.0.1:1").validate().is_err());
        assert!(cfg("127.0.0.1:1").validate().is_err());
        assert!(cfg("http://127.0.0.1:1/v1").validate().is_err());
        assert!(cfg("http://127.0.0.1:1").validate().is_ok());
        let mut c = cfg("http://127.0.0.1:1");
        c.mode = Mode::Closed { concurrency: 0 };
        assert!(c.validate().is_err());
        c.mode = Mode::Open {
            rate_per_s: f64::NAN,
            max_in_flight: 1,
        };
        assert!(c.validate().is_err());
        c.mode = Mode::Open {
            rate_per_s: 10.0,
            max_in_flight: 0,
        };
        assert!(c.validate().is_err());
        c.mode = Mode::Open {
            rate_per_s: 10.0,
            max_in_flight: 1,
        };
        c.duration = Duration::ZERO;
        assert!(c.validate().is_err());
        c.duration = Duration::MAX;
        c.warmup = Duration::MAX;
        assert!(c.validate().is_err(), "would overflow Instant arithmetic");
        c.duration = Duration::from_secs(1);
        c.warmup = Duration::ZERO;
        c.request_timeout = Duration::MAX;
        assert!(c.validate().is_err());
    }
}
