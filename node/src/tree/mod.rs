//! The node's supervision tree (DESIGN.md, "The node's shape"): every loop of the node
//! is a ractor actor under one root, restarted with backoff when it fails, and a node
//! whose actor keeps failing stops with that actor's name instead of serving a frozen
//! view. The request hot path never goes through these mailboxes: actors publish what
//! requests read.

mod every;
mod shell;
mod stopping;
mod supervisor;

pub use every::{every, ticked, Every, MAX_WAIT};
pub use shell::{Duty, Shell, ShellMsg, Turn};
pub use stopping::bounded;
pub use supervisor::{
    ChildSpec, Failure, Meltdown, OnRestart, Parent, Supervisor, SupervisorArgs, SupervisorMsg,
};

use crate::supervisor::restart::RestartPolicy;
use ractor::{Actor, ActorRef, SpawnErr};
use std::time::Duration;
use tokio::sync::watch;

/// How long stopping the tree may take before what is left is killed.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// A running tree.
pub struct Tree {
    root: ActorRef<SupervisorMsg>,
    fatal: watch::Receiver<Option<String>>,
}

impl Tree {
    /// Starts `children` under one root supervisor.
    pub async fn start(
        children: Vec<ChildSpec>,
        policy: RestartPolicy,
        on_restart: Option<OnRestart>,
    ) -> Result<Self, SpawnErr> {
        let (tx, fatal) = watch::channel(None);
        let args = SupervisorArgs {
            name: "node",
            children,
            policy,
            gate: None,
            fatal: Some(tx),
            on_restart,
        };
        let (root, _) = Actor::spawn(None, Supervisor, args).await?;
        Ok(Self { root, fatal })
    }

    /// Resolves with the reason once an actor has failed too often, or the tree ended
    /// (after [`Tree::stop`], or if the root itself failed).
    pub fn meltdown(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            match fatal.wait_for(Option::is_some).await {
                Ok(why) => why.clone().unwrap_or_default(),
                // The root ended without saying why (only `stop` ends it otherwise).
                Err(_) => "the node's supervision tree stopped".to_owned(),
            }
        }
    }

    /// The actors running now, by name (groups list their children).
    pub async fn running(&self) -> Vec<&'static str> {
        ractor::call!(self.root, SupervisorMsg::Running).unwrap_or_default()
    }

    /// Stops every actor, the last started first.
    pub async fn stop(&self) {
        stop_or_kill(&self.root.get_cell(), STOP_LIMIT).await;
    }

    /// Fault injection for tests: panics the named actor wherever it is in the tree.
    #[cfg(test)]
    pub fn panic(&self, name: &'static str) {
        let _ = self.root.send_message(SupervisorMsg::Panic(name));
    }
}

/// Stops `cell` and waits for it, killing it if it takes longer than `limit`.
async fn stop_or_kill(cell: &ractor::ActorCell, limit: Duration) {
    if cell.stop_and_wait(None, Some(limit)).await.is_err() {
        cell.kill();
    }
}

#[cfg(test)]
mod tests;
