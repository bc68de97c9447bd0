//! The mutable working state of one assigner round and its phases.
//!
//! Replicas are the eligible replicas of a [`Fleet`], by index. Every slice remembers,
//! per key range ("piece"), the subset that served those keys after the round's
//! mandatory repairs (its "base"), so that the load a change sends to replicas that did
//! not serve it before — the churn — is known exactly while the round runs.

use super::config::AssignerConfig;
use super::fleet::{Fleet, Members};
use super::holdings::{around, share_key, Holdings, Seen};
use super::imbalance::Spread;
use super::load::{Halves, SliceLoad};
use super::penalty::{Band, Side};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// Penalty weights of the placement search besides the band's ([`Band::penalty`]), after
/// Dicer's `PlacementPhase.scala`: moving load costs 0.25 per unit, and adding a replica
/// to a subset costs the slice's per-replica load.
const CHURN_PENALTY: f64 = 0.25;
const REPLICATION_PENALTY: f64 = 1.0;
/// Extra cost, per unit of load, of taking a slice off its preferred replica (whose
/// prefix cache is the warmest).
const PREFERRED_PENALTY: f64 = 0.25;
/// How many of the coldest admissible replicas each candidate operation tries.
const RECEIVERS: usize = 6;
/// How many of the coldest replicas the placement search reads once per step, out of
/// which most slices find their receivers.
const COOL_PREFIX: usize = 4 * RECEIVERS;
/// How many of the largest shares, and of the shares nearest each receiver's best
/// amount (on each side), [`Work::likely`] tries.
const LARGEST: usize = 4;
const AROUND: usize = 2;
/// Share of the round's churn budget that merging may spend; rebalancing gets the rest.
const MERGE_BUDGET_SHARE: f64 = 0.5;
/// Rebalancing aims under `1 + AIM × (target_imbalance − 1)`, leaving room for the
/// error of estimating the load of freshly split halves.
const AIM: f64 = 0.8;

/// Reads what [`Work::best_op`] will read of each of `on_h`'s slices, in one pass whose
/// reads do not wait on each other, so that their cache misses overlap instead of
/// coming one at a time (a hot replica's slices sit anywhere in memory). A plain slice
/// is read only if a candidate of it may fit the `room` left in the budget, and its
/// pieces and bases never.
fn warm(work: &Work<'_>, on_h: &[u32], room: f64) {
    let (slices, bases, plain) = (&work.slices, &work.bases, &work.plain);
    let mut touched = 0u64;
    for &si in on_h {
        let plain = plain.get(si as usize).copied().flatten();
        if plain.is_some_and(|p| p.over(room)) {
            continue;
        }
        if let Some(s) = slices.get(si as usize) {
            touched ^= s.load.to_bits();
            touched ^= u64::from(s.subset.first().copied().unwrap_or(0));
            if plain.is_none() {
                let first = work.pieces_of(s).first();
                touched ^= first.map_or(0, |p| p.load.to_bits());
                if let Some(b) = first.and_then(|p| bases.get(p.base)) {
                    touched ^= u64::from(b.first().copied().unwrap_or(0));
                }
            }
        }
    }
    std::hint::black_box(touched);
}

/// Applies the load change of a slice of load `l` going from `old` to `new` members to
/// the replicas' loads `rload` (and their `order`, if any).
fn shift(
    rload: &mut [f64],
    cap: &[f64],
    mut order: Option<&mut Order>,
    l: f64,
    old: &[u32],
    new: &[u32],
) {
    let per = |w: usize| if w == 0 { 0.0 } else { l / w as f64 };
    let (before, after) = (per(old.len()), per(new.len()));
    // A member that stays, in a subset as wide as before, keeps its load to the bit:
    // it is not taken out of the order and put back.
    let mut bump = |m: u32, d: f64| match order.as_deref_mut() {
        Some(_) if d == 0.0 => {}
        Some(o) => o.bump(rload, cap, m, d),
        None => rload[m as usize] += d,
    };
    for &m in old {
        bump(m, if new.contains(&m) { after } else { 0.0 } - before);
    }
    for &m in new {
        if !old.contains(&m) {
            bump(m, after);
        }
    }
}

/// Whether a change whose churn is `dm` does not fit the `room` left in the budget.
fn over_budget(dm: f64, room: f64) -> bool {
    dm > 0.0 && dm > room
}

/// The churn of `pieces` served by `width` members, `fresh_of` of which are new to each.
fn piece_churn(pieces: &[Piece], width: usize, fresh_of: &dyn Fn(usize, &Piece) -> usize) -> f64 {
    pieces
        .iter()
        .enumerate()
        .map(|(i, p)| p.load * fresh_of(i, p) as f64 / width as f64)
        .sum()
}

/// Most slices are as repairs left them: their members are exactly the replicas that
/// served every piece ([`Work::is_plain`]). A receiver (never a member) is then new to
/// all of it, so every candidate's churn is the same: this, for moving a member's share
/// and for widening.
#[derive(Debug, Clone, Copy)]
struct Plain {
    moved: f64,
    widened: f64,
}

impl Plain {
    /// No candidate of the slice fits the `room` left in the budget.
    fn over(&self, room: f64) -> bool {
        over_budget(self.moved, room) && over_budget(self.widened, room)
    }
}

/// The subsets of the round's starting slices after repairs, as sorted replica indices,
/// in one buffer (a `Vec` each cost an allocation and a pointer to chase per slice).
#[derive(Debug, Default)]
struct Bases {
    members: Vec<u32>,
    /// Slice `i`'s members are `members[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<u32>,
}

impl Bases {
    fn new<'s>(subsets: impl ExactSizeIterator<Item = &'s [u32]>) -> Self {
        let mut out = Self {
            members: Vec::new(),
            ends: Vec::with_capacity(subsets.len()),
        };
        for subset in subsets {
            let from = out.members.len();
            out.members.extend_from_slice(subset);
            out.members[from..].sort_unstable();
            out.ends.push(out.members.len() as u32);
        }
        out
    }

    fn get(&self, i: u32) -> Option<&[u32]> {
        let i = i as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.members.get(start..end)
    }

    fn of(&self, piece: &Piece) -> &[u32] {
        self.get(piece.base).unwrap_or_default()
    }
}

/// Keys `[start, end)` of a slice that were served by `bases[base]` after repairs.
///
/// Keys are held as 64 bits, the end of the key space as 0 (no piece ends at key 0),
/// so that a piece takes 32 bytes, not 48: a round's first split appends ~180,000 of
/// them, and every byte is fresh memory for the kernel to clear.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: u64,
    end: u64,
    load: f64,
    base: u32,
}

