//! The real-time shell: an OpenAI-compatible HTTP server around one [`EngineCore`].
//!
//! One engine task owns the core. Handlers validate a request, send it to the engine task
//! over a channel and receive its tokens over a per-request channel. The engine task runs
//! a step, waits until `step_start + duration × time_scale` (deadlines are chained, so
//! there is no drift), then delivers the step's events. When idle (or hung) it waits for
//! the next command. With `time_scale = 0` steps take no wall time (zero-delay mode).
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses`
//! (streaming and not), `POST /v1/embeddings`,
//! `GET /v1/models`, `GET /health`, `GET /metrics`, `GET|POST /admin/fault`.
//!
//! The parts, each where it is because it changes for its own reasons:
//! `engine_task` (the loop that owns the core), `routes` (the endpoint table and the
//! small endpoints), `generate` (a generation request from body to answer), `validate`
//! (what this engine accepts), `fault` (injected faults), `format` (OpenAI response
//! bodies), `responses` (the Responses API's bodies and events), `embed` (embeddings),
//! `sse` (streaming), `http` (body limits and JSON replies).

mod embed;
mod engine_task;
mod fault;
mod format;
mod generate;
mod http;
mod responses;
mod routes;
mod sse;
mod validate;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::serve::ListenerExt;
use tokio::sync::{mpsc, watch};

use crate::core::EngineCore;
use crate::metrics::Metrics;
use crate::params::EngineParams;
use engine_task::{engine_loop, Cmd};
use routes::router;

pub use fault::{Fault, CRASH_EXIT_CODE, DEFAULT_HEALTH_DELAY_MS, DEFAULT_SLOWDOWN};

/// Largest request body accepted (larger ones get 413).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How long in-flight connections may take to finish after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Configuration of one simulated engine server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The served model name (requests for any other model get 404).
    pub model: String,
    /// Step model and limits.
    pub params: EngineParams,
    /// Wall time per simulated time: 1.0 = real time, 2.0 = twice as slow, 0.0 = zero-delay
    /// mode (steps take no wall time).
    pub time_scale: f64,
    /// Seed of everything random-looking: output words, natural output lengths, the
    /// `errors` fault's draws.
    pub seed: u64,
    /// Fault injection for drills: a request whose body contains this text hangs the
    /// engine (as the `hang` fault), the way an engine bug set off by one request shape
    /// would. Unlike an admin fault it survives restarts, so it strikes every replica
    /// that serves such a request.
    pub poison: Option<String>,
}

/// Serves the OpenAI API of one simulated engine on `listener` until `shutdown`
/// completes. In-flight requests get 2 s to finish; hung ones are cut.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let time_scale = if config.time_scale.is_finite() && config.time_scale > 0.0 {
        config.time_scale
    } else {
        0.0
    };
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (fault_tx, fault_rx) = watch::channel(Fault::None);
    let metrics = Arc::new(Metrics::new(&config.model));
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let shared = Arc::new(Shared {
        model_json: serde_json::to_string(&config.model).unwrap_or_else(|_| "\"model\"".into()),
        model: config.model.clone(),
        params: config.params.clone(),
        seed: config.seed,
        cmd: cmd_tx,
        next_id: AtomicU64::new(0),
        error_draws: AtomicU64::new(0),
        poison: config.poison.clone().filter(|p| !p.is_empty()),
        fault: fault_tx,
        metrics: metrics.clone(),
        created,
    });
    let core = EngineCore::new(config.params.clone());
    let engine = tokio::spawn(engine_loop(core, cmd_rx, fault_rx, metrics, time_scale));
    tracing::info!(model = %config.model, time_scale, "simulated engine serving");

    let app = router(shared);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    // Token chunks are small writes: without TCP_NODELAY, Nagle's algorithm and the
    // client's delayed ACK hold each one back by up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let grace = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        r = server => r,
        _ = grace => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
            Ok(())
        }
    };
    engine.abort();
    result
}

/// What every handler shares: the engine task's inbox and what answers need.
struct Shared {
    model: String,
    /// The model name as a JSON string literal.
    model_json: String,
    params: EngineParams,
    seed: u64,
    cmd: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicU64,
    error_draws: AtomicU64,
    poison: Option<String>,
    fault: watch::Sender<Fault>,
    metrics: Arc<Metrics>,
    created: u64,
}
