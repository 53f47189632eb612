#!/usr/bin/env python3
"""Command line: thin argparse over the ``trtquant`` API. One function per subcommand; no logic.

Exit codes: 0 ok, 2 bad input or a failed step (message on stderr, nothing half-written).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path


def _import_package():
    """Import this checkout as the package ``trtquant`` without putting its folders on sys.path.

    Running ``python cli.py`` puts this directory first on sys.path, where our ``datasets/`` would
    shadow the PyPI ``datasets`` package for the whole process; drop it and load the checkout as
    ``trtquant`` instead (relative imports inside do the rest).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.getcwd()) == here:
        sys.path.pop(0)
    if "trtquant" not in sys.modules:
        spec = importlib.util.spec_from_file_location("trtquant", os.path.join(here, "__init__.py"),
                                                      submodule_search_locations=[here])
        module = importlib.util.module_from_spec(spec)
        sys.modules["trtquant"] = module
        spec.loader.exec_module(module)


if __name__ == "__main__":
    _import_package()
    from trtquant.quant.errors import ConfigError, QuantError  # noqa: E402
else:
    from .quant.errors import ConfigError, QuantError


def _percent(value: str) -> float:
    return float(value.rstrip("%"))


def cmd_calibrate(args) -> int:
    from trtquant.quant.calibrate import CalibrationConfig, calibrate

    cfg = CalibrationConfig(
        model=args.model, onnx=args.onnx, weights=args.weights, preset=args.preset, data=args.data,
        data_dir=args.data_dir, num_images=args.num_images, seed=args.seed, batch_size=args.batch_size,
        device=args.device, executor=args.executor, method=args.method, percentile=args.percentile,
        num_bins=args.num_bins, workers=args.workers, on_bad_image=args.on_bad_image, trt_version=args.trt_version,
        cache_algorithm=args.cache_algorithm, h5_images=args.h5_images, h5_labels=args.h5_labels,
        calibrator=args.calibrator)
    res = calibrate(cfg, cache_path=args.cache, ranges_path=args.ranges, stats_path=args.stats,
                    from_stats=args.from_stats, onnx_out=args.onnx_out, force=args.force,
                    progress=not args.no_progress)
    t = res.timings
    rate = res.images / t["stats_pass_s"] if t.get("stats_pass_s") else float("nan")
    lines = [
        f"calibrated {len(res.ranges.ranges)} tensors | method {res.ranges.method} | {res.images} images"
        + (f" ({len(res.skipped)} unreadable skipped)" if res.skipped else ""),
        f"device {res.device} | executor {res.executor} | total {t['total_s']:.2f} s"
        + (f" | statistics pass {t['stats_pass_s']:.2f} s ({rate:.1f} images/s)" if "stats_pass_s" in t else "")
        + (f" | ranges {t['ranges_s'] * 1000:.0f} ms" if "ranges_s" in t else ""),
        f"cache  {args.cache}  ({res.cache.header()})",
        f"ranges {args.ranges or args.cache + '.ranges.json'}",
    ]
    if args.stats:
        lines.append(f"stats  {args.stats}  (recompute any method with --from-stats)")
    if res.onnx_path:
        lines.append(f"onnx   {args.onnx_out or res.onnx_path}  (build the TensorRT engine from this graph: the cache is keyed by its tensor names)")
    print("\n".join(lines))
    return 0


def cmd_build(args) -> int:
    from trtquant.quant.build import build_engine

    res = build_engine(precision=args.precision, backend=args.backend, out=args.out, model=args.model, onnx=args.onnx,
                       weights=args.weights, ranges_path=args.ranges, device=args.device,
                       torch_precision=args.torch_precision, smoke=not args.no_smoke, trt_mode=args.trt_mode)
    info = res.engine.info
    lines = [f"engine  {info.backend} | {info.precision} | {info.device}" + (" | SIMULATED" if info.simulated else ""),
             f"        {info.description}",
             f"plan    {res.plan.name}: " + ", ".join(f"{k} {v}" for k, v in res.plan.counts().items()) + f", rest {res.plan.default}"]
    if res.smoke:
        lines.append(f"check   top-1 {res.smoke['top1'] * 100:.1f}% on the {res.smoke['images']} bundled images, "
                     f"batch latency {res.smoke['batch_latency_ms']:.1f} ms")
    lines += [f"wrote   {p}" for p in res.files.values()]
    lines += ["trtexec " + c for c in res.trtexec]
    print("\n".join(lines))
    return 0


