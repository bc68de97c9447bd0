//! ServeGen (alibaba/ServeGen, `data/language/<model>`): per-client workload
//! *descriptions* of Alibaba Cloud Model Studio, not request logs. Reading one means
//! sampling requests from it, the way ServeGen's own `generate_workload` does.
//!
//! # Format
//!
//! A directory (here usually packed as a `.tgz`) of files per client `N`:
//!
//! - `chunk-N-trace.csv`, no header, one row per window of the whole span (14 days of
//!   600-s windows, 2016 rows): `window_start_s,rate_rps,cv,arrival_distribution,shape,scale`.
//!   `arrival_distribution` is `Gamma` or `Weibull` (the fitted law of inter-arrival
//!   times, with `shape`/`scale` as scipy's `gamma(a=shape, scale)` and
//!   `weibull_min(c=shape, scale)`), or empty with rate 0 for an idle window. `cv` is
//!   the inter-arrival coefficient of variation, implied by the shape (Gamma:
//!   `1/sqrt(shape)`), so it is informational.
//! - `chunk-N-dataset.json`: `{ "<window_start_s>": { "input_tokens": "<pdf>",
//!   "output_tokens": "<pdf>" } }` with one entry per *6 hours* (21600 s), where
//!   `<pdf>` is a **string holding a Python dict literal** `{130: 0.00074, 132: ...}`
//!   (ServeGen `eval`s it) mapping a token count to its probability. Many windows hold
//!   `"{}"`: no data for that period. Some clients (in `m-small`: 1, 5, 8, 11, 38,
//!   together ~57% of all requests) have a trace but no dataset file; ServeGen's loader
//!   only loads clients that have a dataset file, and so does this reader.
//!
//! `m-small` is dominated by a few clients sending tiny requests (clients 17, 14, 27
//! and 12 make ~70% of the sampled traffic, with mean prompts of 19–52 tokens and
//! outputs of 1–7): rate-weighted, a request averages ~120 input and ~15 output
//! tokens, while a long tail of smaller clients sends prompts of 1k–4k tokens.
//!
//! # Sampling (following ServeGen's `construct.py`)
//!
//! - A trace window uses the latest non-empty dataset window starting at or before it.
//!   ServeGen fails when there is none; here the earliest non-empty one is used instead.
//! - In a window of length `T` and rate `R`, ServeGen draws `ceil(R·T)` inter-arrival
//!   times from the window's law, rescales them so they sum to `T` (this keeps the
//!   burstiness, the CV, and fixes the count) and keeps the arrivals that fall inside
//!   the window, which drops the last one (it lands on the window's end). That yields
//!   `ceil(R·T) − 1` requests, so a window with `R·T < 1` (common once time is
//!   compressed) never gets any. Here the count is `n = floor(x) + Bernoulli(frac(x))`
//!   with `x` the expected count, unbiased, and the `n` arrivals are the first `n`
//!   partial sums of `n + 1` rescaled draws: the same mechanism without the bias.
//! - Token lengths are drawn from the window's pdfs (inverse CDF, as ServeGen's
//!   `searchsorted`), floored at 1 token.
//!
//! # Time compression and rate
//!
//! Times are divided by `time_compression`: a 600-s window lasts `600/F` s. Each window
//! keeps its *rate* (times `rate_scale`), so the fleet sees the trace's real load level
//! while the diurnal shape plays out `F` times faster, and the trace holds `1/F` as many
//! requests. (To keep the request count instead, set `rate_scale = F`.) The whole of
//! `m-small` averages ~507 req/s (peak ~800) over its clients with datasets: about
//! 6·10⁸ requests over 14 days at `rate_scale = 1`, so pick the span, compression and
//! scale to land at most around a million requests; `max_requests` guards the rest.
//!
//! # Workload keys and prompts
//!
//! The trace knows clients (API customers), not conversations. By default every
//! request of client `c` carries the key `hash(c)`: the workload key is the tenant, and
//! a huge client is one hot key that the router has to spread (widen its subset).
//! [`SessionKeys::Split`] instead gives a client `ceil(peak_rate / rps_per_key)` keys
//! `hash(c, k)` and each request one of them at random, as when routing by a session
//! header. Either way, the prompt is a per-client system prompt (the same segment for
//! every request of the client, `min(system_prompt_tokens, input/2)` tokens of it)
//! followed by a segment unique to the request.

use super::error::TraceError;
use super::request::{splitmix64, Prompt, Segment, Trace, TraceRequest};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// What [`read_servegen`] generates and from which part of the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeGenOptions {
    /// Where to start in the trace, in trace seconds (window `k` starts at `600·k`).
    /// Default 0.
    pub start_s: u64,
    /// How much trace time to read from `start_s`, in trace seconds; `None` (the
    /// default) reads to the end. Windows cut by the range are truncated.
    pub duration_s: Option<u64>,
    /// Trace time is divided by this (≥ 1 shortens it); rates are kept. Default 1.
    pub time_compression: f64,
    /// Every window's rate is multiplied by this. Default 1.
    pub rate_scale: f64,
    /// Client ids to include; `None` (the default) includes every client that has a
    /// dataset file.
    pub clients: Option<Vec<u32>>,
    /// How requests map to workload keys. Default [`SessionKeys::PerClient`].
    pub keys: SessionKeys,
    /// Length of each client's shared system prompt, in tokens; a request shares at
    /// most half of its prompt. Default 512.
    pub system_prompt_tokens: u32,
    /// Fail instead of generating more than this many requests (expected count).
    /// Default 2,000,000.
    pub max_requests: usize,
    /// Seed of all sampling. Default 0.
    pub seed: u64,
}

