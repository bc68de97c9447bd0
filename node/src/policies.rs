//! The routing policies `sluice sim` can compare: Sluice's own first, then the
//! baselines, each built with its source's defaults.

use anyhow::Result;
use sluice_actors::router::baselines;
use sluice_actors::router::sluice_policy::{SluiceOptions, SluicePolicy};
use sluice_actors::router::RoutingPolicy;
use sluice_actors::slice::ReplicaId;
use sluice_actors::Profile;
use sluice_sim::cli::{cli_main, SimArgs};
use sluice_sim::FleetSpec;

/// Sluice with a fixed uniform slice map and no assigner rounds: the ablation that shows
/// what the assigner adds. Not part of `all`.
pub const SLUICE_UNIFORM: &str = "sluice-uniform";

/// Every policy name, Sluice's first.
pub fn names() -> Vec<&'static str> {
    std::iter::once("sluice")
        .chain(baselines::NAMES.iter().copied())
        .collect()
}

fn build(
    name: &str,
    fleet: &FleetSpec,
    profile: &Profile,
    seed: u64,
) -> Option<Box<dyn RoutingPolicy>> {
    if name == "sluice" || name == SLUICE_UNIFORM {
        let ids: Vec<(ReplicaId, String)> = (0..fleet.replicas)
            .map(|i| (ReplicaId(i as u64), format!("rack-{}", fleet.rack_of(i))))
            .collect();
        let mut options = SluiceOptions::default();
        if name == SLUICE_UNIFORM {
            options.assigner = None;
        }
        let policy = SluicePolicy::from_profile(profile, &ids, options).ok()?;
        return Some(Box::new(policy));
    }
    baselines::by_name(name, seed)
}

pub fn sim(args: &SimArgs) -> Result<()> {
    cli_main(args, &names(), &build)
}
