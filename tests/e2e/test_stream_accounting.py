"""A stream is metered and accounted when the engine says `[DONE]`, not when its body
ends: the openai client hangs up right after `[DONE]`, and an engine may hold the
connection open a while longer. Here an engine that does both, written for the test."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from conftest import metric, start_node, wait_until

MODEL = "lingering-engine"
# How long the engine keeps a finished stream's connection open.
LINGER_S = 30


class LingeringEngine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json({})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        n = int(req.get("max_tokens") or 1)
        if not req.get("stream"):
            # The node's probes.
            self._json({"id": "p", "object": "chat.completion", "model": MODEL,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * n},
                                     "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def event(obj):
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        for i in range(n):
            event({"id": "s", "object": "chat.completion.chunk", "model": MODEL,
                   "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]})
        if (req.get("stream_options") or {}).get("include_usage"):
            event({"id": "s", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}})
        event(b"[DONE]")
        # The stream is finished; the body's end comes much later.
        time.sleep(LINGER_S)
        try:
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass


@pytest.fixture(scope="module")
def engine():
    server = ThreadingHTTPServer(("127.0.0.1", 0), LingeringEngine)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_stream_is_metered_at_done_though_the_engine_lingers(engine):
    node = start_node([engine])
    try:
        c = openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0, timeout=20)
        for asked_usage, n in ((False, 5), (True, 7)):
            before = metric(node.url, "sluice_completion_tokens_total", {"model": MODEL})
            extra = {"stream_options": {"include_usage": True}} if asked_usage else {}
            started = time.monotonic()
            chunks = list(c.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=n, stream=True, **extra))
            # The client got its answer without waiting for the engine's linger.
            assert time.monotonic() - started < LINGER_S / 2
            assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == n
            assert (chunks[-1].usage is not None) == asked_usage
            # Metered, and no longer in flight, well before the engine closes the body.
            assert wait_until(
                lambda: metric(node.url, "sluice_completion_tokens_total", {"model": MODEL}) == before + n,
                timeout=LINGER_S / 3)
            assert wait_until(lambda: metric(node.url, "sluice_replica_inflight_requests") == 0, timeout=LINGER_S / 3)
        assert metric(node.url, "sluice_usage_missing_total") == 0
    finally:
        assert node.stop() == 0
