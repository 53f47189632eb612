#!/usr/bin/env bash
# Issue 13 item 4 on a CUDA GPU (H200): torch.compile'd engines and simulator, tests then the benchmark table.
#
#     bash benchmarks/gpu_fast_check.sh                  # from the repository root; PY=python3 by default
#     PY=.venv/bin/python MODEL=mobilenet_v2 BATCH=256 bash benchmarks/gpu_fast_check.sh
#     EXTRA=--random-weights bash benchmarks/gpu_fast_check.sh   # without the offline weight packages
#
# Writes its logs to $LOGS (default /tmp/gpu_fast_check, or $OUT where that is set). Goals: "simulated INT8 /
# FP32 forward ... compiled >= 80%" and "compiled FP16 / eager FP32 >= 3x" in the summary lines.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
MODEL=${MODEL:-mobilenet_v2}
BATCH=${BATCH:-256}
EXTRA=${EXTRA:-}
LOGS=${LOGS:-${OUT:-/tmp/gpu_fast_check}}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
# the tests import the package `trtquant` = this folder: a link named trtquant beside it, on PYTHONPATH
PKG=$(mktemp -d)
ln -s "$(pwd)" "$PKG/trtquant"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"

echo "== 1. tests (CPU and GPU cases of tests/test_compile.py)"
$PY -m pytest tests/test_compile.py -q -rs 2>&1 | tee "$LOGS/tests.log"

echo "== 2. benchmark, inductor default mode for the engines (the quicker compile)"
$PY benchmarks/bench_compile.py --model "$MODEL" --batch "$BATCH" --engine-mode default $EXTRA 2>&1 \
    | tee "$LOGS/bench_default.log"

echo "== 3. FP16/BF16 engines in max-autotune-no-cudagraphs (the engines' CUDA default; compiling takes minutes)"
$PY benchmarks/bench_compile.py --model "$MODEL" --batch "$BATCH" --precisions fp32,fp16,bf16 \
    --sim-mode max-autotune-no-cudagraphs $EXTRA 2>&1 | tee "$LOGS/bench_autotune.log"
echo "logs in $LOGS"
