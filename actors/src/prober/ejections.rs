//! What the prober's verdicts ask of a node: which replicas it keeps out of service, and
//! which changes mean ejecting one, giving one back or only noting that the ejection cap
//! kept one in. The live prober shell and the simulator's virtual nodes both carry out
//! these effects, so they eject and restore on the same verdicts.

use super::{Verdict, VerdictChange};
use crate::slice::ReplicaId;
use std::collections::BTreeSet;

/// One thing a node does because a verdict changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Newly ejected, on this verdict: route nothing to it, mark it unhealthy in the
    /// registry, restart it.
    Eject(ReplicaId, Verdict),
    /// Back in service by the prober's word.
    Restore(ReplicaId),
    /// Condemned but kept in service, the ejection cap being reached: worth a warning.
    Kept(ReplicaId),
}

/// The replicas a node's prober keeps out of service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ejections {
    out: BTreeSet<ReplicaId>,
}

impl Ejections {
    /// Whether `replica` is kept out of service.
    pub fn contains(&self, replica: ReplicaId) -> bool {
        self.out.contains(&replica)
    }

    /// Takes in verdict changes, in order; returns what the node must do about them.
    /// Only a change of side counts: a replica already out that is condemned again is
    /// not ejected twice.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = VerdictChange>) -> Vec<Effect> {
        let mut effects = Vec::new();
        for c in changes {
            let out = !c.verdict.in_service();
            let was = self.out.contains(&c.replica);
            if out && !was {
                self.out.insert(c.replica);
                effects.push(Effect::Eject(c.replica, c.verdict));
            } else if !out && was {
                self.out.remove(&c.replica);
                effects.push(Effect::Restore(c.replica));
            } else if let Verdict::Deferred { .. } = c.verdict {
                effects.push(Effect::Kept(c.replica));
            }
        }
        effects
    }

    /// `replica` was restarted and serves again; `changes` is what the prober said of
    /// the restart ([`ProberCore::restored`](super::ProberCore::restored)). It is back
    /// in service whatever its last verdict was.
    pub fn restored(
        &mut self,
        replica: ReplicaId,
        changes: impl IntoIterator<Item = VerdictChange>,
    ) -> Vec<Effect> {
        let effects = self.apply(changes);
        self.out.remove(&replica);
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prober::Reason;

    fn change(r: u64, verdict: Verdict) -> VerdictChange {
        VerdictChange {
            replica: ReplicaId(r),
            verdict,
        }
    }

    const DOWN: Verdict = Verdict::Unhealthy {
        since_ms: 5,
        reason: Reason::Stalled,
    };
    const DEFERRED: Verdict = Verdict::Deferred {
        since_ms: 5,
        reason: Reason::ProbesFailed,
    };

    #[test]
    fn a_replica_is_ejected_once_and_restored_once() {
        let mut e = Ejections::default();
        assert_eq!(
            e.apply([change(1, DOWN)]),
            [Effect::Eject(ReplicaId(1), DOWN)]
        );
        assert!(e.contains(ReplicaId(1)));
        assert_eq!(e.apply([change(1, DOWN)]), []);
        assert_eq!(
            e.apply([change(1, Verdict::Healthy)]),
            [Effect::Restore(ReplicaId(1))]
        );
        assert!(!e.contains(ReplicaId(1)));
        assert_eq!(e.apply([change(1, Verdict::Healthy)]), []);
    }

    #[test]
    fn a_deferred_replica_is_noted_unless_it_was_out() {
        let mut e = Ejections::default();
        assert_eq!(e.apply([change(2, DEFERRED)]), [Effect::Kept(ReplicaId(2))]);
        assert!(!e.contains(ReplicaId(2)));
        e.apply([change(3, DOWN)]);
        assert_eq!(
            e.apply([change(3, DEFERRED)]),
            [Effect::Restore(ReplicaId(3))]
        );
    }

    #[test]
    fn a_restart_brings_the_replica_back_and_passes_on_the_other_changes() {
        let mut e = Ejections::default();
        e.apply([change(1, DOWN), change(2, DOWN)]);
        // The prober reports the restarted replica healthy, and hands its slot to a
        // deferred one.
        let effects = e.restored(ReplicaId(1), [change(1, Verdict::Healthy), change(4, DOWN)]);
        assert_eq!(
            effects,
            [
                Effect::Restore(ReplicaId(1)),
                Effect::Eject(ReplicaId(4), DOWN)
            ]
        );
        // Restored without a word from the prober: back in service all the same.
        assert!(e.restored(ReplicaId(2), []).is_empty());
        assert!(!e.contains(ReplicaId(2)));
        assert!(e.contains(ReplicaId(4)));
    }
}
