//! A supervisor of named children: a child that fails (panics or returns an error) is
//! restarted after the [`RestartPolicy`]'s backoff; one that keeps failing makes the
//! supervisor itself fail, which its own supervisor answers the same way — and at the
//! root, the node stops with the name of the actor and its last error. A supervisor may
//! be gated: its children run only while the gate is open (the leader's duties run
//! only while this node leads).

use crate::supervisor::restart::{Decision, RestartPolicy, RestartState};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a stopping supervisor waits for a child to end its turn before killing it.
const STOP_WAIT: Duration = Duration::from_secs(1);

type Spawned = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;

/// Told the name of every actor restarted after a failure (a metric counts them).
pub type OnRestart = Arc<dyn Fn(&'static str) + Send + Sync>;

/// What a child is started with: the supervisor it is linked to, and the restart hook
/// a nested supervisor passes on.
pub struct Parent {
    pub cell: ActorCell,
    pub on_restart: Option<OnRestart>,
    /// Raised just before the child is stopped, so that its turn ends at once.
    pub stopping: watch::Receiver<bool>,
}

/// How to start one child, again and again: linked to the supervisor it is given.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: &'static str,
    start: Arc<dyn Fn(Parent) -> Spawned + Send + Sync>,
}

impl ChildSpec {
    pub fn new<F, Fut>(name: &'static str, start: F) -> Self
    where
        F: Fn(Parent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            name,
            start: Arc::new(move |parent| Box::pin(start(parent))),
        }
    }

