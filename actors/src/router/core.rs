//! The router's decision state: price, slice, replica choice, in-flight accounting and
//! passive health, as one deterministic state machine fed by the front door with
//! explicit clock values. The HTTP shell only moves bytes.

use super::affinity::{AffinityConfig, PrefixAffinity};
use super::blast_radius::{self, BlastRadius};
use super::blocks::{PromptBlocks, BLOCK_BYTES};
use super::choice::{choose, Candidate, ColdReplicas, SpillPolicy};
use super::conversation::Conversations;
use super::health::{EjectionPolicy, PassiveHealth};
use super::id_map::{IdMap, IdSet};
use super::ledger::{Charge, Ledger, ReplicaInflight, RequestId};
use super::load_order::LoadOrder;
use super::prefix_index::PrefixIndex;
use super::quarantine::{Implication, Quarantine, QuarantineConfig, Verdict};
use super::stall::{Awaited, StallConfig, StreamStalls};
use super::waiting::Waiting;
use super::workload::anonymous_key;
use crate::assigner::{LoadMeter, LoadReport, DEFAULT_BUCKET_BITS};
use crate::mu::{
    EstimatorConfig, InflightCost, MuCoefficients, OutputEstimator, RequestShape, TokenScale,
};
use crate::slice::{Assignment, ReplicaId, SliceKey};
use std::collections::HashMap;

/// Tunables of the router core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    pub spill: SpillPolicy,
    pub ejection: EjectionPolicy,
    pub estimator: EstimatorConfig,
    /// Where workloads' prefixes are expected to be cached (per-replica pricing).
    pub affinity: AffinityConfig,
    /// The share of a running request's remaining decode that delays a request arriving
    /// on its replica (see [`Charge`]). Default 0.3: on the reference profile a decode
    /// token is charged 113 µs of step time, of which the sequence's own marginal cost
    /// is 35 µs; the rest is the step's fixed cost, paid whether it runs or not. (The
    /// queued prefill always counts whole.)
    pub decode_share: f64,
    /// Weight of avoidable prefill (work a warm replica would skip) in the choice, on top
    /// of the request's own wait: 1 counts the capacity it takes from whoever comes next
    /// on that replica once.
    pub waste_weight: f64,
    /// Buckets (`2^bits`) of the keyspace the admitted load is measured in, for the
    /// assigner.
    pub load_bucket_bits: u32,
    /// How requests implicated in replica failures are held in.
    pub quarantine: QuarantineConfig,
    /// When a replica's silent streams make it hung.
    pub stall: StallConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            spill: SpillPolicy::default(),
            ejection: EjectionPolicy::default(),
            estimator: EstimatorConfig::default(),
            affinity: AffinityConfig::default(),
            decode_share: 0.3,
            waste_weight: 1.0,
            load_bucket_bits: DEFAULT_BUCKET_BITS,
            quarantine: QuarantineConfig::default(),
            stall: StallConfig::default(),
        }
    }
}

/// How often, by default, a router shares its in-flight load per replica (and its
/// words: implications, stalls, replicas heard from) with the others. Between two
/// shares the others place blind to what it placed, so a burst can herd onto a replica
/// every router thinks idle; a fifth of a second keeps that window short.
pub const LOAD_SHARE_MS: u64 = 200;

/// Most implications a router announces in one gossip round (the newest).
pub const ANNOUNCED_AT_MOST: usize = 512;

/// How long a router keeps telling the others that it took a replica for hung: several
/// gossip rounds, and less than any engine restart, so the word is never taken for news
/// about the restarted engine (the prober also ignores word older than a restart).
pub const STALLS_ANNOUNCED_FOR_MS: u64 = 3_000;

/// How far back a router tells the others which replicas it heard from: two gossip
/// rounds, so that one lost round does not leave a busy replica silent to them.
pub const HEARD_ANNOUNCED_FOR_MS: u64 = 2_000;

/// A replica the router may send to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaSpec {
    pub id: ReplicaId,
    pub capacity_mu_per_min: f64,
    /// The machine it runs on (a node id) and its rack ([`ReplicaSpec::rack_of`]): what
    /// killed one replica may have killed its neighbours too, so a retry looks in other
    /// racks first, then on other machines.
    pub host: u64,
    pub rack: u64,
}

impl ReplicaSpec {
    /// A rack's name as a [`ReplicaSpec::rack`].
    pub fn rack_of(name: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(name.as_bytes())
    }
}