impl Default for ServeGenOptions {
    fn default() -> Self {
        ServeGenOptions {
            start_s: 0,
            duration_s: None,
            time_compression: 1.0,
            rate_scale: 1.0,
            clients: None,
            keys: SessionKeys::PerClient,
            system_prompt_tokens: 512,
            max_requests: 2_000_000,
            seed: 0,
        }
    }
}

impl ServeGenOptions {
    /// The defaults, restricted to `count` windows from window `first` (600 s each).
    pub fn windows(first: u64, count: u64) -> Self {
        ServeGenOptions {
            start_s: first * WINDOW_S,
            duration_s: Some(count * WINDOW_S),
            ..Self::default()
        }
    }
}

/// How a request's workload key (`TraceRequest::session`) is derived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SessionKeys {
    /// One key per client: `hash(client)`.
    PerClient,
    /// Client `c` gets `max(1, ceil(peak_rate_c · rate_scale / rps_per_key))` keys
    /// (peak over the selected range) and each request one of them, uniformly.
    Split { rps_per_key: f64 },
}

/// The nominal window length of ServeGen's traces, in seconds.
pub const WINDOW_S: u64 = 600;

/// Reads a ServeGen model directory, packed (`.tgz`, `.tar.gz`, `.tar`) or not, and
/// samples a trace from it.
pub fn read_servegen(path: &Path, opts: &ServeGenOptions) -> Result<Trace, TraceError> {
    load_servegen(path)?.generate(opts)
}

/// Reads a ServeGen model directory, packed (`.tgz`, `.tar.gz`, `.tar`) or not, to
/// sample several traces from it without reading it again.
pub fn load_servegen(path: &Path) -> Result<ServeGenData, TraceError> {
    let shown = path.display().to_string();
    let io = |source| TraceError::Io {
        path: shown.clone(),
        source,
    };
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io)? {
            let p = entry.map_err(io)?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if parse_member_name(name).is_some() {
                let bytes = std::fs::read(&p).map_err(io)?;
                files.push((name.to_owned(), bytes));
            }
        }
        return ServeGenData::from_files(files, &shown);
    }
    let file = std::fs::File::open(path).map_err(io)?;
    read_archive(std::io::BufReader::new(file), &shown)
}

/// Reads a ServeGen model directory packed as a tar stream, gzipped or not.
pub fn read_archive(mut reader: impl Read, origin: &str) -> Result<ServeGenData, TraceError> {
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut reader, &mut magic).map_err(|source| TraceError::Io {
        path: origin.to_owned(),
        source,
    })?;
    let stream = std::io::Cursor::new(magic[..got].to_vec()).chain(reader);
    if got == 2 && magic == [0x1f, 0x8b] {
        read_tar(flate2::read::GzDecoder::new(stream), origin)
    } else {
        read_tar(stream, origin)
    }
}

fn read_tar(reader: impl Read, origin: &str) -> Result<ServeGenData, TraceError> {
    let io = |source| TraceError::Io {
        path: origin.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    let mut files = Vec::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(io)?.into_owned();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if parse_member_name(name).is_none() {
            continue;
        }
        let name = name.to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(io)?;
        files.push((name, bytes));
    }
    ServeGenData::from_files(files, origin)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Trace,
    Dataset,
}

/// `chunk-N-trace.csv` or `chunk-N-dataset.json`.
fn parse_member_name(name: &str) -> Option<(u32, Member)> {
    let rest = name.strip_prefix("chunk-")?;
    let (id, kind) = rest.split_once('-')?;
    let kind = match kind {
        "trace.csv" => Member::Trace,
        "dataset.json" => Member::Dataset,
        _ => return None,
    };
    Some((id.parse().ok()?, kind))
}

/// The arrival law of one window's inter-arrival times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArrivalLaw {
    Gamma { shape: f64, scale: f64 },
    Weibull { shape: f64, scale: f64 },
}

/// One row of `chunk-N-trace.csv`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateWindow {
    pub start_s: u64,
    pub len_s: u64,
    pub rate_rps: f64,
    pub cv: f64,
    /// `None` for an idle window.
    pub law: Option<ArrivalLaw>,
}

/// A discrete token-length distribution: sorted values and their cumulative weights.
#[derive(Debug, Clone, PartialEq)]
struct LengthPdf {
    values: Vec<u32>,
    cum: Vec<f64>,
}

impl LengthPdf {
    fn sample(&self, u: f64) -> u32 {
        let total = *self.cum.last().expect("non-empty pdf");
        let target = u * total;
        let i = self.cum.partition_point(|&c| c < target);
        self.values[i.min(self.values.len() - 1)]
    }

    fn mean(&self) -> f64 {
        let total = self.cum.last().copied().unwrap_or(0.0);
        let mut prev = 0.0;
        let mut sum = 0.0;
        for (&v, &c) in self.values.iter().zip(&self.cum) {
            sum += f64::from(v) * (c - prev);
            prev = c;
        }
        sum / total
    }
}

#[derive(Debug, Clone, PartialEq)]
struct LengthWindow {
    start_s: u64,
    input: LengthPdf,
    output: LengthPdf,
}

/// One client of the trace: its rate windows and its length distributions.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeGenClient {
    pub id: u32,
    pub windows: Vec<RateWindow>,
    lengths: Vec<LengthWindow>,
}

