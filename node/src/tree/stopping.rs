//! Telling a turn that its actor is about to stop. An actor hears a stop only between
//! turns, and a turn may wait up to [`MAX_WAIT`] for its moment, so a tree of a dozen
//! actors stopped one after another took seconds to wind down. A supervisor raises a
//! child's flag just before it stops the child, and every wait that goes through
//! [`bounded`] ends as soon as the flag is up: the turn returns, and the actor stops.

use super::MAX_WAIT;
use std::future::Future;
use tokio::sync::watch;

tokio::task_local! {
    static STOPPING: watch::Receiver<bool>;
}

/// Runs one turn of an actor whose stop flag is `stopping`.
pub(crate) async fn turn<F: Future>(stopping: &watch::Receiver<bool>, turn: F) -> F::Output {
    STOPPING.scope(stopping.clone(), turn).await
}

/// Waits for `f`, at most [`MAX_WAIT`] and not past the moment this actor is asked to
/// stop; `None` when the wait ended without it. Outside an actor's turn only the bound
/// applies.
pub async fn bounded<F: Future>(f: F) -> Option<F::Output> {
    let mut stopping = STOPPING.try_with(Clone::clone).ok();
    let asked = async {
        match stopping.as_mut() {
            // A flag whose supervisor is gone never rises: the bound still holds.
            Some(rx) => {
                if rx.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        r = tokio::time::timeout(MAX_WAIT, f) => r.ok(),
        () = asked => None,
    }
}
