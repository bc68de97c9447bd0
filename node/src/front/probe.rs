//! The health prober's shell for this node's replicas: every second, read each engine's
//! queue and token counter from its `/metrics`, send the minimal top-priority probes the
//! [`ProberCore`] asks for, and carry out its verdicts — an ejected replica gets no
//! traffic from this router, is marked unhealthy in the registry (cluster mode) and is
//! restarted by the supervisor.

use super::AppState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sluice_actors::prober::{
    Effect, Ejections, EngineState, Probe, ProberCore, RealOutcome, VerdictChange,
    PROBE_MAX_TOKENS, PROBE_PRIORITY,
};
use sluice_actors::slice::ReplicaId;
use sluice_engine::exposition;
use sluice_engine::openai::Endpoint;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// What the prober asks of the rest of the node when it ejects a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// Ejected, as the engine process of the given incarnation (so that a restart is
    /// not applied to its successor).
    Ejected(ReplicaId, u64),
    Restored(ReplicaId),
}

impl AppState {
    /// A real request on `replica` ended: the prober's idle clock and verdicts see it.
    pub(super) fn real_outcome(&self, replica: ReplicaId, status: Option<u16>) {
        let outcome = RealOutcome::of_status(status);
        let now = self.now_ms();
        let changes = self
            .prober
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_real_outcome(replica, outcome, now);
        self.apply_verdicts(changes);
    }

    fn apply_verdicts(&self, changes: Vec<VerdictChange>) {
        if changes.is_empty() {
            return;
        }
        let mut ejected = self.ejected();
        let effects = ejected.apply(changes);
        // Carried out under the lock, so that an ejection and a restore of one replica
        // are never reported out of order.
        self.carry_out(effects);
        drop(ejected);
    }

    fn ejected(&self) -> std::sync::MutexGuard<'_, Ejections> {
        self.ejected.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn carry_out(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Eject(replica, verdict) => {
                    self.metrics.ejection(replica.0);
                    tracing::warn!(replica = replica.0, verdict = ?verdict, "prober ejects a replica");
                    self.core().set_checked_health(replica, false);
                    if let Some(tx) = self.ejections.get() {
                        let _ = tx.send(Ejection::Ejected(replica, self.incarnation(replica)));
                    }
                }
                Effect::Restore(replica) => {
                    tracing::info!(replica = replica.0, "prober restores a replica");
                    if let Some(tx) = self.ejections.get() {
                        let _ = tx.send(Ejection::Restored(replica));
                    }
                }
                Effect::Kept(replica) => tracing::warn!(
                    replica = replica.0,
                    "replica condemned but kept: ejection cap reached"
                ),
            }
        }
    }

    /// Where ejections are reported (the supervisor restarts ejected replicas).
    pub fn set_ejection_sink(&self, tx: tokio::sync::mpsc::UnboundedSender<Ejection>) {
        let _ = self.ejections.set(tx);
    }

    fn probe_timeout_ms(&self) -> u64 {
        self.prober
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config()
            .probe_timeout_ms
    }

    /// Whether the prober keeps `replica` out of service.
    pub(super) fn is_ejected(&self, replica: ReplicaId) -> bool {
        self.ejected().contains(replica)
    }

    /// The replica was restarted and is ready: it starts over with a clean record.
    pub fn replica_restored(&self, replica: ReplicaId) {
        let now = self.now_ms();
        let changes = self
            .prober
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restored(replica, now);
        let mut ejected = self.ejected();
        let effects = ejected.restored(replica, changes);
        self.carry_out(effects);
        drop(ejected);
    }
}

/// Says which replicas were last found hung from their streams.
pub(super) type StallAlarm = tokio::sync::watch::Receiver<Arc<[ReplicaId]>>;

impl AppState {
    /// Replicas (local or remote) whose streams through this door have all stopped
    /// past their bound are hung: the router ejects them, and every request they hold
    /// here is told to move.
    pub(super) fn judge_streams(&self) {
        let now = self.now_ms();
        let stalled = self.core().take_stalled(now);
        if stalled.is_empty() {
            return;
        }
        for r in &stalled {
            tracing::warn!(
                replica = r.0,
                "every stream on the replica stopped: taken for hung, its requests move"
            );
            self.metrics.stream_stall(r.0);
        }
        // This node's own hung replicas go to its prober at once (ejected and
        // restarted; it ignores the others), their nodes hear of theirs by gossip.
        let word: Vec<(ReplicaId, u64)> = stalled.iter().map(|&r| (r, 0)).collect();
        self.streams_stalled(&word);
        self.stall_alarm.send_replace(Arc::from(stalled));
    }

