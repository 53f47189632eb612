"""TensorRT ``IInt8Calibrator`` adapters (TensorRT <= 10, implicit INT8).

The only module besides the TensorRT backend that imports ``tensorrt``, and only lazily. TensorRT 11
removed implicit INT8 (calibrators, caches, ``set_dynamic_range``): there we raise
``BackendUnavailable`` pointing to the explicit-quantization (Q/DQ ONNX) path.

The calibrators feed batches from any ``ImageSource`` through torch CUDA tensors (device pointers
handed to TensorRT), read and write the cache through ``quant.cache`` (so a cache we computed is
served to TensorRT as is, and a cache TensorRT computes is parsed and written atomically; a file
already at the output ``cache_path`` is never served back, or TensorRT would skip calibration and
return it), and keep
an exception raised inside a callback to re-raise after the build returns (TensorRT would otherwise
turn it into a generic build failure).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from ..core.cache import TrtCache, write_trt_cache
from ..core.runtime import import_tensorrt as _import_tensorrt
from ..core.errors import BackendUnavailable, CalibrationError, ConfigError
from ..core.trt_versions import needs_explicit_batch, trt_version_int
from ..core.types import feeds

log = logging.getLogger(__name__)

_DEVICE = "cuda"   # where batches go; the conformance tests' TensorRT double runs on "cpu"

# our method -> (TensorRT calibrator class, CalibrationAlgoType member, cache header algorithm)
_TRT_CLASSES = {
    "entropy": ("IInt8EntropyCalibrator2", "ENTROPY_CALIBRATION_2", "EntropyCalibration2"),
    "minmax": ("IInt8MinMaxCalibrator", "MINMAX_CALIBRATION", "MinMaxCalibration"),
}


def method_for_cache(cache: TrtCache) -> str:
    """The calibrator method whose class TensorRT accepts ``cache`` from (its header's algorithm)."""
    for method, (_, _, header) in _TRT_CLASSES.items():
        if cache.algorithm == header:
            return method
    raise ConfigError("no TensorRT calibrator serves this cache", subject=f"cache header {cache.header()}",
                      expected=" or ".join(h for _, _, h in _TRT_CLASSES.values()),
                      hint="`cli.py cache convert` rewrites the header")


def import_tensorrt():
    """Import TensorRT for implicit INT8 calibration, or explain why it cannot be used."""
    trt = _import_tensorrt("--calibrator tensorrt", hint="install TensorRT <= 10 for implicit INT8 calibration; the "
                                                        "calibration cache written by `cli.py calibrate` needs no TensorRT")
    major = int(str(trt.__version__).split(".")[0])
    if major >= 11 or not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendUnavailable("implicit INT8 calibration was removed in TensorRT 11",
                                 subject=f"tensorrt {trt.__version__}",
                                 hint="use explicit quantization: a Q/DQ ONNX model built from the ranges JSON "
                                      "(TensorRT 10/11 strongly typed networks)")
    return trt


def make_calibrator(method: str, batches: Iterator, *, batch_size: int, input_name: str | tuple[str, ...],
                    cache_path: str | Path | None = None, serve_cache: TrtCache | None = None,
                    device: str | None = None):
    """Build a TensorRT calibrator of the class matching ``method``.

    ``batches`` yields NCHW float32 arrays (e.g. ``b.images for b in source.batches(n)``), or for a model
    with several inputs (``input_name`` a tuple of names) :class:`Inputs` with an array per name. With
    ``serve_cache`` the calibrator hands TensorRT that cache (our own ranges) and TensorRT skips
    calibration; otherwise TensorRT calibrates and the cache it writes goes to ``cache_path``.
    """
    trt = import_tensorrt()
    device = device or _DEVICE
    input_names = (input_name,) if isinstance(input_name, str) else tuple(input_name)
    if method not in _TRT_CLASSES:
        raise ConfigError("no TensorRT calibrator for this method", subject=f"--method {method}",
                          expected=" or ".join(_TRT_CLASSES),
                          hint="percentile/mse ranges reach TensorRT through the cache (serve_cache) or Q/DQ ONNX")
    base_name, algo_name, header = _TRT_CLASSES[method]
    base = getattr(trt, base_name)
    algo = getattr(trt.CalibrationAlgoType, algo_name)
    if serve_cache is not None:
        # TensorRT takes a cache only when the header matches its version and the calibrator's
        # algorithm; otherwise it recalibrates (here: on no data) instead of using our scales
        if serve_cache.algorithm != header:
            raise ConfigError("calibration cache algorithm does not match the calibrator",
                              subject=f"cache header {serve_cache.header()}", got=serve_cache.algorithm,
                              expected=f"{header} (for {base_name})",
                              hint="`cli.py cache convert --algorithm` rewrites the header")
        want = trt_version_int(trt.__version__)
        if serve_cache.version != want:
            raise ConfigError("calibration cache was written for another TensorRT", subject=f"cache header "
                              f"{serve_cache.header()}", got=str(serve_cache.version),
                              expected=f"{want} (tensorrt {trt.__version__})",
                              hint="`cli.py cache convert --trt-version` rewrites the header")

    class _Calibrator(base):
        def __init__(self):
            base.__init__(self)
            self.error: BaseException | None = None
            self.batches_fed = 0
            self.dropped = 0
            self._it = iter(batches)
            self._current = None      # keeps the device buffer alive while TensorRT reads it
            self._cache_bytes = None  # keeps the bytes handed to TensorRT alive
            self.written: TrtCache | None = None   # the cache TensorRT wrote, parsed

        def get_algorithm(self):
            return algo

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names, *args):
            if self.error is not None:
                return None
            try:
                import numpy as np
                import torch

                names = list(names)   # TensorRT copies len(names) pointers from our list, in its order
                unknown = [n for n in names if n not in input_names]
                if unknown or len(names) != len(input_names):
                    raise CalibrationError("TensorRT asked for other inputs than the model's", subject=f"inputs {names}",
                                           got=", ".join(map(repr, names)),
                                           expected=", ".join(map(repr, input_names)))
                for arr in self._it:
                    fed = feeds(list(input_names), arr)
                    if len(arr) != batch_size:   # TensorRT needs full batches: drop the ragged tail
                        self.dropped += len(arr)
                        continue
                    self._current = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(device)
                                     for k, v in fed.items()}
                    self.batches_fed += 1
                    return [int(self._current[n].data_ptr()) for n in names]
                if self.dropped:
                    log.info("dropped %d images of a last partial batch (TensorRT needs full batches)", self.dropped)
                return None
            except BaseException as err:  # kept, re-raised by raise_if_failed() after the build
                self.error = self.error or err   # keep the first failure
                return None

        def read_calibration_cache(self, *args):
            try:
                # only the cache we were asked to serve: never the file at the *output* cache_path
                # (a previous run's), or TensorRT would skip calibration and hand it back
                if serve_cache is None:
                    return None
                self._cache_bytes = serve_cache.to_text().encode()
                return self._cache_bytes
            except BaseException as err:
                self.error = self.error or err   # keep the first failure
                return None

        def write_calibration_cache(self, cache, *args):
            try:
                parsed = TrtCache.parse(bytes(cache).decode("utf-8"), source="TensorRT calibrator output")
                if cache_path is not None:
                    write_trt_cache(cache_path, parsed)
                self.written = parsed
            except BaseException as err:
                self.error = self.error or err   # keep the first failure

        def raise_if_failed(self):
            if self.error is not None:
                err, self.error = self.error, None
                raise CalibrationError("TensorRT calibration callback failed", got=f"{type(err).__name__}: {err}",
                                       hint="see the chained exception") from err

    return _Calibrator()


