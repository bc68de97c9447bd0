//! The front door's tenant gate: who is asking (API key, checked in constant time), and
//! whether the request is admitted — within its tenant's reservation, as best effort on
//! the fleet's spare MU, or refused with `Retry-After` — by the [`AdmissionCore`]. Every
//! 200 ms the budgets are recomputed from every node's demand ([`budgets`]), so that a
//! tenant's reservation follows its traffic across the cluster. With no tenant in the
//! control state the door is open (local use, the embedded default).

use super::AppState;
use crate::tenants::keys::KeyRing;
use sluice_actors::admission::{budgets, AdmissionConfig, AdmissionCore, Decision, NodeDemand};
use sluice_actors::router::BlastRadius;
use sluice_engine::openai::ApiError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Engine scheduling priorities (vLLM: lower runs first). Probes stay above both.
pub const RESERVED_PRIORITY: i64 = -10;
pub const BEST_EFFORT_PRIORITY: i64 = 0;

/// How long another node's demand report counts.
const DEMAND_TTL: Duration = Duration::from_secs(2);
const REBALANCE_EVERY: Duration = Duration::from_millis(200);

pub struct Tenancy {
    keys: KeyRing,
    /// Tenant → reserved MU/min of this node's model.
    reservations: BTreeMap<String, f64>,
    /// Tenant → the most replicas its requests may reach.
    radius: BTreeMap<String, u32>,
    /// The healthy fleet's MU/min.
    capacity: f64,
    admission: AdmissionCore,
    peers: BTreeMap<u64, (Instant, NodeDemand)>,
    me: u64,
}

impl Tenancy {
    pub fn new(me: u64) -> Self {
        Self {
            keys: KeyRing::default(),
            reservations: BTreeMap::new(),
            radius: BTreeMap::new(),
            capacity: 0.0,
            admission: AdmissionCore::new(AdmissionConfig::default()),
            peers: BTreeMap::new(),
            me,
        }
    }
}

impl Tenancy {
    /// Every router's demand that still counts: this one's, and its peers' reports
    /// younger than [`DEMAND_TTL`].
    fn demands(&self, now_us: u64) -> BTreeMap<u64, NodeDemand> {
        let fresh = Instant::now();
        let mut demands: BTreeMap<u64, NodeDemand> = self
            .peers
            .iter()
            .filter(|(_, (at, _))| fresh.duration_since(*at) < DEMAND_TTL)
            .map(|(n, (_, d))| (*n, d.clone()))
            .collect();
        demands.insert(self.me, self.admission.demand(now_us));
        demands
    }
}

/// How an admitted request is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub tenant: Option<String>,
    pub reserved: bool,
    /// The tenant's blast radius, if it has one.
    pub radius: Option<BlastRadius>,
}

impl AppState {
    fn tenancy(&self) -> std::sync::MutexGuard<'_, Tenancy> {
        self.tenancy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The control state's tenants, reservations and blast radii changed.
    pub fn set_tenants(
        &self,
        me: u64,
        keys: KeyRing,
        reservations: BTreeMap<String, f64>,
        radius: BTreeMap<String, u32>,
    ) {
        let mut t = self.tenancy();
        t.me = me;
        t.radius = radius;
        if t.keys != keys {
            tracing::info!(tenants = keys.len(), "tenant keys updated");
        }
        t.keys = keys;
        for (tenant, mu) in &reservations {
            self.metrics.tenant_reserved(tenant, *mu);
        }
        t.reservations = reservations;
        drop(t);
        // Budgets at once: a node that just (re)started must not refuse its first
        // requests for want of a rebalance.
        self.rebalance();
    }

    /// The healthy fleet's capacity changed. Budgets follow at once: on a restarted
    /// node the fleet view can arrive after the tenants, and budgets computed on a
    /// capacity of zero would refuse best effort until the next rebalance.
    pub(super) fn set_capacity(&self, mu_per_min: f64) {
        let changed = {
            let mut t = self.tenancy();
            let changed = t.capacity != mu_per_min;
            t.capacity = mu_per_min;
            changed
        };
        if changed {
            self.rebalance();
        }
    }

    /// Another node's demand per tenant.
    pub fn peer_demand(&self, node: u64, demand: NodeDemand) {
        self.tenancy().peers.insert(node, (Instant::now(), demand));
    }

    /// This node's demand per tenant, for the others.
    pub fn own_demand(&self) -> NodeDemand {
        let now = self.now_us();
        self.tenancy().admission.demand(now)
    }

    /// Authenticates `api_key` and admits a request costing `cost_mu`, or says why not.
    pub(super) fn gate(
        &self,
        api_key: Option<&str>,
        cost_mu: f64,
    ) -> Result<Pass, (ApiError, Option<u32>)> {
        let now = self.now_us();
        let mut t = self.tenancy();
        if t.keys.is_open() {
            return Ok(Pass {
                tenant: None,
                reserved: false,
                radius: None,
            });
        }
        let Some(key) = api_key else {
            return Err((
                ApiError::new(
                    401,
                    "invalid_request_error",
                    "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
                )
                .with_code("invalid_api_key"),
                None,
            ));
        };
        let Some(tenant) = t.keys.tenant(key).map(str::to_owned) else {
            return Err((
                ApiError::new(401, "invalid_request_error", "Incorrect API key provided.")
                    .with_code("invalid_api_key"),
                None,
            ));
        };
        let decision = t.admission.admit(Some(&tenant), cost_mu, now);
        let radius = t
            .radius
            .get(&tenant)
            .and_then(|&n| BlastRadius::of_tenant(&tenant, n));
        drop(t);
        self.metrics.tenant_decision(&tenant, decision, cost_mu);
        match decision {
            Decision::Reserved => Ok(Pass {
                tenant: Some(tenant),
                reserved: true,
                radius,
            }),
            Decision::BestEffort => Ok(Pass {
                tenant: Some(tenant),
                reserved: false,
                radius,
            }),
            Decision::Refused { retry_after_s } => Err((
                ApiError::new(
                    429,
                    "rate_limit_error",
                    format!(
                        "Over your reservation and the fleet has no spare capacity; retry after {retry_after_s} s."
                    ),
                )
                .with_code("rate_limit_exceeded"),
                Some(retry_after_s),
            )),
        }
    }

