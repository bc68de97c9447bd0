//! [`ProberCore`]: per-replica probe bookkeeping and the pool-wide ejection decision.

use std::collections::BTreeMap;

use super::hang::StallDetector;
use super::{
    Probe, ProbeConfig, ProbeConfigError, ProbeId, RealOutcome, Reason, Tick, Verdict,
    VerdictChange,
};
use crate::slice::ReplicaId;

/// A router's word is confirmed when the counter stood still half `stall_window_ms`;
/// sooner when the engine has held work and its own processes have been idle
/// meanwhile (never for an engine holding nothing, whatever a router believes it sent
/// there: a restarting node's requests lost on the way are no hang): an engine in a long
/// step is computing it, or waiting for a CPU to compute it on when its neighbours
/// starve it (a CPU vLLM on two shared cores), while one whose loop is stuck — deadlocked, blocked,
/// stopped — neither runs nor asks to. A hang that spins (a GPU collective polling
/// forever) burns CPU and still waits for the half window; so does an engine whose busy time
/// the shell cannot read.
pub const STREAMS_CONFIRMED_IDLE_AFTER_MS: u64 = 2_000;

/// How long an engine holds work without writing a token before it is probed out of
/// turn: two samples a second apart. A healthy engine writes a token within a step, and
/// steps of a second are rare (a long prefill); one probe per stretch costs it one
/// eight-token prompt.
pub const SUSPECT_AFTER_MS: u64 = 1_000;

/// What the prober knows of one replica.
#[derive(Debug, Clone)]
struct ReplicaState {
    verdict: Verdict,
    /// Last end-to-end proof: a real request or probe completed, or the replica
    /// (re)joined. The idle window runs from here.
    proven_ms: u64,
    /// When the last probe was sent; the next is not sent within `idle_window_ms` of
    /// it, so a replica failing fast is not probed in a tight loop.
    probe_sent_ms: Option<u64>,
    in_flight: Option<(ProbeId, u64)>,
    probe_failures: u32,
    /// When `probe_failures` reached `failures_to_eject`.
    probes_failed_ms: Option<u64>,
    stall: StallDetector,
    /// When a router first took its streams here for hung since the last proof.
    streams_stalled_ms: Option<u64>,
}

impl ReplicaState {
    fn fresh(now_ms: u64) -> Self {
        Self {
            verdict: Verdict::Healthy,
            proven_ms: now_ms,
            probe_sent_ms: None,
            in_flight: None,
            probe_failures: 0,
            probes_failed_ms: None,
            stall: StallDetector::default(),
            streams_stalled_ms: None,
        }
    }

    /// End-to-end proof at `now_ms`: forgive probe failures, restart the idle and the
    /// stall clocks.
    fn proven(&mut self, now_ms: u64) {
        self.proven_ms = now_ms;
        self.probe_failures = 0;
        self.probes_failed_ms = None;
        self.streams_stalled_ms = None;
        self.stall.progressed(now_ms);
    }

    fn probe_failed(&mut self, config: &ProbeConfig, now_ms: u64) {
        self.probe_failures = self.probe_failures.saturating_add(1);
        if self.probe_failures >= config.failures_to_eject && self.probes_failed_ms.is_none() {
            self.probes_failed_ms = Some(now_ms);
        }
    }