    /// Routers (this one or a peer's) took these replicas' streams for hung, each
    /// `age` ms ago: the prober weighs it for those that are local.
    pub fn streams_stalled(&self, stalls: &[(ReplicaId, u64)]) {
        if stalls.is_empty() {
            return;
        }
        let now = self.now_ms();
        let changes = self
            .prober
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_stall_word(stalls, now);
        self.apply_verdicts(changes);
    }

    /// The replicas this router took for hung lately, with how long ago, for the
    /// other nodes.
    pub fn announced_stalls(&self) -> Vec<(ReplicaId, u64)> {
        let now = self.now_ms();
        self.core().announced_stalls(now)
    }

    /// The replicas this router heard from lately, with how long ago, for the other
    /// nodes: a busy replica is not silent to a router whose request waits there.
    pub fn announced_heard(&self) -> Vec<(ReplicaId, u64)> {
        let now = self.now_ms();
        self.core().announced_heard(now)
    }

    /// A peer's router heard from these replicas, each `age` ms ago.
    pub fn peers_heard(&self, heard: &[(ReplicaId, u64)]) {
        if !heard.is_empty() {
            let now = self.now_ms();
            self.core().peers_heard(heard, now);
        }
    }

    /// Resolves once `replica` is found hung from its streams (after `alarm` was made).
    pub(super) async fn until_stalled(alarm: &mut StallAlarm, replica: ReplicaId) {
        loop {
            if alarm.changed().await.is_err() {
                return std::future::pending().await;
            }
            if alarm.borrow_and_update().contains(&replica) {
                return;
            }
        }
    }

    /// Runs `work` to its end, unless a word that `replica` is hung comes first and
    /// `moves()` says the word moves the request (the lifecycle's word rules): then
    /// `None`. A word that would not move it is let pass, and `work` goes on.
    pub(super) async fn unless_moved<T>(
        work: impl std::future::Future<Output = T>,
        alarm: &mut StallAlarm,
        replica: ReplicaId,
        mut moves: impl FnMut() -> bool,
    ) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                () = Self::until_stalled(alarm, replica) => {
                    if moves() {
                        return None;
                    }
                }
            }
        }
    }

    pub(super) fn stall_alarm(&self) -> StallAlarm {
        self.stall_alarm.subscribe()
    }
}

/// A new prober core over this node's local replicas.
pub fn core_for(
    config: &sluice_actors::prober::ProbeConfig,
    replicas: &[ReplicaId],
) -> anyhow::Result<ProberCore> {
    let mut core = ProberCore::new(config.clone())
        .map_err(|e| anyhow::anyhow!("invalid probe configuration: {e}"))?;
    core.set_replicas(replicas, 0);
    Ok(core)
}

/// How often the prober looks at its replicas.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The prober actor's duty: a round every [`PROBE_EVERY`]. The probes it sent are the
/// actor's: they end with it.
pub struct Prober {
    state: Arc<AppState>,
    tick: tokio::time::Interval,
    probes: tokio::task::JoinSet<()>,
}

impl Prober {
    pub fn new(state: Arc<AppState>) -> Self {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            state,
            tick,
            probes: tokio::task::JoinSet::new(),
        }
    }
}

impl crate::tree::Duty for Prober {
    async fn turn(&mut self) -> Result<crate::tree::Turn, ractor::ActorProcessingErr> {
        while self.probes.try_join_next().is_some() {}
        if crate::tree::ticked(&mut self.tick).await {
            round(&self.state, &mut self.probes).await;
        }
        Ok(crate::tree::Turn::Again)
    }
}

/// One round of the prober: the replicas hung by their streams' word, the replicas to
/// watch, the engines' own progress gauges, the core's verdicts, and the probes it asks
/// for (sent into `probes`).
async fn round(state: &Arc<AppState>, probes: &mut tokio::task::JoinSet<()>) {
    state.judge_streams();
    let locals = state.local_upstreams();
    {
        // Replicas come and go with the autoscaler, engines with the supervisor.
        let engines: Vec<(ReplicaId, EngineState)> = locals
            .iter()
            .map(|(id, _)| (*id, state.supervised_state(*id)))
            .collect();
        let now = state.now_ms();
        let changes = state
            .prober
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .follow_engines(&engines, now);
        state.apply_verdicts(changes);
    }
    // The engines' own gauges: work queued while tokens stand still is a hang; with
    // the engine's processes idle meanwhile, sooner.
    let reads = locals.iter().map(|(id, base)| {
        let state = state.clone();
        let (id, base) = (*id, base.clone());
        async move { (id, engine_progress(&state, &base).await) }
    });
    let progress = futures_util::future::join_all(reads).await;
    let busy = engines_busy_ms(state, &locals).await;
    for ((id, progress), busy_ms) in progress.into_iter().zip(busy) {
        if let Some((queued, tokens)) = progress {
            let now = state.now_ms();
            let changes = state
                .prober
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_progress(id, queued, tokens, busy_ms, now);
            state.apply_verdicts(changes);
        }
    }
    let now = state.now_ms();
    let t = state
        .prober
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .tick(now);
    state.apply_verdicts(t.changes);
    for probe in t.probes {
        let Some(base) = locals
            .iter()
            .find(|(id, _)| *id == probe.replica)
            .map(|(_, b)| b.clone())
        else {
            continue;
        };
        // Probed by the name the engine itself serves: a wrong name is a 404 that
        // would eject a healthy replica.
        let Some(model) = state.probe_model(probe.replica) else {
            // Not even the model is known: the engine has not answered /v1/models.
            report_probe(state, probe, false);
            continue;
        };
        let state = state.clone();
        probes.spawn(async move {
            let ok = send_probe(&state, &base, &model).await;
            report_probe(&state, probe, ok);
        });
    }
}

