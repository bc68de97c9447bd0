//! Hangs found from the streams themselves. A router sees every token its streams
//! carry: when a replica is producing streams and nothing at all has come back from it —
//! no token on any stream, no answer, no passed probe — for much longer than that
//! replica's own recent gap between tokens (and at least a floor), the replica is hung,
//! whatever its `/health` says, and its streams should move. Needs no engine gauge, so
//! it works for a replica on another node as well as for a local one.
//!
//! Kept per replica, not per stream: the newest sign of life and how many streams are
//! producing there. A request waiting for the first thing its replica sends back — a
//! stream's first token, or an answer sent whole — counts apart ([`Awaited`]): a replica
//! whose only requests wait is judged by the same silence, but over a bound at least
//! [`QUEUE_FACTOR`] times what the work queued there should take at its capacity (a
//! long prefill is work, not a hang) plus, for a whole answer, what writing it should
//! take at the replica's own pace, and only with a witness. A first token, like any
//! finished answer, is a sign of life. What the queued work "should take" comes from
//! the profile the replica is priced by, so it is scaled by how much longer than that
//! the replica's streams lately waited for their first tokens
//! ([`StreamStalls::slowness`]): an engine slower than its profile (a bigger model, a
//! CPU build, a profile never calibrated against it) computes a long prompt for
//! longer, and is not hung for it.
//!
//! A router sees only its own streams, and in a cluster most of a replica's work comes
//! through other routers: a request waiting in a busy replica's queue may hear nothing
//! for seconds while the replica streams to everyone else. So routers tell each other
//! which replicas they heard from lately ([`StreamStalls::heard_since`]), and a replica
//! heard by a peer is not silent ([`StreamStalls::heard_by_peer`]).
//!
//! Silence everywhere at once is not a hang. When the router's own host, or a machine
//! its engines share, stops for a few seconds, every producing replica falls silent
//! together and then resumes. So a silent replica is judged hung only when another
//! replica has been heard without a break for a good part of that silence (a witness
//! that the router, and the world around it, kept working), or when no other replica is
//! producing at all (then nothing tells a pause from a hang, and a hang costs more).

use crate::slice::ReplicaId;
use std::collections::HashMap;

/// When a replica's streams count as stalled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallConfig {
    /// Never sooner than this silence.
    pub floor_ms: u64,
    /// Silence of this many of the replica's recent gaps between tokens.
    pub gaps: f64,
}

impl Default for StallConfig {
    fn default() -> Self {
        Self {
            floor_ms: 3_000,
            gaps: 20.0,
        }
    }
}

/// A replica whose streams only wait for their first token is judged after this many
/// times the expected time of the work queued there (and never before its bound).
pub const QUEUE_FACTOR: u64 = 3;

/// A request waiting on `replica` for the first thing it sends back: since when, how
/// long the work queued there ahead of it (its own prefill included) should take at the
/// replica's capacity, as far as the router knows, and how many tokens the replica
/// writes before anything comes back (1 for a stream; the most it may write for an
/// answer sent whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    pub replica: ReplicaId,
    pub since_ms: u64,
    pub queue_ms: u64,
    pub tokens: u32,
}

impl Awaited {
    /// The silence that would make its wait a hang on a replica whose own bound is
    /// `bound`, whose pace is `gap_ms` per token and whose first tokens come `slowness`
    /// times later than their queues should take; `None` when nothing bounds it (a
    /// whole answer before any pace is known).
    fn bound_ms(&self, bound: u64, gap_ms: Option<f64>, slowness: f64) -> Option<u64> {
        let writing = match self.tokens {
            0 | 1 => 0,
            t => (gap_ms? * f64::from(t - 1)) as u64,
        };
        let queue = (self.queue_ms as f64 * slowness) as u64;
        let work = queue.saturating_add(writing);
        Some(bound.max(QUEUE_FACTOR.saturating_mul(work)))
    }
}

/// Weight of a new first-token wait in a replica's running sums.
const WAIT_WEIGHT: f64 = 0.1;

/// The most a replica's waits are stretched by its slowness: beyond this an engine is
/// not slow but broken, and its prober's gauges tell.
pub const MAX_SLOWNESS: f64 = 100.0;

/// Weight of a new gap in the running mean.
const GAP_WEIGHT: f64 = 0.1;

