//! The discrete-event simulator: Sluice's policies and the baselines on real traces, in
//! virtual time, over the same engine model the live replicas run.

pub mod cli;
pub mod des;
pub mod load;
pub mod outcome;
pub mod plot;
pub mod run;
pub mod scaling;
pub mod trace;

pub use outcome::{PolicyReport, RequestRecord, Slo};
pub use run::{simulate, simulate_scaled, FleetSpec, Sample, SimOptions, SimRun};
