//! The engine supervisor: a ractor actor with one child actor per engine process (an
//! [`EngineShell`]), added as replicas are launched or placed here and removed as they
//! are retired. An engine that dies is its shell's to restart (the lifecycle's backoff
//! and crash-loop rule); a shell that itself fails is restarted here after the
//! [`RestartPolicy`]'s backoff, with its engine started again, and one that keeps
//! failing stops the node with its name. The engines are stopped last when a node shuts
//! down, so this supervisor is a root of its own that the node stops after Raft.

use super::engine::{Begin, EngineMsg, EngineShell, Event, ShellArgs};
use super::restart::{RestartPolicy, RestartState};
use crate::launcher::{launch_one, ChildReplica, EngineSpec};
use crate::tree::{Failure, OnRestart};
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long past its grace a stopping engine's shell may take before it is left to the
/// drop of its process (which kills the group).
const STOP_SLACK: Duration = Duration::from_secs(10);

/// Handle on the supervised replicas, by local index.
pub struct Supervisor {
    actor: ActorRef<EnginesMsg>,
    spec: EngineSpec,
    fatal: watch::Receiver<Option<String>>,
}

impl Supervisor {
    /// Supervises `children` (launched and ready) as replicas `first..`: their engines
    /// are restarted under `policy`, their shells under `shells`.
    pub async fn start(
        first: usize,
        children: Vec<ChildReplica>,
        spec: EngineSpec,
        policy: RestartPolicy,
        shells: RestartPolicy,
        events: mpsc::UnboundedSender<Event>,
        on_restart: Option<OnRestart>,
    ) -> Result<Self, SpawnErr> {
        let (fatal_tx, fatal) = watch::channel(None);
        let args = EnginesArgs {
            spec: spec.clone(),
            policy,
            shells,
            events,
            fatal: fatal_tx,
            on_restart,
        };
        let (actor, _) = Actor::spawn(None, Engines, args).await?;
        for (i, child) in children.into_iter().enumerate() {
            let _ = actor.send_message(EnginesMsg::Add(first + i, child));
        }
        Ok(Self { actor, spec, fatal })
    }

    /// Starts a new replica at `index` (placed here by the autoscaler), waits until it
    /// is ready, and supervises it from then on. Returns its URL.
    pub async fn add(&self, index: usize) -> anyhow::Result<String> {
        if ractor::call!(self.actor, EnginesMsg::Has, index).unwrap_or(false) {
            anyhow::bail!("replica {index} is already running");
        }
        let child = launch_one(index, &self.spec).await?;
        let url = child.url.clone();
        self.actor
            .send_message(EnginesMsg::Add(index, child))
            .map_err(|_| anyhow::anyhow!("the engine supervisor has stopped"))?;
        Ok(url)
    }

    /// Kills incarnation `incarnation` of replica `index` (a hung engine): it is then
    /// restarted like any exited one. A kill for an engine that has since been replaced
    /// or that is still starting does nothing.
    pub async fn kill(&self, index: usize, incarnation: u64) {
        let _ = self
            .actor
            .send_message(EnginesMsg::Kill(index, incarnation));
    }

    /// Stops replica `index` for good (drained by the autoscaler): SIGTERM, SIGKILL
    /// after `grace`.
    pub async fn retire(&self, index: usize, grace: Duration) {
        if let Ok(Some(shell)) = ractor::call!(self.actor, EnginesMsg::Take, index) {
            stop_shell(shell, grace).await;
        }
    }

    /// Stops every replica: SIGTERM, SIGKILL after `grace`; no restarts.
    pub async fn stop(&self, grace: Duration) {
        let shells = ractor::call!(self.actor, EnginesMsg::TakeAll).unwrap_or_default();
        futures_util::future::join_all(shells.into_iter().map(|s| stop_shell(s, grace))).await;
        self.actor.stop(None);
    }