impl ServeGenClient {
    /// Mean input and output lengths (tokens) of the length window in force at `t_s`.
    pub fn mean_lengths_at(&self, t_s: u64) -> (f64, f64) {
        let w = &self.lengths[length_window_at(&self.lengths, t_s)];
        (w.input.mean(), w.output.mean())
    }
}

/// A parsed ServeGen model directory: the clients that have both files.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeGenData {
    origin: String,
    pub clients: Vec<ServeGenClient>,
    /// Clients with a trace but no (or only empty) length data, which cannot be
    /// sampled and are left out (as ServeGen's loader does).
    pub clients_without_dataset: Vec<u32>,
}

impl ServeGenData {
    fn from_files(files: Vec<(String, Vec<u8>)>, origin: &str) -> Result<Self, TraceError> {
        let mut traces = BTreeMap::new();
        let mut datasets = BTreeMap::new();
        for (name, bytes) in files {
            let Some((id, kind)) = parse_member_name(&name) else {
                continue;
            };
            let shown = format!("{origin}:{name}");
            match kind {
                Member::Trace => {
                    let text = std::str::from_utf8(&bytes).map_err(|e| TraceError::Parse {
                        path: shown.clone(),
                        line: 0,
                        message: e.to_string(),
                    })?;
                    traces.insert(id, parse_trace_csv(text, &shown)?);
                }
                Member::Dataset => {
                    datasets.insert(id, parse_dataset_json(&bytes, &shown)?);
                }
            }
        }
        let mut clients = Vec::new();
        let mut clients_without_dataset = Vec::new();
        for (id, windows) in traces {
            match datasets.remove(&id) {
                Some(lengths) if !lengths.is_empty() => clients.push(ServeGenClient {
                    id,
                    windows,
                    lengths,
                }),
                _ => clients_without_dataset.push(id),
            }
        }
        if clients.is_empty() {
            return Err(TraceError::Empty(origin.to_owned()));
        }
        Ok(ServeGenData {
            origin: origin.to_owned(),
            clients,
            clients_without_dataset,
        })
    }

    /// The summed rate of the selected clients per window start (trace seconds), times
    /// `rate_scale`, over the whole trace.
    pub fn aggregate_rate(&self, opts: &ServeGenOptions) -> Vec<(u64, f64)> {
        let mut by_start: BTreeMap<u64, f64> = BTreeMap::new();
        for c in self.selected(opts) {
            for w in &c.windows {
                *by_start.entry(w.start_s).or_default() += w.rate_rps * opts.rate_scale;
            }
        }
        by_start.into_iter().collect()
    }

    /// The number of requests [`ServeGenData::generate`] produces on average.
    pub fn expected_requests(&self, opts: &ServeGenOptions) -> f64 {
        let (start, end) = range(opts);
        let f = opts.time_compression;
        self.selected(opts)
            .flat_map(|c| &c.windows)
            .filter_map(|w| clip(w, start, end).map(|(a, b)| (w, a, b)))
            .filter(|(w, _, _)| w.law.is_some())
            .map(|(w, a, b)| w.rate_rps * opts.rate_scale * (b - a) as f64 / f)
            .sum()
    }

