"""The live view in a real browser: a two-node cluster under load, with a tenant and a
replica that crashes, and what headless Chromium (Debian's `chromium`) shows on /ui."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

import openai
import pytest

from conftest import MODEL, SLUICE, Proc, http, start_node, wait_until

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "no chromium on PATH (scripts/test.sh installs Debian's chromium)"
    if os.environ.get("SLUICE_BROWSER_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def browse(url, *extra):
    """The page's DOM after its script ran (or what `extra` asks for, e.g. a screenshot)."""
    profile = tempfile.mkdtemp()
    out = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1300,1000",
                          "--virtual-time-budget=5000", *(extra or ["--dump-dom"]), url],
                         capture_output=True, text=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def sluice(*args):
    out = subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def cluster():
    d1, d2 = tempfile.mkdtemp(), tempfile.mkdtemp()
    sluice("cluster", "init", "--data-dir", d1)
    common = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--replicas", "2"]
    n1 = Proc([SLUICE, "node", "start", "--data-dir", d1, "--rack", "r1", *common], "sluice node listening on ")
    with open(os.path.join(d1, "tls", "join-token")) as f:
        token = f.read().strip()
    with open(os.path.join(d1, "listen")) as f:
        join = f.read().strip()
    n2 = Proc([SLUICE, "node", "start", "--data-dir", d2, "--rack", "r2", *common, "--join", join,
               "--token", token], "sluice node listening on ")

    def ready():
        s = json.loads(sluice("cluster", "status", "--json", "--data-dir", d1))
        return len(s["replicas"]) == 4 and all(r["health"] == "healthy" for r in s["replicas"])

    assert wait_until(ready, timeout=60, every=0.3)
    out = sluice("tenant", "create", "acme", "--data-dir", d1)
    key = next(line for line in out.splitlines() if line.startswith("sk-sluice-"))
    sluice("tenant", "reserve", "acme", "--mu-per-min", "20000", "--data-dir", d1)
    yield n1, n2, key
    n2.stop()
    n1.stop()


def load(url, key, seconds):
    """Streams of several sessions for `seconds`, as a tenant."""
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=2)
    stop = time.monotonic() + seconds

    def worker(i):
        while time.monotonic() < stop:
            for _ in c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"task {i} " * 40}],
                                               max_tokens=120, stream=True, extra_headers={"x-session-id": f"s{i}"}):
                pass

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    return threads


def test_the_page_shows_the_fleet_the_keyspace_the_members_tenants_and_events(cluster):
    n1, n2, key = cluster
    threads = load(n1.url, key, 12)
    # A replica crashes under load: its supervisor restarts it.
    _, _, health = http("GET", n2.url + "/health")
    victim = next(u for u in json.loads(health)["upstreams"] if u["url"])
    http("POST", victim["url"] + "/admin/fault", {"kind": "crash"})
    assert wait_until(lambda: any(e["kind"] == "restart" for e in json.loads(http("GET", n2.url + "/ui/state")[2])["events"]),
                      timeout=30, every=0.3)
    time.sleep(2)
    dom = browse(n2.url + "/ui")
    shot = os.environ.get("SLUICE_UI_SCREENSHOT")
    if shot:
        # docs/live-view.png is made this way.
        browse(n2.url + "/ui", f"--screenshot={os.path.abspath(shot)}")
    for t in threads:
        t.join(30)
    assert 'data-ready="true"' in dom
    # The leader and both members, with their racks.
    state = json.loads(http("GET", n2.url + "/ui/state")[2])
    leader = state["cluster"]["leader"]
    assert re.search(rf'id="leader"[^>]*data-leader="{leader}"', dom), dom[:2000]
    roles = re.findall(r'<tr data-node="\d+" data-role="([a-z]+)"', dom)
    assert sorted(roles)[0] == "leader" and len(roles) == 2, roles
    assert 'data-rack="r1"' in dom and 'data-rack="r2"' in dom
    # Every replica, as a cell.
    assert len(re.findall(r'class="replica [a-z]+ [a-z0-9]+" data-id="\d+"', dom)) == 4
    # The keyspace with its generation, and the tenant's use against its reservation.
    assert re.search(r'id="keyspace-summary"[^>]*>generation \d+ · \d+ slices', dom)
    tenant = re.search(r'<tr data-tenant="acme"><td>acme</td><td>([0-9.]+)</td><td>20000</td>', dom)
    assert tenant and float(tenant.group(1)) > 0, re.findall(r'<tr data-tenant=.{0,200}', dom)
    # What happened: the restart, as the page lists it.
    assert re.search(r'<li class="event" data-kind="restart"[^>]*>.*?replica \d+: engine restarted', dom)


def test_the_view_stays_readable_for_a_thousand_replicas():
    """One node fronting 1,000 replica addresses (nothing listens there: out of service),
    drawn as small cells, with the slice list bounded."""
    urls = [f"http://127.0.0.1:{9 + i % 50}/r{i}" for i in range(1000)]
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write("[replicas]\nmodel = \"%s\"\n" % MODEL)
    cfg.close()
    args = [SLUICE, "node", "start", "--http", "127.0.0.1:0", "--config", cfg.name]
    for u in urls:
        args += ["--replica", u]
    n = Proc(args, "sluice node listening on ", timeout=60)
    try:
        out = os.path.join(tempfile.mkdtemp(), "ui.png")
        dom = browse(n.url + "/ui")
        assert len(re.findall(r'class="replica small down" data-id="\d+"', dom)) == 1000
        assert len(re.findall(r'<tr (?:class="[a-z]*" )?data-slice=', dom)) <= 64
        browse(n.url + "/ui", f"--screenshot={out}")
        assert os.path.getsize(out) > 10_000
    finally:
        n.stop()


def test_a_node_serving_two_models_shows_a_tab_for_each():
    """The embedded default (two models): the page has a tab per model, and the chosen
    model's tab shows that model's replicas only."""
    n = start_node(extra=["--time-scale", "0"], timeout=120)
    try:
        dom = browse(n.url + "/ui?model=llama-3.2-3b-instruct")
        tabs = re.findall(r'<button class="tab( active)?" data-model="([^"]+)"', dom)
        assert [m for _, m in tabs] == ["llama-3.1-8b-instruct", "llama-3.2-3b-instruct"], tabs
        assert [m for active, m in tabs if active] == ["llama-3.2-3b-instruct"]
        # The second model's replicas are the node's ids 4 and 5.
        assert sorted(re.findall(r'class="replica [^"]*" data-id="(\d+)"', dom)) == ["4", "5"]
    finally:
        assert n.stop() == 0
