//! Where the capacity sweep goes next: the search for the capacity knee, the highest
//! concurrency whose p90 TPOT keeps the SLO.
//!
//! The listed levels are measured in rising order (those above the limit are dropped).
//! While the SLO holds and throughput still rises, the sweep goes on past them by
//! doubling, up to the limit. Once a level breaks the SLO above one that kept it, the
//! knee lies between the two: it is narrowed by bisection (a few steps). If the very
//! first level breaks the SLO, the sweep halves the concurrency until one keeps it (or
//! even one request alone does not). The search ends with a [`CapacityStop`] saying why,
//! in every case: the knee found, or why it could not be.

use serde::Serialize;

/// A level's throughput must exceed the best of the lower ones by this factor to count
/// as still rising.
pub const SATURATION_GAIN: f64 = 1.02;

/// Levels in a row that must fail to raise throughput before the engine counts as
/// saturated: on a shared host, one level measured in a quiet moment can make the next
/// one look no faster.
pub const SATURATION_LEVELS: usize = 2;

/// Why the capacity sweep stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum CapacityStop {
    /// The knee: concurrency `within` kept the TPOT SLO and `broken` (the next level
    /// measured above it) did not.
    Knee { within: usize, broken: usize },
    /// Even one request at a time broke the SLO.
    SloBrokenAlone,
    /// Throughput stopped rising ([`SATURATION_LEVELS`] levels in a row, the last `at`,
    /// brought less than 2% over the best lower level, `best`, or the last allowed did)
    /// while the SLO still held: the engine is saturated, or runs no more than a fixed
    /// number of requests at once and queues the rest.
    Saturated { at: usize, best: usize },
    /// The SLO still held at the highest concurrency allowed.
    Limit { max: usize },
    /// Measuring the level at `concurrency` failed.
    Error { concurrency: usize, message: String },
}

impl CapacityStop {
    /// Whether the latency knee was found.
    pub fn knee_found(&self) -> bool {
        matches!(self, CapacityStop::Knee { .. })
    }
}

/// What a measured level tells the search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelOutcome {
    pub throughput_rps: f64,
    pub within_slo: bool,
}

/// The search's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Measure this concurrency and [`KneeSearch::record`] the outcome.
    Measure(usize),
    Stop(CapacityStop),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Rising through the listed levels, then doubling.
    Up,
    /// Halving below `broken`, the lowest level measured, which broke the SLO.
    Down { broken: usize },
    /// Bisecting between a level that kept the SLO and one that broke it.
    Bisect { within: usize, broken: usize },
}

/// The state of the knee search.
#[derive(Debug, Clone)]
pub struct KneeSearch {
    listed: Vec<usize>,
    next_listed: usize,
    max: usize,
    bisections_left: usize,
    phase: Phase,
    current: usize,
    /// (concurrency, throughput) of the levels measured in the Up phase.
    rising: Vec<(usize, f64)>,
    /// Levels in a row, up to the last one, that did not raise throughput.
    flat: usize,
}

impl KneeSearch {
    /// A search over the rising `listed` levels (those above `max` dropped; `max` alone
    /// if none is left), extended by doubling up to `max`, narrowing the knee by up to
    /// `bisections` steps. Returns the search and the first concurrency to measure.
    pub fn new(listed: &[usize], max: usize, bisections: usize) -> (Self, usize) {
        let max = max.max(1);
        let mut levels: Vec<usize> = listed
            .iter()
            .copied()
            .filter(|&c| c >= 1 && c <= max)
            .collect();
        levels.dedup();
        if levels.is_empty() {
            levels.push(max);
        }
        let first = levels[0];
        (
            Self {
                listed: levels,
                next_listed: 1,
                max,
                bisections_left: bisections,
                phase: Phase::Up,
                current: first,
                rising: Vec::new(),
                flat: 0,
            },
            first,
        )
    }

    /// The levels the search starts from.
    pub fn listed(&self) -> &[usize] {
        &self.listed
    }

    /// Records the outcome of the level last asked for and says what to do next.
    pub fn record(&mut self, outcome: Result<LevelOutcome, String>) -> Step {
        let c = self.current;
        let o = match outcome {
            Ok(o) => o,
            Err(message) => {
                return Step::Stop(CapacityStop::Error {
                    concurrency: c,
                    message,
                })
            }
        };
        let step = match self.phase {
            Phase::Up => self.up(c, o),
            Phase::Down { broken } => {
                if o.within_slo {
                    self.bisect(c, broken)
                } else if c <= 1 {
                    Step::Stop(CapacityStop::SloBrokenAlone)
                } else {
                    self.phase = Phase::Down { broken: c };
                    Step::Measure(c / 2)
                }
            }
            Phase::Bisect { within, broken } => {
                if o.within_slo {
                    self.bisect(c, broken)
                } else {
                    self.bisect(within, c)
                }
            }
        };
        if let Step::Measure(next) = step {
            self.current = next;
        }
        step
    }

