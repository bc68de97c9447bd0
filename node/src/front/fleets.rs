//! A node that serves several models runs one fleet per model behind one front door:
//! each fleet ([`AppState`]) has its own replicas, profile, slices, router core and
//! prober, and a request goes to the fleet that serves the model it names (the choice
//! is the router core's [`choose_fleet`]). Metrics are one registry for all of them.

use super::handoff::Directory;
use super::{AppState, Metrics};
use sluice_actors::router::{choose_fleet, Unserved};
use sluice_engine::openai::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The fleets of one node, in configuration order (the first is the default for a
/// passed-through request that names no model), each with the model it was started for.
pub struct Fleets {
    fleets: Vec<(String, Arc<AppState>)>,
    /// In a cluster: which other nodes route the models this one does not.
    elsewhere: OnceLock<Box<dyn Directory>>,
    /// When each node last failed to take a handed request (`now_ms`), so that it is
    /// tried last for a while.
    pub(super) handoff_failed: Mutex<HashMap<u64, u64>>,
}

impl Fleets {
    /// `None` for no fleet: a node serves at least one model.
    pub fn new(fleets: Vec<(String, Arc<AppState>)>) -> Option<Arc<Self>> {
        (!fleets.is_empty()).then(|| {
            Arc::new(Self {
                fleets,
                elsewhere: OnceLock::new(),
                handoff_failed: Mutex::default(),
            })
        })
    }

    /// Cluster mode: where the models other nodes route are routed.
    pub fn set_directory(&self, directory: Box<dyn Directory>) {
        let _ = self.elsewhere.set(directory);
    }

    pub fn directory(&self) -> Option<&dyn Directory> {
        self.elsewhere.get().map(|d| &**d)
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

    /// Every name a client may use, each fleet's model first, without repeats; in a
    /// cluster, then the models only other nodes route.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let ours = self.all().flat_map(|f| {
            f.served()
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let theirs = self.directory().map(|d| d.models()).unwrap_or_default();
        for n in ours.chain(theirs) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }

    /// The fleet serving `model` (the first one for an empty name), or why none does.
    pub fn choose(&self, model: &str) -> Result<&Arc<AppState>, Unserved> {
        let served: Vec<_> = self.all().map(|f| f.served()).collect();
        choose_fleet(&served, model).map(|i| &self.fleets[i].1)
    }

    /// The fleet serving `model`; a 404 naming what this node (and its cluster) serves
    /// when none does, or a 503 while some fleet's engines have not said what they
    /// serve yet.
    pub fn serving(&self, model: &str) -> Result<&Arc<AppState>, (ApiError, Option<u32>)> {
        self.choose(model).map_err(|u| self.refusal(model, u))
    }

    /// The client's error for a request no fleet here takes.
    pub fn refusal(&self, model: &str, why: Unserved) -> (ApiError, Option<u32>) {
        match why {
            Unserved::Loading => (
                ApiError::new(
                    503,
                    "service_unavailable",
                    format!(
                        "no engine serving `{model}` has said so yet (they may still be loading)"
                    ),
                ),
                Some(1),
            ),
            Unserved::Unknown(ours) => {
                let quoted = |ms: &[String]| {
                    ms.iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut message = format!(
                    "The model `{model}` does not exist. This node serves {}",
                    quoted(&ours)
                );
                let theirs: Vec<String> = self
                    .directory()
                    .map(|d| d.models())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| !ours.contains(m))
                    .collect();
                if !theirs.is_empty() {
                    message.push_str(&format!("; its cluster also serves {}", quoted(&theirs)));
                }
                message.push('.');
                (
                    ApiError::new(404, "invalid_request_error", message)
                        .with_code("model_not_found"),
                    None,
                )
            }
        }
    }
}
