"""A node serving several models, as a newcomer meets it: `sluice node start` given no
replicas runs two simulated models. The official client lists both, each request is
served by its own model's replicas, an unknown model is a 404 naming what is served,
and metrics carry the model. In a cluster, a node forwards a model it does not run, and
a stream it handed on survives the loss of the node routing it."""

import json
import os
import subprocess
import tempfile

import pytest
from openai import NotFoundError, OpenAI

from conftest import SLUICE, Proc, metric, start_node, wait_until
from sluice_proc import read_stream

BIG, SMALL = "llama-3.1-8b-instruct", "llama-3.2-3b-instruct"
# The embedded default launches 4 replicas of the first model, then 2 of the second.
BIG_REPLICAS, SMALL_REPLICAS = {"0", "1", "2", "3"}, {"4", "5"}


@pytest.fixture(scope="module")
def node():
    n = start_node(extra=["--time-scale", "0"], timeout=120)
    yield n
    assert n.stop() == 0


def client(node):
    return OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)


def test_the_default_node_lists_both_models(node):
    ids = [m.id for m in client(node).models.list().data]
    assert ids == [BIG, SMALL]


def test_each_model_is_served_by_its_own_replicas(node):
    c = client(node)
    for model, replicas in [(BIG, BIG_REPLICAS), (SMALL, SMALL_REPLICAS)]:
        seen = set()
        for i in range(6):
            raw = c.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "user", "content": f"conversation {i}: hello"}],
                max_tokens=4,
                extra_headers={"x-session-id": f"{model}-{i}"},
            )
            seen.add(raw.headers["x-sluice-replica"])
            answer = raw.parse()
            assert answer.model == model
            assert answer.usage.completion_tokens > 0
        assert seen <= replicas, (model, seen)
    # The other endpoints route by model the same way.
    raw = c.responses.with_raw_response.create(model=SMALL, input="hi", max_output_tokens=4)
    assert raw.headers["x-sluice-replica"] in SMALL_REPLICAS
    assert raw.parse().status in ("completed", "incomplete")
    raw = c.embeddings.with_raw_response.create(model=BIG, input=["a", "b"])
    assert raw.headers["x-sluice-replica"] in BIG_REPLICAS
    assert len(raw.parse().data) == 2


def test_an_unknown_model_is_a_404_naming_the_served_ones(node):
    with pytest.raises(NotFoundError) as e:
        client(node).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    body = e.value.body
    assert body["code"] == "model_not_found"
    assert f"`{BIG}`, `{SMALL}`" in body["message"]


def test_metrics_carry_the_model(node):
    c = client(node)
    c.chat.completions.create(model=SMALL, messages=[{"role": "user", "content": "count me"}], max_tokens=4)
    for r in SMALL_REPLICAS:
        assert metric(node.url, "sluice_replica_model", {"replica": r, "model": SMALL}) == 1
    for model in (BIG, SMALL):
        # Each model priced by the profile calibrated for it.
        assert metric(node.url, "sluice_model_profile", {"model": model, "profile_model": model,
                                                          "calibrated": "true"}) == 1
        assert metric(node.url, "sluice_model_capacity_mu_per_min", {"model": model}) > 0
    assert metric(node.url, "sluice_completion_tokens_total", {"model": SMALL}) > 0


def sluice(*args):
    out = subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("lists", ["both", "its own"])