    /// A child that runs `duty()` in a [`super::Shell`]; every restart builds a fresh duty.
    pub fn duty<D, F>(name: &'static str, duty: F) -> Self
    where
        D: super::Duty,
        F: Fn() -> D + Send + Sync + 'static,
    {
        let duty = Arc::new(duty);
        Self::new(name, move |parent| {
            let duty = duty.clone();
            async move {
                let (actor, _) = Actor::spawn_linked(
                    None,
                    super::Shell::<D>::default(),
                    (duty(), parent.stopping),
                    parent.cell,
                )
                .await?;
                Ok(actor.get_cell())
            }
        })
    }

    /// A child that is itself a supervisor of `children`, running them only while
    /// `gate` (when given) reads true.
    pub fn group(
        name: &'static str,
        children: Vec<ChildSpec>,
        policy: RestartPolicy,
        gate: Option<watch::Receiver<bool>>,
    ) -> Self {
        Self::new(name, move |parent| {
            let args = SupervisorArgs {
                name,
                children: children.clone(),
                policy,
                gate: gate.clone(),
                fatal: None,
                on_restart: parent.on_restart,
            };
            async move {
                let (actor, _) = Actor::spawn_linked(None, Supervisor, args, parent.cell).await?;
                Ok(actor.get_cell())
            }
        })
    }
}

pub struct SupervisorArgs {
    pub name: &'static str,
    pub children: Vec<ChildSpec>,
    pub policy: RestartPolicy,
    pub gate: Option<watch::Receiver<bool>>,
    /// The root's: where a meltdown is told (the node then stops with it).
    pub fatal: Option<watch::Sender<Option<String>>>,
    pub on_restart: Option<OnRestart>,
}

#[derive(Debug)]
pub enum SupervisorMsg {
    /// Start child `.0` (again).
    Start(usize),
    /// The gate opened or closed.
    Gate(bool),
    /// The names of the children running now, for status and tests.
    Running(ractor::RpcReplyPort<Vec<&'static str>>),
    /// Fault injection for tests: panic the named child (or, nested, a grandchild).
    #[cfg(test)]
    Panic(&'static str),
}

pub struct Supervisor;

pub struct SupervisorState {
    name: &'static str,
    children: Vec<ChildSpec>,
    policy: RestartPolicy,
    /// Per child: its actor while it runs, and its restart history.
    running: Vec<Option<Running>>,
    history: Vec<RestartState>,
    by_id: HashMap<ActorId, usize>,
    open: bool,
    born: Instant,
    gate_task: Option<tokio::task::JoinHandle<()>>,
    fatal: Option<watch::Sender<Option<String>>>,
    on_restart: Option<OnRestart>,
}

/// A running child.
struct Running {
    cell: ActorCell,
    started: Instant,
    /// Its stop flag.
    stopping: watch::Sender<bool>,
}

impl Running {
    /// Asks the child to stop: its current turn ends at once, then it hears the stop.
    fn stop(&self, reason: &str) {
        self.stopping.send_replace(true);
        self.cell.stop(Some(reason.to_owned()));
    }

    /// Stops the child the same way and waits for it, killing it past `limit`.
    async fn stop_and_wait(&self, limit: Duration) {
        self.stopping.send_replace(true);
        super::stop_or_kill(&self.cell, limit).await;
    }
}

impl SupervisorState {
    /// Child `i` failed after running `ran`: restarted after the policy's backoff, or,
    /// past its intensity, this supervisor gives up.
    fn failed(
        &mut self,
        me: &ActorRef<SupervisorMsg>,
        i: usize,
        ran: Duration,
        error: String,
    ) -> Result<(), ActorProcessingErr> {
        let name = self.children[i].name;
        let failure = Failure {
            group: self.name,
            kind: name,
            child: name.to_owned(),
            ran,
            error,
        };
        let now_ms = self.born.elapsed().as_millis() as u64;
        match failure.decide(
            &mut self.history[i],
            &self.policy,
            now_ms,
            self.on_restart.as_ref(),
        ) {
            Ok(delay) => {
                me.send_after(delay, move || SupervisorMsg::Start(i));
                Ok(())
            }
            Err(m) => Err(self.give_up(m)),
        }
    }

    fn running_children(&self) -> Vec<(&'static str, ActorCell)> {
        self.children
            .iter()
            .zip(&self.running)
            .filter_map(|(c, r)| Some((c.name, r.as_ref()?.cell.clone())))
            .collect()
    }

    /// Stops every child and tells the node (at the root) why.
    fn give_up(&mut self, m: Meltdown) -> ActorProcessingErr {
        self.stop_all();
        if let Some(fatal) = &self.fatal {
            fatal.send_replace(Some(m.to_string()));
        }
        Box::new(m)
    }

    fn stop_all(&mut self) {
        for child in self.running.iter_mut().filter_map(Option::take) {
            self.by_id.remove(&child.cell.get_id());
            child.stop("not leader");
        }
    }
}

/// One failure of a supervised child, as every supervisor of the node answers it.
pub struct Failure {
    pub group: &'static str,
    /// What restarts are counted as (`sluice_actor_restarts_total{actor}`).
    pub kind: &'static str,
    /// The child by name, for logs and the meltdown.
    pub child: String,
    /// How long it had run.
    pub ran: Duration,
    pub error: String,
}

impl Failure {
    /// Restart after the returned backoff (the restart counted and logged), or, past the
    /// policy's intensity, the meltdown to report.
    pub fn decide(
        self,
        history: &mut RestartState,
        policy: &RestartPolicy,
        now_ms: u64,
        on_restart: Option<&OnRestart>,
    ) -> Result<Duration, Meltdown> {
        let Failure {
            group,
            kind,
            child,
            ran,
            error,
        } = self;
        match history.on_exit(policy, now_ms, ran) {
            Decision::RestartAfter(delay) => {
                tracing::warn!(group, actor = %child, %error, ?delay, "actor failed; restarting it");
                if let Some(hook) = on_restart {
                    hook(kind);
                }
                Ok(delay)
            }
            Decision::GiveUp => {
                tracing::error!(group, actor = %child, %error, "actor keeps failing; giving up");
                Err(Meltdown {
                    group,
                    child,
                    times: policy.max_restarts + 1,
                    window: policy.window,
                    last: error,
                })
            }
        }
    }
}

/// Why a supervisor gave up: the child that kept failing and its last error.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the {child} actor (in {group}) failed {times} times within {window:?}; last error: {last}"
)]
pub struct Meltdown {
    pub group: &'static str,
    pub child: String,
    pub times: usize,
    pub window: Duration,
    pub last: String,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let n = args.children.len();
        let open = args.gate.as_ref().is_none_or(|g| *g.borrow());
        let gate_task = args.gate.map(|mut gate| {
            let me = me.clone();
            tokio::spawn(async move {
                while gate.changed().await.is_ok() {
                    let open = *gate.borrow_and_update();
                    if me.send_message(SupervisorMsg::Gate(open)).is_err() {
                        return;
                    }
                }
            })
        });
        if open {
            for i in 0..n {
                me.send_message(SupervisorMsg::Start(i))?;
            }
        }
        Ok(SupervisorState {
            name: args.name,
            children: args.children,
            policy: args.policy,
            running: (0..n).map(|_| None).collect(),
            history: vec![RestartState::default(); n],
            by_id: HashMap::new(),
            open,
            born: Instant::now(),
            gate_task,
            fatal: args.fatal,
            on_restart: args.on_restart,
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<SupervisorMsg>,
        s: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = s.gate_task.take() {
            t.abort();
        }
        // In order, last started first; a child busy past the bound is killed.
        for child in s.running.iter_mut().rev().filter_map(Option::take) {
            s.by_id.remove(&child.cell.get_id());
            child.stop_and_wait(STOP_WAIT).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        s: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(i) => {
                if !s.open || s.running.get(i).is_none_or(Option::is_some) {
                    return Ok(());
                }
                let spec = s.children[i].clone();
                let (stopping, stop_flag) = watch::channel(false);
                let parent = Parent {
                    cell: me.get_cell(),
                    on_restart: s.on_restart.clone(),
                    stopping: stop_flag,
                };
                let cell = match (spec.start)(parent).await {
                    Ok(cell) => cell,
                    // A start that fails counts as a failure of the child, not of this
                    // supervisor.
                    Err(e) => {
                        return s.failed(&me, i, Duration::ZERO, format!("cannot start: {e}"))
                    }
                };
                tracing::debug!(group = s.name, actor = spec.name, "actor started");
                s.by_id.insert(cell.get_id(), i);
                s.running[i] = Some(Running {
                    cell,
                    started: Instant::now(),
                    stopping,
                });
            }
            SupervisorMsg::Gate(open) if open != s.open => {
                s.open = open;
                tracing::info!(group = s.name, running = open, "actors follow the gate");
                if open {
                    for i in 0..s.children.len() {
                        me.send_message(SupervisorMsg::Start(i))?;
                    }
                } else {
                    s.stop_all();
                }
            }
            SupervisorMsg::Gate(_) => {}
            SupervisorMsg::Running(reply) => {
                let mut names = Vec::new();
                for (name, cell) in s.running_children() {
                    names.push(name);
                    if cell.is_message_type_of::<SupervisorMsg>() == Some(true) {
                        let group: ActorRef<SupervisorMsg> = cell.into();
                        names.extend(
                            ractor::call!(group, SupervisorMsg::Running).unwrap_or_default(),
                        );
                    }
                }
                let _ = reply.send(names);
            }
            #[cfg(test)]
            SupervisorMsg::Panic(name) => {
                for (child, cell) in s.running_children() {
                    if cell.is_message_type_of::<SupervisorMsg>() == Some(true) {
                        let _ = cell.send_message(SupervisorMsg::Panic(name));
                    } else if child == name {
                        let _ = cell.send_message(super::ShellMsg::Panic);
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        s: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, error) = match event {
            SupervisionEvent::ActorFailed(cell, e) => {
                // A group that gave up gives up for everyone above it.
                if let Some(m) = e.downcast_ref::<Meltdown>() {
                    return Err(s.give_up(m.clone()));
                }
                (cell, Some(e.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        // Children stopped on purpose (the gate closed) are no longer listed.
        let Some(i) = s.by_id.remove(&cell.get_id()) else {
            return Ok(());
        };
        let Some(Running { started, .. }) = s.running[i].take() else {
            return Ok(());
        };
        let name = s.children[i].name;
        let Some(error) = error else {
            tracing::debug!(group = s.name, actor = name, "actor finished its duty");
            return Ok(());
        };
        s.failed(&me, i, started.elapsed(), error)
    }
}
