//! Requests waiting for their first token, counted per replica and workload: how many
//! of a workload's requests a replica has yet to start answering. The choice reads it
//! to tell a burst queued at a workload's home from a single request there.

use super::id_map::IdMap;
use crate::slice::{ReplicaId, SliceKey};

/// For each replica, the workloads with requests sent there and not yet answered with a
/// first token, and how many. A replica's list is as long as the distinct workloads in
/// its queue, and is read only for a workload's home replicas, only when the choice
/// hangs on it. Lists are kept when they empty, so a steady flow allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct Waiting {
    on: IdMap<ReplicaId, Vec<(SliceKey, u32)>>,
}

impl Waiting {
    /// A request of `workload` was sent to `replica`.
    pub fn sent(&mut self, workload: SliceKey, replica: ReplicaId) {
        let list = self.on.entry(replica).or_default();
        match list.iter_mut().find(|(w, _)| *w == workload) {
            Some((_, n)) => *n += 1,
            None => list.push((workload, 1)),
        }
    }

    /// A request of `workload` on `replica` had its first token, or left it.
    pub fn answered(&mut self, workload: SliceKey, replica: ReplicaId) {
        let Some(list) = self.on.get_mut(&replica) else {
            return;
        };
        if let Some(i) = list.iter().position(|&(w, _)| w == workload) {
            list[i].1 -= 1;
            if list[i].1 == 0 {
                list.swap_remove(i);
            }
        }
    }

    /// Requests of `workload` waiting on `replica`.
    pub fn at(&self, workload: SliceKey, replica: ReplicaId) -> u32 {
        self.on
            .get(&replica)
            .and_then(|list| list.iter().find(|&&(w, _)| w == workload))
            .map_or(0, |&(_, n)| n)
    }

    /// No request waits anywhere.
    pub fn is_empty(&self) -> bool {
        self.on.values().all(Vec::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rise_and_fall_per_workload_and_replica() {
        let (a, b) = (SliceKey(1), SliceKey(2));
        let (r, s) = (ReplicaId(7), ReplicaId(8));
        let mut w = Waiting::default();
        w.sent(a, r);
        w.sent(a, r);
        w.sent(b, r);
        w.sent(a, s);
        assert_eq!(
            (w.at(a, r), w.at(b, r), w.at(a, s), w.at(b, s)),
            (2, 1, 1, 0)
        );
        w.answered(a, r);
        w.answered(b, r);
        // An answer for a pair with nothing waiting changes nothing.
        w.answered(b, s);
        w.answered(a, ReplicaId(9));
        assert_eq!((w.at(a, r), w.at(b, r), w.at(a, s)), (1, 0, 1));
        w.answered(a, r);
        w.answered(a, s);
        assert!(w.is_empty());
    }
}