/// What is known of one replica's pace.
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    /// Streams producing tokens there now.
    producing: u32,
    /// The newest sign of life from it.
    heard_ms: u64,
    /// Since when it has been heard with no silence of half its bound or more.
    run_since_ms: u64,
    /// When it was last taken for hung (its silence counts again from then).
    judged_ms: u64,
    /// The newest sign of life another router reported from it.
    peer_heard_ms: u64,
    /// Running mean of the gap between one token and the next, per stream.
    gap_ms: Option<f64>,
    /// Decayed sums of how long streams here waited for their first token and of what
    /// the work queued up to them was expected to take: see [`Pace::slowness`].
    waited_ms: f64,
    expected_ms: f64,
}

impl Pace {
    fn bound_ms(&self, config: &StallConfig) -> u64 {
        (config.gaps * self.gap_ms.unwrap_or(0.0)).max(config.floor_ms as f64) as u64
    }

    fn heard(&mut self, now_ms: u64, config: &StallConfig) {
        if self.run_since_ms == 0
            || now_ms.saturating_sub(self.heard_ms) >= self.bound_ms(config) / 2
        {
            self.run_since_ms = now_ms.max(1);
        }
        self.heard_ms = self.heard_ms.max(now_ms);
    }

    fn silent_for(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.heard_ms)
    }

    /// How many times longer than expected its streams waited for their first token,
    /// weighted by what was expected (long prompts say the most about a slow prefill),
    /// within `[1, MAX_SLOWNESS]`; `None` before any such wait here.
    fn slowness(&self) -> Option<f64> {
        (self.expected_ms > 0.0)
            .then(|| (self.waited_ms / self.expected_ms).clamp(1.0, MAX_SLOWNESS))
    }
}

/// Signs of life from all replicas together: at low load no single replica is heard
/// without a break, but the replicas together still show that the router and the world
/// around it kept working.
#[derive(Debug, Clone, Copy, Default)]
struct World {
    heard_ms: u64,
    /// Since when some replica has been heard with no silence of half the floor or more.
    run_since_ms: u64,
}

impl World {
    fn heard(&mut self, now_ms: u64, config: &StallConfig) {
        if self.run_since_ms == 0 || now_ms.saturating_sub(self.heard_ms) >= config.floor_ms / 2 {
            self.run_since_ms = now_ms.max(1);
        }
        self.heard_ms = self.heard_ms.max(now_ms);
    }

    /// The start of the run going on at `now_ms`, if one is.
    fn running_since(&self, now_ms: u64, config: &StallConfig) -> Option<u64> {
        (self.run_since_ms > 0 && now_ms.saturating_sub(self.heard_ms) < config.floor_ms / 2)
            .then_some(self.run_since_ms)
    }
}

#[derive(Debug, Clone, Default)]
pub struct StreamStalls {
    config: StallConfig,
    replicas: HashMap<ReplicaId, Pace>,
    world: World,
}

impl StreamStalls {
    pub fn new(config: StallConfig) -> Self {
        Self {
            config,
            replicas: HashMap::new(),
            world: World::default(),
        }
    }

    /// A stream on `replica` produced `tokens` more tokens at `now_ms`; `previous_ms`
    /// is when it last did (`None`: these are its first there, so it starts producing).
    pub fn progressed(
        &mut self,
        replica: ReplicaId,
        previous_ms: Option<u64>,
        tokens: u32,
        now_ms: u64,
    ) {
        if tokens == 0 {
            return;
        }
        self.world.heard(now_ms, &self.config);
        let p = self.replicas.entry(replica).or_default();
        p.heard(now_ms, &self.config);
        match previous_ms {
            None => p.producing += 1,
            Some(prev) => {
                let gap = now_ms.saturating_sub(prev) as f64 / f64::from(tokens);
                p.gap_ms = Some(match p.gap_ms {
                    Some(mean) => mean + GAP_WEIGHT * (gap - mean),
                    None => gap,
                });
            }
        }
    }

