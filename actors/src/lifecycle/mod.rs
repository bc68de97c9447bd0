//! A request's life at a front door, from its placement to its end: admitted or refused,
//! retried once elsewhere or failed with which error, finished exactly once. The live
//! proxy and the simulator's virtual doors both run this core, so that their retry,
//! fail-over and accounting cannot drift apart. The shell does the I/O (sending, timing,
//! streaming) and reports what happened; the core tells the router core and says what
//! to do next. Pure: the router core, the retry budget and the clock value are passed in.

mod fail;
mod migrate;
mod retry;

#[cfg(test)]
mod tests;

pub use fail::Fail;
pub use migrate::{MigrationBudget, MigrationLimits};

use crate::prober::RetryBudget;
use crate::router::{Admission, Placement, RequestId, RouterCore, Usage, Verdict};
use crate::slice::ReplicaId;
use retry::upstream_failed;

/// How long a door waits on a request forwarded to another node that has gone silent
/// before it takes the attempt for failed: the serving node says it is alive every
/// half second while its engine is quiet, so this is four missed signs of life, well
/// under QUIC's idle timeout (5 s). The live forward and the virtual drill's doors
/// both use it.
pub const PEER_SILENCE_MS: u64 = 2_000;

/// How a replica failed a request it had taken, too late for a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broke {
    /// The request's deadline passed with the replica holding it.
    Deadline,
    /// The answer broke off, went silent or ended early after it began.
    Answer,
    /// The router took the whole replica for hung: every stream on it stopped. The
    /// replica's fault, not any one request's, so no request is implicated.
    Hung,
    /// The node serving the replica went silent (killed, cut off): the fleet's fault,
    /// so no request is implicated either.
    NodeLost,
}

impl Broke {
    fn fail(self) -> Fail {
        match self {
            Broke::Deadline => Fail::Timeout,
            Broke::Answer | Broke::Hung => Fail::CutOff,
            Broke::NodeLost => Fail::Unreachable,
        }
    }

    /// Whether the request may be what broke the replica.
    fn implicates(self) -> bool {
        !matches!(self, Broke::Hung | Broke::NodeLost)
    }
}

/// What the door does after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Send the request again, to this placement (never the replica that failed).
    Retry(Placement),
    /// Answer the client with this error; the router has already finished the request.
    Fail(Fail),
}

/// Why a request that broke midway was not moved to another replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmoved {
    /// The request had already ended.
    Ended,
    /// Its deadline passed.
    Deadline,
    /// The engine cannot continue it faithfully (n > 1, structured output, …).
    NotResumable,
    /// It moved as often as one request may.
    RequestLimit,
    /// The door's migrations per second are spent.
    Budget,
    /// It broke as many replicas as the quarantine allows.
    Quarantined { replicas: usize },
    /// No other replica can take it.
    NoReplica,
}

impl Unmoved {
    /// Its metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Unmoved::Ended => "ended",
            Unmoved::Deadline => "deadline",
            Unmoved::NotResumable => "not_resumable",
            Unmoved::RequestLimit => "request_limit",
            Unmoved::Budget => "budget",
            Unmoved::Quarantined { .. } => "quarantined",
            Unmoved::NoReplica => "no_replica",
        }
    }
}

/// A migration refused: the client's error, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub fail: Fail,
    pub why: Unmoved,
}

impl Refusal {
    fn new(fail: Fail, why: Unmoved) -> Self {
        Self { fail, why }
    }
}

/// One admitted request at its door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    id: RequestId,
    /// The replica of the current attempt.
    replica: ReplicaId,
    retried: bool,
    /// Times it moved to another replica mid-answer.
    migrations: u8,
    /// The router still holds it (in flight, charged to `replica`).
    open: bool,
}

impl Lifecycle {
    /// Admits and places a request at `now_ms`. A quarantined request is refused before
    /// it can break another replica; one that finds no replica is answered 503. Only a
    /// request actually sent deposits into the retry budget.
    pub fn begin(
        router: &mut RouterCore,
        budget: &mut RetryBudget,
        admission: &Admission<'_>,
        now_ms: u64,
    ) -> Result<(Self, Placement), Fail> {
        if let Some(fp) = admission.fingerprint {
            if let Verdict::Refused { replicas } = router.verdict(fp, now_ms) {
                return Err(Fail::Quarantined { replicas });
            }
        }
        let placement = router.place(admission, now_ms).ok_or(Fail::NoReplica)?;
        budget.on_request(now_ms);
        let life = Self {
            id: placement.id,
            replica: placement.replica,
            retried: false,
            migrations: 0,
            open: true,
        };
        Ok((life, placement))
    }