impl Piece {
    fn new(start: u128, end: u128, load: f64, base: u32) -> Self {
        debug_assert!(start < end && end <= super::load::KEY_END);
        Self {
            start: start as u64,
            // KEY_END (2^64) wraps to 0.
            end: end as u64,
            load,
            base,
        }
    }

    fn start(&self) -> u128 {
        u128::from(self.start)
    }

    fn end(&self) -> u128 {
        match self.end {
            0 => super::load::KEY_END,
            e => u128::from(e),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct WSlice {
    pub start: u128,
    pub end: u128,
    pub load: f64,
    /// Replica indices, preferred first.
    pub subset: Members,
    /// Where its pieces are in [`Work::pieces`].
    pieces: Span,
}

impl WSlice {
    /// The load the slice puts on each of its members.
    fn share(&self) -> f64 {
        self.load / self.subset.len().max(1) as f64
    }
}

/// A run of [`Work::pieces`]: a slice's pieces, in key order. Slices read in key order
/// hold adjacent runs until a split appends its halves' pieces at the end, so a merge
/// only joins two runs, and no slice holds a `Vec` of its own (a round over 100,000
/// slices allocated, freed and chased a pointer to each).
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    end: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub splits: usize,
    pub merges: usize,
    pub moves: usize,
    pub widened: usize,
    pub narrowed: usize,
    pub evicted: usize,
    pub repaired: usize,
    /// Budgeted churn, in MU/min.
    pub churn: f64,
    /// Churn of mandatory repairs, in MU/min.
    pub forced: f64,
}

/// Replicas ordered by utilization (load / capacity), coldest first; excluded replicas
/// leave the order but keep their load.
struct Order {
    set: BTreeSet<(u64, u32)>,
    listed: Vec<bool>,
}

fn util_key(load: f64, cap: f64) -> u64 {
    // Non-negative floats order like their bits; -0.0 and NaN read as 0.
    share_key(load / cap)
}

impl Order {
    fn new(rload: &[f64], cap: &[f64]) -> Self {
        let set = (0..rload.len())
            .map(|r| (util_key(rload[r], cap[r]), r as u32))
            .collect();
        Self {
            set,
            listed: vec![true; rload.len()],
        }
    }

    fn bump(&mut self, rload: &mut [f64], cap: &[f64], r: u32, delta: f64) {
        let i = r as usize;
        if self.listed[i] {
            self.set.remove(&(util_key(rload[i], cap[i]), r));
        }
        rload[i] += delta;
        if self.listed[i] {
            self.set.insert((util_key(rload[i], cap[i]), r));
        }
    }

    fn exclude(&mut self, rload: &[f64], cap: &[f64], r: u32) {
        let i = r as usize;
        if self.listed[i] {
            self.set.remove(&(util_key(rload[i], cap[i]), r));
            self.listed[i] = false;
        }
    }

    fn hottest(&self) -> Option<u32> {
        self.set.last().map(|&(_, r)| r)
    }

    fn coolest(&self) -> Option<u32> {
        self.set.first().map(|&(_, r)| r)
    }
}

/// How the placement search may cut its work: what rounds use is [`Search::ROUND`];
/// tests compare it with the whole search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Search {
    /// A replica serving more slices than this has only the likeliest tried
    /// ([`Work::likely`]).
    pub scan_all: usize,
    /// Whether a slice whose floor of cost is above the best candidate so far, or
    /// whose move prices as one already tried, is skipped unpriced (the same
    /// decisions, less work).
    pub prune: bool,
}

impl Search {
    pub const ROUND: Search = Search {
        scan_all: super::holdings::SCAN_ALL,
        prune: true,
    };
}

/// Buffers [`Work::best_op`] fills afresh at every step of the placement search, kept
/// between steps so that a step allocates nothing.
#[derive(Default)]
struct Scratch {
    cool: Vec<(u32, f64)>,
    receivers: Vec<(u32, f64)>,
    fresh: Vec<usize>,
    /// `fresh` without `h`: what stays new to each piece when `h` leaves the slice.
    staying: Vec<usize>,
    /// Share, churn and preferred flag of the plain slices whose moves were tried
    /// against the coolest six replicas.
    tried: Vec<(u64, u64, bool)>,
    /// The subset an applied operation leaves.
    subset: Vec<u32>,
}

/// An operation of the placement search, with the churn it adds (as the search priced
/// it: the same sum [`Work::moved`] would make of the slice after and before).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Move {
        slice: u32,
        from: u32,
        to: u32,
        churn: f64,
    },
    Widen {
        slice: u32,
        to: u32,
        churn: f64,
    },
}

pub(crate) struct Work<'a> {
    fleet: &'a Fleet,
    load: &'a SliceLoad,
    pub slices: Vec<WSlice>,
    /// Repaired subsets of the round's starting slices, as sorted replica indices.
    bases: Bases,
    /// Which starting slices broke an invariant and must be repaired.
    dirty: Vec<bool>,
    /// During placement, the churn of each plain slice's candidates.
    plain: Vec<Option<Plain>>,
    /// Every slice's pieces, each slice's a [`Span`] of them.
    pieces: Vec<Piece>,
    rload: Vec<f64>,
    min_w: usize,
    max_w: usize,
    min_slices: usize,
    max_slices: usize,
    /// Total load, MU/min.
    pub total: f64,
    /// Mean utilization: total load / total capacity.
    ustar: f64,
    /// Per-replica slice load above which a slice is hot.
    hot: f64,
    /// Per-replica slice load at or under which slices merge and subsets narrow.
    cold: f64,
    /// The band of relative load (load / fair load) that needs no rebalancing.
    band: Band,
    pub stats: Stats,
}

