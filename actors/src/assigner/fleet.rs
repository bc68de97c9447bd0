//! The replica registry as the assigner sees it.

use crate::slice::ReplicaId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A slice's members as fleet indices, inline up to four (most subsets are two or
/// three wide): no allocation per slice, in a record as wide as a `Vec`'s.
pub(crate) type Members = smallvec::SmallVec<[u32; 4]>;

/// One replica of the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub id: ReplicaId,
    /// Failure domain: replicas in one rack can fail together.
    pub rack: String,
    pub capacity_mu_per_min: f64,
    pub healthy: bool,
    /// Being drained before a stop: takes no new slices and keeps none.
    pub draining: bool,
}

impl ReplicaInfo {
    /// A healthy, non-draining replica.
    pub fn new(id: u64, rack: impl Into<String>, capacity_mu_per_min: f64) -> Self {
        Self {
            id: ReplicaId(id),
            rack: rack.into(),
            capacity_mu_per_min,
            healthy: true,
            draining: false,
        }
    }

    /// May serve slices: healthy, not draining, with a positive finite capacity.
    pub fn eligible(&self) -> bool {
        self.healthy
            && !self.draining
            && self.capacity_mu_per_min.is_finite()
            && self.capacity_mu_per_min > 0.0
    }
}

/// The eligible replicas, indexed `0..len` in id order.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    pub ids: Vec<ReplicaId>,
    pub rack: Vec<u32>,
    pub cap: Vec<f64>,
    /// Distinct racks among the eligible replicas.
    pub racks: usize,
    /// `dense[id]` is the index of replica `id` ([`ABSENT`] if not eligible), kept when
    /// ids are small, as registries hand them out: a round looks up every member of
    /// every subset, and a table is several times faster than a binary search.
    dense: Vec<u32>,
}

/// Marks an id of [`Fleet::dense`] that is not an eligible replica.
const ABSENT: u32 = u32::MAX;

/// The dense table is kept while ids stay under this many times the fleet's size.
const DENSE_SPAN: u64 = 4;

