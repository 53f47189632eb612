"""Calibration speed and memory, side by side in one run (MobileNetV2, real ImageNet images).

    .venv/bin/python benchmarks/bench_calibrate.py --data ../shared/data/imagenet-sample

Prints one table with:
  A. plain forward vs statistics pass, images/s (same executor, same decoded images on the device)
  B. entropy threshold search per tensor: ours (vectorized) vs a loop port of NVIDIA's reference
  C. the whole entropy calibration (decode + statistics + ranges + files), wall time and peak RSS,
     at --ort-images and at --images (flat memory)
  D. ONNX Runtime's static-quantization calibrators (MinMax, Entropy, Percentile) on the same ONNX
     model and images: wall time, peak RSS, and how far their amax is from ours on the same tensors
Each end-to-end measurement runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _bootstrap():
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
    if "trtquant" not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location("trtquant", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["trtquant"] = mod
        spec.loader.exec_module(mod)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- subprocess workers

def worker_ours(args) -> dict:
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate

    out = Path(args.tmp)
    walls = []
    for _ in range(2 if args.warm else 1):   # the second run: CUDA initialised, kernels compiled
        t = time.perf_counter()
        res = calibrate(CalibrationConfig(data=args.data, num_images=args.n, seed=0, batch_size=args.batch_size,
                                          device=args.device, method=args.method, trt_version="8.6.1"),
                        cache_path=out / f"ours_{args.method}_{args.n}.bin", progress=False)
        walls.append(time.perf_counter() - t)
    return {"wall_s": walls[0], "warm_wall_s": walls[-1], "rss_mb": _peak_rss_mb(), "images": res.images,
            "timings": res.timings, "amax": res.ranges.amax(), "device": res.device}


def worker_ort(args) -> dict:
    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    from trtquant.datasets import PRESETS, open_source
    from trtquant.quant.graph.models import resolve_model

    model = resolve_model("mobilenet_v2")
    source = open_source(args.data, preprocess=PRESETS["imagenet"], num_images=args.n, seed=0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(source.batches(args.batch_size, progress=False))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b.images}

    method = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
              "Percentile": CalibrationMethod.Percentile}[args.method]
    # the fair settings: 2048 bins, 128 quantized levels (ORT's entropy default of 128 bins degenerates),
    # symmetric ranges, percentile 99.99 like ours
    extra = {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128, "percentile": 99.99}
    t = time.perf_counter()
    cal = create_calibrator(str(model.onnx_path), None, augmented_model_path=str(Path(args.tmp) / f"aug_{args.method}.onnx"),
                            calibrate_method=method, extra_options=extra)
    cal.collect_data(Reader())
    data = cal.compute_data()
    wall = time.perf_counter() - t
    amax = {}
    for name, tr in data.data.items():
        lo, hi = (float(np.abs(np.asarray(v, dtype=np.float64)).max()) for v in tr.range_value)
        amax[name] = max(abs(lo), abs(hi))
    return {"wall_s": wall, "rss_mb": _peak_rss_mb(), "images": len(source), "amax": amax}


def run_worker(kind: str, **kw) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["killed"])[-1][:200], "rc": p.returncode}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- in-process parts

def forward_vs_stats(data: str, n: int, batch_size: int, device_spec: str) -> dict:
    import torch

    from trtquant.calibrators.collector import HistogramCollector, collect_batch
    from trtquant.datasets import PRESETS, open_source
    from trtquant.core.runtime import resolve_device
    from trtquant.quant.graph.interpreter import TorchGraphExecutor
    from trtquant.quant.graph.models import resolve_model

    device = resolve_device(device_spec)
    model = resolve_model("mobilenet_v2")
    src = open_source(data, preprocess=PRESETS["imagenet"], num_images=n, seed=0)
    xs = [torch.from_numpy(b.images).to(device) for b in src.batches(batch_size, progress=False)]
    ex = TorchGraphExecutor(model.graph, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def plain():
        for x in xs:
            ex.run({"input": x})
        sync()

    col = HistogramCollector(model.graph.calibration_tensors, device=device)

    def stats():
        for x in xs:
            collect_batch(col, lambda observe, watch: ex.run({"input": x}, observe=observe, watch=watch))
        sync()

    stats()   # warm-up; also fixes every tensor's range, so the timed pass is the steady state
    plain()
    images = sum(len(x) for x in xs)
    times = {}
    for label, fn in (("plain", plain), ("stats", stats), ("plain2", plain), ("stats2", stats)):
        t = time.perf_counter()
        fn()
        times[label] = time.perf_counter() - t
    tp = min(times["plain"], times["plain2"])
    ts = min(times["stats"], times["stats2"])
    hists = col.histograms()
    return {"device": str(device), "images": images, "plain_ips": images / tp, "stats_ips": images / ts,
            "overhead": ts / tp - 1, "hists": hists}


def entropy_search_times(hists: dict) -> dict:
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from reference_entropy import reference_entropy_bin

    from trtquant.calibrators.algorithms import Entropy

    algo = Entropy()
    per = []
    for h in hists.values():
        t = time.perf_counter()
        algo.compute(h)
        per.append(time.perf_counter() - t)
    # the reference loop on one real 2048-bin tensor (the largest activation)
    name = max(hists, key=lambda n: hists[n].numel)
    t = time.perf_counter()
    reference_entropy_bin(hists[name].counts[:2048])
    ref = time.perf_counter() - t
    return {"ours_mean_ms": 1e3 * float(np.mean(per)), "ours_max_ms": 1e3 * float(np.max(per)), "tensors": len(per),
            "ref_s": ref, "ref_bins": len(hists[name].counts[:2048])}


def amax_gap(ours: dict, theirs: dict) -> str:
    import numpy as np

    common = [n for n in ours if n in theirs and theirs[n] > 0]
    if not common:
        return "no common tensors"
    r = np.array([ours[n] / theirs[n] for n in common])
    return f"{len(common)} tensors, median ours/ORT {np.median(r):.3f}, within 5%: {np.mean(np.abs(r - 1) < 0.05) * 100:.0f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--ort-images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--forward-images", type=int, default=256, help="images for part A")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="entropy", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    ap.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    _bootstrap()
    import logging

    logging.basicConfig(level=logging.ERROR)
    if args.worker:
        res = worker_ours(args) if args.worker == "ours" else worker_ort(args)
        print(json.dumps(res))
        return

    import torch

    rows = []
    a = forward_vs_stats(args.data, args.forward_images, max(args.batch_size, 64), args.device)
    dev = a["device"]
    dev_name = torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or platform.machine()
    rows.append(("A", f"plain forward ({a['images']} img, {dev})", f"{a['plain_ips']:.0f} img/s", ""))
    rows.append(("A", "statistics pass (amax + 2048-bin |x| histograms, 101 tensors)", f"{a['stats_ips']:.0f} img/s",
                 f"+{a['overhead'] * 100:.0f}% time over plain forward"))
    e = entropy_search_times(a["hists"])
    rows.append(("B", f"entropy search, ours (vectorized), {e['tensors']} tensors",
                 f"{e['ours_mean_ms']:.2f} ms/tensor (max {e['ours_max_ms']:.2f})", ""))
    rows.append(("B", f"entropy search, NVIDIA reference loop ({e['ref_bins']} bins)", f"{e['ref_s'] * 1e3:.0f} ms/tensor",
                 f"ours {e['ref_s'] * 1e3 / e['ours_mean_ms']:.0f}x faster"))
    with tempfile.TemporaryDirectory() as tmp:
        common = {"data": args.data, "batch_size": args.batch_size, "device": args.device, "tmp": tmp}
        ours = {}
        for n in sorted({args.ort_images, args.images}):
            r = run_worker("ours", n=n, method="entropy", warm=int(n == args.images), **common)
            ours[n] = r
            if "error" in r:
                rows.append(("C", f"ours entropy, {n} img", "failed", r["error"]))
                continue
            t = r["timings"]
            rows.append(("C", f"ours entropy calibration, {r['images']} img ({r['device']})",
                         f"{r['wall_s']:.2f} s, peak RSS {r['rss_mb']:.0f} MB",
                         f"setup {t.get('setup_s', 0):.2f} s, statistics pass {t.get('stats_pass_s', 0):.2f} s "
                         f"(waiting for decoded images {t.get('data_wait_s', 0):.2f} s, model + statistics "
                         f"{t.get('model_and_stats_s', 0):.2f} s), ranges {t.get('ranges_s', 0):.2f} s"))
            if r.get("warm_wall_s") and r["warm_wall_s"] != r["wall_s"]:
                rows.append(("C", "  same, second run in the same process", f"{r['warm_wall_s']:.2f} s",
                             "the first run above includes CUDA/cuDNN initialisation and kernel compilation"))
        if not args.skip_ort:
            for method in ("MinMax", "Percentile", "Entropy"):
                r = run_worker("ort", n=args.ort_images, method=method, **{**common, "device": "cpu"})
                if "error" in r:
                    rows.append(("D", f"ONNX Runtime {method}, {args.ort_images} img", "failed", r["error"]))
                    continue
                ours_m = {"MinMax": "minmax", "Percentile": "percentile", "Entropy": "entropy"}[method]
                mine = ours.get(args.ort_images, {})
                if ours_m != "entropy":
                    mine = run_worker("ours", n=args.ort_images, method=ours_m, **common)
                ratio = (f"ours {r['wall_s'] / mine['wall_s']:.1f}x faster, {r['rss_mb'] / mine['rss_mb']:.1f}x less memory; "
                         if "wall_s" in mine else "")
                rows.append(("D", f"ONNX Runtime {method}, {r['images']} img (CPU)",
                             f"{r['wall_s']:.2f} s, peak RSS {r['rss_mb']:.0f} MB",
                             ratio + "amax: " + amax_gap(mine.get("amax", {}), r["amax"])))
                if "wall_s" in mine and ours_m != "entropy":
                    rows.append(("D", f"ours {ours_m}, {mine['images']} img", f"{mine['wall_s']:.2f} s, peak RSS {mine['rss_mb']:.0f} MB", ""))
    print(f"\nMobileNetV2 calibration benchmark | device {dev} ({dev_name}) | torch {torch.__version__} | "
          f"{os.cpu_count()} CPUs | data {args.data}")
    w = max(len(r[1]) for r in rows)
    v = max(len(r[2]) for r in rows)
    for part, what, value, note in rows:
        print(f"{part}  {what:<{w}}  {value:<{v}}  {note}")


if __name__ == "__main__":
    main()