    fn selected<'a>(
        &'a self,
        opts: &'a ServeGenOptions,
    ) -> impl Iterator<Item = &'a ServeGenClient> + 'a {
        self.clients
            .iter()
            .filter(move |c| opts.clients.as_ref().is_none_or(|ids| ids.contains(&c.id)))
    }

    /// Samples a trace: see the module documentation.
    pub fn generate(&self, opts: &ServeGenOptions) -> Result<Trace, TraceError> {
        let fail = |message: String| TraceError::Parse {
            path: self.origin.clone(),
            line: 0,
            message,
        };
        if !(opts.time_compression.is_finite() && opts.time_compression > 0.0) {
            return Err(fail(format!(
                "time_compression must be positive, not {}",
                opts.time_compression
            )));
        }
        if !(opts.rate_scale.is_finite() && opts.rate_scale >= 0.0) {
            return Err(fail(format!(
                "rate_scale must be non-negative, not {}",
                opts.rate_scale
            )));
        }
        if let SessionKeys::Split { rps_per_key } = opts.keys {
            if !(rps_per_key.is_finite() && rps_per_key > 0.0) {
                return Err(fail(format!(
                    "rps_per_key must be positive, not {rps_per_key}"
                )));
            }
        }
        if let Some(ids) = &opts.clients {
            for id in ids {
                if !self.clients.iter().any(|c| c.id == *id) {
                    let why = if self.clients_without_dataset.contains(id) {
                        "has no length dataset"
                    } else {
                        "is not in the trace"
                    };
                    return Err(fail(format!("client {id} {why}")));
                }
            }
        }
        let expected = self.expected_requests(opts);
        if expected > opts.max_requests as f64 {
            return Err(fail(format!(
                "these options would generate ~{expected:.0} requests, more than \
                 max_requests = {}: lower rate_scale, raise time_compression or read \
                 a shorter range",
                opts.max_requests
            )));
        }
        let (start, end) = range(opts);
        let f = opts.time_compression;
        let mut requests = Vec::with_capacity((expected * 1.01) as usize + 16);
        for client in self.selected(opts) {
            let base_key = splitmix64(0x7365_7276_6567_656e ^ u64::from(client.id));
            let system_seed = splitmix64(base_key ^ 0x7379_7374_656d);
            let keys = match opts.keys {
                SessionKeys::PerClient => 1,
                SessionKeys::Split { rps_per_key } => {
                    let peak = client
                        .windows
                        .iter()
                        .filter(|w| clip(w, start, end).is_some())
                        .map(|w| w.rate_rps)
                        .fold(0.0, f64::max);
                    ((peak * opts.rate_scale / rps_per_key).ceil() as u64).max(1)
                }
            };
            let mut lw = 0;
            for w in &client.windows {
                let Some(law) = w.law else { continue };
                let Some((a, b)) = clip(w, start, end) else {
                    continue;
                };
                while lw + 1 < client.lengths.len() && client.lengths[lw + 1].start_s <= w.start_s {
                    lw += 1;
                }
                let lengths = &client.lengths[lw];
                let mut rng =
                    Rng::new(opts.seed ^ splitmix64(base_key ^ splitmix64(w.start_s ^ (a << 20))));
                let expected = w.rate_rps * opts.rate_scale * (b - a) as f64 / f;
                let n = expected.floor() as usize + usize::from(rng.uniform() < expected.fract());
                if n == 0 {
                    continue;
                }
                let from_s = (a - start) as f64 / f;
                let span_s = (b - a) as f64 / f;
                for offset in arrival_offsets(law, n, &mut rng) {
                    let input = lengths.input.sample(rng.uniform()).max(1);
                    let output = lengths.output.sample(rng.uniform()).max(1);
                    let shared = opts.system_prompt_tokens.min(input / 2);
                    let mut segments = Vec::with_capacity(2);
                    if shared > 0 {
                        segments.push(Segment {
                            seed: system_seed,
                            len: shared,
                        });
                    }
                    segments.push(Segment {
                        seed: rng.next_u64(),
                        len: input - shared,
                    });
                    let session = if keys == 1 {
                        base_key
                    } else {
                        splitmix64(base_key ^ splitmix64(rng.below(keys)))
                    };
                    requests.push(TraceRequest {
                        arrival_us: ((from_s + offset * span_s) * 1e6).round() as u64,
                        session: Some(session),
                        prompt: Prompt { segments },
                        output_tokens: output,
                    });
                }
            }
        }
        if requests.is_empty() {
            return Err(TraceError::Empty(self.origin.clone()));
        }
        let mut trace = Trace {
            name: "servegen".into(),
            requests,
        };
        trace.sort();
        Ok(trace)
    }
}

fn range(opts: &ServeGenOptions) -> (u64, u64) {
    let end = opts
        .duration_s
        .map_or(u64::MAX, |d| opts.start_s.saturating_add(d));
    (opts.start_s, end)
}

/// The part `[a, b)` of window `w` inside `[start, end)`, if any.
fn clip(w: &RateWindow, start: u64, end: u64) -> Option<(u64, u64)> {
    let a = w.start_s.max(start);
    let b = (w.start_s + w.len_s).min(end);
    (a < b).then_some((a, b))
}

/// `n` arrival offsets in `[0, 1)` of a window, sorted: the first `n` partial sums of
/// `n + 1` inter-arrival draws from `law`, rescaled to sum to 1.
fn arrival_offsets(law: ArrivalLaw, n: usize, rng: &mut Rng) -> Vec<f64> {
    let mut sums = Vec::with_capacity(n + 1);
    let mut total = 0.0;
    for _ in 0..=n {
        total += match law {
            ArrivalLaw::Gamma { shape, scale } => rng.gamma(shape, scale),
            ArrivalLaw::Weibull { shape, scale } => rng.weibull(shape, scale),
        };
        sums.push(total);
    }
    sums.pop();
    if total > 0.0 && total.is_finite() {
        for s in &mut sums {
            *s /= total;
        }
    } else {
        // Degenerate draws (all zero): spread the arrivals evenly.
        for (i, s) in sums.iter_mut().enumerate() {
            *s = (i + 1) as f64 / (n + 1) as f64;
        }
    }
    sums
}

fn length_window_at(lengths: &[LengthWindow], t_s: u64) -> usize {
    lengths
        .partition_point(|l| l.start_s <= t_s)
        .saturating_sub(1)
}

fn parse_trace_csv(text: &str, origin: &str) -> Result<Vec<RateWindow>, TraceError> {
    let err = |line: usize, message: String| TraceError::Parse {
        path: origin.to_owned(),
        line,
        message,
    };
    let mut windows: Vec<RateWindow> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if cols.len() != 6 {
            if i == 0 && cols.first().is_some_and(|c| c.parse::<f64>().is_err()) {
                continue; // a header
            }
            return Err(err(
                i + 1,
                format!("expected 6 columns (window_start_s,rate_rps,cv,arrival_distribution,shape,scale), got {}", cols.len()),
            ));
        }
        let num = |k: usize, what: &str| -> Result<f64, TraceError> {
            cols[k]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| err(i + 1, format!("bad {what} '{}'", cols[k])))
        };
        let Ok(start_s) = cols[0].parse::<u64>() else {
            if i == 0 {
                continue; // a header
            }
            return Err(err(i + 1, format!("bad window_start_s '{}'", cols[0])));
        };
        let rate_rps = num(1, "rate_rps")?;
        let cv = num(2, "cv")?;
        let (shape, scale) = (num(4, "shape")?, num(5, "scale")?);
        let law = match cols[3] {
            "" => None,
            _ if rate_rps == 0.0 => None,
            "Gamma" | "Weibull" if shape <= 0.0 => {
                return Err(err(i + 1, format!("non-positive shape {shape}")))
            }
            "Gamma" => Some(ArrivalLaw::Gamma { shape, scale }),
            "Weibull" => Some(ArrivalLaw::Weibull { shape, scale }),
            other => {
                return Err(err(
                    i + 1,
                    format!("unknown arrival distribution '{other}'"),
                ))
            }
        };
        if let Some(prev) = windows.last() {
            if start_s <= prev.start_s {
                return Err(err(i + 1, "window starts must increase".into()));
            }
        }
        windows.push(RateWindow {
            start_s,
            len_s: WINDOW_S,
            rate_rps,
            cv,
            law,
        });
    }
    // A window lasts until the next one starts; the last as long as the one before.
    for i in 1..windows.len() {
        windows[i - 1].len_s = windows[i].start_s - windows[i - 1].start_s;
    }
    if let [.., a, b] = windows.as_mut_slice() {
        b.len_s = a.len_s;
    }
    Ok(windows)
}

