//! Time windows over samples taken at explicit clock values: averages for the metrics the
//! autoscalers read, and the largest or smallest recommendation over a window for
//! stabilization. A sample stays while it is younger than the span (taken after
//! `now - span`), which is the cutoff Knative's buckets and the HPA's recommendations use.

use std::collections::VecDeque;

/// Samples `(at_us, value)` kept for `span_us`.
#[derive(Debug, Clone)]
pub struct Window {
    span_us: u64,
    samples: VecDeque<(u64, f64)>,
}

impl Window {
    /// A window of `span_us` (at least 1 µs, so a zero span keeps only samples taken now).
    pub fn new(span_us: u64) -> Self {
        Self {
            span_us: span_us.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample (a non-finite value counts as 0) and forgets those that are a span or
    /// more older than it. Clock values are expected not to go backwards.
    pub fn push(&mut self, at_us: u64, value: f64) {
        let v = if value.is_finite() { value } else { 0.0 };
        self.samples.push_back((at_us, v));
        while let Some(&(t, _)) = self.samples.front() {
            if t.saturating_add(self.span_us) <= at_us {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Mean of the samples in the window (0 with none). With samples at a fixed tick this
    /// is the time average, and over a window not yet full it averages what there is, as
    /// Knative's `WindowAverage` does.
    pub fn mean(&self) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        self.samples.iter().map(|s| s.1).sum::<f64>() / self.samples.len() as f64
    }

    /// Largest sample in the window.
    pub fn max(&self) -> Option<f64> {
        self.samples.iter().map(|s| s.1).reduce(f64::max)
    }

    /// Smallest sample in the window.
    pub fn min(&self) -> Option<f64> {
        self.samples.iter().map(|s| s.1).reduce(f64::min)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Seconds (validated finite and non-negative) as clock microseconds.
pub(crate) fn secs_to_us(s: f64) -> u64 {
    (s.max(0.0) * 1e6).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_span() {
        let mut w = Window::new(10);
        assert_eq!((w.mean(), w.max(), w.is_empty()), (0.0, None, true));
        w.push(0, 4.0);
        w.push(5, 2.0);
        assert_eq!(w.mean(), 3.0);
        // The sample at 0 is exactly a span old at 10: gone.
        w.push(10, 6.0);
        assert_eq!((w.mean(), w.len()), (4.0, 2));
        assert_eq!((w.max(), w.min()), (Some(6.0), Some(2.0)));
        w.push(30, f64::NAN);
        assert_eq!((w.mean(), w.len()), (0.0, 1));
    }

    #[test]
    fn a_zero_span_keeps_only_the_present() {
        let mut w = Window::new(0);
        w.push(7, 1.0);
        w.push(7, 3.0);
        assert_eq!(w.len(), 2);
        w.push(8, 5.0);
        assert_eq!((w.len(), w.max()), (1, Some(5.0)));
    }
}
