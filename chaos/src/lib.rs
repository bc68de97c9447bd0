//! Chaos drills: faults injected into a local cluster of real node processes, and the
//! same scenarios in virtual time over the simulated fleet, each checked for lost
//! requests and diverging committed state.

pub mod drill;
pub mod virtual_drill;
