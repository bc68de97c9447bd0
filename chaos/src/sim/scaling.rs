//! Autoscaling in the simulator: an autoscaler core decides the replica count every tick,
//! and the fleet follows it the way a real one does — new replicas cold-start before they
//! take traffic (a GPU is paid for from the moment it is requested), removed replicas
//! first stop taking new requests and are released only when their last request is done.
//!
//! Which replica to start or stop is decided here, in pure functions: start where the
//! racks are thinnest (a draining replica first, since it is warm and needs no cold
//! start), cancel the latest pending start before draining anything, and drain the
//! replica with the least work.

use sluice_actors::autoscaler::{Autoscaler, ScaleBounds};
use sluice_actors::mu::MuCoefficients;

/// A replica's power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    /// Requested, cold-starting until `ready_at_us`.
    Starting {
        ready_at_us: u64,
    },
    Ready,
    /// Takes no new requests; released when idle.
    Draining,
}

impl Power {
    /// Holds a GPU (is billed).
    pub fn billed(self) -> bool {
        self != Power::Off
    }
}

/// How a run is autoscaled.
pub struct Scaling {
    pub autoscaler: Box<dyn Autoscaler>,
    pub bounds: ScaleBounds,
    /// Prices arrivals for the autoscaler's MU-rate input.
    pub coeffs: MuCoefficients,
    pub tick_us: u64,
    pub cold_start_us: u64,
    /// Replicas ready at the start.
    pub initial: usize,
}

/// One autoscaler tick, for the replica-count plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalePoint {
    pub at_us: u64,
    pub desired: usize,
    pub ready: usize,
    pub starting: usize,
    /// Offered MU/min over the tick.
    pub mu_per_min: f64,
}

/// Ready and starting replicas.
pub fn counts(power: &[Power]) -> (usize, usize) {
    power.iter().fold((0, 0), |(r, s), p| match p {
        Power::Ready => (r + 1, s),
        Power::Starting { .. } => (r, s + 1),
        _ => (r, s),
    })
}

/// Moves `power` toward `desired` ready-or-starting replicas. `rack_of` gives each
/// replica's rack and `work` its outstanding requests. Returns the replicas that were
/// switched on from `Off` (their engines start cold).
pub fn reconcile(
    power: &mut [Power],
    desired: usize,
    rack_of: &dyn Fn(usize) -> usize,
    racks: usize,
    work: &[u32],
    now_us: u64,
    cold_start_us: u64,
) -> Vec<usize> {
    let mut started = Vec::new();
    let (ready, starting) = counts(power);
    let mut current = ready + starting;
    let nracks = racks.max(1);
    let mut per_rack = vec![0usize; nracks];
    for (i, p) in power.iter().enumerate() {
        if matches!(p, Power::Ready | Power::Starting { .. }) {
            per_rack[rack_of(i) % nracks] += 1;
        }
    }
    while current < desired {
        // Thinnest rack first; within it a draining replica (warm, instant), then the
        // lowest index.
        let pick = power
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p, Power::Off | Power::Draining))
            .min_by_key(|&(i, p)| (per_rack[rack_of(i) % nracks], *p != Power::Draining, i))
            .map(|(i, _)| i);
        let Some(i) = pick else { break };
        if power[i] == Power::Draining {
            power[i] = Power::Ready;
        } else {
            power[i] = Power::Starting {
                ready_at_us: now_us.saturating_add(cold_start_us),
            };
            started.push(i);
        }
        per_rack[rack_of(i) % nracks] += 1;
        current += 1;
    }
    while current > desired {
        // Cancel the pending start that would be ready last, before draining anything.
        let pending = power
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Power::Starting { ready_at_us } => Some((*ready_at_us, i)),
                _ => None,
            })
            .max();
        if let Some((_, i)) = pending {
            power[i] = Power::Off;
            per_rack[rack_of(i) % nracks] -= 1;
            current -= 1;
            continue;
        }
        // Drain from the fullest rack the replica with the least outstanding work.
        let victim = power
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == Power::Ready)
            .min_by_key(|&(i, _)| {
                (
                    std::cmp::Reverse(per_rack[rack_of(i) % nracks]),
                    work.get(i).copied().unwrap_or(0),
                    std::cmp::Reverse(i),
                )
            })
            .map(|(i, _)| i);
        let Some(i) = victim else { break };
        power[i] = Power::Draining;
        per_rack[rack_of(i) % nracks] -= 1;
        current -= 1;
    }
    started
}

/// Promotes replicas whose cold start is over.
pub fn promote(power: &mut [Power], now_us: u64) {
    for p in power.iter_mut() {
        if let Power::Starting { ready_at_us } = *p {
            if ready_at_us <= now_us {
                *p = Power::Ready;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rack(i: usize) -> usize {
        i % 3
    }

    #[test]
    fn starts_spread_over_racks_and_reuses_draining_replicas_first() {
        let mut p = vec![Power::Off; 9];
        p[0] = Power::Ready;
        p[3] = Power::Draining; // rack 0
        let started = reconcile(&mut p, 3, &rack, 3, &[0; 9], 100, 60);
        // Racks 1 and 2 are empty: one replica each, cold.
        assert_eq!(started, vec![1, 2]);
        assert_eq!(p[1], Power::Starting { ready_at_us: 160 });
        assert_eq!(p[3], Power::Draining);
        let started = reconcile(&mut p, 4, &rack, 3, &[0; 9], 100, 60);
        assert!(started.is_empty(), "the draining replica comes back warm");
        assert_eq!(p[3], Power::Ready);
        promote(&mut p, 160);
        assert_eq!(counts(&p), (4, 0));
    }

    #[test]
    fn scaling_down_cancels_pending_starts_then_drains_the_idlest() {
        let mut p = vec![
            Power::Ready,
            Power::Ready,
            Power::Ready,
            Power::Starting { ready_at_us: 50 },
        ];
        let work = [5, 1, 7, 0];
        reconcile(&mut p, 2, &|i| i % 2, 2, &work, 0, 60);
        assert_eq!(p[3], Power::Off);
        // Rack 0 has two ready replicas (0 and 2): drain its idler one.
        assert_eq!(p[0], Power::Draining);
        assert_eq!(counts(&p), (2, 0));
    }

    proptest! {
        #[test]
        fn reaches_any_reachable_target(
            init in proptest::collection::vec(0u8..4, 1..40),
            desired in 0usize..50,
        ) {
            let mut p: Vec<Power> = init
                .iter()
                .map(|k| match k {
                    0 => Power::Off,
                    1 => Power::Starting { ready_at_us: 10 },
                    2 => Power::Ready,
                    _ => Power::Draining,
                })
                .collect();
            let n = p.len();
            let before = p.clone();
            reconcile(&mut p, desired, &rack, 3, &vec![0; n], 0, 60);
            let (r, s) = counts(&p);
            prop_assert_eq!(r + s, desired.min(n));
            // A serving replica is never switched off with work on it: it drains first.
            for (b, a) in before.iter().zip(&p) {
                if *b == Power::Ready {
                    prop_assert!(matches!(a, Power::Ready | Power::Draining));
                }
            }
        }
    }
}
