"""Fixtures for the real-engine suite: a real vLLM (CPU build, in .venv-vllm) serving a tiny
random-weight Llama, behind our node or alone.

The tests run with the repo's .venv python (openai, pytest); vLLM is only ever a
subprocess, started with scripts/real_engines/vllm_serve.sh in its own process group so
that stopping it also stops its EngineCore and worker processes (see
../shared/REAL_ENGINES.md). A replica takes ~4.5 GB of memory: at most MAX_ENGINES (3)
run at once from one pytest process.

Environment:
  SLUICE_BIN                 the node binary (default target/debug/sluice)
  SLUICE_VLLM_VENV           vLLM's virtual environment (default .venv-vllm; installed by
                             scripts/real_engines/install_vllm.sh)
  SLUICE_REAL_ENGINE_CACHE   where the tiny model is built (default target/real-engines/tiny-llama;
                             vllm_serve.sh keeps the compile caches in target/real-engines/compile-cache)
  SLUICE_VLLM_READY_TIMEOUT  seconds to wait for /health (default 240)
  SLUICE_VLLM_EXTRA_ARGS     extra vLLM flags for every engine, split on whitespace
                             (e.g. "--enforce-eager")
  SLUICE_REAL_ENGINES_REQUIRED=1  fail instead of skip when .venv-vllm is missing
"""

import atexit
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from sluice_proc import ROOT, SLUICE, Proc, http, metric, start_node, wait_until  # noqa: E402,F401
VLLM_VENV = os.environ.get("SLUICE_VLLM_VENV", os.path.join(ROOT, ".venv-vllm"))
VLLM_PYTHON = os.path.join(VLLM_VENV, "bin", "python")
VLLM_SERVE = os.path.join(ROOT, "scripts", "real_engines", "vllm_serve.sh")
MAKE_TINY_MODEL = os.path.join(ROOT, "scripts", "real_engines", "make_tiny_model.py")
MODEL_CACHE = os.environ.get("SLUICE_REAL_ENGINE_CACHE", os.path.join(ROOT, "target", "real-engines", "tiny-llama"))
READY_TIMEOUT = float(os.environ.get("SLUICE_VLLM_READY_TIMEOUT", "240"))
EXTRA_ARGS = tuple(os.environ.get("SLUICE_VLLM_EXTRA_ARGS", "").split())
MODEL = "tiny-llama"  # the served model name
MAX_ENGINES = 3

# ---------------------------------------------------------------------------------------
# Process groups


Pid = collections.namedtuple("Pid", "pid ppid pgid state comm")


def _proc_stat(pid):
    """(comm, state, ppid, pgrp) of a pid from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return comm, fields[0], int(fields[1]), int(fields[2])


def group_procs(pgid, zombies=False):
    """The live processes of process group `pgid` (read from /proc), as Pid tuples.
    Zombies (exited, not yet reaped: they hold no memory) are left out unless asked."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st is None:
            continue
        comm, state, ppid, pgrp = st
        if pgrp != pgid or (state == "Z" and not zombies):
            continue
        out.append(Pid(int(entry), ppid, pgrp, state, comm))
    return sorted(out)


def group_pids(pgid, zombies=False):
    """The pids of the live processes of process group `pgid`."""
    return [p.pid for p in group_procs(pgid, zombies)]


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command_template(model_dir, name=MODEL, extra=()):
    """A node's `[replicas] command` for vLLM: the node fills {host} and {port} and splits
    the words on whitespace (so paths must have no spaces)."""
    return " ".join([VLLM_SERVE, model_dir, name, "{host}", "{port}", *EXTRA_ARGS, *extra])


def vllm_env(env=None):
    """The environment vLLM is started with: ours without this venv's Python settings,
    and `env` on top (vllm_serve.sh adds vLLM's own)."""
    e = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        e.pop(k, None)
    e.update(env or {})
    return e


# ---------------------------------------------------------------------------------------
# vLLM engines

_live = []  # engines this pytest process started and has not stopped


