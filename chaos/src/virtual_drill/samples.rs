//! What the watcher sees of the virtual fleet every half second: the replicas in
//! service, the map's generation and slices, and where requests were routed — the
//! samples the process drills' checks judge.

use super::world::{Ev, Power, World, SAMPLE_US};
use crate::drill::watch::Sample;
use sluice_actors::prober::Standing;
use std::collections::BTreeMap;

impl World<'_> {
    pub(super) fn sample(&mut self) {
        self.push(self.now + SAMPLE_US, Ev::Sample);
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for r in 0..self.engines.len() {
            let e = &self.engines[r];
            let healthy = self.control.health[r] == Standing::Serving;
            if !healthy {
                dead.push(r as u64);
            }
            if !healthy || e.power != Power::Up || e.epoch != self.last_epochs[r] {
                out.push(r as u64);
            }
            self.last_epochs[r] = e.epoch;
        }
        let slices = if self.spec.keep_slices {
            self.control
                .assignment
                .slices()
                .iter()
                .map(|s| (s.start.0, s.subset.iter().map(|x| x.0).collect()))
                .collect()
        } else {
            Vec::new()
        };
        self.samples.push(Sample {
            at_ms: self.now / 1000,
            in_service: self.engines.len() - out.len(),
            out,
            dead,
            generation: self.control.assignment.generation,
            slices,
            routed: self
                .routed
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(r, &c)| (r as u64, c))
                .collect::<BTreeMap<_, _>>(),
            failures: self.failures,
            migrations: self.migrations,
        });
    }
}
