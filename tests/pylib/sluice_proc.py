"""Helpers both Python suites use (tests/e2e and tests/real_engines): `sluice` processes
on loopback ports, raw HTTP, and reading /metrics."""

import json
import os
import select
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target", "debug", "sluice"))


def _read_ready(proc, prefix, timeout=60.0):
    """Waits for the line a sluice process prints once it listens; returns the URL."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before listening")
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            continue
        buf += chunk
        for line in buf.decode(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    raise RuntimeError(f"{proc.args} did not report listening within {timeout}s")


class Proc:
    """A sluice process that prints `<prefix><url>` once it listens."""

    def __init__(self, args, prefix, timeout=60.0, **popen):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, **popen)
        try:
            self.url = _read_ready(self.proc, prefix, timeout)
        except Exception:
            self.proc.kill()
            raise

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.proc.args} did not stop on SIGTERM within {timeout}s")
        return self.proc.returncode


def start_node(replica_urls=(), config="", extra=(), timeout=60.0):
    """A node on a free loopback port fronting `replica_urls` (or launching engines from
    the config's `[replicas] command`); `timeout` covers launched engines' start."""
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(config)
    cfg.close()
    args = [SLUICE, "node", "start", "--http", "127.0.0.1:0", "--config", cfg.name, *extra]
    for u in replica_urls:
        args += ["--replica", u]
    return Proc(args, "sluice node listening on ", timeout=timeout)


def http(method, url, body=None, headers=None, timeout=30):
    """A raw request; returns (status, headers, body bytes), also for error statuses.
    A dict body is sent as JSON."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metric(base, name, labels=None):
    """Sum of a metric's samples on /metrics (optionally matching labels); works for a
    node's and for vLLM's (`vllm:num_requests_running{engine="0",model_name="..."}`)."""
    _, _, body = http("GET", base + "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        total += float(value)
    return total


def wait_until(pred, timeout=10.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return pred()


def read_stream(stream, on_piece=None):
    """Text pieces, finish reasons, ids and usage of a streamed answer as the openai client
    reads it (chat or completions); `on_piece(count)` is called after each piece of text."""
    pieces, finishes, ids, usage = [], [], set(), None
    for chunk in stream:
        ids.add(chunk.id)
        usage = chunk.usage or usage
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            if piece:
                pieces.append(piece)
                if on_piece:
                    on_piece(len(pieces))
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    return pieces, finishes, ids, usage


def hang_up_after(stream, chunks, while_running):
    """Reads `chunks` chunks of a streamed answer, calls `while_running()` (the request is
    still in flight then), and closes the stream as a client that gives up would."""
    for got, _ in enumerate(stream, start=1):
        if got == chunks:
            while_running()
            break
    stream.close()
