//! Measures the load the assigner balances: MU admitted per key range, per minute.
//!
//! Routers count the MU they admit into fixed buckets of the keyspace, not into the
//! current slices, so a measurement stays meaningful when the assignment changes under
//! it and gives the assigner finer-than-slice load to cut hot slices where the load is
//! (see [`SliceLoad`]). A report is a rate over the time since the previous one; merging
//! reports from several routers is a sum.

use super::load::SliceLoad;
use crate::slice::SliceKey;
use serde::{Deserialize, Serialize};

/// Default: 4,096 buckets, about 16 per slice on a 16-replica fleet.
pub const DEFAULT_BUCKET_BITS: u32 = 12;

/// Admitted MU per keyspace bucket since the last report.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadMeter {
    bits: u32,
    mu: Vec<f64>,
    since_us: u64,
}

/// One router's load over one interval: MU per bucket and the interval's length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub bucket_bits: u32,
    pub mu: Vec<f64>,
    pub from_us: u64,
    pub to_us: u64,
}

impl LoadMeter {
    /// A meter with `2^bits` buckets (bits clamped to 1..=20), counting from `now_us`.
    pub fn new(bits: u32, now_us: u64) -> Self {
        let bits = bits.clamp(1, 20);
        Self {
            bits,
            mu: vec![0.0; 1 << bits],
            since_us: now_us,
        }
    }

    fn bucket(&self, key: SliceKey) -> usize {
        (key.0 >> (64 - self.bits)) as usize
    }

    /// `mu` admitted (or, negative, corrected down) for a request of workload `key`.
    pub fn record(&mut self, key: SliceKey, mu: f64) {
        if mu.is_finite() {
            let b = self.bucket(key);
            self.mu[b] += mu;
        }
    }

    /// The MU counted since the last report, and a fresh interval from `now_us`.
    pub fn take(&mut self, now_us: u64) -> LoadReport {
        let mu = std::mem::replace(&mut self.mu, vec![0.0; 1 << self.bits]);
        let report = LoadReport {
            bucket_bits: self.bits,
            mu: mu.into_iter().map(|m| m.max(0.0)).collect(),
            from_us: self.since_us,
            to_us: now_us.max(self.since_us),
        };
        self.since_us = now_us.max(self.since_us);
        report
    }
}

impl LoadReport {
    /// Adds another router's report of the same interval (bucket counts must match; a
    /// report of another shape is ignored and `false` returned).
    pub fn merge(&mut self, other: &LoadReport) -> bool {
        if other.bucket_bits != self.bucket_bits || other.mu.len() != self.mu.len() {
            return false;
        }
        for (a, b) in self.mu.iter_mut().zip(&other.mu) {
            if b.is_finite() && *b > 0.0 {
                *a += b;
            }
        }
        self.from_us = self.from_us.min(other.from_us);
        self.to_us = self.to_us.max(other.to_us);
        true
    }

    /// The report as its receiver saw it arrive at `now_us` on the receiver's own
    /// clock: the same length, ending now. Each router stamps reports with its own
    /// process clock, so reports of routers that started at different times cannot be
    /// merged on their stamps (their union would span the older router's uptime and
    /// make every rate tiny); re-stamped on the leader's clock they can.
    pub fn received(&self, now_us: u64) -> LoadReport {
        let len = self.to_us.saturating_sub(self.from_us);
        LoadReport {
            bucket_bits: self.bucket_bits,
            mu: self.mu.clone(),
            from_us: now_us.saturating_sub(len),
            to_us: now_us,
        }
    }

    /// Folds `report` into what the leader gathered since its last round: merged when
    /// the shapes match, otherwise the newer report replaces the old.
    pub fn accumulate(acc: &mut Option<LoadReport>, report: &LoadReport) {
        match acc {
            Some(a) => {
                if !a.merge(report) {
                    *a = report.clone();
                }
            }
            None => *acc = Some(report.clone()),
        }
    }

