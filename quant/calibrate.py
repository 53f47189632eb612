"""``calibrate()``: dataset -> statistics pass -> range algorithm -> TensorRT cache + ranges JSON.

The one orchestration function both the CLI and the tests call.
"""

from __future__ import annotations
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
import torch
from ..calibrators.auto import Auto
from ..calibrators.tensorrt import calibrate_onnx_with_tensorrt
from ..core.cache import (
    TrtCache,
    looks_like_ranges_json,
    looks_like_trt_cache,
    ranges_to_json,
    trt_version_int,
    write_ranges_json,
)
from ..core.errors import ConfigError, Interrupted
from ..core.fileio import OutputSet, looks_like_npz_stats
from ..core.runtime import resolve_device
from ..core.types import CalibrationStats, RangeSet
from ..datasets import open_source
from ..datasets.sources import open_capped
from .artifacts.plan import resolve_plan
from .artifacts.qdq import build_qdq_model
from .graph.inputs import check_model_input, check_preset_fits, data_inputs
from .graph.onnx_graph import OnnxGraph
from .recover import RecoveryReport, RecoverySettings, check_recovery_outputs, first_images, recover
from .settings import DEFAULT_MAX_IMAGES, CalibrationConfig
from .auto_method import AutoPass
from .statistics import cache_header, collect_stats, ranges_from_stats, statistics

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    ranges: RangeSet
    stats: CalibrationStats
    cache: TrtCache
    onnx_path: Path | None
    images: int
    skipped: tuple = ()
    timings: dict = field(default_factory=dict)
    device: str = "cpu"
    executor: str = ""
    recovery: RecoveryReport | None = None     # what --recover did (the model written to --onnx-out)


