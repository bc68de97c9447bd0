//! Time windows over samples taken at explicit clock values: averages for the metrics
//! autoscalers read, and the maximum over a window for scale-down stabilization.

use std::collections::VecDeque;

/// Samples `(at_us, value)` kept for `span_us`.
#[derive(Debug, Clone)]
pub struct Window {
    span_us: u64,
    samples: VecDeque<(u64, f64)>,
}

impl Window {
    pub fn new(span_us: u64) -> Self {
        Self {
            span_us: span_us.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample and forgets those older than the span (non-finite values count as 0).
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

    /// Mean of the samples in the window (0 with none).
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_span() {
        let mut w = Window::new(10);
        w.push(0, 4.0);
        w.push(5, 2.0);
        assert_eq!(w.mean(), 3.0);
        w.push(10, 6.0);
        assert_eq!(w.mean(), 4.0);
        assert_eq!(w.max(), Some(6.0));
        w.push(30, f64::NAN);
        assert_eq!(w.mean(), 0.0);
    }
}
