"""Eager vs ``torch.compile``'d forwards (issue 13 item 4), measured in one run, compile seconds apart.

    python3 benchmarks/bench_compile.py                                   # GPU: MobileNetV2, batch 256
    .venv/bin/python benchmarks/bench_compile.py --model tiny_cnn --batch 8 --iters 3   # CPU smoke check

Rows (each on device tensors, img/s at --batch; ratio against the eager FP32 interpreter; max |diff| and SQNR
against the eager row of the same precision, over the logits of random inputs):

- torch engines: FP32 / FP16 / BF16 eager (the interpreter, node by node), with CUDA graphs (channels-last,
  today's engine), and compiled (inductor, --engine-mode, inside the engine's CUDA graph); the simulated
  INT8 engine (the shipped Q/DQ graph) the same three ways;
- the quantization simulator (what sweep, evaluate's simulation, recovery run): FP32 and all-INT8 plans,
  eager and compiled (--sim-mode); the compiled simulator is *one* graph for every plan (flag tensors),
  so its INT8 row reuses the FP32 row's compilation (its compile column says so).

Goals (H200, MobileNetV2, batch 256): simulated INT8 (compiled simulator) >= 80% of the FP32 forward's
throughput; compiled FP16 >= 3x eager FP32. Ranges: a minmax calibration on the 20 bundled images (the
speed does not depend on them). --random-weights: the architecture with random weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibrate import _bootstrap  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20, help="timed forwards per row (median)")
    ap.add_argument("--engine-mode", default=None,
                    help="inductor mode of the compiled engines (default: max-autotune-no-cudagraphs on CUDA)")
    ap.add_argument("--sim-mode", default="default", help="inductor mode of the compiled simulator")
    ap.add_argument("--precisions", default="fp32,fp16,bf16",
                    help="engine precisions (GPU; CPU: fp32); the eager FP32 row, the ratios' base, always runs")
    ap.add_argument("--no-int8", action="store_true", help="no simulated-INT8 rows (engine and simulator)")
    ap.add_argument("--skip-eager-graphs", action="store_true", help="no rows of the CUDA-graph engines without compile")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    _bootstrap()
    import logging

    import numpy as np
    import torch

    logging.basicConfig(level=logging.WARNING)
    from bench_engines import _random_weights
    from trtquant.core.runtime import resolve_device
    from trtquant.quant.artifacts.plan import resolve_plan
    from trtquant.quant.calibrate import calibrate
    from trtquant.quant.engines.registry import build
    from trtquant.quant.graph.models import resolve_model
    from trtquant.quant.planner.simulate import QuantSim
    from trtquant.quant.settings import CalibrationConfig

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    tmp = tempfile.TemporaryDirectory()
    weights = _random_weights(args.model, Path(tmp.name)) if args.random_weights else None
    rm = resolve_model(args.model, weights=weights)
    g = rm.graph
    ranges = calibrate(CalibrationConfig(model=args.model, weights=str(weights) if weights else None, method="minmax",
                                         device=str(dev), trt_version="8.6.1"),
                       cache_path=Path(tmp.name) / "c.bin", progress=False).ranges
    shape = [d if isinstance(d, int) else args.batch for d in g.inputs[0].shape]     # the batch dim is symbolic
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dev)
    fp32, int8 = resolve_plan("fp32", g), resolve_plan("int8", g)

    def timed(fn):
        """(first call s, median s per forward, output as float32 host array)."""
        t = time.perf_counter()
        out = fn()
        sync()
        first = time.perf_counter() - t
        fn()
        sync()
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return first, float(np.median(times)), out.float().cpu().numpy()

    rows, ref = [], {}

    def row(label, kind, fn, compiled_of=None):
        try:
            first, sec, out = timed(fn)
        except Exception as err:            # noqa: BLE001 - a row that cannot run says why, the others go on
            rows.append((label, None, f"{type(err).__name__}: {str(err)[:160]}"))
            return
        comp = compiled_of() if compiled_of else None
        if kind not in ref:
            ref[kind] = out
        diff = float(np.abs(out - ref[kind]).max())
        r64, o64 = ref[kind].astype(np.float64), out.astype(np.float64)
        err = float(((o64 - r64) ** 2).sum())
        sqnr = float("inf") if err == 0 else float(10 * np.log10((r64 ** 2).sum() / err))
        rows.append((label, dict(ips=len(x) / sec, first=first, compile=comp, diff=diff, sqnr=sqnr), None))

    precisions = [p for p in args.precisions.split(",") if p and (cuda or p == "fp32")]
    base_engine = build("torch", g, fp32, device=str(dev), fast=False)
    row("FP32 eager (interpreter)", "fp32", lambda: base_engine.run_tensor(x))
    del base_engine
    for p in precisions:
        tp = None if p == "fp32" else p
        if p != "fp32":
            eager = build("torch", g, fp32, torch_precision=tp, device=str(dev), fast=False)
            row(f"{p.upper()} eager (interpreter)", p, lambda e=eager: e.run_tensor(x))
            del eager
        if cuda and not args.skip_eager_graphs:
            graphs = build("torch", g, fp32, torch_precision=tp, device=str(dev))
            row(f"{p.upper()} CUDA graphs + channels-last", p, lambda e=graphs: e.run_tensor(x))
        comp = build("torch", g, fp32, torch_precision=tp, device=str(dev), compile="on", compile_mode=args.engine_mode)
        row(f"{p.upper()} compiled" + (" + CUDA graphs" if cuda else ""), p, lambda e=comp: e.run_tensor(x),
            lambda e=comp: e.compile_s)
        del comp
    if not args.no_int8:
        int8_rows(args, g, int8, ranges, dev, cuda, x, row, build, QuantSim)
    report(args, rows, x, dev, cuda, torch)


def int8_rows(args, g, int8, ranges, dev, cuda, x, row, build, QuantSim):
    """The simulated INT8 engine (the Q/DQ graph) and the simulator, eager and compiled."""
    eager = build("torch", g, int8, ranges, device=str(dev), fast=False)
    row("INT8 SIMULATED engine (Q/DQ) eager", "qdq", lambda: eager.run_tensor(x))
    if cuda and not args.skip_eager_graphs:
        graphs = build("torch", g, int8, ranges, device=str(dev))
        row("INT8 SIMULATED engine CUDA graphs", "qdq", lambda: graphs.run_tensor(x))
    comp = build("torch", g, int8, ranges, device=str(dev), compile="on", compile_mode=args.engine_mode)
    row("INT8 SIMULATED engine compiled", "qdq", lambda: comp.run_tensor(x), lambda: comp.compile_s)

    sim_e = QuantSim(g, ranges, dev)
    sim_c = QuantSim(g, ranges, dev, compile=True, compile_mode=args.sim_mode)
    all8 = set(sim_e.layers)
    row("simulator FP32 plan eager", "sim-fp32", lambda: sim_e.run(x, set()))
    row("simulator FP32 plan compiled", "sim-fp32", lambda: sim_c.run(x, set()), lambda: sim_c.compile_s)
    row("simulator INT8 plan eager", "sim-int8", lambda: sim_e.run(x, all8))
    row("simulator INT8 plan compiled (same graph)", "sim-int8", lambda: sim_c.run(x, all8), lambda: sim_c.compile_s)


def report(args, rows, x, dev, cuda, torch):
    """The table and the goals' ratios."""
    base = next((r for label, r, _ in rows if r and label == "FP32 eager (interpreter)"), None)
    name = torch.cuda.get_device_name(dev) if cuda else "CPU"
    print(f"\ncompile benchmark | {args.model} | input {tuple(x.shape)} | {name} | torch {torch.__version__} | "
          f"engine mode {args.engine_mode or ('max-autotune-no-cudagraphs' if cuda else 'default')} | sim mode {args.sim_mode}")
    print(f"{'forward':<44} {'img/s':>10} {'x eager FP32':>13} {'compile s':>10} {'1st call s':>11} {'max|diff|':>10} "
          f"{'SQNR dB':>8}")
    for label, r, err in rows:
        if r is None:
            print(f"{label:<44} failed: {err}")
            continue
        ratio = r["ips"] / base["ips"] if base else float("nan")
        comp = f"{r['compile']:.1f}" if r["compile"] is not None else "-"
        print(f"{label:<44} {r['ips']:>10.0f} {ratio:>12.2f}x {comp:>10} {r['first']:>11.2f} {r['diff']:>10.2e} "
              f"{r['sqnr']:>8.1f}")
    by = {label: r for label, r, _ in rows if r}
    f_e, i_e = by.get("simulator FP32 plan eager"), by.get("simulator INT8 plan eager")
    i_c, f_c = by.get("simulator INT8 plan compiled (same graph)"), by.get("simulator FP32 plan compiled")
    if f_e and i_e and i_c:
        print(f"simulated INT8 / FP32 forward (eager simulator): eager {i_e['ips'] / f_e['ips'] * 100:.0f}%, "
              f"compiled {i_c['ips'] / f_e['ips'] * 100:.0f}% (goal >= 80%)"
              + (f"; compiled INT8 / compiled FP32 {i_c['ips'] / f_c['ips'] * 100:.0f}%" if f_c else ""))
    half, today = by.get("FP16 compiled + CUDA graphs"), by.get("FP16 CUDA graphs + channels-last")
    if half and base:
        print(f"compiled FP16 / eager FP32: {half['ips'] / base['ips']:.2f}x (goal >= 3x)"
              + (f"; FP16 CUDA graphs without compile: {today['ips'] / base['ips']:.2f}x" if today else ""))
    print("max|diff|, SQNR: the logits against the first row of the same precision (INT8: rounding ties flipped by "
          "float differences compound over the layers; MobileNetV2's simulation in float32 vs float64 is ~13 dB)")
    print("compile s: torch.compile's seconds (all shapes so far; the simulator's INT8 row reuses its FP32 "
          "compilation); 1st call s: compile + warm-up + CUDA-graph capture")


if __name__ == "__main__":
    main()