impl Fleet {
    /// The eligible replicas of `replicas`, independent of their order. An id listed more
    /// than once (a registry bug) is eligible only if every entry is, and then takes the
    /// entry that sorts first by (rack, capacity).
    pub fn new(replicas: &[ReplicaInfo]) -> Self {
        let mut by_id: BTreeMap<ReplicaId, Option<&ReplicaInfo>> = BTreeMap::new();
        for r in replicas {
            let this = r.eligible().then_some(r);
            by_id
                .entry(r.id)
                .and_modify(|slot| {
                    *slot = match (*slot, this) {
                        (Some(p), Some(c)) => Some(
                            if (c.rack.as_str(), c.capacity_mu_per_min)
                                < (p.rack.as_str(), p.capacity_mu_per_min)
                            {
                                c
                            } else {
                                p
                            },
                        ),
                        _ => None,
                    }
                })
                .or_insert(this);
        }
        let chosen: Vec<&ReplicaInfo> = by_id.into_values().flatten().collect();
        let mut rack_ids: BTreeMap<&str, u32> = BTreeMap::new();
        for r in &chosen {
            rack_ids.insert(r.rack.as_str(), 0);
        }
        for (i, v) in rack_ids.values_mut().enumerate() {
            *v = i as u32;
        }
        let ids: Vec<ReplicaId> = chosen.iter().map(|r| r.id).collect();
        let span = ids.last().map_or(0, |id| id.0.saturating_add(1));
        let mut dense = Vec::new();
        if span <= DENSE_SPAN.saturating_mul(ids.len() as u64) {
            dense = vec![ABSENT; span as usize];
            for (i, id) in ids.iter().enumerate() {
                dense[id.0 as usize] = i as u32;
            }
        }
        Self {
            ids,
            rack: chosen.iter().map(|r| rack_ids[r.rack.as_str()]).collect(),
            cap: chosen.iter().map(|r| r.capacity_mu_per_min).collect(),
            racks: rack_ids.len(),
            dense,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Index of an eligible replica.
    pub fn index(&self, id: ReplicaId) -> Option<u32> {
        if self.dense.is_empty() {
            return self.ids.binary_search(&id).ok().map(|i| i as u32);
        }
        let slot = usize::try_from(id.0).ok()?;
        self.dense.get(slot).copied().filter(|&i| i != ABSENT)
    }

    /// The fleet indices of `subset`'s eligible members, each once, in `subset`'s order,
    /// written into `out` (cleared first): what a subset still holds of the fleet.
    pub fn members_into(&self, subset: &[ReplicaId], out: &mut Members) {
        out.clear();
        for id in subset {
            if let Some(r) = self.index(*id) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }

    pub fn total_capacity(&self) -> f64 {
        self.cap.iter().sum()
    }

    pub fn min_capacity(&self) -> f64 {
        self.cap.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Whether `members` (replica indices) span two racks.
    pub fn spans_two_racks(&self, members: &[u32]) -> bool {
        members.split_first().is_some_and(|(&f, rest)| {
            rest.iter()
                .any(|&m| self.rack[m as usize] != self.rack[f as usize])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_eligible_in_id_order() {
        let mut sick = ReplicaInfo::new(2, "b", 10.0);
        sick.healthy = false;
        let mut drain = ReplicaInfo::new(4, "a", 10.0);
        drain.draining = true;
        let reg = vec![
            ReplicaInfo::new(3, "b", 10.0),
            sick,
            ReplicaInfo::new(1, "a", 20.0),
            drain,
            ReplicaInfo::new(5, "c", 0.0),
        ];
        let f = Fleet::new(&reg);
        assert_eq!(f.ids, vec![ReplicaId(1), ReplicaId(3)]);
        assert_eq!(f.racks, 2);
        assert_eq!(f.index(ReplicaId(3)), Some(1));
        assert_eq!(f.index(ReplicaId(2)), None);
        assert!(f.spans_two_racks(&[0, 1]));
        assert!(!f.spans_two_racks(&[1]));
    }

    #[test]
    fn small_and_scattered_ids_are_found_alike() {
        let small: Vec<ReplicaInfo> = [0, 2, 3, 7]
            .iter()
            .map(|&i| ReplicaInfo::new(i, "a", 1.0))
            .collect();
        let f = Fleet::new(&small);
        assert!(
            !f.dense.is_empty(),
            "ids under four times the fleet get a table"
        );
        let scattered: Vec<ReplicaInfo> = [0, 2, 3, 7, 1 << 40, u64::MAX]
            .iter()
            .map(|&i| ReplicaInfo::new(i, "a", 1.0))
            .collect();
        let g = Fleet::new(&scattered);
        assert!(g.dense.is_empty());
        for id in [0, 1, 2, 3, 4, 7, 8, 100, 1 << 40, u64::MAX - 1, u64::MAX] {
            let id = ReplicaId(id);
            let searched = |f: &Fleet| f.ids.binary_search(&id).ok().map(|i| i as u32);
            assert_eq!(f.index(id), searched(&f), "{id:?}");
            assert_eq!(g.index(id), searched(&g), "{id:?}");
        }
        assert_eq!(f.index(ReplicaId(7)), Some(3));
        assert_eq!(g.index(ReplicaId(u64::MAX)), Some(5));
    }

    #[test]
    fn duplicate_ids_are_resolved_without_regard_to_order() {
        let a = ReplicaInfo::new(1, "a", 10.0);
        let b = ReplicaInfo::new(1, "b", 10.0);
        let f1 = Fleet::new(&[a.clone(), b.clone()]);
        let f2 = Fleet::new(&[b.clone(), a.clone()]);
        assert_eq!(f1.rack, f2.rack);
        assert_eq!(f1.len(), 1);
        let mut sick = b;
        sick.healthy = false;
        assert_eq!(Fleet::new(&[a.clone(), sick.clone()]).len(), 0);
        assert_eq!(Fleet::new(&[sick, a]).len(), 0);
    }
}
