//! Synthetic traces with traffic structures the recorded traces and the agentic
//! generator do not cover, so a routing change that only suits those shows up as a
//! regression here. Each generator is a pure function of its config and a seed and
//! returns a trace sorted by arrival.
//!
//! - [`shared_system`]: a chat service. Every request starts with the same system
//!   prompt, conversations resend their whole history each turn, and no request carries
//!   a workload key, so the router must find the structure in the prompts themselves.
//! - [`sessions`]: the same trace as [`shared_system`] for the same config and seed, but
//!   every request carries its conversation's key.
//! - [`few_apps`]: RAG-style traffic from three applications with uneven shares, each
//!   with its own long prefix, keyed by application: few workload keys, each very hot.
//! - [`bursty_code`]: code completion: ~2k-token prompts that one editing session's
//!   consecutive requests mostly share, ~30 output tokens, and on/off arrivals whose
//!   interarrival coefficient of variation is ~10; no workload keys.
//!
//! The simulator's `--load` stretches or compresses arrival times to a target fleet
//! load, so each generator's rate mainly sets the relation between its arrival process
//! and its other clocks (think times, on/off periods): how bursty the trace is and how
//! many conversations overlap, not its absolute load.
//!
//! A prompt is a list of segments; equal segments generate equal tokens, so a prefix
//! two requests share is a run of leading segments they share.

use super::agentic::LogNormal;
use super::request::{splitmix64, Prompt, Segment, Trace, TraceRequest};
use super::servegen::Rng;

/// Draws from `l`, clamped to its bounds.
fn sample(l: &LogNormal, rng: &mut Rng) -> f64 {
    (l.median * (l.sigma * rng.normal()).exp())
        .min(l.max)
        .max(l.min)
}

/// Draws a token count from `l` (at least 1).
fn tokens(l: &LogNormal, rng: &mut Rng) -> u32 {
    sample(l, rng).round().clamp(1.0, f64::from(u32::MAX / 4)) as u32
}

/// Uniform on `lo..=hi` (`hi` below `lo` counts as `lo`).
fn uniform_u32(rng: &mut Rng, (lo, hi): (u32, u32)) -> u32 {
    let hi = hi.max(lo);
    lo + rng.below(u64::from(hi - lo) + 1) as u32
}

fn micros(s: f64) -> u64 {
    (s.max(0.0) * 1e6).round() as u64
}

/// Sorts, then keeps at most `requests` requests and none after `duration_s`.
fn finish(
    name: &str,
    mut requests: Vec<TraceRequest>,
    cap: usize,
    duration_s: Option<f64>,
) -> Trace {
    requests.sort_by_key(|r| r.arrival_us);
    requests.truncate(cap);
    if let Some(d) = duration_s {
        let end = micros(d);
        requests.retain(|r| r.arrival_us <= end);
    }
    Trace {
        name: name.into(),
        requests,
    }
}

// ---------------------------------------------------------------------------------
// Chat conversations over one system prompt: shared-system and sessions.
// ---------------------------------------------------------------------------------

/// What [`shared_system`] and [`sessions`] produce. The defaults describe a chat
/// assistant: ~1 conversation starting per second, ~4 turns each, 30 s of thinking
/// between turns, so a few dozen conversations are active at once.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatConfig {
    /// Requests in the trace: the first `requests` arrivals of an unbounded run of
    /// conversations (so the conversations that started last lose their later turns;
    /// the window itself misses none). Default 5000.
    pub requests: u32,
    /// If set, requests after this time (seconds) are dropped as well. Default `None`.
    pub duration_s: Option<f64>,
    /// Conversation starts per second (Poisson). Default 1.0. A non-positive rate starts
    /// every conversation at 0.
    pub conversation_rate_per_s: f64,
    /// The system prompt's length is drawn uniformly from this range, once per trace:
    /// one system prompt starts every request. Default (1000, 3000).
    pub system_prompt_tokens: (u32, u32),
    /// Mean turns of a conversation, geometric. Default 4.
    pub mean_turns: f64,
    /// Bound on the turns of one conversation. Default 64.
    pub max_turns: u32,
    /// A user message. Default median 150, σ 0.7, 50..500.
    pub user_message_tokens: LogNormal,
    /// A reply. Default median 250, σ 0.5, 100..600.
    pub output_tokens: LogNormal,
    /// Mean time (seconds, exponential) the user reads and types between a reply and
    /// their next message. Default 30.
    pub mean_think_s: f64,
    /// Generation time per output token added to every gap between turns (a ~50
    /// token/s stream), so a turn seldom arrives before the reply it answers is done.
    /// Default 0.02 s.
    pub decode_s_per_token: f64,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            requests: 5000,
            duration_s: None,
            conversation_rate_per_s: 1.0,
            system_prompt_tokens: (1000, 3000),
            mean_turns: 4.0,
            max_turns: 64,
            user_message_tokens: LogNormal::new(150.0, 0.7, 50.0, 500.0),
            output_tokens: LogNormal::new(250.0, 0.5, 100.0, 600.0),
            mean_think_s: 30.0,
            decode_s_per_token: 0.02,
        }
    }
}

