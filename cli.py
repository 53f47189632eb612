#!/usr/bin/env python3
"""Command line: thin argparse over the ``trtquant`` API. One function per subcommand; no logic.

Exit codes: 0 ok, 2 bad input or a failed step (message on stderr, nothing half-written).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import math
import os
import sys
import tempfile
import textwrap
import traceback
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
    from trtquant.core.errors import ConfigError, QuantError  # noqa: E402
    from trtquant.core.defaults import (COMPILE_CHOICES, DEFAULT_COMPILE, DEFAULT_DATA,  # noqa: E402
                                        DEFAULT_LATENCY_BATCH, DEFAULT_LATENCY_MODEL, DEFAULT_MODEL,
                                        DEFAULT_OBJECTIVE, DEFAULT_TARGET_GPU, LATENCY_MODELS, OBJECTIVES)
    from trtquant.core.targets import BACKENDS, TARGET_FORMS  # noqa: E402
else:
    from .core.errors import ConfigError, QuantError
    from .core.defaults import (COMPILE_CHOICES, DEFAULT_COMPILE, DEFAULT_DATA, DEFAULT_LATENCY_BATCH,
                                DEFAULT_LATENCY_MODEL, DEFAULT_MODEL, DEFAULT_OBJECTIVE, DEFAULT_TARGET_GPU,
                                LATENCY_MODELS, OBJECTIVES)
    from .core.targets import BACKENDS, TARGET_FORMS


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default once, and only where it says something (not None/False, not already in the help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS) or action.required
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return text + " (default: %(default)s)"

    def _fill_text(self, text, width, indent):
        return "\n".join(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent) or ""
                         for line in text.splitlines())


def _typed(name: str, parse):
    """An argparse type whose error is a sentence (argparse prefixes it with the flag), not a function name."""
    def convert(value: str):
        try:
            return parse(value)
        except argparse.ArgumentTypeError:
            raise
        except (ValueError, TypeError, QuantError) as err:
            raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected {name}") from err
    convert.__name__ = name
    return convert


def _int_at_least(minimum: int):
    def parse(value: str) -> int:
        v = int(value)
        if v < minimum:
            raise argparse.ArgumentTypeError(f"got {v}, expected an integer >= {minimum}")
        return v
    return _typed(f"an integer >= {minimum}", parse)


def _float_range(lo: float, hi: float, *, lo_open: bool = False, strip: str = ""):
    def parse(value: str) -> float:
        v = float(value.strip().rstrip(strip) if strip else value)
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            raise argparse.ArgumentTypeError(
                f"got {value!r}, expected a number {'>' if lo_open else '>='} {lo:g}"
                + (f" and <= {hi:g}" if math.isfinite(hi) else ""))
        return v
    return _typed(f"a number{' (a trailing % is allowed)' if strip else ''}", parse)


COUNT = _int_at_least(1)
SEED = _int_at_least(0)
PERCENTILE = _float_range(0.0, 100.0, lo_open=True, strip="%")
PP = _float_range(0.0, 100.0, strip="%")
NONNEG = _float_range(0.0, math.inf)
SECONDS = _float_range(0.0, math.inf, lo_open=True)


def _checked_by(check, expected: str | None):
    """An argparse type that runs one of our validators, so its error names the flag, not a function."""
    def parse(value: str) -> str:
        try:
            check(value)
        except QuantError as err:
            raise argparse.ArgumentTypeError(f"got {value!r}, expected {err.expected or expected}") from err
        return value
    return parse


def _compile_flag(p, what: str) -> None:
    p.add_argument("--compile", choices=COMPILE_CHOICES, default=DEFAULT_COMPILE,
                   help=f"torch.compile {what}: fused convolution epilogues and fake quantization (auto: on a "
                        "CUDA device only; the compile seconds are reported apart)")


def _trt_version(value: str) -> str:
    from trtquant.core.cache import trt_version_int

    return _checked_by(trt_version_int, "MAJOR.MINOR.PATCH")(value)


def _target(value: str) -> str:
    from trtquant.core.targets import parse_target

    return _checked_by(parse_target, None)(value)


def _nonempty(what: str):
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"got an empty string, expected {what}")
        return value
    return _typed(what, parse)


PATH = _nonempty("a path")


def _check_out_dir(out, outputs: dict, force: bool):
    from trtquant.core.fileio import check_output_dir

    return check_output_dir(Path(out), flag="--out", outputs=outputs, force=force)


def _build_outputs() -> dict:
    from trtquant.core.cache import looks_like_trt_cache
    from trtquant.core.fileio import contains_marker, json_format, looks_like_onnx

    return {"plan.json": json_format("trtquant-plan/1"), "model_qdq.onnx": looks_like_onnx,
            "engine.json": contains_marker('"engine": {', start=False), "calib.bin": looks_like_trt_cache}


def _report_outputs() -> dict:
    from trtquant.core.fileio import contains_marker

    return {"report.md": contains_marker("# Evaluation: ", start=True),
            "report.html": contains_marker("<title>trtquant evaluation</title>")}


def _recovery(args, steps: tuple | None = None):
    """``RecoverySettings`` from the recovery flags (``steps``: from ``--recover`` unless given); None when no step
    is asked for. A recovery knob without a step to apply it to is refused, naming the flag."""
    from trtquant.quant.recover import RecoverySettings, parse_recovery

    steps = parse_recovery(args.recover) if steps is None else steps
    explicit = _explicit_flags(args)
    knobs = [f for f in ("recover_images", "adaround_iters", "range_steps", "cle_replace_relu6") if f in explicit]
    if not steps:
        if knobs:
            raise ConfigError("recovery settings without a recovery step", subject="--" + knobs[0].replace("_", "-"),
                              hint="add --recover STEPS (e.g. --recover bias), or an int8:METHOD+STEP configuration")
        return None
    if args.cle_replace_relu6 and "cle" not in steps:
        raise ConfigError("--cle-replace-relu6 has no effect without cle", subject="--cle-replace-relu6",
                          hint="add cle to the recovery steps, e.g. cle+bias")
    if args.range_steps is not None and "ranges" not in steps:
        raise ConfigError("--range-steps has no effect without ranges", subject="--range-steps",
                          hint="add ranges to the recovery steps, e.g. auto+ranges")
    given = {field: getattr(args, flag) for field, flag in (("adaround_iters", "adaround_iters"),
                                                           ("images", "recover_images"), ("range_steps", "range_steps"))
             if getattr(args, flag) is not None}     # a flag left out keeps RecoverySettings' default
    return RecoverySettings(steps=steps, cle_replace_relu6=args.cle_replace_relu6, **given)


def cmd_calibrate(args) -> int:
    from trtquant.quant.settings import CalibrationConfig
    from trtquant.quant.calibrate import calibrate

    cfg = CalibrationConfig(
        model=args.model, onnx=args.onnx, weights=args.weights, preset=args.preset, data=args.data,
        data_dir=args.data_dir, num_images=args.num_images, seed=args.seed, batch_size=args.batch_size,
        device=args.device, executor=args.executor, method=args.method, percentile=args.percentile,
        num_bins=args.num_bins, workers=args.workers, on_bad_image=args.on_bad_image, trt_version=args.trt_version,
        cache_algorithm=args.cache_algorithm, h5_images=args.h5_images, h5_labels=args.h5_labels,
        calibrator=args.calibrator, layout=args.layout, decode=args.decode, auto_images=args.auto_images)
    recovery = _recovery(args)
    res = calibrate(cfg, cache_path=args.cache, ranges_path=args.ranges, stats_path=args.stats,
                    from_stats=args.from_stats, onnx_out=args.onnx_out, qdq_out=args.qdq_out, force=args.force,
                    progress=not args.no_progress, recovery=recovery)
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
    if res.ranges.methods:
        from trtquant.calibrators.auto import chosen_counts

        lines.append("auto   chose " + ", ".join(f"{k} for {v}" for k, v in chosen_counts(res.ranges.methods.values()).items())
                     + " tensor(s)  (per tensor in the ranges JSON; `cache show` lists them)")
    if args.stats:
        lines.append(f"stats  {args.stats}  (recompute any method with --from-stats)")
    if res.recovery is not None:
        from trtquant.quant.recover import describe

        lines.insert(2, f"recover {describe(res.recovery)}")
        if args.onnx_out:
            lines.append(f"onnx   {args.onnx_out}  (the recovered model: build the TensorRT engine from it; the cache "
                         f"and ranges are its)")
        elif res.onnx_path:         # learned ranges only: the model as it is
            lines.append(f"onnx   {res.onnx_path}  (the weights are unchanged: build the TensorRT engine from this "
                         f"graph; the cache is keyed by its tensor names)")
    elif res.onnx_path:
        lines.append(f"onnx   {args.onnx_out or res.onnx_path}  (build the TensorRT engine from this graph: the cache is keyed by its tensor names)")
    if args.qdq_out:
        lines.append(f"qdq    {args.qdq_out}  (all-INT8 Q/DQ model for TensorRT 10/11 explicit quantization)")
    print("\n".join(lines))
    return 0


def _explicit_flags(args) -> set:
    """The flags the user typed (``dest`` names), for "this flag has no effect here" checks."""
    argv = getattr(args, "_argv", None) or []
    return {a.split("=", 1)[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}


def _require_input_file(flag: str, value) -> None:
    """An input file flag names an existing file: checked before any work, naming the flag."""
    if value is not None and not Path(value).is_file():
        raise ConfigError("file not found" if not Path(value).exists() else "not a file", subject=f"{flag} {value}",
                          hint="check the path")


def _require_backend(flag: str, backend: str) -> None:
    """A backend flag names a backend whose runtime imports here: checked before any work, naming the flag."""
    from trtquant.core.errors import BackendUnavailable

    known = {"tensorrt": ("TensorRT", "install TensorRT, or use --backend onnxruntime/torch; the Q/DQ ONNX that "
                                      "`cli.py build` writes builds with trtexec"),
             "openvino": ("OpenVINO", "pip install openvino, or use --backend onnxruntime"),
             "onnxruntime": ("ONNX Runtime", "pip install onnxruntime, or use --backend torch")}
    if backend in known and importlib.util.find_spec(backend) is None:
        name, hint = known[backend]
        raise BackendUnavailable(f"{name} is not installed", subject=f"{flag} {backend}", hint=hint)


def _check_precision(value: str) -> None:
    from trtquant.quant.artifacts.plan import PRESETS

    if value in PRESETS or Path(value).is_file():
        return
    hint = (f"presets are lower-case: --precision {value.lower()}" if value.lower() in PRESETS
            else "use a preset or the path of a plan JSON written by trtquant (e.g. by sweep)")
    raise ConfigError("unknown precision", subject=f"--precision {value}",
                      got="neither a preset nor an existing plan file", expected=" | ".join(PRESETS) + " | PLAN.json",
                      hint=hint)


def cmd_build(args) -> int:
    from trtquant.quant.build import build_engine

    explicit = _explicit_flags(args)
    _require_backend("--backend", args.backend)
    _check_precision(args.precision)
    _require_input_file("--ranges", args.ranges)
    if args.backend != "torch":
        for flag in ("torch_precision", "device"):
            if flag in explicit:
                raise ConfigError(f"--{flag.replace('_', '-')} has no effect with this backend",
                                  subject=f"--{flag.replace('_', '-')} with --backend {args.backend}",
                                  hint="it applies to --backend torch only; drop it or use --backend torch")
    if args.backend != "tensorrt" and "trt_mode" in explicit:
        raise ConfigError("--trt-mode has no effect with this backend", subject=f"--trt-mode with --backend {args.backend}",
                          hint="it applies to --backend tensorrt only")
    _check_out_dir(args.out, _build_outputs(), args.force)
    res = build_engine(precision=args.precision, backend=args.backend, out=args.out, model=args.model, onnx=args.onnx,
                       weights=args.weights, preset=args.preset, ranges_path=args.ranges, device=args.device,
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
    from trtquant.quant import tools

    explicit = _explicit_flags(args)
    if args.action == "show":
        print("\n\n".join(tools.show(f) for f in args.files))
        return 0
    if args.action == "diff":
        if len(args.files) != 2:
            raise ConfigError("cache diff needs two files", subject="cache diff", got=f"{len(args.files)} file(s)")
        d = tools.diff(args.files[0], args.files[1], rel_tol=args.rel_tol)
        print(tools.format_diff(d, args.files[0], args.files[1]))
        return 0 if d.identical else 1
    if len(args.files) != 1:
        raise ConfigError("cache convert takes one input file", subject="cache convert", got=f"{len(args.files)} files",
                          hint="convert one file per command")
    if not args.out:
        raise ConfigError("cache convert needs an output", subject="--out", hint="e.g. --out calib.ranges.json")
    from trtquant.core.fileio import OutputSet

    out = Path(args.out)
    to = args.to or tools.output_format(out)
    if to != "cache":
        for flag in ("trt_version", "algorithm"):
            if flag in explicit:
                raise ConfigError(f"--{flag.replace('_', '-')} has no effect when converting to {to}",
                                  subject=f"--{flag.replace('_', '-')} with --out {out}",
                                  hint="it rewrites a calibration cache header: use an output that is a cache (or --to cache)")
    if to != "onnx" and ("model" in explicit or "onnx" in explicit):
        raise ConfigError(f"--model/--onnx have no effect when converting to {to}", subject="cache convert",
                          hint="they name the graph for --to onnx only")
    outputs = OutputSet(force=args.force)
    outputs.add(out, flag="--out", is_same_kind=tools.same_kind_test(to))
    graph = None
    if to == "onnx":
        from trtquant.quant.graph.models import resolve_model

        graph = resolve_model(args.model, onnx=args.onnx).graph
    msg = tools.convert(args.files[0], out, to=to, trt_version=args.trt_version, algorithm=args.algorithm,
                              graph=graph, outputs=outputs)
    print(f"wrote {out} ({to}: {msg})")
    return 0


def cmd_lint(args) -> int:
    from trtquant.quant.graph.onnx_graph import OnnxGraph
    from trtquant.quant.artifacts.lint import count_qdq, lint_model

    graph = OnnxGraph.load(args.model_path, flag="MODEL.onnx")
    findings = lint_model(graph.model)
    for f in findings:
        print(f)
    errors = sum(f.severity == "error" for f in findings)
    q, dq = count_qdq(graph.model)
    print(f"{args.model_path}: {q} QuantizeLinear nodes, {errors} error(s), {len(findings) - errors} warning(s)")
    if q == 0 and dq == 0:
        print("note: this model has no Q/DQ nodes: nothing was checked (lint a model written by `build` or "
              "`cache convert --to onnx`)")
    return 1 if errors else 0


def cmd_evaluate(args) -> int:
    from trtquant.core.errors import Interrupted
    from trtquant.quant.settings import EvalSettings
    from trtquant.quant.evaluate import evaluate, parse_configs, results_outputs
    from trtquant.core.targets import parse_target

    _require_backend("--backend", args.backend)
    parse_target(args.target_drop)          # before any work: the error names the flag
    specs = parse_configs(args.configs)
    recovery = _recovery(args, steps=tuple(sorted({s for spec in specs for s in spec.recover})))
    _check_out_dir(args.out, {**results_outputs(), **_report_outputs()}, args.force)
    settings = EvalSettings(configs=args.configs, backend=args.backend, model=args.model, onnx=args.onnx,
                            weights=args.weights, preset=args.preset, data=args.data, data_dir=args.data_dir, num_images=args.num_images,
                            calib_images=args.calib_images, seed=args.seed, batch_size=args.batch_size,
                            latency_iters=args.latency_iters, device=args.device, target=args.target_drop,
                            metric=args.metric, compile=args.compile)
    try:
        res = evaluate(settings, args.out, resume=args.resume, progress=not args.no_progress, recovery=recovery)
    except KeyboardInterrupt:
        partial = Path(args.out) / "results.partial.json"
        kept = (f"finished configurations are kept in {partial}: add --resume to continue" if partial.is_file()
                else "no configuration had finished, so nothing was kept for --resume")
        raise Interrupted("evaluation interrupted", subject=str(args.out),
                          hint=f"earlier results were left untouched; {kept}") from None
    if not _is_root():
        return 0                            # under torchrun rank 0 prints the summary
    doc = res.doc
    for r in doc.results:
        if not r.ok:
            print(f"{r.config:<18} FAILED: {r.reason}")
            continue
        acc = f"top-1 {r.top1 * 100:6.2f}%" if r.top1 is not None else f"agreement {r.agreement * 100:6.2f}%"
        d = r.drop_pp
        print(f"{r.config:<18} {acc}  drop {d.points:+.2f} pp [{d.ci95[0]:+.2f}, {d.ci95[1]:+.2f}]"
              f"  b{r.latency_ms.batch} p50 {r.latency_ms.p50:.2f} ms  {r.throughput.images_per_s:.0f} img/s"
              + (f"  metric {r.metric:.6g}" if r.metric is not None else "")
              + ("  (simulated INT8)" if r.simulated else ""))
        if len(r.outputs) > 1:
            for o in r.outputs:
                print(f"{'':<18}   output {o.name!r}: SQNR {o.sqnr_db:.1f} dB  cosine {o.cosine:.5f}  "
                      f"max|err| {o.max_abs:.3g}  rel err {o.rel_error:.3g}")
    rec = doc.recommendation
    print(f"recommendation: {rec.config or 'none'} ({rec.reason})")
    print("\n".join(f"wrote {p}" for p in res.files.values()))
    return 0


def cmd_report(args) -> int:
    from trtquant.core.fileio import OutputSet
    from trtquant.reports.render import html_report, load_results, markdown

    doc = load_results(args.results)
    out = Path(args.out) if args.out else Path(args.results).parent
    _check_out_dir(out, _report_outputs(), args.force)
    kinds = _report_outputs()
    md, page = markdown(doc), html_report(doc)
    out.mkdir(exist_ok=True)
    with OutputSet(force=args.force) as outputs:
        for name in kinds:
            outputs.add(out / name, flag="--out", is_same_kind=kinds[name])
        outputs.stage(out / "report.md", md)
        outputs.stage(out / "report.html", page)
        for p in outputs.commit():
            print(f"wrote {p}")
    return 0


def cmd_sweep(args) -> int:
    from trtquant.core.cache import looks_like_trt_cache
    from trtquant.core.fileio import contains_marker, json_format, looks_like_onnx
    from trtquant.quant.settings import SweepSettings
    from trtquant.quant.sweep import sweep
    from trtquant.reports.sweep_render import sweep_target

    _require_input_file("--ranges", args.ranges)
    _require_backend("--validate-backend", args.validate_backend)
    recovery = _recovery(args)
    if recovery is not None and args.ranges:
        raise ConfigError("--recover recalibrates the recovered model", subject="--recover with --ranges",
                          hint="drop --ranges: the ranges are measured on the recovered model (CLE changes them)")
    out = args.out or f"sweep-{Path(args.onnx).stem if args.onnx else args.model}"
    _check_out_dir(out, {"plan.json": json_format("trtquant-plan/1"), "model_qdq.onnx": looks_like_onnx,
                         "calib.bin": looks_like_trt_cache, "sweep.json": contains_marker('"search": {'),
                         "sweep.md": contains_marker("# Mixed-precision sweep", start=True),
                         "sweep.html": contains_marker("<title>trtquant sweep</title>"),
                         **({"model.onnx": looks_like_onnx} if recovery is not None else {})}, args.force)
    settings = SweepSettings(target=args.target_drop, model=args.model, onnx=args.onnx, weights=args.weights,
                             preset=args.preset,
                             data=args.data, data_dir=args.data_dir, num_images=args.num_images,
                             calib_images=args.calib_images, method=args.method, ranges=args.ranges,
                             proxy_images=args.proxy_images, time_budget_s=args.time_budget, device=args.device,
                             validate_backend=args.validate_backend, trt_version=args.trt_version, seed=args.seed,
                             margin_pp=args.margin, metric=args.metric, objective=args.objective,
                             target_gpu=args.target_gpu, latency_batch=args.latency_batch,
                             latency_model=args.latency_model, compile=args.compile)
    doc = sweep(settings, out, progress=not args.no_progress, recovery=recovery)
    if not _is_root():
        return 0                            # under torchrun rank 0 prints the summary
    s, v, fmt = doc.search, doc.validation, sweep_target(doc).format
    print(f"target  {doc.target.text}: {doc.target.meaning}")
    for n in doc.notes:
        print(f"note    {n}")
    fp32 = fmt(doc.fp32_metric) if doc.fp32_metric is not None else "exact"
    print(f"result  {'met' if s.met else 'NOT met'}{' (partial)' if s.partial else ''}: "
          f"{len(s.fp16_layers)}/{doc.layers} layers FP16, {s.evaluations} full-model evaluations, "
          f"simulated {doc.metric} {fmt(s.simulated_metric)} (FP32 {fp32})")
    if doc.latency is not None:
        lat = doc.latency
        print(f"latency estimated ({lat.kind}, {lat.gpu}, batch {lat.batch}; plan totals not measured): plan {lat.plan_ms:.4f} ms, "
              f"all INT8 {lat.all_int8_ms:.4f} ms, all FP16 {lat.all_fp16_ms:.4f} ms; objective {doc.objective}")
    if v.status == "ok":
        print(f"check   {v.backend}: {fmt(v.metric)} -> {'meets' if v.meets_target else 'MISSES'} the target")
    else:
        print(f"check   {v.backend} failed: {v.reason}")
    for c in doc.trtexec:
        print(f"trtexec {c}")
    print(f"wrote   {out}/plan.json, model_qdq.onnx, calib.bin, sweep.json, sweep.md, sweep.html"
          + (", model.onnx (the recovered model: build from it)" if recovery is not None else "") + " "
          f"({doc.timings['total_s']:.1f} s)")
    return 0


def cmd_debug(args) -> int:
    from trtquant.quant.debug import debug, debug_outputs
    from trtquant.quant.settings import DebugSettings
    from trtquant.reports.debug_render import fmt_db

    _require_input_file("--ranges", args.ranges)
    _check_precision(args.precision)
    if args.ranges:
        for flag in sorted({"method", "calib_images"} & _explicit_flags(args)):
            raise ConfigError(f"--{flag.replace('_', '-')} has no effect with --ranges",
                              subject=f"--{flag.replace('_', '-')} with --ranges {args.ranges}",
                              hint="it applies when debug calibrates; drop it or drop --ranges")
    out = args.out or f"debug-{Path(args.onnx).stem if args.onnx else args.model}"
    _check_out_dir(out, debug_outputs(), args.force)
    settings = DebugSettings(precision=args.precision, model=args.model, onnx=args.onnx, weights=args.weights,
                             preset=args.preset, data=args.data, data_dir=args.data_dir, num_images=args.num_images,
                             seed=args.seed, ranges=args.ranges, method=args.method, calib_images=args.calib_images,
                             batch_size=args.batch_size, device=args.device, worst=args.worst, jump_db=args.jump_db)
    doc = debug(settings, out, progress=not args.no_progress)
    j, s = doc.first_jump, doc.suggestion
    print(f"debugged {doc.plan.name} on {doc.data.images} images ({doc.batches} batch(es) of {doc.batch_size}), "
          f"{len(doc.tensors)} tensors; {doc.calibration}")
    for n in doc.notes:
        print(f"note    {n}")
    if j is None:
        print(f"jump    none: no node adds error below {doc.jump_db:g} dB while dominating what it inherits")
    else:
        row = next(r for r in doc.tensors if r.tensor == j.tensor)
        print(f"jump    {j.node} ({row.op}): adds {fmt_db(j.added_sqnr_db)} dB (weight alone "
              f"{fmt_db(row.weight_sqnr_db) or 'n/a'}, activation alone {fmt_db(row.activation_sqnr_db) or 'n/a'}: "
              f"{j.cause}), inherits {fmt_db(j.inherited_sqnr_db)} dB, output {fmt_db(j.sqnr_db)} dB")
    print(f"worst   {', '.join(s.fp16_layers) or 'none'}")
    print(f"fp16    first output {fmt_db(s.output_sqnr_db)} dB -> {fmt_db(s.suggested_output_sqnr_db)} dB SQNR with "
          f"those {len(s.fp16_layers)} layer(s) FP16 (simulated)")
    if s.layer_precisions:
        print(f"trtexec --precisionConstraints=obey --layerPrecisions={s.layer_precisions}")
    print(f"wrote   {out}/debug.json, debug.html, plan.json ({doc.timings['total_s']:.1f} s)")
    return 0


def _is_root() -> bool:
    """Rank 0 of a torchrun launch, or a process on its own (the one that prints)."""
    from trtquant.quant.distributed import env_context

    return env_context().is_root


EXIT_CODES = "exit codes: 0 ok; 2 bad input or a failed step (one-line message on stderr); 1 an internal error (a bug)."


def _model_flags(g, what: str) -> None:
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{what}: mobilenet_v2 | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2 | any torchvision architecture with --weights")
    g.add_argument("--weights", default=None, type=PATH, help="state_dict file for a torchvision --model")
    g.add_argument("--onnx", default=None, type=PATH, help="use this ONNX model instead of --model")
    g.add_argument("--preset", default=None, help="preprocessing preset (imagenet | inception | grayscale); default: "
                                                  "the model's (its crop follows a static square model input)")


def _recover_flags(p, *, steps: bool, writes: str = "") -> None:
    """The accuracy-recovery flags (quant/recover.py; None leaves RecoverySettings' default, which the help
    states: a test checks they agree)."""
    g = p.add_argument_group("accuracy recovery (changes the weights: a new model with the same tensor names)")
    if steps:
        g.add_argument("--recover", default=None, metavar="STEPS",
                       help="steps joined by '+' from cle, adaround, bias, ranges, applied in the order cle -> "
                            "adaround -> bias -> ranges: cross-layer equalization (exact through ReLU), AdaRound "
                            "(learned rounding of each INT8 layer's weights) and empirical bias correction, layer by "
                            "layer on the calibration images, then every activation range learned end to end against "
                            "FP32 (kept if held-out images agree)" + (f"; {writes}" if writes else ""))
    g.add_argument("--recover-images", type=COUNT, default=None,
                   help="calibration images the recovery steps read, the first ones (default: 128 for adaround "
                        "and bias, 256 for ranges)")
    g.add_argument("--adaround-iters", type=COUNT, default=None,
                   help="AdaRound optimisation steps per layer, on every device (default: 200)")
    g.add_argument("--range-steps", type=COUNT, default=None,
                   help="Adam steps of the learned ranges (default: 100)")
    g.add_argument("--cle-replace-relu6", action="store_true",
                   help="let CLE scale through ReLU6 by replacing it with ReLU in the written model (ReLU6 is not "
                        "scale-equivariant; a warning says how many were replaced)")


def _data_flags(g, *, num_help: str) -> None:
    g.add_argument("--data", default=DEFAULT_DATA, type=PATH,
                   help="imagenet_sample | imagenet_val | an image directory | a .h5/.hdf5/.npy/.npz file")
    g.add_argument("--data-dir", default=None, type=PATH,
                   help="ImageNet validation directory; only with --data imagenet_val (or set IMAGENET_VAL_DIR)")
    g.add_argument("--num-images", type=COUNT, default=None, help=num_help)


def build_parser() -> argparse.ArgumentParser:
    from trtquant.calibrators.auto import METHODS, Auto

    p = argparse.ArgumentParser(prog="cli.py", description="Quantization and calibration workbench for TensorRT.",
                                epilog=EXIT_CODES, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-vv for debug); also prints the traceback of an internal error")
    p.add_argument("--debug", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("calibrate", help="run calibration and write a TensorRT calibration cache + ranges JSON",
                       description="Run the statistics pass over calibration images and write a TensorRT calibration "
                                   "cache, its lossless ranges JSON and optionally the statistics (to recompute any "
                                   "method later with --from-stats). All outputs are checked before any work starts "
                                   "and written together at the end.",
                       epilog=EXIT_CODES, formatter_class=HelpFormatter)
    m = c.add_argument_group("model")
    _model_flags(m, "the model to calibrate")
    m.add_argument("--onnx-out", default=None, type=PATH,
                   help="also save the exact ONNX graph the cache is keyed to (with --recover steps that change "
                        "weights, cle/adaround/bias: the recovered model, required)")
    m.add_argument("--qdq-out", default=None, type=PATH,
                   help="also write the all-INT8 Q/DQ model (TensorRT 10/11 explicit quantization) of that graph")
    _recover_flags(c, steps=True,
                   writes="cle, adaround and bias need --onnx-out (the recovered model is written there)")
    d = c.add_argument_group("data")
    _data_flags(d, num_help="deterministic random subset size (default: all images, at most 1000)")
    d.add_argument("--seed", type=SEED, default=0, help="subset seed")
    d.add_argument("--batch-size", type=COUNT, default=32, help="images per batch of the statistics pass")
    d.add_argument("--workers", type=COUNT, default=None, help="decoding threads (default: min(16, CPUs))")
    d.add_argument("--decode", choices=("cpu", "gpu", "auto"), default="cpu",
                   help="where JPEGs are decoded and resized: cpu (Pillow, the reference pixels), gpu (nvJPEG + "
                        "Pillow's resampling on the GPU; other files still on the CPU), auto (gpu on a CUDA device)")
    d.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                   help="unreadable images: skip and count them, or stop with an error")
    d.add_argument("--layout", choices=("NHWC", "NCHW", "NHW", "HWC", "CHW"), default=None,
                   help="layout of a uint8 array whose layout is ambiguous (e.g. 3-D: NHW greyscale images, or "
                        "one HWC colour image)")
    d.add_argument("--h5-images", default="images", help="HDF5 dataset holding the images")
    d.add_argument("--h5-labels", default="labels", help="HDF5 dataset holding the labels")
    a = c.add_argument_group("algorithm")
    a.add_argument("--method", default="entropy", help=f"{' | '.join(METHODS)} (auto: per tensor, the candidate "
                   "range that quantizes the layers it feeds best, measured on --auto-images images)")
    a.add_argument("--auto-images", type=COUNT, default=Auto.images, help="for --method auto: calibration images of its "
                                                                 "layer-error pass")
    a.add_argument("--percentile", type=PERCENTILE, default=99.99, help="for --method percentile, in (0, 100]")
    a.add_argument("--num-bins", type=COUNT, default=2048, help="histogram bins (>= 256)")
    a.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a.add_argument("--executor", default="auto", help="auto | torch | onnxruntime (auto: torch unless ops are missing)")
    a.add_argument("--calibrator", default="ours", choices=("ours", "tensorrt"),
                   help="ours: our statistics pass + range algorithm (no TensorRT needed); tensorrt: TensorRT <= 10 "
                        "calibrates with its IInt8 calibrator fed by our data pipeline (entropy/minmax)")
    a.add_argument("--from-stats", default=None, type=PATH,
                   help="recompute ranges from a saved statistics file (no model or data run: --data, --num-images, "
                        "--num-bins, --onnx-out and the like are refused with it; --method auto runs the model on the "
                        "data: pass the statistics' model and data)")
    o = c.add_argument_group("outputs")
    o.add_argument("--cache", required=True, type=PATH, help="TensorRT calibration cache to write (required)")
    o.add_argument("--ranges", default=None, type=PATH, help="ranges JSON to write (default: CACHE.ranges.json)")
    o.add_argument("--stats", default=None, type=PATH, help="also save the statistics (.npz) for --from-stats")
    o.add_argument("--trt-version", default=None, type=_trt_version,
                   help="TensorRT version for the cache header, e.g. 8.6.1 or 10.3.0 (default: the installed one, "
                        "else 8.6.1)")
    o.add_argument("--cache-algorithm", default=None,
                   help="override the cache header algorithm (EntropyCalibration2 | MinMaxCalibration | ...)")
    o.add_argument("--force", action="store_true", help="overwrite output files of another kind")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_calibrate)

    b = sub.add_parser("build", help="build an engine for a precision configuration and write TensorRT artifacts",
                       description="Build an engine (ONNX Runtime, torch or TensorRT) for a precision or plan, check "
                                   "it on the bundled images and write plan.json, model_qdq.onnx, engine.json and the "
                                   "trtexec commands into --out.",
                       epilog=EXIT_CODES, formatter_class=HelpFormatter)
    b.add_argument("--precision", default="int8", help="fp32 | fp16 | int8 | PLAN.json")
    b.add_argument("--backend", default="onnxruntime", choices=BACKENDS, help="engine backend")
    b.add_argument("--ranges", default=None, type=PATH, help="ranges JSON, TensorRT cache or Q/DQ ONNX (needed for INT8)")
    b.add_argument("--out", required=True, type=PATH, help="output directory, created (required)")
    _model_flags(b, "the model to build")
    b.add_argument("--device", default="auto", help="torch backend only: auto | cpu | cuda")
    b.add_argument("--torch-precision", default=None, help="torch backend only: fp32 | tf32 | fp16 | bf16")
    b.add_argument("--trt-mode", default="explicit", choices=("explicit", "implicit"),
                   help="tensorrt backend only: explicit Q/DQ (TensorRT 8-11) or implicit cache + layer precisions (<= 10)")
    b.add_argument("--no-smoke", action="store_true", help="skip the check on the bundled images")
    b.add_argument("--force", action="store_true", help="overwrite files of another kind in --out")
    b.set_defaults(func=cmd_build)

    k = sub.add_parser("cache", help="show, diff or convert calibration caches / ranges / Q/DQ models",
                       description="show FILE...: list every tensor's scale and amax.\n"
                                   "diff A B: compare two files (caches, ranges JSON or Q/DQ ONNX) tensor by tensor; "
                                   "headers are compared too.\n"
                                   "convert FILE --out OUT: write FILE's ranges as a cache, a ranges JSON (.json) or a "
                                   "Q/DQ ONNX model (.onnx).",
                       epilog="exit codes: 0 ok (diff: identical); 1 diff found differences; 2 bad input.",
                       formatter_class=HelpFormatter)
    k.add_argument("action", choices=("show", "diff", "convert"), help="what to do")
    k.add_argument("files", nargs="+", metavar="FILE", help="one or more files (show), two (diff), one (convert)")
    k.add_argument("--out", default=None, type=PATH, help="convert: output file (.json ranges, .onnx Q/DQ, else cache)")
    k.add_argument("--to", default=None, choices=("cache", "ranges", "onnx"),
                   help="convert: output format (default: from --out's suffix)")
    k.add_argument("--trt-version", default=None, type=_trt_version,
                   help="convert to cache: rewrite the header's TensorRT version")
    k.add_argument("--algorithm", default=None, help="convert to cache: rewrite the header's algorithm")
    k.add_argument("--rel-tol", type=NONNEG, default=1e-6, help="diff: relative amax tolerance (>= 0)")
    k.add_argument("--model", default=DEFAULT_MODEL, help="convert to onnx: the model the ranges belong to")
    k.add_argument("--onnx", default=None, type=PATH, help="convert to onnx: the ONNX model the ranges belong to")
    k.add_argument("--force", action="store_true", help="convert: overwrite an --out file of another kind")
    k.set_defaults(func=cmd_cache)

    li = sub.add_parser("lint", help="check a Q/DQ ONNX model against TensorRT's quantization rules (exit 1 on errors)",
                        description="Check a Q/DQ (explicitly quantized) ONNX model against TensorRT's quantization "
                                    "rules: zero points, scales, Q/DQ pairing, per-channel axes.",
                        epilog="exit codes: 0 no errors (warnings allowed); 1 errors found; 2 the model cannot be read.",
                        formatter_class=HelpFormatter)
    li.add_argument("model_path", metavar="MODEL.onnx", help="the Q/DQ ONNX model to check")
    li.set_defaults(func=cmd_lint)

    e = sub.add_parser("evaluate", help="build and measure every configuration; write results.json + reports",
                       description="Build every configuration, measure accuracy (top-1, or agreement with FP32 "
                                   "without ImageNet labels) and latency, and write results.json, report.md and "
                                   "report.html into --out. They are moved into place together at the end; progress "
                                   "is kept in OUT/results.partial.json for --resume.",
                       epilog=EXIT_CODES, formatter_class=HelpFormatter)
    e.add_argument("--configs", default="fp32,int8:entropy,int8:minmax,int8:percentile",
                   help=f"comma list of fp32, fp16, tf32, bf16, int8:{'|'.join(METHODS)}, PLAN.json; "
                        "int8:METHOD+STEPS is that INT8 model after accuracy recovery (e.g. int8:mse+bias, "
                        "int8:entropy+cle+adaround+bias; steps cle, adaround, bias, ranges)")
    e.add_argument("--backend", default="onnxruntime", choices=BACKENDS, help="engine backend")
    _model_flags(e, "the model to evaluate")
    _data_flags(e, num_help="evaluation images (default: all, at most 1000)")
    e.add_argument("--calib-images", type=COUNT, default=256, help="calibration subset (seeded) of the same data")
    e.add_argument("--seed", type=SEED, default=0, help="subset seed")
    e.add_argument("--batch-size", type=COUNT, default=64, help="evaluation and throughput batch size")
    e.add_argument("--latency-iters", type=COUNT, default=50, help="latency iterations, at batch 1 (or the model's fixed batch)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda (torch backend and calibration)")
    _compile_flag(e, "the torch backend's engines")
    e.add_argument("--target-drop", default="0.5%", type=_target,
                   help="the recommendation's accuracy target: " + TARGET_FORMS.replace("%", "%%"))
    e.add_argument("--metric", default=None, metavar="MODULE:FUNCTION",
                   help="your metric, also reported per configuration: FUNCTION(fp32_outputs, outputs, labels) -> "
                        "float, higher is better (tuples of every output over all images; labels or None); "
                        "MODULE is importable or a FILE.py")
    e.add_argument("--out", required=True, type=PATH, help="output directory, created (required)")
    _recover_flags(e, steps=False)
    e.add_argument("--resume", action="store_true",
                   help="keep configurations already measured with the same settings (OUT/results.partial.json or "
                        "OUT/results.json)")
    e.add_argument("--force", action="store_true", help="overwrite files of another kind in --out")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="re-render report.md/report.html from a results.json",
                       description="Re-render report.md and report.html from a results.json written by evaluate.",
                       epilog=EXIT_CODES, formatter_class=HelpFormatter)
    r.add_argument("results", metavar="RESULTS.json", help="results.json written by evaluate")
    r.add_argument("--out", default=None, type=PATH,
                   help="directory for the reports, created (default: next to RESULTS.json)")
    r.add_argument("--force", action="store_true", help="overwrite files of another kind in --out")
    r.set_defaults(func=cmd_report)

    w = sub.add_parser("sweep", help="mixed-precision planner: the fewest FP16 layers that meet an accuracy target",
                       description="Rank layers by sensitivity, search for the fewest FP16 layers that meet the "
                                   "target, validate the plan on a real backend and write plan.json, model_qdq.onnx, "
                                   "calib.bin and sweep.json/.md/.html into --out.",
                       epilog=EXIT_CODES, formatter_class=HelpFormatter)
    w.add_argument("--target-drop", default="0.5%", type=_target,
                   help="the plan's accuracy target: " + TARGET_FORMS.replace("%", "%%"))
    _model_flags(w, "the model to plan")
    _data_flags(w, num_help="evaluation images (default: all, at most 1000)")
    w.add_argument("--calib-images", type=COUNT, default=256, help="calibration subset (seeded) of the same data")
    w.add_argument("--method", default="entropy", help=f"range method when calibrating here: {' | '.join(METHODS)}")
    w.add_argument("--ranges", default=None, type=PATH,
                   help="use these ranges (JSON, cache or Q/DQ ONNX) instead of calibrating")
    w.add_argument("--proxy-images", type=COUNT, default=64, help="images for the sensitivity ranking")
    w.add_argument("--time-budget", type=SECONDS, default=None, help="seconds (> 0); returns the best plan found so far")
    w.add_argument("--metric", default=None, metavar="MODULE:FUNCTION",
                   help="search on your metric instead of top-1: FUNCTION(fp32_outputs, outputs, labels) -> float, "
                        "higher is better; --target-drop is then a drop of it (0.5%% = 0.005 absolute; rel:1%%)")
    w.add_argument("--margin", type=PP, default=0.0, help="pp the simulated plan must beat the target by (e.g. 0.2%%): "
                                                          "room for the real engine's rounding differences")
    w.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=OBJECTIVES,
                   help="among the plans that meet the target: latency = the fastest by the roofline estimate of "
                        "--target-gpu (default), layers = the fewest FP16 layers")
    w.add_argument("--target-gpu", default=DEFAULT_TARGET_GPU, metavar="GPU",
                   help="the GPU whose latency is estimated: auto (the local CUDA GPU, else h100-sxm), h200, h100-sxm, "
                        "h100-pcie, a100, l40s, l4, a10, t4, rtx4090, orin")
    w.add_argument("--latency-batch", type=COUNT, default=DEFAULT_LATENCY_BATCH,
                   help="batch size of the latency estimate")
    w.add_argument("--latency-model", default=DEFAULT_LATENCY_MODEL, choices=LATENCY_MODELS,
                   help="tensorrt: TensorRT's per-layer times of an all-INT8 and an all-FP16 engine (needs TensorRT "
                        "and a CUDA GPU); roofline: the estimate for --target-gpu; auto: tensorrt where it can run")
    w.add_argument("--device", default="auto", help="auto | cpu | cuda")
    _compile_flag(w, "the quantization simulator (one compiled graph for every plan) and a torch --validate-backend")
    w.add_argument("--validate-backend", default="onnxruntime", choices=BACKENDS,
                   help="backend that measures the chosen plan")
    w.add_argument("--trt-version", default=None, type=_trt_version,
                   help="TensorRT version for the calib.bin header (default: the installed one, else 8.6.1)")
    w.add_argument("--seed", type=SEED, default=0, help="subset seed")
    w.add_argument("--out", default=None, type=PATH, help="output directory (default: ./sweep-MODEL)")
    _recover_flags(w, steps=True, writes="the recovered model is written to OUT/model.onnx")
    w.add_argument("--force", action="store_true", help="overwrite files of another kind in --out")
    w.add_argument("--no-progress", action="store_true", help="no progress bars")
    w.set_defaults(func=cmd_sweep)

    g = sub.add_parser("debug", help="divergence debugger: where each tensor of the INT8/mixed model leaves FP32",
                       description="Run FP32 and the quantized model (simulated with the shipped quantizers) side by "
                                   "side and report, for every tensor in graph order, SQNR and cosine to FP32, the "
                                   "error the node adds by itself vs inherits, split into weight and activation "
                                   "quantization; name the first node where the error jumps; write debug.json, "
                                   "debug.html and plan.json (the worst layers kept FP16) into --out.",
                       epilog=EXIT_CODES, formatter_class=HelpFormatter)
    g.add_argument("--precision", "--plan", dest="precision", default="int8",
                   help="the model to debug: int8 | PLAN.json (FP16 layers simulated in FP32)")
    _model_flags(g, "the model to debug")
    _data_flags(g, num_help="images analysed (default: 64, two batches of 32)")
    g.add_argument("--batch-size", type=COUNT, default=32, help="images per batch (memory: about twice the widest "
                                                                "cut of the graph for one batch)")
    g.add_argument("--ranges", default=None, type=PATH,
                   help="use these ranges (JSON, cache or Q/DQ ONNX) instead of calibrating")
    g.add_argument("--method", default="entropy", help="range method when calibrating here")
    g.add_argument("--calib-images", type=COUNT, default=256, help="calibration subset (seeded) of the same data")
    g.add_argument("--worst", type=COUNT, default=3, help="layers the suggested plan keeps in FP16")
    g.add_argument("--jump-db", type=_typed("a number (dB)", float), default=20.0,
                   help="a node jumps when the SQNR it adds alone is below this (and below what it inherits)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda")
    g.add_argument("--seed", type=SEED, default=0, help="subset seed")
    g.add_argument("--out", default=None, type=PATH, help="output directory (default: ./debug-MODEL)")
    g.add_argument("--force", action="store_true", help="overwrite files of another kind in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(func=cmd_debug)
    return p


def _os_error(err: OSError) -> QuantError:
    path = err.filename or ""
    what = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.ENOTDIR: "not a directory", errno.EISDIR: "is a directory", errno.ENOENT: "no such file or directory",
            errno.EDQUOT: "disk quota exceeded"}.get(err.errno, err.strerror or type(err).__name__)
    hint = "earlier outputs were left untouched where the command plans its outputs; free space or choose another path"
    env = os.environ.get("TRTQUANT_CACHE_DIR")
    if env and path and os.path.abspath(path).startswith(os.path.abspath(env)):
        hint = "$TRTQUANT_CACHE_DIR must name a writable directory"
    return QuantError(f"file system error: {what}", subject=str(path) or None,
                      got=f"[Errno {err.errno}] {err.strerror}" if err.errno else str(err), hint=hint)


def _save_traceback() -> str | None:
    try:
        fd, path = tempfile.mkstemp(prefix="trtquant-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("argv: " + " ".join(sys.argv) + "\n")
            traceback.print_exc(file=f)
        return path
    except OSError:
        return None


def _quiet_rank() -> bool:
    """A rank other than 0 of a torchrun launch (its errors are rank 0's too: rank 0 prints them)."""
    try:
        return not _is_root()
    except QuantError:
        return False


def _leave_group() -> None:
    """Leave the process group of a torchrun launch, if evaluate/sweep joined one."""
    module = sys.modules.get("trtquant.quant.distributed")
    if module is not None:
        module.leave()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args._argv = argv
    verbose = args.verbose + (2 if args.debug else 0)
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except QuantError as err:
        if _quiet_rank():                   # every rank of a torchrun launch raises it: rank 0 says it
            return 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not _quiet_rank():
            print("error: interrupted; earlier outputs were left untouched", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {_os_error(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001  (the last line of defence: one line, not a traceback)
        saved = _save_traceback()
        print(f"error: internal error (a bug in trtquant, not your input): {type(err).__name__}: {str(err)[:300]}"
              + (f"; the full traceback was saved to {saved}" if saved else "")
              + ("" if verbose else "; run with --debug (or -v) to print it"), file=sys.stderr)
        if verbose:
            traceback.print_exc()
        return 1
    finally:
        _leave_group()


if __name__ == "__main__":
    sys.exit(main())
