//! Prompt tokens as the engine counts them. The router prices a prompt before any
//! engine has seen it, with a stand-in tokenizer; real tokenizers split text
//! differently (a 2k-vocabulary test model makes several times more tokens than
//! Llama-3's 128k one). Every answer's usage says how many prompt tokens the engine
//! really saw, so the router learns the ratio and prices with it.

/// Weight of one answer once the ratio has settled (a moving average over ~50).
const WEIGHT: f64 = 0.02;
/// Answers averaged plainly before the moving average takes over.
const WARMUP: u32 = 50;
/// The ratio is kept within these bounds, whatever a broken usage report says.
const BOUNDS: (f64, f64) = (0.05, 20.0);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenScale {
    ratio: f64,
    samples: u32,
}

impl Default for TokenScale {
    fn default() -> Self {
        Self {
            ratio: 1.0,
            samples: 0,
        }
    }
}

impl TokenScale {
    /// Engine tokens per stand-in token, as learned so far (1 before any answer).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// A prompt the stand-in counted `counted` tokens of, in the engine's tokens.
    pub fn apply(&self, counted: u32) -> u32 {
        (f64::from(counted) * self.ratio)
            .round()
            .min(f64::from(u32::MAX)) as u32
    }

    /// An answer: the stand-in counted `counted`, the engine reported `engine`.
    pub fn observe(&mut self, counted: u32, engine: u32) {
        if counted == 0 || engine == 0 {
            return;
        }
        let r = (f64::from(engine) / f64::from(counted)).clamp(BOUNDS.0, BOUNDS.1);
        self.samples = self.samples.saturating_add(1);
        let w = if self.samples <= WARMUP {
            1.0 / f64::from(self.samples)
        } else {
            WEIGHT
        };
        self.ratio += w * (r - self.ratio);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn learns_how_the_engine_counts() {
        let mut s = TokenScale::default();
        assert_eq!(s.apply(100), 100);
        for _ in 0..200 {
            s.observe(100, 350);
        }
        assert!((s.ratio() - 3.5).abs() < 1e-9);
        assert_eq!(s.apply(1000), 3500);
        // Empty counts teach nothing.
        s.observe(0, 10);
        s.observe(10, 0);
        assert!((s.ratio() - 3.5).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn stays_within_bounds_and_between_observed_ratios(
            obs in proptest::collection::vec((1u32..10_000, 1u32..10_000), 1..200)
        ) {
            let mut s = TokenScale::default();
            let mut lo = f64::MAX;
            let mut hi = f64::MIN;
            for (c, e) in obs {
                s.observe(c, e);
                let r = (f64::from(e) / f64::from(c)).clamp(BOUNDS.0, BOUNDS.1);
                lo = lo.min(r);
                hi = hi.max(r);
                prop_assert!(s.ratio() >= lo - 1e-9 && s.ratio() <= hi + 1e-9);
            }
        }
    }
}
