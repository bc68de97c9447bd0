"""Token-replay migration in front of real vLLM engines: the engine serving a stream is
killed (kill -9 of its whole process group) mid-answer, and the client's stream, read with
the official openai client, completes from the other engine as one answer."""

import os
import signal

import openai
import pytest

from conftest import MODEL, metric, start_node, wait_until
from sluice_proc import read_stream

# Long enough that the engine is still generating when it is killed: the tiny model on
# an idle machine writes 400 tokens in under a second, and an answer already generated
# (in flight to the node when the kill came) needs no migration. The prompt, ~180 tokens
# with the chat template, and the answer stay within the engine's 2,048-token context.
TOKENS = 1500


@pytest.fixture(scope="module")
def node(vllm_two):
    # The migration here is the kill's (the stream is cut). On two shared cores the
    # engine that takes the stream over was once silent past the router's stream-stall
    # floor (3 s) while it took the continuation, which sent the stream back to the dead
    # engine: that floor is widened here, as in test_node_fronts_vllm.py.
    n = start_node([e.url for e in vllm_two], config="[router]\nstall_floor_ms = 30000\n")
    yield n
    assert n.stop() == 0


def client(node):
    return openai.OpenAI(base_url=node.url + "/v1", api_key="sk-local", max_retries=0, timeout=120)


def read_killing_after(raw, engine, pieces_before_kill=5):
    """Pieces, finish reasons, ids and usage of a stream; kills `engine` (its whole
    process group, kill -9) once `pieces_before_kill` pieces have arrived."""

    def kill(count):
        if count == pieces_before_kill:
            os.killpg(engine.pgid, signal.SIGKILL)
            assert wait_until(lambda: engine.proc.poll() is not None, 10, 0.05)

    return read_stream(raw.parse(), kill)


def test_a_vllm_killed_mid_stream_and_the_chat_stream_completes(node, vllm_two):
    """A chat continues as vLLM's `continue_final_message` (the completions endpoint's
    continuation, the prompt extended, is tested against the simulated engine)."""
    raw = client(node).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a lighthouse."}],
        max_tokens=TOKENS, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    serving = vllm_two[int(raw.headers["x-sluice-replica"])]
    before = metric(node.url, "sluice_migrations_total")
    pieces, finishes, ids, usage = read_killing_after(raw, serving)
    assert serving.proc.poll() is not None, "the engine was killed mid-stream"
    assert metric(node.url, "sluice_migrations_total") == before + 1
    # One answer from the client's side: one id, one finish, usage for one request.
    assert len(ids) == 1, ids
    assert finishes == ["length"], finishes
    assert usage is not None and usage.prompt_tokens > 0
    # The new engine re-tokenizes the text so far: its count of the tokens already sent
    # may differ from the first engine's by a token where text was cut mid-token.
    assert abs(usage.completion_tokens - TOKENS) <= 2, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(pieces) > 5