/// The key of conversation `index` of a chat trace generated with `seed` (what
/// [`sessions`] puts in `TraceRequest::session`).
pub fn conversation_key(seed: u64, index: u32) -> u64 {
    splitmix64(seed ^ splitmix64(0x6368_6174_636f_6e76 ^ u64::from(index)))
}

/// A chat service's trace with no workload keys (`session: None`): one system prompt
/// (its length drawn once from `system_prompt_tokens`) starts every request, and every
/// turn resends the conversation so far — the previous turn's prompt, its reply, then
/// the new user message — so a turn's segments extend the previous turn's. Deterministic
/// in `(cfg, seed)`.
pub fn shared_system(cfg: &ChatConfig, seed: u64) -> Trace {
    chat(cfg, seed, false, "shared-system")
}

/// [`shared_system`]'s trace (the same requests for the same config and seed) with
/// every request carrying its conversation's key ([`conversation_key`]).
pub fn sessions(cfg: &ChatConfig, seed: u64) -> Trace {
    chat(cfg, seed, true, "sessions")
}

fn chat(cfg: &ChatConfig, seed: u64, keyed: bool, name: &str) -> Trace {
    let cap = cfg.requests as usize;
    let mut rng = Rng::new(seed ^ 0x7379_7374_656d);
    let system = Segment {
        seed: splitmix64(seed ^ 0x7379_7374_656d_5f70),
        len: uniform_u32(&mut rng, cfg.system_prompt_tokens),
    };
    let mut starts = Rng::new(seed ^ 0x7374_6172_7473);
    let mut requests = Vec::new();
    // Conversations start in time order. The trace is the first `cap` arrivals, so keep
    // starting conversations until one starts after the cap-th earliest arrival so far:
    // no later conversation can have a request in the window. (With every conversation
    // starting at 0, stop at `cap` requests.)
    let poisson = cfg.conversation_rate_per_s > 0.0;
    let mut start_s = 0.0;
    let mut horizon_us = u64::MAX;
    for index in 0..u32::MAX {
        if index > 0 && poisson {
            start_s += starts.exponential(1.0 / cfg.conversation_rate_per_s);
        }
        let done = if poisson {
            micros(start_s) > horizon_us
        } else {
            requests.len() >= cap
        };
        if cap == 0 || done || cfg.duration_s.is_some_and(|d| start_s > d) {
            break;
        }
        conversation(cfg, seed, index, system, start_s, keyed, &mut requests);
        if requests.len() >= cap {
            let mut arrivals: Vec<u64> = requests.iter().map(|r| r.arrival_us).collect();
            let (_, nth, _) = arrivals.select_nth_unstable(cap - 1);
            horizon_us = *nth;
        }
    }
    finish(name, requests, cap, cfg.duration_s)
}

/// Appends one conversation's turns.
fn conversation(
    cfg: &ChatConfig,
    seed: u64,
    index: u32,
    system: Segment,
    start_s: f64,
    keyed: bool,
    out: &mut Vec<TraceRequest>,
) {
    let key = conversation_key(seed, index);
    let mut rng = Rng::new(key);
    let turns = rng.geometric(cfg.mean_turns).min(cfg.max_turns.max(1));
    let mut segments = vec![system];
    let mut at_s = start_s;
    for turn in 0..turns {
        let salt = u64::from(turn) << 1;
        segments.push(Segment {
            seed: splitmix64(key ^ splitmix64(0x7573_6572 ^ salt)),
            len: tokens(&cfg.user_message_tokens, &mut rng),
        });
        let output = tokens(&cfg.output_tokens, &mut rng);
        out.push(TraceRequest {
            arrival_us: micros(at_s),
            session: keyed.then_some(key),
            prompt: Prompt {
                segments: segments.clone(),
            },
            output_tokens: output,
        });
        // The reply becomes part of the history the next turn resends.
        segments.push(Segment {
            seed: splitmix64(key ^ splitmix64(0x0072_6570_6c79 ^ (salt | 1))),
            len: output,
        });
        at_s += f64::from(output) * cfg.decode_s_per_token.max(0.0)
            + rng.exponential(cfg.mean_think_s.max(0.0));
    }
}