def calibrate(cfg: CalibrationConfig, *, cache_path: str | Path, ranges_path: str | Path | None = None,
              stats_path: str | Path | None = None, from_stats: str | Path | None = None,
              onnx_out: str | Path | None = None, qdq_out: str | Path | None = None, force: bool = False,
              progress: bool = True, recovery: RecoverySettings | None = None) -> CalibrationResult:
    """Calibrate and write the TensorRT cache, the ranges JSON and (optionally) the statistics, the ONNX graph
    the cache is keyed to (``onnx_out``) and its all-INT8 Q/DQ model (``qdq_out``).

    With ``recovery`` steps (:mod:`.recover`) that change weights, the recovered model is written to
    ``onnx_out`` (required; learned ranges alone leave the model as it is), calibrated again (its statistics,
    ranges and cache are the ones written) and the steps are recorded in the ranges JSON (``meta.recovery``).

    Every output path is validated before any work starts; every file is written atomically at the
    end, so an error or Ctrl-C leaves earlier outputs untouched.
    """
    t0 = time.perf_counter()
    recovering = recovery is not None and bool(recovery.steps)
    if recovering:
        check_recovery_outputs(onnx_out, steps=recovery.steps, from_stats=from_stats, calibrator=cfg.calibrator)
    outputs = OutputSet(force=force)
    cache_path = outputs.add(cache_path, flag="--cache", is_same_kind=looks_like_trt_cache)
    ranges_path = Path(ranges_path) if ranges_path else cache_path.with_name(cache_path.name + ".ranges.json")
    outputs.add(ranges_path, flag="--ranges", is_same_kind=looks_like_ranges_json)
    if stats_path is not None:
        stats_path = outputs.add(stats_path, flag="--stats", is_same_kind=looks_like_npz_stats)
    if onnx_out is not None:
        onnx_out = outputs.add(onnx_out, flag="--onnx-out", is_same_kind=lambda p: p.suffix == ".onnx")
    if qdq_out is not None:
        qdq_out = outputs.add(qdq_out, flag="--qdq-out", is_same_kind=lambda p: p.suffix == ".onnx")
    if from_stats is not None:
        ignored = cfg.data_settings_changed() + (["--onnx-out"] if onnx_out is not None else []) \
            + (["--qdq-out"] if qdq_out is not None else []) \
            + (["--calibrator tensorrt"] if cfg.calibrator != "ours" else [])
        ignored = [f for f in ignored if f != "--model" or cfg.onnx is None]
        if cfg.method == Auto.name:          # auto runs the model on the data: only the statistics' flags are moot
            ignored = [f for f in ignored if f in ("--num-bins", "--executor", "--calibrator tensorrt")]
        if ignored:
            raise ConfigError("flags that have no effect with --from-stats", subject=", ".join(ignored),
                              got="--from-stats recomputes ranges without running the model or reading data",
                              hint="drop them (to check the statistics belong to a model, pass --onnx MODEL.onnx)")
    if qdq_out is not None and cfg.calibrator != "ours":
        raise ConfigError("--qdq-out needs our calibrator", subject="--qdq-out with --calibrator tensorrt",
                          hint="TensorRT's calibrator writes only its cache: convert it with `cache convert CACHE "
                               "--out model_qdq.onnx`")
    if cfg.trt_version:
        trt_version_int(cfg.trt_version)
    timings = {}
    skipped: tuple = ()
    onnx_path = auto_pass = None
    executor_kind = "stats-file"
    device = torch.device("cpu")
    report = rec = None
    graph = None
    try:
        if from_stats is not None:
            stats = CalibrationStats.load(from_stats)
            if cfg.onnx is not None:
                fp = OnnxGraph.load(cfg.onnx).fingerprint()
                if fp != stats.model_fingerprint:
                    raise ConfigError("statistics are from another model", subject=f"--from-stats {from_stats}",
                                      got=f"model fingerprint {stats.model_fingerprint[:12]}", expected=fp[:12],
                                      hint="re-run calibrate on this model")
            images = stats.num_images
            if cfg.method == Auto.name:      # the auto pass runs the statistics' model on the calibration images
                cfg, rm, source, device = _model_and_source(cfg)
                onnx_path = rm.onnx_path
                if rm.graph.fingerprint() != stats.model_fingerprint:
                    raise ConfigError("statistics are from another model", subject=f"--from-stats {from_stats}",
                                      got=f"model fingerprint {stats.model_fingerprint[:12]}"
                                          + (f" ({stats.meta['model']})" if stats.meta.get("model") else ""),
                                      expected=f"{rm.graph.fingerprint()[:12]} ({rm.name})",
                                      hint="--method auto runs the model: pass the one the statistics were collected "
                                           "on (--onnx MODEL.onnx or --model NAME) and its calibration data")
                if source.fingerprint() != stats.data_fingerprint:
                    log.warning("--from-stats %s: the statistics were collected on other images than %s; the auto "
                                "pass measures the candidates on the latter", from_stats, source.name)
                auto_pass = AutoPass(rm.graph, source, device, cfg.batch_size, cfg.workers, progress)
        else:
            cfg, rm, source, device = _model_and_source(cfg)
            onnx_path = rm.onnx_path
            preprocess = source.preprocess
            timings["setup_s"] = time.perf_counter() - t0
            if cfg.calibrator == "tensorrt":
                return _calibrate_with_tensorrt(cfg, rm, source, cache_path, ranges_path, t0, timings)
            graph = rm.graph
            if recovering:          # a new model (same tensor names); the statistics below are the recovered one's
                t_rec = time.perf_counter()
                rec = recover(graph, recovery, ranges_of=lambda g: ranges_from_stats(
                                  statistics(g, source, cfg, device, progress=progress), cfg,
                                  auto_pass=AutoPass(g, source, device, cfg.batch_size, cfg.workers, progress)),
                              images=lambda: first_images(source, recovery.images_needed, graph.fixed_batch or cfg.batch_size),
                              device=device, progress=progress)
                graph, report = rec.graph, rec.report
                timings["recover_s"] = time.perf_counter() - t_rec
            t1 = time.perf_counter()
            need_hist = cfg.method != "minmax" or stats_path is not None
            hists, images, executor_kind, pass_timings = collect_stats(graph, source, cfg, device, progress=progress,
                                                         histograms=need_hist)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings["stats_pass_s"] = time.perf_counter() - t1
            timings.update(pass_timings)
            skipped = tuple(source.skipped)
            stats = CalibrationStats(histograms=hists, model_fingerprint=graph.fingerprint(),
                                     data_fingerprint=source.fingerprint(), num_images=images, num_bins=cfg.num_bins,
                                     meta={"model": rm.name, "data": source.name, "preset": rm.preset,
                                           "preprocess": preprocess.as_dict(), "device": str(device),
                                           "histograms": need_hist,
                                           "skipped": [list(s) for s in skipped]})
            auto_pass = AutoPass(graph, source, device, cfg.batch_size, cfg.workers, progress)
        t2 = time.perf_counter()
        if rec is not None:       # the ranges the layer-wise steps learned against, else the recovered model's
            ranges = rec.shipped_ranges(lambda g: ranges_from_stats(stats, cfg, auto_pass=auto_pass))
        else:
            ranges = ranges_from_stats(stats, cfg, auto_pass=auto_pass)
        timings["ranges_s"] = time.perf_counter() - t2
        version, algorithm = cache_header(cfg)
        cache = TrtCache.from_ranges(ranges, algorithm=algorithm, version=version)
        # all outputs at the end, staged and moved into place together (an error or Ctrl-C leaves the earlier set)
        with outputs:
            outputs.stage(cache_path, cache.to_text())
            outputs.stage(ranges_path, ranges_to_json(ranges))
            if stats_path is not None:
                outputs.stage(stats_path, stats.to_bytes())
            if onnx_out is not None and report is not None:
                outputs.stage(onnx_out, graph.model.SerializeToString())       # the recovered model
            elif onnx_out is not None and onnx_path is not None:
                outputs.stage_copy(onnx_out, onnx_path)
            if qdq_out is not None:
                qdq, _ = build_qdq_model(graph, ranges, resolve_plan("int8", graph))
                outputs.stage(qdq_out, qdq.SerializeToString())
            outputs.commit()
    except KeyboardInterrupt:
        raise Interrupted("calibration interrupted", subject=str(cache_path),
                          hint="nothing was written; run the command again") from None
    timings["total_s"] = time.perf_counter() - t0
    return CalibrationResult(ranges=ranges, stats=stats, cache=cache, onnx_path=onnx_path, images=images,
                             skipped=skipped, timings=timings, device=str(device), executor=executor_kind,
                             recovery=report)


