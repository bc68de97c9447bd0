//! Prometheus metrics of the front door, one registry for every model the node serves.
//! Labels stay bounded: endpoint, status code, replica index and model (the few the
//! node serves), tenants capped — never a workload, user or key.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sluice_actors::router::{ReplicaView, Usage};
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantClass {
    tenant: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActorLabel {
    actor: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: u64,
}

/// Who used the tokens: the replica, the model as the request named it (one of the few
/// names the fleet serves) and the tenant (`none` on an open front door).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    replica: u64,
    model: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabels {
    model: String,
    profile_model: String,
    hardware: String,
    calibrated: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaModel {
    replica: u64,
    model: String,
}

/// One model's fleet as `/metrics` shows it: its model (`None` until an engine said),
/// the profile pricing it, its replicas now, and its tokenizer scale.
pub struct FleetSample<'a> {
    pub model: Option<String>,
    pub profile: &'a sluice_actors::Profile,
    pub replicas: Vec<ReplicaView>,
    pub token_scale: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaState {
    replica: u64,
    state: &'static str,
}

/// The states a supervised engine can be in, for the one-hot state gauge.
pub const ENGINE_STATES: [&str; 6] = [
    "starting",
    "ready",
    "backing_off",
    "stopping",
    "stopped",
    "gave_up",
];

pub struct Metrics {
    registry: Registry,
    /// The same happenings as they come, for the live view.
    pub events: super::events::Events,
    requests: Family<RequestLabels, Counter>,
    retries: Counter,
    migrations: Family<ReasonLabel, Counter>,
    stream_stalls: Family<ReplicaLabel, Counter>,
    migrations_refused: Family<ReasonLabel, Counter>,
    spills: Counter,
    quarantined: Counter,
    handed_off: Counter,
    routed: Family<ReplicaLabel, Counter>,
    upstream_failures: Family<ReplicaLabel, Counter>,
    duration: Family<EndpointLabel, Histogram>,
    first_byte: Family<EndpointLabel, Histogram>,
    per_token: Family<EndpointLabel, Histogram>,
    inflight_mu: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
    inflight_requests: Family<ReplicaLabel, Gauge>,
    available: Family<ReplicaLabel, Gauge>,
    capacity: Family<ReplicaLabel, Gauge<f64, AtomicU64>>,
    generation: Gauge,
    probes: Family<OutcomeLabel, Counter>,
    ejections: Family<ReplicaLabel, Counter>,
    actor_restarts: Family<ActorLabel, Counter>,
    cert_renewals: Family<OutcomeLabel, Counter>,
    /// Keyed by the node, so that a node outside a cluster (no certificate) shows none.
    cert_expiry: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    tenant_requests: Family<TenantClass, Counter>,
    tenant_mu: Family<TenantClass, Counter<f64, AtomicU64>>,
    tenant_reserved: Family<TenantLabel, Gauge<f64, AtomicU64>>,
    tenant_duration: Family<TenantLabel, Histogram>,
    prompt_tokens: Family<TokenLabels, Counter>,
    cached_tokens: Family<TokenLabels, Counter>,
    completion_tokens: Family<TokenLabels, Counter>,
    usage_missing: Family<ReplicaLabel, Counter>,
    model_profile: Family<ProfileLabels, Gauge>,
    model_mismatch: Family<ReplicaLabel, Gauge>,
    priority_ignored: Family<ReplicaLabel, Gauge>,
    token_scale: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    model_inflight_mu: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    model_capacity: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    replica_model: Family<ReplicaModel, Gauge>,
    engine_state: Family<ReplicaState, Gauge>,
    engine_restarts: Family<ReplicaLabel, Counter>,
    engine_sends: Family<ConnectionLabel, Counter>,
    /// Tenants with a label of their own; the rest share [`OTHER_TENANTS`].
    tenants_named: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Most tenants named in labels: past them, new tenants' samples go to
/// [`OTHER_TENANTS`], so that a fleet with thousands of tenants does not make thousands
/// of series per metric.
pub const TENANT_LABELS_AT_MOST: usize = 100;
pub const OTHER_TENANTS: &str = "other";

/// What a mid-answer failure can be when a request is continued elsewhere (stream cuts,
/// an answer sent whole that was lost, the node serving it lost): shown at zero before
/// the first.
const MIGRATION_REASONS: [&str; 6] = [
    "broke",
    "silent",
    "ended_early",
    "stalled",
    "answer_lost",
    "node_lost",
];
/// Why one was not continued, as the lifecycle and the stream say it.
const REFUSAL_REASONS: [&str; 8] = [
    "ended",
    "deadline",
    "not_resumable",
    "request_limit",
    "budget",
    "quarantined",
    "no_replica",
    "engine_refused",
];

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        let retries = Counter::default();
        let migrations = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "migrations",
            "Requests continued on another replica after theirs failed mid-answer, by what \
             failed (broke, silent, ended_early, stalled, answer_lost, node_lost)",
            migrations.clone(),
        );
        let stream_stalls = Family::<ReplicaLabel, Counter>::default();
        registry.register(
            "stream_stalls",
            "Times every stream on a replica stopped producing past its bound: taken for \
             hung, ejected by this router, its requests moved",
            stream_stalls.clone(),
        );
        let migrations_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "migrations_refused",
            "Requests whose replica failed mid-answer and that were not continued elsewhere, \
             by why (not_resumable, request_limit, budget, quarantined, no_replica, deadline, \
             send_failed)",
            migrations_refused.clone(),
        );
        let spills = Counter::default();
        let quarantined = Counter::default();
        let handed_off = Counter::default();
        let routed = Family::<ReplicaLabel, Counter>::default();
        let upstream_failures = Family::<ReplicaLabel, Counter>::default();
        let duration = Family::<EndpointLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let first_byte = Family::<EndpointLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let per_token = Family::<EndpointLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "time_per_output_token_seconds",
            "Of a streamed answer: time from its first token to its last over the tokens \
             after the first (TPOT), as the client saw it",
            per_token.clone(),
        );
        for reason in MIGRATION_REASONS {
            let _ = migrations.get_or_create(&ReasonLabel { reason });
        }
        for reason in REFUSAL_REASONS {
            let _ = migrations_refused.get_or_create(&ReasonLabel { reason });
        }
        let inflight_mu = Family::<ReplicaLabel, Gauge<f64, AtomicU64>>::default();
        let inflight_requests = Family::<ReplicaLabel, Gauge>::default();
        let available = Family::<ReplicaLabel, Gauge>::default();
        let capacity = Family::<ReplicaLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "replica_capacity_mu_per_min",
            "Model units a minute the replica sustains at the SLO (its profile's capacity): \
             in-flight MU over it is the share of a minute of work queued there",
            capacity.clone(),
        );
        let generation = Gauge::default();
        generation.set(1);
        let probes = Family::<OutcomeLabel, Counter>::default();
        for outcome in ["ok", "failed"] {
            let _ = probes.get_or_create(&OutcomeLabel { outcome });
        }
        let ejections = Family::<ReplicaLabel, Counter>::default();
        let actor_restarts = Family::<ActorLabel, Counter>::default();
        registry.register(
            "actor_restarts",
            "Times one of the node's actors failed and was restarted",
            actor_restarts.clone(),
        );
        let cert_renewals = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "node_cert_renewals",
            "Renewals of this node's certificate, by outcome (renewed, failed)",
            cert_renewals.clone(),
        );
        let cert_expiry = Family::<NodeLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "node_cert_expires_in_seconds",
            "Seconds until this node's certificate expires (negative: expired)",
            cert_expiry.clone(),
        );
        registry.register(
            "probes",
            "Health probes of this node's replicas, by outcome (ok, failed)",
            probes.clone(),
        );
        let tenant_requests = Family::<TenantClass, Counter>::default();
        let tenant_mu = Family::<TenantClass, Counter<f64, AtomicU64>>::default();
        let tenant_reserved = Family::<TenantLabel, Gauge<f64, AtomicU64>>::default();
        let tenant_duration = Family::<TenantLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "tenant_requests",
            "Requests of a tenant at admission, by class (reserved, best_effort, refused)",
            tenant_requests.clone(),
        );
        registry.register(
            "tenant_mu",
            "Model units a tenant asked for at admission, by class",
            tenant_mu.clone(),
        );
        registry.register(
            "tenant_reserved_mu_per_min",
            "A tenant's reservation of this node's model",
            tenant_reserved.clone(),
        );
        registry.register(
            "tenant_request_duration_seconds",
            "Time from an admitted request of a tenant to the last byte of its answer",
            tenant_duration.clone(),
        );
        registry.register(
            "ejections",
            "Times the prober took a replica out of service",
            ejections.clone(),
        );
        registry.register(
            "assignment_generation",
            "Generation of the slice assignment the router uses",
            generation.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by endpoint and HTTP status",
            requests.clone(),
        );
        registry.register(
            "retries",
            "Requests retried on another replica after a connection failure",
            retries.clone(),
        );
        registry.register(
            "spills",
            "Requests sent outside their slice's replica subset",
            spills.clone(),
        );
        registry.register(
            "quarantined",
            "Requests refused because they were on several replicas as each failed",
            quarantined.clone(),
        );
        registry.register(
            "handed_off",
            "Requests for a model this node does not route, handed to a node that does",
            handed_off.clone(),
        );
        registry.register(
            "routed",
            "Requests sent to a replica (retries count again)",
            routed.clone(),
        );
        registry.register(
            "upstream_failures",
            "Connection failures and timeouts talking to a replica",
            upstream_failures.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the last byte of the answer",
            duration.clone(),
        );
        registry.register(
            "time_to_first_byte_seconds",
            "Time from request to the first upstream response bytes",
            first_byte.clone(),
        );
        registry.register(
            "replica_inflight_mu",
            "Model units in flight on a replica",
            inflight_mu.clone(),
        );
        registry.register(
            "replica_inflight_requests",
            "Requests in flight on a replica",
            inflight_requests.clone(),
        );
        registry.register(
            "replica_available",
            "1 if the router may send to the replica",
            available.clone(),
        );
        let prompt_tokens = Family::<TokenLabels, Counter>::default();
        let cached_tokens = Family::<TokenLabels, Counter>::default();
        let completion_tokens = Family::<TokenLabels, Counter>::default();
        let usage_missing = Family::<ReplicaLabel, Counter>::default();
        let model_profile = Family::<ProfileLabels, Gauge>::default();
        let model_mismatch = Family::<ReplicaLabel, Gauge>::default();
        let priority_ignored = Family::<ReplicaLabel, Gauge>::default();
        let token_scale = Family::<ModelLabel, Gauge<f64, AtomicU64>>::default();
        let model_inflight_mu = Family::<ModelLabel, Gauge<f64, AtomicU64>>::default();
        let model_capacity = Family::<ModelLabel, Gauge<f64, AtomicU64>>::default();
        let replica_model = Family::<ReplicaModel, Gauge>::default();
        let engine_state = Family::<ReplicaState, Gauge>::default();
        let engine_restarts = Family::<ReplicaLabel, Counter>::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of answered requests, as the engine counted them",
            prompt_tokens.clone(),
        );
        registry.register(
            "cached_prompt_tokens",
            "Prompt tokens the engine served from its prefix cache",
            cached_tokens.clone(),
        );
        registry.register(
            "completion_tokens",
            "Tokens the engine generated",
            completion_tokens.clone(),
        );
        registry.register(
            "usage_missing",
            "Answered requests whose engine reported no token usage (metered from the stream's chunks, or not at all)",
            usage_missing.clone(),
        );
        registry.register(
            "model_profile",
            "1 for each model this node serves and the profile that prices it; calibrated=\"false\" when the model has no calibrated profile and a default stands in",
            model_profile.clone(),
        );
        registry.register(
            "replica_model_mismatch",
            "1 if the replica serves another model than the fleet (it gets no traffic)",
            model_mismatch.clone(),
        );
        registry.register(
            "replica_priority_ignored",
            "1 if the replica's engine ignores request priority (probes are then not prioritized)",
            priority_ignored.clone(),
        );
        registry.register(
            "tokenizer_scale",
            "Engine prompt tokens per token of Sluice's stand-in tokenizer, learned from usage, per model; prices use it",
            token_scale.clone(),
        );
        registry.register(
            "model_inflight_mu",
            "Model units this router has in flight on the model's replicas",
            model_inflight_mu.clone(),
        );
        registry.register(
            "model_capacity_mu_per_min",
            "What the model's available replicas sustain at the SLO, in MU per minute",
            model_capacity.clone(),
        );
        registry.register(
            "replica_model",
            "1 for the model each replica serves (join on replica for per-model views)",
            replica_model.clone(),
        );
        registry.register(
            "engine_state",
            "1 for the state a supervised engine process is in",
            engine_state.clone(),
        );
        registry.register(
            "engine_restarts",
            "Times the supervisor restarted an engine process",
            engine_restarts.clone(),
        );
        let engine_sends = Family::<ConnectionLabel, Counter>::default();
        for connection in ["new", "kept"] {
            let _ = engine_sends.get_or_create(&ConnectionLabel { connection });
        }
        registry.register(
            "engine_sends",
            "Requests written to this node's engines (its own and those its peers forward), by \
             whether their connection was opened for them (new) or kept from an earlier answer \
             (kept)",
            engine_sends.clone(),
        );
        Self {
            registry,
            events: Default::default(),
            prompt_tokens,
            cached_tokens,
            completion_tokens,
            usage_missing,
            model_profile,
            model_mismatch,
            priority_ignored,
            token_scale,
            model_inflight_mu,
            model_capacity,
            replica_model,
            engine_state,
            engine_restarts,
            engine_sends,
            requests,
            retries,
            migrations,
            stream_stalls,
            migrations_refused,
            spills,
            quarantined,
            handed_off,
            routed,
            upstream_failures,
            duration,
            first_byte,
            per_token,
            inflight_mu,
            inflight_requests,
            available,
            capacity,
            generation,
            probes,
            ejections,
            actor_restarts,
            cert_renewals,
            cert_expiry,
            tenant_requests,
            tenant_mu,
            tenant_reserved,
            tenant_duration,
            tenants_named: std::sync::Mutex::default(),
        }
    }

    /// The label `tenant`'s samples go under: its name while fewer than
    /// [`TENANT_LABELS_AT_MOST`] tenants are named, else [`OTHER_TENANTS`].
    fn tenant_label(&self, tenant: &str) -> String {
        let mut named = self.tenants_named.lock().unwrap_or_else(|p| p.into_inner());
        if named.contains(tenant) {
            return tenant.to_owned();
        }
        if named.len() < TENANT_LABELS_AT_MOST && tenant != OTHER_TENANTS {
            named.insert(tenant.to_owned());
            return tenant.to_owned();
        }
        OTHER_TENANTS.to_owned()
    }

    pub fn tenant_decision(
        &self,
        tenant: &str,
        decision: sluice_actors::admission::Decision,
        mu: f64,
    ) {
        use sluice_actors::admission::Decision;
        let class = match decision {
            Decision::Reserved => "reserved",
            Decision::BestEffort => "best_effort",
            Decision::Refused { .. } => "refused",
        };
        let l = TenantClass {
            tenant: self.tenant_label(tenant),
            class,
        };
        self.tenant_requests.get_or_create(&l).inc();
        if mu.is_finite() && mu > 0.0 {
            self.tenant_mu.get_or_create(&l).inc_by(mu);
        }
    }

    pub fn tenant_reserved(&self, tenant: &str, mu_per_min: f64) {
        self.tenant_reserved
            .get_or_create(&TenantLabel {
                tenant: self.tenant_label(tenant),
            })
            .set(mu_per_min);
    }

    pub fn tenant_duration(&self, tenant: &str, seconds: f64) {
        self.tenant_duration
            .get_or_create(&TenantLabel {
                tenant: self.tenant_label(tenant),
            })
            .observe(seconds);
    }

    /// Tokens one answered request used, as the engine reported them.
    pub fn usage(&self, replica: u64, model: &str, tenant: Option<&str>, u: &Usage) {
        let l = TokenLabels {
            replica,
            model: model.to_owned(),
            tenant: tenant.map_or_else(|| "none".to_owned(), |t| self.tenant_label(t)),
        };
        self.prompt_tokens
            .get_or_create(&l)
            .inc_by(u64::from(u.prompt_tokens));
        self.cached_tokens
            .get_or_create(&l)
            .inc_by(u64::from(u.cached_tokens.min(u.prompt_tokens)));
        self.completion_tokens
            .get_or_create(&l)
            .inc_by(u64::from(u.completion_tokens));
    }

    pub fn usage_missing(&self, replica: u64) {
        self.usage_missing
            .get_or_create(&ReplicaLabel { replica })
            .inc();
    }

    pub fn model_mismatch(&self, replica: u64, mismatched: bool) {
        self.model_mismatch
            .get_or_create(&ReplicaLabel { replica })
            .set(i64::from(mismatched));
    }

    pub fn priority_ignored(&self, replica: u64, ignored: bool) {
        self.priority_ignored
            .get_or_create(&ReplicaLabel { replica })
            .set(i64::from(ignored));
    }

    /// A supervised engine entered `state` (one of [`ENGINE_STATES`]).
    pub fn engine_state(&self, replica: u64, state: &'static str) {
        for s in ENGINE_STATES {
            self.engine_state
                .get_or_create(&ReplicaState { replica, state: s })
                .set(i64::from(s == state));
        }
    }

    pub fn engine_restart(&self, replica: u64) {
        self.engine_restarts
            .get_or_create(&ReplicaLabel { replica })
            .inc();
        self.events
            .push("restart", format!("replica {replica}: engine restarted"));
    }

    /// The counts the node's engine connections keep ([`super::engine_pool::SendCounts`]).
    pub fn engine_sends(&self) -> super::engine_pool::SendCounts {
        let count = |connection| {
            self.engine_sends
                .get_or_create(&ConnectionLabel { connection })
                .clone()
        };
        super::engine_pool::SendCounts {
            new: count("new"),
            kept: count("kept"),
        }
    }

    pub fn probe(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.probes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn ejection(&self, replica: u64) {
        self.ejections
            .get_or_create(&ReplicaLabel { replica })
            .inc();
        self.events.push(
            "ejection",
            format!("replica {replica}: ejected by the prober"),
        );
    }

    pub fn assignment(&self, generation: u64) {
        let g = i64::try_from(generation).unwrap_or(i64::MAX);
        if self.generation.set(g) != g {
            self.events
                .push("assignment", format!("slice map generation {generation}"));
        }
    }

    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                code: status,
            })
            .inc();
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn migrated(&self, reason: &'static str, from: u64, to: u64) {
        self.migrations.get_or_create(&ReasonLabel { reason }).inc();
        self.events.push(
            "migration",
            format!("a request moved from replica {from} to {to} ({reason})"),
        );
    }

    pub fn stream_stall(&self, replica: u64) {
        self.stream_stalls
            .get_or_create(&ReplicaLabel { replica })
            .inc();
    }

    pub fn migration_refused(&self, reason: &'static str) {
        self.migrations_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        self.events.push(
            "migration_refused",
            format!("a request was not moved ({reason})"),
        );
    }

    pub fn actor_restarted(&self, actor: &'static str) {
        self.actor_restarts
            .get_or_create(&ActorLabel { actor })
            .inc();
        self.events
            .push("actor_restart", format!("actor {actor} restarted"));
    }

    pub fn cert_renewal(&self, outcome: &'static str) {
        self.cert_renewals
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn set_cert_expiry(&self, node: u64, seconds: f64) {
        self.cert_expiry
            .get_or_create(&NodeLabel { node })
            .set(seconds);
    }

    pub fn spill(&self) {
        self.spills.inc();
    }

    pub fn quarantined(&self) {
        self.quarantined.inc();
    }

    pub fn handed_off(&self) {
        self.handed_off.inc();
    }

    /// A handed request whose routing node was lost midway went on from node `to`.
    pub fn handoff_continued(&self, from: u64, to: u64) {
        self.migrations
            .get_or_create(&ReasonLabel {
                reason: "node_lost",
            })
            .inc();
        self.events.push(
            "migration",
            format!("a handed request moved from node {from} to node {to} (node_lost)"),
        );
    }

    pub fn routed(&self, replica: u64) {
        self.routed.get_or_create(&ReplicaLabel { replica }).inc();
    }

    pub fn upstream_failure(&self, replica: u64) {
        self.upstream_failures
            .get_or_create(&ReplicaLabel { replica })
            .inc();
    }

    pub fn duration(&self, endpoint: &'static str, seconds: f64) {
        self.duration
            .get_or_create(&EndpointLabel { endpoint })
            .observe(seconds);
    }

    /// A streamed answer's time per output token after its first.
    pub fn per_token(&self, endpoint: &'static str, seconds: f64) {
        self.per_token
            .get_or_create(&EndpointLabel { endpoint })
            .observe(seconds);
    }

    pub fn first_byte(&self, endpoint: &'static str, seconds: f64) {
        self.first_byte
            .get_or_create(&EndpointLabel { endpoint })
            .observe(seconds);
    }

    /// Renders the registry, with each fleet's model, profile and replica gauges
    /// refreshed.
    pub fn render(&self, fleets: &[FleetSample]) -> String {
        // Samples of a model no longer served go.
        for family in [
            &self.token_scale,
            &self.model_inflight_mu,
            &self.model_capacity,
        ] {
            family.clear();
        }
        self.model_profile.clear();
        self.replica_model.clear();
        for f in fleets {
            self.fleet(f);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn fleet(&self, f: &FleetSample) {
        for r in &f.replicas {
            let l = ReplicaLabel { replica: r.id.0 };
            // Every replica's counters exist from the start, at zero: a dashboard's
            // rate() of them is 0, not "no data".
            for counter in [
                &self.routed,
                &self.upstream_failures,
                &self.ejections,
                &self.stream_stalls,
                &self.engine_restarts,
            ] {
                let _ = counter.get_or_create(&l);
            }
            self.inflight_mu.get_or_create(&l).set(r.inflight.mu);
            self.inflight_requests
                .get_or_create(&l)
                .set(r.inflight.requests as i64);
            self.available.get_or_create(&l).set(i64::from(r.available));
            self.capacity.get_or_create(&l).set(r.capacity_mu_per_min);
        }
        let Some(model) = &f.model else {
            return;
        };
        let m = ModelLabel {
            model: model.clone(),
        };
        self.token_scale.get_or_create(&m).set(f.token_scale);
        let inflight: f64 = f.replicas.iter().map(|r| r.inflight.mu).sum();
        let capacity: f64 = f
            .replicas
            .iter()
            .filter(|r| r.available)
            .map(|r| r.capacity_mu_per_min)
            .sum();
        self.model_inflight_mu.get_or_create(&m).set(inflight);
        self.model_capacity.get_or_create(&m).set(capacity);
        for r in &f.replicas {
            self.replica_model
                .get_or_create(&ReplicaModel {
                    replica: r.id.0,
                    model: model.clone(),
                })
                .set(1);
        }
        self.model_profile
            .get_or_create(&ProfileLabels {
                model: model.clone(),
                profile_model: f.profile.model.clone(),
                hardware: f.profile.hardware.clone(),
                calibrated: if f.profile.serves(model) {
                    "true"
                } else {
                    "false"
                },
            })
            .set(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_actors::admission::Decision;

    #[test]
    fn tenants_past_the_cap_share_one_label() {
        let m = Metrics::new();
        for i in 0..TENANT_LABELS_AT_MOST + 20 {
            m.tenant_decision(&format!("t{i}"), Decision::Reserved, 1.0);
        }
        // One named before the cap keeps its label.
        m.tenant_duration("t3", 0.5);
        let text = m.render(&[]);
        let named: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("sluice_tenant_requests_total{"))
            .filter_map(|l| l.split("tenant=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(named.len(), TENANT_LABELS_AT_MOST + 1, "{named:?}");
        assert!(named.contains(OTHER_TENANTS));
        assert!(text.contains("sluice_tenant_request_duration_seconds_count{tenant=\"t3\"} 1"));
        let other = text
            .lines()
            .find(|l| {
                l.starts_with("sluice_tenant_requests_total{") && l.contains("tenant=\"other\"")
            })
            .unwrap_or_default();
        assert!(other.ends_with(" 20"), "{other}");
    }

    #[test]
    fn counters_a_dashboard_rates_exist_at_zero() {
        let m = Metrics::new();
        let text = m.render(&[]);
        for line in [
            "sluice_migrations_total{reason=\"stalled\"} 0",
            "sluice_migrations_refused_total{reason=\"budget\"} 0",
            "sluice_probes_total{outcome=\"failed\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
