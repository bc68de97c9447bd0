//! In-flight MU per replica and per slice, kept exact.
//!
//! Amounts are stored as integer micro-MU, and each request remembers what it added,
//! so that when every request has finished every total is exactly zero again.
//!
//! Per replica the ledger keeps two sums: the MU still owed (what the replica's
//! utilization and metrics report) and the *queue*: the part of it that delays a
//! request arriving now, which is what the choice weighs (see [`Charge`]).

use super::id_map::IdMap;
use crate::slice::{ReplicaId, SliceKey};
use std::collections::HashMap;

/// Identifies one in-flight request inside one router.
pub type RequestId = u64;

const MICRO: f64 = 1_000_000.0;

fn to_micro(mu: f64) -> i64 {
    if mu.is_finite() && mu > 0.0 {
        (mu * MICRO).round().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// What one request in flight adds to its replica.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Charge {
    /// MU still owed: its prefill until the first token, and the decode left.
    pub mu: f64,
    /// The part of `mu` a request arriving now would wait for: all of a prefill still
    /// queued, but only a share of the decode left, because a newcomer's prefill joins
    /// the running decodes' steps instead of waiting for them to end.
    pub queue_mu: f64,
}

impl Charge {
    /// A charge that delays newcomers by all of it.
    pub fn whole(mu: f64) -> Self {
        Self { mu, queue_mu: mu }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    replica: ReplicaId,
    slice: SliceKey,
    micro: i64,
    queue_micro: i64,
}

/// Totals for one replica.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplicaInflight {
    pub mu: f64,
    pub requests: u64,
    /// The MU a request arriving now would wait for (see [`Charge::queue_mu`]).
    pub queue_mu: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    micro: i64,
    queue_micro: i64,
    requests: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Ledger {
    requests: IdMap<RequestId, Entry>,
    replicas: IdMap<ReplicaId, Totals>,
    slices: HashMap<SliceKey, i64>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts charging `charge` for request `id` on `replica`. A second admit of the
    /// same id replaces the first (a retry moved it to another replica).
    pub fn admit(&mut self, id: RequestId, replica: ReplicaId, slice: SliceKey, charge: Charge) {
        self.finish(id);
        let (micro, queue_micro) = (to_micro(charge.mu), to_micro(charge.queue_mu));
        self.requests.insert(
            id,
            Entry {
                replica,
                slice,
                micro,
                queue_micro,
            },
        );
        let r = self.replicas.entry(replica).or_default();
        r.micro += micro;
        r.queue_micro += queue_micro;
        r.requests += 1;
        *self.slices.entry(slice).or_default() += micro;
    }

    /// Sets the request's remaining charge (tokens have streamed back).
    pub fn update(&mut self, id: RequestId, charge: Charge) {
        let Some(e) = self.requests.get_mut(&id) else {
            return;
        };
        let (micro, queue_micro) = (to_micro(charge.mu), to_micro(charge.queue_mu));
        let delta = micro - e.micro;
        let queue_delta = queue_micro - e.queue_micro;
        e.micro = micro;
        e.queue_micro = queue_micro;
        if let Some(r) = self.replicas.get_mut(&e.replica) {
            r.micro += delta;
            r.queue_micro += queue_delta;
        }
        if let Some(s) = self.slices.get_mut(&e.slice) {
            *s += delta;
        }
    }

    /// Stops charging for request `id`; a no-op if it is not in flight.
    pub fn finish(&mut self, id: RequestId) {
        let Some(e) = self.requests.remove(&id) else {
            return;
        };
        if let Some(r) = self.replicas.get_mut(&e.replica) {
            r.micro -= e.micro;
            r.queue_micro -= e.queue_micro;
            r.requests -= 1;
            if r.requests == 0 {
                self.replicas.remove(&e.replica);
            }
        }
        if let Some(s) = self.slices.get_mut(&e.slice) {
            *s -= e.micro;
            if *s == 0 {
                self.slices.remove(&e.slice);
            }
        }
    }

    /// The replica request `id` is charged to, if it is in flight.
    pub fn placed_on(&self, id: RequestId) -> Option<ReplicaId> {
        self.requests.get(&id).map(|e| e.replica)
    }

    pub fn replica(&self, id: ReplicaId) -> ReplicaInflight {
        self.replicas
            .get(&id)
            .map_or_else(ReplicaInflight::default, |t| ReplicaInflight {
                mu: t.micro as f64 / MICRO,
                requests: t.requests,
                queue_mu: t.queue_micro as f64 / MICRO,
            })
    }

    pub fn slice_mu(&self, key: SliceKey) -> f64 {
        self.slices.get(&key).map_or(0.0, |&m| m as f64 / MICRO)
    }

    /// In-flight MU of every slice with work in flight.
    pub fn slices(&self) -> impl Iterator<Item = (SliceKey, f64)> + '_ {
        self.slices.iter().map(|(&k, &m)| (k, m as f64 / MICRO))
    }

    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admit_update_finish() {
        let mut l = Ledger::new();
        l.admit(1, ReplicaId(0), SliceKey(5), Charge::whole(100.0));
        l.admit(
            2,
            ReplicaId(0),
            SliceKey(6),
            Charge {
                mu: 50.0,
                queue_mu: 20.0,
            },
        );
        assert_eq!(
            l.replica(ReplicaId(0)),
            ReplicaInflight {
                mu: 150.0,
                requests: 2,
                queue_mu: 120.0,
            }
        );
        l.update(1, Charge::whole(30.0));
        assert_eq!(l.replica(ReplicaId(0)).mu, 80.0);
        assert_eq!(l.slice_mu(SliceKey(5)), 30.0);
        // A retry moves the request.
        l.admit(2, ReplicaId(1), SliceKey(6), Charge::whole(50.0));
        assert_eq!(
            l.replica(ReplicaId(0)),
            ReplicaInflight {
                mu: 30.0,
                requests: 1,
                queue_mu: 30.0,
            }
        );
        l.finish(1);
        l.finish(2);
        l.finish(2);
        assert_eq!(l.replica(ReplicaId(0)), ReplicaInflight::default());
        assert_eq!(l.in_flight(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u64, u64, u64, f64),
        Update(u64, f64),
        Finish(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..20, 0u64..4, 0u64..6, 0.0f64..1e6)
                .prop_map(|(a, b, c, d)| Op::Admit(a, b, c, d)),
            (0u64..20, 0.0f64..1e6).prop_map(|(a, b)| Op::Update(a, b)),
            (0u64..20).prop_map(Op::Finish),
        ]
    }

    proptest! {
        #[test]
        fn totals_are_exactly_zero_once_everything_finishes(ops in proptest::collection::vec(op(), 0..200)) {
            let mut l = Ledger::new();
            for o in ops {
                match o {
                    Op::Admit(id, r, s, mu) => l.admit(id, ReplicaId(r), SliceKey(s), Charge { mu, queue_mu: mu / 3.0 }),
                    Op::Update(id, mu) => l.update(id, Charge { mu, queue_mu: mu / 2.0 }),
                    Op::Finish(id) => l.finish(id),
                }
                for r in 0..4 {
                    prop_assert!(l.replica(ReplicaId(r)).mu >= 0.0);
                }
            }
            for id in 0..20 { l.finish(id); }
            for r in 0..4 { prop_assert_eq!(l.replica(ReplicaId(r)), ReplicaInflight::default()); }
            prop_assert_eq!(l.slices().count(), 0);
        }
    }
}
