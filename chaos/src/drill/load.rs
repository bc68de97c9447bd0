//! The drill's load generator: open-loop chat requests (half of them streamed) at a
//! fixed rate through the nodes' front doors, each recorded in the ledger. It stands for
//! clients behind a load balancer: it sends only through front doors the drill has not
//! taken out (the drill takes a node out before it stops or kills it).

use super::ledger::{judge_stream, judge_text, Outcome, Record};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sluice_loadgen::exchange::{client, HttpClient};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub const MODEL: &str = DRILL_MODELS[0];

/// The models a drill's cluster may serve (`--models N` takes the first N): the two
/// with built-in profiles.
pub const DRILL_MODELS: [&str; 2] = ["llama-3.1-8b-instruct", "llama-3.2-3b-instruct"];

/// Which front doors take traffic, and how many requests each has in flight.
pub struct Doors {
    pub urls: Vec<String>,
    open: RwLock<Vec<bool>>,
    in_flight: Vec<AtomicU64>,
}

impl Doors {
    pub fn new(urls: Vec<String>) -> Arc<Self> {
        let n = urls.len();
        Arc::new(Self {
            urls,
            open: RwLock::new(vec![true; n]),
            in_flight: (0..n).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    pub fn set_open(&self, i: usize, open: bool) {
        if let Some(o) = self
            .open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            *o = open;
        }
    }

    fn pick(&self, k: u64) -> Option<usize> {
        let open = self.open.read().unwrap_or_else(|p| p.into_inner());
        let live: Vec<usize> = (0..open.len()).filter(|&i| open[i]).collect();
        (!live.is_empty()).then(|| live[(k as usize) % live.len()])
    }

    /// Waits (up to `limit`) until nothing is in flight through door `i`.
    pub async fn drain(&self, i: usize, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while self.in_flight[i].load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub struct LoadHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
    records: Arc<Mutex<Vec<Record>>>,
}

impl LoadHandle {
    /// Stops sending and waits for every request's end; the ledger.
    pub async fn finish(self) -> Vec<Record> {
        let _ = self.stop.send(true);
        if let Ok(tasks) = self.task.await {
            for t in tasks {
                let _ = t.await;
            }
        }
        let mut r = std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()));
        r.sort_by_key(|x| x.id);
        r
    }
}

/// Starts sending `rate` requests per second, taking `models` in turn; times are
/// measured from `epoch`.
pub fn start(
    doors: Arc<Doors>,
    rate: f64,
    deadline: Duration,
    epoch: Instant,
    key: String,
    models: &'static [&'static str],
) -> LoadHandle {
    let key: Arc<str> = Arc::from(format!("Bearer {key}"));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let out = records.clone();
    let task = tokio::spawn(async move {
        let http = client(256, Duration::from_secs(2));
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.01));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for k in 0u64.. {
            tokio::select! {
                _ = tokio::time::sleep_until(start + gap * k as u32) => {}
                _ = stopped.changed() => break,
            }
            let Some(door) = doors.pick(k) else { continue };
            let (http, doors, out, key) = (http.clone(), doors.clone(), out.clone(), key.clone());
            doors.in_flight[door].fetch_add(1, Ordering::Relaxed);
            tasks.push(tokio::spawn(async move {
                let sent_ms = epoch.elapsed().as_millis() as u64;
                let stream = k % 2 == 1;
                let model = models[(k as usize) % models.len().max(1)];
                let ask = Ask {
                    content: format!("drill request {k}: tell me about fault tolerance"),
                    session: format!("session-{}", k % 64),
                    model,
                    stream,
                    seed: Some(k),
                };
                let (outcome, first_ms) =
                    within(deadline, &http, &doors.urls[door], &key, &ask, epoch).await;
                doors.in_flight[door].fetch_sub(1, Ordering::Relaxed);
                let r = Record {
                    id: k,
                    sent_ms,
                    done_ms: epoch.elapsed().as_millis() as u64,
                    node: door,
                    model,
                    stream,
                    outcome,
                    first_ms,
                };
                out.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            }));
        }
        tasks
    });
    LoadHandle {
        stop,
        task,
        records,
    }
}

/// One request of the drill's clients.
pub struct Ask {
    pub content: String,
    /// Its `x-session-id`: the workload key that picks its slice.
    pub session: String,
    pub model: &'static str,
    pub stream: bool,
    /// OpenAI's `seed`: the simulated engine's answer is then known in advance, and
    /// checked word for word.
    pub seed: Option<u64>,
}

/// Tokens every drill request asks for (and, with `ignore_eos`, gets).
const ANSWER_TOKENS: u32 = 32;