impl<'a> Work<'a> {
    /// A round over `slices` (start key and current subset by replica id, in key order;
    /// the first start must be 0).
    pub fn new(
        fleet: &'a Fleet,
        load: &'a SliceLoad,
        config: &AssignerConfig,
        slices: Vec<(u128, &[crate::slice::ReplicaId])>,
    ) -> Self {
        let n = fleet.len();
        let mut min_w = config.min_width.min(n).max(1);
        if fleet.racks >= 2 {
            min_w = min_w.max(2);
        }
        let max_w = config.max_width.min(n).max(min_w);
        let mut stats = Stats::default();
        let mut sweep = load.sweep();
        let count = slices.len();
        let mut out = Vec::with_capacity(count);
        let mut dirty = Vec::with_capacity(count);
        for (i, (start, subset)) in slices.iter().enumerate() {
            let end = slices.get(i + 1).map_or(super::load::KEY_END, |(s, _)| *s);
            let mut kept = Members::new();
            fleet.members_into(subset, &mut kept);
            stats.evicted += subset.len() - kept.len();
            let broken = kept.len() < subset.len()
                || kept.len() < min_w
                || kept.len() > max_w
                || (fleet.racks >= 2 && !fleet.spans_two_racks(&kept));
            dirty.push(broken);
            out.push(WSlice {
                start: *start,
                end,
                load: sweep.between(*start, end),
                subset: kept,
                pieces: Span::default(),
            });
        }
        let total: f64 = out.iter().map(|s| s.load).sum();
        let cap_total = fleet.total_capacity();
        let ustar = if cap_total > 0.0 {
            total / cap_total
        } else {
            0.0
        };
        let fair_min = ustar * fleet.min_capacity();
        let headroom = config.target_imbalance - 1.0;
        Self {
            fleet,
            load,
            slices: out,
            bases: Bases::default(),
            dirty,
            plain: Vec::new(),
            pieces: Vec::new(),
            rload: vec![0.0; n],
            min_w,
            max_w,
            min_slices: config.min_slices_per_replica.saturating_mul(n),
            max_slices: config.max_slices_per_replica.saturating_mul(n),
            total,
            ustar,
            hot: config.split_above * fair_min,
            cold: config.merge_below * fair_min,
            band: Band {
                lo: (1.0 - headroom).max(0.0),
                hi: 1.0 + AIM * headroom,
            },
            stats,
        }
    }

    /// [`imbalance`](fn@super::imbalance)'s measure of the slices as they stand, each
    /// slice's load apportioned afresh over its key range.
    pub fn imbalance(&self) -> f64 {
        let mut spread = Spread::new(self.fleet);
        let mut sweep = self.load.sweep();
        for s in &self.slices {
            spread.add(sweep.between(s.start, s.end), &s.subset);
        }
        spread.imbalance()
    }

    fn recompute_loads(&mut self) {
        self.rload.iter_mut().for_each(|l| *l = 0.0);
        for s in &self.slices {
            let share = s.share();
            for &m in &s.subset {
                self.rload[m as usize] += share;
            }
        }
    }

    /// The single rack `members` sit in, if they need a replica from another one.
    fn lone_rack(&self, members: impl IntoIterator<Item = u32>) -> Option<u32> {
        if self.fleet.racks < 2 {
            return None;
        }
        let mut members = members.into_iter();
        let rack = self.fleet.rack[members.next()? as usize];
        members
            .all(|m| self.fleet.rack[m as usize] == rack)
            .then_some(rack)
    }

    /// The coldest listed replica outside `members` (and outside `avoid_rack`).
    fn coldest(&self, order: &Order, members: &[u32], avoid_rack: Option<u32>) -> Option<u32> {
        order
            .set
            .iter()
            .map(|&(_, r)| r)
            .find(|r| !members.contains(r) && avoid_rack != Some(self.fleet.rack[*r as usize]))
    }

    /// Mandatory phase (Dicer's `DeallocationPhase` and `ConstraintPhase`): drop
    /// ineligible and duplicate members (done in [`Work::new`]), then give every broken
    /// subset its minimum width and two racks, from the coldest replicas, heaviest slices
    /// first. Preferred replicas stay first; new members are appended.
    pub fn repair(&mut self) {
        self.recompute_loads();
        let mut order = Order::new(&self.rload, &self.fleet.cap);
        let mut todo: Vec<usize> = (0..self.slices.len()).filter(|&i| self.dirty[i]).collect();
        todo.sort_by(|&a, &b| {
            self.slices[b]
                .load
                .total_cmp(&self.slices[a].load)
                .then(a.cmp(&b))
        });
        for i in todo {
            self.stats.repaired += 1;
            let l = self.slices[i].load;
            let old = self.slices[i].subset.clone();
            let mut sub = old.clone();
            while sub.len() < self.min_w {
                let avoid = self.lone_rack(sub.iter().copied());
                match self
                    .coldest(&order, &sub, avoid)
                    .or_else(|| self.coldest(&order, &sub, None))
                {
                    Some(r) => sub.push(r),
                    None => break,
                }
            }
            if let Some(rack) = self.lone_rack(sub.iter().copied()) {
                if sub.len() >= self.max_w {
                    sub.pop();
                }
                if let Some(r) = self.coldest(&order, &sub, Some(rack)) {
                    sub.push(r);
                }
            }
            while sub.len() > self.max_w {
                let Some(pos) = self.removable(&sub) else {
                    break;
                };
                sub.remove(pos);
            }
            let fresh = sub.iter().filter(|m| !old.contains(m)).count();
            self.stats.forced += l * fresh as f64 / sub.len().max(1) as f64;
            shift(
                &mut self.rload,
                &self.fleet.cap,
                Some(&mut order),
                l,
                &old,
                &sub,
            );
            self.slices[i].subset = sub;
        }
        // The repaired subsets are the round's baseline for churn.
        self.bases = Bases::new(self.slices.iter().map(|s| s.subset.as_slice()));
        self.pieces.clear();
        self.pieces.reserve_exact(self.slices.len());
        for (i, s) in self.slices.iter_mut().enumerate() {
            self.pieces
                .push(Piece::new(s.start, s.end, s.load, i as u32));
            s.pieces = Span {
                start: i as u32,
                end: i as u32 + 1,
            };
        }
    }

    /// Makes preferred replicas rotate: each slice, in key order, leads with the member
    /// that has led the fewest slices per unit of capacity so far. Only for a first
    /// assignment, where no preferred replica has a warm cache yet.
    pub fn rotate_leaders(&mut self) {
        let mut led = vec![0.0f64; self.fleet.len()];
        for s in &mut self.slices {
            let score = |m: u32| (led[m as usize] + 1.0) / self.fleet.cap[m as usize];
            let mut pos = 0;
            for p in 1..s.subset.len() {
                if score(s.subset[p]) < score(s.subset[pos]) {
                    pos = p;
                }
            }
            let leader = s.subset.remove(pos);
            s.subset.insert(0, leader);
            led[leader as usize] += 1.0;
        }
    }

