"""A node in front of two real vLLM engines it did not start, with no model configured:
what a user calls through it with the official openai client, and what it meters."""

import json
import threading
import time

import openai
import pytest

from conftest import MODEL, http, metric, start_node, wait_until
from sluice_proc import hang_up_after

LONG = "You are a careful coding agent working in a large repository. " * 40


@pytest.fixture(scope="module")
def node(vllm_two):
    # No [replicas] model and no --model: the node asks the engines. Two CPU engines, the
    # node and 24 streams share two cores: CI once saw one engine's process starved for
    # over 10 s (its own logger silent 17 s), which the engine-gauge stall check (10 s by
    # default) rightly took for a hang; another run saw the router's stream-stall rule
    # (3 s) take a starved engine for hung. This module tests the probes, so both
    # windows are widened here; test_node_supervises_vllm.py tests hang detection.
    n = start_node([e.url for e in vllm_two],
                   config="[prober]\nidle_window_ms = 1000\nstall_window_ms = 30000\n"
                          "[router]\nstall_floor_ms = 30000\n")
    yield n
    assert n.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0, timeout=120)


def test_the_node_serves_the_engines_model(node):
    assert [m.id for m in client(node).models.list().data] == [MODEL]
    _, _, body = http("GET", node.url + "/health")
    health = json.loads(body)
    assert health["model"] == MODEL
    assert all(u["models"] == [MODEL] and not u["model_mismatch"] for u in health["upstreams"])
    # A tiny model has no calibrated profile: said on /metrics.
    assert metric(node.url, "sluice_model_profile", {"model": MODEL, "calibrated": "false"}) == 1


def test_chat_and_completions_streaming_and_not(node):
    c = client(node)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello there"}],
                                  max_tokens=8, extra_body={"ignore_eos": True})
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 3
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5,
                             extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5 and r.choices[0].text
    pieces = [ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True,
        extra_body={"ignore_eos": True}) if ch.choices]
    assert "".join(pieces)


def test_a_stream_of_several_choices_with_logprobs_reads_whole_and_is_metered(node):
    c = client(node)
    before = metric(node.url, "sluice_completion_tokens_total", {"model": MODEL})
    chunks = list(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=5, n=2,
        stream=True, logprobs=True, top_logprobs=1, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    tokens = {0: 0, 1: 0}
    finished = {}
    for ch in chunks:
        for choice in ch.choices:
            if choice.logprobs and choice.logprobs.content:
                tokens[choice.index] += len(choice.logprobs.content)
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    # Each choice streamed its five tokens, each with its log-probability, and ended once.
    assert tokens == {0: 5, 1: 5}, tokens
    assert finished == {0: "length", 1: "length"}, finished
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert wait_until(lambda: metric(node.url, "sluice_completion_tokens_total",
                                     {"model": MODEL}) == before + 10)


def test_a_stream_with_usage_in_every_chunk_is_metered_once(node):
    # vLLM's `continuous_usage_stats` puts the running usage in every chunk: the node
    # must meter the request's tokens once, not once per chunk.
    c = client(node)
    before = metric(node.url, "sluice_completion_tokens_total", {"model": MODEL})
    chunks = list(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=6,
        stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert sum(1 for ch in chunks if ch.usage is not None) > 2
    assert wait_until(lambda: metric(node.url, "sluice_completion_tokens_total",
                                     {"model": MODEL}) == before + 6)
    time.sleep(0.5)
    assert metric(node.url, "sluice_completion_tokens_total", {"model": MODEL}) == before + 6


def test_a_client_that_hangs_up_mid_stream_frees_the_engine(node, vllm_two):
    # A client gone mid-answer must not leave vLLM generating for no one: the node drops
    # its upstream stream, and vLLM aborts the request instead of writing its 1,500
    # tokens (the node's probes write a token now and then).
    generated = lambda: sum(metric(e.url, "vllm:generation_tokens_total") for e in vllm_two)
    before = generated()
    stream = client(node).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=1500, stream=True, extra_body={"ignore_eos": True})
    def running():
        assert sum(metric(e.url, "vllm:num_requests_running") for e in vllm_two) >= 1
    hang_up_after(stream, 3, running)
    assert wait_until(lambda: metric(node.url, "sluice_replica_inflight_requests") == 0, 30)
    assert wait_until(lambda: all(metric(e.url, "vllm:num_requests_running") == 0
                                  for e in vllm_two), 30)
    # The tiny model writes hundreds of tokens a second, so some were written before the
    # abort landed (about 300 here), but well short of the whole answer.
    assert generated() - before < 1200, generated() - before


def test_a_client_that_gives_up_on_a_whole_answer_frees_the_engine(node, vllm_two):
    # The same for a request that is not streamed: the client's timeout closes the
    # connection before the answer is written, and the node aborts it upstream.
    generated = lambda: sum(metric(e.url, "vllm:generation_tokens_total") for e in vllm_two)
    before = generated()
    impatient = openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0,
                              timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Write a long story."}],
            max_tokens=1500, extra_body={"ignore_eos": True})
    assert wait_until(lambda: metric(node.url, "sluice_replica_inflight_requests") == 0, 30)
    assert wait_until(lambda: all(metric(e.url, "vllm:num_requests_running") == 0
                                  for e in vllm_two), 30)
    assert generated() - before < 1200, generated() - before


