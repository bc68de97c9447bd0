//! `static-peak`: the replicas the peak needs, all the time — what a fleet without an
//! autoscaler provisions, and the cost every autoscaler is measured against. The caller
//! computes the peak; the core only keeps it (within the bounds).

use super::{Autoscaler, ScaleBounds, ScaleInputs};

#[derive(Debug, Clone)]
pub struct StaticPeak {
    pub replicas: usize,
}

impl StaticPeak {
    pub fn new(replicas: usize) -> Self {
        Self { replicas }
    }
}

impl Autoscaler for StaticPeak {
    fn name(&self) -> &'static str {
        "static-peak"
    }

    fn decide(&mut self, _: &ScaleInputs, bounds: &ScaleBounds) -> usize {
        bounds.clamp(self.replicas)
    }
}
