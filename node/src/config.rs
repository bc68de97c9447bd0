//! Node configuration: a TOML file, overridden by command-line flags.

use crate::supervisor::restart::RestartPolicy;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sluice_actors::assigner::{AssignerConfig, ScheduleConfig};
use sluice_actors::autoscaler::AutoscalerConfig;
use sluice_actors::lifecycle::MigrationLimits;
use sluice_actors::mu::EstimatorConfig;
use sluice_actors::prober::ProbeConfig;
use sluice_actors::router::stall::StallConfig;
use sluice_actors::router::{KeySource, QuarantineConfig, RouterConfig, SpillPolicy};
use sluice_actors::Profile;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file; every section and field is optional.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub node: NodeSection,
    pub replicas: ReplicaSection,
    pub router: RouterSection,
    pub assigner: AssignerSection,
    pub prober: ProberSection,
    pub autoscaler: AutoscalerSection,
    /// Several models on one node, each its own fleet (replicas, profile, slices);
    /// replaces `[replicas]`' count, urls, model and profile.
    pub models: Vec<ModelSection>,
}

/// One model a node serves: its replicas (launched, or already running at `urls`) and
/// the profile that prices it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// The model's name, as requests name it (launched engines serve it); with `urls`,
    /// optional: the engines say.
    pub name: Option<String>,
    /// Replicas to launch (ignored when `urls` is set).
    pub replicas: usize,
    pub urls: Vec<String>,
    /// Default: the built-in or `profile_dir` profile calibrated for the model.
    pub profile: Option<PathBuf>,
    /// The autoscaler's bounds for this model [default: `[autoscaler]`'s].
    pub min_replicas: Option<usize>,
    pub max_replicas: Option<usize>,
    /// How long this model's engines may take to load [default: `[replicas]`'s].
    pub start_timeout_s: Option<f64>,
    /// `[router]` settings that differ for this model (its spill rule, timeouts,
    /// quarantine, migrations…); the rest are the node's.
    pub router: Option<toml::Table>,
    /// `[prober]` settings that differ for this model.
    pub prober: Option<toml::Table>,
}

/// `[router]` settings every model of a node shares: the front door reads them before
/// it knows the model (workload keys, body size), or the leader cuts every model's
/// keyspace with them.
const NODE_WIDE_ROUTER: [&str; 4] = [
    "workload_keys",
    "max_body_bytes",
    "subset_size",
    "slice_count",
];

/// The leader's autoscaler (cluster mode): the core's knobs, the bounds, and how
/// replicas are drained. Off by default: a node then runs the replicas it started with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerSection {
    pub enabled: bool,
    /// `sluice` (model-unit utilization) or `static-peak`; the request-based baselines
    /// need request counts the routers do not report to the leader, and live only in
    /// `sluice sim`.
    pub policy: String,
    pub min_replicas: usize,
    /// Default: every GPU of the cluster.
    pub max_replicas: Option<usize>,
    /// How often the leader decides (and routers report their load).
    pub tick_s: f64,
    #[serde(flatten)]
    pub core: AutoscalerConfig,
}

impl Default for AutoscalerSection {
    fn default() -> Self {
        Self {
            enabled: false,
            policy: "sluice".into(),
            min_replicas: 1,
            max_replicas: None,
            tick_s: 5.0,
            core: AutoscalerConfig::default(),
        }
    }
}

/// The autoscaler's settings, checked.
#[derive(Debug, Clone)]
pub struct LiveAutoscaler {
    pub policy: String,
    pub core: AutoscalerConfig,
    pub min_replicas: usize,
    pub max_replicas: Option<usize>,
    /// Bounds `[[models]]` set for their model, in place of the two above.
    pub per_model: std::collections::BTreeMap<String, (usize, Option<usize>)>,
    pub tick: Duration,
}

impl LiveAutoscaler {
    /// `model`'s fewest and most replicas (`None`: every GPU of the cluster).
    pub fn bounds(&self, model: &str) -> (usize, Option<usize>) {
        self.per_model
            .get(model)
            .copied()
            .unwrap_or((self.min_replicas, self.max_replicas))
    }
}

/// The health prober: the core's knobs, and whether probes jump the engine's queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProberSection {
    /// Send probes at the engine's highest scheduling priority. Turning this off only
    /// makes sense to show what it prevents (false ejections of busy replicas).
    pub prioritized: bool,
    #[serde(flatten)]
    pub core: ProbeConfig,
}

impl Default for ProberSection {
    fn default() -> Self {
        Self {
            prioritized: true,
            core: ProbeConfig::default(),
        }
    }
}

/// The assigner's rounds. With `enabled`, the node starts from the assigner's initial
/// assignment (subsets at least `router.subset_size` wide, spread over racks) and
/// rebalances it every `round_every_s`; without, the keyspace is cut uniformly into
/// `router.slice_count` slices for good.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssignerSection {
    pub enabled: bool,
    pub round_every_s: f64,
    /// Half-life of the load the rounds balance (Dicer: 120 s).
    pub half_life_s: f64,
    /// Most load a round may move to replicas that did not serve it, as a fraction.
    pub churn_budget: f64,
    /// Max/mean replica load the rounds aim under.
    pub target_imbalance: f64,
    /// Widest subset a hot slice may get.
    pub max_width: usize,
}