def _model_and_source(cfg: CalibrationConfig):
    """``(cfg with the batch the model takes, the resolved model, its calibration source, device)``, all
    checked before any image is read."""
    device = resolve_device(cfg.device)
    rm = cfg.resolve()
    cfg = replace(cfg, batch_size=check_model_input(rm.graph, batch_size=cfg.batch_size))
    preprocess = rm.preprocess()
    extra = dict(h5_images=cfg.h5_images, h5_labels=cfg.h5_labels, on_bad_image=cfg.on_bad_image,
                 layout=cfg.layout, inputs=data_inputs(rm.graph))
    if cfg.num_images is None:
        source = open_capped(cfg.data, preprocess=preprocess, limit=DEFAULT_MAX_IMAGES, seed=cfg.seed,
                             data_dir=cfg.data_dir, **extra)
    else:
        source = open_source(cfg.data, preprocess=preprocess, data_dir=cfg.data_dir, num_images=cfg.num_images,
                             seed=cfg.seed, **extra)
    check_preset_fits(rm.graph, rm.preset, source)
    return cfg, rm, source, device


def _calibrate_with_tensorrt(cfg, rm, source, cache_path, ranges_path, t0, timings) -> CalibrationResult:
    """TensorRT's own IInt8 calibrator on our data pipeline; its cache is parsed and re-written atomically."""

    shapes = {gi.name: tuple(int(d) for d in gi.shape[1:]) for gi in rm.graph.inputs}
    shape = shapes if len(shapes) > 1 else next(iter(shapes.values()))
    batches = (b.images for b in source.batches(cfg.batch_size, workers=cfg.workers))
    t1 = time.perf_counter()
    cache = calibrate_onnx_with_tensorrt(rm.onnx_path, batches, method=cfg.method, batch_size=cfg.batch_size,
                                         input_shape=shape, cache_path=cache_path)
    timings["stats_pass_s"] = time.perf_counter() - t1
    ranges = RangeSet(ranges=cache.ranges(),
                      method=f"tensorrt-{cache.algorithm}", model_fingerprint=rm.graph.fingerprint(),
                      data_fingerprint=source.fingerprint(), num_images=len(source))
    write_ranges_json(ranges_path, ranges)
    timings["total_s"] = time.perf_counter() - t0
    stats = CalibrationStats(histograms={}, model_fingerprint=ranges.model_fingerprint,
                             data_fingerprint=ranges.data_fingerprint, num_images=len(source), num_bins=0)
    return CalibrationResult(ranges=ranges, stats=stats, cache=cache, onnx_path=rm.onnx_path, images=len(source),
                             skipped=tuple(source.skipped), timings=timings, device="cuda", executor="tensorrt")
