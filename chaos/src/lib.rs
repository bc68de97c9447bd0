//! Fault injection, drills, the discrete-event simulator and the load generator.

pub mod calibrate;
pub mod drill;
pub mod loadgen;
pub mod sim;
pub mod trace;
