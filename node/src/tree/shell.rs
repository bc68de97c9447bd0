//! The one shape every node actor has: a [`Duty`] (the loop a part of the node runs —
//! health checks, gossip, the assigner's rounds) driven by a ractor actor, so that a
//! panic or an error in one turn is caught, reported to the actor's supervisor and
//! answered with a restart, instead of leaving a task dead and the node serving a frozen
//! view.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::future::Future;
use std::marker::PhantomData;
use tokio::sync::watch;

/// What a duty wants after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Take another turn.
    Again,
    /// The duty is done (e.g. this node became a member): the actor stops normally and
    /// is not restarted.
    Done,
}

/// One part of the node's work, taken a turn at a time. A turn waits for its moment
/// itself (a tick, a change of the control state, an event on a channel), so it may
/// take a while; state that must outlive a restart belongs in what built the duty,
/// not in the duty.
pub trait Duty: Send + 'static {
    fn turn(&mut self) -> impl Future<Output = Result<Turn, ActorProcessingErr>> + Send;
}

/// What a shell is told.
#[derive(Debug)]
pub enum ShellMsg {
    Turn,
    /// Fault injection for tests: the next message panics the actor.
    #[cfg(test)]
    Panic,
}

/// The ractor actor that runs a [`Duty`].
pub struct Shell<D>(PhantomData<fn() -> D>);

impl<D> Default for Shell<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// A duty and its stop flag (raised by the supervisor just before it stops the actor).
pub struct ShellState<D> {
    duty: D,
    stopping: watch::Receiver<bool>,
}

impl<D: Duty> Actor for Shell<D> {
    type Msg = ShellMsg;
    type State = ShellState<D>;
    type Arguments = (D, watch::Receiver<bool>);

    async fn pre_start(
        &self,
        me: ActorRef<ShellMsg>,
        (duty, stopping): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        me.send_message(ShellMsg::Turn)?;
        Ok(ShellState { duty, stopping })
    }

    async fn handle(
        &self,
        me: ActorRef<ShellMsg>,
        msg: ShellMsg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShellMsg::Turn => match super::stopping::turn(&s.stopping, s.duty.turn()).await? {
                Turn::Again => me.send_message(ShellMsg::Turn)?,
                Turn::Done => me.stop(Some("done".to_owned())),
            },
            #[cfg(test)]
            ShellMsg::Panic => panic!("injected fault"),
        }
        Ok(())
    }
}
