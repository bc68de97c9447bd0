//! A synthetic coding-agent workload: long, growing conversations over one shared
//! system prompt, with bursts of quick tool calls between slower human turns, and a
//! tail of sessions whose context grows to 50–100k tokens. It stresses what public
//! traces lack: heavy, session-affine prefix reuse.
//!
//! # Shape of a session
//!
//! A session is a sequence of *bursts*. A burst starts with the task (first burst) or a
//! user message (later ones), then the agent calls tools: each turn's output is a short
//! tool call, the next turn's new content is the tool's result, arriving after the
//! call was generated plus the tool's run time (a few seconds). The burst's last turn
//! answers the user with a longer reply; the user reads and types (tens of seconds)
//! before the next burst. Every turn's prompt is the previous turn's prompt, plus the
//! previous output, plus the new content, so consecutive turns share their entire
//! previous prompt as a prefix.
//!
//! Normal sessions run a geometric number of bursts and stay below
//! `long_context_tokens.0`; a `long_session_fraction` of sessions instead keep working
//! until their context reaches a target drawn uniformly from `long_context_tokens`.
//! A context ceiling clips the last turn's prompt (as an agent truncates a tool result)
//! and ends the session.
//!
//! # Prompt representation
//!
//! A prompt is two segments: the system prompt (one segment shared by every session)
//! and the session's history, one segment whose seed is the session's and whose length
//! grows turn by turn. A segment's token `i` depends only on its seed and `i`, so turn
//! `k`'s history tokens are exactly turn `k−1`'s history tokens followed by the new
//! ones: the same tokens as listing a new segment per output and per tool result, with
//! O(1) segments per request instead of O(turns), which keeps a million-request trace
//! small.
//!
//! # Timing
//!
//! The trace is open-loop, so a gap between two turns includes an estimate of how long
//! the previous output took to generate (`decode_s_per_token` per output token) on top
//! of the tool's run time or the user's think time; under nominal load a turn seldom
//! arrives before the one it follows has finished. Sessions start as a Poisson process.

use super::request::{splitmix64, Prompt, Segment, Trace, TraceRequest};
use super::servegen::Rng;

/// A log-normal law given by its median and log-space standard deviation, clamped to
/// `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogNormal {
    pub median: f64,
    pub sigma: f64,
    pub min: f64,
    pub max: f64,
}

impl LogNormal {
    pub const fn new(median: f64, sigma: f64, min: f64, max: f64) -> Self {
        LogNormal {
            median,
            sigma,
            min,
            max,
        }
    }

    fn sample(&self, rng: &mut Rng) -> f64 {
        let x = self.median * (self.sigma * rng.normal()).exp();
        x.min(self.max).max(self.min)
    }

    fn tokens(&self, rng: &mut Rng) -> u32 {
        self.sample(rng).round().clamp(1.0, f64::from(u32::MAX / 4)) as u32
    }
}

/// What [`generate`] produces. The defaults describe an interactive coding agent
/// (Claude Code, Cursor, OpenHands-style) at a load a few replicas can carry: about 25
/// requests per session, ~2.5 requests/s, prompts averaging ~25k tokens (a tenth
/// of the sessions, the long ones, send ~40% of the requests).
#[derive(Debug, Clone, PartialEq)]
pub struct AgenticConfig {
    /// Sessions to generate. Default 500.
    pub sessions: u32,
    /// If set, no session starts after this time (seconds) and requests after it are
    /// dropped, so the trace is a window of steady load; by default every session runs
    /// to its end. Default `None`.
    pub duration_s: Option<f64>,
    /// Session starts per second (Poisson). Default 0.1 (one every 10 s, so ~30–40
    /// sessions are active at once). A non-positive rate starts every session at 0.
    pub session_rate_per_s: f64,
    /// The system prompt shared by all sessions: instructions plus a dozen or two tool
    /// schemas at a few hundred tokens each; coding agents ship 3k–15k. Default 6000.
    pub system_prompt_tokens: u32,
    /// The first user message (the task, often with pasted code or an issue). Default
    /// median 600, σ 0.9, 30..8000.
    pub task_tokens: LogNormal,
    /// A later user message (a follow-up instruction). Default median 60, σ 1.0, 2..4000.
    pub user_message_tokens: LogNormal,
    /// A tool result (file reads of hundreds to thousands of tokens, short greps and
    /// listings, long test logs). Default median 350, σ 1.1, 5..12,000 (mean ~640).
    pub tool_result_tokens: LogNormal,
    /// The output of a tool-calling turn: brief reasoning plus a JSON call. Default
    /// median 90, σ 0.6, 10..1024.
    pub tool_call_output_tokens: LogNormal,
    /// The output ending a burst: the agent's reply to the user (a summary, a diff, a
    /// question). Default median 300, σ 0.8, 20..4096.
    pub reply_output_tokens: LogNormal,
    /// Mean number of bursts (user turns) of a normal session, geometric. Default 3.
    pub mean_bursts: f64,
    /// Mean number of turns in a burst, geometric (the last one replies to the user,
    /// the others call tools). Default 6.
    pub mean_burst_turns: f64,
    /// A tool's run time between a call and the next turn (reads and greps take well
    /// under a second, builds and tests much longer). Default median 1.5 s, σ 1.0,
    /// 0.1..120 s.
    pub tool_gap_s: LogNormal,
    /// The user's time to read the reply and answer. Default median 30 s, σ 1.0,
    /// 3..900 s.
    pub think_gap_s: LogNormal,
    /// Generation time per output token added to every gap (a ~50 token/s stream).
    /// Default 0.02 s.
    pub decode_s_per_token: f64,
    /// Fraction of sessions that grow to a long context. Default 0.1.
    pub long_session_fraction: f64,
    /// A long session's context target is drawn uniformly from this range (tokens);
    /// normal sessions stay below its lower end. Default (50,000, 100,000).
    pub long_context_tokens: (u32, u32),
    /// Safety bound on the turns of one session. Default 400 (a 100k-token session
    /// needs ~130 turns at the default sizes).
    pub max_turns: u32,
}

