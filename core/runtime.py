"""The runtime: which device, which float precision, and the one lazy import of each optional package.

Only this module imports ``tensorrt`` (through :func:`import_tensorrt`); engines and calibrators ask
it, with the flag that needs TensorRT, so the error names what the user typed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .errors import BackendUnavailable, ConfigError


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as err:
        raise ConfigError("invalid device", subject="--device", got=repr(spec), expected="auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable("CUDA is not available", subject=f"--device {spec}",
                                 hint="use --device cpu (or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("unsupported device", subject="--device", got=repr(spec), expected="auto, cpu, cuda or cuda:N")
    return dev


@contextlib.contextmanager
def tf32(allowed: bool):
    """TF32 in cuDNN convolutions and cuBLAS matmuls on (``allowed``) or off, restored afterwards.

    Off is what FP32 means: PyTorch allows TF32 for convolutions by default, which moves activations
    by ~1e-3 relative on Ampere and later GPUs."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def strict_fp32():
    """FP32 means FP32: no TF32 (see :func:`tf32`)."""
    return tf32(False)


def installed_trt_version() -> str | None:
    """TensorRT's version where it imports, else None (never raises)."""
    try:
        import tensorrt  # noqa: F401  (lazy, optional)
    except ImportError:
        return None
    return tensorrt.__version__


def import_tensorrt(subject: str, hint: str):
    """``import tensorrt``, or a :class:`BackendUnavailable` naming ``subject`` (the flag that needs it)."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendUnavailable("TensorRT is not installed", subject=subject, hint=hint) from err
    return trt


def cpu_int8_instructions() -> list[str]:
    """The CPU's integer dot-product instruction sets (what makes INT8 faster than FP32 on a CPU)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    except (OSError, IndexError):
        return []
    wanted = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "avx2")
    return [f for f in wanted if f in flags]