def test_a_cluster_node_forwards_the_model_it_does_not_run(lists):
    """Two cluster nodes: the first runs the 8B, the second the 3B. Each either lists both
    models (routing the one it runs none of, forwarding to the other node's replica) or
    only its own (handing requests for the other to the node that routes it). Through
    either front door the client reaches both models, each on the node that runs it,
    streamed or not, and `cluster status` lists the two models with their assignments."""
    d1, d2 = tempfile.mkdtemp(), tempfile.mkdtemp()
    sluice("cluster", "init", "--data-dir", d1)

    def node(d, runs, extra=()):
        cfg = os.path.join(d, "node.toml")
        with open(cfg, "w") as f:
            for m in (BIG, SMALL):
                if m == runs or lists == "both":
                    f.write(f'[[models]]\nname = "{m}"\nreplicas = {1 if m == runs else 0}\n')
        return Proc([SLUICE, "node", "start", "--data-dir", d, "--listen", "127.0.0.1:0", "--http",
                     "127.0.0.1:0", "--time-scale", "0", "--config", cfg, *extra], "sluice node listening on ")

    n1 = node(d1, BIG)
    with open(os.path.join(d1, "tls", "join-token")) as f:
        token = f.read().strip()
    with open(os.path.join(d1, "listen")) as f:
        join = f.read().strip()
    n2 = node(d2, SMALL, ["--join", join, "--token", token])
    try:
        def both_assigned():
            s = json.loads(sluice("cluster", "status", "--json", "--data-dir", d1))
            return sorted((m["model"], m["healthy"], m["generation"] >= 1) for m in s["models"]) == [
                (BIG, 1, True), (SMALL, 1, True)]

        assert wait_until(both_assigned, timeout=60, every=0.3)
        s = json.loads(sluice("cluster", "status", "--json", "--data-dir", d1))
        on = {r["model"]: str(r["id"]) for r in s["replicas"]}
        for n in (n1, n2):
            c = OpenAI(base_url=n.url + "/v1", api_key="unused", max_retries=2)
            assert sorted(m.id for m in c.models.list().data) == sorted([BIG, SMALL])
            for model in (BIG, SMALL):
                raw = c.chat.completions.with_raw_response.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
                assert raw.headers["x-sluice-replica"] == on[model], (n.url, model)
                assert raw.parse().model == model
                stream = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=4, stream=True)
                chunks = list(stream)
                assert chunks and all(ch.model == model for ch in chunks)
                assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("length", "stop")
    finally:
        n2.stop()
        n1.stop()


def test_a_handed_stream_survives_the_kill_of_the_node_routing_it():
    """Three cluster nodes: the first runs the 8B only; the second and third each run a
    real-time replica of the 3B. A 3B chat stream through the first door is handed to one
    of the other two (`x-sluice-handed-to`), which is killed with SIGKILL after five
    pieces. The client still reads one answer, continued from the surviving node."""
    dirs = [tempfile.mkdtemp() for _ in range(3)]
    sluice("cluster", "init", "--data-dir", dirs[0])

    def node(d, model, extra=()):
        cfg = os.path.join(d, "node.toml")
        with open(cfg, "w") as f:
            f.write(f'[[models]]\nname = "{model}"\nreplicas = 1\n')
        return Proc([SLUICE, "node", "start", "--data-dir", d, "--listen", "127.0.0.1:0", "--http",
                     "127.0.0.1:0", "--time-scale", "1", "--config", cfg, *extra], "sluice node listening on ")

    nodes = [node(dirs[0], BIG)]
    with open(os.path.join(dirs[0], "tls", "join-token")) as f:
        token = f.read().strip()
    with open(os.path.join(dirs[0], "listen")) as f:
        join = f.read().strip()
    nodes += [node(d, SMALL, ["--join", join, "--token", token]) for d in dirs[1:]]
    try:
        def ready():
            s = json.loads(sluice("cluster", "status", "--json", "--data-dir", dirs[0]))
            return sorted((m["model"], m["healthy"]) for m in s["models"]) == [(BIG, 1), (SMALL, 2)]

        assert wait_until(ready, timeout=60, every=0.3)
        ids = {}
        for n, d in zip(nodes[1:], dirs[1:]):
            with open(os.path.join(d, "listen")) as f:
                addr = f.read().strip()
            s = json.loads(sluice("cluster", "status", "--json", "--data-dir", dirs[0], "--node", addr))
            ids[str(s["answered_by"])] = n
        c = OpenAI(base_url=nodes[0].url + "/v1", api_key="unused", max_retries=0)
        tokens = 60
        raw = c.chat.completions.with_raw_response.create(
            model=SMALL, messages=[{"role": "user", "content": "tell me a story"}], max_tokens=tokens,
            stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        routing = ids[raw.headers["x-sluice-handed-to"]]

        def kill_after_five(count):
            if count == 5:
                routing.proc.kill()
                routing.proc.wait()

        pieces, finishes, got_ids, usage = read_stream(raw.parse(), kill_after_five)
        assert routing.proc.poll() is not None, "the stream ended before its node was killed"
        # One answer: every token once, one finish, one id, usage for one request.
        assert (len(pieces), finishes, len(got_ids)) == (tokens, ["length"], 1), (pieces, finishes, got_ids)
        assert usage.completion_tokens == tokens and usage.prompt_tokens > 0, usage
        assert metric(nodes[0].url, "sluice_migrations_total", {"reason": "node_lost"}) == 1
    finally:
        for n in reversed(nodes):
            n.stop()