impl Default for AgenticConfig {
    fn default() -> Self {
        AgenticConfig {
            sessions: 500,
            duration_s: None,
            session_rate_per_s: 0.1,
            system_prompt_tokens: 6000,
            task_tokens: LogNormal::new(600.0, 0.9, 30.0, 8000.0),
            user_message_tokens: LogNormal::new(60.0, 1.0, 2.0, 4000.0),
            tool_result_tokens: LogNormal::new(350.0, 1.1, 5.0, 12_000.0),
            tool_call_output_tokens: LogNormal::new(90.0, 0.6, 10.0, 1024.0),
            reply_output_tokens: LogNormal::new(300.0, 0.8, 20.0, 4096.0),
            mean_bursts: 3.0,
            mean_burst_turns: 6.0,
            tool_gap_s: LogNormal::new(1.5, 1.0, 0.1, 120.0),
            think_gap_s: LogNormal::new(30.0, 1.0, 3.0, 900.0),
            decode_s_per_token: 0.02,
            long_session_fraction: 0.1,
            long_context_tokens: (50_000, 100_000),
            max_turns: 400,
        }
    }
}

/// The workload key of session `index` of a trace generated with `seed`.
pub fn session_key(seed: u64, index: u32) -> u64 {
    splitmix64(seed ^ splitmix64(0x6167_656e_7473 ^ u64::from(index)))
}

/// Generates the trace: sorted by arrival, `TraceRequest::session` is the session's key
/// ([`session_key`]). Deterministic in `(cfg, seed)`; O(requests).
pub fn generate(cfg: &AgenticConfig, seed: u64) -> Trace {
    let system_seed = splitmix64(seed ^ 0x7379_7374_656d_5f70);
    let mut starts = Rng::new(seed ^ 0x7374_6172_7473);
    let mut requests = Vec::new();
    let mut start_s = 0.0;
    for index in 0..cfg.sessions {
        if index > 0 && cfg.session_rate_per_s > 0.0 {
            start_s += starts.exponential(1.0 / cfg.session_rate_per_s);
        }
        if cfg.duration_s.is_some_and(|d| start_s > d) {
            break;
        }
        session(
            cfg,
            session_key(seed, index),
            system_seed,
            start_s,
            &mut requests,
        );
    }
    if let Some(d) = cfg.duration_s {
        let end_us = (d * 1e6).round() as u64;
        requests.retain(|r| r.arrival_us <= end_us);
    }
    let mut trace = Trace {
        name: "agentic".into(),
        requests,
    };
    trace.sort();
    trace
}

