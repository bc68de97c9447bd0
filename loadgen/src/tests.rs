//! End-to-end tests of the load generator against the in-process test server.

use super::test_server::{Behavior, Reply, TestServer};
use super::*;
use std::time::{Duration, Instant};

fn closed(url: &str, concurrency: usize, duration_ms: u64) -> LoadConfig {
    let mut c = LoadConfig::new(url, Mode::Closed { concurrency });
    c.duration = Duration::from_millis(duration_ms);
    c.warmup = Duration::ZERO;
    c
}

fn open(url: &str, rate_per_s: f64, max_in_flight: usize, duration_ms: u64) -> LoadConfig {
    let mut c = closed(url, 1, duration_ms);
    c.mode = Mode::Open {
        rate_per_s,
        max_in_flight,
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_and_times_match_the_server() {
    let server = TestServer::start(Behavior::json(5)).await;
    let cfg = closed(&server.url, 4, 600);
    let began = Instant::now();
    let r = run(&cfg).await.unwrap();
    let took = began.elapsed();
    // Every request the server saw is counted, once, and succeeded.
    assert_eq!(server.requests(), r.sent, "{r}");
    assert_eq!(r.ok, r.sent);
    assert_eq!(r.errors, 0);
    // 4 connections × 600 ms / (≥ 5 ms each) ≤ 480 requests; far fewer means the
    // generator itself is slow or serialising.
    assert!((200..=484).contains(&r.sent), "{r}");
    assert_eq!(
        server
            .seen
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        4,
        "keep-alive, one connection each"
    );
    assert!(
        r.latency_us.p50 >= 5_000 && r.latency_us.p50 < 20_000,
        "{r}"
    );
    assert!(
        r.ttfb_us.p50 >= 5_000 && r.ttfb_us.p50 <= r.latency_us.p50,
        "{r}"
    );
    assert_eq!(r.latency_us.count, r.ok);
    assert!((r.rps - r.ok as f64 / 0.6).abs() < 1.0, "{r}");
    assert!(r.dropped.is_none() && r.schedule_lag_us.is_none());
    assert!(took < Duration::from_secs(2), "run took {took:?}");
    assert_eq!(
        server.seen.paths.lock().unwrap().iter().collect::<Vec<_>>(),
        ["/v1/chat/completions"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_requests_are_sent_but_not_counted() {
    let server = TestServer::start(Behavior::json(5)).await;
    let mut cfg = closed(&server.url, 2, 300);
    cfg.warmup = Duration::from_millis(300);
    let r = run(&cfg).await.unwrap();
    let total = server.requests();
    assert!(
        r.sent > 0 && total > r.sent + r.sent / 2,
        "server saw {total}, report {r}"
    );
    assert!(r.sent <= 2 * 300 / 5 + 2, "{r}");
    assert!((r.duration_s - 0.3).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_exactly_the_timetable() {
    let server = TestServer::start(Behavior::json(2)).await;
    let mut cfg = open(&server.url, 200.0, 100, 1000);
    cfg.endpoint = Endpoint::Completion;
    let r = run(&cfg).await.unwrap();
    assert_eq!(r.sent, 200, "{r}");
    assert_eq!(r.dropped, Some(0));
    assert_eq!(server.requests(), 200);
    assert_eq!(r.ok, 200);
    // Measured from the scheduled start, so never below the server's delay.
    assert!(
        r.latency_us.p50 >= 2_000 && r.latency_us.p50 < 20_000,
        "{r}"
    );
    let lag = r.schedule_lag_us.unwrap();
    // Every scheduled send is accounted for; how late the dispatcher ran is reported,
    // not asserted (it depends on what else the machine is doing).
    assert_eq!(lag.count, 200);
    assert_eq!(
        server.seen.paths.lock().unwrap().iter().collect::<Vec<_>>(),
        ["/v1/completions"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_drops_what_exceeds_max_in_flight() {
    let server = TestServer::start(Behavior::json(50)).await;
    let cfg = open(&server.url, 1000.0, 2, 500);
    let r = run(&cfg).await.unwrap();
    let dropped = r.dropped.unwrap();
    assert_eq!(r.sent + dropped, 500, "{r}");
    // Two slots, each busy ≥ 50 ms: at most 2 × 500 / 50 (+2 at the edges) go out.
    assert!((8..=22).contains(&r.sent), "{r}");
    assert_eq!(server.requests(), r.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_timetable_and_counts_queueing_at_a_saturated_server() {
    // The server answers one request at a time, 20 ms each: 50/s. Offered 100/s for
    // 300 ms, the open loop still starts all 30 requests on time, and the i-th waits
    // behind the earlier ones: the last is answered ≈ 30 × 20 ms after the start but
    // was due at 290 ms, so its latency is ≈ 310 ms. A closed loop (or a generator
    // that waited for answers) would have sent about 15 and seen only ~20 ms each.
    let server = TestServer::start(Behavior {
        serial: true,
        ..Behavior::json(20)
    })
    .await;
    let r = run(&open(&server.url, 100.0, 100, 300)).await.unwrap();
    assert_eq!(r.sent, 30, "{r}");
    assert_eq!(r.ok, 30, "{r}");
    assert_eq!(r.schedule_lag_us.unwrap().count, 30, "{r}");
    // Queueing behind the serial server is counted from each scheduled start.
    assert!(r.latency_us.max >= 280_000, "{r}");
    assert!(r.latency_us.p50 >= 100_000, "{r}");

    let r = run(&closed(&server.url, 1, 300)).await.unwrap();
    // A closed loop waits for each answer, so it sends about half as many.
    assert!(r.sent <= 16, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_must_end_with_done() {
    let gap = Duration::from_millis(4);
    let server = TestServer::start(Behavior {
        reply: Reply::Sse { done: true },
        head_delay: Duration::from_millis(2),
        chunk_gap: gap,
        serial: false,
    })
    .await;
    let mut cfg = closed(&server.url, 2, 300);
    cfg.stream = true;
    let r = run(&cfg).await.unwrap();
    assert!(r.sent > 10);
    assert_eq!(r.ok, r.sent, "{r}");
    // First byte after the head delay, last one a gap later.
    assert!(r.ttfb_us.p50 >= 2_000, "{r}");
    assert!(r.latency_us.p50 >= r.ttfb_us.p50 + 4_000, "{r}");

    let server = TestServer::start(Behavior {
        reply: Reply::Sse { done: false },
        ..Behavior::json(0)
    })
    .await;
    let mut cfg = closed(&server.url, 2, 200);
    cfg.stream = true;
    let r = run(&cfg).await.unwrap();
    assert!(r.sent > 0);
    assert_eq!(r.ok, 0);
    assert_eq!(r.incomplete_streams, r.sent, "{r}");
    assert_eq!(r.latency_us.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_counted_by_status() {
    let server = TestServer::start(Behavior {
        reply: Reply::Json { status: 503 },
        ..Behavior::json(1)
    })
    .await;
    let r = run(&closed(&server.url, 2, 200)).await.unwrap();
    assert!(r.sent > 0);
    assert_eq!(r.ok, 0);
    assert_eq!(r.errors, r.sent);
    assert_eq!(r.errors_by_status.get(&503), Some(&r.sent), "{r}");
    let text = r.to_string();
    assert!(text.contains("HTTP 503"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_rotate_over_distinct_headers() {
    let server = TestServer::start(Behavior::json(0)).await;
    let mut cfg = closed(&server.url, 2, 200);
    cfg.sessions = 5;
    run(&cfg).await.unwrap();
    assert_eq!(server.seen.sessions.lock().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_transport_errors() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = run(&closed(&format!("http://127.0.0.1:{port}"), 1, 100))
        .await
        .unwrap();
    assert!(r.sent > 0);
    assert_eq!(r.transport_errors, r.sent, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_and_the_run_still_ends() {
    let server = TestServer::start(Behavior::json(5_000)).await;
    let mut cfg = closed(&server.url, 2, 300);
    cfg.request_timeout = Duration::from_millis(100);
    let began = Instant::now();
    let r = run(&cfg).await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(2));
    assert!((4..=8).contains(&r.sent), "{r}");
    assert_eq!(r.timeouts, r.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_serialises_to_json() {
    let server = TestServer::start(Behavior::json(0)).await;
    let r = run(&open(&server.url, 100.0, 10, 200)).await.unwrap();
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(v["mode"]["kind"], "open");
    assert_eq!(v["endpoint"], "chat");
    assert_eq!(v["sent"], 20);
    assert!(v["latency_us"]["p99"].as_u64().unwrap() > 0);
    assert!(v["schedule_lag_us"]["p50"].is_u64());
}
