//! The calibration client for any OpenAI-compatible engine: `/v1/models` to find the
//! model, then closed loops of `POST /v1/completions` with `max_tokens` and
//! `ignore_eos: true`, a few of them streamed (with `stream_options.include_usage`) to
//! time the first and later tokens.

use super::prompt::{Rng, TokenModel};
use super::{summarize, Done, MeasureOptions, Measurement, PointSpec};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Wall time left between points, for the engine to drop the requests that were cut
/// off at the end of the previous one.
const SETTLE: Duration = Duration::from_millis(100);

/// Prompt sizes (words) of the two tokenizer probes.
const PROBE_WORDS: (usize, usize) = (32, 512);

/// Output tokens asked of the second probe, to check that `ignore_eos` is honoured.
const PROBE_OUTPUT: u32 = 8;

/// An OpenAI-compatible engine reached over HTTP.
pub struct HttpEngine {
    inner: Arc<Inner>,
    base: String,
    time_scale: f64,
    tokens: TokenModel,
    seed: u64,
    points: u64,
    /// Whether the last probe got `max_tokens` tokens back with `ignore_eos`.
    ignore_eos_honoured: bool,
    /// The model's `max_model_len` as `/v1/models` lists it (vLLM and the simulated
    /// engine do).
    max_model_len: Option<u32>,
}

struct Inner {
    client: HttpClient,
    completions: Uri,
    /// The model name as a JSON string literal.
    model_json: String,
    model: String,
    timeout: Duration,
}

/// Token counts from a response's `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt: u32,
    pub completion: u32,
    pub cached: Option<u32>,
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
struct Reply {
    first: Option<Instant>,
    end: Instant,
    usage: Usage,
}

/// The part of a worker's state the coordinator sees.
struct Board {
    ramp_left: usize,
    window_start: Option<Instant>,
    done: Vec<(Instant, Instant, Reply, u32)>,
    target: usize,
    min_window: Duration,
    stop: bool,
    error: Option<anyhow::Error>,
}