    /// A stream sent to `replica` at `since_ms` got its first token at `now_ms`, where
    /// the work queued there up to it, its own prefill included, was expected to take
    /// `queue_ms`.
    ///
    /// Only a wait long enough to bear on a verdict (a third of the floor or more)
    /// counts: a short one is mostly fixed costs (the hop, one engine step), which
    /// would make every engine look slower than its profile. Nor does one through which
    /// the replica was taken for hung: it measured the hang (or the pause taken for
    /// one), not the engine's speed, and would keep the next hang from being seen.
    pub fn first_token_after(
        &mut self,
        replica: ReplicaId,
        since_ms: u64,
        queue_ms: u64,
        now_ms: u64,
    ) {
        let waited_ms = now_ms.saturating_sub(since_ms);
        if waited_ms.saturating_mul(QUEUE_FACTOR) < self.config.floor_ms {
            return;
        }
        let p = self.replicas.entry(replica).or_default();
        if p.judged_ms > 0 && p.judged_ms >= since_ms {
            return;
        }
        p.waited_ms += WAIT_WEIGHT * (waited_ms as f64 - p.waited_ms);
        p.expected_ms += WAIT_WEIGHT * (queue_ms as f64 - p.expected_ms);
    }

    /// How many times longer than expected `replica`'s streams lately waited for their
    /// first token (1 when no slower, or before any first token there).
    pub fn slowness(&self, replica: ReplicaId) -> f64 {
        self.replicas
            .get(&replica)
            .and_then(Pace::slowness)
            .unwrap_or(1.0)
    }

    /// A stream that was producing on `replica` left it (finished, failed, or moved).
    pub fn ended(&mut self, replica: ReplicaId) {
        // The replica's pace (its mean gap) outlives its streams.
        if let Some(p) = self.replicas.get_mut(&replica) {
            p.producing = p.producing.saturating_sub(1);
        }
    }

    /// `replica` did something only a working engine does at `now_ms`: it answered a
    /// request whole or passed a probe.
    pub fn heard(&mut self, replica: ReplicaId, now_ms: u64) {
        self.world.heard(now_ms, &self.config);
        self.replicas
            .entry(replica)
            .or_default()
            .heard(now_ms, &self.config);
    }

    /// Another router heard from `replica` at `at_ms` (its word's age taken off this
    /// router's clock): it counts against the replica's silence here, not as this
    /// router's own pace or witness.
    pub fn heard_by_peer(&mut self, replica: ReplicaId, at_ms: u64) {
        let p = self.replicas.entry(replica).or_default();
        p.peer_heard_ms = p.peer_heard_ms.max(at_ms);
    }

    /// The newest sign of life from `replica`, this router's own or a peer's word;
    /// `None` if there was none.
    pub fn last_heard_ms(&self, replica: ReplicaId) -> Option<u64> {
        let p = self.replicas.get(&replica)?;
        Some(p.heard_ms.max(p.peer_heard_ms)).filter(|&at| at > 0)
    }

    /// The replicas this router itself heard from at or after `since_ms`, with when:
    /// what it tells the other routers (a peer's word is not passed on).
    pub fn heard_since(&self, since_ms: u64) -> Vec<(ReplicaId, u64)> {
        self.stamped_since(since_ms, |p| p.heard_ms)
    }

    /// The replicas whose `stamp` is set and at or after `since_ms`, with it, in
    /// replica order.
    fn stamped_since(&self, since_ms: u64, stamp: impl Fn(&Pace) -> u64) -> Vec<(ReplicaId, u64)> {
        let mut out: Vec<(ReplicaId, u64)> = self
            .replicas
            .iter()
            .map(|(&r, p)| (r, stamp(p)))
            .filter(|&(_, at)| at > 0 && at >= since_ms)
            .collect();
        out.sort_unstable();
        out
    }

    /// The silence after which `replica`'s streams count as stalled.
    pub fn bound_ms(&self, replica: ReplicaId) -> u64 {
        self.replicas
            .get(&replica)
            .copied()
            .unwrap_or_default()
            .bound_ms(&self.config)
    }

    /// The replicas with producing streams from which nothing came back for longer than
    /// their bound at `now_ms`, with a witness that it was not a pause of everything (see
    /// the module docs), in replica order. Each is judged once per bound: its silence
    /// counts again from now (its streams move, or come back with a token).
    pub fn take_stalled(&mut self, now_ms: u64) -> Vec<ReplicaId> {
        self.take_stalled_with(now_ms, &[])
    }

