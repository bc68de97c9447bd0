//! Autoscaling in the simulator: an autoscaler core decides the replica count every tick,
//! and the fleet follows it the way a real one does — new replicas cold-start before they
//! take traffic (a GPU is paid for from the moment it is requested), removed replicas
//! first stop taking new requests and are released only when their last request is done.
//!
//! Neither the count nor which replica to start or stop is decided here: the live
//! leader's scaling step (`sluice_actors::autoscaler::ScaleLeader`: the autoscaler core,
//! then placement) decides both, over the simulated fleet.

use sluice_actors::autoscaler::placement::{Host, Placed, SlotState};
use sluice_actors::autoscaler::{ScaleBounds, ScaleCommand, ScaleLeader, ScaleView};
use sluice_actors::mu::MuCoefficients;
use sluice_actors::slice::ReplicaId;

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
    /// The leader's scaling step, as the live leader runs it.
    pub leader: ScaleLeader,
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

/// What the fleet did over a tick, for the scaler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickLoad {
    pub mu_per_min: f64,
    pub in_flight_requests: f64,
    pub requests_per_s: f64,
    pub capacity_mu_per_min: f64,
}

/// One tick of the live leader's scaling step over the simulated fleet, and the fleet's
/// power following its commands. The simulated fleet has no hosts, so each replica slot
/// is a one-GPU host in its rack; `work` is each replica's outstanding requests. Returns
/// the desired count and the replicas switched on from `Off` (their engines start cold).
#[allow(clippy::too_many_arguments)]
pub fn tick(
    leader: &mut ScaleLeader,
    power: &mut [Power],
    load: TickLoad,
    bounds: ScaleBounds,
    rack_of: &dyn Fn(usize) -> usize,
    work: &[u32],
    now_us: u64,
    cold_start_us: u64,
) -> (usize, Vec<usize>) {
    let (hosts, placed) = as_placement(power, rack_of, work);
    let taken: Vec<ReplicaId> = placed.iter().map(|p| p.id).collect();
    let t = leader.tick(&ScaleView {
        now_us,
        mu_per_min: load.mu_per_min,
        in_flight_requests: load.in_flight_requests,
        requests_per_s: load.requests_per_s,
        capacity_mu_per_min: load.capacity_mu_per_min,
        bounds,
        placed: &placed,
        hosts: &hosts,
        taken: &taken,
        recorded: None,
        // A simulated start always completes after its cold start.
        start_timeout_us: u64::MAX,
        // Every simulated host is live.
        liveness_grace_us: 0,
    });
    let n = power.len();
    let slot = |id: ReplicaId| usize::try_from(id.0).ok().filter(|&i| i < n);
    let mut started = Vec::new();
    for command in t.commands {
        match command {
            ScaleCommand::Undrain(id) => {
                if let Some(i) = slot(id) {
                    power[i] = Power::Ready;
                }
            }
            // A start not yet ready is cancelled outright; a serving replica drains.
            ScaleCommand::Drain(id) => {
                if let Some(i) = slot(id) {
                    power[i] = match power[i] {
                        Power::Starting { .. } => Power::Off,
                        _ => Power::Draining,
                    };
                }
            }
            ScaleCommand::Start { host, .. } => {
                if let Some(i) = usize::try_from(host).ok().filter(|&i| i < n) {
                    power[i] = Power::Starting {
                        ready_at_us: now_us.saturating_add(cold_start_us),
                    };
                    started.push(i);
                }
            }
            ScaleCommand::SetDesired(_) | ScaleCommand::Withdraw(_) => {}
        }
    }
    (t.desired, started)
}