class Engine:
    """One vLLM server in its own process group. `url` is its base URL (no /v1)."""

    def __init__(self, model_dir, name, port, extra_args, env, log_dir):
        self.model_dir, self.name, self.port = model_dir, name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(log_dir, f"vllm-{name}-{port}.log")
        self.args = [VLLM_SERVE, model_dir, name, "127.0.0.1", str(port), *EXTRA_ARGS, *extra_args]
        self._log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=vllm_env(env), start_new_session=True,
        )
        self.pid = self.pgid = self.proc.pid  # setsid: the leader's pid is the group id
        self.ready_s = None
        _live.append(self)

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def healthy(self):
        try:
            status, _, _ = http("GET", self.url + "/health", timeout=2)
            return status == 200
        except OSError:
            return False

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM {self.name} on port {self.port} exited with {self.proc.returncode} "
                    f"before it was ready; log {self.log_path}:\n{self.log_tail()}")
            if self.healthy():
                self.ready_s = time.monotonic() - self.started
                return self
            time.sleep(0.25)
        raise RuntimeError(
            f"vLLM {self.name} on port {self.port} not ready within {timeout:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}")

    def procs(self):
        return group_procs(self.pgid)

    def pause(self):
        """A silent hang: every process of the engine stopped (SIGSTOP)."""
        signal_group(self.pgid, signal.SIGSTOP)

    def resume(self):
        signal_group(self.pgid, signal.SIGCONT)

    def stop(self, grace=20.0):
        """SIGTERMs the whole group, SIGKILLs what is left after `grace` seconds, and
        checks no process of the group remains. Returns the leader's exit code."""
        if self in _live:
            _live.remove(self)
        signal_group(self.pgid, signal.SIGCONT)  # a paused engine cannot act on SIGTERM
        signal_group(self.pgid, signal.SIGTERM)
        gone = wait_until(lambda: self.proc.poll() is not None and not group_pids(self.pgid), grace, 0.1)
        if not gone:
            signal_group(self.pgid, signal.SIGKILL)
            wait_until(lambda: self.proc.poll() is not None and not group_pids(self.pgid), 10, 0.1)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        left = group_procs(self.pgid)
        assert not left, f"vLLM {self.name}: processes of group {self.pgid} outlived SIGKILL: {left}"
        return self.proc.returncode


def launch_vllm(model_dir, name=MODEL, extra_args=(), env=None, log_dir=None):
    """Starts vLLM without waiting (call .wait_ready()); lets several start in parallel."""
    if len(_live) >= MAX_ENGINES:
        raise RuntimeError(f"{len(_live)} vLLM engines already run (~4.5 GB each); stop one first")
    log_dir = log_dir or tempfile.mkdtemp(prefix="sluice-vllm-")
    return Engine(model_dir, name, free_port(), tuple(extra_args), env, log_dir)


def start_vllm(model_dir, name=MODEL, extra_args=(), env=None, log_dir=None, attempts=2):
    """A ready vLLM engine on a free port (retried once if the port was taken meanwhile)."""
    for attempt in range(attempts):
        eng = launch_vllm(model_dir, name, extra_args, env, log_dir)
        try:
            return eng.wait_ready()
        except RuntimeError:
            eng.stop()
            if attempt + 1 < attempts and "address already in use" in eng.log_tail().lower():
                continue
            raise


def start_vllms(n, model_dir, name=MODEL, extra_args=(), env=None, log_dir=None):
    """n ready engines, started in parallel (each still takes its own ~1-4 GB while starting)."""
    engines = [launch_vllm(model_dir, name, extra_args, env, log_dir) for _ in range(n)]
    try:
        for e in engines:
            e.wait_ready()
    except Exception:
        for e in engines:
            e.stop()
        raise
    return engines


@atexit.register
def _kill_leftovers():
    """Last resort (pytest killed by an exception outside the hooks): no engine outlives us."""
    for e in list(_live):
        signal_group(e.pgid, signal.SIGCONT)
        signal_group(e.pgid, signal.SIGKILL)


def _vllm_missing():
    if os.path.exists(VLLM_PYTHON):
        return None
    return (f"no vLLM venv at {VLLM_VENV}: run scripts/real_engines/install_vllm.sh "
            f"(or set SLUICE_VLLM_VENV)")


def pytest_sessionfinish(session, exitstatus):
    for e in list(_live):  # a fixture that failed half-way must not leave engines behind
        try:
            e.stop()
        except Exception as err:  # noqa: BLE001
            print(f"stopping vLLM {e.name}: {err}", file=sys.stderr)


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny Llama's directory, built once (idempotent: a complete cache is reused)."""
    missing = _vllm_missing()
    if missing:
        if os.environ.get("SLUICE_REAL_ENGINES_REQUIRED") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    out = subprocess.run([VLLM_PYTHON, MAKE_TINY_MODEL, MODEL_CACHE], env=vllm_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"make_tiny_model.py failed:\n{out.stdout}\n{out.stderr}"
    return os.path.abspath(MODEL_CACHE)


@pytest.fixture(scope="session")
def vllm_logs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("vllm-logs"))


@pytest.fixture(scope="module")
def vllm_one(tiny_model, vllm_logs):
    """One ready engine serving `MODEL` (module-scoped: tests may stop or pause it)."""
    eng = start_vllm(tiny_model, log_dir=vllm_logs)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def vllm_two(tiny_model, vllm_logs):
    """Two ready engines serving `MODEL`, started in parallel."""
    engines = start_vllms(2, tiny_model, log_dir=vllm_logs)
    yield engines
    for e in engines:
        e.stop()
