//! A request of a trace, compact enough that a million of them fit in memory: the
//! prompt is a list of segments whose tokens are generated on demand, and equal
//! segments (same seed and length) generate equal tokens, so shared prefixes in the
//! source trace become shared prefixes the engine's cache can hit.

use sluice_engine::tokenizer::VOCAB;

/// One run of prompt tokens: `len` tokens drawn deterministically from `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    pub seed: u64,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prompt {
    pub segments: Vec<Segment>,
}

impl Prompt {
    pub fn len(&self) -> u32 {
        self.segments.iter().map(|s| s.len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The prompt's token ids.
    pub fn tokens(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len() as usize);
        for s in &self.segments {
            out.extend(
                (0..u64::from(s.len))
                    .map(|i| (splitmix64(s.seed ^ splitmix64(i)) % u64::from(VOCAB)) as u32),
            );
        }
        out
    }
}

/// One request: when it arrives, whose it is, what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    /// Microseconds from the start of the trace.
    pub arrival_us: u64,
    /// The workload key the trace carries (its session, conversation or client id), or
    /// `None` when it has none: the router then derives one from the prompt's content,
    /// as a live router does for a request without a session header, user or API key.
    pub session: Option<u64>,
    pub prompt: Prompt,
    /// Tokens the request generates (the trace's recorded output length).
    pub output_tokens: u32,
}

/// A whole trace, sorted by arrival.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub name: String,
    pub requests: Vec<TraceRequest>,
}

impl Trace {
    pub fn sort(&mut self) {
        self.requests.sort_by_key(|r| r.arrival_us);
    }

    /// Time from the first arrival to the last.
    pub fn span_us(&self) -> u64 {
        match (self.requests.first(), self.requests.last()) {
            (Some(a), Some(b)) => b.arrival_us - a.arrival_us,
            _ => 0,
        }
    }
}

/// SplitMix64's hash step, the same one the engine uses for its output words.
pub use sluice_engine::words::mix64 as splitmix64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_segments_give_equal_tokens_and_different_ones_differ() {
        let a = Prompt {
            segments: vec![Segment { seed: 1, len: 512 }, Segment { seed: 2, len: 100 }],
        };
        let b = Prompt {
            segments: vec![Segment { seed: 1, len: 512 }, Segment { seed: 3, len: 100 }],
        };
        let (ta, tb) = (a.tokens(), b.tokens());
        assert_eq!(ta.len(), 612);
        assert_eq!(ta[..512], tb[..512]);
        assert_ne!(ta[512..], tb[512..]);
        assert!(ta.iter().all(|&t| t < VOCAB));
    }
}
