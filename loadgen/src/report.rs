//! What a run measured, as JSON (serde) and as a table (`Display`).

use super::config::{Endpoint, LoadConfig, Mode};
use super::stats::{Percentiles, Stats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The outcome of a run. Counts cover requests *started* in the measurement window
/// (after the warm-up); those still in flight when it closed are waited for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub url: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u32,
    pub prompt_words: usize,
    pub sessions: usize,
    pub mode: Mode,
    pub warmup_s: f64,
    /// The measurement window (shorter than configured only if the source ran dry).
    pub duration_s: f64,
    /// Requests started in the window.
    pub sent: u64,
    /// 2xx answers read to the end (streams ended by `data: [DONE]`).
    pub ok: u64,
    /// `sent - ok`.
    pub errors: u64,
    pub errors_by_status: BTreeMap<u16, u64>,
    /// Connection, send or read failures.
    pub transport_errors: u64,
    pub timeouts: u64,
    /// 2xx streams that ended without `data: [DONE]`.
    pub incomplete_streams: u64,
    /// Open loop: requests due in the window but not sent because `max_in_flight`
    /// were outstanding (not included in `sent`).
    pub dropped: Option<u64>,
    /// Successful requests per second of the window.
    pub rps: f64,
    /// Requests started per second of the window.
    pub sent_rps: f64,
    pub bytes_received: u64,
    /// Successful requests, from start (open loop: the scheduled start) to the last
    /// body byte, in µs.
    pub latency_us: Percentiles,
    /// Successful requests, from start to the first body byte (the time to first
    /// token for streams), in µs.
    pub ttfb_us: Percentiles,
    /// Open loop: how late requests actually started after their scheduled time, in
    /// µs — the generator's own lag, which the latencies above include.
    pub schedule_lag_us: Option<Percentiles>,
}

impl Report {
    pub(crate) fn new(cfg: &LoadConfig, s: &Stats, dropped: Option<u64>, window: Duration) -> Self {
        let secs = window.as_secs_f64();
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Self {
            url: cfg.url.clone(),
            endpoint: cfg.endpoint,
            model: cfg.model.clone(),
            stream: cfg.stream,
            max_tokens: cfg.max_tokens,
            prompt_words: cfg.prompt_tokens,
            sessions: cfg.sessions,
            mode: cfg.mode,
            warmup_s: cfg.warmup.as_secs_f64(),
            duration_s: secs,
            sent: s.sent,
            ok: s.ok,
            errors: s.errors(),
            errors_by_status: s.errors_by_status.clone(),
            transport_errors: s.transport_errors,
            timeouts: s.timeouts,
            incomplete_streams: s.incomplete_streams,
            dropped,
            rps: per_s(s.ok),
            sent_rps: per_s(s.sent),
            bytes_received: s.bytes_received,
            latency_us: Percentiles::from_histogram(&s.latency),
            ttfb_us: Percentiles::from_histogram(&s.ttfb),
            schedule_lag_us: matches!(cfg.mode, Mode::Open { .. })
                .then(|| Percentiles::from_histogram(&s.lag)),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.endpoint.path();
        let kind = if self.stream {
            "streaming"
        } else {
            "non-streaming"
        };
        writeln!(f, "target     {}{path}", self.url.trim_end_matches('/'))?;
        writeln!(
            f,
            "request    {kind}, model {}, max_tokens {}, ~{} prompt words, {} session(s)",
            self.model, self.max_tokens, self.prompt_words, self.sessions
        )?;
        match self.mode {
            Mode::Closed { concurrency } => writeln!(f, "mode       closed loop, {concurrency} concurrent")?,
            Mode::Open { rate_per_s, max_in_flight } => {
                writeln!(f, "mode       open loop, {rate_per_s} req/s scheduled, at most {max_in_flight} in flight")?
            }
        }
        writeln!(
            f,
            "window     {:.1} s after a {:.1} s warm-up",
            self.duration_s, self.warmup_s
        )?;
        write!(
            f,
            "requests   sent {}  ok {}  errors {}",
            self.sent, self.ok, self.errors
        )?;
        if self.errors > 0 {
            let mut parts: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(c, n)| format!("HTTP {c}: {n}"))
                .collect();
            for (name, n) in [
                ("transport", self.transport_errors),
                ("timeout", self.timeouts),
                ("incomplete stream", self.incomplete_streams),
            ] {
                if n > 0 {
                    parts.push(format!("{name}: {n}"));
                }
            }
            write!(f, " ({})", parts.join(", "))?;
        }
        if let Some(d) = self.dropped {
            write!(f, "  dropped {d}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "throughput {:.1} ok/s ({:.1} sent/s)",
            self.rps, self.sent_rps
        )?;
        writeln!(
            f,
            "{:<11}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "µs", "p50", "p90", "p99", "p99.9", "max", "mean"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, p: &Percentiles| {
            writeln!(
                f,
                "{name:<11}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9.0}",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean
            )
        };
        row(f, "latency", &self.latency_us)?;
        row(f, "ttfb", &self.ttfb_us)?;
        if let Some(lag) = &self.schedule_lag_us {
            row(f, "sched lag", lag)?;
        }
        Ok(())
    }
}
