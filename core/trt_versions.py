"""What changes with the TensorRT version, in one place (no TensorRT import needed).

Every function takes a version string (``trt.__version__`` or ``--trt-version``), so callers that
only write files for a TensorRT elsewhere (Q/DQ ONNX, trtexec lines) can use them too.
"""

from __future__ import annotations

from .cache import trt_version_int  # noqa: F401  (re-exported: the cache header integer)
from .errors import ConfigError


def trt_major(version: str) -> int:
    try:
        return int(str(version).strip().split(".")[0])
    except ValueError:
        raise ConfigError("invalid TensorRT version", subject="tensorrt.__version__", got=repr(version),
                          expected="MAJOR.MINOR.PATCH, e.g. 8.6.1 or 10.13.0") from None


def strongly_typed(version: str, has_flag: bool) -> bool:
    """Explicit-quantization builds are strongly typed from 9.0 (where the flag exists) and always on 11+.

    TensorRT 11 removed the precision builder flags (FP16, INT8, OBEY_PRECISION_CONSTRAINTS), so it is
    strongly typed whether or not ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (a no-op there) exists.
    """
    return trt_major(version) >= 11 or has_flag


def needs_explicit_batch(version: str) -> bool:
    """``EXPLICIT_BATCH`` is required before 10; 10.x ignores it (deprecated) and 11 removed it."""
    return trt_major(version) < 10


def convtranspose_weight_axis(trt_version: str | None) -> int:
    """Per-channel axis of an INT8 ConvTranspose weight (ONNX layout ``C_in x C_out/group x kH x kW``).

    TensorRT 8.x gives wrong results with axis 1 and takes axis 0 (NVIDIA/TensorRT#1694, #2380;
    pytorch-quantization and ModelOpt-torch use 0). ModelOpt's ONNX path, written for TensorRT 10+,
    uses axis 1 (the output channels); that is what we use from 10 on. 9.x and an unknown version
    (``None``) get 0, the axis seen correct on a real engine. Neither axis is checked on a real 10/11
    engine here: keep INT8 ConvTranspose out of plans that must be exact until it is.
    """
    if trt_version is None:
        return 0
    return 1 if trt_major(trt_version) >= 10 else 0
