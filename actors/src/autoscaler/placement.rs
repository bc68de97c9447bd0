//! Where the autoscaler's count becomes replicas on hosts: which host starts the next
//! replica, which replica drains first. Pure, so the leader's decision can be replayed
//! and property-tested.
//!
//! - **Spread.** A new replica goes to the rack with the fewest replicas in service, then
//!   the host with the fewest, so losing one rack costs as little capacity as it can.
//! - **Warm first.** A replica still draining is taken back before anything cold-starts:
//!   its engine and prefix cache are already there.
//! - **Cheapest first down.** A start still in progress is cancelled before a serving
//!   replica is drained; then the fullest rack gives one up, so scaling in keeps the
//!   spread scaling out made; among equals, the one with the fewest requests in flight,
//!   since a draining replica holds its GPU until its last request is done.
//! - **GPUs.** Every replica a host holds (starting, serving, unhealthy or draining)
//!   occupies one of its GPUs until it is stopped; a host that is not live gets nothing.

use crate::slice::ReplicaId;
use std::collections::BTreeMap;

/// A host that can run replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub id: u64,
    pub rack: String,
    pub gpus: usize,
    /// Answering the leader; a host that is not gets no new replica.
    pub live: bool,
}

/// A replica's life as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Starting,
    Serving,
    /// Out of service (its supervisor is restarting it); not counted as capacity.
    Unhealthy,
    Draining,
}

impl SlotState {
    /// Counts toward the desired number.
    fn active(self) -> bool {
        matches!(self, SlotState::Starting | SlotState::Serving)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub id: ReplicaId,
    pub host: u64,
    pub state: SlotState,
    /// Requests in flight on it, as far as the caller knows (0 when it does not): only
    /// breaks ties between drain candidates.
    pub in_flight: u64,
}

/// What to change so that `desired` replicas are starting or serving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Hosts to start one new replica on each (a host may appear more than once).
    pub start: Vec<u64>,
    /// Draining replicas to put back into service.
    pub undrain: Vec<ReplicaId>,
    /// Replicas to drain (a starting one is simply cancelled by its host).
    pub drain: Vec<ReplicaId>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.undrain.is_empty() && self.drain.is_empty()
    }
}

/// The changes that bring `replicas` to `desired` active ones over `hosts`. Fewer than
/// asked are started when the live hosts have no free GPU left.
pub fn place(desired: usize, hosts: &[Host], replicas: &[Placed]) -> Placement {
    let host_of: BTreeMap<u64, &Host> = hosts.iter().map(|h| (h.id, h)).collect();
    let rack = |host: u64| host_of.get(&host).map_or("", |h| h.rack.as_str());
    let mut active_on: BTreeMap<u64, usize> = BTreeMap::new();
    let mut used_on: BTreeMap<u64, usize> = BTreeMap::new();
    let mut active_in: BTreeMap<&str, usize> = hosts.iter().map(|h| (h.rack.as_str(), 0)).collect();
    for r in replicas {
        *used_on.entry(r.host).or_default() += 1;
        if r.state.active() {
            *active_on.entry(r.host).or_default() += 1;
            *active_in.entry(rack(r.host)).or_default() += 1;
        }
    }
    let mut active = replicas.iter().filter(|r| r.state.active()).count();
    let mut plan = Placement::default();

    if active < desired {
        // Warm replicas first, from the thinnest racks.
        let mut draining: Vec<&Placed> = replicas
            .iter()
            .filter(|r| r.state == SlotState::Draining)
            .filter(|r| host_of.get(&r.host).is_some_and(|h| h.live))
            .collect();
        while active < desired && !draining.is_empty() {
            let best = (0..draining.len())
                .min_by_key(|&i| {
                    let r = draining[i];
                    (
                        active_in[rack(r.host)],
                        active_on.get(&r.host).copied().unwrap_or(0),
                        r.id,
                    )
                })
                .unwrap_or(0);
            let r = draining.swap_remove(best);
            plan.undrain.push(r.id);
            *active_on.entry(r.host).or_default() += 1;
            *active_in.entry(rack(r.host)).or_default() += 1;
            active += 1;
        }
        while active < desired {
            let Some(h) = hosts
                .iter()
                .filter(|h| h.live && used_on.get(&h.id).copied().unwrap_or(0) < h.gpus)
                .min_by_key(|h| {
                    (
                        active_in[h.rack.as_str()],
                        active_on.get(&h.id).copied().unwrap_or(0),
                        h.id,
                    )
                })
            else {
                break;
            };
            plan.start.push(h.id);
            *used_on.entry(h.id).or_default() += 1;
            *active_on.entry(h.id).or_default() += 1;
            *active_in.entry(h.rack.as_str()).or_default() += 1;
            active += 1;
        }
    } else if active > desired {
        let mut candidates: Vec<&Placed> = replicas.iter().filter(|r| r.state.active()).collect();
        while active > desired && !candidates.is_empty() {
            let worst = (0..candidates.len())
                .max_by_key(|&i| {
                    let r = candidates[i];
                    (
                        r.state == SlotState::Starting,
                        active_in[rack(r.host)],
                        active_on.get(&r.host).copied().unwrap_or(0),
                        std::cmp::Reverse(r.in_flight),
                        r.id,
                    )
                })
                .unwrap_or(0);
            let r = candidates.swap_remove(worst);
            plan.drain.push(r.id);
            if let Some(n) = active_on.get_mut(&r.host) {
                *n -= 1;
            }
            if let Some(n) = active_in.get_mut(rack(r.host)) {
                *n -= 1;
            }
            active -= 1;
        }
    }
    plan
}