impl Default for AssignerSection {
    fn default() -> Self {
        let s = ScheduleConfig::default();
        Self {
            enabled: true,
            round_every_s: s.period_us as f64 / 1e6,
            half_life_s: s.half_life_s,
            churn_budget: s.assigner.churn_budget,
            target_imbalance: s.assigner.target_imbalance,
            max_width: s.assigner.max_width,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSection {
    /// Address of the OpenAI-compatible front door.
    pub http: SocketAddr,
    /// How long in-flight requests may run on after SIGINT/SIGTERM.
    pub shutdown_grace_s: f64,
    /// Cluster mode: how long the node certificates this node signs (its own renewals,
    /// nodes joining through it) are valid. Renewed at two thirds.
    pub cert_lifetime_s: f64,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_s: 30.0,
            cert_lifetime_s: sluice_transport::ca::DEFAULT_NODE_CERT_LIFETIME.as_secs_f64(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaSection {
    /// Simulated replicas to launch as child processes (ignored when `urls` is set)
    /// [default: 4; a standalone node given nothing serves [`embedded_models`]].
    pub count: Option<usize>,
    /// Already-running OpenAI-compatible engines to front instead.
    pub urls: Vec<String>,
    /// Profile file for pricing and the simulated engines; the embedded default if unset.
    pub profile: Option<PathBuf>,
    /// A folder of calibrated profiles (`*.toml`): the one calibrated for the model the
    /// engines serve prices it (without `profile`).
    pub profile_dir: Option<PathBuf>,
    /// Model name the front door serves, overriding what the engines report on
    /// `/v1/models` (rarely needed); launched simulated engines serve it.
    pub model: Option<String>,
    /// Wall-clock seconds per simulated second for launched engines; 0 = zero-delay.
    pub time_scale: f64,
    /// GPUs this host owns: the most replicas it runs [default: `count`].
    pub gpus: Option<usize>,
    /// A real engine instead of the simulated one: a command template with `{model}`,
    /// `{port}`, `{host}` and `{index}` filled in, split on whitespace (no shell), e.g.
    /// `vllm serve {model} --host {host} --port {port}`. Ready when `GET /health`
    /// answers 200.
    pub command: Option<String>,
    /// How long an engine may take to become ready (model loading).
    pub start_timeout_s: f64,
    /// How long a draining replica may finish its in-flight requests before it is stopped.
    pub drain_deadline_s: f64,
}

impl Default for ReplicaSection {
    fn default() -> Self {
        Self {
            count: None,
            urls: Vec::new(),
            profile: None,
            profile_dir: None,
            model: None,
            time_scale: 1.0,
            gpus: None,
            command: None,
            start_timeout_s: 600.0,
            drain_deadline_s: 60.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// Replicas in each slice's subset.
    pub subset_size: usize,
    /// Slices the keyspace is cut into.
    pub slice_count: usize,
    /// Leave the subset when its best load exceeds `spill_ratio × best elsewhere + spill_slack_s`.
    pub spill_ratio: f64,
    pub spill_slack_s: f64,
    /// ... unless this many of the workload's requests wait at its home for their first
    /// token (a burst): then the better score wins (0: never).
    pub spill_burst: u32,
    /// Share of a running request's remaining decode that a new request on the same
    /// replica is counted as waiting for (queued prefill counts whole), in [0, 1].
    pub decode_share: f64,
    /// Where workload keys come from, in order: `header:NAME`, `user`, `api-key`.
    pub workload_keys: Vec<String>,
    /// Output length assumed for a workload with no history.
    pub default_output_tokens: u32,
    pub max_body_bytes: usize,
    /// Bound on a non-streaming request, and on a stream's first response bytes.
    pub request_timeout_s: f64,
    /// Bound on silence between a stream's chunks.
    pub stream_idle_timeout_s: f64,
    pub connect_timeout_ms: u64,
    pub health_interval_ms: u64,
    /// A request on this many replicas as each failed is refused (0: never).
    pub quarantine_after: usize,
    /// How long such an implication counts.
    pub quarantine_window_s: f64,
    /// Times one request may be continued on another replica after its replica failed
    /// mid-answer (token-replay migration; 0 turns it off).
    pub migrations_per_request: u8,
    /// Migrations a front door starts per second, sustained, and at once.
    pub migrations_per_s: f64,
    pub migration_burst: f64,
    /// A replica whose streams have all been silent this long (and for 20 of its recent
    /// gaps between tokens) is taken for hung. Raise it where an engine may be starved
    /// of CPU for seconds without being hung (shared CPU hosts, CI).
    pub stall_floor_ms: u64,
}

impl Default for RouterSection {
    fn default() -> Self {
        let spill = SpillPolicy::default();
        let quarantine = QuarantineConfig::default();
        Self {
            subset_size: 2,
            slice_count: 64,
            spill_ratio: spill.ratio,
            spill_slack_s: spill.slack_s,
            spill_burst: spill.burst,
            decode_share: RouterConfig::default().decode_share,
            workload_keys: vec![
                "header:x-session-id".into(),
                "user".into(),
                "api-key".into(),
            ],
            default_output_tokens: RouterConfig::default().estimator.default_output,
            max_body_bytes: 16 << 20,
            request_timeout_s: 300.0,
            stream_idle_timeout_s: 30.0,
            connect_timeout_ms: 2000,
            health_interval_ms: 1000,
            quarantine_after: quarantine.limit,
            quarantine_window_s: quarantine.window_ms as f64 / 1e3,
            migrations_per_request: MigrationLimits::default().per_request,
            migrations_per_s: MigrationLimits::default().per_s,
            migration_burst: MigrationLimits::default().burst,
            stall_floor_ms: StallConfig::default().floor_ms,
        }
    }
}

/// Command-line overrides of `node start`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub http: Option<SocketAddr>,
    pub replicas: Option<usize>,
    pub replica_urls: Vec<String>,
    pub profile: Option<PathBuf>,
    pub profile_dir: Option<PathBuf>,
    pub time_scale: Option<f64>,
    pub gpus: Option<usize>,
    pub model: Option<String>,
    /// The node joins or runs a cluster (one model per node there).
    pub cluster: bool,
}

/// Replicas launched when nothing says how many.
const DEFAULT_REPLICAS: usize = 4;

/// What a standalone node given no replicas, models or profile serves: two simulated
/// models, so that routing by model shows at once.
pub fn embedded_models() -> Vec<ModelSection> {
    [
        ("llama-3.1-8b-instruct", DEFAULT_REPLICAS),
        ("llama-3.2-3b-instruct", 2),
    ]
    .into_iter()
    .map(|(name, replicas)| ModelSection {
        name: Some(name.to_owned()),
        replicas,
        ..ModelSection::default()
    })
    .collect()
}

/// One model of a node that serves several, checked.
#[derive(Debug, Clone)]
pub struct ModelFleet {
    /// `None`: the engines at `urls` say.
    pub name: Option<String>,
    pub launch: usize,
    pub urls: Vec<String>,
    pub profile_path: Option<PathBuf>,
    pub profile: Profile,
    /// Its routing and probing: the node's, with what its `[[models]]` entry changes.
    pub policy: FleetPolicy,
}

/// What each model's fleet may set apart from the node's: how its requests are routed
/// and bounded, how its replicas are probed, and how long its engines may take to start.
#[derive(Debug, Clone)]
pub struct FleetPolicy {
    pub router: RouterConfig,
    pub prober: ProbeConfig,
    pub probe_prioritized: bool,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub migration: MigrationLimits,
    pub start_timeout: Duration,
}

/// Everything `node start` needs, validated.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub http: SocketAddr,
    pub launch: usize,
    /// Every model this node serves, each its own fleet ([`NodeConfig::fleets`]); the
    /// fields `launch`, `urls`, `model`, `model_override` and `profile*` describe the
    /// first.
    pub models: Vec<ModelFleet>,
    /// GPUs this host owns (at least the replicas launched, every model's together).
    pub gpus: usize,
    /// A real engine's command template; `None`: the simulated engine.
    pub command: Option<String>,
    pub start_timeout: Duration,
    pub drain_deadline: Duration,
    /// The leader's autoscaler; `None`: off.
    pub autoscaler: Option<LiveAutoscaler>,
    pub urls: Vec<String>,
    pub profile: Profile,
    pub profile_path: Option<PathBuf>,
    /// Calibrated profiles to choose from by model (`profile_dir`), besides the
    /// built-in ones.
    pub profile_catalog: Vec<Profile>,
    /// The model: configured, else learned from the engines at start, else the
    /// profile's (see [`NodeConfig::serve_model`]).
    pub model: String,
    /// The model named by `--model` or `[replicas] model`.
    pub model_override: Option<String>,
    pub time_scale: f64,
    pub router: RouterConfig,
    pub subset_size: usize,
    pub slice_count: usize,
    /// Assigner rounds; `None`: a fixed uniform slice map.
    pub assigner: Option<ScheduleConfig>,
    pub prober: ProbeConfig,
    pub probe_prioritized: bool,
    pub key_sources: Vec<KeySource>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub stream_idle_timeout: Duration,
    /// Token-replay migration's limits.
    pub migration: MigrationLimits,
    pub connect_timeout: Duration,
    pub health_interval: Duration,
    pub shutdown_grace: Duration,
    /// How the node's actors are restarted, and when one that keeps failing stops the
    /// node.
    pub actor_restarts: RestartPolicy,
    /// How long node certificates signed here live.
    pub cert_lifetime: Duration,
}

impl NodeConfig {
    /// The node serves `model`: without a `--profile`, the built-in profile calibrated
    /// for it prices its requests; a model with none keeps the default profile (the
    /// front door warns and reports `calibrated="false"`).
    pub fn serve_model(&mut self, model: &str) {
        self.model = model.to_owned();
        if self.profile_path.is_none() && !self.profile.serves(model) {
            if let Some(p) = calibrated_profile(&self.profile_catalog, model) {
                self.price_with(p);
            }
        }
    }

    /// Routes and probes with `p` (a model's own policy).
    fn set_policy(&mut self, p: FleetPolicy) {
        self.router = p.router;
        self.prober = p.prober;
        self.probe_prioritized = p.probe_prioritized;
        self.request_timeout = p.request_timeout;
        self.stream_idle_timeout = p.stream_idle_timeout;
        self.migration = p.migration;
        self.start_timeout = p.start_timeout;
    }

    /// Prices with `profile`: the router then expects as much prefix cache as its
    /// engine has.
    fn price_with(&mut self, profile: Profile) {
        self.router.affinity.cache_tokens = profile.kv_cache_tokens();
        self.profile = profile;
    }

    /// One configuration per model this node serves (its own when it serves one): each
    /// prices by its model's profile and launches or fronts its own replicas.
    pub fn fleets(&self) -> Vec<NodeConfig> {
        if self.models.len() <= 1 {
            return vec![self.clone()];
        }
        self.models
            .iter()
            .map(|m| {
                let mut c = self.clone();
                c.models = Vec::new();
                c.launch = m.launch;
                c.urls = m.urls.clone();
                c.profile_path = m.profile_path.clone();
                c.model_override = m.name.clone();
                c.model = m.name.clone().unwrap_or_else(|| m.profile.model.clone());
                c.set_policy(m.policy.clone());
                c.price_with(m.profile.clone());
                c
            })
            .collect()
    }

    pub fn load(file: Option<&Path>, o: Overrides) -> Result<Self> {
        let (fc, raw): (FileConfig, toml::Table) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                let invalid = || format!("invalid config file {}", path.display());
                (
                    toml::from_str(&text).with_context(invalid)?,
                    toml::from_str(&text).with_context(invalid)?,
                )
            }
            None => (FileConfig::default(), toml::Table::new()),
        };
        let profile_catalog = match o.profile_dir.or(fc.replicas.profile_dir.clone()) {
            Some(dir) => load_profile_dir(&dir)?,
            None => Vec::new(),
        };
        let replicas_set = fc.replicas.count.is_some()
            || !fc.replicas.urls.is_empty()
            || fc.replicas.model.is_some()
            || fc.replicas.profile.is_some();
        let flags_set = o.replicas.is_some()
            || !o.replica_urls.is_empty()
            || o.model.is_some()
            || o.profile.is_some();
        if !fc.models.is_empty() && (replicas_set || flags_set) {
            bail!(
                "[[models]] gives each model its replicas and profile: leave out [replicas] count, \
                 urls, model and profile, and --replicas, --replica, --model and --profile"
            );
        }
        let sections = if !fc.models.is_empty() {
            fc.models.clone()
        } else if !o.cluster
            && !replicas_set
            && !flags_set
            && o.gpus.is_none()
            && fc.replicas.command.is_none()
        {
            embedded_models()
        } else {
            Vec::new()
        };
        let node_policy = fleet_policy(&fc.router, &fc.prober, fc.replicas.start_timeout_s)?;
        let models = sections
            .iter()
            .map(|m| {
                let policy = model_policy(m, &raw, &fc)?.unwrap_or_else(|| node_policy.clone());
                model_fleet(m, &profile_catalog, o.cluster, policy)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut names = std::collections::HashSet::new();
        for n in models.iter().filter_map(|m| m.name.as_deref()) {
            if !names.insert(n) {
                bail!("model '{n}' is listed twice in [[models]]");
            }
        }
        let (profile_path, model_override, urls, launch) = match models.first() {
            Some(first) => (
                first.profile_path.clone(),
                first.name.clone(),
                first.urls.clone(),
                first.launch,
            ),
            None => {
                let urls = if o.replica_urls.is_empty() {
                    fc.replicas.urls.clone()
                } else {
                    o.replica_urls
                };
                check_urls(&urls)?;
                // One replica per GPU unless told otherwise.
                let launch = if urls.is_empty() {
                    o.replicas
                        .or(o.gpus)
                        .or(fc.replicas.count)
                        .unwrap_or(DEFAULT_REPLICAS)
                } else {
                    0
                };
                (
                    o.profile.or(fc.replicas.profile.clone()),
                    o.model.or(fc.replicas.model.clone()),
                    urls,
                    launch,
                )
            }
        };
        if model_override
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            bail!("the model name must not be empty");
        }
        let profile = match (&profile_path, models.first()) {
            (_, Some(first)) => first.profile.clone(),
            (Some(p), None) => Profile::load(p)?,
            (None, None) => Profile::default_profile(),
        };
        let launched: usize = if models.is_empty() {
            launch
        } else {
            models.iter().map(|m| m.launch).sum()
        };
        let engines: usize = if models.is_empty() {
            urls.len()
        } else {
            models.iter().map(|m| m.urls.len()).sum()
        };
        // Engines given by URL run wherever they run; launched ones take this host's GPUs.
        let gpus = if launched == 0 && engines > 0 {
            engines
        } else {
            o.gpus.or(fc.replicas.gpus).unwrap_or(launched)
        };
        if gpus < launched {
            bail!("cannot start {launched} replicas on {gpus} GPUs: one replica takes one GPU");
        }
        let autoscaler = if fc.autoscaler.enabled {
            let a = &fc.autoscaler;
            if !["sluice", "static-peak"].contains(&a.policy.as_str()) {
                bail!(
                    "autoscaler.policy must be sluice or static-peak on a live cluster, got '{}'",
                    a.policy
                );
            }
            sluice_actors::autoscaler::by_name(&a.policy, &a.core, a.max_replicas.unwrap_or(1))
                .map_err(|e| anyhow::anyhow!("invalid [autoscaler] section: {e}"))?;
            if a.max_replicas.is_some_and(|m| m < a.min_replicas) {
                bail!("autoscaler.max_replicas must be at least min_replicas");
            }
            let secs = |name: &str, v: f64| -> Result<Duration> {
                if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                    Ok(Duration::from_secs_f64(v))
                } else {
                    bail!("autoscaler.{name} must be a positive number of seconds, got {v}")
                }
            };
            let mut per_model = std::collections::BTreeMap::new();
            for m in &sections {
                if m.min_replicas.is_none() && m.max_replicas.is_none() {
                    continue;
                }
                let Some(name) = m.name.clone() else {
                    bail!("a [[models]] entry with min_replicas or max_replicas needs its name");
                };
                let min = m.min_replicas.unwrap_or(a.min_replicas);
                let max = m.max_replicas.or(a.max_replicas);
                if max.is_some_and(|x| x < min) {
                    bail!("model '{name}': max_replicas must be at least min_replicas");
                }
                per_model.insert(name, (min, max));
            }
            Some(LiveAutoscaler {
                policy: a.policy.clone(),
                core: a.core.clone(),
                min_replicas: a.min_replicas,
                max_replicas: a.max_replicas,
                per_model,
                tick: secs("tick_s", a.tick_s)?,
            })
        } else {
            None
        };
        if models.is_empty()
            && urls.is_empty()
            && launch == 0
            && (gpus == 0 || autoscaler.is_none())
        {
            bail!("no replicas: set --replicas N (N ≥ 1) or give --replica URL");
        }
        if fc.replicas.command.is_some() && engines > 0 {
            bail!("replicas.command launches engines; it cannot be combined with replica URLs");
        }
        let drain_deadline = match fc.replicas.drain_deadline_s {
            t if t.is_finite() && (0.0..=86_400.0).contains(&t) => Duration::from_secs_f64(t),
            t => {
                bail!("replicas.drain_deadline_s must be a non-negative number of seconds, got {t}")
            }
        };
        let time_scale = o.time_scale.unwrap_or(fc.replicas.time_scale);
        if !(time_scale.is_finite() && time_scale >= 0.0) {
            bail!("time_scale must be a non-negative number, got {time_scale}");
        }
        let r = &fc.router;
        let key_sources = r
            .workload_keys
            .iter()
            .map(|s| s.parse::<KeySource>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        if r.subset_size == 0 || r.slice_count == 0 {
            bail!("router.subset_size and router.slice_count must be at least 1");
        }
        let assigner = if fc.assigner.enabled {
            let a = &fc.assigner;
            if !(a.round_every_s.is_finite() && a.round_every_s > 0.0) {
                bail!(
                    "assigner.round_every_s must be a positive number of seconds, got {}",
                    a.round_every_s
                );
            }
            if !(a.half_life_s.is_finite() && a.half_life_s >= 0.0) {
                bail!(
                    "assigner.half_life_s must be a non-negative number of seconds, got {}",
                    a.half_life_s
                );
            }
            let config = AssignerConfig {
                min_width: r.subset_size,
                max_width: a.max_width.max(r.subset_size),
                churn_budget: a.churn_budget,
                target_imbalance: a.target_imbalance,
                ..AssignerConfig::default()
            };
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("invalid [assigner] section: {e}"))?;
            Some(ScheduleConfig {
                period_us: (a.round_every_s * 1e6) as u64,
                half_life_s: a.half_life_s,
                assigner: config,
            })
        } else {
            None
        };
        // The first model's (the node's own when it serves one).
        let policy = models.first().map_or(node_policy, |m| m.policy.clone());
        let mut config = Self {
            http: o.http.unwrap_or(fc.node.http),
            launch,
            models,
            gpus,
            command: fc.replicas.command.clone(),
            start_timeout: policy.start_timeout,
            drain_deadline,
            autoscaler,
            urls,
            model: model_override
                .clone()
                .unwrap_or_else(|| profile.model.clone()),
            model_override,
            profile,
            profile_path,
            profile_catalog,
            time_scale,
            router: policy.router,
            subset_size: r.subset_size,
            slice_count: r.slice_count,
            assigner,
            prober: policy.prober,
            probe_prioritized: policy.probe_prioritized,
            key_sources,
            max_body_bytes: r.max_body_bytes,
            request_timeout: policy.request_timeout,
            stream_idle_timeout: policy.stream_idle_timeout,
            migration: policy.migration,
            connect_timeout: Duration::from_millis(r.connect_timeout_ms.max(1)),
            health_interval: Duration::from_millis(r.health_interval_ms.max(10)),
            shutdown_grace: match fc.node.shutdown_grace_s {
                g if g.is_finite() && (0.0..=3600.0).contains(&g) => Duration::from_secs_f64(g),
                g => bail!("node.shutdown_grace_s must be between 0 and 3600 seconds, got {g}"),
            },
            actor_restarts: RestartPolicy::default(),
            cert_lifetime: match fc.node.cert_lifetime_s {
                l if l.is_finite() && (10.0..=CERT_LIFETIME_MAX_S).contains(&l) => {
                    Duration::from_secs_f64(l)
                }
                l => bail!("node.cert_lifetime_s must be between 10 seconds and a year, got {l}"),
            },
        };
        let profile = config.profile.clone();
        config.price_with(profile);
        Ok(config)
    }
}

/// The routing and probing a fleet runs with, checked (its cache size comes with its
/// profile, [`NodeConfig::price_with`]).
fn fleet_policy(r: &RouterSection, p: &ProberSection, start_timeout_s: f64) -> Result<FleetPolicy> {
    let positive = |name: &str, v: f64| -> Result<Duration> {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            bail!("router.{name} must be a positive number of seconds, got {v}")
        }
    };
    let non_negative = |name: &str, v: f64| -> Result<f64> {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            bail!("router.{name} must be a non-negative number, got {v}")
        }
    };
    if !(r.spill_ratio.is_finite()
        && r.spill_ratio >= 1.0
        && r.spill_slack_s.is_finite()
        && r.spill_slack_s >= 0.0)
    {
        bail!("router.spill_ratio must be ≥ 1 and router.spill_slack_s ≥ 0");
    }
    if !(0.0..=1.0).contains(&r.decode_share) {
        bail!(
            "router.decode_share must be between 0 and 1, got {}",
            r.decode_share
        );
    }
    if r.stall_floor_ms < 100 {
        bail!(
            "router.stall_floor_ms must be at least 100 ms, got {}",
            r.stall_floor_ms
        );
    }
    if !(r.quarantine_window_s.is_finite() && r.quarantine_window_s > 0.0) {
        bail!(
            "router.quarantine_window_s must be a positive number of seconds, got {}",
            r.quarantine_window_s
        );
    }
    p.core
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid [prober] section: {e}"))?;
    let defaults = RouterConfig::default();
    Ok(FleetPolicy {
        router: RouterConfig {
            spill: SpillPolicy {
                ratio: r.spill_ratio,
                slack_s: r.spill_slack_s,
                burst: r.spill_burst,
            },
            decode_share: r.decode_share,
            estimator: EstimatorConfig {
                default_output: r.default_output_tokens.max(1),
                ..defaults.estimator
            },
            quarantine: QuarantineConfig {
                limit: r.quarantine_after,
                window_ms: (r.quarantine_window_s * 1e3) as u64,
                ..defaults.quarantine
            },
            stall: StallConfig {
                floor_ms: r.stall_floor_ms,
                ..defaults.stall
            },
            ..defaults
        },
        prober: p.core.clone(),
        probe_prioritized: p.prioritized,
        request_timeout: positive("request_timeout_s", r.request_timeout_s)?,
        stream_idle_timeout: positive("stream_idle_timeout_s", r.stream_idle_timeout_s)?,
        migration: MigrationLimits {
            per_request: r.migrations_per_request,
            per_s: non_negative("migrations_per_s", r.migrations_per_s)?,
            burst: non_negative("migration_burst", r.migration_burst)?,
        },
        start_timeout: match start_timeout_s {
            t if t.is_finite() && t > 0.0 && t <= 86_400.0 => Duration::from_secs_f64(t),
            t => bail!("start_timeout_s must be a positive number of seconds, got {t}"),
        },
    })
}

/// A model's own policy when its `[[models]]` entry changes any of the node's: the
/// node's `[router]` and `[prober]` tables with the entry's over them, checked as a whole.
fn model_policy(
    m: &ModelSection,
    raw: &toml::Table,
    fc: &FileConfig,
) -> Result<Option<FleetPolicy>> {
    if m.router.is_none() && m.prober.is_none() && m.start_timeout_s.is_none() {
        return Ok(None);
    }
    let label = m.name.as_deref().unwrap_or("(unnamed)");
    if let Some(t) = &m.router {
        if let Some(k) = t.keys().find(|k| NODE_WIDE_ROUTER.contains(&k.as_str())) {
            bail!("model '{label}': router.{k} is the node's, set it in [router]");
        }
    }
    fn merged<T: serde::de::DeserializeOwned>(
        raw: &toml::Table,
        section: &str,
        over: Option<&toml::Table>,
        label: &str,
    ) -> Result<T> {
        let mut table = raw
            .get(section)
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        table.extend(over.cloned().unwrap_or_default());
        toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("model '{label}': invalid [models.{section}]"))
    }
    let router: RouterSection = merged(raw, "router", m.router.as_ref(), label)?;
    let prober: ProberSection = merged(raw, "prober", m.prober.as_ref(), label)?;
    let start = m.start_timeout_s.unwrap_or(fc.replicas.start_timeout_s);
    fleet_policy(&router, &prober, start)
        .map(Some)
        .with_context(|| format!("model '{label}'"))
}

