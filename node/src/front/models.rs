//! Model discovery's shell: ask each local engine what it serves (`GET /v1/models`) at
//! start and whenever it comes back, and publish the fleet's model as the
//! [`ServedModels`] core decides it. Requests, `/v1/models` and probes all use what the
//! engines said, so a vLLM started as `--served-model-name tiny` is served as `tiny`.

use super::AppState;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use sluice_actors::router::{parse_model_list, ServedModels};
use sluice_actors::slice::ReplicaId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a replica that already said what it serves is asked again (an engine can
/// be replaced behind the same address).
pub const REFRESH: Duration = Duration::from_secs(30);

/// The models the engine at `base` lists, or `None` if it does not answer with a list.
pub async fn fetch(client: &Client<HttpConnector, Full<Bytes>>, base: &str) -> Option<Vec<String>> {
    let req = hyper::Request::get(format!("{base}/v1/models"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let call = async {
        let resp = client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.into_body().collect().await.ok().map(|b| b.to_bytes())
    };
    let body = tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()??;
    parse_model_list(&body)
}

/// Asks every engine in `urls` what it serves, for at most `wait` while none has
/// answered (engines that are still loading are asked again later by the health loop).
pub async fn discover(
    client: &Client<HttpConnector, Full<Bytes>>,
    urls: &[String],
    wait: Duration,
) -> BTreeMap<usize, Vec<String>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let asks = urls.iter().map(|u| fetch(client, u.trim_end_matches('/')));
        let found: BTreeMap<usize, Vec<String>> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .enumerate()
            .filter_map(|(i, m)| Some((i, m?)))
            .collect();
        if !found.is_empty() || urls.is_empty() || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl AppState {
    /// The fleet's model as last decided.
    pub fn served(&self) -> Arc<ServedModels> {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replica `id` said it serves `models` (`None`: forget what it said, e.g. it was
    /// restarted). Decides the fleet's model again and reports what changed.
    pub fn learn_models(&self, id: ReplicaId, models: Option<Vec<String>>) {
        let mut reports = self.model_reports.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match &models {
            Some(m) => reports.insert(id, m.clone()).as_ref() != Some(m),
            None => reports.remove(&id).is_some(),
        };
        if !changed {
            return;
        }
        let next = ServedModels::decide(
            self.config.model_override.as_deref(),
            self.config.fallback_model.as_deref(),
            &reports,
        );
        drop(reports);
        if let Some(m) = &models {
            tracing::info!(replica = id.0, models = ?m, "replica reports the models it serves");
        }
        let mut served = self.served.write().unwrap_or_else(|p| p.into_inner());
        if served.model != next.model {
            if let Some(m) = &next.model {
                tracing::info!(model = %m, "serving model");
                let profile = &self.profile;
                if !profile.serves(m) {
                    tracing::warn!(
                        model = %m,
                        profile = %profile.model,
                        hardware = %profile.hardware,
                        "no calibrated profile for this model: prices and capacity use the \
                         profile shown (run `sluice calibrate` and start with --profile)"
                    );
                }
            }
        }
        for (rid, theirs) in &next.mismatched {
            if served.mismatched.get(rid) != Some(theirs) {
                tracing::error!(
                    replica = rid.0,
                    serves = ?theirs,
                    fleet = ?next.model,
                    "replica serves another model than the fleet: it gets no requests until it \
                     serves the fleet's model"
                );
            }
        }
        for rid in served.mismatched.keys().chain(next.mismatched.keys()) {
            self.metrics
                .model_mismatch(rid.0, next.mismatched.contains_key(rid));
        }
        *served = Arc::new(next);
    }

    /// Whether `id` has said what it serves within [`REFRESH`] (the health loop asks
    /// again otherwise).
    pub(super) fn models_fresh(&self, id: ReplicaId, now_ms: u64) -> bool {
        self.models_asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|at| now_ms.saturating_sub(*at) < REFRESH.as_millis() as u64)
    }

    pub(super) fn models_asked(&self, id: ReplicaId, now_ms: u64) {
        self.models_asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, now_ms);
    }

    /// The name to probe `id` with: what the replica itself serves, if it said.
    pub(super) fn probe_model(&self, id: ReplicaId) -> Option<String> {
        let served = self.served();
        let theirs = self
            .model_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|m| m.first().cloned());
        match (&served.model, theirs) {
            (Some(fleet), Some(_)) if served.agrees(id) => Some(fleet.clone()),
            (_, Some(own)) => Some(own),
            (fleet, None) => fleet.clone(),
        }
    }
}
