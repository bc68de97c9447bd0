//! The assigner: Sluice's auto-sharder, a pure function from the current [`Assignment`],
//! the measured load per key range, and the replica registry to the next assignment.
//! The Raft leader runs it every round and commits the result; the simulator runs the
//! same code in virtual time. No I/O, no clock, no randomness: the same inputs give the
//! same [`Plan`] (the registry's order does not matter either).
//!
//! # The model
//!
//! A slice of load `l` (MU/min) served by a subset of `w` replicas puts `l / w` on each of
//! them: routers spread a slice over its subset. A replica's *relative load* is its load
//! over its fair load, `capacity × (total load / total capacity)`; the *imbalance* is the
//! largest relative load, i.e. max/mean of load relative to capacity ([`imbalance`]).
//! Ineligible replicas (unhealthy, draining, zero capacity, or absent from the registry)
//! serve nothing.
//!
//! *Churn* is the load a round sends to replicas that did not serve it before: for each
//! key range, `load × |new subset \ old subset| / |new subset|` — the traffic that lands
//! on a cold prefix cache. Splitting a slice, and dropping a member from a subset, move
//! none. The churn budget bounds it per round as a fraction of the total load.
//!
//! # One round
//!
//! The phases follow Dicer's assigner (`databricks/dicer`,
//! `dicer/assigner/algorithm/src/AlgorithmExecutor.scala`), which itself follows Google's
//! Slicer (Adya et al., OSDI 2016, its weighted-move sharding algorithm):
//!
//! 1. **Repair** (mandatory, outside the budget; Dicer's `DeallocationPhase.scala` and
//!    `ConstraintPhase.scala`). Members that are ineligible or listed twice leave every
//!    subset. A subset narrower than the minimum width, or within one rack while the
//!    eligible replicas span two, gets the coldest replicas that fix it (from another
//!    rack when needed), heaviest slices first; one wider than the maximum loses its most
//!    utilized non-preferred members. This may exceed the churn budget: leaving a failed
//!    or draining replica cannot wait. It is reported apart, as `forced_churn`.
//! 2. **Merge** cold neighbours (`MergePhase.scala`): adjacent slices whose merged
//!    per-replica load stays under `merge_below`, while above the minimum slice count, and
//!    the coldest pairs regardless while above the maximum. Pairs with the same subset go
//!    first (they cost no churn); the merged slice keeps whichever half's subset moves
//!    less load. Merging may spend half the round's budget.
//! 3. **Split** hot slices (`Splitter.scala`): the slice with the highest per-replica
//!    load is split while that load is above `split_above` and the maximum slice count
//!    allows, and while the count is under the minimum. Both halves keep the subset: zero
//!    churn. The cut is where the apportioned load reaches half ([`SliceLoad`]): with one
//!    load per slice, the key midpoint, since keys are hashes and load is about uniform
//!    in a range; with finer buckets, the load median.
//! 4. **Narrow** cold subsets (Dicer's de-replication): a subset wider than the minimum
//!    drops its most utilized non-preferred member while the slice stays under
//!    `merge_below` per replica and the members left stay well inside the band (below
//!    halfway to its top), so that no widening undoes it.
//! 5. **Place** (`PlacementPhase.scala`, a greedy local search): repeatedly take the most
//!    utilized replica still in play and consider moving its share of one of its slices
//!    to one of the coldest admissible replicas (keeping two racks), or, when it is above
//!    the band, widening one of its slices (a hot slice is thus split first, and widened
//!    only when splitting is not enough — a single hot key, the slice count at its
//!    maximum, or two racks of unequal size). Apply the operation that most lowers
//!    `penalty + 0.25 × churn + replication cost` if it lowers it and fits the remaining
//!    budget; otherwise retire the replica. The penalty is zero for relative loads in
//!    `[2 − t, 1 + 0.8 (t − 1)]` (`t` = `target_imbalance`; the 0.8 leaves room for the
//!    estimated loads of fresh halves) and grows with the excess: 16 per unit above, 4
//!    below, Dicer's weights, so balanced fleets see no churn at all. Taking a slice off
//!    its preferred replica costs a little extra, and new members are appended, so
//!    `subset[0]` — the warmest prefix cache — stays put unless it must leave.
//!
//! The generation grows by one when anything changed. Load can be smoothed before the
//! round with [`SliceLoad::decayed`] (Dicer's half-life EWMA,
//! `caching/util/src/EwmaCounter.scala`).
//!
//! What differs from Dicer: our subsets are ordered (a preferred replica), must span two
//! racks, and replicas have heterogeneous capacity, so loads are relative to capacity and
//! thresholds are shares of the smallest replica's fair load; churn is a hard per-round
//! budget on moved load rather than only a penalty; the search tries a few of the coldest
//! receivers per slice instead of all of them, and on a replica serving more than 64
//! slices (a hot key split far past the slice limit) only the slices likeliest to give
//! the best move (`holdings.rs`), which keeps a round over 10,000 replicas and 100,000
//! slices under a second even then.
//!
//! # Limits
//!
//! Balance is not always reachable: with two racks every subset has a member in each, so
//! when one rack has less capacity its members must share their slices with several
//! members of the other (the placement widens subsets for that, up to `max_width`); and
//! a replica with more than `1 / w` of the fleet's capacity cannot get its share when
//! every slice has at least `w` members.

