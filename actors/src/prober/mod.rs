//! The active health prober's core: which replicas to probe, and which to eject and
//! restart. A replica on which no real request has completed for a while gets a minimal
//! end-to-end request ([`PROBE_MAX_TOKENS`] output token at [`PROBE_PRIORITY`], so a busy
//! but healthy engine serves it ahead of its queue and does not fail it); several
//! failures in a row, or work queued while the engine's token counter stands still,
//! condemn the replica. Condemned replicas are ejected — routers stop sending to them,
//! the assigner moves their slices, the supervisor restarts them — up to a bounded share
//! of the pool at once; the rest stay in service, flagged, until a slot frees.
//!
//! Passive ejection on real traffic's errors is the router's (`router::health`) and is
//! not repeated here; client errors (4xx) are the client's and count against a replica
//! in neither. The [`RetryBudget`] keeps the routers' retries to a share of traffic.
//!
//! Deterministic, with no I/O: the shell passes clock values in milliseconds, sends the
//! probes [`ProberCore::tick`] asks for, reports their results and the engines' gauges,
//! and carries out the [`VerdictChange`]s it gets back.

mod budget;
mod config;
mod decide;
mod ejections;
mod hang;
mod liveness;

#[cfg(test)]
mod tests;

pub use budget::{RetryBudget, WINDOW_S as RETRY_BUDGET_WINDOW_S};
pub use config::{ProbeConfig, ProbeConfigError};
pub use decide::{EngineState, ProberCore};
pub use ejections::{Effect, Ejections};
pub use liveness::{liveness_marks, LivenessWatch, Mark, Standing};

use crate::slice::ReplicaId;

/// A probe's scheduling priority: the engine's highest (lower is served first, as in
/// vLLM's `priority`), so load alone never makes a probe fail.
pub const PROBE_PRIORITY: i64 = i64::MIN;
/// A probe asks for one output token: enough to prove the whole path, prefill and a
/// decode step included, while costing the replica next to nothing.
pub const PROBE_MAX_TOKENS: u32 = 1;

/// Why a replica was condemned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `failures_to_eject` probes in a row failed or timed out.
    ProbesFailed,
    /// Work stayed queued with no output token for `stall_window_ms`.
    Stalled,
    /// A router's streams on it all fell silent past their bound (`router::stall`):
    /// this node's own or a peer's, told by gossip. Seconds sooner than the engine's
    /// gauges can show a hang under load, and needs none.
    StreamsStalled,
}

/// The prober's view of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Condemned since `since_ms`, but kept in service because the pool already has as
    /// many replicas ejected as `max_ejected_share` allows (Envoy's panic threshold in
    /// spirit: past that share, a verdict is not trusted enough to take capacity away).
    /// Ejected when a slot frees, unless it recovers first.
    Deferred {
        since_ms: u64,
        reason: Reason,
    },
    /// Ejected at `since_ms`: route nothing to it and restart it; it comes back through
    /// [`ProberCore::restored`].
    Unhealthy {
        since_ms: u64,
        reason: Reason,
    },
}

impl Verdict {
    /// Whether routers may send it traffic.
    pub fn in_service(&self) -> bool {
        !matches!(self, Verdict::Unhealthy { .. })
    }
}

/// A replica's verdict changed to `verdict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictChange {
    pub replica: ReplicaId,
    pub verdict: Verdict,
}

/// How a real request on a replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealOutcome {
    /// Completed: proof the whole path works, so no probe is needed for a while.
    Success,
    /// The client's fault (4xx). Never counts against the replica; nor does it count
    /// for it, because an engine's HTTP front end validates and rejects requests even
    /// while its step loop is hung.
    ClientError,
    /// A server error or timeout: the router's passive ejection weighs these; the
    /// prober only notes that nothing completed.
    Failed,
}

impl RealOutcome {
    /// How a request answered with HTTP `status` ended (`None`: no status came back, or
    /// the answer was not finished).
    pub fn of_status(status: Option<u16>) -> Self {
        match status {
            Some(s) if (200..300).contains(&s) => RealOutcome::Success,
            Some(s) if (400..500).contains(&s) => RealOutcome::ClientError,
            _ => RealOutcome::Failed,
        }
    }
}

/// Names one probe, so a late answer is never taken for a later probe's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub u64);

/// A probe to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub replica: ReplicaId,
    pub id: ProbeId,
}

/// What a [`ProberCore::tick`] asks of the shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    pub probes: Vec<Probe>,
    pub changes: Vec<VerdictChange>,
}
