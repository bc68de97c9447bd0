//! The replica supervisor: owns the host's engines (start, restart with backoff, drain,
//! stop) and the environment they run in. `engines` is the supervising actor, `engine`
//! one engine's shell, `lifecycle` the pure rules they carry out.

pub mod cpu_quota;
pub mod engine;
pub mod engines;
pub mod lifecycle;
pub mod listening;
pub mod proc_stat;
pub mod restart;
