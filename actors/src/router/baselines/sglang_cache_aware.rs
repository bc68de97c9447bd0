//! SGLang router's cache-aware policy: an approximate multi-tenant radix tree of the
//! prompts routed to each worker, with a switch to shortest-queue routing when load is
//! imbalanced.
//!
//! Sources (sgl-project/sglang, read 2025):
//! - `sgl-router/src/policies/cache_aware.rs`, commit b6f20641ad6bafc1278db74d1e13b0e9da47bd64
//!   (`select_worker`): loads are the router's per-worker in-flight counts over *all*
//!   workers; imbalanced iff `max − min > balance_abs_threshold` **and**
//!   `max > min × balance_rel_threshold`. Imbalanced: the healthy worker with the least load
//!   (the first one on ties) gets the request and the prompt is still inserted into the
//!   tree under it. Balanced: `prefix_match` over the shared tree gives the matched prefix
//!   and a tenant at the deepest matched node; if `matched / len > cache_threshold` route
//!   there, else to `get_smallest_tenant()` (fewest characters in the tree); if that worker
//!   is healthy insert the prompt under it, otherwise fall back to the first healthy worker
//!   (without inserting). A background thread calls `evict_tenant_by_size(max_tree_size)`
//!   every `eviction_interval_secs`.
//! - `sgl-router/src/policies/tree.rs`, commit 4d40eec0266be06d0e65b919457691cab9e51547: the
//!   radix tree with per-node `tenant → last access` maps, node splitting on insert,
//!   per-tenant character counts, `prefix_match` refreshing the chosen tenant's access times
//!   from the matched node up to the root, and eviction that pops `(tenant, leaf)` pairs in
//!   LRU order from a min-heap, removes the tenant from the leaf, deletes emptied nodes and
//!   pushes the parent when it becomes a leaf for that tenant, until the tenant is within
//!   `max_size`.
//! - Defaults from `sgl-router/py_src/sglang_router/router_args.py` (what `launch_router`
//!   uses): `cache_threshold` 0.3, `balance_abs_threshold` 64, `balance_rel_threshold` 1.5,
//!   `eviction_interval_secs` 120, `max_tree_size` 2^26.
//!
//! Adaptations forced by the simulator:
//! - The source's tree is over characters of the request text; ours is over token ids, so
//!   match rate is matched tokens ÷ prompt tokens and tree sizes count tokens.
//!   `max_tree_size` is mapped to tokens at 4 characters per token: 2^26 / 4 = 2^24 tokens
//!   per tenant (the same text volume, and about the same memory: 4 bytes per token vs one
//!   byte per ASCII character).
//! - Access times: the source stamps wall-clock milliseconds; we stamp a counter that
//!   increases with every routed request (the simulator's clock never goes back, so this is
//!   the same order, with same-request ties broken by node and tenant).
//! - The eviction thread is replaced by an eviction pass whenever a request arrives at or
//!   after the next multiple of `eviction_interval_secs` since the first request (the tree
//!   does not change between requests, so this is the same state the thread would leave).
//! - "First tenant in the map" (DashMap iteration order: a per-map pseudo-random order) for
//!   `prefix_match` and the tie-break of `get_smallest_tenant` are emulated by a seeded
//!   pseudo-random order per node / per tree, so ties do not always favour low replica ids.
//! - Load is `ReplicaObservation::active_requests`. Workers are registered (`insert("", w)`)
//!   when first seen in the fleet and removed from the tree when they leave it.

use super::common::{mix64, Slots, SplitMix64};
use crate::router::policy::{KvIndex, ReplicaObservation, RouteRequest, RoutingPolicy};
use crate::slice::ReplicaId;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// `CacheAwareConfig` with `launch_router`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SglangConfig {
    pub cache_threshold: f32,
    pub balance_abs_threshold: usize,
    pub balance_rel_threshold: f32,
    /// 0 disables eviction.
    pub eviction_interval_secs: u64,
    /// Per-tenant tree size bound, in tokens (see the module docs for the mapping).
    pub max_tree_size: usize,
}

impl Default for SglangConfig {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            eviction_interval_secs: 120,
            max_tree_size: 1 << 24,
        }
    }
}

const ROOT: u32 = 0;
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Default)]
struct Node {
    parent: u32,
    label: Vec<u32>,
    children: HashMap<u32, u32>,
    /// `(tenant, last access)`, sorted by tenant.
    tenants: Vec<(u32, u64)>,
    /// Seed of this node's tenant iteration order.
    salt: u64,
    alive: bool,
}

