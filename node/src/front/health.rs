//! Active health checks: every interval, GET each replica's `/health`. An engine's own
//! health endpoint is only a hint (a hung engine can still answer it); it catches dead
//! processes and refused connections quickly.

use super::AppState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use std::sync::Arc;

pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.config.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let checks = state.local_upstreams().into_iter().map(|(id, base)| {
            let state = state.clone();
            async move {
                let healthy = check(&state, &base).await;
                if healthy && !state.models_fresh(id, state.now_ms()) {
                    if let Some(models) = super::models::fetch(&state.client, &base).await {
                        state.models_asked(id, state.now_ms());
                        state.learn_models(id, Some(models));
                    }
                }
                // /health is only a hint: the prober's ejection overrides a 200, and so
                // does the registry (a draining replica answers 200 but takes no work),
                // and a replica serving another model takes none of this fleet's.
                let usable = healthy
                    && !state.is_ejected(id)
                    && state.registry_allows(id)
                    && state.served().agrees(id);
                state.core().set_checked_health(id, usable);
                if !healthy {
                    tracing::debug!(replica = id.0, %base, "health check failed");
                }
            }
        });
        futures_util::future::join_all(checks).await;
    }
}

async fn check(state: &AppState, base: &str) -> bool {
    let Ok(req) = Request::builder()
        .method(Method::GET)
        .uri(format!("{base}/health"))
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    let limit = state
        .config
        .health_interval
        .max(std::time::Duration::from_millis(500));
    matches!(
        tokio::time::timeout(limit, state.client.request(req)).await,
        Ok(Ok(resp)) if resp.status().is_success()
    )
}