def cmd_cache(args) -> int:
    from trtquant.quant import cache_tools

    if args.action == "show":
        print(cache_tools.show(args.files[0]))
        return 0
    if args.action == "diff":
        if len(args.files) != 2:
            raise ConfigError("cache diff needs two files", subject="cache diff", got=f"{len(args.files)} file(s)")
        d = cache_tools.diff(args.files[0], args.files[1], rel_tol=args.rel_tol)
        print(cache_tools.format_diff(d, args.files[0], args.files[1]))
        return 0 if d.identical else 1
    if not args.out:
        raise ConfigError("cache convert needs an output", subject="--out", hint="e.g. --out calib.ranges.json")
    from trtquant.quant.fileio import check_output_path

    out = check_output_path(Path(args.out), flag="--out", force=True)
    to = args.to or ("ranges" if out.suffix == ".json" else "onnx" if out.suffix == ".onnx" else "cache")
    graph = None
    if to == "onnx":
        from trtquant.quant.models import resolve_model

        graph = resolve_model(args.model, onnx=args.onnx).graph
    msg = cache_tools.convert(args.files[0], out, to=to, trt_version=args.trt_version, algorithm=args.algorithm,
                              graph=graph)
    print(f"wrote {out} ({to}: {msg})")
    return 0


def cmd_lint(args) -> int:
    from trtquant.quant.graph import OnnxGraph
    from trtquant.quant.lint import lint_model

    graph = OnnxGraph.load(args.model_path)
    findings = lint_model(graph.model)
    for f in findings:
        print(f)
    errors = sum(f.severity == "error" for f in findings)
    q = sum(n.op_type == "QuantizeLinear" for n in graph.model.graph.node)
    print(f"{args.model_path}: {q} QuantizeLinear nodes, {errors} error(s), {len(findings) - errors} warning(s)")
    return 1 if errors else 0


def cmd_evaluate(args) -> int:
    from trtquant.quant.evaluate import EvalSettings, evaluate

    settings = EvalSettings(configs=args.configs, backend=args.backend, model=args.model, onnx=args.onnx,
                            weights=args.weights, data=args.data, data_dir=args.data_dir, num_images=args.num_images,
                            calib_images=args.calib_images, seed=args.seed, batch_size=args.batch_size,
                            latency_iters=args.latency_iters, device=args.device, target_drop=_percent(args.target_drop))
    res = evaluate(settings, args.out, resume=args.resume, progress=not args.no_progress)
    doc = res.doc
    for r in doc["results"]:
        if r.get("status") != "ok":
            print(f"{r['config']:<18} FAILED: {r.get('reason', '')}")
            continue
        acc = f"top-1 {r['top1'] * 100:6.2f}%" if "top1" in r else f"agreement {r['agreement'] * 100:6.2f}%"
        d = r["drop_pp"]
        print(f"{r['config']:<18} {acc}  drop {d['points']:+.2f} pp [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
              f"  b1 p50 {r['latency_ms']['p50']:.2f} ms  {r['throughput']['images_per_s']:.0f} img/s"
              + ("  (simulated INT8)" if r["engine"].get("simulated") else ""))
    rec = doc["recommendation"]
    print(f"recommendation: {rec['config'] or 'none'} ({rec['reason']})")
    print("\n".join(f"wrote {p}" for p in res.files.values()))
    return 0


def cmd_report(args) -> int:
    from trtquant.reports.render import load_results, write_reports

    doc = load_results(args.results)
    out = Path(args.out) if args.out else Path(args.results).parent
    for p in write_reports(doc, out).values():
        print(f"wrote {p}")
    return 0


