//! The router's policy core.

pub mod affinity;
pub mod baselines;
pub mod blast_radius;
pub mod blocks;
pub mod choice;
pub mod conversation;
pub mod core;
pub mod health;
pub mod id_map;
pub mod ledger;
pub mod load_order;
pub mod mix;
pub mod models;
pub mod policy;
pub mod prefix_index;
pub mod quarantine;
pub mod recency;
pub mod sluice_policy;
pub mod stall;
pub mod waiting;
pub mod workload;

pub use affinity::{AffinityConfig, PrefixAffinity};
pub use blast_radius::BlastRadius;
pub use blocks::{PromptBlocks, NO_CONTENT};
pub use choice::{choose, Candidate, Choice, ColdReplicas, SpillPolicy};
pub use core::{
    Admission, Placement, ReplicaSpec, ReplicaView, RouterConfig, RouterCore, Usage, LOAD_SHARE_MS,
};
pub use health::{EjectionPolicy, PassiveHealth};
pub use ledger::{Charge, Ledger, ReplicaInflight, RequestId};
pub use models::{choose_fleet, handoff_order, parse_model_list, ServedModels, Unserved};
pub use policy::{KvIndex, NoKvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
pub use quarantine::{Implication, Quarantine, QuarantineConfig, Verdict};
pub use workload::{default_sources, workload_key, KeyInputs, KeySource};