impl HttpEngine {
    /// Connects to the engine at `url` (`http://host:port`, optionally ending in `/v1`),
    /// finds the model (the first one `/v1/models` lists unless `model` is given) and
    /// measures how many tokens its tokenizer makes of the calibration prompts.
    pub async fn connect(
        url: &str,
        model: Option<&str>,
        time_scale: f64,
        timeout: Duration,
        seed: u64,
    ) -> anyhow::Result<Self> {
        if !(time_scale.is_finite() && time_scale > 0.0) {
            bail!("the engine time scale must be a positive number, got {time_scale}");
        }
        let base = base_url(url)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(4096)
            .retry_canceled_requests(false)
            .build(connector);
        let listed = list_models(&client, &base).await;
        let (model, max_model_len) = match (model, &listed) {
            (Some(m), Ok(list)) => (
                m.to_owned(),
                list.iter()
                    .find(|(id, _)| id == m)
                    .and_then(|(_, len)| *len),
            ),
            // An engine without a model list can still be calibrated with --model.
            (Some(m), Err(_)) => (m.to_owned(), None),
            (None, Ok(list)) => match list.first() {
                Some((id, len)) => (id.clone(), *len),
                None => bail!("{base}/v1/models lists no model; give --model"),
            },
            (None, Err(e)) => bail!("{e:#}; give --model"),
        };
        let completions: Uri = format!("{base}/v1/completions")
            .parse()
            .with_context(|| format!("bad engine URL {url}"))?;
        let inner = Arc::new(Inner {
            client,
            completions,
            model_json: serde_json::to_string(&model)?,
            model,
            timeout,
        });
        let mut rng = Rng::new(seed ^ 0x9B0B);
        let a = inner
            .complete(&rng.words(PROBE_WORDS.0), 1, false)
            .await
            .context("probe request failed")?;
        let b = inner
            .complete(&rng.words(PROBE_WORDS.1), PROBE_OUTPUT, false)
            .await
            .context("probe request failed")?;
        let tokens = TokenModel::from_probes(
            (PROBE_WORDS.0, a.usage.prompt),
            (PROBE_WORDS.1, b.usage.prompt),
        )
        .ok_or_else(|| {
            anyhow!(
                "the engine's usage.prompt_tokens ({} for {} words, {} for {}) do not grow \
                 with the prompt",
                a.usage.prompt,
                PROBE_WORDS.0,
                b.usage.prompt,
                PROBE_WORDS.1
            )
        })?;
        Ok(Self {
            inner,
            base,
            time_scale,
            tokens,
            seed,
            points: 0,
            ignore_eos_honoured: b.usage.completion == PROBE_OUTPUT,
            max_model_len,
        })
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} model {}, {:.3} tokens per prompt word, prompt seed {}",
            self.base, self.inner.model, self.tokens.per_word, self.seed
        );
        if let Some(len) = self.max_model_len {
            s.push_str(&format!(", max_model_len {len}"));
        }
        if self.time_scale != 1.0 {
            s.push_str(&format!(", engine time scale {}", self.time_scale));
        }
        if !self.ignore_eos_honoured {
            s.push_str(
                ", WARNING: ignore_eos seems ignored (the measured output lengths are used)",
            );
        }
        s
    }

    pub fn model(&self) -> &str {
        &self.inner.model
    }

    /// The longest request the engine accepts, if its model list says.
    pub fn max_model_len(&self) -> Option<u32> {
        self.max_model_len
    }

    /// The tokenizer model measured at connection.
    pub fn token_model(&self) -> TokenModel {
        self.tokens
    }

    /// Measures one point: see the module documentation of [`super`].
    pub async fn measure(
        &mut self,
        spec: &PointSpec,
        opts: &MeasureOptions,
    ) -> anyhow::Result<Measurement> {
        self.points += 1;
        let mut rng = Rng::new(self.seed ^ self.points.wrapping_mul(0x5851_F42D_4C95_7F2D));
        let c = spec.concurrency.max(1);
        // Each shape's shared prefix and the words of its unique part.
        let mut parts: Vec<(Arc<str>, usize)> = Vec::new();
        for shape in spec.shapes() {
            let prefix_words = self.tokens.words_for_part(shape.cached);
            let prefix: Arc<str> = rng.words(prefix_words).into();
            let total_words = self.tokens.words_for(shape.input);
            let suffix_words = total_words.saturating_sub(prefix_words).max(1);
            if prefix_words > 0 {
                // One request computes the shared prefix before the loop starts.
                let mut p = prefix.to_string();
                rng.push_words(&mut p, suffix_words);
                self.inner
                    .complete(&p, 1, false)
                    .await
                    .with_context(|| format!("warm-up request of {spec:?} failed"))?;
            }
            parts.push((prefix, suffix_words));
        }
        let board = Arc::new((
            Mutex::new(Board {
                ramp_left: c,
                window_start: None,
                done: Vec::new(),
                target: opts.target_requests(c),
                min_window: Duration::from_secs_f64(opts.min_window_s),
                stop: false,
                error: None,
            }),
            Notify::new(),
        ));
        let mut workers = tokio::task::JoinSet::new();
        for k in 0..c {
            let (prefix, suffix_words) =
                &parts[usize::from(spec.alternate.is_some() && k % 2 == 1)];
            let shape = spec.shape_of(k);
            let w = WorkerCfg {
                inner: self.inner.clone(),
                board: board.clone(),
                prefix: prefix.clone(),
                suffix_words: *suffix_words,
                ramp_output: spec.ramp_output(k),
                output: shape.output,
                intended_cached: shape.cached,
                stream: opts.streams(k, c),
                rng: Rng::new(rng.next_u64()),
            };
            workers.spawn(worker(w));
        }
        loop {
            {
                let b = lock(&board.0);
                if b.stop {
                    break;
                }
            }
            board.1.notified().await;
        }
        // Cut off everything still running: dropping the connections aborts the requests.
        workers.abort_all();
        while workers.join_next().await.is_some() {}
        let (error, window_start, records) = {
            let mut b = lock(&board.0);
            (b.error.take(), b.window_start, std::mem::take(&mut b.done))
        };
        if let Some(e) = error {
            return Err(e.context(format!("while measuring {spec:?}")));
        }
        let origin = window_start.unwrap_or_else(Instant::now);
        let scale = self.time_scale;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0 / scale;
        let done: Vec<Done> = records
            .iter()
            .map(|(start, end, r, intended)| Done {
                end_ms: if *end >= origin {
                    ms(*end - origin)
                } else {
                    -ms(origin - *end)
                },
                e2e_ms: ms(end.saturating_duration_since(*start)),
                ttft_ms: r.first.map(|f| ms(f.saturating_duration_since(*start))),
                prompt_tokens: r.usage.prompt,
                completion_tokens: r.usage.completion,
                cached_tokens: r.usage.cached,
                intended_cached: *intended,
            })
            .collect();
        tokio::time::sleep(SETTLE).await;
        summarize(*spec, &done).map_err(anyhow::Error::msg)
    }
}