    fn up(&mut self, c: usize, o: LevelOutcome) -> Step {
        // Every level measured before in this phase is lower and kept the SLO.
        let previous = self.rising.last().map(|&(p, _)| p);
        // The fastest lower level (the lowest of equals).
        let best = self
            .rising
            .iter()
            .copied()
            .fold(None, |b: Option<(usize, f64)>, x| match b {
                Some(b) if b.1 >= x.1 => Some(b),
                _ => Some(x),
            });
        self.rising.push((c, o.throughput_rps));
        if !o.within_slo {
            return match previous {
                Some(lo) => self.bisect(lo, c),
                None if c <= 1 => Step::Stop(CapacityStop::SloBrokenAlone),
                None => {
                    self.phase = Phase::Down { broken: c };
                    Step::Measure(c / 2)
                }
            };
        }
        let saturated = match best {
            Some((best_c, best_rps)) if o.throughput_rps < best_rps * SATURATION_GAIN => {
                self.flat += 1;
                Some(CapacityStop::Saturated {
                    at: c,
                    best: best_c,
                })
            }
            _ => {
                self.flat = 0;
                None
            }
        };
        if let Some(stop) = saturated.clone().filter(|_| self.flat >= SATURATION_LEVELS) {
            return Step::Stop(stop);
        }
        if let Some(&next) = self.listed.get(self.next_listed) {
            self.next_listed += 1;
            if next > c {
                return Step::Measure(next);
            }
        }
        if c >= self.max {
            return Step::Stop(saturated.unwrap_or(CapacityStop::Limit { max: self.max }));
        }
        Step::Measure(c.saturating_mul(2).min(self.max))
    }

