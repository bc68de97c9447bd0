//! One engine process's shell: a ractor actor that feeds the engine's [`Lifecycle`]
//! what happens — its process exits, a (re)start ends, its backoff is over, the prober
//! asks for a kill, the node or the autoscaler asks for a stop — and carries out what
//! the lifecycle decides. The process itself is held by a keeper task the actor owns, so
//! that waiting for it to exit never blocks the actor's mailbox; if the actor fails, the
//! keeper is aborted with it and the engine's whole process group is killed.

use super::lifecycle::{Effect, Input, Lifecycle, Phase};
use super::restart::RestartPolicy;
use crate::error_line::one_line;
use crate::launcher::{launch_one, ChildReplica, EngineSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};

/// What the supervisor reports of its engines (the node turns it into routing changes
/// and registry writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Replica `index` exited or was killed; it gets no traffic until it is `Up` again.
    Down(usize),
    /// Incarnation `incarnation` of replica `index` is listening at `url`.
    Up {
        index: usize,
        url: String,
        incarnation: u64,
        /// Its process group, when known (the prober reads the group's busy time).
        group: Option<i32>,
    },
    /// Replica `index` kept dying; it stays down.
    GaveUp(usize),
    /// Replica `index` entered a lifecycle state (for metrics).
    State(usize, &'static str),
}

/// What an engine's shell is told.
pub enum EngineMsg {
    /// The process of incarnation `.0` exited.
    Exited(u64, Option<std::process::ExitStatus>),
    /// The start of incarnation `.0` ended.
    Launched(u64, Result<ChildReplica, String>),
    /// The backoff with this token is over.
    BackoffOver(u64),
    /// Kill incarnation `.0` for a restart (the prober found it hung).
    Kill(u64),
    /// Stop for good: SIGTERM, SIGKILL after the grace; answered once stopped.
    Stop(Duration, RpcReplyPort<()>),
    /// Fault injection for tests: the shell panics.
    #[cfg(test)]
    Panic,
}

/// How a shell begins.
pub enum Begin {
    /// With an engine already started and ready (incarnation 0).
    Running(Box<ChildReplica>),
    /// After its previous shell failed (that engine was killed with it): start
    /// incarnation `.0`.
    Relaunch(u64),
}

pub struct ShellArgs {
    pub index: usize,
    pub begin: Begin,
    pub spec: EngineSpec,
    pub policy: RestartPolicy,
    pub events: mpsc::UnboundedSender<Event>,
    /// The latest incarnation, kept where it outlives this shell.
    pub incarnation: Arc<AtomicU64>,
}

pub struct EngineShell;

pub struct ShellState {
    i: usize,
    spec: EngineSpec,
    life: Lifecycle,
    born: Instant,
    events: mpsc::UnboundedSender<Event>,
    incarnation: Arc<AtomicU64>,
    /// The running engine's keeper, and where it listens.
    keeper: Option<Keeper>,
    /// The keeper, a start in progress and backoff timers: they end with the actor.
    tasks: JoinSet<()>,
    launch: Option<AbortHandle>,
    backoff: u64,
    grace: Duration,
    stopped: Vec<RpcReplyPort<()>>,
}

impl Actor for EngineShell {
    type Msg = EngineMsg;
    type State = ShellState;
    type Arguments = ShellArgs;

    async fn pre_start(
        &self,
        me: ActorRef<EngineMsg>,
        args: ShellArgs,
    ) -> Result<ShellState, ActorProcessingErr> {
        let mut s = ShellState {
            i: args.index,
            spec: args.spec,
            life: Lifecycle::ready(args.policy, 0),
            born: Instant::now(),
            events: args.events,
            incarnation: args.incarnation,
            keeper: None,
            tasks: JoinSet::new(),
            launch: None,
            backoff: 0,
            grace: Duration::from_secs(5),
            stopped: Vec::new(),
        };
        match args.begin {
            Begin::Running(child) => {
                s.incarnation.store(0, Ordering::Relaxed);
                s.keep(&me, *child, 0);
                s.state_event();
            }
            Begin::Relaunch(incarnation) => {
                let (life, launch) = Lifecycle::relaunch(args.policy, incarnation);
                s.life = life;
                let _ = s.events.send(Event::Down(s.i));
                s.carry_out(&me, vec![launch]).await;
            }
        }
        Ok(s)
    }

    async fn handle(
        &self,
        me: ActorRef<EngineMsg>,
        msg: EngineMsg,
        s: &mut ShellState,
    ) -> Result<(), ActorProcessingErr> {
        let input = match msg {
            EngineMsg::Exited(incarnation, status) => {
                if incarnation != s.life.incarnation() {
                    return Ok(());
                }
                tracing::warn!(replica = s.i, ?status, "engine exited");
                Some(Input::Exited)
            }
            EngineMsg::Launched(incarnation, started) => {
                s.launch = None;
                if incarnation != s.life.incarnation() || s.life.phase() != Phase::Starting {
                    // A start the engine no longer waits for: the child goes with it.
                    return Ok(());
                }
                match started {
                    Ok(child) => {
                        s.keep(&me, child, incarnation);
                        Some(Input::Ready)
                    }
                    Err(e) => {
                        tracing::warn!(replica = s.i, error = %e, "restart failed");
                        Some(Input::StartFailed)
                    }
                }
            }
            EngineMsg::BackoffOver(token) => (token == s.backoff).then_some(Input::BackoffOver),
            EngineMsg::Kill(incarnation) => Some(Input::Kill { incarnation }),
            EngineMsg::Stop(grace, done) => {
                s.grace = grace;
                s.stopped.push(done);
                // A start in progress is abandoned: its half-started group goes with it.
                if let Some(launch) = s.launch.take() {
                    launch.abort();
                }
                Some(Input::Stop)
            }
            #[cfg(test)]
            EngineMsg::Panic => panic!("injected fault in the engine shell"),
        };
        if let Some(input) = input {
            let effects = s.apply(input);
            s.carry_out(&me, effects).await;
        }
        if s.life.phase() == Phase::Stopped {
            for done in s.stopped.drain(..) {
                let _ = done.send(());
            }
            me.stop(None);
        }
        Ok(())
    }
}

