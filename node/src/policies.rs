//! The routing policies `sluice sim` can compare.

use anyhow::Result;
use sluice_actors::router::RoutingPolicy;
use sluice_actors::Profile;
use sluice_chaos::sim::cli::{cli_main, SimArgs};
use sluice_chaos::sim::FleetSpec;

/// Every policy name, Sluice's first.
pub const NAMES: &[&str] = &[];

fn build(
    _name: &str,
    _fleet: &FleetSpec,
    _profile: &Profile,
    _seed: u64,
) -> Option<Box<dyn RoutingPolicy>> {
    None
}

pub fn sim(args: &SimArgs) -> Result<()> {
    cli_main(args, NAMES, &build)
}