/// [`one`] within `deadline`: how the request ended, and when a stream's first bytes
/// came back (ms since `epoch`).
async fn within(
    deadline: Duration,
    http: &HttpClient,
    base: &str,
    auth: &str,
    ask: &Ask,
    epoch: Instant,
) -> (Outcome, Option<u64>) {
    let mut first_ms = None;
    let outcome = tokio::time::timeout(deadline, one(http, base, auth, ask, epoch, &mut first_ms))
        .await
        .unwrap_or_else(|_| Outcome::Lost {
            why: format!("no answer within {deadline:?}"),
        });
    (outcome, first_ms)
}

/// Sends `ask` to the door at `base` and judges the answer; for a stream, also notes
/// when its first bytes came back (ms since `epoch`) in `first_ms`.
async fn one(
    http: &HttpClient,
    base: &str,
    auth: &str,
    ask: &Ask,
    epoch: Instant,
    first_ms: &mut Option<u64>,
) -> Outcome {
    let stream = ask.stream;
    let mut body = serde_json::json!({
        "model": ask.model,
        "messages": [{"role": "user", "content": ask.content}],
        "max_tokens": ANSWER_TOKENS,
        "ignore_eos": true,
    });
    if let Some(seed) = ask.seed {
        body["seed"] = seed.into();
    }
    let expected = ask.seed.map(|seed| {
        sluice_engine::words::output_text(sluice_engine::words::client_seed(seed), ANSWER_TOKENS)
    });
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let Ok(req) = hyper::Request::post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-session-id", &ask.session)
        .header("authorization", auth)
        .body(Full::new(Bytes::from(body.to_string())))
    else {
        return Outcome::Explicit {
            why: "request could not be built".into(),
        };
    };
    let resp = match http.request(req).await {
        Ok(r) => r,
        // Nothing came back from a front door that was up when chosen.
        Err(e) => {
            return Outcome::Lost {
                why: format!("connection failed: {e}"),
            }
        }
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                let Ok(data) = f.into_data() else { continue };
                if stream && status == 200 && !data.is_empty() && first_ms.is_none() {
                    *first_ms = Some(epoch.elapsed().as_millis() as u64);
                }
                bytes.extend_from_slice(&data);
            }
            Err(e) => {
                return Outcome::Lost {
                    why: format!("answer broke off without an error: {e}"),
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    if status != 200 {
        // The error's code and the start of its message: what the report shows of why.
        let error = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .map(|v| v["error"].clone());
        let code = error.as_ref().and_then(|e| e["code"].as_str());
        let message: String = error
            .as_ref()
            .and_then(|e| e["message"].as_str())
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect();
        return Outcome::Explicit {
            why: match (code, message.is_empty()) {
                (Some(code), _) => format!("HTTP {status} {code}: {message}"),
                (None, false) => format!("HTTP {status}: {message}"),
                (None, true) => format!("HTTP {status}"),
            },
        };
    }
    if stream {
        judge_stream(&text, expected.as_deref())
    } else {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => match v["choices"][0]["message"]["content"].as_str() {
                Some(content) => judge_text(content, expected.as_deref()),
                None => Outcome::Lost {
                    why: "a 200 without a completion".into(),
                },
            },
            Err(_) => Outcome::Lost {
                why: "a 200 without a completion".into(),
            },
        }
    }
}

/// Ledger ids of the poison client's requests, apart from the load's.
pub const POISON_IDS: u64 = 1 << 40;

/// A client that keeps re-sending one poison request (a prompt that hangs whichever
/// engine serves it) as a client with retries would: the same body each time, waiting
/// for each answer and a second between tries. Once stopped it sends it once more, to
/// see whether the fleet now refuses it.
pub struct PoisonHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Record>>,
}

impl PoisonHandle {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the last try; the poison client's ledger.
    pub async fn finish(self) -> Vec<Record> {
        self.stop();
        self.task.await.unwrap_or_default()
    }
}

pub fn poison(
    doors: Arc<Doors>,
    ask: Ask,
    deadline: Duration,
    epoch: Instant,
    key: String,
) -> PoisonHandle {
    let auth = format!("Bearer {key}");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let http = client(8, Duration::from_secs(2));
        let mut records = Vec::new();
        for k in 0u64.. {
            let last = *stopped.borrow();
            let Some(door) = doors.pick(k) else {
                if last {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let sent_ms = epoch.elapsed().as_millis() as u64;
            let (outcome, first_ms) =
                within(deadline, &http, &doors.urls[door], &auth, &ask, epoch).await;
            records.push(Record {
                id: POISON_IDS + k,
                sent_ms,
                done_ms: epoch.elapsed().as_millis() as u64,
                node: door,
                model: ask.model,
                stream: ask.stream,
                outcome,
                first_ms,
            });
            if last {
                break;
            }
            // A client's back-off before it tries again.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        records
    });
    PoisonHandle { stop, task }
}
