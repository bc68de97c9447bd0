#!/usr/bin/env bash
# Starts vLLM (CPU build, .venv-vllm) serving one model, the way the real-engine tests
# and a node's command template do:
#
#   scripts/real_engines/vllm_serve.sh MODEL_DIR NAME HOST PORT [extra vLLM args...]
#
#   [replicas]
#   command = "scripts/real_engines/vllm_serve.sh /path/to/tiny-llama tiny-llama {host} {port}"
#
# PORT must be a real port: with `--port 0` vLLM does bind an ephemeral port, but it
# logs "Starting vLLM server on http://HOST:0" and never reports the real one.
# The script `exec`s the server, so the pid the launcher holds is vLLM's API server. Its
# EngineCore and worker are children in the same process group: SIGTERM to the API
# server alone stops them all (~2.5 s), but SIGKILL to it alone orphans them (~3.3 GB,
# still alive 90 s later). Start it with setsid / start_new_session and signal the group.
#
# Environment: SLUICE_VLLM_VENV (default: the repo's .venv-vllm) and anything in
# ../shared/REAL_ENGINES.md; the defaults below may be overridden by the caller.
#
# Start-up (2 cores): ~75 s the first time, ~35-40 s once the compile cache is warm;
# most of the rest is three processes importing torch. The compile caches live under
# target/real-engines/compile-cache (a CI cache of target/ keeps them). vLLM 0.32.0's
# default AOT compile cache never loads with torch 2.13 ("'function' object has no
# attribute 'finalize_loading'": it recompiles on every start, 8-13 s warm), so it is off
# by default here: the older path reuses inductor's FX graph cache (4-5 s warm).
# `--enforce-eager` starts ~5-10 s sooner still but decodes 2-6x slower per token.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 MODEL_DIR NAME HOST PORT [extra vLLM args...]" >&2
  exit 2
fi
model=$1 name=$2 host=$3 port=$4
shift 4
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${SLUICE_VLLM_VENV:-$root/.venv-vllm}

export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}          # GiB of KV cache
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export VLLM_USE_AOT_COMPILE=${VLLM_USE_AOT_COMPILE:-0}
export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-$root/target/real-engines/compile-cache/vllm}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$root/target/real-engines/compile-cache/torchinductor}

exec "$venv/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$model" --served-model-name "$name" \
  --host "$host" --port "$port" \
  --dtype bfloat16 --max-model-len 2048 \
  --enable-prefix-caching --enable-prompt-tokens-details \
  --scheduling-policy priority \
  "$@"