    /// The non-preferred member to drop first: the most utilized one whose removal keeps
    /// two racks.
    fn removable(&self, sub: &[u32]) -> Option<usize> {
        let need_spread = self.fleet.racks >= 2 && self.fleet.spans_two_racks(sub);
        let mut best: Option<(u64, usize)> = None;
        for pos in 1..sub.len() {
            if need_spread {
                let rest: Vec<u32> = sub
                    .iter()
                    .enumerate()
                    .filter(|&(p, _)| p != pos)
                    .map(|(_, &m)| m)
                    .collect();
                if !self.fleet.spans_two_racks(&rest) {
                    continue;
                }
            }
            let m = sub[pos] as usize;
            let key = util_key(self.rload[m], self.fleet.cap[m]);
            if best.is_none_or(|(k, _)| key > k) {
                best = Some((key, pos));
            }
        }
        best.map(|(_, p)| p)
    }

    /// The slices with their pieces, as text: what tests compare (two rounds that
    /// reach the same slices may keep their pieces in another order in the arena).
    #[cfg(test)]
    pub(super) fn described(&self) -> String {
        let each = self.slices.iter().map(|s| {
            let (start, end, load) = (s.start, s.end, s.load);
            format!(
                "{start} {end} {load:?} {:?} {:?}",
                s.subset,
                self.pieces_of(s)
            )
        });
        each.collect::<Vec<_>>().join("\n")
    }

    /// Slice `s`'s pieces.
    fn pieces_of(&self, s: &WSlice) -> &[Piece] {
        self.pieces
            .get(s.pieces.start as usize..s.pieces.end as usize)
            .unwrap_or_default()
    }

    /// The pieces of two adjacent slices as one run: theirs joined when adjacent in
    /// [`Work::pieces`] (slices not split this round), else copied to its end.
    fn join(&mut self, a: Span, b: Span) -> Span {
        if a.end == b.start {
            return Span {
                start: a.start,
                end: b.end,
            };
        }
        let start = self.pieces.len() as u32;
        for run in [a, b] {
            self.pieces
                .extend_from_within(run.start as usize..run.end as usize);
        }
        Span {
            start,
            end: self.pieces.len() as u32,
        }
    }

    /// Load sent to replicas outside the base subsets if `subset` served these pieces.
    fn moved(&self, subset: &[u32], pieces: &[Piece]) -> f64 {
        if subset.is_empty() {
            return 0.0;
        }
        let w = subset.len() as f64;
        pieces
            .iter()
            .map(|p| p.load * self.fresh(subset, p) as f64 / w)
            .sum()
    }

    /// How many of `subset` did not serve `piece` after repairs.
    fn fresh(&self, subset: &[u32], piece: &Piece) -> usize {
        subset.iter().map(|&m| self.is_new(m, piece)).sum()
    }

    /// 1 if replica `m` did not serve `piece` after repairs, else 0.
    fn is_new(&self, m: u32, piece: &Piece) -> usize {
        usize::from(self.bases.of(piece).binary_search(&m).is_err())
    }

    /// Merge phase (Dicer's `MergePhase`): merges adjacent pairs whose merged per-replica
    /// load is cold, down to the minimum slice count, and the coldest pairs regardless
    /// while above the maximum. Each pass merges disjoint pairs, cheapest churn first (a
    /// pair with the same subset costs nothing), then lightest. The merged slice keeps the
    /// half's subset that moves less load (Dicer keeps the replicas sharing the most load).
    pub fn merge(&mut self, budget: f64) {
        let budget = budget * MERGE_BUDGET_SHARE;
        loop {
            let count = self.slices.len();
            if count < 2 || count <= self.min_slices {
                return;
            }
            let mut cands: Vec<(f64, f64, usize, bool, bool)> = Vec::new();
            for i in 0..count - 1 {
                let (a, b) = (&self.slices[i], &self.slices[i + 1]);
                let merged = a.load + b.load;
                // Too hot to merge whichever subset it keeps, and the count allows it:
                // not a candidate, whatever its churn.
                let widest = a.subset.len().max(b.subset.len());
                if count <= self.max_slices && merged / widest as f64 > self.cold {
                    continue;
                }
                let (pa, pb) = (self.pieces_of(a), self.pieces_of(b));
                let (own_a, own_b) = (self.moved(&a.subset, pa), self.moved(&b.subset, pb));
                let before = own_a + own_b;
                let keep_a = own_a + self.moved(&a.subset, pb);
                let keep_b = self.moved(&b.subset, pa) + own_b;
                let left = keep_a < keep_b || (keep_a == keep_b && a.load >= b.load);
                let (after, w) = if left {
                    (keep_a, a.subset.len())
                } else {
                    (keep_b, b.subset.len())
                };
                let cold = merged / w as f64 <= self.cold;
                if cold || count > self.max_slices {
                    cands.push((after - before, merged, i, left, cold));
                }
            }
            cands.sort_unstable_by(|x, y| {
                x.0.total_cmp(&y.0)
                    .then(x.1.total_cmp(&y.1))
                    .then(x.2.cmp(&y.2))
            });
            let mut plan: Vec<Option<bool>> = vec![None; count];
            let mut busy = vec![false; count];
            let mut left_count = count;
            let mut any = false;
            for (delta, _, i, left, cold) in cands {
                if left_count <= self.min_slices {
                    break;
                }
                if busy[i] || busy[i + 1] || (!cold && left_count <= self.max_slices) {
                    continue;
                }
                if delta > 0.0 && self.stats.churn + delta > budget {
                    continue;
                }
                busy[i] = true;
                busy[i + 1] = true;
                plan[i] = Some(left);
                left_count -= 1;
                self.stats.churn += delta;
                self.stats.merges += 1;
                any = true;
            }
            if !any {
                return;
            }
            // In place: the merged list is never longer than what is read so far, and a
            // fresh list per pass would be fresh memory for the kernel to clear.
            let mut kept = 0;
            let mut i = 0;
            while i < count {
                let merged = match plan[i] {
                    Some(left) => {
                        let (a, b) = (&self.slices[i], &self.slices[i + 1]);
                        let (start, end, load) = (a.start, b.end, a.load + b.load);
                        let (pa, pb) = (a.pieces, b.pieces);
                        let from = if left { i } else { i + 1 };
                        let subset = std::mem::take(&mut self.slices[from].subset);
                        let pieces = self.join(pa, pb);
                        i += 2;
                        WSlice {
                            start,
                            end,
                            load,
                            subset,
                            pieces,
                        }
                    }
                    None => {
                        i += 1;
                        std::mem::take(&mut self.slices[i - 1])
                    }
                };
                self.slices[kept] = merged;
                kept += 1;
            }
            self.slices.truncate(kept);
        }
    }

