#!/usr/bin/env bash
# Issue 13 item 4 on a CUDA GPU (H200): torch.compile'd engines and simulator, tests then the benchmark tables.
#
#     bash benchmarks/gpu_fast_check.sh                  # from the repository root; PY=python3 by default
#     PY=.venv/bin/python MODEL=mobilenet_v2 BATCH=256 bash benchmarks/gpu_fast_check.sh
#     EXTRA=--random-weights bash benchmarks/gpu_fast_check.sh   # without the offline weight packages
#     STEPS="1 2" bash benchmarks/gpu_fast_check.sh      # some steps only (each fits a 10-minute command)
#
# Steps: 1 the tests of tests/test_compile.py (CPU and GPU cases); 2 every row with inductor's default mode
# (quick compiles: the simulator goal); 3 the FP16/BF16 engines in max-autotune-no-cudagraphs (the engines'
# CUDA default: the FP16 goal; compiling takes minutes); 4 the simulator in max-autotune-no-cudagraphs.
# Logs in $LOGS (default $OUT where set, else /tmp/gpu_fast_check). Goals: the summary lines "simulated INT8 /
# FP32 forward ... compiled >= 80%" and "compiled FP16 / eager FP32 >= 3x".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
MODEL=${MODEL:-mobilenet_v2}
BATCH=${BATCH:-256}
EXTRA=${EXTRA:-}
STEPS=${STEPS:-1 2 3 4}
LOGS=${LOGS:-${OUT:-/tmp/gpu_fast_check}}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
# the tests import the package `trtquant` = this folder: a link named trtquant beside it, on PYTHONPATH
PKG=$(mktemp -d)
ln -s "$(pwd)" "$PKG/trtquant"
export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
BENCH="$PY benchmarks/bench_compile.py --model $MODEL --batch $BATCH $EXTRA"
for step in $STEPS; do
    case $step in
    1) echo "== 1. tests (CPU and GPU cases of tests/test_compile.py)"
       $PY -m pytest tests/test_compile.py -q -rs 2>&1 | tee "$LOGS/tests.log" ;;
    2) echo "== 2. every row, inductor's default mode (quick compiles)"
       $BENCH --engine-mode default 2>&1 | tee "$LOGS/bench_default.log" ;;
    3) echo "== 3. FP16/BF16 engines in max-autotune-no-cudagraphs (the engines' CUDA default)"
       $BENCH --precisions fp16,bf16 --no-int8 2>&1 | tee "$LOGS/bench_autotune_engines.log" ;;
    4) echo "== 4. the simulator in max-autotune-no-cudagraphs"
       $BENCH --precisions "" --skip-eager-graphs --sim-mode max-autotune-no-cudagraphs --engine-mode default \
           2>&1 | tee "$LOGS/bench_autotune_sim.log" ;;
    esac
done
echo "logs in $LOGS"