/// What the router knows of a request at admission.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Admission<'a> {
    /// The request's explicit workload key (session header, `user`, API key); `None`:
    /// the router derives a conversation identity from `blocks`.
    pub workload: Option<SliceKey>,
    /// The prompt's content as block hashes ([`NO_CONTENT`](super::blocks::NO_CONTENT) when unknown).
    pub blocks: &'a PromptBlocks,
    pub input_tokens: u32,
    pub images: u32,
    pub max_tokens: Option<u32>,
    /// Completions requested per prompt (`n`); each is charged.
    pub n: u32,
    /// Identifies the request across retries (a hash of its body), for quarantine;
    /// `None`: never confined or refused.
    pub fingerprint: Option<u64>,
    /// Its tenant's bound on the replicas it may reach; `None`: the whole fleet.
    pub radius: Option<BlastRadius>,
    /// The answer streams back: its first token is awaited from each replica it is
    /// sent to, and a replica from which none comes, nor anything else, is judged hung
    /// ([`super::stall`]).
    pub stream: bool,
}

/// Where a request goes and what it is charged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub id: RequestId,
    pub replica: ReplicaId,
    /// Start key of the slice the request belongs to.
    pub slice: SliceKey,
    pub spilled: bool,
    pub mu: f64,
}

/// Token counts a finished request reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
}

/// A replica as the router sees it now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaView {
    pub id: ReplicaId,
    pub available: bool,
    pub capacity_mu_per_min: f64,
    pub inflight: ReplicaInflight,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    /// The cost model on the replica it was placed on.
    cost: InflightCost,
    workload: SliceKey,
    /// Prompt tokens in the engine's count (the stand-in's, scaled).
    input_tokens: u32,
    /// Prompt tokens as the stand-in tokenizer counted them at admission.
    counted_input: u32,
    images: u32,
    /// Estimated output tokens over all `n` choices.
    output: u32,
    max_tokens: Option<u32>,
    /// Prompt tokens expected cached on the chosen replica.
    expected_cached: u32,
    /// KV tokens counted as written to the chosen replica at placement.
    charged_kv: u64,
    replica: ReplicaId,
    slice: SliceKey,
    generated: u32,
    /// When its latest tokens came back from its current replica (`None` before its
    /// first token there).
    last_token_ms: Option<u64>,
    /// A stream: whether its first token is awaited from each replica.
    stream: bool,
    /// Sent to its current replica and nothing back from there yet: when, and how long
    /// the work queued there up to it (its own prefill included) should take.
    awaiting: Option<(u64, u64)>,
    n: u32,
    fingerprint: Option<u64>,
    radius: Option<BlastRadius>,
}

/// A request's prompt as the prefix index sees it.
#[derive(Debug, Clone)]
struct Content {
    /// Its full blocks' chained hashes.
    chain: Vec<u64>,
    /// Its length in bytes.
    bytes: usize,
    /// Leading blocks many conversations share.
    shared: usize,
    /// Leading blocks the chosen replica was expected to hold.
    held: usize,
}

#[derive(Debug, Clone, Copy)]
struct ReplicaEntry {
    spec: ReplicaSpec,
    /// Last verdict of the active health check.
    checked_healthy: bool,
    passive: PassiveHealth,
}

#[derive(Debug, Clone)]
pub struct RouterCore {
    coeffs: MuCoefficients,
    config: RouterConfig,
    assignment: Assignment,
    /// The slices the last new generation moved (indices into `assignment`).
    moved: Vec<usize>,
    replicas: Vec<ReplicaEntry>,
    /// Where each replica sits in `replicas`.
    slots: IdMap<ReplicaId, usize>,
    /// The replicas the router may send to, least queued first.
    order: LoadOrder,
    /// The largest replica's capacity, MU/min.
    max_capacity: f64,
    ledger: Ledger,
    estimator: OutputEstimator,
    affinity: PrefixAffinity,
    active: IdMap<RequestId, Active>,
    next_id: RequestId,
    meter: LoadMeter,
    /// In-flight load other routers reported on each replica (MU, requests).
    external: IdMap<ReplicaId, f64>,
    quarantine: Quarantine,
    /// Streams' progress per replica: a replica whose streams all stopped is hung.
    stalls: StreamStalls,
    /// Engine prompt tokens per stand-in token, learned from usage.
    token_scale: TokenScale,
    /// Where unkeyed prompts fan out, for their conversation identity.
    conversations: Conversations,
    /// Which replica holds which prompt blocks.
    index: PrefixIndex,
    /// What is known of the content of each request in flight.
    contents: IdMap<RequestId, Content>,
    /// Replicas whose engines report cached prompt tokens (so a report of none means a
    /// miss, not silence).
    reports_cached: IdSet<ReplicaId>,
    /// Per replica, the share of the index's expected cached blocks its engine found.
    reliability: IdMap<ReplicaId, f64>,
    /// The fleet in each bounded tenant's rendezvous order (rebuilt with the fleet).
    radius_ranks: HashMap<u64, Vec<ReplicaId>>,
    /// Requests in flight with no token back yet, per workload and replica.
    waiting: Waiting,
}

