//! The routing policies `sluice sim` can compare: Sluice's own first, then the
//! baselines, each built with its source's defaults.

use anyhow::Result;
use sluice_actors::router::baselines;
use sluice_actors::router::sluice_policy::{SluiceOptions, SluicePolicy};
use sluice_actors::router::RoutingPolicy;
use sluice_actors::slice::ReplicaId;
use sluice_actors::Profile;
use sluice_chaos::sim::cli::{cli_main, SimArgs};
use sluice_chaos::sim::FleetSpec;

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
    if name == "sluice" {
        let ids: Vec<ReplicaId> = (0..fleet.replicas as u64).map(ReplicaId).collect();
        let policy = SluicePolicy::from_profile(profile, &ids, SluiceOptions::default()).ok()?;
        return Some(Box::new(policy));
    }
    baselines::by_name(name, seed)
}

pub fn sim(args: &SimArgs) -> Result<()> {
    cli_main(args, &names(), &build)
}
