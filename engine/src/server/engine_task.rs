//! The task that owns the engine core: the one place the core is stepped, in real time,
//! so that handlers never lock it. Handlers talk to it only through [`Cmd`] and [`Out`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::fault::Fault;
use crate::core::{EngineCore, EngineEvent, EngineRequest, FinishReason, RequestId, Usage};
use crate::metrics::Metrics;

/// How far behind its schedule the engine may fall before it stops catching up.
const MAX_CATCH_UP: Duration = Duration::from_millis(50);

/// Why a request ends when the engine task drops its channel.
pub(super) const ENGINE_GONE: &str = "the engine dropped the request";

/// What handlers ask of the engine task.
pub(super) enum Cmd {
    Add { req: EngineRequest, sink: Sink },
    Abort(RequestId),
}

/// Where a request's tokens go, and when it arrived (for the time to first token).
pub(super) struct Sink {
    pub tx: mpsc::UnboundedSender<Out>,
    pub arrived: Instant,
}

/// What the engine task tells a request's handler.
#[derive(Debug)]
pub(super) enum Out {
    Token(u32),
    /// The last token, with the request's end.
    Last(u32, FinishReason, Usage),
    Rejected(String),
}

/// Aborts the request in the engine if the handler or its response stream is dropped
/// before the request finished (the client went away).
pub(super) struct AbortGuard {
    id: RequestId,
    cmd: mpsc::UnboundedSender<Cmd>,
    armed: bool,
}

impl AbortGuard {
    pub fn new(id: RequestId, cmd: mpsc::UnboundedSender<Cmd>) -> Self {
        Self {
            id,
            cmd,
            armed: true,
        }
    }

    /// The request ended on its own: nothing to abort.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmd.send(Cmd::Abort(self.id));
        }
    }
}

/// Hands `req` to the engine task: the channel its tokens come on, and the guard that
/// aborts it if the handler goes away first. `cache_salt` roots its prefix hashes.
pub(super) fn submit(
    cmd: &mpsc::UnboundedSender<Cmd>,
    mut req: EngineRequest,
    cache_salt: Option<&str>,
) -> Result<(mpsc::UnboundedReceiver<Out>, AbortGuard), crate::openai::ApiError> {
    req.hash_root = cache_salt.map_or(crate::kv::ROOT_HASH, crate::core::salted_root);
    let id = req.id;
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Sink {
        tx,
        arrived: Instant::now(),
    };
    if cmd.send(Cmd::Add { req, sink }).is_err() {
        return Err(crate::openai::ApiError::new(
            503,
            "ServiceUnavailableError",
            "the engine is shutting down",
        ));
    }
    Ok((rx, AbortGuard::new(id, cmd.clone())))
}

pub(super) async fn engine_loop(
    mut core: EngineCore,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut fault_rx: watch::Receiver<Fault>,
    metrics: Arc<Metrics>,
    time_scale: f64,
) {
    let mut sinks: HashMap<RequestId, Sink> = HashMap::new();
    let mut events: Vec<EngineEvent> = Vec::with_capacity(1024);
    let mut dead: Vec<RequestId> = Vec::new();
    let epoch = Instant::now();
    let mut virtual_us: u64 = 0;
    let mut chained: Option<Instant> = None;
    loop {
        let fault = *fault_rx.borrow_and_update();
        core.set_slowdown(match fault {
            Fault::Slow(f) => f,
            _ => 1.0,
        });
        loop {
            match rx.try_recv() {
                Ok(cmd) => handle_cmd(&mut core, &mut sinks, cmd, virtual_us),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        if matches!(fault, Fault::Hang) || !core.has_work() {
            metrics.update(&core.stats());
            chained = None;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => handle_cmd(&mut core, &mut sinks, cmd, virtual_us),
                    None => return,
                },
                changed = fault_rx.changed() => if changed.is_err() { return },
            }
            continue;
        }

        let now = Instant::now();
        let start = match chained {
            Some(t) if now.saturating_duration_since(t) <= MAX_CATCH_UP => t,
            _ => now,
        };
        let now_us = if time_scale > 0.0 {
            (start.duration_since(epoch).as_secs_f64() * 1e6 / time_scale) as u64
        } else {
            virtual_us
        };
        events.clear();
        let summary = core.step_into(now_us, &mut events);
        virtual_us = virtual_us.max(now_us) + summary.duration_us;
        if time_scale > 0.0 && summary.duration_us > 0 {
            let wall = Duration::from_secs_f64(summary.duration_us as f64 * 1e-6 * time_scale);
            let deadline = start + wall;
            tokio::time::sleep_until(deadline).await;
            chained = Some(deadline);
        } else {
            chained = None;
            // Zero-delay mode: let the handlers run between steps.
            tokio::task::yield_now().await;
        }
        deliver(&events, &mut sinks, &metrics, &mut dead);
        for id in dead.drain(..) {
            core.abort(id);
        }
        metrics.update(&core.stats());
    }
}

fn handle_cmd(core: &mut EngineCore, sinks: &mut HashMap<RequestId, Sink>, cmd: Cmd, now_us: u64) {
    match cmd {
        Cmd::Add { req, sink } => {
            let id = req.id;
            match core.add_request(req, now_us) {
                Ok(()) => {
                    sinks.insert(id, sink);
                }
                Err(e) => {
                    let _ = sink.tx.send(Out::Rejected(e.to_string()));
                }
            }
        }
        Cmd::Abort(id) => {
            if sinks.remove(&id).is_some() {
                tracing::debug!(%id, "client went away: aborting");
            }
            core.abort(id);
        }
    }
}

fn deliver(
    events: &[EngineEvent],
    sinks: &mut HashMap<RequestId, Sink>,
    metrics: &Metrics,
    dead: &mut Vec<RequestId>,
) {
    let mut i = 0;
    while i < events.len() {
        match events[i] {
            EngineEvent::Token { id, index } => {
                // The core emits `Finished` right after a request's last token.
                let end = match events.get(i + 1) {
                    Some(&EngineEvent::Finished {
                        id: fid,
                        reason,
                        usage,
                    }) if fid == id => Some((reason, usage)),
                    _ => None,
                };
                if let Some(sink) = sinks.get(&id) {
                    if index == 0 {
                        metrics.observe_ttft(sink.arrived.elapsed().as_secs_f64());
                    }
                    let msg = match end {
                        Some((reason, usage)) => Out::Last(index, reason, usage),
                        None => Out::Token(index),
                    };
                    let gone = sink.tx.send(msg).is_err();
                    if let Some((reason, _)) = end {
                        metrics.observe_finished(reason, sink.arrived.elapsed().as_secs_f64());
                        sinks.remove(&id);
                    } else if gone {
                        sinks.remove(&id);
                        dead.push(id);
                    }
                }
                i += if end.is_some() { 2 } else { 1 };
            }
            EngineEvent::Finished { id, .. } => {
                sinks.remove(&id);
                i += 1;
            }
            EngineEvent::Preempted { .. } => i += 1,
        }
    }
}