impl RouterCore {
    pub fn new(
        coeffs: MuCoefficients,
        config: RouterConfig,
        replicas: &[ReplicaSpec],
        assignment: Assignment,
    ) -> Self {
        let mut core = Self {
            coeffs,
            config,
            assignment,
            moved: Vec::new(),
            replicas: Vec::new(),
            slots: IdMap::default(),
            order: LoadOrder::default(),
            max_capacity: 0.0,
            ledger: Ledger::new(),
            estimator: OutputEstimator::new(config.estimator),
            affinity: PrefixAffinity::new(config.affinity),
            active: IdMap::default(),
            next_id: 1,
            meter: LoadMeter::new(config.load_bucket_bits, 0),
            external: IdMap::default(),
            quarantine: Quarantine::new(config.quarantine),
            stalls: StreamStalls::new(config.stall),
            token_scale: TokenScale::default(),
            conversations: Conversations::default(),
            index: PrefixIndex::default(),
            contents: IdMap::default(),
            reports_cached: Default::default(),
            reliability: IdMap::default(),
            radius_ranks: HashMap::new(),
            waiting: Waiting::default(),
        };
        core.install(
            replicas
                .iter()
                .map(|&spec| ReplicaEntry {
                    spec,
                    checked_healthy: true,
                    passive: PassiveHealth::default(),
                })
                .collect(),
        );
        core
    }

    /// Engine prompt tokens per token of the stand-in tokenizer, as learned so far.
    pub fn token_scale(&self) -> f64 {
        self.token_scale.ratio()
    }

    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// What `a` costs with nothing cached: the price admission control charges before
    /// the request is placed (placement may then find a cheaper, warm replica).
    pub fn quote(&self, a: &Admission) -> f64 {
        let output = self
            .estimator
            .estimate(a.workload.unwrap_or_else(anonymous_key).0, a.max_tokens)
            .saturating_mul(a.n.max(1));
        self.coeffs.price(&RequestShape {
            uncached_input: self.token_scale.apply(a.input_tokens),
            cached_input: 0,
            output,
            images: a.images,
        })
    }

    /// Prices `a` and picks its replica; `None` when no replica is available.
    pub fn place(&mut self, a: &Admission, now_ms: u64) -> Option<Placement> {
        let seen = self.conversations.identify(a.blocks);
        let workload = a
            .workload
            .or(seen.map(|s| s.key))
            .unwrap_or_else(anonymous_key);
        let estimated_output = self.estimator.estimate(workload.0, a.max_tokens);
        let n = a.n.max(1);
        let max_tokens = a.max_tokens.map(|m| m.saturating_mul(n));
        let output = estimated_output.saturating_mul(n);
        let id = self.next_id;
        self.next_id += 1;
        let active = Active {
            cost: InflightCost::new(RequestShape::default(), max_tokens),
            workload,
            input_tokens: self.token_scale.apply(a.input_tokens),
            counted_input: a.input_tokens,
            images: a.images,
            output,
            max_tokens,
            expected_cached: 0,
            charged_kv: 0,
            replica: ReplicaId(0),
            slice: workload,
            generated: 0,
            last_token_ms: None,
            stream: a.stream,
            awaiting: None,
            n: a.n.max(1),
            fingerprint: a.fingerprint,
            radius: a.radius,
        };
        self.active.insert(id, active);
        if let Some(seen) = seen {
            self.contents.insert(
                id,
                Content {
                    chain: a.blocks.full.clone(),
                    bytes: a.blocks.bytes,
                    shared: seen.shared_blocks,
                    held: 0,
                },
            );
        }
        let placed = self.assign(id, &[], now_ms);
        match placed {
            Some(p) => self.meter.record(workload, p.mu),
            None => {
                self.active.remove(&id);
                self.contents.remove(&id);
            }
        }
        placed
    }

    /// The request could not reach `failed` (nothing was sent to the client yet):
    /// count the failure against the replica and place the request elsewhere.
    pub fn retry(&mut self, id: RequestId, failed: ReplicaId, now_ms: u64) -> Option<Placement> {
        self.on_replica_failure(failed, now_ms);
        if let Some(a) = self.active.get_mut(&id) {
            if a.last_token_ms.take().is_some() {
                self.stalls.ended(failed);
            }
            self.affinity.on_failed(a.workload.0, failed);
        }
        let mut placed = None;
        for away in self.away_from(failed) {
            placed = self.assign(id, &away, now_ms);
            if placed.is_some() {
                break;
            }
        }
        if placed.is_none() {
            self.finish(id, None);
        }
        placed
    }

    /// How long `mu` of work takes on `replica` at its capacity, ms.
    fn mu_ms(&self, replica: ReplicaId, mu: f64) -> u64 {
        let capacity = self
            .slots
            .get(&replica)
            .map_or(0.0, |&i| self.replicas[i].spec.capacity_mu_per_min);
        if capacity <= 0.0 {
            return 0;
        }
        (mu / capacity * 60_000.0) as u64
    }

    /// How long the work queued on `replica` should take at its capacity: this
    /// router's and what the others report (each router holds only its share).
    fn queue_ms(&self, replica: ReplicaId) -> u64 {
        self.mu_ms(replica, self.inflight(replica))
    }