def calibrate_onnx_with_tensorrt(onnx_path: str | Path, batches: Iterator, *, method: str, batch_size: int,
                                 input_shape: tuple | dict[str, tuple], cache_path: str | Path,
                                 serve_cache: TrtCache | None = None, workspace_gib: float = 4.0) -> TrtCache:
    """INT8 build of ``onnx_path`` with our calibrator; returns the cache TensorRT wrote.

    Without ``serve_cache`` TensorRT calibrates on ``batches``; with it, TensorRT takes our scales
    from the cache and skips calibration (and writes the same cache back). ``input_shape``: the
    non-batch dims of the one input, or of every input by name for a model with several.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if needs_explicit_batch(trt.__version__):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CalibrationError("TensorRT cannot parse the ONNX model", subject=str(onnx_path), got=errors[:400])
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = input_shape if isinstance(input_shape, dict) else {inputs[0].name: tuple(input_shape)}
    if sorted(shapes) != sorted(i.name for i in inputs):
        raise CalibrationError("the network's inputs are not the data's", subject=str(onnx_path),
                               got=", ".join(repr(i.name) for i in inputs), expected=", ".join(map(repr, shapes)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for inp in inputs:
        shape = calibration_shape(inp.name, tuple(int(d) for d in inp.shape), batch_size, shapes[inp.name])
        profile.set_shape(inp.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    if not config.set_calibration_profile(profile):
        raise CalibrationError("TensorRT refused the calibration profile", subject=", ".join(repr(i.name) for i in inputs),
                               got=", ".join(str(profile.get_shape(i.name)) for i in inputs))
    names = tuple(i.name for i in inputs)
    calibrator = make_calibrator(method, batches, batch_size=batch_size, input_name=names[0] if len(names) == 1 else names,
                                 cache_path=cache_path, serve_cache=serve_cache)
    config.int8_calibrator = calibrator
    engine = builder.build_serialized_network(network, config)
    calibrator.raise_if_failed()
    if engine is None:
        raise CalibrationError("TensorRT INT8 build failed", subject=str(onnx_path), hint="see TensorRT's log above")
    if calibrator.written is not None:
        return calibrator.written
    if serve_cache is not None:   # TensorRT took our cache and had nothing new to write
        return serve_cache
    raise CalibrationError("TensorRT wrote no calibration cache", subject=str(cache_path),
                           hint="see TensorRT's log above")


def calibration_shape(name: str, network_shape: tuple, batch_size: int, input_shape: tuple) -> tuple:
    """The one (min = opt = max) calibration shape: the network's static dims, batch ``batch_size``."""
    want = (batch_size, *input_shape)
    if len(network_shape) != len(want):
        raise CalibrationError("input rank does not match the model", subject=f"input {name!r}",
                               got=str(network_shape), expected=f"rank {len(want)} like {want}")
    if network_shape[0] not in (-1, batch_size):
        raise ConfigError("the model's batch dimension is static", subject="--batch-size",
                          got=str(batch_size), expected=f"{network_shape[0]} (input {name!r} is {network_shape})")
    return tuple(w if d == -1 or i == 0 else d for i, (d, w) in enumerate(zip(network_shape, want)))