impl Node {
    fn has(&self, t: u32) -> bool {
        self.tenants.binary_search_by_key(&t, |e| e.0).is_ok()
    }

    /// Sets `t`'s access time; true when `t` was not on the node yet.
    fn touch(&mut self, t: u32, at: u64) -> bool {
        match self.tenants.binary_search_by_key(&t, |e| e.0) {
            Ok(i) => {
                self.tenants[i].1 = at;
                false
            }
            Err(i) => {
                self.tenants.insert(i, (t, at));
                true
            }
        }
    }

    fn remove(&mut self, t: u32) -> bool {
        match self.tenants.binary_search_by_key(&t, |e| e.0) {
            Ok(i) => {
                self.tenants.remove(i);
                true
            }
            Err(_) => false,
        }
    }
}

fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// SGLang's multi-tenant approximate radix tree, over token ids.
#[derive(Debug, Clone)]
pub struct ApproxTree {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Tokens per tenant (`tenant_char_count`); `None` when not registered.
    size: Vec<Option<usize>>,
    order_salt: u64,
    salts: SplitMix64,
}

impl ApproxTree {
    pub fn new(seed: u64) -> Self {
        let mut salts = SplitMix64::new(seed ^ 0x5151_7a7e_e000_0001);
        let root = Node {
            parent: NIL,
            alive: true,
            salt: salts.next_u64(),
            ..Node::default()
        };
        Self {
            nodes: vec![root],
            free: Vec::new(),
            size: Vec::new(),
            order_salt: salts.next_u64(),
            salts,
        }
    }

