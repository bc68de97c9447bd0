//! A tiny HTTP/1.1 keep-alive server for the load generator's own tests: it answers
//! every request with a fixed reply after a fixed delay and counts what it saw.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// A JSON body with this status.
    Json { status: u16 },
    /// A chunked SSE stream: one event, then (after `Behavior::chunk_gap`) the
    /// `data: [DONE]` event if `done`.
    Sse { done: bool },
}

#[derive(Debug, Clone, Copy)]
pub struct Behavior {
    pub reply: Reply,
    /// Before the response head.
    pub head_delay: Duration,
    /// SSE only: between the first event and the end of the stream.
    pub chunk_gap: Duration,
    /// Answer one request at a time across all connections, like a saturated
    /// single-slot server: later requests queue.
    pub serial: bool,
}

impl Behavior {
    pub fn json(delay_ms: u64) -> Self {
        Self {
            reply: Reply::Json { status: 200 },
            head_delay: Duration::from_millis(delay_ms),
            chunk_gap: Duration::ZERO,
            serial: false,
        }
    }
}

#[derive(Default)]
pub struct Seen {
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub sessions: Mutex<BTreeSet<String>>,
    pub paths: Mutex<BTreeSet<String>>,
    serial: tokio::sync::Mutex<()>,
}

pub struct TestServer {
    pub url: String,
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, behavior, s.clone()));
            }
        });
        Self { url, seen, task }
    }

    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn serve(mut stream: TcpStream, b: Behavior, seen: Arc<Seen>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request: head, then Content-Length bytes of body.
        let (head_end, body_len) = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let mut len = 0;
                for line in head.lines() {
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if let Some(v) = lower.strip_prefix("x-session-id:") {
                        seen.sessions.lock().unwrap().insert(v.trim().to_owned());
                    }
                }
                if let Some(path) = head.split_whitespace().nth(1) {
                    seen.paths.lock().unwrap().insert(path.to_owned());
                }
                break (end + 4, len);
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + body_len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + body_len);
        seen.requests.fetch_add(1, Ordering::SeqCst);
        let _one_at_a_time = if b.serial {
            Some(seen.serial.lock().await)
        } else {
            None
        };
        if !b.head_delay.is_zero() {
            tokio::time::sleep(b.head_delay).await;
        }
        let ok = match b.reply {
            Reply::Json { status } => {
                let body = r#"{"id":"x","object":"chat.completion","choices":[]}"#;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(resp.as_bytes()).await.is_ok()
            }
            Reply::Sse { done } => sse(&mut stream, done, b.chunk_gap).await.is_ok(),
        };
        if !ok {
            return;
        }
    }
}

async fn sse(stream: &mut TcpStream, done: bool, gap: Duration) -> std::io::Result<()> {
    let event = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    stream
        .write_all(format!("{head}{:x}\r\n{event}\r\n", event.len()).as_bytes())
        .await?;
    if !gap.is_zero() {
        tokio::time::sleep(gap).await;
    }
    let tail = if done { "data: [DONE]\n\n" } else { "" };
    let end = if tail.is_empty() {
        "0\r\n\r\n".to_owned()
    } else {
        format!("{:x}\r\n{tail}\r\n0\r\n\r\n", tail.len())
    };
    stream.write_all(end.as_bytes()).await
}
