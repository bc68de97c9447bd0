//! A node that serves several models runs one fleet per model behind one front door:
//! each fleet ([`AppState`]) has its own replicas, profile, slices, router core and
//! prober, and a request goes to the fleet that serves the model it names. Metrics are
//! one registry for all of them.

use super::{AppState, Metrics};
use sluice_engine::openai::ApiError;
use std::sync::Arc;

/// The fleets of one node, in configuration order (the first is the default for a
/// passed-through request that names no model).
pub struct Fleets {
    fleets: Vec<Arc<AppState>>,
}

impl Fleets {
    /// `None` for no fleet: a node serves at least one model.
    pub fn new(fleets: Vec<Arc<AppState>>) -> Option<Arc<Self>> {
        (!fleets.is_empty()).then(|| Arc::new(Self { fleets }))
    }

    pub fn all(&self) -> &[Arc<AppState>] {
        &self.fleets
    }

    pub fn first(&self) -> &Arc<AppState> {
        &self.fleets[0]
    }

    pub fn metrics(&self) -> &Metrics {
        &self.first().metrics
    }

    /// Every name a client may use, each fleet's model first, without repeats.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for f in &self.fleets {
            for n in f.served().names() {
                if !names.iter().any(|m| m == n) {
                    names.push(n.to_owned());
                }
            }
        }
        names
    }

    /// The fleet serving `model` (the first one for an empty name); a 404 naming what
    /// this node serves when none does, or a 503 while some fleet's engines have not
    /// said what they serve yet.
    pub fn serving(&self, model: &str) -> Result<&Arc<AppState>, (ApiError, Option<u32>)> {
        if model.is_empty() {
            return Ok(self.first());
        }
        if let Some(f) = self.fleets.iter().find(|f| f.served().serves(model)) {
            return Ok(f);
        }
        if self.fleets.iter().any(|f| f.served().model.is_none()) {
            return Err((
                ApiError::new(
                    503,
                    "service_unavailable",
                    format!(
                        "no engine serving `{model}` has said so yet (they may still be loading)"
                    ),
                ),
                Some(1),
            ));
        }
        let ours: Vec<String> = self
            .fleets
            .iter()
            .filter_map(|f| f.served().model.clone())
            .map(|m| format!("`{m}`"))
            .collect();
        Err((
            ApiError::new(
                404,
                "invalid_request_error",
                format!(
                    "The model `{model}` does not exist. This node serves {}.",
                    ours.join(", ")
                ),
            )
            .with_code("model_not_found"),
            None,
        ))
    }
}