/// Appends one session's turns.
fn session(
    cfg: &AgenticConfig,
    key: u64,
    system_seed: u64,
    start_s: f64,
    out: &mut Vec<TraceRequest>,
) {
    let mut rng = Rng::new(key);
    let history_seed = splitmix64(key ^ 0x0068_6973_746f_7279);
    let (lo, hi) = cfg.long_context_tokens;
    let lo = lo.max(2);
    let hi = hi.max(lo);
    let long = rng.uniform() < cfg.long_session_fraction;
    // The context ceiling: a long session's target, or just below the long range.
    let ceiling = if long {
        lo + rng.below(u64::from(hi - lo) + 1) as u32
    } else {
        lo - 1
    };
    let bursts = if long {
        u32::MAX
    } else {
        rng.geometric(cfg.mean_bursts)
    };
    let system_len = cfg.system_prompt_tokens;
    let mut prompt = 0u32;
    let mut prev_output = 0u32;
    let mut at_s = start_s;
    let mut turns = 0u32;
    'bursts: for burst in 0..bursts {
        let burst_turns = rng.geometric(cfg.mean_burst_turns);
        for k in 0..burst_turns {
            let new = match (burst, k) {
                (0, 0) => system_len.saturating_add(cfg.task_tokens.tokens(&mut rng)),
                (_, 0) => cfg.user_message_tokens.tokens(&mut rng),
                _ => cfg.tool_result_tokens.tokens(&mut rng),
            };
            prompt = prompt
                .saturating_add(prev_output)
                .saturating_add(new)
                .min(ceiling);
            let reply = k + 1 == burst_turns;
            let output = if reply {
                cfg.reply_output_tokens.tokens(&mut rng)
            } else {
                cfg.tool_call_output_tokens.tokens(&mut rng)
            };
            let shared = system_len.min(prompt);
            let mut segments = Vec::with_capacity(2);
            if shared > 0 {
                segments.push(Segment {
                    seed: system_seed,
                    len: shared,
                });
            }
            if prompt > shared {
                segments.push(Segment {
                    seed: history_seed,
                    len: prompt - shared,
                });
            }
            out.push(TraceRequest {
                arrival_us: (at_s * 1e6).round() as u64,
                session: Some(key),
                prompt: Prompt { segments },
                output_tokens: output,
            });
            turns += 1;
            if prompt >= ceiling || turns >= cfg.max_turns {
                break 'bursts;
            }
            let wait = if reply {
                cfg.think_gap_s.sample(&mut rng)
            } else {
                cfg.tool_gap_s.sample(&mut rng)
            };
            at_s += f64::from(output) * cfg.decode_s_per_token.max(0.0) + wait.max(0.0);
            prev_output = output;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn by_session(t: &Trace) -> HashMap<u64, Vec<&TraceRequest>> {
        let mut m: HashMap<u64, Vec<&TraceRequest>> = HashMap::new();
        for r in &t.requests {
            m.entry(r.session.unwrap()).or_default().push(r);
        }
        m
    }

    #[test]
    fn deterministic_per_seed_and_sorted() {
        let cfg = AgenticConfig {
            sessions: 50,
            ..AgenticConfig::default()
        };
        let a = generate(&cfg, 7);
        assert_eq!(a.name, "agentic");
        assert_eq!(a.requests, generate(&cfg, 7).requests);
        assert_ne!(a.requests, generate(&cfg, 8).requests);
        assert!(a
            .requests
            .windows(2)
            .all(|w| w[0].arrival_us <= w[1].arrival_us));
        assert_eq!(by_session(&a).len(), 50);
        assert!(by_session(&a).contains_key(&session_key(7, 49)));
    }

    #[test]
    fn each_turn_extends_the_previous_prompt() {
        // Small sizes so the tokens themselves can be compared.
        let small = LogNormal::new(20.0, 0.8, 1.0, 200.0);
        let cfg = AgenticConfig {
            sessions: 30,
            system_prompt_tokens: 300,
            task_tokens: small,
            user_message_tokens: small,
            tool_result_tokens: small,
            tool_call_output_tokens: small,
            reply_output_tokens: small,
            long_context_tokens: (1500, 3000),
            long_session_fraction: 0.3,
            ..AgenticConfig::default()
        };
        let t = generate(&cfg, 3);
        let system = t.requests[0].prompt.segments[0];
        assert_eq!(system.len, 300);
        for turns in by_session(&t).values() {
            for r in turns {
                assert_eq!(r.prompt.segments[0], system, "one system prompt for all");
            }
            for w in turns.windows(2) {
                let (prev, cur) = (w[0], w[1]);
                let (tp, tc) = (prev.prompt.tokens(), cur.prompt.tokens());
                assert!(tc.len() > tp.len());
                assert_eq!(tc[..tp.len()], tp[..], "turn extends the previous prompt");
                let capped = cur.prompt.len() == cfg.long_context_tokens.0 - 1
                    || cur.prompt.len() >= cfg.long_context_tokens.0;
                assert!(
                    capped || cur.prompt.len() > prev.prompt.len() + prev.output_tokens,
                    "the previous output is part of the next prompt"
                );
            }
        }
        // Different sessions share only the system prompt.
        let firsts: Vec<&TraceRequest> = by_session(&t).values().map(|v| v[0]).collect();
        let (a, b) = (firsts[0].prompt.tokens(), firsts[1].prompt.tokens());
        assert_eq!(a[..300], b[..300]);
        let end = a.len().min(b.len());
        assert!(end > 300);
        assert_ne!(a[300..end], b[300..end]);
    }

    #[test]
    fn sizes_and_counts_stay_within_bounds() {
        let cfg = AgenticConfig {
            sessions: 2000,
            session_rate_per_s: 0.5,
            ..AgenticConfig::default()
        };
        let t = generate(&cfg, 11);
        let sessions = by_session(&t);
        assert_eq!(sessions.len(), 2000);
        let (lo, hi) = cfg.long_context_tokens;
        let mut long = 0;
        for turns in sessions.values() {
            assert!(turns.len() as u32 <= cfg.max_turns);
            let max = turns.iter().map(|r| r.prompt.len()).max().unwrap();
            assert!(max <= hi);
            if max >= lo {
                long += 1;
            }
            assert!(turns[0].prompt.len() > cfg.system_prompt_tokens);
            for r in turns {
                assert!(
                    (10..=4096).contains(&r.output_tokens),
                    "{}",
                    r.output_tokens
                );
            }
        }
        let frac = f64::from(long) / 2000.0;
        assert!((frac - 0.1).abs() < 0.025, "long fraction {frac}");
        // Poisson session starts at 0.5/s: 1999 gaps of mean 2 s.
        let last_start = sessions.values().map(|v| v[0].arrival_us).max().unwrap() as f64 / 1e6;
        assert!((last_start - 3998.0).abs() < 300.0, "{last_start}");
        // Realistic sizes: ~25 turns per session, prompts of ~20k tokens on average,
        // and almost all of every prompt is the previous turn's prompt.
        let n = t.requests.len() as f64;
        let per_session = n / 2000.0;
        assert!((15.0..40.0).contains(&per_session), "{per_session}");
        let mean_prompt = t
            .requests
            .iter()
            .map(|r| f64::from(r.prompt.len()))
            .sum::<f64>()
            / n;
        assert!((12_000.0..35_000.0).contains(&mean_prompt), "{mean_prompt}");
        let (mut reused, mut total) = (0u64, 0u64);
        for turns in sessions.values() {
            for w in turns.windows(2) {
                reused += u64::from(w[0].prompt.len());
                total += u64::from(w[1].prompt.len() - w[0].prompt.len());
            }
        }
        let reuse = reused as f64 / (reused + total) as f64;
        assert!(reuse > 0.9, "prefix reuse {reuse}");
        eprintln!(
            "agentic: {n} requests, {per_session:.1} per session, mean prompt \
             {mean_prompt:.0} tokens, {long} long sessions, prefix reuse {reuse:.3}"
        );
    }

    #[test]
    fn tool_bursts_are_quick_and_think_gaps_long() {
        let cfg = AgenticConfig {
            sessions: 300,
            ..AgenticConfig::default()
        };
        let t = generate(&cfg, 5);
        let (mut short, mut long) = (0, 0);
        for turns in by_session(&t).values() {
            for w in turns.windows(2) {
                let gap = (w[1].arrival_us - w[0].arrival_us) as f64 / 1e6;
                let out = f64::from(w[0].output_tokens);
                assert!(gap >= out * cfg.decode_s_per_token - 1e-6);
                if gap < 10.0 {
                    short += 1;
                } else if gap > 20.0 {
                    long += 1;
                }
            }
        }
        assert!(
            short > 3 * long && long > 0,
            "{short} short gaps, {long} long ones"
        );
    }

    #[test]
    fn duration_bounds_the_trace() {
        let cfg = AgenticConfig {
            sessions: 10_000,
            duration_s: Some(600.0),
            session_rate_per_s: 1.0,
            ..AgenticConfig::default()
        };
        let t = generate(&cfg, 1);
        let sessions = by_session(&t).len();
        assert!((480..=720).contains(&sessions), "{sessions}");
        assert!(t.requests.iter().all(|r| r.arrival_us <= 600_000_000));
        let none = generate(
            &AgenticConfig {
                sessions: 0,
                ..AgenticConfig::default()
            },
            1,
        );
        assert!(none.requests.is_empty());
    }

    #[test]
    fn geometric_has_its_mean() {
        let mut rng = Rng::new(4);
        let n = 100_000;
        let m = (0..n).map(|_| f64::from(rng.geometric(6.0))).sum::<f64>() / f64::from(n);
        assert!((m - 6.0).abs() < 0.1, "{m}");
        assert_eq!(rng.geometric(0.5), 1);
    }
}
