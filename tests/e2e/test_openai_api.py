"""The node's OpenAI API as a user calls it, with the official openai client."""

import json
import os
import threading
import time

import openai
import pytest

from conftest import MODEL, http, metric, start_node, start_replica, wait_until
from sluice_proc import hang_up_after, read_stream


def client(node, **kw):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0, **kw)


def test_models_lists_the_served_model(node):
    models = client(node).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_non_streaming(node):
    r = client(node).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_streaming_with_usage(node):
    stream = client(node).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    assert len(pieces) == 12
    assert usage is not None and usage.completion_tokens == 12
    assert finish == "length"


def test_completions_streaming_and_not(node):
    c = client(node)
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].text.strip()
    assert r.usage.completion_tokens == 5
    texts = [ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True, extra_body={"ignore_eos": True})
        if ch.choices]
    assert len([t for t in texts if t]) == 5


def test_a_session_stays_on_its_replica_and_hits_the_prefix_cache(node):
    c = client(node)
    system = "You are a careful coding agent. " * 200
    served, cached = set(), []
    for turn in range(3):
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": f"step {turn}"}],
            max_tokens=4,
            extra_headers={"x-session-id": "agent-42"},
        )
        served.add(raw.headers["x-sluice-replica"])
        r = raw.parse()
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
    assert len(served) == 1
    assert cached[0] == 0
    assert cached[1] > 1000 and cached[2] > 1000


def test_malformed_json_is_a_400_with_an_openai_error_body(node):
    status, _, body = http("POST", node.url + "/v1/chat/completions", b"{not json",
                           {"content-type": "application/json"})
    assert status == 400
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]


@pytest.mark.parametrize("kwargs,param", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"stream": "yes"}, "stream"),
])
def test_bad_fields_are_400s_naming_the_field(node, kwargs, param):
    args = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client(node).chat.completions.create(**args)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param


def test_wrong_method_and_path_get_openai_errors(node):
    status, _, body = http("GET", node.url + "/v1/chat/completions")
    assert status == 405 and "not allowed" in json.loads(body)["error"]["message"]
    status, _, body = http("GET", node.url + "/nothing")
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"
    # Any POST under /v1/ is passed through to the engines; other methods are not.
    status, _, body = http("GET", node.url + "/v1/nothing")
    assert status == 405 and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_other_v1_paths_pass_through_to_the_engine(node):
    # The simulated engine has no /v1/rerank: its own answer comes back, counted as "other".
    status, _, body = http("POST", node.url + "/v1/rerank", {"model": MODEL, "query": "q", "documents": ["d"]})
    assert status == 404 and json.loads(body)["error"]["message"] == "no such endpoint"
    assert metric(node.url, "sluice_requests_total", {"endpoint": "other", "code": "404"}) >= 1
    # What Sluice reads of it must be readable; paths that could leave /v1/ are not sent.
    for path, body, want in [("/v1/rerank", b"not json", 400), ("/v1/rerank", b'{"model": 3}', 400),
                             ("/v1/a/../models", b"{}", 404), ("/v1/a%2e%2e", b"{}", 404)]:
        status, _, raw = http("POST", node.url + path, body, {"content-type": "application/json"})
        assert status == want, (path, raw)
        assert "error" in json.loads(raw)
    with pytest.raises(openai.NotFoundError):
        client(node).post("/rerank", body={"model": "no-such-model"}, cast_to=object)


def test_unknown_model_is_a_404(node):
    with pytest.raises(openai.NotFoundError) as e:
        client(node).chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"


def test_the_request_id_is_echoed_and_names_the_engines_answer(node):
    c = client(node)
    r = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        extra_headers={"x-request-id": "e2e-trace-42"})
    # The client reads it back as the request's id; the engine named its answer after
    # the attempt it was sent (`<id>.<n>`, as vLLM does).
    assert r._request_id == "e2e-trace-42"
    assert r.id.startswith("chatcmpl-e2e-trace-42."), r.id
    with c.chat.completions.with_streaming_response.create(
            model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=4, stream=True,
            extra_headers={"x-request-id": "e2e-stream-7"}) as resp:
        assert resp.headers["x-request-id"] == "e2e-stream-7"
        ids = {chunk.id for chunk in resp.parse()}
    assert ids and all(i.startswith("chatcmpl-e2e-stream-7.") for i in ids), ids
    # Without one, or with one unfit for a header or a log line, the door makes one;
    # errors carry it too.
    made = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        extra_headers={"x-request-id": "has a space"})
    assert made._request_id.startswith("sluice-"), made._request_id
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.request_id.startswith("sluice-")
    status, headers, _ = http("GET", node.url + "/nothing", headers={"x-request-id": "lost-1"})
    assert status == 404 and headers.get("x-request-id") == "lost-1"


