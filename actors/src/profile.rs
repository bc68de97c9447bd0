//! A profile: everything Sluice knows about one (model, hardware) pair — its price
//! coefficients, a replica's capacity, and the engine model that simulates it.

use crate::mu::MuCoefficients;
use serde::{Deserialize, Serialize};
use sluice_engine::EngineParams;
use std::path::Path;

/// The profile shipped with Sluice: Llama-3.1-8B on one H100.
pub const DEFAULT_PROFILE_TOML: &str = include_str!("../profiles/llama-3.1-8b-h100.toml");

/// The second model of the embedded default: Llama-3.2-3B on one H100 (its step model
/// scaled from the 8B's, see the file).
pub const SMALL_PROFILE_TOML: &str = include_str!("../profiles/llama-3.2-3b-h100.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub model: String,
    pub hardware: String,
    pub capacity_mu_per_min: f64,
    pub mu: MuCoefficients,
    #[serde(default)]
    pub engine: EngineParams,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid profile {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Profile {
    pub fn default_profile() -> Self {
        // The embedded file is checked by a unit test, so this cannot fail at run time.
        Self::parse(DEFAULT_PROFILE_TOML, "<embedded>")
            .unwrap_or_else(|e| panic!("embedded profile: {e}"))
    }

    /// Whether this profile was calibrated for `model`: names are compared without case
    /// and without a hub organisation (`meta-llama/Llama-3.1-8B-Instruct` is
    /// `llama-3.1-8b-instruct`), because engines are started with either.
    pub fn serves(&self, model: &str) -> bool {
        fn bare(m: &str) -> String {
            m.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(m)
                .to_ascii_lowercase()
        }
        bare(&self.model) == bare(model)
    }

    /// The profiles built into the binary.
    pub fn embedded() -> Vec<Self> {
        // Checked by a unit test, like the default.
        let small = Self::parse(SMALL_PROFILE_TOML, "<embedded 3b>")
            .unwrap_or_else(|e| panic!("embedded profile: {e}"));
        vec![Self::default_profile(), small]
    }

    /// The built-in profile calibrated for `model`, if there is one.
    pub fn embedded_for(model: &str) -> Option<Self> {
        Self::embedded().into_iter().find(|p| p.serves(model))
    }

    /// Tokens of KV one replica's prefix cache holds.
    pub fn kv_cache_tokens(&self) -> u64 {
        u64::from(self.engine.kv_blocks) * u64::from(self.engine.block_size)
    }

    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let p: Profile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let c = &p.mu;
        let coeffs = [
            c.uncached_input,
            c.cached_input,
            c.output,
            c.input_output,
            c.image,
            c.attention,
        ];
        if coeffs.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(invalid(
                "MU coefficients must be finite and non-negative".into(),
            ));
        }
        if c.cached_input > c.uncached_input {
            return Err(invalid(
                "mu.cached_input must not exceed mu.uncached_input: a cached prompt token never costs more than computing it".into(),
            ));
        }
        if !(p.capacity_mu_per_min.is_finite() && p.capacity_mu_per_min > 0.0) {
            return Err(invalid("capacity_mu_per_min must be positive".into()));
        }
        if p.model.is_empty() {
            return Err(invalid("model must not be empty".into()));
        }
        let e = &p.engine;
        if e.block_size == 0
            || e.kv_blocks == 0
            || e.max_num_batched_tokens == 0
            || e.max_num_seqs == 0
        {
            return Err(invalid("engine block_size, kv_blocks, max_num_batched_tokens and max_num_seqs must be positive".into()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_profile_parses_and_matches_engine_defaults() {
        let p = Profile::default_profile();
        assert_eq!(p.model, "llama-3.1-8b-instruct");
        assert_eq!(p.engine, EngineParams::default());
        // The price is calibrated on the engine model (`sluice calibrate --virtual`;
        // the calibration's tests check that it reproduces these numbers). Its terms
        // land near the step model's own coefficients: a computed prompt token near
        // a = 18 µs, an attention pair near q = 0.6 ns.
        let e = &p.engine;
        let near = |got: f64, want: f64| (got / want - 1.0).abs() < 0.2;
        assert!(
            near(p.mu.uncached_input, e.prefill_token_us / 1000.0),
            "{p:?}"
        );
        assert!(
            near(p.mu.attention, e.prefill_attention_pair_us / 1000.0),
            "{p:?}"
        );
        // A replica run at the SLO delivers about a minute of its time per minute.
        assert!((50_000.0..70_000.0).contains(&p.capacity_mu_per_min));
    }

    #[test]
    fn profiles_match_model_names_as_engines_spell_them() {
        let p = Profile::default_profile();
        assert!(p.serves("llama-3.1-8b-instruct"));
        assert!(p.serves("meta-llama/Llama-3.1-8B-Instruct"));
        assert!(!p.serves("Qwen/Qwen2.5-7B-Instruct"));
        assert!(Profile::embedded_for("meta-llama/Llama-3.1-8B-Instruct").is_some());
        assert!(Profile::embedded_for("tiny-llama-nobody-calibrated").is_none());
    }

    #[test]
    fn the_second_embedded_model_costs_less_per_token_and_sustains_as_many_mu() {
        let big = Profile::default_profile();
        let small = Profile::embedded_for("meta-llama/Llama-3.2-3B-Instruct").unwrap();
        assert_eq!(small.model, "llama-3.2-3b-instruct");
        // Fewer weights: every token is cheaper on the smaller model's replica...
        assert!(small.mu.uncached_input < big.mu.uncached_input);
        assert!(small.mu.output < big.mu.output);
        assert!(small.kv_cache_tokens() > big.kv_cache_tokens());
        // ...while an MU is still a millisecond of its replica's time at the SLO.
        assert!((50_000.0..70_000.0).contains(&small.capacity_mu_per_min));
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let bad = DEFAULT_PROFILE_TOML.replace("\noutput = ", "\noutput = -1.0 # ");
        assert!(Profile::parse(&bad, "x.toml")
            .unwrap_err()
            .to_string()
            .contains("non-negative"));
        // A cached prompt token priced above a computed one is refused: the router's
        // choice relies on a cached token never costing more.
        let dear_cache =
            DEFAULT_PROFILE_TOML.replace("\ncached_input = 0.0", "\ncached_input = 0.5");
        let err = Profile::parse(&dear_cache, "z.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mu.cached_input"), "{err}");
        let err = Profile::parse("model = 3", "y.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("y.toml"), "{err}");
        let missing = Profile::load(Path::new("/nonexistent/p.toml"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/p.toml"));
    }
}