    /// What a retry after `failed` excludes, widest first: its rack, its machine, itself
    /// (each only while it differs from the one before).
    fn away_from(&self, failed: ReplicaId) -> Vec<Vec<ReplicaId>> {
        let Some(f) = self.slots.get(&failed).map(|&i| self.replicas[i].spec) else {
            return vec![vec![failed]];
        };
        let around = |near: &dyn Fn(&ReplicaSpec) -> bool| -> Vec<ReplicaId> {
            self.replicas
                .iter()
                .filter(|r| r.spec.id == failed || near(&r.spec))
                .map(|r| r.spec.id)
                .collect()
        };
        let mut levels = vec![
            around(&|r| r.rack == f.rack),
            around(&|r| r.host == f.host),
            vec![failed],
        ];
        levels.dedup();
        levels
    }

    /// Whether a request with this fingerprint is routed, kept in its subset or refused.
    pub fn verdict(&self, fingerprint: u64, now_ms: u64) -> Verdict {
        self.quarantine.verdict(fingerprint, now_ms)
    }

    /// Breaks ties between equally loaded replicas outside a request's home in an order
    /// of `salt`'s own (see [`LoadOrder::spread_ties`]): every router of a cluster
    /// should have its own.
    pub fn spread_ties(&mut self, salt: u64) {
        self.order.spread_ties(salt);
    }

    /// Whether request `id`'s fingerprint is now refused by the quarantine, and after
    /// how many replicas.
    pub fn refused(&self, id: RequestId, now_ms: u64) -> Option<usize> {
        let fp = self.active.get(&id)?.fingerprint?;
        match self.quarantine.verdict(fp, now_ms) {
            Verdict::Refused { replicas } => Some(replicas),
            _ => None,
        }
    }

    /// Request `id` was on `replica` when the replica failed (it hung, broke off the
    /// answer, or went silent): the request may be what broke it.
    pub fn implicate(&mut self, id: RequestId, replica: ReplicaId, now_ms: u64) {
        if let Some(fp) = self.active.get(&id).and_then(|a| a.fingerprint) {
            self.quarantine.implicate(fp, replica, now_ms);
        }
    }

    /// The implications this router knows that still count — its own and those it
    /// heard — newest first, at most [`ANNOUNCED_AT_MOST`]. Routers re-announce them every
    /// gossip round while they count, so that one that restarted or missed a round
    /// learns them again from any other: the quarantine outlives any one node.
    pub fn announced_implications(&mut self, now_ms: u64) -> Vec<Implication> {
        let mut all = self.quarantine.recent(now_ms, u64::MAX);
        all.sort_by_key(|i| (i.age_ms, i.fingerprint, i.replica));
        all.truncate(ANNOUNCED_AT_MOST);
        all
    }

    /// Implications other routers reported.
    pub fn merge_implications(&mut self, from: &[Implication], now_ms: u64) {
        self.quarantine.merge(from, now_ms);
    }

    /// The request's shape on a replica expected to hold `cached` of its prompt tokens.
    fn shape(a: &Active, cached: u32) -> RequestShape {
        let cached = cached.min(a.input_tokens);
        RequestShape {
            uncached_input: a.input_tokens - cached,
            cached_input: cached,
            output: a.output,
            images: a.images,
        }
    }

