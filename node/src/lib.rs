//! Sluice's node as a library: the front door, the cluster side, the engine supervisor
//! and the actor tree that runs them, started by [`server::Node::start`]. The `sluice`
//! binary is a thin shell over it.

pub mod cluster;
pub mod config;
pub mod error_line;
pub mod front;
pub mod launcher;
pub mod policies;
pub mod replica;
pub mod server;
pub mod supervisor;
pub mod tenants;
pub mod tree;
