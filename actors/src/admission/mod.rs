//! Admission at the front door: tenants' reservations in model units per minute, kept
//! under load on every node at once.
//!
//! Each node holds, per tenant with a reservation, a token bucket refilled at *this
//! node's share* of the reservation, and one best-effort bucket refilled at its share of
//! the fleet's spare MU. A request spends from its tenant's bucket (admitted as
//! *reserved*), else from the best-effort one (*best effort*), else it is refused with a
//! time to retry after. The shares come from [`budgets`]: every node gossips what each
//! tenant asked of it, and every node splits each reservation (and the spare) in
//! proportion to that demand — so a tenant whose traffic all lands on one node gets its
//! whole reservation there, and the nodes' shares add up to the cluster's promise.
//!
//! Spare is capacity not used by reservations: `capacity − Σ min(reservation, demand)`,
//! so a reservation nobody uses lends its capacity to best effort until its tenant
//! comes back (within a rebalance). The cluster then admits at most reserved plus spare,
//! that is its capacity, plus the buckets' depth.

mod bucket;

pub use bucket::TokenBucket;

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// Seconds of rate a bucket holds: how big a burst is admitted at once. A tenant's
    /// bucket on every node holds this many seconds of its *whole* reservation, so that
    /// when its traffic moves to one node the budget there covers it while the shares
    /// catch up (the cluster's burst is then at most nodes × this).
    pub depth_s: f64,
    /// Half-life of the demand rates nodes gossip.
    pub demand_half_life_s: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            depth_s: 5.0,
            demand_half_life_s: 3.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Reserved,
    BestEffort,
    /// Refused: no reservation left and no spare; try again after this many seconds.
    Refused {
        retry_after_s: u32,
    },
}

/// This node's refill rates, in MU/min.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budgets {
    /// This node's share of each reservation.
    pub reserved: BTreeMap<String, f64>,
    /// Each reservation, whole (sizes the buckets).
    pub reserved_whole: BTreeMap<String, f64>,
    pub best_effort: f64,
}

/// What one node was asked, in MU/min, by tenant (`""`: requests without a tenant).
pub type NodeDemand = BTreeMap<String, f64>;

/// An exponentially decaying rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    sum: f64,
    at_us: u64,
}

impl Rate {
    fn decay(&mut self, now_us: u64, half_life_s: f64) {
        let dt = now_us.saturating_sub(self.at_us) as f64 / 1e6;
        if half_life_s > 0.0 {
            self.sum *= 0.5f64.powf(dt / half_life_s);
        }
        self.at_us = self.at_us.max(now_us);
    }

    /// Per minute: the decayed sum over its mean lifetime.
    fn per_min(&self, now_us: u64, half_life_s: f64) -> f64 {
        let mut r = *self;
        r.decay(now_us, half_life_s);
        let lifetime_s = half_life_s / std::f64::consts::LN_2;
        if lifetime_s > 0.0 {
            r.sum / lifetime_s * 60.0
        } else {
            0.0
        }
    }
}

/// One node's admission state.
#[derive(Debug, Clone)]
pub struct AdmissionCore {
    config: AdmissionConfig,
    reserved: BTreeMap<String, TokenBucket>,
    /// `None` until the first budgets: then it starts full, like the reserved ones.
    best_effort: Option<TokenBucket>,
    asked: BTreeMap<String, Rate>,
}

