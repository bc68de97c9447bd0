"""Tenants as a user meets them through the official openai client: a one-node cluster
with a tenant, its key accepted, a missing or wrong key an AuthenticationError, and a
tenant over its reservation with no spare a RateLimitError carrying Retry-After."""

import json
import re
from concurrent.futures import ThreadPoolExecutor
import os
import subprocess
import tempfile

import openai
import pytest

from conftest import MODEL, SLUICE, Proc, http, wait_until


def sluice(*args):
    out = subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


@pytest.fixture(scope="module")
def cluster():
    data = tempfile.mkdtemp()
    rc, _, err = sluice("cluster", "init", "--data-dir", data)
    assert rc == 0, err
    # A small profile capacity, so that one tenant can run out of reservation and spare.
    src = os.path.join(os.path.dirname(__file__), "..", "..", "actors", "profiles", "llama-3.1-8b-h100.toml")
    with open(src) as f:
        text = f.read()
    profile = os.path.join(data, "small.toml")
    with open(profile, "w") as f:
        f.write(re.sub(r"(?m)^capacity_mu_per_min = .*$", "capacity_mu_per_min = 60.0", text))
    node = Proc([SLUICE, "node", "start", "--data-dir", data, "--listen", "127.0.0.1:0",
                 "--http", "127.0.0.1:0", "--replicas", "1", "--time-scale", "0",
                 "--profile", profile], "sluice node listening on ")
    def registered():
        rc, out, _ = sluice("cluster", "status", "--json", "--data-dir", data)
        return rc == 0 and len(json.loads(out)["replicas"]) == 1

    assert wait_until(registered, timeout=30, every=0.2)
    yield data, node
    node.stop()


def test_keys_reservations_and_refusals_through_the_openai_client(cluster):
    data, node = cluster
    # Before any tenant exists the door is open.
    open_client = openai.OpenAI(base_url=node.url + "/v1", api_key="anything", max_retries=0)
    r = open_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].message.content

    rc, out, err = sluice("tenant", "create", "acme", "--data-dir", data)
    assert rc == 0, err
    key = next(line for line in out.splitlines() if line.startswith("sk-sluice-"))
    rc, _, err = sluice("tenant", "reserve", "acme", "--mu-per-min", "30", "--data-dir", data)
    assert rc == 0, err
    rc, _, err = sluice("tenant", "reserve", "acme", "--mu-per-min", "6000", "--data-dir", data)
    assert rc != 0 and "does not fit" in err

    client = openai.OpenAI(base_url=node.url + "/v1", api_key=key, max_retries=0)

    def accepted():
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            return True
        except openai.APIStatusError:
            return False

    assert wait_until(accepted, timeout=10), "the new tenant's key was not accepted"

    wrong = openai.OpenAI(base_url=node.url + "/v1", api_key="sk-sluice-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"
    # The client will not send without a key; a bare request shows the other 401.
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, _, raw = http("POST", node.url + "/v1/chat/completions", body, {"content-type": "application/json"})
    assert status == 401
    assert "provide an API key" in json.loads(raw)["error"]["message"]

    # 60 MU/min of capacity, 30 reserved: a burst of large requests runs out of both.
    refused = None
    for i in range(40):
        try:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"{i} " + "word " * 400}], max_tokens=200)
        except openai.RateLimitError as e:
            refused = e
            break
    assert refused is not None, "never refused past reservation and spare"
    assert refused.status_code == 429
    assert int(refused.response.headers["retry-after"]) >= 1
    assert refused.body["code"] == "rate_limit_exceeded"


