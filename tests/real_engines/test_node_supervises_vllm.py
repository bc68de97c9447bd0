"""A node that launches vLLM itself from a command template: ready, serving, and after
each kind of failure (the API server killed, its EngineCore killed, the whole engine
silently hung) restarted exactly once, serving again, with no process of the old engine
left behind."""

import os
import signal
import time

import openai
import pytest

from conftest import MODEL, SLUICE, Proc, group_procs, metric, vllm_command_template, vllm_env, wait_until

RESTART_S = 300  # a vLLM restart on two busy cores: ~50-90 s, torch compile included


def _children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.fixture(scope="module")
def node(tiny_model):
    config = f"""
[replicas]
count = 1
command = "{vllm_command_template(tiny_model)}"
start_timeout_s = {RESTART_S}

[prober]
idle_window_ms = 2000
probe_timeout_ms = 3000
failures_to_eject = 2
"""
    env = vllm_env()
    cfg = os.path.join(os.path.dirname(tiny_model), "supervised-node.toml")
    with open(cfg, "w") as f:
        f.write(config)
    n = Proc([SLUICE, "node", "start", "--http", "127.0.0.1:0", "--config", cfg], "sluice node listening on ",
             timeout=RESTART_S, env=env)
    yield n
    groups = {p.pgid for c in _children(n.proc.pid) for p in group_procs(c)}
    assert n.stop(timeout=60) == 0
    # The node's exit takes its engines' whole process groups with it.
    assert wait_until(lambda: not any(group_procs(g) for g in groups), 30), [group_procs(g) for g in groups]


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0, timeout=60)


def engine_group(node):
    """The engine's process group: the node's only child leads it."""
    kids = _children(node.proc.pid)
    assert len(kids) == 1, kids
    procs = group_procs(kids[0])
    assert procs and procs[0].pgid == kids[0]
    return kids[0], procs


def serves(node):
    r = client(node).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    return r.usage.completion_tokens >= 1


def restarted_once_and_serving(node, restarts_before, old_pgid, old_procs):
    assert wait_until(lambda: metric(node.url, "sluice_engine_restarts_total") >= restarts_before + 1, RESTART_S, 1)
    assert wait_until(lambda: metric(node.url, "sluice_replica_available") == 1, 60, 0.5)
    assert serves(node)
    # Every process of the old engine is gone, and exactly one engine runs.
    assert not [p for p in group_procs(old_pgid)], group_procs(old_pgid)
    assert all(not os.path.exists(f"/proc/{p.pid}") or p.pid in {q.pid for q in engine_group(node)[1]}
               for p in old_procs)
    new_pgid, _ = engine_group(node)
    assert new_pgid != old_pgid
    # No restart loop: a while later it is still the one restart, and still serving.
    time.sleep(15)
    assert metric(node.url, "sluice_engine_restarts_total") == restarts_before + 1
    assert engine_group(node)[0] == new_pgid
    assert serves(node)


def test_ready_and_serving_with_the_engines_model(node):
    assert [m.id for m in client(node).models.list().data] == [MODEL]
    assert serves(node)
    assert metric(node.url, "sluice_engine_state", {"state": "ready"}) == 1
    # The template runs vLLM with priority scheduling: the probes are prioritized.
    assert metric(node.url, "sluice_replica_priority_ignored") == 0


def test_kill_9_of_the_api_server_restarts_the_engine_once(node):
    pgid, procs = engine_group(node)
    # The API server, its EngineCore and the EngineCore's worker.
    assert any(p.comm.startswith("VLLM::EngineCor") for p in procs), procs
    before = metric(node.url, "sluice_engine_restarts_total")
    os.kill(pgid, signal.SIGKILL)
    restarted_once_and_serving(node, before, pgid, procs)


def test_kill_9_of_the_engine_core_restarts_the_engine_once(node):
    pgid, procs = engine_group(node)
    core = [p for p in procs if p.comm.startswith("VLLM::EngineCor")]
    assert len(core) == 1, procs
    before = metric(node.url, "sluice_engine_restarts_total")
    os.kill(core[0].pid, signal.SIGKILL)
    restarted_once_and_serving(node, before, pgid, procs)


def test_a_silent_hang_is_ejected_killed_and_restarted(node):
    pgid, procs = engine_group(node)
    before = metric(node.url, "sluice_engine_restarts_total")
    ejections = metric(node.url, "sluice_ejections_total")
    os.killpg(pgid, signal.SIGSTOP)
    assert wait_until(lambda: metric(node.url, "sluice_ejections_total") >= ejections + 1, 120, 0.5)
    restarted_once_and_serving(node, before, pgid, procs)