// ---------------------------------------------------------------------------------
// few-apps: a handful of keyed RAG applications.
// ---------------------------------------------------------------------------------

/// What [`few_apps`] produces. The defaults describe three retrieval-augmented
/// applications behind one endpoint, keyed by API key, at ~4 requests/s.
#[derive(Debug, Clone, PartialEq)]
pub struct FewAppsConfig {
    /// Requests in the trace. Default 5000.
    pub requests: u32,
    /// If set, requests after this time (seconds) are dropped. Default `None`.
    pub duration_s: Option<f64>,
    /// Requests per second (Poisson). Default 4.0. A non-positive rate puts every
    /// request at 0.
    pub rate_per_s: f64,
    /// Each application's share of the requests (normalized; one application per
    /// entry). Default 0.6, 0.3, 0.1.
    pub app_shares: Vec<f64>,
    /// Each application's prefix (instructions, few-shot examples, standing context) is
    /// drawn uniformly from this range, once per application. Default (2000, 6000).
    pub app_prefix_tokens: (u32, u32),
    /// Retrieved chunks per request, uniform in this range; every chunk is unique to
    /// its request. Default (2, 8).
    pub chunks: (u32, u32),
    /// Tokens per retrieved chunk. Default 500 (so 1k–4k of retrieved context).
    pub chunk_tokens: u32,
    /// The user's question, after the chunks. Default median 40, σ 0.6, 10..200.
    pub question_tokens: LogNormal,
    /// The answer. Default median 120, σ 0.5, 50..300.
    pub output_tokens: LogNormal,
}

impl Default for FewAppsConfig {
    fn default() -> Self {
        FewAppsConfig {
            requests: 5000,
            duration_s: None,
            rate_per_s: 4.0,
            app_shares: vec![0.6, 0.3, 0.1],
            app_prefix_tokens: (2000, 6000),
            chunks: (2, 8),
            chunk_tokens: 500,
            question_tokens: LogNormal::new(40.0, 0.6, 10.0, 200.0),
            output_tokens: LogNormal::new(120.0, 0.5, 50.0, 300.0),
        }
    }
}

/// The key of application `index` of a few-apps trace generated with `seed`.
pub fn app_key(seed: u64, index: usize) -> u64 {
    splitmix64(seed ^ splitmix64(0x6170_706b_6579 ^ index as u64))
}

/// RAG traffic from a few applications: each request is its application's prefix,
/// then unique retrieved chunks, then a question, and carries its application's key
/// ([`app_key`]) as `session`. The application is drawn by `app_shares`; arrivals are
/// Poisson. Deterministic in `(cfg, seed)`. An empty or all-zero `app_shares` gives an
/// empty trace.
pub fn few_apps(cfg: &FewAppsConfig, seed: u64) -> Trace {
    let shares: Vec<f64> = cfg
        .app_shares
        .iter()
        .map(|s| if s.is_finite() { s.max(0.0) } else { 0.0 })
        .collect();
    let total: f64 = shares.iter().sum();
    if total <= 0.0 {
        return finish("few-apps", Vec::new(), 0, None);
    }
    let mut rng = Rng::new(seed ^ 0x6170_7073);
    let prefixes: Vec<Segment> = (0..shares.len())
        .map(|i| Segment {
            seed: splitmix64(app_key(seed, i) ^ 0x7072_6566_6978),
            len: uniform_u32(&mut rng, cfg.app_prefix_tokens),
        })
        .collect();
    let mut at_s = 0.0;
    let mut requests = Vec::with_capacity(cfg.requests as usize);
    for n in 0..u64::from(cfg.requests) {
        if n > 0 && cfg.rate_per_s > 0.0 {
            at_s += rng.exponential(1.0 / cfg.rate_per_s);
        }
        if cfg.duration_s.is_some_and(|d| at_s > d) {
            break;
        }
        let mut u = rng.uniform() * total;
        let mut app = shares.len() - 1;
        for (i, s) in shares.iter().enumerate() {
            if u < *s {
                app = i;
                break;
            }
            u -= s;
        }
        let own = splitmix64(seed ^ splitmix64(0x7261_6721 ^ n));
        let mut segments = vec![prefixes[app]];
        for c in 0..uniform_u32(&mut rng, cfg.chunks) {
            segments.push(Segment {
                seed: splitmix64(own ^ u64::from(c)),
                len: cfg.chunk_tokens,
            });
        }
        segments.push(Segment {
            seed: splitmix64(own ^ 0x7175_6573_7469_6f6e),
            len: tokens(&cfg.question_tokens, &mut rng),
        });
        requests.push(TraceRequest {
            arrival_us: micros(at_s),
            session: Some(app_key(seed, app)),
            prompt: Prompt { segments },
            output_tokens: tokens(&cfg.output_tokens, &mut rng),
        });
    }
    let cap = requests.len();
    finish("few-apps", requests, cap, cfg.duration_s)
}