def test_oversized_body_is_a_413(node):
    with pytest.raises(openai.APIStatusError) as e:
        client(node).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 100_000}])
    assert e.value.status_code == 413
    assert "exceeds" in e.value.body["message"]


def test_client_disconnect_mid_stream_frees_its_model_units(node, replicas):
    stream = client(node).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=4000, stream=True, extra_body={"ignore_eos": True})
    def running():
        assert metric(node.url, "sluice_replica_inflight_mu") > 0
    hang_up_after(stream, 3, running)
    assert wait_until(lambda: metric(node.url, "sluice_replica_inflight_mu") == 0)
    assert wait_until(lambda: metric(node.url, "sluice_replica_inflight_requests") == 0)
    # The engine aborted the request too: nothing is left running on any replica.
    assert wait_until(lambda: all(metric(r.url, "vllm:num_requests_running") == 0 for r in replicas))


def test_no_healthy_replica_is_a_503_with_retry_after():
    dead = start_replica()
    url = dead.url
    dead.stop()
    n = start_node([url], config="[router]\nhealth_interval_ms = 100\n")
    try:
        with pytest.raises(openai.APIStatusError) as e:
            client(n).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 503
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.body["type"] == "service_unavailable"
    finally:
        assert n.stop() == 0


def set_fault(replica, kind, value=None):
    body = {"kind": kind} if value is None else {"kind": kind, "value": value}
    status, _, _ = http("POST", replica.url + "/admin/fault", json.dumps(body).encode(),
                        {"content-type": "application/json"})
    assert status == 200


@pytest.fixture
def fault_node():
    r = start_replica()
    n = start_node([r.url], config="[router]\nrequest_timeout_s = 1.5\nstream_idle_timeout_s = 1.5\n")
    yield n, r
    n.stop()
    r.stop()


def test_upstream_timeout_is_a_504_and_ejects_the_replica(fault_node):
    node, replica = fault_node
    set_fault(replica, "hang")
    chat = [{"role": "user", "content": "hi"}]
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client(node).chat.completions.create(model=MODEL, messages=chat)
    assert e.value.status_code == 504
    assert e.value.body["type"] == "timeout"
    assert time.monotonic() - start < 10
    # The timed-out replica is ejected (though its /health still answers 200)...
    assert metric(node.url, "sluice_replica_available") == 0
    with pytest.raises(openai.APIStatusError) as e:
        client(node).chat.completions.create(model=MODEL, messages=chat, stream=True)
    assert e.value.status_code == 503
    # ...until its backoff ends; a stream that gets no first byte is a 504 too.
    assert wait_until(lambda: metric(node.url, "sluice_replica_available") == 1)
    with pytest.raises(openai.APIStatusError) as e:
        client(node).chat.completions.create(model=MODEL, messages=chat, stream=True)
    assert e.value.status_code == 504


def test_a_stream_that_goes_silent_ends_with_an_error_event(fault_node):
    node, replica = fault_node
    stream = client(node).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5000, stream=True,
        extra_body={"ignore_eos": True})
    got = 0
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            got += 1
            if got == 3:
                set_fault(replica, "hang")
    assert got >= 3
    assert "sent nothing" in str(e.value)
    assert wait_until(lambda: metric(node.url, "sluice_replica_inflight_mu") == 0)


def test_a_responses_stream_that_goes_silent_ends_with_an_error_event(fault_node):
    # A response is not continued elsewhere (vLLM cannot continue one): its stream ends
    # with the Responses API's own error event, numbered after the last one sent.
    node, replica = fault_node
    events = []
    for event in client(node).responses.create(model=MODEL, input="hi", max_output_tokens=5000, stream=True,
                                               extra_body={"ignore_eos": True}):
        events.append(event)
        if len(events) == 6:
            set_fault(replica, "hang")
    assert [e.type for e in events[:4]] == ["response.created", "response.in_progress",
                                            "response.output_item.added", "response.content_part.added"]
    last = events[-1]
    assert last.type == "error" and "sent nothing" in last.message, last
    assert last.sequence_number == events[-2].sequence_number + 1
    assert metric(node.url, "sluice_migrations_refused_total", {"reason": "not_resumable"}) == 1
    assert wait_until(lambda: metric(node.url, "sluice_replica_inflight_mu") == 0)


