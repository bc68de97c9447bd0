"""The Responses API and embeddings through the node, with the official openai client:
routed, priced and metered like chat."""

import math

import openai
import pytest

from conftest import MODEL, http, metric


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0)


def test_a_response_whole(node):
    r = client(node).responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}],
        max_output_tokens=6,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "response"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text.strip()
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.output_tokens == 6
    assert r.usage.input_tokens > 5
    assert r.usage.total_tokens == r.usage.input_tokens + 6


def test_a_response_streamed_event_by_event(node):
    events = list(client(node).responses.create(
        model=MODEL, input="Count to ten.", max_output_tokens=9, stream=True,
        extra_body={"ignore_eos": True},
    ))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") == 9
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert done.status == "incomplete"
    assert done.output_text == text and done.usage.output_tokens == 9


def test_the_stream_helper_assembles_the_final_response(node):
    with client(node).responses.stream(model=MODEL, input="Write a line.", max_output_tokens=4,
                                       extra_body={"ignore_eos": True}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.usage.output_tokens == 4


def test_responses_are_metered_and_counted_under_their_endpoint(node):
    before = metric(node.url, "sluice_completion_tokens_total")
    client(node).responses.create(model=MODEL, input="Meter me.", max_output_tokens=7,
                                  extra_body={"ignore_eos": True})
    events = list(client(node).responses.create(model=MODEL, input="And me.", max_output_tokens=5,
                                                stream=True, extra_body={"ignore_eos": True}))
    assert events[-1].response.usage.output_tokens == 5
    assert metric(node.url, "sluice_completion_tokens_total") - before == 12
    assert metric(node.url, "sluice_requests_total", {"endpoint": "responses", "code": "200"}) >= 2


def test_a_conversation_sent_to_responses_stays_on_its_replica_and_hits_the_cache(node):
    c = client(node)
    system = "You are a careful assistant. " * 40
    turns, cached = [], []
    for i in range(3):
        turns.append({"role": "user", "content": f"question {i}"})
        raw = c.responses.with_raw_response.create(model=MODEL, instructions=system, input=turns,
                                                   max_output_tokens=4, extra_body={"ignore_eos": True})
        r = raw.parse()
        turns.append({"role": "assistant", "content": r.output_text})
        cached.append((raw.headers["x-sluice-replica"], r.usage.input_tokens_details.cached_tokens))
    assert len({replica for replica, _ in cached}) == 1
    assert all(hit > 0 for _, hit in cached[1:])


def test_responses_errors_are_openai_shaped(node):
    c = client(node)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=MODEL, input=[])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model=MODEL, input="x", previous_response_id="resp_123")
    assert e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="no-such-model", input="x")
    status, _, body = http("POST", node.url + "/v1/responses", {"model": MODEL, "input": "x",
                                                                 "max_output_tokens": "many"})
    assert status == 400 and b"max_output_tokens" in body


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embeddings_of_texts_and_tokens(node):
    c = client(node)
    # The client asks for base64 by default and decodes it.
    r = c.embeddings.create(model=MODEL, input=["the cat sat on the mat", "the cat sat on a mat",
                                                "quarterly revenue grew"])
    assert r.object == "list" and [d.index for d in r.data] == [0, 1, 2]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 256 for v in vecs)
    assert abs(cosine(vecs[0], vecs[0]) - 1) < 1e-5
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2])
    assert r.usage.prompt_tokens > 6 and r.usage.total_tokens == r.usage.prompt_tokens
    floats = c.embeddings.create(model=MODEL, input="the cat sat on the mat", encoding_format="float",
                                 dimensions=32)
    assert len(floats.data[0].embedding) == 32
    ids = c.embeddings.create(model=MODEL, input=[[5, 6, 7], [8, 9]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5


def test_embeddings_are_metered_and_generate_nothing(node):
    before_in = metric(node.url, "sluice_prompt_tokens_total")
    before_out = metric(node.url, "sluice_completion_tokens_total")
    r = client(node).embeddings.create(model=MODEL, input=["one two three", "four five"])
    assert metric(node.url, "sluice_prompt_tokens_total") - before_in == r.usage.prompt_tokens
    assert metric(node.url, "sluice_completion_tokens_total") == before_out
    assert metric(node.url, "sluice_requests_total", {"endpoint": "embeddings", "code": "200"}) >= 1


def test_embeddings_errors_are_openai_shaped(node):
    c = client(node)
    for kwargs, param in [({"input": []}, "input"), ({"input": [{"a": 1}]}, "input"),
                          ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
                          ({"input": "x", "dimensions": 0}, "dimensions")]:
        with pytest.raises(openai.BadRequestError) as e:
            c.embeddings.create(model=MODEL, **kwargs)
        assert e.value.body["param"] == param, kwargs
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="no-such-model", input="x")