    /// When and why the replica is condemned, the earliest signal first.
    fn condemned(&self, config: &ProbeConfig) -> Option<(u64, Reason)> {
        let probes = self.probes_failed_ms.map(|t| (t, Reason::ProbesFailed));
        let stall = self.stall.stalled(config.stall_window_ms).map(|since| {
            (
                since.saturating_add(config.stall_window_ms),
                Reason::Stalled,
            )
        });
        // Half the window with the engine's processes idle: it is not computing. Idle
        // is at most `idle_busy_share` of one CPU (run or waited for) over the
        // counter's stillness: the HTTP server of a stuck engine still answers health
        // checks and metrics scrapes. A share of 0 turns the rule off.
        let half = config.stall_window_ms / 2;
        let share = Some(config.idle_busy_share).filter(|&s| s > 0.0);
        let idle_for = |min_ms| share.and_then(|s| self.stall.idle_stall(min_ms, s));
        let idle = idle_for(half).map(|since| (since.saturating_add(half), Reason::Stalled));
        // A router's word is confirmed by the engine's own counter, still for half the
        // window: a busy engine that is only slow for that router's requests still
        // writes tokens. But a busy one can write none for seconds in one long step (a
        // CPU vLLM recomputing preempted prompts stood still over 2 s under 24 long
        // streams; starved on two shared cores, over 5 s), so an operator who widens
        // the window for slow engines widens this with it. Only stillness with work
        // counts (an idle engine given one long prefill has not been still while idle).
        let confirmed = self
            .stall
            .still_with_work_for()
            .is_some_and(|still| still >= half)
            || idle_for(STREAMS_CONFIRMED_IDLE_AFTER_MS).is_some();
        let streams = self
            .streams_stalled_ms
            .filter(|_| confirmed)
            .map(|t| (t, Reason::StreamsStalled));
        // The prober's own probe is a word it need not be told: one output token of a
        // short prompt, at the head of the queue, that a healthy engine writes at once.
        // Held unanswered as long as a router's word waits, by an engine that has held
        // work and idled meanwhile, it is a hang — where no router sends anything (an
        // idle replica, a quiet fleet) as much as under load.
        let waited = STREAMS_CONFIRMED_IDLE_AFTER_MS;
        let probe = self
            .in_flight
            .filter(|&(_, sent)| self.stall.sampled_ms().saturating_sub(sent) >= waited)
            .filter(|_| idle_for(waited).is_some())
            .map(|(_, sent)| (sent.saturating_add(waited), Reason::Stalled));
        [probes, stall, idle, streams, probe]
            .into_iter()
            .flatten()
            .min_by_key(|&(t, _)| t)
    }

    fn probe_due(&self, config: &ProbeConfig, now_ms: u64) -> bool {
        let idle = config.idle_window_ms;
        let quiet = now_ms.saturating_sub(self.proven_ms) >= idle
            && self
                .probe_sent_ms
                .is_none_or(|sent| now_ms.saturating_sub(sent) >= idle);
        // An engine seen holding work without writing a token is probed at once, once
        // per such stretch, rather than when the idle window runs out: at low load a
        // hung replica's first held request may come seconds before the window ends.
        let suspect = self
            .stall
            .held_still(SUSPECT_AFTER_MS)
            .is_some_and(|since| self.probe_sent_ms.is_none_or(|sent| sent < since));
        self.verdict.in_service() && self.in_flight.is_none() && (quiet || suspect)
    }
}

/// The health prober's decisions for one pool of replicas.
///
/// Every event method returns the verdicts it changed, in replica order; a replica's
/// verdict only changes through them and [`ProberCore::tick`]. Rules:
/// - A real success, or a probe answered within `probe_timeout_ms`, proves the replica:
///   probe failures are forgiven and no probe is sent for `idle_window_ms`.
/// - A replica unproven for `idle_window_ms` is probed, at most once per
///   `idle_window_ms` and one probe at a time; a probe unanswered or answered late has
///   failed.
/// - `failures_to_eject` failed probes in a row, a stall (see `StallDetector`), or a
///   router's word that its streams there all stalled, condemn it. Condemned replicas are ejected oldest condemnation first while fewer
///   than [`ProbeConfig::max_ejected`] of the pool are ejected; the rest are
///   [`Verdict::Deferred`], and go back to healthy if their signal clears (a proof, or
///   for a gauge stall the tokens moving again) before a slot frees.
/// - Ejection ends only with [`ProberCore::restored`] (or removal from the pool). A pool
///   that shrinks until its ejections exceed the cap keeps them, and ejects no more
///   until it is back under.
#[derive(Debug, Clone)]
pub struct ProberCore {
    config: ProbeConfig,
    replicas: BTreeMap<ReplicaId, ReplicaState>,
    next_probe: u64,
}

/// What a node's supervisor says of the engine process behind a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    /// Serving, or not supervised here (nothing says otherwise).
    Up,
    /// Down, or started and not yet answering.
    DownOrStarting,
}