    /// [`Self::take_stalled`], also judging replicas whose only requests wait for the
    /// first thing back (`awaited`: any number per replica).
    pub fn take_stalled_with(&mut self, now_ms: u64, awaited: &[Awaited]) -> Vec<ReplicaId> {
        let config = self.config;
        // Grouped once: a round is linear in the requests waiting, not their product with
        // the fleet (it runs under the router's lock).
        let mut by_replica: HashMap<ReplicaId, Vec<&Awaited>> = HashMap::new();
        for a in awaited {
            by_replica.entry(a.replica).or_default().push(a);
            self.replicas.entry(a.replica).or_default();
        }
        let waiting = |r: ReplicaId| by_replica.get(&r).into_iter().flatten().copied();
        let busy = self
            .replicas
            .iter()
            .filter(|(&r, p)| p.producing > 0 || waiting(r).next().is_some())
            .count();
        // The longest unbroken run among the replicas heard lately, or of all of them
        // together.
        let witness_since = self
            .replicas
            .values()
            .filter(|p| p.run_since_ms > 0 && p.silent_for(now_ms) < p.bound_ms(&config) / 2)
            .map(|p| p.run_since_ms)
            .chain(self.world.running_since(now_ms, &config))
            .min();
        // A replica whose pace this router has not seen yet is taken to write at the
        // pace of those it has (a fleet's replicas serve one model alike).
        let paces: Vec<f64> = self.replicas.values().filter_map(|p| p.gap_ms).collect();
        let fleet_gap = (!paces.is_empty()).then(|| paces.iter().sum::<f64>() / paces.len() as f64);
        // Likewise its slowness.
        let slow: Vec<f64> = self.replicas.values().filter_map(Pace::slowness).collect();
        let fleet_slowness = match slow.len() {
            0 => 1.0,
            n => slow.iter().sum::<f64>() / n as f64,
        };
        let witnessed = |bound: u64| {
            witness_since.is_some_and(|since| since <= now_ms.saturating_sub(bound / 2))
        };
        let mut out: Vec<ReplicaId> = self
            .replicas
            .iter()
            .filter(|&(&r, p)| {
                let bound = p.bound_ms(&config);
                let quiet_since = p.heard_ms.max(p.judged_ms).max(p.peer_heard_ms);
                if p.producing > 0 {
                    now_ms.saturating_sub(quiet_since) > bound && (witnessed(bound) || busy == 1)
                } else {
                    // Nothing heard since a waiting request was sent, past what its work
                    // explains; a lone replica's wait proves nothing (its prefill may be
                    // long), so a witness is needed.
                    let slowness = p.slowness().unwrap_or(fleet_slowness);
                    waiting(r).any(|a| {
                        a.bound_ms(bound, p.gap_ms.or(fleet_gap), slowness)
                            .is_some_and(|bound| {
                                now_ms.saturating_sub(quiet_since.max(a.since_ms)) > bound
                                    && witnessed(bound)
                            })
                    })
                }
            })
            .map(|(&r, _)| r)
            .collect();
        out.sort_unstable();
        for r in &out {
            if let Some(p) = self.replicas.get_mut(r) {
                p.judged_ms = now_ms;
            }
        }
        out
    }

    /// The replicas taken for hung at or after `since_ms`, with when: what this router
    /// tells the replicas' own nodes, whose probers eject and restart them.
    pub fn judged_since(&self, since_ms: u64) -> Vec<(ReplicaId, u64)> {
        self.stamped_since(since_ms, |p| p.judged_ms)
    }

