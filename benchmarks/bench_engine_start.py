"""The torch engine's first calls and its simulated INT8: where evaluate's seconds go outside the steady state.

1. The all-INT8 Q/DQ model of MobileNetV2 on the torch executor, each activation Q/DQ pair fused into one fake
   quantization (the engines' default) vs the nodes as written (``fuse_qdq=False``), seconds per batch.
2. (CUDA) A torch engine's first call per batch shape in a fresh process (CUDA graph capture, cuDNN's first use of
   its kernels), FP32 in NCHW (the default) vs channels-last, FP16 channels-last (the default) vs NCHW, each also
   with ``cudnn.benchmark``: each row is its own process (``--profile-first``: where a first forward's CPU time goes).

    .venv/bin/python benchmarks/bench_engine_start.py --device cpu --batch 32
    python3 benchmarks/bench_engine_start.py --device cuda --profile-first     # GPU machine
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import _bootstrap  # noqa: E402

SHAPES = (64, 40, 1)          # evaluate's batch, the tail of 1,000 images, the latency batch


def _first_calls(precision: str, layout: str, profile_first: bool = False) -> dict:
    """In this (fresh) process: seconds of the first and second call per batch shape (``profile_first``: the
    seconds of a first eager forward by operator, before them)."""
    import torch

    from trtquant.quant.artifacts.plan import resolve_plan
    from trtquant.quant.engines import registry, torch as torch_engine
    from trtquant.quant.graph.models import resolve_model

    if layout.startswith(("channels-last", "nchw")):   # force a layout (default: channels_last_for decides)
        cl = layout.startswith("channels-last")
        torch_engine.channels_last_for = lambda dtype, tf32: cl
        registry.channels_last_for = torch_engine.channels_last_for
    if layout.endswith("+benchmark"):              # cuDNN times its candidate kernels per new shape
        torch.backends.cudnn.benchmark = True
    g = resolve_model("mobilenet_v2").graph
    eng = registry.build("torch", g, resolve_plan("fp32", g), torch_precision=precision, device="cuda")
    x = torch.randn(max(SHAPES), 3, 224, 224, device="cuda")
    torch.cuda.synchronize()
    out = {"description": eng.info.description}
    if profile_first:                              # the first eager forward's CPU time by operator
        from torch.profiler import ProfilerActivity, profile

        xi = eng._device_input(x[:max(SHAPES)])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            eng._forward(xi)
            torch.cuda.synchronize()
        top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]
        out["profile"] = [(e.key, e.count, round(e.self_cpu_time_total / 1e6, 3)) for e in top]
    for b in SHAPES:
        for call in ("first", "second"):
            t = time.perf_counter()
            eng.run_tensor(x[:b])
            torch.cuda.synchronize()
            out[f"b{b} {call}"] = time.perf_counter() - t
    return out


def _fused_vs_written(device: str, batch: int, reps: int) -> list[tuple[str, float]]:
    import onnx
    import torch

    from trtquant.quant.artifacts.plan import resolve_plan
    from trtquant.quant.artifacts.qdq import build_qdq_model
    from trtquant.quant.calibrate import calibrate
    from trtquant.quant.graph.interpreter import TorchGraphExecutor
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.graph.onnx_graph import OnnxGraph
    from trtquant.quant.settings import CalibrationConfig
    import tempfile

    g = resolve_model("mobilenet_v2").graph
    with tempfile.TemporaryDirectory() as tmp:
        ranges = calibrate(CalibrationConfig(device="cpu"), cache_path=Path(tmp) / "c.bin", progress=False).ranges
    qdq, _ = build_qdq_model(g, ranges, resolve_plan("int8", g))
    graph = OnnxGraph(onnx.load_from_string(qdq.SerializeToString()))
    x = torch.randn(batch, 3, 224, 224, device=device)
    rows = []
    for fuse in (False, True, False, True):           # alternating: drift shows as a spread
        ex = TorchGraphExecutor(graph, device, fuse_qdq=fuse)
        ex.run({"input": x})
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            ex.run({"input": x})
        if device == "cuda":
            torch.cuda.synchronize()
        rows.append(("fused Q/DQ pairs" if fuse else "Q/DQ nodes as written", (time.perf_counter() - t) / reps))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile-first", action="store_true",
                    help="(CUDA) also profile each engine's first eager forward by operator")
    ap.add_argument("--first-calls", nargs=2, metavar=("PRECISION", "LAYOUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    _bootstrap()
    if args.first_calls:                               # a child process of part 2
        print(json.dumps(_first_calls(*args.first_calls, profile_first=args.profile_first)))
        return
    print(f"\nMobileNetV2 all-INT8 Q/DQ model, torch executor on {args.device}, batch {args.batch}, "
          f"mean of {args.reps} after a warm-up")
    rows = _fused_vs_written(args.device, args.batch, args.reps)
    written = min(s for n, s in rows if "written" in n)
    for name, s in rows:
        print(f"  {name:<24} {s * 1000:9.1f} ms   {written / s:5.2f}x the nodes as written (best)")
    if args.device != "cuda":
        return
    print(f"\nfirst calls per batch shape in a fresh process (s), batches {', '.join(map(str, SHAPES))}")
    cols = [f"b{b} {c}" for b in SHAPES for c in ("first", "second")]
    print(f"  {'engine':<28}" + "".join(f"{c:>11}" for c in cols))
    for precision, layout in (("fp32", "nchw"), ("fp32", "channels-last"), ("fp16", "channels-last"),
                              ("fp16", "nchw"), ("fp16", "channels-last+benchmark"), ("fp16", "nchw+benchmark")):
        res = subprocess.run([sys.executable, __file__, "--first-calls", precision, layout]
                             + (["--profile-first"] if args.profile_first else []), capture_output=True, text=True)
        if res.returncode != 0:
            print(f"  {precision} {layout}: failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        d = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {precision + ' ' + layout:<28}" + "".join(f"{d[c]:11.3f}" for c in cols) + f"   ({d['description']})")
        for op, count, secs in d.get("profile", ()):
            print(f"      first eager forward: {op:<40} {count:4d} calls {secs:8.3f} s CPU")


if __name__ == "__main__":
    main()
