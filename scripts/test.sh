#!/usr/bin/env bash
# Runs every check and test of the project. Installs what the tests need on a fresh
# machine: a Python virtual environment with the official openai client, vLLM's CPU
# build with a tiny model made locally for the real-engine suite, and Debian's Chromium
# for the live view's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

# A hung test fails the run loudly instead of running into CI's limit.
bounded() {
  local limit=$1
  shift
  local rc=0
  timeout --kill-after=30s "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "TIMED OUT after $limit: $*" >&2
    else
      echo "FAILED (exit $rc): $*" >&2
    fi
    exit "$rc"
  fi
}

step "python test environment (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

step "vLLM (CPU build) for the real-engine suite (.venv-vllm)"
# Reuses pip's cache and an existing .venv-vllm; see ../shared/REAL_ENGINES.md.
bounded 25m ./scripts/real_engines/install_vllm.sh

step "headless Chromium (Debian's) for the live view's browser test"
if ! command -v chromium >/dev/null 2>&1; then
  apt=(apt-get)
  if [ "$(id -u)" -ne 0 ]; then apt=(sudo apt-get); fi
  bounded 10m "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive bounded 10m "${apt[@]}" install -y -qq --no-install-recommends chromium
fi

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "one TLS provider (no aws-lc)"
if cargo tree --workspace --locked -e normal | grep -q 'aws-lc'; then
  echo "aws-lc is in the dependency tree: it panics next to ring at run time" >&2
  exit 1
fi

step "build"
cargo build --workspace --bins --locked

step "rust tests"
bounded 30m cargo test --workspace --locked --exclude sluice-loadgen
# One at a time: calibration measures a live engine's throughput and must not share
# the two cores with the load generator's tests.
bounded 15m cargo test -p sluice-loadgen --locked -- --test-threads=1

step "end-to-end tests with the openai client"
SLUICE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/sluice" SLUICE_BROWSER_REQUIRED=1 \
  bounded 10m .venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider

step "real-engine tests: the node in front of vLLM, and supervising it"
# Engines are started by the tests in their own process groups and stopped with them.
SLUICE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/sluice" SLUICE_REAL_ENGINES_REQUIRED=1 \
  bounded 30m .venv/bin/python -m pytest tests/real_engines -q -p no:cacheprovider

echo
echo "all checks passed"