fn lock(m: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct WorkerCfg {
    inner: Arc<Inner>,
    board: Arc<(Mutex<Board>, Notify)>,
    prefix: Arc<str>,
    suffix_words: usize,
    ramp_output: u32,
    output: u32,
    intended_cached: u32,
    stream: bool,
    rng: Rng,
}

/// One closed-loop worker: a ramp request, then full-shape requests until told to stop.
/// The next request's body is built while the current one is in flight, so that the
/// engine's slot stays empty for as short a time as possible.
async fn worker(mut w: WorkerCfg) {
    let mut ramp = true;
    let mut body = w.body(w.ramp_output);
    let (inner, stream, output) = (w.inner.clone(), w.stream, w.output);
    loop {
        let start = Instant::now();
        let (result, next) = tokio::join!(inner.send_body(body, stream), async { w.body(output) });
        body = next;
        let (lock_board, notify) = (&w.board.0, &w.board.1);
        let mut b = lock(lock_board);
        if b.stop {
            return;
        }
        match result {
            Err(e) => {
                b.error = Some(e);
                b.stop = true;
                notify.notify_one();
                return;
            }
            Ok(reply) => {
                if ramp {
                    b.ramp_left -= 1;
                    if b.ramp_left == 0 {
                        b.window_start = Some(reply.end);
                    }
                } else if let Some(t) = b.window_start.filter(|&t| reply.end >= t) {
                    b.done.push((start, reply.end, reply, w.intended_cached));
                    if b.done.len() >= b.target && reply.end - t >= b.min_window {
                        b.stop = true;
                        notify.notify_one();
                        return;
                    }
                }
            }
        }
        ramp = false;
    }
}

impl WorkerCfg {
    /// A request body: the shared prefix, fresh random words, `output` tokens.
    fn body(&mut self, output: u32) -> Bytes {
        let mut prompt = String::with_capacity(self.prefix.len() + self.suffix_words * 5);
        prompt.push_str(&self.prefix);
        self.rng.push_words(&mut prompt, self.suffix_words);
        Bytes::from(request_body(
            &self.inner.model_json,
            &prompt,
            output,
            self.stream,
        ))
    }
}

impl Inner {
    /// Sends one completion request and reads the whole answer.
    async fn complete(&self, prompt: &str, max_tokens: u32, stream: bool) -> anyhow::Result<Reply> {
        let body = request_body(&self.model_json, prompt, max_tokens, stream);
        self.send_body(Bytes::from(body), stream).await
    }

    /// Sends a request body and reads the whole answer, within the request timeout.
    async fn send_body(&self, body: Bytes, stream: bool) -> anyhow::Result<Reply> {
        match tokio::time::timeout(self.timeout, self.send(body, stream)).await {
            Ok(r) => r,
            Err(_) => bail!("a request got no complete answer within {:?}", self.timeout),
        }
    }

    async fn send(&self, body: Bytes, stream: bool) -> anyhow::Result<Reply> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.completions.clone();
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let resp = self
            .client
            .request(req)
            .await
            .with_context(|| format!("cannot reach {}", self.completions))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
            bail!("{} answered {status}: {}", self.completions, text.trim());
        }
        if !stream {
            let bytes = body
                .collect()
                .await
                .context("the response body was cut off")?
                .to_bytes();
            let end = Instant::now();
            let usage = body_usage(&bytes)
                .ok_or_else(|| anyhow!("the response has no usage: {}", snippet(&bytes)))?;
            return Ok(Reply {
                first: None,
                end,
                usage,
            });
        }
        let mut sse = SseReader::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the stream was cut off")?;
            if let Some(data) = frame.data_ref() {
                sse.push(data, Instant::now());
                if sse.ends_with_done() {
                    break;
                }
            }
        }
        let end = Instant::now();
        let sum = sse.finish();
        if !sum.done {
            bail!("the stream ended without data: [DONE]");
        }
        let usage = sum.usage.ok_or_else(|| {
            anyhow!("the stream carried no usage (stream_options.include_usage is not supported?)")
        })?;
        Ok(Reply {
            first: sse.first,
            end,
            usage,
        })
    }
}

