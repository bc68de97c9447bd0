//! The price of a request in model units (MU).
//!
//! `MU = α·u + α_c·c + ψ·u·(c + u/2) + β·o + γ·o·(u + c + o/2) + δ·images` for `u`
//! uncached and `c` cached prompt tokens and `o` output tokens, with coefficients per
//! (model, hardware) profile. ψ is prefill attention: each computed prompt token attends
//! to the context before it, so a long uncached prompt costs more than linearly. γ is
//! the KV a decode reads and holds: each generated token reads the prompt and the tokens
//! generated before it, and a long context takes KV memory that would otherwise batch
//! more sequences. One MU is one
//! millisecond of a replica's time when it runs as hard as the SLO allows, whatever the
//! request's shape (`docs/PROFILE.md`); `sluice calibrate` fits the coefficients over a
//! grid of shapes so that a replica's capacity in MU per minute holds for every mix.

use serde::{Deserialize, Serialize};

/// Per-profile price coefficients, in MU per token (or per image).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuCoefficients {
    /// α: a prompt token the engine must compute.
    pub uncached_input: f64,
    /// α_c: a prompt token found in the prefix cache.
    pub cached_input: f64,
    /// β: a generated token.
    pub output: f64,
    /// γ: a generated token reads (and holds) the KV of everything before it, so decode
    /// costs `o·(input + o/2)` context-token steps.
    pub input_output: f64,
    /// δ: an attached image.
    pub image: f64,
    /// ψ: a pair of (computed prompt token, token before it) in prefill attention.
    /// Profiles written before this term existed price it at 0.
    #[serde(default)]
    pub attention: f64,
}

/// What a request costs to serve, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestShape {
    pub uncached_input: u32,
    pub cached_input: u32,
    pub output: u32,
    pub images: u32,
}

impl RequestShape {
    pub fn input(&self) -> u64 {
        u64::from(self.uncached_input) + u64::from(self.cached_input)
    }
}

impl MuCoefficients {
    /// The MU price of a whole request.
    pub fn price(&self, s: &RequestShape) -> f64 {
        self.prefill_price(s) + self.decode_price(s.input(), u64::from(s.output))
    }

    /// The part of the price paid before the first token: prompt and images.
    pub fn prefill_price(&self, s: &RequestShape) -> f64 {
        let (u, c) = (f64::from(s.uncached_input), f64::from(s.cached_input));
        self.uncached_input * u
            + self.cached_input * c
            + self.attention * attention_pairs(u, c)
            + self.image * f64::from(s.images)
    }

    /// The price of generating `output` tokens after a context of `input` tokens.
    pub fn decode_price(&self, input: u64, output: u64) -> f64 {
        let (i, o) = (input as f64, output as f64);
        self.output * o + self.input_output * kv_token_steps(i, o)
    }
}

/// Context tokens read over the decode of `output` tokens after `input`: each token
/// reads everything before it.
pub fn kv_token_steps(input: f64, output: f64) -> f64 {
    output * (input + output / 2.0)
}

/// Token pairs of prefill attention when `uncached` tokens are computed after `cached`
/// ones: each computed token attends to everything before it. Moving a token from
/// computed to cached never adds pairs, so a cached token never costs more.
pub fn attention_pairs(uncached: f64, cached: f64) -> f64 {
    uncached * (cached + uncached / 2.0)
}

/// Text-only prices with no cache discount: enough for the tests of what is priced in
/// MU (the in-flight ledger, the router) without a calibrated profile.
#[cfg(test)]
pub(crate) fn test_coefficients() -> MuCoefficients {
    MuCoefficients {
        uncached_input: 0.019,
        cached_input: 0.0,
        output: 0.129,
        input_output: 0.00004,
        image: 0.0,
        attention: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn coeffs() -> MuCoefficients {
        MuCoefficients {
            uncached_input: 0.019,
            cached_input: 0.001,
            output: 0.129,
            input_output: 0.00004,
            image: 11.0,
            attention: 6e-7,
        }
    }

    #[test]
    fn long_requests_cost_hundreds_of_times_a_chat_turn() {
        let c = coeffs();
        let chat = c.price(&RequestShape {
            uncached_input: 200,
            output: 100,
            ..Default::default()
        });
        let long = c.price(&RequestShape {
            uncached_input: 30_000,
            output: 2_000,
            ..Default::default()
        });
        assert!(long / chat > 100.0, "{long} / {chat}");
    }

    #[test]
    fn price_is_the_formula() {
        let c = coeffs();
        let s = RequestShape {
            uncached_input: 1000,
            cached_input: 500,
            output: 10,
            images: 2,
        };
        let pairs = 1000.0 * (500.0 + 1000.0 / 2.0);
        let want = 0.019 * 1000.0
            + 0.001 * 500.0
            + 6e-7 * pairs
            + 0.129 * 10.0
            + 0.00004 * 10.0 * (1500.0 + 5.0)
            + 22.0;
        assert!((c.price(&s) - want).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn price_is_monotone_in_every_dimension(u in 0u32..100_000, k in 0u32..100_000, o in 0u32..10_000, im in 0u32..8) {
            let c = coeffs();
            let s = RequestShape { uncached_input: u, cached_input: k, output: o, images: im };
            let p = c.price(&s);
            prop_assert!(p >= 0.0);
            for bigger in [
                RequestShape { uncached_input: u + 1, ..s },
                RequestShape { cached_input: k + 1, ..s },
                RequestShape { output: o + 1, ..s },
                RequestShape { images: im + 1, ..s },
            ] {
                prop_assert!(c.price(&bigger) >= p);
            }
            // A cached token never costs more than computing it.
            let moved = RequestShape { uncached_input: u + 1, cached_input: k, ..s };
            let cached = RequestShape { uncached_input: u, cached_input: k + 1, ..s };
            prop_assert!(c.price(&cached) <= c.price(&moved));
        }

        #[test]
        fn prefill_plus_decode_is_the_whole(u in 0u32..50_000, o in 0u32..5_000) {
            let c = coeffs();
            let s = RequestShape { uncached_input: u, output: o, ..Default::default() };
            let parts = c.prefill_price(&s) + c.decode_price(s.input(), u64::from(o));
            prop_assert!((c.price(&s) - parts).abs() < 1e-6);
        }
    }
}
