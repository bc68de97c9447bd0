//! The in-flight cost of a request, corrected as its tokens stream back.
//!
//! At admission a request is charged its whole estimated price. Once its first token
//! arrives the prefill is paid, and each further token pays its own decode cost, so the
//! remaining charge is what is left to generate. When a request outlives its estimate,
//! the estimate is raised instead of letting the charge hit zero while it still runs.

use super::pricing::{MuCoefficients, RequestShape};

/// A request's cost model while it is in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InflightCost {
    shape: RequestShape,
    max_tokens: Option<u32>,
}

impl InflightCost {
    /// `shape.output` is the admission-time estimate of the output length.
    pub fn new(shape: RequestShape, max_tokens: Option<u32>) -> Self {
        Self { shape, max_tokens }
    }

    pub fn shape(&self) -> RequestShape {
        self.shape
    }

    /// Output tokens still expected after `generated` have streamed back.
    pub fn remaining_output(&self, generated: u32) -> u32 {
        let est = self.shape.output;
        if generated < est {
            return est - generated;
        }
        // Past the estimate: expect a quarter more than generated so far (at least one
        // token), but never beyond max_tokens.
        let extra = (generated / 4).max(1);
        match self.max_tokens {
            Some(m) if generated >= m => 0,
            Some(m) => extra.min(m - generated),
            None => extra,
        }
    }

    /// The part of [`remaining_mu`](Self::remaining_mu) that a request arriving now on
    /// the same replica would wait for: the prefill while it is owed, and only
    /// `decode_share` of the decode left (a newcomer's prefill runs in the same engine
    /// steps as the running decodes; what each of them costs it is its own slice of
    /// those steps, not its whole remaining output).
    pub fn queued_mu(&self, c: &MuCoefficients, generated: u32, decode_share: f64) -> f64 {
        let left = u64::from(self.remaining_output(generated));
        let decode = c.decode_price(self.shape.input() + u64::from(generated), left);
        let prefill = if generated == 0 {
            c.prefill_price(&self.shape)
        } else {
            0.0
        };
        prefill + decode_share.clamp(0.0, 1.0) * decode
    }

    /// MU still owed to the replica after `generated` output tokens.
    pub fn remaining_mu(&self, c: &MuCoefficients, generated: u32) -> f64 {
        if generated == 0 {
            return c.price(&self.shape);
        }
        let context = self.shape.input() + u64::from(generated);
        let left = self.remaining_output(generated);
        c.decode_price(context, u64::from(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn coeffs() -> MuCoefficients {
        crate::mu::pricing::test_coefficients()
    }

    #[test]
    fn prefill_is_released_at_the_first_token_and_decode_token_by_token() {
        let c = coeffs();
        let cost = InflightCost::new(
            RequestShape {
                uncached_input: 10_000,
                output: 100,
                ..Default::default()
            },
            Some(100),
        );
        let full = cost.remaining_mu(&c, 0);
        let after_first = cost.remaining_mu(&c, 1);
        assert!(full - after_first > 0.019 * 10_000.0 - 1e-6);
        assert!(cost.remaining_mu(&c, 50) < after_first);
        assert_eq!(cost.remaining_mu(&c, 100), 0.0);
    }

    #[test]
    fn a_request_past_its_estimate_still_owes_something() {
        let c = coeffs();
        let cost = InflightCost::new(
            RequestShape {
                uncached_input: 100,
                output: 10,
                ..Default::default()
            },
            None,
        );
        assert!(cost.remaining_mu(&c, 10) > 0.0);
        assert!(cost.remaining_mu(&c, 400) > cost.remaining_mu(&c, 10));
    }

    proptest! {
        #[test]
        fn a_newcomer_waits_for_the_prefill_and_a_share_of_the_decode(
            u in 0u32..20_000, o in 1u32..2_000, g in 0u32..3_000, share in 0.0f64..=1.0,
        ) {
            let c = coeffs();
            let cost = InflightCost::new(RequestShape { uncached_input: u, output: o, ..Default::default() }, None);
            let whole = cost.remaining_mu(&c, g);
            let queued = cost.queued_mu(&c, g, share);
            prop_assert!(queued <= whole + 1e-9);
            prop_assert!((cost.queued_mu(&c, g, 1.0) - whole).abs() < 1e-6);
            if g == 0 {
                // Nothing has streamed: the prefill is still owed in full.
                let prefill = c.prefill_price(&cost.shape());
                prop_assert!(queued >= prefill - 1e-9);
            }
        }

        #[test]
        fn remaining_never_grows_while_within_the_estimate(u in 0u32..50_000, est in 1u32..4000, steps in proptest::collection::vec(0u32..4000, 1..20)) {
            let c = coeffs();
            let cost = InflightCost::new(RequestShape { uncached_input: u, output: est, ..Default::default() }, Some(est));
            let mut gens: Vec<u32> = steps.into_iter().map(|g| g.min(est)).collect();
            gens.sort_unstable();
            let mut last = cost.remaining_mu(&c, 0);
            for g in gens {
                let now = cost.remaining_mu(&c, g);
                prop_assert!(now <= last + 1e-9);
                prop_assert!(now >= 0.0);
                last = now;
            }
        }

        #[test]
        fn never_owes_beyond_max_tokens(u in 0u32..10_000, est in 1u32..100, max in 1u32..1000, g in 0u32..2000) {
            let cost = InflightCost::new(RequestShape { uncached_input: u, output: est.min(max), ..Default::default() }, Some(max));
            prop_assert!(g + cost.remaining_output(g) <= max.max(g));
        }
    }
}
