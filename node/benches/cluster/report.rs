//! What the bench reports: latency summaries and spreads as printed on stderr, and the
//! JSON results file that the figures in docs/BENCH_CLUSTER.md come from.

use crate::failover::FailoverResults;
use crate::failover_proc::ProcFailoverResults;
use crate::forward::ForwardResults;
use crate::raft::RaftResults;
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::path::Path;

/// Microsecond latencies from 1 µs to 2 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant, valid histogram bounds")
}

/// Latency summary in microseconds.
#[derive(Serialize, Clone, Copy, Default)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:>7} µs  p90 {:>7} µs  p99 {:>7} µs  max {:>7} µs  (n={})",
            self.p50_us, self.p90_us, self.p99_us, self.max_us, self.count
        )
    }
}

/// min / median / max of a few durations, in milliseconds.
#[derive(Serialize, Clone, Default)]
pub struct Spread {
    pub n: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub all_ms: Vec<f64>,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self::default();
        }
        let mid = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            n: v.len(),
            min_ms: v[0],
            p50_ms: mid,
            max_ms: v[v.len() - 1],
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
            all_ms: values.iter().map(|x| (x * 10.0).round() / 10.0).collect(),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "min {:>6.0} ms  p50 {:>6.0} ms  max {:>6.0} ms  mean {:>6.0} ms  (n={})",
            self.min_ms, self.p50_ms, self.max_ms, self.mean_ms, self.n
        )
    }
}

/// The results file: one entry per section that ran.
#[derive(Serialize, Default)]
pub struct Results {
    pub cpus: usize,
    pub data_dir_parent: String,
    pub duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_proc: Option<ProcFailoverResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardResults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<ForwardResults>,
}

impl Results {
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("serialise results")?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))
    }
}
