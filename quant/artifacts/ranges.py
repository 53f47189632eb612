"""Read ranges from any artifact: a TensorRT calibration cache, a ranges JSON or a Q/DQ ONNX model."""

from __future__ import annotations
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...core.cache import TrtCache, looks_like_ranges_json, looks_like_trt_cache, read_ranges_json, read_trt_cache
from ...core.errors import CacheFormatError
from ...core.fileio import looks_like_onnx
from ...core.types import RangeSet, TensorRange


def looks_like_qdq_onnx(path: Path) -> bool:
    """A Q/DQ ONNX model (what ``convert --to onnx`` writes), not just any ONNX: the user's own model is another kind."""
    if not looks_like_onnx(path):
        return False
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001
        return False
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def detect_format(path: Path) -> str:
    if not path.is_file():
        raise CacheFormatError("file not found", subject=str(path))
    if path.stat().st_size == 0 or not path.read_bytes()[:4096].strip():
        raise CacheFormatError("empty calibration cache or ranges file", subject=str(path),
                               got="an empty file", expected="a first line like TRT-8601-EntropyCalibration2, or JSON")
    if looks_like_trt_cache(path):
        return "cache"
    if looks_like_ranges_json(path):
        return "ranges"
    if path.suffix == ".onnx":
        return "onnx"
    raise CacheFormatError("unrecognised ranges file", subject=str(path),
                           expected="a TensorRT calibration cache (TRT-...), a ranges JSON or a Q/DQ .onnx model")


def ranges_from_qdq_onnx(path: Path) -> RangeSet:
    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError and friends
        raise CacheFormatError("cannot read ONNX model", subject=str(path), got=str(err)[:200]) from err
    inits = {i.name: i for i in model.graph.initializer}
    ranges = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits or n.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[n.input[1]])
        if scale.size == 1:
            ranges[n.input[0]] = TensorRange(n.input[0], float(np.float32(scale.reshape(())) * np.float32(127)))
    if not ranges:
        raise CacheFormatError("no per-tensor activation quantizers in the model", subject=str(path),
                               hint="is this a Q/DQ (explicitly quantized) ONNX model?")
    return RangeSet(ranges=ranges, method="from-qdq-onnx")


def load_ranges(path: str | Path) -> tuple[RangeSet, str, TrtCache | None]:
    """``(ranges, format, cache if the file is a TensorRT cache)``."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "cache":
        cache = read_trt_cache(path)
        ranges = cache.ranges()
        return RangeSet(ranges=ranges, method=f"trt-cache:{cache.algorithm}"), fmt, cache
    if fmt == "ranges":
        return read_ranges_json(path), fmt, None
    return ranges_from_qdq_onnx(path), fmt, None
