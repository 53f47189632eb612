"""``calibrate()``: dataset -> statistics pass -> range algorithm -> TensorRT cache + ranges JSON.

The one orchestration function both the CLI and the tests call.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..calibrators.auto import Auto, make_method
from ..calibrators.collector import HistogramCollector, collect_batch
from ..core.runtime import installed_trt_version, resolve_device
from ..core.cache import (DEFAULT_TRT_VERSION, TRT_ALGORITHMS, ZERO_TENSOR_AMAX, TrtCache, 
                    looks_like_ranges_json, looks_like_trt_cache, ranges_to_json, trt_version_int, write_ranges_json)
from ..core.errors import ConfigError, DataError, Interrupted, ModelError
from ..core.fileio import OutputSet, looks_like_npz_stats
from .graph import EXECUTORS, OnnxGraph, make_executor
from ..core.types import CalibrationStats, RangeSet, TensorRange
from ..datasets import PRESETS, open_source
from .models import DataSpec, ModelSpec
from .auto_method import AutoPass, choose_ranges
from ..calibrators.tensorrt import calibrate_onnx_with_tensorrt

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 1000
"""Without --num-images, calibrate on all images up to this many (a seeded random subset beyond)."""



@dataclass(frozen=True)
class CalibrationConfig(ModelSpec, DataSpec):
    """Every calibration setting, with its default, in one place (model and data: the shared specs)."""

    batch_size: int = 32
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    executor: str = "auto"               # auto | torch | onnxruntime
    method: str = "entropy"
    percentile: float = 99.99
    num_bins: int = 2048
    workers: int | None = None
    on_bad_image: str = "skip"
    trt_version: str | None = None       # None: the installed TensorRT's, else DEFAULT_TRT_VERSION
    cache_algorithm: str | None = None   # None: the method's (EntropyCalibration2 / MinMaxCalibration)
    h5_images: str = "images"
    h5_labels: str = "labels"
    calibrator: str = "ours"             # ours | tensorrt (TensorRT <= 10 runs its own IInt8 calibrator)
    layout: str | None = None            # uint8 array layout when ambiguous (NHWC | NCHW | NHW | HWC)
    auto_images: int = Auto.images       # --method auto: calibration images of its layer-error pass

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError("invalid batch size", subject="--batch-size", got=str(self.batch_size), expected=">= 1")
        if self.num_images is not None and self.num_images < 1:
            raise ConfigError("invalid image count", subject="--num-images", got=str(self.num_images), expected=">= 1")
        if self.num_bins < 256:
            raise ConfigError("too few histogram bins", subject="--num-bins", got=str(self.num_bins),
                              expected=">= 256 (TensorRT's entropy search needs more than 128 bins; 2048 is standard)")
        if self.executor not in EXECUTORS:
            raise ConfigError("unknown executor", subject="--executor", got=repr(self.executor),
                              expected=" or ".join(EXECUTORS))
        if self.cache_algorithm is not None and self.cache_algorithm not in TRT_ALGORITHMS:
            raise ConfigError("unknown cache algorithm", subject="--cache-algorithm", got=repr(self.cache_algorithm),
                              expected="one of " + ", ".join(TRT_ALGORITHMS))
        if self.trt_version is not None:
            trt_version_int(self.trt_version)
        if self.calibrator not in ("ours", "tensorrt"):
            raise ConfigError("unknown calibrator", subject="--calibrator", got=repr(self.calibrator),
                              expected="ours or tensorrt")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("invalid worker count", subject="--workers", got=str(self.workers), expected=">= 1")
        if not (0 < self.percentile <= 100):
            raise ConfigError("invalid percentile", subject="--percentile", got=str(self.percentile),
                              expected="0 < P <= 100")
        self.algorithm()  # validates --method and its settings

    def data_settings_changed(self) -> list[str]:
        """The model/data flags set away from their defaults (they have no effect with --from-stats)."""
        default = CalibrationConfig()
        names = ("model", "weights", "preset", "data", "data_dir", "num_images", "seed", "batch_size", "device",
                 "executor", "num_bins", "workers", "on_bad_image", "h5_images", "h5_labels", "layout")
        return ["--" + n.replace("_", "-") for n in names if getattr(self, n) != getattr(default, n)]

    def algorithm(self):
        settings = {"percentile": self.percentile} if self.method == "percentile" else \
            {"images": self.auto_images} if self.method == Auto.name else {}
        return make_method(self.method, **settings)


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


def open_capped(spec: str, *, preprocess, limit: int | None, seed: int, data_dir: str | None = None, **kw):
    """All images of ``spec``, or a seeded subset of ``limit`` when there are more (no warning for small sets)."""

    src = open_source(spec, preprocess=preprocess, data_dir=data_dir, seed=seed, **kw)
    if limit is not None and len(src) > limit:
        log.info("%s holds %d images: using a seeded subset of %d", src.name, len(src), limit)
        src = open_source(spec, preprocess=preprocess, data_dir=data_dir, num_images=limit, seed=seed, **kw)
    return src


FLOAT_INPUT_TYPES = (1, 10, 11, 16)     # ONNX FLOAT, FLOAT16, DOUBLE, BFLOAT16
_ONNX_TYPE_NAMES = {2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 4: "uint16", 5: "int16"}


def check_model_input(graph: OnnxGraph, *, batch_size: int | None = None, flag: str = "--batch-size",
                      image=None) -> int | None:
    """Before any data is read: one input, a float dtype (we feed normalised float32), a shape the images can take.

    Returns the batch size to feed: ``batch_size``, or the model's fixed batch when its input fixes
    one (said once, as a warning, when that overrides ``flag``)."""
    if len(graph.inputs) != 1:
        raise ModelError("the model has more than one input", subject=str(graph.path or "model"),
                         got=", ".join(repr(i.name) for i in graph.inputs),
                         expected="a single image input (only single-input models are supported; images are fed "
                                  f"to the first input, {graph.inputs[0].name!r})")
    gi = graph.inputs[0]
    if gi.elem_type not in FLOAT_INPUT_TYPES:
        raise ModelError("the model input is not a float tensor", subject=f"model input {gi.name!r}",
                         got=_ONNX_TYPE_NAMES.get(gi.elem_type, f"ONNX type {gi.elem_type}"),
                         expected="float32 (the pipeline feeds normalised float32 images)",
                         hint="export the model without the integer pre-processing (e.g. a uint8 input plus Cast), "
                              "or calibrate the float graph after it")
    if image is not None:              # the Preprocess that will make the images: they must be the input
        dims = tuple(gi.shape)
        c, crop = image.channels, image.crop
        want = ("?", c, crop, crop)
        ok = len(dims) == 4 and all(not isinstance(d, int) or d in (0, w) for d, w in zip(dims[1:], want[1:]))
        if not ok:
            raise DataError("input shape mismatch", subject=f"model input {gi.name!r}", got=f"{dims}",
                            expected=f"(N, {c}, {crop}, {crop}): the images are preprocessed to {crop}x{crop} "
                                     f"{'RGB' if c == 3 else 'greyscale'} (NCHW)",
                            hint="use a model that takes NCHW images of the preprocessing crop (--preset grayscale "
                                 "for one channel)")
    fixed = graph.fixed_batch
    if batch_size is not None and fixed is not None and fixed != batch_size:
        log.warning("model input %r has a fixed batch of %d (shape %s): feeding batches of %d, not %s %d",
                    gi.name, fixed, tuple(gi.shape), fixed, flag, batch_size)
    return fixed if fixed is not None else batch_size


def check_preset_fits(graph: OnnxGraph, preset: str, source) -> None:
    """Before any data is read: images (not model-ready arrays) must come out of the preset with the
    model's channel count; the error names the preset that would (e.g. ``--preset grayscale``)."""
    if getattr(source, "model_ready", False):
        return
    gi = graph.inputs[0]
    dims = tuple(gi.shape)
    pre = source.preprocess
    if len(dims) == 4 and isinstance(dims[1], int) and dims[1] > 0 and dims[1] != pre.channels:
        fits = [n for n, p in PRESETS.items() if p.channels == dims[1]]
        raise DataError("the preprocessing preset cannot produce the model's input",
                        subject=f"model input {gi.name!r} of shape {dims}",
                        got=f"preset {preset!r}: {pre.channels}-channel images from {source.name}",
                        expected=f"{dims[1]}-channel images",
                        hint=(f"pass --preset {fits[0]}" if fits else
                              "feed a model-ready float array of the input's shape (.npy/.npz/.h5)"))


