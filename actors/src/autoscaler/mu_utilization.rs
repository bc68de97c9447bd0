//! `sluice`: replicas from model-unit utilization. MU, not requests, because a 30k-token
//! prompt and a 50-token one are not the same load.
//!
//! Each tick: `need = ceil(mean MU/min over the up window / (capacity × target
//! utilization))`.
//! - **Fast up.** The count rises to `need` on the tick the window shows it, by as much as
//!   needed: no rate limit and no up-stabilization, since a cold start already costs
//!   about a minute before the new replica serves.
//! - **Slow down.** The count is the largest `need` of the down window (Kubernetes HPA's
//!   scale-down stabilization), so it falls only once the whole long window agrees, and a
//!   lull between bursts does not give back replicas the next burst needs.
//! - **Cold starts.** `need` is a target for ready plus starting replicas, computed from
//!   demand alone, so replicas still starting for the same demand are already counted and
//!   nothing more is added while they come up.
//! - **Floors.** Never below `min` or the reservations' floor.

use super::window::{secs_to_us, Window};
use super::{count, metric, Autoscaler, AutoscalerConfig, ScaleBounds, ScaleInputs};

#[derive(Debug, Clone)]
pub struct MuUtilization {
    target_utilization: f64,
    /// Offered MU per minute, one sample a tick, over the up window.
    rate: Window,
    /// Each tick's `need`, over the down window.
    needs: Window,
}

impl MuUtilization {
    pub fn new(cfg: &AutoscalerConfig) -> Self {
        Self {
            target_utilization: cfg.target_utilization,
            rate: Window::new(secs_to_us(cfg.up_window_s)),
            needs: Window::new(secs_to_us(cfg.down_window_s())),
        }
    }
}

impl Autoscaler for MuUtilization {
    fn name(&self) -> &'static str {
        "sluice"
    }

    fn decide(&mut self, i: &ScaleInputs, bounds: &ScaleBounds) -> usize {
        self.rate.push(i.now_us, metric(i.mu_per_min));
        let per_replica = i.capacity_mu_per_min * self.target_utilization;
        let need = if per_replica.is_finite() && per_replica > 0.0 {
            count((self.rate.mean() / per_replica).ceil())
        } else {
            // Without a capacity the load cannot be priced: keep what there is.
            i.ready + i.starting
        };
        self.needs.push(i.now_us, need as f64);
        let stabilized = self.needs.max().map_or(need, count);
        bounds.clamp(stabilized)
    }
}