    /// Split phase (Dicer's `Splitter`): splits the slice with the highest per-replica
    /// load while it is hot and the maximum slice count allows, and while the count is
    /// under the minimum. Both halves keep the subset, so a split moves no load; it lets
    /// the placement phase move half of a hot slice instead of all of it.
    pub fn split(&mut self) {
        // Most rounds split nothing: say so from one pass before building the heap.
        let count = self.slices.len();
        let hot = count < self.max_slices && self.slices.iter().any(|s| s.share() > self.hot);
        if !hot && count >= self.min_slices {
            return;
        }
        match self.hot_cuts() {
            Some(cuts) => self.split_by(cuts),
            None => self.split_hottest_first(),
        }
    }

    /// The split phase as its rule states it: the hottest slice first, while the rule
    /// holds.
    pub(super) fn split_hottest_first(&mut self) {
        let prio = |s: &WSlice| (share_key(s.share()), s.end - s.start, Reverse(s.start));
        let mut arena: Vec<Option<WSlice>> = std::mem::take(&mut self.slices)
            .into_iter()
            .map(Some)
            .collect();
        let mut heap: BinaryHeap<_> = arena
            .iter()
            .enumerate()
            .map(|(i, s)| (prio(s.as_ref().expect("live")), i))
            .collect();
        let mut count = arena.len();
        let first = arena.len();
        // The two halves each split slice left, by arena index: the slices come out in
        // key order by walking them, without a sort.
        let mut halves: Vec<Option<usize>> = vec![None; first];
        while let Some((_, i)) = heap.pop() {
            let s = arena[i].as_ref().expect("slices in the heap are live");
            if !((s.share() > self.hot && count < self.max_slices) || count < self.min_slices) {
                break;
            }
            let at = self.load.index_of(s.start);
            let Some(halved) = self.load.halve(at, s.start, s.end, s.load) else {
                continue;
            };
            let s = arena[i].take().expect("live");
            halves[i] = Some(arena.len());
            for half in self.cut(s, halved) {
                heap.push((prio(&half), arena.len()));
                arena.push(Some(half));
                halves.push(None);
            }
            count += 1;
            self.stats.splits += 1;
        }
        let mut stack: Vec<usize> = Vec::new();
        for root in 0..first {
            stack.push(root);
            while let Some(i) = stack.pop() {
                match halves[i] {
                    // Left half first: push the right one under it.
                    Some(l) => stack.extend([l + 1, l]),
                    None => self.slices.extend(arena[i].take()),
                }
            }
        }
    }

    /// Split phase, when the slice count stays within its bounds however the hot slices
    /// are split: then the order of the splits does not matter (the heap splits every
    /// hot slice first, hottest first, and stops at the first cold one), and each hot
    /// slice is split in place, depth first, with no heap and no sort. The cuts, in that
    /// order, `None` where a hot piece holds a single key; `None` when the count would
    /// leave its bounds.
    fn hot_cuts(&self) -> Option<Vec<Option<Halves>>> {
        let mut cuts = Vec::new();
        let mut count = self.slices.len();
        let mut stack = Vec::new();
        for s in &self.slices {
            let w = s.subset.len().max(1) as f64;
            if s.load / w <= self.hot {
                continue;
            }
            // Each part on the stack carries the load range holding its start.
            stack.push((s.start, s.end, s.load, self.load.index_of(s.start)));
            while let Some((a, b, l, at)) = stack.pop() {
                let hot = l / w > self.hot;
                if !hot {
                    continue;
                }
                let halves = self.load.halve(at, a, b, l);
                cuts.push(halves);
                if let Some(h) = halves {
                    count += 1;
                    if count > self.max_slices {
                        return None;
                    }
                    let key = u128::from(h.key);
                    stack.push((key, b, h.right, h.at));
                    stack.push((a, key, h.left, at));
                }
            }
        }
        (count >= self.min_slices).then_some(cuts)
    }

    /// Carries out [`Work::hot_cuts`]' cuts, in the order it found them.
    fn split_by(&mut self, cuts: Vec<Option<Halves>>) {
        let mut cuts = cuts.into_iter();
        let mut out = Vec::with_capacity(self.slices.len() + cuts.len());
        let mut stack = Vec::new();
        for s in std::mem::take(&mut self.slices) {
            let w = s.subset.len().max(1) as f64;
            stack.push(s);
            while let Some(s) = stack.pop() {
                let cut = if s.load / w > self.hot {
                    cuts.next().flatten()
                } else {
                    None
                };
                match cut {
                    Some(c) => {
                        let [left, right] = self.cut(s, c);
                        stack.push(right);
                        stack.push(left);
                        self.stats.splits += 1;
                    }
                    None => out.push(s),
                }
            }
        }
        self.slices = out;
    }

    /// Slice `s` cut at `c`, its halves' pieces appended to [`Work::pieces`].
    fn cut(&mut self, s: WSlice, c: Halves) -> [WSlice; 2] {
        let Halves {
            key, left, right, ..
        } = c;
        let k = u128::from(key);
        // A piece that starts or ends with the slice has that half's load (most slices
        // are one piece).
        let between = |a: u128, b: u128| match (a == s.start, b == s.end) {
            (true, _) if b == k => left,
            (_, true) if a == k => right,
            _ => self.load.between(a, b),
        };
        let run = s.pieces.start as usize..s.pieces.end as usize;
        let lp = self.pieces.len() as u32;
        for i in run.clone() {
            let p = self.pieces[i];
            if p.end() <= k {
                self.pieces.push(p);
            } else if p.start() < k {
                let load = between(p.start(), k);
                self.pieces.push(Piece::new(p.start(), k, load, p.base));
            }
        }
        let rp = self.pieces.len() as u32;
        for i in run {
            let p = self.pieces[i];
            if p.start() >= k {
                self.pieces.push(p);
            } else if p.end() > k {
                let load = between(k, p.end());
                self.pieces.push(Piece::new(k, p.end(), load, p.base));
            }
        }
        let end = self.pieces.len() as u32;
        [
            WSlice {
                start: s.start,
                end: k,
                load: left,
                subset: s.subset.clone(),
                pieces: Span { start: lp, end: rp },
            },
            WSlice {
                start: k,
                end: s.end,
                load: right,
                subset: s.subset,
                pieces: Span { start: rp, end },
            },
        ]
    }

