#!/usr/bin/env bash
# The GPU check on a machine with a CUDA GPU: the GPU tests, then the benchmark in bf16 (`--preset gpu`).
#   bash benchmarks/gpu.sh [OUTPUT_FOLDER [BENCHMARK OPTIONS...]]      (default: benchmarks/results)
# Runs from a checkout without installing it. Wheels in .whl/ (e.g. the transformers release this project was
# measured with, where the machine has another) are installed into /tmp/site first; the GPU machines here are offline.
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m pytest -q --tb=line -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -n 30 | tee "$out/gpu-tests.log"
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/run.py --preset gpu --out "$out" --name gpu-bf16 "${@:2}" 2>&1 \
    | grep -v "SyncActivityProfilerHandler"
