//! Active health checks: every interval, GET each replica's `/health`. An engine's own
//! health endpoint is only a hint (a hung engine can still answer it); it catches dead
//! processes and refused connections quickly. A late answer is a hint too: a saturated
//! vLLM's API server answers its health endpoint late while its engine streams tokens
//! at full speed, so a replica heard working while its check waited is not down.

use super::AppState;
use crate::tree::{Duty, Turn};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use ractor::ActorProcessingErr;
use std::sync::Arc;

/// Slow answers in a row before a replica counts as down: one late `/health` on a busy
/// (or busy host's) engine is no verdict, a refused connection is.
const SLOW_CHECKS_TO_FAIL: u32 = 2;

/// What one `GET /health` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Up,
    /// Refused, reset, or an error status: the engine is not there.
    Down,
    /// No answer within the limit.
    Slow,
}

/// The health-check actor's duty: one round of checks every interval; how many slow
/// answers each replica gave in a row is its memory.
pub struct HealthChecks {
    state: Arc<AppState>,
    tick: tokio::time::Interval,
    slow: std::collections::HashMap<sluice_actors::slice::ReplicaId, u32>,
}

impl HealthChecks {
    pub fn new(state: Arc<AppState>) -> Self {
        let mut tick = tokio::time::interval(state.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            state,
            tick,
            slow: Default::default(),
        }
    }
}

impl Duty for HealthChecks {
    async fn turn(&mut self) -> Result<Turn, ActorProcessingErr> {
        if !crate::tree::ticked(&mut self.tick).await {
            return Ok(Turn::Again);
        }
        let state = &self.state;
        let checks = state.local_upstreams().into_iter().map(|(id, base)| {
            let state = state.clone();
            async move {
                let found = check(&state, &base).await;
                if found == Check::Up && !state.models_fresh(id, state.now_ms()) {
                    if let Some(models) = super::models::fetch(&state.client, &base).await {
                        state.models_asked(id, state.now_ms());
                        state.learn_models(id, Some(models));
                    }
                }
                (id, base, found)
            }
        });
        let sent = state.now_ms();
        for (id, base, found) in futures_util::future::join_all(checks).await {
            let working = state.core().last_heard_ms(id).is_some_and(|at| at >= sent);
            let streak = self.slow.entry(id).or_default();
            let healthy;
            (healthy, *streak) = judge(found, *streak, working);
            // /health is only a hint: the prober's ejection overrides a 200, and so
            // does the registry (a draining replica answers 200 but takes no work),
            // and a replica serving another model takes none of this fleet's.
            let usable = healthy
                && !state.is_ejected(id)
                && state.registry_allows(id)
                && state.served().agrees(id);
            state.core().set_checked_health(id, usable);
            if !healthy {
                tracing::debug!(replica = id.0, %base, ?found, "health check failed");
            }
        }
        Ok(Turn::Again)
    }
}

/// What a check that found `found` makes of a replica that gave `streak` slow answers
/// in a row before it: whether it is up, and its streak now. `working`: the replica was
/// heard working (a token, an answer, a passed probe, a peer's word) since the check
/// was sent, which makes a slow answer its API server's lag, not a verdict.
fn judge(found: Check, streak: u32, working: bool) -> (bool, u32) {
    match found {
        Check::Up => (true, 0),
        Check::Down => (false, 0),
        Check::Slow if working => (true, 0),
        Check::Slow => (streak + 1 < SLOW_CHECKS_TO_FAIL, streak + 1),
    }
}

async fn check(state: &AppState, base: &str) -> Check {
    let Ok(req) = Request::builder()
        .method(Method::GET)
        .uri(format!("{base}/health"))
        .body(Full::new(Bytes::new()))
    else {
        return Check::Down;
    };
    let limit = state
        .config
        .health_interval
        .max(std::time::Duration::from_millis(500));
    match tokio::time::timeout(limit, state.client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => Check::Up,
        Ok(_) => Check::Down,
        Err(_) => Check::Slow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_answer_counts_against_a_replica_only_while_it_is_not_heard_working() {
        // Silent and late twice in a row: down; once: not yet.
        assert_eq!(judge(Check::Slow, 0, false), (true, 1));
        assert_eq!(judge(Check::Slow, 1, false), (false, 2));
        assert_eq!(judge(Check::Slow, 2, false), (false, 3));
        // Late while its streams write: up, however long the streak was.
        assert_eq!(judge(Check::Slow, 0, true), (true, 0));
        assert_eq!(judge(Check::Slow, 5, true), (true, 0));
        // An answer, or a refusal, settles it whatever the streams show.
        assert_eq!(judge(Check::Up, 3, false), (true, 0));
        assert_eq!(judge(Check::Down, 0, true), (false, 0));
    }
}
