#!/usr/bin/env bash
# The GPU benchmark: one script, at most 8 minutes on one H200 (see benchmarks/gpu_bench.py for what it measures).
#
#   bash benchmarks/gpu.sh [OUT_DIR]            # on a GPU machine; results in OUT_DIR/gpu_benchmark.json
#   bash benchmarks/gpu.sh --tiny OUT_DIR       # tiny random models, runs on a CPU (the test suite does this)
#
# A GPU machine that reaches no package index installs what its image lacks from the wheels in .whl/ (fetch them
# here first with `bash benchmarks/gpu_wheels.sh`, then send .whl along: run(command="bash benchmarks/gpu.sh",
# carry=[".whl"])); they go to a private folder on PYTHONPATH, the image's packages stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
TINY=()
if [ "${1:-}" = "--tiny" ]; then TINY=(--tiny); shift; fi
OUT="${1:-runs/gpu_benchmark}"
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE="${TMPDIR:-/tmp}/svdd_gpu_site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 - <<'PY' || { echo "error: packages missing: run 'bash benchmarks/gpu_wheels.sh' here and carry .whl" >&2; exit 1; }
import importlib
missing = [m for m in ("torch", "lightning", "jsonargparse", "diffusers", "transformers", "safetensors", "torchmetrics",
                       "yaml", "matplotlib", "scipy") if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"missing: {missing}")
PY
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
export PYTHONUNBUFFERED=1
timeout 470 python3 benchmarks/gpu_bench.py --out "$OUT" "${TINY[@]}"
