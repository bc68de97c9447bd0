//! Bounded memories (affinity, fan-out points, the prefix index) forget their least
//! recently used half at once, so that trimming costs O(n) per n/2 insertions.

/// The median of `ticks`: entries last used at or before it are the older half.
pub fn median_tick(ticks: impl Iterator<Item = u64>) -> u64 {
    let mut ticks: Vec<u64> = ticks.collect();
    if ticks.is_empty() {
        return 0;
    }
    let mid = ticks.len() / 2;
    *ticks.select_nth_unstable(mid).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median() {
        assert_eq!(median_tick([5, 1, 9, 3, 7].into_iter()), 5);
        assert_eq!(median_tick(std::iter::empty()), 0);
    }
}
