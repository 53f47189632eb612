"""Sweep wall time, full-model evaluations vs layers, and fake-quantized throughput vs FP32.

    .venv/bin/python benchmarks/bench_sweep.py --data ../shared/data/imagenet-sample --images 200
    python3 benchmarks/bench_sweep.py --data .bench_data --images 1000          # GPU machine
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import REPO, _bootstrap  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--proxy-images", type=int, default=64)
    ap.add_argument("--target", default="0.5%")
    ap.add_argument("--compile", default="off", choices=("off", "on", "auto"), help="sweep --compile")
    ap.add_argument("--objectives", default="latency", help="sweep --objective values, e.g. latency,layers (compared)")
    ap.add_argument("--target-gpu", default="auto", help="sweep --target-gpu")
    ap.add_argument("--latency-batch", type=int, default=1, help="sweep --latency-batch")
    args = ap.parse_args()
    _bootstrap()
    import logging

    import torch

    logging.basicConfig(level=logging.ERROR)
    from trtquant.datasets import PRESETS, open_source
    from trtquant.quant.artifacts.ranges import load_ranges
    from trtquant.core.runtime import resolve_device
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.planner.simulate import QuantSim
    from trtquant.quant.settings import SweepSettings
    from trtquant.quant.sweep import sweep
    from trtquant.reports.sweep_render import TIME_PHASES

    dev = resolve_device("auto")
    print(f"\nsweep benchmark | {torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'} | {args.images} images")
    for name in args.models.split(","):
        plans = {}
        for objective in args.objectives.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                doc = sweep(SweepSettings(model=name, data=args.data, num_images=args.images, target=args.target,
                                          proxy_images=args.proxy_images, compile=args.compile, objective=objective,
                                          target_gpu=args.target_gpu, latency_batch=args.latency_batch),
                            Path(tmp) / "s", progress=False)
                wall = time.perf_counter() - t
                ranges, _, _ = load_ranges(Path(tmp) / "s" / "calib.bin")
            plans[objective] = doc
            lat = doc.latency
            print(f"{name:<18} objective {objective:<8} FP16 layers {len(doc.search.fp16_layers):3d} | estimated latency "
                  f"({lat.kind}, {lat.gpu}, batch {lat.batch}) {lat.plan_ms:.4f} ms, all INT8 {lat.all_int8_ms:.4f}, "
                  f"all FP16 {lat.all_fp16_ms:.4f} | {len(doc.front)} plans on the Pareto front | {wall:.1f} s")
        if {"latency", "layers"} <= set(plans):
            a, b = plans["latency"].latency.plan_ms, plans["layers"].latency.plan_ms
            print(f"{'':<18} latency objective / layers objective, estimated plan latency: {a / b:.3f}")
        s, tm, v = doc.search, doc.timings, doc.validation
        fp32 = "n/a" if doc.fp32_metric is None else f"{doc.fp32_metric * 100:.2f}%"
        phases = ", ".join(f"{label} {tm[k]:.1f}" for k, label in TIME_PHASES if k in tm and k != "total_s")
        print(f"{name:<18} wall {wall:6.1f} s ({phases}) | "
              f"{s.evaluations} full-model evaluations for {doc.layers} layers | FP16 layers {len(s.fp16_layers)} | "
              f"target {'met' if s.met else 'NOT met'} | all-INT8 {doc.metric} "
              f"{s.path[0].metric * 100:.2f}% vs FP32 {fp32} | "
              f"validation {float('nan') if v.metric is None else v.metric * 100:.2f}%")
        # fake-quantized evaluation throughput vs the plain FP32 forward, same executor, same device
        rm = resolve_model(name)
        sim = QuantSim(rm.graph, ranges, dev, compile=args.compile == "on" or (args.compile == "auto" and dev.type == "cuda"))
        src = open_source(args.data, preprocess=PRESETS[rm.preset], num_images=256, seed=0)
        x = torch.from_numpy(next(iter(src.batches(256, progress=False))).images).to(dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        rates = {}
        for label, layers in (("fp32", set()), ("int8", set(sim.layers))):
            sim.run(x, layers)
            sim.run(x, layers)                   # a compiled simulator: compiled by the first call
            sync()
            t = time.perf_counter()
            for _ in range(3):
                sim.run(x, layers)
            sync()
            rates[label] = 3 * len(x) / (time.perf_counter() - t)
        print(f"{'':<18} fake-quantized forward {rates['int8']:.0f} img/s vs FP32 {rates['fp32']:.0f} img/s "
              f"= {rates['int8'] / rates['fp32'] * 100:.0f}% (compile {args.compile}"
              + (f", {sim.compile_s:.1f} s compiling" if sim.compile_s else "") + ")")


if __name__ == "__main__":
    main()