def test_a_tenants_blast_radius_bounds_the_replicas_its_requests_reach():
    data = tempfile.mkdtemp()
    rc, _, err = sluice("cluster", "init", "--data-dir", data)
    assert rc == 0, err
    node = Proc([SLUICE, "node", "start", "--data-dir", data, "--listen", "127.0.0.1:0",
                 "--http", "127.0.0.1:0", "--replicas", "4", "--time-scale", "1"],
                "sluice node listening on ")
    try:
        def registered():
            rc, out, _ = sluice("cluster", "status", "--json", "--data-dir", data)
            return rc == 0 and len(json.loads(out)["replicas"]) == 4

        assert wait_until(registered, timeout=30, every=0.2)
        keys = {}
        for name in ("acme", "globex"):
            rc, out, err = sluice("tenant", "create", name, "--data-dir", data)
            assert rc == 0, err
            keys[name] = next(line for line in out.splitlines() if line.startswith("sk-sluice-"))
        rc, out, err = sluice("tenant", "limit", "acme", "--max-replicas", "1", "--data-dir", data)
        assert rc == 0, err
        assert "at most 1 replica" in out
        rc, _, err = sluice("tenant", "limit", "nobody", "--max-replicas", "1", "--data-dir", data)
        assert rc != 0 and "unknown tenant nobody" in err
        rc, out, err = sluice("tenant", "list", "--json", "--data-dir", data)
        assert rc == 0, err
        rows = {r["name"]: r for r in json.loads(out)}
        assert rows["acme"]["max_replicas"] == 1 and rows["globex"]["max_replicas"] is None

        def replicas_reached(key, n=24):
            # `n` requests at once, long enough to overlap: a replica's queue then
            # sends the unbounded ones elsewhere.
            client = openai.OpenAI(base_url=node.url + "/v1", api_key=key, max_retries=0)

            def one(i):
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL, max_tokens=200, extra_body={"ignore_eos": True},
                    messages=[{"role": "user", "content": f"{i} " + "word " * 300}])
                assert raw.parse().choices[0].message.content is not None
                return raw.headers["x-sluice-replica"]

            with ThreadPoolExecutor(max_workers=n) as pool:
                return set(pool.map(one, range(n)))

        # The key reaches the node once the control state is applied.
        assert wait_until(lambda: len(replicas_reached(keys["acme"], 1)) == 1, timeout=10)
        # 24 requests at once: the bounded tenant stays on one replica, the other
        # spreads over the fleet.
        assert len(replicas_reached(keys["acme"])) == 1
        assert len(replicas_reached(keys["globex"])) > 1
        # 0 removes the bound.
        rc, _, err = sluice("tenant", "limit", "acme", "--max-replicas", "0", "--data-dir", data)
        assert rc == 0, err
        assert wait_until(lambda: len(replicas_reached(keys["acme"], 12)) > 1, timeout=10)
    finally:
        node.stop()


def test_every_metric_the_grafana_dashboard_queries_is_on_metrics(cluster):
    """docs/grafana/sluice-fleet.json queries only what a running node exposes: after one
    tenant's streamed request, every series name in its expressions is on /metrics."""
    data, node = cluster
    rc, out, err = sluice("tenant", "create", "dashboard", "--data-dir", data)
    assert rc == 0, err
    key = next(line for line in out.splitlines() if line.startswith("sk-sluice-"))
    rc, _, err = sluice("tenant", "reserve", "dashboard", "--mu-per-min", "5", "--data-dir", data)
    assert rc == 0, err
    client = openai.OpenAI(base_url=node.url + "/v1", api_key=key, max_retries=0)

    def streamed():
        try:
            chunks = list(client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                stream=True, extra_body={"ignore_eos": True}))
            return len(chunks) > 1
        except openai.APIStatusError:
            return False

    assert wait_until(streamed, timeout=10), "the dashboard tenant's stream was not served"
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "grafana", "sluice-fleet.json")
    with open(path) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"\bsluice_[a-z0-9_]+", e)}
    _, _, body = http("GET", node.url + "/metrics")
    exposed = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()
               if line and not line.startswith("#")}
    missing = sorted(queried - exposed)
    assert not missing, f"the dashboard queries series no node exposes: {missing}"
    # What operators look at first is all there.
    for needed in ["sluice_time_to_first_byte_seconds_bucket", "sluice_time_per_output_token_seconds_bucket",
                   "sluice_replica_inflight_mu", "sluice_replica_capacity_mu_per_min",
                   "sluice_cached_prompt_tokens_total", "sluice_tenant_mu_total",
                   "sluice_migrations_total", "sluice_ejections_total", "sluice_model_inflight_mu"]:
        assert needed in queried, needed