    fn assign(&mut self, id: RequestId, exclude: &[ReplicaId], now_ms: u64) -> Option<Placement> {
        self.readmit(now_ms);
        let active = *self.active.get(&id)?;
        let workload = active.workload;
        let bounded = active
            .radius
            .map(|radius| self.radius_members(radius, now_ms));
        let slice = self.assignment.lookup(workload);
        // Prompt blocks each replica is expected to hold, from the content index.
        let cache = self.config.affinity.cache_tokens.max(1);
        let held = self.contents.get(&id).map(|content| {
            let affinity = &self.affinity;
            let matched = self.index.matched(&content.chain, |r, stamp| {
                affinity.written(r).saturating_sub(stamp) < cache
            });
            (matched, content)
        });
        // Expected cached tokens, blocks held, and whether the replica holds more than
        // what many conversations share (a home for this one). What was written there
        // since the run's oldest block makes its survival less certain (as in
        // `PrefixAffinity`): the router's count of a replica's writes is approximate.
        let expected = |r: ReplicaId| -> (u32, usize, bool) {
            let Some((matched, content)) = &held else {
                // Without content, the workload's history guesses.
                let by_workload = self
                    .affinity
                    .expected_cached(workload.0, r, active.input_tokens);
                return (by_workload, 0, by_workload > 0);
            };
            let Some(run) = matched.get(&r) else {
                return (0, 0, false);
            };
            let since = self.affinity.written(r).saturating_sub(run.oldest) as f64;
            let survival = (1.0 - since / cache as f64).clamp(0.0, 1.0);
            let reliability = self.reliability.get(&r).copied().unwrap_or(1.0);
            let share = PromptBlocks::share_of(run.blocks, content.bytes) * survival * reliability;
            let own = run.blocks > content.shared;
            (
                (f64::from(active.input_tokens) * share) as u32,
                run.blocks,
                own,
            )
        };
        // A tenant's blast radius: only its replicas, each priced apart; its home is the
        // slice's subset among them, or all of them when the subset has none.
        let subset: Vec<ReplicaId> = match &bounded {
            Some(members) => {
                let inside: Vec<ReplicaId> = slice
                    .subset
                    .iter()
                    .copied()
                    .filter(|r| members.binary_search(r).is_ok())
                    .collect();
                if inside.is_empty() {
                    members.clone()
                } else {
                    inside
                }
            }
            None => slice.subset.clone(),
        };
        // The replicas priced apart: the slice's subset and those expected to hold part
        // of the prompt. Every other replica is cold and costs the full price.
        let known_ids: Vec<ReplicaId> = match &bounded {
            Some(members) => members.clone(),
            None => {
                let mut ids = slice.subset.clone();
                match &held {
                    Some((matched, _)) => ids.extend(matched.keys().copied()),
                    None => ids.extend(self.affinity.holders(workload.0)),
                }
                ids.sort_unstable();
                ids.dedup();
                ids
            }
        };
        let known: Vec<Candidate> = known_ids
            .iter()
            .filter_map(|&r| {
                let (cached, _, warm) = expected(r);
                let cost = self.coeffs.price(&Self::shape(&active, cached));
                self.candidate(r, cost, warm, now_ms)
            })
            .collect();
        // An implicated request may only go to its slice's subset.
        let confined = active
            .fingerprint
            .is_some_and(|fp| self.quarantine.verdict(fp, now_ms) != Verdict::Clear);
        let known: Vec<Candidate> = if confined {
            known
                .into_iter()
                .filter(|c| subset.contains(&c.id))
                .collect()
        } else {
            known
        };
        let cold_cost = self.coeffs.price(&Self::shape(&active, 0));
        let walk = (!confined && bounded.is_none()).then(|| {
            self.order
                .walk()
                .filter(|(r, _)| known_ids.binary_search(r).is_err())
                .filter_map(|(r, floor)| {
                    Some((self.candidate(r, cold_cost, false, now_ms)?, floor))
                })
        });
        let cold = ColdReplicas {
            walk: walk.into_iter().flatten(),
            cost_mu: cold_cost,
            max_capacity: self.max_capacity,
        };
        // This request's own wait, when it is placed again, is not part of a burst.
        let own = active.awaiting.map(|_| active.replica);
        let waiting = |r: ReplicaId| {
            let n = self.waiting.at(workload, r);
            n.saturating_sub(u32::from(own == Some(r)))
        };
        let choice = choose(
            &subset,
            &known,
            cold,
            exclude,
            self.config.spill,
            self.config.waste_weight,
            waiting,
        )?;
        let slice_start = slice.start;
        let (expected_cached, held_blocks, _) = expected(choice.replica);
        let shape = Self::shape(&active, expected_cached);
        let cost = InflightCost::new(shape, active.max_tokens);
        let charge = self.charge(&cost, 0);
        let mu = charge.mu;
        let new_kv = u64::from(shape.uncached_input) + u64::from(shape.output);
        // A retried request leaves the replica it was charged to.
        let previous = self.ledger.placed_on(id);
        self.ledger.admit(id, choice.replica, slice_start, charge);
        // What a stream waits for there before its first token: the work queued ahead of
        // it and its own prefill (not what comes after it).
        let ahead_ms = self.queue_ms(choice.replica);
        if let Some(p) = previous {
            self.reorder(p);
        }
        self.reorder(choice.replica);
        self.affinity.on_placed(choice.replica, new_kv);
        if let Some(content) = self.contents.get_mut(&id) {
            content.held = held_blocks;
            let stamp = self.affinity.written(choice.replica);
            self.index.insert(choice.replica, &content.chain, stamp);
        } else if self.keyed(workload) {
            // Only a request without content is priced by its workload's history.
            self.affinity
                .hold(workload.0, choice.replica, active.input_tokens);
        }
        if let Some(a) = self.active.get_mut(&id) {
            if a.awaiting.is_some() {
                self.waiting.answered(workload, a.replica);
            }
            self.waiting.sent(workload, choice.replica);
            a.cost = cost;
            a.replica = choice.replica;
            a.slice = slice_start;
            a.expected_cached = shape.cached_input;
            a.charged_kv = new_kv;
            a.awaiting = Some((now_ms, ahead_ms));
        }
        Some(Placement {
            id,
            replica: choice.replica,
            slice: slice_start,
            spilled: choice.spilled,
            mu,
        })
    }