/// The longest `[node] cert_lifetime_s` (a year).
const CERT_LIFETIME_MAX_S: f64 = 365.0 * 86_400.0;

/// The profile calibrated for `model`: from `profile_dir`, else built in.
fn calibrated_profile(catalog: &[Profile], model: &str) -> Option<Profile> {
    catalog
        .iter()
        .find(|p| p.serves(model))
        .cloned()
        .or_else(|| Profile::embedded_for(model))
}

/// Replica URLs must be plain `http://` addresses.
fn check_urls(urls: &[String]) -> Result<()> {
    for u in urls {
        if !(u.starts_with("http://") && u.len() > "http://".len()) {
            bail!("replica URL '{u}' must start with http:// (for example http://127.0.0.1:8000)");
        }
    }
    Ok(())
}

/// A `[[models]]` entry, checked, with the profile that prices it: its own file, else
/// the one `profile_dir` or the binary has calibrated for it, else the default.
/// In a cluster a model may have no replica here: the node routes it to other nodes',
/// and the autoscaler may place some here.
fn model_fleet(
    m: &ModelSection,
    catalog: &[Profile],
    cluster: bool,
    policy: FleetPolicy,
) -> Result<ModelFleet> {
    let name = m.name.as_deref().map(str::trim);
    if name.is_some_and(str::is_empty) {
        bail!("a [[models]] entry's name must not be empty");
    }
    check_urls(&m.urls)?;
    let label = name.unwrap_or("(unnamed)");
    if m.urls.is_empty() && m.replicas == 0 && !cluster {
        bail!("model '{label}' has no replicas: set replicas = N (N ≥ 1) or urls");
    }
    if m.urls.is_empty() && name.is_none() {
        bail!("a [[models]] entry without urls needs a name (the model its replicas serve)");
    }
    let profile = match (&m.profile, name) {
        (Some(p), _) => Profile::load(p)?,
        (None, Some(n)) => calibrated_profile(catalog, n).unwrap_or_else(Profile::default_profile),
        (None, None) => Profile::default_profile(),
    };
    Ok(ModelFleet {
        name: name.map(str::to_owned),
        launch: if m.urls.is_empty() { m.replicas } else { 0 },
        urls: m.urls.clone(),
        profile_path: m.profile.clone(),
        profile,
        policy,
    })
}

