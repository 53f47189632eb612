"""TensorRT ``IInt8Calibrator`` adapters (TensorRT <= 10, implicit INT8).

The only module besides the TensorRT backend that imports ``tensorrt``, and only lazily. TensorRT 11
removed implicit INT8 (calibrators, caches, ``set_dynamic_range``): there we raise
``BackendUnavailable`` pointing to the explicit-quantization (Q/DQ ONNX) path.

The calibrators feed batches from any ``ImageSource`` through torch CUDA tensors (device pointers
handed to TensorRT), read and write the cache through ``quant.cache`` (so a cache we computed is
served to TensorRT as is, and a cache TensorRT computes is parsed and written atomically), and keep
an exception raised inside a callback to re-raise after the build returns (TensorRT would otherwise
turn it into a generic build failure).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from ..quant.cache import TrtCache, read_trt_cache, write_trt_cache
from ..quant.errors import BackendUnavailable, CalibrationError, ConfigError

log = logging.getLogger(__name__)

# our method -> (TensorRT calibrator class, CalibrationAlgoType member)
_TRT_CLASSES = {
    "entropy": ("IInt8EntropyCalibrator2", "ENTROPY_CALIBRATION_2"),
    "minmax": ("IInt8MinMaxCalibrator", "MINMAX_CALIBRATION"),
}


def import_tensorrt():
    """Import TensorRT for implicit INT8 calibration, or explain why it cannot be used."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable("TensorRT is not installed", subject="import tensorrt",
                                 hint="install TensorRT <= 10 for implicit INT8 calibration; the calibration cache "
                                      "written by `cli.py calibrate` needs no TensorRT") from err
    major = int(str(trt.__version__).split(".")[0])
    if major >= 11 or not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise BackendUnavailable("implicit INT8 calibration was removed in TensorRT 11",
                                 subject=f"tensorrt {trt.__version__}",
                                 hint="use explicit quantization: a Q/DQ ONNX model built from the ranges JSON "
                                      "(TensorRT 10/11 strongly typed networks)")
    return trt


def make_calibrator(method: str, batches: Iterator, *, batch_size: int, input_name: str,
                    cache_path: str | Path | None = None, serve_cache: TrtCache | None = None,
                    device: str = "cuda"):
    """Build a TensorRT calibrator of the class matching ``method``.

    ``batches`` yields NCHW float32 arrays (e.g. ``b.images for b in source.batches(n)``). With
    ``serve_cache`` the calibrator hands TensorRT that cache (our own ranges) and TensorRT skips
    calibration; otherwise TensorRT calibrates and the cache it writes goes to ``cache_path``.
    """
    trt = import_tensorrt()
    if method not in _TRT_CLASSES:
        raise ConfigError("no TensorRT calibrator for this method", subject=f"--method {method}",
                          expected=" or ".join(_TRT_CLASSES),
                          hint="percentile/mse ranges reach TensorRT through the cache (serve_cache) or Q/DQ ONNX")
    base_name, algo_name = _TRT_CLASSES[method]
    base = getattr(trt, base_name)
    algo = getattr(trt.CalibrationAlgoType, algo_name)

    class _Calibrator(base):
        def __init__(self):
            base.__init__(self)
            self.error: BaseException | None = None
            self.batches_fed = 0
            self.dropped = 0
            self._it = iter(batches)
            self._current = None      # keeps the device buffer alive while TensorRT reads it
            self._cache_bytes = None  # keeps the bytes handed to TensorRT alive

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

                if names and input_name not in names:
                    raise CalibrationError("TensorRT asked for an unknown input", subject=f"inputs {list(names)}",
                                           expected=repr(input_name))
                for arr in self._it:
                    arr = np.ascontiguousarray(arr, dtype=np.float32)
                    if len(arr) != batch_size:   # TensorRT needs full batches: drop the ragged tail
                        self.dropped += len(arr)
                        continue
                    self._current = torch.from_numpy(arr).to(device)
                    self.batches_fed += 1
                    return [int(self._current.data_ptr())]
                if self.dropped:
                    log.info("dropped %d images of a last partial batch (TensorRT needs full batches)", self.dropped)
                return None
            except BaseException as err:  # kept, re-raised by raise_if_failed() after the build
                self.error = self.error or err   # keep the first failure
                return None

        def read_calibration_cache(self, *args):
            try:
                if serve_cache is not None:
                    self._cache_bytes = serve_cache.to_text().encode()
                elif cache_path is not None and Path(cache_path).is_file():
                    self._cache_bytes = read_trt_cache(cache_path).to_text().encode()
                else:
                    return None
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
                                 input_shape: tuple[int, int, int], cache_path: str | Path,
                                 serve_cache: TrtCache | None = None, workspace_gib: float = 4.0) -> TrtCache:
    """INT8 build of ``onnx_path`` with our calibrator; returns the cache TensorRT wrote.

    Without ``serve_cache`` TensorRT calibrates on ``batches``; with it, TensorRT takes our scales
    from the cache and skips calibration (and writes the same cache back).
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CalibrationError("TensorRT cannot parse the ONNX model", subject=str(onnx_path), got=errors[:400])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.set_flag(trt.BuilderFlag.INT8)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    shape = (batch_size, *input_shape)
    profile.set_shape(inp.name, shape, shape, shape)
    config.add_optimization_profile(profile)
    config.set_calibration_profile(profile)
    calibrator = make_calibrator(method, batches, batch_size=batch_size, input_name=inp.name, cache_path=cache_path,
                                 serve_cache=serve_cache)
    config.int8_calibrator = calibrator
    engine = builder.build_serialized_network(network, config)
    calibrator.raise_if_failed()
    if engine is None:
        raise CalibrationError("TensorRT INT8 build failed", subject=str(onnx_path), hint="see TensorRT's log above")
    return read_trt_cache(cache_path)