    /// The replicas a tenant bounded by `radius` may reach now: the first available
    /// ones in its rendezvous order.
    fn radius_members(&mut self, radius: BlastRadius, now_ms: u64) -> Vec<ReplicaId> {
        if !self.radius_ranks.contains_key(&radius.key) {
            // Bounded tenants are few; the cache is rebuilt with the fleet, and cleared
            // whole should keys ever pile up.
            if self.radius_ranks.len() >= 4096 {
                self.radius_ranks.clear();
            }
            let ranked = blast_radius::rank(radius.key, self.replicas.iter().map(|r| r.spec.id));
            self.radius_ranks.insert(radius.key, ranked);
        }
        let ranked = self
            .radius_ranks
            .get(&radius.key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        blast_radius::members(radius, ranked, |r| {
            self.candidate(r, 0.0, false, now_ms)
                .is_some_and(|c| c.healthy && c.capacity_mu_per_min > 0.0)
        })
    }

    /// What the choice sees of replica `r` for a request costing `cost_mu` there;
    /// `None` for a replica the router does not know.
    fn candidate(&self, r: ReplicaId, cost_mu: f64, warm: bool, now_ms: u64) -> Option<Candidate> {
        let entry = self.replicas.get(*self.slots.get(&r)?)?;
        let mu = self.inflight(r);
        Some(Candidate {
            id: r,
            healthy: entry.checked_healthy && entry.passive.available(now_ms),
            inflight_mu: mu,
            capacity_mu_per_min: entry.spec.capacity_mu_per_min,
            cost_mu,
            warm,
        })
    }

    /// The MU a request arriving now would wait for on `r`: this router's and the
    /// others' reported.
    fn inflight(&self, r: ReplicaId) -> f64 {
        self.ledger.replica(r).queue_mu + self.peer_load(r)
    }

    /// What a request of cost `cost` adds to its replica after `generated` tokens.
    fn charge(&self, cost: &InflightCost, generated: u32) -> Charge {
        Charge {
            mu: cost.remaining_mu(&self.coeffs, generated),
            queue_mu: cost.queued_mu(&self.coeffs, generated, self.config.decode_share),
        }
    }

    /// Where `r` belongs in the load order: seconds queued.
    fn queued_s(&self, r: ReplicaId, capacity: f64) -> f64 {
        if capacity > 0.0 {
            self.inflight(r) * 60.0 / capacity
        } else {
            f64::INFINITY
        }
    }

    /// Moves `r` in the load order after its in-flight load changed.
    fn reorder(&mut self, r: ReplicaId) {
        let Some(&slot) = self.slots.get(&r) else {
            return;
        };
        let queued_s = self.queued_s(r, self.replicas[slot].spec.capacity_mu_per_min);
        self.order.update(r, queued_s);
    }

    /// Lists `r` in the load order if the router may send to it.
    fn list(&mut self, r: ReplicaId, now_ms: u64) {
        let Some(&slot) = self.slots.get(&r) else {
            return;
        };
        let entry = self.replicas[slot];
        if entry.checked_healthy && entry.passive.available(now_ms) {
            let queued_s = self.queued_s(r, entry.spec.capacity_mu_per_min);
            self.order.set(r, queued_s);
        }
    }

    /// Brings back the replicas whose passive ejection has ended.
    fn readmit(&mut self, now_ms: u64) {
        for r in self.order.readmit(now_ms) {
            self.list(r, now_ms);
        }
    }

    /// `generated` output tokens (over all `n` choices) have streamed back by `now_ms`.
    pub fn progress(&mut self, id: RequestId, generated: u32, now_ms: u64) {
        let Some(a) = self.active.get_mut(&id) else {
            return;
        };
        let added = generated.saturating_sub(a.generated);
        a.generated = generated;
        let previous_ms = a.last_token_ms;
        let mut first_after = None;
        if added > 0 {
            a.last_token_ms = Some(now_ms);
            let sent = a.awaiting.take();
            if sent.is_some() {
                self.waiting.answered(a.workload, a.replica);
            }
            first_after = sent.filter(|_| a.stream);
        }
        let (cost, replica) = (a.cost, a.replica);
        if let Some((since_ms, queue_ms)) = first_after {
            self.stalls
                .first_token_after(replica, since_ms, queue_ms, now_ms);
        }
        self.stalls.progressed(replica, previous_ms, added, now_ms);
        let charge = self.charge(&cost, generated);
        self.ledger.update(id, charge);
        self.reorder(replica);
    }

    /// The request is over: completed with `usage` when the engine reported it, or
    /// failed or abandoned with `None`. Frees its in-flight MU.
    pub fn finish(&mut self, id: RequestId, usage: Option<Usage>) {
        let charged = self.ledger.placed_on(id);
        self.ledger.finish(id);
        if let Some(r) = charged {
            self.reorder(r);
        }
        let content = self.contents.remove(&id);
        let Some(a) = self.active.remove(&id) else {
            return;
        };
        if a.awaiting.is_some() {
            self.waiting.answered(a.workload, a.replica);
        }
        if a.last_token_ms.is_some() {
            self.stalls.ended(a.replica);
        }
        if let Some(u) = usage {
            if u.cached_tokens > 0 {
                self.reports_cached.insert(a.replica);
            }
            if let Some(content) = &content {
                if self.reports_cached.contains(&a.replica)
                    && u.prompt_tokens > 0
                    && content.held > 0
                {
                    // How much of what the index promised the engine found. The blocks
                    // it missed are there now (this request computed them), so nothing
                    // is removed; the replica's promises are discounted instead.
                    let found = f64::from(u.cached_tokens.min(u.prompt_tokens))
                        / f64::from(u.prompt_tokens);
                    let found_blocks = found * content.bytes as f64 / BLOCK_BYTES as f64;
                    let hit = (found_blocks / content.held as f64).clamp(0.0, 1.0);
                    let alpha = self.config.affinity.alpha;
                    let r = self.reliability.entry(a.replica).or_insert(1.0);
                    *r = alpha * hit + (1.0 - alpha) * *r;
                }
            }
            self.token_scale.observe(a.counted_input, u.prompt_tokens);
            // The measured load follows what the request really cost.
            let charged = a.cost.remaining_mu(&self.coeffs, 0);
            let cached = u.cached_tokens.min(u.prompt_tokens);
            let actual = self.coeffs.price(&RequestShape {
                uncached_input: u.prompt_tokens - cached,
                cached_input: cached,
                output: u.completion_tokens,
                images: a.images,
            });
            self.meter.record(a.workload, actual - charged);
            // A request that can write nothing (embeddings) says nothing of how long
            // answers are.
            if a.max_tokens != Some(0) {
                self.estimator
                    .observe(a.workload.0, u.completion_tokens / a.n);
            }
            let written = u64::from(u.prompt_tokens.saturating_sub(u.cached_tokens))
                + u64::from(u.completion_tokens);
            self.affinity.on_completed(
                a.workload.0,
                a.replica,
                a.expected_cached,
                u.cached_tokens,
                written,
                a.charged_kv,
            );
            if let Some(content) = &content {
                // Its blocks were in use until now: they are the replica's most recent.
                let stamp = self.affinity.written(a.replica);
                self.index.insert(a.replica, &content.chain, stamp);
            }
            if let Some(r) = self.entry(a.replica) {
                let was_ejected = r.passive.ejected_until_ms() > 0;
                r.passive.on_success();
                if was_ejected {
                    // Its ejection is over: back in the order (`list` needs no clock
                    // for a replica that is not ejected).
                    self.list(a.replica, 0);
                }
            }
        } else if a.generated > 0 {
            // Tokens arrived, so the replica was reachable; learn the length seen so far.
            self.estimator.observe(a.workload.0, a.generated / a.n);
        }
    }

    /// Real traffic failed to reach `replica` (connection refused, reset, timeout).
    pub fn on_replica_failure(&mut self, replica: ReplicaId, now_ms: u64) {
        let policy = self.config.ejection;
        let Some(r) = self.entry(replica) else {
            return;
        };
        r.passive.on_failure(&policy, now_ms);
        if !r.passive.available(now_ms) {
            let until = r.passive.ejected_until_ms();
            self.order.eject(replica, until);
        }
    }

    /// Result of an active health check of `replica`. A passing check does not end a
    /// passive ejection: a hung engine still answers its health endpoint.
    pub fn set_checked_health(&mut self, replica: ReplicaId, healthy: bool) {
        let Some(r) = self.entry(replica) else {
            return;
        };
        r.checked_healthy = healthy;
        if healthy {
            // A replica ejected by passive health stays out until its ejection ends
            // (`readmit` lists it then, or at once if that time has passed).
            match r.passive.ejected_until_ms() {
                0 => self.list(replica, 0),
                until => self.order.eject(replica, until),
            }
        } else {
            self.order.remove(replica);
        }
    }

    /// Replaces the slice map (a newer generation from the assigner).
    /// The in-flight load other routers have on each replica (the sum of their latest
    /// reports), counted with this router's own when choosing. Replaces the previous.
    pub fn set_external_load(&mut self, loads: impl IntoIterator<Item = (ReplicaId, f64)>) {
        let mut touched: Vec<ReplicaId> = self.external.drain().map(|(id, _)| id).collect();
        for (id, mu) in loads {
            if mu.is_finite() && mu >= 0.0 {
                *self.external.entry(id).or_insert(0.0) += mu;
                touched.push(id);
            }
        }
        for id in touched {
            self.reorder(id);
        }
    }

    /// This router's own in-flight load per replica, for other routers' choices: the
    /// MU a newcomer would wait for ([`Charge::queue_mu`]) and the requests.
    pub fn own_load(&self) -> Vec<(ReplicaId, f64, u64)> {
        self.replicas
            .iter()
            .map(|r| {
                let l = self.ledger.replica(r.spec.id);
                (r.spec.id, l.queue_mu, l.requests)
            })
            .filter(|(_, mu, n)| *mu > 0.0 || *n > 0)
            .collect()
    }

    /// Replaces the replica set (the registry changed): new replicas start healthy,
    /// known ones keep their health and capacity is updated, removed ones get no new
    /// requests (those in flight finish and are accounted as usual).
    pub fn set_replicas(&mut self, replicas: &[ReplicaSpec]) {
        let old: HashMap<ReplicaId, ReplicaEntry> =
            self.replicas.drain(..).map(|r| (r.spec.id, r)).collect();
        let entries = replicas
            .iter()
            .map(|&spec| match old.get(&spec.id) {
                Some(r) => ReplicaEntry { spec, ..*r },
                None => ReplicaEntry {
                    spec,
                    checked_healthy: true,
                    passive: PassiveHealth::default(),
                },
            })
            .collect();
        self.install(entries);
    }

    /// Makes `entries` the replica set and rebuilds what is indexed by it.
    fn install(&mut self, entries: Vec<ReplicaEntry>) {
        self.replicas = entries;
        self.radius_ranks.clear();
        self.slots = self
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| (r.spec.id, i))
            .collect();
        self.stalls.forget_gone(|r| self.slots.contains_key(&r));
        self.max_capacity = self
            .replicas
            .iter()
            .map(|r| r.spec.capacity_mu_per_min)
            .fold(0.0, f64::max);
        self.order.clear();
        for i in 0..self.replicas.len() {
            let r = self.replicas[i];
            if !r.checked_healthy {
                continue;
            }
            match r.passive.ejected_until_ms() {
                0 => self.list(r.spec.id, 0),
                until => {
                    self.order.eject(r.spec.id, until);
                }
            }
        }
    }