    /// Forgets the replicas that left the fleet (`in_fleet` is false) once no stream
    /// is producing there.
    pub fn forget_gone(&mut self, in_fleet: impl Fn(ReplicaId) -> bool) {
        self.replicas.retain(|&r, p| in_fleet(r) || p.producing > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const R: ReplicaId = ReplicaId(1);

    #[test]
    fn the_last_sign_of_life_is_the_newest_of_this_routers_and_its_peers() {
        let mut s = StreamStalls::new(StallConfig::default());
        assert_eq!(s.last_heard_ms(R), None);
        s.progressed(R, None, 1, 100);
        assert_eq!(s.last_heard_ms(R), Some(100));
        s.heard_by_peer(R, 250);
        assert_eq!(s.last_heard_ms(R), Some(250));
        s.heard(R, 200);
        assert_eq!(
            s.last_heard_ms(R),
            Some(250),
            "an older word does not go back"
        );
        s.progressed(R, Some(100), 2, 300);
        assert_eq!(s.last_heard_ms(R), Some(300));
    }

    /// `streams` streams on `R` producing one token each every `gap` ms until `end`,
    /// offset by 5 ms each; returns when each last produced.
    fn produce(s: &mut StreamStalls, streams: usize, gap: u64, end: u64) -> Vec<Option<u64>> {
        let mut last = vec![None; streams];
        let mut t = 0;
        while t <= end {
            for (k, l) in last.iter_mut().enumerate() {
                let now = t + 5 * k as u64;
                s.progressed(R, *l, 1, now);
                *l = Some(now);
            }
            t += gap;
        }
        last
    }

    #[test]
    fn a_replica_is_stalled_when_nothing_comes_back_past_the_bound() {
        let mut s = StreamStalls::new(StallConfig::default());
        let last = produce(&mut s, 2, 20, 980);
        assert_eq!(s.bound_ms(R), 3_000, "the floor: 20 gaps of 20 ms are less");
        let newest = last[1].unwrap();
        assert!(s.take_stalled(newest + 2_900).is_empty());
        // One stream still moving: not a hang (that stream's request may be the
        // replica's only work left).
        let mut moving = s.clone();
        moving.progressed(R, last[1], 1, newest + 2_950);
        assert!(moving.take_stalled(newest + 3_100).is_empty());
        // Streams that ended are no longer judged; with none left, nothing is.
        moving.ended(R);
        moving.ended(R);
        assert!(moving.take_stalled(1_000_000).is_empty());
        // Both silent: stalled, and judged once per bound.
        assert_eq!(s.take_stalled(newest + 3_100), vec![R]);
        assert!(s.take_stalled(newest + 5_000).is_empty());
        assert_eq!(
            s.take_stalled(newest + 6_200),
            vec![R],
            "streams that neither move nor produce are judged again"
        );
        // One that comes back is a sign of life, and its long gap lengthens the bound.
        s.progressed(R, last[0], 1, newest + 6_300);
        let bound = s.bound_ms(R);
        assert!(bound > 10_000, "{bound}");
        assert!(s.take_stalled(newest + 6_300 + bound).is_empty());
        assert_eq!(s.take_stalled(newest + 6_301 + bound), vec![R]);
    }

    #[test]
    fn a_slow_replica_gets_a_longer_bound() {
        let mut s = StreamStalls::new(StallConfig::default());
        let last = produce(&mut s, 1, 400, 99 * 400);
        let bound = s.bound_ms(R);
        assert!((7_900..=8_000).contains(&bound), "{bound}");
        assert!(
            s.take_stalled(last[0].unwrap() + 7_000).is_empty(),
            "slow, not hung"
        );
        // Tokens that come in batches count per token.
        let mut b = StreamStalls::new(StallConfig::default());
        let mut prev = None;
        for t in 0..100u64 {
            b.progressed(R, prev, 10, t * 400);
            prev = Some(t * 400);
        }
        assert_eq!(b.bound_ms(R), 3_000);
    }

    /// An overloaded engine pauses every running stream while it computes newcomers'
    /// prompts (or recomputes preempted ones): the newcomers' first tokens, answers sent
    /// whole and passed probes show it is working.
    #[test]
    fn an_overloaded_replica_that_still_answers_is_not_hung() {
        let base = StreamStalls::new(StallConfig::default());
        let mut s = base.clone();
        let last = produce(&mut s, 12, 50, 5_000);
        let paused = last[11].unwrap();
        // A newcomer's first token 2.5 s into the pause, another stream's at 5 s.
        let mut first_tokens = s.clone();
        first_tokens.progressed(R, None, 1, paused + 2_500);
        assert!(first_tokens.take_stalled(paused + 5_000).is_empty());
        first_tokens.progressed(R, None, 1, paused + 5_000);
        assert!(first_tokens.take_stalled(paused + 7_900).is_empty());
        // An answer sent whole, or a probe passed.
        let mut heard = s.clone();
        heard.heard(R, paused + 2_000);
        assert!(heard.take_stalled(paused + 4_900).is_empty());
        assert_eq!(heard.take_stalled(paused + 5_100), vec![R], "then silence");
        // Another replica's life says nothing of this one, and while it goes on without
        // a break it witnesses that the silence is this replica's own.
        let mut other = s.clone();
        let q = ReplicaId(2);
        let mut prev = None;
        for t in (0..=paused + 3_100).step_by(40) {
            other.progressed(q, prev, 1, t);
            prev = Some(t);
        }
        assert_eq!(other.take_stalled(paused + 3_100), vec![R]);
    }

    /// The router's host, or the machine its engines share, stops for a few seconds:
    /// every producing replica is silent at once, then all resume. Not a hang.
    #[test]
    fn silence_everywhere_at_once_is_a_pause_not_a_hang() {
        let q = ReplicaId(2);
        let mut s = StreamStalls::new(StallConfig::default());
        let (mut pr, mut pq) = (None, None);
        let mut t = 0;
        let mut tick = |s: &mut StreamStalls, t: u64| {
            s.progressed(R, pr, 1, t);
            s.progressed(q, pq, 1, t + 7);
            pr = Some(t);
            pq = Some(t + 7);
        };
        while t <= 5_000 {
            tick(&mut s, t);
            t += 50;
        }
        // A 4.5 s pause, judged every second through it: nothing.
        for at in (t..t + 4_500).step_by(1_000) {
            assert!(s.take_stalled(at).is_empty(), "at {at}");
        }
        // Q resumes first; a round lands before R's next token: still nothing (Q's
        // run is too short to witness R's silence).
        let resumed = t + 4_500;
        s.progressed(q, pq, 1, resumed);
        assert!(s.take_stalled(resumed + 20).is_empty());
        // Both resume: nothing ever.
        let mut t2 = resumed + 50;
        let mut pr2 = pr;
        let mut pq2 = Some(resumed);
        while t2 <= resumed + 10_000 {
            s.progressed(R, pr2, 1, t2);
            s.progressed(q, pq2, 1, t2 + 7);
            pr2 = Some(t2);
            pq2 = Some(t2 + 7);
            assert!(s.take_stalled(t2 + 20).is_empty());
            t2 += 50;
        }
        // Had R stayed silent while Q went on, R would be judged once Q's run witnessed
        // half of R's bound.
        let mut alone = StreamStalls::new(StallConfig::default());
        alone.progressed(R, None, 1, 0);
        let mut prev = None;
        let mut judged = None;
        for t in (0..20_000u64).step_by(50) {
            alone.progressed(q, prev, 1, t);
            prev = Some(t);
            if judged.is_none() && alone.take_stalled(t) == vec![R] {
                judged = Some(t);
            }
        }
        assert_eq!(judged, Some(3_050));
    }

    /// At low load no other replica is heard without a break, but together they are:
    /// that witnesses a silence as well as one busy replica would, and a pause of
    /// everything still is not a hang.
    #[test]
    fn replicas_heard_in_turn_witness_together() {
        let (q1, q2) = (ReplicaId(2), ReplicaId(3));
        // Q1 answers at 0, 2, 4 s…, Q2 at 1, 3, 5 s…: each alone has 2 s silences.
        let life = |s: &mut StreamStalls, t: u64| {
            if t.is_multiple_of(1_000) {
                s.heard(if t.is_multiple_of(2_000) { q1 } else { q2 }, t);
            }
        };
        let waiting = Awaited {
            replica: R,
            since_ms: 10_000,
            queue_ms: 100,
            tokens: 1,
        };
        let mut s = StreamStalls::new(StallConfig::default());
        let mut judged = None;
        for t in (0..20_000u64).step_by(100) {
            life(&mut s, t);
            let awaited: &[Awaited] = if t >= 10_000 { &[waiting] } else { &[] };
            if judged.is_none() && s.take_stalled_with(t, awaited) == vec![R] {
                judged = Some(t);
            }
        }
        assert_eq!(
            judged,
            Some(13_100),
            "the floor past the oldest stream's send"
        );
        // The same wait while everything is silent from 11 s on: never judged.
        let mut paused = StreamStalls::new(StallConfig::default());
        for t in (0..20_000u64).step_by(100) {
            if t < 11_000 {
                life(&mut paused, t);
            }
            let awaited: &[Awaited] = if t >= 10_000 { &[waiting] } else { &[] };
            assert!(paused.take_stalled_with(t, awaited).is_empty(), "at {t}");
        }
    }

    /// A hang that leaves no stream producing: the streams sent to the replica wait for
    /// their first token, and nothing comes back from it.
    #[test]
    fn a_replica_whose_streams_only_wait_is_judged_past_its_queue_with_a_witness() {
        let q = ReplicaId(2);
        let waiting = |queue_ms| Awaited {
            replica: R,
            since_ms: 1_000,
            queue_ms,
            tokens: 1,
        };
        // Q produces without a break all along: the witness.
        let witnessed = |queue_ms: u64| {
            let mut s = StreamStalls::new(StallConfig::default());
            let mut prev = None;
            let mut judged = None;
            for t in (0..20_000u64).step_by(50) {
                s.progressed(q, prev, 1, t);
                prev = Some(t);
                if judged.is_none() && s.take_stalled_with(t, &[waiting(queue_ms)]) == vec![R] {
                    judged = Some(t);
                }
            }
            judged
        };
        // A short queue: the floor (3 s after the oldest stream was sent).
        assert_eq!(witnessed(100), Some(4_050));
        // A queue expected to take 2 s: three times that.
        assert_eq!(witnessed(2_000), Some(7_050));
        // A first token (or any sign of life) starts the silence again.
        let mut s = StreamStalls::new(StallConfig::default());
        let mut prev = None;
        for t in (0..3_000u64).step_by(50) {
            s.progressed(q, prev, 1, t);
            prev = Some(t);
        }
        s.heard(R, 3_000);
        for t in (3_000..5_950u64).step_by(50) {
            s.progressed(q, prev, 1, t);
            prev = Some(t);
            assert!(s.take_stalled_with(t, &[waiting(100)]).is_empty(), "at {t}");
        }
        // Alone, a wait proves nothing: never judged.
        let mut alone = StreamStalls::new(StallConfig::default());
        for t in (0..60_000u64).step_by(500) {
            assert!(alone.take_stalled_with(t, &[waiting(100)]).is_empty());
        }
        // Nor when every replica is silent at once (a pause).
        let mut paused = StreamStalls::new(StallConfig::default());
        paused.progressed(q, None, 1, 0);
        for t in (0..10_000u64).step_by(500) {
            assert!(paused.take_stalled_with(t, &[waiting(100)]).is_empty());
        }
    }

    /// An engine slower than the profile it is priced by (a CPU build, a bigger model):
    /// its streams waited ten times longer for their first token than their queues
    /// should have taken, so a wait of that length there is not a hang.
    #[test]
    fn a_replica_slower_than_its_profile_is_given_its_own_wait() {
        let q = ReplicaId(2);
        // Q produces all along (the witness); R's one request waits from 1 s, its queue
        // expected to take 2 s.
        let judged = |mut s: StreamStalls| {
            let waiting = Awaited {
                replica: R,
                since_ms: 1_000,
                queue_ms: 2_000,
                tokens: 1,
            };
            let mut prev = None;
            for t in (0..100_000u64).step_by(50) {
                s.progressed(q, prev, 1, t);
                prev = Some(t);
                if s.take_stalled_with(t, &[waiting]) == vec![R] {
                    return Some(t);
                }
            }
            None
        };
        let fresh = StreamStalls::new(StallConfig::default());
        assert_eq!(fresh.slowness(R), 1.0);
        assert_eq!(
            judged(fresh.clone()),
            Some(7_050),
            "three times 2 s past the send"
        );
        let mut slow = fresh.clone();
        for _ in 0..5 {
            slow.first_token_after(R, 0, 2_000, 20_000);
        }
        assert_eq!(slow.slowness(R), 10.0);
        assert_eq!(judged(slow.clone()), Some(61_050), "three times 20 s");
        // Waits shorter than expected never shorten the bound.
        let mut fast = fresh.clone();
        fast.first_token_after(R, 0, 2_000, 1_500);
        assert_eq!(fast.slowness(R), 1.0);
        assert_eq!(judged(fast), Some(7_050));
        // Short waits teach nothing: they are mostly the hop and one engine step.
        let mut short = fresh.clone();
        for _ in 0..20 {
            short.first_token_after(R, 0, 20, 900);
        }
        assert_eq!(short.slowness(R), 1.0);
        // Long prompts weigh more than short ones: one 20 s wait for 2 s of work, then
        // four 1 s waits on time, is still a slow replica (3.5×).
        let mut mixed = fresh.clone();
        mixed.first_token_after(R, 0, 2_000, 20_000);
        for _ in 0..4 {
            mixed.first_token_after(R, 0, 1_000, 1_000);
        }
        assert!(mixed.slowness(R) > 3.0, "{}", mixed.slowness(R));
        // A replica with no first token yet is taken to be as slow as those with.
        let mut unseen = fresh.clone();
        unseen.first_token_after(ReplicaId(3), 0, 2_000, 20_000);
        assert_eq!(judged(unseen), Some(61_050));
        // Past a limit, slow is broken.
        let mut broken = fresh.clone();
        broken.first_token_after(R, 0, 1, 1_000_000_000);
        assert_eq!(broken.slowness(R), MAX_SLOWNESS);
        // A wait through which R was taken for hung measured the hang: it teaches
        // nothing, and the next one is judged as before.
        let mut hung = fresh;
        assert_eq!(judged(hung.clone()), Some(7_050));
        let mut t = 0;
        let mut prev = None;
        let waiting = Awaited {
            replica: R,
            since_ms: 0,
            queue_ms: 100,
            tokens: 1,
        };
        while hung.take_stalled_with(t, &[waiting]).is_empty() {
            hung.progressed(q, prev, 1, t);
            prev = Some(t);
            t += 50;
        }
        hung.first_token_after(R, 0, 100, t + 20_000);
        assert_eq!(hung.slowness(R), 1.0);
    }

    /// A busy replica streams to other routers while this router's request waits in its
    /// queue: their word that they hear it keeps it from being taken for hung here; when
    /// the word stops, its silence counts from the last of it.
    #[test]
    fn a_replica_other_routers_hear_is_not_silent() {
        let q = ReplicaId(2);
        let waiting = Awaited {
            replica: R,
            since_ms: 1_000,
            queue_ms: 100,
            tokens: 1,
        };
        let mut s = StreamStalls::new(StallConfig::default());
        let mut prev = None;
        let mut judged = None;
        for t in (0..30_000u64).step_by(50) {
            // The witness produces all along; peers hear R every gossip round until 10 s.
            s.progressed(q, prev, 1, t);
            prev = Some(t);
            if t % 1_000 == 0 && t <= 10_000 {
                s.heard_by_peer(R, t.saturating_sub(400));
            }
            if judged.is_none() && s.take_stalled_with(t, &[waiting]) == vec![R] {
                judged = Some(t);
            }
        }
        // Last heard by a peer at 9.6 s: the floor of 3 s from there.
        assert_eq!(judged, Some(12_650));
        // What a router tells the others is only its own hearing, not a peer's word.
        assert_eq!(s.heard_since(29_000), vec![(q, 29_950)]);
        assert!(s.heard_since(30_000).is_empty());
    }

    #[test]
    fn replicas_that_left_are_forgotten_once_their_streams_are_gone() {
        let mut s = StreamStalls::new(StallConfig::default());
        s.progressed(R, None, 1, 0);
        s.heard(ReplicaId(2), 0);
        s.forget_gone(|_| false);
        assert_eq!(s.take_stalled(10_000), vec![R], "still producing there");
        s.ended(R);
        s.forget_gone(|_| false);
        assert!(s.replicas.is_empty());
    }

    proptest! {
        /// A replica whose every stream produced within its bound is never stalled.
        #[test]
        fn streams_that_keep_producing_are_never_stalled(
            gaps in proptest::collection::vec(1u64..3_000, 2..100),
            streams in 1usize..5,
        ) {
            let mut s = StreamStalls::new(StallConfig::default());
            let mut last = vec![None; streams];
            let mut now = 0;
            for gap in gaps {
                now += gap;
                for l in last.iter_mut() {
                    s.progressed(R, *l, 1, now);
                    *l = Some(now);
                }
                let bound = s.bound_ms(R);
                prop_assert!(s.take_stalled(now + bound).is_empty());
            }
        }

        /// Whatever streams start, produce and end, a replica is stalled exactly when
        /// streams are producing there and nothing came from it past the bound.
        #[test]
        fn stalled_exactly_when_producing_and_silent(
            events in proptest::collection::vec((0u8..4, 0u64..2_000), 1..60),
        ) {
            let mut s = StreamStalls::new(StallConfig::default());
            let (mut producing, mut heard, mut now) = (0u32, 0u64, 0u64);
            for (what, dt) in events {
                now += dt;
                match what {
                    0 => { s.progressed(R, None, 1, now); producing += 1; heard = now; }
                    1 if producing > 0 => { s.progressed(R, Some(now - dt), 1, now); heard = now; }
                    2 if producing > 0 => { s.ended(R); producing -= 1; }
                    3 => { s.heard(R, now); heard = now; }
                    _ => {}
                }
                let bound = s.bound_ms(R);
                let expect = producing > 0 && now - heard > bound;
                prop_assert_eq!(s.take_stalled(now) == vec![R], expect);
                if expect {
                    heard = now;
                }
            }
        }
    }
}
