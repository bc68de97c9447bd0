//! The supervisor's shell: one task per launched replica that notices its exit, restarts
//! it after the [`RestartPolicy`]'s backoff (or gives up on a crash loop), kills it on
//! request (a hung engine the prober ejected), and stops it with the node or when the
//! autoscaler retires it. Replicas the autoscaler places here are added while the node
//! runs. What happens is reported as [`Event`]s, which the node turns into routing
//! changes and registry writes.

use super::restart::{Decision, RestartPolicy, RestartState};
use crate::launcher::{launch_one, ChildReplica, EngineSpec};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Replica `index` exited or was killed; it gets no traffic until it is `Up` again.
    Down(usize),
    /// Replica `index` is listening (again) at `url`.
    Up(usize, String),
    /// Replica `index` kept dying; it stays down.
    GaveUp(usize),
}

enum Cmd {
    Kill,
    Stop(Duration, oneshot::Sender<()>),
}

/// Handle on the supervised replicas, by local index.
pub struct Supervisor {
    slots: Mutex<BTreeMap<usize, mpsc::Sender<Cmd>>>,
    spec: EngineSpec,
    policy: RestartPolicy,
    events: mpsc::UnboundedSender<Event>,
}

impl Supervisor {
    pub fn start(
        children: Vec<ChildReplica>,
        spec: EngineSpec,
        policy: RestartPolicy,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self {
        let s = Self {
            slots: Mutex::new(BTreeMap::new()),
            spec,
            policy,
            events,
        };
        for (i, child) in children.into_iter().enumerate() {
            s.supervise(i, child);
        }
        s
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, mpsc::Sender<Cmd>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn supervise(&self, index: usize, child: ChildReplica) {
        let (tx, rx) = mpsc::channel(4);
        self.slots().insert(index, tx);
        tokio::spawn(supervise(
            index,
            child,
            self.spec.clone(),
            self.policy,
            rx,
            self.events.clone(),
        ));
    }

    /// Starts a new replica at `index` (placed here by the autoscaler), waits until it
    /// is ready, and supervises it from then on. Returns its URL.
    pub async fn add(&self, index: usize) -> anyhow::Result<String> {
        if self.slots().contains_key(&index) {
            anyhow::bail!("replica {index} is already running");
        }
        let child = launch_one(index, &self.spec).await?;
        let url = child.url.clone();
        self.supervise(index, child);
        Ok(url)
    }

    /// Kills replica `index` (a hung engine): it is then restarted like any exited one.
    pub async fn kill(&self, index: usize) {
        let tx = self.slots().get(&index).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(Cmd::Kill).await;
        }
    }

    /// Stops replica `index` for good (drained by the autoscaler): SIGTERM, SIGKILL
    /// after `grace`.
    pub async fn retire(&self, index: usize, grace: Duration) {
        let tx = self.slots().remove(&index);
        if let Some(tx) = tx {
            let (done, wait) = oneshot::channel();
            if tx.send(Cmd::Stop(grace, done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// Stops every replica: SIGTERM, SIGKILL after `grace`; no restarts.
    pub async fn stop(&self, grace: Duration) {
        let slots: Vec<_> = std::mem::take(&mut *self.slots()).into_values().collect();
        let mut waits = Vec::new();
        for tx in slots {
            let (done, wait) = oneshot::channel();
            if tx.send(Cmd::Stop(grace, done)).await.is_ok() {
                waits.push(wait);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }
}

async fn supervise(
    i: usize,
    child: ChildReplica,
    spec: EngineSpec,
    policy: RestartPolicy,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::UnboundedSender<Event>,
) {
    let born = Instant::now();
    let mut history = RestartState::default();
    let mut child = Some(child);
    let mut started = Instant::now();
    loop {
        if let Some(c) = child.as_mut() {
            tokio::select! {
                status = c.exited() => {
                    tracing::warn!(replica = i, ?status, "replica exited");
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Kill) => {
                        tracing::warn!(replica = i, "killing the replica for a restart");
                        c.kill().await;
                    }
                    Some(Cmd::Stop(grace, done)) => {
                        c.stop(grace).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        c.stop(Duration::from_secs(5)).await;
                        return;
                    }
                },
            }
        }
        child = None;
        let _ = events.send(Event::Down(i));
        let now_ms = born.elapsed().as_millis() as u64;
        let delay = match history.on_exit(&policy, now_ms, started.elapsed()) {
            Decision::RestartAfter(d) => d,
            Decision::GiveUp => {
                tracing::error!(replica = i, "replica keeps dying; not restarting it");
                let _ = events.send(Event::GaveUp(i));
                // Wait for the node to stop.
                while let Some(cmd) = cmds.recv().await {
                    if let Cmd::Stop(_, done) = cmd {
                        let _ = done.send(());
                        return;
                    }
                }
                return;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Kill) => {}
                Some(Cmd::Stop(_, done)) => { let _ = done.send(()); return; }
                None => return,
            },
        }
        match launch_one(i, &spec).await {
            Ok(c) => {
                started = Instant::now();
                let _ = events.send(Event::Up(i, c.url.clone()));
                child = Some(c);
            }
            Err(e) => {
                tracing::warn!(replica = i, error = %format!("{e:#}"), "restart failed");
                started = Instant::now();
            }
        }
    }
}
