//! The stalled-progress hang signal. An engine's own `/health` is only a hint — real
//! engines answer 200 while their step loop is hung — but a hung loop cannot move the
//! output-token counter, so work waiting while that counter stands still is a hang.

/// How recently work must have been seen held for an idle stretch to count as stuck
/// (two prober rounds).
pub const HELD_RECENTLY_MS: u64 = 2_000;

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
    /// work held, and the engine's busy time (ms) then: how long its processes have run
    /// on a CPU or waited runnable for one, when the shell can read it (a process it
    /// supervises). Unlike `stalled_since_ms` a sample with nothing queued
    /// does not end it: routers that gave up on a stuck engine cancel what they sent.
    held_since_ms: Option<u64>,
    /// The last sample that showed work held.
    held_last_ms: Option<u64>,
    busy_at_held_ms: Option<u64>,
    /// The busy time at the last sample.
    busy_last_ms: Option<u64>,
}

impl StallDetector {
    /// One sample: `queued` is the engine's requests admitted and not finished (waiting
    /// or running), `tokens_total` its output-token counter. Any change of the counter
    /// is progress, a decrease too (a restarted engine counts from zero). The clock
    /// starts when work is first seen queued, not at the last token, so an engine idle
    /// for an hour is not a hang the moment a request arrives.
    ///
    /// `busy_ms` is how long the engine's processes have run on a CPU or waited runnable
    /// for one so far, when the shell can read it.
    pub fn sample(&mut self, queued: u32, tokens_total: u64, busy_ms: Option<u64>, now_ms: u64) {
        let advanced = self.tokens_total.is_some_and(|t| t != tokens_total);
        if advanced || self.tokens_total.is_none() {
            self.still_since_ms = now_ms;
            self.held_since_ms = None;
        }
        if queued > 0 {
            if self.held_since_ms.is_none() {
                self.held_since_ms = Some(now_ms);
                self.busy_at_held_ms = busy_ms;
            }
            self.held_last_ms = Some(now_ms);
        }
        if busy_ms.is_none() {
            // A figure missing anywhere in the stretch is no measure of it.
            self.busy_at_held_ms = None;
        }
        self.busy_last_ms = busy_ms;
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
            // Time busy since the last sample counts against the new stretch: it
            // can only make it look busier.
            self.busy_at_held_ms = self.busy_last_ms;
        }
    }

    /// For how long, as of the last sample, the engine has produced no token at all,
    /// busy or not; `None` before two samples.
    fn still_for(&self) -> Option<u64> {
        (self.tokens_total.is_some() && self.sampled_ms > self.still_since_ms)
            .then(|| self.sampled_ms - self.still_since_ms)
    }

    /// For how long, as of the last sample, the engine has written no token while it
    /// had work: since it was first seen holding some after the counter last moved, or,
    /// if it has held none since, since the counter last moved (a request that never
    /// reached the engine's queue is no less stuck). Time spent idle before work arrived
    /// does not count: an engine idle for a minute and then given a long prefill has not
    /// been still for a minute.
    pub fn still_with_work_for(&self) -> Option<u64> {
        // Work is first seen held no earlier than the counter's last move: both are
        // reset together when it moves.
        let since = self.held_since_ms.unwrap_or(self.still_since_ms);
        self.still_for()
            .map(|_| self.sampled_ms.saturating_sub(since))
    }

    /// When the engine was last sampled.
    pub fn sampled_ms(&self) -> u64 {
        self.sampled_ms
    }

    /// Since when, as of the last sample, the engine has written no token for at least
    /// `min_ms` after it was first seen holding work, still holding some within the last
    /// [`HELD_RECENTLY_MS`], while its processes used at most `max_share` of one CPU,
    /// waiting for one included: it is not computing a long step (nor starved of CPU
    /// while it does), it is doing nothing. `None` as well when the busy time is not
    /// known over the whole stretch, or went down (a member exited). The recent work is
    /// what keeps an engine that lost its only request before a token (a client gone)
    /// and then idled from looking stuck.
    pub fn idle_stall(&self, min_ms: u64, max_share: f64) -> Option<u64> {
        let since = self.held_still(min_ms)?;
        let (Some(from), Some(to)) = (self.busy_at_held_ms, self.busy_last_ms) else {
            return None;
        };
        let span = self.sampled_ms.saturating_sub(since);
        let idle = to >= from && (to - from) as f64 <= max_share * span as f64;
        idle.then_some(since)
    }

    /// Since when, as of the last sample, the engine has written no token for at least
    /// `min_ms` after it was first seen holding work, still holding some within the last
    /// [`HELD_RECENTLY_MS`] — busy or not: a suspect, not yet a verdict.
    pub fn held_still(&self, min_ms: u64) -> Option<u64> {
        let (since, last) = (self.held_since_ms?, self.held_last_ms?);
        let span = self.sampled_ms.saturating_sub(since);
        let recent = self.sampled_ms.saturating_sub(last) <= HELD_RECENTLY_MS;
        (span >= min_ms && recent).then_some(since)
    }

    /// When the current stall began, if the last sample showed it lasting at least
    /// `window_ms`. Judged at samples only: when the samples themselves stop, what the
    /// engine is doing is unknown, and the probes decide instead.
    pub fn stalled(&self, window_ms: u64) -> Option<u64> {
        self.stalled_since_ms
            .filter(|&since| self.sampled_ms.saturating_sub(since) >= window_ms)
    }
}
