//! Offered load in model units, and scaling a trace's arrivals to a target load.
//!
//! `--load F` means offered MU / fleet capacity = F. Offered MU prices every request at
//! its recorded output length with no prefix caching (the cache is the fleet's doing,
//! not the workload's), with the profile's coefficients.

use crate::trace::Trace;
use sluice_actors::mu::{MuCoefficients, RequestShape};

/// Total MU the trace asks for.
pub fn offered_mu(trace: &Trace, mu: &MuCoefficients) -> f64 {
    trace
        .requests
        .iter()
        .map(|r| {
            mu.price(&RequestShape {
                uncached_input: r.prompt.len(),
                cached_input: 0,
                output: r.output_tokens,
                images: 0,
            })
        })
        .sum()
}

/// Offered MU per minute of the trace as recorded.
pub fn offered_mu_per_min(trace: &Trace, mu: &MuCoefficients) -> f64 {
    let span_min = trace.span_us().max(1) as f64 / 60e6;
    offered_mu(trace, mu) / span_min
}

/// Replicas each minute of the trace needs: the MU it offers over `per_replica_mu_per_min`
/// (a replica's capacity at the planned utilization), rounded up.
pub fn minute_needs(trace: &Trace, mu: &MuCoefficients, per_replica_mu_per_min: f64) -> Vec<usize> {
    let Some(start) = trace.requests.first().map(|r| r.arrival_us) else {
        return Vec::new();
    };
    let mut per_min: Vec<f64> = Vec::new();
    for r in &trace.requests {
        let m = ((r.arrival_us - start) / 60_000_000) as usize;
        if per_min.len() <= m {
            per_min.resize(m + 1, 0.0);
        }
        per_min[m] += mu.price(&RequestShape {
            uncached_input: r.prompt.len(),
            cached_input: 0,
            output: r.output_tokens,
            images: 0,
        });
    }
    per_min
        .iter()
        .map(|m| {
            if per_replica_mu_per_min > 0.0 {
                (m / per_replica_mu_per_min).ceil() as usize
            } else {
                0
            }
        })
        .collect()
}

/// Stretches or compresses arrival times so that the trace offers `load` × the capacity
/// of `replicas` replicas of `capacity_mu_per_min` each. Returns the time factor applied.
pub fn scale_to_load(
    trace: &mut Trace,
    mu: &MuCoefficients,
    load: f64,
    replicas: usize,
    capacity_mu_per_min: f64,
) -> f64 {
    let target = load * replicas as f64 * capacity_mu_per_min;
    let offered = offered_mu_per_min(trace, mu);
    if !(target > 0.0 && offered > 0.0) {
        return 1.0;
    }
    let factor = offered / target;
    let start = trace.requests.first().map_or(0, |r| r.arrival_us);
    for r in &mut trace.requests {
        r.arrival_us = start + ((r.arrival_us - start) as f64 * factor).round() as u64;
    }
    factor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Prompt, Segment, TraceRequest};

    #[test]
    fn scaling_hits_the_target_load() {
        let mu = MuCoefficients {
            uncached_input: 0.02,
            cached_input: 0.0,
            output: 0.1,
            input_output: 0.0,
            image: 0.0,
            attention: 0.0,
        };
        let mut t = Trace {
            name: "t".into(),
            requests: (0..100u64)
                .map(|i| TraceRequest {
                    arrival_us: 1_000_000 + i * 600_000,
                    session: Some(i),
                    prompt: Prompt {
                        segments: vec![Segment { seed: i, len: 1000 }],
                    },
                    output_tokens: 100,
                })
                .collect(),
        };
        // 100 requests × 30 MU over 59.4 s.
        assert!((offered_mu(&t, &mu) - 3000.0).abs() < 1e-6);
        let f = scale_to_load(&mut t, &mu, 0.5, 2, 1000.0);
        assert!(
            (offered_mu_per_min(&t, &mu) - 1000.0).abs() < 1.0,
            "{}",
            offered_mu_per_min(&t, &mu)
        );
        assert!(f > 1.0);
        assert_eq!(t.requests[0].arrival_us, 1_000_000);
    }
}