    fn alloc(&mut self, node: Node) -> u32 {
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    fn release(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        *n = Node::default();
        self.free.push(i);
    }

    fn add_size(&mut self, t: u32, d: usize) {
        let s = &mut self.size[t as usize];
        *s = Some(s.unwrap_or(0) + d);
    }

    /// Tokens held by tenant `t` (`None` if not registered).
    pub fn tenant_size(&self, t: u32) -> Option<usize> {
        self.size.get(t as usize).copied().flatten()
    }

    pub fn is_registered(&self, t: u32) -> bool {
        self.tenant_size(t).is_some()
    }

    /// Live nodes (root included).
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// `Tree::insert`.
    pub fn insert(&mut self, text: &[u32], t: u32, at: u64) {
        if self.size.len() <= t as usize {
            self.size.resize(t as usize + 1, None);
        }
        if self.size[t as usize].is_none() {
            self.size[t as usize] = Some(0);
        }
        self.nodes[ROOT as usize].touch(t, at);
        let mut prev = ROOT;
        let mut i = 0;
        while i < text.len() {
            let first = text[i];
            let curr = prev;
            match self.nodes[curr as usize].children.get(&first).copied() {
                None => {
                    let label = text[i..].to_vec();
                    let len = label.len();
                    let salt = self.salts.next_u64();
                    let new = self.alloc(Node {
                        parent: curr,
                        label,
                        children: HashMap::new(),
                        tenants: vec![(t, at)],
                        salt,
                        alive: true,
                    });
                    self.nodes[curr as usize].children.insert(first, new);
                    self.add_size(t, len);
                    i = text.len();
                }
                Some(m) => {
                    let label_len = self.nodes[m as usize].label.len();
                    let shared = shared_prefix(&self.nodes[m as usize].label, &text[i..]);
                    if shared < label_len {
                        // Split: [curr] -> [new (shared part)] -> [m (rest)].
                        let (head, tail_first, tenants, salt) = {
                            let mn = &self.nodes[m as usize];
                            (
                                mn.label[..shared].to_vec(),
                                mn.label[shared],
                                mn.tenants.clone(),
                                mn.salt,
                            )
                        };
                        let mut children = HashMap::new();
                        children.insert(tail_first, m);
                        let new = self.alloc(Node {
                            parent: curr,
                            label: head,
                            children,
                            tenants,
                            salt,
                            alive: true,
                        });
                        self.nodes[curr as usize].children.insert(first, new);
                        let mn = &mut self.nodes[m as usize];
                        mn.label.drain(..shared);
                        mn.parent = new;
                        if self.nodes[new as usize].touch(t, at) {
                            self.add_size(t, shared);
                        }
                        prev = new;
                    } else {
                        if self.nodes[m as usize].touch(t, at) {
                            self.add_size(t, label_len);
                        }
                        prev = m;
                    }
                    i += shared;
                }
            }
        }
    }

    /// The tenant a node's map would yield first.
    fn first_tenant(&self, node: u32) -> Option<u32> {
        let n = &self.nodes[node as usize];
        n.tenants
            .iter()
            .min_by_key(|(t, _)| mix64(n.salt ^ mix64(u64::from(*t) + 1)))
            .map(|e| e.0)
    }

    /// `Tree::prefix_match`: (matched tokens, tenant at the deepest matched node).
    pub fn prefix_match(&mut self, text: &[u32], at: u64) -> (usize, Option<u32>) {
        let mut prev = ROOT;
        let mut i = 0;
        while i < text.len() {
            let Some(m) = self.nodes[prev as usize].children.get(&text[i]).copied() else {
                break;
            };
            let node = &self.nodes[m as usize];
            let shared = shared_prefix(&node.label, &text[i..]);
            let full = shared == node.label.len();
            i += shared;
            prev = m;
            if !full {
                break;
            }
        }
        let tenant = self.first_tenant(prev);
        if let Some(t) = tenant {
            let mut cur = prev;
            while cur != NIL {
                let n = &mut self.nodes[cur as usize];
                if n.has(t) {
                    n.touch(t, at);
                }
                cur = n.parent;
            }
        }
        (i, tenant)
    }

    /// `Tree::get_smallest_tenant`.
    pub fn smallest_tenant(&self) -> Option<u32> {
        self.size
            .iter()
            .enumerate()
            .filter_map(|(t, s)| s.map(|s| (t as u32, s)))
            .min_by_key(|&(t, s)| (s, mix64(self.order_salt ^ mix64(u64::from(t) + 1))))
            .map(|(t, _)| t)
    }

    /// Unlinks and frees `node` if it has neither tenants nor children.
    fn drop_if_empty(&mut self, node: u32) {
        let n = &self.nodes[node as usize];
        if node == ROOT || !n.children.is_empty() || !n.tenants.is_empty() {
            return;
        }
        let (parent, first) = (n.parent, n.label[0]);
        self.nodes[parent as usize].children.remove(&first);
        self.release(node);
    }

    /// `Tree::evict_tenant_by_size`. A `(tenant, node)` pair is a leaf when the node holds
    /// the tenant and none of its children does; the number of children holding each
    /// tenant is counted once up front and kept current, so each eviction step is O(1)
    /// however many children a node has.
    pub fn evict_by_size(&mut self, max_size: usize) {
        let mut child_holders: HashMap<(u32, u32), u32> = HashMap::new();
        for n in self.nodes.iter().filter(|n| n.alive && n.parent != NIL) {
            for &(t, _) in &n.tenants {
                *child_holders.entry((n.parent, t)).or_insert(0) += 1;
            }
        }
        let mut heap = BinaryHeap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            for &(t, at) in &n.tenants {
                if !child_holders.contains_key(&(i as u32, t)) {
                    heap.push(Reverse((at, i as u32, t)));
                }
            }
        }
        while let Some(Reverse((_, node, t))) = heap.pop() {
            if self.tenant_size(t).is_some_and(|s| s <= max_size) {
                continue;
            }
            if !self.nodes[node as usize].alive || !self.nodes[node as usize].has(t) {
                continue;
            }
            let len = self.nodes[node as usize].label.len();
            if let Some(s) = self.size[t as usize].as_mut() {
                *s = s.saturating_sub(len);
            }
            self.nodes[node as usize].remove(t);
            let parent = self.nodes[node as usize].parent;
            self.drop_if_empty(node);
            if parent == NIL {
                continue;
            }
            let left = match child_holders.get_mut(&(parent, t)) {
                Some(c) => {
                    *c -= 1;
                    *c
                }
                None => 0,
            };
            if left == 0 {
                child_holders.remove(&(parent, t));
                let p = &self.nodes[parent as usize];
                if let Some(&(_, at)) = p.tenants.iter().find(|e| e.0 == t) {
                    heap.push(Reverse((at, parent, t)));
                }
            }
        }
    }

