//! One engine process's life as a state machine: starting, ready, backing off before a
//! restart, stopping, stopped, given up. Pure: the shell feeds it what happened and
//! carries out what it returns.
//!
//! The rules that keep a slow-starting real engine (vLLM takes a minute) out of a
//! restart loop: a restart is one transition; a kill names the incarnation it was meant
//! for, so a kill decided about an engine that has since died (or was queued while its
//! successor started) never touches the successor; nothing kills an engine that is still
//! starting (its start has its own deadline); crash loops back off and then give up
//! visibly.

use super::restart::{Decision, RestartPolicy, RestartState};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    BackingOff,
    Stopping,
    Stopped,
    GaveUp,
}

impl Phase {
    /// The name metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::BackingOff => "backing_off",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::GaveUp => "gave_up",
        }
    }
}

/// What happened to the engine, or what was asked of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The engine being started answers its health check.
    Ready,
    /// The engine being started exited or missed its start deadline.
    StartFailed,
    /// The ready engine's process exited.
    Exited,
    /// Kill the engine of `incarnation` for a restart (the prober found it hung).
    Kill { incarnation: u64 },
    /// Stop for good (the node stops, or the replica is retired).
    Stop,
    /// The backoff before a restart is over.
    BackoffOver,
    /// The process group was stopped and reaped.
    Stopped,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Start incarnation `incarnation` of the engine.
    Launch { incarnation: u64 },
    /// SIGKILL the whole process group and reap it (a hung engine, or what is left of
    /// one that exited).
    KillGroup,
    /// SIGTERM the group, SIGKILL after the grace, reap.
    StopGroup,
    /// Sleep, then feed [`Input::BackoffOver`].
    Backoff(Duration),
    /// Tell routing the engine is serving.
    Up { incarnation: u64 },
    /// Tell routing the engine is gone.
    Down,
    /// Tell the node the engine was given up on.
    GaveUp,
    /// The input did not apply; the reason is logged.
    Ignored(&'static str),
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    phase: Phase,
    incarnation: u64,
    policy: RestartPolicy,
    history: RestartState,
    /// When the current incarnation became ready (ms), for the backoff reset.
    ready_ms: u64,
    /// Restarts so far.
    restarts: u64,
}

impl Lifecycle {
    /// An engine whose first incarnation (0) is being started.
    pub fn starting(policy: RestartPolicy) -> Self {
        Self {
            phase: Phase::Starting,
            incarnation: 0,
            policy,
            history: RestartState::default(),
            ready_ms: 0,
            restarts: 0,
        }
    }

    /// An engine whose first incarnation is already ready (launched before supervision).
    pub fn ready(policy: RestartPolicy, now_ms: u64) -> Self {
        Self {
            phase: Phase::Ready,
            ready_ms: now_ms,
            ..Self::starting(policy)
        }
    }