/// The JSON body of a completion request. Prompts are made of plain lowercase words and
/// spaces, so they need no escaping.
fn request_body(model_json: &str, prompt: &str, max_tokens: u32, stream: bool) -> String {
    debug_assert!(prompt.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()));
    let stream_opts = if stream {
        ",\"stream\":true,\"stream_options\":{\"include_usage\":true}"
    } else {
        ",\"stream\":false"
    };
    format!(
        "{{\"model\":{model_json},\"prompt\":\"{prompt}\",\"max_tokens\":{max_tokens},\"ignore_eos\":true,\"temperature\":0{stream_opts}}}"
    )
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned()
}

/// `usage` of a whole (non-streamed) response. Only the usage object is parsed when it
/// can be found (it comes after the generated text), else the whole body.
fn body_usage(bytes: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    if let Some(at) = bytes.windows(KEY.len()).rposition(|w| w == KEY) {
        let rest = &bytes[at + KEY.len()..];
        if let Some(open) = rest.iter().position(|&b| b == b'{') {
            let mut it = serde_json::Deserializer::from_slice(&rest[open..]).into_iter::<Value>();
            if let Some(Ok(u)) = it.next() {
                if let Some(parsed) = parse_usage(&serde_json::json!({ "usage": u })) {
                    return Some(parsed);
                }
            }
        }
    }
    let v: Value = serde_json::from_slice(bytes).ok()?;
    parse_usage(&v)
}

/// `usage` of a completion response or chunk, if present.
pub(crate) fn parse_usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    let prompt = u.get("prompt_tokens")?.as_u64()?;
    let completion = u.get("completion_tokens")?.as_u64()?;
    let cached = u
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64);
    let c32 = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
    Some(Usage {
        prompt: c32(prompt),
        completion: c32(completion),
        cached: cached.map(c32),
    })
}

/// Reads an SSE stream: the time of the first data, then the whole body, which is
/// parsed once at the end (token chunks, the usage chunk, the final `[DONE]`), so that
/// each chunk costs the client no more than a copy.
#[derive(Debug, Default)]
pub(crate) struct SseReader {
    body: Vec<u8>,
    pub first: Option<Instant>,
}

/// What a whole SSE body said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SseSummary {
    /// Data events other than `[DONE]` and a usage-only chunk.
    pub chunks: u32,
    pub usage: Option<Usage>,
    pub done: bool,
}

impl SseReader {
    pub fn push(&mut self, data: &[u8], at: Instant) {
        if self.first.is_none() && !data.is_empty() {
            self.first = Some(at);
        }
        self.body.extend_from_slice(data);
    }

    /// Whether the body so far ends with the `[DONE]` event.
    pub fn ends_with_done(&self) -> bool {
        let mut s = &self.body[..];
        while let [rest @ .., b'\n' | b'\r' | b' '] = s {
            s = rest;
        }
        s.ends_with(b"[DONE]")
    }