impl AdmissionCore {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            reserved: BTreeMap::new(),
            best_effort: None,
            asked: BTreeMap::new(),
        }
    }

    /// A request of `tenant` (none: an anonymous one) that costs `cost_mu`.
    pub fn admit(&mut self, tenant: Option<&str>, cost_mu: f64, now_us: u64) -> Decision {
        let key = tenant.unwrap_or("");
        let half_life = self.config.demand_half_life_s;
        let asked = self.asked.entry(key.to_owned()).or_insert(Rate {
            sum: 0.0,
            at_us: now_us,
        });
        asked.decay(now_us, half_life);
        asked.sum += cost_mu.max(0.0);
        if let Some(b) = tenant.and_then(|t| self.reserved.get_mut(t)) {
            if b.try_take(cost_mu, now_us) {
                return Decision::Reserved;
            }
        }
        let Some(best_effort) = self.best_effort.as_mut() else {
            // No budgets yet (the node just started): nothing is promised, nothing spare.
            return Decision::Refused { retry_after_s: 1 };
        };
        if best_effort.try_take(cost_mu, now_us) {
            return Decision::BestEffort;
        }
        let wait = best_effort.wait_s(now_us).unwrap_or(1.0);
        Decision::Refused {
            retry_after_s: (wait.ceil() as u32).clamp(1, 60),
        }
    }

    /// New refill rates (from [`budgets`]); tenants without a share lose their bucket.
    pub fn set_budgets(&mut self, b: &Budgets, now_us: u64) {
        let seconds = self.config.depth_s / 60.0;
        self.reserved.retain(|t, _| b.reserved.contains_key(t));
        for (t, &rate) in &b.reserved {
            let whole = b.reserved_whole.get(t).copied().unwrap_or(rate).max(rate);
            let depth = whole * seconds;
            match self.reserved.get_mut(t) {
                Some(bucket) => bucket.set_rate(rate, depth, now_us),
                None => {
                    self.reserved
                        .insert(t.clone(), TokenBucket::new(rate, depth, now_us));
                }
            }
        }
        let depth = b.best_effort * seconds;
        match self.best_effort.as_mut() {
            Some(bucket) => bucket.set_rate(b.best_effort, depth, now_us),
            None => self.best_effort = Some(TokenBucket::new(b.best_effort, depth, now_us)),
        }
    }

    /// What this node was asked lately, per tenant, for the others.
    pub fn demand(&self, now_us: u64) -> NodeDemand {
        let h = self.config.demand_half_life_s;
        self.asked
            .iter()
            .map(|(t, r)| (t.clone(), r.per_min(now_us, h)))
            .filter(|(_, v)| *v > 1e-9)
            .collect()
    }
}

/// This node's budgets. `reservations` are the model's (tenant → MU/min), `capacity`
/// the healthy fleet's MU/min, `demands` every node's (this one's included) latest
/// demand. Deterministic: all nodes computing it on the same inputs get shares that
/// add up to each reservation and to the spare.
pub fn budgets(
    me: u64,
    reservations: &BTreeMap<String, f64>,
    capacity: f64,
    demands: &BTreeMap<u64, NodeDemand>,
) -> Budgets {
    let nodes: Vec<u64> = {
        let mut n: Vec<u64> = demands.keys().copied().collect();
        if !n.contains(&me) {
            n.push(me);
        }
        n
    };
    let asked = |node: u64, tenant: &str| {
        demands
            .get(&node)
            .and_then(|d| d.get(tenant))
            .copied()
            .unwrap_or(0.0)
    };
    let mut out = Budgets::default();
    // Per node: what it was asked beyond its reserved shares (its best-effort demand).
    let mut overflow: BTreeMap<u64, f64> = nodes
        .iter()
        .map(|&n| {
            let all: f64 = demands.get(&n).map_or(0.0, |d| d.values().sum());
            (n, all)
        })
        .collect();
    let mut used = 0.0;
    for (tenant, &reserved) in reservations {
        if !(reserved.is_finite() && reserved > 0.0) {
            continue;
        }
        let wanted: Vec<f64> = nodes.iter().map(|&n| asked(n, tenant)).collect();
        let shares = split(reserved, &wanted);
        for (i, &n) in nodes.iter().enumerate() {
            if let Some(o) = overflow.get_mut(&n) {
                *o -= wanted[i].min(shares[i]);
            }
            if n == me {
                out.reserved.insert(tenant.clone(), shares[i]);
                out.reserved_whole.insert(tenant.clone(), reserved);
            }
        }
        used += reserved.min(wanted.iter().sum());
    }
    let spare = (capacity - used).max(0.0);
    let wanted: Vec<f64> = nodes
        .iter()
        .map(|n| overflow.get(n).copied().unwrap_or(0.0).max(0.0))
        .collect();
    let shares = split(spare, &wanted);
    if let Some(i) = nodes.iter().position(|&n| n == me) {
        out.best_effort = shares[i];
    }
    out
}

/// `total` split between parts that want `wanted`. When the wants fit, each part gets
/// what it wants and the rest is split evenly: a node whose demand is just starting (a
/// restarted one, say) is not held to the trickle its smoothed demand would earn while
/// the fleet has room to spare. When they do not fit, `total` is split in proportion to
/// the wants, every part with a small floor so that none is shut out until the next
/// gossip. The parts add up to `total`.
fn split(total: f64, wanted: &[f64]) -> Vec<f64> {
    if wanted.is_empty() {
        return Vec::new();
    }
    let total = total.max(0.0);
    let n = wanted.len() as f64;
    let wants: Vec<f64> = wanted.iter().map(|w| w.max(0.0)).collect();
    let asked: f64 = wants.iter().sum();
    if asked <= total {
        let rest = (total - asked) / n;
        return wants.iter().map(|w| w + rest).collect();
    }
    let floor = 0.02 * total / n;
    let weights: Vec<f64> = wants.iter().map(|w| w + floor).collect();
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|w| total * w / sum).collect()
}

#[cfg(test)]
mod tests;
