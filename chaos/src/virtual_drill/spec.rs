//! What a virtual drill is run on and what it does: the fleet's size and the shells'
//! timings, and the director's acts. Kept apart from the loop so that the scenarios
//! (`strike`) and the tests can describe a drill without touching the fleet's insides.

use sluice_actors::Profile;

/// The fleet and the shells' timings.
#[derive(Debug, Clone)]
pub struct Spec {
    pub nodes: usize,
    pub racks: usize,
    pub gpus_per_node: usize,
    pub profile: Profile,
    /// An engine's cold start: from (re)start to serving.
    pub engine_restart_us: u64,
    /// A node process's restart, before its engines start.
    pub node_restart_us: u64,
    /// How long a call to a dead or cut-off peer hangs before the caller gives up (the
    /// live forward's peer silence, `lifecycle::PEER_SILENCE_MS`).
    pub peer_timeout_us: u64,
    pub election_us: u64,
    pub stream_idle_us: u64,
    pub request_timeout_us: u64,
    pub quarantine: bool,
    /// Keep every sample's slice map (for the poison containment check).
    pub keep_slices: bool,
    /// The leader marks the replicas of nodes silent for
    /// [`LIVENESS_US`](super::world::LIVENESS_US) unreachable, as live leaders do.
    pub liveness_marks: bool,
    /// A restarted node holds its replicas out of service until they serve, as a live
    /// node does (it waits for the engines it launches before it rejoins); off, the
    /// drill shows what routable-before-ready replicas cost.
    pub hold_restarted: bool,
}

impl Spec {
    pub fn replicas(&self) -> usize {
        self.nodes * self.gpus_per_node
    }

    pub fn host(&self, replica: usize) -> usize {
        replica / self.gpus_per_node.max(1)
    }

    pub fn rack(&self, node: usize) -> usize {
        node % self.racks.max(1)
    }
}

/// What the director does at a point in time.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    /// Take these doors out of the balancer, wait for their requests (up to the
    /// deadline), then kill the nodes; they start again at `heal_us`.
    Kill {
        nodes: Vec<usize>,
        deadline_us: u64,
        heal_after_us: u64,
    },
    /// Kill the leader of the moment (after draining its door).
    KillLeader {
        heal_after_us: u64,
    },
    /// Cut these nodes off from the rest (their doors drained first).
    Cut {
        nodes: Vec<usize>,
        deadline_us: u64,
        heal_after_us: u64,
    },
    HealCut(Vec<usize>),
    Start(Vec<usize>),
    Hang(Vec<usize>),
    Slow(Vec<usize>, f64),
    Unslow(Vec<usize>),
    PoisonStart {
        stop_after_us: u64,
    },
    PoisonStop,
    /// Restart the nodes of `rack` (drained first), then the next rack once its
    /// replicas serve again.
    Roll {
        rack: usize,
        deadline_us: u64,
    },
}
