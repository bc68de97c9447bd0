#!/bin/bash
# Peer routers side by side (issue 13, item 7).
#
# Fronts ONE zero-delay simulated replica (`sluice replica sim --time-scale 0`) with, in
# turn: nothing (direct), Sluice, nginx, SGLang's router (`sglang-router`), its successor
# the Shepherd Model Gateway (`smg`), `vllm-router` and LiteLLM, and drives each with the
# same two generators:
#   wrk            a Lua script POSTs a non-streaming chat body and checks every answer
#                  (status 200 and a body containing "choices"); bad answers, socket
#                  errors and timeouts are counted and reported, and req/s counts good
#                  answers only, so a router that answers errors cannot look fast;
#   sluice loadgen closed loop, same concurrency, same body shape (1 prompt word,
#                  max_tokens 8); its req/s counts 2xx answers only.
# Each is run loaded (64 connections, wrk with 2 threads) and unloaded (concurrency 1),
# after a short warm-up. Only one router runs at a time. Everything binds 127.0.0.1;
# every process started here is killed at exit; every step is bounded in time.
#
# Peers are installed on first use: each PyPI package into its own venv under
# target/peer-routers/venv/<name> (reused when present), nginx and wrk with apt-get.
# Each peer runs with its documented defaults plus round-robin where it has a policy,
# and its own Prometheus port (bound to 127.0.0.1) where it has one.
#
# Usage: scripts/bench_peer_routers.sh [--duration S] [--only LIST] [--skip LIST]
#            [--json FILE] [--connections N] [--unloaded-duration S] [--warmup S]
#            [--litellm-duration S] [--litellm-connections N] [--no-install]
#            [--quiet-logs] [--keep-work]
#   LIST is comma-separated from: sluice,nginx,sglang-router,smg,vllm-router,litellm,direct-end
#   (`direct` is always measured first: it is the reference for the ratios; `direct-end`
#   measures it again at the end to show drift). The markdown table goes to stdout,
#   progress to stderr. SLUICE=path overrides the binary (default target/release/sluice).
#   --quiet-logs turns off the per-request logging that some peers do by default (nginx's
#   access log; sglang-router's and smg's INFO lines, two per request, via --log-level
#   warn); without it every peer runs with its defaults. --keep-work keeps the work
#   directory (logs, raw generator output); it is deleted at exit otherwise.
set -u -o pipefail

DURATION=10
UNLOADED_DURATION=""
CONNS=64
THREADS=2
WARMUP=2
ONLY=""
SKIP=""
JSON_OUT=""
LITELLM_DURATION=""
LITELLM_CONNS=""
INSTALL=1
QUIET_LOGS=0
KEEP_WORK=0
ALL_TARGETS="sluice nginx sglang-router smg vllm-router litellm direct-end"

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --unloaded-duration) UNLOADED_DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --json) JSON_OUT=$2; shift 2 ;;
    --litellm-duration) LITELLM_DURATION=$2; shift 2 ;;
    --litellm-connections) LITELLM_CONNS=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --quiet-logs) QUIET_LOGS=1; shift ;;
    --keep-work) KEEP_WORK=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 >&2 ;;
  esac
done
[ -n "$UNLOADED_DURATION" ] || UNLOADED_DURATION=$(( DURATION / 2 > 3 ? DURATION / 2 : 3 ))
[ -n "$LITELLM_DURATION" ] || LITELLM_DURATION=$DURATION
[ -n "$LITELLM_CONNS" ] || LITELLM_CONNS=$CONNS
for t in ${ONLY//,/ } ${SKIP//,/ }; do
  case " direct $ALL_TARGETS " in *" $t "*) ;; *) echo "unknown target: $t" >&2; exit 2 ;; esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${SLUICE:-$ROOT/target/release/sluice}