mod config;
mod fleet;
mod holdings;
mod imbalance;
mod leader;
mod load;
mod meter;
mod penalty;
mod schedule;
mod work;

#[cfg(test)]
mod tests;

pub use config::{AssignerConfig, ConfigError};
pub use fleet::ReplicaInfo;
pub use imbalance::imbalance;
pub use leader::next_assignment;
pub use load::{LoadError, SliceLoad};
pub use meter::{LoadMeter, LoadReport, DEFAULT_BUCKET_BITS};
pub use schedule::{Schedule, ScheduleConfig};

use crate::slice::{Assignment, AssignmentError, ReplicaId, Slice, SliceKey};
use fleet::Fleet;
use load::KEY_END;
use work::{Search, WSlice, Work};

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The next assignment: generation + 1 when it differs from the current one, else
    /// the current one unchanged.
    pub assignment: Assignment,
    pub changed: bool,
    /// Slices split in two (zero churn).
    pub splits: usize,
    /// Pairs of adjacent slices merged.
    pub merges: usize,
    /// Members replaced by another replica to rebalance.
    pub moves: usize,
    /// Members added to a subset to rebalance (a hot slice spread wider).
    pub widened: usize,
    /// Members dropped from a cold subset.
    pub narrowed: usize,
    /// Subset entries dropped because the replica is unhealthy, draining, absent from the
    /// registry, or listed twice.
    pub evicted: usize,
    /// Slices whose subset broke an invariant and was repaired.
    pub repaired: usize,
    /// Budgeted churn: fraction of the total load sent to replicas that did not serve it
    /// (excluding repairs). At most `churn_budget`.
    pub churn: f64,
    /// Churn of mandatory repairs, same unit; not bounded.
    pub forced_churn: f64,
    /// Max/mean relative replica load before and after the round (see [`imbalance`]).
    pub imbalance_before: f64,
    pub imbalance_after: f64,
}

/// One round of the assigner: the next assignment after `current`, given the measured
/// `load`, the replica registry and the configuration. Never fails: with no eligible
/// replica it returns `current` unchanged, and a bad `config` is clamped into range.
pub fn assign(
    current: &Assignment,
    load: &SliceLoad,
    replicas: &[ReplicaInfo],
    config: &AssignerConfig,
) -> Plan {
    assign_trying(current, load, replicas, config, Search::ROUND)
}

