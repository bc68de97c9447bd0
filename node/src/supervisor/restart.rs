//! When to restart a replica that exited: exponential backoff, reset once a replica has
//! run long enough, and a meltdown guard that stops restarting one that keeps dying
//! (ractor's and Erlang's supervision intensity, in time-stamped form). Pure.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub base: Duration,
    pub max: Duration,
    /// A run this long counts as healthy: the backoff starts over.
    pub reset_after: Duration,
    /// More than this many restarts within `window` and the replica is given up.
    pub max_restarts: usize,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            max_restarts: 10,
            window: Duration::from_secs(300),
        }
    }
}

impl RestartPolicy {
    /// Restarts within tens of milliseconds, giving up after `max_restarts` (tests).
    #[cfg(test)]
    pub fn quick(max_restarts: usize) -> Self {
        Self {
            base: Duration::from_millis(20),
            max: Duration::from_millis(50),
            reset_after: Duration::from_secs(600),
            max_restarts,
            window: Duration::from_secs(600),
        }
    }
}

/// One replica's restart history.
#[derive(Debug, Clone, Default)]
pub struct RestartState {
    /// Times (ms) of recent restarts.
    recent: Vec<u64>,
    /// Consecutive quick failures, for the backoff.
    streak: u32,
}

/// What to do about an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    GiveUp,
}

impl RestartState {
    /// The replica exited at `now_ms` after running `ran`.
    pub fn on_exit(&mut self, p: &RestartPolicy, now_ms: u64, ran: Duration) -> Decision {
        let window = p.window.as_millis() as u64;
        self.recent.retain(|&t| t + window > now_ms);
        if self.recent.len() >= p.max_restarts {
            return Decision::GiveUp;
        }
        if ran >= p.reset_after {
            self.streak = 0;
        }
        let delay = p
            .base
            .saturating_mul(1u32 << self.streak.min(16))
            .min(p.max);
        self.streak = self.streak.saturating_add(1);
        self.recent.push(now_ms);
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backs_off_resets_and_gives_up() {
        let p = RestartPolicy::default();
        let mut s = RestartState::default();
        let quick = Duration::from_secs(1);
        assert_eq!(
            s.on_exit(&p, 0, quick),
            Decision::RestartAfter(Duration::from_millis(500))
        );
        assert_eq!(
            s.on_exit(&p, 1_000, quick),
            Decision::RestartAfter(Duration::from_secs(1))
        );
        assert_eq!(
            s.on_exit(&p, 2_000, quick),
            Decision::RestartAfter(Duration::from_secs(2))
        );
        // A long healthy run starts the backoff over.
        assert_eq!(
            s.on_exit(&p, 100_000, Duration::from_secs(90)),
            Decision::RestartAfter(Duration::from_millis(500))
        );
        // Crash-looping: the eleventh restart within five minutes is refused.
        let mut c = RestartState::default();
        for k in 0..10 {
            assert!(matches!(
                c.on_exit(&p, k * 10, quick),
                Decision::RestartAfter(_)
            ));
        }
        assert_eq!(c.on_exit(&p, 200, quick), Decision::GiveUp);
        // Outside the window restarts are allowed again.
        assert!(matches!(
            c.on_exit(&p, 400_000, quick),
            Decision::RestartAfter(_)
        ));
    }

    proptest! {
        #[test]
        fn delays_are_bounded(exits in proptest::collection::vec((0u64..10_000, 0u64..200), 1..60)) {
            let p = RestartPolicy::default();
            let mut s = RestartState::default();
            let mut now = 0;
            for (gap, ran) in exits {
                now += gap;
                if let Decision::RestartAfter(d) = s.on_exit(&p, now, Duration::from_secs(ran)) {
                    prop_assert!(d >= p.base && d <= p.max);
                }
            }
        }
    }
}