def _check_input_shape(graph: OnnxGraph, images: np.ndarray, source_name: str,
                       hint: str = "pick the model's preprocessing preset (--preset) or data of the right size") -> None:
    gi = graph.inputs[0]
    want = gi.shape
    got = images.shape
    ok = len(want) == len(got) and all(not isinstance(w, int) or w in (0, g) for w, g in zip(want[1:], got[1:]))
    if not ok:
        raise DataError("input shape mismatch", subject=f"model input {gi.name!r} vs data {source_name}",
                        got=f"batches of shape {tuple(got)}", expected=f"{tuple(want)}",
                        hint=hint)


def collect_stats(graph: OnnxGraph, source, cfg: CalibrationConfig, device: torch.device, *, progress: bool = True,
                  histograms: bool = True):
    """The statistics pass: one streaming pass over the data, histograms on ``device``.

    Returns ``(histograms, images, executor kind, {data_wait_s, model_and_stats_s})``.
    ``histograms=False`` records max |x| only (all minmax needs; no statistics file can be saved then).
    """
    executor = make_executor(graph, cfg.executor, device)
    names = graph.calibration_tensors
    collector = HistogramCollector(names, num_bins=cfg.num_bins, device=device, histograms=histograms)
    input_name = graph.inputs[0].name
    images = dropped = 0
    fixed = graph.fixed_batch
    checked = False
    staging = None              # one pinned host buffer, reused: pinning a fresh 150 MB batch costs ~0.1 s
    waits = {"data_wait_s": 0.0, "model_and_stats_s": 0.0}
    # uint8 pixels from the decoding threads; the float normalisation runs on the device (bit-identical
    # to the NumPy path, 4x less host->device traffic, and no float work under the GIL)
    batches = iter(source.batches(fixed or cfg.batch_size, workers=cfg.workers, progress=progress, pixels=True))
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        waits["data_wait_s"] += t1 - t0
        if batch is None:
            break
        if fixed is not None and len(batch.images) != fixed:     # the last, short batch of a fixed-batch model
            log.warning("%s: the last %d image(s) do not fill the model's fixed batch of %d: left out of the "
                        "statistics (TensorRT's calibrator takes full batches too)", source.name,
                        len(batch.images), fixed)
            dropped += len(batch.images)
            continue
        if not checked:
            _check_input_shape(graph, batch.images, source.name)
            if batch.images.dtype != np.uint8 and batch.images.size and float(np.abs(batch.images).max()) > 32:
                log.warning("%s: model-ready float images reach |x| = %.1f: they look like un-normalised 0..255 "
                            "pixels (preprocessed ImageNet images stay within about 3). Save uint8 pixels instead, "
                            "or normalise the array", source.name, float(np.abs(batch.images).max()))
            checked = True
        x = torch.from_numpy(batch.images)
        if device.type == "cuda":
            if staging is None or staging.numel() < x.numel():
                staging = torch.empty(x.numel(), dtype=x.dtype).pin_memory()
            pinned = staging[:x.numel()].view(x.shape)
            pinned.copy_(x)
            x = pinned.to(device, non_blocking=True)   # commit() below syncs before the buffer is reused
        if x.dtype == torch.uint8:
            x = source.preprocess.normalize_torch(x)
        collect_batch(collector, lambda observe, watch: executor.run({input_name: x}, observe=observe, watch=watch),
                      batch.ids)
        images += len(batch.images)
        waits["model_and_stats_s"] += time.perf_counter() - t1
    if images == 0 and dropped:
        raise DataError("too few images for the model's fixed batch", subject=source.name,
                        got=f"{dropped} image(s)", expected=f"at least {fixed} (the batch of model input "
                                                             f"{input_name!r})", hint="calibrate on more images")
    if images == 0:
        raise DataError("no images could be read", subject=source.name, hint="every image was skipped as unreadable")
    return collector.histograms(), images, executor.kind, waits