fn parse_dataset_json(bytes: &[u8], origin: &str) -> Result<Vec<LengthWindow>, TraceError> {
    let err = |message: String| TraceError::Parse {
        path: origin.to_owned(),
        line: 0,
        message,
    };
    let doc: BTreeMap<String, BTreeMap<String, Value>> =
        serde_json::from_slice(bytes).map_err(|e| TraceError::Parse {
            path: origin.to_owned(),
            line: e.line(),
            message: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (ts, fields) in doc {
        let start_s: u64 = ts
            .trim()
            .parse()
            .map_err(|_| err(format!("bad window start '{ts}'")))?;
        let pdf = |name: &str| -> Result<Option<LengthPdf>, TraceError> {
            match fields.get(name) {
                None => Ok(None),
                Some(v) => parse_pdf(v)
                    .map_err(|m| err(format!("window {start_s}, {name}: {m}")))
                    .map(|pairs| to_pdf(&pairs)),
            }
        };
        // An empty distribution means no data for this period: skip the window.
        if let (Some(input), Some(output)) = (pdf("input_tokens")?, pdf("output_tokens")?) {
            out.push(LengthWindow {
                start_s,
                input,
                output,
            });
        }
    }
    out.sort_by_key(|w| w.start_s);
    Ok(out)
}

/// A pdf as ServeGen stores it: a string holding a Python dict literal
/// (`{130: 0.5, 132: 0.5}`), or (accepted too) a JSON object.
fn parse_pdf(v: &Value) -> Result<Vec<(u32, f64)>, String> {
    let mut pairs = Vec::new();
    match v {
        Value::String(s) => {
            let body = s
                .trim()
                .strip_prefix('{')
                .and_then(|b| b.strip_suffix('}'))
                .ok_or_else(|| format!("expected a {{value: probability}} map, got '{s:.40}'"))?;
            for item in body.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let (k, p) = item
                    .split_once(':')
                    .ok_or_else(|| format!("expected 'value: probability', got '{item}'"))?;
                pairs.push((parse_bin(k)?, parse_prob(p)?));
            }
        }
        Value::Object(map) => {
            for (k, p) in map {
                let p = p.as_f64().ok_or_else(|| format!("bad probability {p}"))?;
                pairs.push((parse_bin(k)?, parse_prob(&p.to_string())?));
            }
        }
        other => return Err(format!("expected a map, got {other}")),
    }
    Ok(pairs)
}

fn parse_bin(k: &str) -> Result<u32, String> {
    let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
    k.parse::<u32>()
        .map_err(|_| format!("bad token count '{k}'"))
}

fn parse_prob(p: &str) -> Result<f64, String> {
    p.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && *p >= 0.0)
        .ok_or_else(|| format!("bad probability '{}'", p.trim()))
}

fn to_pdf(pairs: &[(u32, f64)]) -> Option<LengthPdf> {
    let mut pairs: Vec<(u32, f64)> = pairs.iter().copied().filter(|&(_, p)| p > 0.0).collect();
    pairs.sort_by_key(|&(v, _)| v);
    let mut values = Vec::with_capacity(pairs.len());
    let mut cum = Vec::with_capacity(pairs.len());
    let mut acc = 0.0;
    for (v, p) in pairs {
        if values.last() == Some(&v) {
            acc += p;
            *cum.last_mut().expect("pushed") = acc;
            continue;
        }
        acc += p;
        values.push(v);
        cum.push(acc);
    }
    (!values.is_empty()).then_some(LengthPdf { values, cum })
}

