"""A real vLLM (CPU) serving the tiny Llama, spoken to directly with the official openai
client: what the router will rely on when it fronts such an engine (usage, cached tokens,
/tokenize, /metrics, error shapes, priority), and the harness's own process handling."""

import json

import openai
import pytest
from conftest import MODEL, group_procs, http, metric

# > 300 tokens (the CPU KV block is 128 tokens, so shorter prompts never hit the cache).
LONG = " ".join(f"The router sends request number {i} to the replica with the least load." for i in range(40))
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there!"}]


@pytest.fixture(scope="module")
def engine(vllm_one):
    return vllm_one


@pytest.fixture(scope="module")
def client(engine):
    return openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def post(engine, path, body):
    status, _, raw = http("POST", engine.url + path, body, timeout=60)
    return status, json.loads(raw)


def test_models_lists_the_served_name(client, engine):
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL]
    status, _, raw = http("GET", engine.url + "/v1/models")
    assert status == 200 and json.loads(raw)["data"][0]["max_model_len"] == 2048


def test_chat_non_streaming_has_usage(client):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert r.model == MODEL and r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason in ("length", "stop")
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == 0


def test_chat_streaming_reports_usage_last(client):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("length", "stop")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None  # the usage-only chunk
    assert 0 < last.usage.completion_tokens <= 8
    assert all(c.usage is None for c in chunks[:-1])


def test_ignore_eos_gives_exactly_max_tokens(client):
    # A random model may sample an eos (3 of 2048 ids) before max_tokens; vLLM's
    # ignore_eos makes lengths exact.
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 24 and r.choices[0].finish_reason == "length"


def test_completions_streaming_and_not(client, engine):
    r = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=5, extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens == post(engine, "/tokenize", {"model": MODEL, "prompt": "Hello world"})[1]["count"]
    chunks = list(client.completions.create(model=MODEL, prompt="Hello world", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)


def test_repeated_long_prompt_reports_cached_tokens(client, engine):
    n = post(engine, "/tokenize", {"model": MODEL, "prompt": LONG})[1]["count"]
    assert n > 300
    hits_before = metric(engine.url, "vllm:prefix_cache_hits_total")
    first = client.completions.create(model=MODEL, prompt=LONG, max_tokens=2)
    second = client.completions.create(model=MODEL, prompt=LONG, max_tokens=2)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == n
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < n and cached % 128 == 0, cached  # whole 128-token blocks
    assert metric(engine.url, "vllm:prefix_cache_hits_total") - hits_before >= cached
    # The same through chat.
    msgs = [{"role": "user", "content": LONG}]
    client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
    again = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_metrics_expose_queue_and_token_counters(client, engine):
    _, _, raw = http("GET", engine.url + "/metrics")
    text = raw.decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total",
                 "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:kv_cache_usage_perc"):
        assert f"\n{name}{{" in text, name
    assert f'model_name="{MODEL}"' in text
    before = metric(engine.url, "vllm:generation_tokens_total")
    client.completions.create(model=MODEL, prompt="count me", max_tokens=4, extra_body={"ignore_eos": True})
    assert metric(engine.url, "vllm:generation_tokens_total") - before == 4
    assert metric(engine.url, "vllm:num_requests_running") == 0


def test_tokenize_prompt_shape(engine):
    status, body = post(engine, "/tokenize", {"model": MODEL, "prompt": "Hello world"})
    assert status == 200
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 2048 and body["token_strs"] is None
    bos = body["tokens"][0]  # add_special_tokens defaults to true for a prompt
    status, plain = post(engine, "/tokenize", {"model": MODEL, "prompt": "Hello world", "add_special_tokens": False})
    assert plain["tokens"] == body["tokens"][1:] and bos not in plain["tokens"]
    status, strs = post(engine, "/tokenize", {"model": MODEL, "prompt": "Hello world", "return_token_strs": True})
    assert strs["token_strs"][0] == "<|begin_of_text|>" and len(strs["token_strs"]) == strs["count"]


def test_tokenize_messages_counts_what_chat_bills(client, engine):
    status, body = post(engine, "/tokenize", {"model": MODEL, "messages": MESSAGES})
    assert status == 200 and set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert body["count"] == r.usage.prompt_tokens  # the chat template with the generation prompt
    _, no_gen = post(engine, "/tokenize", {"model": MODEL, "messages": MESSAGES, "add_generation_prompt": False})
    assert no_gen["count"] < body["count"]


def test_tokenize_unknown_model_is_404(engine):
    status, body = post(engine, "/tokenize", {"model": "nope", "prompt": "x"})
    assert status == 404 and body["error"]["type"] == "NotFoundError"


def test_every_chat_role_renders(client):
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "developer", "content": "d"},
        {"role": "user", "content": [{"type": "text", "text": "u"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "function", "name": "f", "content": "43"},
    ]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
    assert r.usage.prompt_tokens > 20


def test_batched_prompts_give_one_choice_each(engine):
    status, body = post(engine, "/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 3,
                                                    "ignore_eos": True})
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 6 and body["usage"]["prompt_tokens"] == 4  # summed
    status, body = post(engine, "/v1/completions", {"model": MODEL, "prompt": [[1, 2], [3, 4]], "max_tokens": 1})
    assert status == 200 and len(body["choices"]) == 2


def test_engine_errors(engine):
    status, body = post(engine, "/v1/completions", {"model": MODEL, "prompt": [1, 2, 2048], "max_tokens": 1})
    assert status == 400 and body["error"] == {"message": "Token id 2048 is out of vocabulary",
                                              "type": "BadRequestError", "param": None, "code": 400}
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
    status, body = post(engine, "/v1/chat/completions", {
        "model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, audio]}]})
    assert status == 400 and "not a multimodal model" in body["error"]["message"]
    for path, req in (("/v1/chat/completions", {"messages": MESSAGES}), ("/v1/completions", {"prompt": "x"})):
        status, body = post(engine, path, {"model": "nope", "max_tokens": 1, **req})
        assert status == 404 and body["error"]["type"] == "NotFoundError" and body["error"]["param"] == "model"
    status, body = post(engine, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 4096})
    assert status == 400 and body["error"]["param"] == "max_tokens"


def test_priority_is_accepted(engine):
    # The engine runs with --scheduling-policy priority (lower value is served first);
    # without it vLLM accepts the field too and ignores it.
    for p in (5, -5, 0):
        status, body = post(engine, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": p})
        assert status == 200, body
    status, body = post(engine, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1, "priority": "high"})
    assert status == 400


def test_engine_is_a_process_group(engine):
    procs = group_procs(engine.pgid)
    assert procs[0].pid == engine.pid
    names = {p.comm for p in procs}
    # The API server, its EngineCore and the EngineCore's worker (plus a resource tracker).
    assert "VLLM::EngineCor" in names and "VLLM::Worker" in names, procs