    /// `Tree::remove_tenant`: the tenant leaves every node; emptied nodes go.
    pub fn remove_tenant(&mut self, t: u32) {
        let mut emptied = Vec::new();
        let mut is_emptied = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.alive && n.remove(t) && n.tenants.is_empty() && i as u32 != ROOT {
                emptied.push(i as u32);
                is_emptied[i] = true;
            }
        }
        // A node left without tenants has children without tenants (a tenant on a child
        // is on all its ancestors), so the emptied nodes are whole subtrees.
        for &i in &emptied {
            let parent = self.nodes[i as usize].parent;
            if !is_emptied[parent as usize] {
                let first = self.nodes[i as usize].label[0];
                self.nodes[parent as usize].children.remove(&first);
            }
        }
        for &i in &emptied {
            self.release(i);
        }
        if let Some(s) = self.size.get_mut(t as usize) {
            *s = None;
        }
    }

    /// Tokens per tenant recomputed from the nodes (for checking `tenant_size`).
    pub fn recount(&self) -> HashMap<u32, usize> {
        let mut out = HashMap::new();
        for n in self.nodes.iter().filter(|n| n.alive) {
            for &(t, _) in &n.tenants {
                *out.entry(t).or_insert(0) += n.label.len();
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct SglangCacheAware {
    config: SglangConfig,
    tree: ApproxTree,
    slots: Slots,
    pos_of_slot: Vec<usize>,
    healthy: Vec<usize>,
    tick: u64,
    next_eviction_us: Option<u64>,
}

impl SglangCacheAware {
    pub fn new(config: SglangConfig, seed: u64) -> Self {
        Self {
            config,
            tree: ApproxTree::new(seed),
            slots: Slots::default(),
            pos_of_slot: Vec::new(),
            healthy: Vec::new(),
            tick: 0,
            next_eviction_us: None,
        }
    }

    pub fn tree(&self) -> &ApproxTree {
        &self.tree
    }

    /// Tokens in `replica`'s part of the tree.
    pub fn tree_size(&self, replica: ReplicaId) -> Option<usize> {
        self.slots
            .slot(replica)
            .and_then(|s| self.tree.tenant_size(s as u32))
    }

    fn sync(&mut self, fleet: &[ReplicaObservation]) {
        if !self.slots.sync(fleet) {
            return;
        }
        self.pos_of_slot.clear();
        self.pos_of_slot.resize(self.slots.len(), usize::MAX);
        for (pos, &slot) in self.slots.map().iter().enumerate() {
            self.pos_of_slot[slot] = pos;
        }
        for slot in 0..self.slots.len() {
            let t = slot as u32;
            let present = self.pos_of_slot[slot] != usize::MAX;
            if present && !self.tree.is_registered(t) {
                self.tree.insert(&[], t, self.tick);
            } else if !present && self.tree.is_registered(t) {
                self.tree.remove_tenant(t);
            }
        }
    }

    fn maybe_evict(&mut self, now_us: u64) {
        let interval = self.config.eviction_interval_secs.saturating_mul(1_000_000);
        if interval == 0 {
            return;
        }
        match self.next_eviction_us {
            None => self.next_eviction_us = Some(now_us.saturating_add(interval)),
            Some(at) if now_us >= at => {
                self.tree.evict_by_size(self.config.max_tree_size);
                let periods = (now_us - at) / interval + 1;
                self.next_eviction_us = Some(at.saturating_add(periods.saturating_mul(interval)));
            }
            Some(_) => {}
        }
    }
}

impl RoutingPolicy for SglangCacheAware {
    fn name(&self) -> &'static str {
        "sglang-cache-aware"
    }

    fn route(
        &mut self,
        req: &RouteRequest<'_>,
        fleet: &[ReplicaObservation],
        _kv: &dyn KvIndex,
        now_us: u64,
    ) -> Option<ReplicaId> {
        self.sync(fleet);
        self.maybe_evict(now_us);
        super::common::healthy_positions(fleet, &mut self.healthy);
        let &first_healthy = self.healthy.first()?;
        self.tick += 1;
        let at = self.tick;
        let text = req.prompt;

        let (min_load, max_load) = fleet.iter().fold((usize::MAX, 0usize), |(lo, hi), o| {
            let l = o.active_requests as usize;
            (lo.min(l), hi.max(l))
        });
        let min_load = if min_load == usize::MAX { 0 } else { min_load };
        let c = &self.config;
        let imbalanced = max_load.saturating_sub(min_load) > c.balance_abs_threshold
            && (max_load as f32) > (min_load as f32 * c.balance_rel_threshold);

        if imbalanced {
            let pos = *self
                .healthy
                .iter()
                .min_by_key(|&&p| fleet[p].active_requests)
                .expect("non-empty");
            let slot = self.slots.map()[pos] as u32;
            self.tree.insert(text, slot, at);
            return Some(fleet[pos].id);
        }

        let (matched, tenant) = self.tree.prefix_match(text, at);
        let rate = if text.is_empty() {
            0.0
        } else {
            matched as f32 / text.len() as f32
        };
        let selected = if rate > c.cache_threshold {
            tenant
        } else {
            self.tree.smallest_tenant()
        };
        if let Some(t) = selected {
            match self.pos_of_slot.get(t as usize).copied() {
                Some(pos) if pos != usize::MAX => {
                    if fleet[pos].healthy {
                        self.tree.insert(text, t, at);
                        return Some(fleet[pos].id);
                    }
                }
                _ => self.tree.remove_tenant(t),
            }
        }
        Some(fleet[first_healthy].id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::baselines::common::fixtures::{self, prompt, req};
    use crate::router::policy::NoKvIndex;
    use proptest::prelude::*;

    fn obs(id: u64, healthy: bool, active: u32) -> ReplicaObservation {
        ReplicaObservation {
            healthy,
            active_requests: active,
            ..fixtures::obs(id)
        }
    }

    #[test]
    fn tree_matches_like_sglangs() {
        let mut t = ApproxTree::new(1);
        t.insert(&[1, 2, 3, 4, 5], 0, 1);
        t.insert(&[1, 2, 9], 1, 2);
        t.insert(&[7, 7], 2, 3);
        assert_eq!(t.prefix_match(&[1, 2, 3, 4, 5, 6], 4), (5, Some(0)));
        assert_eq!(t.prefix_match(&[1, 2, 9, 9], 5), (3, Some(1)));
        assert_eq!(t.prefix_match(&[1, 2, 3, 8], 6), (3, Some(0)));
        assert_eq!(t.prefix_match(&[8], 7).0, 0);
        // Sizes: tenant 0 holds [1,2] + [3,4,5]; tenant 1 [1,2] + [9]; tenant 2 [7,7].
        assert_eq!(t.tenant_size(0), Some(5));
        assert_eq!(t.tenant_size(1), Some(3));
        assert_eq!(t.tenant_size(2), Some(2));
        assert_eq!(t.smallest_tenant(), Some(2));
        let counts = t.recount();
        for k in 0..3 {
            assert_eq!(counts.get(&k).copied(), t.tenant_size(k));
        }
    }

    #[test]
    fn eviction_drops_least_recently_used_leaves_down_to_the_bound() {
        let mut t = ApproxTree::new(1);
        t.insert(&prompt(1, 10), 0, 1); // oldest
        t.insert(&prompt(2, 10), 0, 2);
        t.insert(&prompt(3, 10), 0, 3); // newest
        t.insert(&prompt(9, 15), 1, 4);
        t.evict_by_size(20);
        assert_eq!(t.tenant_size(0), Some(20));
        assert_eq!(t.prefix_match(&prompt(1, 10), 5).0, 0, "oldest evicted");
        assert_eq!(t.prefix_match(&prompt(3, 10), 6), (10, Some(0)));
        assert_eq!(
            t.tenant_size(1),
            Some(15),
            "tenants within the bound keep everything"
        );
        t.remove_tenant(1);
        assert_eq!(t.prefix_match(&prompt(9, 15), 7).0, 0);
        assert_eq!(t.tenant_size(1), None);
    }

    #[test]
    fn cache_hit_goes_to_the_longest_match_and_misses_to_the_smallest_tree() {
        let mut p = SglangCacheAware::new(SglangConfig::default(), 3);
        let fleet: Vec<_> = (0..3).map(|i| obs(i, true, 0)).collect();
        let a = prompt(1, 100);
        let ra = p.route(&req(&a), &fleet, &NoKvIndex, 0).unwrap();
        // A different prompt misses: it goes to a smallest (empty) tree, not `ra`.
        let b = prompt(2, 100);
        let rb = p.route(&req(&b), &fleet, &NoKvIndex, 0).unwrap();
        assert_ne!(rb, ra);
        // 40% shared with `a` (> 0.3): follows `a`.
        let mut a2 = a[..40].to_vec();
        a2.extend(prompt(5, 60));
        assert_eq!(p.route(&req(&a2), &fleet, &NoKvIndex, 0), Some(ra));
        // 20% shared (≤ 0.3): smallest tree, which is the third replica.
        let mut a3 = a[..20].to_vec();
        a3.extend(prompt(6, 80));
        let r3 = p.route(&req(&a3), &fleet, &NoKvIndex, 0).unwrap();
        assert!(r3 != ra && r3 != rb);
        assert_eq!(p.tree_size(r3), Some(100));
    }

    #[test]
    fn imbalance_needs_both_thresholds() {
        let mut p = SglangCacheAware::new(SglangConfig::default(), 3);
        let mut fleet = vec![obs(0, true, 0), obs(1, true, 0)];
        let (a, b) = (prompt(1, 100), prompt(2, 100));
        let x = p.route(&req(&a), &fleet, &NoKvIndex, 0).unwrap();
        let y = p.route(&req(&b), &fleet, &NoKvIndex, 0).unwrap();
        assert_ne!(x, y);
        let (xi, yi) = (x.0 as usize, y.0 as usize);
        // abs 90 > 64 and 100 > 1.5 × 10: imbalanced, the least loaded wins although `a`
        // is cached on x.
        fleet[xi].active_requests = 100;
        fleet[yi].active_requests = 10;
        assert_eq!(p.route(&req(&a), &fleet, &NoKvIndex, 0), Some(y));
        // `b` is cached on y only. abs 60 ≤ 64: balanced, the cache wins over the load.
        fleet[xi].active_requests = 10;
        fleet[yi].active_requests = 70;
        assert_eq!(p.route(&req(&b), &fleet, &NoKvIndex, 0), Some(y));
        // abs 80 > 64 but 300 ≤ 1.5 × 220: still balanced, the cache wins.
        fleet[xi].active_requests = 220;
        fleet[yi].active_requests = 300;
        assert_eq!(p.route(&req(&b), &fleet, &NoKvIndex, 0), Some(y));
        // Both exceeded: the least loaded, x.
        fleet[yi].active_requests = 400;
        assert_eq!(p.route(&req(&b), &fleet, &NoKvIndex, 0), Some(x));
    }

    #[test]
    fn unhealthy_choice_falls_back_to_the_first_healthy_worker() {
        let mut p = SglangCacheAware::new(SglangConfig::default(), 3);
        let mut fleet: Vec<_> = (0..3).map(|i| obs(i, true, 0)).collect();
        let a = prompt(1, 50);
        let owner = p.route(&req(&a), &fleet, &NoKvIndex, 0).unwrap();
        fleet[owner.0 as usize].healthy = false;
        let first_healthy = fleet.iter().find(|o| o.healthy).unwrap().id;
        assert_eq!(
            p.route(&req(&a), &fleet, &NoKvIndex, 0),
            Some(first_healthy)
        );
    }

    #[test]
    fn periodic_eviction_bounds_every_tree() {
        let cfg = SglangConfig {
            max_tree_size: 500,
            ..SglangConfig::default()
        };
        let mut p = SglangCacheAware::new(cfg, 3);
        let fleet: Vec<_> = (0..2).map(|i| obs(i, true, 0)).collect();
        for i in 0..50 {
            p.route(&req(&prompt(i, 100)), &fleet, &NoKvIndex, i as u64 * 1000);
        }
        assert!(p.tree_size(ReplicaId(0)).unwrap() > 500);
        // Just before the first eviction tick nothing changes; at it, trees shrink.
        p.route(&req(&prompt(900, 10)), &fleet, &NoKvIndex, 119_000_000);
        assert!(p.tree_size(ReplicaId(0)).unwrap() > 500);
        p.route(&req(&prompt(901, 10)), &fleet, &NoKvIndex, 120_000_000);
        for r in 0..2 {
            assert!(p.tree_size(ReplicaId(r)).unwrap() <= 500 + 10);
        }
    }

    proptest! {
        #[test]
        fn sizes_stay_consistent(ops in prop::collection::vec((0u32..4, 0u32..3, 1usize..12, any::<bool>()), 1..60), bound in 0usize..40) {
            let mut t = ApproxTree::new(9);
            for (i, (tenant, family, len, evict)) in ops.into_iter().enumerate() {
                let text: Vec<u32> = (0..len as u32).map(|k| family * 10 + k % 5).collect();
                t.insert(&text, tenant, i as u64);
                if evict {
                    t.evict_by_size(bound);
                    for k in 0..4 {
                        if let Some(s) = t.tenant_size(k) {
                            prop_assert!(s <= bound);
                        }
                    }
                }
                let counts = t.recount();
                for k in 0..4u32 {
                    if let Some(s) = t.tenant_size(k) {
                        prop_assert_eq!(counts.get(&k).copied().unwrap_or(0), s);
                    }
                }
            }
        }
    }
}