/// How long each local engine's process group has run on a CPU or waited for one so
/// far (`proc_stat::groups_busy_ms`), in `locals`' order (`None` for an engine not
/// supervised here, or where `/proc` cannot be read). One walk of `/proc` for all of
/// them, off the runtime's threads.
async fn engines_busy_ms(state: &AppState, locals: &[(ReplicaId, String)]) -> Vec<Option<u64>> {
    let groups: Vec<Option<i32>> = locals
        .iter()
        .map(|(id, _)| state.engine_group(*id))
        .collect();
    let known: Vec<i32> = groups.iter().flatten().copied().collect();
    let read = tokio::task::spawn_blocking(move || {
        let busy = crate::supervisor::proc_stat::groups_busy_ms(&known);
        known
            .into_iter()
            .zip(busy)
            .collect::<HashMap<i32, Option<u64>>>()
    })
    .await
    .unwrap_or_default();
    groups
        .iter()
        .map(|g| g.and_then(|g| read.get(&g).copied().flatten()))
        .collect()
}

fn report_probe(state: &AppState, probe: Probe, ok: bool) {
    state.metrics.probe(ok);
    let now = state.now_ms();
    if ok {
        state.core().heard_from(probe.replica, now);
    }
    let changes = state
        .prober
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .on_probe_result(probe, ok, now);
    state.apply_verdicts(changes);
}

/// One output token at the highest priority: a healthy engine answers it ahead of its
/// queue however busy it is. An engine that serves no completions (a pooling model: 404)
/// is asked for one embedding instead.
async fn send_probe(state: &AppState, base: &str, model: &str) -> bool {
    let mut completion = serde_json::json!({
        "model": model,
        "prompt": "ping",
        "max_tokens": PROBE_MAX_TOKENS,
    });
    let mut embedding = serde_json::json!({"model": model, "input": "ping"});
    if state.probe_prioritized {
        completion["priority"] = serde_json::json!(PROBE_PRIORITY);
        embedding["priority"] = serde_json::json!(PROBE_PRIORITY);
    }
    let limit = Duration::from_millis(state.probe_timeout_ms());
    let call = async {
        match probe_call(state, base, Endpoint::Completion, &completion).await? {
            404 => Some(probe_call(state, base, Endpoint::Embeddings, &embedding).await? < 300),
            status => Some(status < 300),
        }
    };
    matches!(tokio::time::timeout(limit, call).await, Ok(Some(true)))
}

/// The HTTP status of one probe to `endpoint`, its answer read whole; `None` if none.
async fn probe_call(
    state: &AppState,
    base: &str,
    endpoint: Endpoint,
    body: &serde_json::Value,
) -> Option<u16> {
    let req = hyper::Request::post(format!("{base}{}", endpoint.path()))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .ok()?;
    let resp = state.client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// Requests admitted and not finished, and the tokens it has worked through so far
/// (prompt and generated: a pooling engine generates none), from the engine's
/// vLLM-style `/metrics`.
pub async fn engine_progress(state: &AppState, base: &str) -> Option<(u32, u64)> {
    let req = hyper::Request::get(format!("{base}/metrics"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(1), state.client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    let text = std::str::from_utf8(&body).ok()?;
    let value = |name: &str| exposition::sum(text, name);
    let running = value("vllm:num_requests_running").unwrap_or(0.0);
    let waiting = value("vllm:num_requests_waiting").unwrap_or(0.0);
    let generated = value("vllm:generation_tokens")?;
    let prompts = value("vllm:prompt_tokens").unwrap_or(0.0);
    Some((
        (running + waiting).max(0.0) as u32,
        (generated + prompts).max(0.0) as u64,
    ))
}