    /// An engine whose shell failed and was started again: the old process group is
    /// gone, and incarnation `incarnation` is to be started (the returned effect).
    pub fn relaunch(policy: RestartPolicy, incarnation: u64) -> (Self, Effect) {
        let life = Self {
            incarnation,
            ..Self::starting(policy)
        };
        (life, Effect::Launch { incarnation })
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    pub fn on(&mut self, input: Input, now_ms: u64) -> Vec<Effect> {
        use Effect as E;
        use Phase as P;
        match (self.phase, input) {
            (P::Stopped, _) => vec![E::Ignored("the engine is stopped")],
            (_, Input::Stop) => match self.phase {
                P::Starting | P::Ready => {
                    self.phase = P::Stopping;
                    vec![E::Down, E::StopGroup]
                }
                P::Stopping => vec![E::Ignored("already stopping")],
                _ => {
                    self.phase = P::Stopped;
                    vec![]
                }
            },
            (P::Stopping, Input::Stopped) => {
                self.phase = P::Stopped;
                vec![]
            }
            (P::Starting, Input::Ready) => {
                self.phase = P::Ready;
                self.ready_ms = now_ms;
                vec![E::Up {
                    incarnation: self.incarnation,
                }]
            }
            (P::Starting, Input::StartFailed) => {
                let mut out = vec![E::KillGroup];
                out.extend(self.after_exit(now_ms, Duration::ZERO));
                out
            }
            (P::Starting, Input::Kill { .. }) => {
                vec![E::Ignored(
                    "the engine is still starting; its start deadline applies",
                )]
            }
            (P::Ready, Input::Exited) => {
                let ran = Duration::from_millis(now_ms.saturating_sub(self.ready_ms));
                let mut out = vec![E::Down, E::KillGroup];
                out.extend(self.after_exit(now_ms, ran));
                out
            }
            (P::Ready, Input::Kill { incarnation }) if incarnation == self.incarnation => {
                let ran = Duration::from_millis(now_ms.saturating_sub(self.ready_ms));
                let mut out = vec![E::Down, E::KillGroup];
                out.extend(self.after_exit(now_ms, ran));
                out
            }
            (_, Input::Kill { .. }) => {
                vec![E::Ignored("the kill was meant for an earlier incarnation")]
            }
            (P::BackingOff, Input::BackoffOver) => {
                self.phase = P::Starting;
                self.incarnation += 1;
                self.restarts += 1;
                vec![E::Launch {
                    incarnation: self.incarnation,
                }]
            }
            _ => vec![E::Ignored("does not apply in this state")],
        }
    }

    fn after_exit(&mut self, now_ms: u64, ran: Duration) -> Vec<Effect> {
        match self.history.on_exit(&self.policy, now_ms, ran) {
            Decision::RestartAfter(d) => {
                self.phase = Phase::BackingOff;
                vec![Effect::Backoff(d)]
            }
            Decision::GiveUp => {
                self.phase = Phase::GaveUp;
                vec![Effect::GaveUp]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn launches(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Launch { .. }))
            .count()
    }

    #[test]
    fn a_crash_is_one_restart_and_kills_queued_meanwhile_miss_the_successor() {
        let mut l = Lifecycle::ready(RestartPolicy::default(), 0);
        // kill -9 of the engine: down, what is left of its group killed, a backoff.
        let out = l.on(Input::Exited, 10_000);
        assert_eq!(out[..2], [Effect::Down, Effect::KillGroup]);
        assert!(matches!(out[2], Effect::Backoff(_)));
        // The prober ejected the dead replica and asked for a kill: it was about
        // incarnation 0, and nothing is running.
        assert!(matches!(
            l.on(Input::Kill { incarnation: 0 }, 10_100)[..],
            [Effect::Ignored(_)]
        ));
        assert_eq!(
            l.on(Input::BackoffOver, 10_500),
            [Effect::Launch { incarnation: 1 }]
        );
        // While the new engine loads (a minute, for vLLM), kills do not apply.
        assert!(matches!(
            l.on(Input::Kill { incarnation: 0 }, 20_000)[..],
            [Effect::Ignored(_)]
        ));
        assert!(matches!(
            l.on(Input::Kill { incarnation: 1 }, 30_000)[..],
            [Effect::Ignored(_)]
        ));
        assert_eq!(l.on(Input::Ready, 70_000), [Effect::Up { incarnation: 1 }]);
        // A late kill for the dead engine leaves the new one alone.
        assert!(matches!(
            l.on(Input::Kill { incarnation: 0 }, 70_001)[..],
            [Effect::Ignored(_)]
        ));
        assert_eq!(l.phase(), Phase::Ready);
        assert_eq!(l.restarts(), 1);
        // A kill for the running engine (it hung) restarts it once more.
        let out = l.on(Input::Kill { incarnation: 1 }, 200_000);
        assert_eq!(out[..2], [Effect::Down, Effect::KillGroup]);
        assert_eq!(l.phase(), Phase::BackingOff);
    }

    #[test]
    fn a_relaunched_engine_starts_the_incarnation_it_was_given() {
        let (mut l, launch) = Lifecycle::relaunch(RestartPolicy::default(), 4);
        assert_eq!(launch, Effect::Launch { incarnation: 4 });
        assert_eq!(l.phase(), Phase::Starting);
        assert!(matches!(
            l.on(Input::Kill { incarnation: 4 }, 0)[..],
            [Effect::Ignored(_)]
        ));
        assert_eq!(l.on(Input::Ready, 10), vec![Effect::Up { incarnation: 4 }]);
        // It then lives as any other: an exit restarts the next incarnation.
        let out = l.on(Input::Exited, 20);
        assert_eq!(out[..2], [Effect::Down, Effect::KillGroup]);
        assert!(matches!(out[2], Effect::Backoff(_)));
        assert_eq!(
            l.on(Input::BackoffOver, 30),
            vec![Effect::Launch { incarnation: 5 }]
        );
    }

    #[test]
    fn crash_loops_give_up_and_stops_are_final() {
        let mut l = Lifecycle::starting(RestartPolicy::default());
        let mut now = 0;
        let mut gave_up = false;
        for _ in 0..30 {
            now += 100;
            let out = l.on(Input::StartFailed, now);
            assert_eq!(out[0], Effect::KillGroup);
            if out.contains(&Effect::GaveUp) {
                gave_up = true;
                break;
            }
            assert_eq!(launches(&l.on(Input::BackoffOver, now)), 1);
        }
        assert!(gave_up);
        assert_eq!(l.phase(), Phase::GaveUp);
        assert!(l.on(Input::Stop, now).is_empty());
        assert_eq!(l.phase(), Phase::Stopped);

        let mut s = Lifecycle::starting(RestartPolicy::default());
        assert_eq!(s.on(Input::Stop, 0), [Effect::Down, Effect::StopGroup]);
        assert!(matches!(s.on(Input::Ready, 1)[..], [Effect::Ignored(_)]));
        assert!(s.on(Input::Stopped, 2).is_empty());
        assert_eq!(s.phase(), Phase::Stopped);
        assert!(matches!(
            s.on(Input::BackoffOver, 3)[..],
            [Effect::Ignored(_)]
        ));
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Ready),
            Just(Input::StartFailed),
            Just(Input::Exited),
            (0u64..4).prop_map(|incarnation| Input::Kill { incarnation }),
            Just(Input::BackoffOver),
            Just(Input::Stop),
            Just(Input::Stopped),
        ]
    }

    proptest! {
        #[test]
        fn every_launch_is_one_restart_and_nothing_starts_after_a_stop(
            inputs in proptest::collection::vec((input(), 0u64..5_000), 1..80)
        ) {
            let mut l = Lifecycle::ready(RestartPolicy::default(), 0);
            let mut now = 0;
            let mut launched = 0u64;
            let mut stopped = false;
            for (i, gap) in inputs {
                now += gap;
                let was_starting = l.phase() == Phase::Starting;
                let out = l.on(i, now);
                let n = launches(&out) as u64;
                launched += n;
                // Only the end of a backoff launches, and only one engine.
                prop_assert!(n <= 1);
                prop_assert!(n == 0 || i == Input::BackoffOver);
                // A starting engine is never killed by a kill request.
                if was_starting && matches!(i, Input::Kill { .. }) {
                    prop_assert!(!out.contains(&Effect::KillGroup));
                }
                stopped |= i == Input::Stop;
                if stopped {
                    prop_assert_eq!(n, 0);
                }
                prop_assert_eq!(l.restarts(), launched);
                prop_assert_eq!(l.incarnation(), launched);
            }
        }
    }
}
