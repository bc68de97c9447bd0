//! The supervisor's shell: one task per launched replica that feeds the replica's
//! [`Lifecycle`] what happens — its process exits, a restart's launch ends, the prober
//! asks for a kill, the node or the autoscaler asks for a stop — and carries out what
//! the lifecycle decides (restart after the [`RestartPolicy`]'s backoff, give up on a
//! crash loop, kill or stop the engine's whole process group). Replicas the autoscaler places here are added while the node
//! runs. What happens is reported as [`Event`]s, which the node turns into routing
//! changes and registry writes.

use super::lifecycle::{Effect, Input, Lifecycle};
use super::restart::RestartPolicy;
use crate::launcher::{launch_one, ChildReplica, EngineSpec};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Replica `index` exited or was killed; it gets no traffic until it is `Up` again.
    Down(usize),
    /// Incarnation `incarnation` of replica `index` is listening at `url`.
    Up(usize, String, u64),
    /// Replica `index` kept dying; it stays down.
    GaveUp(usize),
    /// Replica `index` entered a lifecycle state (for metrics).
    State(usize, &'static str),
}

enum Cmd {
    /// Kill incarnation `.0` for a restart.
    Kill(u64),
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

    /// Kills incarnation `incarnation` of replica `index` (a hung engine): it is then
    /// restarted like any exited one. A kill for an engine that has since been replaced
    /// or that is still starting does nothing.
    pub async fn kill(&self, index: usize, incarnation: u64) {
        let tx = self.slots().get(&index).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(Cmd::Kill(incarnation)).await;
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

/// One engine's shell: feeds the [`Lifecycle`] what happens (the process exits, a
/// launch ends, a command arrives) and carries out its effects. Commands are read at
/// every moment, a launch in progress included.
async fn supervise(
    i: usize,
    child: ChildReplica,
    spec: EngineSpec,
    policy: RestartPolicy,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::UnboundedSender<Event>,
) {
    let born = Instant::now();
    let now_ms = || born.elapsed().as_millis() as u64;
    let mut life = Lifecycle::ready(policy, 0);
    let mut child = Some(child);
    let mut grace = Duration::from_secs(5);
    let mut stopped: Option<oneshot::Sender<()>> = None;
    let mut pending: std::collections::VecDeque<Effect> = Default::default();
    let _ = events.send(Event::State(i, life.phase().name()));
    loop {
        // Carry out what the lifecycle asked for, in order.
        while let Some(effect) = pending.pop_front() {
            let input = match effect {
                Effect::Launch { incarnation } => {
                    let _ = events.send(Event::State(i, life.phase().name()));
                    tracing::info!(replica = i, incarnation, "restarting the engine");
                    match launch(i, &spec, &mut cmds, &mut life, now_ms).await {
                        Launch::Ready(c) => {
                            child = Some(c);
                            Some(Input::Ready)
                        }
                        Launch::Failed(e) => {
                            tracing::warn!(replica = i, error = %format!("{e:#}"), "restart failed");
                            Some(Input::StartFailed)
                        }
                        Launch::Stop(g, done) => {
                            grace = g;
                            stopped = done;
                            Some(Input::Stop)
                        }
                    }
                }
                Effect::KillGroup => {
                    if let Some(mut c) = child.take() {
                        c.kill().await;
                    }
                    None
                }
                Effect::StopGroup => {
                    if let Some(mut c) = child.take() {
                        c.stop(grace).await;
                    }
                    Some(Input::Stopped)
                }
                Effect::Backoff(d) => {
                    tracing::info!(replica = i, delay = ?d, dead = life.incarnation(), "engine restarts after a backoff");
                    let _ = events.send(Event::State(i, life.phase().name()));
                    tokio::select! {
                        _ = tokio::time::sleep(d) => Some(Input::BackoffOver),
                        cmd = cmds.recv() => match cmd {
                            Some(Cmd::Kill(inc)) => {
                                // Nothing runs during a backoff; let the core say so,
                                // then wait the backoff out.
                                apply(&mut life, Input::Kill { incarnation: inc }, now_ms(), i);
                                pending.push_front(Effect::Backoff(d));
                                None
                            }
                            Some(Cmd::Stop(_, done)) => {
                                stopped = Some(done);
                                Some(Input::Stop)
                            }
                            None => Some(Input::Stop),
                        },
                    }
                }
                Effect::Up { incarnation } => {
                    if let Some(c) = &child {
                        let _ = events.send(Event::Up(i, c.url.clone(), incarnation));
                    }
                    None
                }
                Effect::Down => {
                    let _ = events.send(Event::Down(i));
                    None
                }
                Effect::GaveUp => {
                    tracing::error!(
                        replica = i,
                        restarts = life.restarts(),
                        "engine keeps dying; giving up on it (it stays down)"
                    );
                    let _ = events.send(Event::GaveUp(i));
                    None
                }
                Effect::Ignored(why) => {
                    tracing::info!(replica = i, why, "supervisor command ignored");
                    None
                }
            };
            if let Some(input) = input {
                pending.extend(apply(&mut life, input, now_ms(), i));
            }
            let _ = events.send(Event::State(i, life.phase().name()));
        }
        if life.phase() == super::lifecycle::Phase::Stopped {
            if let Some(done) = stopped.take() {
                let _ = done.send(());
            }
            return;
        }
        // Wait for what happens next: the engine exits, or a command.
        let input = match child.as_mut() {
            Some(c) => tokio::select! {
                status = c.exited() => {
                    tracing::warn!(replica = i, ?status, "engine exited");
                    Input::Exited
                }
                cmd = cmds.recv() => command_input(cmd, &mut grace, &mut stopped),
            },
            None => command_input(cmds.recv().await, &mut grace, &mut stopped),
        };
        pending.extend(apply(&mut life, input, now_ms(), i));
    }
}

fn apply(life: &mut Lifecycle, input: Input, now_ms: u64, i: usize) -> Vec<Effect> {
    let effects = life.on(input, now_ms);
    tracing::debug!(
        replica = i,
        ?input,
        ?effects,
        phase = life.phase().name(),
        "engine lifecycle"
    );
    effects
}

fn command_input(
    cmd: Option<Cmd>,
    grace: &mut Duration,
    stopped: &mut Option<oneshot::Sender<()>>,
) -> Input {
    match cmd {
        Some(Cmd::Kill(incarnation)) => Input::Kill { incarnation },
        Some(Cmd::Stop(g, done)) => {
            *grace = g;
            *stopped = Some(done);
            Input::Stop
        }
        // The supervisor is gone: the node is stopping.
        None => Input::Stop,
    }
}

enum Launch {
    Ready(ChildReplica),
    Failed(anyhow::Error),
    Stop(Duration, Option<oneshot::Sender<()>>),
}

/// Starts the engine while still reading commands: a stop aborts the start (the
/// half-started process group goes with the dropped launch), a kill is the core's to
/// judge (it refuses to kill a starting engine).
async fn launch(
    i: usize,
    spec: &EngineSpec,
    cmds: &mut mpsc::Receiver<Cmd>,
    life: &mut Lifecycle,
    now_ms: impl Fn() -> u64,
) -> Launch {
    let start = launch_one(i, spec);
    tokio::pin!(start);
    loop {
        tokio::select! {
            r = &mut start => return match r {
                Ok(c) => Launch::Ready(c),
                Err(e) => Launch::Failed(e),
            },
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Kill(incarnation)) => {
                    for e in apply(life, Input::Kill { incarnation }, now_ms(), i) {
                        if let Effect::Ignored(why) = e {
                            tracing::info!(replica = i, incarnation, why, "kill not applied");
                        }
                    }
                }
                Some(Cmd::Stop(g, done)) => return Launch::Stop(g, Some(done)),
                None => return Launch::Stop(Duration::from_secs(5), None),
            },
        }
    }
}
