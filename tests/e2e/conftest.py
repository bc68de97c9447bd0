"""Process fixtures for the end-to-end tests: real `sluice` replicas and nodes on
loopback ports, driven with the official openai client."""

import os
import select
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

SLUICE = os.environ.get("SLUICE_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "target", "debug", "sluice"))
MODEL = "llama-3.1-8b-instruct"


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
    def __init__(self, args, prefix):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            self.url = _read_ready(self.proc, prefix)
        except Exception:
            self.proc.kill()
            raise

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.proc.args} did not stop on SIGTERM within {timeout}s")
        return self.proc.returncode


def start_replica(seed=0, time_scale=1.0, model=None):
    extra = ["--model", model] if model else []
    return Proc([SLUICE, "replica", "sim", "--port", "0", "--seed", str(seed), "--time-scale", str(time_scale),
                 *extra], "sluice replica listening on ")


def start_node(replica_urls=(), config="", extra=()):
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(config)
    cfg.close()
    args = [SLUICE, "node", "start", "--http", "127.0.0.1:0", "--config", cfg.name, *extra]
    for u in replica_urls:
        args += ["--replica", u]
    return Proc(args, "sluice node listening on ")


def http(method, url, body=None, headers=None):
    """A raw request (for what the openai client will not send, like malformed JSON)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metric(base, name, labels=None):
    """Sum of a metric's samples on a node's /metrics (optionally matching labels)."""
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


@pytest.fixture(scope="module")
def replicas():
    procs = [start_replica(seed=i) for i in range(2)]
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def node(replicas):
    n = start_node([p.url for p in replicas], config="[router]\nmax_body_bytes = 65536\n")
    yield n
    assert n.stop() == 0