    pub fn set_assignment(&mut self, assignment: Assignment) {
        if assignment.generation > self.assignment.generation {
            self.moved = assignment.moved_since(&self.assignment);
        }
        if assignment.generation >= self.assignment.generation {
            self.assignment = assignment;
        }
    }

    /// The MU other routers last reported in flight on `id`.
    pub fn peer_load(&self, id: ReplicaId) -> f64 {
        self.external.get(&id).copied().unwrap_or(0.0)
    }

    /// The slices (indices into [`Self::assignment`]) its latest generation moved.
    pub fn moved_slices(&self) -> &[usize] {
        &self.moved
    }

    pub fn replicas(&self, now_ms: u64) -> Vec<ReplicaView> {
        self.replicas
            .iter()
            .map(|r| ReplicaView {
                id: r.spec.id,
                available: r.checked_healthy && r.passive.available(now_ms),
                capacity_mu_per_min: r.spec.capacity_mu_per_min,
                inflight: self.ledger.replica(r.spec.id),
            })
            .collect()
    }

    /// The MU admitted per keyspace bucket since the last call (what a router reports
    /// to the assigner), corrected by what finished requests really cost.
    pub fn take_load(&mut self, now_us: u64) -> LoadReport {
        self.meter.take(now_us)
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn in_flight(&self) -> usize {
        self.active.len()
    }

    /// Requests with neither a workload key nor content share the anonymous key and
    /// nothing known about their prompts: no affinity is learned for them.
    fn keyed(&self, workload: SliceKey) -> bool {
        workload != anonymous_key()
    }

    fn entry(&mut self, id: ReplicaId) -> Option<&mut ReplicaEntry> {
        let slot = *self.slots.get(&id)?;
        self.replicas.get_mut(slot)
    }
}

/// Times stamped on this router's clock, as ages at `now_ms`: what other nodes, whose
/// clocks started elsewhere, can use.
fn ages(stamped: Vec<(ReplicaId, u64)>, now_ms: u64) -> Vec<(ReplicaId, u64)> {
    stamped
        .into_iter()
        .map(|(r, at)| (r, now_ms.saturating_sub(at)))
        .collect()
}

/// A router over `replicas` replicas of equal capacity with `subset` of them to a slice,
/// priced by a small fixed profile: the tests of the router and of the cores built on it.
#[cfg(test)]
pub(crate) fn test_router(replicas: u64, subset: usize) -> RouterCore {
    let ids: Vec<ReplicaId> = (0..replicas).map(ReplicaId).collect();
    let specs: Vec<ReplicaSpec> = ids
        .iter()
        .map(|&id| ReplicaSpec {
            id,
            capacity_mu_per_min: 60_000.0,
            host: id.0,
            rack: id.0,
        })
        .collect();
    let coeffs = crate::mu::pricing::test_coefficients();
    let assignment = Assignment::uniform(1, &ids, 8, subset)
        .unwrap_or_else(|e| panic!("a test assignment of {replicas} replicas: {e}"));
    RouterCore::new(coeffs, RouterConfig::default(), &specs, assignment)
}

mod hangs;
#[cfg(test)]
mod tests;