def cmd_sweep(args) -> int:
    from trtquant.quant.sweep import SweepSettings, sweep

    settings = SweepSettings(target=args.target_drop, model=args.model, onnx=args.onnx, weights=args.weights,
                             data=args.data, data_dir=args.data_dir, num_images=args.num_images,
                             calib_images=args.calib_images, method=args.method, ranges=args.ranges,
                             proxy_images=args.proxy_images, time_budget_s=args.time_budget, device=args.device,
                             validate_backend=args.validate_backend, trt_version=args.trt_version, seed=args.seed,
                             margin_pp=_percent(args.margin))
    out = args.out or f"sweep-{Path(args.onnx).stem if args.onnx else args.model}"
    doc = sweep(settings, out, progress=not args.no_progress)
    s, v = doc["search"], doc["validation"]
    print(f"target  {doc['target']['text']}: {doc['target']['meaning']}")
    for n in doc["notes"]:
        print(f"note    {n}")
    print(f"result  {'met' if s['met'] else 'NOT met'}{' (partial)' if s['partial'] else ''}: "
          f"{len(s['fp16_layers'])}/{doc['layers']} layers FP16, {s['evaluations']} full-model evaluations, "
          f"simulated {doc['metric']} {s['simulated_metric'] * 100:.2f}% (FP32 {doc['fp32_metric'] * 100:.2f}%)")
    if v.get("status") == "ok":
        print(f"check   {v['backend']}: {v['metric'] * 100:.2f}% -> {'meets' if v['meets_target'] else 'MISSES'} the target")
    else:
        print(f"check   {v['backend']} failed: {v.get('reason')}")
    for c in doc["trtexec"]:
        print(f"trtexec {c}")
    print(f"wrote   {out}/plan.json, model_qdq.onnx, calib.bin, sweep.json, sweep.md, sweep.html "
          f"({doc['timings']['total_s']:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cli.py", description="Quantization and calibration workbench for TensorRT.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("calibrate", help="run calibration and write a TensorRT calibration cache + ranges JSON",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = c.add_argument_group("model")
    m.add_argument("--model", default="mobilenet_v2",
                   help="mobilenet_v2 | efficientnet_lite0 | any torchvision architecture with --weights")
    m.add_argument("--weights", default=None, help="state_dict file for a torchvision architecture")
    m.add_argument("--onnx", default=None, help="calibrate this ONNX model instead of --model")
    m.add_argument("--preset", default=None, help="preprocessing preset (imagenet | inception); default: the model's")
    m.add_argument("--onnx-out", default=None, help="also save the exact ONNX graph the cache is keyed to")
    d = c.add_argument_group("data")
    d.add_argument("--data", default="imagenet_sample",
                   help="imagenet_sample | imagenet_val | an image directory | a .h5/.hdf5/.npy/.npz file")
    d.add_argument("--data-dir", default=None, help="ImageNet validation directory for --data imagenet_val "
                                                    "(or set IMAGENET_VAL_DIR)")
    d.add_argument("--num-images", type=int, default=None,
                   help="deterministic random subset size (default: all images, at most 1000)")
    d.add_argument("--seed", type=int, default=0, help="subset seed")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(16, CPUs))")
    d.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                   help="unreadable images: skip and count them, or stop with an error")
    d.add_argument("--h5-images", default="images", help="HDF5 dataset holding the images")
    d.add_argument("--h5-labels", default="labels", help="HDF5 dataset holding the labels")
    a = c.add_argument_group("algorithm")
    a.add_argument("--method", default="entropy", help="entropy | minmax | percentile | mse")
    a.add_argument("--percentile", type=_percent, default=99.99, help="for --method percentile")
    a.add_argument("--num-bins", type=int, default=2048, help="histogram bins")
    a.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a.add_argument("--executor", default="auto", help="auto | torch | onnxruntime (auto: torch unless ops are missing)")
    a.add_argument("--calibrator", default="ours", choices=("ours", "tensorrt"),
                   help="ours: our statistics pass + range algorithm (no TensorRT needed); tensorrt: TensorRT <= 10 "
                        "calibrates with its IInt8 calibrator fed by our data pipeline (entropy/minmax)")
    a.add_argument("--from-stats", default=None, help="recompute ranges from a saved statistics file (no model run)")
    o = c.add_argument_group("outputs")
    o.add_argument("--cache", required=True, help="TensorRT calibration cache to write")
    o.add_argument("--ranges", default=None, help="ranges JSON to write (default: CACHE.ranges.json)")
    o.add_argument("--stats", default=None, help="also save the statistics (.npz) for --from-stats")
    o.add_argument("--trt-version", default=None,
                   help="TensorRT version for the cache header (default: the installed one, else 8.6.1)")
    o.add_argument("--cache-algorithm", default=None,
                   help="override the cache header algorithm (EntropyCalibration2 | MinMaxCalibration | ...)")
    o.add_argument("--force", action="store_true", help="overwrite output files of another kind")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_calibrate)

    b = sub.add_parser("build", help="build an engine for a precision configuration and write TensorRT artifacts",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--precision", default="int8", help="fp32 | fp16 | int8 | PLAN.json")
    b.add_argument("--backend", default="onnxruntime", help="onnxruntime | torch | tensorrt")
    b.add_argument("--ranges", default=None, help="ranges JSON, TensorRT cache or Q/DQ ONNX (needed for INT8)")
    b.add_argument("--out", required=True, help="output directory (created)")
    b.add_argument("--model", default="mobilenet_v2")
    b.add_argument("--weights", default=None)
    b.add_argument("--onnx", default=None)
    b.add_argument("--device", default="auto", help="torch backend: auto | cpu | cuda")
    b.add_argument("--torch-precision", default=None, help="torch backend: fp32 | tf32 | fp16 | bf16")
    b.add_argument("--trt-mode", default="explicit", choices=("explicit", "implicit"),
                   help="tensorrt backend: explicit Q/DQ (TensorRT 8-11) or implicit cache + layer precisions (<= 10)")
    b.add_argument("--no-smoke", action="store_true", help="skip the check on the bundled images")
    b.set_defaults(func=cmd_build)

    k = sub.add_parser("cache", help="show, diff or convert calibration caches / ranges / Q/DQ models")
    k.add_argument("action", choices=("show", "diff", "convert"))
    k.add_argument("files", nargs="+", help="one file (show, convert) or two (diff)")
    k.add_argument("--out", default=None, help="convert: output file (.json ranges, .onnx Q/DQ, else cache)")
    k.add_argument("--to", default=None, choices=("cache", "ranges", "onnx"), help="convert: output format")
    k.add_argument("--trt-version", default=None, help="convert to cache: rewrite the header's TensorRT version")
    k.add_argument("--algorithm", default=None, help="convert to cache: rewrite the header's algorithm")
    k.add_argument("--rel-tol", type=float, default=1e-6, help="diff: relative amax tolerance")
    k.add_argument("--model", default="mobilenet_v2", help="convert to onnx: the model the ranges belong to")
    k.add_argument("--onnx", default=None, help="convert to onnx: the ONNX model the ranges belong to")
    k.set_defaults(func=cmd_cache)

    li = sub.add_parser("lint", help="check a Q/DQ ONNX model against TensorRT's quantization rules (exit 1 on errors)")
    li.add_argument("model_path", metavar="MODEL.onnx")
    li.set_defaults(func=cmd_lint)

    e = sub.add_parser("evaluate", help="build and measure every configuration; write results.json + reports",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--configs", default="fp32,int8:entropy,int8:minmax,int8:percentile",
                   help="comma list of fp32, fp16, tf32, bf16, int8:entropy|minmax|percentile|mse, PLAN.json")
    e.add_argument("--backend", default="onnxruntime", help="onnxruntime | torch | tensorrt")
    e.add_argument("--model", default="mobilenet_v2")
    e.add_argument("--weights", default=None)
    e.add_argument("--onnx", default=None)
    e.add_argument("--data", default="imagenet_sample")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--num-images", type=int, default=None, help="evaluation images (default: all, at most 1000)")
    e.add_argument("--calib-images", type=int, default=256, help="calibration subset (seeded) of the same data")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=int, default=64, help="evaluation and throughput batch size")
    e.add_argument("--latency-iters", type=int, default=50)
    e.add_argument("--device", default="auto")
    e.add_argument("--target-drop", default="0.5%", help="accuracy drop allowed for the recommendation (pp)")
    e.add_argument("--out", required=True, help="output directory (created)")
    e.add_argument("--resume", action="store_true", help="keep configurations already measured in OUT/results.json")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="re-render report.md/report.html from a results.json")
    r.add_argument("results", metavar="RESULTS.json")
    r.add_argument("--out", default=None, help="directory for the reports (default: next to RESULTS.json)")
    r.set_defaults(func=cmd_report)

    w = sub.add_parser("sweep", help="mixed-precision planner: the fewest FP16 layers that meet an accuracy target",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--target-drop", default="0.5%", help="0.5%% (pp of top-1), 0.5%%rel (relative) or agree:99%%")
    w.add_argument("--model", default="mobilenet_v2")
    w.add_argument("--weights", default=None)
    w.add_argument("--onnx", default=None)
    w.add_argument("--data", default="imagenet_sample")
    w.add_argument("--data-dir", default=None)
    w.add_argument("--num-images", type=int, default=None, help="evaluation images (default: all, at most 1000)")
    w.add_argument("--calib-images", type=int, default=256)
    w.add_argument("--method", default="entropy", help="range method when calibrating here")
    w.add_argument("--ranges", default=None, help="use these ranges (JSON, cache or Q/DQ ONNX) instead of calibrating")
    w.add_argument("--proxy-images", type=int, default=64, help="images for the sensitivity ranking")
    w.add_argument("--time-budget", type=float, default=None, help="seconds; returns the best plan found so far")
    w.add_argument("--margin", default="0", help="pp the simulated plan must beat the target by (e.g. 0.2%%): "
                                                  "room for the real engine's rounding differences")
    w.add_argument("--device", default="auto")
    w.add_argument("--validate-backend", default="onnxruntime", help="backend that measures the chosen plan")
    w.add_argument("--trt-version", default=None, help="TensorRT version for the calib.bin header")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", default=None, help="output directory (default: ./sweep-MODEL)")
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(func=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except QuantError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
