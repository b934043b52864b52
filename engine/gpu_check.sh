#!/usr/bin/env bash
# GPU check for the engine layer: export, build TensorRT plans, compare with ONNX Runtime / torch, time, one table.
# Usage: engine/gpu_check.sh [--model DIR] [--precision fp16|fp32] [--frames N] [--scenes N] [--json FILE]
# Environment: PYTHON (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /etc/nv_tegra_release ]]; then
  echo "gpu_check: no nvidia-smi and not a Jetson: no NVIDIA GPU here; only the CPU rows will run" >&2
fi
missing=$("$PYTHON" - <<'PY'
import importlib.util
print(" ".join(m for m in ("torch", "transformers", "onnx", "onnxruntime", "tensorrt")
               if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  echo "gpu_check: missing Python packages: $missing (tensorrt: pip install 'tensorrt-cu12>=10,<11.5' on CUDA 12," \
       "'tensorrt-cu13>=10.13,<11.5' on CUDA 13, apt install python3-libnvinfer on Jetson; onnxruntime-gpu ...);" \
       "continuing" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 600 "$PYTHON" engine/gpu_check.py "$@"