    /// Narrow phase (Dicer's de-replication): a subset wider than the minimum loses its
    /// most utilized non-preferred member while the slice stays cold with one replica
    /// fewer and the remaining members stay well inside the band, halfway between their
    /// fair load and its top (so that a later widening, which needs a replica above the
    /// band, does not undo it).
    pub fn narrow(&mut self, budget: f64) {
        self.recompute_loads();
        // Halfway between the fair load and the top of the band.
        let calm = (1.0 + self.band.hi) / 2.0;
        for i in 0..self.slices.len() {
            loop {
                let s = &self.slices[i];
                let w = s.subset.len();
                if w <= self.min_w {
                    break;
                }
                let after = s.load / (w - 1) as f64;
                if after > self.cold {
                    break;
                }
                let gain = after - s.load / w as f64;
                let Some(pos) = self.removable(&s.subset) else {
                    break;
                };
                let stays_fair = s.subset.iter().enumerate().all(|(p, &m)| {
                    let m = m as usize;
                    p == pos
                        || self.ustar <= 0.0
                        || self.rload[m] + gain <= calm * self.ustar * self.fleet.cap[m]
                });
                if !stays_fair {
                    break;
                }
                let mut sub = s.subset.clone();
                sub.remove(pos);
                let pieces = self.pieces_of(s);
                let delta = self.moved(&sub, pieces) - self.moved(&s.subset, pieces);
                if delta > 0.0 && self.stats.churn + delta > budget {
                    break;
                }
                shift(
                    &mut self.rload,
                    &self.fleet.cap,
                    None,
                    s.load,
                    &s.subset,
                    &sub,
                );
                self.slices[i].subset = sub;
                self.stats.churn += delta;
                self.stats.narrowed += 1;
            }
        }
    }

    /// Penalty of replica `r` carrying `load`: see [`Band::penalty`].
    fn penalty(&self, r: u32, load: f64) -> f64 {
        self.band.penalty(self.fair(r), load)
    }

    fn fair(&self, r: u32) -> f64 {
        self.ustar * self.fleet.cap[r as usize]
    }

    fn relative(&self, r: u32) -> f64 {
        self.rload[r as usize] / self.fair(r)
    }

    /// Placement phase (Dicer's `PlacementPhase`, a greedy local search): take the most
    /// utilized replica still in play; among moving one of its slices to one of the
    /// coldest admissible replicas, or — when it is above the band — widening one of its
    /// slices, apply the operation that lowers the total penalty most (penalty of load
    /// outside the band + churn + replication), if any lowers it and fits the churn
    /// budget; otherwise retire the replica. Ends when every replica is retired.
    pub fn place(&mut self, budget: f64, search: Search) {
        if self.ustar <= 0.0 || self.fleet.len() < 2 {
            return;
        }
        self.recompute_loads();
        let n = self.fleet.len();
        let subsets = self.slices.iter().map(|s| s.subset.as_slice());
        let mut held = Holdings::new(n, subsets, search.scan_all);
        let members: usize = self.slices.iter().map(|s| s.subset.len()).sum();
        let mut order = Order::new(&self.rload, &self.fleet.cap);
        let eps = self.total * 1e-9;
        self.plain = self.slices.iter().map(|s| self.plain_churn(s)).collect();
        let mut scratch = Scratch::default();
        let mut likely = Vec::new();
        for _ in 0..(4 * members + 4 * n + 16) {
            let Some(h) = order.hottest() else {
                return;
            };
            // With every replica still in play inside the band, no operation lowers the
            // penalty (it is zero, and moving or widening adds churn and replication
            // cost): the rest would only be retired one by one.
            let in_band = |r: u32| (self.band.lo..=self.band.hi).contains(&self.relative(r));
            if in_band(h) && order.coolest().is_some_and(in_band) {
                return;
            }
            let tried = match held.of(h, |i| self.share(i)) {
                Seen::All(list) => list,
                Seen::ByShare(set) => {
                    self.likely(h, set, &order, search.scan_all, &mut likely);
                    &likely
                }
            };
            match self.best_op(h, tried, &order, budget, &mut scratch, search.prune) {
                Some((delta, op)) if delta < -eps => {
                    self.apply(op, &mut held, &mut order, &mut scratch.subset)
                }
                _ => order.exclude(&self.rload, &self.fleet.cap, h),
            }
        }
    }

    /// The slices of `h` worth trying when it serves too many to try them all: the
    /// largest shares (what widening and the biggest moves take), and, for each of the
    /// coldest replicas, the shares nearest the amount whose move from `h` to it lowers
    /// the penalty most. Moving a share is a trade of two convex penalties, so the
    /// slices far from that amount on either side cannot do better than the nearest
    /// ones, except through the churn and preferred-replica terms, which are small.
    /// (Into `out`, cleared first.)
    fn likely(
        &self,
        h: u32,
        set: &BTreeSet<(u64, u32)>,
        order: &Order,
        scan_all: usize,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        if set.len() <= scan_all {
            out.extend(set.iter().map(|&(_, s)| s));
            return;
        }
        out.extend(set.iter().rev().take(LARGEST).map(|&(_, s)| s));
        let (Some(&(lo, _)), Some(&(hi, _))) = (set.first(), set.last()) else {
            return;
        };
        let (lo, hi) = (f64::from_bits(lo), f64::from_bits(hi));
        let receivers = order.set.iter().map(|&(_, r)| r).filter(|&r| r != h);
        // The coldest receivers mostly want the very same share (an edge of `h`'s band,
        // or the largest): its neighbours are looked up once.
        let mut asked = [None; RECEIVERS];
        for (i, r) in receivers.take(RECEIVERS).enumerate() {
            let share = self.best_share(h, r, lo, hi);
            if !asked[..i].contains(&Some(share.to_bits())) {
                out.extend(around(set, share, AROUND));
            }
            asked[i] = Some(share.to_bits());
        }
        out.sort_unstable();
        out.dedup();
    }

    /// The share in `[lo, hi]` whose move from `h` to `r` lowers the two replicas'
    /// penalty, plus its churn, the most ([`Band::best_move`]).
    fn best_share(&self, h: u32, r: u32, lo: f64, hi: f64) -> f64 {
        let side = |r: u32| Side {
            load: self.rload[r as usize],
            fair: self.fair(r),
        };
        self.band.best_move(side(h), side(r), CHURN_PENALTY, lo, hi)
    }