// ---------------------------------------------------------------------------------
// bursty-code: code completion under on/off arrivals.
// ---------------------------------------------------------------------------------

/// What [`bursty_code`] produces. The defaults give an interarrival coefficient of
/// variation of ~10 (see [`BurstyCodeConfig::interarrival_cv`]) at a mean of 0.6
/// requests/s: bursts of ~60 requests in ~10 s, then ~90 s of silence.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstyCodeConfig {
    /// Requests in the trace. Default 5000.
    pub requests: u32,
    /// If set, requests after this time (seconds) are dropped. Default `None`.
    pub duration_s: Option<f64>,
    /// Requests per second while on (Poisson). Default 6.0.
    pub on_rate_per_s: f64,
    /// Mean length of an on period (seconds, exponential). Default 10.
    pub mean_on_s: f64,
    /// Mean length of an off period, with no arrivals (seconds, exponential). Default 90.
    pub mean_off_s: f64,
    /// Mean editing sessions active in one on period, geometric; each request of the
    /// period comes from one of them, uniformly. Default 3.
    pub mean_sessions_per_burst: f64,
    /// Chance that a burst's session is an earlier one resumed (one of the last 32)
    /// rather than a new one. Default 0.5.
    pub resume_probability: f64,
    /// A new session's file context. Default median 1800, σ 0.25, 1000..4000.
    pub context_tokens: LogNormal,
    /// Each request grows its session's context by a uniform 0..=this many tokens (the
    /// code typed since the last one). Default 16.
    pub context_growth_tokens: u32,
    /// A session's context stops growing here. Default 4000.
    pub max_context_tokens: u32,
    /// The request's own tail after the shared context (the lines around the cursor).
    /// Default median 80, σ 0.6, 10..400.
    pub tail_tokens: LogNormal,
    /// The completion. Default median 28, σ 0.4, 10..60 (mean ~30).
    pub output_tokens: LogNormal,
    /// Give each request a prompt of its own, of the same length: the trace as a
    /// lengths-only log records it (Azure's code trace has timestamps and token counts,
    /// no content), so no prefix is shared and routing is balancing alone. The
    /// arrivals and lengths are the same as with shared contexts. Default false.
    pub lengths_only: bool,
    /// Key each request by its editing session ([`code_session_key`]), as a trace that
    /// chains each session's requests (Bailian's `parent_chat_id`) gives them; the
    /// requests are otherwise the same. Default false.
    pub keyed: bool,
}

/// The key of editing session `index` of a bursty-code trace generated with `seed`.
pub fn code_session_key(seed: u64, index: usize) -> u64 {
    splitmix64(seed ^ splitmix64(0x0065_646b_6579 ^ index as u64))
}

impl Default for BurstyCodeConfig {
    fn default() -> Self {
        BurstyCodeConfig {
            requests: 5000,
            duration_s: None,
            on_rate_per_s: 6.0,
            mean_on_s: 10.0,
            mean_off_s: 90.0,
            mean_sessions_per_burst: 3.0,
            resume_probability: 0.5,
            context_tokens: LogNormal::new(1800.0, 0.25, 1000.0, 4000.0),
            context_growth_tokens: 16,
            max_context_tokens: 4000,
            tail_tokens: LogNormal::new(80.0, 0.6, 10.0, 400.0),
            output_tokens: LogNormal::new(28.0, 0.4, 10.0, 60.0),
            lengths_only: false,
            keyed: false,
        }
    }
}

impl BurstyCodeConfig {
    /// The interarrival coefficient of variation of the on/off process (an interrupted
    /// Poisson process): with on rate λ, on→off rate α = 1/mean_on and off→on rate
    /// β = 1/mean_off, CV² = 1 + 2λα/(α+β)².
    pub fn interarrival_cv(&self) -> f64 {
        let (a, b) = (1.0 / self.mean_on_s, 1.0 / self.mean_off_s);
        (1.0 + 2.0 * self.on_rate_per_s * a / ((a + b) * (a + b))).sqrt()
    }
}