    /// The router's name for the request.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The replica of the current attempt.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// Whether the request is on its second attempt.
    pub fn retried(&self) -> bool {
        self.retried
    }

    /// Whether a router's word at `now_ms` that the current replica is hung should move
    /// the request while no answer has come back. The word is a suspicion the replica's
    /// prober may not confirm (one computing a long prefill writes no token for
    /// seconds), so it moves a request only while a retry would be granted — its own
    /// is left, the door's `budget` allows one, and another replica could take it
    /// ([`RouterCore::could_move`]): a request that would fail if moved waits on
    /// instead. A replica really hung is ejected by its prober, which ends the attempt
    /// anyway.
    pub fn moves_on_stall_word(
        &self,
        router: &RouterCore,
        budget: &RetryBudget,
        now_ms: u64,
    ) -> bool {
        self.open
            && !self.retried
            && budget.allows(now_ms)
            && router.could_move(self.id, self.replica, now_ms)
    }

    /// The same rule once the answer has begun (a stream under way, or an answer sent
    /// whole still arriving): the word moves the request only if the migration would
    /// be granted — the engine can continue it (`resumable`), it is within its own
    /// limit, not quarantined, the door's `budget` allows one, and another replica
    /// could take it. Otherwise the answer goes on: ending it on a suspicion fails a
    /// request the replica may still finish (a CPU-starved engine falls silent for
    /// seconds, and its peers may be failing their health checks at the same time),
    /// and a replica really hung is ejected and restarted by its prober, which breaks
    /// the answer anyway.
    pub fn moves_midway_on_stall_word(
        &self,
        resumable: bool,
        router: &RouterCore,
        budget: &MigrationBudget,
        now_ms: u64,
    ) -> bool {
        self.open
            && resumable
            && self.migrations < budget.limits().per_request
            && router.refused(self.id, now_ms).is_none()
            && budget.allows(now_ms)
            && router.could_move(self.id, self.replica, now_ms)
    }

    /// Times the request moved to another replica mid-answer.
    pub fn migrations(&self) -> u8 {
        self.migrations
    }

    /// Whether the router still holds the request.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The current attempt's call failed at `now_ms` before any answer came back;
    /// `delivered`: the replica took the request first (so the request may be what broke
    /// it). The request is retried once elsewhere while the budget allows; otherwise the
    /// replica is counted against and the request fails with 502 (503 when the retry
    /// finds no replica).
    pub fn failed_before_answer(
        &mut self,
        delivered: bool,
        router: &mut RouterCore,
        budget: &mut RetryBudget,
        now_ms: u64,
    ) -> Next {
        if !self.open {
            return Next::Fail(Fail::Unreachable);
        }
        let next = upstream_failed(delivered, self.retried, budget, now_ms);
        if next.implicate {
            router.implicate(self.id, self.replica, now_ms);
        }
        if !next.retry {
            router.on_replica_failure(self.replica, now_ms);
            self.finish(router, None);
            return Next::Fail(Fail::Unreachable);
        }
        self.retried = true;
        // The router counts the failure against the replica, and finishes the request
        // itself when no other replica can take it.
        match router.retry(self.id, self.replica, now_ms) {
            Some(p) => {
                self.replica = p.replica;
                Next::Retry(p)
            }
            None => {
                self.open = false;
                Next::Fail(Fail::NoReplica)
            }
        }
    }

    /// The node serving the current attempt went silent at `now_ms` before any answer
    /// came back (killed, cut off): the fleet's fault, so the request is not implicated.
    /// It is retried as any failed call while a retry would be granted; once its retry
    /// is spent (another fault of the fleet took it) it still moves, as a migration
    /// from nothing sent, within its migration limit and the door's migration `moves`
    /// — two faults of the fleet do not fail a request that broke nothing. Otherwise it
    /// fails with 502.
    pub fn node_lost_before_answer(
        &mut self,
        router: &mut RouterCore,
        budget: &mut RetryBudget,
        moves: &mut MigrationBudget,
        now_ms: u64,
    ) -> Next {
        if !self.open {
            return Next::Fail(Fail::Unreachable);
        }
        if !self.retried && budget.allows(now_ms) {
            return self.failed_before_answer(false, router, budget, now_ms);
        }
        match self.failed_midway(Broke::NodeLost, true, router, moves, now_ms) {
            Ok(p) => Next::Retry(p),
            Err(refused) => Next::Fail(refused.fail),
        }
    }

