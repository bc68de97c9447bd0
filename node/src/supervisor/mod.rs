//! The replica supervisor: owns the host's engines (start, restart with backoff, drain,
//! stop) and the environment they run in.

pub mod cpu_quota;
pub mod lifecycle;
pub mod listening;
pub mod restart;
pub mod run;
