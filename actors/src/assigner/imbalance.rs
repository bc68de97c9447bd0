//! How unevenly an assignment loads the fleet: the number the assigner drives towards
//! its target, and reports before and after each round.

use super::fleet::{Fleet, Members, ReplicaInfo};
use super::load::{SliceLoad, KEY_END};
use crate::slice::Assignment;

/// Max/mean replica load relative to capacity: the largest `load_r / (capacity_r × U)`
/// over eligible replicas, where a slice's load is spread evenly over the eligible
/// members of its subset and `U` is the served load over the eligible capacity. 1.0 when
/// nothing is served.
pub fn imbalance(assignment: &Assignment, load: &SliceLoad, replicas: &[ReplicaInfo]) -> f64 {
    let fleet = Fleet::new(replicas);
    let mut spread = Spread::new(&fleet);
    let slices = assignment.slices();
    let mut members = Members::new();
    let mut sweep = load.sweep();
    for (i, s) in slices.iter().enumerate() {
        fleet.members_into(&s.subset, &mut members);
        if members.is_empty() {
            continue;
        }
        let end = slices.get(i + 1).map_or(KEY_END, |n| n.start.0 as u128);
        spread.add(sweep.between(s.start.0 as u128, end), &members);
    }
    spread.imbalance()
}

/// Slices' loads spread evenly over their members, summed per replica: [`imbalance`]'s
/// arithmetic, which the assigner's own view of its slices shares (so the imbalance it
/// reports of its rounds is the same number, to the bit, without rebuilding the fleet
/// and mapping every subset back).
pub(crate) struct Spread<'f> {
    fleet: &'f Fleet,
    rload: Vec<f64>,
    served: f64,
}

impl<'f> Spread<'f> {
    pub fn new(fleet: &'f Fleet) -> Self {
        Self {
            fleet,
            rload: vec![0.0; fleet.len()],
            served: 0.0,
        }
    }

    /// A slice of load `l` served by `members` (distinct fleet indices).
    pub fn add(&mut self, l: f64, members: &[u32]) {
        if members.is_empty() {
            return;
        }
        self.served += l;
        for &m in members {
            self.rload[m as usize] += l / members.len() as f64;
        }
    }

    pub fn imbalance(&self) -> f64 {
        let cap = self.fleet.total_capacity();
        if !(self.served > 0.0 && cap > 0.0) {
            return 1.0;
        }
        let u = self.served / cap;
        self.rload
            .iter()
            .zip(&self.fleet.cap)
            .map(|(l, c)| l / (c * u))
            .fold(0.0, f64::max)
    }
}