    fn best_op(
        &self,
        h: u32,
        on_h: &[u32],
        order: &Order,
        budget: f64,
        scratch: &mut Scratch,
        prune: bool,
    ) -> Option<(f64, Op)> {
        let mut best: Option<(f64, Op)> = None;
        let lh = self.rload[h as usize];
        let standing_h = self.penalty(h, lh);
        let over = self.relative(h) > self.band.hi;
        let room = budget - self.stats.churn;
        // Every receiver is in the order, so none gains more per unit it takes than the
        // coolest one: a floor under each candidate's cost, computed before its
        // receivers are. A slice whose floor is above the best so far (by more than the
        // rounding of either) cannot hold a better candidate, and its receivers are not
        // priced.
        let floor = order.coolest().map_or(0.0, |c| {
            self.band.slope(self.fair(c), self.rload[c as usize])
        });
        let beaten = |bound: f64, best: &Option<(f64, Op)>| {
            prune
                && best
                    .as_ref()
                    .is_some_and(|&(b, _)| bound > b + 1e-9 * (bound.abs() + b.abs() + standing_h))
        };
        // Read once the first slice gets as far as its receivers.
        let mut cool_read = false;
        let Scratch {
            cool,
            receivers,
            fresh,
            staying,
            tried,
            ..
        } = scratch;
        tried.clear();
        warm(self, on_h, room);
        for &si in on_h {
            // If neither kind of candidate fits the budget, the slice is not even read.
            let plain = self.plain[si as usize];
            if plain.is_some_and(|p| p.over(room)) {
                continue;
            }
            let s = &self.slices[si as usize];
            let w = s.subset.len();
            if s.load <= 0.0 {
                continue;
            }
            let per = s.load / w as f64;
            let pieces = self.pieces_of(s);
            // Unless the slice is plain, per piece, how many members are new to it; the
            // churn of a candidate is that count with the candidate's changes, summed as
            // `moved` sums it.
            fresh.clear();
            if plain.is_none() {
                fresh.extend(pieces.iter().map(|p| self.fresh(&s.subset, p)));
            }
            let churn = |fresh_of: &dyn Fn(usize, &Piece) -> usize, width: usize| {
                piece_churn(pieces, width, fresh_of)
            };
            let now = if plain.is_some() {
                0.0
            } else {
                churn(&|i, _| fresh[i], w)
            };
            let over_budget = |dm: f64| over_budget(dm, room);
            // Move h's share of the slice to another replica.
            let moved = plain.map(|p| p.moved);
            // A change's churn is never less than minus the churn the slice has now.
            let least = |plain_churn: Option<f64>| plain_churn.unwrap_or(-now);
            let preferred = s.subset[0] == h;
            let avoid = self.lone_rack(s.subset.iter().copied().filter(|&m| m != h));
            let admits =
                |r: u32| !s.subset.contains(&r) && avoid != Some(self.fleet.rack[r as usize]);
            // A hot replica's slices often have equal shares. A plain one whose share,
            // churn and preferred replica match one already tried, and whose receivers
            // are the coolest six as that one's were, prices the same to the bit: it
            // cannot be strictly better, and is not priced again.
            let fits = !moved.is_some_and(over_budget);
            let twin = prune
                && fits
                && moved.is_some_and(|churn| {
                    self.read_cool(&mut cool_read, cool, order);
                    let usual = cool.len() >= RECEIVERS
                        && cool[..RECEIVERS].iter().all(|&(r, _)| admits(r));
                    let key = (per.to_bits(), churn.to_bits(), preferred);
                    let seen = usual && tried.contains(&key);
                    if usual && !seen {
                        tried.push(key);
                    }
                    seen
                });
            if fits && !twin {
                let mut base = self.penalty(h, lh - per) - standing_h;
                if preferred {
                    base += PREFERRED_PENALTY * per;
                }
                let bound = base + floor * per + CHURN_PENALTY * least(moved);
                if !beaten(bound, &best) {
                    self.read_cool(&mut cool_read, cool, order);
                    self.receivers(cool, order, receivers, admits);
                    staying.clear();
                    if moved.is_none() {
                        let each = pieces.iter().enumerate();
                        staying.extend(each.map(|(i, p)| fresh[i] - self.is_new(h, p)));
                    }
                    for &(r, standing) in receivers.iter() {
                        let dm = moved.unwrap_or_else(|| {
                            churn(&|i, p| staying[i] + self.is_new(r, p), w) - now
                        });
                        if over_budget(dm) {
                            continue;
                        }
                        let lr = self.rload[r as usize];
                        let d = base + self.penalty(r, lr + per) - standing + CHURN_PENALTY * dm;
                        if best.as_ref().is_none_or(|(b, _)| d < *b) {
                            best = Some((
                                d,
                                Op::Move {
                                    slice: si,
                                    from: h,
                                    to: r,
                                    churn: dm,
                                },
                            ));
                        }
                    }
                }
            }
            // Widen the slice: every member sheds load onto one more replica.
            // `Some` when the slice may widen; inside, the plain slice's one churn.
            let widening = (over && w < self.max_w).then(|| plain.map(|p| p.widened));
            if let Some(widened) = widening.filter(|dm| !dm.is_some_and(over_budget)) {
                let per2 = s.load / (w + 1) as f64;
                let dec = per - per2;
                let mut base = REPLICATION_PENALTY * per;
                for &m in &s.subset {
                    let lm = self.rload[m as usize];
                    base += self.penalty(m, lm - dec) - self.penalty(m, lm);
                }
                let bound = base + floor * per2 + CHURN_PENALTY * least(widened);
                if beaten(bound, &best) {
                    continue;
                }
                self.read_cool(&mut cool_read, cool, order);
                self.receivers(cool, order, receivers, |r| !s.subset.contains(&r));
                for &(r, standing) in receivers.iter() {
                    let dm = widened.unwrap_or_else(|| {
                        churn(&|i, p| fresh[i] + self.is_new(r, p), w + 1) - now
                    });
                    if over_budget(dm) {
                        continue;
                    }
                    let lr = self.rload[r as usize];
                    let d = base + self.penalty(r, lr + per2) - standing + CHURN_PENALTY * dm;
                    if best.as_ref().is_none_or(|(b, _)| d < *b) {
                        let op = Op::Widen {
                            slice: si,
                            to: r,
                            churn: dm,
                        };
                        best = Some((d, op));
                    }
                }
            }
        }
        best
    }