def statistics(graph: OnnxGraph, source, cfg: CalibrationConfig, device: torch.device, *,
               progress: bool = True) -> CalibrationStats:
    """One statistics pass over ``source``, packaged with the model and data fingerprints."""
    hists, images, _, _ = collect_stats(graph, source, cfg, device, progress=progress)
    return CalibrationStats(hists, graph.fingerprint(), source.fingerprint(), images, cfg.num_bins)


def ranges_from_stats(stats: CalibrationStats, cfg: CalibrationConfig, *, auto_pass: AutoPass | None = None) -> RangeSet:
    """The method's range for every tensor of ``stats``; ``--method auto`` also runs ``auto_pass`` (the model
    and its calibration images) to measure each candidate (:mod:`.auto_method`)."""
    algo = cfg.algorithm()
    ranges, zero, choices, settings = {}, [], {}, algo.settings()
    if isinstance(algo, Auto):
        if auto_pass is None:
            raise ConfigError("--method auto needs the model and calibration images", subject="--method auto",
                              hint="it runs the INT8 layers on a few calibration batches: give the model and data")
        choices, settings["images_used"] = choose_ranges(stats, algo, auto_pass)
        amaxes = [choices[n].method.amax if n in choices else 0.0 for n in stats.histograms]
    else:
        # NumPy releases the GIL in the vectorized searches: one thread per core over the tensors
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            amaxes = list(pool.map(algo.compute, stats.histograms.values()))
    for name, amax in zip(stats.histograms, amaxes):
        if amax <= 0:
            zero.append(name)
            amax = ZERO_TENSOR_AMAX
        ranges[name] = TensorRange(name, float(amax))
    if zero:
        log.warning("%d tensor(s) were zero on every calibration image; wrote placeholder amax=%g: %s",
                    len(zero), ZERO_TENSOR_AMAX, ", ".join(zero[:5]) + (" ..." if len(zero) > 5 else ""))
    return RangeSet(ranges=ranges, method=algo.name, settings=settings,
                    model_fingerprint=stats.model_fingerprint, data_fingerprint=stats.data_fingerprint,
                    num_images=stats.num_images, meta={"zero_tensors": zero, "num_bins": stats.num_bins,
                                                        **{k: v for k, v in stats.meta.items() if k in ("model", "data", "preset", "skipped")}},
                    methods=choices)


