//! HTTP-level tests of the simulated engine's shell, in zero-delay mode unless a test needs
//! real time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sluice_engine::{serve, EngineParams, ServerConfig};
use tokio::sync::oneshot;

const MODEL: &str = "sim-llama";

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_with(time_scale: f64, params: EngineParams) -> Server {
    start_config(time_scale, params, None).await
}

async fn start_config(time_scale: f64, params: EngineParams, poison: Option<&str>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let config = ServerConfig {
        model: MODEL.into(),
        params,
        time_scale,
        seed: 7,
        poison: poison.map(str::to_owned),
    };
    tokio::spawn(async move {
        serve(listener, config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server { addr, _stop: tx }
}

async fn start(time_scale: f64) -> Server {
    start_with(time_scale, EngineParams::default()).await
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Resp {
    status: StatusCode,
    content_type: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn call(
    c: &HttpClient,
    s: &Server,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> Resp {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", s.addr))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn post(c: &HttpClient, s: &Server, path: &str, body: Value) -> Resp {
    call(c, s, Method::POST, path, body.to_string()).await
}

/// Sets the engine's fault (`POST /admin/fault`).
async fn fault(c: &HttpClient, s: &Server, body: Value) -> Resp {
    post(c, s, "/admin/fault", body).await
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

/// The `data:` payloads of an SSE body (checks the framing on the way).
fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "stream must end with [DONE]: {body:?}"
    );
    body.split("\n\n")
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad SSE event {s:?}"))
                .to_owned()
        })
        .collect()
}

fn assert_openai_error(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    let v = r.json();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    v
}

#[tokio::test]
async fn chat_non_streaming_is_well_formed() {
    let s = start(0.0).await;
    let c = client();
    let r = post(
        &c,
        &s,
        "/v1/chat/completions",
        chat(
            "Hello there, how are you?",
            json!({"max_tokens": 12, "ignore_eos": true}),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let text = choice["message"]["content"].as_str().unwrap();
    assert_eq!(sluice_engine::tokenizer::count_tokens(text), 12, "{text:?}");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 12);
    let prompt_tokens = u["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 10);
    assert_eq!(u["total_tokens"].as_u64().unwrap(), prompt_tokens + 12);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test]
async fn natural_length_is_deterministic_and_capped() {
    let s = start(0.0).await;
    let c = client();
    let body = chat("Tell me about rivers.", json!({}));
    let a = post(&c, &s, "/v1/chat/completions", body.clone())
        .await
        .json();
    let b = post(&c, &s, "/v1/chat/completions", body).await.json();
    let n = a["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((16..=512).contains(&n), "{n}");
    assert_eq!(n, b["usage"]["completion_tokens"].as_u64().unwrap());
    assert_eq!(a["choices"][0]["finish_reason"], "stop");
    // The second identical prompt hits the prefix cache.
    assert!(
        b["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    // A cap below the natural length ends with "length".
    let capped = post(
        &c,
        &s,
        "/v1/chat/completions",
        chat("Tell me about rivers.", json!({"max_completion_tokens": 3})),
    )
    .await
    .json();
    assert_eq!(capped["usage"]["completion_tokens"], 3);
    assert_eq!(capped["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn chat_streaming_is_well_formed() {
    let s = start(0.0).await;
    let c = client();
    let r = post(
        &c,
        &s,
        "/v1/chat/completions",
        chat("Stream please", json!({"max_tokens": 5, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.content_type.starts_with("text/event-stream"));
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 5 + 1 + 1, "{events:?}");
    let chunks: Vec<Value> = events[..6]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap().to_owned();
    for (i, ch) in chunks[..5].iter().enumerate() {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["id"], id.as_str());
        let delta = &ch["choices"][0]["delta"];
        assert!(delta["content"].as_str().unwrap().starts_with(' '));
        assert_eq!(delta.get("role").is_some(), i == 0, "{ch}");
        let finish = &ch["choices"][0]["finish_reason"];
        if i == 4 {
            assert_eq!(finish, "length");
        } else {
            assert!(finish.is_null());
        }
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = &chunks[5];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(events[6], "[DONE]");
}

#[tokio::test]
async fn completions_streaming_and_not() {
    let s = start(0.0).await;
    let c = client();
    let r = post(
        &c,
        &s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "ignore_eos": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        sluice_engine::tokenizer::count_tokens(v["choices"][0]["text"].as_str().unwrap()),
        4
    );
    assert_eq!(
        v["usage"]["prompt_tokens"],
        sluice_engine::tokenizer::count_tokens("Once upon a time")
    );

    let r = post(&c, &s, "/v1/completions", json!({"model": MODEL, "prompt": [1, 2, 3, 4, 5], "max_tokens": 3, "ignore_eos": true, "stream": true})).await;
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 4, "no usage chunk unless asked: {events:?}");
    for e in &events[..3] {
        let ch: Value = serde_json::from_str(e).unwrap();
        assert_eq!(ch["object"], "text_completion");
        assert!(ch["choices"][0]["text"].is_string());
    }
}

#[tokio::test]
async fn errors_are_openai_shaped_with_the_right_status() {
    let s = start_with(
        0.0,
        EngineParams {
            max_model_len: 2048,
            ..EngineParams::default()
        },
    )
    .await;
    let c = client();
    let v = assert_openai_error(
        &post(
            &c,
            &s,
            "/v1/chat/completions",
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
        404,
    );
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_openai_error(
        &call(&c, &s, Method::POST, "/v1/chat/completions", "{not json").await,
        400,
    );
    assert_openai_error(
        &post(&c, &s, "/v1/chat/completions", json!({"model": MODEL})).await,
        400,
    );
    let v = assert_openai_error(
        &post(&c, &s, "/v1/chat/completions", chat("hi", json!({"n": 2}))).await,
        400,
    );
    assert_eq!(v["error"]["param"], "n");
    // Prompt too long for the context window.
    let long = "word ".repeat(3000);
    let v = assert_openai_error(
        &post(
            &c,
            &s,
            "/v1/completions",
            json!({"model": MODEL, "prompt": long, "max_tokens": 10}),
        )
        .await,
        400,
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"),
        "{v}"
    );
    // max_tokens pushes it over.
    assert_openai_error(
        &post(
            &c,
            &s,
            "/v1/completions",
            json!({"model": MODEL, "prompt": "hi", "max_tokens": 5000}),
        )
        .await,
        400,
    );
    // Too large a body.
    let huge = vec![b' '; 33 * 1024 * 1024];
    let v = assert_openai_error(
        &call(&c, &s, Method::POST, "/v1/completions", huge).await,
        413,
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("larger than"));
    // Unknown path.
    assert_openai_error(&call(&c, &s, Method::GET, "/v2/nothing", "").await, 404);
}

#[tokio::test]
async fn models_health_and_metrics() {
    let s = start(0.0).await;
    let c = client();
    let r = call(&c, &s, Method::GET, "/v1/models", "").await;
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(call(&c, &s, Method::GET, "/health", "").await.status, 200);
    for _ in 0..2 {
        post(
            &c,
            &s,
            "/v1/chat/completions",
            chat("same prompt for the cache", json!({"max_tokens": 2})),
        )
        .await;
    }
    let m = call(&c, &s, Method::GET, "/metrics", "").await.body;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    let value = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not found in\n{m}"))
    };
    assert!(value("vllm:prefix_cache_queries_total") > 0.0);
    assert!(value("vllm:prefix_cache_hits_total") > 0.0);
    assert!(m.contains("model_name=\"sim-llama\""));
    assert!(value("vllm:request_success_total") >= 2.0);
}

#[tokio::test]
async fn errors_fault_fails_the_given_fraction() {
    let s = start(0.0).await;
    let c = client();
    let r = fault(&c, &s, json!({"kind": "errors", "value": 0.5})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        call(&c, &s, Method::GET, "/admin/fault", "").await.json(),
        json!({"kind": "errors", "value": 0.5})
    );
    let mut failed = 0;
    for _ in 0..200 {
        let r = post(
            &c,
            &s,
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 1})),
        )
        .await;
        if r.status == 500 {
            assert_openai_error(&r, 500);
            failed += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!((60..=140).contains(&failed), "{failed} of 200 failed");
    fault(&c, &s, json!({"kind": "errors", "value": 1.0})).await;
    assert_eq!(
        post(
            &c,
            &s,
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 1}))
        )
        .await
        .status,
        500
    );
    fault(&c, &s, json!({"kind": "none"})).await;
    assert_eq!(
        post(
            &c,
            &s,
            "/v1/chat/completions",
            chat("hi", json!({"max_tokens": 1}))
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn slow_health_fault_answers_health_late_and_generates_as_usual() {
    let s = start(0.0).await;
    let c = client();
    let r = fault(&c, &s, json!({"kind": "slow_health", "value": 1500})).await;
    assert_eq!(r.json(), json!({"kind": "slow_health", "value": 1500.0}));
    let health = call(&c, &s, Method::GET, "/health", "");
    tokio::pin!(health);
    // A generation goes through while the health check waits.
    let generation = post(
        &c,
        &s,
        "/v1/chat/completions",
        chat("hi", json!({"max_tokens": 3})),
    );
    let r = tokio::select! {
        biased;
        r = generation => r,
        h = &mut health => panic!("/health answered before its delay: {}", h.status),
    };
    assert_eq!(r.status, 200, "{}", r.body);
    let status = tokio::time::timeout(Duration::from_secs(10), health)
        .await
        .unwrap()
        .status;
    assert_eq!(status, 200);
    // The default delay, and cleared.
    let r = fault(&c, &s, json!({"kind": "slow_health"})).await;
    assert_eq!(r.json(), json!({"kind": "slow_health", "value": 2000.0}));
    fault(&c, &s, json!({"kind": "none"})).await;
    assert_eq!(call(&c, &s, Method::GET, "/health", "").await.status, 200);
}

#[tokio::test]
async fn bad_fault_bodies_are_rejected() {
    let s = start(0.0).await;
    let c = client();
    for body in [
        "{}",
        "nope",
        r#"{"kind": "explode"}"#,
        r#"{"kind": 3}"#,
        r#"{"kind": "errors", "value": 1.5}"#,
        r#"{"kind": "slow", "value": -1}"#,
        r#"{"kind": "slow", "value": "fast"}"#,
        r#"{"kind": "slow_health", "value": -5}"#,
    ] {
        let r = call(&c, &s, Method::POST, "/admin/fault", body).await;
        let v = assert_openai_error(&r, 400);
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        call(&c, &s, Method::GET, "/admin/fault", "").await.json(),
        json!({"kind": "none"})
    );
    let r = fault(&c, &s, json!({"kind": "slow"})).await;
    assert_eq!(r.json(), json!({"kind": "slow", "value": 10.0}));
}

#[tokio::test]
async fn hang_fault_answers_nothing_until_cleared() {
    let s = start(0.0).await;
    let c = client();
    fault(&c, &s, json!({"kind": "hang"})).await;
    // Health keeps answering 200 while hung, as real engines do.
    assert_eq!(call(&c, &s, Method::GET, "/health", "").await.status, 200);
    let pending = {
        let c = c.clone();
        let addr = s.addr;
        tokio::spawn(async move {
            let req = Request::post(format!("http://{addr}/v1/chat/completions"))
                .body(Full::new(Bytes::from(
                    chat("are you there?", json!({"max_tokens": 3})).to_string(),
                )))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "a hung engine must not answer");
    fault(&c, &s, json!({"kind": "none"})).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn a_poison_request_hangs_the_engine_for_everyone() {
    let s = start_config(0.0, EngineParams::default(), Some("XYZZY-POISON")).await;
    let c = client();
    // Ordinary requests are served.
    let ok = post(
        &c,
        &s,
        "/v1/chat/completions",
        chat("hello", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(ok.status, 200);
    let send = |text: &'static str| {
        let c = c.clone();
        let addr = s.addr;
        tokio::spawn(async move {
            let req = Request::post(format!("http://{addr}/v1/chat/completions"))
                .body(Full::new(Bytes::from(
                    chat(text, json!({"max_tokens": 3})).to_string(),
                )))
                .unwrap();
            c.request(req).await.map(|r| r.status())
        })
    };
    let poison = send("please XYZZY-POISON now");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = send("an innocent request");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poison.is_finished(), "the poison request must hang");
    assert!(!after.is_finished(), "the hung engine serves nobody");
    // Health still says 200, as a real hung engine's would.
    assert_eq!(call(&c, &s, Method::GET, "/health", "").await.status, 200);
    let fault = call(&c, &s, Method::GET, "/admin/fault", "").await;
    assert_eq!(fault.json()["kind"], "hang");
}

#[tokio::test]
async fn hang_stops_in_flight_streams() {
    // Real time, so the stream is still running when the fault arrives.
    let s = start(1.0).await;
    let c = client();
    let req = Request::post(format!("http://{}/v1/chat/completions", s.addr))
        .body(Full::new(Bytes::from(
            chat(
                "long answer",
                json!({"max_tokens": 400, "ignore_eos": true, "stream": true}),
            )
            .to_string(),
        )))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Read a little, then hang the engine.
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    fault(&c, &s, json!({"kind": "hang"})).await;
    // Drain what was already produced, then nothing more comes.
    let hung_at = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(400), body.frame()).await {
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("stream ended while hung: {other:?}"),
            Err(_) => break,
        }
        assert!(
            hung_at.elapsed() < Duration::from_secs(3),
            "stream kept producing while hung"
        );
    }
    fault(&c, &s, json!({"kind": "none"})).await;
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn slow_fault_slows_steps() {
    let s = start(1.0).await;
    let c = client();
    let timed = |c: HttpClient, addr: SocketAddr| async move {
        let t = Instant::now();
        let req = Request::post(format!("http://{addr}/v1/completions"))
            .body(Full::new(Bytes::from(
                json!({"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 10, "ignore_eos": true})
                    .to_string(),
            )))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        resp.into_body().collect().await.unwrap();
        t.elapsed()
    };
    let normal = timed(c.clone(), s.addr).await;
    fault(&c, &s, json!({"kind": "slow", "value": 5})).await;
    let slow = timed(c.clone(), s.addr).await;
    // 10 steps of ~5 ms: ~50 ms normally, ~250 ms at 5x.
    assert!(normal >= Duration::from_millis(40), "{normal:?}");
    assert!(slow >= normal * 3, "normal {normal:?} slow {slow:?}");
    fault(&c, &s, json!({"kind": "none"})).await;
    let back = timed(c.clone(), s.addr).await;
    assert!(back < slow / 2, "back {back:?} slow {slow:?}");
}

#[tokio::test]
async fn real_time_pacing_follows_the_step_model() {
    let s = start(1.0).await;
    let c = client();
    let t = Instant::now();
    let r = post(
        &c,
        &s,
        "/v1/completions",
        json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 20, "ignore_eos": true}),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    // 20 steps of T0 + small terms (≈ 5-6.5 ms each).
    let p = EngineParams::default();
    let model = Duration::from_micros((20.0 * (p.step_fixed_us + 100.0)) as u64);
    assert!(
        took >= model.mul_f64(0.9) && took <= model.mul_f64(2.0) + Duration::from_millis(50),
        "took {took:?}, model {model:?}"
    );
}

#[tokio::test]
async fn disconnect_aborts_and_frees_kv() {
    let s = start(1.0).await;
    let c = client();
    {
        let req = Request::post(format!("http://{}/v1/completions", s.addr))
            .body(Full::new(Bytes::from(json!({"model": MODEL, "prompt": "a long prompt ".repeat(500), "max_tokens": 2000, "ignore_eos": true, "stream": true}).to_string())))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        // Dropping the body closes the connection: the client went away.
    }
    let metric = |m: &str, name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = call(&c, &s, Method::GET, "/metrics", "").await.body;
        if metric(&m, "vllm:num_requests_running") == 0.0
            && metric(&m, "vllm:kv_cache_usage_perc") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "request was not aborted:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn priority_probe_overtakes_a_saturated_engine() {
    // Real time: 300 long requests saturate 256 slots; a probe at the highest priority
    // still gets its answer within a few steps.
    let s = start(1.0).await;
    let c = client();
    let mut load = Vec::new();
    for i in 0..300 {
        let c = c.clone();
        let addr = s.addr;
        load.push(tokio::spawn(async move {
            let req = Request::post(format!("http://{addr}/v1/completions"))
                .body(Full::new(Bytes::from(json!({"model": MODEL, "prompt": format!("request {i} "), "max_tokens": 2000, "ignore_eos": true}).to_string())))
                .unwrap();
            let _ = c.request(req).await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let r = post(
        &c,
        &s,
        "/v1/chat/completions",
        chat("probe", json!({"max_tokens": 1, "priority": -100})),
    )
    .await;
    assert_eq!(r.status, 200);
    // Queued behind the load it would wait for a slot for tens of seconds.
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "probe took {:?}",
        t.elapsed()
    );
    for h in load {
        h.abort();
    }
}

#[tokio::test]
async fn many_concurrent_requests_in_zero_delay_mode() {
    let s = start(0.0).await;
    let c = client();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let c = c.clone();
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let req = Request::post(format!("http://{addr}/v1/chat/completions"))
                .body(Full::new(Bytes::from(
                    chat(
                        &format!("q{i}"),
                        json!({"max_tokens": 8, "ignore_eos": true, "stream": i % 2 == 0}),
                    )
                    .to_string(),
                )))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    for t in tasks {
        let body = t.await.unwrap();
        assert!(!body.is_empty());
    }
    assert!(t.elapsed() < Duration::from_secs(20));
}

/// Child half of `crash_fault_exits_the_process`: serves until killed.
#[test]
fn crash_child_server() {
    if std::env::var("SLUICE_ENGINE_CRASH_CHILD").is_err() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT={}", listener.local_addr().unwrap().port());
        let config = ServerConfig {
            model: MODEL.into(),
            params: EngineParams::default(),
            time_scale: 0.0,
            seed: 1,
            poison: None,
        };
        let _ = serve(listener, config, std::future::pending()).await;
    });
}

#[test]
fn crash_fault_exits_the_process() {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "crash_child_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SLUICE_ENGINE_CRASH_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut port = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // The harness prints "test crash_child_server ... " on the same line.
        if let Some(p) = line.split("PORT=").nth(1) {
            port = Some(p.trim().parse::<u16>().unwrap());
            break;
        }
    }
    let port = port.expect("child printed its port");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let c = client();
        let s = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _stop: oneshot::channel().0,
        };
        let r = fault(&c, &s, json!({"kind": "crash"})).await;
        r.status
    });
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(sluice_engine::server::CRASH_EXIT_CODE));
            break;
        }
        assert!(Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// As vLLM does, an answer is named after the request's `x-request-id`
/// (`chatcmpl-<id>`); an id unsafe in JSON as it is gets the engine's own name.
#[tokio::test]
async fn answers_are_named_after_x_request_id_as_vllm_names_them() {
    let s = start(0.0).await;
    let c = client();
    let named = |id: &'static str, stream: bool| {
        let body = chat(
            "Name me",
            json!({"max_tokens": 3, "ignore_eos": true, "stream": stream}),
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/v1/chat/completions", s.addr))
            .header("content-type", "application/json")
            .header("x-request-id", id)
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let c = c.clone();
        async move {
            let resp = c.request(req).await.unwrap();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    };
    let whole: Value = serde_json::from_str(&named("trace-1.0", false).await).unwrap();
    assert_eq!(whole["id"], "chatcmpl-trace-1.0");
    let streamed = named("trace-2.5", true).await;
    let events = sse_events(&streamed);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["id"], "chatcmpl-trace-2.5");
    let unsafe_id: Value = serde_json::from_str(&named("quo\"te", false).await).unwrap();
    let id = unsafe_id["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && !id.contains("quo"), "{id}");
}
