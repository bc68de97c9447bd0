//! Sluice's policy cores: pure, deterministic functions of explicit inputs and a clock
//! value, run unchanged by the live node and by the simulator.

pub mod admission;
pub mod assigner;
pub mod autoscaler;
pub mod lifecycle;
pub mod mu;
pub mod prober;
pub mod profile;
pub mod router;
pub mod slice;

pub use profile::Profile;