case "$B" in /*) ;; *) B=$PWD/$B ;; esac
PEERS=${PEER_DIR:-$ROOT/target/peer-routers}
WORK=$(mktemp -d /tmp/bench-peer-routers.XXXXXX)
RESULTS=$WORK/results.jsonl
: > "$RESULTS"
MODEL=llama-3.1-8b-instruct
BODY='{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Hello"}],"max_tokens":8}'
CMDLINE="scripts/bench_peer_routers.sh $*"

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- processes: each started in its own session, killed by its process-group id ------
PIDS=()
start_proc() { # DIR LOGFILE CMD...  -> sets LAST_PID (also its process-group id)
  local dir=$1 out=$2; shift 2
  ( cd "$dir" && exec setsid "$@" ) > "$out" 2>&1 < /dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
stop_proc() { # PID
  local pid=$1 i
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
cleanup() {
  local p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_proc "$p"; done
  if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until URL answers a chat request with "choices" (or PID dies, or TIMEOUT s pass).
wait_ready() { # URL PID TIMEOUT
  local url=$1 pid=$2 deadline=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    if curl -s -m 5 -H 'content-type: application/json' -d "$BODY" \
        "$url/v1/chat/completions" 2>/dev/null | grep -q '"choices"'; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

# ---- installation ------------------------------------------------------------------
APT_UPDATED=0
apt_install() { # PKG...
  [ "$INSTALL" = 1 ] || return 1
  command -v apt-get > /dev/null || return 1
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    timeout 600 apt-get update -qq > "$WORK/apt.log" 2>&1 || return 1
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@" >> "$WORK/apt.log" 2>&1
}
# venv_install NAME PIP_SPEC EXE -> prints the venv's bin dir; a failure reason on stderr log
venv_install() {
  local name=$1 spec=$2 exe=$3 v=$PEERS/venv/$1
  if [ ! -x "$v/bin/$exe" ]; then
    [ "$INSTALL" = 1 ] || { echo "not installed (--no-install)" > "$WORK/$name.install"; return 1; }
    log "installing $spec into $v"
    mkdir -p "$PEERS/venv"
    if ! { [ -x "$v/bin/pip" ] || timeout 300 python3 -m venv "$v"; } > "$WORK/$name.pip.log" 2>&1 ||
       ! timeout 1800 "$v/bin/pip" install -q "$spec" >> "$WORK/$name.pip.log" 2>&1 ||
       [ ! -x "$v/bin/$exe" ]; then
      { echo -n "pip install $spec failed: "; grep -v '^\s*$' "$WORK/$name.pip.log" | tail -n 2 | tr '\n' ' '; } \
        > "$WORK/$name.install"
      return 1
    fi
  fi
  echo "$v/bin"
}
pip_version() { "$1/pip" show "$2" 2>/dev/null | awk '/^Version:/ {print $2}'; }

# ---- generators --------------------------------------------------------------------
cat > "$WORK/check.lua" <<'LUA'
-- POSTs one non-streaming chat body; checks every answer; reports good/bad and percentiles.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) table.insert(threads, thread) end

bad = 0
first_bad = ""
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"choices"', 1, true) then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body, 1, 160) end
  end
end

function done(summary, latency, requests)
  local b, fb = 0, ""
  for _, t in ipairs(threads) do
    b = b + (t:get("bad") or 0)
    local f = t:get("first_bad")
    if fb == "" and f and f ~= "" then fb = f end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKRESULT {"requests":%d,"duration_us":%d,"bad":%d,"connect":%d,"read":%d,"write":%d,"status_errors":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, b, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  if fb ~= "" then io.write("WRKFIRSTBAD " .. string.gsub(fb, "[\r\n]", " ") .. "\n") end
end
LUA

# Appends one JSON line to $RESULTS.  record TARGET GEN CONC DURATION JSON_FIELDS
record() {
  printf '{"target":"%s","gen":"%s","concurrency":%s,"duration_s":%s,%s}\n' "$1" "$2" "$3" "$4" "$5" >> "$RESULTS"
}

run_wrk() { # TARGET URL CONNS THREADS DURATION
  local target=$1 url=$2 c=$3 t=$4 d=$5 out=$WORK/$1.wrk.c$3.txt
  BENCH_BODY=$BODY timeout $(( d + 30 )) wrk -t"$t" -c"$c" -d"${d}s" --timeout 10s --latency \
    -s "$WORK/check.lua" "$url/v1/chat/completions" > "$out" 2>&1
  local line; line=$(grep '^WRKRESULT ' "$out" | head -n1 | sed 's/^WRKRESULT {//; s/}$//')
  if [ -z "$line" ]; then
    log "  wrk c$c: no result (see $out)"; record "$target" wrk "$c" "$d" '"failed":true'; return
  fi
  local fb; fb=$(grep '^WRKFIRSTBAD ' "$out" | head -n1 | sed 's/^WRKFIRSTBAD //' | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')
  record "$target" wrk "$c" "$d" "$line,\"first_bad\":$fb"
  log "  wrk c$c: $(tail -n1 "$RESULTS" | python3 -c '
import json,sys; r=json.loads(sys.stdin.read()); g=r["requests"]-r["bad"]; e=r["connect"]+r["read"]+r["write"]+r["timeout"]
print("%.0f good req/s, p50 %d us, p99 %d us, bad answers %d, socket errors/timeouts %d" % (g/(r["duration_us"]/1e6), r["p50_us"], r["p99_us"], r["bad"], e))')"
}

run_loadgen() { # TARGET URL CONCURRENCY DURATION
  local target=$1 url=$2 c=$3 d=$4 j=$WORK/$1.loadgen.c$3.json
  timeout $(( d + WARMUP + 60 )) "$B" loadgen --url "$url" --concurrency "$c" --duration "$d" \
    --warmup "$WARMUP" --max-tokens 8 --prompt-words 1 --timeout 10 --json "$j" \
    > "$WORK/$1.loadgen.c$3.txt" 2>&1
  if [ ! -s "$j" ]; then
    log "  loadgen c$c: no result (see $WORK/$1.loadgen.c$3.txt)"; record "$target" loadgen "$c" "$d" '"failed":true'; return
  fi
  record "$target" loadgen "$c" "$d" "$(python3 -c '
import json,sys; r=json.load(open(sys.argv[1])); l=r["latency_us"]
bad=r["sent"]-r["ok"]
print(json.dumps({"rps":r["rps"],"sent":r["sent"],"ok":r["ok"],"bad":bad,"p50_us":l["p50"],"p90_us":l["p90"],"p99_us":l["p99"],"max_us":l["max"]})[1:-1])' "$j")"
  log "  loadgen c$c: $(tail -n1 "$RESULTS" | python3 -c '
import json,sys; r=json.loads(sys.stdin.read())
print("%.0f ok req/s, p50 %d us, p99 %d us, bad %d" % (r["rps"], r["p50_us"], r["p99_us"], r["bad"]))')"
}

measure() { # TARGET URL
  local target=$1 url=$2 d=$DURATION c=$CONNS w=$WARMUP
  # LiteLLM's first requests after start take seconds each: give it a longer warm-up.
  if [ "$target" = litellm ]; then d=$LITELLM_DURATION; c=$LITELLM_CONNS; w=$(( WARMUP > 10 ? WARMUP : 10 )); fi
  log "$target: load average $(loadavg); warm-up ${w}s"
  BENCH_BODY=$BODY timeout $(( w + 30 )) wrk -t"$THREADS" -c"$c" -d"${w}s" --timeout 10s \
    -s "$WORK/check.lua" "$url/v1/chat/completions" > /dev/null 2>&1
  run_wrk "$target" "$url" "$c" "$THREADS" "$d"
  run_wrk "$target" "$url" 1 1 "$UNLOADED_DURATION"
  run_loadgen "$target" "$url" "$c" "$d"
  run_loadgen "$target" "$url" 1 "$UNLOADED_DURATION"
}

status() { # TARGET STATUS VERSION REASON
  python3 -c 'import json,sys; print(json.dumps({"target":sys.argv[1],"state":sys.argv[2],"version":sys.argv[3],"reason":sys.argv[4],"load":sys.argv[5]}))' \
    "$1" "$2" "$3" "$4" "$(loadavg)" >> "$RESULTS"
}

# ---- the peers ---------------------------------------------------------------------
# Each start_* sets URL, VERSION and PID, or sets REASON and returns 1.
start_sluice() {
  local p; p=$(free_port); mkdir -p "$WORK/sluice"
  VERSION=$SLUICE_VERSION
  start_proc "$WORK/sluice" "$WORK/sluice.log" "$B" node start --http "127.0.0.1:$p" --replica "$REPLICA"
  PID=$LAST_PID; URL="http://127.0.0.1:$p"
}
start_nginx() {
  command -v nginx > /dev/null || apt_install nginx || { REASON="nginx not installed and apt-get install nginx failed"; return 1; }
  local p d=$WORK/nginx; p=$(free_port); mkdir -p "$d/tmp"
  VERSION=$(nginx -v 2>&1 | sed 's/.*nginx\///')
  local ACCESS_LOG="$d/access.log"; [ "$QUIET_LOGS" = 1 ] && ACCESS_LOG=off
  # worker_processes auto is Debian's shipped default (nginx's compiled-in default is 1);
  # access logging stays on, as by default. keepalive/HTTP 1.1/empty Connection header are
  # what nginx documents for keeping upstream connections open.
  cat > "$d/nginx.conf" <<EOF
worker_processes auto;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log;
events {}
http {
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  access_log $ACCESS_LOG;
  upstream replica {
    server ${REPLICA#http://};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$p;
    location / {
      proxy_pass http://replica;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  start_proc "$d" "$WORK/nginx.log" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
  PID=$LAST_PID; URL="http://127.0.0.1:$p"
}
start_rust_router() { # NAME PIP_SPEC EXE [SUBCOMMAND]
  local name=$1 spec=$2 exe=$3 sub=${4:-} bin p m quiet=()
  # sglang-router and smg log two INFO lines per request by default; vllm-router does not.
  [ "$QUIET_LOGS" = 1 ] && [ "$name" != vllm-router ] && quiet=(--log-level warn)
  bin=$(venv_install "$name" "$spec" "$exe") || { REASON=$(cat "$WORK/$name.install"); return 1; }
  VERSION=$(pip_version "$bin" "$spec")
  p=$(free_port); m=$(free_port)
  start_proc "$WORK" "$WORK/$name.log" "$bin/$exe" $sub --host 127.0.0.1 --port "$p" --worker-urls "$REPLICA" \
    --policy round_robin --prometheus-host 127.0.0.1 --prometheus-port "$m" "${quiet[@]+"${quiet[@]}"}"
  PID=$LAST_PID; URL="http://127.0.0.1:$p"
}
start_litellm() {
  local bin p d=$WORK/litellm; mkdir -p "$d"
  bin=$(venv_install litellm 'litellm[proxy]' litellm) || { REASON=$(cat "$WORK/litellm.install"); return 1; }
  VERSION=$(pip_version "$bin" litellm)
  p=$(free_port)
  cat > "$d/config.yaml" <<EOF
model_list:
  - model_name: $MODEL
    litellm_params:
      model: hosted_vllm/$MODEL
      api_base: $REPLICA/v1
      api_key: none
EOF
  # The master-key override is required to start without one; the local cost map only
  # avoids a fetch from the internet at start (this machine has no route to it).
  start_proc "$d" "$WORK/litellm.log" env LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true \
    LITELLM_LOCAL_MODEL_COST_MAP=True "$bin/litellm" --config "$d/config.yaml" --host 127.0.0.1 --port "$p"
  PID=$LAST_PID; URL="http://127.0.0.1:$p"
}

selected() { # TARGET
  if [ -n "$ONLY" ]; then case ",$ONLY," in *",$1,"*) ;; *) return 1 ;; esac; fi
  case ",$SKIP," in *",$1,"*) return 1 ;; esac
  return 0
}

# ---- main --------------------------------------------------------------------------
log "work dir $WORK"
[ -x "$B" ] || die "$B not found: cargo build --release --bin sluice"
# A private copy: a rebuild of the tree during the run must not change the binary under test.
cp "$B" "$WORK/sluice-bin" || die "cannot copy $B"
SLUICE_VERSION="git $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD -- 2>/dev/null || echo ' (dirty tree)')"
[ -n "${SLUICE:-}" ] && SLUICE_VERSION="$B"
SLUICE_BUILT=$(date -r "$B" '+%Y-%m-%d %H:%M %Z')
B=$WORK/sluice-bin
command -v wrk > /dev/null || apt_install wrk || die "wrk not installed and apt-get install wrk failed"
command -v curl > /dev/null || die "curl is needed"
LOAD_START=$(loadavg)

start_proc "$WORK" "$WORK/replica.out" "$B" replica sim --port 0 --time-scale 0
REPLICA_PID=$LAST_PID
for i in $(seq 100); do
  REPLICA=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$WORK/replica.out" | head -n1)
  [ -n "$REPLICA" ] && break; sleep 0.1
done
[ -n "$REPLICA" ] && wait_ready "$REPLICA" "$REPLICA_PID" 20 || die "replica did not start: $(cat "$WORK/replica.out")"
log "replica $REPLICA"

status direct ok "" ""
measure direct "$REPLICA"

for target in $ALL_TARGETS; do
  selected "$target" || continue
  URL="" VERSION="" REASON="" PID=""
  if [ "$target" = direct-end ]; then
    status direct-end ok "" ""; measure direct-end "$REPLICA"; continue
  fi
  log "$target: starting"
  ok=0
  case "$target" in
    sluice) start_sluice && ok=1 ;;
    nginx) start_nginx && ok=1 ;;
    sglang-router) start_rust_router sglang-router sglang-router sglang-router launch && ok=1 ;;
    smg) start_rust_router smg smg smg launch && ok=1 ;;
    vllm-router) start_rust_router vllm-router vllm-router vllm-router && ok=1 ;;
    litellm) start_litellm && ok=1 ;;
  esac
  if [ "$ok" = 1 ]; then
    ready_timeout=60; [ "$target" = litellm ] && ready_timeout=240
    if wait_ready "$URL" "$PID" "$ready_timeout"; then
      status "$target" ok "$VERSION" ""
      measure "$target" "$URL"
    else
      REASON="did not answer a chat request within ${ready_timeout}s: $(grep -v '^\s*$' "$WORK/$target.log" 2>/dev/null | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
      ok=0
    fi
    [ -n "$PID" ] && stop_proc "$PID"
  fi
  if [ "$ok" = 0 ]; then
    log "$target: not measured: $REASON"
    status "$target" failed "$VERSION" "$REASON"
  fi
done
LOAD_END=$(loadavg)

# ---- report ------------------------------------------------------------------------
python3 - "$RESULTS" "$JSON_OUT" "$CMDLINE" "$LOAD_START" "$LOAD_END" "$CONNS" "$THREADS" \
  "$DURATION" "$UNLOADED_DURATION" "$LITELLM_DURATION" "$LITELLM_CONNS" "$WARMUP" "$QUIET_LOGS" "$SLUICE_BUILT" "$(wrk -v 2>&1 | head -n1 | awk '{print $2}')" <<'PY'
import json, sys, platform, os, datetime
(res, json_out, cmd, load_start, load_end, conns, threads, dur, udur, ldur, lconns, warm, quiet, built, wrkv) = sys.argv[1:]
rows = [json.loads(l) for l in open(res)]
status = {r["target"]: r for r in rows if "state" in r}
meas = {(r["target"], r["gen"], r["concurrency"]): r for r in rows if "gen" in r}
conns, lconns = int(conns), int(lconns)
order = ["direct", "sluice", "nginx", "sglang-router", "smg", "vllm-router", "litellm", "direct-end"]
names = {"direct": "direct (no router)", "direct-end": "direct, again at the end", "sluice": "Sluice",
         "nginx": "nginx", "sglang-router": "sglang-router", "smg": "smg", "vllm-router": "vllm-router",
         "litellm": "LiteLLM proxy"}

def load_c(t): return lconns if t == "litellm" else conns
def wrk_rps(r):
    if not r or r.get("failed"): return None
    return (r["requests"] - r["bad"]) / (r["duration_us"] / 1e6)
def wrk_bad(r):
    if not r or r.get("failed"): return None
    return r["bad"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
def lg_rps(r): return None if not r or r.get("failed") else r["rps"]
def ms(us):
    if us is None: return "—"
    m = us / 1000
    return f"{m:.3f}" if m < 1 else f"{m:.2f}" if m < 10 else f"{m:.1f}" if m < 100 else f"{m:.0f}"
def num(x): return "—" if x is None else f"{x/1000:.1f}k" if x >= 1000 else f"{x:.0f}"
def ratio(x, base): return "—" if x is None or not base else f"{x/base:.2f}×"
def get(t, g, c):
    r = meas.get((t, g, c)); return r

base_w = wrk_rps(get("direct", "wrk", conns)); base_l = lg_rps(get("direct", "loadgen", conns))
base_w1 = get("direct", "wrk", 1); base_l1 = get("direct", "loadgen", 1)
out = []
out.append(f"Loaded: closed loop, {conns} connections (wrk: {threads} threads), non-streaming chat, max_tokens 8; "
           f"req/s counts good answers only; ratio = req/s ÷ direct req/s.\n")
out.append("| router | version | wrk req/s | p50 ms | p99 ms | × direct | bad | loadgen req/s | p50 ms | p99 ms | × direct | bad |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
notes = []
for t in order:
    s = status.get(t)
    if not s: continue
    if s["state"] != "ok":
        out.append(f"| {names[t]} | {s['version'] or '—'} | not run | | | | | | | | | |")
        notes.append(f"- {names[t]}: not measured: {s['reason']}")
        continue
    c = load_c(t)
    w, l = get(t, "wrk", c), get(t, "loadgen", c)
    wr, lr = wrk_rps(w), lg_rps(l)
    wv = lambda k: None if not w or w.get("failed") else w[k]
    lv = lambda k: None if not l or l.get("failed") else l[k]
    name = names[t] + (f" ({c} conn.)" if c != conns else "")
    out.append(f"| {name} | {s['version'] or '—'} | {num(wr)} | {ms(wv('p50_us'))} | {ms(wv('p99_us'))} | {ratio(wr, base_w)} | "
               f"{'—' if wrk_bad(w) is None else wrk_bad(w)} | {num(lr)} | {ms(lv('p50_us'))} | {ms(lv('p99_us'))} | {ratio(lr, base_l)} | "
               f"{'—' if lv('bad') is None else lv('bad')} |")
    if w and w.get("first_bad"): notes.append(f"- {names[t]}: first bad wrk answer: `{w['first_bad'][:160]}`")
out.append("")
out.append(f"Unloaded: concurrency 1 for {udur} s; added = p50 minus direct's p50.\n")
out.append("| router | wrk p50 ms | wrk p99 ms | added p50 ms | loadgen p50 ms | loadgen p99 ms | added p50 ms | bad |")
out.append("|---|---|---|---|---|---|---|---|")
def added(r, b, k):
    if not r or r.get("failed") or not b or b.get("failed"): return "—"
    return f"{(r[k]-b[k])/1000:+.3f}"
for t in order:
    s = status.get(t)
    if not s or s["state"] != "ok": continue
    w, l = get(t, "wrk", 1), get(t, "loadgen", 1)
    ok = lambda r: r and not r.get("failed")
    bad = (wrk_bad(w) or 0) + ((l or {}).get("bad") or 0)
    out.append(f"| {names[t]} | {ms(w['p50_us']) if ok(w) else '—'} | {ms(w['p99_us']) if ok(w) else '—'} | "
               f"{added(w, base_w1, 'p50_us')} | "
               f"{ms(l['p50_us']) if ok(l) else '—'} | {ms(l['p99_us']) if ok(l) else '—'} | "
               f"{added(l, base_l1, 'p50_us')} | {bad} |")
out.append("")
if quiet == "1": out.append("With --quiet-logs: nginx access log off, sglang-router and smg at --log-level warn.")
out.append(f"Duration {dur} s per loaded run ({ldur} s for LiteLLM), {udur} s per unloaded run, after a warm-up "
           f"(wrk, {warm} s; 10 s or more for LiteLLM; loadgen adds its own {warm} s); "
           f"Sluice binary built {built}; wrk {wrkv}; load average {load_start} at start, {load_end} at end; "
           f"{os.cpu_count()} CPUs; {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}.")
if notes:
    out.append("")
    out.extend(notes)
print("\n".join(out))
if json_out:
    json.dump({"command": cmd, "date": datetime.datetime.now().astimezone().isoformat(),
               "cpus": os.cpu_count(), "machine": platform.platform(),
               "load_start": load_start, "load_end": load_end, "connections": conns, "wrk_threads": int(threads),
               "duration_s": float(dur), "unloaded_duration_s": float(udur),
               "litellm_duration_s": float(ldur), "litellm_connections": lconns, "warmup_s": float(warm), "quiet_logs": quiet == "1", "sluice_binary_built": built,
               "results": rows}, open(json_out, "w"), indent=1)
PY
