//! The leader's view of whole nodes: a node not heard from within the liveness window
//! (killed, powered off with its rack, cut off) takes its replicas out of service in the
//! registry at once, instead of leaving every router to find each dead replica by
//! timing out on it. The mark is the leader's and only the leader clears it, when the
//! node is heard again; a replica its own node marked unhealthy or starting is left to
//! that node.

use crate::slice::ReplicaId;

/// A replica's registry health, as far as liveness is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// In service.
    Serving,
    /// Out of service by its own node's decision (ejected, starting, draining).
    HeldByNode,
    /// Out of service because its node went silent (the leader's mark).
    Unreachable,
}

impl Standing {
    /// Whether a router may send the replica work. The leader's `Unreachable` mark says
    /// it has not heard from the replica's node; a router on that very node is evidently
    /// running and judges its own engines with its own health checks, so the mark does
    /// not hold there. Taking it at its word left a door with nothing to serve from when
    /// only its reports to the leader were lost (RELIABILITY.md, "A restarted peer's dead
    /// connections").
    pub fn routable(self, on_own_node: bool) -> bool {
        match self {
            Standing::Serving => true,
            Standing::Unreachable => on_own_node,
            Standing::HeldByNode => false,
        }
    }
}

/// A change the leader commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub replica: ReplicaId,
    pub unreachable: bool,
}

/// The marks to commit, given each replica's `(id, node, standing)` and whether its
/// node was heard within the window.
pub fn liveness_marks(
    replicas: impl IntoIterator<Item = (ReplicaId, u64, Standing)>,
    heard: impl Fn(u64) -> bool,
) -> Vec<Mark> {
    replicas
        .into_iter()
        .filter_map(|(replica, node, standing)| {
            let live = heard(node);
            match standing {
                Standing::Serving if !live => Some(Mark {
                    replica,
                    unreachable: true,
                }),
                Standing::Unreachable if live => Some(Mark {
                    replica,
                    unreachable: false,
                }),
                _ => None,
            }
        })
        .collect()
}

/// The shortest silence taken for a node's loss: a busy host's router may miss a few
/// beats, and a false mark takes its replicas out of service.
pub const MIN_LIVENESS_WINDOW_US: u64 = 3_000_000;

/// The leader's liveness step. A leader has heard from nobody before `since_us` — when
/// it started, or, where only reports to a leader tell who is live, when its leadership
/// began — so for `grace_us` after that it only clears marks: it never takes a node's
/// replicas out of service before the node had time to be heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessWatch {
    pub since_us: u64,
    pub grace_us: u64,
}

impl LivenessWatch {
    /// The silence after which a node whose router is heard every `beat_us` is taken
    /// for gone: three missed beats, and at least `MIN_LIVENESS_WINDOW_US`.
    pub const fn window_us(beat_us: u64) -> u64 {
        let missed = beat_us.saturating_mul(3);
        if missed > MIN_LIVENESS_WINDOW_US {
            missed
        } else {
            MIN_LIVENESS_WINDOW_US
        }
    }

    /// A leadership that began at `since_us`, over routers heard every `beat_us`: its
    /// grace is one window.
    pub fn new(since_us: u64, beat_us: u64) -> Self {
        Self {
            since_us,
            grace_us: Self::window_us(beat_us),
        }
    }

    pub fn marks(
        &self,
        now_us: u64,
        replicas: impl IntoIterator<Item = (ReplicaId, u64, Standing)>,
        heard: impl Fn(u64) -> bool,
    ) -> Vec<Mark> {
        let settled = now_us.saturating_sub(self.since_us) >= self.grace_us;
        let mut marks = liveness_marks(replicas, heard);
        marks.retain(|m| settled || !m.unreachable);
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_liveness_mark_holds_everywhere_but_on_the_marked_node() {
        assert!(Standing::Serving.routable(false) && Standing::Serving.routable(true));
        assert!(!Standing::Unreachable.routable(false));
        assert!(Standing::Unreachable.routable(true));
        assert!(!Standing::HeldByNode.routable(false) && !Standing::HeldByNode.routable(true));
    }

    #[test]
    fn the_window_is_three_missed_beats_but_never_shorter_than_the_floor() {
        assert_eq!(LivenessWatch::window_us(200_000), MIN_LIVENESS_WINDOW_US);
        assert_eq!(LivenessWatch::window_us(5_000_000), 15_000_000);
        assert_eq!(LivenessWatch::new(7, 5_000_000).grace_us, 15_000_000);
    }

    #[test]
    fn a_new_leader_only_clears_marks_until_every_node_had_time_to_report() {
        let watch = LivenessWatch {
            since_us: 10_000_000,
            grace_us: 3_000_000,
        };
        let fleet = [
            (ReplicaId(0), 0, Standing::Serving),
            (ReplicaId(1), 1, Standing::Unreachable),
        ];
        let silent = |_| false;
        let heard = |_| true;
        assert!(watch.marks(12_999_999, fleet, silent).is_empty());
        assert_eq!(
            watch.marks(12_000_000, fleet, heard),
            vec![Mark {
                replica: ReplicaId(1),
                unreachable: false
            }]
        );
        assert_eq!(
            watch.marks(13_000_000, fleet, silent),
            vec![Mark {
                replica: ReplicaId(0),
                unreachable: true
            }]
        );
    }

    #[test]
    fn a_silent_node_loses_its_serving_replicas_and_gets_them_back_when_heard() {
        let fleet = [
            (ReplicaId(1), 1, Standing::Serving),
            (ReplicaId(2), 1, Standing::HeldByNode),
            (ReplicaId(3), 2, Standing::Serving),
        ];
        let marks = liveness_marks(fleet, |n| n != 1);
        assert_eq!(
            marks,
            vec![Mark {
                replica: ReplicaId(1),
                unreachable: true
            }]
        );
        let back = [
            (ReplicaId(1), 1, Standing::Unreachable),
            (ReplicaId(2), 1, Standing::HeldByNode),
        ];
        assert_eq!(
            liveness_marks(back, |_| true),
            vec![Mark {
                replica: ReplicaId(1),
                unreachable: false
            }]
        );
    }

    proptest! {
        /// Marks follow the node's liveness alone, never touch what a node holds
        /// itself, and applying them leaves nothing more to mark.
        #[test]
        fn marks_are_idempotent(
            fleet in prop::collection::vec((0u64..6, 0u8..3), 0..40),
            silent in prop::collection::btree_set(0u64..6, 0..6),
        ) {
            let standing = |s: u8| match s {
                0 => Standing::Serving,
                1 => Standing::HeldByNode,
                _ => Standing::Unreachable,
            };
            let mut reg: Vec<(ReplicaId, u64, Standing)> = fleet
                .iter()
                .enumerate()
                .map(|(i, &(node, s))| (ReplicaId(i as u64), node, standing(s)))
                .collect();
            let heard = |n: u64| !silent.contains(&n);
            let marks = liveness_marks(reg.clone(), heard);
            for m in &marks {
                let r = &mut reg[m.replica.0 as usize];
                prop_assert_ne!(r.2, Standing::HeldByNode);
                prop_assert_eq!(m.unreachable, !heard(r.1));
                r.2 = if m.unreachable { Standing::Unreachable } else { Standing::Serving };
            }
            prop_assert!(liveness_marks(reg, heard).is_empty());
        }
    }
}