def _cache_header(cfg: CalibrationConfig) -> tuple[int, str]:
    algo = cfg.algorithm()
    installed = installed_trt_version()
    if cfg.trt_version:
        version = cfg.trt_version
        if installed and trt_version_int(installed) != trt_version_int(version):
            log.warning("--trt-version %s differs from the installed TensorRT %s: that TensorRT will ignore this cache",
                        version, installed)
    elif installed:
        version = installed
    else:
        version = DEFAULT_TRT_VERSION
        log.warning("TensorRT is not installed here: the cache header is for TensorRT %s (TRT-%d). TensorRT ignores "
                    "a cache written for another version: pass --trt-version to match yours", version,
                    trt_version_int(version))
    return trt_version_int(version), cfg.cache_algorithm or algo.trt_algorithm


def calibrate(cfg: CalibrationConfig, *, cache_path: str | Path, ranges_path: str | Path | None = None,
              stats_path: str | Path | None = None, from_stats: str | Path | None = None,
              onnx_out: str | Path | None = None, force: bool = False, progress: bool = True) -> CalibrationResult:
    """Calibrate and write the TensorRT cache, the ranges JSON and (optionally) the statistics.

    Every output path is validated before any work starts; every file is written atomically at the
    end, so an error or Ctrl-C leaves earlier outputs untouched.
    """
    t0 = time.perf_counter()
    outputs = OutputSet(force=force)
    cache_path = outputs.add(cache_path, flag="--cache", is_same_kind=looks_like_trt_cache)
    ranges_path = Path(ranges_path) if ranges_path else cache_path.with_name(cache_path.name + ".ranges.json")
    outputs.add(ranges_path, flag="--ranges", is_same_kind=looks_like_ranges_json)
    if stats_path is not None:
        stats_path = outputs.add(stats_path, flag="--stats", is_same_kind=looks_like_npz_stats)
    if onnx_out is not None:
        onnx_out = outputs.add(onnx_out, flag="--onnx-out", is_same_kind=lambda p: p.suffix == ".onnx")
    if from_stats is not None:
        ignored = cfg.data_settings_changed() + (["--onnx-out"] if onnx_out is not None else []) \
            + (["--calibrator tensorrt"] if cfg.calibrator != "ours" else [])
        ignored = [f for f in ignored if f != "--model" or cfg.onnx is None]
        if cfg.method == Auto.name:          # auto runs the model on the data: only the statistics' flags are moot
            ignored = [f for f in ignored if f in ("--num-bins", "--executor", "--calibrator tensorrt")]
        if ignored:
            raise ConfigError("flags that have no effect with --from-stats", subject=", ".join(ignored),
                              got="--from-stats recomputes ranges without running the model or reading data",
                              hint="drop them (to check the statistics belong to a model, pass --onnx MODEL.onnx)")
    if cfg.trt_version:
        trt_version_int(cfg.trt_version)
    timings = {}
    skipped: tuple = ()
    onnx_path = auto_pass = None
    executor_kind = "stats-file"
    device = torch.device("cpu")
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
            t1 = time.perf_counter()
            need_hist = cfg.method != "minmax" or stats_path is not None
            hists, images, executor_kind, pass_timings = collect_stats(rm.graph, source, cfg, device, progress=progress,
                                                         histograms=need_hist)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings["stats_pass_s"] = time.perf_counter() - t1
            timings.update(pass_timings)
            skipped = tuple(source.skipped)
            stats = CalibrationStats(histograms=hists, model_fingerprint=rm.graph.fingerprint(),
                                     data_fingerprint=source.fingerprint(), num_images=images, num_bins=cfg.num_bins,
                                     meta={"model": rm.name, "data": source.name, "preset": rm.preset,
                                           "preprocess": preprocess.as_dict(), "device": str(device),
                                           "histograms": need_hist,
                                           "skipped": [list(s) for s in skipped]})
            auto_pass = AutoPass(rm.graph, source, device, cfg.batch_size, cfg.workers, progress)
        t2 = time.perf_counter()
        ranges = ranges_from_stats(stats, cfg, auto_pass=auto_pass)
        timings["ranges_s"] = time.perf_counter() - t2
        version, algorithm = _cache_header(cfg)
        cache = TrtCache.from_ranges(ranges, algorithm=algorithm, version=version)
        # all outputs at the end, staged and moved into place together (an error or Ctrl-C leaves the earlier set)
        with outputs:
            outputs.stage(cache_path, cache.to_text())
            outputs.stage(ranges_path, ranges_to_json(ranges))
            if stats_path is not None:
                outputs.stage(stats_path, stats.to_bytes())
            if onnx_out is not None and onnx_path is not None:
                outputs.stage_copy(onnx_out, onnx_path)
            outputs.commit()
    except KeyboardInterrupt:
        raise Interrupted("calibration interrupted", subject=str(cache_path),
                          hint="nothing was written; run the command again") from None
    timings["total_s"] = time.perf_counter() - t0
    return CalibrationResult(ranges=ranges, stats=stats, cache=cache, onnx_path=onnx_path, images=images,
                             skipped=skipped, timings=timings, device=str(device), executor=executor_kind)


def _model_and_source(cfg: CalibrationConfig):
    """``(cfg with the batch the model takes, the resolved model, its calibration source, device)``, all
    checked before any image is read."""
    device = resolve_device(cfg.device)
    rm = cfg.resolve()
    cfg = replace(cfg, batch_size=check_model_input(rm.graph, batch_size=cfg.batch_size))
    preprocess = rm.preprocess()
    extra = dict(h5_images=cfg.h5_images, h5_labels=cfg.h5_labels, on_bad_image=cfg.on_bad_image,
                 layout=cfg.layout)
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

    shape = tuple(int(d) for d in rm.graph.input_shape()[1:])
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
