//! A node that serves several models runs one fleet per model behind one front door:
//! each fleet ([`AppState`]) has its own replicas, profile, slices, router core and
//! prober, and a request goes to the fleet that serves the model it names (the choice
//! is the router core's [`choose_fleet`]). Metrics are one registry for all of them.

use super::{AppState, Metrics};
use sluice_actors::router::{choose_fleet, Unserved};
use sluice_engine::openai::ApiError;
use std::sync::Arc;

/// The fleets of one node, in configuration order (the first is the default for a
/// passed-through request that names no model), each with the model it was started for.
pub struct Fleets {
    fleets: Vec<(String, Arc<AppState>)>,
}

impl Fleets {
    /// `None` for no fleet: a node serves at least one model.
    pub fn new(fleets: Vec<(String, Arc<AppState>)>) -> Option<Arc<Self>> {
        (!fleets.is_empty()).then(|| Arc::new(Self { fleets }))
    }

    /// Each fleet with the model it was started for.
    pub fn named(&self) -> impl Iterator<Item = (&str, &Arc<AppState>)> {
        self.fleets.iter().map(|(m, f)| (m.as_str(), f))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<AppState>> {
        self.fleets.iter().map(|(_, f)| f)
    }

    pub fn first(&self) -> &Arc<AppState> {
        &self.fleets[0].1
    }

    /// The fleet started for `model`.
    pub fn of(&self, model: &str) -> Option<&Arc<AppState>> {
        self.named().find(|(m, _)| *m == model).map(|(_, f)| f)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.first().metrics
    }

    /// Every name a client may use, each fleet's model first, without repeats.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for f in self.all() {
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
        let served: Vec<_> = self.all().map(|f| f.served()).collect();
        match choose_fleet(&served, model) {
            Ok(i) => Ok(&self.fleets[i].1),
            Err(Unserved::Loading) => Err((
                ApiError::new(
                    503,
                    "service_unavailable",
                    format!(
                        "no engine serving `{model}` has said so yet (they may still be loading)"
                    ),
                ),
                Some(1),
            )),
            Err(Unserved::Unknown(ours)) => {
                let ours: Vec<String> = ours.iter().map(|m| format!("`{m}`")).collect();
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
    }
}