    /// The coldest replicas, enough for most slices' receivers to come from them, each
    /// with its penalty as it stands (the same for every slice tried), into `cool`
    /// unless `read` says they are there.
    fn read_cool(&self, read: &mut bool, cool: &mut Vec<(u32, f64)>, order: &Order) {
        if !*read {
            cool.clear();
            let head = order.set.iter().take(COOL_PREFIX);
            cool.extend(head.map(|&(_, r)| self.as_receiver(r)));
            *read = true;
        }
    }

    /// The churn of slice `s`'s candidates if it is plain ([`Plain`]).
    fn plain_churn(&self, s: &WSlice) -> Option<Plain> {
        let w = s.subset.len();
        let all_new = |_: usize, _: &Piece| 1;
        let pieces = self.pieces_of(s);
        self.is_plain(s).then(|| Plain {
            moved: piece_churn(pieces, w, &all_new),
            widened: piece_churn(pieces, w + 1, &all_new),
        })
    }

    /// Whether slice `s`'s members are exactly the replicas that served each of its
    /// pieces after repairs.
    fn is_plain(&self, s: &WSlice) -> bool {
        let w = s.subset.len();
        self.pieces_of(s).iter().all(|p| {
            let base = self.bases.of(p);
            base.len() == w && self.fresh(&s.subset, p) == 0
        })
    }

    /// Replica `r` and its penalty at its load as it stands.
    fn as_receiver(&self, r: u32) -> (u32, f64) {
        (r, self.penalty(r, self.rload[r as usize]))
    }

    /// The first [`RECEIVERS`] replicas of `order` that pass `ok`, with their penalties,
    /// into `out`: from `cool`, the order's head, when enough of it passes, else from the
    /// whole order.
    fn receivers(
        &self,
        cool: &[(u32, f64)],
        order: &Order,
        out: &mut Vec<(u32, f64)>,
        ok: impl Fn(u32) -> bool,
    ) {
        out.clear();
        out.extend(cool.iter().copied().filter(|&(r, _)| ok(r)).take(RECEIVERS));
        if out.len() < RECEIVERS && cool.len() < order.set.len() {
            out.clear();
            out.extend(
                order
                    .set
                    .iter()
                    .map(|&(_, r)| r)
                    .filter(|&r| ok(r))
                    .take(RECEIVERS)
                    .map(|r| self.as_receiver(r)),
            );
        }
    }

    /// Slice `i`'s load on each of its members.
    fn share(&self, i: u32) -> f64 {
        self.slices[i as usize].share()
    }

    /// Carries out `op`, its new subset built in `new` (a buffer kept between steps).
    fn apply(&mut self, op: Op, held: &mut Holdings, order: &mut Order, new: &mut Vec<u32>) {
        let (slice, from, to, dm) = match op {
            Op::Move {
                slice,
                from,
                to,
                churn,
            } => (slice, Some(from), to, churn),
            Op::Widen { slice, to, churn } => (slice, None, to, churn),
        };
        let si = slice as usize;
        let s = &self.slices[si];
        let old = &s.subset;
        new.clear();
        new.extend(old.iter().copied().filter(|&m| Some(m) != from));
        new.push(to);
        let share = |w: usize| s.load / w.max(1) as f64;
        match from {
            Some(from) => {
                held.moved(slice, share(old.len()), from, to);
                self.stats.moves += 1;
            }
            None => {
                held.widened(slice, old, to, share(old.len()), share(new.len()));
                self.stats.widened += 1;
            }
        }
        shift(
            &mut self.rload,
            &self.fleet.cap,
            Some(order),
            s.load,
            old,
            new,
        );
        let s = &mut self.slices[si];
        s.subset.clear();
        s.subset.extend_from_slice(new);
        // A plain slice's receiver served none of it: the slice is plain no more.
        if self.plain[si].is_some() {
            self.plain[si] = None;
        } else {
            self.plain[si] = self.plain_churn(&self.slices[si]);
        }
        self.stats.churn += dm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assigner::fleet::ReplicaInfo;
    use crate::slice::{ReplicaId, SliceKey};

    /// Two plain slices of the hot replica 0 with the same share and churn: the first
    /// shares its rack-1 member with the coolest replica 1, which therefore cannot take
    /// it; the second can move to replica 1. The second is no twin of the first, and its
    /// better move is found with the pruning as without it.
    #[test]
    fn a_slice_with_other_receivers_is_no_twin() {
        // Replica i is in rack i % 3, all of one capacity.
        let reg: Vec<ReplicaInfo> = (0..9)
            .map(|i| ReplicaInfo::new(i, format!("rack-{}", i % 3), 1000.0))
            .collect();
        let fleet = Fleet::new(&reg);
        let subsets: [(u64, u64, f64); 10] = [
            (0, 1, 10.0),
            (0, 2, 10.0),
            (0, 5, 100.0),
            (0, 8, 100.0),
            (3, 4, 60.0),
            (6, 7, 60.0),
            (8, 4, 60.0),
            (5, 3, 60.0),
            (7, 6, 60.0),
            (2, 3, 60.0),
        ];
        let step = u64::MAX / subsets.len() as u64;
        let key = |i: usize| step * i as u64;
        let ids: Vec<[ReplicaId; 2]> = subsets
            .iter()
            .map(|&(a, b, _)| [ReplicaId(a), ReplicaId(b)])
            .collect();
        let load = SliceLoad::new(
            subsets
                .iter()
                .enumerate()
                .map(|(i, &(_, _, l))| (SliceKey(key(i)), l))
                .collect(),
        )
        .unwrap();
        let config = AssignerConfig::default().sanitized();
        let slices = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (key(i) as u128, s.as_slice()))
            .collect();
        let mut work = Work::new(&fleet, &load, &config, slices);
        work.repair();
        work.plain = work.slices.iter().map(|s| work.plain_churn(s)).collect();
        let order = Order::new(&work.rload, &fleet.cap);
        assert_eq!(order.hottest(), Some(0));
        assert_eq!(order.coolest(), Some(1));
        let best = |prune| {
            let mut scratch = Scratch::default();
            work.best_op(0, &[0, 1], &order, f64::INFINITY, &mut scratch, prune)
                .map(|(_, op)| op)
        };
        let whole = best(false);
        assert!(
            matches!(
                whole,
                Some(Op::Move {
                    slice: 1,
                    from: 0,
                    to: 1,
                    ..
                })
            ),
            "{whole:?}"
        );
        assert_eq!(best(true), whole);
    }
}
