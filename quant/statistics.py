"""The statistics pass on a graph (per-tensor amax and |x| histograms over the calibration batches) and the
ranges and cache header made from it: what calibrate, evaluate and sweep share."""

from __future__ import annotations
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from ..calibrators.collector import HistogramCollector, collect_batch
from ..core.cache import DEFAULT_TRT_VERSION, ZERO_TENSOR_AMAX, trt_version_int

from ..calibrators.auto import Auto
from ..core.errors import ConfigError, DataError
from ..core.runtime import installed_trt_version
from ..core.types import CalibrationStats, Inputs, RangeSet, TensorRange
from ..datasets.gpu_decode import DECODE_BATCH, make_decoder, rebatch
from .graph.executors import make_executor
from .graph.inputs import check_input_shape
from .graph.onnx_graph import OnnxGraph
from .auto_method import AutoPass, choose_ranges
from .settings import CalibrationConfig

log = logging.getLogger(__name__)


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
    decoder = make_decoder(cfg.decode, source, device)     # JPEGs decoded and resized on the GPU (or None)
    size = fixed or cfg.batch_size
    batches = iter(source.batches(size, workers=cfg.workers, progress=progress, pixels=True) if decoder is None else
                   rebatch(source.batches(max(size, DECODE_BATCH), workers=cfg.workers, progress=progress,
                                          pixels=True, decoder=decoder), size))
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
            check_input_shape(graph, batch.images, source.name)
            if isinstance(batch.images, np.ndarray) and batch.images.dtype != np.uint8 and batch.images.size and float(np.abs(batch.images).max()) > 32:
                log.warning("%s: model-ready float images reach |x| = %.1f: they look like un-normalised 0..255 "
                            "pixels (preprocessed ImageNet images stay within about 3). Save uint8 pixels instead, "
                            "or normalise the array", source.name, float(np.abs(batch.images).max()))
            checked = True
        if isinstance(batch.images, Inputs):       # several inputs, model-ready: a tensor per input name
            fed = {k: torch.from_numpy(v).to(device) for k, v in batch.images.arrays.items()}
            collect_batch(collector, lambda observe, watch: executor.run(fed, observe=observe, watch=watch),
                          batch.ids)
            images += len(batch.images)
            waits["model_and_stats_s"] += time.perf_counter() - t1
            continue
        x = batch.images if isinstance(batch.images, torch.Tensor) else torch.from_numpy(batch.images)
        if device.type == "cuda" and not x.is_cuda:
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
    if decoder is not None:
        log.info("%s: %d image(s) decoded on the GPU (nvJPEG), %d on the CPU", source.name, decoder.gpu_images,
                 decoder.cpu_images)
    return collector.histograms(), images, executor.kind, waits


def statistics(graph: OnnxGraph, source, cfg: CalibrationConfig, device: torch.device, *,
               progress: bool = True) -> CalibrationStats:
    """One statistics pass over ``source``, packaged with the model and data fingerprints."""
    hists, images, _, _ = collect_stats(graph, source, cfg, device, progress=progress)
    return CalibrationStats(hists, graph.fingerprint(), source.fingerprint(), images, cfg.num_bins)


def ranges_from_stats(stats: CalibrationStats, cfg: CalibrationConfig, *,
                      auto_pass: AutoPass | None = None) -> RangeSet:
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


_WARNED_DEFAULT: set[str] = set()


def cache_header(cfg: CalibrationConfig) -> tuple[int, str]:
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
        if version not in _WARNED_DEFAULT:          # once per process, not once per cache (evaluate writes several)
            _WARNED_DEFAULT.add(version)
            log.warning("TensorRT is not installed here: the cache header is for TensorRT %s (TRT-%d). TensorRT "
                        "ignores a cache written for another version: pass --trt-version to match yours", version,
                        trt_version_int(version))
    return trt_version_int(version), cfg.cache_algorithm or algo.trt_algorithm
