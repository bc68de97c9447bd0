//! What the simulator measures, in the vLLM / SGLang benchmark conventions: TTFT; TPOT =
//! (E2E − TTFT) / (output tokens − 1); goodput = requests meeting every SLO.

use serde::Serialize;

/// Service-level objectives a request must meet to count toward goodput.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            ttft_ms: 2000.0,
            tpot_ms: 100.0,
        }
    }
}

/// One finished request's timings (µs of virtual time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestRecord {
    pub arrival_us: u64,
    pub first_token_us: u64,
    pub finish_us: u64,
    pub output_tokens: u32,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
}

impl RequestRecord {
    pub fn ttft_ms(&self) -> f64 {
        (self.first_token_us - self.arrival_us) as f64 / 1000.0
    }

    pub fn e2e_ms(&self) -> f64 {
        (self.finish_us - self.arrival_us) as f64 / 1000.0
    }

    /// `None` for single-token outputs, which have no inter-token time.
    pub fn tpot_ms(&self) -> Option<f64> {
        (self.output_tokens > 1).then(|| {
            (self.finish_us - self.first_token_us) as f64
                / 1000.0
                / f64::from(self.output_tokens - 1)
        })
    }

    pub fn meets(&self, slo: &Slo) -> bool {
        self.ttft_ms() <= slo.ttft_ms && self.tpot_ms().is_none_or(|t| t <= slo.tpot_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; sorts `values`.
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

/// One policy's results, in the shape `sluice sim --json` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub name: String,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub prefix_hit_rate: f64,
    pub goodput_rps: f64,
    pub slo_attainment: f64,
    /// Time-averaged max/mean of per-replica outstanding work (requests queued or running).
    pub imbalance: f64,
    pub gpu_seconds: f64,
    pub completed: u64,
    pub rejected: u64,
}

/// Summarizes finished requests.
pub fn summarize(
    name: &str,
    records: &[RequestRecord],
    rejected: u64,
    slo: &Slo,
    span_s: f64,
    imbalance: f64,
    gpu_seconds: f64,
) -> PolicyReport {
    let mut ttft: Vec<f64> = records.iter().map(RequestRecord::ttft_ms).collect();
    let mut tpot: Vec<f64> = records.iter().filter_map(RequestRecord::tpot_ms).collect();
    let mut e2e: Vec<f64> = records.iter().map(RequestRecord::e2e_ms).collect();
    let prompt: u64 = records.iter().map(|r| u64::from(r.prompt_tokens)).sum();
    let cached: u64 = records.iter().map(|r| u64::from(r.cached_tokens)).sum();
    let good = records.iter().filter(|r| r.meets(slo)).count();
    let total = records.len() as u64 + rejected;
    PolicyReport {
        name: name.to_owned(),
        ttft_ms: Percentiles::of(&mut ttft),
        tpot_ms: Percentiles::of(&mut tpot),
        e2e_ms: Percentiles::of(&mut e2e),
        prefix_hit_rate: if prompt == 0 {
            0.0
        } else {
            cached as f64 / prompt as f64
        },
        goodput_rps: if span_s > 0.0 {
            good as f64 / span_s
        } else {
            0.0
        },
        slo_attainment: if total == 0 {
            1.0
        } else {
            good as f64 / total as f64
        },
        imbalance,
        gpu_seconds,
        completed: records.len() as u64,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            Percentiles::of(&mut v),
            Percentiles {
                p50: 50.0,
                p95: 95.0,
                p99: 99.0
            }
        );
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn tpot_and_slo() {
        let r = RequestRecord {
            arrival_us: 0,
            first_token_us: 500_000,
            finish_us: 1_500_000,
            output_tokens: 11,
            prompt_tokens: 10,
            cached_tokens: 0,
        };
        assert_eq!(r.ttft_ms(), 500.0);
        assert_eq!(r.tpot_ms(), Some(100.0));
        assert!(r.meets(&Slo::default()));
        assert!(!r.meets(&Slo {
            ttft_ms: 400.0,
            tpot_ms: 100.0
        }));
    }
}