impl ProberCore {
    pub fn new(config: ProbeConfig) -> Result<Self, ProbeConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            replicas: BTreeMap::new(),
            next_probe: 0,
        })
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// The pool is now `replicas`. New ones start healthy and proven at `now_ms` (they
    /// were just made ready); removed ones are forgotten, which may free ejection slots.
    pub fn set_replicas(&mut self, replicas: &[ReplicaId], now_ms: u64) -> Vec<VerdictChange> {
        let mut next = BTreeMap::new();
        for &r in replicas {
            let state = self
                .replicas
                .remove(&r)
                .unwrap_or_else(|| ReplicaState::fresh(now_ms));
            next.insert(r, state);
        }
        self.replicas = next;
        self.settle(now_ms)
    }

    /// The pool follows the node's engines: a replica whose engine the supervisor has
    /// down or starting is left out — its start has its own deadline, and probing it
    /// would only fail it and eject it — and joins, healthy and proven, once it is up.
    pub fn follow_engines(
        &mut self,
        engines: &[(ReplicaId, EngineState)],
        now_ms: u64,
    ) -> Vec<VerdictChange> {
        let up: Vec<ReplicaId> = engines
            .iter()
            .filter(|(_, state)| *state == EngineState::Up)
            .map(|(replica, _)| *replica)
            .collect();
        self.set_replicas(&up, now_ms)
    }

    /// A real request on `replica` ended with `outcome` at `now_ms`.
    pub fn on_real_outcome(
        &mut self,
        replica: ReplicaId,
        outcome: RealOutcome,
        now_ms: u64,
    ) -> Vec<VerdictChange> {
        let Some(state) = self.replicas.get_mut(&replica) else {
            return Vec::new();
        };
        match outcome {
            RealOutcome::Success => state.proven(now_ms),
            RealOutcome::ClientError | RealOutcome::Failed => return Vec::new(),
        }
        // Only a deferred replica can change: a healthy one was not condemned, an
        // ejected one waits for its restart.
        if matches!(state.verdict, Verdict::Deferred { .. }) {
            self.settle(now_ms)
        } else {
            Vec::new()
        }
    }

    /// A sample of `replica`'s engine gauges: requests admitted and not finished, the
    /// output-token counter, and how long (ms) the engine's processes have run on a CPU
    /// or waited runnable for one so far (`None`: the shell cannot see its processes).
    pub fn on_progress(
        &mut self,
        replica: ReplicaId,
        queued: u32,
        tokens_total: u64,
        busy_ms: Option<u64>,
        now_ms: u64,
    ) -> Vec<VerdictChange> {
        let Some(state) = self.replicas.get_mut(&replica) else {
            return Vec::new();
        };
        state.stall.sample(queued, tokens_total, busy_ms, now_ms);
        self.settle(now_ms)
    }

    /// Routers took these replicas' streams for hung (their silence outlasted the bound
    /// from the replica's own pace; see `router::stall`), each `age` ms before `now_ms`
    /// — the local router's word and the peers' gossip alike. A replica is condemned
    /// once the engine's token counter has stood still with work held (or with none
    /// ever reaching it) for half `stall_window_ms` (5 s by default), or for
    /// `STREAMS_CONFIRMED_IDLE_AFTER_MS` with
    /// work held and its processes idle (an engine without that gauge is left to the
    /// probes). Word older than the replica's last proof (a completed request or probe,
    /// or its restart) is stale — a peer's gossip repeats it for a while — and ignored,
    /// as are replicas this prober does not watch.
    pub fn on_stall_word(&mut self, word: &[(ReplicaId, u64)], now_ms: u64) -> Vec<VerdictChange> {
        let mut marked = false;
        for &(replica, age_ms) in word {
            marked |= self.mark_streams_stalled(replica, now_ms.saturating_sub(age_ms));
        }
        if !marked {
            return Vec::new();
        }
        self.settle(now_ms)
    }

    /// Records a stall verdict of `at_ms` unless it is stale; true if it counts.
    fn mark_streams_stalled(&mut self, replica: ReplicaId, at_ms: u64) -> bool {
        let Some(state) = self.replicas.get_mut(&replica) else {
            return false;
        };
        if at_ms <= state.proven_ms || !state.verdict.in_service() {
            return false;
        }
        let since = state.streams_stalled_ms.map_or(at_ms, |t| t.min(at_ms));
        state.streams_stalled_ms = Some(since);
        true
    }

    /// `probe` was answered at `now_ms` (`ok`: it completed with its token), or the
    /// shell gave up on it (`ok == false`). Answers to probes no longer awaited (already
    /// timed out, or sent before a restart) are ignored.
    pub fn on_probe_result(&mut self, probe: Probe, ok: bool, now_ms: u64) -> Vec<VerdictChange> {
        let config = &self.config;
        let Some(state) = self.replicas.get_mut(&probe.replica) else {
            return Vec::new();
        };
        let Some((id, sent_ms)) = state.in_flight else {
            return Vec::new();
        };
        if id != probe.id {
            return Vec::new();
        }
        state.in_flight = None;
        if ok && now_ms.saturating_sub(sent_ms) <= config.probe_timeout_ms {
            state.proven(now_ms);
        } else {
            state.probe_failed(config, now_ms);
        }
        self.settle(now_ms)
    }

    /// Periodic work at `now_ms`: probes past `probe_timeout_ms` fail, verdicts settle,
    /// and the probes now due are returned (and awaited from now on).
    pub fn tick(&mut self, now_ms: u64) -> Tick {
        let config = &self.config;
        for state in self.replicas.values_mut() {
            if let Some((_, sent_ms)) = state.in_flight {
                if now_ms.saturating_sub(sent_ms) > config.probe_timeout_ms {
                    state.in_flight = None;
                    state.probe_failed(config, now_ms);
                }
            }
        }
        let changes = self.settle(now_ms);
        let mut probes = Vec::new();
        for (&replica, state) in &mut self.replicas {
            if state.probe_due(&self.config, now_ms) {
                let id = ProbeId(self.next_probe);
                self.next_probe += 1;
                state.in_flight = Some((id, now_ms));
                state.probe_sent_ms = Some(now_ms);
                probes.push(Probe { replica, id });
            }
        }
        Tick { probes, changes }
    }

    /// `replica` was restarted and is ready again at `now_ms`: it starts over healthy,
    /// and its ejection slot goes to the longest-deferred replica, if any.
    pub fn restored(&mut self, replica: ReplicaId, now_ms: u64) -> Vec<VerdictChange> {
        let Some(state) = self.replicas.get_mut(&replica) else {
            return Vec::new();
        };
        let was = std::mem::replace(state, ReplicaState::fresh(now_ms)).verdict;
        let mut changes = self.settle(now_ms);
        // settle() sees only changes after the reset; the reset itself may be one.
        if was != Verdict::Healthy && !changes.iter().any(|c| c.replica == replica) {
            changes.push(VerdictChange {
                replica,
                verdict: Verdict::Healthy,
            });
            changes.sort_by_key(|c| c.replica);
        }
        changes
    }

    /// The verdict on `replica`, if it is in the pool.
    pub fn verdict(&self, replica: ReplicaId) -> Option<Verdict> {
        self.replicas.get(&replica).map(|s| s.verdict)
    }

    /// Every replica's verdict, in replica order.
    pub fn verdicts(&self) -> impl Iterator<Item = (ReplicaId, Verdict)> + '_ {
        self.replicas.iter().map(|(&r, s)| (r, s.verdict))
    }

    /// Recomputes every verdict from the signals: ejected replicas stay ejected, the
    /// condemned are ejected in order of condemnation while the cap allows and deferred
    /// past it, the rest are healthy. Returns what changed.
    fn settle(&mut self, now_ms: u64) -> Vec<VerdictChange> {
        let config = &self.config;
        let cap = config.max_ejected(self.replicas.len());
        let mut ejected = self
            .replicas
            .values()
            .filter(|s| !s.verdict.in_service())
            .count();
        let mut condemned: Vec<(u64, ReplicaId, Reason)> = Vec::new();
        let mut changes = Vec::new();
        for (&replica, state) in &mut self.replicas {
            if !state.verdict.in_service() {
                continue;
            }
            match state.condemned(config) {
                Some((since_ms, reason)) => condemned.push((since_ms, replica, reason)),
                None if state.verdict != Verdict::Healthy => {
                    state.verdict = Verdict::Healthy;
                    changes.push(VerdictChange {
                        replica,
                        verdict: Verdict::Healthy,
                    });
                }
                None => {}
            }
        }
        condemned.sort_by_key(|&(since_ms, replica, _)| (since_ms, replica));
        for (since_ms, replica, reason) in condemned {
            let verdict = if ejected < cap {
                ejected += 1;
                Verdict::Unhealthy {
                    since_ms: now_ms,
                    reason,
                }
            } else {
                Verdict::Deferred { since_ms, reason }
            };
            let state = self.replicas.get_mut(&replica).expect("listed above");
            if state.verdict != verdict {
                state.verdict = verdict;
                changes.push(VerdictChange { replica, verdict });
            }
        }
        changes.sort_by_key(|c| c.replica);
        changes
    }
}