    /// Recomputes this node's budgets from everyone's demand.
    fn rebalance(&self) {
        let now = self.now_us();
        let mut t = self.tenancy();
        if t.keys.is_open() {
            return;
        }
        let fresh = Instant::now();
        t.peers
            .retain(|_, (at, _)| fresh.duration_since(*at) < DEMAND_TTL);
        let demands = t.demands(now);
        let b = budgets(t.me, &t.reservations, t.capacity, &demands);
        t.admission.set_budgets(&b, now);
    }
}

/// A tenant's reservation and what the cluster asked of it lately.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantUse {
    pub tenant: String,
    pub reserved_mu_per_min: f64,
    /// Every router's recent demand (this one's and its peers' last reports), MU/min.
    pub used_mu_per_min: f64,
}

impl AppState {
    /// Every tenant with a reservation or recent demand, by name.
    pub fn tenant_use(&self) -> Vec<TenantUse> {
        let now = self.now_us();
        let t = self.tenancy();
        let mut used: BTreeMap<String, f64> = BTreeMap::new();
        for demand in t.demands(now).values() {
            for (tenant, mu) in demand {
                *used.entry(tenant.clone()).or_insert(0.0) += mu;
            }
        }
        for tenant in t.reservations.keys() {
            used.entry(tenant.clone()).or_insert(0.0);
        }
        used.into_iter()
            .map(|(tenant, used_mu_per_min)| TenantUse {
                reserved_mu_per_min: t.reservations.get(&tenant).copied().unwrap_or(0.0),
                tenant,
                used_mu_per_min,
            })
            .collect()
    }
}

/// The tenancy actor's duty: reservations re-balanced between routers every period.
pub fn rebalancer(state: Arc<AppState>) -> impl crate::tree::Duty {
    crate::tree::every(
        REBALANCE_EVERY,
        tokio::time::MissedTickBehavior::Skip,
        move || {
            state.rebalance();
            std::future::ready(())
        },
    )
}

/// The request body as the engine gets it: the scheduling priority of its class, and a
/// prefix-cache salt from its tenant (prompts of different tenants never share cache
/// blocks, so cache timing leaks nothing across them). What a client put in either
/// field is dropped: a client may neither jump the queue nor pick a salt.
pub fn engine_body(body: &bytes::Bytes, pass: &Pass, ask_usage: bool) -> bytes::Bytes {
    let needs_rewrite = pass.tenant.is_some()
        || ask_usage
        || contains(body, b"\"priority\"")
        || contains(body, b"\"cache_salt\"");
    if !needs_rewrite {
        return body.clone();
    }
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(body) else {
        return body.clone();
    };
    obj.remove("priority");
    obj.remove("cache_salt");
    if let Some(tenant) = &pass.tenant {
        let priority = if pass.reserved {
            RESERVED_PRIORITY
        } else {
            BEST_EFFORT_PRIORITY
        };
        obj.insert("priority".into(), priority.into());
        obj.insert("cache_salt".into(), salt(tenant).into());
    }
    if ask_usage {
        // A stream's usage is what meters it: ask for it even when the client did not
        // (the front door strips it from the client's stream again).
        let options = obj
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if !options.is_object() {
            *options = serde_json::json!({});
        }
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".into(), true.into());
        }
    }
    serde_json::to_vec(&obj).map_or_else(|_| body.clone(), bytes::Bytes::from)
}

/// A tenant's cache salt: a hash, so engine logs do not name tenants.
fn salt(tenant: &str) -> String {
    let h = crate::tenants::keys::sha256(format!("sluice-cache-salt:{tenant}"));
    h.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &bytes::Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn the_engine_gets_the_tenants_priority_and_salt_never_the_clients() {
        let body = bytes::Bytes::from_static(
            br#"{"model":"m","prompt":"hi","priority":-9999,"cache_salt":"mine"}"#,
        );
        let reserved = Pass {
            tenant: Some("acme".into()),
            reserved: true,
            radius: None,
        };
        let out = json(&engine_body(&body, &reserved, false));
        assert_eq!(out["priority"], RESERVED_PRIORITY);
        assert_eq!(out["cache_salt"], salt("acme"));
        assert_ne!(salt("acme"), salt("zeta"));
        let open = Pass {
            tenant: None,
            reserved: false,
            radius: None,
        };
        let out = json(&engine_body(&body, &open, false));
        assert!(out.get("priority").is_none() && out.get("cache_salt").is_none());
        assert_eq!(out["prompt"], "hi");
        // Nothing to change: the bytes go through untouched.
        let plain = bytes::Bytes::from_static(br#"{"model":"m","prompt":"hi"}"#);
        assert_eq!(engine_body(&plain, &open, false), plain);
        // A stream always asks the engine for its usage, keeping the client's options.
        let stream = bytes::Bytes::from_static(
            br#"{"model":"m","prompt":"hi","stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
        );
        let out = json(&engine_body(&stream, &open, true));
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["stream_options"]["continuous_usage_stats"], true);
    }
}