    /// Resolves with the reason once an engine's shell has failed too often.
    pub fn meltdown(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            let why = fatal
                .wait_for(Option::is_some)
                .await
                .map(|why| why.clone().unwrap_or_default());
            match why {
                Ok(why) => why,
                // The supervisor was stopped without a failure.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Fault injection for tests: panics the shell of replica `index`.
    #[cfg(test)]
    pub fn panic_shell(&self, index: usize) {
        let _ = self.actor.send_message(EnginesMsg::Panic(index));
    }
}

async fn stop_shell(shell: ActorRef<EngineMsg>, grace: Duration) {
    let _ = shell
        .call(
            |done| EngineMsg::Stop(grace, done),
            Some(grace + STOP_SLACK),
        )
        .await;
}

pub enum EnginesMsg {
    Add(usize, ChildReplica),
    Has(usize, RpcReplyPort<bool>),
    Kill(usize, u64),
    /// Removes replica `.0` from supervision and hands over its shell (to be stopped).
    Take(usize, RpcReplyPort<Option<ActorRef<EngineMsg>>>),
    TakeAll(RpcReplyPort<Vec<ActorRef<EngineMsg>>>),
    /// Start the shell of replica `.0` again, after its backoff.
    Restart(usize),
    #[cfg(test)]
    Panic(usize),
}

struct Engines;

struct EnginesArgs {
    spec: EngineSpec,
    /// For the engines' processes (their lifecycles).
    policy: RestartPolicy,
    /// For the shells themselves.
    shells: RestartPolicy,
    events: mpsc::UnboundedSender<Event>,
    fatal: watch::Sender<Option<String>>,
    on_restart: Option<OnRestart>,
}

/// One supervised replica.
struct Slot {
    /// Its shell while one runs (not during the backoff after a failure).
    shell: Option<(ActorRef<EngineMsg>, Instant)>,
    history: RestartState,
    incarnation: Arc<AtomicU64>,
}

struct EnginesState {
    args: EnginesArgs,
    slots: BTreeMap<usize, Slot>,
    by_id: HashMap<ActorId, usize>,
    born: Instant,
}

impl EnginesState {
    async fn spawn(
        &mut self,
        me: &ActorRef<EnginesMsg>,
        index: usize,
        begin: Begin,
    ) -> Result<(), ActorProcessingErr> {
        let incarnation = match self.slots.get(&index) {
            Some(slot) => slot.incarnation.clone(),
            None => Arc::new(AtomicU64::new(0)),
        };
        let args = ShellArgs {
            index,
            begin,
            spec: self.args.spec.clone(),
            policy: self.args.policy,
            events: self.args.events.clone(),
            incarnation: incarnation.clone(),
        };
        let (shell, _) = Actor::spawn_linked(None, EngineShell, args, me.get_cell()).await?;
        self.by_id.insert(shell.get_id(), index);
        let slot = self.slots.entry(index).or_insert_with(|| Slot {
            shell: None,
            history: RestartState::default(),
            incarnation,
        });
        slot.shell = Some((shell, Instant::now()));
        Ok(())
    }

    fn take(&mut self, index: usize) -> Option<ActorRef<EngineMsg>> {
        let (shell, _) = self.slots.remove(&index)?.shell?;
        self.by_id.remove(&shell.get_id());
        Some(shell)
    }
}

impl Actor for Engines {
    type Msg = EnginesMsg;
    type State = EnginesState;
    type Arguments = EnginesArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<EnginesMsg>,
        args: EnginesArgs,
    ) -> Result<EnginesState, ActorProcessingErr> {
        Ok(EnginesState {
            args,
            slots: BTreeMap::new(),
            by_id: HashMap::new(),
            born: Instant::now(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<EnginesMsg>,
        msg: EnginesMsg,
        s: &mut EnginesState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EnginesMsg::Add(index, child) => {
                if s.slots.contains_key(&index) {
                    // Raced with another start of the same replica: this one goes.
                    tracing::warn!(
                        replica = index,
                        "replica already supervised; stopping the extra engine"
                    );
                    return Ok(());
                }
                s.spawn(&me, index, Begin::Running(Box::new(child))).await?;
            }
            EnginesMsg::Has(index, reply) => {
                let _ = reply.send(s.slots.contains_key(&index));
            }
            EnginesMsg::Kill(index, incarnation) => {
                if let Some((shell, _)) = s.slots.get(&index).and_then(|x| x.shell.as_ref()) {
                    let _ = shell.send_message(EngineMsg::Kill(incarnation));
                }
            }
            EnginesMsg::Take(index, reply) => {
                let _ = reply.send(s.take(index));
            }
            EnginesMsg::TakeAll(reply) => {
                let indices: Vec<usize> = s.slots.keys().copied().collect();
                let shells = indices.into_iter().filter_map(|i| s.take(i)).collect();
                let _ = reply.send(shells);
            }
            EnginesMsg::Restart(index) => {
                let Some(slot) = s.slots.get(&index) else {
                    // Retired during its backoff.
                    return Ok(());
                };
                let next = slot.incarnation.load(Ordering::Relaxed) + 1;
                s.spawn(&me, index, Begin::Relaunch(next)).await?;
            }
            #[cfg(test)]
            EnginesMsg::Panic(index) => {
                if let Some((shell, _)) = s.slots.get(&index).and_then(|x| x.shell.as_ref()) {
                    let _ = shell.send_message(EngineMsg::Panic);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<EnginesMsg>,
        event: SupervisionEvent,
        s: &mut EnginesState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, error) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(index) = s.by_id.remove(&cell.get_id()) else {
            // A shell taken out of supervision (retired or stopping) ended.
            return Ok(());
        };
        let now_ms = s.born.elapsed().as_millis() as u64;
        let Some(slot) = s.slots.get_mut(&index) else {
            return Ok(());
        };
        let ran = slot
            .shell
            .take()
            .map_or(Duration::ZERO, |(_, at)| at.elapsed());
        let failure = Failure {
            group: "engines",
            kind: "engine",
            child: format!("engine {index}"),
            ran,
            error: error.unwrap_or_else(|| "its shell stopped by itself".to_owned()),
        };
        let on_restart = s.args.on_restart.as_ref();
        match failure.decide(&mut slot.history, &s.args.shells, now_ms, on_restart) {
            Ok(delay) => {
                me.send_after(delay, move || EnginesMsg::Restart(index));
                Ok(())
            }
            Err(m) => {
                // The node stops: no engine outlives the supervisor (a stopped shell
                // drops its process, which kills the group).
                for (shell, _) in s.slots.values().filter_map(|x| x.shell.as_ref()) {
                    shell.stop(Some("the engine supervisor gave up".to_owned()));
                }
                s.args.fatal.send_replace(Some(m.to_string()));
                Err(Box::new(m))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in engine any machine with Python has: a static HTTP server whose
    /// directory holds a `health` file, so `/health` answers 200.
    fn spec(dir: &std::path::Path) -> EngineSpec {
        std::fs::write(dir.join("health"), "ok").unwrap();
        EngineSpec {
            model: "m".into(),
            profile: None,
            time_scale: 0.0,
            command: Some(format!(
                "python3 -m http.server {{port}} --bind 127.0.0.1 --directory {}",
                dir.display()
            )),
            start_timeout: Duration::from_secs(30),
        }
    }

    async fn answers(url: &str) -> bool {
        let host = url.trim_start_matches("http://");
        tokio::net::TcpStream::connect(host).await.is_ok()
    }

    /// The next `Up` event, skipping the others.
    async fn next_up(rx: &mut mpsc::UnboundedReceiver<Event>) -> (String, u64) {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(Event::Up {
                    index: 0,
                    url,
                    incarnation,
                    ..
                })) => return (url, incarnation),
                Ok(Some(_)) => {}
                other => panic!("no Up event: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_engine_shell_is_restarted_with_a_new_engine_and_the_old_one_killed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let first = launch_one(0, &spec).await.unwrap();
        let old_url = first.url.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let restarted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook: OnRestart = {
            let restarted = restarted.clone();
            Arc::new(move |name| restarted.lock().unwrap().push(name))
        };
        let sup = Supervisor::start(
            0,
            vec![first],
            spec,
            RestartPolicy::quick(5),
            RestartPolicy::quick(5),
            tx,
            Some(hook),
        )
        .await
        .unwrap();
        assert!(answers(&old_url).await);
        sup.panic_shell(0);
        let mut down = false;
        let (url, incarnation) = loop {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(Event::Down(0))) => down = true,
                Ok(Some(Event::Up {
                    index: 0,
                    url,
                    incarnation,
                    ..
                })) => break (url, incarnation),
                Ok(Some(_)) => {}
                other => panic!("no restart: {other:?}"),
            }
        };
        assert!(
            down,
            "routing heard the engine was down before it came back"
        );
        assert_eq!(incarnation, 1);
        assert_ne!(url, old_url, "a new engine process, on a new port");
        assert!(
            !answers(&old_url).await,
            "the old engine died with its shell"
        );
        assert!(answers(&url).await);
        assert_eq!(*restarted.lock().unwrap(), vec!["engine"]);
        // The new shell supervises as the old one did: a kill restarts the engine.
        sup.kill(0, incarnation).await;
        let (again, incarnation) = next_up(&mut rx).await;
        assert_eq!(incarnation, 2);
        assert!(!answers(&url).await);
        sup.stop(Duration::from_secs(2)).await;
        assert!(!answers(&again).await, "stopping leaves no engine");
    }

    #[tokio::test]
    async fn an_engine_shell_that_keeps_failing_stops_the_node_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let first = launch_one(0, &spec).await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sup = Supervisor::start(
            0,
            vec![first],
            spec,
            RestartPolicy::quick(5),
            RestartPolicy::quick(1),
            tx,
            None,
        )
        .await
        .unwrap();
        sup.panic_shell(0);
        let (url, _) = next_up(&mut rx).await;
        sup.panic_shell(0);
        let why = tokio::time::timeout(Duration::from_secs(30), sup.meltdown())
            .await
            .expect("a meltdown");
        assert!(
            why.contains("engine 0") && why.contains("injected fault"),
            "{why}"
        );
        // The failed supervisor's shells, and their engines, are gone with it.
        for _ in 0..100 {
            if !answers(&url).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the engine outlived its supervisor");
    }
}