/// [`assign`], with the placement search cutting its work as `search` allows (tests
/// compare the shortcuts with the whole search).
fn assign_trying(
    current: &Assignment,
    load: &SliceLoad,
    replicas: &[ReplicaInfo],
    config: &AssignerConfig,
    search: Search,
) -> Plan {
    let config = config.sanitized();
    let fleet = Fleet::new(replicas);
    let unchanged = |imbalance: f64| Plan {
        assignment: current.clone(),
        changed: false,
        splits: 0,
        merges: 0,
        moves: 0,
        widened: 0,
        narrowed: 0,
        evicted: 0,
        repaired: 0,
        churn: 0.0,
        forced_churn: 0.0,
        imbalance_before: imbalance,
        imbalance_after: imbalance,
    };
    if fleet.len() == 0 {
        // No eligible replica serves anything: `imbalance`'s 1.0.
        return unchanged(1.0);
    }
    let slices = current
        .slices()
        .iter()
        .map(|s| (s.start.0 as u128, s.subset.as_slice()))
        .collect();
    let mut work = Work::new(&fleet, load, &config, slices);
    // The slices as they came, before any repair: the current assignment's imbalance.
    let imbalance_before = work.imbalance();
    let budget = config.churn_budget * work.total;
    work.repair();
    // With no measured load there is nothing to balance, and an idle minute is no reason
    // to merge the map down: only repairs apply.
    if work.total > 0.0 {
        work.merge(budget);
        work.split();
        work.narrow(budget);
        work.place(budget, search);
    }

    let out = to_slices(&fleet, &work.slices);
    if out.as_slice() == current.slices() {
        return unchanged(imbalance_before);
    }
    let Ok(assignment) = Assignment::new(current.generation + 1, out) else {
        debug_assert!(false, "the assigner built a malformed assignment");
        return unchanged(imbalance_before);
    };
    let share = |x: f64| {
        if work.total > 0.0 {
            x / work.total
        } else {
            0.0
        }
    };
    let s = &work.stats;
    Plan {
        // `assignment` is these slices: the same ranges and members, in the same order.
        imbalance_after: work.imbalance(),
        assignment,
        changed: true,
        splits: s.splits,
        merges: s.merges,
        moves: s.moves,
        widened: s.widened,
        narrowed: s.narrowed,
        evicted: s.evicted,
        repaired: s.repaired,
        churn: share(s.churn).max(0.0),
        forced_churn: share(s.forced),
        imbalance_before,
    }
}

/// A first assignment for a registry, before any load is known: an even cut of the
/// keyspace, fine enough that an even load would need no split, with rack-spread subsets
/// of the minimum width placed so that each replica's share follows its capacity and
/// preferred replicas rotate. Its generation is 1.
pub fn initial_assignment(
    replicas: &[ReplicaInfo],
    config: &AssignerConfig,
) -> Result<Assignment, AssignmentError> {
    let config = config.sanitized();
    let fleet = Fleet::new(replicas);
    let n = fleet.len();
    if n == 0 {
        return Err(AssignmentError::NoReplicas);
    }
    let width = config
        .min_width
        .min(n)
        .max(if fleet.racks >= 2 { 2 } else { 1 });
    // 10% finer than strictly needed, so that an even load sits clearly under the split
    // threshold.
    let want =
        1.1 * fleet.total_capacity() / (config.split_above * fleet.min_capacity() * width as f64);
    let count = (want.ceil() as usize)
        .clamp(
            config.min_slices_per_replica.saturating_mul(n),
            config.max_slices_per_replica.saturating_mul(n),
        )
        .max(1);
    let load = SliceLoad::uniform(count as f64);
    let none: &[ReplicaId] = &[];
    let slices = (0..count)
        .map(|i| ((i as u128 * KEY_END) / count as u128, none))
        .collect();
    let mut work = Work::new(&fleet, &load, &config, slices);
    work.repair();
    work.place(f64::INFINITY, Search::ROUND);
    work.rotate_leaders();
    Assignment::new(1, to_slices(&fleet, &work.slices))
}

fn to_slices(fleet: &Fleet, slices: &[WSlice]) -> Vec<Slice> {
    slices
        .iter()
        .map(|s| Slice {
            start: SliceKey(s.start as u64),
            subset: s.subset.iter().map(|&r| fleet.ids[r as usize]).collect(),
        })
        .collect()
}
