"""A node in front of a real vLLM serving an embedding model (the tiny Llama converted
with `--runner pooling --convert embed`): embeddings through the official client, metered,
and a pooling engine — which has no completions endpoint — probed, found hung and
readmitted like any other."""

import os
import signal

import openai
import pytest

from conftest import metric, start_node, start_vllm, wait_until

EMBED = "tiny-embed"


@pytest.fixture(scope="module")
def pooling(tiny_model, vllm_logs):
    eng = start_vllm(tiny_model, name=EMBED, extra_args=("--runner", "pooling", "--convert", "embed"),
                     log_dir=vllm_logs)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def node(pooling):
    n = start_node([pooling.url], config="[prober]\nidle_window_ms = 1000\n")
    yield n
    assert n.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0, timeout=120)


def test_embeddings_through_the_node_as_the_engine_writes_them(node, pooling):
    c = client(node)
    assert [m.id for m in c.models.list().data] == [EMBED]
    before = metric(node.url, "sluice_prompt_tokens_total", {"model": EMBED})
    # The client asks for base64 and decodes it; floats on request.
    r = c.embeddings.create(model=EMBED, input=["the cat sat on the mat", "quarterly revenue grew"])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) > 8
    direct = openai.OpenAI(base_url=pooling.url + "/v1", api_key="x", max_retries=0).embeddings.create(
        model=EMBED, input="the cat sat on the mat", encoding_format="float")
    via = c.embeddings.create(model=EMBED, input="the cat sat on the mat", encoding_format="float")
    assert via.data[0].embedding == pytest.approx(direct.data[0].embedding, abs=1e-3)
    assert r.usage.prompt_tokens > 4 and r.usage.total_tokens == r.usage.prompt_tokens
    metered = metric(node.url, "sluice_prompt_tokens_total", {"model": EMBED}) - before
    assert metered == r.usage.prompt_tokens + via.usage.prompt_tokens
    assert metric(node.url, "sluice_completion_tokens_total", {"model": EMBED}) == 0
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="no-such-model", input="x")


def test_a_pooling_engine_passes_its_probes_and_a_hang_takes_it_out_until_it_is_back(node, pooling):
    # Idle replicas are probed every second: a completions probe would be a 404 here.
    ok = metric(node.url, "sluice_probes_total", {"outcome": "ok"})
    assert wait_until(lambda: metric(node.url, "sluice_probes_total", {"outcome": "ok"}) >= ok + 2, 30, 0.5)
    assert metric(node.url, "sluice_ejections_total") == 0
    os.killpg(pooling.pgid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: metric(node.url, "sluice_replica_available") == 0, 60, 0.5)
    finally:
        os.killpg(pooling.pgid, signal.SIGCONT)
    assert wait_until(lambda: metric(node.url, "sluice_replica_available") == 1, 60, 0.5)
    assert client(node).embeddings.create(model=EMBED, input="back again").data
