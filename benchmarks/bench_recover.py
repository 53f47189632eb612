"""Accuracy recovery (``--recover``): top-1 drop and agreement with FP32 of all-INT8 models, with and
without cle / adaround / bias, and what the recovery costs.

Calibrates on a seeded split of the images and evaluates on the rest (disjoint), every INT8 model simulated
with the shipped quantizer placement (``QuantSim``: what the Q/DQ model computes).

    .venv/bin/python benchmarks/bench_recover.py --data ../shared/data/imagenet-sample --calib 256
    .venv/bin/python benchmarks/bench_recover.py --configs mse,mse+adaround --adaround-iters 500
    python3 benchmarks/bench_recover.py --configs auto,auto+ranges,auto+adaround+bias+ranges --device cuda
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import REPO, _bootstrap  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--models", default="mobilenet_v2")
    ap.add_argument("--onnx", default=None, help="an ONNX model instead of --models (e.g. a cached export)")
    ap.add_argument("--configs", default="entropy,mse,entropy+bias,mse+bias,mse+adaround,mse+adaround+bias,mse+cle+bias")
    ap.add_argument("--calib", type=int, default=256, help="calibration images; the rest are evaluated")
    ap.add_argument("--recover-images", type=int, default=None)
    ap.add_argument("--adaround-iters", type=int, default=None)
    ap.add_argument("--range-steps", type=int, default=None, help="Adam steps of the learned ranges (+ranges)")
    ap.add_argument("--cle-replace-relu6", action="store_true")
    ap.add_argument("--recalibrate", action="store_true",
                    help="evaluate a recovered model calibrated again, not with the ranges it shipped with")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    _bootstrap()
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    from trtquant.core import metrics
    from trtquant.core.runtime import resolve_device
    from trtquant.datasets import open_source
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.planner.simulate import QuantSim
    from trtquant.quant.recover import RecoverySettings, parse_recovery, recover
    from trtquant.quant.auto_method import AutoPass
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.statistics import ranges_from_stats, statistics

    dev = resolve_device(args.device)
    where = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    for name in ([args.onnx] if args.onnx else args.models.split(",")):
        rm = resolve_model(name, onnx=args.onnx) if args.onnx else resolve_model(name)
        graph, pre = rm.graph, rm.preprocess()
        src = open_source(args.data, preprocess=pre)
        batches = list(src.batches(64, progress=False))
        x = np.concatenate([b.images for b in batches])
        y = np.concatenate([b.labels for b in batches])
        order = np.random.default_rng(args.seed).permutation(len(x))
        calib, held = order[:args.calib], order[args.calib:]
        with tempfile.TemporaryDirectory() as tmp:
            calib_path = Path(tmp) / "calib.npy"
            np.save(calib_path, x[calib])
            calib_src = open_source(str(calib_path), preprocess=pre)
            xe, ye = x[held], y[held]
            del x
            stats_memo = {}

            def ranges_for(method):
                cfg = CalibrationConfig(method=method, device=args.device)

                def ranges_of(g):
                    key = g.fingerprint()
                    if key not in stats_memo:
                        stats_memo[key] = statistics(g, calib_src, cfg, dev, progress=False)
                    return ranges_from_stats(stats_memo[key], cfg, auto_pass=AutoPass(g, calib_src, dev, progress=False))
                return ranges_of

            sim = QuantSim(graph, ranges_for("minmax")(graph), dev)
            ref = sim.logits(xe, set())
            fp32_top1 = float(metrics.topk_correct(ref, ye, 1).mean())
            print(f"\nrecovery benchmark | {name} | {where} | calibration {len(calib)} images, evaluation "
                  f"{len(held)} other images | FP32 top-1 {fp32_top1 * 100:.2f}%")
            print(f"{'config':<24} {'top-1':>7} {'drop pp':>16} {'agree':>7} {'SQNR dB':>8} {'recover s':>9}")
            for config in args.configs.split(","):
                method, _, rest = config.partition("+")
                steps = parse_recovery(rest) if rest else ()
                t = time.perf_counter()
                if steps:
                    given = {field: value for field, value in (("adaround_iters", args.adaround_iters),
                                                               ("range_steps", args.range_steps),
                                                               ("images", args.recover_images)) if value}
                    settings = RecoverySettings(steps=steps, cle_replace_relu6=args.cle_replace_relu6 and "cle" in steps,
                                                **given)
                    rec = recover(graph, settings, ranges_of=ranges_for(method), images=lambda: np.load(calib_path),
                                  device=dev, progress=False)
                    g = rec.graph
                    secs_recover = time.perf_counter() - t
                    # what ships (the ranges the layer-wise steps learned against), or the recovered model
                    # calibrated again (--recalibrate, to compare)
                    ranges = ranges_for(method)(g) if args.recalibrate else rec.shipped_ranges(ranges_for(method))
                else:
                    g, ranges = graph, ranges_for(method)(graph)
                    secs_recover = 0.0
                qs = QuantSim(g, ranges, dev)
                logits = qs.logits(xe, set(qs.layers))
                ok_ref = metrics.topk_correct(ref, ye, 1)
                ok = metrics.topk_correct(logits, ye, 1)
                d = metrics.paired_bootstrap_drop(ok_ref, ok, samples=2000, seed=0)
                agree = float(metrics.agreement(logits, ref).mean())
                print(f"{config:<24} {ok.mean() * 100:6.2f}% {d.points:+5.2f} [{d.lo:+.2f},{d.hi:+.2f}] "
                      f"{agree * 100:6.2f}% {metrics.sqnr_db(ref, logits):8.2f} {secs_recover:9.1f}"
                      + ("" if steps else "   (calibration only)"), flush=True)


if __name__ == "__main__":
    main()
