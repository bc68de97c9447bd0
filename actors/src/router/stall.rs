//! Hangs found from the streams themselves. A router sees every token its streams
//! carry: when every stream a replica is producing has stopped for much longer than that
//! replica's own recent gap between tokens (and at least a floor), the replica is hung
//! — whatever its `/health` says — and its streams should move. Needs no probe and no
//! engine gauge, so it works for a replica on another node as well as for a local one.
//! Streams that have not produced their first token are not judged: under overload a
//! new request may wait long for its prefill while the replica is working.

use super::RequestId;
use crate::slice::ReplicaId;
use std::collections::HashMap;

/// When a replica's streams count as stalled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallConfig {
    /// Never sooner than this silence.
    pub floor_ms: u64,
    /// Silence of this many of the replica's recent gaps between tokens.
    pub gaps: f64,
}

impl Default for StallConfig {
    fn default() -> Self {
        Self {
            floor_ms: 2_500,
            gaps: 20.0,
        }
    }
}

/// Weight of a new gap in the running mean.
const GAP_WEIGHT: f64 = 0.1;

/// One replica's producing streams.
#[derive(Debug, Clone, Default)]
struct Streams {
    /// When each stream last produced tokens.
    last_ms: HashMap<RequestId, u64>,
    /// Running mean of the gap between one token and the next, per stream.
    gap_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct StreamStalls {
    config: StallConfig,
    replicas: HashMap<ReplicaId, Streams>,
}

impl StreamStalls {
    pub fn new(config: StallConfig) -> Self {
        Self {
            config,
            replicas: HashMap::new(),
        }
    }

    /// Stream `id` on `replica` produced `tokens` more tokens at `now_ms`.
    pub fn progressed(&mut self, replica: ReplicaId, id: RequestId, tokens: u32, now_ms: u64) {
        if tokens == 0 {
            return;
        }
        let s = self.replicas.entry(replica).or_default();
        if let Some(prev) = s.last_ms.insert(id, now_ms) {
            let gap = now_ms.saturating_sub(prev) as f64 / f64::from(tokens);
            s.gap_ms = Some(match s.gap_ms {
                Some(mean) => mean + GAP_WEIGHT * (gap - mean),
                None => gap,
            });
        }
    }

    /// Stream `id` left `replica` (finished, failed, or moved elsewhere).
    pub fn ended(&mut self, replica: ReplicaId, id: RequestId) {
        // The replica's pace (its mean gap) outlives its streams.
        if let Some(s) = self.replicas.get_mut(&replica) {
            s.last_ms.remove(&id);
        }
    }

    /// The silence after which `replica`'s streams count as stalled.
    pub fn bound_ms(&self, replica: ReplicaId) -> u64 {
        let gap = self
            .replicas
            .get(&replica)
            .and_then(|s| s.gap_ms)
            .unwrap_or(0.0);
        (self.config.gaps * gap).max(self.config.floor_ms as f64) as u64
    }

    /// The replicas all of whose producing streams have been silent past their bound at
    /// `now_ms` (at least one stream each), in replica order. Their streams are judged
    /// once: they are forgotten here (they move, or come back with their next token).
    pub fn take_stalled(&mut self, now_ms: u64) -> Vec<ReplicaId> {
        let mut out: Vec<ReplicaId> = self
            .replicas
            .iter()
            .filter(|(&r, s)| {
                let bound = self.bound_ms(r);
                !s.last_ms.is_empty()
                    && s.last_ms
                        .values()
                        .all(|&t| now_ms.saturating_sub(t) > bound)
            })
            .map(|(&r, _)| r)
            .collect();
        out.sort_unstable();
        for r in &out {
            if let Some(s) = self.replicas.get_mut(r) {
                s.last_ms.clear();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const R: ReplicaId = ReplicaId(1);

    #[test]
    fn a_replica_is_stalled_when_all_its_streams_stop_past_the_bound() {
        let mut s = StreamStalls::new(StallConfig::default());
        // Two streams at 20 ms a token.
        for t in 0..50u64 {
            s.progressed(R, 1, 1, t * 20);
            s.progressed(R, 2, 1, t * 20 + 5);
        }
        assert_eq!(s.bound_ms(R), 2_500, "the floor: 20 gaps of 20 ms are less");
        let last = 49 * 20 + 5;
        assert!(s.take_stalled(last + 2_400).is_empty());
        // One stream still moving: not a hang (that stream's request may be the
        // replica's only work left).
        let mut moving = s.clone();
        moving.progressed(R, 2, 1, last + 2_550);
        assert!(moving.take_stalled(last + 2_600).is_empty());
        // A stream that ended is no longer judged; with none left, nothing is.
        moving.ended(R, 1);
        moving.ended(R, 2);
        assert!(moving.take_stalled(1_000_000).is_empty());
        // Both silent: stalled, and judged once.
        assert_eq!(s.take_stalled(last + 2_600), vec![R]);
        assert!(s.take_stalled(last + 5_000).is_empty());
        // A stream that comes back is judged again.
        s.progressed(R, 1, 1, last + 5_000);
        assert_eq!(s.take_stalled(last + 8_000), vec![R]);
    }

    #[test]
    fn a_slow_replica_gets_a_longer_bound() {
        let mut s = StreamStalls::new(StallConfig::default());
        for t in 0..100u64 {
            s.progressed(R, 1, 1, t * 400);
        }
        let bound = s.bound_ms(R);
        assert!((7_900..=8_000).contains(&bound), "{bound}");
        assert!(
            s.take_stalled(99 * 400 + 7_000).is_empty(),
            "slow, not hung"
        );
        // Tokens that come in batches count per token.
        let mut b = StreamStalls::new(StallConfig::default());
        for t in 0..100u64 {
            b.progressed(R, 1, 10, t * 400);
        }
        assert_eq!(b.bound_ms(R), 2_500);
    }

    proptest! {
        /// A replica whose every stream produced within its bound is never stalled.
        #[test]
        fn streams_that_keep_producing_are_never_stalled(
            gaps in proptest::collection::vec(1u64..3_000, 2..100),
            streams in 1u64..5,
        ) {
            let mut s = StreamStalls::new(StallConfig::default());
            let mut now = 0;
            for gap in gaps {
                now += gap;
                for k in 0..streams {
                    s.progressed(R, k, 1, now);
                }
                let bound = s.bound_ms(R);
                prop_assert!(s.take_stalled(now + bound).is_empty());
            }
        }
    }
}
