//! Which model the fleet serves, learned from the engines themselves (each replica's
//! `/v1/models`), and which replicas disagree. An engine knows what it serves; a
//! configured name only overrides it. A replica that serves something else is reported
//! and kept out of routing for the fleet's model, never silently ejected.

use crate::slice::ReplicaId;
use std::collections::BTreeMap;

/// The models one replica said it serves, in its own order.
pub type Reports = BTreeMap<ReplicaId, Vec<String>>;

/// The fleet's model and how the replicas stand to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServedModels {
    /// What requests must name; `None` until a replica has said (and none configured).
    pub model: Option<String>,
    /// Other names every agreeing replica also serves (vLLM's several served names).
    pub aliases: Vec<String>,
    /// Replicas that reported and do not serve `model`, with what they serve.
    pub mismatched: BTreeMap<ReplicaId, Vec<String>>,
    /// Whether `model` came from configuration rather than from the engines.
    pub configured: bool,
}

impl ServedModels {
    /// Decides the fleet's model: the configured one, else the one the most replicas
    /// serve (ties: the one the lowest replica id lists first), else `fallback` (a node
    /// with no engines of its own uses its registry's model).
    pub fn decide(configured: Option<&str>, fallback: Option<&str>, reports: &Reports) -> Self {
        let model = match configured {
            Some(m) => Some(m.to_owned()),
            None => {
                let mut votes: BTreeMap<&str, (usize, ReplicaId, usize)> = BTreeMap::new();
                for (id, models) in reports {
                    for (rank, m) in models.iter().enumerate() {
                        if models[..rank].contains(m) {
                            continue;
                        }
                        let v = votes.entry(m.as_str()).or_insert((0, *id, rank));
                        v.0 += 1;
                    }
                }
                votes
                    .into_iter()
                    // Most votes; then the earliest (replica, rank) that listed it.
                    .max_by(|a, b| {
                        let (na, ia, ra) = a.1;
                        let (nb, ib, rb) = b.1;
                        na.cmp(&nb).then((ib, rb).cmp(&(ia, ra)))
                    })
                    .map(|(m, _)| m.to_owned())
                    .or_else(|| fallback.map(str::to_owned))
            }
        };
        let Some(name) = model else {
            return Self::default();
        };
        let mismatched: BTreeMap<ReplicaId, Vec<String>> = reports
            .iter()
            .filter(|(_, models)| !models.contains(&name))
            .map(|(id, models)| (*id, models.clone()))
            .collect();
        let agreeing: Vec<&Vec<String>> = reports
            .iter()
            .filter(|(id, _)| !mismatched.contains_key(id))
            .map(|(_, m)| m)
            .collect();
        let aliases = agreeing
            .first()
            .map(|first| {
                first
                    .iter()
                    .filter(|m| **m != name && agreeing.iter().all(|o| o.contains(m)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Self {
            model: Some(name),
            aliases,
            mismatched,
            configured: configured.is_some(),
        }
    }

    /// Whether a request naming `model` is for this fleet.
    pub fn serves(&self, model: &str) -> bool {
        self.model.as_deref() == Some(model) || self.aliases.iter().any(|a| a == model)
    }

    /// Every name a client may use, the fleet's model first.
    pub fn names(&self) -> Vec<&str> {
        self.model
            .iter()
            .chain(&self.aliases)
            .map(String::as_str)
            .collect()
    }

    /// Whether `replica` may take the fleet's requests (it serves the model, or has not
    /// said yet).
    pub fn agrees(&self, replica: ReplicaId) -> bool {
        !self.mismatched.contains_key(&replica)
    }
}

/// Why no fleet of a node takes a request for a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unserved {
    /// Some fleet's engines have not said what they serve yet: it may be theirs.
    Loading,
    /// No fleet serves it; these are the models the node serves.
    Unknown(Vec<String>),
}

/// Which of a node's fleets (each serving one model) takes a request naming `model`:
/// the first that serves it; the first of all for a request that names none (the
/// engines judge a passed-through body).
pub fn choose_fleet<S: AsRef<ServedModels>>(fleets: &[S], model: &str) -> Result<usize, Unserved> {
    if model.is_empty() && !fleets.is_empty() {
        return Ok(0);
    }
    if let Some(i) = fleets.iter().position(|f| f.as_ref().serves(model)) {
        return Ok(i);
    }
    if fleets.iter().any(|f| f.as_ref().model.is_none()) {
        return Err(Unserved::Loading);
    }
    Err(Unserved::Unknown(
        fleets
            .iter()
            .filter_map(|f| f.as_ref().model.clone())
            .collect(),
    ))
}

/// How long a node that could not take a handed request is tried last.
pub const HANDOFF_AVOID_MS: u64 = 10_000;

/// In which order to try the other nodes that route a model this node does not: by
/// rendezvous hashing of the request's workload key (or, with none, of `salt`, e.g. its
/// request id), so a conversation enters the same router each time — that router's
/// prefix index and subsets know it — and the requests of many spread evenly; a node
/// that leaves moves only its own conversations. A node that could not be reached in
/// the last [`HANDOFF_AVOID_MS`] (`failed_at`: when each last failed) is tried last, so
/// a dead node does not cost every one of its conversations a timeout.
pub fn handoff_order(
    nodes: &[u64],
    key: Option<crate::slice::SliceKey>,
    salt: u64,
    failed_at: &std::collections::HashMap<u64, u64>,
    now_ms: u64,
) -> Vec<u64> {
    let seed = key.map_or(salt, |k| k.0);
    let avoided = |n: u64| {
        failed_at
            .get(&n)
            .is_some_and(|&t| now_ms.saturating_sub(t) < HANDOFF_AVOID_MS)
    };
    let mut ranked: Vec<(bool, std::cmp::Reverse<u64>, u64)> = nodes
        .iter()
        .map(|&n| {
            let rank = super::mix::mix64(seed ^ super::mix::mix64(n));
            (avoided(n), std::cmp::Reverse(rank), n)
        })
        .collect();
    ranked.sort_unstable();
    ranked.dedup_by_key(|(_, _, n)| *n);
    ranked.into_iter().map(|(_, _, n)| n).collect()
}

impl AsRef<ServedModels> for ServedModels {
    fn as_ref(&self) -> &ServedModels {
        self
    }
}

/// The names listed in an OpenAI `/v1/models` answer, in order; `None` if the body is
/// not such an answer.
pub fn parse_model_list(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?.as_array()?;
    let names: Vec<String> = data
        .iter()
        .filter_map(|m| m.get("id")?.as_str().map(str::to_owned))
        .filter(|m| !m.is_empty())
        .collect();
    (!names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::SliceKey;
    use proptest::prelude::*;

    fn order(nodes: &[u64], key: u64) -> Vec<u64> {
        handoff_order(nodes, Some(SliceKey(key)), 0, &Default::default(), 0)
    }

    #[test]
    fn a_conversation_is_handed_to_the_same_node_and_many_spread() {
        let nodes = [3, 7, 11];
        let none = std::collections::HashMap::new();
        let first = handoff_order(&nodes, Some(SliceKey(42)), 1, &none, 0);
        assert_eq!(
            handoff_order(&nodes, Some(SliceKey(42)), 2, &none, 0),
            first,
            "the key decides, not the salt"
        );
        assert_eq!(first.len(), 3);
        // Many keys: every node is someone's first choice, none takes most.
        let mut firsts = std::collections::HashMap::new();
        for k in 0..3_000 {
            *firsts.entry(order(&nodes, k)[0]).or_insert(0) += 1;
        }
        assert_eq!(firsts.len(), 3);
        assert!(
            firsts.values().all(|&c| (700..1_300).contains(&c)),
            "{firsts:?}"
        );
        assert!(order(&[], 42).is_empty());
    }

    #[test]
    fn a_node_that_just_failed_is_tried_last_until_the_window_passes() {
        let nodes = [3, 7, 11];
        let usual = order(&nodes, 42);
        let failed = std::collections::HashMap::from([(usual[0], 1_000)]);
        let key = Some(SliceKey(42));
        let during = handoff_order(&nodes, key, 0, &failed, 1_000 + HANDOFF_AVOID_MS - 1);
        assert_eq!(during, [usual[1], usual[2], usual[0]]);
        let after = handoff_order(&nodes, key, 0, &failed, 1_000 + HANDOFF_AVOID_MS);
        assert_eq!(after, usual);
    }

    proptest! {
        /// A node leaving moves only the conversations it was first for.
        #[test]
        fn a_node_leaving_moves_only_its_own(key in any::<u64>(), gone in 0usize..4) {
            let nodes = [1, 2, 3, 4];
            let before = order(&nodes, key);
            let left: Vec<u64> = nodes.iter().copied().filter(|&n| n != nodes[gone]).collect();
            let after = order(&left, key);
            let expected: Vec<u64> = before.into_iter().filter(|&n| n != nodes[gone]).collect();
            prop_assert_eq!(after, expected);
        }
    }

    fn reports(list: &[(u64, &[&str])]) -> Reports {
        list.iter()
            .map(|(id, ms)| (ReplicaId(*id), ms.iter().map(|m| m.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_request_goes_to_the_fleet_serving_its_model_or_is_refused_with_the_reason() {
        let fleet = |m: &str, engines: &[&str]| {
            ServedModels::decide(Some(m), None, &reports(&[(0, engines)]))
        };
        let big = fleet("big", &["big", "big-alias"]);
        let small = fleet("small", &["small"]);
        let loading = ServedModels::default();
        assert_eq!(choose_fleet(&[big.clone(), small.clone()], "small"), Ok(1));
        // Another name every engine of a fleet answers to.
        assert_eq!(
            choose_fleet(&[big.clone(), small.clone()], "big-alias"),
            Ok(0)
        );
        // No name: the first fleet's engines judge it.
        assert_eq!(choose_fleet(&[big.clone(), small.clone()], ""), Ok(0));
        assert_eq!(
            choose_fleet(&[big.clone(), small.clone()], "gpt-4o"),
            Err(Unserved::Unknown(vec!["big".into(), "small".into()]))
        );
        // While a fleet's engines have not said, an unknown name may be theirs.
        assert_eq!(
            choose_fleet(&[big.clone(), loading.clone()], "gpt-4o"),
            Err(Unserved::Loading)
        );
        assert_eq!(choose_fleet(&[big.clone(), loading.clone()], "big"), Ok(0));
        assert_eq!(
            choose_fleet::<ServedModels>(&[], ""),
            Err(Unserved::Unknown(vec![]))
        );
    }

    #[test]
    fn the_engines_name_the_model_and_the_odd_one_out_is_reported() {
        let r = reports(&[(0, &["tiny"]), (1, &["tiny"]), (2, &["qwen"])]);
        let s = ServedModels::decide(None, Some("profile-model"), &r);
        assert_eq!(s.model.as_deref(), Some("tiny"));
        assert!(!s.configured);
        assert_eq!(
            s.mismatched.keys().copied().collect::<Vec<_>>(),
            [ReplicaId(2)]
        );
        assert!(s.agrees(ReplicaId(0)) && !s.agrees(ReplicaId(2)) && s.agrees(ReplicaId(9)));
        assert!(s.serves("tiny") && !s.serves("qwen") && !s.serves("profile-model"));
    }

    #[test]
    fn configuration_overrides_and_nothing_known_means_no_model() {
        let r = reports(&[(0, &["tiny"])]);
        let s = ServedModels::decide(Some("big"), None, &r);
        assert_eq!(s.model.as_deref(), Some("big"));
        assert!(s.configured && !s.agrees(ReplicaId(0)));
        assert_eq!(
            ServedModels::decide(None, None, &Reports::new()).model,
            None
        );
        assert_eq!(
            ServedModels::decide(None, Some("fb"), &Reports::new())
                .model
                .as_deref(),
            Some("fb")
        );
    }

    #[test]
    fn ties_go_to_the_lowest_replica_and_shared_names_are_aliases() {
        let r = reports(&[(3, &["b"]), (1, &["a", "a-alias"])]);
        assert_eq!(
            ServedModels::decide(None, None, &r).model.as_deref(),
            Some("a")
        );
        let both = reports(&[(0, &["m", "m2"]), (1, &["m2", "m"])]);
        let s = ServedModels::decide(None, None, &both);
        assert_eq!(s.model.as_deref(), Some("m"));
        assert_eq!(s.names(), ["m", "m2"]);
        assert!(s.serves("m2"));
    }

    #[test]
    fn model_lists_are_read_from_openai_bodies() {
        let body = br#"{"object":"list","data":[{"id":"tiny","object":"model"},{"id":"lora-a"}]}"#;
        assert_eq!(
            parse_model_list(body),
            Some(vec!["tiny".into(), "lora-a".into()])
        );
        assert_eq!(parse_model_list(b"{\"data\":[]}"), None);
        assert_eq!(parse_model_list(b"<html>"), None);
    }

    proptest! {
        #[test]
        fn the_chosen_model_is_served_by_every_agreeing_replica(
            lists in proptest::collection::btree_map(0u64..8, proptest::collection::vec(0u8..4, 1..3), 0..6)
        ) {
            let r: Reports = lists
                .iter()
                .map(|(id, ms)| (ReplicaId(*id), ms.iter().map(|m| format!("m{m}")).collect()))
                .collect();
            let s = ServedModels::decide(None, None, &r);
            prop_assert_eq!(s.model.is_some(), !r.is_empty());
            if let Some(m) = &s.model {
                for (id, models) in &r {
                    prop_assert_eq!(s.agrees(*id), models.contains(m));
                }
                // No model has more supporters than the chosen one.
                let support = |x: &String| r.values().filter(|l| l.contains(x)).count();
                prop_assert!(r.values().flatten().all(|x| support(x) <= support(m)));
            }
        }
    }
}