/// Starts that will not become ready: their host is not live, or they have been
/// starting longer than the timeout. They are withdrawn so that placement tries
/// elsewhere. Remembers when each start was first seen (on a new leader: from then).
#[derive(Debug, Clone, Default)]
pub struct StartWatch {
    since_us: BTreeMap<ReplicaId, u64>,
}

impl StartWatch {
    pub fn stalled(
        &mut self,
        replicas: &[Placed],
        hosts: &[Host],
        now_us: u64,
        timeout_us: u64,
    ) -> Vec<ReplicaId> {
        let starting: Vec<&Placed> = replicas
            .iter()
            .filter(|r| r.state == SlotState::Starting)
            .collect();
        self.since_us
            .retain(|id, _| starting.iter().any(|r| r.id == *id));
        let live = |host: u64| hosts.iter().any(|h| h.id == host && h.live);
        starting
            .into_iter()
            .filter(|r| {
                let since = *self.since_us.entry(r.id).or_insert(now_us);
                !live(r.host) || now_us.saturating_sub(since) > timeout_us
            })
            .map(|r| r.id)
            .collect()
    }
}

/// The lowest local index on `host` that no replica there uses: new replica ids are
/// `host << 20 | index`, like the ones a node launches at start.
pub fn free_index(host: u64, taken: impl IntoIterator<Item = ReplicaId>) -> usize {
    let used: std::collections::BTreeSet<usize> = taken
        .into_iter()
        .filter(|id| id.0 >> 20 == host)
        .map(super::local_index)
        .collect();
    (0..).find(|i| !used.contains(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hosts(racks: usize, per_rack: usize, gpus: usize) -> Vec<Host> {
        (0..racks * per_rack)
            .map(|i| Host {
                id: i as u64 + 1,
                rack: format!("r{}", i % racks),
                gpus,
                live: true,
            })
            .collect()
    }

    /// Replica `i` of `host`, as a node would number it.
    fn slot(host: u64, i: u64, state: SlotState) -> Placed {
        Placed {
            id: ReplicaId((host << 20) | i),
            host,
            state,
            in_flight: 0,
        }
    }

    /// Applies a plan the way the fleet would once every start is ready and every
    /// drain has finished.
    fn settle(replicas: &mut Vec<Placed>, plan: &Placement) {
        replicas.retain(|r| !plan.drain.contains(&r.id));
        for r in replicas.iter_mut() {
            if plan.undrain.contains(&r.id) {
                r.state = SlotState::Serving;
            }
        }
        for &h in &plan.start {
            let index = free_index(h, replicas.iter().map(|r| r.id));
            replicas.push(Placed {
                id: ReplicaId((h << 20) | index as u64),
                host: h,
                state: SlotState::Serving,
                in_flight: 0,
            });
        }
    }

    fn per_rack(hosts: &[Host], replicas: &[Placed]) -> BTreeMap<String, usize> {
        let mut m: BTreeMap<String, usize> = hosts.iter().map(|h| (h.rack.clone(), 0)).collect();
        for r in replicas.iter().filter(|r| r.state.active()) {
            let h = hosts.iter().find(|h| h.id == r.host).unwrap();
            *m.get_mut(&h.rack).unwrap() += 1;
        }
        m
    }

    #[test]
    fn scaling_out_spreads_over_racks_and_scaling_in_keeps_the_spread() {
        let hs = hosts(3, 2, 2);
        let mut fleet = Vec::new();
        for want in [1, 3, 4, 7, 12, 5, 2] {
            let plan = place(want, &hs, &fleet);
            settle(&mut fleet, &plan);
            assert_eq!(fleet.len(), want);
            let counts = per_rack(&hs, &fleet);
            let (lo, hi) = (
                counts.values().min().unwrap(),
                counts.values().max().unwrap(),
            );
            assert!(hi - lo <= 1, "{want}: {counts:?}");
        }
    }

    #[test]
    fn warm_replicas_come_back_before_cold_starts_and_starts_are_cancelled_first() {
        let hs = hosts(2, 1, 4);
        let r = |id: u64, host: u64, state| slot(host, id, state);
        let fleet = vec![
            r(0, 1, SlotState::Serving),
            r(1, 1, SlotState::Draining),
            r(0, 2, SlotState::Serving),
        ];
        let plan = place(4, &hs, &fleet);
        assert_eq!(plan.undrain, vec![ReplicaId((1 << 20) | 1)]);
        assert_eq!(plan.start, vec![2]);

        let fleet = vec![
            r(0, 1, SlotState::Serving),
            r(0, 2, SlotState::Serving),
            r(1, 2, SlotState::Starting),
        ];
        assert_eq!(place(2, &hs, &fleet).drain, vec![ReplicaId((2 << 20) | 1)]);
    }

    #[test]
    fn among_equals_the_replica_with_the_least_work_drains() {
        let hs = hosts(2, 1, 2);
        let r = |host: u64, i: u64, in_flight| Placed {
            in_flight,
            ..slot(host, i, SlotState::Serving)
        };
        let fleet = vec![r(1, 0, 3), r(1, 1, 9), r(2, 0, 0)];
        // Host 1 is the fullest; of its two, the one with 3 requests left goes.
        assert_eq!(place(2, &hs, &fleet).drain, vec![ReplicaId(1 << 20)]);
    }

    #[test]
    fn dead_hosts_and_full_hosts_get_nothing() {
        let mut hs = hosts(2, 1, 1);
        hs[0].live = false;
        let plan = place(3, &hs, &[]);
        assert_eq!(plan.start, vec![2], "one free GPU on the one live host");
        let unhealthy = Placed {
            id: ReplicaId(2 << 20),
            host: 2,
            state: SlotState::Unhealthy,
            in_flight: 0,
        };
        assert!(
            place(3, &hs, &[unhealthy]).start.is_empty(),
            "its GPU is taken"
        );
    }

    #[test]
    fn starts_on_dead_hosts_or_past_the_timeout_are_withdrawn() {
        let mut hs = hosts(2, 1, 2);
        let start = |host: u64, i: u64| slot(host, i, SlotState::Starting);
        let fleet = vec![start(1, 0), start(2, 0)];
        let mut w = StartWatch::default();
        assert!(w.stalled(&fleet, &hs, 0, 10).is_empty());
        hs[1].live = false;
        assert_eq!(w.stalled(&fleet, &hs, 5, 10), vec![ReplicaId(2 << 20)]);
        hs[1].live = true;
        assert_eq!(w.stalled(&fleet, &hs, 11, 10).len(), 2);
        // Ready meanwhile: forgotten, and a later start of the same id starts afresh.
        let mut ready = fleet.clone();
        ready[0].state = SlotState::Serving;
        w.stalled(&ready, &hs, 12, 10);
        assert!(w.stalled(&fleet, &hs, 13, 10) == vec![ReplicaId(2 << 20)]);
    }

    #[test]
    fn free_index_fills_gaps() {
        let ids = [
            ReplicaId(3 << 20),
            ReplicaId((3 << 20) | 2),
            ReplicaId(4 << 20 | 1),
        ];
        assert_eq!(free_index(3, ids), 1);
        assert_eq!(free_index(4, ids), 0);
    }

    fn arb_fleet() -> impl Strategy<Value = (Vec<Host>, Vec<Placed>, usize)> {
        (1usize..4, 1usize..4, 1usize..4)
            .prop_flat_map(|(racks, per, gpus)| {
                let hs = hosts(racks, per, gpus);
                let n = hs.len();
                let slots =
                    proptest::collection::vec((0..n, 0u8..4, any::<bool>(), 0u64..4), 0..n * gpus);
                (Just(hs), slots, 0usize..20)
            })
            .prop_map(|(mut hs, slots, desired)| {
                let mut placed: Vec<Placed> = Vec::new();
                for (h, state, dead, in_flight) in slots {
                    let host = hs[h].id;
                    if placed.iter().filter(|p| p.host == host).count() >= hs[h].gpus {
                        continue;
                    }
                    if dead {
                        hs[h].live = false;
                    }
                    let index = free_index(host, placed.iter().map(|p| p.id));
                    placed.push(Placed {
                        id: ReplicaId((host << 20) | index as u64),
                        host,
                        state: [
                            SlotState::Starting,
                            SlotState::Serving,
                            SlotState::Unhealthy,
                            SlotState::Draining,
                        ][state as usize],
                        in_flight,
                    });
                }
                (hs, placed, desired)
            })
    }

    proptest! {
        #[test]
        fn plans_respect_gpus_liveness_and_reach_the_count_when_they_can(
            (hs, fleet, desired) in arb_fleet()
        ) {
            let plan = place(desired, &hs, &fleet);
            let active = fleet.iter().filter(|r| r.state.active()).count();
            // Never both ways at once; drains and undrains touch the right replicas.
            prop_assert!(plan.drain.is_empty() || (plan.start.is_empty() && plan.undrain.is_empty()));
            for id in &plan.drain {
                let r = fleet.iter().find(|r| r.id == *id).unwrap();
                prop_assert!(r.state.active());
            }
            for id in &plan.undrain {
                let r = fleet.iter().find(|r| r.id == *id).unwrap();
                prop_assert_eq!(r.state, SlotState::Draining);
            }
            // Starts only on live hosts, within their GPUs.
            for h in &hs {
                let started = plan.start.iter().filter(|&&s| s == h.id).count();
                if started > 0 {
                    prop_assert!(h.live);
                }
                let held = fleet.iter().filter(|r| r.host == h.id).count();
                prop_assert!(held + started <= h.gpus.max(held));
            }
            let after = active + plan.start.len() + plan.undrain.len() - plan.drain.len();
            if desired <= active {
                prop_assert_eq!(after, desired);
            } else {
                let free: usize = hs
                    .iter()
                    .filter(|h| h.live)
                    .map(|h| h.gpus.saturating_sub(fleet.iter().filter(|r| r.host == h.id).count()))
                    .sum();
                let warm = fleet
                    .iter()
                    .filter(|r| r.state == SlotState::Draining)
                    .filter(|r| hs.iter().any(|h| h.id == r.host && h.live))
                    .count();
                prop_assert_eq!(after, desired.min(active + warm + free));
            }
        }
    }
}