impl ShellState {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn apply(&mut self, input: Input) -> Vec<Effect> {
        let effects = self.life.on(input, self.now_ms());
        tracing::debug!(
            replica = self.i,
            ?input,
            ?effects,
            phase = self.life.phase().name(),
            "engine lifecycle"
        );
        effects
    }

    fn state_event(&self) {
        let _ = self
            .events
            .send(Event::State(self.i, self.life.phase().name()));
    }

    /// Hands `child` to a keeper task that reports its exit.
    fn keep(&mut self, me: &ActorRef<EngineMsg>, child: ChildReplica, incarnation: u64) {
        let (tx, rx) = mpsc::channel(2);
        let (url, group) = (child.url.clone(), child.group());
        self.tasks.spawn(keeper(child, incarnation, rx, me.clone()));
        self.keeper = Some(Keeper { tx, url, group });
    }

    /// Carries out the lifecycle's effects in order, and what they lead to.
    async fn carry_out(&mut self, me: &ActorRef<EngineMsg>, effects: Vec<Effect>) {
        let mut pending: std::collections::VecDeque<Effect> = effects.into();
        while let Some(effect) = pending.pop_front() {
            let next = match effect {
                Effect::Launch { incarnation } => {
                    self.state_event();
                    tracing::info!(replica = self.i, incarnation, "restarting the engine");
                    self.incarnation.store(incarnation, Ordering::Relaxed);
                    let (i, spec, me) = (self.i, self.spec.clone(), me.clone());
                    let launch = self.tasks.spawn(async move {
                        let started = launch_one(i, &spec).await.map_err(|e| one_line(&e));
                        // If the shell is gone, the message (and the child) is dropped.
                        let _ = me.send_message(EngineMsg::Launched(incarnation, started));
                    });
                    self.launch = Some(launch);
                    None
                }
                Effect::KillGroup => {
                    if let Some(k) = self.keeper.take() {
                        k.end(None).await;
                    }
                    None
                }
                Effect::StopGroup => {
                    if let Some(k) = self.keeper.take() {
                        k.end(Some(self.grace)).await;
                    }
                    Some(Input::Stopped)
                }
                Effect::Backoff(d) => {
                    tracing::info!(replica = self.i, delay = ?d, dead = self.life.incarnation(), "engine restarts after a backoff");
                    self.backoff += 1;
                    let (token, me) = (self.backoff, me.clone());
                    self.tasks.spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = me.send_message(EngineMsg::BackoffOver(token));
                    });
                    None
                }
                Effect::Up { incarnation } => {
                    if let Some(k) = &self.keeper {
                        let _ = self.events.send(Event::Up {
                            index: self.i,
                            url: k.url.clone(),
                            incarnation,
                            group: k.group,
                        });
                    }
                    None
                }
                Effect::Down => {
                    let _ = self.events.send(Event::Down(self.i));
                    None
                }
                Effect::GaveUp => {
                    tracing::error!(
                        replica = self.i,
                        restarts = self.life.restarts(),
                        "engine keeps dying; giving up on it (it stays down)"
                    );
                    let _ = self.events.send(Event::GaveUp(self.i));
                    None
                }
                Effect::Ignored(why) => {
                    tracing::info!(replica = self.i, why, "supervisor command ignored");
                    None
                }
            };
            if let Some(input) = next {
                pending.extend(self.apply(input));
            }
        }
        self.state_event();
    }
}

/// The running engine, as its shell reaches it.
struct Keeper {
    tx: mpsc::Sender<KeeperCmd>,
    url: String,
    group: Option<i32>,
}

/// End the engine: SIGKILL its group (`stop: None`), or SIGTERM it and SIGKILL what is
/// left after the grace; `done` is told once the group is gone.
struct KeeperCmd {
    stop: Option<Duration>,
    done: oneshot::Sender<()>,
}

impl Keeper {
    async fn end(self, stop: Option<Duration>) {
        let (done, gone) = oneshot::channel();
        if self.tx.send(KeeperCmd { stop, done }).await.is_ok() {
            let _ = gone.await;
        }
    }
}

/// Holds the engine's process: reports its exit, and kills or stops its group when
/// told. When the shell is gone (the channel closes, or this task is aborted), the
/// child is dropped, which kills the group.
async fn keeper(
    mut child: ChildReplica,
    incarnation: u64,
    mut cmds: mpsc::Receiver<KeeperCmd>,
    shell: ActorRef<EngineMsg>,
) {
    let mut exited = false;
    let cmd = loop {
        if exited {
            break cmds.recv().await;
        }
        tokio::select! {
            status = child.exited() => {
                exited = true;
                let _ = shell.send_message(EngineMsg::Exited(incarnation, status));
            }
            cmd = cmds.recv() => break cmd,
        }
    };
    if let Some(KeeperCmd { stop, done }) = cmd {
        match stop {
            None => child.kill().await,
            Some(grace) => child.stop(grace).await,
        }
        let _ = done.send(());
    }
}