    fn bisect(&mut self, within: usize, broken: usize) -> Step {
        if self.bisections_left == 0 || broken <= within + 1 {
            return Step::Stop(CapacityStop::Knee { within, broken });
        }
        self.bisections_left -= 1;
        self.phase = Phase::Bisect { within, broken };
        Step::Measure(within + (broken - within) / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a synthetic engine: `f(c)` is the outcome at concurrency
    /// `c`. Returns the levels measured and the stop.
    fn run(
        listed: &[usize],
        max: usize,
        bisections: usize,
        f: impl Fn(usize) -> Result<LevelOutcome, String>,
    ) -> (Vec<usize>, CapacityStop) {
        let (mut s, mut c) = KneeSearch::new(listed, max, bisections);
        let mut seen = Vec::new();
        loop {
            assert!(seen.len() < 100, "the search does not end: {seen:?}");
            seen.push(c);
            match s.record(f(c)) {
                Step::Measure(n) => c = n,
                Step::Stop(stop) => return (seen, stop),
            }
        }
    }

    /// Throughput rising linearly, TPOT `ms_per_seq` per concurrent request.
    fn linear(ms_per_seq: f64, slo: f64) -> impl Fn(usize) -> Result<LevelOutcome, String> {
        move |c| {
            Ok(LevelOutcome {
                throughput_rps: c as f64,
                within_slo: ms_per_seq * c as f64 <= slo,
            })
        }
    }

    #[test]
    fn doubles_past_the_list_then_bisects_to_the_knee() {
        // TPOT = 2 ms per request, SLO 100 ms: the knee is at 50.
        let (seen, stop) = run(&[4, 8], 1024, 2, linear(2.0, 100.0));
        assert_eq!(seen, vec![4, 8, 16, 32, 64, 48, 56]);
        assert_eq!(
            stop,
            CapacityStop::Knee {
                within: 48,
                broken: 56
            }
        );
        assert!(stop.knee_found());
        // With enough bisections the bracket closes on the exact knee.
        let (_, stop) = run(&[4, 8], 1024, 10, linear(2.0, 100.0));
        assert_eq!(
            stop,
            CapacityStop::Knee {
                within: 50,
                broken: 51
            }
        );
        // Without bisection the knee is the doubling bracket.
        let (seen, stop) = run(&[16], 1024, 0, linear(2.0, 100.0));
        assert_eq!(seen, vec![16, 32, 64]);
        assert_eq!(
            stop,
            CapacityStop::Knee {
                within: 32,
                broken: 64
            }
        );
    }

    #[test]
    fn listed_levels_come_first_and_the_limit_bounds_them() {
        let (seen, stop) = run(&[16, 24, 40], 1024, 1, linear(2.0, 100.0));
        assert_eq!(seen, vec![16, 24, 40, 80, 60]);
        assert_eq!(
            stop,
            CapacityStop::Knee {
                within: 40,
                broken: 60
            }
        );
        // Levels above the limit are dropped; the sweep ends at the limit.
        let (seen, stop) = run(&[16, 32, 64], 20, 2, linear(0.1, 100.0));
        assert_eq!(seen, vec![16, 20]);
        assert_eq!(stop, CapacityStop::Limit { max: 20 });
        let (seen, _) = run(&[64, 128], 8, 2, linear(0.1, 100.0));
        assert_eq!(seen, vec![8]);
    }

    #[test]
    fn an_slo_that_always_holds_ends_at_the_limit() {
        let (seen, stop) = run(&[4, 8], 64, 2, linear(0.01, 100.0));
        assert_eq!(seen, vec![4, 8, 16, 32, 64]);
        assert_eq!(stop, CapacityStop::Limit { max: 64 });
        assert!(!stop.knee_found());
    }

    #[test]
    fn flat_throughput_is_saturation() {
        // The engine runs 20 requests at once and queues the rest: TPOT stays low.
        let f = |c: usize| {
            Ok(LevelOutcome {
                throughput_rps: c.min(20) as f64,
                within_slo: true,
            })
        };
        let (seen, stop) = run(&[16], 1024, 2, f);
        assert_eq!(seen, vec![16, 32, 64, 128]);
        assert_eq!(stop, CapacityStop::Saturated { at: 128, best: 32 });
        // One flat level is not enough: a lower level measured in a quiet moment (here
        // 8, as fast as 20) must not stop the search at 16; 32 rising again resets it.
        let f = |c: usize| {
            Ok(LevelOutcome {
                throughput_rps: if c == 8 { 20.0 } else { c as f64 },
                within_slo: c <= 64,
            })
        };
        let (seen, stop) = run(&[4, 8, 16], 1024, 0, f);
        assert_eq!(seen, vec![4, 8, 16, 32, 64, 128]);
        assert_eq!(
            stop,
            CapacityStop::Knee {
                within: 64,
                broken: 128
            }
        );
        // Flat at the highest level allowed: saturated, not merely the limit.
        let f = |c: usize| {
            Ok(LevelOutcome {
                throughput_rps: c.min(20) as f64,
                within_slo: true,
            })
        };
        assert_eq!(
            run(&[16], 64, 0, f).1,
            CapacityStop::Saturated { at: 64, best: 32 }
        );
        // A gain under 2% is no gain; 3% is.
        let f = |gain: f64| {
            move |c: usize| {
                Ok(LevelOutcome {
                    throughput_rps: 100.0 * gain.powf((c as f64).log2()),
                    within_slo: true,
                })
            }
        };
        assert!(matches!(
            run(&[1], 64, 0, f(1.019)).1,
            CapacityStop::Saturated { at: 4, best: 2 }
        ));
        assert_eq!(run(&[1], 64, 0, f(1.03)).1, CapacityStop::Limit { max: 64 });
    }

    #[test]
    fn a_first_level_over_the_slo_halves_down() {
        // Knee at 5: 16 and 8 break, 4 keeps, then bisection between 4 and 8.
        let (seen, stop) = run(&[16, 32], 1024, 2, linear(20.0, 100.0));
        assert_eq!(seen, vec![16, 8, 4, 6, 5]);
        assert_eq!(
            stop,
            CapacityStop::Knee {
                within: 5,
                broken: 6
            }
        );
        // Not even one request keeps it.
        let (seen, stop) = run(&[8], 1024, 2, linear(200.0, 100.0));
        assert_eq!(seen, vec![8, 4, 2, 1]);
        assert_eq!(stop, CapacityStop::SloBrokenAlone);
        let (seen, stop) = run(&[1, 2], 1024, 2, linear(200.0, 100.0));
        assert_eq!(seen, vec![1]);
        assert_eq!(stop, CapacityStop::SloBrokenAlone);
    }

    #[test]
    fn an_error_stops_the_search_and_says_where() {
        let f = |c: usize| {
            if c >= 64 {
                Err("503 Service Unavailable".to_owned())
            } else {
                linear(0.1, 100.0)(c)
            }
        };
        let (seen, stop) = run(&[16], 1024, 2, f);
        assert_eq!(seen, vec![16, 32, 64]);
        assert_eq!(
            stop,
            CapacityStop::Error {
                concurrency: 64,
                message: "503 Service Unavailable".into()
            }
        );
        // An error while bisecting stops there too.
        let f = |c: usize| {
            if c == 48 {
                Err("timeout".to_owned())
            } else {
                linear(2.0, 100.0)(c)
            }
        };
        let (seen, stop) = run(&[16], 1024, 2, f);
        assert_eq!(seen, vec![16, 32, 64, 48]);
        assert!(matches!(
            stop,
            CapacityStop::Error {
                concurrency: 48,
                ..
            }
        ));
    }
}
