"""Divergence debugger: its analysis time against plain FP32 and fake-quantized forwards of the same images,
and the layer it names, per model.

    .venv/bin/python benchmarks/bench_debug.py --data ../shared/data/imagenet-sample
    python3 benchmarks/bench_debug.py --data .bench_data --images 256                # GPU machine
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
    ap.add_argument("--images", type=int, default=64, help="images analysed")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--method", default="entropy")
    args = ap.parse_args()
    _bootstrap()
    import logging

    import numpy as np
    import torch

    logging.basicConfig(level=logging.ERROR)
    from trtquant.core.cache import write_ranges_json
    from trtquant.core.runtime import resolve_device
    from trtquant.datasets.sources import open_capped
    from trtquant.quant.debug import debug
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.planner.simulate import QuantSim
    from trtquant.quant.settings import CalibrationConfig, DebugSettings
    from trtquant.quant.statistics import ranges_from_stats, statistics

    dev = resolve_device("auto")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"\ndebug benchmark | {torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'} | {args.images} images "
          f"in batches of {args.batch_size} | {args.method} ranges from {args.calib_images} images")
    print(f"{'model':<18} {'fp32 fwd s':>10} {'int8 fwd s':>10} {'analysis s':>10} {'x fp32':>7} {'peak GB':>8}  first jump")
    for name in args.models.split(","):
        rm = resolve_model(name)
        cfg = CalibrationConfig(model=name, data=args.data, method=args.method)
        calib = open_capped(args.data, preprocess=rm.preprocess(), limit=args.calib_images, seed=1)
        ranges = ranges_from_stats(statistics(rm.graph, calib, cfg, dev, progress=False), cfg)
        src = open_capped(args.data, preprocess=rm.preprocess(), limit=args.images, seed=0)
        x = np.concatenate([b.images for b in src.batches(args.batch_size, progress=False)])
        sim = QuantSim(rm.graph, ranges, dev)
        forward = {}
        for label, layers in (("fp32", set()), ("int8", set(sim.layers))):
            sim.logits(x[:args.batch_size], layers, batch=args.batch_size)        # warm-up
            sync()
            t = time.perf_counter()
            sim.logits(x, layers, batch=args.batch_size)
            sync()
            forward[label] = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            write_ranges_json(Path(tmp) / "r.json", ranges)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            doc = debug(DebugSettings(model=name, data=args.data, num_images=args.images, batch_size=args.batch_size,
                                      ranges=str(Path(tmp) / "r.json")), Path(tmp) / "d", progress=False)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if dev.type == "cuda" else "n/a"
        a = doc.timings["analysis_s"]
        j = doc.first_jump
        jump = "none" if j is None else f"{j.node} (adds {j.added_sqnr_db:.1f} dB, {j.cause})"
        print(f"{name:<18} {forward['fp32']:>10.2f} {forward['int8']:>10.2f} {a:>10.2f} {a / forward['fp32']:>7.1f} "
              f"{peak:>8}  {jump}")


if __name__ == "__main__":
    main()
