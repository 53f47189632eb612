"""``--method auto`` against every single method, on held-out real images, in one run.

    .venv/bin/python benchmarks/bench_auto.py --data ../shared/data/imagenet-sample --models mobilenet_v2,efficientnet_lite0

The image folder (WNID class folders) is split once, by a seeded permutation, into ``--calib-images``
calibration images and the rest for evaluation (disjoint: two folders of links in a temporary
directory). Per model:

  A. calibration wall time, entropy vs auto (each a full ``calibrate()``: the same statistics pass,
     then entropy's search, or auto's candidates and layer-error pass), and their ratio;
  B. every method's ranges (minmax/mse/percentile recomputed from the entropy run's statistics) run
     through the torch backend's INT8 simulation (``evaluate --backend torch``: fake quantization with the
     shipped placement) on the held-out images: top-1, drop vs FP32 with its 95 % paired bootstrap
     interval, top-1 agreement with FP32 and output SQNR;
  C. what auto chose (tensors per method).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def split_folder(data: Path, calib: int, seed: int, tmp: Path) -> tuple[Path, Path]:
    """``(calib dir, eval dir)``: links to the class folders of a seeded, disjoint split of ``data``'s images."""
    files = sorted(p for p in data.glob("*/*") if p.is_file())
    if len(files) <= calib:
        sys.exit(f"{data}: {len(files)} images, need more than --calib-images {calib}")
    order = np.random.default_rng(seed).permutation(len(files))
    parts = {"calib": [files[i] for i in order[:calib]], "eval": [files[i] for i in order[calib:]]}
    for name, chosen in parts.items():
        for f in chosen:
            (tmp / name / f.parent.name).mkdir(parents=True, exist_ok=True)
            os.symlink(f, tmp / name / f.parent.name / f.name)
    return tmp / "calib", tmp / "eval"


def run_model(model: str, calib_dir: Path, eval_dir: Path, args, tmp: Path) -> list[str]:
    from trtquant.calibrators.auto import chosen_counts
    from trtquant.core import metrics
    from trtquant.datasets import open_source
    from trtquant.quant.artifacts.plan import resolve_plan
    from trtquant.quant.calibrate import calibrate
    from trtquant.quant.engines import registry
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.graph.onnx_graph import run_batched
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.statistics import ranges_from_stats

    path, _, preset = model.partition(":")       # NAME, or FILE.onnx[:PRESET] (e.g. a copied export)
    spec = dict(onnx=path, preset=preset or None) if path.endswith(".onnx") else dict(model=model)
    rm = resolve_model(spec.get("model", path), onnx=spec.get("onnx"), preset=spec.get("preset"))
    graph = rm.graph
    model = rm.name
    base = dict(**spec, data=str(calib_dir), device=args.device, trt_version="8.6.1", seed=args.seed,
                auto_images=args.auto_images)
    walls, ranges = {}, {}
    for method in ("entropy", "auto"):
        t = time.perf_counter()
        res = calibrate(CalibrationConfig(method=method, **base), cache_path=tmp / f"{model}_{method}.bin",
                        stats_path=tmp / f"{model}_{method}.npz", progress=args.progress)
        walls[method] = (time.perf_counter() - t, res.timings)
        ranges[method] = res.ranges
        stats = res.stats
    for method in ("minmax", "mse", "percentile"):
        ranges[method] = ranges_from_stats(stats, CalibrationConfig(method=method))

    src = open_source(str(eval_dir), preprocess=rm.preprocess())
    batches = list(src.batches(args.batch_size, progress=args.progress))
    x = np.concatenate([b.images for b in batches])
    labels = np.concatenate([b.labels for b in batches])

    def logits(plan, r):
        engine = registry.build("torch", graph, plan, r, device=args.device)
        return run_batched(engine.run, lambda lo, hi: x[lo:hi], len(x), args.batch_size, graph.fixed_batch)

    ref = logits(resolve_plan("fp32", graph), None)
    ref_ok = metrics.topk_correct(ref, labels, 1)
    rows = [f"### {model}: calibration on {stats.num_images} images, evaluation on {len(x)} held-out images "
            f"(torch backend, simulated INT8, device {args.device})", "",
            "| config | top-1 % | drop pp (95% CI) | agreement % | SQNR dB |", "|---|---|---|---|---|",
            f"| fp32 | {ref_ok.mean() * 100:.2f} | | | |"]
    int8 = resolve_plan("int8", graph)
    for method in ("entropy", "minmax", "percentile", "mse", "auto"):
        out = logits(int8, ranges[method])
        ok = metrics.topk_correct(out, labels, 1)
        d = metrics.paired_bootstrap_drop(ref_ok, ok, samples=2000, seed=args.seed)
        rows.append(f"| int8:{method} | {ok.mean() * 100:.2f} | {d.points:+.2f} ({d.lo:+.2f}, {d.hi:+.2f}) | "
                    f"{metrics.agreement(out, ref).mean() * 100:.2f} | {metrics.sqnr_db(ref, out):.2f} |")
    (we, te), (wa, ta) = walls["entropy"], walls["auto"]
    rows += ["", "| calibration | wall s | statistics pass s | ranges s |", "|---|---|---|---|",
             f"| entropy | {we:.1f} | {te.get('stats_pass_s', float('nan')):.1f} | {te['ranges_s']:.1f} |",
             f"| auto ({args.auto_images} images in its pass) | {wa:.1f} | {ta.get('stats_pass_s', float('nan')):.1f} | "
             f"{ta['ranges_s']:.1f} |",
             f"| auto / entropy | {wa / we:.2f}x | | |", "",
             "auto chose: " + ", ".join(f"{k} {v}" for k, v in chosen_counts(ranges["auto"].methods.values()).items()),
             ""]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="an ImageFolder of WNID class folders")
    p.add_argument("--models", default="mobilenet_v2",
                   help="comma list of registered models, or FILE.onnx:PRESET (e.g. an export copied elsewhere)")
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--auto-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    _bootstrap()
    import torch

    lines = [f"# bench_auto: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
             f"{torch.__version__}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""), ""]
    with tempfile.TemporaryDirectory() as d:
        calib_dir, eval_dir = split_folder(args.data, args.calib_images, args.seed, Path(d))
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            lines += run_model(model, calib_dir, eval_dir, args, Path(d))
            print("\n".join(lines), flush=True)
            lines = []


if __name__ == "__main__":
    main()