def test_the_request_id_reaches_vllm_and_comes_back(node):
    c = client(node)
    # Twice under one id, at once: each engine attempt gets its own (`<id>.<n>`), so vLLM
    # never sees an id that is still running.
    out = []
    threads = [threading.Thread(target=lambda: out.append(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=16,
        extra_body={"ignore_eos": True}, extra_headers={"x-request-id": "real-trace-9"})))
        for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2
    for r in out:
        assert r._request_id == "real-trace-9"
        # vLLM named its answer after the attempt it was sent.
        assert r.id.startswith("chatcmpl-real-trace-9."), r.id
    assert out[0].id != out[1].id


def test_a_stream_is_metered_whether_or_not_the_client_asked_for_usage(node):
    c = client(node)
    before = metric(node.url, "sluice_completion_tokens_total", {"model": MODEL})
    missing = metric(node.url, "sluice_usage_missing_total")
    chunks = list(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=12, stream=True,
        extra_body={"ignore_eos": True}))
    # The client did not ask for usage: it gets none, the node still metered it.
    assert all(ch.usage is None for ch in chunks)
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) >= 1
    assert wait_until(lambda: metric(node.url, "sluice_completion_tokens_total", {"model": MODEL}) == before + 12)
    chunks = list(c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count"}], max_tokens=7, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert wait_until(lambda: metric(node.url, "sluice_completion_tokens_total", {"model": MODEL}) == before + 19)
    assert metric(node.url, "sluice_usage_missing_total") == missing
    assert metric(node.url, "sluice_prompt_tokens_total", {"model": MODEL, "tenant": "none"}) > 0


def _raw(url, path, body):
    status, _, raw = http("POST", url + path, body)
    return status, json.loads(raw)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"},
                                           {"role": "function", "name": "f", "content": "42"}]}),
    ("/v1/completions", {"prompt": ["first prompt", "second prompt"]}),
    ("/v1/completions", {"prompt": [1, 2, 1500, 2047]}),
    ("/v1/completions", {"prompt": [1, 2, 5000, 130000]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_k": 3,
                              "repetition_penalty": 1.1, "min_tokens": 2}),
    # What a client asks of the answer's shape: several choices, log-probabilities,
    # stop strings, JSON, an echoed prompt. The node passes each on untouched.
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "logprobs": True, "top_logprobs": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "stop": ["the", "."], "seed": 7}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Reply in JSON."}],
                              "response_format": {"type": "json_object"}}),
    ("/v1/completions", {"prompt": "Once upon a time", "echo": True, "logprobs": 1, "n": 2}),
])
def test_what_the_engine_decides_comes_back_unchanged(node, vllm_two, path, body):
    body = {"model": MODEL, "max_tokens": 4, **body}
    direct_status, direct = _raw(vllm_two[0].url, path, body)
    via_status, via = _raw(node.url, path, body)
    assert via_status == direct_status, (direct, via)
    if direct_status == 200:
        assert len(via["choices"]) == len(direct["choices"])
        # Every field of a choice the engine wrote (log-probabilities, stop reason, …)
        # reaches the client.
        for d, v in zip(direct["choices"], via["choices"]):
            assert set(v) == set(d), (d, v)
            assert (v.get("logprobs") is None) == (d.get("logprobs") is None), (d, v)
    else:
        assert via["error"]["message"] == direct["error"]["message"]


def test_errors_sluice_owns_are_openai_shaped(node):
    c = client(node)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found" and MODEL in e.value.body["message"]
    status, _, raw = http("POST", node.url + "/v1/chat/completions", b"{not json",
                          {"content-type": "application/json"})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream="yes")
    assert e.value.body["param"] == "stream"


