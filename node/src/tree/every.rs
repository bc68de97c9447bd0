//! The most common duty: do one step every period (health checks, probes, gossip).

use super::{Duty, Turn};
use ractor::ActorProcessingErr;
use std::future::Future;
use std::time::Duration;
use tokio::time::{Interval, MissedTickBehavior};

pub struct Every<F> {
    tick: Interval,
    step: F,
}

/// A duty that runs `step` every `period`, the first time at once. A late tick is
/// `missed`'s to judge (skip for gossip, delay for checks that must all happen).
pub fn every<F, Fut>(period: Duration, missed: MissedTickBehavior, step: F) -> Every<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(missed);
    Every { tick, step }
}

impl<F, Fut> Duty for Every<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        if ticked(&mut self.tick).await {
            (self.step)().await;
        }
        Ok(Turn::Again)
    }
}

/// Longest a turn waits for its moment: an actor hears its own messages (a stop, a
/// fault injected by a test) only between turns.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Waits for `tick`, or [`MAX_WAIT`], or the actor's stop: whether it ticked (a tick is
/// never lost to the wait ending first).
pub async fn ticked(tick: &mut Interval) -> bool {
    super::bounded(tick.tick()).await.is_some()
}