    /// The report as a load map in MU/min; `None` for an empty interval or a malformed
    /// report (wrong bucket count).
    pub fn to_load(&self) -> Option<SliceLoad> {
        let elapsed_us = self.to_us.checked_sub(self.from_us)?;
        if elapsed_us == 0 || !(1..=20).contains(&self.bucket_bits) {
            return None;
        }
        if self.mu.len() != 1usize << self.bucket_bits {
            return None;
        }
        let per_min = 60e6 / elapsed_us as f64;
        let shift = 64 - self.bucket_bits;
        let ranges = self
            .mu
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let m = if m.is_finite() { m.max(0.0) } else { 0.0 };
                (SliceKey((i as u64) << shift), m * per_min)
            })
            .collect();
        SliceLoad::new(ranges).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routers_whose_clocks_started_apart_merge_on_the_leaders_clock() {
        // Router A has run for an hour, router B for ten seconds; both report the last
        // 200 ms, 60 MU each, and the leader gets both at its own t = 5 s.
        let report = |started_ago_us: u64| {
            let mut m = LoadMeter::new(4, started_ago_us - 200_000);
            m.record(SliceKey(0), 60.0);
            m.take(started_ago_us)
        };
        let (a, b) = (report(3_600_000_000), report(10_000_000));
        let mut naive = a.clone();
        naive.merge(&b);
        // On the routers' own stamps the interval spans an hour: the rate comes out
        // thousands of times too low.
        assert!(naive.to_load().unwrap().total() < 36_000.0 / 1_000.0);
        let mut acc = None;
        for r in [&a, &b] {
            LoadReport::accumulate(&mut acc, &r.received(5_000_000));
        }
        let merged = acc.unwrap();
        assert_eq!((merged.from_us, merged.to_us), (4_800_000, 5_000_000));
        // 120 MU over 200 ms: 36,000 MU/min.
        assert!((merged.to_load().unwrap().total() - 36_000.0).abs() < 1e-6);
    }

    #[test]
    fn rates_per_minute_and_resets() {
        let mut m = LoadMeter::new(4, 0);
        m.record(SliceKey(0), 10.0);
        m.record(SliceKey(u64::MAX), 20.0);
        m.record(SliceKey(u64::MAX), -5.0);
        let r = m.take(30_000_000);
        let load = r.to_load().unwrap();
        assert!((load.total() - 50.0).abs() < 1e-9, "{}", load.total());
        let top = load.range_load(SliceKey(15 << 60), None);
        assert!((top - 30.0).abs() < 1e-9);
        let again = m.take(60_000_000);
        assert_eq!(again.to_load().unwrap().total(), 0.0);
        assert_eq!(again.from_us, 30_000_000);
    }

    #[test]
    fn merging_sums_and_rejects_other_shapes() {
        let mut a = LoadMeter::new(3, 0);
        let mut b = LoadMeter::new(3, 0);
        a.record(SliceKey(1), 6.0);
        b.record(SliceKey(1), 4.0);
        let mut ra = a.take(60_000_000);
        assert!(ra.merge(&b.take(60_000_000)));
        assert!((ra.to_load().unwrap().total() - 10.0).abs() < 1e-9);
        let c = LoadMeter::new(5, 0).take(1);
        assert!(!ra.merge(&c));
        assert!(LoadMeter::new(3, 5).take(5).to_load().is_none());
    }

    proptest! {
        #[test]
        fn never_negative_and_conserves_positive_load(
            keys in proptest::collection::vec((any::<u64>(), 0.0f64..1e4), 0..200),
            bits in 1u32..14,
            secs in 1u64..600,
        ) {
            let mut m = LoadMeter::new(bits, 0);
            let mut total = 0.0;
            for &(k, mu) in &keys {
                m.record(SliceKey(k), mu);
                total += mu;
            }
            let load = m.take(secs * 1_000_000).to_load().unwrap();
            prop_assert!(load.ranges().all(|(_, l)| l >= 0.0));
            let expect = total * 60.0 / secs as f64;
            prop_assert!((load.total() - expect).abs() <= 1e-6 * expect.max(1.0));
        }
    }
}