/// Code-completion traffic with no workload keys: each request is its editing
/// session's file context (one segment that grows slowly from request to request, so
/// consecutive requests of a session share all but the last few dozen tokens of it),
/// then a unique tail. Arrivals are an on/off process; an on period's requests come
/// from a few sessions, some resumed from earlier bursts. Deterministic in
/// `(cfg, seed)`. A non-positive on rate or mean on time gives an empty trace.
pub fn bursty_code(cfg: &BurstyCodeConfig, seed: u64) -> Trace {
    let mut requests = Vec::with_capacity(cfg.requests as usize);
    if !(cfg.on_rate_per_s > 0.0 && cfg.mean_on_s > 0.0) {
        return finish("bursty-code", requests, 0, None);
    }
    let mut rng = Rng::new(seed ^ 0x636f_6465);
    // Sessions as (context seed, context length).
    let mut pool: Vec<(u64, u32)> = Vec::new();
    let mut t = 0.0;
    let cap = cfg.requests as usize;
    'periods: while requests.len() < cap {
        if cfg.duration_s.is_some_and(|d| t > d) {
            break;
        }
        let on_end = t + rng.exponential(cfg.mean_on_s);
        let mut active = Vec::new();
        for _ in 0..rng.geometric(cfg.mean_sessions_per_burst) {
            let recent = pool.len().saturating_sub(32);
            if pool.len() > recent && rng.uniform() < cfg.resume_probability {
                active.push(recent + rng.below((pool.len() - recent) as u64) as usize);
            } else {
                let s = splitmix64(seed ^ splitmix64(0x6564_6974 ^ pool.len() as u64));
                let len = tokens(&cfg.context_tokens, &mut rng).min(cfg.max_context_tokens.max(1));
                pool.push((s, len));
                active.push(pool.len() - 1);
            }
        }
        active.dedup();
        loop {
            t += rng.exponential(1.0 / cfg.on_rate_per_s);
            if t > on_end {
                break;
            }
            if requests.len() >= cap || cfg.duration_s.is_some_and(|d| t > d) {
                break 'periods;
            }
            let s = active[rng.below(active.len() as u64) as usize];
            let grow = uniform_u32(&mut rng, (0, cfg.context_growth_tokens));
            let (ctx_seed, len) = &mut pool[s];
            *len = len
                .saturating_add(grow)
                .min(cfg.max_context_tokens.max(*len));
            let n = requests.len() as u64;
            let tail = Segment {
                seed: splitmix64(seed ^ splitmix64(0x7461_696c ^ n)),
                len: tokens(&cfg.tail_tokens, &mut rng),
            };
            let context = Segment {
                seed: *ctx_seed,
                len: *len,
            };
            let segments = if cfg.lengths_only {
                vec![Segment {
                    seed: splitmix64(tail.seed ^ 0x6c65_6e73),
                    len: context.len + tail.len,
                }]
            } else {
                vec![context, tail]
            };
            requests.push(TraceRequest {
                arrival_us: micros(t),
                session: cfg.keyed.then(|| code_session_key(seed, s)),
                prompt: Prompt { segments },
                output_tokens: tokens(&cfg.output_tokens, &mut rng),
            });
        }
        t = on_end + rng.exponential(cfg.mean_off_s.max(0.0));
    }
    let name = match (cfg.lengths_only, cfg.keyed) {
        (true, _) => "bursty-lengths",
        (false, true) => "bursty-sessions",
        (false, false) => "bursty-code",
    };
    finish(name, requests, cap, cfg.duration_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn sorted(t: &Trace) -> bool {
        t.requests
            .windows(2)
            .all(|w| w[0].arrival_us <= w[1].arrival_us)
    }

    fn mean(xs: impl Iterator<Item = f64>) -> f64 {
        let (mut s, mut n) = (0.0, 0.0);
        for x in xs {
            s += x;
            n += 1.0;
        }
        s / n
    }

    fn interarrival_cv(t: &Trace) -> f64 {
        let gaps: Vec<f64> = t
            .requests
            .windows(2)
            .map(|w| (w[1].arrival_us - w[0].arrival_us) as f64)
            .collect();
        let m = mean(gaps.iter().copied());
        let var = mean(gaps.iter().map(|g| (g - m) * (g - m)));
        var.sqrt() / m
    }

    #[test]
    fn every_generator_is_deterministic_per_seed_sorted_and_sized() {
        let chat = ChatConfig::default();
        let apps = FewAppsConfig::default();
        let code = BurstyCodeConfig::default();
        let gens: [(&str, &dyn Fn(u64) -> Trace); 4] = [
            ("shared-system", &|s| shared_system(&chat, s)),
            ("sessions", &|s| sessions(&chat, s)),
            ("few-apps", &|s| few_apps(&apps, s)),
            ("bursty-code", &|s| bursty_code(&code, s)),
        ];
        for (name, g) in gens {
            let a = g(7);
            assert_eq!(a.name, name);
            assert_eq!(a.requests.len(), 5000, "{name}");
            assert_eq!(a.requests, g(7).requests, "{name}");
            assert_ne!(a.requests, g(8).requests, "{name}");
            assert!(sorted(&a), "{name}");
            assert!(a
                .requests
                .iter()
                .all(|r| !r.prompt.is_empty() && r.output_tokens > 0));
            eprintln!(
                "{name}: {} requests over {:.0} s, mean prompt {:.0}, mean output {:.1}, interarrival CV {:.2}",
                a.requests.len(),
                a.span_us() as f64 / 1e6,
                mean(a.requests.iter().map(|r| f64::from(r.prompt.len()))),
                mean(a.requests.iter().map(|r| f64::from(r.output_tokens))),
                interarrival_cv(&a),
            );
        }
    }

    /// A shared-system trace's conversations: requests grouped by their second segment
    /// (the first user message, unique to a conversation).
    fn conversations(t: &Trace) -> HashMap<Segment, Vec<&TraceRequest>> {
        let mut m: HashMap<Segment, Vec<&TraceRequest>> = HashMap::new();
        for r in &t.requests {
            m.entry(r.prompt.segments[1]).or_default().push(r);
        }
        m
    }

    #[test]
    fn shared_system_shares_one_system_prompt_and_resends_the_history() {
        let cfg = ChatConfig::default();
        let t = shared_system(&cfg, 3);
        let system = t.requests[0].prompt.segments[0];
        assert!((1000..=3000).contains(&system.len), "{}", system.len);
        assert!(t.requests.iter().all(|r| r.session.is_none()));
        assert!(t.requests.iter().all(|r| r.prompt.segments[0] == system));
        let convs = conversations(&t);
        let turns = t.requests.len() as f64 / convs.len() as f64;
        assert!(
            (3.0..5.0).contains(&turns),
            "{turns} turns per conversation"
        );
        let mut later = 0;
        for turns in convs.values() {
            for w in turns.windows(2) {
                let (prev, cur) = (&w[0].prompt.segments, &w[1].prompt.segments);
                assert_eq!(cur.len(), prev.len() + 2, "reply + new message");
                assert_eq!(
                    cur[..prev.len()],
                    prev[..],
                    "a turn extends the previous one"
                );
                assert_eq!(
                    cur[prev.len()].len,
                    w[0].output_tokens,
                    "the reply is resent"
                );
                let gap_s = (w[1].arrival_us - w[0].arrival_us) as f64 / 1e6;
                assert!(gap_s >= f64::from(w[0].output_tokens) * cfg.decode_s_per_token - 1e-6);
                later += 1;
            }
            for r in turns {
                let user = r.prompt.segments.last().unwrap().len;
                assert!((50..=500).contains(&user), "{user}");
                assert!((100..=600).contains(&r.output_tokens));
            }
        }
        assert!(later > 2000, "{later} later turns");
        // The tokens agree: a later turn's prompt starts with the earlier one's.
        let conv = convs.values().find(|v| v.len() >= 3).unwrap();
        let (a, c) = (conv[0].prompt.tokens(), conv[2].prompt.tokens());
        assert_eq!(c[..a.len()], a[..]);
        // Different conversations share exactly the system prompt.
        let mut firsts = convs.values().map(|v| v[0].prompt.tokens());
        let (x, y) = (firsts.next().unwrap(), firsts.next().unwrap());
        let n = system.len as usize;
        assert_eq!(x[..n], y[..n]);
        assert_ne!(x[n..n + 50], y[n..n + 50]);
    }

    #[test]
    fn the_window_is_the_first_arrivals_of_an_unbounded_run() {
        let small = ChatConfig {
            requests: 400,
            ..ChatConfig::default()
        };
        let large = ChatConfig {
            requests: 2000,
            ..ChatConfig::default()
        };
        let (s, l) = (shared_system(&small, 5), shared_system(&large, 5));
        assert_eq!(s.requests.len(), 400);
        assert_eq!(s.requests[..], l.requests[..400]);
        let d = shared_system(
            &ChatConfig {
                duration_s: Some(60.0),
                ..large
            },
            5,
        );
        assert!(!d.requests.is_empty() && d.requests.len() < 2000);
        assert!(d.requests.iter().all(|r| r.arrival_us <= 60_000_000));
        let at_once = shared_system(
            &ChatConfig {
                requests: 50,
                conversation_rate_per_s: 0.0,
                ..ChatConfig::default()
            },
            5,
        );
        assert_eq!(at_once.requests.len(), 50);
        assert_eq!(at_once.requests[0].arrival_us, 0);
        assert!(shared_system(
            &ChatConfig {
                requests: 0,
                ..ChatConfig::default()
            },
            5
        )
        .requests
        .is_empty());
    }

    #[test]
    fn sessions_is_shared_system_with_conversation_keys() {
        let cfg = ChatConfig {
            requests: 2000,
            ..ChatConfig::default()
        };
        let (plain, keyed) = (shared_system(&cfg, 9), sessions(&cfg, 9));
        assert_eq!(plain.requests.len(), keyed.requests.len());
        let mut key_of: HashMap<Segment, u64> = HashMap::new();
        for (p, k) in plain.requests.iter().zip(&keyed.requests) {
            assert_eq!(
                (p.arrival_us, &p.prompt, p.output_tokens),
                (k.arrival_us, &k.prompt, k.output_tokens)
            );
            let key = k.session.expect("every request keyed");
            // One key per conversation, one conversation per key.
            assert_eq!(*key_of.entry(k.prompt.segments[1]).or_insert(key), key);
        }
        let keys: HashSet<u64> = key_of.values().copied().collect();
        assert_eq!(keys.len(), key_of.len());
        assert!(keys.contains(&conversation_key(9, 0)));
    }

    #[test]
    fn few_apps_has_three_keys_with_their_shares_and_prefixes() {
        let cfg = FewAppsConfig::default();
        let t = few_apps(&cfg, 4);
        let n = t.requests.len() as f64;
        let mut by_key: HashMap<u64, Vec<&TraceRequest>> = HashMap::new();
        for r in &t.requests {
            by_key.entry(r.session.expect("keyed")).or_default().push(r);
        }
        assert_eq!(by_key.len(), 3);
        let mut prefixes = HashSet::new();
        let mut chunks = HashSet::new();
        for (i, share) in cfg.app_shares.iter().enumerate() {
            let reqs = &by_key[&app_key(4, i)];
            let got = reqs.len() as f64 / n;
            assert!(
                (got - share).abs() < 0.03,
                "app {i}: share {got}, want {share}"
            );
            let prefix = reqs[0].prompt.segments[0];
            assert!((2000..=6000).contains(&prefix.len), "{}", prefix.len);
            prefixes.insert(prefix);
            for r in reqs {
                let s = &r.prompt.segments;
                assert_eq!(s[0], prefix, "an app's requests share its prefix");
                let retrieved: u32 = s[1..s.len() - 1].iter().map(|c| c.len).sum();
                assert!((1000..=4000).contains(&retrieved), "{retrieved}");
                for c in &s[1..] {
                    assert!(chunks.insert(*c), "chunks and questions are unique");
                }
                assert!((50..=300).contains(&r.output_tokens));
            }
        }
        assert_eq!(prefixes.len(), 3);
        // Poisson at 4/s: mean gap 0.25 s, CV ~1.
        let span = t.span_us() as f64 / 1e6;
        assert!((span / (n - 1.0) - 0.25).abs() < 0.02, "{span}");
        let cv = interarrival_cv(&t);
        assert!((0.9..1.1).contains(&cv), "{cv}");
        let lopsided = few_apps(
            &FewAppsConfig {
                app_shares: vec![1.0, 0.0],
                requests: 100,
                ..cfg.clone()
            },
            4,
        );
        assert!(lopsided
            .requests
            .iter()
            .all(|r| r.session == Some(app_key(4, 0))));
        let none = few_apps(
            &FewAppsConfig {
                app_shares: vec![],
                ..cfg
            },
            4,
        );
        assert!(none.requests.is_empty());
    }

    #[test]
    fn bursty_code_is_bursty_short_and_shares_session_prefixes() {
        let cfg = BurstyCodeConfig::default();
        let want = cfg.interarrival_cv();
        assert!((8.0..13.0).contains(&want), "{want}");
        let t = bursty_code(&cfg, 6);
        assert!(t.requests.iter().all(|r| r.session.is_none()));
        let cv = interarrival_cv(&t);
        assert!(cv > 4.0, "interarrival CV {cv}");
        let out = mean(t.requests.iter().map(|r| f64::from(r.output_tokens)));
        assert!((out - 30.0).abs() < 3.0, "mean output {out}");
        assert!(t
            .requests
            .iter()
            .all(|r| (10..=60).contains(&r.output_tokens)));
        let prompt = mean(t.requests.iter().map(|r| f64::from(r.prompt.len())));
        assert!((1500.0..3500.0).contains(&prompt), "mean prompt {prompt}");
        // A session's consecutive requests: the context segment grows by at most the
        // growth bound and never shrinks, so the earlier context is a prefix of the later.
        let mut last: HashMap<u64, u32> = HashMap::new();
        let (mut repeats, mut shared, mut total) = (0, 0u64, 0u64);
        for r in &t.requests {
            let ctx = r.prompt.segments[0];
            if let Some(prev) = last.insert(ctx.seed, ctx.len) {
                assert!(ctx.len >= prev && ctx.len <= prev + cfg.context_growth_tokens);
                repeats += 1;
                shared += u64::from(prev);
            }
            total += u64::from(r.prompt.len());
        }
        assert!(repeats > 4000, "{repeats} requests continue a session");
        let reuse = shared as f64 / total as f64;
        assert!(reuse > 0.8, "prefix reuse {reuse}");
        let (a, b) = (
            &t.requests[0],
            t.requests
                .iter()
                .skip(1)
                .find(|r| r.prompt.segments[0].seed == t.requests[0].prompt.segments[0].seed)
                .unwrap(),
        );
        let (ta, tb) = (a.prompt.tokens(), b.prompt.tokens());
        let ctx = a.prompt.segments[0].len as usize;
        assert_eq!(ta[..ctx], tb[..ctx]);
        assert!(bursty_code(
            &BurstyCodeConfig {
                on_rate_per_s: 0.0,
                ..cfg
            },
            6
        )
        .requests
        .is_empty());
    }

    #[test]
    fn bursty_sessions_is_bursty_code_keyed_by_editing_session() {
        let plain = bursty_code(&BurstyCodeConfig::default(), 3);
        let cfg = BurstyCodeConfig {
            keyed: true,
            ..Default::default()
        };
        let keyed = bursty_code(&cfg, 3);
        assert_eq!(keyed.name, "bursty-sessions");
        assert_eq!(keyed.requests.len(), plain.requests.len());
        let mut context_of_key = std::collections::HashMap::new();
        for (k, p) in keyed.requests.iter().zip(&plain.requests) {
            assert_eq!(
                (k.arrival_us, k.output_tokens, &k.prompt),
                (p.arrival_us, p.output_tokens, &p.prompt)
            );
            // One key per session: every request of a key grows the same file context.
            let key = k.session.expect("every request keyed");
            let context = k.prompt.segments[0].seed;
            assert_eq!(*context_of_key.entry(key).or_insert(context), context);
        }
        let contexts: std::collections::HashSet<u64> = context_of_key.values().copied().collect();
        assert_eq!(contexts.len(), context_of_key.len());
        assert!(context_of_key.len() > 10);
    }

    #[test]
    fn bursty_lengths_is_bursty_code_with_nothing_shared() {
        let shared = bursty_code(&BurstyCodeConfig::default(), 3);
        let cfg = BurstyCodeConfig {
            lengths_only: true,
            ..Default::default()
        };
        let alone = bursty_code(&cfg, 3);
        assert_eq!(alone.name, "bursty-lengths");
        assert_eq!(alone.requests.len(), shared.requests.len());
        for (a, s) in alone.requests.iter().zip(&shared.requests) {
            assert_eq!(
                (a.arrival_us, a.output_tokens, a.prompt.len(), a.session),
                (s.arrival_us, s.output_tokens, s.prompt.len(), s.session)
            );
            assert_eq!(a.prompt.segments.len(), 1);
        }
        // No two prompts share a segment, so no block of one is a block of another.
        let seeds: std::collections::HashSet<u64> = alone
            .requests
            .iter()
            .map(|r| r.prompt.segments[0].seed)
            .collect();
        assert_eq!(seeds.len(), alone.requests.len());
        let (a, b) = (
            alone.requests[0].prompt.tokens(),
            alone.requests[1].prompt.tokens(),
        );
        assert_ne!(a[..16], b[..16]);
    }
}