def test_a_session_stays_on_one_replica_and_hits_its_prefix_cache(node):
    c = client(node)
    served, cached = set(), []
    for turn in range(3):
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "system", "content": LONG}, {"role": "user", "content": f"step {turn}"}],
            max_tokens=2, extra_headers={"x-session-id": "agent-7"})
        served.add(raw.headers["x-sluice-replica"])
        cached.append(raw.parse().usage.prompt_tokens_details.cached_tokens)
    assert len(served) == 1
    assert cached[1] > 0 and cached[2] > 0, cached
    assert metric(node.url, "sluice_cached_prompt_tokens_total", {"model": MODEL}) > 0


def test_sessions_spread_over_both_replicas(node):
    c = client(node)
    seen = set()
    for i in range(24):
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"session {i}"}], max_tokens=1,
            extra_headers={"x-session-id": f"user-{i}"})
        seen.add(raw.headers["x-sluice-replica"])
    assert len(seen) == 2


def test_prioritized_probes_do_not_eject_busy_healthy_replicas(node):
    """Long streams keep both engines busy with nothing completing, so the prober probes
    them (idle window 1 s); the probes jump vLLM's queue and pass."""
    c = client(node)
    ok_before = metric(node.url, "sluice_probes_total", {"outcome": "ok"})
    errors = []

    def long_stream(i):
        try:
            for _ in c.completions.create(model=MODEL, prompt=f"story {i}", max_tokens=1500, stream=True,
                                          extra_body={"ignore_eos": True},
                                          extra_headers={"x-session-id": f"load-{i}"}):
                pass
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=long_stream, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    assert metric(node.url, "sluice_probes_total", {"outcome": "ok"}) >= ok_before + 2
    assert metric(node.url, "sluice_ejections_total") == 0
    assert metric(node.url, "sluice_replica_available") == 2


def test_a_response_through_the_node_whole_and_streamed(node):
    c = client(node)
    r = c.responses.create(model=MODEL, instructions="Be brief.", input="Hello there", max_output_tokens=6,
                           extra_body={"ignore_eos": True})
    assert r.object == "response" and r.output_text
    assert r.usage.output_tokens == 6 and r.usage.input_tokens > 3
    before = metric(node.url, "sluice_completion_tokens_total", {"model": MODEL})
    with c.responses.stream(model=MODEL, input=[{"role": "user", "content": "Once upon a time"}],
                            max_output_tokens=7, extra_body={"ignore_eos": True}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.usage.output_tokens == 7
    # Metered from the response's last event, whole or streamed.
    assert metric(node.url, "sluice_completion_tokens_total", {"model": MODEL}) - before == 7
    assert metric(node.url, "sluice_requests_total", {"endpoint": "responses", "code": "200"}) >= 2


def test_a_responses_conversation_stays_on_one_replica_and_hits_its_prefix_cache(node):
    c = client(node)
    served, cached, turns = set(), [], []
    for turn in range(3):
        turns.append({"role": "user", "content": f"step {turn}"})
        raw = c.responses.with_raw_response.create(model=MODEL, instructions=LONG, input=turns,
                                                   max_output_tokens=2,
                                                   extra_headers={"x-session-id": "responses-agent"})
        r = raw.parse()
        served.add(raw.headers["x-sluice-replica"])
        cached.append(r.usage.input_tokens_details.cached_tokens)
        turns.append({"role": "assistant", "content": r.output_text})
    assert len(served) == 1
    assert cached[1] > 0 and cached[2] > 0, cached


def test_other_engine_endpoints_pass_through_and_are_metered(node):
    # vLLM's Anthropic-style /v1/messages: not an endpoint Sluice reads, passed through.
    before = metric(node.url, "sluice_completion_tokens_total", {"model": MODEL})
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    status, headers, raw = http("POST", node.url + "/v1/messages", body)
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["type"] == "message" and answer["usage"]["output_tokens"] == 4
    assert "x-sluice-replica" in {k.lower() for k in headers}
    # Usage under the Anthropic names is read too.
    assert metric(node.url, "sluice_completion_tokens_total", {"model": MODEL}) - before == 4
    status, _, raw = http("POST", node.url + "/v1/messages", {**body, "stream": True})
    assert status == 200
    events = [line[len("event: "):] for line in raw.decode().splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert metric(node.url, "sluice_requests_total", {"endpoint": "other", "code": "200"}) >= 2