def test_a_crashed_replica_is_retried_elsewhere_without_client_errors():
    reps = [start_replica(seed=i) for i in range(2)]
    # Health checks far apart, so only the connection failure tells the router.
    n = start_node([r.url for r in reps], config="[router]\nhealth_interval_ms = 600000\n")
    try:
        c = client(n)
        http("POST", reps[0].url + "/admin/fault", json.dumps({"kind": "crash"}).encode(),
             {"content-type": "application/json"})
        assert wait_until(lambda: reps[0].proc.poll() is not None)
        for i in range(12):
            r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=2, extra_headers={"x-session-id": f"s{i}"})
            assert r.choices[0].message.content
        assert metric(n.url, "sluice_retries_total") >= 1
        assert metric(n.url, "sluice_requests_total", {"code": "200"}) == 12
    finally:
        n.stop()
        for r in reps:
            r.stop()


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_stream_whose_replica_dies_mid_answer_completes_on_another(kind):
    reps = [start_replica(seed=i) for i in range(2)]
    n = start_node([r.url for r in reps])
    try:
        c = client(n)
        tokens = 60
        extra = {"max_tokens": tokens, "stream": True, "stream_options": {"include_usage": True},
                 "extra_body": {"ignore_eos": True}}
        if kind == "chat":
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "tell me a story"}], **extra)
        else:
            raw = c.completions.with_raw_response.create(model=MODEL, prompt="Once upon a time", **extra)
        serving = reps[int(raw.headers["x-sluice-replica"])]

        def crash_after_five(count):
            if count == 5:
                http("POST", serving.url + "/admin/fault", json.dumps({"kind": "crash"}).encode(),
                     {"content-type": "application/json"})
                assert wait_until(lambda: serving.proc.poll() is not None)

        pieces, finishes, ids, usage = read_stream(raw.parse(), crash_after_five)
        assert serving.proc.poll() is not None
        # One answer: every token once, one finish, one id, usage for one request.
        assert (len(pieces), finishes, len(ids)) == (tokens, ["length"], 1), (pieces, finishes, ids)
        assert usage.completion_tokens == tokens and usage.prompt_tokens > 0, usage
        assert usage.total_tokens == usage.prompt_tokens + tokens
        assert metric(n.url, "sluice_migrations_total", {"reason": "broke"}) == 1
        assert metric(n.url, "sluice_requests_total", {"code": "200"}) == 1
    finally:
        n.stop()
        for r in reps:
            r.stop()


def test_the_model_is_learned_from_the_engines_and_a_replica_serving_another_is_reported():
    reps = [start_replica(seed=0, model="qwen-tiny"), start_replica(seed=1, model="qwen-tiny"),
            start_replica(seed=2, model="other-model")]
    n = start_node([r.url for r in reps], config="[router]\nhealth_interval_ms = 100\n")
    try:
        c = client(n)
        assert [m.id for m in c.models.list().data] == ["qwen-tiny"]
        for i in range(8):
            raw = c.chat.completions.with_raw_response.create(
                model="qwen-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                extra_headers={"x-session-id": f"s{i}"})
            assert raw.headers["x-sluice-replica"] in ("0", "1")
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert "qwen-tiny" in e.value.body["message"]
        _, _, body = http("GET", n.url + "/health")
        ups = {u["id"]: u for u in json.loads(body)["upstreams"]}
        assert ups[2]["model_mismatch"] and ups[2]["models"] == ["other-model"]
        assert not ups[0]["model_mismatch"]
        assert metric(n.url, "sluice_replica_model_mismatch", {"replica": "2"}) == 1
        assert metric(n.url, "sluice_replica_available", {"replica": "2"}) == 0
        # The odd one out is reported, not ejected: no probe verdict against it.
        assert metric(n.url, "sluice_ejections_total") == 0
        assert metric(n.url, "sluice_model_profile", {"model": "qwen-tiny", "calibrated": "false"}) == 1
    finally:
        n.stop()
        for r in reps:
            r.stop()


def test_a_hub_name_finds_its_calibrated_profile_and_the_command_line_overrides():
    r = start_replica(model="meta-llama/Llama-3.1-8B-Instruct")
    n = start_node([r.url])
    try:
        assert [m.id for m in client(n).models.list().data] == ["meta-llama/Llama-3.1-8B-Instruct"]
        assert metric(n.url, "sluice_model_profile", {"profile_model": MODEL, "calibrated": "true"}) == 1
    finally:
        n.stop()
    n = start_node([r.url], extra=["--model", "my-alias"])
    try:
        assert [m.id for m in client(n).models.list().data] == ["my-alias"]
        # The engine does not serve the configured name: said, and kept out.
        assert wait_until(lambda: metric(n.url, "sluice_replica_model_mismatch", {"replica": "0"}) == 1)
    finally:
        n.stop()
        r.stop()


def test_embedded_default_runs_and_stops_cleanly_with_its_children():
    n = start_node(extra=["--replicas", "2"])
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == n.proc.pid]
    assert len(children) == 2
    r = client(n).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.usage.completion_tokens >= 1
    assert n.stop() == 0
    assert wait_until(lambda: not any(os.path.exists(f"/proc/{c}") and _ppid(str(c)) == n.proc.pid for c in children))


def test_concurrent_requests_all_get_answers(node):
    c = client(node)
    errors, done = [], []

    def one(i):
        try:
            r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}],
                                          max_tokens=6, user=f"user-{i % 5}")
            done.append(r.usage.completion_tokens)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(done) == 40


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