    pub fn finish(&self) -> SseSummary {
        let mut sum = SseSummary::default();
        for line in self.body.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(payload) = line.strip_prefix(b"data:") else {
                continue;
            };
            let payload = payload.strip_prefix(b" ").unwrap_or(payload);
            if payload == b"[DONE]" {
                sum.done = true;
                continue;
            }
            sum.done = false;
            if contains(payload, b"\"usage\":{") || contains(payload, b"\"usage\": {") {
                if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                    if let Some(u) = parse_usage(&v) {
                        sum.usage = Some(u);
                    }
                    let no_choices = v
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(|c| c.is_empty());
                    if no_choices {
                        continue;
                    }
                }
            }
            sum.chunks += 1;
        }
        sum
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `http://host:port` from what the user gave (a trailing `/` or `/v1` is dropped).
fn base_url(url: &str) -> anyhow::Result<String> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    let uri: Uri = trimmed
        .parse()
        .with_context(|| format!("bad engine URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("bad engine URL {url}: only http:// is supported");
    }
    if uri.authority().is_none() {
        bail!("bad engine URL {url}: no host");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("bad engine URL {url}: give the base URL (http://host:port)");
    }
    Ok(trimmed.to_owned())
}

/// The models `GET /v1/models` lists, each with its `max_model_len` when given.
async fn list_models(
    client: &HttpClient,
    base: &str,
) -> anyhow::Result<Vec<(String, Option<u32>)>> {
    let uri: Uri = format!("{base}/v1/models").parse()?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.get(uri.clone()))
        .await
        .map_err(|_| anyhow!("{uri} did not answer within 30 s"))?
        .with_context(|| format!("cannot reach {uri}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("cannot read the model list")?
        .to_bytes();
    if !status.is_success() {
        bail!("{uri} answered {status}: {}", snippet(&bytes));
    }
    let v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{uri} did not answer JSON: {}", snippet(&bytes)))?;
    Ok(parse_models(&v))
}

/// `(id, max_model_len)` of each entry of a model list.
fn parse_models(v: &Value) -> Vec<(String, Option<u32>)> {
    v.get("data")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|m| {
                    let id = m.get("id")?.as_str()?.to_owned();
                    let len = m
                        .get("max_model_len")
                        .and_then(Value::as_u64)
                        .and_then(|l| u32::try_from(l).ok());
                    Some((id, len))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("http://h:1").unwrap(), "http://h:1");
        assert_eq!(base_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(base_url("http://h:1/v1/").unwrap(), "http://h:1");
        assert!(base_url("https://h:1").is_err());
        assert!(base_url("http://h:1/x").is_err());
        assert!(base_url("h:1").is_err());
    }

    #[test]
    fn model_lists() {
        let v: Value = serde_json::from_str(
            r#"{"object":"list","data":[{"id":"tiny","max_model_len":2048},{"id":"other"}]}"#,
        )
        .unwrap();
        assert_eq!(
            parse_models(&v),
            vec![("tiny".to_owned(), Some(2048)), ("other".to_owned(), None)]
        );
        assert!(parse_models(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn usage_of_a_whole_body() {
        let b = br#"{"choices":[{"text":" usage the"}],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":null}}"#;
        assert_eq!(
            body_usage(b),
            Some(Usage {
                prompt: 5,
                completion: 3,
                cached: None
            })
        );
        assert_eq!(body_usage(b"{\"choices\":[]}"), None);
    }

    #[test]
    fn request_bodies_are_json() {
        let b = request_body("\"m\"", " the cat", 7, true);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let v: Value = serde_json::from_str(&request_body("\"m\"", " a", 1, false)).unwrap();
        assert_eq!(v["stream"], false);
    }

    #[test]
    fn sse_reader_finds_first_token_usage_and_done() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut r = SseReader::default();
        r.push(
            b"data: {\"choices\":[{\"text\":\" a\"}],\"usage\":null}\n",
            t0,
        );
        r.push(b"\ndata: {\"choices\":[{\"text\":\" b\"}]}\r\n\r\n", t1);
        assert_eq!(r.first, Some(t0));
        assert!(!r.ends_with_done());
        r.push(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\
              \"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n",
            t1,
        );
        assert!(r.ends_with_done());
        let s = r.finish();
        assert_eq!(s.chunks, 2);
        assert!(s.done);
        assert_eq!(
            s.usage,
            Some(Usage {
                prompt: 10,
                completion: 2,
                cached: Some(4)
            })
        );
        let mut cut = SseReader::default();
        cut.push(b"data: {\"choices\":[]}\n\n", t0);
        assert!(!cut.finish().done);
    }
}