/// A tiny deterministic generator on top of SplitMix64, with the few laws the trace
/// generators need (and tests that write traces of their own).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(splitmix64(seed ^ 0x5eed_5eed_5eed_5eed))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.0);
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        out
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `(0, 1]`.
    fn uniform_open0(&mut self) -> f64 {
        1.0 - self.uniform()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform_open0(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Exponential with the given mean.
    /// A geometric count on 1, 2, … with the given mean (1 if the mean is at most 1).
    pub(crate) fn geometric(&mut self, mean: f64) -> u32 {
        if mean.is_nan() || mean <= 1.0 || mean.is_infinite() {
            return 1;
        }
        let q = 1.0 - 1.0 / mean;
        let u = 1.0 - self.uniform();
        (1.0 + (u.ln() / q.ln()).floor()).min(10_000.0) as u32
    }

    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.uniform_open0().ln()
    }

    /// Gamma(shape, scale) (Marsaglia–Tsang; boosted for shape < 1).
    pub(crate) fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        if shape < 1.0 {
            let boost = self.uniform_open0().powf(1.0 / shape);
            return self.gamma(shape + 1.0, scale) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform_open0();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v * scale;
            }
        }
    }

    /// Weibull(shape, scale) by inversion.
    pub(crate) fn weibull(&mut self, shape: f64, scale: f64) -> f64 {
        scale * (-self.uniform_open0().ln()).powf(1.0 / shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A ServeGen-like directory as a gzipped tar held in memory.
    fn tgz(files: &[(&str, String)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(
                &mut h,
                format!("data/language/m-tiny/{name}"),
                body.as_bytes(),
            )
            .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    /// Client 0: windows of 600 s at 2 req/s (Gamma), idle, 0.5 req/s (Weibull), then
    /// 1 req/s; input lengths 100..=102 before t = 1200 and exactly 5000 from then on.
    /// Client 1: 0.05 req/s throughout, outputs of 0 tokens (floored to 1).
    /// Client 2: a trace but no dataset.
    fn tiny() -> Vec<u8> {
        let c0_trace = "0,2.0,1.41,Gamma,0.5,1.0\n600,0,0,,0,0\n\
                        1200,0.5,0.8,Weibull,1.3,2.0\n1800,1.0,1.0,Gamma,1.0,1.0\n";
        let c0_data = r#"{"0": {"input_tokens": "{100: 0.25, 101: 0.5, 102: 0.25}", "output_tokens": "{7: 1.0}"},
                          "1200": {"input_tokens": "{5000: 1.0}", "output_tokens": "{9: 0.5, 11: 0.5}"}}"#;
        let c1_trace = (0..4)
            .map(|k| format!("{},0.05,1.0,Gamma,1.0,20.0\n", k * 600))
            .collect::<String>();
        let c1_data = r#"{"0": {"input_tokens": "{}", "output_tokens": "{}"},
                          "600": {"input_tokens": "{3000: 1.0}", "output_tokens": "{0: 1.0}"}}"#;
        tgz(&[
            ("chunk-0-trace.csv", c0_trace.into()),
            ("chunk-0-dataset.json", c0_data.into()),
            ("chunk-1-trace.csv", c1_trace),
            ("chunk-1-dataset.json", c1_data.into()),
            ("chunk-2-trace.csv", "0,9.0,1.0,Gamma,1.0,1.0\n".into()),
        ])
    }

    fn tiny_data() -> ServeGenData {
        read_archive(&tiny()[..], "tiny.tgz").unwrap()
    }

    fn count_in(t: &Trace, session: Option<u64>, from_s: f64, to_s: f64) -> usize {
        t.requests
            .iter()
            .filter(|r| r.session == session)
            .filter(|r| (from_s * 1e6..to_s * 1e6).contains(&(r.arrival_us as f64)))
            .count()
    }

    #[test]
    fn parses_the_archive() {
        let d = tiny_data();
        assert_eq!(
            d.clients.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(d.clients_without_dataset, vec![2]);
        let c0 = &d.clients[0];
        assert_eq!(c0.windows.len(), 4);
        assert_eq!(c0.windows[1].law, None);
        assert_eq!(
            c0.windows[2].law,
            Some(ArrivalLaw::Weibull {
                shape: 1.3,
                scale: 2.0
            })
        );
        assert!(c0.windows.iter().all(|w| w.len_s == 600));
        assert_eq!(c0.mean_lengths_at(0), (101.0, 7.0));
        assert_eq!(c0.mean_lengths_at(5000), (5000.0, 10.0));
        // Client 1's empty first length window is skipped; its first window borrows
        // the earliest non-empty one.
        assert_eq!(d.clients[1].lengths.len(), 1);
        assert_eq!(d.clients[1].mean_lengths_at(0), (3000.0, 0.0));
    }

    #[test]
    fn rates_lengths_and_windows_are_respected() {
        let d = tiny_data();
        let t = d.generate(&ServeGenOptions::default()).unwrap();
        assert_eq!(t.name, "servegen");
        assert!(t
            .requests
            .windows(2)
            .all(|w| w[0].arrival_us <= w[1].arrival_us));
        let keys: HashSet<u64> = t.requests.iter().filter_map(|r| r.session).collect();
        assert_eq!(keys.len(), 2);
        let by_len = |len: u32| t.requests.iter().find(|r| r.prompt.len() == len).unwrap();
        let k0 = by_len(5000).session;
        let k1 = by_len(3000).session;
        // Counts are floor or ceil of rate × window length.
        for (from, to, want) in [
            (0.0, 600.0, 1200.0),
            (600.0, 1200.0, 0.0),
            (1200.0, 1800.0, 300.0),
            (1800.0, 2400.0, 600.0),
        ] {
            let got = count_in(&t, k0, from, to) as f64;
            assert!((got - want).abs() <= 1.0, "[{from}, {to}): {got} vs {want}");
        }
        let got = count_in(&t, k1, 0.0, 2400.0) as f64;
        assert!((got - 120.0).abs() <= 4.0, "{got}");
        for r in &t.requests {
            assert!(!r.prompt.is_empty() && r.output_tokens >= 1);
            let at_s = r.arrival_us as f64 / 1e6;
            if r.session == k0 {
                if at_s < 1200.0 {
                    assert!((100..=102).contains(&r.prompt.len()));
                    assert_eq!(r.output_tokens, 7);
                } else {
                    assert_eq!(r.prompt.len(), 5000);
                    assert!([9, 11].contains(&r.output_tokens));
                }
            } else {
                assert_eq!((r.prompt.len(), r.output_tokens), (3000, 1));
            }
        }
        // A client's requests share their system prompt, capped at half the prompt.
        let first: HashSet<Segment> = t
            .requests
            .iter()
            .filter(|r| r.session == k0 && r.prompt.len() == 5000)
            .map(|r| r.prompt.segments[0])
            .collect();
        assert_eq!(first.len(), 1);
        assert_eq!(first.iter().next().unwrap().len, 512);
        let small = by_len(101);
        assert_eq!(small.prompt.segments[0].len, 50);
        assert_eq!(
            small.prompt.segments[0].seed,
            first.iter().next().unwrap().seed
        );
        let uniques: HashSet<u64> = t
            .requests
            .iter()
            .map(|r| r.prompt.segments[1].seed)
            .collect();
        assert_eq!(uniques.len(), t.requests.len());
    }

    #[test]
    fn compression_range_scale_and_seed() {
        let d = tiny_data();
        let base = ServeGenOptions {
            clients: Some(vec![0]),
            ..ServeGenOptions::default()
        };
        let t = d.generate(&base).unwrap();
        assert_eq!(t.requests, d.generate(&base).unwrap().requests);
        let other = d
            .generate(&ServeGenOptions {
                seed: 9,
                ..base.clone()
            })
            .unwrap();
        assert_ne!(t.requests, other.requests);

        // Ten times faster at the same rates: a tenth of the requests in a tenth of the time.
        let fast = ServeGenOptions {
            time_compression: 10.0,
            ..base.clone()
        };
        let tf = d.generate(&fast).unwrap();
        assert!(tf.requests.last().unwrap().arrival_us < 240_000_000);
        assert!(
            (tf.requests.len() as f64 - 210.0).abs() <= 3.0,
            "{}",
            tf.requests.len()
        );
        assert!((d.expected_requests(&fast) - 210.0).abs() < 1e-9);
        let in_first = tf
            .requests
            .iter()
            .filter(|r| r.arrival_us < 60_000_000)
            .count();
        assert!((in_first as f64 - 120.0).abs() <= 1.0, "{in_first}");
        // ... or keep the count by scaling the rate by the same factor.
        let same = d
            .generate(&ServeGenOptions {
                rate_scale: 10.0,
                ..fast.clone()
            })
            .unwrap();
        assert!((same.requests.len() as f64 - 2100.0).abs() <= 3.0);

        // A range: the second half of window 2 and window 3, re-based to 0.
        let part = d
            .generate(&ServeGenOptions {
                start_s: 1500,
                duration_s: Some(600),
                ..base.clone()
            })
            .unwrap();
        let early = part
            .requests
            .iter()
            .filter(|r| r.arrival_us < 300_000_000)
            .count();
        assert!((early as f64 - 150.0).abs() <= 1.0 && part.requests.len().abs_diff(450) <= 2);
        assert!(part.requests.iter().all(|r| r.arrival_us <= 600_000_000));
        let w = d.generate(&ServeGenOptions::windows(3, 1)).unwrap();
        assert!(w.requests.len().abs_diff(630) <= 2, "{}", w.requests.len());
    }

    #[test]
    fn split_keys_and_guards() {
        let d = tiny_data();
        let split = ServeGenOptions {
            keys: SessionKeys::Split { rps_per_key: 0.25 },
            ..ServeGenOptions::default()
        };
        let t = d.generate(&split).unwrap();
        let mut per: HashMap<u32, HashSet<u64>> = HashMap::new();
        for r in &t.requests {
            let client = if r.prompt.len() == 3000 { 1 } else { 0 };
            per.entry(client).or_default().insert(r.session.unwrap());
        }
        assert_eq!(per[&0].len(), 8, "peak 2 req/s / 0.25");
        assert_eq!(per[&1].len(), 1);

        let e = d
            .generate(&ServeGenOptions {
                max_requests: 1000,
                ..ServeGenOptions::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_requests"), "{e}");
        let e = d
            .generate(&ServeGenOptions {
                clients: Some(vec![2]),
                ..ServeGenOptions::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("no length dataset"), "{e}");
        let e = d
            .generate(&ServeGenOptions {
                time_compression: 0.0,
                ..ServeGenOptions::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("time_compression"));
        assert!(matches!(
            read_archive(
                &tgz(&[("chunk-0-trace.csv", "0,1,1,Gamma,1,1\n".into())])[..],
                "x"
            ),
            Err(TraceError::Empty(_))
        ));
        let bad = tgz(&[
            (
                "chunk-0-trace.csv",
                "0,1,1,Gamma,1,1\n600,1,1,Lognormal,1,1\n".into(),
            ),
            (
                "chunk-0-dataset.json",
                r#"{"0": {"input_tokens": "{1: 1}", "output_tokens": "{1: 1}"}}"#.into(),
            ),
        ]);
        let e = read_archive(&bad[..], "bad.tgz").unwrap_err().to_string();
        assert!(e.starts_with("bad.tgz:chunk-0-trace.csv:2:"), "{e}");
        let bad = tgz(&[
            ("chunk-0-trace.csv", "0,1,1,Gamma,1,1\n".into()),
            (
                "chunk-0-dataset.json",
                r#"{"0": {"input_tokens": "{1: x}", "output_tokens": "{1: 1}"}}"#.into(),
            ),
        ]);
        let e = read_archive(&bad[..], "bad.tgz").unwrap_err().to_string();
        assert!(e.contains("bad probability 'x'"), "{e}");
    }

    #[test]
    fn reads_a_path_an_uncompressed_tar_and_a_directory() {
        let dir = std::env::temp_dir().join(format!("sluice-servegen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tgz_path = dir.join("m-tiny.tgz");
        std::fs::write(&tgz_path, tiny()).unwrap();
        let opts = ServeGenOptions::default();
        let from_tgz = read_servegen(&tgz_path, &opts).unwrap();
        assert_eq!(
            from_tgz.requests,
            tiny_data().generate(&opts).unwrap().requests
        );

        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&tiny()[..])
            .read_to_end(&mut raw)
            .unwrap();
        let tar_path = dir.join("m-tiny.tar");
        std::fs::write(&tar_path, &raw).unwrap();
        assert_eq!(
            read_servegen(&tar_path, &opts).unwrap().requests,
            from_tgz.requests
        );

        let unpacked = dir.join("unpacked");
        tar::Archive::new(&raw[..]).unpack(&unpacked).unwrap();
        let model_dir = unpacked.join("data/language/m-tiny");
        assert_eq!(
            read_servegen(&model_dir, &opts).unwrap().requests,
            from_tgz.requests
        );
        let missing = read_servegen(&dir.join("nope.tgz"), &opts).unwrap_err();
        assert!(matches!(missing, TraceError::Io { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn arrival_laws_have_their_moments() {
        let mut rng = Rng::new(1);
        let n = 200_000;
        let stats = |xs: Vec<f64>| {
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64;
            (m, var.sqrt() / m)
        };
        for shape in [0.25, 0.5118, 1.0, 4.0] {
            let (m, cv) = stats((0..n).map(|_| rng.gamma(shape, 2.0)).collect());
            assert!(
                (m / (2.0 * shape) - 1.0).abs() < 0.03,
                "gamma {shape}: mean {m}"
            );
            assert!(
                (cv * shape.sqrt() - 1.0).abs() < 0.05,
                "gamma {shape}: cv {cv}"
            );
        }
        // Weibull with shape 1 is exponential; with shape 2, mean = scale·Γ(1.5).
        let (m, cv) = stats((0..n).map(|_| rng.weibull(1.0, 3.0)).collect());
        assert!((m / 3.0 - 1.0).abs() < 0.02 && (cv - 1.0).abs() < 0.03);
        let (m, _) = stats((0..n).map(|_| rng.weibull(2.0, 1.0)).collect());
        assert!((m / 0.886_226_925 - 1.0).abs() < 0.02, "{m}");
        // A bursty window keeps its burstiness after rescaling.
        let offs = arrival_offsets(
            ArrivalLaw::Gamma {
                shape: 0.25,
                scale: 1.0,
            },
            20_000,
            &mut rng,
        );
        assert!(offs.windows(2).all(|w| w[0] <= w[1]) && *offs.last().unwrap() < 1.0);
        let gaps: Vec<f64> = offs.windows(2).map(|w| w[1] - w[0]).collect();
        let (_, cv) = stats(gaps);
        assert!((cv - 2.0).abs() < 0.15, "{cv}");
    }

    #[test]
    fn reads_the_shared_trace() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/traces/servegen_language_m-small.tgz");
        if !p.exists() {
            eprintln!("skipping: {} not present", p.display());
            return;
        }
        let d = load_servegen(&p).unwrap();
        assert_eq!(d.clients.len() + d.clients_without_dataset.len(), 43);
        assert_eq!(d.clients_without_dataset, vec![1, 5, 8, 11, 38]);
        assert!(d.clients.iter().all(|c| c.windows.len() == 2016));
        // One day, compressed 100× into 864 s, at a tenth of the real rate.
        let opts = ServeGenOptions {
            start_s: 86_400,
            duration_s: Some(86_400),
            time_compression: 100.0,
            rate_scale: 0.1,
            ..ServeGenOptions::default()
        };
        let expected = d.expected_requests(&opts);
        let t = d.generate(&opts).unwrap();
        let n = t.requests.len() as f64;
        eprintln!(
            "servegen: {n} requests (expected {expected:.0}), span {} s",
            t.span_us() / 1_000_000
        );
        assert!((n / expected - 1.0).abs() < 0.01, "{n} vs {expected}");
        assert!((20_000.0..80_000.0).contains(&n), "{n}");
        assert!(t
            .requests
            .windows(2)
            .all(|w| w[0].arrival_us <= w[1].arrival_us));
        assert!(t.requests.last().unwrap().arrival_us <= 864_000_000);
        assert!(t
            .requests
            .iter()
            .all(|r| !r.prompt.is_empty() && r.output_tokens >= 1));
        // Per compressed window (6 s each), the count follows the summed rate.
        let curve: BTreeMap<u64, f64> = d.aggregate_rate(&opts).into_iter().collect();
        let mut counts = vec![0usize; 144];
        for r in &t.requests {
            counts[(r.arrival_us / 6_000_000).min(143) as usize] += 1;
        }
        for (k, &got) in counts.iter().enumerate() {
            let want = curve[&(86_400 + 600 * k as u64)] * 6.0;
            assert!(
                (got as f64 - want).abs() <= 5.0 * want.sqrt() + 40.0,
                "window {k}: {got} vs {want}"
            );
        }
        let keys: HashSet<u64> = t.requests.iter().filter_map(|r| r.session).collect();
        assert!(keys.len() <= d.clients.len());
    }
}
