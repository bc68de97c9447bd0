//! The stalled-progress hang signal. An engine's own `/health` is only a hint — real
//! engines answer 200 while their step loop is hung — but a hung loop cannot move the
//! output-token counter, so work waiting while that counter stands still is a hang.

/// One replica's progress as seen through periodic samples of its engine's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StallDetector {
    /// Token counter at the last sample; `None` before the first.
    tokens_total: Option<u64>,
    /// When the current stretch of "work queued, no token" began; `None` while idle.
    stalled_since_ms: Option<u64>,
    /// When the last sample was taken.
    sampled_ms: u64,
    /// The sample at which the counter was first seen at its present value.
    still_since_ms: u64,
    /// The first sample since the counter last moved (or the last proof) that showed
    /// work held, and the engine's CPU time (ms) then, when the shell can read it (a
    /// process it supervises). Unlike `stalled_since_ms` a sample with nothing queued
    /// does not end it: routers that gave up on a stuck engine cancel what they sent.
    held_since_ms: Option<u64>,
    cpu_at_held_ms: Option<u64>,
    /// The CPU time at the last sample.
    cpu_last_ms: Option<u64>,
}

impl StallDetector {
    /// One sample: `queued` is the engine's requests admitted and not finished (waiting
    /// or running), `tokens_total` its output-token counter. Any change of the counter
    /// is progress, a decrease too (a restarted engine counts from zero). The clock
    /// starts when work is first seen queued, not at the last token, so an engine idle
    /// for an hour is not a hang the moment a request arrives.
    ///
    /// `cpu_ms` is the CPU time the engine's processes have used so far, when the shell
    /// can read it.
    pub fn sample(&mut self, queued: u32, tokens_total: u64, cpu_ms: Option<u64>, now_ms: u64) {
        let advanced = self.tokens_total.is_some_and(|t| t != tokens_total);
        if advanced || self.tokens_total.is_none() {
            self.still_since_ms = now_ms;
            self.held_since_ms = None;
        }
        if self.held_since_ms.is_none() && queued > 0 {
            self.held_since_ms = Some(now_ms);
            self.cpu_at_held_ms = cpu_ms;
        }
        if cpu_ms.is_none() {
            // A figure missing anywhere in the stretch is no measure of it.
            self.cpu_at_held_ms = None;
        }
        self.cpu_last_ms = cpu_ms;
        self.tokens_total = Some(tokens_total);
        self.sampled_ms = now_ms;
        if queued == 0 || advanced {
            self.stalled_since_ms = (queued > 0).then_some(now_ms);
        } else if self.stalled_since_ms.is_none() {
            self.stalled_since_ms = Some(now_ms);
        }
    }

    /// Progress seen some other way (a real request or a probe completed): restart the
    /// clock, keeping the counter.
    pub fn progressed(&mut self, now_ms: u64) {
        if self.stalled_since_ms.is_some() {
            self.stalled_since_ms = Some(now_ms);
        }
        if self.held_since_ms.is_some() {
            self.held_since_ms = Some(now_ms);
            // The CPU used since the last sample counts against the new stretch: it
            // can only make it look busier.
            self.cpu_at_held_ms = self.cpu_last_ms;
        }
    }

    /// For how long, as of the last sample, the engine has produced no token at all,
    /// busy or not; `None` before two samples.
    pub fn still_for(&self) -> Option<u64> {
        (self.tokens_total.is_some() && self.sampled_ms > self.still_since_ms)
            .then(|| self.sampled_ms - self.still_since_ms)
    }

    /// Whether, as of the last sample, the engine has written no token for at least
    /// `min_ms` since it was first seen holding work, while its processes used at most
    /// `max_share` of one CPU: it is not computing a long step, it is doing nothing.
    /// `false` when the CPU time is not known over the whole stretch, or went down (a
    /// member of the group exited).
    pub fn idle_stall(&self, min_ms: u64, max_share: f64) -> bool {
        let (Some(since), Some(from), Some(to)) =
            (self.held_since_ms, self.cpu_at_held_ms, self.cpu_last_ms)
        else {
            return false;
        };
        let span = self.sampled_ms.saturating_sub(since);
        span >= min_ms && to >= from && (to - from) as f64 <= max_share * span as f64
    }

    /// When the current stall began, if the last sample showed it lasting at least
    /// `window_ms`. Judged at samples only: when the samples themselves stop, what the
    /// engine is doing is unknown, and the probes decide instead.
    pub fn stalled(&self, window_ms: u64) -> Option<u64> {
        self.stalled_since_ms
            .filter(|&since| self.sampled_ms.saturating_sub(since) >= window_ms)
    }
}
