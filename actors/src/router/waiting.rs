//! Requests waiting for their first token, counted per workload and replica: how many
//! of a workload's requests a replica has yet to start answering. The choice reads it
//! to tell a burst queued at a workload's home from a single request there.

use crate::slice::{ReplicaId, SliceKey};
use std::collections::HashMap;

/// Counts of requests sent and not yet answered with a first token. Workload keys come
/// from what clients send, so the map keeps std's keyed hasher.
#[derive(Debug, Clone, Default)]
pub struct Waiting {
    counts: HashMap<(SliceKey, ReplicaId), u32>,
}

impl Waiting {
    /// A request of `workload` was sent to `replica`.
    pub fn sent(&mut self, workload: SliceKey, replica: ReplicaId) {
        *self.counts.entry((workload, replica)).or_default() += 1;
    }

    /// A request of `workload` on `replica` had its first token, or left it.
    pub fn answered(&mut self, workload: SliceKey, replica: ReplicaId) {
        if let Some(n) = self.counts.get_mut(&(workload, replica)) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&(workload, replica));
            }
        }
    }

    /// Requests of `workload` waiting on `replica`.
    pub fn at(&self, workload: SliceKey, replica: ReplicaId) -> u32 {
        self.counts.get(&(workload, replica)).copied().unwrap_or(0)
    }

    /// No request waits anywhere (a pair is freed when its count reaches zero).
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
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
        assert_eq!((w.at(a, r), w.at(b, r), w.at(b, s)), (1, 0, 0));
        w.answered(a, r);
        w.answered(a, s);
        assert!(w.is_empty());
    }
}
