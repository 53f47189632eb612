"""Latency and throughput of every engine on every available backend, in one run.

    .venv/bin/python benchmarks/bench_engines.py --data ../shared/data/imagenet-sample

For MobileNetV2 and EfficientNet-Lite0: batch-1 latency (p50/p99) and throughput at batch 64 and 256
for ONNX Runtime FP32/INT8 and OpenVINO FP32/INT8 (CPU; OpenVINO where installed, its INT8 where exact
on this CPU), PyTorch FP32 (CPU), and on a CUDA GPU PyTorch eager FP32 vs FP32/TF32/FP16/BF16 with
channels-last + CUDA graphs and simulated INT8. Ratios are computed within this run: each CPU INT8
engine against the *fastest* FP32 CPU engine. Ranges come from an entropy calibration on
--calib-images of --data.

Accuracy (--accuracy-images of --data): each CPU INT8 engine against the torch simulation of the same
shipped Q/DQ model, beside the floor no engine can beat -- the simulation against itself computed in
float64 (the float32 rounding differences of two correct implementations compound over the layers).

--random-weights: the same architectures with random weights (same speed; for machines without the
weight packages), calibrated on the bundled images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import REPO, _bootstrap  # noqa: E402


def timeit(fn, x, iters: int, sync) -> np.ndarray:
    fn(x)
    sync()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(x)
        sync()
        out.append(time.perf_counter() - t)
    return np.array(out)


def _sqnr(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = a.astype(np.float64), ref.astype(np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((a - ref) ** 2).sum(), 1e-300)))


def _random_weights(name: str, tmp: Path) -> Path:
    """A state_dict of random weights for a registered architecture (for machines without the weight packages)."""
    import torch

    torch.manual_seed(0)
    if name == "mobilenet_v2":
        import torchvision

        module = torchvision.models.mobilenet_v2()
    elif name == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        module = EfficientNet.from_name("efficientnet-lite0")
    else:
        raise SystemExit(f"--random-weights: no random initialisation for {name}")
    path = tmp / f"{name}-random.pth"
    torch.save(module.state_dict(), path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--b1-iters", type=int, default=50)
    ap.add_argument("--random-weights", action="store_true", help="random weights of the same architectures")
    ap.add_argument("--accuracy-images", type=int, default=200,
                    help="real images of --data on which each CPU INT8 engine is compared with the simulation (0: skip)")
    args = ap.parse_args()
    _bootstrap()
    import logging

    import torch

    logging.basicConfig(level=logging.ERROR)
    from trtquant.core.runtime import cpu_int8_instructions
    from trtquant.quant.engines.registry import build
    from trtquant.core.errors import BackendUnavailable
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.artifacts.plan import resolve_plan

    cuda = torch.cuda.is_available()
    sync_gpu = torch.cuda.synchronize if cuda else (lambda: None)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    import tempfile

    wdir = tempfile.TemporaryDirectory()
    for name in args.models.split(","):
        weights = _random_weights(name, Path(wdir.name)) if args.random_weights else None
        rm = resolve_model(name, weights=weights)
        g = rm.graph
        with tempfile.TemporaryDirectory() as tmp:
            cfg = CalibrationConfig(model=name, weights=str(weights) if weights else None, trt_version="8.6.1",
                                    **({} if args.random_weights else dict(data=args.data, num_images=args.calib_images)))
            ranges = calibrate(cfg, cache_path=Path(tmp) / "c.bin", progress=False).ranges
        fp32, int8 = resolve_plan("fp32", g), resolve_plan("int8", g)
        ort_int8 = build("onnxruntime", g, int8, ranges)
        engines = [("ORT FP32 (CPU)", build("onnxruntime", g, fp32), "np"),
                   ("ORT INT8 (CPU, real integer kernels)", ort_int8, "np")]
        ov_int8 = None
        try:
            engines.append(("OpenVINO FP32 (CPU)", build("openvino", g, fp32), "np"))
            ov_int8 = build("openvino", g, int8, ranges)
            engines.append(("OpenVINO INT8 (CPU)", ov_int8, "np"))
        except BackendUnavailable as err:
            rows.append((name, f"OpenVINO: {err}", None))
        if args.accuracy_images and not args.random_weights:
            from trtquant.datasets import PRESETS
            from trtquant.quant.engines.onnxruntime import build_ort_engine
            from trtquant.datasets.sources import open_capped
            from trtquant.quant.planner.simulate import QuantSim

            src = open_capped(args.data, preprocess=PRESETS[rm.preset], limit=args.accuracy_images, seed=123)
            bs = list(src.batches(64, progress=False))
            x, y = np.concatenate([b.images for b in bs]), np.concatenate([b.labels for b in bs])
            sim = QuantSim(g, ranges, torch.device("cpu")).logits(x, set(resolve_plan("int8", g).nodes("int8")))
            fp = build("onnxruntime", g, fp32).run(x)
            sim64 = QuantSim(g, ranges, torch.device("cpu"))
            sim64.ex.consts = {k: v.double() if v.is_floating_point() else v for k, v in sim64.ex.consts.items()}
            s64 = np.concatenate([sim64.run(torch.from_numpy(x[i:i + 64]).double(), set(int8.nodes("int8"))).numpy()
                                  for i in range(0, len(x), 64)])
            rows.append((name, f"accuracy floor: the simulation in float32 vs itself in float64: top-1 "
                               f"{(s64.argmax(1) == y).mean() * 100:.2f}% vs {(sim.argmax(1) == y).mean() * 100:.2f}%, "
                               f"agreement {(s64.argmax(1) == sim.argmax(1)).mean() * 100:.1f}%, "
                               f"SQNR {_sqnr(s64, sim):.1f} dB", None))
            checks = [("ORT INT8 (auto weights: " + ort_int8.lowering.weights + ")", ort_int8),
                      ("ORT INT8 (u8 weights, forced)", build_ort_engine(g, int8, ranges, precision="int8", weights="u8"))]
            if ov_int8 is not None:
                checks.append(("OpenVINO INT8", ov_int8))
            for label, eng in checks:
                out = np.concatenate([eng.run(x[i:i + 64]) for i in range(0, len(x), 64)])
                rows.append((name, f"accuracy on {len(x)} real images: {label}: top-1 {(out.argmax(1) == y).mean() * 100:.2f}% "
                                   f"vs simulation {(sim.argmax(1) == y).mean() * 100:.2f}% (FP32 {(fp.argmax(1) == y).mean() * 100:.2f}%), "
                                   f"agreement with simulation {(out.argmax(1) == sim.argmax(1)).mean() * 100:.1f}%, "
                                   f"SQNR {_sqnr(out, sim):.1f} dB", None))
        if not cuda:
            engines.append(("torch FP32 eager (CPU)", build("torch", g, fp32, device="cpu"), "np"))
        else:
            engines += [("torch FP32 eager (GPU)", build("torch", g, fp32, device="cuda", fast=False), "gpu"),
                        ("torch FP32 CUDA graphs", build("torch", g, fp32, device="cuda"), "gpu"),
                        ("torch TF32 CUDA graphs", build("torch", g, fp32, torch_precision="tf32", device="cuda"), "gpu"),
                        ("torch FP16 CUDA graphs", build("torch", g, fp32, torch_precision="fp16", device="cuda"), "gpu"),
                        ("torch BF16 CUDA graphs", build("torch", g, fp32, torch_precision="bf16", device="cuda"), "gpu"),
                        ("torch INT8 SIMULATED", build("torch", g, int8, ranges, device="cuda"), "gpu")]
        results = {}
        for label, engine, kind in engines:
            on_gpu = kind == "gpu"
            fn = engine.run_tensor if on_gpu else engine.run
            sync = sync_gpu if on_gpu else (lambda: None)
            mk = (lambda n: torch.randn(n, 3, 224, 224, device="cuda")) if on_gpu else \
                (lambda n: np.random.default_rng(0).normal(size=(n, 3, 224, 224)).astype(np.float32))
            lat = timeit(fn, mk(1), args.b1_iters if on_gpu or "ORT" in label else max(10, args.b1_iters // 5), sync)
            r = {"p50": np.percentile(lat, 50) * 1e3, "p99": np.percentile(lat, 99) * 1e3}
            for b in batches:
                iters = 10 if on_gpu else (3 if b <= 64 else 2)
                t = timeit(fn, mk(b), iters, sync)
                r[b] = b / np.median(t)
            results[label] = r
            rows.append((name, label, r))
        cpu_fp32 = {k: v for k, v in results.items() if "FP32" in k and "(CPU)" in k}
        for qlabel in ("ORT INT8 (CPU, real integer kernels)", "OpenVINO INT8 (CPU)"):
            q = results.get(qlabel)
            if not q or not cpu_fp32:
                continue
            fast_b1 = min(cpu_fp32, key=lambda k: cpu_fp32[k]["p50"])
            parts = [f"batch-1 latency {q['p50']:.2f} vs {cpu_fp32[fast_b1]['p50']:.2f} ms ({fast_b1}): "
                     f"speed-up {cpu_fp32[fast_b1]['p50'] / q['p50']:.2f}x"]
            for b in batches:
                fast = max(cpu_fp32, key=lambda k: cpu_fp32[k][b])
                parts.append(f"throughput at {b}: {q[b] / cpu_fp32[fast][b]:.2f}x of {fast}")
            rows.append((name, f"ratio {qlabel.split(' (')[0]} / fastest FP32 CPU engine: " + "; ".join(parts), None))
        eager = results.get("torch FP32 eager (GPU)")
        half = results.get("torch FP16 CUDA graphs")
        if eager and half:
            rows.append((name, f"ratio torch FP16 (graphs) / eager FP32 throughput at {batches[-1]}: "
                               f"{half[batches[-1]] / eager[batches[-1]]:.2f}x; batch-1 latency "
                               f"{half['p50']:.2f} vs {eager['p50']:.2f} ms", None))
    dev = torch.cuda.get_device_name() if cuda else "no GPU"
    print(f"\nEngine benchmark | CPU integer instructions: {', '.join(cpu_int8_instructions()) or 'none'} | "
          f"{dev} | torch {torch.__version__}")
    head = f"{'model':<18} {'engine':<38} {'b1 p50 ms':>10} {'b1 p99 ms':>10}" + "".join(f" {'b' + str(b) + ' img/s':>12}" for b in batches)
    print(head)
    for model, label, r in rows:
        if r is None:
            print(f"{model:<18} {label}")
        else:
            print(f"{model:<18} {label:<38} {r['p50']:>10.2f} {r['p99']:>10.2f}" + "".join(f" {r[b]:>12.0f}" for b in batches))


if __name__ == "__main__":
    main()
