//! Prometheus metrics of the HTTP shell, with vLLM's names (`vllm:…`), so that a router
//! scraping a simulated replica reads the same series as from a real vLLM server.

use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::{EngineStats, FinishReason};

type Labels = Vec<(&'static str, &'static str)>;

/// The metrics of one engine.
pub struct Metrics {
    registry: Registry,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    prefix_queries: Counter,
    prefix_hits: Counter,
    preemptions: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    success: Family<Labels, Counter>,
    ttft: Histogram,
    e2e: Histogram,
    /// Last cumulative values pushed from the core, to turn them into increments.
    last: Mutex<EngineStats>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

impl Metrics {
    pub fn new(model: &str) -> Self {
        let mut registry = Registry::with_labels(
            [(Cow::Borrowed("model_name"), Cow::Owned(model.to_owned()))].into_iter(),
        );
        let running = Gauge::default();
        let waiting = Gauge::default();
        let kv_usage = Gauge::<f64, AtomicU64>::default();
        let prefix_queries = Counter::default();
        let prefix_hits = Counter::default();
        let preemptions = Counter::default();
        let prompt_tokens = Counter::default();
        let generation_tokens = Counter::default();
        let success = Family::<Labels, Counter>::default();
        let ttft = Histogram::new(LATENCY_BUCKETS.iter().copied());
        let e2e = Histogram::new(LATENCY_BUCKETS.iter().copied());
        registry.register(
            "vllm:num_requests_running",
            "Number of requests in model execution batches",
            running.clone(),
        );
        registry.register(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed",
            waiting.clone(),
        );
        registry.register(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage",
            kv_usage.clone(),
        );
        registry.register(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens",
            prefix_queries.clone(),
        );
        registry.register(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens",
            prefix_hits.clone(),
        );
        registry.register(
            "vllm:num_preemptions",
            "Cumulative number of preemptions from the engine",
            preemptions.clone(),
        );
        registry.register(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed",
            prompt_tokens.clone(),
        );
        registry.register(
            "vllm:generation_tokens",
            "Number of generation tokens processed",
            generation_tokens.clone(),
        );
        registry.register(
            "vllm:request_success",
            "Count of successfully processed requests",
            success.clone(),
        );
        registry.register(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds",
            ttft.clone(),
        );
        registry.register(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds",
            e2e.clone(),
        );
        Self {
            registry,
            running,
            waiting,
            kv_usage,
            prefix_queries,
            prefix_hits,
            preemptions,
            prompt_tokens,
            generation_tokens,
            success,
            ttft,
            e2e,
            last: Mutex::new(EngineStats::default()),
        }
    }

    /// Publishes the core's gauges and counters (called by the engine task after a step).
    pub fn update(&self, s: &EngineStats) {
        self.running.set(i64::from(s.running));
        self.waiting.set(i64::from(s.waiting));
        self.kv_usage.set(s.kv_usage);
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let inc = |c: &Counter, now: u64, before: u64| {
            if now > before {
                c.inc_by(now - before);
            }
        };
        inc(
            &self.prefix_queries,
            s.prefix_cache_queries,
            last.prefix_cache_queries,
        );
        inc(
            &self.prefix_hits,
            s.prefix_cache_hits,
            last.prefix_cache_hits,
        );
        inc(&self.preemptions, s.preemptions, last.preemptions);
        inc(&self.prompt_tokens, s.prompt_tokens, last.prompt_tokens);
        inc(
            &self.generation_tokens,
            s.generation_tokens,
            last.generation_tokens,
        );
        *last = *s;
    }

    pub fn observe_ttft(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    pub fn observe_finished(&self, reason: FinishReason, e2e_seconds: f64) {
        self.success
            .get_or_create(&vec![("finished_reason", reason.as_str())])
            .inc();
        self.e2e.observe(e2e_seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
