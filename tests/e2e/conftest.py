"""Process fixtures for the end-to-end tests: real `sluice` replicas and nodes on
loopback ports, driven with the official openai client."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from sluice_proc import SLUICE, Proc, http, metric, start_node, wait_until  # noqa: E402,F401

MODEL = "llama-3.1-8b-instruct"


def start_replica(seed=0, time_scale=1.0, model=None):
    extra = ["--model", model] if model else []
    return Proc([SLUICE, "replica", "sim", "--port", "0", "--seed", str(seed), "--time-scale", str(time_scale),
                 *extra], "sluice replica listening on ")


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
