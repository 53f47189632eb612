#!/usr/bin/env bash
# Issue 13's wall-clock goals on a CUDA GPU (H200): the three verbs as a user runs them, timed from the shell, then
# once more under cProfile (the profiles land in $LOGS, read them with `python -m pstats`).
#
#     DATA=.bench_data/imagenet-sample bash benchmarks/gpu_walls.sh       # from the repository root
#     STEPS="calibrate sweep" PROFILE=0 bash benchmarks/gpu_walls.sh
#
# calibrate: `cli.py calibrate` of 1,000 images (entropy), first run in a fresh process, then a second one (the
# warm ONNX cache and the OS file cache); goal <= 5 s. evaluate: six configurations (fp32, fp16, int8 entropy,
# minmax, percentile, mse) on the torch backend; goal <= 10 s. sweep: `--target-drop 0.5%`; goal <= 5 s.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DATA=${DATA:-../shared/data/imagenet-sample}
STEPS=${STEPS:-calibrate evaluate sweep}
PROFILE=${PROFILE:-1}
LOGS=${LOGS:-${OUT:-/tmp/gpu_walls}}
WORK=$(mktemp -d)
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
# where site-packages cannot take .pyc files (a read-only image), cache them elsewhere: every run after the
# first then starts as on an ordinary install
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$HOME/.cache/trtquant-pycache}
unset PYTHONDONTWRITEBYTECODE
$PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| .pyc cache', sys.pycache_prefix)"
run() {   # run NAME ARGS...: wall seconds of `cli.py ARGS`, then (PROFILE=1) the same under cProfile
    local name=$1; shift
    local t0=$(date +%s.%N)
    $PY cli.py "$@" --no-progress > "$LOGS/$name.log" 2>&1
    local rc=$?
    local t1=$(date +%s.%N)
    printf '%-28s rc %d  wall %6.2f s   cli.py %s\n' "$name" $rc "$($PY -c "print($t1 - $t0)")" "$*"
    if [ "$PROFILE" = 1 ]; then
        $PY -m cProfile -o "$WORK/$name.prof" cli.py "$@" --no-progress --force > /dev/null 2>&1
        $PY -c "import pstats; s = pstats.Stats('$WORK/$name.prof'); s.sort_stats('cumulative').print_stats(40); \
s.sort_stats('tottime').print_stats(25)" > "$LOGS/$name.prof.txt" 2>&1
    fi
}
for step in $STEPS; do
    case $step in
    calibrate)
        PROFILE_SAVED=$PROFILE; PROFILE=0
        run calibrate_first calibrate --data "$DATA" --num-images 1000 --cache "$WORK/c1.bin" --device cuda
        PROFILE=$PROFILE_SAVED
        run calibrate_second calibrate --data "$DATA" --num-images 1000 --cache "$WORK/c2.bin" --device cuda ;;
    evaluate)
        run evaluate evaluate --data "$DATA" --configs fp32,fp16,int8:entropy,int8:minmax,int8:percentile,int8:mse \
            --backend torch --device cuda --out "$WORK/eval"
        $PY -c "import json; d = json.load(open('$WORK/eval/results.json')); print('  evaluate', d['timings'], 'calibration', (d.get('calibration') or {}).get('seconds')); \
[print('  ', r['config'], {k: round(v, 2) for k, v in r.items() if k.endswith('_s')}) for r in d['results']]" ;;
    sweep)
        run sweep sweep --data "$DATA" --target-drop 0.5% --device cuda --out "$WORK/sweep"
        $PY -c "import json; t = json.load(open('$WORK/sweep/sweep.json'))['timings']; \
print('  sweep phases (s):', ', '.join(f'{k[:-2]} {v:.2f}' for k, v in t.items()))" ;;
    esac
done
echo "logs and profiles in $LOGS"