/// Every profile in `dir` (`*.toml`), each checked; a bad one is an error naming it.
fn load_profile_dir(dir: &Path) -> Result<Vec<Profile>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the profile folder {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| Profile::load(p).map_err(anyhow::Error::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The configuration a file holding `text` gives, with `o` on top; an error with its
    /// whole chain.
    fn load_text(text: &str, o: Overrides) -> Result<NodeConfig, String> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{text}").unwrap();
        NodeConfig::load(Some(f.path()), o).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn a_standalone_node_given_nothing_serves_two_simulated_models() {
        let c = NodeConfig::load(None, Overrides::default()).unwrap();
        assert_eq!(c.key_sources.len(), 3);
        assert_eq!(c.gpus, 6);
        let fleets = c.fleets();
        let shape: Vec<(&str, usize, &str)> = fleets
            .iter()
            .map(|f| (f.model.as_str(), f.launch, f.profile.model.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                ("llama-3.1-8b-instruct", 4, "llama-3.1-8b-instruct"),
                ("llama-3.2-3b-instruct", 2, "llama-3.2-3b-instruct")
            ]
        );
        for f in &fleets {
            // Each fleet's router expects as much prefix cache as its engine has.
            assert_eq!(f.router.affinity.cache_tokens, f.profile.kv_cache_tokens());
            assert_eq!(f.model_override.as_deref(), Some(f.model.as_str()));
        }
        // A cluster node, or one given replicas, serves the default model alone.
        let cluster = Overrides {
            cluster: true,
            ..Overrides::default()
        };
        let c = NodeConfig::load(None, cluster).unwrap();
        assert_eq!((c.launch, c.model.as_str()), (4, "llama-3.1-8b-instruct"));
        assert_eq!(c.fleets().len(), 1);
        let three = Overrides {
            replicas: Some(3),
            ..Overrides::default()
        };
        let c = NodeConfig::load(None, three).unwrap();
        assert_eq!((c.fleets().len(), c.launch, c.gpus), (1, 3, 3));
        // `--gpus N` alone: one replica per GPU of the default model.
        let gpus = Overrides {
            gpus: Some(3),
            ..Overrides::default()
        };
        let c = NodeConfig::load(None, gpus).unwrap();
        assert_eq!((c.fleets().len(), c.launch, c.gpus), (1, 3, 3));
    }

    #[test]
    fn a_model_may_route_and_probe_apart_from_the_nodes_defaults() {
        let load = |text: &str| load_text(text, Overrides::default());
        let c = load(
            "[router]\nrequest_timeout_s = 100\nspill_ratio = 1.5\n\
             [prober]\nprobe_timeout_ms = 4000\n\
             [[models]]\nname = \"big\"\nreplicas = 1\nstart_timeout_s = 1800\n\
             [models.router]\nrequest_timeout_s = 900\nspill_burst = 0\n\
             [models.prober]\nprobe_timeout_ms = 20000\n\
             [[models]]\nname = \"small\"\nreplicas = 1",
        )
        .unwrap();
        let f = c.fleets();
        let seen: Vec<(&str, u64, f64, u64, u64)> = f
            .iter()
            .map(|f| {
                (
                    f.model.as_str(),
                    f.request_timeout.as_secs(),
                    f.router.spill.ratio,
                    f.prober.probe_timeout_ms,
                    f.start_timeout.as_secs(),
                )
            })
            .collect();
        // The big model's own timeouts; what it leaves alone, and the small model
        // wholly, are the node's.
        assert_eq!(
            seen,
            [
                ("big", 900, 1.5, 20_000, 1_800),
                ("small", 100, 1.5, 4_000, 600)
            ]
        );
        let bursts: Vec<u32> = f.iter().map(|f| f.router.spill.burst).collect();
        assert_eq!(bursts, [0, SpillPolicy::default().burst]);
        // Each fleet's cache is its own profile's.
        assert_eq!(
            f[0].router.affinity.cache_tokens,
            f[0].profile.kv_cache_tokens()
        );
        for (text, named) in [
            (
                "[[models]]\nname = \"a\"\nreplicas = 1\n[models.router]\nworkload_keys = [\"user\"]",
                "router.workload_keys is the node's",
            ),
            (
                "[[models]]\nname = \"a\"\nreplicas = 1\n[models.router]\nspill_ratio = 0.5",
                "model 'a': router.spill_ratio must be ≥ 1",
            ),
            (
                "[[models]]\nname = \"a\"\nreplicas = 1\n[models.router]\nspil_ratio = 2",
                "model 'a': invalid [models.router]",
            ),
            (
                "[[models]]\nname = \"a\"\nreplicas = 1\nstart_timeout_s = 0",
                "model 'a': start_timeout_s must be a positive number",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn models_are_listed_each_with_its_replicas_and_profile() {
        let load = load_text;
        let c = load(
            "[[models]]\nname = \"llama-3.2-3b-instruct\"\nreplicas = 1\n\
             [[models]]\nname = \"my-model\"\nreplicas = 2\n\
             [[models]]\nurls = [\"http://127.0.0.1:9000\"]",
            Overrides::default(),
        )
        .unwrap();
        // GPUs for the launched replicas of every model together, unless given.
        assert_eq!(c.gpus, 3);
        let more = Overrides {
            gpus: Some(8),
            ..Overrides::default()
        };
        let c8 = load("[[models]]\nname = \"a\"\nreplicas = 1", more).unwrap();
        assert_eq!((c8.gpus, c8.launch), (8, 1));
        let fleets = c.fleets();
        assert_eq!(fleets.len(), 3);
        assert_eq!(fleets[0].profile.model, "llama-3.2-3b-instruct");
        // A model nobody calibrated is priced by the default profile (and said so).
        assert_eq!(
            (fleets[1].model.as_str(), fleets[1].launch),
            ("my-model", 2)
        );
        assert_eq!(fleets[1].profile.model, "llama-3.1-8b-instruct");
        // Engines given by URL say what they serve.
        assert_eq!(fleets[2].model_override, None);
        assert_eq!(fleets[2].urls, ["http://127.0.0.1:9000"]);
        // A cluster node may route a model it runs no replica of (other nodes do, or the
        // autoscaler places some here).
        let cluster = Overrides {
            cluster: true,
            ..Overrides::default()
        };
        let c = load(
            "[[models]]\nname = \"a\"\nreplicas = 1\n[[models]]\nname = \"b\"",
            cluster,
        )
        .unwrap();
        let launches: Vec<usize> = c.fleets().iter().map(|f| f.launch).collect();
        assert_eq!(launches, [1, 0]);
        // Each model may bound its own replica count.
        let scaled = load(
            "[autoscaler]\nenabled = true\nmin_replicas = 2\nmax_replicas = 6\n\
             [[models]]\nname = \"a\"\nreplicas = 1\nmax_replicas = 3\n\
             [[models]]\nname = \"b\"",
            Overrides {
                cluster: true,
                ..Overrides::default()
            },
        )
        .unwrap()
        .autoscaler
        .unwrap();
        assert_eq!(scaled.bounds("a"), (2, Some(3)));
        assert_eq!(scaled.bounds("b"), (2, Some(6)));
        let e = load(
            "[autoscaler]\nenabled = true\n[[models]]\nname = \"a\"\nreplicas = 1\n\
             min_replicas = 4\nmax_replicas = 3",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(e.contains("model 'a': max_replicas"), "{e}");
        for (text, o, needle) in [
            (
                "[[models]]\nname = \"a\"\nreplicas = 1\n[[models]]\nname = \"a\"\nreplicas = 1",
                Overrides::default(),
                "listed twice",
            ),
            (
                "[[models]]\nname = \"a\"",
                Overrides::default(),
                "has no replicas",
            ),
            (
                "[[models]]\nreplicas = 2",
                Overrides::default(),
                "needs a name",
            ),
            (
                "[[models]]\nname = \"a\"\nreplicas = 1\n[replicas]\ncount = 2",
                Overrides::default(),
                "leave out [replicas]",
            ),
            (
                "[[models]]\nname = \"a\"\nreplicas = 1",
                Overrides {
                    model: Some("b".into()),
                    ..Overrides::default()
                },
                "--model",
            ),
            (
                "[[models]]\nname = \"a\"\nreplicas = 3\n[replicas]\ngpus = 2",
                Overrides::default(),
                "on 2 GPUs",
            ),
            (
                "[[models]]\nname = \"a\"\nurls = [\"localhost:1\"]",
                Overrides::default(),
                "http://",
            ),
        ] {
            let e = load(text, o).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn the_served_model_picks_its_calibrated_profile_from_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = sluice_actors::profile::DEFAULT_PROFILE_TOML
            .replace(
                "model = \"llama-3.1-8b-instruct\"",
                "model = \"tiny-llama\"",
            )
            .replace("capacity_mu_per_min = ", "capacity_mu_per_min = 1");
        std::fs::write(dir.path().join("tiny.toml"), &tiny).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a profile").unwrap();
        let o = || Overrides {
            profile_dir: Some(dir.path().to_owned()),
            ..Overrides::default()
        };
        let mut c = NodeConfig::load(None, o()).unwrap();
        c.serve_model("tiny-llama");
        assert_eq!(c.profile.model, "tiny-llama");
        assert_ne!(
            c.profile.capacity_mu_per_min,
            Profile::default_profile().capacity_mu_per_min
        );
        let mut other = NodeConfig::load(None, o()).unwrap();
        other.serve_model("qwen");
        assert_eq!(
            (other.model.as_str(), other.profile.model.as_str()),
            ("qwen", "llama-3.1-8b-instruct")
        );
        // A broken profile in the folder is named.
        std::fs::write(dir.path().join("broken.toml"), "model = 3").unwrap();
        let err = NodeConfig::load(None, o()).unwrap_err().to_string();
        assert!(err.contains("broken.toml"), "{err}");
    }

    #[test]
    fn file_and_flags_combine_and_errors_name_the_problem() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[router]\nsubset_size = 3\nworkload_keys = [\"user\"]\n[replicas]\ncount = 2"
        )
        .unwrap();
        let c = NodeConfig::load(
            Some(f.path()),
            Overrides {
                replicas: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((c.launch, c.subset_size, c.key_sources.len()), (5, 3, 1));

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "[router]\nsubset_sise = 3").unwrap();
        let e = format!(
            "{:#}",
            NodeConfig::load(Some(bad.path()), Overrides::default()).unwrap_err()
        );
        assert!(e.contains("subset_sise"), "{e}");

        // A router setting out of range is named; one in range is taken.
        let router = |line: &str| load_text(&format!("[router]\n{line}"), Overrides::default());
        for (bad, named) in [
            ("decode_share = 1.5", "router.decode_share"),
            ("stall_floor_ms = 20", "router.stall_floor_ms"),
        ] {
            let e = router(bad).unwrap_err();
            assert!(e.contains(named), "{bad}: {e}");
        }
        assert_eq!(
            router("decode_share = 0.5").unwrap().router.decode_share,
            0.5
        );
        let c = router("stall_floor_ms = 30000").unwrap();
        assert_eq!(c.router.stall.floor_ms, 30_000);
        let plain = NodeConfig::load(None, Overrides::default()).unwrap();
        assert_eq!(plain.router.stall, StallConfig::default());

        // Node certificates: a day by default, 10 s to a year.
        assert_eq!(c.cert_lifetime, Duration::from_secs(86_400));
        for (lifetime, ok) in [("5", false), ("10", true), ("1e9", false), ("nan", false)] {
            let r = load_text(
                &format!("[node]\ncert_lifetime_s = {lifetime}"),
                Overrides::default(),
            );
            match ok {
                true => assert_eq!(r.unwrap().cert_lifetime, Duration::from_secs(10)),
                false => {
                    let e = r.unwrap_err();
                    assert!(e.contains("node.cert_lifetime_s"), "{lifetime}: {e}");
                }
            }
        }

        let e = NodeConfig::load(
            None,
            Overrides {
                replica_urls: vec!["localhost:1".into()],
                ..Default::default()
            },
        );
        assert!(e.unwrap_err().to_string().contains("http://"));
        let e = NodeConfig::load(
            None,
            Overrides {
                replicas: Some(0),
                ..Default::default()
            },
        );
        assert!(e.unwrap_err().to_string().contains("no replicas"));
    }

    #[test]
    fn assigner_section_is_checked_and_follows_the_subset_size() {
        let c = NodeConfig::load(None, Overrides::default()).unwrap();
        let a = c.assigner.unwrap();
        assert_eq!(a.period_us, 60_000_000);
        assert_eq!(a.assigner.min_width, c.subset_size);
        for (text, needle) in [
            ("[assigner]\nround_every_s = 0", "round_every_s"),
            ("[assigner]\nchurn_budget = 2.0", "churn_budget"),
            ("[assigner]\ntarget_imbalance = 0.5", "target_imbalance"),
        ] {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            writeln!(f, "{text}").unwrap();
            let e = format!(
                "{:#}",
                NodeConfig::load(Some(f.path()), Overrides::default()).unwrap_err()
            );
            assert!(e.contains(needle), "{e}");
        }
        let mut off = tempfile::NamedTempFile::new().unwrap();
        writeln!(off, "[assigner]\nenabled = false").unwrap();
        let c = NodeConfig::load(Some(off.path()), Overrides::default()).unwrap();
        assert!(c.assigner.is_none());
    }

    #[test]
    fn quarantine_settings_are_read_and_checked() {
        let c = NodeConfig::load(None, Overrides::default()).unwrap();
        assert_eq!(c.router.quarantine, QuarantineConfig::default());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[router]\nquarantine_after = 0\nquarantine_window_s = 30"
        )
        .unwrap();
        let c = NodeConfig::load(Some(f.path()), Overrides::default()).unwrap();
        assert_eq!(
            (c.router.quarantine.limit, c.router.quarantine.window_ms),
            (0, 30_000)
        );
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "[router]\nquarantine_window_s = -1").unwrap();
        let e = format!(
            "{:#}",
            NodeConfig::load(Some(bad.path()), Overrides::default()).unwrap_err()
        );
        assert!(e.contains("quarantine_window_s"), "{e}");
    }

    #[test]
    fn gpus_and_the_autoscaler_section_are_checked() {
        let load = |text: &str, o: Overrides| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            writeln!(f, "{text}").unwrap();
            NodeConfig::load(Some(f.path()), o).map_err(|e| format!("{e:#}"))
        };
        let c = load("", Overrides::default()).unwrap();
        // The embedded default's two models: 4 + 2 replicas.
        assert_eq!((c.gpus, c.autoscaler.is_none()), (6, true));
        let o = |r, g| Overrides {
            replicas: Some(r),
            gpus: Some(g),
            ..Default::default()
        };
        assert!(load("", o(3, 2)).unwrap_err().contains("on 2 GPUs"));
        // No replica at start is fine when the autoscaler may place some here.
        assert!(load("", o(0, 2)).unwrap_err().contains("no replicas"));
        let c = load(
            "[autoscaler]\nenabled = true\nmin_replicas = 2\ntick_s = 1\nup_window_s = 3",
            o(0, 2),
        )
        .unwrap();
        let a = c.autoscaler.unwrap();
        assert_eq!(
            (a.min_replicas, a.tick, a.core.up_window_s),
            (2, Duration::from_secs(1), 3.0)
        );
        for (text, needle) in [
            ("[autoscaler]\nenabled = true\npolicy = \"kpa\"", "policy"),
            ("[autoscaler]\nenabled = true\ntick_s = 0", "tick_s"),
            (
                "[autoscaler]\nenabled = true\ntarget_utilization = 2",
                "target_utilization",
            ),
            (
                "[autoscaler]\nenabled = true\nmin_replicas = 3\nmax_replicas = 2",
                "max_replicas",
            ),
            ("[autoscaler]\ntik_s = 1", "tik_s"),
            ("[replicas]\nstart_timeout_s = -1", "start_timeout_s"),
        ] {
            let e = load(text, Overrides::default()).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn prober_section_reads_and_checks() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[prober]\nprioritized = false\nidle_window_ms = 2000").unwrap();
        let c = NodeConfig::load(Some(f.path()), Overrides::default()).unwrap();
        assert!(!c.probe_prioritized);
        assert_eq!(c.prober.idle_window_ms, 2000);
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "[prober]\nidle_windw_ms = 2000").unwrap();
        let e = format!(
            "{:#}",
            NodeConfig::load(Some(bad.path()), Overrides::default()).unwrap_err()
        );
        assert!(e.contains("idle_windw_ms"), "{e}");
    }
}
