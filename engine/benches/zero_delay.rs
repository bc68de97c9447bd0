//! Throughput of the HTTP shell in zero-delay mode (`time_scale = 0`): how many short
//! requests per second one simulated engine answers. Client and server share this
//! machine's cores, so the figure is a lower bound for the server alone.
//!
//! ```text
//! cargo bench -p sluice-engine --bench zero_delay
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_engine::{serve, EngineParams, ServerConfig};

const CONCURRENCY: usize = 64;
const DURATION: Duration = Duration::from_secs(3);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let config = ServerConfig {
            model: "sim".into(),
            params: EngineParams::default(),
            time_scale: 0.0,
            seed: 1,
            poison: None,
        };
        tokio::spawn(serve(listener, config, std::future::pending()));
        for (label, stream, max_tokens) in [
            ("non-streaming, 8 output tokens", false, 8),
            ("streaming, 8 output tokens", true, 8),
            ("non-streaming, 1 output token", false, 1),
        ] {
            let done = Arc::new(AtomicU64::new(0));
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let body = Bytes::from(
                serde_json::json!({
                    "model": "sim",
                    "messages": [{"role": "user", "content": "Say something short about rivers."}],
                    "max_tokens": max_tokens,
                    "ignore_eos": true,
                    "stream": stream,
                })
                .to_string(),
            );
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..CONCURRENCY {
                let (client, body, done) = (client.clone(), body.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    while start.elapsed() < DURATION {
                        let req = Request::post(format!("http://{addr}/v1/chat/completions"))
                            .header("content-type", "application/json")
                            .body(Full::new(body.clone()))
                            .unwrap_or_else(|e| panic!("request: {e}"));
                        let resp = client
                            .request(req)
                            .await
                            .unwrap_or_else(|e| panic!("send: {e}"));
                        assert_eq!(resp.status(), 200);
                        resp.into_body()
                            .collect()
                            .await
                            .unwrap_or_else(|e| panic!("body: {e}"));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let n = done.load(Ordering::Relaxed);
            println!(
                "{label}: {n} requests in {:.1} s = {:.0} req/s ({CONCURRENCY} concurrent keep-alive connections)",
                start.elapsed().as_secs_f64(),
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    });
}
