//! The router's 64-bit mixers, for hashes and orders that must look random yet be the same wherever
//! the same inputs meet them (a router's tie order, a workload's node ranking) — and the
//! baselines' seeded generator, which the simulator replays.

/// SplitMix64's finalizer (Steele, Lea and Flood, 2014): a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One step of SplitMix64 from state `z`: the golden-ratio increment, then the
/// finalizer. The hash the router's block chains and blast radii are built from.
pub fn splitmix64(z: u64) -> u64 {
    mix64(z.wrapping_add(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_finalizer_is_splitmix64s() {
        // SplitMix64 seeded with 0: its first output is the finalizer of the golden
        // ratio increment (the reference implementation's known first value).
        assert_eq!(mix64(0x9E37_79B9_7F4A_7C15), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix64(0), 0);
        // The engine's words are drawn with the same step.
        assert_eq!(splitmix64(12345), sluice_engine::words::mix64(12345));
    }
}
