//! The streaming body: tokens as server-sent events, written as they arrive from the
//! engine task, so that a client sees each token when the engine makes it.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::engine_task::{AbortGuard, Out, ENGINE_GONE};
use super::format::Format;
use crate::openai::ApiError;

/// The streaming response of a request whose `first` message has arrived.
pub(super) fn response(
    rx: mpsc::UnboundedReceiver<Out>,
    first: Out,
    fmt: Format,
    include_usage: bool,
    guard: AbortGuard,
) -> Response {
    let stream = SseStream {
        rx,
        pending: Some(first),
        fmt,
        include_usage,
        sent: 0,
        done: false,
        guard,
    };
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The SSE body of a streaming response: one chunk per token (those available when
/// polled are written together), the usage chunk if asked for, then `[DONE]`.
struct SseStream {
    rx: mpsc::UnboundedReceiver<Out>,
    pending: Option<Out>,
    fmt: Format,
    include_usage: bool,
    sent: u32,
    done: bool,
    guard: AbortGuard,
}

impl SseStream {
    fn render(&mut self, msg: Out, out: &mut Vec<u8>) {
        match msg {
            Out::Token(i) => {
                self.fmt.token(out, i, self.sent == 0);
                self.sent += 1;
            }
            Out::Last(i, reason, usage) => {
                self.fmt
                    .last(out, (i, self.sent == 0), reason, &usage, self.include_usage);
                self.sent += 1;
                self.done = true;
                self.guard.disarm();
            }
            Out::Rejected(m) => {
                let e = ApiError::new(500, "InternalServerError", m);
                let seq = super::responses::next_sequence_number(self.sent);
                out.extend_from_slice(e.stream_event(self.fmt.endpoint, seq).as_bytes());
                self.done = true;
                self.guard.disarm();
            }
        }
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        if let Some(m) = this.pending.take() {
            this.render(m, &mut out);
        }
        while !this.done && out.len() < 64 * 1024 {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(m)) => this.render(m, &mut out),
                Poll::Ready(None) => {
                    this.render(Out::Rejected(ENGINE_GONE.into()), &mut out);
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Bytes::from(out))))
    }
}