/// The fleet as the placement core sees it: slot `i` is host `i` (one GPU, in rack
/// `rack_of(i)`) and, unless it is off, replica `i` on it.
fn as_placement(
    power: &[Power],
    rack_of: &dyn Fn(usize) -> usize,
    work: &[u32],
) -> (Vec<Host>, Vec<Placed>) {
    let hosts = (0..power.len())
        .map(|i| Host {
            id: i as u64,
            rack: rack_of(i).to_string(),
            gpus: 1,
            live: true,
        })
        .collect();
    let placed = power
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let state = match p {
                Power::Off => return None,
                Power::Starting { .. } => SlotState::Starting,
                Power::Ready => SlotState::Serving,
                Power::Draining => SlotState::Draining,
            };
            Some(Placed {
                id: ReplicaId(i as u64),
                host: i as u64,
                state,
                in_flight: work.get(i).copied().map_or(0, u64::from),
            })
        })
        .collect();
    (hosts, placed)
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
    use sluice_actors::autoscaler::placement::place;
    use sluice_actors::autoscaler::{LeaderScaler, StaticPeak};

    /// The leader's step with a scaler that wants `desired`.
    fn reconcile(
        power: &mut [Power],
        desired: usize,
        rack_of: &dyn Fn(usize) -> usize,
        work: &[u32],
        now_us: u64,
        cold_start_us: u64,
    ) -> Vec<usize> {
        let mut leader = ScaleLeader::new(LeaderScaler::new(Box::new(StaticPeak::new(desired)), 0));
        let load = TickLoad {
            mu_per_min: 0.0,
            in_flight_requests: 0.0,
            requests_per_s: 0.0,
            capacity_mu_per_min: 1.0,
        };
        let bounds = ScaleBounds {
            min: 0,
            max: usize::MAX,
            reserved_floor: 0,
        };
        tick(
            &mut leader,
            power,
            load,
            bounds,
            rack_of,
            work,
            now_us,
            cold_start_us,
        )
        .1
    }

    fn rack(i: usize) -> usize {
        i % 3
    }

    #[test]
    fn draining_replicas_come_back_warm_before_cold_starts_spread_over_racks() {
        let mut p = vec![Power::Off; 9];
        p[0] = Power::Ready;
        p[3] = Power::Draining; // rack 0
        let started = reconcile(&mut p, 3, &rack, &[0; 9], 100, 60);
        assert_eq!(p[3], Power::Ready, "warm first");
        // Rack 0 now has two: the cold start goes to the thinnest rack, 1.
        assert_eq!(started, vec![1]);
        assert_eq!(p[1], Power::Starting { ready_at_us: 160 });
        let started = reconcile(&mut p, 4, &rack, &[0; 9], 100, 60);
        assert_eq!(started, vec![2]);
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
        reconcile(&mut p, 2, &|i| i % 2, &work, 0, 60);
        assert_eq!(p[3], Power::Off);
        // Rack 0 has two ready replicas (0 and 2): drain its idler one.
        assert_eq!(p[0], Power::Draining);
        assert_eq!(counts(&p), (2, 0));
    }

    /// The same fleet named as the live leader names it: node ids for hosts, racks as
    /// in a config file, replica ids as a node mints them (`host << 20 | index`). The
    /// core must choose the same slots whatever the names.
    fn live_view(power: &[Power], work: &[u32]) -> (Vec<Host>, Vec<Placed>) {
        let (mut hosts, mut placed) = as_placement(power, &rack, work);
        for h in &mut hosts {
            h.rack = format!("rack-{}", ["a", "b", "c"][rack(h.id as usize)]);
            h.id += 100;
        }
        for p in &mut placed {
            p.host += 100;
            p.id = ReplicaId(p.host << 20);
        }
        (hosts, placed)
    }

    #[test]
    fn the_simulator_and_the_live_core_choose_the_same_replicas() {
        let mut p = vec![Power::Off; 9];
        for i in [0, 1, 2, 3, 4, 6] {
            p[i] = Power::Ready;
        }
        let work = [4, 0, 2, 1, 3, 0, 9, 0, 0];
        let slot_of_host = |h: u64| (h - 100) as usize;
        let slot_of_replica = |id: &ReplicaId| slot_of_host(id.0 >> 20);

        // Scale out by two: the live core starts on these hosts...
        let (hosts, placed) = live_view(&p, &work);
        let out = place(8, &hosts, &placed);
        let live: Vec<usize> = out.start.iter().map(|&h| slot_of_host(h)).collect();
        // ...and the simulator starts the same slots.
        let mut sim = p.clone();
        assert_eq!(reconcile(&mut sim, 8, &rack, &work, 0, 60), live);
        assert_eq!(live, vec![5, 7]);

        // Scale in by two: rack 0 (slots 0, 3, 6) is the fullest; then all racks tie at
        // two and the least busy of the ties goes.
        let (hosts, placed) = live_view(&p, &work);
        let in_ = place(4, &hosts, &placed);
        let live: Vec<usize> = in_.drain.iter().map(slot_of_replica).collect();
        let mut sim = p.clone();
        reconcile(&mut sim, 4, &rack, &work, 0, 60);
        let drained: Vec<usize> = (0..9).filter(|&i| sim[i] == Power::Draining).collect();
        let mut sorted = live.clone();
        sorted.sort_unstable();
        assert_eq!(drained, sorted);
        assert_eq!(live, vec![3, 1]);
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
            reconcile(&mut p, desired, &rack, &vec![0; n], 0, 60);
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