    /// The replica failed at `now_ms` while it held the request, too late to retry: the
    /// failure is counted against the replica, the request implicated (it may be what
    /// hung or broke it; not when the whole replica was taken for hung) and finished.
    pub fn failed_holding(&mut self, how: Broke, router: &mut RouterCore, now_ms: u64) -> Fail {
        if self.open {
            router.on_replica_failure(self.replica, now_ms);
            if how.implicates() {
                router.implicate(self.id, self.replica, now_ms);
            }
            self.finish(router, None);
        }
        how.fail()
    }

    /// The replica failed at `now_ms` while it held the request, after its answer began
    /// (or, for an answer sent whole, before any of it reached the client). The request
    /// moves to another replica when the engine can continue it faithfully
    /// (`resumable`), the deadline has not passed, the request is within its own
    /// migration limit and the door's budget, and the failure does not make it a
    /// quarantined request (one that broke every replica it landed on). Otherwise it
    /// fails as [`Self::failed_holding`] does.
    pub fn failed_midway(
        &mut self,
        how: Broke,
        resumable: bool,
        router: &mut RouterCore,
        budget: &mut MigrationBudget,
        now_ms: u64,
    ) -> Result<Placement, Refusal> {
        if !self.open {
            return Err(Refusal::new(how.fail(), Unmoved::Ended));
        }
        let unmoved = if how == Broke::Deadline {
            Some(Unmoved::Deadline)
        } else if !resumable {
            Some(Unmoved::NotResumable)
        } else if self.migrations >= budget.limits().per_request {
            Some(Unmoved::RequestLimit)
        } else {
            None
        };
        if how.implicates() {
            router.implicate(self.id, self.replica, now_ms);
        }
        let unmoved = unmoved.or_else(|| {
            router
                .refused(self.id, now_ms)
                .map(|replicas| Unmoved::Quarantined { replicas })
        });
        let unmoved = unmoved.or_else(|| (!budget.try_take(now_ms)).then_some(Unmoved::Budget));
        if let Some(why) = unmoved {
            let fail = match why {
                Unmoved::Quarantined { replicas } => Fail::Quarantined { replicas },
                _ => how.fail(),
            };
            router.on_replica_failure(self.replica, now_ms);
            self.finish(router, None);
            return Err(Refusal::new(fail, why));
        }
        // The router counts the failure against the replica, and finishes the request
        // itself when no other replica can take it.
        match router.retry(self.id, self.replica, now_ms) {
            Some(p) => {
                self.replica = p.replica;
                self.migrations += 1;
                Ok(p)
            }
            None => {
                self.open = false;
                Err(Refusal::new(how.fail(), Unmoved::NoReplica))
            }
        }
    }

    /// The connection to the replica was lost at `now_ms` after the replica took the
    /// request: a failed call like any other while nothing of the answer has reached the
    /// client, an answer cut off once some has.
    pub fn lost(
        &mut self,
        answer_started: bool,
        router: &mut RouterCore,
        budget: &mut RetryBudget,
        now_ms: u64,
    ) -> Next {
        if answer_started {
            Next::Fail(self.failed_holding(Broke::Answer, router, now_ms))
        } else {
            self.failed_before_answer(true, router, budget, now_ms)
        }
    }

    /// The replica answered the request whole at `now_ms`, with `usage`: a sign that it
    /// works, whatever its other streams show (see `router::stall`). Ends the request.
    pub fn completed(&mut self, router: &mut RouterCore, usage: Usage, now_ms: u64) {
        if self.open {
            router.heard_from(self.replica, now_ms);
        }
        self.finish(router, Some(usage));
    }

    /// The request ended — answered (with the engine's `usage` when it completed), or
    /// given up by the door. Only the first end reaches the router, however many paths
    /// of the shell end it.
    pub fn finish(&mut self, router: &mut RouterCore, usage: Option<Usage>) {
        if std::mem::take(&mut self.open) {
            router.finish(self.id, usage);
        }
    }
}
